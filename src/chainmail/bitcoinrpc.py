"""Talking to Bitcoin for anchors (I/O): a node's JSON-RPC, and a bcoin wallet's HTTP API.

Reads use the JSON-RPC calls Bitcoin Core and bcoin share (``getblockchaininfo``,
``getblockhash``, ``getblockheader``, ``getblock``), so ``chainmail verify`` and
``ots verify`` can check headers against either. Sending uses bcoin's wallet
HTTP API (``POST /wallet/{id}/send`` with a script output, ``GET
/wallet/{id}/tx/{hash}``): the wallet picks the coins, pays the fee and signs.

URLs carry their credentials: ``http://x:API_KEY@127.0.0.1:48332`` for a node,
``http://x:API_KEY@127.0.0.1:48334/wallet/primary`` for a wallet (``primary``
when the path names none); a query (a bcoin wallet's ``?token=``) goes with every
request. Every failure is a ``BitcoinError`` with one line saying what and where,
never the credentials: ``BitcoinUnreachable`` when nothing was learnt (no answer, or
a node that cannot answer yet: warming up, still in its initial download), and
``BitcoinBehind`` for a height past a syncing node's tip. The one answer that is no
failure of the node is ``NoSuchBlock``, a ``ProofError``: a synced node has no block
at a height well past its tip.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx

from chainmail import bitcoin
from chainmail.errors import Error, OperationalError, ProofError

DEFAULT_TIMEOUT = 30.0
#: JSON-RPC error codes a node answers while it cannot answer yet, whatever was asked:
#: RPC_IN_WARMUP (bitcoind loading its index), RPC_CLIENT_NOT_CONNECTED,
#: RPC_CLIENT_IN_INITIAL_DOWNLOAD and JSON-RPC's internal error.
TRANSIENT_CODES: Final = frozenset({-28, -9, -10, -32603})
#: Blocks a synced node's tip may lag the height an anchor attests (the anchorer posts
#: only after its confirmations, on a node that may be a few blocks ahead of yours):
#: within it the node is told to sync; past it, there is no such block.
SYNC_MARGIN: Final = 6
#: ``verificationprogress`` below which a node that does not say
#: ``initialblockdownload`` (bcoin) is taken to be syncing.
_SYNCED_PROGRESS: Final = 0.999


class BitcoinError(OperationalError):
    """The Bitcoin node or wallet could not be reached, or refused the call."""

    code = "unavailable"
    title = "Bitcoin unavailable"


class BitcoinUnreachable(BitcoinError):
    """The Bitcoin node did not answer as a JSON-RPC server at all (down, refused, not
    JSON-RPC, or the credentials refused): nothing was learnt about what was asked."""


class BitcoinBehind(BitcoinUnreachable):
    """The Bitcoin node's chain does not reach the height asked for yet (still syncing):
    nothing is known about that height from it."""


class NoSuchBlock(ProofError):
    """A synced Bitcoin node has no block at the height asked for, nor any near it: what
    attests that height attests nothing."""


def _split(url: str) -> tuple[str, httpx.BasicAuth | None, str, httpx.QueryParams]:
    """(base URL without credentials, their basic auth, path, query parameters: a bcoin
    wallet's ``token``, say) of ``url``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as exc:
        # urlsplit's own words (a bad port, an unclosed IPv6 bracket) hold no credential.
        raise BitcoinError(
            f"not a valid URL ({exc}): {redact(url)}", code="invalid_format"
        ) from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise BitcoinError(f"not an http(s) URL: {redact(url)}", code="invalid_format")
    auth = None
    if parts.username is not None or parts.password is not None:
        auth = httpx.BasicAuth(parts.username or "", parts.password or "")
    netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    if ":" in parts.hostname:  # IPv6
        netloc = f"[{parts.hostname}]" + ("" if parts.port is None else f":{parts.port}")
    params = httpx.QueryParams(parts.query)
    return urlunsplit((parts.scheme, netloc, "", "", "")), auth, parts.path, params


#: The user info of a URL that ``urlsplit`` cannot read: all of it is hidden.
_USERINFO: Final = re.compile(r"(?<=//)[^/?#]*@")


def redact(url: str) -> str:
    """``url`` without its credentials, for messages and logs (never raises): the password,
    a user name given alone (``http://KEY@host``) and the query's values (a bcoin wallet's
    ``?token=``) become ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub("***@", url.partition("?")[0])
    host = parts.netloc.rsplit("@", 1)[-1]
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{host}"
    elif parts.username is not None:
        netloc = f"***@{host}"
    else:
        netloc = host
    query = "&".join(f"{k}=***" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _client(base: str, auth: Any, params: Any, timeout: float, shown: str) -> httpx.Client:
    """An httpx client for ``base``; a URL httpx refuses (a host not valid IDNA) is an
    ``Error`` (``invalid_format``), not a traceback."""
    try:
        return httpx.Client(base_url=base, auth=auth, params=params, timeout=timeout)
    except httpx.InvalidURL as exc:
        raise Error(f"not a usable URL: {shown}: {exc}", code="invalid_format") from exc


class BitcoinNode:
    """A Bitcoin node's JSON-RPC (Bitcoin Core or bcoin)."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        base, auth, path, params = _split(url)
        self.url = redact(url)
        self._client = _client(base, auth, params, timeout, self.url)
        self._path = path or "/"
        self._ids = itertools.count(1)

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, *params: Any) -> Any:
        body = {"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)}
        try:
            r = self._client.post(self._path, json=body)
        except httpx.HTTPError as exc:
            raise BitcoinUnreachable(f"Bitcoin node {self.url}: {method}: {exc}") from None
        try:
            answer = r.json()
        except ValueError:
            raise BitcoinUnreachable(
                f"Bitcoin node {self.url}: {method}: HTTP {r.status_code}, not JSON-RPC"
            ) from None
        error = answer.get("error") if isinstance(answer, dict) else None
        if error:
            text = error.get("message", error) if isinstance(error, dict) else error
            if isinstance(error, dict) and error.get("code") in TRANSIENT_CODES:
                # Warming up, say: it answers, but says nothing about what was asked.
                raise BitcoinUnreachable(f"Bitcoin node {self.url}: {method}: {text}")
            raise BitcoinError(f"Bitcoin node {self.url}: {method}: {text}")
        if not isinstance(answer, dict) or "result" not in answer:
            raise BitcoinUnreachable(f"Bitcoin node {self.url}: {method}: HTTP {r.status_code}")
        return answer["result"]

    def _answer(self, method: str, value: object, kind: type[Any]) -> Any:
        # bool is an int in Python, not in JSON.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BitcoinError(f"Bitcoin node {self.url}: {method}: unexpected answer")
        return value

    def chain(self) -> str:
        """What the node calls its chain: ``main``, ``test``, ``regtest``, …"""
        info = self._answer("getblockchaininfo", self.call("getblockchaininfo"), dict)
        return str(self._answer("getblockchaininfo", info.get("chain"), str))

    def block_count(self) -> int:
        return int(self._answer("getblockcount", self.call("getblockcount"), int))

    def block_hash(self, height: int) -> str:
        return str(self.call("getblockhash", height))

    def header(self, block_hash: str) -> bytes:
        """The raw 80-byte header of a block."""
        raw = _hex(self.call("getblockheader", block_hash, False), f"header {block_hash}")
        if len(raw) != bitcoin.HEADER_SIZE:
            raise BitcoinError(f"Bitcoin node {self.url}: header {block_hash} is not 80 bytes")
        return raw

    def header_at_synced(self, height: int) -> bytes:
        """``header_at``, for a height the node's chain may not reach. Past its tip:
        ``BitcoinBehind`` while the node syncs, or within ``SYNC_MARGIN`` blocks of the
        tip (a node still syncing says nothing about the block there); ``NoSuchBlock``
        (a ``ProofError``) when a synced node's chain ends further below."""
        tip = self.block_count()
        if height > tip:
            if height - tip <= SYNC_MARGIN or self.syncing():
                raise BitcoinBehind(
                    f"Bitcoin node {self.url} is at height {tip}, below {height}: let it sync"
                )
            raise NoSuchBlock(
                f"no Bitcoin block at height {height}: Bitcoin node {self.url} is synced,"
                f" at height {tip}"
            )
        return self.header_at(height)

    def syncing(self) -> bool:
        """Whether the node may not have the whole chain yet: it says it is in its initial
        block download, has headers it has not the blocks of, or (saying neither, as
        bcoin) has not verified the chain up to the present. Unsure is syncing."""
        info = self._answer("getblockchaininfo", self.call("getblockchaininfo"), dict)
        blocks, headers = info.get("blocks"), info.get("headers")
        if type(blocks) is int and type(headers) is int and headers > blocks:
            return True
        download = info.get("initialblockdownload")
        if isinstance(download, bool):
            return download
        progress = info.get("verificationprogress")
        if isinstance(progress, int | float) and not isinstance(progress, bool):
            return progress < _SYNCED_PROGRESS
        return True

    def header_at(self, height: int) -> bytes:
        return self.header(self.block_hash(height))

    def block(self, block_hash: str) -> bytes:
        """The raw block."""
        return _hex(self.call("getblock", block_hash, False), f"block {block_hash}")

    def block_height(self, block_hash: str) -> int:
        header = self._answer("getblockheader", self.call("getblockheader", block_hash, True), dict)
        return int(self._answer("getblockheader", header.get("height"), int))


def _hex(value: object, what: str) -> bytes:
    try:
        return bytes.fromhex(str(value))
    except ValueError:
        raise BitcoinError(f"the Bitcoin node sent a {what} that is not hex") from None


@dataclass(frozen=True)
class TxStatus:
    """Where a wallet's transaction stands: mined in ``block`` (None: not yet)."""

    block: str | None
    confirmations: int


@dataclass(frozen=True)
class Sent:
    """A transaction a wallet sent: its id and fee rate (sat/kvB; None: not said)."""

    txid: str
    rate: int | None


class BcoinWallet:
    """One bcoin wallet, over its HTTP API: sends ``OP_RETURN`` outputs."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        base, auth, path, params = _split(url)
        self.url = redact(url)
        self._client = _client(base, auth, params, timeout, self.url)
        path = path.rstrip("/")
        self._path = path if path.startswith("/wallet/") else "/wallet/primary"

    def close(self) -> None:
        self._client.close()

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._client.request(method, self._path + path, **kw)
        except httpx.HTTPError as exc:
            raise BitcoinError(f"Bitcoin wallet {self.url}: {exc}") from None
        if r.status_code == 404:
            return None
        try:
            answer = r.json()
        except ValueError:
            answer = None
        if r.status_code >= 400 or not isinstance(answer, dict):
            error = answer.get("error") if isinstance(answer, dict) else None
            text = error.get("message") if isinstance(error, dict) else r.text[:200]
            raise BitcoinError(f"Bitcoin wallet {self.url}: HTTP {r.status_code}: {text}")
        return answer

    def send_data(self, data: bytes, *, rate: int | None = None) -> Sent:
        """Send a transaction with one ``OP_RETURN <data>`` output, paying ``rate``
        satoshis per 1,000 virtual bytes (None: the wallet's estimate)."""
        script = bitcoin.op_return_script(data).hex()
        body: dict[str, Any] = {"outputs": [{"script": script, "value": 0}]}
        if rate is not None:
            body["rate"] = rate
        answer = self._request("POST", "/send", json=body)
        if answer is None or not isinstance(answer.get("hash"), str):
            raise BitcoinError(f"Bitcoin wallet {self.url}: the send answered no transaction")
        paid = answer.get("rate")
        return Sent(str(answer["hash"]), paid if type(paid) is int and paid > 0 else rate)

    def status(self, txid: str) -> TxStatus | None:
        """Where ``txid`` stands, or None when the wallet does not know it; ``BitcoinError``
        when there is no such wallet (bcoin answers 404 for both)."""
        answer = self._request("GET", f"/tx/{txid}")
        if answer is None:
            if self._request("GET", "") is None:
                # Not "the wallet forgot the tx": a mistyped wallet id must not drop it.
                raise BitcoinError(f"Bitcoin wallet {self.url}: no such wallet")
            return None
        block = answer.get("block")
        confirmations = answer.get("confirmations") or 0
        if not isinstance(confirmations, int):
            raise BitcoinError(f"Bitcoin wallet {self.url}: tx {txid}: unexpected answer")
        return TxStatus(block if isinstance(block, str) and block else None, max(0, confirmations))

    def receive_address(self) -> str:
        """A fresh receiving address of the wallet's default account (to fund it)."""
        answer = self._request("POST", "/address", json={"account": "default"})
        if answer is None or not isinstance(answer.get("address"), str):
            raise BitcoinError(f"Bitcoin wallet {self.url}: no address answered")
        return str(answer["address"])

    def balance(self) -> int:
        """Confirmed balance in satoshis."""
        answer = self._request("GET", "/balance")
        return 0 if answer is None else int(answer.get("confirmed") or 0)
