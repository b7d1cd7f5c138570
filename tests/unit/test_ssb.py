"""chainmail.ssb: JSON.stringify byte for byte, ids, size, feed rules, HMAC, bad input."""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import pickle
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chainmail import ssb
from chainmail.errors import InvalidMessage
from chainmail.keys import Keypair

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "ssb-reference.json").read_text()
)

ALICE = Keypair.from_seed(bytes(range(32)))
BOB = Keypair.from_seed(bytes(range(1, 33)))
NET_KEY = bytes(range(100, 132))
T0 = 1_700_000_000_000


def _pure(value: object, indent: int = 2) -> str:
    """The pure serialiser alone, bypassing the orjson path."""
    out: list[str] = []
    ssb._dump(value, out, "\n" if indent else "", " " * indent, ": " if indent else ":")
    return "".join(out)


def _feed(n: int, keys: Keypair = ALICE, hmac_key: bytes | None = None) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    state = None
    for i in range(n):
        msg = ssb.create(keys, {"type": "post", "n": i}, state, T0 + i, hmac_key)
        state = ssb.validate(msg, state, hmac_key)
        msgs.append(msg)
    return msgs


def _code(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidMessage) as info:
        fn(*args, **kwargs)
    return str(info.value.code)


def _resign(msg: dict[str, Any], keys: Keypair = ALICE, hmac_key: bytes | None = None) -> None:
    """Replace the signature of ``msg`` (in place) after a deliberate edit."""
    unsigned = {k: v for k, v in msg.items() if k != "signature"}
    data = ssb.stringify(unsigned).encode()
    if hmac_key is not None:
        data = ssb._hmac(data, hmac_key)
    msg["signature"] = base64.b64encode(keys.sign(data)).decode() + ".sig.ed25519"


# -- JSON.stringify vectors ---------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["stringify"], ids=lambda v: v["json"][:40])
def test_stringify_matches_the_js_reference(vector: dict[str, str]) -> None:
    value = ssb._loads(vector["json"])[0]  # parse() itself takes objects only
    assert ssb.stringify(value) == vector["text"]
    assert ssb.stringify(value, indent=0) == vector["compact"]
    if isinstance(value, dict):
        assert ssb.parse(vector["json"]) == value
        assert ssb.message_id(value) == vector["id"]


@pytest.mark.parametrize("vector", VECTORS["refused"], ids=lambda v: v["json"])
def test_json_that_javascript_would_alter_is_refused(vector: dict[str, str]) -> None:
    assert _code(ssb.parse, '{"v": ' + vector["json"] + "}") == "invalid_format"


@pytest.mark.parametrize("digits", [23, 5_000, 100_000])
def test_a_huge_integer_literal_is_refused_in_this_module_s_words(digits: int) -> None:
    with pytest.raises(InvalidMessage) as refused:
        ssb.parse('{"n": ' + "9" * digits + "}")
    assert refused.value.code == "invalid_format"
    assert "JSON.parse would round" in refused.value.detail
    assert "sys." not in refused.value.detail and len(refused.value.detail) < 200


def test_the_longest_integer_javascript_writes_plainly_is_still_read() -> None:
    # 22 characters, as JavaScript writes this double itself.
    assert ssb.parse('{"n": -999999999999999900000}') == {"n": -999999999999999900000.0}


def test_long_integer_literals_javascript_writes_itself_are_doubles() -> None:
    parsed = ssb.parse(
        '{"a": 100000000000000000000, "b": -9007199254740992, "c": 9007199254740991}'
    )
    assert parsed == {"a": 1e20, "b": -(2.0**53), "c": 2**53 - 1}
    assert [type(v) for v in parsed.values()] == [float, float, int]
    assert ssb.stringify(parsed, indent=0) == (
        '{"a":100000000000000000000,"b":-9007199254740992,"c":9007199254740991}'
    )


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (-1.5, "-1.5"),
        (0.1, "0.1"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (123456789012345680000.0, "123456789012345680000"),
        (2.0**60, "1152921504606847000"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (-1.5e-7, "-1.5e-7"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (2.2250738585072014e-308, "2.2250738585072014e-308"),
        (1.5e300, "1.5e+300"),
        (12345.6789, "12345.6789"),
        (9007199254740993.0, "9007199254740992"),
        (0, "0"),
        (-(2**53 - 1), "-9007199254740991"),
        (2**53 - 1, "9007199254740991"),
    ],
)
def test_numbers_are_written_as_ecmascript_does(number: float, text: str) -> None:
    assert ssb.stringify(number) == text
    assert ssb.stringify([number], indent=0) == f"[{text}]"


def test_strings_are_escaped_as_json_stringify_does() -> None:
    controls = "".join(chr(i) for i in range(0x20))
    expected = (
        '"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r'
        "\\u000e\\u000f\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018"
        '\\u0019\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f"'
    )
    assert ssb.stringify(controls) == expected
    assert ssb.stringify('"\\/\x7f\u2028\u2029€😀') == '"\\"\\\\/\x7f\u2028\u2029€😀"'


def test_nesting_and_empty_containers() -> None:
    value = {"a": {}, "b": [], "c": [{}, [], [1, {"d": None}]], "": {"": True}}
    assert ssb.stringify(value) == (
        "{\n"
        '  "a": {},\n'
        '  "b": [],\n'
        '  "c": [\n'
        "    {},\n"
        "    [],\n"
        "    [\n"
        "      1,\n"
        "      {\n"
        '        "d": null\n'
        "      }\n"
        "    ]\n"
        "  ],\n"
        '  "": {\n'
        '    "": true\n'
        "  }\n"
        "}"
    )
    assert (
        ssb.stringify(value, indent=0) == '{"a":{},"b":[],"c":[{},[],[1,{"d":null}]],"":{"":true}}'
    )
    assert ssb.stringify({}) == "{}"
    assert ssb.stringify([]) == "[]"
    assert ssb.stringify((1, "x")) == '[\n  1,\n  "x"\n]'


def test_indent_is_clamped_like_javascript() -> None:
    assert ssb.stringify([1], indent=12) == "[\n          1\n]"
    assert ssb.stringify([1], indent=-3) == "[1]"
    assert ssb.stringify([1], indent=4) == "[\n    1\n]"


def test_array_index_keys_come_first_in_numeric_order() -> None:
    value = {"b": 1, "10": 2, "2": 3, "01": 4, "4294967295": 5, "4294967294": 6, "0": 7}
    assert ssb.stringify(value, indent=0) == (
        '{"0":7,"2":3,"10":2,"4294967294":6,"b":1,"01":4,"4294967295":5}'
    )


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        2**53,
        -(2**53),
        10**30,
        "\ud800",
        {"a": "x\udfffy"},
        {1: "a"},
        {"a": {1, 2}},
        b"bytes",
        object(),
    ],
    ids=repr,
)
def test_values_without_an_exact_json_form_are_refused(value: object) -> None:
    assert _code(ssb.stringify, value) == "invalid_format"
    assert _code(ssb.message_id, {"v": value}) == "invalid_format"


