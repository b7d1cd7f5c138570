"""chainmail.keys: RFC 8032 vectors, the SSB secret form, curve25519, proofs."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.public
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainmail import keys as keys_module
from chainmail.errors import InvalidMessage, KeystoreError
from chainmail.ids import feed_id
from chainmail.keys import (
    SSB_CURVE,
    Keypair,
    curve_public_of,
    sign_proof,
    verify_proof,
    verify_signature,
    verify_signed,
    verify_signed_many,
)

VECTORS_FILE = Path(__file__).resolve().parents[1] / "vectors" / "rfc8032.json"
RFC8032 = json.loads(VECTORS_FILE.read_text())["vectors"]

# RFC 8032 TEST 1, in ssb-keys' spelling (base64 computed once, then frozen here).
TEST1_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
TEST1_SSB = {
    "curve": "ed25519",
    "public": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=.ed25519",
    "private": (
        "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2DXWpgBgrEKt9VL/tPJZAc6DuFy89qmIyWvAhpo9wdRGg=="
        ".ed25519"
    ),
    "id": "@11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=.ed25519",
}
TEST1_PRIVATE_B64 = TEST1_SSB["private"].removesuffix(".ed25519")


def _vector_id(v: dict[str, str]) -> str:
    return v["name"]


# -- RFC 8032 §7.1 ---------------------------------------------------------------------


def test_vector_file_has_all_five_rfc_tests() -> None:
    assert [v["name"] for v in RFC8032] == [
        "TEST 1",
        "TEST 2",
        "TEST 3",
        "TEST 1024",
        "TEST SHA(abc)",
    ]
    assert len(bytes.fromhex(RFC8032[3]["message"])) == 1023


@pytest.mark.parametrize("vector", RFC8032, ids=_vector_id)
def test_rfc8032_sign(vector: dict[str, str]) -> None:
    keypair = Keypair.from_seed(bytes.fromhex(vector["secret_key"]))
    assert keypair.public.hex() == vector["public_key"]
    assert keypair.seed.hex() == vector["secret_key"]
    assert keypair.sign(bytes.fromhex(vector["message"])).hex() == vector["signature"]


@pytest.mark.parametrize("vector", RFC8032, ids=_vector_id)
def test_rfc8032_verify(vector: dict[str, str]) -> None:
    public = bytes.fromhex(vector["public_key"])
    message = bytes.fromhex(vector["message"])
    signature = bytes.fromhex(vector["signature"])
    assert verify_signature(public, message, signature)
    assert verify_signature(feed_id(public), message, signature)


@pytest.mark.parametrize("vector", RFC8032, ids=_vector_id)
def test_rfc8032_verify_rejects_tampering(vector: dict[str, str]) -> None:
    public = bytes.fromhex(vector["public_key"])
    message = bytes.fromhex(vector["message"])
    signature = bytes.fromhex(vector["signature"])
    if message:
        flipped = bytes([message[0] ^ 0x01]) + message[1:]
        assert not verify_signature(public, flipped, signature)
    assert not verify_signature(public, message + b"\x00", signature)
    bad_sig = signature[:-1] + bytes([signature[-1] ^ 0x80])
    assert not verify_signature(public, message, bad_sig)
    assert not verify_signature(public, message, signature[:63])
    other = Keypair.from_seed(bytes(32))
    assert not verify_signature(other.public, message, signature)


def test_verify_signature_malformed_feed_id_raises() -> None:
    with pytest.raises(InvalidMessage, match="not a feed id"):
        verify_signature("alice", b"", bytes(64))


def test_from_seed_rejects_wrong_length() -> None:
    with pytest.raises(InvalidMessage, match="expected 32 bytes, got 31"):
        Keypair.from_seed(bytes(31))


def test_repr_hides_secret() -> None:
    keypair = Keypair.from_seed(TEST1_SEED)
    text = repr(keypair)
    assert text == f"Keypair(id={keypair.id!r})"
    assert TEST1_SEED.hex() not in text
    assert TEST1_PRIVATE_B64 not in text


# -- SSB secret form -------------------------------------------------------------------


def test_to_ssb_secret_is_ssb_keys_format() -> None:
    secret = Keypair.from_seed(TEST1_SEED).to_ssb_secret()
    assert secret == TEST1_SSB
    # ssb-keys' keysToJSON order: curve, public, private, id.
    assert list(secret) == ["curve", "public", "private", "id"]
    assert SSB_CURVE == "ed25519"


def test_ssb_secret_round_trip() -> None:
    keypair = Keypair.generate()
    assert Keypair.from_ssb_secret(keypair.to_ssb_secret()) == keypair
    assert Keypair.from_ssb_secret(TEST1_SSB) == Keypair.from_seed(TEST1_SEED)


def test_from_ssb_secret_accepts_ssb_keys_leniencies() -> None:
    expected = Keypair.from_seed(TEST1_SEED)
    # presigil-legacy id (ssb-keys test/fs.js) and a missing id mean "@" + public.
    legacy = {**TEST1_SSB, "id": TEST1_SSB["public"]}
    assert Keypair.from_ssb_secret(legacy) == expected
    no_id = {k: v for k, v in TEST1_SSB.items() if k != "id"}
    assert Keypair.from_ssb_secret(no_id) == expected
    no_curve = {k: v for k, v in TEST1_SSB.items() if k != "curve"}
    assert Keypair.from_ssb_secret(no_curve) == expected
    assert Keypair.from_ssb_secret({**TEST1_SSB, "extra": 1}) == expected


def _other() -> dict[str, str]:
    return Keypair.from_seed(bytes(range(32))).to_ssb_secret()


BAD_SECRETS: list[tuple[str, Any, str]] = [
    ("list", [TEST1_SSB], "expected a JSON object, got list"),
    ("curve", {**TEST1_SSB, "curve": "secp256k1"}, "unsupported curve 'secp256k1'"),
    ("no private", {**TEST1_SSB, "private": None}, "'private' must be a string"),
    (
        "private untagged",
        {**TEST1_SSB, "private": TEST1_PRIVATE_B64},
        "'private' must end in '.ed25519'",
    ),
    (
        "private not base64",
        {**TEST1_SSB, "private": "!!!!" + TEST1_SSB["private"][4:]},
        "'private' is not base64",
    ),
    (
        "private 32 bytes",
        {**TEST1_SSB, "private": base64.b64encode(TEST1_SEED).decode() + ".ed25519"},
        "'private' must hold 64 bytes, got 32",
    ),
    (
        "private non-canonical",
        {**TEST1_SSB, "private": TEST1_PRIVATE_B64[:-3] + "h==.ed25519"},
        "'private' is not canonical base64",
    ),
    (
        "private spliced",
        {
            **TEST1_SSB,
            "private": base64.b64encode(
                TEST1_SEED + base64.b64decode(_other()["public"].removesuffix(".ed25519"))
            ).decode()
            + ".ed25519",
        },
        "'private' is not a valid ed25519 secret key",
    ),
    ("public of other", {**TEST1_SSB, "public": _other()["public"]}, "'public' does not match"),
    ("public short", {**TEST1_SSB, "public": "AAAA.ed25519"}, "'public' must hold 32 bytes"),
    ("id of other", {**TEST1_SSB, "id": _other()["id"]}, "'id' .* does not match the key pair"),
    ("id not str", {**TEST1_SSB, "id": 7}, "'id' must be a string"),
]


@pytest.mark.parametrize(
    ("secret", "message"),
    [pytest.param(s, m, id=i) for i, s, m in BAD_SECRETS],
)
def test_from_ssb_secret_rejects(secret: Any, message: str) -> None:
    with pytest.raises(KeystoreError, match=message) as info:
        Keypair.from_ssb_secret(secret)
    # Never echo secret material.
    assert TEST1_PRIVATE_B64[:20] not in str(info.value)
    assert TEST1_SEED.hex() not in str(info.value)


# -- curve25519 ------------------------------------------------------------------------


def test_sealed_box_to_curve_public_opens_with_curve_secret() -> None:
    keypair = Keypair.generate()
    sealed = nacl.public.SealedBox(nacl.public.PublicKey(keypair.curve_public()))
    ciphertext = sealed.encrypt(b"channel key: 32 random bytes....")
    opener = nacl.public.SealedBox(nacl.public.PrivateKey(keypair.curve_secret()))
    assert opener.decrypt(ciphertext) == b"channel key: 32 random bytes...."


def test_sealed_box_does_not_open_with_another_key() -> None:
    alice, bob = Keypair.generate(), Keypair.generate()
    ciphertext = nacl.public.SealedBox(nacl.public.PublicKey(alice.curve_public())).encrypt(b"x")
    with pytest.raises(nacl.exceptions.CryptoError):
        nacl.public.SealedBox(nacl.public.PrivateKey(bob.curve_secret())).decrypt(ciphertext)


def test_curve_keys_are_a_pair() -> None:
    keypair = Keypair.from_seed(TEST1_SEED)
    assert len(keypair.curve_public()) == 32
    assert len(keypair.curve_secret()) == 32
    # The converted public key is the X25519 base-point multiple of the converted secret.
    assert nacl.bindings.crypto_scalarmult_base(keypair.curve_secret()) == keypair.curve_public()
    assert (
        base64.b64encode(keypair.curve_public()) == b"2F4H7CKwrYgVN8L0TWYtGhQ8+DDFespDBdhcepD2ti4="
    )


def test_curve_public_of_feed_id_and_bytes() -> None:
    keypair = Keypair.generate()
    assert curve_public_of(keypair.id) == keypair.curve_public()
    assert curve_public_of(keypair.public) == keypair.curve_public()


@pytest.mark.parametrize(
    ("identity", "message"),
    [
        ("alice", "not a feed id"),
        ("@AAAA.ed25519", "expected 44 base64 characters"),
        (feed_id(bytes(32)), "not an ed25519 key that converts to curve25519"),
        (bytes(31), "expected 32 bytes, got 31"),
    ],
)
def test_curve_public_of_rejects(identity: str | bytes, message: str) -> None:
    with pytest.raises(InvalidMessage, match=message):
        curve_public_of(identity)


# -- key/rotate and role proofs ----------------------------------------------------------


def test_proof_round_trip() -> None:
    old, new = Keypair.generate(), Keypair.generate()
    proof = sign_proof(new, old.id)
    assert base64.b64encode(new.sign(old.id.encode("utf-8"))).decode() == proof
    assert len(base64.b64decode(proof)) == 64
    assert verify_proof(new.id, old.id, proof)


def test_proof_is_bound_to_signer_and_owner() -> None:
    old, new, third = Keypair.generate(), Keypair.generate(), Keypair.generate()
    proof = sign_proof(new, old.id)
    assert not verify_proof(third.id, old.id, proof)  # someone else's key
    assert not verify_proof(new.id, third.id, proof)  # about someone else
    assert not verify_proof(old.id, new.id, proof)  # roles swapped


@pytest.mark.parametrize(
    "proof",
    [
        "",
        "not base64!",
        base64.b64encode(bytes(63)).decode(),
        None,
        42,
    ],
)
def test_verify_proof_rejects_malformed_proof(proof: object) -> None:
    old, new = Keypair.generate(), Keypair.generate()
    assert not verify_proof(new.id, old.id, proof)


def test_verify_proof_rejects_tampered_and_non_canonical_proof() -> None:
    old, new = Keypair.generate(), Keypair.generate()
    raw = bytearray(base64.b64decode(sign_proof(new, old.id)))
    raw[0] ^= 1
    assert not verify_proof(new.id, old.id, base64.b64encode(bytes(raw)).decode())
    good = sign_proof(new, old.id)
    assert not verify_proof(new.id, old.id, good.rstrip("="))


def test_proof_rejects_non_feed_ids() -> None:
    new = Keypair.generate()
    with pytest.raises(InvalidMessage, match="not a feed id"):
        sign_proof(new, "alice")
    with pytest.raises(InvalidMessage, match="not a feed id"):
        verify_proof("bob", new.id, "x")
    with pytest.raises(InvalidMessage, match="not a feed id"):
        verify_proof(new.id, "%abc.sha256", "x")


@settings(max_examples=200)
@given(
    st.binary(max_size=300),
    st.integers(0, 63),
    st.integers(0, 7),
    st.sampled_from(["none", "signature", "message", "key"]),
)
def test_verify_signature_agrees_with_pynacl_crypto_sign_open(
    message: bytes, index: int, bit: int, tamper: str
) -> None:
    # verify_signature calls libsodium's crypto_sign_open without an output
    # buffer; PyNaCl's wrapper is the reference it must agree with.
    keypair = Keypair.from_seed(bytes(range(32)))
    public, signature = keypair.public, keypair.sign(message)
    if tamper == "signature":
        signature = _flip(signature, index, bit)
    elif tamper == "message":
        message = _flip(message, index % len(message), bit) if message else b"\x00"
    elif tamper == "key":
        public = _flip(public, index % 32, bit)
    try:
        nacl.bindings.crypto_sign_open(signature + message, public)
        expected = True
    except nacl.exceptions.BadSignatureError:
        expected = False
    assert verify_signature(public, message, signature) is expected
    assert expected is (tamper == "none")


def _flip(data: bytes, index: int, bit: int) -> bytes:
    return data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]


@pytest.fixture(params=["extension", "fallback"])
def batch_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways ``verify_signed_many`` can run: the C extension, and one cffi call a pair."""
    if request.param == "fallback":
        monkeypatch.setattr(keys_module, "_verify_all", None)
    return str(request.param)


