"""The sequencer: the node's single writer (DESIGN §5).

Every state change of the node runs here, one call at a time, on one thread:
checked messages are held against the feed heads, node policy and the
transaction rules, appended to the log in one durable batch, and projected
into the store. Closing transactions on their deadlines and building blocks
happen here too, so no two writers ever race over a transaction.

The sequencer holds in memory what validation needs: feed heads (from the
log), open and closed-but-not-yet-sealed transactions and channels (from the
store). On start it replays the log from the store's cursors, so a crash
between a log commit and its projection loses nothing.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import heapq
import logging
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from chainmail import blocks, content, ssb, txs
from chainmail.anchors import ANCHOR
from chainmail.errors import (
    Error,
    InvalidMessage,
    OperationalError,
    RateLimited,
    Rejected,
    StorageError,
)
from chainmail.frozen import constructor
from chainmail.ids import blob_id
from chainmail.keys import Keypair
from chainmail.log import Head, Log, LogEntry, NewEntry, new_entry, pipeline_of
from chainmail.ratelimit import IDENTITY_BURST, IDENTITY_RATE, RateLimiter
from chainmail.registry import APPLIED_TYPES, Admission, Registry
from chainmail.store import BlockRow, Delivery, Projection, Store, TxRow, message_row
from chainmail.witnesses import SIGN, WINDOW, Stages, is_signature, threshold_of

__all__ = ["Accepted", "BlockDraft", "SealedRecords", "Sequencer"]

log = logging.getLogger("chainmail.sequencer")

_REPLAY_BATCH: Final = 2000
#: Closed txs' entries the deadline heap may carry before it is rebuilt.
_DEADLINE_SLACK: Final = 1024
#: The types posted into an existing channel (``chan`` names it).
_CHAN_POSTS: Final = ("chan/msg", "chan/share")


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message in the log. ``created`` is False when it was there already."""

    id: str
    pipeline: int
    index: int
    created: bool

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "pipeline": self.pipeline, "index": self.index}


Result = Accepted | Error

#: ``Accepted(...)`` at ~60% of the cost, once a logged message.
_accepted: Final = constructor(Accepted, "_accepted")


@dataclass(frozen=True, slots=True)
class BlockDraft:
    """The records of a block being built (``Sequencer.draft_block``), and each
    one's canonical bytes and leaf where they were made when its tx closed."""

    records: list[dict[str, Any]]
    encoded: list[blocks.EncodedRecord | None] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SealedRecords:
    """A draft's records, serialised and stored as a blob (``Sequencer.seal_records``)."""

    records: list[dict[str, Any]]
    records_id: str
    records_root: bytes


@dataclass(slots=True)
class _Pending:
    """What one batch has decided so far, before it is written.

    ``feeds`` holds each author's entries of the batch, in order: their
    sequences are consecutive (each was its feed's next), so the last one is
    the feed's head and the one at a sequence is found by subtraction.
    """

    entries: list[NewEntry] = field(default_factory=list)
    positions: list[tuple[int, int]] = field(default_factory=list)
    feeds: dict[str, list[NewEntry]] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    ids: dict[str, tuple[int, int]] = field(default_factory=dict)
    projection: Projection = field(default_factory=Projection)
    forks: list[tuple[str, int, bytes, bytes]] = field(default_factory=list)

    def at(self, author: str, sequence: int) -> NewEntry | None:
        """The entry of the batch at ``(author, sequence)``, if any."""
        entries = self.feeds.get(author)
        if entries is None:
            return None
        offset = sequence - entries[0].sequence
        return entries[offset] if 0 <= offset < len(entries) else None


def policy_view(c: ssb.Checked) -> dict[str, Any]:
    """The fields of a checked message that the content policy and the projections read."""
    return {
        "author": c.author,
        "sequence": c.sequence,
        "timestamp": c.timestamp,
        "content": c.content,
    }


def tx_row(tx: txs.Tx, block: int | None = None) -> TxRow:
    return TxRow(
        id=tx.id,
        status=tx.status,
        parties=list(tx.parties),
        opener=tx.opener,
        deadline=tx.deadline,
        finish=tx.finish,
        subject=tx.subject,
        opened=tx.opened,
        closed=tx.closed,
        finished_by=sorted(tx.finished_by),
        messages=list(tx.messages),
        block=block,
    )


def tx_from_row(row: TxRow) -> txs.Tx:
    return txs.Tx(
        id=row.id,
        parties=tuple(row.parties),
        opener=row.opener,
        deadline=row.deadline,
        finish=row.finish,  # type: ignore[arg-type]
        subject=row.subject,
        opened=row.opened,
        status=row.status,  # type: ignore[arg-type]
        closed=row.closed,
        finished_by=set(row.finished_by),
        messages=list(row.messages),
    )


def _witnessing(body: bytes) -> bool:
    """A logged message (its 2-space JSON) is a witness's ``block/sign``."""
    return b'"block/sign"' in body and is_signature(orjson.loads(body).get("content"))


def _kind(content: object) -> object:
    return content.get("type") if isinstance(content, dict) else None


def _tx_named(content: object) -> str | None:
    """The tx a logged message is linked to by its ``tx`` field (not a tx/open's own)."""
    if not isinstance(content, dict) or content.get("type") == "tx/open":
        return None
    named = content.get("tx")
    return named if isinstance(named, str) else None


#: Within one millisecond of the log, in a replay across pipelines: opens, the
#: rest, then blocks (a block seals what closed before it was drafted).
_REPLAY_RANK: Final = {"tx/open": 0, "chan/open": 0, "block": 2, "block/stage": 2}


