"""Channels: encrypted sub-threads whose key is sealed to each member (DESIGN §3).

Another implementation has to produce and open exactly these bytes, so every
one is spelled out here; ``tests/vectors/channels/`` holds fixed examples.

Channel key
    32 random bytes, one per ``chan/open``.

Sealed key (``keys`` of ``chan/open`` and ``chan/share``)
    Standard base64 (padded) of libsodium ``crypto_box_seal(key, pk)``, where
    ``pk`` = ``crypto_sign_ed25519_pk_to_curve25519`` of the member's ed25519
    key (the 32 bytes inside its ``@….ed25519`` id). 80 bytes:
    ``epk (32) ‖ crypto_box_easy(key, nonce, pk, esk) (16 MAC ‖ 32)`` with a
    fresh ephemeral curve25519 pair ``(epk, esk)`` and
    ``nonce = BLAKE2b-192(epk ‖ pk)`` (unkeyed). The member opens it with
    ``crypto_box_seal_open`` and its own curve keys
    (``crypto_sign_ed25519_sk_to_curve25519``). Sealing draws its randomness
    inside libsodium, so it cannot be injected; the vectors fix ``esk``
    instead.

Box (``box`` of ``chan/msg``)
    Standard base64 (padded, canonical) of ``nonce (24) ‖ c``, where
    ``c = crypto_aead_xchacha20poly1305_ietf_encrypt(m, ad, nonce, key)`` is
    the ciphertext (``len(m)`` bytes) followed by the 16-byte Poly1305 tag.

    - ``m`` is the UTF-8 of the inner content as compact
      ``JSON.stringify(inner)`` (no spaces; ``ssb.stringify(inner, indent=0)``).
      The inner content is any JSON object; it need not have a ``type``.
    - ``ad`` is the UTF-8 of the author's feed id immediately followed by the
      channel id, no separator: ``"@….ed25519%….sha256"``, 53 + 52 = 105
      ASCII bytes. The author is the feed posting the ``chan/msg``; the
      channel is the message id of the ``chan/open``. Both have fixed
      lengths, so the concatenation is unambiguous.
    - ``nonce`` is 24 random bytes per box (XChaCha20's nonce is long enough
      for random nonces under one key).

    Opening decodes strict canonical base64, splits off the nonce, decrypts,
    and parses the plaintext as ``ssb.parse`` does (UTF-8, a JSON object, no
    duplicate keys, no lone surrogates, integers within ±(2^53−1)). The
    plaintext is never re-serialised, so a peer whose JSON writer differs
    still interoperates, but it should write ``JSON.stringify`` form.

Errors
    As pyca/cryptography's Fernet does, every failure to open, whatever its
    cause (wrong key, wrong author or channel, truncated or altered box, bad
    base64, a plaintext that is not a JSON object), raises the same
    ``DecryptionError("cannot decrypt")`` with no chained cause, so neither
    the message nor a traceback tells an attacker which check failed.
    Malformed input to the *sealing* side is a caller's mistake and raises
    ``InvalidMessage`` with a reason.

Pure: no I/O, no clock. Randomness comes from libsodium unless a ``key`` or
``nonce`` is passed in.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import nacl.bindings
import nacl.exceptions
import nacl.utils

from chainmail import content as _content
from chainmail import ssb
from chainmail.errors import DecryptionError, InvalidMessage, Rejected
from chainmail.ids import FeedId, MsgId, is_feed_id, is_msg_id
from chainmail.keys import Keypair, curve_public_of

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "SEALED_KEY_BYTES",
    "TAG_BYTES",
    "Opened",
    "associated_data",
    "channel_key",
    "msg_content",
    "new_key",
    "open_content",
    "open_key",
    "open_message",
    "read_history",
    "seal_key",
    "seal_message",
    "share_content",
]

#: A channel key: XChaCha20-Poly1305-IETF key length.
KEY_BYTES: Final = 32
#: The random nonce at the start of every box.
NONCE_BYTES: Final = 24
#: The Poly1305 tag at the end of every box.
TAG_BYTES: Final = 16
#: ``crypto_box_seal`` of a channel key: ephemeral public key 32, MAC 16, key 32.
SEALED_KEY_BYTES: Final = 32 + 16 + KEY_BYTES

#: The one detail every decryption failure carries.
_OPAQUE: Final = "cannot decrypt"
_CHANNEL_TYPES: Final = frozenset({"chan/open", "chan/msg", "chan/share"})


@dataclass(frozen=True, slots=True)
class Opened:
    """One decrypted ``chan/msg``: its message id, author, channel and inner content."""

    id: MsgId
    author: FeedId
    channel: MsgId
    data: dict[str, Any] = field(repr=False)


def _opaque() -> DecryptionError:
    return DecryptionError(_OPAQUE)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _strict_b64(text: object) -> bytes | None:
    """Canonical padded base64 (as ``content`` requires), or None."""
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if _b64(raw) == text else None


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise InvalidMessage(f"channel key: expected {KEY_BYTES} bytes")
    return key


def new_key() -> bytes:
    """A fresh random channel key (32 bytes from libsodium's CSPRNG). Raises nothing."""
    return bytes(nacl.utils.random(KEY_BYTES))


# -- sealed keys -----------------------------------------------------------------


def seal_key(key: bytes, member: str) -> str:
    """The channel ``key`` sealed to ``member``'s feed id, as base64 of 80 bytes.

    Randomised: sealing the same key twice gives different text, both of
    which open. Raises ``InvalidMessage`` when ``key`` is not 32 bytes or
    ``member`` is not a feed id whose key converts to curve25519.
    """
    _check_key(key)
    public = curve_public_of(member)
    try:
        sealed = nacl.bindings.crypto_box_seal(key, public)
    except nacl.exceptions.CryptoError as exc:  # a low-order curve point
        raise InvalidMessage(f"cannot seal a channel key to {member}") from exc
    return _b64(bytes(sealed))


def open_key(sealed: str, keypair: Keypair) -> bytes:
    """The 32-byte channel key in ``sealed`` (from ``seal_key``), opened with ``keypair``.

    Raises ``DecryptionError("cannot decrypt")`` for every failure: not
    canonical base64, not 80 bytes, sealed to someone else, or altered.
    """
    raw = _strict_b64(sealed)
    if raw is None or len(raw) != SEALED_KEY_BYTES:
        raise _opaque()
    try:
        key = nacl.bindings.crypto_box_seal_open(
            raw, keypair.curve_public(), keypair.curve_secret()
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise _opaque() from None
    return bytes(key)


# -- boxes -----------------------------------------------------------------------


def associated_data(author: str, channel: str) -> bytes:
    """The AEAD associated data of a box: UTF-8 of ``author`` immediately followed by ``channel``.

    Raises ``InvalidMessage`` when ``author`` is not a feed id or ``channel``
    not a message id.
    """
    if not is_feed_id(author):
        raise InvalidMessage(f"box author: expected a feed id @….ed25519, got {author!r}")
    if not is_msg_id(channel):
        raise InvalidMessage(f"box channel: expected a message id %….sha256, got {channel!r}")
    return (author + channel).encode("utf-8")


def seal_message(
    key: bytes,
    inner: dict[str, Any],
    *,
    author: str,
    channel: str,
    nonce: bytes | None = None,
) -> str:
    """The ``box`` of a ``chan/msg``: base64(nonce ‖ XChaCha20-Poly1305 of compact JSON).

    ``nonce`` is for tests and vectors only; by default 24 random bytes.
    Raises ``InvalidMessage`` when ``key`` is not 32 bytes, ``nonce`` not 24,
    ``author``/``channel`` not a feed/message id, or ``inner`` not a JSON
    object with an exact JSON form (see ``ssb.stringify``) that ``ssb.parse``
    reads back.
    """
    _check_key(key)
    if nonce is None:
        nonce = bytes(nacl.utils.random(NONCE_BYTES))
    elif not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise InvalidMessage(f"box nonce: expected {NONCE_BYTES} bytes")
    if not isinstance(inner, dict):
        raise InvalidMessage(f"inner content: expected a JSON object, got {type(inner).__name__}")
    ad = associated_data(author, channel)
    plaintext = ssb.stringify(inner, indent=0).encode("utf-8")
    # Whatever open_message would refuse (it parses with ssb.parse) is refused
    # here, with its reason, rather than sent as a box nobody can read.
    ssb.parse(plaintext)
    ciphertext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)
    return _b64(nonce + bytes(ciphertext))


def open_message(key: bytes, box: str, *, author: str, channel: str) -> dict[str, Any]:
    """The inner content of ``box``, posted by ``author`` in ``channel``.

    Raises ``DecryptionError("cannot decrypt")`` and nothing else, whatever
    went wrong: wrong key, another author or channel than the box was sealed
    for, a truncated or altered box, text that is not canonical base64, or a
    plaintext that is not a JSON object (see the module docstring).
    """
    raw = _strict_b64(box)
    if (
        raw is None
        or len(raw) < NONCE_BYTES + TAG_BYTES
        or not isinstance(key, bytes)
        or len(key) != KEY_BYTES
        or not is_feed_id(author)
        or not is_msg_id(channel)
    ):
        raise _opaque()
    try:
        plaintext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            raw[NONCE_BYTES:], (author + channel).encode("utf-8"), raw[:NONCE_BYTES], key
        )
        return ssb.parse(bytes(plaintext))
    except (nacl.exceptions.CryptoError, InvalidMessage, ValueError, TypeError):
        # ``from None``: a chained cause would name the failing check.
        raise _opaque() from None


