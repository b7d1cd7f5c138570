"""Identities: ed25519 key pairs whose public key is the feed id (DESIGN §1).

``Keypair`` is the in-memory identity used for signing. This module also
holds the pure, I/O-free parts of key handling:

- the SSB secret form of a key pair, exactly as ssb-keys writes it
  (``{"curve", "public", "private", "id"}``), which the keystore encrypts;
- the ed25519 → curve25519 conversion that channel keys are sealed with (§3);
- the ``proof`` of ``key/rotate`` and ``role`` messages (§3): an ed25519
  signature by one key over the UTF-8 bytes of another identity's id.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import nacl.bindings
import nacl.exceptions
import nacl.signing
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

from chainmail.errors import InvalidMessage, KeystoreError
from chainmail.ids import FeedId, feed_id, feed_public_key

__all__ = [
    "SIGN_OPEN_ADDRESS",
    "SSB_CURVE",
    "Keypair",
    "curve_public_of",
    "sign_proof",
    "sodium_address",
    "verify_proof",
    "verify_signature",
    "verify_signed",
    "verify_signed_many",
]

#: The only curve SSB (and chainmail) identities use; also the tag after the ".".
SSB_CURVE: Final = "ed25519"

_SEED_BYTES: Final = 32
_PUBLIC_BYTES: Final = 32
_SECRET_BYTES: Final = 64
_SIG_BYTES: Final = 64
_TAG: Final = "." + SSB_CURVE


@dataclass(frozen=True, repr=False)
class Keypair:
    """An ed25519 identity. ``secret`` is libsodium's 64-byte form (seed ‖ public)."""

    public: bytes
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.public) != _PUBLIC_BYTES or len(self.secret) != _SECRET_BYTES:
            raise InvalidMessage("ed25519 key pair: expected 32-byte public, 64-byte secret")
        if self.secret[32:] != self.public:
            raise InvalidMessage("ed25519 key pair: secret key does not match public key")

    @classmethod
    def generate(cls) -> Keypair:
        """A fresh random identity."""
        return cls.from_seed(nacl.signing.SigningKey.generate().encode())

    @classmethod
    def from_seed(cls, seed: bytes) -> Keypair:
        """The identity derived from a 32-byte seed (RFC 8032 secret key).

        Raises ``InvalidMessage`` when ``seed`` is not 32 bytes.
        """
        if len(seed) != _SEED_BYTES:
            raise InvalidMessage(f"ed25519 seed: expected 32 bytes, got {len(seed)}")
        public, secret = nacl.bindings.crypto_sign_seed_keypair(seed)
        return cls(public=public, secret=secret)

    @property
    def id(self) -> FeedId:
        """``@<base64 public>.ed25519``."""
        return feed_id(self.public)

    @property
    def seed(self) -> bytes:
        """The 32-byte RFC 8032 secret key the pair derives from."""
        return self.secret[:32]

    def sign(self, data: bytes) -> bytes:
        """The 64-byte detached ed25519 signature of ``data``."""
        return bytes(nacl.bindings.crypto_sign(data, self.secret)[:_SIG_BYTES])

    # -- SSB secret form ------------------------------------------------------

    def to_ssb_secret(self) -> dict[str, str]:
        """The key pair as ssb-keys' JSON object, keys in ssb-keys' order.

        ``{"curve": "ed25519", "public": "<b64>.ed25519",
        "private": "<b64 64 bytes>.ed25519", "id": "@<b64>.ed25519"}``.
        The result holds the secret key: never log or print it.
        """
        public = b64(self.public) + _TAG
        return {
            "curve": SSB_CURVE,
            "public": public,
            "private": b64(self.secret) + _TAG,
            "id": "@" + public,
        }

    @classmethod
    def from_ssb_secret(cls, secret: Mapping[str, object]) -> Keypair:
        """The key pair in an ssb-keys secret object (as ``to_ssb_secret`` writes it).

        Every field is checked: ``curve`` (when present) must be ``ed25519``;
        ``private`` must be 64 bytes whose seed derives the key pair;
        ``public`` and ``id`` must name that key pair. As ssb-keys does, an
        ``id`` without its ``@`` sigil, or no ``id`` at all, stands for
        ``"@" + public``. Unknown extra fields are ignored.

        Raises ``KeystoreError`` for anything malformed or inconsistent; the
        message never contains secret material.
        """
        if not isinstance(secret, Mapping):
            raise KeystoreError(f"SSB secret: expected a JSON object, got {type(secret).__name__}")
        curve = secret.get("curve", SSB_CURVE)
        if curve != SSB_CURVE:
            raise KeystoreError(f"SSB secret: unsupported curve {curve!r}, expected 'ed25519'")
        private = _tagged_bytes(secret.get("private"), "private", _SECRET_BYTES)
        public = _tagged_bytes(secret.get("public"), "public", _PUBLIC_BYTES)
        derived = cls.from_seed(private[:_SEED_BYTES])
        if derived.secret != private:
            # The second half of libsodium's secret key is the public key; a
            # mismatch means the file was edited or spliced from two keys.
            raise KeystoreError("SSB secret: 'private' is not a valid ed25519 secret key")
        if derived.public != public:
            raise KeystoreError(
                f"SSB secret: 'public' does not match 'private' (private key is {derived.id})"
            )
        sid = secret.get("id")
        if sid is not None:
            if not isinstance(sid, str):
                raise KeystoreError("SSB secret: 'id' must be a string")
            expected = str(derived.id)
            if sid not in (expected, expected[1:]):
                raise KeystoreError(
                    f"SSB secret: 'id' {sid!r} does not match the key pair {expected}"
                )
        return derived

    # -- curve25519, for channel keys (DESIGN §3) ---------------------------------

    def curve_public(self) -> bytes:
        """This identity's 32-byte curve25519 public key (``crypto_box_seal`` target)."""
        return curve_public_of(self.public)

    def curve_secret(self) -> bytes:
        """This identity's 32-byte curve25519 secret key (opens ``crypto_box_seal``).

        The result is secret material: never log or print it.
        """
        return bytes(nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(self.secret))

    def __repr__(self) -> str:
        return f"Keypair(id={self.id!r})"


