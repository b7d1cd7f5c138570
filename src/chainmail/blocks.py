"""Blocks: the node's signed commitments to closed transactions and log checkpoints (DESIGN §6).

A block is a ``block`` message in the node's own feed::

    {"type": "block", "height": 7, "prev": "%…sha256" | null, "time": 1732250001000,
     "logs": [{"pipeline": 0, "size": 120345, "root": "<base64>"}],
     "txs": {"count": 12, "root": "<base64>", "records": "&…sha256"}}

Heights start at 1: the first block has ``height: 1`` and ``prev: null``;
every next one has ``height`` = previous + 1 and ``prev`` = the previous
block's message id.

A tx record is compact JSON with sorted keys (``closed``, ``messages``,
``opened``, ``parties``, ``status``, ``tx``); its Merkle leaf data is the
SHA-256 of those bytes, so the leaf hash is ``SHA-256(0x00 ‖ SHA-256(record))``.
``txs.root`` is the RFC 9162 root over the leaves in block order and
``txs.records`` is the blob id of the NDJSON of the records (one per line,
each line ending in ``\\n``; no records is the empty blob).

Everything here is pure: no I/O, no clock. The ``verify_*`` functions take
nothing on trust from the node; each raises ``ProofError`` saying what was
expected and what was found.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import orjson

from chainmail import merkle, ssb, txs
from chainmail.errors import InvalidMessage, ProofError
from chainmail.ids import blob_id, is_blob_id, is_feed_id, is_msg_id, msg_digest

__all__ = [
    "BLOCK_TYPE",
    "FIRST_HEIGHT",
    "RECORD_KEYS",
    "RECORD_STATUSES",
    "BlockInfo",
    "EncodedRecord",
    "LogCheckpoint",
    "block_content",
    "check_record",
    "encode_record",
    "encode_records",
    "join_records",
    "message_leaf",
    "parse_block_content",
    "parse_records_blob",
    "record_bytes",
    "record_leaf",
    "record_proof",
    "records_blob",
    "txs_root",
    "verify_block",
    "verify_block_consistency",
    "verify_message_proof",
    "verify_record_proof",
    "verify_records",
    "verify_tx_record",
]

#: Content ``type`` of a block message.
BLOCK_TYPE: Final = "block"
#: Height of the first block of a node (whose ``prev`` is null).
FIRST_HEIGHT: Final = 1
#: The keys of a tx record, sorted as they are serialised.
RECORD_KEYS: Final = ("closed", "messages", "opened", "parties", "status", "tx")
#: How a transaction can close (DESIGN §1).
RECORD_STATUSES: Final = frozenset({"finished", "timed_out"})
#: Finish policies of ``tx/open`` (DESIGN §3); ``all`` when absent.
_FINISH_POLICIES: Final = frozenset({"all", "any", "opener"})
_DEFAULT_FINISH: Final = "all"

_CONTENT_KEYS: Final = frozenset({"type", "height", "prev", "time", "logs", "txs"})
_LOG_KEYS: Final = frozenset({"pipeline", "size", "root"})
_TXS_KEYS: Final = frozenset({"count", "root", "records"})
#: Channel posts that may leave ``tx`` out and still belong to their channel's tx.
_CHANNEL_POSTS: Final = frozenset({"chan/msg", "chan/share"})
#: Integers must survive a round trip through a JavaScript number (DESIGN §2).
_MAX_SAFE_INT: Final = 2**53 - 1


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class LogCheckpoint:
    """The state of one pipeline's log that a block commits to: ``(size, root)``."""

    pipeline: int
    size: int
    root: bytes


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """A verified block: its message id and its decoded content."""

    height: int
    id: str
    prev: str | None
    time: int
    logs: tuple[LogCheckpoint, ...]
    txs_count: int
    txs_root: bytes
    records_blob: str

    def log(self, pipeline: int) -> LogCheckpoint:
        """The checkpoint of ``pipeline``; raises ``ProofError`` when the block has none."""
        return _log_of(self.logs, pipeline)


@dataclass(frozen=True, slots=True)
class _Content:
    height: int
    prev: str | None
    time: int
    logs: tuple[LogCheckpoint, ...]
    txs_count: int
    txs_root: bytes
    records_blob: str


