"""Witnesses: the stages a block goes through before it is sealed (DESIGN §7).

A node configured with witnesses (``serve --witness @ID … --threshold N``)
has each of its blocks co-signed in stages, ``STAGES`` in order. A witness
follows the node's firehose and blocks, recomputes every root itself, and
posts a ``block/sign`` for the first stage of a block it found sound; the
node, once ``threshold`` witnesses signed a stage, posts a ``block/stage``
naming them, their signature messages and the Merkle root of those
messages; a witness that checked that stage signs the next one. A block is
*sealed* when its last stage is recorded.

``Stages`` is that state machine, pure: the sequencer feeds it the log's
``block``, ``block/sign`` and ``block/stage`` messages in log order and asks
it which stages are ready to record. It holds the blocks of the last
``WINDOW`` heights that are not sealed yet; older ones can no longer be
signed.

Rules for a ``block/sign`` (``check_sign``): from a configured witness
(``not_admitted``); for a block of this node, by height and id
(``invalid_format``); for the block's current stage (a later stage is
``invalid_format`` too, not ``out_of_order``: that code says the author's
feed and the node's diverged, and a client keeps the refused message to send
again before its next one; a stage already recorded is accepted and not
counted: it was late); once per witness and stage (``invalid_format``).
"""

from __future__ import annotations

import base64
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from chainmail import merkle, ssb
from chainmail.blocks import message_leaf
from chainmail.errors import InvalidMessage, ProofError, Rejected

__all__ = [
    "SIGN",
    "STAGES",
    "WINDOW",
    "StageRecord",
    "Stages",
    "check_stage",
    "is_signature",
    "stage_root",
    "threshold_of",
]

#: The stages of every block, in order (DESIGN §7's default).
STAGES: Final = ("precommit", "commit", "seal")
#: Unsealed blocks the node keeps taking signatures for: a day of blocks at 1 s.
WINDOW: Final = 86_400
#: The content type of a witness's signature on a block stage.
SIGN: Final = "block/sign"


def is_signature(content: object) -> bool:
    """``content`` is a witness's ``block/sign``: not activity a block must cover (the
    node builds none for it, and an auditor does not wait for one)."""
    return isinstance(content, dict) and content.get("type") == SIGN


def stage_root(signs: Sequence[str]) -> bytes:
    """The Merkle root (RFC 9162) of a stage's signature messages, in ``signs`` order."""
    return merkle.root([message_leaf(s) for s in signs])


@dataclass(frozen=True, slots=True)
class StageRecord:
    """A stage that reached its threshold: what its ``block/stage`` message says."""

    height: int
    block: str
    stage: str
    signers: tuple[str, ...]
    signs: tuple[str, ...]

    @property
    def root(self) -> bytes:
        return stage_root(self.signs)

    def content(self) -> dict[str, Any]:
        return {
            "type": "block/stage",
            "block": self.block,
            "height": self.height,
            "stage": self.stage,
            "signers": list(self.signers),
            "signs": list(self.signs),
            "root": base64.b64encode(self.root).decode("ascii"),
        }


@dataclass(slots=True)
class _Block:
    id: str
    #: Stages recorded so far (``block/stage`` messages in the log).
    recorded: int = 0
    #: The current stage's signatures: witness → its block/sign message id.
    signs: dict[str, str] = field(default_factory=dict)


def threshold_of(witnesses: Iterable[str], threshold: int | None) -> int:
    """The witnesses that must sign a stage: ``threshold``, or all of them (the default)."""
    return len(frozenset(witnesses)) if threshold is None else threshold


