"""Private channel documents: sealing, the pointer a member reads, and its checks."""

from __future__ import annotations

import base64
import hashlib

import pytest

from chainmail import channels, ssb
from chainmail.chandocs import (
    check_document,
    check_notarised,
    open_document,
    pointer_content,
    read_pointer,
    seal_document,
    sealed_size,
)
from chainmail.errors import DecryptionError, InvalidMessage, ProofError
from chainmail.ids import blob_id
from chainmail.keys import Keypair

ANN = Keypair.from_seed(bytes([3]) * 32).id
BEN = Keypair.from_seed(bytes([4]) * 32).id
CHAN = "%" + base64.b64encode(hashlib.sha256(b"a channel").digest()).decode() + ".sha256"
OTHER = "%" + base64.b64encode(hashlib.sha256(b"another").digest()).decode() + ".sha256"
KEY = bytes(range(32))
DATA = b"%PDF-1.7 settlement instruction: 1,000 MEGA against 12,500 USD"


def test_a_sealed_document_opens_only_for_its_key_author_and_channel() -> None:
    sealed = seal_document(KEY, DATA, author=ANN, channel=CHAN)
    assert len(sealed) == sealed_size(len(DATA))
    assert DATA not in sealed
    assert open_document(KEY, sealed, author=ANN, channel=CHAN) == DATA
    wrong = [
        (bytes(32), sealed, ANN, CHAN),  # another key
        (KEY, sealed, BEN, CHAN),  # passed off as another member's
        (KEY, sealed, ANN, OTHER),  # moved to another channel
        (KEY, sealed[:-1], ANN, CHAN),  # truncated
        (KEY, sealed[:30] + bytes([sealed[30] ^ 1]) + sealed[31:], ANN, CHAN),  # altered
        (KEY, sealed[:39], ANN, CHAN),  # shorter than nonce and tag
        (KEY, sealed, "not a feed", CHAN),
    ]
    for key, box, author, channel in wrong:
        with pytest.raises(DecryptionError, match=r"^cannot decrypt$"):
            open_document(key, box, author=author, channel=channel)


def test_a_message_box_and_a_document_cannot_pass_for_each_other() -> None:
    """The same key, author and channel: only the associated data differs."""
    nonce = bytes(24)
    box = channels.seal_message(KEY, {"a": 1}, author=ANN, channel=CHAN, nonce=nonce)
    with pytest.raises(DecryptionError):
        open_document(KEY, base64.b64decode(box), author=ANN, channel=CHAN)
    sealed = seal_document(KEY, b'{"a":1}', author=ANN, channel=CHAN, nonce=nonce)
    with pytest.raises(DecryptionError):
        channels.open_message(KEY, base64.b64encode(sealed).decode(), author=ANN, channel=CHAN)


def test_bad_sealing_input_is_refused() -> None:
    with pytest.raises(InvalidMessage, match="channel key"):
        seal_document(b"short", DATA, author=ANN, channel=CHAN)
    with pytest.raises(InvalidMessage, match="nonce"):
        seal_document(KEY, DATA, author=ANN, channel=CHAN, nonce=b"123")
    with pytest.raises(InvalidMessage, match="box author"):
        seal_document(KEY, DATA, author="ann", channel=CHAN)


def test_the_pointer_reads_back_and_checks_the_plaintext() -> None:
    blob = blob_id(seal_document(KEY, DATA, author=ANN, channel=CHAN))
    inner = pointer_content(DATA, blob=blob, notarised=CHAN, name="dvp.pdf", mime="application/pdf")
    pointer = read_pointer(inner)
    assert pointer is not None
    assert (pointer.blob, pointer.notarised, pointer.size) == (blob, CHAN, len(DATA))
    assert (pointer.name, pointer.mime) == ("dvp.pdf", "application/pdf")
    assert pointer.sha256 == hashlib.sha256(DATA).digest()
    check_document(pointer, DATA)
    with pytest.raises(ProofError, match="bytes, its pointer says"):
        check_document(pointer, DATA + b" ")
    with pytest.raises(ProofError, match="SHA-256 differs"):
        check_document(pointer, DATA.replace(b"1,000", b"9,000"))
    bare = read_pointer(pointer_content(b"", blob=blob, notarised=CHAN))
    assert bare is not None and bare.name is None and bare.mime is None and bare.size == 0


def test_what_is_not_a_pointer_and_what_is_a_broken_one() -> None:
    assert read_pointer({"text": "hello"}) is None
    assert read_pointer({"type": "note"}) is None
    assert read_pointer(["doc"]) is None
    blob = blob_id(b"x")
    good = pointer_content(DATA, blob=blob, notarised=CHAN)
    broken = {
        "blob": "&nope",
        "notarised": blob,
        "size": -1,
        "sha256": base64.b64encode(b"short").decode(),
        "name": 7,
        "mime": ["pdf"],
    }
    for field, value in broken.items():
        with pytest.raises(InvalidMessage, match=f"document pointer: {field}"):
            read_pointer({**good, field: value})
    with pytest.raises(InvalidMessage, match="size"):
        read_pointer({**good, "size": True})
    with pytest.raises(InvalidMessage, match="sha256"):
        read_pointer({k: v for k, v in good.items() if k != "sha256"})
    with pytest.raises(InvalidMessage, match="name"):
        pointer_content(DATA, blob=blob, notarised=CHAN, name=3)  # type: ignore[arg-type]


def _signed(keys: Keypair, content: dict[str, object]) -> ssb.Checked:
    return ssb.check(ssb.create(keys, content, None, 1_800_000_000_000))


def test_the_notarisation_must_be_the_authors_doc_of_that_blob_and_size() -> None:
    ann, ben = Keypair.from_seed(bytes([3]) * 32), Keypair.from_seed(bytes([4]) * 32)
    sealed = seal_document(KEY, DATA, author=ann.id, channel=CHAN)
    blob = blob_id(sealed)
    doc = _signed(ann, {"type": "doc", "blob": blob, "size": len(sealed)})
    pointer = read_pointer(pointer_content(DATA, blob=blob, notarised=doc.id))
    assert pointer is not None
    check_notarised(pointer, ann.id, doc)
    with pytest.raises(ProofError, match="is answered by another message"):
        check_notarised(pointer, ann.id, _signed(ann, {"type": "doc", "blob": blob, "size": 1}))
    bens = _signed(ben, {"type": "doc", "blob": blob, "size": len(sealed)})
    borrowed = read_pointer(pointer_content(DATA, blob=blob, notarised=bens.id))
    assert borrowed is not None
    with pytest.raises(ProofError, match="not the announcing member's"):
        check_notarised(borrowed, ann.id, bens)
    for content, said in (
        ({"type": "note", "blob": blob, "size": len(sealed)}, "is not a doc message"),
        ({"type": "doc", "blob": blob_id(b"other"), "size": len(sealed)}, "names another blob"),
        ({"type": "doc", "blob": blob, "size": len(DATA)}, "gives size"),
    ):
        wrong = _signed(ann, content)
        bent = read_pointer(pointer_content(DATA, blob=blob, notarised=wrong.id))
        assert bent is not None
        with pytest.raises(ProofError, match=said):
            check_notarised(bent, ann.id, wrong)
