"""chainmail.channels: sealed keys, boxes, content builders, reading a history (DESIGN §3)."""

from __future__ import annotations

import base64
import importlib.util
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainmail import ssb
from chainmail.channels import (
    KEY_BYTES,
    NONCE_BYTES,
    SEALED_KEY_BYTES,
    TAG_BYTES,
    Opened,
    associated_data,
    channel_key,
    msg_content,
    open_content,
    open_key,
    open_message,
    read_history,
    seal_key,
    seal_message,
    share_content,
)
from chainmail.content import check_policy
from chainmail.errors import DecryptionError, InvalidMessage
from chainmail.ids import msg_id_from_digest
from chainmail.keys import Keypair
from support.feeds import Writer

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "channels"
BOX_VECTORS = json.loads((VECTORS / "box.json").read_text(encoding="utf-8"))
SEALED_VECTOR = json.loads((VECTORS / "sealed_key.json").read_text(encoding="utf-8"))

OPAQUE = "^cannot decrypt$"

ALICE = Keypair.from_seed(b"\x01" * 32)
BOB = Keypair.from_seed(b"\x02" * 32)
MALLORY = Keypair.from_seed(b"\x03" * 32)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NONCE = bytes(range(0x40, 0x40 + NONCE_BYTES))
CHAN = msg_id_from_digest(b"\x11" * 32)
OTHER_CHAN = msg_id_from_digest(b"\x12" * 32)
TX = msg_id_from_digest(b"\x10" * 32)
INNER: dict[str, Any] = {"side": "buy", "qty": 1000, "price": "189.25", "ok": True}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def box_of(inner: dict[str, Any] = INNER, **kwargs: Any) -> str:
    args: dict[str, Any] = {"author": ALICE.id, "channel": CHAN, "nonce": NONCE} | kwargs
    return seal_message(KEY, inner, **args)


def authentic_box(plaintext: bytes) -> str:
    """A box that authenticates under KEY/ALICE/CHAN but holds arbitrary plaintext."""
    ad = (ALICE.id + CHAN).encode()
    return b64(
        NONCE + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, NONCE, KEY)
    )


def assert_opaque(call: Callable[[], object]) -> None:
    with pytest.raises(DecryptionError, match=OPAQUE) as info:
        call()
    error = info.value
    assert type(error) is DecryptionError
    assert error.code == "decryption_failed"
    assert error.detail == "cannot decrypt"
    # Nothing chained: a traceback must not name the check that failed.
    assert error.__cause__ is None
    assert error.__suppress_context__ or error.__context__ is None


# -- boxes ----------------------------------------------------------------------


def test_box_round_trip() -> None:
    box = box_of()
    assert open_message(KEY, box, author=ALICE.id, channel=CHAN) == INNER


def test_box_layout_is_nonce_then_ciphertext_and_tag() -> None:
    raw = base64.b64decode(box_of())
    plaintext = ssb.stringify(INNER, indent=0).encode()
    assert raw[:NONCE_BYTES] == NONCE
    assert len(raw) == NONCE_BYTES + len(plaintext) + TAG_BYTES
    assert plaintext == b'{"side":"buy","qty":1000,"price":"189.25","ok":true}'


def test_associated_data_is_author_then_channel() -> None:
    ad = associated_data(ALICE.id, CHAN)
    assert ad == (ALICE.id + CHAN).encode()
    assert len(ad) == 53 + 52


def test_random_nonces_differ() -> None:
    first = seal_message(KEY, INNER, author=ALICE.id, channel=CHAN)
    second = seal_message(KEY, INNER, author=ALICE.id, channel=CHAN)
    assert first != second
    for box in (first, second):
        assert open_message(KEY, box, author=ALICE.id, channel=CHAN) == INNER


def test_the_same_nonce_gives_the_same_box() -> None:
    assert box_of() == box_of()


def _flip(box: str, index: int) -> str:
    raw = bytearray(base64.b64decode(box))
    raw[index] ^= 0x80
    return b64(bytes(raw))