class _PipelineReader:
    """One pipeline of a replay: its entries from a cursor in chunks, in index order."""

    def __init__(self, log_: Log, pipeline: int, start: int) -> None:
        self.log = log_
        self.pipeline = pipeline
        self._next = start
        self._buffer: collections.deque[tuple[LogEntry, dict[str, Any]]] = collections.deque()
        self._held: set[int] = set()

    def peek(self) -> tuple[LogEntry, dict[str, Any]] | None:
        if not self._buffer:
            for entry in self.log.read(self.pipeline, self._next, _REPLAY_BATCH):
                self._buffer.append((entry, orjson.loads(entry.body)))
        return self._buffer[0] if self._buffer else None

    def key(self) -> tuple[int, int, int, int, int]:
        """Where the next entry goes in a replay across pipelines: by its ``seq``
        (the order it was sequenced in); an entry of an older log, which has none,
        comes before every entry that has one, by time, rank and position."""
        entry, msg = self._buffer[0]
        if entry.seq is not None:
            return 1, entry.seq, 0, 0, 0
        kind = _kind(msg["content"])
        rank = _REPLAY_RANK.get(kind, 1) if isinstance(kind, str) else 1
        return 0, entry.received, rank, self.pipeline, entry.index

    def take(self) -> tuple[LogEntry, dict[str, Any]]:
        entry, msg = self._buffer.popleft()
        self._next = entry.index + 1
        return entry, msg

    def hold(self, index: int) -> None:
        self._held.add(index)

    def release(self, index: int) -> None:
        self._held.discard(index)

    def cursor(self) -> int:
        """Where a replay resumes: past everything taken, but not past an entry still held."""
        return min(self._held, default=self._next)


def _timed_out(changed: Mapping[str, txs.Tx]) -> bool:
    """Whether a tx of ``changed`` closed by timeout: what its projection must keep
    through a power loss, as no log holds it (``Projection.durable``)."""
    return any(tx.status == "timed_out" for tx in changed.values())


def checked_cursors(log_: Log, store: Store) -> dict[int, int]:
    """The store's cursors, refused when one is past the end of its pipeline.

    The store projects what the log committed, so it can only be behind.
    Ahead, the log lost commits the store had seen (a log at
    ``synchronous=NORMAL`` and a power loss): new entries would take positions
    whose projections hold other messages. Raises ``StorageError`` naming the
    way out: without its store, a node rebuilds it from the log.
    """
    cursors = store.cursors()
    for pipeline, cursor in sorted(cursors.items()):
        size = log_.size(pipeline) if pipeline < log_.pipelines else 0
        if cursor > size:
            raise StorageError(
                f"the store is ahead of the log: pipeline {pipeline} projected to"
                f" {cursor} entries, the log holds {size}; the log lost commits"
                " (synchronous=NORMAL and a power loss?). Move the store's file"
                " (store.sqlite, with its -wal and -shm files) aside and start again:"
                " it is rebuilt from the log"
            )
    return cursors


