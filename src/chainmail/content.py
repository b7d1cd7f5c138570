"""Node policy on top of SSB: the content types the node interprets (DESIGN §2, §3).

``ssb.validate`` accepts exactly what SSB accepts. A node is stricter:
``check_policy`` adds the rules below, for messages that already passed
``ssb.validate``.

- ``timestamp`` is a non-negative integer in ms (SSB also allows floats).
- A string ``content`` (an SSB private ``.box``) is accepted as is.
- Each type of the DESIGN §3 table must match its schema: exact field names,
  their types, and the cross-field rules (the author among ``parties``, its
  key among ``chan/open`` ``keys``, valid ``role`` and ``key/rotate`` proofs).
- Fields a schema does not name are allowed and ignored, so a client that
  adds a field in a later protocol version is not cut off from older nodes
  (SSB's own convention). Their names are not checked either: a typo such as
  ``"partys"`` is caught as the missing required field, not as an extra one.
- Types outside the table are allowed: any valid SSB message has a place in
  its feed.
- ``block``, ``block/stage`` and ``anchor`` are accepted only from the node's
  own identity, refused as ``Rejected(code="not_admitted")``: the message is
  well-formed and signed (so not ``invalid_format``), and the request itself is
  authentic (so not ``unauthorized``, which §8 uses for HTTP request
  signatures); the author is simply not admitted to post that type, which is
  what ``not_admitted`` (403) says.

Pure: no I/O and no clock.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeGuard
from urllib.parse import urlsplit

from chainmail.errors import InvalidMessage, Rejected
from chainmail.ids import is_blob_id, is_feed_id, is_msg_id
from chainmail.keys import verify_signature

__all__ = [
    "BLOB_NAMING_TYPES",
    "FINISH_POLICIES",
    "MAX_SAFE_INTEGER",
    "NODE_ONLY_TYPES",
    "SCHEMAS",
    "TX_TYPES",
    "blob_refs",
    "check_policy",
    "is_mapping",
    "is_valid_lei",
    "tx_of",
]


def is_mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    """``isinstance(value, Mapping)``, with a fast path for the dicts JSON gives."""
    return type(value) is dict or isinstance(value, Mapping)


#: Largest integer a JSON number holds exactly (ECMAScript ``Number.MAX_SAFE_INTEGER``).
MAX_SAFE_INTEGER: Final = 2**53 - 1

#: ``tx/open`` ``finish`` values; ``all`` when the field is absent.
FINISH_POLICIES: Final = ("all", "any", "opener")

#: Types only the node's own identity may post (DESIGN §3).
NODE_ONLY_TYPES: Final = frozenset({"block", "block/stage", "anchor"})

#: Types whose optional or required ``tx`` field ties them to a transaction.
TX_TYPES: Final = frozenset({"tx/note", "tx/finish", "chan/open", "chan/msg", "chan/share", "doc"})

#: XChaCha20-Poly1305 nonce and tag: the shortest possible ``chan/msg`` box.
_BOX_MIN_BYTES: Final = 24 + 16
#: ed25519 signature length, the size of a ``role`` / ``key/rotate`` proof.
_SIG_BYTES: Final = 64
#: SHA-256 / Merkle root length.
_ROOT_BYTES: Final = 32
#: A 32-byte channel key sealed with ``crypto_box_seal`` (ephemeral key 32 + MAC 16).
_SEALED_KEY_BYTES: Final = 32 + 48

_LEI_RE: Final = re.compile(r"[A-Z0-9]{18}[0-9]{2}")
_TXID_RE: Final = re.compile(r"[0-9a-f]{64}")
_URL_SCHEMES: Final = frozenset({"http", "https"})
_SHOW_CHARS: Final = 60


class _BadValueError(Exception):
    """A field value breaks its rule; ``what`` says what was expected."""

    def __init__(self, what: str, *, shows_value: bool = False) -> None:
        super().__init__(what)
        self.what = what
        # True when ``what`` already quotes the offending part of a composite value.
        self.shows_value = shows_value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 1] + "…"


# --- value checks: each returns quietly or raises _BadValueError(expected) -------------------


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass in Python, but JSON true is not a number.
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: object) -> None:
    if not (_is_int(value) and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER):
        raise _BadValueError("an integer")


def _uint(value: object) -> None:
    if not (_is_int(value) and 0 <= value <= MAX_SAFE_INTEGER):
        raise _BadValueError("a non-negative integer")


def _str(value: object) -> None:
    if not isinstance(value, str):
        raise _BadValueError("a string")


def _nonempty_str(value: object) -> None:
    if not (isinstance(value, str) and value):
        raise _BadValueError("a non-empty string")


def _bool(value: object) -> None:
    if not isinstance(value, bool):
        raise _BadValueError("true or false")


def _obj(value: object) -> None:
    if not is_mapping(value):
        raise _BadValueError("an object")


#: Feed and tx ids recur on every message of a trade, and each full check is
#: a chain of calls; the verdicts on exact strs are remembered (bounded). A
#: trade's ids recur within seconds, so 8,192 serve as well as 65,536 did
#: (1M messages: same throughput) and, full, hold ~3 MiB instead of ~20.
_ID_CACHE: Final = 1 << 13

_feed_verdict: Final = functools.lru_cache(maxsize=_ID_CACHE)(is_feed_id)
_msg_verdict: Final = functools.lru_cache(maxsize=_ID_CACHE)(is_msg_id)


def _feed(value: object) -> None:
    # A str subclass may hash and compare as it likes: it skips the cache.
    if not (_feed_verdict(value) if type(value) is str else is_feed_id(value)):
        raise _BadValueError("a feed id @….ed25519")


def _msg(value: object) -> None:
    if not (_msg_verdict(value) if type(value) is str else is_msg_id(value)):
        raise _BadValueError("a message id %….sha256")


def _msg_or_null(value: object) -> None:
    if value is not None and not is_msg_id(value):
        raise _BadValueError("a message id %….sha256 or null")


def _blob(value: object) -> None:
    if not is_blob_id(value):
        raise _BadValueError("a blob id &….sha256")


def _b64(value: object) -> bytes:
    """Decode canonical base64 (padded, no stray bits), or raise ``_BadValueError``."""
    if not isinstance(value, str):
        raise _BadValueError("a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _BadValueError("a base64 string") from exc
    if base64.b64encode(raw).decode("ascii") != value:
        raise _BadValueError("canonical base64")
    return raw


def _b64_len(size: int) -> Callable[[object], None]:
    def check(value: object) -> None:
        if len(_b64(value)) != size:
            raise _BadValueError(f"base64 of {size} bytes")

    return check


def _box(value: object) -> None:
    if len(_b64(value)) < _BOX_MIN_BYTES:
        raise _BadValueError(f"base64 of at least {_BOX_MIN_BYTES} bytes (nonce and tag)")


def _list_of(
    item: Callable[[object], None], what: str, *, nonempty: bool
) -> Callable[[object], None]:
    expected = ("a non-empty list" if nonempty else "a list") + f" of {what}"

    def check(value: object) -> None:
        if not isinstance(value, list | tuple) or (nonempty and not value):
            raise _BadValueError(expected)
        for index, element in enumerate(value):
            try:
                item(element)
            except _BadValueError as exc:
                raise _BadValueError(
                    f"{expected}; item {index} is not {exc.what}: {_show(element)}",
                    shows_value=True,
                ) from None

    return check


def _unique_feeds(*, nonempty: bool) -> Callable[[object], None]:
    base = _list_of(_feed, "feed ids", nonempty=nonempty)

    def check(value: object) -> None:
        base(value)
        seen: set[str] = set()
        for fid in value:  # type: ignore[attr-defined]
            if fid in seen:
                raise _BadValueError(
                    f"a list of unique feed ids; {fid} appears twice", shows_value=True
                )
            seen.add(fid)

    return check


def _sealed_keys(value: object) -> None:
    expected = "a non-empty object mapping feed ids to sealed keys"
    if not is_mapping(value) or not value:
        raise _BadValueError(expected)
    for fid, sealed in value.items():
        if not is_feed_id(fid):
            raise _BadValueError(f"{expected}; key {_show(fid)} is not a feed id", shows_value=True)
        try:
            raw = _b64(sealed)
        except _BadValueError as exc:
            raise _BadValueError(
                f"{expected}; the key for {fid} is not {exc.what}: {_show(sealed)}",
                shows_value=True,
            ) from None
        if len(raw) != _SEALED_KEY_BYTES:
            raise _BadValueError(
                f"{expected}; the key for {fid} is {len(raw)} bytes, "
                f"expected {_SEALED_KEY_BYTES} (crypto_box_seal of 32)",
                shows_value=True,
            )


def _finish(value: object) -> None:
    if value not in FINISH_POLICIES:
        raise _BadValueError(" or ".join(repr(p) for p in FINISH_POLICIES))


def is_valid_lei(value: object) -> bool:
    """True when ``value`` is an ISO 17442 Legal Entity Identifier.

    20 characters ``[A-Z0-9]``, the last two digits a check number: reading
    letters as 10..35, the whole code as an integer is 1 mod 97 (ISO 7064
    MOD 97-10, as in IBANs). Raises nothing.
    """
    if not (isinstance(value, str) and _LEI_RE.fullmatch(value)):
        return False
    return int("".join(str(int(char, 36)) for char in value)) % 97 == 1


def _lei(value: object) -> None:
    if not is_valid_lei(value):
        raise _BadValueError(
            "an ISO 17442 LEI (20 characters [A-Z0-9] with valid mod-97 check digits)"
        )


def _url(value: object) -> None:
    expected = "an http(s) URL"
    if not isinstance(value, str) or any(c.isspace() or not c.isprintable() for c in value):
        raise _BadValueError(expected)
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        raise _BadValueError(expected) from exc
    if parts.scheme not in _URL_SCHEMES or not parts.hostname:
        raise _BadValueError(expected)


def _txid(value: object) -> None:
    if not (isinstance(value, str) and _TXID_RE.fullmatch(value)):
        raise _BadValueError("a Bitcoin txid (64 lowercase hex digits)")


def _block_logs(value: object) -> None:
    expected = "a list of {pipeline, size, root} objects with distinct pipelines"
    if not isinstance(value, list | tuple):
        raise _BadValueError(expected)
    pipelines: set[int] = set()
    for index, entry in enumerate(value):
        try:
            _fields(entry, _LOG_ENTRY)
        except _FieldError as exc:
            raise _BadValueError(f"{expected}; item {index}: {exc}", shows_value=True) from None
        if entry["pipeline"] in pipelines:
            raise _BadValueError(
                f"{expected}; pipeline {entry['pipeline']} appears twice", shows_value=True
            )
        pipelines.add(entry["pipeline"])


def _block_txs(value: object) -> None:
    try:
        _fields(value, _TXS_SUMMARY)
    except _FieldError as exc:
        raise _BadValueError(
            f"a {{count, root, records}} object; {exc}", shows_value=True
        ) from None


# --- schemas -----------------------------------------------------------------------

#: A field's rule: (required, check).
_Field = tuple[bool, Callable[[object], None]]
_Schema = Mapping[str, _Field]


def _req(check: Callable[[object], None]) -> _Field:
    return (True, check)


def _opt(check: Callable[[object], None]) -> _Field:
    return (False, check)


_ROOT: Final = _b64_len(_ROOT_BYTES)
_PROOF: Final = _b64_len(_SIG_BYTES)

_LOG_ENTRY: Final[_Schema] = {"pipeline": _req(_uint), "size": _req(_uint), "root": _req(_ROOT)}
_TXS_SUMMARY: Final[_Schema] = {"count": _req(_uint), "root": _req(_ROOT), "records": _req(_blob)}

#: Field rules of each content type the node interprets (DESIGN §3, §6).
SCHEMAS: Final[Mapping[str, _Schema]] = {
    "tx/open": {
        "parties": _req(_unique_feeds(nonempty=True)),
        "deadline": _req(_uint),
        "finish": _opt(_finish),
        "subject": _opt(_str),
        "data": _opt(_obj),
    },
    "tx/note": {
        "tx": _req(_msg),
        "data": _req(_obj),
        "to": _opt(_unique_feeds(nonempty=True)),
    },
    "tx/finish": {"tx": _req(_msg), "data": _opt(_obj)},
    "chan/open": {"keys": _req(_sealed_keys), "tx": _opt(_msg), "label": _opt(_str)},
    "chan/msg": {"chan": _req(_msg), "box": _req(_box), "tx": _opt(_msg)},
    # ``tx`` is not in the §3 row, but "chan/* tied to the tx" may carry it.
    "chan/share": {"chan": _req(_msg), "keys": _req(_sealed_keys), "tx": _opt(_msg)},
    "doc": {
        "blob": _req(_blob),
        "name": _opt(_str),
        "mime": _opt(_str),
        "size": _req(_uint),
        "tx": _opt(_msg),
    },
    "about": {
        "about": _req(_feed),
        "name": _opt(_str),
        "lei": _opt(_lei),
        "routes": _opt(_list_of(_url, "http(s) URLs", nonempty=False)),
    },
    "attest": {
        "subject": _req(_feed),
        "name": _req(_str),
        "lei": _opt(_lei),
        "expires": _opt(_uint),
    },
    "role": {"role": _req(_nonempty_str), "id": _req(_feed), "proof": _req(_PROOF)},
    "key/rotate": {"to": _req(_feed), "proof": _req(_PROOF)},
    "contact": {"contact": _req(_feed), "following": _req(_bool), "blocking": _opt(_bool)},
    "block": {
        "height": _req(_uint),
        "prev": _req(_msg_or_null),
        "time": _req(_uint),
        "logs": _req(_block_logs),
        "txs": _req(_block_txs),
    },
    "block/sign": {"block": _req(_msg), "height": _req(_uint), "stage": _req(_nonempty_str)},
    "block/stage": {
        "block": _req(_msg),
        "height": _req(_uint),
        "stage": _req(_nonempty_str),
        "signers": _req(_unique_feeds(nonempty=False)),
        # The signers' block/sign messages, in signers' order: ``root`` is theirs.
        "signs": _opt(_list_of(_msg, "message ids", nonempty=False)),
        "root": _req(_ROOT),
    },
    "anchor": {
        "block": _req(_msg),
        "height": _req(_uint),
        "chain": _req(_nonempty_str),
        "txid": _req(_txid),
        "ots": _req(_blob),
    },
}


class _FieldError(Exception):
    """A schema mismatch, before it is prefixed with the content type."""


def _fields(value: object, schema: _Schema) -> None:
    if not is_mapping(value):
        raise _FieldError(f"expected an object, got {_show(value)}")
    for name, (required, check) in schema.items():
        if name not in value:
            if required:
                raise _FieldError(f"missing required field {name!r}")
            continue
        try:
            check(value[name])
        except _BadValueError as exc:
            got = "" if exc.shows_value else f", got {_show(value[name])}"
            raise _FieldError(f"field {name!r} must be {exc.what}{got}") from None


#: The blob fields of each content type that names blobs: a path of keys each.
_BLOB_FIELDS: Final[Mapping[str, tuple[tuple[str, ...], ...]]] = {
    "doc": (("blob",),),
    "block": (("txs", "records"),),
    "anchor": (("ots",),),
}
#: The content types whose messages name blobs (``blob_refs``).
BLOB_NAMING_TYPES: Final = frozenset(_BLOB_FIELDS)


def blob_refs(body: object) -> list[str]:
    """The blob ids a message's content names: what keeps a stored blob (DESIGN §8).

    A ``doc``'s ``blob``, a ``block``'s records blob (``txs.records``) and an
    ``anchor``'s ``ots``. Anything else (an encrypted box, other types, a
    field that is not a blob id) names none. Pure; never raises.
    """
    if not isinstance(body, dict):
        return []
    kind = body.get("type")
    paths = _BLOB_FIELDS.get(kind) if isinstance(kind, str) else None
    if paths is None:
        return []
    found: list[str] = []
    for path in paths:
        value: object = body
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and is_blob_id(value):
            found.append(value)
    return found


# --- policy ------------------------------------------------------------------------


def check_policy(msg: Mapping[str, Any], *, node_id: str | None = None) -> None:
    """Apply the node's content rules to a message that passed ``ssb.validate``.

    ``node_id`` is the node's own feed id; ``block``, ``block/stage`` and
    ``anchor`` are accepted only from it. Without a ``node_id`` they are
    refused (fail closed: forgetting the argument must not let anyone post
    blocks).

    Raises ``InvalidMessage`` with code ``invalid_format`` when the timestamp
    or the content breaks a rule, ``invalid_signature`` when a ``role`` or
    ``key/rotate`` proof does not verify, and ``Rejected`` with code
    ``not_admitted`` when a node-only type comes from another author.
    """
    timestamp = msg.get("timestamp")
    if not (_is_int(timestamp) and 0 <= timestamp <= MAX_SAFE_INTEGER):
        raise InvalidMessage(
            f"timestamp must be a non-negative integer (ms), got {_show(timestamp)}",
            code="invalid_format",
        )
    content = msg.get("content")
    if isinstance(content, str):
        return  # an SSB private box: opaque, its format is ssb.validate's job
    if not is_mapping(content):
        raise InvalidMessage(
            f"content must be an object or a .box string, got {_show(content)}",
            code="invalid_format",
        )
    kind = content.get("type")
    if not isinstance(kind, str):
        raise InvalidMessage(
            f"content.type must be a string, got {_show(kind)}", code="invalid_format"
        )
    schema = SCHEMAS.get(kind)
    if schema is None:
        return
    author = msg.get("author")
    if kind in NODE_ONLY_TYPES and (node_id is None or author != node_id):
        raise Rejected(
            f"{kind} messages are accepted only from the node's own identity"
            + ("" if node_id is None else f" {node_id}")
            + f", not from {author}",
            code="not_admitted",
        )
    try:
        _fields(content, schema)
    except _FieldError as exc:
        raise InvalidMessage(f"{kind}: {exc}", code="invalid_format") from exc
    _check_rules(kind, content, str(author))


def _check_rules(kind: str, content: Mapping[str, Any], author: str) -> None:
    """Rules that span fields or the author; the schema has already passed."""
    if kind == "tx/open" and author not in content["parties"]:
        raise InvalidMessage(
            f"tx/open: parties must include the author {author}", code="invalid_format"
        )
    elif kind == "chan/open" and author not in content["keys"]:
        raise InvalidMessage(
            f"chan/open: keys must include the author {author}", code="invalid_format"
        )
    elif kind == "role":
        # The role key signs its owner's id: the owner cannot claim a key it does not hold.
        if not verify_signature(content["id"], author.encode(), _b64(content["proof"])):
            raise InvalidMessage(
                f"role: proof is not {content['id']}'s signature of the author id {author}",
                code="invalid_signature",
            )
    elif kind == "key/rotate":
        if content["to"] == author:
            raise InvalidMessage(
                "key/rotate: field 'to' must differ from the author", code="invalid_format"
            )
        # The new key signs the old id: nobody can rotate an identity into a key they lack.
        if not verify_signature(content["to"], author.encode(), _b64(content["proof"])):
            raise InvalidMessage(
                f"key/rotate: proof is not {content['to']}'s signature of the author id {author}",
                code="invalid_signature",
            )


def tx_of(content: object) -> str | None:
    """The id of the transaction that ``content`` refers to, or ``None``.

    That is the ``tx`` field of ``tx/note``, ``tx/finish``, ``chan/*`` and
    ``doc``. A ``tx/open`` refers to no earlier tx (its own message id is the
    tx id, which only the caller knows); a ``chan/msg`` without ``tx`` still
    belongs to its channel's tx, which only the caller's channel state knows.
    Expects content that passed ``check_policy``; raises nothing.
    """
    if not is_mapping(content) or content.get("type") not in TX_TYPES:
        return None
    tx = content.get("tx")
    return tx if isinstance(tx, str) else None
