"""How long MerkleTree takes per append, proof and root, in memory or in the SQLite log.

    .venv/bin/python benchmarks/bench_merkle.py [--leaves 1000000] [--batch 1000]
                                                [--min-level K] [--sqlite]

Prints microseconds per operation. Appends are measured twice, one leaf per
call and ``--batch`` leaves per call, each building a tree of ``--leaves``
leaves; proofs and roots are then taken on the batched tree at random indices
and sizes. ``--min-level K`` stores only the nodes at level K and up and
recomputes the rest from the leaf list. ``--sqlite`` instead appends
``--leaves`` made-up entries (1 KB bodies) to a ``SqliteLog`` in batches of
``--batch`` and times its proofs as the API takes them, each through a fresh
reader tree on the thread's connection; its tree level is the log's own.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from chainmail.log import NewEntry
from chainmail.merkle import MerkleTree, verify_inclusion
from chainmail.sqlite import SqliteLog


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
    parser.add_argument("--min-level", type=int, default=0)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()
    if args.sqlite:
        bench_sqlite(args.leaves, args.batch, min(args.queries, 5000), random.Random(args.seed))
        return
    n, batch, queries = args.leaves, args.batch, args.queries
    rng = random.Random(args.seed)

    leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(n)]

    def new_tree() -> MerkleTree:
        if not args.min_level:
            return MerkleTree()
        return MerkleTree(min_level=args.min_level, leaves=lambda start, end: leaves[start:end])

    single = new_tree()
    append = single.append

    def append_singly() -> None:
        for leaf in leaves:
            append(leaf)

    batched = new_tree()

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

    print(f"MerkleTree, MemoryHashStore, {n:,} leaves, min_level {args.min_level}")
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


def bench_sqlite(n: int, batch: int, queries: int, rng: random.Random) -> None:
    body = b"x" * 1000
    with tempfile.TemporaryDirectory(prefix="chainmail-merkle-") as tmp:
        path = Path(tmp) / "log.sqlite"
        log = SqliteLog(path, synchronous="NORMAL")
        start = time.perf_counter()
        for first in range(0, n, batch):
            ids = (
                "%"
                + base64.b64encode(hashlib.sha256(i.to_bytes(8, "big")).digest()).decode()
                + ".sha256"
                for i in range(first, min(first + batch, n))
            )
            log.append(
                [NewEntry(mid, "@bench", first + k + 1, 0, body) for k, mid in enumerate(ids)]
            )
        us_append = (time.perf_counter() - start) / n * 1e6
        indices = [rng.randrange(n) for _ in range(queries)]
        sizes = [rng.randrange(n // 2, n + 1) for _ in range(queries)]

        def proofs_at_current_size() -> None:
            for i in indices:
                log.inclusion_proof(0, i, n)

        def proofs_at_past_sizes() -> None:
            for i, s in zip(indices, sizes, strict=True):
                log.inclusion_proof(0, i % s, s)

        def consistency_proofs() -> None:
            for i, s in zip(indices, sizes, strict=True):
                log.consistency_proof(0, i % s + 1, s)

        def roots_at_past_sizes() -> None:
            for s in sizes:
                log.root(0, s)

        proofs_at_current_size()  # warm the reader's page cache
        print(f"SqliteLog, {n:,} entries of 1 KB")
        print(f"  append, {batch:>5} per call          {us_append:8.2f} µs/entry")
        for name, run in [
            ("inclusion_proof, current size", proofs_at_current_size),
            ("inclusion_proof, past size", proofs_at_past_sizes),
            ("consistency_proof, past sizes", consistency_proofs),
            ("root, past size", roots_at_past_sizes),
        ]:
            print(f"  {name:<33}{per_call_us(queries, run):8.2f} µs")
        log.close()
        with sqlite3.connect(path) as conn:
            (rows,) = conn.execute("SELECT COUNT(*) FROM tree").fetchone()
        print(f"  tree rows                        {rows:8d} ({rows / n:.4f} per entry)")


if __name__ == "__main__":
    main()
