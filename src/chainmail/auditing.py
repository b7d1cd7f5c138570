"""Auditing a node over its API: ``audit_node`` reads into an ``audit.Auditor``.

    from chainmail.auditing import audit_node
    from chainmail.client import Client

    with Client("http://127.0.0.1:8700") as client:
        summary = audit_node(client, grace=10.0)
    for finding in summary.findings:
        print(finding)

``chainmail audit`` is this with a printer. Reading is all it does; every
judgement is ``chainmail.audit``'s, which is pure.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from chainmail import ssb
from chainmail.anchors import ANCHOR
from chainmail.audit import Auditor, Checked, Finding
from chainmail.bitcoinrpc import BitcoinBehind, BitcoinNode, BitcoinUnreachable
from chainmail.checkpoint import Checkpoint, verify_checkpoint
from chainmail.client import Client, NodeUnavailable, VerificationFailed
from chainmail.errors import Error, InvalidMessage, NotFound, ProofError
from chainmail.ids import is_feed_id
from chainmail.mirrors import compare_block_ids, compare_checkpoints, needs_proof
from chainmail.verify import NodeInfo, node_info

__all__ = ["AuditSummary", "audit_node"]

#: Firehose messages checked in one batch (their signatures in one C call).
_CHUNK: Final = 512
#: Threads checking chunks at once.
_WORKERS: Final = os.cpu_count() or 1
#: Blocks asked for at a time.
_BLOCK_PAGE: Final = 100
#: Reads an anchor seen on the firehose may be missing from its block's listing.
_ANCHOR_READS: Final = 2

_Chunk = list[tuple[int, str, dict[str, Any]]]


@dataclass
class AuditSummary:
    """What an audit read and found."""

    node_id: str
    messages: int = 0
    blocks: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: Endpoints compared with the node (``mirrors``), by URL.
    mirrors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def _now() -> int:
    return time.time_ns() // 1_000_000


def audit_node(
    client: Client,
    *,
    grace: float = 10.0,
    node_id: str | None = None,
    follow: bool = False,
    interval: float = 1.0,
    on_finding: Callable[[Finding], None] | None = None,
    mirrors: Sequence[Client] = (),
    on_outage: Callable[[NodeUnavailable | None], None] | None = None,
    on_caught_up: Callable[[int, int], None] | None = None,
    bitcoin: str | None = None,
    on_bitcoin_outage: Callable[[BitcoinUnreachable | None], None] | None = None,
) -> AuditSummary:
    """Audit the node ``client`` talks to (see ``chainmail.audit``).

    Reads its whole firehose and every block. Without ``follow`` it then waits
    at most ``grace`` seconds for blocks to cover the newest messages and
    returns; with it, it keeps reading every ``interval`` seconds until
    interrupted (``KeyboardInterrupt`` ends it and the summary is returned).
    ``node_id`` pins the node's identity instead of taking ``/healthz``'s.
    ``on_finding`` hears of each finding as it is made. Each of ``mirrors``
    (clients of other endpoints of the same node) is compared with it after
    every read (``chainmail.mirrors``): its checkpoints and blocks must be
    the ones the node signed for ``client``; a mirror that cannot be read or
    serves what the node did not sign is a ``mirror`` finding, never an
    exception. Raises what the client raises when the node cannot be read
    (``NodeUnavailable``, ``NotFound``), except while following: then a node
    that cannot be reached is read again every ``interval`` (``on_outage``
    hears the error when that starts, and None when the node answers again),
    and ``ProofError`` when ``/healthz`` names no pipeline count, or (with no
    ``node_id``) no node id. ``on_caught_up`` hears the messages and blocks audited by the first full
    read, once, when following starts. Each ``anchor`` the node posted is checked
    once its block is read; ``bitcoin``, the JSON-RPC URL of a Bitcoin node of your
    own, checks the Merkle roots its proofs reach in the Bitcoin headers too
    (``BitcoinError`` at once for a malformed URL). That node not answering
    (``BitcoinUnreachable``: down, warming up) says nothing about the audited node:
    it is raised, except while following: then the anchors wait for the next read
    (``on_bitcoin_outage`` hears the error when that starts, and None when it
    answers again). An anchor of a Bitcoin block that node has not reached yet
    (``BitcoinBehind``) waits alone: the others are checked (and it is heard of
    once); a synced node with no block near the height attested refutes the
    anchor (a finding). Any other ``BitcoinError`` of that node is raised.
    """
    if grace < 0 or interval <= 0:
        raise ValueError(f"grace must be ≥ 0 and interval > 0, got {grace} and {interval}")
    if bitcoin is not None:
        BitcoinNode(bitcoin).close()  # a malformed URL is said now, not at the first anchor
    health = client.health()
    pipelines = health.get("pipelines", 1)
    if type(pipelines) is not int or pipelines < 1:
        raise ProofError(f"healthz: expected a pipeline count, got {pipelines!r}")
    reported = health.get("id")
    if node_id is None and not is_feed_id(reported):
        # Nothing it signed could match: said once, not as a finding for every message.
        raise ProofError(f"healthz: expected the node's id (@….ed25519), got {reported!r}")
    if node_id is not None and reported is not None and reported != node_id:
        # Another node than the one pinned (one that names none is audited as the
        # pinned one): said once, not as a finding for every block and message.
        raise ProofError(
            f"node identity: expected node {node_id} (pinned), /healthz names {reported!r}"
        )
    auditor = Auditor(
        node_id or str(reported),
        grace_ms=int(grace * 1000),
        pipelines=pipelines,
        hmac_key=client.hmac_key,
    )
    summary = AuditSummary(auditor.node_id, mirrors=[m.node for m in mirrors])
    with ThreadPoolExecutor(_WORKERS, thread_name_prefix="audit") as pool:
        run = _Run(client, auditor, pipelines, pool, summary, on_finding, bitcoin=bitcoin)
        if follow:
            run.on_bitcoin_outage = on_bitcoin_outage or (lambda _: None)
        compare = _Compare(
            client, [_Mirror(m) for m in mirrors], _bound(health, auditor.node_id), auditor.hmac_key
        )
        try:
            run.firehose()
            run.blocks()
            if auditor.unchecked_roots():
                run.firehose()  # blocks made since the first read cover messages it had not seen
        except KeyboardInterrupt:
            if not follow:
                raise
            # A followed audit ended in its first read (long on a big node): its summary so far.
            summary.messages, summary.blocks = auditor.messages, auditor.blocks
            return summary
        if follow:
            if on_caught_up is not None:
                on_caught_up(auditor.messages, auditor.blocks)
            down: NodeUnavailable | None = None
            try:
                while True:
                    if down is None:
                        run.overdue()
                        run.report(compare.round())
                    time.sleep(interval)
                    try:
                        run.firehose()
                        run.blocks()
                    except NodeUnavailable as exc:
                        # A node down for a while does not end a watch, nor make
                        # its messages look censored: the next good read resumes.
                        if down is None and on_outage is not None:
                            on_outage(exc)
                        down = exc
                        continue
                    if down is not None:
                        down = None
                        if on_outage is not None:
                            on_outage(None)
                    # A round's lag is allowed: a block seen before the last read.
                    run.report(auditor.unmatched_roots(reads=2))
                    run.report(auditor.unlogged_blocks(reads=2))
            except KeyboardInterrupt:
                pass  # the end of a followed audit: its summary is returned
        else:
            deadline = time.monotonic() + grace
            while auditor.waiting() and time.monotonic() < deadline:
                time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
                run.blocks()
                if auditor.unchecked_roots():
                    run.firehose()
            run.firehose()  # everything the blocks seen so far cover is on it by now
            run.report(auditor.unmatched_roots())
            run.report(auditor.unlogged_blocks())
            run.overdue()
            run.report(compare.round())
            if run.anchored:
                run.blocks()  # the blocks of the anchors the last read saw, and their checks
                run.report(run.unserved_anchors())
    summary.messages, summary.blocks = auditor.messages, auditor.blocks
    return summary


@dataclass
class _Run:
    """One audit's reading: the node into an ``Auditor``, each finding reported once."""

    client: Client
    auditor: Auditor
    pipelines: int
    pool: ThreadPoolExecutor
    summary: AuditSummary
    on_finding: Callable[[Finding], None] | None
    #: Hears each block read: its height, id, signed message and its findings.
    on_block: Callable[[int, str, dict[str, Any], list[Finding]], None] | None = None
    #: JSON-RPC URL of a Bitcoin node of the auditor's own: anchors' headers are checked there.
    bitcoin: str | None = None
    #: Heights of blocks the node posted an ``anchor`` for (seen on the firehose), to check
    #: once the block itself is read.
    anchored: list[int] = field(default_factory=list)
    #: The anchor messages seen for each of those heights, and how many reads each has
    #: been missing from the node's own listing of the block's anchors.
    seen_anchors: dict[int, dict[str, int]] = field(default_factory=dict)
    #: Hears of the ``bitcoin`` node not answering (the error) and answering again (None);
    #: without it, that error is raised.
    on_bitcoin_outage: Callable[[BitcoinUnreachable | None], None] | None = None
    #: The ``bitcoin`` node did not answer at the last anchor checked.
    bitcoin_down: bool = False
    #: Heights whose anchor's Bitcoin block that node has not reached, once told.
    bitcoin_behind: set[int] = field(default_factory=set)

    def report(self, found: list[Finding]) -> None:
        for finding in found:
            self.summary.findings.append(finding)
            if self.on_finding is not None:
                self.on_finding(finding)

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
        self.auditor.firehose_read()

    def _take(
        self, pipeline: int, checking: collections.deque[tuple[_Chunk, Future[list[Checked]]]]
    ) -> None:
        chunk, checked = checking.popleft()
        self.report(
            self.auditor.see_messages(pipeline, chunk, now=_now(), checked=checked.result())
        )
        node_id = self.auditor.node_id
        for _, mid, message in chunk:
            content = message.get("content") if isinstance(message, dict) else None
            if (
                isinstance(content, dict)
                and content.get("type") == ANCHOR
                and message.get("author") == node_id
                and type(content.get("height")) is int
            ):
                self.anchored.append(content["height"])
                self.seen_anchors.setdefault(content["height"], {})[mid] = 0

    def blocks(self) -> None:
        """Every block since the last read: checked against the firehose, and verified
        with the node's proofs (``Client.verify_block``)."""
        while True:
            page = self.client.blocks(self.auditor.height, _BLOCK_PAGE)
            for block in page:
                height = int(block["height"])
                found = self.auditor.see_block(height, str(block["id"]), block["message"])
                records = self.client.block(height).get("records")
                if isinstance(records, list):
                    found += self.auditor.see_records(height, records)
                try:
                    self.client.verify_block(height, node_id=self.auditor.node_id, anchor=False)
                except VerificationFailed as exc:
                    found = _with_proof_failure(found, height, _failure(exc))
                self.report(found)
                if self.on_block is not None:
                    self.on_block(height, str(block["id"]), block["message"], found)
            if len(page) < _BLOCK_PAGE:
                self.anchors()
                return

    def anchors(self) -> None:
        """Each anchor seen, once its block was read: its proof replayed from the block id
        through its Bitcoin tx (``Client.verify_block``; the headers too with ``bitcoin``).
        One that fails is a ``block`` finding. Each height leaves ``anchored`` as soon as
        it is checked, so an error part way (the node down) checks none twice. One whose
        Bitcoin block the ``bitcoin`` node has not reached yet (``BitcoinBehind``) waits,
        and the others are checked all the same; without ``on_bitcoin_outage`` it is
        raised once they are."""
        behind: BitcoinBehind | None = None
        for height in dict.fromkeys(self.anchored):
            if height > self.auditor.height:
                continue
            if not self._listed(height):
                continue
            try:
                self.client.verify_block(height, node_id=self.auditor.node_id, bitcoin=self.bitcoin)
            except BitcoinBehind as exc:
                # This anchor's Bitcoin block only: a hostile node must not hold the
                # others back with one that attests a height to come.
                behind = behind or exc
                if self.on_bitcoin_outage is not None and height not in self.bitcoin_behind:
                    self.bitcoin_behind.add(height)
                    self.on_bitcoin_outage(exc)
                continue
            except BitcoinUnreachable as exc:
                # The auditor's own Bitcoin node: nothing is known of the anchor, nor of
                # the audited node. Checked again at the next read.
                if self.on_bitcoin_outage is None:
                    raise
                if not self.bitcoin_down:
                    self.bitcoin_down = True
                    self.on_bitcoin_outage(exc)
                return
            except VerificationFailed as exc:
                self.report([Finding.block(height, f"its anchor does not hold: {_failure(exc)}")])
            except NotFound as exc:
                self.report([Finding.block(height, f"its anchor does not hold: {exc.detail}")])
            self._forget(height)
            if self.bitcoin_down:
                self.bitcoin_down = False
                if self.on_bitcoin_outage is not None:
                    self.on_bitcoin_outage(None)
        if behind is not None and self.on_bitcoin_outage is None:
            raise behind

    def _listed(self, height: int) -> bool:
        """Whether the node lists, for block ``height``, every anchor seen for it on the
        firehose (else ``verify_block`` would check the others, or none). One missing a
        read is given the next one (the listing may lag the log); missing two, it is a
        ``block`` finding and forgotten."""
        seen = self.seen_anchors.get(height, {})
        if not seen:
            return True
        anchored = self.client.block(height).get("anchored")
        listed: set[str] = set()
        if isinstance(anchored, dict) and anchored.get("height") == height:
            for a in anchored.get("anchors") or []:
                if isinstance(a, dict) and isinstance(a.get("id"), str):
                    listed.add(a["id"])
        missing = [mid for mid in seen if mid not in listed]
        for mid in missing:
            seen[mid] += 1
            if seen[mid] >= _ANCHOR_READS:
                del seen[mid]
                self.report(
                    [
                        Finding.block(
                            height,
                            f"the node published anchor {mid} of it but does not list it"
                            " among the block's anchors",
                        )
                    ]
                )
        if any(seen.get(mid) for mid in missing):
            return False  # given another read
        if not seen:
            # Every anchor seen for it was reported above: nothing left to check.
            self._forget(height)
            return False
        return True

    def _forget(self, height: int) -> None:
        """Block ``height``'s anchors are done with: checked, or reported."""
        self.anchored = [h for h in self.anchored if h != height]
        self.seen_anchors.pop(height, None)
        self.bitcoin_behind.discard(height)

    def unserved_anchors(self) -> list[Finding]:
        """Anchors seen of blocks the node never served (end of a one-shot audit)."""
        found = [
            Finding.block(
                height, f"the node published an anchor of block {height}, which it never served"
            )
            for height in dict.fromkeys(self.anchored)
            if height > self.auditor.height
        ]
        self.anchored = []
        return found

    def overdue(self) -> None:
        self.report(self.auditor.overdue(now=_now()))


