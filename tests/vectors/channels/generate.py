"""Generate and cross-check the channel vectors (box.json, sealed_key.json).

    python tests/vectors/channels/generate.py          # check the stored files
    python tests/vectors/channels/generate.py --write  # rewrite them

Every input is fixed below, so the output is deterministic; the sealed key
fixes the ephemeral secret that ``crypto_box_seal`` would draw at random.

The values are produced with chainmail (libsodium through PyNaCl) and then
recomputed by a second implementation that shares no code with libsodium:
HChaCha20, HSalsa20 and XSalsa20 written out below from their specifications,
ChaCha20-Poly1305 (RFC 8439), X25519 and Poly1305 from pyca/cryptography
(OpenSSL), BLAKE2b from ``hashlib``, and the ed25519 → curve25519 conversion
computed by hand (u = (1 + y) / (1 − y) mod 2^255 − 19; secret = the clamped
first half of SHA-512(seed)). Both must agree byte for byte, or nothing is
written.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any

import nacl.bindings
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.poly1305 import Poly1305

from chainmail import channels, ssb
from chainmail.ids import msg_id_from_digest
from chainmail.keys import Keypair

HERE = Path(__file__).resolve().parent

# RFC 8032 §7.1 TEST 1 and TEST 2 secret keys: well-known ed25519 identities.
RECIPIENT_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
AUTHOR_SEED = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
KEY = bytes(range(0x00, 0x20))
NONCE = bytes(range(0x40, 0x58))
EPHEMERAL_SECRET = bytes(range(0x60, 0x80))
CHANNEL = msg_id_from_digest(hashlib.sha256(b"chainmail channel vector").digest())
OTHER_CHANNEL = msg_id_from_digest(hashlib.sha256(b"another channel").digest())
OTHER_AUTHOR = Keypair.from_seed(RECIPIENT_SEED).id

INNERS: list[tuple[str, dict[str, Any]]] = [
    ("ascii", {"side": "buy", "isin": "US0378331005", "qty": 1000, "price": "189.25"}),
    (
        "json.stringify quirks",
        {
            "note": 'Zürich € 1 000 — "quoted"\n\t\u0001',
            "numbers": [0, -1, 1.5, 1e21, 1e-7, 123456789012345],
            "nested": {"ok": True, "none": None, "empty": [], "obj": {}},
            # JSON.stringify writes array-index keys first, in numeric order.
            "10": "ten",
            "2": "two",
        },
    ),
    ("empty object", {}),
]


# -- a second implementation ------------------------------------------------------

MASK = 0xFFFFFFFF


def _rotl(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & MASK


def _chacha_rounds(state: list[int]) -> list[int]:
    x = list(state)

    def quarter(a: int, b: int, c: int, d: int) -> None:
        x[a] = (x[a] + x[b]) & MASK
        x[d] = _rotl(x[d] ^ x[a], 16)
        x[c] = (x[c] + x[d]) & MASK
        x[b] = _rotl(x[b] ^ x[c], 12)
        x[a] = (x[a] + x[b]) & MASK
        x[d] = _rotl(x[d] ^ x[a], 8)
        x[c] = (x[c] + x[d]) & MASK
        x[b] = _rotl(x[b] ^ x[c], 7)

    for _ in range(10):
        quarter(0, 4, 8, 12)
        quarter(1, 5, 9, 13)
        quarter(2, 6, 10, 14)
        quarter(3, 7, 11, 15)
        quarter(0, 5, 10, 15)
        quarter(1, 6, 11, 12)
        quarter(2, 7, 8, 13)
        quarter(3, 4, 9, 14)
    return x


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """draft-irtf-cfrg-xchacha §2.2: ChaCha20 rounds, no final addition, words 0-3 and 12-15."""
    state = [*struct.unpack("<4I", b"expand 32-byte k"), *struct.unpack("<8I", key)]
    state += struct.unpack("<4I", nonce16)
    x = _chacha_rounds(state)
    return struct.pack("<8I", *(x[0:4] + x[12:16]))


def xchacha20poly1305_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """draft-irtf-cfrg-xchacha §2.3: HChaCha20 subkey, then RFC 8439 AEAD with 0⁴ ‖ nonce[16:]."""
    subkey = hchacha20(key, nonce[:16])
    return ChaCha20Poly1305(subkey).encrypt(b"\0" * 4 + nonce[16:], plaintext, ad)


def _salsa_rounds(state: list[int]) -> list[int]:
    x = list(state)

    def quarter(a: int, b: int, c: int, d: int) -> None:
        x[b] ^= _rotl((x[a] + x[d]) & MASK, 7)
        x[c] ^= _rotl((x[b] + x[a]) & MASK, 9)
        x[d] ^= _rotl((x[c] + x[b]) & MASK, 13)
        x[a] ^= _rotl((x[d] + x[c]) & MASK, 18)

    for _ in range(10):
        quarter(0, 4, 8, 12)
        quarter(5, 9, 13, 1)
        quarter(10, 14, 2, 6)
        quarter(15, 3, 7, 11)
        quarter(0, 1, 2, 3)
        quarter(5, 6, 7, 4)
        quarter(10, 11, 8, 9)
        quarter(15, 12, 13, 14)
    return x


def _salsa_state(key: bytes, sixteen: bytes) -> list[int]:
    c = struct.unpack("<4I", b"expand 32-byte k")
    k = struct.unpack("<8I", key)
    n = struct.unpack("<4I", sixteen)
    return [c[0], *k[0:4], c[1], *n, c[2], *k[4:8], c[3]]


def hsalsa20(key: bytes, nonce16: bytes) -> bytes:
    """Bernstein, "Extending the Salsa20 nonce": words 0, 5, 10, 15, 6, 7, 8, 9."""
    x = _salsa_rounds(_salsa_state(key, nonce16))
    return struct.pack("<8I", *(x[i] for i in (0, 5, 10, 15, 6, 7, 8, 9)))


def xsalsa20_stream(key: bytes, nonce: bytes, length: int) -> bytes:
    subkey = hsalsa20(key, nonce[:16])
    out = b""
    counter = 0
    while len(out) < length:
        state = _salsa_state(subkey, nonce[16:24] + struct.pack("<Q", counter))
        x = _salsa_rounds(state)
        out += struct.pack("<16I", *((a + b) & MASK for a, b in zip(x, state, strict=True)))
        counter += 1
    return out[:length]


def crypto_box_easy(message: bytes, nonce: bytes, public: bytes, secret: bytes) -> bytes:
    """NaCl crypto_box: X25519, HSalsa20 of the shared point, XSalsa20-Poly1305; MAC ‖ c."""
    shared = X25519PrivateKey.from_private_bytes(secret).exchange(
        X25519PublicKey.from_public_bytes(public)
    )
    key = hsalsa20(shared, b"\0" * 16)
    stream = xsalsa20_stream(key, nonce, 32 + len(message))
    ciphertext = bytes(m ^ s for m, s in zip(message, stream[32:], strict=True))
    return Poly1305.generate_tag(stream[:32], ciphertext) + ciphertext


P = 2**255 - 19


def ed25519_public_to_curve(public: bytes) -> bytes:
    y = int.from_bytes(public, "little") & ((1 << 255) - 1)
    u = (1 + y) * pow(1 - y, P - 2, P) % P
    return u.to_bytes(32, "little")


def ed25519_seed_to_curve(seed: bytes) -> bytes:
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return bytes(h)


def seal(message: bytes, public: bytes, ephemeral_secret: bytes) -> tuple[bytes, bytes, bytes]:
    """libsodium crypto_box_seal with a given ephemeral secret: (sealed, epk, nonce)."""
    epk = X25519PrivateKey.from_private_bytes(ephemeral_secret).public_key().public_bytes_raw()
    nonce = hashlib.blake2b(epk + public, digest_size=24).digest()
    return epk + crypto_box_easy(message, nonce, public, ephemeral_secret), epk, nonce


def unseal(sealed: bytes, public: bytes, secret: bytes) -> bytes:
    """libsodium crypto_box_seal_open, by hand; raises AssertionError when the MAC fails."""
    epk, mac, ciphertext = sealed[:32], sealed[32:48], sealed[48:]
    nonce = hashlib.blake2b(epk + public, digest_size=24).digest()
    shared = X25519PrivateKey.from_private_bytes(secret).exchange(
        X25519PublicKey.from_public_bytes(epk)
    )
    stream = xsalsa20_stream(hsalsa20(shared, b"\0" * 16), nonce, 32 + len(ciphertext))
    Poly1305.verify_tag(stream[:32], ciphertext, mac)
    return bytes(c ^ s for c, s in zip(ciphertext, stream[32:], strict=True))


# -- the vectors ------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def box_vectors() -> dict[str, Any]:
    author = Keypair.from_seed(AUTHOR_SEED)
    ad = (author.id + CHANNEL).encode("utf-8")
    vectors: list[dict[str, Any]] = []
    for name, inner in INNERS:
        plaintext = ssb.stringify(inner, indent=0)
        box = channels.seal_message(KEY, inner, author=author.id, channel=CHANNEL, nonce=NONCE)
        raw = base64.b64decode(box)
        independent = xchacha20poly1305_encrypt(KEY, NONCE, plaintext.encode("utf-8"), ad)
        assert raw == NONCE + independent, f"{name}: libsodium and the second implementation differ"
        vectors.append(
            {
                "name": name,
                "inner": inner,
                "plaintext": plaintext,
                "ciphertext_hex": independent.hex(),
                "box": box,
            }
        )

    good: str = vectors[0]["box"]
    raw = base64.b64decode(good)

    def flipped(index: int) -> str:
        data = bytearray(raw)
        data[index] ^= 0x01
        return b64(bytes(data))

    def boxed(plaintext: bytes) -> str:
        return b64(NONCE + xchacha20poly1305_encrypt(KEY, NONCE, plaintext, ad))

    must_fail: list[dict[str, str]] = [
        {"why": "another author in the associated data", "box": good, "author": OTHER_AUTHOR},
        {"why": "another channel in the associated data", "box": good, "channel": OTHER_CHANNEL},
        {"why": "another key", "box": good, "key_hex": bytes(32).hex()},
        {"why": "last byte dropped (truncated tag)", "box": b64(raw[:-1])},
        {"why": "nonce and tag only, ciphertext dropped", "box": b64(raw[:24] + raw[-16:])},
        {"why": "shorter than nonce and tag", "box": b64(raw[:39])},
        {"why": "first nonce bit flipped", "box": flipped(0)},
        {"why": "first ciphertext bit flipped", "box": flipped(24)},
        {"why": "last tag bit flipped", "box": flipped(len(raw) - 1)},
        {"why": "not base64", "box": "not base64!"},
        {"why": "base64 without padding", "box": good.rstrip("=")},
        {"why": "authentic, plaintext not JSON", "box": boxed(b"not json")},
        {"why": "authentic, plaintext a JSON array", "box": boxed(b"[1,2]")},
        {"why": "authentic, duplicate key", "box": boxed(b'{"a":1,"a":2}')},
        {"why": "authentic, plaintext not UTF-8", "box": boxed(b'{"a":"\xff"}')},
    ]
    for case in must_fail:
        case.setdefault("key_hex", KEY.hex())
        case.setdefault("author", author.id)
        case.setdefault("channel", CHANNEL)
    return {
        "about": (
            "chan/msg box = base64(nonce(24) || XChaCha20-Poly1305-IETF(key, nonce, "
            "plaintext = UTF-8 of compact JSON.stringify(inner), "
            "ad = UTF-8 of author id || channel id)). See tests/vectors/README.md."
        ),
        "key_hex": KEY.hex(),
        "nonce_hex": NONCE.hex(),
        "author_seed_hex": AUTHOR_SEED.hex(),
        "author": author.id,
        "channel": CHANNEL,
        "ad": ad.decode("ascii"),
        "vectors": vectors,
        "must_fail": must_fail,
    }


def sealed_key_vector() -> dict[str, Any]:
    recipient = Keypair.from_seed(RECIPIENT_SEED)
    curve_public = recipient.curve_public()
    curve_secret = recipient.curve_secret()
    assert curve_public == ed25519_public_to_curve(recipient.public)
    assert curve_secret == ed25519_seed_to_curve(RECIPIENT_SEED)
    sealed, epk, nonce = seal(KEY, curve_public, EPHEMERAL_SECRET)
    assert len(sealed) == channels.SEALED_KEY_BYTES
    opened = nacl.bindings.crypto_box_seal_open(sealed, curve_public, curve_secret)
    assert opened == KEY, "libsodium does not open the second implementation's seal"
    assert channels.open_key(b64(sealed), recipient) == KEY
    # And the other way round: chainmail's (libsodium's, randomised) seal opens by hand.
    assert (
        unseal(base64.b64decode(channels.seal_key(KEY, recipient.id)), curve_public, curve_secret)
        == KEY
    )
    return {
        "about": (
            "chan/open and chan/share keys value = base64(crypto_box_seal(key, "
            "curve25519 of the member's ed25519 key)) = base64(epk || MAC(16) || c(32)), "
            "nonce = BLAKE2b-192(epk || curve_public). See tests/vectors/README.md."
        ),
        "recipient_seed_hex": RECIPIENT_SEED.hex(),
        "recipient": recipient.id,
        "recipient_curve_public_hex": curve_public.hex(),
        "recipient_curve_secret_hex": curve_secret.hex(),
        "key_hex": KEY.hex(),
        "ephemeral_secret_hex": EPHEMERAL_SECRET.hex(),
        "ephemeral_public_hex": epk.hex(),
        "nonce_hex": nonce.hex(),
        "sealed": b64(sealed),
    }


def render(value: dict[str, Any]) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    files = {"box.json": box_vectors(), "sealed_key.json": sealed_key_vector()}
    stale = []
    for name, value in files.items():
        path = HERE / name
        text = render(value)
        if "--write" in argv:
            path.write_text(text, encoding="utf-8")
        elif not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    if stale:
        print("out of date:", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
