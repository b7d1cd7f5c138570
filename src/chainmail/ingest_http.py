"""The two HTTP ingest paths as bare ASGI: ``POST /v1/messages`` and ``/v1/messages/batch``.

FastAPI's stack (its middleware, routing, dependency solving and ``Response``
objects) costs ~300 µs of the event loop's CPU a request on a small machine:
~40 µs a message when a client sends batches of eight, as a steady client at
half load does, and all of it on the one thread every request shares. The
node's hottest paths skip it; ``create_app`` still declares both routes for
the OpenAPI document and answers through this module from either side.

Behaviour is the API's: the same body limits (refused before the body is read
when ``content-length`` says so), the per-connection rate limit, one result
line per input line, the ``Content-Type`` checked (``check_media``), and every refusal an RFC 9457 problem document with its
``code``. A client that goes away before its body is read is simply dropped.
Paths are matched below the ``root_path`` a proxy or a mount sets. FastAPI's
own instrumentation (its telemetry middleware) does not see these two paths;
``GET /metrics`` counts their results.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Final

import orjson

from chainmail.errors import Error, InvalidMessage, InvalidRequest, OperationalError, RateLimited
from chainmail.httpsig import client_source
from chainmail.sequencer import Accepted

__all__ = [
    "DEFAULT_BODY_BUDGET",
    "JSON_TYPES",
    "NDJSON_TYPES",
    "BodyBudget",
    "IngestPaths",
    "batch_lines",
    "check_media",
    "read_limited",
    "result_line",
    "retry_after",
    "route_path",
]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PROBLEM: Final = b"application/problem+json"
NDJSON: Final = b"application/x-ndjson"
JSON: Final = b"application/json"
BATCH_PATH: Final = "/v1/messages/batch"
MESSAGE_PATH: Final = "/v1/messages"
#: The media types a JSON body may be sent as (``application/…+json`` too).
JSON_TYPES: Final = frozenset({"application/json"})
#: ... and a batch: one JSON message a line, under any of its usual names.
NDJSON_TYPES: Final = frozenset(
    {
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
        "application/json",
    }
)
_FORM: Final = "application/x-www-form-urlencoded"


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


def result_line(result: Accepted | Error) -> bytes:
    """One submission's result as a line of JSON: the success object or a short problem."""
    if isinstance(result, Error):
        return orjson.dumps({"status": result.status, "code": result.code, "detail": result.detail})
    # Ids are base64 with "%" and ".sha256": nothing in them needs escaping.
    return b'{"id":"%s","pipeline":%d,"index":%d,"status":%d}' % (
        result.id.encode("ascii"),
        result.pipeline,
        result.index,
        201 if result.created else 200,
    )


def batch_lines(results: Sequence[Accepted | Error]) -> bytes:
    """The NDJSON answer to a batch: one ``result_line`` per result, in order, each ending in ``\\n``."""
    return b"".join([result_line(result) + b"\n" for result in results])


def retry_after(err: Error) -> str | None:
    """The ``Retry-After`` value for ``err`` (whole seconds, at least 1), if it says when to retry."""
    retry = getattr(err, "retry_after", None)
    return None if retry is None else str(max(1, math.ceil(retry)))


def check_media(scope: Scope, accepted: frozenset[str]) -> None:
    """Refuse a body whose ``Content-Type`` is none of ``accepted``; raises ``InvalidRequest``.

    The code is ``unsupported_media_type`` (HTTP 415). A request with no
    ``Content-Type`` is taken as what the path expects, and so is any
    ``application/…+json`` where JSON is. Parameters (``; charset=utf-8``) are
    ignored. Called before the body is read, so a refused body is never read.
    """
    value = next((v for k, v in scope.get("headers", ()) if k == b"content-type"), b"")
    media = value.split(b";", 1)[0].strip().lower().decode("latin-1")
    if not media or media in accepted:
        return
    if media.endswith("+json") and media.startswith("application/") and accepted >= JSON_TYPES:
        return
    expected = " or ".join(sorted(accepted))
    hint = (
        " (curl -d sends that: add -H 'Content-Type: application/json')" if media == _FORM else ""
    )
    raise InvalidRequest(
        f"Content-Type {media}: expected {expected}{hint}", code="unsupported_media_type"
    )


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


