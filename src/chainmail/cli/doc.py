"""`chainmail doc` — notarise a document, fetch one, and prove later what was notarised."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from chainmail.cli._app import app
from chainmail.cli.commands import (
    AsOpt,
    HomeOpt,
    JsonOpt,
    NodeIdOpt,
    NodeOpt,
    _client,
    _err,
    _print_receipt,
    _publisher,
    _verify,
)
from chainmail.client import DEFAULT_NODE, read_document
from chainmail.errors import Error
from chainmail.ids import blob_id, is_blob_id

doc_app = typer.Typer(
    help="Documents: notarise one (its bytes stored as a blob, a signed `doc` message naming "
    "their SHA-256), fetch one, and check later that a file is what a doc message notarised.",
    no_args_is_help=True,
)
app.add_typer(doc_app, name="doc")

FileArg = Annotated[
    Path,
    typer.Argument(metavar="FILE", help="The document.", dir_okay=False, show_default=False),
]


OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out", help="Write the bytes here (default or -: standard output, if not a terminal)."
    ),
]
NameOpt = Annotated[str | None, typer.Option("--name", help="Its name (default: the file's).")]
MimeOpt = Annotated[
    str | None, typer.Option("--mime", help="Its media type (default: guessed from the name).")
]


@doc_app.command("notarise")
def doc_notarise(
    file: FileArg,
    as_: AsOpt,
    tx: Annotated[
        str | None, typer.Option("--tx", help="The transaction the document belongs to.")
    ] = None,
    name: NameOpt = None,
    mime: MimeOpt = None,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Store FILE as a blob and post the `doc` message naming it; prints the message's id.

    The node keeps the blob for good once that message is logged. Later, `chainmail doc
    check FILE ID` proves the file is what was notarised, and when.
    """
    for option, value in (("--name", name), ("--mime", mime)):
        if value is not None and not value.strip():
            raise Error(f"{option}: expected some text, got {value!r}", code="invalid_format")
    data, name, mime = read_document(file, name, mime)  # read once: its blob id is said too
    with _publisher(node, as_, home) as client:
        receipt = client.notarise(data, name=name, mime=mime, tx=tx)
    _print_receipt(receipt, as_json, "doc message", {"blob": blob_id(data), "size": len(data)})


@doc_app.command("get")
def doc_get(
    blob: Annotated[str, typer.Argument(metavar="BLOB", help="The blob id &….sha256.")],
    out: OutOpt = None,
    node: NodeOpt = DEFAULT_NODE,
) -> None:
    """Fetch a blob; its bytes are checked against its id before anything is written."""
    if not is_blob_id(blob):
        raise Error(f"not a blob id (&….sha256): {blob!r}", code="invalid_format")
    out = bytes_destination(out, "doc get")
    with _client(node) as client:
        data = client.get_blob(blob)
    write_bytes_out(data, out)


def bytes_destination(out: Path | None, command: str) -> Path | None:
    """Where ``--out`` sends bytes: a file, or None for standard output ("-" or
    no option), refused when that is a terminal (before anything is fetched)."""
    if out is not None and str(out) == "-":
        out = None  # the usual name of standard output
    if out is None and sys.stdout.isatty():
        raise Error(
            f"{command}: the bytes would go to the terminal; give --out FILE or a pipe",
            code="invalid_format",
        )
    return out


def write_bytes_out(data: bytes, out: Path | None, note: str = "") -> None:
    """Write ``data`` to ``out`` (None: standard output), saying so on standard error."""
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        out.write_bytes(data)
    except OSError as exc:
        raise Error(f"--out: cannot write {out}: {exc}", code="invalid_format") from exc
    _err().print(Text(f"{len(data)} bytes written to {out}{note}", style="dim"))


@doc_app.command("check")
def doc_check(
    file: FileArg,
    msg_id: Annotated[
        str,
        typer.Argument(metavar="ID", help="The doc message id %….sha256 (notarise printed it)."),
    ],
    node: NodeOpt = DEFAULT_NODE,
    node_id: NodeIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Prove FILE is what doc message ID notarised; exit 1 if not.

    Checks its SHA-256 and size against the signed message, and the message's inclusion
    in a signed block; the node's copy of the file is not used.
    """
    _verify(
        node, node_id, as_json, msg_id, lambda c, p: c.verify_document(file, msg_id, progress=p)
    )
