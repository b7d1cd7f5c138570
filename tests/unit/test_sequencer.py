"""The sequencer: feed order, tx rules, timeouts, blocks and crash recovery.

Runs the single writer directly on SQLite files with a hand-driven clock.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from chainmail import blocks, merkle, ssb
from chainmail.errors import Error, InvalidMessage, OperationalError, Rejected, StorageError
from chainmail.keys import Keypair
from chainmail.sequencer import Accepted, Sequencer
from chainmail.sqlite import SqliteLog, SqliteStore, _pos
from chainmail.store import Projection
from support.feeds import Writer

NOW = 1_800_000_000_000


class Clock:
    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Harness:
    def __init__(self, path: Path, clock: Clock, identity: Keypair) -> None:
        self.path = path
        self.clock = clock
        self.identity = identity
        self.log = SqliteLog(path / "log.sqlite", synchronous="NORMAL")
        self.store = SqliteStore(path / "store.sqlite", synchronous="NORMAL")
        self.seq = Sequencer(self.log, self.store, identity, clock=clock)

    def submit(self, *msgs: dict[str, Any], project: bool = True) -> list[Accepted | Error]:
        items = [_check(m) for m in msgs]
        results = self.seq.process(items)
        if project:
            self.seq.flush_projection()
        return results

    def one(self, msg: dict[str, Any]) -> Accepted:
        (result,) = self.submit(msg)
        assert isinstance(result, Accepted), result
        return result

    def refused(self, msg: dict[str, Any], code: str) -> Error:
        size = self.log.size(0)
        (result,) = self.submit(msg)
        assert isinstance(result, Error), result
        assert result.code == code, result.diagnostics()
        assert self.log.size(0) == size
        return result

    def close(self) -> None:
        self.log.close()
        self.store.close()


def _drop_store(path: Path) -> None:
    """Delete the store (and its WAL) so the next ``Harness`` rebuilds it from the log."""
    (path / "store.sqlite").unlink()
    for extra in ("store.sqlite-wal", "store.sqlite-shm"):
        (path / extra).unlink(missing_ok=True)


def _check(msg: dict[str, Any]) -> ssb.Checked | Error:
    try:
        return ssb.check(msg)
    except Error as exc:
        return exc


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def node_keys() -> Keypair:
    return Keypair.generate()


@pytest.fixture
def h(tmp_path: Path, clock: Clock, node_keys: Keypair) -> Iterator[Harness]:
    harness = Harness(tmp_path, clock, node_keys)
    yield harness
    harness.close()


def open_tx(
    w: Writer, *others: Writer, deadline: int = NOW + 60_000, finish: str = "all"
) -> dict[str, Any]:
    return w.sign(
        {
            "type": "tx/open",
            "parties": [w.id, *(o.id for o in others)],
            "deadline": deadline,
            "finish": finish,
        }
    )


def test_accepts_in_order_and_resubmission_is_idempotent(h: Harness) -> None:
    a = Writer()
    m1, m2 = a.sign({"type": "post", "text": "one"}), a.sign({"type": "post", "text": "two"})
    r1, r2 = h.submit(m1, m2)
    assert isinstance(r1, Accepted) and isinstance(r2, Accepted)
    assert (r1.index, r2.index, r1.created) == (0, 1, True)
    (again,) = h.submit(m1)
    assert isinstance(again, Accepted) and not again.created and again.index == 0
    assert h.log.size(0) == 2
    assert h.store.message(r2.id) is not None


def test_gap_is_out_of_order_and_changes_nothing(h: Harness) -> None:
    a = Writer()
    a.sign({"type": "post"})
    h.refused(a.sign({"type": "post"}), "out_of_order")
    assert h.log.head(a.id) is None


def test_fork_is_refused_and_evidence_kept(h: Harness) -> None:
    a = Writer()
    first = a.sign({"type": "post", "n": 1})
    h.one(first)
    twin = ssb.create(a.keys, {"type": "post", "n": 2}, None, a.time + 5)
    h.refused(twin, "fork")
    ((sequence, kept, rejected),) = h.store.forks(a.id)
    assert sequence == 1
    assert ssb.message_id(orjson.loads(kept)) == ssb.message_id(first)
    assert ssb.message_id(orjson.loads(rejected)) == ssb.message_id(twin)
    assert h.log.head(a.id).id == ssb.message_id(first)  # type: ignore[union-attr]


def test_fork_of_a_message_not_yet_projected_keeps_whole_evidence(h: Harness) -> None:
    a = Writer()
    first = a.sign({"type": "post", "n": 1})
    second = a.sign({"type": "post", "n": 2})
    h.submit(first, second, project=False)  # logged; the store has not seen them yet
    early_twin = ssb.create(a.keys, {"type": "post", "n": 9}, None, a.time + 5)
    (refused,) = h.submit(early_twin, project=False)
    assert isinstance(refused, Error) and refused.code == "fork"
    # Not the head, not projected: nothing to pair it with yet, so no half pair.
    head_twin = ssb.create(
        a.keys, {"type": "post", "n": 8}, ssb.FeedState(ssb.message_id(first), 1), a.time + 6
    )
    (refused,) = h.submit(head_twin)  # the head's body comes from the log
    assert isinstance(refused, Error) and refused.code == "fork"
    assert ssb.message_id(second) in refused.detail
    ((sequence, kept, rejected),) = h.store.forks(a.id)
    assert sequence == 2 and kept and ssb.message_id(orjson.loads(kept)) == ssb.message_id(second)
    assert ssb.message_id(orjson.loads(rejected)) == ssb.message_id(head_twin)
    # Once projected, the first fork gets its whole pair too.
    h.refused(early_twin, "fork")
    pairs = {seq: (k, r) for seq, k, r in h.store.forks(a.id)}
    assert ssb.message_id(orjson.loads(pairs[1][0])) == ssb.message_id(first)
    assert ssb.message_id(orjson.loads(pairs[1][1])) == ssb.message_id(early_twin)


def test_bad_signature_and_policy(h: Harness) -> None:
    a = Writer()
    msg = a.sign({"type": "post"})
    msg["signature"] = ssb.create(Keypair.generate(), {"type": "post"}, None, 1)["signature"]
    h.refused(msg, "invalid_signature")
    b = Writer()
    floaty = ssb.create(b.keys, {"type": "post"}, None, 1.5)
    h.refused(floaty, "invalid_format")


def test_tx_rules_unknown_outsider_closed(h: Harness) -> None:
    a, b, eve = Writer(), Writer(), Writer()
    tx = h.one(open_tx(a, b)).id
    h.refused(eve.sign({"type": "tx/note", "tx": tx, "data": {}}), "not_a_party")
    eve.state = None
    h.refused(
        b.sign({"type": "tx/note", "tx": "%" + "A" * 43 + "=.sha256", "data": {}}), "unknown_tx"
    )
    b.state = None
    h.one(b.sign({"type": "tx/finish", "tx": tx}))
    h.one(a.sign({"type": "tx/finish", "tx": tx}))
    assert h.store.tx(tx).status == "finished"  # type: ignore[union-attr]
    h.refused(a.sign({"type": "tx/note", "tx": tx, "data": {}}), "tx_closed")


def test_a_tx_field_of_any_type_names_a_tx_and_the_refusal_says_which(h: Harness) -> None:
    a, b, eve = Writer(), Writer(), Writer()
    tx = h.one(open_tx(a, b)).id
    unknown = "%" + "B" * 43 + "=.sha256"
    before = a.state
    err = h.refused(a.sign({"type": "my/app", "tx": unknown}), "unknown_tx")
    assert err.detail == f"unknown tx {unknown}"  # it said "(none named)"
    a.state = before
    h.refused(eve.sign({"type": "my/app", "tx": tx}), "not_a_party")
    eve.state = None
    h.one(a.sign({"type": "my/app", "tx": tx}))
    h.one(a.sign({"type": "my/app", "note": "no tx named, no tx rules"}))


def test_deadline_closes_tx_by_the_clock(h: Harness, clock: Clock) -> None:
    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b, deadline=NOW + 1000)).id
    clock.now = NOW + 1000  # at the deadline the tx is still open
    h.one(b.sign({"type": "tx/note", "tx": tx, "data": {"ok": True}}))
    clock.now = NOW + 1001
    h.refused(a.sign({"type": "tx/note", "tx": tx, "data": {}}), "tx_closed")
    row = h.store.tx(tx)
    assert row is not None and row.status == "timed_out" and row.closed == NOW + 1001


def test_a_timeout_is_written_to_survive_power_loss_before_anyone_hears_of_it(
    h: Harness, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A timeout is in no log: with the store's commits at NORMAL, a power loss
    # could lose one that a refusal (tx_closed) or a read had already told of,
    # and a clock stepped back reopen the tx.
    full = h.store._synchronous_full
    durable: list[None] = []

    def counted() -> Any:
        durable.append(None)
        return full()

    monkeypatch.setattr(h.store, "_synchronous_full", counted)
    a, b = Writer(), Writer()
    first = h.one(open_tx(a, b, deadline=NOW + 1000)).id
    second = h.one(open_tx(a, b, deadline=NOW + 5000)).id
    h.one(b.sign({"type": "tx/note", "tx": first, "data": {}}))
    assert durable == []  # opens and notes: the log replays them
    clock.now = NOW + 1001
    h.refused(a.sign({"type": "tx/note", "tx": first, "data": {}}), "tx_closed")
    assert len(durable) == 1  # found while checking the refused note
    clock.now = NOW + 5001
    assert h.seq.expire(clock.now) == 1
    h.seq.flush_projection()
    assert len(durable) == 2  # found by the clock
    assert [h.store.tx(t).status for t in (first, second)] == ["timed_out"] * 2  # type: ignore[union-attr]


def test_expire_without_traffic_then_one_block(h: Harness, clock: Clock) -> None:
    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b, deadline=NOW + 10)).id
    clock.now = NOW + 50
    assert h.seq.expire(clock.now) == 1
    h.seq.flush_projection()
    block = h.seq.build_block()
    assert block is not None
    stored = h.store.block(1)
    assert stored is not None and [r["tx"] for r in stored.records] == [tx]
    assert stored.records[0]["status"] == "timed_out"
    assert h.store.tx(tx).block == 1  # type: ignore[union-attr]
    assert h.seq.build_block() is None  # nothing new: no empty blocks


def test_every_closed_tx_in_exactly_one_block(h: Harness, clock: Clock) -> None:
    a, b = Writer(), Writer()
    ids = []
    for round_ in range(3):
        for _ in range(4):
            tx = h.one(open_tx(a, b, finish="any")).id
            h.one(b.sign({"type": "tx/finish", "tx": tx}))
            ids.append(tx)
        clock.now += 1000
        assert h.seq.build_block() is not None, round_
    sealed = [r["tx"] for height in (1, 2, 3) for r in h.store.block(height).records]  # type: ignore[union-attr]
    assert sorted(sealed) == sorted(ids) and len(set(sealed)) == len(ids)


def test_a_sealed_tx_row_is_complete_when_its_last_messages_and_block_project_together(
    h: Harness, clock: Clock, tmp_path: Path, node_keys: Keypair
) -> None:
    # The block sends no tx rows of its own: the rows of its txs come from
    # their messages, here still unprojected when the block is appended, and
    # the block's records then set block, status and closed.
    a, b = Writer(), Writer()
    finished = h.one(open_tx(a, b, finish="any")).id
    timed_out = h.one(open_tx(a, b, deadline=NOW + 10)).id
    note = a.sign({"type": "tx/note", "tx": finished, "data": {"terms": "DvP"}})
    results = h.submit(note, b.sign({"type": "tx/finish", "tx": finished}), project=False)
    assert all(isinstance(r, Accepted) for r in results), results
    clock.now = NOW + 50
    h.seq.expire(clock.now)  # timed_out closes, its row not yet written either
    block = h.seq.build_block()
    assert block is not None
    expected = {
        finished: ("finished", 3),
        timed_out: ("timed_out", 1),
    }
    for tx_id, (status, count) in expected.items():
        row = h.store.tx(tx_id)
        assert row is not None
        assert (row.block, row.status, len(row.messages)) == (1, status, count)
        assert row.closed is not None
    # A store rebuilt from the log has the same rows.
    rows = {t: h.store.tx(t) for t in expected}
    h.close()
    _drop_store(tmp_path)
    again = Harness(tmp_path, clock, node_keys)
    try:
        for tx_id, row in rows.items():
            rebuilt = again.store.tx(tx_id)
            assert rebuilt is not None and row is not None
            assert (rebuilt.block, rebuilt.status, rebuilt.closed, rebuilt.messages) == (
                row.block,
                row.status,
                row.closed,
                row.messages,
            )
    finally:
        again.close()
        h.log = SqliteLog(tmp_path / "log.sqlite", synchronous="NORMAL")
        h.store = SqliteStore(tmp_path / "store.sqlite", synchronous="NORMAL")


def _sealed_then_store_dropped(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> tuple[str, Writer]:
    """A finished tx in block 1, then the store deleted: the next ``Harness`` replays the log."""
    h = Harness(tmp_path, clock, node_keys)
    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b, finish="any")).id
    h.one(b.sign({"type": "tx/finish", "tx": tx}))
    assert h.seq.build_block() is not None
    h.close()
    _drop_store(tmp_path)
    return tx, a


def test_a_tx_sealed_within_a_replay_keeps_its_block_and_is_not_sealed_again(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    # A replay closes the tx again and then meets its block: the later traffic
    # must not write the tx's row back without its block (which would put it
    # in the next block too after a restart).
    tx, a = _sealed_then_store_dropped(tmp_path, clock, node_keys)
    rebuilt = Harness(tmp_path, clock, node_keys)
    rebuilt.one(a.sign({"type": "post"}))  # a later batch, after the replay
    row = rebuilt.store.tx(tx)
    assert row is not None and row.block == 1
    rebuilt.close()
    restarted = Harness(tmp_path, clock, node_keys)
    try:
        restarted.one(a.sign({"type": "post"}))
        clock.now += 1000
        assert restarted.seq.build_block() is not None  # the posts' checkpoint
        second = restarted.store.block(2)
        assert second is not None and tx not in [r["tx"] for r in second.records]
        assert restarted.store.tx(tx).block == 1  # type: ignore[union-attr]
    finally:
        restarted.close()


def test_a_block_built_in_steps_seals_what_closed_before_its_draft(
    h: Harness, clock: Clock
) -> None:
    # The node drafts on the writer, seals the records elsewhere and appends on
    # the writer again: traffic in between belongs to the next block.
    a, b = Writer(), Writer()

    def closed_tx() -> str:
        tx = h.one(open_tx(a, b, finish="any")).id
        h.one(b.sign({"type": "tx/finish", "tx": tx}))
        return tx

    early = [closed_tx(), closed_tx()]
    draft = h.seq.draft_block()
    assert draft is not None and [r["tx"] for r in draft.records] == sorted(
        early, key=lambda t: (h.seq.unsealed[t].closed, t)
    )
    with pytest.raises(OperationalError, match="already being built"):
        h.seq.draft_block()  # one draft at a time: the same txs must not go in twice
    sealed = h.seq.seal_records(draft)
    late = closed_tx()  # closes while the records are being sealed
    clock.now += 1000
    first = h.seq.append_block(sealed)
    stored = h.store.block(1)
    assert stored is not None and stored.id == first.id
    assert sorted(r["tx"] for r in stored.records) == sorted(early)
    # The block's log checkpoint is taken at the append: it covers the late tx's messages.
    (checkpoint,) = stored.logs
    assert checkpoint["size"] == h.log.size(0) - 1  # every entry but the block itself
    second = h.seq.build_block()
    assert second is not None
    assert [r["tx"] for r in h.store.block(2).records] == [late]  # type: ignore[union-attr]
    assert h.seq.build_block() is None


def test_a_block_whose_records_cannot_be_stored_is_built_again(
    h: Harness, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b, finish="any")).id
    h.one(b.sign({"type": "tx/finish", "tx": tx}))

    def disk_full(blob_id: str, data: bytes, **_: object) -> bool:
        raise StorageError("blob write failed: no space left on device")

    draft = h.seq.draft_block()
    assert draft is not None
    monkeypatch.setattr(h.store, "put_blob", disk_full)
    with pytest.raises(StorageError, match="no space"):
        h.seq.seal_records(draft)
    h.seq.abandon_block()
    monkeypatch.undo()
    with pytest.raises(StorageError, match="no space"):  # the one-call form restores it too
        monkeypatch.setattr(h.store, "put_blob", disk_full)
        h.seq.build_block()
    monkeypatch.undo()
    clock.now += 1000
    assert h.seq.build_block() is not None
    assert [r["tx"] for r in h.store.block(1).records] == [tx]  # type: ignore[union-attr]


def test_blocks_are_built_without_waiting_for_the_projector(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    """``visible=False`` returns while the store is behind; the next block still links."""
    projector = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    gate = threading.Event()
    log = SqliteLog(tmp_path / "log.sqlite", synchronous="NORMAL")
    store = SqliteStore(tmp_path / "store.sqlite", synchronous="NORMAL")
    try:
        seq = Sequencer(log, store, node_keys, clock=clock, projector=projector)
        a, b = Writer(), Writer()
        blocks_built = []
        projector.submit(gate.wait)  # the store is slow: nothing is written yet
        for _ in range(2):
            tx = seq.process([ssb.check(open_tx(a, b, finish="any"))])[0]
            assert isinstance(tx, Accepted)
            seq.process([ssb.check(b.sign({"type": "tx/finish", "tx": tx.id}))])
            clock.now += 1000
            blocks_built.append(seq.build_block(visible=False))
        assert all(isinstance(blk, Accepted) for blk in blocks_built)
        assert store.latest_block() is None
        gate.set()
        seq.flush_projection()
        first, second = store.block(1), store.block(2)
        assert first is not None and second is not None
        assert orjson.loads(second.body)["content"]["prev"] == first.id
        assert [first.id, second.id] == [blk.id for blk in blocks_built]  # type: ignore[union-attr]
    finally:
        gate.set()
        projector.shutdown(wait=True)
        log.close()
        store.close()


def test_a_tx_opened_past_its_deadline_is_sealed_closed_when_it_opened(
    h: Harness, clock: Clock
) -> None:
    # A client with a slow clock: accepted, and timed out at once, but its record
    # must not say it closed (deadline + 1) before it opened (the node's clock).
    a, b = Writer(), Writer()
    opening = open_tx(a, b, deadline=NOW - 10_000)
    tx = h.one(opening).id
    clock.now = NOW + 1_000
    assert h.seq.expire(clock.now) == 1
    h.seq.flush_projection()
    assert h.seq.build_block() is not None
    stored = h.store.block(1)
    assert stored is not None
    (record,) = stored.records
    assert (record["status"], record["opened"], record["closed"]) == ("timed_out", NOW, NOW)
    blocks.verify_tx_record(record, {tx: opening})


def test_a_block_after_the_clock_stepped_back_is_dated_after_the_last(
    h: Harness, clock: Clock, node_keys: Keypair
) -> None:
    a, b = Writer(), Writer()
    h.one(open_tx(a, b, finish="opener"))
    assert h.seq.build_block() is not None
    clock.now -= 60_000
    tx = h.one(open_tx(a, b, finish="opener")).id
    h.one(a.sign({"type": "tx/finish", "tx": tx}))
    assert h.seq.build_block() is not None
    first, second = (orjson.loads(h.store.block(n).body) for n in (1, 2))  # type: ignore[union-attr]
    assert second["content"]["time"] == first["content"]["time"]
    blocks.verify_block(second, node_keys.id, previous=first)
    stored = h.store.block(2)
    assert stored is not None
    blocks.verify_records(second["content"], stored.records)


def test_block_content_verifies_independently_of_the_node(h: Harness, node_keys: Keypair) -> None:
    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b, finish="opener")).id
    h.one(a.sign({"type": "tx/finish", "tx": tx}))
    h.seq.build_block()
    stored = h.store.block(1)
    assert stored is not None
    msg = orjson.loads(stored.body)
    ssb.validate(msg)  # the node's own first message: its block
    content = msg["content"]
    assert content["txs"]["count"] == 1
    assert content["txs"]["root"] == blocks._b64(blocks.txs_root(stored.records))
    leaves = [blocks.message_leaf(e.id) for e in h.log.read(0, 0, 100)]
    (cp,) = content["logs"]
    assert cp["size"] == 2
    assert cp["root"] == blocks._b64(merkle.root(leaves[: cp["size"]]))


def test_restart_projects_what_the_crash_left_behind(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    h = Harness(tmp_path, clock, node_keys)
    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b)).id
    # Logged but not projected: as if the process died between the two commits.
    results = h.submit(
        b.sign({"type": "tx/finish", "tx": tx}),
        a.sign({"type": "tx/finish", "tx": tx}),
        project=False,
    )
    assert all(isinstance(r, Accepted) for r in results)
    assert h.store.tx(tx).status == "open"  # type: ignore[union-attr]
    h.close()
    h2 = Harness(tmp_path, clock, node_keys)
    try:
        row = h2.store.tx(tx)
        assert row is not None and row.status == "finished" and len(row.messages) == 3
        assert len(h2.store.inbox(a.id, 10)) == 1
        # The feed continues where it left off.
        h2.one(a.sign({"type": "post"}))
        assert h2.seq.build_block() is not None
        assert [r["tx"] for r in h2.store.block(1).records] == [tx]  # type: ignore[union-attr]
    finally:
        h2.close()


def test_a_clock_stepped_back_across_a_restart_reopens_no_timed_out_tx(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    """Timeouts are not logged: the restarted node's clock must not run from before
    the time it closed a tx at (NTP stepping back, a VM restored), or the tx, open
    again by that clock, would finish after the node had said it timed out."""
    h = Harness(tmp_path, clock, node_keys)
    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b, deadline=NOW + 1_000)).id
    clock.now = NOW + 60_000
    assert h.seq.expire(clock.now) == 1
    h.seq.flush_projection()  # the timeout is in the store; no block holds it yet
    h.close()
    clock.now = NOW + 800  # before the deadline, by the wall clock
    h2 = Harness(tmp_path, clock, node_keys)
    try:
        assert h2.seq.expire(clock.now) == 0
        h2.refused(a.sign({"type": "tx/finish", "tx": tx}), "tx_closed")
        row = h2.store.tx(tx)
        assert row is not None and (row.status, row.closed) == ("timed_out", NOW + 1_001)
        # And no time runs backwards meanwhile: a new message is logged at the floor.
        got = h2.one(b.sign({"type": "post"}))
        assert h2.log.get(got.pipeline, got.index).received >= NOW + 1_001  # type: ignore[union-attr]
    finally:
        h2.close()


def test_delivery_rules(h: Harness) -> None:
    a, b, c = Writer(), Writer(), Writer()
    tx = h.one(open_tx(a, b, c)).id
    h.one(a.sign({"type": "tx/note", "tx": tx, "data": {"to": "c"}, "to": [c.id]}))
    assert len(h.store.inbox(b.id, 10)) == 1  # the open only
    assert len(h.store.inbox(c.id, 10)) == 2
    assert h.store.inbox(a.id, 10) == []  # never one's own messages
    n = h.store.ack(c.id, [d.id for d in h.store.inbox(c.id, 10)])
    assert n == 2 and h.store.inbox(c.id, 10) == []


def test_private_box_is_stored_not_routed(h: Harness) -> None:
    a = Writer()
    box = "A" * 64 + ".box"
    r = h.one(a.sign(box))
    row = h.store.message(r.id)
    assert row is not None and row.type is None


def test_unknown_channel_and_non_member(h: Harness) -> None:
    a, b, eve = Writer(), Writer(), Writer()
    key = base64.b64encode(bytes(80)).decode()
    chan = h.one(a.sign({"type": "chan/open", "keys": {a.id: key, b.id: key}})).id
    box = base64.b64encode(bytes(64)).decode()
    h.one(b.sign({"type": "chan/msg", "chan": chan, "box": box}))
    assert [d.id for d in h.store.inbox(a.id, 10)][-1:] != []
    h.refused(eve.sign({"type": "chan/msg", "chan": chan, "box": box}), "not_a_party")


def test_errors_are_domain_errors() -> None:
    assert issubclass(InvalidMessage, Error) and issubclass(Rejected, Error)


def test_store_rebuilds_from_the_log(tmp_path: Path, clock: Clock, node_keys: Keypair) -> None:
    h = Harness(tmp_path, clock, node_keys)
    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b, finish="any")).id
    h.one(b.sign({"type": "tx/finish", "tx": tx}))
    assert h.seq.build_block() is not None
    open_tx_id = h.one(open_tx(a, b)).id
    h.close()
    _drop_store(tmp_path)
    h2 = Harness(tmp_path, clock, node_keys)
    try:
        sealed = h2.store.tx(tx)
        assert sealed is not None and sealed.status == "finished" and sealed.block == 1
        assert h2.store.tx(open_tx_id).status == "open"  # type: ignore[union-attr]
        clock.now += 1000
        block = h2.seq.build_block()
        assert block is not None  # the new tx/open is unsealed activity
        assert h2.store.block(2).records == []  # type: ignore[union-attr]  # tx not sealed twice
    finally:
        h2.close()


def test_a_timeout_rebuilt_from_the_log_closes_at_the_same_time(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    # Timeouts come from the clock, not the log: a store rebuilt before the block
    # must still record the tx as closed when it was, not when it was rebuilt.
    h = Harness(tmp_path, clock, node_keys)
    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b, deadline=NOW + 1000)).id
    clock.now = NOW + 1500
    assert h.seq.expire(clock.now) == 1
    h.seq.flush_projection()
    before = h.store.tx(tx)
    assert before is not None and (before.status, before.closed) == ("timed_out", NOW + 1001)
    h.close()
    _drop_store(tmp_path)
    clock.now = NOW + 90_000
    h2 = Harness(tmp_path, clock, node_keys)
    try:
        assert h2.seq.expire(clock.now) == 1
        h2.seq.flush_projection()
        after = h2.store.tx(tx)
        assert after is not None and (after.status, after.closed) == ("timed_out", NOW + 1001)
        block = h2.seq.build_block()
        assert block is not None
        (record,) = h2.store.block(1).records  # type: ignore[union-attr]
        assert (record["status"], record["closed"]) == ("timed_out", NOW + 1001)
    finally:
        h2.close()


def test_default_origin_is_a_valid_key_name_for_any_node_id(tmp_path: Path) -> None:
    import json

    from chainmail import checkpoint
    from chainmail.node import Node, NodeConfig

    for i in range(40):
        data = tmp_path / str(i)
        data.mkdir()
        keys = Keypair.generate()
        (data / "node-secret.json").write_text(json.dumps(keys.to_ssb_secret()))
        node = Node(NodeConfig(data_dir=data))
        try:
            checkpoint.verify_checkpoint(node.checkpoint_text(0), node.verifier_key())
        finally:
            node.log.close()
            node.store.close()


def test_deadline_heap_stays_bounded_and_timeouts_still_fire(h: Harness, clock: Clock) -> None:
    from chainmail.sequencer import _DEADLINE_SLACK

    a, b = Writer(), Writer()
    lingering = h.one(open_tx(a, b, deadline=NOW + 5_000)).id
    for _ in range(3 * _DEADLINE_SLACK // 2):
        tx = h.one(open_tx(a, b, deadline=NOW + 86_400_000, finish="any")).id
        h.one(b.sign({"type": "tx/finish", "tx": tx}))
    # Finished txs' deadlines (a day away) must not pile up in the heap.
    assert len(h.seq._deadlines) <= 2 * len(h.seq.open) + _DEADLINE_SLACK
    clock.now = NOW + 5_001
    assert h.seq.expire(clock.now) == 1
    h.seq.flush_projection()
    assert h.store.tx(lingering).status == "timed_out"  # type: ignore[union-attr]


# --- regressions from review ---------------------------------------------------------------


def test_outsider_naming_a_tx_in_any_type_is_refused_and_restart_still_works(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    h = Harness(tmp_path, clock, node_keys)
    a, b, eve = Writer(), Writer(), Writer()
    tx = h.one(open_tx(a, b)).id
    h.refused(eve.sign({"type": "custom/thing", "tx": tx}), "not_a_party")
    assert h.log.head(eve.id) is None
    h.close()
    Harness(tmp_path, clock, node_keys).close()  # replay must not raise


def _failing_once(h: Harness) -> None:
    from chainmail.errors import LogError

    real = h.log.append
    calls = {"n": 0}

    def append(entries):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise LogError("disk full")
        return real(entries)

    h.log.append = append  # type: ignore[method-assign]


def test_failed_append_leaves_no_trace_in_memory(h: Harness, clock: Clock) -> None:
    from chainmail.errors import LogError

    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b, finish="any")).id
    finish = b.sign({"type": "tx/finish", "tx": tx})
    _failing_once(h)
    with pytest.raises(LogError):
        h.submit(finish)
    assert tx in h.seq.open and tx not in h.seq.unsealed
    clock.now += 1000
    assert h.seq.build_block() is not None
    assert h.store.block(1).records == []  # type: ignore[union-attr]  # not sealed as finished
    h.one(finish)  # the client retries: now it lands and closes the tx
    assert h.store.tx(tx).status == "finished"  # type: ignore[union-attr]


def test_failed_tx_open_then_retry_keeps_the_tx(h: Harness) -> None:
    from chainmail.errors import LogError

    a, b = Writer(), Writer()
    opening = open_tx(a, b)
    _failing_once(h)
    with pytest.raises(LogError):
        h.submit(opening)
    tx = h.one(opening).id
    assert h.store.tx(tx) is not None
    h.one(b.sign({"type": "tx/note", "tx": tx, "data": {}}))


def test_timeout_found_while_checking_is_persisted_and_sealed_once(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    h = Harness(tmp_path, clock, node_keys)
    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b, deadline=NOW + 10)).id
    clock.now = NOW + 20
    h.refused(b.sign({"type": "tx/note", "tx": tx, "data": {}}), "tx_closed")
    assert h.store.tx(tx).status == "timed_out"  # type: ignore[union-attr]
    assert h.seq.build_block() is not None
    h.close()
    h2 = Harness(tmp_path, clock, node_keys)
    try:
        h2.one(a.sign({"type": "post"}))
        clock.now += 1000
        assert h2.seq.build_block() is not None
        assert h2.store.block(2).records == []  # type: ignore[union-attr]
        row = h2.store.tx(tx)
        assert row is not None and row.status == "timed_out" and row.block == 1
    finally:
        h2.close()


def test_rebuilt_store_does_not_reseal_timed_out_txs(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    h = Harness(tmp_path, clock, node_keys)
    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b, deadline=NOW + 10)).id
    clock.now = NOW + 20
    h.seq.expire(clock.now)
    assert h.seq.build_block() is not None
    h.close()
    _drop_store(tmp_path)
    h2 = Harness(tmp_path, clock, node_keys)
    try:
        row = h2.store.tx(tx)
        assert row is not None and row.status == "timed_out" and row.block == 1
        assert tx not in h2.seq.open
        h2.one(a.sign({"type": "post"}))
        clock.now += 1000
        h2.seq.build_block()
        assert h2.store.block(2).records == []  # type: ignore[union-attr]
    finally:
        h2.close()


def test_missing_records_blob_is_fatal_not_empty(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    import shutil

    from chainmail.errors import StorageError

    _sealed_then_store_dropped(tmp_path, clock, node_keys)
    shutil.rmtree(tmp_path / "blobs")
    with pytest.raises(StorageError, match="records blob"):
        Harness(tmp_path, clock, node_keys)


def test_channel_message_in_a_tx_bound_channel_follows_the_tx(h: Harness) -> None:
    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b, finish="any")).id
    key = base64.b64encode(bytes(80)).decode()
    box = base64.b64encode(bytes(64)).decode()
    chan = h.one(a.sign({"type": "chan/open", "keys": {a.id: key, b.id: key}, "tx": tx})).id
    posted = h.one(b.sign({"type": "chan/msg", "chan": chan, "box": box})).id
    assert posted in h.store.tx(tx).messages  # type: ignore[union-attr]
    h.one(b.sign({"type": "tx/finish", "tx": tx}))
    h.refused(a.sign({"type": "chan/msg", "chan": chan, "box": box}), "tx_closed")


def test_members_share_a_channel_readers_do_not_even_after_the_tx(h: Harness) -> None:
    # DESIGN §3: a party opens its channel to an auditor. The auditor reads; it
    # does not pass the key on. A share names no tx, so a settled trade's
    # channel can still be opened to a regulator afterwards.
    a, b, auditor, other = Writer(), Writer(), Writer(), Writer()
    tx = h.one(open_tx(a, b, finish="any")).id
    key = base64.b64encode(bytes(80)).decode()
    chan = h.one(a.sign({"type": "chan/open", "keys": {a.id: key, b.id: key}, "tx": tx})).id
    h.one(b.sign({"type": "tx/finish", "tx": tx}))
    assert h.store.tx(tx).status == "finished"  # type: ignore[union-attr]
    shared = h.one(a.sign({"type": "chan/share", "chan": chan, "keys": {auditor.id: key}})).id
    assert shared in [d.id for d in h.store.inbox(auditor.id, 10)]
    h.refused(
        auditor.sign({"type": "chan/share", "chan": chan, "keys": {other.id: key}}), "not_a_party"
    )
    h.refused(
        a.sign({"type": "chan/share", "chan": chan, "keys": {other.id: key}, "tx": tx}), "tx_closed"
    )


def test_only_a_party_shares_a_tx_bound_channel_before_or_after_the_tx(h: Harness) -> None:
    # A member that is not a party reads the channel; like a reader, it does not
    # pass the key on (only parties post chan/* tied to the tx, DESIGN §3), also
    # once the tx has closed and a party may still share without naming it.
    a, b, auditor, other = Writer(), Writer(), Writer(), Writer()
    tx = h.one(open_tx(a, b, finish="any")).id
    key = base64.b64encode(bytes(80)).decode()
    keys = {a.id: key, b.id: key, auditor.id: key}
    chan = h.one(a.sign({"type": "chan/open", "keys": keys, "tx": tx})).id
    share = {"type": "chan/share", "chan": chan, "keys": {other.id: key}}

    def refused() -> None:
        auditor.state = None  # nothing of its feed is logged
        h.refused(auditor.sign(share), "not_a_party")

    refused()
    h.one(b.sign({"type": "tx/finish", "tx": tx}))
    refused()
    assert h.seq.build_block() is not None  # sealed: the tx is only in the store now
    assert tx not in h.seq.unsealed
    refused()
    h.one(b.sign(share))
    assert other.id in h.store.channels()[chan]["readers"]


def test_refused_messages_cost_no_rate_tokens(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    log_ = SqliteLog(tmp_path / "log.sqlite", synchronous="NORMAL")
    store = SqliteStore(tmp_path / "store.sqlite", synchronous="NORMAL")
    seq = Sequencer(log_, store, node_keys, clock=clock, identity_rate=0.001, identity_burst=2)
    try:
        w = Writer()
        unknown = "%" + "A" * 43 + "=.sha256"
        for _ in range(3):
            w.state = None
            (r,) = seq.process([ssb.check(w.sign({"type": "tx/note", "tx": unknown, "data": {}}))])
            assert isinstance(r, Error) and r.code == "unknown_tx"
        w.state = None
        (ok,) = seq.process([ssb.check(w.sign({"type": "post"}))])
        assert isinstance(ok, Accepted)
    finally:
        log_.close()
        store.close()


def test_fork_within_one_batch_keeps_both_messages(h: Harness) -> None:
    a = Writer()
    first = a.sign({"type": "post", "n": 1})
    twin = ssb.create(a.keys, {"type": "post", "n": 2}, None, a.time + 5)
    results = h.submit(first, twin)
    assert isinstance(results[0], Accepted) and isinstance(results[1], Error)
    ((_, kept, rejected),) = h.store.forks(a.id)
    assert ssb.message_id(orjson.loads(kept)) == ssb.message_id(first)
    assert ssb.message_id(orjson.loads(rejected)) == ssb.message_id(twin)


def test_fork_evidence_is_one_pair_per_feed_position(h: Harness) -> None:
    a = Writer()
    first = a.sign({"type": "post", "n": 1})
    h.one(first)
    for n in (2, 3, 4):
        h.refused(ssb.create(a.keys, {"type": "post", "n": n}, None, a.time + n), "fork")
    ((sequence, kept, rejected),) = h.store.forks(a.id)
    assert sequence == 1 and ssb.message_id(orjson.loads(kept)) == ssb.message_id(first)
    assert orjson.loads(rejected)["content"]["n"] == 2  # the first variant is the evidence


def test_fork_evidence_costs_rate_tokens(tmp_path: Path, clock: Clock, node_keys: Keypair) -> None:
    # A key holder signing variants of many past positions cannot grow the store
    # faster than its identity's rate: past the burst, forks are refused unrecorded.
    log_ = SqliteLog(tmp_path / "log.sqlite", synchronous="NORMAL")
    store = SqliteStore(tmp_path / "store.sqlite", synchronous="NORMAL")
    seq = Sequencer(log_, store, node_keys, clock=clock, identity_rate=0.001, identity_burst=3)
    try:
        w = Writer()
        logged = [w.sign({"type": "post", "n": i}) for i in range(3)]
        assert all(isinstance(r, Accepted) for r in seq.process([ssb.check(m) for m in logged]))
        seq.flush_projection()
        states: list[ssb.FeedState | None] = [None]
        states += [ssb.FeedState(id=ssb.message_id(m), sequence=m["sequence"]) for m in logged]
        results = [
            seq.process([ssb.check(ssb.create(w.keys, {"type": "post", "fork": i}, states[i], 1))])[
                0
            ]
            for i in range(3)
        ]
        assert all(isinstance(r, Error) and r.code == "fork" for r in results)
        # The three posts took the whole burst: no evidence could be paid for.
        assert store.forks(w.id) == []
        clock.now += 2_000_000  # the bucket refills (rate 0.001/s: 2,000 s for two tokens)
        (again,) = seq.process([ssb.check(ssb.create(w.keys, {"type": "post"}, None, 2))])
        assert isinstance(again, Error) and again.code == "fork"
        assert [s for s, _, _ in store.forks(w.id)] == [1]
    finally:
        log_.close()
        store.close()


def test_a_note_joins_its_tx_without_rewriting_the_tx_row(h: Harness) -> None:
    # A long tx is not written whole on every message: a note adds one
    # tx_messages row, and only a finish (or a close) writes the tx's row.
    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b)).id
    written: list[Projection] = []
    h.seq.on_projected = lambda projection, _: written.append(projection)
    notes = [
        h.one(w.sign({"type": "tx/note", "tx": tx, "data": {"n": i}})).id
        for i, w in enumerate([a, b] * 3)
    ]
    assert [sorted(p.txs) for p in written] == [[]] * len(notes)
    assert [t for p in written for t in p.tx_messages] == [
        (tx, i + 1, 0, 1 + i) for i in range(len(notes))
    ]
    finish_b = h.one(b.sign({"type": "tx/finish", "tx": tx})).id
    assert sorted(written[-1].txs) == [tx]
    row = h.store.tx(tx)
    assert row is not None and row.status == "open" and row.finished_by == [b.id]
    assert row.messages == [tx, *notes, finish_b]
    finish_a = h.one(a.sign({"type": "tx/finish", "tx": tx})).id
    row = h.store.tx(tx)
    assert row is not None and row.status == "finished"
    assert row.messages == [tx, *notes, finish_b, finish_a]
    assert [
        t.messages for t in h.store.list_txs(party=a.id, status=None, limit=5, before=None)
    ] == [row.messages]


def test_a_tx_keeps_its_messages_in_order_over_batches_and_a_restart(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    h = Harness(tmp_path, clock, node_keys)
    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b)).id
    first = [h.one(a.sign({"type": "tx/note", "tx": tx, "data": {"n": i}})).id for i in range(3)]
    # Logged, not projected: the restart's replay links these.
    later = [b.sign({"type": "tx/note", "tx": tx, "data": {"n": i}}) for i in range(3, 6)]
    results = h.submit(*later, project=False)
    assert all(isinstance(r, Accepted) for r in results)
    h.close()
    h2 = Harness(tmp_path, clock, node_keys)
    try:
        ids = [tx, *first, *(r.id for r in results if isinstance(r, Accepted))]
        assert h2.store.tx(tx).messages == ids  # type: ignore[union-attr]
        assert [t.messages for t in h2.store.open_txs()] == [ids]
        assert h2.seq.open[tx].messages == ids
        # Replaying again (a crash after the projection) adds nothing twice.
        h2.seq.catch_up()
        assert h2.store.tx(tx).messages == ids  # type: ignore[union-attr]
        done = h2.one(a.sign({"type": "tx/finish", "tx": tx}))
        done_b = h2.one(b.sign({"type": "tx/finish", "tx": tx}))
        assert h2.seq.build_block() is not None
        (record,) = h2.store.block(1).records  # type: ignore[union-attr]
        assert record["messages"] == [*ids, done.id, done_b.id]
        assert h2.store.tx(tx).messages == record["messages"]  # type: ignore[union-attr]
    finally:
        h2.close()


def _text_parties(conn: sqlite3.Connection) -> None:
    """``tx_parties`` as before session 13: the party's id and the tx id as text."""
    conn.execute(
        "CREATE TABLE text_parties (party TEXT NOT NULL, opened INTEGER NOT NULL,"
        " tx TEXT NOT NULL, PRIMARY KEY (party, opened, tx)) WITHOUT ROWID"
    )
    conn.execute(
        "INSERT INTO text_parties SELECT r.id, p.opened, t.id FROM tx_parties p"
        " JOIN recipients r ON r.no = p.party JOIN txs t ON t.pos = p.tx_pos"
    )
    conn.execute("DROP TABLE tx_parties")
    conn.execute("ALTER TABLE text_parties RENAME TO tx_parties")


