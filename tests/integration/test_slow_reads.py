"""A slow store read for one client never holds up the others (the event loop stays free)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from chainmail import httpsig
from chainmail.api import create_app
from chainmail.keys import Keypair
from chainmail.node import Node, NodeConfig

pytestmark = pytest.mark.integration

#: How long the patched store takes to read; healthz must answer well inside it.
SLOW_S = 1.5


async def _max_stall(request: asyncio.Task[httpx.Response]) -> float:
    """The longest the event loop went without running this coroutine while ``request`` ran."""
    worst = 0.0
    while not request.done():
        t0 = time.monotonic()
        await asyncio.sleep(0.02)
        worst = max(worst, time.monotonic() - t0)
    return worst


def test_a_slow_inbox_or_firehose_read_does_not_block_other_requests(tmp_path: Path) -> None:
    async def run() -> tuple[float, float, int, int]:
        node = Node(NodeConfig(data_dir=tmp_path / "node", workers=0))
        await node.start()
        store_inbox = node.store.inbox
        log_read = node.log.read

        def slow_inbox(*args: Any, **kwargs: Any) -> Any:
            time.sleep(SLOW_S)  # a read stuck on a busy disk
            return store_inbox(*args, **kwargs)

        def slow_read(*args: Any, **kwargs: Any) -> Any:
            time.sleep(SLOW_S)
            return log_read(*args, **kwargs)

        app = create_app(node, manage_node=False)
        me = Keypair.generate()
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
                node.store.inbox = slow_inbox  # type: ignore[method-assign]
                headers = httpsig.sign_request(me, "GET", "/v1/inbox", "", created=int(time.time()))
                inbox = asyncio.create_task(client.get("/v1/inbox", headers=headers))
                inbox_stall = await _max_stall(inbox)
                node.store.inbox = store_inbox  # type: ignore[method-assign]

                node.log.read = slow_read  # type: ignore[method-assign]
                firehose = asyncio.create_task(client.get("/v1/firehose"))
                firehose_stall = await _max_stall(firehose)
        finally:
            await node.stop()
        return inbox_stall, firehose_stall, (await inbox).status_code, (await firehose).status_code

    inbox_stall, firehose_stall, inbox_status, firehose_status = asyncio.run(run())
    assert inbox_status == 200 and firehose_status == 200
    assert inbox_stall < SLOW_S / 3
    assert firehose_stall < SLOW_S / 3
