"""Private documents in a channel: sealed with its key, kept as a blob, notarised as ciphertext.

A ``doc`` message is public: its blob, name and type are for anyone to read.
A document for a channel's members alone is sealed instead, as a box is
(XChaCha20-Poly1305 under the channel key, the 24-byte random nonce first),
with associated data of its own, ``chainmail/chan-doc`` NUL ‖ author ‖
channel, so that neither a message box nor another author's or channel's
document passes for it. Then:

1. the ciphertext is stored as a blob;
2. a public ``doc`` message names it (``blob``, ``size``, the channel's
   ``tx``, no name or type): the node keeps the blob for good, and a block
   proves when it existed, while anyone else learns only its size;
3. a ``chan/msg`` tells the members, its box holding the *pointer*::

       {"type": "doc", "blob": "&….sha256", "notarised": "%….sha256",
        "size": <plaintext bytes>, "sha256": "<base64 of the plaintext's SHA-256>",
        "name"?: str, "mime"?: str}

A member fetches the blob, opens it with the key, the pointer's author and
channel, and checks the plaintext against the pointer's size and digest:
the author signed (inside the box) which document it meant, so neither the
node nor another member can substitute one. Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any, Final

import nacl.bindings
import nacl.exceptions
import nacl.utils

from chainmail.channels import KEY_BYTES, NONCE_BYTES, TAG_BYTES, associated_data
from chainmail.errors import DecryptionError, InvalidMessage, ProofError
from chainmail.ids import is_blob_id, is_msg_id
from chainmail.ssb import Checked

__all__ = [
    "DOC_AD_PREFIX",
    "Pointer",
    "check_document",
    "check_notarised",
    "open_document",
    "pointer_content",
    "read_pointer",
    "seal_document",
    "sealed_size",
]

#: What a sealed document's associated data starts with (then author ‖ channel).
DOC_AD_PREFIX: Final = b"chainmail/chan-doc\x00"


def _ad(author: str, channel: str) -> bytes:
    return DOC_AD_PREFIX + associated_data(author, channel)


def sealed_size(size: int) -> int:
    """The bytes of a sealed document of ``size`` plaintext bytes."""
    return NONCE_BYTES + size + TAG_BYTES


def seal_document(
    key: bytes, data: bytes, *, author: str, channel: str, nonce: bytes | None = None
) -> bytes:
    """``data`` sealed for ``author`` posting in ``channel``: nonce ‖ ciphertext ‖ tag.

    ``nonce`` is for tests only; by default 24 random bytes. Raises
    ``InvalidMessage`` for a key that is not 32 bytes, a nonce that is not 24,
    or an author or channel that is not a feed or message id.
    """
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise InvalidMessage(f"channel key: expected {KEY_BYTES} bytes")
    if nonce is None:
        nonce = bytes(nacl.utils.random(NONCE_BYTES))
    elif not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise InvalidMessage(f"document nonce: expected {NONCE_BYTES} bytes")
    ad = _ad(author, channel)
    sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(data, ad, nonce, key)
    return nonce + bytes(sealed)


def open_document(key: bytes, sealed: bytes, *, author: str, channel: str) -> bytes:
    """The plaintext of a document ``author`` sealed in ``channel``.

    Raises ``DecryptionError("cannot decrypt")`` whatever went wrong: another
    key, author or channel, a truncated or altered ciphertext, a message box.
    """
    try:
        ad = _ad(author, channel)
    except InvalidMessage:
        raise DecryptionError("cannot decrypt") from None
    if not isinstance(key, bytes) or len(key) != KEY_BYTES or len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionError("cannot decrypt")
    try:
        plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed[NONCE_BYTES:], ad, sealed[:NONCE_BYTES], key
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise DecryptionError("cannot decrypt") from None
    return bytes(plain)


@dataclass(frozen=True, slots=True)
class Pointer:
    """What a channel message says of a document it carries (the module docstring)."""

    blob: str
    notarised: str
    size: int
    sha256: bytes
    name: str | None = None
    mime: str | None = None


def pointer_content(
    data: bytes, *, blob: str, notarised: str, name: str | None = None, mime: str | None = None
) -> dict[str, Any]:
    """The inner content of the ``chan/msg`` announcing ``data``, stored as ``blob``
    (the sealed bytes) and notarised by the ``doc`` message ``notarised``.

    Raises ``InvalidMessage`` for a malformed blob or message id, or a name or
    type that is not a string.
    """
    inner: dict[str, Any] = {
        "type": "doc",
        "blob": blob,
        "notarised": notarised,
        "size": len(data),
        "sha256": base64.b64encode(hashlib.sha256(data).digest()).decode("ascii"),
    }
    for field, value in (("name", name), ("mime", mime)):
        if value is not None:
            if not isinstance(value, str):
                raise InvalidMessage(f"document {field}: expected a string, got {value!r}")
            inner[field] = value
    read_pointer(inner)  # what a member could not read back is refused here
    return inner


def read_pointer(inner: object) -> Pointer | None:
    """The document ``inner`` (a decrypted channel message) points to; None if it is
    no document pointer (its ``type`` is not ``doc``).

    Raises ``InvalidMessage`` for a ``doc`` pointer with a missing or malformed field.
    """
    if not isinstance(inner, dict) or inner.get("type") != "doc":
        return None
    blob, notarised = inner.get("blob"), inner.get("notarised")
    size, digest = inner.get("size"), inner.get("sha256")
    name, mime = inner.get("name"), inner.get("mime")
    if not isinstance(blob, str) or not is_blob_id(blob):
        raise InvalidMessage(f"document pointer: blob is not a blob id: {blob!r}")
    if not isinstance(notarised, str) or not is_msg_id(notarised):
        raise InvalidMessage(f"document pointer: notarised is not a message id: {notarised!r}")
    if type(size) is not int or size < 0:
        raise InvalidMessage(f"document pointer: size is not a byte count: {size!r}")
    raw = _digest(digest)
    if raw is None:
        raise InvalidMessage(f"document pointer: sha256 is not a base64 SHA-256: {digest!r}")
    for field, value in (("name", name), ("mime", mime)):
        if value is not None and not isinstance(value, str):
            raise InvalidMessage(f"document pointer: {field} is not a string: {value!r}")
    return Pointer(blob, notarised, size, raw, name, mime)


def _digest(text: object) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    if len(raw) != 32 or base64.b64encode(raw).decode("ascii") != text:
        return None
    return raw


def check_document(pointer: Pointer, data: bytes) -> None:
    """Raise ``ProofError`` unless ``data`` is the document ``pointer`` names."""
    if len(data) != pointer.size:
        raise ProofError(
            f"document {pointer.blob}: {len(data)} bytes, its pointer says {pointer.size}"
        )
    if hashlib.sha256(data).digest() != pointer.sha256:
        raise ProofError(f"document {pointer.blob}: its SHA-256 differs from its pointer's")


def check_notarised(pointer: Pointer, author: str, doc: Checked) -> None:
    """Raise ``ProofError`` unless ``doc`` (signature checked) is the ``doc`` message
    ``pointer`` names as its notarisation: posted by ``author`` (the channel
    message's), naming the pointer's blob and the sealed size of its document.

    Without this check a member could announce a document as notarised by any
    earlier message, someone else's ``doc`` included, and so borrow its date.
    """
    where = f"document {pointer.blob}: its notarisation {pointer.notarised}"
    if doc.id != pointer.notarised:
        raise ProofError(f"{where} is answered by another message, {doc.id}")
    body = doc.content if isinstance(doc.content, dict) else {}
    if body.get("type") != "doc":
        raise ProofError(f"{where} is not a doc message")
    if doc.author != author:
        raise ProofError(f"{where} is {doc.author}'s, not the announcing member's ({author})")
    if body.get("blob") != pointer.blob:
        raise ProofError(f"{where} names another blob, {body.get('blob')!r}")
    if body.get("size") != sealed_size(pointer.size):
        raise ProofError(
            f"{where} gives size {body.get('size')!r}, not {sealed_size(pointer.size)}"
        )
