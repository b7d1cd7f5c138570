"""`chainmail serve` — run a node."""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated
from urllib.parse import urlsplit

import typer

from chainmail.anchoring import AnchorConfig
from chainmail.anchors import DEFAULT_CONFIRMATIONS
from chainmail.anchors import DEFAULT_INTERVAL as DEFAULT_ANCHOR_INTERVAL
from chainmail.bitcoinrpc import BcoinWallet, BitcoinNode, redact
from chainmail.blobkeeping import DEFAULT_GRACE_S, DEFAULT_PENDING_LIMIT
from chainmail.cli._app import app
from chainmail.errors import Error
from chainmail.httpsig import DEFAULT_MAX_NONCES
from chainmail.ids import is_feed_id
from chainmail.ingest_http import BODY_IDLE_TIMEOUT_S, DEFAULT_BODY_BUDGET
from chainmail.node import DEFAULT_BLOCK_INTERVAL, Node, NodeConfig
from chainmail.priority import VERIFY_NICE, VERIFY_NICE_RANGE
from chainmail.ratelimit import CONNECTION_BURST, CONNECTION_RATE, IDENTITY_BURST, IDENTITY_RATE

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8700


def _sqlite_path(url: str | None, what: str) -> Path | None:
    """The file of a ``sqlite:`` URL (``sqlite:PATH``, ``sqlite:///ABS/PATH``); None for none."""
    if url is None:
        return None
    if not url.startswith("sqlite:"):
        raise Error(
            f"--{what} {url}: only the embedded SQLite backend is available in this version",
            code="invalid_format",
        )
    rest = url.removeprefix("sqlite:")
    if rest.startswith("//"):
        host, _, path = rest[2:].partition("/")
        if host:
            raise Error(
                f"--{what} {url}: a SQLite file is local: sqlite:///ABS/PATH or sqlite:PATH",
                code="invalid_format",
            )
        rest = "/" + path
    if rest in ("", "/") or rest.endswith("/"):
        raise Error(f"--{what} {url}: no file named", code="invalid_format")
    return Path(rest)


def _anchor_config(
    bitcoin: str | None,
    wallet: str | None,
    interval: float,
    confirmations: int,
    stuck_after: float | None = None,
    max_rate: int | None = None,
) -> AnchorConfig | None:
    if bitcoin is None and wallet is None:
        if stuck_after is not None or max_rate is not None:
            raise Error(
                "--anchor-stuck-after and --anchor-max-fee-rate need --anchor-bitcoin and"
                " --anchor-wallet: without them nothing is anchored",
                code="invalid_format",
            )
        return None
    if bitcoin is None or wallet is None:
        raise Error(
            "--anchor-bitcoin and --anchor-wallet go together: give both or neither",
            code="invalid_format",
        )
    for name, url in (("anchor-bitcoin", bitcoin), ("anchor-wallet", wallet)):
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # an unclosed IPv6 bracket, say
            raise Error(f"--{name}: {exc}: {redact(url)}", code="invalid_format") from None
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise Error(f"--{name}: bad port in {redact(url)}", code="invalid_format") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Error(f"--{name}: not an http(s) URL: {redact(url)}", code="invalid_format")
    # Now, not once the node starts: a host httpx cannot use (not valid IDNA) failed there.
    checks: tuple[tuple[str, Callable[[], BitcoinNode | BcoinWallet]], ...] = (
        ("anchor-bitcoin", lambda: BitcoinNode(bitcoin)),
        ("anchor-wallet", lambda: BcoinWallet(wallet)),
    )
    for name, make in checks:
        try:
            make().close()
        except Error as exc:
            raise Error(f"--{name}: {exc.detail}", code="invalid_format") from None
    if not 0 < interval < math.inf:  # inf overflowed the anchorer's ms arithmetic
        raise Error(
            f"--anchor-interval: expected a positive number of seconds, got {interval}",
            code="invalid_format",
        )
    if confirmations < 1:
        raise Error(
            f"--anchor-confirmations: expected 1 or more, got {confirmations}",
            code="invalid_format",
        )
    if stuck_after is not None and not 0 < stuck_after < math.inf:
        raise Error(
            f"--anchor-stuck-after: expected a positive number of seconds, got {stuck_after}",
            code="invalid_format",
        )
    if max_rate is not None and max_rate < 1:
        raise Error(
            f"--anchor-max-fee-rate: expected 1 or more sat/kvB, got {max_rate}",
            code="invalid_format",
        )
    return AnchorConfig(
        bitcoin,
        wallet,
        interval=interval,
        confirmations=confirmations,
        stuck_after=stuck_after,
        max_rate=max_rate,
    )


