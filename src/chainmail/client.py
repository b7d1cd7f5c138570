"""The chainmail SDK: ``Client`` (sync) and ``AsyncClient`` (async) for one node.

A client talks to one node over HTTP (httpx) and WebSocket (websockets) and
may hold an identity (a ``Keypair``). With one it keeps a local copy of its
own feed, so it can sign offline and push later::

    with Client.from_keystore("alice") as alice:
        tx = alice.open_tx(["@bob…"], timedelta(minutes=10), subject="trade 42")
        alice.note(tx, {"px": 101})
        alice.finish(tx)
        report = alice.verify_tx(tx)          # raises ProofError if the node lied

The local feed
    ``sign(content)`` appends the next message of the feed locally (next
    ``sequence``, ``previous`` = id of the head); ``sync()`` pushes every
    message the node does not have yet, in order, in batches. The first
    ``sync()`` (and so the first ``publish()``) asks the node for the feed's
    head, so a feed started elsewhere (another machine, another process)
    continues where it is. The copy is a JSON-lines file per identity under
    ``feeds=DIR`` (``CHAINMAIL_HOME/feeds`` for ``from_keystore``), locked
    while written, or memory. A message the node refuses for good (an unknown
    or closed tx, a broken rule) is dropped from the local copy together with
    every message signed after it: they chain to it and could never be
    accepted. The error raised then has ``dropped``: the contents of those
    messages, oldest (the refused one) first, to sign again what still makes
    sense (``for content in exc.dropped[1:]: client.sign(content)``).

Errors
    A problem document from the node becomes the ``chainmail.errors``
    exception of its ``code``, with the node's ``detail``::

        invalid_format invalid_signature too_large fork out_of_order  InvalidMessage
        unknown_tx tx_closed not_a_party not_admitted key_rotated     Rejected
        not_found NotFound · unauthorized Unauthorized · rate_limited RateLimited
        invalid_proof ProofError · storage log delivery internal       OperationalError

    A node that cannot be reached (refused, reset, timed out, DNS) raises
    ``NodeUnavailable``, an ``OperationalError``.

    Every argument is checked before anything is sent or signed: ``TypeError``
    for one of the wrong type (``None`` for an id, ``True`` for a count, a
    single id where an iterable of them is expected: ``parties="@…"``),
    ``InvalidMessage`` (``invalid_format``) for an ill-formed id or a number
    out of range. Such a call asks nothing of the node and appends nothing to
    the local feed.

Verification
    ``verify_message``, ``verify_tx``, ``verify_block`` and
    ``verify_checkpoint`` recompute everything locally (``chainmail.verify``)
    and return a ``Report`` of every check, or raise ``VerificationFailed``
    (a ``ProofError``) carrying the report up to the failed check.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import mimetypes
import os
import threading
import time
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, Protocol, Self, TypeVar, get_args

import httpx
import orjson
import websockets.asyncio.client
import websockets.exceptions
import websockets.sync.client

from chainmail import chandocs, channels, httpsig, ssb
from chainmail import content as content_rules
from chainmail.anchors import chain_name
from chainmail.bitcoinrpc import BitcoinNode
from chainmail.errors import (
    DecryptionError,
    DeliveryError,
    Error,
    InvalidMessage,
    KeystoreError,
    LogError,
    NotFound,
    OperationalError,
    ProofError,
    RateLimited,
    Rejected,
    StorageError,
    Unauthorized,
)
from chainmail.ids import BlobId, FeedId, MsgId, blob_id, is_blob_id, is_feed_id, is_msg_id
from chainmail.keys import Keypair
from chainmail.keystore import Keystore, passphrase_from_env_or_prompt
from chainmail.txs import TxStatus
from chainmail.verify import (
    Check,
    Flow,
    Headers,
    Progress,
    Report,
    Request,
    VerificationFailed,
    block_flow,
    checkpoint_flow,
    document_flow,
    message_flow,
    path_id,
    proof_hashes,
    tx_flow,
)

__all__ = [
    "BATCH_SIZE",
    "DEFAULT_NODE",
    "DEFAULT_TIMEOUT",
    "FEEDS_DIR",
    "NODE_ENV",
    "AsyncClient",
    "ChannelDocument",
    "Check",
    "Client",
    "FileFeed",
    "FirehoseEntry",
    "InboxEntry",
    "LocalFeed",
    "MemoryFeed",
    "NodeUnavailable",
    "Receipt",
    "Report",
    "VerificationFailed",
    "error_from_problem",
    "feed_path",
    "read_document",
]

T = TypeVar("T")

#: Environment variable naming the node's URL.
NODE_ENV: Final = "CHAINMAIL_NODE"
#: The node's URL when neither the caller nor ``CHAINMAIL_NODE`` names one.
DEFAULT_NODE: Final = "http://127.0.0.1:8700"
#: Request timeouts: quick to fail on a dead host, patient with a busy node.
DEFAULT_TIMEOUT: Final = httpx.Timeout(30.0, connect=5.0)
_CHANNEL_PAGE: Final = 1000
#: Messages per ``POST /v1/messages/batch`` when ``sync()`` pushes a backlog.
BATCH_SIZE: Final = 1000
#: Directory of the local feed copies under the chainmail home.
FEEDS_DIR: Final = "feeds"
#: Largest WebSocket frame accepted from the node (an inbox entry is one message).
_WS_MAX_SIZE: Final = 16 * 1024 * 1024
#: Seconds a WebSocket's closing handshake may take before the connection is dropped:
#: frames queued unread stop the client reading, so the node's close frame may never be
#: read (websockets' own default waits 10 s).
_WS_CLOSE_TIMEOUT: Final = 1.0
#: A followed inbox stream that closes after being open this long (or after giving an
#: entry) is opened again; one that closes sooner is the node's or the network's error.
_STREAM_RESUME_AFTER_S: Final = 1.0


class _InboxCursor:
    """Where one ``inbox_iter(follow=True)`` is, across the streams it opens.

    A stream closes while its consumer is slow (keepalive pings are answered
    only while frames are read, and a full queue stops the reading), when a
    proxy drops it, when the node restarts. The next stream starts again from
    the oldest unacknowledged entry, in delivery order: an entry at or below
    the newest already yielded is skipped, and acknowledged again (its
    acknowledgement may have died with the old stream: the entry being
    handled when it closed, say).
    """

    def __init__(self) -> None:
        self.newest = 0
        self.opened_at = 0.0
        self.gave = False

    def opened(self) -> None:
        self.opened_at = time.monotonic()
        self.gave = False

    def frame(self, frame: str | bytes, ack: bool) -> tuple[InboxEntry | None, str | None]:
        """A stream frame's entry to give (None: none, or given already) and the ack
        to send for one given already (None: none)."""
        entry = _inbox_frame(frame)
        if entry is None:
            return None, None
        self.gave = True
        if entry.delivery <= self.newest:
            return None, _ack_frame(entry.id) if ack else None
        self.newest = entry.delivery
        return entry, None

    def resumable(self) -> bool:
        """Whether the stream that just closed should be opened again."""
        return self.gave or time.monotonic() - self.opened_at >= _STREAM_RESUME_AFTER_S

    def failure(self, node: str, url: str, exc: Exception) -> Error | None:
        """What a stream's ``exc`` raises: None when the stream is opened again."""
        if isinstance(exc, websockets.exceptions.InvalidStatus):
            return _ws_refused(url, exc)
        if isinstance(exc, websockets.exceptions.ConnectionClosed) and self.resumable():
            return None
        return _unreachable(node, exc)


def _acknowledged(feed: LocalFeed) -> int:
    """The highest sequence a node accepted, where the copy keeps it (``MemoryFeed``)."""
    known = getattr(feed, "acknowledged", None)
    return int(known()) if callable(known) else 0


def _acknowledge(feed: LocalFeed, sequence: int | None) -> None:
    mark = getattr(feed, "acknowledge", None)
    if sequence and callable(mark):
        mark(sequence)


def _ack_frame(msg_id: str) -> str:
    return orjson.dumps({"ack": [msg_id]}).decode()


_NDJSON: Final = "application/x-ndjson"
_JSON: Final = "application/json"
_DETAIL_CHARS: Final = 200

