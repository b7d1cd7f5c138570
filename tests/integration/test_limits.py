"""Abuse limits: a flooding identity or connection is refused; everyone else carries on."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from support.feeds import Writer
from support.server import running

pytestmark = pytest.mark.integration


def batch(msgs: list[dict[str, object]]) -> bytes:
    return b"\n".join(orjson.dumps(m) for m in msgs)


def test_identity_flood_is_limited_and_others_keep_their_latency(tmp_path: Path) -> None:
    with running(
        tmp_path / "node", extra=("--identity-rate", "50", "--identity-burst", "50")
    ) as server:
        flooder, honest = Writer(), Writer()

        def latencies(n: int) -> list[float]:
            out = []
            with httpx.Client(base_url=server.url, timeout=10) as http:
                for i in range(n):
                    started = time.perf_counter()
                    r = http.post(
                        "/v1/messages", content=orjson.dumps(honest.sign({"type": "post", "n": i}))
                    )
                    out.append(time.perf_counter() - started)
                    assert r.status_code == 201, r.text
                    time.sleep(0.03)  # a steady participant, well under its rate
            return out

        baseline = statistics.median(latencies(20))
        stop = threading.Event()
        outcomes: list[int] = []

        def flood() -> None:
            with httpx.Client(base_url=server.url, timeout=10) as http:
                while not stop.is_set():
                    r = http.post(
                        "/v1/messages/batch",
                        content=batch([flooder.sign({"type": "spam"}) for _ in range(200)]),
                    )
                    lines = [orjson.loads(x) for x in r.content.splitlines()]
                    outcomes.extend(int(x["status"]) for x in lines)
                    # The flooder's feed is now ahead of what the node accepted: resync it.
                    head = http.get(
                        f"/v1/feeds/{flooder.id.replace('/', '%2F').replace('+', '%2B')}/head"
                    )
                    if head.status_code == 200:
                        from chainmail import ssb

                        body = head.json()
                        flooder.state = ssb.FeedState(id=body["id"], sequence=body["sequence"])

        thread = threading.Thread(target=flood)
        thread.start()
        time.sleep(0.3)
        try:
            under_flood = statistics.median(latencies(20))
        finally:
            stop.set()
            thread.join(30)
        assert 429 in outcomes, "the flood was never limited"
        accepted = outcomes.count(201)
        assert accepted < len(outcomes) / 2
        # Generous bound: a shared 2-core machine, not a benchmark.
        assert under_flood <= max(5 * baseline, 0.1), (baseline, under_flood)


def test_rate_limited_single_message_has_retry_after(tmp_path: Path) -> None:
    with (
        running(
            tmp_path / "node", extra=("--identity-rate", "1", "--identity-burst", "2")
        ) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        w = Writer()
        codes = [
            http.post("/v1/messages", content=orjson.dumps(w.sign({"type": "post"})))
            for _ in range(3)
        ]
        assert [c.status_code for c in codes[:2]] == [201, 201]
        last = codes[2]
        assert last.status_code == 429 and last.json()["code"] == "rate_limited"
        assert int(last.headers["Retry-After"]) >= 1
        # Nothing of the refused message was kept: the feed head is the second message.
        assert http.get("/healthz").status_code == 200


def test_connection_limit_refuses_a_whole_oversized_burst(tmp_path: Path) -> None:
    with running(
        tmp_path / "node", extra=("--connection-rate", "100", "--connection-burst", "100")
    ) as server:
        w = Writer()
        with httpx.Client(base_url=server.url, timeout=10) as hostile:
            r = hostile.post(
                "/v1/messages/batch", content=batch([w.sign({"type": "post"}) for _ in range(500)])
            )
            assert r.status_code == 429 and r.json()["code"] == "rate_limited"
            assert "Retry-After" in r.headers
        with httpx.Client(base_url=server.url, timeout=10) as other:
            ok = other.post("/v1/messages", content=orjson.dumps(Writer().sign({"type": "post"})))
            assert ok.status_code == 201


def test_a_client_that_never_reads_blocks_no_one(tmp_path: Path) -> None:
    import socket

    with (
        running(tmp_path / "node") as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        host, port = server.url.removeprefix("http://").split(":")
        # A follower that asks for the whole firehose and never reads a byte…
        stalled = socket.create_connection((host, int(port)))
        stalled.sendall(b"GET /v1/firehose?from=0&follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
        # …and one that vanishes without closing.
        vanished = socket.create_connection((host, int(port)))
        vanished.sendall(b"GET /v1/firehose?from=0&follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
        vanished.close()
        try:
            w = Writer()
            for start in range(0, 3000, 500):
                body = batch(
                    [
                        w.sign({"type": "post", "pad": "x" * 400, "n": i})
                        for i in range(start, start + 500)
                    ]
                )
                r = http.post("/v1/messages/batch", content=body)
                assert r.status_code == 200
                assert all(orjson.loads(x)["status"] == 201 for x in r.content.splitlines())
            started = time.perf_counter()
            lines = http.get("/v1/firehose?from=0").content.splitlines()
            assert len(lines) >= 3000 and time.perf_counter() - started < 30
            assert http.get("/healthz").status_code == 200
        finally:
            stalled.close()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--identity-rate", "0"), "--identity-rate"),
        (("--verify-nice", "-1"), "--verify-nice"),
        (("--verify-nice", "20"), "--verify-nice"),
        (("--port", "0"), "--port"),
        (("--port", "65536"), "--port"),
        (("--port", "99999"), "--port"),
        (("--block-interval", "0"), "--block-interval"),
        (("--workers", "-1"), "--workers"),
        (("--host", "999.1.1.1"), "--host"),
        (("--host", "192.0.2.1"), "cannot listen on 192.0.2.1"),  # not this machine's
    ],
)
def test_a_bad_serve_option_is_refused_in_one_line_before_anything_opens(
    tmp_path: Path, args: tuple[str, str], flag: str
) -> None:
    import subprocess

    from support.server import CHAINMAIL

    done = subprocess.run(
        [CHAINMAIL, "serve", "--data", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and flag in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "log.sqlite").exists()


def test_a_port_in_use_is_refused_in_one_line_before_anything_opens(tmp_path: Path) -> None:
    import socket
    import subprocess

    from support.server import CHAINMAIL

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [CHAINMAIL, "serve", "--data", str(tmp_path), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"chainmail: unavailable: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert not (tmp_path / "log.sqlite").exists()
