"""SQLite files: a version-1 data directory opens migrated with nothing lost; the WAL is
copied back in the background; the log's Merkle trees, which keep only their upper levels
as rows, give the reference roots and proofs, also after a failed append or a migration.

The fixture ``tests/vectors/datadir-v1`` was written by the layout of commit
36b80e1 (text-keyed log indexes and inbox); see ``tests/vectors/README.md``.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainmail import merkle, ssb
from chainmail import sqlite as sqlite_module
from chainmail.errors import LogError, ProofError, RateLimited, StorageError
from chainmail.ids import blob_id, msg_digest
from chainmail.keys import Keypair
from chainmail.log import NewEntry
from chainmail.node import Node, NodeConfig
from chainmail.sequencer import Accepted, Sequencer
from chainmail.sqlite import _TREE_MIN_LEVEL, SqliteLog, SqliteStore, idkey
from chainmail.store import Delivery, Projection, TxRow
from support.feeds import Writer

FIXTURE = Path(__file__).parent.parent / "vectors" / "datadir-v1"
NODE = Keypair.from_seed(bytes(range(32)))
ALICE = Keypair.from_seed(bytes([1]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
NOW = 1_800_000_002_000


def _copy(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    return data


def _v1_rows(path: Path) -> list[tuple[int, int, str, str, int, bytes]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT pipeline, idx, id, author, sequence, body FROM entries ORDER BY idx"
        ).fetchall()


def test_log_keeps_every_entry_head_and_root(tmp_path: Path) -> None:
    data = _copy(tmp_path)
    before = _v1_rows(data / "log.sqlite")
    log = SqliteLog(data / "log.sqlite")
    try:
        entries = log.read(0, 0, 100)
        assert [(e.pipeline, e.index, e.id, e.author, e.sequence, e.body) for e in entries] == [
            (p, i, mid, author, seq, bytes(body)) for p, i, mid, author, seq, body in before
        ]
        last = {author: (seq, mid) for _, _, mid, author, seq, _ in before}
        assert {a: (h.sequence, h.id) for a, h in log.heads().items()} == last
        assert set(last) == {ALICE.id, BOB.id, NODE.id}
        for e in entries:
            assert log.locate(e.id) == (0, e.index)
        leaves = [merkle.leaf_hash(msg_digest(e.id)) for e in entries]
        assert log.root(0, len(entries)) == merkle.root(leaves)
    finally:
        log.close()
    with sqlite3.connect(data / "log.sqlite") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "entries_v1" not in tables
        (key,) = conn.execute("SELECT idkey FROM entries WHERE pos=0").fetchone()
        assert key == idkey(before[0][2])
        assert conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("4",)
        # Its tree rows were all below the stored levels: its 6 leaves are recomputed.
        assert conn.execute("SELECT COUNT(*) FROM tree").fetchone() == (0,)


def test_a_store_migration_renamed_but_not_committed_is_resumed(tmp_path: Path) -> None:
    """An open that renamed the older tables and then failed (or crashed) before
    the migration's commit: the next open finds them renamed and migrates them."""
    data = _copy(tmp_path)
    with sqlite3.connect(data / "store.sqlite") as conn:
        before = conn.execute("SELECT delivery, msg_id FROM inbox ORDER BY delivery").fetchall()
        (types,) = conn.execute("SELECT COUNT(*) FROM message_info").fetchone()
        conn.execute("ALTER TABLE inbox RENAME TO inbox_v1")
        conn.execute("DROP INDEX IF EXISTS inbox_unique")
        conn.execute("ALTER TABLE message_info RENAME TO message_info_v1")
        conn.execute("DROP INDEX IF EXISTS message_info_chan")
    log = SqliteLog(data / "log.sqlite")
    store = SqliteStore(data / "store.sqlite")
    try:
        got = [(d.delivery, d.id) for r in (ALICE.id, BOB.id) for d in store.inbox(r, 100)]
        assert sorted(got) == before
        (moved,) = store._w.execute("SELECT COUNT(*) FROM message_info").fetchone()
        assert moved == types > 0
        tables = {r[0] for r in store._w.execute("SELECT name FROM sqlite_master")}
        assert not tables & {"inbox_v1", "message_info_v1"}
    finally:
        store.close()
        log.close()


@pytest.mark.parametrize("renamed", ["inbox", "message_info"])
def test_a_crash_between_a_rename_and_its_index_drop_leaves_the_new_table_its_index(
    tmp_path: Path, renamed: str
) -> None:
    """Under the older code the rename and the index drop committed apart: a crash
    between them left the index on the renamed table, the schema then made none for
    the new table, and the migration dropped the old table and the index with it."""
    data = _copy(tmp_path)
    index = {"inbox": "inbox_unique", "message_info": "message_info_chan"}[renamed]
    with sqlite3.connect(data / "store.sqlite") as conn:
        conn.execute(f"ALTER TABLE {renamed} RENAME TO {renamed}_v1")  # and then the crash
    for _ in range(2):  # the migrating open, and the next one
        log = SqliteLog(data / "log.sqlite")
        store = SqliteStore(data / "store.sqlite")
        try:
            on = store._w.execute(
                "SELECT tbl_name FROM sqlite_master WHERE type='index' AND name=?", (index,)
            ).fetchall()
            assert on == [(renamed,)]
        finally:
            store.close()
            log.close()


def test_a_log_whose_pipeline_count_is_no_number_is_a_log_error(tmp_path: Path) -> None:
    SqliteLog(tmp_path / "log.sqlite").close()
    with sqlite3.connect(tmp_path / "log.sqlite") as conn:
        conn.execute("UPDATE meta SET value='x' WHERE key='pipelines'")
    with pytest.raises(LogError, match="pipeline count is 'x', not a number"):
        SqliteLog(tmp_path / "log.sqlite")


def _start_and_stop(data: Path) -> None:
    async def run() -> None:
        node = Node(NodeConfig(data_dir=data, workers=0, block_interval=3600.0))
        await node.start()
        await node.stop()

    asyncio.run(run())


@pytest.mark.parametrize("name", ["log.sqlite", "store.sqlite"])
def test_a_damaged_page_is_one_storage_error_and_leaves_the_data_dir_unlocked(
    tmp_path: Path, name: str
) -> None:
    """Each page of the file in turn overwritten with garbage: opening the node gives
    a chainmail error naming where (never a bare sqlite3 error), closes what it
    opened and frees the data directory's lock, so a corrected retry can open it."""
    data = _copy(tmp_path)
    (data / "node-secret.json").write_text(json.dumps(NODE.to_ssb_secret()))
    _start_and_stop(data)  # migrated
    path = data / name
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the file, none in its WAL
    conn.close()
    clean = path.read_bytes()
    pages = len(clean) // 4096
    refused = 0
    for page in range(1, pages):  # page 0 is the header: SQLite's own "not a database"
        damaged = bytearray(clean)
        damaged[page * 4096 : (page + 1) * 4096] = bytes([0xA5]) * 4096
        path.write_bytes(bytes(damaged))
        try:
            _start_and_stop(data)  # or a page nothing at start-up reads
        except (LogError, StorageError) as exc:
            refused += 1
            assert str(data) in str(exc), exc
        path.write_bytes(clean)
    assert refused > 0
    _start_and_stop(data)  # the lock was given back every time


