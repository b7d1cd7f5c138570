"""An auditor's view of a node, from what it publishes (DESIGN §7, "Auditors and mirrors").

Anyone can follow a node's firehose and its blocks and check, without
trusting the node:

* every message on the firehose: its id, its signature and its place in its
  author's feed (``ssb.validate``): a second message at a feed position is a
  **fork**, a message that breaks the feed's rules is **invalid**;
* the firehose itself: each pipeline's indexes run 0, 1, 2, … with no
  **gap**, and each message is in its author's pipeline (``hash(author) mod
  P``; one elsewhere is **invalid**);
* every block: signed by the node, one height after the last, linked by
  ``prev`` to it, and each log checkpoint's root equal to the root the
  auditor computes itself from the firehose's messages (**root_mismatch**);
* no **censorship**: a message (not the node's own) seen on the firehose is
  covered by a block (its index below a block's log size) within a grace
  period of being seen, a tx whose finishes there met its policy is in
  a block's records (as finished) within the grace period too, and so is a
  tx still unfinished at its deadline (timed out), within the grace period
  of the deadline.

Comparing what several endpoints of one node serve (a **split_view**: two
histories both signed by the node; a **mirror** finding: an endpoint serving
what the node did not sign) is ``chainmail.mirrors``.

``Auditor`` holds that state and is pure: the caller feeds it what it reads
and the time it read it (``now``, ms), and gets the findings back. The
command line (``chainmail audit``) does the reading.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

import orjson

from chainmail import blocks, merkle, ssb, txs
from chainmail.errors import InvalidMessage, ProofError
from chainmail.log import pipeline_of
from chainmail.witnesses import is_signature

__all__ = ["Auditor", "Checked", "Finding", "FindingKind"]

#: What ``Auditor.check`` gives for each message.
Checked: TypeAlias = ssb.Checked | InvalidMessage


def _raw(message: object) -> bytes:
    """A firehose message as JSON bytes again, for ``ssb.check_batch``."""
    try:
        return orjson.dumps(message)
    except TypeError:  # not JSON orjson writes (an integer past 64 bits): let the check say
        return repr(message).encode("utf-8", "replace")


FindingKind = Literal[
    "invalid", "fork", "gap", "block", "root_mismatch", "censored", "split_view", "mirror"
]

#: Leaves per lower-level block of an audited tree: the tree keeps one node per
#: this many leaves (and the leaves, 32 bytes each) instead of two per leaf.
_MIN_LEVEL: Final = 6


@dataclass(frozen=True)
class Finding:
    """Something the node published that does not hold up."""

    kind: FindingKind
    detail: str
    pipeline: int | None = None
    index: int | None = None
    id: str | None = None
    height: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"

    @classmethod
    def block(cls, height: int, detail: str) -> Finding:
        """A ``block`` finding about the block at ``height``."""
        return cls("block", f"block {height}: {detail}", height=height)


@dataclass
class _OpenTx:
    parties: frozenset[str]
    opener: str
    policy: str
    #: ms on the node's clock; past it (and the grace) the tx must be in a block.
    deadline: int | None
    finishers: set[str] = field(default_factory=set)


@dataclass
class _Pipeline:
    leaves: bytearray = field(default_factory=bytearray)
    tree: merkle.MerkleTree = field(init=False)
    #: The index the firehose should give next.
    next: int = 0
    #: False after a gap: the roots past it cannot be computed.
    whole: bool = True
    #: Messages not yet covered by a block: (index, id, seen at ms).
    waiting: collections.deque[tuple[int, str, int]] = field(default_factory=collections.deque)
    #: Entries below this are covered by a block whose root this audit has checked.
    covered: int = 0
    #: Checkpoints to compare once the firehose reaches their size: (size, root,
    #: height, the firehose read they were seen after).
    roots: list[tuple[int, bytes, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        leaves = self.leaves

        def source(start: int, end: int) -> list[bytes]:
            return [bytes(leaves[i * 32 : (i + 1) * 32]) for i in range(start, end)]

        self.tree = merkle.MerkleTree(min_level=_MIN_LEVEL, leaves=source)

    @property
    def size(self) -> int:
        return len(self.leaves) // 32


class Auditor:
    """The state of one audit of the node ``node_id``; see the module's docstring."""

    def __init__(
        self,
        node_id: str,
        *,
        grace_ms: int,
        hmac_key: bytes | str | None = None,
        pipelines: int = 1,
    ) -> None:
        """``pipelines`` is the node's P: each author's messages are in pipeline
        ``hash(author) mod P`` (``log.pipeline_of``)."""
        if grace_ms < 0:
            raise ValueError(f"grace_ms: expected 0 or more, got {grace_ms}")
        if pipelines < 1:
            raise ValueError(f"pipelines: expected 1 or more, got {pipelines}")
        self.node_id = node_id
        self.pipelines = pipelines
        self.grace_ms = grace_ms
        self.hmac_key = hmac_key
        self.messages = 0
        self.blocks = 0
        self._feeds: dict[str, ssb.FeedState] = {}
        self._pipelines: dict[int, _Pipeline] = {}
        self._height = 0
        self._block_id: str | None = None
        #: Each pipeline's size in the last block, to catch a log going back.
        self._block_sizes: dict[int, int] = {}
        #: Whole reads of the firehose so far (``firehose_read``).
        self._reads = 0
        #: Blocks of the node's feed on the firehose, and blocks the API served
        #: (with the read they came after), by height, until the other side
        #: shows the same block.
        self._feed_blocks: dict[int, str] = {}
        self._served_blocks: dict[int, tuple[str, int]] = {}
        #: Txs opened on the firehose and not yet in a block's records, and those
        #: whose finishes met their policy (when it was seen, ms); a timed-out tx
        #: stays in the first until a block records it.
        self._open_txs: dict[str, _OpenTx] = {}
        self._finished_txs: dict[str, int] = {}

    def _pipeline(self, pipeline: int) -> _Pipeline:
        found = self._pipelines.get(pipeline)
        if found is None:
            found = self._pipelines[pipeline] = _Pipeline()
        return found

    def next_index(self, pipeline: int) -> int:
        """The firehose index this auditor reads next in ``pipeline``."""
        return self._pipeline(pipeline).next

    @property
    def height(self) -> int:
        """The last block audited (0 before the first)."""
        return self._height

    # --- the firehose ---------------------------------------------------------------------

    def see_message(
        self, pipeline: int, index: int, msg_id: str, message: dict[str, Any], *, now: int
    ) -> list[Finding]:
        """One firehose entry, read at ``now``; the findings it makes."""
        return self.see_messages(pipeline, [(index, msg_id, message)], now=now)

    def check(self, entries: Sequence[tuple[int, str, dict[str, Any]]]) -> list[Checked]:
        """The SSB checks of firehose entries' messages, in one call (``ssb.check_batch``:
        C, without the GIL, so several threads may check chunks at once)."""
        return ssb.check_batch([_raw(m) for _, _, m in entries], self.hmac_key)

    def see_messages(
        self,
        pipeline: int,
        entries: Sequence[tuple[int, str, dict[str, Any]]],
        *,
        now: int,
        checked: Sequence[Checked] | None = None,
    ) -> list[Finding]:
        """Consecutive firehose entries of ``pipeline`` as ``(index, id, message)``, read
        at ``now``; ``checked`` is ``check(entries)`` if the caller ran it already."""
        results = self.check(entries) if checked is None else checked
        found: list[Finding] = []
        for (index, msg_id, message), result in zip(entries, results, strict=True):
            found.extend(self._see(pipeline, index, msg_id, message, result, now))
        return found

    def _see(
        self,
        pipeline: int,
        index: int,
        msg_id: str,
        message: dict[str, Any],
        result: Checked,
        now: int,
    ) -> list[Finding]:
        p = self._pipeline(pipeline)
        found: list[Finding] = []
        if index != p.next:
            found.append(
                Finding(
                    "gap",
                    f"pipeline {pipeline}: the firehose went from index {p.next - 1} to {index}",
                    pipeline=pipeline,
                    index=index,
                )
            )
            if index < p.next:
                return found  # an index again: nothing new to add
            p.whole = False  # the roots past a gap cannot be computed
        p.next = index + 1
        self.messages += 1
        checked = result if isinstance(result, ssb.Checked) else None
        if isinstance(result, InvalidMessage):
            found.append(self._finding("invalid", result.detail, pipeline, index, msg_id))
            self._skip(message, msg_id)
        if checked is not None and checked.id != msg_id:
            found.append(
                self._finding(
                    "invalid", f"the message's id is {checked.id}", pipeline, index, msg_id
                )
            )
        if checked is not None and pipeline_of(checked.author, self.pipelines) != pipeline:
            home = pipeline_of(checked.author, self.pipelines)
            found.append(
                self._finding(
                    "invalid",
                    f"in pipeline {pipeline}, but {checked.author}'s messages go to"
                    f" pipeline {home} of {self.pipelines}",
                    pipeline,
                    index,
                    msg_id,
                )
            )
        if checked is not None:
            head = self._feeds.get(checked.author)
            try:
                self._feeds[checked.author] = ssb.check_order(checked, head)
            except InvalidMessage as exc:
                # At or below the feed's head: a second message at a position the
                # firehose already gave. Above it with the wrong previous: a fork
                # too. Past the next sequence: a feed message the log never had.
                fork = exc.code == "fork" or (
                    head is not None and checked.sequence <= head.sequence
                )
                detail = (
                    f"a second message at sequence {checked.sequence} of {checked.author}"
                    if exc.code != "fork" and fork
                    else exc.detail
                )
                kind: FindingKind = "fork" if fork else "invalid"
                found.append(self._finding(kind, detail, pipeline, index, msg_id))
        if p.whole:
            try:
                leaf = blocks.message_leaf(msg_id)
            except ProofError:
                leaf = bytes(32)  # reported above as invalid; no root can match it
            p.leaves += leaf
            p.tree.append(leaf)
        author = message.get("author") if isinstance(message, dict) else None
        if author != self.node_id and not (checked is not None and is_signature(checked.content)):
            # A witness's block/sign is not activity the node must seal: its
            # stage's block/stage commits to it (``chainmail.witnesses``).
            p.waiting.append((index, msg_id, now))
            if checked is not None:
                self._follow_tx(checked, now)
        elif checked is not None:
            found.extend(self._feed_block(checked))
        found.extend(self._check_roots(pipeline, p))
        return found

    def _follow_tx(self, checked: ssb.Checked, now: int) -> None:
        """Track txs from their messages on the firehose, to know which finished.

        Everything on the firehose was accepted, so a tx's finishes there are
        the ones the node took: once they meet its policy, the tx finished.
        """
        body = checked.content
        if not isinstance(body, dict):
            return
        kind = body.get("type")
        if kind == "tx/open":
            parties = body.get("parties")
            policy = body.get("finish", txs.DEFAULT_FINISH)
            deadline = body.get("deadline")
            if isinstance(parties, list) and all(isinstance(x, str) for x in parties):
                self._open_txs[checked.id] = _OpenTx(
                    frozenset(parties),
                    checked.author,
                    str(policy),
                    deadline if type(deadline) is int else None,
                )
        elif kind == "tx/finish":
            tx_id = body.get("tx")
            if not isinstance(tx_id, str):
                return
            tx = self._open_txs.get(tx_id)
            if tx is None or checked.author not in tx.parties:
                return
            tx.finishers.add(checked.author)
            if txs.finish_met(tx.policy, tx.opener, tx.parties, tx.finishers):
                del self._open_txs[tx_id]
                self._finished_txs[tx_id] = now

    def see_records(self, height: int, records: Sequence[dict[str, Any]]) -> list[Finding]:
        """The tx records of block ``height``: every tx in them is sealed from now on.

        A tx whose finishes on the firehose met its policy recorded as anything
        but finished is a ``block`` finding.
        """
        found: list[Finding] = []
        for record in records:
            tx_id = record.get("tx") if isinstance(record, dict) else None
            if not isinstance(tx_id, str):
                continue
            self._open_txs.pop(tx_id, None)
            finished = self._finished_txs.pop(tx_id, None) is not None
            status = record.get("status")
            if finished and status != "finished":
                found.append(
                    Finding.block(
                        height,
                        f"it records tx {tx_id} as {status!r}, but its finishes on the firehose"
                        " met its policy: it finished",
                    )
                )
        return found

    def _feed_block(self, checked: ssb.Checked) -> list[Finding]:
        """A block message in the node's own feed: it must be the block the API serves."""
        body = checked.content
        height = body.get("height") if isinstance(body, dict) else None
        if not isinstance(body, dict) or body.get("type") != "block" or type(height) is not int:
            return []
        served = self._served_blocks.pop(height, None)
        if served is None:
            self._feed_blocks[height] = checked.id
            return []
        return self._same_block(height, checked.id, served[0])

    @staticmethod
    def _same_block(height: int, logged: str, served: str) -> list[Finding]:
        if logged == served:
            return []
        return [
            Finding.block(
                height,
                f"the node's feed on the firehose has {logged} at this height, but it serves"
                f" {served} as the block: it signed two",
            )
        ]

    def unlogged_blocks(self, *, reads: int = 1) -> list[Finding]:
        """Blocks the API served that the node's feed on the firehose never showed, after
        ``reads`` whole reads of the firehose since. Each is reported once."""
        found: list[Finding] = []
        for height, (block_id, read) in sorted(self._served_blocks.items()):
            if self._reads - read >= reads:
                del self._served_blocks[height]
                found.append(
                    Finding.block(
                        height,
                        f"{block_id} is served as the block but is not in the node's feed on"
                        " the firehose",
                    )
                )
        return found

    def _skip(self, message: object, msg_id: str) -> None:
        """Take an invalid message's claimed place in its feed, so that the feed's
        next message is judged on its own (not reported again for this one)."""
        if not isinstance(message, dict):
            return
        author, sequence = message.get("author"), message.get("sequence")
        if isinstance(author, str) and type(sequence) is int:
            head = self._feeds.get(author)
            if sequence == (1 if head is None else head.sequence + 1):
                self._feeds[author] = ssb.FeedState(id=msg_id, sequence=sequence)

    @staticmethod
    def _finding(kind: FindingKind, detail: str, pipeline: int, index: int, msg_id: str) -> Finding:
        return Finding(
            kind,
            f"{msg_id} at {pipeline}:{index}: {detail}",
            pipeline=pipeline,
            index=index,
            id=msg_id,
        )

    # --- blocks ---------------------------------------------------------------------------

    def see_block(self, height: int, block_id: str, message: dict[str, Any]) -> list[Finding]:
        """One block, as ``GET /v1/blocks/{height}`` gives its signed message.

        A block that fails its checks still takes its place in the chain (at
        ``height``, under the id the node gave it), so the next block is judged
        on its own and not reported again for following a bad one.
        """
        found: list[Finding] = []

        def bad(detail: str) -> list[Finding]:
            found.append(Finding.block(height, detail))
            return found

        follows = height == self._height + 1
        if not follows:
            bad(f"expected height {self._height + 1} next")
        self.blocks += 1
        logged = self._feed_blocks.pop(height, None)
        if logged is None:
            self._served_blocks[height] = (block_id, self._reads)
        else:
            found.extend(self._same_block(height, logged, block_id))
        previous = self._block_id
        self._height, self._block_id = height, block_id
        try:
            checked = ssb.check(message, self.hmac_key)
        except InvalidMessage as exc:
            return bad(f"its message does not verify: {exc.detail}")
        if checked.author != self.node_id:
            return bad(f"signed by {checked.author}, not the node {self.node_id}")
        if checked.id != block_id:
            return bad(f"its message's id is {checked.id}, not {block_id}")
        try:
            info = blocks.parse_block_content(checked.content, checked.id)
        except ProofError as exc:
            return bad(exc.detail)
        if info.height != height:
            return bad(f"its content says height {info.height}")
        if info.prev != previous and follows:
            bad(f"prev is {info.prev}, not block {height - 1}'s id {previous}")
        sizes = {log.pipeline: log.size for log in info.logs}
        dropped = sorted(set(self._block_sizes) - set(sizes))
        if dropped:
            bad(f"it has no checkpoint of pipeline(s) {dropped}, which an earlier block had")
        for pipeline, size in sorted(sizes.items()):
            before = self._block_sizes.get(pipeline, 0)
            if size < before:
                bad(f"pipeline {pipeline}'s log went back from {before} to {size} entries")
        self._block_sizes.update(sizes)
        for log in info.logs:
            p = self._pipeline(log.pipeline)
            if not p.whole:  # past a gap no root can be checked: take the block's word
                p.covered = max(p.covered, log.size)
            p.roots.append((log.size, log.root, height, self._reads))
            found.extend(self._check_roots(log.pipeline, p))
        return found

    def _check_roots(self, pipeline: int, p: _Pipeline) -> list[Finding]:
        found: list[Finding] = []
        if not p.whole:
            return found
        later: list[tuple[int, bytes, int, int]] = []
        for size, root, height, read in p.roots:
            if size > p.size:
                later.append((size, root, height, read))
            elif p.tree.root(size) == root:
                # Only a root this audit computed covers anything: a block may
                # not hide messages by claiming a log the firehose never shows.
                p.covered = max(p.covered, size)
            else:
                found.append(
                    Finding(
                        "root_mismatch",
                        f"block {height}: pipeline {pipeline}'s root at size {size} is not the"
                        " root of the firehose's first messages",
                        pipeline=pipeline,
                        height=height,
                    )
                )
        p.roots = later
        return found

    # --- censorship -----------------------------------------------------------------------

    def overdue(self, *, now: int) -> list[Finding]:
        """Messages seen ``grace_ms`` or more before ``now`` that no block covers yet.

        Each is reported once (and then no longer waited for).
        """
        found: list[Finding] = []
        for pipeline, p in sorted(self._pipelines.items()):
            kept: collections.deque[tuple[int, str, int]] = collections.deque()
            for index, msg_id, seen in p.waiting:
                if index < p.covered:
                    continue
                if now - seen >= self.grace_ms:
                    found.append(
                        Finding(
                            "censored",
                            f"{msg_id} at {pipeline}:{index}, on the firehose for"
                            f" {(now - seen) / 1000:g} s, is in no block",
                            pipeline=pipeline,
                            index=index,
                            id=msg_id,
                        )
                    )
                else:
                    kept.append((index, msg_id, seen))
            p.waiting = kept
        for tx_id, tx in list(self._open_txs.items()):
            # Unfinished at its deadline, it timed out then, and the node's next
            # block records it: one past the deadline by the grace is censored.
            # (The deadline is on the node's clock; the grace covers the skew.)
            if tx.deadline is not None and now - tx.deadline >= self.grace_ms:
                del self._open_txs[tx_id]
                found.append(
                    Finding(
                        "censored",
                        f"tx {tx_id} passed its deadline unfinished"
                        f" {(now - tx.deadline) / 1000:g} s ago and is in no block's records",
                        id=tx_id,
                    )
                )
        for tx_id, seen in list(self._finished_txs.items()):
            if now - seen >= self.grace_ms:
                del self._finished_txs[tx_id]
                found.append(
                    Finding(
                        "censored",
                        f"tx {tx_id} finished on the firehose {(now - seen) / 1000:g} s ago"
                        " and is in no block's records",
                        id=tx_id,
                    )
                )
        return found

    def verified(self, pipeline: int, size: int) -> bool:
        """This audit computed ``pipeline``'s root at ``size`` or beyond from the firehose
        itself and a block's checkpoint matched it (what a witness signs on)."""
        p = self._pipelines.get(pipeline)
        return p is not None and p.whole and p.covered >= size

    def firehose_read(self) -> None:
        """The caller has read every pipeline of the firehose to its end once more."""
        self._reads += 1

    def unmatched_roots(self, *, reads: int = 1) -> list[Finding]:
        """Block checkpoints past the firehose after ``reads`` whole reads of it since.

        The node logged the block after the entries it covers, so once the
        firehose was read to its end after the block was seen, it must have
        shown them: a size it never reaches is a log the node does not publish
        (or a pipeline it has not got). Each is reported once.
        """
        found: list[Finding] = []
        for pipeline, p in sorted(self._pipelines.items()):
            if not p.whole:
                continue
            kept: list[tuple[int, bytes, int, int]] = []
            for size, root, height, read in p.roots:
                if self._reads - read < reads:
                    kept.append((size, root, height, read))
                    continue
                found.append(
                    Finding(
                        "root_mismatch",
                        f"block {height}: pipeline {pipeline} at size {size}, but the firehose"
                        f" shows only {p.size} entries",
                        pipeline=pipeline,
                        height=height,
                    )
                )
            p.roots = kept
        return found

    def unchecked_roots(self) -> int:
        """Block checkpoints past what the firehose has given so far (checked once it has)."""
        return sum(len(p.roots) for p in self._pipelines.values() if p.whole)

    def waiting(self) -> int:
        """Messages seen and not yet covered by a block, and txs seen finished and in no
        block's records yet (none of them reported)."""
        return len(self._finished_txs) + sum(
            sum(1 for index, _, _ in p.waiting if index >= p.covered)
            for p in self._pipelines.values()
        )
