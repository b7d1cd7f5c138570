"""benchmarks/ab.py: ABBA order, medians, and who beat whom in each pair."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _ab() -> ModuleType:
    path = Path(__file__).parent.parent.parent / "benchmarks" / "ab.py"
    spec = importlib.util.spec_from_file_location("bench_ab", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(ratio: float, p99: float) -> dict[str, Any]:
    return {"ratio": ratio, "msgs_per_s": ratio * 1000, "deliver_p99_ms": p99}


def test_pairs_alternate_abba() -> None:
    ab = _ab()
    assert [ab.order(i) for i in range(4)] == [("A", "B"), ("B", "A"), ("A", "B"), ("B", "A")]


def test_medians_and_wins_count_each_pair_once_whatever_its_order() -> None:
    ab = _ab()
    runs = [
        ("A", _run(0.40, 90.0)),
        ("B", _run(0.45, 95.0)),  # B higher ratio, worse p99
        ("B", _run(0.41, 80.0)),
        ("A", _run(0.42, 85.0)),  # B lower ratio, better p99
        ("A", _run(0.39, 99.0)),
        ("B", _run(0.50, 70.0)),  # B better on both
    ]
    summary = ab.summarise(runs)
    assert summary["A"]["ratio"] == pytest.approx(0.40)
    assert summary["B"]["ratio"] == pytest.approx(0.45)
    assert summary["B"]["deliver_p99_ms"] == pytest.approx(80.0)
    assert summary["wins"]["ratio"] == 2  # higher is better
    assert summary["wins"]["deliver_p99_ms"] == 2  # lower is better
    assert "half_load_msgs_per_s" not in summary["A"]  # absent figures are skipped
    assert summary["wins"]["half_load_msgs_per_s"] == 0


def test_runs_that_do_not_make_ab_pairs_are_refused() -> None:
    ab = _ab()
    with pytest.raises(ValueError, match="pairs"):
        ab.summarise([("A", _run(0.4, 90.0))])
    with pytest.raises(ValueError, match="one A and one B"):
        ab.summarise([("A", _run(0.4, 90.0)), ("A", _run(0.4, 90.0))])