def test_store_keeps_unacknowledged_deliveries_in_order(tmp_path: Path) -> None:
    data = _copy(tmp_path)
    with sqlite3.connect(data / "store.sqlite") as conn:
        before = conn.execute(
            "SELECT delivery, recipient, msg_id FROM inbox ORDER BY delivery"
        ).fetchall()
    assert before, "the fixture holds unacknowledged deliveries"
    log = SqliteLog(data / "log.sqlite")
    store = SqliteStore(data / "store.sqlite")
    try:
        for recipient in (ALICE.id, BOB.id):
            got = [(d.delivery, d.id) for d in store.inbox(recipient, 100)]
            assert got == [(d, mid) for d, r, mid in before if r == recipient]
        acked_id = next(mid for _, r, mid in before if r == BOB.id)
        assert store.ack(BOB.id, [acked_id]) == 1
        assert acked_id not in [d.id for d in store.inbox(BOB.id, 100)]
        # Several recipients in one write: each count its own; unknowns count 0.
        alices = [d.id for d in store.inbox(ALICE.id, 100)]
        bobs = [d.id for d in store.inbox(BOB.id, 100)]
        assert store.ack_many(
            [(ALICE.id, alices[:1]), ("@unknown", alices), (BOB.id, [*bobs, acked_id, "%nope"])]
        ) == [min(1, len(alices)), 0, len(bobs)]
        assert [d.id for d in store.inbox(ALICE.id, 100)] == alices[1:]
        assert store.inbox(BOB.id, 100) == []
        assert store.ack_many([]) == []
        message = store.message(acked_id)
        assert message is not None and message.author in (ALICE.id, BOB.id)
        assert store.latest_block() is not None
    finally:
        log.close()
        store.close()


def test_feeds_continue_after_the_migration(tmp_path: Path) -> None:
    data = _copy(tmp_path)
    log = SqliteLog(data / "log.sqlite")
    store = SqliteStore(data / "store.sqlite")
    try:
        seq = Sequencer(log, store, NODE, clock=lambda: NOW)
        head = log.head(ALICE.id)
        assert head is not None
        alice = Writer(ALICE, start=NOW)
        alice.state = ssb.FeedState(id=head.id, sequence=head.sequence)
        (tx,) = store.open_txs()
        (result,) = seq.process(
            [ssb.check(alice.sign({"type": "tx/note", "tx": tx.id, "data": {}}))]
        )
        seq.flush_projection()
        assert isinstance(result, Accepted) and result.index == log.size(0) - 1
        assert [d.id for d in store.inbox(BOB.id, 100)][-1] == result.id
        assert store.feed(ALICE.id, 0, 100)[-1].id == result.id
    finally:
        log.close()
        store.close()


def test_the_wal_is_copied_back_off_the_writer_thread(tmp_path: Path) -> None:
    """The background checkpointer backfills the database file; the writer never has to."""
    log = SqliteLog(tmp_path / "log.sqlite", checkpoint_interval=0.01)
    try:
        writer = Writer(ALICE, start=NOW)
        checked = [ssb.check(writer.sign({"type": "post", "text": "x" * 2000})) for _ in range(200)]
        size_before = (tmp_path / "log.sqlite").stat().st_size
        for c in checked:
            log.append([NewEntry(c.id, c.author, c.sequence, NOW, c.text.encode())])
        deadline = time.monotonic() + 10
        while (tmp_path / "log.sqlite").stat().st_size <= size_before + 200 * 2000:
            assert time.monotonic() < deadline, "nothing was checkpointed into the database"
            time.sleep(0.02)
    finally:
        log.close()
    reopened = SqliteLog(tmp_path / "log.sqlite")
    try:
        assert reopened.size(0) == 200
        assert reopened.head(ALICE.id) == reopened.heads()[ALICE.id]
    finally:
        reopened.close()


# --- the Merkle trees: rows from _TREE_MIN_LEVEL up, the rest recomputed from the entries ----

BLOCK = 1 << _TREE_MIN_LEVEL
#: Sizes around block boundaries, where the recomputed part of a proof changes shape.
EDGE_SIZES = sorted(
    {1, 2, 3}
    | {k * BLOCK + d for k in (1, 2, 3, 4, 8) for d in (-1, 0, 1)}
    | {5 * BLOCK + BLOCK // 2, 300}
)


def _made_up_id(n: int) -> str:
    digest = hashlib.sha256(n.to_bytes(8, "big")).digest()
    return f"%{base64.b64encode(digest).decode()}.sha256"


class Feeds:
    """Appends made-up entries round-robin over a few authors; keeps each pipeline's leaves."""

    def __init__(self, log: SqliteLog, authors: tuple[str, ...] = (ALICE.id, BOB.id)) -> None:
        self.log = log
        self.authors = authors
        self.sequences = dict.fromkeys(authors, 0)
        self.count = 0
        self.leaves: list[list[bytes]] = [[] for _ in range(log.pipelines)]

    def append(self, count: int) -> None:
        """One ``log.append`` of ``count`` entries; raises what it raises, recording nothing."""
        sequences = dict(self.sequences)
        entries = []
        for n in range(self.count, self.count + count):
            author = self.authors[n % len(self.authors)]
            sequences[author] += 1
            entries.append(NewEntry(_made_up_id(n), author, sequences[author], NOW, b"{}"))
        positions = self.log.append(entries)
        self.sequences = sequences
        self.count += count
        for (pipeline, index), entry in zip(positions, entries, strict=True):
            assert index == len(self.leaves[pipeline])
            self.leaves[pipeline].append(merkle.leaf_hash(msg_digest(entry.id)))


def _assert_reference_tree(log: SqliteLog, leaves: list[bytes], sizes: list[int]) -> None:
    """Every root, and every proof at ``sizes``, equal to ``merkle``'s list reference."""
    for n in range(1, len(leaves) + 1):
        assert log.root(0, n) == merkle.root(leaves[:n]), n
    for n in sizes:
        for i in range(n):
            assert log.inclusion_proof(0, i, n) == merkle.inclusion_proof(leaves, i, n), (i, n)
        for m in range(1, n + 1):
            assert log.consistency_proof(0, m, n) == merkle.consistency_proof(leaves, m, n)


def _tree_rows(path: Path) -> dict[int, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT level, COUNT(*) FROM tree GROUP BY level"))


def _stored_levels(size: int) -> dict[int, int]:
    """Complete subtrees per level from _TREE_MIN_LEVEL up: what ``tree`` should hold."""
    return {
        level: size >> level for level in range(_TREE_MIN_LEVEL, size.bit_length()) if size >> level
    }


def test_the_log_tree_gives_the_reference_roots_and_proofs(tmp_path: Path) -> None:
    log = SqliteLog(tmp_path / "log.sqlite")
    try:
        feeds = Feeds(log)
        for cut in (1, 30, 1, 33, 64, 5, 100, 66):
            feeds.append(cut)
        (leaves,) = feeds.leaves
        assert len(leaves) == 300
        _assert_reference_tree(log, leaves, EDGE_SIZES)
    finally:
        log.close()
    assert _tree_rows(tmp_path / "log.sqlite") == _stored_levels(300)
    reopened = SqliteLog(tmp_path / "log.sqlite")
    try:
        # The writer's frontier (here mid-block) is rebuilt from the rows and the entries.
        feeds.log = reopened
        feeds.append(BLOCK + 3)
        _assert_reference_tree(reopened, feeds.leaves[0], [300, len(feeds.leaves[0])])
    finally:
        reopened.close()


@pytest.fixture(scope="module")
def two_pipelines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SqliteLog, Feeds]]:
    log = SqliteLog(tmp_path_factory.mktemp("log") / "log.sqlite", pipelines=2)
    feeds = Feeds(log, (ALICE.id, BOB.id, NODE.id, Keypair.from_seed(bytes([3]) * 32).id))
    for cut in (700, 1, 37, 300, 2, 999):
        feeds.append(cut)
    assert all(len(leaves) > 500 for leaves in feeds.leaves)
    yield log, feeds
    log.close()


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_size_and_index_on_two_pipelines(
    two_pipelines: tuple[SqliteLog, Feeds], data: st.DataObject
) -> None:
    log, feeds = two_pipelines
    pipeline = data.draw(st.integers(0, 1), label="pipeline")
    leaves = feeds.leaves[pipeline]
    n = data.draw(st.integers(1, len(leaves)), label="size")
    last_block = (n - 1) // BLOCK * BLOCK
    # Indexes in the incomplete last block are where recomputation meets the border.
    i = data.draw(st.integers(last_block, n - 1) | st.integers(0, n - 1), label="index")
    m = data.draw(st.integers(1, n), label="size1")
    assert log.root(pipeline, n) == merkle.root(leaves[:n])
    assert log.inclusion_proof(pipeline, i, n) == merkle.inclusion_proof(leaves, i, n)
    assert log.consistency_proof(pipeline, m, n) == merkle.consistency_proof(leaves, m, n)


