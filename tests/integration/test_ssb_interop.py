"""chainmail.ssb against the JS reference (ssb-validate, ssb-keys) running in Node.js.

Each test sends one batch to one node process (scripts in ``interop/``).
``make test`` installs ``interop/node_modules`` from the lock file first; when
it is missing these tests fail rather than skip, since CI always has it.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import random
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from chainmail import ssb
from chainmail.errors import InvalidMessage
from chainmail.keys import Keypair

pytestmark = pytest.mark.interop

INTEROP = Path(__file__).resolve().parents[2] / "interop"
ALICE = Keypair.from_seed(bytes([3]) * 32)
BOB = Keypair.from_seed(bytes([4]) * 32)
NET_KEY = bytes(range(7, 39))
NET_KEY_B64 = base64.b64encode(NET_KEY).decode()


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not on PATH: the SSB interop tests need Node.js")
    for package in ("ssb-validate", "ssb-keys", "ssb-validation-dataset"):
        if not (INTEROP / "node_modules" / package / "package.json").exists():
            pytest.fail(
                f"interop/node_modules/{package} is missing: run `make test`, "
                "or `cd interop && npm ci`"
            )
    return exe


def _run(node: str, script: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send NDJSON requests to one node process; one JSON reply per request."""
    data = "".join(json.dumps(r) + "\n" for r in requests).encode()
    proc = subprocess.run(
        [node, script], input=data, cwd=INTEROP, capture_output=True, timeout=300, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"node {script} exited {proc.returncode}:\n{proc.stderr.decode()[-3000:]}")
    # split("\n"), not splitlines(): replies carry U+2028 and friends unescaped.
    replies = [json.loads(line) for line in proc.stdout.decode().split("\n") if line]
    assert len(replies) == len(requests)
    return replies


