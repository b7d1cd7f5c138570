"""`chainmail demo` — the settlement story end to end."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console

from chainmail.cli._app import app
from chainmail.demo import embedded_node, run_demo


@app.command()
def demo(
    node: Annotated[
        str | None,
        typer.Option(help="Node URL; without it the demo starts an embedded node in a temp dir."),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Print every verification check.")] = False,
) -> None:
    """Settle a trade end to end and verify every proof locally."""
    console = Console(soft_wrap=True)
    started = time.monotonic()
    if node is None:
        console.print("[dim]starting an embedded node in a temporary directory…[/]")
        with embedded_node() as url:
            run_demo(url, console, verbose=verbose)
    else:
        run_demo(node.rstrip("/"), console, verbose=verbose)
    console.print(f"[dim]done in {time.monotonic() - started:.1f} s[/]")