def test_a_failed_append_leaves_the_committed_tree(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    log = SqliteLog(path)
    try:
        feeds = Feeds(log)
        feeds.append(BLOCK - 3)
        with sqlite3.connect(path) as conn:
            conn.execute(
                "CREATE TRIGGER fail_tree BEFORE INSERT ON tree"
                " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
            )
        # The writer's tree had advanced past the block boundary when the commit failed.
        with pytest.raises(LogError, match=r"^append failed: disk on fire$"):
            feeds.append(10)
        assert log.size(0) == BLOCK - 3
        assert log.root(0, BLOCK - 3) == merkle.root(feeds.leaves[0])
        with pytest.raises(ProofError, match=r"size: expected at most"):
            log.root(0, BLOCK)
        feeds.append(2)  # within the block: no tree row, so the trigger never fires
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TRIGGER fail_tree")
        feeds.append(3 * BLOCK + 7)
        _assert_reference_tree(log, feeds.leaves[0], [BLOCK - 1, BLOCK, 2 * BLOCK + 5])
    finally:
        log.close()
    assert _tree_rows(path) == _stored_levels(len(feeds.leaves[0]))


def test_a_version_2_log_drops_its_lower_tree_rows(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    log = SqliteLog(path)
    feeds = Feeds(log)
    feeds.append(300)
    log.close()
    (leaves,) = feeds.leaves
    # Make it what version 2 wrote: every complete subtree above the leaves a row.
    full = merkle.MerkleTree()
    full.append_many(leaves)
    v2_rows = [
        (0, level, index, full.store.get_many([(level, index)])[0])
        for level in range(1, 9)
        for index in range(300 >> level)
    ]
    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT OR REPLACE INTO tree VALUES (?, ?, ?, ?)", v2_rows)
        conn.execute("UPDATE meta SET value='2' WHERE key='schema'")
    assert sum(_tree_rows(path).values()) == len(v2_rows) == 150 + 75 + 37 + 18 + 9 + 4 + 2 + 1

    migrated = SqliteLog(path)
    try:
        _assert_reference_tree(migrated, leaves, [31, 32, 33, 300])
        feeds.log = migrated
        feeds.append(50)
        assert migrated.root(0, 350) == merkle.root(feeds.leaves[0])
    finally:
        migrated.close()
    assert _tree_rows(path) == _stored_levels(350)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("4",)


def test_a_log_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    SqliteLog(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value='5' WHERE key='schema'")
    with pytest.raises(LogError, match=r"^log schema: expected a version from 1 to 4, got '5'$"):
        SqliteLog(path)


def test_a_version_3_log_gains_seq_and_numbers_new_entries_after_its_old_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.sqlite"
    alice, bob = Writer(ALICE), Writer(BOB)

    def entry(w: Writer, received: int) -> NewEntry:
        c = ssb.check(w.sign({"type": "post"}))
        assert isinstance(c, ssb.Checked)
        return NewEntry(c.id, c.author, c.sequence, received, c.text.encode())

    log = SqliteLog(path)
    log.append([entry(alice, 1), entry(bob, 1)])
    assert [e.seq for e in log.read(0, 0, 10)] == [0, 1]
    log.close()
    with sqlite3.connect(path) as conn:  # as version 3 wrote it: no seq
        conn.execute("ALTER TABLE entries DROP COLUMN seq")
        conn.execute("UPDATE meta SET value='3' WHERE key='schema'")
    log = SqliteLog(path)
    try:
        assert [e.seq for e in log.read(0, 0, 10)] == [None, None]
        log.append([entry(bob, 2), entry(alice, 2)])
        assert [e.seq for e in log.read(0, 0, 10)] == [None, None, 0, 1]
    finally:
        log.close()
    log = SqliteLog(path)  # and on from the highest after a restart
    try:
        log.append([entry(alice, 3)])
        assert log.read(0, 4, 1)[0].seq == 2
    finally:
        log.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("4",)


def test_the_node_logs_at_full_and_projects_at_normal_durability(tmp_path: Path) -> None:
    # The log is the source of truth (FULL: survives power loss); the store is
    # rebuilt from it, so NORMAL; fork evidence, in no log, commits at FULL.
    from chainmail.node import Node, NodeConfig

    node = Node(NodeConfig(data_dir=tmp_path / "node"))
    try:
        log, store = node.log, node.store
        assert isinstance(log, SqliteLog) and isinstance(store, SqliteStore)
        (log_level,) = log._w.execute("PRAGMA synchronous").fetchone()
        (store_level,) = store._w.execute("PRAGMA synchronous").fetchone()
        assert (log_level, store_level) == (2, 1)  # FULL, NORMAL
        levels: list[int] = []
        store._w.set_trace_callback(
            lambda sql: (
                levels.append(store._w.execute("PRAGMA synchronous").fetchone()[0])
                if sql.startswith("INSERT OR IGNORE INTO forks")
                else None
            )
        )
        store.record_fork("@a", 1, b"kept", b"rejected")
        store._w.set_trace_callback(None)
        assert levels == [2]
        assert store.has_fork("@a", 1)
        assert store._w.execute("PRAGMA synchronous").fetchone() == (1,)
    finally:
        node.log.close()
        node.store.close()


def test_a_tx_row_written_again_never_loses_its_block(tmp_path: Path) -> None:
    # Sealed is final: a later row of the tx (a replay, a stale snapshot) may
    # rewrite its other fields but not clear or change the block it is in.
    SqliteLog(tmp_path / "log.sqlite").close()  # the log a store projects, which reads join
    store = SqliteStore(tmp_path / "store.sqlite")
    try:

        def row(block: int | None, status: str = "finished") -> TxRow:
            return TxRow(
                id="%tx",
                status=status,
                parties=["@a", "@b"],
                opener="@a",
                deadline=10,
                finish="any",
                subject=None,
                opened=1,
                closed=5,
                finished_by=["@b"],
                messages=["%tx", "%finish"],
                block=block,
            )

        store.apply(Projection(txs={"%tx": row(block=1)}))
        store.apply(Projection(txs={"%tx": row(block=None)}))
        stored = store.tx("%tx")
        assert stored is not None and stored.block == 1 and stored.status == "finished"
        store.apply(Projection(txs={"%tx": row(block=2)}))
        assert store.tx("%tx").block == 1  # type: ignore[union-attr]
    finally:
        store.close()


def test_apply_returns_the_entries_it_added_numbered_as_the_inbox_numbers_them(
    tmp_path: Path,
) -> None:
    # The new deliveries are numbered without reading them back when every row
    # was new, and read back when some were there already (a replay). Both
    # must agree with the inbox, also after the highest delivery was acked.
    log = SqliteLog(tmp_path / "log.sqlite")
    store = SqliteStore(tmp_path / "store.sqlite")
    projected: list[tuple[Projection, list[tuple[str, Delivery]]]] = []
    seq = Sequencer(
        log, store, NODE, clock=lambda: NOW, on_projected=lambda p, d: projected.append((p, d))
    )
    alice, bob, carol = Writer(ALICE), Writer(BOB), Writer()
    everyone = (ALICE.id, BOB.id, carol.id)

    def inbox() -> set[tuple[str, int, str]]:
        return {(who, d.delivery, d.id) for who in everyone for d in store.inbox(who, 100)}

    def entries(added: list[tuple[str, Delivery]]) -> set[tuple[str, int, str]]:
        return {(who, d.delivery, d.id) for who, d in added}

    def trade(text: str) -> tuple[Projection, list[tuple[str, Delivery]]]:
        projected.clear()
        opened = alice.sign(
            {"type": "tx/open", "parties": list(everyone), "deadline": NOW + 60_000}
        )
        note = bob.sign({"type": "tx/note", "tx": ssb.message_id(opened), "data": {"t": text}})
        results = seq.process([ssb.check(opened), ssb.check(note)])
        assert all(isinstance(r, Accepted) for r in results), results
        seq.flush_projection()
        (one,) = projected
        return one

    try:
        projection, first = trade("one")
        # The open to bob and carol, the note to alice and carol: numbered in order.
        assert len(first) == 4 and entries(first) == inbox()
        assert [d.delivery for _, d in first] == sorted({d.delivery for _, d in first})
        who, top = max(first, key=lambda e: e[1].delivery)
        assert store.ack(who, [top.id]) == 1
        _, second = trade("two")
        assert min(d.delivery for _, d in second) > top.delivery
        assert entries(first) - {(who, top.delivery, top.id)} | entries(second) == inbox()
        # The first projection again: all its entries are there but the acked one,
        # which alone comes back, under a number above every one used before.
        (again,) = store.apply(projection)
        assert again[0] == who and again[1].id == top.id
        assert again[1].delivery > max(d.delivery for _, d in second)
        assert (who, again[1].delivery, top.id) in inbox()
        assert store.apply(projection) == []
        # Two entries acked apart (not neighbours): a replay adds both back, and
        # says so, although the ignored row between them used up a number.
        _, third = trade("three")
        third_entries = sorted(third, key=lambda e: e[1].delivery)
        gone = [third_entries[0], third_entries[2]]
        for who_, d in gone:
            assert store.ack(who_, [d.id]) == 1
        back = store.apply(projected[-1][0])
        assert {(w_, d.id) for w_, d in back} == {(w_, d.id) for w_, d in gone}
        assert {(w_, d.delivery, d.id) for w_, d in back} <= inbox()
    finally:
        log.close()
        store.close()


def test_the_sequencer_hears_only_of_the_entries_of_wanted_recipients(tmp_path: Path) -> None:
    # The node passes the recipients with a live inbox stream: the others'
    # entries are written to the inbox as always, but built into no Delivery.
    log = SqliteLog(tmp_path / "log.sqlite")
    store = SqliteStore(tmp_path / "store.sqlite")
    heard: list[list[tuple[str, Delivery]]] = []
    wanted: set[str] = {BOB.id}
    seq = Sequencer(
        log,
        store,
        NODE,
        clock=lambda: NOW,
        on_projected=lambda _, d: heard.append(d),
        deliveries_for=wanted,
    )
    alice, bob, carol = Writer(ALICE), Writer(BOB), Writer()
    try:
        opened = alice.sign(
            {"type": "tx/open", "parties": [ALICE.id, BOB.id, carol.id], "deadline": NOW + 60_000}
        )
        note = bob.sign({"type": "tx/note", "tx": ssb.message_id(opened), "data": {}})
        assert all(isinstance(r, Accepted) for r in seq.process([ssb.check(opened)]))
        seq.flush_projection()
        wanted.add(ALICE.id)  # a stream opened in between: heard of from now on
        assert all(isinstance(r, Accepted) for r in seq.process([ssb.check(note)]))
        seq.flush_projection()
        assert [[(who, d.id) for who, d in h] for h in heard] == [
            [(BOB.id, ssb.message_id(opened))],
            [(ALICE.id, ssb.message_id(note))],
        ]
        # Everyone's inbox holds their entries all the same.
        assert [d.id for d in store.inbox(carol.id, 10)] == [
            ssb.message_id(opened),
            ssb.message_id(note),
        ]
    finally:
        log.close()
        store.close()


def test_acks_of_many_ids_are_counted_across_statements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ids go to the store a chunk a statement; a small chunk makes five of eleven.
    monkeypatch.setattr(sqlite_module, "_IDS_PER_STATEMENT", 2)
    log = SqliteLog(tmp_path / "log.sqlite")
    store = SqliteStore(tmp_path / "store.sqlite")
    seq = Sequencer(log, store, NODE, clock=lambda: NOW)
    alice = Writer(ALICE)
    try:
        opened = alice.sign({"type": "tx/open", "parties": [ALICE.id, BOB.id], "deadline": NOW + 1})
        notes = [
            alice.sign({"type": "tx/note", "tx": ssb.message_id(opened), "data": {"n": n}})
            for n in range(8)
        ]
        assert all(
            isinstance(r, Accepted) for r in seq.process([ssb.check(m) for m in [opened, *notes]])
        )
        seq.flush_projection()
        delivered = [d.id for d in store.inbox(BOB.id, 100)]
        assert len(delivered) == 9
        unknown = ["%" + "A" * 43 + "=.sha256", "not an id"]
        assert store.ack_many([(BOB.id, [*delivered[:7], *delivered[:3], *unknown])]) == [7]
        assert [d.id for d in store.inbox(BOB.id, 100)] == delivered[7:]
        assert store.ack(BOB.id, delivered) == 2
    finally:
        log.close()
        store.close()


def test_the_bytes_and_null_adapters_bind_exactly_what_sqlite3_would() -> None:
    """``chainmail.sqlite`` registers identity adapters for bytes and None (a fast
    path, process-wide): blobs stay blobs, None stays NULL, subclasses and other
    types bind as before."""

    class Sub(bytes):
        pass

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (v)")
    values: list[object] = [b"\x00\xffbody", b"", None, Sub(b"sub"), bytearray(b"ba"), "s", 7]
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(v,) for v in values])
    rows = conn.execute("SELECT v, typeof(v) FROM t ORDER BY rowid").fetchall()
    assert rows == [
        (b"\x00\xffbody", "blob"),
        (b"", "blob"),
        (None, "null"),
        (b"sub", "blob"),
        (b"ba", "blob"),
        ("s", "text"),
        (7, "integer"),
    ]
    assert sqlite3.adapters[(bytes, sqlite3.PrepareProtocol)] is bytes


def test_block_records_are_read_from_their_blob_only_when_asked_for(tmp_path: Path) -> None:
    # The blocks table keeps no second copy of the records (a block of ~700 txs
    # is ~600 KB of them): they are read from the block's records blob, and only
    # by a caller that uses them. A row of an older store, with the records in
    # the table, still reads.
    log = SqliteLog(tmp_path / "log.sqlite")
    store = SqliteStore(tmp_path / "store.sqlite")
    seq = Sequencer(log, store, NODE, clock=lambda: NOW)
    alice, bob = Writer(ALICE), Writer(BOB)
    try:
        opened = alice.sign(
            {"type": "tx/open", "parties": [ALICE.id, BOB.id], "deadline": NOW + 60_000}
        )
        tx = ssb.message_id(opened)
        finishes = [w.sign({"type": "tx/finish", "tx": tx}) for w in (alice, bob)]
        results = seq.process([ssb.check(m) for m in (opened, *finishes)])
        assert all(isinstance(r, Accepted) for r in results), results
        assert seq.build_block() is not None
        (stored,) = store._w.execute("SELECT records FROM blocks WHERE height=1").fetchall()
        assert stored == ("",)
        block = store.block(1)
        assert block is not None
        assert [r["tx"] for r in block.records] == [tx]
        assert block.records[0]["status"] == "finished"
        assert store.latest_block() == block and store.blocks(0, 10) == [block]

        records_id = orjson.loads(block.body)["content"]["txs"]["records"]
        blob = store.get_blob(records_id)
        assert blob is not None
        store._blob_path(records_id).unlink()
        covering = store.block_covering(0, 0)  # a message's proof needs no records
        assert covering is not None and covering.height == 1 and covering.logs == block.logs
        with pytest.raises(StorageError, match=r"records blob .* is missing"):
            _ = covering.records

        # As rows were written before: the records as JSON text in the table.
        store._w.execute("UPDATE blocks SET records=? WHERE height=1", (orjson.dumps([{"a": 1}]),))
        store._w.commit()
        old = store.block(1)
        assert old is not None and old.records == [{"a": 1}]
    finally:
        log.close()
        store.close()


def test_identities_are_searched_by_their_names_also_in_an_older_store(tmp_path: Path) -> None:
    """The search column held each record's JSON, lowercased: a search for a
    field name ("routes") or an id matched every identity, and a name with a
    quote was JSON-escaped out of reach. An older store's rows get the names."""
    from chainmail.registry import Registry

    registry = Registry()
    claims = {
        ALICE.id: {"type": "about", "about": ALICE.id, "name": 'A "Q"'},
        BOB.id: {"type": "about", "about": BOB.id, "routes": []},
    }
    for n, (author, claim) in enumerate(claims.items()):
        registry.apply(_made_up_id(n), author, claim, now=NOW)
    records = {i: registry.record(i) for i in (ALICE.id, BOB.id)}
    path = tmp_path / "store.sqlite"
    store = SqliteStore(path)
    try:
        store.apply(Projection(identities={i: r for i, r in records.items() if r is not None}))
    finally:
        store.close()
    with sqlite3.connect(path) as conn:  # as an older store wrote it
        conn.executemany(
            "UPDATE identities SET search=? WHERE id=?",
            [(orjson.dumps(r).decode().lower(), i) for i, r in records.items()],
        )
    for _ in range(2):  # migrated on open, and still right on the next
        store = SqliteStore(path)
        try:
            assert [r["id"] for r in store.search_identities('a "q', 10)] == [ALICE.id]
            assert store.search_identities("routes", 10) == []
            assert store.search_identities(BOB.id.lower(), 10) == []
        finally:
            store.close()


def _run_store_script(script: str, data: Path) -> subprocess.CompletedProcess[str]:
    """``script`` in a Python process of its own, given ``data`` as its argument: for
    what only another process shows (a file-size limit, a process killed mid-write)."""
    return subprocess.run(
        [sys.executable, "-c", script, str(data)], capture_output=True, text=True, timeout=60
    )


_FULL_DISK_BLOB = """
import resource, signal, sys
from pathlib import Path
from chainmail.errors import StorageError
from chainmail.ids import blob_id
from chainmail.sqlite import SqliteStore

store = SqliteStore(Path(sys.argv[1]) / "store.sqlite")
# No room past 256 KiB in any file: the store's bookkeeping fits, a larger blob's
# write fails (EFBIG), as on a full disk.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
data = b"x" * 1_000_000
try:
    store.put_blob(blob_id(data), data)
except StorageError as exc:
    print("refused:", exc)
"""


def test_a_blob_write_that_fails_leaves_no_partial_file_behind(tmp_path: Path) -> None:
    done = _run_store_script(_FULL_DISK_BLOB, tmp_path)
    assert done.stdout.startswith("refused: blob write failed"), (done.stdout, done.stderr)
    left = [p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert left == []
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        assert store.pending_blobs() == (0, None)  # nothing stored, nothing counted
    finally:
        store.close()


# --- blobs: named, pending, swept ------------------------------------------------------


def _blob(text: str) -> tuple[str, bytes]:
    data = text.encode()
    return blob_id(data), data


def test_a_blob_is_pending_until_a_message_names_it(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        (a, a_data), (b, b_data) = _blob("contract A"), _blob("contract BB")
        assert store.pending_blobs() == (0, None)
        assert store.put_blob(a, a_data, stored=NOW)
        assert store.put_blob(b, b_data, stored=NOW + 5)
        assert store.pending_blobs() == (len(a_data) + len(b_data), NOW)
        store.apply(Projection(blob_refs=[a, a]))
        assert store.pending_blobs() == (len(b_data), NOW + 5)
        # Named for good: stored again it is not pending, and no sweep takes it.
        assert not store.put_blob(a, a_data, stored=NOW + 10)
        assert store.sweep_blobs(NOW + 10**9) == (1, len(b_data))
        assert store.get_blob(a) == a_data and store.get_blob(b) is None
        assert store.pending_blobs() == (0, None)
        # Named before it is stored: never pending.
        c, c_data = _blob("named first")
        store.apply(Projection(blob_refs=[c]))
        assert store.put_blob(c, c_data, stored=NOW)
        assert store.pending_blobs() == (0, None)
    finally:
        store.close()
    # The counts are the tables', after a restart too.
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        assert store.pending_blobs() == (0, None)
        assert store.sweep_blobs(NOW + 10**9) == (0, 0)
        assert store.get_blob(a) == a_data and store.get_blob(c) == c_data
    finally:
        store.close()


def test_only_blobs_pending_since_before_the_cutoff_are_swept(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        (old, old_data), (new, new_data) = _blob("old"), _blob("new")
        store.put_blob(old, old_data, stored=NOW)
        store.put_blob(new, new_data, stored=NOW + 1_000)
        assert store.sweep_blobs(NOW) == (0, 0)  # strictly before
        assert store.sweep_blobs(NOW + 1) == (1, len(old_data))
        assert store.get_blob(old) is None and store.get_blob(new) == new_data
        # Stored again, a pending blob's time restarts (and is never moved back).
        assert not store.put_blob(new, new_data, stored=NOW + 5_000)
        assert not store.put_blob(new, new_data, stored=NOW + 2_000)
        assert store.pending_blobs() == (len(new_data), NOW + 5_000)
        assert store.sweep_blobs(NOW + 5_000) == (0, 0)
        # A swept blob stored again is new, and pending again.
        assert store.put_blob(old, old_data, stored=NOW + 6_000)
        assert store.pending_blobs() == (len(old_data) + len(new_data), NOW + 5_000)
    finally:
        store.close()


def test_an_older_store_learns_which_of_its_blobs_are_named(tmp_path: Path) -> None:
    """The version-1 fixture holds a block whose records blob is on disk, and
    no blob tables: opened, that blob is named, and a stray file is pending
    from its modification time."""
    data = _copy(tmp_path)
    (records,) = [p for p in (data / "blobs").rglob("*") if p.is_file()]
    stray, stray_data = _blob("uploaded, never named")
    assert stray == blob_id(stray_data)
    digest = hashlib.sha256(stray_data).hexdigest()
    (data / "blobs" / digest[:2]).mkdir(exist_ok=True)
    (data / "blobs" / digest[:2] / digest).write_bytes(stray_data)
    (data / "blobs" / digest[:2] / f"{digest}.1.2.tmp").write_bytes(b"half")
    mtime = (data / "blobs" / digest[:2] / digest).stat().st_mtime_ns // 1_000_000
    log = SqliteLog(data / "log.sqlite")
    store = SqliteStore(data / "store.sqlite")
    try:
        assert store.pending_blobs() == (len(stray_data), mtime)
        assert store.sweep_blobs(mtime + 1) == (1, len(stray_data))
        assert records.exists()
    finally:
        store.close()
        log.close()


def test_a_rebuilt_store_keeps_the_blobs_its_replay_names(tmp_path: Path) -> None:
    """The store dropped and rebuilt from the log, beside the old blobs: they
    start pending, and the replay names the block's records blob again."""
    data = _copy(tmp_path)
    (data / "store.sqlite").unlink()
    for side in ("store.sqlite-wal", "store.sqlite-shm"):
        (data / side).unlink(missing_ok=True)
    log = SqliteLog(data / "log.sqlite")
    store = SqliteStore(data / "store.sqlite")
    try:
        pending, _ = store.pending_blobs()
        assert pending > 0
        Sequencer(log, store, NODE, clock=lambda: NOW)  # replays the log into the store
        assert store.pending_blobs() == (0, None)
        assert store.sweep_blobs(NOW + 10**12) == (0, 0)
    finally:
        store.close()
        log.close()


def test_an_older_store_indexes_only_the_txs_no_block_holds(tmp_path: Path) -> None:
    data = _copy(tmp_path)
    with sqlite3.connect(data / "store.sqlite") as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "txs_open" in names  # the fixture's index over every tx
    log = SqliteLog(data / "log.sqlite")
    store = SqliteStore(data / "store.sqlite")
    try:
        names = {
            r[0] for r in store._w.execute("SELECT name FROM sqlite_master WHERE type='index'")
        }
        assert "txs_open" not in names and "txs_unsealed" in names
        plan = " ".join(
            str(r[-1])
            for r in store._w.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM txs WHERE status!='open' AND block IS NULL"
            )
        )
        assert "txs_unsealed" in plan
        (unsealed,) = store._w.execute("SELECT COUNT(*) FROM txs WHERE block IS NULL").fetchone()
        assert len(store.open_txs()) + len(store.closed_unblocked_txs()) == unsealed
    finally:
        store.close()
        log.close()


def test_a_blob_stored_again_over_a_stale_pending_row_starts_its_grace_anew(
    tmp_path: Path,
) -> None:
    """A sweep that deleted a blob's file but not its row (a crash between the
    two, a failed commit) leaves the row behind: storing the blob again must
    restart its grace, not leave it to the next sweep."""
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        bid, data = _blob("stored, swept half-way, stored again")
        assert store.put_blob(bid, data, stored=NOW)
        store._blob_path(bid).unlink()  # the sweep's unlink, without its DELETE
        assert store.put_blob(bid, data, stored=NOW + 10_000)
        assert store.pending_blobs() == (len(data), NOW + 10_000)
        assert store.sweep_blobs(NOW + 1) == (0, 0)
        assert store.get_blob(bid) == data
    finally:
        store.close()


def test_a_sweep_during_a_blob_write_does_not_delete_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        bid, data = _blob("written while the sweeper runs")
        assert store.put_blob(bid, data, stored=NOW)
        store._blob_path(bid).unlink()  # a stale row, as above
        write = store._write_blob

        def write_then_sweep(path: Path, data: bytes) -> None:
            write(path, data)
            store.sweep_blobs(NOW + 1)  # the sweeper, between the write and its bookkeeping

        monkeypatch.setattr(store, "_write_blob", write_then_sweep)
        assert store.put_blob(bid, data, stored=NOW + 10_000)
        assert store.get_blob(bid) == data
        assert store.pending_blobs() == (len(data), NOW + 10_000)
    finally:
        store.close()


def test_a_blob_whose_directory_sync_fails_is_still_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is in place when the directory's fsync fails: it must be
    counted and swept like any pending blob, not left untracked for good."""
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        bid, data = _blob("renamed, directory not synced")
        real_fsync = os.fsync
        calls = []

        def failing_dir_fsync(fd: int) -> None:
            calls.append(fd)
            if len(calls) == 2:  # the file's, then the directory's
                raise OSError(5, "Input/output error")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", failing_dir_fsync)
        with pytest.raises(StorageError, match="blob write failed"):
            store.put_blob(bid, data, stored=NOW)
        monkeypatch.undo()
        assert store._blob_path(bid).exists()
        assert store.pending_blobs() == (len(data), NOW)
        assert store.sweep_blobs(NOW + 1) == (1, len(data))
        assert not store._blob_path(bid).exists()
    finally:
        store.close()


def test_a_projection_naming_more_blobs_than_one_statement_takes_is_written(
    tmp_path: Path,
) -> None:
    """Under SQLite's oldest parameter limit (999, before 3.32) a batch of 1,024
    doc messages names more blobs than one ``IN (…)`` list may hold."""
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        store._w.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        blobs = [_blob(f"document {i}") for i in range(600)]
        for bid, data in blobs:
            store.put_blob(bid, data, stored=NOW)
        store.apply(Projection(blob_refs=[bid for bid, _ in blobs]))
        assert store.pending_blobs() == (0, None)
        assert store.sweep_blobs(NOW + 10**9) == (0, 0)
    finally:
        store.close()


def test_a_blob_that_cannot_be_deleted_does_not_stop_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        (stuck, stuck_data), (gone, gone_data) = _blob("stuck"), _blob("gone")
        store.put_blob(stuck, stuck_data, stored=NOW)
        store.put_blob(gone, gone_data, stored=NOW + 1)
        stuck_path = store._blob_path(stuck)
        unlink = Path.unlink

        def refusing(self: Path, missing_ok: bool = False) -> None:
            if self == stuck_path:
                raise PermissionError(13, "Permission denied")
            unlink(self, missing_ok=missing_ok)

        monkeypatch.setattr(Path, "unlink", refusing)
        assert store.sweep_blobs(NOW + 10) == (1, len(gone_data))
        assert store.get_blob(stuck) == stuck_data and store.get_blob(gone) is None
        assert store.pending_blobs() == (len(stuck_data), NOW)  # still counted, tried again
        monkeypatch.undo()
        assert store.sweep_blobs(NOW + 10) == (1, len(stuck_data))
        assert store.pending_blobs() == (0, None)
    finally:
        store.close()


def test_a_doc_logged_but_not_projected_keeps_its_blob_from_a_sweep(tmp_path: Path) -> None:
    """Between the log and the projection no sweep may take what an
    acknowledged message names: the sequencer holds the blob from before the
    log append until the projection has recorded it."""
    log = SqliteLog(tmp_path / "log.sqlite")
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        seq = Sequencer(log, store, NODE, clock=lambda: NOW)
        (bid, data), (other, other_data) = _blob("an NDA, signed"), _blob("nobody names this")
        store.put_blob(bid, data, stored=NOW)
        store.put_blob(other, other_data, stored=NOW)
        doc = Writer(ALICE).sign({"type": "doc", "blob": bid, "size": len(data)})
        (result,) = seq.process([ssb.check(doc)])
        assert isinstance(result, Accepted), result
        # Logged (acknowledged), its projection not written yet; the grace long past.
        assert store.sweep_blobs(NOW + 10**9) == (1, len(other_data))
        assert store.get_blob(bid) == data and store.get_blob(other) is None
        seq.flush_projection()
        assert store.pending_blobs() == (0, None)
        assert store.sweep_blobs(NOW + 10**9) == (0, 0)
        assert store.get_blob(bid) == data
        assert not store._held  # released once named for good
    finally:
        log.close()
        store.close()


def test_a_blob_room_refuses_is_neither_stored_nor_counted(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.sqlite")
    asked: list[tuple[int, int, int | None]] = []

    def room(size: int, pending: int, oldest: int | None, count: int) -> None:
        asked.append((size, pending, oldest))
        if pending + size > 20:
            raise RateLimited("full", retry_after=1.0)

    try:
        (a, a_data), (b, b_data) = _blob("first of 16"), _blob("second, refused")
        assert store.put_blob(a, a_data, stored=NOW, room=room)
        with pytest.raises(RateLimited):
            store.put_blob(b, b_data, stored=NOW + 1, room=room)
        assert asked == [(len(a_data), 0, None), (len(b_data), len(a_data), NOW)]
        assert store.get_blob(b) is None
        assert store.pending_blobs() == (len(a_data), NOW)
        # Stored again: already counted, never asked.
        assert not store.put_blob(a, a_data, stored=NOW + 2, room=room)
        assert len(asked) == 2
    finally:
        store.close()


def test_a_doc_whose_log_append_fails_leaves_no_hold_behind(tmp_path: Path) -> None:
    """Refused (the log could not take it): the doc names nothing, and the blob
    it would have kept is swept in its time, not held until a restart."""
    log = SqliteLog(tmp_path / "log.sqlite")
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        seq = Sequencer(log, store, NODE, clock=lambda: NOW)
        bid, data = _blob("refused with its doc")
        store.put_blob(bid, data, stored=NOW)
        append = log.append

        def full_disk(entries: object) -> object:
            raise LogError("append failed: database or disk is full")

        log.append = full_disk  # type: ignore[assignment,method-assign]
        doc = Writer(ALICE).sign({"type": "doc", "blob": bid, "size": len(data)})
        with pytest.raises(LogError):
            seq.process([ssb.check(doc)])
        log.append = append  # type: ignore[method-assign]
        assert not store._held
        assert store.sweep_blobs(NOW + 10**9) == (1, len(data))
    finally:
        log.close()
        store.close()


def test_a_blob_is_counted_pending_durably_before_its_bytes_are_written(tmp_path: Path) -> None:
    """The row is in no log, so it is committed as the file is synced: to survive
    power loss, not only a crash (the store commits at NORMAL otherwise)."""
    store = SqliteStore(tmp_path / "store.sqlite")
    statements: list[str] = []
    try:
        store._w.set_trace_callback(statements.append)
        bid, data = _blob("kept through a power cut")
        write = store._write_blob

        def spy(path: Path, data: bytes) -> None:
            statements.append("-- the blob's bytes")
            write(path, data)

        store._write_blob = spy  # type: ignore[method-assign]
        store.put_blob(bid, data, stored=NOW)
        insert = next(i for i, t in enumerate(statements) if "INSERT INTO blob_pending" in t)
        full = max(i for i, t in enumerate(statements[:insert]) if "synchronous" in t)
        assert statements[full] == "PRAGMA synchronous=FULL"
        commit = next(i for i, t in enumerate(statements) if i > insert and t == "COMMIT")
        assert commit < statements.index("-- the blob's bytes")
        assert any("synchronous=NORMAL" in t for t in statements[commit:])
        # A blob the node names itself at once (a block's records): no fsync for it.
        del statements[:]
        other, other_data = _blob("a block's records")
        store.put_blob(other, other_data, stored=NOW, durable=False)
        assert any("INSERT INTO blob_pending" in t for t in statements)
        assert not any("synchronous" in t for t in statements)
    finally:
        store.close()


def test_a_failed_upload_does_not_uncount_a_concurrent_one_of_the_same_blob(
    tmp_path: Path,
) -> None:
    import threading

    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        bid, data = _blob("uploaded twice at once")
        write = store._write_blob
        b_writing, a_failed = threading.Event(), threading.Event()
        calls: list[str] = []

        def racing(path: Path, blob: bytes) -> None:
            calls.append(threading.current_thread().name)
            if threading.current_thread().name == "B":
                b_writing.set()
                assert a_failed.wait(10)
                write(path, blob)
                return
            assert b_writing.wait(10)  # A fails while B's rename is still to come
            raise StorageError("blob write failed: disk full")

        store._write_blob = racing  # type: ignore[method-assign,assignment]
        b = threading.Thread(target=store.put_blob, args=(bid, data), name="B")
        b.start()
        with pytest.raises(StorageError):
            store.put_blob(bid, data, stored=NOW)
        # A gave up; B is still writing: the row stays, so a crash now leaves
        # nothing untracked.
        assert store.pending_blob_bytes() == len(data)
        a_failed.set()
        b.join(10)
        assert store.get_blob(bid) == data and store.pending_blob_bytes() == len(data)
        assert sorted(calls) == ["B", "MainThread"]
    finally:
        store.close()


_CRASH_BEFORE_RENAME = """
import os, sys
from pathlib import Path
from chainmail.ids import blob_id
from chainmail.sqlite import SqliteStore

store = SqliteStore(Path(sys.argv[1]) / "store.sqlite")
os.replace = lambda src, dst: os._exit(0)  # killed with the bytes synced, not renamed
data = b"x" * 100_000
store.put_blob(blob_id(data), data, stored=1_800_000_002_000)
"""


def test_an_upload_cut_short_before_its_rename_leaves_nothing_behind(tmp_path: Path) -> None:
    done = _run_store_script(_CRASH_BEFORE_RENAME, tmp_path)
    assert done.returncode == 0, done.stderr
    (left,) = (tmp_path / "blobs" / "tmp").iterdir()
    assert left.stat().st_size == 100_000
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        assert list((tmp_path / "blobs" / "tmp").iterdir()) == []  # emptied on open
        # Its pending row, committed before the file, is gone too: no blob, no room taken.
        assert store.pending_blobs() == (0, None)
        assert store.sweep_blobs(NOW + 1) == (0, 0)
        files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
        assert files == []
    finally:
        store.close()


_CRASH_AFTER_RENAME = """
import os, sys
from pathlib import Path
from chainmail.ids import blob_id
from chainmail.sqlite import SqliteStore

store = SqliteStore(Path(sys.argv[1]) / "store.sqlite")
replace = os.replace

def replace_then_die(src, dst):
    replace(src, dst)
    os._exit(0)  # killed right after the rename, before any bookkeeping after it

os.replace = replace_then_die
data = b"uploaded as the power went"
store.put_blob(blob_id(data), data, stored=1_800_000_002_000)
"""


def test_a_blob_whose_writer_dies_after_the_rename_is_pending_not_untracked(
    tmp_path: Path,
) -> None:
    done = _run_store_script(_CRASH_AFTER_RENAME, tmp_path)
    assert done.returncode == 0, done.stderr
    bid, data = _blob("uploaded as the power went")
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        assert store.get_blob(bid) == data
        assert store.pending_blobs() == (len(data), NOW)
        assert store.sweep_blobs(NOW + 1) == (1, len(data))
        assert store.get_blob(bid) is None
    finally:
        store.close()


def test_a_blob_write_that_fails_leaves_nothing_pending(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        bid, data = _blob("never written")
        (tmp_path / "blobs").write_bytes(b"")  # a file where the directory must go
        with pytest.raises(StorageError, match="blob write failed"):
            store.put_blob(bid, data, stored=NOW)
        assert store.pending_blobs() == (0, None)
        assert store.pending_blob_bytes() == 0
    finally:
        store.close()


def test_listing_by_status_finds_open_and_sealed_txs(tmp_path: Path) -> None:
    log = SqliteLog(tmp_path / "log.sqlite")
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        seq = Sequencer(log, store, NODE, clock=lambda: NOW)
        a, b = Writer(), Writer()
        deadline = NOW + 60_000
        opened = seq.process(
            [ssb.check(a.sign({"type": "tx/open", "parties": [a.id, b.id], "deadline": deadline}))]
        )[0]
        done = seq.process(
            [
                ssb.check(
                    a.sign(
                        {
                            "type": "tx/open",
                            "parties": [a.id, b.id],
                            "deadline": deadline,
                            "finish": "any",
                        }
                    )
                )
            ]
        )[0]
        assert isinstance(opened, Accepted) and isinstance(done, Accepted)
        seq.process([ssb.check(b.sign({"type": "tx/finish", "tx": done.id}))])
        seq.flush_projection()
        assert seq.build_block() is not None
        listed = {
            status: [t.id for t in store.list_txs(party=None, status=status, limit=10, before=None)]
            for status in ("open", "finished")
        }
        assert listed == {"open": [opened.id], "finished": [done.id]}
        assert store.tx(done.id).block == 1  # type: ignore[union-attr]
    finally:
        store.close()
        log.close()


def test_concurrent_uploads_of_one_new_blob_say_it_is_new_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.sqlite")
    write = store._write_blob
    together = threading.Barrier(4)

    def slow(path: Path, data: bytes) -> None:
        together.wait(10)  # all four uploads are writing it at once
        write(path, data)

    store._write_blob = slow  # type: ignore[method-assign]
    bid, data = _blob("one blob, four uploads at once")
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            said = list(pool.map(lambda _: store.put_blob(bid, data, stored=NOW), range(4)))
        assert sorted(said) == [False, False, False, True]  # one 201, three 200
        assert store.get_blob(bid) == data
        assert store.pending_blobs() == (len(data), NOW)
    finally:
        store.close()
