"""Blobs on a node: unnamed ones are bounded in bytes and swept after the grace;
named ones (a doc, a block's records) are kept; a refusal loses nothing."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import httpx
import pytest

from chainmail.api import create_app
from chainmail.ids import blob_id
from chainmail.node import Node, NodeConfig
from chainmail.sequencer import Accepted
from support.feeds import Writer
from support.server import running

pytestmark = pytest.mark.integration

T0 = 1_800_000_000_000
GRACE_S = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def test_unnamed_blobs_are_bounded_then_swept_and_named_ones_kept(tmp_path: Path) -> None:
    clock = Clock()
    kept, spare, lost, big = (
        b"the NDA, signed" * 4,
        b"a draft" * 2,
        b"uploaded, forgotten",
        b"x" * 81,
    )

    async def run() -> None:
        config = NodeConfig(
            data_dir=tmp_path / "node",
            workers=0,
            block_interval=3600.0,
            blob_grace=GRACE_S,
            blob_pending_limit=100,
        )
        node = Node(config, clock=clock)
        await node.start()
        transport = httpx.ASGITransport(app=create_app(node, manage_node=False))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
                put = await http.put("/v1/blobs", content=kept)
                assert put.status_code == 201 and put.json() == {
                    "id": blob_id(kept),
                    "size": len(kept),
                }
                assert (await http.put("/v1/blobs", content=kept)).status_code == 200
                assert (await http.put("/v1/blobs", content=lost)).status_code == 201
                # 60 + 19 bytes wait to be named: 81 more would pass the 100.
                refused = await http.put("/v1/blobs", content=big)
                assert refused.status_code == 429, refused.text
                problem = refused.json()
                assert problem["code"] == "rate_limited" and "79 bytes" in problem["detail"]
                assert refused.headers["retry-after"] == "60"
                assert refused.headers["content-type"].startswith("application/problem+json")
                assert (await http.get(f"/v1/blobs/{blob_id(big)}")).status_code == 404
                # Nothing stored before was touched by the refusal.
                assert (await http.get(f"/v1/blobs/{blob_id(kept)}")).content == kept
                metrics = (await http.get("/metrics")).text
                assert "chainmail_blob_pending_bytes 79\n" in metrics

                # A doc names ``kept``: it no longer counts, and the big one fits.
                writer = Writer()
                doc = {"type": "doc", "blob": blob_id(kept), "size": len(kept), "name": "NDA"}
                (result,) = await node.submit_many([writer.raw(doc)])
                assert isinstance(result, Accepted), result
                assert node.store.pending_blobs() == (len(lost), T0)
                clock.now = T0 + 30_000
                assert (await http.put("/v1/blobs", content=spare)).status_code == 201
                refused = await http.put("/v1/blobs", content=big)
                assert refused.headers["retry-after"] == "30"  # when ``lost`` goes

                # Before the grace nothing goes; after it, only what no message names.
                assert await node.sweep_blobs() == (0, 0)
                clock.now = T0 + 60_001
                assert await node.sweep_blobs() == (1, len(lost))
                assert (await http.get(f"/v1/blobs/{blob_id(lost)}")).status_code == 404
                assert (await http.get(f"/v1/blobs/{blob_id(kept)}")).content == kept
                assert (await http.get(f"/v1/blobs/{blob_id(spare)}")).content == spare
                assert (await http.put("/v1/blobs", content=big)).status_code == 201
                assert "chainmail_blobs_swept_total 1\n" in (await http.get("/metrics")).text

                # A block's records blob is named by the block that commits to it.
                tx = {"type": "tx/open", "parties": [writer.id], "deadline": T0 + 10**9}
                (opened,) = await node.submit_many([writer.raw(tx)])
                assert isinstance(opened, Accepted)
                finish = {"type": "tx/finish", "tx": opened.id}
                assert isinstance((await node.submit_many([writer.raw(finish)]))[0], Accepted)
                await node._build_block(node.sequencer)
                block = (await http.get("/v1/blocks/1")).json()
                records = block["message"]["content"]["txs"]["records"]
                clock.now += 10 * 60_000
                swept, _ = await node.sweep_blobs()
                assert swept == 2  # ``spare`` and ``big``, never named
                assert (await http.get(f"/v1/blobs/{records}")).status_code == 200
                assert (await http.get(f"/v1/blobs/{blob_id(kept)}")).content == kept
        finally:
            await node.stop()

        # After a restart the same: what was named stays named.
        node = Node(config, clock=clock)
        await node.start()
        try:
            assert node.store.pending_blobs() == (0, None)
            clock.now += 10**9
            assert await node.sweep_blobs() == (0, 0)
            assert node.store.get_blob(blob_id(kept)) == kept
        finally:
            await node.stop()

    asyncio.run(run())


def test_concurrent_uploads_cannot_pass_the_limit_together(tmp_path: Path) -> None:
    async def run() -> list[int]:
        config = NodeConfig(
            data_dir=tmp_path / "node", workers=0, block_interval=3600.0, blob_pending_limit=100
        )
        node = Node(config)
        await node.start()
        transport = httpx.ASGITransport(app=create_app(node, manage_node=False))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
                puts = await asyncio.gather(
                    *(http.put("/v1/blobs", content=bytes([i]) * 30) for i in range(8))
                )
                pending, _ = node.store.pending_blobs()
                assert pending <= 100
                return sorted(p.status_code for p in puts)
        finally:
            await node.stop()

    statuses = asyncio.run(run())
    assert statuses == [201, 201, 201, 429, 429, 429, 429, 429]


def test_a_blob_stored_again_is_never_refused(tmp_path: Path) -> None:
    """It adds no bytes, even on a node holding more unnamed bytes than it now
    takes (its limit lowered since)."""

    async def run() -> None:
        for limit, statuses in ((10, (201, 200, 429)), (4, (200, 200, 429))):
            config = NodeConfig(
                data_dir=tmp_path / "node",
                workers=0,
                block_interval=3600.0,
                blob_pending_limit=limit,
            )
            node = Node(config)
            await node.start()
            transport = httpx.ASGITransport(app=create_app(node, manage_node=False))
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
                    got = (
                        (await http.put("/v1/blobs", content=b"8 bytes!")).status_code,
                        (await http.put("/v1/blobs", content=b"8 bytes!")).status_code,
                        (await http.put("/v1/blobs", content=b"3 b")).status_code,
                    )
                    assert got == statuses, (limit, got)
            finally:
                await node.stop()

    asyncio.run(run())


def test_a_bad_blob_option_is_one_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    import subprocess
    import sys

    for args, said in (
        (["--blob-grace", "0"], "--blob-grace: expected a positive number of seconds"),
        (["--blob-grace", "inf"], "--blob-grace: expected a positive number of seconds"),
        (["--blob-pending-limit", "-1"], "--blob-pending-limit: expected 0 or more bytes"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "chainmail", "serve", "--data", str(tmp_path / "d"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        assert said in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_request_bodies_held_at_once_are_bounded_and_one_alone_passes(tmp_path: Path) -> None:
    """A slow upload holds the bytes received of it: others that would pass
    --body-budget wait (429 with Retry-After), nothing is lost, and each goes
    through in turn."""
    import socket
    import time

    from support.server import running

    with running(tmp_path / "node", extra=("--body-budget", "100000")) as server:
        port = int(server.url.rsplit(":", 1)[1])
        slow = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            big = b"s" * 90_000
            slow.sendall(
                b"PUT /v1/blobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(big)
                + big[:60_000]
            )
            other = b"o" * 50_000
            deadline = time.monotonic() + 10
            while True:  # until the node has read the slow one's first 60,000 bytes
                refused = httpx.put(f"{server.url}/v1/blobs", content=other, timeout=10)
                if refused.status_code == 429 or time.monotonic() > deadline:
                    break
            assert refused.status_code == 429, refused.text
            assert refused.json()["code"] == "rate_limited" and refused.headers["retry-after"]
            small = httpx.put(f"{server.url}/v1/blobs", content=b"fits beside it", timeout=10)
            assert small.status_code == 201
            slow.sendall(big[60_000:])
            answer = slow.recv(65536)
            assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
        finally:
            slow.close()
        again = httpx.put(f"{server.url}/v1/blobs", content=other, timeout=10)
        assert again.status_code == 201 and again.json()["id"] == blob_id(other)
        # Alone, a body larger than the budget passes.
        huge = httpx.put(f"{server.url}/v1/blobs", content=b"h" * 300_000, timeout=10)
        assert huge.status_code == 201


def test_unnamed_blobs_are_bounded_in_number_too(tmp_path: Path) -> None:
    async def run() -> None:
        config = NodeConfig(
            data_dir=tmp_path / "node",
            workers=0,
            block_interval=3600.0,
            blob_grace=GRACE_S,
            blob_pending_count=2,
        )
        node = Node(config, clock=Clock())
        await node.start()
        transport = httpx.ASGITransport(app=create_app(node, manage_node=False))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
                for n in range(2):
                    assert (await http.put("/v1/blobs", content=b"%d" % n)).status_code == 201
                refused = await http.put("/v1/blobs", content=b"2")
                assert refused.status_code == 429 and "2 blobs wait" in refused.json()["detail"]
                assert refused.headers["retry-after"] == str(int(GRACE_S))
                # One stored again is no new one; a doc naming one frees its place.
                assert (await http.put("/v1/blobs", content=b"0")).status_code == 200
                doc = {"type": "doc", "blob": blob_id(b"0"), "size": 1}
                (result,) = await node.submit_many([Writer().raw(doc)])
                assert isinstance(result, Accepted), result
                assert (await http.put("/v1/blobs", content=b"2")).status_code == 201
        finally:
            await node.stop()

    asyncio.run(run())


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_blob_is_streamed_and_stalled_downloaders_hold_no_copy_of_it(tmp_path: Path) -> None:
    """Each downloader that stops reading held a whole copy of the blob in the node
    (60 of a 16 MiB blob took it from 292 to 1,093 MiB): now a chunk at most."""
    data = os.urandom(16 * 1024 * 1024 - 1)
    with running(tmp_path / "node") as node, httpx.Client(base_url=node.url, timeout=30) as http:
        assert node.proc is not None
        bid = http.put("/v1/blobs", content=data).json()["id"]
        head = http.head(f"/v1/blobs/{bid}")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(data))
        assert http.head(f"/v1/blobs/{blob_id(b'never stored')}").status_code == 404
        got = http.get(f"/v1/blobs/{bid}")
        assert got.content == data and got.headers["content-length"] == str(len(data))

        before = _rss_mib(node.proc.pid)
        stalled = []
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", node.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(f"GET /v1/blobs/{bid} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            stalled.append(s)  # and read nothing
        time.sleep(2.0)  # for the node to send what the sockets take, and stall
        grown = _rss_mib(node.proc.pid) - before
        # Others are served meanwhile, the whole blob.
        assert http.get(f"/v1/blobs/{bid}").content == data
        for s in stalled:
            s.close()
    assert grown < 64, f"{grown:.0f} MiB more with 16 stalled downloads of a 16 MiB blob"
