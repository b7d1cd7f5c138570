"""Where ingest's time goes: a latency histogram per stage, in Prometheus form.

Ingest observes each request once per stage, weighted by its messages:
``queued`` (arrival → taken into a batch), ``verify`` (the verify threads' check),
``wait`` (checked → the writer takes its group), ``log`` (sequenced and
durable in the log), ``project`` (the projection visible) and ``total``
(arrival → the reply). ``GET /metrics`` shows them as
``chainmail_ingest_stage_seconds``. Pure code: times come in as arguments.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Final

__all__ = ["BUCKETS", "STAGES", "StageHistograms"]

#: Upper bounds, in seconds, of the histogram buckets (``+Inf`` is implied).
BUCKETS: Final = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)
STAGES: Final = ("queued", "verify", "wait", "log", "project", "total")
_METRIC: Final = "chainmail_ingest_stage_seconds"


class StageHistograms:
    """One cumulative histogram per stage of ``STAGES``; call from one thread."""

    def __init__(self) -> None:
        self._counts = {stage: [0] * (len(BUCKETS) + 1) for stage in STAGES}
        self._sums = dict.fromkeys(STAGES, 0.0)

    def observe(self, stage: str, seconds: float, weight: int = 1) -> None:
        """Count ``weight`` messages that spent ``seconds`` in ``stage``.

        Raises ``KeyError`` for a stage not in ``STAGES``. A negative time
        (a clock read out of order) counts as zero.
        """
        seconds = max(0.0, seconds)
        self._counts[stage][bisect.bisect_left(BUCKETS, seconds)] += weight
        self._sums[stage] += seconds * weight

    def count(self, stage: str) -> int:
        """Messages observed in ``stage``."""
        return sum(self._counts[stage])

    def quantile(self, stage: str, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile (None: no data, or beyond 5 s)."""
        counts = self._counts[stage]
        total = sum(counts)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for bound, n in zip(BUCKETS, counts, strict=False):
            seen += n
            if seen >= rank:
                return bound
        return None

    def render(self) -> Iterable[str]:
        """The Prometheus text lines of every stage's histogram."""
        yield (
            f"# HELP {_METRIC} Time a message spent in each ingest stage "
            "(queued, verify, wait, log, project; total = arrival to reply)."
        )
        yield f"# TYPE {_METRIC} histogram"
        for stage in STAGES:
            cumulative = 0
            counts = self._counts[stage]
            for bound, n in zip(BUCKETS, counts, strict=False):
                cumulative += n
                yield f'{_METRIC}_bucket{{stage="{stage}",le="{bound:g}"}} {cumulative}'
            cumulative += counts[-1]
            yield f'{_METRIC}_bucket{{stage="{stage}",le="+Inf"}} {cumulative}'
            yield f'{_METRIC}_sum{{stage="{stage}"}} {self._sums[stage]:.6f}'
            yield f'{_METRIC}_count{{stage="{stage}"}} {cumulative}'
