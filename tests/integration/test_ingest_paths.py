"""The ingest paths answer the same through the bare-ASGI path and through FastAPI's route."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from chainmail.api import create_app
from chainmail.node import Node, NodeConfig
from support.feeds import Writer

pytestmark = pytest.mark.integration


def test_fast_path_and_fastapi_route_give_the_same_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fastapi_call = FastAPI.__call__
    reached: list[str] = []

    async def recording(self: FastAPI, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            reached.append(scope["path"])
        await fastapi_call(self, scope, receive, send)

    monkeypatch.setattr(FastAPI, "__call__", recording)

    async def run() -> list[tuple[int, str, bytes]]:
        node = Node(NodeConfig(data_dir=tmp_path / "node", workers=0))
        await node.start()
        app = create_app(node, manage_node=False)

        async def through_fastapi(scope: Any, receive: Any, send: Any) -> None:
            await fastapi_call(app, scope, receive, send)  # the routes, not the fast path

        writer = Writer()
        first = writer.raw({"type": "post", "text": "one"})
        second = writer.raw({"type": "post", "text": "two"})
        gap = Writer(writer.keys).raw({"type": "post", "text": "gap"})  # sequence 1 again: fork
        out: list[tuple[int, str, bytes]] = []
        try:
            for asgi in (app, through_fastapi):
                transport = httpx.ASGITransport(app=asgi)
                async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
                    for resp in (
                        await c.post("/v1/messages", content=first),
                        await c.post("/v1/messages/batch", content=b"\n".join([first, second])),
                        await c.post("/v1/messages/batch", content=b"{not json}\n" + gap),
                        await c.post("/v1/messages", content=b"x" * (64 * 1024 + 1)),
                    ):
                        out.append((resp.status_code, resp.headers["content-type"], resp.content))
        finally:
            await node.stop()
        return out

    fast, routed = (lambda r: (r[:4], r[4:]))(asyncio.run(run()))
    assert reached == []  # the first pass never reached FastAPI's stack
    # The first pass created ``first``; the second finds it and ``second`` known already.
    assert fast[0][0] == 201 and routed[0][0] == 200
    assert orjson.loads(fast[0][2]) == orjson.loads(routed[0][2])
    assert [orjson.loads(x)["status"] for x in fast[1][2].splitlines()] == [200, 201]
    assert [orjson.loads(x)["status"] for x in routed[1][2].splitlines()] == [200, 200]
    for a, b in zip(fast[1:], routed[1:], strict=True):
        assert a[:2] == b[:2]
    assert fast[2] == routed[2]
    codes = [orjson.loads(x)["code"] for x in fast[2][2].splitlines()]
    assert codes == ["invalid_format", "fork"]
    assert fast[3][0] == 413 and fast[3][1] == "application/problem+json"
    assert orjson.loads(fast[3][2])["code"] == "too_large"
    assert orjson.loads(fast[3][2])["title"] == "Invalid request"  # the body, not a message
    assert fast[3] == routed[3]


def test_ingest_paths_under_a_root_path(tmp_path: Path) -> None:
    """Behind a proxy that strips ``/api``, a batch is still a batch (and skips FastAPI)."""

    async def run() -> tuple[httpx.Response, httpx.Response]:
        node = Node(NodeConfig(data_dir=tmp_path / "node", workers=0))
        await node.start()
        app = create_app(node, manage_node=False)
        writer = Writer()
        body = b"\n".join([writer.raw({"type": "post", "text": t}) for t in ("a", "b")])
        transport = httpx.ASGITransport(app=app, root_path="/api")
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
                batch = await c.post("/api/v1/messages/batch", content=body)
                health = await c.get("/api/healthz")
        finally:
            await node.stop()
        return batch, health

    batch, health = asyncio.run(run())
    assert batch.status_code == 200, batch.text
    assert [orjson.loads(x)["status"] for x in batch.content.splitlines()] == [201, 201]
    assert health.status_code == 200
