"""`chainmail audit --node URL` — check a node from what it publishes (DESIGN §7, §9)."""

from __future__ import annotations

import contextlib
from typing import Annotated, Final

import typer
from rich.text import Text

from chainmail.audit import Finding
from chainmail.auditing import audit_node
from chainmail.bitcoinrpc import BitcoinUnreachable
from chainmail.cli._app import app
from chainmail.cli.commands import (
    DEFAULT_POLL,
    BitcoinOpt,
    JsonOpt,
    NodeIdOpt,
    NodeOpt,
    _client,
    _echo_json,
    _err,
    _interruptible,
    _printable,
)
from chainmail.client import DEFAULT_NODE, NodeUnavailable

#: The longest --grace taken: a year (past it the clock's arithmetic overflows).
_MAX_SECONDS: Final = 366 * 86400


@app.command()
def audit(
    node: NodeOpt = DEFAULT_NODE,
    node_id: NodeIdOpt = None,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0,
            max=_MAX_SECONDS,
            help="Seconds a message may be on the firehose before a block must cover it"
            " (and a tx may be finished, or past its deadline, before a block's records"
            " hold it); after that it counts as censored.",
        ),
    ] = 10.0,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep auditing new messages and blocks (Ctrl-C ends).")
    ] = False,
    interval: Annotated[
        float,
        typer.Option(
            "--interval", min=0.1, max=3600, help="Seconds between reads with --follow (≤ 3600)."
        ),
    ] = DEFAULT_POLL,
    mirror: Annotated[
        list[str] | None,
        typer.Option(
            "--mirror",
            metavar="URL",
            help="Another endpoint of the same node (a mirror, a proxy, the URL a counterparty"
            " uses); repeat for several. Its signed checkpoints and blocks must be the ones the"
            " node signed for --node: two that disagree are a split_view, signed proof that"
            " the node showed two histories.",
        ),
    ] = None,
    bitcoin: BitcoinOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Audit a node from what it publishes, trusting none of it.

    Reads the whole firehose and every block; checks each message (id,
    signature, its feed's order: forks), that the firehose has no gaps, that
    every block is the node's, chained, verifies with the node's proofs and
    has the roots this audit computes itself from the firehose, and that
    every message (but the node's own) is in a block within --grace seconds
    of being seen, and every tx in a block's records within --grace seconds
    of finishing or of its deadline. Prints one line a finding and a summary on stderr; exits 1
    if there was any finding. Without --follow it waits at most --grace
    seconds for blocks to cover the newest messages, then stops; with it,
    Ctrl-C ends it with the same summary and exit status, and a node that
    cannot be reached for a while is tried again every --interval. With --mirror it
    also compares what each mirror serves with what --node serves (each
    mirror's own firehose is checked by auditing it with --node). Each Bitcoin
    anchor the node posted is checked once its block is read: its proof from the
    block id through its Bitcoin transaction, and with --bitcoin the header.
    """

    # What the audited node says (its id, what a finding quotes) is neither
    # console markup nor terminal control: Text, and printable.
    def show(finding: Finding) -> None:
        if as_json:
            _echo_json(finding.to_json())
        else:
            typer.echo(_printable(finding))

    def outage(exc: NodeUnavailable | None) -> None:
        if exc is None:
            _err().print(Text("chainmail: the node answers again; auditing on"))
        else:
            _err().print(
                Text(
                    f"chainmail: {_printable(exc.diagnostics())}; trying again every {interval:g} s"
                )
            )

    def bitcoin_outage(exc: BitcoinUnreachable | None) -> None:
        if exc is None:
            _err().print(Text("chainmail: the Bitcoin node answers again; checking anchors on"))
        else:
            _err().print(
                Text(
                    f"chainmail: {_printable(exc.diagnostics())}; anchors are checked"
                    " when it answers"
                )
            )

    def caught_up(messages: int, blocks: int) -> None:
        _err().print(
            Text(
                f"chainmail: audited {messages} messages and {blocks} blocks so far;"
                f" following, every {interval:g} s (Ctrl-C ends)"
            )
        )

    with contextlib.ExitStack() as stack:
        client = stack.enter_context(_client(node, node_id=node_id))
        others = [stack.enter_context(_client(url, node_id=node_id)) for url in mirror or ()]
        stack.enter_context(_interruptible())
        summary = audit_node(
            client,
            grace=grace,
            node_id=node_id,
            follow=follow,
            interval=interval,
            on_finding=show,
            mirrors=others,
            on_outage=outage,
            on_caught_up=caught_up,
            bitcoin=bitcoin,
            on_bitcoin_outage=bitcoin_outage,
        )
    found = len(summary.findings)
    outcome = "no findings" if not found else f"{found} finding(s)"
    compared = f", compared with {len(summary.mirrors)} mirror(s)" if summary.mirrors else ""
    _err().print(
        Text(
            f"audited {summary.messages} messages and {summary.blocks} blocks of"
            f" {_printable(summary.node_id)}{compared}: {outcome}",
            style="green" if not found else "red",
        )
    )
    if found:
        raise typer.Exit(1)
