"""Typed ids of DESIGN §1 and their conversions to and from raw bytes.

feed   @<base64 32-byte ed25519 public key>.ed25519
msg    %<base64 sha256>.sha256
blob   &<base64 sha256>.sha256
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from typing import Final, NewType

from chainmail.errors import InvalidMessage

__all__ = [
    "BlobId",
    "FeedId",
    "MsgId",
    "blob_digest",
    "blob_id",
    "blob_id_from_digest",
    "feed_id",
    "feed_public_key",
    "is_blob_id",
    "is_feed_id",
    "is_msg_id",
    "msg_digest",
    "msg_id_from_digest",
]

FeedId = NewType("FeedId", str)
MsgId = NewType("MsgId", str)
BlobId = NewType("BlobId", str)

_FEED_SUFFIX: Final = ".ed25519"
_HASH_SUFFIX: Final = ".sha256"
#: Length of the base64 text of 32 bytes (with one "=" pad).
_B64_32: Final = 44


#: Ids recur on every message of a feed or a transaction: their checked
#: decoding is remembered (bounded; refusals are not cached).
_DECODED_CACHE: Final = 1 << 13


def _b64_32(text: str, what: str) -> bytes:
    # The label is only for the error, so the cache key is the text alone; a
    # refusal is decoded again with its label, for the message.
    if type(text) is str:
        try:
            return _decode_b64_32(text)
        except InvalidMessage:
            pass
    return _decode_b64_32_uncached(text, what)


@functools.lru_cache(maxsize=_DECODED_CACHE)
def _decode_b64_32(text: str) -> bytes:
    return _decode_b64_32_uncached(text, "id")


def _decode_b64_32_uncached(text: str, what: str) -> bytes:
    if len(text) != _B64_32 or not text.endswith("="):
        raise InvalidMessage(f"{what}: expected 44 base64 characters, got {text!r}")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidMessage(f"{what}: not base64: {text!r}") from exc
    # Canonical base64 only: the last character's unused bits must be zero.
    if base64.b64encode(raw).decode("ascii") != text:
        raise InvalidMessage(f"{what}: non-canonical base64: {text!r}")
    return raw


def feed_id(public_key: bytes) -> FeedId:
    """The feed id of a 32-byte ed25519 public key."""
    return FeedId("@" + base64.b64encode(public_key).decode("ascii") + _FEED_SUFFIX)


def feed_public_key(fid: str) -> bytes:
    """The 32-byte public key inside a feed id; raises ``InvalidMessage``."""
    if not (isinstance(fid, str) and fid.startswith("@") and fid.endswith(_FEED_SUFFIX)):
        raise InvalidMessage(f"not a feed id: {fid!r}")
    return _b64_32(fid[1 : -len(_FEED_SUFFIX)], "feed id")


def is_feed_id(value: object) -> bool:
    """True when ``value`` is a well-formed ``@….ed25519`` id."""
    try:
        feed_public_key(value)  # type: ignore[arg-type]
    except InvalidMessage:
        return False
    return True


def msg_id_from_digest(digest: bytes) -> MsgId:
    """``%…sha256`` from a 32-byte digest."""
    # binascii directly: the same text as base64.b64encode, without its wrapper
    # (this runs for every message the node checks).
    return MsgId("%" + binascii.b2a_base64(digest, newline=False).decode("ascii") + _HASH_SUFFIX)


def _hash_ref(ref: str, sigil: str, what: str) -> bytes:
    if not (isinstance(ref, str) and ref.startswith(sigil) and ref.endswith(_HASH_SUFFIX)):
        raise InvalidMessage(f"not a {what} id: {ref!r}")
    return _b64_32(ref[1 : -len(_HASH_SUFFIX)], f"{what} id")


def msg_digest(mid: str) -> bytes:
    """The 32-byte digest inside a ``%…sha256`` id; raises ``InvalidMessage``."""
    return _hash_ref(mid, "%", "message")


def is_msg_id(value: object) -> bool:
    """True when ``value`` is a well-formed ``%….sha256`` id."""
    try:
        msg_digest(value)  # type: ignore[arg-type]
    except InvalidMessage:
        return False
    return True


def blob_id(data: bytes) -> BlobId:
    """The content address ``&…sha256`` of ``data``."""
    return blob_id_from_digest(hashlib.sha256(data).digest())


def blob_id_from_digest(digest: bytes) -> BlobId:
    """The ``&…sha256`` id of a blob whose SHA-256 is ``digest`` (32 bytes)."""
    if len(digest) != 32:
        raise ValueError(f"a blob digest is 32 bytes, got {len(digest)}")
    return BlobId("&" + base64.b64encode(digest).decode("ascii") + _HASH_SUFFIX)


def blob_digest(bid: str) -> bytes:
    """The 32-byte digest inside a ``&…sha256`` id; raises ``InvalidMessage``."""
    return _hash_ref(bid, "&", "blob")


def is_blob_id(value: object) -> bool:
    """True when ``value`` is a well-formed ``&….sha256`` id."""
    try:
        blob_digest(value)  # type: ignore[arg-type]
    except InvalidMessage:
        return False
    return True
