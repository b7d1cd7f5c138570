"""A node on an HMAC network (DESIGN §2): its own messages, blocks included, verify
under the network's key, and verification with another key (or none) fails.

The node runs in this process behind uvicorn on a free port (``serve`` has no
option for a network key: it is the Python API's), on a thread of its own, so
that the synchronous ``Client`` and ``audit_node`` drive it as a user would.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import uvicorn

from chainmail.api import create_app
from chainmail.auditing import audit_node
from chainmail.client import Client
from chainmail.errors import InvalidMessage, NotFound
from chainmail.keys import Keypair
from chainmail.node import Node, NodeConfig
from chainmail.verify import Report, VerificationFailed
from support.mutations import wait_for
from support.server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NET = hashlib.sha256(b"chainmail test network").digest()
OTHER_NET = hashlib.sha256(b"another network").digest()


@contextmanager
def hmac_node(data: Path) -> Iterator[str]:
    """A started node whose network key is ``NET``, served on a thread; yields its URL."""
    port = free_port()
    started = threading.Event()
    failed: list[BaseException] = []
    stop: list[Callable[[], object]] = []

    async def serve() -> None:
        node = Node(NodeConfig(data_dir=data, hmac_key=NET, workers=1, block_interval=0.2))
        await node.start()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(node, manage_node=False),
                host="127.0.0.1",
                port=port,
                log_level="warning",
            )
        )
        loop = asyncio.get_running_loop()
        stop.append(lambda: loop.call_soon_threadsafe(setattr, server, "should_exit", True))
        task = asyncio.create_task(server.serve())
        try:
            while not server.started and not task.done():
                await asyncio.sleep(0.01)
            started.set()
            await task
        finally:
            await node.stop()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported to the test below
            failed.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=run, name="hmac-node", daemon=True)
    thread.start()
    started.wait(60)
    if failed:
        raise failed[0]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if stop:
            stop[0]()
        thread.join(60)
    if failed:
        raise failed[0]


def covered(verify: Callable[[], Report]) -> Report | None:
    """``verify()``'s report, or None while no block covers what it verifies."""
    try:
        return verify()
    except NotFound:
        return None


def test_a_settled_trade_verifies_under_the_network_key_and_not_under_another(
    tmp_path: Path,
) -> None:
    buyer_keys, seller_keys = Keypair.generate(), Keypair.generate()
    with hmac_node(tmp_path / "node") as url:
        with (
            Client(url, buyer_keys, hmac_key=NET) as buyer,
            Client(url, seller_keys, hmac_key=NET) as seller,
        ):
            tx = buyer.open_tx([seller.id], timedelta(minutes=5), subject="1,000 MEGA at 12.50")
            note = seller.note(tx, {"text": "I have the stock."})
            buyer.finish(tx)
            seller.finish(tx)
            doc = buyer.notarise(b"NDA between the buyer and the seller", name="nda.txt")
            info = wait_for("the tx in a block", lambda: (t := buyer.tx(tx))["block"] and t)
            height = info["block"]
            nda = wait_for(
                "the doc in a block",
                lambda: covered(
                    lambda: buyer.verify_document(b"NDA between the buyer and the seller", doc.id)
                ),
            )

            # Every verification checks the node's own block messages, signed under NET.
            reports = [
                buyer.verify_tx(tx),
                buyer.verify_message(note.id),
                buyer.verify_block(height),
                nda,
            ]
            assert all(r.ok for r in reports)
            assert any("signed by the node" in c.detail for c in reports[2])

            summary = audit_node(buyer, grace=0.0)
            assert summary.ok, summary.findings
            assert summary.blocks >= 1 and summary.messages >= 5

            # A message signed for another network is not this one's.
            with (
                Client(url, Keypair.generate(), hmac_key=OTHER_NET) as x,
                pytest.raises(InvalidMessage) as refused,
            ):
                x.publish({"type": "post", "text": "hello"})
            assert refused.value.code == "invalid_signature"

        # Nor does the node's signature hold without the key, or under another one.
        for key in (None, OTHER_NET):
            with Client(url, hmac_key=key) as reader, pytest.raises(VerificationFailed) as bad:
                reader.verify_block(height)
            assert "block" in str(bad.value)
            with Client(url, hmac_key=key) as reader:
                assert not audit_node(reader, grace=0.0).ok
