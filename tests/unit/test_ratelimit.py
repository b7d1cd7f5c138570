"""Token buckets: refill math, retry_after, bursts, bounded memory, the rate invariant."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainmail.errors import RateLimited
from chainmail.ratelimit import (
    CONNECTION_BURST,
    CONNECTION_RATE,
    IDENTITY_BURST,
    IDENTITY_RATE,
    MAX_BATCH_MESSAGES,
    RateLimiter,
    TokenBucket,
)

T0 = 1000.0


def test_defaults_meet_design_limits() -> None:
    # DESIGN §8: at least 10,000 msgs/s per identity and 50,000 per connection.
    assert IDENTITY_RATE >= 10_000
    assert CONNECTION_RATE >= 50_000
    # A 16 MiB batch of the smallest messages takes its tokens at once.
    assert MAX_BATCH_MESSAGES >= 16 * 1024 * 1024 // 315
    assert IDENTITY_BURST >= MAX_BATCH_MESSAGES
    assert CONNECTION_BURST >= MAX_BATCH_MESSAGES
    # And a few seconds of rate.
    assert IDENTITY_BURST >= 3 * IDENTITY_RATE
    assert CONNECTION_BURST >= 3 * CONNECTION_RATE


def test_a_full_16_mib_batch_passes_both_default_limits() -> None:
    identity = RateLimiter(IDENTITY_RATE, IDENTITY_BURST)
    connection = RateLimiter(CONNECTION_RATE, CONNECTION_BURST)
    connection.take("10.0.0.1", MAX_BATCH_MESSAGES, now=T0)
    identity.take("@alice", MAX_BATCH_MESSAGES, now=T0)


def test_starts_full_and_empties() -> None:
    bucket = TokenBucket(10, 5)
    assert bucket.tokens(now=T0) == 5
    bucket.take(5, now=T0)
    assert bucket.tokens(now=T0) == 0
    with pytest.raises(RateLimited):
        bucket.take(now=T0)


def test_refill_math() -> None:
    bucket = TokenBucket(10, 5)
    bucket.take(5, now=T0)
    assert bucket.tokens(now=T0 + 0.1) == pytest.approx(1)
    assert bucket.tokens(now=T0 + 0.25) == pytest.approx(2.5)
    # Never more than the burst, however long it sat idle.
    assert bucket.tokens(now=T0 + 3600) == 5
    bucket.take(5, now=T0 + 3600)
    with pytest.raises(RateLimited):
        bucket.take(now=T0 + 3600)


def test_retry_after_is_the_wait_for_n_tokens() -> None:
    bucket = TokenBucket(10, 5)
    bucket.take(5, now=T0)
    with pytest.raises(RateLimited, match="more than 10 messages/s") as info:
        bucket.take(1, now=T0)
    assert info.value.retry_after == pytest.approx(0.1)
    assert info.value.code == "rate_limited"
    with pytest.raises(RateLimited) as info:
        bucket.take(3, now=T0 + 0.1)
    assert info.value.retry_after == pytest.approx(0.2)
    # Waiting exactly that long is enough.
    bucket.take(3, now=T0 + 0.3)
    assert bucket.tokens(now=T0 + 0.3) == pytest.approx(0)


def test_refused_take_takes_nothing() -> None:
    bucket = TokenBucket(10, 5)
    bucket.take(3, now=T0)
    with pytest.raises(RateLimited):
        bucket.take(3, now=T0)
    bucket.take(2, now=T0)


def test_more_than_the_burst_never_fits() -> None:
    bucket = TokenBucket(10, 5)
    with pytest.raises(RateLimited, match="more than the burst of 5") as info:
        bucket.take(6, now=T0)
    assert info.value.retry_after == 0  # already full: only splitting helps
    bucket.take(2, now=T0)
    with pytest.raises(RateLimited, match="at most 5") as info:
        bucket.take(6, now=T0)
    assert info.value.retry_after == pytest.approx(0.2)  # until full again


def test_leeway_never_admits_more_than_the_burst_at_high_rates() -> None:
    bucket = TokenBucket(1e6, 1)
    with pytest.raises(RateLimited, match="more than the burst"):
        bucket.take(2, now=T0)
    bucket.take(1, now=T0)
    with pytest.raises(RateLimited):
        bucket.take(1, now=T0)


def test_waiting_exactly_retry_after_succeeds_on_a_late_clock() -> None:
    # Large monotonic readings have coarse floats; the advised wait still works.
    bucket = TokenBucket(IDENTITY_RATE, 3)
    now = 3e7  # about a year of uptime
    bucket.take(3, now=now)
    for _ in range(1000):
        try:
            bucket.take(2, now=now)
        except RateLimited as exc:
            now += exc.retry_after
            bucket.take(2, now=now)


def test_zero_or_negative_takes_nothing() -> None:
    bucket = TokenBucket(10, 5)
    bucket.take(0, now=T0)
    bucket.take(-3, now=T0)
    assert bucket.tokens(now=T0) == 5
    limiter = RateLimiter(10, 5)
    limiter.take("a", 0, now=T0)
    assert len(limiter) == 0


def test_clock_stepping_back_never_grants_more() -> None:
    bucket = TokenBucket(10, 5)
    bucket.take(5, now=T0)
    with pytest.raises(RateLimited):
        bucket.take(1, now=T0 - 10)


@pytest.mark.parametrize(
    ("rate", "burst"), [(0, 5), (-1, 5), (float("nan"), 5), (float("inf"), 5), (1, 0), (1, 0.5)]
)
def test_bad_configuration(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match=r"rate_per_s|burst"):
        TokenBucket(rate, burst)
    with pytest.raises(ValueError, match=r"rate_per_s|burst"):
        RateLimiter(rate, burst)


def test_bad_max_keys() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        RateLimiter(1, 1, 0)


def test_limiter_keys_are_independent() -> None:
    limiter = RateLimiter(10, 2, label="identity")
    limiter.take("@alice", 2, now=T0)
    limiter.take("@bob", 2, now=T0)
    with pytest.raises(RateLimited, match="rate limit of identity @alice") as info:
        limiter.take("@alice", now=T0)
    assert info.value.retry_after == pytest.approx(0.1)
    assert limiter.tokens("@carol", now=T0) == 2
    assert limiter.tokens("@alice", now=T0 + 0.05) == pytest.approx(0.5)


def test_limiter_retry_after_and_more_than_burst() -> None:
    limiter = RateLimiter(100, 10)
    with pytest.raises(RateLimited, match="more than the burst") as info:
        limiter.take("new", 11, now=T0)
    assert info.value.retry_after == 0
    assert "new" not in limiter  # a refused take of an unknown key stores nothing
    limiter.take("k", 10, now=T0)
    with pytest.raises(RateLimited) as info:
        limiter.take("k", 4, now=T0 + 0.01)
    assert info.value.retry_after == pytest.approx(0.03)


def test_eviction_bounds_memory_least_recently_used_first() -> None:
    limiter = RateLimiter(1, 3, max_keys=3)
    for key in ("a", "b", "c"):
        limiter.take(key, 3, now=T0)
    limiter.take("a", 0, now=T0)  # takes nothing: does not count as use
    limiter.take("a", 1, now=T0 + 1)  # "a" is now the most recently used
    limiter.take("d", now=T0 + 1)
    assert len(limiter) == 3
    assert "b" not in limiter
    assert {"a", "c", "d"} <= {k for k in ("a", "b", "c", "d") if k in limiter}
    for i in range(1000):
        limiter.take(f"k{i}", now=T0 + 2)
    assert len(limiter) == 3


def test_prune_forgets_full_buckets_only() -> None:
    limiter = RateLimiter(1, 2)
    limiter.take("idle", 2, now=T0)
    limiter.take("busy", 2, now=T0 + 1)
    assert limiter.prune(now=T0 + 2) == 1
    assert "idle" not in limiter
    assert "busy" in limiter
    # A forgotten full bucket and a fresh one are the same bucket.
    limiter.take("idle", 2, now=T0 + 2)


_takes = st.lists(
    st.tuples(st.floats(min_value=0, max_value=2.0), st.integers(min_value=0, max_value=12)),
    max_size=200,
)


def _granted(take: object, steps: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """Run ``take(n, now)`` over ``steps`` (time deltas, n); the (now, n) it granted."""
    granted = []
    now = T0
    for delta, n in steps:
        now += delta
        try:
            take(n, now)  # type: ignore[operator]
        except RateLimited as exc:
            assert exc.retry_after >= 0
            continue
        if n > 0:
            granted.append((now, n))
    return granted


def _check_invariant(granted: list[tuple[float, int]], rate: float, burst: int) -> None:
    if not granted:
        return
    start = granted[0][0]
    total = 0
    for now, n in granted:
        total += n
        # Up to every grant: no more than a full bucket plus what refilled since.
        # (0.01 token of leeway for float clocks, as the module documents.)
        assert total <= burst + rate * (now - start) + 0.01


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=1000),
    burst=st.integers(min_value=1, max_value=10),
    steps=_takes,
)
def test_bucket_never_grants_more_than_burst_plus_rate(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    bucket = TokenBucket(rate, burst)
    _check_invariant(_granted(lambda n, now: bucket.take(n, now=now), steps), rate, burst)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=1000),
    burst=st.integers(min_value=1, max_value=10),
    steps=_takes,
    keys=st.lists(st.sampled_from("abc"), min_size=200, max_size=200),
)
def test_limiter_never_grants_a_key_more_than_burst_plus_rate(
    rate: float, burst: int, steps: list[tuple[float, int]], keys: list[str]
) -> None:
    # max_keys covers every key here, so no eviction resets a bucket.
    limiter = RateLimiter(rate, burst, max_keys=3)
    per_key: dict[str, list[tuple[float, int]]] = {}
    now = T0
    for (delta, n), key in zip(steps, keys, strict=False):
        now += delta
        try:
            limiter.take(key, n, now=now)
        except RateLimited:
            continue
        if n > 0:
            per_key.setdefault(key, []).append((now, n))
    for granted in per_key.values():
        _check_invariant(granted, rate, burst)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=1000),
    burst=st.integers(min_value=1, max_value=10),
    steps=_takes,
)
def test_a_retry_after_the_advised_wait_succeeds(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    bucket = TokenBucket(rate, burst)
    now = T0
    for delta, n in steps:
        now += delta
        if n > burst:
            continue
        try:
            bucket.take(n, now=now)
        except RateLimited as exc:
            # Exactly as advised.
            now += exc.retry_after
            bucket.take(n, now=now)
