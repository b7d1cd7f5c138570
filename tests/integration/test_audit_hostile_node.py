"""The auditor against a node that lies in the shape of its answers.

As ``test_client_hostile_node.py`` does for the SDK: a real node's answers
are recorded (a settled trade, a notarised document, blocks sealed by two
witnesses) while ``audit_node`` reads it, then replayed to ``audit_node``
with one change: a value somewhere in one answer is removed or replaced by
one of another type or out of range. Whatever the change, the audit must end
in a summary (its findings are what the lie looks like to an auditor) or in
one of chainmail's own errors (``chainmail.errors.Error``, which the command
line says in one line), never a ``KeyError``, ``TypeError`` or the like: an
auditor that crashes on a malformed answer says nothing about the node.

Each answer is mutated at every JSON path (lists cut to their ends; of the
firehose, the first line of each content type as well) with every
replacement; the checkpoint (text) has each line removed, replaced or
doubled. Two audits: alone, and pinned to the node's id with a mirror (the
mirror reads the same recording, so the change may reach either side). Set
``CHAINMAIL_HOSTILE_CASES=N`` to try a seeded sample of N a scenario instead.
Last, ``chainmail audit`` itself, in front of a proxy that tells one such
lie: one line on stderr and a non-zero exit, no traceback.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import httpx
import orjson
import pytest

from chainmail.audit import Finding
from chainmail.auditing import AuditSummary, audit_node
from chainmail.client import Client, MemoryFeed
from chainmail.errors import Error
from chainmail.keys import Keypair
from chainmail.verify import Report
from chainmail.witnessing import witness_node
from support.lying import Rewrite, lying
from support.mutations import (
    Answer,
    Change,
    Key,
    Path,
    Recorder,
    changes,
    dumps,
    json_paths,
    not_recorded,
    request_key,
    wait_for,
)
from support.server import CHAINMAIL, running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

#: Changes tried a scenario: 0, the default selection (see the module's docstring);
#: -1, every change of every answer; N, a seeded sample of N of those.
CASES = int(os.environ.get("CHAINMAIL_HOSTILE_CASES", "0"))
#: Changes of the answers ``verify_block`` reads, tried by default: it is the SDK's,
#: tried against every change by ``test_client_hostile_node``; these try the audit's
#: handling of what it raises.
VERIFY_CASES = 200
#: What read an answer: the audit itself, the SDK's ``verify_block`` for it, or the
#: comparison with a mirror (either side's answers).
Reader = Literal["audit", "verify", "compare"]

NODE = "http://node.invalid"
MIRROR_HOST = "mirror.invalid"


@dataclass
class Recording:
    """The real node's answers to an audit, by request; the node itself, still running."""

    url: str
    node_id: str
    answers: dict[Key, Answer] = field(default_factory=dict)


class Liar(httpx.BaseTransport):
    """Answers from a recording, changing the ``which``-th answer with ``change``.

    One liar may serve several clients (the node and a mirror): answers are
    counted across all of them, in the order they are asked for. Each answer
    served is kept with what read it (``Reader``).
    """

    def __init__(self, answers: dict[Key, Answer], which: int = -1, change: Change = bytes) -> None:
        self._answers = answers
        self._which = which
        self._change = change
        self.served: list[tuple[Key, Answer, Reader]] = []
        #: Inside ``Client.verify_block`` (``_Verifying``): the SDK's reads, not the auditor's.
        self.verifying = 0
        self._compared = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        key = request_key(request)
        answer = self._answers.get(key)
        if answer is None:
            answer = not_recorded(key)
        status, headers, body = answer
        if len(self.served) == self._which:
            body = self._change(body)
        # The first read of the mirror starts the comparison of the two.
        self._compared = self._compared or request.url.host == MIRROR_HOST
        reader: Reader = "verify" if self.verifying else "compare" if self._compared else "audit"
        self.served.append((key, answer, reader))
        return httpx.Response(status, headers=headers, content=body)


class _Verifying(Client):
    """A client that tells its liar which answers ``verify_block`` reads."""

    def __init__(self, node: str, liar: Liar, node_id: str | None = None) -> None:
        super().__init__(node, node_id=node_id, transport=liar)
        self._liar = liar

    def verify_block(self, *args: Any, **kwargs: Any) -> Report:
        self._liar.verifying += 1
        try:
            return super().verify_block(*args, **kwargs)
        finally:
            self._liar.verifying -= 1


