"""RFC 9162 Merkle trees: hashing, proofs, and an append-only tree (DESIGN §4).

Hashing (RFC 9162 §2.1.1)::

    leaf  = SHA-256(0x00 ‖ data)
    node  = SHA-256(0x01 ‖ left ‖ right)
    empty = SHA-256("")

The pure functions (``leaf_hash``, ``node_hash``, ``root``, ``verify_inclusion``,
``verify_consistency``) are what a client needs to check the node's answers;
``inclusion_proof`` and ``consistency_proof`` build proofs from a plain list and
serve as the reference for ``MerkleTree``.

``MerkleTree`` keeps the hash of every complete subtree, addressed as
``(level, index)``: the subtree of ``2**level`` leaves starting at leaf
``index * 2**level`` ("Transparent Logs for Skeptical Clients",
research.swtch.com/tlog). Those hashes never change once written, so an append
writes O(1) new nodes amortised, and the root of, or a proof against, any past
size needs only O(log n) of them. Storage sits behind the ``HashStore``
protocol; ``MemoryHashStore`` is the in-memory one.

A tree may keep only the nodes at ``min_level`` and above: the ones below, at
most ``2**min_level`` leaves' worth per proof or root, are recomputed from a
``LeafSource``. A log whose leaves are cheap to re-derive (a hash of each
entry's id) so writes ``2**(1 - min_level)`` nodes per leaf instead of two.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Protocol, TypeAlias, cast

from chainmail.errors import ProofError, StorageError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "HashStore",
    "LeafSource",
    "MemoryHashStore",
    "MerkleTree",
    "Node",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"

#: Bytes in every hash of the tree (SHA-256).
HASH_SIZE: Final = 32
#: Root of the empty tree: SHA-256 of the empty string.
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()

#: A node of the tree: ``(level, index)``, the complete subtree of ``2**level``
#: leaves starting at leaf ``index << level``.
Node: TypeAlias = tuple[int, int]

#: The leaf hashes of the leaves ``[start, end)``, in order; fewer (a prefix)
#: when the leaves past some point are not there.
LeafSource: TypeAlias = Callable[[int, int], Sequence[bytes]]

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 ‖ data)``: the hash of one leaf."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 ‖ left ‖ right)``: the hash of an interior node."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash (MTH) of ``leaf_hashes``; ``EMPTY_ROOT`` for none.

    Raises ``ProofError`` if a leaf hash is not 32 bytes.
    """
    level = list(leaf_hashes)
    _check_leaves(level, len(level))
    return _mth(level)