def _non_canonical(box: str) -> str:
    """The same bytes with a stray bit set in the last base64 character before the padding."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = box.rstrip("=")
    last = alphabet[alphabet.index(body[-1]) | 1]
    altered = body[:-1] + last + box[len(body) :]
    assert altered != box and base64.b64decode(altered) == base64.b64decode(box)
    return altered


GOOD = box_of()
GOOD_RAW = base64.b64decode(GOOD)

FAILURES: dict[str, Callable[[], object]] = {
    "wrong key": lambda: open_message(OTHER_KEY, GOOD, author=ALICE.id, channel=CHAN),
    "wrong author in AD": lambda: open_message(KEY, GOOD, author=BOB.id, channel=CHAN),
    "wrong channel in AD": lambda: open_message(KEY, GOOD, author=ALICE.id, channel=OTHER_CHAN),
    "author and channel swapped": lambda: open_message(KEY, GOOD, author=CHAN, channel=ALICE.id),
    "truncated by one byte": lambda: open_message(
        KEY, b64(GOOD_RAW[:-1]), author=ALICE.id, channel=CHAN
    ),
    "ciphertext cut out": lambda: open_message(
        KEY, b64(GOOD_RAW[:24] + GOOD_RAW[-16:]), author=ALICE.id, channel=CHAN
    ),
    "shorter than nonce and tag": lambda: open_message(
        KEY, b64(GOOD_RAW[:39]), author=ALICE.id, channel=CHAN
    ),
    "nonce only": lambda: open_message(KEY, b64(GOOD_RAW[:24]), author=ALICE.id, channel=CHAN),
    "empty": lambda: open_message(KEY, "", author=ALICE.id, channel=CHAN),
    "flipped nonce byte": lambda: open_message(KEY, _flip(GOOD, 3), author=ALICE.id, channel=CHAN),
    "flipped ciphertext byte": lambda: open_message(
        KEY, _flip(GOOD, 30), author=ALICE.id, channel=CHAN
    ),
    "flipped tag byte": lambda: open_message(KEY, _flip(GOOD, -1), author=ALICE.id, channel=CHAN),
    "bad base64 characters": lambda: open_message(
        KEY, "not base64!", author=ALICE.id, channel=CHAN
    ),
    "base64 without padding": lambda: open_message(
        KEY, GOOD.rstrip("="), author=ALICE.id, channel=CHAN
    ),
    "urlsafe base64": lambda: open_message(
        KEY, base64.urlsafe_b64encode(GOOD_RAW).decode() + "-_", author=ALICE.id, channel=CHAN
    ),
    "base64 with whitespace": lambda: open_message(
        KEY, GOOD[:10] + "\n" + GOOD[10:], author=ALICE.id, channel=CHAN
    ),
    "non-canonical base64 of the right bytes": lambda: open_message(
        KEY, _non_canonical(GOOD), author=ALICE.id, channel=CHAN
    ),
    "non-JSON plaintext": lambda: open_message(
        KEY, authentic_box(b"not json"), author=ALICE.id, channel=CHAN
    ),
    "JSON array plaintext": lambda: open_message(
        KEY, authentic_box(b"[1,2]"), author=ALICE.id, channel=CHAN
    ),
    "JSON string plaintext": lambda: open_message(
        KEY, authentic_box(b'"x"'), author=ALICE.id, channel=CHAN
    ),
    "empty plaintext": lambda: open_message(KEY, authentic_box(b""), author=ALICE.id, channel=CHAN),
    "duplicate keys": lambda: open_message(
        KEY, authentic_box(b'{"a":1,"a":2}'), author=ALICE.id, channel=CHAN
    ),
    "invalid UTF-8": lambda: open_message(
        KEY, authentic_box(b'{"a":"\xff"}'), author=ALICE.id, channel=CHAN
    ),
    "unsafe integer": lambda: open_message(
        KEY, authentic_box(b'{"a":9007199254740993}'), author=ALICE.id, channel=CHAN
    ),
    "deeply nested plaintext": lambda: open_message(
        KEY,
        authentic_box(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        author=ALICE.id,
        channel=CHAN,
    ),
    "number overflowing to infinity": lambda: open_message(
        KEY, authentic_box(b'{"a":1e400}'), author=ALICE.id, channel=CHAN
    ),
    "NaN": lambda: open_message(KEY, authentic_box(b'{"a":NaN}'), author=ALICE.id, channel=CHAN),
    "box not a string": lambda: open_message(
        KEY,
        GOOD_RAW,  # type: ignore[arg-type]
        author=ALICE.id,
        channel=CHAN,
    ),
    "box None": lambda: open_message(
        KEY,
        None,  # type: ignore[arg-type]
        author=ALICE.id,
        channel=CHAN,
    ),
    "short key": lambda: open_message(KEY[:16], GOOD, author=ALICE.id, channel=CHAN),
    "key not bytes": lambda: open_message(
        KEY.hex(),  # type: ignore[arg-type]
        GOOD,
        author=ALICE.id,
        channel=CHAN,
    ),
    "author not a feed id": lambda: open_message(KEY, GOOD, author="alice", channel=CHAN),
    "author None": lambda: open_message(
        KEY,
        GOOD,
        author=None,  # type: ignore[arg-type]
        channel=CHAN,
    ),
    "author with a lone surrogate": lambda: open_message(KEY, GOOD, author="@\ud800", channel=CHAN),
    "channel not a message id": lambda: open_message(KEY, GOOD, author=ALICE.id, channel="chan"),
}


@pytest.mark.parametrize("case", FAILURES, ids=list(FAILURES))
def test_every_failure_is_the_same_opaque_error(case: str) -> None:
    assert_opaque(FAILURES[case])


def test_failures_are_indistinguishable() -> None:
    seen = set()
    for call in FAILURES.values():
        try:
            call()
        except DecryptionError as exc:
            seen.add((type(exc), str(exc), exc.code, repr(exc.problem())))
    assert len(seen) == 1


def test_every_single_bit_flip_fails() -> None:
    box = box_of({"a": 1})
    raw = base64.b64decode(box)
    for index in range(len(raw)):
        for bit in range(8):
            altered = bytearray(raw)
            altered[index] ^= 1 << bit
            text = b64(bytes(altered))
            assert_opaque(lambda: open_message(KEY, text, author=ALICE.id, channel=CHAN))  # noqa: B023


def test_seal_message_refuses_bad_input() -> None:
    with pytest.raises(InvalidMessage, match="channel key"):
        seal_message(KEY[:31], INNER, author=ALICE.id, channel=CHAN)
    with pytest.raises(InvalidMessage, match="nonce"):
        seal_message(KEY, INNER, author=ALICE.id, channel=CHAN, nonce=NONCE[:12])
    with pytest.raises(InvalidMessage, match="author"):
        seal_message(KEY, INNER, author="alice", channel=CHAN)
    with pytest.raises(InvalidMessage, match="channel"):
        seal_message(KEY, INNER, author=ALICE.id, channel=ALICE.id)
    with pytest.raises(InvalidMessage, match="JSON object"):
        seal_message(KEY, [1, 2], author=ALICE.id, channel=CHAN)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage):
        seal_message(KEY, {"n": 2**53}, author=ALICE.id, channel=CHAN)
    with pytest.raises(InvalidMessage):
        seal_message(KEY, {"n": float("nan")}, author=ALICE.id, channel=CHAN)
    # JSON.stringify writes these floats as bare digits; they must still read back.
    for number in (2.0**53, -(2.0**53), 1e20, 1e21, 5e-324):
        box = box_of({"n": [number]})
        assert open_message(KEY, box, author=ALICE.id, channel=CHAN) == {"n": [number]}


# -- sealed keys ----------------------------------------------------------------


def test_sealed_key_opens_only_for_its_member() -> None:
    sealed = seal_key(KEY, BOB.id)
    assert len(base64.b64decode(sealed)) == SEALED_KEY_BYTES
    assert open_key(sealed, BOB) == KEY
    assert_opaque(lambda: open_key(sealed, ALICE))
    assert_opaque(lambda: open_key(sealed, MALLORY))


def test_sealing_is_randomised() -> None:
    first, second = seal_key(KEY, BOB.id), seal_key(KEY, BOB.id)
    assert first != second
    assert open_key(first, BOB) == open_key(second, BOB) == KEY


@pytest.mark.parametrize(
    "sealed",
    [
        pytest.param(lambda s: s[:-4], id="truncated"),
        pytest.param(lambda s: b64(base64.b64decode(s) + b"\0"), id="extended"),
        pytest.param(lambda s: _flip(s, 0), id="flipped ephemeral key"),
        pytest.param(lambda s: _flip(s, 40), id="flipped MAC"),
        pytest.param(lambda s: _flip(s, 79), id="flipped key byte"),
        pytest.param(lambda s: "not base64!", id="bad base64"),
        pytest.param(lambda s: s.rstrip("="), id="unpadded"),
        pytest.param(lambda s: "", id="empty"),
        pytest.param(lambda s: None, id="None"),
        pytest.param(lambda s: base64.b64decode(s), id="bytes"),
        pytest.param(lambda s: b64(b"\0" * SEALED_KEY_BYTES), id="zeros"),
    ],
)
def test_bad_sealed_keys_are_opaque(sealed: Callable[[str], Any]) -> None:
    value = sealed(seal_key(KEY, BOB.id))
    assert_opaque(lambda: open_key(value, BOB))


def test_seal_key_refuses_bad_input() -> None:
    with pytest.raises(InvalidMessage, match="channel key"):
        seal_key(b"short", BOB.id)
    with pytest.raises(InvalidMessage):
        seal_key(KEY, "@bob")
    # The all-zero ed25519 point has small order: it has no curve25519 key to seal to.
    with pytest.raises(InvalidMessage):
        seal_key(KEY, "@" + b64(b"\0" * 32) + ".ed25519")


# -- vectors ----------------------------------------------------------------------


@pytest.mark.parametrize("vector", BOX_VECTORS["vectors"], ids=lambda v: v["name"])
def test_box_vectors(vector: dict[str, Any]) -> None:
    key = bytes.fromhex(BOX_VECTORS["key_hex"])
    nonce = bytes.fromhex(BOX_VECTORS["nonce_hex"])
    author = Keypair.from_seed(bytes.fromhex(BOX_VECTORS["author_seed_hex"])).id
    channel = BOX_VECTORS["channel"]
    assert author == BOX_VECTORS["author"]
    assert associated_data(author, channel).decode() == BOX_VECTORS["ad"]
    assert ssb.stringify(vector["inner"], indent=0) == vector["plaintext"]
    box = seal_message(key, vector["inner"], author=author, channel=channel, nonce=nonce)
    assert box == vector["box"]
    assert base64.b64decode(box) == nonce + bytes.fromhex(vector["ciphertext_hex"])
    assert open_message(key, vector["box"], author=author, channel=channel) == vector["inner"]


@pytest.mark.parametrize("case", BOX_VECTORS["must_fail"], ids=lambda c: c["why"])
def test_box_vectors_that_must_fail(case: dict[str, Any]) -> None:
    key = bytes.fromhex(case["key_hex"])
    assert_opaque(
        lambda: open_message(key, case["box"], author=case["author"], channel=case["channel"])
    )


def test_sealed_key_vector_opens() -> None:
    v = SEALED_VECTOR
    recipient = Keypair.from_seed(bytes.fromhex(v["recipient_seed_hex"]))
    assert recipient.id == v["recipient"]
    assert recipient.curve_public().hex() == v["recipient_curve_public_hex"]
    assert recipient.curve_secret().hex() == v["recipient_curve_secret_hex"]
    assert open_key(v["sealed"], recipient).hex() == v["key_hex"]
    assert_opaque(lambda: open_key(v["sealed"], ALICE))


def test_sealed_key_vector_is_crypto_box_seal_with_the_stated_ephemeral_key() -> None:
    """Rebuild the 80 bytes from libsodium primitives: epk ‖ crypto_box(key, blake2b(epk ‖ pk))."""
    v = SEALED_VECTOR
    esk = bytes.fromhex(v["ephemeral_secret_hex"])
    pk = bytes.fromhex(v["recipient_curve_public_hex"])
    epk = nacl.bindings.crypto_scalarmult_base(esk)
    assert epk.hex() == v["ephemeral_public_hex"]
    nonce = nacl.bindings.crypto_generichash_blake2b_salt_personal(epk + pk, digest_size=24)
    assert nonce.hex() == v["nonce_hex"]
    boxed = nacl.bindings.crypto_box(bytes.fromhex(v["key_hex"]), nonce, pk, esk)
    assert b64(epk + boxed) == v["sealed"]


def test_vector_files_match_their_generator_and_an_independent_implementation() -> None:
    pytest.importorskip("cryptography")
    spec = importlib.util.spec_from_file_location("channel_vectors", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.main([]) == 0


# -- content builders -----------------------------------------------------------


def test_open_content_seals_to_every_member_and_passes_policy() -> None:
    alice = Writer(ALICE)
    content, key = open_content([BOB.id], author_keys=ALICE, tx=TX, label="buy side")
    assert len(key) == KEY_BYTES
    assert list(content) == ["type", "keys", "tx", "label"]
    assert content["type"] == "chan/open"
    assert list(content["keys"]) == [ALICE.id, BOB.id]
    msg = alice.sign(content)
    check_policy(msg)
    assert open_key(content["keys"][ALICE.id], ALICE) == key
    assert open_key(content["keys"][BOB.id], BOB) == key
    assert MALLORY.id not in content["keys"]


def test_open_content_keeps_member_order_and_drops_duplicates() -> None:
    content, _ = open_content([BOB.id, ALICE.id, BOB.id], author_keys=ALICE, key=KEY)
    assert list(content["keys"]) == [BOB.id, ALICE.id]
    assert "tx" not in content and "label" not in content


def test_open_content_uses_an_injected_key() -> None:
    content, key = open_content([BOB.id], author_keys=ALICE, key=KEY)
    assert key == KEY
    assert open_key(content["keys"][BOB.id], BOB) == KEY


def test_open_content_refuses_bad_input() -> None:
    with pytest.raises(InvalidMessage):
        open_content(["@bob"], author_keys=ALICE)
    with pytest.raises(InvalidMessage):
        open_content([BOB.id], author_keys=ALICE, tx="tx")
    with pytest.raises(InvalidMessage):
        open_content([BOB.id], author_keys=ALICE, key=b"short")
    with pytest.raises(InvalidMessage):
        open_content([BOB.id], author_keys=ALICE, label=7)  # type: ignore[arg-type]


def test_msg_and_share_content_pass_policy() -> None:
    alice = Writer(ALICE)
    opened, key = open_content([BOB.id], author_keys=ALICE, tx=TX)
    chan = ssb.message_id(alice.sign(opened))
    content = msg_content(key, INNER, author=ALICE.id, channel=chan, tx=TX)
    assert list(content) == ["type", "chan", "box", "tx"]
    check_policy(alice.sign(content))
    assert open_message(key, content["box"], author=ALICE.id, channel=chan) == INNER
    share = share_content(key, chan, [MALLORY.id])
    assert list(share) == ["type", "chan", "keys"]
    check_policy(alice.sign(share))
    check_policy(alice.sign(share_content(key, chan, [MALLORY.id], tx=TX)))
    assert open_key(share["keys"][MALLORY.id], MALLORY) == key


def test_content_builders_refuse_bad_input() -> None:
    with pytest.raises(InvalidMessage, match="reader"):
        share_content(KEY, CHAN, [])
    with pytest.raises(InvalidMessage):
        share_content(KEY, "chan", [BOB.id])
    with pytest.raises(InvalidMessage):
        share_content(KEY[:5], CHAN, [BOB.id])
    with pytest.raises(InvalidMessage):
        msg_content(KEY, INNER, author=ALICE.id, channel="chan")
    with pytest.raises(InvalidMessage):
        msg_content(KEY, INNER, author=ALICE.id, channel=CHAN, tx="tx")


# -- a trade with two private sides and a regulator ---------------------------------


class Trade:
    """Buyer and seller each talk to their own broker in a channel of one tx."""

    def __init__(self) -> None:
        self.buyer = Writer(Keypair.from_seed(b"\x21" * 32))
        self.buy_broker = Writer(Keypair.from_seed(b"\x22" * 32))
        self.seller = Writer(Keypair.from_seed(b"\x23" * 32))
        self.sell_broker = Writer(Keypair.from_seed(b"\x24" * 32))
        self.regulator = Writer(Keypair.from_seed(b"\x25" * 32))
        self.log: list[dict[str, Any]] = []
        parties = [w.id for w in (self.buyer, self.buy_broker, self.seller, self.sell_broker)]
        self.tx = self.post(
            self.buyer, {"type": "tx/open", "parties": parties, "deadline": 1_800_000_000_000}
        )
        self.buy_chan, self.buy_key = self.open(self.buyer, self.buy_broker, "buy side")
        self.sell_chan, self.sell_key = self.open(self.seller, self.sell_broker, "sell side")
        self.buy_ids = [
            self.say(self.buyer, self.buy_chan, self.buy_key, {"order": "buy 1000 @ 189.25"}),
            self.say(self.buy_broker, self.buy_chan, self.buy_key, {"fill": 1000}),
        ]
        self.sell_ids = [
            self.say(self.seller, self.sell_chan, self.sell_key, {"order": "sell 1000"}),
            self.say(self.sell_broker, self.sell_chan, self.sell_key, {"fill": 1000, "€": 1.5}),
        ]

    def post(self, writer: Writer, content: dict[str, Any]) -> str:
        msg = writer.sign(content)
        check_policy(msg)  # everything the trade posts is what a node accepts
        self.log.append(msg)
        return ssb.message_id(msg)

    def open(self, author: Writer, member: Writer, label: str) -> tuple[str, bytes]:
        content, key = open_content([member.id], author_keys=author.keys, tx=self.tx, label=label)
        return self.post(author, content), key

    def say(self, author: Writer, chan: str, key: bytes, inner: dict[str, Any]) -> str:
        return self.post(
            author, msg_content(key, inner, author=author.id, channel=chan, tx=self.tx)
        )

    def share(self, author: Writer, chan: str, key: bytes, reader: Writer) -> str:
        return self.post(author, share_content(key, chan, [reader.id], tx=self.tx))

    def message(self, mid: str) -> dict[str, Any]:
        return next(msg for msg in self.log if ssb.message_id(msg) == mid)

    def read(self, reader: Writer, **kwargs: Any) -> list[Opened]:
        return list(read_history(self.log, reader.keys, **kwargs))


def test_each_side_reads_only_its_own_channel() -> None:
    trade = Trade()
    for reader in (trade.buyer, trade.buy_broker):
        opened = trade.read(reader)
        assert [o.id for o in opened] == trade.buy_ids
        assert {o.channel for o in opened} == {trade.buy_chan}
    for reader in (trade.seller, trade.sell_broker):
        assert [o.id for o in trade.read(reader)] == trade.sell_ids
    assert trade.read(trade.regulator) == []
    # Neither side's key opens the other side's boxes.
    sell_box = trade.log[-1]["content"]["box"]
    assert_opaque(
        lambda: open_message(
            trade.buy_key, sell_box, author=trade.sell_broker.id, channel=trade.sell_chan
        )
    )


def test_a_regulator_reads_both_sides_once_shared() -> None:
    trade = Trade()
    trade.share(trade.buyer, trade.buy_chan, trade.buy_key, trade.regulator)
    assert [o.id for o in trade.read(trade.regulator)] == trade.buy_ids
    trade.share(trade.sell_broker, trade.sell_chan, trade.sell_key, trade.regulator)
    opened = trade.read(trade.regulator)
    assert [o.id for o in opened] == trade.buy_ids + trade.sell_ids
    assert [(o.author, o.channel, o.data) for o in opened] == [
        (trade.buyer.id, trade.buy_chan, {"order": "buy 1000 @ 189.25"}),
        (trade.buy_broker.id, trade.buy_chan, {"fill": 1000}),
        (trade.seller.id, trade.sell_chan, {"order": "sell 1000"}),
        (trade.sell_broker.id, trade.sell_chan, {"fill": 1000, "€": 1.5}),
    ]
    # Sharing with the regulator gives the other side nothing.
    assert [o.id for o in trade.read(trade.buyer)] == trade.buy_ids
    # Later messages are readable too, and a channel can be read alone.
    late = trade.say(trade.seller, trade.sell_chan, trade.sell_key, {"settled": True})
    assert [o.id for o in trade.read(trade.regulator, channel=trade.sell_chan)] == [
        *trade.sell_ids,
        late,
    ]


def test_history_order_does_not_matter() -> None:
    trade = Trade()
    trade.share(trade.buyer, trade.buy_chan, trade.buy_key, trade.regulator)
    expected = {o.id for o in trade.read(trade.regulator)}
    shuffled = list(trade.log)
    random.Random(7).shuffle(shuffled)
    assert {o.id for o in read_history(reversed(shuffled), trade.regulator.keys)} == expected
    assert len(expected) == 2


def test_a_reader_may_share_on() -> None:
    trade = Trade()
    auditor = Writer(Keypair.from_seed(b"\x26" * 32))
    trade.share(trade.regulator, trade.buy_chan, trade.buy_key, auditor)  # before its own grant
    trade.share(trade.buyer, trade.buy_chan, trade.buy_key, trade.regulator)
    assert [o.id for o in trade.read(auditor)] == trade.buy_ids


def test_a_share_from_a_non_holder_is_ignored() -> None:
    """Mallory cannot hand the regulator a key of her own and pass her words off as the channel's."""
    trade = Trade()
    mallory = Writer(MALLORY)
    fake = bytes(32)
    trade.share(mallory, trade.buy_chan, fake, trade.regulator)
    trade.post(mallory, msg_content(fake, {"fill": 0}, author=mallory.id, channel=trade.buy_chan))
    assert trade.read(trade.regulator) == []
    # Once a holder shares the real key, the regulator reads the real messages only.
    trade.share(trade.buyer, trade.buy_chan, trade.buy_key, trade.regulator)
    assert [o.id for o in trade.read(trade.regulator)] == trade.buy_ids


