"""The SDK against a node that lies in the shape of its answers.

Real answers are recorded from a real node (a settled trade, a notarised
document, a sealed block), then replayed to the SDK with one change: a value
somewhere in one answer is removed or replaced by one of another type or out
of range (a missing key, null, a string for a number, a huge integer, an
empty list...). Whatever the change, every call must either succeed or raise
one of chainmail's own errors (``chainmail.errors.Error``: a one-line
refusal), never a ``KeyError``, ``TypeError``, ``AttributeError`` or the like
from deep inside: a client that crashes on a malformed answer is one a
hostile node can steer.

Each call's answers are mutated at every JSON path (lists cut to their ends)
with every replacement (~11,300 runs in all, ~10 s); a text answer (the
checkpoint) has each line removed, replaced or doubled. The same for
``AsyncClient``, a seeded sample of 300 a call (its driver is its own, the
flows are shared). Set ``CHAINMAIL_HOSTILE_CASES=N`` to try a seeded sample
of N a call instead.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest

from chainmail.client import AsyncClient, Client, MemoryFeed
from chainmail.errors import Error
from chainmail.keys import Keypair
from support.mutations import (
    Answer,
    Key,
    Recorder,
    changes,
    not_recorded,
    request_key,
    wait_for,
)
from support.server import running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

#: Mutations tried a call at most (0: all of them); a seeded sample beyond.
CASES = int(os.environ.get("CHAINMAIL_HOSTILE_CASES", "0"))


@dataclass
class Recording:
    """The real node's answers to each call, by request, and what the calls need to know.

    Kept a call apart: a call that writes (a publish, an ack) makes the node seal
    a block, and answers recorded on either side of it (a checkpoint, a proof
    under the block before) do not fit together in one replay.
    """

    answers: dict[str, dict[Key, Answer]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    alice: Keypair = field(default_factory=Keypair.generate)
    bob: Keypair = field(default_factory=Keypair.generate)


class Liar(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Answers from a recording, changing the ``which``-th answer with ``change``."""

    def __init__(
        self, answers: dict[Key, Answer], which: int = -1, change: Callable[[bytes], bytes] = bytes
    ) -> None:
        self._answers = answers
        self._which = which
        self._change = change
        self.served: list[tuple[Key, Answer]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        key = request_key(request)
        answer = self._answers.get(key)
        if answer is None and request.method == "POST":
            # A signed POST (an ack) or a submission: its recorded answer for the path.
            answer = next(
                (
                    a
                    for k, a in self._answers.items()
                    if k[0] == "POST" and k[1].split("?")[0] == key[1].split("?")[0]
                ),
                None,
            )
        if answer is None:
            answer = not_recorded(key)
        status, headers, body = answer
        if len(self.served) == self._which:
            body = self._change(body)
        self.served.append((key, answer))
        return httpx.Response(status, headers=headers, content=body)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return self.handle_request(request)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    rec = Recording()
    document = b"NDA between Alice and Bob\n"
    with running(tmp_path_factory.mktemp("node")) as server:
        with (
            Client(server.url, rec.alice) as alice,
            Client(server.url, rec.bob) as bob,
        ):
            tx = alice.open_tx([rec.alice.id, rec.bob.id], timedelta(minutes=5), finish="all")
            alice.note(tx, {"offer": "1000 MEGA at 12.50 USD"})
            bob.note(tx, {"ok": True})
            alice.finish(tx)
            bob.finish(tx)
            doc = alice.notarise(document, name="nda.txt", mime="text/plain")
            block = wait_for("the tx in a block", lambda: alice.tx(tx)["block"])
            wait_for("the document in a block", lambda: alice.message(doc.id)["block"] is not None)
            wait_for("a proof", lambda: _proof_ready(alice, doc.id))
            height = int(block)  # a tx's block is its height
            size = int(alice.checkpoint(0).splitlines()[1])
            rec.facts = {
                "tx": tx,
                "doc": doc.id,
                "document": document,
                "height": height,
                "size": size,
                "blob": alice.message(doc.id)["message"]["content"]["blob"],
                "node": alice.health()["id"],
            }
        # Every call once against the real node, through the recorder.
        for name, call in CALLS.items():
            keys = rec.bob if name.startswith("inbox") or name == "ack" else rec.alice
            with Client(
                server.url,
                keys,
                feed=MemoryFeed(),
                clock=_clock,
                transport=Recorder(rec.answers.setdefault(name, {})),
            ) as client:
                try:
                    call(client, rec.facts)
                except Error as exc:
                    pytest.fail(f"{name} against the real node: {exc}")
    yield rec


def _clock() -> int:
    """The same time for every run, so that a call signs the same message each time."""
    return 1_790_000_000_000


def _proof_ready(client: Client, msg_id: str) -> bool:
    try:
        client.verify_message(msg_id)
    except Error:
        return False
    return True


# Each takes a Client or an AsyncClient (whose methods return awaitables).
CALLS: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "health": lambda c, f: c.health(),
    "message": lambda c, f: c.message(f["tx"]),
    "head": lambda c, f: c.head(),
    "tx": lambda c, f: c.tx(f["tx"]),
    "transactions": lambda c, f: c.transactions(party=c.id),
    "block": lambda c, f: c.block(f["height"]),
    "blocks": lambda c, f: c.blocks(),
    "checkpoint": lambda c, f: c.checkpoint(0),
    "consistency": lambda c, f: c.consistency(0, 1, f["size"]),
    "inbox": lambda c, f: c.inbox(),
    "inbox_iter": lambda c, f: list(c.inbox_iter(follow=False, ack=False)),
    "ack": lambda c, f: c.ack([f["tx"]]),
    "firehose": lambda c, f: list(c.firehose(0)),
    "get_blob": lambda c, f: c.get_blob(f["blob"]),
    "publish": lambda c, f: c.publish({"type": "post", "text": "hello"}),
    "verify_message": lambda c, f: c.verify_message(f["doc"]),
    "verify_message_pinned": lambda c, f: c.verify_message(f["doc"], node_id=f["node"]),
    "verify_document": lambda c, f: c.verify_document(f["document"], f["doc"]),
    "verify_tx": lambda c, f: c.verify_tx(f["tx"]),
    "verify_block": lambda c, f: c.verify_block(f["height"]),
    "verify_checkpoint": lambda c, f: c.verify_checkpoint(0),
}


