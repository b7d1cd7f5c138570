"""A real Bitcoin regtest node for a test: bcoin (``interop/node_modules``), on free ports.

In memory (nothing on disk but its log), no peers. ``fund()`` mines 101 blocks
to the wallet so its first coinbase can be spent; ``mine(n)`` mines more.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from chainmail.bitcoinrpc import BcoinWallet, BitcoinError, BitcoinNode
from support.server import free_port

INTEROP = Path(__file__).resolve().parents[2] / "interop"
BCOIN = (
    INTEROP / "node_modules" / "bcoin" / "bin" / "node"
)  # the full node (bin/bcoin is a shell wrapper)
API_KEY = "regtest-api-key"


class Bcoin:
    def __init__(self, workdir: Path) -> None:
        if not BCOIN.exists():
            raise RuntimeError(
                "interop/node_modules/bcoin is missing: run `make test` (it runs npm ci)"
            )
        self.workdir = workdir
        self.port = free_port()
        self.wallet_port = free_port()
        self.node_url = f"http://x:{API_KEY}@127.0.0.1:{self.port}"
        self.wallet_url = f"http://x:{API_KEY}@127.0.0.1:{self.wallet_port}/wallet/primary"
        self.log_path = workdir / "bcoin.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.node = BitcoinNode(self.node_url)
        self.wallet = BcoinWallet(self.wallet_url)

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        node = shutil.which("node") or "node"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    node,
                    str(BCOIN),
                    "--network=regtest",
                    "--memory=true",
                    f"--prefix={self.workdir / 'bcoin'}",
                    "--http-host=127.0.0.1",
                    f"--http-port={self.port}",
                    f"--wallet-http-port={self.wallet_port}",
                    f"--api-key={API_KEY}",
                    "--listen=false",
                    "--log-level=warning",
                    "--log-file=false",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"bcoin exited with {self.proc.returncode}: "
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            with contextlib.suppress(BitcoinError, httpx.HTTPError):
                if self.node.chain() == "regtest":
                    self.wallet.balance()
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"bcoin did not answer within {timeout} s")

    def mine(self, blocks: int = 1) -> list[str]:
        address = self.wallet.receive_address()
        return [str(h) for h in self.node.call("generatetoaddress", blocks, address)]

    def fund(self, blocks: int = 110) -> None:
        """Mine ``blocks`` (past the 100 of coinbase maturity, under regtest's first
        halving at 150) and wait until the wallet has seen every one of them: until
        then it counts fewer mature coins than the node would."""
        self.mine(blocks)
        deadline = time.monotonic() + 30
        while self.wallet.balance() < blocks * 50 * 100_000_000:
            if time.monotonic() > deadline:
                raise RuntimeError("the bcoin wallet never saw its mined coins")
            time.sleep(0.1)

    def stop(self) -> None:
        self.node.close()
        self.wallet.close()
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@contextmanager
def regtest(workdir: Path) -> Iterator[Bcoin]:
    node = Bcoin(workdir)
    node.start()
    try:
        yield node
    finally:
        node.stop()
