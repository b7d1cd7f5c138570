"""Recompute every root and proof from raw API responses, without chainmail's verify code.

Everything here uses only hashlib, base64, json and PyNaCl, written from
RFC 9162 and DESIGN §2/§4/§6 directly, so a bug shared by the node and its
own verifier cannot hide. Messages are kept ASCII so that the id quirk
(low byte of each UTF-16 unit) equals plain UTF-8.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import nacl.signing
import orjson
import pytest

from support.feeds import Writer
from support.server import Server, running

pytestmark = pytest.mark.integration


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf(data: bytes) -> bytes:
    return sha(b"\x00" + data)


def node(left: bytes, right: bytes) -> bytes:
    return sha(b"\x01" + left + right)


def mth(leaves: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH over leaf hashes, recursively."""
    n = len(leaves)
    if n == 0:
        return sha(b"")
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: list[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2: the root implied by an inclusion proof."""
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        assert sn != 0
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    assert sn == 0
    return r


def verify_consistency(
    size1: int, size2: int, proof: list[bytes], root1: bytes
) -> tuple[bytes, bytes]:
    """RFC 9162 §2.1.4.2: the two roots implied by a consistency proof."""
    if size1 & (size1 - 1) == 0:  # a power of two: prepend the known old root
        proof = [root1, *proof]
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        assert sn != 0
        if fn & 1 or fn == sn:
            fr = node(c, fr)
            sr = node(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    assert sn == 0
    return fr, sr


def stringify(msg: dict[str, Any]) -> str:
    # JSON.stringify(msg, null, 2) for ASCII, integers and strings only.
    return json.dumps(msg, indent=2, ensure_ascii=False)


def msg_id(msg: dict[str, Any]) -> str:
    return "%" + base64.b64encode(sha(stringify(msg).encode("latin-1"))).decode() + ".sha256"


def check_signature(msg: dict[str, Any], author: str) -> None:
    unsigned = {k: v for k, v in msg.items() if k != "signature"}
    sig = base64.b64decode(msg["signature"].removesuffix(".sig.ed25519"))
    key = nacl.signing.VerifyKey(base64.b64decode(author[1:].removesuffix(".ed25519")))
    key.verify(stringify(unsigned).encode("utf-8"), sig)


def digest_of(ident: str) -> bytes:
    return base64.b64decode(ident[1:].removesuffix(".sha256"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def q(ident: str) -> str:
    return quote(ident, safe="")


@pytest.fixture(scope="module")
def settled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, list[str]]]:
    data: Path = tmp_path_factory.mktemp("node")
    with (
        running(data, block_interval=0.2) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        txs = []
        buyer, seller = Writer(), Writer()
        for round_ in range(3):
            opened = buyer.sign(
                {
                    "type": "tx/open",
                    "parties": [buyer.id, seller.id],
                    "deadline": int(time.time() * 1000) + 60_000,
                    "subject": f"trade {round_}",
                }
            )
            tx = http.post("/v1/messages", content=orjson.dumps(opened)).json()["id"]
            for m in (
                seller.sign({"type": "tx/note", "tx": tx, "data": {"ok": round_}}),
                seller.sign({"type": "tx/finish", "tx": tx}),
                buyer.sign({"type": "tx/finish", "tx": tx}),
            ):
                assert http.post("/v1/messages", content=orjson.dumps(m)).status_code == 201
            txs.append(tx)
            _wait_sealed(http, tx)
        yield http, txs


def _wait_sealed(http: httpx.Client, tx: str) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        block = http.get(f"/v1/transactions/{q(tx)}").json()["block"]
        if block is not None:
            return int(block)
        time.sleep(0.05)
    raise AssertionError("never sealed")


def test_blocks_recomputed_from_raw_responses(settled: tuple[httpx.Client, list[str]]) -> None:
    http, txs = settled
    node_id = http.get("/healthz").json()["id"]
    firehose = [orjson.loads(x) for x in http.get("/v1/firehose?from=0").content.splitlines()]
    leaves = [leaf(digest_of(line["id"])) for line in firehose]
    for line in firehose:
        assert msg_id(line["message"]) == line["id"]
        check_signature(line["message"], line["message"]["author"])
    blocks = http.get("/v1/blocks?after=0").json()["blocks"]
    assert blocks, "no blocks"
    previous: dict[str, Any] | None = None
    sealed: list[str] = []
    for summary in blocks:
        full = http.get(f"/v1/blocks/{summary['height']}").json()
        msg = full["message"]
        content = msg["content"]
        assert msg["author"] == node_id and msg_id(msg) == full["id"]
        check_signature(msg, node_id)
        assert content["prev"] == (previous["id"] if previous else None)
        # Tx records: compact, sorted-key JSON; leaf data is its SHA-256.
        record_leaves = [
            leaf(
                sha(
                    json.dumps(
                        r, sort_keys=True, separators=(",", ":"), ensure_ascii=False
                    ).encode()
                )
            )
            for r in full["records"]
        ]
        assert content["txs"]["count"] == len(full["records"])
        assert content["txs"]["root"] == b64(mth(record_leaves))
        blob = http.get(f"/v1/blobs/{q(content['txs']['records'])}").content
        assert "&" + b64(sha(blob)) + ".sha256" == content["txs"]["records"]
        assert [json.loads(x) for x in blob.splitlines()] == full["records"]
        # Log checkpoint: recomputed over the firehose's own leaves.
        (cp,) = content["logs"]
        assert cp["root"] == b64(mth(leaves[: cp["size"]]))
        if previous is not None:
            (old,) = previous["message"]["content"]["logs"]
            proof = http.get(f"/v1/log/0/consistency?from={old['size']}&to={cp['size']}").json()
            r1, r2 = verify_consistency(
                old["size"],
                cp["size"],
                [base64.b64decode(p) for p in proof["proof"]],
                base64.b64decode(old["root"]),
            )
            assert (b64(r1), b64(r2)) == (old["root"], cp["root"])
        for i, record in enumerate(full["records"]):
            rp = http.get(f"/v1/blocks/{summary['height']}/records/{q(record['tx'])}/proof").json()
            assert rp["index"] == i and rp["count"] == len(record_leaves)
            root = verify_inclusion(
                record_leaves[i], i, rp["count"], [base64.b64decode(p) for p in rp["proof"]]
            )
            assert b64(root) == content["txs"]["root"]
            sealed.append(record["tx"])
        previous = full
    assert sorted(sealed) == sorted(set(sealed)) and set(txs) <= set(sealed)


def test_message_proofs_recomputed(settled: tuple[httpx.Client, list[str]]) -> None:
    http, txs = settled
    for tx in txs:
        record = http.get(f"/v1/transactions/{q(tx)}").json()
        for mid in record["messages"]:
            proof = http.get(f"/v1/messages/{q(mid)}/proof").json()
            block = http.get(f"/v1/blocks/{proof['block']['height']}").json()
            (cp,) = block["message"]["content"]["logs"]
            assert (proof["size"], proof["root"]) == (cp["size"], cp["root"])
            root = verify_inclusion(
                leaf(digest_of(mid)),
                proof["index"],
                proof["size"],
                [base64.b64decode(p) for p in proof["proof"]],
            )
            assert b64(root) == cp["root"]


def test_tampering_is_caught_by_the_independent_checks(
    settled: tuple[httpx.Client, list[str]],
) -> None:
    http, txs = settled
    mid = http.get(f"/v1/transactions/{q(txs[0])}").json()["messages"][1]
    proof = http.get(f"/v1/messages/{q(mid)}/proof").json()
    path = [base64.b64decode(p) for p in proof["proof"]]
    path[0] = bytes([path[0][0] ^ 1]) + path[0][1:]
    root = verify_inclusion(leaf(digest_of(mid)), proof["index"], proof["size"], path)
    assert b64(root) != proof["root"]


def _server_type_check(_: Server) -> None:
    return None
