"""chainmail._ssbscan, the C scanner of the common message: the same answers as the Python path.

``ssb._check_raw(raw, key, scan=False)`` is the Python path alone (itself held
to the SSB reference by test_ssb.py and the interop tests); with the scanner
every input must give the same ``Checked`` or the same error, and the
scanner's text must be ``JSON.stringify(msg, null, 2)``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chainmail import ssb
from chainmail.errors import InvalidMessage
from chainmail.keys import SIGN_OPEN_ADDRESS, Keypair

ALICE = Keypair.from_seed(bytes(range(32)))
NET_KEY = bytes(range(100, 132))
T0 = 1_700_000_000_000

pytestmark = pytest.mark.skipif(ssb._scan is None, reason="built without the C extension")


def test_the_extension_is_built() -> None:
    # make install compiles it; a silent fallback would hide a broken build.
    from chainmail import _ssbscan

    assert ssb._scan is _ssbscan.scan


def _outcome(raw: bytes, key: bytes | None, *, scan: bool) -> tuple[Any, ...]:
    try:
        c = ssb._check_raw(raw, key, scan=scan)
    except InvalidMessage as exc:
        return ("refused", exc.code, str(exc))
    return (
        "ok",
        c.id,
        c.author,
        c.sequence,
        c.previous,
        c.timestamp,
        type(c.timestamp),
        c.content,
        c.text,
    )


def _same(raw: bytes, key: bytes | None = None) -> tuple[Any, ...]:
    fast = _outcome(raw, key, scan=True)
    assert fast == _outcome(raw, key, scan=False)
    scanned = ssb._scan(raw) if ssb._scan is not None else None
    if scanned is not None:
        assert scanned[0] == ssb.stringify(orjson.loads(raw)).encode()
    return fast


def _message(
    content: dict[str, Any] | str,
    *,
    sequence: int = 1,
    timestamp: float = T0,
    key: bytes | None = None,
) -> dict[str, Any]:
    state = (
        None
        if sequence == 1
        else ssb.FeedState(id="%" + "A" * 43 + "=.sha256", sequence=sequence - 1)
    )
    return ssb.create(ALICE, content, state, timestamp, key)


def _forms(msg: dict[str, Any]) -> list[bytes]:
    """The exact forms (compact, 2-space) and some that are not exact."""
    return [
        ssb.stringify(msg, indent=0).encode(),
        ssb.stringify(msg).encode(),
        json.dumps(msg).encode(),
        json.dumps(msg, ensure_ascii=False, indent=2).encode(),
        json.dumps(msg, separators=(",", ":")).encode(),
    ]


def test_ordinary_messages_take_the_scanner_in_both_exact_forms() -> None:
    msg = _message({"type": "tx/note", "tx": "%" + "B" * 43 + "=.sha256", "text": "héllo 😀"})
    compact, indented = _forms(msg)[:2]
    for raw in (compact, indented):
        scanned = ssb._scan(raw) if ssb._scan is not None else None
        assert scanned is not None
        assert scanned[0] == indented
        assert scanned[1] == ALICE.id and scanned[3] == 1 and scanned[4] is None
        assert scanned[9] is False  # not ASCII: the id hashes the UTF-16 low bytes
    assert ssb.check_raw(compact) == ssb.check(msg)


def test_every_escape_and_awkward_code_point() -> None:
    text = "".join(chr(c) for c in range(0x20)) + '"\\/\x7f\u2028\u2029\ufeff€😀'
    msg = _message({"type": "test", "s": text, text: [text, {}, [], None, True, False, -1, 0]})
    for raw in _forms(msg):
        _same(raw)
    assert ssb._scan is not None
    assert ssb._scan(ssb.stringify(msg, indent=0).encode()) is not None


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"type":"test"', '"type":"te"'),  # type too short
        ('"type":"test"', '"type":"' + "t" * 53 + '"'),  # too long
        ('"type":"test"', '"type":"t\\u00e9st"'),  # an escape the exact form never has
        ('"type":"test"', '"type":"tést"'),  # non-ASCII type: the Python path
        ('"type":"test"', '"type":5'),
        ('"type":"test"', '"kind":"test"'),
        ('"n":1', '"n":1.5'),
        ('"n":1', '"n":1e3'),
        ('"n":1', '"n":-0'),
        ('"n":1', '"n":01'),
        ('"n":1', '"n":9007199254740992'),
        ('"n":1', '"n":9007199254740991'),
        ('"n":1', '"n":-9007199254740991'),
        ('"n":1', '"n":1,"n":2'),  # duplicate key
        ('"n":1', '"0":1'),  # array-index key: JavaScript moves it first
        ('"n":1', '"01":1'),
        ('"n":1', '"n":"\\u001F"'),  # uppercase hex
        ('"n":1', '"n":"\\u0041"'),
        ('"n":1', '"n":"\\/"'),
        ('"n":1', '"n":"\\ud83d\\ude00"'),
        ('"n":1', '"n": 1'),
        ('"n":1', '"n":tru'),
        ('"n":1', '"n":[1,]'),
        ('"n":1', '"n":{"a":1,}'),
        ('"n":1', '"n":"\x01"'),  # a raw control character
    ],
)
def test_near_misses_answer_as_the_python_path(old: str, new: str) -> None:
    msg = _message({"type": "test", "n": 1})
    compact = ssb.stringify(msg, indent=0)
    assert old in compact
    _same(compact.replace(old, new, 1).encode())


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"sequence":1', '"sequence":2'),  # previous must then be an id
        ('"sequence":1', '"sequence":0'),
        ('"sequence":1', '"sequence":2147483648'),
        ('"hash":"sha256"', '"hash":"sha512"'),
        ('"previous":null', '"previous":false'),
        ('.ed25519"', '.ed25519X"'),
        ('.sig.ed25519"', '.sig.ed25519 "'),
        ('"timestamp":1700000000000', '"timestamp":1700000000000.5'),
        ('"timestamp":1700000000000', '"timestamp":"now"'),
    ],
)
def test_top_level_near_misses_answer_as_the_python_path(old: str, new: str) -> None:
    compact = ssb.stringify(_message({"type": "test"}), indent=0)
    assert old in compact
    _same(compact.replace(old, new, 1).encode())


def test_a_bad_signature_and_the_size_limit() -> None:
    msg = _message({"type": "test"})
    sig = msg["signature"]
    msg["signature"] = ("B" if sig[0] == "A" else "A") + sig[1:]
    assert _same(ssb.stringify(msg, indent=0).encode())[1] == "invalid_signature"
    big = _message({"type": "test", "s": ""})
    big["content"]["s"] = "€" * 8000  # 8,000 UTF-16 units, 24,000 bytes: create refuses it
    assert _same(ssb.stringify(big, indent=0).encode())[1] == "too_large"
    fits = _message({"type": "test", "s": "😀" * 3900})  # two units a character
    assert _same(ssb.stringify(fits, indent=0).encode())[0] == "ok"


def test_the_hmac_key_is_applied() -> None:
    msg = _message({"type": "test"}, key=NET_KEY)
    raw = ssb.stringify(msg, indent=0).encode()
    assert _same(raw, NET_KEY)[0] == "ok"
    assert _same(raw)[1] == "invalid_signature"


def test_deep_nesting_goes_to_the_python_path() -> None:
    deep: list[object] = []
    for _ in range(40):  # the scanner stops at 32 levels
        deep = [deep]
    assert _same(ssb.stringify(_message({"type": "test", "d": deep}), indent=0).encode())[0] == "ok"


KEYS = st.one_of(
    st.text(max_size=6),
    st.sampled_from(["0", "01", "type", "é", "\x00", "4294967295", "a b"]),
)
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) - 2, 2**53 + 2)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(KEYS, VALUES, max_size=5),
    st.text(min_size=1, max_size=60) | st.just("tx/note"),
    st.integers(1, 5),
    st.integers(0, 2**53 - 1) | st.floats(0, 1e15, allow_nan=False),
    st.booleans(),
)
def test_any_message_in_any_form_answers_as_the_python_path(
    body: dict[str, Any], kind: str, sequence: int, timestamp: float, keyed: bool
) -> None:
    content = {"type": kind, **body}
    key = NET_KEY if keyed else None
    try:
        msg = _message(content, sequence=sequence, timestamp=timestamp, key=key)
    except InvalidMessage:
        assume(False)
        return
    for raw in _forms(msg):
        _same(raw, key)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_damaged_bytes_answer_as_the_python_path(data: st.DataObject) -> None:
    content = {"type": "tx/note", "text": data.draw(st.text(max_size=20)), "n": [1, {"a": None}]}
    raw = bytearray(data.draw(st.sampled_from(_forms(_message(content))[:2])))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "flip":
            raw[at] = data.draw(st.sampled_from(b' \n"\\{}[],:0-.eE\x00\xc3\xa9\xed\xff'))
        elif action == "drop":
            del raw[at]
        else:
            raw.insert(at, data.draw(st.integers(0, 255)))
    _same(bytes(raw))


PLAIN_KEYS = st.text(max_size=6).filter(lambda k: not k.isdigit() or not k.isascii())
PLAIN_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.text(max_size=12)
    | st.sampled_from(["\x00", "\x1f", "\u2028", "😀", '"', "\\"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(PLAIN_KEYS, children, max_size=4)
    ),
    max_leaves=20,
)
PLAIN_TYPES = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'),
    min_size=3,
    max_size=52,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(PLAIN_KEYS, PLAIN_VALUES, max_size=5),
    PLAIN_TYPES,
    st.integers(1, 2**31 - 1),
    st.integers(-(2**53) + 1, 2**53 - 1),
)
def test_exact_messages_take_the_scanner_and_answer_as_the_python_path(
    body: dict[str, Any], kind: str, sequence: int, timestamp: int
) -> None:
    body.pop("type", None)
    msg = _message({"type": kind, **body}, sequence=sequence, timestamp=timestamp)
    for raw in _forms(msg)[:2]:
        assert ssb._scan is not None and ssb._scan(raw) is not None
        assert _same(raw)[0] == "ok"


def _checked_alone(raw: bytes, key: bytes | None) -> ssb.Checked | InvalidMessage:
    try:
        return ssb.check_raw(raw, key)
    except InvalidMessage as exc:
        return exc


def _each(results: list[ssb.Checked | InvalidMessage]) -> list[Any]:
    return [r if isinstance(r, ssb.Checked) else ("refused", r.code, str(r)) for r in results]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, VALUES, max_size=5), st.booleans())
def test_checking_many_at_once_decides_as_checking_each(body: dict[str, Any], keyed: bool) -> None:
    # check_batch verifies the scanned messages' signatures in one batch call;
    # the verdicts must be check_raw's, message for message.
    key = NET_KEY if keyed else None
    try:
        msg = _message({"type": "tx/note", **body}, key=key)
    except InvalidMessage:
        assume(False)
        return
    raws = _forms(msg)
    forged = bytearray(raws[0])
    at = forged.index(b'"signature":"') + len(b'"signature":"') + 3
    forged[at] = ord("A") if forged[at] != ord("A") else ord("B")
    raws += [bytes(forged), b"not json", b"{}", b" " * (ssb.MAX_RAW_BYTES + 1)]
    expected = _each([_checked_alone(raw, key) for raw in raws])
    assert _each(ssb.check_batch(raws, key)) == expected
    assert expected[-4][:2] == ("refused", "invalid_signature")


def _python_path(raw: bytes) -> ssb.Checked | InvalidMessage:
    try:
        return ssb._check_raw(raw, None, scan=False)
    except InvalidMessage as exc:
        return exc


def test_batches_without_a_network_key_take_scan_many() -> None:
    from chainmail import _ssbscan

    assert ssb._scan_many is _ssbscan.scan_many


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_scan_many_decides_as_the_python_path(data: st.DataObject) -> None:
    # scan_many hashes (the UTF-16 low bytes of non-ASCII text too) and
    # verifies in C without the GIL: every id, text and verdict must be the
    # Python path's, for exact, near-exact and damaged messages alike.
    text = data.draw(st.text(max_size=20) | st.sampled_from(["€", "😀é", "\u2028", "ÿ\x00"]))
    msg = _message({"type": "tx/note", "text": text, "n": [1, {"a": None}]})
    raws = _forms(msg)
    damaged = bytearray(data.draw(st.sampled_from(raws[:2])))
    at = data.draw(st.integers(0, len(damaged) - 1))
    damaged[at] = data.draw(st.sampled_from(b' \n"\\{}0A\xc3\xa9\xf0\x9f'))
    raws.append(bytes(damaged))
    expected = _each([_python_path(raw) for raw in raws])
    assert _each(ssb.check_batch(raws)) == expected


def test_scan_many_refuses_the_size_limit_and_bad_signatures_in_place() -> None:
    big = _message({"type": "test", "s": ""})
    big["content"]["s"] = "€" * 8000
    fits = _message({"type": "test", "s": "😀" * 3900})
    forged = _message({"type": "test"})
    sig = forged["signature"]
    forged["signature"] = ("B" if sig[0] == "A" else "A") + sig[1:]
    raws = [ssb.stringify(m, indent=0).encode() for m in (big, fits, forged)]
    raws.append("not bytes")  # type: ignore[arg-type]
    results = ssb.check_batch(raws)
    assert _each(results)[:3] == _each([_python_path(raw) for raw in raws[:3]])
    assert [getattr(r, "code", "ok") for r in results] == [
        "too_large",
        "ok",
        "invalid_signature",
        "invalid_format",
    ]


def test_scan_many_takes_bytes_and_real_addresses() -> None:
    from chainmail import _ssbscan

    raw = ssb.stringify(_message({"type": "test"}), indent=0).encode()
    with pytest.raises(TypeError):
        _ssbscan.scan_many(["text"], SIGN_OPEN_ADDRESS, ssb._SHA256, ssb._OPENSSL_SHA256, 8192)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="null"):
        _ssbscan.scan_many([raw], 0, ssb._SHA256, 0, 8192)
    found = _ssbscan.scan_many(
        [raw, b"{}"], SIGN_OPEN_ADDRESS, ssb._SHA256, ssb._OPENSSL_SHA256, 8192
    )
    assert found[1] is None and found[0] is not None
    mid, author, sequence, previous, _, text, start, end, units, verified = found[0]
    checked = ssb.check_raw(raw)
    assert (mid, author, sequence, previous, text) == (
        checked.id,
        checked.author,
        1,
        None,
        checked.text,
    )
    assert orjson.loads(raw[start:end]) == checked.content
    assert units == len(checked.text.encode("utf-16-le")) // 2 and verified is True


def test_a_deeply_nested_message_beyond_the_limit_is_refused_without_its_text() -> None:
    # Compact, 60 KiB; its 2-space text, 30 levels down, ~30 times that: scan_many
    # answers its length alone (nothing of the text is kept), and the refusal is
    # the Python path's.
    msg = _message({"type": "test"})
    compact = ssb.stringify(msg, indent=0)
    nested = "[" * 29 + ",".join(["1"] * 29_000) + "]" * 29
    raw = compact.replace('"content":{"type":"test"}', f'"content":{{"type":"test","d":{nested}}}')
    data = raw.encode()
    assert len(data) < ssb.MAX_RAW_BYTES
    from chainmail import _ssbscan

    (found,) = _ssbscan.scan_many(
        [data], SIGN_OPEN_ADDRESS, ssb._SHA256, ssb._OPENSSL_SHA256, ssb.MAX_MESSAGE_LENGTH
    )
    assert found is not None
    mid, author, _, _, _, text, _, _, units, verified = found
    assert (mid, author, text, verified) == ("", None, None, False)
    assert units > 29 * 29_000
    (result,) = ssb.check_batch([data])
    assert _each([result]) == _each([_python_path(data)])
    assert isinstance(result, InvalidMessage) and result.code == "too_large"


def test_empty_batches() -> None:
    from chainmail import _ssbscan

    assert ssb.check_batch([]) == []
    assert (
        _ssbscan.scan_many(
            [], SIGN_OPEN_ADDRESS, ssb._SHA256, ssb._OPENSSL_SHA256, ssb.MAX_MESSAGE_LENGTH
        )
        == []
    )


def test_openssl_and_libsodium_sha256_give_the_same_ids() -> None:
    from chainmail import _ssbscan

    if ssb._OPENSSL_SHA256 == 0:  # hashlib without a libcrypto to find: libsodium's alone
        pytest.skip("no OpenSSL SHA256 found through hashlib")
    raws = [
        ssb.stringify(_message({"type": "test", "s": text}), indent=0).encode()
        for text in ("plain", "héllo", "😀 and €", "\u2028" * 300)
    ]
    limit = ssb.MAX_MESSAGE_LENGTH
    fast = _ssbscan.scan_many(raws, SIGN_OPEN_ADDRESS, ssb._SHA256, ssb._OPENSSL_SHA256, limit)
    sodium = _ssbscan.scan_many(raws, SIGN_OPEN_ADDRESS, ssb._SHA256, 0, limit)
    assert fast == sodium
    assert [f[0] for f in fast if f is not None] == [ssb.check_raw(raw).id for raw in raws]


def test_an_openssl_sha256_that_fails_falls_back_to_libsodium() -> None:
    # OpenSSL 3's SHA256 answers NULL, writing nothing, when it cannot fetch the
    # digest: the id must then be libsodium's hash, never uninitialised bytes.
    import ctypes

    from chainmail import _ssbscan

    failing = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p)(
        lambda *_: None
    )
    address = ctypes.cast(failing, ctypes.c_void_p).value
    assert address
    raws = [ssb.stringify(_message({"type": "test", "s": s}), indent=0).encode() for s in "a€"]
    limit = ssb.MAX_MESSAGE_LENGTH
    got = _ssbscan.scan_many(raws, SIGN_OPEN_ADDRESS, ssb._SHA256, address, limit)
    assert got == _ssbscan.scan_many(raws, SIGN_OPEN_ADDRESS, ssb._SHA256, 0, limit)
    assert [f[0] for f in got if f is not None] == [ssb.check_raw(raw).id for raw in raws]
