"""chainmail.ots against python-opentimestamps, the reference implementation ``ots verify`` runs.

Each proof we write is read back by the library (and re-serialised by it to the same
bytes); each proof the library writes is read by us to the same attestations; each
malformed input is refused by both. The Bitcoin paths are compared byte for byte with
the library's ``make_timestamp_from_block``, on built blocks and on the regtest segwit
block (and mainnet block 586) of python-opentimestamps 0.4.5's
``opentimestamps/tests/test_bitcoin.py``, with the digests and Merkle roots it asserts.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from bitcoin.core import (  # type: ignore[import-untyped]
    CBlock,
    COutPoint,
    CTransaction,
    CTxIn,
    CTxOut,
    lx,
)
from bitcoin.core.script import OP_RETURN, CScript  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st
from opentimestamps.bitcoin import make_timestamp_from_block  # type: ignore[import-untyped]
from opentimestamps.core.notary import (  # type: ignore[import-untyped]
    BitcoinBlockHeaderAttestation,
    PendingAttestation,
    UnknownAttestation,
)
from opentimestamps.core.op import (  # type: ignore[import-untyped]
    OpAppend,
    OpHexlify,
    OpKECCAK256,
    OpPrepend,
    OpReverse,
    OpRIPEMD160,
    OpSHA1,
    OpSHA256,
)
from opentimestamps.core.serialize import (  # type: ignore[import-untyped]
    BytesDeserializationContext,
    BytesSerializationContext,
    DeserializationError,
)
from opentimestamps.core.timestamp import DetachedTimestampFile, Timestamp  # type: ignore[import-untyped]

from chainmail import bitcoin as btc
from chainmail import ots
from chainmail.errors import ProofError
from support.btcbuild import anchor_tx, block_of, coinbase, filler, placed

DIGEST = hashlib.sha256(b"chainmail block").digest()
CALENDAR = "https://alice.btc.calendar.opentimestamps.org"
REGTEST_SEGWIT_BLOCK_HEX = "0000002060f13fc5bbde8de36f8896a70071d53494f14bcda132968205db08be651f4402fba57b59d485e5446f674cb42917d85f370ee60bbe8a4149ca9d2d236bb2a5286645835affff7f200000000002020000000001010000000000000000000000000000000000000000000000000000000000000000ffffffff050281000101ffffffff02b8f2052a01000000232103c94c88a631f2286bf1404f550742cec64df1701e8374a17426d8375f6fbbc188ac0000000000000000266a24aa21a9edb6e18554334fb03b3ca9e17ef71614853731fffee928f9f63be4de7052b9b1c3012000000000000000000000000000000000000000000000000000000000000000000000000001000000000101bb7e38e3e5bf1ef124e96342cfdd6e4ac8e155a19d845bca68af1c2db420e3a5000000001716001457c8e57a3bdfd4e586fcbecabd958e5f7d5bae49fdffffff0290b1a43e1e00000017a914f55b72549c205fdf490ce331ac3f95ad4f7b2a24870000000000000000226a208e16cdc4bc8b6aae0a217d30662bf5bb7b732b0751746f587b411fecbc41574e02483045022100e6cb9807f0125e6c9bda818b280103177ad4956d8efd5d689d005d95e8d096bf0220138fce520f4cfbb255e0f7c56183002a1f489bbed7eebfa75bf7e9995533d3dc012103e7c5963292645605207996004489e09edb79edfd6b7d7e45562acb064ae9628380000000"
REGTEST_SEGWIT_DIGEST = "8e16cdc4bc8b6aae0a217d30662bf5bb7b732b0751746f587b411fecbc41574e"
REGTEST_SEGWIT_MERKLE_ROOT = "28a5b26b232d9dca49418abe0be60e375fd81729b44c676f44e585d4597ba5fb"
REGTEST_SEGWIT_HEIGHT = 129
BLOCK_586_HEX = "0100000038babc9586a5fcd60713573494f4377e7c401c33aa24729a4f6cff46000000004d5969c0d10dcce60868fee4d4de80ba5ef38abaeed8a75daa63e48c963d7b1950476f49ffff001d2d9791370301000000010000000000000000000000000000000000000000000000000000000000000000ffffffff0804ffff001d025d06ffffffff0100f2052a0100000043410410daf049ef402de0b6adba8b0f7c392bcf9a6385116efc8b4143b8b7a7841e7de73b478ffe13b60c50ea01e24b4b48c24f5e0fbc5d6c8433c7ca7c3ed3ab8173ac0000000001000000050f40f5e65e115eb4bdb3007f0fb8beaa404cf7ae45de16074e8acc9b69bbf0c3000000004847304402201092da40af6dea8abcbeefb8586335b26d39d36be9b6c38d6c9cc18f20dd5886022045964de79a9008f68d53fc9bc58f9e30b224a1b98dbfda5c7b7b860f32c6aef101ffffffff1bb875b247332e558731c2c510f611d3dde991ea9fe69365bf445a0ccd513b190000000049483045022100b0a1d0a00251c56809a5ab5d7ba6cbe68b82c9bf4f806ee39c568ae537572c840220781ce69017ec3b2d6f96ffff4d19c80c224f40c73b8c26cba4b30e7f4171579b01ffffffff2099e1a92d94c35f0645683257c4c255165385f3e9129a85fed5a3f3d867c9b60000000049483045022100c8e980f43c616232e2d59dce08a5edb84aaa0915ea49780a8af367330216084a02203cc2628f16f995c7aaf6104cba64971963a4e084e4fbd0b6bcf825b47a09f8e301ffffffff5fb770c4de700aca7f74f5e6295f248edafa9423e446d76f4650df9b90f939a700000000494830450220745a8d99c51f98f5c93b8d2f5f14a1f2d8cc42ff7329645681bcafe846cbf50d022100b24e31186129f3ae6cc8a226d1eda389373652a9cf2095631fcc4345067c1ff301ffffffff968d4c096ee861307935d21d797a902b647dc970d3c8374cc13551f8397abbd80000000049483045022100ca65b3f290724d6c56fc333570fa342f2477f34b2a6c93c2e2d7216d9fe9088e022077e259a29ed1f988fab2b9f2ce17a4a56a20c188cadc72bca94e06a73826966501ffffffff0100ba1dd20500000043410497304efd3ab14d0dcbf1e901045a25f4b5dbaf576d074506fd8ded4122ba6f6bec0ed4698ce0e7928c0eaf9ddfb5387929b5d697e82e7aabebe04c10e5c87164ac0000000001000000010d26ba57ff82fefcb43826b45019043e2b6ef9aa8118b7f743167584a7f9cae70000000049483045022024fd7345df2b2bd0e6f8416529046b7d52bda5ffdb70146bc6d72b1ba73cabcd022100ff99c03006cc8f28d92e686f0ae640d20395177f329d0a9dbd560fd2a55aeee701ffffffff0100f2052a01000000434104888d890e1bd84c9e2ac363a9774414a081eb805cd2c0d52e49efc7170ebf342f1cdb284a2e2eb754fc8dd4525fe0caa3d3a525214d0b504dd75376b2f63804a8ac00000000"


# --- the library's side ---------------------------------------------------------------------


def lib_bytes(stamp: Any, file_hash_op: Any = None) -> bytes:
    ctx = BytesSerializationContext()
    DetachedTimestampFile(OpSHA256() if file_hash_op is None else file_hash_op, stamp).serialize(
        ctx
    )
    return bytes(ctx.getbytes())


def lib_read(data: bytes) -> Any:
    return DetachedTimestampFile.deserialize(BytesDeserializationContext(data))


def lib_bitcoin(stamp: Any) -> list[tuple[int, bytes]]:
    """The library's Bitcoin attestations of a tree: (height, the message attested)."""
    return sorted(
        (int(a.height), bytes(msg))
        for msg, a in stamp.all_attestations()
        if isinstance(a, BitcoinBlockHeaderAttestation)
    )


