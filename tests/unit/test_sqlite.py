"""SQLite files: a version-1 data directory opens migrated with nothing lost; the WAL is
copied back in the background.

The fixture ``tests/vectors/datadir-v1`` was written by the layout of commit
36b80e1 (text-keyed log indexes and inbox); see ``tests/vectors/README.md``.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

from chainmail import merkle, ssb
from chainmail.ids import msg_digest
from chainmail.keys import Keypair
from chainmail.log import NewEntry
from chainmail.sequencer import Accepted, Sequencer
from chainmail.sqlite import SqliteLog, SqliteStore, idkey
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
