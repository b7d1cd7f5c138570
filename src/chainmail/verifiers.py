"""The verify workers: processes the event loop hands batches to over sockets.

``concurrent.futures.ProcessPoolExecutor`` routes every job through two
threads of the node (a feeder writing the call queue, a manager reading
results), and each hop waits for the GIL, which the sequencer and the
projector hold most of the time under load. Measured at half load
(``chainmail bench``), a batch spent ~15 ms in the pool of which the
workers were busy ~2 ms. Here each worker has its own socket pair, the
event loop writes jobs to it and reads results from it directly, and a
worker that dies is replaced: its jobs fail, later ones run.

A frame on either socket is a 4-byte job number, a 4-byte length and that
many bytes of pickle. Workers are forked, so ``work`` need not pickle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.process
import os
import pickle
import signal
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

from chainmail.errors import OperationalError

_log = logging.getLogger("chainmail.verifiers")

__all__ = ["DEFAULT_JOB_TIMEOUT", "Verifiers", "WorkerDied"]

_HEADER: Final = struct.Struct("<II")
_PICKLE: Final = pickle.HIGHEST_PROTOCOL
#: A worker that answers nothing for this long while holding jobs is killed and
#: replaced: a batch of 2,048 messages takes a worker ~0.2 s, so this is a
#: worker stuck (a hung library call), not a slow one.
DEFAULT_JOB_TIMEOUT: Final = 60.0
#: A worker that ends sooner than this after it started counts as a quick death:
#: its successor waits _RESPAWN_FIRST_S, doubling with each quick death in a
#: row, up to _RESPAWN_MAX_S.
_QUICK_DEATH_S: Final = 5.0
_RESPAWN_FIRST_S: Final = 0.1
_RESPAWN_MAX_S: Final = 10.0
#: Socket buffers: a 1,024-message job is ~0.7 MB, its result ~0.9 MB.
_SOCKET_BUFFER: Final = 4 * 1024 * 1024
#: Seconds a reaper waits for a worker's exit.
_REAP_S: Final = 5.0


class WorkerDied(OperationalError):
    """A verify worker ended with jobs unanswered; those jobs fail, later ones go to its successor."""


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """``size`` bytes from ``sock``, or None at end of stream."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return bytes(buf)


def _open_fds() -> list[int]:
    """The node's open descriptors above stdio, read just before a fork."""
    try:
        return sorted(int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2)
    except OSError:  # pragma: no cover - no /proc: nothing is closed in the worker
        return []