def assert_library_refuses(data: bytes) -> None:
    """The reference refuses it too: the input is bad by the format, not by our reading."""
    with pytest.raises((DeserializationError, ValueError)):
        lib_read(data)


def leb128(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def header(digest: bytes = DIGEST) -> bytes:
    """Magic, version 1, SHA-256, the digest: the start of every proof here."""
    return bytes(DetachedTimestampFile.HEADER_MAGIC) + b"\x01\x08" + digest


def bitcoin_leaf(height: int) -> bytes:
    """A tree node holding only a Bitcoin attestation."""
    return (
        b"\x00"
        + bytes(BitcoinBlockHeaderAttestation.TAG)
        + leb128(len(leb128(height)))
        + leb128(height)
    )


# --- constants ------------------------------------------------------------------------------


def test_constants_are_the_librarys() -> None:
    assert bytes(DetachedTimestampFile.HEADER_MAGIC) == ots.MAGIC
    assert DetachedTimestampFile.MAJOR_VERSION == ots.VERSION
    assert bytes(BitcoinBlockHeaderAttestation.TAG) == ots.BITCOIN_TAG
    assert bytes(PendingAttestation.TAG) == ots.PENDING_TAG
    assert bytes(OpSHA256.TAG) == bytes([ots.SHA256])
    assert bytes(OpAppend.TAG) == bytes([ots.APPEND])
    assert bytes(OpPrepend.TAG) == bytes([ots.PREPEND])
    assert OpAppend.MAX_RESULT_LENGTH == ots.MAX_ARGUMENT == ots.MAX_RESULT


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (ots.Op(ots.SHA256), OpSHA256()),
        (ots.Op(ots.APPEND, b"\x01\x02"), OpAppend(b"\x01\x02")),
        (ots.Op(ots.PREPEND, b"\x03"), OpPrepend(b"\x03")),
    ],
)
def test_ops_compute_what_the_librarys_compute(ours: ots.Op, theirs: Any) -> None:
    for msg in (b"", b"x", DIGEST, b"\xff" * 1000):
        assert ours(msg) == bytes(theirs(msg))


