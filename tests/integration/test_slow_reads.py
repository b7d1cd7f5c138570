"""A slow store read for one client never holds up the others (the event loop stays free)."""

from __future__ import annotations

import asyncio
import signal
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


def test_a_firehose_follower_does_not_hold_the_node_s_shutdown(tmp_path: Path) -> None:
    """SIGTERM with an idle `GET /v1/firehose?follow=true` open: the node ends the body
    (whole lines, then its end) and exits at once; it waited uvicorn's 5 s graceful
    timeout for it, cut the follower off mid-body and logged an error."""
    from support.server import Server

    server = Server(tmp_path / "node")
    server.start()
    assert server.proc is not None
    try:
        with (
            httpx.Client(base_url=server.url, timeout=30) as http,
            http.stream("GET", "/v1/firehose", params={"follow": "true"}) as follow,
        ):
            assert follow.status_code == 200
            lines = follow.iter_lines()
            time.sleep(0.3)  # the follower idles: nothing logged yet
            start = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            rest = list(lines)  # the body ends, no exception
            server.proc.wait(10)
            took = time.monotonic() - start
        assert all(not line or line.startswith("{") for line in rest)
        assert took < 3.0, f"shut down in {took:.1f} s with a follower open"
        log = server.log_path.read_text()
        assert "Traceback" not in log and "graceful shutdown exceeded" not in log, log
    finally:
        server.stop()
