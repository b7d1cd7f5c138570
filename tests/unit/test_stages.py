"""Per-stage latency histograms: buckets, weights, quantiles, Prometheus text."""

from __future__ import annotations

import pytest

from chainmail.stages import BUCKETS, STAGES, StageHistograms


def test_observations_land_in_their_bucket_weighted_by_messages() -> None:
    h = StageHistograms()
    h.observe("log", 0.0015, 10)  # 1.5 ms: the 2 ms bucket
    h.observe("log", 0.002, 5)  # on a bound: that bucket (le is inclusive)
    h.observe("log", 7.0, 1)  # beyond every bound: +Inf only
    h.observe("log", -0.001, 4)  # a clock read out of order counts as zero
    assert h.count("log") == 20 and h.count("verify") == 0
    lines = list(h.render())
    assert 'chainmail_ingest_stage_seconds_bucket{stage="log",le="0.001"} 4' in lines
    assert 'chainmail_ingest_stage_seconds_bucket{stage="log",le="0.002"} 19' in lines
    assert 'chainmail_ingest_stage_seconds_bucket{stage="log",le="5"} 19' in lines
    assert 'chainmail_ingest_stage_seconds_bucket{stage="log",le="+Inf"} 20' in lines
    assert 'chainmail_ingest_stage_seconds_count{stage="log"} 20' in lines
    assert 'chainmail_ingest_stage_seconds_sum{stage="log"} 7.025000' in lines
    assert lines[1] == "# TYPE chainmail_ingest_stage_seconds histogram"
    # Every stage is rendered, with cumulative (never decreasing) buckets.
    for stage in STAGES:
        counts = [
            int(line.rsplit(" ", 1)[1])
            for line in lines
            if line.startswith(f'chainmail_ingest_stage_seconds_bucket{{stage="{stage}"')
        ]
        assert len(counts) == len(BUCKETS) + 1 and counts == sorted(counts)


def test_quantiles_are_bucket_bounds() -> None:
    h = StageHistograms()
    assert h.quantile("total", 0.5) is None
    h.observe("total", 0.004, 98)
    h.observe("total", 0.09, 1)
    h.observe("total", 9.0, 1)
    assert h.quantile("total", 0.5) == 0.005
    assert h.quantile("total", 0.99) == 0.1
    assert h.quantile("total", 1.0) is None  # beyond the last bound


def test_an_unknown_stage_is_refused() -> None:
    with pytest.raises(KeyError):
        StageHistograms().observe("nap", 0.1)


def _parsed(h: StageHistograms) -> dict[str, float]:
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in h.render())
        if not name.startswith("#")
    }


def test_the_bench_reads_quantiles_between_two_scrapes() -> None:
    from chainmail.bench import stage_quantiles

    h = StageHistograms()
    h.observe("log", 0.5, 1000)  # before the phase: must not count
    before = _parsed(h)
    h.observe("log", 0.003, 99)
    h.observe("log", 0.03, 1)
    h.observe("verify", 9.0, 1)
    got = stage_quantiles(before, _parsed(h))
    assert got == {"log": [3.0, 3.0], "verify": [None, None]}