def _as_older_store(path: Path, lists: dict[str, list[str]], *sql: str) -> None:
    """Rewrite ``path``'s store to the layout before session 12: each tx's ids as a
    JSON list in its row, no ``tx_messages``, no ``txs.pos``; then run ``sql`` on it."""
    conn = sqlite3.connect(path / "store.sqlite", isolation_level=None)
    try:
        _text_parties(conn)
        conn.execute("DROP TABLE tx_messages")
        conn.execute("ALTER TABLE txs DROP COLUMN pos")
        for tx, ids in lists.items():
            conn.execute("UPDATE txs SET messages=? WHERE id=?", (json.dumps(ids), tx))
        for statement in sql:
            conn.execute(statement)
    finally:
        conn.close()


def _as_session_12_store(path: Path) -> None:
    """Rewrite ``path``'s store to session 12's layout: ``tx_messages`` keyed by the
    tx id, no ``txs.pos``."""
    conn = sqlite3.connect(path / "store.sqlite", isolation_level=None)
    try:
        conn.execute("BEGIN")
        _text_parties(conn)
        conn.execute(
            "CREATE TABLE by_id (tx TEXT NOT NULL, n INTEGER NOT NULL, pos INTEGER NOT NULL,"
            " PRIMARY KEY (tx, n)) WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO by_id SELECT t.id, m.n, m.pos FROM tx_messages m"
            " JOIN txs t ON t.pos = m.tx_pos"
        )
        conn.execute("DROP TABLE tx_messages")
        conn.execute("ALTER TABLE by_id RENAME TO tx_messages")
        conn.execute("ALTER TABLE txs DROP COLUMN pos")
        conn.execute("COMMIT")
    finally:
        conn.close()


