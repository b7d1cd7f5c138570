"""Which blobs a node keeps: the pure rules, and the blob ids a message names."""

from __future__ import annotations

import pytest

from chainmail import blobkeeping, content
from chainmail.errors import RateLimited
from chainmail.ids import blob_digest, blob_id, blob_id_from_digest

NOW = 1_800_000_000_000
GRACE = 3600.0
BLOB = blob_id(b"an NDA")


def test_room_is_refused_only_past_the_limit() -> None:
    blobkeeping.check_room(10, pending=90, limit=100, oldest=NOW, grace=GRACE, now=NOW)
    with pytest.raises(RateLimited) as raised:
        blobkeeping.check_room(11, pending=90, limit=100, oldest=NOW, grace=GRACE, now=NOW)
    assert raised.value.code == "rate_limited" and raised.value.status == 429
    assert "90 bytes" in raised.value.detail and "at most 100" in raised.value.detail


def test_room_is_refused_past_the_count_whatever_the_bytes() -> None:
    """Tiny blobs each take a file, an inode and a block: bounded in number too."""

    def room(count: int) -> None:
        blobkeeping.check_room(
            1, pending=8, limit=10**9, oldest=NOW - 600_000, grace=GRACE, now=NOW,
            count=count, max_count=3,
        )  # fmt: skip

    room(2)
    with pytest.raises(RateLimited) as raised:
        room(3)
    assert "3 blobs wait (at most 3 at once)" in raised.value.detail
    assert raised.value.retry_after == 3000  # when the oldest of them may be swept
    assert blobkeeping.DEFAULT_PENDING_COUNT == 100_000


def test_retry_after_is_when_the_oldest_pending_blob_may_be_swept() -> None:
    with pytest.raises(RateLimited) as raised:
        blobkeeping.check_room(
            1, pending=100, limit=100, oldest=NOW - 600_500, grace=GRACE, now=NOW
        )
    assert raised.value.retry_after == 3000  # 3,600 s of grace, 600.5 of them gone
    with pytest.raises(RateLimited) as raised:  # overdue: the next sweep frees it
        blobkeeping.check_room(1, pending=100, limit=100, oldest=NOW - 10**8, grace=GRACE, now=NOW)
    assert raised.value.retry_after == 1
    with pytest.raises(RateLimited) as raised:  # all of it being written now: a whole grace
        blobkeeping.check_room(1, pending=100, limit=100, oldest=None, grace=GRACE, now=NOW)
    assert raised.value.retry_after == GRACE


def test_a_limit_of_zero_refuses_every_unnamed_byte() -> None:
    blobkeeping.check_room(0, pending=0, limit=0, oldest=None, grace=GRACE, now=NOW)
    with pytest.raises(RateLimited):
        blobkeeping.check_room(1, pending=0, limit=0, oldest=None, grace=GRACE, now=NOW)


def test_cutoff_and_sweep_period() -> None:
    assert blobkeeping.cutoff(NOW, GRACE) == NOW - 3_600_000
    assert blobkeeping.cutoff(NOW, 0.0005) == NOW - 1  # never a sweep of what is fresh
    assert blobkeeping.sweep_every(GRACE) == 360
    assert blobkeeping.sweep_every(2.0) == 1.0
    assert blobkeeping.sweep_every(blobkeeping.DEFAULT_GRACE_S) == 600


def test_the_blobs_a_message_names() -> None:
    assert content.blob_refs({"type": "doc", "blob": BLOB, "size": 6}) == [BLOB]
    block = {"type": "block", "txs": {"count": 1, "root": "x", "records": BLOB}}
    assert content.blob_refs(block) == [BLOB]
    assert content.blob_refs({"type": "anchor", "ots": BLOB}) == [BLOB]
    # Anything else names none: other types, a box, a field that is not a blob id.
    assert content.blob_refs({"type": "tx/note", "blob": BLOB}) == []
    assert content.blob_refs("Zm9v.box") == []
    assert content.blob_refs({"type": "doc", "blob": "&nope.sha256"}) == []
    assert content.blob_refs({"type": "block", "txs": BLOB}) == []
    assert content.blob_refs({"type": 7}) == []


def test_a_blob_id_from_its_digest() -> None:
    assert blob_id_from_digest(blob_digest(BLOB)) == BLOB
    with pytest.raises(ValueError):
        blob_id_from_digest(b"short")
