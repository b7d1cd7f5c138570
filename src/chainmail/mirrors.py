"""Comparing what several endpoints show of one node: a split view is caught (DESIGN §7).

A node could show one history to some parties and another to the rest: two
logs, each consistent in itself, each signed with the node's key. Nobody who
reads only one of them can tell. Reading the same node through several
endpoints (its own URL, mirrors that follow it, the URL a counterparty uses)
and comparing what each one's signatures commit to catches it:

* two signed checkpoints of one pipeline must describe one log: at the same
  size the same root, at different sizes a consistency proof from the smaller
  to the larger (RFC 9162) that verifies against both roots;
* two signed blocks at one height must be the same block.

Two such signatures that disagree are a **split_view**: proof, signed by the
node itself, that it equivocated. Anything an endpoint serves that the node's
key did not sign is a **mirror** finding about that endpoint instead.

Everything here is pure: ``chainmail.auditing`` does the reading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chainmail import merkle
from chainmail.audit import Finding
from chainmail.checkpoint import Checkpoint
from chainmail.errors import ProofError

__all__ = ["compare_block_ids", "compare_checkpoints", "needs_proof"]


def needs_proof(a: Checkpoint, b: Checkpoint) -> tuple[int, int] | None:
    """The ``(from, to)`` sizes of the consistency proof that ``compare_checkpoints`` needs.

    None when the two are the same size or one is empty (nothing to prove).
    """
    small, large = sorted((a.size, b.size))
    if small in (large, 0):
        return None
    return small, large


def compare_checkpoints(
    pipeline: int,
    a: tuple[str, Checkpoint],
    b: tuple[str, Checkpoint],
    proof: Sequence[bytes] | None,
) -> Finding | None:
    """A ``split_view`` finding unless two verified checkpoints describe one log.

    ``a`` and ``b`` are ``(where, checkpoint)``: where each was read, and the
    checkpoint its signature (the node's) was verified for. ``proof`` is the
    consistency proof ``needs_proof`` asks for, read from the endpoint with
    the larger checkpoint (the only one that can give it); None when it
    asked for none or the endpoint would not give one.
    """
    (where_a, cp_a), (where_b, cp_b) = a, b
    sizes = needs_proof(cp_a, cp_b)
    if cp_a.size == cp_b.size:
        if cp_a.root == cp_b.root:
            return None
        why = "the same size with different roots"
    elif sizes is None:  # one of them is empty: every log extends the empty one
        return None
    elif proof is None:
        why = "no consistency proof between them was given"
    else:
        (small_where, small), (large_where, large) = sorted(
            ((where_a, cp_a), (where_b, cp_b)), key=lambda side: side[1].size
        )
        try:
            merkle.verify_consistency(small.size, large.size, list(proof), small.root, large.root)
        except ProofError as exc:
            why = f"{large_where}'s consistency proof from {small_where}'s size does not verify: {exc.detail}"
        else:
            return None
    return Finding(
        "split_view",
        f"pipeline {pipeline}: the node signed size {cp_a.size} root {cp_a.root.hex()[:16]}… "
        f"({where_a}) and size {cp_b.size} root {cp_b.root.hex()[:16]}… ({where_b}): {why}",
        pipeline=pipeline,
    )


def compare_block_ids(
    a: tuple[str, Mapping[int, str]], b: tuple[str, Mapping[int, str]]
) -> list[Finding]:
    """A ``split_view`` finding for each height at which two endpoints' signed blocks differ.

    Each side is ``(where, {height: block id})`` of blocks whose messages
    were verified as the node's; heights only one side has are not compared.
    """
    (where_a, ids_a), (where_b, ids_b) = a, b
    return [
        Finding(
            "split_view",
            f"block {height}: the node signed {ids_a[height]} ({where_a}) and"
            f" {ids_b[height]} ({where_b})",
            height=height,
        )
        for height in sorted(ids_a.keys() & ids_b.keys())
        if ids_a[height] != ids_b[height]
    ]
