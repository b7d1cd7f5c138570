"""chainmail.checkpoint: C2SP signed notes and tlog checkpoints, against Go's vectors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainmail import merkle
from chainmail.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    Note,
    Signature,
    Signer,
    Verifier,
    key_id,
    open_note,
    sign_checkpoint,
    sign_note,
    signer_key,
    verifier_key,
    verify_checkpoint,
)
from chainmail.errors import ProofError
from chainmail.keys import Keypair

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "signed-note.json").read_text())
GO = VECTORS["go_note"]
VKEY: str = GO["verifier_key"]
SKEY: str = GO["signer_key"]
TEXT: str = GO["text"]
NOTE: str = GO["note"]
ENOCH_VKEY: str = GO["cosigner_verifier_key"]
PETER_SIG = NOTE[len(TEXT) + 1 :]
ENOCH_SIG = GO["cosigned_note"][len(NOTE) :]

PETER = Verifier.parse(VKEY)
ENOCH = Verifier.parse(ENOCH_VKEY)
KEYPAIR = Keypair.from_seed(bytes(range(32)))
ORIGIN = "chainmail.example/node/0"


def checkpoint(size: int = 42) -> Checkpoint:
    return Checkpoint(ORIGIN, size, merkle.leaf_hash(b"root"))


# --- the Go reference vector (golang.org/x/mod/sumdb/note) ------------------------------------


def test_go_keys_parse_and_round_trip() -> None:
    signer = Signer.parse(SKEY)
    assert PETER.name == signer.name == "PeterNeumann"
    assert PETER.key_id == signer.key_id == bytes.fromhex("c74f20a3")
    assert signer.verifier == PETER
    assert PETER.key == str(PETER) == VKEY
    assert signer.key == SKEY
    assert verifier_key("PeterNeumann", PETER.public) == VKEY
    assert signer_key("PeterNeumann", signer.keypair) == SKEY
    assert key_id("PeterNeumann", PETER.public) == bytes.fromhex("c74f20a3")


def test_go_note_signs_byte_for_byte() -> None:
    assert sign_note(TEXT, Signer.parse(SKEY)) == NOTE


def test_go_note_verifies() -> None:
    note = open_note(NOTE, [PETER])
    assert note.text == TEXT
    assert [s.key for s in note.signatures] == ["PeterNeumann+c74f20a3"]
    assert note.unverified == ()
    assert open_note(NOTE.encode(), [PETER]).text == TEXT


def test_go_cosigned_note() -> None:
    both = GO["cosigned_note"]
    assert both == NOTE + ENOCH_SIG
    note = open_note(both, [PETER, ENOCH])
    assert [s.name for s in note.signatures] == ["PeterNeumann", "EnochRoot"]
    only_peter = open_note(both, [PETER])
    assert [s.name for s in only_peter.signatures] == ["PeterNeumann"]
    assert [s.key for s in only_peter.unverified] == ["EnochRoot+af0cfe78"]
    only_enoch = open_note(both, [ENOCH])
    assert [s.name for s in only_enoch.signatures] == ["EnochRoot"]
    with pytest.raises(
        ProofError,
        match=r"^note has no verifiable signatures: expected one by none, "
        r"got PeterNeumann\+c74f20a3, EnochRoot\+af0cfe78$",
    ):
        open_note(both, [])


def test_tampered_go_note_fails() -> None:
    with pytest.raises(ProofError, match=r"^invalid signature for key PeterNeumann\+c74f20a3$"):
        open_note(NOTE.replace("cryptography", "cryptographY"), [PETER])
    # Go's TestOpen: four bytes spliced into the signature.
    spliced = TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(ProofError, match=r"^invalid signature for key PeterNeumann\+c74f20a3$"):
        open_note(spliced, [PETER])


def test_go_duplicate_signatures() -> None:
    # Go's TestOpen: repeated signatures count once, repeated unknown lines are dropped.
    enoch_abcd = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    message = TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG + enoch_abcd
    note = open_note(message, [PETER])
    assert len(note.signatures) == 1
    assert [s.key for s in note.unverified] == ["EnochRoot+af0cfe78", "EnochRoot+af0cfe78"]
    assert note.unverified[0] != note.unverified[1]


def test_go_signature_limit() -> None:
    many = TEXT + "\n" + PETER_SIG * (MAX_SIGNATURES + 1)
    for verifiers in ([PETER], []):
        with pytest.raises(
            ProofError, match=r"^malformed note: expected at most 100 signatures, got 101$"
        ):
            open_note(many, verifiers)
    assert open_note(TEXT + "\n" + PETER_SIG * MAX_SIGNATURES, [PETER]).text == TEXT


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (TEXT, r"expected a blank line before the signatures, got none"),
        (TEXT + "\n", r"expected signature lines each ending in a newline, got ''"),
        (TEXT + "\n" + PETER_SIG[:-1], r"expected signature lines each ending in a newline"),
        (
            "\x01" + TEXT + "\n" + PETER_SIG,
            r"expected no control characters but newline, got U\+0001 at offset 0",
        ),
        (
            TEXT
            + "\n"
            + "\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n",
            r"signature line 1: expected base64, got 'Name x08go",
        ),
        (
            TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
            r"signature line 2: expected '— <key name> <base64>', got 'Unexpected line.'",
        ),
        (
            TEXT
            + "\n\u2014 a+b x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n",
            r"signature line 1: expected a key name without spaces or '\+', got 'a\+b'",
        ),
        (
            TEXT + "\n\u2014  x08go/ZJk=\n",
            r"signature line 1: expected a key name without spaces or '\+', got ''",
        ),
        (
            TEXT + "\n\u2014 PeterNeumann AAAAAA==\n",
            r"signature line 1: expected at least 5 bytes of key id and signature, got 4",
        ),
        (TEXT + "\n\u2014 PeterNeumann \n", r"signature line 1: expected base64, got ''"),
        (
            TEXT + "\n\u2014 PeterNeumann AAAAAAAA====\n",
            r"signature line 1: expected base64, got 'AAAAAAAA===='",
        ),
        (TEXT + "\n\u2014 PeterNeumann x08go\n", r"signature line 1: expected base64, got 'x08go'"),
        (
            TEXT + "\n-- PeterNeumann x08go/ZJk=\n",
            r"signature line 1: expected '— <key name> <base64>'",
        ),
        (
            TEXT + "\r\n" + PETER_SIG,
            r"expected no control characters but newline, got U\+000D at offset",
        ),
        (
            TEXT + "\n" + PETER_SIG.replace(" x08go", "\tx08go"),
            r"expected no control characters but newline, got U\+0009 at offset",
        ),
    ],
)
def test_malformed_notes(message: str, reason: str) -> None:
    with pytest.raises(ProofError, match="^malformed note: " + reason):
        open_note(message, [PETER])


def test_malformed_note_bytes() -> None:
    with pytest.raises(
        ProofError, match=r"^malformed note: expected UTF-8, got an invalid byte at offset 0$"
    ):
        open_note(b"\xff" + NOTE.encode(), [PETER])
    with pytest.raises(ProofError, match=r"^malformed note: expected valid Unicode, got a lone"):
        open_note("\ud800" + NOTE, [PETER])


def test_unknown_keys_are_ignored_even_when_name_or_id_matches() -> None:
    # Same name, other key: a different key id, so unknown; the note is unverified.
    impostor = Signer("PeterNeumann", KEYPAIR)
    forged = sign_note(TEXT, impostor)
    with pytest.raises(ProofError, match=r"^note has no verifiable signatures: expected one by "):
        open_note(forged, [PETER])
    # Both signatures: the impostor's is ignored, Peter's verifies.
    note = open_note(NOTE + forged[len(TEXT) + 1 :], [PETER])
    assert [s.key for s in note.signatures] == ["PeterNeumann+c74f20a3"]
    assert [s.key_id for s in note.unverified] == [impostor.key_id]
    # Same key id under another name is another key too (Go's CarmenSandiego case).
    renamed = NOTE.replace("PeterNeumann", "CarmenSandiego")
    with pytest.raises(ProofError, match=r"got CarmenSandiego\+c74f20a3$"):
        open_note(renamed, [PETER])


def test_ambiguous_verifiers() -> None:
    class Colliding(Verifier):
        @property
        def key_id(self) -> bytes:
            return PETER.key_id

    twin = Colliding("PeterNeumann", KEYPAIR.public)
    with pytest.raises(ProofError, match=r"^ambiguous key PeterNeumann\+c74f20a3: 2 verifiers"):
        open_note(NOTE, [PETER, twin])
    # The same verifier twice is not ambiguous; an unused collision does not matter.
    assert open_note(NOTE, [PETER, PETER]).text == TEXT
    assert open_note(TEXT + "\n" + ENOCH_SIG, [ENOCH, twin, PETER]).text == TEXT


# --- key strings: Go's mangling tests ---------------------------------------------------------


def test_every_mangled_verifier_key_is_refused() -> None:
    b = VKEY.encode()
    refused = 0
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if i != 0 or j != len(b):
                with pytest.raises(ProofError, match=r"^verifier key"):
                    Verifier.parse(b[i:j].decode())
                refused += 1
    for i in range(len(b)):
        mangled = bytearray(b)
        mangled[i] += 1
        with pytest.raises(ProofError, match=r"^verifier key"):
            Verifier.parse(mangled.decode())
        refused += 1
    assert refused > 2000


def test_every_mangled_signer_key_is_refused() -> None:
    b = SKEY.encode()
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if i != 0 or j != len(b):
                with pytest.raises(ProofError, match=r"^signer key"):
                    Signer.parse(b[i:j].decode())
    for i in range(len(b)):
        mangled = bytearray(b)
        mangled[i] += 1
        with pytest.raises(ProofError, match=r"^signer key"):
            Signer.parse(mangled.decode())


def test_verifier_key_errors() -> None:
    # Go's badKey cases, whose key ids were adjusted to pass the id check.
    with pytest.raises(
        ProofError, match=r"^verifier key: expected a 32-byte Ed25519 public key, got 36 bytes$"
    ):
        Verifier.parse("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==")
    with pytest.raises(
        ProofError, match=r"^verifier key: expected signature type 0x01 \(Ed25519\), got 0x65$"
    ):
        Verifier.parse("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    with pytest.raises(ProofError, match=r"^verifier key: expected key id c74f20a3, got c74f20a4$"):
        Verifier.parse(VKEY.replace("c74f20a3", "c74f20a4"))
    with pytest.raises(ProofError, match=r"^verifier key: expected <name>\+<8 hex digits>\+"):
        Verifier.parse("PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    with pytest.raises(ProofError, match=r"^verifier key name: expected non-empty text"):
        Verifier.parse("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    # Upper-case hex is accepted, as Go's strconv.ParseUint does.
    assert Verifier.parse(VKEY.replace("c74f20a3", "C74F20A3")) == PETER


def test_signer_key_errors_never_quote_the_secret() -> None:
    with pytest.raises(ProofError, match=r"^signer key: expected key id c74f20a3, got c74f20a4$"):
        Signer.parse(SKEY.replace("c74f20a3", "c74f20a4"))
    with pytest.raises(ProofError) as caught:
        Signer.parse(SKEY[:-1])
    assert SKEY[-40:-1] not in str(caught.value)
    assert "AYEKF" not in repr(Signer.parse(SKEY))


def test_key_names() -> None:
    for bad in ("", "a b", "a+b", "a\u00a0b", "a\u2003b", "a\nb", "a\x01b", "\ud800"):
        with pytest.raises(ProofError, match="key name: expected non-empty text"):
            Verifier(bad, PETER.public)
        with pytest.raises(ProofError, match="key name: expected non-empty text"):
            Signer(bad, KEYPAIR)
    with pytest.raises(ProofError, match=r"^Ed25519 public key: expected 32 bytes, got 31$"):
        Verifier("ok", PETER.public[:31])
    assert Verifier("example.com/log/ünïcode", PETER.public).key.startswith("example.com/log/")


# --- signing ---------------------------------------------------------------------------------


def test_sign_and_open_round_trip() -> None:
    signer = Signer("chainmail.example/node", KEYPAIR)
    message = sign_note("hello\n\nworld\n", signer)
    note = open_note(message, [signer.verifier])
    assert note.text == "hello\n\nworld\n"  # the last blank line separates


def test_sign_note_refuses_bad_text() -> None:
    signer = Signer("n", KEYPAIR)
    with pytest.raises(ProofError, match=r"^malformed note: expected text ending in a newline"):
        sign_note("abc", signer)
    with pytest.raises(ProofError, match=r"^malformed note text: expected no control characters"):
        sign_note("a\tb\n", signer)
    with pytest.raises(ProofError, match=r"^malformed note text: expected valid Unicode"):
        sign_note("\udc80\n", signer)


def test_cosigning_keeps_and_replaces_signatures() -> None:
    peter = Signer.parse(SKEY)
    witness = Signer("witness.example", KEYPAIR)
    opened = open_note(NOTE, [PETER])
    cosigned = sign_note(opened, witness)
    assert cosigned.startswith(NOTE)
    note = open_note(cosigned, [PETER, witness.verifier])
    assert [s.name for s in note.signatures] == ["PeterNeumann", "witness.example"]
    # Re-signing by a key already present replaces its line rather than adding one.
    resigned = sign_note(Note(TEXT, (Signature("PeterNeumann", PETER.key_id, b"bad"),)), peter)
    assert resigned == NOTE


# --- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_text() -> None:
    cp = Checkpoint("example.com/log", 20852163, bytes(32), ("ext one", "ext two"))
    assert cp.to_text() == (
        "example.com/log\n20852163\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\next one\next two\n"
    )
    assert Checkpoint.from_text(cp.to_text()) == cp
    assert Checkpoint("o", 0, bytes(32)).to_text().splitlines()[1] == "0"


def test_sign_and_verify_checkpoint() -> None:
    cp = checkpoint()
    text = sign_checkpoint(cp, ORIGIN, KEYPAIR)
    vkey = verifier_key(ORIGIN, KEYPAIR.public)
    assert text.startswith(cp.to_text() + "\n\u2014 " + ORIGIN + " ")
    assert verify_checkpoint(text, vkey) == cp
    assert verify_checkpoint(text, (ORIGIN, KEYPAIR.public)) == cp
    assert verify_checkpoint(text.encode(), Verifier(ORIGIN, KEYPAIR.public), origin=ORIGIN) == cp
    with pytest.raises(
        ProofError,
        match=r"^checkpoint origin: expected 'chainmail.example/node/1', "
        r"got 'chainmail.example/node/0'$",
    ):
        verify_checkpoint(text, vkey, origin="chainmail.example/node/1")


def test_tampered_checkpoints_fail() -> None:
    cp = checkpoint(1000)
    text = sign_checkpoint(cp, ORIGIN, KEYPAIR)
    vkey = verifier_key(ORIGIN, KEYPAIR.public)
    root_line = base64.b64encode(cp.root).decode()
    other_root = base64.b64encode(merkle.leaf_hash(b"other")).decode()
    for tampered in (
        text.replace("\n1000\n", "\n1001\n"),
        text.replace(root_line, other_root),
        text.replace(ORIGIN + "\n", ORIGIN + "x\n", 1),
        text.replace("\n\n", "\nextension\n\n"),
    ):
        with pytest.raises(ProofError, match=r"^invalid signature for key chainmail"):
            verify_checkpoint(tampered, vkey)


def test_checkpoint_from_the_wrong_key_fails() -> None:
    text = sign_checkpoint(checkpoint(), ORIGIN, KEYPAIR)
    other = Keypair.from_seed(bytes(range(1, 33)))
    with pytest.raises(ProofError, match=r"^note has no verifiable signatures: expected one by "):
        verify_checkpoint(text, (ORIGIN, other.public))
    with pytest.raises(ProofError, match=r"^note has no verifiable signatures"):
        verify_checkpoint(text, ("another.example/log", KEYPAIR.public))
    with pytest.raises(ProofError, match=r"^verifier key"):
        verify_checkpoint(text, "not a key")


def test_checkpoint_signed_note_must_hold_a_checkpoint() -> None:
    signer = Signer(ORIGIN, KEYPAIR)
    note = sign_note("just one line\n", signer)
    with pytest.raises(
        ProofError, match=r"^malformed checkpoint: expected at least 3 lines .*, got 1$"
    ):
        verify_checkpoint(note, signer.verifier)


ROOT_B64 = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"o\n1\n{ROOT_B64}", r"expected text ending in a newline"),
        ("o\n1\n", r"expected at least 3 lines \(origin, size, root\), got 2"),
        (f"\n1\n{ROOT_B64}\n", r"origin: expected a non-empty line, got ''"),
        (f"o\n01\n{ROOT_B64}\n", r"size: expected decimal digits without leading zeros, got '01'"),
        (f"o\n+1\n{ROOT_B64}\n", r"size: expected decimal digits without leading zeros, got '\+1'"),
        (f"o\n-1\n{ROOT_B64}\n", r"size: expected decimal digits"),
        (f"o\n 1\n{ROOT_B64}\n", r"size: expected decimal digits"),
        (f"o\n1_000\n{ROOT_B64}\n", r"size: expected decimal digits"),
        (f"o\n\u0661\n{ROOT_B64}\n", r"size: expected decimal digits"),
        (f"o\n\n{ROOT_B64}\n", r"size: expected decimal digits without leading zeros, got ''"),
        (f"o\n{2**64}\n{ROOT_B64}\n", r"size: expected 0 to 2\*\*64-1, got 18446744073709551616"),
        ("o\n1\nAAAA\n", r"root: expected canonical base64 of 32 bytes, got 'AAAA'"),
        (f"o\n1\n{ROOT_B64[:-1]}\n", r"root: expected canonical base64 of 32 bytes"),
        (f"o\n1\n{ROOT_B64[:-2]}B=\n", r"root: expected canonical base64 of 32 bytes"),
        (f"o\n1\n{ROOT_B64} \n", r"root: expected canonical base64 of 32 bytes"),
        (f"o\n1\n{ROOT_B64}\n\n", r"extension line 1: expected a non-empty line"),
        (f"o\n1\n{ROOT_B64}\next\n\n", r"extension line 2: expected a non-empty line"),
    ],
)
def test_malformed_checkpoints(text: str, reason: str) -> None:
    with pytest.raises(ProofError, match="^malformed checkpoint: " + reason):
        Checkpoint.from_text(text)


def test_checkpoint_fields_are_validated() -> None:
    root = bytes(32)
    with pytest.raises(ProofError, match=r"^malformed checkpoint: origin: expected one line"):
        Checkpoint("a\nb", 1, root)
    with pytest.raises(ProofError, match=r"^malformed checkpoint origin: expected no control"):
        Checkpoint("a\tb", 1, root)
    with pytest.raises(ProofError, match=r"^malformed checkpoint: size: expected 0 to 2\*\*64-1"):
        Checkpoint("o", -1, root)
    with pytest.raises(ProofError, match=r"^malformed checkpoint: size: expected an integer"):
        Checkpoint("o", True, root)
    with pytest.raises(
        ProofError, match=r"^malformed checkpoint: root: expected 32 bytes, got 31$"
    ):
        Checkpoint("o", 1, root[:31])
    with pytest.raises(ProofError, match=r"^malformed checkpoint: extension line 1: expected one"):
        Checkpoint("o", 1, root, ("a\nb",))
    assert Checkpoint("o", 2**64 - 1, root).size == 2**64 - 1


line_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\n", min_codepoint=0x20),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(
    origin=line_text,
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(line_text, max_size=3),
)
def test_checkpoint_round_trip(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    cp = Checkpoint(origin, size, root, tuple(extensions))
    assert Checkpoint.from_text(cp.to_text()) == cp
    signed = sign_checkpoint(cp, "log.example", KEYPAIR)
    assert verify_checkpoint(signed, ("log.example", KEYPAIR.public)) == cp


@settings(max_examples=100, deadline=None)
@given(position=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_flipped_bit_in_a_signed_checkpoint_fails(position: int, bit: int) -> None:
    text = sign_checkpoint(checkpoint(123456), ORIGIN, KEYPAIR).encode()
    position %= len(text)
    tampered = bytearray(text)
    tampered[position] ^= 1 << bit
    with pytest.raises(ProofError):
        verify_checkpoint(bytes(tampered), (ORIGIN, KEYPAIR.public))


# --- the C2SP specifications' own examples (no published keys: parse only) -------------------


def test_c2sp_signed_note_example_parses() -> None:
    example = VECTORS["c2sp_signed_note_example"]
    name = example["key_name"]
    with pytest.raises(ProofError, match=rf"expected one by PeterNeumann\+c74f20a3, got {name}\+"):
        open_note(example["note"], [PETER])
    # The text's own empty line stays in the text: the last blank line separates.
    assert example["note"].startswith(example["text"] + "\n\u2014 ")
    assert "\n\n" in example["text"]


def test_c2sp_checkpoint_example_parses() -> None:
    example = VECTORS["c2sp_checkpoint_example"]
    text = example["note"].split("\n\n")[0] + "\n"
    cp = Checkpoint.from_text(text)
    assert cp.origin == example["origin"]
    assert cp.size == example["size"]
    assert base64.b64encode(cp.root).decode() == example["root_base64"]
    assert cp.to_text() == text
    with pytest.raises(ProofError, match=r"got example.com/behind-the-sofa\+"):
        verify_checkpoint(example["note"], VKEY)
