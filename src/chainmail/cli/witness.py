"""`chainmail witness --as NAME` — co-sign a node's blocks in stages (DESIGN §7)."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer

from chainmail.audit import Finding
from chainmail.cli._app import app
from chainmail.cli.commands import (
    DEFAULT_POLL,
    AsOpt,
    HomeOpt,
    JsonOpt,
    NodeOpt,
    _client,
    _echo_json,
    _err,
    _interruptible,
)
from chainmail.client import DEFAULT_NODE
from chainmail.errors import Error
from chainmail.witnessing import witness_node


@app.command()
def witness(
    as_: AsOpt,
    node: NodeOpt = DEFAULT_NODE,
    home: HomeOpt = None,
    interval: Annotated[
        float,
        typer.Option(
            "--interval", min=0.1, max=3600, help="Seconds between reads of the node (≤ 3600)."
        ),
    ] = DEFAULT_POLL,
    as_json: JsonOpt = False,
) -> None:
    """Witness a node: audit everything it publishes and co-sign each sound block, stage by stage.

    --as must be one of the node's witnesses (`serve --witness`). Reads the
    whole firehose and every block as `chainmail audit --follow` does; posts a
    `block/sign` for a block's first stage (precommit) once the block had no
    finding and every root in it was recomputed here from the firehose, and
    for each later stage (commit, seal) once the node's record of the one
    before checks out. Prints each finding (a block with one is never
    signed), a line on stderr for each signature and for each the node
    refused (that block is not signed again), and a summary when Ctrl-C
    ends it; exits 1 if there was any finding.
    """
    found: list[Finding] = []

    def show(finding: Finding) -> None:
        found.append(finding)
        if as_json:
            _echo_json(finding.to_json())
        else:
            typer.echo(str(finding))

    def signed(height: int, stage: str) -> None:
        _err().print(f"signed {stage} of block {height}", style="dim", highlight=False)

    def refused(height: int, stage: str, exc: Error) -> None:
        _err().print(
            f"not signing block {height}: the node refused its {stage} signature ({exc.code}:"
            f" {exc.detail})",
            style="yellow",
            highlight=False,
        )

    with contextlib.ExitStack() as stack:
        client = stack.enter_context(_client(node, as_, home))
        stack.enter_context(_interruptible())
        summary = witness_node(
            client, interval=interval, on_signed=signed, on_finding=show, on_refused=refused
        )
    outcome = "no findings" if not found else f"{len(found)} finding(s)"
    _err().print(
        f"witnessed {summary.messages} messages and {summary.blocks} blocks of"
        f" {summary.node_id}: {outcome}",
        style="green" if not found else "red",
        highlight=False,
    )
    if found:
        raise typer.Exit(1)
