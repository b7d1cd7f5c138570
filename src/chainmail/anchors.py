"""Bitcoin anchors of blocks (DESIGN §7): what to anchor, the proof, and its check (pure code).

Every ``interval`` the anchorer writes the latest block's id digest into a
Bitcoin transaction (``OP_RETURN <32 bytes>``). Once that transaction has
its confirmations, it builds an OpenTimestamps proof from the digest through
the transaction to the Bitcoin block's Merkle root, stores it as a blob and
posts an ``anchor`` message in the node's own feed. Blocks link by ``prev``,
so an anchor of block *h* also fixes every block before it.

Anyone checks an anchor without trusting the node: the ``.ots`` blob hashes
to the message's ``ots``, starts from the block id's digest, passes through
``txid``, and ends at a Merkle root that must be the header's at the
attested height on a Bitcoin node of one's own (``ots verify`` does the last
step; so does ``chainmail verify block --bitcoin URL``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from chainmail import bitcoin, ots, ssb
from chainmail.errors import InvalidMessage, ProofError
from chainmail.ids import blob_id, msg_digest

ANCHOR: Final = "anchor"
#: Seconds between anchors by default: one Bitcoin block's worth.
DEFAULT_INTERVAL: Final = 600.0
#: Confirmations before an anchor is posted: Bitcoin's customary six, so that the block
#: it names is not orphaned afterwards (a posted anchor is never re-made; on regtest,
#: where the tests mine at will, ``--anchor-confirmations 1``).
DEFAULT_CONFIRMATIONS: Final = 6

#: ``getblockchaininfo``'s ``chain`` → the ``chain`` an anchor names.
CHAINS: Final = {
    "main": "bitcoin",
    "test": "bitcoin-testnet",
    "testnet4": "bitcoin-testnet4",
    "signet": "bitcoin-signet",
    "regtest": "bitcoin-regtest",
}


def chain_name(rpc_chain: str) -> str:
    """The anchor's ``chain`` for what a Bitcoin node calls its chain."""
    return CHAINS.get(rpc_chain, f"bitcoin-{rpc_chain}")


def block_digest(block_id: str) -> bytes:
    """The 32 bytes an anchor writes: the SHA-256 inside a ``%…sha256`` block id."""
    return msg_digest(block_id)


