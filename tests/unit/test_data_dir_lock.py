"""One node a data directory: a second one on the same files is refused."""

from __future__ import annotations

import asyncio
import os
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