class Stages:
    """The witnessing state of a node's unsealed blocks; see the module's docstring."""

    def __init__(self, witnesses: Iterable[str], threshold: int) -> None:
        self.witnesses = frozenset(witnesses)
        if not 1 <= threshold <= len(self.witnesses):
            raise ValueError(
                f"threshold: expected 1 to {len(self.witnesses)} witnesses, got {threshold}"
            )
        self.threshold = threshold
        self._blocks: dict[int, _Block] = {}
        #: Every height taken in, lowest first (sealed ones too, until they fall out of
        #: the window): what leaves the window is found without a walk of ``_blocks``.
        self._heights: list[int] = []
        self._top = 0
        #: Stages ready to record and not yet logged, so none is recorded twice.
        self._posting: set[tuple[int, int]] = set()
        #: Heights whose current stage has its threshold of signatures: what ``ready``
        #: looks at on every tick of the block timer, not every unsealed block.
        self._full: set[int] = set()

    def __len__(self) -> int:
        return len(self._blocks)

    def sealed(self, recorded: int) -> bool:
        return recorded >= len(STAGES)

    # --- the log, in order -------------------------------------------------------------

    def see_block(self, height: int, block_id: str) -> None:
        """A ``block`` message of the node."""
        if height <= self._top - WINDOW or height in self._blocks:
            return
        self._blocks[height] = _Block(block_id)
        heapq.heappush(self._heights, height)
        self._top = max(self._top, height)
        while self._heights[0] <= self._top - WINDOW:
            old = heapq.heappop(self._heights)
            self._blocks.pop(old, None)
            self._full.discard(old)

    def see_sign(self, sign_id: str, author: str, content: Mapping[str, Any]) -> bool:
        """A ``block/sign`` in the log (checked by ``check_sign`` when it was logged; a
        replay under another configuration counts only what this one allows).
        True when it counts for its block's current stage."""
        block = self._current(author, content)
        if block is None or author in block.signs:
            return False
        block.signs[author] = sign_id
        if len(block.signs) >= self.threshold:
            self._full.add(int(content["height"]))
        return True

    def see_stage(self, content: Mapping[str, Any]) -> None:
        """A ``block/stage`` of the node: its stage is recorded, the next one begins."""
        height = content.get("height")
        if type(height) is not int:
            return
        block = self._blocks.get(height)
        if block is None or content.get("block") != block.id:
            return
        stage = content.get("stage")
        if block.recorded < len(STAGES) and stage == STAGES[block.recorded]:
            self._posting.discard((height, block.recorded))
            block.recorded += 1
            block.signs = {}
            self._full.discard(height)
            if self.sealed(block.recorded):
                del self._blocks[height]

    def load(self, height: int, block_id: str, recorded: int, signs: Mapping[str, str]) -> None:
        """A block's state as the store kept it (on start)."""
        if self.sealed(recorded):
            return
        self.see_block(height, block_id)
        block = self._blocks.get(height)
        if block is not None:
            block.recorded = recorded
            block.signs = {w: s for w, s in signs.items() if w in self.witnesses}
            if len(block.signs) >= self.threshold:
                self._full.add(height)
            else:
                self._full.discard(height)

    def see_top(self, height: int) -> None:
        """The newest block in the log (on start), sealed or not: what the window is below."""
        self._top = max(self._top, height)

    # --- ingest ------------------------------------------------------------------------

    def check_sign(
        self,
        author: str,
        content: Mapping[str, Any],
        logged: Callable[[int], str | None] = lambda height: None,
    ) -> None:
        """Raise ``Rejected``/``InvalidMessage`` for a ``block/sign`` the node must refuse.

        ``logged`` gives the id of the node's block at a height this no longer
        holds (sealed), None for none: a late signature must name that block too.
        """
        if author not in self.witnesses:
            raise Rejected(f"{author} is not a witness of this node", code="not_admitted")
        height, block_id, stage = content["height"], content["block"], content["stage"]
        if stage not in STAGES:
            raise InvalidMessage(
                f"block/sign: stage must be one of {', '.join(STAGES)}, got {stage!r}",
                code="invalid_format",
            )
        block = self._blocks.get(height)
        if block is None:
            if height > self._top or height <= self._top - WINDOW:
                raise InvalidMessage(
                    f"block/sign: no block {height} to witness (the newest is {self._top};"
                    f" blocks {WINDOW} or more below it are no longer witnessed)",
                    code="invalid_format",
                )
            sealed = logged(height)
            if sealed != block_id:
                raise InvalidMessage(
                    f"block/sign: block {height} is {sealed}, not {block_id}"
                    if sealed is not None
                    else f"block/sign: no block {height} to witness",
                    code="invalid_format",
                )
            return  # sealed already: a late signature, accepted and not counted
        if block.id != block_id:
            raise InvalidMessage(
                f"block/sign: block {height} is {block.id}, not {block_id}", code="invalid_format"
            )
        index = STAGES.index(stage)
        if index > block.recorded:
            raise InvalidMessage(
                f"block/sign: stage {stage} of block {height} before its stage"
                f" {STAGES[block.recorded]} is recorded",
                code="invalid_format",
            )
        if index == block.recorded and author in block.signs:
            raise InvalidMessage(
                f"block/sign: {author} already signed stage {stage} of block {height}"
                f" ({block.signs[author]})",
                code="invalid_format",
            )

    def _current(self, author: str, content: Mapping[str, Any]) -> _Block | None:
        """The block a sign counts for: a witness's, for the block's current stage."""
        if author not in self.witnesses:
            return None
        height = content.get("height")
        block = self._blocks.get(height) if type(height) is int else None
        if block is None or content.get("block") != block.id:
            return None
        if block.recorded >= len(STAGES) or content.get("stage") != STAGES[block.recorded]:
            return None
        return block

    # --- the node's part ---------------------------------------------------------------

    def ready(self) -> list[StageRecord]:
        """Stages that reached the threshold and are not recorded yet, lowest height first.

        Each is returned once; ``see_stage`` (its message logged) or ``abandon``
        (it was not) follows.
        """
        out: list[StageRecord] = []
        for height in sorted(self._full):
            block = self._blocks[height]
            key = (height, block.recorded)
            if key in self._posting:
                continue
            self._posting.add(key)
            signers = tuple(sorted(block.signs))
            out.append(
                StageRecord(
                    height,
                    block.id,
                    STAGES[block.recorded],
                    signers,
                    tuple(block.signs[w] for w in signers),
                )
            )
        return out

    def abandon(self, records: Iterable[StageRecord]) -> None:
        """Stages ``ready`` gave whose messages were not logged: ready again."""
        for r in records:
            self._posting.discard((r.height, STAGES.index(r.stage)))


