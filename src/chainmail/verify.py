"""Local verification of a node's answers: trust nothing it says, recompute everything.

Each check runs here, on the client, from signed data and Merkle proofs; the
node is only a source of bytes. A verification is a *flow*: a generator that
yields the ``Request`` it needs next and receives the ``httpx.Response``,
so the same logic drives the sync ``Client`` and the ``AsyncClient`` (in the
manner of ``httpx.Auth.auth_flow``). The driver throws the mapped
``chainmail.errors`` exception into the flow when the node answers with a
problem document.

Every flow returns a ``Report``: the list of ``Check(check, ok, detail)`` it
made, in order. On the first check that fails it raises ``VerificationFailed``
(a ``ProofError``) whose ``report`` ends with the failed check.

What is checked, and against what (DESIGN §4, §6):

- node identity — ``/healthz`` names the node's feed id, its log origin and
  its C2SP verifier key; the key must be the feed id's key. Pin the node id
  to make this more than trust on first use.
- message — its id recomputed from the signed message, its signature, its
  inclusion under the checkpoint of the block that covers it, that block's
  signature, ``prev`` link and records, and the current signed checkpoint's
  consistency with the block's.
- tx — the tx's block as above, the tx record's inclusion under ``txs.root``,
  every message of the record (id, signature, inclusion in the log) and the
  record against the messages (``blocks.verify_tx_record``).
- block — signature, ``prev`` link to block h−1, the records blob and root,
  the consistency of every pipeline's log between blocks h−1 and h, the
  current signed checkpoint's consistency with block h, and its Bitcoin
  anchor (``chainmail.anchors``): the first anchored block at h or above,
  linked down to h by ``prev``, its ``.ots`` proof replayed from the block
  id through the anchor's transaction, and — given a Bitcoin node of one's
  own — the Merkle root it reaches in that Bitcoin block's header.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, NoReturn, Protocol, TypeVar
from urllib.parse import quote

import httpx
import orjson

from chainmail import anchors, blocks, checkpoint, merkle, ssb, txs
from chainmail.errors import InvalidMessage, NotFound, ProofError
from chainmail.ids import blob_digest, blob_id, feed_public_key, is_blob_id
from chainmail.log import pipeline_of
from chainmail.witnesses import STAGES, check_stage

__all__ = [
    "Check",
    "Flow",
    "NodeInfo",
    "Progress",
    "Report",
    "Request",
    "VerificationFailed",
    "block_flow",
    "checkpoint_flow",
    "document_flow",
    "message_flow",
    "node_info",
    "path_id",
    "proof_hashes",
    "tx_flow",
]

T = TypeVar("T")

#: Shown in a check's detail instead of a whole id.
_SHORT_ID: Final = 12


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request a flow asks its driver to send, relative to the node's URL.

    ``path`` is already percent-encoded (see ``path_id``). ``signed`` asks for
    an RFC 9421 signature by the client's identity (inbox requests).
    """

    method: str
    path: str
    params: Mapping[str, str | int] | None = None
    content: bytes | None = None
    content_type: str | None = None
    signed: bool = False


#: A generator that yields requests, receives their responses and returns a ``T``.
Flow = Generator[Request, httpx.Response, T]
#: Called with a short status text while a flow runs (for progress displays).
Progress = Callable[[str], None]


def path_id(value: str) -> str:
    """An id percent-encoded for a URL path (DESIGN §8: ``%``, ``/``, ``+``, ``=``)."""
    return quote(value, safe="@.&")


class Check(NamedTuple):
    """One check of a verification: its name, whether it held, and what was seen."""

    check: str
    ok: bool
    detail: str


@dataclass(slots=True)
class Report:
    """Every check a verification made, in order; ``ok`` when all of them held."""

    subject: str
    checks: list[Check] = field(default_factory=list)
    #: The node id the verification held the node's signatures to (pinned, or as
    #: ``/healthz`` named it), once its node identity check passed.
    node_id: str | None = None

    @property
    def ok(self) -> bool:
        """True when every check held (a report that raised ends with a failed one)."""
        return all(c.ok for c in self.checks)

    def __iter__(self) -> Iterator[Check]:
        return iter(self.checks)

    def __len__(self) -> int:
        return len(self.checks)


class VerificationFailed(ProofError):
    """A verification found the node's answer wrong; ``report`` holds the checks so far."""

    def __init__(self, detail: str, report: Report) -> None:
        super().__init__(detail)
        self.report = report


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """The node's identity as verified: feed id, log origin, checkpoint key, pipelines."""

    id: str
    origin: str
    verifier: checkpoint.Verifier
    pipelines: int
    #: The witnesses that co-sign its blocks, and how many must sign a stage.
    witnesses: tuple[str, ...] = ()
    threshold: int = 0


# --------------------------------------------------------------------------- helpers


def _short(value: str) -> str:
    return value if len(value) <= _SHORT_ID + 8 else value[: _SHORT_ID + 1] + "…"


def _json_of(resp: httpx.Response, what: str) -> Any:
    try:
        return orjson.loads(resp.content)
    except orjson.JSONDecodeError as exc:
        raise ProofError(f"{what}: the node's answer is not JSON: {exc}") from exc


