"""Embedded SQLite backends: ``SqliteLog`` and ``SqliteStore`` (the default).

Two database files in the node's data directory, both in WAL mode:
``log.sqlite`` (entries and Merkle subtree hashes: everything the log must
commit atomically) and ``store.sqlite`` (projections). Each object has one
writer connection, used from one thread at a time, and a separate reader
connection for the API, so readers never wait for a group commit.

A message's body, id and feed position are stored once, in the log: the
store keeps only what it derives (type, tx, channel) under the message's log
position, and its readers attach the log file to join the two. Every index on
a random key costs a page write per message at commit, so the ids and the
(author, sequence) feed order are indexed once, in the log.
"""

from __future__ import annotations

import binascii
import functools
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal, cast

import orjson

from chainmail import content, merkle
from chainmail.errors import InvalidMessage, LogError, NotFound, StorageError
from chainmail.ids import blob_digest, blob_id_from_digest, msg_digest
from chainmail.log import Head, LogEntry, NewEntry, head, pipeline_of
from chainmail.registry import search_text
from chainmail.store import BlobRoom, BlockRow, Delivery, MessageRow, Projection, TxRow
from chainmail.witnesses import STAGES

__all__ = ["CHECKPOINT_INTERVAL", "STORE_SYNCHRONOUS", "SqliteLog", "SqliteStore"]

_log = logging.getLogger("chainmail.sqlite")

# Binding a parameter that is not exactly an int, float, str or bytearray goes
# through ``sqlite3``'s adaptation protocol, which for ``bytes`` and ``None``
# looks ``__adapt__`` up on ``PrepareProtocol``, fails, and formats the
# AttributeError's message before discarding it: ~0.6 µs more a ``bytes``
# parameter and ~0.1 a ``None`` than with an adapter registered, ~14 of them a
# message on the writer (bodies, hashes, JSON columns, NULLs; the adaptation
# was 7.7% of its instructions under callgrind). A registered adapter is found first, by one
# dict lookup. Both are identities (``bytes`` of an exact bytes is that
# object; ``{}.get`` answers None), so nothing bound changes, here or for any
# other user of ``sqlite3`` in the process; subclasses keep the old path.
sqlite3.register_adapter(bytes, bytes)
sqlite3.register_adapter(type(None), cast("Callable[[None], None]", {}.get))

#: ``FULL`` survives power loss; ``NORMAL`` survives a process crash only.
DEFAULT_SYNCHRONOUS: Final = "FULL"
#: The store's durability. ``NORMAL`` is enough: every projection is rebuilt
#: from the log (which commits first, at ``FULL``) from the store's cursors, so
#: a projection commit lost with the power is replayed on start, and a lost
#: inbox ack means a redelivery, which at-least-once allows. Fork evidence is
#: in no log, so ``record_fork`` commits at ``FULL``. The second fsync per
#: group cost ~1 ms a commit here (benchmarks/README.md, session 4).
STORE_SYNCHRONOUS: Final = "NORMAL"
#: The WAL is copied back into the database by a ``_Checkpointer`` thread, not
#: by the committing writer: a 40 MB checkpoint inside a group commit held every
#: request of the group (and all behind it) for 50–120 ms. The writer checkpoints
#: itself only past this many pages (~400 MB), a bound on the WAL should the
#: background copy ever fall behind.
_WAL_AUTOCHECKPOINT_PAGES: Final = 100_000
#: Seconds between background checkpoints while commits keep coming: long enough
#: that a page many group commits dirtied is copied once (0.2 s cost the two
#: checkpointer threads 9.3 µs a message at 200k messages, 1 s 4.8), short enough
#: that the WAL stays tens of MB and restarts from its beginning, and that a
#: checkpoint's fsync of the database file stays short: the log's commit waits
#: behind it on the same disk (at 1 s, 25–45 ms checkpoints held log commits
#: 10–30 ms once a second, the half-load p99; 0.5 s: p99 80–110 → 62–71 ms,
#: same throughput; benchmarks/README.md, session 7).
CHECKPOINT_INTERVAL: Final = 0.5
#: A WAL that grew (a burst, a long reader) is truncated to this once it restarts.
_JOURNAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
#: WAL pages (~64 MB) beyond which the checkpointer makes the WAL restart.
_RESTART_FRAMES: Final = 16_384
_RESTART_WAIT_MS: Final = 20

#: Bumped when the layout changes; ``SqliteLog`` migrates older files on open.
_LOG_VERSION: Final = 4
#: The version from which ``tree`` holds only the nodes at ``_TREE_MIN_LEVEL`` and up.
_LOG_PRUNED_TREE: Final = 3
#: The version from which ``entries`` has ``seq`` (older rows keep NULL there).
_LOG_SEQ: Final = 4
#: The lowest level of the Merkle tree whose nodes are rows of ``tree``: complete
#: subtrees of 16 leaves and up, 1/8 of a row per message instead of one. A proof
#: or root recomputes the nodes below from the ids of at most 16 entries per block
#: it touches (two blocks for most proofs). Measured at 30k messages (callgrind):
#: level 4 costs an inclusion proof 15% more instructions than storing every level
#: and a consistency proof 31%; level 5 costs them 118% and 99% for 1/16 of a row,
#: which saved the writer no measurable more (0.4%). Changing it changes what the
#: file holds: bump ``_LOG_VERSION`` and migrate.
_TREE_MIN_LEVEL: Final = 4

_LOG_SCHEMA: Final = """
-- Feeds by number: the entries' feed index holds a small integer, not a 53-byte id.
CREATE TABLE IF NOT EXISTS feeds (no INTEGER PRIMARY KEY, author TEXT NOT NULL UNIQUE);
-- Every random-key index costs about one dirtied page per message at commit
-- once it outgrows a batch, so the two the log needs have short integer keys:
-- ``idkey`` (the first 8 bytes of the id's digest; lookups compare ``id`` too)
-- and (feed number, sequence). Long text keys made each index several times
-- larger and every group commit wrote one page per message per index.
-- A rowid table keyed by the log position (``pipeline << 40 | index``): as a
-- WITHOUT ROWID table a ~1 KB row is past the ~1,000 bytes an index-format
-- page keeps in place, and most rows spilled a 4 KB overflow page each (110 MB
-- of overflow pages for 88 MB of bodies, measured). A table page keeps up to
-- ~4 KB of a row in place.
-- ``seq`` numbers the entries of every pipeline together, in the order they
-- were sequenced: with several pipelines, the only record of which came first
-- within one millisecond (a replay follows it). NULL in logs before version 4.
CREATE TABLE IF NOT EXISTS entries (
    pos INTEGER PRIMARY KEY, idkey INTEGER NOT NULL, feed INTEGER NOT NULL,
    sequence INTEGER NOT NULL, received INTEGER NOT NULL, id TEXT NOT NULL,
    body BLOB NOT NULL, seq INTEGER);
CREATE INDEX IF NOT EXISTS entries_idkey ON entries (idkey);
-- Feed order, for feed reads and the heads (each feed's highest sequence).
CREATE UNIQUE INDEX IF NOT EXISTS entries_feed ON entries (feed, sequence);
CREATE TABLE IF NOT EXISTS tree (
    pipeline INTEGER NOT NULL, level INTEGER NOT NULL, idx INTEGER NOT NULL,
    hash BLOB NOT NULL, PRIMARY KEY (pipeline, level, idx)) WITHOUT ROWID;
"""
_META_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID"
)
#: Version 1 kept (id, author, sequence) as text keys; its rows move into version 2.
#: One transaction with the version it records, so that a crash leaves either the
#: version-1 file or one that ``_finish_log_migration`` completes.
_LOG_MIGRATE_1: Final = """
BEGIN;
ALTER TABLE entries RENAME TO entries_v1;
DROP INDEX IF EXISTS entries_id;
DROP INDEX IF EXISTS entries_feed;
DROP TABLE IF EXISTS heads;
DROP TABLE IF EXISTS leaves;
INSERT INTO meta (key, value) VALUES ('schema', '1');
COMMIT;
"""


#: A log position as one integer, ``pipeline << POS_BITS | index``: 2^40 entries a pipeline.
POS_BITS: Final = 40
_POS_MASK: Final = (1 << POS_BITS) - 1
_POS_SPLIT: Final = f"pos >> {POS_BITS}, pos & {_POS_MASK}"


def _pos(pipeline: int, index: int) -> int:
    return (pipeline << POS_BITS) | index


def _size_of(conn: sqlite3.Connection, pipeline: int) -> int:
    """Entries in ``pipeline``: one past the highest index (its positions are contiguous)."""
    base = _pos(pipeline, 0)
    (top,) = conn.execute(
        "SELECT MAX(pos) FROM entries WHERE pos >= ? AND pos < ?", (base, _pos(pipeline + 1, 0))
    ).fetchone()
    return 0 if top is None else int(top) - base + 1


def idkey(msg_id: str) -> int:
    """The log's short index key of a message id: its digest's first 8 bytes, signed.

    Not unique in principle, so every lookup by it also compares the id.
    Raises ``InvalidMessage`` when ``msg_id`` is not a ``%…sha256`` id.
    """
    return _key_of(msg_digest(msg_id))


