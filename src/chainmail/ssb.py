"""SSB classic messages, byte-compatible with the JS reference (DESIGN §2).

The reference is ssb-validate 4.1.4 with ssb-keys 8.5 (pinned in
``interop/package.json``). A message is a JSON object whose bytes are never
kept as received: JavaScript parses it and signs, hashes and measures
``JSON.stringify(msg, null, 2)``. This module reproduces that serialisation
exactly, so it has to reproduce JavaScript where JavaScript is peculiar:

* numbers are written by ECMAScript ``Number::toString`` (``1`` for ``1.0``,
  ``1e+21``, ``1e-7``, ``0`` for ``-0``);
* object keys that are array indices ("0" … "4294967294") come first, in
  ascending numeric order, whatever order they were received in;
* the message id hashes the low byte of every UTF-16 code unit (Node's
  ``Buffer.from(str, "binary")``), and the size limit counts UTF-16 units.

Deliberate refusals, where JavaScript would silently change a value (each
raises ``InvalidMessage`` with code ``invalid_format``):

* an integer literal beyond ±(2^53−1) that ``JSON.parse`` rounds to another
  double (``9007199254740993``, ``18446744073709551616``): JavaScript would
  sign and hash a different text from the one received. A long literal that
  *is* how JavaScript writes its double (``100000000000000000000`` for 1e20)
  parses to that float, since JavaScript emits such text itself. A Python
  ``int`` beyond ±(2^53−1) is refused outright (DESIGN §2);
* NaN and ±Infinity (also ``1e400``), which ``JSON.stringify`` writes as null;
* lone UTF-16 surrogates, which ``JSON.stringify`` escapes and UTF-8 cannot carry;
* duplicate keys (``JSON.parse`` keeps the last).

Two paths produce the same bytes (property-tested): orjson, for values made
only of dicts, lists, strings, safe integers, booleans and null without
array-index keys (orjson escapes strings exactly as ``JSON.stringify`` does,
checked for every code point); and a pure serialiser for everything else.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import ctypes
import functools
import hashlib
import hmac
import json
import json.scanner
import math
import re
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any, Final

import orjson

from chainmail.errors import InvalidMessage
from chainmail.frozen import constructor
from chainmail.ids import FeedId, MsgId, msg_id_from_digest
from chainmail.keys import (
    SIGN_OPEN_ADDRESS,
    Keypair,
    sodium_address,
    verify_signature,
    verify_signed,
    verify_signed_many,
)

#: What ``_ssbscan.scan`` returns for a message in JSON.stringify's exact form.
_Scanned = tuple[bytes, str, bytes, int, str | None, int, int, bytes, int, bool]
#: The one-pass C scanner of the common message, when the package was built
#: with it (an optional extension); None: the Python path alone.
_scan: Callable[[bytes], _Scanned | None] | None
#: What ``_ssbscan.scan_many`` returns for a message it found: id, author,
#: sequence, previous, timestamp, 2-space text (None beyond the size limit),
#: content span, length, verified.
_Found = tuple[str, str | None, int, str | None, int, str | None, int, int, int, bool]
_scan_many: Callable[[Sequence[bytes], int, int, int, int], list[_Found | None]] | None
try:
    from chainmail._ssbscan import scan as _scan
except ImportError:  # pragma: no cover - built without a C compiler
    _scan = None
try:  # apart: an extension built before scan_many still scans one message at a time
    from chainmail._ssbscan import scan_many as _scan_many
except ImportError:  # pragma: no cover - built without a C compiler, or an old build
    _scan_many = None

__all__ = [
    "HMAC_KEY_BYTES",
    "MAX_MESSAGE_LENGTH",
    "MAX_RAW_BYTES",
    "MAX_SAFE_INTEGER",
    "MAX_SEQUENCE",
    "Checked",
    "FeedState",
    "check",
    "check_batch",
    "check_order",
    "check_raw",
    "create",
    "message_id",
    "parse",
    "stringify",
    "validate",
]

#: ``JSON.stringify(msg, null, 2).length`` may not exceed this (UTF-16 code units).
MAX_MESSAGE_LENGTH: Final = 8192
#: ``Number.MAX_SAFE_INTEGER``: the largest integer every JSON peer reads back unchanged.
MAX_SAFE_INTEGER: Final = 2**53 - 1
#: ssb-validate tests ``~~n === n``, so a sequence must fit a signed 32-bit integer.
MAX_SEQUENCE: Final = 2**31 - 1
#: Refuse raw input beyond this before parsing. A message within the size limit
#: fits easily even written with ``\\uXXXX`` escapes (6 bytes per UTF-16 unit).
MAX_RAW_BYTES: Final = 65536
#: libsodium ``crypto_auth`` (HMAC-SHA-512-256) key length; ssb-validate refuses others.
HMAC_KEY_BYTES: Final = 32

_HASH: Final = "sha256"
_SIG_SUFFIX: Final = ".sig.ed25519"
_KEY_ORDERS: Final = (
    ("previous", "author", "sequence", "timestamp", "hash", "content", "signature"),
    ("previous", "sequence", "author", "timestamp", "hash", "content", "signature"),
)
#: ssb-validate: ``3 <= content.type.length <= 52`` (UTF-16 code units).
_TYPE_MIN: Final = 3
_TYPE_MAX: Final = 52
_MAX_ARRAY_INDEX: Final = 2**32 - 2

# is-canonical-base64, as ssb-validate uses it: the unused bits of the last
# character are zero. ``isEncrypted`` does not anchor after ".box", and JS
# ``.`` stops at line terminators, hence the explicit class.
_B64: Final = "[A-Za-z0-9/+]"
_CANONICAL_B64: Final = f"(?:{_B64}{{4}})*(?:{_B64}(?:[AQgw]==|{_B64}[AEIMQUYcgkosw048]=))?"
_BOX_RE: Final = re.compile(_CANONICAL_B64 + r"\.box[^\n\r\u2028\u2029]*")
# 32 bytes of canonical base64 is 43 characters and "=", 64 bytes 86 and "==".
# ssb-ref's feed regex also admits "@….sha256" and "@…Xed25519", but
# ssb-validate then fails them on the signature curve, so only this passes.
_FEED_ID_RE: Final = re.compile(f"@{_B64}{{42}}[AEIMQUYcgkosw048]=\\.ed25519")
_MSG_ID_RE: Final = re.compile(f"%{_B64}{{42}}[AEIMQUYcgkosw048]=\\.sha256")
_SIGNATURE_RE: Final = re.compile(f"{_B64}{{85}}[AQgw]==" + re.escape(_SIG_SUFFIX))

_LONE_SURROGATE_RE: Final = re.compile("[\ud800-\udfff]")
# A "\uD8xx"-"\uDFxx" escape: the only way JSON text can smuggle in a surrogate.
_SURROGATE_ESCAPE_RE: Final = re.compile(r"\\u[dD][89a-fA-F]")
# A key that may be an array index, and the start of a digit written as an
# escape (which could hide one). A match inside a string costs speed (the pure
# path), never bytes.
_DIGIT_KEY_RE: Final = re.compile(r'"(?:0|[1-9][0-9]{0,9})"\s*:')
_ESCAPED_DIGIT: Final = "\\u003"
_SIGNATURE_MEMBER: Final = b',\n  "signature": '

#: Beyond this many nodes ``_plain`` gives up and the pure path serialises.
_PLAIN_WALK_LIMIT: Final = 100_000
_ORJSON_INDENT: Final = orjson.OPT_INDENT_2 | orjson.OPT_STRICT_INTEGER
_ORJSON_COMPACT: Final = orjson.OPT_STRICT_INTEGER


@dataclass(frozen=True, slots=True)
class FeedState:
    """The head of a feed: the id and sequence of its latest message."""

    id: str
    sequence: int


@dataclass(frozen=True, slots=True)
class Checked:
    """A message that passed every stateless rule (``check``), feed order not yet applied.

    ``text`` is ``JSON.stringify(msg, null, 2)``, the form that is stored and
    hashed; ``content`` is a dict, or a string for an SSB private box.
    """

    id: MsgId
    author: FeedId
    sequence: int
    previous: MsgId | None
    timestamp: int | float
    content: dict[str, Any] | str
    text: str

    def __reduce__(self) -> tuple[Any, ...]:
        # A plain tuple pickles in a fraction of the time of the dataclass
        # default, and ``_checked`` unpickles it without the frozen ``__init__``.
        return (
            _checked,
            (
                self.id,
                self.author,
                self.sequence,
                self.previous,
                self.timestamp,
                self.content,
                self.text,
            ),
        )


#: ``Checked(...)`` at under half the cost, for the verify hot path and unpickling
#: (``Checked.__reduce__`` names it).
_checked: Final = constructor(Checked, "_checked")


_REPR: Final = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80


def _show(value: object) -> str:
    """A short repr for error details, safe on any input (deep, huge, hostile)."""
    if type(value) is int and value.bit_length() > 64:
        return f"<integer of {value.bit_length()} bits>"
    try:
        return _REPR.repr(value)
    except Exception:  # a repr that fails must not replace the real error
        return f"<{type(value).__name__}>"


class _NotJsonError(Exception):
    """A value with no exact JSON.stringify form; becomes ``InvalidMessage``."""


# -- serialising ----------------------------------------------------------------


def _js_number(x: float) -> str:
    """ECMAScript ``Number::toString(x)`` for a finite double.

    ``repr`` yields the shortest digits that round-trip (closest to ``x`` when
    several exist, as V8 picks); only their layout differs from ECMAScript's.
    """
    if x == 0:
        return "0"  # also -0
    if x < 0:
        return "-" + _js_number(-x)
    if x < 2**53 and x.is_integer():
        return str(int(x))
    mantissa, _, exponent = repr(x).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    # x = 0.digits × 10^n
    n = len(whole) + (int(exponent) if exponent else 0)
    significant = digits.lstrip("0")
    n -= len(digits) - len(significant)
    digits = significant.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    e = n - 1
    sign = "+" if e >= 0 else "-"
    if k == 1:
        return f"{digits}e{sign}{abs(e)}"
    return f"{digits[0]}.{digits[1:]}e{sign}{abs(e)}"


def _is_array_index(key: str) -> bool:
    """True for the keys V8 enumerates first: canonical integers 0 … 2^32−2."""
    return (
        key.isascii()
        and key.isdigit()
        and (key == "0" or key[0] != "0")
        and int(key) <= _MAX_ARRAY_INDEX
    )


def _js_keys(obj: dict[Any, Any]) -> list[str]:
    """The keys of ``obj`` in JavaScript's own-property order."""
    indices: list[str] = []
    names: list[str] = []
    for key in obj:
        if not isinstance(key, str):
            raise _NotJsonError(f"object keys must be strings, got {type(key).__name__}")
        (indices if "0" <= key[:1] <= "9" and _is_array_index(key) else names).append(key)
    if indices:
        indices.sort(key=int)
        return indices + names
    return names


