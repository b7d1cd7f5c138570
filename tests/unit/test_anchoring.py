"""The node's ``Anchorer`` round by round, against a fake Bitcoin node, wallet and store
(the real ones: ``tests/integration/test_anchors_node.py``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, cast

import pytest
from bitcoin.core import b2lx  # type: ignore[import-untyped]

from chainmail import anchoring, anchors, bitcoin
from chainmail.anchoring import AnchorConfig, Anchorer
from chainmail.bitcoinrpc import BcoinWallet, BitcoinNode, Sent, TxStatus
from chainmail.errors import ProofError
from chainmail.store import Store
from support.btcbuild import anchor_tx, block_of, filler, placed

DIGEST = hashlib.sha256(b"chainmail block 3").digest()
BLOCK_ID = "%" + base64.b64encode(DIGEST).decode() + ".sha256"
BITCOIN_HEIGHT = 120
INTERVAL = 60.0


class Block:
    def __init__(self, height: int, id_: str) -> None:
        self.height = height
        self.id = id_


class FakeStore:
    def __init__(self) -> None:
        self.latest: Block | None = Block(3, BLOCK_ID)
        self.blobs: dict[str, bytes] = {}
        self.posted: list[dict[str, Any]] = []
        #: Posted anchors not in the store yet (their projection behind the log).
        self.lagging = False

    def latest_block(self) -> Block | None:
        return self.latest

    def latest_anchored(self) -> int | None:
        if self.lagging:
            return None
        return max((int(a["height"]) for a in self.posted), default=None)

    def anchors(self, height: int) -> list[dict[str, Any]]:
        return [a for a in self.posted if a["height"] == height]

    def put_blob(self, blob_id: str, data: bytes, *, stored: int | None = None) -> None:
        assert stored is not None, "the anchorer stores its proofs at its own clock's time"
        self.blobs[blob_id] = data


class FakeNode(BitcoinNode):
    """A Bitcoin node whose best chain holds ``raw`` at BITCOIN_HEIGHT."""

    def __init__(self, raw: bytes, block_hash: str) -> None:
        self.url = "http://fake-node"
        self.raw = raw
        self.hash = block_hash
        self.best = block_hash  # the best chain's block at BITCOIN_HEIGHT
        self.info: object = {"chain": "regtest"}

    def close(self) -> None:
        pass

    def call(self, method: str, *params: Any) -> Any:
        if method == "getblockchaininfo":
            return self.info
        if method == "getblockheader":
            return {"height": BITCOIN_HEIGHT}
        if method == "getblockhash":
            return self.best
        raise AssertionError(method)

    def block(self, block_hash: str) -> bytes:
        assert block_hash == self.hash
        return self.raw


class FakeWallet(BcoinWallet):
    def __init__(self, txid: str, block_hash: str) -> None:
        self.url = "http://fake-wallet"
        self.txid = txid
        self.block_hash = block_hash
        self.sent: list[bytes] = []
        self.rates: list[int | None] = []
        #: The txids sends answer, in turn, before ``txid``; the fee rate they pay by default.
        self.answers: list[str] = []
        self.known: set[str] = set()
        self.rate = 1_000
        self.mined = False

    def close(self) -> None:
        pass

    def send_data(self, data: bytes, *, rate: int | None = None) -> Sent:
        self.sent.append(data)
        self.rates.append(rate)
        txid = self.answers.pop(0) if self.answers else self.txid
        self.known.add(txid)
        return Sent(txid, rate if rate is not None else (self.rate or None))

    def status(self, txid: str) -> TxStatus | None:
        """``txid`` (the one the fake block holds) mined once ``mined``; every other
        tx sent, unmined; a tx never sent, unknown."""
        if txid == self.txid and self.mined:
            return TxStatus(self.block_hash, 1)
        return TxStatus(None, 0) if txid in self.known | {self.txid} else None


class Rig:
    def __init__(self, data: Path) -> None:
        tx = anchor_tx(DIGEST)
        block = block_of(placed(4, 2, tx))
        self.txid = b2lx(tx.GetTxid())
        block_hash = b2lx(block.GetHash())
        self.store = FakeStore()
        self.now = 1_000_000
        self.anchorer = Anchorer(
            AnchorConfig(
                "http://x:k@127.0.0.1:1",
                "http://x:k@127.0.0.1:1",
                interval=INTERVAL,
                confirmations=1,
            ),
            data,
            cast(Store, self.store),
            self._post,
            lambda: self.now,
        )
        self.anchorer.node.close()
        self.anchorer.wallet.close()
        self.node = FakeNode(bytes(block.serialize()), block_hash)
        self.wallet = FakeWallet(self.txid, block_hash)
        self.anchorer.node = self.node
        self.anchorer.wallet = self.wallet

    async def _post(self, content: dict[str, Any]) -> object:
        self.store.posted.append(content)
        return content

    def step(self) -> None:
        asyncio.run(self.anchorer.step())


def test_a_round_sends_then_posts_the_anchor(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.step()
    assert rig.wallet.sent == [DIGEST]
    assert json.loads((tmp_path / anchoring.STATE_FILE).read_text())["pending"]["txid"] == rig.txid
    rig.wallet.mined = True
    rig.step()
    (posted,) = rig.store.posted
    assert posted["txid"] == rig.txid and posted["chain"] == "bitcoin-regtest"
    assert anchors.check(posted, BLOCK_ID, rig.store.blobs[posted["ots"]])
    assert rig.anchorer.pending is None


@pytest.mark.parametrize("answer", [None, [], {"chain": None}, "regtest"])
def test_an_odd_bitcoin_answer_is_logged_and_the_anchorer_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, answer: object
) -> None:
    rig = Rig(tmp_path)
    rig.node.info = answer
    rig.step()  # raised (TypeError, KeyError), and the anchorer's task died with it
    assert "getblockchaininfo: unexpected answer" in caplog.text
    rig.node.info = {"chain": "regtest"}
    rig.step()
    assert rig.wallet.sent == [DIGEST]


def test_a_state_file_that_cannot_be_written_is_logged_and_no_second_tx_is_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig(tmp_path)

    def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(anchoring, "_save", full)
    with caplog.at_level(logging.ERROR):
        rig.step()  # raised OSError: the task died, with the tx sent and recorded nowhere
        rig.now += int(INTERVAL * 1000) * 2
        rig.step()
    assert f"tx {rig.txid} (block 3) sent" in caplog.text and "No space left" in caplog.text
    assert rig.wallet.sent == [DIGEST]  # not one more a round
    assert rig.anchorer.pending is not None and rig.anchorer.pending.txid == rig.txid
    rig.wallet.mined = True
    rig.step()
    assert [a["txid"] for a in rig.store.posted] == [rig.txid]


@pytest.mark.parametrize("text", ["null", "[]", '"x"'])
def test_a_state_file_that_is_not_an_object_starts_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    (tmp_path / anchoring.STATE_FILE).write_text(text)
    rig = Rig(tmp_path)  # raised AttributeError: the node did not start
    assert rig.anchorer.pending is None and "not a JSON object" in caplog.text


def test_an_unexpected_error_is_logged_once_and_the_anchorer_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    healthy = rig.store.latest_block

    def locked() -> Block | None:
        raise sqlite3.OperationalError("database is locked")

    rig.store.latest_block = locked  # type: ignore[method-assign]
    rig.step()
    rig.step()
    assert caplog.text.count("unexpected OperationalError: database is locked") == 1
    rig.store.latest_block = healthy  # type: ignore[method-assign]
    rig.step()
    assert rig.wallet.sent == [DIGEST]


def test_no_anchor_is_posted_of_a_bitcoin_block_off_the_best_chain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    rig.step()
    rig.wallet.mined = True
    rig.node.best = "00" * 32  # a reorg the wallet has not seen yet
    rig.step()
    rig.step()
    assert rig.store.posted == [] and rig.anchorer.pending is not None
    assert caplog.text.count(f"which is not the node's at height {BITCOIN_HEIGHT}") == 1
    rig.node.best = rig.node.hash  # back on the best chain (or the wallet caught up)
    rig.step()
    assert [a["txid"] for a in rig.store.posted] == [rig.txid]


def test_a_stop_while_the_wallet_sends_still_records_the_tx(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    sending, answer = threading.Event(), threading.Event()
    send = rig.wallet.send_data

    def slow(data: bytes, *, rate: int | None = None) -> Sent:
        sending.set()
        answer.wait(10)
        return send(data, rate=rate)

    rig.wallet.send_data = slow  # type: ignore[method-assign]
    state = tmp_path / anchoring.STATE_FILE

    async def stop_while_sending() -> None:
        task = asyncio.create_task(rig.anchorer.run())
        await asyncio.to_thread(sending.wait, 10)
        task.cancel()  # as Node.stop does
        with contextlib.suppress(asyncio.CancelledError):
            await task
        answer.set()  # the wallet answers after the task is gone
        for _ in range(100):
            if state.exists():
                break
            await asyncio.sleep(0.05)
        assert state.exists(), "the wallet sent a tx that is recorded nowhere"
        await rig.anchorer.aclose()

    asyncio.run(stop_while_sending())
    assert rig.wallet.sent == [DIGEST]
    # The tx the wallet sent is recorded, so a restart settles it rather than paying again.
    assert json.loads(state.read_text())["pending"]["txid"] == rig.txid
    assert Rig(tmp_path).anchorer.pending == anchors.Pending(3, BLOCK_ID, rig.txid, rig.now, 1_000)


STUCK_MS = int(anchors.stuck_after(INTERVAL) * 1000)


def test_a_tx_left_unmined_is_sent_again_at_twice_the_rate_and_the_one_mined_is_proven(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    low = "11" * 32
    rig.wallet.answers = [low]
    rig.step()
    assert rig.anchorer.pending == anchors.Pending(3, BLOCK_ID, low, rig.now, 1_000)
    rig.now += STUCK_MS
    rig.step()
    assert rig.wallet.sent == [DIGEST]  # not past the threshold yet
    rig.now += 1
    rig.step()
    # The same block again, at twice the fee; the first tx is still watched.
    assert rig.wallet.sent == [DIGEST, DIGEST] and rig.wallet.rates == [None, 2_000]
    pending = rig.anchorer.pending
    assert pending is not None
    assert (pending.txid, pending.rate, pending.earlier) == (rig.txid, 2_000, (low,))
    assert "sent again at 2000" in caplog.text
    # Recorded, so a restart watches both.
    assert Rig(tmp_path).anchorer.pending == pending
    rig.wallet.mined = True
    rig.step()
    (posted,) = rig.store.posted
    assert posted["txid"] == rig.txid and posted["height"] == 3
    assert rig.anchorer.pending is None


def test_an_earlier_tx_mined_first_is_the_one_proven(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.wallet.rate = 700
    rig.step()  # rig.txid, the one the block holds, at 700 sat/kvB
    rig.wallet.answers = ["22" * 32]
    rig.now += STUCK_MS + 1
    rig.step()
    pending = rig.anchorer.pending
    assert pending is not None and pending.txid == "22" * 32 and pending.earlier == (rig.txid,)
    assert rig.wallet.rates == [None, 1_400]
    rig.wallet.mined = True
    rig.step()
    assert [p["txid"] for p in rig.store.posted] == [rig.txid]


def test_re_sends_stop_at_the_cap_and_the_last_tx_is_waited_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    rig.anchorer.config = dataclasses.replace(rig.anchorer.config, max_rate=5_000)
    # The first (the one the fake block holds), then three more.
    rig.wallet.answers = [rig.txid, *(f"{i}{i}" * 32 for i in range(2, 9))]
    for _ in range(6):
        rig.step()
        rig.now += STUCK_MS + 1
    # 1,000 → 2,000 → 4,000 → 5,000 (the cap): four txs, anchors.MAX_SENDS.
    assert rig.wallet.rates == [None, 2_000, 4_000, 5_000]
    assert caplog.text.count("no higher fee is allowed") == 1
    pending = rig.anchorer.pending
    assert pending is not None and len(pending.txids) == anchors.MAX_SENDS
    assert pending.earlier[0] == rig.txid
    rig.wallet.mined = True  # the first, cheapest one, mined after all
    rig.step()
    assert [p["txid"] for p in rig.store.posted] == [rig.txid]


def test_an_unknown_fee_rate_is_never_guessed_at(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A record from before re-sends (no rate) waits, as it did, and says so once."""
    rig = Rig(tmp_path)
    rig.wallet.rate = 0
    rig.step()
    assert rig.anchorer.pending is not None and rig.anchorer.pending.rate is None
    rig.now += STUCK_MS + 1
    rig.step()
    rig.step()
    assert caplog.text.count("the wallet did not say") == 1 and rig.txid in caplog.text
    assert rig.wallet.sent == [DIGEST]  # waited for, never sent again