def _failure(exc: VerificationFailed) -> str:
    """What a failed verification says: its failed check and why, else its detail."""
    failed = next((c for c in exc.report if not c.ok), None)
    return exc.detail if failed is None else f"{failed.check}: {failed.detail}"


def _with_proof_failure(found: list[Finding], height: int, why: str) -> list[Finding]:
    """``found`` with the block's failed proof check in it: one ``block`` finding a block.

    The auditor's own checks (the chain, against the firehose) and the node's
    proofs often fail for one cause, a block changed after it was signed; its
    finding then says both instead of the block being reported twice.
    """
    for i, finding in enumerate(found):
        if finding.kind == "block" and finding.height == height:
            merged = dataclasses.replace(finding, detail=f"{finding.detail}; its proofs: {why}")
            return [*found[:i], merged, *found[i + 1 :]]
    return [*found, Finding.block(height, why)]


def _bound(health: dict[str, Any], node_id: str) -> NodeInfo | ProofError:
    """The node's checkpoint key, bound to ``node_id``; the error when /healthz does not bind it."""
    try:
        return node_info(health, node_id)
    except ProofError as exc:
        return exc


@dataclass
class _Mirror:
    """One other endpoint of the node: the height its blocks were compared up to, and
    the standing problems already reported (a followed audit says each once)."""

    client: Client
    height: int = 0
    reported: set[str] = field(default_factory=set)


