"""The commands that talk to a node (DESIGN §9): send, tx, inbox, firehose, blocks, verify.

Every command takes ``--node URL`` (default ``$CHAINMAIL_NODE`` or
``http://127.0.0.1:8700``); those that sign or read an inbox take ``--as
NAME``, a keystore identity whose passphrase comes from
``CHAINMAIL_PASSPHRASE`` or a prompt. Bad input and node errors are
``chainmail.errors.Error``: ``chainmail.cli.main`` prints them as one line on
stderr and exits 1. ``verify`` prints every check with ✓ or ✗ and exits 1 when
one fails.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Console
from rich.text import Text

from chainmail import anchors, ssb
from chainmail import blocks as block_rules
from chainmail.cli._app import app
from chainmail.client import (
    DEFAULT_NODE,
    NODE_ENV,
    Client,
    NodeUnavailable,
    Receipt,
    Report,
    VerificationFailed,
)
from chainmail.content import MAX_SAFE_INTEGER
from chainmail.errors import Error, InvalidMessage, ProofError
from chainmail.ids import is_feed_id
from chainmail.keystore import HOME_ENV
from chainmail.verify import Progress

__all__ = ["parse_deadline"]

#: Seconds between two polls of ``blocks --follow``.
DEFAULT_POLL: Final = 1.0
_UNITS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION_RE: Final = re.compile(r"(\d+)(ms|s|m|h|d)")
_OK: Final = "✓"
_FAIL: Final = "✗"
#: C0 controls, DEL and C1 controls: what drives a terminal (ESC, CSI) or breaks a line.
_CONTROL_RE: Final = re.compile("[\x00-\x1f\x7f-\x9f]")

tx_app = typer.Typer(
    name="tx",
    help="Transactions: open one with parties and a deadline, post notes, finish, show.",
    no_args_is_help=True,
)
verify_app = typer.Typer(
    name="verify",
    help=(
        "Verify what the node says without trusting it: signatures, Merkle proofs, the block "
        "chain and signed checkpoints, recomputed here. Prints each check; exit 1 on a failure."
    ),
    no_args_is_help=True,
)
app.add_typer(tx_app, name="tx")
app.add_typer(verify_app, name="verify")

# --------------------------------------------------------------------------- options

NodeOpt = Annotated[
    str,
    typer.Option(
        "--node",
        envvar=NODE_ENV,
        help="The node's URL.",
        show_default=True,
    ),
]
AsOpt = Annotated[
    str,
    typer.Option(
        "--as",
        help="The keystore identity to act as (see `chainmail keys list`).",
        show_default=False,
    ),
]
HomeOpt = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar=HOME_ENV,
        help="chainmail home: keys and local feed copies (default: ~/.chainmail).",
        show_default=False,
        file_okay=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (one object a line).")]
BitcoinOpt = Annotated[
    str | None,
    typer.Option(
        "--bitcoin",
        envvar="CHAINMAIL_BITCOIN",
        help="JSON-RPC URL of a Bitcoin node of your own (http://user:password@host:port):"
        " each anchor's chain is checked to be that node's, and its Merkle root in its"
        " Bitcoin block header.",
    ),
]
NodeIdOpt = Annotated[
    str | None,
    typer.Option(
        "--node-id",
        help="Pin the node's identity @….ed25519 instead of trusting what /healthz says.",
        show_default=False,
    ),
]


def _out() -> Console:
    # soft_wrap: ids must come out whole, never folded at the terminal's width.
    return Console(soft_wrap=True, highlight=False)


def _err() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def _printable(value: object) -> str:
    """``str(value)`` with each control character as a visible ``\\xNN`` escape.

    What a node or another user wrote is printed to a terminal: raw, its ESC
    sequences could clear the screen or retitle the window, and a newline
    fake a line of the output.
    """
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m[0]):02x}", str(value))


#: Characters that stand unescaped in JSON but that text tools (Python's
#: ``str.splitlines``, editors) take for line breaks: escaped in ``--json`` output, so
#: one value stays one line however it is read.
_LINE_BREAKS: Final = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def _echo_json(value: object) -> None:
    # Within JSON these characters occur only inside strings, where the escape
    # means the same character.
    typer.echo(json.dumps(value, ensure_ascii=False, separators=(",", ":")).translate(_LINE_BREAKS))


def _parse_object(text: str, option: str) -> dict[str, Any]:
    """A JSON object given on the command line; raises ``InvalidMessage``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidMessage(f"{option}: not JSON: {exc}") from exc
    except RecursionError as exc:  # what json.loads raises past Python's recursion limit
        raise InvalidMessage(f"{option}: not JSON: nested too deeply") from exc
    if not isinstance(value, dict):
        raise InvalidMessage(f"{option}: expected a JSON object, got {type(value).__name__}")
    return value