# -- content ---------------------------------------------------------------------


def _optional_tx(content: dict[str, Any], tx: str | None) -> None:
    if tx is not None:
        if not is_msg_id(tx):
            raise InvalidMessage(f"tx: expected a message id %….sha256, got {tx!r}")
        content["tx"] = tx


def open_content(
    members: Sequence[str],
    *,
    author_keys: Keypair,
    tx: str | None = None,
    label: str | None = None,
    key: bytes | None = None,
) -> tuple[dict[str, Any], bytes]:
    """A ``chan/open`` content and its channel key: the key sealed to every member.

    ``members`` are feed ids; the author (``author_keys.id``) is added first
    when missing, since ``chan/open`` must seal the key to its author too.
    Duplicates are sealed once. ``key`` is for tests only; by default a new
    random key. Sign the content with ``author_keys``; its message id is the
    channel id.

    Raises ``InvalidMessage`` for a malformed member, ``tx`` or ``key``, or a
    ``label`` that is not a string.
    """
    key = new_key() if key is None else _check_key(key)
    ordered = list(dict.fromkeys(members))
    if author_keys.id not in ordered:
        ordered.insert(0, author_keys.id)
    result: dict[str, Any] = {
        "type": "chan/open",
        "keys": {member: seal_key(key, member) for member in ordered},
    }
    _optional_tx(result, tx)
    if label is not None:
        if not isinstance(label, str):
            raise InvalidMessage(f"label: expected a string, got {type(label).__name__}")
        result["label"] = label
    return result, key