def _all_sealed(reader: Client, witnesses: list[Client]) -> bool:
    """One round of each witness (signing what is ready); whether every block is sealed."""
    for witness in witnesses:
        witness_node(witness, rounds=1, grace=5.0)
    return all(reader.block(b["height"]).get("sealed") for b in reader.blocks())


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    keys = [Keypair.generate() for _ in range(4)]
    alice_keys, bob_keys, *witness_keys = keys
    extra = (*(a for w in witness_keys for a in ("--witness", w.id)), "--threshold", "2")
    with running(tmp_path_factory.mktemp("node"), extra=extra) as server:
        with (
            Client(server.url, alice_keys) as alice,
            Client(server.url, bob_keys) as bob,
        ):
            tx = alice.open_tx([alice_keys.id, bob_keys.id], timedelta(minutes=5), finish="all")
            alice.note(tx, {"offer": "1000 MEGA at 12.50 USD"})
            bob.note(tx, {"ok": True})
            alice.finish(tx)
            bob.finish(tx)
            wait_for("the tx in a block", lambda: alice.tx(tx)["block"])
            # In a block of its own: a chain of two, linked and consistent.
            doc = alice.notarise(b"NDA between Alice and Bob\n", name="nda.txt")
            wait_for("the document in a block", lambda: alice.message(doc.id)["block"] is not None)
            witnesses = [Client(server.url, k, feed=MemoryFeed()) for k in witness_keys]
            try:
                wait_for("every block sealed", lambda: _all_sealed(alice, witnesses))
            finally:
                for witness in witnesses:
                    witness.close()
            rec = Recording(server.url, str(alice.health()["id"]))
        # The audits once against the real node, through the recorder.
        for summary in (
            _audit(Client(server.url, transport=Recorder(rec.answers))),
            _audit_mirrored(
                Client(server.url, node_id=rec.node_id, transport=Recorder(rec.answers)),
                Client(server.url, transport=Recorder(rec.answers)),
                rec.node_id,
            ),
        ):
            assert summary.ok, [str(f) for f in summary.findings]
            assert summary.blocks >= 2 and summary.messages >= 10, summary
        yield rec


def _audit(client: Client) -> AuditSummary:
    with client:
        return audit_node(client, grace=0.0)


def _audit_mirrored(client: Client, mirror: Client, node_id: str) -> AuditSummary:
    with client, mirror:
        return audit_node(client, grace=0.0, node_id=node_id, mirrors=[mirror])


#: Each audits through one liar; the mirror (another endpoint) reads the same recording.
SCENARIOS: dict[str, Callable[[Liar, str], AuditSummary]] = {
    "alone": lambda liar, node_id: _audit(_Verifying(NODE, liar)),
    "pinned_and_mirrored": lambda liar, node_id: _audit_mirrored(
        _Verifying(NODE, liar, node_id), _Verifying(f"http://{MIRROR_HOST}", liar), node_id
    ),
}


def _signed(value: object) -> bool:
    """A signed message: a change anywhere in its content breaks its signature as a
    change of the content itself does (what reads it unverified reads no deeper)."""
    return isinstance(value, dict) and "signature" in value and "content" in value


def _value_paths(value: Any, *, deep: bool) -> Iterator[Path]:
    """Every path into a JSON value; into a signed message only its own fields, unless
    ``deep``."""
    return json_paths(value, stop=None if deep else _signed)