def test_verifying_many_signatures_at_once_answers_each_pair(batch_path: str) -> None:
    alice, bob = Keypair.generate(), Keypair.generate()
    data = [f"message {i}".encode() for i in range(5)]
    pairs = [(alice.sign(d) + d, alice.public) for d in data]
    pairs[1] = (pairs[1][0][:-1] + b"!", alice.public)  # data changed after signing
    pairs[2] = (pairs[2][0], bob.public)  # someone else's key
    pairs[3] = (pairs[3][0][:63], alice.public)  # shorter than a signature
    pairs[4] = (pairs[4][0], alice.public[:31])  # not a 32-byte key
    pairs.append((alice.sign(b"") + b"", alice.public))  # an empty message is fine
    assert verify_signed_many(pairs) == bytes([1, 0, 0, 0, 0, 1])
    assert list(verify_signed_many(pairs)) == [verify_signed(s, p) for s, p in pairs]
    assert verify_signed_many([]) == b""


def test_verifying_many_refuses_what_is_not_pairs_of_bytes(batch_path: str) -> None:
    key = Keypair.generate()
    with pytest.raises(TypeError):
        verify_signed_many([(key.sign(b"x") + b"x", "not bytes")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        verify_signed_many([(b"x",)])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        verify_signed_many([[key.sign(b"x") + b"x", key.public]])  # type: ignore[list-item]