def test_cycles_and_deep_nesting_are_refused() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    assert _code(ssb.stringify, cyclic) == "invalid_format"
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    assert _code(ssb.stringify, deep) == "invalid_format"


# -- hypothesis: round trips, fast path == pure path ---------------------------------------

KEYS = st.one_of(
    st.text(max_size=8),
    st.integers(0, 2**32).map(str),
    st.sampled_from(["0", "01", "-1", "1.5", "4294967294", "4294967295", "type", "€", "😀"]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-ssb.MAX_SAFE_INTEGER, ssb.MAX_SAFE_INTEGER),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.sampled_from(["\u2028", "\x7f", "\x00", '"', "\\", "€", "😀", "\ufeff"]),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=30,
)
PLAIN_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-ssb.MAX_SAFE_INTEGER, ssb.MAX_SAFE_INTEGER)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@given(JSON_VALUES, st.sampled_from([0, 2]))
def test_parse_inverts_stringify(value: object, indent: int) -> None:
    text = ssb.stringify({"v": value}, indent=indent)
    assert ssb.parse(text) == {"v": value}
    assert ssb.parse(text.encode()) == {"v": value}
    assert ssb.stringify(ssb.parse(text), indent=indent) == text


@given(JSON_VALUES, st.sampled_from([0, 2]))
def test_stringify_equals_the_pure_serialiser(value: object, indent: int) -> None:
    assert ssb.stringify(value, indent=indent) == _pure(value, indent)


@given(PLAIN_VALUES, st.sampled_from([0, 2]))
def test_orjson_path_equals_the_pure_serialiser(value: object, indent: int) -> None:
    # Strings without array-index keys: _plain must hold, or the fast path is never tested.
    assume(not any(ssb._is_array_index(k) for k in _all_keys(value)))
    assert ssb._plain(value)
    fast = ssb._to_utf8(value, indent)
    assert fast.decode() == _pure(value, indent)


@given(JSON_VALUES)
def test_plain_walk_of_loaded_values_agrees_with_plain(value: object) -> None:
    # _loads_fast trusts the quicker walk: it must say "plain" exactly when _plain does.
    loaded = orjson.loads(ssb.stringify(value, indent=0))
    assert ssb._plain_loaded(loaded) is ssb._plain(loaded)


def test_plain_walk_of_loaded_values_sends_deep_nesting_to_the_pure_path() -> None:
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    assert ssb._plain_loaded(deep) is False


def _all_keys(value: object) -> list[str]:
    if isinstance(value, dict):
        return [*value, *(k for v in value.values() for k in _all_keys(v))]
    if isinstance(value, list):
        return [k for v in value for k in _all_keys(v)]
    return []


def test_orjson_escapes_every_code_point_as_json_stringify() -> None:
    everything = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    assert ssb._to_utf8(everything, 2).decode() == _pure(everything)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_number_text_round_trips_and_is_shortest(x: float) -> None:
    text = ssb._js_number(x)
    assert float(text) == x
    digits = text.lstrip("-").split("e")[0].replace(".", "").strip("0")
    shortest = repr(abs(x)).split("e")[0].replace(".", "").strip("0")
    assert len(digits) <= max(len(shortest), 1)


