"""The auditor: forks, gaps, bad blocks, wrong roots and censorship, from what a node publishes."""

from __future__ import annotations

from typing import Any

import pytest

from chainmail import blocks, merkle, ssb
from chainmail.audit import Auditor, Finding
from chainmail.ids import blob_id
from support.feeds import Writer, sign_unchecked

GRACE = 5_000
EMPTY_BLOB = blob_id(b"")


class FakeNode:
    """Publishes like a node: a firehose of one pipeline and signed blocks over it."""

    def __init__(self) -> None:
        self.feed = Writer()
        self.log: list[tuple[str, dict[str, Any]]] = []
        self.blocks: list[tuple[int, str, dict[str, Any]]] = []

    @property
    def id(self) -> str:
        return self.feed.id

    def append(self, msg: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
        entry = (len(self.log), ssb.message_id(msg), msg)
        self.log.append(entry[1:])
        return entry

    def root(self, size: int) -> bytes:
        return merkle.root([blocks.message_leaf(mid) for mid, _ in self.log[:size]])

    def block(self, *, size: int | None = None, root: bytes | None = None) -> tuple[int, str, Any]:
        """Sign the next block over the log so far (or over ``size``, with ``root``)."""
        size = len(self.log) if size is None else size
        height = len(self.blocks) + 1
        content = blocks.block_content(
            height=height,
            prev=self.blocks[-1][1] if self.blocks else None,
            time=1_800_000_000_000 + height,
            logs=[blocks.LogCheckpoint(0, size, self.root(size) if root is None else root)],
            records=[],
            records_blob_id=EMPTY_BLOB,
        )
        msg = self.feed.sign(content)
        block = (height, ssb.message_id(msg), msg)
        self.blocks.append(block)
        self.append(msg)  # a block is a message of the node's feed too
        return block


def see(auditor: Auditor, entry: tuple[int, str, dict[str, Any]], now: int = 0) -> list[Finding]:
    index, mid, msg = entry
    return auditor.see_message(0, index, mid, msg, now=now)


def kinds(found: list[Finding]) -> list[str]:
    return [f.kind for f in found]


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


def test_an_honest_node_gives_no_findings(node: FakeNode) -> None:
    alice, bob = Writer(), Writer()
    auditor = Auditor(node.id, grace_ms=GRACE)
    found: list[Finding] = []
    for n in range(40):
        found += see(auditor, node.append((alice if n % 2 else bob).sign({"type": "post", "n": n})))
        if n % 10 == 9:
            height, bid, msg = node.block()
            found += auditor.see_block(height, bid, msg)
            found += see(auditor, (len(node.log) - 1, bid, msg))
    assert found == [] and auditor.overdue(now=GRACE * 10) == []
    assert (auditor.messages, auditor.blocks, auditor.height) == (44, 4, 4)
    assert auditor.next_index(0) == 44 and auditor.waiting() == 0


def test_a_block_seen_before_the_firehose_reaches_it_is_checked_when_it_does(
    node: FakeNode,
) -> None:
    alice = Writer()
    entries = [node.append(alice.sign({"type": "post", "n": n})) for n in range(5)]
    height, bid, msg = node.block(root=bytes(32))  # a root of no such tree
    auditor = Auditor(node.id, grace_ms=GRACE)
    assert auditor.see_block(height, bid, msg) == []  # nothing to compare yet
    assert auditor.unchecked_roots() == 1
    found = [f for e in entries for f in see(auditor, e)]
    assert auditor.unchecked_roots() == 0
    assert kinds(found) == ["root_mismatch"] and found[0].height == 1


def test_a_second_message_at_a_feed_position_is_a_fork(node: FakeNode) -> None:
    alice = Writer()
    first = node.append(alice.sign({"type": "post", "n": 1}))
    other = sign_unchecked(alice.keys, {"type": "post", "n": 2}, sequence=1)
    auditor = Auditor(node.id, grace_ms=GRACE)
    assert see(auditor, first) == []
    found = see(auditor, node.append(other))
    assert kinds(found) == ["fork"] and found[0].id == ssb.message_id(other)


def test_a_tampered_message_is_invalid_and_its_feed_goes_on(node: FakeNode) -> None:
    alice = Writer()
    msg = alice.sign({"type": "post", "text": "pay 10"})
    mid = ssb.message_id(msg)
    msg["content"]["text"] = "pay 1000"
    auditor = Auditor(node.id, grace_ms=GRACE)
    found = auditor.see_message(0, 0, mid, msg, now=0)
    assert kinds(found) == ["invalid"] and "signature" in found[0].detail
    after = alice.sign({"type": "post", "text": "next"})  # linked to the original id
    assert auditor.see_message(0, 1, ssb.message_id(after), after, now=0) == []


def test_a_gap_in_the_firehose_is_reported_once(node: FakeNode) -> None:
    alice = Writer()
    entries = [node.append(alice.sign({"type": "post", "n": n})) for n in range(4)]
    auditor = Auditor(node.id, grace_ms=GRACE)
    found = see(auditor, entries[0]) + see(auditor, entries[2]) + see(auditor, entries[3])
    # entries[2] follows a skipped message: a gap (and a fork of alice's feed: its
    # previous is the skipped one), then the firehose goes on from there.
    assert kinds(found).count("gap") == 1 and auditor.next_index(0) == 4


def test_a_block_not_signed_by_the_node_is_reported(node: FakeNode) -> None:
    node.append(Writer().sign({"type": "post"}))
    impostor = FakeNode()
    impostor.log = list(node.log)
    height, bid, msg = impostor.block()
    found = Auditor(node.id, grace_ms=GRACE).see_block(height, bid, msg)
    assert kinds(found) == ["block"] and "not the node" in found[0].detail


def test_a_block_out_of_order_or_unlinked_is_reported(node: FakeNode) -> None:
    node.append(Writer().sign({"type": "post"}))
    first = node.block()
    second = node.block()
    auditor = Auditor(node.id, grace_ms=GRACE)
    assert "expected height 1" in auditor.see_block(*second)[0].detail
    other = FakeNode()
    other.feed = node.feed  # the node's key, but a chain of its own
    other.log = list(node.log)
    other.blocks = [(1, "%" + "A" * 43 + "=.sha256", {})]
    forged = other.block()
    auditor = Auditor(node.id, grace_ms=GRACE)
    assert auditor.see_block(*first) == []
    assert "prev is" in auditor.see_block(*forged)[0].detail


def test_a_bad_block_is_reported_once_and_the_next_block_is_judged_on_its_own(
    node: FakeNode,
) -> None:
    node.append(Writer().sign({"type": "post"}))
    height, bid, msg = node.block()
    node.append(Writer().sign({"type": "post"}))
    second = node.block()
    tampered = {**msg, "content": {**msg["content"], "time": msg["content"]["time"] + 1}}
    auditor = Auditor(node.id, grace_ms=GRACE)
    found = auditor.see_block(height, bid, tampered)
    assert kinds(found) == ["block"] and "does not verify" in found[0].detail
    assert auditor.height == 1
    assert auditor.see_block(*second) == []
    assert auditor.height == 2


def test_a_message_no_block_covers_after_the_grace_period_is_censored(node: FakeNode) -> None:
    alice = Writer()
    auditor = Auditor(node.id, grace_ms=GRACE)
    kept = node.append(alice.sign({"type": "post", "n": 1}))
    see(auditor, kept, now=1_000)
    height, bid, msg = node.block()
    auditor.see_block(height, bid, msg)
    see(auditor, (len(node.log) - 1, bid, msg), now=1_500)  # the node's own: never waited for
    dropped = node.append(alice.sign({"type": "post", "n": 2}))
    see(auditor, dropped, now=2_000)
    assert auditor.overdue(now=2_000 + GRACE - 1) == []
    found = auditor.overdue(now=2_000 + GRACE)
    assert kinds(found) == ["censored"] and found[0].id == dropped[1]
    assert auditor.overdue(now=2_000 + 10 * GRACE) == []  # reported once
    assert auditor.waiting() == 0


def test_a_block_over_more_log_than_the_firehose_shows_covers_nothing(node: FakeNode) -> None:
    alice = Writer()
    auditor = Auditor(node.id, grace_ms=GRACE)
    for n in range(3):
        see(auditor, node.append(alice.sign({"type": "post", "n": n})), now=0)
    height, bid, msg = node.block(size=1000, root=bytes(32))  # a log never published
    assert auditor.see_block(height, bid, msg) == []
    assert auditor.unmatched_roots() == []  # the firehose was not read since
    auditor.firehose_read()
    (found,) = auditor.unmatched_roots()
    assert found.kind == "root_mismatch" and found.height == height
    assert "size 1000" in found.detail and "shows only 3 entries" in found.detail
    assert auditor.unmatched_roots() == []  # said once
    # Its claim covers nothing: what the firehose did show was censored.
    assert kinds(auditor.overdue(now=GRACE)) == ["censored"] * 3


def test_a_log_that_goes_back_or_a_pipeline_a_block_drops_is_a_bad_block(node: FakeNode) -> None:
    alice = Writer()
    auditor = Auditor(node.id, grace_ms=GRACE)
    for n in range(4):
        see(auditor, node.append(alice.sign({"type": "post", "n": n})))
    height, bid, msg = node.block()
    assert auditor.see_block(height, bid, msg) == []
    see(auditor, (len(node.log) - 1, bid, msg))
    height, bid, msg = node.block(size=2)
    found = auditor.see_block(height, bid, msg)
    assert kinds(found) == ["block"] and "went back from 4 to 2 entries" in found[0].detail
    content = blocks.block_content(
        height=3,
        prev=bid,
        time=1_800_000_000_003,
        logs=[blocks.LogCheckpoint(1, 0, merkle.root([]))],
        records=[],
        records_blob_id=EMPTY_BLOB,
    )
    dropping = node.feed.sign(content)
    found = auditor.see_block(3, ssb.message_id(dropping), dropping)
    assert kinds(found) == ["block"] and "no checkpoint of pipeline(s) [0]" in found[0].detail


def test_a_block_served_is_the_block_in_the_node_s_own_feed(node: FakeNode) -> None:
    alice = Writer()
    auditor = Auditor(node.id, grace_ms=GRACE)
    for n in range(3):
        see(auditor, node.append(alice.sign({"type": "post", "n": n})))
    # The node signs two blocks at height 1: one logged in its feed, one served.
    fork_state = node.feed.state
    height, served_id, served = node.block()
    node.log.pop()  # the served one never reaches the firehose...
    node.blocks.pop()
    node.feed.state = fork_state
    _, logged_id, logged = node.block(size=2)  # ...this one is the feed's block 1
    assert served_id != logged_id
    see(auditor, (len(node.log) - 1, logged_id, logged))
    found = auditor.see_block(height, served_id, served)
    assert kinds(found) == ["block"] and "it signed two" in found[0].detail
    assert logged_id in found[0].detail and served_id in found[0].detail


def test_a_block_served_but_never_in_the_node_s_feed_is_a_finding(node: FakeNode) -> None:
    alice = Writer()
    auditor = Auditor(node.id, grace_ms=GRACE)
    for n in range(3):
        see(auditor, node.append(alice.sign({"type": "post", "n": n})))
    height, bid, msg = node.block()
    assert auditor.see_block(height, bid, msg) == []  # its feed entry not read yet
    auditor.firehose_read()
    (found,) = auditor.unlogged_blocks()
    assert found.kind == "block" and "not in the node's feed" in found.detail
    assert auditor.unlogged_blocks() == []
    # Read in time, it is simply the same block.
    again = Auditor(node.id, grace_ms=GRACE)
    for entry in [(i, mid, m) for i, (mid, m) in enumerate(node.log)]:
        see(again, entry)
    assert again.see_block(height, bid, msg) == []
    again.firehose_read()
    assert again.unlogged_blocks() == []


def _trade(node: FakeNode, auditor: Auditor, policy: str = "all") -> str:
    """A tx opened and finished by both parties on the firehose, seen at time 0."""
    alice, bob = Writer(), Writer()
    opened = alice.sign(
        {"type": "tx/open", "parties": [alice.id, bob.id], "deadline": 10**13, "finish": policy}
    )
    see(auditor, node.append(opened))
    see(auditor, node.append(alice.sign({"type": "tx/finish", "tx": ssb.message_id(opened)})))
    see(auditor, node.append(bob.sign({"type": "tx/finish", "tx": ssb.message_id(opened)})))
    return ssb.message_id(opened)


def test_a_finished_tx_in_no_block_s_records_is_censored(node: FakeNode) -> None:
    auditor = Auditor(node.id, grace_ms=GRACE)
    tx = _trade(node, auditor)
    height, bid, msg = node.block()  # covers the messages, records nothing
    assert auditor.see_block(height, bid, msg) == []
    assert auditor.see_records(height, []) == []
    assert auditor.waiting() == 1  # the tx, not its messages
    assert auditor.overdue(now=GRACE - 1) == []
    (found,) = auditor.overdue(now=GRACE)
    assert found.kind == "censored" and found.id == tx and "in no block's records" in found.detail
    assert auditor.overdue(now=10 * GRACE) == [] and auditor.waiting() == 0


def test_a_finished_tx_recorded_as_timed_out_is_a_bad_block(node: FakeNode) -> None:
    auditor = Auditor(node.id, grace_ms=GRACE)
    tx = _trade(node, auditor)
    height, bid, msg = node.block()
    assert auditor.see_block(height, bid, msg) == []
    (found,) = auditor.see_records(height, [{"tx": tx, "status": "timed_out"}])
    assert found.kind == "block" and "as 'timed_out'" in found.detail and tx in found.detail
    assert auditor.overdue(now=10 * GRACE) == []


def test_a_tx_recorded_as_it_finished_or_timed_out_unfinished_is_fine(node: FakeNode) -> None:
    auditor = Auditor(node.id, grace_ms=GRACE)
    finished = _trade(node, auditor, policy="any")
    carol, dave = Writer(), Writer()
    lapsed = carol.sign({"type": "tx/open", "parties": [carol.id, dave.id], "deadline": 1})
    see(auditor, node.append(lapsed))
    records = [
        {"tx": finished, "status": "finished"},
        {"tx": ssb.message_id(lapsed), "status": "timed_out"},
    ]
    height, bid, msg = node.block()
    assert auditor.see_block(height, bid, msg) == []
    assert auditor.see_records(height, records) == []
    assert auditor.overdue(now=10 * GRACE) == []


def test_a_tx_unfinished_at_its_deadline_and_in_no_block_s_records_is_censored(
    node: FakeNode,
) -> None:
    # Timeouts are not messages: the node closes the tx on its clock and its next
    # block records it as timed out. One the blocks never record is censored,
    # once its deadline is past by the grace.
    auditor = Auditor(node.id, grace_ms=GRACE)
    carol, dave = Writer(), Writer()
    deadline = 60_000
    lapsed = carol.sign({"type": "tx/open", "parties": [carol.id, dave.id], "deadline": deadline})
    see(auditor, node.append(lapsed))
    see(auditor, node.append(carol.sign({"type": "tx/finish", "tx": ssb.message_id(lapsed)})))
    height, bid, msg = node.block()  # covers the messages, records nothing
    assert auditor.see_block(height, bid, msg) == []
    assert auditor.see_records(height, []) == []
    assert auditor.overdue(now=deadline + GRACE - 1) == []
    (found,) = auditor.overdue(now=deadline + GRACE)
    assert found.kind == "censored" and found.id == ssb.message_id(lapsed)
    assert "passed its deadline unfinished" in found.detail
    assert auditor.overdue(now=deadline + 10 * GRACE) == []  # reported once


def test_a_message_outside_its_author_s_pipeline_is_invalid() -> None:
    # hash(author) mod P places every feed in one pipeline: its order is that log's.
    from chainmail.log import pipeline_of

    writers = [Writer() for _ in range(64)]
    home = {w.id: pipeline_of(w.id, 2) for w in writers}
    alice = next(w for w in writers if home[w.id] == 1)
    bob = next(w for w in writers if home[w.id] == 0)
    auditor = Auditor("@node", grace_ms=GRACE, pipelines=2)
    first = alice.sign({"type": "post"})
    assert auditor.see_message(1, 0, ssb.message_id(first), first, now=0) == []
    stray = bob.sign({"type": "post"})
    (found,) = auditor.see_message(1, 1, ssb.message_id(stray), stray, now=0)
    assert found.kind == "invalid" and found.pipeline == 1 and found.index == 1
    assert f"{bob.id}'s messages go to pipeline 0 of 2" in found.detail
    with pytest.raises(ValueError, match="pipelines"):
        Auditor("@node", grace_ms=GRACE, pipelines=0)


def test_a_negative_grace_is_refused() -> None:
    with pytest.raises(ValueError, match="grace_ms"):
        Auditor("@x", grace_ms=-1)