def test_a_share_of_a_channel_never_opened_is_ignored() -> None:
    trade = Trade()
    trade.share(trade.buyer, OTHER_CHAN, trade.buy_key, trade.regulator)
    assert trade.read(trade.regulator) == []


def test_replayed_and_forged_boxes_are_skipped() -> None:
    trade = Trade()
    mallory = Writer(MALLORY)
    first = trade.message(trade.buy_ids[0])
    assert first["author"] == trade.buyer.id
    buy_box = first["content"]["box"]
    # The buyer's box reposted by the broker (another author in the AD) ...
    trade.post(trade.buy_broker, {"type": "chan/msg", "chan": trade.buy_chan, "box": buy_box})
    # ... or into the other channel (another channel in the AD), or garbage.
    trade.post(trade.buyer, {"type": "chan/msg", "chan": trade.sell_chan, "box": buy_box})
    trade.post(trade.buyer, {"type": "chan/msg", "chan": trade.buy_chan, "box": b64(bytes(60))})
    trade.post(mallory, {"type": "chan/msg", "chan": trade.buy_chan, "box": buy_box})
    assert [o.id for o in trade.read(trade.buy_broker)] == trade.buy_ids


def test_unsigned_invalid_and_duplicate_messages_are_skipped() -> None:
    trade = Trade()
    forged = dict(trade.message(trade.buy_ids[0]))
    forged["author"] = trade.buy_broker.id  # claims the broker wrote it: the signature says no
    not_policy = trade.buyer.sign({"type": "chan/msg", "chan": trade.buy_chan, "box": "AAAA"})
    history: list[Any] = [*trade.log, *trade.log, forged, not_policy, {"not": "a message"}, None]
    opened = list(read_history(history, trade.buy_broker.keys))
    assert [o.id for o in opened] == trade.buy_ids


