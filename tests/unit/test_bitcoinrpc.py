"""``chainmail.bitcoinrpc``'s URL handling: credentials out of every message, malformed URLs
as ``BitcoinError`` (no Bitcoin node needed); and its reading of answers a real node
cannot be made to give (warming up, syncing, a synced chain far short), from a small
fake JSON-RPC server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

import pytest

from chainmail.bitcoinrpc import (
    SYNC_MARGIN,
    BcoinWallet,
    BitcoinBehind,
    BitcoinError,
    BitcoinNode,
    BitcoinUnreachable,
    NoSuchBlock,
    redact,
)
from chainmail.errors import ProofError
from support.fakerpc import FakeRPC

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


@pytest.fixture
def fake_rpc() -> Iterator[Callable[[dict[str, tuple[int, dict[str, Any]]]], BitcoinNode]]:
    made: list[tuple[FakeRPC, BitcoinNode]] = []

    def make(answers: dict[str, tuple[int, dict[str, Any]]]) -> BitcoinNode:
        rpc = FakeRPC(answers.__getitem__, KEY)
        made.append((rpc, BitcoinNode(rpc.url)))
        return made[-1][1]

    yield make
    for rpc, node in made:
        node.close()
        rpc.close()


def _ok(result: object) -> tuple[int, dict[str, Any]]:
    return 200, {"result": result, "error": None}


_HEADER = bytes(80)
_METHODS = ("getblockchaininfo", "getblockcount", "getblockhash", "getblockheader")


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (500, -28, "Loading block index…"),  # bitcoind starting: RPC_IN_WARMUP
        (500, -10, "Bitcoin Core is in initial sync"),
        (500, -32603, "Internal error"),
    ],
)
def test_a_node_that_cannot_answer_yet_is_unreachable_not_an_answer(
    fake_rpc: Callable[..., BitcoinNode], status: int, code: int, message: str
) -> None:
    error = (status, {"result": None, "error": {"code": code, "message": message}})
    node = fake_rpc(dict.fromkeys(_METHODS, error))
    # A plain BitcoinError before: verify failed the anchor, audit accused the node.
    with pytest.raises(BitcoinUnreachable, match=message) as raised:
        node.header_at_synced(7)
    assert KEY not in raised.value.diagnostics()
    with pytest.raises(BitcoinUnreachable, match=message):
        node.chain()


def test_a_refusal_of_what_was_asked_stays_a_bitcoin_error(
    fake_rpc: Callable[..., BitcoinNode],
) -> None:
    refused = (500, {"result": None, "error": {"code": -5, "message": "Block not found"}})
    node = fake_rpc({"getblockheader": refused})
    with pytest.raises(BitcoinError, match="Block not found") as raised:
        node.header("00" * 32)
    assert not isinstance(raised.value, BitcoinUnreachable)


def _synced(tip: int, **info: object) -> dict[str, tuple[int, dict[str, Any]]]:
    return {
        "getblockchaininfo": _ok({"chain": "regtest", "blocks": tip, **info}),
        "getblockcount": _ok(tip),
        "getblockhash": _ok("11" * 32),
        "getblockheader": _ok(_HEADER.hex()),
    }


CORE_SYNCED: Final = {"headers": 10, "initialblockdownload": False}


def test_a_synced_node_has_no_block_far_past_its_tip(fake_rpc: Callable[..., BitcoinNode]) -> None:
    node = fake_rpc(_synced(10, **CORE_SYNCED))
    assert node.header_at_synced(10) == _HEADER
    far = 10 + SYNC_MARGIN + 1
    # BitcoinBehind before ("let it sync"), for ever: the anchor was never judged.
    with pytest.raises(
        NoSuchBlock, match=f"no Bitcoin block at height {far}.*synced, at height 10"
    ):
        node.header_at_synced(far)
    assert issubclass(NoSuchBlock, ProofError)
    with pytest.raises(NoSuchBlock, match="at height 1000000000"):
        node.header_at_synced(1_000_000_000)


@pytest.mark.parametrize(
    "info",
    [
        {"headers": 10, "initialblockdownload": True},  # Bitcoin Core, syncing
        {"headers": 500, "initialblockdownload": False},  # blocks behind its headers
        {"headers": 10, "verificationprogress": 0.0},  # bcoin, a fresh chain
        {},  # says nothing: taken as syncing
    ],
)
def test_a_node_still_syncing_is_behind_at_any_height(
    fake_rpc: Callable[..., BitcoinNode], info: dict[str, object]
) -> None:
    node = fake_rpc(_synced(10, **info))
    with pytest.raises(BitcoinBehind, match="let it sync"):
        node.header_at_synced(1_000_000_000)


@pytest.mark.parametrize("info", [CORE_SYNCED, {"headers": 10, "verificationprogress": 1.0}])
def test_a_synced_node_a_few_blocks_short_is_told_to_sync(
    fake_rpc: Callable[..., BitcoinNode], info: dict[str, object]
) -> None:
    node = fake_rpc(_synced(10, **info))
    with pytest.raises(BitcoinBehind, match="let it sync"):
        node.header_at_synced(10 + SYNC_MARGIN)
    if "verificationprogress" in info:  # bcoin: synced, so a height far past is judged
        with pytest.raises(NoSuchBlock):
            node.header_at_synced(10 + SYNC_MARGIN + 1)
