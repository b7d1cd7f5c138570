"""An argument of the wrong type or shape is refused by name, before anything is sent or signed.

Each case runs against ``Client`` and ``AsyncClient``, both with a transport
that records every request (and a node URL nothing listens on, for the
WebSocket calls): a case passes only when the call raises the expected error,
its message starts with the argument's name, no request went out and the
local feed is still empty.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import orjson
import pytest

from chainmail import ssb
from chainmail.client import (
    AsyncClient,
    Client,
    FileFeed,
    MemoryFeed,
    Receipt,
    read_document,
)
from chainmail.errors import InvalidMessage
from chainmail.ids import blob_id
from chainmail.keys import Keypair

#: Nothing listens on port 9 (discard): a request that got out would fail, not hang.
DEAD = "http://127.0.0.1:9"
KEYS = Keypair.from_seed(bytes(32))
FEED = Keypair.from_seed(bytes([1]) * 32).id
MSG = "%" + base64.b64encode(hashlib.sha256(b"a message").digest()).decode() + ".sha256"
BLOB = "&" + base64.b64encode(hashlib.sha256(b"a blob").digest()).decode() + ".sha256"
SIGNED = ssb.create(KEYS, {"type": "post"}, None, 1)
SOON = timedelta(minutes=5)


@dataclass
class Recorder:
    """An httpx transport (sync and async) that records each request and answers 503."""

    seen: list[httpx.Request] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        return httpx.Response(503, json={"code": "storage", "detail": "recorded"})


def _label(value: Any) -> str:
    """A short, stable name for an argument in a test id."""
    named = {"FEED": FEED, "MSG": MSG, "BLOB": BLOB, "SIGNED": SIGNED, "SOON": SOON}
    for name, known in named.items():
        if value is known:
            return name
    if isinstance(value, list):
        return "[" + ", ".join(map(_label, value)) + "]"
    if isinstance(value, Iterator):
        return "iter(…)"
    return repr(value)[:20]


@dataclass(frozen=True)
class Case:
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    error: type[Exception]
    name: str


def case(
    method: str, *args: Any, error: type[Exception] = TypeError, says: str, **kwargs: Any
) -> Any:
    """A call that must raise ``error`` saying ``says: expected …``, as a pytest param."""
    shown = [*map(_label, args), *(f"{k}={_label(v)}" for k, v in kwargs.items())]
    return pytest.param(Case(method, args, kwargs, error, says), id=f"{method}({', '.join(shown)})")


#: Calls both clients refuse alike.
SHARED = [
    # publishing
    case("publish", 123, says="content"),
    case("publish", None, says="content"),
    case("sign", ["type", "post"], says="content"),
    case("sign", {"type": "post"}, timestamp="1", says="timestamp"),
    case("sign", {"type": "post"}, timestamp=True, says="timestamp"),
    case("sign", {"type": "post"}, timestamp=-1, error=InvalidMessage, says="timestamp"),
    case("submit", "a message", says="msg"),
    case("submit", None, says="msg"),
    case("submit_batch", SIGNED, says="msgs"),
    case("submit_batch", "messages", says="msgs"),
    case("submit_batch", [SIGNED, 1], says="msgs[1]"),
    # transactions
    case("open_tx", FEED, SOON, says="parties"),
    case("open_tx", FEED.encode(), SOON, says="parties"),
    case("open_tx", None, SOON, says="parties"),
    case("open_tx", [FEED, None], SOON, says="parties[1]"),
    case("open_tx", ["@abc.ed25519"], SOON, error=InvalidMessage, says="parties[0]"),
    case("open_tx", [FEED], None, says="deadline"),
    case("open_tx", [FEED], 1.5e12, says="deadline"),
    case("open_tx", [FEED], True, says="deadline"),
    case("open_tx", [FEED], "10m", says="deadline"),
    case("open_tx", [FEED], -1, error=InvalidMessage, says="deadline"),
    case("open_tx", [FEED], SOON, finish=None, says="finish"),
    case("open_tx", [FEED], SOON, finish=["all"], says="finish"),
    case("open_tx", [FEED], SOON, finish="some", error=InvalidMessage, says="finish"),
    case("open_tx", [FEED], SOON, subject=42, says="subject"),
    case("open_tx", [FEED], SOON, data=[("px", 1)], says="data"),
    case("note", None, {}, says="tx"),
    case("note", 7, {}, says="tx"),
    case("note", "abc", {}, error=InvalidMessage, says="tx"),
    case("note", MSG, None, says="data"),
    case("note", MSG, "px=1", says="data"),
    case("note", MSG, {}, FEED, says="to"),
    case("note", MSG, {}, [1], says="to[0]"),
    case("note", MSG, {}, ["bob"], error=InvalidMessage, says="to[0]"),
    case("finish", None, says="tx"),
    case("finish", MSG, "done", says="data"),
    case("tx", None, says="tx_id"),
    case("tx", 42, says="tx_id"),
    case("tx", "abc", error=InvalidMessage, says="tx_id"),
    case("transactions", party=1, says="party"),
    case("transactions", party="alice", error=InvalidMessage, says="party"),
    case("transactions", status=1, says="status"),
    case("transactions", status="closed", error=InvalidMessage, says="status"),
    case("transactions", limit="10", says="limit"),
    case("transactions", limit=True, says="limit"),
    case("transactions", limit=0, error=InvalidMessage, says="limit"),
    case("transactions", after=1, says="after"),
    case("transactions", after=FEED, error=InvalidMessage, says="after"),
    # reads
    case("blocks", "0", says="after"),
    case("blocks", -1, error=InvalidMessage, says="after"),
    case("blocks", 0, True, says="limit"),
    case("blocks", 0, 0, error=InvalidMessage, says="limit"),
    case("checkpoint", "0", says="pipeline"),
    case("checkpoint", False, says="pipeline"),
    case("checkpoint", -1, error=InvalidMessage, says="pipeline"),
    case("consistency", "0", 1, 2, says="pipeline"),
    case("consistency", 0, None, 2, says="size1"),
    case("consistency", 0, 1, 2.0, says="size2"),
    case("consistency", 0, 0, 2, error=InvalidMessage, says="size1"),
    case("consistency", 0, 5, 3, error=InvalidMessage, says="size2"),
    case("block", None, says="height"),
    case("block", "1", says="height"),
    case("block", True, says="height"),
    case("block", -1, error=InvalidMessage, says="height"),
    case("message", None, says="msg_id"),
    case("message", b"%abc", says="msg_id"),
    case("message", "abc", error=InvalidMessage, says="msg_id"),
    case("head", 123, says="author"),
    case("head", "alice", error=InvalidMessage, says="author"),
    # inbox
    case("inbox", "1", says="limit"),
    case("inbox", 0, error=InvalidMessage, says="limit"),
    case("ack", MSG, says="ids"),
    case("ack", None, says="ids"),
    case("ack", [MSG, None], says="ids[1]"),
    case("ack", ["abc"], error=InvalidMessage, says="ids[0]"),
    case("inbox_iter", ack="yes", says="ack"),
    case("firehose", "0", says="start"),
    case("firehose", -1, error=InvalidMessage, says="start"),
    case("firehose", pipeline=True, says="pipeline"),
    case("firehose", follow="no", says="follow"),
    # blobs and documents
    case("put_blob", "text", says="data"),
    case("put_blob", None, says="data"),
    case("get_blob", None, says="bid"),
    case("get_blob", MSG, error=InvalidMessage, says="bid"),
    case("notarise", 123, says="document"),
    case("notarise", b"%PDF", name=1, says="name"),
    case("notarise", b"%PDF", mime=b"text/plain", says="mime"),
    case("notarise", b"%PDF", tx=1, says="tx"),
    case("notarise", b"%PDF", tx="abc", error=InvalidMessage, says="tx"),
    # channels
    case("open_channel", FEED, says="members"),
    case("open_channel", [1], says="members[0]"),
    case("open_channel", ["bob"], error=InvalidMessage, says="members[0]"),
    case("open_channel", [FEED], tx=1, says="tx"),
    case("open_channel", [FEED], label=1, says="label"),
    case("channel_send", None, {}, says="chan"),
    case("channel_send", "abc", {}, error=InvalidMessage, says="chan"),
    case("channel_send", MSG, "hello", says="data"),
    case("channel_read", None, says="chan"),
    case("channel_read", BLOB, error=InvalidMessage, says="chan"),
    case("channel_send_document", None, b"%PDF", says="chan"),
    case("channel_send_document", MSG, 123, says="document"),
    case("channel_send_document", MSG, b"%PDF", name=1, says="name"),
    case("channel_document", None, MSG, says="chan"),
    case("channel_document", MSG, None, says="msg_id"),
    case("channel_share", MSG, FEED, says="readers"),
    case("channel_share", None, [FEED], says="chan"),
    case("channel_share", MSG, [1], says="readers[0]"),
    # verification
    case("verify_message", None, says="msg_id"),
    case("verify_message", MSG, node_id=1, says="node_id"),
    case("verify_message", MSG, node_id="node", error=InvalidMessage, says="node_id"),
    case("verify_document", 123, MSG, says="document"),
    case("verify_document", b"%PDF", None, says="msg_id"),
    case("verify_tx", None, says="tx_id"),
    case("verify_tx", MSG, node_id=b"@node", says="node_id"),
    case("verify_block", "1", says="height"),
    case("verify_block", -1, error=InvalidMessage, says="height"),
    case("verify_block", 1, anchor="no", says="anchor"),
    case("verify_block", 1, witnesses=FEED, says="witnesses"),
    case("verify_block", 1, witnesses=["w"], error=InvalidMessage, says="witnesses[0]"),
    case("verify_block", 1, threshold="1", says="threshold"),
    case("verify_block", 1, threshold=0, error=InvalidMessage, says="threshold"),
    case("verify_block", 1, bitcoin=8332, says="bitcoin"),
    case("verify_checkpoint", "0", says="pipeline"),
    case("verify_checkpoint", 0, node_id=1, says="node_id"),
]

SYNC_ONLY = [
    case("inbox_iter", follow="no", says="follow"),
    case("inbox_iter", follow=False, limit="1", says="limit"),
    case("verify_message", MSG, progress="dots", says="progress"),
    case("verify_block", 1, progress=1, says="progress"),
]

ASYNC_ONLY = [
    case("submit_stream", SIGNED, says="msgs"),
    case("submit_stream", "messages", says="msgs"),
    case("submit_stream", None, says="msgs"),
]


def _refused(c: Case, caught: pytest.ExceptionInfo[Exception]) -> None:
    assert type(caught.value) is c.error, caught.value
    message = str(caught.value)
    assert re.match(rf"{re.escape(c.name)}: expected ", message), message
    assert "\n" not in message


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    assert recorder.seen == [], "a request went out for a refused call"


@pytest.mark.parametrize("c", SHARED + SYNC_ONLY)
def test_client_refuses(c: Case, recorder: Recorder) -> None:
    feed = MemoryFeed()
    with Client(DEAD, KEYS, feed=feed, transport=recorder.transport()) as client:
        with pytest.raises(c.error) as caught:
            result = getattr(client, c.method)(*c.args, **c.kwargs)
            if inspect.isgenerator(result):
                next(result)
        _refused(c, caught)
    assert feed.head() is None, "a refused call appended to the local feed"


@pytest.mark.parametrize("c", SHARED + ASYNC_ONLY)
def test_async_client_refuses(c: Case, recorder: Recorder) -> None:
    feed = MemoryFeed()

    async def run() -> pytest.ExceptionInfo[Exception]:
        async with AsyncClient(DEAD, KEYS, feed=feed, transport=recorder.transport()) as client:
            with pytest.raises(c.error) as caught:
                result = getattr(client, c.method)(*c.args, **c.kwargs)
                if inspect.isasyncgen(result):
                    await anext(result)
                else:
                    await result
            return caught

    _refused(c, asyncio.run(run()))
    assert feed.head() is None, "a refused call appended to the local feed"


def test_every_public_method_taking_arguments_has_cases() -> None:
    methods = {
        name
        for cls in (Client, AsyncClient)
        for name, value in vars(cls).items()
        if callable(value) and not name.startswith("_")
    }
    methods.add("sign")  # on the core both share (from_keystore: tested below)
    covered = {p.values[0].method for p in SHARED + SYNC_ONLY + ASYNC_ONLY}
    assert methods - covered == {"close", "aclose", "health", "sync"}


# --------------------------------------------------------------------------- constructors


CONSTRUCTOR = [
    pytest.param({"node": 123}, TypeError, "node", id="node=123"),
    pytest.param({"node": b"http://node"}, TypeError, "node", id="node=bytes"),
    pytest.param({"keys": "alice"}, TypeError, "keys", id="keys=str"),
    pytest.param({"feeds": 123}, TypeError, "feeds", id="feeds=123"),
    pytest.param({"feed": "feeds/alice.jsonl"}, TypeError, "feed", id="feed=str"),
    pytest.param({"node_id": 123}, TypeError, "node_id", id="node_id=123"),
    pytest.param({"node_id": "node"}, InvalidMessage, "node_id", id="node_id=bad"),
    pytest.param({"hmac_key": "key"}, TypeError, "hmac_key", id="hmac_key=str"),
    pytest.param({"hmac_key": b"short"}, InvalidMessage, "hmac_key", id="hmac_key=short"),
    pytest.param({"timeout": "5"}, TypeError, "timeout", id="timeout=str"),
    pytest.param({"timeout": True}, TypeError, "timeout", id="timeout=True"),
    pytest.param({"clock": 1_700_000_000_000}, TypeError, "clock", id="clock=int"),
]


@pytest.mark.parametrize("cls", [Client, AsyncClient])
@pytest.mark.parametrize(("kwargs", "error", "name"), CONSTRUCTOR)
def test_a_bad_constructor_argument_is_refused(
    cls: type[Client] | type[AsyncClient],
    kwargs: dict[str, Any],
    error: type[Exception],
    name: str,
    tmp_path: Path,
) -> None:
    arguments: dict[str, Any] = {"node": DEAD, "keys": KEYS, "feeds": tmp_path / "feeds"}
    with pytest.raises(error) as caught:
        cls(**(arguments | kwargs))
    _refused(Case("__init__", (), kwargs, error, name), caught)
    assert not (tmp_path / "feeds").exists(), "a refused client made its feed directory"


def test_the_node_url_that_is_not_a_string_names_the_argument() -> None:
    with pytest.raises(TypeError, match=r"^node: expected a string or None, got int$"):
        Client(123)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cls", "kind"),
    [(Client, httpx.AsyncHTTPTransport), (AsyncClient, httpx.HTTPTransport), (Client, str)],
)
def test_a_transport_of_the_other_kind_is_refused(
    cls: type[Client] | type[AsyncClient], kind: type
) -> None:
    transport = kind()
    with pytest.raises(TypeError, match=r"^transport: expected an httpx\.\w+ or None, got "):
        cls(DEAD, transport=transport)


@pytest.mark.parametrize("cls", [Client, AsyncClient])
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        pytest.param({"name": 123}, "name", id="name=123"),
        pytest.param({"name": "alice", "passphrase": 123}, "passphrase", id="passphrase=123"),
        pytest.param({"name": "alice", "home": 123}, "home", id="home=123"),
    ],
)
def test_from_keystore_refuses_a_bad_argument(
    cls: type[Client] | type[AsyncClient], kwargs: dict[str, Any], name: str
) -> None:
    with pytest.raises(TypeError) as caught:
        cls.from_keystore(**kwargs)
    _refused(Case("from_keystore", (), kwargs, TypeError, name), caught)


def test_a_single_party_says_to_put_it_in_a_list() -> None:
    with Client(DEAD, KEYS) as client, pytest.raises(TypeError) as caught:
        client.open_tx(FEED, SOON)  # a str is an Iterable[str]: mypy cannot say
    assert str(caught.value) == (
        "parties: expected an iterable of @….ed25519 feed ids, got a single str (put one in a list)"
    )


def test_tx_none_names_the_argument_and_the_type() -> None:
    with Client(DEAD, KEYS) as client, pytest.raises(TypeError) as caught:
        client.tx(None)  # type: ignore[arg-type]
    assert str(caught.value) == "tx_id: expected a %….sha256 message id string, got NoneType"


# --------------------------------------------------------------------------- what is still taken


def _node(request: httpx.Request) -> httpx.Response:
    """Just enough of a node for one publish: no feed head yet, and a receipt."""
    if request.method == "GET" and request.url.path.endswith("/head"):
        return httpx.Response(404, json={"code": "not_found", "detail": "no feed"})
    if request.method == "POST" and request.url.path == "/v1/messages":
        mid = ssb.message_id(orjson.loads(request.content))
        return httpx.Response(201, json={"id": mid, "pipeline": 0, "index": 0})
    return httpx.Response(503, json={"code": "storage", "detail": request.url.path})


def test_any_iterable_of_ids_and_any_mapping_is_taken() -> None:
    transport = httpx.MockTransport(_node)
    with Client(DEAD, KEYS, transport=transport) as client:
        tx = client.open_tx((p for p in [FEED]), SOON, data=MappingProxyType({"px": 1}))
        note = client.note(tx, {"px": 2}, to=(FEED,))
        assert client.feed is not None
        assert [m["content"]["type"] for m in client.feed.after(0)] == ["tx/open", "tx/note"]
        assert client.feed.after(0)[0]["content"]["parties"] == [KEYS.id, FEED]
        assert client.feed.after(1)[0]["content"]["to"] == [FEED]
        assert note.id == ssb.message_id(client.feed.after(1)[0])


def test_a_bad_note_after_good_ones_signs_nothing() -> None:
    transport = httpx.MockTransport(_node)
    with Client(DEAD, KEYS, transport=transport) as client:
        tx = client.open_tx([FEED], SOON)
        with pytest.raises(TypeError, match=r"^to: "):
            client.note(tx, {"px": 2}, to=FEED)
        assert client.feed is not None
        assert len(client.feed.after(0)) == 1


def test_what_httpx_and_python_take_as_the_same_thing_is_taken(tmp_path: Path) -> None:
    # A review of the checks found these refused: each is a usual way to say it.
    for timeout in (None, 5, 2.5, (5.0, 30.0, 30.0, 5.0), httpx.Timeout(3.0)):
        Client(DEAD, timeout=timeout).close()  # type: ignore[arg-type]
    with Client(DEAD, KEYS, hmac_key=bytearray(32)) as keyed:
        assert keyed.hmac_key == bytes(32)
    with Client(DEAD, KEYS, feeds=Path("~") / "feeds") as home:
        assert isinstance(home.feed, FileFeed)
    seen: list[httpx.Request] = []

    def node(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/blobs":
            return httpx.Response(201, json={"id": blob_id(request.content)})
        lines = request.content.splitlines()
        return httpx.Response(
            200,
            content=b"".join(
                orjson.dumps({"id": ssb.message_id(orjson.loads(line)), "pipeline": 0, "index": i})
                + b"\n"
                for i, line in enumerate(lines)
            ),
        )

    with Client(DEAD, KEYS, transport=httpx.MockTransport(node)) as client:
        (receipt,) = client.submit_batch({"one": SIGNED}.values())
        assert isinstance(receipt, Receipt) and receipt.id == ssb.message_id(SIGNED)
        (again,) = client.submit_batch(m for m in [SIGNED])
        assert isinstance(again, Receipt) and again.id == receipt.id
        for data in (bytearray(b"a blob"), memoryview(b"a blob")):
            assert client.put_blob(data) == BLOB
    assert [r.content for r in seen[-2:]] == [b"a blob", b"a blob"]
    assert read_document(bytearray(b"doc"), "n.txt", None) == (b"doc", "n.txt", None)


def test_the_async_client_takes_what_the_sync_one_takes() -> None:
    # Its verifications had no progress, its inbox_iter no follow or limit.
    for method in ("verify_message", "verify_document", "verify_tx", "verify_block"):
        sync = inspect.signature(getattr(Client, method)).parameters
        async_ = inspect.signature(getattr(AsyncClient, method)).parameters
        assert set(sync) == set(async_), method
    assert set(inspect.signature(Client.inbox_iter).parameters) == set(
        inspect.signature(AsyncClient.inbox_iter).parameters
    )
    assert "progress" in inspect.signature(Client.verify_checkpoint).parameters
    assert "progress" in inspect.signature(AsyncClient.verify_checkpoint).parameters
