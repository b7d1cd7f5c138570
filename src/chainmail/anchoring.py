"""The node's anchorer (I/O): writes block ids into Bitcoin and posts ``anchor`` messages.

``chainmail.anchors`` holds the rules and the proof; this runs them against a
Bitcoin node and wallet (``chainmail.bitcoinrpc``) as one task of the node.
Each step:

1. With an anchor transaction pending: once it has its confirmations in a
   block of the Bitcoin node's best chain, fetch that block (it must parse, hash
   to the block asked for and hold the tx: else the node's answer is an error,
   retried, and the tx kept), build the ``.ots`` proof, store it as a blob and
   post the ``anchor`` message through the writer; the pending record goes.
   Left unmined past ``stuck_after`` (its
   fee too low for the chain's traffic), the same block is sent again at
   twice the fee rate (``anchors.resend_rate``: at most ``anchors.MAX_SENDS``
   transactions, capped by ``max_rate``); whichever of them is mined first
   is the one proven.
2. Otherwise, when ``anchors.due``: send the latest block's digest and
   record the pending transaction.

The pending transaction is kept in ``<data>/anchor.json`` (written atomically
after the wallet answers), so a restart finishes what it started. A crash
between the wallet's answer and that write costs one transaction's fee: the
next step sends another. A stop does not: it waits for the write. Failures
(Bitcoin, the store, ``anchor.json``) are logged (once per distinct message)
and retried at the next step; they never stop the node or the anchorer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chainmail import anchors, bitcoin
from chainmail.anchors import Pending
from chainmail.bitcoinrpc import BcoinWallet, BitcoinError, BitcoinNode, TxStatus
from chainmail.errors import Error, ProofError, StorageError
from chainmail.ids import blob_id
from chainmail.store import Store

log = logging.getLogger(__name__)

STATE_FILE = "anchor.json"
#: Seconds between rounds, at least, whatever the interval.
_MIN_POLL = 0.1


@dataclass(frozen=True)
class AnchorConfig:
    """Where the anchorer writes: a Bitcoin node's JSON-RPC and a bcoin wallet (URLs with
    their credentials), how often (s) and after how many confirmations it posts."""

    bitcoin: str
    wallet: str
    interval: float = anchors.DEFAULT_INTERVAL
    confirmations: int = anchors.DEFAULT_CONFIRMATIONS
    #: Seconds an anchor transaction may wait unmined before the block is sent again
    #: at a higher fee (None: ``anchors.stuck_after(interval)``), and the highest fee
    #: rate (sat/kvB) such a re-send may pay (None: no cap but ``anchors.MAX_SENDS``).
    stuck_after: float | None = None
    max_rate: int | None = None

    @property
    def stuck_ms(self) -> int:
        after = anchors.stuck_after(self.interval) if self.stuck_after is None else self.stuck_after
        return int(after * 1000)


def _load(path: Path) -> tuple[Pending | None, int | None]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        log.error("anchorer: %s is unreadable (%s); starting afresh", path, exc)
        return None, None
    if not isinstance(data, dict):
        log.error("anchorer: %s is not a JSON object; starting afresh", path)
        return None, None
    pending = data.get("pending")
    last_sent = data.get("last_sent")
    try:
        return (
            None if pending is None else Pending.from_json(pending),
            None if last_sent is None else int(last_sent),
        )
    except (KeyError, TypeError, ValueError) as exc:
        log.error("anchorer: %s is malformed (%s); starting afresh", path, exc)
        return None, None


def _save(path: Path, pending: Pending | None, last_sent: int | None) -> None:
    body = json.dumps(
        {"pending": None if pending is None else pending.to_json(), "last_sent": last_sent}
    )
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Anchorer:
    """One node's anchoring, step by step (``step``), or forever (``run``)."""

    def __init__(
        self,
        config: AnchorConfig,
        data_dir: Path,
        store: Store,
        post: Callable[[dict[str, Any]], Awaitable[object]],
        clock: Callable[[], int],
    ) -> None:
        self.config = config
        self.store = store
        self._post = post
        self._clock = clock
        self._path = data_dir / STATE_FILE
        self.pending, self.last_sent = _load(self._path)
        self.node = BitcoinNode(config.bitcoin)
        self.wallet = BcoinWallet(config.wallet)
        self._chain: str | None = None
        self._last_error: str | None = None
        #: The pending tx last logged as waiting too long for its confirmations.
        self._stuck: str | None = None
        #: The height of the last block this process posted an anchor of.
        self._posted: int | None = None
        #: The wallet's send and the write of its record, while in flight (``aclose``).
        self._sending: asyncio.Future[tuple[Pending, OSError | None]] | None = None

    def close(self) -> None:
        self.node.close()
        self.wallet.close()

    async def aclose(self) -> None:
        """Once a send in flight is recorded (its task may be cancelled already), close."""
        if self._sending is not None:
            with contextlib.suppress(Exception):
                await self._sending
        self.close()

    @property
    def chain(self) -> str | None:
        """The anchor chain's name (``bitcoin``, ``bitcoin-regtest``, …) once known."""
        return self._chain

    async def run(self) -> None:
        # Never faster than 10 rounds a second: each round asks the Bitcoin node or wallet.
        poll = max(_MIN_POLL, min(self.config.interval, 5.0))
        while True:
            await self.step()
            await asyncio.sleep(poll)

    async def step(self) -> None:
        """One round; failures are logged and left for the next round (never raised:
        the task must outlive a Bitcoin node's odd answer or a full disk)."""
        try:
            if self._chain is None:
                self._chain = anchors.chain_name(await asyncio.to_thread(self.node.chain))
            if self.pending is not None:
                await self._settle(self.pending)
            else:
                await self._send()
            self._last_error = None
        except (BitcoinError, Error) as exc:
            self._failed(exc.diagnostics())
        except Exception as exc:
            self._failed(f"unexpected {type(exc).__name__}: {exc}", trace=True)

    def _failed(self, text: str, *, trace: bool = False) -> None:
        if text != self._last_error:
            log.error("anchorer: %s", text, exc_info=trace)
            self._last_error = text

    async def _send(self) -> None:
        latest = await asyncio.to_thread(self.store.latest_block)
        anchored = await asyncio.to_thread(self.store.latest_anchored)
        if self._posted is not None and (anchored is None or anchored < self._posted):
            anchored = self._posted  # posted, and its projection not in the store yet
        now = self._clock()
        interval_ms = int(self.config.interval * 1000)
        if latest is None or not anchors.due(
            latest.height, anchored, self.last_sent, now, interval_ms
        ):
            return
        digest = anchors.block_digest(latest.id)

        def send() -> Pending:
            sent = self.wallet.send_data(digest)
            return Pending(latest.height, latest.id, sent.txid, now, sent.rate)

        pending = await self._send_recorded(send, now)
        log.info("anchorer: block %d sent in Bitcoin tx %s", pending.height, pending.txid)

    async def _send_recorded(self, send: Callable[[], Pending], last_sent: int | None) -> Pending:
        """``send()`` (the wallet's send, on a thread) and the write of what it sent to
        ``anchor.json`` (on disk before it shows anywhere: a crash after this finishes
        this tx), as one thread job, shielded: a stop (this task cancelled) while the
        wallet sends cannot part its answer from the record of it; Node.stop waits for
        it (aclose). ``last_sent`` is recorded with it."""

        def job() -> tuple[Pending, OSError | None]:
            pending = send()
            try:
                _save(self._path, pending, last_sent)
            except OSError as exc:
                return pending, exc
            return pending, None

        self._sending = asyncio.ensure_future(asyncio.to_thread(job))
        pending, unsaved = await asyncio.shield(self._sending)
        self.pending, self.last_sent = pending, last_sent
        if unsaved is not None:
            # Kept in memory all the same: else every round sent another tx (and paid).
            raise StorageError(
                f"tx {pending.txid} (block {pending.height}) sent, but {self._path} cannot "
                f"be written: {unsaved.strerror or unsaved}"
            ) from unsaved
        return pending

    async def _settle(self, pending: Pending) -> None:
        # The latest transaction first: once re-sent, any of them may be mined.
        known: list[tuple[str, TxStatus]] = []
        for txid in pending.txids:
            status = await asyncio.to_thread(self.wallet.status, txid)
            if status is not None:
                known.append((txid, status))
        if not known:
            # The wallet forgot it (a new wallet, a dropped tx): anchor afresh.
            log.error(
                "anchorer: the wallet does not know tx %s (block %d); sending a new one",
                pending.txid,
                pending.height,
            )
            self.pending = None
            self.last_sent = None
            await asyncio.to_thread(_save, self._path, None, None)
            return
        mined = [(t, s) for t, s in known if s.block is not None]
        ready = [(t, s) for t, s in mined if s.confirmations >= self.config.confirmations]
        if not ready:
            if not mined and self._clock() - pending.sent > self.config.stuck_ms:
                # Unmined that long: the fee is too low for the chain's traffic. Only
                # while unmined: once in a block the fee did its work, and six
                # confirmations take an hour as a rule.
                await self._resend(pending)
            return
        # Mined first, where several are: its proof dates the block earliest.
        txid, status = max(ready, key=lambda ts: ts[1].confirmations)
        assert status.block is not None
        await self._prove(pending, txid, status.block)

    async def _resend(self, pending: Pending) -> None:
        rate = anchors.resend_rate(pending, self.config.max_rate)
        if rate is None:
            if self._stuck != pending.txid:  # said once a tx
                waited = (self._clock() - pending.sent) // 60_000
                if pending.rate is None:
                    # A record from before re-sends, or a wallet that said no rate.
                    log.warning(
                        "anchorer: tx %s (block %d) is unmined after %d min, at a fee rate"
                        " the wallet did not say, so it is not sent again: waiting (the"
                        " wallet may need to bump its fee)",
                        pending.txid,
                        pending.height,
                        waited,
                    )
                else:
                    log.warning(
                        "anchorer: tx %s (block %d) is unmined after %d min and %d sends at"
                        " up to %d sat/kvB; no higher fee is allowed (at most %d sends,"
                        " --anchor-max-fee-rate): waiting",
                        pending.txid,
                        pending.height,
                        waited,
                        len(pending.txids),
                        pending.rate,
                        anchors.MAX_SENDS,
                    )
                self._stuck = pending.txid
            return
        digest = anchors.block_digest(pending.block)

        def send() -> Pending:
            sent = self.wallet.send_data(digest, rate=rate)
            return Pending(
                pending.height,
                pending.block,
                sent.txid,
                self._clock(),
                sent.rate or rate,
                (*pending.earlier, pending.txid),
            )

        again = await self._send_recorded(send, self.last_sent)
        log.warning(
            "anchorer: tx %s (block %d) unmined at %s sat/kvB; sent again at %d as tx %s",
            pending.txid,
            pending.height,
            pending.rate,
            again.rate,
            again.txid,
        )

    def _mined_block(self, txid: str, block_hash: str) -> bitcoin.Block:
        """Bitcoin block ``block_hash``, holding ``txid``, as the node sends it, checked to be
        that block. ``BitcoinError`` for an answer that is not (truncated, not hashing to
        its Merkle root, another block) or does not hold the tx: the node's or wallet's
        fault, retried, never a reason to drop a mined tx nor the stuff of a proof."""
        raw = self.node.block(block_hash)
        try:
            block = bitcoin.parse_block(raw)
            asked = bitcoin.internal(block_hash)
            want = bitcoin.internal(txid)
        except ProofError as exc:
            raise BitcoinError(
                f"Bitcoin node {self.node.url}: getblock {block_hash}: {exc.detail}"
            ) from None
        if block.hash != asked:
            # A cache or balancer mixing blocks up: a proof of it would name the wrong
            # header at the height, for good (a posted anchor is never re-made).
            raise BitcoinError(
                f"Bitcoin node {self.node.url}: getblock {block_hash} answered another"
                f" block, {bitcoin.display(block.hash)}"
            )
        if not any(tx.hash == want for tx in block.transactions):
            raise BitcoinError(
                f"tx {txid}: the wallet has it in Bitcoin block {block_hash}, which does not"
                " hold it; waiting"
            )
        return block

    async def _prove(self, pending: Pending, txid: str, block_hash: str) -> None:
        block = await asyncio.to_thread(self._mined_block, txid, block_hash)
        height = await asyncio.to_thread(self.node.block_height, block_hash)
        if await asyncio.to_thread(self.node.block_hash, height) != block_hash:
            # The wallet's view lags a reorg (or is another node's): a proof of a block off
            # the best chain names a header no one finds at that height. Wait for the wallet.
            raise BitcoinError(
                f"tx {txid} (block {pending.height}): the wallet has it in Bitcoin "
                f"block {block_hash}, which is not the node's at height {height}; waiting"
            )
        if any(a.get("txid") in pending.txids for a in self.store.anchors(pending.height)):
            # Posted before a crash that left the pending record: do not post twice.
            self.pending = None
            await asyncio.to_thread(_save, self._path, None, self.last_sent)
            return
        try:
            proof = anchors.prove(pending.block, txid, block, height)
        except ProofError as exc:
            # No later round makes this tx provable (past 4,096 bytes, or no OP_RETURN of
            # the block's digest): the block is the one asked for and holds the tx (the
            # node's odd answers are BitcoinErrors, above, retried). Drop it, so the
            # next round sends another rather than retrying this one for ever; the
            # block's other txs, if it was sent again, may still be mined and proven.
            others = tuple(t for t in pending.txids if t != txid)
            if others:
                log.error(
                    "anchorer: tx %s cannot be proved (%s); waiting for the block's other txs (%s)",
                    txid,
                    exc.detail,
                    ", ".join(others),
                )
                self.pending = dataclasses.replace(
                    pending, txid=others[0], earlier=tuple(reversed(others[1:]))
                )
                await asyncio.to_thread(_save, self._path, self.pending, self.last_sent)
                return
            log.error("anchorer: tx %s cannot be proved (%s); sending a new one", txid, exc.detail)
            self.pending = None
            self.last_sent = None
            await asyncio.to_thread(_save, self._path, None, None)
            return
        ots_id = blob_id(proof)
        await asyncio.to_thread(
            functools.partial(self.store.put_blob, ots_id, proof, stored=self._clock())
        )
        chain = self._chain or anchors.chain_name(await asyncio.to_thread(self.node.chain))
        content = anchors.content(pending.height, pending.block, chain, txid, ots_id)
        await self._post(content)
        self.pending = None
        self._posted = pending.height
        await asyncio.to_thread(_save, self._path, None, self.last_sent)
        log.info(
            "anchorer: block %d anchored in Bitcoin block %d (tx %s)",
            pending.height,
            height,
            txid,
        )
