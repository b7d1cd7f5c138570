"""Start a real ``chainmail serve`` process on a free port for a test."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

CHAINMAIL = str(Path(sys.executable).parent / "chainmail")


def interrupted(proc: subprocess.Popen[str], timeout: float = 60.0) -> tuple[str, str]:
    """``proc``'s output once Ctrl-C (SIGINT) ended it; killed if it did not end in
    ``timeout`` s (then ``subprocess.TimeoutExpired``), so no test leaves it running."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``chainmail serve`` in its own process group, its output in ``<data>.log``.

    The node forks signature-verification workers; signalling the group ends
    exactly the processes it started.
    """

    def __init__(
        self,
        data: Path,
        *,
        block_interval: float = 0.2,
        port: int | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.data = data
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.block_interval = block_interval
        self.extra = extra
        self.log_path = data.parent / f"{data.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> None:
        self.data.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    CHAINMAIL,
                    "serve",
                    "--data",
                    str(self.data),
                    "--port",
                    str(self.port),
                    "--block-interval",
                    str(self.block_interval),
                    "--quiet",
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ},
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = self.log_path.read_text(errors="replace")
                raise RuntimeError(f"node exited with {self.proc.returncode}: {output}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).json().get("status") == "ok":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"node did not answer /healthz within {timeout} s")

    def _signal_group(self, sig: signal.Signals, wait: float) -> bool:
        if self.proc is None:
            return True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL the whole group: no clean shutdown, as in a crash."""
        self._signal_group(signal.SIGKILL, 10)

    def stop(self) -> None:
        if not self._signal_group(signal.SIGTERM, 10):
            self.kill()
        # Workers may outlive the parent for a moment; end the group for good.
        self.kill()


@contextmanager
def running(data: Path, **kwargs: object) -> Iterator[Server]:
    server = Server(data, **kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()
