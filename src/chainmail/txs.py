"""Transactions and channels: the rules of DESIGN §3 as a pure state machine.

A transaction (tx) is rooted at a ``tx/open`` message and ends exactly once:
``finished`` when its ``finish`` policy is met, or ``timed_out`` when the
node's clock passes its ``deadline`` first. The tracker that owns the state
calls, for each message that refers to a tx::

    expire(tx, now=now)            # a passed deadline closes the tx first
    check(tx, msg, now=now)        # before accepting: raises Rejected
    ... the message goes into the log ...
    apply(tx, msg_id, msg, now=now)  # True when this message finished the tx

and ``expire`` for every open tx on each tick. ``now`` is always the node's
clock in ms (never the message's own ``timestamp``, which its author chose).

A tx's deadline is inclusive: at ``now == deadline`` the tx is still open;
the first ``now > deadline`` closes it.

A channel (``chan/open``) has *members*, the identities its ``chan/open``
seals the key to, and *readers*, added later by ``chan/share``. Both hold
the key and receive ``chan/msg``; only members may post (``chan/msg``,
``chan/share``), and for a channel tied to a tx a member must also be one of
the tx's parties.

Pure: no I/O and no clock of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

from chainmail.content import check_policy, is_mapping, tx_of
from chainmail.errors import Error, InvalidMessage, Rejected, StorageError

__all__ = [
    "DEFAULT_FINISH",
    "Channel",
    "FinishPolicy",
    "Tx",
    "TxStatus",
    "apply",
    "channel_post_tx",
    "check",
    "check_channel_post",
    "check_post",
    "check_share_party",
    "expire",
    "finish_met",
    "link",
    "open_channel",
    "open_tx",
    "recipients",
    "record",
    "share_channel",
]

FinishPolicy = Literal["all", "any", "opener"]
TxStatus = Literal["open", "finished", "timed_out"]

#: ``finish`` when a ``tx/open`` leaves it out (DESIGN §3).
DEFAULT_FINISH: Final[FinishPolicy] = "all"

#: Types delivered to every other party of their tx (``tx/note`` only without ``to``).
_TO_PARTIES: Final = frozenset({"tx/open", "tx/finish", "tx/note"})
#: Types delivered to each identity whose sealed key they carry.
_TO_KEY_HOLDERS: Final = frozenset({"chan/open", "chan/share"})
#: Distinct party lists whose sorted form is kept (a few hundred bytes each).
_SORTED_PARTIES_CACHE: Final = 4096


@dataclass
class Tx:
    """The state of one transaction. Mutable: ``apply`` and ``expire`` update it.

    ``opened`` and ``closed`` are node clock ms; ``messages`` are ids in log
    order, the ``tx/open`` first.
    """

    id: str
    parties: tuple[str, ...]
    opener: str
    deadline: int
    finish: FinishPolicy = DEFAULT_FINISH
    subject: str | None = None
    opened: int = 0
    status: TxStatus = "open"
    closed: int | None = None
    finished_by: set[str] = field(default_factory=set)
    messages: list[str] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        """True until the tx has finished or timed out (``expire`` decides the latter)."""
        return self.status == "open"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict for storage; ``from_dict`` reads it back. Raises nothing."""
        return {
            "id": self.id,
            "parties": list(self.parties),
            "opener": self.opener,
            "deadline": self.deadline,
            "finish": self.finish,
            "subject": self.subject,
            "opened": self.opened,
            "status": self.status,
            "closed": self.closed,
            "finished_by": sorted(self.finished_by),
            "messages": list(self.messages),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tx:
        """The ``Tx`` that ``to_dict`` wrote; raises ``StorageError`` when ``data`` is malformed."""
        try:
            tx = cls(
                id=_text(data["id"]),
                parties=tuple(_texts(data["parties"])),
                opener=_text(data["opener"]),
                deadline=_integer(data["deadline"]),
                finish=_choice(data["finish"], FinishPolicy),
                subject=None if data["subject"] is None else _text(data["subject"]),
                opened=_integer(data["opened"]),
                status=_choice(data["status"], TxStatus),
                closed=None if data["closed"] is None else _integer(data["closed"]),
                finished_by=set(_texts(data["finished_by"])),
                messages=list(_texts(data["messages"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"malformed stored tx: {exc!r}") from exc
        if (tx.status == "open") != (tx.closed is None):
            raise StorageError(
                f"malformed stored tx {tx.id}: status {tx.status}, closed {tx.closed}"
            )
        return tx


@dataclass
class Channel:
    """The state of one channel: who holds its key, and the tx it belongs to, if any."""

    id: str
    opener: str
    members: tuple[str, ...]
    tx: str | None = None
    readers: tuple[str, ...] = ()

    @property
    def holders(self) -> tuple[str, ...]:
        """Everyone who can read the channel: members, then readers. Raises nothing."""
        return self.members + tuple(r for r in self.readers if r not in self.members)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict for storage; ``from_dict`` reads it back. Raises nothing."""
        return {
            "id": self.id,
            "opener": self.opener,
            "members": list(self.members),
            "tx": self.tx,
            "readers": list(self.readers),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Channel:
        """The ``Channel`` that ``to_dict`` wrote; raises ``StorageError`` when malformed."""
        try:
            return cls(
                id=_text(data["id"]),
                opener=_text(data["opener"]),
                members=tuple(_texts(data["members"])),
                tx=None if data["tx"] is None else _text(data["tx"]),
                readers=tuple(_texts(data["readers"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"malformed stored channel: {exc!r}") from exc


# --- transactions ------------------------------------------------------------------


def _when(ms: int | None) -> str:
    """A time in ms since the epoch as the CLI shows it (UTC, ISO 8601, to the millisecond)."""
    if ms is None:
        return "an unknown time"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def open_tx(msg_id: str, msg: Mapping[str, Any], now: int, *, checked: bool = False) -> Tx:
    """The new ``Tx`` opened by the ``tx/open`` message ``msg`` (id ``msg_id``) at ``now``.

    A deadline already in the past is allowed: the next ``expire`` closes it.
    ``checked=True`` skips the content policy for a caller that has applied it
    already (the node's sequencer, projecting a logged message).
    Raises ``InvalidMessage`` (``invalid_format``) when ``msg`` is not a valid
    ``tx/open``.
    """
    content = msg.get("content")
    if not (is_mapping(content) and content.get("type") == "tx/open"):
        raise InvalidMessage(f"{msg_id} is not a tx/open message", code="invalid_format")
    if not checked:
        check_policy(msg)
    return Tx(
        id=msg_id,
        parties=tuple(content["parties"]),
        opener=msg["author"],
        deadline=content["deadline"],
        finish=content.get("finish", DEFAULT_FINISH),
        subject=content.get("subject"),
        opened=now,
        messages=[msg_id],
    )


def check(tx: Tx | None, msg: Mapping[str, Any], *, now: int) -> None:
    """Refuse a message that refers to ``tx`` if the tx rules forbid it; pure.

    ``tx`` is the state the message's tx id resolved to (``None`` if none).
    Raises ``Rejected`` with code ``unknown_tx`` for no tx (or a message naming
    another tx), ``tx_closed`` when the tx has closed or ``now`` is past its
    deadline (even before ``expire`` has run), and ``not_a_party`` when the
    author is not one of its parties.
    """
    check_post(tx, msg.get("author"), msg.get("content"), now=now)


def check_post(tx: Tx | None, author: object, content: object, *, now: int) -> None:
    """``check`` for a message given as its author and content; raises the same ``Rejected``.

    The sequencer holds every message to the rules this way, without
    building a message mapping for each one.
    """
    # The tx/open test, and the tx the content names (a ``tx`` field of any
    # type holds a tx id, DESIGN §3), on one look at the content.
    kind: object = None
    named: object = None
    if is_mapping(content):
        kind = content.get("type")
        named = content.get("tx")
    if not isinstance(named, str):
        named = None
    if tx is None:
        raise Rejected(f"unknown tx {named or '(none named)'}", code="unknown_tx")
    if named is not None and named != tx.id:
        raise Rejected(f"message names tx {named}, not {tx.id}", code="unknown_tx")
    if kind == "tx/open":
        raise Rejected(f"a tx/open opens a tx of its own, not {tx.id}", code="unknown_tx")
    if tx.status != "open":
        raise Rejected(
            f"tx {tx.id} is closed ({tx.status} at {_when(tx.closed)})", code="tx_closed"
        )
    if now > tx.deadline:
        raise Rejected(
            f"tx {tx.id} passed its deadline {_when(tx.deadline)} (now {_when(now)})",
            code="tx_closed",
        )
    if author not in tx.parties:
        raise Rejected(f"{author} is not a party to tx {tx.id}", code="not_a_party")


def apply(tx: Tx, msg_id: str, msg: Mapping[str, Any], *, now: int, checked: bool = False) -> bool:
    """Record an accepted message in ``tx``; True when it is the one that finished the tx.

    Idempotent by id: a message already recorded (the ``tx/open`` included)
    changes nothing and returns False. A ``tx/finish`` counts its author
    towards the finish policy: ``all`` needs every party, ``any`` one,
    ``opener`` the opener. Raises ``Rejected`` as ``check`` does, leaving
    ``tx`` unchanged. ``checked=True`` skips ``check`` for a caller that has
    just run it on this very state (the sequencer, before logging).
    """
    if msg_id in tx.messages:
        return False
    if not checked:
        check(tx, msg, now=now)
    tx.messages.append(msg_id)
    content = msg.get("content")
    if not (is_mapping(content) and content.get("type") == "tx/finish"):
        return False
    return _finished_by(tx, msg["author"], now)


def link(tx: Tx, msg_id: str, author: str, kind: object, *, now: int) -> bool:
    """``apply(..., checked=True)`` for a message known not to be in ``tx`` yet.

    ``kind`` is the message's content type. For the sequencer, which has
    just checked a message that is new to the log on this very state: it
    skips ``apply``'s search of ``tx.messages``, which grows with the tx.
    Returns True when the message finished the tx. Raises nothing.
    """
    tx.messages.append(msg_id)
    if kind != "tx/finish":
        return False
    return _finished_by(tx, author, now)


def _finished_by(tx: Tx, author: str, now: int) -> bool:
    """Count a ``tx/finish`` by ``author``; True when that meets the finish policy."""
    tx.finished_by.add(author)
    if not finish_met(tx.finish, tx.opener, tx.parties, tx.finished_by):
        return False
    tx.status = "finished"
    tx.closed = now
    return True


def finish_met(
    policy: str, opener: str, parties: Collection[str], finishers: Collection[str]
) -> bool:
    """True when ``finishers`` meet the ``finish`` policy (DESIGN §3). Raises nothing.

    ``all``: every party finished; ``any``: someone did; ``opener``: the opener did.
    The node and every verifier of tx records judge a finish by this one rule.
    """
    if policy == "any":
        return bool(finishers)
    if policy == "opener":
        return opener in finishers
    if isinstance(finishers, set | frozenset):
        return finishers.issuperset(parties)
    return set(parties) <= set(finishers)


def expire(tx: Tx, *, now: int) -> bool:
    """Close ``tx`` as ``timed_out`` if it is open and ``now`` is past its deadline.

    True when this call closed it; at ``now == deadline`` the tx stays open.
    Its ``closed`` time is ``deadline + 1``, the first millisecond past the
    deadline, whenever the clock is looked at: the same on a node that noticed
    at once, one that noticed late, and a store rebuilt from the log (timeouts
    are decided by the clock, so they are not messages in the log). A tx
    opened with its deadline already past closes when it opened, never
    before (its record would say it closed before it opened, which
    ``blocks.verify_tx_record`` refuses). Raises nothing.
    """
    if tx.status != "open" or now <= tx.deadline:
        return False
    tx.status = "timed_out"
    tx.closed = max(tx.deadline + 1, tx.opened)
    return True


def record(tx: Tx) -> dict[str, Any]:
    """The block record of a closed tx (DESIGN §6).

    Raises ``chainmail.errors.Error`` (code ``internal``) when ``tx`` is still
    open: only closed txs go into blocks.
    """
    if tx.status == "open" or tx.closed is None:
        raise Error(f"tx {tx.id} is still open; only closed txs have records")
    return {
        "closed": tx.closed,
        "messages": list(tx.messages),
        "opened": tx.opened,
        "parties": list(tx.parties),
        "status": tx.status,
        "tx": tx.id,
    }


# --- channels ----------------------------------------------------------------------


def open_channel(msg_id: str, msg: Mapping[str, Any]) -> Channel:
    """The new ``Channel`` created by the ``chan/open`` message ``msg`` (id ``msg_id``).

    Raises ``InvalidMessage`` (``invalid_format``) when ``msg`` is not a valid
    ``chan/open``.
    """
    content = msg.get("content")
    if not (is_mapping(content) and content.get("type") == "chan/open"):
        raise InvalidMessage(f"{msg_id} is not a chan/open message", code="invalid_format")
    check_policy(msg)
    return Channel(
        id=msg_id,
        opener=msg["author"],
        members=tuple(content["keys"]),
        tx=content.get("tx"),
    )


def channel_post_tx(channel: Channel | None, msg: Mapping[str, Any]) -> str | None:
    """The channel rules of a ``chan/msg`` or ``chan/share``; returns the tx whose rules apply.

    Only members post into a channel, and only members share it (readers read:
    "a party opens its channel to an auditor"). A ``chan/msg`` in a channel
    tied to a tx belongs to that tx, with or without a ``tx`` field, so the
    tx's rules apply to it (only parties post, only while the tx is open); a
    ``chan/share`` is held to a tx's rules only when it names the tx, so a
    party can still open a settled trade's channel to an auditor. Returns
    that tx's id, or None when no tx rules apply. Pure.

    Raises ``Rejected``: ``unknown_tx`` for an unknown channel, a ``chan``
    field naming another channel, or a ``tx`` field that is not the tied
    channel's tx; ``not_a_party`` when the author is not a member.
    """
    content = msg.get("content")
    named = content.get("chan") if is_mapping(content) else None
    if channel is None:
        raise Rejected(f"unknown channel {named}", code="unknown_tx")
    if named is not None and named != channel.id:
        raise Rejected(f"message names channel {named}, not {channel.id}", code="unknown_tx")
    named_tx = tx_of(content)
    if channel.tx is not None and named_tx is not None and named_tx != channel.tx:
        raise Rejected(
            f"message names tx {named_tx}, but channel {channel.id} belongs to tx {channel.tx}",
            code="unknown_tx",
        )
    author = msg.get("author")
    if author not in channel.members:
        raise Rejected(f"{author} is not a member of channel {channel.id}", code="not_a_party")
    kind = content.get("type") if is_mapping(content) else None
    return channel.tx if kind == "chan/msg" and channel.tx is not None else named_tx


def check_channel_post(
    channel: Channel | None, msg: Mapping[str, Any], *, tx: Tx | None = None, now: int
) -> None:
    """Refuse a ``chan/msg`` or ``chan/share`` that the channel rules forbid; pure.

    ``channel`` is the state its ``chan`` field resolved to; when the post is
    held to a tx's rules (``channel_post_tx``), ``tx`` is that tx's state and
    the post must also pass ``check``. A post to a tied channel belongs to its
    tx: record it there with ``apply``.

    Raises ``Rejected``: the codes of ``channel_post_tx``, ``unknown_tx`` when
    ``tx`` is another tx than the one whose rules apply, whatever ``check``
    raises for that tx, and ``not_a_party`` for a share of a tx-bound channel
    by a member that is not one of ``tx``'s parties (``check_share_party``).
    """
    tx_id = channel_post_tx(channel, msg)
    if tx_id is None:
        if channel is not None and channel.tx is not None and tx is not None:
            check_share_party(channel, msg.get("author"), tx.parties)
        return
    if tx is not None and tx.id != tx_id:
        raise Rejected(f"the post belongs to tx {tx_id}, not {tx.id}", code="unknown_tx")
    check(tx, msg, now=now)


def check_share_party(channel: Channel, author: object, parties: Collection[str]) -> None:
    """Refuse a ``chan/share`` of a tx-bound ``channel`` by a member that is no party.

    ``parties`` are the parties of ``channel.tx``, open or closed. A share that
    names no tx is not held to the tx being open (``channel_post_tx``), but
    only parties post chan/* tied to a tx (DESIGN §3): a member the opener
    sealed the key to without being a party reads, as a reader does, and does
    not pass the key on. Pure; does nothing for an untied channel. Raises
    ``Rejected`` (``not_a_party``).
    """
    if channel.tx is not None and author not in parties:
        raise Rejected(
            f"{author} is not a party to tx {channel.tx}, which channel {channel.id} belongs to",
            code="not_a_party",
        )


def share_channel(channel: Channel, msg: Mapping[str, Any]) -> list[str]:
    """Add the readers that an accepted ``chan/share`` grants; returns the new ones.

    Members and existing readers are not added twice, so replaying a share
    changes nothing. Raises ``InvalidMessage`` (``invalid_format``) when
    ``msg`` is not a ``chan/share`` of this channel.
    """
    content = msg.get("content")
    if not (
        is_mapping(content)
        and content.get("type") == "chan/share"
        and content.get("chan") == channel.id
        and is_mapping(content.get("keys"))
    ):
        raise InvalidMessage(f"not a chan/share of channel {channel.id}", code="invalid_format")
    known = set(channel.holders)
    added = [fid for fid in content["keys"] if fid not in known]
    channel.readers = channel.readers + tuple(added)
    return added


# --- delivery ----------------------------------------------------------------------


def recipients(
    msg_author: str,
    content: object,
    tx: Tx | None,
    channel_members: Collection[str] | None,
) -> list[str]:
    """The identities whose inboxes receive a message (DESIGN §3 "Delivery").

    - ``tx/open``: every other party it names;
    - ``tx/finish``, and ``tx/note`` without ``to``: every other party of ``tx``;
    - ``tx/note`` with ``to``: those in ``to``;
    - ``chan/msg``: every other identity in ``channel_members`` (pass
      ``Channel.holders``: members and readers);
    - ``chan/open``, ``chan/share``: each identity whose key it carries;
    - anything else, ``.box`` strings included: nobody.

    Never the author; sorted, without duplicates. When the state a rule needs
    is missing (``tx`` for ``tx/finish`` and ``tx/note`` without ``to``,
    ``channel_members`` for ``chan/msg``) there is nobody to name: the result
    is empty. It is not an error because this runs after the message was
    accepted, where raising would stall a projection replaying its log.
    Raises nothing.
    """
    if not is_mapping(content):
        return []
    kind = content.get("type")
    targets: object
    if kind == "tx/open":
        targets = content.get("parties")
    elif kind == "tx/note" and "to" in content:
        targets = content["to"]
    elif kind in _TO_PARTIES:
        if tx is None:
            return []
        try:
            # A tx's parties never change: sorted once, not on every message.
            return [p for p in _sorted_ids(tx.parties) if p != msg_author]
        except TypeError:  # not a tuple of hashables: the general path below
            targets = tx.parties
    elif kind == "chan/msg":
        targets = channel_members
    elif kind in _TO_KEY_HOLDERS:
        targets = content.get("keys")
    else:
        return []
    if type(targets) in (list, tuple, dict):
        # What JSON and ``Tx`` give: one pass, without ``_ids``' generator.
        return sorted({fid for fid in targets if isinstance(fid, str) and fid != msg_author})  # type: ignore[attr-defined]
    return sorted({fid for fid in _ids(targets) if fid != msg_author})


@functools.lru_cache(maxsize=_SORTED_PARTIES_CACHE)
def _sorted_ids(parties: tuple[str, ...]) -> tuple[str, ...]:
    """The distinct strings of ``parties``, sorted (a tx's recipients before the author is taken out)."""
    return tuple(sorted({p for p in parties if isinstance(p, str)}))


def _ids(value: object) -> Iterable[str]:
    """The strings in a collection (an object's keys); nothing from a lone string or scalar."""
    # Lists, tuples and dicts (what JSON and Tx give) skip the Collection ABC check.
    if type(value) in (list, tuple, dict) or (
        isinstance(value, Collection) and not isinstance(value, str | bytes)
    ):
        return (item for item in value if isinstance(item, str))  # type: ignore[attr-defined]
    return ()


# --- parsing stored state ----------------------------------------------------------


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _texts(value: object) -> list[str]:
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a list of strings, got {value!r}")
    return [_text(v) for v in value]


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _choice(value: object, options: Any) -> Any:
    if value not in get_args(options):
        raise ValueError(f"expected one of {get_args(options)}, got {value!r}")
    return value
