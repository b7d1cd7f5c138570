"""Bitcoin anchors against real things: a bcoin regtest node, a real `chainmail serve`,
`chainmail verify block --bitcoin`, and the OpenTimestamps client's `ots verify`."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chainmail import anchors, bitcoin
from chainmail.bitcoinrpc import BcoinWallet, BitcoinError
from chainmail.client import Client
from chainmail.keys import Keypair
from chainmail.verify import path_id
from support.bcoin import API_KEY, Bcoin, regtest
from support.fakerpc import FakeRPC
from support.lying import lying
from support.server import CHAINMAIL, Server, free_port, interrupted, running

pytestmark = pytest.mark.integration

OTS = str(Path(CHAINMAIL).parent / "ots")


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHAINMAIL_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([CHAINMAIL, *args], env=env, capture_output=True, text=True, timeout=120)


def _anchor_health(url: str) -> dict[str, Any]:
    health: dict[str, Any] = httpx.get(f"{url}/healthz", timeout=10).json()["anchor"]
    return health


def _until(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return got


def _settle_a_trade(url: str) -> int:
    """A tx opened and finished by both parties; the height of its block."""
    a, b = Keypair.generate(), Keypair.generate()
    with Client(url, a) as alice, Client(url, b) as bob:
        tx = alice.open_tx([b.id], deadline=int(time.time() * 1000) + 60_000)
        alice.finish(tx)
        bob.finish(tx)
        return int(_until("the tx's block", lambda: alice.tx(tx).get("block")))


def _mine_until_anchored(btc: Bcoin, url: str, height: int) -> dict[str, Any]:
    """Mine a Bitcoin block whenever the node has an anchor pending, until block
    ``height`` (or a later one) is anchored; the block's ``anchored``."""

    def probe() -> dict[str, Any] | None:
        if _anchor_health(url)["pending"] is not None:
            btc.mine(1)
        anchored: dict[str, Any] | None = httpx.get(f"{url}/v1/blocks/{height}").json()["anchored"]
        return anchored

    got: dict[str, Any] = _until(f"an anchor of block {height}", probe)
    return got


def _serve_args(btc: Bcoin, interval: float = 0.3) -> tuple[str, ...]:
    return (
        "--anchor-bitcoin",
        btc.node_url,
        "--anchor-wallet",
        btc.wallet_url,
        "--anchor-interval",
        str(interval),
        "--anchor-confirmations",  # regtest: each mine() confirms at once
        "1",
    )