@dataclass
class _Compare:
    """Each round, every mirror's checkpoints and new blocks against the node's own."""

    client: Client
    mirrors: list[_Mirror]
    node: NodeInfo | ProofError
    hmac_key: bytes | str | None = None

    def round(self) -> list[Finding]:
        if not self.mirrors:
            return []
        found: list[Finding] = []
        for mirror in self.mirrors:
            if isinstance(self.node, ProofError):
                self._say(
                    mirror,
                    "node",
                    Finding("mirror", f"{self.client.node}: {self.node.detail}"),
                    found,
                )
                continue
            try:
                self._one(mirror, self.node, found)
            except Error as exc:  # a mirror that cannot be read is a finding, not the end
                self._say(
                    mirror,
                    "unread",
                    Finding("mirror", f"{mirror.client.node}: {exc.diagnostics()}"),
                    found,
                )
            else:
                mirror.reported.discard("unread")
        return found

    @staticmethod
    def _say(mirror: _Mirror, key: str, finding: Finding, found: list[Finding]) -> None:
        if key not in mirror.reported:
            mirror.reported.add(key)
            found.append(finding)

    def _one(self, mirror: _Mirror, node: NodeInfo, found: list[Finding]) -> None:
        where = mirror.client.node
        served = mirror.client.health().get("id")
        if served != node.id:
            self._say(
                mirror,
                "id",
                Finding("mirror", f"{where} serves node {served}, not {node.id}"),
                found,
            )
            return
        for pipeline in range(node.pipelines):
            ours, why_ours = self._checkpoint(self.client, node, pipeline)
            theirs, why_theirs = self._checkpoint(mirror.client, node, pipeline)
            for client, why in ((self.client, why_ours), (mirror.client, why_theirs)):
                if why is not None:
                    finding = Finding(
                        "mirror",
                        f"{client.node}: its checkpoint of pipeline {pipeline} is not the node's: {why}",
                        pipeline=pipeline,
                    )
                    self._say(mirror, f"checkpoint {pipeline} {client.node}", finding, found)
            if ours is None or theirs is None:
                continue
            sizes = needs_proof(ours, theirs)
            proof: list[bytes] | None = None
            if sizes is not None:
                larger = mirror.client if theirs.size > ours.size else self.client
                try:
                    proof = larger.consistency(pipeline, *sizes)
                except Error:
                    proof = None  # the finding says no proof was given
            split = compare_checkpoints(pipeline, (self.client.node, ours), (where, theirs), proof)
            if split is not None:  # proven once, it stays proven: said once
                self._say(mirror, f"split {pipeline}", split, found)
        self._blocks(mirror, node, found)

    @staticmethod
    def _checkpoint(
        client: Client, node: NodeInfo, pipeline: int
    ) -> tuple[Checkpoint | None, str | None]:
        text = client.checkpoint(pipeline)
        try:
            return verify_checkpoint(text, node.verifier, origin=f"{node.origin}/{pipeline}"), None
        except ProofError as exc:
            return None, exc.detail

    def _blocks(self, mirror: _Mirror, node: NodeInfo, found: list[Finding]) -> None:
        while True:
            # The node's own bad blocks are the main audit's findings; the mirror's are these.
            ours, top_ours = self._block_ids(self.client, node, mirror.height, None)
            theirs, top_theirs = self._block_ids(mirror.client, node, mirror.height, found)
            found.extend(compare_block_ids((self.client.node, ours), (mirror.client.node, theirs)))
            both = min(top_ours, top_theirs)
            if both <= mirror.height:
                return
            mirror.height = both

    def _block_ids(
        self, client: Client, node: NodeInfo, after: int, found: list[Finding] | None
    ) -> tuple[dict[int, str], int]:
        """The ids of the node's signed blocks above ``after``, and the highest height read."""
        ids: dict[int, str] = {}
        top = after
        for block in client.blocks(after, _BLOCK_PAGE):
            height, block_id = int(block["height"]), str(block["id"])
            top = max(top, height)
            try:
                checked = ssb.check(block["message"], self.hmac_key)
            except InvalidMessage as exc:
                why = f"its message does not verify: {exc.detail}"
            else:
                if checked.author == node.id and checked.id == block_id:
                    ids[height] = block_id
                    continue
                why = f"its message is {checked.id} by {checked.author}, not {block_id} by the node"
            if found is not None:
                found.append(
                    Finding("mirror", f"{client.node}: block {height}: {why}", height=height)
                )
        return ids, top