def test_an_op_result_over_4096_bytes_is_refused_as_the_library_refuses_it() -> None:
    msg = b"\x00" * 4000
    assert len(ots.Op(ots.APPEND, b"\x01" * 96)(msg)) == 4096
    with pytest.raises(ValueError, match="too long"):
        OpAppend(b"\x01" * 97)(msg)
    with pytest.raises(ProofError, match="over 4,096 bytes"):
        ots.Op(ots.APPEND, b"\x01" * 97)(msg)


# --- what we write, the library reads -------------------------------------------------------

CHAIN_OPS = [
    ots.Op(ots.PREPEND, b"\x01\x00\x00\x00prefix"),
    ots.Op(ots.APPEND, b"suffix\x00\x00\x00\x00"),
    ots.Op(ots.SHA256),
    ots.Op(ots.SHA256),
    ots.Op(ots.APPEND, b"\x42" * 32),
    ots.Op(ots.SHA256),
]


def test_a_chain_we_write_is_read_by_the_library_to_the_same_root() -> None:
    data = ots.detached(DIGEST, ots.chain(CHAIN_OPS, ots.bitcoin_attestation(840_000)))
    theirs = lib_read(data)
    assert bytes(theirs.file_digest) == DIGEST
    assert isinstance(theirs.file_hash_op, OpSHA256)
    expected = DIGEST
    for op in (
        OpPrepend(b"\x01\x00\x00\x00prefix"),
        OpAppend(b"suffix\x00\x00\x00\x00"),
        OpSHA256(),
        OpSHA256(),
        OpAppend(b"\x42" * 32),
        OpSHA256(),
    ):
        expected = bytes(op(expected))
    assert lib_bitcoin(theirs.timestamp) == [(840_000, expected)]
    assert ots.attested(DIGEST, ots.parse(data).timestamp) == [(840_000, expected)]
    assert lib_bytes(theirs.timestamp) == data


def test_chain_of_no_ops_attests_the_digest_itself() -> None:
    data = ots.detached(DIGEST, ots.chain([], ots.bitcoin_attestation(0)))
    assert data == header() + bitcoin_leaf(0)
    assert lib_bitcoin(lib_read(data).timestamp) == [(0, DIGEST)]


