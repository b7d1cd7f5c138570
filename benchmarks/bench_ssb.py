"""Micro-benchmark of chainmail.ssb: µs per operation on a typical message.

    python benchmarks/bench_ssb.py [--number N]

"fast" rows take orjson's path (no floats), "pure" rows the byte-exact
fallback (the message carries a float). ``verify`` alone is the floor that
serialising and hashing should stay well under.
"""

from __future__ import annotations

import argparse
import base64
import pickle
import timeit
from collections.abc import Callable

from chainmail import content, ssb
from chainmail.keys import Keypair, verify_signature


def _messages() -> tuple[dict[str, object], dict[str, object]]:
    keys = Keypair.from_seed(bytes(range(32)))
    content = {
        "type": "tx/note",
        "tx": "%" + "C" * 43 + "=.sha256",
        "data": {
            "isin": "US0378331005",
            "qty": 100,
            "price": "189.25",
            "side": "buy",
            "legs": [{"venue": "XNAS", "qty": 60}, {"venue": "ARCX", "qty": 40}],
            "note": "settlement T+1, €",
        },
        "to": ["@" + "D" * 43 + "=.ed25519"],
    }
    first = ssb.create(keys, {"type": "tx/open", "parties": [keys.id]}, None, 1732250000000)
    state = ssb.validate(first)
    plain = ssb.create(keys, content, state, 1732250000001)
    with_float = ssb.create(keys, {**content, "price": 189.25}, state, 1732250000001)
    return plain, with_float


def _bench(name: str, fn: Callable[[], object], number: int, per: int = 1) -> None:
    fn()
    best = min(timeit.repeat(fn, number=number, repeat=5)) / number / per
    print(f"{name:<34} {best * 1e6:8.2f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000, help="calls per timing run")
    number = parser.parse_args().number

    plain, with_float = _messages()
    text = ssb.stringify(plain).encode()
    compact = ssb.stringify(plain, indent=0).encode()
    float_text = ssb.stringify(with_float).encode()
    checked = ssb.check(plain)
    signed = text[: text.rindex(b',\n  "signature"')] + b"\n}"
    sig = base64.b64decode(str(plain["signature"]).split(".")[0])
    print(f"message: {len(text)} bytes as 2-space JSON")
    _bench("parse (fast)", lambda: ssb.parse(text), number)
    _bench("parse (float)", lambda: ssb.parse(float_text), number)
    _bench("stringify (fast)", lambda: ssb.stringify(plain), number)
    _bench("stringify (pure, float)", lambda: ssb.stringify(with_float), number)
    _bench("message_id (fast)", lambda: ssb.message_id(plain), number)
    _bench("message_id (pure, float)", lambda: ssb.message_id(with_float), number)
    _bench("ed25519 verify alone", lambda: verify_signature(checked.author, signed, sig), number)
    _bench("check (dict, incl. verify)", lambda: ssb.check(plain), number)
    _bench("check (dict, float, incl. verify)", lambda: ssb.check(with_float), number)
    _bench("check_raw (2-space, incl. verify)", lambda: ssb.check_raw(text), number)
    _bench("check_raw (compact, incl. verify)", lambda: ssb.check_raw(compact), number)
    _bench("check_raw (float, incl. verify)", lambda: ssb.check_raw(float_text), number)
    # The policy needs canonical ids; the verify pool runs it after check_raw.
    note = {
        "type": "tx/note",
        "tx": "%" + "A" * 43 + "=.sha256",
        "data": {},
        "to": [checked.author],
    }
    policy_msg = {"author": checked.author, "timestamp": checked.timestamp, "content": note}
    _bench("check_policy (tx/note)", lambda: content.check_policy(policy_msg), number)
    batch = ssb.check_batch([text] * 1000)
    pickled = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
    rounds = max(1, number // 1000)
    _bench(
        "pickle Checked, per message",
        lambda: pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL),
        rounds,
        per=1000,
    )
    _bench("unpickle Checked, per message", lambda: pickle.loads(pickled), rounds, per=1000)


if __name__ == "__main__":
    main()
