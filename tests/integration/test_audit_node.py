"""`chainmail audit` against a real node: clean when honest, loud when not."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from chainmail.client import Client
from chainmail.errors import ProofError
from chainmail.keys import Keypair
from support.server import CHAINMAIL, Server, interrupted, running

pytestmark = pytest.mark.integration


def audit(node: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHAINMAIL, "audit", "--node", node.url, "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def settle_a_trade(node: Server) -> str:
    a, b = Keypair.generate(), Keypair.generate()
    with Client(node.url, a) as alice, Client(node.url, b) as bob:
        tx = alice.open_tx([b.id], deadline=int(time.time() * 1000) + 60_000, subject="42")
        bob.note(tx, {"px": "12.50"})
        alice.finish(tx)
        bob.finish(tx)
        for n in range(20):
            alice.publish({"type": "post", "n": n})
        deadline = time.monotonic() + 30
        while alice.tx(tx).get("block") is None:
            assert time.monotonic() < deadline, "the tx was never sealed"
            time.sleep(0.1)
    return tx


def test_an_honest_node_audits_clean(tmp_path: Path) -> None:
    with running(tmp_path / "node") as node:
        settle_a_trade(node)
        done = audit(node, "--grace", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""
    assert "no findings" in done.stderr and "blocks of @" in done.stderr


def test_a_node_that_seals_nothing_is_caught_censoring(tmp_path: Path) -> None:
    # Its blocks come an hour apart: what it logs stays out of every block.
    with running(tmp_path / "node", extra=("--block-interval", "3600")) as node:
        with Client(node.url, Keypair.generate()) as alice:
            posted = alice.publish({"type": "post", "text": "left out"}).id
        done = audit(node, "--grace", "1")
    assert done.returncode == 1
    findings = [json.loads(line) for line in done.stdout.splitlines()]
    assert [f["kind"] for f in findings] == ["censored"] and findings[0]["id"] == posted
    assert "1 finding(s)" in done.stderr


def test_a_timed_out_tx_audits_clean_once_sealed_and_is_censored_when_never(
    tmp_path: Path,
) -> None:
    def lapse(node: Server) -> str:
        with Client(node.url, Keypair.generate()) as alice:
            deadline = int(time.time() * 1000) + 500
            return alice.open_tx([Keypair.generate().id], deadline=deadline, subject="lapses")

    with running(tmp_path / "honest") as node:
        tx = lapse(node)
        with Client(node.url) as reader:
            waited = time.monotonic() + 30
            while (row := reader.tx(tx)).get("block") is None:
                assert time.monotonic() < waited, "the timed-out tx was never sealed"
                time.sleep(0.1)
        assert row["status"] == "timed_out"
        done = audit(node, "--grace", "1")
    assert done.returncode == 0, done.stdout + done.stderr

    # Blocks an hour apart: neither the tx/open nor the timeout gets into one.
    with running(tmp_path / "censoring", extra=("--block-interval", "3600")) as node:
        tx = lapse(node)
        time.sleep(1.5)
        done = audit(node, "--grace", "1")
    assert done.returncode == 1
    findings = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(f["kind"], f["id"]) for f in findings] == [("censored", tx)] * 2, findings
    assert "passed its deadline unfinished" in findings[1]["detail"]


def test_a_message_changed_in_the_node_s_files_is_found(tmp_path: Path) -> None:
    data = tmp_path / "node"
    with running(data) as node:
        settle_a_trade(node)
    # Someone with the disk rewrites a logged message in place.
    with sqlite3.connect(data / "log.sqlite") as conn:
        pos, body = conn.execute(
            "SELECT pos, body FROM entries WHERE CAST(body AS TEXT) LIKE '%12.50%'"
        ).fetchone()
        conn.execute(
            "UPDATE entries SET body=? WHERE pos=?", (bytes(body).replace(b"12.50", b"99.99"), pos)
        )
    with running(data) as node:
        done = audit(node, "--grace", "2")
    assert done.returncode == 1
    kinds = {json.loads(line)["kind"] for line in done.stdout.splitlines()}
    assert "invalid" in kinds  # its signature no longer holds


def test_a_block_changed_in_the_node_s_files_is_one_finding(tmp_path: Path) -> None:
    data = tmp_path / "node"
    with running(data) as node:
        settle_a_trade(node)
    # The newest block as the API serves it, changed after it was signed: both
    # the auditor's chain check and the node's proofs fail, for one block.
    with sqlite3.connect(data / "store.sqlite") as conn:
        height, body = conn.execute(
            "SELECT height, body FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        changed = bytes(body).replace(b'"timestamp": ', b'"timestamp": 1', 1)
        assert changed != bytes(body)
        conn.execute("UPDATE blocks SET body=? WHERE height=?", (changed, height))
    with running(data, extra=("--block-interval", "3600")) as node:
        done = audit(node, "--grace", "0")
    assert done.returncode == 1, done.stderr
    findings = [json.loads(line) for line in done.stdout.splitlines()]
    about = [f for f in findings if f["kind"] == "block"]
    assert [f["height"] for f in about] == [height], findings
    detail = about[0]["detail"]
    assert detail.startswith(f"block {height}: its message does not verify")
    assert "; its proofs: " in detail


def test_a_followed_audit_sees_new_messages_and_ends_on_ctrl_c(tmp_path: Path) -> None:

    with running(tmp_path / "node") as node:
        follower = subprocess.Popen(
            [CHAINMAIL, "audit", "--node", node.url, "--follow", "--interval", "0.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.0)
            settle_a_trade(node)
            time.sleep(1.5)  # a few rounds of reads after the last block
        finally:
            out, err = interrupted(follower)
    assert follower.returncode == 0, err
    assert out == ""
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("audited ") and summary.endswith("no findings")
    assert int(summary.split()[1]) >= 24  # the trade's 4 messages, 20 posts and blocks


def test_a_followed_audit_outlives_the_node_going_down_for_a_while(tmp_path: Path) -> None:

    from support.server import free_port

    port = free_port()
    with running(tmp_path / "node", port=port) as node:
        settle_a_trade(node)
        follower = subprocess.Popen(
            [CHAINMAIL, "audit", "--node", node.url, "--follow", "--interval", "0.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Down only once the watch has started: a node unreachable at the first
        # read is an error, not an outage (a slow machine took over a second).
        assert follower.stderr is not None
        first = follower.stderr.readline()
        assert "following, every 0.2 s" in first, first
    try:
        time.sleep(1.0)  # down: the watch goes on
        assert follower.poll() is None, follower.communicate(timeout=10)
        with running(tmp_path / "node", port=port) as node:
            settle_a_trade(node)
            time.sleep(1.5)
    finally:
        out, err = interrupted(follower)
    assert follower.returncode == 0, err
    assert out == ""
    assert "trying again every 0.2 s" in err and "the node answers again" in err
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("audited ") and summary.endswith("no findings")


def test_audit_node_from_python(tmp_path: Path) -> None:
    from chainmail.auditing import audit_node

    heard: list[str] = []
    with (
        running(tmp_path / "node", extra=("--block-interval", "3600")) as node,
        Client(node.url, Keypair.generate()) as alice,
    ):
        posted = alice.publish({"type": "post", "text": "left out"}).id
        summary = audit_node(alice, grace=0.5, on_finding=lambda f: heard.append(f.kind))
        node_id = alice.health()["id"]
        with pytest.raises(ValueError, match="grace"):
            audit_node(alice, grace=-1)
        # Pinned to another node: said once, not a finding for every block and message.
        other = Keypair.generate().id
        with pytest.raises(ProofError, match=r"node identity: expected node .* \(pinned\)"):
            audit_node(alice, node_id=other, grace=0.5)
    assert not summary.ok and heard == ["censored"]
    assert summary.findings[0].id == posted and summary.messages >= 1
    assert summary.node_id == node_id


def test_a_mirror_showing_the_same_node_compares_clean(tmp_path: Path) -> None:
    with running(tmp_path / "node") as node:
        settle_a_trade(node)
        # The same node under another name, as a proxy or a counterparty's URL shows it.
        done = audit(node, "--grace", "2", "--mirror", node.url.replace("127.0.0.1", "localhost"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""
    assert "compared with 1 mirror(s): no findings" in done.stderr


def _quiet(url: str, deadline: float, still: float = 1.0) -> int:
    """The node's block count once it has stayed the same for ``still`` seconds."""
    with Client(url) as reader:
        count, since = len(reader.blocks()), time.monotonic()
        while time.monotonic() - since < still:
            assert time.monotonic() < deadline, "the node never went quiet"
            time.sleep(0.1)
            now = len(reader.blocks())
            if now != count:
                count, since = now, time.monotonic()
        return count


