"""Fast constructors for frozen slotted dataclasses: the same objects, still frozen, pickling."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from chainmail import frozen, ssb
from chainmail.log import Head, NewEntry, head, new_entry
from chainmail.sequencer import Accepted, _accepted
from chainmail.store import MessageRow, message_row


@dataclass(frozen=True, slots=True)
class Pair:
    left: int
    right: str = "r"


def test_made_objects_are_the_classes_own() -> None:
    cases: list[tuple[Callable[..., Any], type[Any], tuple[Any, ...]]] = [
        (head, Head, (3, "%id")),
        (new_entry, NewEntry, ("%id", "@a", 3, 1700, b"{}")),
        (message_row, MessageRow, ("%id", 0, 7, "@a", 3, 1700, "tx/note", "%tx", b"{}", None)),
        (_accepted, Accepted, ("%id", 0, 7, True)),
    ]
    for make, cls, values in cases:
        made = make(*values)
        expected = cls(*values)
        assert type(made) is cls and made == expected and hash(made) == hash(expected)
        assert dataclasses.astuple(made) == values
        with pytest.raises(dataclasses.FrozenInstanceError):
            made.id = "other"


def test_every_field_is_required_positionally() -> None:
    make = frozen.constructor(Pair, "make_pair")
    assert make(1, "x") == Pair(1, "x")
    with pytest.raises(TypeError):
        make(1)  # no defaults: the hot path passes every field


def test_a_checked_message_still_pickles_by_reference() -> None:
    checked = ssb._checked("%id", "@a", 1, None, 5, {"type": "post"}, "text")
    assert ssb._checked.__module__ == "chainmail.ssb" and ssb._checked.__qualname__ == "_checked"
    assert pickle.loads(pickle.dumps(checked)) == checked


def test_classes_it_cannot_serve_are_refused() -> None:
    @dataclass(frozen=True)
    class NoSlots:
        x: int

    @dataclass(slots=True)
    class NotFrozen:
        x: int

    @dataclass(frozen=True, slots=True)
    class Checks:
        x: int

        def __post_init__(self) -> None:
            raise ValueError

    for cls, message in ((NoSlots, "slots"), (NotFrozen, "frozen"), (Checks, "__post_init__")):
        with pytest.raises(TypeError, match=message):
            frozen.constructor(cls, "make")
