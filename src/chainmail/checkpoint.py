"""Signed notes and log checkpoints: C2SP signed-note and tlog-checkpoint, Ed25519 (DESIGN §4).

A signed note (https://c2sp.org/signed-note) is a text ending in a newline, a
blank line, then one or more signature lines::

    <text, each line ending in "\\n">
    <empty line>
    — <key name> base64(key id ‖ Ed25519 signature of the text)

    key id          = SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]
    verifier key    = <key name>+<hex key id>+base64(0x01 ‖ public key)
    signer key      = PRIVATE+KEY+<key name>+<hex key id>+base64(0x01 ‖ seed)

A checkpoint (https://c2sp.org/tlog-checkpoint) is a note whose text is the
log's origin, its size in decimal and its base64 RFC 9162 root, one per line,
then optional extension lines. The node signs one per pipeline under the key
name of its origin.

Every malformed input raises ``ProofError`` with a reason; so does a note with
no valid signature from a key the caller trusts. Signatures by keys the caller
does not know are kept as unverified and otherwise ignored, as the spec says.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from chainmail.errors import InvalidMessage, ProofError
from chainmail.keys import Keypair, verify_signature

__all__ = [
    "MAX_SIGNATURES",
    "SIG_TYPE_ED25519",
    "Checkpoint",
    "Note",
    "Signature",
    "Signer",
    "Verifier",
    "key_id",
    "open_note",
    "sign_checkpoint",
    "sign_note",
    "signer_key",
    "verifier_key",
    "verify_checkpoint",
]

#: Signature type byte of Ed25519 in C2SP signed-note.
SIG_TYPE_ED25519: Final = 0x01
#: Signature lines a note may carry; the spec asks for at least 16, Go allows 100.
MAX_SIGNATURES: Final = 100

_KEY_ID_SIZE: Final = 4
_ED25519_KEY_SIZE: Final = 32
_SIG_PREFIX: Final = "\u2014 "  # em dash, space
_SIG_SEPARATOR: Final = "\n\n"
_PRIVATE_PREFIX: Final = "PRIVATE+KEY+"
_HEX_KEY_ID: Final = re.compile(r"[0-9a-fA-F]{8}")
_DECIMAL: Final = re.compile(r"0|[1-9][0-9]*")
_CONTROL: Final = re.compile(r"[\x00-\x09\x0b-\x1f]")
_BASE64: Final = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_MAX_SIZE: Final = 2**64 - 1
_ROOT_SIZE: Final = 32
#: How much of a bad input an error message quotes.
_QUOTE: Final = 60


def key_id(name: str, public: bytes) -> bytes:
    """The 4-byte key id of an Ed25519 key: ``SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public)[:4]``.

    Raises ``ProofError`` for an invalid key name or a public key that is not 32 bytes.
    """
    _check_name("key name", name)
    _check_public(public)
    return _key_id(name, public)


def _key_id(name: str, public: bytes) -> bytes:
    material = name.encode() + b"\n" + bytes([SIG_TYPE_ED25519]) + public
    return hashlib.sha256(material).digest()[:_KEY_ID_SIZE]


@dataclass(frozen=True)
class Verifier:
    """A trusted Ed25519 note key: its name and 32-byte public key."""

    name: str
    public: bytes

    def __post_init__(self) -> None:
        _check_name("verifier key name", self.name)
        _check_public(self.public)

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        """Read a verifier key ``<name>+<hex key id>+<base64(0x01 ‖ public)>``.

        Raises ``ProofError`` if it is malformed, of another signature type, or
        its key id does not match its name and key.
        """
        name, _, rest = vkey.partition("+")
        hex_id, _, encoded = rest.partition("+")
        key = _b64decode(encoded)
        if not _HEX_KEY_ID.fullmatch(hex_id) or key is None or not key:
            raise ProofError(
                f"verifier key: expected <name>+<8 hex digits>+<base64 key>, got {_quote(vkey)}"
            )
        _check_name("verifier key name", name)
        return cls(name=name, public=_parse_key_material("verifier key", name, hex_id, key))

    @property
    def key_id(self) -> bytes:
        return _key_id(self.name, self.public)

    @property
    def key(self) -> str:
        """The verifier key string, to hand to whoever checks this key's notes."""
        material = base64.b64encode(bytes([SIG_TYPE_ED25519]) + self.public).decode()
        return f"{self.name}+{self.key_id.hex()}+{material}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` is this key's Ed25519 signature of ``message``."""
        return verify_signature(self.public, message, signature)

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True, repr=False)
class Signer:
    """An Ed25519 note key that signs: a name and a ``Keypair``."""

    name: str
    keypair: Keypair = field(repr=False)

    def __post_init__(self) -> None:
        _check_name("signer key name", self.name)

    @classmethod
    def parse(cls, skey: str) -> Signer:
        """Read a signer key ``PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 ‖ seed)>``.

        Raises ``ProofError`` if it is malformed, of another signature type, or
        its key id does not match its name and the public key of its seed.
        """
        # Never quote a signer key in an error: it is a secret.
        malformed = "signer key: expected PRIVATE+KEY+<name>+<8 hex digits>+<base64 key>"
        if not skey.startswith(_PRIVATE_PREFIX):
            raise ProofError(malformed)
        name, _, rest = skey[len(_PRIVATE_PREFIX) :].partition("+")
        hex_id, _, encoded = rest.partition("+")
        key = _b64decode(encoded)
        if not _HEX_KEY_ID.fullmatch(hex_id) or key is None or not key:
            raise ProofError(malformed)
        _check_name("signer key name", name)
        if key[0] != SIG_TYPE_ED25519:
            raise ProofError(
                f"signer key: expected signature type 0x{SIG_TYPE_ED25519:02x} (Ed25519), "
                f"got 0x{key[0]:02x}"
            )
        if len(key) != 1 + _ED25519_KEY_SIZE:
            raise ProofError(
                f"signer key: expected a {_ED25519_KEY_SIZE}-byte Ed25519 seed, "
                f"got {len(key) - 1} bytes"
            )
        try:
            keypair = Keypair.from_seed(key[1:])
        except InvalidMessage as exc:  # pragma: no cover - the length is checked above
            raise ProofError(f"signer key: {exc.detail}") from exc
        expected = _key_id(name, keypair.public).hex()
        if hex_id.lower() != expected:
            raise ProofError(f"signer key: expected key id {expected}, got {hex_id}")
        return cls(name=name, keypair=keypair)

    @property
    def key_id(self) -> bytes:
        return _key_id(self.name, self.keypair.public)

    @property
    def key(self) -> str:
        """The signer key string. Secret: anyone holding it can sign as this key."""
        material = base64.b64encode(bytes([SIG_TYPE_ED25519]) + self.keypair.seed).decode()
        return f"{_PRIVATE_PREFIX}{self.name}+{self.key_id.hex()}+{material}"

    @property
    def verifier(self) -> Verifier:
        return Verifier(name=self.name, public=self.keypair.public)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return self.keypair.sign(message)

    def __repr__(self) -> str:
        return f"Signer(name={self.name!r}, key_id={self.key_id.hex()!r})"


