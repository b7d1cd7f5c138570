"""`chainmail audit --node URL` — check a node from what it publishes (DESIGN §7, §9)."""

from __future__ import annotations

import collections
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from typing import Annotated, Any, Final

import typer

from chainmail.audit import Auditor, Checked, Finding
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
from chainmail.client import DEFAULT_NODE, Client, VerificationFailed

#: Firehose messages checked in one batch (their signatures in one C call).
_CHUNK: Final = 512
#: Threads checking chunks at once.
_WORKERS: Final = os.cpu_count() or 1

_Chunk = list[tuple[int, str, dict[str, Any]]]


def _now() -> int:
    return time.time_ns() // 1_000_000


class _Run:
    """One audit: reads the node into an ``Auditor`` and prints each finding once."""

    def __init__(
        self,
        client: Client,
        auditor: Auditor,
        pipelines: int,
        as_json: bool,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.pool = pool
        self.client = client
        self.auditor = auditor
        self.pipelines = pipelines
        self.as_json = as_json
        self.findings = 0

    def report(self, found: list[Finding]) -> None:
        for finding in found:
            self.findings += 1
            if self.as_json:
                _echo_json(finding.to_json())
            else:
                typer.echo(str(finding))

    def firehose(self) -> None:
        """Everything logged since the last read, pipeline by pipeline."""
        for pipeline in range(self.pipelines):
            start = self.auditor.next_index(pipeline)
            # Chunks are checked on the pool (ed25519 without the GIL: every core)
            # while the stream is read; the auditor takes them in order.
            checking: collections.deque[tuple[_Chunk, Future[list[Checked]]]] = collections.deque()

            chunk: _Chunk = []
            for e in self.client.firehose(start, pipeline=pipeline):
                chunk.append((e.index, e.id, e.message))
                if len(chunk) == _CHUNK:
                    checking.append((chunk, self.pool.submit(self.auditor.check, chunk)))
                    chunk = []
                    while len(checking) > 2 * _WORKERS:
                        self._take(pipeline, checking)
            if chunk:
                checking.append((chunk, self.pool.submit(self.auditor.check, chunk)))
            while checking:
                self._take(pipeline, checking)

    def _take(
        self, pipeline: int, checking: collections.deque[tuple[_Chunk, Future[list[Checked]]]]
    ) -> None:
        chunk, checked = checking.popleft()
        self.report(
            self.auditor.see_messages(pipeline, chunk, now=_now(), checked=checked.result())
        )

    def blocks(self) -> None:
        """Every block since the last read: checked against the firehose, and verified
        with the node's proofs (``Client.verify_block``)."""
        while True:
            page = self.client.blocks(self.auditor.height, 100)
            for block in page:
                height = int(block["height"])
                self.report(self.auditor.see_block(height, str(block["id"]), block["message"]))
                try:
                    self.client.verify_block(height, node_id=self.auditor.node_id)
                except VerificationFailed as exc:
                    failed = next((c for c in exc.report if not c.ok), None)
                    why = exc.detail if failed is None else f"{failed.check}: {failed.detail}"
                    self.report([Finding("block", f"block {height}: {why}", height=height)])
            if len(page) < 100:
                return

    def overdue(self) -> None:
        self.report(self.auditor.overdue(now=_now()))


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
    with _client(node, node_id=node_id) as client, _interruptible(), ExitStack() as stack:
        health = client.health()
        auditor = Auditor(node_id or str(health["id"]), grace_ms=int(grace * 1000))
        pool = stack.enter_context(ThreadPoolExecutor(_WORKERS, thread_name_prefix="audit"))
        run = _Run(client, auditor, int(health.get("pipelines", 1)), as_json, pool)
        run.firehose()
        run.blocks()
        if auditor.unchecked_roots():
            run.firehose()  # blocks made since the first read cover messages it had not seen
        if follow:
            try:
                while True:
                    run.overdue()
                    time.sleep(interval)
                    run.firehose()
                    run.blocks()
            except KeyboardInterrupt:
                pass  # Ctrl-C ends a followed audit: its summary follows
        else:
            deadline = time.monotonic() + grace
            while auditor.waiting() and time.monotonic() < deadline:
                time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
                run.blocks()
            run.overdue()
    outcome = "no findings" if not run.findings else f"{run.findings} finding(s)"
    _err().print(
        f"audited {auditor.messages} messages and {auditor.blocks} blocks of {auditor.node_id}:"
        f" {outcome}",
        style="green" if not run.findings else "red",
        highlight=False,
    )
    if run.findings:
        raise typer.Exit(1)