def parse_deadline(text: str, now: int) -> int:
    """A deadline in Unix ms from ``10m``, ``90s``, ``2h``, ``1d``, ``500ms`` (from ``now``).

    A bare integer is an absolute Unix time in ms; an ISO 8601 time with a
    zone is absolute too. Raises ``InvalidMessage`` for anything else, and for
    a time not after ``now``: such a tx would time out as it opens (the node
    allows it; the command line refuses what is almost surely a mistake).
    """
    text = text.strip()
    when = _deadline(text, now)
    if when <= now:
        raise InvalidMessage(
            f"--deadline: {text} is not in the future (now is {now} ms): the tx would time out"
            " as it opens"
        )
    if when > MAX_SAFE_INTEGER:
        raise InvalidMessage(
            f"--deadline: {text} is past the largest time a message holds"
            f" ({MAX_SAFE_INTEGER} ms since 1970)"
        )
    return when


def _deadline(text: str, now: int) -> int:
    if text.isdigit():
        return int(text)
    match = _DURATION_RE.fullmatch(text)
    if match:
        return now + int(match.group(1)) * _UNITS[match.group(2)]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is not None and when.tzinfo is not None:
        return int(when.timestamp() * 1000)
    raise InvalidMessage(
        f"--deadline: expected a duration (10m, 90s, 2h, 1d, 500ms), Unix ms, or an ISO time "
        f"with a zone, got {text!r}"
    )


def _client(
    node: str, name: str | None = None, home: Path | None = None, node_id: str | None = None
) -> Client:
    if name is None:
        return Client(node, node_id=node_id)
    return Client.from_keystore(name, home=home, node=node, node_id=node_id)


@contextmanager
def _publisher(
    node: str, name: str, home: Path | None, *, replay: bool = False
) -> Iterator[Client]:
    """A client that publishes as keystore identity ``name``.

    It first sends what an earlier command signed but could not send (the node
    was down), and says so: nothing goes out unannounced. When the node cannot
    be reached while the command publishes, the error says which messages are
    signed and kept in the local feed copy for the next such command.
    """
    with _client(node, name, home) as client:
        try:
            earlier = client.sync(replay=replay)
        except NodeUnavailable as exc:
            raise NodeUnavailable(f"{exc.detail} (nothing was signed)") from None
        for receipt in earlier:
            why = (
                "replayed to this node"
                if replay
                else "first, signed by an earlier command that could not send it"
            )
            _err().print(
                Text(
                    f"sent {receipt.id} {why} (logged at {receipt.pipeline}:{receipt.index})",
                    style="dim",
                )
            )
        before = _local_sequence(client)
        try:
            yield client
        except NodeUnavailable as exc:
            kept = _local_sequence(client) - before
            if not kept:
                raise
            raise NodeUnavailable(
                f"{exc.detail}; {kept} new message(s) signed and kept in the local feed copy:"
                f" the next command that publishes as {name} sends them first"
            ) from None


def _local_sequence(client: Client) -> int:
    head = client.feed.head() if client.feed is not None else None
    return 0 if head is None else head.sequence