def test_a_mined_tx_waiting_for_more_confirmations_is_not_told_to_bump_its_fee(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    rig.anchorer.config = dataclasses.replace(rig.anchorer.config, confirmations=6)
    rig.step()
    # Mined, 3 of 6 confirmations after an hour and more: Bitcoin's pace, not a low fee.
    rig.wallet.status = lambda txid: TxStatus(rig.wallet.block_hash, 3)  # type: ignore[method-assign]
    rig.now += STUCK_MS + 1
    rig.step()
    assert "sent again" not in caplog.text and rig.wallet.sent == [DIGEST]
    assert rig.store.posted == [] and rig.anchorer.pending is not None


def test_a_block_just_anchored_is_not_anchored_again_while_the_store_lags(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.store.lagging = True
    rig.step()
    rig.wallet.mined = True
    rig.step()
    assert len(rig.store.posted) == 1
    rig.now += int(INTERVAL * 1000) + 1
    rig.step()
    assert rig.wallet.sent == [DIGEST]  # the same latest block: no second tx


def _unprovable(*_: object) -> bytes:
    raise ProofError("the proof would pass 4,096 bytes")


def test_an_unprovable_tx_is_dropped_and_the_block_sent_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    rig.step()
    rig.wallet.mined = True
    monkeypatch.setattr(anchors, "prove", _unprovable)
    rig.step()
    assert rig.anchorer.pending is None and "sending a new one" in caplog.text
    rig.step()
    assert rig.wallet.sent == [DIGEST, DIGEST] and rig.store.posted == []


def test_an_unprovable_re_send_leaves_the_block_s_other_txs_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    first = "33" * 32
    rig.wallet.answers = [first]
    rig.step()
    rig.now += STUCK_MS + 1
    rig.step()  # sent again: rig.txid, the one the fake block holds
    rig.wallet.mined = True
    monkeypatch.setattr(anchors, "prove", _unprovable)
    rig.step()
    pending = rig.anchorer.pending
    assert pending is not None and pending.txids == (first,)
    assert "waiting for the block's other txs" in caplog.text
    assert Rig(tmp_path).anchorer.pending == pending  # recorded
    assert rig.store.posted == [] and len(rig.wallet.sent) == 2


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(lambda raw: raw[:-10], id="truncated"),
        pytest.param(lambda raw: raw[:80] + raw[81:], id="a-byte-dropped"),
        # The header's Merkle root flipped: its transactions no longer hash to it.
        pytest.param(lambda raw: raw[:40] + bytes([raw[40] ^ 1]) + raw[41:], id="another-root"),
    ],
)
def test_a_garbled_block_from_the_bitcoin_node_keeps_the_mined_tx_and_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, garbage: Any
) -> None:
    rig = Rig(tmp_path)
    rig.step()
    rig.wallet.mined = True
    good = rig.node.raw
    rig.node.raw = garbage(good)
    rig.step()
    # Taken for "cannot be proved" before: the mined tx was dropped and another one paid.
    assert "cannot be proved" not in caplog.text and f"getblock {rig.node.hash}" in caplog.text
    assert rig.anchorer.pending is not None and rig.anchorer.pending.txid == rig.txid
    assert Rig(tmp_path).anchorer.pending == rig.anchorer.pending  # kept on disk too
    rig.node.raw = good  # the node answers properly again
    rig.step()
    assert rig.wallet.sent == [DIGEST]
    assert [a["txid"] for a in rig.store.posted] == [rig.txid]