#: Connections the kernel queues before the server accepts them (uvicorn's default).
_BACKLOG = 2048


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, or ``Error`` (one line) saying why not.

    Bound before the node opens its files, so a bad address or a port in use
    is told at once instead of after the node's whole start-up and shut-down;
    and held until the server takes it, so no other process can take the port
    in between.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise Error(f"--host: cannot listen on {host}: {exc}", code="invalid_format") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise Error(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", code="unavailable"
        ) from exc
    sock.set_inheritable(False)
    return sock


@app.command()
def serve(
    data: Annotated[Path, typer.Option(help="Data directory (log, store, node key).")] = Path(
        ".chainmail-node"
    ),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = DEFAULT_PORT,
    store: Annotated[
        str | None,
        typer.Option(
            help="Projection store URL: sqlite:PATH or sqlite:///ABS/PATH (default: "
            "store.sqlite in --data; its blobs go beside it)."
        ),
    ] = None,
    log: Annotated[
        str | None,
        typer.Option(
            help="Log URL: sqlite:PATH or sqlite:///ABS/PATH (default: log.sqlite in --data)."
        ),
    ] = None,
    block_interval: Annotated[
        float, typer.Option(help="Seconds between blocks (only when something happened).")
    ] = DEFAULT_BLOCK_INTERVAL,
    pipelines: Annotated[int, typer.Option(help="Log partitions (fixed once data exists).")] = 1,
    workers: Annotated[
        int | None, typer.Option(help="Signature-verification threads (default: all cores).")
    ] = None,
    verify_nice: Annotated[
        int,
        typer.Option(
            help="Niceness, 0 to 19 (Linux), of the verification threads that check backlog "
            "(a whole batch of 1,024 messages queued at once, as at full load). They run "
            "ed25519 without Python's lock; at 19 they take only the CPU the event loop and "
            "the writer leave, which the whole node waits on. Smaller batches keep the "
            "node's priority. 0: all do."
        ),
    ] = VERIFY_NICE,
    synchronous: Annotated[
        str,
        typer.Option(
            help="Durability of the log: FULL (survives power loss) or NORMAL (a process "
            "crash only). The store runs at NORMAL (it is rebuilt from the log), except the "
            "commits no log can replay (timeouts, fork evidence, blob bookkeeping): FULL."
        ),
    ] = "FULL",
    admission: Annotated[
        str,
        typer.Option(
            help="open: anyone may post; attested: only identities attested by a "
            "--registrar may post (anyone may post `about` to ask to join)."
        ),
    ] = "open",
    registrar: Annotated[
        list[str] | None,
        typer.Option(
            help="Identities whose `attest` messages count: @IDs after one --registrar,"
            " or repeat it."
        ),
    ] = None,
    witness: Annotated[
        list[str] | None,
        typer.Option(
            help="Identities that co-sign every block in stages (precommit, commit, seal:"
            " `chainmail witness`): @IDs after one --witness, or repeat it. A block is"
            " sealed once --threshold of them signed its last stage."
        ),
    ] = None,
    threshold: Annotated[
        int | None,
        typer.Option(help="Witnesses that must sign each stage (default: all of them)."),
    ] = None,
    anchor_bitcoin: Annotated[
        str | None,
        typer.Option(
            envvar="CHAINMAIL_ANCHOR_BITCOIN",
            help="Anchor blocks in Bitcoin through this node's JSON-RPC"
            " (http://user:password@host:port; Bitcoin Core or bcoin). Needs --anchor-wallet.",
        ),
    ] = None,
    anchor_wallet: Annotated[
        str | None,
        typer.Option(
            envvar="CHAINMAIL_ANCHOR_WALLET",
            help="The bcoin wallet that pays for anchors"
            " (http://x:API_KEY@host:port/wallet/ID; ID primary when left out).",
        ),
    ] = None,
    anchor_interval: Annotated[
        float,
        typer.Option(help="Seconds between anchors: the latest block then, if it is new."),
    ] = DEFAULT_ANCHOR_INTERVAL,
    anchor_confirmations: Annotated[
        int,
        typer.Option(help="Bitcoin confirmations an anchor transaction needs before it is posted."),
    ] = DEFAULT_CONFIRMATIONS,
    anchor_stuck_after: Annotated[
        float | None,
        typer.Option(
            help="Seconds an anchor transaction may wait unmined before its block is sent again"
            " at twice the fee rate (up to 4 transactions; default: an hour, or 6 intervals).",
        ),
    ] = None,
    anchor_max_fee_rate: Annotated[
        int | None,
        typer.Option(
            help="The highest fee rate (satoshis per 1,000 vbytes) such a re-send may pay"
            " (default: no cap but the 4 transactions).",
        ),
    ] = None,
    identity_rate: Annotated[
        float, typer.Option(help="Messages per second one identity may sustain.")
    ] = IDENTITY_RATE,
    identity_burst: Annotated[
        float, typer.Option(help="Messages one identity may send at once above its rate.")
    ] = IDENTITY_BURST,
    connection_rate: Annotated[
        float, typer.Option(help="Messages per second one client connection may sustain.")
    ] = CONNECTION_RATE,
    connection_burst: Annotated[
        float, typer.Option(help="Messages one connection may send at once above its rate.")
    ] = CONNECTION_BURST,
    body_budget: Annotated[
        int,
        typer.Option(
            help="Bytes of request bodies held at once over all requests, counted as they"
            " arrive; a body past it is refused (429, Retry-After) before more is read, and so"
            " is one past an eighth of it from one client address (an IPv6 /64 as one;"
            " loopback has no share). One body alone always passes.",
        ),
    ] = DEFAULT_BODY_BUDGET,
    body_idle_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds a request body may pause (nothing of it arriving) before it is"
            " refused (408 request_timeout) and its bytes given back; each such span of its"
            " arrival must also bring 8 KiB/s.",
        ),
    ] = BODY_IDLE_TIMEOUT_S,
    blob_grace: Annotated[
        float,
        typer.Option(
            help="Seconds a stored blob that no logged message names (a doc's `blob`) is kept;"
            " storing it again restarts them."
        ),
    ] = DEFAULT_GRACE_S,
    blob_pending_limit: Annotated[
        int,
        typer.Option(
            help="Bytes of such unnamed blobs held at once; more are refused (429) until"
            " some are named or swept, and so are more than 100,000 of them, whatever their"
            " size."
        ),
    ] = DEFAULT_PENDING_LIMIT,
    replay_cache: Annotated[
        int,
        typer.Option(
            help="Signed inbox requests remembered to refuse replays, each for 2 minutes"
            " (~290 bytes each, up to ~650 with long nonces from many identities). When full,"
            " an identity holding more than a thousandth of it loses its older half and is"
            " refused (429) for up to 61 s, not the others. Past half full, a client address"
            " (an IPv6 /64; loopback counts as none) whose identities hold a hundredth of it"
            " is refused (429) more. If the cache fills all the same, every new signed"
            " request is refused until entries expire.",
        ),
    ] = DEFAULT_MAX_NONCES,
    require_content_digest: Annotated[
        bool,
        typer.Option(
            help="Refuse a signed request with a body (an inbox ack) whose signature does not"
            " cover its Content-Digest (RFC 9530; the SDK's POST acks always do; acks on an inbox"
            " stream are frames of a stream whose opening was signed). Off: the signature"
            ' may cover ("@method" "@path" "@query") alone, as DESIGN §8 has it.'
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option(help="Log warnings only.")] = False,
) -> None:
    """Run a node: HTTP API on HOST:PORT, data in DATA (embedded SQLite by default)."""
    import uvicorn

    from chainmail.api import Limits, create_app

    store_path = _sqlite_path(store, "store")
    log_path = _sqlite_path(log, "log")
    if admission not in ("open", "attested"):
        raise Error(
            f"--admission: expected open or attested, got {admission}", code="invalid_format"
        )
    for ident in registrar or ():
        if not is_feed_id(ident):
            raise Error(f"--registrar: not a feed id: {ident}", code="invalid_format")
    witnesses = tuple(dict.fromkeys(witness or ()))
    for ident in witnesses:
        if not is_feed_id(ident):
            raise Error(f"--witness: not a feed id: {ident}", code="invalid_format")
    if threshold is not None and not witnesses:
        raise Error("--threshold needs at least one --witness", code="invalid_format")
    if threshold is not None and not 1 <= threshold <= len(witnesses):
        raise Error(
            f"--threshold: expected 1 to {len(witnesses)} (the witnesses), got {threshold}",
            code="invalid_format",
        )
    if admission == "attested" and not registrar:
        raise Error("--admission attested needs at least one --registrar", code="invalid_format")
    if verify_nice not in VERIFY_NICE_RANGE:
        raise Error(f"--verify-nice: expected 0 to 19, got {verify_nice}", code="invalid_format")
    if synchronous.upper() not in ("FULL", "NORMAL"):
        raise Error(
            f"--synchronous: expected FULL or NORMAL, got {synchronous}", code="invalid_format"
        )
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not 0 < port < 65536:
        raise Error(f"--port: expected 1 to 65535, got {port}", code="invalid_format")
    if not 0 < block_interval < math.inf:  # inf: a node that never makes a block
        raise Error(
            f"--block-interval: expected a positive number of seconds, got {block_interval}",
            code="invalid_format",
        )
    if workers is not None and workers < 0:
        raise Error(f"--workers: expected 0 or more, got {workers}", code="invalid_format")
    for name, value in (
        ("identity-rate", identity_rate),
        ("connection-rate", connection_rate),
        ("identity-burst", identity_burst),
        ("connection-burst", connection_burst),
        ("body-idle-timeout", body_idle_timeout),
    ):
        if not value > 0:  # NaN too
            raise Error(f"--{name}: expected a positive number, got {value}", code="invalid_format")
    if body_budget < 1:
        raise Error(
            f"--body-budget: expected 1 or more bytes, got {body_budget}", code="invalid_format"
        )
    if replay_cache < 1:
        raise Error(
            f"--replay-cache: expected 1 or more requests, got {replay_cache}",
            code="invalid_format",
        )
    if not 0 < blob_grace < math.inf:
        raise Error(
            f"--blob-grace: expected a positive number of seconds, got {blob_grace}",
            code="invalid_format",
        )
    if blob_pending_limit < 0:
        raise Error(
            f"--blob-pending-limit: expected 0 or more bytes, got {blob_pending_limit}",
            code="invalid_format",
        )
    anchor = _anchor_config(
        anchor_bitcoin,
        anchor_wallet,
        anchor_interval,
        anchor_confirmations,
        anchor_stuck_after,
        anchor_max_fee_rate,
    )
    listener = _listen(host, port)
    with listener:
        node = Node(
            NodeConfig(
                data_dir=data,
                log_path=log_path,
                store_path=store_path,
                block_interval=block_interval,
                pipelines=pipelines,
                workers=workers,
                verify_nice=verify_nice,
                synchronous=synchronous.upper(),
                admission="attested" if admission == "attested" else "open",
                registrars=tuple(registrar or ()),
                witnesses=witnesses,
                threshold=threshold,
                identity_rate=identity_rate,
                identity_burst=identity_burst,
                anchor=anchor,
                blob_grace=blob_grace,
                blob_pending_limit=blob_pending_limit,
            )
        )
        typer.echo(f"chainmail node {node.id}\n  data {data.resolve()}\n  http://{host}:{port}")
        config = uvicorn.Config(
            create_app(
                node,
                limits=Limits(
                    connection_rate=connection_rate,
                    connection_burst=connection_burst,
                    body_budget=body_budget,
                    body_idle_timeout=body_idle_timeout,
                    signed_requests=replay_cache,
                ),
                require_content_digest=require_content_digest,
            ),
            host=host,
            port=port,
            log_level="warning" if quiet else "info",
            ws_max_size=16 * 1024 * 1024,
            timeout_graceful_shutdown=5,
        )
        server = _server_class()(config, node)
        server.run(sockets=[listener])
    if not server.started:  # the node failed to start: its error is in the log above
        raise typer.Exit(3)


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, that first tells the node's followers to end on Ctrl-C or
        SIGTERM: an idle `GET /v1/firehose?follow=true` held shutdown for its whole
        graceful timeout, and its follower was cut off mid-body."""

        def __init__(self, config: uvicorn.Config, node: Node) -> None:
            super().__init__(config)
            self._node = node

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            loop = self._node.loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._node.begin_closing)
            super().handle_exit(sig, frame)

    return Server
