"""Which stored blobs a node keeps, and how many bytes may wait to be named (pure rules).

``PUT /v1/blobs`` takes bytes from anyone: nothing about a blob says who
wants it kept. A blob is kept for good once a logged message names it (a
``doc``'s ``blob``, a block's records, an anchor's proof:
``content.blob_refs``); until then it is *pending*. Pending blobs are
bounded twice, so that nobody can fill the node's disk with bytes no message
will ever name:

* by bytes: at most ``pending_limit`` wait at once; a blob that would pass
  it is refused (``rate_limited``, with how long until the oldest pending
  blob is swept), and nothing stored before is touched;
* by number: at most ``pending_count`` wait at once, refused the same way
  (each takes a file, an inode and a filesystem block, whatever its size:
  2,000 blobs of 8 bytes took 9.2 MB, counted as 16 KB);
* by time: a blob still pending ``grace`` seconds after it was stored (or
  last stored again) is deleted by the node's sweeper.

So the way to keep a document is what ``Client.notarise`` does: store it,
then post the ``doc`` message naming it within the grace.
"""

from __future__ import annotations

import math
from typing import Final

from chainmail.errors import RateLimited

__all__ = [
    "DEFAULT_GRACE_S",
    "DEFAULT_PENDING_COUNT",
    "DEFAULT_PENDING_LIMIT",
    "check_room",
    "cutoff",
    "sweep_every",
]

#: Seconds a blob may stay pending (stored, named by no logged message).
DEFAULT_GRACE_S: Final = 24 * 3600.0
#: Bytes of pending blobs a node holds at most: 64 of the largest blobs.
DEFAULT_PENDING_LIMIT: Final = 1024 * 1024 * 1024
#: Pending blobs a node holds at most, whatever their size (~0.5 GB of disk
#: and as many inodes when all are tiny).
DEFAULT_PENDING_COUNT: Final = 100_000
#: The sweeper's period, whatever the grace: at least this, at most the next.
_SWEEP_MIN_S: Final = 1.0
_SWEEP_MAX_S: Final = 600.0


def check_room(
    size: int,
    *,
    pending: int,
    limit: int,
    oldest: int | None,
    grace: float,
    now: int,
    count: int = 0,
    max_count: int = DEFAULT_PENDING_COUNT,
) -> None:
    """Refuse a new blob of ``size`` bytes when ``pending`` plus it would pass ``limit``,
    or when ``count`` blobs pending already reach ``max_count``.

    ``pending`` counts the pending bytes (blobs being stored are counted from
    before their bytes are written); ``oldest`` is when the oldest pending blob
    was stored (ms; None: none), ``now`` the node's clock (ms). Raises ``RateLimited`` with ``retry_after``
    the seconds until the sweeper may free that oldest blob.
    """
    if pending + size <= limit and count < max_count:
        return
    wait = grace if oldest is None else max(0.0, (oldest + grace * 1000 - now) / 1000)
    waiting = (
        f"{pending} bytes of blobs wait"
        if count < max_count
        else f"{count} blobs wait (at most {max_count} at once)"
    )
    raise RateLimited(
        f"blob of {size} bytes refused: {waiting} to be named by a message"
        + (f" (at most {limit} bytes)" if count < max_count else "")
        + "; post the doc message for what you stored, or retry once older unnamed blobs"
        " are swept",
        retry_after=max(1.0, math.ceil(wait)),
    )


def cutoff(now: int, grace: float) -> int:
    """The ``stored`` time (ms) before which a pending blob is swept at ``now`` (ms)."""
    return now - math.ceil(grace * 1000)


def sweep_every(grace: float) -> float:
    """Seconds between sweeps: a tenth of the grace, from 1 s to 10 min."""
    return min(_SWEEP_MAX_S, max(_SWEEP_MIN_S, grace / 10))