def test_another_block_than_the_one_asked_for_is_no_proof_and_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    rig.step()
    rig.wallet.mined = True
    good = rig.node.raw
    tx = anchor_tx(DIGEST)
    # Well formed, holding the same tx, another Merkle root: a cache mixing blocks up.
    other = bytes(block_of([*placed(4, 2, tx), filler(77)]).serialize())
    rig.node.raw = other
    rig.step()
    # Posted before, for good: an anchor whose root no header at its height has.
    assert rig.store.posted == [] and "answered another block" in caplog.text
    assert rig.anchorer.pending is not None and rig.wallet.sent == [DIGEST]
    rig.node.raw = good
    rig.step()
    (posted,) = rig.store.posted
    (attested,) = anchors.check(posted, BLOCK_ID, rig.store.blobs[posted["ots"]])
    anchors.check_header(attested, bitcoin.parse_block(good).header)


def test_a_block_that_does_not_hold_the_wallet_s_tx_is_waited_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    rig.step()
    rig.wallet.mined = True
    good, good_hash = rig.node.raw, rig.node.hash
    other = block_of(placed(4, 2, filler(5)))
    rig.node.raw, rig.node.hash = bytes(other.serialize()), b2lx(other.GetHash())
    rig.wallet.block_hash = rig.node.best = rig.node.hash
    rig.step()
    assert "which does not hold it; waiting" in caplog.text
    assert rig.anchorer.pending is not None and rig.store.posted == []
    rig.node.raw, rig.node.hash = good, good_hash
    rig.wallet.block_hash = rig.node.best = rig.node.hash
    rig.step()
    assert [a["txid"] for a in rig.store.posted] == [rig.txid] and rig.wallet.sent == [DIGEST]