def test_a_node_showing_two_histories_is_caught_by_comparing_them(tmp_path: Path) -> None:
    import shutil

    honest, other = tmp_path / "a", tmp_path / "b"
    with running(honest) as node:
        settle_a_trade(node)
        # Stopped once a block covers everything: else each copy builds a block of
        # its own on start, and the two histories part one block earlier.
        _quiet(node.url, time.monotonic() + 30)
    # The same node key on a second copy of its files: from here on it can sign
    # two histories, and shows each to whoever reads that endpoint.
    shutil.copytree(honest, other)
    with running(honest) as a, running(other) as b:
        deadline = time.monotonic() + 30
        # Each copy quiet first (a block it builds on start is built): a post that
        # lands while a block is being built makes one more block on that copy
        # only, and the two logs would end at different sizes.
        before = {url: _quiet(url, deadline) for url in (a.url, b.url)}
        with Client(a.url, Keypair.generate()) as alice:
            alice.publish({"type": "post", "text": "pay 0042-7"})
        with Client(b.url, Keypair.generate()) as eve:
            eve.publish({"type": "post", "text": "pay 6666-6"})
        for url in (a.url, b.url):
            with Client(url) as reader:
                while len(reader.blocks()) < max(2, before[url] + 1):
                    assert time.monotonic() < deadline, "no block after the post"
                    time.sleep(0.1)
        with Client(a.url) as one, Client(b.url) as two:
            assert one.health()["id"] == two.health()["id"]
        done = audit(a, "--grace", "2", "--mirror", b.url)
        # A followed audit compares every round: what it proved once, it says once.
        from chainmail.auditing import _bound, _Compare, _Mirror

        with Client(a.url) as one, Client(b.url) as two:
            health = one.health()
            compare = _Compare(one, [_Mirror(two)], _bound(health, health["id"]))
            first, again = compare.round(), compare.round()
        assert {f.kind for f in first} == {"split_view"} and len(first) == 2
        assert again == []
    assert done.returncode == 1, done.stderr
    findings = [json.loads(line) for line in done.stdout.splitlines()]
    split = [f for f in findings if f["kind"] == "split_view"]
    assert {("pipeline" in f, "height" in f) for f in split} == {(True, False), (False, True)}
    (log_split,) = [f for f in split if "pipeline" in f]
    assert b.url in log_split["detail"] and a.url in log_split["detail"]
    assert "the same size with different roots" in log_split["detail"]
    # Nothing else: each endpoint's history holds together on its own; only
    # comparing the two shows that the node signed both.
    assert [f["kind"] for f in findings if f["kind"] != "split_view"] == []


def test_a_mirror_that_cannot_be_read_or_is_another_node_is_a_finding(tmp_path: Path) -> None:
    from support.server import free_port

    with running(tmp_path / "a") as node, running(tmp_path / "b") as stranger:
        gone = f"http://127.0.0.1:{free_port()}"
        done = audit(node, "--grace", "0", "--mirror", gone, "--mirror", stranger.url)
    assert done.returncode == 1
    findings = [json.loads(line) for line in done.stdout.splitlines()]
    assert [f["kind"] for f in findings] == ["mirror", "mirror"]
    assert findings[0]["detail"].startswith(f"{gone}: ")
    assert f"{stranger.url} serves node @" in findings[1]["detail"]
    assert "compared with 2 mirror(s): 2 finding(s)" in done.stderr
