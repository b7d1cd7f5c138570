"""Witnessed blocks: signatures in stages, the node's stage records, restarts (DESIGN §7)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest

from chainmail import ssb
from chainmail.errors import Error
from chainmail.keys import Keypair
from chainmail.sequencer import Accepted, Sequencer
from chainmail.sqlite import SqliteLog, SqliteStore
from chainmail.witnesses import STAGES, WINDOW, Stages, stage_root
from support.feeds import Writer

NOW = 1_800_000_000_000


class Node:
    """A sequencer on SQLite with two witnesses, both needed for a stage."""

    def __init__(self, path: Path, identity: Keypair, witnesses: list[Writer]) -> None:
        self.log = SqliteLog(path / "log.sqlite", synchronous="NORMAL")
        self.store = SqliteStore(path / "store.sqlite", synchronous="NORMAL")
        self.now = NOW
        self.seq = Sequencer(
            self.log,
            self.store,
            identity,
            clock=lambda: self.now,
            witnesses=[w.id for w in witnesses],
            threshold=2,
        )

    def submit(self, msg: dict[str, Any]) -> Accepted | Error:
        (result,) = self.seq.process([ssb.check(msg)])
        self.seq.flush_projection()
        return result

    def close(self) -> None:
        self.log.close()
        self.store.close()


def post(node: Node, w: Writer, content: dict[str, Any]) -> Accepted | Error:
    """Sign and submit; a refused message leaves ``w``'s feed where it was."""
    state = w.state
    result = node.submit(w.sign(content))
    if isinstance(result, Error):
        w.state = state
    return result


def sign(node: Node, w: Writer, block: Accepted, stage: str) -> Accepted | Error:
    return post(node, w, {"type": "block/sign", "block": block.id, "height": 1, "stage": stage})


def code(result: Accepted | Error) -> str:
    assert isinstance(result, Error), result
    return result.code


def test_a_block_is_sealed_stage_by_stage_by_its_witnesses(tmp_path: Path) -> None:
    one, two, outsider, alice = Writer(), Writer(), Writer(), Writer()
    node = Node(tmp_path, Keypair.generate(), [one, two])
    try:
        posted = post(node, alice, {"type": "post"})
        assert isinstance(posted, Accepted)
        block = node.seq.build_block()
        assert block is not None
        assert not node.seq.dirty

        # Only witnesses sign, only this node's block, stage by stage, once each.
        assert code(sign(node, outsider, block, "precommit")) == "not_admitted"
        wrong = {"type": "block/sign", "block": posted.id, "height": 1, "stage": "precommit"}
        assert code(post(node, one, wrong)) == "invalid_format"
        later = {"type": "block/sign", "block": block.id, "height": 2, "stage": "precommit"}
        assert code(post(node, one, later)) == "invalid_format"
        assert code(sign(node, one, block, "commit")) == "invalid_format"  # not a feed's order
        assert code(sign(node, one, block, "final")) == "invalid_format"
        first = sign(node, one, block, "precommit")
        assert isinstance(first, Accepted)
        assert code(sign(node, one, block, "precommit")) == "invalid_format"
        assert not node.seq.dirty  # a signature needs no block of its own
        assert node.seq.record_stages() == []  # one of two

        signs = {one.id: first.id}
        for n, stage in enumerate(STAGES):
            if n:
                again = sign(node, one, block, stage)
                assert isinstance(again, Accepted), again
                signs[one.id] = again.id
            second = sign(node, two, block, stage)
            assert isinstance(second, Accepted), second
            signs[two.id] = second.id
            (recorded,) = node.seq.record_stages()
            node.seq.flush_projection()
            assert node.seq.record_stages() == []  # each stage once
            stages = node.store.block_stages(1)
            assert [s["stage"] for s in stages] == list(STAGES[: n + 1])
            witnessed = sorted(signs)
            assert stages[-1]["id"] == recorded.id
            assert stages[-1]["signers"] == witnessed
            assert stages[-1]["signs"] == [signs[w] for w in witnessed]
            assert base64.b64decode(stages[-1]["root"]) == stage_root(stages[-1]["signs"])
        assert node.seq.stages is not None and len(node.seq.stages) == 0  # sealed
        # A signature after the seal is late: accepted, counted for nothing.
        assert isinstance(sign(node, one, block, "seal"), Accepted)
        assert node.seq.record_stages() == [] and len(node.store.block_stages(1)) == 3
        assert not node.seq.dirty
    finally:
        node.close()