def _validate_in_node(
    node: str, texts: list[str], hmac_key: str | None = None, state: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    request = {"texts": texts, "hmac_key": hmac_key, "state": state}
    results: list[dict[str, Any]] = _run(node, "validate.js", [request])[0]["results"]
    return results


TRICKY_CONTENTS: list[dict[str, Any] | str] = [
    {"type": "post", "text": "hello"},
    {"type": "post", "text": "€uro, é, 😀, 中文, \u2028\u2029, \x7f", "emoji": "👩‍👩‍👧"},
    {"type": "nums", "a": 0.1, "b": 1e21, "c": 5e-324, "d": -0.0, "e": 1e-7, "f": 1e20},
    {"type": "nums", "g": 2.0**53, "h": -(2**53 - 1), "i": 1.7976931348623157e308, "j": 0.5},
    {"type": "ctl", "s": "".join(chr(i) for i in range(0x20)) + '"\\/'},
    {"type": "nest", "a": {"b": [1, [2, {}], [], {"c": None}]}, "e": {}, "f": [], "t": True},
    {"type": "idx", "2": "b", "10": "c", "1": "a", "01": "d", "4294967295": "e"},
    "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=.box",
    ".box",
    "QQ==.box.future",
    {"type": "x" * 52},
    {"type": "😀a"},
    {"type": "post", "text": "x" * 7000},
]


def _chainmail_feed(
    keys: Keypair, hmac_key: bytes | None, timestamps: list[float] | None = None
) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    state = None
    for i, content in enumerate(TRICKY_CONTENTS):
        ts: float = timestamps[i] if timestamps else 1_700_000_000_000 + i
        msg = ssb.create(keys, content, state, ts, hmac_key)
        state = ssb.validate(msg, state, hmac_key)
        msgs.append(msg)
    return msgs


@pytest.mark.parametrize("hmac_key", [None, NET_KEY], ids=["main net", "hmac key"])
@pytest.mark.parametrize("indent", [2, 0], ids=["2-space", "compact"])
def test_chainmail_feeds_pass_ssb_validate_with_the_same_ids(
    node: str, hmac_key: bytes | None, indent: int
) -> None:
    timestamps = [1.5, 2, 1e21, 3.25, 4, 5e-324, 6, 7, 8, 9, 10, 11, 12][: len(TRICKY_CONTENTS)]
    msgs = _chainmail_feed(ALICE, hmac_key, timestamps)
    key_b64 = None if hmac_key is None else base64.b64encode(hmac_key).decode()
    results = _validate_in_node(node, [ssb.stringify(m, indent) for m in msgs], key_b64)
    assert results == [{"ok": True, "id": ssb.message_id(m)} for m in msgs]


def test_ssb_validate_rejects_what_chainmail_rejects(node: str) -> None:
    msgs = _chainmail_feed(ALICE, NET_KEY)
    texts = [ssb.stringify(m) for m in msgs[:2]]
    # Right key, then: no key, and a tampered second message.
    assert [r["ok"] for r in _validate_in_node(node, texts, NET_KEY_B64)] == [True, True]
    assert [r["ok"] for r in _validate_in_node(node, texts[:1])] == [False]
    tampered = copy.deepcopy(msgs[1])
    tampered["content"]["text"] += "!"
    results = _validate_in_node(node, [texts[0], ssb.stringify(tampered)], NET_KEY_B64)
    assert [r["ok"] for r in results] == [True, False]
    with pytest.raises(InvalidMessage, match="signature"):
        ssb.validate(tampered, ssb.validate(msgs[0], None, NET_KEY), NET_KEY)


@pytest.mark.parametrize("hmac_key", [None, NET_KEY_B64], ids=["main net", "hmac key"])
def test_ssb_keys_feeds_validate_in_chainmail_with_the_same_ids(
    node: str, hmac_key: str | None
) -> None:
    contents = [c for c in TRICKY_CONTENTS if not (isinstance(c, dict) and "x" * 7000 in str(c))]
    request = {
        "seed": base64.b64encode(bytes([9]) * 32).decode(),
        "hmac_key": hmac_key,
        "contents": [
            json.loads(ssb.stringify(c, 0)) if isinstance(c, dict) else c for c in contents
        ],
        "timestamps": [1_700_000_000_000 + i * 0.5 for i in range(len(contents))],
    }
    reply = _run(node, "sign.js", [request])[0]
    assert reply["author"] == Keypair.from_seed(bytes([9]) * 32).id
    state = None
    for msg_json, mid, text in zip(reply["msgs"], reply["ids"], reply["texts"], strict=True):
        msg = ssb.parse(json.dumps(msg_json, ensure_ascii=False))
        assert ssb.stringify(msg) == text
        state = ssb.validate(msg, state, hmac_key)
        assert state.id == mid
        assert ssb.check_raw(text.encode(), hmac_key).id == mid
    if hmac_key is not None:
        with pytest.raises(InvalidMessage) as info:
            ssb.validate(ssb.parse(reply["texts"][0]))
        assert info.value.code == "invalid_signature"


# -- JSON.stringify on thousands of generated values ----------------------------------------

SPECIAL_CHARS = ['"', "\\", "/", "\x00", "\x1f", "\x7f", "\u2028", "\u2029", "\ufeff", "€", "😀"]


def _random_string(r: random.Random) -> str:
    out = []
    for _ in range(r.randrange(12)):
        kind = r.randrange(5)
        if kind == 0:
            out.append(r.choice(SPECIAL_CHARS))
        elif kind == 1:
            out.append(chr(r.randrange(0x20)))
        elif kind == 2:
            out.append(chr(r.randrange(0x20, 0x800)))
        elif kind == 3:
            c = r.randrange(0x800, 0x110000)
            out.append(chr(c) if not 0xD800 <= c <= 0xDFFF else "x")
        else:
            out.append(chr(r.randrange(0x20, 0x7F)))
    return "".join(out)


def _random_number(r: random.Random) -> float:
    kind = r.randrange(7)
    if kind == 0:
        return r.randrange(-ssb.MAX_SAFE_INTEGER, ssb.MAX_SAFE_INTEGER + 1)
    if kind == 1:
        return r.randrange(-1000, 1000)
    if kind == 2:  # any finite double, from random bits
        while True:
            (x,) = struct.unpack("<d", r.getrandbits(64).to_bytes(8, "little"))
            if math.isfinite(x):
                return float(x)
    if kind == 3:  # decimal-looking values
        return round(r.uniform(-1e6, 1e6), r.randrange(8))
    if kind == 4:  # around the layout thresholds of Number.prototype.toString
        return r.choice([1, -1]) * r.uniform(1, 10) * 10.0 ** r.choice([-8, -7, -6, -5, 20, 21, 22])
    if kind == 5:  # doubles beyond 2^53 that JavaScript writes without an exponent
        return float(r.randrange(2**53, 10**21))
    return r.choice([0.0, -0.0, 5e-324, 1e21, 1e-7, 0.1, 2.0**53, 1.7976931348623157e308])


def _random_value(r: random.Random, depth: int = 0) -> Any:
    kind = r.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return r.choice([None, True, False])
    if kind in (1, 2):
        return _random_number(r)
    if kind in (3, 4):
        return _random_string(r)
    if kind == 5:
        return [_random_value(r, depth + 1) for _ in range(r.randrange(4))]
    keys = [
        r.choice(
            [_random_string(r), str(r.randrange(20)), str(r.randrange(2**33)), "0", "01", "-1"]
        )
        for _ in range(r.randrange(5))
    ]
    return {k: _random_value(r, depth + 1) for k in keys}


def _json_text(r: random.Random, value: Any) -> str:
    """The value as JSON text in one of several spellings a peer might send."""
    style = r.randrange(3)
    if style == 0:
        return ssb.stringify(value, indent=0)
    if style == 1:
        return json.dumps(value, ensure_ascii=True)  # \\uXXXX escapes, surrogate pairs, repr floats
    return json.dumps(value, ensure_ascii=False, indent=3)


def test_stringify_matches_node_on_generated_values(node: str) -> None:
    r = random.Random(20241122)
    values = [_random_value(r) for _ in range(3000)]
    texts = [_json_text(r, v) for v in values]
    replies = _run(node, "stringify.js", [{"json": t} for t in texts])
    mismatches = []
    for value, text, reply in zip(values, texts, replies, strict=True):
        assert "error" not in reply, (text, reply)
        parsed = ssb._loads(text)[0]
        mine = (ssb.stringify(parsed), ssb.stringify(parsed, indent=0), ssb.stringify(value))
        theirs = (reply["text"], reply["compact"], reply["text"])
        if mine != theirs or (isinstance(parsed, dict) and ssb.message_id(parsed) != reply["id"]):
            mismatches.append((text, mine, theirs))
    assert mismatches == []


def test_stringify_matches_node_on_every_code_point(node: str) -> None:
    chunks = [
        "".join(
            chr(c) for c in range(start, min(start + 0x8000, 0x110000)) if not 0xD800 <= c <= 0xDFFF
        )
        for start in range(0, 0x110000, 0x8000)
    ]
    replies = _run(node, "stringify.js", [{"json": json.dumps({"s": c})} for c in chunks])
    for chunk, reply in zip(chunks, replies, strict=True):
        assert ssb.stringify({"s": chunk}) == reply["text"]
        assert ssb.message_id({"s": chunk}) == reply["id"]


# -- the reference's own dataset, and differential validation -------------------------------


def test_ssb_validation_dataset_agrees_with_chainmail_and_node(node: str) -> None:
    dataset = json.loads(
        (INTEROP / "node_modules" / "ssb-validation-dataset" / "data.json").read_text()
    )
    requests = []
    for case in dataset:
        state = case["state"]
        author = case["message"].get("author") if isinstance(case["message"], dict) else None
        requests.append(
            {
                "texts": [json.dumps(case["message"])],
                "hmac_key": case["hmacKey"],
                "state": state
                and {"author": author, "id": state["id"], "sequence": state["sequence"]},
            }
        )
    replies = _run(node, "validate.js", requests)
    disagreements = []
    for case, reply in zip(dataset, replies, strict=True):
        verdict = reply["results"][0]
        state = case["state"] and ssb.FeedState(case["state"]["id"], case["state"]["sequence"])
        try:
            mine: dict[str, Any] = {
                "ok": True,
                "id": ssb.validate(case["message"], state, case["hmacKey"]).id,
            }
        except InvalidMessage:
            mine = {"ok": False}
        expected = {"ok": case["valid"], **({"id": case["id"]} if case["valid"] else {})}
        node_verdict = {k: v for k, v in verdict.items() if k != "error"}
        if not (mine == expected == node_verdict):
            disagreements.append((case["error"], mine, node_verdict, expected))
    assert len(dataset) > 100
    assert disagreements == []


EDGE_VALUES: dict[str, list[Any]] = {
    "previous": [None, "%abc.sha256", 1, "", "%" + "A" * 43 + "=.sha256"],
    "author": [BOB.id, "@" + "A" * 43 + "=.sha256", "@" + "A" * 43 + "=Xed25519", 5, "x"],
    "sequence": [0, 1, 2, 3, 1.0, 2.0, "2", True, 2**31 - 1, 2**31, 2.0**31, -1, 1.5, None],
    "timestamp": [0, -1, 1.5, 1e21, 5e-324, 2**53 - 1],
    "hash": ["sha256", "sha512", "", None, "SHA256"],
    "content": [
        {"type": "ab"},
        {"type": "abc"},
        {"type": "x" * 52},
        {"type": "x" * 53},
        {"type": "😀a"},
        {"type": "😀"},
        {"type": 5},
        {"type": ["abc"]},
        {},
        [],
        None,
        5,
        "QUJD.box",
        ".box",
        "QUJ=.box",
        "QUJD.box\n",
        "QUJD.box\u2028",
        "QUJD.boxx",
        "QUJD",
        "box",
        "",
        {"type": "post", "1": 1, "0": 0},
    ],
    "signature": [
        "",
        5,
        base64.b64encode(bytes(64)).decode() + ".sig.ed25519",
        base64.b64encode(bytes(65)).decode() + ".sig.ed25519",
        base64.b64encode(bytes(66)).decode() + ".sig.ed25519",
        "A" * 85 + "B==.sig.ed25519",
        "A" * 86 + "==.sig.sha256",
    ],
}


def _mutations(r: random.Random, base: dict[str, Any], count: int) -> list[dict[str, Any]]:
    out = []
    keys = list(base)
    for _ in range(count):
        msg = copy.deepcopy(base)
        for _ in range(r.randrange(1, 3)):
            kind = r.randrange(10)
            if kind < 7:
                key = r.choice(list(EDGE_VALUES))
                msg[key] = copy.deepcopy(r.choice(EDGE_VALUES[key]))
            elif kind == 7 and len(msg) > 1:
                del msg[r.choice(list(msg))]
            elif kind == 8:
                order = keys[:]
                i, j = r.sample(range(len(order)), 2)
                order[i], order[j] = order[j], order[i]
                msg = {k: msg[k] for k in order if k in msg}
            else:
                msg["extra"] = 1
        if "signature" in msg and r.random() < 0.6:
            # Re-sign, so that the shape rule under test decides, not the signature.
            unsigned = {k: v for k, v in msg.items() if k != "signature"}
            signer = BOB if unsigned.get("author") == BOB.id else ALICE
            try:
                data = ssb.stringify(unsigned).encode()
            except InvalidMessage:
                continue
            msg["signature"] = base64.b64encode(signer.sign(data)).decode() + ".sig.ed25519"
            msg = (
                {**unsigned, "signature": msg["signature"]} if list(msg)[-1] != "signature" else msg
            )
        out.append(msg)
    return out


def test_chainmail_and_ssb_validate_accept_exactly_the_same_mutations(node: str) -> None:
    r = random.Random(7)
    first = ssb.create(ALICE, {"type": "post"}, None, 1)
    head = ssb.validate(first)
    second = ssb.create(ALICE, {"type": "post", "n": 2}, head, 2)
    # A feed near the end of ssb-validate's 32-bit sequence range.
    high = ssb.FeedState(id=head.id, sequence=2**31 - 2)
    last = ssb.create(ALICE, {"type": "post", "n": 3}, high, 3)
    cases: list[tuple[dict[str, Any], ssb.FeedState | None]] = [
        *((m, None) for m in _mutations(r, first, 400)),
        *((m, head) for m in _mutations(r, second, 400)),
        *((m, high) for m in _mutations(r, last, 200)),
        # The next sequence, 2^31, is past the range: only mutations can reach it.
        *((m, ssb.FeedState(high.id, 2**31 - 1)) for m in _mutations(r, last, 200)),
    ]
    # Documented divergence: ssb-validate checks the timestamp's type only on a
    # feed's first message; chainmail always requires a number.
    cases = [(m, s) for m, s in cases if s is None or type(m.get("timestamp")) in (int, float)]
    requests: list[dict[str, Any]] = []
    for msg, state in cases:
        author_state = state if msg.get("author") == ALICE.id else None
        requests.append(
            {
                "texts": [ssb.stringify(msg, indent=0)],
                "hmac_key": None,
                "state": author_state
                and {"author": ALICE.id, "id": author_state.id, "sequence": author_state.sequence},
            }
        )
    replies = _run(node, "validate.js", requests)
    accepted = 0
    disagreements = []
    for (msg, state), request, reply in zip(cases, requests, replies, strict=True):
        author_state = state if msg.get("author") == ALICE.id else None
        try:
            mine: dict[str, Any] = {"ok": True, "id": ssb.validate(msg, author_state).id}
            accepted += 1
        except InvalidMessage:
            mine = {"ok": False}
        theirs = {k: v for k, v in reply["results"][0].items() if k != "error"}
        if mine != theirs:
            disagreements.append((request["texts"][0], mine, reply["results"][0]))
    assert disagreements == []
    assert accepted > 20  # the mutations must exercise acceptance too


def test_known_divergence_timestamp_type_after_the_first_message(node: str) -> None:
    """ssb-validate checks ``typeof timestamp`` only on a feed's first message.

    chainmail requires a number on every message (DESIGN §2), so this is the
    one accept/refuse difference the differential test above leaves out. If
    the reference ever changes here, this test says so.
    """
    first = ssb.create(ALICE, {"type": "post"}, None, 1)
    head = ssb.validate(first)
    second: dict[str, Any] = {
        "previous": head.id,
        "author": ALICE.id,
        "sequence": 2,
        "timestamp": "not a number",
        "hash": "sha256",
        "content": {"type": "post"},
    }
    data = ssb.stringify(second).encode()
    second["signature"] = base64.b64encode(ALICE.sign(data)).decode() + ".sig.ed25519"
    state = {"author": ALICE.id, "id": head.id, "sequence": 1}
    assert _validate_in_node(node, [ssb.stringify(second)], None, state)[0]["ok"] is True
    with pytest.raises(InvalidMessage) as info:
        ssb.validate(second, head)
    assert info.value.code == "invalid_format"
