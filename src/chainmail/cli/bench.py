"""`chainmail bench` — measure ingest against the machine's ed25519 ceiling (DESIGN §9)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from chainmail.bench import (
    DEFAULT_BATCH,
    DEFAULT_CONNECTIONS,
    DEFAULT_FEEDS,
    DEFAULT_HALF_LOAD_SHARE,
    DEFAULT_MESSAGES,
    DEFAULT_WINDOW,
    BenchConfig,
    run,
)
from chainmail.cli._app import app

__all__ = ["bench"]


class ModeChoice(enum.StrEnum):
    http = "http"
    ws = "ws"


@app.command()
def bench(
    messages: Annotated[int, typer.Option(help="Messages to send.")] = DEFAULT_MESSAGES,
    feeds: Annotated[int, typer.Option(help="Identities trading (desks of 4).")] = DEFAULT_FEEDS,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    node: Annotated[
        str | None,
        typer.Option(help="Drive this node instead of starting a fresh one.", show_default=False),
    ] = None,
    mode: Annotated[
        ModeChoice, typer.Option(help="NDJSON batches over HTTP, or WebSocket frames.")
    ] = ModeChoice.http,
    batch: Annotated[int, typer.Option(help="Messages per HTTP batch.")] = DEFAULT_BATCH,
    connections: Annotated[int, typer.Option(help="Client connections.")] = DEFAULT_CONNECTIONS,
    window: Annotated[
        int, typer.Option(help="Unanswered WebSocket frames per connection.")
    ] = DEFAULT_WINDOW,
    half_load_share: Annotated[
        float, typer.Option(help="Share of traffic sent at half rate, for delivery latency.")
    ] = DEFAULT_HALF_LOAD_SHARE,
    synchronous: Annotated[
        str, typer.Option(help="Durability of the started node's log: FULL or NORMAL.")
    ] = "FULL",
    node_workers: Annotated[
        int | None,
        typer.Option(help="Verify threads of the started node (default: all cores)."),
    ] = None,
    node_verify_nice: Annotated[
        int | None,
        typer.Option(help="Niceness of the started node's verify threads (default: serve's)."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Keep the started node's data here (default: a temporary directory)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Traffic seed (default: random).")] = None,
    deliveries_out: Annotated[
        Path | None,
        typer.Option(help="Write each sampled delivery here as CSV (phase, sent_s, latency_ms)."),
    ] = None,
) -> None:
    """Sign trade traffic, drive a fresh node with it and compare with the ed25519 ceiling."""
    config = BenchConfig(
        messages=messages,
        feeds=feeds,
        mode=mode.value,
        node=node,
        batch=batch,
        connections=connections,
        window=window,
        half_load_share=half_load_share,
        synchronous=synchronous.upper(),
        node_workers=node_workers,
        node_verify_nice=node_verify_nice,
        data_dir=data,
        seed=seed,
        deliveries_out=deliveries_out,
    )
    config.check()
    if json:
        report = run(config)
        typer.echo(orjson.dumps(report).decode())
        return
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        signing = progress.add_task("signing", total=messages, visible=False)
        sending = progress.add_task("acknowledged", total=messages, visible=False)

        def on_generate(done: int, total: int) -> None:
            progress.update(signing, completed=done, total=total, visible=True)

        def on_progress(done: int, total: int) -> None:
            progress.update(signing, visible=False)
            progress.update(sending, completed=done, total=total, visible=True)

        report = run(
            config,
            on_stage=lambda text: progress.console.print(Text(f"… {text}", style="dim")),
            on_generate=on_generate,
            on_progress=on_progress,
        )
    Console().print(_table(report))


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def _table(r: dict[str, Any]) -> Table:
    table = Table(title=f"chainmail bench — {r['mode']}, {r['connections']} connections")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows: list[tuple[str, str]] = [
        ("messages (accepted / rejected)", f"{r['accepted']:,} / {r['rejected']:,}"),
        ("feeds · txs", f"{r['feeds']:,} · {r['txs']:,}"),
        ("mean message", _fmt(r["mean_message_bytes"], " B")),
        ("full load: messages, seconds", f"{r['load_messages']:,} in {r['seconds']:.2f} s"),
        ("acknowledged msgs/s", _fmt(r["msgs_per_s"])),
        ("ed25519 ceiling /s (all cores)", _fmt(r["verify_ceiling_per_s"])),
        ("ratio", "—" if r["ratio"] is None else f"{r['ratio']:.3f}"),
        ("submit → durable p50 / p99", f"{_fmt(r['p50_ms'])} / {_fmt(r['p99_ms'], ' ms')}"),
        (
            "half load: target, achieved /s",
            f"{_fmt(r['half_load_target_per_s'])}, {_fmt(r['half_load_msgs_per_s'])}",
        ),
        (
            "half load: durable p50 / p99",
            f"{_fmt(r['half_load_p50_ms'])} / {_fmt(r['half_load_p99_ms'], ' ms')}",
        ),
        (
            "half load: submit → inbox p50 / p99",
            f"{_fmt(r['deliver_p50_ms'])} / {_fmt(r['deliver_p99_ms'], ' ms')}"
            f" ({r['deliver_samples']} samples)",
        ),
        ("full load: submit → inbox p99", _fmt(r["deliver_p99_full_load_ms"], " ms")),
        ("blocks built", _fmt(r["blocks"])),
        ("node RSS end / max (MiB)", f"{_fmt(r['rss_mb'])} / {_fmt(r['rss_max_mb'])}"),
        ("node + child processes RSS (MiB)", _fmt(r["rss_with_workers_mb"])),
    ]
    if r["rejected"]:
        rows.append(("rejected by code", str(r["rejected_codes"])))
        rows.append(("first problem", str(r["first_problem"])))
    for name, value in rows:
        # Text, not markup: the rejected codes and the first problem are the node's words.
        table.add_row(name, Text(value))
    return table
