"""``chainmail.bitcoinrpc``'s URL handling: credentials out of every message, malformed URLs
as ``BitcoinError`` (no Bitcoin node needed)."""

from __future__ import annotations

import pytest

from chainmail.bitcoinrpc import BcoinWallet, BitcoinError, BitcoinNode, redact

KEY = "s3cret-api-key"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"http://x:{KEY}@127.0.0.1:48332", "http://x:***@127.0.0.1:48332"),
        ("http://127.0.0.1:48332", "http://127.0.0.1:48332"),
        (f"http://x:{KEY}@[::1", "http://***@[::1"),  # urlsplit refuses it
        (f"http://x:{KEY}@[::1/wallet/primary", "http://***@[::1/wallet/primary"),
        (f"http://x:{KEY}@[::1/wallet/primary?token={KEY}", "http://***@[::1/wallet/primary"),
        (f"http://{KEY}@127.0.0.1:48332", "http://***@127.0.0.1:48332"),  # the key as the user
        (
            f"http://x:{KEY}@127.0.0.1:48334/wallet/w1?token={KEY}",
            "http://x:***@127.0.0.1:48334/wallet/w1?token=***",
        ),
        (
            f"http://127.0.0.1:48334/wallet/w1?token={KEY}",
            "http://127.0.0.1:48334/wallet/w1?token=***",
        ),
    ],
)
def test_redact_hides_the_password_and_never_raises(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    ("url", "match"),
    [
        (f"http://x:{KEY}@h:port", "not a valid URL"),
        (f"http://x:{KEY}@h:99999", "not a valid URL"),
        (f"http://x:{KEY}@[::1", "not a valid URL"),
        (f"ftp://x:{KEY}@h:1", "not an http"),
    ],
)
@pytest.mark.parametrize("client", [BitcoinNode, BcoinWallet])
def test_a_malformed_url_is_a_bitcoin_error_without_its_key(
    client: type[BitcoinNode | BcoinWallet], url: str, match: str
) -> None:
    with pytest.raises(BitcoinError, match=match) as raised:
        client(url)
    assert KEY not in raised.value.diagnostics()
    assert raised.value.code == "invalid_format"


def test_a_wallet_token_in_the_query_is_sent_and_never_shown() -> None:
    wallet = BcoinWallet(f"http://x:{KEY}@127.0.0.1:1/wallet/w1?token={KEY}")
    try:
        sent = wallet._client.build_request("GET", wallet._path + "/balance").url
        assert sent.path == "/wallet/w1/balance" and sent.params["token"] == KEY
        with pytest.raises(BitcoinError) as raised:
            wallet.balance()  # nothing listens on port 1
        assert KEY not in raised.value.diagnostics() and "token=***" in raised.value.detail
    finally:
        wallet.close()
