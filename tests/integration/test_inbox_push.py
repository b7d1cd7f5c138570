"""Inbox streams get new deliveries pushed as they are written, and the store when behind.

The node runs in this process (uvicorn on a free port) so that the test can
count the stream's store reads: a live delivery must reach the stream without
one, and a stream handed more than it may queue must read the store instead
and still send every entry once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
import websockets

from chainmail import httpsig
from chainmail import node as node_module
from chainmail.api import create_app
from chainmail.node import Node, NodeConfig
from support.feeds import Writer
from support.server import free_port

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[tuple[Node, str, list[int]]]:
    """A started node behind uvicorn; yields it, its ws:// base and a count of inbox reads."""
    node = Node(NodeConfig(data_dir=tmp_path / "node", workers=0, block_interval=60.0))
    await node.start()
    reads = [0]
    store_inbox = node.store.inbox

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads[0] += 1
        return store_inbox(*args, **kwargs)

    node.store.inbox = counted  # type: ignore[method-assign]
    port = free_port()
    config = uvicorn.Config(
        create_app(node, manage_node=False), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield node, f"ws://127.0.0.1:{port}", reads
    finally:
        server.should_exit = True
        await task
        await node.stop()


def _headers(w: Writer) -> dict[str, str]:
    return httpsig.sign_request(w.keys, "GET", "/v1/inbox/stream", "", created=int(time.time()))


async def _open_tx(node: Node, a: Writer, b: Writer) -> str:
    opened = a.sign(
        {"type": "tx/open", "parties": [a.id, b.id], "deadline": int(time.time() * 1000) + 60_000}
    )
    (result,) = await node.submit_many([orjson.dumps(opened)])
    return str(result.id)  # type: ignore[union-attr]


async def _notes(node: Node, a: Writer, tx: str, count: int) -> None:
    raws = [
        orjson.dumps(a.sign({"type": "tx/note", "tx": tx, "data": {"n": i}})) for i in range(count)
    ]
    results = await node.submit_many(raws)
    assert all(getattr(r, "created", False) for r in results), results


@contextlib.asynccontextmanager
async def following(base: str, reads: list[int], w: Writer) -> AsyncIterator[Any]:
    """``w``'s inbox stream, once it has made its first read of the store."""
    async with websockets.connect(f"{base}/v1/inbox/stream", additional_headers=_headers(w)) as ws:
        while reads[0] == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # that read answered: the stream is waiting for news
        yield ws


async def _frames(ws: Any, count: int) -> list[dict[str, Any]]:
    return [orjson.loads(await asyncio.wait_for(ws.recv(), 3.0)) for _ in range(count)]


def test_a_live_delivery_is_pushed_to_the_stream_without_a_store_read(tmp_path: Path) -> None:
    async def run() -> tuple[list[dict[str, Any]], int, int]:
        async with serving(tmp_path) as (node, base, reads):
            a, b = Writer(), Writer()
            async with following(base, reads, b) as ws:
                before = reads[0]
                tx = await _open_tx(node, a, b)
                await _notes(node, a, tx, 5)
                got = await _frames(ws, 6)
                return got, before, reads[0]

    got, before, after = asyncio.run(run())
    deliveries = [f["delivery"] for f in got]
    assert deliveries == sorted(set(deliveries))
    assert [f["message"]["content"]["type"] for f in got] == ["tx/open"] + ["tx/note"] * 5
    assert after == before  # pushed, not read back from the store


def test_a_stream_pushed_more_than_it_may_queue_reads_the_store_and_misses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_module, "INBOX_PUSH_LIMIT", 3)

    async def run() -> tuple[list[dict[str, Any]], int, int]:
        async with serving(tmp_path) as (node, base, reads):
            a, b = Writer(), Writer()
            async with following(base, reads, b) as ws:
                before = reads[0]
                tx = await _open_tx(node, a, b)  # one delivery: pushed
                await _notes(node, a, tx, 40)  # forty in one projection: past the limit
                await _notes(node, a, tx, 2)  # and two more, pushed again
                got = await _frames(ws, 43)
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws.recv(), 0.5)  # nothing twice
                return got, before, reads[0]

    got, before, after = asyncio.run(run())
    deliveries = [f["delivery"] for f in got]
    assert deliveries == sorted(set(deliveries)) and len(deliveries) == 43
    assert [f["message"]["content"].get("data", {}).get("n") for f in got[1:]] == [
        *range(40),
        0,
        1,
    ]
    assert after > before  # the overflow was caught up from the store


def test_two_streams_of_one_recipient_each_get_every_delivery(tmp_path: Path) -> None:
    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with serving(tmp_path) as (node, base, reads):
            a, b = Writer(), Writer()
            async with following(base, reads, b) as first:
                seen = reads[0]
                async with websockets.connect(
                    f"{base}/v1/inbox/stream", additional_headers=_headers(b)
                ) as second:
                    while reads[0] == seen:  # the second stream's own first read
                        await asyncio.sleep(0.01)
                    await asyncio.sleep(0.05)
                    tx = await _open_tx(node, a, b)
                    await _notes(node, a, tx, 3)
                    return await _frames(first, 4), await _frames(second, 4)

    one, two = asyncio.run(run())
    assert [f["id"] for f in one] == [f["id"] for f in two]
    assert [f["delivery"] for f in one] == sorted(f["delivery"] for f in one)


def test_an_overflow_while_the_stream_reads_the_store_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stream's first read takes its snapshot, then answers only after later
    # commits have overflowed its queue and pushed newer entries: the stream
    # must read again before it sends those, or the dropped ones are skipped.
    monkeypatch.setattr(node_module, "INBOX_PUSH_LIMIT", 3)
    release = threading.Event()

    async def run() -> list[int]:
        async with serving(tmp_path) as (node, base, reads):
            counted = node.store.inbox

            def held(*args: Any, **kwargs: Any) -> Any:
                out = counted(*args, **kwargs)  # the snapshot: nothing yet
                if reads[0] == 1:
                    release.wait(5.0)
                return out

            node.store.inbox = held  # type: ignore[method-assign]
            a, b = Writer(), Writer()
            async with websockets.connect(
                f"{base}/v1/inbox/stream", additional_headers=_headers(b)
            ) as ws:
                while reads[0] == 0:
                    await asyncio.sleep(0.01)
                tx = await _open_tx(node, a, b)  # pushed
                await _notes(node, a, tx, 40)  # past the limit: the queue is dropped
                await _notes(node, a, tx, 2)  # pushed after the drop
                release.set()
                got = [f["delivery"] for f in await _frames(ws, 43)]
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws.recv(), 0.5)  # nothing twice
                return got

    got = asyncio.run(run())
    assert got == sorted(set(got)) and len(got) == 43