def msg_content(
    key: bytes, inner: dict[str, Any], *, author: str, channel: str, tx: str | None = None
) -> dict[str, Any]:
    """A ``chan/msg`` content: ``inner`` boxed for ``author`` posting in ``channel``.

    Raises ``InvalidMessage`` as ``seal_message`` does, and for a malformed ``tx``.
    The signed message may still be too large (``ssb.create`` raises
    ``too_large``): the box is about 4/3 of the compact JSON plus 54 characters.
    """
    if not is_msg_id(channel):
        raise InvalidMessage(f"chan: expected a message id %….sha256, got {channel!r}")
    result: dict[str, Any] = {
        "type": "chan/msg",
        "chan": channel,
        "box": seal_message(key, inner, author=author, channel=channel),
    }
    _optional_tx(result, tx)
    return result


def share_content(
    key: bytes, channel: str, readers: Sequence[str], *, tx: str | None = None
) -> dict[str, Any]:
    """A ``chan/share`` content granting ``readers`` the key of ``channel``.

    The author must hold the key (be a member, or have been shared to) for
    ``read_history`` to trust it. Raises ``InvalidMessage`` when ``readers``
    is empty or holds a malformed feed id, or ``key``, ``channel`` or ``tx``
    is malformed.
    """
    _check_key(key)
    if not is_msg_id(channel):
        raise InvalidMessage(f"chan: expected a message id %….sha256, got {channel!r}")
    ordered = list(dict.fromkeys(readers))
    if not ordered:
        raise InvalidMessage("chan/share: expected at least one reader")
    result: dict[str, Any] = {
        "type": "chan/share",
        "chan": channel,
        "keys": {reader: seal_key(key, reader) for reader in ordered},
    }
    _optional_tx(result, tx)
    return result