@pytest.mark.parametrize("height", [0, 1, 127, 128, 16_383, 16_384, 840_000, 2**32])
def test_bitcoin_attestation_heights_are_the_librarys_varuint(height: int) -> None:
    ours = ots.bitcoin_attestation(height)
    assert ours.bitcoin_height == height
    stamp = Timestamp(DIGEST)
    stamp.attestations.add(BitcoinBlockHeaderAttestation(height))
    assert ots.detached(DIGEST, ots.Timestamp(attestations=[ours])) == lib_bytes(stamp)


def test_detached_refuses_a_digest_that_is_not_sha256() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ots.detached(b"\x00" * 20, ots.chain([], ots.bitcoin_attestation(1)))


def test_an_empty_timestamp_cannot_be_written() -> None:
    with pytest.raises(ValueError, match="empty timestamp"):
        ots.detached(DIGEST, ots.Timestamp())
    with pytest.raises(ValueError, match="empty timestamp"):
        ots.detached(DIGEST, ots.Timestamp(ops=[(ots.Op(ots.SHA256), ots.Timestamp())]))


# --- what the library writes, we read -------------------------------------------------------


def calendar_and_bitcoin_tree() -> Any:
    """A tree as ``ots upgrade`` leaves one: a pending calendar next to Bitcoin, two paths."""
    root = Timestamp(DIGEST)
    root.attestations.add(PendingAttestation(CALENDAR))
    left = root.ops.add(OpAppend(b"\xaa" * 16)).ops.add(OpSHA256())
    left.attestations.add(PendingAttestation("https://bob.btc.calendar.opentimestamps.org"))
    left_btc = left.ops.add(OpPrepend(b"\xbb" * 32)).ops.add(OpSHA256())
    left_btc.attestations.add(BitcoinBlockHeaderAttestation(800_000))
    right = root.ops.add(OpPrepend(b"\xcc" * 5)).ops.add(OpSHA256()).ops.add(OpSHA256())
    right.attestations.add(BitcoinBlockHeaderAttestation(800_001))
    right.attestations.add(UnknownAttestation(b"\x01" * 8, b"opaque"))
    return root


def test_a_tree_the_library_writes_is_read_by_us_to_its_attestations() -> None:
    stamp = calendar_and_bitcoin_tree()
    data = lib_bytes(stamp)
    proof = ots.parse(data)
    assert proof.digest == DIGEST
    found = ots.attested(proof.digest, proof.timestamp)
    assert sorted(found) == lib_bitcoin(stamp)
    assert [h for h, _ in sorted(found)] == [800_000, 800_001]
    # Read and written again, byte for byte: nothing is lost or reordered.
    assert ots.detached(proof.digest, proof.timestamp) == data


def test_pending_and_unknown_attestations_are_kept_and_not_counted() -> None:
    proof = ots.parse(lib_bytes(calendar_and_bitcoin_tree()))
    pending = proof.timestamp.attestations
    assert [(a.tag, a.bitcoin_height) for a in pending] == [(ots.PENDING_TAG, None)]
    assert pending[0].payload == leb128(len(CALENDAR)) + CALENDAR.encode()

    only_pending = Timestamp(DIGEST)
    only_pending.attestations.add(PendingAttestation(CALENDAR))
    only_pending.ops.add(OpSHA256()).attestations.add(UnknownAttestation(b"\x02" * 8, b""))
    assert ots.attested(DIGEST, ots.parse(lib_bytes(only_pending)).timestamp) == []


def test_the_librarys_bitcoin_path_for_a_real_segwit_block_reads_to_its_root() -> None:
    block = CBlock.deserialize(bytes.fromhex(REGTEST_SEGWIT_BLOCK_HEX))
    digest = bytes.fromhex(REGTEST_SEGWIT_DIGEST)
    stamp = make_timestamp_from_block(digest, block, REGTEST_SEGWIT_HEIGHT)
    proof = ots.parse(lib_bytes(stamp))
    assert ots.attested(digest, proof.timestamp) == [
        (REGTEST_SEGWIT_HEIGHT, bytes(lx(REGTEST_SEGWIT_MERKLE_ROOT)))
    ]


# Random trees, built the same way by both implementations.
OpSpec = tuple[int, bytes]
AttSpec = tuple[str, Any]
NodeSpec = tuple[tuple[AttSpec, ...], tuple[tuple[OpSpec, Any], ...]]

