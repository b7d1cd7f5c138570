"""Build signed feeds for tests: a ``Writer`` keeps one identity's feed head."""

from __future__ import annotations

from typing import Any

import orjson

from chainmail import ssb
from chainmail.keys import Keypair


class Writer:
    """Signs consecutive messages of one feed."""

    def __init__(self, keys: Keypair | None = None, *, start: int = 1_700_000_000_000) -> None:
        self.keys = keys or Keypair.generate()
        self.state: ssb.FeedState | None = None
        self.time = start

    @property
    def id(self) -> str:
        return self.keys.id

    def sign(self, content: dict[str, Any] | str) -> dict[str, Any]:
        self.time += 1
        msg = ssb.create(self.keys, content, self.state, self.time)
        self.state = ssb.FeedState(id=ssb.message_id(msg), sequence=msg["sequence"])
        return msg

    def raw(self, content: dict[str, Any] | str) -> bytes:
        return orjson.dumps(self.sign(content))


def raw(msg: dict[str, Any]) -> bytes:
    return orjson.dumps(msg)


def sign_unchecked(
    keys: Keypair, content: Any, sequence: int = 1, previous: str | None = None, timestamp: int = 1
) -> dict[str, Any]:
    """Sign a message without ``ssb.create``'s checks (to build invalid ones)."""
    import base64

    msg: dict[str, Any] = {
        "previous": previous,
        "author": keys.id,
        "sequence": sequence,
        "timestamp": timestamp,
        "hash": "sha256",
        "content": content,
    }
    sig = keys.sign(ssb.stringify(msg).encode("utf-8"))
    msg["signature"] = base64.b64encode(sig).decode() + ".sig.ed25519"
    return msg