@dataclass(frozen=True)
class Pending:
    """An anchor transaction sent and not yet posted: which block, which tx, since when (ms).

    ``rate`` is the fee rate it pays (satoshis per 1,000 virtual bytes; None:
    not known, as in records written before re-sends). ``earlier`` holds the
    transactions sent before it for the same block at lower rates
    (``resend_rate``): any of them may still be mined first, and then it is
    the one proven.
    """

    height: int
    block: str
    txid: str
    sent: int
    rate: int | None = None
    earlier: tuple[str, ...] = ()

    @property
    def txids(self) -> tuple[str, ...]:
        """Every transaction of this anchor, the latest first."""
        return (self.txid, *reversed(self.earlier))

    def to_json(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "block": self.block,
            "txid": self.txid,
            "sent": self.sent,
            "rate": self.rate,
            "earlier": list(self.earlier),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pending:
        rate = data.get("rate")
        earlier = data.get("earlier") or []
        if not isinstance(earlier, list):
            raise TypeError(f"earlier: expected a list of txids, got {earlier!r}")
        return cls(
            int(data["height"]),
            str(data["block"]),
            str(data["txid"]),
            int(data["sent"]),
            None if rate is None else int(rate),
            tuple(str(t) for t in earlier),
        )


#: Each re-send of an anchor left unmined pays this many times the last one's fee rate.
RESEND_FACTOR: Final = 2
#: Transactions one anchor may take (the first and its re-sends); then it waits.
MAX_SENDS: Final = 4


def stuck_after(interval: float) -> float:
    """Seconds an anchor transaction may wait unmined, by default, before it is sent
    again at a higher fee: an hour, or six intervals when those are longer."""
    return max(3600.0, 6 * interval)


def resend_rate(pending: Pending, max_rate: int | None) -> int | None:
    """The fee rate (sat/kvB) to send ``pending``'s block again at, or None when it
    must not be: its rate is not known, it was sent ``MAX_SENDS`` times, or the
    rate would pass ``max_rate`` (None: no cap) with nothing gained."""
    if pending.rate is None or 1 + len(pending.earlier) >= MAX_SENDS:
        return None
    rate = pending.rate * RESEND_FACTOR
    if max_rate is not None:
        rate = min(rate, max_rate)
    return rate if rate > pending.rate else None


def due(
    latest: int | None, anchored: int | None, last_sent: int | None, now: int, interval_ms: int
) -> bool:
    """Whether to anchor the latest block now: there is one newer than the last anchored,
    and ``interval_ms`` passed since the last anchor was sent (ms, the node's clock)."""
    if latest is None or (anchored is not None and latest <= anchored):
        return False
    return last_sent is None or now - last_sent >= interval_ms


def build_proof(block_id: str, txid: str, raw_block: bytes, bitcoin_height: int) -> bytes:
    """The ``.ots`` proof that ``txid`` in ``raw_block`` (mined at ``bitcoin_height``)
    carries ``block_id``. ``ProofError`` if the block does not hold such a tx."""
    return prove(block_id, txid, bitcoin.parse_block(raw_block), bitcoin_height)


def prove(block_id: str, txid: str, block: bitcoin.Block, bitcoin_height: int) -> bytes:
    """``build_proof`` of a block already parsed (``bitcoin.parse_block``). ``ProofError``
    if ``txid`` is not in it, does not carry ``block_id`` or makes too long a proof."""
    try:
        digest = block_digest(block_id)
    except InvalidMessage as exc:
        raise ProofError(exc.detail) from None
    want = bitcoin.internal(txid)
    for tx in block.transactions:
        if tx.hash == want:
            return ots.detached(digest, ots.bitcoin_path(digest, tx, block, bitcoin_height))
    raise ProofError(f"transaction {txid} is not in the Bitcoin block")


def content(height: int, block_id: str, chain: str, txid: str, ots_id: str) -> dict[str, Any]:
    """The ``anchor`` message's content (DESIGN §3)."""
    return {
        "type": ANCHOR,
        "block": block_id,
        "height": height,
        "chain": chain,
        "txid": txid,
        "ots": ots_id,
    }


@dataclass(frozen=True)
class Attested:
    """What an anchor's proof comes to: the Bitcoin block height and the Merkle root
    (internal byte order) the header there must have."""

    bitcoin_height: int
    merkle_root: bytes

    @property
    def merkle_root_hex(self) -> str:
        """As ``getblockheader`` shows ``merkleroot``."""
        return bitcoin.display(self.merkle_root)


def _through(msg: bytes, stamp: ots.Timestamp, target: bytes) -> Iterator[ots.Timestamp]:
    """The subtrees whose message is ``target``: only what they attest goes through it."""
    if msg == target:
        yield stamp
        return
    for op, child in stamp.ops:
        yield from _through(op(msg), child, target)


def check(anchor: dict[str, Any], block_id: str, proof: bytes) -> list[Attested]:
    """Check an ``anchor`` message's content against the block it names and its ``.ots``
    blob; returns the Bitcoin attestations to hold against headers. ``ProofError`` when
    the blob is not the one named, is not of this block, skips ``txid`` or attests
    nothing in Bitcoin past it."""
    if anchor.get("block") != block_id:
        raise ProofError(f"the anchor is of block {anchor.get('block')}, not {block_id}")
    if blob_id(proof) != anchor.get("ots"):
        raise ProofError("the anchor's proof blob does not hash to its ots id")
    parsed = ots.parse(proof)
    try:
        digest = block_digest(block_id)
    except InvalidMessage as exc:
        raise ProofError(exc.detail) from None
    if parsed.digest != digest:
        raise ProofError("the anchor's proof does not start from the block id")
    txid = bitcoin.internal(str(anchor.get("txid", "")))
    subtrees = list(_through(parsed.digest, parsed.timestamp, txid))
    if not subtrees:
        raise ProofError(f"the anchor's proof does not pass through transaction {anchor['txid']}")
    # An attestation on a branch that skips the txid says nothing about that tx.
    found = [Attested(h, root) for sub in subtrees for h, root in ots.attested(txid, sub)]
    if not found:
        raise ProofError("the anchor's proof attests nothing in Bitcoin through its txid")
    return found


def check_message(
    message: dict[str, Any],
    node_id: str,
    height: int,
    block_id: str,
    proof: bytes,
    hmac_key: bytes | None = None,
) -> tuple[dict[str, Any], list[Attested]]:
    """A signed ``anchor`` message held to its block and proof: signed by ``node_id`` (under
    the network's ``hmac_key``, if any), of block ``height`` (whose id is ``block_id``),
    ``proof`` its ``.ots`` blob (``check``).
    Returns its content and the attestations. ``ProofError`` when it does not hold,
    ``InvalidMessage`` when the message does not verify at all."""
    checked = ssb.check(message, hmac_key)
    if checked.author != node_id:
        raise ProofError(f"anchor {checked.id}: expected author {node_id}, got {checked.author}")
    content = checked.content
    if not isinstance(content, dict) or content.get("type") != ANCHOR:
        raise ProofError(f"{checked.id} is not an anchor")
    if content.get("height") != height:
        raise ProofError(f"{checked.id} is not an anchor of block {height}")
    return content, check(content, block_id, proof)


def check_header(attested: Attested, header: bytes) -> None:
    """``ProofError`` unless ``header`` (80 raw bytes) has the attested Merkle root."""
    if bitcoin.header_merkle_root(header) != attested.merkle_root:
        raise ProofError(
            f"the Bitcoin header at height {attested.bitcoin_height} has another Merkle root"
        )