def _mth(level: list[bytes]) -> bytes:
    if not level:
        return EMPTY_ROOT
    sha256, prefix = _sha256, _NODE_PREFIX
    # Pairing level by level and carrying an odd last node up unchanged builds
    # the same tree as RFC 9162's split at the largest power of two.
    while len(level) > 1:
        odd = level[-1] if len(level) & 1 else None
        level = [
            sha256(prefix + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if odd is not None:
            level.append(odd)
    return level[0]


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) -------------------------------------------


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    Raises ``ProofError`` when a hash is not 32 bytes, ``index`` is not in
    ``[0, size)``, ``proof`` has the wrong number of hashes, or the proof leads
    to a different root.
    """
    _check_hash("leaf hash", leaf_hash)
    _check_hash("root", root)
    _check_proof(proof)
    _check_index(index, size)

    inner, border = _decompose_inclusion(index, size)
    _check_length("inclusion proof", inner + border, len(proof))
    computed = _chain_inner(leaf_hash, proof[:inner], index)
    computed = _chain_border_right(computed, proof[inner:])
    if computed != root:
        raise ProofError(
            f"inclusion proof does not verify: expected root {root.hex()}, got {computed.hex()}"
        )


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of ``size2`` leaves, ``root2``, extends the one of ``size1``, ``root1``.

    A proof from the empty tree is refused (DESIGN §4): every tree extends it,
    so such a "proof" proves nothing. Equal sizes need an empty proof and equal
    roots.

    Raises ``ProofError`` when a hash is not 32 bytes, ``size1 < 1``,
    ``size2 < size1``, ``proof`` has the wrong number of hashes, or it leads to
    a different ``root1`` or ``root2``.
    """
    _check_hash("root1", root1)
    _check_hash("root2", root2)
    _check_proof(proof)
    _check_sizes(size1, size2)

    if size1 == size2:
        _check_length("consistency proof", 0, len(proof))
        if root1 != root2:
            raise ProofError(
                f"consistency proof does not verify: expected root2 {root1.hex()} "
                f"for equal sizes, got {root2.hex()}"
            )
        return

    # The proof starts at the largest complete subtree on the right border of
    # the old tree; when the old tree is itself complete, that seed is root1
    # and the proof omits it (RFC 9162 §2.1.4.2 step 2).
    inner, border = _decompose_inclusion(size1 - 1, size2)
    shift = _trailing_zeros(size1)
    inner -= shift
    start = 0 if size1 == 1 << shift else 1
    _check_length("consistency proof", start + inner + border, len(proof))
    seed = root1 if start == 0 else proof[0]
    path = proof[start:]
    mask = (size1 - 1) >> shift

    computed1 = _chain_inner_right(seed, path[:inner], mask)
    computed1 = _chain_border_right(computed1, path[inner:])
    if computed1 != root1:
        raise ProofError(
            f"consistency proof does not verify: expected root1 {root1.hex()}, "
            f"got {computed1.hex()}"
        )
    computed2 = _chain_inner(seed, path[:inner], mask)
    computed2 = _chain_border_right(computed2, path[inner:])
    if computed2 != root2:
        raise ProofError(
            f"consistency proof does not verify: expected root2 {root2.hex()}, "
            f"got {computed2.hex()}"
        )


def _decompose_inclusion(index: int, size: int) -> tuple[int, int]:
    """Lengths of the two parts of the inclusion proof of ``index`` in a tree of ``size``.

    ``inner`` hashes lie below the level where the paths to ``index`` and to
    ``size - 1`` meet; the ``border`` hashes above it are all left siblings.
    """
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def _chain_inner(seed: bytes, hashes: Sequence[bytes], index: int) -> bytes:
    for level, sibling in enumerate(hashes):
        seed = node_hash(sibling, seed) if (index >> level) & 1 else node_hash(seed, sibling)
    return seed


def _chain_inner_right(seed: bytes, hashes: Sequence[bytes], index: int) -> bytes:
    # Only the left siblings: the right ones were not yet in the older tree.
    for level, sibling in enumerate(hashes):
        if (index >> level) & 1:
            seed = node_hash(sibling, seed)
    return seed


def _chain_border_right(seed: bytes, hashes: Sequence[bytes]) -> bytes:
    for sibling in hashes:
        seed = node_hash(sibling, seed)
    return seed


def _trailing_zeros(n: int) -> int:
    return (n & -n).bit_length() - 1


# --- proofs over a list (reference implementation) -------------------------------------------


def inclusion_proof(
    leaf_hashes: Sequence[bytes], index: int, size: int | None = None
) -> list[bytes]:
    """The RFC 9162 inclusion proof (PATH) of leaf ``index`` in the first ``size`` leaves.

    ``size`` defaults to all of ``leaf_hashes``. Costs O(size) hashing: for
    tests, small trees and block records; use ``MerkleTree`` for logs.

    Raises ``ProofError`` if ``size`` exceeds the leaves given, ``index`` is not
    in ``[0, size)``, or a leaf hash is not 32 bytes.
    """
    size = _check_list_size(leaf_hashes, size)
    _check_index(index, size)
    _check_leaves(leaf_hashes, size)
    return _resolve(
        _inclusion_plan(index, size), lambda start, end: _mth(list(leaf_hashes[start:end]))
    )


def consistency_proof(
    leaf_hashes: Sequence[bytes], size1: int, size2: int | None = None
) -> list[bytes]:
    """The RFC 9162 consistency proof (PROOF) between the first ``size1`` and ``size2`` leaves.

    ``size2`` defaults to all of ``leaf_hashes``. Costs O(size2) hashing.

    Raises ``ProofError`` if ``size2`` exceeds the leaves given, ``size1 < 1``,
    ``size2 < size1``, or a leaf hash is not 32 bytes.
    """
    size2 = _check_list_size(leaf_hashes, size2)
    _check_sizes(size1, size2)
    _check_leaves(leaf_hashes, size2)
    return _resolve(
        _consistency_plan(size1, size2), lambda start, end: _mth(list(leaf_hashes[start:end]))
    )


# --- proof plans: which subtree hashes a proof is made of ------------------------------------
#
# A plan lists, for each proof element, the range of leaves whose MTH it is.
# Both the list reference and MerkleTree resolve the same plans; they differ
# only in how they find a range's hash.

_Range: TypeAlias = tuple[int, int]


def _largest_power_of_two_below(n: int) -> int:
    """The ``k`` of RFC 9162: the largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _inclusion_plan(index: int, size: int) -> list[_Range]:
    """PATH(index, D[0:size]) as leaf ranges, leaf level first (RFC 9162 §2.1.3.1)."""
    start, end = 0, size
    path: list[_Range] = []
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        if index < start + k:
            path.append((start + k, end))
            end = start + k
        else:
            path.append((start, start + k))
            start += k
    path.reverse()
    return path


def _consistency_plan(size1: int, size2: int) -> list[_Range]:
    """PROOF(size1, D[0:size2]) as leaf ranges, in proof order (RFC 9162 §2.1.4.1)."""
    start, end, m, whole = 0, size2, size1, True
    suffix: list[_Range] = []
    while m != end - start:
        k = _largest_power_of_two_below(end - start)
        if m <= k:
            suffix.append((start + k, end))
            end = start + k
        else:
            suffix.append((start, start + k))
            start += k
            m -= k
            whole = False
    head = [] if whole else [(start, end)]
    return head + suffix[::-1]


def _resolve(plan: list[_Range], range_hash: Callable[[int, int], bytes]) -> list[bytes]:
    return [range_hash(start, end) for start, end in plan]


def _range_nodes(start: int, end: int) -> list[Node]:
    """The complete subtrees whose right fold is MTH(D[start:end]), largest first.

    Valid for the ranges proofs and roots use: ``start`` is a multiple of the
    largest power of two not above ``end - start``, so every piece is aligned.
    """
    size = end - start
    if size > 0 and size & (size - 1) == 0:
        level = size.bit_length() - 1
        return [(level, start >> level)]
    nodes: list[Node] = []
    while start < end:
        level = (end - start).bit_length() - 1
        nodes.append((level, start >> level))
        start += 1 << level
    return nodes


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Right fold: ``node(h0, node(h1, … node(h[n-2], h[n-1])))``."""
    acc = hashes[-1]
    for left in reversed(hashes[:-1]):
        acc = node_hash(left, acc)
    return acc


# --- the append-only tree --------------------------------------------------------------------


class HashStore(Protocol):
    """Where a ``MerkleTree`` keeps its complete-subtree hashes.

    Nodes are ``(level, index)`` pairs (see ``MerkleTree``); each is written
    once and never changes. Backends (memory, SQLite, PostgreSQL) need only
    batch reads and one atomic write per appended batch. A store has one
    writing ``MerkleTree`` at a time.
    """

    def size(self) -> int:
        """Number of leaves whose nodes are stored (as recorded by the last ``put_many``)."""
        ...

    def get_many(self, nodes: Sequence[Node]) -> list[bytes | None]:
        """The hash of each node, in order; ``None`` for a node not stored."""
        ...

    def put_many(self, entries: Sequence[tuple[int, int, bytes]], size: int) -> None:
        """Store ``(level, index, hash)`` entries and record ``size``, atomically.

        Raises ``StorageError`` if the write fails; then nothing was written.
        """
        ...


class MemoryHashStore:
    """``HashStore`` in memory: one contiguous ``bytearray`` per level.

    Complete subtrees of a level fill in from index 0 upwards, so a level is
    an array of 32-byte hashes (about 64 bytes per leaf in all).
    """

    def __init__(self) -> None:
        self._levels: list[bytearray] = []
        self._counts: list[int] = []  # hashes in each level
        self._size = 0

    def size(self) -> int:
        return self._size

    def get_many(self, nodes: Sequence[Node]) -> list[bytes | None]:
        levels = self._levels
        out: list[bytes | None] = []
        for level, index in nodes:
            offset = index * HASH_SIZE
            if level < len(levels) and 0 <= offset < len(levels[level]):
                out.append(bytes(levels[level][offset : offset + HASH_SIZE]))
            else:
                out.append(None)
        return out

    def put_many(self, entries: Sequence[tuple[int, int, bytes]], size: int) -> None:
        # Check the whole batch before writing any of it, so a refusal leaves
        # the store as it was.
        counts = self._counts.copy()
        for level, index, digest in entries:
            if len(digest) != HASH_SIZE:
                raise StorageError(
                    f"node ({level}, {index}): expected {HASH_SIZE} bytes, got {len(digest)}"
                )
            while len(counts) <= level:
                counts.append(0)
            if index == counts[level]:
                counts[level] += 1
            elif not 0 <= index < counts[level]:
                raise StorageError(
                    f"node ({level}, {index}): expected index at most {counts[level]}, got {index}"
                )
            elif (stored := self.get_many([(level, index)])[0]) is not None and stored != digest:
                raise StorageError(f"node ({level}, {index}): already stored with another hash")
        levels = self._levels
        while len(levels) < len(counts):
            levels.append(bytearray())
        for level, index, digest in entries:
            buf = levels[level]
            offset = index * HASH_SIZE
            if offset == len(buf):
                buf += digest
        self._counts = counts
        self._size = size


class MerkleTree:
    """An append-only RFC 9162 tree over a ``HashStore``.

    ``append``/``append_many`` cost O(1) hashes and node writes per leaf,
    amortised, and one ``put_many`` per call. ``root``, ``inclusion_proof`` and
    ``consistency_proof`` work for any size up to the current one with one
    ``get_many`` of O(log n) nodes and O(log n) hashing.

    One ``MerkleTree`` writes to a store at a time. Readers may open their own
    tree on the same store: asked about a size beyond the one they loaded, they
    reload the store's size first.
    """

    def __init__(
        self,
        store: HashStore | None = None,
        *,
        min_level: int = 0,
        leaves: LeafSource | None = None,
    ) -> None:
        """Open the tree kept in ``store`` (a new ``MemoryHashStore`` by default).

        With ``min_level`` above 0 only the nodes at that level and above are
        written to ``store``; a node below it is recomputed from ``leaves``,
        which must give the leaf hashes appended so far. Every root or proof
        then hashes at most ``2**min_level`` leaves per block it touches (two
        blocks for most proofs).

        Only the store's size is read here; the right border, which only
        appending needs, is read by the first append. A reader opened for one
        proof so reads just the proof's nodes.

        Raises ``ValueError`` if ``min_level`` is negative or above 0 without
        ``leaves``.
        """
        if not _is_int(min_level) or min_level < 0:
            raise ValueError(f"min_level: expected a non-negative integer, got {min_level!r}")
        if min_level and leaves is None:
            raise ValueError("min_level above 0 needs a leaf source to recompute the lower nodes")
        self._store: HashStore = store if store is not None else MemoryHashStore()
        self._min_level = min_level
        self._leaves = leaves
        self._size = 0
        # Hashes of the complete subtrees along the right border, largest first:
        # one per set bit of ``_size``. Appending only ever touches these. None
        # until the first append needs them.
        self._frontier: list[bytes] | None = None
        self._reload()

    @property
    def store(self) -> HashStore:
        return self._store

    @property
    def min_level(self) -> int:
        """The lowest level whose nodes are written to the store."""
        return self._min_level

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash; returns its index.

        Raises ``ProofError`` if ``leaf_hash`` is not 32 bytes and
        ``StorageError`` if the store fails.
        """
        return self.append_many((leaf_hash,))

    def append_many(self, leaf_hashes: Iterable[bytes]) -> int:
        """Append leaf hashes in order with one store write; returns the first one's index.

        All or nothing: when one hash is not 32 bytes nothing is appended.
        Raises ``ProofError`` for a hash of the wrong length and
        ``StorageError`` if the store fails or lacks nodes its size implies.
        """
        first = self._size
        leaves = list(leaf_hashes)
        for offset, leaf in enumerate(leaves):
            if len(leaf) != HASH_SIZE:
                raise ProofError(
                    f"leaf_hashes[{offset}]: expected {HASH_SIZE} bytes, got {len(leaf)}"
                )
        if not leaves:
            return first

        if self._frontier is None:
            self._frontier = self._get(_range_nodes(0, self._size)) if self._size else []
        frontier = list(self._frontier)
        entries: list[tuple[int, int, bytes]] = []
        put = entries.append
        sha256 = _sha256
        prefix = _NODE_PREFIX
        low = self._min_level
        index = first
        for leaf in leaves:
            if not low:
                put((0, index, leaf))
            carry = leaf
            level = 0
            n = index
            # Each trailing one bit of the old size is a complete subtree that
            # the new leaf now completes a parent of.
            while n & 1:
                carry = sha256(prefix + frontier.pop() + carry).digest()
                level += 1
                n >>= 1
                if level >= low:
                    put((level, n, carry))
            frontier.append(carry)
            index += 1

        self._store.put_many(entries, index)
        self._size = index
        self._frontier = frontier
        return first

    def leaf_hash(self, index: int) -> bytes:
        """The hash of leaf ``index``.

        Raises ``ProofError`` if ``index`` is not in ``[0, size)`` and
        ``StorageError`` if the store lacks it.
        """
        if _is_int(index) and index >= self._size:
            self._reload()
        _check_index(index, self._size)
        return self._get([(0, index)])[0]

    def root(self, size: int | None = None) -> bytes:
        """The root at ``size`` leaves (default: the current size).

        Raises ``ProofError`` if ``size`` is negative or beyond the tree and
        ``StorageError`` if the store lacks a node.
        """
        size = self._check_size(size)
        if size == 0:
            return EMPTY_ROOT
        return _fold(self._get(_range_nodes(0, size)))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The inclusion proof of leaf ``index`` in the tree at ``size`` (default: current).

        Raises ``ProofError`` if ``size`` is beyond the tree or ``index`` is not
        in ``[0, size)``, and ``StorageError`` if the store lacks a node.
        """
        size = self._check_size(size)
        _check_index(index, size)
        return self._resolve(_inclusion_plan(index, size))

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """The consistency proof from ``size1`` to ``size2`` (default: current).

        Raises ``ProofError`` if ``size2`` is beyond the tree, ``size1 < 1`` or
        ``size2 < size1``, and ``StorageError`` if the store lacks a node.
        """
        size2 = self._check_size(size2)
        _check_sizes(size1, size2)
        return self._resolve(_consistency_plan(size1, size2))

    def _resolve(self, plan: list[_Range]) -> list[bytes]:
        # Fetch every node of every range in one batch, then fold per range.
        pieces = [_range_nodes(start, end) for start, end in plan]
        hashes = self._get([node for nodes in pieces for node in nodes])
        proof: list[bytes] = []
        offset = 0
        for nodes in pieces:
            count = len(nodes)
            # Below the right border every range is one complete subtree.
            proof.append(hashes[offset] if count == 1 else _fold(hashes[offset : offset + count]))
            offset += count
        return proof

    def _get(self, nodes: list[Node]) -> list[bytes]:
        low = self._min_level
        if not low:
            found = self._store.get_many(nodes)
            if len(found) != len(nodes):
                raise StorageError(
                    f"hash store returned {len(found)} hashes for {len(nodes)} nodes"
                )
        else:
            stored = [node for node in nodes if node[0] >= low]
            found = self._store.get_many(stored) if stored else []
            if len(found) != len(stored):
                raise StorageError(
                    f"hash store returned {len(found)} hashes for {len(stored)} nodes"
                )
            if len(stored) != len(nodes):
                computed = self._recompute([node for node in nodes if node[0] < low])
                from_store = iter(found)
                found = [next(from_store) if node[0] >= low else computed[node] for node in nodes]
        if None in found:
            node = nodes[found.index(None)]
            raise StorageError(f"hash store lacks node {node} of a tree of {self._size}")
        return cast(list[bytes], found)

    def _recompute(self, nodes: list[Node]) -> dict[Node, bytes | None]:
        """The hashes of nodes below ``min_level``, from the leaves; None where a leaf is missing.

        Nodes are grouped by the ``min_level`` block they lie in, and each
        block's leaves are read once: an inclusion proof needs a sibling at
        every level below ``min_level``, which together cover the whole block.
        """
        assert self._leaves is not None  # checked by __init__
        low = self._min_level
        blocks: dict[int, list[Node]] = {}
        for node in nodes:
            level, index = node
            blocks.setdefault((index << level) >> low, []).append(node)
        sha256, prefix = _sha256, _NODE_PREFIX
        out: dict[Node, bytes | None] = {}
        for group in blocks.values():
            top = max(level for level, _ in group)
            # Aligned to the largest node, so pairing from ``start`` up builds
            # exactly the complete subtrees of the tree.
            start = min(index << level for level, index in group) >> top << top
            end = max((index + 1) << level for level, index in group)
            row = list(self._leaves(start, end))[: end - start]
            rows = [row]
            for _ in range(top):
                row = [
                    sha256(prefix + row[i] + row[i + 1]).digest() for i in range(0, len(row) - 1, 2)
                ]
                rows.append(row)
            for node in group:
                level, index = node
                offset = index - (start >> level)
                out[node] = rows[level][offset] if offset < len(rows[level]) else None
        return out

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self._size
        if not _is_int(size) or size < 0:
            raise ProofError(f"size: expected a non-negative integer, got {size!r}")
        if size > self._size:
            self._reload()
            if size > self._size:
                raise ProofError(f"size: expected at most {self._size}, got {size}")
        return size

    def _reload(self) -> None:
        self._size = self._store.size()
        self._frontier = None


# --- argument checks -------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_leaves(leaf_hashes: Sequence[bytes], size: int) -> None:
    for position in range(size):
        leaf = leaf_hashes[position]
        if type(leaf) is not bytes or len(leaf) != HASH_SIZE:
            _check_hash(f"leaf_hashes[{position}]", leaf)


def _check_hash(what: str, digest: bytes) -> None:
    if not isinstance(digest, bytes | bytearray | memoryview):
        raise ProofError(f"{what}: expected {HASH_SIZE} bytes, got {type(digest).__name__}")
    if len(digest) != HASH_SIZE:
        raise ProofError(f"{what}: expected {HASH_SIZE} bytes, got {len(digest)}")


def _check_proof(proof: Sequence[bytes]) -> None:
    for position, digest in enumerate(proof):
        if type(digest) is not bytes or len(digest) != HASH_SIZE:
            _check_hash(f"proof[{position}]", digest)


def _check_length(what: str, expected: int, got: int) -> None:
    if expected != got:
        raise ProofError(f"{what} length: expected {expected} hashes, got {got}")


def _check_index(index: int, size: int) -> None:
    if not _is_int(size) or size < 0:
        raise ProofError(f"size: expected a non-negative integer, got {size!r}")
    if not _is_int(index) or not 0 <= index < size:
        raise ProofError(f"index: expected 0 <= index < {size}, got {index!r}")


def _check_sizes(size1: int, size2: int) -> None:
    if not _is_int(size1) or size1 < 1:
        raise ProofError(
            f"size1: expected at least 1 (no consistency proof from the empty tree), got {size1!r}"
        )
    if not _is_int(size2) or size2 < size1:
        raise ProofError(f"size2: expected at least size1 = {size1}, got {size2!r}")


def _check_list_size(leaf_hashes: Sequence[bytes], size: int | None) -> int:
    if size is None:
        return len(leaf_hashes)
    if not _is_int(size) or not 0 <= size <= len(leaf_hashes):
        raise ProofError(f"size: expected 0 <= size <= {len(leaf_hashes)}, got {size!r}")
    return size
