"""A chainmail node: log, store, sequencer, ingest and block builder wired together.

``Node`` is what ``chainmail serve`` runs and what the API calls. All state
changes go through the sequencer on one writer thread; reads go straight to
the log and store on the caller's thread.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import fcntl
import functools
import gc
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, TypeVar

from chainmail import blobkeeping, checkpoint
from chainmail.anchoring import AnchorConfig, Anchorer
from chainmail.errors import (
    Error,
    KeystoreError,
    NotFound,
    OperationalError,
    ProofError,
    Rejected,
    StorageError,
)
from chainmail.ids import BlobId, blob_id
from chainmail.inboxfeed import DEFAULT_LIMIT, InboxFeed
from chainmail.ingest import DEFAULT_MAX_BATCH, Ingest, Sequenced
from chainmail.keys import Keypair
from chainmail.keystore import read_secret_file, write_private_file
from chainmail.log import Log, LogEntry
from chainmail.priority import VERIFY_NICE
from chainmail.ratelimit import IDENTITY_BURST, IDENTITY_RATE
from chainmail.registry import Admission, Registry
from chainmail.sequencer import Result, Sequencer, checked_cursors
from chainmail.sqlite import DEFAULT_SYNCHRONOUS, STORE_SYNCHRONOUS, SqliteLog, SqliteStore
from chainmail.stages import StageHistograms
from chainmail.store import Delivery, Projection, Store
from chainmail.witnesses import threshold_of

__all__ = [
    "DEFAULT_BLOCK_INTERVAL",
    "Node",
    "NodeConfig",
    "load_identity",
    "system_clock",
    "tune_gc",
]

log = logging.getLogger("chainmail.node")

DEFAULT_BLOCK_INTERVAL: Final = 1.0
_TICK: Final = 0.05
#: Threads reading for streams and pages (inbox, firehose): a wake reaches every
#: follower at once, and each reads on its own connection.
_READERS: Final = 8
#: Ids acknowledged in one store commit at most (one ack may carry more).
_ACK_IDS: Final = 10_000
T = TypeVar("T")


def system_clock() -> int:
    """The node's clock: Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class NodeConfig:
    """How a node runs. Only ``data_dir`` is required."""

    data_dir: Path
    #: The log's and the store's SQLite files (default: ``log.sqlite`` and
    #: ``store.sqlite`` in ``data_dir``). The store's blobs sit beside its file.
    log_path: Path | None = None
    store_path: Path | None = None
    pipelines: int = 1
    block_interval: float = DEFAULT_BLOCK_INTERVAL
    origin: str | None = None
    hmac_key: bytes | None = None
    synchronous: str = DEFAULT_SYNCHRONOUS
    workers: int | None = None
    #: Niceness, 0 to 19, of the verify threads that check backlog batches
    #: (``chainmail.ingest``, ``chainmail.priority``); 0: all at the node's own.
    verify_nice: int = VERIFY_NICE
    max_batch: int = DEFAULT_MAX_BATCH
    admission: Admission = "open"
    registrars: tuple[str, ...] = ()
    #: Identities that co-sign each block in stages (``chainmail.witnesses``), and
    #: how many must sign a stage (None: all of them).
    witnesses: tuple[str, ...] = ()
    threshold: int | None = None
    identity_rate: float = IDENTITY_RATE
    identity_burst: float = IDENTITY_BURST
    #: Where and how often blocks are anchored in Bitcoin (None: not at all).
    anchor: AnchorConfig | None = None
    #: Seconds a stored blob no logged message names is kept, and the bytes of
    #: such blobs held at most (``chainmail.blobkeeping``).
    blob_grace: float = blobkeeping.DEFAULT_GRACE_S
    blob_pending_limit: int = blobkeeping.DEFAULT_PENDING_LIMIT
    #: Blobs that may be pending at once, whatever their size.
    blob_pending_count: int = blobkeeping.DEFAULT_PENDING_COUNT