def verifier_key(name: str, public: bytes) -> str:
    """The verifier key string ``<name>+<hex key id>+<base64(0x01 ‖ public)>``.

    Raises ``ProofError`` for an invalid key name or a public key that is not 32 bytes.
    """
    return Verifier(name=name, public=public).key


def signer_key(name: str, keypair: Keypair) -> str:
    """The (secret) signer key string ``PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 ‖ seed)>``.

    Raises ``ProofError`` for an invalid key name.
    """
    return Signer(name=name, keypair=keypair).key


@dataclass(frozen=True)
class Signature:
    """One signature line of a note: key name, key id, and the signature bytes after the id."""

    name: str
    key_id: bytes
    signature: bytes

    @property
    def key(self) -> str:
        """``<name>+<hex key id>``, as errors and logs name a key."""
        return f"{self.name}+{self.key_id.hex()}"

    @property
    def line(self) -> str:
        encoded = base64.b64encode(self.key_id + self.signature).decode()
        return f"{_SIG_PREFIX}{self.name} {encoded}\n"


@dataclass(frozen=True)
class Note:
    """An opened note: its text (with the final newline) and its signatures.

    ``signatures`` verified against a trusted key; ``unverified`` are by keys
    the caller did not supply, kept so the note can be re-signed intact.
    """

    text: str
    signatures: tuple[Signature, ...]
    unverified: tuple[Signature, ...] = ()