def test_the_key_to_send_with_is_only_one_the_channels_record_grants() -> None:
    """A member boxes its messages under the channel's key, never one slipped into the history."""
    trade = Trade()
    mallory = Writer(MALLORY)
    fake = bytes(32)
    assert channel_key(trade.log, trade.buy_broker.keys, channel=trade.buy_chan) == (
        trade.buy_key,
        trade.tx,
    )
    # A non-holder's share, another channel's chan/open and an unsigned copy, all
    # sealing ``fake`` to the broker and listed before the real chan/open:
    share = mallory.sign(share_content(fake, trade.buy_chan, [trade.buy_broker.id]))
    other, _ = open_content([trade.buy_broker.id], author_keys=MALLORY, key=fake)
    unsigned = dict(trade.message(trade.buy_chan))
    keys = unsigned["content"]["keys"] | {trade.buy_broker.id: seal_key(fake, trade.buy_broker.id)}
    unsigned["content"] = {**unsigned["content"], "keys": keys}  # its signature no longer holds
    slipped = [share, mallory.sign(other), unsigned]
    assert channel_key([*slipped, *trade.log], trade.buy_broker.keys, channel=trade.buy_chan) == (
        trade.buy_key,
        trade.tx,
    )
    # Without the channel's own record there is no key at all.
    assert channel_key(slipped, trade.buy_broker.keys, channel=trade.buy_chan) is None
    # A reader's key comes from a holder's share.
    assert channel_key(trade.log, trade.regulator.keys, channel=trade.buy_chan) is None
    trade.share(trade.buyer, trade.buy_chan, trade.buy_key, trade.regulator)
    assert channel_key(trade.log, trade.regulator.keys, channel=trade.buy_chan) == (
        trade.buy_key,
        trade.tx,
    )


