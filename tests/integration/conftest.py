"""Fixtures that start a real chainmail node as a subprocess on a free port.

The node runs as ``chainmail serve --quiet`` in its own process group (it
forks signature-verification workers), so tearing it down ends exactly the
processes it started and nothing else.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.server import free_port, running


def pytest_configure(config: pytest.Config) -> None:
    # A shell without job control starts a background job (``make test &``,
    # nohup in a script) with SIGINT ignored, and every process it starts
    # inherits that: the tests that end a --follow command with Ctrl-C
    # (SIGINT) then waited for it in vain. Caught here, it is the default
    # again in each command the tests start.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def running_node(data: Path, *extra: str) -> Iterator[str]:
    """Run ``chainmail serve`` on ``data``; yield its URL once ``/healthz`` says ok."""
    with running(data, extra=extra) as server:
        yield server.url


@pytest.fixture(scope="session")
def node_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a node shared by the session's tests (each test uses fresh identities)."""
    with running_node(tmp_path_factory.mktemp("node") / "data") as url:
        yield url


@pytest.fixture
def dead_url() -> str:
    """A node URL where nothing listens (for offline and unreachable-node tests)."""
    return f"http://127.0.0.1:{free_port()}"