#: Seconds a request body may pause between two of its chunks before it is refused
#: (408 ``request_timeout``): a client that stalls, or vanished without closing its
#: connection, holds its part of the ``BodyBudget`` no longer than this.
BODY_IDLE_TIMEOUT_S: Final = 30.0
#: Bytes a second a request body must average over each ``idle_timeout`` seconds
#: of its arrival (64 kbit/s): a body trickling a byte now and then, never idle
#: for long, held its part of the ``BodyBudget`` for good.
MIN_BODY_RATE: Final = 8 * 1024


async def read_limited(
    scope: Scope,
    receive: Receive,
    limit: int,
    *,
    on_chunk: Callable[[int], None] | None = None,
    idle_timeout: float | None = None,
    min_rate: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> bytes:
    """The request body, refused beyond ``limit`` bytes.

    Raises ``InvalidRequest`` (``too_large``) as soon as the declared or the
    received size passes the limit, ``InvalidRequest`` (``request_timeout``)
    when ``idle_timeout`` seconds pass with nothing received, or when one of
    the successive ``idle_timeout``-second windows of its arrival (the first
    from the call) brought fewer than ``min_rate`` bytes a second, and
    ``ClientGone`` on a disconnect.
    ``on_chunk(n)`` is told of each chunk's size before it is kept (it may
    raise to stop the read).
    """
    declared = _declared_length(scope)
    if declared is not None and declared > limit:
        raise InvalidRequest(
            f"body of {declared} bytes exceeds the limit of {limit}", code="too_large"
        )
    chunks: list[bytes] = []
    size = 0
    rated = min_rate is not None and idle_timeout is not None
    window = last = clock() if rated else 0.0
    got = 0  # bytes of the body received in this window of ``idle_timeout`` seconds
    while True:
        wait = idle_timeout
        if min_rate is not None and idle_timeout is not None:
            now = clock()
            if now - window >= idle_timeout:
                if now - last >= idle_timeout:
                    raise _idle(idle_timeout, size)
                if got < min_rate * idle_timeout:
                    raise _too_slow(got, size, idle_timeout, min_rate)
                window, got = now, 0
            wait = window + idle_timeout - now
        try:
            # A timeout scope, not ``wait_for``: no task a chunk on the ingest path.
            async with asyncio.timeout(wait):
                message = await receive()
        except TimeoutError:
            if not rated:
                raise _idle(idle_timeout, size) from None
            continue  # the window is over: judged above
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise InvalidRequest(f"body exceeds the limit of {limit} bytes", code="too_large")
            if on_chunk is not None:
                on_chunk(len(chunk))
            chunks.append(chunk)
            if rated:
                got += len(chunk)
                last = clock()
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _idle(idle_timeout: float | None, size: int) -> InvalidRequest:
    return InvalidRequest(
        f"nothing of the request body arrived for {idle_timeout:g} s ({size} bytes received)",
        code="request_timeout",
    )


def _too_slow(got: int, size: int, window: float, min_rate: float) -> InvalidRequest:
    return InvalidRequest(
        f"the request body brought {got} bytes in the last {window:g} s, under the minimum"
        f" of {min_rate:.0f} bytes/s ({size} bytes received)",
        code="request_timeout",
    )


#: Request-body bytes a node holds at once by default: 32 bodies of the largest size.
DEFAULT_BODY_BUDGET: Final = 512 * 1024 * 1024
#: One client address holds at most this fraction of the budget (``BodyBudget``).
SOURCE_SHARE: Final = 8


class BodyBudget:
    """The request-body bytes the node holds at once, over every request (event loop only).

    A body counts the bytes received of it, as they arrive, until its request
    is handled (a batch's: until its results are made, before they are
    written to the client). A body that would pass the budget is refused (429
    ``rate_limited``, ``Retry-After: 1``) before any more of it is read, and
    one whose declared ``Content-Length`` would pass it is refused before any
    of it is read, so many slow or large uploads cannot exhaust the node's
    memory. A declared length reserves nothing: connections that send headers
    and then nothing hold no budget, and cannot lock the others out. A body
    that pauses ``idle_timeout`` seconds, or that brings under ``min_rate``
    bytes a second over one of the ``idle_timeout``-second windows of its arrival, is
    refused (408 ``request_timeout``) and gives its bytes back. One client
    address (``httpsig.client_source``: an IPv6 /64 as one) holds at most
    ``1/SOURCE_SHARE`` of the budget (429 past it), so a few slow uploads from
    one place cannot take it all. One body is never refused while no other is
    held, nor one from an address holding nothing: the largest allowed body
    always gets through.
    """

    def __init__(
        self,
        limit: int = DEFAULT_BODY_BUDGET,
        *,
        idle_timeout: float = BODY_IDLE_TIMEOUT_S,
        min_rate: float = MIN_BODY_RATE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit: expected at least 1 byte, got {limit}")
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout: expected a positive number, got {idle_timeout}")
        if not min_rate > 0:
            raise ValueError(f"min_rate: expected a positive number, got {min_rate}")
        self.limit = limit
        self.idle_timeout = idle_timeout
        self.min_rate = min_rate
        self._clock = clock
        #: Bytes held now, in all and by client address (none kept for an address at 0).
        self.held = 0
        self.held_by: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def body(self, scope: Scope, receive: Receive, limit: int) -> AsyncIterator[bytes]:
        """``read_limited``'s body, counted while the ``async with`` lasts."""
        taken = 0
        client = scope.get("client")
        source = client_source(client[0] if client else None)
        share = self.limit // SOURCE_SHARE if source else self.limit
        held_by = self.held_by

        def busy() -> RateLimited:
            return RateLimited(
                f"{self.held} bytes of request bodies are being received or handled now"
                f" (at most {self.limit}); retry in a moment",
                retry_after=1.0,
            )

        def crowded() -> RateLimited:
            return RateLimited(
                f"{held_by.get(source, 0)} bytes of request bodies from this address are being"
                f" received or handled now (at most {share}); retry in a moment",
                retry_after=1.0,
            )

        def take(n: int) -> None:
            nonlocal taken
            # Past the budget with others' bytes: a body alone always gets through.
            if self.held > taken and self.held + n > self.limit:
                raise busy()
            if source:
                mine = held_by.get(source, 0)
                # Likewise the first body of an address.
                if mine > taken and mine + n > share:
                    raise crowded()
                held_by[source] = mine + n
            self.held += n
            taken += n

        try:
            declared = _declared_length(scope)
            if declared is not None and self.held and self.held + declared > self.limit:
                raise busy()
            mine = held_by.get(source, 0) if source else 0
            if declared is not None and mine and mine + declared > share:
                raise crowded()
            data = await read_limited(
                scope,
                receive,
                limit,
                on_chunk=take,
                idle_timeout=self.idle_timeout,
                min_rate=self.min_rate,
                clock=self._clock,
            )
            yield data
        finally:
            self.held -= taken
            if source and taken:
                left = held_by[source] - taken
                if left:
                    held_by[source] = left
                else:
                    del held_by[source]


async def _respond(
    send: Send, status: int, media: bytes, body: bytes, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    headers = [(b"content-type", media), (b"content-length", b"%d" % len(body)), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def respond_problem(send: Send, err: Error) -> None:
    """``err`` as its problem document, with ``Retry-After`` when it says when to retry."""
    retry = retry_after(err)
    extra = [] if retry is None else [(b"retry-after", retry.encode("ascii"))]
    await _respond(send, err.status, PROBLEM, orjson.dumps(err.problem()), extra)


def route_path(scope: Scope) -> str:
    """The path the app routes on: ``path`` without the ``root_path`` a proxy or mount put before it."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :]
    return path


def client_key(scope: Scope) -> str:
    """The rate limiter's key for a connection: its address and port."""
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


class IngestPaths:
    """Answers the two ingest paths; ``match`` says whether a request is theirs.

    ``submit_many`` is the node's, ``throttle(key, n)`` takes ``n`` tokens of
    the connection's rate limit (raising ``RateLimited``), and ``count`` sees
    every result for ``/metrics``.
    """

    def __init__(
        self,
        submit_many: Callable[[list[bytes]], Awaitable[list[Accepted | Error]]],
        *,
        throttle: Callable[[str, int], None],
        count: Callable[[Accepted | Error], None],
        message_bytes: int,
        batch_bytes: int,
        budget: BodyBudget | None = None,
    ) -> None:
        self._budget = budget or BodyBudget()
        self._submit_many = submit_many
        self._throttle = throttle
        self._count = count
        self._message_bytes = message_bytes
        self._batch_bytes = batch_bytes

    @staticmethod
    def match(scope: Scope) -> bool:
        return (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and route_path(scope) in (BATCH_PATH, MESSAGE_PATH)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a request ``match`` took, by its path."""
        batch = route_path(scope) == BATCH_PATH
        await (self.batch if batch else self.message)(scope, receive, send)

    async def batch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer ``POST /v1/messages/batch``, whatever path it came in on."""
        await self._answer(self._batch, scope, receive, send)

    async def message(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer ``POST /v1/messages``, whatever path it came in on."""
        await self._answer(self._message, scope, receive, send)

    async def _answer(
        self,
        handler: Callable[[Scope, Receive, Send], Awaitable[None]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await handler(scope, receive, tracked)
        except ClientGone:
            return
        except Exception as exc:
            if started:  # the answer is half sent: nothing more can be said on it
                raise
            if isinstance(exc, Error):
                await respond_problem(send, exc)
                return
            # A bug: the client still gets a problem document, the log the details.
            log.exception("ingest request failed")
            await respond_problem(send, OperationalError("internal error; the node logged it"))

    async def _batch(self, scope: Scope, receive: Receive, send: Send) -> None:
        check_media(scope, NDJSON_TYPES)
        async with self._budget.body(scope, receive, self._batch_bytes) as body:
            answer = await self._answer_batch(body, scope)
        # Written once the body is given back: a client that does not read its
        # answer holds that, not the budget.
        await _respond(send, 200, NDJSON, answer)

    async def _answer_batch(self, body: bytes, scope: Scope) -> bytes:
        lines = body.split(b"\n")
        while lines and not lines[-1].strip():  # the last line's newline, or several
            lines.pop()
        self._throttle(client_key(scope), max(1, len(lines)))
        # A blank line within gets a problem of its own: one result a line, so a
        # client pairs them by position.
        messages = [line for line in lines if line.strip()]
        results = await self._submit_many(messages)
        if len(messages) < len(lines):
            given = iter(results)
            results = [next(given) if line.strip() else _blank() for line in lines]
        count = self._count
        for result in results:
            count(result)
        return batch_lines(results)

    async def _message(self, scope: Scope, receive: Receive, send: Send) -> None:
        check_media(scope, JSON_TYPES)
        self._throttle(client_key(scope), 1)
        async with self._budget.body(scope, receive, self._message_bytes) as body:
            (result,) = await self._submit_many([body])
        self._count(result)
        if isinstance(result, Error):
            await respond_problem(send, result)
            return
        status = 201 if result.created else 200
        await _respond(send, status, JSON, orjson.dumps(result.to_json()))


def _blank() -> InvalidMessage:
    return InvalidMessage("a blank line, not a message")