@given(st.binary(min_size=8, max_size=8))
def test_number_text_for_any_double(raw: bytes) -> None:
    (x,) = struct.unpack("<d", raw)
    assume(math.isfinite(x))
    assert float(ssb.stringify(x)) == x


# -- ids and size --------------------------------------------------------------------------


def test_id_hashes_the_low_byte_of_each_utf16_unit() -> None:
    msg = ssb.create(ALICE, {"type": "post", "text": "€ 😀"}, None, T0)
    text = ssb.stringify(msg)
    low_bytes = bytes(
        u & 0xFF
        for u in struct.unpack(f"<{len(text.encode('utf-16-le')) // 2}H", text.encode("utf-16-le"))
    )
    expected = "%" + base64.b64encode(hashlib.sha256(low_bytes).digest()).decode() + ".sha256"
    assert ssb.message_id(msg) == expected
    utf8_id = "%" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + ".sha256"
    assert ssb.message_id(msg) != utf8_id
    assert ssb.validate(msg).id == expected


@given(st.text(max_size=200))
def test_id_and_length_agree_with_the_utf16_definition(text: str) -> None:
    utf16 = text.encode("utf-16-le")
    low_bytes = bytes(utf16[::2])
    expected = "%" + base64.b64encode(hashlib.sha256(low_bytes).digest()).decode() + ".sha256"
    assert ssb._id_and_length(text, text.encode()) == (expected, len(utf16) // 2)


VALID_FEEDS = st.binary(min_size=32, max_size=32).map(lambda key: str(Keypair.from_seed(key).id))
FEEDISH = st.builds(
    lambda sigil, body, pad, suffix: sigil + body + pad + suffix,
    st.sampled_from(["@", "%", ""]),
    st.text(alphabet="ABCQgw+/09az", min_size=42, max_size=44),
    st.sampled_from(["=", "", "=="]),
    st.sampled_from([".ed25519", ".sha256", "", ".ed25519\n"]),
)


@given(VALID_FEEDS | FEEDISH | st.text(max_size=60))
def test_cached_author_key_agrees_with_the_feed_id_rule(author: str) -> None:
    expected = (
        base64.b64decode(author[1:45], validate=True) if ssb._FEED_ID_RE.fullmatch(author) else None
    )
    for _ in range(2):  # cold, then from the cache
        assert ssb._author_key(author) == expected


def test_an_author_of_a_str_subclass_is_checked_like_a_str() -> None:
    class Text(str):
        pass

    msg = dict(MSG1, author=Text(MSG1["author"]))
    assert ssb.check(msg) == ssb.check(MSG1)
    bad = dict(MSG1, author=Text(MSG1["author"][:-1]))
    assert _code(ssb.check, bad) == "invalid_format"


def test_checked_built_fast_equals_the_dataclass_and_pickles() -> None:
    checked = ssb.check(MSG1)
    fields = [getattr(checked, f.name) for f in dataclasses.fields(ssb.Checked)]
    assert ssb._checked(*fields) == ssb.Checked(*fields) == checked
    assert type(ssb._checked(*fields)) is ssb.Checked
    again = pickle.loads(pickle.dumps(checked))
    assert again == checked and type(again) is ssb.Checked
    with pytest.raises(AttributeError):
        again.text = ""  # type: ignore[misc]


def test_euro_id_vector_from_the_js_reference() -> None:
    vector = next(v for v in VECTORS["stringify"] if "€uro" in v["json"])
    assert ssb.message_id(json.loads(vector["json"])) == vector["id"]


def _sized(units: int, filler: str = "x") -> dict[str, Any]:
    """A signed message whose 2-space JSON is exactly ``units`` UTF-16 units long."""
    base = ssb.create(ALICE, {"type": "post", "text": ""}, None, T0)
    room = units - len(ssb.stringify(base))
    per = len(filler.encode("utf-16-le")) // 2
    text = filler * (room // per) + "x" * (room % per)
    msg = copy.deepcopy(base)
    msg["content"]["text"] = text
    _resign(msg)
    assert len(ssb.stringify(msg).encode("utf-16-le")) // 2 == units
    return msg


@pytest.mark.parametrize("filler", ["x", "é", "😀"])
def test_size_limit_is_8192_utf16_units(filler: str) -> None:
    assert ssb.validate(_sized(8192, filler)).sequence == 1
    assert _code(ssb.validate, _sized(8193, filler)) == "too_large"
    assert _code(ssb.check_raw, ssb.stringify(_sized(8193, filler)).encode()) == "too_large"


def test_create_refuses_a_message_over_the_limit() -> None:
    assert _code(ssb.create, ALICE, {"type": "post", "t": "x" * 9000}, None, T0) == "too_large"


# -- feed rules ----------------------------------------------------------------------------


def test_a_feed_validates_in_order() -> None:
    msgs = _feed(3)
    state = None
    for i, msg in enumerate(msgs, start=1):
        state = ssb.validate(msg, state)
        assert state == ssb.FeedState(id=ssb.message_id(msg), sequence=i)
    assert msgs[0]["previous"] is None
    assert msgs[1]["previous"] == ssb.message_id(msgs[0])
    assert list(msgs[0]) == list(ssb._KEY_ORDERS[0])


def test_first_message_must_be_sequence_one() -> None:
    msgs = _feed(2)
    assert _code(ssb.validate, msgs[1], None) == "out_of_order"


def test_gap_and_replay_are_out_of_order() -> None:
    msgs = _feed(3)
    first = ssb.validate(msgs[0])
    assert _code(ssb.validate, msgs[2], first) == "out_of_order"
    assert _code(ssb.validate, msgs[0], first) == "out_of_order"


def test_wrong_previous_is_a_fork() -> None:
    msgs = _feed(2)
    other = _feed(1, BOB)[0]
    wrong_head = ssb.FeedState(id=ssb.message_id(other), sequence=1)
    assert _code(ssb.validate, msgs[1], wrong_head) == "fork"
    # A second message 2 on the same feed, signed and valid on its own.
    fork = ssb.create(ALICE, {"type": "post", "n": "other"}, ssb.validate(msgs[0]), T0 + 9)
    head = ssb.validate(msgs[1], ssb.validate(msgs[0]))
    assert _code(ssb.validate, fork, head) == "out_of_order"
    assert _code(ssb.check_order, ssb.check(msgs[1]), wrong_head) == "fork"


def test_check_order_takes_checked_or_dict() -> None:
    msgs = _feed(2)
    first = ssb.check_order(ssb.check(msgs[0]), None)
    assert ssb.check_order(msgs[1], first) == ssb.FeedState(ssb.message_id(msgs[1]), 2)


def test_check_returns_the_stored_form() -> None:
    msg = _feed(1)[0]
    checked = ssb.check(msg)
    assert checked.text == ssb.stringify(msg)
    assert (checked.author, checked.sequence, checked.previous) == (ALICE.id, 1, None)
    assert (checked.timestamp, checked.content) == (T0, {"type": "post", "n": 0})
    assert checked.id == ssb.message_id(msg)
    assert ssb.check_raw(checked.text.encode()) == checked
    assert ssb.check_raw(ssb.stringify(msg, indent=0).encode()) == checked
    assert ssb.check_raw(json.dumps(msg, indent=7).encode()) == checked


def test_author_and_sequence_may_swap() -> None:
    msg: dict[str, Any] = {
        "previous": None,
        "sequence": 1,
        "author": ALICE.id,
        "timestamp": T0,
        "hash": "sha256",
        "content": {"type": "post"},
    }
    _resign(msg)
    assert ssb.validate(msg).id == ssb.message_id(msg)


def test_integral_float_sequence_counts_as_integer() -> None:
    msg = _feed(1)[0]
    msg["sequence"] = 1.0
    _resign(msg)
    assert ssb.validate(msg).sequence == 1
    assert ssb.check_raw(ssb.stringify(msg).replace('"sequence": 1', '"sequence": 1.0').encode())


def test_create_refuses_content_too_deep() -> None:
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    assert _code(ssb.create, ALICE, {"type": "post", "d": deep}, None, T0) == "invalid_format"


def test_create_refuses_what_cannot_be_copied_as_not_json() -> None:
    # A mappingproxy inside the content raised copy's TypeError ("cannot pickle").
    from types import MappingProxyType

    with pytest.raises(InvalidMessage, match="not a JSON value") as caught:
        ssb.create(ALICE, {"type": "post", "x": MappingProxyType({"a": 1})}, None, T0)
    assert caught.value.code == "invalid_format"


def test_create_copies_content_and_accepts_a_box() -> None:
    content: dict[str, Any] = {"type": "post", "list": [1]}
    msg = ssb.create(ALICE, content, None, T0)
    content["list"].append(2)
    assert msg["content"] == {"type": "post", "list": [1]}
    boxed = ssb.create(ALICE, "QUJD.box", None, T0)
    assert ssb.check(boxed).content == "QUJD.box"
    assert ssb.validate(ssb.create(ALICE, {"type": "post"}, None, 1.5)).sequence == 1


# -- HMAC network key ----------------------------------------------------------------------


def test_hmac_signed_feed_validates_only_with_its_key() -> None:
    msgs = _feed(2, hmac_key=NET_KEY)
    state = ssb.validate(msgs[0], None, NET_KEY)
    assert ssb.validate(msgs[1], state, base64.b64encode(NET_KEY).decode()).sequence == 2
    assert _code(ssb.validate, msgs[0]) == "invalid_signature"
    assert _code(ssb.validate, msgs[0], None, bytes(32)) == "invalid_signature"
    plain = _feed(1)[0]
    assert _code(ssb.validate, plain, None, NET_KEY) == "invalid_signature"
    assert ssb.check_raw(ssb.stringify(msgs[0]).encode(), NET_KEY).id == state.id


@pytest.mark.parametrize(
    "key",
    [
        b"",
        bytes(31),
        bytes(33),
        "",
        "AAAA",
        base64.b64encode(bytes(32)).decode()[:-2] + "B=",
        True,
        7,
    ],
    ids=repr,
)
def test_malformed_hmac_keys_refuse_every_message(key: Any) -> None:
    msg = _feed(1)[0]
    assert _code(ssb.validate, msg, None, key) == "invalid_signature"
    assert _code(ssb.check_raw, ssb.stringify(msg).encode(), key) == "invalid_signature"
    results = ssb.check_batch([ssb.stringify(msg).encode()] * 2, key)
    assert [r.code for r in results if isinstance(r, InvalidMessage)] == ["invalid_signature"] * 2


def test_hmac_is_hmac_sha512_256() -> None:
    # libsodium crypto_auth = HMAC-SHA-512 truncated to 32 bytes (RFC 4231 case 2 prefix).
    mac = ssb._hmac(b"what do ya want for nothing?", b"Jefe" + bytes(28))
    assert len(mac) == 32
    import hmac as std_hmac

    assert (
        mac
        == std_hmac.new(b"Jefe" + bytes(28), b"what do ya want for nothing?", "sha512").digest()[
            :32
        ]
    )


# -- malformed messages: every kind, precise code ------------------------------------------


def _valid() -> dict[str, Any]:
    return copy.deepcopy(_feed(2)[1])


MSG1 = _feed(1)[0]
MSG2 = _feed(2)[1]


def _with(**changes: Any) -> dict[str, Any]:
    msg = copy.deepcopy(MSG2)
    msg.update(changes)
    return msg


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in MSG2.items() if k != key}


def _reordered(order: list[str]) -> dict[str, Any]:
    return {k: MSG2[k] for k in order}


B64_32 = base64.b64encode(bytes(32)).decode()
NONCANONICAL_32 = B64_32[:42] + "B="  # unused bits set
SIG = MSG2["signature"]
MALFORMED: list[tuple[str, Any]] = [
    ("not an object: list", [MSG2]),
    ("not an object: str", "msg"),
    ("not an object: None", None),
    ("missing previous", _without("previous")),
    ("missing signature", _without("signature")),
    ("missing content", _without("content")),
    ("extra key", {**MSG2, "extra": 1}),
    ("extra key in the middle", {"x": 1, **MSG2}),
    (
        "timestamp and hash swapped",
        _reordered(["previous", "author", "sequence", "hash", "timestamp", "content", "signature"]),
    ),
    (
        "signature first",
        _reordered(["signature", "previous", "author", "sequence", "timestamp", "hash", "content"]),
    ),
    ("previous: bad id", _with(previous="%abc.sha256")),
    ("previous: non-canonical", _with(previous="%" + NONCANONICAL_32 + ".sha256")),
    ("previous: blob sigil", _with(previous="&" + B64_32 + ".sha256")),
    ("previous: int", _with(previous=1)),
    ("previous: null after 1", _with(previous=None)),
    ("previous: set on message 1", {**MSG1, "previous": MSG2["previous"]}),
    ("author: int", _with(author=5)),
    ("author: wrong suffix", _with(author="@" + B64_32 + ".sha256")),
    ("author: no sigil", _with(author=B64_32 + ".ed25519")),
    ("author: non-canonical", _with(author="@" + NONCANONICAL_32 + ".ed25519")),
    ("author: 33 bytes", _with(author="@" + base64.b64encode(bytes(33)).decode() + ".ed25519")),
    ("sequence: 0", _with(sequence=0)),
    ("sequence: -1", _with(sequence=-1)),
    ("sequence: 1.5", _with(sequence=1.5)),
    ("sequence: str", _with(sequence="2")),
    ("sequence: bool", _with(sequence=True)),
    ("sequence: 2^31", _with(sequence=2**31)),
    ("sequence: None", _with(sequence=None)),
    ("timestamp: str", _with(timestamp="1")),
    ("timestamp: None", _with(timestamp=None)),
    ("timestamp: bool", _with(timestamp=True)),
    ("timestamp: NaN", _with(timestamp=math.nan)),
    ("timestamp: inf", _with(timestamp=math.inf)),
    ("timestamp: 2^60", _with(timestamp=2**60)),
    ("hash: sha512", _with(hash="sha512")),
    ("hash: upper", _with(hash="SHA256")),
    ("hash: None", _with(hash=None)),
    ("content: None", _with(content=None)),
    ("content: list", _with(content=[{"type": "post"}])),
    ("content: empty", _with(content={})),
    ("content: int", _with(content=5)),
    ("content: type too short", _with(content={"type": "ab"})),
    ("content: type too long", _with(content={"type": "x" * 53})),
    ("content: type int", _with(content={"type": 123})),
    ("content: type emoji 2 units", _with(content={"type": "😀"})),
    ("content: plain string", _with(content="hello")),
    ("content: empty string", _with(content="")),
    ("content: box not canonical", _with(content="QUJ=.box")),
    ("content: box with newline", _with(content="QUJD.box\nx")),
    ("content: box with U+2028", _with(content="QUJD.box\u2028")),
    ("content: NaN", _with(content={"type": "post", "x": math.nan})),
    ("content: huge int", _with(content={"type": "post", "x": 2**64})),
    ("content: lone surrogate", _with(content={"type": "post", "x": "\ud83d"})),
    ("content: lone surrogate key", _with(content={"type": "post", "\udc00": 1})),
    ("content: set", _with(content={"type": "post", "x": {1}})),
    ("content: int key", _with(content={"type": "post", 1: "x"})),
    ("content: bytes", _with(content={"type": "post", "x": b"x"})),
    ("signature: int", _with(signature=1)),
    ("signature: wrong suffix", _with(signature=SIG.replace(".sig.ed25519", ".sig.ed25518"))),
    ("signature: no suffix", _with(signature=SIG.split(".")[0])),
    ("signature: 65 bytes", _with(signature=base64.b64encode(bytes(65)).decode() + ".sig.ed25519")),
    ("signature: 66 bytes", _with(signature=base64.b64encode(bytes(66)).decode() + ".sig.ed25519")),
    ("signature: 63 bytes", _with(signature=base64.b64encode(bytes(63)).decode() + ".sig.ed25519")),
    ("signature: non-canonical", _with(signature=SIG[:85] + "B==.sig.ed25519")),
]


def _deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


# Values whose repr or str would itself fail (too deep, too many digits).
HOSTILE = [10**5000, _deep(3000), {"type": _deep(3000)}, {"type": "post", "x": 10**5000}]
MALFORMED += [
    (f"hostile {key} {i}", _with(**{key: value}))
    for key in ("previous", "author", "sequence", "timestamp", "hash", "content", "signature")
    for i, value in enumerate(HOSTILE)
]


@pytest.mark.parametrize(("name", "msg"), MALFORMED, ids=[n for n, _ in MALFORMED])
def test_malformed_messages_are_invalid_format(name: str, msg: Any) -> None:
    state = ssb.validate(MSG1)
    assert _code(ssb.validate, msg, state) == "invalid_format"
    assert _code(ssb.check, msg) == "invalid_format"


def test_sanity_of_the_malformed_table() -> None:
    # The base of every edit is valid, so each edit alone is what fails.
    assert ssb.validate(MSG2, ssb.validate(MSG1)).sequence == 2
    assert (
        _code(ssb.validate, _with(content={"type": "😀a"}), ssb.validate(MSG1))
        == "invalid_signature"
    )


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["content"].update(n=99),
        lambda m: m.update(timestamp=m["timestamp"] + 1),
        lambda m: m.update(signature=_feed(2, BOB)[1]["signature"]),
        lambda m: m.update(signature=base64.b64encode(bytes(64)).decode() + ".sig.ed25519"),
        lambda m: m.update(author=BOB.id),
    ],
    ids=["content", "timestamp", "other key's signature", "zero signature", "other author"],
)
def test_tampering_is_invalid_signature(edit: Any) -> None:
    msg = copy.deepcopy(MSG2)
    edit(msg)
    assert _code(ssb.validate, msg, ssb.validate(MSG1)) == "invalid_signature"
    assert _code(ssb.check_raw, ssb.stringify(msg).encode()) == "invalid_signature"


