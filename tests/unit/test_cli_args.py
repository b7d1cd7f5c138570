"""Several ids after one option of ``_MANY_IDS`` are that option once each (DESIGN §9)."""

from __future__ import annotations

import pytest

from chainmail.cli import spread_ids


@pytest.mark.parametrize(
    ("given", "read"),
    [
        (
            ["chan", "open", "--member", "@b", "@c"],
            ["chan", "open", "--member", "@b", "--member", "@c"],
        ),
        (["--member=@b", "@c", "--tx", "%t"], ["--member=@b", "--member", "@c", "--tx", "%t"]),
        (["--party", "@b", "--party", "@c"], ["--party", "@b", "--party", "@c"]),
        (
            ["--witness", "@a", "@b", "--threshold", "1"],
            ["--witness", "@a", "--witness", "@b", "--threshold", "1"],
        ),
        # Only ids are taken: a positional after the ids is left alone.
        (["verify", "block", "--witness", "@a", "3"], ["verify", "block", "--witness", "@a", "3"]),
        # The option's own value is taken whatever it looks like (Click says what is wrong).
        (["--to", "bob", "@c"], ["--to", "bob", "--to", "@c"]),
        (["--to"], ["--to"]),
        (["--data", "@x", "@y"], ["--data", "@x", "@y"]),
        (["--member", "@b", "--", "@c"], ["--member", "@b", "--", "@c"]),
    ],
)
def test_spread(given: list[str], read: list[str]) -> None:
    assert spread_ids(given) == read
