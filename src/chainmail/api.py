"""The HTTP API, v1 (DESIGN §8), on FastAPI.

Every error is an RFC 9457 ``application/problem+json`` document whose
``code`` is the machine code of the chainmail error behind it. Message ids in
paths arrive percent-encoded (``%25`` for ``%``, ``%2F`` for ``/``): routes
take them with the ``path`` converter so an encoded ``/`` does not split them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.resources
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from http import HTTPStatus
from typing import Annotated, Any, BinaryIO, Final, TypeVar

import orjson
from fastapi import FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from chainmail import __version__, httpsig
from chainmail.errors import (
    Error,
    InvalidMessage,
    InvalidRequest,
    NotFound,
    OperationalError,
    RateLimited,
    Rejected,
    Unauthorized,
)
from chainmail.ids import is_blob_id, is_feed_id, is_msg_id
from chainmail.ingest_http import (
    BODY_IDLE_TIMEOUT_S,
    DEFAULT_BODY_BUDGET,
    JSON_TYPES,
    BodyBudget,
    ClientGone,
    IngestPaths,
    check_media,
    result_line,
    retry_after,
)
from chainmail.log import LogEntry
from chainmail.node import Node
from chainmail.ratelimit import CONNECTION_BURST, CONNECTION_RATE, RateLimiter, TokenBucket
from chainmail.sequencer import Accepted
from chainmail.store import BlockRow, MessageRow
from chainmail.witnesses import STAGES

__all__ = ["DEFAULT_LIMITS", "Limits", "create_app"]

PROBLEM: Final = "application/problem+json"
_DOCS_PAGE: Final = (importlib.resources.files("chainmail") / "static" / "docs.html").read_bytes()
NDJSON: Final = "application/x-ndjson"
_MAX_LIMIT: Final = 10_000
log = logging.getLogger(__name__)
#: A WebSocket close reason fits in a control frame (125 bytes, 2 of them the code).
_CLOSE_REASON_BYTES: Final = 100
#: Bytes of a blob read and sent at a time (``GET /v1/blobs/{id}``).
_BLOB_CHUNK: Final = 64 * 1024
#: Characters a name search may have: names are short, and SQLite refuses
#: LIKE patterns past 50,000 bytes.
_MAX_NAME_QUERY: Final = 1_000
#: Inbox entries an inbox stream reads from the store at a time.
_READ_BATCH: Final = 500
#: Seconds an inbox stream waits for a pushed delivery before reading the store anyway.
_INBOX_IDLE_S: Final = 5.0


class Limits:
    """Request size limits; defaults never throttle a legitimate heavy user."""

    def __init__(
        self,
        *,
        message_bytes: int = 64 * 1024,
        batch_bytes: int = 16 * 1024 * 1024,
        blob_bytes: int = 16 * 1024 * 1024,
        ws_frame_bytes: int = 64 * 1024,
        ws_in_flight: int = 4096,
        connection_rate: float = CONNECTION_RATE,
        connection_burst: float = CONNECTION_BURST,
        body_budget: int = DEFAULT_BODY_BUDGET,
        body_idle_timeout: float = BODY_IDLE_TIMEOUT_S,
        signed_requests: int = httpsig.DEFAULT_MAX_NONCES,
    ) -> None:
        #: Request-body bytes held at once over every request (``BodyBudget``).
        self.body_budget = body_budget
        #: Seconds a request body may pause before it is refused (408, ``BodyBudget``).
        self.body_idle_timeout = body_idle_timeout
        #: Signed requests remembered for replay detection (``httpsig.NonceCache``).
        self.signed_requests = signed_requests
        self.message_bytes = message_bytes
        self.batch_bytes = batch_bytes
        self.blob_bytes = blob_bytes
        self.ws_frame_bytes = ws_frame_bytes
        self.ws_in_flight = ws_in_flight
        self.connection_rate = connection_rate
        self.connection_burst = connection_burst


DEFAULT_LIMITS: Final = Limits()


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _problem(err: Error) -> Response:
    retry = retry_after(err)
    headers = {} if retry is None else {"Retry-After": retry}
    return Response(
        orjson.dumps(err.problem()), status_code=err.status, media_type=PROBLEM, headers=headers
    )


async def _close_saying(ws: WebSocket, err: Error) -> None:
    """End a stream with ``err``'s problem frame and a close that says why: 1008 for a
    refusal (a key rotated away), 1011 for the node's own failure (its storage)."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_text(orjson.dumps(err.problem()).decode())
        code = 1011 if err.status >= 500 else 1008
        reason = f"{err.code}: {err.detail}".encode()[:_CLOSE_REASON_BYTES]
        await ws.close(code, reason=reason.decode("utf-8", "ignore"))


def _compact(body: bytes) -> bytes:
    """A stored message (2-space JSON) as one line."""
    return orjson.dumps(orjson.loads(body))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


#: The largest integer a parameter may be: SQLite's (signed 64-bit).
_MAX_INTEGER: Final = 2**63 - 1
_MAX_DIGITS: Final = len(str(_MAX_INTEGER))
#: Rows a listing reads at a time: a larger answer is streamed page by page, so a
#: client that does not read holds one page (and the socket's buffer), not all of it.
_PAGE_ROWS: Final = 256
_Row = TypeVar("_Row")
#: What a firehose chunk or an inbox stream's read holds at most (at least one
#: message): a follower that stops reading holds this much, whatever the sizes.
_CHUNK_BYTES: Final = 256 * 1024


def _int_param(
    value: str | None, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
) -> int:
    if value is None or value == "":
        return default
    # Plain ASCII digits only: ``int`` would also take "1_0", "+3" and other scripts' digits.
    digits = value.removeprefix("-")
    if not (value.isascii() and digits.isdigit()):
        raise InvalidRequest(f"{name}: expected an integer, got {_short(value)!r}")
    if len(digits.lstrip("0")) > _MAX_DIGITS:
        # Past any bound below; and ``int`` refuses more than 4,300 digits (a 500).
        raise InvalidRequest(f"{name}: expected at most {_MAX_INTEGER}, got {_short(value)}")
    n = int(value)
    if maximum is None:
        maximum = _MAX_INTEGER  # what SQLite stores; past it a query cannot even be asked
    if n < minimum or n > maximum:
        bound = f"between {minimum} and {maximum}"
        raise InvalidRequest(f"{name}: expected {bound}, got {_short(value)}")
    return n


