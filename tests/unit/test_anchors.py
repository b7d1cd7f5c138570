"""chainmail.anchors: when to anchor, the proof built from a real block, and its check.

The blocks are built with python-bitcoinlib; the proofs are compared with (and read by)
python-opentimestamps, whose ``make_timestamp_from_block`` is what the OpenTimestamps
calendars run. ``GENESIS_HEADER_HEX`` is the Bitcoin mainnet genesis header, whose Merkle
root is its only txid ``GENESIS_TXID``; ``BLOCK_1_HEADER_HEX`` is mainnet block 1's (from
python-opentimestamps 0.4.5, ``opentimestamps/tests/test_bitcoin.py``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import pytest
from bitcoin.core import (  # type: ignore[import-untyped]
    b2lx,
    lx,
)
from opentimestamps.bitcoin import make_timestamp_from_block  # type: ignore[import-untyped]
from opentimestamps.core.notary import (  # type: ignore[import-untyped]
    BitcoinBlockHeaderAttestation,
    PendingAttestation,
)
from opentimestamps.core.op import OpAppend, OpSHA256  # type: ignore[import-untyped]
from opentimestamps.core.serialize import (  # type: ignore[import-untyped]
    BytesDeserializationContext,
    BytesSerializationContext,
)
from opentimestamps.core.timestamp import DetachedTimestampFile  # type: ignore[import-untyped]

from chainmail import anchors, ssb
from chainmail.anchors import Attested, Pending
from chainmail.errors import InvalidMessage, ProofError
from chainmail.keys import Keypair
from support.btcbuild import anchor_tx, block_of, coinbase, filler, placed

GENESIS_HEADER_HEX = (
    "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b2"
    "7ac72c3e67768f617fc81bc3888a51323a9fb8aa4b1e5e4a29ab5f49ffff001d1dac2b7c"
)
GENESIS_TXID = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
BLOCK_1_HEADER_HEX = (
    "010000006fe28c0ab6f1b372c1a6a246ae63f74f931e8365e15a089c68d6190000000000982051fd1e4ba744"
    "bbbe680e1fee14677ba1a3c3540bf7b1cdb606e857233e0e61bc6649ffff001d01e36299"
)

HEIGHT = 42  # the chainmail block anchored
BITCOIN_HEIGHT = 700_000
CHAIN = "bitcoin-regtest"


def msg_id(digest: bytes) -> str:
    return "%" + base64.b64encode(digest).decode() + ".sha256"


def blob_id(data: bytes) -> str:
    return "&" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ".sha256"


DIGEST = hashlib.sha256(b"chainmail block 42").digest()
BLOCK_ID = msg_id(DIGEST)
OTHER_BLOCK_ID = msg_id(hashlib.sha256(b"chainmail block 43").digest())


# --- python-bitcoinlib builders -------------------------------------------------------------


def lib_bytes(stamp: Any) -> bytes:
    ctx = BytesSerializationContext()
    DetachedTimestampFile(OpSHA256(), stamp).serialize(ctx)
    return bytes(ctx.getbytes())


def lib_read(data: bytes) -> Any:
    return DetachedTimestampFile.deserialize(BytesDeserializationContext(data)).timestamp


def leaf_of(stamp: Any) -> Any:
    """The last node of a single-path tree (the Merkle root's)."""
    while stamp.ops:
        (stamp,) = stamp.ops.values()
    return stamp


class Anchored:
    """A Bitcoin block whose tx carries BLOCK_ID, its proof, and the anchor message's content."""

    def __init__(self, count: int = 5, index: int = 2, *, witness: bool = False) -> None:
        self.tx = anchor_tx(DIGEST, witness=witness)
        self.block = block_of(placed(count, index, self.tx))
        self.raw = bytes(self.block.serialize())
        self.header = bytes(self.block.get_header().serialize())
        self.txid = b2lx(self.tx.GetTxid())
        self.proof = anchors.build_proof(BLOCK_ID, self.txid, self.raw, BITCOIN_HEIGHT)
        self.content = anchors.content(HEIGHT, BLOCK_ID, CHAIN, self.txid, blob_id(self.proof))

    def with_proof(self, proof: bytes) -> dict[str, Any]:
        """The content an attacker would post with another proof: its ots id matches."""
        return {**self.content, "ots": blob_id(proof)}


# --- due ------------------------------------------------------------------------------------

MIN = 60_000
T = 10_000_000


@pytest.mark.parametrize(
    ("latest", "anchored", "last_sent", "now", "expected"),
    [
        pytest.param(None, None, None, T, False, id="no block yet"),
        pytest.param(None, 5, T - 10 * MIN, T, False, id="no block, anchored before (wiped)"),
        pytest.param(0, None, None, T, True, id="first block, first anchor ever"),
        pytest.param(7, None, None, T, True, id="first anchor ever"),
        pytest.param(7, 7, T - 10 * MIN, T, False, id="latest already anchored"),
        pytest.param(7, 9, T - 10 * MIN, T, False, id="anchored past the latest"),
        pytest.param(8, 7, T - MIN + 1, T, False, id="interval not passed"),
        pytest.param(8, 7, T - MIN, T, True, id="interval just passed"),
        pytest.param(8, 7, T - 10 * MIN, T, True, id="interval long passed"),
        pytest.param(8, 7, None, T, True, id="newer block, nothing sent since start"),
        pytest.param(8, None, T - 1, T, False, id="sent, not yet anchored, interval not passed"),
        pytest.param(8, 7, T + 1, T, False, id="clock went back"),
    ],
)
def test_due(
    latest: int | None, anchored: int | None, last_sent: int | None, now: int, expected: bool
) -> None:
    assert anchors.due(latest, anchored, last_sent, now, MIN) is expected


def test_due_with_no_interval_is_every_new_block() -> None:
    assert anchors.due(8, 7, T, T, 0)
    assert not anchors.due(8, 8, T - 1, T, 0)


# --- small values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rpc", "name"),
    [
        ("main", "bitcoin"),
        ("test", "bitcoin-testnet"),
        ("testnet4", "bitcoin-testnet4"),
        ("signet", "bitcoin-signet"),
        ("regtest", "bitcoin-regtest"),
        ("liquidv1", "bitcoin-liquidv1"),
    ],
)
def test_chain_name(rpc: str, name: str) -> None:
    assert anchors.chain_name(rpc) == name


