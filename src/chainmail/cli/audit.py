"""`chainmail audit --node URL` — check a node from what it publishes (DESIGN §7, §9)."""

from __future__ import annotations

from typing import Annotated

import typer

from chainmail.audit import Finding
from chainmail.auditing import audit_node
from chainmail.cli._app import app
from chainmail.cli.commands import (
    DEFAULT_POLL,
    JsonOpt,
    NodeIdOpt,
    NodeOpt,
    _client,
    _echo_json,
    _err,
    _interruptible,
)
from chainmail.client import DEFAULT_NODE


@app.command()
def audit(
    node: NodeOpt = DEFAULT_NODE,
    node_id: NodeIdOpt = None,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0,
            help="Seconds a message may be on the firehose before a block must cover it;"
            " after that it counts as censored.",
        ),
    ] = 10.0,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep auditing new messages and blocks (Ctrl-C ends).")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between reads with --follow.")
    ] = DEFAULT_POLL,
    as_json: JsonOpt = False,
) -> None:
    """Audit a node from what it publishes, trusting none of it.

    Reads the whole firehose and every block; checks each message (id,
    signature, its feed's order: forks), that the firehose has no gaps, that
    every block is the node's, chained, verifies with the node's proofs and
    has the roots this audit computes itself from the firehose, and that
    every message (but the node's own) is in a block within --grace seconds
    of being seen. Prints one line a finding and a summary on stderr; exits 1
    if there was any finding. Without --follow it waits at most --grace
    seconds for blocks to cover the newest messages, then stops; with it,
    Ctrl-C ends it with the same summary and exit status.
    """

    def show(finding: Finding) -> None:
        if as_json:
            _echo_json(finding.to_json())
        else:
            typer.echo(str(finding))

    with _client(node, node_id=node_id) as client, _interruptible():
        summary = audit_node(
            client,
            grace=grace,
            node_id=node_id,
            follow=follow,
            interval=interval,
            on_finding=show,
        )
    found = len(summary.findings)
    outcome = "no findings" if not found else f"{found} finding(s)"
    _err().print(
        f"audited {summary.messages} messages and {summary.blocks} blocks of {summary.node_id}:"
        f" {outcome}",
        style="green" if not found else "red",
        highlight=False,
    )
    if found:
        raise typer.Exit(1)
