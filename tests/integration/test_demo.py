"""`chainmail demo` runs the whole story, embedded and against a given node."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support.server import CHAINMAIL, running

pytestmark = pytest.mark.integration


def test_demo_embedded() -> None:
    done = subprocess.run([CHAINMAIL, "demo"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for line in (
        "I have 12,500 dollars to trade for 1,000 MEGA.",
        "I have the stock. I will transfer it if you confirm the money.",
        "OK. I transferred.",
        "Transaction finished.",
        "timed_out",
        "tx_closed",
        "regulator reads buy-side",
        "regulator reads sell-side",
        "the buyer decrypts ssi-first-harbor.txt",
        "document ssi-first-harbor.txt, 165 bytes, checked",
        "instructions' notarisation",
        "the seller holds no key to it: cannot read any",
        "the buyer holds no key to it: cannot read any",
        "Settled and proven.",
    ):
        assert line in out, line
    assert "✗" not in out


def test_demo_against_a_running_node(tmp_path: Path) -> None:
    with running(tmp_path / "node", block_interval=0.3) as server:
        done = subprocess.run(
            [CHAINMAIL, "demo", "--node", server.url], capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr
    assert "Settled and proven." in done.stdout


def test_demo_with_an_unreachable_node() -> None:
    done = subprocess.run(
        [CHAINMAIL, "demo", "--node", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