def test_block_digest_is_the_sha256_inside_the_id() -> None:
    assert anchors.block_digest(BLOCK_ID) == DIGEST
    with pytest.raises(InvalidMessage):
        anchors.block_digest("&" + BLOCK_ID[1:])  # a blob id, not a message id


def test_content_is_the_anchor_message_of_design_3() -> None:
    assert anchors.content(HEIGHT, BLOCK_ID, CHAIN, "ab" * 32, "&ots.sha256") == {
        "type": "anchor",
        "block": BLOCK_ID,
        "height": HEIGHT,
        "chain": CHAIN,
        "txid": "ab" * 32,
        "ots": "&ots.sha256",
    }


def test_pending_round_trips_through_json() -> None:
    pending = Pending(HEIGHT, BLOCK_ID, "cd" * 32, T)
    assert pending.to_json() == {
        "height": HEIGHT,
        "block": BLOCK_ID,
        "txid": "cd" * 32,
        "sent": T,
        "rate": None,
        "earlier": [],
    }
    assert Pending.from_json(pending.to_json()) == pending
    # As written before re-sends: no rate, no earlier txs.
    assert Pending.from_json({"height": "42", "block": BLOCK_ID, "txid": "cd" * 32, "sent": T}) == (
        pending
    )
    resent = Pending(HEIGHT, BLOCK_ID, "ef" * 32, T + 1, 4_000, ("ab" * 32, "cd" * 32))
    assert Pending.from_json(resent.to_json()) == resent
    assert resent.txids == ("ef" * 32, "cd" * 32, "ab" * 32)  # the latest first
    with pytest.raises(TypeError):
        Pending.from_json({**resent.to_json(), "earlier": "ab" * 32})