def sign_note(note: str | Note, signer: Signer, *more: Signer) -> str:
    """The signed note text of ``note`` with one signature per signer.

    ``note`` is a text ending in a newline, or an opened ``Note`` whose
    signatures are kept (except those replaced by a signer with the same key
    name and id), as a witness co-signs. New signatures come last.

    Raises ``ProofError`` if the text does not end in a newline or contains a
    control character other than newline, or is not valid Unicode.
    """
    if isinstance(note, Note):
        text, kept = note.text, note.signatures + note.unverified
    else:
        text, kept = note, ()
    if not text.endswith("\n"):
        raise ProofError(
            f"malformed note: expected text ending in a newline, got {_quote(text[-_QUOTE:])}"
        )
    message = _encode_note("note text", text)
    _check_controls("note text", text)
    signers = (signer, *more)
    replaced = {(s.name, s.key_id) for s in signers}
    lines = [sig.line for sig in kept if (sig.name, sig.key_id) not in replaced]
    for s in signers:
        lines.append(Signature(s.name, s.key_id, s.sign(message)).line)
    return text + "\n" + "".join(lines)


def open_note(message: str | bytes, verifiers: Iterable[Verifier]) -> Note:
    """Parse a signed note and check its signatures against the trusted ``verifiers``.

    Signatures by unknown keys (no verifier with the same name *and* key id)
    are ignored and returned as ``unverified``. A repeated signature by the
    same key counts once.

    Raises ``ProofError`` if the note is malformed (not UTF-8, a control
    character other than newline, no blank line before the signatures, a bad
    signature line, more than ``MAX_SIGNATURES`` lines), if two different
    verifiers share a name and key id used by the note, if a known key's
    signature is invalid, or if no known key signed it.
    """
    text, sig_lines = _split_note(message)
    known: dict[tuple[str, bytes], list[Verifier]] = {}
    for verifier in verifiers:
        candidates = known.setdefault((verifier.name, verifier.key_id), [])
        if verifier not in candidates:
            candidates.append(verifier)

    signed = text.encode()
    verified: list[Signature] = []
    unverified: list[Signature] = []
    seen_known: set[tuple[str, bytes]] = set()
    seen_unknown: set[str] = set()
    for number, line in enumerate(sig_lines, start=1):
        sig = _parse_signature_line(number, line)
        ident = (sig.name, sig.key_id)
        candidates = known.get(ident, [])
        if not candidates:
            if line not in seen_unknown:
                seen_unknown.add(line)
                unverified.append(sig)
            continue
        if len(candidates) > 1:
            raise ProofError(f"ambiguous key {sig.key}: {len(candidates)} verifiers share it")
        if ident in seen_known:
            continue
        seen_known.add(ident)
        if not candidates[0].verify(signed, sig.signature):
            raise ProofError(f"invalid signature for key {sig.key}")
        verified.append(sig)

    if not verified:
        trusted = ", ".join(sorted(f"{n}+{i.hex()}" for n, i in known)) or "none"
        present = ", ".join(sig.key for sig in unverified) or "none"
        raise ProofError(
            f"note has no verifiable signatures: expected one by {trusted}, got {present}"
        )
    return Note(text=text, signatures=tuple(verified), unverified=tuple(unverified))


def _split_note(message: str | bytes) -> tuple[str, list[str]]:
    if isinstance(message, bytes | bytearray | memoryview):
        try:
            message = bytes(message).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProofError(
                f"malformed note: expected UTF-8, got an invalid byte at offset {exc.start}"
            ) from exc
    else:
        _encode_note("note", message)
    _check_controls("note", message)

    split = message.rfind(_SIG_SEPARATOR)
    if split < 0:
        raise ProofError("malformed note: expected a blank line before the signatures, got none")
    text, block = message[: split + 1], message[split + 2 :]
    if not block.endswith("\n"):
        raise ProofError(
            "malformed note: expected signature lines each ending in a newline, "
            f"got {_quote(block[-_QUOTE:])}"
        )
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise ProofError(
            f"malformed note: expected at most {MAX_SIGNATURES} signatures, got {len(lines)}"
        )
    return text, lines


