"""A real node's answers recorded, and every way to change one: for tests of what reads them.

``Recorder`` keeps each answer a real node gives (an ``httpx`` transport in
front of it); ``changes`` yields every change of one answer's body that a
lying node could make: each value at a JSON path removed or replaced by one
of ``REPLACEMENTS`` (another type, out of range, empty), or, for text, each
line removed, replaced or doubled. The tests replay the recording with one
change at a time and check that what reads it ends in a finding or one of
chainmail's own errors, never a ``KeyError`` or ``TypeError``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import orjson
import pytest

#: In ``REPLACEMENTS``: the value is removed (a list's item, an object's member).
DELETE = object()
REPLACEMENTS: tuple[Any, ...] = (
    DELETE,
    None,
    True,
    0,
    -1,
    2**64,
    1.5,
    "",
    "x",
    "%AAAA.sha256",
    [],
    [None],
    {},
    {"a": 1},
)

Key = tuple[str, str]  # method, path with query
Answer = tuple[int, dict[str, str], bytes]  # status, headers, body
Path = tuple[Any, ...]  # keys and indexes into a JSON value
Change = Callable[[bytes], bytes]
#: The paths to change in an answer's JSON values (several for NDJSON: then True).
PathsOf = Callable[[list[Any], bool], Iterable[Path]]


def request_key(request: httpx.Request) -> Key:
    query = request.url.query.decode()
    return request.method, request.url.path + (f"?{query}" if query else "")


class Recorder(httpx.BaseTransport):
    """Forwards to the real node and keeps every answer."""

    def __init__(self, into: dict[Key, Answer]) -> None:
        self._inner = httpx.HTTPTransport()
        self._into = into

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        body = response.read()
        headers = {"content-type": response.headers.get("content-type", "")}
        self._into[request_key(request)] = (response.status_code, headers, body)
        return httpx.Response(response.status_code, headers=headers, content=body)


def not_recorded(key: Key) -> Answer:
    """What a liar answers for a request the recording lacks: a problem 404."""
    body = orjson.dumps({"status": 404, "code": "not_found", "detail": f"not recorded: {key}"})
    return 404, {"content-type": "application/problem+json"}, body


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    """``probe()``'s first true value, polled; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def json_paths(
    value: Any, prefix: Path = (), *, stop: Callable[[Any], bool] | None = None
) -> Iterator[Path]:
    """Every path into a JSON value (of a list: its first and last items only).

    Below an object for which ``stop`` is true only its own members are
    changed, not what they hold.
    """
    if prefix:
        yield prefix
    if isinstance(value, dict):
        shallow = stop is not None and stop(value)
        for k, v in value.items():
            if shallow and isinstance(v, dict | list):
                yield (*prefix, k)
            else:
                yield from json_paths(v, (*prefix, k), stop=stop)
    elif isinstance(value, list):
        for i in sorted({0, len(value) - 1}) if value else ():
            yield from json_paths(value[i], (*prefix, i), stop=stop)


def replaced(value: Any, path: Path, new: Any) -> Any:
    """A copy of ``value`` with what is at ``path`` replaced by ``new`` (or removed)."""
    head, rest = path[0], path[1:]
    copy: Any = dict(value) if isinstance(value, dict) else list(value)
    if rest:
        copy[head] = replaced(copy[head], rest, new)
    elif new is DELETE:
        del copy[head]
    else:
        copy[head] = new
    return copy


def json_lines(body: bytes) -> list[Any] | None:
    """The body as JSON values: one for JSON, one a line for NDJSON; None for neither."""
    try:
        return [orjson.loads(body)]
    except orjson.JSONDecodeError:
        pass
    try:
        return [orjson.loads(line) for line in body.splitlines() if line.strip()]
    except orjson.JSONDecodeError:
        return None


def dumps(value: Any) -> bytes:
    """JSON of any size of integer (orjson stops at 64 bits; a liar need not)."""
    return json.dumps(value, separators=(",", ":")).encode()


def every_path(values: list[Any], ndjson: bool) -> Iterable[Path]:
    """``PathsOf``: every path of the value, or of the lines (the first and the last)."""
    return json_paths(values if ndjson else values[0])


def changes(body: bytes, paths_of: PathsOf = every_path) -> Iterator[tuple[str, Change]]:
    """Every change of one answer's body, with a label.

    JSON (or NDJSON) gets each path ``paths_of`` names replaced by each of
    ``REPLACEMENTS``; anything else each line removed, replaced by ``x`` or
    doubled, and the whole body emptied.
    """
    values = json_lines(body)
    if not values:
        lines = body.split(b"\n")
        for i in range(len(lines)):
            for new in (b"", b"x", lines[i] * 2):
                yield f"line {i} -> {new[:10]!r}", _text_change(lines, i, new)
        yield "empty", lambda _: b""
        return
    ndjson = len(values) > 1 or body.count(b"\n") > 1
    for path in paths_of(values, ndjson):
        for new in REPLACEMENTS:
            label = f"{list(path)} -> {'deleted' if new is DELETE else repr(new)[:20]}"
            yield label, _json_change(values, path, new, ndjson)


def _text_change(lines: list[bytes], i: int, new: bytes) -> Change:
    return lambda _: b"\n".join([*lines[:i], new, *lines[i + 1 :]])


def _json_change(values: list[Any], path: Path, new: Any, ndjson: bool) -> Change:
    def change(_: bytes) -> bytes:
        if not ndjson:
            return dumps(replaced(values[0], path, new))
        kept = replaced(values, path, new)  # a deleted line is left out
        return b"".join(dumps(v) + b"\n" for v in kept)

    return change
