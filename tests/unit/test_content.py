"""Node policy: every schema rule of DESIGN §3, accepted and refused."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from chainmail.content import SCHEMAS, check_policy, is_valid_lei, tx_of
from chainmail.errors import InvalidMessage, Rejected
from chainmail.ids import blob_id, msg_id_from_digest
from chainmail.keys import Keypair

ALICE = Keypair.from_seed(b"\x01" * 32)
BOB = Keypair.from_seed(b"\x02" * 32)
CAROL = Keypair.from_seed(b"\x03" * 32)
NODE = Keypair.from_seed(b"\x04" * 32)
ROLE_KEY = Keypair.from_seed(b"\x05" * 32)
NEW_KEY = Keypair.from_seed(b"\x06" * 32)

TX = msg_id_from_digest(b"\x10" * 32)
CHAN = msg_id_from_digest(b"\x11" * 32)
BLOCK = msg_id_from_digest(b"\x12" * 32)
BLOB = blob_id(b"a document")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


SEALED = b64(b"\x07" * 80)  # crypto_box_seal of a 32-byte key
BOX = b64(b"\x08" * 40)  # nonce + tag of an empty plaintext
ROOT = b64(b"\x09" * 32)
TXID = "ab" * 32

#: GLEIF-published LEIs (ISO 17442 example / Apple Inc. / JPMorgan Chase & Co.
#: / Deutsche Bank AG / GLEIF itself), copied from the GLEIF LEI search.
REAL_LEIS = [
    "5493001KJTIIGC8Y1R12",
    "HWUPKR0MPOU8FGXBT394",
    "8I5DZWZKVSZI1NUHU748",
    "7LTWFZYICNSX8D621K86",
    "506700GE1G29325QX363",
]


def msg(
    content: Any, author: str = ALICE.id, timestamp: object = 1_732_250_000_000
) -> dict[str, Any]:
    return {
        "previous": None,
        "author": author,
        "sequence": 1,
        "timestamp": timestamp,
        "hash": "sha256",
        "content": content,
        "signature": "x.sig.ed25519",
    }


def role_content() -> dict[str, Any]:
    proof = ROLE_KEY.sign(ALICE.id.encode())
    return {"type": "role", "role": "precommitter", "id": ROLE_KEY.id, "proof": b64(proof)}


def rotate_content() -> dict[str, Any]:
    proof = NEW_KEY.sign(ALICE.id.encode())
    return {"type": "key/rotate", "to": NEW_KEY.id, "proof": b64(proof)}


#: A complete valid content of every interpreted type, every optional field set.
FULL: dict[str, dict[str, Any]] = {
    "tx/open": {
        "type": "tx/open",
        "parties": [ALICE.id, BOB.id],
        "deadline": 1_732_250_060_000,
        "finish": "any",
        "subject": "trade 42",
        "data": {"isin": "US0378331005"},
    },
    "tx/note": {"type": "tx/note", "tx": TX, "data": {"qty": 1}, "to": [BOB.id]},
    "tx/finish": {"type": "tx/finish", "tx": TX, "data": {}},
    "chan/open": {
        "type": "chan/open",
        "keys": {ALICE.id: SEALED, BOB.id: SEALED},
        "tx": TX,
        "label": "buy side",
    },
    "chan/msg": {"type": "chan/msg", "chan": CHAN, "box": BOX, "tx": TX},
    "chan/share": {"type": "chan/share", "chan": CHAN, "keys": {CAROL.id: SEALED}, "tx": TX},
    "doc": {
        "type": "doc",
        "blob": BLOB,
        "name": "confirm.pdf",
        "mime": "application/pdf",
        "size": 10,
        "tx": TX,
    },
    "about": {
        "type": "about",
        "about": ALICE.id,
        "name": "Alice Bank",
        "lei": REAL_LEIS[0],
        "routes": ["https://alice.example/v1", "http://10.0.0.1:8700"],
    },
    "attest": {
        "type": "attest",
        "subject": BOB.id,
        "name": "Bob Broker",
        "lei": REAL_LEIS[1],
        "expires": 1_800_000_000_000,
    },
    "role": role_content(),
    "key/rotate": rotate_content(),
    "contact": {"type": "contact", "contact": BOB.id, "following": True, "blocking": False},
    "block": {
        "type": "block",
        "height": 7,
        "prev": BLOCK,
        "time": 1_732_250_001_000,
        "logs": [
            {"pipeline": 0, "size": 120_345, "root": ROOT},
            {"pipeline": 1, "size": 0, "root": ROOT},
        ],
        "txs": {"count": 12, "root": ROOT, "records": BLOB},
    },
    "block/sign": {"type": "block/sign", "block": BLOCK, "height": 7, "stage": "precommit"},
    "block/stage": {
        "type": "block/stage",
        "block": BLOCK,
        "height": 7,
        "stage": "commit",
        "signers": [ALICE.id, BOB.id],
        "signs": [BLOCK, BLOCK],
        "root": ROOT,
    },
    "anchor": {
        "type": "anchor",
        "block": BLOCK,
        "height": 7,
        "chain": "bitcoin",
        "txid": TXID,
        "ots": BLOB,
    },
}


def author_of(kind: str) -> str:
    return NODE.id if kind in {"block", "block/stage", "anchor"} else ALICE.id


def policy(content: dict[str, Any], author: str | None = None) -> None:
    check_policy(msg(content, author or author_of(content["type"])), node_id=NODE.id)


def test_every_interpreted_type_has_a_sample() -> None:
    assert set(FULL) == set(SCHEMAS)


@pytest.mark.parametrize("kind", sorted(FULL))
def test_full_content_passes(kind: str) -> None:
    policy(copy.deepcopy(FULL[kind]))


@pytest.mark.parametrize("kind", sorted(FULL))
def test_only_required_fields_pass(kind: str) -> None:
    content = {k: v for k, v in FULL[kind].items() if k == "type" or SCHEMAS[kind][k][0]}
    policy(content)


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (kind, name)
        for kind, schema in sorted(SCHEMAS.items())
        for name, (req, _) in schema.items()
        if req
    ],
)
def test_missing_required_field_is_refused(kind: str, name: str) -> None:
    content = copy.deepcopy(FULL[kind])
    del content[name]
    with pytest.raises(InvalidMessage, match=f"^{kind}: missing required field '{name}'$") as info:
        policy(content)
    assert info.value.code == "invalid_format"


@pytest.mark.parametrize("kind", sorted(FULL))
def test_unknown_extra_fields_are_allowed(kind: str) -> None:
    content = copy.deepcopy(FULL[kind])
    content["x-future"] = {"anything": [1, 2]}
    policy(content)


def test_unknown_types_are_allowed() -> None:
    check_policy(msg({"type": "post", "text": "hi", "parties": 3}))


def test_a_private_box_is_accepted_as_is() -> None:
    check_policy(msg(b64(b"\x00" * 64) + ".box"))


GOOD_ID_LIST_ITEM = [ALICE.id, BOB.id]

#: (type, field, bad value, expected-message regex)
BAD_FIELDS: list[tuple[str, str, object, str]] = [
    ("tx/open", "parties", [], "non-empty list of feed ids"),
    ("tx/open", "parties", ALICE.id, "non-empty list of feed ids"),
    ("tx/open", "parties", [ALICE.id, "@nope.ed25519"], "item 1 is not a feed id"),
    ("tx/open", "parties", [ALICE.id, BOB.id, ALICE.id], "appears twice"),
    ("tx/open", "deadline", -1, "non-negative integer"),
    ("tx/open", "deadline", 1.5, "non-negative integer"),
    ("tx/open", "deadline", 1000.0, "non-negative integer"),
    ("tx/open", "deadline", True, "non-negative integer"),
    ("tx/open", "deadline", "1000", "non-negative integer"),
    ("tx/open", "deadline", 2**53, "non-negative integer"),
    ("tx/open", "finish", "majority", "'all' or 'any' or 'opener'"),
    ("tx/open", "finish", None, "'all' or 'any' or 'opener'"),
    ("tx/open", "subject", 42, "must be a string"),
    ("tx/open", "data", [1], "must be an object"),
    ("tx/open", "data", "x", "must be an object"),
    ("tx/note", "tx", "%nope.sha256", "message id"),
    ("tx/note", "tx", BLOB, "message id"),
    ("tx/note", "data", None, "must be an object"),
    ("tx/note", "to", [], "non-empty list of feed ids"),
    ("tx/note", "to", [TX], "item 0 is not a feed id"),
    ("tx/note", "to", [BOB.id, BOB.id], "appears twice"),
    ("tx/finish", "tx", ALICE.id, "message id"),
    ("tx/finish", "data", 3, "must be an object"),
    ("chan/open", "keys", {}, "non-empty object mapping feed ids"),
    ("chan/open", "keys", [ALICE.id], "non-empty object mapping feed ids"),
    ("chan/open", "keys", {ALICE.id: SEALED, "bob": SEALED}, "key 'bob' is not a feed id"),
    ("chan/open", "keys", {ALICE.id: "not base64!"}, "is not a base64 string"),
    ("chan/open", "keys", {ALICE.id: SEALED[:-2] + "B="}, "is not canonical base64"),
    ("chan/open", "keys", {ALICE.id: 5}, "is not a base64 string"),
    ("chan/open", "keys", {ALICE.id: b64(b"k" * 32)}, "is 32 bytes, expected 80"),
    ("chan/open", "tx", "tx", "message id"),
    ("chan/open", "label", ["x"], "must be a string"),
    ("chan/msg", "chan", BLOB, "message id"),
    ("chan/msg", "box", b64(b"\x00" * 39), "at least 40 bytes"),
    ("chan/msg", "box", "", "at least 40 bytes"),
    ("chan/msg", "box", BOX.rstrip("="), "base64 string"),
    ("chan/msg", "box", {"b": BOX}, "base64 string"),
    ("chan/msg", "tx", 1, "message id"),
    ("chan/share", "chan", None, "message id"),
    ("chan/share", "keys", {}, "non-empty object"),
    ("chan/share", "tx", CHAN + " ", "message id"),
    ("doc", "blob", TX, "blob id"),
    ("doc", "name", 1, "must be a string"),
    ("doc", "mime", None, "must be a string"),
    ("doc", "size", -5, "non-negative integer"),
    ("doc", "size", "10", "non-negative integer"),
    ("doc", "tx", BLOB, "message id"),
    ("about", "about", "Alice", "feed id"),
    ("about", "name", {"en": "A"}, "must be a string"),
    ("about", "lei", "5493001KJTIIGC8Y1R13", "ISO 17442 LEI"),
    ("about", "lei", "5493001kjtiigc8y1r12", "ISO 17442 LEI"),
    ("about", "routes", "https://alice.example", "list of http\\(s\\) URLs"),
    ("about", "routes", ["ftp://alice.example"], "item 0 is not an http\\(s\\) URL"),
    ("about", "routes", ["https://"], "item 0 is not an http\\(s\\) URL"),
    ("about", "routes", ["alice.example/v1"], "item 0 is not an http\\(s\\) URL"),
    ("about", "routes", ["https://a.example/", "https://b .example/"], "item 1 is not"),
    ("about", "routes", ["https://a.example:99999/"], "item 0 is not an http\\(s\\) URL"),
    ("about", "routes", ["http://[::1/"], "item 0 is not an http\\(s\\) URL"),
    ("about", "routes", [7], "item 0 is not an http\\(s\\) URL"),
    ("attest", "subject", "Bob", "feed id"),
    ("attest", "name", None, "must be a string"),
    ("attest", "lei", "HWUPKR0MPOU8FGXBT3", "ISO 17442 LEI"),
    ("attest", "expires", 1.5, "non-negative integer"),
    ("attest", "expires", -1, "non-negative integer"),
    ("role", "role", "", "non-empty string"),
    ("role", "role", 3, "non-empty string"),
    ("role", "id", "role-key", "feed id"),
    ("role", "proof", b64(b"\x00" * 63), "base64 of 64 bytes"),
    ("role", "proof", "proof", "base64"),
    ("key/rotate", "to", None, "feed id"),
    ("key/rotate", "proof", b64(b"\x00" * 65), "base64 of 64 bytes"),
    ("contact", "contact", [BOB.id], "feed id"),
    ("contact", "following", "yes", "true or false"),
    ("contact", "following", 1, "true or false"),
    ("contact", "blocking", None, "true or false"),
    ("block", "height", -1, "non-negative integer"),
    ("block", "prev", BLOB, "message id %….sha256 or null"),
    ("block", "time", 1.0e12, "non-negative integer"),
    ("block", "logs", {"pipeline": 0}, "list of \\{pipeline, size, root\\}"),
    ("block", "logs", [{"pipeline": 0, "size": 1}], "item 0: missing required field 'root'"),
    ("block", "logs", [{"pipeline": -1, "size": 1, "root": ROOT}], "item 0: field 'pipeline'"),
    (
        "block",
        "logs",
        [{"pipeline": 0, "size": 1, "root": BOX}],
        "field 'root' must be base64 of 32",
    ),
    ("block", "logs", ["x"], "item 0: expected an object"),
    (
        "block",
        "logs",
        [{"pipeline": 0, "size": 1, "root": ROOT}, {"pipeline": 0, "size": 2, "root": ROOT}],
        "pipeline 0 appears twice",
    ),
    ("block", "txs", [], "expected an object"),
    ("block", "txs", {"count": 1, "root": ROOT}, "missing required field 'records'"),
    (
        "block",
        "txs",
        {"count": 1, "root": ROOT, "records": TX},
        "field 'records' must be a blob id",
    ),
    ("block", "txs", {"count": "1", "root": ROOT, "records": BLOB}, "field 'count'"),
    ("block/sign", "block", BLOB, "message id"),
    ("block/sign", "height", None, "non-negative integer"),
    ("block/sign", "stage", "", "non-empty string"),
    ("block/stage", "block", "%x", "message id"),
    ("block/stage", "height", "7", "non-negative integer"),
    ("block/stage", "stage", None, "non-empty string"),
    ("block/stage", "signers", BOB.id, "list of feed ids"),
    ("block/stage", "signers", [BOB.id, BOB.id], "appears twice"),
    ("block/stage", "root", b64(b"\x00" * 31), "base64 of 32 bytes"),
    ("block/stage", "signs", ["%x"], "list of message ids"),
    ("anchor", "block", None, "message id"),
    ("anchor", "height", -7, "non-negative integer"),
    ("anchor", "chain", "", "non-empty string"),
    ("anchor", "txid", "AB" * 32, "64 lowercase hex"),
    ("anchor", "txid", "ab" * 31, "64 lowercase hex"),
    ("anchor", "txid", "zz" * 32, "64 lowercase hex"),
    ("anchor", "ots", TX, "blob id"),
]


@pytest.mark.parametrize(("kind", "name", "value", "match"), BAD_FIELDS)
def test_bad_field_is_refused(kind: str, name: str, value: object, match: str) -> None:
    content = copy.deepcopy(FULL[kind])
    content[name] = value
    with pytest.raises(InvalidMessage, match=match) as info:
        policy(content)
    assert info.value.code == "invalid_format"
    assert info.value.detail.startswith(f"{kind}: field '{name}' must be ")


def test_every_field_has_a_refusal_case() -> None:
    covered = {(kind, name) for kind, name, _, _ in BAD_FIELDS}
    every = {(kind, name) for kind, schema in SCHEMAS.items() for name in schema}
    assert every - covered == set()


def test_empty_signers_and_routes_are_allowed() -> None:
    stage = copy.deepcopy(FULL["block/stage"])
    stage["signers"] = []
    policy(stage)
    about = copy.deepcopy(FULL["about"])
    about["routes"] = []
    policy(about)


def test_genesis_block_has_null_prev_and_empty_logs() -> None:
    block = copy.deepcopy(FULL["block"])
    block["prev"] = None
    block["logs"] = []
    policy(block)


@pytest.mark.parametrize("finish", ["all", "any", "opener"])
def test_every_finish_policy_is_accepted(finish: str) -> None:
    policy({**FULL["tx/open"], "finish": finish})


# --- timestamp ---------------------------------------------------------------------


@pytest.mark.parametrize("timestamp", [0, 1, 1_732_250_000_000, 2**53 - 1])
def test_integer_timestamps_pass(timestamp: int) -> None:
    check_policy(msg(FULL["contact"], timestamp=timestamp))


@pytest.mark.parametrize("timestamp", [1.5, 1732250000000.25, 1e12, -1, True, None, "1", 2**53])
def test_timestamp_must_be_a_non_negative_integer(timestamp: object) -> None:
    with pytest.raises(InvalidMessage, match="timestamp must be a non-negative integer") as info:
        check_policy(msg(FULL["contact"], timestamp=timestamp))
    assert info.value.code == "invalid_format"


def test_timestamp_is_checked_for_private_boxes_too() -> None:
    with pytest.raises(InvalidMessage, match="timestamp"):
        check_policy(msg("AAAA.box", timestamp=0.5))


def test_missing_timestamp_is_refused() -> None:
    message = msg(FULL["contact"])
    del message["timestamp"]
    with pytest.raises(InvalidMessage, match="timestamp"):
        check_policy(message)


@pytest.mark.parametrize("content", [None, 3, ["type"], {"type": 3}, {"text": "no type"}])
def test_content_must_be_an_object_with_a_type_or_a_box(content: object) -> None:
    with pytest.raises(InvalidMessage, match="content"):
        check_policy(msg(content))


# --- cross-field rules -------------------------------------------------------------


def test_tx_open_parties_must_include_the_author() -> None:
    content = {**FULL["tx/open"], "parties": [BOB.id, CAROL.id]}
    with pytest.raises(InvalidMessage, match="tx/open: parties must include the author"):
        policy(content)


def test_single_party_tx_is_allowed() -> None:
    policy({"type": "tx/open", "parties": [ALICE.id], "deadline": 0})


def test_chan_open_keys_must_include_the_author() -> None:
    content = {**FULL["chan/open"], "keys": {BOB.id: SEALED}}
    with pytest.raises(InvalidMessage, match="chan/open: keys must include the author"):
        policy(content)


def test_chan_share_need_not_include_the_author() -> None:
    policy({"type": "chan/share", "chan": CHAN, "keys": {CAROL.id: SEALED}})


# --- node-only types ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["block", "block/stage", "anchor"])
def test_node_only_types_from_another_author_are_not_admitted(kind: str) -> None:
    with pytest.raises(Rejected, match="accepted only from the node's own identity") as info:
        check_policy(msg(FULL[kind], author=ALICE.id), node_id=NODE.id)
    assert info.value.code == "not_admitted"


@pytest.mark.parametrize("kind", ["block", "block/stage", "anchor"])
def test_node_only_types_fail_closed_without_a_node_id(kind: str) -> None:
    with pytest.raises(Rejected) as info:
        check_policy(msg(FULL[kind], author=NODE.id))
    assert info.value.code == "not_admitted"


def test_authorship_is_checked_before_the_schema() -> None:
    with pytest.raises(Rejected):
        check_policy(msg({"type": "block"}, author=ALICE.id), node_id=NODE.id)


def test_witness_signatures_come_from_anyone() -> None:
    check_policy(msg(FULL["block/sign"], author=CAROL.id), node_id=NODE.id)


# --- role and key/rotate proofs ----------------------------------------------------


def test_role_proof_by_the_role_key_over_the_owner_id_passes() -> None:
    policy(role_content())


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda: ALICE.sign(ALICE.id.encode()), id="signed-by-owner"),
        pytest.param(lambda: ROLE_KEY.sign(BOB.id.encode()), id="over-another-owner"),
        pytest.param(lambda: ROLE_KEY.sign(ROLE_KEY.id.encode()), id="over-the-role-id"),
        pytest.param(lambda: bytes(64), id="zeros"),
    ],
)
def test_forged_role_proof_is_an_invalid_signature(forge: Any) -> None:
    content = {**role_content(), "proof": b64(forge())}
    with pytest.raises(InvalidMessage, match="role: proof is not") as info:
        policy(content)
    assert info.value.code == "invalid_signature"


def test_role_proof_is_bound_to_its_owner() -> None:
    # Bob replays Alice's valid role message under his own feed.
    with pytest.raises(InvalidMessage, match="role: proof") as info:
        policy(role_content(), author=BOB.id)
    assert info.value.code == "invalid_signature"


def test_rotate_proof_by_the_new_key_over_the_old_id_passes() -> None:
    policy(rotate_content())


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda: ALICE.sign(ALICE.id.encode()), id="signed-by-old-key"),
        pytest.param(lambda: NEW_KEY.sign(NEW_KEY.id.encode()), id="over-the-new-id"),
        pytest.param(lambda: NEW_KEY.sign(BOB.id.encode()), id="over-another-id"),
    ],
)
def test_forged_rotate_proof_is_an_invalid_signature(forge: Any) -> None:
    content = {**rotate_content(), "proof": b64(forge())}
    with pytest.raises(InvalidMessage, match="key/rotate: proof is not") as info:
        policy(content)
    assert info.value.code == "invalid_signature"


def test_rotate_to_the_same_key_is_refused() -> None:
    content = {"type": "key/rotate", "to": ALICE.id, "proof": b64(ALICE.sign(ALICE.id.encode()))}
    with pytest.raises(InvalidMessage, match="must differ from the author") as info:
        policy(content)
    assert info.value.code == "invalid_format"


# --- LEI ---------------------------------------------------------------------------


@pytest.mark.parametrize("lei", REAL_LEIS)
def test_published_leis_are_valid(lei: str) -> None:
    assert is_valid_lei(lei)
    policy({"type": "about", "about": ALICE.id, "lei": lei})


@pytest.mark.parametrize("lei", REAL_LEIS)
def test_any_changed_check_digit_is_invalid(lei: str) -> None:
    for position in (18, 19):
        for digit in "0123456789":
            if digit != lei[position]:
                assert not is_valid_lei(lei[:position] + digit + lei[position + 1 :])


@pytest.mark.parametrize("lei", REAL_LEIS)
def test_a_swapped_pair_is_invalid(lei: str) -> None:
    # MOD 97-10 catches every transposition of two different adjacent digits. Not of
    # letters: a letter reads as two digits, so "X3" and "3X" both read "333".
    for i in range(19):
        if lei[i] != lei[i + 1] and (lei[i] + lei[i + 1]).isdigit():
            swapped = lei[:i] + lei[i + 1] + lei[i] + lei[i + 2 :]
            assert not is_valid_lei(swapped), swapped


@pytest.mark.parametrize(
    "value",
    [
        "",
        "5493001KJTIIGC8Y1R1",  # 19 characters
        "5493001KJTIIGC8Y1R122",  # 21 characters
        "5493001kjtiigc8y1r12",  # lower case
        "5493001KJTIIGC8Y1RA2",  # letter in the check digits
        "5493001KJTIIGC8Y1R-2",
        "00000000000000000000",
        None,
        5493001,
    ],
)
def test_malformed_leis_are_invalid(value: object) -> None:
    assert not is_valid_lei(value)


def test_attest_lei_is_checked_too() -> None:
    with pytest.raises(InvalidMessage, match="attest: field 'lei'"):
        policy({**FULL["attest"], "lei": "HWUPKR0MPOU8FGXBT395"})


# --- tx_of -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["tx/note", "tx/finish", "chan/open", "chan/msg", "chan/share", "doc"]
)
def test_tx_of_reads_the_tx_field(kind: str) -> None:
    assert tx_of(FULL[kind]) == TX
    assert tx_of({k: v for k, v in FULL[kind].items() if k != "tx"}) is None


@pytest.mark.parametrize(
    "content", [FULL["tx/open"], FULL["about"], {"type": "post", "tx": TX}, "x.box", None]
)
def test_tx_of_other_content_is_none(content: object) -> None:
    assert tx_of(content) is None


class _Text(str):
    """A str subclass: its ids skip the verdict cache, with the same outcome."""


@pytest.mark.parametrize("wrap", [str, _Text], ids=["str", "str-subclass"])
def test_remembered_id_verdicts_match_a_fresh_check(wrap: Any) -> None:
    good = {"type": "tx/note", "tx": wrap(TX), "data": {}, "to": [wrap(BOB.id)]}
    bad_tx = {**good, "tx": wrap(TX[:-1] + "X")}
    bad_to = {**good, "to": [wrap(BOB.id.replace(".ed25519", ".sha256"))]}
    noncanonical = {**good, "to": [wrap(BOB.id[:43] + "B=.ed25519")]}
    for _ in range(2):  # the second round answers from the cache
        check_policy(msg(good))
        for content in (bad_tx, bad_to, noncanonical):
            with pytest.raises(InvalidMessage, match="must be") as info:
                check_policy(msg(content))
            assert info.value.code == "invalid_format"