op_specs = st.one_of(
    st.just((ots.SHA256, b"")),
    st.tuples(st.sampled_from([ots.APPEND, ots.PREPEND]), st.binary(min_size=1, max_size=40)),
)
uris = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._/:", min_size=1, max_size=60)
# At most one attestation of each kind per node: several of a kind are ordered differently
# (test_several_attestations_of_a_kind_in_the_librarys_order).
att_sets = st.fixed_dictionaries(
    {},
    optional={
        "bitcoin": st.integers(0, 2**40),
        "pending": uris.map(lambda u: "https://" + u),
        "unknown": st.binary(max_size=20),
    },
).map(lambda d: tuple(sorted(d.items())))


def _extend(children: st.SearchStrategy[NodeSpec]) -> st.SearchStrategy[NodeSpec]:
    return st.tuples(
        att_sets,
        st.lists(
            st.tuples(op_specs, children), min_size=1, max_size=3, unique_by=lambda c: c[0]
        ).map(tuple),
    )


trees: st.SearchStrategy[NodeSpec] = st.recursive(
    att_sets.filter(bool).map(lambda atts: (atts, ())), _extend, max_leaves=10
)


def _our_attestation(kind: str, value: Any) -> ots.Attestation:
    if kind == "bitcoin":
        return ots.bitcoin_attestation(value)
    if kind == "pending":
        return ots.Attestation(ots.PENDING_TAG, leb128(len(value)) + value.encode())
    return ots.Attestation(b"\x01" * 8, value)


def _their_attestation(kind: str, value: Any) -> Any:
    if kind == "bitcoin":
        return BitcoinBlockHeaderAttestation(value)
    if kind == "pending":
        return PendingAttestation(value)
    return UnknownAttestation(b"\x01" * 8, value)


def _their_op(spec: OpSpec) -> Any:
    tag, arg = spec
    return {ots.SHA256: OpSHA256, ots.APPEND: OpAppend, ots.PREPEND: OpPrepend}[tag](
        *([arg] if arg else [])
    )


def ours_of(node: NodeSpec) -> ots.Timestamp:
    atts, ops = node
    return ots.Timestamp(
        attestations=[_our_attestation(k, v) for k, v in atts],
        ops=[(ots.Op(*spec), ours_of(child)) for spec, child in ops],
    )


def theirs_of(msg: bytes, node: NodeSpec) -> Any:
    atts, ops = node
    stamp = Timestamp(msg)
    for kind, value in atts:
        stamp.attestations.add(_their_attestation(kind, value))
    for spec, child in ops:
        op = _their_op(spec)
        stamp.ops[op] = theirs_of(bytes(op(msg)), child)
    return stamp


@settings(max_examples=150, deadline=None)
@given(trees)
def test_random_trees_are_the_same_bytes_and_attestations_in_both(node: NodeSpec) -> None:
    ours = ots.detached(DIGEST, ours_of(node))
    theirs = theirs_of(DIGEST, node)
    assert ours == lib_bytes(theirs)
    assert lib_read(ours).timestamp == theirs
    expected = lib_bitcoin(theirs)
    proof = ots.parse(ours)
    if all(len(msg) == 32 for _, msg in expected):
        assert sorted(ots.attested(DIGEST, proof.timestamp)) == expected
    else:
        with pytest.raises(ProofError, match="not 32 bytes"):
            ots.attested(DIGEST, proof.timestamp)


def test_several_attestations_of_a_kind_in_the_librarys_order() -> None:
    ours = ots.Timestamp(attestations=[ots.bitcoin_attestation(255), ots.bitcoin_attestation(256)])
    theirs = Timestamp(DIGEST)
    theirs.attestations.update(
        {BitcoinBlockHeaderAttestation(255), BitcoinBlockHeaderAttestation(256)}
    )
    # Either order reads back the same; only the bytes (and so the blob id) differ.
    assert sorted(ots.attested(DIGEST, ots.parse(lib_bytes(theirs)).timestamp)) == [
        (255, DIGEST),
        (256, DIGEST),
    ]
    assert ots.detached(DIGEST, ours) == lib_bytes(theirs)


