"""Ingest: raw messages in, durable results out (DESIGN §5).

Requests from every connection feed one queue. A collector takes what has
arrived (up to ``max_batch``), has the CPU-heavy part — parse, serialise,
id, ed25519 — done by verify threads on all cores (the signatures of a
chunk in one call that releases the GIL), and
hands the checked batches to the sequencer *in arrival order*, so a feed's messages submitted
in order are sequenced in order even when their batches verify out of order.
A reply is sent only after the sequencer has made the message durable and
its projection visible. A sequencer may hand back a group before its
projection is visible (an awaitable says when); the next group is then
sequenced meanwhile. The node's writer thread writes both before it answers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from chainmail import content, priority, ssb
from chainmail.errors import Error, InvalidMessage, OperationalError
from chainmail.sequencer import Result, policy_view
from chainmail.stages import StageHistograms

__all__ = ["DEFAULT_MAX_BATCH", "Ingest", "Sequenced"]

log = logging.getLogger(__name__)

#: Messages a collected batch holds at most. With 2,048, the few batches of a
#: full load (32 connections × 256 in flight: four) went through the verify
#: threads and the writer nearly in step, so one side often waited for the
#: other: the cores were busy 83-86% of the time; with 1,024 (eight batches
#: in flight) 88-93%, for the same CPU a message, and the default bench's
#: ratio went 0.439 → 0.456 at the median of five alternated pairs (higher in
#: 4 of 5); 512 cost more a message than it gained (benchmarks/README.md,
#: session 18).
DEFAULT_MAX_BATCH: Final = 1024
#: Below this many messages a batch is checked on the event loop's thread
#: (~3 ms of ed25519 at most, the GIL released): the hand-off to the verify
#: threads (a thread's wake-up, the GIL taken twice, the loop's wake-up) cost
#: 2-8 ms at half load, more than it saved (benchmarks/README.md, session 9).
_INLINE_BELOW: Final = 64
#: ... and fewer bytes than this, so a batch of large messages (or one taking
#: the slower Python path) does not hold the event loop for long.
_INLINE_BYTES: Final = 64 * 1024
_MAX_MESSAGE_BYTES: Final = 64 * 1024

#: The sequencer's answer to a group: its results, durable in the log, and an
#: awaitable that completes once they are visible to readers (the projection).
Sequenced = tuple[list[Result], Awaitable[None]]
Sequence_ = Callable[[list[ssb.Checked | Error]], Awaitable[Sequenced]]


@dataclass(slots=True)
class _Request:
    """One caller's messages, answered together (one future per request, not per message)."""

    raws: list[bytes]
    reply: asyncio.Future[list[Result]]
    #: When it arrived, was taken into a batch, and its batch was checked (``clock``).
    arrived: float = 0.0
    collected: float = 0.0
    checked: float = 0.0


#: A collected batch: its requests, and their check results once the pool is done.
_Batch = tuple[list[_Request], asyncio.Future[list[ssb.Checked | Error]]]
#: At most this many ``max_batch`` worth of checked batches share one group commit.
_GROUP_BATCHES: Final = 4
#: Groups in the log whose projection is still being written; the writer waits
#: beyond this, so a slow store holds the log back instead of piling up memory.
_PROJECTING: Final = 2
#: How long ``stop`` lets the sequencer finish the batches already checked.
_STOP_DRAIN_S: Final = 30.0


def _check_chunk(
    items: list[bytes], hmac_key: bytes | None, node_id: str | None
) -> list[ssb.Checked | Error]:
    """On a verify thread: the SSB rules, the signatures and the node's content policy.

    The signatures of a chunk are verified in one call that releases the GIL
    (``ssb.check_batch``), so the verify threads use every core while the event
    loop and the writer keep the interpreter. The policy is stateless (it
    needs only the node's id), so it runs here rather than on the sequencer.
    """
    results: list[ssb.Checked | Error] = []
    for checked in ssb.check_batch(items, hmac_key):
        if isinstance(checked, ssb.Checked):
            try:
                content.check_policy(policy_view(checked), node_id=node_id)
            except Error as exc:
                results.append(exc)
                continue
        results.append(checked)
    return results