def test_a_stuck_anchor_is_sent_again_at_twice_the_rate_within_limits() -> None:
    assert anchors.stuck_after(600.0) == 3600.0 and anchors.stuck_after(1200.0) == 7200.0
    first = Pending(HEIGHT, BLOCK_ID, "a" * 64, T, 1_000)
    assert anchors.resend_rate(first, None) == 2_000
    assert anchors.resend_rate(first, 1_500) == 1_500  # capped, still higher
    assert anchors.resend_rate(first, 1_000) is None  # the cap leaves nothing to gain
    assert anchors.resend_rate(Pending(HEIGHT, BLOCK_ID, "a" * 64, T), None) is None  # no rate
    last = Pending(HEIGHT, BLOCK_ID, "d" * 64, T, 8_000, ("a" * 64, "b" * 64, "c" * 64))
    assert len(last.txids) == anchors.MAX_SENDS
    assert anchors.resend_rate(last, None) is None


# --- build_proof ----------------------------------------------------------------------------

POSITIONS = [
    (count, index)
    for count in (1, 2, 3, 4, 5, 8, 9)
    for index in sorted({0, count // 2, count - 1})
]


@pytest.mark.parametrize(("count", "index"), POSITIONS)
def test_build_proof_is_the_librarys_and_replays_to_the_blocks_root(count: int, index: int) -> None:
    anchored = Anchored(count, index)
    theirs = make_timestamp_from_block(DIGEST, anchored.block, BITCOIN_HEIGHT)
    assert anchored.proof == lib_bytes(theirs)
    ((msg, attestation),) = lib_read(anchored.proof).all_attestations()
    assert attestation == BitcoinBlockHeaderAttestation(BITCOIN_HEIGHT)
    assert bytes(msg) == bytes(anchored.block.hashMerkleRoot) == anchored.header[36:68]


def test_build_proof_of_a_segwit_anchor_hashes_it_without_its_witness() -> None:
    anchored = Anchored(4, 3, witness=True)
    assert anchored.tx.has_witness()
    assert anchored.proof == lib_bytes(
        make_timestamp_from_block(DIGEST, anchored.block, BITCOIN_HEIGHT)
    )
    assert anchors.check(anchored.content, BLOCK_ID, anchored.proof) == [
        Attested(BITCOIN_HEIGHT, bytes(anchored.block.hashMerkleRoot))
    ]


def test_build_proof_refuses_a_txid_not_in_the_block() -> None:
    anchored = Anchored()
    elsewhere = b2lx(anchor_tx(DIGEST, seed=1).GetTxid())
    with pytest.raises(ProofError, match=f"transaction {elsewhere} is not in the Bitcoin block"):
        anchors.build_proof(BLOCK_ID, elsewhere, anchored.raw, BITCOIN_HEIGHT)


def test_build_proof_refuses_a_tx_that_carries_another_block() -> None:
    anchored = Anchored()
    with pytest.raises(ProofError, match="does not carry the digest in an OP_RETURN"):
        anchors.build_proof(OTHER_BLOCK_ID, anchored.txid, anchored.raw, BITCOIN_HEIGHT)


def test_build_proof_refuses_a_tx_over_4096_bytes() -> None:
    # The digest after 5,000 bytes of scriptSig: a txid preimage OpenTimestamps cannot hash.
    tx = anchor_tx(DIGEST, script_sig=b"\x51" * 5000)
    assert bytes(tx.serialize()).index(DIGEST) > 4096
    raw = bytes(block_of([coinbase(1), tx]).serialize())
    with pytest.raises(ProofError, match="an OpenTimestamps proof hashes at most 4096"):
        anchors.build_proof(BLOCK_ID, b2lx(tx.GetTxid()), raw, BITCOIN_HEIGHT)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        pytest.param(lambda a: a.raw[:-1], "truncated", id="truncated block"),
        pytest.param(lambda a: a.raw + b"\x00", "after the block", id="trailing byte"),
        pytest.param(lambda a: a.header + b"\x00", "at least its coinbase", id="no txs"),
    ],
)
def test_build_proof_refuses_a_malformed_block(raw: Any, match: str) -> None:
    anchored = Anchored()
    with pytest.raises(ProofError, match=match):
        anchors.build_proof(BLOCK_ID, anchored.txid, raw(anchored), BITCOIN_HEIGHT)