#: What a boolean query parameter may say.
_FLAGS: Final = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _short(text: str, limit: int = 80) -> str:
    """``text`` as an error may echo it: a client's 30 KB id is not sent back whole."""
    return text if len(text) <= limit else text[:limit] + "…"


def _msg_id_param(value: str, what: str = "message") -> str:
    """``value`` if it is a ``%…sha256`` id; else ``InvalidRequest`` (a 400, not a 404)."""
    if not is_msg_id(value):
        raise InvalidRequest(f"not a {what} id: {_short(value)!r}")
    return value


def _feed_id_param(value: str) -> str:
    if not is_feed_id(value):
        raise InvalidRequest(f"not a feed id: {_short(value)!r}")
    return value


@contextlib.asynccontextmanager
async def _body(budget: BodyBudget, request: Request, limit: int) -> AsyncIterator[bytes]:
    """``BodyBudget.body`` for a route: a client gone mid-body is Starlette's
    ``ClientDisconnect``."""
    try:
        async with budget.body(request.scope, request.receive, limit) as data:
            yield data
    except ClientGone as exc:
        raise ClientDisconnect from exc


def _message_json(row: MessageRow, block: int | None) -> bytes:
    return (
        b'{"message":'
        + _compact(row.body)
        + b',"pipeline":'
        + str(row.pipeline).encode()
        + b',"index":'
        + str(row.index).encode()
        + b',"received":'
        + str(row.received).encode()
        + b',"tx":'
        + orjson.dumps(row.tx)
        + b',"block":'
        + orjson.dumps(block)
        + b"}"
    )


def _firehose_line(entry: LogEntry) -> bytes:
    return (
        b'{"pipeline":'
        + str(entry.pipeline).encode()
        + b',"index":'
        + str(entry.index).encode()
        + b',"id":'
        + orjson.dumps(entry.id)
        + b',"message":'
        + _compact(entry.body)
        + b"}\n"
    )


def _block_json(block: BlockRow, *, records: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "height": block.height,
        "id": block.id,
        "message": orjson.loads(block.body),
    }
    if records:
        out["records"] = block.records
    return out


class _Metrics:
    def __init__(self) -> None:
        self.accepted = 0
        self.duplicates = 0
        self.rejected: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.started = time.time()

    def count(self, result: Accepted | Error) -> None:
        if isinstance(result, Accepted):
            if result.created:
                self.accepted += 1
            else:
                self.duplicates += 1
        else:
            self.rejected[result.code] += 1


_PROBLEM_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string", "description": "the machine code (DESIGN §8)"},
        "detail": {"type": "string"},
    },
    "required": ["status", "code", "detail"],
}
#: The most blocks and identities one listing gives (the others: ``_MAX_LIMIT``).
_MAX_BLOCKS: Final = 1000
_MAX_IDENTITIES: Final = 1000


def _query(description: str) -> Any:
    """A query parameter read as text (the handler checks it: a 400 problem), described."""
    return Query(description=description)


def _raw_query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    """An OpenAPI parameter of a handler that reads the raw query itself."""
    return {"name": name, "in": "query", "schema": schema, "description": description}


