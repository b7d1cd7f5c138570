"""One node a data directory: a second one on the same files is refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from chainmail.errors import StorageError
from chainmail.node import Node, NodeConfig


def test_a_second_node_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    first = Node(NodeConfig(data_dir=tmp_path / "node"))
    try:
        with pytest.raises(StorageError, match=r"in use by another node \(pid \d+\)"):
            Node(NodeConfig(data_dir=tmp_path / "node"))
        other = Node(NodeConfig(data_dir=tmp_path / "other"))  # another directory is free
        asyncio.run(other.stop())
    finally:
        asyncio.run(first.stop())
    again = Node(NodeConfig(data_dir=tmp_path / "node"))  # stop gave the lock up
    assert again.id == first.id
    asyncio.run(again.stop())


def test_serve_on_a_directory_in_use_fails_in_one_line(tmp_path: Path) -> None:
    from support.server import CHAINMAIL

    holder = Node(NodeConfig(data_dir=tmp_path / "node"))
    try:
        done = subprocess.run(
            [CHAINMAIL, "serve", "--data", str(tmp_path / "node"), "--port", "1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        asyncio.run(holder.stop())
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"chainmail: storage: the data directory {tmp_path / 'node'} is in use by another node"
        f" (pid {os.getpid()})"
    ]


def test_a_data_directory_that_is_a_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StorageError, match=r"cannot use .* as the data directory"):
        Node(NodeConfig(data_dir=tmp_path / "file"))


def test_serve_on_a_store_ahead_of_its_log_fails_in_one_line_and_keeps_nothing_locked(
    tmp_path: Path,
) -> None:
    from support.server import CHAINMAIL

    data = tmp_path / "node"
    asyncio.run(Node(NodeConfig(data_dir=data)).stop())
    # What a log at synchronous=NORMAL can leave after a power loss: the store
    # has projected entries the log no longer holds.
    with contextlib.closing(sqlite3.connect(data / "store.sqlite")) as db, db:
        db.execute("INSERT OR REPLACE INTO cursors (pipeline, next) VALUES (0, 5)")
    done = subprocess.run(
        [CHAINMAIL, "serve", "--data", str(data), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(
        "chainmail: storage: the store is ahead of the log: pipeline 0 projected to 5 entries,"
        " the log holds 0;"
    )
    with pytest.raises(StorageError, match="ahead of the log"):
        Node(NodeConfig(data_dir=data))
    # The refusal gave the lock up, and without the store the node starts.
    (data / "store.sqlite").rename(tmp_path / "store.sqlite.aside")
    asyncio.run(Node(NodeConfig(data_dir=data)).stop())