def test_a_block_is_anchored_and_verify_and_ots_verify_accept_it(tmp_path: Path) -> None:
    with regtest(tmp_path / "bitcoin") as btc:
        btc.fund()
        with running(tmp_path / "node", extra=_serve_args(btc)) as node:
            health = _anchor_health(node.url)
            assert health["chain"] in (None, "bitcoin-regtest")
            assert health["confirmations"] == 1
            height = _settle_a_trade(node.url)
            anchored = _mine_until_anchored(btc, node.url, height)
            assert anchored["height"] >= height
            (anchor,) = anchored["anchors"]
            assert anchor["chain"] == "bitcoin-regtest"
            assert _anchor_health(node.url)["anchored"] == anchored["height"]
            metrics = httpx.get(f"{node.url}/metrics").text
            assert f"chainmail_anchored_height {anchored['height']}" in metrics

            # The anchor message is the node's own, in its feed, with the fields of DESIGN §3.
            with Client(node.url, Keypair.generate()) as reader:
                got = reader.message(anchor["id"])["message"]
                assert got["author"] == httpx.get(f"{node.url}/healthz").json()["id"]
                assert got["content"] == {
                    "type": "anchor",
                    **{k: anchor[k] for k in ("block", "height", "chain", "txid", "ots")},
                }
                # The txid is in the Bitcoin block the proof attests, and carries the block id.
                proof = reader.get_blob(anchor["ots"])
            (attested,) = anchors.check(anchor, anchor["block"], proof)
            header = btc.node.header_at(attested.bitcoin_height)
            anchors.check_header(attested, header)
            raw = btc.node.block(btc.node.block_hash(attested.bitcoin_height))
            block = bitcoin.parse_block(raw)
            (tx,) = [t for t in block.transactions if t.txid == anchor["txid"]]
            assert any(
                bitcoin.op_return_data(o.script) == anchors.block_digest(anchor["block"])
                for o in tx.outputs
            )

            home = tmp_path / "home"
            out = tmp_path / "ots"
            checked = _cli(
                "verify",
                "block",
                str(height),
                "--node",
                node.url,
                "--bitcoin",
                btc.node_url,
                "--ots-out",
                str(out),
                "--json",
                home=home,
            )
            assert checked.returncode == 0, checked.stdout + checked.stderr
            report = json.loads(checked.stdout)
            assert report["ok"]
            names = [c["check"] for c in report["checks"]]
            assert f"block {anchored['height']} anchor" in names
            detail = next(c["detail"] for c in report["checks"] if c["check"].endswith("anchor"))
            assert f"in Bitcoin block {attested.bitcoin_height}'s header" in detail

            # Without a Bitcoin node of one's own: the root is shown, not claimed checked.
            unchecked = _cli("verify", "block", str(height), "--node", node.url, home=home)
            assert unchecked.returncode == 0, unchecked.stderr
            assert "not checked" in unchecked.stdout

            # The OpenTimestamps reference client accepts the proof against the same chain.
            ots_file = out / f"block-{anchored['height']}.json.ots"
            verified = subprocess.run(
                [
                    OTS,
                    "--no-cache",
                    "--btc-regtest",
                    "--bitcoin-node",
                    btc.node_url + "/",
                    "verify",
                    str(ots_file),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert verified.returncode == 0, verified.stdout + verified.stderr
            assert f"Bitcoin block {attested.bitcoin_height} attests" in verified.stderr

            # ... and refuses it for any other file.
            other = out / "other.json"
            other.write_bytes(ots_file.with_suffix("").read_bytes() + b" ")
            refused = subprocess.run(
                [
                    OTS,
                    "--no-cache",
                    "--btc-regtest",
                    "--bitcoin-node",
                    btc.node_url + "/",
                    "verify",
                    "-f",
                    str(other),
                    str(ots_file),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert refused.returncode != 0

            # An audit checks each anchor too (against this Bitcoin node's headers) ...
            audited = _cli(
                "audit",
                "--node",
                node.url,
                "--bitcoin",
                btc.node_url,
                "--grace",
                "2",
                "--json",
                home=home,
            )
            assert audited.returncode == 0, audited.stdout + audited.stderr

            # ... and a node that serves another proof for the anchor is caught by both.
            def flipped(status: int, ctype: str, body: bytes) -> tuple[int, str, bytes]:
                return status, ctype, body[:-1] + bytes([body[-1] ^ 1])

            with lying(node.url, {f"/v1/blobs/{path_id(anchor['ots'])}": flipped}) as url:
                lied = _cli("audit", "--node", url, "--grace", "2", "--json", home=home)
                assert lied.returncode == 1, lied.stdout + lied.stderr
                (finding,) = [json.loads(line) for line in lied.stdout.splitlines()]
                assert (
                    finding["kind"] == "block" and "its anchor does not hold" in finding["detail"]
                )
                assert finding["height"] == anchored["height"]
                tricked = _cli("verify", "block", str(height), "--node", url, home=home)
                assert tricked.returncode == 1 and "ots id" in tricked.stderr

            # A node that answers the export's second look-up with another proof: nothing
            # is written that was not checked.
            asked: list[int] = []

            def second_time(status: int, ctype: str, body: bytes) -> tuple[int, str, bytes]:
                asked.append(status)
                return (status, ctype, body) if len(asked) == 1 else flipped(status, ctype, body)

            swapped = tmp_path / "swapped"
            with lying(node.url, {f"/v1/blobs/{path_id(anchor['ots'])}": second_time}) as url:
                late = _cli(
                    "verify",
                    "block",
                    str(height),
                    "--node",
                    url,
                    "--ots-out",
                    str(swapped),
                    home=home,
                )
            assert late.returncode == 1, late.stdout + late.stderr
            assert "invalid_proof: --ots-out" in late.stderr
            assert len(late.stderr.strip().splitlines()) == 1
            assert not list(swapped.glob("*.ots"))

            # Your own Bitcoin node down is not the anchor failing: told as unavailable.
            down = f"http://x:k@127.0.0.1:{free_port()}"
            unreachable = _cli(
                "verify", "block", str(height), "--node", node.url, "--bitcoin", down, home=home
            )
            assert unreachable.returncode != 0
            assert "unavailable" in unreachable.stderr and "x:k@" not in unreachable.stderr
            assert "✗" not in unreachable.stdout
            # ... and so is one that has not synced up to the anchor's block yet.
            with regtest(tmp_path / "syncing") as syncing:
                behind = _cli(
                    "verify",
                    "block",
                    str(height),
                    "--node",
                    node.url,
                    "--bitcoin",
                    syncing.node_url,
                    home=home,
                )
            assert behind.returncode != 0 and "let it sync" in behind.stderr, behind.stderr
            assert "✗" not in behind.stdout


def test_an_anchor_left_unmined_is_sent_again_at_a_higher_fee_and_one_is_proven(
    tmp_path: Path,
) -> None:
    """Nothing mined for a while (as when the fee is too low for the traffic): the
    node sends the same block again at twice the rate, up to four transactions;
    once mined, one of them is proven and verifies against the Bitcoin node."""
    with regtest(tmp_path / "bitcoin") as btc:
        btc.fund()
        extra = (*_serve_args(btc), "--anchor-stuck-after", "0.5")
        with running(tmp_path / "node", extra=extra) as node:
            height = _settle_a_trade(node.url)
            pending = _until(
                "four anchor txs",
                lambda: (p := _anchor_health(node.url)["pending"]) and len(p["earlier"]) == 3 and p,
            )
            txids = [*pending["earlier"], pending["txid"]]
            assert len(set(txids)) == 4
            rates = [httpx.get(_wallet_tx_url(btc, t), timeout=10).json()["rate"] for t in txids]
            # Each asked for twice what the last paid (the wallet rounds its fee up).
            assert all(b >= 2 * a for a, b in itertools.pairwise(rates)), rates
            assert pending["rate"] == rates[-1]
            time.sleep(1.5)  # past the threshold again: no fifth tx
            assert _anchor_health(node.url)["pending"]["txid"] == pending["txid"]

            anchored = _mine_until_anchored(btc, node.url, pending["height"])
            (anchor,) = anchored["anchors"]
            assert anchor["txid"] in txids and anchored["height"] >= height
            with Client(node.url, Keypair.generate()) as reader:
                report = reader.verify_block(anchored["height"], bitcoin=btc.node_url)
            assert report.ok


_BOTH = ("--anchor-bitcoin", "http://h:1", "--anchor-wallet", "http://h:1")


def _wallet_tx_url(btc: Bcoin, txid: str) -> str:
    return f"{btc.wallet_url}/tx/{txid}"


def test_a_node_killed_with_an_anchor_pending_posts_it_once_after_restart(tmp_path: Path) -> None:
    with regtest(tmp_path / "bitcoin") as btc:
        btc.fund()
        data = tmp_path / "node"
        server = Server(data, extra=_serve_args(btc, interval=0.2))
        server.start()
        try:
            height = _settle_a_trade(server.url)
            pending = _until("an anchor tx", lambda: _anchor_health(server.url)["pending"])
            server.kill()
            server = Server(data, port=server.port, extra=_serve_args(btc, interval=0.2))
            server.start()
            # The same tx, not a second one: anchor.json had it before /healthz showed it.
            assert _anchor_health(server.url)["pending"] == pending
            btc.mine(1)
            anchored = _mine_until_anchored(btc, server.url, pending["height"])
            assert anchored["height"] == pending["height"] >= 1
            assert [a["txid"] for a in anchored["anchors"]] == [pending["txid"]]
            assert height >= 1
        finally:
            server.stop()


def test_an_unreachable_bitcoin_node_leaves_the_node_working(tmp_path: Path) -> None:
    dead = f"http://x:key@127.0.0.1:{free_port()}"
    extra = ("--anchor-bitcoin", dead, "--anchor-wallet", dead + "/wallet/primary")
    with running(tmp_path / "node", extra=(*extra, "--anchor-interval", "0.1")) as node:
        height = _settle_a_trade(node.url)
        assert height >= 1
        health = _anchor_health(node.url)
        assert health["pending"] is None and health["anchored"] is None
        assert httpx.get(f"{node.url}/v1/blocks/{height}").json()["anchored"] is None
        log = node.log_path.read_text()
        assert "anchorer:" in log and "key@" not in log  # the failure is told, the key is not


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--anchor-bitcoin", "http://127.0.0.1:1"), "give both or neither"),
        (("--anchor-wallet", "http://127.0.0.1:1"), "give both or neither"),
        (("--anchor-bitcoin", "ftp://h", "--anchor-wallet", "http://h:1"), "not an http(s) URL"),
        (("--anchor-bitcoin", "http://h:x", "--anchor-wallet", "http://h:1"), "bad port"),
        (
            ("--anchor-bitcoin", "http://h:1", "--anchor-wallet", "http://\u2603\u2603.invalid"),
            "--anchor-wallet: not a usable URL",
        ),
        (
            ("--anchor-bitcoin", "http://x:secret@[::1", "--anchor-wallet", "http://h:1"),
            "Invalid IPv6 URL: http://***@[::1",
        ),
        (
            (
                "--anchor-bitcoin",
                "http://h:1",
                "--anchor-wallet",
                "http://h:1",
                "--anchor-interval",
                "0",
            ),
            "--anchor-interval",
        ),
        (
            (
                "--anchor-bitcoin",
                "http://h:1",
                "--anchor-wallet",
                "http://h:1",
                "--anchor-interval",
                "inf",
            ),
            "--anchor-interval: expected a positive number of seconds, got inf",
        ),
        (
            (
                "--anchor-bitcoin",
                "http://h:1",
                "--anchor-wallet",
                "http://h:1",
                "--anchor-confirmations",
                "0",
            ),
            "--anchor-confirmations",
        ),
        (
            ("--anchor-max-fee-rate", "50000"),
            "--anchor-stuck-after and --anchor-max-fee-rate need --anchor-bitcoin",
        ),
        (
            (*_BOTH, "--anchor-stuck-after", "0"),
            "--anchor-stuck-after: expected a positive number of seconds, got 0",
        ),
        (
            (*_BOTH, "--anchor-max-fee-rate", "0"),
            "--anchor-max-fee-rate: expected 1 or more sat/kvB, got 0",
        ),
    ],
)
def test_bad_anchor_options_are_refused_in_one_line(
    tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    got = _cli(
        "serve",
        "--data",
        str(tmp_path / "node"),
        "--port",
        str(free_port()),
        *args,
        home=tmp_path / "home",
    )
    assert got.returncode != 0
    assert said in got.stderr and len(got.stderr.strip().splitlines()) == 1, got.stderr
    assert not (tmp_path / "node").exists()


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://x:secret@h:port", "not a valid URL"),
        ("http://x:secret@[::1", "not a valid URL"),
        ("ftp://x:secret@h:1", "not an http(s) URL"),
    ],
)
def test_verify_block_refuses_a_malformed_bitcoin_url_in_one_line(
    tmp_path: Path, url: str, said: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    got = _cli("verify", "block", "1", "--node", dead, "--bitcoin", url, home=tmp_path / "home")
    assert got.returncode == 1, got.stderr
    assert said in got.stderr and len(got.stderr.strip().splitlines()) == 1, got.stderr
    assert "secret" not in got.stderr


def test_a_wallet_that_is_not_there_is_an_error_not_a_forgotten_tx(tmp_path: Path) -> None:
    unknown = "ab" * 32
    with regtest(tmp_path / "bitcoin") as btc:
        assert btc.wallet.status(unknown) is None  # the wallet is there; the tx is not
        mistyped = BcoinWallet(btc.wallet_url.replace("/wallet/primary", "/wallet/primray"))
        try:
            # Taken for "the wallet forgot it", this dropped the pending anchor tx for good.
            with pytest.raises(BitcoinError, match="no such wallet") as raised:
                mistyped.status(unknown)
            assert API_KEY not in raised.value.diagnostics()
        finally:
            mistyped.close()


@pytest.fixture(scope="module")
def anchored_node(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Bcoin, Server, int, dict[str, Any]]]:
    """A bcoin regtest node and a `chainmail serve` anchoring in it, with one block
    anchored: (bitcoin, node, that block's height, its ``anchored``)."""
    tmp = tmp_path_factory.mktemp("anchored")
    with regtest(tmp / "bitcoin") as btc:
        btc.fund()
        with running(tmp / "node", extra=_serve_args(btc)) as node:
            height = _settle_a_trade(node.url)
            yield btc, node, height, _mine_until_anchored(btc, node.url, height)


def test_verify_refuses_an_anchor_on_another_chain_than_your_bitcoin_node(
    anchored_node: tuple[Bcoin, Server, int, dict[str, Any]], tmp_path: Path
) -> None:
    btc, node, height, anchored = anchored_node

    def mainnet(status: int, ctype: str, body: bytes) -> tuple[int, str, bytes]:
        answer = json.loads(body)
        if isinstance(answer.get("result"), dict) and "chain" in answer["result"]:
            answer["result"]["chain"] = "main"  # getblockchaininfo: the headers' node's chain
        return status, ctype, json.dumps(answer).encode()

    upstream = btc.node_url.replace(f"x:{API_KEY}@", "")
    with lying(upstream, {"/": mainnet}) as proxy:
        own = proxy.replace("http://", f"http://x:{API_KEY}@")
        got = _cli(
            "verify", "block", str(height), "--node", node.url, "--bitcoin", own, home=tmp_path
        )
    # Accepted before, as "on bitcoin-regtest", against a node that is on bitcoin.
    assert got.returncode == 1, got.stdout + got.stderr
    said = (
        f"✗ block {anchored['height']} anchor: the anchor is on bitcoin-regtest, but your"
        " Bitcoin node is on bitcoin: its headers cannot check it"
    )
    assert said in got.stdout, got.stdout


def _warming_up(method: str) -> tuple[int, dict[str, Any]]:
    """A bitcoind starting up: every call answers HTTP 500 with JSON-RPC error -28 (a real
    node cannot be held in that state for a test)."""
    return 500, {"result": None, "error": {"code": -28, "message": "Loading block index…"}}


def test_your_bitcoin_node_warming_up_fails_no_anchor_and_accuses_no_node(
    anchored_node: tuple[Bcoin, Server, int, dict[str, Any]], tmp_path: Path
) -> None:
    _, node, height, _ = anchored_node
    warm = FakeRPC(_warming_up)
    try:
        got = _cli(
            "verify", "block", str(height), "--node", node.url, "--bitcoin", warm.url, home=tmp_path
        )
        # invalid_proof with a ✗ before: the anchor was failed for the node's start-up.
        assert got.returncode == 1 and "✗" not in got.stdout, got.stdout + got.stderr
        assert "unavailable:" in got.stderr and "Loading block index" in got.stderr
        assert "x:k@" not in got.stderr

        env = {**os.environ, "CHAINMAIL_HOME": str(tmp_path), "COLUMNS": "200"}
        follower = subprocess.Popen(
            [
                *(CHAINMAIL, "audit", "--node", node.url, "--bitcoin", warm.url, "--json"),
                *("--follow", "--interval", "0.2"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(4)
        out, err = interrupted(follower)
    finally:
        warm.close()
    # A `block` finding before ("its anchor does not hold: … Loading block index…").
    assert follower.returncode == 0, out + err
    assert out.strip() == "", out
    assert "Loading block index" in err and "anchors are checked when it answers" in err


def test_ots_out_writes_nothing_verify_did_not_accept(
    anchored_node: tuple[Bcoin, Server, int, dict[str, Any]], tmp_path: Path
) -> None:
    """A node that answers verify honestly, then names an earlier block's anchor when
    --ots-out asks again: that anchor fixes nothing of the block verified."""
    _, node, _, anchored = anchored_node
    later = _settle_a_trade(node.url)  # not mined: left unanchored
    assert later > anchored["height"]
    assert httpx.get(f"{node.url}/v1/blocks/{later}").json()["anchored"] is None
    asked: list[int] = []

    def earlier_anchor(status: int, ctype: str, body: bytes) -> tuple[int, str, bytes]:
        asked.append(status)
        if len(asked) == 1:
            return status, ctype, body
        return status, ctype, json.dumps({**json.loads(body), "anchored": anchored}).encode()

    out = tmp_path / "ots"
    with lying(node.url, {f"/v1/blocks/{later}": earlier_anchor}) as url:
        got = _cli(
            "verify", "block", str(later), "--node", url, "--ots-out", str(out), home=tmp_path
        )
    # rc 0 before, with block-<anchored>.json(.ots) written and `ots verify` suggested.
    assert len(asked) >= 2
    assert got.returncode == 1, got.stdout + got.stderr
    assert f"✓ block {later} anchor: not anchored in Bitcoin yet" in got.stdout
    assert "invalid_proof: --ots-out" in got.stderr
    assert len(got.stderr.strip().splitlines()) == 1, got.stderr
    assert not out.exists() or not list(out.iterdir())
