"""``tx open --deadline``: durations, absolute times, and nothing already past."""

from __future__ import annotations

import pytest

from chainmail.cli.commands import parse_deadline
from chainmail.errors import InvalidMessage

NOW = 1_800_000_000_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10m", NOW + 600_000),
        ("90s", NOW + 90_000),
        ("500ms", NOW + 500),
        ("1d", NOW + 86_400_000),
        (str(NOW + 1), NOW + 1),
        ("2030-01-01T00:00:00+00:00", 1_893_456_000_000),
    ],
)
def test_a_deadline_in_the_future_is_read(text: str, expected: int) -> None:
    assert parse_deadline(text, NOW) == expected


@pytest.mark.parametrize("text", ["1000", str(NOW), "0s", "2001-01-01T00:00:00+00:00"])
def test_a_deadline_not_in_the_future_is_refused(text: str) -> None:
    with pytest.raises(InvalidMessage, match="is not in the future"):
        parse_deadline(text, NOW)


@pytest.mark.parametrize("text", ["soon", "10 minutes", "2030-01-01T00:00:00", "-5m"])
def test_a_deadline_that_is_no_time_is_refused(text: str) -> None:
    with pytest.raises(InvalidMessage, match="expected a duration"):
        parse_deadline(text, NOW)


@pytest.mark.parametrize("text", ["99999999999999999999999", str(2**53), "999999999999999d"])
def test_a_deadline_past_what_a_message_holds_is_refused_as_the_deadline(text: str) -> None:
    with pytest.raises(InvalidMessage, match=r"^--deadline: .* past the largest time"):
        parse_deadline(text, NOW)
    assert parse_deadline(str(2**53 - 1), NOW) == 2**53 - 1
