"""WebSocket ingest and inbox stream against a real node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import websockets

from chainmail import httpsig
from support.feeds import Writer
from support.server import Server, running

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("node")) as server:
        yield server


def ws_url(node: Server, path: str) -> str:
    return node.url.replace("http://", "ws://") + path


def test_ws_ingest_one_result_per_frame_in_order(node: Server) -> None:
    async def run() -> list[dict[str, Any]]:
        w = Writer()
        frames = [orjson.dumps(w.sign({"type": "post", "n": i})) for i in range(200)]
        frames.insert(100, b"not json")
        async with websockets.connect(ws_url(node, "/v1/ingest")) as ws:
            for f in frames:
                await ws.send(f)
            replies = [await ws.recv() for _ in frames]
            assert all(isinstance(r, str) for r in replies)  # text frames, like the others
            return [orjson.loads(r) for r in replies]

    results = asyncio.run(run())
    assert len(results) == 201
    assert [r["status"] for r in results].count(201) == 200
    assert results[100]["code"] == "invalid_format"
    indexes = [r["index"] for r in results if r["status"] == 201]
    assert indexes == sorted(indexes)


def test_ws_ingest_counts_what_it_logged_when_the_client_leaves_unanswered(
    node: Server,
) -> None:
    import httpx

    def accepted() -> float:
        text = httpx.get(f"{node.url}/metrics").text
        return float(text.split("\nchainmail_messages_accepted_total ", 1)[1].split("\n", 1)[0])

    w = Writer()
    before = accepted()

    async def run() -> None:
        async with websockets.connect(ws_url(node, "/v1/ingest")) as ws:
            for i in range(200):
                await ws.send(orjson.dumps(w.sign({"type": "post", "n": i})))
        # Closed without reading one reply.

    asyncio.run(run())
    deadline = time.monotonic() + 30
    path = f"{node.url}/v1/feeds/{quote(w.id, safe='')}/head"
    while httpx.get(path).status_code != 200 or httpx.get(path).json()["sequence"] < 200:
        assert time.monotonic() < deadline, "the frames were not all logged"
        time.sleep(0.05)
    while accepted() - before < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert accepted() - before == 200


def test_inbox_stream_redelivers_until_acked(node: Server) -> None:
    a, b = Writer(), Writer()

    def connect_headers() -> dict[str, str]:
        return httpsig.sign_request(b.keys, "GET", "/v1/inbox/stream", "", created=int(time.time()))

    async def run() -> None:
        async with websockets.connect(ws_url(node, "/v1/ingest")) as ing:
            opened = a.sign(
                {
                    "type": "tx/open",
                    "parties": [a.id, b.id],
                    "deadline": int(time.time() * 1000) + 60_000,
                }
            )
            await ing.send(orjson.dumps(opened))
            tx = orjson.loads(await ing.recv())["id"]
            note = a.sign({"type": "tx/note", "tx": tx, "data": {"hello": "b"}})
            await ing.send(orjson.dumps(note))
            await ing.recv()
        # First connection: both arrive; ack only the first; disconnect.
        async with websockets.connect(
            ws_url(node, "/v1/inbox/stream"), additional_headers=connect_headers()
        ) as s:
            first = orjson.loads(await asyncio.wait_for(s.recv(), 5))
            second = orjson.loads(await asyncio.wait_for(s.recv(), 5))
            assert first["id"] == tx and second["message"]["content"]["data"] == {"hello": "b"}
            await s.send(orjson.dumps({"ack": [first["id"]]}))
            await asyncio.sleep(0.3)
        # Reconnect: the unacked one comes again, the acked one does not.
        async with websockets.connect(
            ws_url(node, "/v1/inbox/stream"), additional_headers=connect_headers()
        ) as s:
            again = orjson.loads(await asyncio.wait_for(s.recv(), 5))
            assert again["id"] == second["id"]
            await s.send(orjson.dumps({"ack": [again["id"]]}))
            # A live delivery arrives on the open stream.
            async with websockets.connect(ws_url(node, "/v1/ingest")) as ing:
                late = a.sign({"type": "tx/note", "tx": tx, "data": {"live": True}})
                await ing.send(orjson.dumps(late))
                await ing.recv()
            live = orjson.loads(await asyncio.wait_for(s.recv(), 5))
            assert live["message"]["content"]["data"] == {"live": True}

    asyncio.run(run())


def test_inbox_stream_refuses_unsigned(node: Server) -> None:
    async def run() -> None:
        with pytest.raises(websockets.exceptions.WebSocketException):
            async with websockets.connect(ws_url(node, "/v1/inbox/stream")) as s:
                await asyncio.wait_for(s.recv(), 5)

    asyncio.run(run())


def test_firehose_ws_follows(node: Server) -> None:
    w = Writer()

    async def run() -> None:
        async with websockets.connect(ws_url(node, "/v1/firehose?from=0&follow=true")) as fh:
            async with websockets.connect(ws_url(node, "/v1/ingest")) as ing:
                await ing.send(orjson.dumps(w.sign({"type": "post", "marker": "fh"})))
                await ing.recv()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                line = orjson.loads(await asyncio.wait_for(fh.recv(), 5))
                if line["message"]["author"] == w.id:
                    return
            pytest.fail("never saw the message on the firehose")

    asyncio.run(run())


def test_firehose_followers_see_blocks_promptly(node: Server) -> None:
    import httpx

    node_id = httpx.get(node.url + "/healthz").json()["id"]
    w = Writer()

    async def run() -> float:
        async with websockets.connect(ws_url(node, "/v1/firehose?from=0&follow=true")) as fh:
            # Drain what is there, then make something happen and time the block.
            while True:
                try:
                    await asyncio.wait_for(fh.recv(), 0.5)
                except TimeoutError:
                    break
            async with websockets.connect(ws_url(node, "/v1/ingest")) as ing:
                await ing.send(orjson.dumps(w.sign({"type": "post"})))
                await ing.recv()
            started = time.monotonic()
            while True:
                line = orjson.loads(await asyncio.wait_for(fh.recv(), 10))
                if line["message"]["author"] == node_id:
                    return time.monotonic() - started

    # The block interval is 0.2 s; before the fix a follower waited up to 15 s.
    assert asyncio.run(run()) < 5


def test_an_unsigned_inbox_stream_is_refused_with_a_401_problem(node: Server) -> None:
    async def run() -> websockets.exceptions.InvalidStatus:
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(ws_url(node, "/v1/inbox/stream")):
                pass
        return refused.value

    response = asyncio.run(run()).response
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = orjson.loads(response.body)
    assert problem["code"] == "unauthorized" and problem["status"] == 401
    assert "Signature" in problem["detail"]


@pytest.mark.parametrize(
    ("query", "status"), [("from=-1", 400), ("follow=maybe", 400), ("pipeline=5", 404)]
)
def test_a_bad_firehose_stream_is_refused_with_a_problem(
    node: Server, query: str, status: int
) -> None:
    async def run() -> websockets.exceptions.InvalidStatus:
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(ws_url(node, f"/v1/firehose?{query}")):
                pass
        return refused.value

    response = asyncio.run(run()).response
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/problem+json"
    assert orjson.loads(response.body)["status"] == status
