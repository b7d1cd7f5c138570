"""A live follower's queue of pushed deliveries: order, no repeats, falling behind, idling."""

from __future__ import annotations

import asyncio

import pytest

from chainmail.inboxfeed import InboxFeed
from chainmail.store import Delivery


def d(n: int) -> Delivery:
    return Delivery(n, f"%{n}", b"{}")


def test_a_feed_starts_stale_so_the_store_is_read_first() -> None:
    feed = InboxFeed("@b")
    assert feed.stale and not feed.pending


def test_take_skips_what_was_already_sent_and_empties_the_queue() -> None:
    # The first read and the pushes of the same commits overlap: deliveries are
    # numbered in commit order, so whatever is at or below ``last`` was sent.
    feed = InboxFeed("@b")
    feed.push([d(3), d(4)])
    feed.push([d(7)])
    assert [x.delivery for x in feed.take(4)] == [7]
    assert feed.take(0) == []


def test_a_follower_too_far_behind_drops_the_queue_and_reads_the_store() -> None:
    feed = InboxFeed("@b", limit=3)
    feed.stale = False
    feed.push([d(1), d(2), d(3)])
    assert not feed.stale and len(feed.pending) == 3
    feed.push([d(4)])
    assert feed.stale and not feed.pending


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="limit"):
        InboxFeed("@b", limit=0)


def test_wait_returns_on_a_push_and_marks_the_feed_stale_when_idle() -> None:
    async def run() -> tuple[bool, bool]:
        feed = InboxFeed("@b")
        feed.stale = False
        waiting = asyncio.create_task(feed.wait(5.0))
        await asyncio.sleep(0)
        feed.push([d(1)])
        await asyncio.wait_for(waiting, 1.0)
        woke_stale = feed.stale
        feed.take(0)
        await feed.wait(0.01)  # nothing comes: read the store again
        return woke_stale, feed.stale

    woke_stale, idle_stale = asyncio.run(run())
    assert not woke_stale and idle_stale


def test_wait_does_not_block_while_there_is_something_to_send() -> None:
    async def run() -> None:
        feed = InboxFeed("@b")
        await asyncio.wait_for(feed.wait(5.0), 0.5)  # stale: read first
        feed.stale = False
        feed.push([d(1)])
        await asyncio.wait_for(feed.wait(5.0), 0.5)  # pending: send first

    asyncio.run(run())


def test_a_follower_holding_too_many_bytes_reads_the_store_instead() -> None:
    """Few deliveries, but large ones: the bytes bound the queue too."""
    feed = InboxFeed("@r", limit=1_000, max_bytes=50_000)
    feed.take(0)
    feed.stale = False
    big = [Delivery(n, f"%{n}", b"x" * 20_000) for n in (1, 2)]
    feed.push(big)
    assert feed.pending_bytes == 40_000 and not feed.stale
    feed.push([Delivery(3, "%3", b"x" * 20_000)])
    assert feed.stale and not feed.pending and feed.pending_bytes == 0
    feed.push(big[:1])
    assert feed.take(0) == big[:1] and feed.pending_bytes == 0