# -- reading ---------------------------------------------------------------------


@dataclass
class _Channel:
    """What a reader knows of one channel: who holds its key, the keys it opened, its tx."""

    holders: set[str]
    keys: list[bytes] = field(default_factory=list)
    tx: str | None = None


def _check_hmac_key(hmac_key: bytes | str | None) -> None:
    # ssb.check would refuse each message under a malformed key, and the
    # reader would see an empty channel instead of the mistake.
    if hmac_key is None:
        return
    raw = hmac_key if isinstance(hmac_key, bytes) else _strict_b64(hmac_key)
    if raw is None or len(raw) != ssb.HMAC_KEY_BYTES:
        raise InvalidMessage(
            f"HMAC key: expected {ssb.HMAC_KEY_BYTES} bytes or their canonical base64",
            code="invalid_signature",
        )


def _verified(messages: Iterable[object], hmac_key: bytes | str | None) -> list[ssb.Checked]:
    """Each distinct message whose signature verifies and whose chan/* content passes policy."""
    kept: dict[str, ssb.Checked] = {}
    for msg in messages:
        try:
            checked = ssb.check(msg, hmac_key)  # type: ignore[arg-type]
            kind = _kind(checked)
            if kind in _CHANNEL_TYPES:
                _content.check_policy(msg)  # type: ignore[arg-type]
        except (InvalidMessage, Rejected):
            continue
        kept.setdefault(checked.id, checked)
    return list(kept.values())


def _kind(checked: ssb.Checked) -> object:
    return checked.content.get("type") if isinstance(checked.content, dict) else None


def _body(checked: ssb.Checked) -> dict[str, Any]:
    """The content of a message ``_kind`` already named, so an object."""
    return cast("dict[str, Any]", checked.content)


def _channels(history: list[ssb.Checked], keypair: Keypair) -> dict[str, _Channel]:
    """Every channel opened in ``history``: who holds its key, and the keys ``keypair`` opens."""
    channels: dict[str, _Channel] = {}
    grants: list[tuple[str, dict[str, Any]]] = []  # (channel id, keys) of counted messages
    shares: list[ssb.Checked] = []
    for checked in history:
        kind = _kind(checked)
        if kind == "chan/open":
            body = _body(checked)
            tx = body.get("tx")
            channels[checked.id] = _Channel(
                holders=set(body["keys"]), tx=tx if isinstance(tx, str) else None
            )
            grants.append((checked.id, body["keys"]))
        elif kind == "chan/share":
            shares.append(checked)
    # A share counts only when its author holds the channel's key by the
    # channel's own record; otherwise anyone could hand a reader a key of
    # their own and pass their messages off as the channel's. Readers may
    # share on, and a merged log may list a share before the grant it relies
    # on: hence the fixpoint.
    progress = True
    while progress:
        progress = False
        waiting: list[ssb.Checked] = []
        for checked in shares:
            body = _body(checked)
            channel = channels.get(body["chan"])
            if channel is None:
                continue  # never saw it opened: no record to check the author against
            if checked.author in channel.holders:
                channel.holders.update(body["keys"])
                grants.append((body["chan"], body["keys"]))
                progress = True
            else:
                waiting.append(checked)
        shares = waiting
    for channel_id, keys in grants:
        sealed = keys.get(keypair.id)
        if sealed is None:
            continue
        try:
            key = open_key(sealed, keypair)
        except DecryptionError:
            continue
        if key not in channels[channel_id].keys:
            channels[channel_id].keys.append(key)
    return channels