def _print_receipt(
    receipt: Receipt, as_json: bool, what: str, extra: Mapping[str, Any] | None = None
) -> None:
    """The message id on stdout (``--json``: the receipt and ``extra``), where on stderr."""
    if as_json:
        _echo_json(
            {
                "id": receipt.id,
                "pipeline": receipt.pipeline,
                "index": receipt.index,
                "created": receipt.created,
                **(extra or {}),
            }
        )
        return
    typer.echo(receipt.id)
    also = "".join(f", {k} {v}" for k, v in (extra or {}).items())
    _err().print(
        Text(f"{what} logged at {receipt.pipeline}:{receipt.index}{also}", style="dim"),
    )


@contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C ends a --follow quietly (exit 130), as a shell expects."""
    try:
        yield
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


# --------------------------------------------------------------------------- send


@app.command()
def send(
    as_: AsOpt,
    type_: Annotated[
        str | None,
        typer.Option("--type", help="Content type, e.g. about, tx/note, or your own."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="JSON object: the content's fields besides type."),
    ] = None,
    content: Annotated[
        str | None,
        typer.Option("--content", help="The whole content as a JSON object (with its type)."),
    ] = None,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
    replay: Annotated[
        bool,
        typer.Option(
            "--replay",
            help="First replay your whole feed to this node if it lacks messages a node"
            " accepted before (one restored from an old backup, or rebuilt); without it"
            " such a node is refused (out_of_order): a feed is one history on one node.",
        ),
    ] = False,
) -> None:
    """Sign a message into your feed and submit it; prints its id.

    Example: chainmail send --as alice --type about --data '{"about": "@…", "name": "Alice"}'
    """
    if content is not None:
        if type_ is not None or data is not None:
            raise InvalidMessage("--content: give either --content or --type/--data, not both")
        body = _parse_object(content, "--content")
    elif type_ is not None:
        fields = _parse_object(data, "--data") if data is not None else {}
        if "type" in fields and fields["type"] != type_:
            raise InvalidMessage(f"--data: its type {fields['type']!r} contradicts --type")
        body = {"type": type_, **fields}
    else:
        raise InvalidMessage("send: give --type (with --data) or --content")
    with _publisher(node, as_, home, replay=replay) as client:
        _print_receipt(client.publish(body), as_json, "message")


# --------------------------------------------------------------------------- tx


@tx_app.command("open")
def tx_open(
    as_: AsOpt,
    party: Annotated[
        list[str],
        typer.Option(
            "--party",
            help="Parties @….ed25519, after one --party or each after its own (you are added).",
        ),
    ],
    deadline: Annotated[
        str,
        typer.Option(
            "--deadline",
            help="10m, 90s, 2h, 1d, 500ms from now; or Unix ms; or ISO time with a zone.",
        ),
    ] = "10m",
    finish: Annotated[
        str, typer.Option("--finish", help="Who must finish: all, any or opener.")
    ] = "all",
    subject: Annotated[str | None, typer.Option("--subject", help="A short subject.")] = None,
    data: Annotated[str | None, typer.Option("--data", help="JSON object to attach.")] = None,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Open a transaction; prints its id (the id of the tx/open message).

    Example: TX=$(chainmail tx open --as alice --party @bob… --deadline 10m --subject "trade 42")
    """
    extra = _parse_object(data, "--data") if data is not None else None
    if finish not in ("all", "any", "opener"):
        raise InvalidMessage(f"--finish: expected all, any or opener, got {finish!r}")
    with _publisher(node, as_, home) as client:
        when = parse_deadline(deadline, client.clock())
        tx = client.open_tx(party, when, finish, subject, extra)
    if as_json:
        _echo_json({"tx": tx})
    else:
        typer.echo(tx)


