"""The transaction state machine and delivery rules of DESIGN §3."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from chainmail import blocks, txs
from chainmail.errors import Error, InvalidMessage, ProofError, Rejected, StorageError
from chainmail.ids import msg_id_from_digest
from chainmail.keys import Keypair
from chainmail.txs import Channel, Tx

A, B, C, D = (Keypair.from_seed(bytes([n]) * 32).id for n in (1, 2, 3, 4))
PARTIES = [A, B, C]
OPEN_ID = msg_id_from_digest(b"\x20" * 32)
OTHER_TX = msg_id_from_digest(b"\x21" * 32)
CHAN_ID = msg_id_from_digest(b"\x22" * 32)
T0 = 1_000_000
DEADLINE = T0 + 60_000
SEALED = base64.b64encode(b"\x07" * 80).decode()
BOX = base64.b64encode(b"\x08" * 48).decode()


def mid(n: int) -> str:
    return msg_id_from_digest(n.to_bytes(32, "big"))


def msg(author: str, content: Any) -> dict[str, Any]:
    return {"previous": None, "author": author, "sequence": 1, "timestamp": T0, "hash": "sha256",
            "content": content, "signature": "x.sig.ed25519"}  # fmt: skip


def open_msg(
    finish: str | None = None, parties: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    content: dict[str, Any] = {
        "type": "tx/open",
        "parties": parties or PARTIES,
        "deadline": DEADLINE,
    }
    if finish is not None:
        content["finish"] = finish
    content.update(extra)
    return msg(A, content)


def new_tx(finish: str | None = None, parties: list[str] | None = None) -> Tx:
    return txs.open_tx(OPEN_ID, open_msg(finish, parties), T0)


def note(author: str, to: list[str] | None = None, tx: str = OPEN_ID) -> dict[str, Any]:
    content: dict[str, Any] = {"type": "tx/note", "tx": tx, "data": {}}
    if to is not None:
        content["to"] = to
    return msg(author, content)


def finish(author: str, tx: str = OPEN_ID) -> dict[str, Any]:
    return msg(author, {"type": "tx/finish", "tx": tx})


# --- open ---------------------------------------------------------------------------


def test_open_tx_reads_the_tx_open() -> None:
    tx = txs.open_tx(OPEN_ID, open_msg("any", subject="trade 42"), T0 + 5)
    assert tx == Tx(id=OPEN_ID, parties=(A, B, C), opener=A, deadline=DEADLINE, finish="any",
                    subject="trade 42", opened=T0 + 5, status="open", closed=None,
                    finished_by=set(), messages=[OPEN_ID])  # fmt: skip
    assert tx.is_open


def test_finish_defaults_to_all() -> None:
    assert new_tx().finish == "all"


def test_open_tx_refuses_other_types() -> None:
    with pytest.raises(InvalidMessage, match="is not a tx/open message"):
        txs.open_tx(OPEN_ID, note(A), T0)


def test_open_tx_refuses_an_invalid_tx_open() -> None:
    with pytest.raises(InvalidMessage, match="parties must include the author") as info:
        txs.open_tx(OPEN_ID, open_msg(parties=[B, C]), T0)
    assert info.value.code == "invalid_format"


# --- check ------------------------------------------------------------------------


def test_check_accepts_a_party_before_the_deadline() -> None:
    tx = new_tx()
    txs.check(tx, note(B), now=T0)
    txs.check(tx, finish(C), now=DEADLINE)  # the deadline itself is still open


def test_unknown_tx_is_rejected() -> None:
    with pytest.raises(Rejected, match=f"unknown tx {OTHER_TX}") as info:
        txs.check(None, note(A, tx=OTHER_TX), now=T0)
    assert info.value.code == "unknown_tx"


def test_a_message_naming_another_tx_is_rejected() -> None:
    with pytest.raises(Rejected, match="names tx") as info:
        txs.check(new_tx(), note(A, tx=OTHER_TX), now=T0)
    assert info.value.code == "unknown_tx"


def test_a_tx_open_is_not_part_of_another_tx() -> None:
    with pytest.raises(Rejected, match="opens a tx of its own") as info:
        txs.check(new_tx(), open_msg(), now=T0)
    assert info.value.code == "unknown_tx"


def test_an_outsider_is_not_a_party() -> None:
    with pytest.raises(Rejected, match="is not a party") as info:
        txs.check(new_tx(), note(D), now=T0)
    assert info.value.code == "not_a_party"


def test_past_the_deadline_is_closed_even_before_expire() -> None:
    tx = new_tx()
    with pytest.raises(Rejected, match="passed its deadline") as info:
        txs.check(tx, note(B), now=DEADLINE + 1)
    assert info.value.code == "tx_closed"
    assert tx.is_open  # check is pure


@pytest.mark.parametrize("author", [B, D])
def test_closed_tx_rejects_parties_and_outsiders_alike(author: str) -> None:
    tx = new_tx("any")
    assert txs.apply(tx, mid(1), finish(A), now=T0)
    with pytest.raises(Rejected, match="is closed \\(finished") as info:
        txs.check(tx, note(author), now=T0)
    assert info.value.code == "tx_closed"
    # When, as a person reads it (the CLI prints the detail as it is).
    closed = datetime.fromtimestamp(T0 / 1000, UTC).isoformat(timespec="milliseconds")
    assert info.value.detail.endswith(f"(finished at {closed})")


# --- apply and the finish policies -------------------------------------------------


def test_notes_are_recorded_in_order_and_do_not_close() -> None:
    tx = new_tx()
    assert not txs.apply(tx, mid(1), note(B), now=T0 + 1)
    assert not txs.apply(tx, mid(2), note(A, to=[C]), now=T0 + 2)
    assert tx.messages == [OPEN_ID, mid(1), mid(2)]
    assert tx.is_open


def test_all_needs_every_party() -> None:
    tx = new_tx("all")
    assert not txs.apply(tx, mid(1), finish(A), now=T0 + 1)
    assert not txs.apply(tx, mid(2), finish(A), now=T0 + 2)  # twice counts once
    assert not txs.apply(tx, mid(3), finish(B), now=T0 + 3)
    assert tx.is_open
    assert txs.apply(tx, mid(4), finish(C), now=T0 + 4)
    assert (tx.status, tx.closed, tx.finished_by) == ("finished", T0 + 4, {A, B, C})
    assert tx.messages == [OPEN_ID, mid(1), mid(2), mid(3), mid(4)]


def test_any_needs_one_party() -> None:
    tx = new_tx("any")
    assert not txs.apply(tx, mid(1), note(C), now=T0 + 1)
    assert txs.apply(tx, mid(2), finish(C), now=T0 + 2)
    assert (tx.status, tx.closed) == ("finished", T0 + 2)


def test_opener_needs_the_opener() -> None:
    tx = new_tx("opener")
    assert not txs.apply(tx, mid(1), finish(B), now=T0 + 1)
    assert not txs.apply(tx, mid(2), finish(C), now=T0 + 2)
    assert tx.is_open
    assert txs.apply(tx, mid(3), finish(A), now=T0 + 3)
    assert tx.status == "finished"


def test_single_party_tx_finishes_with_its_opener() -> None:
    tx = new_tx("all", parties=[A])
    assert txs.apply(tx, mid(1), finish(A), now=T0)


def test_finish_exactly_at_the_deadline_counts() -> None:
    tx = new_tx("any")
    assert txs.apply(tx, mid(1), finish(B), now=DEADLINE)
    assert (tx.status, tx.closed) == ("finished", DEADLINE)
    assert not txs.expire(tx, now=DEADLINE + 1)


def test_apply_is_idempotent_by_id() -> None:
    tx = new_tx("any")
    assert not txs.apply(tx, OPEN_ID, open_msg(), now=T0)  # the tx/open itself
    assert txs.apply(tx, mid(1), finish(B), now=T0 + 1)
    assert not txs.apply(tx, mid(1), finish(B), now=T0 + 9)  # replay after close
    assert tx.messages == [OPEN_ID, mid(1)]
    assert tx.closed == T0 + 1


@pytest.mark.parametrize(
    ("message", "now", "code"),
    [
        (note(D), T0, "not_a_party"),
        (finish(B), DEADLINE + 1, "tx_closed"),
        (note(B, tx=OTHER_TX), T0, "unknown_tx"),
    ],
)
def test_a_refused_message_leaves_the_tx_unchanged(
    message: dict[str, Any], now: int, code: str
) -> None:
    tx = new_tx("any")
    before = tx.to_dict()
    with pytest.raises(Rejected) as info:
        txs.apply(tx, mid(1), message, now=now)
    assert info.value.code == code
    assert tx.to_dict() == before


@pytest.mark.parametrize(
    ("tx", "message", "now"),
    [
        (None, note(A, tx=OTHER_TX), T0),
        (None, {"author": A, "content": "c2VjcmV0.box"}, T0),
        (new_tx(), note(A, tx=OTHER_TX), T0),
        (new_tx(), open_msg(), T0),
        (new_tx(), note(D), T0),
        (new_tx(), note(B), DEADLINE + 1),
        (new_tx(), msg(B, {"type": "about", "tx": OTHER_TX}), T0),  # not a tx type
        (new_tx(), note(B), T0),
    ],
)
def test_check_post_is_check_on_author_and_content(
    tx: Tx | None, message: dict[str, Any], now: int
) -> None:
    def verdict(call: Any) -> tuple[str, str] | None:
        try:
            call()
        except Rejected as exc:
            return (exc.code, str(exc))
        return None

    expected = verdict(lambda: txs.check(tx, message, now=now))
    got = verdict(
        lambda: txs.check_post(tx, message.get("author"), message.get("content"), now=now)
    )
    assert got == expected


@pytest.mark.parametrize("policy", ["all", "any", "opener"])
def test_link_is_apply_for_a_new_checked_message(policy: str) -> None:
    by_apply, by_link = new_tx(policy), new_tx(policy)
    script = [(note(B), 1), (finish(B), 2), (finish(C), 3), (finish(A), 4)]
    for n, (message, dt) in enumerate(script):
        kind = message["content"]["type"]
        closes = txs.apply(by_apply, mid(n), message, now=T0 + dt, checked=True)
        assert txs.link(by_link, mid(n), message["author"], kind, now=T0 + dt) == closes
        assert by_link.to_dict() == by_apply.to_dict()


def test_finish_met_takes_any_collection() -> None:
    for finishers in ({A, B}, frozenset({A, B}), [A, B], (B, A)):
        assert txs.finish_met("all", A, [A, B], finishers)
        assert not txs.finish_met("all", A, [A, B, C], finishers)


def test_recipients_of_parties_in_any_collection() -> None:
    tx = new_tx()
    content = {"type": "tx/note", "tx": OPEN_ID, "data": {}}
    assert txs.recipients(B, content, tx, None) == sorted([A, C])
    tx.parties = (C, B, A, 7, C)  # type: ignore[assignment]
    assert txs.recipients(B, content, tx, None) == sorted([A, C])


def test_late_message_after_finish_is_refused() -> None:
    tx = new_tx("any")
    txs.apply(tx, mid(1), finish(B), now=T0)
    with pytest.raises(Rejected, match="is closed") as info:
        txs.apply(tx, mid(2), note(C), now=T0 + 1)
    assert info.value.code == "tx_closed"
    assert tx.messages == [OPEN_ID, mid(1)]


# --- expire -------------------------------------------------------------------------


def test_expire_at_the_deadline_keeps_the_tx_open() -> None:
    tx = new_tx()
    assert not txs.expire(tx, now=T0)
    assert not txs.expire(tx, now=DEADLINE)
    assert tx.is_open


def test_expire_after_the_deadline_times_out_once() -> None:
    tx = new_tx()
    txs.apply(tx, mid(1), finish(A), now=T0)
    assert txs.expire(tx, now=DEADLINE + 1)
    assert (tx.status, tx.closed) == ("timed_out", DEADLINE + 1)
    assert not txs.expire(tx, now=DEADLINE + 2)
    assert tx.closed == DEADLINE + 1
    with pytest.raises(Rejected, match="timed_out") as info:
        txs.check(tx, finish(B), now=DEADLINE + 2)
    assert info.value.code == "tx_closed"


def test_expire_leaves_a_finished_tx_alone() -> None:
    tx = new_tx("any")
    txs.apply(tx, mid(1), finish(A), now=T0)
    assert not txs.expire(tx, now=DEADLINE + 100)
    assert tx.status == "finished"


def test_a_deadline_already_past_at_open_times_out_on_the_next_expire() -> None:
    tx = txs.open_tx(OPEN_ID, open_msg(), DEADLINE + 5)
    assert tx.is_open
    assert txs.expire(tx, now=DEADLINE + 7)
    # Closed when it opened, not before: its record verifies.
    assert (tx.status, tx.opened, tx.closed) == ("timed_out", DEADLINE + 5, DEADLINE + 5)
    assert txs.record(tx)["closed"] == DEADLINE + 5


# --- records ------------------------------------------------------------------------


def test_record_of_a_finished_tx() -> None:
    tx = new_tx("any")
    txs.apply(tx, mid(1), note(B), now=T0 + 1)
    txs.apply(tx, mid(2), finish(C), now=T0 + 2)
    assert txs.record(tx) == {"closed": T0 + 2, "messages": [OPEN_ID, mid(1), mid(2)], "opened": T0,
                              "parties": [A, B, C], "status": "finished", "tx": OPEN_ID}  # fmt: skip


def test_record_of_a_timed_out_tx() -> None:
    tx = new_tx()
    txs.expire(tx, now=DEADLINE + 7)
    rec = txs.record(tx)
    # Closed at the first millisecond past the deadline, not when the clock was read.
    assert (rec["status"], rec["closed"], rec["messages"]) == ("timed_out", DEADLINE + 1, [OPEN_ID])


def test_an_open_tx_has_no_record() -> None:
    with pytest.raises(Error, match="still open") as info:
        txs.record(new_tx())
    assert info.value.code == "internal"


def test_record_bytes_are_compact_sorted_utf8() -> None:
    tx = new_tx("any", parties=[A])
    txs.apply(tx, mid(1), finish(A), now=T0 + 1)
    expected = (
        f'{{"closed":{T0 + 1},"messages":["{OPEN_ID}","{mid(1)}"],"opened":{T0},'
        f'"parties":["{A}"],"status":"finished","tx":"{OPEN_ID}"}}'
    )
    assert blocks.record_bytes(txs.record(tx)) == expected.encode()


def test_record_bytes_write_non_ascii_as_utf8() -> None:
    assert blocks.record_bytes({"b": "€", "a": [1, None]}) == '{"a":[1,null],"b":"€"}'.encode()


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": object()}, {"x": b"raw"}])
def test_record_bytes_refuse_non_json(bad: dict[str, Any]) -> None:
    # The records of blocks are hashed as blocks.record_bytes writes them.
    with pytest.raises(ProofError, match="unsupported value"):
        blocks.record_bytes(bad)


# --- storage ------------------------------------------------------------------------


def test_tx_round_trips_through_json() -> None:
    tx = new_tx("all")
    txs.apply(tx, mid(1), finish(B), now=T0 + 1)
    txs.apply(tx, mid(2), finish(A), now=T0 + 2)
    stored = json.loads(json.dumps(tx.to_dict()))
    assert stored["finished_by"] == sorted([A, B])
    assert Tx.from_dict(stored) == tx
    txs.expire(tx, now=DEADLINE + 1)
    assert Tx.from_dict(json.loads(json.dumps(tx.to_dict()))) == tx


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"deadline": True}, "expected an integer"),
        ({"deadline": "1"}, "expected an integer"),
        ({"status": "done"}, "expected one of"),
        ({"finish": "most"}, "expected one of"),
        ({"parties": A}, "expected a list"),
        ({"messages": [1]}, "expected a string"),
        ({"closed": T0}, "status open, closed"),
        ({"status": "finished"}, "status finished, closed None"),
    ],
)
def test_malformed_stored_tx_is_a_storage_error(change: dict[str, Any], match: str) -> None:
    with pytest.raises(StorageError, match=match):
        Tx.from_dict({**new_tx().to_dict(), **change})


def test_stored_tx_missing_a_field_is_a_storage_error() -> None:
    data = new_tx().to_dict()
    del data["opened"]
    with pytest.raises(StorageError, match="opened"):
        Tx.from_dict(data)


# --- channels -----------------------------------------------------------------------


def chan_open(
    author: str = A, members: list[str] | None = None, tx: str | None = None
) -> dict[str, Any]:
    content: dict[str, Any] = {"type": "chan/open", "keys": {m: SEALED for m in members or [A, B]}}
    if tx is not None:
        content["tx"] = tx
    return msg(author, content)


def chan_msg(author: str, chan: str = CHAN_ID, tx: str | None = None) -> dict[str, Any]:
    content: dict[str, Any] = {"type": "chan/msg", "chan": chan, "box": BOX}
    if tx is not None:
        content["tx"] = tx
    return msg(author, content)


def chan_share(author: str, readers: list[str], chan: str = CHAN_ID) -> dict[str, Any]:
    return msg(author, {"type": "chan/share", "chan": chan, "keys": {r: SEALED for r in readers}})


def test_open_channel() -> None:
    ch = txs.open_channel(CHAN_ID, chan_open(tx=OPEN_ID))
    assert ch == Channel(id=CHAN_ID, opener=A, members=(A, B), tx=OPEN_ID, readers=())


def test_open_channel_refuses_other_types_and_invalid_content() -> None:
    with pytest.raises(InvalidMessage, match="is not a chan/open"):
        txs.open_channel(CHAN_ID, note(A))
    with pytest.raises(InvalidMessage, match="keys must include the author"):
        txs.open_channel(CHAN_ID, chan_open(author=C))


def test_members_post_and_share() -> None:
    ch = txs.open_channel(CHAN_ID, chan_open())
    txs.check_channel_post(ch, chan_msg(B), now=T0)
    txs.check_channel_post(ch, chan_share(B, [D]), now=T0)


def test_unknown_channel_is_rejected() -> None:
    with pytest.raises(Rejected, match=f"unknown channel {CHAN_ID}") as info:
        txs.check_channel_post(None, chan_msg(A), now=T0)
    assert info.value.code == "unknown_tx"


def test_a_post_naming_another_channel_is_rejected() -> None:
    ch = txs.open_channel(CHAN_ID, chan_open())
    with pytest.raises(Rejected, match="names channel"):
        txs.check_channel_post(ch, chan_msg(A, chan=OTHER_TX), now=T0)


def test_non_members_and_readers_may_not_post() -> None:
    ch = txs.open_channel(CHAN_ID, chan_open())
    assert txs.share_channel(ch, chan_share(A, [D])) == [D]
    for author in (C, D):
        with pytest.raises(Rejected, match="is not a member") as info:
            txs.check_channel_post(ch, chan_msg(author), now=T0)
        assert info.value.code == "not_a_party"
    with pytest.raises(Rejected, match="is not a member"):
        txs.check_channel_post(ch, chan_share(D, [C]), now=T0)


def test_tied_channel_posts_need_an_open_tx_and_a_party() -> None:
    tx = new_tx("any")
    ch = txs.open_channel(CHAN_ID, chan_open(members=[A, B, D], tx=OPEN_ID))
    txs.check_channel_post(ch, chan_msg(B), tx=tx, now=T0)
    txs.check_channel_post(ch, chan_msg(B, tx=OPEN_ID), tx=tx, now=T0)
    with pytest.raises(Rejected, match="is not a party") as info:
        txs.check_channel_post(ch, chan_msg(D), tx=tx, now=T0)  # member, not a party
    assert info.value.code == "not_a_party"
    with pytest.raises(Rejected, match="is not a member"):
        txs.check_channel_post(ch, chan_msg(C), tx=tx, now=T0)  # party, not a member
    with pytest.raises(Rejected, match="unknown tx") as info:
        txs.check_channel_post(ch, chan_msg(B), tx=None, now=T0)
    assert info.value.code == "unknown_tx"
    with pytest.raises(Rejected, match="belongs to tx") as info:
        txs.check_channel_post(ch, chan_msg(B, tx=OTHER_TX), tx=tx, now=T0)
    assert info.value.code == "unknown_tx"
    with pytest.raises(Rejected, match="passed its deadline") as info:
        txs.check_channel_post(ch, chan_msg(B), tx=tx, now=DEADLINE + 1)
    assert info.value.code == "tx_closed"
    txs.apply(tx, mid(1), finish(A), now=T0)
    with pytest.raises(Rejected, match="is closed") as info:
        txs.check_channel_post(ch, chan_msg(B), tx=tx, now=T0)
    assert info.value.code == "tx_closed"
    # A share names no tx: a party may still open a settled trade's channel to
    # an auditor. Naming the tx holds it to the tx's rules.
    txs.check_channel_post(ch, chan_share(A, [C]), tx=tx, now=T0)
    assert txs.channel_post_tx(ch, chan_share(A, [C])) is None
    # ... but a member that is no party does not pass the key on, open or closed.
    with pytest.raises(Rejected, match="is not a party") as info:
        txs.check_channel_post(ch, chan_share(D, [C]), tx=tx, now=T0)
    assert info.value.code == "not_a_party"
    assert txs.channel_post_tx(ch, chan_msg(B)) == OPEN_ID
    named = chan_share(A, [C])
    named["content"]["tx"] = OPEN_ID
    with pytest.raises(Rejected, match="is closed"):
        txs.check_channel_post(ch, named, tx=tx, now=T0)


def test_tied_channel_refuses_the_state_of_another_tx() -> None:
    ch = txs.open_channel(CHAN_ID, chan_open(tx=OTHER_TX))
    with pytest.raises(Rejected, match="belongs to tx"):
        txs.check_channel_post(ch, chan_msg(B), tx=new_tx(), now=T0)


def test_share_adds_readers_once() -> None:
    ch = txs.open_channel(CHAN_ID, chan_open())
    assert txs.share_channel(ch, chan_share(A, [D, B])) == [D]  # B is a member already
    assert txs.share_channel(ch, chan_share(B, [D, C])) == [C]
    assert txs.share_channel(ch, chan_share(B, [D, C])) == []
    assert ch.readers == (D, C)
    assert ch.holders == (A, B, D, C)


def test_share_of_another_channel_is_refused() -> None:
    ch = txs.open_channel(CHAN_ID, chan_open())
    with pytest.raises(InvalidMessage, match="not a chan/share of channel"):
        txs.share_channel(ch, chan_share(A, [D], chan=OTHER_TX))
    with pytest.raises(InvalidMessage, match="not a chan/share"):
        txs.share_channel(ch, chan_msg(A))


def test_channel_round_trips_through_json() -> None:
    ch = txs.open_channel(CHAN_ID, chan_open(tx=OPEN_ID))
    txs.share_channel(ch, chan_share(A, [D]))
    assert Channel.from_dict(json.loads(json.dumps(ch.to_dict()))) == ch
    with pytest.raises(StorageError, match="malformed stored channel"):
        Channel.from_dict({**ch.to_dict(), "members": "x"})
    with pytest.raises(StorageError):
        Channel.from_dict({"id": CHAN_ID})


# --- recipients ---------------------------------------------------------------------


def content_of(message: dict[str, Any]) -> Any:
    return message["content"]


def test_tx_open_goes_to_every_other_party() -> None:
    assert txs.recipients(A, content_of(open_msg(parties=[C, A, B])), None, None) == sorted([B, C])


@pytest.mark.parametrize("author", [A, B, C])
def test_tx_finish_and_untargeted_notes_go_to_every_other_party(author: str) -> None:
    tx = new_tx()
    others = sorted(p for p in PARTIES if p != author)
    assert txs.recipients(author, content_of(finish(author)), tx, None) == others
    assert txs.recipients(author, content_of(note(author)), tx, None) == others


def test_targeted_note_goes_to_its_to_list_without_the_author() -> None:
    tx = new_tx()
    assert txs.recipients(A, content_of(note(A, to=[C])), tx, None) == [C]
    assert txs.recipients(A, content_of(note(A, to=[A, C, B])), tx, None) == sorted([B, C])
    assert txs.recipients(A, content_of(note(A, to=[A])), tx, None) == []


def test_without_the_tx_there_is_nobody_to_deliver_to() -> None:
    assert txs.recipients(A, content_of(finish(A)), None, None) == []
    assert txs.recipients(A, content_of(note(A)), None, None) == []


def test_chan_msg_goes_to_every_other_member() -> None:
    assert txs.recipients(B, content_of(chan_msg(B)), None, [A, B, C, C]) == sorted([A, C])
    assert txs.recipients(B, content_of(chan_msg(B)), None, {A: 1, D: 2}.keys()) == sorted([A, D])
    assert txs.recipients(B, content_of(chan_msg(B)), None, None) == []


def test_chan_open_and_share_go_to_each_key_holder_but_the_author() -> None:
    assert txs.recipients(A, content_of(chan_open(members=[A, B, C])), None, None) == sorted([B, C])
    assert txs.recipients(A, content_of(chan_share(A, [D])), None, None) == [D]
    assert txs.recipients(A, content_of(chan_share(A, [A])), None, None) == []


@pytest.mark.parametrize(
    "content",
    [
        {"type": "doc", "blob": "&x", "size": 1, "tx": OPEN_ID},
        {"type": "about", "about": B},
        {"type": "contact", "contact": B, "following": True},
        {"type": "post", "text": "hi", "parties": [B]},
        "AAAA.box",
        None,
    ],
)
def test_other_messages_are_not_delivered(content: object) -> None:
    assert txs.recipients(A, content, new_tx(), [A, B]) == []


def test_recipients_never_fail_on_odd_content() -> None:
    assert txs.recipients(A, {"type": "tx/open", "parties": 5}, None, None) == []
    assert txs.recipients(A, {"type": "tx/note", "to": B}, None, None) == []
    assert txs.recipients(A, {"type": "chan/open", "keys": [B, 3]}, None, None) == [B]


# --- property: every tx closes exactly once ----------------------------------------

#: An event: ("finish" or "note", author index (3 is the outsider), ms later), or
#: ("tick", ignored, ms later) for the tracker's expire.
events = st.lists(
    st.tuples(
        st.sampled_from(["finish", "note", "tick"]),
        st.integers(min_value=0, max_value=3),  # 3 is the outsider
        # Mostly short steps, so that "all" gets to finish; sometimes long ones past the deadline.
        st.one_of(st.integers(0, 3_000), st.integers(0, 30_000)),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(policy=st.sampled_from(["all", "any", "opener"]), script=events)
def test_a_tx_closes_exactly_once(policy: str, script: list[tuple[str, int, int]]) -> None:
    people = [A, B, C, D]
    tx = new_tx(policy)
    now = T0
    closings = 0
    seen: set[str] = set()  # model: finishes accepted before the deadline
    expected: tuple[str, int] | None = None
    for n, (kind, who, later) in enumerate(script):
        now += later
        if kind == "tick":
            closings += txs.expire(tx, now=now)
            if expected is None and now > DEADLINE:
                expected = ("timed_out", DEADLINE + 1)
            continue
        author = people[who]
        message = finish(author) if kind == "finish" else note(author)
        closed_before = tx.to_dict()
        try:
            closed_now = txs.apply(tx, mid(n + 1), message, now=now)
        except Rejected as exc:
            assert tx.to_dict() == closed_before
            assert exc.code in {"tx_closed", "not_a_party"}
            assert exc.code == "not_a_party" or expected is not None or now > DEADLINE
            continue
        assert expected is None and now <= DEADLINE and author in PARTIES
        closings += closed_now
        if kind == "finish":
            seen.add(author)
            met = {"all": seen >= set(PARTIES), "any": bool(seen), "opener": A in seen}[policy]
            if met:
                expected = ("finished", now)
    closings += txs.expire(tx, now=max(now, DEADLINE) + 1)
    if expected is None:
        expected = ("timed_out", DEADLINE + 1)
    event(f"{policy}: {expected[0]}")
    assert closings == 1
    assert (tx.status, tx.closed) == expected
    assert not txs.expire(tx, now=max(now, DEADLINE) + 2)
    assert txs.record(tx)["status"] == expected[0]
