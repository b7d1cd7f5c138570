"""``chainmail.verify``'s node identity check, fed a ``/healthz`` by hand."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from chainmail import checkpoint
from chainmail.keys import Keypair
from chainmail.verify import NodeInfo, _Checks, _node_info_flow

ORIGIN = "chainmail.test/node"


def _health() -> tuple[dict[str, Any], list[str]]:
    node = Keypair.generate()
    witnesses: list[str] = [Keypair.generate().id for _ in range(3)]
    health: dict[str, Any] = {
        "id": node.id,
        "origin": ORIGIN,
        "verifier_key": checkpoint.verifier_key(ORIGIN, node.public),
        "pipelines": 1,
        "witnesses": witnesses,
        "threshold": 2,
    }
    return health, witnesses


def _identity(health: dict[str, Any], **pins: Any) -> tuple[NodeInfo, str]:
    checks = _Checks("node", None)
    flow = _node_info_flow(checks, None, **pins)
    next(flow)
    with pytest.raises(StopIteration) as done:
        flow.send(httpx.Response(200, content=orjson.dumps(health)))
    info: NodeInfo = done.value.value
    return info, checks.report.checks[0].detail


def test_each_pin_is_said_pinned_only_when_given() -> None:
    health, witnesses = _health()
    # The witnesses pinned alone: the threshold is still /healthz's word, not a pin.
    _, detail = _identity(health, witnesses=witnesses)
    assert "3 witness(es) (pinned), threshold 2 (as /healthz reports it)" in detail
    _, detail = _identity(health, threshold=2)
    assert "3 witness(es) (as /healthz reports them), threshold 2 (pinned)" in detail
    info, detail = _identity(health, witnesses=witnesses[::-1], threshold=2)
    assert "3 witness(es) (pinned), threshold 2 (pinned)" in detail
    assert info.threshold == 2 and sorted(info.witnesses) == sorted(witnesses)


@pytest.mark.parametrize("pipelines", [0, -1])
def test_a_healthz_with_no_pipelines_is_a_proof_failure_not_a_crash(pipelines: int) -> None:
    """Messages are placed by ``pipeline_of(author, pipelines)``: 0 divided by zero."""
    from chainmail.errors import ProofError

    health, _ = _health()
    health["pipelines"] = pipelines
    checks = _Checks("node", None)
    flow = _node_info_flow(checks, None)
    next(flow)
    with pytest.raises(ProofError, match="pipelines: expected 1 or more"):
        flow.send(httpx.Response(200, content=orjson.dumps(health)))