# --- malformed proofs: refused by both ------------------------------------------------------

GOOD = header() + b"\xf0\x04abcd" + b"\x08" + bitcoin_leaf(5)


def test_the_good_proof_of_these_cases_is_good_for_both() -> None:
    want = hashlib.sha256(DIGEST + b"abcd").digest()
    assert ots.attested(DIGEST, ots.parse(GOOD).timestamp) == [(5, want)]
    assert lib_bitcoin(lib_read(GOOD).timestamp) == [(5, want)]


BAD = [
    pytest.param(b"\x01" + GOOD[1:], "bad magic", id="wrong magic"),
    pytest.param(GOOD[:-1].replace(b"Proof", b"Prooff"), "bad magic", id="magic misspelt"),
    pytest.param(b"", "bad magic", id="empty"),
    pytest.param(ots.MAGIC + b"\x02" + GOOD[len(ots.MAGIC) + 1 :], "version 2", id="version 2"),
    pytest.param(ots.MAGIC + b"\x00" + GOOD[len(ots.MAGIC) + 1 :], "version 0", id="version 0"),
    pytest.param(ots.MAGIC + b"\xff" * 10, "too long", id="endless varuint"),
    pytest.param(GOOD + b"\x00", "trailing bytes", id="trailing byte"),
    pytest.param(GOOD + GOOD, "trailing bytes", id="two proofs"),
    pytest.param(header() + b"\x55" + bitcoin_leaf(5), "unsupported .* 0x55", id="unknown op"),
    pytest.param(header() + b"\xf0\x00" + bitcoin_leaf(5), "no argument", id="empty append"),
    pytest.param(header() + b"\xf1\x00" + bitcoin_leaf(5), "no argument", id="empty prepend"),
    pytest.param(
        header() + b"\xf0" + leb128(4097) + b"\x00" * 4097 + bitcoin_leaf(5),
        "4097 bytes is over 4096",
        id="oversized argument",
    ),
    pytest.param(
        header() + b"\x00" + b"\x07" * 8 + leb128(8193) + b"\x00" * 8193,
        "8193 bytes is over 8192",
        id="oversized attestation",
    ),
    pytest.param(header() + b"\x08" * 256 + bitcoin_leaf(5), "nested too deep", id="256 deep"),
    pytest.param(header() + b"\x08" * 5000 + bitcoin_leaf(5), "nested too deep", id="5000 deep"),
    pytest.param(header() + b"\xff" + bitcoin_leaf(5), "truncated", id="0xff then the end"),
]


@pytest.mark.parametrize(("data", "match"), BAD)
def test_malformed_proofs_are_proof_errors(data: bytes, match: str) -> None:
    assert_library_refuses(data)
    with pytest.raises(ProofError, match=match):
        ots.parse(data)


def test_a_sha1_file_digest_written_by_the_library_is_refused() -> None:
    stamp = Timestamp(hashlib.sha1(b"file").digest())
    stamp.attestations.add(BitcoinBlockHeaderAttestation(5))
    data = lib_bytes(stamp, OpSHA1())
    lib_read(data)  # a valid proof, just not of a SHA-256 digest
    with pytest.raises(ProofError, match="not of a SHA-256 file digest"):
        ots.parse(data)


@pytest.mark.filterwarnings("ignore:OpReverse may get removed:PendingDeprecationWarning")
@pytest.mark.parametrize(
    "op",
    [OpSHA1(), OpRIPEMD160(), OpKECCAK256(), OpReverse(), OpHexlify()],
    ids=["sha1", "ripemd160", "keccak256", "reverse", "hexlify"],
)
def test_valid_proofs_with_other_operations_are_refused(op: Any) -> None:
    stamp = Timestamp(DIGEST)
    stamp.ops.add(op).attestations.add(BitcoinBlockHeaderAttestation(5))
    data = lib_bytes(stamp)
    lib_read(data)
    with pytest.raises(ProofError, match=f"unsupported OpenTimestamps operation 0x{op.TAG.hex()}"):
        ots.parse(data)


