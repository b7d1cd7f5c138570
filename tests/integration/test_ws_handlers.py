"""WebSocket handlers against an in-process node: what each does when a client misbehaves.

The node runs in this process behind uvicorn on a free port, wrapped in an
ASGI layer that counts the WebSocket handlers still running, so a test can
tell a handler that ended from one left behind when its client went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
import websockets

from chainmail.api import Limits, create_app
from chainmail.client import AsyncClient, Receipt
from chainmail.errors import Error
from chainmail.keys import Keypair
from chainmail.node import Node, NodeConfig
from chainmail.sequencer import Accepted
from support.feeds import Writer
from support.server import free_port

pytestmark = pytest.mark.integration


@dataclass
class Serving:
    node: Node
    base: str  # ws://127.0.0.1:PORT
    url: str  # http://127.0.0.1:PORT
    handlers: list[int]  # WebSocket handlers running, one counter


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, limits: Limits | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[Serving]:
    node = Node(NodeConfig(data_dir=tmp_path / "node", workers=0, block_interval=60.0))
    await node.start()
    app = create_app(node, limits=limits or Limits(), manage_node=False)
    handlers = [0]

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await app(scope, receive, send)
            return
        handlers[0] += 1
        try:
            await app(scope, receive, send)
        finally:
            handlers[0] -= 1

    port = free_port()
    # A handler left running (the bug some tests catch) must not hold shut-down for ever.
    config = uvicorn.Config(
        counted, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        yield Serving(node, f"ws://{netloc}", f"http://{netloc}", handlers)
    finally:
        server.should_exit = True
        await task
        await node.stop()


async def _until(what: str, check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_ws_ingest_ends_when_its_client_vanishes_with_replies_in_flight(tmp_path: Path) -> None:
    # More frames in flight than the handler queues: its reading loop waits for
    # room while the replies go out. When the client is gone the first reply
    # fails; the handler must still end (and log what arrived), not wait for
    # room that nothing will ever make.
    async def run() -> tuple[int, int]:
        async with serving(tmp_path, Limits(ws_in_flight=4)) as s:
            w = Writer()
            frames = [w.raw({"type": "post", "n": i}) for i in range(300)]
            async with websockets.connect(f"{s.base}/v1/ingest") as ws:
                for frame in frames:
                    await ws.send(frame)
                await _until("the handler to start", lambda: s.handlers[0] == 1)
                ws.transport.abort()  # a client that crashed: no close handshake
            await _until("the handler to end", lambda: s.handlers[0] == 0)
            head = s.node.log.head(w.id)
            return s.handlers[0], 0 if head is None else head.sequence

    handlers, logged = asyncio.run(run())
    assert handlers == 0
    assert logged > 0


def test_the_sdk_streams_to_a_node_at_an_ipv6_address(tmp_path: Path) -> None:
    # The client takes http://[::1]:PORT; its WebSocket URLs must keep the
    # brackets (ws://::1:PORT/… is no URL at all).
    async def run() -> tuple[list[Receipt | Error], str, str]:
        async with (
            serving(tmp_path, host="::1") as s,
            AsyncClient(s.url, Keypair.generate()) as a,
            AsyncClient(s.url, Keypair.generate()) as b,
        ):
            tx = await a.open_tx([b.id], timedelta(minutes=5))
            note = a.sign({"type": "tx/note", "tx": tx, "data": {}})
            results = [r async for r in a.submit_stream([note])]
            async for entry in b.inbox_iter():
                return results, entry.id, tx
            raise AssertionError("the inbox stream ended")

    results, first, tx = asyncio.run(run())
    assert [type(r) for r in results] == [Receipt]
    assert first == tx


def test_a_firehose_follower_gets_a_message_logged_while_it_was_reading(tmp_path: Path) -> None:
    # A follower reads the log on a reader thread, finds nothing new and then
    # waits for the next wake. A message logged (and its wake sent) after the
    # read looked but before it came back must still reach the follower at
    # once, not at the next message or the 15 s idle timeout.
    async def run() -> tuple[list[int], float]:
        async with serving(tmp_path) as s:
            read = s.node.log.read
            reads = [0]
            armed = threading.Event()
            looked = threading.Event()
            release = threading.Event()

            def held(*args: Any) -> Any:
                entries = read(*args)
                if threading.current_thread().name.startswith("reader"):
                    reads[0] += 1
                    if not entries and armed.is_set():
                        armed.clear()
                        looked.set()
                        release.wait(10)  # a slow reader thread, its answer already read
                return entries

            s.node.log.read = held  # type: ignore[method-assign, assignment]
            w = Writer()
            async with websockets.connect(f"{s.base}/v1/firehose") as ws:
                await _until("the follower to wait", lambda: reads[0] >= 1)
                armed.set()
                assert isinstance(await s.node.submit(w.raw({"type": "post", "n": 0})), Accepted)
                got = [orjson.loads(await asyncio.wait_for(ws.recv(), 10))["index"]]
                await asyncio.to_thread(looked.wait, 10)  # the next read saw nothing yet
                assert isinstance(await s.node.submit(w.raw({"type": "post", "n": 1})), Accepted)
                release.set()
                started = time.monotonic()
                got.append(orjson.loads(await asyncio.wait_for(ws.recv(), 20))["index"])
                return got, time.monotonic() - started

    indexes, waited = asyncio.run(run())
    assert indexes == [0, 1]
    assert waited < 3.0, f"the follower waited {waited:.1f} s for a message already logged"


def test_an_ack_the_store_fails_to_write_is_answered_on_the_stream_which_goes_on(
    tmp_path: Path,
) -> None:
    # The ack task died with the store's error: the stream closed with nothing
    # said, and asyncio logged an exception no one retrieved.
    from chainmail import httpsig
    from chainmail.errors import StorageError

    async def run() -> tuple[dict[str, Any], str, int]:
        async with serving(tmp_path) as s:
            a, b = Writer(), Writer()
            deadline = int(time.time() * 1000) + 60_000
            opened = a.sign({"type": "tx/open", "parties": [a.id, b.id], "deadline": deadline})
            await s.node.submit(orjson.dumps(opened))
            path = "/v1/inbox/stream"
            headers = httpsig.sign_request(b.keys, "GET", path, "", created=int(time.time()))
            async with websockets.connect(f"{s.base}{path}", additional_headers=headers) as ws:
                first = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                ack = s.node.ack

                async def failing(recipient: str, ids: Any) -> int:
                    raise StorageError("disk full")

                s.node.ack = failing  # type: ignore[method-assign]
                await ws.send(orjson.dumps({"ack": [first["id"]]}))
                problem = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                s.node.ack = ack  # type: ignore[method-assign]
                # Still open: a new delivery arrives, and an ack now lands.
                note = a.sign({"type": "tx/note", "tx": first["id"], "data": {}})
                await s.node.submit(orjson.dumps(note))
                later = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                await ws.send(orjson.dumps({"ack": [first["id"]]}))
                await _until(
                    "the ack", lambda: len(s.node.store.inbox(b.id, 10, 0)) == 1, timeout=10
                )
            return problem, later["id"], len(s.node.store.inbox(b.id, 10, 0))

    problem, later, left = asyncio.run(run())
    assert problem["code"] == "storage" and "disk full" in problem["detail"]
    assert later != "" and left == 1


def test_a_stream_whose_read_fails_closes_saying_why(tmp_path: Path) -> None:
    """A store or log read that fails mid-stream: the inbox stream and the WebSocket
    firehose send the problem and close 1011 with the reason, not a bare drop (1006)."""
    from chainmail import httpsig
    from chainmail.errors import StorageError

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise StorageError("database disk image is malformed")

    async def until_closed(ws: Any) -> tuple[list[dict[str, Any]], Any]:
        frames = []
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), 20)))
        return frames, ws.close_code

    async def run() -> list[tuple[list[dict[str, Any]], Any, str]]:
        closed = []
        async with serving(tmp_path) as s:
            a, b = Writer(), Writer()
            deadline = int(time.time() * 1000) + 60_000
            opened = a.sign({"type": "tx/open", "parties": [a.id, b.id], "deadline": deadline})
            await s.node.submit(orjson.dumps(opened))
            path = "/v1/inbox/stream"
            headers = httpsig.sign_request(b.keys, "GET", path, "", created=int(time.time()))
            async with websockets.connect(f"{s.base}{path}", additional_headers=headers) as ws:
                await asyncio.wait_for(ws.recv(), 10)
                s.node.store.inbox = failing  # type: ignore[method-assign]
                frames, code = await until_closed(ws)  # at the idle re-read of the store
                closed.append((frames, code, ws.close_reason or ""))
            async with websockets.connect(f"{s.base}/v1/firehose?from=0") as ws:
                await asyncio.wait_for(ws.recv(), 10)
                s.node.firehose = failing  # type: ignore[method-assign]
                await s.node.submit(a.raw({"type": "post", "text": "wakes the follower"}))
                frames, code = await until_closed(ws)
                closed.append((frames, code, ws.close_reason or ""))
        return closed

    for frames, code, reason in asyncio.run(run()):
        assert [f["code"] for f in frames] == ["storage"]
        assert code == 1011 and reason.startswith("storage: database disk image is malformed")