def check_stage(
    stage: Mapping[str, Any],
    message: Mapping[str, Any],
    signs: Mapping[str, Mapping[str, Any]],
    *,
    node_id: str,
    block_id: str,
    height: int,
    index: int,
    witnesses: Iterable[str],
    threshold: int,
    hmac_key: bytes | None = None,
) -> str:
    """Check stage ``index`` of a block as a reader finds it, trusting the node for nothing.

    ``stage`` is the block's entry in ``GET /v1/blocks/{height}``'s ``stages``,
    ``message`` the signed ``block/stage`` message it names, ``signs`` the signed
    ``block/sign`` messages by id. The message must be the node's, for this
    block, height and stage; its signers witnesses of the node, at least
    ``threshold``, each with a signature message of its own for this stage;
    its root the Merkle root of those messages. Returns a summary; raises
    ``ProofError``.
    """
    name = STAGES[index] if index < len(STAGES) else "?"
    try:
        checked = ssb.check(dict(message), hmac_key)
    except InvalidMessage as exc:
        raise ProofError(f"stage {name}: its message does not verify: {exc.detail}") from exc
    content = checked.content
    if checked.author != node_id:
        raise ProofError(f"stage {name}: signed by {checked.author}, not the node")
    if checked.id != stage.get("id"):
        raise ProofError(f"stage {name}: the message is {checked.id}, not {stage.get('id')}")
    if not isinstance(content, dict) or content.get("type") != "block/stage":
        raise ProofError(f"stage {name}: not a block/stage message")
    # ``type(...) is int``: JSON's true equals 1 in Python, and a height is no boolean.
    if type(content.get("height")) is not int or (
        content.get("block"),
        content.get("height"),
        content.get("stage"),
    ) != (block_id, height, name):
        raise ProofError(
            f"stage {name}: it is for {content.get('stage')!r} of block {content.get('height')!r}"
            f" {content.get('block')!r}"
        )
    signers, ids = content.get("signers"), content.get("signs")
    if not isinstance(signers, list) or not isinstance(ids, list) or len(signers) != len(ids):
        raise ProofError(f"stage {name}: expected one signature message per signer")
    allowed = frozenset(witnesses)
    strangers = sorted(set(map(str, signers)) - allowed)
    if strangers:
        raise ProofError(f"stage {name}: {', '.join(strangers)} are not witnesses of the node")
    if len(set(signers)) < threshold:
        raise ProofError(f"stage {name}: {len(set(signers))} signers, the threshold is {threshold}")
    for signer, sign_id in zip(signers, ids, strict=True):
        raw = signs.get(str(sign_id))
        if raw is None:
            raise ProofError(f"stage {name}: no signature message {sign_id}")
        try:
            sign = ssb.check(dict(raw), hmac_key)
        except InvalidMessage as exc:
            raise ProofError(f"stage {name}: {sign_id} does not verify: {exc.detail}") from exc
        body = sign.content
        if (
            sign.id != sign_id
            or sign.author != signer
            or not isinstance(body, dict)
            or type(body.get("height")) is not int
            or (body.get("type"), body.get("block"), body.get("height"), body.get("stage"))
            != (SIGN, block_id, height, name)
        ):
            raise ProofError(f"stage {name}: {sign_id} is not {signer}'s signature of it")
    try:
        root = base64.b64decode(str(content.get("root")), validate=True)
    except ValueError as exc:
        raise ProofError(f"stage {name}: its root is not base64") from exc
    if root != stage_root([str(i) for i in ids]):
        raise ProofError(f"stage {name}: its root is not the root of its signature messages")
    return f"{name}: {len(signers)} of the node's witnesses signed"