class Ingest:
    """Batches submissions across connections through the verify pool to the sequencer."""

    def __init__(
        self,
        sequence: Sequence_,
        *,
        workers: int | None = None,
        hmac_key: bytes | None = None,
        node_id: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        verify_nice: int = priority.VERIFY_NICE,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if verify_nice not in priority.VERIFY_NICE_RANGE:
            raise ValueError(f"verify_nice: expected 0 to 19, got {verify_nice}")
        self._sequence = sequence
        #: Niceness of the threads that check backlog batches (``chainmail.priority``);
        #: 0: every batch is checked at the node's own priority.
        self._verify_nice = verify_nice
        self._clock = clock
        #: Per-stage latency of every request answered (``GET /metrics``).
        self.stages = StageHistograms()
        self._hmac_key = hmac_key
        self._node_id = node_id
        self._max_batch = max_batch
        self._workers = workers if workers is not None else (os.cpu_count() or 1)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        #: The same number of threads at ``verify_nice``, for backlog batches (None: no nice).
        self._backlog_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._checked: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=4)
        self._tasks: list[asyncio.Task[None]] = []
        self._replies: set[asyncio.Task[None]] = set()
        self._projecting = asyncio.Semaphore(_PROJECTING)
        self._stopped = False

    async def start(self) -> None:
        if self._workers > 0:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self._workers, thread_name_prefix="verify"
            )
            if self._verify_nice > 0:
                self._backlog_pool = concurrent.futures.ThreadPoolExecutor(
                    self._workers,
                    thread_name_prefix="verify-backlog",
                    initializer=functools.partial(priority.lower_this_thread, self._verify_nice),
                )
        self._tasks = [
            asyncio.create_task(self._collect(), name="ingest-collect"),
            asyncio.create_task(self._drain(), name="ingest-sequence"),
        ]

    async def stop(self) -> None:
        """Stop taking requests; answer every one taken, and never leave a caller waiting.

        What was already collected goes through the sequencer as usual (for
        up to ``_STOP_DRAIN_S``); what is still queued hears that nothing of
        it was logged.
        """
        self._stopped = True
        if not self._tasks:
            return
        collect, drain = self._tasks
        self._tasks = []
        collect.cancel()  # it answers the requests it holds
        with contextlib.suppress(asyncio.CancelledError):
            await collect
        # The batches already collected go through; the None behind them ends the drain.
        try:
            async with asyncio.timeout(_STOP_DRAIN_S):
                await self._checked.put(None)
                await asyncio.shield(drain)
        except TimeoutError:  # the sequencer is stuck: what it holds is unknown
            log.error("ingest stopped with batches still being sequenced")
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
        except Exception:  # the drain had failed already; stop answers what is left
            log.exception("ingest's sequencing task had failed")
        if self._replies:  # logged groups still being projected: let them answer
            await asyncio.gather(*self._replies, return_exceptions=True)
        pools, self._pool, self._backlog_pool = (self._pool, self._backlog_pool), None, None
        for pool in pools:
            if pool is not None:
                await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)
        # Whatever is still queued was not logged: its callers hear so now
        # instead of waiting on a node that has stopped.
        stopped = _stopped()
        while not self._queue.empty():
            request = self._queue.get_nowait()
            if not request.reply.done():
                request.reply.set_result([stopped] * len(request.raws))
        while not self._checked.empty():
            item = self._checked.get_nowait()
            if item is None:
                continue
            requests, checked = item
            if not checked.done():
                checked.cancel()
            else:
                checked.exception()  # retrieved: a pool stopped under it is no news
            _resolve(requests, [stopped] * _count(requests))

    async def submit(self, raw: bytes) -> Result:
        """Check and sequence one message; returns ``Accepted`` or the ``Error``."""
        return (await self.submit_many([raw]))[0]

    async def submit_many(self, raws: Sequence[bytes]) -> list[Result]:
        """Check and sequence messages in order; one result each, in order."""
        return await self.enqueue(raws)

    def enqueue(self, raws: Sequence[bytes]) -> asyncio.Future[list[Result]]:
        """``submit_many`` without a coroutine: queue ``raws`` now, answer on the future.

        For callers that keep many requests in flight (a WebSocket stream): no
        task per message. Call it from the event loop.
        """
        loop = asyncio.get_running_loop()
        sized = [len(raw) <= _MAX_MESSAGE_BYTES for raw in raws]
        fits = [raw for raw, ok in zip(raws, sized, strict=True) if ok]
        reply: asyncio.Future[list[Result]] = loop.create_future()
        if not fits:
            reply.set_result([])
        elif self._stopped:  # nothing takes from the queue any more
            reply.set_result([_stopped()] * len(fits))
        else:
            self._queue.put_nowait(_Request(fits, reply, arrived=self._clock()))
        if len(fits) == len(raws):
            return reply
        merged: asyncio.Future[list[Result]] = loop.create_future()

        def merge(done: asyncio.Future[list[Result]]) -> None:
            if merged.done():
                return
            if done.cancelled():
                merged.cancel()
                return
            exc = done.exception()
            if exc is not None:
                merged.set_exception(exc)
                return
            checked = iter(done.result())
            merged.set_result(
                [
                    next(checked) if ok else _too_large(len(raw))
                    for raw, ok in zip(raws, sized, strict=True)
                ]
            )

        reply.add_done_callback(merge)
        return merged

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            request = await self._queue.get()
            requests = [request]
            raws = list(request.raws)
            while len(raws) < self._max_batch and not self._queue.empty():
                request = self._queue.get_nowait()
                requests.append(request)
                raws.extend(request.raws)
            checked: asyncio.Future[list[ssb.Checked | Error]] = loop.create_future()
            now = self._clock()
            for r in requests:
                r.collected = now
            checked.add_done_callback(functools.partial(self._mark_checked, requests))
            try:
                self._start_check(loop, raws, checked)
                await self._checked.put((requests, checked))
            except asyncio.CancelledError:
                # Stopping: these were taken from the queue and will not be
                # sequenced; their callers hear so instead of waiting.
                if not checked.done():
                    checked.cancel()
                _resolve(requests, [_stopped()] * _count(requests))
                raise

    def _start_check(
        self,
        loop: asyncio.AbstractEventLoop,
        raws: list[bytes],
        checked: asyncio.Future[list[ssb.Checked | Error]],
    ) -> None:
        """Check ``raws`` inline (a few) or on the verify threads; ``checked`` gets the results."""
        if self._pool is None or (
            len(raws) < _INLINE_BELOW and sum(map(len, raws)) < _INLINE_BYTES
        ):
            # Bad input is an Error in the list; anything raised is a bug,
            # and fails this batch alone instead of ending the collector.
            try:
                checked.set_result(_check_chunk(raws, self._hmac_key, self._node_id))
            except Exception as exc:
                checked.set_exception(exc)
            return
        pool, key, node_id = self._pool, self._hmac_key, self._node_id
        if self._backlog_pool is not None and len(raws) >= self._max_batch:
            # Backlog: the collector found a whole batch's worth queued (at full
            # load every batch does; at half load hardly one, ~100-200 a batch).
            # It goes to the ``verify_nice`` threads, which yield the cores to
            # the event loop and the writer (``chainmail.priority``): throughput
            # is what counts then. Smaller batches keep the node's priority:
            # sent to those threads from 512 messages on, the larger batches
            # that follow a stall waited on everything else and the half-load
            # p99 grew by ~5 ms (benchmarks/README.md, session 11).
            pool = self._backlog_pool
        gathered = asyncio.gather(
            *(
                loop.run_in_executor(pool, _check_chunk, chunk, key, node_id)
                for chunk in _split(raws, self._workers)
            )
        )
        gathered.add_done_callback(functools.partial(_join, out=checked))

    def _mark_checked(self, requests: list[_Request], _: object) -> None:
        now = self._clock()
        for r in requests:
            r.checked = now

    async def _drain(self) -> None:
        carry: _Batch | None = None
        stop = False
        while not stop:
            first = carry if carry is not None else await self._checked.get()
            carry = None
            if first is None:
                return
            try:
                await asyncio.wait([first[1]])
            except asyncio.CancelledError:  # stop gave up: taken, never sequenced
                _resolve(first[0], [_stopped()] * _count(first[0]))
                raise
            # Group commit: batches whose check finished while the writer was busy
            # go to the sequencer together, so they share one log commit and one
            # projection commit instead of paying for two each. In queue order,
            # stopping at the first one still being checked.
            group = [first]
            size = _count(first[0])
            while size < self._max_batch * _GROUP_BATCHES and not self._checked.empty():
                item = self._checked.get_nowait()
                if item is None:
                    stop = True
                    break
                if not item[1].done():
                    carry = item
                    break
                group.append(item)
                size += _count(item[0])
            try:
                await self._sequence_group(group)
            except asyncio.CancelledError:
                if carry is not None:
                    _resolve(carry[0], [_stopped()] * _count(carry[0]))
                raise

    async def _sequence_group(self, group: list[_Batch]) -> None:
        waiting: list[_Request] = []
        items: list[ssb.Checked | Error] = []
        for requests, checked in group:
            exc = checked.exception()
            if exc is None:
                waiting.extend(requests)
                items.extend(checked.result())
            else:  # its check raised (a bug, not bad input): this batch alone fails
                err = exc if isinstance(exc, Error) else OperationalError(f"ingest failed: {exc}")
                _resolve(requests, [err] * _count(requests))
        if not items:
            return
        try:
            await self._projecting.acquire()
        except asyncio.CancelledError:
            _resolve(waiting, [_stopped()] * len(items))
            raise
        started = self._clock()
        try:
            results, visible = await self._sequence(items)
        except BaseException as exc:
            self._projecting.release()
            if not isinstance(exc, Exception):
                # Stop gave up on the sequencer: its callers hear so, not silence.
                _resolve(waiting, [_unknown()] * len(items))
                raise
            err = exc if isinstance(exc, Error) else OperationalError(f"ingest failed: {exc}")
            _resolve(waiting, [err] * len(items))
            return
        # The next group goes to the sequencer now; this one answers once visible.
        logged = self._clock()
        task = asyncio.create_task(
            self._reply(waiting, results, visible, started, logged), name="ingest-reply"
        )
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def _reply(
        self,
        waiting: list[_Request],
        results: list[Result],
        visible: Awaitable[None],
        started: float,
        logged: float,
    ) -> None:
        try:
            await visible
        finally:
            self._projecting.release()
            _resolve(waiting, results)
            self._observe(waiting, started, logged, self._clock())

    def _observe(
        self, requests: list[_Request], started: float, logged: float, visible: float
    ) -> None:
        observe = self.stages.observe
        for r in requests:
            n = len(r.raws)
            observe("queued", r.collected - r.arrived, n)
            observe("verify", r.checked - r.collected, n)
            observe("wait", started - r.checked, n)
            observe("log", logged - started, n)
            observe("project", visible - logged, n)
            observe("total", visible - r.arrived, n)


