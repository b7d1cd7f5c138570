"""Long ingest run: sustained throughput and whether the node's memory stays flat.

    python benchmarks/ingest_load.py [--messages 200000] [--feeds 2000] [--mode http|ws]
                                     [--rss-every 5] [--synchronous FULL|NORMAL]
                                     [--node URL] [--json-out FILE]

    python benchmarks/ingest_load.py --messages 1000000     # the memory-flat check

The same machinery as ``chainmail bench`` (signed trade traffic, a fresh
``chainmail serve`` subprocess, concurrent NDJSON batches or WebSocket
frames, inbox streams of sampled recipients), run at full load from start to
end. Every ``--rss-every`` seconds it prints the node's resident memory (its
main process, and with any child processes: none since the verify workers
became threads) against the messages answered so
far; at the end, the growth per 100,000 messages after the first tenth of the
run (warm-up: caches, SQLite pages, pools) and the full ``chainmail bench``
report as one JSON line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from chainmail.bench import DEFAULT_BATCH, DEFAULT_CONNECTIONS, BenchConfig, run


def _slope_per_100k(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of MiB against messages, per 100,000 messages."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx * 100_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--feeds", type=int, default=2_000)
    parser.add_argument("--mode", choices=["http", "ws"], default="http")
    parser.add_argument("--node", help="drive this node (no memory figures) instead of a fresh one")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--rss-every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--json-out", type=Path, help="also write the report here")
    args = parser.parse_args()

    config = BenchConfig(
        messages=args.messages,
        feeds=args.feeds,
        mode=args.mode,
        node=args.node,
        batch=args.batch,
        connections=args.connections,
        half_load_share=0.0,
        synchronous=args.synchronous,
        rss_every=args.rss_every,
    )
    samples: list[tuple[int, float]] = []

    def on_rss(seconds: float, node_mb: float, total_mb: float, answered: int) -> None:
        samples.append((answered, node_mb))
        print(
            f"t={seconds:7.1f}s  answered={answered:>10,}  node={node_mb:8.1f} MiB"
            f"  node+children={total_mb:8.1f} MiB",
            flush=True,
        )

    report = run(
        config,
        on_stage=lambda text: print(f"… {text}", file=sys.stderr, flush=True),
        on_rss=on_rss,
    )
    steady = [(n, mb) for n, mb in samples if n >= args.messages // 10]
    print(
        f"\n{report['accepted']:,} accepted, {report['rejected']:,} rejected in "
        f"{report['seconds']:.1f} s: {report['msgs_per_s']:,.0f} msgs/s "
        f"(ceiling {report['verify_ceiling_per_s']:,.0f}/s, ratio {report['ratio']}), "
        f"p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms, "
        f"deliver p99 {report['deliver_p99_ms']} ms"
    )
    if steady:
        print(
            f"node RSS after warm-up: {steady[0][1]:.1f} → {steady[-1][1]:.1f} MiB, "
            f"max {max(mb for _, mb in samples):.1f} MiB, "
            f"slope {_slope_per_100k(steady):+.2f} MiB per 100k messages"
        )
    line = orjson.dumps(report).decode()
    print(line)
    if args.json_out is not None:
        args.json_out.write_text(line + "\n")


if __name__ == "__main__":
    main()
