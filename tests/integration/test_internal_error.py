"""A bug in a handler is a 500 problem document, and the node keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from chainmail.api import create_app
from chainmail.node import Node, NodeConfig

pytestmark = pytest.mark.integration

TX = quote("%" + "A" * 43 + "=.sha256", safe="")


def test_an_unexpected_exception_is_a_500_problem_and_the_next_request_is_served(
    tmp_path: Path,
) -> None:
    async def run() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        node = Node(NodeConfig(data_dir=tmp_path / "node", workers=0))
        await node.start()
        read_tx = node.store.tx

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise ZeroDivisionError("a bug")

        app = create_app(node, manage_node=False)
        # Starlette re-raises a handler's exception after answering it (uvicorn
        # logs it with its traceback); the client already has its answer.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
                node.store.tx = broken  # type: ignore[method-assign]
                failed = await client.get(f"/v1/transactions/{TX}")
                node.store.tx = read_tx  # type: ignore[method-assign]
                after = await client.get(f"/v1/transactions/{TX}")
                health = await client.get("/healthz")
        finally:
            await node.stop()
        return failed, after, health

    failed, after, health = asyncio.run(run())
    assert failed.status_code == 500
    assert failed.headers["content-type"].startswith("application/problem+json")
    body = failed.json()
    assert body["status"] == 500 and body["code"] == "internal"
    assert body["detail"] == "internal error: ZeroDivisionError"  # no message text leaks
    assert after.status_code == 404 and after.json()["code"] == "not_found"
    assert health.status_code == 200


def test_a_client_gone_mid_upload_is_no_bug_and_the_next_upload_is_served(tmp_path: Path) -> None:
    # Starlette's ClientDisconnect reached the catch-all handler: the node
    # logged a traceback for every upload a client gave up on.
    async def run() -> list[dict[str, Any]]:
        node = Node(NodeConfig(data_dir=tmp_path / "node", workers=0))
        await node.start()
        app = create_app(node, manage_node=False)
        sent: list[dict[str, Any]] = []
        parts: list[dict[str, Any]] = [
            {"type": "http.request", "body": b"the first part", "more_body": True},
            {"type": "http.disconnect"},
        ]

        async def receive() -> dict[str, Any]:
            return parts.pop(0) if parts else {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(dict(message))

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "PUT",
            "scheme": "http",
            "path": "/v1/blobs",
            "raw_path": b"/v1/blobs",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-length", b"1000"), (b"host", b"node")],
            "client": ("127.0.0.1", 5000),
            "server": ("node", 80),
        }
        try:
            await app(scope, receive, send)  # raised ClientDisconnect
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://node"
            ) as client:
                stored = await client.put("/v1/blobs", content=b"a whole blob")
                assert stored.status_code == 201, stored.text
        finally:
            await node.stop()
        return sent

    sent = asyncio.run(run())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400
