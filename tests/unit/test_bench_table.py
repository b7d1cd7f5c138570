"""`chainmail bench`'s table prints what the node said as text, never as console markup."""

from __future__ import annotations

import io

from rich.console import Console

from chainmail.cli.bench import _table


def test_the_nodes_words_in_the_table_are_text_not_markup() -> None:
    figures = dict.fromkeys(
        [
            "mean_message_bytes",
            "msgs_per_s",
            "verify_ceiling_per_s",
            "ratio",
            "p50_ms",
            "p99_ms",
            "half_load_target_per_s",
            "half_load_msgs_per_s",
            "half_load_p50_ms",
            "half_load_p99_ms",
            "deliver_p50_ms",
            "deliver_p99_ms",
            "deliver_p99_full_load_ms",
            "blocks",
            "rss_mb",
            "rss_max_mb",
            "rss_with_workers_mb",
        ],
        None,
    )
    report = {
        **figures,
        "mode": "http",
        "connections": 32,
        "accepted": 10,
        "rejected": 1,
        "feeds": 4,
        "txs": 1,
        "load_messages": 10,
        "seconds": 1.0,
        "deliver_samples": 0,
        "rejected_codes": {"invalid_format": 1},
        "first_problem": "[bold red]x[/] [link=http://evil]click[/link]",
    }
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(_table(report))
    assert "[bold red]x[/] [link=http://evil]click[/link]" in out.getvalue()