def _get(path: str, what: str, params: Mapping[str, str | int] | None = None) -> Flow[Any]:
    resp = yield Request("GET", path, params)
    return _json_of(resp, what)


def _obj(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProofError(f"{what}: expected an object, got {type(value).__name__}")
    return value


def _field(obj: Mapping[str, Any], key: str, kind: type[T], what: str) -> T:
    value = obj.get(key)
    # bool is an int in Python but not in JSON.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProofError(f"{what}: expected {key!r} to be {kind.__name__}, got {value!r}")
    return value


def _hash(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ProofError(f"{what}: expected base64 of a hash, got {value!r}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProofError(f"{what}: not base64: {value!r}") from exc
    if len(raw) != merkle.HASH_SIZE:
        raise ProofError(f"{what}: expected {merkle.HASH_SIZE} bytes, got {len(raw)}")
    return raw


def proof_hashes(value: object, what: str) -> list[bytes]:
    """``value`` (a JSON list of base64 hashes) as bytes; raises ``ProofError`` otherwise."""
    if not isinstance(value, list):
        raise ProofError(f"{what}: expected a list of base64 hashes, got {value!r}")
    return [_hash(item, f"{what}[{i}]") for i, item in enumerate(value)]


class _Checks:
    """Collects checks into a report and stops at the first that fails."""

    def __init__(self, subject: str, progress: Progress | None) -> None:
        self.report = Report(subject)
        self._progress = progress

    def status(self, text: str) -> None:
        if self._progress is not None:
            self._progress(text)

    def passed(self, name: str, detail: str) -> None:
        self.report.checks.append(Check(name, True, detail))

    def fail(self, name: str, detail: str) -> NoReturn:
        self.report.checks.append(Check(name, False, detail))
        raise VerificationFailed(f"{name}: {detail}", self.report)

    def run(self, name: str, step: Callable[[], str]) -> None:
        """Run ``step`` (which returns the detail of success) as check ``name``."""
        try:
            detail = step()
        except (ProofError, InvalidMessage) as exc:
            self.fail(name, exc.detail)
        self.passed(name, detail)


# --------------------------------------------------------------------------- node identity


def node_info(
    health: Mapping[str, Any],
    node_id: str | None,
    *,
    witnesses: Sequence[str] | None = None,
    threshold: int | None = None,
) -> NodeInfo:
    """The node as ``/healthz`` describes it, its checkpoint key bound to its feed id.

    With ``node_id`` (pinned) the health must name that node; with
    ``witnesses`` (pinned, in any order) it must name exactly those, and with
    ``threshold`` that threshold. Raises ``ProofError`` when a field is
    missing or differs from a pin, or the checkpoint key is not the node's own
    key or not named after its log origin.
    """
    reported = _field(health, "id", str, "healthz")
    origin = _field(health, "origin", str, "healthz")
    vkey = _field(health, "verifier_key", str, "healthz")
    pipelines = _field(health, "pipelines", int, "healthz")
    if pipelines < 1:
        raise ProofError(f"healthz: pipelines: expected 1 or more, got {pipelines}")
    if node_id is not None and reported != node_id:
        raise ProofError(f"expected node {node_id} (pinned), got {reported}")
    try:
        public = feed_public_key(reported)
    except InvalidMessage as exc:
        raise ProofError(f"node id: {exc.detail}") from exc
    verifier = checkpoint.Verifier.parse(vkey)
    if verifier.public != public:
        raise ProofError(f"checkpoint key {vkey} is not the key of node {reported}")
    if verifier.name != origin:
        raise ProofError(f"checkpoint key name: expected origin {origin}, got {verifier.name}")
    listed = health.get("witnesses") or []
    got = health.get("threshold") or 0
    if not isinstance(listed, list) or not all(isinstance(w, str) for w in listed):
        raise ProofError(f"healthz witnesses: expected a list of feed ids, got {listed!r}")
    if type(got) is not int or (listed and not 1 <= got <= len(listed)):
        raise ProofError(f"healthz threshold: expected 1 to {len(listed)}, got {got!r}")
    if witnesses is not None and sorted(set(witnesses)) != sorted(set(listed)):
        raise ProofError(
            f"expected witnesses {sorted(set(witnesses))} (pinned), got {sorted(set(listed))}"
        )
    if threshold is not None and got != threshold:
        raise ProofError(f"expected threshold {threshold} (pinned), got {got}")
    return NodeInfo(reported, origin, verifier, pipelines, tuple(listed), got)


def _node_info_flow(
    checks: _Checks,
    node_id: str | None,
    *,
    witnesses: Sequence[str] | None = None,
    threshold: int | None = None,
) -> Flow[NodeInfo]:
    """Fetch ``/healthz`` and bind its checkpoint key to the node id (pinned or reported),
    its witnesses and threshold held to the pins given."""
    health = _obj((yield from _get("/healthz", "healthz")), "healthz")
    info: list[NodeInfo] = []

    def step() -> str:
        found = node_info(health, node_id, witnesses=witnesses, threshold=threshold)
        info.append(found)
        how = "pinned" if node_id is not None else "as /healthz reports it: pin it to be sure"
        said = f"{found.id} ({how}); checkpoint key {found.verifier.key_id.hex()}"
        if found.witnesses:
            # Each pin said apart: one given alone leaves the other to /healthz's word.
            listed = "pinned" if witnesses is not None else "as /healthz reports them"
            needed = "pinned" if threshold is not None else "as /healthz reports it"
            said += (
                f"; {len(found.witnesses)} witness(es) ({listed}),"
                f" threshold {found.threshold} ({needed})"
            )
        return said

    checks.run("node identity", step)
    checks.report.node_id = info[0].id
    return info[0]


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True, slots=True)
class _Block:
    info: blocks.BlockInfo
    message: dict[str, Any]
    records: list[dict[str, Any]]
    #: ``stages`` of the node's answer as it came ([] if none): ``_stages_flow`` checks it.
    stages: object
    #: ``anchored`` of the node's answer as it came (None if none): ``_anchor_flow`` checks it.
    anchored: object = None

    @property
    def content(self) -> dict[str, Any]:
        content: dict[str, Any] = self.message["content"]
        return content


#: A block as the node serves it: its message, records and (unchecked) stages and anchors.
_Fetched = tuple[dict[str, Any], list[dict[str, Any]], object, object]


@dataclass
class _BlockCache:
    """The blocks one verification has checked, and those it has fetched: block h's
    ``prev`` link needs block h−1's message, which is then checked in turn."""

    checked: dict[int, _Block] = field(default_factory=dict)
    fetched: dict[int, _Fetched] = field(default_factory=dict)
    #: The verifier's clock (ms) a block's time may not be far ahead of; None: unchecked.
    now: int | None = None
    #: The network's HMAC key (DESIGN §2) the node's own messages are signed under.
    hmac_key: bytes | None = None


def _fetch_block(height: int, cache: _BlockCache) -> Flow[_Fetched]:
    """Block ``height`` as the node serves it (once per ``cache``)."""
    if height in cache.fetched:
        return cache.fetched[height]
    fetched = yield from _fetch_block_once(height)
    cache.fetched[height] = fetched
    return fetched


def _fetch_block_once(height: int) -> Flow[_Fetched]:
    what = f"block {height}"
    body = _obj((yield from _get(f"/v1/blocks/{height}", what)), what)
    message = _obj(body.get("message"), f"{what} message")
    records = _field(body, "records", list, what)
    return (
        message,
        [_obj(r, f"{what} record") for r in records],
        body.get("stages", []),
        body.get("anchored"),
    )


def _block_flow(checks: _Checks, node: NodeInfo, height: int, cache: _BlockCache) -> Flow[_Block]:
    """Block ``height`` with its signature, prev link and records checked (memoised)."""
    if height in cache.checked:
        return cache.checked[height]
    checks.status(f"fetching block {height}")
    message, records, stages, anchored = yield from _fetch_block(height, cache)
    previous: dict[str, Any] | None = None
    if height > blocks.FIRST_HEIGHT:
        previous, _, _, _ = yield from _fetch_block(height - 1, cache)

    def signature() -> str:
        checked = ssb.check(message, cache.hmac_key)
        if checked.author != node.id:
            raise ProofError(f"expected author {node.id}, got {checked.author}")
        return f"{_short(checked.id)} signed by the node"

    checks.run(f"block {height} signature", signature)
    verified: list[blocks.BlockInfo] = []

    def link() -> str:
        info = blocks.verify_block(
            message, node.id, previous=previous, now=cache.now, hmac_key=cache.hmac_key
        )
        if info.height != height:
            raise ProofError(f"expected height {height}, got {info.height}")
        verified.append(info)
        if info.prev is None:
            return "first block (prev null)"
        return f"prev {_short(info.prev)} is block {height - 1}"

    checks.run(f"block {height} chain", link)

    def records_step() -> str:
        blocks.verify_records(message["content"], records)
        return f"{len(records)} tx record(s) match txs.root and txs.records"

    checks.run(f"block {height} records", records_step)
    block = _Block(verified[0], message, records, stages, anchored)
    cache.checked[height] = block
    return block


def _consistency_proof_flow(pipeline: int, size1: int, size2: int) -> Flow[list[bytes]]:
    """The node's consistency proof of log ``pipeline`` from ``size1`` to ``size2``."""
    answer = _obj(
        (
            yield from _get(
                f"/v1/log/{pipeline}/consistency",
                "consistency proof",
                {"from": size1, "to": size2},
            )
        ),
        "consistency proof",
    )
    return proof_hashes(answer.get("proof"), "consistency proof")


def _extends(size1: int, root1: bytes, size2: int, root2: bytes, proof: Sequence[bytes]) -> None:
    """Raise ``ProofError`` unless the log at ``size2`` (no smaller) is the one at ``size1``
    extended: the same root at the same size, else ``proof`` (none needed from 0)."""
    if size1 == size2:
        if root1 != root2:
            raise ProofError(f"same size {size1} but a different root")
    elif size1 > 0:
        merkle.verify_consistency(size1, size2, proof, root1, root2)


def _checkpoint_flow(
    checks: _Checks, node: NodeInfo, pipeline: int, since: blocks.LogCheckpoint | None
) -> Flow[checkpoint.Checkpoint]:
    """Verify pipeline's current signed checkpoint, consistent with ``since`` when given."""
    checks.status(f"fetching the checkpoint of pipeline {pipeline}")
    resp = yield Request("GET", f"/v1/log/{pipeline}/checkpoint")
    found: list[checkpoint.Checkpoint] = []

    def signed() -> str:
        cp = checkpoint.verify_checkpoint(
            resp.content, node.verifier, origin=f"{node.origin}/{pipeline}"
        )
        found.append(cp)
        return f"{cp.origin} size {cp.size}, signed by the node's checkpoint key"

    checks.run(f"checkpoint {pipeline} signature", signed)
    current = found[0]
    if since is None:
        return current
    proof: list[bytes] = []
    if 0 < since.size < current.size:
        proof = yield from _consistency_proof_flow(pipeline, since.size, current.size)

    def consistent() -> str:
        if current.size < since.size:
            raise ProofError(
                f"expected the log to have at least the block's {since.size} entries, "
                f"got a checkpoint of size {current.size}"
            )
        _extends(since.size, since.root, current.size, current.root, proof)
        return f"log {pipeline} at {current.size} extends the block's log at {since.size}"

    checks.run(f"checkpoint {pipeline} consistency", consistent)
    return current


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class _Included:
    block: _Block
    pipeline: int
    index: int


def _inclusion_flow(
    checks: _Checks,
    node: NodeInfo,
    msg_id: str,
    name: str,
    cache: _BlockCache,
    author: object,
) -> Flow[_Included]:
    """Fetch the message's proof, verify its block, then the inclusion under it.

    The message (by ``author``) must be in its author's pipeline, ``hash(author)
    mod P`` (DESIGN §1): a feed split over pipelines has no one order.
    """
    what = f"proof of {msg_id}"
    body = _obj((yield from _get(f"/v1/messages/{path_id(msg_id)}/proof", what)), what)
    ref = _obj(body.get("block"), f"{what} block")
    height = _field(ref, "height", int, f"{what} block")
    block = yield from _block_flow(checks, node, height, cache)
    pipeline = _field(body, "pipeline", int, what)

    def step() -> str:
        if body.get("id") != msg_id:
            raise ProofError(f"expected a proof of {msg_id}, got one of {body.get('id')!r}")
        if ref.get("id") != block.info.id:
            raise ProofError(
                f"proof names block {ref.get('id')!r}, block {height} is {block.info.id}"
            )
        index = _field(body, "index", int, what)
        size = _field(body, "size", int, what)
        if not isinstance(author, str):
            raise ProofError(f"message {msg_id} names no author")
        home = pipeline_of(author, node.pipelines)
        if pipeline != home:
            raise ProofError(
                f"it is in log {pipeline}, but {_short(author)}'s messages go to log {home}"
                f" of the node's {node.pipelines}"
            )
        blocks.verify_message_proof(
            msg_id,
            pipeline,
            index,
            size,
            proof_hashes(body.get("proof"), f"{what} hashes"),
            _hash(body.get("root"), f"{what} root"),
            block.content,
        )
        return (
            f"entry {index} of log {pipeline} (size {size}) under block {height},"
            f" sealed {_when(block.info.time)}: it existed then"
        )

    checks.run(name, step)
    return _Included(block, pipeline, _field(body, "index", int, what))


def _covered_by_flow(checks: _Checks, included: _Included, block: _Block, name: str) -> Flow[None]:
    """The log a message was proven under is the start of the tx's block's log.

    A message's proof is under the first block that covers it; the tx's own
    block, which seals it, must cover it too (its messages were logged before
    it closed). Without this, a proof under any block the node signed, even
    one over another log, would pass.
    """
    earlier, sealing = included.block.info, block.info
    pipeline = included.pipeline
    older, newer = earlier.log(pipeline), sealing.log(pipeline)
    proof: list[bytes] = []
    if earlier.height < sealing.height and 0 < older.size < newer.size:
        proof = yield from _consistency_proof_flow(pipeline, older.size, newer.size)

    def step() -> str:
        if earlier.height > sealing.height:
            raise ProofError(
                f"its proof is under block {earlier.height}, after block {sealing.height}"
                " that seals the tx: the sealing block must cover its messages"
            )
        if older.size > newer.size:
            raise ProofError(
                f"block {earlier.height}'s log {pipeline} has {older.size} entries, more than"
                f" block {sealing.height}'s {newer.size}"
            )
        _extends(older.size, older.root, newer.size, newer.root, proof)
        return (
            f"block {earlier.height}'s log {pipeline} at {older.size} is the start of block"
            f" {sealing.height}'s at {newer.size}"
        )

    checks.run(name, step)


def _signed_message_flow(
    checks: _Checks, msg_id: str, name: str, hmac_key: bytes | None
) -> Flow[dict[str, Any]]:
    """Fetch a message; check its signature and that it hashes to ``msg_id``."""
    what = f"message {msg_id}"
    body = _obj((yield from _get(f"/v1/messages/{path_id(msg_id)}", what)), what)
    message = _obj(body.get("message"), what)

    def step() -> str:
        checked = ssb.check(message, hmac_key)
        if checked.id != msg_id:
            raise ProofError(f"the signed message hashes to {checked.id}, not {msg_id}")
        kind = checked.content.get("type") if isinstance(checked.content, dict) else "box"
        return (
            f"{kind} by {_short(checked.author)} seq {checked.sequence}, dated"
            f" {_when(checked.timestamp)} by its author: id and signature"
        )

    checks.run(name, step)
    return message


def message_flow(
    msg_id: str,
    *,
    node_id: str | None = None,
    hmac_key: bytes | None = None,
    progress: Progress | None = None,
    now: int | None = None,
) -> Flow[Report]:
    """Verify message ``msg_id``: id, signature, inclusion, its block, the current checkpoint.

    Raises ``VerificationFailed`` (a ``ProofError``) when a check fails, and
    the node's errors as they come (``NotFound`` until a block covers the
    message).
    """
    checks = _Checks(f"message {msg_id}", progress)
    node = yield from _node_info_flow(checks, node_id)
    message = yield from _signed_message_flow(checks, msg_id, "message", hmac_key)
    yield from _included_flow(checks, node, msg_id, message, now, hmac_key)
    return checks.report


def _included_flow(
    checks: _Checks,
    node: NodeInfo,
    msg_id: str,
    message: dict[str, Any],
    now: int | None,
    hmac_key: bytes | None,
) -> Flow[None]:
    """A checked message's inclusion under its block, and the log's current checkpoint."""
    included = yield from _inclusion_flow(
        checks,
        node,
        msg_id,
        "log inclusion",
        _BlockCache(now=now, hmac_key=hmac_key),
        message.get("author"),
    )
    since = included.block.info.log(included.pipeline)
    yield from _checkpoint_flow(checks, node, included.pipeline, since)


def document_flow(
    msg_id: str,
    document: bytes,
    *,
    node_id: str | None = None,
    hmac_key: bytes | None = None,
    progress: Progress | None = None,
    now: int | None = None,
) -> Flow[Report]:
    """Verify that the ``doc`` message ``msg_id`` notarised ``document`` (its bytes).

    ``message_flow``'s checks, and between them: the signed content is a
    ``doc`` whose ``blob`` is SHA-256(``document``) and whose ``size`` is its
    length. The bytes are the caller's own: the node's copy is not asked for.
    Raises like ``message_flow``.
    """
    checks = _Checks(f"document {msg_id}", progress)
    node = yield from _node_info_flow(checks, node_id)
    message = yield from _signed_message_flow(checks, msg_id, "doc message", hmac_key)

    def same() -> str:
        content = message.get("content")
        if not isinstance(content, dict) or content.get("type") != "doc":
            kind = content.get("type") if isinstance(content, dict) else "box"
            raise ProofError(f"message {msg_id} is a {kind!r} message, not a doc")
        digest = hashlib.sha256(document).digest()
        named = content.get("blob")
        try:
            notarised = blob_digest(named) if isinstance(named, str) else None
        except InvalidMessage:
            notarised = None
        if notarised != digest:
            raise ProofError(
                f"the document hashes to {blob_id(document)},"
                f" the doc message names {_printable_name(repr(named))}"
            )
        size = content.get("size")
        if type(size) is not int or size != len(document):
            raise ProofError(
                f"the document is {len(document)} bytes,"
                f" the doc message says {_printable_name(repr(content.get('size')))}"
            )
        name = content.get("name")
        called = f" ({_printable_name(name)})" if isinstance(name, str) else ""
        return f"{len(document)} bytes hashing to {_short(blob_id(document))}{called}, as signed"

    checks.run("document", same)
    yield from _included_flow(checks, node, msg_id, message, now, hmac_key)
    return checks.report


def _when(ms: float) -> str:
    """A signed time (Unix ms) as ISO 8601 UTC, or as it is when out of range."""
    try:
        moment = datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _printable_name(name: str) -> str:
    """A document name for a check's detail: no control characters, at most 60 of them."""
    shown = "".join(c if c.isprintable() else "?" for c in name)
    return shown if len(shown) <= 60 else shown[:59] + "…"


# --------------------------------------------------------------------------- transactions


def tx_flow(
    tx_id: str,
    *,
    node_id: str | None = None,
    hmac_key: bytes | None = None,
    progress: Progress | None = None,
    now: int | None = None,
) -> Flow[Report]:
    """Verify a closed tx: its block, its record's inclusion, every message, the record itself.

    Raises ``VerificationFailed`` (a ``ProofError``) when a check fails,
    ``NotFound`` for a tx no block holds yet (open, or closed and waiting for
    the next block: nothing to verify yet, as for a message no block covers),
    and the node's errors as they come (``NotFound`` for an unknown tx).
    """
    checks = _Checks(f"tx {tx_id}", progress)
    node = yield from _node_info_flow(checks, node_id)
    summary = _obj((yield from _get(f"/v1/transactions/{path_id(tx_id)}", "tx")), "tx")
    height = summary.get("block")
    if not isinstance(height, int) or isinstance(height, bool):
        raise NotFound(
            f"tx {tx_id} is {summary.get('status')!r} and in no block yet: nothing to verify"
            " until a block seals it"
        )
    checks.passed("tx sealed", f"{summary.get('status')} in block {height}, as the node says")
    cache = _BlockCache(now=now, hmac_key=hmac_key)
    block = yield from _block_flow(checks, node, height, cache)

    what = f"record proof of {tx_id}"
    rp = _obj((yield from _get(f"/v1/blocks/{height}/records/{path_id(tx_id)}/proof", what)), what)
    record = _obj(rp.get("record"), what)

    def record_step() -> str:
        if record.get("tx") != tx_id:
            raise ProofError(f"expected the record of {tx_id}, got {record.get('tx')!r}")
        index = _field(rp, "index", int, what)
        count = _field(rp, "count", int, what)
        if count != block.info.txs_count:
            raise ProofError(f"expected {block.info.txs_count} records, got count {count}")
        blocks.verify_record_proof(
            record,
            index,
            count,
            proof_hashes(rp.get("proof"), f"{what} hashes"),
            block.info.txs_root,
        )
        return f"record {index} of {count} under block {height}'s txs.root"

    checks.run("record inclusion", record_step)

    def summary_step() -> str:
        for key in ("status", "parties", "messages", "opened", "closed"):
            if summary.get(key) != record.get(key):
                raise ProofError(
                    f"the node's tx says {key} {summary.get(key)!r}, its sealed record "
                    f"{record.get(key)!r}"
                )
        return f"{record['status']}, {len(record['parties'])} parties"

    checks.run("tx summary", summary_step)

    ids = _field(record, "messages", list, what)
    messages: dict[str, dict[str, Any]] = {}
    pipelines: set[int] = set()
    last_index: dict[int, int] = {}
    for n, mid in enumerate(ids, start=1):
        if not isinstance(mid, str):
            checks.fail("tx record", f"message ids must be strings, got {mid!r}")
        checks.status(f"message {n}/{len(ids)}")
        label = f"message {n}/{len(ids)}"
        messages[mid] = yield from _signed_message_flow(checks, mid, label, hmac_key)
        included = yield from _inclusion_flow(
            checks, node, mid, f"{label} inclusion", cache, messages[mid].get("author")
        )
        if included.block.info.height != block.info.height:
            yield from _covered_by_flow(checks, included, block, f"{label} in the tx's block")
        pipelines.add(included.pipeline)
        before = last_index.get(included.pipeline)
        if before is not None and included.index <= before:
            # Record messages are in log order (DESIGN §6); one pipeline's indexes show it.
            checks.fail(
                "tx record",
                f"message {n} is entry {included.index} of log {included.pipeline}, listed"
                f" after entry {before}: not in log order",
            )
        last_index[included.pipeline] = included.index

    def tx_record_step() -> str:
        blocks.verify_tx_record(record, messages, hmac_key=hmac_key)
        return f"{len(messages)} signed messages meet the tx rules for {record['status']}"

    checks.run("tx record", tx_record_step)

    def terms_step() -> str:
        # The rest of what the node says of the tx is the signed tx/open's own.
        opening = messages[tx_id]
        terms = opening["content"]
        signed = {
            "opener": opening["author"],
            "deadline": terms.get("deadline"),
            "finish": terms.get("finish", txs.DEFAULT_FINISH),
            "subject": terms.get("subject"),
        }
        for key, value in signed.items():
            if summary.get(key) != value:
                raise ProofError(
                    f"the node's tx says {key} {summary.get(key)!r}, its signed tx/open {value!r}"
                )
        return f"opener, deadline, finish policy {signed['finish']!r} and subject as signed"

    checks.run("tx terms", terms_step)
    for pipeline in sorted(pipelines):
        yield from _checkpoint_flow(checks, node, pipeline, block.info.log(pipeline))
    return checks.report


# --------------------------------------------------------------------------- blocks


def block_flow(
    height: int,
    *,
    node_id: str | None = None,
    progress: Progress | None = None,
    bitcoin: Headers | None = None,
    anchor: bool = True,
    witnesses: Sequence[str] | None = None,
    threshold: int | None = None,
    now: int | None = None,
    hmac_key: bytes | None = None,
) -> Flow[Report]:
    """Verify block ``height``: signature, prev link, records blob, consistency, checkpoints,
    and, with ``anchor``, its Bitcoin anchor (against the headers ``bitcoin`` gives,
    when given; without them the Merkle root the proof reaches is reported, unchecked).
    ``witnesses`` and ``threshold`` pin what ``/healthz`` must name: without them its
    word is taken for which stages to check.

    Raises ``VerificationFailed`` (a ``ProofError``) when a check fails, and
    the node's errors as they come (``NotFound`` for no such block).
    """
    checks = _Checks(f"block {height}", progress)
    node = yield from _node_info_flow(checks, node_id, witnesses=witnesses, threshold=threshold)
    cache = _BlockCache(now=now, hmac_key=hmac_key)
    block = yield from _block_flow(checks, node, height, cache)

    checks.status(f"fetching the records blob of block {height}")
    try:
        resp = yield Request("GET", f"/v1/blobs/{path_id(block.info.records_blob)}")
        blob = resp.content
    except NotFound:
        if block.info.txs_count:
            raise
        blob = b""  # nothing was stored for no records

    def blob_step() -> str:
        parsed = blocks.parse_records_blob(blob)
        blocks.verify_records(block.content, parsed, blob)
        if parsed != block.records:
            raise ProofError("the node's records differ from the records blob")
        return f"{block.info.records_blob[:_SHORT_ID]}… holds the {len(parsed)} record(s)"

    checks.run(f"block {height} records blob", blob_step)

    if height > blocks.FIRST_HEIGHT:
        previous = yield from _block_flow(checks, node, height - 1, cache)
        proofs: dict[int, Sequence[bytes]] = {}
        for old in previous.info.logs:
            try:
                new = block.info.log(old.pipeline)
            except ProofError as exc:
                checks.fail(f"log {old.pipeline} consistency", exc.detail)
            if 0 < old.size < new.size:
                proofs[old.pipeline] = yield from _consistency_proof_flow(
                    old.pipeline, old.size, new.size
                )

        def consistency() -> str:
            blocks.verify_block_consistency(previous.content, block.content, proofs)
            sizes = ", ".join(
                f"{o.pipeline}: {o.size}→{block.info.log(o.pipeline).size}"
                for o in previous.info.logs
            )
            return f"logs extend block {height - 1}'s ({sizes})"

        checks.run(f"blocks {height - 1}→{height} consistency", consistency)

    if node.witnesses:
        yield from _stages_flow(checks, node, height, block, cache.hmac_key)
    for entry in block.info.logs:
        yield from _checkpoint_flow(checks, node, entry.pipeline, entry)
    if anchor:
        yield from _anchor_flow(checks, node, height, block, bitcoin, cache.hmac_key)
    return checks.report


class Headers(Protocol):
    """A Bitcoin node of the verifier's own (``Client.verify_block`` makes one of a
    ``BitcoinNode``): called with a height, the raw 80-byte block header there;
    ``chain()``, the anchor chain it is on (``anchors.chain_name``: ``bitcoin``,
    ``bitcoin-regtest``, …). Both raise ``BitcoinError`` when the node cannot say
    (nothing is then known of an anchor); the header look-up raises ``ProofError``
    when the node says there is no block at that height (``NoSuchBlock``)."""

    def __call__(self, height: int, /) -> bytes: ...

    def chain(self) -> str: ...


#: Blocks a page when an anchor of a later block is followed down its ``prev`` links.
_LINK_PAGE: Final = 1000


def _linked_flow(
    checks: _Checks, node: NodeInfo, block: _Block, top: int, what: str, hmac_key: bytes | None
) -> Flow[blocks.BlockInfo]:
    """Block ``top``, checked to descend from ``block`` by ``prev`` links, every block
    between signed by the node (``GET /v1/blocks`` a page at a time)."""
    previous = block.message
    info = block.info
    while info.height < top:
        checks.status(f"following blocks {info.height + 1}–{top} to the anchored one")
        page = _obj(
            (
                yield from _get(
                    "/v1/blocks",
                    what,
                    {"after": info.height, "limit": min(_LINK_PAGE, top - info.height)},
                )
            ),
            what,
        )
        listed = _field(page, "blocks", list, what)
        if not listed:
            checks.fail(what, f"the node lists no block after {info.height}, below {top}")
        for entry in listed:
            message = _obj(_obj(entry, what).get("message"), what)
            try:
                info = blocks.verify_block(message, node.id, previous=previous, hmac_key=hmac_key)
            except ProofError as exc:
                checks.fail(what, exc.detail)
            previous = message
            if info.height >= top:
                break
    return info


def _anchor_flow(
    checks: _Checks,
    node: NodeInfo,
    height: int,
    block: _Block,
    headers: Headers | None,
    hmac_key: bytes | None,
) -> Flow[None]:
    """The Bitcoin anchor of the block, or of the first anchored block after it (which
    fixes this one by the ``prev`` links between): each ``anchor`` message, its ``.ots``
    proof from the block id through the Bitcoin transaction to a Merkle root, and, with
    ``headers``, the anchor's ``chain`` that of the headers' node and that root in the
    Bitcoin header at the attested height. ``BitcoinError`` (raised, not a failed
    check) when that node cannot say."""
    what = f"block {height} anchor"
    if block.anchored is None:
        checks.run(what, lambda: "not anchored in Bitcoin yet (no anchor of it or a later block)")
        return
    anchored = _obj(block.anchored, what)
    top = _field(anchored, "height", int, what)
    listed = _field(anchored, "anchors", list, what)
    if top < height or not listed:
        checks.fail(what, f"the node names anchored block {top} with {len(listed)} anchor(s)")
    info = yield from _linked_flow(checks, node, block, top, what, hmac_key)
    if top > height:
        checks.run(
            f"blocks {height}→{top} links",
            lambda: f"block {top} descends from block {height} by prev links",
        )
    for raw in listed:
        entry = _obj(raw, what)
        mid = str(entry.get("id"))
        checks.status(f"fetching anchor {_short(mid)}")
        got = _obj((yield from _get(f"/v1/messages/{path_id(mid)}", f"anchor {mid}")), what)
        message = _obj(got.get("message"), f"anchor {mid}")
        ots_id = _obj(message.get("content"), f"anchor {mid}").get("ots")
        if not is_blob_id(ots_id):
            checks.fail(f"block {top} anchor", f"anchor {mid} names no proof blob: {ots_id!r}")
        proof = (yield Request("GET", f"/v1/blobs/{path_id(str(ots_id))}")).content

        def step(message: dict[str, Any] = message, proof: bytes = proof) -> str:
            content, found = anchors.check_message(message, node.id, top, info.id, proof, hmac_key)
            if headers is not None:
                _same_chain(content, headers.chain())
            where = []
            for one in found:
                if headers is None:
                    where.append(
                        f"Bitcoin block {one.bitcoin_height} must have Merkle root "
                        f"{one.merkle_root_hex[:_SHORT_ID]}… (no Bitcoin node given: not checked)"
                    )
                    continue
                # A BitcoinError is your own Bitcoin node's (down, warming up, syncing, odd):
                # raised, as nothing is known about the anchor. A ProofError (no such
                # block on a synced node) and another Merkle root fail the check.
                anchors.check_header(one, headers(one.bitcoin_height))
                where.append(f"in Bitcoin block {one.bitcoin_height}'s header")
            return (
                f"tx {str(content['txid'])[:_SHORT_ID]}… on {content.get('chain')} carries "
                f"block {top}: " + "; ".join(where)
            )

        checks.run(f"block {top} anchor", step)


def _same_chain(content: dict[str, Any], ours: str) -> None:
    """``ProofError`` unless the anchor's ``chain`` is ``ours``, the verifier's Bitcoin
    node's: that node's headers say nothing of a transaction on another chain."""
    claimed = content.get("chain")
    if claimed != ours:
        shown = _printable_name(claimed if isinstance(claimed, str) else repr(claimed))
        raise ProofError(
            f"the anchor is on {shown}, but your Bitcoin node is on {ours}:"
            " its headers cannot check it"
        )


def _stages_flow(
    checks: _Checks, node: NodeInfo, height: int, block: _Block, hmac_key: bytes | None
) -> Flow[None]:
    """Each stage the node recorded for the block: its message, its witnesses' signatures
    and their root (``witnesses.check_stage``)."""
    what = f"block {height}"
    # From the answer ``_block_flow`` already read: not fetched again.
    stages = _field({"stages": block.stages}, "stages", list, what)
    for index, raw in enumerate(stages):
        stage = _obj(raw, f"{what} stage")
        checks.status(f"fetching stage {index + 1} of block {height}")
        mid = str(stage.get("id"))
        message = _obj(
            (yield from _get(f"/v1/messages/{path_id(mid)}", f"stage {mid}")), f"stage {mid}"
        )
        signs: dict[str, dict[str, Any]] = {}
        listed = stage.get("signs") or []
        if not isinstance(listed, list):
            raise ProofError(f"{what} stage {mid}: signs: expected a list, got {listed!r}")
        for sign_id in listed:
            got = yield from _get(f"/v1/messages/{path_id(str(sign_id))}", f"signature {sign_id}")
            signs[str(sign_id)] = _obj(_obj(got, "signature").get("message"), "signature")

        def step(
            stage: dict[str, Any] = stage,
            message: dict[str, Any] = message,
            signs: dict[str, dict[str, Any]] = signs,
            index: int = index,
        ) -> str:
            return check_stage(
                stage,
                _obj(message.get("message"), "stage message"),
                signs,
                node_id=node.id,
                block_id=block.info.id,
                height=height,
                index=index,
                witnesses=node.witnesses,
                threshold=node.threshold,
                hmac_key=hmac_key,
            )

        checks.run(f"block {height} stage {index + 1}", step)
    if len(stages) < len(STAGES):
        checks.run(
            f"block {height} stages",
            lambda: f"{len(stages)} of {len(STAGES)} recorded: not sealed by its witnesses yet",
        )


def checkpoint_flow(
    pipeline: int = 0,
    *,
    node_id: str | None = None,
    progress: Progress | None = None,
) -> Flow[Report]:
    """Verify the current signed checkpoint of ``pipeline`` against the node's key.

    Raises ``VerificationFailed`` (a ``ProofError``) when a check fails.
    """
    checks = _Checks(f"checkpoint of pipeline {pipeline}", progress)
    node = yield from _node_info_flow(checks, node_id)
    yield from _checkpoint_flow(checks, node, pipeline, None)
    return checks.report
