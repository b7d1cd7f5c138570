"""The node's log: the ordered, durable record of accepted messages (DESIGN §4–§5).

The log is the only source of truth. It is partitioned into pipelines; a
message goes to pipeline ``pipeline_of(author, P)``. Each pipeline has an
RFC 9162 Merkle tree over its entries (leaf data = the digest of the message
id) whose complete-subtree hashes the log stores, so proofs cost O(log n).

Backends implement ``Log``: ``chainmail.sqlite.SqliteLog`` is the embedded
default.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from chainmail.frozen import constructor

__all__ = ["Head", "Log", "LogEntry", "NewEntry", "head", "new_entry", "pipeline_of"]


def pipeline_of(author: str, pipelines: int) -> int:
    """The pipeline of ``author``: the first 8 bytes of SHA-256(id), big-endian, mod P."""
    if pipelines == 1:
        return 0
    digest = hashlib.sha256(author.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") % pipelines


@dataclass(frozen=True, slots=True)
class Head:
    """The newest message of a feed."""

    sequence: int
    id: str


@dataclass(frozen=True, slots=True)
class NewEntry:
    """A checked message ready to be appended. ``body`` is its 2-space JSON (UTF-8)."""

    id: str
    author: str
    sequence: int
    received: int
    body: bytes


#: ``Head(...)`` and ``NewEntry(...)`` at ~60% of the cost, once a logged message.
head: Final = constructor(Head, "head")
new_entry: Final = constructor(NewEntry, "new_entry")


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A message in the log, at ``(pipeline, index)``.

    ``seq`` numbers every entry of the log, across pipelines, in the order it
    was appended (the order the node sequenced it in); None for entries of
    a log written before it was kept.
    """

    pipeline: int
    index: int
    id: str
    author: str
    sequence: int
    received: int
    body: bytes
    seq: int | None = None


class Log(Protocol):
    """An append-only, per-pipeline log with Merkle trees.

    Every method raises ``chainmail.errors.LogError`` when the backend fails.
    """

    pipelines: int

    def heads(self) -> dict[str, Head]:
        """The head of every feed in the log."""
        ...

    def head(self, author: str) -> Head | None:
        """The head of one feed, or ``None`` if the log has none of its messages."""
        ...

    def append(self, entries: Sequence[NewEntry]) -> list[tuple[int, int]]:
        """Append ``entries`` atomically and durably; returns ``(pipeline, index)`` each.

        Each entry also gets the log's next ``seq``, in the order given: the
        order across pipelines that a replay follows.

        Raises ``LogError`` when an entry breaks its feed's order (the caller
        is expected to have checked it) or the write fails.
        """
        ...

    def size(self, pipeline: int) -> int:
        """Number of entries in ``pipeline``."""
        ...

    def read(self, pipeline: int, start: int, limit: int) -> list[LogEntry]:
        """Up to ``limit`` entries of ``pipeline`` from index ``start`` on."""
        ...

    def locate(self, msg_id: str) -> tuple[int, int] | None:
        """``(pipeline, index)`` of a message id, or ``None``."""
        ...

    def get(self, pipeline: int, index: int) -> LogEntry | None:
        """The entry at ``(pipeline, index)``, or ``None``."""
        ...

    def root(self, pipeline: int, size: int) -> bytes:
        """Merkle root of the first ``size`` entries of ``pipeline``."""
        ...

    def inclusion_proof(self, pipeline: int, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of entry ``index`` in the tree of ``size``."""
        ...

    def consistency_proof(self, pipeline: int, size1: int, size2: int) -> list[bytes]:
        """RFC 9162 consistency proof between two sizes of ``pipeline``'s tree."""
        ...

    def close(self) -> None: ...
