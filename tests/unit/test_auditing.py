"""``auditing._Run``'s checks of the node's anchors, against a stub client (the real
thing, against bcoin: ``tests/integration/test_anchors_node.py``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, cast

import pytest

from chainmail.audit import Auditor, Finding
from chainmail.auditing import AuditSummary, _Run, audit_node
from chainmail.bitcoinrpc import BitcoinBehind, BitcoinError, BitcoinUnreachable
from chainmail.client import Client, NodeUnavailable
from chainmail.verify import Check, Report, VerificationFailed

NODE = "@" + "A" * 43 + "=.ed25519"


class StubClient:
    """``verify_block`` answers from ``answers`` (height → an error to raise, or None)."""

    def __init__(self) -> None:
        self.answers: dict[int, BaseException | None] = {}
        self.asked: list[int] = []
        #: The anchor ids ``block(h)`` lists for each height.
        self.listed: dict[int, list[str]] = {}

    def block(self, height: int) -> dict[str, Any]:
        ids = self.listed.get(height)
        if ids is None:
            return {"height": height, "anchored": None}
        return {"anchored": {"height": height, "anchors": [{"id": i} for i in ids]}}

    def verify_block(self, height: int, **_: Any) -> Report:
        self.asked.append(height)
        error = self.answers.get(height)
        if error is not None:
            raise error
        return Report(f"block {height}")


def _failed(height: int) -> VerificationFailed:
    report = Report(f"block {height}", [Check(f"block {height} anchor", False, "ots id")])
    return VerificationFailed("ots id", report)


def _run(
    client: StubClient, height: int, outages: list[BitcoinUnreachable | None] | None = None
) -> tuple[_Run, list[Finding]]:
    found: list[Finding] = []
    run = _Run(
        cast(Client, client),
        cast(Auditor, SimpleNamespace(node_id=NODE, height=height)),
        1,
        cast(ThreadPoolExecutor, None),
        AuditSummary(NODE),
        found.append,
        bitcoin="http://x:k@127.0.0.1:1",
        on_bitcoin_outage=None if outages is None else outages.append,
    )
    return run, found


def test_an_unreachable_bitcoin_node_is_no_finding_and_its_anchors_wait() -> None:
    client = StubClient()
    outages: list[BitcoinUnreachable | None] = []
    run, found = _run(client, 5, outages)
    run.anchored = [3, 4]
    down = BitcoinUnreachable("Bitcoin node http://x:***@127.0.0.1:1: getblockhash: refused")
    client.answers = {3: down}
    run.anchors()  # raised BitcoinUnreachable: it ended a followed audit
    run.anchors()
    assert found == [] and outages == [down]  # told once
    assert run.anchored == [3, 4]
    client.answers = {}
    run.anchors()
    assert found == [] and outages == [down, None]
    assert run.anchored == []


def test_an_unreachable_bitcoin_node_is_raised_without_an_outage_callback() -> None:
    client = StubClient()
    run, found = _run(client, 5)
    run.anchored = [3]
    client.answers = {3: BitcoinUnreachable("down")}
    with pytest.raises(BitcoinUnreachable):
        run.anchors()
    assert found == []


def test_an_anchor_is_reported_once_when_a_later_check_fails_part_way() -> None:
    client = StubClient()
    run, found = _run(client, 5, [])
    run.anchored = [3, 4]
    client.answers = {3: _failed(3), 4: NodeUnavailable("the node hung up")}
    with pytest.raises(NodeUnavailable):
        run.anchors()
    client.answers = {3: _failed(3)}
    run.anchors()  # block 3 was checked, and reported, again
    assert [f.height for f in found] == [3]
    assert client.asked == [3, 4, 4]


def test_an_anchor_of_a_block_not_read_yet_is_checked_once_it_is() -> None:
    client = StubClient()
    run, found = _run(client, 2, [])
    run.anchored = [3]
    run.anchors()
    assert client.asked == [] and run.anchored == [3]
    cast(SimpleNamespace, run.auditor).height = 3
    run.anchors()
    assert client.asked == [3] and run.anchored == [] and found == []


def test_a_malformed_bitcoin_url_is_refused_before_the_audit_reads() -> None:
    class Unread:
        def health(self) -> dict[str, Any]:
            raise AssertionError("read the node before checking --bitcoin")

    with pytest.raises(BitcoinError, match="not an http"):
        audit_node(cast(Client, Unread()), bitcoin="ftp://host")


def test_an_anchor_seen_but_not_listed_is_given_a_read_then_is_a_finding() -> None:
    client = StubClient()
    run, found = _run(client, 5, [])
    run.anchored, run.seen_anchors = [3, 4], {3: {"%a": 0}, 4: {"%b": 0}}
    client.listed = {4: ["%b"]}
    run.anchors()
    assert client.asked == [4] and run.anchored == [3] and found == []
    client.listed = {3: ["%a"], 4: ["%b"]}  # it lagged: listed now, and checked
    run.anchors()
    assert client.asked == [4, 3] and run.anchored == [] and found == []

    run.anchored, run.seen_anchors = [2], {2: {"%c": 0}}
    run.anchors()
    run.anchors()
    assert [(f.height, "does not list it" in f.detail) for f in found] == [(2, True)]
    assert run.anchored == [] and 2 not in client.asked


def test_an_anchor_of_a_block_never_served_is_a_finding_at_the_end() -> None:
    client = StubClient()
    run, _ = _run(client, 5, [])
    run.anchored = [9]
    run.anchors()
    (finding,) = run.unserved_anchors()
    assert finding.height == 9 and "never served" in finding.detail


def _behind(height: int) -> BitcoinBehind:
    return BitcoinBehind(f"Bitcoin node http://x:***@127.0.0.1:1 is at height 10, below {height}")


def test_an_anchor_past_the_bitcoin_node_s_tip_does_not_hold_back_the_others() -> None:
    client = StubClient()
    outages: list[BitcoinUnreachable | None] = []
    run, found = _run(client, 5, outages)
    run.anchored = [3, 4]
    # Block 3's anchor attests a Bitcoin height to come; block 4's does not hold.
    client.answers = {3: _behind(10**9), 4: _failed(4)}
    run.anchors()
    # Before, the first read returned at block 3, and every read after it: block 4's
    # anchor was never judged.
    assert [f.height for f in found] == [4]
    assert outages == [client.answers[3]]  # told once, not every read
    run.anchors()
    assert outages == [client.answers[3]] and run.anchored == [3]
    client.answers = {}
    run.anchors()  # the Bitcoin node reached it
    assert run.anchored == [] and [f.height for f in found] == [4]


def test_an_anchor_past_the_tip_is_raised_once_the_others_are_checked_without_a_callback() -> None:
    client = StubClient()
    run, found = _run(client, 5)
    run.anchored = [3, 4]
    client.answers = {3: _behind(10**9), 4: _failed(4)}
    with pytest.raises(BitcoinBehind):
        run.anchors()
    assert client.asked == [3, 4] and [f.height for f in found] == [4]