def test_255_operations_deep_is_read_by_both() -> None:
    data = header() + b"\x08" * 255 + bitcoin_leaf(5)
    want = DIGEST
    for _ in range(255):
        want = hashlib.sha256(want).digest()
    assert lib_bitcoin(lib_read(data).timestamp) == [(5, want)]
    assert ots.attested(DIGEST, ots.parse(data).timestamp) == [(5, want)]


def test_every_truncation_of_a_proof_is_refused_by_both() -> None:
    data = lib_bytes(calendar_and_bitcoin_tree())
    for end in range(len(data)):
        assert_library_refuses(data[:end])
        with pytest.raises(ProofError):
            ots.parse(data[:end])


def test_a_proof_whose_replay_is_over_4096_bytes_is_refused_on_replay() -> None:
    data = header() + b"\xf0" + leb128(4096) + b"\x01" * 4096 + bitcoin_leaf(5)
    assert_library_refuses(data)  # the library replays as it reads
    proof = ots.parse(data)
    with pytest.raises(ProofError, match="over 4,096 bytes"):
        ots.attested(DIGEST, proof.timestamp)


def test_a_bitcoin_attestation_with_trailing_payload_is_refused() -> None:
    data = header() + b"\x00" + ots.BITCOIN_TAG + b"\x02\x05\x00"
    assert_library_refuses(data)
    with pytest.raises(ProofError, match="trailing bytes in a Bitcoin attestation"):
        ots.attested(DIGEST, ots.parse(data).timestamp)


def test_a_bitcoin_attestation_of_something_not_32_bytes_is_refused() -> None:
    data = header() + b"\xf0\x01\x00" + bitcoin_leaf(5)
    assert lib_bitcoin(lib_read(data).timestamp) == [(5, DIGEST + b"\x00")]
    with pytest.raises(ProofError, match="not 32 bytes"):
        ots.attested(DIGEST, ots.parse(data).timestamp)


# --- bitcoin_path against the library's make_timestamp_from_block ---------------------------


