"""Bitcoin transactions and blocks built with python-bitcoinlib: the second implementation
the tests of ``chainmail.bitcoin``, ``chainmail.ots`` and ``chainmail.anchors`` hold ours against."""

from __future__ import annotations

import hashlib
from typing import Any

from bitcoin.core import (  # type: ignore[import-untyped]
    COIN,
    CBlock,
    COutPoint,
    CScriptWitness,
    CTransaction,
    CTxIn,
    CTxInWitness,
    CTxOut,
    CTxWitness,
)
from bitcoin.core.script import OP_CHECKSIG, OP_RETURN, CScript  # type: ignore[import-untyped]


def coinbase(height: int) -> Any:
    return CTransaction(
        [CTxIn(COutPoint(), CScript([height.to_bytes(3, "little")]))],
        [CTxOut(50 * COIN, CScript([b"\x02" * 33, OP_CHECKSIG]))],
    )


def filler(n: int) -> Any:
    """A legacy payment, different for each ``n``."""
    return CTransaction(
        [CTxIn(COutPoint(hashlib.sha256(bytes([n])).digest(), 0), CScript([b"\x01" * 72]))],
        [CTxOut(n * 1000, CScript([b"\x02" * 33, OP_CHECKSIG]))],
    )


def anchor_tx(
    digest: bytes, *, witness: bool = False, script_sig: bytes = b"\x51", seed: int = 0
) -> Any:
    """A payment with change and an ``OP_RETURN <digest>`` output (segwit with ``witness``)."""
    vin = [CTxIn(COutPoint(bytes([0x99, seed]) * 16, 1), CScript(script_sig), 0xFFFFFFFD)]
    vout = [CTxOut(5_000, CScript([0, b"\x03" * 20])), CTxOut(0, CScript([OP_RETURN, digest]))]
    wit = CTxWitness(
        [CTxInWitness(CScriptWitness([b"\x30" * 71, b"\x02" * 33]))] if witness else []
    )
    return CTransaction(vin, vout, 0, 2, wit)


def block_of(txs: list[Any]) -> Any:
    return CBlock(
        nVersion=0x20000000,
        hashPrevBlock=b"\x11" * 32,
        hashMerkleRoot=CBlock(vtx=txs).calc_merkle_root(),
        nTime=1_700_000_000,
        nBits=0x207FFFFF,
        nNonce=0,
        vtx=txs,
    )


def placed(count: int, index: int, tx: Any) -> list[Any]:
    """``count`` txs with ``tx`` at ``index`` (at 0 it takes the coinbase's place)."""
    txs = [coinbase(count)] + [filler(n) for n in range(1, count)]
    txs[index] = tx
    return txs