def test_box_content_variants_that_ssb_validate_accepts() -> None:
    for box in ["QUJD.box", ".box", "QUI=.box", "QQ==.box", "QUJD.box2", "QUJD.boxanything"]:
        msg = ssb.create(ALICE, box, None, T0)
        assert ssb.validate(msg).sequence == 1, box
    msg = ssb.create(ALICE, {"type": "😀a"}, None, T0)  # 3 UTF-16 units
    assert ssb.validate(msg).sequence == 1
    msg = ssb.create(ALICE, {"type": "x" * 52}, None, T0)
    assert ssb.validate(msg).sequence == 1


# -- malformed raw input -------------------------------------------------------------------

RAW = ssb.stringify(MSG1)
MALFORMED_RAW: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("garbage", b"\x00\xff\xfe garbage"),
    ("not utf-8", RAW.replace("post", "p\xf8st").encode("latin-1")),
    ("encoded surrogate", RAW.replace("post", "po").encode()[:-1] + b'"\xed\xa0\x80"}'),
    ("BOM", b"\xef\xbb\xbf" + RAW.encode()),
    ("truncated", RAW.encode()[:-1]),
    ("trailing data", RAW.encode() + b" {}"),
    ("two messages", RAW.encode() + b"\n" + RAW.encode()),
    ("null", b"null"),
    ("array", b"[" + RAW.encode() + b"]"),
    ("number", b"1"),
    (
        "duplicate key",
        RAW.replace('"hash": "sha256"', '"hash": "sha256", "hash": "sha256"').encode(),
    ),
    (
        "duplicate nested key",
        RAW.replace('"type": "post"', '"type": "post", "type": "post"').encode(),
    ),
    ("NaN", RAW.replace(f'"timestamp": {T0}', '"timestamp": NaN').encode()),
    ("Infinity", RAW.replace(f'"timestamp": {T0}', '"timestamp": Infinity').encode()),
    ("-Infinity", RAW.replace(f'"timestamp": {T0}', '"timestamp": -Infinity').encode()),
    ("1e400", RAW.replace(f'"timestamp": {T0}', '"timestamp": 1e400').encode()),
    ("huge int", RAW.replace(f'"timestamp": {T0}', '"timestamp": 9007199254740993').encode()),
    ("very huge int", RAW.replace(f'"timestamp": {T0}', '"timestamp": ' + "9" * 5000).encode()),
    ("lone surrogate escape", RAW.replace('"post"', '"post\\ud800"').encode()),
    ("lone low surrogate escape", RAW.replace('"post"', '"\\udc00post"').encode()),
    ("raw control char", RAW.replace('"post"', '"po\x01st"').encode()),
    ("single quotes", RAW.replace('"post"', "'post'").encode()),
    ("trailing comma", RAW.replace('"post"', '"post",').encode()),
    ("leading zero", RAW.replace(f'"timestamp": {T0}', '"timestamp": 0123').encode()),
    ("deep nesting", b"[" * 30_000 + b"]" * 30_000),
    ("deep objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000),
]


