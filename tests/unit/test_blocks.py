"""Blocks: building, and verifying a chain without trusting the node (DESIGN §6)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainmail import blocks, merkle, ssb
from chainmail.blocks import LogCheckpoint
from chainmail.errors import ProofError
from chainmail.ids import blob_id, feed_id, msg_id_from_digest
from chainmail.keys import Keypair

PIPELINES = 2
DEADLINE = 1_732_250_100_000


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------- a small node


@dataclass
class Node:
    """Just enough of a node to build real blocks: feeds, a per-pipeline log, a clock."""

    key: Keypair
    clock: int = 1_732_250_000_000
    states: dict[str, ssb.FeedState | None] = field(default_factory=dict)
    leaves: list[list[bytes]] = field(default_factory=lambda: [[] for _ in range(PIPELINES)])
    where: dict[str, tuple[int, int]] = field(default_factory=dict)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    records: list[list[dict[str, Any]]] = field(default_factory=list)

    def tick(self) -> int:
        self.clock += 1000
        return self.clock

    def post(self, author: Keypair, content: dict[str, Any]) -> str:
        state = self.states.get(author.id)
        msg = ssb.create(author, content, state, self.tick())
        self.states[author.id] = ssb.validate(msg, state)
        mid = ssb.message_id(msg)
        # Spread authors over pipelines by the first byte of their key.
        pipeline = author.public[0] % PIPELINES
        self.where[mid] = (pipeline, len(self.leaves[pipeline]))
        self.leaves[pipeline].append(blocks.message_leaf(mid))
        self.messages[mid] = msg
        return mid

    def checkpoints(self) -> list[LogCheckpoint]:
        return [
            LogCheckpoint(pipeline=p, size=len(leaves), root=merkle.root(leaves))
            for p, leaves in enumerate(self.leaves)
        ]

    def seal(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        prev = ssb.message_id(self.blocks[-1]) if self.blocks else None
        content = blocks.block_content(
            height=len(self.blocks) + 1,
            prev=prev,
            time=self.tick(),
            logs=self.checkpoints(),
            records=records,
            records_blob_id=blob_id(blocks.records_blob(records)),
        )
        mid = self.post(self.key, content)
        self.blocks.append(self.messages[mid])
        self.records.append(records)
        return self.messages[mid]


def record(
    tx: str, messages: list[str], parties: Sequence[str], status: str, opened: int, closed: int
) -> dict[str, Any]:
    return {
        "tx": tx,
        "messages": messages,
        "parties": list(parties),
        "status": status,
        "opened": opened,
        "closed": closed,
    }


@pytest.fixture(scope="module")
def chain() -> Node:
    """Three blocks: one finished tx; a finished and a timed-out tx; no tx at all."""
    # Fixed seeds: alice and bob land on pipeline 0, carol on 1, so no log of
    # the first block is empty whatever the run (a random pick sometimes left
    # pipeline 0 empty and a "size 0 needs the empty root" case could not fail).
    node = Node(Keypair.from_seed(bytes([5]) * 32))
    alice, bob, carol = (Keypair.from_seed(bytes([s]) * 32) for s in (6, 7, 8))
    node.post(alice, {"type": "about", "about": alice.id, "name": "Alice Bank"})

    parties1 = [alice.id, bob.id]
    tx1 = node.post(alice, {"type": "tx/open", "parties": parties1, "deadline": DEADLINE})
    opened1 = node.clock
    sealed = b64(bytes(80))
    chan = node.post(
        alice, {"type": "chan/open", "keys": {alice.id: sealed, bob.id: sealed}, "tx": tx1}
    )
    note = node.post(bob, {"type": "tx/note", "tx": tx1, "data": {"price": "101.5"}})
    # A channel post without "tx" still belongs to its channel's tx.
    chan_msg = node.post(bob, {"type": "chan/msg", "chan": chan, "box": b64(bytes(40))})
    fin_a = node.post(alice, {"type": "tx/finish", "tx": tx1})
    fin_b = node.post(bob, {"type": "tx/finish", "tx": tx1, "data": {"ok": True}})
    messages1 = [tx1, chan, note, chan_msg, fin_a, fin_b]
    node.seal([record(tx1, messages1, parties1, "finished", opened1, node.clock)])

    parties2 = [bob.id, carol.id]
    tx2 = node.post(
        bob, {"type": "tx/open", "parties": parties2, "deadline": DEADLINE, "finish": "opener"}
    )
    opened2 = node.clock
    fin2 = node.post(bob, {"type": "tx/finish", "tx": tx2})
    closed2 = node.clock
    parties3 = [carol.id, alice.id]
    tx3 = node.post(carol, {"type": "tx/open", "parties": parties3, "deadline": DEADLINE})
    opened3 = node.clock
    note3 = node.post(alice, {"type": "tx/note", "tx": tx3, "data": {}, "to": [carol.id]})
    node.clock = max(node.clock, DEADLINE + 5)  # a block seals tx3 once it timed out
    node.seal(
        [
            record(tx2, [tx2, fin2], parties2, "finished", opened2, closed2),
            record(tx3, [tx3, note3], parties3, "timed_out", opened3, DEADLINE + 5),
        ]
    )

    node.post(carol, {"type": "about", "about": carol.id, "name": "Carol Custody"})
    node.seal([])
    return node


def content(msg: dict[str, Any]) -> dict[str, Any]:
    c = msg["content"]
    assert isinstance(c, dict)
    return c


def consistency_proofs(node: Node, older: int, newer: int) -> dict[int, list[bytes]]:
    """Consistency proofs between the checkpoints of blocks ``older`` and ``newer`` (0-based)."""
    old, new = content(node.blocks[older])["logs"], content(node.blocks[newer])["logs"]
    proofs: dict[int, list[bytes]] = {}
    for o, n in zip(old, new, strict=True):
        if 0 < o["size"] < n["size"]:
            proofs[o["pipeline"]] = merkle.consistency_proof(
                node.leaves[o["pipeline"]], o["size"], n["size"]
            )
    return proofs


def resign(msg: dict[str, Any], new_content: dict[str, Any], key: Keypair) -> dict[str, Any]:
    """A validly signed message by ``key`` with ``new_content``, in the same feed position."""
    state = (
        None
        if msg["previous"] is None
        else ssb.FeedState(id=msg["previous"], sequence=msg["sequence"] - 1)
    )
    return ssb.create(key, new_content, state, msg["timestamp"])


def first_block_covering(node: Node, mid: str) -> int:
    pipeline, index = node.where[mid]
    for height, msg in enumerate(node.blocks):
        if content(msg)["logs"][pipeline]["size"] > index:
            return height
    raise AssertionError(f"{mid} is in no block")


# --------------------------------------------------------------------------- the happy path


def test_chain_verifies(chain: Node) -> None:
    previous = None
    for number, msg in enumerate(chain.blocks, start=1):
        info = blocks.verify_block(msg, chain.key.id, previous=previous)
        assert info.height == number
        assert info.id == ssb.message_id(msg)
        assert info.prev == (None if previous is None else ssb.message_id(previous))
        assert info.txs_count == len(chain.records[number - 1])
        previous = msg


def test_records_verify(chain: Node) -> None:
    for msg, records in zip(chain.blocks, chain.records, strict=True):
        blob = blocks.records_blob(records)
        blocks.verify_records(content(msg), records, blob)
        blocks.verify_records(content(msg), records, None)
        assert blocks.parse_records_blob(blob) == records
        for rec in records:
            blocks.verify_tx_record(rec, chain.messages)


def test_record_proofs_verify(chain: Node) -> None:
    for msg, records in zip(chain.blocks, chain.records, strict=True):
        txs = content(msg)["txs"]
        root = base64.b64decode(txs["root"])
        for index, rec in enumerate(records):
            proof = blocks.record_proof(records, index)
            blocks.verify_record_proof(rec, index, txs["count"], proof, root)


def test_message_proofs_verify(chain: Node) -> None:
    for records in chain.records:
        for rec in records:
            for mid in rec["messages"]:
                pipeline, index = chain.where[mid]
                block = content(chain.blocks[first_block_covering(chain, mid)])
                log = block["logs"][pipeline]
                proof = merkle.inclusion_proof(chain.leaves[pipeline], index, log["size"])
                blocks.verify_message_proof(
                    mid, pipeline, index, log["size"], proof, base64.b64decode(log["root"]), block
                )


@pytest.mark.parametrize(("older", "newer"), [(0, 1), (1, 2), (0, 2)])
def test_consistency_verifies(chain: Node, older: int, newer: int) -> None:
    blocks.verify_block_consistency(
        content(chain.blocks[older]),
        content(chain.blocks[newer]),
        consistency_proofs(chain, older, newer),
    )


def test_block_content_key_order(chain: Node) -> None:
    c = content(chain.blocks[1])
    assert list(c) == ["type", "height", "prev", "time", "logs", "txs"]
    assert list(c["logs"][0]) == ["pipeline", "size", "root"]
    assert list(c["txs"]) == ["count", "root", "records"]
    assert c["txs"]["records"] == blob_id(blocks.records_blob(chain.records[1]))


def test_empty_block_uses_empty_root_and_blob(chain: Node) -> None:
    txs = content(chain.blocks[2])["txs"]
    assert txs == {"count": 0, "root": b64(hashlib.sha256(b"").digest()), "records": blob_id(b"")}


# --------------------------------------------------------------------------- tampering: blocks


def test_signature_tampered(chain: Node) -> None:
    msg = copy.deepcopy(chain.blocks[1])
    sig = msg["signature"]
    msg["signature"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    with pytest.raises(ProofError, match="block message"):
        blocks.verify_block(msg, chain.key.id, previous=chain.blocks[0])


def test_content_tampered_breaks_signature(chain: Node) -> None:
    msg = copy.deepcopy(chain.blocks[1])
    msg["content"]["logs"][0]["size"] += 1
    with pytest.raises(ProofError, match="block message"):
        blocks.verify_block(msg, chain.key.id, previous=chain.blocks[0])


def test_wrong_author(chain: Node) -> None:
    mallory = Keypair.generate()
    forged = resign(chain.blocks[1], content(chain.blocks[1]), mallory)
    with pytest.raises(ProofError, match="expected author"):
        blocks.verify_block(forged, chain.key.id, previous=chain.blocks[0])


def test_prev_link_broken(chain: Node) -> None:
    c = copy.deepcopy(content(chain.blocks[2]))
    c["prev"] = ssb.message_id(chain.blocks[0])
    forged = resign(chain.blocks[2], c, chain.key)
    with pytest.raises(ProofError, match=r"expected prev %"):
        blocks.verify_block(forged, chain.key.id, previous=chain.blocks[1])


def test_height_skipped(chain: Node) -> None:
    c = copy.deepcopy(content(chain.blocks[2]))
    c["height"] = 4
    forged = resign(chain.blocks[2], c, chain.key)
    with pytest.raises(ProofError, match="expected height 3, got 4"):
        blocks.verify_block(forged, chain.key.id, previous=chain.blocks[1])


def test_previous_block_by_another_author(chain: Node) -> None:
    mallory = Keypair.generate()
    forged_previous = resign(chain.blocks[0], content(chain.blocks[0]), mallory)
    with pytest.raises(ProofError, match="previous block: expected author"):
        blocks.verify_block(chain.blocks[1], chain.key.id, previous=forged_previous)


def test_block_info_log(chain: Node) -> None:
    info = blocks.verify_block(chain.blocks[0], chain.key.id, previous=None)
    assert info.log(1) == info.logs[1]
    with pytest.raises(ProofError, match="no checkpoint for pipeline 5"):
        info.log(5)


def test_first_block_needs_height_one(chain: Node) -> None:
    with pytest.raises(ProofError, match="expected height 1 with no previous block, got 2"):
        blocks.verify_block(chain.blocks[1], chain.key.id, previous=None)


def test_prev_must_be_null_only_at_height_one(chain: Node) -> None:
    c = copy.deepcopy(content(chain.blocks[1]))
    c["prev"] = None
    with pytest.raises(ProofError, match="expected prev null exactly at height 1"):
        blocks.parse_block_content(c)


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("type",), "blocks", "expected type 'block'"),
        (("height",), 0, r"block height: expected an integer in \[1"),
        (("height",), True, "block height: expected an integer"),
        (("time",), 1.5, "block time: expected an integer"),
        (("logs", 0, "root"), "AAAA", "block log 0 root: expected canonical base64"),
        (("logs", 0, "pipeline"), 1, "pipelines in increasing order"),
        (("logs", 0, "size"), 0, "expected the empty root at size 0"),
        (("txs", "root"), 7, "block txs root: expected base64"),
        (("txs", "records"), "%notablob", "block txs records: expected a blob id"),
        (("txs", "extra"), 1, "block txs: expected"),
    ],
)
def test_malformed_content(chain: Node, path: tuple[Any, ...], value: object, match: str) -> None:
    c = copy.deepcopy(content(chain.blocks[1]))
    assert c["logs"][0]["size"] > 0, "fixture: the first block's log 0 must not be empty"
    target: Any = c
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(ProofError, match=match):
        blocks.parse_block_content(c)


# --------------------------------------------------------------------------- tampering: records


def test_record_field_tampered(chain: Node) -> None:
    records = copy.deepcopy(chain.records[1])
    records[0]["closed"] += 1
    with pytest.raises(ProofError, match="txs root: expected"):
        blocks.verify_records(content(chain.blocks[1]), records)
    root = base64.b64decode(content(chain.blocks[1])["txs"]["root"])
    proof = blocks.record_proof(chain.records[1], 0)
    with pytest.raises(ProofError, match="inclusion proof does not verify"):
        blocks.verify_record_proof(records[0], 0, 2, proof, root)


def test_record_order_swapped(chain: Node) -> None:
    records = list(reversed(chain.records[1]))
    with pytest.raises(ProofError, match="txs root: expected"):
        blocks.verify_records(content(chain.blocks[1]), records)


def test_record_dropped(chain: Node) -> None:
    with pytest.raises(ProofError, match="txs count: the block says 2 records, 1 were given"):
        blocks.verify_records(content(chain.blocks[1]), chain.records[1][:1])


def test_record_duplicated(chain: Node) -> None:
    records = chain.records[0] * 2
    with pytest.raises(ProofError, match="a tx appears twice"):
        blocks.verify_records(content(chain.blocks[0]), records)


def test_record_message_id_replaced(chain: Node) -> None:
    records = copy.deepcopy(chain.records[0])
    records[0]["messages"][1] = msg_id_from_digest(b"\x01" * 32)
    with pytest.raises(ProofError, match="txs root: expected"):
        blocks.verify_records(content(chain.blocks[0]), records)
    with pytest.raises(ProofError, match="not given"):
        blocks.verify_tx_record(records[0], chain.messages)


def test_blob_tampered(chain: Node) -> None:
    records = chain.records[1]
    blob = bytearray(blocks.records_blob(records))
    blob[-2:-1] = b" "
    with pytest.raises(ProofError, match="records blob: expected the NDJSON"):
        blocks.verify_records(content(chain.blocks[1]), records, bytes(blob))


def test_blob_id_in_block_wrong(chain: Node) -> None:
    c = copy.deepcopy(content(chain.blocks[1]))
    c["txs"]["records"] = blob_id(b"something else")
    with pytest.raises(ProofError, match="txs records: expected &"):
        blocks.verify_records(c, chain.records[1])


def test_record_proof_wrong_index(chain: Node) -> None:
    records = chain.records[1]
    root = blocks.txs_root(records)
    proof = blocks.record_proof(records, 0)
    with pytest.raises(ProofError, match="inclusion proof does not verify"):
        blocks.verify_record_proof(records[0], 1, 2, proof, root)


# --------------------------------------------------------------------------- tampering: log proofs


def _message_proof_args(
    chain: Node,
) -> tuple[str, int, int, int, list[bytes], bytes, dict[str, Any]]:
    mid = chain.records[0][0]["messages"][1]
    pipeline, index = chain.where[mid]
    block = content(chain.blocks[0])
    log = block["logs"][pipeline]
    proof = merkle.inclusion_proof(chain.leaves[pipeline], index, log["size"])
    return mid, pipeline, index, log["size"], proof, base64.b64decode(log["root"]), block


def test_message_proof_wrong_size(chain: Node) -> None:
    mid, pipeline, index, size, proof, root, block = _message_proof_args(chain)
    with pytest.raises(ProofError, match=f"expected size {size}, got {size + 1}"):
        blocks.verify_message_proof(mid, pipeline, index, size + 1, proof, root, block)


def test_message_proof_wrong_root(chain: Node) -> None:
    mid, pipeline, index, size, proof, _root, block = _message_proof_args(chain)
    with pytest.raises(ProofError, match="expected root"):
        blocks.verify_message_proof(mid, pipeline, index, size, proof, b"\x00" * 32, block)


def test_message_proof_other_message(chain: Node) -> None:
    _mid, pipeline, index, size, proof, root, block = _message_proof_args(chain)
    other = msg_id_from_digest(b"\x02" * 32)
    with pytest.raises(ProofError, match="inclusion proof does not verify"):
        blocks.verify_message_proof(other, pipeline, index, size, proof, root, block)


def test_message_proof_wrong_pipeline(chain: Node) -> None:
    mid, _pipeline, index, size, proof, root, block = _message_proof_args(chain)
    with pytest.raises(ProofError, match="no checkpoint for pipeline 9"):
        blocks.verify_message_proof(mid, 9, index, size, proof, root, block)


def test_message_proof_bad_id(chain: Node) -> None:
    _mid, pipeline, index, size, proof, root, block = _message_proof_args(chain)
    with pytest.raises(ProofError, match="message id"):
        blocks.verify_message_proof("%nope", pipeline, index, size, proof, root, block)


# --------------------------------------------------------------------------- tampering: consistency


def _with_log(c: dict[str, Any], pipeline: int, **changes: Any) -> dict[str, Any]:
    c = copy.deepcopy(c)
    c["logs"][pipeline].update(changes)
    return c


def test_consistency_shrinking_log(chain: Node) -> None:
    older, newer = content(chain.blocks[0]), content(chain.blocks[1])
    p = next(log["pipeline"] for log in older["logs"] if log["size"] > 1)
    bad = _with_log(newer, p, size=older["logs"][p]["size"] - 1)
    with pytest.raises(ProofError, match="expected size at least"):
        blocks.verify_block_consistency(older, bad, consistency_proofs(chain, 0, 1))


def test_consistency_equal_size_other_root(chain: Node) -> None:
    older = content(chain.blocks[0])
    p = next(log["pipeline"] for log in older["logs"] if log["size"] > 0)
    newer = copy.deepcopy(older)
    newer["height"] = 2
    newer["prev"] = ssb.message_id(chain.blocks[0])
    newer["logs"][p]["root"] = b64(b"\x07" * 32)
    with pytest.raises(ProofError, match=r"expected root .* at size"):
        blocks.verify_block_consistency(older, newer, {})


def test_consistency_rewritten_history(chain: Node) -> None:
    older, newer = content(chain.blocks[0]), content(chain.blocks[1])
    proofs = consistency_proofs(chain, 0, 1)
    p = next(iter(proofs))
    forged = merkle.root(
        [hashlib.sha256(bytes([i])).digest() for i in range(newer["logs"][p]["size"])]
    )
    bad = _with_log(newer, p, root=b64(forged))
    with pytest.raises(ProofError, match="does not verify"):
        blocks.verify_block_consistency(older, bad, proofs)


def test_consistency_missing_proof(chain: Node) -> None:
    proofs = consistency_proofs(chain, 0, 1)
    p = next(iter(proofs))
    del proofs[p]
    with pytest.raises(ProofError, match=f"pipeline {p}: no consistency proof"):
        blocks.verify_block_consistency(content(chain.blocks[0]), content(chain.blocks[1]), proofs)


def test_consistency_pipeline_dropped(chain: Node) -> None:
    newer = copy.deepcopy(content(chain.blocks[1]))
    del newer["logs"][-1]
    with pytest.raises(ProofError, match="missing from the newer block"):
        blocks.verify_block_consistency(
            content(chain.blocks[0]), newer, consistency_proofs(chain, 0, 1)
        )


def test_consistency_order_of_blocks(chain: Node) -> None:
    with pytest.raises(ProofError, match="expected a block above 2, got 1"):
        blocks.verify_block_consistency(content(chain.blocks[1]), content(chain.blocks[0]), {})


# --------------------------------------------------------------------------- tampering: tx records


def test_tx_record_parties_differ(chain: Node) -> None:
    rec = copy.deepcopy(chain.records[0][0])
    rec["parties"] = rec["parties"][:1]
    with pytest.raises(ProofError, match="expected the tx/open's parties"):
        blocks.verify_tx_record(rec, chain.messages)


def test_tx_record_parties_in_other_order(chain: Node) -> None:
    rec = copy.deepcopy(chain.records[0][0])
    rec["parties"].reverse()
    blocks.verify_tx_record(rec, chain.messages)


def test_tx_record_message_of_other_tx(chain: Node) -> None:
    rec = copy.deepcopy(chain.records[0][0])
    rec["messages"].append(chain.records[1][0]["messages"][1])
    with pytest.raises(ProofError, match="to carry tx"):
        blocks.verify_tx_record(rec, chain.messages)


def test_tx_record_first_not_open(chain: Node) -> None:
    rec = copy.deepcopy(chain.records[0][0])
    rec["tx"] = rec["messages"][1]
    rec["messages"] = rec["messages"][1:]
    with pytest.raises(ProofError, match="expected a tx/open first"):
        blocks.verify_tx_record(rec, chain.messages)


def test_tx_record_message_swapped_for_another(chain: Node) -> None:
    rec = chain.records[0][0]
    messages = dict(chain.messages)
    messages[rec["messages"][1]] = chain.messages[rec["messages"][2]]
    with pytest.raises(ProofError, match="expected message id"):
        blocks.verify_tx_record(rec, messages)


def test_tx_record_message_signature(chain: Node) -> None:
    rec = chain.records[0][0]
    messages = dict(chain.messages)
    forged = copy.deepcopy(chain.messages[rec["messages"][1]])
    forged["content"]["label"] = "forged"
    messages[rec["messages"][1]] = forged
    with pytest.raises(ProofError, match=re.escape(f"message {rec['messages'][1]}")):
        blocks.verify_tx_record(rec, messages)


def test_tx_record_out_of_feed_order(chain: Node) -> None:
    rec = copy.deepcopy(chain.records[0][0])
    tx, chan, note, chan_msg, fin_a, fin_b = rec["messages"]
    # Different authors may interleave in any order; one author's messages may not.
    rec["messages"] = [tx, chan, note, fin_a, chan_msg, fin_b]
    blocks.verify_tx_record(rec, chain.messages)
    rec["messages"] = [tx, chan, chan_msg, note, fin_a, fin_b]
    with pytest.raises(ProofError, match="messages in feed order, got sequence 1 after 2"):
        blocks.verify_tx_record(rec, chain.messages)


def test_tx_record_channel_post_outside_its_channel(chain: Node) -> None:
    rec = copy.deepcopy(chain.records[0][0])
    del rec["messages"][1]  # the chan/open
    with pytest.raises(ProofError, match=r"to carry tx .*, got None"):
        blocks.verify_tx_record(rec, chain.messages)


def test_tx_record_finished_without_finishes(chain: Node) -> None:
    rec = copy.deepcopy(chain.records[0][0])
    rec["messages"] = rec["messages"][:3]
    with pytest.raises(ProofError, match="meeting policy 'all'"):
        blocks.verify_tx_record(rec, chain.messages)


def test_tx_record_timed_out_before_deadline(chain: Node) -> None:
    rec = copy.deepcopy(chain.records[1][1])
    rec["closed"] = DEADLINE
    with pytest.raises(ProofError, match="close after its deadline"):
        blocks.verify_tx_record(rec, chain.messages)


def test_tx_record_finished_after_deadline(chain: Node) -> None:
    rec = copy.deepcopy(chain.records[0][0])
    rec["closed"] = DEADLINE + 1
    with pytest.raises(ProofError, match="close by its deadline"):
        blocks.verify_tx_record(rec, chain.messages)


def test_tx_record_finished_relabelled_timed_out(chain: Node) -> None:
    rec = copy.deepcopy(chain.records[0][0])  # both parties finished: policy "all" met
    rec["status"], rec["closed"] = "timed_out", DEADLINE + 1
    with pytest.raises(ProofError, match="so it finished; it cannot have timed out"):
        blocks.verify_tx_record(rec, chain.messages)


def test_tx_record_message_after_the_closing_finish(chain: Node) -> None:
    rec = copy.deepcopy(chain.records[0][0])
    closing = chain.messages[rec["messages"][-1]]  # bob's finish met the policy
    bob = Keypair.from_seed(bytes([7]) * 32)
    assert closing["author"] == bob.id
    state = ssb.FeedState(ssb.message_id(closing), closing["sequence"])
    late = ssb.create(bob, {"type": "tx/note", "tx": rec["tx"], "data": {}}, state, 10**12)
    rec["messages"].append(ssb.message_id(late))
    with pytest.raises(ProofError, match="comes after the tx/finish that closed it"):
        blocks.verify_tx_record(rec, {**chain.messages, ssb.message_id(late): late})


def test_tx_record_closed_before_it_opened(chain: Node) -> None:
    rec = copy.deepcopy(chain.records[0][0])
    rec["opened"] = rec["closed"] + 1
    with pytest.raises(ProofError, match="before it opened"):
        blocks.verify_tx_record(rec, chain.messages)


def test_tx_record_author_not_a_party(chain: Node) -> None:
    rec = copy.deepcopy(chain.records[0][0])
    mallory = Keypair.generate()
    intruder = ssb.create(mallory, {"type": "tx/note", "tx": rec["tx"], "data": {}}, None, 1)
    mid = ssb.message_id(intruder)
    rec["messages"].append(mid)
    with pytest.raises(ProofError, match=re.escape(f"is by {mallory.id}, not a party")):
        blocks.verify_tx_record(rec, {**chain.messages, mid: intruder})


# --------------------------------------------------------------------------- record format


def test_record_bytes_canonical() -> None:
    assert blocks.record_bytes({"b": "€\n", "a": [1, None, True]}) == (
        '{"a":[1,null,true],"b":"€\\n"}'.encode()
    )


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"a": 1.5}, "unsupported value"),
        ({"a": 2**53}, "out of range"),
        ({1: "a"}, "string keys"),
        ({"a": "\ud800"}, "lone surrogate"),
    ],
)
def test_record_bytes_refuses(value: Any, match: str) -> None:
    with pytest.raises(ProofError, match=match):
        blocks.record_bytes(value)


_JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=3) | st.integers(0, 3), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=3), _JSONISH, max_size=4))
def test_record_bytes_fast_path_agrees_with_the_checked_copy(record: dict[str, Any]) -> None:
    # The fast path (no copy when the record is plain) must accept exactly what the
    # checked copy accepts, and serialise it to the same bytes.
    try:
        plain = blocks._plain(record, "")
    except ProofError:
        assert not blocks._is_plain(record)
        with pytest.raises(ProofError):
            blocks.record_bytes(record)
        return
    assert blocks._is_plain(record)
    expected = json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        want = expected.encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(ProofError, match="lone surrogate"):
            blocks.record_bytes(record)
        return
    assert blocks.record_bytes(record) == want


def test_record_leaf_is_leaf_of_sha256() -> None:
    rec = {"a": 1}
    assert blocks.record_leaf(rec) == merkle.leaf_hash(hashlib.sha256(b'{"a":1}').digest())


def test_message_leaf_is_leaf_of_digest() -> None:
    digest = hashlib.sha256(b"x").digest()
    assert blocks.message_leaf(msg_id_from_digest(digest)) == merkle.leaf_hash(digest)


def _good_line(chain: Node) -> bytes:
    return blocks.record_bytes(chain.records[0][0])


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda line: line, "expected a newline after the last record"),
        (lambda line: line.replace(b":", b": ", 1) + b"\n", "expected canonical JSON"),
        (lambda line: b'{"closed":1,' + line[1:] + b"\n", "duplicate key"),
        (lambda line: line.replace(b'"closed":', b'"closed":1.0,"x":', 1) + b"\n", "non-integer"),
        (lambda line: b"\xff" + line + b"\n", "not JSON"),
        (lambda line: line + b"\n\n", "not JSON"),
        (lambda line: b"[]\n", "expected an object"),
        (lambda line: line.replace(b'"finished"', b'"done"') + b"\n", "status"),
        (lambda line: line.replace(b'"tx"', b'"tz"') + b"\n", "expected keys"),
        (lambda line: b'{"a":NaN}\n', "NaN is not JSON"),
    ],
)
def test_parse_records_blob_refuses(chain: Node, mutate: Any, match: str) -> None:
    with pytest.raises(ProofError, match=match):
        blocks.parse_records_blob(mutate(_good_line(chain)))


def test_parse_records_blob_empty() -> None:
    assert blocks.parse_records_blob(b"") == []


# --------------------------------------------------------------------------- properties

_ids = st.binary(min_size=32, max_size=32).map(msg_id_from_digest)
_feeds = st.binary(min_size=32, max_size=32).map(feed_id)
_ms = st.integers(min_value=0, max_value=2**53 - 1)


@st.composite
def _records(draw: st.DrawFn) -> dict[str, Any]:
    tx = draw(_ids)
    rest = draw(st.lists(_ids, max_size=5, unique=True).filter(lambda ids: tx not in ids))
    return record(
        tx,
        [tx, *rest],
        draw(st.lists(_feeds, min_size=1, max_size=4, unique=True)),
        draw(st.sampled_from(sorted(blocks.RECORD_STATUSES))),
        draw(_ms),
        draw(_ms),
    )


_record_lists = st.lists(_records(), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(records=_record_lists)
def test_every_record_proof_verifies(records: list[dict[str, Any]]) -> None:
    root = blocks.txs_root(records)
    assert blocks.parse_records_blob(blocks.records_blob(records)) == records
    for index, rec in enumerate(records):
        blocks.verify_record_proof(
            rec, index, len(records), blocks.record_proof(records, index), root
        )


@settings(max_examples=200, deadline=None)
@given(records=_record_lists, data=st.data())
def test_any_byte_change_fails(records: list[dict[str, Any]], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(records) - 1))
    line = bytearray(blocks.record_bytes(records[index]))
    at = data.draw(st.integers(0, len(line) - 1))
    line[at] = data.draw(st.integers(0, 255).filter(lambda b: b != line[at]))
    root = blocks.txs_root(records)
    proof = blocks.record_proof(records, index)
    with pytest.raises(ProofError):
        (changed,) = blocks.parse_records_blob(bytes(line) + b"\n")
        blocks.verify_record_proof(changed, index, len(records), proof, root)


_RECORD_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.text()
    | st.sampled_from(["\x00", "\x1f", "\x7f", "\u2028", "😀", '"', "\\", "é"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), _RECORD_VALUES, max_size=8))
def test_record_bytes_fast_path_equals_the_standard_library(record: dict[str, object]) -> None:
    # orjson (the fast path) must write exactly what json.dumps writes.
    assert blocks.record_bytes(record) == blocks._json_bytes(record)


@given(st.lists(st.dictionaries(st.text(max_size=4), _RECORD_VALUES, max_size=4), max_size=6))
def test_encode_records_is_the_blob_and_the_root(records: list[dict[str, object]]) -> None:
    assert blocks.encode_records(records) == (
        blocks.records_blob(records),
        blocks.txs_root(records),
    )


def test_record_bytes_still_refuses_what_has_no_canonical_form() -> None:
    for bad in ({"a": 1.5}, {"a": [1, 2.0]}, {"a": 2**53}, {"a": {"b": "\ud800"}}, {1: 2}):
        with pytest.raises(ProofError):
            blocks.record_bytes(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [[], {}, None, 1])
def test_a_record_status_of_another_type_is_a_proof_failure_not_a_crash(status: object) -> None:
    alice = Keypair.from_seed(bytes([6]) * 32)
    tx = msg_id_from_digest(hashlib.sha256(b"a tx").digest())
    good = record(tx, [tx], [alice.id], "finished", 1, 2)
    blocks.check_record(good)
    with pytest.raises(ProofError, match="status: expected one of"):
        blocks.check_record({**good, "status": status})
    blob = json.dumps({**good, "status": status}).encode() + b"\n"
    with pytest.raises(ProofError):
        blocks.parse_records_blob(blob)


def test_badly_typed_fields_in_signed_messages_are_proof_failures_not_crashes() -> None:
    """A party may sign anything; a node that logged it must not crash a verifier."""
    alice = Keypair.from_seed(bytes([6]) * 32)
    opened = ssb.create(
        alice,
        {"type": "tx/open", "parties": [alice.id], "deadline": DEADLINE, "finish": ["all"]},
        None,
        1_000,
    )
    tx = ssb.message_id(opened)
    with pytest.raises(ProofError, match="unknown finish policy"):
        blocks.verify_tx_record(
            record(tx, [tx], [alice.id], "timed_out", 1_000, DEADLINE + 1), {tx: opened}
        )
    fine = ssb.create(
        alice, {"type": "tx/open", "parties": [alice.id], "deadline": DEADLINE}, None, 1_000
    )
    tx2 = ssb.message_id(fine)
    post = ssb.create(
        alice, {"type": "chan/msg", "chan": [tx2], "box": "AAAA"}, ssb.validate(fine, None), 1_001
    )
    with pytest.raises(ProofError):
        blocks.verify_tx_record(
            record(tx2, [tx2, ssb.message_id(post)], [alice.id], "timed_out", 1_000, DEADLINE + 1),
            {tx2: fine, ssb.message_id(post): post},
        )


def test_a_block_dated_before_the_previous_one_does_not_verify() -> None:
    node = Node(Keypair.from_seed(bytes([9]) * 32))
    first = node.seal([])
    node.clock -= 10_000  # the node's clock stepped back, or it lies
    second = node.seal([])
    with pytest.raises(ProofError, match="before block 1's"):
        blocks.verify_block(second, node.key.id, previous=first)


def test_a_block_dated_ahead_of_the_verifiers_clock_does_not_verify(chain: Node) -> None:
    first = chain.blocks[0]
    at = content(first)["time"]
    blocks.verify_block(first, chain.key.id, previous=None, now=at - blocks.MAX_TIME_AHEAD_MS)
    with pytest.raises(ProofError, match="ahead of this clock"):
        blocks.verify_block(
            first, chain.key.id, previous=None, now=at - blocks.MAX_TIME_AHEAD_MS - 1
        )


def test_a_record_closed_after_its_block_does_not_verify(chain: Node) -> None:
    # A node sealing an open tx as timed out before its deadline must date the
    # record past the block, or the block to come (refused above).
    records = [dict(r) for r in chain.records[1]]
    records[0]["closed"] = content(chain.blocks[1])["time"] + 1
    with pytest.raises(ProofError, match=r"closed at .*, after its block's time"):
        blocks.verify_records(content(chain.blocks[1]), records)