class Sequencer:
    """The single writer. Not thread-safe: call it from one thread."""

    def __init__(
        self,
        log_: Log,
        store: Store,
        identity: Keypair,
        *,
        clock: Callable[[], int],
        hmac_key: bytes | None = None,
        on_projected: Callable[[Projection, list[tuple[str, Delivery]]], None] | None = None,
        deliveries_for: Container[str] | None = None,
        registrars: Sequence[str] = (),
        admission: Admission = "open",
        identity_rate: float = IDENTITY_RATE,
        identity_burst: float = IDENTITY_BURST,
        projector: concurrent.futures.Executor | None = None,
        witnesses: Sequence[str] = (),
        threshold: int | None = None,
    ) -> None:
        self.log = log_
        self.store = store
        self.identity = identity
        self.node_id = identity.id
        self.clock = clock
        self.hmac_key = hmac_key
        self.on_projected = on_projected
        #: Whose new inbox entries ``on_projected`` hears of (None: everyone's);
        #: read on the projecting thread, after each commit.
        self.deliveries_for = deliveries_for
        self.open: dict[str, txs.Tx] = {}
        self.unsealed: dict[str, txs.Tx] = {}
        #: Each unsealed tx's block record and its encoding, made when it closed.
        self._encoded: dict[str, tuple[dict[str, Any], blocks.EncodedRecord]] = {}
        self.channels: dict[str, txs.Channel] = {}
        self._deadlines: list[tuple[int, str]] = []
        self.dirty = False
        self._pending_records: dict[str, list[dict[str, Any]]] = {}
        #: A block drafted and not yet appended or abandoned (at most one).
        self._drafting = False
        self._unprojected: list[Projection] = []
        #: Where projections are written: one thread, so in order (None: inline).
        self._projector = projector
        #: Projections whose write failed, retried first; touched by the projecting thread only.
        self._retry: list[Projection] = []
        # Transactions whose state changed outside a message's projection (closed by
        # the clock while checking a message): written with the next batch.
        self._changed: dict[str, txs.Tx] = {}
        # Transactions the messages of the batch being projected changed: their
        # rows are built once a batch (``_tx_rows``), not once a message.
        self._touched: dict[str, txs.Tx] = {}
        self.registrars = tuple(registrars)
        self.admission: Admission = admission
        self.registry = Registry(self.registrars, admission, node_id=self.node_id)
        self.limiter = RateLimiter(identity_rate, identity_burst, label="identity")
        #: The stages of unsealed blocks, with witnesses configured (DESIGN §7).
        self.stages: Stages | None = (
            Stages(witnesses, threshold_of(witnesses, threshold)) if witnesses else None
        )
        #: (height, id) of the newest block in the log, so building the next one
        #: need not wait for the projector to read it back from the store.
        self._latest_block: tuple[int, str] | None = None
        #: The latest time the node logged at (``_now``): where the log leaves off.
        self._last_now = max(
            (
                entry.received
                for p in range(log_.pipelines)
                if log_.size(p) and (entry := log_.get(p, log_.size(p) - 1)) is not None
            ),
            default=0,
        )
        self.catch_up()

    # --- start-up -------------------------------------------------------------------------

    def catch_up(self) -> int:
        """Project log entries the store has not seen; returns how many."""
        for row in self.store.open_txs():
            self._track(tx_from_row(row))
        for row in self.store.closed_unblocked_txs():
            self.unsealed[row.id] = tx_from_row(row)
            # Timeouts are not logged: a clock stepped back across a restart must
            # not reopen what this node already closed (``_now``).
            self._last_now = max(self._last_now, row.closed or 0)
        self.channels = {
            cid: txs.Channel.from_dict(data) for cid, data in self.store.channels().items()
        }
        self.registry = Registry.from_records(
            self.store.identity_records(), self.registrars, self.admission, node_id=self.node_id
        )
        if self.stages is not None:
            for height, block_id, recorded, signs in self.store.witnessing(WINDOW):
                self.stages.load(height, block_id, recorded, signs)
        replayed = self._replay(checked_cursors(self.log, self.store))
        latest = self.store.latest_block()
        self._latest_block = None if latest is None else (latest.height, latest.id)
        if self.stages is not None and latest is not None:
            self.stages.see_top(latest.height)  # sealed blocks are not loaded into it
        if replayed:
            log.info("projected %d log entries on start", replayed)
        self.dirty = bool(self.unsealed) or self._unsealed_activity(latest)
        return replayed

    def _replay(self, cursors: Mapping[int, int]) -> int:
        """Project the log from the store's cursors, in the order it was sequenced; how many.

        With one pipeline that is the log's order. With several, each has its
        own order only: a tx/finish in one may follow its tx/open in another,
        a block in the node's pipeline seals txs closed in the others, and of
        two attestations of one identity the later one stands. So the
        pipelines are merged by each entry's ``seq``, the order the log was
        appended in. Entries of a log older than ``seq`` are merged by the time
        each was logged (a batch's entries share one), opens before the rest
        and blocks after it within one millisecond; and an entry whose tx has
        not been opened yet in the replay waits for its tx/open. A pipeline's cursor never
        passes an entry still waiting, so a crash mid-replay replays it again
        (projection is idempotent).
        """
        readers = [
            _PipelineReader(self.log, p, cursors.get(p, 0)) for p in range(self.log.pipelines)
        ]
        heap = [(r.key(), r.pipeline) for r in readers if r.peek() is not None]
        heapq.heapify(heap)
        waiting: dict[str, list[tuple[LogEntry, dict[str, Any]]]] = {}
        replayed = 0
        projection = Projection()
        done = 0
        while heap:
            _, pipeline = heapq.heappop(heap)
            reader = readers[pipeline]
            entry, msg = reader.take()
            if reader.peek() is not None:
                heapq.heappush(heap, (reader.key(), pipeline))
            needs = self._unmet(msg["content"])
            if needs is not None:
                waiting.setdefault(needs, []).append((entry, msg))
                reader.hold(entry.index)
            else:
                ready = [(entry, msg)]
                while ready:  # an open may release entries that release others
                    one, one_msg = ready.pop()
                    self._replay_one(projection, one, one_msg)
                    readers[one.pipeline].release(one.index)
                    ready.extend(reversed(waiting.pop(one.id, [])))
            done += 1
            if done >= _REPLAY_BATCH or not heap:
                replayed += done
                done = 0
                for r in readers:
                    projection.cursors[r.pipeline] = r.cursor()
                self._tx_rows(projection)
                self._write_projection(projection)
                projection = Projection()
        for tx_id, held in waiting.items():
            # Cannot happen for a log this node wrote (a tx message is logged only
            # while its tx is open): project it unlinked, as the live node could not.
            log.warning(
                "replay: %d message(s) name tx %s, which the log never opens", len(held), tx_id
            )
            projection = Projection()
            for entry, msg in held:
                self._replay_one(projection, entry, msg)
                readers[entry.pipeline].release(entry.index)
            for r in readers:
                projection.cursors[r.pipeline] = r.cursor()
            self._tx_rows(projection)
            self._write_projection(projection)
        return replayed

    def _unmet(self, content: object) -> str | None:
        """The tx or channel a logged message needs that the replay has not opened yet."""
        if not isinstance(content, dict):
            return None
        if content.get("type") in _CHAN_POSTS:
            chan = content.get("chan")
            if isinstance(chan, str) and chan not in self.channels:
                return chan
        tx_id = _tx_named(content)
        if tx_id is not None and tx_id not in self.open and tx_id not in self.unsealed:
            return tx_id
        return None

    def _replay_one(self, projection: Projection, entry: LogEntry, msg: dict[str, Any]) -> None:
        self._project(
            projection,
            entry.id,
            msg["author"],
            msg["sequence"],
            msg["content"],
            entry.pipeline,
            entry.index,
            entry.received,
            entry.body,
            replay=True,
        )

    def _unsealed_activity(self, latest: BlockRow | None) -> bool:
        covered = {int(c["pipeline"]): int(c["size"]) for c in latest.logs} if latest else {}
        for pipeline in range(self.log.pipelines):
            for entry in self.log.read(pipeline, covered.get(pipeline, 0), 10_000):
                if entry.author != self.node_id and not _witnessing(entry.body):
                    return True
        return False

    def _now(self) -> int:
        """The node's clock, held at the latest time it logged at while the wall clock is behind.

        A wall clock stepped back (NTP) must not run the log's times backwards:
        a replay merges the pipelines by them, so a block logged "before" the
        finish it seals would leave that tx to be sealed again; and each
        identity's rate would count the step as a backlog of that many
        seconds, refusing every feed that had just posted until it passed.
        """
        now = self.clock()
        if now < self._last_now:
            return self._last_now
        self._last_now = now
        return now

    def _track(self, tx: txs.Tx) -> None:
        self.open[tx.id] = tx
        heapq.heappush(self._deadlines, (tx.deadline, tx.id))

    # --- ingest ---------------------------------------------------------------------------

    def process(
        self, items: Sequence[ssb.Checked | Error], *, policy_checked: bool = False
    ) -> list[Result]:
        """Sequence a batch of checked messages; durable in the log when this returns.

        ``policy_checked`` says the node's content policy (``check_policy`` with
        this node's id) already passed on every item, as ingest's verify threads
        do; otherwise it runs here.

        The projection is written by ``flush_projection`` or
        ``dispatch_projection``, which the caller runs next. Raises ``LogError`` when the log
        cannot be written: then nothing of the batch was accepted.
        """
        now = self._now()
        self.expire(now)
        pending = _Pending()
        results: list[Result] = []
        for item in items:
            if isinstance(item, Error):
                results.append(item)
                continue
            try:
                results.append(self._admit(item, now, pending, policy_checked))
            except Error as exc:
                results.append(exc)
        self._commit(pending)
        return results

    def _admit(
        self, c: ssb.Checked, now: int, pending: _Pending, policy_checked: bool = False
    ) -> Accepted:
        author = c.author
        sequence = c.sequence
        batch = pending.feeds.get(author)
        head: NewEntry | Head | None = batch[-1] if batch else self.log.head(author)
        if head is None:
            expected, previous = 1, None
        elif sequence <= head.sequence:
            return self._known(c, now, pending)
        else:
            expected, previous = head.sequence + 1, head.id
        if sequence != expected or c.previous != previous:
            # ``check_order``'s own rule, tested inline: a feed's next message
            # costs no FeedState. Anything else gets its verdict and error.
            state = None if head is None else ssb.FeedState(id=head.id, sequence=head.sequence)
            ssb.check_order(c, state)
        body_content = c.content
        if not policy_checked:
            content.check_policy(policy_view(c), node_id=self.node_id)
        self.registry.check(author, body_content, now=now)
        self._check_rules(author, body_content, now)
        own = author == self.node_id
        if not own:
            # Per identity, and only for what will be logged: resubmitting or
            # being refused costs no tokens.
            self.limiter.take(author, now=now / 1000)

        pipeline = pipeline_of(author, self.log.pipelines)
        index = pending.sizes.get(pipeline)
        if index is None:
            index = self.log.size(pipeline)
        pending.sizes[pipeline] = index + 1
        body = c.text.encode("utf-8")
        entry = new_entry(c.id, author, sequence, now, body)
        pending.entries.append(entry)
        if batch is None:
            pending.feeds[author] = [entry]
        else:
            batch.append(entry)
        position = (pipeline, index)
        pending.positions.append(position)
        pending.ids[c.id] = position
        projection = pending.projection
        self._project(
            projection,
            c.id,
            author,
            sequence,
            body_content,
            pipeline,
            index,
            now,
            body,
            replay=False,
        )
        projection.cursors[pipeline] = index + 1
        if not own and not (type(body_content) is dict and body_content.get("type") == SIGN):
            # A witness's signature is not activity that needs a block: one block
            # per signed block would never end.
            self.dirty = True
        return _accepted(c.id, pipeline, index, True)

    def _known(self, c: ssb.Checked, now: int, pending: _Pending) -> Accepted:
        """A message at or below the feed's head: the same one again, or a fork.

        A fork is refused, and the pair (kept, rejected) is kept as evidence:
        one pair per feed position is proof enough, and writing it costs the
        author a rate-limit token, so a key holder cannot grow the store by
        signing endless variants. The refusal stands either way.
        """
        position = pending.ids.get(c.id) or self.log.locate(c.id)
        if position is not None:
            return Accepted(c.id, position[0], position[1], created=False)
        kept_id, kept_body = self._kept(c.author, c.sequence, pending)
        fresh = not any(f[0] == c.author and f[1] == c.sequence for f in pending.forks)
        if kept_body is None:
            # Logged but not yet projected, and not the feed's head: no evidence
            # rather than half of it (a pair with an empty side would stand for
            # good). The refusal stands; a later copy of the fork records it.
            log.warning(
                "fork evidence for %s at %d not kept yet: the kept message is not projected",
                c.author,
                c.sequence,
            )
        elif fresh and not self.store.has_fork(c.author, c.sequence):
            try:
                if c.author != self.node_id:
                    self.limiter.take(c.author, now=now / 1000)
            except RateLimited:
                log.warning(
                    "fork evidence for %s at %d not kept: rate limited", c.author, c.sequence
                )
            else:
                pending.forks.append((c.author, c.sequence, kept_body, c.text.encode("utf-8")))
        raise InvalidMessage(
            f"fork: {c.author} already has a different message at sequence {c.sequence}"
            + (f" ({kept_id})" if kept_id is not None else ""),
            code="fork",
        )

    def _kept(
        self, author: str, sequence: int, pending: _Pending
    ) -> tuple[str | None, bytes | None]:
        """The id and body of the message ``author`` logged at ``sequence``, where known.

        From the batch being sequenced, the store, or (not projected yet) the
        log when it is the feed's head; ``(None, None)`` otherwise.
        """
        in_batch = pending.at(author, sequence)
        if in_batch is not None:
            return in_batch.id, in_batch.body
        kept = self.store.message_at(author, sequence)
        if kept is not None:
            return kept.id, kept.body
        head = self.log.head(author)
        if head is not None and head.sequence == sequence:
            position = self.log.locate(head.id)
            entry = None if position is None else self.log.get(*position)
            if entry is not None:
                return entry.id, entry.body
            return head.id, None
        return None, None

    def _check_rules(self, author: str, body: object, now: int) -> None:
        """The transaction and channel rules (DESIGN §3); raises ``Rejected``.

        Any message naming a tx is held to the tx's rules, whatever its type,
        and so is a ``chan/msg`` in a channel tied to a tx even without a
        ``tx`` field: only parties post in a tx, and only while it is open.
        """
        if not isinstance(body, dict):
            return  # an encrypted SSB private box: stored, never routed
        kind = body.get("type")
        if kind == SIGN:
            if self.stages is None:
                raise Rejected("this node has no witnesses: block/sign", code="not_admitted")
            self.stages.check_sign(author, body, self._block_id_at)
            # On to the tx rules: a sign naming a tx would otherwise join it unchecked.
        tx_id = body.get("tx")
        if kind in _CHAN_POSTS:
            chan_id = body.get("chan")
            channel = self.channels.get(chan_id) if isinstance(chan_id, str) else None
            tx_id = txs.channel_post_tx(channel, {"author": author, "content": body})
            if tx_id is None and channel is not None and channel.tx is not None:
                txs.check_share_party(channel, author, self._parties(channel.tx))
        if isinstance(tx_id, str):
            tx = self.open.get(tx_id) or self.unsealed.get(tx_id)
            if tx is None and self.store.tx(tx_id) is not None:
                raise Rejected(f"transaction {tx_id} is closed", code="tx_closed")
            if (
                tx is not None
                and tx.status == "open"
                and now > tx.deadline
                and txs.expire(tx, now=now)
            ):
                self._closed(tx)
            txs.check_post(tx, author, body, now=now)

    def _block_id_at(self, height: int) -> str | None:
        """The id of the node's block at ``height`` (a late signature's; not the hot path)."""
        latest = self._latest_block
        if latest is not None and latest[0] == height:
            return latest[1]
        row = self.store.block(height)
        return None if row is None else row.id

    def _parties(self, tx_id: str) -> tuple[str, ...]:
        """The parties of ``tx_id``, open, closed or sealed (``()`` for an unknown tx)."""
        tx = self.open.get(tx_id) or self.unsealed.get(tx_id)
        if tx is not None:
            return tx.parties
        row = self.store.tx(tx_id)
        return () if row is None else tuple(row.parties)

    # --- projection -----------------------------------------------------------------------

    def _project(
        self,
        projection: Projection,
        msg_id: str,
        author: str,
        sequence: int,
        body_content: Any,
        pipeline: int,
        index: int,
        received: int,
        body: bytes,
        *,
        replay: bool,
    ) -> None:
        """Apply one logged message to the in-memory state and ``projection``. Idempotent.

        ``author``, ``sequence`` and ``body_content`` are the message's fields.
        Without ``replay`` the message has just been admitted, so it is new to
        the log and to every tx's ``messages``.
        """
        kind = body_content.get("type") if isinstance(body_content, dict) else None
        tx_id: str | None = None
        tx: txs.Tx | None = None
        chan: str | None = None
        if kind == "tx/open":
            tx_id = msg_id
            if msg_id not in self.open and msg_id not in self.unsealed:
                # The policy ran before the message was logged (and must not be
                # re-judged on replay, like ``txs.apply(..., checked=True)``).
                msg = {"author": author, "content": body_content}
                tx = txs.open_tx(msg_id, msg, now=received, checked=True)
                self._track(tx)
                self._touched[tx.id] = tx
                projection.tx_messages.append((tx.id, 0, pipeline, index))
            else:
                tx = self.open.get(msg_id) or self.unsealed.get(msg_id)
        elif isinstance(body_content, dict):
            named = body_content.get("tx")
            tx_id = named if isinstance(named, str) else None
            if kind == "chan/open":
                chan = msg_id
            elif kind in _CHAN_POSTS:
                named_chan = body_content.get("chan")
                chan = named_chan if isinstance(named_chan, str) else None
                if tx_id is None and kind == "chan/msg":
                    posted_in = self.channels.get(body_content.get("chan", ""))
                    tx_id = None if posted_in is None else posted_in.tx
            if tx_id is not None:
                tx = self.open.get(tx_id) or self.unsealed.get(tx_id)
            if tx is not None and tx.status == "open":
                # Never raises: a logged message must always project, or a
                # restart could not replay the log (the rules ran before it
                # was logged, on this same state; on replay they are not
                # re-judged, so replay links exactly what the live run did).
                # Live, the message is new, so ``link`` need not look for it
                # in the tx; a replay may see it again.
                linked = len(tx.messages)
                if not replay:
                    closes = txs.link(tx, msg_id, author, kind, now=received)
                elif msg_id not in tx.messages:
                    try:
                        msg = {"author": author, "content": body_content}
                        closes = txs.apply(tx, msg_id, msg, now=received, checked=True)
                    except Error as exc:
                        log.warning("message %s not linked to tx %s: %s", msg_id, tx.id, exc)
                        closes = False
                else:
                    closes = None
                joined = len(tx.messages) > linked
                if joined:
                    projection.tx_messages.append((tx.id, linked, pipeline, index))
                if closes:
                    self._closed(tx)
                # Only a finish changes the row (its finishers, maybe its status):
                # a note joins ``tx_messages`` alone. Rewriting the row, its id
                # list included, on every message cost ~9 µs a message at
                # batches of 256 and grew with the tx (session 12).
                if closes or (joined and kind == "tx/finish"):
                    self._touched[tx.id] = tx
        type_ = kind if isinstance(kind, str) else None
        if type_ in APPLIED_TYPES:
            # Applied at once, so the next message of the same batch sees it (a
            # key/rotate followed by a post from the old key is refused).
            for ident in self.registry.apply(msg_id, author, body_content, now=received):
                record = self.registry.record(ident)
                if record is not None:
                    projection.identities[ident] = record
        projection.messages.append(
            message_row(
                msg_id, pipeline, index, author, sequence, received, type_, tx_id, body, chan
            )
        )
        if kind is None:
            return
        channel = None
        if kind == "chan/open":
            # Built directly, not with ``txs.open_channel``: that re-checks the
            # content policy, which ran before logging and must not run on replay.
            opened = txs.Channel(
                id=msg_id,
                opener=author,
                members=tuple(body_content["keys"]),
                tx=body_content.get("tx"),
            )
            self.channels[msg_id] = opened
            projection.channels[msg_id] = opened.to_dict()
        elif kind in _CHAN_POSTS:
            channel = self.channels.get(body_content.get("chan", ""))
            if kind == "chan/share" and channel is not None:
                txs.share_channel(channel, {"author": author, "content": body_content})
                projection.channels[channel.id] = channel.to_dict()
        elif kind == "doc":
            # Named by a logged message: the blob is kept (``Store.put_blob``).
            self._name_blobs(projection, body_content)
        elif kind == "block" and author == self.node_id:
            self._project_block(projection, msg_id, body_content, body)
            self._name_blobs(projection, body_content)
            if self.stages is not None:
                self.stages.see_block(int(body_content["height"]), msg_id)
        elif kind == SIGN:
            if self.stages is not None and self.stages.see_sign(msg_id, author, body_content):
                projection.block_signs.append(
                    (int(body_content["height"]), str(body_content["stage"]), author, msg_id)
                )
        elif kind == "block/stage" and author == self.node_id:
            if self.stages is not None:
                self.stages.see_stage(body_content)
            projection.block_stages.append(
                (int(body_content["height"]), str(body_content["stage"]), msg_id, body_content)
            )
        elif kind == ANCHOR and author == self.node_id:
            projection.anchors.append((int(body_content["height"]), msg_id, body_content))
            self._name_blobs(projection, body_content)
        # Shared readers hold the key too, so a chan/msg reaches every holder.
        members = channel.holders if kind == "chan/msg" and channel is not None else None
        inbox = projection.inbox
        for recipient in txs.recipients(author, body_content, tx, members):
            inbox.append((recipient, msg_id))

    def _name_blobs(self, projection: Projection, body_content: dict[str, Any]) -> None:
        """Keep the blobs a message names, from before it is logged (``Store.hold_blobs``)
        until its projection records them for good (``Projection.blob_refs``)."""
        refs = content.blob_refs(body_content)
        if refs:
            self.store.hold_blobs(refs)
            projection.blob_refs.extend(refs)

    def _project_block(
        self, projection: Projection, msg_id: str, body_content: dict[str, Any], body: bytes
    ) -> None:
        records_id = body_content["txs"]["records"]
        height = int(body_content["height"])
        records = self._pending_records.pop(records_id, None)
        if records is None:
            data = self.store.get_blob(records_id)
            if data is None:
                # Never guess: an empty list would unseal the block's txs and seal
                # them again in the next block.
                raise StorageError(
                    f"block {height}: its records blob {records_id} is missing from the store"
                )
            records = blocks.parse_records_blob(data)
        for record in records:
            # Also from ``open``: timeouts are not in the log, so a store rebuilt
            # from it knows a timed-out tx as open until its block says otherwise.
            tx = self.unsealed.pop(record["tx"], None) or self.open.pop(record["tx"], None)
            self._encoded.pop(record["tx"], None)
            # A replay (``catch_up``) leaves the txs it closed in ``_changed``: a
            # row written from there after this block would carry no block.
            self._changed.pop(record["tx"], None)
            if tx is not None:
                tx.status = record["status"]
                tx.closed = record["closed"]
        # No tx row is rewritten here: each sealed tx's row went to the store with
        # its last message (or its timeout), and any still pending is written by
        # this same projection, before the block's records set its block, status
        # and closed (``Store.apply``). Rewriting every row cost ~10 µs a tx.
        projection.blocks.append(
            BlockRow(height, msg_id, body, records, list(body_content["logs"]))
        )
        if self._latest_block is None or height > self._latest_block[0]:
            self._latest_block = (height, msg_id)

    def _closed(self, tx: txs.Tx) -> None:
        self.open.pop(tx.id, None)
        self.unsealed[tx.id] = tx
        # A closed tx no longer changes: its block record is made now, a few µs
        # a tx spread over the writer's groups, instead of a thousand at once
        # while a block is sealed (~10 ms holding the GIL, the half-load p99's
        # slowest deliveries; benchmarks/README.md, session 18).
        try:
            record = txs.record(tx)
            self._encoded[tx.id] = (record, blocks.encode_record(record))
        except Error:  # no canonical form: the draft makes it again, and says why
            self._encoded.pop(tx.id, None)
        self._changed[tx.id] = tx
        self.dirty = True
        # A finished tx leaves its deadline in the heap until the deadline passes
        # (a day, say): at 1,000 trades/s that is tens of millions of entries.
        # ``expire`` skips entries of closed txs, so dropping them changes
        # nothing; rebuilding once they outnumber the open txs is O(1) amortised.
        if len(self._deadlines) > 2 * len(self.open) + _DEADLINE_SLACK:
            self._deadlines = [(d, t) for d, t in self._deadlines if t in self.open]
            heapq.heapify(self._deadlines)

    # --- writes ---------------------------------------------------------------------------

    def _tx_rows(self, projection: Projection) -> None:
        """Snapshot the transactions the batch changed into ``projection`` (rows copy them)."""
        for tx in self._touched.values():
            projection.txs[tx.id] = tx_row(tx)
        self._touched = {}

    def _commit(self, pending: _Pending) -> None:
        self._tx_rows(pending.projection)
        for author, sequence, kept, rejected in pending.forks:
            try:
                self.store.record_fork(author, sequence, kept, rejected)
            except Error as exc:  # the refusal stands; only the evidence is lost
                log.error("fork evidence for %s at %d not kept: %s", author, sequence, exc)
        for tx in self._changed.values():
            pending.projection.txs.setdefault(tx.id, tx_row(tx))
        pending.projection.durable = _timed_out(self._changed)
        self._changed = {}
        if not pending.entries:
            if pending.projection.txs:
                self._unprojected.append(pending.projection)
            return
        try:
            positions = self.log.append(pending.entries)
        except BaseException:
            # The batch is not in the log, but its effects are in memory: rebuild
            # the state from the store and the log, the source of truth. Its
            # messages were not logged: what they named is not kept for them.
            self.store.release_blobs(pending.projection.blob_refs)
            self._reload()
            raise
        if positions != pending.positions:  # pragma: no cover - a broken invariant
            raise InvalidMessage(f"log positions {positions} differ from {pending.positions}")
        self._unprojected.append(pending.projection)

    def _reload(self) -> None:
        """Forget the in-memory state and rebuild it from the store and the log."""
        log.warning("rebuilding the sequencer's state from the store and the log")
        self.open, self.unsealed, self.channels = {}, {}, {}
        self._deadlines, self._changed, self._pending_records = [], {}, {}
        self._encoded = {}
        self._touched = {}
        if self.stages is not None:
            # The batch that failed may have held a block (a height the next block
            # takes under another id), a stage record or signatures: none happened.
            self.stages = Stages(self.stages.witnesses, self.stages.threshold)
        # What is in the log gets projected, by the projector or by the replay
        # below; both must not write at once.
        with contextlib.suppress(Exception):
            self.flush_projection()
        # Projections still unwritten are dropped: the replay below projects
        # their messages again, holding what they name again.
        for dropped in (*self._unprojected, *self._retry):
            self.store.release_blobs(dropped.blob_refs)
        self._unprojected, self._retry = [], []
        self.catch_up()

    def flush_projection(self) -> None:
        """Write the projections of batches already in the log; returns once they are written."""
        self.dispatch_projection().result()

    def dispatch_projection(self) -> concurrent.futures.Future[None]:
        """Hand the projections of batches already in the log to the projector.

        The future is done once they (and every projection dispatched before)
        are in the store, so the writer can sequence the next batch while the
        store writes this one. Without a projector they are written here.
        """
        batch, self._unprojected = self._unprojected, []
        if self._projector is not None:
            return self._projector.submit(self._write_projections, batch)
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        try:
            self._write_projections(batch)
        except BaseException as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)
        return done

    def _write_projections(self, batch: list[Projection]) -> None:
        todo, self._retry = [*self._retry, *batch], []
        for i, projection in enumerate(todo):
            try:
                self._write_projection(projection)
            except BaseException:
                # Kept, in order: the next dispatch writes them first.
                self._retry = todo[i:]
                raise

    def _write_projection(self, projection: Projection) -> None:
        deliveries = self.store.apply(projection, wanted=self.deliveries_for)
        if self.on_projected is not None:
            self.on_projected(projection, deliveries)

    # --- clock-driven work ----------------------------------------------------------------

    def expire(self, now: int) -> int:
        """Close every open transaction whose deadline the clock has passed.

        ``now`` is taken no earlier than the latest time the node logged at or
        closed a tx at (``_now``): a wall clock stepped back closes nothing
        sooner, and reopens nothing."""
        now = max(now, self._last_now)
        closed = 0
        while self._deadlines and self._deadlines[0][0] < now:
            _, tx_id = heapq.heappop(self._deadlines)
            tx = self.open.get(tx_id)
            if tx is not None and txs.expire(tx, now=now):
                self._closed(tx)
                closed += 1
        if self._changed:
            projection = Projection(
                txs={t.id: tx_row(t) for t in self._changed.values()},
                durable=_timed_out(self._changed),
            )
            self._changed = {}
            self._unprojected.append(projection)
        return closed

    def build_block(self, *, visible: bool = True) -> Accepted | None:
        """Append a block if anything happened since the last one; returns it.

        ``draft_block``, ``seal_records`` and ``append_block`` in a row, on the
        calling thread. With ``visible`` it returns once the block is in the
        store too; without, its projection is only dispatched. Raises
        ``LogError``/``StorageError`` when the block cannot be written.
        """
        draft = self.draft_block()
        if draft is None:
            if visible:
                self.flush_projection()
            return None
        try:
            sealed = self.seal_records(draft)
        except BaseException:
            self.abandon_block()
            raise
        return self.append_block(sealed, visible=visible)

    def record_stages(self) -> list[Accepted]:
        """Log a ``block/stage`` for each stage that reached its threshold (writer thread).

        The projection is dispatched, not waited for. Returns what was logged;
        raises ``LogError`` when the log cannot be written (the stages are
        recorded on a later call).
        """
        if self.stages is None:
            return []
        ready = self.stages.ready()
        if not ready:
            return []
        now = self._now()
        state = self._own_state()
        checked: list[ssb.Checked | Error] = []
        making, ready = ready, []
        for record in making:
            try:
                msg = ssb.create(self.identity, record.content(), state, now, self.hmac_key)
            except InvalidMessage as exc:
                # Past 8 KiB (some 60 signers and up): no later call makes it fit, so
                # it is left out (said once, kept from ``ready`` until a restart); raised,
                # it stranded every other stage of this call the same way.
                log.error(
                    "stage %s of block %d cannot be recorded: %s",
                    record.stage,
                    record.height,
                    exc.detail,
                )
                continue
            one = ssb.check(msg, self.hmac_key)
            checked.append(one)
            ready.append(record)
            state = ssb.FeedState(id=one.id, sequence=one.sequence)
        if not ready:
            return []
        try:
            results = self.process(checked)
        except BaseException:
            self.stages.abandon(ready)
            raise
        self.dispatch_projection()
        logged: list[Accepted] = []
        for record, result in zip(ready, results, strict=True):
            if isinstance(result, Accepted):
                logged.append(result)
            else:
                log.error(
                    "stage %s of block %d not logged: %s", record.stage, record.height, result
                )
                self.stages.abandon([record])
        return logged

    def post_own(self, content: dict[str, Any]) -> Accepted:
        """Sign ``content`` into the node's own feed and log it (writer thread).

        The projection is dispatched, not waited for. Raises the message's
        ``Error`` when it is refused, ``LogError`` when the log cannot be written.
        """
        now = self._now()
        msg = ssb.create(self.identity, content, self._own_state(), now, self.hmac_key)
        result = self.process([ssb.check(msg, self.hmac_key)])[0]
        self.dispatch_projection()
        if isinstance(result, Error):
            raise result
        return result

    def draft_block(self) -> BlockDraft | None:
        """The records of the next block, or None when nothing happened (writer thread).

        Takes the closed transactions not yet in a block. Those closing later
        wait for the next block; until ``append_block`` logs this one, draft
        no other.
        """
        if self._drafting:
            raise OperationalError("a block is already being built: append or abandon it first")
        now = self._now()
        self.expire(now)
        if not self.dirty:
            return None
        closed = sorted(self.unsealed.values(), key=lambda t: (t.closed or 0, t.id))
        records: list[dict[str, Any]] = []
        encoded: list[blocks.EncodedRecord | None] = []
        for t in closed:
            made = self._encoded.get(t.id)
            if made is None:  # closed before this process started
                records.append(txs.record(t))
                encoded.append(None)
            else:
                records.append(made[0])
                encoded.append(made[1])
        # Activity from here on is the next block's: the log checkpoint is taken
        # when this one is appended, and covers it, but the flag must not be lost.
        self.dirty = False
        self._drafting = True
        return BlockDraft(records, encoded)

    def seal_records(self, draft: BlockDraft) -> SealedRecords:
        """Serialise ``draft``'s records and store them as a blob (any thread).

        The slow part of a block, off the writer: a closed tx no longer changes.
        Raises ``StorageError`` when the blob cannot be written; call
        ``abandon_block`` (writer thread) then.
        """
        blob, records_root = blocks.join_records(
            [
                made if made is not None else blocks.encode_record(record)
                for record, made in zip(
                    draft.records, draft.encoded or [None] * len(draft.records), strict=True
                )
            ]
        )
        records_id = blob_id(blob)
        # Not durable: its block names it within moments, and a power cut before
        # that costs at worst a file no sweep counts, not an fsync a block while
        # holding the store (the projections wait on it).
        self.store.put_blob(records_id, blob, stored=self.clock(), durable=False)
        return SealedRecords(draft.records, records_id, records_root)

    def abandon_block(self) -> None:
        """A drafted block will not be appended: its txs go into the next one (writer thread)."""
        self.dirty = True
        self._drafting = False

    def _own_state(self) -> ssb.FeedState | None:
        """Where the node's own feed stands in the log: what its next message follows."""
        head = self.log.head(self.node_id)
        return None if head is None else ssb.FeedState(id=head.id, sequence=head.sequence)

    def _block_message(self, sealed: SealedRecords) -> ssb.Checked:
        # Never before a tx it seals closed, which verifiers check
        # (``blocks.verify_records``): a timeout may be decided at a clock that
        # then stepped back. Nor before the previous block (``verify_block``):
        # ``_now`` never goes below the log's latest time, which is past it.
        now = max(self._now(), max((int(r["closed"]) for r in sealed.records), default=0))
        latest = self._latest_block
        height = 1 if latest is None else latest[0] + 1
        logs = [
            blocks.LogCheckpoint(p, self.log.size(p), self.log.root(p, self.log.size(p)))
            for p in range(self.log.pipelines)
        ]
        block = blocks.block_content(
            height=height,
            prev=None if latest is None else latest[1],
            time=now,
            logs=logs,
            records=sealed.records,
            records_blob_id=sealed.records_id,
            records_root=sealed.records_root,
        )
        state = self._own_state()
        msg = ssb.create(self.identity, block, state, now, self.hmac_key)
        return ssb.check(msg, self.hmac_key)

    def append_block(self, sealed: SealedRecords, *, visible: bool = True) -> Accepted:
        """Sign and log the block of ``sealed`` records, checkpointing every pipeline (writer thread).

        Raises ``LogError``/``StorageError`` when it cannot be written (its txs
        then go into the next block).
        """
        self._drafting = False
        try:
            checked = self._block_message(sealed)
            self._pending_records[sealed.records_id] = sealed.records
            result = self.process([checked])[0]
        except BaseException:  # nothing of the block was logged
            self._unseal(sealed)
            raise
        if visible:
            self.flush_projection()
        else:
            self.dispatch_projection()
        if isinstance(result, Error):
            self._unseal(sealed)
            raise result
        return result

    def _unseal(self, sealed: SealedRecords) -> None:
        """A block that was not logged: its txs go into the next one."""
        self._pending_records.pop(sealed.records_id, None)
        self.dirty = True