@pytest.mark.parametrize(("name", "data"), MALFORMED_RAW, ids=[n for n, _ in MALFORMED_RAW])
def test_malformed_raw_input_is_invalid_format(name: str, data: bytes) -> None:
    assert _code(ssb.check_raw, data) == "invalid_format"
    if len(data) < 1000:
        assert _code(ssb.parse, data) == "invalid_format"


def test_raw_input_beyond_the_byte_cap_is_too_large() -> None:
    padded = RAW.replace("{", "{" + " " * ssb.MAX_RAW_BYTES, 1).encode()
    assert _code(ssb.check_raw, padded) == "too_large"


def test_parse_keeps_order_and_accepts_str() -> None:
    parsed = ssb.parse(' {"b": 1, "a": [true, null, 1.5, "x"]} ')
    assert list(parsed) == ["b", "a"]
    assert parsed == {"b": 1, "a": [True, None, 1.5, "x"]}
    assert _code(ssb.parse, '{"a": "\ud800"}') == "invalid_format"
    assert _code(ssb.parse, 12) == "invalid_format"


# -- hypothesis: only InvalidMessage ever escapes ------------------------------------------

ANYTHING = st.recursive(
    st.one_of(
        SCALARS,
        st.floats(),
        st.integers(),
        st.binary(max_size=4),
        st.just(float("nan")),
        st.sampled_from([ALICE.id, MSG2["previous"], SIG, "sha256", "QUJD.box", "\ud800"]),
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.one_of(KEYS, st.integers()), children, max_size=4)
        | st.tuples(children)
        | st.frozensets(st.integers(), max_size=2)
    ),
    max_leaves=12,
)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(
    st.sampled_from(list(MSG2)),
    ANYTHING,
    st.booleans(),
    st.booleans(),
)
def test_mutated_messages_raise_only_invalid_message(
    key: str, value: object, drop: bool, with_state: bool
) -> None:
    msg = copy.deepcopy(MSG2)
    if drop:
        del msg[key]
        msg[key] = value  # also moves the key to the end
    else:
        msg[key] = value
    state = ssb.validate(MSG1) if with_state else None
    with contextlib.suppress(InvalidMessage):
        ssb.validate(msg, state)
    try:
        data = ssb.stringify(msg, indent=0).encode()
    except InvalidMessage:
        return
    with contextlib.suppress(InvalidMessage):
        ssb.check_raw(data)