def test_build_proof_refuses_a_malformed_txid() -> None:
    with pytest.raises(ProofError, match="32 bytes"):
        anchors.build_proof(BLOCK_ID, "abcd", Anchored().raw, BITCOIN_HEIGHT)


# --- check ----------------------------------------------------------------------------------


def test_check_accepts_the_built_proof_and_names_the_root_as_getblockheader_shows_it() -> None:
    anchored = Anchored()
    (found,) = anchors.check(anchored.content, BLOCK_ID, anchored.proof)
    assert found == Attested(BITCOIN_HEIGHT, bytes(anchored.block.hashMerkleRoot))
    assert found.merkle_root_hex == b2lx(anchored.block.hashMerkleRoot)
    anchors.check_header(found, anchored.header)


def test_check_refuses_a_proof_that_is_not_the_named_blob() -> None:
    anchored = Anchored()
    content = {**anchored.content, "ots": blob_id(anchored.proof + b"\x00")}
    with pytest.raises(ProofError, match="does not hash to its ots id"):
        anchors.check(content, BLOCK_ID, anchored.proof)


def test_check_refuses_an_anchor_of_another_block() -> None:
    anchored = Anchored()
    with pytest.raises(
        ProofError, match=re.escape(f"is of block {BLOCK_ID}, not {OTHER_BLOCK_ID}")
    ):
        anchors.check(anchored.content, OTHER_BLOCK_ID, anchored.proof)


def test_check_refuses_a_proof_of_another_block() -> None:
    # The anchor names block 43 but its (well-formed, correctly named) proof is block 42's.
    anchored = Anchored()
    content = {**anchored.content, "block": OTHER_BLOCK_ID}
    with pytest.raises(ProofError, match="does not start from the block id"):
        anchors.check(content, OTHER_BLOCK_ID, anchored.proof)


def test_check_refuses_a_txid_not_on_the_path() -> None:
    anchored = Anchored(5, 2)
    for other in (anchored.block.vtx[1], anchored.block.vtx[3], anchor_tx(DIGEST, seed=1)):
        content = {**anchored.content, "txid": b2lx(other.GetTxid())}
        with pytest.raises(ProofError, match="does not pass through transaction"):
            anchors.check(content, BLOCK_ID, anchored.proof)


@pytest.mark.parametrize(
    ("txid", "match"), [("not hex", "not a hex hash"), ("ab" * 31, "32 bytes, not 31")]
)
def test_check_refuses_a_malformed_txid(txid: str, match: str) -> None:
    anchored = Anchored()
    with pytest.raises(ProofError, match=match):
        anchors.check({**anchored.content, "txid": txid}, BLOCK_ID, anchored.proof)


def test_check_refuses_an_anchor_without_a_txid() -> None:
    anchored = Anchored()
    content = {k: v for k, v in anchored.content.items() if k != "txid"}
    with pytest.raises(ProofError, match="32 bytes, not 0"):
        anchors.check(content, BLOCK_ID, anchored.proof)


def test_check_refuses_a_malformed_block_id_as_a_proof_error() -> None:
    anchored = Anchored()
    block_id = "%" + base64.b64encode(b"short").decode() + ".sha256"
    content = {**anchored.content, "block": block_id}
    with pytest.raises(ProofError, match="message id"):
        anchors.check(content, block_id, anchored.proof)