def test_witnessing_resumes_after_a_restart_and_a_rebuilt_store(tmp_path: Path) -> None:
    one, two, alice = Writer(), Writer(), Writer()
    identity = Keypair.generate()
    node = Node(tmp_path, identity, [one, two])
    assert isinstance(post(node, alice, {"type": "post"}), Accepted)
    block = node.seq.build_block()
    assert block is not None
    assert isinstance(sign(node, one, block, "precommit"), Accepted)
    node.close()
    for rebuild in (False, True):
        if rebuild:
            for name in ("store.sqlite", "store.sqlite-wal", "store.sqlite-shm"):
                (tmp_path / name).unlink(missing_ok=True)
        node = Node(tmp_path, identity, [one, two])
        try:
            assert not node.seq.dirty  # the signature is no activity to seal
            assert code(sign(node, one, block, "precommit")) == "invalid_format"  # counted
        finally:
            node.close()
    node = Node(tmp_path, identity, [one, two])
    try:
        assert isinstance(sign(node, two, block, "precommit"), Accepted)
        assert len(node.seq.record_stages()) == 1
        node.seq.flush_projection()
        assert [s["stage"] for s in node.store.block_stages(1)] == ["precommit"]
        assert node.store.witnessing(100) == [(1, block.id, 1, {})]
    finally:
        node.close()


def test_a_block_the_log_did_not_take_is_forgotten(tmp_path: Path) -> None:
    from chainmail.errors import LogError

    one, two, alice = Writer(), Writer(), Writer()
    node = Node(tmp_path, Keypair.generate(), [one, two])
    try:
        assert isinstance(post(node, alice, {"type": "post"}), Accepted)
        real = node.log.append

        def full(entries: Any) -> Any:
            raise LogError("disk full")

        node.log.append = full  # type: ignore[method-assign]
        with pytest.raises(LogError):
            node.seq.build_block()
        node.log.append = real  # type: ignore[method-assign]
        node.now += 1000  # the block built again is another message, at height 1 too
        block = node.seq.build_block()
        assert block is not None and node.store.block(1) is not None
        for w in (one, two):
            assert isinstance(sign(node, w, block, "precommit"), Accepted)
        assert len(node.seq.record_stages()) == 1
    finally:
        node.close()


def test_a_late_signature_names_the_sealed_block_before_and_after_a_restart(
    tmp_path: Path,
) -> None:
    one, two, alice = Writer(), Writer(), Writer()
    identity = Keypair.generate()
    node = Node(tmp_path, identity, [one, two])
    posted = post(node, alice, {"type": "post"})
    assert isinstance(posted, Accepted)
    block = node.seq.build_block()
    assert block is not None
    for stage in STAGES:
        for w in (one, two):
            assert isinstance(sign(node, w, block, stage), Accepted)
        assert len(node.seq.record_stages()) == 1
        node.seq.flush_projection()
    assert node.seq.stages is not None and len(node.seq.stages) == 0  # sealed
    for restart in (False, True):
        if restart:
            node.close()
            node = Node(tmp_path, identity, [one, two])
        try:
            # Late, so not counted; but still of this node's block at that height.
            forged = {"type": "block/sign", "block": posted.id, "height": 1, "stage": "seal"}
            assert code(post(node, one, forged)) == "invalid_format"
            assert isinstance(sign(node, one, block, "seal"), Accepted), restart
            later = {"type": "block/sign", "block": block.id, "height": 2, "stage": "precommit"}
            assert code(post(node, one, later)) == "invalid_format"  # no block 2
        finally:
            if restart:
                node.close()


def test_a_stage_too_large_to_record_leaves_the_others_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    many, alice = [Writer() for _ in range(61)], Writer()
    log = SqliteLog(tmp_path / "log.sqlite", synchronous="NORMAL")
    store = SqliteStore(tmp_path / "store.sqlite", synchronous="NORMAL")
    try:
        seq = Sequencer(
            log,
            store,
            Keypair.generate(),
            clock=lambda: NOW,
            witnesses=[w.id for w in many],
            threshold=2,
        )
        built = []
        for _ in range(2):
            (posted,) = seq.process([ssb.check(alice.sign({"type": "post"}))])
            assert isinstance(posted, Accepted)
            block = seq.build_block()
            assert block is not None
            built.append(block)
        # Block 1's precommit has 61 signers: its record is past the 8 KiB a message may be.
        for height, block, signers in ((1, built[0], many), (2, built[1], many[:2])):
            for w in signers:
                content = {
                    "type": "block/sign",
                    "block": block.id,
                    "height": height,
                    "stage": "precommit",
                }
                (result,) = seq.process([ssb.check(w.sign(content))])
                assert isinstance(result, Accepted), result
        assert len(seq.record_stages()) == 1
        seq.flush_projection()
        assert [s["stage"] for s in store.block_stages(2)] == ["precommit"]
        assert store.block_stages(1) == [] and "stage precommit of block 1" in caplog.text
        assert seq.record_stages() == []  # said once, not on every tick
    finally:
        log.close()
        store.close()