def _line_paths(lines: list[Any], *, deep: bool) -> Iterator[Path]:
    """Every path into NDJSON lines (the first and last), and into the first line of each
    content type (the firehose's tx/open, block, block/sign... each read its own way)
    the line's own fields (unless ``deep``, all of its paths too)."""
    ends = {0, len(lines) - 1}
    firsts: dict[str, int] = {}
    for i, line in enumerate(lines):
        message = line.get("message") if isinstance(line, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        firsts.setdefault(repr(content.get("type") if isinstance(content, dict) else content), i)
    for i in sorted(ends | set(firsts.values())):
        yield (i,)
        if deep or i in ends:
            for path in _value_paths(lines[i], deep=deep):
                yield (i, *path)
        elif isinstance(lines[i], dict):
            for k in lines[i]:
                yield (i, k)


def _changes(body: bytes, *, deep: bool) -> Iterator[tuple[str, Change]]:
    """Every change of one answer's body, with a label (see ``support.mutations``)."""
    return changes(
        body,
        lambda values, ndjson: (
            _line_paths(values, deep=deep) if ndjson else _value_paths(values[0], deep=deep)
        ),
    )


Case = tuple[int, str, Change]


def _cases(scenario: str, served: list[tuple[Key, Answer, Reader]]) -> list[Case]:
    """The changes a scenario tries: all of them with ``CASES``, else those of the answers
    the auditor reads itself, and a sample of those ``verify_block`` reads."""
    if CASES:
        every = [
            (i, label, change)
            for i, (_, answer, _) in enumerate(served)
            for label, change in _changes(answer[2], deep=True)
        ]
        return every if CASES < 0 else random.Random(scenario).sample(every, min(CASES, len(every)))
    # Mirrored, the audit reads what it reads alone: only the first /healthz (read
    # pinned) and the comparison are its own.
    own: set[Reader] = {"audit"} if scenario == "alone" else {"compare"}
    cases: list[Case] = []
    verified: list[Case] = []
    for i, (_, answer, reader) in enumerate(served):
        some = [(i, label, change) for label, change in _changes(answer[2], deep=False)]
        if reader in own or i == 0:
            cases += some
        elif reader == "verify" and scenario == "alone":
            verified += some
    return cases + random.Random(scenario).sample(verified, min(VERIFY_CASES, len(verified)))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_malformed_answer_is_a_finding_or_one_of_our_errors(
    recording: Recording, scenario: str
) -> None:
    audit = SCENARIOS[scenario]

    def run(liar: Liar) -> AuditSummary | BaseException:
        try:
            return audit(liar, recording.node_id)
        except Exception as exc:  # one of ours, or what this test is for
            return exc

    honest = Liar(recording.answers)
    summary = run(honest)
    assert isinstance(summary, AuditSummary) and summary.ok, f"{scenario}: {summary}"
    cases = _cases(scenario, honest.served)
    assert cases
    crashes = []
    for i, label, change in cases:
        outcome = run(Liar(recording.answers, i, change))
        if isinstance(outcome, AuditSummary):
            assert all(
                isinstance(f, Finding) and isinstance(f.detail, str) for f in outcome.findings
            )
        elif not isinstance(outcome, Error):
            path = honest.served[i][0][1]
            crashes.append(f"answer {i} ({path}) {label}: {type(outcome).__name__}: {outcome}")
    assert not crashes, f"{len(crashes)} of {len(cases)}:\n" + "\n".join(crashes[:60])


def _json_rewrite(edit: Callable[[Any], Any]) -> Rewrite:
    def rewrite(status: int, ctype: str, body: bytes) -> tuple[int, str, bytes]:
        return status, ctype, dumps(edit(orjson.loads(body)))

    return rewrite


def _audit_command(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHAINMAIL, "audit", "--node", url, "--grace", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_the_audit_command_says_a_malformed_answer_in_one_line(recording: Recording) -> None:
    # A block listed without its id: the SDK refuses the listing, the command says so.
    def no_id(value: Any) -> Any:
        for block in value["blocks"]:
            block.pop("id")
        return value

    with lying(recording.url, {"/v1/blocks": _json_rewrite(no_id)}) as url:
        run = _audit_command(url)
    assert run.returncode == 1 and run.stdout == "", (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chainmail: internal: "), run.stderr
    assert "expected a list of blocks" in lines[0], lines[0]


def test_the_audit_command_reports_a_lie_as_a_finding(recording: Recording) -> None:
    # Block 1 served without its records: the roots the audit computes do not match.
    def no_records(value: Any) -> Any:
        return {**value, "records": []}

    with lying(recording.url, {"/v1/blocks/1": _json_rewrite(no_records)}) as url:
        run = _audit_command(url)
    assert run.returncode == 1, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    findings = run.stdout.strip().splitlines()
    # Block 1 itself, block 2 (which covers it through its prev link), and the tx
    # the lie left out of every block's records.
    assert findings[0].startswith("block: block 1: block 1 records:"), run.stdout
    assert "the block says 1 records, 0 were given" in findings[0], findings[0]
    assert any(f.startswith("censored: tx ") for f in findings), run.stdout
    assert run.stderr.strip().endswith(f"{len(findings)} finding(s)"), run.stderr

    # The honest node through the same proxy: nothing found.
    with lying(recording.url, {}) as url:
        clean = _audit_command(url)
    assert clean.returncode == 0 and clean.stdout == "", (clean.stdout, clean.stderr)
