"""chainmail.bitcoin against real blocks and transactions, and python-bitcoinlib as a second implementation.

Vectors, all public:

- ``GENESIS_*``: the Bitcoin mainnet genesis block (block 0), its hash and its coinbase
  txid, as every explorer shows them; the same bytes as python-bitcoinlib's
  ``CoreMainParams.GENESIS_BLOCK`` (checked below).
- ``BLOCK_1_HEX``, ``BLOCK_586_HEX`` (mainnet blocks 1 and 586, the first with 3 txs) and
  ``REGTEST_SEGWIT_BLOCK_HEX`` (a regtest block of two segwit txs) are copied from
  python-opentimestamps 0.4.5, ``opentimestamps/tests/test_bitcoin.py``, with the Merkle
  roots that test asserts.
- ``BIP143_P2WPKH_HEX``: the signed transaction of BIP 143's "Native P2WPKH" example
  (<https://github.com/bitcoin/bips/blob/master/bip-0143.mediawiki#native-p2wpkh>).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from bitcoin.core import (  # type: ignore[import-untyped]
    COIN,
    CBlock,
    CoreMainParams,
    COutPoint,
    CScriptWitness,
    CTransaction,
    CTxIn,
    CTxInWitness,
    CTxOut,
    CTxWitness,
    Hash,
    b2lx,
    lx,
)
from bitcoin.core.script import OP_CHECKSIG, OP_RETURN, CScript  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from chainmail import bitcoin as btc
from chainmail.errors import ProofError
from support.btcbuild import block_of, coinbase

GENESIS_HEADER_HEX = (
    "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b2"
    "7ac72c3e67768f617fc81bc3888a51323a9fb8aa4b1e5e4a29ab5f49ffff001d1dac2b7c"
)
GENESIS_COINBASE_HEX = (
    "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04ff"
    "ff001d0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272"
    "696e6b206f66207365636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a01000000"
    "434104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f3"
    "5504e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac00000000"
)
GENESIS_HASH = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
GENESIS_TXID = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
GENESIS_OUTPUT_SCRIPT_HEX = (
    "4104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f355"
    "04e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac"
)

BLOCK_1_HEX = "010000006fe28c0ab6f1b372c1a6a246ae63f74f931e8365e15a089c68d6190000000000982051fd1e4ba744bbbe680e1fee14677ba1a3c3540bf7b1cdb606e857233e0e61bc6649ffff001d01e362990101000000010000000000000000000000000000000000000000000000000000000000000000ffffffff0704ffff001d0104ffffffff0100f2052a0100000043410496b538e853519c726a2c91e61ec11600ae1390813a627c66fb8be7947be63c52da7589379515d4e0a604f8141781e62294721166bf621e73a82cbf2342c858eeac00000000"
BLOCK_1_HASH = "00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048"
BLOCK_1_MERKLE_ROOT = "0e3e2357e806b6cdb1f70b54c3a3a17b6714ee1f0e68bebb44a74b1efd512098"
BLOCK_586_HEX = "0100000038babc9586a5fcd60713573494f4377e7c401c33aa24729a4f6cff46000000004d5969c0d10dcce60868fee4d4de80ba5ef38abaeed8a75daa63e48c963d7b1950476f49ffff001d2d9791370301000000010000000000000000000000000000000000000000000000000000000000000000ffffffff0804ffff001d025d06ffffffff0100f2052a0100000043410410daf049ef402de0b6adba8b0f7c392bcf9a6385116efc8b4143b8b7a7841e7de73b478ffe13b60c50ea01e24b4b48c24f5e0fbc5d6c8433c7ca7c3ed3ab8173ac0000000001000000050f40f5e65e115eb4bdb3007f0fb8beaa404cf7ae45de16074e8acc9b69bbf0c3000000004847304402201092da40af6dea8abcbeefb8586335b26d39d36be9b6c38d6c9cc18f20dd5886022045964de79a9008f68d53fc9bc58f9e30b224a1b98dbfda5c7b7b860f32c6aef101ffffffff1bb875b247332e558731c2c510f611d3dde991ea9fe69365bf445a0ccd513b190000000049483045022100b0a1d0a00251c56809a5ab5d7ba6cbe68b82c9bf4f806ee39c568ae537572c840220781ce69017ec3b2d6f96ffff4d19c80c224f40c73b8c26cba4b30e7f4171579b01ffffffff2099e1a92d94c35f0645683257c4c255165385f3e9129a85fed5a3f3d867c9b60000000049483045022100c8e980f43c616232e2d59dce08a5edb84aaa0915ea49780a8af367330216084a02203cc2628f16f995c7aaf6104cba64971963a4e084e4fbd0b6bcf825b47a09f8e301ffffffff5fb770c4de700aca7f74f5e6295f248edafa9423e446d76f4650df9b90f939a700000000494830450220745a8d99c51f98f5c93b8d2f5f14a1f2d8cc42ff7329645681bcafe846cbf50d022100b24e31186129f3ae6cc8a226d1eda389373652a9cf2095631fcc4345067c1ff301ffffffff968d4c096ee861307935d21d797a902b647dc970d3c8374cc13551f8397abbd80000000049483045022100ca65b3f290724d6c56fc333570fa342f2477f34b2a6c93c2e2d7216d9fe9088e022077e259a29ed1f988fab2b9f2ce17a4a56a20c188cadc72bca94e06a73826966501ffffffff0100ba1dd20500000043410497304efd3ab14d0dcbf1e901045a25f4b5dbaf576d074506fd8ded4122ba6f6bec0ed4698ce0e7928c0eaf9ddfb5387929b5d697e82e7aabebe04c10e5c87164ac0000000001000000010d26ba57ff82fefcb43826b45019043e2b6ef9aa8118b7f743167584a7f9cae70000000049483045022024fd7345df2b2bd0e6f8416529046b7d52bda5ffdb70146bc6d72b1ba73cabcd022100ff99c03006cc8f28d92e686f0ae640d20395177f329d0a9dbd560fd2a55aeee701ffffffff0100f2052a01000000434104888d890e1bd84c9e2ac363a9774414a081eb805cd2c0d52e49efc7170ebf342f1cdb284a2e2eb754fc8dd4525fe0caa3d3a525214d0b504dd75376b2f63804a8ac00000000"
BLOCK_586_MERKLE_ROOT = "197b3d968ce463aa5da7d8eeba8af35eba80ded4e4fe6808e6cc0dd1c069594d"
REGTEST_SEGWIT_BLOCK_HEX = "0000002060f13fc5bbde8de36f8896a70071d53494f14bcda132968205db08be651f4402fba57b59d485e5446f674cb42917d85f370ee60bbe8a4149ca9d2d236bb2a5286645835affff7f200000000002020000000001010000000000000000000000000000000000000000000000000000000000000000ffffffff050281000101ffffffff02b8f2052a01000000232103c94c88a631f2286bf1404f550742cec64df1701e8374a17426d8375f6fbbc188ac0000000000000000266a24aa21a9edb6e18554334fb03b3ca9e17ef71614853731fffee928f9f63be4de7052b9b1c3012000000000000000000000000000000000000000000000000000000000000000000000000001000000000101bb7e38e3e5bf1ef124e96342cfdd6e4ac8e155a19d845bca68af1c2db420e3a5000000001716001457c8e57a3bdfd4e586fcbecabd958e5f7d5bae49fdffffff0290b1a43e1e00000017a914f55b72549c205fdf490ce331ac3f95ad4f7b2a24870000000000000000226a208e16cdc4bc8b6aae0a217d30662bf5bb7b732b0751746f587b411fecbc41574e02483045022100e6cb9807f0125e6c9bda818b280103177ad4956d8efd5d689d005d95e8d096bf0220138fce520f4cfbb255e0f7c56183002a1f489bbed7eebfa75bf7e9995533d3dc012103e7c5963292645605207996004489e09edb79edfd6b7d7e45562acb064ae9628380000000"
REGTEST_SEGWIT_MERKLE_ROOT = "28a5b26b232d9dca49418abe0be60e375fd81729b44c676f44e585d4597ba5fb"

BIP143_P2WPKH_HEX = (
    "01000000000102fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f0000000049"
    "4830450221008b9d1dc26ba6a9cb62127b02742fa9d754cd3bebf337f7a55d114c8e5cdd30be022040529b19"
    "4ba3f9281a99f2b1c0a19c0489bc22ede944ccf4ecbab4cc618ef3ed01eeffffffef51e1b804cc89d182d279"
    "655c3aa89e815b1b309fe287d9b2b55d57b90ec68a0100000000ffffffff02202cb206000000001976a91482"
    "80b37df378db99f66f85c95a783a76ac7a6d5988ac9093510d000000001976a9143bde42dbee7e4dbe6a21b2"
    "d50ce2f0167faa815988ac000247304402203609e17b84f6a7d30c80bfa610b5b4542f32a8a0d5447a12fb13"
    "66d7f01cc44a0220573a954c4518331561406f90300e8f3358f51928d43c212a8caed02de67eebee0121025476"
    "c2e83188368da1ff3e292e7acafcdb3566bb0ad253f62fc70f07aeee635711000000"
)

REAL_BLOCKS = [
    pytest.param(GENESIS_HEADER_HEX + "01" + GENESIS_COINBASE_HEX, GENESIS_TXID, id="genesis"),
    pytest.param(BLOCK_1_HEX, BLOCK_1_MERKLE_ROOT, id="mainnet-1"),
    pytest.param(BLOCK_586_HEX, BLOCK_586_MERKLE_ROOT, id="mainnet-586"),
    pytest.param(REGTEST_SEGWIT_BLOCK_HEX, REGTEST_SEGWIT_MERKLE_ROOT, id="regtest-segwit"),
]


# --- python-bitcoinlib builders -------------------------------------------------------------


def stripped(tx: Any) -> bytes:
    """What a txid hashes, as python-bitcoinlib serialises it."""
    return bytes(tx.serialize(params={"include_witness": False}))


def payment(seed: int, outputs: list[tuple[int, bytes]], *, witness: bool = False) -> Any:
    """A tx of two inputs; with ``witness``, the first has a witness stack, the second none."""
    vin = [
        CTxIn(COutPoint(hashlib.sha256(bytes([seed, n])).digest(), n), CScript([bytes([seed]) * 3]))
        for n in range(2)
    ]
    vout = [CTxOut(value, CScript(script)) for value, script in outputs]
    wit = CTxWitness()
    if witness:
        wit = CTxWitness(
            [CTxInWitness(CScriptWitness([b"\x30" * 71, b"\x02" * 33])), CTxInWitness()]
        )
    return CTransaction(vin, vout, 0, 2, wit)


def fold(leaf: bytes, branch: list[tuple[bool, bytes]]) -> bytes:
    """Replay a branch with hashlib: the root it leads to."""
    node = leaf
    for right, sibling in branch:
        pair = node + sibling if right else sibling + node
        node = hashlib.sha256(hashlib.sha256(pair).digest()).digest()
    return node


# --- hashes and their byte order ------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"abc", bytes(range(256)) * 5])
def test_sha256d_is_bitcoinlibs_hash(data: bytes) -> None:
    assert btc.sha256d(data) == bytes(Hash(data))


def test_display_and_internal_reverse_the_genesis_hash() -> None:
    internal = bytes(lx(GENESIS_HASH))
    assert btc.internal(GENESIS_HASH) == internal
    assert btc.internal(GENESIS_HASH.upper()) == internal
    assert btc.display(internal) == GENESIS_HASH
    assert internal[-1] == 0  # the leading zeros of the shown hash are the last bytes


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("zz" * 32, "not a hex hash"),
        ("abc", "not a hex hash"),
        ("", "32 bytes, not 0"),
        ("00" * 31, "32 bytes, not 31"),
        ("00" * 33, "32 bytes, not 33"),
    ],
)
def test_internal_refuses_what_is_not_a_hash(text: str, match: str) -> None:
    with pytest.raises(ProofError, match=match):
        btc.internal(text)


# --- OP_RETURN scripts ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 20, 32, 75, 76, 79, 80])
def test_op_return_script_is_bitcoinlibs_minimal_push(size: int) -> None:
    data = bytes(range(size))
    script = btc.op_return_script(data)
    assert script == bytes(CScript([OP_RETURN, data]))
    assert btc.op_return_data(script) == data


def test_op_return_script_refuses_over_80_bytes() -> None:
    with pytest.raises(ValueError, match="at most 80"):
        btc.op_return_script(b"\x00" * 81)


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(b"", id="empty"),
        pytest.param(bytes([OP_RETURN]), id="bare OP_RETURN"),
        pytest.param(bytes(CScript([b"\x02" * 33, OP_CHECKSIG])), id="pay-to-pubkey"),
        pytest.param(bytes(CScript([0, b"\x07" * 32])), id="P2WSH carrying the bytes"),
        pytest.param(bytes(CScript([OP_RETURN, b"\x07" * 32, b"\x08"])), id="two pushes"),
        pytest.param(bytes([OP_RETURN, 32]) + b"\x07" * 31, id="short push"),
        pytest.param(bytes([OP_RETURN, 32]) + b"\x07" * 33, id="long push"),
        pytest.param(bytes([OP_RETURN, 0x4C]), id="PUSHDATA1 without length"),
        pytest.param(bytes([OP_RETURN, 0x4C, 80]) + b"\x07" * 79, id="short PUSHDATA1"),
        pytest.param(bytes([OP_RETURN, 0x4D, 32, 0]) + b"\x07" * 32, id="PUSHDATA2"),
        pytest.param(bytes([OP_RETURN, 0x4D, 32]) + b"\x07" * 32, id="PUSHDATA2, short length"),
        pytest.param(bytes([OP_RETURN, OP_CHECKSIG]), id="an opcode, not a push"),
    ],
)
def test_op_return_data_is_none_unless_one_push_after_op_return(script: bytes) -> None:
    assert btc.op_return_data(script) is None


# --- transactions ---------------------------------------------------------------------------


def test_genesis_coinbase_parses_to_its_known_txid() -> None:
    raw = bytes.fromhex(GENESIS_COINBASE_HEX)
    tx = btc.parse_transaction(raw)
    assert tx.txid == GENESIS_TXID
    assert tx.stripped == raw
    assert tx.outputs == (btc.Output(50 * COIN, bytes.fromhex(GENESIS_OUTPUT_SCRIPT_HEX)),)


def test_genesis_vector_is_bitcoinlibs_genesis_block() -> None:
    assert bytes(CoreMainParams.GENESIS_BLOCK.serialize()).hex() == (
        GENESIS_HEADER_HEX + "01" + GENESIS_COINBASE_HEX
    )


def test_bip143_segwit_tx_is_stripped_of_marker_flag_and_witness() -> None:
    raw = bytes.fromhex(BIP143_P2WPKH_HEX)
    reference = CTransaction.deserialize(raw)
    assert reference.has_witness()
    tx = btc.parse_transaction(raw)
    assert tx.stripped == stripped(reference)
    assert len(tx.stripped) < len(raw)
    assert tx.txid == b2lx(reference.GetTxid())
    assert tx.outputs == tuple(btc.Output(o.nValue, bytes(o.scriptPubKey)) for o in reference.vout)


def test_built_segwit_tx_has_bitcoinlibs_txid_and_not_its_wtxid() -> None:
    digest = hashlib.sha256(b"block").digest()
    reference = payment(1, [(0, bytes(CScript([OP_RETURN, digest])))], witness=True)
    raw = bytes(reference.serialize())
    tx = btc.parse_transaction(raw)
    assert raw[4:6] == b"\x00\x01"
    assert tx.hash == bytes(reference.GetTxid())
    assert tx.hash != btc.sha256d(raw)  # that would be the wtxid
    assert btc.op_return_data(tx.outputs[0].script) == digest


def test_compact_sizes_of_three_and_five_bytes() -> None:
    # 300 outputs (0xfd count), a 300-byte script (0xfd) and a 70,000-byte one (0xfe).
    outputs = [(n, bytes([0x51])) for n in range(298)]
    outputs += [(1, b"\x6a" * 300), (2, b"\x6a" * 70_000)]
    reference = payment(2, outputs)
    tx = btc.parse_transaction(bytes(reference.serialize()))
    assert tx.hash == bytes(reference.GetTxid())
    assert len(tx.outputs) == 300
    assert [len(o.script) for o in tx.outputs[-2:]] == [300, 70_000]


@st.composite
def transactions(draw: st.DrawFn) -> Any:
    n_in = draw(st.integers(1, 4))
    vin = [
        CTxIn(
            COutPoint(draw(st.binary(min_size=32, max_size=32)), draw(st.integers(0, 2**32 - 1))),
            CScript(draw(st.binary(max_size=300))),
            draw(st.integers(0, 2**32 - 1)),
        )
        for _ in range(n_in)
    ]
    vout = [
        CTxOut(draw(st.integers(0, 21_000_000 * COIN)), CScript(draw(st.binary(max_size=300))))
        for _ in range(draw(st.integers(0, 4)))
    ]
    stacks = draw(
        st.lists(
            st.lists(st.binary(max_size=80), max_size=3),
            min_size=n_in,
            max_size=n_in,
        )
    )
    wit = CTxWitness([CTxInWitness(CScriptWitness(s)) for s in stacks])
    return CTransaction(vin, vout, draw(st.integers(0, 2**32 - 1)), draw(st.integers(1, 3)), wit)


@settings(max_examples=200, deadline=None)
@given(transactions())
def test_any_tx_parses_as_bitcoinlib_serialises_it(reference: Any) -> None:
    raw = bytes(reference.serialize())
    tx = btc.parse_transaction(raw)
    assert tx.stripped == stripped(reference)
    assert tx.txid == b2lx(reference.GetTxid())
    assert tx.outputs == tuple(btc.Output(o.nValue, bytes(o.scriptPubKey)) for o in reference.vout)


@pytest.mark.parametrize(
    "raw_hex",
    [
        pytest.param(GENESIS_COINBASE_HEX, id="legacy"),
        pytest.param(BIP143_P2WPKH_HEX, id="segwit"),
    ],
)
def test_every_truncation_of_a_tx_is_a_proof_error(raw_hex: str) -> None:
    raw = bytes.fromhex(raw_hex)
    for end in range(len(raw)):
        with pytest.raises(ProofError):
            btc.parse_transaction(raw[:end])


def test_bytes_after_a_tx_are_refused() -> None:
    with pytest.raises(ProofError, match="1 bytes after the transaction"):
        btc.parse_transaction(bytes.fromhex(GENESIS_COINBASE_HEX) + b"\x00")


# --- blocks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw_hex", "root"), REAL_BLOCKS)
def test_real_blocks_parse_to_bitcoinlibs_txids_and_their_known_root(
    raw_hex: str, root: str
) -> None:
    raw = bytes.fromhex(raw_hex)
    reference = CBlock.deserialize(raw)
    block = btc.parse_block(raw)
    assert block.header == bytes(reference.get_header().serialize()) == raw[:80]
    assert btc.display(block.merkle_root) == root
    assert btc.display(btc.header_merkle_root(block.header)) == root
    assert block.hash == bytes(reference.GetHash())
    assert [t.hash for t in block.transactions] == [bytes(t.GetTxid()) for t in reference.vtx]
    assert btc.merkle_root([t.hash for t in block.transactions]) == block.merkle_root


def test_known_block_hashes() -> None:
    genesis = btc.parse_block(bytes.fromhex(GENESIS_HEADER_HEX + "01" + GENESIS_COINBASE_HEX))
    assert btc.display(genesis.hash) == GENESIS_HASH
    block_1 = btc.parse_block(bytes.fromhex(BLOCK_1_HEX))
    assert btc.display(block_1.hash) == BLOCK_1_HASH
    assert block_1.header[4:36] == genesis.hash  # block 1's prev is the genesis block


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 8])
def test_built_blocks_of_legacy_and_segwit_txs(count: int) -> None:
    txs = [coinbase(count)] + [
        payment(n, [(n * 1000, bytes([0x51]))], witness=n % 2 == 0) for n in range(1, count)
    ]
    reference = block_of(txs)
    block = btc.parse_block(bytes(reference.serialize()))
    assert block.merkle_root == bytes(reference.hashMerkleRoot)
    assert [t.stripped for t in block.transactions] == [stripped(t) for t in txs]


def test_block_without_transactions_is_refused() -> None:
    with pytest.raises(ProofError, match="at least its coinbase"):
        btc.parse_block(bytes.fromhex(GENESIS_HEADER_HEX) + b"\x00")


def test_block_whose_txs_miss_its_merkle_root_is_refused() -> None:
    raw = bytearray.fromhex(BLOCK_586_HEX)
    raw[40] ^= 0x01  # inside the header's Merkle root (bytes 36..68)
    with pytest.raises(ProofError, match="do not hash to its Merkle root"):
        btc.parse_block(bytes(raw))


def test_block_with_a_tx_left_out_is_refused() -> None:
    reference = CBlock.deserialize(bytes.fromhex(BLOCK_586_HEX))
    raw = bytes(reference.get_header().serialize()) + b"\x02"
    raw += b"".join(bytes(t.serialize()) for t in reference.vtx[:2])
    with pytest.raises(ProofError, match="do not hash to its Merkle root"):
        btc.parse_block(raw)


def test_bytes_after_a_block_are_refused() -> None:
    with pytest.raises(ProofError, match="2 bytes after the block"):
        btc.parse_block(bytes.fromhex(BLOCK_1_HEX) + b"\x00\x00")


def test_every_truncation_of_a_block_is_a_proof_error() -> None:
    raw = bytes.fromhex(BLOCK_1_HEX)
    for end in range(len(raw)):
        with pytest.raises(ProofError):
            btc.parse_block(raw[:end])


@pytest.mark.parametrize("size", [0, 79, 81])
def test_header_merkle_root_needs_80_bytes(size: int) -> None:
    with pytest.raises(ProofError, match=f"80 bytes, not {size}"):
        btc.header_merkle_root(b"\x00" * size)


# --- Merkle roots and branches --------------------------------------------------------------

txid_lists = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(txid_lists)
def test_merkle_root_is_bitcoinlibs(txids: list[bytes]) -> None:
    assert btc.merkle_root(txids) == bytes(CBlock.build_merkle_tree_from_txids(txids)[-1])


@settings(max_examples=200, deadline=None)
@given(txid_lists, st.data())
def test_merkle_branch_replays_to_bitcoinlibs_root(txids: list[bytes], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(txids) - 1))
    tree = [bytes(h) for h in CBlock.build_merkle_tree_from_txids(txids)]
    branch = btc.merkle_branch(txids, index)
    assert fold(txids[index], branch) == tree[-1]
    assert all(sibling in tree for _, sibling in branch)
    assert len(branch) == (len(txids) - 1).bit_length()


def test_merkle_branch_of_the_odd_last_tx_pairs_it_with_itself() -> None:
    txids = [bytes([n]) * 32 for n in range(3)]
    branch = btc.merkle_branch(txids, 2)
    assert branch[0] == (True, txids[2])
    assert fold(txids[2], branch) == btc.merkle_root(txids)


def test_merkle_branch_sides_for_a_pair() -> None:
    a, b = b"\x0a" * 32, b"\x0b" * 32
    assert btc.merkle_branch([a, b], 0) == [(True, b)]
    assert btc.merkle_branch([a, b], 1) == [(False, a)]
    assert btc.merkle_branch([a], 0) == []


def test_merkle_branches_of_block_586_lead_to_its_known_root() -> None:
    block = btc.parse_block(bytes.fromhex(BLOCK_586_HEX))
    hashes = [t.hash for t in block.transactions]
    for index, leaf in enumerate(hashes):
        assert btc.display(fold(leaf, btc.merkle_branch(hashes, index))) == BLOCK_586_MERKLE_ROOT


@pytest.mark.parametrize("index", [-1, 3])
def test_merkle_branch_index_out_of_range(index: int) -> None:
    with pytest.raises(IndexError):
        btc.merkle_branch([b"\x00" * 32] * 3, index)


def test_merkle_root_of_nothing() -> None:
    with pytest.raises(ValueError, match="no transactions"):
        btc.merkle_root([])
