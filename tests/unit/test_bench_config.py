"""``BenchConfig.check``: settings that cannot run are the caller's input errors."""

from __future__ import annotations

from typing import Any

import pytest

from chainmail.bench import BenchConfig, BenchError


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"messages": 0}, "messages: expected at least 1, got 0"),
        ({"feeds": 1}, "feeds: expected at least 2, got 1"),
        ({"mode": "udp"}, "mode: expected http or ws, got 'udp'"),
        ({"batch": 0}, "batch, connections and window must be at least 1"),
        ({"connections": 0}, "batch, connections and window must be at least 1"),
        ({"window": 0}, "batch, connections and window must be at least 1"),
        ({"half_load_share": 1.0}, "half_load_share: expected 0 ≤ x < 1, got 1.0"),
        ({"half_load_share": -0.1}, "half_load_share: expected 0 ≤ x < 1, got -0.1"),
        ({"node_verify_nice": 20}, "node_verify_nice: expected 0 to 19, got 20"),
    ],
)
def test_a_setting_that_cannot_run_is_invalid_input(fields: dict[str, Any], said: str) -> None:
    with pytest.raises(BenchError) as caught:
        BenchConfig(**fields).check()
    assert caught.value.code == "invalid_format"
    assert caught.value.status == 400
    assert caught.value.detail == said


def test_the_defaults_run() -> None:
    BenchConfig().check()
    BenchConfig(half_load_share=0.0, node_verify_nice=0).check()