#: Identity records read a page when searching (``Node.search_identities``).
_SEARCH_PAGE: Final = 500


def _damaged(data_dir: Path, exc: sqlite3.Error) -> StorageError:
    return StorageError(
        f"cannot read the log and store in {data_dir}: {exc} (restore the data directory"
        " from a backup, or rebuild the store from an intact log)"
    )


def _lock_data_dir(data_dir: Path) -> IO[bytes]:
    """An exclusive lock on ``data_dir`` for this process (``flock`` on its ``lock``
    file, which also holds the holder's pid). Raises ``StorageError`` if another
    node holds it."""
    path = data_dir / "lock"
    try:
        held = open(path, "a+b")  # noqa: SIM115 - kept open: the lock lasts as long
    except OSError as exc:
        raise StorageError(f"cannot lock the data directory {data_dir}: {exc}") from exc
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        held.seek(0)
        holder = held.read(32).decode("ascii", "replace").strip()
        held.close()
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise StorageError(
            f"the data directory {data_dir} is in use by another node{who}"
        ) from None
    held.seek(0)
    held.truncate()
    held.write(str(os.getpid()).encode("ascii"))
    held.flush()
    return held


def load_identity(path: Path, *, log: Path | None = None) -> Keypair:
    """The node's key from its SSB secret file, created (mode 0600) on first use.

    The file is read as ssb-keys writes it (``#`` comment lines allowed). A
    new one is written whole or not at all (``keystore.write_private_file``),
    so a crash never leaves an empty key. When ``path`` is missing but ``log`` (the node's log file)
    holds data, no new key is made: that log is signed with the lost one, and
    a new key would be another node. Raises ``StorageError`` (naming the file)
    for a key file that cannot be read or is not a key, and for that case.
    """
    if path.exists() or path.is_symlink():
        try:
            return Keypair.from_ssb_secret(read_secret_file(path))
        except KeystoreError as exc:
            raise StorageError(f"the node's key {path}: {exc.detail}") from exc
    if log is not None and log.exists() and log.stat().st_size > 0:
        raise StorageError(
            f"the node's key {path} is missing, but {log} holds a log it signed: restore"
            " the key file (a new key would make another node)"
        )
    keys = Keypair.generate()
    body = json.dumps(keys.to_ssb_secret(), indent=2) + "\n"
    try:
        write_private_file(path, body.encode("utf-8"))
    except OSError as exc:
        raise StorageError(f"cannot write the node's key {path}: {exc}") from exc
    return keys


#: Allocations between young-generation collections (CPython's default: 700).
#: Ingest allocates a few dozen objects per message, so the default collects
#: hundreds of times a second, and every tenth one walks the middle generation.
_GC_YOUNG: Final = 50_000
#: Deliveries pushed to one inbox stream and not yet sent before it reads the store instead.
INBOX_PUSH_LIMIT = DEFAULT_LIMIT


def tune_gc() -> None:
    """Collect less often under load, and never walk the objects of the start-up.

    The node's state is long-lived (tx and channel tables, caches), and nearly
    all it allocates per message dies young or is never cyclic: frequent full
    walks only add pauses to the tail latency.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG, middle, old)


class _Signal:
    """A broadcast 'something changed' that any number of waiters can await."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def mark(self) -> asyncio.Event:
        """What ``wait(since=...)`` takes: a fire from now on ends that wait at once."""
        return self._event

    async def wait(
        self, timeout: float | None = None, *, since: asyncio.Event | None = None
    ) -> None:
        """Wait for the next fire (or one since ``mark`` gave ``since``), at most ``timeout`` s."""
        event = self._event if since is None else since
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


