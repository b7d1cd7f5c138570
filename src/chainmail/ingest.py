"""Ingest: raw messages in, durable results out (DESIGN §5).

Requests from every connection feed one queue. A collector takes what has
arrived (up to ``max_batch``), has the CPU-heavy part — parse, serialise,
id, ed25519 — done by a process pool on all cores, and hands the checked
batches to the sequencer *in arrival order*, so a feed's messages submitted
in order are sequenced in order even when their batches verify out of order.
A reply is sent only after the sequencer has made the message durable and
its projection visible; the next group is sequenced while the store writes
the projection of this one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import functools
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from chainmail import ssb
from chainmail.errors import Error, InvalidMessage, OperationalError
from chainmail.sequencer import Result

__all__ = ["DEFAULT_MAX_BATCH", "Ingest", "Sequenced"]

DEFAULT_MAX_BATCH: Final = 2048
#: Below this many messages a batch is checked in the event loop's process:
#: a round trip to the pool costs more than it saves.
_INLINE_BELOW: Final = 8
_MAX_MESSAGE_BYTES: Final = 64 * 1024
_PR_SET_PDEATHSIG: Final = 1

#: The sequencer's answer to a group: its results, durable in the log, and an
#: awaitable that completes once they are visible to readers (the projection).
Sequenced = tuple[list[Result], Awaitable[None]]
Sequence_ = Callable[[list[ssb.Checked | Error]], Awaitable[Sequenced]]
#: A collected batch: its reply futures, and its check results once the pool is done.
_Batch = tuple[list[asyncio.Future[Result]], asyncio.Future[list[ssb.Checked | Error]]]
#: At most this many ``max_batch`` worth of checked batches share one group commit.
_GROUP_BATCHES: Final = 4
#: Groups in the log whose projection is still being written; the writer waits
#: beyond this, so a slow store holds the log back instead of piling up memory.
_PROJECTING: Final = 2


def _die_with_parent() -> None:
    """Pool initializer: on Linux, ask the kernel to end this worker when the node dies.

    Without it a node killed with SIGKILL leaves its verification workers behind.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() == 1:  # the parent died before the call above
                os._exit(1)


def _check_chunk(items: list[bytes], hmac_key: bytes | None) -> list[ssb.Checked | InvalidMessage]:
    return ssb.check_batch(items, hmac_key)