def _serve(
    sock: socket.socket,
    inherited: list[int],
    init: Callable[[], None] | None,
    work: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    """A worker's life: answer each job frame with its result until the node hangs up."""
    # The node's handlers came with the fork: SIGTERM must end a worker (a
    # copy of uvicorn's handler would only set a flag nobody reads), and
    # Ctrl-C is the node's to handle, not each worker's.
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The fork copied every descriptor of the node: its listening socket, its
    # clients' connections, the other workers' sockets. A copy held here would
    # keep a connection the node closed open for its peer. Only those the node
    # had before the fork: multiprocessing's own (the exit sentinel) stay.
    keep = sock.fileno()
    for fd in inherited:
        if fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    if init is not None:
        init()
    with sock:
        while True:
            header = _recv_exact(sock, _HEADER.size)
            if header is None:
                return
            job, size = _HEADER.unpack(header)
            payload = _recv_exact(sock, size)
            if payload is None:
                return
            try:
                # The node's own bytes, over a socket pair only the two ends hold.
                items = pickle.loads(payload)  # noqa: S301
                out = pickle.dumps((True, work(items, *args)), _PICKLE)
            except Exception as exc:  # the job's failure, not the worker's
                out = pickle.dumps((False, f"{type(exc).__name__}: {exc}"), _PICKLE)
            # sendall, not sendmsg: a signal may cut a send short.
            sock.sendall(_HEADER.pack(job, len(out)) + out)


class _Link(asyncio.Protocol):
    """The node's end of one worker's socket: frames in, futures resolved."""

    def __init__(self, name: str, on_lost: Callable[[_Link], None]) -> None:
        self.name = name
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.transport: asyncio.Transport | None = None
        self.process: multiprocessing.process.BaseProcess | None = None
        self._on_lost = on_lost
        self._buf = bytearray()
        self._sizes: dict[int, int] = {}  # items of each job not yet answered
        #: When the worker last answered, or was given work while idle.
        self.progress = time.monotonic()
        self.started = time.monotonic()
        #: Why the node ended this worker, when it did (for the jobs' errors).
        self.ended_because: str | None = None
        self._reaper: asyncio.Future[None] | None = None

    def reap(self) -> asyncio.Future[None]:
        """Wait (off the loop, up to 5 s) for the worker's exit: one waiter at a time.

        Two threads joining one process race in ``waitpid``: the loser gets
        ``ECHILD``, returns early, and the process looks alive until the winner
        records its exit code. A wait that ended with the process still there
        (it timed out) is started again.
        """
        stale = self._reaper is not None and self._reaper.done()
        if stale and self.process is not None and self.process.is_alive():
            self._reaper = None
        if self._reaper is None:
            process = self.process
            loop = asyncio.get_running_loop()
            if process is None:
                self._reaper = loop.create_future()
                self._reaper.set_result(None)
            else:
                self._reaper = loop.run_in_executor(None, process.join, _REAP_S)
        return self._reaper

    @property
    def load(self) -> int:
        """Items in jobs not yet answered."""
        return sum(self._sizes.values())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have Transport's methods without being its subclass.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= _HEADER.size:
            job, size = _HEADER.unpack_from(buf)
            end = _HEADER.size + size
            if len(buf) < end:
                return
            payload = bytes(memoryview(buf)[_HEADER.size : end])
            del buf[:end]
            self._answer(job, payload)

    def _answer(self, job: int, payload: bytes) -> None:
        self.progress = time.monotonic()
        future = self.pending.pop(job, None)
        self._sizes.pop(job, None)
        if future is None or future.done():
            return
        try:
            ok, value = pickle.loads(payload)  # noqa: S301 - our own worker's bytes
        except Exception as exc:  # pragma: no cover - a worker broke the frame format
            future.set_exception(WorkerDied(f"{self.name} sent an unreadable result: {exc}"))
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(OperationalError(f"verify job failed in {self.name}: {value}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        pending, self.pending = self.pending, {}
        self._sizes.clear()
        why = self.ended_because or "ended with a job unanswered"
        for future in pending.values():
            if not future.done():
                future.set_exception(WorkerDied(f"{self.name} {why}"))
        self._on_lost(self)

    def send(self, job: int, items: Sequence[Any], future: asyncio.Future[Any]) -> None:
        if self.transport is None or self.transport.is_closing():
            future.set_exception(WorkerDied(f"{self.name} is not running"))
            return
        payload = pickle.dumps(items, _PICKLE)
        if not self.pending:
            self.progress = time.monotonic()
        self.pending[job] = future
        self._sizes[job] = len(items)
        self.transport.write(_HEADER.pack(job, len(payload)) + payload)


class Verifiers:
    """``count`` forked processes that run ``work(items, *args)`` on lists of items.

    ``init`` runs first in each new worker. Call ``start`` and ``run`` from
    one event loop. ``run`` raises ``WorkerDied`` when the worker holding the
    job ends before answering (or answers nothing for ``job_timeout``
    seconds while holding jobs: it is then killed), ``OperationalError``
    when ``work`` raised.
    """

    def __init__(
        self,
        count: int,
        work: Callable[..., Any],
        *args: Any,
        init: Callable[[], None] | None = None,
        job_timeout: float = DEFAULT_JOB_TIMEOUT,
    ) -> None:
        if count < 1:
            raise ValueError(f"count: expected at least 1, got {count}")
        if job_timeout <= 0:
            raise ValueError(f"job_timeout: expected a positive number, got {job_timeout}")
        self.job_timeout = job_timeout
        self._watchdog: asyncio.Task[None] | None = None
        self.count = count
        self._work = work
        self._args = args
        self._init = init
        self._links: list[_Link] = []
        self._next_job = 0
        self._stopping = False
        self._context = multiprocessing.get_context("fork")
        self._respawns: set[asyncio.Task[None]] = set()
        self._quick_deaths = 0

    @property
    def pids(self) -> list[int]:
        """The running workers' process ids (for tests and diagnostics)."""
        return [
            link.process.pid
            for link in self._links
            if link.process is not None and link.process.pid is not None
        ]

    async def start(self) -> None:
        """Fork the workers and wait until each has answered an empty job.

        Raises ``OperationalError`` when a worker cannot start or does not
        answer within ``job_timeout``; the workers already started are ended.
        """
        try:
            for i in range(self.count):
                self._links.append(await self._spawn(f"verify worker {i}"))
            await asyncio.wait_for(
                asyncio.gather(*(self._run_on(link, []) for link in self._links)),
                self.job_timeout,
            )
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, TimeoutError):
                raise OperationalError(
                    f"verify workers did not start within {self.job_timeout:g} s"
                ) from exc
            if isinstance(exc, OSError):
                raise OperationalError(f"cannot start the verify workers: {exc}") from exc
            raise
        self._watchdog = asyncio.get_running_loop().create_task(
            self._watch(), name="verify-watchdog"
        )

    async def _watch(self) -> None:
        """Kill a worker that holds jobs and has answered nothing for ``job_timeout``."""
        every = min(1.0, self.job_timeout / 4)
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for link in self._links:
                process = link.process
                if (
                    link.pending
                    and link.ended_because is None
                    and now - link.progress > self.job_timeout
                    and process is not None
                    and process.is_alive()
                ):
                    link.ended_because = (
                        f"answered nothing for {self.job_timeout:g} s and was replaced"
                    )
                    _log.warning("%s %s", link.name, link.ended_because)
                    process.kill()

    async def _spawn(self, name: str) -> _Link:
        inherited = _open_fds()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (ours, theirs):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        process = self._context.Process(
            target=_serve,
            args=(theirs, inherited, self._init, self._work, self._args),
            name=name,
            daemon=True,
        )
        try:
            process.start()
        finally:
            theirs.close()
        link = _Link(name, self._lost)
        link.process = process
        link.started = time.monotonic()
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: link, ours)
        return link

    def _lost(self, link: _Link) -> None:
        # Reap it off the loop: a worker killed mid-job may take a moment to go.
        link.reap()
        if self._stopping:
            return
        task = asyncio.get_running_loop().create_task(self._replace(link))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _replace(self, link: _Link) -> None:
        # A worker that dies soon after it started (its init fails, the machine
        # is out of memory) is replaced after a growing pause, and a fork that
        # fails is tried again: never a busy loop of forks, never given up.
        index = self._links.index(link)
        lived = time.monotonic() - link.started
        self._quick_deaths = self._quick_deaths + 1 if lived < _QUICK_DEATH_S else 0
        while not self._stopping:
            pause = min(_RESPAWN_MAX_S, _RESPAWN_FIRST_S * 2 ** max(0, self._quick_deaths - 1))
            if self._quick_deaths:
                _log.error(
                    "%s ended %.1f s after it started; replacing it in %.1f s",
                    link.name,
                    lived,
                    pause,
                )
                await asyncio.sleep(pause)
            else:
                _log.warning("%s ended; replacing it", link.name)
            try:
                self._links[index] = await self._spawn(link.name)
                return
            except OSError as exc:
                _log.error("cannot start %s: %s", link.name, exc)
                self._quick_deaths += 1

    def _run_on(self, link: _Link, items: Sequence[Any]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._next_job = (self._next_job + 1) & 0xFFFFFFFF
        link.send(self._next_job, items, future)
        return future

    def run(self, items: Sequence[Any]) -> asyncio.Future[Any]:
        """``work(items, *args)`` on the least loaded worker; the future holds its result."""
        if self._stopping:
            raise OperationalError("the verify workers are stopped")
        link = min(
            self._links,
            key=lambda lk: (lk.transport is None or lk.ended_because is not None, lk.load),
        )
        return self._run_on(link, items)

    async def stop(self) -> None:
        """Hang up on every worker and end them; unanswered jobs fail with ``WorkerDied``."""
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for task in list(self._respawns):
            task.cancel()
        for link in self._links:
            if link.transport is not None:
                link.transport.close()
        for link in self._links:
            if link.process is not None and link.process.is_alive():
                link.process.kill()
        await asyncio.gather(*(link.reap() for link in self._links))