def curve_public_of(identity: str | bytes) -> bytes:
    """The curve25519 public key of a feed id (or a raw 32-byte ed25519 public key).

    Raises ``InvalidMessage`` for a malformed feed id, or one whose key is not
    a point libsodium can convert (for instance a small-order point).
    """
    public = feed_public_key(identity) if isinstance(identity, str) else identity
    if len(public) != _PUBLIC_BYTES:
        raise InvalidMessage(f"ed25519 public key: expected 32 bytes, got {len(public)}")
    try:
        return bytes(nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public))
    except (nacl.exceptions.CryptoError, RuntimeError, ValueError) as exc:
        shown = identity if isinstance(identity, str) else feed_id(public)
        raise InvalidMessage(f"{shown} is not an ed25519 key that converts to curve25519") from exc


def verify_signature(public: bytes | str, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public``'s ed25519 signature of ``data``.

    ``public`` may be raw bytes or a feed id. Raises ``InvalidMessage`` only
    for a malformed feed id; a bad signature is ``False``.
    """
    key = feed_public_key(public) if isinstance(public, str) else public
    if len(signature) != _SIG_BYTES or len(key) != _PUBLIC_BYTES:
        return False
    return verify_signed(signature + data, key)


def verify_signed(signed: bytes, public: bytes) -> bool:
    """True when ``signed`` (signature ‖ data) verifies under the 32-byte key ``public``.

    The bare libsodium call under ``verify_signature``, which ``chainmail bench``
    also times for the machine's ceiling, so both measure the same work.
    Raises nothing; a wrong-sized key is ``False``.
    """
    if len(public) != _PUBLIC_BYTES or len(signed) < _SIG_BYTES:
        return False
    # libsodium's crypto_sign_open with no output buffer is its detached
    # verify (open.c skips the copy when m is NULL); PyNaCl's wrapper would
    # allocate, zero and copy out the whole message for nothing.
    return bool(_lib.crypto_sign_open(_ffi.NULL, _ffi.NULL, signed, len(signed), public) == 0)


def sodium_address(name: str) -> int:
    """Where libsodium's function ``name`` is in the library PyNaCl loaded.

    For the C extensions (``_sigbatch``, ``_ssbscan.scan_many``), so they link
    against nothing and call exactly what this module calls.
    """
    return int(_ffi.cast("uintptr_t", _ffi.addressof(_lib, name)))


_verify_all: Callable[[int, Sequence[tuple[bytes, bytes]]], bytes] | None
try:
    from chainmail._sigbatch import verify as _verify_all
except ImportError:  # pragma: no cover - built without a C compiler
    _verify_all = None
#: libsodium's ``crypto_sign_open``, for the C extensions that verify in batches.
SIGN_OPEN_ADDRESS: Final = sodium_address("crypto_sign_open")


def verify_signed_many(items: Sequence[tuple[bytes, bytes]]) -> bytes:
    """``verify_signed`` of each ``(signed, public)`` pair: one byte a pair, 1 when it verifies.

    The same libsodium call, made for the whole batch in C with the GIL
    released (the optional ``_sigbatch`` extension), so that threads verify
    on every core while the rest of the process runs. Without the extension,
    one ``verify_signed`` a pair (cffi releases the GIL around each call).
    Raises ``TypeError`` for an item that is not a pair of bytes.
    """
    if _verify_all is not None:
        return _verify_all(SIGN_OPEN_ADDRESS, items)
    items = tuple(items)
    out = bytearray(len(items))
    for i, item in enumerate(items):
        if not (
            isinstance(item, tuple)
            and len(item) == 2
            and all(isinstance(part, bytes) for part in item)
        ):
            raise TypeError("each item must be a (signed, public) pair of bytes")
        out[i] = verify_signed(*item)
    return bytes(out)


# -- proofs of key/rotate and role (DESIGN §3) --------------------------------------


def sign_proof(signer: Keypair, owner_id: str) -> str:
    """The ``proof`` field: ``signer``'s signature over the UTF-8 bytes of ``owner_id``, base64.

    For ``key/rotate`` the signer is the new key and ``owner_id`` the old id;
    for ``role`` the signer is the role key and ``owner_id`` its owner's id.
    Raises ``InvalidMessage`` when ``owner_id`` is not a feed id.
    """
    feed_public_key(owner_id)
    return b64(signer.sign(owner_id.encode("utf-8")))


def verify_proof(signer_id: str, owner_id: str, proof: object) -> bool:
    """True when ``proof`` is ``signer_id``'s signature over the UTF-8 bytes of ``owner_id``.

    ``proof`` must be canonical base64 of 64 bytes; anything else is ``False``.
    Raises ``InvalidMessage`` when ``signer_id`` or ``owner_id`` is not a feed id.
    """
    public = feed_public_key(signer_id)
    feed_public_key(owner_id)
    if not isinstance(proof, str):
        return False
    try:
        signature = base64.b64decode(proof, validate=True)
    except (binascii.Error, ValueError):
        return False
    if b64(signature) != proof:
        return False
    return verify_signature(public, owner_id.encode("utf-8"), signature)


def b64(data: bytes) -> str:
    """Standard base64 with padding, as text."""
    return base64.b64encode(data).decode("ascii")


def _tagged_bytes(value: object, what: str, size: int) -> bytes:
    """Decode ``<canonical base64>.ed25519`` of exactly ``size`` bytes, or raise KeystoreError.

    The value may be secret, so messages describe it but never quote it.
    """
    if not isinstance(value, str):
        raise KeystoreError(f"SSB secret: {what!r} must be a string ending in '.ed25519'")
    if not value.endswith(_TAG):
        raise KeystoreError(f"SSB secret: {what!r} must end in '.ed25519'")
    text = value[: -len(_TAG)]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeystoreError(f"SSB secret: {what!r} is not base64") from exc
    if len(raw) != size:
        raise KeystoreError(f"SSB secret: {what!r} must hold {size} bytes, got {len(raw)}")
    if b64(raw) != text:
        raise KeystoreError(f"SSB secret: {what!r} is not canonical base64")
    return raw
