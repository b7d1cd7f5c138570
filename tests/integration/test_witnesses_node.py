"""Witnesses against a real node: `serve --witness`, two `chainmail witness` processes, sealed blocks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chainmail.api import create_app
from chainmail.client import AsyncClient, Client, VerificationFailed
from chainmail.errors import Error
from chainmail.keys import Keypair
from chainmail.node import Node, NodeConfig
from support.server import CHAINMAIL, interrupted, running

pytestmark = pytest.mark.integration


def test_two_witnesses_seal_every_block_and_verify_and_audit_see_it(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CHAINMAIL_HOME": str(tmp_path / "home"),
        "CHAINMAIL_PASSPHRASE": "witness passphrase",
        "COLUMNS": "200",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CHAINMAIL, *args], env=env, capture_output=True, text=True, timeout=120
        )

    ids = []
    for name in ("one", "two"):
        assert cli("keys", "new", name).returncode == 0
        ids.append(json.loads(cli("keys", "show", name, "--json").stdout)["id"])
    extra = ("--witness", ids[0], "--witness", ids[1], "--threshold", "2")
    with running(tmp_path / "node", extra=extra) as node:
        health = httpx.get(f"{node.url}/healthz").json()
        assert health["witnesses"] == ids and health["threshold"] == 2
        assert health["stages"] == ["precommit", "commit", "seal"]
        # Not a witness: refused, and told so in one line.
        assert cli("keys", "new", "stranger").returncode == 0
        stranger = cli("witness", "--as", "stranger", "--node", node.url)
        assert stranger.returncode == 1 and "not_admitted" in stranger.stderr

        witnesses = [
            subprocess.Popen(
                [CHAINMAIL, "witness", "--as", name, "--node", node.url, "--interval", "0.2"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in ("one", "two")
        ]
        try:
            a, b = Keypair.generate(), Keypair.generate()
            with Client(node.url, a) as alice, Client(node.url, b) as bob:
                tx = alice.open_tx([b.id], deadline=int(time.time() * 1000) + 60_000)
                alice.finish(tx)
                bob.finish(tx)
                deadline = time.monotonic() + 60
                while (height := alice.tx(tx).get("block")) is None:
                    assert time.monotonic() < deadline, "the tx was never in a block"
                    time.sleep(0.1)
                while not (block := alice.block(height))["sealed"]:
                    assert time.monotonic() < deadline, f"block {height} was never sealed: {block}"
                    time.sleep(0.1)
                assert [s["stage"] for s in block["stages"]] == ["precommit", "commit", "seal"]
                assert all(sorted(s["signers"]) == sorted(ids) for s in block["stages"])
                # No block of signatures alone: the node stays quiet once sealed.
                time.sleep(1.0)
                top = alice.blocks(0)[-1]["height"]
                time.sleep(1.0)
                assert alice.blocks(0)[-1]["height"] == top
                report = alice.verify_block(height)
                assert report.ok
                assert any("witnesses signed" in c.detail for c in report.checks), report
                # The witnesses pinned: the node's word for them is checked, not believed.
                pinned = alice.verify_block(height, witnesses=ids[::-1], threshold=2)
                assert "witness(es) (pinned), threshold 2 (pinned)" in pinned.checks[0].detail
                for pins in ({"witnesses": ids[:1]}, {"witnesses": ids, "threshold": 1}):
                    with pytest.raises(VerificationFailed, match="pinned"):
                        alice.verify_block(height, **pins)
                refused = cli(
                    "verify", "block", str(height), "--node", node.url, "--witness", ids[0]
                )
                assert refused.returncode == 1 and "pinned" in refused.stderr
        finally:
            ended = [interrupted(w) for w in witnesses]
        for w, (out, err) in zip(witnesses, ended, strict=True):
            assert w.returncode == 0, err
            assert out == ""
            assert f"signed seal of block {height}" in err
            assert err.strip().splitlines()[-1].endswith("no findings")
        audited = cli("audit", "--node", node.url, "--grace", "2")
    assert audited.returncode == 0, audited.stdout + audited.stderr


@contextlib.asynccontextmanager
async def _in_process(
    data: Path, witnesses: list[str], threshold: int, interval: float = 0.1
) -> AsyncIterator[Node]:
    """A node in this process with ``witnesses``, blocks every ``interval`` s."""
    config = NodeConfig(
        data_dir=data,
        workers=0,
        block_interval=interval,
        witnesses=tuple(witnesses),
        threshold=threshold,
    )
    node = Node(config)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@contextlib.asynccontextmanager
async def _first_block(
    data: Path, witness: Keypair, interval: float = 0.1
) -> AsyncIterator[tuple[Node, AsyncClient, str]]:
    """A node in this process witnessed by ``witness`` alone, its first block made (by a
    post of someone else's): the node, the witness's client and the block's id."""
    async with _in_process(data, [witness.id], 1, interval=interval) as node:
        transport = httpx.ASGITransport(app=create_app(node, manage_node=False))
        async with (
            AsyncClient("http://node", Keypair.generate(), transport=transport) as alice,
            AsyncClient("http://node", witness, transport=transport) as w,
        ):
            await alice.publish({"type": "post"})
            yield node, w, await _block(node, 1)


async def _block(node: Node, height: int) -> str:
    for _ in range(100):
        block = node.store.block(height)
        if block is not None:
            return block.id
        await asyncio.sleep(0.05)
    raise AssertionError(f"no block {height}")


def test_a_premature_stage_signature_leaves_the_witness_able_to_sign(tmp_path: Path) -> None:
    """A later stage signed too early is refused without leaving the witness's feed copy stuck
    on it: ``out_of_order`` tells a client that its feed and the node's diverged, so it keeps
    the message and sends it again before every later one."""
    witness = Keypair.generate()

    async def run() -> None:
        async with _first_block(tmp_path / "node", witness) as (_, w, block):
            early = {"type": "block/sign", "block": block, "height": 1, "stage": "commit"}
            with pytest.raises(Error) as refused:
                await w.publish(early)
            assert refused.value.code == "invalid_format", refused.value
            sign = {**early, "stage": "precommit"}
            receipt = await w.publish(sign)  # not the early one again
            got = await w.message(receipt.id)
            assert got["message"]["content"] == sign

    asyncio.run(run())


def test_stages_are_recorded_with_a_block_timer_as_fast_as_its_tick(tmp_path: Path) -> None:
    """A node building blocks on every tick of its timer records stages too."""
    witness = Keypair.generate()

    async def run() -> list[dict[str, object]]:
        async with _first_block(tmp_path / "node", witness, interval=0.01) as (node, w, block):
            sign = {"type": "block/sign", "block": block, "height": 1, "stage": "precommit"}
            await w.publish(sign)
            for _ in range(60):
                stages = node.store.block_stages(1)
                if stages:
                    return stages
                await asyncio.sleep(0.05)
            return []

    stages = asyncio.run(run())
    assert [s["stage"] for s in stages] == ["precommit"]