@settings(max_examples=300)
@given(ANYTHING)
def test_arbitrary_values_raise_only_invalid_message(value: object) -> None:
    functions: list[Any] = [ssb.validate, ssb.check, ssb.message_id, ssb.stringify]
    for fn in functions:
        with contextlib.suppress(InvalidMessage):
            fn(value)


@settings(max_examples=500)
@given(st.data())
def test_mutated_bytes_raise_only_invalid_message(data: st.DataObject) -> None:
    raw = bytearray(RAW.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if action == "flip":
            raw[i] = data.draw(st.integers(0, 255))
        elif action == "delete":
            del raw[i]
        else:
            raw[i:i] = data.draw(
                st.sampled_from(
                    [
                        b"{",
                        b"}",
                        b"[",
                        b'"',
                        b",",
                        b":",
                        b"\\",
                        b"\\u",
                        b"1",
                        b"-",
                        b".",
                        b"e",
                        b"\xff",
                        b"\xe2\x82\xac",
                    ]
                )
            )
    with contextlib.suppress(InvalidMessage):
        ssb.check_raw(bytes(raw))
    with contextlib.suppress(InvalidMessage):
        ssb.parse(bytes(raw))


@settings(max_examples=200)
@given(st.binary(max_size=64) | st.text(max_size=64))
def test_random_input_raises_only_invalid_message(data: bytes | str) -> None:
    with contextlib.suppress(InvalidMessage):
        ssb.check_raw(data)  # type: ignore[arg-type]


# -- batches and pickling ------------------------------------------------------------------


def test_check_batch_keeps_order_and_pickles() -> None:
    msgs = _feed(2)
    items = [ssb.stringify(msgs[0]).encode(), b"nonsense", ssb.stringify(msgs[1]).encode()]
    results = pickle.loads(pickle.dumps(ssb.check_batch(items)))
    assert isinstance(results[0], ssb.Checked) and results[0].sequence == 1
    assert isinstance(results[1], InvalidMessage) and results[1].code == "invalid_format"
    assert isinstance(results[2], ssb.Checked) and results[2].previous == results[0].id
    assert pickle.loads(pickle.dumps(ssb.check_batch)) is ssb.check_batch


def test_checked_and_feed_state_are_frozen() -> None:
    checked = ssb.check(MSG1)
    with pytest.raises(AttributeError):
        checked.sequence = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ssb.FeedState("x", 1).sequence = 2  # type: ignore[misc]


# -- vectors: feeds signed by the JS reference ---------------------------------------------


@pytest.mark.parametrize("feed", VECTORS["feeds"], ids=lambda f: f["author"][:12])
def test_feeds_signed_by_the_js_reference_validate_with_the_same_ids(feed: dict[str, Any]) -> None:
    state = None
    for text, mid in zip(feed["texts"], feed["ids"], strict=True):
        msg = ssb.parse(text)
        assert ssb.stringify(msg) == text
        state = ssb.validate(msg, state, feed["hmac_key"])
        assert state.id == mid
        assert ssb.check_raw(text.encode(), feed["hmac_key"]).id == mid
        if feed["hmac_key"]:
            assert _code(ssb.check_raw, text.encode()) == "invalid_signature"
    assert feed["author"] == Keypair.from_seed(base64.b64decode(feed["seed"])).id


# -- the parse fast path (orjson round trip) against the exact scanner -----------------

_NUMBER_TOKENS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(
        [
            "-0",
            "0.0",
            "-0.0",
            "1e400",
            "-1e400",
            "1.0",
            "1e21",
            "1e-7",
            "100000000000000000000",
            "9007199254740993",
            "18446744073709551616",
            "1E2",
            "01",
            "NaN",
            "Infinity",
        ]
    ),
)
_STRING_TOKENS = st.one_of(
    st.text(max_size=8).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.sampled_from(
        [
            '"\\ud800"',
            '"\\udc00x"',
            '"\\ud83d\\ude00"',
            '"\\/"',
            '"\\u0041"',
            '"\\u0030"',
            '"\\u001f"',
            '"\\u007f"',
            '"\u2028"',
            '"a\\"b"',
            '"0"',
            '"4294967294"',
            '"type"',
        ]
    ),
)