def _key_of(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big", signed=True)


_STORE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS cursors (pipeline INTEGER PRIMARY KEY, next INTEGER NOT NULL);
-- Keyed by log position, so rows land in arrival order: a batch appends to the
-- table's last pages. Keyed by a random id, every row of a batch dirtied a page
-- of its own, which the commit then wrote (measured: benchmarks/README.md). The
-- id, author, sequence and body are the log's (``_MSG_SELECT`` joins them).
CREATE TABLE IF NOT EXISTS message_info (
    pos INTEGER PRIMARY KEY, received INTEGER NOT NULL, type TEXT, tx TEXT, chan TEXT);
CREATE INDEX IF NOT EXISTS message_info_chan ON message_info (chan, received, pos)
    WHERE chan IS NOT NULL;
-- Rowid tables, so a tx's updates (which come soon after its open) touch recent pages.
-- ``pos`` is the log position of the tx's tx/open: the key of its ``tx_messages``.
CREATE TABLE IF NOT EXISTS txs (
    id TEXT NOT NULL, status TEXT NOT NULL, opener TEXT NOT NULL,
    deadline INTEGER NOT NULL, finish TEXT NOT NULL, subject TEXT,
    opened INTEGER NOT NULL, closed INTEGER, block INTEGER,
    parties TEXT NOT NULL, finished_by TEXT NOT NULL, messages TEXT NOT NULL, pos INTEGER);
CREATE UNIQUE INDEX IF NOT EXISTS txs_id ON txs (id);
-- Only the txs no block holds yet (open, or closed and waiting for a block):
-- what a start-up reads. Sealing a tx drops its entry, so the index stays as
-- small as that set (it was (status, block) over every tx: a block moved each
-- of its txs' entries; 12% of a block's append, session 18).
CREATE INDEX IF NOT EXISTS txs_unsealed ON txs (status) WHERE block IS NULL;
-- Recipients by number and messages by log position: the inbox's unique index
-- is two small integers instead of two long ids (see ``entries``).
CREATE TABLE IF NOT EXISTS recipients (no INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS inbox (
    delivery INTEGER PRIMARY KEY AUTOINCREMENT, recipient INTEGER NOT NULL, pos INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS inbox_unique ON inbox (recipient, pos);
CREATE TABLE IF NOT EXISTS channels (id TEXT PRIMARY KEY, data TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY, id TEXT NOT NULL, body BLOB NOT NULL,
    records TEXT NOT NULL, logs TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS block_logs (
    pipeline INTEGER NOT NULL, size INTEGER NOT NULL, height INTEGER NOT NULL,
    PRIMARY KEY (pipeline, height)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS block_logs_size ON block_logs (pipeline, size);
CREATE TABLE IF NOT EXISTS identities (
    id TEXT PRIMARY KEY, record TEXT NOT NULL, search TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS forks (
    author TEXT NOT NULL, sequence INTEGER NOT NULL, kept BLOB NOT NULL, rejected BLOB NOT NULL,
    PRIMARY KEY (author, sequence, rejected)) WITHOUT ROWID;
-- Witnessing (chainmail.witnesses): the signatures that counted for a block's
-- stage, and the node's block/stage messages (``data``: the message's content).
CREATE TABLE IF NOT EXISTS block_signs (
    height INTEGER NOT NULL, stage TEXT NOT NULL, witness TEXT NOT NULL, id TEXT NOT NULL,
    PRIMARY KEY (height, stage, witness)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS block_stages (
    height INTEGER NOT NULL, stage TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (height, stage)) WITHOUT ROWID;
-- The node's anchor messages (chainmail.anchors), by the height of the block they anchor.
CREATE TABLE IF NOT EXISTS anchors (
    height INTEGER NOT NULL, id TEXT NOT NULL UNIQUE, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS anchors_height ON anchors (height);
"""

#: Each tx's messages, in its order (``n`` from 0, the tx/open), by log position:
#: one short row a message. A tx's ``messages`` column is no longer written
#: ('[]'): rewriting the whole id list with every message cost ~9 µs a message
#: at batches of 256 and grew with the tx (benchmarks/README.md, session 12).
#: Keyed by the tx/open's log position (``txs.pos``), not the tx id: the txs
#: still taking messages are the recently opened ones, so a group's rows land
#: on the last few pages. Keyed by the (random) tx id, a group of 160 messages
#: dirtied ~170 pages of this table, a third of all the pages its commits wrote
#: (benchmarks/README.md, session 13). Apart from ``_STORE_SCHEMA`` so that an
#: older store creates it in the same transaction that fills it
#: (``_migrate_tx_messages``).
_TX_MESSAGES_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS tx_messages (
    tx_pos INTEGER NOT NULL, n INTEGER NOT NULL, pos INTEGER NOT NULL,
    PRIMARY KEY (tx_pos, n)) WITHOUT ROWID"""
#: The txs of each party (by recipient number), newest first, for listing them:
#: short integer keys, so the index has few pages for a group to dirty (with the
#: party's id and the tx id as text it was the store's largest, session 13).
#: Apart from ``_STORE_SCHEMA`` for the same reason as ``tx_messages``.
_TX_PARTIES_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS tx_parties (
    party INTEGER NOT NULL, opened INTEGER NOT NULL, tx_pos INTEGER NOT NULL,
    PRIMARY KEY (party, opened, tx_pos)) WITHOUT ROWID"""

#: Blobs and what keeps them (``Store.put_blob``): ``blob_refs`` holds every
#: blob id a logged message names (``content.blob_refs``), for good;
#: ``blob_pending`` the blobs stored that none names yet, with their size and
#: when they were stored (ms), which ``sweep_blobs`` deletes past the node's
#: grace. Apart from ``_STORE_SCHEMA`` so that an older store creates them in
#: the transaction that fills them (``_migrate_blobs``).
_BLOBS_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS blob_refs (id TEXT PRIMARY KEY) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS blob_pending ("
    " id TEXT PRIMARY KEY, size INTEGER NOT NULL, stored INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS blob_pending_stored ON blob_pending (stored)",
)

#: SQLite page cache a connection may hold (negative: KiB, as PRAGMA cache_size takes it).
_WRITER_CACHE_KIB: Final = -65536
_READER_CACHE_KIB: Final = -8192


def _connect(path: Path, synchronous: str, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    # 64 MiB for a writer; 8 MiB for each reader thread's connection (the OS
    # caches the file anyway): with 64 each, a long run's RSS kept growing
    # as a dozen readers filled their caches (benchmarks/README, session 7).
    conn.execute(f"PRAGMA cache_size={_READER_CACHE_KIB if readonly else _WRITER_CACHE_KIB}")
    conn.execute("PRAGMA temp_store=MEMORY")
    if readonly:
        conn.execute("PRAGMA query_only=1")
    else:
        conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={_JOURNAL_SIZE_LIMIT}")
    return conn


class _Checkpointer:
    """Copies one database's WAL back into it on a thread of its own.

    ``committed`` (called by the writer after each commit) wakes it; it then
    runs a PASSIVE checkpoint at most every ``interval`` seconds. PASSIVE
    never blocks the writer or readers: it copies what is committed, and once
    everything is copied the writer's next transaction restarts the WAL from
    its beginning. Past ``_RESTART_FRAMES`` a RESTART follows, so that the WAL
    restarts under steady writes too. Durability is the writer's commit (the
    WAL), unchanged.
    """

    def __init__(self, path: Path, synchronous: str, interval: float) -> None:
        self._conn = _connect(path, synchronous)
        # A RESTART holds new writers back while it waits for the writer and for
        # readers still in the WAL: give up after a few ms (the WAL is merely
        # larger for a while) rather than stall ingest behind a slow reader.
        self._conn.execute(f"PRAGMA busy_timeout={_RESTART_WAIT_MS}")
        self._interval = interval
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"checkpoint-{path.name}", daemon=True
        )
        self._thread.start()

    def committed(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stopping.is_set():
                break
            self._wake.clear()
            try:
                _, frames, _ = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if frames > _RESTART_FRAMES:
                    # Under steady writes a PASSIVE round never finds the WAL
                    # all copied at the moment the writer begins, so it never
                    # restarts and grew past 300 MB. RESTART copies the little
                    # written since the round above (the writer waits for that
                    # only) and lets the next transaction start the WAL anew.
                    self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            except sqlite3.Error as exc:  # the writer's own bound still holds
                _log.warning("background checkpoint failed: %s", exc)
            # Commits during the pause are copied together by the next round.
            if self._stopping.wait(self._interval):
                break
        self._conn.close()

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join()


#: The directory under ``blobs`` that uploads are written in before their rename.
_BLOB_TMP: Final = "tmp"
#: Ids one ``IN (…)`` list carries at most (within SQLite's oldest limit of 999 parameters).
_IDS_PER_STATEMENT: Final = 512
#: Rows one multi-row INSERT carries at most, fewer where the connection's
#: parameter limit (999 before SQLite 3.32) allows fewer.
_ROWS_PER_INSERT: Final = 128


@functools.lru_cache(maxsize=256)
def _rows_sql(head: str, width: int, count: int, tail: str) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return f"{head} VALUES {', '.join([one] * count)}{tail}"


def _insert_rows(
    conn: sqlite3.Connection,
    head: str,
    width: int,
    rows: Sequence[Sequence[object]],
    tail: str = "",
) -> int:
    """``executemany`` of ``head VALUES (?, …) tail`` over ``rows``, many rows a statement.

    executemany steps each row with the GIL released and taken back, and
    under load each taking back can wait out another thread's switch
    interval; one statement of many rows releases it once. Chunks of 128,
    64, 32, … rows (a power of two within the connection's parameter
    limit), so a handful of statements stay prepared. Returns the rows
    changed, as ``executemany``'s ``rowcount`` would.
    """
    i, n, changed = 0, len(rows), 0
    count = _ROWS_PER_INSERT
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width
    if limit < 1:
        raise ValueError(f"a row of {width} columns exceeds the connection's parameter limit")
    while count > limit:
        count //= 2
    while i < n:
        while count > n - i:
            count //= 2
        sql = _rows_sql(head, width, count, tail)
        while n - i >= count:
            changed += conn.execute(sql, [v for row in rows[i : i + count] for v in row]).rowcount
            i += count
    return changed


def _in_list(values: Sequence[object]) -> tuple[str, list[object]]:
    """``(?, ?, …)`` for ``values`` and its parameters, padded with NULLs to a power of two.

    NULL matches nothing in ``IN``; the padding keeps the distinct statements
    few (a prepared statement a size), so they stay in the connection's cache.
    """
    size = 1
    while size < len(values):
        size *= 2
    return "(" + ", ".join("?" * size) + ")", [*values, *[None] * (size - len(values))]


@contextmanager
def _transaction(conn: sqlite3.Connection, error: type[Exception]) -> Iterator[None]:
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise error(f"cannot begin a write: {exc}") from exc
    try:
        yield
    except BaseException:
        _rollback(conn)
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(conn)
        raise error(f"commit failed: {exc}") from exc


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is left of a failed write, keeping the failure that ended it.

    After a full disk or an I/O error SQLite has often rolled the transaction
    back itself: a second ROLLBACK would fail ("no transaction is active") and
    hide the error that matters.
    """
    if conn.in_transaction:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


#: Tree nodes looked up by one statement (two parameters each).
_NODES_PER_READ: Final = 256


class _TreeHashes:
    """The complete-subtree hashes of one pipeline, as a ``merkle.HashStore``.

    The writing tree's ``put_many`` only buffers: the log flushes ``pending``
    inside the transaction that appends the entries the hashes cover, so the
    tree and the entries are always committed together. Reads see committed
    rows only, which is exactly the tree of the committed size.

    Only nodes at ``_TREE_MIN_LEVEL`` and above are rows. The trees recompute
    the ones below from ``leaves``: the leaf hash of each entry's id, read from
    ``entries`` (see ``_open_tree``).
    """

    def __init__(self, log: SqliteLog, pipeline: int) -> None:
        self._log = log
        self._pipeline = pipeline
        self.pending: list[tuple[int, int, int, bytes]] = []

    def size(self) -> int:
        return _size_of(self._log._reader_for_thread(), self._pipeline)

    def get_many(self, nodes: Sequence[tuple[int, int]]) -> list[bytes | None]:
        # One statement for a proof's O(log n) nodes: a statement costs the
        # reader about as much as recomputing a few nodes. (The planner scans
        # the pipeline for ``(level, idx) IN (VALUES …)``; it looks each row of
        # the joined VALUES up by the primary key.)
        conn = self._log._reader_for_thread()
        found: dict[tuple[int, int], bytes] = {}
        for first in range(0, len(nodes), _NODES_PER_READ):
            chunk = nodes[first : first + _NODES_PER_READ]
            values = ", ".join(["(?, ?)"] * len(chunk))
            rows = conn.execute(
                f"SELECT t.level, t.idx, t.hash FROM (VALUES {values}) AS v CROSS JOIN tree AS t"
                " ON t.pipeline = ? AND t.level = v.column1 AND t.idx = v.column2",
                (*(part for node in chunk for part in node), self._pipeline),
            ).fetchall()
            found.update(((level, index), bytes(digest)) for level, index, digest in rows)
        return [found.get((level, index)) for level, index in nodes]

    def leaves(self, start: int, end: int) -> list[bytes]:
        """The leaf hashes of entries ``[start, end)``, up to the first one not committed."""
        base = _pos(self._pipeline, start)
        rows = (
            self._log._reader_for_thread()
            .execute(
                "SELECT pos, id FROM entries WHERE pos >= ? AND pos < ? ORDER BY pos",
                (base, _pos(self._pipeline, end)),
            )
            .fetchall()
        )
        # Increasing positions from ``base`` on are contiguous iff the last is
        # ``base + len - 1``; were one missing, the later hashes would be misplaced.
        if rows and rows[-1][0] != base + len(rows) - 1:
            gap = next(offset for offset, row in enumerate(rows) if row[0] != base + offset)
            rows = rows[:gap]
        leaf_hash = merkle.leaf_hash
        return [leaf_hash(_digest(msg_id)) for _, msg_id in rows]

    def put_many(self, entries: Sequence[tuple[int, int, bytes]], size: int) -> None:
        p = self._pipeline
        self.pending.extend((p, level, index, digest) for level, index, digest in entries)


class SqliteLog:
    """The embedded log. ``append`` is called from one writer thread at a time."""

    def __init__(
        self,
        path: Path,
        *,
        pipelines: int = 1,
        synchronous: str = DEFAULT_SYNCHRONOUS,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
    ) -> None:
        self.path = path
        self.pipelines = pipelines
        self._synchronous = synchronous
        self._local = threading.local()
        self._lock = threading.Lock()
        conn: sqlite3.Connection | None = None
        try:
            conn = self._w = _connect(path, synchronous)
            self._open(pipelines)
            self._checkpointer = _Checkpointer(path, synchronous, checkpoint_interval)
        except (sqlite3.Error, LogError) as exc:
            # Every read of start-up inside: a damaged page anywhere is this one
            # line, not a traceback, and the connection is not left open.
            if conn is not None:
                conn.close()
            if isinstance(exc, LogError):
                raise
            raise LogError(f"cannot open log {path}: {exc}") from exc

    def _open(self, pipelines: int) -> None:
        """Create or migrate the schema, then read what the writer keeps in memory."""
        self._w.execute(_META_SCHEMA)
        _migrate_log(self._w)
        self._w.executescript(_LOG_SCHEMA)
        self._w.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (str(_LOG_VERSION),)
        )
        _finish_log_migration(self._w)
        row = self._w.execute("SELECT value FROM meta WHERE key='pipelines'").fetchone()
        if row is None:
            self._w.execute(
                "INSERT INTO meta (key, value) VALUES ('pipelines', ?)", (str(pipelines),)
            )
        elif str(row[0]) != str(pipelines):
            if not str(row[0]).isdigit():
                raise LogError(
                    f"log at {self.path}: its pipeline count is {row[0]!r}, not a number"
                )
            raise LogError(
                f"log at {self.path} has {row[0]} pipelines, configured {pipelines}: "
                "the pipeline count cannot change once messages are logged"
            )
        self._sizes = [_size_of(self._w, p) for p in range(pipelines)]
        #: The next entry's ``seq``: one past the highest, which is some pipeline's last entry.
        self._seq = 1 + max(
            (
                self._w.execute(
                    "SELECT COALESCE(seq, -1) FROM entries WHERE pos=?", (_pos(p, size - 1),)
                ).fetchone()[0]
                for p, size in enumerate(self._sizes)
                if size
            ),
            default=-1,
        )
        #: Feed numbers; as many as feeds, so bounded by identities, not messages.
        self._feeds: dict[str, int] = dict(self._w.execute("SELECT author, no FROM feeds"))
        # Each feed's last entry (SQLite takes a bare column from the MAX row).
        self._heads = {
            author: Head(seq, mid)
            for author, seq, mid in self._w.execute(
                "SELECT f.author, MAX(e.sequence), e.id FROM entries e"
                " JOIN feeds f ON f.no = e.feed GROUP BY e.feed"
            )
        }
        self._trees = [self._open_tree(p) for p in range(pipelines)]

    def _reader_for_thread(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, self._synchronous, readonly=True)
            self._local.conn = conn
        return conn

    def heads(self) -> dict[str, Head]:
        return dict(self._heads)

    def head(self, author: str) -> Head | None:
        return self._heads.get(author)

    def size(self, pipeline: int) -> int:
        return self._sizes[pipeline]

    def append(self, entries: Sequence[NewEntry]) -> list[tuple[int, int]]:
        positions: list[tuple[int, int]] = []
        rows: list[tuple[int, int, int, int, int, str, bytes, int]] = []
        seq = self._seq
        heads: dict[str, Head] = {}
        new_feeds: dict[str, int] = {}
        feeds = self._feeds
        next_feed = len(feeds) + 1
        leaves: dict[int, list[bytes]] = {}
        sizes = list(self._sizes)
        for entry in entries:
            author = entry.author
            prior = heads.get(author) or self._heads.get(author)
            expected = 1 if prior is None else prior.sequence + 1
            if entry.sequence != expected:
                raise LogError(
                    f"feed order: {author} expected sequence {expected}, got {entry.sequence}"
                )
            feed = feeds.get(author) or new_feeds.get(author)
            if feed is None:
                feed = new_feeds[author] = next_feed
                next_feed += 1
            pipeline = pipeline_of(author, self.pipelines)
            index = sizes[pipeline]
            sizes[pipeline] += 1
            digest = _digest(entry.id)
            rows.append(
                (
                    _pos(pipeline, index),
                    _key_of(digest),
                    feed,
                    entry.sequence,
                    entry.received,
                    entry.id,
                    entry.body,
                    seq,
                )
            )
            seq += 1
            heads[author] = head(entry.sequence, entry.id)
            leaves.setdefault(pipeline, []).append(merkle.leaf_hash(digest))
            positions.append((pipeline, index))
        if not rows:
            return positions
        with self._lock:
            try:
                with _transaction(self._w, LogError):
                    if new_feeds:
                        self._w.executemany(
                            "INSERT INTO feeds (no, author) VALUES (?, ?)",
                            [(no, author) for author, no in new_feeds.items()],
                        )
                    _insert_rows(
                        self._w,
                        "INSERT INTO entries (pos, idkey, feed, sequence, received, id, body, seq)",
                        8,
                        rows,
                    )
                    pending: list[tuple[int, int, int, bytes]] = []
                    for pipeline, hashes in leaves.items():
                        tree = self._trees[pipeline]
                        tree.append_many(hashes)
                        hashes_store = tree.store
                        assert isinstance(hashes_store, _TreeHashes)
                        pending.extend(hashes_store.pending)
                        hashes_store.pending = []
                    _insert_rows(
                        self._w,
                        "INSERT OR REPLACE INTO tree (pipeline, level, idx, hash)",
                        4,
                        pending,
                    )
            except sqlite3.Error as exc:
                self._reload_trees()
                raise LogError(f"append failed: {exc}") from exc
            except LogError:
                self._reload_trees()
                raise
            self._sizes = sizes
            self._seq = seq
            self._heads.update(heads)
            feeds.update(new_feeds)
        self._checkpointer.committed()
        return positions

    def _reload_trees(self) -> None:
        self._trees = [self._open_tree(p) for p in range(self.pipelines)]

    def _open_tree(self, pipeline: int) -> merkle.MerkleTree:
        """The tree of ``pipeline`` as committed, on this thread's reader connection."""
        hashes = _TreeHashes(self, pipeline)
        return merkle.MerkleTree(hashes, min_level=_TREE_MIN_LEVEL, leaves=hashes.leaves)

    def read(self, pipeline: int, start: int, limit: int) -> list[LogEntry]:
        if start > _POS_MASK:
            # Past any index a pipeline can hold. ``_pos`` ORs the index into the
            # pipeline's bits, so from 2^40 on it named some pipeline's first
            # entries (``GET /v1/firehose?pipeline=1&from=1099511627776``).
            return []
        rows = (
            self._reader_for_thread()
            .execute(
                "SELECT e.pos, e.id, f.author, e.sequence, e.received, e.body, e.seq FROM entries e"
                " JOIN feeds f ON f.no = e.feed WHERE e.pos >= ? AND e.pos < ?"
                " ORDER BY e.pos LIMIT ?",
                (_pos(pipeline, start), _pos(pipeline + 1, 0), limit),
            )
            .fetchall()
        )
        return [
            LogEntry(pipeline, r[0] & _POS_MASK, r[1], r[2], r[3], r[4], bytes(r[5]), r[6])
            for r in rows
        ]

    def locate(self, msg_id: str) -> tuple[int, int] | None:
        row = (
            self._reader_for_thread()
            .execute(
                f"SELECT {_POS_SPLIT} FROM entries WHERE idkey=? AND id=?",
                (_idkey_or_none(msg_id), msg_id),
            )
            .fetchone()
        )
        return None if row is None else (int(row[0]), int(row[1]))

    def get(self, pipeline: int, index: int) -> LogEntry | None:
        entries = self.read(pipeline, index, 1)
        return entries[0] if entries and entries[0].index == index else None

    def _tree(self, pipeline: int) -> merkle.MerkleTree:
        # Readers get their own view so a concurrent append cannot disturb a proof.
        return self._open_tree(pipeline)

    def root(self, pipeline: int, size: int) -> bytes:
        return self._tree(pipeline).root(size)

    def inclusion_proof(self, pipeline: int, index: int, size: int) -> list[bytes]:
        return self._tree(pipeline).inclusion_proof(index, size)

    def consistency_proof(self, pipeline: int, size1: int, size2: int) -> list[bytes]:
        return self._tree(pipeline).consistency_proof(size1, size2)

    def close(self) -> None:
        self._checkpointer.close()
        self._w.close()


_MSG_ID_LENGTH: Final = 52
_DIGEST_BYTES: Final = 32


def _digest(msg_id: str) -> bytes:
    # Ids reach the log from ``ssb.check``, which computed them: the exact
    # ``%<44 base64>.sha256`` shape is enough here, and decoding directly skips
    # the id cache, which every new id would only churn.
    # try/except, not contextlib.suppress: the context manager cost more than
    # the decoding (0.73 → 0.4 µs a call), once a logged message.
    if len(msg_id) == _MSG_ID_LENGTH and msg_id[0] == "%" and msg_id.endswith(".sha256"):
        try:
            digest = binascii.a2b_base64(msg_id[1:45], strict_mode=True)
        except binascii.Error:
            pass
        else:
            if len(digest) == _DIGEST_BYTES:
                return digest
    try:
        return msg_digest(msg_id)
    except InvalidMessage as exc:
        raise LogError(f"not a message id: {msg_id!r}") from exc


def _idkey_or_none(msg_id: str) -> int | None:
    """``idkey`` of a well-formed id; None (which matches no row) for anything else."""
    try:
        return idkey(msg_id)
    except InvalidMessage:
        return None


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def _log_version(conn: sqlite3.Connection) -> int | None:
    """The layout version recorded in ``meta``; None for a new or version-1 file.

    Raises ``LogError`` for a version this code does not know: a newer layout
    would be misread, not migrated.
    """
    row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    if row is None:
        return None
    try:
        version = int(row[0])
    except ValueError:
        version = -1
    if not 1 <= version <= _LOG_VERSION:
        raise LogError(f"log schema: expected a version from 1 to {_LOG_VERSION}, got {row[0]!r}")
    return version


def _migrate_log(conn: sqlite3.Connection) -> None:
    """Move a version-1 log's tables aside, before the current schema is created."""
    if _log_version(conn) is None and "author" in _columns(conn, "entries"):
        conn.executescript(_LOG_MIGRATE_1)


def _finish_log_migration(conn: sqlite3.Connection) -> None:
    """Bring an older log to the current layout: one transaction per version step.

    Version 1 → 2 copies the entries moved aside by ``_migrate_log``; 2 → 3
    deletes the tree rows below ``_TREE_MIN_LEVEL``, which the trees now
    recompute from the entries (the same hashes: roots and proofs are unchanged);
    3 → 4 adds ``entries.seq``, NULL for the entries already there.
    """
    if conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='entries_v1'"
    ).fetchone():
        _copy_v1_entries(conn)
    version = _log_version(conn)
    if version is not None and version < _LOG_PRUNED_TREE:
        with _transaction(conn, LogError):
            conn.execute("DELETE FROM tree WHERE level < ?", (_TREE_MIN_LEVEL,))
            conn.execute("UPDATE meta SET value=? WHERE key='schema'", (str(_LOG_PRUNED_TREE),))
        version = _LOG_PRUNED_TREE
    if version is not None and version < _LOG_SEQ:
        with _transaction(conn, LogError):
            if "seq" not in _columns(conn, "entries"):
                conn.execute("ALTER TABLE entries ADD COLUMN seq INTEGER")
            conn.execute("UPDATE meta SET value=? WHERE key='schema'", (str(_LOG_SEQ),))


def _copy_v1_entries(conn: sqlite3.Connection) -> None:
    conn.create_function("chainmail_idkey", 1, idkey, deterministic=True)
    with _transaction(conn, LogError):
        conn.execute(
            "INSERT OR IGNORE INTO feeds (author) SELECT author FROM entries_v1"
            " GROUP BY author ORDER BY MIN(received), author"
        )
        conn.execute(
            "INSERT INTO entries (pos, idkey, feed, sequence, received, id, body)"
            f" SELECT (v.pipeline << {POS_BITS}) | v.idx, chainmail_idkey(v.id), f.no,"
            " v.sequence, v.received,"
            " v.id, v.body FROM entries_v1 v JOIN feeds f ON f.author = v.author"
            " ORDER BY v.pipeline, v.idx"
        )
        conn.execute("DROP TABLE entries_v1")
        # Its tree rows are version 2's until the next step prunes them.
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', '2')")


def _tx_from_row(r: Sequence[Any]) -> TxRow:
    return TxRow(
        id=r[0],
        status=r[1],
        opener=r[2],
        deadline=r[3],
        finish=r[4],
        subject=r[5],
        opened=r[6],
        closed=r[7],
        block=r[8],
        parties=orjson.loads(r[9]),
        finished_by=orjson.loads(r[10]),
        # (n, id) pairs: an aggregate's order is not SQL's to promise, ``n`` is.
        messages=[mid for _, mid in sorted(orjson.loads(r[11]))],
    )


_TX_COLUMNS: Final = (
    "id, status, opener, deadline, finish, subject, opened, closed, block,"
    " parties, finished_by, messages"
)
#: A row's block, once set, is never cleared or changed by a later row of the tx;
#: its ``messages`` are in ``tx_messages``.
_TX_UPSERT: Final = ", ".join(
    [
        "block=COALESCE(txs.block, excluded.block)" if c == "block" else f"{c}=excluded.{c}"
        for c in _TX_COLUMNS.replace(" ", "").split(",")
        if c not in ("id", "messages")
    ]
    + ["pos=COALESCE(txs.pos, excluded.pos)"]
)


def _tx_messages_layout(conn: sqlite3.Connection) -> Literal["new", "json", "by_id", "by_pos"]:
    """How a store keeps each tx's messages: ``json`` (the ids in the tx's row,
    before session 12), ``by_id`` (``tx_messages`` keyed by tx id, session 12),
    ``by_pos`` (keyed by the tx/open's position: this code's); ``new`` if it has no txs."""
    columns = _columns(conn, "txs")
    if not columns:
        return "new"
    if "pos" in columns:
        return "by_pos"
    return "by_id" if _columns(conn, "tx_messages") else "json"


#: The columns ``_tx_from_row`` reads (on a reader, with the log attached): the
#: messages as (n, id) pairs from ``tx_messages``.
_TX_SELECT: Final = _TX_COLUMNS.replace(
    " messages",
    " (SELECT json_group_array(json_array(m.n, e.id)) FROM tx_messages m"
    " JOIN log.entries e ON e.pos = m.pos WHERE m.tx_pos = txs.pos)",
)
#: A stored message: the log's entry joined with the store's projection of it,
#: so only projected messages are seen (as when the store kept them whole).
_MSG_SELECT: Final = (
    f"SELECT e.id, e.pos >> {POS_BITS}, e.pos & {_POS_MASK}, f.author, e.sequence, e.received,"
    " m.type, m.tx, e.body, m.chan FROM log.entries e JOIN log.feeds f ON f.no = e.feed"
    " JOIN message_info m ON m.pos = e.pos"
)
_FEED_NO: Final = "(SELECT no FROM log.feeds WHERE author=?)"


def _tx_positions(
    conn: sqlite3.Connection, tx_ids: Iterable[str], known: dict[str, int]
) -> dict[str, int]:
    """The tx/open position of every one of ``tx_ids``: ``known``'s, else its row's.

    Raises ``StorageError`` for a tx with no row: its open was never projected.
    """
    missing = sorted({tx for tx in tx_ids if tx not in known})
    found = dict(known)
    for at in range(0, len(missing), _IDS_PER_STATEMENT):
        marks, params = _in_list(missing[at : at + _IDS_PER_STATEMENT])
        found.update(conn.execute(f"SELECT id, pos FROM txs WHERE id IN {marks}", params))
    for tx in missing:
        if found.get(tx) is None:
            raise StorageError(f"transaction {tx} has no row: its messages cannot be linked")
    return found


def _msg_from_row(r: Sequence[Any]) -> MessageRow:
    return MessageRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], bytes(r[8]), r[9])


#: ``blocks.records`` of a block whose records are read from its records blob only.
#: Rows written before session 16 hold them as JSON text too, and are read from there.
_RECORDS_IN_BLOB: Final = ""


class SqliteStore:
    """The embedded projection store."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = STORE_SYNCHRONOUS,
        log_path: Path | None = None,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
    ) -> None:
        """``log_path`` is the ``SqliteLog`` file whose entries this store projects
        (default: ``log.sqlite`` beside ``path``); readers attach it."""
        self.path = path
        self.log_path = log_path if log_path is not None else path.with_name("log.sqlite")
        self._synchronous = synchronous
        try:
            self._w = _connect(path, synchronous)
            tx_layout = _tx_messages_layout(self._w)
            old_parties = "tx" in _columns(self._w, "tx_parties")
            old_inbox = "msg_id" in _columns(self._w, "inbox")
            old_info = "pipeline" in _columns(self._w, "message_info")
            # Renamed by an earlier open whose migration did not commit.
            inbox_left = bool(_columns(self._w, "inbox_v1"))
            info_left = bool(_columns(self._w, "message_info_v1"))
            # Each rename and its index's drop commit together: apart, a crash
            # between them left the index on the renamed table, so the schema
            # below did not make it for the new one, and dropping the old table
            # took it away (replayed deliveries were then inserted twice). A
            # renamed table left over by such a crash gets its index dropped now.
            if old_inbox or inbox_left:
                with _transaction(self._w, StorageError):
                    if old_inbox:
                        self._w.execute("ALTER TABLE inbox RENAME TO inbox_v1")
                    self._w.execute("DROP INDEX IF EXISTS inbox_unique")
            if old_info or info_left:
                with _transaction(self._w, StorageError):
                    if old_info:
                        self._w.execute("ALTER TABLE message_info RENAME TO message_info_v1")
                    self._w.execute("DROP INDEX IF EXISTS message_info_chan")
            # Replaced by ``txs_unsealed`` (the schema creates it).
            self._w.execute("DROP INDEX IF EXISTS txs_open")
            self._w.executescript(_STORE_SCHEMA)
            if old_info or info_left:
                with _transaction(self._w, StorageError):
                    self._w.execute(
                        "INSERT INTO message_info (pos, received, type, tx, chan)"
                        f" SELECT (pipeline << {POS_BITS}) | idx, received, type, tx, chan"
                        " FROM message_info_v1 ORDER BY pipeline, idx"
                    )
                    self._w.execute("DROP TABLE message_info_v1")
            if old_inbox or inbox_left:
                self._migrate_inbox()
            if tx_layout in ("json", "by_id"):
                self._migrate_tx_messages(tx_layout)
            else:
                self._w.execute(_TX_MESSAGES_SCHEMA)
            if old_parties:
                self._migrate_tx_parties()
            else:
                self._w.execute(_TX_PARTIES_SCHEMA)
            self._migrate_identity_search()
            #: Blobs are files, apart from the projections, so the store can be
            #: dropped and rebuilt from the log without losing them.
            self.blobs_dir = path.parent / "blobs"
            self._drop_blob_temporaries()
            if not _columns(self._w, "blob_refs"):
                self._migrate_blobs()
            self._drop_missing_pending()
            #: Bytes of the pending blobs (``pending_blobs``), kept under ``_lock``.
            self._pending_bytes = int(
                self._w.execute("SELECT COALESCE(SUM(size), 0) FROM blob_pending").fetchone()[0]
            )
            #: Recipient numbers; as many as identities ever delivered to.
            self._recipients: dict[str, int] = dict(
                self._w.execute("SELECT id, no FROM recipients")
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open store {path}: {exc}") from exc
        self._new_recipients: dict[str, int] = {}
        self._local = threading.local()
        self._lock = threading.Lock()
        #: Blobs named by messages logged but not yet projected (``hold_blobs``):
        #: how many such messages each, under ``_held_lock``.
        self._held: Counter[str] = Counter()
        self._held_lock = threading.Lock()
        #: Uploads of each blob under way (``put_blob``), under ``_lock``.
        self._writing: Counter[str] = Counter()
        try:
            self._checkpointer = _Checkpointer(path, synchronous, checkpoint_interval)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open store {path}: {exc}") from exc

    @contextmanager
    def _migrating(self) -> Iterator[sqlite3.Connection]:
        """One migration transaction on the writer, with the log attached as ``log``
        and ``chainmail_idkey(id)`` to find a message's entry by its id."""
        w = self._w
        w.create_function("chainmail_idkey", 1, _idkey_or_none, deterministic=True)
        w.execute("ATTACH DATABASE ? AS log", (str(self.log_path),))
        try:
            with _transaction(w, StorageError):
                yield w
        finally:
            w.execute("DETACH DATABASE log")

    def _migrate_inbox(self) -> None:
        """Number the recipients of an older store's inbox and key its rows by log position.

        Delivery numbers and order are kept, and so is every unacknowledged entry.
        """
        with self._migrating() as w:
            w.execute(
                "INSERT OR IGNORE INTO recipients (id) SELECT recipient FROM inbox_v1"
                " GROUP BY recipient ORDER BY MIN(delivery)"
            )
            w.execute(
                "INSERT INTO inbox (delivery, recipient, pos)"
                " SELECT i.delivery, r.no, e.pos FROM inbox_v1 i"
                " JOIN recipients r ON r.id = i.recipient"
                " JOIN log.entries e ON e.idkey = chainmail_idkey(i.msg_id) AND e.id = i.msg_id"
                " ORDER BY i.delivery"
            )
            w.execute("DROP TABLE inbox_v1")

    def _migrate_identity_search(self) -> None:
        """Give an older store's identities ``registry.search_text``, not their JSON.

        That column held the record's JSON, lowercased, whose field names and
        ids matched most searches. Idempotent: a crash before its commit leaves
        rows the next open finds again.
        """
        old = self._w.execute(
            "SELECT id, record FROM identities WHERE search LIKE '{\"id\":%'"
        ).fetchall()
        if old:
            with _transaction(self._w, StorageError):
                self._w.executemany(
                    "UPDATE identities SET search=? WHERE id=?",
                    [(search_text(orjson.loads(record)), ident) for ident, record in old],
                )

    def _migrate_blobs(self) -> None:
        """Create the blob tables, filled from what is there: a store of an older
        version, or one being rebuilt beside the blobs of the store it replaces.

        Every blob a projected message names is referenced; every other blob
        file is pending from its modification time. A store rebuilt from the log
        projects no message before this, so all its files start pending, and
        the replay that follows (``Sequencer.catch_up``, before the node serves
        or sweeps) references those its messages name. One transaction: a crash
        before its commit leaves no tables, and the next open migrates again.
        """
        projected = self._w.execute("SELECT 1 FROM message_info LIMIT 1").fetchone()
        with self._migrating() if projected else _transaction(self._w, StorageError):
            w = self._w
            for statement in _BLOBS_SCHEMA:
                w.execute(statement)
            refs: set[str] = set()
            if projected:  # the log is attached
                kinds = sorted(content.BLOB_NAMING_TYPES)
                for (body,) in w.execute(
                    "SELECT e.body FROM message_info m JOIN log.entries e ON e.pos = m.pos"
                    f" WHERE m.type IN ({','.join('?' * len(kinds))})",
                    kinds,
                ):
                    refs.update(content.blob_refs(orjson.loads(body).get("content")))
            w.executemany("INSERT OR IGNORE INTO blob_refs (id) VALUES (?)", [(r,) for r in refs])
            w.executemany(
                "INSERT OR IGNORE INTO blob_pending (id, size, stored) VALUES (?, ?, ?)",
                [row for row in self._blob_files() if row[0] not in refs],
            )

    def _drop_blob_temporaries(self) -> None:
        """Delete what uploads cut short left (no other process writes here: the
        data directory is locked while a node runs)."""
        try:
            left = list((self.blobs_dir / _BLOB_TMP).iterdir())
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot list {self.blobs_dir / _BLOB_TMP}: {exc}") from exc
        for tmp in left:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                _log.error("cannot delete the unfinished upload %s: %s", tmp, exc)

    def _drop_missing_pending(self) -> None:
        """Forget the pending rows whose file is not there: ``put_blob`` commits its
        row before the file, so an upload a crash cut short left one, which counted
        against the pending limit for the whole grace with nothing behind it."""
        rows = self._w.execute("SELECT id FROM blob_pending").fetchall()
        gone = [(bid,) for (bid,) in rows if not self._blob_path(bid).exists()]
        if gone:
            with _transaction(self._w, StorageError):
                self._w.executemany("DELETE FROM blob_pending WHERE id=?", gone)

    def _blob_files(self) -> Iterator[tuple[str, int, int]]:
        """(id, size, modified ms) of every blob file (temporary files left out)."""
        try:
            shards = sorted(self.blobs_dir.iterdir())
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot list the blobs in {self.blobs_dir}: {exc}") from exc
        for shard in shards:
            if not shard.is_dir() or shard.name == _BLOB_TMP:
                continue
            for path in sorted(shard.iterdir()):
                try:
                    digest = bytes.fromhex(path.name)
                    bid = blob_id_from_digest(digest)
                except ValueError:
                    continue  # a temporary file, or not ours
                info = path.stat()
                yield bid, info.st_size, info.st_mtime_ns // 1_000_000

    def _migrate_tx_messages(self, layout: Literal["json", "by_id"]) -> None:
        """Key an older store's tx messages by the tx/open's log position.

        ``json``: each tx's ids were a JSON list in its row; ``by_id``: rows of
        ``tx_messages`` keyed by the tx id. One transaction numbers the txs,
        creates the table and fills it: a crash before its commit leaves the
        older layout, which the next open migrates again.
        """
        with self._migrating() as w:
            w.execute("ALTER TABLE txs ADD COLUMN pos INTEGER")
            # A tx's id is its tx/open's id, so its position is that entry's.
            w.execute(
                "UPDATE txs SET pos = (SELECT e.pos FROM log.entries e"
                " WHERE e.idkey = chainmail_idkey(txs.id) AND e.id = txs.id)"
            )
            if layout == "by_id":
                w.execute("ALTER TABLE tx_messages RENAME TO tx_messages_v2")
            w.execute(_TX_MESSAGES_SCHEMA)
            if layout == "by_id":
                w.execute(
                    "INSERT INTO tx_messages (tx_pos, n, pos)"
                    " SELECT t.pos, m.n, m.pos FROM tx_messages_v2 m JOIN txs t ON t.id = m.tx"
                )
                w.execute("DROP TABLE tx_messages_v2")
            else:
                w.execute(
                    "INSERT INTO tx_messages (tx_pos, n, pos)"
                    " SELECT t.pos, j.key, e.pos FROM txs t, json_each(t.messages) j"
                    " JOIN log.entries e ON e.idkey = chainmail_idkey(j.value) AND e.id = j.value"
                )
                w.execute("UPDATE txs SET messages='[]'")

    def _migrate_tx_parties(self) -> None:
        """Key an older store's ``tx_parties`` by recipient number and tx/open position.

        After ``_migrate_tx_messages`` (it numbers the txs); one transaction,
        as there.
        """
        with self._migrating() as w:
            w.execute("ALTER TABLE tx_parties RENAME TO tx_parties_v2")
            w.execute(_TX_PARTIES_SCHEMA)
            w.execute(
                "INSERT OR IGNORE INTO recipients (id) SELECT party FROM tx_parties_v2"
                " GROUP BY party ORDER BY MIN(opened), party"
            )
            w.execute(
                "INSERT INTO tx_parties (party, opened, tx_pos)"
                " SELECT r.no, p.opened, t.pos FROM tx_parties_v2 p"
                " JOIN recipients r ON r.id = p.party JOIN txs t ON t.id = p.tx"
            )
            w.execute("DROP TABLE tx_parties_v2")

    def _r(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, self._synchronous, readonly=True)
            try:
                conn.execute("ATTACH DATABASE ? AS log", (str(self.log_path),))
            except sqlite3.Error as exc:
                conn.close()
                raise StorageError(f"cannot attach the log {self.log_path}: {exc}") from exc
            self._local.conn = conn
        return conn

    def cursors(self) -> dict[int, int]:
        return {int(p): int(n) for p, n in self._r().execute("SELECT pipeline, next FROM cursors")}

    def apply(
        self, projection: Projection, *, wanted: Container[str] | None = None
    ) -> list[tuple[str, Delivery]]:
        w = self._w
        numbered: list[tuple[int, int, int]] = []
        whose: dict[int, str] = {}
        what: dict[int, MessageRow] = {}
        with self._lock:
            self._new_recipients = {}
            try:
                with (
                    self._synchronous_full() if projection.durable else nullcontext(),
                    _transaction(w, StorageError),
                ):
                    _insert_rows(
                        w,
                        "INSERT OR IGNORE INTO message_info (pos, received, type, tx, chan)",
                        5,
                        [
                            (_pos(m.pipeline, m.index), m.received, m.type, m.tx, m.chan)
                            for m in projection.messages
                        ],
                    )
                    # A tx/open is its tx's message 0: its position keys the tx's messages.
                    opened_at = {tx: _pos(p, i) for tx, n, p, i in projection.tx_messages if n == 0}
                    # An upsert updates the row in place; REPLACE would delete it and
                    # append it again, moving it (and its index entries) every time.
                    _insert_rows(
                        w,
                        f"INSERT INTO txs ({_TX_COLUMNS}, pos)",
                        13,
                        [
                            (
                                tx.id,
                                tx.status,
                                tx.opener,
                                tx.deadline,
                                tx.finish,
                                tx.subject,
                                tx.opened,
                                tx.closed,
                                tx.block,
                                orjson.dumps(tx.parties),
                                orjson.dumps(tx.finished_by),
                                "[]",
                                opened_at.get(tx.id),
                            )
                            for tx in projection.txs.values()
                        ],
                        f" ON CONFLICT (id) DO UPDATE SET {_TX_UPSERT}",
                    )
                    # A tx's parties never change: index them with its tx/open (whose
                    # id is the tx id), not again on every later message.
                    logged = {m.id for m in projection.messages}
                    parties = [tx for tx in projection.txs.values() if tx.id in logged]
                    at = _tx_positions(
                        w,
                        [*(link[0] for link in projection.tx_messages), *(tx.id for tx in parties)],
                        opened_at,
                    )
                    if projection.tx_messages:
                        _insert_rows(
                            w,
                            "INSERT OR IGNORE INTO tx_messages (tx_pos, n, pos)",
                            3,
                            [(at[tx], n, _pos(p, i)) for tx, n, p, i in projection.tx_messages],
                        )
                    _insert_rows(
                        w,
                        "INSERT OR IGNORE INTO tx_parties (party, opened, tx_pos)",
                        3,
                        [
                            (self._recipient(p), tx.opened, at[tx.id])
                            for tx in parties
                            for p in tx.parties
                        ],
                    )
                    if projection.inbox:
                        rows, whose, what = self._inbox_rows(projection)
                        # New deliveries get numbers above every one before.
                        (top,) = w.execute(
                            "SELECT COALESCE(MAX(delivery), 0) FROM inbox"
                        ).fetchone()
                        added = _insert_rows(
                            w, "INSERT OR IGNORE INTO inbox (recipient, pos)", 2, rows
                        )
                        # The entries this commit added (an entry already there is
                        # ignored above), for the node to push to live followers.
                        # When none was ignored (anything but a replay) AUTOINCREMENT
                        # numbered them one after another, in order: nothing is read
                        # back. An ignored row uses up a number too, so a replay's
                        # new entries are read back above the old highest.
                        if added:
                            (last,) = w.execute("SELECT last_insert_rowid()").fetchone()
                            first = int(last) - added + 1
                            numbered = (
                                [(first + i, no, pos) for i, (no, pos) in enumerate(rows)]
                                if added == len(rows)
                                else w.execute(
                                    "SELECT delivery, recipient, pos FROM inbox"
                                    " WHERE delivery>? ORDER BY delivery",
                                    (top,),
                                ).fetchall()
                            )
                    w.executemany(
                        "INSERT OR REPLACE INTO channels (id, data) VALUES (?, ?)",
                        [(cid, orjson.dumps(data)) for cid, data in projection.channels.items()],
                    )
                    for block in projection.blocks:
                        w.execute(
                            "INSERT OR IGNORE INTO blocks (height, id, body, records, logs)"
                            " VALUES (?,?,?,?,?)",
                            (
                                block.height,
                                block.id,
                                block.body,
                                # The records blob holds them (``_block_row``): a
                                # second copy here cost a block of ~700 txs a
                                # 590 KB row and its serialisation.
                                _RECORDS_IN_BLOB,
                                orjson.dumps(block.logs),
                            ),
                        )
                        w.executemany(
                            "INSERT OR IGNORE INTO block_logs (pipeline, size, height) VALUES (?,?,?)",
                            [
                                (int(c["pipeline"]), int(c["size"]), block.height)
                                for c in block.logs
                            ],
                        )
                        w.executemany(
                            "UPDATE txs SET block=?, status=?, closed=? WHERE id=? AND block IS NULL",
                            [
                                (block.height, r["status"], r["closed"], r["tx"])
                                for r in block.records
                            ],
                        )
                    w.executemany(
                        "INSERT OR REPLACE INTO identities (id, record, search) VALUES (?, ?, ?)",
                        [
                            (ident, orjson.dumps(rec), search_text(rec))
                            for ident, rec in projection.identities.items()
                        ],
                    )
                    if projection.block_signs:
                        w.executemany(
                            "INSERT OR IGNORE INTO block_signs (height, stage, witness, id)"
                            " VALUES (?, ?, ?, ?)",
                            projection.block_signs,
                        )
                    if projection.block_stages:
                        w.executemany(
                            "INSERT OR IGNORE INTO block_stages (height, stage, id, data)"
                            " VALUES (?, ?, ?, ?)",
                            [
                                (height, stage, mid, orjson.dumps(data))
                                for height, stage, mid, data in projection.block_stages
                            ],
                        )
                    if projection.anchors:
                        w.executemany(
                            "INSERT OR IGNORE INTO anchors (height, id, data) VALUES (?, ?, ?)",
                            [
                                (height, mid, orjson.dumps(data))
                                for height, mid, data in projection.anchors
                            ],
                        )
                    kept = self._reference(projection.blob_refs) if projection.blob_refs else 0
                    w.executemany(
                        "INSERT INTO cursors (pipeline, next) VALUES (?, ?) ON CONFLICT (pipeline)"
                        " DO UPDATE SET next=excluded.next WHERE excluded.next > cursors.next",
                        list(projection.cursors.items()),
                    )
            except sqlite3.Error as exc:
                raise StorageError(f"projection write failed: {exc}") from exc
            finally:
                new, self._new_recipients = self._new_recipients, {}
            self._recipients.update(new)
            if projection.blob_refs:
                self._pending_bytes -= kept
                # Committed as named: no hold is needed any more (``hold_blobs``).
                self.release_blobs(projection.blob_refs)
        self._checkpointer.committed()
        # After the commit: a follower that starts after this ``wanted`` check
        # reads these entries from the store instead.
        deliveries: list[tuple[str, Delivery]] = []
        for d, no, pos in numbered:
            recipient = whose[no]
            if wanted is None or recipient in wanted:
                msg = what[pos]
                deliveries.append((recipient, Delivery(int(d), msg.id, msg.body)))
        return deliveries

    def _reference(self, refs: list[str]) -> int:
        """Record ``refs`` as named, in the projection's transaction; bytes no longer pending."""
        w = self._w
        unique = list(dict.fromkeys(refs))
        w.executemany("INSERT OR IGNORE INTO blob_refs (id) VALUES (?)", [(r,) for r in unique])
        kept = 0
        for at in range(0, len(unique), _IDS_PER_STATEMENT):
            marks, params = _in_list(unique[at : at + _IDS_PER_STATEMENT])
            (size,) = w.execute(
                f"SELECT COALESCE(SUM(size), 0) FROM blob_pending WHERE id IN {marks}", params
            ).fetchone()
            w.execute(f"DELETE FROM blob_pending WHERE id IN {marks}", params)
            kept += int(size)
        return kept

    def _recipient(self, recipient: str) -> int:
        """The number of ``recipient``, given one on its first delivery (writer only)."""
        no = self._recipients.get(recipient) or self._new_recipients.get(recipient)
        if no is None:
            self._w.execute("INSERT OR IGNORE INTO recipients (id) VALUES (?)", (recipient,))
            (no,) = self._w.execute("SELECT no FROM recipients WHERE id=?", (recipient,)).fetchone()
            # Only after the commit: a rolled-back number must not be remembered.
            self._new_recipients[recipient] = no
        return int(no)

    def _inbox_rows(
        self, projection: Projection
    ) -> tuple[list[tuple[int, int]], dict[int, str], dict[int, MessageRow]]:
        """The inbox rows (recipient number, position) of ``projection``, with the
        recipient of each number and the message at each position."""
        # Every delivery of a projection is of a message in that same projection.
        what = {_pos(m.pipeline, m.index): m for m in projection.messages}
        where = {m.id: pos for pos, m in what.items()}
        rows: list[tuple[int, int]] = []
        whose: dict[int, str] = {}
        for recipient, msg_id in projection.inbox:
            position = where.get(msg_id)
            if position is None:  # pragma: no cover - a broken invariant
                raise StorageError(f"inbox entry for {msg_id}, which is not in its projection")
            no = self._recipient(recipient)
            whose[no] = recipient
            rows.append((no, position))
        return rows, whose, what

    def message(self, msg_id: str) -> MessageRow | None:
        r = (
            self._r()
            .execute(f"{_MSG_SELECT} WHERE e.idkey=? AND e.id=?", (_idkey_or_none(msg_id), msg_id))
            .fetchone()
        )
        return None if r is None else _msg_from_row(r)

    def message_at(self, author: str, sequence: int) -> MessageRow | None:
        r = (
            self._r()
            .execute(
                f"{_MSG_SELECT} WHERE e.feed={_FEED_NO} AND e.sequence=?",
                (author, sequence),
            )
            .fetchone()
        )
        return None if r is None else _msg_from_row(r)

    def feed(self, author: str, after: int, limit: int) -> list[MessageRow]:
        rows = (
            self._r()
            .execute(
                f"{_MSG_SELECT} WHERE e.feed={_FEED_NO} AND e.sequence>?"
                " ORDER BY e.sequence LIMIT ?",
                (author, after, limit),
            )
            .fetchall()
        )
        return [_msg_from_row(r) for r in rows]

    def tx(self, tx_id: str) -> TxRow | None:
        r = self._r().execute(f"SELECT {_TX_SELECT} FROM txs WHERE id=?", (tx_id,)).fetchone()
        return None if r is None else _tx_from_row(r)

    def open_txs(self) -> list[TxRow]:
        rows = (
            self._r()
            .execute(f"SELECT {_TX_SELECT} FROM txs WHERE status='open' AND block IS NULL")
            .fetchall()
        )
        return [_tx_from_row(r) for r in rows]

    def closed_unblocked_txs(self) -> list[TxRow]:
        rows = (
            self._r()
            .execute(
                f"SELECT {_TX_SELECT} FROM txs WHERE status!='open' AND block IS NULL"
                " ORDER BY closed, id"
            )
            .fetchall()
        )
        return [_tx_from_row(r) for r in rows]

    def list_txs(
        self,
        *,
        party: str | None,
        status: str | None,
        limit: int,
        before: int | None,
        after_tx: str | None = None,
    ) -> list[TxRow]:
        where: list[str] = []
        args: list[Any] = []
        if after_tx is not None:
            row = self._r().execute("SELECT opened FROM txs WHERE id=?", (after_tx,)).fetchone()
            if row is None:
                raise NotFound(f"no transaction {after_tx} to list after")
            # The listing's own order, so txs opened in the same millisecond (one
            # batch) are neither skipped nor listed twice.
            where.append("(opened<? OR (opened=? AND id>?))")
            args.extend((row[0], row[0], after_tx))
        if party is not None:
            where.append(
                "pos IN (SELECT tx_pos FROM tx_parties"
                " WHERE party=(SELECT no FROM recipients WHERE id=?))"
            )
            args.append(party)
        if status is not None:
            # An open tx is in no block: said, the index of unsealed txs serves it.
            where.append("status=? AND block IS NULL" if status == "open" else "status=?")
            args.append(status)
        if before is not None:
            where.append("opened<?")
            args.append(before)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = (
            self._r()
            .execute(
                f"SELECT {_TX_SELECT} FROM txs {clause} ORDER BY opened DESC, id LIMIT ?",
                (*args, limit),
            )
            .fetchall()
        )
        return [_tx_from_row(r) for r in rows]

    def channels(self) -> dict[str, dict[str, Any]]:
        return {
            cid: orjson.loads(data)
            for cid, data in self._r().execute("SELECT id, data FROM channels")
        }

    def channel_messages(self, chan: str, after: int, limit: int) -> list[MessageRow]:
        rows = (
            self._r()
            .execute(
                f"{_MSG_SELECT} WHERE m.chan=? ORDER BY m.received, m.pos LIMIT ? OFFSET ?",
                (chan, limit, after),
            )
            .fetchall()
        )
        return [_msg_from_row(r) for r in rows]

    def inbox(self, recipient: str, limit: int, after: int = 0) -> list[Delivery]:
        rows = (
            self._r()
            .execute(
                "SELECT i.delivery, e.id, e.body FROM inbox i"
                " JOIN log.entries e ON e.pos = i.pos"
                " WHERE i.recipient=(SELECT no FROM recipients WHERE id=?) AND i.delivery>?"
                " ORDER BY i.delivery LIMIT ?",
                (recipient, after, limit),
            )
            .fetchall()
        )
        return [Delivery(int(d), mid, bytes(body)) for d, mid, body in rows]

    def ack(self, recipient: str, ids: Sequence[str]) -> int:
        return self.ack_many([(recipient, ids)])[0]

    def ack_many(self, acks: Sequence[tuple[str, Sequence[str]]]) -> list[int]:
        # Each (recipient, ids) is looked up on the reader; all deletes share one
        # transaction, so many followers acking at once cost one commit. A
        # statement per chunk of ids, not per id: each statement gives up the
        # GIL once, and the writer's projection waits for the store while this holds it.
        try:
            reader = self._r()
            wanted: list[tuple[int, list[int]] | None] = []
            for recipient, ids in acks:
                row = reader.execute(
                    "SELECT no FROM recipients WHERE id=?", (recipient,)
                ).fetchone()
                wanted.append(None if row is None else (int(row[0]), self._positions(ids)))
        except sqlite3.Error as exc:
            raise StorageError(f"ack failed: {exc}") from exc
        counts = [0] * len(wanted)
        if not any(w is not None and w[1] for w in wanted):
            return counts
        with self._lock:
            try:
                with _transaction(self._w, StorageError):
                    for i, found in enumerate(wanted):
                        if found is None:
                            continue
                        no, positions = found
                        for at in range(0, len(positions), _IDS_PER_STATEMENT):
                            marks, params = _in_list(positions[at : at + _IDS_PER_STATEMENT])
                            counts[i] += self._w.execute(
                                f"DELETE FROM inbox WHERE recipient=? AND pos IN {marks}",
                                (no, *params),
                            ).rowcount
            except sqlite3.Error as exc:
                raise StorageError(f"ack failed: {exc}") from exc
        self._checkpointer.committed()
        return counts

    def _positions(self, ids: Sequence[str]) -> list[int]:
        """The log positions of those of ``ids`` that are logged, each once (reader thread)."""
        keyed: dict[int, set[str]] = {}
        for mid in set(ids):
            key = _idkey_or_none(mid)
            if key is not None:
                keyed.setdefault(key, set()).add(mid)
        keys = list(keyed)
        positions: list[int] = []
        for at in range(0, len(keys), _IDS_PER_STATEMENT):
            marks, params = _in_list(keys[at : at + _IDS_PER_STATEMENT])
            for key, mid, pos in self._r().execute(
                f"SELECT idkey, id, pos FROM log.entries WHERE idkey IN {marks}", params
            ):
                if mid in keyed[key]:
                    positions.append(int(pos))
        return positions

    def _blob_path(self, blob_id: str) -> Path:
        digest = blob_digest(blob_id).hex()
        return self.blobs_dir / digest[:2] / digest

    def put_blob(
        self,
        blob_id: str,
        data: bytes,
        *,
        stored: int | None = None,
        room: BlobRoom | None = None,
        durable: bool = True,
    ) -> bool:
        """Store bytes under their id, durably (temp file, fsync, rename); False if present.

        Pending from ``stored`` (ms; default: the wall clock) unless a logged
        message names it; storing a pending blob again restarts that.
        """
        path = self._blob_path(blob_id)
        when = stored if stored is not None else time.time_ns() // 1_000_000
        if path.exists():
            # Under the lock ``sweep_blobs`` deletes under: either it deleted the
            # file before this look (and the blob is written again below), or
            # the blob is pending from now and the sweep leaves it.
            with self._lock:
                if path.exists():
                    self._pend(blob_id, len(data), when)
                    return False
        # Pending before the file exists: a crash between its rename and this
        # bookkeeping would leave a file that no row counts and no sweep ever
        # deletes. A row whose file never came is harmless (the sweep finds
        # nothing to unlink). This also restarts a row left without its file (a
        # sweep stopped between the unlink and the delete): a sweep that still
        # saw it old would delete the file written below.
        with self._lock:
            self._pend(blob_id, len(data), when, room, durable=durable)
            # Concurrent uploads of one new blob each write it (the same bytes),
            # but only the first says it is new: the others found it under way.
            first = not self._writing[blob_id]
            self._writing[blob_id] += 1
        try:
            self._write_blob(path, data)
        except BaseException:
            with self._lock:
                self._writing -= Counter((blob_id,))
                if path.exists():
                    # In place though the write failed (the directory's fsync):
                    # pending all the same, counted and swept.
                    self._pend(blob_id, len(data), when)
                elif not self._writing[blob_id]:
                    # Nothing stored, and no other upload of it under way.
                    self._unpend(blob_id)
            raise
        with self._lock:
            self._writing -= Counter((blob_id,))
        return first

    def _unpend(self, blob_id: str) -> None:
        """Drop the pending row of a blob whose file is not there (under ``_lock``)."""
        w = self._w
        removed = 0
        try:
            with _transaction(w, StorageError):
                row = w.execute("SELECT size FROM blob_pending WHERE id=?", (blob_id,)).fetchone()
                if row is None or self._blob_path(blob_id).exists():
                    return
                w.execute("DELETE FROM blob_pending WHERE id=?", (blob_id,))
                removed = int(row[0])
        except sqlite3.Error as exc:
            raise StorageError(f"blob bookkeeping failed: {exc}") from exc
        self._pending_bytes -= removed

    def hold_blobs(self, blob_ids: Sequence[str]) -> None:
        with self._held_lock:
            self._held.update(blob_ids)

    def release_blobs(self, blob_ids: Sequence[str]) -> None:
        with self._held_lock:
            self._held -= Counter(blob_ids)  # ``-=`` drops the counts it takes to zero

    def _pend(
        self,
        blob_id: str,
        size: int,
        stored: int,
        room: BlobRoom | None = None,
        *,
        durable: bool = False,
    ) -> None:
        """Mark a stored blob pending from ``stored`` (or later, if it is already),
        unless a message names it (under ``_lock``). ``room`` may refuse a blob
        not counted yet: checked and counted in one step, so concurrent
        uploads cannot pass a limit together. ``durable``: committed to survive
        power loss, as the blob file will (no log can replay this row)."""
        w = self._w
        added = 0
        try:
            with (
                self._synchronous_full() if durable else nullcontext(),
                _transaction(w, StorageError),
            ):
                if w.execute("SELECT 1 FROM blob_refs WHERE id=?", (blob_id,)).fetchone():
                    return
                refreshed = w.execute(
                    "UPDATE blob_pending SET stored=MAX(stored, ?) WHERE id=?", (stored, blob_id)
                ).rowcount
                if not refreshed:
                    if room is not None:
                        oldest, count = w.execute(
                            "SELECT MIN(stored), COUNT(*) FROM blob_pending"
                        ).fetchone()
                        room(
                            size,
                            self._pending_bytes,
                            None if oldest is None else int(oldest),
                            int(count),
                        )
                    w.execute(
                        "INSERT INTO blob_pending (id, size, stored) VALUES (?, ?, ?)",
                        (blob_id, size, stored),
                    )
                    added = size
        except sqlite3.Error as exc:
            raise StorageError(f"blob bookkeeping failed: {exc}") from exc
        self._pending_bytes += added
        self._checkpointer.committed()

    def has_blob(self, blob_id: str) -> bool:
        return self._blob_path(blob_id).exists()

    def pending_blob_bytes(self) -> int:
        return self._pending_bytes

    def pending_blobs(self) -> tuple[int, int | None]:
        try:
            (oldest,) = self._r().execute("SELECT MIN(stored) FROM blob_pending").fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"blob read failed: {exc}") from exc
        return self._pending_bytes, None if oldest is None else int(oldest)

    def sweep_blobs(self, stored_before: int) -> tuple[int, int]:
        count = size = 0
        try:
            old = (
                self._r()
                .execute(
                    "SELECT id FROM blob_pending WHERE stored < ? ORDER BY stored", (stored_before,)
                )
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise StorageError(f"blob read failed: {exc}") from exc
        for (bid,) in old:
            # One at a time under the store's lock, the pending row checked again:
            # a message naming the blob, or the blob stored again, may have come
            # since the read above (both take this lock).
            with self._lock:
                w = self._w
                try:
                    row = w.execute(
                        "SELECT size FROM blob_pending WHERE id=? AND stored < ?",
                        (bid, stored_before),
                    ).fetchone()
                    if row is None:
                        continue
                    # Held: a message naming it is logged, or about to be, and
                    # not projected yet (``hold_blobs``). The hold is checked and
                    # the file deleted under one lock, so a message logged after
                    # this check finds the blob gone, never half-kept.
                    with self._held_lock:
                        if bid in self._held:
                            continue
                        try:
                            self._blob_path(bid).unlink()
                        except FileNotFoundError:
                            pass
                        except OSError as exc:
                            # Left pending (and counted): the next sweep tries it
                            # again, and the blobs after it are swept all the same.
                            _log.error("blob %s could not be swept: %s", bid, exc)
                            continue
                    with _transaction(w, StorageError):
                        w.execute("DELETE FROM blob_pending WHERE id=?", (bid,))
                except (sqlite3.Error, OSError) as exc:
                    raise StorageError(f"blob sweep failed at {bid}: {exc}") from exc
                self._pending_bytes -= int(row[0])
            count += 1
            size += int(row[0])
        if count:
            self._checkpointer.committed()
        return count, size

    def _write_blob(self, path: Path, data: bytes) -> None:
        # Written in the blobs' own temporary directory (the same file system, so
        # the rename is atomic), which the store empties when it opens: a crash
        # before the rename leaves nothing behind for good.
        tmp = self.blobs_dir / _BLOB_TMP / f"{path.name}.{os.getpid()}.{threading.get_ident()}"
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except OSError:
                # A full disk leaves a partial file: it would stay for good, as
                # no later write of the blob has the same temporary name.
                with suppress(OSError):
                    tmp.unlink()
                raise
            # The rename is durable only once the directory is synced: a block
            # naming this blob may be logged right after.
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StorageError(f"blob write failed: {exc}") from exc

    def get_blob(self, blob_id: str) -> bytes | None:
        try:
            return self._blob_path(blob_id).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"blob read failed: {exc}") from exc

    def open_blob(self, blob_id: str) -> BinaryIO | None:
        try:
            return self._blob_path(blob_id).open("rb")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"blob read failed: {exc}") from exc

    def _block_row(self, r: Sequence[Any]) -> BlockRow:
        height, body, records = int(r[0]), bytes(r[2]), r[3]
        logs = orjson.loads(r[4])
        if records != _RECORDS_IN_BLOB:
            return BlockRow(height, r[1], body, orjson.loads(records), logs)
        return BlockRow(
            height, r[1], body, None, logs, load=lambda: self._blob_records(height, body)
        )

    def _blob_records(self, height: int, body: bytes) -> list[dict[str, Any]]:
        """The records of the block at ``height`` (message ``body``), from its records blob.

        The blob is this store's own, written before the block was logged, so it
        is read as trusted (the strict parse is the verifier's, ``blocks.parse_records_blob``).
        """
        try:
            txs = orjson.loads(body)["content"]["txs"]
            records_id, count = str(txs["records"]), int(txs["count"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"block {height}: its message names no records blob") from exc
        data = self.get_blob(records_id)
        if data is None:
            if count == 0:
                return []
            raise StorageError(f"block {height}: its records blob {records_id} is missing")
        records: list[dict[str, Any]] = [orjson.loads(line) for line in data.splitlines()]
        if len(records) != count:
            raise StorageError(
                f"block {height}: its records blob holds {len(records)} records, not {count}"
            )
        return records

    def block(self, height: int) -> BlockRow | None:
        r = (
            self._r()
            .execute("SELECT height, id, body, records, logs FROM blocks WHERE height=?", (height,))
            .fetchone()
        )
        return None if r is None else self._block_row(r)

    def blocks(self, after: int, limit: int) -> list[BlockRow]:
        rows = (
            self._r()
            .execute(
                "SELECT height, id, body, records, logs FROM blocks WHERE height>? ORDER BY height LIMIT ?",
                (after, limit),
            )
            .fetchall()
        )
        return [self._block_row(r) for r in rows]

    def latest_block(self) -> BlockRow | None:
        r = (
            self._r()
            .execute(
                "SELECT height, id, body, records, logs FROM blocks ORDER BY height DESC LIMIT 1"
            )
            .fetchone()
        )
        return None if r is None else self._block_row(r)

    def block_stages(self, height: int) -> list[dict[str, Any]]:
        rows = (
            self._r()
            .execute("SELECT stage, id, data FROM block_stages WHERE height=?", (height,))
            .fetchall()
        )
        order = {stage: n for n, stage in enumerate(STAGES)}
        out = []
        for stage, mid, data in sorted(rows, key=lambda r: order.get(r[0], len(order))):
            content = orjson.loads(data)
            out.append(
                {
                    "stage": stage,
                    "id": mid,
                    "signers": content.get("signers", []),
                    "signs": content.get("signs", []),
                    "root": content.get("root"),
                }
            )
        return out

    def anchors(self, height: int) -> list[dict[str, Any]]:
        rows = self._r().execute(
            "SELECT id, data FROM anchors WHERE height=? ORDER BY rowid", (height,)
        )
        return [{"id": mid, **orjson.loads(data)} for mid, data in rows.fetchall()]

    def anchored(self, at_least: int) -> tuple[int, list[dict[str, Any]]] | None:
        row = (
            self._r()
            .execute("SELECT MIN(height) FROM anchors WHERE height >= ?", (at_least,))
            .fetchone()
        )
        if row is None or row[0] is None:
            return None
        return int(row[0]), self.anchors(int(row[0]))

    def latest_anchored(self) -> int | None:
        row = self._r().execute("SELECT MAX(height) FROM anchors").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def witnessing(self, window: int) -> list[tuple[int, str, int, dict[str, str]]]:
        r = self._r()
        top = r.execute("SELECT MAX(height) FROM blocks").fetchone()[0]
        if top is None:
            return []
        low = top - window
        recorded: dict[int, int] = dict(
            r.execute(
                "SELECT height, COUNT(*) FROM block_stages WHERE height > ? GROUP BY height",
                (low,),
            ).fetchall()
        )
        signs: dict[tuple[int, str], dict[str, str]] = {}
        for height, stage, witness, mid in r.execute(
            "SELECT height, stage, witness, id FROM block_signs WHERE height > ?", (low,)
        ):
            signs.setdefault((height, stage), {})[witness] = mid
        out = []
        for height, block_id in r.execute(
            "SELECT height, id FROM blocks WHERE height > ? ORDER BY height", (low,)
        ):
            done = recorded.get(height, 0)
            if done >= len(STAGES):
                continue
            out.append((height, block_id, done, signs.get((height, STAGES[done]), {})))
        return out

    def block_covering(self, pipeline: int, index: int) -> BlockRow | None:
        r = (
            self._r()
            .execute(
                "SELECT height FROM block_logs WHERE pipeline=? AND size>? ORDER BY size, height LIMIT 1",
                (pipeline, index),
            )
            .fetchone()
        )
        return None if r is None else self.block(int(r[0]))

    def identity_records(self, ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        conn = self._r()
        if ids is None:
            rows = conn.execute("SELECT record FROM identities").fetchall()
        else:
            rows = [
                r
                for i in ids
                if (r := conn.execute("SELECT record FROM identities WHERE id=?", (i,)).fetchone())
            ]
        return [orjson.loads(r[0]) for r in rows]

    def search_identities(self, text: str, limit: int, after: str = "") -> list[dict[str, Any]]:
        pattern = (
            "%"
            + text.casefold().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            + "%"
        )
        rows = (
            self._r()
            .execute(
                "SELECT record FROM identities WHERE id > ? AND search LIKE ? ESCAPE '\\'"
                " ORDER BY id LIMIT ?",
                (after, pattern, limit),
            )
            .fetchall()
        )
        return [orjson.loads(r[0]) for r in rows]

    @contextmanager
    def _synchronous_full(self) -> Iterator[None]:
        """Commits on the writer survive power loss meanwhile (the store's default is
        ``STORE_SYNCHRONOUS``: what the log can replay need not)."""
        self._w.execute("PRAGMA synchronous=FULL")
        try:
            yield
        finally:
            self._w.execute(f"PRAGMA synchronous={self._synchronous}")

    def record_fork(self, author: str, sequence: int, kept: bytes, rejected: bytes) -> None:
        with self._lock:
            try:
                # Evidence is in no log to replay it from: it survives power loss.
                with self._synchronous_full():
                    self._w.execute(
                        "INSERT OR IGNORE INTO forks (author, sequence, kept, rejected)"
                        " VALUES (?,?,?,?)",
                        (author, sequence, kept, rejected),
                    )
            except sqlite3.Error as exc:
                raise StorageError(f"fork evidence write failed: {exc}") from exc

    def has_fork(self, author: str, sequence: int) -> bool:
        row = (
            self._r()
            .execute(
                "SELECT 1 FROM forks WHERE author=? AND sequence=? LIMIT 1", (author, sequence)
            )
            .fetchone()
        )
        return row is not None

    def forks(self, author: str) -> list[tuple[int, bytes, bytes]]:
        return [
            (int(s), bytes(k), bytes(r))
            for s, k, r in self._r().execute(
                "SELECT sequence, kept, rejected FROM forks WHERE author=? ORDER BY sequence",
                (author,),
            )
        ]

    def close(self) -> None:
        self._checkpointer.close()
        self._w.close()
