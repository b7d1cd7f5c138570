"""One block alone: ms of ``draft_block``, ``seal_records`` and ``append_block``.

    python benchmarks/block_path.py [--messages N] [--feeds F] [--runs R] [--profile]

Sequences ``chainmail bench`` trade traffic on fresh SQLite files (as
``writer_path.py`` does), then builds one block of the txs it closed and
times its three steps on this thread (the node runs the draft and the append
on its writer, the seal on a thread of its own, all three holding the GIL
most of the time: what stalls ingest about once a block). ``--runs`` repeats
it on fresh files; ``--profile`` prints the cProfile entries of the last run.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from writer_path import _interleave

from chainmail import content, ssb
from chainmail.bench import BenchConfig, generate
from chainmail.keys import Keypair
from chainmail.node import tune_gc
from chainmail.sequencer import Sequencer, policy_view
from chainmail.sqlite import SqliteLog, SqliteStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=16_000)
    parser.add_argument("--feeds", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    traffic = generate(BenchConfig(messages=args.messages, feeds=args.feeds), seed=7)
    checked = ssb.check_batch(_interleave(traffic.streams))
    node = Keypair.generate()
    for c in checked:
        if isinstance(c, ssb.Checked):
            content.check_policy(policy_view(c), node_id=node.id)
    tune_gc()
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="chainmail-block-") as tmp:
            path = Path(tmp)
            log = SqliteLog(path / "log.sqlite")
            store = SqliteStore(path / "store.sqlite")
            seq = Sequencer(log, store, node, clock=lambda: time.time_ns() // 1_000_000)
            for i in range(0, len(checked), 1024):
                seq.process(checked[i : i + 1024], policy_checked=True)
                seq.flush_projection()
            profiler = cProfile.Profile() if args.profile and run == args.runs - 1 else None
            if profiler is not None:
                profiler.enable()
            t0 = time.perf_counter()
            draft = seq.draft_block()
            t1 = time.perf_counter()
            if draft is None:
                raise SystemExit("no tx closed: nothing to seal (more --messages)")
            sealed = seq.seal_records(draft)
            t2 = time.perf_counter()
            seq.append_block(sealed, visible=True)
            t3 = time.perf_counter()
            if profiler is not None:
                profiler.disable()
            print(
                f"{len(draft.records)} txs: draft {(t1 - t0) * 1e3:6.2f} ms"
                f"  seal {(t2 - t1) * 1e3:6.2f} ms  append {(t3 - t2) * 1e3:6.2f} ms"
            )
            log.close()
            store.close()
    if args.profile and profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
