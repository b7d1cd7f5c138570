"""Ingest's check stage: verdicts a message, in order, on the event loop or the verify threads."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import orjson
import pytest

from chainmail import priority, ssb
from chainmail.errors import Error, OperationalError
from chainmail.ingest import Ingest, Sequenced
from chainmail.sequencer import Accepted, Result
from support.feeds import Writer


async def _sequence(items: list[ssb.Checked | Error]) -> Sequenced:
    """A sequencer that logs whatever passed its check, at made-up positions."""

    async def visible() -> None:
        return None

    results: list[Result] = [
        item if isinstance(item, Error) else Accepted(item.id, 0, i, True)
        for i, item in enumerate(items)
    ]
    return results, visible()


def _batch(count: int, forged: set[int]) -> list[bytes]:
    writers = [Writer() for _ in range(count)]
    raws = []
    for i, writer in enumerate(writers):
        msg: dict[str, Any] = writer.sign({"type": "post", "text": f"m{i}"})
        if i in forged:
            sig = msg["signature"]
            msg["signature"] = ("B" if sig[0] == "A" else "A") + sig[1:]
        raws.append(orjson.dumps(msg))
    return raws


@pytest.mark.parametrize("workers", [0, 2])
def test_each_message_gets_its_own_verdict_in_order(workers: int) -> None:
    async def run() -> list[Result]:
        ingest = Ingest(_sequence, workers=workers)
        await ingest.start()
        try:
            # 100: beyond the few a batch checked on the event loop (_INLINE_BELOW).
            return await ingest.submit_many([*_batch(100, {0, 17, 99}), b"not json"])
        finally:
            await ingest.stop()

    results = asyncio.run(run())
    codes = [r.code if isinstance(r, Error) else "ok" for r in results]
    bad = {0: "invalid_signature", 17: "invalid_signature", 99: "invalid_signature"}
    assert codes == [bad.get(i, "ok") for i in range(100)] + ["invalid_format"]


@pytest.mark.parametrize(("workers", "size"), [(0, 3), (2, 3), (2, 100)])
def test_a_check_that_raises_fails_its_batch_alone(
    workers: int, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug in the check (not bad input) must not stop ingest: that batch
    # fails as `internal`, the next one goes through.
    real = ssb.check_batch
    calls = 0
    lock = threading.Lock()

    def flaky(items: list[bytes], hmac_key: bytes | str | None = None) -> Any:
        nonlocal calls
        with lock:  # two verify threads may call at once
            calls += 1
            first = calls == 1
        if first:
            raise RuntimeError("a bug")
        return real(items, hmac_key)

    monkeypatch.setattr(ssb, "check_batch", flaky)

    async def run() -> tuple[list[Result], list[Result]]:
        ingest = Ingest(_sequence, workers=workers)
        await ingest.start()
        try:
            first = await asyncio.wait_for(ingest.submit_many(_batch(size, set())), 10)
            second = await asyncio.wait_for(ingest.submit_many(_batch(size, set())), 10)
            return first, second
        finally:
            await ingest.stop()

    first, second = asyncio.run(run())
    assert any(isinstance(r, OperationalError) for r in first)
    assert all(isinstance(r, Accepted) for r in second)


@pytest.mark.parametrize("workers", [0, 2])
def test_stop_answers_every_request_it_took(workers: int) -> None:
    # Requests in every stage when stop comes: queued, being checked, waiting
    # for the sequencer, being sequenced. Each caller hears back: logged, or
    # told that nothing of it was; and a request after stop is told at once.
    sequenced: list[int] = []

    async def slow(items: list[ssb.Checked | Error]) -> Sequenced:
        await asyncio.sleep(0.2)
        sequenced.append(len(items))
        return await _sequence(items)

    async def run() -> tuple[list[list[Result]], list[Result]]:
        ingest = Ingest(slow, workers=workers, max_batch=16)
        await ingest.start()
        futures = [ingest.enqueue(_batch(12, set())) for _ in range(20)]
        await asyncio.sleep(0.1)  # one group in the sequencer, more behind it
        await asyncio.wait_for(ingest.stop(), 10)
        done = await asyncio.wait_for(asyncio.gather(*futures), 10)
        late = await asyncio.wait_for(ingest.submit_many(_batch(2, set())), 1)
        return done, late

    done, late = asyncio.run(run())
    outcomes = [
        {"logged" if isinstance(r, Accepted) else getattr(r, "code", "?") for r in results}
        for results in done
    ]
    assert all(o in ({"logged"}, {"internal"}) for o in outcomes), outcomes
    assert {"logged"} in outcomes and {"internal"} in outcomes
    assert sum(sequenced) == 12 * outcomes.count({"logged"})
    assert all(isinstance(r, OperationalError) for r in late)


def test_stop_answers_every_request_it_took_also_from_a_stuck_sequencer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The sequencer never answers (a log that hangs): stop gives up on it after
    # its drain timeout, and the callers of the group it holds still hear back
    # (it is unknown whether that group was logged), as does everyone behind it.
    from chainmail import ingest as ingest_module

    monkeypatch.setattr(ingest_module, "_STOP_DRAIN_S", 0.3)

    async def stuck(items: list[ssb.Checked | Error]) -> Sequenced:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def run() -> list[list[Result]]:
        ingest = Ingest(stuck, workers=0, max_batch=4)
        await ingest.start()
        futures = [ingest.enqueue(_batch(4, set())) for _ in range(6)]
        await asyncio.sleep(0.1)  # one group in the sequencer, more behind it
        await asyncio.wait_for(ingest.stop(), 10)
        return await asyncio.wait_for(asyncio.gather(*futures), 5)

    done = asyncio.run(run())
    assert all(isinstance(r, OperationalError) for results in done for r in results)


def test_small_batches_are_checked_on_the_loop_and_large_ones_on_the_verify_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = ssb.check_batch
    threads: list[str] = []

    def recording(items: list[bytes], hmac_key: bytes | str | None = None) -> Any:
        threads.append(threading.current_thread().name)
        return real(items, hmac_key)

    monkeypatch.setattr(ssb, "check_batch", recording)

    async def run() -> None:
        ingest = Ingest(_sequence, workers=2)
        await ingest.start()
        try:
            await ingest.submit_many(_batch(10, set()))
            small = list(threads)
            threads.clear()
            await ingest.submit_many(_batch(100, set()))
            assert small == [threading.current_thread().name]
            assert len(threads) == 2 and all(t.startswith("verify") for t in threads)
            threads.clear()
            # Few but large (over 64 KiB in all): the verify threads too.
            large = [
                orjson.dumps(Writer().sign({"type": "post", "text": "x" * 7000})) for _ in range(10)
            ]
            results = await ingest.submit_many(large)
            assert all(isinstance(r, Accepted) for r in results)
            assert len(threads) == 2 and all(t.startswith("verify") for t in threads)
        finally:
            await ingest.stop()

    asyncio.run(run())


@pytest.mark.skipif(not priority.supported(), reason="per-thread niceness is Linux's")
@pytest.mark.parametrize("nice", [0, 12, priority.VERIFY_NICE])
def test_backlog_batches_are_checked_at_the_niceness_asked_and_nothing_else_is(
    monkeypatch: pytest.MonkeyPatch, nice: int
) -> None:
    real = ssb.check_batch
    seen: list[tuple[str, int | None]] = []

    def recording(items: list[bytes], hmac_key: bytes | str | None = None) -> Any:
        seen.append((threading.current_thread().name, priority.this_thread()))
        return real(items, hmac_key)

    monkeypatch.setattr(ssb, "check_batch", recording)
    before = priority.this_thread() or 0
    checked: dict[str, set[tuple[str, int | None]]] = {}

    async def run() -> None:
        # A batch that fills ``max_batch`` is backlog.
        ingest = Ingest(_sequence, workers=2, verify_nice=nice, max_batch=256)
        await ingest.start()
        try:
            for label, count in (("small", 100), ("backlog", 300), ("small again", 255)):
                seen.clear()
                results = await ingest.submit_many(_batch(count, set()))
                assert all(isinstance(r, Accepted) for r in results)
                checked[label] = set(seen)
        finally:
            await ingest.stop()

    asyncio.run(run())
    # Below max_batch: the node's own priority, on the plain verify threads.
    for label in ("small", "small again"):
        assert {n for _, n in checked[label]} == {before}
        assert all(name.startswith("verify_") for name, _ in checked[label])
    # A backlog batch: on threads at the niceness asked (none of their own at 0).
    prefix = "verify-backlog_" if nice > 0 else "verify_"
    assert {n for _, n in checked["backlog"]} == {max(nice, before)}
    assert all(name.startswith(prefix) for name, _ in checked["backlog"])
    assert priority.this_thread() == before  # the loop's thread is left as it was


@pytest.mark.parametrize("nice", [-1, 20])
def test_a_verify_niceness_outside_0_to_19_is_refused(nice: int) -> None:
    with pytest.raises(ValueError, match="verify_nice"):
        Ingest(_sequence, verify_nice=nice)
