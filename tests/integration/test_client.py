"""The SDK against a real node (``chainmail serve`` subprocess): no mocks.

Tampering is done on real answers: an httpx transport wraps the real one and
changes one character of a proof, record, message, block or checkpoint, to
show that verification trusts nothing the node says.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from chainmail import checkpoint, merkle, ssb
from chainmail.client import AsyncClient, Client, NodeUnavailable, Receipt
from chainmail.errors import Error, InvalidMessage, NotFound, ProofError, RateLimited, Rejected
from chainmail.ids import blob_id
from chainmail.keys import Keypair
from chainmail.verify import VerificationFailed
from support.tcpcut import forwarding

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

UNKNOWN_TX = "%" + base64.b64encode(hashlib.sha256(b"no such tx").digest()).decode() + ".sha256"


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``probe`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def sealed(client: Client, tx: str) -> dict[str, Any]:
    info: dict[str, Any] = wait_for(
        f"tx {tx} in a block", lambda: (t := client.tx(tx))["block"] and t
    )
    return info


@pytest.fixture
def alice(node_url: str) -> Iterator[Client]:
    with Client(node_url, Keypair.generate()) as client:
        yield client


@pytest.fixture
def bob(node_url: str) -> Iterator[Client]:
    with Client(node_url, Keypair.generate()) as client:
        yield client


# --------------------------------------------------------------------------- tampering


Mutator = Callable[[bytes], bytes]


class Tamper(httpx.BaseTransport):
    """Forwards to the real node; rewrites the body of the first answer whose path matches."""

    def __init__(self, match: Callable[[str], bool], mutate: Mutator) -> None:
        self._inner = httpx.HTTPTransport()
        self._match = match
        self._mutate = mutate
        self.hits = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        path = request.url.raw_path.decode("ascii").split("?")[0]
        if self.hits or not self._match(path) or response.status_code >= 400:
            return response
        self.hits += 1
        body = self._mutate(response.read())
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return httpx.Response(response.status_code, headers=headers, content=body)

    def close(self) -> None:
        self._inner.close()


def flip_b64(text: str) -> str:
    """Change the first base64 character: the text still decodes, to other bytes."""
    return ("B" if text[0] == "A" else "A") + text[1:]


def edit_json(edit: Callable[[dict[str, Any]], None]) -> Mutator:
    def mutate(body: bytes) -> bytes:
        value = orjson.loads(body)
        edit(value)
        return orjson.dumps(value)

    return mutate


def flip_checkpoint_root(body: bytes) -> bytes:
    lines = body.decode().split("\n")
    lines[2] = flip_b64(lines[2])
    return "\n".join(lines).encode()


# --------------------------------------------------------------------------- a settled trade


@dataclass(frozen=True)
class Settled:
    alice: Keypair
    bob: Keypair
    tx: str
    note: Receipt
    block: int


@pytest.fixture(scope="module")
def settled(node_url: str) -> Settled:
    """A tx between alice and bob: opened, noted, finished by both, sealed in a block."""
    a, b = Keypair.generate(), Keypair.generate()
    with Client(node_url, a) as alice, Client(node_url, b) as bob:
        tx = alice.open_tx([b.id], timedelta(minutes=5), subject="trade 42", data={"qty": 10})
        note = alice.note(tx, {"px": 101})
        alice.finish(tx)
        bob.finish(tx, {"ok": True})
        info = sealed(alice, tx)
        assert info["status"] == "finished"
        # Let one more block seal the next log entries, so a block h-1 → h exists.
        bob.publish({"type": "post", "text": "after"})
        wait_for("a later block", lambda: alice.blocks(info["block"]))
        return Settled(a, b, tx, note, info["block"])


def test_tx_lifecycle_verifies(node_url: str, settled: Settled) -> None:
    with Client(node_url) as client:
        info = client.tx(settled.tx)
        assert info["status"] == "finished"
        assert info["parties"][:2] == [settled.alice.id, settled.bob.id]
        assert len(info["messages"]) == 4
        report = client.verify_tx(settled.tx)
    assert report.ok
    names = [c.check for c in report]
    for expected in (
        "node identity",
        "tx sealed",
        "record inclusion",
        "tx record",
        "message 4/4 inclusion",
        "checkpoint 0 consistency",
    ):
        assert expected in names
    assert all(ok for _, ok, _ in report)


def test_verify_message_and_block(node_url: str, settled: Settled) -> None:
    with Client(node_url) as client:
        health = client.health()
        report = client.verify_message(settled.note.id, node_id=health["id"])
        assert report.ok
        assert "pinned" in report.checks[0].detail
        assert [c.check for c in report][-2:] == [
            "checkpoint 0 signature",
            "checkpoint 0 consistency",
        ]
        latest = client.blocks(settled.block)[-1]["height"]
        for height in {1, settled.block, latest}:
            block_report = client.verify_block(height)
            assert block_report.ok
        names = [c.check for c in client.verify_block(latest)]
        assert f"blocks {latest - 1}→{latest} consistency" in names
        assert client.verify_checkpoint(0).ok
        # The raw material, for checks of one's own (comparing endpoints, gossip).
        cp = checkpoint.verify_checkpoint(client.checkpoint(0), health["verifier_key"])
        first = client.block(1)["message"]["content"]["logs"][0]
        old_size, old_root = int(first["size"]), base64.b64decode(first["root"])
        assert 0 < old_size < cp.size  # block 2 at least was logged after block 1
        proof = client.consistency(0, old_size, cp.size)
        merkle.verify_consistency(old_size, cp.size, proof, old_root, cp.root)
        with pytest.raises(ProofError):
            merkle.verify_consistency(old_size, cp.size, proof, old_root[::-1], cp.root)


class Counting(httpx.BaseTransport):
    """Forwards to the real node; counts the GETs of each path."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.gets: collections.Counter[str] = collections.Counter()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.gets[request.url.raw_path.decode("ascii").split("?")[0]] += 1
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def test_verifying_a_block_fetches_each_block_once(node_url: str, settled: Settled) -> None:
    """Block h's prev link needs block h−1's message, and h−1 is checked in turn
    (its own link needs h−2): each is fetched once all the same."""
    transport = Counting()
    with Client(node_url, transport=transport) as client:
        latest = client.blocks(settled.block)[-1]["height"]
        assert latest >= 2
        transport.gets.clear()
        assert client.verify_block(latest).ok
    fetched = {p: n for p, n in transport.gets.items() if p.startswith("/v1/blocks/")}
    heights = [h for h in (latest, latest - 1, latest - 2) if h >= 1]
    assert fetched == {f"/v1/blocks/{h}": 1 for h in heights}


