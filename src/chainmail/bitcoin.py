"""Bitcoin transactions and blocks, as far as anchoring needs them (pure code).

An anchor is a transaction whose ``OP_RETURN`` output carries a block id's
32-byte digest. Proving it needs the transaction's bytes as its txid hashes
them (without witness data), the block's other txids, and the header's Merkle
root: this module parses raw blocks and transactions (BIP 144 segwit form
included) and builds the Merkle branch of one transaction.

Hashes are kept in Bitcoin's internal byte order (as hashed and serialised);
``txid``/``block_hash`` give the reversed hex that RPCs and explorers show.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from chainmail.bytereader import ByteReader
from chainmail.errors import ProofError

OP_RETURN: Final = 0x6A
#: Bitcoin Core's standardness limit on an ``OP_RETURN`` output's data.
MAX_OP_RETURN_DATA: Final = 80
HEADER_SIZE: Final = 80


def sha256d(data: bytes) -> bytes:
    """SHA-256 twice: Bitcoin's txid, block hash and Merkle node hash."""
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def display(h: bytes) -> str:
    """A 32-byte hash in internal order as RPCs show it (reversed hex)."""
    return h[::-1].hex()


def internal(hex_hash: str) -> bytes:
    """The internal byte order of a hash shown as reversed hex; ``ProofError`` if it is not one."""
    try:
        raw = bytes.fromhex(hex_hash)
    except ValueError:
        raise ProofError(f"not a hex hash: {hex_hash[:80]!r}") from None
    if len(raw) != 32:
        raise ProofError(f"a hash is 32 bytes, not {len(raw)}")
    return raw[::-1]


def op_return_script(data: bytes) -> bytes:
    """``OP_RETURN <data>``, one direct push (up to 75 bytes) or ``OP_PUSHDATA1``."""
    if len(data) > MAX_OP_RETURN_DATA:
        raise ValueError(f"OP_RETURN data is at most {MAX_OP_RETURN_DATA} bytes")
    if len(data) <= 75:
        return bytes([OP_RETURN, len(data)]) + data
    return bytes([OP_RETURN, 0x4C, len(data)]) + data


def op_return_data(script: bytes) -> bytes | None:
    """The data of an ``OP_RETURN <data>`` script of one push, else None."""
    if len(script) < 2 or script[0] != OP_RETURN:
        return None
    n = script[1]
    if n <= 75 and len(script) == 2 + n:
        return script[2:]
    if n == 0x4C and len(script) >= 3 and len(script) == 3 + script[2]:
        return script[3:]
    return None


class _Reader(ByteReader):
    def __init__(self, data: bytes, offset: int = 0) -> None:
        super().__init__(data, offset, truncated="truncated Bitcoin data at byte {pos}")

    def compact(self) -> int:
        first = self.u8()
        if first < 0xFD:
            return first
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        return int.from_bytes(self.take(size), "little")


@dataclass(frozen=True)
class Output:
    value: int  # satoshis
    script: bytes


@dataclass(frozen=True)
class Transaction:
    """One transaction: ``stripped`` is its serialisation without witness data,
    the bytes its txid hashes."""

    stripped: bytes
    outputs: tuple[Output, ...]

    @property
    def hash(self) -> bytes:
        """The txid in internal byte order."""
        return sha256d(self.stripped)

    @property
    def txid(self) -> str:
        return display(self.hash)


def _read_transaction(r: _Reader) -> Transaction:
    version = r.take(4)
    segwit = False
    if r.pos + 2 <= len(r.data) and r.data[r.pos] == 0 and r.data[r.pos + 1] == 1:
        r.take(2)
        segwit = True
    body_start = r.pos
    inputs = r.compact()
    for _ in range(inputs):
        r.take(36)  # previous outpoint
        r.take(r.compact())  # scriptSig
        r.take(4)  # sequence
    outputs = []
    for _ in range(r.compact()):
        value = int.from_bytes(r.take(8), "little")
        outputs.append(Output(value, r.take(r.compact())))
    body = r.data[body_start : r.pos]
    if segwit:
        for _ in range(inputs):
            for _ in range(r.compact()):
                r.take(r.compact())
    locktime = r.take(4)
    return Transaction(version + body + locktime, tuple(outputs))


def parse_transaction(raw: bytes) -> Transaction:
    """A raw transaction (legacy or BIP 144); ``ProofError`` when it is not exactly one."""
    r = _Reader(raw)
    tx = _read_transaction(r)
    if r.pos != len(raw):
        raise ProofError(f"{len(raw) - r.pos} bytes after the transaction")
    return tx


@dataclass(frozen=True)
class Block:
    header: bytes
    transactions: tuple[Transaction, ...]

    @property
    def hash(self) -> bytes:
        return sha256d(self.header)

    @property
    def merkle_root(self) -> bytes:
        """The header's Merkle root, internal byte order."""
        return self.header[36:68]


def parse_block(raw: bytes) -> Block:
    """A raw block (header, then its transactions); ``ProofError`` when it is not one,
    or when its transactions do not hash to the header's Merkle root."""
    r = _Reader(raw)
    header = r.take(HEADER_SIZE)
    count = r.compact()
    if count == 0:
        raise ProofError("a block has at least its coinbase transaction")
    transactions = tuple(_read_transaction(r) for _ in range(count))
    if r.pos != len(raw):
        raise ProofError(f"{len(raw) - r.pos} bytes after the block's transactions")
    block = Block(header, transactions)
    if merkle_root([t.hash for t in transactions]) != block.merkle_root:
        raise ProofError("the block's transactions do not hash to its Merkle root")
    return block


def header_merkle_root(header: bytes) -> bytes:
    """The Merkle root field of an 80-byte block header, internal byte order."""
    if len(header) != HEADER_SIZE:
        raise ProofError(f"a block header is {HEADER_SIZE} bytes, not {len(header)}")
    return header[36:68]


def merkle_root(hashes: list[bytes]) -> bytes:
    """Bitcoin's Merkle root of txids (internal order): an odd level repeats its last."""
    if not hashes:
        raise ValueError("no transactions")
    level = list(hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def merkle_branch(hashes: list[bytes], index: int) -> list[tuple[bool, bytes]]:
    """The path from ``hashes[index]`` to the root: (sibling is on the right, sibling)."""
    if not 0 <= index < len(hashes):
        raise IndexError(index)
    branch: list[tuple[bool, bytes]] = []
    level = list(hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        sibling = index ^ 1
        branch.append((sibling > index, level[sibling]))
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
        index //= 2
    return branch
