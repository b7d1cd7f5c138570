"""chainmail.merkle against RFC 9162, CT's vectors, and a naive recursive model."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainmail import merkle
from chainmail.errors import ProofError, StorageError
from chainmail.merkle import MemoryHashStore, MerkleTree, Node

VECTORS = Path(__file__).parent.parent / "vectors"
MAX = 200


# --- a deliberately naive RFC 9162 model: the spec's recursive definitions, verbatim ----------


def naive_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def naive_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than n, found by counting up."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Naive:
    """MTH, PATH and PROOF of RFC 9162 §2.1.1, §2.1.3.1, §2.1.4.1 over one list of leaves.

    MTH is memoised per leaf range so the exhaustive loops stay fast; the
    recursion is otherwise the RFC's text.
    """

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.leaves = list(leaves)
        self.mth = cache(self._mth)

    def _mth(self, start: int, end: int) -> bytes:
        n = end - start
        if n == 0:
            return hashlib.sha256(b"").digest()
        if n == 1:
            return self.leaves[start]
        k = split_point(n)
        return naive_node(self.mth(start, start + k), self.mth(start + k, end))

    def path(self, m: int, start: int, end: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = split_point(n)
        if m < k:
            return [*self.path(m, start, start + k), self.mth(start + k, end)]
        return [*self.path(m - k, start + k, end), self.mth(start, start + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        return self.subproof(m, 0, n, True)

    def subproof(self, m: int, start: int, end: int, b: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if b else [self.mth(start, end)]
        k = split_point(n)
        if m <= k:
            return [*self.subproof(m, start, start + k, b), self.mth(start + k, end)]
        return [*self.subproof(m - k, start + k, end, False), self.mth(start, start + k)]


LEAVES = [naive_leaf(i.to_bytes(4, "big")) for i in range(MAX)]
NAIVE = Naive(LEAVES)


def list_source(leaves: Sequence[bytes]) -> merkle.LeafSource:
    """A ``LeafSource`` over a list, for trees that store only their upper levels."""
    return lambda start, end: leaves[start:end]


@pytest.fixture(scope="module", params=[0, 2, 5], ids=lambda level: f"min_level={level}")
def tree(request: pytest.FixtureRequest) -> MerkleTree:
    """200 leaves appended in uneven batches and singly, to exercise both paths.

    Also with only the levels from ``min_level`` up stored: every exhaustive test
    below then checks the recomputed lower nodes too.
    """
    level: int = request.param
    t = MerkleTree(min_level=level, leaves=list_source(LEAVES)) if level else MerkleTree()
    position = 0
    for batch in (1, 2, 5, 1, 13, 64, 1, 1, 40, 3):
        assert t.append_many(LEAVES[position : position + batch]) == position
        position += batch
    while position < MAX:
        assert t.append(LEAVES[position]) == position
        position += 1
    return t


def flip(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


# --- hashing ---------------------------------------------------------------------------------


def test_hash_prefixes() -> None:
    assert merkle.leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    a, b = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    assert merkle.node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()


def test_empty_root_is_sha256_of_nothing() -> None:
    assert merkle.root([]) == merkle.EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert MerkleTree().root() == merkle.EMPTY_ROOT
    assert merkle.EMPTY_ROOT.hex().startswith("e3b0c442")


def test_root_rejects_a_short_leaf() -> None:
    with pytest.raises(ProofError, match=r"leaf_hashes\[1\]: expected 32 bytes, got 31"):
        merkle.root([LEAVES[0], LEAVES[1][:31]])


# --- exhaustive agreement: tree, list reference, naive model, verifiers ----------------------


def test_roots_every_size(tree: MerkleTree) -> None:
    for n in range(1, MAX + 1):
        expected = NAIVE.mth(0, n)
        assert tree.root(n) == expected
        assert merkle.root(LEAVES[:n]) == expected
    assert tree.root() == NAIVE.mth(0, MAX)


def test_inclusion_every_index_every_size(tree: MerkleTree) -> None:
    checked = 0
    for n in range(1, MAX + 1):
        root = NAIVE.mth(0, n)
        for i in range(n):
            proof = tree.inclusion_proof(i, n)
            assert proof == NAIVE.path(i, 0, n), (i, n)
            assert proof == merkle.inclusion_proof(LEAVES, i, n), (i, n)
            merkle.verify_inclusion(LEAVES[i], i, n, proof, root)
            checked += 1
    assert checked == MAX * (MAX + 1) // 2


def test_consistency_every_pair_of_sizes(tree: MerkleTree) -> None:
    checked = 0
    for n in range(1, MAX + 1):
        root2 = NAIVE.mth(0, n)
        for m in range(1, n + 1):
            proof = tree.consistency_proof(m, n)
            assert proof == NAIVE.proof(m, n), (m, n)
            assert proof == merkle.consistency_proof(LEAVES, m, n), (m, n)
            merkle.verify_consistency(m, n, proof, NAIVE.mth(0, m), root2)
            checked += 1
    assert checked == MAX * (MAX + 1) // 2


def test_proofs_default_to_the_current_size(tree: MerkleTree) -> None:
    assert tree.inclusion_proof(7) == NAIVE.path(7, 0, MAX)
    assert tree.consistency_proof(7) == NAIVE.proof(7, MAX)
    assert merkle.inclusion_proof(LEAVES, 7) == NAIVE.path(7, 0, MAX)
    assert merkle.consistency_proof(LEAVES, 7) == NAIVE.proof(7, MAX)


# --- tampering -------------------------------------------------------------------------------


def test_tampered_inclusion_proofs_fail(tree: MerkleTree) -> None:
    for n in range(1, 65):
        root = NAIVE.mth(0, n)
        for i in range(n):
            proof = tree.inclusion_proof(i, n)
            for position in range(len(proof)):
                bad = list(proof)
                bad[position] = flip(bad[position], 3)
                with pytest.raises(ProofError, match="does not verify"):
                    merkle.verify_inclusion(LEAVES[i], i, n, bad, root)
            with pytest.raises(ProofError, match="does not verify"):
                merkle.verify_inclusion(flip(LEAVES[i]), i, n, proof, root)
            with pytest.raises(ProofError, match="does not verify"):
                merkle.verify_inclusion(LEAVES[i], i, n, proof, flip(root))
            for j in range(n):
                if j != i:
                    with pytest.raises(ProofError):
                        merkle.verify_inclusion(LEAVES[i], j, n, proof, root)
            with pytest.raises(ProofError):
                merkle.verify_inclusion(LEAVES[i], i, n, [*proof, root], root)
            if proof:
                with pytest.raises(ProofError):
                    merkle.verify_inclusion(LEAVES[i], i, n, proof[:-1], root)


def test_tampered_consistency_proofs_fail(tree: MerkleTree) -> None:
    for n in range(2, 65):
        root2 = NAIVE.mth(0, n)
        for m in range(1, n):
            root1 = NAIVE.mth(0, m)
            proof = tree.consistency_proof(m, n)
            for position in range(len(proof)):
                bad = list(proof)
                bad[position] = flip(bad[position], 4)
                with pytest.raises(ProofError, match="does not verify"):
                    merkle.verify_consistency(m, n, bad, root1, root2)
            with pytest.raises(ProofError, match="does not verify"):
                merkle.verify_consistency(m, n, proof, flip(root1), root2)
            with pytest.raises(ProofError, match="does not verify"):
                merkle.verify_consistency(m, n, proof, root1, flip(root2))
            with pytest.raises(ProofError):
                merkle.verify_consistency(m, n, proof, root2, root1)
            with pytest.raises(ProofError, match="length"):
                merkle.verify_consistency(m, n, [*proof, root1], root1, root2)
            with pytest.raises(ProofError, match="length"):
                merkle.verify_consistency(m, n, proof[:-1], root1, root2)
            for other in (m - 1, m + 1):
                if 1 <= other < n and NAIVE.mth(0, other) != root1:
                    with pytest.raises(ProofError):
                        merkle.verify_consistency(other, n, proof, root1, root2)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_random_tampering_fails(tree: MerkleTree, data: st.DataObject) -> None:
    n = data.draw(st.integers(2, MAX), label="size")
    i = data.draw(st.integers(0, n - 1), label="index")
    proof = tree.inclusion_proof(i, n)
    position = data.draw(st.integers(0, len(proof) - 1), label="position")
    bit = data.draw(st.integers(0, 255), label="bit")
    bad = list(proof)
    tampered = bytearray(bad[position])
    tampered[bit // 8] ^= 1 << (bit % 8)
    bad[position] = bytes(tampered)
    with pytest.raises(ProofError, match="does not verify"):
        merkle.verify_inclusion(LEAVES[i], i, n, bad, NAIVE.mth(0, n))

    m = data.draw(st.integers(1, n - 1), label="size1")
    cproof = tree.consistency_proof(m, n)
    position = data.draw(st.integers(0, len(cproof) - 1), label="cposition")
    bad = list(cproof)
    tampered = bytearray(bad[position])
    tampered[bit // 8] ^= 1 << (bit % 8)
    bad[position] = bytes(tampered)
    with pytest.raises(ProofError, match="does not verify"):
        merkle.verify_consistency(m, n, bad, NAIVE.mth(0, m), NAIVE.mth(0, n))


# --- hypothesis: arbitrary leaves, batches and sizes -----------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    data=st.lists(st.binary(max_size=8), min_size=1, max_size=300),
    cuts=st.lists(st.integers(1, 40), max_size=30),
    picks=st.data(),
)
def test_any_batching_gives_the_naive_tree(
    data: list[bytes], cuts: list[int], picks: st.DataObject
) -> None:
    leaves = [merkle.leaf_hash(d) for d in data]
    naive = Naive(leaves)
    batched, single = MerkleTree(), MerkleTree()
    position = 0
    for cut in cuts:
        batched.append_many(leaves[position : position + cut])
        position = min(position + cut, len(leaves))
    batched.append_many(leaves[position:])
    for leaf in leaves:
        single.append(leaf)

    n = picks.draw(st.integers(1, len(leaves)), label="size")
    m = picks.draw(st.integers(1, n), label="size1")
    i = picks.draw(st.integers(0, n - 1), label="index")
    for t in (batched, single):
        assert t.root(n) == naive.mth(0, n) == merkle.root(leaves[:n])
        assert t.inclusion_proof(i, n) == naive.path(i, 0, n)
        assert t.consistency_proof(m, n) == naive.proof(m, n)
    merkle.verify_inclusion(leaves[i], i, n, naive.path(i, 0, n), naive.mth(0, n))
    merkle.verify_consistency(m, n, naive.proof(m, n), naive.mth(0, m), naive.mth(0, n))


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 3000),
    min_level=st.integers(1, 7),
    cuts=st.lists(st.integers(1, 700), max_size=8),
    picks=st.data(),
)
def test_upper_levels_only_give_the_same_tree(
    n: int, min_level: int, cuts: list[int], picks: st.DataObject
) -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    full = MerkleTree()
    full.append_many(leaves)
    # The source holds only what was appended, as the log's entries do.
    appended: list[bytes] = []
    t = MerkleTree(min_level=min_level, leaves=list_source(appended))
    position = 0
    for cut in [*cuts, n]:
        batch = leaves[position : position + cut]
        t.append_many(batch)
        appended.extend(batch)
        position += len(batch)
    block = 1 << min_level
    # Sizes and indexes in the incomplete last block are the interesting ones.
    size = picks.draw(st.sampled_from([n, n - n % block or n, max(1, n - 1)]) | st.integers(1, n))
    last_block = size - (size - 1) % block - 1
    index = picks.draw(st.integers(last_block, size - 1) | st.integers(0, size - 1))
    size1 = picks.draw(st.integers(1, size))
    assert t.root(size) == full.root(size)
    assert t.inclusion_proof(index, size) == full.inclusion_proof(index, size)
    assert t.consistency_proof(size1, size) == full.consistency_proof(size1, size)
    assert t.leaf_hash(index) == leaves[index]
    reopened = MerkleTree(t.store, min_level=min_level, leaves=list_source(appended))
    assert reopened.root() == full.root()
    reopened.append(leaves[0])
    appended.append(leaves[0])
    full.append(leaves[0])
    assert reopened.root() == full.root()


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 5000), picks=st.data())
def test_large_sizes_verify(n: int, picks: st.DataObject) -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    t = MerkleTree()
    t.append_many(leaves)
    i = picks.draw(st.integers(0, n - 1), label="index")
    m = picks.draw(st.integers(1, n), label="size1")
    merkle.verify_inclusion(leaves[i], i, n, t.inclusion_proof(i), t.root())
    merkle.verify_consistency(m, n, t.consistency_proof(m), t.root(m), t.root())


# --- known vectors: Certificate Transparency via transparency-dev/merkle ---------------------


def ct_vectors() -> tuple[dict[str, object], list[bytes], list[bytes]]:
    vectors = json.loads((VECTORS / "rfc6962-merkle-ct.json").read_text())
    leaves = [merkle.leaf_hash(bytes.fromhex(x)) for x in vectors["leaves"]]
    roots = [bytes.fromhex(x) for x in vectors["roots"]]
    return vectors, leaves, roots


def test_ct_roots() -> None:
    _, leaves, roots = ct_vectors()
    tree = MerkleTree()
    tree.append_many(leaves)
    for n, expected in enumerate(roots, start=1):
        assert merkle.root(leaves[:n]) == expected
        assert tree.root(n) == expected


def test_ct_inclusion_proofs() -> None:
    vectors, leaves, roots = ct_vectors()
    tree = MerkleTree()
    tree.append_many(leaves)
    cases = vectors["inclusion"]
    assert isinstance(cases, list) and len(cases) == 5
    for case in cases:
        index, size = case["leaf"] - 1, case["size"]
        proof = [bytes.fromhex(x) for x in case["proof"]]
        assert tree.inclusion_proof(index, size) == proof
        assert merkle.inclusion_proof(leaves, index, size) == proof
        merkle.verify_inclusion(leaves[index], index, size, proof, roots[size - 1])
        # transparency-dev's corruptInclusionProof probes.
        root, leaf = roots[size - 1], leaves[index]
        some_hash = bytes.fromhex(
            "abacaba000000000000000000000000000000000000000000060061e00123456"
        )
        probes = [
            (index - 1, size, root, leaf, proof),
            (index + 1, size, root, leaf, proof),
            (index ^ 2, size, root, leaf, proof),
            (index, size * 2, root, leaf, proof),
            (index, size // 2, root, leaf, proof),
            (index, size, root, b"WrongLeaf", proof),
            (index, size, merkle.EMPTY_ROOT, leaf, proof),
            (index, size, some_hash, leaf, proof),
            (index, size, root, leaf, [*proof, b""]),
            (index, size, root, leaf, [*proof, root]),
            (index, size, root, leaf, [b"", *proof]),
            (index, size, root, leaf, [root, *proof]),
        ]
        if proof:
            probes.append((index, size, root, leaf, proof[:-1]))
        if len(proof) > 1:
            probes.append((index, size, root, leaf, [proof[0], some_hash, *proof[1:]]))
        for p_index, p_size, p_root, p_leaf, p_proof in probes:
            with pytest.raises(ProofError):
                merkle.verify_inclusion(p_leaf, p_index, p_size, p_proof, p_root)


def test_ct_consistency_proofs() -> None:
    vectors, leaves, roots = ct_vectors()
    tree = MerkleTree()
    tree.append_many(leaves)
    cases = vectors["consistency"]
    assert isinstance(cases, list) and len(cases) == 4
    for case in cases:
        size1, size2 = case["size1"], case["size2"]
        proof = [bytes.fromhex(x) for x in case["proof"]]
        root1, root2 = roots[size1 - 1], roots[size2 - 1]
        assert tree.consistency_proof(size1, size2) == proof
        assert merkle.consistency_proof(leaves, size1, size2) == proof
        merkle.verify_consistency(size1, size2, proof, root1, root2)
        if not proof:
            continue
        # transparency-dev's corruptConsistencyProof probes (minus size1 = 0,
        # which chainmail refuses outright).
        probes = [
            (size1 + 1, size2, root1, root2, proof),
            (size1 ^ 2, size2, root1, root2, proof),
            (size1, size2 * 2, root1, root2, proof),
            (size1, size2 // 2, root1, root2, proof),
            (size1, size2, b"WrongRoot", root2, proof),
            (size1, size2, root1, b"WrongRoot", proof),
            (size1, size2, root2, root1, proof),
            (size1, size2, root1, root2, []),
            (size1, size2, root1, root2, [*proof, b""]),
            (size1, size2, root1, root2, [*proof, root1]),
            (size1, size2, root1, root2, [*proof, root2]),
            (size1, size2, root1, root2, [b"", *proof]),
            (size1, size2, root1, root2, [root1, *proof]),
            (size1, size2, root1, root2, [root2, *proof]),
            (size1, size2, root1, root2, [proof[0], *proof]),
            (size1, size2, root1, root2, proof[:-1]),
        ]
        if size1 > 1:
            probes.append((size1 - 1, size2, root1, root2, proof))
        for position in range(len(proof)):
            bad = list(proof)
            bad[position] = flip(bad[position], 4)
            probes.append((size1, size2, root1, root2, bad))
        for s1, s2, r1, r2, p in probes:
            if s1 < 1 or s2 < s1:
                continue
            with pytest.raises(ProofError):
                merkle.verify_consistency(s1, s2, p, r1, r2)


# --- errors: precise messages ----------------------------------------------------------------


def test_verify_inclusion_errors() -> None:
    leaf, root = LEAVES[0], NAIVE.mth(0, 2)
    proof = [LEAVES[1]]
    merkle.verify_inclusion(leaf, 0, 2, proof, root)
    with pytest.raises(ProofError, match=r"^leaf hash: expected 32 bytes, got 31$"):
        merkle.verify_inclusion(leaf[:31], 0, 2, proof, root)
    with pytest.raises(ProofError, match=r"^root: expected 32 bytes, got 33$"):
        merkle.verify_inclusion(leaf, 0, 2, proof, root + b"x")
    with pytest.raises(ProofError, match=r"^proof\[0\]: expected 32 bytes, got 0$"):
        merkle.verify_inclusion(leaf, 0, 2, [b""], root)
    with pytest.raises(ProofError, match=r"^index: expected 0 <= index < 2, got 2$"):
        merkle.verify_inclusion(leaf, 2, 2, proof, root)
    with pytest.raises(ProofError, match=r"^index: expected 0 <= index < 2, got -1$"):
        merkle.verify_inclusion(leaf, -1, 2, proof, root)
    with pytest.raises(ProofError, match=r"^index: expected 0 <= index < 0, got 0$"):
        merkle.verify_inclusion(leaf, 0, 0, [], merkle.EMPTY_ROOT)
    with pytest.raises(ProofError, match=r"^size: expected a non-negative integer, got -2$"):
        merkle.verify_inclusion(leaf, 0, -2, proof, root)
    with pytest.raises(ProofError, match=r"^inclusion proof length: expected 1 hashes, got 2$"):
        merkle.verify_inclusion(leaf, 0, 2, [*proof, root], root)
    with pytest.raises(
        ProofError,
        match=rf"^inclusion proof does not verify: expected root {LEAVES[5].hex()}, "
        rf"got {root.hex()}$",
    ):
        merkle.verify_inclusion(leaf, 0, 2, proof, LEAVES[5])
    with pytest.raises(ProofError, match="expected 32 bytes, got str"):
        merkle.verify_inclusion("x" * 32, 0, 2, proof, root)  # type: ignore[arg-type]


def test_verify_consistency_errors() -> None:
    r1, r2 = NAIVE.mth(0, 1), NAIVE.mth(0, 2)
    proof = [LEAVES[1]]
    merkle.verify_consistency(1, 2, proof, r1, r2)
    merkle.verify_consistency(2, 2, [], r2, r2)
    with pytest.raises(
        ProofError,
        match=r"^size1: expected at least 1 \(no consistency proof from the empty tree\), got 0$",
    ):
        merkle.verify_consistency(0, 2, [], merkle.EMPTY_ROOT, r2)
    with pytest.raises(ProofError, match=r"^size2: expected at least size1 = 2, got 1$"):
        merkle.verify_consistency(2, 1, proof, r2, r1)
    with pytest.raises(ProofError, match=r"^root1: expected 32 bytes, got 4$"):
        merkle.verify_consistency(1, 2, proof, b"abcd", r2)
    with pytest.raises(ProofError, match=r"^root2: expected 32 bytes, got 0$"):
        merkle.verify_consistency(1, 2, proof, r1, b"")
    with pytest.raises(ProofError, match=r"^proof\[1\]: expected 32 bytes, got 3$"):
        merkle.verify_consistency(1, 2, [*proof, b"abc"], r1, r2)
    with pytest.raises(ProofError, match=r"^consistency proof length: expected 1 hashes, got 0$"):
        merkle.verify_consistency(1, 2, [], r1, r2)
    with pytest.raises(ProofError, match=r"^consistency proof length: expected 0 hashes, got 1$"):
        merkle.verify_consistency(2, 2, proof, r2, r2)
    with pytest.raises(ProofError, match=r"expected root2 .* for equal sizes, got "):
        merkle.verify_consistency(2, 2, [], r2, r1)
    r3, r4 = NAIVE.mth(0, 3), NAIVE.mth(0, 4)
    proof34 = NAIVE.proof(3, 4)
    merkle.verify_consistency(3, 4, proof34, r3, r4)
    with pytest.raises(ProofError, match=r"^consistency proof does not verify: expected root1 "):
        merkle.verify_consistency(3, 4, proof34, r4, r4)
    with pytest.raises(ProofError, match=r"^consistency proof does not verify: expected root2 "):
        merkle.verify_consistency(1, 2, proof, r1, r1)


def test_list_reference_errors() -> None:
    with pytest.raises(ProofError, match=r"^size: expected 0 <= size <= 3, got 4$"):
        merkle.inclusion_proof(LEAVES[:3], 0, 4)
    with pytest.raises(ProofError, match=r"^index: expected 0 <= index < 3, got 3$"):
        merkle.inclusion_proof(LEAVES[:3], 3)
    with pytest.raises(ProofError, match=r"^size1: expected at least 1"):
        merkle.consistency_proof(LEAVES[:3], 0)
    with pytest.raises(ProofError, match=r"^size2: expected at least size1 = 3, got 2$"):
        merkle.consistency_proof(LEAVES[:3], 3, 2)
    with pytest.raises(ProofError, match=r"^leaf_hashes\[2\]: expected 32 bytes, got 1$"):
        merkle.inclusion_proof([*LEAVES[:2], b"x"], 0)
    assert merkle.consistency_proof(LEAVES[:3], 3) == []
    assert merkle.inclusion_proof(LEAVES[:1], 0) == []


def test_tree_errors(tree: MerkleTree) -> None:
    with pytest.raises(ProofError, match=rf"^size: expected at most {MAX}, got {MAX + 1}$"):
        tree.root(MAX + 1)
    with pytest.raises(ProofError, match=r"^size: expected a non-negative integer, got -1$"):
        tree.root(-1)
    with pytest.raises(ProofError, match=r"^index: expected 0 <= index < 5, got 5$"):
        tree.inclusion_proof(5, 5)
    with pytest.raises(ProofError, match=rf"^size: expected at most {MAX}, got {MAX + 1}$"):
        tree.inclusion_proof(0, MAX + 1)
    with pytest.raises(ProofError, match=r"^size1: expected at least 1"):
        tree.consistency_proof(0, 5)
    with pytest.raises(ProofError, match=r"^size2: expected at least size1 = 6, got 5$"):
        tree.consistency_proof(6, 5)
    with pytest.raises(ProofError, match=rf"^index: expected 0 <= index < {MAX}, got {MAX}$"):
        tree.leaf_hash(MAX)
    with pytest.raises(ProofError, match=r"^size: expected a non-negative integer, got True$"):
        tree.root(True)
    assert tree.consistency_proof(5, 5) == []
    assert tree.root(0) == merkle.EMPTY_ROOT
    assert tree.leaf_hash(17) == LEAVES[17]


def test_append_is_all_or_nothing() -> None:
    t = MerkleTree()
    t.append_many(LEAVES[:3])
    with pytest.raises(ProofError, match=r"^leaf_hashes\[1\]: expected 32 bytes, got 33$"):
        t.append_many([LEAVES[3], LEAVES[4] + b"!", LEAVES[5]])
    assert t.size == len(t) == 3
    assert t.store.size() == 3
    with pytest.raises(ProofError, match=r"^leaf_hashes\[0\]: expected 32 bytes, got 0$"):
        t.append(b"")
    assert t.append_many([]) == 3
    assert t.root() == NAIVE.mth(0, 3)


# --- storage ---------------------------------------------------------------------------------


class CountingStore(MemoryHashStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[int] = []
        self.writes = 0

    def get_many(self, nodes: Sequence[Node]) -> list[bytes | None]:
        self.reads.append(len(nodes))
        return super().get_many(nodes)

    def put_many(self, entries: Sequence[tuple[int, int, bytes]], size: int) -> None:
        self.writes += 1
        super().put_many(entries, size)


def test_one_write_per_batch_and_one_read_per_query() -> None:
    store = CountingStore()
    t = MerkleTree(store)
    t.append_many(LEAVES[:150])
    t.append(LEAVES[150])
    t.append_many(LEAVES[151:])
    assert store.writes == 3
    store.reads.clear()
    t.root(123)
    t.inclusion_proof(77, 190)
    t.consistency_proof(33, 190)
    assert len(store.reads) == 3


def test_reads_are_logarithmic() -> None:
    store = CountingStore()
    t = MerkleTree(store)
    n = 5000
    t.append_many(merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n))
    bound = 2 * n.bit_length() + 2
    for size in (n, n - 1, 4096, 4097, 3333):
        for index in (0, size // 3, size - 1):
            store.reads.clear()
            t.inclusion_proof(index, size)
            assert store.reads[0] <= bound
        for size1 in (1, size // 2, size - 1):
            store.reads.clear()
            t.consistency_proof(size1, size)
            assert store.reads[0] <= bound
        store.reads.clear()
        t.root(size)
        assert store.reads[0] <= n.bit_length()


def test_every_complete_subtree_is_stored() -> None:
    t = MerkleTree()
    t.append_many(LEAVES[:13])
    store = t.store
    assert store.get_many([(0, 12), (1, 5), (2, 2), (3, 0)]) == [
        LEAVES[12],
        NAIVE.mth(10, 12),
        NAIVE.mth(8, 12),
        NAIVE.mth(0, 8),
    ]
    # Incomplete subtrees are never stored: they would change on the next append.
    assert store.get_many([(1, 6), (2, 3), (4, 0), (0, 13)]) == [None, None, None, None]


def test_reopen_and_shared_readers() -> None:
    store = MemoryHashStore()
    writer = MerkleTree(store)
    writer.append_many(LEAVES[:57])
    reader = MerkleTree(store)
    assert reader.size == 57 and reader.root() == writer.root()
    writer.append_many(LEAVES[57:100])
    # The reader learns of the new leaves when asked about them.
    assert reader.size == 57
    assert reader.root(100) == NAIVE.mth(0, 100)
    assert reader.inclusion_proof(99, 100) == NAIVE.path(99, 0, 100)
    assert reader.size == 100
    reopened = MerkleTree(store)
    reopened.append_many(LEAVES[100:])
    assert reopened.root() == NAIVE.mth(0, MAX)


def test_a_store_missing_nodes_is_a_storage_error() -> None:
    class Forgetful(MemoryHashStore):
        def get_many(self, nodes: Sequence[Node]) -> list[bytes | None]:
            return [None for _ in nodes]

    store = Forgetful()
    store.put_many([(0, 0, LEAVES[0])], 1)
    t = MerkleTree(store)  # reads only the size
    with pytest.raises(StorageError, match=r"lacks node \(0, 0\) of a tree of 1$"):
        t.root()
    with pytest.raises(StorageError, match=r"lacks node \(0, 0\) of a tree of 1$"):
        t.append(LEAVES[1])
    assert t.size == 1


def test_only_the_upper_levels_are_stored() -> None:
    store = MemoryHashStore()
    t = MerkleTree(store, min_level=3, leaves=list_source(LEAVES))
    t.append_many(LEAVES[:13])
    t.append_many(LEAVES[13:77])
    assert store.get_many([(3, 0), (3, 8), (4, 3), (5, 1), (6, 0)]) == [
        NAIVE.mth(0, 8),
        NAIVE.mth(64, 72),
        NAIVE.mth(48, 64),
        NAIVE.mth(32, 64),
        NAIVE.mth(0, 64),
    ]
    assert store.get_many([(0, 0), (1, 0), (2, 18), (3, 9)]) == [None, None, None, None]


def test_lower_nodes_read_one_block_of_leaves_each() -> None:
    reads: list[tuple[int, int]] = []

    def source(start: int, end: int) -> Sequence[bytes]:
        reads.append((start, end))
        return LEAVES[start:end]

    t = MerkleTree(min_level=4, leaves=source)
    t.append_many(LEAVES[:150])
    reads.clear()
    assert t.inclusion_proof(37, 150) == NAIVE.path(37, 0, 150)
    # The block of leaf 37, and the incomplete last block for the right border.
    assert sorted(reads) == [(32, 48), (144, 150)]
    reads.clear()
    assert t.consistency_proof(70, 150) == NAIVE.proof(70, 150)
    assert sorted(reads) == [(64, 80), (144, 150)]
    reads.clear()
    assert t.root(128) == NAIVE.mth(0, 128)
    assert reads == []
    assert t.leaf_hash(149) == LEAVES[149]
    assert reads == [(149, 150)]


def test_lower_nodes_missing_from_the_source_are_a_storage_error() -> None:
    t = MerkleTree(min_level=3, leaves=list_source(LEAVES[:20]))
    t.append_many(LEAVES[:30])
    assert t.inclusion_proof(3, 20) == NAIVE.path(3, 0, 20)
    with pytest.raises(StorageError, match=r"lacks node \(0, 24\) of a tree of 30"):
        t.inclusion_proof(25, 30)
    reopened = MerkleTree(t.store, min_level=3, leaves=list_source(LEAVES[:20]))
    with pytest.raises(StorageError, match=r"lacks node \(2, 6\) of a tree of 30$"):
        reopened.append(LEAVES[30])


def test_min_level_needs_a_leaf_source() -> None:
    with pytest.raises(ValueError, match=r"^min_level above 0 needs a leaf source"):
        MerkleTree(min_level=2)
    with pytest.raises(ValueError, match=r"^min_level: expected a non-negative integer, got -1$"):
        MerkleTree(min_level=-1, leaves=list_source(LEAVES))
    assert MerkleTree(min_level=2, leaves=list_source(LEAVES)).min_level == 2


def test_memory_store_refuses_gaps_and_bad_hashes() -> None:
    store = MemoryHashStore()
    with pytest.raises(StorageError, match=r"^node \(0, 1\): expected index at most 0, got 1$"):
        store.put_many([(0, 1, LEAVES[0])], 2)
    with pytest.raises(StorageError, match=r"^node \(0, 0\): expected 32 bytes, got 2$"):
        store.put_many([(0, 0, b"ab")], 1)
    assert store.get_many([(0, 0), (5, 0), (0, -1)]) == [None, None, None]
    # A refused batch writes nothing, not even its valid first entries.
    with pytest.raises(StorageError, match=r"^node \(0, 5\): expected index at most 1, got 5$"):
        store.put_many([(0, 0, LEAVES[0]), (0, 5, LEAVES[5])], 6)
    assert store.size() == 0 and store.get_many([(0, 0)]) == [None]
    store.put_many([(0, 0, LEAVES[0]), (0, 1, LEAVES[1]), (1, 0, NAIVE.mth(0, 2))], 2)
    store.put_many([(0, 1, LEAVES[1])], 2)  # rewriting the same hash is harmless
    with pytest.raises(StorageError, match=r"^node \(0, 1\): already stored with another hash$"):
        store.put_many([(0, 1, LEAVES[2])], 2)
    assert MerkleTree(store).root() == NAIVE.mth(0, 2)