def _resolve(requests: list[_Request], results: Sequence[Result]) -> None:
    """Hand each request its slice of ``results`` (which are in request order)."""
    start = 0
    for request in requests:
        end = start + len(request.raws)
        if not request.reply.done():  # the caller may have gone (cancelled)
            request.reply.set_result(list(results[start:end]))
        start = end
    if start != len(results):  # pragma: no cover - a broken invariant
        raise AssertionError(f"{len(results)} results for {start} messages")


def _count(requests: list[_Request]) -> int:
    return sum(len(r.raws) for r in requests)


def _stopped() -> OperationalError:
    return OperationalError("the node is stopping; nothing of this request was logged")


def _unknown() -> OperationalError:
    return OperationalError(
        "the node stopped while this request was being logged; whether it was is unknown:"
        " submit it again (the same message again is answered with its place in the log)"
    )


def _too_large(size: int) -> InvalidMessage:
    return InvalidMessage(
        f"message of {size} bytes: larger than any valid message", code="too_large"
    )


def _split(items: list[bytes], parts: int) -> list[list[bytes]]:
    size = -(-len(items) // parts)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _join(
    gathered: asyncio.Future[list[list[ssb.Checked | Error]]],
    out: asyncio.Future[list[ssb.Checked | Error]],
) -> None:
    if out.done():
        return
    exc = gathered.exception()
    if exc is not None:
        out.set_exception(exc)
        return
    out.set_result([c for chunk in gathered.result() for c in chunk])