@pytest.mark.parametrize("layout", ["json", "by_id"])
def test_an_older_store_moves_its_tx_messages_on_open(
    tmp_path: Path, clock: Clock, node_keys: Keypair, layout: str
) -> None:
    """Before session 12 each tx's ids were a list in its row (``json``); in
    session 12 ``tx_messages`` was keyed by the tx id (``by_id``)."""
    h = Harness(tmp_path, clock, node_keys)
    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b)).id
    ids = [tx, *(h.one(b.sign({"type": "tx/note", "tx": tx, "data": {}})).id for _ in range(3))]
    other = h.one(open_tx(b, a)).id
    h.close()
    if layout == "json":
        _as_older_store(tmp_path, {tx: ids, other: [other]})
    else:
        _as_session_12_store(tmp_path)
    h2 = Harness(tmp_path, clock, node_keys)
    try:
        assert h2.store.tx(tx).messages == ids  # type: ignore[union-attr]
        assert h2.store.tx(other).messages == [other]  # type: ignore[union-attr]
        assert h2.seq.open[tx].messages == ids
        assert {r[0] for r in h2.store._w.execute("SELECT DISTINCT messages FROM txs")} == {"[]"}
        tables = {r[0] for r in h2.store._w.execute("SELECT name FROM sqlite_master")}
        assert not tables & {"tx_messages_v2", "tx_parties_v2"}
        for party in (a.id, b.id):
            listed = h2.store.list_txs(party=party, status=None, limit=10, before=None)
            assert {t.id for t in listed} == {tx, other}
        more = h2.one(a.sign({"type": "tx/note", "tx": tx, "data": {}})).id
        assert h2.store.tx(tx).messages == [*ids, more]  # type: ignore[union-attr]
    finally:
        h2.close()


