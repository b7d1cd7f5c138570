"""A witness at work: follow a node, check its blocks, co-sign them stage by stage (DESIGN §7).

``witness_node`` audits the node as ``chainmail audit --follow`` does (every
firehose message checked, every root recomputed from them, every block
verified with the node's proofs) and signs:

* the first stage of a block once the block had no finding and this audit
  computed each of its checkpoints' roots itself;
* each later stage once the node recorded the one before and that record
  checks out (``witnesses.check_stage``: the node's message, the witnesses'
  signature messages, their root).

A block with a finding, or a stage record that fails, is never signed
again; nor is one whose signature the node refused (a block that left the
heights it takes signatures for, say), which ``on_refused`` hears of; a
refusal that passes (rate limited) is tried again in a later round.
``chainmail witness`` is the command line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from chainmail import blocks
from chainmail.audit import Auditor, Finding
from chainmail.auditing import _WORKERS, AuditSummary, _Run
from chainmail.client import Client, NodeUnavailable
from chainmail.errors import Error, OperationalError, ProofError, RateLimited
from chainmail.witnesses import STAGES, check_stage

__all__ = ["WitnessError", "witness_node"]


class WitnessError(Error):
    """This identity cannot witness the node (it is not one of its witnesses)."""

    code = "not_admitted"
    title = "Not a witness"


@dataclass
class _Watched:
    id: str
    sizes: dict[int, int]
    #: Stages this witness signed; stages whose record it checked.
    signed: int = 0
    checked: int = 0


@dataclass
class _Witness:
    client: Client
    auditor: Auditor
    witnesses: frozenset[str]
    threshold: int
    on_signed: Callable[[int, str], None] | None
    on_finding: Callable[[Finding], None] | None
    on_refused: Callable[[int, str, Error], None] | None = None
    blocks: dict[int, _Watched] = field(default_factory=dict)
    refused: set[int] = field(default_factory=set)

    def see_block(
        self, height: int, block_id: str, message: dict[str, Any], found: list[Finding]
    ) -> None:
        if found:
            self.refused.add(height)
            return
        try:
            info = blocks.parse_block_content(message.get("content"), block_id)
        except ProofError:
            self.refused.add(height)
            return
        self.blocks[height] = _Watched(block_id, {log.pipeline: log.size for log in info.logs})

    def report(self, finding: Finding) -> None:
        if self.on_finding is not None:
            self.on_finding(finding)

    def round(self) -> None:
        """Sign what is ready: a verified block's first stage, the next of a recorded one."""
        for height in sorted(self.blocks):
            watched = self.blocks[height]
            if not all(self.auditor.verified(p, s) for p, s in watched.sizes.items()):
                continue
            info = self.client.block(height)
            stages = info.get("stages") or []
            try:
                for index in range(watched.checked, len(stages)):
                    self._check(height, watched, stages[index], index)
                    watched.checked = index + 1
            except ProofError as exc:
                self.report(Finding.block(height, exc.detail))
                del self.blocks[height]
                self.refused.add(height)
                continue
            current = len(stages)
            if info.get("sealed") or current >= len(STAGES):
                del self.blocks[height]
                continue
            if watched.signed > current:
                continue  # signed the current stage already; the node records it
            try:
                self._sign(height, watched, current)
            except NodeUnavailable:
                raise
            except (RateLimited, OperationalError):
                continue  # it may pass next round
            except Error as exc:
                # The node will not take it: raised, it ended the witness, and a
                # restart met the same block first, so it could never go on.
                del self.blocks[height]
                self.refused.add(height)
                if self.on_refused is not None:
                    self.on_refused(height, STAGES[current], exc)

    def _check(self, height: int, watched: _Watched, stage: dict[str, Any], index: int) -> None:
        message = self.client.message(str(stage.get("id")))["message"]
        signs = {str(s): self.client.message(str(s))["message"] for s in stage.get("signs") or []}
        check_stage(
            stage,
            message,
            signs,
            node_id=self.auditor.node_id,
            block_id=watched.id,
            height=height,
            index=index,
            witnesses=self.witnesses,
            threshold=self.threshold,
        )

    def _sign(self, height: int, watched: _Watched, index: int) -> None:
        stage = STAGES[index]
        content = {"type": "block/sign", "block": watched.id, "height": height, "stage": stage}
        try:
            self.client.publish(content)
        except NodeUnavailable:
            raise
        except Error as exc:
            if "already signed" not in exc.detail:
                raise
        watched.signed = index + 1
        if self.on_signed is not None:
            self.on_signed(height, stage)


def witness_node(
    client: Client,
    *,
    interval: float = 1.0,
    grace: float = 10.0,
    on_signed: Callable[[int, str], None] | None = None,
    on_finding: Callable[[Finding], None] | None = None,
    on_refused: Callable[[int, str, Error], None] | None = None,
    rounds: int | None = None,
) -> AuditSummary:
    """Witness the node ``client`` talks to, as ``client``'s identity, until interrupted.

    Raises ``WitnessError`` when that identity is not one of the node's
    witnesses (its ``/healthz``), and what the client raises when the node
    cannot be read at the start; later outages are waited out. ``rounds``
    stops after that many reads (tests). ``on_refused`` hears of a signature
    the node refused (height, stage, its error): that block is not signed
    again. Returns the audit's summary;
    ``KeyboardInterrupt`` ends it.
    """
    health = client.health()
    witnesses = frozenset(map(str, health.get("witnesses") or ()))
    if client.id not in witnesses:
        raise WitnessError(f"{client.id} is not a witness of node {health.get('id')}")
    threshold = int(health.get("threshold") or len(witnesses))
    pipelines = int(health.get("pipelines", 1))
    auditor = Auditor(str(health["id"]), grace_ms=int(grace * 1000), pipelines=pipelines)
    summary = AuditSummary(auditor.node_id)
    state = _Witness(client, auditor, witnesses, threshold, on_signed, on_finding, on_refused)

    def finding(f: Finding) -> None:
        # A finding about a block (a root that does not match, found once the
        # firehose reached it) means it is never signed.
        if f.height is not None and f.height in state.blocks:
            del state.blocks[f.height]
            state.refused.add(f.height)
        state.report(f)

    with ThreadPoolExecutor(_WORKERS, thread_name_prefix="witness") as pool:
        run = _Run(client, auditor, pipelines, pool, summary, finding, state.see_block)
        done = 0
        try:
            while rounds is None or done < rounds:
                try:
                    run.firehose()
                    run.blocks()
                    if auditor.unchecked_roots():
                        run.firehose()
                    state.round()
                except NodeUnavailable:
                    if done == 0:
                        raise
                done += 1
                if rounds is None or done < rounds:
                    time.sleep(interval)
        except KeyboardInterrupt:
            pass
    summary.messages, summary.blocks = auditor.messages, auditor.blocks
    return summary
