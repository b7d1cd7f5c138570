"""``serve --log``/``--store`` URLs: where the node's SQLite files go."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chainmail import ssb
from chainmail.cli.serve import _sqlite_path
from chainmail.errors import Error
from chainmail.keys import Keypair
from chainmail.node import Node, NodeConfig


@pytest.mark.parametrize(
    ("url", "path"),
    [
        (None, None),
        ("sqlite:log.sqlite", Path("log.sqlite")),
        ("sqlite:fast/log.sqlite", Path("fast/log.sqlite")),
        ("sqlite:/mnt/fast/log.sqlite", Path("/mnt/fast/log.sqlite")),
        ("sqlite:///mnt/fast/log.sqlite", Path("/mnt/fast/log.sqlite")),
    ],
)
def test_a_sqlite_url_names_its_file(url: str | None, path: Path | None) -> None:
    assert _sqlite_path(url, "log") == path


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("nats://127.0.0.1:4222", "only the embedded SQLite backend"),
        ("postgresql://127.0.0.1/test", "only the embedded SQLite backend"),
        ("sqlite://db.example/log.sqlite", "a SQLite file is local"),
        ("sqlite:", "no file named"),
        ("sqlite:///", "no file named"),
        ("sqlite:fast/", "no file named"),
    ],
)
def test_a_url_that_names_no_local_sqlite_file_is_refused(url: str, says: str) -> None:
    with pytest.raises(Error, match=says) as caught:
        _sqlite_path(url, "store")
    assert caught.value.code == "invalid_format"
    assert str(caught.value).startswith(f"--store {url}: ")


def test_the_log_and_the_store_go_where_they_are_named_and_stay_there(tmp_path: Path) -> None:
    config = NodeConfig(
        data_dir=tmp_path / "data",
        log_path=tmp_path / "fast" / "chain.sqlite",
        store_path=tmp_path / "big" / "projections.sqlite",
    )
    keys = Keypair.generate()
    msg = ssb.create(keys, {"type": "post", "text": "placed"}, None, 1_700_000_000_000)

    async def first() -> None:
        node = Node(config)
        await node.start()
        try:
            (result,) = await node.submit_many([ssb.stringify(msg).encode()])
            assert not isinstance(result, Error), result
            await node.put_blob(b"a blob beside the store")
        finally:
            await node.stop()

    asyncio.run(first())
    assert (tmp_path / "fast" / "chain.sqlite").is_file()
    assert (tmp_path / "big" / "projections.sqlite").is_file()
    assert (tmp_path / "big" / "blobs").is_dir()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["lock", "node-secret.json"]

    async def again() -> None:
        node = Node(config)
        await node.start()
        try:
            row = node.store.message(ssb.message_id(msg))
            assert row is not None and row.index == 0
        finally:
            await node.stop()

    asyncio.run(again())
