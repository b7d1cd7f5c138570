"""Reading a binary format front to back: what Bitcoin's and OpenTimestamps' parsers share."""

from __future__ import annotations

from chainmail.errors import ProofError

__all__ = ["ByteReader"]


class ByteReader:
    """``data`` read in order from ``offset``; ``pos`` is the next byte.

    Running past the end (or asking for a negative count) raises
    ``ProofError`` with ``truncated``, where ``{pos}`` is the byte reached.
    """

    def __init__(self, data: bytes, offset: int = 0, *, truncated: str) -> None:
        self.data = data
        self.pos = offset
        self._truncated = truncated

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProofError(self._truncated.format(pos=self.pos))
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]