@tx_app.command("note")
def tx_note(
    tx: Annotated[str, typer.Argument(help="The tx id %….sha256.", show_default=False)],
    as_: AsOpt,
    data: Annotated[str, typer.Option("--data", help="JSON object: the note.")],
    to: Annotated[
        list[str] | None,
        typer.Option(
            "--to", help="Deliver only to these parties (@IDs after one --to, or --to each)."
        ),
    ] = None,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Post a note to a transaction's parties (or only --to); prints the message id."""
    fields = _parse_object(data, "--data")
    with _publisher(node, as_, home) as client:
        _print_receipt(client.note(tx, fields, to or None), as_json, "tx/note")


@tx_app.command("finish")
def tx_finish(
    tx: Annotated[str, typer.Argument(help="The tx id %….sha256.", show_default=False)],
    as_: AsOpt,
    data: Annotated[str | None, typer.Option("--data", help="JSON object to attach.")] = None,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Declare your part of a transaction done; prints the message id."""
    fields = _parse_object(data, "--data") if data is not None else None
    with _publisher(node, as_, home) as client:
        _print_receipt(client.finish(tx, fields), as_json, "tx/finish")


def _ms(value: object) -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        return "—"
    return datetime.fromtimestamp(value / 1000, UTC).isoformat(timespec="milliseconds")


def _listed(value: object) -> list[object]:
    """A list the node gave, as it is; anything else (unverified) as its one item."""
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


@tx_app.command("show")
def tx_show(
    tx: Annotated[str, typer.Argument(help="The tx id %….sha256.", show_default=False)],
    node: NodeOpt = DEFAULT_NODE,
    as_json: JsonOpt = False,
) -> None:
    """Show the node's view of a transaction (unverified: see `chainmail verify tx`)."""
    with _client(node) as client:
        info = client.tx(tx)
    if as_json:
        _echo_json(info)
        return
    out = _out()
    status = str(info.get("status"))
    style = {"finished": "bold green", "timed_out": "bold red"}.get(status, "bold yellow")

    def row(label: str, value: object, style: str = "") -> None:
        # Lines, not a table: a table cut ids to the terminal's width with "…".
        # Text, not a str: a str is console markup, and the subject is what
        # the opener wrote ("[/x]" raised MarkupError), the rest the node's.
        line = Text(f"{label:<10}", style="dim")
        line.append(_printable(value), style=style)
        out.print(line)

    row("tx", info.get("tx"))
    row("status", status, style)
    row("subject", info.get("subject") or "—")
    row("finish", info.get("finish"))
    row("opener", info.get("opener"))
    for n, party in enumerate(_listed(info.get("parties"))):
        row("parties" if n == 0 else "", party)
    row("opened", _ms(info.get("opened")))
    row("deadline", _ms(info.get("deadline")))
    row("closed", _ms(info.get("closed")))
    row("block", info.get("block") if info.get("block") is not None else "—")
    for n, mid in enumerate(_listed(info.get("messages"))):
        row("messages" if n == 0 else "", mid)


# --------------------------------------------------------------------------- inbox


@app.command()
def inbox(
    as_: AsOpt,
    follow: Annotated[
        bool, typer.Option("--follow", help="Stay connected and print deliveries as they come.")
    ] = False,
    ack: Annotated[
        bool, typer.Option("--ack", help="Acknowledge what is printed (else it comes again).")
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", help="At most this many (without --follow).")
    ] = 100,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print your deliveries, oldest first; with --ack acknowledge them."""
    out = _out()

    def show(delivery: int, mid: str, message: dict[str, Any]) -> None:
        if as_json:
            _echo_json({"delivery": delivery, "id": mid, "message": message})
            return
        content = message.get("content")
        kind = content.get("type") if isinstance(content, dict) else "box"
        line = Text(f"{delivery:>6} ", style="dim")
        line.append(f"{_printable(kind):<10} ", style="bold")
        line.append(_printable(f"{mid} from {message.get('author')}"))
        out.print(line)

    with _client(node, as_, home) as client:
        if follow:
            with _interruptible():
                for entry in client.inbox_iter(follow=True, ack=ack):
                    show(entry.delivery, entry.id, entry.message)
            return
        entries = client.inbox(limit)
        for entry in entries:
            show(entry.delivery, entry.id, entry.message)
        if ack and entries:
            acked = client.ack([e.id for e in entries])
            _err().print(Text(f"acknowledged {acked}", style="dim"))
        elif not entries and not as_json:
            _err().print(Text("inbox empty", style="dim"))


# --------------------------------------------------------------------------- firehose and blocks


@app.command()
def firehose(
    start: Annotated[int, typer.Option("--from", help="First log index to print.", min=0)] = 0,
    pipeline: Annotated[int, typer.Option("--pipeline", help="Which log.", min=0)] = 0,
    follow: Annotated[
        bool, typer.Option("--follow", help="Stay connected for new messages.")
    ] = False,
    node: NodeOpt = DEFAULT_NODE,
    as_json: JsonOpt = False,
) -> None:
    """Print every message in log order from --from on (ciphertext included)."""
    out = _out()
    with _client(node) as client, _interruptible():
        for entry in client.firehose(start, pipeline=pipeline, follow=follow):
            if as_json:
                _echo_json(
                    {
                        "pipeline": entry.pipeline,
                        "index": entry.index,
                        "id": entry.id,
                        "message": entry.message,
                    }
                )
                continue
            content = entry.message.get("content")
            kind = content.get("type") if isinstance(content, dict) else "box"
            line = Text(f"{entry.pipeline}:{entry.index:<7} ", style="dim")
            line.append(f"{_printable(kind):<10} ", style="bold")
            line.append(_printable(f"{entry.id} by {entry.message.get('author')}"))
            out.print(line)


def _print_block(out: Console, block: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _echo_json(block)
        return
    # The node's word, unverified: a field it lacks prints as such, not a traceback.
    message = block.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, dict):
        content = {}
    txs = content.get("txs")
    txs = txs if isinstance(txs, dict) else {}
    logs = content.get("logs")
    logs = logs if isinstance(logs, list) else []
    sizes = " ".join(
        f"{entry.get('pipeline')}:{entry.get('size')}" for entry in logs if isinstance(entry, dict)
    )
    line = Text(f"{block.get('height'):>6} ", style="bold")
    line.append(f"{_printable(block.get('id'))} ")
    line.append(
        _printable(f"{_ms(content.get('time'))} txs {txs.get('count')} logs {sizes}"), style="dim"
    )
    out.print(line)


@app.command()
def blocks(
    after: Annotated[int, typer.Option("--after", help="Start above this height.", min=0)] = 0,
    limit: Annotated[
        int, typer.Option("--limit", help="At most this many a page (1–1000).", min=1, max=1000)
    ] = 100,
    follow: Annotated[bool, typer.Option("--follow", help="Keep printing new blocks.")] = False,
    interval: Annotated[
        float,
        typer.Option(
            "--interval", help="Seconds between polls with --follow (0.1–3600).", min=0.1, max=3600
        ),
    ] = DEFAULT_POLL,
    node: NodeOpt = DEFAULT_NODE,
    as_json: JsonOpt = False,
) -> None:
    """List the node's blocks (unverified: see `chainmail verify block`)."""
    out = _out()
    with _client(node) as client, _interruptible():
        last = after
        while True:
            page = client.blocks(last, limit)
            for block in page:
                _print_block(out, block, as_json)
                last = max(last, int(block.get("height", last)))
            if not follow:
                return
            if len(page) < limit:
                time.sleep(interval)


# --------------------------------------------------------------------------- verify


def _print_report(report: Report, as_json: bool) -> None:
    if as_json:
        _echo_json(
            {
                "subject": report.subject,
                "ok": report.ok,
                "checks": [{"check": c.check, "ok": c.ok, "detail": c.detail} for c in report],
            }
        )
        return
    out = _out()
    for check in report:
        line = Text(
            f"{_OK if check.ok else _FAIL} ", style="bold green" if check.ok else "bold red"
        )
        line.append(f"{_printable(check.check)}: ", style="bold")
        line.append(_printable(check.detail))
        out.print(line)


def _verify(
    node: str,
    node_id: str | None,
    as_json: bool,
    what: str,
    run: Callable[[Client, Progress], Report],
) -> Report:
    err = _err()
    with _client(node, node_id=node_id) as client:
        try:
            # Text: a str status is console markup, and ``what`` is the id as typed.
            with err.status(Text(f"verifying {what}…")) as status:
                report = run(client, lambda text: status.update(Text(f"verifying {what}: {text}")))
        except VerificationFailed as exc:
            _print_report(exc.report, as_json)
            err.print(Text(f"chainmail: {_printable(exc.diagnostics())}", style="red"))
            raise typer.Exit(1) from None
    _print_report(report, as_json)
    return report


@verify_app.command("message")
def verify_message(
    msg_id: Annotated[str, typer.Argument(metavar="ID", help="Message id %….sha256.")],
    node: NodeOpt = DEFAULT_NODE,
    node_id: NodeIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a message: id, signature, inclusion in a signed block, current checkpoint."""
    _verify(node, node_id, as_json, msg_id, lambda c, p: c.verify_message(msg_id, progress=p))


@verify_app.command("tx")
def verify_tx(
    tx_id: Annotated[str, typer.Argument(metavar="ID", help="Transaction id %….sha256.")],
    node: NodeOpt = DEFAULT_NODE,
    node_id: NodeIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a closed transaction: its block, its record, and every message in it."""
    _verify(node, node_id, as_json, tx_id, lambda c, p: c.verify_tx(tx_id, progress=p))


@verify_app.command("block")
def verify_block(
    height: Annotated[int, typer.Argument(metavar="H", help="Block height (from 1).", min=1)],
    node: NodeOpt = DEFAULT_NODE,
    node_id: NodeIdOpt = None,
    bitcoin: BitcoinOpt = None,
    witness: Annotated[
        list[str] | None,
        typer.Option(
            "--witness",
            metavar="@ID",
            help="Pin the witnesses the node must name (@IDs after one --witness, or repeat"
            " it): /healthz listing others fails the node identity check, instead of being"
            " believed.",
        ),
    ] = None,
    threshold: Annotated[
        int | None,
        typer.Option("--threshold", min=1, help="Pin the witness threshold /healthz must name."),
    ] = None,
    ots_out: Annotated[
        Path | None,
        typer.Option(
            "--ots-out",
            help="Write the anchored block's message and its OpenTimestamps proof into this"
            " directory (block-N.json, block-N.json.ots) for `ots verify`; asked of the node"
            " again, they must pass verify's checks, else nothing is written.",
            file_okay=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a block: signature, link to H-1, records, log consistency, checkpoints,
    its witness stages, and its Bitcoin anchor."""
    for pinned in witness or []:
        if not is_feed_id(pinned):
            raise Error(
                f"--witness: expected a feed id @….ed25519, got {pinned!r}", code="invalid_format"
            )
    report = _verify(
        node,
        node_id,
        as_json,
        f"block {height}",
        lambda c, p: c.verify_block(
            height,
            progress=p,
            bitcoin=bitcoin,
            witnesses=None if witness is None else tuple(witness),
            threshold=threshold,
        ),
    )
    if ots_out is not None:
        with _client(node, node_id=node_id) as client:
            written, chain = _write_ots(client, height, ots_out, _verified_node(report, node_id))
        typer.echo(f"wrote {written} and {written}.ots", err=True)
        flag = {"bitcoin-testnet": "--btc-testnet ", "bitcoin-regtest": "--btc-regtest "}.get(
            chain, ""
        )
        if chain in ("bitcoin", "bitcoin-testnet", "bitcoin-regtest"):
            typer.echo(
                f"  check them with: ots {flag}--bitcoin-node URL verify {written}.ots"
                " (URL: your Bitcoin node's JSON-RPC)",
                err=True,
            )
        else:
            typer.echo(
                f"  the anchor is on {chain}, which the ots client has no flag for:"
                " verify block --bitcoin checks it",
                err=True,
            )


def _verified_node(report: Report, pinned: str | None) -> str:
    """The node id ``report``'s verification held the node to: ``pinned``, else the one
    its node identity check bound."""
    if pinned is not None:
        return pinned
    if report.node_id is None:
        raise Error("--ots-out: the verification bound no node id", code="invalid_proof")
    return report.node_id


def _write_ots(client: Client, height: int, directory: Path, node_id: str) -> tuple[Path, str]:
    """The anchored block's message (the bytes its id hashes) and its first anchor's
    ``.ots`` proof, as ``ots verify`` takes them. The node is asked again (what it
    answers now is what goes on disk), so each answer is held to what ``verify``
    checks: the anchored block at ``height`` or above, linked down to it by ``prev``,
    every block signed by ``node_id`` (the node verify bound), and the anchor too.
    Returns the message's path and the anchor's chain. ``Error`` when there is no
    anchor or the answers do not hold."""
    try:
        body = client.block(height)
        anchored = body.get("anchored")
        if not isinstance(anchored, dict) or not anchored.get("anchors"):
            raise Error(f"block {height} is not anchored in Bitcoin yet", code="not_found")
        top = anchored["height"]
        if type(top) is not int or top < height:
            raise ProofError(f"the node names block {top!r} as block {height}'s anchored one")
        top_message = _linked(client, body["message"], height, top, node_id)
        first = anchored["anchors"][0]
        message = client.message(str(first["id"]))["message"]
        proof = client.get_blob(str(message["content"]["ots"]))
        top_id = ssb.message_id(top_message)
        content, _ = anchors.check_message(message, node_id, top, top_id, proof, client.hmac_key)
        text = ssb.stringify(top_message, 2).encode("utf-8")
        if not text.isascii():
            raise ProofError(f"block {top}: its message does not hash to its id")
    except (KeyError, TypeError, ValueError) as exc:
        raise Error(
            f"--ots-out: the node's answer is malformed: {exc}", code="invalid_proof"
        ) from None
    except (ProofError, InvalidMessage) as exc:
        raise Error(f"--ots-out: {exc.detail}", code="invalid_proof") from None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"block-{top}.json"
        path.write_bytes(text)
        path.with_name(path.name + ".ots").write_bytes(proof)
    except OSError as exc:
        raise Error(f"--ots-out {directory}: {exc.strerror or exc}", code="invalid_format") from exc
    return path, _printable(content.get("chain"))


#: Blocks asked for at a time while following ``prev`` links up to the anchored block.
_LINK_PAGE: Final = 1000


def _linked(
    client: Client, message: dict[str, Any], height: int, top: int, node_id: str
) -> dict[str, Any]:
    """Block ``top``'s signed message, checked to descend by ``prev`` links from
    ``message``, block ``height``, every one signed by ``node_id``. ``ProofError``
    when they do not."""
    checked = ssb.check(message, client.hmac_key)
    if checked.author != node_id:
        raise ProofError(f"block {height}: expected author {node_id}, got {checked.author}")
    info = block_rules.parse_block_content(checked.content, checked.id)
    if info.height != height:
        raise ProofError(f"block {height}: the node's answer is block {info.height}")
    previous = message
    while info.height < top:
        listed = client.blocks(info.height, min(_LINK_PAGE, top - info.height))
        if not listed:
            raise ProofError(f"the node lists no block after {info.height}, below {top}")
        for entry in listed:
            info = block_rules.verify_block(
                entry["message"], node_id, previous=previous, hmac_key=client.hmac_key
            )
            previous = entry["message"]
            if info.height >= top:
                break
    if info.height != top:
        raise ProofError(f"block {top}: the node's answer is block {info.height}")
    return previous