def read_history(
    messages: Iterable[dict[str, Any]],
    keypair: Keypair,
    *,
    channel: str | None = None,
    hmac_key: bytes | str | None = None,
) -> Iterator[Opened]:
    """Decrypt every ``chan/msg`` in ``messages`` that ``keypair`` can read, in their order.

    ``messages`` are signed messages in log order. The whole history is read
    before anything is yielded, because a ``chan/share`` usually comes after
    the messages it opens; so any order works, and the output follows it.
    ``channel`` keeps only that channel's messages; ``hmac_key`` is the
    network key the messages were signed under, if any.

    Rules:

    1. A message counts only when ``ssb.check`` accepts it (shape and
       signature: the author a box is opened for is the signer, not a claim)
       and, for ``chan/*`` types, ``content.check_policy`` does. A message
       seen twice counts once. Others are skipped.
    2. Each ``chan/open`` defines a channel (its message id) and, by its
       ``keys``, who holds the key. A ``chan/share`` counts only when that
       ``chan/open`` is in ``messages`` and the share's author holds the key
       (a member, or a reader of another counted share).
    3. Keys sealed to ``keypair.id`` in counted ``chan/open``/``chan/share``
       messages are opened; one that does not open is ignored.
    4. Each ``chan/msg`` of a channel with a key is opened with each key in
       turn. One that opens with none (corrupt, or boxed for another author
       or channel) is **skipped**, as are messages of channels without a
       key: the result holds only what verified and decrypted.

    Raises nothing for bad messages (they are skipped); ``InvalidMessage``
    (``invalid_signature``) for a malformed ``hmac_key``, when the iterator
    is first advanced.
    """
    _check_hmac_key(hmac_key)
    history = _verified(messages, hmac_key)
    channels = _channels(history, keypair)
    for checked in history:
        if _kind(checked) != "chan/msg":
            continue
        body = _body(checked)
        channel_id = MsgId(body["chan"])
        found = channels.get(channel_id)
        if found is None or (channel is not None and channel_id != channel):
            continue
        for key in found.keys:
            try:
                data = open_message(key, body["box"], author=checked.author, channel=channel_id)
            except DecryptionError:
                continue
            yield Opened(id=checked.id, author=checked.author, channel=channel_id, data=data)
            break


def channel_key(
    messages: Iterable[dict[str, Any]],
    keypair: Keypair,
    *,
    channel: str,
    hmac_key: bytes | str | None = None,
) -> tuple[bytes, MsgId | None] | None:
    """The key of ``channel`` that ``keypair`` holds, and the tx its ``chan/open`` names.

    By ``read_history``'s rules 1-3, so only a key sealed to ``keypair.id`` in
    the channel's own signed ``chan/open``, or in a counted ``chan/share``,
    is taken: a key in any other message the history holds (one the node or
    an outsider put there) is never used to box a message. The ``chan/open``'s
    key comes first when there are several. None when there is no such key.

    Raises ``InvalidMessage`` (``invalid_signature``) for a malformed
    ``hmac_key``; nothing for bad messages (they are skipped).
    """
    _check_hmac_key(hmac_key)
    found = _channels(_verified(messages, hmac_key), keypair).get(channel)
    if found is None or not found.keys:
        return None
    return found.keys[0], None if found.tx is None else MsgId(found.tx)
