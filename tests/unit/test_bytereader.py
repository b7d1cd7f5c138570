"""The reader Bitcoin's and OpenTimestamps' parsers share."""

from __future__ import annotations

import pytest

from chainmail.bytereader import ByteReader
from chainmail.errors import ProofError


def test_reads_in_order_and_refuses_to_run_past_the_end() -> None:
    r = ByteReader(b"\x01\x02\x03\x04", 1, truncated="cut at {pos}")
    assert r.u8() == 2 and r.take(2) == b"\x03\x04" and r.pos == 4
    assert r.take(0) == b""
    with pytest.raises(ProofError, match="cut at 4"):
        r.u8()
    with pytest.raises(ProofError, match="cut at 4"):
        r.take(-1)  # never a read backwards
    assert r.pos == 4
