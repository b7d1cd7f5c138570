"""chainmail.httpsig: the RFC 9421 vector, the inbox profile, every refusal, httpx."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainmail.errors import RateLimited, Unauthorized
from chainmail.httpsig import (
    HttpSigAuth,
    NonceCache,
    _Parser,
    _serialize_signature_params,
    client_source,
    content_digest,
    sign_request,
    signature_base,
    verify_request,
)
from chainmail.keys import Keypair, verify_signature

VECTOR = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "rfc9421_ed25519.json").read_text()
)

KEYS = Keypair.from_seed(bytes(range(32)))
OTHER = Keypair.from_seed(bytes(range(1, 33)))
NOW = 1_700_000_000
NONCE = "n0nce-0123456789"


def _pem_body(pem: str) -> bytes:
    lines = [line for line in pem.strip().splitlines() if not line.startswith("-----")]
    return base64.b64decode("".join(lines))


def _verify(
    headers: Mapping[str, str],
    *,
    method: str = "GET",
    path: str = "/v1/inbox",
    query: str = "limit=10",
    now: int = NOW,
    nonces: NonceCache | None = None,
) -> str:
    if nonces is None:
        nonces = NonceCache()
    return verify_request(method, path, query, headers, now=now, nonces=nonces)


def _signed(
    *,
    method: str = "GET",
    path: str = "/v1/inbox",
    query: str = "limit=10",
    created: int = NOW,
    nonce: str = NONCE,
    keys: Keypair = KEYS,
) -> dict[str, str]:
    return sign_request(keys, method, path, query, created=created, nonce=nonce)


# --- RFC 9421 Appendix B.2.6 ----------------------------------------------------------


def test_rfc9421_key_is_the_b14_test_key() -> None:
    pkcs8 = _pem_body(VECTOR["key"]["private_key_pkcs8_pem"])
    spki = _pem_body(VECTOR["key"]["public_key_spki_pem"])
    # The fixed DER prefixes of an Ed25519 PKCS#8 private key and SPKI public key (RFC 8410).
    assert pkcs8[:16] == bytes.fromhex("302e020100300506032b657004220420")
    assert spki[:12] == bytes.fromhex("302a300506032b6570032100")
    assert Keypair.from_seed(pkcs8[16:]).public == spki[12:]


def test_rfc9421_b26_signature_base_is_rebuilt_byte_for_byte() -> None:
    components = [(name, value) for name, value in VECTOR["covered_components"]]
    params = [(name, value) for name, value in VECTOR["signature_params"]]
    assert signature_base(components, params) == VECTOR["signature_base"].encode("ascii")


def test_rfc9421_b26_signature_verifies_and_is_reproduced() -> None:
    base = VECTOR["signature_base"].encode("ascii")
    signature = base64.b64decode(VECTOR["signature"].split("=", 1)[1].strip(":"))
    public = _pem_body(VECTOR["key"]["public_key_spki_pem"])[12:]
    assert verify_signature(public, base, signature)
    assert not verify_signature(public, base + b" ", signature)
    # ed25519 is deterministic: the RFC's private key gives the RFC's bytes.
    keys = Keypair.from_seed(_pem_body(VECTOR["key"]["private_key_pkcs8_pem"])[16:])
    assert keys.sign(base) == signature


def test_rfc9421_b26_headers_parse_and_reserialize_to_the_signature_params_line() -> None:
    inputs = _Parser(VECTOR["signature_input"]).dictionary()
    member = inputs["sig-b26"]
    names = [item.value for item in member.items]  # type: ignore[union-attr]
    params = list(member.params.items())
    line = VECTOR["signature_base"].splitlines()[-1]
    assert line == '"@signature-params": ' + _serialize_signature_params(names, params)  # type: ignore[arg-type]
    signatures = _Parser(VECTOR["signature"]).dictionary()
    assert len(signatures["sig-b26"].value) == 64  # type: ignore[union-attr, arg-type]


def test_rfc9421_b26_headers_are_parsed_but_are_not_chainmails_profile() -> None:
    headers = {"Signature-Input": VECTOR["signature_input"], "Signature": VECTOR["signature"]}
    with pytest.raises(Unauthorized, match=r'covered components must be \("@method" "@path"'):
        _verify(headers, method="POST", path="/foo", query="param=Value&Pet=dog")


# --- The profile ----------------------------------------------------------------------


def test_signed_headers_and_signature_base_are_exactly_the_profile() -> None:
    headers = _signed()
    assert headers["Signature-Input"] == (
        f'sig1=("@method" "@path" "@query");created={NOW};keyid="{KEYS.id}"'
        f';alg="ed25519";nonce="{NONCE}"'
    )
    base = (
        '"@method": GET\n'
        '"@path": /v1/inbox\n'
        '"@query": ?limit=10\n'
        f'"@signature-params": ("@method" "@path" "@query");created={NOW};keyid="{KEYS.id}"'
        f';alg="ed25519";nonce="{NONCE}"'
    ).encode("ascii")
    assert headers["Signature"].startswith("sig1=:") and headers["Signature"].endswith(":")
    signature = base64.b64decode(headers["Signature"][len("sig1=:") : -1])
    assert verify_signature(KEYS.id, base, signature)


def test_absent_query_is_a_lone_question_mark_and_empty_path_is_slash() -> None:
    base = signature_base([("@path", "/"), ("@query", "?")], [("created", 1)])
    assert base == b'"@path": /\n"@query": ?\n"@signature-params": ("@path" "@query");created=1'
    headers = _signed(path="", query="")
    assert _verify(headers, path="/", query="") == KEYS.id


def test_round_trip_returns_the_signer() -> None:
    assert _verify(_signed()) == KEYS.id


def test_round_trip_with_default_random_nonce() -> None:
    nonces = NonceCache()
    first = sign_request(KEYS, "GET", "/v1/inbox", "", created=NOW)
    second = sign_request(KEYS, "GET", "/v1/inbox", "", created=NOW)
    assert first["Signature-Input"] != second["Signature-Input"]
    assert _verify(first, query="", nonces=nonces) == KEYS.id
    assert _verify(second, query="", nonces=nonces) == KEYS.id


def test_path_is_signed_percent_encoded_as_sent() -> None:
    path = "/v1/messages/%25abc%2Bdef%3D.sha256"
    headers = _signed(method="POST", path=path, query="")
    assert _verify(headers, method="POST", path=path, query="") == KEYS.id
    with pytest.raises(Unauthorized, match="signature does not verify"):
        _verify(headers, method="POST", path="/v1/messages/%abc+def=.sha256", query="")


def test_header_names_are_case_insensitive() -> None:
    headers = {name.upper(): value for name, value in _signed().items()}
    assert _verify(headers) == KEYS.id
    headers = {name.lower(): value for name, value in _signed().items()}
    assert _verify(headers) == KEYS.id


def test_the_profile_member_is_chosen_among_several() -> None:
    headers = _signed()
    headers["Signature-Input"] = (
        'proxy=("@authority");created=1;keyid="x", ' + headers["Signature-Input"]
    )
    headers["Signature"] = "proxy=:AAAA:, " + headers["Signature"]
    assert _verify(headers) == KEYS.id


def test_created_at_the_edge_of_the_window_is_accepted() -> None:
    nonces = NonceCache()
    assert _verify(_signed(created=NOW - 60, nonce="a"), nonces=nonces) == KEYS.id
    assert _verify(_signed(created=NOW + 60, nonce="b"), nonces=nonces) == KEYS.id


def test_sign_request_refuses_what_cannot_be_signed() -> None:
    with pytest.raises(ValueError, match="not printable ASCII"):
        sign_request(KEYS, "GET", "/v1/inbox/é", "", created=NOW)
    with pytest.raises(ValueError, match="not printable ASCII"):
        sign_request(KEYS, "GET\n", "/v1/inbox", "", created=NOW)
    with pytest.raises(ValueError, match="nonce must not be empty"):
        sign_request(KEYS, "GET", "/v1/inbox", "", created=NOW, nonce="")
    with pytest.raises(TypeError, match="created must be an int"):
        sign_request(KEYS, "GET", "/v1/inbox", "", created=float(NOW))  # type: ignore[arg-type]


# --- Refusals ------------------------------------------------------------------------

VALID = _signed()
PROFILE = '("@method" "@path" "@query")'


def _input(params: str, covered: str = PROFILE, label: str = "sig1") -> dict[str, str]:
    return {"Signature-Input": f"{label}={covered}{params}", "Signature": VALID["Signature"]}


KEYID = f'keyid="{KEYS.id}"'


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ({"Signature": VALID["Signature"]}, "missing Signature-Input header"),
        ({"Signature-Input": VALID["Signature-Input"]}, "missing Signature header"),
        ({**VALID, "Signature-Input": ""}, "Signature-Input header is empty"),
        ({**VALID, "Signature-Input": "sig1=("}, "malformed Signature-Input header"),
        (
            {**VALID, "Signature-Input": "Sig1=()"},
            "malformed Signature-Input header: expected a key",
        ),
        ({**VALID, "Signature-Input": 'sig1=("@method" "@path"'}, "malformed Signature-Input"),
        ({**VALID, "Signature-Input": 'sig1=("é")'}, "malformed Signature-Input header"),
        ({**VALID, "Signature-Input": "sig1=(),"}, "malformed Signature-Input header"),
        ({**VALID, "Signature-Input": "sig1=();created=1.2.3"}, "malformed Signature-Input"),
        ({**VALID, "Signature-Input": "sig1=:AAAA:"}, "member 'sig1' is not an inner list"),
        ({**VALID, "Signature": "sig1=:!!:"}, "malformed Signature header"),
        ({**VALID, "Signature": "sig1=:A:"}, "malformed Signature header: byte sequence"),
        ({**VALID, "Signature": 'sig1="abc"'}, "Signature member 'sig1' is not a byte sequence"),
        ({**VALID, "Signature": "other=:AAAA:"}, "Signature header has no member 'sig1'"),
        ({**VALID, "Signature": "sig1=:AAAA:"}, "signature does not verify"),
        (_input(f";created={NOW};{KEYID}", '("@method" "@path")'), "covered components must"),
        (_input(f";created={NOW};{KEYID}", '("@method" "@query" "@path")'), "covered comp"),
        (_input(f";created={NOW};{KEYID}", '("@method" "@path" "@query" "date")'), "covered"),
        (_input(f";created={NOW};{KEYID}", '("@method";req "@path" "@query")'), "covered"),
        (_input(f";created={NOW};{KEYID}", "()"), "covered components must"),
        (_input(f";created={NOW};{KEYID}"), "missing nonce parameter"),
        (_input(f';{KEYID};nonce="x"'), "missing created parameter"),
        (_input(f';created={NOW};nonce="x"'), "missing keyid parameter"),
        (_input(f';created="{NOW}";{KEYID};nonce="x"'), "created must be an integer"),
        (_input(f';created=?1;{KEYID};nonce="x"'), "created must be an integer"),
        (_input(f';created={NOW}.5;{KEYID};nonce="x"'), "created must be an integer"),
        (_input(f';created={NOW};keyid=alice;nonce="x"'), "keyid must be a string"),
        (_input(f';created={NOW};{KEYID};nonce=""'), "nonce must not be empty"),
        (_input(f";created={NOW};{KEYID};nonce=x"), "nonce must be a string"),
        (_input(f';created={NOW};{KEYID};nonce="x";alg="rsa-pss-sha512"'), "alg must be"),
        (_input(f';created={NOW};{KEYID};nonce="x";foo=1'), "unsupported signature param"),
        (_input(f';created={NOW};keyid="alice";nonce="x"'), r"keyid must be a feed id"),
        (_input(f';created={NOW};keyid="@abc.ed25519";nonce="x"'), "keyid must be a feed id"),
        (_input(f';created={NOW - 95};{KEYID};nonce="x"'), r"created 95 s from the node's"),
        (_input(f';created={NOW};{KEYID};nonce="x";expires={NOW - 1}'), "signature expired"),
    ],
)
def test_malformed_or_off_profile_requests_are_unauthorized(
    headers: dict[str, str], match: str
) -> None:
    with pytest.raises(Unauthorized, match=match) as info:
        _verify(headers)
    assert info.value.code == "unauthorized"
    assert info.value.status == 401


@pytest.mark.parametrize(
    ("created", "skew"),
    [(NOW - 95, 95), (NOW - 61, 61), (NOW + 61, 61), (NOW + 3600, 3600)],
)
def test_created_too_old_or_too_new(created: int, skew: int) -> None:
    with pytest.raises(Unauthorized, match=rf"created {skew} s from the node's clock \(limit 60\)"):
        _verify(_signed(created=created))


def test_window_is_configurable() -> None:
    headers = _signed(created=NOW - 95)
    assert (
        verify_request(
            "GET", "/v1/inbox", "limit=10", headers, now=NOW, nonces=NonceCache(120), window_s=120
        )
        == KEYS.id
    )


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("POST", "/v1/inbox", "limit=10"),
        ("get", "/v1/inbox", "limit=10"),
        ("GET", "/v1/inbox/ack", "limit=10"),
        ("GET", "/v1/Inbox", "limit=10"),
        ("GET", "/v1/inbox", "limit=11"),
        ("GET", "/v1/inbox", ""),
        ("GET", "/v1/inbox", "limit=10&x=1"),
    ],
)
def test_tampered_method_path_or_query_does_not_verify(method: str, path: str, query: str) -> None:
    with pytest.raises(Unauthorized, match="signature does not verify"):
        _verify(_signed(), method=method, path=path, query=query)


def test_tampered_parameters_do_not_verify() -> None:
    headers = _signed()
    headers["Signature-Input"] = headers["Signature-Input"].replace(NONCE, "other-nonce")
    with pytest.raises(Unauthorized, match="signature does not verify"):
        _verify(headers)


def test_signature_by_another_key_does_not_verify() -> None:
    headers = _signed(keys=OTHER)
    headers["Signature-Input"] = headers["Signature-Input"].replace(OTHER.id, KEYS.id)
    with pytest.raises(Unauthorized, match="signature does not verify"):
        _verify(headers)


def test_non_ascii_request_target_is_unauthorized() -> None:
    with pytest.raises(Unauthorized, match="request target cannot be signed"):
        _verify(_signed(), path="/v1/inbox/é")


def test_replayed_nonce_is_refused() -> None:
    nonces = NonceCache()
    headers = _signed()
    assert _verify(headers, nonces=nonces) == KEYS.id
    with pytest.raises(Unauthorized, match="nonce replayed"):
        _verify(headers, nonces=nonces)
    with pytest.raises(Unauthorized, match="nonce replayed"):
        _verify(headers, nonces=nonces, now=NOW + 60)


def test_same_nonce_from_another_identity_is_not_a_replay() -> None:
    nonces = NonceCache()
    assert _verify(_signed(), nonces=nonces) == KEYS.id
    assert _verify(_signed(keys=OTHER), nonces=nonces) == OTHER.id


def test_a_forged_request_does_not_burn_the_nonce() -> None:
    nonces = NonceCache()
    forged = _signed(keys=OTHER)
    forged["Signature-Input"] = forged["Signature-Input"].replace(OTHER.id, KEYS.id)
    with pytest.raises(Unauthorized, match="signature does not verify"):
        _verify(forged, nonces=nonces)
    assert len(nonces) == 0
    assert _verify(_signed(), nonces=nonces) == KEYS.id


def test_a_long_nonce_is_refused_before_it_is_remembered() -> None:
    # The replay cache counts entries: a nonce of megabytes, kept 2 min each,
    # would grow the node by gigabytes for a few thousand requests.
    nonces = NonceCache()
    assert _verify(_signed(nonce="n" * 128), nonces=nonces) == KEYS.id
    # Signed by hand: sign_request refuses such a nonce too (below).
    params: list[tuple[str, int | str]] = [
        ("created", NOW),
        ("keyid", KEYS.id),
        ("nonce", "n" * 129),
    ]
    components = [("@method", "GET"), ("@path", "/v1/inbox"), ("@query", "?limit=10")]
    signature = base64.b64encode(KEYS.sign(signature_base(components, params))).decode()
    long = {
        "Signature-Input": "sig1="
        + _serialize_signature_params([c for c, _ in components], params),
        "Signature": f"sig1=:{signature}:",
    }
    with pytest.raises(Unauthorized, match="nonce of 129 characters, at most 128"):
        _verify(long, nonces=nonces)
    assert len(nonces) == 1
    with pytest.raises(ValueError, match="nonce of 129 characters"):
        sign_request(KEYS, "GET", "/v1/inbox", "", created=NOW, nonce="n" * 129)


@pytest.mark.parametrize("name", ["Signature-Input", "Signature"])
def test_a_huge_header_is_refused_before_it_is_parsed(name: str) -> None:
    # Parsing is per character on the event loop, before any signature check:
    # a 4 MB header held every request up for more than a second.
    headers = {**VALID, name: VALID[name] + ", pad=" + "a" * 8192}
    with pytest.raises(Unauthorized, match=f"{name} header of 8[0-9]{{3}} characters, at most"):
        _verify(headers)
    # Within the bound, extra members are parsed and ignored as before.
    assert _verify({**VALID, name: VALID[name] + ", pad=" + "a" * 1000}) == KEYS.id


# --- NonceCache ----------------------------------------------------------------------


def test_nonce_cache_remembers_for_twice_the_window() -> None:
    cache = NonceCache(window_s=60)
    # A request created 60 s ahead at NOW stays acceptable until NOW + 120.
    assert not cache.seen("@k", "n", NOW, NOW + 60)
    assert cache.seen("@k", "n", NOW + 120, NOW + 60)
    assert len(cache) == 1
    cache.seen("@k", "other", NOW + 121, NOW + 121)
    assert not cache.live("@k", "n", NOW + 121) and len(cache) == 1
    # ... and then the window refuses it, whatever clock the caller passes.
    with pytest.raises(Unauthorized, match="61 s before the node's clock"):
        cache.seen("@k", "n", NOW + 121, NOW + 60)


def test_nonce_cache_prunes_expired_entries() -> None:
    cache = NonceCache(window_s=10)
    for i in range(100):
        cache.seen("@k", str(i), NOW, NOW)
    assert len(cache) == 100
    cache.seen("@k", "late", NOW + 21, NOW + 21)
    assert len(cache) == 1


def test_a_clock_stepping_back_does_not_make_a_pruned_nonce_new() -> None:
    cache = NonceCache(window_s=60)
    assert not cache.seen("@k", "n", NOW, NOW + 60)
    cache.seen("@o", "x", NOW + 121, NOW + 121)  # "n" pruned
    # The caller's clock is 2 s behind now: "n" is in its window, but not in the cache's.
    with pytest.raises(Unauthorized, match="before the node's clock"):
        cache.check_created("@k", NOW + 60, NOW + 119)
    with pytest.raises(Unauthorized):
        cache.seen("@k", "n", NOW + 119, NOW + 60)


def test_nonce_cache_full_of_light_keys_refuses_rather_than_forgets() -> None:
    cache = NonceCache(window_s=10, max_entries=2)
    assert not cache.seen("@a", "n", NOW, NOW)
    assert not cache.seen("@b", "n", NOW + 5, NOW + 5)
    with pytest.raises(RateLimited, match="too many signed requests") as info:
        cache.seen("@c", "n", NOW + 5, NOW + 5)
    assert info.value.retry_after == 16.0
    assert cache.seen("@a", "n", NOW + 5, NOW)
    assert cache.seen("@b", "n", NOW + 5, NOW + 5)
    assert not cache.seen("@c", "n", NOW + 21, NOW + 21)  # "@a" expired and made room


def test_a_full_nonce_cache_drops_the_heaviest_keys_older_half_and_floors_it() -> None:
    cache = NonceCache(window_s=10, max_entries=10)
    for i in range(8):
        assert not cache.seen("@flood", f"f{i}", NOW + i // 4, NOW)
    assert not cache.seen("@other", "o0", NOW + 1, NOW)
    assert not cache.seen("@other", "o1", NOW + 1, NOW)
    assert len(cache) == 10
    # Another signer still gets in: the flooder's 4 oldest nonces make room.
    assert not cache.seen("@third", "t0", NOW + 2, NOW + 2)
    assert len(cache) == 8  # 4 + 2 + 1 nonces, and @flood's floor
    for i in range(4, 8):
        assert cache.live("@flood", f"f{i}", NOW + 2), "the newer half is kept"
    for nonce in ("o0", "o1"):
        assert cache.seen("@other", nonce, NOW + 2, NOW)
    # A dropped nonce is no longer held, so the flooder's signatures created up
    # to when it could have been (the newest dropped was recorded at NOW, so
    # created by NOW + 10) are refused.
    assert not cache.live("@flood", "f0", NOW + 2)
    with pytest.raises(RateLimited, match="signatures created up to 1700000010") as info:
        cache.check_created("@flood", NOW + 10, NOW + 2)
    assert info.value.retry_after == 9.0
    with pytest.raises(RateLimited):
        cache.seen("@flood", "f0", NOW + 2, NOW)
    cache.check_created("@flood", NOW + 11, NOW + 2)
    cache.check_created("@other", NOW, NOW + 2)


def test_the_floor_comes_from_the_newest_dropped_nonce_and_never_goes_down() -> None:
    cache = NonceCache(window_s=10, max_entries=6)
    for i in range(4):
        cache.seen("@flood", f"f{i}", NOW + i, NOW + i)  # recorded at NOW .. NOW + 3
    cache.seen("@a", "a", NOW + 3, NOW + 3)
    cache.seen("@b", "b", NOW + 3, NOW + 3)
    cache.seen("@c", "c", NOW + 3, NOW + 3)  # full: f0 and f1 go
    with pytest.raises(RateLimited, match="up to 1700000011"):  # f1: recorded at NOW + 1
        cache.check_created("@flood", NOW + 11, NOW + 3)
    cache.check_created("@flood", NOW + 12, NOW + 3)
    cache.seen("@d", "d", NOW + 3, NOW + 3)  # full again: f2 goes, the floor moves up
    with pytest.raises(RateLimited, match="up to 1700000012"):
        cache.check_created("@flood", NOW + 12, NOW + 3)


def test_a_floor_stays_up_when_later_drops_were_recorded_at_an_earlier_clock() -> None:
    cache = NonceCache(window_s=10, max_entries=6)
    cache.seen("@flood", "f0", NOW + 5, NOW + 5)
    cache.seen("@flood", "f1", NOW + 5, NOW + 5)
    for i in (2, 3):  # the caller's clock stepped back 2 s
        cache.seen("@flood", f"f{i}", NOW + 3, NOW + 3)
    cache.seen("@a", "a", NOW + 5, NOW + 5)
    cache.seen("@b", "b", NOW + 5, NOW + 5)
    cache.seen("@c", "c", NOW + 5, NOW + 5)  # f0, f1 go: floor NOW + 15
    cache.seen("@d", "d", NOW + 5, NOW + 5)  # f2 goes, recorded at NOW + 3
    with pytest.raises(RateLimited, match="up to 1700000015"):
        cache.check_created("@flood", NOW + 15, NOW + 5)  # f0 and f1 stay refused


def test_only_a_key_past_a_thousandth_of_the_cache_is_made_to_drop() -> None:
    cache = NonceCache(window_s=10, max_entries=4000)  # heavy: more than 4 entries
    for k in range(1000):
        for n in range(4):
            cache.seen(f"@k{k}", str(n), NOW, NOW)
    with pytest.raises(RateLimited, match="too many signed requests"):
        cache.seen("@new", "n", NOW, NOW)  # nobody holds more than 4: nobody is dropped
    cache.seen("@o", "x", NOW + 21, NOW + 21)  # all expired
    for n in range(3999):
        cache.seen("@busy", str(n), NOW + 21, NOW + 21)
    assert not cache.seen("@new", "n", NOW + 21, NOW + 21)  # @busy drops its older half
    with pytest.raises(RateLimited):
        cache.check_created("@busy", NOW + 21, NOW + 21)
    cache.check_created("@o", NOW + 21, NOW + 21)


def test_a_request_refused_by_a_full_cache_leaves_nothing_behind() -> None:
    cache = NonceCache(window_s=10, max_entries=20_000)  # heavy: more than 20
    for n in range(2):
        for k in range(10_000):
            cache.seen(f"@k{k}", str(n), NOW, NOW)
    for k in range(10_000, 10_200):
        with pytest.raises(RateLimited):
            cache.seen(f"@k{k}", "n", NOW, NOW)
    assert len(cache._signers) == 10_000 and not cache._heavy
    assert not cache.seen("@late", "n", NOW + 21, NOW + 21)
    assert len(cache._signers) == 1 and len(cache) == 1


@dataclass
class _Pending:
    keyid: str
    nonce: str
    created: int
    checked_at: int  # the clock verify_headers read
    source: str  # the client's address ("" unknown)


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(1, 12), st.integers(0, 3))
def test_nonce_cache_accepts_each_request_once_whatever_the_interleaving(
    data: st.DataObject, max_entries: int, keys: int
) -> None:
    """The API's two steps with an ``await`` between: ``verify_headers``
    (window, ``check_created``, ``live``) at the clock of the moment, then
    ``check_body`` recording with that older clock, requests interleaved and
    sent again, the clock moving on or stepping back a little. A request
    ``(keyid, nonce, created)`` is accepted once at most; the cache stays in
    its bound; "too many" is said only when no key holds more than a
    thousandth of the cache, and "from this address" only when the cache is
    half full and the address holds a hundredth of it; each address's count
    is its keys' live nonces."""
    window = 5
    cache = NonceCache(window_s=window, max_entries=max_entries)
    signers = [f"@{c}" for c in "abcd"[: keys + 1]]
    clock = NOW
    made: list[tuple[str, str, int]] = []
    pending: list[_Pending] = []
    accepted: set[tuple[str, str, int]] = set()
    for _ in range(data.draw(st.integers(0, 120), label="steps")):
        op = data.draw(st.sampled_from(["tick", "new", "again", "finish"]), label="op")
        if op == "tick":
            clock += data.draw(st.integers(-2, 4), label="by")
        elif op in ("new", "again") and (op == "new" or not made):
            keyid = data.draw(st.sampled_from(signers), label="keyid")
            created = clock + data.draw(st.integers(-window, window), label="skew")
            made.append((keyid, f"n{len(made)}", created))
        if op in ("new", "again") and made:
            keyid, nonce, created = made[-1] if op == "new" else data.draw(st.sampled_from(made))
            if abs(clock - created) > window:
                continue  # verify_headers' own window check
            try:
                cache.check_created(keyid, created, clock)
            except (Unauthorized, RateLimited):
                continue
            if not cache.live(keyid, nonce, clock):
                source = data.draw(st.sampled_from(["", "10.0.0.1", "10.0.0.2"]), label="from")
                pending.append(_Pending(keyid, nonce, created, clock, source))
        elif op == "finish" and pending:
            p = pending.pop(data.draw(st.integers(0, len(pending) - 1), label="which"))
            try:
                replayed = cache.seen(p.keyid, p.nonce, p.checked_at, p.created, p.source)
            except Unauthorized:
                continue
            except RateLimited as exc:
                if "from this address" in str(exc):
                    # A refusal changes nothing after the pruning: the state it judged.
                    owner = cache._signers.get(p.keyid)
                    counted = p.source if owner is None else owner.source
                    held = cache.held_by(counted)
                    assert counted and held >= max(1, max_entries // 100), (counted, held)
                    assert len(cache) >= max_entries // 2, len(cache)
                elif "too many" in str(exc):
                    counts = [len(s) for s in cache._signers.values()]
                    assert max(counts, default=0) <= max(1, max_entries // 1000), counts
                continue
            finally:
                assert len(cache) <= max_entries
                by_source: dict[str, int] = {}
                for signer in cache._signers.values():
                    if signer.source and len(signer):
                        by_source[signer.source] = by_source.get(signer.source, 0) + len(signer)
                assert cache._sources == by_source
            if not replayed:
                request = (p.keyid, p.nonce, p.created)
                assert request not in accepted, f"{request} accepted twice"
                accepted.add(request)


def test_a_half_full_cache_refuses_an_address_holding_a_hundredth_of_it() -> None:
    cache = NonceCache(window_s=10, max_entries=1000)  # an address's share: 10
    for k in range(489):
        cache.seen(f"@k{k}", "n", NOW, NOW, f"10.0.{k % 100}.1")
    for k in range(11):  # one address, eleven keys: under the pressure mark, all in
        assert not cache.seen(f"@flood{k}", "n", NOW, NOW, "192.0.2.7")
    assert len(cache) == 500 and cache.held_by("192.0.2.7") == 11
    with pytest.raises(RateLimited, match="from this address") as info:
        cache.seen("@flood11", "n", NOW + 1, NOW + 1, "192.0.2.7")
    assert info.value.retry_after == 20.0  # when the oldest entries end
    # The same key from elsewhere still counts where it came from first.
    with pytest.raises(RateLimited, match="from this address"):
        cache.seen("@flood0", "m", NOW + 1, NOW + 1, "198.51.100.1")
    assert cache.seen("@flood0", "n", NOW + 1, NOW)  # a replay is still a replay
    # Others, and requests from nowhere known, get in.
    assert not cache.seen("@other", "n", NOW + 1, NOW + 1, "198.51.100.1")
    assert not cache.seen("@local", "n", NOW + 1, NOW + 1, "")
    assert "@flood11" not in cache._signers  # a refused key leaves nothing behind
    # Once its nonces end, the address is under its share again.
    assert not cache.seen("@flood11", "n", NOW + 21, NOW + 21, "192.0.2.7")
    assert cache.held_by("192.0.2.7") == 1


def test_an_address_count_follows_its_keys_dropped_and_expired_nonces() -> None:
    cache = NonceCache(window_s=10, max_entries=1000)
    for n in range(400):  # under the pressure mark: all in
        cache.seen("@busy", str(n), NOW, NOW, "192.0.2.7")
    for k in range(600):  # from nowhere known: up to full
        cache.seen(f"@k{k}", "n", NOW + 1, NOW + 1)
    assert cache.held_by("192.0.2.7") == 400 and len(cache) == 1000
    cache.seen("@late", "n", NOW + 2, NOW + 2)  # full: @busy drops its older half
    assert cache.held_by("192.0.2.7") == 200
    cache.seen("@late", "m", NOW + 21, NOW + 21)  # @busy's nonces end
    assert cache.held_by("192.0.2.7") == 0 and "192.0.2.7" not in cache._sources


def test_a_client_source_is_an_address_or_an_ipv6_64() -> None:
    assert client_source("192.0.2.7") == "192.0.2.7"
    assert client_source("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_source("[2001:db8:1:2::9]") == "2001:db8:1:2::/64"
    assert client_source("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_source(None) == client_source("") == client_source("testclient") == ""
    for local in ("127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::"):
        assert client_source(local) == "", local


def test_nonce_cache_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError, match="window_s"):
        NonceCache(window_s=-1)
    with pytest.raises(ValueError, match="max_entries"):
        NonceCache(max_entries=0)


# --- Fuzz: only Unauthorized escapes --------------------------------------------------

SF_ALPHABET = 'sig1=();:"@ ,\t-?*.0123456789abcdefkyonmthpqruAZ+/\\é\n'


@settings(max_examples=400, deadline=None)
@given(
    signature_input=st.one_of(st.text(), st.text(alphabet=SF_ALPHABET)),
    signature=st.one_of(st.text(), st.text(alphabet=SF_ALPHABET)),
)
def test_fuzzed_headers_only_raise_unauthorized(signature_input: str, signature: str) -> None:
    headers = {"Signature-Input": signature_input, "Signature": signature}
    with pytest.raises(Unauthorized):
        _verify(headers)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_mutated_valid_headers_only_raise_unauthorized_or_verify(data: st.DataObject) -> None:
    headers = dict(VALID)
    name = data.draw(st.sampled_from(sorted(headers)))
    value = headers[name]
    at = data.draw(st.integers(0, len(value)))
    cut = data.draw(st.integers(0, 3))
    insert = data.draw(st.text(alphabet=SF_ALPHABET, max_size=3))
    headers[name] = value[:at] + insert + value[at + cut :]
    with contextlib.suppress(Unauthorized):
        assert _verify(headers) == KEYS.id


# --- httpx ---------------------------------------------------------------------------


def _node(nonces: NonceCache) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        path, _, query = request.url.raw_path.partition(b"?")
        try:
            caller = verify_request(
                request.method,
                path.decode("ascii"),
                query.decode("ascii"),
                request.headers,
                now=NOW + 3,  # the node's clock runs a little ahead
                nonces=nonces,
                body=request.content,
                require_digest=True,
            )
        except Unauthorized as exc:
            return httpx.Response(exc.status, json=exc.problem())
        return httpx.Response(200, json={"caller": caller, "path": path.decode("ascii")})

    return httpx.MockTransport(handler)


def test_httpsig_auth_signs_each_request_for_the_node() -> None:
    nonces = NonceCache()
    auth = HttpSigAuth(KEYS, clock=lambda: NOW + 0.9)
    with httpx.Client(transport=_node(nonces), auth=auth, base_url="http://node") as client:
        for _ in range(2):  # a fresh nonce each time
            response = client.get("/v1/inbox", params={"limit": 10})
            assert response.status_code == 200, response.text
            assert response.json()["caller"] == KEYS.id
        response = client.post("/v1/inbox/ack", json={"ids": ["%abc=.sha256"]})
        assert response.status_code == 200, response.text
        response = client.get("/v1/messages/%25abc%2Bdef%3D.sha256")
        assert response.status_code == 200, response.text
        assert response.json()["path"] == "/v1/messages/%25abc%2Bdef%3D.sha256"
    assert len(nonces) == 4


def test_httpsig_auth_with_a_stale_clock_is_refused_by_the_node() -> None:
    auth = HttpSigAuth(KEYS, clock=lambda: NOW - 120)
    with httpx.Client(transport=_node(NonceCache()), auth=auth, base_url="http://node") as client:
        response = client.get("/v1/inbox")
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert "created 123 s from the node's clock" in response.json()["detail"]


def test_httpsig_auth_works_with_the_async_client() -> None:
    async def main() -> httpx.Response:
        auth = HttpSigAuth(KEYS, clock=lambda: NOW)
        async with httpx.AsyncClient(
            transport=_node(NonceCache()), auth=auth, base_url="http://node"
        ) as client:
            return await client.get("/v1/inbox?limit=5")

    response = asyncio.run(main())
    assert response.status_code == 200, response.text
    assert response.json()["caller"] == KEYS.id


# --- the body, by its Content-Digest (RFC 9530) ------------------------------------------

ACK = b'{"ids":["%abc=.sha256"]}'


def _signed_ack(body: bytes | None = ACK, **kwargs: object) -> dict[str, str]:
    return sign_request(
        KEYS, "POST", "/v1/inbox/ack", "", created=NOW, nonce="n-digest", body=body, **kwargs
    )


def _verify_ack(headers: dict[str, str], body: bytes, **kwargs: Any) -> str:
    return verify_request(
        "POST", "/v1/inbox/ack", "", headers, now=NOW, nonces=NonceCache(), body=body, **kwargs
    )


def test_a_signed_body_digest_holds_the_body() -> None:
    headers = _signed_ack()
    digest = base64.b64encode(hashlib.sha256(ACK).digest()).decode()
    assert headers["Content-Digest"] == f"sha-256=:{digest}:" == content_digest(ACK)
    assert headers["Signature-Input"].startswith(
        'sig1=("@method" "@path" "@query" "content-digest");created='
    )
    assert _verify_ack(headers, ACK, require_digest=True) == KEYS.id
    # Anyone on the path who changes the ids is caught, with or without the rule.
    other = b'{"ids":["%xyz=.sha256"]}'
    with pytest.raises(Unauthorized, match="not the digest of the body"):
        _verify_ack(headers, other)
    # ... and so is one who changes the digest to the new body's: it is signed.
    forged = {**headers, "Content-Digest": content_digest(other)}
    with pytest.raises(Unauthorized, match="signature does not verify"):
        _verify_ack(forged, other)


def test_a_covered_digest_must_be_there_and_known() -> None:
    headers = _signed_ack()
    without = {k: v for k, v in headers.items() if k != "Content-Digest"}
    with pytest.raises(Unauthorized, match="missing Content-Digest header"):
        _verify_ack(without, ACK)
    for field, said in (
        ("md5=:AAAA:", "holds no sha-256 or sha-512"),
        ("sha-256=AAAA", "sha-256 is not a byte sequence"),
        ("sha-256=:AAAA", "malformed Content-Digest"),
    ):
        with pytest.raises(Unauthorized, match=said):
            _verify_ack({**headers, "Content-Digest": field}, ACK)


def test_sha_512_and_unknown_algorithms_beside_it() -> None:
    sha512 = base64.b64encode(hashlib.sha512(ACK).digest()).decode()
    field = f"unknown=:AAAA:, sha-512=:{sha512}:"
    params: list[tuple[str, int | str]] = [
        ("created", NOW),
        ("keyid", KEYS.id),
        ("alg", "ed25519"),
        ("nonce", "n-512"),
    ]
    components = [
        ("@method", "POST"),
        ("@path", "/v1/inbox/ack"),
        ("@query", "?"),
        ("content-digest", field),
    ]
    signature = base64.b64encode(KEYS.sign(signature_base(components, params))).decode()
    headers = {
        "Content-Digest": field,
        "Signature-Input": 'sig1=("@method" "@path" "@query" "content-digest")'
        f';created={NOW};keyid="{KEYS.id}";alg="ed25519";nonce="n-512"',
        "Signature": f"sig1=:{signature}:",
    }
    assert _verify_ack(headers, ACK) == KEYS.id
    with pytest.raises(Unauthorized, match="sha-512 is not the digest"):
        _verify_ack(headers, ACK + b" ")


def test_the_designs_profile_still_signs_a_body_unless_the_node_requires_the_digest() -> None:
    plain = _signed_ack(body=None)
    assert "Content-Digest" not in plain
    assert _verify_ack(plain, ACK) == KEYS.id  # DESIGN §8's covered components
    with pytest.raises(Unauthorized, match='cover "content-digest"'):
        _verify_ack(plain, ACK, require_digest=True)
    # Without a body there is nothing to digest: the plain profile stays enough.
    got = verify_request(
        "GET",
        "/v1/inbox",
        "",
        sign_request(KEYS, "GET", "/v1/inbox", "", created=NOW),
        now=NOW,
        nonces=NonceCache(),
        body=b"",
        require_digest=True,
    )
    assert got == KEYS.id


def test_the_signature_is_checked_from_the_headers_before_the_body_is_read() -> None:
    """A server verifies the headers, then reads the body: the covered Content-Digest is
    in the signature base, so no body is needed to refuse an unsigned request."""
    from chainmail.httpsig import verify_headers

    headers = _signed_ack()
    signed = verify_headers("POST", "/v1/inbox/ack", "", headers, now=NOW, nonces=NonceCache())
    assert signed.keyid == KEYS.id and signed.content_digest == content_digest(ACK)
    assert signed.check_body(ACK, require_digest=True) == KEYS.id
    with pytest.raises(Unauthorized, match="sha-256 is not the digest of the body"):
        signed.check_body(ACK + b" ")
    # A malformed digest is refused from the headers alone, before any body.
    with pytest.raises(Unauthorized, match="holds no sha-256 or sha-512"):
        verify_headers(
            "POST",
            "/v1/inbox/ack",
            "",
            {**headers, "Content-Digest": "md5=:AAAA:"},
            now=NOW,
            nonces=NonceCache(),
        )
    plain = verify_headers(
        "POST", "/v1/inbox/ack", "", _signed_ack(body=None), now=NOW, nonces=NonceCache()
    )
    assert plain.content_digest is None and plain.check_body(ACK) == KEYS.id
    with pytest.raises(Unauthorized, match='cover "content-digest"'):
        plain.check_body(ACK, require_digest=True)


def test_a_request_refused_for_its_body_leaves_its_nonce_unused() -> None:
    # The nonce was recorded with the headers: a forged body (digest mismatch),
    # or any refusal between the two steps (a 415, a body too large), used up
    # the genuine request's nonce.
    from chainmail.httpsig import verify_headers

    cache = NonceCache()
    headers = _signed_ack()
    first = verify_headers("POST", "/v1/inbox/ack", "", headers, now=NOW, nonces=cache)
    with pytest.raises(Unauthorized, match="not the digest of the body"):
        first.check_body(b'{"ids": ["%forged"]}')
    assert len(cache) == 0
    # Refused between the steps (the server never asks for the body check).
    verify_headers("POST", "/v1/inbox/ack", "", headers, now=NOW, nonces=cache)
    assert len(cache) == 0
    genuine = verify_headers("POST", "/v1/inbox/ack", "", headers, now=NOW, nonces=cache)
    assert genuine.check_body(ACK) == KEYS.id
    with pytest.raises(Unauthorized, match="nonce replayed"):
        verify_headers("POST", "/v1/inbox/ack", "", headers, now=NOW + 1, nonces=cache)


def test_two_copies_in_flight_at_once_pass_one_body_check() -> None:
    from chainmail.httpsig import verify_headers

    cache = NonceCache()
    headers = _signed_ack()
    copies = [
        verify_headers("POST", "/v1/inbox/ack", "", headers, now=NOW, nonces=cache)
        for _ in range(2)
    ]
    assert copies[0].check_body(ACK) == KEYS.id
    with pytest.raises(Unauthorized, match="nonce replayed"):
        copies[1].check_body(ACK)


def test_a_request_signed_before_the_node_started_is_refused() -> None:
    # The nonces a node saw are gone when it restarts: a request captured
    # before then and sent again within the window was taken as new.
    headers = sign_request(KEYS, "GET", "/v1/inbox", "limit=1", created=NOW - 1, nonce=NONCE)
    restarted = NonceCache(not_before=NOW)
    with pytest.raises(Unauthorized, match="1 s before the node started"):
        verify_request("GET", "/v1/inbox", "limit=1", headers, now=NOW + 5, nonces=restarted)
    fresh = sign_request(KEYS, "GET", "/v1/inbox", "limit=1", created=NOW, nonce=NONCE)
    assert (
        verify_request("GET", "/v1/inbox", "limit=1", fresh, now=NOW, nonces=restarted) == KEYS.id
    )