async def _call_async(client: AsyncClient, name: str, facts: dict[str, Any]) -> object:
    if name == "firehose":
        return [e async for e in client.firehose(0)]
    if name == "inbox_iter":
        return [e async for e in client.inbox_iter(follow=False, ack=False)]
    return await CALLS[name](client, facts)


#: The async client shares the flows; a sample of each call's changes checks its driver.
ASYNC_CASES = 300


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_malformed_answer_is_refused_with_one_of_our_errors(
    recording: Recording, name: str, kind: str
) -> None:
    call = CALLS[name]
    keys = recording.bob if name.startswith("inbox") or name == "ack" else recording.alice

    def run(transport: Liar) -> BaseException | None:
        try:
            if kind == "sync":
                with Client(
                    "http://node.invalid",
                    keys,
                    feed=MemoryFeed(),
                    clock=_clock,
                    transport=transport,
                ) as c:
                    call(c, recording.facts)
            else:
                asyncio.run(run_async(transport))
        except Exception as exc:  # one of ours, or what this test is for
            return exc
        return None

    async def run_async(transport: Liar) -> None:
        async with AsyncClient(
            "http://node.invalid", keys, feed=MemoryFeed(), clock=_clock, transport=transport
        ) as c:
            await _call_async(c, name, recording.facts)

    honest = Liar(recording.answers[name])
    assert run(honest) is None, f"{name} fails on the recorded answers"
    cases = [
        (i, label, change)
        for i, (_, answer) in enumerate(honest.served)
        for label, change in changes(answer[2])
    ]
    assert cases
    most = ASYNC_CASES if kind == "async" and not CASES else CASES
    if most and len(cases) > most:
        cases = random.Random(name).sample(cases, most)
    crashes = []
    for i, label, change in cases:
        outcome = run(Liar(recording.answers[name], i, change))
        if outcome is not None and not isinstance(outcome, Error):
            path = honest.served[i][0][1]
            crashes.append(f"answer {i} ({path}) {label}: {type(outcome).__name__}: {outcome}")
    assert not crashes, f"{len(crashes)} of {len(cases)}:\n" + "\n".join(crashes[:40])