def test_check_refuses_a_proof_that_is_not_ots() -> None:
    anchored = Anchored()
    junk = b"not a proof"
    with pytest.raises(ProofError, match="bad magic"):
        anchors.check(anchored.with_proof(junk), BLOCK_ID, junk)


@pytest.mark.parametrize(("count", "index"), [(3, 2), (4, 1)])
def test_no_flipped_bit_in_the_proof_still_verifies(count: int, index: int) -> None:
    anchored = Anchored(count, index)
    headers = {BITCOIN_HEIGHT: anchored.header}
    reached_headers = 0
    harmless = []
    for at in range(len(anchored.proof)):
        for bit in (0x01, 0x80):
            tampered = bytearray(anchored.proof)
            tampered[at] ^= bit
            proof = bytes(tampered)
            # Unchanged content: the blob id gives it away.
            with pytest.raises(ProofError, match="does not hash to its ots id"):
                anchors.check(anchored.content, BLOCK_ID, proof)
            # Content naming the tampered blob: the proof itself must fail, here or at a header.
            try:
                found = anchors.check(anchored.with_proof(proof), BLOCK_ID, proof)
            except ProofError:
                continue
            reached_headers += 1
            for one in found:
                header = headers.get(one.bitcoin_height)
                if header is None:
                    continue  # a node would find another block at that height
                try:
                    anchors.check_header(one, header)
                except ProofError:
                    continue
                harmless.append((at, bit))
    # Flips in the sibling hashes and the height come as far as the header check.
    assert reached_headers > 0
    # One flip changes nothing: where the odd last txid is paired with itself, "append
    # it" (0xf0) and "prepend it" (0xf1) hash the same bytes; Bitcoin's Merkle tree, not us.
    own = bytes(anchored.tx.GetTxid())
    self_paired = count % 2 == 1 and index == count - 1
    expected = [(anchored.proof.index(b"\xf0\x20" + own), 0x01)] if self_paired else []
    assert harmless == expected


def test_check_refuses_a_proof_with_no_bitcoin_attestation() -> None:
    anchored = Anchored()
    stamp = lib_read(anchored.proof)
    leaf = leaf_of(stamp)
    leaf.attestations.clear()
    leaf.attestations.add(PendingAttestation("https://alice.btc.calendar.opentimestamps.org"))
    pending = lib_bytes(stamp)
    with pytest.raises(ProofError, match="attests nothing in Bitcoin"):
        anchors.check(anchored.with_proof(pending), BLOCK_ID, pending)


def test_check_ignores_a_calendar_next_to_the_bitcoin_path() -> None:
    anchored = Anchored()
    stamp = lib_read(anchored.proof)
    stamp.attestations.add(PendingAttestation("https://alice.btc.calendar.opentimestamps.org"))
    stamp.ops.add(OpAppend(b"\x01" * 16)).ops.add(OpSHA256()).attestations.add(
        PendingAttestation("https://bob.btc.calendar.opentimestamps.org")
    )
    both = lib_bytes(stamp)
    assert both != anchored.proof
    assert anchors.check(anchored.with_proof(both), BLOCK_ID, both) == [
        Attested(BITCOIN_HEIGHT, bytes(anchored.block.hashMerkleRoot))
    ]