class Node:
    """One node on the embedded (or any) ``Log`` and ``Store``."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        clock: Callable[[], int] = system_clock,
        log_: Log | None = None,
        store: Store | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        try:
            config.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot use {config.data_dir} as the data directory: {exc}"
            ) from exc
        for path in (config.log_path, config.store_path):
            if path is not None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StorageError(f"cannot make the directory of {path}: {exc}") from exc
        # Held until ``stop``: a second node on the same files would serve stale
        # state and fail every write it raced the first one for.
        self._lock = _lock_data_dir(config.data_dir)
        self.identity = load_identity(
            config.data_dir / "node-secret.json",
            log=config.log_path or config.data_dir / "log.sqlite",
        )
        self.id = self.identity.id
        # The origin doubles as the checkpoint key name, which may hold neither
        # "+" nor spaces (C2SP signed-note): use base64url letters of the id.
        short = self.id[1:9].replace("+", "-").replace("/", "_")
        self.origin = config.origin or f"chainmail.node/{short}"
        log_path = config.log_path or config.data_dir / "log.sqlite"
        opened_log: Log | None = None
        opened_store: Store | None = None
        try:
            self.log: Log = log_ or SqliteLog(
                log_path, pipelines=config.pipelines, synchronous=config.synchronous
            )
            opened_log = None if log_ else self.log
            # ``synchronous`` is the log's: the store is rebuilt from it (STORE_SYNCHRONOUS).
            self.store: Store = store or SqliteStore(
                config.store_path or config.data_dir / "store.sqlite",
                synchronous=STORE_SYNCHRONOUS,
                log_path=log_path,
            )
            opened_store = None if store else self.store
            # Here as well as in the sequencer's start, so ``serve`` says it in one line.
            checked_cursors(self.log, self.store)
        except (Error, sqlite3.Error) as exc:
            for opened in (opened_store, opened_log):
                if opened is not None:
                    opened.close()
            self._lock.close()
            if isinstance(exc, sqlite3.Error):  # a damaged page a start-up read met
                raise _damaged(config.data_dir, exc) from exc
            raise
        # One thread writes both: a group's log commit, then its projection. A
        # projector thread of its own, writing one group while the sequencer
        # appended the next, cost more than it overlapped: the two contend
        # for the GIL and each other's caches (benchmarks/README.md, session 10).
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sequencer")
        # Reads and acks have threads of their own, apart from each other: a
        # follower's read never queues behind an ack waiting for the store's
        # writer, and acks arriving together share one commit (``ack``).
        self._readers = concurrent.futures.ThreadPoolExecutor(_READERS, thread_name_prefix="reader")
        self._acker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="acker")
        self._sealer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sealer")
        self._acks: collections.deque[tuple[str, list[str], asyncio.Future[int]]] = (
            collections.deque()
        )
        self._acking: asyncio.Task[None] | None = None
        self._stopping = False
        #: Blobs swept so far.
        self.blobs_swept = 0
        self._sequencer: Sequencer | None = None
        self._ingest: Ingest | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.anchorer: Anchorer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox_feeds: dict[str, set[InboxFeed]] = {}
        self.log_signal: _Signal | None = None
        self.block_signal: _Signal | None = None
        self.started = False
        #: The server is shutting down (``begin_closing``): streams that follow end now.
        self.closing = False

    # --- life cycle -----------------------------------------------------------------------

    def _new_sequencer(self) -> Sequencer:
        """The sequencer, caught up with the log (on the writer thread)."""
        try:
            return Sequencer(
                self.log,
                self.store,
                self.identity,
                clock=self.clock,
                hmac_key=self.config.hmac_key,
                on_projected=self._projected,
                # Only recipients with a live inbox stream need their entries
                # pushed (of 1,000 feeds in the bench, 64): no Delivery is
                # built, grouped and dropped for the others.
                deliveries_for=self._inbox_feeds,
                registrars=self.config.registrars,
                admission=self.config.admission,
                identity_rate=self.config.identity_rate,
                identity_burst=self.config.identity_burst,
                witnesses=self.config.witnesses,
                threshold=self.config.threshold,
            )
        except sqlite3.Error as exc:  # a damaged page catching up met
            raise _damaged(self.config.data_dir, exc) from exc

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.log_signal = _Signal()
        self.block_signal = _Signal()
        try:
            self._sequencer = await self._on_writer(self._new_sequencer)
        except Error:
            await self.stop()  # the log, the store and the data directory's lock given back
            raise
        self._ingest = Ingest(
            self._sequence,
            workers=self.config.workers,
            hmac_key=self.config.hmac_key,
            node_id=self.id,
            max_batch=self.config.max_batch,
            verify_nice=self.config.verify_nice,
        )
        await self._ingest.start()
        tune_gc()
        self._tasks = [
            asyncio.create_task(self._ticker(), name="block-builder"),
            # After the start-up replay above: a blob only it references is kept.
            asyncio.create_task(self._blob_sweeper(), name="blob-sweeper"),
        ]
        if self.config.anchor is not None:
            seq = self._sequencer

            async def post(content: dict[str, Any]) -> object:
                return await self._on_writer(lambda: seq.post_own(content))

            self.anchorer = Anchorer(
                self.config.anchor, self.config.data_dir, self.store, post, self.clock
            )
            self._tasks.append(asyncio.create_task(self.anchorer.run(), name="anchorer"))
        self.started = True
        log.info("node %s up: %s", self.id, self.config.data_dir)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the node was started on (None before ``start``)."""
        return self._loop

    def begin_closing(self) -> None:
        """Tell the streams that follow the log to end (on the event loop's thread): the
        server is shutting down, and would otherwise wait its graceful timeout for them."""
        self.closing = True
        if self.log_signal is not None:
            self.log_signal.fire()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.anchorer is not None:
            await self.anchorer.aclose()
        if self._ingest is not None:
            await self._ingest.stop()
        if self._sequencer is not None:
            with contextlib.suppress(Error):
                await self._on_writer(self._sequencer.flush_projection)
        self._stopping = True
        if self._acking is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._acking
        self._writer.shutdown(wait=True)
        self._acker.shutdown(wait=True)
        self._sealer.shutdown(wait=True)
        self._readers.shutdown(wait=True, cancel_futures=True)
        self.log.close()
        self.store.close()
        self.started = False
        self._lock.close()  # closing the file gives the lock up

    async def _on_writer(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, fn)

    @property
    def sequencer(self) -> Sequencer:
        if self._sequencer is None:
            raise RuntimeError("node not started")
        return self._sequencer

    # --- ingest ---------------------------------------------------------------------------

    @property
    def ingest_stages(self) -> StageHistograms | None:
        """Ingest's per-stage latency histograms (None before ``start``)."""
        return None if self._ingest is None else self._ingest.stages

    async def _sequence(self, items: list[Any]) -> Sequenced:
        seq = self.sequencer

        def run() -> tuple[list[Result], concurrent.futures.Future[None]]:
            return seq.process(items, policy_checked=True), seq.dispatch_projection()

        results, projected = await self._on_writer(run)
        if self.log_signal is not None:
            self.log_signal.fire()
        return results, self._visible(projected)

    async def _visible(self, projected: concurrent.futures.Future[None]) -> None:
        # Replies wait for the projection too, so a client reads its own writes:
        # the message, the tx status and the recipients' inboxes are there when
        # it hears back. A failed projection is replayed on restart; the
        # messages are in the log, so they are acknowledged all the same.
        try:
            await asyncio.wrap_future(projected)
        except Error as exc:
            log.error("projection failed, will be replayed on restart: %s", exc)
        except Exception:
            log.exception("projection failed, will be replayed on restart")

    async def submit(self, raw: bytes) -> Result:
        """Check, sequence and log one raw JSON message."""
        if self._ingest is None:
            raise RuntimeError("node not started")
        return await self._ingest.submit(raw)

    async def submit_many(self, raws: Sequence[bytes]) -> list[Result]:
        """Check, sequence and log raw JSON messages in order."""
        if self._ingest is None:
            raise RuntimeError("node not started")
        return await self._ingest.submit_many(raws)

    def enqueue(self, raws: Sequence[bytes]) -> asyncio.Future[list[Result]]:
        """Queue raw messages for ingest now; the future holds their results, in order."""
        if self._ingest is None:
            raise RuntimeError("node not started")
        return self._ingest.enqueue(raws)

    # --- blobs ----------------------------------------------------------------------------

    async def put_blob(self, data: bytes) -> tuple[BlobId, bool]:
        """Store ``data`` as a blob; its id, and whether it is new.

        Raises ``RateLimited`` when the blobs no logged message names yet would
        pass ``blob_pending_limit`` bytes or ``blob_pending_count`` blobs with it
        (``chainmail.blobkeeping``), and
        ``StorageError`` when it cannot be written.
        """
        bid = blob_id(data)
        now = self.clock()
        limit, grace = self.config.blob_pending_limit, self.config.blob_grace
        max_count = self.config.blob_pending_count

        def room(size: int, pending: int, oldest: int | None, count: int) -> None:
            # In the store, under its lock: counted as soon as it passes, so
            # concurrent uploads cannot pass the limit together.
            blobkeeping.check_room(
                size,
                pending=pending,
                limit=limit,
                oldest=oldest,
                grace=grace,
                now=now,
                count=count,
                max_count=max_count,
            )

        created = await asyncio.to_thread(
            functools.partial(self.store.put_blob, bid, data, stored=now, room=room)
        )
        return bid, created

    async def sweep_blobs(self) -> tuple[int, int]:
        """Delete the blobs still named by no message ``blob_grace`` after they were stored.

        Returns (blobs, bytes) deleted. The sweeper task calls it every
        ``blobkeeping.sweep_every(blob_grace)`` seconds.
        """
        before = blobkeeping.cutoff(self.clock(), self.config.blob_grace)
        count, size = await asyncio.to_thread(self.store.sweep_blobs, before)
        self.blobs_swept += count
        if count:
            log.info("swept %d blobs (%d bytes) that no message named", count, size)
        return count, size

    async def _blob_sweeper(self) -> None:
        every = blobkeeping.sweep_every(self.config.blob_grace)
        while True:
            await asyncio.sleep(every)
            try:
                await self.sweep_blobs()
            except Error as exc:
                log.error("blob sweep: %s", exc.diagnostics())
            except Exception:
                log.exception("blob sweep failed")

    # --- reads and acks -------------------------------------------------------------------

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a reader thread: for store and log reads off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._readers, fn, *args)

    async def ack(self, recipient: str, ids: Sequence[str]) -> int:
        """Acknowledge ``recipient``'s deliveries of ``ids``; how many were removed.

        Acks that arrive while a commit of acks is under way are written
        together in the next one. Raises ``StorageError`` when the store fails.
        """
        if self._stopping:
            raise OperationalError("the node is stopping; the ack was not written")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._acks.append((recipient, list(ids), future))
        if self._acking is None or self._acking.done():
            self._acking = asyncio.create_task(self._write_acks(), name="acks")
        return await future

    async def _write_acks(self) -> None:
        loop = asyncio.get_running_loop()
        while self._acks:
            # Up to _ACK_IDS ids a commit: a burst of large acks must not hold
            # the store's writer (which the sequencer shares) for long.
            batch: list[tuple[str, list[str], asyncio.Future[int]]] = []
            size = 0
            while self._acks and (not batch or size + len(self._acks[0][1]) <= _ACK_IDS):
                size += len(self._acks[0][1])
                batch.append(self._acks.popleft())
            counts: list[int] | None = None
            error: BaseException = OperationalError("ack failed: the store gave no answer")
            try:
                counts = await loop.run_in_executor(
                    self._acker, self.store.ack_many, [(r, ids) for r, ids, _ in batch]
                )
            except Exception as exc:
                error = exc
            finally:
                for i, (_, _, future) in enumerate(batch):
                    if future.done():
                        continue
                    if counts is not None and len(counts) == len(batch):
                        future.set_result(counts[i])
                    else:
                        future.set_exception(error)

    # --- notifications --------------------------------------------------------------------

    def _projected(self, projection: Projection, deliveries: list[tuple[str, Delivery]]) -> None:
        # Runs on the writer thread: hop to the loop to wake waiters.
        fresh: dict[str, list[Delivery]] = {}
        for recipient, entry in deliveries:
            fresh.setdefault(recipient, []).append(entry)
        has_blocks = bool(projection.blocks or projection.block_stages)
        if self._loop is not None and (fresh or projection.messages):
            self._loop.call_soon_threadsafe(
                self._wake, fresh, has_blocks, bool(projection.messages)
            )

    def _wake(
        self, fresh: dict[str, list[Delivery]], has_blocks: bool, logged: bool = False
    ) -> None:
        # Messages the ticker logs (blocks) wake firehose followers too.
        if logged and self.log_signal is not None:
            self.log_signal.fire()
        for recipient, entries in fresh.items():
            for feed in self._inbox_feeds.get(recipient, ()):
                feed.push(entries)
        if has_blocks and self.block_signal is not None:
            self.block_signal.fire()

    @contextlib.contextmanager
    def inbox_feed(self, recipient: str) -> Iterator[InboxFeed]:
        """A feed of ``recipient``'s new deliveries as they are written (event loop only).

        Starts ``stale``: read the store first. Dropped when the block exits.
        """
        feed = InboxFeed(recipient, limit=INBOX_PUSH_LIMIT)
        self._inbox_feeds.setdefault(recipient, set()).add(feed)
        try:
            yield feed
        finally:
            feeds = self._inbox_feeds.get(recipient)
            if feeds is not None:
                feeds.discard(feed)
                if not feeds:
                    del self._inbox_feeds[recipient]

    async def _build_block(self, seq: Sequencer) -> None:
        # Only the draft and the append hold the writer: serialising and storing
        # the records (~10 ms at a few hundred txs) would stall every request.
        draft = await self._on_writer(seq.draft_block)
        if draft is None:
            return
        loop = asyncio.get_running_loop()
        try:
            sealed = await loop.run_in_executor(self._sealer, seq.seal_records, draft)
        except BaseException:
            await self._on_writer(seq.abandon_block)
            raise
        await self._on_writer(functools.partial(seq.append_block, sealed, visible=False))

    async def _ticker(self) -> None:
        seq = self.sequencer
        interval = self.config.block_interval
        next_block = time.monotonic() + interval
        while True:
            await asyncio.sleep(_TICK)
            try:
                if time.monotonic() >= next_block:
                    next_block = time.monotonic() + interval
                    await self._build_block(seq)
                    if seq.stages is not None:
                        # A block timer as fast as the tick takes this branch every
                        # time: stages left to the other one were never recorded.
                        await self._on_writer(seq.record_stages)
                else:

                    def expire() -> None:
                        # Dispatched, not awaited: the writer goes back to ingest.
                        if seq.expire(self.clock()):
                            seq.dispatch_projection()
                        seq.record_stages()  # dispatched too; a no-op without witnesses

                    await self._on_writer(expire)
            except Error as exc:
                log.error("block builder: %s", exc.diagnostics())
            except Exception:
                log.exception("block builder failed")

    # --- reads ----------------------------------------------------------------------------

    def checkpoint_text(self, pipeline: int) -> str:
        """The signed C2SP checkpoint of ``pipeline`` at its current size."""
        self.check_pipeline(pipeline)
        size = self.log.size(pipeline)
        cp = checkpoint.Checkpoint(
            origin=f"{self.origin}/{pipeline}", size=size, root=self.log.root(pipeline, size)
        )
        return checkpoint.sign_checkpoint(cp, self.origin, self.identity)

    @property
    def witness_threshold(self) -> int | None:
        """Witnesses that must sign each stage of a block (None without witnesses)."""
        witnesses = self.config.witnesses
        if not witnesses:
            return None
        return threshold_of(witnesses, self.config.threshold)

    def verifier_key(self) -> str:
        """The C2SP verifier key string of the node's checkpoints."""
        return checkpoint.verifier_key(self.origin, self.identity.public)

    def check_live_key(self, ident: str) -> None:
        """Raise ``Rejected`` (``key_rotated``) when ``ident`` has rotated away: its
        inbox is not for whoever holds the old key (it may be a leaked one)."""
        seq = self._sequencer
        new = None if seq is None else seq.registry.rotated_to(ident)
        if new is not None:
            raise Rejected(
                f"{ident} has rotated to {new}: the old key may not read or ack its inbox",
                code="key_rotated",
            )

    def check_pipeline(self, pipeline: int) -> None:
        """Raise ``NotFound`` unless the log has ``pipeline``."""
        if not 0 <= pipeline < self.log.pipelines:
            raise NotFound(f"no pipeline {pipeline} (the node has {self.log.pipelines})")

    def message_proof(self, msg_id: str) -> dict[str, Any]:
        """Inclusion of ``msg_id`` under the first block whose checkpoint covers it."""
        row = self.store.message(msg_id)
        if row is None:
            raise NotFound(f"no message {msg_id}")
        block = self.store.block_covering(row.pipeline, row.index)
        if block is None:
            raise NotFound(f"message {msg_id} is not yet covered by a block")
        cp = next(c for c in block.logs if int(c["pipeline"]) == row.pipeline)
        size = int(cp["size"])
        proof = self.log.inclusion_proof(row.pipeline, row.index, size)
        return {
            "id": msg_id,
            "pipeline": row.pipeline,
            "index": row.index,
            "size": size,
            "root": cp["root"],
            "proof": [base64.b64encode(p).decode() for p in proof],
            "block": {"height": block.height, "id": block.id},
        }

    def consistency(self, pipeline: int, size1: int, size2: int) -> list[bytes]:
        self.check_pipeline(pipeline)
        current = self.log.size(pipeline)
        if size2 > current:
            raise ProofError(f"to={size2} is beyond the log's size {current}")
        return self.log.consistency_proof(pipeline, size1, size2)

    def identity_info(self, ident: str) -> dict[str, Any]:
        """An identity as DESIGN §8 shows it, at the node's clock."""
        records = self.store.identity_records([ident])
        registry = Registry.from_records(
            records, self.config.registrars, self.config.admission, node_id=self.id
        )
        return registry.identity(ident, now=self.clock())

    def search_identities(self, name: str, limit: int) -> list[dict[str, Any]]:
        """Identities whose claimed or attested name contains ``name``: the attested
        hits first, then the claimed ones, each by id; at most ``limit``.

        The store's text match is a superset (older claims, other registrars'
        attestations, expired ones): it is read a page at a time in id order and
        each page filtered through the registry's own rules, so no number of near
        misses before a hit can hide it. Reads the store: call it off the loop.
        """
        needle = name.casefold()
        now = self.clock()
        attested: list[dict[str, Any]] = []
        claimed: list[dict[str, Any]] = []
        after = ""
        while len(attested) < limit:
            records = self.store.search_identities(name, _SEARCH_PAGE, after)
            if not records:
                break
            after = str(records[-1]["id"])
            registry = Registry.from_records(
                records, self.config.registrars, self.config.admission, node_id=self.id
            )
            for hit in registry.search(name, now=now, limit=len(records)):
                shown = hit["attested"]
                if shown is not None and needle in str(shown["name"]).casefold():
                    attested.append(hit)
                elif len(claimed) < limit:
                    claimed.append(hit)
        return (attested + claimed)[:limit]

    def firehose(self, pipeline: int, start: int, limit: int) -> list[LogEntry]:
        self.check_pipeline(pipeline)
        return self.log.read(pipeline, start, limit)