# --------------------------------------------------------------------------- small helpers


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _digest_b64(value: object, what: str) -> bytes:
    """Decode canonical base64 of a 32-byte hash; raises ``ProofError``."""
    if not isinstance(value, str):
        raise ProofError(f"{what}: expected base64 of 32 bytes, got {value!r}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProofError(f"{what}: expected base64 of 32 bytes, got {value!r}") from exc
    if len(raw) != merkle.HASH_SIZE or _b64(raw) != value:
        raise ProofError(f"{what}: expected canonical base64 of 32 bytes, got {value!r}")
    return raw


def _int(value: object, what: str, *, minimum: int = 0) -> int:
    # bool is an int in Python but not in JSON.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProofError(f"{what}: expected an integer, got {value!r}")
    if not minimum <= value <= _MAX_SAFE_INT:
        raise ProofError(f"{what}: expected an integer in [{minimum}, 2^53-1], got {value}")
    return value


def _log_of(logs: Iterable[LogCheckpoint], pipeline: int) -> LogCheckpoint:
    for entry in logs:
        if entry.pipeline == pipeline:
            return entry
    raise ProofError(f"block has no checkpoint for pipeline {pipeline}")


def _message_id(msg: Mapping[str, Any], what: str) -> str:
    try:
        return ssb.message_id(dict(msg))
    except InvalidMessage as exc:
        raise ProofError(f"{what}: {exc.detail}") from exc


def _check_signed(msg: object, what: str, hmac_key: bytes | None) -> ssb.Checked:
    """Check a signed message on its own: format, size, content shape, signature.

    Its place in its feed is not checked: a verifier rarely holds the whole feed.
    """
    if not isinstance(msg, dict):
        raise ProofError(f"{what}: expected a signed message object, got {type(msg).__name__}")
    try:
        return ssb.check(msg, hmac_key)
    except InvalidMessage as exc:
        raise ProofError(f"{what}: {exc.detail}") from exc


# --------------------------------------------------------------------------- leaves and records


def message_leaf(msg_id: str) -> bytes:
    """The log's Merkle leaf hash of a message: ``leaf_hash(digest of the id)`` (DESIGN §4).

    Raises ``ProofError`` when ``msg_id`` is not a ``%…sha256`` id.
    """
    try:
        digest = msg_digest(msg_id)
    except InvalidMessage as exc:
        raise ProofError(f"message id: {exc.detail}") from exc
    return merkle.leaf_hash(digest)


def _plain(value: object, path: str) -> object:
    """A JSON-ready copy of ``value``; only types that serialise the same everywhere."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE_INT:
            raise ProofError(f"record{path}: integer out of range: {value}")
        return value
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProofError(f"record{path}: expected string keys, got {key!r}")
            out[key] = _plain(item, f"{path}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{path}[{i}]") for i, item in enumerate(value)]
    # Floats are refused: their text differs between JSON writers.
    raise ProofError(f"record{path}: unsupported value {value!r}")


_STR_ONLY: Final = frozenset({str})


def _is_plain(value: object) -> bool:
    """``_plain`` would accept ``value`` as it is (a dict tree): the fast path, no copy."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return abs(value) <= _MAX_SAFE_INT  # type: ignore[arg-type]
    if kind is dict:
        # Scalars tested here, not by a call each: a record is six items, four
        # of them scalars, and sealing a block walks a thousand records.
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                return False
            item_kind = type(item)
            if item_kind is str:
                continue
            if item_kind is int:
                if abs(item) > _MAX_SAFE_INT:
                    return False
            elif item_kind is list and set(map(type, item)) <= _STR_ONLY:
                continue  # a record's lists are of ids
            elif not _is_plain(item):
                return False
        return True
    if kind is list or kind is tuple:
        # A record's lists are of ids: one C-level pass clears them.
        if set(map(type, value)) <= _STR_ONLY:  # type: ignore[call-overload]
            return True
        return all(_is_plain(v) for v in value)  # type: ignore[attr-defined]
    return False


_ORJSON_RECORD: Final = orjson.OPT_SORT_KEYS


def record_bytes(record: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a tx record: compact JSON, sorted keys, raw UTF-8.

    Raises ``ProofError`` for values without one canonical JSON form (floats,
    integers beyond ±(2^53−1), non-string keys, lone surrogates).
    """
    if type(record) is dict and _is_plain(record):
        # orjson writes what json.dumps below writes for such a value (compact,
        # keys sorted by code point, the same escapes, raw UTF-8), at a
        # fraction of the cost; a lone surrogate makes it raise instead.
        try:
            return orjson.dumps(record, option=_ORJSON_RECORD)
        except orjson.JSONEncodeError as exc:
            raise ProofError("record: contains a lone surrogate") from exc
    plain = _plain(record, "")
    if not isinstance(plain, dict):
        raise ProofError(f"record: expected an object, got {type(record).__name__}")
    return _json_bytes(plain)


def _json_bytes(plain: dict[str, Any]) -> bytes:
    """``record_bytes`` of a checked plain record by the standard library (the reference)."""
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ProofError("record: contains a lone surrogate") from exc


def record_leaf(record: Mapping[str, Any]) -> bytes:
    """The Merkle leaf hash of a record: ``leaf_hash(SHA-256(record_bytes(record)))``.

    Raises ``ProofError`` like ``record_bytes``.
    """
    return _leaf_of(record_bytes(record))


def _leaf_of(data: bytes) -> bytes:
    """The Merkle leaf hash of a record's canonical bytes."""
    return merkle.leaf_hash(hashlib.sha256(data).digest())


def check_record(record: object) -> dict[str, Any]:
    """Check the shape of a tx record (DESIGN §6) and return it.

    Exactly the keys of ``RECORD_KEYS``; ``tx`` a message id; ``messages`` the
    distinct ids of the tx, ``tx`` first; ``parties`` distinct feed ids;
    ``status`` one of ``RECORD_STATUSES``; ``opened`` and ``closed``
    non-negative integers. Raises ``ProofError`` otherwise.
    """
    if not isinstance(record, dict):
        raise ProofError(f"record: expected an object, got {type(record).__name__}")
    if set(record) != set(RECORD_KEYS):
        raise ProofError(f"record: expected keys {sorted(RECORD_KEYS)}, got {sorted(record)}")
    tx = record["tx"]
    if not is_msg_id(tx):
        raise ProofError(f"record tx: expected a message id, got {tx!r}")
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise ProofError(f"record {tx} messages: expected a non-empty list, got {messages!r}")
    for mid in messages:
        if not is_msg_id(mid):
            raise ProofError(f"record {tx} messages: expected message ids, got {mid!r}")
    if messages[0] != tx:
        raise ProofError(
            f"record {tx} messages: expected the tx/open {tx} first, got {messages[0]}"
        )
    if len(set(messages)) != len(messages):
        raise ProofError(f"record {tx} messages: duplicate message id")
    parties = record["parties"]
    if not isinstance(parties, list) or not parties:
        raise ProofError(f"record {tx} parties: expected a non-empty list, got {parties!r}")
    for party in parties:
        if not is_feed_id(party):
            raise ProofError(f"record {tx} parties: expected feed ids, got {party!r}")
    if len(set(parties)) != len(parties):
        raise ProofError(f"record {tx} parties: duplicate party")
    if not isinstance(record["status"], str) or record["status"] not in RECORD_STATUSES:
        raise ProofError(
            f"record {tx} status: expected one of {sorted(RECORD_STATUSES)}, "
            f"got {record['status']!r}"
        )
    _int(record["opened"], f"record {tx} opened")
    _int(record["closed"], f"record {tx} closed")
    return record


def records_blob(records: Iterable[Mapping[str, Any]]) -> bytes:
    """The NDJSON blob of ``records``: each ``record_bytes`` followed by ``\\n``.

    Raises ``ProofError`` like ``record_bytes``.
    """
    return _ndjson(records)


def _ndjson(records: Iterable[Mapping[str, Any]]) -> bytes:
    # Named apart so that verify_records' ``records_blob`` argument does not hide it.
    return b"".join(record_bytes(record) + b"\n" for record in records)


def _reject_constant(name: str) -> object:
    raise ProofError(f"{name} is not JSON")


def _reject_float(text: str) -> object:
    raise ProofError(f"non-integer number {text}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ProofError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_records_blob(data: bytes) -> list[dict[str, Any]]:
    """Parse a records blob strictly: it must be exactly ``records_blob`` of its records.

    Every line must be the canonical bytes of a well-formed record (see
    ``check_record``), each ending in ``\\n``; the empty blob holds no records.
    Raises ``ProofError`` otherwise.
    """
    if not data:
        return []
    if not data.endswith(b"\n"):
        raise ProofError("records blob: expected a newline after the last record")
    records: list[dict[str, Any]] = []
    for number, line in enumerate(data[:-1].split(b"\n"), start=1):
        try:
            value = json.loads(
                line.decode("utf-8"),
                object_pairs_hook=_no_duplicates,
                parse_constant=_reject_constant,
                parse_float=_reject_float,
            )
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProofError(f"records blob line {number}: not JSON: {exc}") from exc
        except ProofError as exc:
            raise ProofError(f"records blob line {number}: {exc.detail}") from exc
        try:
            record = check_record(value)
            canonical = record_bytes(record)
        except ProofError as exc:
            raise ProofError(f"records blob line {number}: {exc.detail}") from exc
        if canonical != line:
            raise ProofError(
                f"records blob line {number}: expected canonical JSON {canonical!r}, got {line!r}"
            )
        records.append(record)
    return records


def txs_root(records: Sequence[Mapping[str, Any]]) -> bytes:
    """The RFC 9162 root over the records' leaves in block order; raises ``ProofError``."""
    return merkle.root([record_leaf(record) for record in records])


def encode_records(records: Sequence[Mapping[str, Any]]) -> tuple[bytes, bytes]:
    """``(records_blob(records), txs_root(records))``, each record serialised once.

    Raises ``ProofError`` like ``record_bytes``.
    """
    return join_records([encode_record(record) for record in records])


def encode_record(record: Mapping[str, Any]) -> EncodedRecord:
    """A record's canonical bytes and Merkle leaf, for ``join_records``; raises like
    ``record_bytes``."""
    data = record_bytes(record)
    return EncodedRecord(data, _leaf_of(data))


class EncodedRecord(NamedTuple):
    """A record as its block holds it: ``record_bytes`` and ``record_leaf`` of it."""

    data: bytes
    leaf: bytes


def join_records(encoded: Sequence[EncodedRecord]) -> tuple[bytes, bytes]:
    """``encode_records`` of records encoded already (``encode_record``), in block order."""
    root = merkle.root([e.leaf for e in encoded])
    return b"".join([e.data + b"\n" for e in encoded]), root


def record_proof(records: Sequence[Mapping[str, Any]], index: int) -> list[bytes]:
    """The inclusion proof of ``records[index]`` under ``txs_root(records)``.

    Raises ``ProofError`` when ``index`` is out of range or a record has no
    canonical form.
    """
    return merkle.inclusion_proof([record_leaf(record) for record in records], index)


# --------------------------------------------------------------------------- block content


def block_content(
    *,
    height: int,
    prev: str | None,
    time: int,
    logs: Sequence[LogCheckpoint],
    records: Sequence[Mapping[str, Any]],
    records_blob_id: str,
    records_root: bytes | None = None,
) -> dict[str, Any]:
    """The content of a ``block`` message, keys in DESIGN §6 order.

    ``logs`` are written in pipeline order. ``records_root`` is
    ``txs_root(records)`` when the caller has it already (``encode_records``).
    The result is checked as
    ``parse_block_content`` would check it, so a block we build is a block we
    accept: raises ``ProofError`` for a bad height, prev, time, checkpoint,
    record or blob id.
    """
    content: dict[str, Any] = {
        "type": BLOCK_TYPE,
        "height": height,
        "prev": prev,
        "time": time,
        "logs": [
            {"pipeline": entry.pipeline, "size": entry.size, "root": _b64(entry.root)}
            for entry in sorted(logs, key=lambda entry: entry.pipeline)
        ],
        "txs": {
            "count": len(records),
            "root": _b64(txs_root(records) if records_root is None else records_root),
            "records": records_blob_id,
        },
    }
    parse_block_content(content)
    return content


def _parse_content(content: object) -> _Content:
    if not isinstance(content, dict):
        raise ProofError(f"block content: expected an object, got {type(content).__name__}")
    if set(content) != _CONTENT_KEYS:
        raise ProofError(
            f"block content: expected keys {sorted(_CONTENT_KEYS)}, got {sorted(content)}"
        )
    if content["type"] != BLOCK_TYPE:
        raise ProofError(f"block content: expected type {BLOCK_TYPE!r}, got {content['type']!r}")
    height = _int(content["height"], "block height", minimum=FIRST_HEIGHT)
    prev = content["prev"]
    if prev is not None and not is_msg_id(prev):
        raise ProofError(f"block prev: expected a message id or null, got {prev!r}")
    if (height == FIRST_HEIGHT) != (prev is None):
        raise ProofError(
            f"block {height}: expected prev null exactly at height {FIRST_HEIGHT}, got {prev!r}"
        )
    time = _int(content["time"], "block time")

    raw_logs = content["logs"]
    if not isinstance(raw_logs, list):
        raise ProofError(f"block logs: expected a list, got {raw_logs!r}")
    logs: list[LogCheckpoint] = []
    for raw in raw_logs:
        if not isinstance(raw, dict) or set(raw) != _LOG_KEYS:
            raise ProofError(f"block logs: expected {{pipeline, size, root}}, got {raw!r}")
        pipeline = _int(raw["pipeline"], "block log pipeline")
        if logs and pipeline <= logs[-1].pipeline:
            raise ProofError(
                f"block logs: expected pipelines in increasing order, "
                f"got {pipeline} after {logs[-1].pipeline}"
            )
        size = _int(raw["size"], f"block log {pipeline} size")
        root = _digest_b64(raw["root"], f"block log {pipeline} root")
        if size == 0 and root != merkle.EMPTY_ROOT:
            raise ProofError(
                f"block log {pipeline}: expected the empty root at size 0, got {_b64(root)}"
            )
        logs.append(LogCheckpoint(pipeline=pipeline, size=size, root=root))

    txs = content["txs"]
    if not isinstance(txs, dict) or set(txs) != _TXS_KEYS:
        raise ProofError(f"block txs: expected {{count, root, records}}, got {txs!r}")
    count = _int(txs["count"], "block txs count")
    root = _digest_b64(txs["root"], "block txs root")
    if count == 0 and root != merkle.EMPTY_ROOT:
        raise ProofError(f"block txs: expected the empty root for no records, got {_b64(root)}")
    records = txs["records"]
    if not is_blob_id(records):
        raise ProofError(f"block txs records: expected a blob id, got {records!r}")
    return _Content(
        height=height,
        prev=prev,
        time=time,
        logs=tuple(logs),
        txs_count=count,
        txs_root=root,
        records_blob=records,
    )


def parse_block_content(content: object, msg_id: str = "") -> BlockInfo:
    """Check the shape of a block's content and decode it; ``msg_id`` is copied to ``id``.

    Raises ``ProofError`` for wrong keys or types, a height below 1, ``prev``
    not null exactly at height 1, pipelines out of order, a non-canonical
    root, or a non-empty root for an empty tree.
    """
    parsed = _parse_content(content)
    return BlockInfo(
        height=parsed.height,
        id=msg_id,
        prev=parsed.prev,
        time=parsed.time,
        logs=parsed.logs,
        txs_count=parsed.txs_count,
        txs_root=parsed.txs_root,
        records_blob=parsed.records_blob,
    )


# --------------------------------------------------------------------------- verification


#: How far a block's ``time`` may be ahead of the verifier's clock (``verify_block``'s
#: ``now``): clocks a few minutes apart still agree; a block dated later is refused.
MAX_TIME_AHEAD_MS: Final = 5 * 60 * 1000


def verify_block(
    block_msg: dict[str, Any],
    node_id: str,
    *,
    previous: dict[str, Any] | None,
    hmac_key: bytes | None = None,
    now: int | None = None,
) -> BlockInfo:
    """Verify a signed block message and its link to the previous block.

    Checks: the message is valid SSB and its signature verifies; its author
    is ``node_id``; its content is a well-formed block; with ``previous``
    (the previous block's signed message, itself verified by an earlier
    call) its ``height`` is one more, ``prev`` is the previous block's id and
    its ``time`` is not before the previous block's; without it, this is the
    first block (height 1, ``prev`` null); with ``now`` (the verifier's clock,
    ms) its ``time`` is at most ``MAX_TIME_AHEAD_MS`` ahead of it. The
    block's place in the node's feed (``sequence``, ``previous``) is not
    checked. Raises ``ProofError`` on any mismatch; ``ValueError`` for an
    ``hmac_key`` that is not 32 bytes.

    The time checks hold a block's records to their block (``verify_records``:
    none closed after it): without them the node could date a block to come,
    and seal an open tx as timed out before its deadline.
    """
    checked = _check_signed(block_msg, "block message", hmac_key)
    if checked.author != node_id:
        raise ProofError(f"block message: expected author {node_id}, got {checked.author}")
    mid = checked.id
    info = parse_block_content(checked.content, mid)
    if now is not None and info.time > now + MAX_TIME_AHEAD_MS:
        raise ProofError(
            f"block {info.height}: its time {info.time} is {(info.time - now) / 1000:g} s ahead"
            f" of this clock (at most {MAX_TIME_AHEAD_MS // 1000} s)"
        )
    if previous is None:
        if info.height != FIRST_HEIGHT:
            raise ProofError(
                f"block {mid}: expected height {FIRST_HEIGHT} with no previous block, "
                f"got {info.height}"
            )
        return info
    if not isinstance(previous, dict):
        raise ProofError(f"previous block: expected a signed message, got {previous!r}")
    if previous.get("author") != node_id:
        raise ProofError(f"previous block: expected author {node_id}, got {previous.get('author')}")
    prev_id = _message_id(previous, "previous block")
    prev_info = parse_block_content(previous.get("content"), prev_id)
    if info.height != prev_info.height + 1:
        raise ProofError(f"block {mid}: expected height {prev_info.height + 1}, got {info.height}")
    if info.prev != prev_id:
        raise ProofError(f"block {info.height}: expected prev {prev_id}, got {info.prev}")
    if info.time < prev_info.time:
        raise ProofError(
            f"block {info.height}: its time {info.time} is before block {prev_info.height}'s"
            f" {prev_info.time}"
        )
    return info


def verify_records(
    block_content: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    records_blob: bytes | None = None,
) -> None:
    """Verify that ``records`` are exactly the block's tx records, in order.

    Checks each record's shape, that none closed after the block's ``time``,
    that no tx appears twice, ``txs.count``,
    ``txs.root`` and ``txs.records`` (the blob id of the records' NDJSON,
    which is deterministic, so it is checked even without the blob). With
    ``records_blob`` the blob's bytes must be that NDJSON. Raises
    ``ProofError`` on any mismatch.
    """
    info = _parse_content(block_content)
    checked = [check_record(dict(record)) for record in records]
    for record in checked:
        if record["closed"] > info.time:
            raise ProofError(
                f"block {info.height} records: {record['tx']} closed at {record['closed']},"
                f" after its block's time {info.time}"
            )
    txs = [record["tx"] for record in checked]
    if len(set(txs)) != len(txs):
        raise ProofError(f"block {info.height} records: a tx appears twice")
    if info.txs_count != len(checked):
        raise ProofError(
            f"block {info.height} txs count: the block says {info.txs_count} records,"
            f" {len(checked)} were given"
        )
    root = txs_root(checked)
    if info.txs_root != root:
        raise ProofError(
            f"block {info.height} txs root: expected {_b64(root)}, got {_b64(info.txs_root)}"
        )
    blob = _ndjson(checked)
    if records_blob is not None and records_blob != blob:
        raise ProofError(
            f"block {info.height} records blob: expected the NDJSON of the records "
            f"({blob_id(blob)}), got {blob_id(records_blob)}"
        )
    expected_id = blob_id(blob)
    if info.records_blob != expected_id:
        raise ProofError(
            f"block {info.height} txs records: expected {expected_id}, got {info.records_blob}"
        )


def verify_record_proof(
    record: Mapping[str, Any], index: int, count: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Verify that ``record`` is leaf ``index`` of the ``count`` records under ``root``.

    Raises ``ProofError`` when the record is malformed or the proof fails.
    """
    leaf = record_leaf(check_record(dict(record)))
    merkle.verify_inclusion(leaf, index, count, list(proof), root)


# The arguments mirror the fields of GET /v1/messages/{id}/proof, in order.
def verify_message_proof(
    msg_id: str,
    pipeline: int,
    index: int,
    size: int,
    proof: Sequence[bytes],
    root: bytes,
    block_content: Mapping[str, Any],
) -> None:
    """Verify that ``msg_id`` is entry ``index`` of ``pipeline``'s log as the block commits.

    ``(size, root)`` must equal the block's checkpoint of ``pipeline`` and the
    proof must place the message's leaf under that root. Raises
    ``ProofError`` on any mismatch.
    """
    info = _parse_content(block_content)
    checkpoint = _log_of(info.logs, pipeline)
    if size != checkpoint.size:
        raise ProofError(
            f"block {info.height} pipeline {pipeline}: expected size {checkpoint.size}, got {size}"
        )
    if root != checkpoint.root:
        raise ProofError(
            f"block {info.height} pipeline {pipeline}: expected root {_b64(checkpoint.root)}, "
            f"got {_b64(root)}"
        )
    merkle.verify_inclusion(message_leaf(msg_id), index, size, list(proof), root)


def verify_block_consistency(
    older_content: Mapping[str, Any],
    newer_content: Mapping[str, Any],
    proofs: Mapping[int, Sequence[bytes]],
) -> None:
    """Verify that every pipeline's log in ``newer_content`` extends the one in ``older_content``.

    The blocks need not be consecutive, but ``newer_content`` must be higher.
    Every pipeline of the older block must appear in the newer one with a
    size no smaller. For equal sizes the roots must be equal; from size 0
    any tree extends; otherwise ``proofs[pipeline]`` must be an RFC 9162
    consistency proof between the two roots. Raises ``ProofError`` on any
    mismatch or missing proof.
    """
    older, newer = _parse_content(older_content), _parse_content(newer_content)
    if newer.height <= older.height:
        raise ProofError(
            f"block consistency: expected a block above {older.height}, got {newer.height}"
        )
    for old in older.logs:
        where = f"blocks {older.height}→{newer.height} pipeline {old.pipeline}"
        try:
            new = _log_of(newer.logs, old.pipeline)
        except ProofError as exc:
            raise ProofError(f"{where}: missing from the newer block") from exc
        if new.size < old.size:
            raise ProofError(f"{where}: expected size at least {old.size}, got {new.size}")
        if new.size == old.size:
            if new.root != old.root:
                raise ProofError(
                    f"{where}: expected root {_b64(old.root)} at size {old.size}, "
                    f"got {_b64(new.root)}"
                )
            continue
        if old.size == 0:
            continue  # every tree extends the empty one; RFC 9162 has no proof for it
        if old.pipeline not in proofs:
            raise ProofError(f"{where}: no consistency proof {old.size}→{new.size}")
        try:
            merkle.verify_consistency(
                old.size, new.size, list(proofs[old.pipeline]), old.root, new.root
            )
        except ProofError as exc:
            raise ProofError(f"{where}: {exc.detail}") from exc


def _belongs(content: Mapping[str, Any], tx: str, tx_channels: set[str]) -> bool:
    named = content.get("tx")
    if named is not None:
        return bool(named == tx)
    # A channel post without ``tx`` belongs to its channel's tx (chainmail.txs).
    chan = content.get("chan")
    return content.get("type") in _CHANNEL_POSTS and isinstance(chan, str) and chan in tx_channels


def verify_tx_record(
    record: Mapping[str, Any],
    messages: Mapping[str, Mapping[str, Any]],
    *,
    hmac_key: bytes | None = None,
) -> None:
    """Verify a tx record against the signed messages it lists.

    ``messages`` maps ids to signed messages; entries the record does not
    list are ignored. Checks that:

    - every listed message is given, valid SSB, signed, and has its listed id;
    - the first is the ``tx/open`` whose id is ``record["tx"]`` and whose
      parties are the record's parties (as a set: order is not checked);
    - every other one carries ``"tx": record["tx"]``, or is a ``chan/msg`` or
      ``chan/share`` without ``tx`` in a channel whose ``chan/open`` is
      earlier in the record;
    - every author is a party, and each author's messages are in feed order;
    - ``finished``: the ``tx/finish`` messages meet the finish policy, the
      last one listed is the one that met it (the node takes nothing for a
      closed tx), and the tx closed no later than its deadline (inclusive);
    - ``timed_out``: the finishes never meet the policy, and the tx closed
      after its deadline;
    - it did not close before it opened.

    Raises ``ProofError`` on any mismatch; ``ValueError`` for an ``hmac_key``
    that is not 32 bytes.
    """
    rec = check_record(dict(record))
    tx: str = rec["tx"]
    parties: list[str] = rec["parties"]
    last_sequence: dict[str, int] = {}
    finishers: set[str] = set()
    tx_channels: set[str] = set()
    opener = ""
    policy = _DEFAULT_FINISH
    deadline = 0
    #: Where the finish policy was first met: the tx closed there.
    met_at: int | None = None
    for position, mid in enumerate(rec["messages"]):
        if mid not in messages:
            raise ProofError(f"record {tx}: message {mid} not given")
        checked = _check_signed(messages[mid], f"message {mid}", hmac_key)
        if checked.id != mid:
            raise ProofError(f"record {tx}: expected message id {mid}, got {checked.id}")
        author = checked.author
        if not isinstance(checked.content, dict):
            raise ProofError(f"message {mid}: expected public content, got an encrypted box")
        content = checked.content
        kind = content.get("type")
        if position == 0:
            if kind != "tx/open":
                raise ProofError(f"record {tx}: expected a tx/open first, got {kind!r}")
            opened_parties = content.get("parties")
            if (
                not isinstance(opened_parties, list)
                or not all(isinstance(party, str) for party in opened_parties)
                or set(opened_parties) != set(parties)
            ):
                raise ProofError(
                    f"record {tx}: expected the tx/open's parties {opened_parties!r}, "
                    f"got {parties!r}"
                )
            policy = content.get("finish", _DEFAULT_FINISH)
            if not isinstance(policy, str) or policy not in _FINISH_POLICIES:
                raise ProofError(f"record {tx}: tx/open has an unknown finish policy {policy!r}")
            deadline = _int(content.get("deadline"), f"record {tx} deadline")
            opener = author
        elif not _belongs(content, tx, tx_channels):
            raise ProofError(
                f"record {tx}: expected message {mid} to carry tx {tx}, got {content.get('tx')!r}"
            )
        if author not in parties:
            raise ProofError(f"record {tx}: message {mid} is by {author}, not a party")
        sequence = checked.sequence
        if sequence <= last_sequence.get(author, 0):
            raise ProofError(
                f"record {tx}: expected {author}'s messages in feed order, "
                f"got sequence {sequence} after {last_sequence[author]}"
            )
        last_sequence[author] = sequence
        if met_at is not None:
            # The node closes a tx the moment its policy is met, and takes
            # nothing for it after that: no message can follow the closing one.
            raise ProofError(
                f"record {tx}: message {mid} comes after the tx/finish that closed it"
                f" (message {met_at + 1})"
            )
        if kind == "tx/finish":
            finishers.add(author)
            if txs.finish_met(policy, opener, parties, finishers):
                met_at = position
        elif kind == "chan/open":
            tx_channels.add(mid)
    closed: int = rec["closed"]
    if rec["opened"] > closed:
        raise ProofError(f"record {tx}: closed at {closed}, before it opened at {rec['opened']}")
    if rec["status"] == "timed_out" and met_at is not None:
        raise ProofError(
            f"record {tx}: its tx/finish messages meet policy {policy!r}, so it finished;"
            " it cannot have timed out"
        )
    if rec["status"] == "finished":
        if not txs.finish_met(policy, opener, parties, finishers):
            raise ProofError(
                f"record {tx}: expected tx/finish messages meeting policy {policy!r} "
                f"for status finished, got finishes from {sorted(finishers)}"
            )
        if closed > deadline:
            raise ProofError(
                f"record {tx}: expected a finished tx to close by its deadline {deadline}, "
                f"got {closed}"
            )
    elif closed <= deadline:
        raise ProofError(
            f"record {tx}: expected a timed_out tx to close after its deadline {deadline}, "
            f"got {closed}"
        )
