"""Alternate ``chainmail bench`` between two settings, ABBA, and compare medians.

    python benchmarks/ab.py [--pairs 8] [--a-rev REV] [--a-args "..."] [--b-args "..."]
                            [--out runs.jsonl] -- [common bench args]

On a shared 2-core VM one tree's runs move ±15–20% within minutes, so only
alternated runs say anything, and in ABBA order: with A always first, a
change that did nothing came out +19% in 5 of 6 pairs (benchmarks/README.md,
session 11). Side A is ``--a-rev`` checked out in a temporary worktree (its
C extensions copied from this tree, which must be unchanged in between) or
this tree with ``--a-args``; side B is this tree with ``--b-args``. Prints one
line a run, then per side the medians and, per figure, in how many pairs B
beat A.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Figure, and whether higher is better.
FIGURES: tuple[tuple[str, bool], ...] = (
    ("ratio", True),
    ("msgs_per_s", True),
    ("deliver_p50_ms", False),
    ("deliver_p99_ms", False),
    ("half_load_msgs_per_s", True),
)


def order(pair: int) -> tuple[str, str]:
    """The sides of pair ``pair`` (0-based) in ABBA order: AB, BA, AB, …"""
    return ("A", "B") if pair % 2 == 0 else ("B", "A")


def summarise(runs: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per side the median of each figure, and ``wins``: pairs in which B beat A on it.

    ``runs`` is in the order run, two a pair. Raises ``ValueError`` for an odd count
    or a pair that is not one A and one B.
    """
    if len(runs) % 2:
        raise ValueError(f"{len(runs)} runs do not make pairs")
    out: dict[str, dict[str, float]] = {"A": {}, "B": {}, "wins": {}}
    for side in ("A", "B"):
        mine = [r for s, r in runs if s == side]
        for name, _ in FIGURES:
            values = [float(r[name]) for r in mine if r.get(name) is not None]
            if values:
                out[side][name] = statistics.median(values)
    for name, higher in FIGURES:
        wins = 0
        for i in range(0, len(runs), 2):
            pair = dict(runs[i : i + 2])
            if set(pair) != {"A", "B"}:
                raise ValueError(f"runs {i} and {i + 1} are not one A and one B")
            a, b = pair["A"].get(name), pair["B"].get(name)
            if a is not None and b is not None and (b > a if higher else b < a):
                wins += 1
        out["wins"][name] = wins
    return out


def _bench(src: Path, args: Sequence[str]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(src))
    done = subprocess.run(
        [sys.executable, "-m", "chainmail", "bench", "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def _worktree(rev: str, into: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(into), rev],
        check=True,
        capture_output=True,
    )
    for so in (ROOT / "src" / "chainmail").glob("*.so"):
        shutil.copy(so, into / "src" / "chainmail" / so.name)
    return into / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--a-rev", help="side A is this revision (default: this tree)")
    parser.add_argument("--a-args", default="", help="bench arguments of side A only")
    parser.add_argument("--b-args", default="", help="bench arguments of side B only")
    parser.add_argument("--out", type=Path, help="append every run here as a JSON line")
    parser.add_argument("common", nargs="*", help="bench arguments of both sides (after --)")
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error("--pairs: expected at least 1")
    with tempfile.TemporaryDirectory(prefix="chainmail-ab-") as tmp:
        src_a = _worktree(args.a_rev, Path(tmp) / "a") if args.a_rev else ROOT / "src"
        sides = {
            "A": (src_a, [*shlex.split(args.a_args), *args.common]),
            "B": (ROOT / "src", [*shlex.split(args.b_args), *args.common]),
        }
        runs: list[tuple[str, dict[str, Any]]] = []
        try:
            for pair in range(args.pairs):
                for side in order(pair):
                    src, bench_args = sides[side]
                    report = _bench(src, bench_args)
                    runs.append((side, report))
                    if args.out is not None:
                        with args.out.open("a", encoding="utf-8") as f:
                            f.write(json.dumps({"side": side, **report}) + "\n")
                    print(
                        f"{side} {report['msgs_per_s']:9,.0f} msgs/s  ceiling "
                        f"{report['verify_ceiling_per_s']:8,.0f}  ratio {report['ratio']:.3f}  "
                        f"deliver p50 {report['deliver_p50_ms']:6.1f} p99 "
                        f"{report['deliver_p99_ms']:6.1f} ms",
                        flush=True,
                    )
        finally:
            if args.a_rev:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(Path(tmp) / "a")],
                    check=False,
                    capture_output=True,
                )
    summary = summarise(runs)
    for name, _ in FIGURES:
        a, b = summary["A"].get(name), summary["B"].get(name)
        if a is None or b is None:
            continue
        print(
            f"{name:22s} median A {a:10.3f}  B {b:10.3f}  "
            f"B better in {summary['wins'][name]:.0f} of {args.pairs}"
        )


if __name__ == "__main__":
    main()