class Ingest:
    """Batches submissions across connections through the verify pool to the sequencer."""

    def __init__(
        self,
        sequence: Sequence_,
        *,
        workers: int | None = None,
        hmac_key: bytes | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self._sequence = sequence
        self._hmac_key = hmac_key
        self._max_batch = max_batch
        self._workers = workers if workers is not None else (os.cpu_count() or 1)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._queue: asyncio.Queue[tuple[bytes, asyncio.Future[Result]]] = asyncio.Queue()
        self._checked: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=4)
        self._tasks: list[asyncio.Task[None]] = []
        self._replies: set[asyncio.Task[None]] = set()
        self._projecting = asyncio.Semaphore(_PROJECTING)

    async def start(self) -> None:
        if self._workers > 0:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self._workers, initializer=_die_with_parent
            )
            # Warm the workers so the first request does not pay for their start.
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                *(
                    loop.run_in_executor(self._pool, _check_chunk, [], self._hmac_key)
                    for _ in range(self._workers)
                )
            )
        self._tasks = [
            asyncio.create_task(self._collect(), name="ingest-collect"),
            asyncio.create_task(self._drain(), name="ingest-sequence"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._replies:  # logged groups still being projected: let them answer
            await asyncio.gather(*self._replies, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, raw: bytes) -> Result:
        """Check and sequence one message; returns ``Accepted`` or the ``Error``."""
        return (await self.submit_many([raw]))[0]

    async def submit_many(self, raws: Sequence[bytes]) -> list[Result]:
        """Check and sequence messages in order; one result each, in order."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Result]] = []
        for raw in raws:
            fut: asyncio.Future[Result] = loop.create_future()
            if len(raw) > _MAX_MESSAGE_BYTES:
                fut.set_result(
                    InvalidMessage(
                        f"message of {len(raw)} bytes: larger than any valid message",
                        code="too_large",
                    )
                )
            else:
                self._queue.put_nowait((raw, fut))
            futures.append(fut)
        return list(await asyncio.gather(*futures))

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            raw, fut = await self._queue.get()
            raws = [raw]
            futs = [fut]
            while len(raws) < self._max_batch and not self._queue.empty():
                raw, fut = self._queue.get_nowait()
                raws.append(raw)
                futs.append(fut)
            checked: asyncio.Future[list[ssb.Checked | Error]] = loop.create_future()
            if self._pool is None or len(raws) < _INLINE_BELOW:
                checked.set_result(list(_check_chunk(raws, self._hmac_key)))
            else:
                chunks = _split(raws, self._workers)
                parts = [
                    loop.run_in_executor(self._pool, _check_chunk, chunk, self._hmac_key)
                    for chunk in chunks
                ]
                gathered = asyncio.gather(*parts)
                gathered.add_done_callback(functools.partial(_join, out=checked))
            await self._checked.put((futs, checked))

    async def _drain(self) -> None:
        carry: _Batch | None = None
        stop = False
        while not stop:
            first = carry if carry is not None else await self._checked.get()
            carry = None
            if first is None:
                return
            await asyncio.wait([first[1]])
            # Group commit: batches whose check finished while the writer was busy
            # go to the sequencer together, so they share one log commit and one
            # projection commit instead of paying for two each. In queue order,
            # stopping at the first one still being checked.
            group = [first]
            size = len(first[0])
            while size < self._max_batch * _GROUP_BATCHES and not self._checked.empty():
                item = self._checked.get_nowait()
                if item is None:
                    stop = True
                    break
                if not item[1].done():
                    carry = item
                    break
                group.append(item)
                size += len(item[0])
            await self._sequence_group(group)

    async def _sequence_group(self, group: list[_Batch]) -> None:
        futs: list[asyncio.Future[Result]] = []
        items: list[ssb.Checked | Error] = []
        for batch_futs, checked in group:
            exc = checked.exception()
            if exc is None:
                futs.extend(batch_futs)
                items.extend(checked.result())
            else:  # the pool died: this batch alone fails
                err = exc if isinstance(exc, Error) else OperationalError(f"ingest failed: {exc}")
                _resolve(batch_futs, [err] * len(batch_futs))
        if not items:
            return
        await self._projecting.acquire()
        try:
            results, visible = await self._sequence(items)
        except BaseException as exc:
            self._projecting.release()
            if not isinstance(exc, Exception):
                raise
            err = exc if isinstance(exc, Error) else OperationalError(f"ingest failed: {exc}")
            _resolve(futs, [err] * len(futs))
            return
        # The next group goes to the sequencer now; this one answers once visible.
        task = asyncio.create_task(self._reply(futs, results, visible), name="ingest-reply")
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def _reply(
        self, futs: list[asyncio.Future[Result]], results: list[Result], visible: Awaitable[None]
    ) -> None:
        try:
            await visible
        finally:
            self._projecting.release()
            _resolve(futs, results)


def _resolve(futs: list[asyncio.Future[Result]], results: Sequence[Result]) -> None:
    for fut, result in zip(futs, results, strict=True):
        if not fut.done():
            fut.set_result(result)


def _split(items: list[bytes], parts: int) -> list[list[bytes]]:
    size = -(-len(items) // parts)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _join(
    gathered: asyncio.Future[list[list[ssb.Checked | InvalidMessage]]],
    out: asyncio.Future[list[ssb.Checked | Error]],
) -> None:
    if out.done():
        return
    exc = gathered.exception()
    if exc is not None:
        out.set_exception(exc)
        return
    out.set_result([c for chunk in gathered.result() for c in chunk])
