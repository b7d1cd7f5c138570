"""``chainmail bench`` end to end: it starts its own node, and every message is accepted.

Correctness only: the figures depend on the machine, so nothing here asserts a speed.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.server import CHAINMAIL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


#: DESIGN §9: the keys every ``chainmail bench --json`` report carries.
DESIGN_KEYS = {
    "messages",
    "seconds",
    "msgs_per_s",
    "verify_ceiling_per_s",
    "ratio",
    "p50_ms",
    "p99_ms",
    "deliver_p99_ms",
    "mode",
}


def _bench(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [CHAINMAIL, "bench", "--messages", "2000", "--json", *args],
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line, got: {proc.stdout!r}"
    report = json.loads(lines[0])
    assert isinstance(report, dict)
    return report


@pytest.mark.parametrize("mode", ["http", "ws"])
def test_bench_json_report(mode: str) -> None:
    report = _bench("--mode", mode, "--feeds", "200", "--seed", "7")

    assert report.keys() >= DESIGN_KEYS
    assert report["mode"] == mode
    assert report["messages"] == 2000
    assert report["accepted"] == 2000, report["first_problem"]
    assert report["rejected"] == 0
    assert report["duplicates"] == 0
    assert report["rejected_codes"] == {}
    # Every figure is there and has the right type, whatever its value.
    for key in ("seconds", "msgs_per_s", "verify_ceiling_per_s", "ratio", "p50_ms", "p99_ms"):
        assert isinstance(report[key], int | float) and report[key] > 0, key
    assert report["p50_ms"] <= report["p99_ms"]
    assert report["ratio"] == pytest.approx(
        report["msgs_per_s"] / report["verify_ceiling_per_s"], rel=1e-2
    )
    # Sampled recipients saw their deliveries on their signed inbox streams.
    assert report["deliver_samples"] + report["deliver_samples_full_load"] > 0
    assert report["deliver_p99_ms"] is None or report["deliver_p99_ms"] > 0
    # The node built blocks for the closed transactions and was measured.
    assert report["txs"] > 0
    assert report["blocks"] >= 1
    assert report["rss_mb"] > 0
    # Where the half-load phase's time went, from the node's stage histograms.
    stages = report["half_load_stages_ms"]
    assert set(stages) == {"queued", "verify", "wait", "log", "project", "total"}
    for p50, p99 in stages.values():
        assert p50 is None or p99 is None or 0 < p50 <= p99


def test_bench_writes_every_sampled_delivery(tmp_path: Path) -> None:
    out = tmp_path / "deliveries.csv"
    report = _bench("--feeds", "200", "--seed", "7", "--deliveries-out", str(out))
    header, *lines = out.read_text(encoding="ascii").splitlines()
    assert header == "phase,sent_s,latency_ms"
    rows = [line.split(",") for line in lines]
    phases = [phase for phase, _, _ in rows]
    assert phases.count("half") == report["deliver_samples"]
    assert phases.count("full") == report["deliver_samples_full_load"]
    sent = [float(s) for _, s, _ in rows]
    assert sent == sorted(sent) and sent[0] == 0.0
    latencies = sorted(float(ms) for phase, _, ms in rows if phase == "half")
    assert all(ms > 0 for ms in latencies)
    # The report's p99 is one of these, by the same nearest-rank rule.
    if latencies:
        rank = max(1, -(-99 * len(latencies) // 100))
        assert report["deliver_p99_ms"] == pytest.approx(latencies[rank - 1], abs=0.01)


def test_bench_refuses_a_bad_configuration() -> None:
    proc = subprocess.run(
        [CHAINMAIL, "bench", "--messages", "0", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    # The caller's input, said as such: not an internal failure of the bench.
    assert proc.stderr.strip().splitlines() == [
        "chainmail: invalid_format: messages: expected at least 1, got 0"
    ]


class _NotChainmail(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def not_a_node() -> Iterator[str]:
    """The URL of an HTTP server answering {} to everything."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _NotChainmail)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--synchronous", "weird"], "invalid_format: synchronous: expected FULL or NORMAL"),
        (
            ["--deliveries-out", "/nonexistent/x.csv"],
            "invalid_format: deliveries_out: cannot write",
        ),
        (["--node", "notaurl"], "invalid_format: node: not an http(s) URL"),
        (["--node", "http://127.0.0.1:9"], "cannot reach the node at http://127.0.0.1:9"),
        (["--node", "FAKE"], "is not a chainmail node"),
    ],
)
def test_bench_refuses_bad_input_before_it_runs(
    not_a_node: str, args: list[str], said: str
) -> None:
    proc = subprocess.run(
        [CHAINMAIL, "bench", "--messages", "10", *(not_a_node if a == "FAKE" else a for a in args)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], proc.stderr


def test_demo_against_something_that_is_not_a_node_is_one_line(not_a_node: str) -> None:
    proc = subprocess.run(
        [CHAINMAIL, "demo", "--node", not_a_node], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1:] and "is not a chainmail node" in proc.stderr
    assert "Traceback" not in proc.stderr