def test_read_history_with_a_network_key() -> None:
    hmac_key = bytes(range(32))
    content, key = open_content([BOB.id], author_keys=ALICE, key=KEY)
    first = ssb.create(ALICE, content, None, 1, hmac_key=hmac_key)
    chan = ssb.message_id(first)
    state = ssb.FeedState(id=chan, sequence=1)
    second = ssb.create(
        ALICE, msg_content(key, INNER, author=ALICE.id, channel=chan), state, 2, hmac_key=hmac_key
    )
    assert [o.data for o in read_history([first, second], BOB, hmac_key=hmac_key)] == [INNER]
    assert [o.data for o in read_history([first, second], BOB, hmac_key=b64(hmac_key))] == [INNER]
    assert list(read_history([first, second], BOB)) == []  # signatures do not verify without it
    with pytest.raises(InvalidMessage) as info:
        list(read_history([first, second], BOB, hmac_key=b"short"))
    assert info.value.code == "invalid_signature"


# -- properties -----------------------------------------------------------------

SAFE_INT = st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
JSON_SCALAR = (
    st.none()
    | st.booleans()
    | SAFE_INT
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
JSON_OBJECT = st.dictionaries(st.text(max_size=8), JSON_VALUE, max_size=6)


@settings(max_examples=300)
@given(inner=JSON_OBJECT, key=st.binary(min_size=32, max_size=32))
def test_random_objects_round_trip(inner: dict[str, Any], key: bytes) -> None:
    box = seal_message(key, inner, author=ALICE.id, channel=CHAN)
    assert open_message(key, box, author=ALICE.id, channel=CHAN) == inner


@settings(max_examples=300)
@given(text=st.text(max_size=200) | st.binary(max_size=150).map(b64))
def test_arbitrary_boxes_fail_opaquely(text: str) -> None:
    assert_opaque(lambda: open_message(KEY, text, author=ALICE.id, channel=CHAN))


@settings(max_examples=100)
@given(text=st.text(max_size=200) | st.binary(max_size=120).map(b64))
def test_arbitrary_sealed_keys_fail_opaquely(text: str) -> None:
    assert_opaque(lambda: open_key(text, BOB))
