"""OpenTimestamps proofs (``.ots`` files): write one for an anchor, read and replay any (pure code).

A proof starts from a file's SHA-256 digest and lists operations (append or
prepend bytes, hash) whose result, at each attestation, is what the
attestation vouches for: for ``BitcoinBlockHeader(height)``, the Merkle root
of the Bitcoin block at that height. ``ots verify`` (opentimestamps-client)
replays the same operations and asks a Bitcoin node for that header.

The format (python-opentimestamps, ``opentimestamps/core``): a magic header,
a version (1), the file hash operation's tag and the digest, then the
timestamp tree. A tree node is its attestations and operations; every item
but the last is preceded by ``0xff``; an attestation is ``0x00``, an 8-byte
tag and a length-prefixed payload; an operation is its tag (with a
length-prefixed argument for append and prepend) and the subtree it leads
to. Numbers are LEB128.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from chainmail import bitcoin
from chainmail.bytereader import ByteReader
from chainmail.errors import ProofError

MAGIC: Final = b"\x00OpenTimestamps\x00\x00Proof\x00\xbf\x89\xe2\xe8\x84\xe8\x92\x94"
VERSION: Final = 1
BITCOIN_TAG: Final = bytes.fromhex("0588960d73d71901")
PENDING_TAG: Final = bytes.fromhex("83dfe30d2ef90c8e")
#: python-opentimestamps' bounds on an operation's argument and result.
MAX_ARGUMENT: Final = 4096
MAX_RESULT: Final = 4096
#: A node this deep is refused rather than replayed, as python-opentimestamps refuses it
#: (its recursion limit); a real proof is ~30 deep.
MAX_DEPTH: Final = 256

SHA256: Final = 0x08
APPEND: Final = 0xF0
PREPEND: Final = 0xF1
#: The operations replayed: SHA-256 alone of the hashes. The format also has SHA-1,
#: RIPEMD-160, Keccak, reverse and hexlify; a proof using them is refused (SHA-1
#: collides; none is in a proof of a Bitcoin transaction).
_UNARY: Final[dict[int, Callable[[bytes], bytes]]] = {
    SHA256: lambda m: hashlib.sha256(m).digest(),
}
_BINARY: Final = {APPEND, PREPEND}


@dataclass(frozen=True)
class Op:
    tag: int
    arg: bytes = b""

    def __call__(self, msg: bytes) -> bytes:
        if self.tag == APPEND:
            out = msg + self.arg
        elif self.tag == PREPEND:
            out = self.arg + msg
        else:
            fn = _UNARY.get(self.tag)
            if fn is None:
                raise ProofError(f"unsupported OpenTimestamps operation 0x{self.tag:02x}")
            out = fn(msg)
        if len(out) > MAX_RESULT:
            raise ProofError("an OpenTimestamps operation's result is over 4,096 bytes")
        return out


@dataclass(frozen=True)
class Attestation:
    tag: bytes
    payload: bytes

    @property
    def bitcoin_height(self) -> int | None:
        """The block height of a Bitcoin block header attestation, else None."""
        if self.tag != BITCOIN_TAG:
            return None
        r = _Reader(self.payload)
        height = r.varuint()
        if r.pos != len(self.payload):
            raise ProofError("trailing bytes in a Bitcoin attestation")
        return height


@dataclass
class Timestamp:
    """A node of the tree: what it attests, and where its operations lead."""

    attestations: list[Attestation] = field(default_factory=list)
    ops: list[tuple[Op, Timestamp]] = field(default_factory=list)


def bitcoin_attestation(height: int) -> Attestation:
    return Attestation(BITCOIN_TAG, _varuint(height))


# --- writing -----------------------------------------------------------------------------


def _varuint(n: int) -> bytes:
    if n < 0:
        raise ValueError("negative")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _varbytes(b: bytes) -> bytes:
    return _varuint(len(b)) + b


def _op_bytes(op: Op) -> bytes:
    return bytes([op.tag]) + (_varbytes(op.arg) if op.tag in _BINARY else b"")


def _attestation_order(a: Attestation) -> tuple[bytes, int, bytes]:
    """python-opentimestamps' order: by tag; a kind's own by height (Bitcoin), by URI
    (pending, whose payload is the URI's varbytes) or by payload."""
    if a.tag == BITCOIN_TAG:
        return a.tag, a.bitcoin_height or 0, b""
    if a.tag == PENDING_TAG:
        r = _Reader(a.payload)
        try:
            return a.tag, 0, r.varbytes(len(a.payload))
        except ProofError:
            return a.tag, 0, a.payload
    return a.tag, 0, a.payload


def _timestamp_bytes(stamp: Timestamp, out: bytearray) -> None:
    # python-opentimestamps writes attestations, then operations, each sorted.
    items: list[tuple[bytes, Timestamp | None]] = [
        (b"\x00" + a.tag + _varbytes(a.payload), None)
        for a in sorted(stamp.attestations, key=_attestation_order)
    ]
    items += [
        (_op_bytes(op), child)
        for op, child in sorted(stamp.ops, key=lambda item: (item[0].tag, item[0].arg))
    ]
    if not items:
        raise ValueError("an empty timestamp cannot be written")
    for n, (head, child) in enumerate(items):
        if n < len(items) - 1:
            out += b"\xff"
        out += head
        if child is not None:
            _timestamp_bytes(child, out)


def detached(digest: bytes, stamp: Timestamp) -> bytes:
    """The ``.ots`` file of a SHA-256 ``digest`` and its timestamp tree."""
    if len(digest) != 32:
        raise ValueError("a SHA-256 digest is 32 bytes")
    out = bytearray(MAGIC + _varuint(VERSION) + bytes([SHA256]) + digest)
    _timestamp_bytes(stamp, out)
    return bytes(out)


def chain(ops: list[Op], attestation: Attestation) -> Timestamp:
    """A timestamp that applies ``ops`` in order and attests the result."""
    stamp = Timestamp(attestations=[attestation])
    for op in reversed(ops):
        stamp = Timestamp(ops=[(op, stamp)])
    return stamp


def bitcoin_path(
    digest: bytes, tx: bitcoin.Transaction, block: bitcoin.Block, height: int
) -> Timestamp:
    """The operations from ``digest`` (inside ``tx``'s ``OP_RETURN``) to ``block``'s
    Merkle root, attested at ``height``. ``ProofError`` if the tx does not carry
    the digest, is not in the block, or is too big to hash in a proof."""
    raw = tx.stripped
    at = raw.find(digest)
    if at < 0 or not any(bitcoin.op_return_data(o.script) == digest for o in tx.outputs):
        raise ProofError(f"transaction {tx.txid} does not carry the digest in an OP_RETURN")
    hashes = [t.hash for t in block.transactions]
    try:
        index = hashes.index(tx.hash)
    except ValueError:
        raise ProofError(f"transaction {tx.txid} is not in the block") from None
    if len(raw) > MAX_RESULT:
        # The txid hashes the whole tx as one message, and no message may exceed this.
        raise ProofError(
            f"transaction {tx.txid} is {len(raw)} bytes; an OpenTimestamps proof "
            f"hashes at most {MAX_RESULT}"
        )
    # The tx is at most 4,096 bytes, so each side of the digest is one argument.
    ops = [Op(PREPEND, raw[:at])] if at else []
    if at + len(digest) < len(raw):
        ops.append(Op(APPEND, raw[at + len(digest) :]))
    ops += [Op(SHA256), Op(SHA256)]
    for right, sibling in bitcoin.merkle_branch(hashes, index):
        ops += [Op(APPEND if right else PREPEND, sibling), Op(SHA256), Op(SHA256)]
    stamp = chain(ops, bitcoin_attestation(height))
    if attested(digest, stamp) != [(height, block.merkle_root)]:  # pragma: no cover - a bug here
        raise AssertionError("the path does not replay to the block's Merkle root")
    return stamp


# --- reading -----------------------------------------------------------------------------


class _Reader(ByteReader):
    def __init__(self, data: bytes) -> None:
        super().__init__(data, truncated="the OpenTimestamps proof is truncated")

    def varuint(self) -> int:
        n = shift = 0
        while True:
            byte = self.u8()
            n |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return n
            shift += 7
            if shift > 63:
                raise ProofError("an OpenTimestamps number is too long")

    def varbytes(self, limit: int) -> bytes:
        n = self.varuint()
        if n > limit:
            raise ProofError(f"an OpenTimestamps field of {n} bytes is over {limit}")
        return self.take(n)


def _read_op(r: _Reader, tag: int) -> Op:
    if tag in _BINARY:
        arg = r.varbytes(MAX_ARGUMENT)
        if not arg:
            raise ProofError("an OpenTimestamps append or prepend has no argument")
        return Op(tag, arg)
    if tag not in _UNARY:
        raise ProofError(f"unsupported OpenTimestamps operation 0x{tag:02x}")
    return Op(tag)


def _read_timestamp(r: _Reader, depth: int) -> Timestamp:
    if depth >= MAX_DEPTH:
        raise ProofError("the OpenTimestamps proof is nested too deep")
    stamp = Timestamp()

    def item(tag: int) -> None:
        if tag == 0x00:
            a_tag = r.take(8)
            stamp.attestations.append(Attestation(a_tag, r.varbytes(8192)))
        else:
            op = _read_op(r, tag)
            stamp.ops.append((op, _read_timestamp(r, depth + 1)))

    tag = r.u8()
    while tag == 0xFF:
        item(r.u8())
        tag = r.u8()
    item(tag)
    return stamp


@dataclass(frozen=True)
class Proof:
    """A parsed ``.ots`` file: the SHA-256 digest it starts from, and its tree."""

    digest: bytes
    timestamp: Timestamp


def parse(data: bytes) -> Proof:
    """Read an ``.ots`` file; ``ProofError`` if it is not one (or not of a SHA-256 digest)."""
    if not data.startswith(MAGIC):
        raise ProofError("not an OpenTimestamps proof (bad magic)")
    r = _Reader(data)
    r.take(len(MAGIC))
    version = r.varuint()
    if version != VERSION:
        raise ProofError(f"OpenTimestamps proof version {version} is not supported")
    if r.u8() != SHA256:
        raise ProofError("the OpenTimestamps proof is not of a SHA-256 file digest")
    digest = r.take(32)
    stamp = _read_timestamp(r, 0)
    if r.pos != len(data):
        raise ProofError("trailing bytes after the OpenTimestamps proof")
    return Proof(digest, stamp)


def _walk(msg: bytes, stamp: Timestamp) -> Iterator[tuple[Attestation, bytes]]:
    for a in stamp.attestations:
        yield a, msg
    for op, child in stamp.ops:
        yield from _walk(op(msg), child)


def attested(digest: bytes, stamp: Timestamp) -> list[tuple[int, bytes]]:
    """Each Bitcoin attestation the tree reaches from ``digest``: (height, Merkle root
    it must equal, internal order). Other attestations (pending calendars) are skipped."""
    out = []
    for a, msg in _walk(digest, stamp):
        height = a.bitcoin_height
        if height is not None:
            if len(msg) != 32:
                raise ProofError("a Bitcoin attestation of something that is not 32 bytes")
            out.append((height, msg))
    return out
