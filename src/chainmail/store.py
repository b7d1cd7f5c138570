"""The store: projections of the log that the API reads (DESIGN §5).

Every projection is derived from the log alone. The node computes a
``Projection`` for each batch it appends and the store writes it together with
the projection cursor in one transaction, so after a crash the store resumes
from its cursor and replaying an entry twice changes nothing (writes are keyed
by message id).

Backends implement ``Store``: ``chainmail.sqlite.SqliteStore`` is the default.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Final, Protocol

from chainmail.frozen import constructor

#: Asked before a new blob is counted pending: ``room(size, pending, oldest, count)``
#: with the bytes pending now, when the oldest of them was stored (ms; None:
#: none) and how many blobs are pending. Raises to refuse the blob
#: (``chainmail.blobkeeping.check_room``).
BlobRoom = Callable[[int, int, "int | None", int], None]

__all__ = [
    "BlobRoom",
    "BlockRow",
    "Delivery",
    "MessageRow",
    "Projection",
    "Store",
    "TxRow",
    "message_row",
]


@dataclass(frozen=True, slots=True)
class MessageRow:
    id: str
    pipeline: int
    index: int
    author: str
    sequence: int
    received: int
    type: str | None
    tx: str | None
    body: bytes
    chan: str | None = None


#: ``MessageRow(...)`` (every field, in order) at ~60% of the cost, once a logged message.
message_row: Final = constructor(MessageRow, "message_row")


@dataclass(slots=True)
class TxRow:
    """A transaction as stored. ``messages`` are ids in log order, tx/open first.

    Read back, ``messages`` are the tx's ``Projection.tx_messages``; in a
    projection's ``txs`` they are a snapshot that a store need not write
    (the SQLite store does not: it has every one from ``tx_messages``).
    """

    id: str
    status: str
    parties: list[str]
    opener: str
    deadline: int
    finish: str
    subject: str | None
    opened: int
    closed: int | None
    finished_by: list[str]
    messages: list[str]
    block: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "tx": self.id,
            "status": self.status,
            "parties": self.parties,
            "opener": self.opener,
            "opened": self.opened,
            "deadline": self.deadline,
            "finish": self.finish,
            "subject": self.subject,
            "closed": self.closed,
            "messages": self.messages,
            "block": self.block,
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    delivery: int
    id: str
    body: bytes


class BlockRow:
    """A block in the store: its message (``body``), checkpoints (``logs``) and tx records.

    ``records`` may be given as ``load``, a function that reads them (from the
    block's records blob) the first time they are asked for: a block of a
    thousand txs holds ~600 KB of records, which listing blocks or finding the
    block that covers a message never reads.
    """

    __slots__ = ("_load", "_records", "body", "height", "id", "logs")

    def __init__(
        self,
        height: int,
        id: str,
        body: bytes,
        records: list[dict[str, Any]] | None,
        logs: list[dict[str, Any]],
        *,
        load: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        if (records is None) == (load is None):
            raise TypeError("BlockRow takes exactly one of records and load")
        self.height = height
        self.id = id
        self.body = body
        self.logs = logs
        self._records = records
        self._load = load

    @property
    def records(self) -> list[dict[str, Any]]:
        """The block's tx records, in block order (read once, on first use)."""
        if self._records is None:
            assert self._load is not None
            self._records = self._load()
            self._load = None
        return self._records

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlockRow):
            return NotImplemented
        return (self.height, self.id, self.body, self.logs, self.records) == (
            other.height,
            other.id,
            other.body,
            other.logs,
            other.records,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"BlockRow(height={self.height}, id={self.id!r})"


@dataclass(slots=True)
class Projection:
    """Everything one log batch changes in the store, plus the new cursors."""

    messages: list[MessageRow] = field(default_factory=list)
    #: Rows of the txs whose state changed (opened, a finish counted, closed).
    #: A message that only joins a tx (a ``tx/note``) changes no row: it is in
    #: ``tx_messages``, so a long tx is not rewritten whole on every message.
    txs: dict[str, TxRow] = field(default_factory=dict)
    #: Each message the batch linked to a tx: (tx id, its place in the tx's
    #: messages from 0 for the tx/open, pipeline, index).
    tx_messages: list[tuple[str, int, int, int]] = field(default_factory=list)
    inbox: list[tuple[str, str]] = field(default_factory=list)  # (recipient, message id)
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    blocks: list[BlockRow] = field(default_factory=list)
    identities: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> registry record
    #: Witness signatures that count for a block's stage: (height, stage, witness, message id).
    block_signs: list[tuple[int, str, str, str]] = field(default_factory=list)
    #: The node's ``block/stage`` messages: (height, stage, message id, content).
    block_stages: list[tuple[int, str, str, dict[str, Any]]] = field(default_factory=list)
    #: The node's ``anchor`` messages: (height of the anchored block, message id, content).
    anchors: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    #: Blob ids the batch's messages name (``content.blob_refs``): kept for good.
    blob_refs: list[str] = field(default_factory=list)
    cursors: dict[int, int] = field(default_factory=dict)  # pipeline -> next index
    #: Written to survive power loss (the store's commits need not, as the log
    #: replays them): it closes a tx by timeout, which is in no log. A refusal
    #: (``tx_closed``) or a read may tell of it once it is written.
    durable: bool = False

    def __bool__(self) -> bool:
        return bool(
            self.messages
            or self.txs
            or self.tx_messages
            or self.inbox
            or self.blocks
            or self.identities
            or self.block_signs
            or self.block_stages
            or self.anchors
            or self.blob_refs
            or self.cursors
        )


class Store(Protocol):
    """Projection storage. Every method raises ``StorageError`` when the backend fails."""

    def cursors(self) -> dict[int, int]:
        """Next log index to project, per pipeline."""
        ...

    def apply(
        self, projection: Projection, *, wanted: Container[str] | None = None
    ) -> list[tuple[str, Delivery]]:
        """Write a projection and its cursors atomically; returns the new inbox entries.

        Each is ``(recipient, Delivery)``, in delivery order, for the entries
        this call added (an entry already there is not new); with ``wanted``,
        only those of its recipients, judged once the projection is committed
        (so a follower that starts later reads the others from the store).

        Each block's records then set ``block``, ``status`` and ``closed`` of
        their txs not yet in a block, after the projection's own tx rows are
        written: the sequencer sends no tx rows for a block.
        """
        ...

    def message(self, msg_id: str) -> MessageRow | None: ...

    def message_at(self, author: str, sequence: int) -> MessageRow | None: ...

    def feed(self, author: str, after: int, limit: int) -> list[MessageRow]: ...

    def tx(self, tx_id: str) -> TxRow | None: ...

    def open_txs(self) -> list[TxRow]: ...

    def closed_unblocked_txs(self) -> list[TxRow]: ...

    def list_txs(
        self,
        *,
        party: str | None,
        status: str | None,
        limit: int,
        before: int | None,
        after_tx: str | None = None,
    ) -> list[TxRow]:
        """Txs newest first (``opened`` descending, then id): opened before ``before``, or
        listed after the tx ``after_tx`` (a page cursor that ties in ``opened`` cannot skip).

        Raises ``NotFound`` when ``after_tx`` is no tx.
        """
        ...

    def channels(self) -> dict[str, dict[str, Any]]: ...

    def channel_messages(self, chan: str, after: int, limit: int) -> list[MessageRow]:
        """The channel's chan/open, chan/share and chan/msg messages in log order."""
        ...

    def inbox(self, recipient: str, limit: int, after: int = 0) -> list[Delivery]: ...

    def ack(self, recipient: str, ids: Sequence[str]) -> int: ...

    def ack_many(self, acks: Sequence[tuple[str, Sequence[str]]]) -> list[int]:
        """``ack`` for several (recipient, ids) at once, in one write; the counts in order."""
        ...

    def put_blob(
        self,
        blob_id: str,
        data: bytes,
        *,
        stored: int | None = None,
        room: BlobRoom | None = None,
        durable: bool = True,
    ) -> bool:
        """Store bytes under their id, durably; False if they were there already.

        A blob no logged message names yet (``Projection.blob_refs``) is
        *pending* from ``stored`` (ms since the epoch; default: now): storing
        it again restarts that. ``sweep_blobs`` removes pending ones. A blob
        is counted pending before its bytes are written, so a crash cannot
        leave one that no sweep finds; ``room`` is asked first, with nothing
        else counted in between, and raises to refuse it (nothing is stored).
        A blob already pending or named is never refused. ``durable``: that
        count survives power loss, not only a crash (an fsync more; a blob the
        node names itself within moments, as a block's records, need not).
        """
        ...

    def has_blob(self, blob_id: str) -> bool: ...

    def hold_blobs(self, blob_ids: Sequence[str]) -> None:
        """Keep ``blob_ids`` from every sweep until a projection naming them is applied.

        The sequencer calls it for each message naming blobs before that
        message is logged (any thread): between the log and the projection,
        no sweep may delete what an acknowledged message names. ``apply``
        releases them once its ``blob_refs`` are committed.
        """
        ...

    def release_blobs(self, blob_ids: Sequence[str]) -> None:
        """End one hold of each of ``blob_ids``: for a projection that will never be
        applied (its messages were not logged, or a replay projects them again)."""
        ...

    def pending_blob_bytes(self) -> int:
        """Bytes of pending blobs, from a count kept as they change (no I/O: any thread)."""
        ...

    def pending_blobs(self) -> tuple[int, int | None]:
        """Bytes of pending blobs, and when the oldest of them was stored (ms; None: none)."""
        ...

    def sweep_blobs(self, stored_before: int) -> tuple[int, int]:
        """Delete the pending blobs stored before ``stored_before`` (ms); (count, bytes) deleted."""
        ...

    def get_blob(self, blob_id: str) -> bytes | None: ...

    def open_blob(self, blob_id: str) -> BinaryIO | None:
        """The blob's file, open for reading (the caller closes it), or None if not held:
        its bytes stay readable while it is open, even if a sweep deletes it meanwhile."""
        ...

    def block(self, height: int) -> BlockRow | None: ...

    def blocks(self, after: int, limit: int) -> list[BlockRow]: ...

    def latest_block(self) -> BlockRow | None: ...

    def block_stages(self, height: int) -> list[dict[str, Any]]:
        """The ``block/stage`` messages of block ``height``, in stage order: each
        ``{"stage", "id", "signers", "signs", "root"}``."""
        ...

    def anchors(self, height: int) -> list[dict[str, Any]]:
        """The ``anchor`` messages of block ``height``, oldest first: each its content
        (``block``, ``height``, ``chain``, ``txid``, ``ots``) and its message ``id``."""
        ...

    def anchored(self, at_least: int) -> tuple[int, list[dict[str, Any]]] | None:
        """The lowest anchored block height ≥ ``at_least`` and its anchors, or None."""
        ...

    def latest_anchored(self) -> int | None:
        """The height of the newest anchored block, or None."""
        ...

    def witnessing(self, window: int) -> list[tuple[int, str, int, dict[str, str]]]:
        """Blocks within ``window`` heights of the newest that are not sealed:
        (height, id, stages recorded, the current stage's witness → sign id)."""
        ...

    def block_covering(self, pipeline: int, index: int) -> BlockRow | None:
        """The first block whose checkpoint of ``pipeline`` has size > ``index``."""
        ...

    def identity_records(self, ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Registry records (all, or those of ``ids``), as ``Registry.record`` wrote them."""
        ...

    def search_identities(self, text: str, limit: int, after: str = "") -> list[dict[str, Any]]:
        """Up to ``limit`` records with a name containing ``text``, casefolded
        (``registry.search_text``), in id order from the first id past ``after``.

        A superset of ``Registry.search``'s hits (older claims count too), to filter.
        """
        ...

    def record_fork(self, author: str, sequence: int, kept: bytes, rejected: bytes) -> None: ...

    def has_fork(self, author: str, sequence: int) -> bool:
        """True when fork evidence is kept for ``author`` at ``sequence``."""
        ...

    def forks(self, author: str) -> list[tuple[int, bytes, bytes]]: ...

    def close(self) -> None: ...