def test_verification_pins_the_node(node_url: str, settled: Settled) -> None:
    impostor = Keypair.generate().id
    with (
        Client(node_url, node_id=impostor) as client,
        pytest.raises(VerificationFailed, match="pinned") as failed,
    ):
        client.verify_message(settled.note.id)
    assert failed.value.report.checks[-1] == failed.value.report.checks[0]
    assert not failed.value.report.ok


TAMPERING: dict[str, tuple[str, Callable[[str], bool], Mutator, str]] = {
    "message content": (
        "message",
        lambda p: p.startswith("/v1/messages/") and not p.endswith("/proof"),
        edit_json(lambda v: v["message"]["content"]["data"].update(px=102)),
        "message",
    ),
    "inclusion proof": (
        "message",
        lambda p: p.endswith("/proof") and p.startswith("/v1/messages/"),
        edit_json(lambda v: v["proof"].__setitem__(0, flip_b64(v["proof"][0]))),
        "log inclusion",
    ),
    "proof root": (
        "message",
        lambda p: p.endswith("/proof") and p.startswith("/v1/messages/"),
        edit_json(lambda v: v.update(root=flip_b64(v["root"]))),
        "log inclusion",
    ),
    "block signature": (
        "block",
        lambda p: p.startswith("/v1/blocks/"),
        edit_json(
            lambda v: v["message"]["content"].update(time=v["message"]["content"]["time"] + 1)
        ),
        "signature",
    ),
    "block records": (
        "block",
        lambda p: p.startswith("/v1/blocks/"),
        edit_json(lambda v: v["records"][0].update(closed=v["records"][0]["closed"] + 1)),
        "records",
    ),
    "record proof": (
        "tx",
        lambda p: "/records/" in p,
        edit_json(lambda v: v["record"].update(status="timed_out")),
        "record inclusion",
    ),
    "tx message": (
        "tx",
        lambda p: p.startswith("/v1/messages/") and not p.endswith("/proof"),
        edit_json(lambda v: v["message"].update(timestamp=v["message"]["timestamp"] + 1)),
        "message 1/4",
    ),
    "tx terms": (
        "tx",
        lambda p: p.startswith("/v1/transactions/"),
        edit_json(lambda v: v.update(deadline=v["deadline"] + 3_600_000)),
        "tx terms",
    ),
    "checkpoint": (
        "block",
        lambda p: p.endswith("/checkpoint"),
        flip_checkpoint_root,
        "checkpoint 0 signature",
    ),
    "consistency proof": (
        "block+1",
        lambda p: p.endswith("/consistency"),
        edit_json(lambda v: v["proof"].__setitem__(0, flip_b64(v["proof"][0]))),
        "consistency",
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampered_answers_fail_verification(node_url: str, settled: Settled, case: str) -> None:
    kind, match, mutate, failing = TAMPERING[case]
    transport = Tamper(match, mutate)
    with Client(node_url, transport=transport) as client, pytest.raises(ProofError) as failed:
        if kind == "message":
            client.verify_message(settled.note.id)
        elif kind == "tx":
            client.verify_tx(settled.tx)
        elif kind == "block":
            client.verify_block(settled.block)
        else:
            client.verify_block(settled.block + 1)
    assert transport.hits == 1, "the tampering never happened"
    assert isinstance(failed.value, VerificationFailed)
    last = failed.value.report.checks[-1]
    assert not last.ok
    assert failing in last.check
    # The same verification passes untouched: only the flipped character failed it.
    with Client(node_url) as client:
        if kind == "message":
            assert client.verify_message(settled.note.id).ok
        elif kind == "tx":
            assert client.verify_tx(settled.tx).ok


class Forge(httpx.BaseTransport):
    """Forwards to the real node, but answers the paths in ``answers`` itself."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self._inner = httpx.HTTPTransport()
        self._answers = answers
        self.hits: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.decode("ascii").split("?")[0]
        if path in self._answers:
            self.hits.append(path)
            return httpx.Response(200, json=self._answers[path])
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def test_a_tx_message_proven_under_a_block_the_node_forged_later_fails(tmp_path: Path) -> None:
    from urllib.parse import quote

    from chainmail import blocks
    from chainmail.node import load_identity
    from support.server import running

    with running(tmp_path / "node") as node:
        a, b = Keypair.generate(), Keypair.generate()
        with Client(node.url, a) as alice, Client(node.url, b) as bob:
            tx = alice.open_tx([b.id], timedelta(minutes=5))
            note = alice.note(tx, {"px": 101})
            alice.finish(tx)
            bob.finish(tx)
            sealed(alice, tx)
            latest = alice.blocks(0)[-1]
            node_id = alice.health()["id"]
        # The node signs one more block, over a log of the note alone: a proof
        # of the note under it checks out, on a log that is not the log.
        keys = load_identity(node.data / "node-secret.json")
        height, leaf = int(latest["height"]) + 1, blocks.message_leaf(note.id)
        blob, root = blocks.encode_records([])
        content = blocks.block_content(
            height=height,
            prev=latest["id"],
            time=int(time.time() * 1000),
            logs=[blocks.LogCheckpoint(0, 1, leaf)],
            records=[],
            records_blob_id=blob_id(blob),
            records_root=root,
        )
        state = ssb.FeedState(latest["id"], latest["message"]["sequence"])
        forged = ssb.create(keys, content, state, content["time"])
        forged_id = ssb.message_id(forged)
        forge = Forge(
            {
                f"/v1/blocks/{height}": {
                    "height": height,
                    "id": forged_id,
                    "message": forged,
                    "records": [],
                },
                f"/v1/messages/{quote(note.id, safe='')}/proof": {
                    "id": note.id,
                    "pipeline": 0,
                    "index": 0,
                    "size": 1,
                    "root": base64.b64encode(leaf).decode(),
                    "proof": [],
                    "block": {"height": height, "id": forged_id},
                },
            }
        )
        with (
            Client(node.url, transport=forge, node_id=node_id) as client,
            pytest.raises(VerificationFailed, match="that seals the tx") as failed,
        ):
            client.verify_tx(tx)
        assert len(forge.hits) == 2, forge.hits
        assert "in the tx's block" in failed.value.report.checks[-1].check
        with Client(node.url, node_id=node_id) as honest:
            assert honest.verify_tx(tx).ok


def test_a_tx_record_out_of_log_order_fails_even_signed_by_the_node(tmp_path: Path) -> None:
    from urllib.parse import quote

    from chainmail import blocks
    from chainmail.node import load_identity
    from support.server import running

    with running(tmp_path / "node") as node:
        a, b = Keypair.generate(), Keypair.generate()
        with Client(node.url, a) as alice, Client(node.url, b) as bob:
            tx = alice.open_tx([b.id], timedelta(minutes=5))
            alice.note(tx, {"px": 101})
            alice.finish(tx)
            bob.finish(tx)
            info = sealed(alice, tx)
            latest = alice.blocks(0)[-1]
            node_id = alice.health()["id"]
            checkpoint_now = checkpoint.Checkpoint.from_text(
                alice.checkpoint(0).split("\n\n")[0] + "\n"
            )
            record = alice.block(info["block"])["records"][0]
        # The node re-signs the tx's record with the two finishes (one each, so
        # each feed's order holds) swapped, in a block of its own over the real
        # log: all signed, all proven, only the log order betrays it.
        keys = load_identity(node.data / "node-secret.json")
        forged_record = dict(record, messages=[record["messages"][i] for i in (0, 1, 3, 2)])
        height = int(latest["height"]) + 1
        blob, root = blocks.encode_records([forged_record])
        content = blocks.block_content(
            height=height,
            prev=latest["id"],
            time=int(time.time() * 1000),
            logs=[blocks.LogCheckpoint(0, checkpoint_now.size, checkpoint_now.root)],
            records=[forged_record],
            records_blob_id=blob_id(blob),
            records_root=root,
        )
        state = ssb.FeedState(latest["id"], latest["message"]["sequence"])
        forged = ssb.create(keys, content, state, content["time"])
        forged_id = ssb.message_id(forged)
        summary = {
            **alice_tx_summary(node.url, tx),
            "messages": forged_record["messages"],
            "block": height,
        }
        forge = Forge(
            {
                f"/v1/transactions/{quote(tx, safe='')}": summary,
                f"/v1/blocks/{height}": {
                    "height": height,
                    "id": forged_id,
                    "message": forged,
                    "records": [forged_record],
                },
                f"/v1/blocks/{height}/records/{quote(tx, safe='')}/proof": {
                    "tx": tx,
                    "record": forged_record,
                    "index": 0,
                    "count": 1,
                    "root": base64.b64encode(root).decode(),
                    "proof": [],
                },
            }
        )
        with (
            Client(node.url, transport=forge, node_id=node_id) as client,
            pytest.raises(VerificationFailed, match="not in log order"),
        ):
            client.verify_tx(tx)
        assert len(forge.hits) >= 3, forge.hits


def test_a_message_outside_its_author_s_pipeline_fails(tmp_path: Path) -> None:
    # A feed's messages are in one pipeline, hash(author) mod P: a node that
    # places one elsewhere (here: says it has one pipeline, while the message
    # is proven in log 1) splits the feed's order, and verify says so.
    from urllib.parse import quote

    from support.server import running

    with running(tmp_path / "p2", extra=("--pipelines", "2")) as node:
        for _ in range(64):
            with Client(node.url, Keypair.generate()) as author:
                posted = author.publish({"type": "post", "text": "where am I"})
            if posted.pipeline == 1:
                break
        assert posted.pipeline == 1
        with Client(node.url) as reader:
            wait_for("a block covering it", lambda: reader.blocks(0))
            proof = f"{node.url}/v1/messages/{quote(posted.id, safe='')}/proof"
            wait_for("its proof", lambda: httpx.get(proof).is_success)
            assert reader.verify_message(posted.id).ok
            health = reader.health()
        forge = Forge({"/healthz": {**health, "pipelines": 1}})
        with (
            Client(node.url, transport=forge) as client,
            pytest.raises(VerificationFailed, match="messages go to log 0 of the node's 1"),
        ):
            client.verify_message(posted.id)


def alice_tx_summary(url: str, tx: str) -> dict[str, Any]:
    with Client(url) as reader:
        return reader.tx(tx)


def test_listing_transactions_pages_through_a_batch_opened_at_once(
    alice: Client, bob: Client
) -> None:
    deadline = int(time.time() * 1000) + 300_000
    opens = [
        alice.sign({"type": "tx/open", "parties": [alice.id, bob.id], "deadline": deadline})
        for _ in range(5)
    ]
    assert all(isinstance(r, Receipt) for r in alice.submit_batch(opens))
    seen: list[str] = []
    page = alice.transactions(party=alice.id, limit=2)
    while page:
        seen.extend(t["tx"] for t in page)
        page = alice.transactions(party=alice.id, limit=2, after=page[-1]["tx"])
    assert sorted(seen) == sorted(ssb.message_id(m) for m in opens) and len(seen) == 5
    with pytest.raises(NotFound):
        alice.transactions(after="%" + "A" * 43 + "=.sha256")


def test_a_tx_no_block_holds_yet_has_nothing_to_verify(alice: Client, bob: Client) -> None:
    tx = alice.open_tx([bob.id], timedelta(minutes=5))
    # Not a failed proof (nothing was tampered with): not found in any block yet.
    with pytest.raises(NotFound, match="'open' and in no block yet") as caught:
        alice.verify_tx(tx)
    assert not isinstance(caught.value, ProofError)


# --------------------------------------------------------------------------- publishing


def test_submit_twice_is_idempotent(alice: Client) -> None:
    msg = alice.sign({"type": "post", "text": "hello"})
    first = alice.submit(msg)
    again = alice.submit(msg)
    assert first.created and not again.created
    assert (first.id, first.pipeline, first.index) == (again.id, again.pipeline, again.index)
    assert first.id == ssb.message_id(msg)
    # The raw HTTP statuses behind them: 201, then 200 with the same body.
    with httpx.Client(base_url=alice.node) as http:
        resp = http.post("/v1/messages", content=ssb.stringify(msg))
    assert resp.status_code == 200
    assert resp.json() == {"id": first.id, "pipeline": first.pipeline, "index": first.index}


def test_offline_sign_then_sync(node_url: str, dead_url: str, tmp_path: Path) -> None:
    keys = Keypair.generate()
    with Client(dead_url, keys, feeds=tmp_path) as client:
        signed = [client.sign({"type": "post", "n": n}) for n in range(3)]
        assert [m["sequence"] for m in signed] == [1, 2, 3]
        assert signed[1]["previous"] == ssb.message_id(signed[0])
        with pytest.raises(NodeUnavailable, match="cannot reach"):
            client.sync()
    # A new process, the same feed copy on disk: it pushes the backlog in order.
    with Client(node_url, keys, feeds=tmp_path) as client:
        receipts = client.sync()
        assert [r.id for r in receipts] == [ssb.message_id(m) for m in signed]
        assert client.sync() == []
        head = client.head()
        assert head is not None and head.sequence == 3
    # Elsewhere (no local copy) the feed continues from the node's head.
    with Client(node_url, keys) as elsewhere:
        receipt = elsewhere.publish({"type": "post", "n": 3})
        assert elsewhere.message(receipt.id)["message"]["sequence"] == 4
    # And the first copy learns about it instead of forking the feed.
    with Client(node_url, keys, feeds=tmp_path) as client:
        receipt = client.publish({"type": "post", "n": 4})
        assert client.message(receipt.id)["message"]["sequence"] == 5


def test_two_copies_of_one_feed_file_chain_instead_of_forking(
    node_url: str, tmp_path: Path
) -> None:
    keys = Keypair.generate()
    with (
        Client(node_url, keys, feeds=tmp_path) as one,
        Client(node_url, keys, feeds=tmp_path) as two,
    ):
        signed = [one.sign({"type": "post", "n": 0}), two.sign({"type": "post", "n": 1})]
        signed.append(one.sign({"type": "post", "n": 2}))
        assert [m["sequence"] for m in signed] == [1, 2, 3]
        assert signed[2]["previous"] == ssb.message_id(signed[1])
        (path,) = tmp_path.glob("*.jsonl")
        with path.open("ab") as f:
            f.write(b'{"previous": "torn')  # a crash in the middle of an append
        signed.append(two.sign({"type": "post", "n": 3}))
        assert signed[3]["sequence"] == 4
        assert [r.id for r in one.sync()] == [ssb.message_id(m) for m in signed]
        assert two.sync() == []


def test_a_feed_file_rewritten_in_place_to_the_same_size_is_read_again(
    dead_url: str, tmp_path: Path
) -> None:
    """Another writer's rewrite may leave the file's inode and size as they were
    (a new file given the old inode number, messages of the same length): the
    lock file's generation still says it changed."""
    keys = Keypair.generate()
    with (
        Client(dead_url, keys, feeds=tmp_path) as one,
        Client(dead_url, keys, feeds=tmp_path) as two,
    ):
        one.sign({"type": "post", "text": "AAAA"})
        (path,) = tmp_path.glob("*.jsonl")
        before = path.stat()
        old = tmp_path / "old-inode"
        os.link(path, old)  # keeps the first inode for the rewrite below
        assert two.feed is not None
        two.feed.truncate(1)
        replaced = two.sign({"type": "post", "text": "BBBB"})  # the same length
        # The new content in the old inode, as a reused inode number would have it.
        with old.open("r+b") as f:
            f.write(path.read_bytes())
            f.truncate()
        old.replace(path)
        after = path.stat()
        assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
        later = one.sign({"type": "post", "text": "CCCC"})
        assert later["previous"] == ssb.message_id(replaced), "signed on a stale copy: a fork"


def test_a_refused_message_and_what_follows_leave_the_feed_together(
    alice: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another thread signing between the read of what goes and the cut: its message
    # must either stay or be handed back, never vanish.
    alice.sign({"type": "tx/note", "tx": UNKNOWN_TX, "data": {}})
    feed = alice.feed
    assert feed is not None
    truncate = feed.truncate
    signed: list[dict[str, Any]] = []

    def late_signer(sequence: int) -> int:
        worker = threading.Thread(target=lambda: signed.append(alice.sign({"type": "post"})))
        worker.start()
        worker.join(0.3)  # blocked by the held copy, or signed in the window
        return truncate(sequence)

    monkeypatch.setattr(feed, "truncate", late_signer)
    with pytest.raises(Rejected) as refused:
        alice.sync()
    monkeypatch.undo()
    deadline = time.monotonic() + 5
    while not signed:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    dropped = refused.value.dropped  # type: ignore[attr-defined]
    kept = [m["content"] for m in feed.after(0)]
    assert [c["type"] for c in dropped] == ["tx/note"]
    assert kept == [signed[0]["content"]], (
        "the other thread's message is kept, signed after the cut"
    )


def test_a_node_without_the_feed_refusing_what_another_took_drops_nothing(
    node_url: str, tmp_path: Path
) -> None:
    """The local copy remembers what a node accepted (``PATH.acked``): a second node
    that never had the feed refusing one of those (a tx only the first knows)
    drops none of them, in this process or the next."""
    from support.server import running

    dave = Keypair.generate()
    with Client(node_url, Keypair.generate()) as alice:
        tx = alice.open_tx([dave.id], timedelta(minutes=5))
    with Client(node_url, dave, feeds=tmp_path) as first:
        first.note(tx, {"seen": True})
        first.publish({"type": "post", "text": "accepted by the first node"})
    with (
        running(tmp_path / "other") as other,
        Client(other.url, dave, feeds=tmp_path) as second,  # a new process, as the CLI is
    ):
        # Not replayed there unasked: refused before anything is signed or sent.
        with pytest.raises(InvalidMessage, match="this is another node") as elsewhere:
            second.publish({"type": "post", "text": "to the other node"})
        assert elsewhere.value.code == "out_of_order"
        assert second.feed is not None
        assert [m["sequence"] for m in second.feed.after(0)] == [1, 2]
        # Replayed on purpose: the other node refuses the note of a tx only the first
        # knows, and nothing the first accepted is dropped.
        second.sign({"type": "post", "text": "to the other node"})
        with pytest.raises(Rejected, match="the local copy is kept") as refused:
            second.sync(replay=True)
        assert refused.value.code == "unknown_tx"
        assert refused.value.dropped == []  # type: ignore[attr-defined]
        assert [m["sequence"] for m in second.feed.after(0)] == [1, 2, 3]
    with Client(node_url, dave, feeds=tmp_path) as back:
        (receipt,) = back.sync()  # the first node takes the new one, chained on
        assert back.message(receipt.id)["message"]["sequence"] == 3


def test_refused_message_leaves_the_local_feed(alice: Client) -> None:
    alice.sign({"type": "tx/note", "tx": UNKNOWN_TX, "data": {}})
    alice.sign({"type": "post", "text": "chained to the refused one"})
    with pytest.raises(Rejected, match="dropped 2 unsent") as refused:
        alice.sync()
    assert refused.value.code == "unknown_tx"
    # Nothing is lost for good: what was dropped comes back, to sign again.
    dropped = refused.value.dropped  # type: ignore[attr-defined]
    assert [c["type"] for c in dropped] == ["tx/note", "post"]
    for content in dropped[1:]:
        alice.sign(content)
    (again,) = alice.sync()
    assert alice.message(again.id)["message"]["content"]["text"] == "chained to the refused one"
    receipt = alice.publish({"type": "post", "text": "fine"})
    assert alice.message(receipt.id)["message"]["sequence"] == 2


def test_submit_batch_reports_each_line(alice: Client, bob: Client) -> None:
    good = alice.sign({"type": "post", "n": 1})
    gap = ssb.create(bob.keys, {"type": "post"}, ssb.FeedState("%" + "A" * 43 + "=.sha256", 5), 1)  # type: ignore[arg-type]
    results = alice.submit_batch([good, gap, good])
    assert isinstance(results[0], Receipt) and results[0].created
    assert isinstance(results[1], InvalidMessage) and results[1].code == "out_of_order"
    assert isinstance(results[2], Receipt) and not results[2].created


# --------------------------------------------------------------------------- errors


def test_problem_documents_map_to_errors(
    alice: Client, bob: Client, node_url: str, dead_url: str
) -> None:
    with pytest.raises(Rejected) as exc:
        alice.note(UNKNOWN_TX, {"x": 1})
    assert exc.value.code == "unknown_tx"
    assert "unknown tx" in exc.value.detail

    tx = alice.open_tx([bob.id], timedelta(minutes=5), finish="any")
    with Client(node_url, Keypair.generate()) as eve:
        with pytest.raises(Rejected) as exc:
            eve.note(tx, {"x": 1})
        assert exc.value.code == "not_a_party"

    bob.finish(tx)
    with pytest.raises(Rejected) as exc:
        alice.note(tx, {"late": True})
    assert exc.value.code == "tx_closed"

    keys = Keypair.generate()
    first = ssb.create(keys, {"type": "post", "v": 1}, None, 1)
    other = ssb.create(keys, {"type": "post", "v": 2}, None, 1)
    alice.submit(first)
    with pytest.raises(InvalidMessage) as invalid:
        alice.submit(other)
    assert invalid.value.code == "fork"

    later = ssb.create(keys, {"type": "post"}, ssb.FeedState(ssb.message_id(first), 2), 1)
    with pytest.raises(InvalidMessage) as invalid:
        alice.submit(later)
    assert invalid.value.code == "out_of_order"

    forged = ssb.create(Keypair.generate(), {"type": "post", "v": 1}, None, 1)
    forged["content"]["v"] = 2
    with pytest.raises(InvalidMessage) as invalid:
        alice.submit(forged)
    assert invalid.value.code == "invalid_signature"

    with pytest.raises(NotFound):
        alice.tx(UNKNOWN_TX)
    with Client(dead_url) as nowhere, pytest.raises(NodeUnavailable):
        nowhere.health()
    assert issubclass(NodeUnavailable, Error)


# --------------------------------------------------------------------------- inbox


def test_inbox_over_http_with_ack_and_redelivery(alice: Client, bob: Client) -> None:
    tx = alice.open_tx([bob.id], timedelta(minutes=5))
    note = alice.note(tx, {"px": 1})
    entries = wait_for("two deliveries", lambda: len(e := bob.inbox()) == 2 and e)
    assert [e.id for e in entries] == [tx, note.id]
    assert entries[0].message["content"]["type"] == "tx/open"
    assert [e.id for e in bob.inbox()] == [tx, note.id]  # not acked: delivered again
    assert bob.ack([tx]) == 1
    assert [e.id for e in bob.inbox()] == [note.id]
    assert [e.id for e in bob.inbox_iter(follow=False)] == [note.id]
    assert bob.inbox() == []
    assert alice.inbox() == []  # an author never receives its own message


def test_inbox_stream_acks_and_redelivers_on_reconnect(alice: Client, bob: Client) -> None:
    tx = alice.open_tx([bob.id], timedelta(minutes=5))
    wait_for("the delivery", bob.inbox)

    stream = bob.inbox_iter(follow=True, ack=False)
    assert next(stream).id == tx
    stream.close()
    # Not acknowledged: a new connection gets it again.
    stream = bob.inbox_iter(follow=True, ack=True)
    assert next(stream).id == tx
    live = alice.note(tx, {"live": True})  # arrives on the open connection
    assert next(stream).id == live.id  # asking for it acked the first
    stream.close()
    wait_for("the ack", lambda: [e.id for e in bob.inbox()] == [live.id])


def test_an_inbox_stream_past_one_read_of_large_messages_sends_each_once_in_order(
    alice: Client, bob: Client
) -> None:
    """~7 KB messages: a read of the store stops at 256 KiB, so catching up takes
    several reads, and nothing is skipped or sent twice between them."""
    opened = [
        alice.open_tx([bob.id], timedelta(minutes=5), data={"pad": "x" * 7_000, "n": n})
        for n in range(60)
    ]
    wait_for("the deliveries", lambda: len(bob.inbox(100)) == 60)
    stream = bob.inbox_iter(follow=True, ack=False)
    got = [next(stream).id for _ in range(60)]
    stream.close()
    assert got == opened


def test_a_followed_inbox_goes_on_across_a_dropped_stream(
    alice: Client, bob: Client, node_url: str
) -> None:
    """A stream reset under the consumer (a proxy, a keepalive timeout): the
    iterator opens another, gives each entry once, and the one being handled
    when it dropped is acknowledged on the new stream."""
    tx = alice.open_tx([bob.id], timedelta(minutes=5))
    notes = [alice.note(tx, {"n": n}).id for n in range(4)]
    wait_for("the deliveries", lambda: len(bob.inbox()) == 5)
    with forwarding(node_url) as proxy, Client(f"http://127.0.0.1:{proxy.port}", bob.keys) as b:
        stream = b.inbox_iter(follow=True)
        got = [next(stream).id, next(stream).id]
        proxy.cut()  # while the second is being handled
        notes.append(alice.note(tx, {"after": "the cut"}).id)  # only a new stream brings it
        got += [next(stream).id for _ in range(4)]
        assert proxy.accepted == 2
        stream.close()
    assert got == [tx, *notes]
    # Acked, all but the last: it was being handled when the iterator closed.
    wait_for("the acks", lambda: [e.id for e in bob.inbox()] == notes[-1:])


def test_async_inbox_goes_on_across_a_dropped_stream(
    alice: Client, bob: Client, node_url: str
) -> None:
    tx = alice.open_tx([bob.id], timedelta(minutes=5))
    wait_for("the delivery", lambda: len(bob.inbox()) == 1)
    notes: list[str] = []

    async def scenario(port: int, cut: Callable[[], None]) -> list[str]:
        got: list[str] = []
        async with AsyncClient(f"http://127.0.0.1:{port}", bob.keys) as b:
            async for entry in b.inbox_iter():
                got.append(entry.id)
                if len(got) == 1:
                    cut()
                    # Sent after the cut: only a new stream can bring them.
                    notes.extend(alice.note(tx, {"n": n}).id for n in range(2))
                if len(got) == 3:
                    break
        return got

    with forwarding(node_url) as proxy:
        assert asyncio.run(scenario(proxy.port, proxy.cut)) == [tx, *notes]
        assert proxy.accepted == 2
    wait_for("the acks", lambda: [e.id for e in bob.inbox()] == notes[-1:])


def test_closing_a_followed_inbox_with_frames_queued_is_prompt(alice: Client, bob: Client) -> None:
    # More entries than the client queues (16) stop it reading the socket: the
    # node's close frame is never read, and websockets waited 10 s for it.
    tx = alice.open_tx([bob.id], timedelta(minutes=5))
    alice.submit_batch(
        [alice.sign({"type": "tx/note", "tx": tx, "data": {"n": n}}) for n in range(200)]
    )
    wait_for("the deliveries", lambda: len(bob.inbox(300)) == 201)
    stream = bob.inbox_iter(follow=True, ack=False)
    next(stream)
    time.sleep(0.5)  # the rest arrive and fill the queue
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 5


def test_async_client_streams_submissions_and_inbox(node_url: str) -> None:
    async def scenario() -> None:
        async with (
            AsyncClient(node_url, Keypair.generate()) as a,
            AsyncClient(node_url, Keypair.generate()) as b,
        ):
            tx = await a.open_tx([b.id], timedelta(minutes=5))
            msgs = [a.sign({"type": "tx/note", "tx": tx, "data": {"n": n}}) for n in range(20)]
            results = [r async for r in a.submit_stream(msgs)]
            assert all(isinstance(r, Receipt) and r.created for r in results)
            assert [r.id for r in results if isinstance(r, Receipt)] == [
                ssb.message_id(m) for m in msgs
            ]
            assert await a.sync() == []  # the stream's messages count as sent
            seen = []
            async for entry in b.inbox_iter():
                seen.append(entry.id)
                if len(seen) == 21:
                    break
            assert seen[0] == tx
            assert (await a.verify_checkpoint()).ok
            text = await a.checkpoint()
            assert text.startswith((await a.health())["origin"] + "/0\n")
            assert await a.consistency(0, 1, 1) == []
            blob = await a.put_blob(b"async bytes")
            assert await b.get_blob(blob) == b"async bytes"

    asyncio.run(scenario())


# --------------------------------------------------------------------------- firehose


def test_the_firehose_reads_past_unicode_line_separators_in_a_message(alice: Client) -> None:
    # U+2028, U+2029 and U+0085 stand unescaped in JSON: one line each on the wire,
    # which a reader splitting text at every Unicode line break cut in two.
    receipts = [alice.publish({"type": "post", "text": f"a{c}b"}) for c in "\u2028\u2029\x85"]
    entries = [e for e in alice.firehose(receipts[0].index) if e.message["author"] == alice.id]
    assert [e.id for e in entries] == [r.id for r in receipts]
    assert entries[0].message["content"]["text"] == "a\u2028b"

    async def scenario() -> list[str]:
        async with AsyncClient(alice.node) as client:
            got = [e async for e in client.firehose(receipts[0].index)]
            return [e.id for e in got if e.message["author"] == alice.id]

    assert asyncio.run(scenario()) == [r.id for r in receipts]


def test_firehose_resumes_from_an_index(alice: Client) -> None:
    receipts = [alice.publish({"type": "post", "n": n}) for n in range(3)]
    start = receipts[1].index
    entries = list(alice.firehose(start))
    assert entries[0].index == start
    assert [e.index for e in entries] == list(range(start, start + len(entries)))
    ours = [e.id for e in entries if e.message["author"] == alice.id]
    assert ours == [r.id for r in receipts[1:]]

    follow = alice.firehose(receipts[-1].index + 1, follow=True)
    later: list[Receipt] = []
    publisher = threading.Timer(0.3, lambda: later.append(alice.publish({"type": "post"})))
    publisher.start()
    try:
        for entry in follow:
            if entry.message["author"] == alice.id:
                break
    finally:
        follow.close()
        publisher.join()
    assert entry.id == later[0].id


# --------------------------------------------------------------------------- blobs


def test_blobs_are_hash_checked(alice: Client, node_url: str, tmp_path: Path) -> None:
    data = b"settlement instructions v1"
    bid = alice.put_blob(data)
    assert bid == blob_id(data)
    assert alice.get_blob(bid) == data

    swap = Tamper(lambda p: p.startswith("/v1/blobs/"), lambda body: body.replace(b"v1", b"v2"))
    with Client(node_url, transport=swap) as client, pytest.raises(ProofError, match=bid):
        client.get_blob(bid)

    doc = tmp_path / "terms.txt"
    doc.write_bytes(b"terms and conditions")
    receipt = alice.notarise(doc)
    content = alice.message(receipt.id)["message"]["content"]
    assert content == {
        "type": "doc",
        "blob": blob_id(doc.read_bytes()),
        "size": 20,
        "name": "terms.txt",
        "mime": "text/plain",
    }
    assert alice.get_blob(content["blob"]) == b"terms and conditions"


def test_a_notarised_document_verifies_sync_and_async(
    alice: Client, node_url: str, tmp_path: Path
) -> None:
    doc = tmp_path / "isda.txt"
    doc.write_bytes(b"ISDA master agreement, schedule v3")
    receipt = alice.notarise(doc)
    deadline = time.monotonic() + 30
    while True:
        try:
            report = alice.verify_document(doc, receipt.id)
            break
        except NotFound:  # no block covers it yet
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert report.ok and "document" in [c.check for c in report]

    async def run() -> None:
        async with AsyncClient(node_url) as client:
            assert (await client.verify_document(doc, receipt.id)).ok
            with pytest.raises(VerificationFailed, match="hashes to"):
                await client.verify_document(b"ISDA master agreement, schedule v4", receipt.id)

    asyncio.run(run())


class _CorruptGzip(httpx.BaseTransport):
    """Answers everything with a body that says gzip and is not."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-encoding": "gzip"}, content=b"\x1f\x8bnot gzip at all"
        )


def test_an_answer_that_cannot_be_decoded_is_a_proof_error_not_a_traceback() -> None:
    with Client("http://node.invalid", transport=_CorruptGzip()) as client:
        with pytest.raises(ProofError, match="cannot be decoded"):
            client.health()
        with pytest.raises(ProofError, match="cannot be decoded"):
            client.verify_checkpoint(0)


def test_an_answer_that_never_ends_is_refused_not_held(tmp_path: Path) -> None:
    """A server that answers 200 and sends ``{}`` lines for ever: the SDK stops at
    its answer limit with one of its errors instead of filling the memory."""
    import socketserver

    class Endless(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            self.wfile.write(b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"{}\n" * 20_000
            frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
            with contextlib.suppress(OSError):
                while True:
                    self.wfile.write(frame)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Endless)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with Client(url) as client, pytest.raises(Error, match="an answer of more than"):
            client.health()

        async def scenario() -> None:
            async with AsyncClient(url) as client:
                await client.health()

        with pytest.raises(Error, match="an answer of more than"):
            asyncio.run(scenario())
    finally:
        server.shutdown()
        server.server_close()


def test_answers_of_something_that_is_not_a_node_are_not_believed() -> None:
    """Another server answering {} to everything: no tx with status None, no empty inbox."""
    empty = httpx.MockTransport(lambda request: httpx.Response(200, json={}))
    with Client("http://node.invalid", Keypair.generate(), transport=empty) as client:
        with pytest.raises(ProofError, match="no such transaction"):
            client.tx(UNKNOWN_TX)
        with pytest.raises(ProofError, match="expected a list of entries"):
            client.inbox()
        with pytest.raises(Error, match="expected a list of blocks"):
            client.blocks()


def test_a_stream_handshake_refused_for_the_rate_is_rate_limited_as_on_http(
    tmp_path: Path,
) -> None:
    """The inbox stream's 429 surfaced as a bare OperationalError: the type callers back
    off on (and its Retry-After) is the HTTP path's."""
    from support.server import running

    keys = Keypair.generate()
    with (
        running(tmp_path / "node", extra=("--replay-cache", "10")) as node,
        Client(node.url, keys) as client,
    ):
        for _ in range(20):  # one identity fills the replay cache with signed reads
            try:
                client.inbox()
            except RateLimited:
                break
        else:
            pytest.fail("the replay cache never refused")
        with pytest.raises(RateLimited) as refused:
            next(iter(client.inbox_iter(follow=True)))
    assert refused.value.retry_after >= 1.0
    assert "/v1/inbox/stream" in str(refused.value)