def _dump(value: object, out: list[str], nl: str, step: str, colon: str) -> None:
    """Append the JSON.stringify pieces of ``value``; ``nl`` is the current line break."""
    if isinstance(value, str):
        out.append(encode_basestring(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise _NotJsonError(f"integer outside ±(2^53−1): {_show(value)}")
        out.append(str(int(value)))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _NotJsonError(f"number must be finite, got {_show(value)}")
        out.append(_js_number(float(value)))
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        inner = nl + step
        separator = "{" + inner
        for key in _js_keys(value):
            out.append(separator)
            out.append(encode_basestring(key))
            out.append(colon)
            _dump(value[key], out, inner, step, colon)
            separator = "," + inner
        out.append(nl + "}")
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        inner = nl + step
        separator = "[" + inner
        for item in value:
            out.append(separator)
            _dump(item, out, inner, step, colon)
            separator = "," + inner
        out.append(nl + "]")
    else:
        raise _NotJsonError(f"not a JSON value: {type(value).__name__}")


def _plain(value: object) -> bool:
    """True when orjson writes ``value`` byte for byte as JSON.stringify does.

    That holds for exact dicts, lists, strings, ints, bools and None, with no
    array-index keys (orjson keeps insertion order) and no floats (orjson
    writes ``1.0`` and ``1e21``). Unsafe ints and lone surrogates make orjson
    raise under ``_ORJSON_*``, which sends them to the pure path as well.
    """
    stack = [value]
    pop, extend = stack.pop, stack.extend
    budget = _PLAIN_WALK_LIMIT  # a cycle would never end; the pure path reports it
    while stack:
        budget -= 1
        if not budget:
            return False
        item = pop()
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is dict:
            for key in item:  # type: ignore[attr-defined]
                if type(key) is not str or ("0" <= key[:1] <= "9" and _is_array_index(key)):
                    return False
            extend(item.values())  # type: ignore[attr-defined]
        elif kind is list:
            extend(item)  # type: ignore[arg-type]
        else:
            return False
    return True


def _plain_values(values: Any) -> bool:
    for item in values:
        kind = type(item)
        if kind is str or kind is int:
            continue
        if kind is dict:
            # Every key that starts with a digit sorts below ":", so one C-level
            # min() clears the usual dict without a look at each key.
            if item and min(item) < ":" and any(_is_array_index(key) for key in item):
                return False
            if not _plain_values(item.values()):
                return False
        elif kind is list:
            if not _plain_values(item):
                return False
        elif kind is not bool and item is not None:
            return False
    return True


def _plain_loaded(value: object) -> bool:
    """``_plain`` for a value ``orjson.loads`` returned, in about half the time.

    Such a value holds only exact dicts with str keys, lists, strings, ints,
    floats, bools and None, and no cycle, so the walk can recurse with no
    budget; a nesting too deep for that is sent to the pure path instead.
    """
    try:
        return _plain_values((value,))
    except RecursionError:
        return False


def _to_utf8(value: object, indent: int) -> bytes:
    """UTF-8 of ``JSON.stringify(value, null, indent)``.

    Raises ``_NotJsonError`` or ``RecursionError``.
    """
    if indent in (0, 2) and _plain(value):
        try:
            return orjson.dumps(value, option=_ORJSON_INDENT if indent else _ORJSON_COMPACT)
        except orjson.JSONEncodeError:
            pass  # the pure path names the problem
    out: list[str] = []
    _dump(value, out, "\n" if indent else "", " " * indent, ": " if indent else ":")
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _NotJsonError("lone UTF-16 surrogate in a string") from exc


def stringify(value: object, indent: int = 2) -> str:
    """``JSON.stringify(value, null, indent)`` exactly; ``indent=0`` gives compact JSON.

    ``indent`` is clamped to 0…10 as in JavaScript. Dicts, lists, tuples,
    strings, ints, floats, bools and None are JSON values.

    Raises ``InvalidMessage`` (``invalid_format``) for anything JavaScript
    cannot represent unchanged: non-finite floats, integers beyond
    ±(2^53−1), lone surrogates, non-string keys, other types, cycles and
    nesting too deep to recurse.
    """
    try:
        return _to_utf8(value, max(0, min(10, indent))).decode("utf-8")
    except _NotJsonError as exc:
        raise InvalidMessage(str(exc), code="invalid_format") from exc
    except RecursionError as exc:
        raise InvalidMessage("JSON nested too deeply", code="invalid_format") from exc


# -- parsing --------------------------------------------------------------------


class _DuplicateKeyError(ValueError):
    pass


def _constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


class _Scan:
    """The hooks of one run of the C JSON scanner, and whether it met a float.

    One object per parse keeps the flag thread-safe; building it costs less
    than walking the result afterwards.
    """

    __slots__ = (
        "floats",
        "object_hook",
        "object_pairs_hook",
        "parse_constant",
        "parse_float",
        "parse_int",
        "strict",
    )

    def __init__(self) -> None:
        self.strict = True  # control characters in strings are errors, as in JSON.parse
        self.object_hook = None
        self.object_pairs_hook = self._object
        self.parse_float = self._float
        self.parse_int = self._int
        self.parse_constant = _constant
        self.floats = False

    @staticmethod
    def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise _DuplicateKeyError(f"duplicate key {_show(key)}")
                seen.add(key)
        return obj

    def _int(self, text: str) -> int | float:
        if len(text) > 22:
            # JavaScript writes a double of 1e21 or more with an exponent, so a
            # literal this long is never its text; and ``int`` would refuse to
            # read one past 4,300 digits with a message about Python itself.
            raise ValueError(
                f"integer outside ±(2^53−1) that JSON.parse would round: {text[:24]}…"
                f" ({len(text)} characters)"
            )
        number = int(text)
        if len(text) <= 15 or -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
            return number
        # JavaScript has only doubles. A long literal is fine exactly when it is
        # how JavaScript writes its double (1e20 is "100000000000000000000"):
        # then it is that double. Otherwise JSON.parse rounds it, and the text
        # JavaScript signs and hashes is not the text that was sent.
        try:
            double = float(number)
        except OverflowError:
            double = math.inf
        if not math.isfinite(double) or _js_number(double) != text:
            raise ValueError(f"integer outside ±(2^53−1) that JSON.parse would round: {text}")
        self.floats = True
        return double

    def _float(self, text: str) -> float:
        self.floats = True
        number = float(text)
        if not math.isfinite(number):
            raise ValueError(f"number out of range: {text}")
        return number


def _has_lone_surrogate(value: object) -> bool:
    stack = [value]  # iterative: the scanner accepts deeper nesting than recursion here would
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _LONE_SURROGATE_RE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _skip_whitespace(text: str, start: int) -> int:
    while start < len(text) and text[start] in " \t\n\r":
        start += 1
    return start


def _loads_fast(raw: bytes) -> tuple[Any, bool] | None:
    """``_loads`` of ``raw`` when it is orjson's own output for what it holds, else None.

    If ``orjson.dumps`` of the value gives ``raw`` back byte for byte (2-space
    or compact), ``raw`` is that value's canonical text, so it held nothing
    the value lost: no duplicate key (orjson keeps one, and the text would be
    shorter), no surrogate escape or ``\\/`` (orjson writes neither), no ``-0``,
    no whitespace outside strings beyond orjson's own. Integers beyond
    ±(2^53−1) fail ``OPT_STRICT_INTEGER``, and longer literals, ``1e400`` and
    NaN do not come back as written or fail to load. What is left is the value
    the exact path reads. Anything else returns None for the exact path.
    """
    try:
        value = orjson.loads(raw)
        out = orjson.dumps(value, option=_ORJSON_INDENT if raw[1:2] == b"\n" else _ORJSON_COMPACT)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return None
    if out != raw:
        return None
    return value, _plain_loaded(value)


def _loads(text: bytes | bytearray | memoryview | str, *, fast: bool = True) -> tuple[Any, bool]:
    """A JSON value as JavaScript reads it, and whether orjson may serialise it.

    ``fast=False`` skips ``_loads_fast`` (tests compare the two paths).
    Raises ``InvalidMessage`` (``invalid_format``).
    """
    if isinstance(text, bytes | bytearray | memoryview):
        text = bytes(text)
        loaded = _loads_fast(text) if fast else None
        if loaded is not None:
            return loaded
        try:
            # Strict UTF-8 also refuses encoded surrogates, unlike json.loads.
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidMessage(f"JSON is not UTF-8: {exc}", code="invalid_format") from exc
    elif not isinstance(text, str):
        raise InvalidMessage(
            f"expected JSON text (bytes or str), got {type(text).__name__}", code="invalid_format"
        )
    elif not text.isascii() and _LONE_SURROGATE_RE.search(text):
        raise InvalidMessage("lone UTF-16 surrogate in JSON text", code="invalid_format")
    hooks = _Scan()
    try:
        scan = json.scanner.make_scanner(hooks)  # type: ignore[arg-type]
        value, end = scan(text, _skip_whitespace(text, 0))
    except StopIteration as exc:
        detail = f"invalid JSON: no value at {exc.value}"
        raise InvalidMessage(detail, code="invalid_format") from exc
    except RecursionError as exc:
        raise InvalidMessage("invalid JSON: nested too deeply", code="invalid_format") from exc
    except ValueError as exc:  # JSONDecodeError, duplicate key, non-finite, unsafe integer
        raise InvalidMessage(f"invalid JSON: {exc}", code="invalid_format") from exc
    end = _skip_whitespace(text, end)
    if end != len(text):
        raise InvalidMessage(f"invalid JSON: extra data at {end}", code="invalid_format")
    if _SURROGATE_ESCAPE_RE.search(text) and _has_lone_surrogate(value):
        raise InvalidMessage("lone UTF-16 surrogate in a string", code="invalid_format")
    plain = not hooks.floats and _ESCAPED_DIGIT not in text and not _DIGIT_KEY_RE.search(text)
    return value, plain


def parse(text: bytes | str) -> dict[str, Any]:
    """Parse a JSON object (UTF-8 bytes or str), keeping key order.

    Raises ``InvalidMessage`` (``invalid_format``) for bad syntax or UTF-8, a
    top-level value other than an object, duplicate keys at any depth, lone
    surrogates, NaN/Infinity or numbers that overflow to them, integer
    literals beyond ±(2^53−1) that JSON.parse would round, and nesting too
    deep to recurse. Other long integer literals come back as floats, the
    doubles JavaScript reads.
    """
    value = _loads(text)[0]
    if not isinstance(value, dict):
        raise InvalidMessage(
            f"expected a JSON object, got {type(value).__name__}", code="invalid_format"
        )
    return value


# -- messages -------------------------------------------------------------------


def _hmac(data: bytes, key: bytes) -> bytes:
    """libsodium ``crypto_auth``: HMAC-SHA-512 truncated to 32 bytes."""
    return hmac.digest(key, data, "sha512")[:32]


def _hmac_key(key: object) -> bytes | None:
    """The 32-byte network key, from bytes or canonical base64 (as ssb-validate takes it).

    ssb-validate refuses every message under a malformed key, so this raises
    ``InvalidMessage`` (``invalid_signature``): nothing can be verified with it.
    """
    if key is None:
        return None
    raw: bytes | None = None
    if isinstance(key, bytes | bytearray):
        raw = bytes(key)
    elif isinstance(key, str):
        try:
            raw = base64.b64decode(key, validate=True)
        except ValueError:
            raw = None
        if raw is not None and base64.b64encode(raw).decode("ascii") != key:
            raw = None
    if raw is None or len(raw) != HMAC_KEY_BYTES:
        raise InvalidMessage(
            f"HMAC key: expected {HMAC_KEY_BYTES} bytes or their canonical base64",
            code="invalid_signature",
        )
    return raw


def _binary(text: str, utf8: bytes, ascii: bool) -> bytes:
    """What Node hashes for the id: the low byte of each UTF-16 unit of ``text``.

    ``utf8`` is ``text``'s UTF-8 and ``ascii`` whether it is all ASCII (then the two agree).
    """
    return utf8 if ascii else text.encode("utf-16-le")[::2]


def _id_and_length(text: str, utf8: bytes) -> tuple[MsgId, int]:
    """The message id and the UTF-16 length of ``text`` (whose UTF-8 is ``utf8``)."""
    # One byte a UTF-16 unit, so its length is the UTF-16 length.
    binary = _binary(text, utf8, utf8.isascii())
    return msg_id_from_digest(hashlib.sha256(binary).digest()), len(binary)


def _verify(public: bytes, signed: bytes, signature: bytes, key: bytes | None, author: str) -> None:
    """Raise ``invalid_signature`` unless ``signature`` is ``public``'s over ``signed``.

    Under a network ``key`` the signature covers the HMAC of ``signed``.
    """
    if key is not None:
        signed = _hmac(signed, key)
    if not verify_signature(public, signed, signature):
        raise _bad_signature(author)


def _message_utf8(msg: dict[str, Any]) -> bytes:
    try:
        return _to_utf8(msg, 2)
    except _NotJsonError as exc:
        raise InvalidMessage(str(exc), code="invalid_format") from exc
    except RecursionError as exc:
        raise InvalidMessage("message nested too deeply", code="invalid_format") from exc


def message_id(msg: dict[str, Any]) -> str:
    """``%<base64 sha256>.sha256`` of ``JSON.stringify(msg, null, 2)``, hashed as Node does.

    Computes the id of any JSON object without validating it. Raises
    ``InvalidMessage`` (``invalid_format``) when ``msg`` has no exact JSON form
    (see ``stringify``).
    """
    utf8 = _message_utf8(msg)
    text = utf8.decode("utf-8")
    return _id_and_length(text, utf8)[0]


def _utf16_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-16-le")) // 2


def _sequence(value: object) -> int:
    # JSON "2.0" is the number 2 in JavaScript, so an integral float counts.
    number = None
    if type(value) is int:
        number = value
    elif type(value) is float and value.is_integer():
        number = int(value)
    if number is not None and 1 <= number <= MAX_SEQUENCE:
        return number
    raise InvalidMessage(
        f"sequence: expected an integer 1…{MAX_SEQUENCE}, got {_show(value)}",
        code="invalid_format",
    )


def _check_content(content: object) -> None:
    if isinstance(content, str):
        if not _BOX_RE.fullmatch(content):
            raise InvalidMessage(
                "content: a string must be canonical base64 followed by .box", code="invalid_format"
            )
        return
    if not isinstance(content, dict):
        raise InvalidMessage(
            f"content: expected an object or a .box string, got {type(content).__name__}",
            code="invalid_format",
        )
    kind = content.get("type")
    if not isinstance(kind, str) or not _TYPE_MIN <= _utf16_length(kind) <= _TYPE_MAX:
        raise InvalidMessage(
            f"content.type: expected a string of {_TYPE_MIN}–{_TYPE_MAX} UTF-16 units, "
            f"got {_show(kind)}",
            code="invalid_format",
        )


@functools.lru_cache(maxsize=1 << 16)
def _author_key(author: str) -> bytes | None:
    """The public key in a well-formed feed id, else None; remembered, as authors recur."""
    if not _FEED_ID_RE.fullmatch(author):
        return None
    return binascii.a2b_base64(author[1:45])


def _check(
    msg: object,
    hmac_key: bytes | None,
    *,
    verify: bool = True,
    utf8: bytes | None = None,
) -> Checked:
    """Every stateless rule; ``utf8`` is the message's 2-space JSON when already known."""
    if not isinstance(msg, dict):
        raise InvalidMessage(
            f"message: expected a JSON object, got {type(msg).__name__}", code="invalid_format"
        )
    keys = tuple(msg)
    if keys not in _KEY_ORDERS:
        raise InvalidMessage(
            f"message keys: expected {', '.join(_KEY_ORDERS[0])} (author and sequence may swap), "
            f"got {_show(keys)}",
            code="invalid_format",
        )
    previous = msg["previous"]
    if previous is not None and not (isinstance(previous, str) and _MSG_ID_RE.fullmatch(previous)):
        raise InvalidMessage(
            f"previous: expected null or a %…sha256 id, got {_show(previous)}",
            code="invalid_format",
        )
    author = msg["author"]
    if type(author) is str:
        public = _author_key(author)
    else:  # a str subclass could hash and compare as it likes: no cache
        public = (
            binascii.a2b_base64(author[1:45])
            if isinstance(author, str) and _FEED_ID_RE.fullmatch(author)
            else None
        )
    if public is None:
        raise InvalidMessage(
            f"author: expected @<base64 of 32 bytes>.ed25519, got {_show(author)}",
            code="invalid_format",
        )
    sequence = _sequence(msg["sequence"])
    if (sequence == 1) != (previous is None):
        raise InvalidMessage(
            f"previous: must be null exactly when sequence is 1, got sequence {sequence} "
            f"with previous {_show(previous)}",
            code="invalid_format",
        )
    timestamp = msg["timestamp"]
    if type(timestamp) is float:
        if not math.isfinite(timestamp):
            raise InvalidMessage(f"timestamp: not finite: {timestamp}", code="invalid_format")
    elif type(timestamp) is not int:
        raise InvalidMessage(
            f"timestamp: expected a number, got {type(timestamp).__name__}", code="invalid_format"
        )
    if msg["hash"] != _HASH or type(msg["hash"]) is not str:
        detail = f"hash: expected 'sha256', got {_show(msg['hash'])}"
        raise InvalidMessage(detail, code="invalid_format")
    content = msg["content"]
    _check_content(content)
    signature = msg["signature"]
    if not isinstance(signature, str) or not _SIGNATURE_RE.fullmatch(signature):
        raise InvalidMessage(
            f"signature: expected <base64 of 64 bytes>{_SIG_SUFFIX}, got {_show(signature)}",
            code="invalid_format",
        )
    if utf8 is None:
        utf8 = _message_utf8(msg)
    text = utf8.decode("utf-8")
    mid, length = _id_and_length(text, utf8)
    if length > MAX_MESSAGE_LENGTH:
        raise _too_long(length)
    if verify:
        # The signature is the last member, so the unsigned JSON is the signed
        # one without it: no second serialisation.
        signed = utf8[: utf8.rindex(_SIGNATURE_MEMBER)] + b"\n}"
        # The regexes above admitted only canonical base64 here.
        raw = binascii.a2b_base64(signature[: -len(_SIG_SUFFIX)])
        _verify(public, signed, raw, hmac_key, author)
    return _checked(
        mid,
        FeedId(author),
        sequence,
        None if previous is None else MsgId(previous),
        timestamp,
        content,
        text,
    )


def check(msg: dict[str, Any], hmac_key: bytes | str | None = None) -> Checked:
    """Apply every stateless SSB rule to ``msg``: shape, key order, size, content, signature.

    ``hmac_key`` is an SSB network key (32 bytes, or their canonical base64):
    the signature then covers the HMAC-SHA-512-256 of the signed bytes.

    Raises ``InvalidMessage`` with code ``invalid_format`` (shape, types, ids,
    content, values without an exact JSON form), ``too_large`` (over 8192
    UTF-16 units) or ``invalid_signature`` (the signature does not verify, or
    ``hmac_key`` is malformed).
    """
    return _check(msg, _hmac_key(hmac_key))


def check_order(checked_or_msg: Checked | dict[str, Any], state: FeedState | None) -> FeedState:
    """Apply the feed rules to a message after ``state`` (None: the feed is empty).

    Returns the new head. A dict is checked for shape but not signature first.
    Raises ``InvalidMessage``: ``out_of_order`` when the sequence is not the
    next one (a gap, a replay, or a first message that is not sequence 1),
    ``fork`` when the sequence is next but ``previous`` is not the head's id,
    and the codes of ``check`` for a malformed dict.
    """
    checked = (
        checked_or_msg
        if isinstance(checked_or_msg, Checked)
        else _check(checked_or_msg, None, verify=False)
    )
    expected = 1 if state is None else state.sequence + 1
    if checked.sequence != expected:
        raise InvalidMessage(
            f"sequence: expected {expected}, got {checked.sequence} on feed {checked.author}",
            code="out_of_order",
        )
    head = None if state is None else state.id
    if checked.previous != head:
        raise InvalidMessage(
            f"previous: expected {head}, got {checked.previous} on feed {checked.author}",
            code="fork",
        )
    return FeedState(id=checked.id, sequence=checked.sequence)


def validate(
    msg: dict[str, Any], state: FeedState | None = None, hmac_key: bytes | str | None = None
) -> FeedState:
    """Accept ``msg`` exactly when ssb-validate would append it after ``state``.

    ``state`` None means the feed has no message yet, so ``msg`` must be
    sequence 1 with previous null. Returns the head after ``msg``.

    Raises ``InvalidMessage`` with the codes of ``check`` and ``check_order``.
    """
    return check_order(check(msg, hmac_key), state)


def _too_long(length: int) -> InvalidMessage:
    return InvalidMessage(
        f"message is {length} UTF-16 units as JSON, limit {MAX_MESSAGE_LENGTH}",
        code="too_large",
    )


def _bad_signature(author: str) -> InvalidMessage:
    return InvalidMessage(f"signature does not verify for {author}", code="invalid_signature")


def _check_scanned(raw: bytes, scanned: _Scanned, key: bytes | None) -> Checked:
    """``_check`` of a message ``_ssbscan.scan`` recognised: its rules of shape already hold.

    The scanner checked the key order, the ids, sequence, timestamp, hash,
    content type and signature shapes, and wrote the 2-space text; what is
    left is the size limit, the id and the signature, as in ``_check``.
    """
    checked, signed, public = _scanned_unverified(raw, scanned, key)
    if not verify_signed(signed, public):
        raise _bad_signature(checked.author)
    return checked


def _scanned_unverified(
    raw: bytes, scanned: _Scanned, key: bytes | None
) -> tuple[Checked, bytes, bytes]:
    """``_check_scanned`` but the signature: the message, and what ``verify_signed`` takes.

    The ``Checked`` stands only once ``verify_signed`` of the two bytes holds.
    """
    utf8, author, public, sequence, previous, timestamp, signed_end, signature, length, ascii = (
        scanned
    )
    if length > MAX_MESSAGE_LENGTH:
        raise _too_long(length)
    text = utf8.decode("utf-8")
    mid = msg_id_from_digest(hashlib.sha256(_binary(text, utf8, ascii)).digest())
    signed = utf8[:signed_end] + b"\n}"
    if key is not None:
        signed = _hmac(signed, key)
    checked = _checked(
        mid,
        FeedId(author),
        sequence,
        None if previous is None else MsgId(previous),
        timestamp,
        orjson.loads(raw)["content"],
        text,
    )
    return checked, signature + signed, public


def _raw_bytes(data: object) -> bytes:
    """A message as received, as bytes within ``MAX_RAW_BYTES``; raises ``InvalidMessage``."""
    if type(data) is bytes and len(data) <= MAX_RAW_BYTES:  # what the node's ingest passes
        return data
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidMessage(f"expected bytes, got {type(data).__name__}", code="invalid_format")
    raw = bytes(data)
    if len(raw) > MAX_RAW_BYTES:
        raise InvalidMessage(
            f"message is {len(raw)} bytes as received, limit {MAX_RAW_BYTES}", code="too_large"
        )
    return raw


def _check_raw(data: object, key: bytes | None, *, scan: bool = True) -> Checked:
    raw = _raw_bytes(data)
    if scan and _scan is not None:
        scanned = _scan(raw)
        if scanned is not None:
            return _check_scanned(raw, scanned, key)
    loaded = _loads_fast(raw)
    if loaded is not None and loaded[1] and raw[1:2] == b"\n":
        # raw is orjson's 2-space text of a plain value: JSON.stringify's bytes.
        return _check(loaded[0], key, utf8=raw)
    msg, plain = _loads(raw, fast=False) if loaded is None else loaded
    utf8 = None
    if plain:
        # Unsafe integers and orjson's depth limit fall through to the pure path.
        with contextlib.suppress(orjson.JSONEncodeError):
            utf8 = orjson.dumps(msg, option=_ORJSON_INDENT)
    return _check(msg, key, utf8=utf8)


def check_raw(data: bytes, hmac_key: bytes | str | None = None) -> Checked:
    """Parse and ``check`` one message received as UTF-8 JSON (the node's hot path).

    Raises ``InvalidMessage``: ``too_large`` beyond ``MAX_RAW_BYTES`` of input,
    ``invalid_format`` for anything ``parse`` refuses, and the codes of
    ``check``.
    """
    return _check_raw(data, _hmac_key(hmac_key))


def check_batch(
    items: list[bytes], hmac_key: bytes | str | None = None
) -> list[Checked | InvalidMessage]:
    """``check_raw`` each item; a refused item yields its ``InvalidMessage`` in its place.

    The messages the C scanner takes are scanned, hashed and verified together
    in one call that runs without the GIL (``_ssbscan.scan_many``; with a
    network key, ``keys.verify_signed_many`` verifies them together), so
    threads of one process check batches on every core; any other message is
    checked alone, as ``check_raw`` does. A top-level function, so it pickles.
    Raises nothing for bad input: a malformed ``hmac_key`` refuses every item.
    """
    try:
        key = _hmac_key(hmac_key)
    except InvalidMessage as exc:
        return [exc for _ in items]
    if key is None and _scan_many is not None:
        return _check_batch_found(items)
    results: list[Checked | InvalidMessage] = []
    unverified: list[int] = []
    signatures: list[tuple[bytes, bytes]] = []
    for item in items:
        try:
            raw = _raw_bytes(item)
            scanned = None if _scan is None else _scan(raw)
            if scanned is None:
                results.append(_check_raw(raw, key, scan=False))
                continue
            checked, signed, public = _scanned_unverified(raw, scanned, key)
        except InvalidMessage as exc:
            results.append(exc)
            continue
        unverified.append(len(results))
        signatures.append((signed, public))
        results.append(checked)
    if signatures:
        for at, ok in zip(unverified, verify_signed_many(signatures), strict=True):
            if not ok:
                failed = results[at]
                assert isinstance(failed, Checked)
                results[at] = _bad_signature(failed.author)
    return results


def _openssl_sha256_address() -> int:
    """Where OpenSSL's one-shot ``SHA256`` is, in the libcrypto ``hashlib`` uses; 0 if none.

    It uses the CPU's SHA extensions where there are any (~0.5 µs for a
    message, against ~2 µs for libsodium's portable C).
    """
    try:
        import _hashlib  # only to find the libcrypto hashlib loaded

        address = ctypes.cast(ctypes.CDLL(_hashlib.__file__).SHA256, ctypes.c_void_p).value
    except (ImportError, OSError, AttributeError):
        return 0
    return int(address or 0)


#: The hashes ``_ssbscan.scan_many`` calls besides ``keys.SIGN_OPEN_ADDRESS`` (the
#: signature check this module and the bench's ceiling call): a SHA-256 (OpenSSL's when
#: found, else libsodium's).
_SHA256: Final = sodium_address("crypto_hash_sha256")
_OPENSSL_SHA256: Final = _openssl_sha256_address()


def _check_batch_found(items: list[bytes]) -> list[Checked | InvalidMessage]:
    """``check_batch`` without a network key, through ``_ssbscan.scan_many``."""
    assert _scan_many is not None
    results: list[Checked | InvalidMessage | None] = []
    raws: list[bytes] = []
    at: list[int] = []
    for item in items:
        try:
            raw = _raw_bytes(item)
        except InvalidMessage as exc:
            results.append(exc)
            continue
        at.append(len(results))
        results.append(None)
        raws.append(raw)
    loads = orjson.loads
    for i, raw, found in zip(
        at,
        raws,
        _scan_many(raws, SIGN_OPEN_ADDRESS, _SHA256, _OPENSSL_SHA256, MAX_MESSAGE_LENGTH),
        strict=True,
    ):
        if found is None:
            try:
                results[i] = _check_raw(raw, None, scan=False)
            except InvalidMessage as exc:
                results[i] = exc
            continue
        mid, author, sequence, previous, timestamp, text, start, end, units, verified = found
        if text is None or author is None:  # beyond MAX_MESSAGE_LENGTH: neither hashed nor verified
            results[i] = _too_long(units)
        elif not verified:
            results[i] = _bad_signature(author)
        else:
            # The ids' shapes are checked (the scan) or made here: the NewTypes
            # are the same strings.
            results[i] = _checked(
                mid, author, sequence, previous, timestamp, loads(raw[start:end]), text
            )
    return results  # type: ignore[return-value]  # every None was replaced


def _copy(content: object) -> Any:
    try:
        return copy.deepcopy(content)
    except RecursionError as exc:
        raise InvalidMessage("content nested too deeply", code="invalid_format") from exc
    except (TypeError, copy.Error) as exc:
        # What cannot be copied (a mappingproxy, a socket) is no JSON value either.
        raise InvalidMessage(f"not a JSON value: {exc}", code="invalid_format") from None


def create(
    keys: Keypair,
    content: dict[str, Any] | str,
    state: FeedState | None,
    timestamp: int | float,
    hmac_key: bytes | str | None = None,
) -> dict[str, Any]:
    """Sign the next message of ``keys``' feed after ``state`` (None: the first).

    Keys come in the order previous, author, sequence, timestamp, hash,
    content, signature; ``content`` is deep-copied. Raises ``InvalidMessage``
    with code ``invalid_format`` or ``too_large`` when the message would break
    a stateless rule, ``invalid_signature`` for a malformed ``hmac_key``.
    """
    key = _hmac_key(hmac_key)
    msg: dict[str, Any] = {
        "previous": None if state is None else state.id,
        "author": keys.id,
        "sequence": 1 if state is None else state.sequence + 1,
        "timestamp": timestamp,
        "hash": _HASH,
        "content": _copy(content),
    }
    signed = _message_utf8(msg)
    if key is not None:
        signed = _hmac(signed, key)
    msg["signature"] = base64.b64encode(keys.sign(signed)).decode("ascii") + _SIG_SUFFIX
    _check(msg, key, verify=False)
    return msg