def test_check_refuses_a_bitcoin_attestation_that_skips_the_named_txid() -> None:
    # The anchor names tx A (never mined: its branch ends at a calendar) while the proof's
    # Bitcoin attestation is reached through tx B of a real block. The digest is in Bitcoin,
    # but not through A: accepting would let `verify` say "tx A carries block 42".
    a = anchor_tx(DIGEST, seed=1)
    stamp = make_timestamp_from_block(DIGEST, block_of([coinbase(1), a]), BITCOIN_HEIGHT)
    leaf = leaf_of(stamp)
    leaf.attestations.clear()
    leaf.attestations.add(PendingAttestation("https://alice.btc.calendar.opentimestamps.org"))
    b_block = block_of(placed(3, 1, anchor_tx(DIGEST, seed=2)))
    stamp.merge(make_timestamp_from_block(DIGEST, b_block, BITCOIN_HEIGHT))
    proof = lib_bytes(stamp)
    assert len(stamp.ops) == 2  # A's branch and B's
    content = anchors.content(HEIGHT, BLOCK_ID, CHAIN, b2lx(a.GetTxid()), blob_id(proof))
    with pytest.raises(ProofError, match="attests nothing in Bitcoin through its txid"):
        anchors.check(content, BLOCK_ID, proof)
    # Named by B's txid, the same proof is fine.
    b_txid = b2lx(b_block.vtx[1].GetTxid())
    assert anchors.check({**content, "txid": b_txid}, BLOCK_ID, proof) == [
        Attested(BITCOIN_HEIGHT, bytes(b_block.hashMerkleRoot))
    ]


def test_check_returns_each_bitcoin_attestation_past_the_txid() -> None:
    # The same tx mined in two blocks (a reorg): both roots are returned for the header check.
    anchored = Anchored(2, 1)
    stamp = lib_read(anchored.proof)
    reorg = block_of([coinbase(2), filler(7), anchored.tx])
    stamp.merge(make_timestamp_from_block(DIGEST, reorg, BITCOIN_HEIGHT + 1))
    proof = lib_bytes(stamp)
    found = anchors.check(anchored.with_proof(proof), BLOCK_ID, proof)
    assert sorted(found, key=lambda a: a.bitcoin_height) == [
        Attested(BITCOIN_HEIGHT, bytes(anchored.block.hashMerkleRoot)),
        Attested(BITCOIN_HEIGHT + 1, bytes(reorg.hashMerkleRoot)),
    ]


# --- check_header ---------------------------------------------------------------------------


def test_check_header_of_the_genesis_block() -> None:
    genesis = Attested(0, bytes(lx(GENESIS_TXID)))
    assert genesis.merkle_root_hex == GENESIS_TXID
    anchors.check_header(genesis, bytes.fromhex(GENESIS_HEADER_HEX))
    with pytest.raises(ProofError, match="at height 0 has another Merkle root"):
        anchors.check_header(genesis, bytes.fromhex(BLOCK_1_HEADER_HEX))


def test_check_header_of_the_built_block_and_another() -> None:
    anchored = Anchored()
    (found,) = anchors.check(anchored.content, BLOCK_ID, anchored.proof)
    anchors.check_header(found, anchored.header)
    other = Anchored(4, 1)
    with pytest.raises(ProofError, match=f"at height {BITCOIN_HEIGHT} has another Merkle root"):
        anchors.check_header(found, other.header)
    with pytest.raises(ProofError, match="another Merkle root"):
        anchors.check_header(found, bytes.fromhex(GENESIS_HEADER_HEX))


@pytest.mark.parametrize("size", [0, 79, 81])
def test_check_header_needs_80_bytes(size: int) -> None:
    anchored = Anchored()
    (found,) = anchors.check(anchored.content, BLOCK_ID, anchored.proof)
    with pytest.raises(ProofError, match=f"80 bytes, not {size}"):
        anchors.check_header(found, (anchored.header * 2)[:size])


def test_check_message_verifies_the_anchor_under_the_networks_key() -> None:
    node = Keypair.generate()
    net, other = hashlib.sha256(b"net").digest(), hashlib.sha256(b"other").digest()
    anchored = Anchored()
    message = ssb.create(node, anchored.content, None, 1_700_000_000_000, net)
    content, found = anchors.check_message(message, node.id, HEIGHT, BLOCK_ID, anchored.proof, net)
    assert content == anchored.content
    assert [a.bitcoin_height for a in found] == [BITCOIN_HEIGHT]
    for key in (None, other):  # the node's signature holds only on its own network
        with pytest.raises(InvalidMessage, match="signature does not verify"):
            anchors.check_message(message, node.id, HEIGHT, BLOCK_ID, anchored.proof, key)
