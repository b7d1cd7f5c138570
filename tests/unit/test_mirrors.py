"""Two endpoints' signed checkpoints and blocks of one node, compared (``chainmail.mirrors``)."""

from __future__ import annotations

import hashlib

import pytest

from chainmail import merkle
from chainmail.checkpoint import Checkpoint
from chainmail.mirrors import compare_block_ids, compare_checkpoints, needs_proof

ORIGIN = "chainmail.node/abc/0"


def leaves(tag: str, n: int) -> list[bytes]:
    return [merkle.leaf_hash(hashlib.sha256(f"{tag}{i}".encode()).digest()) for i in range(n)]


def cp(log: list[bytes], size: int) -> Checkpoint:
    return Checkpoint(origin=ORIGIN, size=size, root=merkle.root(log[:size]))


LOG = leaves("m", 40)
#: The same first 25 entries, then another history.
OTHER = LOG[:25] + leaves("x", 15)


def test_one_log_seen_at_two_sizes_is_consistent() -> None:
    small, large = cp(LOG, 25), cp(LOG, 40)
    assert needs_proof(small, large) == (25, 40) == needs_proof(large, small)
    proof = merkle.consistency_proof(LOG, 25, 40)
    assert compare_checkpoints(0, ("a", small), ("b", large), proof) is None
    assert compare_checkpoints(0, ("b", large), ("a", small), proof) is None


@pytest.mark.parametrize(("a", "b"), [(0, 40), (40, 0), (40, 40), (0, 0)])
def test_equal_sizes_or_an_empty_log_need_no_proof(a: int, b: int) -> None:
    assert needs_proof(cp(LOG, a), cp(OTHER, b)) is None
    assert compare_checkpoints(0, ("a", cp(LOG, a)), ("b", cp(LOG, b)), None) is None


@pytest.mark.parametrize(("a", "b"), [(0, 40), (40, 0)])
def test_every_log_extends_the_empty_one(a: int, b: int) -> None:
    assert compare_checkpoints(0, ("a", cp(LOG, a)), ("b", cp(OTHER, b)), None) is None


def test_the_same_size_with_two_roots_is_a_split_view() -> None:
    found = compare_checkpoints(3, ("http://a", cp(LOG, 40)), ("http://b", cp(OTHER, 40)), None)
    assert found is not None and found.kind == "split_view" and found.pipeline == 3
    assert "size 40" in found.detail and "the same size with different roots" in found.detail
    assert "http://a" in found.detail and "http://b" in found.detail


def test_a_longer_log_that_rewrote_the_shorter_is_a_split_view() -> None:
    small, forked = cp(LOG, 30), cp(OTHER, 40)  # OTHER differs from entry 25 on
    # The best the forked endpoint can do: a proof of its own history.
    proof = merkle.consistency_proof(OTHER, 30, 40)
    found = compare_checkpoints(0, ("a", small), ("b", forked), proof)
    assert found is not None and found.kind == "split_view"
    assert "b's consistency proof from a's size does not verify" in found.detail


def test_no_proof_where_one_is_needed_is_a_split_view() -> None:
    found = compare_checkpoints(0, ("a", cp(LOG, 30)), ("b", cp(LOG, 40)), None)
    assert found is not None and "no consistency proof" in found.detail


def test_blocks_at_one_height_must_be_one_block() -> None:
    ours = {1: "%a", 2: "%b", 3: "%c"}
    theirs = {2: "%b", 3: "%z", 4: "%d"}
    (found,) = compare_block_ids(("http://a", ours), ("http://b", theirs))
    assert found.kind == "split_view" and found.height == 3
    assert "%c (http://a)" in found.detail and "%z (http://b)" in found.detail
    assert compare_block_ids(("a", ours), ("b", {1: "%a"})) == []
