"""Thread niceness: only the calling thread changes, only downwards, never an error."""

from __future__ import annotations

import threading

import pytest

from chainmail import priority

pytestmark = pytest.mark.skipif(not priority.supported(), reason="per-thread niceness is Linux's")


def _in_thread(nice: int) -> tuple[bool, int | None, int | None]:
    out: list[tuple[bool, int | None, int | None]] = []

    def run() -> None:
        before = priority.this_thread()
        took = priority.lower_this_thread(nice)
        out.append((took, before, priority.this_thread()))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out[0]


def test_a_thread_lowers_its_own_priority_and_no_other_thread_s() -> None:
    main_before = priority.this_thread()
    took, before, after = _in_thread(15)
    assert took and before == main_before and after == 15
    assert priority.this_thread() == main_before


def test_asking_for_a_higher_priority_than_the_thread_has_changes_nothing() -> None:
    steps: list[object] = []

    def run() -> None:
        steps.append(priority.lower_this_thread(10))
        # Going back up needs a privilege; it is never attempted.
        steps.append(priority.lower_this_thread(5))
        steps.append(priority.this_thread())
        steps.append(priority.lower_this_thread(10))  # already there

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert steps == [True, False, 10, True]


@pytest.mark.parametrize("nice", [-21, 20, 100])
def test_a_niceness_outside_the_range_is_refused(nice: int) -> None:
    with pytest.raises(ValueError, match="-20 to 19"):
        priority.lower_this_thread(nice)
