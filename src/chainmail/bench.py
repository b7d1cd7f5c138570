"""Ingest benchmark: signed trade traffic through a real node (DESIGN §9 ``chainmail bench``).

The run has four steps, and only the last one is timed:

1. **Traffic.** Desks of a few identities trade with each other: a ``tx/open``
   by one party naming both, seven ``tx/note``\\ s from either side and a
   ``tx/finish`` by each (ten messages a trade, several trades of a desk in
   flight at once, content of the size real confirmations have). A process
   pool on every core signs it. Each desk's messages depend only on each
   other (feed order, and a note needs its ``tx/open``), so every desk is one
   ordered stream; desks are dealt to connections, and a connection never
   lets a later message of a stream overtake an earlier one.
2. **Ceiling.** A process pool on every core runs ``crypto_sign_open`` (the
   same call as the node's verify threads, ``keys.verify_signed``) on a
   message of median size for ``verify_seconds``: the number of ed25519
   verifications per second this machine reaches, the bound no node on it
   can beat. It is measured again after the load and the mean reported, as
   other tenants of a shared machine come and go.
3. **Node.** A fresh ``chainmail serve`` in a subprocess (its own cores, a
   temporary data directory), or the node at ``node``.
4. **Load.** Each connection sends its stream as NDJSON batches
   (``POST /v1/messages/batch``, the next batch once the previous one is
   answered) or as WebSocket frames (``/v1/ingest``, up to ``window`` frames
   unanswered; the node answers a connection in order). The first part of
   every stream goes as fast as the node takes it (throughput, submit →
   durable latency); the rest at half that rate (delivery latency, as the
   target is stated "at half load"). Meanwhile signed ``WS
   /v1/inbox/stream`` connections follow a sample of recipients and time
   each delivery against the moment its message was sent.

Latency of a message is measured in the client: from sending its batch or
frame to reading its result, or to reading it from the recipient's stream.
At full load it is mostly queueing (messages in flight / rate); the half-load
figures are the ones to hold against a latency target. ``cpu_us_per_msg``
(the node's main thread, its other threads — the verify threads among
them —, its child processes, and the client, per message at full load,
from ``/proc``; ``half_load_cpu_us_per_msg`` the same at half load) says where the cores went
and varies far less than throughput on a shared machine.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import math
import multiprocessing
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from array import array
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import httpx
import orjson
import websockets

from chainmail import httpsig, ssb
from chainmail.errors import Error
from chainmail.ids import is_feed_id
from chainmail.keys import Keypair, verify_signed
from chainmail.priority import VERIFY_NICE_RANGE
from chainmail.stages import BUCKETS, STAGES

T = TypeVar("T")

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_CONNECTIONS",
    "DEFAULT_FEEDS",
    "DEFAULT_MESSAGES",
    "DEFAULT_WINDOW",
    "BenchConfig",
    "BenchError",
    "Mode",
    "NodeProcess",
    "Traffic",
    "generate",
    "percentile",
    "process_rss_mb",
    "run",
    "stage_quantiles",
    "verify_ceiling",
]

Mode = Literal["http", "ws"]

DEFAULT_MESSAGES: Final = 25_000
DEFAULT_FEEDS: Final = 1_000
#: Messages per ``POST /v1/messages/batch``.
DEFAULT_BATCH: Final = 256
#: Concurrent client connections (each carries its own desks' streams). With
#: 16 (4,096 messages in flight at the default batch) the node's pipeline of
#: verify, log and projection ran short of work: 32 gave +13-19% msgs/s on
#: the same node, alternated runs (benchmarks/README.md, session 4).
DEFAULT_CONNECTIONS: Final = 32
#: WebSocket frames sent but not yet answered, per connection.
DEFAULT_WINDOW: Final = 256
#: Share of each stream sent at half the measured rate, for delivery latency.
DEFAULT_HALF_LOAD_SHARE: Final = 0.2
#: Recipients whose inbox streams are timed: 64 give ~300 half-load deliveries a
#: run, so the p99 is the 4th-slowest of them rather than the 2nd of ~80.
DEFAULT_INBOX_SAMPLE: Final = 64
DEFAULT_VERIFY_SECONDS: Final = 2.0

#: Identities per desk: they trade only with each other.
DESK_SIZE: Final = 4
#: Trades of one desk in progress at the same time.
_DESK_CONCURRENCY: Final = 3
_NOTES_PER_TRADE: Final = 7
_DEADLINE_MS: Final = 24 * 3600 * 1000
_NDJSON: Final = "application/x-ndjson"
_INBOX_PATH: Final = "/v1/inbox/stream"
#: How long to wait for the sampled deliveries after the last message is durable.
_DELIVERY_GRACE_S: Final = 5.0
_READY_TIMEOUT_S: Final = 60.0
_STOP_TIMEOUT_S: Final = 30.0
_HALF_LOAD_HEADROOM_S: Final = 0.05


class BenchError(Error):
    """The benchmark could not run: the node did not start, or failed under load."""

    code = "internal"
    title = "Benchmark failed"


def _bad_config(detail: str) -> BenchError:
    """A ``BenchError`` for settings that cannot run: the caller's input, not a failure."""
    return BenchError(detail, code="invalid_format")


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run does. Every field has a default."""

    messages: int = DEFAULT_MESSAGES
    feeds: int = DEFAULT_FEEDS
    mode: Mode = "http"
    #: A running node's base URL; ``None`` starts a fresh one.
    node: str | None = None
    batch: int = DEFAULT_BATCH
    connections: int = DEFAULT_CONNECTIONS
    window: int = DEFAULT_WINDOW
    half_load_share: float = DEFAULT_HALF_LOAD_SHARE
    inbox_sample: int = DEFAULT_INBOX_SAMPLE
    verify_seconds: float = DEFAULT_VERIFY_SECONDS
    #: Options of the node this run starts (ignored with ``node``).
    block_interval: float = 1.0
    synchronous: str = "FULL"
    node_workers: int | None = None
    #: ``serve --verify-nice`` of the started node (None: the node's default).
    node_verify_nice: int | None = None
    #: Keep the started node's data here instead of a temporary directory.
    data_dir: Path | None = None
    #: Traffic seed; ``None`` picks one, so a reused node never sees a feed twice.
    seed: int | None = None
    #: Seconds between samples of the started node's memory.
    rss_every: float = 1.0
    #: Write every sampled delivery here, one CSV line each (``write_deliveries``).
    deliveries_out: Path | None = None
    #: Processes that sign the traffic and measure the ceiling (default: all cores).
    cores: int | None = None

    def check(self) -> None:
        """Raises ``BenchError`` (code ``invalid_format``: bad input) for a configuration that cannot run."""
        if self.messages < 1:
            raise _bad_config(f"messages: expected at least 1, got {self.messages}")
        if self.feeds < 2:
            raise _bad_config(f"feeds: expected at least 2, got {self.feeds}")
        if self.mode not in ("http", "ws"):
            raise _bad_config(f"mode: expected http or ws, got {self.mode!r}")
        if self.batch < 1 or self.connections < 1 or self.window < 1:
            raise _bad_config("batch, connections and window must be at least 1")
        if not 0.0 <= self.half_load_share < 1.0:
            raise _bad_config(f"half_load_share: expected 0 ≤ x < 1, got {self.half_load_share}")
        if self.node_verify_nice is not None and self.node_verify_nice not in VERIFY_NICE_RANGE:
            raise _bad_config(f"node_verify_nice: expected 0 to 19, got {self.node_verify_nice}")
        if self.synchronous.upper() not in ("FULL", "NORMAL"):
            raise _bad_config(f"synchronous: expected FULL or NORMAL, got {self.synchronous!r}")
        if self.deliveries_out is not None:
            # Said now, not after a run whose figures would then be lost.
            where = Path(self.deliveries_out).parent
            if not where.is_dir() or not os.access(where, os.W_OK):
                raise _bad_config(f"deliveries_out: cannot write in {where}")
        if self.node is not None:
            parts = urllib.parse.urlsplit(str(self.node))
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise _bad_config(f"node: not an http(s) URL: {self.node!r}")


# --- traffic ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DeskSpec:
    desk: int
    seed: int
    messages: int
    start_ms: int
    watched: bool  # is this desk's first identity a sampled recipient?


@dataclass(frozen=True)
class _DeskTraffic:
    desk: int
    raws: list[bytes]
    #: Position in ``raws`` and id of each message delivered to the sampled identity.
    watched: list[tuple[int, str]]
    txs: int
    keys: list[Keypair]


@dataclass(frozen=True)
class Traffic:
    """Signed messages ready to send: one ordered stream per connection."""

    streams: list[list[bytes]]
    #: Index of each stream's first message in the run's flat numbering.
    offsets: list[int]
    #: Id → flat index of every message addressed to a sampled recipient.
    watched: dict[str, int]
    sample: list[Keypair]
    feeds: int
    txs: int
    mean_bytes: float
    #: ``signature ‖ signed bytes`` and public key of a median-size message.
    verify_sample: tuple[bytes, bytes]

    @property
    def messages(self) -> int:
        return sum(len(s) for s in self.streams)


def _desk_keys(seed: int, desk: int, size: int) -> list[Keypair]:
    return [
        Keypair.from_seed(hashlib.sha256(f"chainmail-bench/{seed}/{desk}/{i}".encode()).digest())
        for i in range(size)
    ]


_ISINS: Final = ("XS2345678901", "US912828YK03", "DE0001102580", "FR0013508470", "GB00BL68HJ26")
_NOTE_KINDS: Final = ("quote", "affirm", "allocation", "ssi", "confirm", "comment", "status")
_TEXT: Final = (
    "settlement instructions confirmed as per standing agreement custodian account updated "
    "please advise on partial delivery versus payment for the remaining nominal amount under "
    "the master agreement and the relevant schedule with the agreed cut-off and value date"
)
_WORDS: Final = tuple(_TEXT.split())


def _text(rng: random.Random, low: int, high: int) -> str:
    target = rng.randint(low, high)
    words: list[str] = []
    size = 0
    while size < target:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:target]


def _open_content(rng: random.Random, a: str, b: str, deadline: int, ref: str) -> dict[str, Any]:
    quantity = rng.randrange(100_000, 50_000_000, 100_000)
    price = f"{rng.randint(90, 110)}.{rng.randint(0, 9999):04d}"
    isin = rng.choice(_ISINS)
    return {
        "type": "tx/open",
        "parties": [a, b],
        "deadline": deadline,
        "finish": "all",
        "subject": f"BUY {quantity:,} {isin} @ {price}",
        "data": {
            "ref": ref,
            "instrument": "bond",
            "isin": isin,
            "side": "buy",
            "quantity": quantity,
            "price": price,
            "currency": rng.choice(("EUR", "USD", "GBP")),
            "trade_date": "2026-11-20",
            "settlement_date": "2026-11-24",
            "venue": "XOFF",
            "buyer_lei": "5493001KJTIIGC8Y1R12",
            "seller_lei": "529900T8BM49AURSDO55",
            "trader": f"desk-{rng.randint(1, 40)}/t{rng.randint(100, 999)}",
        },
    }


def _note_content(rng: random.Random, tx: str, step: int, ref: str) -> dict[str, Any]:
    kind = _NOTE_KINDS[step % len(_NOTE_KINDS)]
    data: dict[str, Any] = {"kind": kind, "ref": ref, "step": step}
    if kind == "allocation":
        data["allocations"] = [
            {"account": f"ACC-{rng.randint(10000, 99999)}", "quantity": rng.randint(1, 100) * 1000}
            for _ in range(rng.randint(1, 5))
        ]
    elif kind == "ssi":
        data["ssi"] = {
            "custodian": "EUROCLEAR",
            "account": f"{rng.randint(10000, 99999)}",
            "bic": "MGTCBEBEXXX",
            "place_of_settlement": "MGTCBEBEXXX",
        }
    data["text"] = _text(rng, 40, 400)
    return {"type": "tx/note", "tx": tx, "data": data}


def _finish_content(rng: random.Random, tx: str, ref: str) -> dict[str, Any]:
    return {"type": "tx/finish", "tx": tx, "data": {"ref": ref, "status": "agreed"}}


@dataclass
class _Trade:
    a: int
    b: int
    ref: str
    steps: list[tuple[str, int]]  # (kind, author) still to send
    tx: str = ""
    done: int = 0


def _desk(spec: _DeskSpec) -> _DeskTraffic:
    """Sign one desk's ordered stream. A top-level function so a process pool can run it."""
    rng = random.Random(spec.seed * 1_000_003 + spec.desk)
    keys = _desk_keys(spec.seed, spec.desk, DESK_SIZE)
    ids = [k.id for k in keys]
    heads: list[ssb.FeedState | None] = [None] * DESK_SIZE
    trades: list[_Trade] = []
    raws: list[bytes] = []
    watched: list[tuple[int, str]] = []
    clock = spec.start_ms
    opened = 0
    while len(raws) < spec.messages:
        if not trades or (len(trades) < _DESK_CONCURRENCY and rng.random() < 0.3):
            a, b = rng.sample(range(DESK_SIZE), 2)
            steps = [("open", a)]
            steps += [("note", rng.choice((a, b))) for _ in range(_NOTES_PER_TRADE)]
            finishes = [("finish", a), ("finish", b)]
            rng.shuffle(finishes)
            trades.append(_Trade(a, b, f"T-{spec.desk}-{opened}", steps + finishes))
            opened += 1
        trade = rng.choice(trades)
        kind, author = trade.steps[trade.done]
        other = trade.b if author == trade.a else trade.a
        if kind == "open":
            body = _open_content(rng, ids[trade.a], ids[trade.b], clock + _DEADLINE_MS, trade.ref)
        elif kind == "note":
            body = _note_content(rng, trade.tx, trade.done, trade.ref)
        else:
            body = _finish_content(rng, trade.tx, trade.ref)
        msg = ssb.create(keys[author], body, heads[author], clock)
        mid = ssb.message_id(msg)
        heads[author] = ssb.FeedState(id=mid, sequence=msg["sequence"])
        if kind == "open":
            trade.tx = mid
        if spec.watched and other == 0:
            watched.append((len(raws), mid))
        raws.append(orjson.dumps(msg))
        clock += 1
        trade.done += 1
        if trade.done == len(trade.steps):
            trades.remove(trade)
    return _DeskTraffic(spec.desk, raws, watched, opened, keys)