def _parse_signature_line(number: int, line: str) -> Signature:
    where = f"malformed note: signature line {number}"
    if not line.startswith(_SIG_PREFIX):
        raise ProofError(f"{where}: expected '— <key name> <base64>', got {_quote(line)}")
    name, _, encoded = line[len(_SIG_PREFIX) :].partition(" ")
    if not _valid_name(name):
        raise ProofError(f"{where}: expected a key name without spaces or '+', got {_quote(name)}")
    raw = _b64decode(encoded)
    if raw is None:
        raise ProofError(f"{where}: expected base64, got {_quote(encoded)}")
    if len(raw) < _KEY_ID_SIZE + 1:
        raise ProofError(
            f"{where}: expected at least {_KEY_ID_SIZE + 1} bytes of key id and signature, "
            f"got {len(raw)}"
        )
    return Signature(name=name, key_id=raw[:_KEY_ID_SIZE], signature=raw[_KEY_ID_SIZE:])


# --- checkpoints -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A log's signed statement of its size and root (c2sp.org/tlog-checkpoint).

    ``origin`` names the log (DESIGN §4: ``<node origin>/<pipeline>``); ``root``
    is the 32-byte RFC 9162 root at ``size`` leaves; ``extensions`` are the
    optional extra lines, without newlines.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin:
            raise ProofError("malformed checkpoint: origin: expected a non-empty line, got ''")
        _check_line("origin", self.origin)
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise ProofError(f"malformed checkpoint: size: expected an integer, got {self.size!r}")
        if not 0 <= self.size <= _MAX_SIZE:
            raise ProofError(f"malformed checkpoint: size: expected 0 to 2**64-1, got {self.size}")
        if not isinstance(self.root, bytes) or len(self.root) != _ROOT_SIZE:
            got = len(self.root) if isinstance(self.root, bytes) else type(self.root).__name__
            raise ProofError(f"malformed checkpoint: root: expected {_ROOT_SIZE} bytes, got {got}")
        for number, extension in enumerate(self.extensions, start=1):
            if not extension:
                raise ProofError(
                    f"malformed checkpoint: extension line {number}: expected a non-empty line"
                )
            _check_line(f"extension line {number}", extension)

    def to_text(self) -> str:
        """The note text: origin, size, base64 root and extensions, each line ending in ``\\n``."""
        root = base64.b64encode(self.root).decode()
        return "".join(
            f"{line}\n" for line in (self.origin, str(self.size), root, *self.extensions)
        )

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Parse a checkpoint's note text (the part before the signatures).

        Raises ``ProofError`` if it does not end in a newline, has fewer than
        three lines, an empty origin or extension line, a size that is not
        plain decimal (no sign, no leading zeros) or above 2**64-1, or a root
        that is not the canonical base64 of 32 bytes.
        """
        if not text.endswith("\n"):
            raise ProofError(
                f"malformed checkpoint: expected text ending in a newline, "
                f"got {_quote(text[-_QUOTE:])}"
            )
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise ProofError(
                f"malformed checkpoint: expected at least 3 lines (origin, size, root), "
                f"got {len(lines)}"
            )
        origin, size_line, root_line, *extensions = lines
        if not _DECIMAL.fullmatch(size_line):
            raise ProofError(
                "malformed checkpoint: size: expected decimal digits without leading zeros, "
                f"got {_quote(size_line)}"
            )
        root = _b64decode(root_line)
        if root is None or len(root) != _ROOT_SIZE or base64.b64encode(root).decode() != root_line:
            raise ProofError(
                f"malformed checkpoint: root: expected canonical base64 of {_ROOT_SIZE} bytes, "
                f"got {_quote(root_line)}"
            )
        return cls(origin=origin, size=int(size_line), root=root, extensions=tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, name: str, keypair: Keypair) -> str:
    """The checkpoint as a note signed by ``keypair`` under key ``name`` (usually the origin).

    Raises ``ProofError`` for an invalid key name.
    """
    return sign_note(checkpoint.to_text(), Signer(name=name, keypair=keypair))


def verify_checkpoint(
    text: str | bytes,
    verifier: Verifier | str | tuple[str, bytes],
    *,
    origin: str | None = None,
) -> Checkpoint:
    """Open a signed checkpoint, check its signature and return it.

    ``verifier`` is a ``Verifier``, a verifier key string, or ``(name,
    public)``. With ``origin`` given, the checkpoint must be for that log.

    Raises ``ProofError`` if the verifier key or the note is malformed, the
    note is not validly signed by the verifier, the checkpoint text is
    malformed, or its origin differs from ``origin``.
    """
    if isinstance(verifier, str):
        verifier = Verifier.parse(verifier)
    elif isinstance(verifier, tuple):
        verifier = Verifier(name=verifier[0], public=verifier[1])
    note = open_note(text, [verifier])
    checkpoint = Checkpoint.from_text(note.text)
    if origin is not None and checkpoint.origin != origin:
        raise ProofError(
            f"checkpoint origin: expected {_quote(origin)}, got {_quote(checkpoint.origin)}"
        )
    return checkpoint


# --- helpers ---------------------------------------------------------------------------------


def _parse_key_material(what: str, name: str, hex_id: str, key: bytes) -> bytes:
    """The public key in ``0x01 ‖ public`` after checking the key id (Go's order of checks)."""
    expected = hashlib.sha256(name.encode() + b"\n" + key).digest()[:_KEY_ID_SIZE].hex()
    if hex_id.lower() != expected:
        raise ProofError(f"{what}: expected key id {expected}, got {hex_id}")
    if key[0] != SIG_TYPE_ED25519:
        raise ProofError(
            f"{what}: expected signature type 0x{SIG_TYPE_ED25519:02x} (Ed25519), "
            f"got 0x{key[0]:02x}"
        )
    if len(key) != 1 + _ED25519_KEY_SIZE:
        raise ProofError(
            f"{what}: expected a {_ED25519_KEY_SIZE}-byte Ed25519 public key, "
            f"got {len(key) - 1} bytes"
        )
    return key[1:]


def _valid_name(name: str) -> bool:
    # Spec: non-empty, no Unicode spaces, no '+'. Control characters cannot
    # appear in a note at all, so a name holding one could never sign.
    return (
        bool(name)
        and "+" not in name
        and not any(ch.isspace() or ch < " " for ch in name)
        and _utf8_ok(name)
    )


def _check_name(what: str, name: str) -> None:
    if not isinstance(name, str) or not _valid_name(name):
        raise ProofError(
            f"{what}: expected non-empty text without spaces or '+', got {_quote(name)}"
        )


def _check_public(public: bytes) -> None:
    if not isinstance(public, bytes) or len(public) != _ED25519_KEY_SIZE:
        got = len(public) if isinstance(public, bytes) else type(public).__name__
        raise ProofError(f"Ed25519 public key: expected {_ED25519_KEY_SIZE} bytes, got {got}")


def _check_line(what: str, line: str) -> None:
    if not isinstance(line, str):
        raise ProofError(f"malformed checkpoint: {what}: expected text, got {type(line).__name__}")
    _encode_note(f"checkpoint {what}", line)
    if "\n" in line:
        raise ProofError(f"malformed checkpoint: {what}: expected one line, got {_quote(line)}")
    _check_controls(f"checkpoint {what}", line)


def _check_controls(what: str, text: str) -> None:
    found = _CONTROL.search(text)
    if found:
        raise ProofError(
            f"malformed {what}: expected no control characters but newline, "
            f"got U+{ord(found.group()):04X} at offset {found.start()}"
        )


def _encode_note(what: str, text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ProofError(
            f"malformed {what}: expected valid Unicode, got a lone surrogate at offset {exc.start}"
        ) from exc


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _b64decode(text: str) -> bytes | None:
    """Standard padded base64 (RFC 4648 §4), or ``None``: never a raw exception."""
    # The pattern refuses what binascii lets through: excess "=" padding.
    if not text or not _BASE64.fullmatch(text):
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _quote(text: object) -> str:
    shown = repr(text)
    return shown if len(shown) <= _QUOTE else shown[: _QUOTE - 3] + "..."
