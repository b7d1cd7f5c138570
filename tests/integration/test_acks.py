"""Acks from many recipients at once: each gets its own count, and they share commits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

import chainmail.node as node_module
from chainmail.errors import OperationalError, StorageError
from chainmail.node import Node, NodeConfig
from chainmail.sequencer import Accepted
from support.feeds import Writer

pytestmark = pytest.mark.integration

RECIPIENTS = 12


def test_concurrent_acks_are_each_answered_and_written_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> None:
        node = Node(NodeConfig(data_dir=tmp_path / "node", workers=0))
        await node.start()
        try:
            opener = Writer()
            parties = [Writer() for _ in range(RECIPIENTS)]
            deadline = int(time.time() * 1000) + 60_000
            raws = [
                opener.raw({"type": "tx/open", "parties": [opener.id, p.id], "deadline": deadline})
                for p in parties
            ]
            results = await node.submit_many(raws)
            assert all(isinstance(r, Accepted) and r.created for r in results), results
            # Each message was timed through every ingest stage (GET /metrics).
            stages = node.ingest_stages
            assert stages is not None
            for stage in ("queued", "verify", "wait", "log", "project", "total"):
                assert stages.count(stage) == RECIPIENTS, stage
            total = stages.quantile("total", 1.0)
            assert total is not None and total <= 5.0
            ids = [r.id for r in results if isinstance(r, Accepted)]
            for p, mid in zip(parties, ids, strict=True):
                assert [d.id for d in node.store.inbox(p.id, 10)] == [mid]

            calls: list[int] = []
            ack_many = node.store.ack_many

            def counted(acks: Sequence[tuple[str, Sequence[str]]]) -> list[int]:
                calls.append(len(acks))
                time.sleep(0.05)  # a commit that takes a while: later acks pile up
                return ack_many(acks)

            node.store.ack_many = counted  # type: ignore[method-assign]
            # Each recipient acks its own delivery and, once more, someone else's.
            acks = [node.ack(p.id, [mid]) for p, mid in zip(parties, ids, strict=True)]
            acks += [node.ack(parties[0].id, [ids[1]]), node.ack("@nobody", [ids[0]])]
            counts = await asyncio.gather(*acks)
            assert counts == [1] * RECIPIENTS + [0, 0]
            assert sum(calls) == RECIPIENTS + 2 and len(calls) < RECIPIENTS
            for p in parties:
                assert node.store.inbox(p.id, 10) == []

            def broken(acks: Sequence[tuple[str, Sequence[str]]]) -> list[int]:
                raise StorageError("disk gone")

            node.store.ack_many = broken  # type: ignore[method-assign]
            with pytest.raises(StorageError, match="disk gone"):
                await node.ack(parties[0].id, [ids[0]])
            node.store.ack_many = ack_many  # type: ignore[method-assign]
            assert await node.ack(parties[0].id, [ids[0]]) == 0  # already acked, and alive

            # A burst of large acks is split into commits of at most _ACK_IDS ids.
            calls.clear()
            node.store.ack_many = counted  # type: ignore[method-assign]
            monkeypatch.setattr(node_module, "_ACK_IDS", 3)
            many = await asyncio.gather(*(node.ack(p.id, ids[:2]) for p in parties))
            assert many == [0] * RECIPIENTS
            assert calls == [1] * RECIPIENTS  # 2 + 2 ids > 3: one ack a commit
        finally:
            await node.stop()
        with pytest.raises(OperationalError, match="stopping"):
            await node.ack(parties[0].id, ids)

    asyncio.run(run())