def _pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    # fork: the children need nothing but this module, and start at once.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)


def _cores(config: BenchConfig) -> int:
    return config.cores or os.cpu_count() or 1


def generate(
    config: BenchConfig,
    *,
    seed: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> Traffic:
    """Sign ``config.messages`` messages of trade traffic on every core.

    Raises ``BenchError`` when the configuration cannot run.
    """
    config.check()
    desks = max(1, config.feeds // DESK_SIZE)
    base, extra = divmod(config.messages, desks)
    sample = min(config.inbox_sample, desks)
    step = desks / sample if sample else 0.0
    sampled = {int(i * step) for i in range(sample)}
    start_ms = time.time_ns() // 1_000_000
    specs = [
        _DeskSpec(d, seed, base + (d < extra), start_ms, d in sampled)
        for d in range(desks)
        if base + (d < extra) > 0
    ]
    results: dict[int, _DeskTraffic] = {}
    done = 0
    with _pool(_cores(config)) as pool:
        for out in pool.map(_desk, specs, chunksize=max(1, len(specs) // (8 * _cores(config)))):
            results[out.desk] = out
            done += len(out.raws)
            if on_progress is not None:
                on_progress(done, config.messages)

    connections = min(config.connections, len(results))
    by_connection: list[list[_DeskTraffic]] = [[] for _ in range(connections)]
    for i, desk in enumerate(sorted(results)):
        by_connection[i % connections].append(results[desk])
    streams: list[list[bytes]] = []
    offsets: list[int] = []
    watched: dict[str, int] = {}
    total = 0
    for group in by_connection:
        stream, marks = _interleave(group)
        offsets.append(total)
        streams.append(stream)
        for position, mid in marks:
            watched[mid] = total + position
        total += len(stream)

    sizes = sorted((len(r), r) for s in streams for r in s[:: max(1, len(s) // 50)])
    median = sizes[len(sizes) // 2][1]
    return Traffic(
        streams=streams,
        offsets=offsets,
        watched=watched,
        sample=[results[d].keys[0] for d in sorted(sampled) if d in results],
        feeds=desks * DESK_SIZE,
        txs=sum(r.txs for r in results.values()),
        mean_bytes=sum(len(r) for s in streams for r in s) / max(1, total),
        verify_sample=_verify_sample(median),
    )


def _interleave(desks: list[_DeskTraffic]) -> tuple[list[bytes], list[tuple[int, str]]]:
    """Round-robin merge that keeps each desk's order; returns the stream and its marks."""
    stream: list[bytes] = []
    marks: list[tuple[int, str]] = []
    cursors = [0] * len(desks)
    watch = [dict(d.watched) for d in desks]
    live = list(range(len(desks)))
    while live:
        still: list[int] = []
        for i in live:
            position = cursors[i]
            mid = watch[i].get(position)
            if mid is not None:
                marks.append((len(stream), mid))
            stream.append(desks[i].raws[position])
            cursors[i] = position + 1
            if cursors[i] < len(desks[i].raws):
                still.append(i)
        live = still
    return stream, marks


def _verify_sample(raw: bytes) -> tuple[bytes, bytes]:
    """What ``crypto_sign_open`` gets for ``raw``: signature ‖ signed bytes, public key."""
    checked = ssb.check_raw(raw)
    text = checked.text.encode("utf-8")
    signed = text[: text.rindex(b',\n  "signature": ')] + b"\n}"
    msg = orjson.loads(raw)
    signature = _b64decode(msg["signature"].removesuffix(".sig.ed25519"))
    public = _b64decode(checked.author[1:].removesuffix(".ed25519"))
    return signature + signed, public


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text)


def _run_client(main: Coroutine[Any, Any, T]) -> T:
    """Run the load client on uvloop where it is installed (uvicorn's standard extra brings it).

    The client shares the node's cores: asyncio's own loop spent about twice
    uvloop's CPU a request on the half-load phase's many small batches.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] installs it
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


# --- verify ceiling -----------------------------------------------------------------------


def _verify_for(seconds: float, signed: bytes, public: bytes, start_at: float) -> tuple[int, float]:
    """Verify ``signed`` for ``seconds`` from wall time ``start_at``; (count, elapsed)."""
    while time.time() < start_at:
        time.sleep(0.001)
    count = 0
    begin = time.perf_counter()
    end = begin + seconds
    now = begin
    while now < end:
        for _ in range(32):
            # The same call the node's verify threads make for each message.
            if not verify_signed(signed, public):
                raise BenchError("the ceiling's sample message does not verify")
        count += 32
        now = time.perf_counter()
    return count, now - begin


def _noop(_: int) -> int:
    return os.getpid()


def verify_ceiling(
    sample: tuple[bytes, bytes],
    *,
    seconds: float = DEFAULT_VERIFY_SECONDS,
    cores: int | None = None,
) -> float:
    """ed25519 verifications per second on ``cores`` processes (default: all cores) together."""
    workers = cores or os.cpu_count() or 1
    signed, public = sample
    with _pool(workers) as pool:
        list(pool.map(_noop, range(workers)))  # start every worker before the clock runs
        start_at = time.time() + 0.2
        futures = [
            pool.submit(_verify_for, seconds, signed, public, start_at) for _ in range(workers)
        ]
        results = [f.result() for f in futures]
    return sum(count / elapsed for count, elapsed in results)


# --- the node -----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_status_kb(pid: int, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(OSError, ValueError),
                open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f,
            ):
                out.extend(int(c) for c in f.read().split())
    return out


def process_rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory of ``pid`` and of ``pid`` with its children, in MiB (Linux ``/proc``)."""
    own = _read_status_kb(pid, "VmRSS") / 1024
    children = sum(_read_status_kb(c, "VmRSS") for c in _children(pid)) / 1024
    return own, own + children


def _ticks_seconds(stat_line: str) -> float:
    # Fields after the parenthesised command name; utime and stime are 14th and 15th.
    fields = stat_line.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds used so far by ``pid``'s main thread, its other threads, and its children.

    Linux ``/proc`` only; empty when the process is gone. Children are counted
    while alive (a chainmail node starts none; a node of another build may).
    """
    out = {"main": 0.0, "threads": 0.0, "children": 0.0}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for tid in tasks:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as f:
                used = _ticks_seconds(f.read())
            out["main" if int(tid) == pid else "threads"] += used
    for child in _children(pid):
        with (
            contextlib.suppress(OSError, ValueError, IndexError),
            open(f"/proc/{child}/stat", encoding="ascii") as f,
        ):
            out["children"] += _ticks_seconds(f.read())
    return out


class NodeProcess:
    """``chainmail serve`` in a subprocess on a free port, with its data in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        block_interval: float = 1.0,
        synchronous: str = "FULL",
        workers: int | None = None,
        verify_nice: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self._args = [
            sys.executable,
            "-c",
            "from chainmail.cli import main; main()",
            "serve",
            "--data",
            str(data_dir),
            "--port",
            str(self.port),
            "--block-interval",
            str(block_interval),
            "--synchronous",
            synchronous,
            "--quiet",
        ]
        if workers is not None:
            self._args += ["--workers", str(workers)]
        if verify_nice is not None:
            self._args += ["--verify-nice", str(verify_nice)]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("the node is not running")
        return self.proc.pid

    def start(self) -> None:
        """Start the node (returns at once; ``wait_ready`` waits for it)."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            # A process group of its own: Ctrl-C on the benchmark does not hit the
            # node mid-run (``stop`` ends it), and a forced stop ends anything it started too.
            self.proc = subprocess.Popen(
                self._args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    async def wait_ready(self, timeout: float = _READY_TIMEOUT_S) -> None:
        """Until ``/healthz`` says ok. Raises ``BenchError`` if the node exits or is too slow."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise BenchError(
                        f"the node exited with {self.proc.returncode}:\n{self._tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get("/healthz")
                    if r.status_code == 200 and r.json().get("status") == "ok":
                        return
                await asyncio.sleep(0.05)
        raise BenchError(f"the node did not answer /healthz within {timeout} s:\n{self._tail()}")

    def stop(self) -> int | None:
        """Stop the node gracefully (SIGINT), then by force; returns its exit code."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()


# --- load ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0–100) of ``values``, which must be sorted; nan if empty."""
    if not values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


@dataclass
class _Recorder:
    """Per-message send and result times (flat index), and what the node answered."""

    total: int
    sent: array[float] = field(init=False)
    done: array[float] = field(init=False)
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    first_problem: str | None = None

    def __post_init__(self) -> None:
        self.sent = array("d", bytes(8 * self.total))
        self.done = array("d", bytes(8 * self.total))

    @property
    def answered(self) -> int:
        return self.accepted + self.duplicates + sum(self.rejected.values())

    def result(self, line: bytes) -> None:
        if line.endswith(b'"status":201}'):
            self.accepted += 1
            return
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = {"status": 0, "code": "bad_reply", "detail": line[:200].decode(errors="replace")}
        status = obj.get("status")
        if status == 201:
            self.accepted += 1
        elif status == 200:
            self.duplicates += 1
        else:
            self.rejected[str(obj.get("code"))] += 1
            if self.first_problem is None:
                self.first_problem = f"{obj.get('code')}: {obj.get('detail')}"


@dataclass
class _Phase:
    seconds: float
    messages: int
    latencies: list[float]  # sorted, seconds
    #: CPU seconds in the phase: the node's main thread, other threads, children; the client.
    cpu: dict[str, float]


class _Pacer:
    """Spreads ``rate`` messages per second; ``None`` sends as fast as allowed.

    ``phase`` delays the first send: connections paced from the same instant
    would all send at once, every time, and measure their own bursts.
    """

    def __init__(self, rate: float | None, phase: float = 0.0) -> None:
        self.rate = rate
        self.next = time.perf_counter() + phase

    async def wait(self, count: int) -> None:
        if self.rate is None:
            return
        delay = self.next - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            self.next = time.perf_counter()  # behind: do not burst to catch up
        self.next += count / self.rate


class _Http:
    """A bare HTTP/1.1 keep-alive connection: the load client must cost the node's
    cores as little as possible (httpx spends ~2 ms of CPU on a small request)."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._tls else 80)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(
            self._host, self._port, ssl=True if self._tls else None, limit=2**24
        )

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        """Status and body of one POST. Raises ``BenchError`` if the connection fails."""
        if self._reader is None or self._writer is None:
            raise BenchError("connection not open")
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            self._writer.write(head.encode("ascii") + body)
            await self._writer.drain()
            raw = await self._reader.readuntil(b"\r\n\r\n")
            status = int(raw[9:12])
            headers = raw.decode("latin-1").lower()
            if "transfer-encoding: chunked" in headers:
                chunks: list[bytes] = []
                while True:
                    size = int((await self._reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                    chunk = await self._reader.readexactly(size + 2)
                    if size == 0:
                        break
                    chunks.append(chunk[:-2])
                return status, b"".join(chunks)
            length = 0
            for line in headers.split("\r\n"):
                if line.startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            return status, await self._reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise BenchError(f"POST {path} failed: {exc!r}") from exc


async def _http_stream(
    conn: _Http,
    stream: list[bytes],
    offset: int,
    lo: int,
    hi: int,
    batch: int,
    rec: _Recorder,
    pacer: _Pacer,
) -> None:
    i = lo
    while i < hi:
        j = min(hi, i + batch)
        await pacer.wait(j - i)
        body = b"\n".join(stream[i:j])
        start = time.perf_counter()
        rec.sent[offset + i : offset + j] = array("d", [start]) * (j - i)
        status, content = await conn.post("/v1/messages/batch", body, _NDJSON)
        end = time.perf_counter()
        if status != 200:
            raise BenchError(f"POST /v1/messages/batch: HTTP {status}: {content[:300]!r}")
        lines = content.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        if len(lines) != j - i:
            raise BenchError(f"batch of {j - i} messages got {len(lines)} result lines")
        for line in lines:
            rec.result(line)
        rec.done[offset + i : offset + j] = array("d", [end]) * (j - i)
        i = j


async def _ws_stream(
    ws: Any,
    stream: list[bytes],
    offset: int,
    lo: int,
    hi: int,
    window: int,
    rec: _Recorder,
    pacer: _Pacer,
) -> None:
    slots = asyncio.Semaphore(window)
    burst = _ws_burst(pacer.rate)

    async def send() -> None:
        i = lo
        while i < hi:
            j = min(hi, i + burst)
            await pacer.wait(j - i)
            for k in range(i, j):
                await slots.acquire()
                rec.sent[offset + k] = time.perf_counter()
                await ws.send(stream[k])
            i = j

    async def receive() -> None:
        for k in range(lo, hi):
            reply = await ws.recv(decode=False)
            rec.done[offset + k] = time.perf_counter()
            slots.release()
            rec.result(reply)

    sender = asyncio.create_task(send())
    try:
        await receive()
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender


def _ws_burst(rate: float | None) -> int:
    """Frames a paced WebSocket stream sends back to back (about every 5 ms)."""
    return 1 if rate is None else max(1, int(rate * 0.005))


def _phase(rng: random.Random, count: int, rate: float | None) -> float:
    """A random start within one sending interval of ``count`` messages at ``rate``."""
    return 0.0 if rate is None or rate <= 0 else rng.uniform(0.0, count / rate)


def _ws_url(base: str, path: str) -> str:
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://").rstrip("/") + path
    return "ws://" + base.removeprefix("http://").rstrip("/") + path


@dataclass
class _Deliveries:
    """Delivery times of sampled messages, from the recipients' inbox streams."""

    watched: dict[str, int]
    sent: array[float]
    seen: dict[int, float] = field(default_factory=dict)
    frames: int = 0


async def _follow_inbox(url: str, keys: Keypair, out: _Deliveries, ready: asyncio.Event) -> None:
    headers = httpsig.sign_request(keys, "GET", _INBOX_PATH, "", created=int(time.time()))
    async with websockets.connect(
        _ws_url(url, _INBOX_PATH),
        additional_headers=headers,
        compression=None,
        max_size=16 * 1024 * 1024,
    ) as ws:
        ready.set()
        acks: list[str] = []

        async def flush_acks() -> None:
            while True:
                await asyncio.sleep(0.1)
                if acks:
                    batch = acks[:]
                    acks.clear()
                    await ws.send(orjson.dumps({"ack": batch}).decode())

        flusher = asyncio.create_task(flush_acks())
        try:
            async for frame in ws:
                now = time.perf_counter()
                entry = orjson.loads(frame)
                mid = entry.get("id")
                if not isinstance(mid, str):
                    continue  # a problem document about an ack
                out.frames += 1
                acks.append(mid)
                index = out.watched.get(mid)
                if index is not None and index not in out.seen:
                    out.seen[index] = now
        except websockets.ConnectionClosed:
            pass
        finally:
            flusher.cancel()


async def _metrics(client: httpx.AsyncClient) -> dict[str, float]:
    out: dict[str, float] = {}
    with contextlib.suppress(httpx.HTTPError, ValueError):
        text = (await client.get("/metrics")).text
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
    return out


async def _sealed_metrics(
    client: httpx.AsyncClient, before: dict[str, float], config: BenchConfig
) -> dict[str, float]:
    """The node's metrics once the block builder has sealed what the load closed.

    Blocks are sealed on the node's own tick, so a short run can end before the
    first one; waiting a few ticks for the height to move measures the builder
    rather than the race between the tick and the end of the load.
    """
    height = "chainmail_block_height"
    deadline = time.perf_counter() + max(5.0, 5 * config.block_interval)
    metrics = await _metrics(client)
    while metrics.get(height, 0.0) <= before.get(height, 0.0):
        if time.perf_counter() >= deadline or height not in metrics:
            break
        await asyncio.sleep(0.1)
        metrics = await _metrics(client)
    return metrics


def stage_quantiles(
    before: Mapping[str, float], after: Mapping[str, float]
) -> dict[str, list[float | None]]:
    """p50 and p99 of each ingest stage between two ``/metrics`` readings, in ms.

    Each is the upper bound of the histogram bucket it falls in (None past
    the last bound, or for a stage with no messages in between).
    """
    out: dict[str, list[float | None]] = {}
    for stage in STAGES:

        def bucket(le: str, stage: str = stage) -> float:
            key = f'chainmail_ingest_stage_seconds_bucket{{stage="{stage}",le="{le}"}}'
            return after.get(key, 0.0) - before.get(key, 0.0)

        total = bucket("+Inf")
        if total <= 0:
            continue
        marks: list[float | None] = []
        for q in (0.5, 0.99):
            mark: float | None = None
            for bound in BUCKETS:
                if bucket(f"{bound:g}") >= q * total:
                    mark = round(bound * 1000, 1)
                    break
            marks.append(mark)
        out[stage] = marks
    return out


@dataclass
class _Load:
    full: _Phase
    half: _Phase
    half_rate: float
    deliveries: _Deliveries
    rss: list[tuple[float, float, float]]
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    rec: _Recorder
    #: Ingest stage p50/p99 (ms, bucket bounds) over the half-load phase.
    half_stages: dict[str, list[float | None]]


async def _drive(
    config: BenchConfig,
    traffic: Traffic,
    url: str,
    pid: int | None,
    on_progress: Callable[[int, int], None] | None,
    on_rss: Callable[[float, float, float, int], None] | None,
) -> _Load:
    rec = _Recorder(traffic.messages)
    deliveries = _Deliveries(traffic.watched, rec.sent)
    splits = [round(len(s) * (1.0 - config.half_load_share)) for s in traffic.streams]
    rss: list[tuple[float, float, float]] = []
    began = time.perf_counter()

    async def sample_rss() -> None:
        while pid is not None:
            own, total = process_rss_mb(pid)
            elapsed = time.perf_counter() - began
            rss.append((elapsed, own, total))
            if on_rss is not None:
                on_rss(elapsed, own, total, rec.answered)
            await asyncio.sleep(config.rss_every)

    async def progress() -> None:
        while on_progress is not None:
            on_progress(rec.answered, traffic.messages)
            await asyncio.sleep(0.1)

    limits = httpx.Limits(max_connections=config.connections + 2, max_keepalive_connections=None)
    timeout = httpx.Timeout(300.0, connect=10.0)
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout)
        )
        metrics_before = await _metrics(client)
        sockets: list[Any] = []
        conns: list[_Http] = []
        if config.mode == "http":
            for _ in traffic.streams:
                conn = _Http(url)
                await conn.open()
                stack.push_async_callback(conn.close)
                conns.append(conn)
        if config.mode == "ws":
            for _ in traffic.streams:
                sockets.append(
                    await stack.enter_async_context(
                        websockets.connect(
                            _ws_url(url, "/v1/ingest"), compression=None, max_size=2**24
                        )
                    )
                )
        ready = [asyncio.Event() for _ in traffic.sample]
        followers = [
            asyncio.create_task(_follow_inbox(url, keys, deliveries, ev))
            for keys, ev in zip(traffic.sample, ready, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in ready)), 30.0)
        helpers = [asyncio.create_task(sample_rss()), asyncio.create_task(progress())]

        async def phase(bounds: list[tuple[int, int]], rate: float | None) -> _Phase:
            start = time.perf_counter()
            cpu_before = process_cpu_seconds(pid) if pid is not None else {}
            client_before = time.process_time()
            per_stream = None if rate is None else rate / len(traffic.streams)
            jobs = []
            phases = random.Random(len(bounds))
            for s, (lo, hi) in enumerate(bounds):
                if hi <= lo:
                    continue
                stream, offset = traffic.streams[s], traffic.offsets[s]
                if config.mode == "ws":
                    burst = _ws_burst(per_stream)
                    pacer = _Pacer(per_stream, _phase(phases, burst, per_stream))
                    jobs.append(
                        _ws_stream(sockets[s], stream, offset, lo, hi, config.window, rec, pacer)
                    )
                else:
                    batch = config.batch
                    if per_stream is not None:
                        # Small enough that one stream keeps up even if a batch takes 50 ms.
                        batch = max(1, min(batch, math.ceil(per_stream * _HALF_LOAD_HEADROOM_S)))
                    pacer = _Pacer(per_stream, _phase(phases, batch, per_stream))
                    jobs.append(_http_stream(conns[s], stream, offset, lo, hi, batch, rec, pacer))
            await asyncio.gather(*jobs)
            seconds = time.perf_counter() - start
            cpu_after = process_cpu_seconds(pid) if pid is not None else {}
            cpu = {k: cpu_after[k] - cpu_before[k] for k in cpu_after if k in cpu_before}
            cpu["client"] = time.process_time() - client_before
            latencies = sorted(
                rec.done[traffic.offsets[s] + i] - rec.sent[traffic.offsets[s] + i]
                for s, (lo, hi) in enumerate(bounds)
                for i in range(lo, hi)
            )
            return _Phase(seconds, sum(hi - lo for lo, hi in bounds), latencies, cpu)

        try:
            full = await phase([(0, k) for k in splits], None)
            rate = full.messages / full.seconds / 2 if full.seconds > 0 else None
            half_bounds = [(k, len(s)) for k, s in zip(splits, traffic.streams, strict=True)]
            mid = await _metrics(client)
            half = await phase(half_bounds, rate)
            half_stages = stage_quantiles(mid, await _metrics(client))
            # Wait for the sampled deliveries of accepted messages to come through.
            expected = sum(1 for i in traffic.watched.values() if rec.done[i] > 0)
            deadline = time.perf_counter() + _DELIVERY_GRACE_S
            while len(deliveries.seen) < expected and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            metrics_after = await _sealed_metrics(client, metrics_before, config)
        finally:
            for task in [*helpers, *followers]:
                task.cancel()
            for task in [*helpers, *followers]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if on_progress is not None:
            on_progress(rec.answered, traffic.messages)
    return _Load(
        full, half, rate or 0.0, deliveries, rss, metrics_before, metrics_after, rec, half_stages
    )


def _ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else round(seconds * 1000, 2)


def write_deliveries(path: Path, deliveries: _Deliveries, halves: dict[int, bool]) -> None:
    """Every sampled delivery as ``phase,sent_s,latency_ms``, in the order they were sent.

    ``phase`` is ``full`` or ``half``; ``sent_s`` counts from the first sampled
    message sent. Slow deliveries that come in windows (a checkpoint, a
    block) show up as runs of high latencies at close ``sent_s``, which a
    percentile alone does not tell apart from noise.
    """
    seen = sorted(
        (deliveries.sent[i], t - deliveries.sent[i], i) for i, t in deliveries.seen.items()
    )
    start = seen[0][0] if seen else 0.0
    with open(path, "w", encoding="ascii") as out:
        out.write("phase,sent_s,latency_ms\n")
        for sent, latency, i in seen:
            phase = "half" if halves.get(i, False) else "full"
            out.write(f"{phase},{sent - start:.6f},{latency * 1000:.3f}\n")


def _delivery_latencies(load: _Load, lo_phase: bool, splits: dict[int, bool]) -> list[float]:
    out = sorted(
        t - load.deliveries.sent[i]
        for i, t in load.deliveries.seen.items()
        if splits.get(i, False) == lo_phase
    )
    return out


def _in_half(traffic: Traffic, config: BenchConfig) -> Callable[[int], bool]:
    bounds: list[tuple[int, int]] = []
    for s, stream in enumerate(traffic.streams):
        split = round(len(stream) * (1.0 - config.half_load_share))
        bounds.append((traffic.offsets[s] + split, traffic.offsets[s] + len(stream)))

    def check(index: int) -> bool:
        return any(lo <= index < hi for lo, hi in bounds)

    return check


def _probe(url: str) -> None:
    """Raises ``BenchError`` unless ``url`` answers ``/healthz`` as a chainmail node."""
    try:
        answer = httpx.get(f"{url}/healthz", timeout=10.0)
        body = answer.json()
    except httpx.HTTPError as exc:
        raise BenchError(f"cannot reach the node at {url}: {exc}") from None
    except ValueError:
        body = None
    node_id = body.get("id") if isinstance(body, dict) else None
    if answer.status_code != 200 or not isinstance(node_id, str) or not is_feed_id(node_id):
        raise BenchError(
            f"{url} is not a chainmail node: /healthz answered {answer.status_code}"
            " without a node id"
        )


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run(
    config: BenchConfig,
    *,
    on_stage: Callable[[str], None] | None = None,
    on_generate: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_rss: Callable[[float, float, float, int], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns the report (DESIGN §9 keys and more).

    Callbacks: ``on_stage(text)`` as each step starts, ``on_generate(done,
    total)`` while signing, ``on_progress(answered, total)`` under load,
    ``on_rss(seconds, node_mb, node_and_children_mb, answered)`` at every
    memory sample of a node this run started.

    Raises ``BenchError`` when the node does not start or fails under load.
    """
    config.check()
    stage = on_stage or (lambda _: None)
    seed = config.seed if config.seed is not None else secrets.randbits(31)
    temp: Path | None = None
    node: NodeProcess | None = None
    loadavg = _loadavg()
    try:
        if config.node is None:
            if config.data_dir is None:
                temp = Path(tempfile.mkdtemp(prefix="chainmail-bench-"))
                data = temp / "node"
            else:
                data = config.data_dir
            node = NodeProcess(
                data,
                block_interval=config.block_interval,
                synchronous=config.synchronous,
                workers=config.node_workers,
                verify_nice=config.node_verify_nice,
            )
            stage(f"starting a node on {node.url}")
            node.start()
        url = node.url if node is not None else str(config.node).rstrip("/")
        if node is None:
            _probe(url)  # before minutes of signing and measuring

        stage(f"signing {config.messages:,} messages of {config.feeds:,} feeds")
        t0 = time.perf_counter()
        traffic = generate(config, seed=seed, on_progress=on_generate)
        generate_seconds = time.perf_counter() - t0

        stage(f"measuring the ed25519 ceiling for {config.verify_seconds:g} s")
        ceiling = verify_ceiling(
            traffic.verify_sample, seconds=config.verify_seconds, cores=config.cores
        )

        if node is not None:
            asyncio.run(node.wait_ready())
        stage(f"sending over {config.mode} to {url}")
        load = _run_client(
            _drive(config, traffic, url, None if node is None else node.pid, on_progress, on_rss)
        )
        rss_end = process_rss_mb(node.pid) if node is not None else (0.0, 0.0)
    finally:
        if node is not None:
            stage("stopping the node")
            node.stop()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    # Once more after the load: other tenants of the machine come and go, and the
    # mean of the two is a fairer yardstick for the time in between.
    stage(f"measuring the ed25519 ceiling again for {config.verify_seconds:g} s")
    ceiling_after = verify_ceiling(
        traffic.verify_sample, seconds=config.verify_seconds, cores=config.cores
    )
    ceiling_before = ceiling
    ceiling = (ceiling_before + ceiling_after) / 2

    in_half = _in_half(traffic, config)
    halves = {i: in_half(i) for i in load.deliveries.seen}
    if config.deliveries_out is not None:
        write_deliveries(config.deliveries_out, load.deliveries, halves)
    deliver_half = _delivery_latencies(load, True, halves)
    deliver_full = _delivery_latencies(load, False, halves)
    rec = load.rec
    full, half = load.full, load.half
    msgs_per_s = full.messages / full.seconds if full.seconds > 0 else 0.0
    # Without a half-load phase, the delivery figure comes from the full-load one.
    deliver = deliver_half if config.half_load_share > 0 else deliver_full
    blocks_after = load.metrics_after.get("chainmail_block_height", math.nan)
    blocks_before = load.metrics_before.get("chainmail_block_height", 0.0)
    return {
        "mode": config.mode,
        "messages": traffic.messages,
        "accepted": rec.accepted,
        "duplicates": rec.duplicates,
        "rejected": sum(rec.rejected.values()),
        "rejected_codes": dict(rec.rejected),
        "first_problem": rec.first_problem,
        "seconds": round(full.seconds, 3),
        "load_messages": full.messages,
        "msgs_per_s": round(msgs_per_s, 1),
        "p50_ms": _ms(percentile(full.latencies, 50)),
        "p99_ms": _ms(percentile(full.latencies, 99)),
        "verify_ceiling_per_s": round(ceiling, 1),
        "verify_ceiling_before_after": [round(ceiling_before, 1), round(ceiling_after, 1)],
        "ratio": round(msgs_per_s / ceiling, 4) if ceiling > 0 else None,
        "deliver_p50_ms": _ms(percentile(deliver, 50)),
        "deliver_p99_ms": _ms(percentile(deliver, 99)),
        "deliver_samples": len(deliver),
        "deliver_p99_full_load_ms": _ms(percentile(deliver_full, 99)),
        "deliver_samples_full_load": len(deliver_full),
        "half_load_target_per_s": round(load.half_rate, 1) if half.messages else None,
        "half_load_msgs_per_s": round(half.messages / half.seconds, 1) if half.seconds else None,
        "half_load_p50_ms": _ms(percentile(half.latencies, 50)),
        "half_load_p99_ms": _ms(percentile(half.latencies, 99)),
        "half_load_stages_ms": load.half_stages,
        # CPU per acknowledged message at full load: where the cores went.
        "cpu_us_per_msg": {
            k: round(v / full.messages * 1e6, 1) for k, v in full.cpu.items() if full.messages
        },
        # The same at half load, where batches are smaller and cost more a message.
        "half_load_cpu_us_per_msg": {
            k: round(v / half.messages * 1e6, 1) for k, v in half.cpu.items() if half.messages
        },
        "feeds": traffic.feeds,
        "txs": traffic.txs,
        "mean_message_bytes": round(traffic.mean_bytes, 1),
        "verify_message_bytes": len(traffic.verify_sample[0]) - 64,
        "batch": config.batch if config.mode == "http" else None,
        "window": config.window if config.mode == "ws" else None,
        "connections": len(traffic.streams),
        "blocks": None if math.isnan(blocks_after) else int(blocks_after - blocks_before),
        "rss_mb": round(rss_end[0], 1) if node is not None else None,
        "rss_max_mb": (
            round(max([r[1] for r in load.rss] + [rss_end[0]]), 1) if node is not None else None
        ),
        "rss_with_workers_mb": round(rss_end[1], 1) if node is not None else None,
        "rss_samples": [[round(t, 1), round(a, 1), round(b, 1)] for t, a, b in load.rss],
        "synchronous": config.synchronous if node is not None else None,
        "generate_seconds": round(generate_seconds, 2),
        "cores": os.cpu_count(),
        "loadavg_1m": loadavg,
        "seed": seed,
    }
