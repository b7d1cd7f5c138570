"""The identity registry: claims, attestations, roles, rotation, admission, persistence."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest

from chainmail.content import check_policy
from chainmail.errors import InvalidMessage, Rejected, StorageError
from chainmail.ids import msg_id_from_digest
from chainmail.keys import Keypair, sign_proof
from chainmail.registry import APPLIED_TYPES, MAX_CLAIMS, Registry

ALICE = Keypair.from_seed(b"\x01" * 32)
BOB = Keypair.from_seed(b"\x02" * 32)
CAROL = Keypair.from_seed(b"\x03" * 32)
NODE = Keypair.from_seed(b"\x04" * 32)
REGISTRAR = Keypair.from_seed(b"\x05" * 32)
OTHER_REGISTRAR = Keypair.from_seed(b"\x06" * 32)
ROLE_KEY = Keypair.from_seed(b"\x07" * 32)
NEW_KEY = Keypair.from_seed(b"\x08" * 32)
NEWER_KEY = Keypair.from_seed(b"\x09" * 32)

LEI = "5493001KJTIIGC8Y1R12"
NOW = 1_732_250_000_000
NOTE = {"type": "tx/note", "tx": msg_id_from_digest(b"\x10" * 32), "data": {}}

_counter = 0


def mid() -> str:
    """A fresh message id."""
    global _counter
    _counter += 1
    return msg_id_from_digest(_counter.to_bytes(32, "big"))


def registry(admission: str = "open", **kwargs: Any) -> Registry:
    return Registry(
        [REGISTRAR.id, OTHER_REGISTRAR.id],
        admission,  # type: ignore[arg-type]
        node_id=NODE.id,
        **kwargs,
    )


def about(who: Keypair, **fields: Any) -> dict[str, Any]:
    return {"type": "about", "about": who.id, **fields}


def attest(subject: Keypair, name: str, **fields: Any) -> dict[str, Any]:
    return {"type": "attest", "subject": subject.id, "name": name, **fields}


def role(owner: Keypair, role_key: Keypair, name: str = "precommitter") -> dict[str, Any]:
    return {
        "type": "role",
        "role": name,
        "id": role_key.id,
        "proof": sign_proof(role_key, owner.id),
    }


def rotate(old: Keypair, new: Keypair) -> dict[str, Any]:
    return {"type": "key/rotate", "to": new.id, "proof": sign_proof(new, old.id)}


def post(reg: Registry, author: Keypair, content: dict[str, Any], now: int = NOW) -> set[str]:
    """Validate, check and apply one message, as the sequencer does; returns changed ids."""
    msg = {
        "previous": None,
        "author": author.id,
        "sequence": 1,
        "timestamp": now,
        "hash": "sha256",
        "content": content,
        "signature": "x.sig.ed25519",
    }
    check_policy(msg, node_id=NODE.id)
    reg.check(author.id, content, now=now)
    return reg.apply(mid(), author.id, content, now=now)


def empty(identity: str) -> dict[str, Any]:
    return {
        "id": identity,
        "claims": [],
        "attested": None,
        "roles": [],
        "owner": None,
        "rotated_to": None,
    }


# --- claims --------------------------------------------------------------------------


def test_unknown_identity_has_the_empty_record() -> None:
    assert registry().identity(ALICE.id, now=NOW) == empty(ALICE.id)


def test_self_claim_is_recorded_with_its_message_id() -> None:
    reg = registry()
    msg_id = mid()
    content = about(ALICE, name="Alice Bank", lei=LEI, routes=["https://alice.example/"])
    assert reg.apply(msg_id, ALICE.id, content, now=NOW) == {ALICE.id}
    assert reg.identity(ALICE.id, now=NOW) == {
        **empty(ALICE.id),
        "claims": [
            {
                "name": "Alice Bank",
                "lei": LEI,
                "routes": ["https://alice.example/"],
                "message": msg_id,
            }
        ],
    }


def test_claims_are_kept_newest_first_with_missing_fields_null() -> None:
    reg = registry()
    post(reg, ALICE, about(ALICE, name="Alice Bank"))
    post(reg, ALICE, about(ALICE, routes=["https://alice.example/"]))
    claims = reg.identity(ALICE.id, now=NOW)["claims"]
    assert [(c["name"], c["routes"]) for c in claims] == [
        (None, ["https://alice.example/"]),
        ("Alice Bank", None),
    ]
    assert claims[0]["lei"] is None


def test_claim_about_someone_else_is_ignored() -> None:
    reg = registry()
    assert post(reg, ALICE, about(BOB, name="Bob is a fraud")) == set()
    assert reg.identity(BOB.id, now=NOW) == empty(BOB.id)
    assert reg.identity(ALICE.id, now=NOW) == empty(ALICE.id)


def test_claims_are_capped_newest_kept() -> None:
    reg = registry()
    for i in range(MAX_CLAIMS + 5):
        post(reg, ALICE, about(ALICE, name=f"name {i}"))
    claims = reg.identity(ALICE.id, now=NOW)["claims"]
    assert len(claims) == MAX_CLAIMS
    assert claims[0]["name"] == f"name {MAX_CLAIMS + 4}"
    assert claims[-1]["name"] == "name 5"


def test_other_types_change_nothing() -> None:
    reg = registry()
    assert post(reg, ALICE, {"type": "contact", "contact": BOB.id, "following": True}) == set()
    assert post(reg, ALICE, NOTE) == set()
    assert reg.apply(mid(), ALICE.id, "c2VjcmV0.box", now=NOW) == set()
    assert len(reg) == 0


def test_only_applied_types_change_anything() -> None:
    # The sequencer calls ``apply`` only for these types.
    assert {"about", "attest", "role", "key/rotate"} == APPLIED_TYPES
    reg = registry()
    for kind in ("contact", "tx/note", "doc", "chan/open", "block"):
        assert reg.apply(mid(), ALICE.id, {"type": kind, "about": ALICE.id}, now=NOW) == set()
    assert len(reg) == 0


# --- attestations ----------------------------------------------------------------------


def test_registrar_attestation_is_shown() -> None:
    reg = registry()
    msg_id = mid()
    content = attest(ALICE, "Alice Bank plc", lei=LEI, expires=NOW + 1000)
    assert reg.apply(msg_id, REGISTRAR.id, content, now=NOW) == {ALICE.id}
    assert reg.identity(ALICE.id, now=NOW)["attested"] == {
        "name": "Alice Bank plc",
        "lei": LEI,
        "by": REGISTRAR.id,
        "expires": NOW + 1000,
        "message": msg_id,
    }


def test_attestation_without_expiry_or_lei() -> None:
    reg = registry()
    post(reg, REGISTRAR, attest(ALICE, "Alice Bank plc"))
    attested = reg.identity(ALICE.id, now=2**53 - 1)["attested"]
    assert attested is not None
    assert (attested["lei"], attested["expires"]) == (None, None)


def test_impostor_attestation_is_ignored() -> None:
    reg = registry()
    # A valid message (accepted into the impostor's feed) that counts for nothing.
    assert post(reg, BOB, attest(ALICE, "Alice Bank plc")) == set()
    assert reg.identity(ALICE.id, now=NOW)["attested"] is None
    assert reg.search("alice", now=NOW, limit=10) == []


def test_impostor_cannot_override_a_real_attestation() -> None:
    reg = registry()
    post(reg, REGISTRAR, attest(ALICE, "Alice Bank plc"))
    post(reg, BOB, attest(ALICE, "Not Alice"))
    attested = reg.identity(ALICE.id, now=NOW)["attested"]
    assert attested is not None
    assert attested["name"] == "Alice Bank plc"


def test_expiry_boundary() -> None:
    reg = registry()
    post(reg, REGISTRAR, attest(ALICE, "Alice Bank plc", expires=NOW + 10))
    assert reg.identity(ALICE.id, now=NOW + 9)["attested"] is not None
    # ``expires`` is the first ms the attestation no longer holds.
    assert reg.identity(ALICE.id, now=NOW + 10)["attested"] is None
    assert reg.identity(ALICE.id, now=NOW + 11)["attested"] is None


def test_newest_attestation_wins_across_registrars_and_can_revoke() -> None:
    reg = registry()
    post(reg, REGISTRAR, attest(ALICE, "Alice Bank plc"))
    post(reg, OTHER_REGISTRAR, attest(ALICE, "Alice Bank (Europe) SE"))
    attested = reg.identity(ALICE.id, now=NOW)["attested"]
    assert attested is not None
    assert (attested["name"], attested["by"]) == ("Alice Bank (Europe) SE", OTHER_REGISTRAR.id)
    # Revocation: the newest attestation has already expired.
    post(reg, REGISTRAR, attest(ALICE, "Alice Bank plc", expires=NOW - 1))
    assert reg.identity(ALICE.id, now=NOW)["attested"] is None


def test_dropping_a_registrar_from_the_configuration_drops_its_attestations() -> None:
    reg = registry()
    post(reg, REGISTRAR, attest(ALICE, "Alice Bank plc"))
    post(reg, OTHER_REGISTRAR, attest(ALICE, "Alice Bank (Europe) SE"))
    reloaded = Registry.from_dict(reg.to_dict(), [REGISTRAR.id], "open", node_id=NODE.id)
    attested = reloaded.identity(ALICE.id, now=NOW)["attested"]
    assert attested is not None
    assert attested["by"] == REGISTRAR.id
    none = Registry.from_dict(reg.to_dict(), [], "open")
    assert none.identity(ALICE.id, now=NOW)["attested"] is None


# --- search --------------------------------------------------------------------------


def test_search_by_claimed_and_attested_name_case_insensitive() -> None:
    reg = registry()
    post(reg, ALICE, about(ALICE, name="Alice Bank"))
    post(reg, BOB, about(BOB, name="Bob Brokers"))
    post(reg, REGISTRAR, attest(CAROL, "Carol BANK Custody"))
    found = reg.search("bank", now=NOW, limit=10)
    # Attested matches first.
    assert [i["id"] for i in found] == [CAROL.id, ALICE.id]
    assert found[0]["attested"]["name"] == "Carol BANK Custody"
    assert reg.search("BROKERS", now=NOW, limit=10)[0]["id"] == BOB.id
    assert reg.search("nobody", now=NOW, limit=10) == []
    assert len(reg.search("", now=NOW, limit=2)) == 2
    assert reg.search("bank", now=NOW, limit=0) == []


def test_search_uses_the_newest_claimed_name_and_current_attestation() -> None:
    reg = registry()
    post(reg, ALICE, about(ALICE, name="Old Name"))
    post(reg, ALICE, about(ALICE, name="New Name"))
    post(reg, ALICE, about(ALICE, routes=[]))  # states no name: the newest name still holds
    assert reg.search("old", now=NOW, limit=10) == []
    assert [i["id"] for i in reg.search("new", now=NOW, limit=10)] == [ALICE.id]
    post(reg, REGISTRAR, attest(BOB, "Bob Brokers", expires=NOW + 5))
    assert [i["id"] for i in reg.search("brokers", now=NOW, limit=10)] == [BOB.id]
    assert reg.search("brokers", now=NOW + 5, limit=10) == []


def test_search_leaves_out_rotated_keys() -> None:
    reg = registry()
    post(reg, ALICE, about(ALICE, name="Alice Bank"))
    post(reg, ALICE, rotate(ALICE, NEW_KEY))
    assert [i["id"] for i in reg.search("alice", now=NOW, limit=10)] == [NEW_KEY.id]


# --- roles ---------------------------------------------------------------------------


def test_role_binds_on_both_records() -> None:
    reg = registry()
    assert post(reg, ALICE, role(ALICE, ROLE_KEY)) == {ALICE.id, ROLE_KEY.id}
    assert reg.identity(ALICE.id, now=NOW)["roles"] == [{"role": "precommitter", "id": ROLE_KEY.id}]
    assert reg.identity(ROLE_KEY.id, now=NOW)["owner"] == ALICE.id


def test_forged_role_proof_is_refused_by_content_policy() -> None:
    reg = registry()
    # Bob claims Alice's role key, but the proof is Bob's own signature.
    forged = {
        "type": "role",
        "role": "precommitter",
        "id": ROLE_KEY.id,
        "proof": sign_proof(BOB, BOB.id),
    }
    with pytest.raises(InvalidMessage, match="proof is not") as info:
        post(reg, BOB, forged)
    assert info.value.code == "invalid_signature"
    # A proof for another owner does not transfer either.
    stolen = role(ALICE, ROLE_KEY)
    with pytest.raises(InvalidMessage) as info:
        post(reg, BOB, stolen)
    assert info.value.code == "invalid_signature"
    assert reg.identity(ROLE_KEY.id, now=NOW)["owner"] is None


def test_role_rebinding_moves_the_role_key() -> None:
    reg = registry()
    post(reg, ALICE, role(ALICE, ROLE_KEY))
    assert post(reg, BOB, role(BOB, ROLE_KEY, "committer")) == {ALICE.id, BOB.id, ROLE_KEY.id}
    assert reg.identity(ALICE.id, now=NOW)["roles"] == []
    assert reg.identity(BOB.id, now=NOW)["roles"] == [{"role": "committer", "id": ROLE_KEY.id}]
    assert reg.identity(ROLE_KEY.id, now=NOW)["owner"] == BOB.id
    # Same owner, new role name: renamed in place.
    assert post(reg, BOB, role(BOB, ROLE_KEY, "sealer")) == {BOB.id}
    assert reg.identity(BOB.id, now=NOW)["roles"] == [{"role": "sealer", "id": ROLE_KEY.id}]


# --- rotation ------------------------------------------------------------------------


def test_rotation_freezes_the_old_key_and_carries_the_attestation() -> None:
    reg = registry("attested")
    post(reg, ALICE, about(ALICE, name="Alice Bank"))
    post(reg, REGISTRAR, attest(ALICE, "Alice Bank plc", lei=LEI))
    assert post(reg, ALICE, rotate(ALICE, NEW_KEY)) == {ALICE.id, NEW_KEY.id}

    with pytest.raises(Rejected, match=f"rotated to {NEW_KEY.id}") as info:
        reg.check(ALICE.id, NOTE, now=NOW)
    assert info.value.code == "key_rotated"
    # Even an ``about`` is refused: the old key may post nothing more.
    with pytest.raises(Rejected) as info:
        reg.check(ALICE.id, about(ALICE, name="x"), now=NOW)
    assert info.value.code == "key_rotated"

    old = reg.identity(ALICE.id, now=NOW)
    new = reg.identity(NEW_KEY.id, now=NOW)
    assert old["rotated_to"] == NEW_KEY.id
    assert new["rotated_to"] is None
    assert new["owner"] is None
    assert new["attested"] == old["attested"]
    assert new["attested"]["name"] == "Alice Bank plc"
    assert new["claims"] == old["claims"]
    # The new key is admitted through the carried-over attestation.
    reg.check(NEW_KEY.id, NOTE, now=NOW)


@pytest.mark.parametrize(
    "content",
    [
        {"type": "tx/open", "parties": [BOB.id, ALICE.id], "deadline": NOW + 60_000},
        {**NOTE, "to": [ALICE.id]},
        {"type": "chan/open", "keys": {BOB.id: "c2VhbGVk", ALICE.id: "c2VhbGVk"}},
        {"type": "chan/share", "chan": NOTE["tx"], "keys": {ALICE.id: "c2VhbGVk"}},
    ],
    ids=["tx/open parties", "tx/note to", "chan/open keys", "chan/share keys"],
)
def test_nothing_new_may_route_to_a_key_rotated_away(
    content: dict[str, Any],
) -> None:
    reg = registry()
    post(reg, ALICE, rotate(ALICE, NEW_KEY))
    # Its deliveries (a channel's key included) would reach whoever holds the old key.
    with pytest.raises(Rejected, match=f"{ALICE.id} has rotated to {NEW_KEY.id}") as info:
        reg.check(BOB.id, content, now=NOW)
    assert info.value.code == "key_rotated"
    # The same naming the new key is fine, and so after a reload from the stored records.
    renamed = json.loads(json.dumps(content).replace(ALICE.id, NEW_KEY.id))
    reg.check(BOB.id, renamed, now=NOW)
    reloaded = Registry.from_dict(reg.to_dict())
    with pytest.raises(Rejected):
        reloaded.check(BOB.id, content, now=NOW)
    assert reloaded.rotated_to(ALICE.id) == NEW_KEY.id
    assert reloaded.rotated_to(NEW_KEY.id) is None and reloaded.rotated_to(BOB.id) is None


def test_rotation_keeps_the_newer_attestation_of_the_new_key() -> None:
    reg = registry()
    post(reg, REGISTRAR, attest(ALICE, "Alice Bank plc"))
    post(reg, REGISTRAR, attest(NEW_KEY, "Alice Bank plc (new key)"))
    post(reg, ALICE, rotate(ALICE, NEW_KEY))
    assert reg.identity(NEW_KEY.id, now=NOW)["attested"]["name"] == "Alice Bank plc (new key)"


def test_rotation_merges_claims_newest_first() -> None:
    reg = registry()
    post(reg, ALICE, about(ALICE, name="first"))
    post(reg, NEW_KEY, about(NEW_KEY, name="second"))
    post(reg, ALICE, about(ALICE, name="third"))
    post(reg, ALICE, rotate(ALICE, NEW_KEY))
    post(reg, NEW_KEY, about(NEW_KEY, name="fourth"))
    names = [c["name"] for c in reg.identity(NEW_KEY.id, now=NOW)["claims"]]
    assert names == ["fourth", "third", "second", "first"]


def test_rotated_messages_after_rotation_change_nothing() -> None:
    reg = registry()
    post(reg, ALICE, rotate(ALICE, NEW_KEY))
    # apply is defensive even if check was skipped.
    assert reg.apply(mid(), ALICE.id, about(ALICE, name="late"), now=NOW) == set()
    assert reg.apply(mid(), ALICE.id, rotate(ALICE, NEWER_KEY), now=NOW) == set()
    assert reg.identity(ALICE.id, now=NOW)["rotated_to"] == NEW_KEY.id


def test_rotating_into_a_rotated_key_is_refused() -> None:
    reg = registry()
    post(reg, NEW_KEY, rotate(NEW_KEY, NEWER_KEY))
    with pytest.raises(Rejected, match="rotate to a live key") as info:
        reg.check(ALICE.id, rotate(ALICE, NEW_KEY), now=NOW)
    assert info.value.code == "key_rotated"
    assert reg.apply(mid(), ALICE.id, rotate(ALICE, NEW_KEY), now=NOW) == set()


def test_chained_rotation() -> None:
    reg = registry("attested")
    post(reg, REGISTRAR, attest(ALICE, "Alice Bank plc"))
    post(reg, ALICE, rotate(ALICE, NEW_KEY))
    post(reg, NEW_KEY, rotate(NEW_KEY, NEWER_KEY))
    assert reg.identity(NEW_KEY.id, now=NOW)["rotated_to"] == NEWER_KEY.id
    assert reg.identity(NEWER_KEY.id, now=NOW)["attested"]["name"] == "Alice Bank plc"
    reg.check(NEWER_KEY.id, NOTE, now=NOW)


def test_owner_rotation_moves_its_roles() -> None:
    reg = registry()
    post(reg, ALICE, role(ALICE, ROLE_KEY))
    changed = post(reg, ALICE, rotate(ALICE, NEW_KEY))
    assert changed == {ALICE.id, NEW_KEY.id, ROLE_KEY.id}
    assert reg.identity(ROLE_KEY.id, now=NOW)["owner"] == NEW_KEY.id
    assert reg.identity(NEW_KEY.id, now=NOW)["roles"] == [
        {"role": "precommitter", "id": ROLE_KEY.id}
    ]
    # The old record is frozen as it was at the rotation.
    assert reg.identity(ALICE.id, now=NOW)["roles"] == [{"role": "precommitter", "id": ROLE_KEY.id}]


def test_role_key_rotation_keeps_its_owner() -> None:
    reg = registry()
    post(reg, ALICE, role(ALICE, ROLE_KEY))
    changed = post(reg, ROLE_KEY, rotate(ROLE_KEY, NEW_KEY))
    assert changed == {ALICE.id, ROLE_KEY.id, NEW_KEY.id}
    assert reg.identity(NEW_KEY.id, now=NOW)["owner"] == ALICE.id
    assert reg.identity(ALICE.id, now=NOW)["roles"] == [{"role": "precommitter", "id": NEW_KEY.id}]
    old = reg.identity(ROLE_KEY.id, now=NOW)
    assert (old["owner"], old["rotated_to"]) == (ALICE.id, NEW_KEY.id)


def test_binding_a_rotated_key_does_nothing() -> None:
    reg = registry()
    post(reg, ROLE_KEY, rotate(ROLE_KEY, NEW_KEY))
    assert post(reg, ALICE, role(ALICE, ROLE_KEY)) == set()
    assert reg.identity(ALICE.id, now=NOW)["roles"] == []


def test_rotating_into_ones_own_role_key_clears_its_owner() -> None:
    reg = registry()
    post(reg, ALICE, role(ALICE, ROLE_KEY))
    post(reg, ALICE, rotate(ALICE, ROLE_KEY))
    assert reg.identity(ROLE_KEY.id, now=NOW)["owner"] is None


# --- admission -----------------------------------------------------------------------


def test_open_mode_admits_everyone() -> None:
    reg = registry("open")
    reg.check(ALICE.id, NOTE, now=NOW)
    assert reg.admitted(ALICE.id, now=NOW)


def test_attested_mode_unattested_may_post_about_only() -> None:
    reg = registry("attested")
    reg.check(ALICE.id, about(ALICE, name="Alice Bank"), now=NOW)
    for content in (NOTE, rotate(ALICE, NEW_KEY), role(ALICE, ROLE_KEY), "c2VjcmV0.box"):
        with pytest.raises(Rejected, match="not admitted") as info:
            reg.check(ALICE.id, content, now=NOW)
        assert info.value.code == "not_admitted"


def test_attested_mode_attested_may_post_anything_until_expiry() -> None:
    reg = registry("attested")
    post(reg, REGISTRAR, attest(ALICE, "Alice Bank plc", expires=NOW + 10))
    reg.check(ALICE.id, NOTE, now=NOW + 9)
    reg.check(ALICE.id, "c2VjcmV0.box", now=NOW + 9)
    with pytest.raises(Rejected) as info:
        reg.check(ALICE.id, NOTE, now=NOW + 10)
    assert info.value.code == "not_admitted"
    reg.check(ALICE.id, about(ALICE, name="renew me"), now=NOW + 10)


def test_impostor_attestation_does_not_admit() -> None:
    reg = registry("attested")
    reg.apply(mid(), BOB.id, attest(ALICE, "Alice Bank plc"), now=NOW)
    with pytest.raises(Rejected):
        reg.check(ALICE.id, NOTE, now=NOW)


def test_registrars_and_node_are_always_admitted() -> None:
    reg = registry("attested")
    for author in (REGISTRAR, OTHER_REGISTRAR, NODE):
        reg.check(author.id, NOTE, now=NOW)
        reg.check(author.id, attest(ALICE, "x"), now=NOW)


def test_role_key_is_admitted_through_its_owner() -> None:
    reg = registry("attested")
    post(reg, REGISTRAR, attest(ALICE, "Alice Bank plc", expires=NOW + 10))
    post(reg, ALICE, role(ALICE, ROLE_KEY))
    reg.check(ROLE_KEY.id, NOTE, now=NOW)
    with pytest.raises(Rejected):
        reg.check(ROLE_KEY.id, NOTE, now=NOW + 10)
    # A registrar's role keys are admitted too; an unattested owner's are not.
    post(reg, REGISTRAR, role(REGISTRAR, NEW_KEY))
    reg.check(NEW_KEY.id, NOTE, now=NOW + 10)
    reg.apply(mid(), BOB.id, role(BOB, NEWER_KEY), now=NOW)
    with pytest.raises(Rejected):
        reg.check(NEWER_KEY.id, NOTE, now=NOW)


def test_bad_admission_mode() -> None:
    with pytest.raises(ValueError, match="admission"):
        Registry([], "closed")  # type: ignore[arg-type]


# --- idempotency and persistence -----------------------------------------------------


def _story() -> tuple[Registry, list[tuple[str, str, dict[str, Any]]]]:
    """A registry and the log that built it."""
    log: list[tuple[str, str, dict[str, Any]]] = [
        (mid(), ALICE.id, about(ALICE, name="Alice Bank", lei=LEI)),
        (mid(), REGISTRAR.id, attest(ALICE, "Alice Bank plc", expires=NOW + 100)),
        (mid(), OTHER_REGISTRAR.id, attest(BOB, "Bob Brokers")),
        (mid(), BOB.id, attest(CAROL, "impostor")),
        (mid(), ALICE.id, role(ALICE, ROLE_KEY)),
        (mid(), ALICE.id, rotate(ALICE, NEW_KEY)),
        (mid(), NEW_KEY.id, about(NEW_KEY, name="Alice Bank", routes=["https://a.example/"])),
        (mid(), ROLE_KEY.id, rotate(ROLE_KEY, NEWER_KEY)),
        (mid(), CAROL.id, about(CAROL, name="Carol Custody")),
    ]
    reg = registry("attested")
    for msg_id, author, content in log:
        reg.apply(msg_id, author, content, now=NOW)
    return reg, log


def _answers(reg: Registry) -> Any:
    ids = [ALICE.id, BOB.id, CAROL.id, ROLE_KEY.id, NEW_KEY.id, NEWER_KEY.id]
    return (
        [reg.identity(i, now=t) for i in ids for t in (NOW, NOW + 100)],
        [reg.search(q, now=NOW, limit=10) for q in ("alice", "bob", "carol", "")],
        [reg.admitted(i, now=t) for i in ids for t in (NOW, NOW + 100)],
    )


def test_applying_a_message_twice_changes_nothing() -> None:
    reg, log = _story()
    before = reg.to_dict()
    for msg_id, author, content in log:
        assert reg.apply(msg_id, author, content, now=NOW) == set()
    assert reg.to_dict() == before


def test_replaying_a_suffix_of_the_log_changes_no_answer() -> None:
    reg, log = _story()
    before = _answers(reg)
    for msg_id, author, content in log[3:]:
        reg.apply(msg_id, author, content, now=NOW)
    assert _answers(reg) == before


def test_to_dict_from_dict_round_trip() -> None:
    reg, _ = _story()
    data = orjson.loads(orjson.dumps(reg.to_dict()))  # through JSON, as a store would
    again = Registry.from_dict(
        data, [REGISTRAR.id, OTHER_REGISTRAR.id], "attested", node_id=NODE.id
    )
    assert again.to_dict() == reg.to_dict()
    assert _answers(again) == _answers(reg)
    # And it keeps working the same: newest-wins order survives the reload.
    late = mid()
    for r in (reg, again):
        r.apply(late, REGISTRAR.id, attest(BOB, "Bob Brokers Ltd"), now=NOW)
    assert _answers(again) == _answers(reg)


def test_records_round_trip() -> None:
    reg, _ = _story()
    ids = [ALICE.id, BOB.id, CAROL.id, ROLE_KEY.id, NEW_KEY.id, NEWER_KEY.id]
    records = [r for r in map(reg.record, ids) if r is not None]
    assert len(records) == len(reg) == len(ids)
    again = Registry.from_records(
        records,
        [REGISTRAR.id, OTHER_REGISTRAR.id],
        "attested",
        node_id=NODE.id,
    )
    assert _answers(again) == _answers(reg)
    assert reg.record(CAROL.id + "x") is None


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("identities"),
        lambda d: d["identities"][0].pop("claims"),
        lambda d: d["identities"][0].__setitem__("owner", 7),
        lambda d: d["identities"][0].__setitem__("claims", [{"name": "x"}]),
        lambda d: d["identities"].append(copy.deepcopy(d["identities"][0])),
        lambda d: d["identities"][0].__setitem__("attestations", [{"order": True}]),
    ],
)
def test_malformed_stored_registry_raises_storage_error(mutate: Any) -> None:
    reg, _ = _story()
    data = reg.to_dict()
    mutate(data)
    with pytest.raises(StorageError):
        Registry.from_dict(data)