def _json_texts(indent: bool) -> st.SearchStrategy[str]:
    """JSON texts laid out as orjson writes them, with duplicate keys and odd tokens."""
    scalars = st.one_of(st.sampled_from(["null", "true", "false"]), _NUMBER_TOKENS, _STRING_TOKENS)

    def containers(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        members = st.lists(st.tuples(_STRING_TOKENS, children), max_size=4).flatmap(
            # Repeat some members' keys to make duplicates.
            lambda ms: (
                st.lists(st.sampled_from(ms), max_size=2).map(lambda extra: ms + extra)
                if ms
                else st.just(ms)
            )
        )
        sep = ": " if indent else ":"
        objects = members.map(lambda ms: [f"{k}{sep}{v}" for k, v in ms])
        arrays = st.lists(children, max_size=4)
        return st.tuples(st.sampled_from("{["), objects, arrays).map(
            lambda t: _layout(t[0], t[1] if t[0] == "{" else t[2], indent)
        )

    return st.recursive(scalars, containers, max_leaves=12)


def _layout(open_: str, items: list[str], indent: bool) -> str:
    close = "}" if open_ == "{" else "]"
    if not items:
        return open_ + close
    if not indent:
        return open_ + ",".join(items) + close
    body = ",\n".join("  " + item.replace("\n", "\n  ") for item in items)
    return f"{open_}\n{body}\n{close}"


def _tagged(value: object) -> object:
    """``value`` with types and key order made visible to ``==`` (1 vs 1.0 vs True, -0.0)."""
    if isinstance(value, dict):
        return ("dict", [(k, _tagged(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_tagged(v) for v in value])
    if isinstance(value, float):
        return ("float", struct.pack(">d", value))
    return (type(value).__name__, value)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans().flatmap(_json_texts))
def test_fast_and_exact_parse_agree(text: str) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    outcomes: list[tuple[object, str | None, Any] | None] = []
    for fast in (True, False):
        try:
            value, plain = ssb._loads(raw, fast=fast)
        except InvalidMessage:
            outcomes.append(None)
            continue
        utf8 = ssb._to_utf8(value, 2).decode() if plain else None
        outcomes.append((_tagged(value), utf8, value))
    fast_outcome, exact_outcome = outcomes
    if fast_outcome is None or exact_outcome is None:
        assert fast_outcome is exact_outcome is None
    else:
        assert fast_outcome[0] == exact_outcome[0]
        for outcome in (fast_outcome, exact_outcome):  # either serialiser: the same bytes
            if outcome[1] is not None:
                assert outcome[1] == _pure(outcome[2], 2)
    if ssb._loads_fast(raw) is not None:
        assert exact_outcome is not None


def test_fast_parse_takes_canonical_text_and_leaves_the_rest() -> None:
    msg = _feed(1)[0]
    for indent in (0, 2):
        assert ssb._loads_fast(ssb.stringify(msg, indent=indent).encode()) is not None
    for text in [
        '{"a":1,"a":1}',
        '{\n  "a": 1,\n  "a": 1\n}',
        '{"a":"\\ud800"}',
        '{"a":-0}',
        '{"a":9007199254740993}',
        '{"a":1e400}',
        '{"a":"\\/"}',
        '{"a":1} ',
    ]:
        assert ssb._loads_fast(text.encode()) is None, text
    assert _code(ssb.parse, b'{"a":1,"a":1}') == "invalid_format"
