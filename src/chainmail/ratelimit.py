"""Token buckets for the node's limits (DESIGN §8): per identity and per client connection.

A bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; taking
``n`` tokens either succeeds at once or raises ``RateLimited`` with the
seconds until ``n`` tokens will be there. Over any run of takes, the tokens
granted never exceed ``burst + rate_per_s × elapsed``.

The buckets are kept as GCRA ("virtual scheduling"): one float per key, the
*theoretical arrival time* ``tat`` at which the bucket would be full again,
instead of a token count and a timestamp. That is the same bucket exactly,
but a take is one comparison and one store, and "full" is simply
``tat <= now``, which is what eviction needs.

Defaults never throttle a legitimate high-volume participant: 10,000
messages/s per identity and 50,000 per connection, with bursts big enough
for the largest batch (16 MiB of the smallest messages at once, since a
batch takes its N tokens in one go) and several seconds of rate.

Pure: no I/O and no clock of its own. ``now`` is monotonic seconds
(``time.monotonic()``), passed in. Not thread-safe: use one limiter per
thread or event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from chainmail.errors import RateLimited

__all__ = [
    "CONNECTION_BURST",
    "CONNECTION_RATE",
    "DEFAULT_MAX_KEYS",
    "IDENTITY_BURST",
    "IDENTITY_RATE",
    "MAX_BATCH_MESSAGES",
    "RateLimiter",
    "TokenBucket",
]

#: Messages per second one identity may sustain (DESIGN §8: at least 10,000).
IDENTITY_RATE: Final = 10_000.0
#: Messages per second one client connection may sustain (DESIGN §8: at least 50,000).
CONNECTION_RATE: Final = 50_000.0

#: Largest batch body (DESIGN §8) over a lower bound of one NDJSON message line:
#: the smallest message with a ``previous`` is about 315 bytes compact, the very
#: first one of a feed about 265; 256 leaves margin. 16 MiB / 256 = 65,536.
MAX_BATCH_MESSAGES: Final = 16 * 1024 * 1024 // 256

#: Identity burst: the largest batch from one author, and 10 s of its rate.
IDENTITY_BURST: Final = 100_000
#: Connection burst: the largest batch, and 4 s of its rate.
CONNECTION_BURST: Final = 200_000

#: Keys a ``RateLimiter`` remembers before it evicts the least recently used.
#: A key costs about 150 bytes, so this bounds a limiter near 15 MB.
DEFAULT_MAX_KEYS: Final = 100_000


#: Leeway when comparing times, in tokens: monotonic clocks are floats, and a
#: caller that waits exactly ``retry_after`` must not be refused again by
#: rounding. Never cumulative, and capped at 1 µs.
_SLACK_TOKENS: Final = 0.01
_SLACK_MAX_S: Final = 1e-6


def _check_config(rate_per_s: float, burst: float) -> None:
    # NaN fails every comparison, so "not (x > 0)" refuses it too.
    if not (rate_per_s > 0 and rate_per_s != float("inf")):
        raise ValueError(f"rate_per_s must be a positive finite number, got {rate_per_s!r}")
    if not (burst >= 1 and burst != float("inf")):
        raise ValueError(f"burst must be a finite number >= 1, got {burst!r}")


def _refused(what: str, n: int, rate_per_s: float, burst: float, backlog: float) -> RateLimited:
    """The error for a take of ``n`` that does not fit a bucket ``backlog`` seconds from full."""
    if n > burst:
        # No wait makes this fit; the best the caller can do is split it and
        # wait for a full bucket.
        return RateLimited(
            f"{what}: {n} messages at once is more than the burst of {burst:g};"
            f" send at most {burst:g} at a time",
            retry_after=backlog,
        )
    # n tokens are there once the backlog has drained to (burst - n) tokens' worth.
    retry = max(0.0, backlog - (burst - n) / rate_per_s)
    return RateLimited(
        f"{what}: more than {rate_per_s:g} messages/s (burst {burst:g});"
        f" {n} more fit in {retry:.6f} s",
        retry_after=retry,
    )


def _tokens(burst: float, rate_per_s: float, tat: float, now: float) -> float:
    """Tokens in a bucket whose theoretical arrival time is ``tat``."""
    backlog = tat - now if tat > now else 0.0
    return max(0.0, burst - backlog * rate_per_s)


class TokenBucket:
    """One bucket: ``burst`` tokens, refilled at ``rate_per_s``. Starts full."""

    __slots__ = ("_interval", "_limit", "_tat", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float) -> None:
        """Raises ``ValueError`` unless ``rate_per_s > 0`` and ``burst >= 1`` (both finite)."""
        _check_config(rate_per_s, burst)
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self._interval = 1.0 / self.rate_per_s
        # The most a bucket may be behind ``now`` after a take.
        self._limit = self.burst * self._interval + min(
            _SLACK_MAX_S, _SLACK_TOKENS * self._interval
        )
        self._tat = float("-inf")

    def take(self, n: int = 1, *, now: float) -> None:
        """Take ``n`` tokens at ``now``, or none.

        ``n <= 0`` takes nothing. Raises ``RateLimited`` when fewer than ``n``
        tokens are there; ``retry_after`` is the seconds until ``n`` will be
        (for ``n > burst``, which never fits, the seconds until the bucket is
        full, and the detail says to split).
        """
        if n <= 0:
            return
        old = self._tat
        backlog = old - now if old > now else 0.0
        cost = n * self._interval
        if n > self.burst or backlog + cost > self._limit:
            raise _refused("rate limit", n, self.rate_per_s, self.burst, backlog)
        self._tat = (old if old > now else now) + cost

    def tokens(self, *, now: float) -> float:
        """The tokens there at ``now`` (between 0 and ``burst``). Raises nothing."""
        return _tokens(self.burst, self.rate_per_s, self._tat, now)


class RateLimiter:
    """A token bucket per key (an identity, or a client address), in bounded memory.

    A key never seen, or not seen for ``burst / rate_per_s`` seconds, has a
    full bucket. At most ``max_keys`` buckets are kept: adding one more evicts
    the least recently used, which is almost always full already (a full
    bucket is indistinguishable from a new one, so evicting it loses
    nothing). Evicting a bucket that is not full hands its key a fresh
    burst; with the default ``max_keys`` that needs 100,000 busier keys in
    between, each of which has its own burst anyway.
    """

    __slots__ = ("_interval", "_limit", "_tats", "burst", "label", "max_keys", "rate_per_s")

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        max_keys: int = DEFAULT_MAX_KEYS,
        *,
        label: str = "key",
    ) -> None:
        """``label`` names what a key is in ``RateLimited`` details ("identity", "client").

        Raises ``ValueError`` unless ``rate_per_s > 0``, ``burst >= 1`` (both
        finite) and ``max_keys >= 1``.
        """
        _check_config(rate_per_s, burst)
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self.max_keys = max_keys
        self.label = label
        self._interval = 1.0 / self.rate_per_s
        # The most a bucket may be behind ``now`` after a take.
        self._limit = self.burst * self._interval + min(
            _SLACK_MAX_S, _SLACK_TOKENS * self._interval
        )
        # key -> theoretical arrival time, least recently used first.
        self._tats: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tats)

    def __contains__(self, key: object) -> bool:
        return key in self._tats

    def take(self, key: str, n: int = 1, *, now: float) -> None:
        """Take ``n`` tokens from ``key``'s bucket at ``now``, or none.

        ``n <= 0`` takes nothing. Raises ``RateLimited`` when ``key`` has
        fewer than ``n`` tokens; ``retry_after`` is the seconds until it has
        ``n`` (for ``n > burst``, which never fits, the seconds until its
        bucket is full, and the detail says to split). A refused take changes
        nothing.
        """
        if n <= 0:
            return
        tats = self._tats
        cost = n * self._interval
        old = tats.get(key)
        if old is None:
            if n > self.burst:
                raise _refused(
                    f"rate limit of {self.label} {key}", n, self.rate_per_s, self.burst, 0.0
                )
            if len(tats) >= self.max_keys:
                tats.popitem(last=False)
            tats[key] = now + cost
            return
        backlog = old - now if old > now else 0.0
        if n > self.burst or backlog + cost > self._limit:
            raise _refused(
                f"rate limit of {self.label} {key}", n, self.rate_per_s, self.burst, backlog
            )
        tats[key] = (old if old > now else now) + cost
        tats.move_to_end(key)

    def tokens(self, key: str, *, now: float) -> float:
        """The tokens ``key`` has at ``now`` (``burst`` for an unknown key). Raises nothing."""
        tat = self._tats.get(key)
        if tat is None:
            return self.burst
        return _tokens(self.burst, self.rate_per_s, tat, now)

    def prune(self, *, now: float) -> int:
        """Forget every bucket that is full at ``now``; returns how many. Raises nothing.

        Optional housekeeping (eviction already bounds memory); O(keys).
        """
        full = [key for key, tat in self._tats.items() if tat <= now]
        for key in full:
            del self._tats[key]
        return len(full)