_INVALID_CODES: Final = frozenset(
    {"invalid_format", "invalid_signature", "too_large", "fork", "out_of_order"}
)
_REJECTED_CODES: Final = frozenset(
    {"unknown_tx", "tx_closed", "not_a_party", "not_admitted", "key_rotated"}
)
_OPERATIONAL: Final[Mapping[str, type[OperationalError]]] = {
    "storage": StorageError,
    "log": LogError,
    "delivery": DeliveryError,
}
#: What ``transactions(status=…)`` takes.
_TX_STATUSES: Final[tuple[str, ...]] = get_args(TxStatus)
#: Codes that say the local feed and the node's disagree; nothing is dropped for them.
_DIVERGED: Final = frozenset({"fork", "out_of_order"})


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where the node logged a message; ``created`` is False when it had it already."""

    id: MsgId
    pipeline: int
    index: int
    created: bool = True


@dataclass(frozen=True, slots=True)
class ChannelDocument:
    """A private document in a channel (``chainmail.chandocs``): the ``chan/msg``
    announcing it, the public ``doc`` message notarising its ciphertext, the
    blob holding that ciphertext, and what the announcement says of it."""

    message: MsgId
    author: FeedId
    notarised: MsgId
    blob: BlobId
    size: int
    name: str | None = None
    mime: str | None = None


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """One delivery to you: ``delivery`` is its place in your inbox."""

    delivery: int
    id: MsgId
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FirehoseEntry:
    """One message of the firehose, at ``(pipeline, index)`` of the log."""

    pipeline: int
    index: int
    id: MsgId
    message: dict[str, Any]


class NodeUnavailable(OperationalError):
    """The node could not be reached or hung up (refused, reset, timed out, DNS)."""

    code = "unavailable"
    title = "Node unavailable"


# --------------------------------------------------------------------------- errors


def error_from_problem(
    status: int, problem: Mapping[str, Any], *, retry_after: float | None = None
) -> Error:
    """The ``chainmail.errors`` exception of an RFC 9457 problem document (not raised)."""
    code = problem.get("code")
    detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
    if not isinstance(code, str):
        return OperationalError(f"HTTP {status} from the node: {detail}")
    if code in _INVALID_CODES:
        return InvalidMessage(detail, code=code)
    if code in _REJECTED_CODES:
        return Rejected(detail, code=code)
    if code == "not_found":
        return NotFound(detail)
    if code == "unauthorized":
        return Unauthorized(detail)
    if code == "rate_limited":
        return RateLimited(detail, retry_after=1.0 if retry_after is None else retry_after)
    if code == "invalid_proof":
        return ProofError(detail)
    if code == "decryption_failed":
        return DecryptionError(detail)
    if code == "keystore":
        return KeystoreError(detail)
    if code in _OPERATIONAL:
        return _OPERATIONAL[code](detail)
    return OperationalError(detail, code=code)


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def _raise_for_problem(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and "code" in body:
        raise error_from_problem(resp.status_code, body, retry_after=_retry_after(resp))
    text = resp.text.strip().replace("\n", " ")[:_DETAIL_CHARS]
    raise OperationalError(f"HTTP {resp.status_code} from the node: {text or resp.reason_phrase}")


def _unreachable(node: str, exc: BaseException) -> NodeUnavailable:
    reason = str(exc) or type(exc).__name__
    return NodeUnavailable(f"cannot reach the node at {node}: {reason}")


def _json(resp: httpx.Response) -> Any:
    try:
        return orjson.loads(resp.content)
    except orjson.JSONDecodeError as exc:
        raise OperationalError(f"the node answered with invalid JSON: {exc}") from exc


def _dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise OperationalError(f"{what}: expected a JSON object from the node, got {value!r}")
    return value


def _receipt(value: object, created: bool) -> Receipt:
    body = _dict(value, "receipt")
    try:
        return Receipt(MsgId(body["id"]), int(body["pipeline"]), int(body["index"]), created)
    except (KeyError, TypeError, ValueError) as exc:
        raise OperationalError(f"malformed receipt from the node: {body!r}") from exc


def _batch_result(line: bytes) -> Receipt | Error:
    body = _dict(orjson.loads(line), "batch result")
    status = body.get("status")
    if isinstance(status, int) and status >= 400:
        return error_from_problem(status, body)
    return _receipt(body, status == 201)


def _inbox_entry(value: object) -> InboxEntry:
    body = _dict(value, "inbox entry")
    try:
        return InboxEntry(int(body["delivery"]), MsgId(body["id"]), _dict(body["message"], "id"))
    except (KeyError, TypeError, ValueError) as exc:
        raise OperationalError(f"malformed inbox entry from the node: {body!r}") from exc


class _LineSplitter:
    """The non-blank NDJSON lines of a body's chunks, split at ``\n`` only.

    Not httpx's ``iter_lines``: it splits text at every Unicode line break,
    and U+2028, U+2029 or U+0085 may stand unescaped inside a JSON string (a
    post's text), which cut one firehose line in two. A line longer than
    ``_WS_MAX_SIZE`` is the node's error (``OperationalError``).
    """

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        pending = self._pending
        pending += chunk
        lines: list[bytes] = []
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            if pending[start:end].strip():
                lines.append(bytes(pending[start:end]))
            start = end + 1
        del pending[:start]
        if len(pending) > _WS_MAX_SIZE:
            raise OperationalError(f"a line from the node is longer than {_WS_MAX_SIZE} bytes")
        return lines

    def end(self) -> list[bytes]:
        last, self._pending = bytes(self._pending), bytearray()
        return [last] if last.strip() else []


def _firehose_entry(line: bytes) -> FirehoseEntry:
    try:
        body = _dict(orjson.loads(line), "firehose line")
        return FirehoseEntry(
            int(body["pipeline"]),
            int(body["index"]),
            MsgId(body["id"]),
            _dict(body["message"], "firehose message"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise OperationalError(f"malformed firehose line from the node: {line[:80]!r}") from exc


# --------------------------------------------------------------------------- local feed


class LocalFeed(Protocol):
    """The local copy of one identity's feed."""

    def head(self) -> ssb.FeedState | None:
        """The newest message (or the head adopted from the node), None for an empty feed."""

    def append_next(self, make: Callable[[ssb.FeedState | None], dict[str, Any]]) -> dict[str, Any]:
        """Atomically: call ``make(head)`` and append the message it returns."""

    def after(self, sequence: int) -> list[dict[str, Any]]:
        """The messages with a sequence above ``sequence``, oldest first."""

    def message_id(self, sequence: int) -> str | None:
        """The id of the message at ``sequence`` if the copy still has it."""

    def truncate(self, sequence: int) -> int:
        """Drop the messages at ``sequence`` and above; returns how many."""

    def rebase(self, head: ssb.FeedState) -> None:
        """Continue from ``head``, a message signed elsewhere; older local messages go."""


class MemoryFeed:
    """A feed copy in memory, for one process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._base: ssb.FeedState | None = None
        self._messages: list[tuple[str, dict[str, Any]]] = []
        self._acked = 0

    def head(self) -> ssb.FeedState | None:
        with self._lock:
            if self._messages:
                mid, msg = self._messages[-1]
                return ssb.FeedState(id=mid, sequence=msg["sequence"])
            return self._base

    def append_next(self, make: Callable[[ssb.FeedState | None], dict[str, Any]]) -> dict[str, Any]:
        """Raises what ``make`` raises; nothing is appended then."""
        with self._lock:
            msg = make(self.head())
            self._store(msg)
            self._messages.append((ssb.message_id(msg), msg))
            return msg

    def _store(self, msg: dict[str, Any]) -> None:
        """Persist one appended message (nothing to do in memory)."""

    def after(self, sequence: int) -> list[dict[str, Any]]:
        with self._lock:
            return [msg for _, msg in self._messages if msg["sequence"] > sequence]

    def message_id(self, sequence: int) -> str | None:
        with self._lock:
            for mid, msg in self._messages[::-1]:
                if msg["sequence"] == sequence:
                    return mid
            if self._base is not None and self._base.sequence == sequence:
                return self._base.id
            return None

    def truncate(self, sequence: int) -> int:
        with self._lock:
            keep = [(m, msg) for m, msg in self._messages if msg["sequence"] < sequence]
            dropped = len(self._messages) - len(keep)
            self._messages = keep
            return dropped

    def rebase(self, head: ssb.FeedState) -> None:
        with self._lock:
            self._base = head
            self._messages = []
            self._acked = max(self._acked, head.sequence)

    def acknowledged(self) -> int:
        """The highest sequence a node is known to have accepted (0: none)."""
        with self._lock:
            return self._acked

    def acknowledge(self, sequence: int) -> None:
        """A node accepted the feed up to ``sequence``: what a refusal never drops."""
        with self._lock:
            self._acked = max(self._acked, sequence)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the copy for several calls at once (re-entrant): nothing else changes it."""
        with self._lock:
            yield


def _follows(
    msg: dict[str, Any], before: tuple[str, dict[str, Any]] | None, base: ssb.FeedState | None
) -> None:
    """Raise ``TypeError`` unless ``msg`` is the next message of the copy read so far: the
    sequence after, naming the one before as its ``previous``, by the same author."""
    if before is not None:
        prior_id, prior = before
        expected, previous = prior["sequence"] + 1, prior_id
        if msg.get("author") != prior.get("author"):
            raise TypeError(f"a message by {msg.get('author')!r} in {prior.get('author')}'s feed")
    elif base is not None:
        expected, previous = base.sequence + 1, base.id
    else:
        expected, previous = 1, None
    if msg["sequence"] != expected or msg.get("previous") != previous:
        raise TypeError(
            f"sequence {msg['sequence']} does not follow the copy's {expected - 1}"
            " (a second writer that did not see this copy's messages, or an edit)"
        )


class FileFeed(MemoryFeed):
    """A feed copy as JSON lines: one signed message a line, or ``{"base": {id, sequence}}``.

    Every change holds an exclusive ``flock`` on ``PATH.lock`` and first
    re-reads the file if another process changed it, so two processes signing
    as the same identity chain their messages instead of forking the feed.
    "Changed" is a generation number the lock file holds, which every write
    moves on: a rewrite can give the file its old inode number back and the
    same size, so the file's own stamp is not enough. A torn last line (a
    crash mid-write) is cut off. Raises ``StorageError`` when the file cannot
    be read or written, or is not a feed copy.
    """

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path = Path(path)
        self._stamp: tuple[int, int, bytes] | None = None
        self._depth = 0
        self._lock_file: Any = None
        with self._locked():
            pass

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._locked():
            yield

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = self.path.with_name(self.path.name + ".lock").open("a+b")
        except OSError as exc:
            raise StorageError(f"local feed {self.path}: {exc}") from exc
        with self._lock, lock:
            # Re-entrant: append_next calls head() while holding the lock, and a
            # second flock on a new open file would wait for ourselves forever.
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._depth = 1
            self._lock_file = lock
            try:
                self._refresh()
                yield
            finally:
                self._depth = 0
                self._lock_file = None
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _generation(self) -> bytes:
        """What the lock file holds: the generation of the file's last write (b"" before any)."""
        lock = self._lock_file
        try:
            lock.seek(0)
            return bytes(lock.read(64))
        except OSError as exc:
            raise StorageError(f"local feed {self.path}: its lock file: {exc}") from exc

    def _next_generation(self) -> None:
        """Move the generation on after a write (the lock is held)."""
        lock = self._lock_file
        try:
            number = int(self._generation() or b"0") + 1
        except ValueError:
            number = 1
        try:
            lock.seek(0)
            lock.truncate()
            lock.write(b"%d" % number)
            lock.flush()
        except OSError as exc:
            raise StorageError(f"local feed {self.path}: its lock file: {exc}") from exc

    def _current_stamp(self) -> tuple[int, int, bytes] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"local feed {self.path}: {exc}") from exc
        return (st.st_ino, st.st_size, self._generation())

    def _refresh(self) -> None:
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return
        try:
            data = self.path.read_bytes() if stamp is not None else b""
        except OSError as exc:
            raise StorageError(f"local feed {self.path}: {exc}") from exc
        end = data.rfind(b"\n") + 1
        if end != len(data):  # a torn last line: it was never acknowledged to anyone
            try:
                with self.path.open("r+b") as f:
                    f.truncate(end)
            except OSError as exc:
                raise StorageError(f"local feed {self.path}: {exc}") from exc
            data = data[:end]
            self._next_generation()
        base: ssb.FeedState | None = None
        messages: list[tuple[str, dict[str, Any]]] = []
        for number, line in enumerate(data.splitlines(), start=1):
            try:
                value = orjson.loads(line)
                if not isinstance(value, dict):
                    raise TypeError(f"expected a JSON object, got {type(value).__name__}")
                if "base" in value:
                    head = value["base"]
                    if not isinstance(head.get("id"), str) or type(head.get("sequence")) is not int:
                        raise TypeError(f"expected a base {{id, sequence}}, got {head!r}")
                    base = ssb.FeedState(id=head["id"], sequence=head["sequence"])
                    messages = []
                else:
                    if type(value.get("sequence")) is not int:
                        raise TypeError("expected a signed message with its sequence")
                    _follows(value, messages[-1] if messages else None, base)
                    messages.append((ssb.message_id(value), value))
            except (
                orjson.JSONDecodeError,
                InvalidMessage,
                KeyError,
                TypeError,
                AttributeError,
            ) as exc:
                raise StorageError(f"local feed {self.path} line {number}: {exc}") from exc
        self._base, self._messages = base, messages
        self._acked = self._read_acked()
        self._stamp = self._current_stamp()

    def _write(self, lines: Sequence[bytes], *, replace: bool, to: Path | None = None) -> None:
        """Append ``lines`` to the file (or ``to``), or replace it with them; synced."""
        target = self.path if to is None else to
        try:
            if replace:
                tmp = target.with_name(target.name + ".tmp")
                with tmp.open("wb") as f:
                    f.write(b"".join(lines))
                    f.flush()
                    os.fsync(f.fileno())
                tmp.replace(target)
            else:
                with target.open("ab") as f:
                    f.write(b"".join(lines))
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as exc:
            raise StorageError(f"local feed {self.path}: {exc}") from exc
        self._next_generation()
        self._stamp = self._current_stamp()

    @staticmethod
    def _line(msg: dict[str, Any]) -> bytes:
        return ssb.stringify(msg, 0).encode("utf-8") + b"\n"

    @staticmethod
    def _base_line(head: ssb.FeedState) -> bytes:
        return orjson.dumps({"base": {"id": head.id, "sequence": head.sequence}}) + b"\n"

    def head(self) -> ssb.FeedState | None:
        with self._locked():
            return super().head()

    def append_next(self, make: Callable[[ssb.FeedState | None], dict[str, Any]]) -> dict[str, Any]:
        """Raises what ``make`` raises, and ``StorageError``; nothing is appended then."""
        with self._locked():
            return super().append_next(make)

    def _store(self, msg: dict[str, Any]) -> None:
        self._write([self._line(msg)], replace=False)

    def after(self, sequence: int) -> list[dict[str, Any]]:
        with self._locked():
            return super().after(sequence)

    def message_id(self, sequence: int) -> str | None:
        with self._locked():
            return super().message_id(sequence)

    def truncate(self, sequence: int) -> int:
        with self._locked():
            dropped = super().truncate(sequence)
            if dropped:
                lines = [self._base_line(self._base)] if self._base is not None else []
                self._write(lines + [self._line(m) for _, m in self._messages], replace=True)
            return dropped

    def rebase(self, head: ssb.FeedState) -> None:
        with self._locked():
            super().rebase(head)
            self._write([self._base_line(head)], replace=False)
            self._write_acked()

    def acknowledged(self) -> int:
        with self._locked():
            return self._acked

    def acknowledge(self, sequence: int) -> None:
        with self._locked():
            if sequence > self._acked:
                self._acked = sequence
                self._write_acked()

    def _acked_path(self) -> Path:
        return self.path.with_name(self.path.name + ".acked")

    def _read_acked(self) -> int:
        """``PATH.acked``: the highest sequence a node accepted (0 when absent or unreadable:
        then a refusal may drop more than it should, never less)."""
        try:
            text = self._acked_path().read_text("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return 0
        return int(text) if text.isdigit() and len(text) < 20 else 0

    def _write_acked(self) -> None:
        self._write([b"%d\n" % self._acked], replace=True, to=self._acked_path())


def feed_path(directory: Path, fid: str) -> Path:
    """The file of ``fid``'s feed copy in ``directory``: a file-name-safe form of the id."""
    safe = fid.removeprefix("@").replace("/", "_").replace("+", "-")
    return directory / f"{safe}.jsonl"


# --------------------------------------------------------------------------- arguments

# Both clients check every argument here before a request is made or anything
# is signed: ``TypeError`` for one of the wrong type (what mypy would have
# said), ``InvalidMessage`` (``invalid_format``) for one of the right type and
# a bad value, as the id and deadline checks always did.

_IdKind = Literal["feed", "msg", "blob"]
#: What each kind of id looks like, and its check (``chainmail.ids``).
_IDS: Final[Mapping[_IdKind, tuple[str, Callable[[object], bool]]]] = {
    "feed": ("@….ed25519 feed id", is_feed_id),
    "msg": ("%….sha256 message id", is_msg_id),
    "blob": ("&….sha256 blob id", is_blob_id),
}
#: What a call takes one of, where it expects several (``parties="@…"``).
_ONE: Final = (str, bytes, bytearray)
#: The methods of a ``LocalFeed``.
_FEED_METHODS: Final = ("head", "append_next", "after", "message_id", "truncate", "rebase")
#: The longest repr of a bad value an error echoes.
_SHOWN: Final = 80


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def _wrong_type(name: str, expected: str, value: object) -> TypeError:
    return TypeError(f"{name}: expected {expected}, got {type(value).__name__}")


def _str_arg(value: object, name: str, expected: str = "a string") -> str:
    if not isinstance(value, str):
        raise _wrong_type(name, expected, value)
    return value


def _opt_str_arg(value: object, name: str) -> str | None:
    return None if value is None else _str_arg(value, name, "a string or None")


def _int_arg(value: object, name: str, minimum: int = 0) -> int:
    # bool is an int to Python, never a count, height or index here.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong_type(name, "an int", value)
    if value < minimum:
        raise InvalidMessage(f"{name}: expected {minimum} or more, got {value}")
    return value


def _bool_arg(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise _wrong_type(name, "True or False", value)
    return value


def _callable_arg(value: object, name: str) -> None:
    if not callable(value):
        raise _wrong_type(name, "a callable", value)


def _mapping_arg(value: object, name: str) -> dict[str, Any]:
    """A copy of ``value``, a mapping (``data``, a message)."""
    if not content_rules.is_mapping(value):
        raise _wrong_type(name, "a mapping", value)
    return dict(value)


def _opt_mapping_arg(value: object, name: str) -> dict[str, Any] | None:
    return None if value is None else _mapping_arg(value, name)


def _content_arg(content: object) -> dict[str, Any] | str:
    """A message's content: a mapping (copied) or a box string."""
    if isinstance(content, str):
        return content
    if not content_rules.is_mapping(content):
        raise _wrong_type("content", "a mapping or a box string", content)
    return dict(content)


#: What a call takes as bytes (a blob, a document, a key), copied to ``bytes``.
BytesLike = bytes | bytearray | memoryview
_BYTES_LIKE: Final = (bytes, bytearray, memoryview)


def _bytes_arg(value: object, name: str) -> bytes:
    if not isinstance(value, _BYTES_LIKE):
        raise _wrong_type(name, "bytes (or a bytearray or memoryview)", value)
    return bytes(value)


def _path_arg(value: object, name: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise _wrong_type(name, "a path or None", value)
    return Path(value).expanduser()


def _timeout_arg(value: object) -> httpx.Timeout:
    """What httpx takes for a timeout: seconds, None (none), a tuple of four
    (connect, read, write, pool) or an ``httpx.Timeout``."""

    def seconds(v: object) -> bool:
        return v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v >= 0)

    if isinstance(value, httpx.Timeout):
        return value
    if seconds(value) or (
        isinstance(value, tuple) and len(value) == 4 and all(map(seconds, value))
    ):
        return httpx.Timeout(value)  # type: ignore[arg-type]
    raise _wrong_type("timeout", "seconds, None, a tuple of four or an httpx.Timeout", value)


def _feed_arg(feed: object) -> None:
    # LocalFeed is a Protocol: what it asks for, by name (``feed="dir"`` for ``feeds=``).
    missing = [m for m in _FEED_METHODS if not callable(getattr(feed, m, None))]
    if missing:
        raise _wrong_type("feed", f"a LocalFeed (no {', '.join(missing)})", feed)


def _transport_arg(transport: object, kind: type) -> None:
    # A sync transport given to AsyncClient (or the reverse) fails only at the first request.
    if transport is not None and not isinstance(transport, kind):
        raise _wrong_type("transport", f"an httpx.{kind.__name__} or None", transport)


def _id_arg(value: object, name: str, kind: _IdKind) -> str:
    what, valid = _IDS[kind]
    if not isinstance(value, str):
        raise _wrong_type(name, f"a {what} string", value)
    if not valid(value):
        raise InvalidMessage(f"{name}: expected a {what}, got {_shown(value)}")
    return value


def _opt_id_arg(value: object, name: str, kind: _IdKind) -> str | None:
    return None if value is None else _id_arg(value, name, kind)


def _many(values: object, name: str, what: str, one: tuple[type, ...] = _ONE) -> Iterable[object]:
    """``values`` if it is an iterable of several: not a single id (a string is
    iterable, character by character) nor a single one of ``one``."""
    if isinstance(values, one):
        raise TypeError(
            f"{name}: expected an iterable of {what}, got a single {type(values).__name__}"
            " (put one in a list)"
        )
    if not isinstance(values, Iterable):
        raise _wrong_type(name, f"an iterable of {what}", values)
    return values


def _ids_arg(values: object, name: str, kind: _IdKind) -> list[str]:
    """``values`` as a list of ids of ``kind``, in order, each checked."""
    items = _many(values, name, _IDS[kind][0] + "s")
    return [_id_arg(item, f"{name}[{i}]", kind) for i, item in enumerate(items)]


def _opt_ids_arg(values: object, name: str, kind: _IdKind) -> list[str] | None:
    return None if values is None else _ids_arg(values, name, kind)


def _messages_arg(msgs: object, name: str) -> list[dict[str, Any]]:
    """Signed messages given as an iterable (a list, a generator), each a mapping, as a list."""
    items = _many(msgs, name, "signed messages", (*_ONE, Mapping))
    return [_mapping_arg(m, f"{name}[{i}]") for i, m in enumerate(items)]


Deadline = int | timedelta | datetime


def _deadline_ms(deadline: object, now: int) -> int:
    if isinstance(deadline, timedelta):
        return now + int(deadline.total_seconds() * 1000)
    if isinstance(deadline, datetime):
        if deadline.tzinfo is None:
            raise InvalidMessage("deadline: a datetime needs a time zone")
        return int(deadline.timestamp() * 1000)
    if not isinstance(deadline, int) or isinstance(deadline, bool):
        raise _wrong_type("deadline", "Unix ms (an int), a timedelta or a datetime", deadline)
    if deadline < 0:
        raise InvalidMessage(f"deadline: expected Unix ms, 0 or more, got {deadline}")
    return deadline


# --------------------------------------------------------------------------- shared core


class _Core:
    """What both clients share: configuration, the local feed, and every request as a flow."""

    def __init__(
        self,
        node: str | None = None,
        keys: Keypair | None = None,
        *,
        feeds: Path | str | None = None,
        feed: LocalFeed | None = None,
        node_id: str | None = None,
        hmac_key: BytesLike | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        _opt_str_arg(node, "node")
        if keys is not None and not isinstance(keys, Keypair):
            raise _wrong_type("keys", "a Keypair or None", keys)
        feeds = _path_arg(feeds, "feeds")
        if feed is not None:
            _feed_arg(feed)
        _opt_id_arg(node_id, "node_id", "feed")
        if hmac_key is not None:
            hmac_key = _bytes_arg(hmac_key, "hmac_key")
            if len(hmac_key) != ssb.HMAC_KEY_BYTES:
                raise InvalidMessage(
                    f"hmac_key: expected {ssb.HMAC_KEY_BYTES} bytes, got {len(hmac_key)}",
                    code="invalid_signature",
                )
        timeout = _timeout_arg(timeout)
        _callable_arg(clock, "clock")
        # An empty ``node`` is a mistake to say, not the default (an empty variable is unset).
        url = (os.environ.get(NODE_ENV) or DEFAULT_NODE if node is None else node).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise Error(
                f"node URL: expected http://… or https://…, got {url!r}", code="invalid_format"
            )
        try:
            parsed = httpx.URL(url)
            port = parsed.port
            host = parsed.host  # decodes IDNA: raises for an invalid A-label
            # As getaddrinfo will encode it at the first request (an empty label,
            # one of more than 63 characters).
            parsed.raw_host.decode("ascii").encode("idna")
        except (httpx.InvalidURL, ValueError) as exc:  # UnicodeError is a ValueError
            raise Error(f"node URL {url!r}: {exc}", code="invalid_format") from exc
        if not host:
            raise Error(f"node URL {url!r}: no host", code="invalid_format")
        if port is not None and not 0 < port < 65536:
            raise Error(f"node URL {url!r}: port {port} is not 1 to 65535", code="invalid_format")
        self.node = url
        self.keys = keys
        self.node_id = node_id
        self.hmac_key = hmac_key
        self.clock = clock
        self._timeout = timeout
        if feed is None and keys is not None:
            feed = MemoryFeed() if feeds is None else FileFeed(feed_path(feeds, keys.id))
        self.feed = feed
        # Highest sequence of our feed the node is known to have; None until asked.
        self._sent: int | None = None
        # Channel keys opened so far: channel id -> (key, tx of the channel).
        self._channel_keys: dict[str, tuple[bytes, str | None]] = {}

    @classmethod
    def from_keystore(
        cls,
        name: str,
        passphrase: str | None = None,
        home: Path | str | None = None,
        **kwargs: Any,
    ) -> Self:
        """A client acting as keystore identity ``name``, its feed copy under ``home/feeds``.

        ``passphrase`` defaults to ``CHAINMAIL_PASSPHRASE`` or a prompt on a
        terminal; other keyword arguments go to the constructor. Raises
        ``KeystoreError`` for a missing key or a wrong passphrase, ``TypeError``
        for an argument of the wrong type.
        """
        _str_arg(name, "name")
        _opt_str_arg(passphrase, "passphrase")
        store = Keystore(_path_arg(home, "home"))
        if passphrase is None:
            store.show(name)  # fail on a missing key before asking for a passphrase
            passphrase = passphrase_from_env_or_prompt()
        keys = store.load(name, passphrase)
        kwargs.setdefault("feeds", store.home / FEEDS_DIR)
        return cls(keys=keys, **kwargs)

    @property
    def id(self) -> FeedId:
        """This client's feed id; raises ``KeystoreError`` without an identity."""
        return self._keys().id

    def _keys(self) -> Keypair:
        if self.keys is None:
            raise KeystoreError(
                "this client has no identity: pass keys=… or use Client.from_keystore(name)"
            )
        return self.keys

    def _feed(self) -> LocalFeed:
        self._keys()
        assert self.feed is not None  # set whenever keys are
        return self.feed

    def _ws_url(self, path: str) -> tuple[str, str]:
        url = httpx.URL(self.node)
        scheme = "wss" if url.scheme == "https" else "ws"
        raw_path = url.raw_path.decode("ascii").split("?")[0].rstrip("/") + path
        # The netloc as sent: an IPv6 host keeps its brackets, a name its IDNA form.
        return f"{scheme}://{url.netloc.decode('ascii')}{raw_path}", raw_path

    def _inbox_headers(self, raw_path: str) -> dict[str, str]:
        return httpsig.sign_request(self._keys(), "GET", raw_path, "", created=int(time.time()))

    # -- signing ---------------------------------------------------------------------------

    def sign(
        self, content: Mapping[str, Any] | str, *, timestamp: int | None = None
    ) -> dict[str, Any]:
        """Sign ``content`` as the next message of your feed and keep it locally (no network).

        Checked first against the node's content rules (DESIGN §3), so a
        message that could never be accepted is not appended. Call ``sync()``
        to push it. Raises ``TypeError`` for content that is neither a mapping
        nor a box string or a ``timestamp`` that is not an int, ``InvalidMessage``
        for content that breaks a rule, ``Rejected`` (``not_admitted``) for a
        node-only type, ``KeystoreError`` without an identity, ``StorageError``
        when the local copy cannot be written.
        """
        body = _content_arg(content)
        when = self.clock() if timestamp is None else _int_arg(timestamp, "timestamp")
        keys = self._keys()

        def make(head: ssb.FeedState | None) -> dict[str, Any]:
            msg = ssb.create(keys, body, head, when, self.hmac_key)
            content_rules.check_policy(msg, node_id=self.node_id)
            return msg

        return self._feed().append_next(make)

    def _mark_sent(self, msg: Mapping[str, Any]) -> None:
        if self.keys is not None and msg.get("author") == self.keys.id and self._sent is not None:
            sequence = msg.get("sequence")
            if isinstance(sequence, int):
                self._sent = max(self._sent, sequence)
                if self.feed is not None:
                    _acknowledge(self.feed, self._sent)

    # -- flows: feed -----------------------------------------------------------------------

    def _head_flow(self, author: str | None) -> Flow[ssb.FeedState | None]:
        """The node's head of ``author``'s feed (ours for None)."""
        author = self.id if author is None else _id_arg(author, "author", "feed")
        try:
            resp = yield Request("GET", f"/v1/feeds/{path_id(author)}/head")
        except NotFound:
            return None
        body = _dict(_json(resp), "feed head")
        try:
            return ssb.FeedState(id=str(body["id"]), sequence=int(body["sequence"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise OperationalError(f"malformed feed head from the node: {body!r}") from exc

    def _reconcile_flow(self, replay: bool = False) -> Flow[None]:
        """Learn what the node has of our feed; adopt its head if the feed went on elsewhere.

        A node with less of the feed than a node has accepted (the local copy
        keeps the highest acknowledged sequence) is another node, or one that
        lost them: the messages are not replayed to it unless ``replay``.
        """
        feed = self._feed()
        me = self._keys().id
        remote = yield from self._head_flow(me)
        local = feed.head()
        have = 0 if remote is None else remote.sequence
        accepted = _acknowledged(feed)
        if have < accepted and not replay:
            raise InvalidMessage(
                f"{self.node} has {me}'s feed up to sequence {have}, but a node accepted it"
                f" up to {accepted}: this is another node (or one that lost them), and a feed"
                " is one history. Act as another identity here, or replay the feed to this"
                " node on purpose (Client.sync(replay=True); chainmail send --replay)",
                code="out_of_order",
            )
        if remote is None:
            self._sent = 0
            return
        if local is None or remote.sequence > local.sequence:
            if local is not None:
                try:
                    yield Request("GET", f"/v1/messages/{path_id(local.id)}")
                except NotFound:
                    raise InvalidMessage(
                        f"fork: the node has {me}'s feed up to sequence {remote.sequence}, "
                        f"and not the local copy's message {local.sequence} ({local.id}); "
                        "the local copy signed messages another copy of this key did not see",
                        code="fork",
                    ) from None
            feed.rebase(remote)
        else:
            mine = feed.message_id(remote.sequence)
            if mine is not None and mine != remote.id:
                raise InvalidMessage(
                    f"fork: at sequence {remote.sequence} the node has {remote.id}, "
                    f"the local copy {mine}",
                    code="fork",
                )
        self._sent = remote.sequence
        _acknowledge(feed, remote.sequence)

    def _refused(self, msg: Mapping[str, Any], exc: Error) -> Error:
        """What to raise for our message the node refused; drops it if it can never be accepted."""
        if isinstance(exc, OperationalError | RateLimited | Unauthorized):
            return exc
        if exc.code in _DIVERGED:
            self._sent = None  # ask the node again next time
            return exc
        feed = self._feed()
        sequence = int(msg["sequence"])
        # At once where the copy allows it: a message signed in between by another
        # thread or process would be dropped without being handed back.
        together = feed.locked() if isinstance(feed, MemoryFeed) else contextlib.nullcontext()
        with together:
            if sequence <= _acknowledged(feed):
                # A node took it (another node, say, with a tx only it knows):
                # never dropped. This node is asked for the feed again next time.
                self._sent = None
                lost = []
                note = " (a node accepted it before: the local copy is kept as it was)"
            else:
                lost = feed.after(sequence - 1)
                dropped = feed.truncate(sequence)
                note = f" (dropped {dropped} unsent message(s) from the local feed copy)"
        again = type(exc)(exc.detail + note, code=exc.code)
        again.__cause__ = exc
        # What was lost, so the caller can publish what still makes sense again.
        again.dropped = [m["content"] for m in lost]  # type: ignore[attr-defined]
        return again

    def _sync_flow(self, replay: bool = False) -> Flow[list[Receipt]]:
        feed = self._feed()
        if self._sent is None:
            yield from self._reconcile_flow(replay)
        receipts: list[Receipt] = []
        while True:
            assert self._sent is not None
            pending = feed.after(self._sent)[:BATCH_SIZE]
            if not pending:
                return receipts
            results: list[Receipt | Error]
            if len(pending) == 1:
                try:
                    results = [(yield from self._submit_flow(pending[0]))]
                except Error as exc:
                    results = [exc]
            else:
                results = yield from self._batch_flow(pending)
            try:
                for msg, result in zip(pending, results, strict=True):
                    if isinstance(result, Error):
                        raise self._refused(msg, result)
                    receipts.append(result)
                    self._sent = int(msg["sequence"])
            finally:
                _acknowledge(feed, self._sent)

    def _publish_flow(self, content: Mapping[str, Any] | str) -> Flow[Receipt]:
        _content_arg(content)  # before the node is asked for our feed's head
        if self._sent is None:
            yield from self._reconcile_flow()
        msg = self.sign(content)
        mid = ssb.message_id(msg)
        for receipt in (yield from self._sync_flow()):
            if receipt.id == mid:
                return receipt
        raise OperationalError(f"the node did not acknowledge {mid}")

    def _submit_flow(self, msg: Mapping[str, Any]) -> Flow[Receipt]:
        body = ssb.stringify(_mapping_arg(msg, "msg")).encode("utf-8")
        resp = yield Request("POST", "/v1/messages", content=body, content_type=_JSON)
        receipt = _receipt(_json(resp), resp.status_code == 201)
        self._mark_sent(msg)
        return receipt

    def _batch_flow(self, msgs: Iterable[Mapping[str, Any]]) -> Flow[list[Receipt | Error]]:
        copies = _messages_arg(msgs, "msgs")
        if not copies:
            return []
        body = b"".join(ssb.stringify(m, 0).encode("utf-8") + b"\n" for m in copies)
        resp = yield Request("POST", "/v1/messages/batch", content=body, content_type=_NDJSON)
        lines = [line for line in resp.content.split(b"\n") if line.strip()]
        if len(lines) != len(copies):
            raise OperationalError(f"sent {len(copies)} messages, the node answered {len(lines)}")
        try:
            results = [_batch_result(line) for line in lines]
        except orjson.JSONDecodeError as exc:
            raise OperationalError(f"the node's batch answer is not NDJSON: {exc}") from exc
        for msg, result in zip(copies, results, strict=True):
            if isinstance(result, Receipt):
                self._mark_sent(msg)
        return results

    # -- flows: transactions ---------------------------------------------------------------

    def _open_tx_content(
        self,
        parties: Iterable[str],
        deadline: Deadline,
        finish: str,
        subject: str | None,
        data: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        listed = list(dict.fromkeys(_ids_arg(parties, "parties", "feed")))
        if _str_arg(finish, "finish") not in content_rules.FINISH_POLICIES:
            raise InvalidMessage(f"finish: expected all, any or opener, got {_shown(finish)}")
        _opt_str_arg(subject, "subject")
        extra = _opt_mapping_arg(data, "data")
        until = _deadline_ms(deadline, self.clock())
        me = self._keys().id
        if me not in listed:
            listed.insert(0, me)
        body: dict[str, Any] = {
            "type": "tx/open",
            "parties": listed,
            "deadline": until,
            "finish": finish,
        }
        if subject is not None:
            body["subject"] = subject
        if extra is not None:
            body["data"] = extra
        return body

    def _note_content(
        self, tx: str, data: Mapping[str, Any], to: Iterable[str] | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "tx/note",
            "tx": _id_arg(tx, "tx", "msg"),
            "data": _mapping_arg(data, "data"),
        }
        recipients = _opt_ids_arg(to, "to", "feed")
        if recipients is not None:
            body["to"] = list(dict.fromkeys(recipients))
        return body

    def _finish_content(self, tx: str, data: Mapping[str, Any] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "tx/finish", "tx": _id_arg(tx, "tx", "msg")}
        extra = _opt_mapping_arg(data, "data")
        if extra is not None:
            body["data"] = extra
        return body

    # -- channels (DESIGN §3 "Channels") ---------------------------------------------------

    def _channel_messages_flow(self, chan: str) -> Flow[list[dict[str, Any]]]:
        out: list[dict[str, Any]] = []
        while True:
            page = yield from self._get_flow(
                f"/v1/channels/{path_id(chan)}/messages",
                {"after": len(out), "limit": _CHANNEL_PAGE},
            )
            got = _dict(page, "channel messages").get("messages")
            if not isinstance(got, list):
                raise ProofError("channel messages: expected a list")
            out.extend(m for m in got if isinstance(m, dict))
            if len(got) < _CHANNEL_PAGE:
                return out

    def _channel_key_flow(
        self, chan: str, history: list[dict[str, Any]] | None = None
    ) -> Flow[tuple[bytes, str | None]]:
        """The channel key sealed to us (in its chan/open or a chan/share) and its tx;
        from ``history`` when the caller has read it already."""
        keys = self._keys()
        cached = self._channel_keys.get(chan)
        if cached is not None:
            return cached
        if history is None:
            history = yield from self._channel_messages_flow(chan)
        # Only a key the channel's signed record grants (``read_history``'s
        # rules): the node serving the history is not trusted with the plaintext.
        found = channels.channel_key(history, keys, channel=chan, hmac_key=self.hmac_key)
        if found is None:
            raise _no_key(chan, keys)
        self._channel_keys[chan] = found
        return found

    def _open_channel_flow(
        self, members: Iterable[str], tx: str | None, label: str | None
    ) -> Flow[MsgId]:
        listed = _ids_arg(members, "members", "feed")
        _opt_id_arg(tx, "tx", "msg")
        _opt_str_arg(label, "label")
        content, key = channels.open_content(listed, author_keys=self._keys(), tx=tx, label=label)
        receipt = yield from self._publish_flow(content)
        self._channel_keys[receipt.id] = (key, tx)
        return receipt.id

    def _channel_send_flow(self, chan: str, data: Mapping[str, Any]) -> Flow[Receipt]:
        _id_arg(chan, "chan", "msg")
        inner = _mapping_arg(data, "data")
        key, tx = yield from self._channel_key_flow(chan)
        content = channels.msg_content(key, inner, author=self.id, channel=chan, tx=tx)
        return (yield from self._publish_flow(content))

    def _channel_send_document_flow(
        self, chan: str, document: Path | str | BytesLike, name: str | None, mime: str | None
    ) -> Flow[ChannelDocument]:
        _id_arg(chan, "chan", "msg")
        data, name, mime = read_document(document, name, mime)
        key, tx = yield from self._channel_key_flow(chan)
        sealed = chandocs.seal_document(key, data, author=self.id, channel=chan)
        bid = yield from self._put_blob_flow(sealed)
        # Public, so the node keeps the ciphertext and a block dates it; no name
        # or type here: those are in the box below.
        doc: dict[str, Any] = {"type": "doc", "blob": bid, "size": len(sealed)}
        if tx is not None:
            doc["tx"] = tx
        notarised = yield from self._publish_flow(doc)
        inner = chandocs.pointer_content(
            data, blob=bid, notarised=notarised.id, name=name, mime=mime
        )
        content = channels.msg_content(key, inner, author=self.id, channel=chan, tx=tx)
        sent = yield from self._publish_flow(content)
        return ChannelDocument(sent.id, self.id, notarised.id, bid, len(data), name, mime)

    def _channel_document_flow(self, chan: str, msg_id: str) -> Flow[tuple[ChannelDocument, bytes]]:
        _id_arg(chan, "chan", "msg")
        _id_arg(msg_id, "msg_id", "msg")
        history, opened = yield from self._channel_history_flow(chan)
        found = next((o for o in opened if o.id == msg_id), None)
        if found is None:
            raise NotFound(f"channel {chan}: no message {msg_id} that you can read")
        pointer = chandocs.read_pointer(found.data)
        if pointer is None:
            raise InvalidMessage(f"{msg_id}: a channel message carrying no document")
        notarised = yield from self._get_flow(f"/v1/messages/{path_id(pointer.notarised)}")
        doc = _dict(notarised, "message").get("message")
        if not isinstance(doc, dict):
            raise ProofError(
                f"document {pointer.blob}: the node sent no message for its notarisation"
            )
        try:
            checked = ssb.check(doc, self.hmac_key)
        except InvalidMessage as exc:
            raise ProofError(
                f"document {pointer.blob}: its notarisation {pointer.notarised} does not"
                f" verify: {exc.detail}"
            ) from None
        chandocs.check_notarised(pointer, found.author, checked)
        sealed = yield from self._get_blob_flow(pointer.blob)
        key, _ = yield from self._channel_key_flow(chan, history)  # the history read above
        data = chandocs.open_document(key, sealed, author=found.author, channel=chan)
        chandocs.check_document(pointer, data)
        about = ChannelDocument(
            found.id,
            found.author,
            MsgId(pointer.notarised),
            BlobId(pointer.blob),
            pointer.size,
            pointer.name,
            pointer.mime,
        )
        return about, data

    def _channel_share_flow(self, chan: str, readers: Iterable[str]) -> Flow[Receipt]:
        # No ``tx``: sharing usually comes after the tx closed, and a message
        # naming a closed tx is refused; the channel id is what is shared.
        _id_arg(chan, "chan", "msg")
        listed = _ids_arg(readers, "readers", "feed")
        key, _ = yield from self._channel_key_flow(chan)
        content = channels.share_content(key, chan, listed)
        return (yield from self._publish_flow(content))

    def _channel_read_flow(self, chan: str) -> Flow[list[channels.Opened]]:
        _id_arg(chan, "chan", "msg")
        _, opened = yield from self._channel_history_flow(chan)
        return opened

    def _channel_history_flow(
        self, chan: str
    ) -> Flow[tuple[list[dict[str, Any]], list[channels.Opened]]]:
        """The channel's messages as the node sent them, and those we can decrypt."""
        keys = self._keys()
        history = yield from self._channel_messages_flow(chan)
        opened = list(channels.read_history(history, keys, channel=chan, hmac_key=self.hmac_key))
        # Nothing readable and no key: an outsider, not an empty channel.
        if not opened and (
            channels.channel_key(history, keys, channel=chan, hmac_key=self.hmac_key) is None
        ):
            raise _no_key(chan, keys)
        return history, opened

    def _get_flow(self, path: str, params: Mapping[str, str | int] | None = None) -> Flow[Any]:
        resp = yield Request("GET", path, params)
        return _json(resp)

    def _tx_flow(self, tx_id: str) -> Flow[dict[str, Any]]:
        _id_arg(tx_id, "tx_id", "msg")
        body = _dict(
            (yield from self._get_flow(f"/v1/transactions/{path_id(tx_id)}")), "transaction"
        )
        if body.get("tx") != tx_id or not isinstance(body.get("status"), str):
            # Not this tx, or not a chainmail answer at all ({} from another server).
            raise ProofError(
                f"transaction {tx_id}: the node answered no such transaction: {body!r:.200}"
            )
        return body

    def _transactions_flow(
        self, party: str | None, status: str | None, limit: int, after: str | None = None
    ) -> Flow[list[dict[str, Any]]]:
        params: dict[str, str | int] = {"limit": _int_arg(limit, "limit", 1)}
        _opt_id_arg(party, "party", "feed")
        _opt_id_arg(after, "after", "msg")
        if _opt_str_arg(status, "status") not in (None, *_TX_STATUSES):
            raise InvalidMessage(
                f"status: expected {', '.join(_TX_STATUSES)} or None, got {_shown(status)}"
            )
        if after is not None:
            params["before"] = after  # the API's cursor: the txs listed after this one
        if party is not None:
            params["party"] = party
        if status is not None:
            params["status"] = status
        body = _dict((yield from self._get_flow("/v1/transactions", params)), "transactions")
        got = body.get("transactions")
        if not isinstance(got, list) or not all(
            isinstance(t, dict) and isinstance(t.get("tx"), str) for t in got
        ):
            raise OperationalError(
                f"transactions: expected a list of transactions from the node, got {got!r:.200}"
            )
        return got

    # -- flows: inbox ----------------------------------------------------------------------

    def _inbox_flow(self, limit: int) -> Flow[list[InboxEntry]]:
        params = {"limit": _int_arg(limit, "limit", 1)}
        self._keys()
        resp = yield Request("GET", "/v1/inbox", params, signed=True)
        entries = _dict(_json(resp), "inbox").get("entries")
        if not isinstance(entries, list):
            raise ProofError(
                f"inbox: expected a list of entries from the node, got {entries!r:.200}"
            )
        return [_inbox_entry(e) for e in entries]

    def _ack_flow(self, ids: Iterable[str]) -> Flow[int]:
        body = orjson.dumps({"ids": _ids_arg(ids, "ids", "msg")})
        self._keys()
        resp = yield Request("POST", "/v1/inbox/ack", content=body, content_type=_JSON, signed=True)
        acked = _dict(_json(resp), "ack").get("acked", 0)
        if type(acked) is not int:
            raise OperationalError(f"ack: expected a count from the node, got {acked!r}")
        return acked

    # -- flows: blobs ----------------------------------------------------------------------

    def _put_blob_flow(self, data: BytesLike) -> Flow[BlobId]:
        data = _bytes_arg(data, "data")
        expected = blob_id(data)
        resp = yield Request(
            "PUT", "/v1/blobs", content=data, content_type="application/octet-stream"
        )
        got = _dict(_json(resp), "blob").get("id")
        if got != expected:
            raise ProofError(f"blob: expected the node to store {expected}, it says {got!r}")
        return expected

    def _get_blob_flow(self, bid: str) -> Flow[bytes]:
        _id_arg(bid, "bid", "blob")
        resp = yield Request("GET", f"/v1/blobs/{path_id(bid)}")
        got = blob_id(resp.content)
        if got != bid:
            raise ProofError(
                f"blob {bid}: the node sent {len(resp.content)} bytes hashing to {got}"
            )
        return resp.content

    def _notarise_flow(
        self,
        document: Path | str | BytesLike,
        name: str | None,
        mime: str | None,
        tx: str | None,
    ) -> Flow[Receipt]:
        _opt_id_arg(tx, "tx", "msg")  # before the blob is stored
        data, name, mime = read_document(document, name, mime)
        bid = yield from self._put_blob_flow(data)
        body: dict[str, Any] = {"type": "doc", "blob": bid, "size": len(data)}
        if name is not None:
            body["name"] = name
        if mime is not None:
            body["mime"] = mime
        if tx is not None:
            body["tx"] = tx
        return (yield from self._publish_flow(body))

    # -- flows: reads ----------------------------------------------------------------------

    def _blocks_flow(self, after: int, limit: int) -> Flow[list[dict[str, Any]]]:
        params = {"after": _int_arg(after, "after"), "limit": _int_arg(limit, "limit", 1)}
        body = _dict((yield from self._get_flow("/v1/blocks", params)), "blocks")
        got = body.get("blocks")
        if not isinstance(got, list) or not all(
            isinstance(b, dict)
            and type(b.get("height")) is int
            and isinstance(b.get("id"), str)
            and "message" in b  # judged by what reads it: verify_block, the auditor
            for b in got
        ):
            raise OperationalError(
                f"blocks: expected a list of blocks with a height, an id and a message, got {got!r}"
            )
        return got

    def _checkpoint_flow(self, pipeline: int) -> Flow[str]:
        _int_arg(pipeline, "pipeline")
        resp = yield Request("GET", f"/v1/log/{pipeline}/checkpoint")
        try:
            return resp.content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProofError(f"checkpoint of pipeline {pipeline}: not UTF-8 text") from exc

    def _consistency_flow(self, pipeline: int, size1: int, size2: int) -> Flow[list[bytes]]:
        _int_arg(pipeline, "pipeline")
        older = _int_arg(size1, "size1", 1)
        # Said here in the SDK's words: the node's would name its own ``to``.
        params = {"from": older, "to": _int_arg(size2, "size2", older)}
        body = _dict(
            (yield from self._get_flow(f"/v1/log/{pipeline}/consistency", params)),
            "consistency proof",
        )
        return proof_hashes(body.get("proof"), "consistency proof")

    def _message_flow(self, msg_id: str) -> Flow[dict[str, Any]]:
        path = f"/v1/messages/{path_id(_id_arg(msg_id, 'msg_id', 'msg'))}"
        return _dict((yield from self._get_flow(path)), "message")

    def _block_flow(self, height: int) -> Flow[dict[str, Any]]:
        path = f"/v1/blocks/{_int_arg(height, 'height')}"
        return _dict((yield from self._get_flow(path)), "block")

    def _firehose_params(self, start: int, pipeline: int, follow: bool) -> dict[str, str | int]:
        return {
            "from": _int_arg(start, "start"),
            "pipeline": _int_arg(pipeline, "pipeline"),
            "follow": "true" if _bool_arg(follow, "follow") else "false",
        }

    def _inbox_stream(self, ack: bool) -> tuple[str, dict[str, str]]:
        """The inbox stream's URL and its signed handshake headers."""
        _bool_arg(ack, "ack")
        url, raw_path = self._ws_url("/v1/inbox/stream")
        return url, self._inbox_headers(raw_path)

    # -- flows: verification (``chainmail.verify``, its arguments checked first) -----------

    def _pin(self, node_id: str | None, progress: Progress | None) -> str | None:
        """The node id a verification pins (``node_id``, or the client's), and
        ``progress`` checked: what every verification takes."""
        if progress is not None:
            _callable_arg(progress, "progress")
        return self.node_id if node_id is None else _id_arg(node_id, "node_id", "feed")

    def _verify_message_flow(
        self, msg_id: str, node_id: str | None, progress: Progress | None
    ) -> Flow[Report]:
        _id_arg(msg_id, "msg_id", "msg")
        pin = self._pin(node_id, progress)
        return (
            yield from message_flow(
                msg_id, node_id=pin, hmac_key=self.hmac_key, progress=progress, now=_now_ms()
            )
        )

    def _verify_document_flow(
        self, data: bytes, msg_id: str, node_id: str | None, progress: Progress | None
    ) -> Flow[Report]:
        _id_arg(msg_id, "msg_id", "msg")
        pin = self._pin(node_id, progress)
        return (
            yield from document_flow(
                msg_id, data, node_id=pin, hmac_key=self.hmac_key, progress=progress, now=_now_ms()
            )
        )

    def _verify_tx_flow(
        self, tx_id: str, node_id: str | None, progress: Progress | None
    ) -> Flow[Report]:
        _id_arg(tx_id, "tx_id", "msg")
        pin = self._pin(node_id, progress)
        return (
            yield from tx_flow(
                tx_id, node_id=pin, hmac_key=self.hmac_key, progress=progress, now=_now_ms()
            )
        )

    def _verify_block_flow(
        self,
        height: int,
        node_id: str | None,
        progress: Progress | None,
        bitcoin: Headers | None,
        anchor: bool,
        witnesses: Sequence[str] | None,
        threshold: int | None,
    ) -> Flow[Report]:
        _int_arg(height, "height")
        pin = self._pin(node_id, progress)
        _bool_arg(anchor, "anchor")
        pinned = _opt_ids_arg(witnesses, "witnesses", "feed")
        if threshold is not None:
            _int_arg(threshold, "threshold", 1)
        return (
            yield from block_flow(
                height,
                node_id=pin,
                progress=progress,
                bitcoin=bitcoin,
                anchor=anchor,
                witnesses=pinned,
                threshold=threshold,
                now=_now_ms(),
                hmac_key=self.hmac_key,
            )
        )

    def _verify_checkpoint_flow(
        self, pipeline: int, node_id: str | None, progress: Progress | None
    ) -> Flow[Report]:
        _int_arg(pipeline, "pipeline")
        pin = self._pin(node_id, progress)
        return (yield from checkpoint_flow(pipeline, node_id=pin, progress=progress))


#: The most an answer (not a stream) may hold: four times the largest a node sends (a
#: 16 MiB blob). Past it, or past ``_ANSWER_SECONDS``, it is not a node's answer.
_MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024
#: Seconds an answer may take to arrive whole (each read has the client's timeout too).
_ANSWER_SECONDS: Final = 300.0


class _AnswerReader:
    """An answer's body, read chunk by chunk within ``_MAX_ANSWER_BYTES`` and
    ``_ANSWER_SECONDS``: a server that never stops sending (or trickles for ever)
    gets an ``OperationalError`` instead of all the memory and time there is."""

    def __init__(self, node: str) -> None:
        self._node = node
        self._parts: list[bytes] = []
        self._size = 0
        self._deadline = time.monotonic() + _ANSWER_SECONDS

    def add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > _MAX_ANSWER_BYTES:
            raise OperationalError(
                f"{self._node} sent an answer of more than {_MAX_ANSWER_BYTES} bytes: not a node's"
            )
        if time.monotonic() > self._deadline:
            raise OperationalError(
                f"{self._node} took more than {_ANSWER_SECONDS:g} s to send one answer"
            )
        self._parts.append(chunk)

    def response(self, resp: httpx.Response) -> httpx.Response:
        """``resp`` with its body, decoded (its content encoding is dropped: done)."""
        headers = [(k, v) for k, v in resp.headers.multi_items() if k.lower() != "content-encoding"]
        return httpx.Response(
            resp.status_code, headers=headers, content=b"".join(self._parts), request=resp.request
        )


def _undecodable(node: str, exc: httpx.DecodingError) -> ProofError:
    """An answer whose bytes cannot be decoded as it says (a corrupt gzip body, say)."""
    return ProofError(f"{node} sent an answer that cannot be decoded: {exc}")


def _no_key(chan: str, keys: Keypair) -> DecryptionError:
    return DecryptionError(
        f"cannot decrypt: no key of channel {chan} is sealed to {keys.id}"
        " (not a member, and not shared with you)"
    )


def _drive_sync(flow: Flow[T], send: Callable[[Request], httpx.Response]) -> T:
    """Run a flow to its end, sending its requests with ``send``."""
    try:
        request = next(flow)
        while True:
            try:
                response = send(request)
            except Error as exc:
                request = flow.throw(exc)
            else:
                request = flow.send(response)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- sync client


class Client(_Core):
    """A synchronous client of one node (httpx), optionally acting as one identity.

    ``node`` defaults to ``$CHAINMAIL_NODE`` or ``http://127.0.0.1:8700``.
    ``keys`` is the identity (see ``from_keystore``); ``feeds`` a directory
    for the local feed copy (memory without it); ``node_id`` pins the node's
    identity for verification; ``transport`` replaces httpx's (tests).
    Use it as a context manager, or call ``close()``. Every method (and the
    constructor) raises ``TypeError`` for an argument of the wrong type and
    ``InvalidMessage`` for an ill-formed id or a number out of range, before
    any request (see the module's "Errors").
    """

    def __init__(
        self,
        node: str | None = None,
        keys: Keypair | None = None,
        *,
        feeds: Path | str | None = None,
        feed: LocalFeed | None = None,
        node_id: str | None = None,
        hmac_key: BytesLike | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        clock: Callable[[], int] = _now_ms,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        _transport_arg(transport, httpx.BaseTransport)
        super().__init__(
            node,
            keys,
            feeds=feeds,
            feed=feed,
            node_id=node_id,
            hmac_key=hmac_key,
            timeout=timeout,
            clock=clock,
        )
        self._http = httpx.Client(base_url=self.node, timeout=self._timeout, transport=transport)
        self._auth = httpsig.HttpSigAuth(keys) if keys is not None else None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def _send(self, req: Request) -> httpx.Response:
        headers = {"content-type": req.content_type} if req.content_type else None
        extra: dict[str, Any] = {"auth": self._auth} if req.signed else {}
        try:
            request = self._http.build_request(
                req.method, req.path, params=req.params, content=req.content, headers=headers
            )
            streamed = self._http.send(request, stream=True, **extra)
            try:
                body = _AnswerReader(self.node)
                for chunk in streamed.iter_bytes():
                    body.add(chunk)
            finally:
                streamed.close()
        except httpx.TransportError as exc:
            raise _unreachable(self.node, exc) from exc
        except httpx.DecodingError as exc:
            raise _undecodable(self.node, exc) from exc
        resp = body.response(streamed)
        _raise_for_problem(resp)
        return resp

    def _run(self, flow: Flow[T]) -> T:
        return _drive_sync(flow, self._send)

    # -- publishing ------------------------------------------------------------------------

    def publish(self, content: Mapping[str, Any] | str) -> Receipt:
        """Sign ``content`` into your feed and push it (with any backlog before it).

        Raises the node's error for the message (``Rejected``, ``InvalidMessage``…;
        the message is then dropped from the local copy), ``NodeUnavailable``
        (the message stays local: ``sync()`` later), and what ``sign`` raises.
        """
        return self._run(self._publish_flow(content))

    def sync(self, *, replay: bool = False) -> list[Receipt]:
        """Push every local message the node does not have, in order; their receipts.

        The first call asks the node for the feed's head. Raises the node's
        error for the first refused message (see ``publish``), ``InvalidMessage``
        (``fork``) when the local copy and the node's feed disagree, and
        (``out_of_order``) when the node has less of the feed than a node
        accepted before, unless ``replay`` (another node: the feed's history is
        pushed to it), and ``NodeUnavailable``.
        """
        return self._run(self._sync_flow(_bool_arg(replay, "replay")))

    def submit(self, msg: Mapping[str, Any]) -> Receipt:
        """Submit one signed message (anyone's); ``created`` is False for a duplicate.

        Raises the node's error (``InvalidMessage``, ``Rejected``…) or ``NodeUnavailable``.
        """
        return self._run(self._submit_flow(msg))

    def submit_batch(self, msgs: Iterable[Mapping[str, Any]]) -> list[Receipt | Error]:
        """Submit signed messages in one request; a receipt or the error for each, in order.

        Raises only for the request as a whole (``NodeUnavailable``, ``InvalidMessage``
        ``too_large``…); per-message errors are returned, not raised.
        """
        return self._run(self._batch_flow(msgs))

    # -- transactions ----------------------------------------------------------------------

    def open_tx(
        self,
        parties: Iterable[str],
        deadline: Deadline,
        finish: str = "all",
        subject: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> MsgId:
        """Open a transaction with ``parties`` (you are added); returns the tx id.

        ``deadline`` is Unix time in ms, a ``timedelta`` from now or an aware
        ``datetime``. Raises ``TypeError`` for an argument of the wrong type
        (``parties`` a single id string, say), ``InvalidMessage`` for a bad
        party, deadline or policy, and what ``publish`` raises.
        """
        body = self._open_tx_content(parties, deadline, finish, subject, data)
        return self.publish(body).id

    def note(self, tx: str, data: Mapping[str, Any], to: Iterable[str] | None = None) -> Receipt:
        """Post a ``tx/note`` to the parties of ``tx`` (or only ``to``).

        Raises ``Rejected`` (``unknown_tx``, ``tx_closed``, ``not_a_party``) and
        what ``publish`` raises.
        """
        return self.publish(self._note_content(tx, data, to))

    def finish(self, tx: str, data: Mapping[str, Any] | None = None) -> Receipt:
        """Declare your part of ``tx`` done (``tx/finish``). Raises like ``note``."""
        return self.publish(self._finish_content(tx, data))

    def tx(self, tx_id: str) -> dict[str, Any]:
        """The node's view of a transaction; raises ``NotFound``, ``NodeUnavailable``."""
        return self._run(self._tx_flow(tx_id))

    def transactions(
        self,
        *,
        party: str | None = None,
        status: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[dict[str, Any]]:
        """Transactions, newest first, by party and status; the next page is ``after`` the
        last listed tx's id. Raises ``InvalidMessage``, ``NotFound`` (no such ``after``)."""
        return self._run(self._transactions_flow(party, status, limit, after))

    # -- reads -----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``/healthz``: the node's id, origin, verifier key, pipelines, log sizes."""
        return _dict(self._run(self._get_flow("/healthz")), "healthz")

    def message(self, msg_id: str) -> dict[str, Any]:
        """``{"message", "pipeline", "index", "received", "tx", "block"}``; raises ``NotFound``."""
        return self._run(self._message_flow(msg_id))

    def head(self, author: str | None = None) -> ssb.FeedState | None:
        """The node's head of ``author``'s feed (yours by default), None when empty."""
        return self._run(self._head_flow(author))

    def block(self, height: int) -> dict[str, Any]:
        """Block ``height`` with its records, unverified; raises ``NotFound``."""
        return self._run(self._block_flow(height))

    def blocks(self, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Blocks above height ``after``, unverified: each has an integer ``height``, a
        string ``id`` and a ``message`` (``OperationalError`` for an answer without)."""
        return self._run(self._blocks_flow(after, limit))

    def checkpoint(self, pipeline: int = 0) -> str:
        """``pipeline``'s current signed checkpoint (C2SP signed note), unverified.

        ``chainmail.checkpoint.verify_checkpoint`` checks it with the node's
        key; ``verify_checkpoint`` here does both. Raises ``NotFound``.
        """
        return self._run(self._checkpoint_flow(pipeline))

    def consistency(self, pipeline: int, size1: int, size2: int) -> list[bytes]:
        """The RFC 9162 consistency proof of ``pipeline`` from ``size1`` to ``size2``, unverified.

        ``chainmail.merkle.verify_consistency`` checks it against the two roots.
        Raises ``InvalidMessage`` for sizes the log cannot prove.
        """
        return self._run(self._consistency_flow(pipeline, size1, size2))

    # -- inbox -----------------------------------------------------------------------------

    def inbox(self, limit: int = 100) -> list[InboxEntry]:
        """Your unacknowledged deliveries, oldest first (a signed request).

        Raises ``KeystoreError`` without an identity, ``Unauthorized``, ``NodeUnavailable``.
        """
        return self._run(self._inbox_flow(limit))

    def ack(self, ids: Iterable[str]) -> int:
        """Acknowledge deliveries by message id; returns how many were pending."""
        return self._run(self._ack_flow(ids))

    def inbox_iter(
        self, *, follow: bool = True, ack: bool = True, limit: int = 100
    ) -> Generator[InboxEntry, None, None]:
        """Your deliveries, oldest first; with ``follow`` new ones as they come (WebSocket).

        With ``ack`` an entry is acknowledged when you ask for the next one,
        so one you were handling when you stopped comes again next time
        (at-least-once). A followed stream that drops once open (a proxy, a
        keepalive timeout while you handle an entry) is opened again, and an
        entry this iterator gave already is not given again. Without
        ``follow`` it reads pages over HTTP until none is new (without
        ``ack``: one page). Raises ``Unauthorized`` when the node refuses the
        signature, ``NodeUnavailable`` when the connection fails (or drops
        again within a second of opening).
        """
        _int_arg(limit, "limit", 1)
        _bool_arg(ack, "ack")
        if not _bool_arg(follow, "follow"):
            yield from self._inbox_pages(ack, limit)
            return
        cursor = _InboxCursor()
        while True:
            url, headers = self._inbox_stream(ack)
            try:
                with websockets.sync.client.connect(
                    url,
                    additional_headers=headers,
                    max_size=_WS_MAX_SIZE,
                    open_timeout=self._timeout.connect,
                    close_timeout=_WS_CLOSE_TIMEOUT,
                ) as ws:
                    cursor.opened()
                    for frame in ws:
                        entry, again = cursor.frame(frame, ack)
                        if again is not None:
                            ws.send(again)
                        if entry is None:
                            continue
                        yield entry
                        if ack:
                            ws.send(_ack_frame(entry.id))
                    return  # the node ended the stream cleanly: it is stopping
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
                failure = cursor.failure(self.node, url, exc)
                if failure is not None:
                    raise failure from exc

    def _inbox_pages(self, ack: bool, limit: int) -> Generator[InboxEntry, None, None]:
        seen: set[int] = set()
        while True:
            fresh = [e for e in self.inbox(limit) if e.delivery not in seen]
            if not fresh:
                return
            for entry in fresh:
                seen.add(entry.delivery)
                yield entry
                if ack:
                    self.ack([entry.id])
            if not ack:
                return

    # -- firehose --------------------------------------------------------------------------

    def firehose(
        self, start: int = 0, *, pipeline: int = 0, follow: bool = False
    ) -> Generator[FirehoseEntry, None, None]:
        """Every message of ``pipeline``'s log from index ``start`` on, in log order.

        With ``follow`` the stream stays open for new messages. Raises
        ``NotFound`` for an unknown pipeline, ``NodeUnavailable``.
        """
        params = self._firehose_params(start, pipeline, follow)
        timeout = httpx.Timeout(None, connect=self._timeout.connect) if follow else self._timeout
        try:
            with self._http.stream("GET", "/v1/firehose", params=params, timeout=timeout) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _raise_for_problem(resp)
                lines = _LineSplitter()
                for chunk in resp.iter_bytes():
                    for line in lines.feed(chunk):
                        yield _firehose_entry(line)
                for line in lines.end():
                    yield _firehose_entry(line)
        except httpx.TransportError as exc:
            raise _unreachable(self.node, exc) from exc
        except httpx.DecodingError as exc:
            raise _undecodable(self.node, exc) from exc

    # -- blobs -----------------------------------------------------------------------------

    def put_blob(self, data: BytesLike) -> BlobId:
        """Store ``data``; its id ``&…sha256`` (checked against the node's answer).

        The node keeps it for good once a logged message names it (``notarise``
        posts the ``doc`` that does); unnamed, it is deleted after the node's
        grace (24 h by default). Raises ``ProofError`` when the node names
        another id, ``InvalidMessage`` (``too_large``), ``RateLimited`` when the
        node holds as many unnamed blob bytes as it takes, ``NodeUnavailable``,
        ``TypeError`` when ``data`` is not bytes.
        """
        return self._run(self._put_blob_flow(data))

    def get_blob(self, bid: str) -> bytes:
        """The bytes of blob ``bid``, checked against its hash.

        Raises ``ProofError`` when they do not hash to ``bid``, ``NotFound``.
        """
        return self._run(self._get_blob_flow(bid))

    def notarise(
        self,
        document: Path | str | BytesLike,
        name: str | None = None,
        mime: str | None = None,
        tx: str | None = None,
    ) -> Receipt:
        """Upload a document (a path, or bytes) as a blob and publish a ``doc`` message for it.

        ``name`` and ``mime`` default to the file's name and guessed type.
        Raises what ``put_blob`` and ``publish`` raise.
        """
        return self._run(self._notarise_flow(document, name, mime, tx))

    # -- channels --------------------------------------------------------------------------

    def open_channel(
        self, members: Iterable[str], *, tx: str | None = None, label: str | None = None
    ) -> MsgId:
        """Open an encrypted channel with ``members`` (you are added); returns its id.

        A fresh key is sealed to each member's curve25519 key. Raises
        ``TypeError`` for ``members`` that is not an iterable of id strings,
        ``InvalidMessage`` for a bad member id, and what ``publish`` raises.
        """
        return self._run(self._open_channel_flow(members, tx, label))

    def channel_send(self, chan: str, data: Mapping[str, Any]) -> Receipt:
        """Encrypt ``data`` for the channel and publish it as a ``chan/msg``.

        Raises ``DecryptionError`` when no key of the channel is sealed to
        you, and what ``publish`` raises (``not_a_party`` for a non-member).
        """
        return self._run(self._channel_send_flow(chan, data))

    def channel_read(self, chan: str) -> list[channels.Opened]:
        """Every message of the channel you can decrypt, in log order (from the node's
        ciphertext; signatures are checked locally). Raises ``DecryptionError`` when no
        key of the channel is sealed to you (not a member, not shared with you),
        ``NotFound``, ``NodeUnavailable``.
        """
        return self._run(self._channel_read_flow(chan))

    def channel_send_document(
        self,
        chan: str,
        document: Path | str | BytesLike,
        *,
        name: str | None = None,
        mime: str | None = None,
    ) -> ChannelDocument:
        """Send a document (a path, or bytes) to the channel's members only.

        Sealed with the channel key, stored as a blob, notarised by a public
        ``doc`` naming only the ciphertext (so the node keeps it and a block
        dates it), and announced by a ``chan/msg`` whose box gives its name,
        type, size and SHA-256 (``chainmail.chandocs``). ``name`` and ``mime``
        default to the file's. Raises ``DecryptionError`` when no key of the
        channel is sealed to you, and what ``put_blob`` and ``publish`` raise.
        """
        return self._run(self._channel_send_document_flow(chan, document, name, mime))

    def channel_document(self, chan: str, msg_id: str) -> tuple[ChannelDocument, bytes]:
        """The document the channel message ``msg_id`` carries, and its plaintext.

        Decrypted here, and checked against the size and SHA-256 its author
        signed in the message's box, and its notarisation against the ``doc``
        message it names (signed by the same author, naming the same blob and
        sealed size): the node is not trusted with either. Raises
        ``NotFound`` when the channel has no such message you can read,
        ``InvalidMessage`` when it carries no document, ``DecryptionError``,
        ``ProofError`` when the bytes are not the ones announced.
        """
        return self._run(self._channel_document_flow(chan, msg_id))

    def channel_share(self, chan: str, readers: Iterable[str]) -> Receipt:
        """Give ``readers`` (an auditor, a regulator) the channel's key: its whole history.

        Only members share (readers read); a share names no tx, so a settled
        trade's channel can still be opened to an auditor. Raises
        ``DecryptionError`` when you hold no key of the channel, ``Rejected``
        (``not_a_party``) when you are not a member, and what ``publish`` raises.
        """
        return self._run(self._channel_share_flow(chan, readers))

    # -- verification ----------------------------------------------------------------------

    def verify_message(
        self, msg_id: str, *, node_id: str | None = None, progress: Progress | None = None
    ) -> Report:
        """Verify a message end to end without trusting the node (see ``chainmail.verify``).

        Raises ``VerificationFailed`` (a ``ProofError``) with the report,
        ``NotFound`` until a block covers the message, ``NodeUnavailable``.
        """
        return self._run(self._verify_message_flow(msg_id, node_id, progress))

    def verify_document(
        self,
        document: Path | str | BytesLike,
        msg_id: str,
        *,
        node_id: str | None = None,
        progress: Progress | None = None,
    ) -> Report:
        """Verify that the ``doc`` message ``msg_id`` notarised ``document`` (a path or bytes):
        the message's checks (``verify_message``) and the document's SHA-256 and size
        against what it signed. Your own copy is checked; the node's is not asked for.

        Raises ``VerificationFailed`` (a ``ProofError``) with the report, ``NotFound``
        until a block covers the message, ``NodeUnavailable``, ``Error`` (``invalid_format``)
        when the file cannot be read.
        """
        data = _document_bytes(document)
        return self._run(self._verify_document_flow(data, msg_id, node_id, progress))

    def verify_tx(
        self, tx_id: str, *, node_id: str | None = None, progress: Progress | None = None
    ) -> Report:
        """Verify a closed tx, its block and every message of it.

        Raises ``VerificationFailed`` (a ``ProofError``) with the report,
        ``NotFound`` for an unknown tx or one no block holds yet, ``NodeUnavailable``.
        """
        return self._run(self._verify_tx_flow(tx_id, node_id, progress))

    def verify_block(
        self,
        height: int,
        *,
        node_id: str | None = None,
        progress: Progress | None = None,
        bitcoin: str | None = None,
        anchor: bool = True,
        witnesses: Sequence[str] | None = None,
        threshold: int | None = None,
    ) -> Report:
        """Verify block ``height``: signature, chain, records, log consistency, checkpoints,
        and (with ``anchor``) its Bitcoin anchor; ``bitcoin``, the JSON-RPC URL of a
        Bitcoin node of your own, checks that the anchor is on that node's chain and its
        Merkle root in the Bitcoin header there.
        ``witnesses`` and ``threshold`` pin the node's witnesses as ``node_id`` pins the node.

        Raises ``VerificationFailed`` (a ``ProofError``), ``NotFound``, ``NodeUnavailable``,
        and ``BitcoinError`` when that Bitcoin node cannot say (down, warming up, syncing:
        ``BitcoinUnreachable``; an odd answer): nothing is then known of the anchor.
        """
        with _headers(bitcoin) as headers:
            flow = self._verify_block_flow(
                height, node_id, progress, headers, anchor, witnesses, threshold
            )
            return self._run(flow)

    def verify_checkpoint(
        self, pipeline: int = 0, *, node_id: str | None = None, progress: Progress | None = None
    ) -> Report:
        """Verify ``pipeline``'s current signed checkpoint with the node's key.

        ``progress`` hears each check as it is made.
        Raises ``VerificationFailed`` (a ``ProofError``), ``NotFound``, ``NodeUnavailable``.
        """
        return self._run(self._verify_checkpoint_flow(pipeline, node_id, progress))


def read_document(
    document: Path | str | BytesLike, name: str | None, mime: str | None
) -> tuple[bytes, str | None, str | None]:
    """A document's bytes, and its name and type (by default, from a path's file name).

    Raises ``Error`` (``invalid_format``) when the file cannot be read, ``TypeError``
    for a ``document`` neither a path nor bytes, or a ``name`` or ``mime`` not a string.
    """
    _opt_str_arg(name, "name")
    _opt_str_arg(mime, "mime")
    data = _document_bytes(document)
    if not isinstance(document, _BYTES_LIKE):
        path = Path(document)
        name = path.name if name is None else name
        if mime is None:
            mime = mimetypes.guess_type(path.name)[0]
    return data, name, mime


#: The largest document read from a path: a node's largest blob (``PUT /v1/blobs``).
MAX_DOCUMENT_BYTES: Final = 16 * 1024 * 1024


def _document_bytes(document: Path | str | BytesLike) -> bytes:
    """A document given as bytes or as a path to read: ``Error`` (``invalid_format``) if
    unreadable, (``too_large``) past ``MAX_DOCUMENT_BYTES`` (read no further: a device
    or a pipe may never end)."""
    if isinstance(document, _BYTES_LIKE):
        return bytes(document)
    if not isinstance(document, str | os.PathLike):
        raise _wrong_type("document", "a path or bytes", document)
    path = Path(document).expanduser()
    try:
        with path.open("rb") as f:
            data = f.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise Error(
            f"cannot read the document {path}: {exc.strerror or exc}", code="invalid_format"
        ) from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise Error(
            f"the document {path} is larger than {MAX_DOCUMENT_BYTES} bytes, the most a node"
            " stores",
            code="too_large",
        )
    return data


def _inbox_frame(frame: str | bytes) -> InboxEntry | None:
    """An entry from an inbox stream frame; None for the node's problem with an ack (bad or not written)."""
    try:
        body = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise OperationalError(f"inbox stream: not JSON: {exc}") from exc
    if isinstance(body, dict) and "code" in body and "delivery" not in body:
        return None
    return _inbox_entry(body)


def _ws_refused(url: str, exc: websockets.exceptions.InvalidStatus) -> Error:
    status = exc.response.status_code
    try:
        problem = orjson.loads(exc.response.body or b"{}")
        detail = str(problem.get("detail") or "")
        code = problem.get("code")
    except (orjson.JSONDecodeError, AttributeError):
        detail, code = "", None
    why = f": {detail}" if detail else ""
    if code in _REJECTED_CODES:  # a key rotated away: the signature held, the key is done
        return Rejected(f"{url}: {detail}", code=str(code))
    if code == "rate_limited":  # as on HTTP: the caller backs off for Retry-After
        wait = exc.response.headers.get("retry-after")
        try:
            retry = float(wait) if wait is not None else 1.0
        except ValueError:
            retry = 1.0
        return RateLimited(f"{url}: {detail}", retry_after=retry)
    if status in (401, 403):
        return Unauthorized(f"{url}: the node refused the signed handshake (HTTP {status}){why}")
    return OperationalError(f"{url}: handshake failed with HTTP {status}{why}")


# --------------------------------------------------------------------------- async client


class AsyncClient(_Core):
    """The asynchronous twin of ``Client`` (httpx + websockets); same arguments.

    Use it as an async context manager, or ``await aclose()``.
    """

    def __init__(
        self,
        node: str | None = None,
        keys: Keypair | None = None,
        *,
        feeds: Path | str | None = None,
        feed: LocalFeed | None = None,
        node_id: str | None = None,
        hmac_key: BytesLike | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        clock: Callable[[], int] = _now_ms,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        _transport_arg(transport, httpx.AsyncBaseTransport)
        super().__init__(
            node,
            keys,
            feeds=feeds,
            feed=feed,
            node_id=node_id,
            hmac_key=hmac_key,
            timeout=timeout,
            clock=clock,
        )
        self._http = httpx.AsyncClient(
            base_url=self.node, timeout=self._timeout, transport=transport
        )
        self._auth = httpsig.HttpSigAuth(keys) if keys is not None else None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    async def _send(self, req: Request) -> httpx.Response:
        headers = {"content-type": req.content_type} if req.content_type else None
        extra: dict[str, Any] = {"auth": self._auth} if req.signed else {}
        try:
            request = self._http.build_request(
                req.method, req.path, params=req.params, content=req.content, headers=headers
            )
            streamed = await self._http.send(request, stream=True, **extra)
            try:
                body = _AnswerReader(self.node)
                async for chunk in streamed.aiter_bytes():
                    body.add(chunk)
            finally:
                await streamed.aclose()
        except httpx.TransportError as exc:
            raise _unreachable(self.node, exc) from exc
        except httpx.DecodingError as exc:
            raise _undecodable(self.node, exc) from exc
        resp = body.response(streamed)
        _raise_for_problem(resp)
        return resp

    async def _run(self, flow: Flow[T]) -> T:
        try:
            request = next(flow)
            while True:
                try:
                    response = await self._send(request)
                except Error as exc:
                    request = flow.throw(exc)
                else:
                    request = flow.send(response)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, content: Mapping[str, Any] | str) -> Receipt:
        """Sign and push ``content``; raises like ``Client.publish``."""
        return await self._run(self._publish_flow(content))

    async def sync(self, *, replay: bool = False) -> list[Receipt]:
        """Push the local backlog; ``replay`` and raises like ``Client.sync``."""
        return await self._run(self._sync_flow(_bool_arg(replay, "replay")))

    async def submit(self, msg: Mapping[str, Any]) -> Receipt:
        """Submit one signed message; raises like ``Client.submit``."""
        return await self._run(self._submit_flow(msg))

    async def submit_batch(self, msgs: Iterable[Mapping[str, Any]]) -> list[Receipt | Error]:
        """Submit signed messages in one request; raises like ``Client.submit_batch``."""
        return await self._run(self._batch_flow(msgs))

    async def submit_stream(
        self, msgs: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]]
    ) -> AsyncIterator[Receipt | Error]:
        """Stream signed messages over ``WS /v1/ingest``; a receipt or error for each, in order.

        Messages go out as fast as the node takes them while results come
        back, so many are in flight at once. Raises ``NodeUnavailable`` when
        the connection fails, ``TypeError`` for ``msgs`` that is not an iterable
        of mappings (one message alone, say), and whatever iterating ``msgs`` raises.
        """
        if not isinstance(msgs, AsyncIterable):
            _many(msgs, "msgs", "signed messages", (*_ONE, Mapping))
        url, _ = self._ws_url("/v1/ingest")
        in_flight: deque[Mapping[str, Any]] = deque()
        state = {"done": False}
        failure: list[BaseException] = []
        progress = asyncio.Event()
        try:
            async with websockets.asyncio.client.connect(
                url, max_size=_WS_MAX_SIZE, open_timeout=self._timeout.connect
            ) as ws:

                async def pump() -> None:
                    try:
                        sent = 0
                        async for msg in _aiter(msgs):
                            frame = ssb.stringify(_mapping_arg(msg, f"msgs[{sent}]"), 0)
                            sent += 1
                            in_flight.append(msg)
                            await ws.send(frame)
                            progress.set()
                    except BaseException as exc:
                        failure.append(exc)
                        raise
                    finally:
                        state["done"] = True
                        progress.set()

                sender = asyncio.create_task(pump())
                try:
                    while True:
                        if in_flight:
                            result = _batch_result(_as_bytes(await ws.recv()))
                            msg = in_flight.popleft()
                            if isinstance(result, Receipt):
                                self._mark_sent(msg)
                            yield result
                        elif state["done"]:
                            break
                        else:
                            progress.clear()
                            await progress.wait()
                finally:
                    sender.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await sender
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            raise _unreachable(self.node, exc) from exc
        if failure and not isinstance(failure[0], asyncio.CancelledError):
            raise failure[0]

    # -- transactions ----------------------------------------------------------------------

    async def open_tx(
        self,
        parties: Iterable[str],
        deadline: Deadline,
        finish: str = "all",
        subject: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> MsgId:
        """Open a transaction; raises like ``Client.open_tx``."""
        body = self._open_tx_content(parties, deadline, finish, subject, data)
        return (await self.publish(body)).id

    async def note(
        self, tx: str, data: Mapping[str, Any], to: Iterable[str] | None = None
    ) -> Receipt:
        """Post a ``tx/note``; raises like ``Client.note``."""
        return await self.publish(self._note_content(tx, data, to))

    async def finish(self, tx: str, data: Mapping[str, Any] | None = None) -> Receipt:
        """Post a ``tx/finish``; raises like ``Client.finish``."""
        return await self.publish(self._finish_content(tx, data))

    async def tx(self, tx_id: str) -> dict[str, Any]:
        """The node's view of a transaction; raises ``NotFound``, ``NodeUnavailable``."""
        return await self._run(self._tx_flow(tx_id))

    async def health(self) -> dict[str, Any]:
        """``/healthz``; raises ``NodeUnavailable``."""
        return _dict(await self._run(self._get_flow("/healthz")), "healthz")

    async def blocks(self, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Blocks above height ``after``, unverified."""
        return await self._run(self._blocks_flow(after, limit))

    async def checkpoint(self, pipeline: int = 0) -> str:
        """``pipeline``'s current signed checkpoint, unverified (see ``Client.checkpoint``)."""
        return await self._run(self._checkpoint_flow(pipeline))

    async def consistency(self, pipeline: int, size1: int, size2: int) -> list[bytes]:
        """A consistency proof, unverified (see ``Client.consistency``)."""
        return await self._run(self._consistency_flow(pipeline, size1, size2))

    async def block(self, height: int) -> dict[str, Any]:
        """Block ``height`` with its records, unverified; raises ``NotFound``."""
        return await self._run(self._block_flow(height))

    async def message(self, msg_id: str) -> dict[str, Any]:
        """A message and where it is; raises ``NotFound``."""
        return await self._run(self._message_flow(msg_id))

    async def head(self, author: str | None = None) -> ssb.FeedState | None:
        """The node's head of ``author``'s feed (yours by default), None when empty."""
        return await self._run(self._head_flow(author))

    async def transactions(
        self,
        *,
        party: str | None = None,
        status: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[dict[str, Any]]:
        """Transactions, newest first; pages and raises like ``Client.transactions``."""
        return await self._run(self._transactions_flow(party, status, limit, after))

    # -- inbox -----------------------------------------------------------------------------

    async def inbox(self, limit: int = 100) -> list[InboxEntry]:
        """Your unacknowledged deliveries; raises like ``Client.inbox``."""
        return await self._run(self._inbox_flow(limit))

    async def ack(self, ids: Iterable[str]) -> int:
        """Acknowledge deliveries; raises like ``Client.inbox``."""
        return await self._run(self._ack_flow(ids))

    async def inbox_iter(
        self, *, follow: bool = True, ack: bool = True, limit: int = 100
    ) -> AsyncIterator[InboxEntry]:
        """Your deliveries, oldest first; as ``Client.inbox_iter`` (``follow``: over the
        WebSocket, as they come; without: HTTP pages until none is new)."""
        _int_arg(limit, "limit", 1)
        _bool_arg(ack, "ack")
        if not _bool_arg(follow, "follow"):
            seen: set[int] = set()
            while True:
                fresh = [e for e in await self.inbox(limit) if e.delivery not in seen]
                if not fresh:
                    return
                for page_entry in fresh:
                    seen.add(page_entry.delivery)
                    yield page_entry
                    if ack:
                        await self.ack([page_entry.id])
                if not ack:
                    return
        cursor = _InboxCursor()
        while True:
            url, headers = self._inbox_stream(ack)
            try:
                async with websockets.asyncio.client.connect(
                    url,
                    additional_headers=headers,
                    max_size=_WS_MAX_SIZE,
                    open_timeout=self._timeout.connect,
                    close_timeout=_WS_CLOSE_TIMEOUT,
                ) as ws:
                    cursor.opened()
                    async for frame in ws:
                        entry, again = cursor.frame(frame, ack)
                        if again is not None:
                            await ws.send(again)
                        if entry is None:
                            continue
                        yield entry
                        if ack:
                            await ws.send(_ack_frame(entry.id))
                    return  # the node ended the stream cleanly: it is stopping
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
                failure = cursor.failure(self.node, url, exc)
                if failure is not None:
                    raise failure from exc

    async def firehose(
        self, start: int = 0, *, pipeline: int = 0, follow: bool = False
    ) -> AsyncIterator[FirehoseEntry]:
        """The firehose from ``start``; raises like ``Client.firehose``."""
        params = self._firehose_params(start, pipeline, follow)
        timeout = httpx.Timeout(None, connect=self._timeout.connect) if follow else self._timeout
        try:
            async with self._http.stream(
                "GET", "/v1/firehose", params=params, timeout=timeout
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _raise_for_problem(resp)
                lines = _LineSplitter()
                async for chunk in resp.aiter_bytes():
                    for line in lines.feed(chunk):
                        yield _firehose_entry(line)
                for line in lines.end():
                    yield _firehose_entry(line)
        except httpx.TransportError as exc:
            raise _unreachable(self.node, exc) from exc
        except httpx.DecodingError as exc:
            raise _undecodable(self.node, exc) from exc

    # -- blobs and verification ------------------------------------------------------------

    async def put_blob(self, data: BytesLike) -> BlobId:
        """Store ``data``; raises like ``Client.put_blob``."""
        return await self._run(self._put_blob_flow(data))

    async def get_blob(self, bid: str) -> bytes:
        """The bytes of blob ``bid``, hash-checked; raises like ``Client.get_blob``."""
        return await self._run(self._get_blob_flow(bid))

    async def notarise(
        self,
        document: Path | str | BytesLike,
        name: str | None = None,
        mime: str | None = None,
        tx: str | None = None,
    ) -> Receipt:
        """Upload a document and publish a ``doc`` for it; raises like ``Client.notarise``."""
        return await self._run(self._notarise_flow(document, name, mime, tx))

    async def open_channel(
        self, members: Iterable[str], *, tx: str | None = None, label: str | None = None
    ) -> MsgId:
        """Open an encrypted channel; raises like ``Client.open_channel``."""
        return await self._run(self._open_channel_flow(members, tx, label))

    async def channel_send(self, chan: str, data: Mapping[str, Any]) -> Receipt:
        """Publish an encrypted ``chan/msg``; raises like ``Client.channel_send``."""
        return await self._run(self._channel_send_flow(chan, data))

    async def channel_read(self, chan: str) -> list[channels.Opened]:
        """Decrypt the channel's history; raises like ``Client.channel_read``."""
        return await self._run(self._channel_read_flow(chan))

    async def channel_send_document(
        self,
        chan: str,
        document: Path | str | BytesLike,
        *,
        name: str | None = None,
        mime: str | None = None,
    ) -> ChannelDocument:
        """Send a private document; raises like ``Client.channel_send_document``."""
        return await self._run(self._channel_send_document_flow(chan, document, name, mime))

    async def channel_document(self, chan: str, msg_id: str) -> tuple[ChannelDocument, bytes]:
        """Fetch and check a private document; raises like ``Client.channel_document``."""
        return await self._run(self._channel_document_flow(chan, msg_id))

    async def channel_share(self, chan: str, readers: Iterable[str]) -> Receipt:
        """Share the channel's key with readers; raises like ``Client.channel_share``."""
        return await self._run(self._channel_share_flow(chan, readers))

    async def verify_message(
        self, msg_id: str, *, node_id: str | None = None, progress: Progress | None = None
    ) -> Report:
        """Verify a message; raises like ``Client.verify_message``."""
        return await self._run(self._verify_message_flow(msg_id, node_id, progress))

    async def verify_document(
        self,
        document: Path | str | BytesLike,
        msg_id: str,
        *,
        node_id: str | None = None,
        progress: Progress | None = None,
    ) -> Report:
        """Verify a notarised document; raises like ``Client.verify_document``."""
        data = await asyncio.to_thread(_document_bytes, document)
        return await self._run(self._verify_document_flow(data, msg_id, node_id, progress))

    async def verify_tx(
        self, tx_id: str, *, node_id: str | None = None, progress: Progress | None = None
    ) -> Report:
        """Verify a closed tx; raises like ``Client.verify_tx``."""
        return await self._run(self._verify_tx_flow(tx_id, node_id, progress))

    async def verify_block(
        self,
        height: int,
        *,
        node_id: str | None = None,
        bitcoin: str | None = None,
        anchor: bool = True,
        witnesses: Sequence[str] | None = None,
        threshold: int | None = None,
        progress: Progress | None = None,
    ) -> Report:
        """Verify a block; raises like ``Client.verify_block``. (The Bitcoin headers, with
        ``bitcoin``, are fetched synchronously: one short call per anchor.)"""
        with _headers(bitcoin) as headers:
            flow = self._verify_block_flow(
                height, node_id, progress, headers, anchor, witnesses, threshold
            )
            return await self._run(flow)

    async def verify_checkpoint(
        self, pipeline: int = 0, *, node_id: str | None = None, progress: Progress | None = None
    ) -> Report:
        """Verify a pipeline's current checkpoint; raises like ``Client.verify_checkpoint``."""
        return await self._run(self._verify_checkpoint_flow(pipeline, node_id, progress))


@contextlib.contextmanager
def _headers(url: str | None) -> Iterator[Headers | None]:
    """The header look-up of the Bitcoin node at ``url`` for ``block_flow``, or None."""
    url = _opt_str_arg(url, "bitcoin")
    if url is None:
        yield None
        return
    node = BitcoinNode(url)
    try:
        yield _NodeHeaders(node)
    finally:
        node.close()


class _NodeHeaders:
    """``block_flow``'s ``Headers`` of one Bitcoin node: its headers (``header_at_synced``)
    and its chain, asked once (when the first anchor is checked)."""

    def __init__(self, node: BitcoinNode) -> None:
        self._node = node
        self._chain: str | None = None

    def __call__(self, height: int, /) -> bytes:
        return self._node.header_at_synced(height)

    def chain(self) -> str:
        if self._chain is None:
            self._chain = chain_name(self._node.chain())
        return self._chain


def _as_bytes(frame: str | bytes) -> bytes:
    return frame.encode("utf-8") if isinstance(frame, str) else frame


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
