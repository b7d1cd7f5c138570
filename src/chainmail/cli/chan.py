"""`chainmail chan` — encrypted channels (DESIGN §3 "Channels", §9)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from chainmail.cli._app import app
from chainmail.cli.commands import (
    AsOpt,
    HomeOpt,
    JsonOpt,
    NodeOpt,
    _client,
    _echo_json,
    _out,
    _parse_object,
    _print_receipt,
    _printable,
    _publisher,
)
from chainmail.cli.doc import FileArg, MimeOpt, NameOpt, OutOpt, bytes_destination, write_bytes_out
from chainmail.client import DEFAULT_NODE
from chainmail.errors import Error
from chainmail.ids import is_msg_id

chan_app = typer.Typer(
    help="Encrypted channels: only members (and those a member shares with) can read them; "
    "the node and the firehose see ciphertext.",
    no_args_is_help=True,
)
app.add_typer(chan_app, name="chan")

ChanOpt = Annotated[str, typer.Option("--chan", help="The channel id (its chan/open message).")]


@chan_app.command("open")
def chan_open(
    as_: AsOpt,
    member: Annotated[
        list[str],
        typer.Option(
            "--member",
            help="Members @….ed25519, after one --member or each after its own (you are added).",
        ),
    ],
    tx: Annotated[
        str | None, typer.Option("--tx", help="Tie the channel to this transaction.")
    ] = None,
    label: Annotated[str | None, typer.Option("--label", help="A label, e.g. buy-side.")] = None,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Open a channel: a fresh key sealed to each member; prints the channel id."""
    with _publisher(node, as_, home) as client:
        chan = client.open_channel(member, tx=tx, label=label)
    if as_json:
        _echo_json({"chan": chan})
    else:
        typer.echo(chan)


@chan_app.command("send")
def chan_send(
    as_: AsOpt,
    chan: ChanOpt,
    data: Annotated[str, typer.Option("--data", help="JSON object: what to say, encrypted.")],
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Encrypt a JSON object for the channel's members and post it; prints the message id."""
    fields = _parse_object(data, "--data")
    with _publisher(node, as_, home) as client:
        _print_receipt(client.channel_send(chan, fields), as_json, "chan/msg")


@chan_app.command("read")
def chan_read(
    as_: AsOpt,
    chan: ChanOpt,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Decrypt every message of the channel you can read, oldest first.

    Exits 1 (decryption_failed) if the channel holds no key for you: you are
    neither a member nor a reader it was shared with.
    """
    with _client(node, as_, home) as client:
        opened = client.channel_read(chan)
    if as_json:
        for item in opened:
            _echo_json({"id": item.id, "author": item.author, "data": item.data})
        return
    table = Table("id", "author", "data", box=None)
    for item in opened:
        # Text, not a str: a str cell is console markup, and what a member wrote
        # ("[/x]" raised MarkupError, "[bold]" restyled the table) is data; and
        # printable, as JSON leaves DEL and C1 controls (CSI) raw.
        table.add_row(
            item.id[:16] + "…",
            item.author[:16] + "…",
            Text(_printable(json.dumps(item.data, ensure_ascii=False))),
        )
    _out().print(table)


@chan_app.command("share")
def chan_share(
    as_: AsOpt,
    chan: ChanOpt,
    with_: Annotated[
        list[str],
        typer.Option(
            "--with",
            help="Readers @….ed25519 (auditor, regulator), after one --with or each after its own.",
        ),
    ],
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give readers the channel's key, so they can read its whole history (members only)."""
    with _publisher(node, as_, home) as client:
        _print_receipt(client.channel_share(chan, with_), as_json, "chan/share")


@chan_app.command("send-doc")
def chan_send_doc(
    file: FileArg,
    as_: AsOpt,
    chan: ChanOpt,
    name: NameOpt = None,
    mime: MimeOpt = None,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send FILE to the channel's members only; prints the id of the message announcing it.

    The file is sealed with the channel key and stored as a blob; a public `doc` message
    notarises that ciphertext (so the node keeps it and a block dates it, and others
    learn only its size), and a channel message gives the members its name, type and
    SHA-256. Members fetch it with `chan get-doc`.
    """
    with _publisher(node, as_, home) as client:
        sent = client.channel_send_document(chan, file, name=name, mime=mime)
    if as_json:
        _echo_json(
            {
                "message": sent.message,
                "notarised": sent.notarised,
                "blob": sent.blob,
                "size": sent.size,
                "name": sent.name,
                "mime": sent.mime,
            }
        )
    else:
        typer.echo(sent.message)


@chan_app.command("get-doc")
def chan_get_doc(
    msg_id: Annotated[
        str,
        typer.Argument(
            metavar="ID", help="The channel message id %….sha256 (send-doc printed it)."
        ),
    ],
    as_: AsOpt,
    chan: ChanOpt,
    out: OutOpt = None,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
) -> None:
    """Fetch the document channel message ID carries, decrypt it, check it, write it.

    Checked against the size and SHA-256 its author sealed in the message: exits 1
    (invalid_proof) if the bytes differ, and writes nothing.
    """
    if not is_msg_id(msg_id):
        raise Error(f"not a message id (%….sha256): {msg_id!r}", code="invalid_format")
    out = bytes_destination(out, "chan get-doc")
    with _client(node, as_, home) as client:
        about, data = client.channel_document(chan, msg_id)
    named = f" ({about.name})" if about.name else ""
    write_bytes_out(data, out, f"{named}, SHA-256 as its author sealed it")
