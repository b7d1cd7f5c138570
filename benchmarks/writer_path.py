"""The single writer alone: µs per message of ``Sequencer.process`` + ``flush_projection``.

    python benchmarks/writer_path.py [--messages N] [--feeds F] [--batch B]
                                     [--synchronous FULL|NORMAL] [--profile]

Signs ``chainmail bench`` trade traffic, checks it and applies the content
policy (outside the timing: the node's verify threads do both), then
hands it to a ``Sequencer`` on fresh SQLite files in batches of ``--batch``,
exactly as the node's writer thread does, and reports the time spent in
``process`` (feed order, rules, log append and commit) and in
``flush_projection`` (store projection and commit). No HTTP, no verify pool:
this is the part that runs on one thread and bounds the node's throughput
whatever the number of cores. ``--profile`` prints the top cProfile entries.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from chainmail import content, ssb
from chainmail.bench import BenchConfig, generate
from chainmail.keys import Keypair
from chainmail.node import tune_gc
from chainmail.sequencer import Accepted, Sequencer, policy_view
from chainmail.sqlite import SqliteLog, SqliteStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--feeds", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    parser.add_argument(
        "--streams",
        type=int,
        default=32,
        help="the connections the traffic is dealt to, as chainmail bench --connections;"
        " their streams are interleaved a few messages at a time",
    )
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    config = BenchConfig(messages=args.messages, feeds=args.feeds, connections=args.streams)
    traffic = generate(config, seed=7)
    raws = _interleave(traffic.streams)
    checked = ssb.check_batch(raws)
    node = Keypair.generate()
    for c in checked:
        if isinstance(c, ssb.Checked):
            content.check_policy(policy_view(c), node_id=node.id)
    # The node's collector settings, with the traffic frozen as the node's start-up
    # state is: without this the oldest generation walked the 40,000 checked
    # messages again and again (~25% of the time measured, session 12).
    tune_gc()
    with tempfile.TemporaryDirectory(prefix="chainmail-writer-") as tmp:
        path = Path(tmp)
        log = SqliteLog(path / "log.sqlite", synchronous=args.synchronous)
        store = SqliteStore(path / "store.sqlite")  # STORE_SYNCHRONOUS, as in the node
        seq = Sequencer(log, store, node, clock=lambda: time.time_ns() // 1_000_000)
        process = flush = cpu = 0.0
        accepted = 0
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        for i in range(0, len(checked), args.batch):
            t0, c0 = time.perf_counter(), time.thread_time()
            results = seq.process(checked[i : i + args.batch], policy_checked=True)
            t1 = time.perf_counter()
            seq.flush_projection()
            t2 = time.perf_counter()
            cpu += time.thread_time() - c0
            process += t1 - t0
            flush += t2 - t1
            accepted += sum(isinstance(r, Accepted) for r in results)
        if profiler is not None:
            profiler.disable()
        log.close()
        store.close()
    n = len(checked)
    print(
        f"{n} messages, {accepted} accepted, batch {args.batch}, synchronous {args.synchronous}\n"
        f"process {process / n * 1e6:7.1f} µs/msg\n"
        f"flush   {flush / n * 1e6:7.1f} µs/msg\n"
        f"total   {(process + flush) / n * 1e6:7.1f} µs/msg"
        f"  → {n / (process + flush):,.0f} msgs/s on one writer thread\n"
        f"cpu     {cpu / n * 1e6:7.1f} µs/msg (this thread; the rest is waiting on fsync)"
    )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def _interleave(streams: list[list[bytes]]) -> list[bytes]:
    """The connections' streams as they reach the node: turns of a few messages, each in order."""
    out: list[bytes] = []
    step = 4
    for start in range(0, max(map(len, streams), default=0), step):
        for stream in streams:
            out.extend(stream[start : start + step])
    return out


if __name__ == "__main__":
    main()
