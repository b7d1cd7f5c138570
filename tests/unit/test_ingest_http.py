"""The bare-ASGI ingest paths: limits, results, refusals and vanished clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest

from chainmail.errors import Error, InvalidMessage, RateLimited
from chainmail.ingest_http import BodyBudget, IngestPaths, batch_lines, retry_after, route_path
from chainmail.sequencer import Accepted

Message = MutableMapping[str, Any]


class Harness:
    """An ``IngestPaths`` whose node accepts every line as new, except ``bad`` lines."""

    def __init__(self, *, throttle_error: Error | None = None, fail: bool = False) -> None:
        self.submitted: list[list[bytes]] = []
        self.counted: list[Accepted | Error] = []
        self.throttled: list[tuple[str, int]] = []
        self.throttle_error = throttle_error
        self.fail = fail
        self.paths = IngestPaths(
            self.submit_many,
            throttle=self.throttle,
            count=self.counted.append,
            message_bytes=100,
            batch_bytes=1000,
        )

    async def submit_many(self, raws: list[bytes]) -> list[Accepted | Error]:
        if self.fail:
            raise RuntimeError("boom")
        self.submitted.append(raws)
        return [
            InvalidMessage("not json", code="invalid_format")
            if raw == b"bad"
            else Accepted(f"%{i}.sha256", 0, i, created=raw != b"again")
            for i, raw in enumerate(raws)
        ]

    def throttle(self, key: str, n: int) -> None:
        self.throttled.append((key, n))
        if self.throttle_error is not None:
            raise self.throttle_error

    def call(
        self,
        path: str,
        chunks: list[bytes],
        *,
        length: int | None = None,
        disconnect: bool = False,
    ) -> tuple[int | None, dict[bytes, bytes], bytes]:
        headers = [] if length is None else [(b"content-length", str(length).encode())]
        scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": headers,
            "client": ("10.0.0.1", 5000),
        }
        incoming: list[Message] = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]
        if disconnect:
            incoming = [*incoming[:-1], {"type": "http.disconnect"}]
        sent: list[Message] = []

        async def receive() -> Message:
            return incoming.pop(0)

        async def send(message: Message) -> None:
            sent.append(message)

        assert IngestPaths.match(scope)
        asyncio.run(self.paths(scope, receive, send))
        if not sent:
            return None, {}, b""
        start, body = sent
        return start["status"], dict(start["headers"]), body["body"]


def test_paths_match_under_a_root_path() -> None:
    scope = {"type": "http", "method": "POST", "root_path": "/api"}
    assert IngestPaths.match({**scope, "path": "/api/v1/messages/batch"})
    assert route_path({**scope, "path": "/api/v1/messages/batch"}) == "/v1/messages/batch"
    assert route_path({**scope, "path": "/apix/v1/messages"}) == "/apix/v1/messages"
    assert not IngestPaths.match({**scope, "path": "/apix/v1/messages"})


def test_only_the_two_post_paths_match() -> None:
    assert IngestPaths.match({"type": "http", "method": "POST", "path": "/v1/messages/batch"})
    assert not IngestPaths.match({"type": "http", "method": "GET", "path": "/v1/messages"})
    assert not IngestPaths.match({"type": "http", "method": "POST", "path": "/v1/messages/x"})
    assert not IngestPaths.match({"type": "websocket", "path": "/v1/messages"})


def test_batch_answers_one_line_per_line_and_counts_each() -> None:
    h = Harness()
    status, headers, body = h.call("/v1/messages/batch", [b"one\n\nba", b"d\nagain\n"])
    assert status == 200 and headers[b"content-type"] == b"application/x-ndjson"
    assert headers[b"content-length"] == str(len(body)).encode()
    assert h.submitted == [[b"one", b"bad", b"again"]]
    assert h.throttled == [("10.0.0.1:5000", 4)]
    lines = [orjson.loads(line) for line in body.splitlines()]
    assert lines[0] == {"id": "%0.sha256", "pipeline": 0, "index": 0, "status": 201}
    # The blank line within is answered in its place: results pair with lines.
    assert lines[1] == {
        "status": 400,
        "code": "invalid_format",
        "detail": "a blank line, not a message",
    }
    assert lines[2]["status"] == 400 and lines[2]["code"] == "invalid_format"
    assert lines[3]["status"] == 200
    assert len(h.counted) == 4 and body.endswith(b"\n")


def test_batch_lines_matches_each_result() -> None:
    ok = Accepted("%a.sha256", 1, 7, created=False)
    err = InvalidMessage("gap", code="invalid_sequence")
    lines = batch_lines([ok, err]).splitlines()
    assert orjson.loads(lines[0]) == {"id": "%a.sha256", "pipeline": 1, "index": 7, "status": 200}
    assert orjson.loads(lines[1]) == {"status": err.status, "code": err.code, "detail": "gap"}


def problem(status: int | None, headers: dict[bytes, bytes], body: bytes, code: str) -> Any:
    assert headers[b"content-type"] == b"application/problem+json"
    doc = orjson.loads(body)
    assert doc["code"] == code and doc["status"] == status
    return doc


def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    h = Harness()
    status, headers, body = h.call("/v1/messages/batch", [b"x"], length=1001)
    assert status == 413
    problem(status, headers, body, "too_large")
    assert h.submitted == [] and h.counted == []


def test_streamed_body_over_the_limit_is_refused() -> None:
    h = Harness()
    status, headers, body = h.call("/v1/messages/batch", [b"x" * 600, b"y" * 600])
    problem(status, headers, body, "too_large")
    assert h.submitted == []


def test_single_message_limit_is_the_message_limit() -> None:
    h = Harness()
    status, headers, body = h.call("/v1/messages", [b"x" * 101])
    problem(status, headers, body, "too_large")


def test_a_vanished_client_gets_nothing_and_submits_nothing() -> None:
    h = Harness()
    assert h.call("/v1/messages/batch", [b"one\n", b""], disconnect=True) == (None, {}, b"")
    assert h.submitted == []


def test_rate_limited_says_when_to_retry() -> None:
    h = Harness(throttle_error=RateLimited("slow down", retry_after=2.2))
    status, headers, body = h.call("/v1/messages/batch", [b"one\n"])
    assert status == 429 and headers[b"retry-after"] == b"3"
    problem(status, headers, body, "rate_limited")
    assert h.submitted == []


def test_a_bug_is_a_problem_document_not_a_dropped_connection() -> None:
    h = Harness(fail=True)
    status, headers, body = h.call("/v1/messages/batch", [b"one\n"])
    assert status == 500
    # The details go to the node's log, not to the client.
    assert "boom" not in problem(status, headers, body, "internal")["detail"]


@pytest.mark.parametrize(("raw", "status"), [(b"new", 201), (b"again", 200)])
def test_single_message_created_or_known(raw: bytes, status: int) -> None:
    h = Harness()
    got, headers, body = h.call("/v1/messages", [raw])
    assert got == status and headers[b"content-type"] == b"application/json"
    assert orjson.loads(body) == {"id": "%0.sha256", "pipeline": 0, "index": 0}
    assert h.throttled == [("10.0.0.1:5000", 1)]


def test_single_message_refused_is_its_problem() -> None:
    h = Harness()
    status, headers, body = h.call("/v1/messages", [b"bad"])
    assert status == 400
    problem(status, headers, body, "invalid_format")
    assert len(h.counted) == 1


def test_a_failure_after_the_answer_started_is_not_answered_twice() -> None:
    h = Harness()
    sent: list[Message] = []
    incoming: list[Message] = [{"type": "http.request", "body": b"one\n"}]

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            raise OSError("connection reset")

    scope = {"type": "http", "method": "POST", "path": "/v1/messages/batch", "headers": []}
    with pytest.raises(OSError, match="reset"):
        asyncio.run(h.paths(scope, receive, send))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


def _scope(length: int | None) -> dict[str, Any]:
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    return {"type": "http", "headers": headers}


def _receiver(*chunks: bytes) -> Any:
    queue = list(chunks)

    async def receive() -> dict[str, Any]:
        chunk = queue.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

    return receive


def test_request_bodies_held_at_once_are_bounded() -> None:
    async def scenario() -> None:
        budget = BodyBudget(15)
        async with budget.body(_scope(10), _receiver(b"x" * 10), 100) as first:
            assert first == b"x" * 10 and budget.held == 10
            # Declared: refused before a byte of it is read.
            with pytest.raises(RateLimited) as refused:
                async with budget.body(_scope(10), _receiver(b"y" * 10), 100):
                    pass
            assert refused.value.retry_after == 1.0 and budget.held == 10
            # Chunked: counted as it comes, refused at the chunk that passes.
            with pytest.raises(RateLimited):
                async with budget.body(_scope(None), _receiver(b"ab", b"cdefgh"), 100):
                    pass
            assert budget.held == 10
        assert budget.held == 0
        # Alone, a body larger than the budget (but within its path's limit) passes.
        async with budget.body(_scope(40), _receiver(b"z" * 40), 100) as big:
            assert len(big) == 40
        # Released on every way out: an error in the handler, a body too large.
        with pytest.raises(ValueError):
            async with budget.body(_scope(5), _receiver(b"12345"), 100):
                raise ValueError("the handler failed")
        with pytest.raises(InvalidMessage):
            async with budget.body(_scope(None), _receiver(b"x" * 60, b"x" * 60), 100):
                pass
        assert budget.held == 0

    asyncio.run(scenario())


def test_a_declared_length_reserves_nothing_until_its_bytes_arrive() -> None:
    """Headers announcing a large body, then nothing: no budget held, others pass."""

    async def scenario() -> None:
        budget = BodyBudget(15, idle_timeout=0.2)
        stalled = asyncio.Event()

        async def never() -> dict[str, Any]:
            stalled.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        async def hold() -> None:
            async with budget.body(_scope(15), never, 100):
                pass

        idle = [asyncio.create_task(hold()) for _ in range(4)]
        await stalled.wait()
        assert budget.held == 0
        async with budget.body(_scope(10), _receiver(b"x" * 10), 100) as body:
            assert body == b"x" * 10 and budget.held == 10
        # The stalled ones are refused after their pause, 408, holding nothing.
        for task in idle:
            with pytest.raises(InvalidMessage, match="nothing of the request body") as late:
                await task
            assert (late.value.code, late.value.status) == ("request_timeout", 408)
        assert budget.held == 0

    asyncio.run(scenario())


def test_a_body_that_pauses_gives_back_what_it_held() -> None:
    async def scenario() -> None:
        budget = BodyBudget(100, idle_timeout=0.1)
        sent = [b"abc"]

        async def receive() -> dict[str, Any]:
            if sent:
                return {"type": "http.request", "body": sent.pop(), "more_body": True}
            await asyncio.sleep(10)
            raise AssertionError("unreachable")

        with pytest.raises(InvalidMessage, match=r"for 0\.1 s \(3 bytes received\)"):
            async with budget.body(_scope(None), receive, 100):
                pass
        assert budget.held == 0

    asyncio.run(scenario())


def _from(host: str, length: int | None = None) -> dict[str, Any]:
    return {**_scope(length), "client": (host, 40000)}


def test_a_body_that_trickles_under_the_minimum_rate_gives_back_what_it_held() -> None:
    """Never idle for the idle timeout, a byte now and then: refused once its average
    falls under the minimum rate past the grace, not held for good."""

    async def scenario() -> float:
        budget = BodyBudget(1000, idle_timeout=0.2, min_rate=1000.0)
        sent = [b"x" * 300]  # the first window's 200 bytes and more, at once

        async def receive() -> dict[str, Any]:
            if sent:
                return {"type": "http.request", "body": sent.pop(), "more_body": True}
            await asyncio.sleep(0.05)  # well within the idle timeout, every time
            return {"type": "http.request", "body": b"y", "more_body": True}

        start = time.monotonic()
        with pytest.raises(InvalidMessage, match="under the minimum of 1000") as slow:
            async with budget.body(_scope(None), receive, 10_000):
                pass
        assert (slow.value.code, slow.value.status) == ("request_timeout", 408)
        assert budget.held == 0 and budget.held_by == {}
        return time.monotonic() - start

    # The first 0.2 s window brought enough; the second, a few bytes: refused at its end.
    assert 0.35 < asyncio.run(scenario()) < 2.0


def test_a_body_at_the_minimum_rate_or_better_is_read_whole() -> None:
    async def scenario() -> bytes:
        budget = BodyBudget(10_000, idle_timeout=0.2, min_rate=1000.0)
        parts = [b"z" * 100 for _ in range(5)]

        async def receive() -> dict[str, Any]:
            await asyncio.sleep(0.05)  # 2,000 B/s
            return {"type": "http.request", "body": parts.pop(), "more_body": bool(parts)}

        async with budget.body(_scope(None), receive, 10_000) as body:
            return body

    assert asyncio.run(scenario()) == b"z" * 500


def test_one_address_holds_at_most_its_share_of_the_budget() -> None:
    async def scenario() -> None:
        budget = BodyBudget(8 * 100)  # a share of 100 bytes an address
        async with budget.body(_from("203.0.113.7"), _receiver(b"a" * 90), 1000):
            # Its next body is refused past its share, declared or as it arrives...
            for scope in (_from("203.0.113.7", 20), _from("203.0.113.7")):
                with pytest.raises(RateLimited, match="from this address") as refused:
                    async with budget.body(scope, _receiver(b"b" * 10, b"c" * 10), 1000):
                        pass
                assert refused.value.retry_after == 1.0
            # ... and so is one from its IPv6 /64 neighbour's, but not another address's.
            async with budget.body(_from("2001:db8::1"), _receiver(b"d" * 90), 1000):
                with pytest.raises(RateLimited, match="from this address"):
                    async with budget.body(_from("2001:db8::2"), _receiver(b"e" * 20), 1000):
                        pass
                async with budget.body(_from("198.51.100.1"), _receiver(b"f" * 90), 1000):
                    assert budget.held == 270
            assert budget.held_by == {"203.0.113.7": 90}
        # A first body from an address passes whatever its size; loopback has no share.
        async with (
            budget.body(_from("203.0.113.7"), _receiver(b"g" * 500), 1000),
            budget.body(_from("127.0.0.1"), _receiver(b"h" * 200), 1000),
            budget.body(_from("127.0.0.1"), _receiver(b"i" * 50), 1000),
        ):
            assert budget.held_by == {"203.0.113.7": 500}
        assert budget.held == 0 and budget.held_by == {}

    asyncio.run(scenario())


def test_a_body_grown_past_the_budget_by_others_is_refused_at_its_chunk() -> None:
    async def scenario() -> None:
        budget = BodyBudget(15)
        async with budget.body(_scope(None), _receiver(b"x" * 10), 100):
            # Declared 4: fits, so read; its chunks are counted as they come.
            async with budget.body(_scope(4), _receiver(b"ab", b"cd"), 100) as small:
                assert small == b"abcd" and budget.held == 14
            with pytest.raises(RateLimited):
                async with budget.body(_scope(None), _receiver(b"abc", b"def"), 100):
                    pass
            assert budget.held == 10
        assert budget.held == 0

    asyncio.run(scenario())


def test_a_batch_gives_its_body_back_before_writing_its_answer() -> None:
    h = Harness()
    held_while_writing: list[int] = []
    incoming: list[Message] = [{"type": "http.request", "body": b"one\ntwo\n"}]

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        held_while_writing.append(h.paths._budget.held)

    scope = {"type": "http", "method": "POST", "path": "/v1/messages/batch", "headers": []}
    asyncio.run(h.paths(scope, receive, send))
    assert held_while_writing == [0, 0]


@pytest.mark.parametrize(
    ("wait", "header"), [(0.2, "1"), (1.0, "1"), (1.0005, "2"), (59.99, "60"), (60.0, "60")]
)
def test_retry_after_is_whole_seconds_never_short_of_the_wait(wait: float, header: str) -> None:
    assert retry_after(RateLimited("later", retry_after=wait)) == header
