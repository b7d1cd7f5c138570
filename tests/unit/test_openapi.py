"""The OpenAPI document: built without warnings, every route described."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

from chainmail.api import create_app, validation_detail
from chainmail.node import Node, NodeConfig


def test_the_openapi_document_builds_without_warnings(tmp_path: Path) -> None:
    node = Node(NodeConfig(data_dir=tmp_path / "node"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a duplicate operation id is only a warning
            spec = create_app(node).openapi()
    finally:
        asyncio.run(node.stop())
    operations = [op for path in spec["paths"].values() for op in path.values()]
    assert len({op["operationId"] for op in operations}) == len(operations)
    assert all(op.get("summary") for op in operations), "every route has a summary"
    assert "/v1/transactions" in spec["paths"] and "/healthz" in spec["paths"]


def test_validation_errors_read_as_one_line() -> None:
    errors = [
        {"loc": ("query", "limit"), "msg": "Input should be a valid integer", "type": "int"},
        {"loc": ("body", "msg", "content"), "msg": "Field required", "type": "missing"},
        {"loc": ("body",), "msg": "x" * 200, "type": "missing"},
    ]
    detail = validation_detail(errors)
    assert detail.startswith("invalid request: query parameter limit: Input should be")
    assert "; body field msg.content: Field required; body: " in detail
    assert "\n" not in detail and len(detail) < 250
    assert validation_detail([]) == "invalid request: it does not match the API"


def test_the_document_says_what_the_node_answers(tmp_path: Path) -> None:
    # It declared FastAPI's 422 validation error on every path with
    # parameters (the node answers 400 problem documents), one success code
    # where there are two, and no parameters for the firehose or the inbox.
    node = Node(NodeConfig(data_dir=tmp_path / "node"))
    try:
        spec = create_app(node).openapi()
    finally:
        asyncio.run(node.stop())
    paths = spec["paths"]
    operations = [op for path in paths.values() for op in path.values()]
    assert all("422" not in op["responses"] for op in operations)
    assert all(
        op["responses"]["default"]["content"]["application/problem+json"]["schema"]
        == {"$ref": "#/components/schemas/Problem"}
        for op in operations
    )
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert set(paths["/v1/messages"]["post"]["responses"]) == {"200", "201", "default"}
    assert set(paths["/v1/blobs"]["put"]["responses"]) == {"200", "201", "default"}
    firehose = {p["name"] for p in paths["/v1/firehose"]["get"]["parameters"]}
    assert firehose == {"from", "pipeline", "follow"}
    assert [p["name"] for p in paths["/v1/inbox"]["get"]["parameters"]] == ["limit"]
    for path in ("/v1/feeds/{author}", "/v1/blocks", "/v1/transactions", "/v1/identities"):
        for param in paths[path]["get"]["parameters"]:
            if param["in"] == "query":
                assert param.get("description"), (path, param["name"])