def test_a_signature_naming_a_tx_is_held_to_the_tx_rules(tmp_path: Path) -> None:
    one, two, alice, bob = Writer(), Writer(), Writer(), Writer()
    node = Node(tmp_path, Keypair.generate(), [one, two])
    try:
        opened = post(
            node,
            alice,
            {"type": "tx/open", "parties": [alice.id, bob.id], "deadline": NOW + 60_000},
        )
        assert isinstance(opened, Accepted)
        block = node.seq.build_block()
        assert block is not None
        signed = {"type": "block/sign", "block": block.id, "height": 1, "stage": "precommit"}
        # A witness is no party: its signature may not join the trade's messages.
        assert code(post(node, one, {**signed, "tx": opened.id})) == "not_a_party"
        assert node.seq.open[opened.id].messages == [opened.id]
        assert isinstance(post(node, one, signed), Accepted)
    finally:
        node.close()


def test_a_node_without_witnesses_refuses_signatures(tmp_path: Path) -> None:
    log = SqliteLog(tmp_path / "log.sqlite", synchronous="NORMAL")
    store = SqliteStore(tmp_path / "store.sqlite", synchronous="NORMAL")
    try:
        seq = Sequencer(log, store, Keypair.generate(), clock=lambda: NOW)
        w = Writer()
        msg = w.sign(
            {
                "type": "block/sign",
                "block": "%" + "A" * 43 + "=.sha256",
                "height": 1,
                "stage": "precommit",
            }
        )
        (result,) = seq.process([ssb.check(msg)])
        assert isinstance(result, Error) and result.code == "not_admitted"
        assert seq.record_stages() == []
    finally:
        log.close()
        store.close()


def test_a_day_of_unsealed_blocks_is_taken_in_without_a_walk_per_block() -> None:
    import time

    stages = Stages(["@a", "@b"], 2)
    started = time.perf_counter()
    for height in range(1, WINDOW + 1):  # witnesses away for a day: a restart loads these
        stages.load(height, f"%{height}", 0, {})
    # Each block walked every one before it: about two minutes, on the writer thread.
    assert time.perf_counter() - started < 5
    assert len(stages) == WINDOW
    stages.see_block(WINDOW + 1, "%new")
    stages.see_block(WINDOW + 2, "%newer")
    assert len(stages) == WINDOW  # the two lowest fell out of the window
    sign = {"type": "block/sign", "block": "%2", "height": 2, "stage": "precommit"}
    assert not stages.see_sign("%s", "@a", sign)
    assert stages.see_sign("%s", "@a", {**sign, "block": "%3", "height": 3})


def test_ready_looks_only_at_stages_with_their_threshold() -> None:
    import time

    stages = Stages(["@a", "@b"], 2)
    for height in range(1, WINDOW + 1):  # witnesses away for a day: nothing sealed
        stages.see_block(height, f"%{height}")
    sign = {"type": "block/sign", "block": "%7", "height": 7, "stage": "precommit"}
    assert stages.see_sign("%s1", "@a", sign)
    started = time.perf_counter()
    for _ in range(100):  # five seconds of block-timer ticks
        assert stages.ready() == []
    # Each call walked every unsealed block: ~9 ms each, on the writer thread.
    assert time.perf_counter() - started < 0.1
    assert stages.see_sign("%s2", "@b", sign)
    (record,) = stages.ready()
    assert (record.height, record.stage, record.signs) == (7, "precommit", ("%s1", "%s2"))
    assert stages.ready() == []  # being posted
    stages.see_stage({"height": 7, "block": "%7", "stage": "precommit"})
    assert stages.ready() == []  # the next stage has no signatures yet
    stages.load(9, "%9", 1, {"@a": "%s3", "@b": "%s4", "@gone": "%s5"})
    assert [(r.height, r.stage) for r in stages.ready()] == [(9, "commit")]
    stages.load(10, "%10", 0, {"@a": "%s6", "@gone": "%s7"})  # one of them no longer counts
    assert stages.ready() == []
    stages.load(11, "%11", 0, {"@a": "%s8", "@b": "%s9"})
    stages.see_block(WINDOW + 11, "%new")  # 11 falls out of the window before it is recorded
    assert stages.ready() == []


def test_a_threshold_must_be_one_to_all_the_witnesses() -> None:
    for bad in (0, 3):
        with pytest.raises(ValueError, match="threshold"):
            Stages(["@a", "@b"], bad)


