"""Signed inbox requests: RFC 9421 HTTP Message Signatures, chainmail's profile (DESIGN §8).

A signed request carries two headers::

    Signature-Input: sig1=("@method" "@path" "@query");created=1700000000;\
keyid="@….ed25519";alg="ed25519";nonce="…"
    Signature: sig1=:<base64 of the 64-byte ed25519 signature>:

The signature covers the signature base of RFC 9421 §2.5, for example::

    "@method": GET
    "@path": /v1/inbox
    "@query": ?limit=10
    "@signature-params": ("@method" "@path" "@query");created=1700000000;keyid="@…"…

A request with a body (an ack) may also sign its RFC 9530 digest, covering
``("@method" "@path" "@query" "content-digest")`` with a ``Content-Digest:
sha-256=:<base64>:`` header; the SDK always does, and a node may require it.

``keyid`` is the caller's feed id, so the key needs no lookup: the feed id *is*
the ed25519 public key. ``created`` must lie within ``window_s`` of the node's
clock and each ``(keyid, nonce)`` is accepted once.

The Structured Field syntax of both headers (RFC 8941) is parsed in full for
dictionaries, inner lists, items and parameters; whatever does not parse, or
parses but falls outside the profile, is ``Unauthorized``.

Everything here is pure and takes time as a parameter, except ``HttpSigAuth``,
the httpx hook the SDK uses, which reads a clock it is given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final, TypeAlias, TypeGuard

import httpx

from chainmail.errors import InvalidMessage, RateLimited, Unauthorized
from chainmail.ids import FeedId, feed_public_key
from chainmail.keys import Keypair, verify_signature

__all__ = [
    "ALGORITHM",
    "COVERED_COMPONENTS",
    "COVERED_WITH_DIGEST",
    "DEFAULT_MAX_NONCES",
    "DEFAULT_WINDOW_S",
    "LABEL",
    "HttpSigAuth",
    "NonceCache",
    "SignedRequest",
    "client_source",
    "content_digest",
    "sign_request",
    "signature_base",
    "verify_headers",
    "verify_request",
]

#: The only algorithm of the profile (RFC 9421 §3.3.6).
ALGORITHM: Final = "ed25519"
#: The signature label chainmail's signers use; verifiers accept any label.
LABEL: Final = "sig1"
#: The covered components, in this order and with no component parameters.
COVERED_COMPONENTS: Final[tuple[str, ...]] = ("@method", "@path", "@query")
#: ... and, for a request with a body, its RFC 9530 ``Content-Digest`` too: the
#: profile above signs no body, so anyone on the path could change an ack's ids.
COVERED_WITH_DIGEST: Final[tuple[str, ...]] = (*COVERED_COMPONENTS, "content-digest")
#: How far ``created`` may be from the node's clock, either way (DESIGN §8).
DEFAULT_WINDOW_S: Final = 60
#: Bound on the replay cache (``NonceCache``): beyond it the heaviest signer makes room.
DEFAULT_MAX_NONCES: Final = 1_000_000

_NONCE_BYTES: Final = 16
# Every live nonce is held for 2 × the window and the cache counts entries, not
# bytes, so a nonce must be short for that count to bound memory (the SDK's
# are 22 characters; a UUID is 36).
_MAX_NONCE_CHARS: Final = 128
# Both headers are parsed character by character on the event loop before any
# signature is checked: a megabyte of header would hold every request up.
# The profile's fit in a few hundred characters.
_MAX_HEADER_CHARS: Final = 8192
_SIG_BYTES: Final = 64
_SIGNATURE_INPUT: Final = "signature-input"
_SIGNATURE: Final = "signature"
_PROFILE_TEXT: Final = '("@method" "@path" "@query"), optionally followed by "content-digest"'
_CONTENT_DIGEST: Final = "content-digest"
#: RFC 9530's active algorithms, by their Content-Digest keys.
_DIGESTS: Final = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
# Parameters a signer may add beyond the required ones; anything else is refused
# so that every accepted parameter has a meaning here.
_REQUIRED_PARAMS: Final = frozenset({"created", "keyid", "nonce"})
_OPTIONAL_PARAMS: Final = frozenset({"alg", "expires", "tag"})


# --- Structured Field Values (RFC 8941), the subset two headers need -------------------


class Token(str):
    """An sf-token (``foo``), kept apart from an sf-string (``"foo"``)."""

    __slots__ = ()


BareItem: TypeAlias = int | Decimal | str | bytes | bool
Params: TypeAlias = dict[str, BareItem]


@dataclass(frozen=True)
class _Item:
    value: BareItem
    params: Params


@dataclass(frozen=True)
class _InnerList:
    items: tuple[_Item, ...]
    params: Params


_Member: TypeAlias = _Item | _InnerList


class _ParseError(Exception):
    """Malformed Structured Field text; callers turn it into ``Unauthorized``."""


_DIGITS: Final = frozenset("0123456789")
_LCALPHA: Final = frozenset("abcdefghijklmnopqrstuvwxyz")
_ALPHA: Final = _LCALPHA | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_KEY_FIRST: Final = _LCALPHA | {"*"}
_KEY_CHARS: Final = _LCALPHA | _DIGITS | frozenset("_-.*")
_TCHAR: Final = _ALPHA | _DIGITS | frozenset("!#$%&'*+-.^_`|~")
_TOKEN_CHARS: Final = _TCHAR | frozenset(":/")
_BASE64_CHARS: Final = _ALPHA | _DIGITS | frozenset("+/=")
_MAX_INT_DIGITS: Final = 15


class _Parser:
    """RFC 8941 §4.2 parsing over one field value; raises ``_ParseError``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def _fail(self, expected: str) -> _ParseError:
        if self.pos >= len(self.text):
            return _ParseError(f"expected {expected}, got end of input")
        return _ParseError(f"expected {expected} at offset {self.pos}, got {self.text[self.pos]!r}")

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _skip(self, chars: str) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1

    def dictionary(self) -> dict[str, _Member]:
        self._skip(" ")
        members: dict[str, _Member] = {}
        while self.pos < len(self.text):
            key = self._key()
            member: _Member
            if self._peek() == "=":
                self.pos += 1
                member = self._item_or_inner_list()
            else:
                member = _Item(True, self._params())
            members[key] = member  # RFC 8941: a repeated key overwrites
            self._skip(" \t")
            if self.pos >= len(self.text):
                break
            if self._peek() != ",":
                raise self._fail("',' between dictionary members")
            self.pos += 1
            self._skip(" \t")
            if self.pos >= len(self.text):
                raise self._fail("a dictionary member after ','")
        return members

    def _item_or_inner_list(self) -> _Member:
        if self._peek() == "(":
            return self._inner_list()
        return self._item()

    def _inner_list(self) -> _InnerList:
        self.pos += 1  # "("
        items: list[_Item] = []
        while self.pos < len(self.text):
            self._skip(" ")
            if self._peek() == ")":
                self.pos += 1
                return _InnerList(tuple(items), self._params())
            items.append(self._item())
            if self._peek() not in (" ", ")"):
                raise self._fail("' ' or ')' in inner list")
        raise self._fail("')' closing the inner list")

    def _item(self) -> _Item:
        value = self._bare_item()
        return _Item(value, self._params())

    def _params(self) -> Params:
        params: Params = {}
        while self._peek() == ";":
            self.pos += 1
            self._skip(" ")
            key = self._key()
            value: BareItem = True
            if self._peek() == "=":
                self.pos += 1
                value = self._bare_item()
            params[key] = value
        return params

    def _key(self) -> str:
        if self._peek() not in _KEY_FIRST:
            raise self._fail("a key (lowercase letter or '*')")
        start = self.pos
        while self._peek() in _KEY_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def _bare_item(self) -> BareItem:
        char = self._peek()
        if char == "-" or char in _DIGITS:
            return self._number()
        if char == '"':
            return self._string()
        if char == ":":
            return self._byte_sequence()
        if char == "?":
            return self._boolean()
        if char == "*" or char in _ALPHA:
            return self._token()
        raise self._fail("an item")

    def _number(self) -> int | Decimal:
        sign = 1
        if self._peek() == "-":
            self.pos += 1
            sign = -1
        if self._peek() not in _DIGITS:
            raise self._fail("a digit")
        start = self.pos
        is_decimal = False
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in _DIGITS:
                self.pos += 1
            elif char == "." and not is_decimal:
                if self.pos - start > 12:
                    raise _ParseError("decimal has more than 12 integer digits")
                is_decimal = True
                self.pos += 1
            else:
                break
            if not is_decimal and self.pos - start > _MAX_INT_DIGITS:
                raise _ParseError("integer has more than 15 digits")
            if is_decimal and self.pos - start > 16:
                raise _ParseError("decimal has more than 16 characters")
        number = self.text[start : self.pos]
        if not is_decimal:
            return sign * int(number)
        if number.endswith(".") or len(number.split(".")[1]) > 3:
            raise _ParseError("decimal must have 1 to 3 fractional digits")
        return sign * Decimal(number)

    def _string(self) -> str:
        self.pos += 1  # '"'
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\":
                if self._peek() not in ('"', "\\"):
                    raise self._fail("'\"' or '\\' after '\\' in string")
                out.append(self.text[self.pos])
                self.pos += 1
            elif char == '"':
                return "".join(out)
            elif not " " <= char <= "~":
                self.pos -= 1
                raise self._fail("a printable ASCII character in string")
            else:
                out.append(char)
        raise self._fail("'\"' closing the string")

    def _token(self) -> Token:
        start = self.pos
        self.pos += 1
        while self._peek() in _TOKEN_CHARS:
            self.pos += 1
        return Token(self.text[start : self.pos])

    def _byte_sequence(self) -> bytes:
        self.pos += 1  # ":"
        end = self.text.find(":", self.pos)
        if end < 0:
            raise self._fail("':' closing the byte sequence")
        encoded = self.text[self.pos : end]
        if not set(encoded) <= _BASE64_CHARS:
            raise self._fail("base64 in byte sequence")
        self.pos = end + 1
        if "=" not in encoded:
            # RFC 8941 §4.2.7: parsers should not insist on "=" padding.
            encoded += "=" * (-len(encoded) % 4)
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _ParseError(f"byte sequence is not valid base64: {exc}") from exc

    def _boolean(self) -> bool:
        self.pos += 1  # "?"
        char = self._peek()
        if char not in ("0", "1"):
            raise self._fail("'0' or '1' after '?'")
        self.pos += 1
        return char == "1"


