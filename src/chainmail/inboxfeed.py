"""A live inbox follower's queue of deliveries pushed as the writer projects them.

An inbox stream used to read the store after every wake: a reader thread, a
query and the frames built there, a few ms at half load between a delivery
being written and its frame leaving. The node now hands each follower the
deliveries the projection just wrote (``InboxFeed.push``, on the event loop)
and the follower sends them as they are. The store stays the truth: a
follower reads it when it starts, when it falls behind (``limit`` entries
pushed and not yet sent, or ``max_bytes`` of them: the queue is dropped and
``stale`` set), and after
``idle`` seconds without news, so no delivery depends on a push arriving.

Deliveries are numbered in commit order, so a follower that has sent up to
``last`` skips anything pushed at or below it: one read and the pushes of
the same commits never send an entry twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterable
from typing import Final

from chainmail.store import Delivery

__all__ = ["DEFAULT_LIMIT", "DEFAULT_MAX_BYTES", "InboxFeed"]

#: Deliveries a follower may have pushed and unsent before it reads the store instead,
#: and their bytes: a stream holds at most that much while its client is slow,
#: whatever the messages' sizes; catching up from the store is as fast.
DEFAULT_LIMIT: Final = 1_000
DEFAULT_MAX_BYTES: Final = 1024 * 1024


class InboxFeed:
    """Deliveries pushed for one follower of one recipient (event loop only)."""

    def __init__(
        self, recipient: str, *, limit: int = DEFAULT_LIMIT, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit: expected at least 1, got {limit}")
        self.recipient = recipient
        self.limit = limit
        self.max_bytes = max_bytes
        #: The bodies' bytes in ``pending``.
        self.pending_bytes = 0
        #: Pushed deliveries, oldest first; some may be at or below what was sent.
        self.pending: collections.deque[Delivery] = collections.deque()
        #: True when the store must be read: at the start, after an overflow, when idle.
        self.stale = True
        self._event = asyncio.Event()

    def push(self, entries: Iterable[Delivery]) -> None:
        """Queue new deliveries (in delivery order) and wake the follower."""
        for entry in entries:
            self.pending.append(entry)
            self.pending_bytes += len(entry.body)
        if len(self.pending) > self.limit or self.pending_bytes > self.max_bytes:
            # A follower this far behind catches up from the store, which has
            # all of them: holding more here would only grow the node.
            self.pending.clear()
            self.pending_bytes = 0
            self.stale = True
        self._event.set()

    def take(self, last: int) -> list[Delivery]:
        """The pushed deliveries above ``last``, in order; the queue is emptied."""
        fresh = [d for d in self.pending if d.delivery > last]
        self.pending.clear()
        self.pending_bytes = 0
        return fresh

    async def wait(self, timeout: float) -> None:
        """Until something is pushed, or ``timeout`` seconds (then the store is read again)."""
        if self.pending or self.stale:
            return
        self._event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
            return
        self.stale = True