def test_a_stage_record_is_checked_against_the_signed_messages(tmp_path: Path) -> None:
    from chainmail.errors import ProofError
    from chainmail.witnesses import check_stage

    one, two, alice = Writer(), Writer(), Writer()
    identity = Keypair.generate()
    node = Node(tmp_path, identity, [one, two])
    try:
        assert isinstance(post(node, alice, {"type": "post"}), Accepted)
        block = node.seq.build_block()
        assert block is not None
        for w in (one, two):
            assert isinstance(sign(node, w, block, "precommit"), Accepted)
        node.seq.record_stages()
        node.seq.flush_projection()
        (stage,) = node.store.block_stages(1)

        def message(mid: str) -> dict[str, Any]:
            row = node.store.message(mid)
            assert row is not None
            return dict(orjson.loads(row.body))

        signs = {s: message(s) for s in stage["signs"]}
        args: dict[str, Any] = dict(
            node_id=identity.id, block_id=block.id, height=1, index=0, threshold=2
        )
        witnesses = [one.id, two.id]
        ok = check_stage(stage, message(stage["id"]), signs, witnesses=witnesses, **args)
        assert ok == "precommit: 2 of the node's witnesses signed"
        with pytest.raises(ProofError, match="not witnesses"):
            check_stage(stage, message(stage["id"]), signs, witnesses=[one.id], **args)
        with pytest.raises(ProofError, match="threshold is 3"):
            check_stage(
                stage, message(stage["id"]), signs, witnesses=witnesses, **{**args, "threshold": 3}
            )
        with pytest.raises(ProofError, match="for 'precommit'"):
            check_stage(
                stage, message(stage["id"]), signs, witnesses=witnesses, **{**args, "index": 1}
            )
        missing = {k: v for k, v in signs.items() if k != stage["signs"][0]}
        with pytest.raises(ProofError, match="no signature message"):
            check_stage(stage, message(stage["id"]), missing, witnesses=witnesses, **args)
        swapped = dict(zip(stage["signs"], reversed(list(signs.values())), strict=True))
        with pytest.raises(ProofError, match="is not"):
            check_stage(stage, message(stage["id"]), swapped, witnesses=witnesses, **args)
        forged = {**message(stage["id"]), "signature": message(stage["signs"][0])["signature"]}
        with pytest.raises(ProofError, match="does not verify"):
            check_stage(stage, forged, signs, witnesses=witnesses, **args)
        # Signed by the node, but for height `true`: JSON's true is not the height 1.
        content = orjson.loads(node.store.message(stage["id"]).body)["content"]  # type: ignore[union-attr]
        head = node.log.head(identity.id)
        assert head is not None
        state = ssb.FeedState(id=head.id, sequence=head.sequence)
        odd = ssb.create(identity, {**content, "height": True}, state, NOW)
        with pytest.raises(ProofError, match="of block True"):
            check_stage(
                {**stage, "id": ssb.message_id(odd)}, odd, signs, witnesses=witnesses, **args
            )
    finally:
        node.close()


class _Node:
    """What a witness reads of a node: blocks with no stages, and a sign refused for ``lost``."""

    def __init__(self, lost: int, refusal: Error) -> None:
        self.lost, self.refusal = lost, refusal
        self.published: list[dict[str, Any]] = []

    def block(self, height: int) -> dict[str, Any]:
        return {"height": height, "stages": [], "sealed": False}

    def publish(self, content: dict[str, Any]) -> None:
        if content["height"] == self.lost:
            raise self.refusal
        self.published.append(content)


class _Verified:
    node_id = "@node"

    def verified(self, pipeline: int, size: int) -> bool:
        return True


def test_a_witness_goes_on_past_a_signature_the_node_refuses() -> None:
    from chainmail.errors import InvalidMessage, RateLimited
    from chainmail.witnessing import _Watched, _Witness

    old = InvalidMessage(f"block/sign: no block 1 to witness (the newest is {WINDOW + 5})")
    for refusal, kept in ((old, False), (RateLimited("slow down"), True)):
        node = _Node(1, refusal)
        refused: list[tuple[int, str, str]] = []

        def tell(h: int, stage: str, exc: Error, refused: list[Any] = refused) -> None:
            refused.append((h, stage, exc.code))

        w = _Witness(
            node,  # type: ignore[arg-type]
            _Verified(),  # type: ignore[arg-type]
            frozenset({"@w"}),
            1,
            None,
            None,
            tell,
        )
        w.blocks = {1: _Watched("%1", {0: 1}), 2: _Watched("%2", {0: 2})}
        w.round()  # refused for block 1: block 2 is still signed, and the witness goes on
        assert [c["height"] for c in node.published] == [2]
        if kept:  # a refusal that passes: signed in a later round
            assert refused == [] and 1 in w.blocks
            node.lost = 0
            w.round()
            assert [c["height"] for c in node.published] == [2, 1]
        else:  # one that stands: the block is no longer signed, and the user is told
            assert refused == [(1, "precommit", "invalid_format")]
            assert 1 not in w.blocks and 1 in w.refused
            w.round()
            assert [c["height"] for c in node.published] == [2]
