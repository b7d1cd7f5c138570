"""How long MerkleTree takes per append, proof and root, in memory.

    .venv/bin/python benchmarks/bench_merkle.py [--leaves 1000000] [--batch 1000]

Prints microseconds per operation. Appends are measured twice, one leaf per
call and ``--batch`` leaves per call, each building a tree of ``--leaves``
leaves; proofs and roots are then taken on the batched tree at random indices
and sizes.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time
from collections.abc import Callable

from chainmail.merkle import MerkleTree, verify_inclusion


def per_call_us(calls: int, run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    n, batch, queries = args.leaves, args.batch, args.queries
    rng = random.Random(args.seed)

    leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(n)]

    single = MerkleTree()
    append = single.append

    def append_singly() -> None:
        for leaf in leaves:
            append(leaf)

    batched = MerkleTree()

    def append_batched() -> None:
        for start in range(0, n, batch):
            batched.append_many(leaves[start : start + batch])

    us_single = per_call_us(n, append_singly)
    us_batched = per_call_us(n, append_batched)
    assert single.root() == batched.root()
    del single

    indices = [rng.randrange(n) for _ in range(queries)]
    sizes = [rng.randrange(n // 2, n + 1) for _ in range(queries)]
    pairs = [(rng.randrange(i + 1), i) for i in indices if i > 0]
    tree = batched

    def proofs_at_current_size() -> None:
        for i in indices:
            tree.inclusion_proof(i)

    def proofs_at_past_sizes() -> None:
        for i, s in zip(indices, sizes, strict=True):
            tree.inclusion_proof(i % s, s)

    def consistency_proofs() -> None:
        for i, j in pairs:
            tree.consistency_proof(i + 1, j + 1)

    def roots_at_past_sizes() -> None:
        for s in sizes:
            tree.root(s)

    root = tree.root()
    proofs = [tree.inclusion_proof(i) for i in indices]

    def verifications() -> None:
        for i, proof in zip(indices, proofs, strict=True):
            verify_inclusion(leaves[i], i, n, proof, root)

    print(f"MerkleTree, MemoryHashStore, {n:,} leaves")
    print(f"  append, one leaf per call        {us_single:8.2f} µs/leaf")
    print(f"  append_many, {batch:>5} per call     {us_batched:8.2f} µs/leaf")
    print(
        f"  inclusion_proof, current size    "
        f"{per_call_us(queries, proofs_at_current_size):8.2f} µs/proof"
    )
    print(
        f"  inclusion_proof, past size       "
        f"{per_call_us(queries, proofs_at_past_sizes):8.2f} µs/proof"
    )
    print(
        f"  consistency_proof, past sizes    {per_call_us(len(pairs), consistency_proofs):8.2f} µs/proof"
    )
    print(
        f"  root, past size                  {per_call_us(queries, roots_at_past_sizes):8.2f} µs/root"
    )
    print(f"  verify_inclusion                 {per_call_us(queries, verifications):8.2f} µs/proof")


if __name__ == "__main__":
    main()