def _document_api(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` as the node answers: bad input is a 400 problem document, not
    FastAPI's 422 (the handlers check their parameters themselves), and every
    error an RFC 9457 document."""
    spec.setdefault("components", {}).setdefault("schemas", {})["Problem"] = _PROBLEM_SCHEMA
    problem = {
        "description": "An RFC 9457 problem document with a machine `code` (400 bad input,"
        " 401 unsigned or stale, 404 not found, 409 fork or gap, 413 too large, 415"
        " media type, 422 tx rules, 429 rate limited, 503 unavailable)",
        "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for operations in spec.get("paths", {}).values():
        for op in operations.values():
            op["responses"].pop("422", None)
            op["responses"]["default"] = problem
    schemas = spec["components"]["schemas"]
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return spec


class _NodeApp(FastAPI):
    """FastAPI, but the ingest paths go straight to ``ingest_http`` (see there for why)."""

    ingest_paths: IngestPaths | None = None

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = _document_api(super().openapi())
        return self.openapi_schema

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        paths = self.ingest_paths
        if paths is not None and paths.match(scope):
            await paths(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def validation_detail(errors: Sequence[Any]) -> str:
    """One line for FastAPI's validation errors: ``query parameter limit: Input should be …``."""
    parts = []
    for error in errors:
        where = [str(part) for part in error.get("loc", ())]
        within = ".".join(where[1:])
        if where and where[0] == "body":
            place = f"body field {within}" if within else "body"
        elif within:
            place = f"{where[0]} parameter {within}"
        else:
            place = "request"
        parts.append(f"{place}: {_short(str(error.get('msg', 'invalid')))}")
    return "invalid request: " + ("; ".join(parts) or "it does not match the API")


async def _listing(
    key: bytes,
    limit: int,
    page: Callable[[_Row | None, int], Awaitable[list[_Row]]],
    render: Callable[[_Row], bytes],
) -> Response:
    """``{key: [...]}`` of up to ``limit`` items that ``page(last, n)`` reads after
    ``last`` (None: the first page), ``_PAGE_ROWS`` at a time.

    The first page is read before answering, so its errors are problems with
    their status; an answer longer than one page is streamed, so memory holds
    one page of it however large it is and however slowly the client reads.
    """
    first = await page(None, min(limit, _PAGE_ROWS))
    head = b'{"' + key + b'":['
    if len(first) < _PAGE_ROWS or len(first) >= limit:
        return Response(
            head + b",".join(render(i) for i in first) + b"]}", media_type="application/json"
        )

    async def stream() -> AsyncIterator[bytes]:
        rows, sent = first, 0
        yield head
        while rows:
            yield (b"," if sent else b"") + b",".join(render(i) for i in rows)
            sent += len(rows)
            if len(rows) < _PAGE_ROWS or sent >= limit:
                break
            rows = await page(rows[-1], min(limit - sent, _PAGE_ROWS))
        yield b"]}"

    return StreamingResponse(stream(), media_type="application/json")


def _anchor_health(node: Node) -> dict[str, Any] | None:
    anchorer = node.anchorer
    if anchorer is None:
        return None
    pending = anchorer.pending
    return {
        "chain": anchorer.chain,
        "interval": anchorer.config.interval,
        "confirmations": anchorer.config.confirmations,
        "pending": None
        if pending is None
        else {
            "height": pending.height,
            "txid": pending.txid,
            "rate": pending.rate,
            "earlier": list(pending.earlier),
        },
        "anchored": node.store.latest_anchored(),
    }


def create_app(
    node: Node,
    *,
    limits: Limits = DEFAULT_LIMITS,
    manage_node: bool = True,
    require_content_digest: bool = False,
) -> FastAPI:
    """The FastAPI application serving ``node``. With ``manage_node`` it starts and stops it.

    With ``require_content_digest`` a signed request with a body (an ack) must
    sign its ``Content-Digest`` too (``httpsig.COVERED_WITH_DIGEST``).
    """
    metrics = _Metrics()
    # Nonces seen before this start are gone with the old process's memory: a
    # request signed before it is refused rather than taken as new (a replay).
    nonces = httpsig.NonceCache(max_entries=limits.signed_requests, not_before=int(time.time()))
    # Per client connection (address and port), before any signature is checked,
    # so a flood is refused for the cost of a token count.
    connections = RateLimiter(limits.connection_rate, limits.connection_burst, label="connection")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_node:
            await node.start()
        try:
            yield
        finally:
            if manage_node:
                await node.stop()

    app = _NodeApp(
        title="chainmail node",
        version=__version__,
        description=(
            "Blockchain-style messaging: submit signed SSB messages, receive deliveries, follow "
            "the firehose, and fetch proofs that anyone can verify without trusting the node. "
            "Errors are RFC 9457 problem documents with a machine `code`."
        ),
        lifespan=lifespan,
        # FastAPI's Swagger UI loads its scripts from a CDN; this page works offline.
        docs_url=None,
        redoc_url=None,
    )
    app.state.node = node
    app.state.metrics = metrics

    @app.exception_handler(Error)
    async def _on_error(_: Request, exc: Error) -> Response:
        return _problem(exc)

    @app.exception_handler(RequestValidationError)
    async def _on_validation(_: Request, exc: RequestValidationError) -> Response:
        return _problem(InvalidRequest(validation_detail(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(_: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return _problem(NotFound(f"no such path: {exc.detail}"))
        err = Error(str(exc.detail), code="invalid_format" if exc.status_code < 500 else "internal")
        title = HTTPStatus(exc.status_code).phrase
        return Response(
            orjson.dumps({**err.problem(), "title": title, "status": exc.status_code}),
            status_code=exc.status_code,
            media_type=PROBLEM,
            headers=exc.headers,  # a 405's Allow
        )

    @app.exception_handler(ClientDisconnect)
    async def _on_gone(_: Request, exc: ClientDisconnect) -> Response:
        # The client went away before its body was all read: nobody reads this
        # answer, and it is no bug to log with a traceback (``_on_bug``).
        return _problem(InvalidRequest("the client disconnected before its body was read"))

    @app.exception_handler(Exception)
    async def _on_bug(_: Request, exc: Exception) -> Response:
        # A bug, not bad input: logged with its traceback (Starlette re-raises it
        # after this answer), and the client still gets a problem document.
        return _problem(OperationalError(f"internal error: {type(exc).__name__}"))

    def authenticate_headers(request: Request) -> httpsig.SignedRequest:
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        return httpsig.verify_headers(
            request.method,
            raw_path.decode("latin-1"),
            request.scope.get("query_string", b"").decode("latin-1"),
            request.headers,
            now=int(time.time()),
            nonces=nonces,
            source=httpsig.client_source(request.client.host if request.client else None),
        )

    def authenticate(request: Request) -> str:
        """The signer of a request without a body (its body, if any, is not read)."""
        me = authenticate_headers(request).check_body(b"")
        node.check_live_key(me)
        return me

    # --- ingest -------------------------------------------------------------------------

    # Both ingest paths are answered by ``ingest_http`` before FastAPI's stack
    # (``_NodeApp.__call__``); the routes below declare them for the OpenAPI
    # document and answer through the same code when reached another way.
    budget = BodyBudget(limits.body_budget, idle_timeout=limits.body_idle_timeout)
    paths = IngestPaths(
        node.submit_many,
        throttle=lambda key, n: connections.take(key, n, now=time.monotonic()),
        count=metrics.count,
        message_bytes=limits.message_bytes,
        batch_bytes=limits.batch_bytes,
        budget=budget,
    )
    app.ingest_paths = paths

    async def via_ingest_paths(request: Request, batch: bool) -> Response:
        start: dict[str, Any] = {}
        parts: list[bytes] = []

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                parts.append(message.get("body", b""))

        await (paths.batch if batch else paths.message)(request.scope, request.receive, send)
        if not start:  # the client went away before its body was read: no one to answer
            return Response(status_code=499)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
        headers.pop("content-length", None)
        return Response(b"".join(parts), status_code=start["status"], headers=headers)

    @app.post(
        "/v1/messages",
        status_code=201,
        tags=["ingest"],
        summary="Submit one signed message",
        description="201 with `{id, pipeline, index}` once the message is durable in the "
        "log; the same message again gives 200 and the same body. The body is the message "
        "as JSON (`Content-Type: application/json` or any `application/…+json`, or none); "
        "any other type is refused with 415 `unsupported_media_type` before the body is read. "
        "A body that pauses `serve --body-idle-timeout` seconds (30), or brings under 8 KiB/s "
        "over such a span, is refused with 408 `request_timeout`; one client address holding an "
        "eighth of `--body-budget` in bodies gets 429 `rate_limited`.",
        responses={200: {"description": "The same message again: nothing new was logged"}},
    )
    async def post_message(request: Request) -> Response:
        return await via_ingest_paths(request, batch=False)

    @app.post(
        "/v1/messages/batch",
        tags=["ingest"],
        summary="Submit messages as NDJSON",
        description="One result line per input line, in order: the success object or a "
        "problem object (`status`, `code`, `detail`) for that line alone (a blank line "
        "within gets one too; newlines after the last message get none). The body is "
        "`Content-Type: application/x-ndjson` (or `application/ndjson`, `application/jsonl`, "
        "`application/x-jsonlines`, `application/jsonlines`, `application/json`, any "
        "`application/…+json`, or none); any other type is refused with 415 "
        "`unsupported_media_type`. A body that pauses `serve --body-idle-timeout` seconds "
        "(30), or brings under 8 KiB/s over such a span, is refused with 408 `request_timeout`.",
    )
    async def post_batch(request: Request) -> Response:
        return await via_ingest_paths(request, batch=True)

    @app.websocket("/v1/ingest")
    async def ws_ingest(ws: WebSocket) -> None:
        await ws.accept()
        # One future per frame, straight from ingest (no task per message).
        pending: asyncio.Queue[asyncio.Future[list[Accepted | Error]] | None] = asyncio.Queue(
            maxsize=limits.ws_in_flight
        )

        def count(done: asyncio.Future[list[Accepted | Error]]) -> None:
            # Counted when the result is known, not when its reply is sent: a
            # client that closes without reading its replies still logged them.
            if not done.cancelled() and done.exception() is None:
                for result in done.result():
                    metrics.count(result)

        async def reply() -> None:
            gone = False
            while True:
                fut = await pending.get()
                if fut is None:
                    return
                (result,) = await fut
                if gone:
                    continue
                try:
                    # A text frame, as every other stream of the API sends.
                    await ws.send_text(result_line(result).decode("utf-8"))
                except (WebSocketDisconnect, RuntimeError):
                    # The client is gone. Keep taking from the queue: the loop
                    # below may be waiting for room in it while it reads the
                    # frames that arrived before the disconnect, and would
                    # wait for ever (handler, queue and futures never freed).
                    gone = True

        bucket = TokenBucket(limits.connection_rate, limits.connection_burst)
        sender = asyncio.create_task(reply())
        try:
            while True:
                frame = await ws.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                data = frame.get("bytes") or (frame.get("text") or "").encode("utf-8")
                refusal: Error | None = None
                try:
                    bucket.take(1, now=time.monotonic())
                except RateLimited as exc:
                    refusal = exc
                if refusal is None and len(data) > limits.ws_frame_bytes:
                    refusal = InvalidMessage(
                        f"frame of {len(data)} bytes exceeds the limit", code="too_large"
                    )
                if refusal is not None:
                    done: asyncio.Future[list[Accepted | Error]] = (
                        asyncio.get_running_loop().create_future()
                    )
                    done.set_result([refusal])
                    count(done)
                    await pending.put(done)
                    continue
                queued = node.enqueue([data])
                queued.add_done_callback(count)
                await pending.put(queued)
            await pending.put(None)
            await sender
        except WebSocketDisconnect:
            pass
        finally:
            sender.cancel()

    # --- messages and feeds -------------------------------------------------------------

    def _block_of(row: MessageRow) -> int | None:
        block = node.store.block_covering(row.pipeline, row.index)
        return None if block is None else block.height

    @app.get("/v1/messages/batch", include_in_schema=False)
    async def get_batch() -> Response:
        # Not a message id: without this route the batch path read as one.
        raise StarletteHTTPException(405, "POST a batch of messages", headers={"Allow": "POST"})

    @app.get("/v1/ingest", include_in_schema=False)
    @app.post("/v1/ingest", include_in_schema=False)
    @app.get("/v1/inbox/stream", include_in_schema=False)
    async def websocket_only(request: Request) -> Response:
        raise InvalidRequest(
            f"{request.url.path} is a WebSocket: open it with an Upgrade: websocket request"
        )

    @app.get(
        "/v1/messages/{msg_id:path}/proof",
        tags=["proofs"],
        summary="Inclusion proof of a message under the first block covering it",
    )
    async def get_message_proof(msg_id: str) -> Response:
        return _json(node.message_proof(_msg_id_param(msg_id)))

    @app.get("/v1/messages/{msg_id:path}", tags=["messages"], summary="A message and where it is")
    async def get_message(msg_id: str) -> Response:
        row = node.store.message(_msg_id_param(msg_id))
        if row is None:
            raise NotFound(f"no message {msg_id}")
        return Response(_message_json(row, _block_of(row)), media_type="application/json")

    @app.get("/v1/feeds/{author:path}/head", tags=["feeds"], summary="The newest message of a feed")
    async def get_head(author: str) -> Response:
        head = node.log.head(_feed_id_param(author))
        if head is None:
            raise NotFound(f"no messages from {author}")
        return _json({"sequence": head.sequence, "id": head.id})

    @app.get(
        "/v1/feeds/{author:path}",
        tags=["feeds"],
        summary="A feed's messages, oldest first (SSB createHistoryStream)",
    )
    async def get_feed(
        author: str,
        after: Annotated[
            str | None, _query("a sequence number: the messages after it (default 0)")
        ] = None,
        limit: Annotated[
            str | None,
            _query(f"at most this many messages (default 100, at most {_MAX_LIMIT:,})"),
        ] = None,
    ) -> Response:
        feed = _feed_id_param(author)
        since = _int_param(after, "after", 0)
        wanted = _int_param(limit, "limit", 100, minimum=1, maximum=_MAX_LIMIT)

        async def page(last: MessageRow | None, n: int) -> list[MessageRow]:
            return await node.read(
                node.store.feed, feed, since if last is None else last.sequence, n
            )

        return await _listing(b"messages", wanted, page, lambda r: _compact(r.body))

    # --- transactions -------------------------------------------------------------------

    @app.get("/v1/transactions/{tx_id:path}", tags=["transactions"], summary="One transaction")
    async def get_tx(tx_id: str) -> Response:
        row = node.store.tx(_msg_id_param(tx_id, "transaction"))
        if row is None:
            raise NotFound(f"no transaction {tx_id}")
        return _json(row.to_json())

    @app.get("/v1/transactions", tags=["transactions"], summary="Transactions, newest first")
    async def list_txs(
        party: Annotated[str | None, _query("only the txs this @….ed25519 is a party of")] = None,
        status: Annotated[
            str | None, _query("only txs in this state: open, finished or timed_out")
        ] = None,
        limit: Annotated[
            str | None, _query(f"at most this many txs (default 100, at most {_MAX_LIMIT:,})")
        ] = None,
        before: Annotated[
            str | None,
            Query(
                description="the next page: the last listed tx's id (the txs listed after"
                " it), or a time (node clock ms, exclusive: only txs opened before it). Txs"
                " opened in one millisecond (one batch) share an `opened`, so page by id."
            ),
        ] = None,
    ) -> Response:
        if status is not None and status not in ("open", "finished", "timed_out"):
            raise InvalidRequest(f"status: expected open, finished or timed_out, got {status!r}")
        after_tx = None
        if before is not None and before.startswith("%"):
            after_tx = _msg_id_param(before, "transaction")
        rows = node.store.list_txs(
            party=None if party is None else _feed_id_param(party),
            status=status,
            limit=_int_param(limit, "limit", 100, minimum=1, maximum=_MAX_LIMIT),
            before=None
            if before is None or after_tx is not None
            else _int_param(before, "before", 0),
            after_tx=after_tx,
        )
        return _json({"transactions": [r.to_json() for r in rows]})

    # --- blocks and the log -------------------------------------------------------------

    @app.get("/v1/blocks", tags=["blocks"], summary="Blocks after a height")
    async def list_blocks(
        after: Annotated[str | None, _query("a height: the blocks after it (default 0)")] = None,
        limit: Annotated[
            str | None,
            _query(f"at most this many blocks (default 100, at most {_MAX_BLOCKS:,})"),
        ] = None,
    ) -> Response:
        rows = node.store.blocks(
            _int_param(after, "after", 0),
            _int_param(limit, "limit", 100, minimum=1, maximum=_MAX_BLOCKS),
        )
        return _json({"blocks": [_block_json(b, records=False) for b in rows]})

    @app.get(
        "/v1/blocks/{height}/records/{tx_id:path}/proof",
        tags=["proofs"],
        summary="Inclusion proof of a transaction record in a block",
    )
    async def get_record_proof(height: str, tx_id: str) -> Response:
        from chainmail import blocks as blocks_

        _msg_id_param(tx_id, "transaction")
        block = node.store.block(_int_param(height, "height", 0))
        if block is None:
            raise NotFound(f"no block {height}")
        for index, record in enumerate(block.records):
            if record["tx"] == tx_id:
                content = orjson.loads(block.body)["content"]
                return _json(
                    {
                        "tx": tx_id,
                        "record": record,
                        "index": index,
                        "count": len(block.records),
                        "root": content["txs"]["root"],
                        "proof": [_b64(p) for p in blocks_.record_proof(block.records, index)],
                    }
                )
        raise NotFound(f"transaction {tx_id} is not in block {height}")

    @app.get(
        "/v1/blocks/{height}",
        tags=["blocks"],
        summary="A block with its records",
        description="The block's signed message and its tx records; `stages`: the node's "
        "`block/stage` messages for it (each stage's witnesses, their `block/sign` messages "
        "and the Merkle root of those), in stage order; `sealed`: every stage of "
        "`/healthz`'s `stages` is recorded (true on a node without witnesses); "
        "`anchored`: the first block at this height or above that is anchored in Bitcoin "
        "(`height`, and its `anchor` messages: `id`, `block`, `height`, `chain`, `txid`, "
        "`ots`, the blob of the OpenTimestamps proof), or null. An anchor of a later block "
        "covers this one through the blocks' `prev` links.",
    )
    async def get_block(height: str) -> Response:
        block = node.store.block(_int_param(height, "height", 0))
        if block is None:
            raise NotFound(f"no block {height}")
        out = _block_json(block, records=True)
        out["stages"] = node.store.block_stages(block.height)
        witnessed = bool(node.config.witnesses)
        out["sealed"] = not witnessed or len(out["stages"]) >= len(STAGES)
        anchored = node.store.anchored(block.height)
        out["anchored"] = (
            None
            if anchored is None
            else {
                "height": anchored[0],
                "anchors": [{k: v for k, v in a.items() if k != "type"} for a in anchored[1]],
            }
        )
        return _json(out)

    @app.get(
        "/v1/log/{pipeline}/checkpoint",
        tags=["proofs"],
        response_class=PlainTextResponse,
        summary="The pipeline's current signed C2SP checkpoint",
    )
    async def get_checkpoint(pipeline: str) -> Response:
        text = node.checkpoint_text(_int_param(pipeline, "pipeline", 0))
        return PlainTextResponse(text, headers={"X-Verifier-Key": node.verifier_key()})

    @app.get(
        "/v1/log/{pipeline}/consistency",
        tags=["proofs"],
        summary="RFC 9162 consistency proof between two sizes",
    )
    async def get_consistency(
        pipeline: str,
        from_: Annotated[
            str | None,
            Query(alias="from", description="the older tree size (≥ 1; required)"),
        ] = None,
        to: Annotated[
            str | None,
            Query(description="the newer tree size (≥ from; default: the log's size now)"),
        ] = None,
    ) -> Response:
        number = _int_param(pipeline, "pipeline", 0)
        node.check_pipeline(number)
        current = node.log.size(number)
        if from_ is None or from_ == "":
            raise InvalidRequest("missing query parameter from (the older tree size)")
        size1 = _int_param(from_, "from", 1, minimum=1, maximum=current)
        size2 = _int_param(to, "to", current, minimum=size1, maximum=current)
        proof = node.consistency(number, size1, size2)
        return _json({"from": size1, "to": size2, "proof": [_b64(p) for p in proof]})

    # --- inbox --------------------------------------------------------------------------

    def _entries(recipient: str, limit: int, after: int = 0) -> list[tuple[int, str, bytes]]:
        return [(d.delivery, d.id, d.body) for d in node.store.inbox(recipient, limit, after)]

    def _entry_json(delivery: int, mid: str, body: bytes) -> bytes:
        return (
            b'{"delivery":'
            + str(delivery).encode()
            + b',"id":'
            + orjson.dumps(mid)
            + b',"message":'
            + _compact(body)
            + b"}"
        )

    @app.get(
        "/v1/inbox",
        tags=["inbox"],
        summary="Your unacknowledged deliveries (signed request)",
        description="Signed with RFC 9421 by the recipient's key (401 `unauthorized` when the "
        "signature, its `created` window or its nonce does not hold). A key that has rotated "
        "away (`key/rotate`) reads and acks nothing more: 403 `key_rotated`, naming the new key; "
        "the same holds for `POST /v1/inbox/ack` and `WS /v1/inbox/stream`.",
        # Read from the raw query: a bad limit is refused before the signature.
        openapi_extra={
            "parameters": [
                _raw_query(
                    "limit",
                    "at most this many entries",
                    type="integer",
                    minimum=1,
                    maximum=_MAX_LIMIT,
                    default=100,
                )
            ]
        },
    )
    async def get_inbox(request: Request) -> Response:
        # The query first: a bad limit must not use up the signature's nonce.
        limit = _int_param(
            request.query_params.get("limit"), "limit", 100, minimum=1, maximum=_MAX_LIMIT
        )
        me = authenticate(request)

        async def page(last: tuple[int, str, bytes] | None, n: int) -> list[tuple[int, str, bytes]]:
            return await node.read(_entries, me, n, 0 if last is None else last[0])

        return await _listing(b"entries", limit, page, lambda e: _entry_json(*e))

    @app.post(
        "/v1/inbox/ack",
        tags=["inbox"],
        summary="Acknowledge deliveries (signed request)",
        description='Body `{"ids": ["%…"]}` → `{"acked": n}`. Signed as every inbox '
        "request (RFC 9421); the SDK also sends the body's RFC 9530 `Content-Digest` "
        '(`sha-256=:…:`) and covers `"content-digest"`, so the ids cannot be changed on the '
        "way. A node started with `serve --require-content-digest` refuses an ack signed "
        "without it (401 `unauthorized`).",
    )
    async def post_ack(request: Request) -> Response:
        # The signature needs only the headers (a covered Content-Digest is one):
        # checked first, so nobody unsigned has the node read a body, and the
        # body then against the digest it signed.
        signed = authenticate_headers(request)
        check_media(request.scope, JSON_TYPES)
        async with _body(budget, request, 4 * 1024 * 1024) as body:
            me = signed.check_body(body, require_digest=require_content_digest)
            node.check_live_key(me)
            ids = _parse_ack(body)
        acked = await node.ack(me, ids)
        return _json({"acked": acked})

    @app.websocket("/v1/inbox/stream")
    async def ws_inbox(ws: WebSocket) -> None:
        raw_path = ws.scope.get("raw_path") or ws.url.path.encode()
        try:
            me = httpsig.verify_request(
                "GET",
                raw_path.decode("latin-1"),
                ws.scope.get("query_string", b"").decode("latin-1"),
                ws.headers,
                now=int(time.time()),
                nonces=nonces,
                source=httpsig.client_source(ws.client.host if ws.client else None),
            )
            node.check_live_key(me)
        except (Unauthorized, RateLimited, Rejected) as exc:
            # Refused before the upgrade, as an HTTP 401 (429) problem document like
            # every other error (a close before accepting sends a bare 403).
            await ws.send_denial_response(_problem(exc))
            return
        await ws.accept()
        last = 0

        async def acks() -> None:
            while True:
                frame = await ws.receive()
                if frame["type"] == "websocket.disconnect":
                    return
                data = frame.get("bytes") or (frame.get("text") or "").encode("utf-8")
                try:
                    ids = _parse_ack(data, key="ack")
                except InvalidMessage as exc:
                    await ws.send_text(orjson.dumps(exc.problem()).decode())
                    continue
                node.check_live_key(me)  # rotated away since the handshake: acks nothing
                try:
                    await node.ack(me, ids)
                except Error as exc:
                    # Not written (the store failed, the node is stopping): the
                    # entries stay and come again; the client hears why, and the
                    # stream goes on instead of closing with nothing said.
                    await ws.send_text(orjson.dumps(exc.problem()).decode())

        def frames(after: int) -> tuple[list[tuple[int, str]], bool]:
            """Frames after ``after`` (``_READ_BATCH`` and ``_CHUNK_BYTES`` at most), and
            whether more may follow. Read and encoded off the event loop: a wake
            reaches every follower of a recipient at once, and none may hold up the
            others."""
            read = _entries(me, _READ_BATCH, after)
            out: list[tuple[int, str]] = []
            size = 0
            for delivery, mid, body in read:
                if out and size >= _CHUNK_BYTES:
                    return out, True
                text = _entry_json(delivery, mid, body).decode("utf-8")
                out.append((delivery, text))
                size += len(text)
            return out, len(read) == _READ_BATCH

        reader = asyncio.create_task(acks())
        # New deliveries are pushed to the feed as the writer projects them; the
        # store is read at the start, after falling behind, and when idle
        # (``chainmail.inboxfeed``). Either way a frame goes out once, in order.
        with node.inbox_feed(me) as feed:
            try:
                while not reader.done():
                    # A key that rotated away since the handshake (it may be a
                    # leaked one) is sent nothing more: checked every round.
                    node.check_live_key(me)
                    if feed.stale:
                        feed.stale = False
                        entries, more = await node.read(frames, last)
                        for delivery, frame in entries:
                            await ws.send_text(frame)
                            last = delivery
                        if more or feed.stale:
                            # More to read, or the queue overflowed during the
                            # read: what it dropped may be newer than the read,
                            # so only another read may move ``last`` past it.
                            feed.stale = True
                            continue
                    for d in feed.take(last):
                        await ws.send_text(_entry_json(d.delivery, d.id, d.body).decode("utf-8"))
                        last = d.delivery
                    if not feed.stale and not feed.pending:
                        waiter = asyncio.create_task(feed.wait(_INBOX_IDLE_S))
                        await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                        waiter.cancel()
                if not reader.cancelled() and isinstance(reader.exception(), Error):
                    raise reader.exception()  # type: ignore[misc]
            except (WebSocketDisconnect, RuntimeError):
                pass
            except Error as exc:
                await _close_saying(ws, exc)
            finally:
                reader.cancel()

    # --- firehose -----------------------------------------------------------------------

    def _firehose_params(
        params: Mapping[str, str], *, follow_default: bool = False
    ) -> tuple[int, int, bool]:
        if params.get("pipeline") in (None, "") and node.log.pipelines > 1:
            # ``from`` is an index within one pipeline: with several, say which.
            raise InvalidRequest(
                f"missing query parameter pipeline: the node has {node.log.pipelines} "
                f"pipelines (0 to {node.log.pipelines - 1})"
            )
        pipeline = _int_param(params.get("pipeline"), "pipeline", 0)
        start = _int_param(params.get("from"), "from", 0)
        flag = params.get("follow")
        if not flag:
            return pipeline, start, follow_default
        if flag.lower() not in _FLAGS:
            raise InvalidRequest(f"follow: expected true or false, got {_short(flag)!r}")
        return pipeline, start, _FLAGS[flag.lower()]

    def _firehose_chunk(pipeline: int, position: int) -> tuple[bytes, int]:
        """Lines from ``position`` (up to ``_PAGE_ROWS``, and ``_CHUNK_BYTES``
        past the first), and the position after them."""
        lines: list[bytes] = []
        size = 0
        for entry in node.firehose(pipeline, position, _PAGE_ROWS):
            if lines and size >= _CHUNK_BYTES:
                break
            line = _firehose_line(entry)
            lines.append(line)
            size += len(line)
            position = entry.index + 1
        return b"".join(lines), position

    async def _firehose(pipeline: int, start: int, follow: bool) -> AsyncIterator[bytes]:
        position = start
        signal = node.log_signal
        assert signal is not None
        while True:
            # Marked before the read: a message logged while the reader thread
            # looks wakes the wait below, which would otherwise begin after its
            # wake and sleep through it (until the next message or the timeout).
            fired = signal.mark()
            # Off the event loop, like the inbox streams: followers read the log
            # at once after every wake.
            chunk, position = await node.read(_firehose_chunk, pipeline, position)
            if chunk:
                yield chunk
                continue
            if not follow or node.closing:
                return
            await signal.wait(15.0, since=fired)
            if node.closing:  # the server is shutting down: the body ends, whole lines sent
                return

    @app.get(
        "/v1/firehose",
        tags=["firehose"],
        summary="Every message in log order (NDJSON)",
        # Read from the raw query, as the WebSocket's are (``_firehose_params``).
        openapi_extra={
            "parameters": [
                _raw_query(
                    "from",
                    "the log index to start at, within the pipeline",
                    type="integer",
                    minimum=0,
                    default=0,
                ),
                _raw_query(
                    "pipeline",
                    "the pipeline (required when the node has more than one)",
                    type="integer",
                    minimum=0,
                    default=0,
                ),
                _raw_query(
                    "follow", "keep the stream open for new messages", type="boolean", default=False
                ),
            ]
        },
    )
    async def get_firehose(request: Request) -> Response:
        pipeline, start, follow = _firehose_params(request.query_params)
        node.check_pipeline(pipeline)  # NotFound for an unknown pipeline, before streaming
        return StreamingResponse(_firehose(pipeline, start, follow), media_type=NDJSON)

    @app.websocket("/v1/firehose")
    async def ws_firehose(ws: WebSocket) -> None:
        try:
            # A WebSocket follows by default; follow=false closes at the end of the log.
            pipeline, start, follow = _firehose_params(ws.query_params, follow_default=True)
            node.check_pipeline(pipeline)
        except Error as exc:
            await ws.send_denial_response(_problem(exc))
            return
        await ws.accept()

        async def pump() -> None:
            async for chunk in _firehose(pipeline, start, follow):
                for line in chunk.splitlines():
                    await ws.send_text(line.decode("utf-8"))
            await ws.close()

        async def watch() -> None:
            # Frames from a firehose client are ignored; this notices it leaving.
            while (await ws.receive())["type"] != "websocket.disconnect":
                pass

        pumping = asyncio.create_task(pump())
        tasks = {pumping, asyncio.create_task(watch())}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            failed = pumping.exception() if pumping.done() and not pumping.cancelled() else None
            if isinstance(failed, Error):
                log.error("firehose stream: %s", failed.diagnostics())
                await _close_saying(ws, failed)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            for task in tasks:
                task.cancel()

    # --- channels ---------------------------------------------------------------------

    @app.get(
        "/v1/channels/{chan:path}/messages",
        tags=["channels"],
        summary="A channel's chan/open, chan/share and chan/msg messages (ciphertext)",
        description="In log order from `after` (a count); members decrypt them locally.",
    )
    async def get_channel_messages(
        chan: str,
        after: Annotated[
            str | None,
            _query("a count: the messages after the first `after` of the channel (default 0)"),
        ] = None,
        limit: Annotated[
            str | None,
            _query(f"at most this many messages (default 1,000, at most {_MAX_LIMIT:,})"),
        ] = None,
    ) -> Response:
        channel = _msg_id_param(chan, "channel")
        since = _int_param(after, "after", 0)
        wanted = _int_param(limit, "limit", 1000, minimum=1, maximum=_MAX_LIMIT)
        read = [0]  # rows read so far: ``after`` counts messages

        async def page(_: MessageRow | None, n: int) -> list[MessageRow]:
            rows = await node.read(node.store.channel_messages, channel, since + read[0], n)
            if not rows and not read[0]:  # past the end of a channel, or no channel at all
                opened = await node.read(node.store.message, channel)
                if opened is None or opened.type != "chan/open":
                    what = "" if opened is None else f": {chan} is a {opened.type or 'message'}"
                    raise NotFound(f"no channel {chan}{what}")
            read[0] += len(rows)
            return rows

        return await _listing(b"messages", wanted, page, lambda r: _compact(r.body))

    # --- identities -------------------------------------------------------------------

    @app.get(
        "/v1/identities/{ident:path}",
        tags=["identities"],
        summary="An identity: self-claims, attestation, roles, owner, rotation",
    )
    async def get_identity(ident: str) -> Response:
        return _json(node.identity_info(_feed_id_param(ident)))

    @app.get(
        "/v1/identities",
        tags=["identities"],
        summary="Identities whose claimed or attested name contains the text",
    )
    async def search_identities(
        name: Annotated[str | None, _query("text to look for in the identities' names")] = None,
        limit: Annotated[
            str | None,
            _query(f"at most this many identities (default 100, at most {_MAX_IDENTITIES:,})"),
        ] = None,
    ) -> Response:
        if not name:
            raise InvalidRequest("query parameter name: expected some text")
        if len(name) > _MAX_NAME_QUERY:
            raise InvalidRequest(
                f"query parameter name: {len(name)} characters, at most {_MAX_NAME_QUERY}",
                code="too_large",
            )
        found = await node.read(
            node.search_identities,
            name,
            _int_param(limit, "limit", 100, minimum=1, maximum=_MAX_IDENTITIES),
        )
        return _json({"identities": found})

    # --- blobs --------------------------------------------------------------------------

    @app.put(
        "/v1/blobs",
        tags=["blobs"],
        summary="Store content-addressed bytes",
        description="The body's bytes, stored under their SHA-256 (`&….sha256`): 201 when new, "
        "200 when stored already. A blob is kept for good once a logged message names it (a "
        "`doc`'s `blob`); one still named by none after the node's grace (`serve --blob-grace`, "
        "24 h by default) is deleted, and storing it again restarts the grace. While the "
        "unnamed blobs reach `serve --blob-pending-limit` bytes (1 GiB), or 100,000 blobs, more "
        "are refused with 429 `rate_limited` and a `Retry-After`. Bodies up to 16 MiB (413 `too_large`).",
        status_code=201,
        responses={200: {"description": "Stored already: the same id"}},
    )
    async def put_blob(request: Request) -> Response:
        async with _body(budget, request, limits.blob_bytes) as data:
            bid, created = await node.put_blob(data)
            size = len(data)
        return _json({"id": bid, "size": size}, 201 if created else 200)

    async def open_blob(bid: str) -> tuple[BinaryIO, int]:
        if not is_blob_id(bid):
            raise InvalidRequest(f"not a blob id: {_short(bid)!r}")
        # Off the event loop: a read from a cold disk would hold every client.
        handle = await asyncio.to_thread(node.store.open_blob, bid)
        if handle is None:
            raise NotFound(f"no blob {bid}")
        return handle, os.fstat(handle.fileno()).st_size

    @app.get(
        "/v1/blobs/{bid:path}",
        tags=["blobs"],
        summary="The bytes of a blob",
        description="Sent as they are read, a chunk at a time: a downloader that stops "
        "reading holds a chunk of the node's memory, not the blob. `HEAD` says whether the "
        "node holds it, and its `Content-Length`, without the bytes.",
    )
    async def get_blob(bid: str) -> Response:
        handle, size = await open_blob(bid)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await asyncio.to_thread(handle.read, _BLOB_CHUNK):
                    yield chunk
            finally:
                handle.close()

        return StreamingResponse(
            chunks(),
            media_type="application/octet-stream",
            headers={"content-length": str(size)},
        )

    @app.head("/v1/blobs/{bid:path}", include_in_schema=False)
    async def head_blob(bid: str) -> Response:
        handle, size = await open_blob(bid)
        handle.close()
        return Response(
            media_type="application/octet-stream", headers={"content-length": str(size)}
        )

    # --- operations ---------------------------------------------------------------------

    @app.get("/docs", tags=["operations"], include_in_schema=False)
    async def docs() -> Response:
        return Response(_DOCS_PAGE, media_type="text/html; charset=utf-8")

    @app.get(
        "/healthz",
        tags=["operations"],
        summary="Liveness and the node's identity",
        description="`anchor`: null on a node that does not anchor in Bitcoin; else its "
        "`chain` (null until the Bitcoin node answered), `interval` (s), `confirmations`, "
        "`pending` (the block `height` and Bitcoin `txid` sent and not yet posted, its fee "
        "`rate` and the `earlier` txids sent for the same block; or null) and "
        "`anchored` (the newest anchored block height, or null).",
    )
    @app.head("/healthz", include_in_schema=False)  # load balancers and monitors ask so
    async def healthz() -> Response:
        return _json(
            {
                "status": "ok" if node.started else "starting",
                "id": node.id,
                "origin": node.origin,
                "verifier_key": node.verifier_key(),
                "version": __version__,
                "pipelines": node.log.pipelines,
                "sizes": [node.log.size(p) for p in range(node.log.pipelines)],
                "witnesses": list(node.config.witnesses),
                "threshold": node.witness_threshold,
                "stages": list(STAGES) if node.config.witnesses else [],
                "anchor": _anchor_health(node),
            }
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=PlainTextResponse,
        summary="Prometheus metrics",
        description="Messages accepted, duplicated and refused (by code), each pipeline's log "
        "size, the block height (with anchoring on, the newest anchored height and whether an "
        "anchor is pending), the bytes of blobs no message names yet and how many such blobs "
        "were swept, and `chainmail_ingest_stage_seconds`: a histogram per ingest "
        "stage (`queued`, `verify`, `wait`, `log`, `project`, and `total` from arrival to reply), "
        "counting messages.",
    )
    async def get_metrics() -> Response:
        lines = [
            "# HELP chainmail_messages_accepted_total Messages newly appended to the log.",
            "# TYPE chainmail_messages_accepted_total counter",
            f"chainmail_messages_accepted_total {metrics.accepted}",
            "# HELP chainmail_messages_duplicate_total Messages submitted again.",
            "# TYPE chainmail_messages_duplicate_total counter",
            f"chainmail_messages_duplicate_total {metrics.duplicates}",
            "# HELP chainmail_messages_rejected_total Messages refused, by code.",
            "# TYPE chainmail_messages_rejected_total counter",
        ]
        lines += [
            f'chainmail_messages_rejected_total{{code="{c}"}} {n}'
            for c, n in sorted(metrics.rejected.items())
        ]
        lines += [
            "# HELP chainmail_log_size Entries in each pipeline's log.",
            "# TYPE chainmail_log_size gauge",
        ]
        lines += [
            f'chainmail_log_size{{pipeline="{p}"}} {node.log.size(p)}'
            for p in range(node.log.pipelines)
        ]
        latest = node.store.latest_block()
        lines += [
            "# HELP chainmail_block_height Height of the newest block.",
            "# TYPE chainmail_block_height gauge",
            f"chainmail_block_height {0 if latest is None else latest.height}",
        ]
        if node.anchorer is not None:
            anchored = node.store.latest_anchored()
            lines += [
                "# HELP chainmail_anchored_height Height of the newest block anchored in Bitcoin.",
                "# TYPE chainmail_anchored_height gauge",
                f"chainmail_anchored_height {0 if anchored is None else anchored}",
                "# HELP chainmail_anchor_pending 1 while an anchor transaction waits for its"
                " confirmations.",
                "# TYPE chainmail_anchor_pending gauge",
                f"chainmail_anchor_pending {0 if node.anchorer.pending is None else 1}",
            ]
        pending_bytes, _ = await asyncio.to_thread(node.store.pending_blobs)
        lines += [
            "# HELP chainmail_blob_pending_bytes Bytes of stored blobs no logged message names yet.",
            "# TYPE chainmail_blob_pending_bytes gauge",
            f"chainmail_blob_pending_bytes {pending_bytes}",
            "# HELP chainmail_blobs_swept_total Blobs deleted because no message named them in"
            " time.",
            "# TYPE chainmail_blobs_swept_total counter",
            f"chainmail_blobs_swept_total {node.blobs_swept}",
        ]
        if node.ingest_stages is not None:
            lines += node.ingest_stages.render()
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    return app


def _parse_ack(body: bytes, key: str = "ids") -> list[str]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"ack: not JSON: {exc}") from exc
    ids = data.get(key) if isinstance(data, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidRequest(f'ack: expected {{"{key}": ["%…", …]}}')
    for i in ids:
        if not is_msg_id(i):
            raise InvalidRequest(f"ack: not a message id: {_short(i)!r}")
    return ids