def test_tx_messages_are_keyed_by_the_tx_open_position(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    h = Harness(tmp_path, clock, node_keys)
    try:
        a, b = Writer(), Writer()
        opened = h.one(open_tx(a, b))
        note = h.one(b.sign({"type": "tx/note", "tx": opened.id, "data": {}}))
        keyed = h.store._w.execute("SELECT tx_pos, n, pos FROM tx_messages ORDER BY n").fetchall()
        at = _pos(opened.pipeline, opened.index)
        assert keyed == [(at, 0, at), (at, 1, _pos(note.pipeline, note.index))]
    finally:
        h.close()


def test_a_tx_messages_migration_that_fails_leaves_the_older_layout_to_migrate_again(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    h = Harness(tmp_path, clock, node_keys)
    a, b = Writer(), Writer()
    tx = h.one(open_tx(a, b)).id
    ids = [tx, h.one(b.sign({"type": "tx/note", "tx": tx, "data": {}})).id]
    h.close()
    # The migration's last step fails, as a crash before its commit would end it.
    _as_older_store(
        tmp_path,
        {tx: ids},
        "CREATE TRIGGER boom BEFORE UPDATE ON txs BEGIN SELECT RAISE(ABORT, 'boom'); END",
    )
    with pytest.raises(StorageError, match="boom"):
        SqliteStore(tmp_path / "store.sqlite")
    conn = sqlite3.connect(tmp_path / "store.sqlite", isolation_level=None)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "tx_messages" not in tables  # created in the transaction that failed
    conn.execute("DROP TRIGGER boom")
    conn.close()
    h2 = Harness(tmp_path, clock, node_keys)
    try:
        assert h2.store.tx(tx).messages == ids  # type: ignore[union-attr]
    finally:
        h2.close()


# --------------------------------------------------------------------------- several pipelines


def _writer_in(pipeline: int, pipelines: int) -> Writer:
    from chainmail.log import pipeline_of

    while True:
        w = Writer()
        if pipeline_of(w.id, pipelines) == pipeline:
            return w


def _rows(store: SqliteStore, ids: list[str]) -> dict[str, Any]:
    return {t: store.tx(t) for t in ids}


def test_a_finish_in_one_pipeline_for_a_tx_opened_in_another_replays(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    log = SqliteLog(tmp_path / "log.sqlite", pipelines=2, synchronous="NORMAL")
    store = SqliteStore(tmp_path / "store.sqlite", synchronous="NORMAL")
    seq = Sequencer(log, store, node_keys, clock=clock)
    opener, other = _writer_in(1, 2), _writer_in(0, 2)
    opened = opener.sign(
        {
            "type": "tx/open",
            "parties": [opener.id, other.id],
            "deadline": NOW + 10_000,
            "finish": "any",
        }
    )
    finish = other.sign({"type": "tx/finish", "tx": ssb.message_id(opened)})
    results = seq.process([_check(opened), _check(finish)])  # one batch; then a crash
    assert [r.pipeline for r in results if isinstance(r, Accepted)] == [1, 0]
    log.close()
    store.close()
    log = SqliteLog(tmp_path / "log.sqlite", pipelines=2, synchronous="NORMAL")
    store = SqliteStore(tmp_path / "store.sqlite", synchronous="NORMAL")
    again = Sequencer(log, store, node_keys, clock=clock)
    row = store.tx(ssb.message_id(opened))
    assert row is not None and row.status == "finished" and len(row.messages) == 2
    clock.now += 20_000
    again.expire(clock.now)
    again.flush_projection()
    assert store.tx(ssb.message_id(opened)).status == "finished"  # type: ignore[union-attr]
    log.close()
    store.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_store_rebuilt_from_two_pipelines_is_the_store_it_was(
    tmp_path: Path, clock: Clock, seed: int
) -> None:
    import random

    from chainmail.log import pipeline_of

    rng = random.Random(seed)
    node = next(k for k in iter(Keypair.generate, None) if pipeline_of(k.id, 2) == 0)
    log = SqliteLog(tmp_path / "log.sqlite", pipelines=2, synchronous="NORMAL")
    store = SqliteStore(tmp_path / "store.sqlite", synchronous="NORMAL")
    seq = Sequencer(log, store, node, clock=clock)
    people = [_writer_in(p % 2, 2) for p in range(6)]
    opens: list[str] = []
    for step in range(40):
        clock.now += rng.randint(0, 300)
        batch: list[tuple[Writer, ssb.FeedState | None, dict[str, Any]]] = []
        for _ in range(rng.randint(1, 6)):  # a batch mixes both pipelines
            w = rng.choice(people)
            state = w.state
            if rng.random() < 0.3 or not opens:
                b = rng.choice([p for p in people if p is not w])
                msg = w.sign(
                    {
                        "type": "tx/open",
                        "parties": [w.id, b.id],
                        "deadline": clock.now + rng.randint(0, 1_500),
                        "finish": rng.choice(["all", "any", "opener"]),
                    }
                )
                opens.append(ssb.message_id(msg))
            else:
                kind = rng.choice(["tx/note", "tx/finish"])
                msg = w.sign({"type": kind, "tx": rng.choice(opens), "data": {}})
            batch.append((w, state, msg))
        results = seq.process([_check(m) for _, _, m in batch])
        for (w, state, msg), result in reversed(list(zip(batch, results, strict=True))):
            # Refused (and so every later one of its feed in the batch): the feed
            # is back where it was before it.
            refused = not isinstance(result, Accepted)
            if refused and w.state is not None and w.state.id == ssb.message_id(msg):
                w.state = state
        seq.flush_projection()
        if step % 7 == 6:
            seq.build_block()
    clock.now += 5_000
    seq.build_block()
    before = _rows(store, opens)
    log.close()
    store.close()
    _drop_store(tmp_path)
    log = SqliteLog(tmp_path / "log.sqlite", pipelines=2, synchronous="NORMAL")
    store = SqliteStore(tmp_path / "store.sqlite", synchronous="NORMAL")
    rebuilt = Sequencer(log, store, node, clock=clock)
    rebuilt.flush_projection()
    assert _rows(store, opens) == before
    assert rebuilt.build_block() is None  # nothing left to seal a second time
    log.close()
    store.close()


def test_a_rebuilt_store_keeps_the_order_of_one_batch_across_pipelines(
    tmp_path: Path, clock: Clock
) -> None:
    # Two registrars attest one identity in one batch (one millisecond): the
    # later attestation stands. The registrars' feeds are in different
    # pipelines, the later one in pipeline 0: a replay merging the pipelines by
    # time and then by pipeline number read the earlier one last.
    from chainmail.log import pipeline_of

    node = next(k for k in iter(Keypair.generate, None) if pipeline_of(k.id, 2) == 0)
    first, later, subject = _writer_in(1, 2), _writer_in(0, 2), Writer()

    def open_node() -> tuple[SqliteLog, SqliteStore, Sequencer]:
        log = SqliteLog(tmp_path / "log.sqlite", pipelines=2, synchronous="NORMAL")
        store = SqliteStore(tmp_path / "store.sqlite", synchronous="NORMAL")
        seq = Sequencer(log, store, node, clock=clock, registrars=[first.id, later.id])
        return log, store, seq

    def attested(store: SqliteStore) -> Any:
        (record,) = store.identity_records([subject.id])
        return record

    log, store, seq = open_node()
    claims = [
        w.sign({"type": "attest", "subject": subject.id, "name": n})
        for w, n in ((first, "First Name plc"), (later, "Later Name plc"))
    ]
    assert all(isinstance(r, Accepted) for r in seq.process([_check(m) for m in claims]))
    seq.flush_projection()
    live = attested(store)
    assert "Later Name plc" in str(live)
    log.close()
    store.close()
    _drop_store(tmp_path)
    log, store, seq = open_node()
    seq.flush_projection()
    assert attested(store) == live
    log.close()
    store.close()


# --------------------------------------------------------------------------- a clock stepped back


def test_a_wall_clock_stepped_back_does_not_rate_limit_the_feeds_that_just_posted(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    # NTP steps the node's clock back a minute: a feed that posted a moment ago
    # is still far within its rate, and must not wait for the minute to pass.
    h = Harness(tmp_path, clock, node_keys)
    a = Writer()
    h.one(a.sign({"type": "post", "n": 1}))
    clock.now -= 60_000
    second = h.one(a.sign({"type": "post", "n": 2}))
    h.close()
    # ... and the log's times never run backwards, also across a restart.
    h = Harness(tmp_path, clock, node_keys)
    try:
        third = h.one(a.sign({"type": "post", "n": 3}))
        received = [h.store.message(r.id).received for r in (second, third)]  # type: ignore[union-attr]
        assert received == [NOW, NOW]
    finally:
        h.close()


def test_a_wall_clock_stepped_back_does_not_seal_a_tx_twice_from_two_pipelines(
    tmp_path: Path, clock: Clock
) -> None:
    from chainmail.log import pipeline_of

    node = next(k for k in iter(Keypair.generate, None) if pipeline_of(k.id, 2) == 0)
    log = SqliteLog(tmp_path / "log.sqlite", pipelines=2, synchronous="NORMAL")
    store = SqliteStore(tmp_path / "store.sqlite", synchronous="NORMAL")
    seq = Sequencer(log, store, node, clock=clock)
    opener, other = _writer_in(1, 2), _writer_in(0, 2)
    opened = opener.sign(
        {
            "type": "tx/open",
            "parties": [opener.id, other.id],
            "deadline": NOW + 60_000,
            "finish": "any",
        }
    )
    tx = ssb.message_id(opened)
    assert isinstance(seq.process([_check(opened)])[0], Accepted)
    seq.flush_projection()
    clock.now -= 5_000  # the wall clock steps back; the finish and its block come after
    assert isinstance(
        seq.process([_check(other.sign({"type": "tx/finish", "tx": tx}))])[0], Accepted
    )
    seq.flush_projection()
    assert seq.build_block() is not None
    assert store.tx(tx).block == 1  # type: ignore[union-attr]
    log.close()
    store.close()
    _drop_store(tmp_path)  # the store rebuilt from the log, as after losing it
    log = SqliteLog(tmp_path / "log.sqlite", pipelines=2, synchronous="NORMAL")
    store = SqliteStore(tmp_path / "store.sqlite", synchronous="NORMAL")
    try:
        rebuilt = Sequencer(log, store, node, clock=clock)
        rebuilt.flush_projection()
        row = store.tx(tx)
        assert row is not None and row.status == "finished" and len(row.messages) == 2, row
        clock.now += 10_000
        assert rebuilt.build_block() is None  # nothing left to seal a second time
    finally:
        log.close()
        store.close()


def test_a_tx_record_is_encoded_when_it_closes_and_sealed_the_same_after_a_restart(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    """Txs closed in this process reach the draft with their record's bytes made
    already; after a restart their records are made by the draft. The blob and
    its root are the same bytes either way."""
    from chainmail import blocks

    h = Harness(tmp_path, clock, node_keys)
    a, b = Writer(), Writer()
    finished = h.one(open_tx(a, b, finish="any")).id
    h.one(b.sign({"type": "tx/finish", "tx": finished}))
    timed_out = h.one(open_tx(a, b, deadline=NOW + 1_000)).id
    clock.now = NOW + 2_000
    draft = h.seq.draft_block()
    assert draft is not None
    assert [r["tx"] for r in draft.records] == [finished, timed_out]
    assert all(made is not None for made in draft.encoded)
    expected = blocks.encode_records(draft.records)
    assert blocks.join_records([m for m in draft.encoded if m is not None]) == expected
    h.seq.abandon_block()
    h.close()

    h = Harness(tmp_path, clock, node_keys)  # a restart: the txs come back from the store
    try:
        again = h.seq.draft_block()
        assert again is not None and again.records == draft.records
        # The finished tx came back closed: its record is the draft's to make (the
        # timed-out one came back open, and timed out again as the draft expired it).
        assert again.encoded[0] is None
        sealed = h.seq.seal_records(again)
        assert sealed.records_root == expected[1]
        assert h.store.get_blob(sealed.records_id) == expected[0]
        h.seq.append_block(sealed)
        assert h.seq._encoded == {} and h.seq.build_block() is None
    finally:
        h.close()


def test_a_store_ahead_of_its_log_is_refused_and_rebuilt_once_moved_aside(
    tmp_path: Path, clock: Clock, node_keys: Keypair
) -> None:
    # A log at synchronous=NORMAL can lose, in a power loss, commits the store
    # had projected. Here: the log as it was after two messages, the store
    # after four.
    h = Harness(tmp_path, clock, node_keys)
    a = Writer()
    kept = [h.one(a.sign({"type": "post", "text": str(i)})).id for i in range(2)]
    h.close()
    early = sqlite3.connect(":memory:")
    with contextlib.closing(sqlite3.connect(tmp_path / "log.sqlite")) as log_db:
        log_db.backup(early)
    h = Harness(tmp_path, clock, node_keys)
    lost = [h.one(a.sign({"type": "post", "text": str(i)})).id for i in range(2, 4)]
    h.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "log.sqlite")) as log_db:
        early.backup(log_db)
    early.close()

    with pytest.raises(StorageError, match=r"ahead of the log: pipeline 0 projected to 4 entries,"):
        Harness(tmp_path, clock, node_keys)

    _drop_store(tmp_path)
    h = Harness(tmp_path, clock, node_keys)
    try:
        assert [h.store.message(m) is not None for m in kept + lost] == [True, True, False, False]
        # The feed goes on from what the log holds: the lost sequence numbers are free again.
        head = h.log.head(a.id)
        assert head is not None and head.sequence == 2
        a.state = ssb.FeedState(id=kept[-1], sequence=2)
        assert h.one(a.sign({"type": "post", "text": "3 again"})).id not in lost
    finally:
        h.close()