def _serialize_string(value: str) -> str:
    if not all(" " <= char <= "~" for char in value):
        raise ValueError(f"not printable ASCII, cannot be an sf-string: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _serialize_bare(value: int | str) -> str:
    if isinstance(value, bool):
        raise TypeError("booleans are not signature parameters of this profile")
    if isinstance(value, int):
        if abs(value) >= 10**_MAX_INT_DIGITS:
            raise ValueError(f"integer out of sf-integer range: {value}")
        return str(value)
    return _serialize_string(value)


def _serialize_signature_params(
    components: Sequence[str], params: Sequence[tuple[str, int | str]]
) -> str:
    inner = " ".join(_serialize_string(name) for name in components)
    return f"({inner})" + "".join(f";{key}={_serialize_bare(value)}" for key, value in params)


# --- Signature base (RFC 9421 §2.5) -----------------------------------------------------


def signature_base(
    components: Sequence[tuple[str, str]], params: Sequence[tuple[str, int | str]]
) -> bytes:
    """The bytes an RFC 9421 signature signs.

    ``components`` are ``(component name, component value)`` pairs in covered
    order (e.g. ``("@path", "/v1/inbox")``), ``params`` the signature
    parameters in their serialized order. Component names are written without
    component parameters, which is all this profile (and RFC 9421 B.2.6) needs.

    Raises ``ValueError`` when a name repeats or is ``@signature-params``, or a
    value is not printable ASCII (a newline would forge an extra line);
    ``TypeError`` for a boolean parameter value.
    """
    lines: list[str] = []
    seen: set[str] = set()
    for name, value in components:
        if name in seen or name == "@signature-params":
            raise ValueError(f"component {name!r} may not be covered (repeated or reserved)")
        seen.add(name)
        if not all(" " <= char <= "~" for char in value):
            raise ValueError(f"component {name!r} value is not printable ASCII: {value!r}")
        lines.append(f"{_serialize_string(name)}: {value}")
    signature_params = _serialize_signature_params([name for name, _ in components], params)
    lines.append(f'"@signature-params": {signature_params}')
    return "\n".join(lines).encode("ascii")


def _profile_components(method: str, path: str, query: str) -> list[tuple[str, str]]:
    # RFC 9421 §2.2.1: the method as sent, no case change; §2.2.6: an empty
    # path is "/"; §2.2.7: the query keeps its percent-encoding and an absent
    # query is "?" alone.
    return [("@method", method), ("@path", path or "/"), ("@query", "?" + query)]


def content_digest(body: bytes) -> str:
    """The RFC 9530 ``Content-Digest`` field value of ``body``: ``sha-256=:<base64>:``."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode('ascii')}:"


# --- Signing -------------------------------------------------------------------------


def sign_request(
    keys: Keypair,
    method: str,
    path: str,
    query: str,
    *,
    created: int,
    nonce: str | None = None,
    body: bytes | None = None,
) -> dict[str, str]:
    """The ``Signature-Input`` and ``Signature`` headers for one request.

    ``path`` is the percent-encoded path as it goes on the wire, ``query`` the
    raw query string without its leading ``?`` (``""`` when there is none),
    ``created`` the UNIX time in whole seconds. ``nonce`` defaults to 128
    random bits; pass one only to make a signature reproducible. With
    ``body``, its ``Content-Digest`` header comes too, and is signed
    (``COVERED_WITH_DIGEST``).

    Raises ``ValueError`` when the method, path, query or nonce is not
    printable ASCII or the nonce is empty or longer than 128 characters,
    ``TypeError`` when ``created`` is not an ``int``.
    """
    if isinstance(created, bool) or not isinstance(created, int):
        raise TypeError(f"created must be an int, got {type(created).__name__}")
    if nonce is None:
        nonce = secrets.token_urlsafe(_NONCE_BYTES)
    if not nonce:
        raise ValueError("nonce must not be empty")
    if len(nonce) > _MAX_NONCE_CHARS:
        raise ValueError(f"nonce of {len(nonce)} characters, at most {_MAX_NONCE_CHARS}")
    params: list[tuple[str, int | str]] = [
        ("created", created),
        ("keyid", keys.id),
        ("alg", ALGORITHM),
        ("nonce", nonce),
    ]
    components = _profile_components(method, path, query)
    extra: dict[str, str] = {}
    if body is not None:
        extra["Content-Digest"] = content_digest(body)
        components.append((_CONTENT_DIGEST, extra["Content-Digest"]))
    base = signature_base(components, params)
    signature = base64.b64encode(keys.sign(base)).decode("ascii")
    covered = [name for name, _ in components]
    return {
        **extra,
        "Signature-Input": f"{LABEL}={_serialize_signature_params(covered, params)}",
        "Signature": f"{LABEL}=:{signature}:",
    }


# --- Replay protection ---------------------------------------------------------------


class _Signer:
    """One key's live nonces in the cache, oldest first, and its floor."""

    __slots__ = ("floor", "head", "keyid", "nonces", "source")

    def __init__(self, keyid: str, source: str) -> None:
        self.keyid = keyid  # the one copy of the string every entry of the key shares
        #: Where the key's first request came from (``client_source``; "" unknown): the
        #: address its nonces count against while it holds any.
        self.source = source
        # A list read from ``head`` on (a deque is ~600 bytes even for one
        # nonce, and most keys hold one or two).
        self.nonces: list[str] = []
        self.head = 0
        #: Signatures created at or before this are refused (None: none are).
        self.floor: int | None = None

    def __len__(self) -> int:
        return len(self.nonces) - self.head

    def oldest(self) -> str:
        return self.nonces[self.head]

    def pop_oldest(self) -> str:
        nonce = self.nonces[self.head]
        self.head += 1
        if self.head * 2 >= len(self.nonces):
            del self.nonces[: self.head]
            self.head = 0
        return nonce

    def remove(self, nonce: str) -> None:
        """Forget ``nonce`` wherever it is (a clock stepped back: rare, and linear)."""
        del self.nonces[self.nonces.index(nonce, self.head)]


class NonceCache:
    """The ``(keyid, nonce)`` pairs accepted recently, for replay detection.

    A nonce must be remembered as long as a request carrying it could still be
    accepted: its ``created`` may be up to ``window_s`` ahead of the clock when
    first seen and stays acceptable until ``window_s`` after that, so entries
    live ``2 × window_s`` seconds. Use the same ``window_s`` as
    ``verify_request``. Not thread-safe: meant for one asyncio event loop.

    Memory is bounded by ``max_entries`` (~290 bytes an entry with the SDK's
    nonces, ~650 with 128-character ones from as many keys), and no live
    nonce is forgotten without its replay staying refused. When the cache is
    full, the key holding the largest share of it, if that is more than
    ``max_entries // 1000`` entries (a flooding signer; an honest one polling
    every second holds 120), gives up the older half of its nonces, and that
    key's signatures created up to when the newest of them could have been
    are refused for up to ``window_s`` + 1 seconds (``check_created``, a
    per-key ``RateLimited``). So one signer, or a few, cannot lock the others
    out; when no key holds that many (a flood from many keys) a new nonce is
    refused with ``RateLimited``. Either way the work a request costs is
    bounded by what it drops.

    A flood from many keys is held back by where it comes from: once the
    cache is half full, a client address (``client_source``) whose keys hold
    ``max_entries // 100`` nonces or more gets ``RateLimited`` for a new one,
    so one machine, or a few dozen, cannot fill the cache for everyone. A
    key's nonces count against the address of its first request while it
    holds any.

    The cache also keeps the latest clock it was given: a ``created`` more
    than ``window_s`` before it is refused even when the caller's clock is
    older (it stepped back, or a request's body took long to arrive), since
    the nonces of that time may have been pruned.
    """

    def __init__(
        self,
        window_s: int = DEFAULT_WINDOW_S,
        max_entries: int = DEFAULT_MAX_NONCES,
        *,
        not_before: int | None = None,
    ) -> None:
        """Raises ``ValueError`` for a negative window or fewer than one entry.

        ``not_before`` (UNIX seconds): signatures created earlier are refused
        (``verify_headers``). A node passes the time it started: the nonces it
        saw before are gone with its memory, so a request signed then may be a
        replay.
        """
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._window = window_s
        self._ttl = 2 * window_s
        self._max_entries = max_entries
        self.not_before = not_before
        #: A key holding more entries than this may be made to drop some when full.
        self._heavy_above = max(1, max_entries // 1000)
        #: Past this many entries, an address holding ``_source_share`` is refused more.
        self._pressure = max_entries // 2
        self._source_share = max(1, max_entries // 100)
        #: Live nonces by the source of their key (``_Signer.source``), sources with any.
        self._sources: dict[str, int] = {}
        # Insertion order is expiry order while the clock moves forward; if it
        # steps back, entries merely outlive their time, never the reverse.
        self._expiry: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._signers: dict[str, _Signer] = {}
        #: Keys holding more than ``_heavy_above`` entries.
        self._heavy: set[str] = set()
        #: Keys with a floor (``_Signer.floor``), in about the order the floors end.
        self._floors: OrderedDict[str, _Signer] = OrderedDict()
        #: The latest clock seen (``seen``; UNIX seconds, 0 before the first).
        self._latest = 0

    def __len__(self) -> int:
        """Live nonces and per-key floors held: what ``max_entries`` bounds."""
        return len(self._expiry) + len(self._floors)

    def _signer(self, keyid: str, source: str) -> _Signer:
        signer = self._signers.get(keyid)
        if signer is None:
            signer = self._signers[keyid] = _Signer(keyid, source)
        return signer

    def _count(self, signer: _Signer, change: int) -> None:
        """``change`` nonces of ``signer`` recorded (or, negative, forgotten)."""
        if signer.source:
            left = self._sources.get(signer.source, 0) + change
            if left > 0:
                self._sources[signer.source] = left
            else:
                self._sources.pop(signer.source, None)

    def held_by(self, source: str) -> int:
        """Live nonces of the keys that first came from ``source``."""
        return self._sources.get(source, 0)

    def _settle(self, signer: _Signer) -> None:
        """Keep ``_heavy`` and ``_signers`` in step with ``signer``'s count."""
        if len(signer) > self._heavy_above:
            self._heavy.add(signer.keyid)
        else:
            self._heavy.discard(signer.keyid)
            if not signer and signer.floor is None:
                del self._signers[signer.keyid]

    def _prune(self, now: int) -> None:
        while self._expiry:
            key, expiry = next(iter(self._expiry.items()))
            if expiry >= now:
                break
            del self._expiry[key]
            signer = self._signers[key[0]]
            # The oldest entry overall is its key's oldest, unless a clock stepped back.
            if signer.oldest() == key[1]:
                signer.pop_oldest()
            else:
                signer.remove(key[1])
            self._count(signer, -1)
            self._settle(signer)
        # A floor older than the window refuses nothing the window would accept.
        while self._floors:
            keyid, signer = next(iter(self._floors.items()))
            if signer.floor is not None and signer.floor >= now - self._window:
                return
            del self._floors[keyid]
            signer.floor = None
            self._settle(signer)

    def check_created(self, keyid: str, created: int, now: int) -> None:
        """Refuses a signature of ``keyid`` created at ``created`` that could be a replay
        of a nonce no longer held.

        Raises ``Unauthorized`` when ``created`` is more than the window before
        the latest clock the cache was given (later than ``now``), and
        ``RateLimited`` when ``keyid`` filled the cache and ``created`` is at
        or before its floor.
        """
        latest = max(self._latest, now)
        if latest - created > self._window:
            raise Unauthorized(
                f"created {latest - created} s before the node's clock (limit {self._window})"
            )
        signer = self._signers.get(keyid)
        if signer is not None and signer.floor is not None and created <= signer.floor:
            raise RateLimited(
                "this key made the largest share of the signed requests in the replay"
                f" window: its signatures created up to {signer.floor} are refused for now",
                retry_after=float(max(1, signer.floor - now + 1)),
            )

    def live(self, keyid: str, nonce: str, now: int) -> bool:
        """True when ``(keyid, nonce)`` was recorded and is still live; records nothing."""
        expiry = self._expiry.get((keyid, nonce))
        return expiry is not None and expiry >= now

    def seen(self, keyid: str, nonce: str, now: int, created: int, source: str = "") -> bool:
        """True when ``(keyid, nonce)`` was recorded and is still live; else record it.

        ``created`` is the signature's: what ``check_created`` refuses raises
        here too. ``source`` is where the request came from (``client_source``;
        "" when unknown, which no address share limits). When the cache is
        full a heavy key's older nonces make room (the class's rules); raises
        ``RateLimited`` when none can, or when ``source`` holds its share of a
        cache half full.
        """
        self._latest = max(self._latest, now)
        self._prune(now)
        self.check_created(keyid, created, now)
        if self.live(keyid, nonce, now):
            return True
        signer = self._signer(keyid, source)
        key = (signer.keyid, nonce)
        if key in self._expiry:  # expired, but behind a live one (a clock stepped back)
            del self._expiry[key]
            signer.remove(nonce)
            self._count(signer, -1)
        if (
            signer.source
            and len(self) >= self._pressure
            and self.held_by(signer.source) >= self._source_share
        ):
            raise self._refusal(signer, "from this address ", now)
        if len(self) >= self._max_entries and not self._drop_heaviest():
            raise self._refusal(signer, "", now)
        self._expiry[key] = now + self._ttl
        signer.nonces.append(nonce)
        self._count(signer, 1)
        self._settle(signer)
        return False

    def _refusal(self, signer: _Signer, whence: str, now: int) -> RateLimited:
        """A new nonce of ``signer`` refused (it leaves nothing behind), retried once the
        oldest entry ends."""
        self._settle(signer)
        oldest = next(iter(self._expiry.values()), now)
        return RateLimited(
            f"too many signed requests {whence}in the replay window",
            retry_after=float(max(1, oldest - now + 1)),
        )

    def _drop_heaviest(self) -> bool:
        """Room made by dropping the older half of the heaviest key's nonces."""
        if not self._heavy:
            return False
        heaviest = self._signers[max(self._heavy, key=lambda k: len(self._signers[k]))]
        # A new floor takes an entry's room itself, so then two must go (a heavy
        # key holds two or more).
        wanted = max(len(heaviest) // 2, 1 if heaviest.floor is not None else 2)
        latest = 0
        for _ in range(wanted):
            key = (heaviest.keyid, heaviest.pop_oldest())
            latest = max(latest, self._expiry.pop(key))
        self._count(heaviest, -wanted)
        # A nonce recorded at t (expiry t + 2w) was created at most w after t.
        floor = latest - self._ttl + self._window
        if heaviest.floor is not None:
            floor = max(floor, heaviest.floor)
            del self._floors[heaviest.keyid]  # to the end: its floor ends last now
        heaviest.floor = floor
        self._floors[heaviest.keyid] = heaviest
        self._settle(heaviest)
        return True


# --- Verification --------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str, display: str) -> str:
    # RFC 9110 §5.3: repeated field lines mean their values joined by commas,
    # which is also how RFC 8941 dictionaries spread over several lines.
    found = [value for key, value in headers.items() if str(key).lower() == name]
    if not found:
        raise Unauthorized(f"missing {display} header")
    if not all(isinstance(value, str) for value in found):
        raise Unauthorized(f"{display} header is not text")
    # RFC 9421 §2.1: each line's value without its surrounding whitespace.
    field = ", ".join(value.strip(" \t") for value in found)
    if len(field) > _MAX_HEADER_CHARS:
        raise Unauthorized(
            f"{display} header of {len(field)} characters, at most {_MAX_HEADER_CHARS}"
        )
    return field


def _dictionary(field: str, display: str) -> dict[str, _Member]:
    try:
        members = _Parser(field).dictionary()
    except _ParseError as exc:
        raise Unauthorized(f"malformed {display} header: {exc}") from exc
    if not members:
        raise Unauthorized(f"{display} header is empty")
    return members


def _is_sf_string(value: BareItem) -> TypeGuard[str]:
    return isinstance(value, str) and not isinstance(value, Token)


def _is_sf_integer(value: BareItem) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _covered(member: _Member) -> tuple[str, ...] | None:
    """The member's covered components if they are one of the profile's, else None."""
    if not isinstance(member, _InnerList):
        return None
    # Component parameters (;sf, ;req, …) change what a component means, so an
    # item carrying any does not match the profile.
    names = tuple(
        item.value if _is_sf_string(item.value) and not item.params else "" for item in member.items
    )
    return names if names in (COVERED_COMPONENTS, COVERED_WITH_DIGEST) else None


def _is_profile(member: _Member) -> bool:
    return _covered(member) is not None


def _choose_label(inputs: dict[str, _Member]) -> str:
    for label, member in inputs.items():
        if _is_profile(member) and "keyid" in member.params:
            return label
    return next(iter(inputs))


@dataclass(frozen=True)
class _Params:
    """The signature parameters of one accepted ``Signature-Input`` member."""

    keyid: str
    created: int
    nonce: str
    expires: int | None
    ordered: tuple[tuple[str, int | str], ...]  # as received, for the signature base


def _profile_params(params: Params) -> _Params:
    missing = sorted(_REQUIRED_PARAMS - params.keys())
    if missing:
        raise Unauthorized(f"missing {missing[0]} parameter in Signature-Input")
    ints: dict[str, int] = {}
    strings: dict[str, str] = {}
    ordered: list[tuple[str, int | str]] = []
    for name, value in params.items():
        if name not in _REQUIRED_PARAMS | _OPTIONAL_PARAMS:
            raise Unauthorized(f"unsupported signature parameter {name!r}")
        if name in ("created", "expires"):
            if not _is_sf_integer(value):
                raise Unauthorized(f"{name} must be an integer, got {value!r}")
            ints[name] = value
            ordered.append((name, value))
        else:
            if not _is_sf_string(value):
                raise Unauthorized(f"{name} must be a string, got {value!r}")
            strings[name] = value
            ordered.append((name, value))
    if not strings["nonce"]:
        raise Unauthorized("nonce must not be empty")
    if len(strings["nonce"]) > _MAX_NONCE_CHARS:
        raise Unauthorized(
            f"nonce of {len(strings['nonce'])} characters, at most {_MAX_NONCE_CHARS}"
        )
    if strings.get("alg", ALGORITHM) != ALGORITHM:
        raise Unauthorized(f'alg must be "{ALGORITHM}", got {strings["alg"]!r}')
    return _Params(
        keyid=strings["keyid"],
        created=ints["created"],
        nonce=strings["nonce"],
        expires=ints.get("expires"),
        ordered=tuple(ordered),
    )


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request whose signature verified (``verify_headers``), before its body is read.

    ``content_digest`` is the ``Content-Digest`` field value the signature
    covers, None when it covers no body.
    """

    keyid: FeedId
    content_digest: str | None
    #: The known digests ``content_digest`` holds, by algorithm (RFC 9530).
    digests: tuple[tuple[str, bytes], ...] = ()
    #: Where ``check_body`` records the nonce once the whole request passed
    #: (None: nowhere), the nonce, and the clock it was checked at.
    nonces: NonceCache | None = field(default=None, repr=False, compare=False)
    nonce: str = ""
    now: int = 0
    created: int = 0
    #: Where the request came from (``client_source``), for the cache's address share.
    source: str = ""

    def check_body(self, body: bytes | None, *, require_digest: bool = False) -> FeedId:
        """The signer, once ``body`` (None or empty: none) is what the signature covers.

        A covered ``Content-Digest`` must hold a ``sha-256`` or ``sha-512``
        digest, and every one it holds must be the body's; with
        ``require_digest`` a request with a body must cover it. Only then is
        the nonce recorded: a request refused for its body (or by anything the
        server checks between the two steps) leaves it unused. Raises
        ``Unauthorized``, and ``RateLimited`` when the nonces are full or the
        signer is below its floor (``NonceCache``).
        """
        if self.content_digest is not None:
            for name, digest in self.digests:
                if digest != _DIGESTS[name](body or b"").digest():
                    raise Unauthorized(f"Content-Digest {name} is not the digest of the body")
        elif require_digest and body:
            raise Unauthorized(
                'this node needs a request body\'s Content-Digest signed: cover "content-digest"'
            )
        # A second copy of this request may have passed verify_headers meanwhile.
        if self.nonces is not None and self.nonces.seen(
            self.keyid, self.nonce, self.now, self.created, self.source
        ):
            raise Unauthorized("nonce replayed")
        return self.keyid


def verify_request(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    *,
    now: int,
    nonces: NonceCache,
    window_s: int = DEFAULT_WINDOW_S,
    body: bytes | None = None,
    require_digest: bool = False,
    source: str = "",
) -> FeedId:
    """The feed id that signed this request and its ``body``: ``verify_headers``,
    then ``SignedRequest.check_body``.

    ``body`` is the request's body (None or empty: none). When the signature
    covers ``content-digest``, the ``Content-Digest`` header must hold a
    ``sha-256`` or ``sha-512`` digest, and every one it holds must be the
    body's; with ``require_digest`` a request with a body must be signed so.
    A server should call the two steps itself, reading the body in between:
    the signature needs only the headers, so a request nobody signed is
    refused before its body is read.

    Raises what ``verify_headers`` and ``check_body`` raise.
    """
    signed = verify_headers(
        method, path, query, headers, now=now, nonces=nonces, window_s=window_s, source=source
    )
    return signed.check_body(body, require_digest=require_digest)


def verify_headers(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    *,
    now: int,
    nonces: NonceCache,
    window_s: int = DEFAULT_WINDOW_S,
    source: str = "",
) -> SignedRequest:
    """The signer of this request, after checking the whole profile but the body.

    ``path`` must be the path as received, still percent-encoded (ASGI
    ``raw_path``, not the decoded ``path``), and ``query`` the raw query
    string without ``?``. ``headers`` are looked up case-insensitively.
    Among several signatures, the first whose covered components match the
    profile is checked (else the first, which then fails).

    Checks, in order: both headers are at most 8,192 characters and parse
    (RFC 8941); the covered components are exactly
    ``("@method" "@path" "@query")``, or those and ``"content-digest"``
    (whose header must then hold a ``sha-256`` or ``sha-512`` digest,
    checked against the body by ``SignedRequest.check_body``); ``created``, ``keyid`` and ``nonce``
    are present and well-typed, the nonce is 1 to 128 characters, ``alg``
    (if given) is ``ed25519`` and no other parameter than ``expires`` or
    ``tag`` appears; ``keyid`` is a feed id; ``created`` is at most
    ``window_s`` from ``now`` either way, not before ``nonces.not_before``,
    and ``expires`` (if given) has not passed; the signature verifies;
    ``nonces.check_created`` passes; the
    nonce is not live in ``nonces``. The nonce is recorded by
    ``check_body``, once the body passed too, so neither a forged request
    nor a signed one refused for its body uses it up. ``source`` is where the
    request came from (``client_source``), which ``NonceCache`` limits to a
    share of the cache under a flood.

    Raises ``Unauthorized`` whose detail names the failed check, and
    ``RateLimited`` for a key below its floor (it filled the nonces,
    ``NonceCache``).
    """
    inputs = _dictionary(_header(headers, _SIGNATURE_INPUT, "Signature-Input"), "Signature-Input")
    signatures = _dictionary(_header(headers, _SIGNATURE, "Signature"), "Signature")
    label = _choose_label(inputs)
    member = inputs[label]
    if not isinstance(member, _InnerList):
        raise Unauthorized(f"Signature-Input member {label!r} is not an inner list")
    covered = _covered(member)
    if covered is None:
        raise Unauthorized(f"covered components must be {_PROFILE_TEXT}")
    digest_field = None
    digests: tuple[tuple[str, bytes], ...] = ()
    if covered == COVERED_WITH_DIGEST:
        digest_field = _header(headers, _CONTENT_DIGEST, "Content-Digest")
        digests = _parse_digests(digest_field)
    params = _profile_params(member.params)
    signed = signatures.get(label)
    if signed is None:
        raise Unauthorized(f"Signature header has no member {label!r}")
    if not isinstance(signed, _Item) or not isinstance(signed.value, bytes):
        raise Unauthorized(f"Signature member {label!r} is not a byte sequence")

    try:
        public = feed_public_key(params.keyid)
    except InvalidMessage as exc:
        raise Unauthorized(f"keyid must be a feed id (@….ed25519), got {params.keyid!r}") from exc
    skew = abs(now - params.created)
    if skew > window_s:
        raise Unauthorized(f"created {skew} s from the node's clock (limit {window_s})")
    if params.expires is not None and now > params.expires:
        raise Unauthorized(f"signature expired {now - params.expires} s ago")
    if nonces.not_before is not None and params.created < nonces.not_before:
        raise Unauthorized(
            f"created {nonces.not_before - params.created} s before the node started: sign again"
            " (the nonces seen before are not kept, so it could be a replay)"
        )

    components = _profile_components(method, path, query)
    if digest_field is not None:
        components.append((_CONTENT_DIGEST, digest_field))
    try:
        base = signature_base(components, params.ordered)
    except ValueError as exc:
        raise Unauthorized(f"request target cannot be signed: {exc}") from exc
    if len(signed.value) != _SIG_BYTES or not verify_signature(public, base, signed.value):
        raise Unauthorized("signature does not verify")
    nonces.check_created(params.keyid, params.created, now)
    if nonces.live(params.keyid, params.nonce, now):
        raise Unauthorized("nonce replayed")
    return SignedRequest(
        FeedId(params.keyid),
        digest_field,
        digests,
        nonces,
        params.nonce,
        now,
        params.created,
        source,
    )


def client_source(host: str | None) -> str:
    """The address a ``NonceCache`` share is counted by: an IPv4 address, an IPv6
    address's /64 (one host usually has all of one); "" (no share) for none, a
    name, or a loopback address (this machine, or a proxy on it that did not
    say whom it forwards for: every client would look alike).

    ``host`` is the client's address as the server saw it (behind a trusted
    proxy, the one it forwarded for).
    """
    if not host:
        return ""
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
            host.strip("[]")
        )
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback or address.is_unspecified:
        return ""
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _parse_digests(field: str) -> tuple[tuple[str, bytes], ...]:
    """The known digests of the ``Content-Digest`` ``field``; there must be one."""
    members = _dictionary(field, "Content-Digest")
    known: list[tuple[str, bytes]] = []
    for name, member in members.items():
        if name not in _DIGESTS:
            continue  # RFC 9530 §2: a digest of an unknown algorithm is ignored
        if not isinstance(member, _Item) or not isinstance(member.value, bytes):
            raise Unauthorized(f"Content-Digest {name} is not a byte sequence")
        known.append((name, member.value))
    if not known:
        raise Unauthorized("Content-Digest holds no sha-256 or sha-512 digest")
    return tuple(known)


# --- httpx hook ----------------------------------------------------------------------


class HttpSigAuth(httpx.Auth):
    """Signs every request an httpx client sends with ``keys`` (the SDK's inbox calls).

    Path and query come from the URL's raw (percent-encoded) target, exactly
    as sent. ``clock`` returns UNIX seconds; it is read once per request.
    """

    #: httpx reads a streamed body before ``auth_flow``, which signs its digest.
    requires_request_body = True

    def __init__(self, keys: Keypair, clock: Callable[[], float] = time.time) -> None:
        self._keys = keys
        self._clock = clock

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Adds ``Signature-Input`` and ``Signature`` (and, for a body, its signed
        ``Content-Digest``); raises what ``sign_request`` raises."""
        path, _, query = request.url.raw_path.partition(b"?")
        body = request.content
        request.headers.update(
            sign_request(
                self._keys,
                request.method,
                path.decode("ascii"),
                query.decode("ascii"),
                created=int(self._clock()),
                body=body if body else None,
            )
        )
        yield request
