"""The root typer application that every command module attaches to."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="chainmail",
    help="Blockchain-style messaging: signed feeds, routed delivery, sealed blocks, proofs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
