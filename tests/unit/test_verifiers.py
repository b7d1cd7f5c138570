"""The verify workers: real forked processes, killed for real."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing.connection
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from chainmail.errors import OperationalError
from chainmail.verifiers import Verifiers, WorkerDied


def _double(items: list[int], offset: int) -> list[tuple[int, int]]:
    return [(os.getpid(), 2 * i + offset) for i in items]


def _fail_init() -> None:
    raise RuntimeError("this worker cannot start")


#: Set by a test: while this file exists, a new worker ends as it starts.
_GATE = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"chainmail-verifiers-{os.getpid()}")


def _gated_init() -> None:
    with open(_GATE + ".starts", "a") as f:
        f.write("x")
    if os.path.exists(_GATE):
        os._exit(3)


def _slow_or_fail(items: list[str]) -> list[str]:
    if "fail" in items:
        raise ValueError("asked to fail")
    if "sleep" in items:
        time.sleep(30)
    return [s.upper() for s in items]


def _sync(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """The test as a plain function: it runs ``fn`` on a fresh event loop."""

    @functools.wraps(fn)
    def run() -> None:
        asyncio.run(fn())

    return run


@contextlib.asynccontextmanager
async def _doubling() -> AsyncIterator[Verifiers]:
    pool = Verifiers(2, _double, 1)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


@_sync
async def test_results_come_back_in_order_from_every_worker() -> None:
    async with _doubling() as doubling:
        jobs = [list(range(k, k + 50)) for k in range(0, 2000, 50)]
        results = await asyncio.gather(*(doubling.run(job) for job in jobs))
        assert [[v for _, v in r] for r in results] == [[2 * i + 1 for i in job] for job in jobs]
        used = {pid for r in results for pid, _ in r}
        assert used == set(doubling.pids)
        assert len(used) == 2


@_sync
async def test_a_large_job_crosses_the_socket_whole() -> None:
    async with _doubling() as doubling:
        job = list(range(300_000))  # several MB of pickle each way
        result = await doubling.run(job)
        assert [v for _, v in result] == [2 * i + 1 for i in job]


@_sync
async def test_a_failing_job_fails_alone() -> None:
    pool = Verifiers(1, _slow_or_fail)
    await pool.start()
    try:
        with pytest.raises(OperationalError, match="ValueError: asked to fail"):
            await pool.run(["fail"])
        assert await pool.run(["ok"]) == ["OK"]
    finally:
        await pool.stop()


@_sync
async def test_a_killed_worker_fails_its_jobs_and_is_replaced() -> None:
    pool = Verifiers(1, _slow_or_fail)
    await pool.start()
    try:
        (before,) = pool.pids
        stuck = pool.run(["sleep"])
        queued = pool.run(["behind it"])
        await asyncio.sleep(0.2)
        os.kill(before, signal.SIGKILL)
        with pytest.raises(WorkerDied, match="verify worker 0"):
            await asyncio.wait_for(stuck, 10)
        with pytest.raises(WorkerDied):
            await asyncio.wait_for(queued, 10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if pool.pids and pool.pids != [before]:
                break
            await asyncio.sleep(0.05)
        assert pool.pids and pool.pids != [before]
        assert await asyncio.wait_for(pool.run(["again"]), 10) == ["AGAIN"]
    finally:
        await pool.stop()


@_sync
async def test_a_stuck_worker_is_killed_and_replaced() -> None:
    pool = Verifiers(1, _slow_or_fail, job_timeout=0.5)
    await pool.start()
    try:
        (before,) = pool.pids
        started = time.monotonic()
        with pytest.raises(WorkerDied, match=r"answered nothing for 0\.5 s"):
            await asyncio.wait_for(pool.run(["sleep"]), 10)
        assert time.monotonic() - started < 5
        deadline = time.monotonic() + 20
        while not (pool.pids and pool.pids != [before]) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # A worker busy for less than the timeout is left alone, however long it queues.
        assert await asyncio.wait_for(
            asyncio.gather(*(pool.run([f"job {i}"]) for i in range(50))), 10
        ) == [[f"JOB {i}"] for i in range(50)]
    finally:
        await pool.stop()


@_sync
async def test_sigterm_ends_a_worker_even_under_the_nodes_handler() -> None:
    # uvicorn installs a SIGTERM handler that only sets a flag; a worker forked
    # with it would ignore SIGTERM and hang the node's exit.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        pool = Verifiers(1, _slow_or_fail)
        await pool.start()
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        (pid,) = pool.pids
        stuck = pool.run(["sleep"])
        await asyncio.sleep(0.2)
        os.kill(pid, signal.SIGTERM)
        with pytest.raises(WorkerDied):
            await asyncio.wait_for(stuck, 10)
        process = pool._links[0].process
        # multiprocessing's exit sentinel survives the descriptor clean-up.
        deadline = time.monotonic() + 10
        while pool.pids == [pid] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await asyncio.wait_for(pool.run(["ok"]), 10) == ["OK"]
        live = pool._links[0].process
        assert live is not None and live is not process
        assert multiprocessing.connection.wait([live.sentinel], timeout=0.2) == []
    finally:
        await pool.stop()


@_sync
async def test_a_worker_that_cannot_start_fails_start_and_leaves_nothing() -> None:
    pool = Verifiers(2, _double, 0, init=_fail_init)
    with pytest.raises(WorkerDied):
        await pool.start()
    for link in pool._links:
        assert link.process is not None and not link.process.is_alive()


@_sync
async def test_workers_that_die_at_start_are_replaced_ever_more_slowly() -> None:
    pool = Verifiers(1, _slow_or_fail, init=_gated_init)
    await pool.start()
    try:
        open(_GATE, "w").close()
        os.kill(pool.pids[0], signal.SIGKILL)
        await asyncio.sleep(2.0)
        with open(_GATE + ".starts") as f:
            starts = len(f.read())
        assert 2 <= starts <= 8, starts  # 1 at start, then 0.1 + 0.2 + 0.4 + 0.8 s apart
        os.remove(_GATE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if pool._links[0].transport is not None and pool.pids:
                with contextlib.suppress(WorkerDied):
                    assert await asyncio.wait_for(pool.run(["back"]), 10) == ["BACK"]
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no worker came back")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(_GATE)
        with contextlib.suppress(FileNotFoundError):
            os.remove(_GATE + ".starts")
        await pool.stop()


@_sync
async def test_workers_hold_none_of_the_nodes_descriptors() -> None:
    # A copy of a client connection in a worker would keep it open after the
    # node closed it; the worker must hold its own socket only.
    reader, writer = os.pipe()
    try:
        node_had = {
            os.readlink(f"/proc/self/fd/{fd}")
            for fd in os.listdir("/proc/self/fd")
            if int(fd) > 2 and os.path.exists(f"/proc/self/fd/{fd}")
        } - {"/dev/null"}
        pool = Verifiers(1, _double, 0)
        await pool.start()
        try:
            (pid,) = pool.pids
            ours = os.readlink(f"/proc/self/fd/{writer}")
            theirs = {
                os.readlink(f"/proc/{pid}/fd/{fd}")
                for fd in os.listdir(f"/proc/{pid}/fd")
                if int(fd) > 2
            }
            assert ours not in theirs
            # Its own socket; else only what multiprocessing opens after the fork.
            assert len([t for t in theirs if t.startswith("socket:")]) == 1
            assert not theirs & node_had
        finally:
            await pool.stop()
    finally:
        os.close(reader)
        os.close(writer)


@_sync
async def test_stop_ends_every_worker_and_refuses_new_jobs() -> None:
    async with _doubling() as doubling:
        pids = doubling.pids
        await doubling.stop()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        with pytest.raises(OperationalError, match="stopped"):
            doubling.run([1])


def test_a_pool_needs_a_worker_and_a_timeout() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Verifiers(0, _double)
    with pytest.raises(ValueError, match="job_timeout"):
        Verifiers(1, _double, job_timeout=0)


@_sync
async def test_a_worker_is_reaped_by_one_waiter_however_often_asked() -> None:
    # Two threads joining one process race in waitpid, and the loser's view of
    # it stays "alive" for a moment: the lost-connection reaper and stop() share one.
    pool = Verifiers(1, _double, 0)
    await pool.start()
    try:
        link = pool._links[0]
        first = link.reap()
        assert link.reap() is first  # still waiting: the same waiter
        assert link.process is not None
        link.process.kill()
        await asyncio.wait_for(first, 10)
        assert not link.process.is_alive()
        assert link.reap() is first  # the process is gone: nothing to wait for again
    finally:
        await pool.stop()