POSITIONS = [
    (count, index)
    for count in (1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17)
    for index in sorted({0, count // 2, count - 1})
]


@pytest.mark.parametrize(("count", "index"), POSITIONS)
@pytest.mark.parametrize("witness", [False, True], ids=["legacy", "segwit"])
def test_bitcoin_path_is_the_librarys_byte_for_byte(count: int, index: int, witness: bool) -> None:
    reference = block_of(placed(count, index, anchor_tx(DIGEST, witness=witness)))
    block = btc.parse_block(bytes(reference.serialize()))
    stamp = ots.bitcoin_path(DIGEST, block.transactions[index], block, 700_000 + count)
    theirs = make_timestamp_from_block(DIGEST, reference, 700_000 + count)
    assert ots.detached(DIGEST, stamp) == lib_bytes(theirs)
    assert ots.attested(DIGEST, stamp) == [(700_000 + count, bytes(reference.hashMerkleRoot))]


def test_bitcoin_path_of_a_real_regtest_segwit_block() -> None:
    digest = bytes.fromhex(REGTEST_SEGWIT_DIGEST)
    raw = bytes.fromhex(REGTEST_SEGWIT_BLOCK_HEX)
    block = btc.parse_block(raw)
    tx = block.transactions[1]
    stamp = ots.bitcoin_path(digest, tx, block, REGTEST_SEGWIT_HEIGHT)
    root = bytes(lx(REGTEST_SEGWIT_MERKLE_ROOT))
    assert ots.attested(digest, stamp) == [(REGTEST_SEGWIT_HEIGHT, root)]
    theirs = make_timestamp_from_block(digest, CBlock.deserialize(raw), REGTEST_SEGWIT_HEIGHT)
    assert ots.detached(digest, stamp) == lib_bytes(theirs)


def test_bitcoin_path_ops_are_prepend_append_then_sha256d_per_level() -> None:
    reference = block_of(placed(3, 1, anchor_tx(DIGEST)))
    block = btc.parse_block(bytes(reference.serialize()))
    stamp = ots.bitcoin_path(DIGEST, block.transactions[1], block, 1)
    tags = []
    while stamp.ops:
        ((op, stamp),) = stamp.ops
        tags.append(op.tag)
    sha = [ots.SHA256, ots.SHA256]
    # The tx, then two levels (3 txs: the odd last one is paired with itself at level 1).
    assert tags == [ots.PREPEND, ots.APPEND, *sha, ots.PREPEND, *sha, ots.APPEND, *sha]


def test_bitcoin_path_at_4096_bytes_and_over() -> None:
    def sized(target: int) -> Any:
        pad = 0
        while True:
            tx = anchor_tx(DIGEST, script_sig=b"\x51" * (1000 + pad))
            size = len(tx.serialize())
            if size >= target:
                assert size == target
                return tx
            pad += target - size

    at_limit = block_of([coinbase(1), sized(4096)])
    block = btc.parse_block(bytes(at_limit.serialize()))
    stamp = ots.bitcoin_path(DIGEST, block.transactions[1], block, 9)
    assert ots.detached(DIGEST, stamp) == lib_bytes(
        make_timestamp_from_block(DIGEST, at_limit, 9, max_tx_size=4096)
    )

    over = block_of([coinbase(1), sized(4097)])
    with pytest.raises(ValueError, match="4097 > 4096"):  # the library cannot either
        make_timestamp_from_block(DIGEST, over, 9, max_tx_size=10_000)
    block = btc.parse_block(bytes(over.serialize()))
    with pytest.raises(ProofError, match="4097 bytes; an OpenTimestamps proof hashes at most 4096"):
        ots.bitcoin_path(DIGEST, block.transactions[1], block, 9)


def test_bitcoin_path_with_a_prefix_over_4096_bytes_is_refused() -> None:
    # The digest sits after 5,000 bytes of inputs: more than one prepend's worth, but the
    # txid's preimage is a single message, which OpenTimestamps bounds at 4,096 bytes.
    tx = anchor_tx(DIGEST, script_sig=b"\x51" * 5000)
    raw = bytes(tx.serialize())
    assert raw.index(DIGEST) > 4096
    reference = block_of([coinbase(1), tx])
    block = btc.parse_block(bytes(reference.serialize()))
    with pytest.raises(ProofError, match="at most 4096"):
        ots.bitcoin_path(DIGEST, block.transactions[1], block, 9)


def test_bitcoin_path_needs_the_digest_in_an_op_return() -> None:
    # Block 586 of python-opentimestamps' tests: the library proves a spent txid inside a
    # tx's bytes; an anchor must be an OP_RETURN, so we refuse the same digest.
    block = btc.parse_block(bytes.fromhex(BLOCK_586_HEX))
    digest = bytes(lx("c3f0bb699bcc8a4e0716de45aef74c40aabeb80f7f00b3bdb45e115ee6f5400f"))
    assert make_timestamp_from_block(digest, CBlock.deserialize(bytes.fromhex(BLOCK_586_HEX)), 586)
    with pytest.raises(ProofError, match="does not carry the digest in an OP_RETURN"):
        ots.bitcoin_path(digest, block.transactions[1], block, 586)


def test_bitcoin_path_refuses_a_digest_outside_the_op_return() -> None:
    # The digest is in the tx, as a P2WSH program, while the OP_RETURN carries another.
    other = hashlib.sha256(b"other").digest()
    tx = CTransaction(
        [CTxIn(COutPoint(b"\x99" * 32, 1), CScript([b"\x51"]))],
        [CTxOut(0, CScript([OP_RETURN, other])), CTxOut(1, CScript([0, DIGEST]))],
    )
    block = btc.parse_block(bytes(block_of([coinbase(1), tx]).serialize()))
    with pytest.raises(ProofError, match="does not carry the digest"):
        ots.bitcoin_path(DIGEST, block.transactions[1], block, 1)
    ots.bitcoin_path(other, block.transactions[1], block, 1)  # the OP_RETURN's own is fine


def test_bitcoin_path_refuses_a_tx_not_in_the_block() -> None:
    outside = btc.parse_transaction(bytes(anchor_tx(DIGEST).serialize()))
    block = btc.parse_block(bytes(block_of([coinbase(1), filler(2)]).serialize()))
    with pytest.raises(ProofError, match="is not in the block"):
        ots.bitcoin_path(DIGEST, outside, block, 1)
