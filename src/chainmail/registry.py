"""The identity registry: who says they are whom, who vouches for it, which keys act for whom.

A projection of the log (DESIGN §3, §5, §8) built from four content types:

- ``about`` — a self-claim (``name``, ``lei``, ``routes``). Only a claim
  about the author itself counts (``about == author``); a claim about
  someone else says nothing about them and is ignored. Every claim is kept,
  newest first, up to ``MAX_CLAIMS`` (SSB ``about`` messages may state one
  field each, so the newest one is not the whole story). A field the message
  leaves out is ``null`` in its claim.
- ``attest`` — a registrar vouches for a subject's real name. It counts only
  from a configured registrar (§3); any other author's ``attest`` is a valid
  message with no effect here. The newest attestation about a subject wins,
  whichever registrar made it, so a registrar revokes by attesting again
  with an ``expires`` in the past. (The newest from each registrar is kept,
  so a registrar dropped from ``--registrar`` stops counting at once; one
  added later counts only for ``attest`` messages applied after it was
  configured: rebuild the registry from the log to count older ones.) An
  attestation is current while ``now < expires`` (``expires`` is the first
  ms it no longer holds; no ``expires``, no end).
- ``role`` — binds a role identity (``id``) to its owner (the author); the
  proof was verified by ``content.check_policy``. One owner per role key,
  the newest binding wins; the owner lists ``{"role", "id"}`` in binding
  order. Binding a key that has rotated away does nothing.
- ``key/rotate`` — moves an identity from the author (old key) to ``to``
  (new key). The old key is frozen: it may post nothing more
  (``key_rotated``), and its record stays as it was at the rotation, plus
  ``rotated_to``. Everything live moves to the new key:

  * claims carry over (they describe the entity, not the key; each keeps the
    id of the message that made it), merged with any the new key made
    itself, newest first;
  * attestations carry over (§3), the newest of the old and new key's winning;
  * roles the old key owned move to the new key, and each role key's
    ``owner`` becomes the new key;
  * when the old key was itself a role key, the new key takes its ``owner``
    and replaces it in the owner's ``roles`` (moved to the end, as a new
    binding): a role identity's owner stays its owner across a rotation;
  * the new key's ``owner`` is therefore ``null`` unless the old key was a
    role key, and its ``rotated_to`` is ``null``.

  There is no ``rotated_from`` in DESIGN's shape: the rotation is the
  ``key/rotate`` message in the old key's feed. Attestations and role
  bindings that name the old key *after* its rotation stay on the old
  record; they do not follow it, since the registrar or owner named a key
  that had already been retired. Registrars and the node are configured by
  key: after a registrar rotates, configure its new key.

``contact`` (follow / block) is replication state, not identity: it changes
nothing here.

**Admission** (``--admission``): in ``open`` mode anyone may post. In
``attested`` mode an author may post anything only when it is the node, a
configured registrar, holds a current attestation (its own or carried over
by rotation), or is a role key whose owner is one of those (a role binding
is the owner's signed statement that the key acts for it, with the key's
consent). Anyone else may post only ``about``, so a newcomer can publish the
claim a registrar will check.

Calls, from the sequencer (single writer), for each message in log order::

    registry.check(author, content, now=now)     # before accepting: raises Rejected
    ... the message goes into the log ...
    changed = registry.apply(msg_id, author, content, now=now)   # ids to persist

``check`` judges against what has been applied: apply a message before
checking the next one of the same batch. ``now`` is the node's clock in ms.
``apply`` expects messages that passed ``ssb.validate`` and
``content.check_policy``; it never raises on content, and applying a
message again (alone, or with the rest of the log after it, as a crash
replay does) changes nothing. Persist ``record(id)`` for each changed
id (with the projection cursor, in one transaction) and load them back with
``Registry.from_records``; or ``to_dict`` / ``from_dict`` the whole registry.

Pure: no I/O and no clock of its own.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from chainmail.errors import Rejected, StorageError

__all__ = [
    "ADMISSION_MODES",
    "APPLIED_TYPES",
    "MAX_CLAIMS",
    "Admission",
    "Registry",
    "search_text",
]

Admission = Literal["open", "attested"]

#: ``--admission`` values (DESIGN §9).
ADMISSION_MODES: Final[tuple[str, ...]] = get_args(Admission)

#: Claims kept per identity, newest first. Each ``about`` is a claim, and a
#: record is rewritten whenever it changes, so an unbounded list would let
#: one author make every further ``about`` of its own cost more. (A replay
#: that re-applies a claim already pushed out by ``MAX_CLAIMS`` newer ones
#: would bring it back; persisting records with the cursor, atomically,
#: means a replay never reaches back that far.)
MAX_CLAIMS: Final = 100

#: The content types ``Registry.apply`` reads; any other changes nothing.
APPLIED_TYPES: Final = frozenset({"about", "attest", "role", "key/rotate"})

#: The content type anyone may post in ``attested`` mode.
_OPEN_TYPE: Final = "about"
#: The field of each content type that names who its deliveries go to.
_NAMING: Final = {"tx/open": "parties", "tx/note": "to", "chan/open": "keys", "chan/share": "keys"}


@dataclass(slots=True)
class _Claim:
    name: str | None
    lei: str | None
    routes: list[str] | None
    message: str
    order: int


@dataclass(slots=True)
class _Attestation:
    name: str
    lei: str | None
    by: str
    expires: int | None
    message: str
    order: int

    def current(self, now: int) -> bool:
        return self.expires is None or now < self.expires


@dataclass(slots=True)
class _Record:
    """One identity. ``attestations`` keeps the newest per registrar, so a
    registrar dropped from the configuration stops counting at once while
    the others still do."""

    id: str
    claims: list[_Claim] = field(default_factory=list)
    attestations: dict[str, _Attestation] = field(default_factory=dict)
    roles: list[tuple[str, str]] = field(default_factory=list)
    owner: str | None = None
    rotated_to: str | None = None

    def holds(self, msg_id: str) -> bool:
        return any(c.message == msg_id for c in self.claims) or any(
            a.message == msg_id for a in self.attestations.values()
        )

    def add_claim(self, claim: _Claim) -> None:
        self.claims.insert(0, claim)
        del self.claims[MAX_CLAIMS:]

    def set_role(self, role: str, role_id: str) -> bool:
        for index, (old_role, old_id) in enumerate(self.roles):
            if old_id == role_id:
                if old_role == role:
                    return False
                self.roles[index] = (role, role_id)
                return True
        self.roles.append((role, role_id))
        return True

    def drop_role(self, role_id: str) -> bool:
        kept = [(r, i) for r, i in self.roles if i != role_id]
        changed = len(kept) != len(self.roles)
        self.roles = kept
        return changed

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "claims": [
                {
                    "name": c.name,
                    "lei": c.lei,
                    "routes": None if c.routes is None else list(c.routes),
                    "message": c.message,
                    "order": c.order,
                }
                for c in self.claims
            ],
            "attestations": [
                {
                    "name": a.name,
                    "lei": a.lei,
                    "by": a.by,
                    "expires": a.expires,
                    "message": a.message,
                    "order": a.order,
                }
                for a in sorted(self.attestations.values(), key=lambda a: a.order)
            ],
            "roles": [{"role": r, "id": i} for r, i in self.roles],
            "owner": self.owner,
            "rotated_to": self.rotated_to,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Record:
        try:
            record = cls(
                id=_text(data["id"]),
                claims=[
                    _Claim(
                        name=_opt_text(c["name"]),
                        lei=_opt_text(c["lei"]),
                        routes=None if c["routes"] is None else _texts(c["routes"]),
                        message=_text(c["message"]),
                        order=_integer(c["order"]),
                    )
                    for c in _list(data["claims"])
                ],
                roles=[(_text(r["role"]), _text(r["id"])) for r in _list(data["roles"])],
                owner=_opt_text(data["owner"]),
                rotated_to=_opt_text(data["rotated_to"]),
            )
            for a in _list(data["attestations"]):
                attestation = _Attestation(
                    name=_text(a["name"]),
                    lei=_opt_text(a["lei"]),
                    by=_text(a["by"]),
                    expires=None if a["expires"] is None else _integer(a["expires"]),
                    message=_text(a["message"]),
                    order=_integer(a["order"]),
                )
                record.attestations[attestation.by] = attestation
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"malformed stored identity record: {exc!r}") from exc
        record.claims.sort(key=lambda c: -c.order)
        return record


class Registry:
    """Identities as the log has established them. Not thread-safe: one writer."""

    def __init__(
        self,
        registrars: Collection[str] = (),
        admission: Admission = "open",
        *,
        node_id: str | None = None,
    ) -> None:
        """Raises ``ValueError`` when ``admission`` is not ``"open"`` or ``"attested"``."""
        if admission not in ADMISSION_MODES:
            raise ValueError(f"admission must be one of {ADMISSION_MODES}, got {admission!r}")
        self.registrars: frozenset[str] = frozenset(registrars)
        self.admission: Admission = admission
        self.node_id = node_id
        self._records: dict[str, _Record] = {}
        #: The identities that have rotated away (``_check_named``'s fast path).
        self._rotated: set[str] = set()
        # Orders everything applied, so "newest" survives merges and reloads.
        self._order = 0

    # --- reading ----------------------------------------------------------------------

    def __contains__(self, identity: object) -> bool:
        return identity in self._records

    def __len__(self) -> int:
        return len(self._records)

    def identity(self, identity: str, *, now: int) -> dict[str, Any]:
        """The record of ``identity`` in DESIGN §8's shape, at node time ``now`` (ms).

        ``{"id", "claims": [{"name", "lei", "routes", "message"}] (newest first),
        "attested": {"name", "lei", "by", "expires", "message"} | None,
        "roles": [{"role", "id"}], "owner": "@…" | None, "rotated_to": "@…" | None}``.
        ``attested`` is the newest attestation from a configured registrar,
        and ``None`` once that one has expired. An identity the registry
        knows nothing about gets the empty record. Raises nothing.
        """
        record = self._records.get(identity)
        if record is None:
            record = _Record(id=identity)
        attested = self._attestation(record, now)
        return {
            "id": record.id,
            "claims": [
                {
                    "name": c.name,
                    "lei": c.lei,
                    "routes": None if c.routes is None else list(c.routes),
                    "message": c.message,
                }
                for c in record.claims
            ],
            "attested": None
            if attested is None
            else {
                "name": attested.name,
                "lei": attested.lei,
                "by": attested.by,
                "expires": attested.expires,
                "message": attested.message,
            },
            "roles": [{"role": r, "id": i} for r, i in record.roles],
            "owner": record.owner,
            "rotated_to": record.rotated_to,
        }

    def search(self, name: str, *, now: int, limit: int) -> list[dict[str, Any]]:
        """Identities whose claimed or attested name contains ``name``, case-insensitively.

        The claimed name is the newest claim that states one; the attested
        name is the current attestation's (as ``identity`` shows it). Keys
        that have rotated away are left out: their successor is found instead.
        Identities with a matching attested name come first, then the rest,
        each by id; at most ``limit``. A linear scan. Raises nothing.
        """
        if limit <= 0:
            return []
        needle = name.casefold()
        attested_hits: list[str] = []
        claimed_hits: list[str] = []
        for record in self._records.values():
            if record.rotated_to is not None:
                continue
            attested = self._attestation(record, now)
            if attested is not None and needle in attested.name.casefold():
                attested_hits.append(record.id)
                continue
            claimed = next((c.name for c in record.claims if c.name is not None), None)
            if claimed is not None and needle in claimed.casefold():
                claimed_hits.append(record.id)
        hits = sorted(attested_hits) + sorted(claimed_hits)
        return [self.identity(i, now=now) for i in hits[:limit]]

    def admitted(self, identity: str, *, now: int) -> bool:
        """True when ``identity`` may post any type at ``now`` (always, in ``open`` mode).

        Ignores rotation (``check`` refuses rotated keys first). Raises nothing.
        """
        if self.admission == "open":
            return True
        if self._admitted_itself(identity, now):
            return True
        record = self._records.get(identity)
        return (
            record is not None
            and record.owner is not None
            and self._admitted_itself(record.owner, now)
        )

    def _admitted_itself(self, identity: str, now: int) -> bool:
        if identity == self.node_id or identity in self.registrars:
            return True
        record = self._records.get(identity)
        return record is not None and self._attestation(record, now) is not None

    def _attestation(self, record: _Record, now: int) -> _Attestation | None:
        """The newest attestation from a configured registrar, if still current."""
        newest: _Attestation | None = None
        for by, attestation in record.attestations.items():
            if by in self.registrars and (newest is None or attestation.order > newest.order):
                newest = attestation
        return newest if newest is not None and newest.current(now) else None

    # --- writing ----------------------------------------------------------------------

    def check(self, author: str, content: object, *, now: int) -> None:
        """Refuse a message the identity rules forbid, before it is accepted.

        Raises ``Rejected`` with code ``key_rotated`` when ``author`` has
        rotated away (the detail names its new key), or when ``content`` is a
        ``key/rotate`` to a key that has itself rotated away; and with code
        ``not_admitted`` in ``attested`` mode when ``author`` is not admitted
        (see the module docstring) and ``content`` is not an ``about``.
        """
        record = self._records.get(author)
        if record is not None and record.rotated_to is not None:
            raise Rejected(
                f"{author} has rotated to {record.rotated_to}: post as the new key",
                code="key_rotated",
            )
        # Runs once a message on the single writer: dicts (what JSON gives) skip
        # the Mapping ABC check, and ``open`` mode skips ``admitted``.
        mapping = type(content) is dict or isinstance(content, Mapping)
        kind = content.get("type") if mapping else None  # type: ignore[attr-defined]
        if kind == "key/rotate" and isinstance(content, Mapping):
            target = self._records.get(str(content.get("to")))
            if target is not None and target.rotated_to is not None:
                raise Rejected(
                    f"key/rotate: {target.id} has itself rotated to {target.rotated_to};"
                    " rotate to a live key",
                    code="key_rotated",
                )
        if kind in _NAMING and mapping:
            self._check_named(kind, content)  # type: ignore[arg-type]
        if self.admission != "open" and kind != _OPEN_TYPE and not self.admitted(author, now=now):
            raise Rejected(
                f"{author} is not admitted: this node accepts only 'about' messages"
                " from identities without a current attestation by one of its registrars",
                code="not_admitted",
            )

    def rotated_to(self, identity: str) -> str | None:
        """The key ``identity`` has rotated to, or ``None`` while it is live. Raises nothing."""
        record = self._records.get(identity)
        return None if record is None else record.rotated_to

    def _check_named(self, kind: str, content: Mapping[str, Any]) -> None:
        """Refuse (``key_rotated``) a message that would route to a key rotated away:
        its deliveries, channel keys included, would reach whoever holds the old key
        and never the identity's new one."""
        if not self._rotated:
            return
        named = content.get(_NAMING[kind])
        if not isinstance(named, (list, dict)):
            return  # the content rules have refused it already
        for ident in named:
            new = self._records[ident].rotated_to if ident in self._rotated else None
            if new is not None:
                raise Rejected(
                    f"{kind}: {ident} has rotated to {new}: name the new key",
                    code="key_rotated",
                )

    def apply(self, msg_id: str, author: str, content: object, *, now: int) -> set[str]:
        """Apply an accepted message, in log order; returns the ids whose record changed.

        Types other than ``about``, ``attest``, ``role`` and ``key/rotate``,
        and messages from a key that has rotated away, change nothing.
        Applying the same ``msg_id`` again changes nothing. ``now`` is unused
        today (every rule here is in message fields) and kept so the
        sequencer's call does not change if one comes to need it. Raises nothing.
        """
        del now
        if not isinstance(content, Mapping):
            return set()
        author_record = self._records.get(author)
        if author_record is not None and author_record.rotated_to is not None:
            return set()
        kind = content.get("type")
        if kind == "about":
            return self._apply_about(msg_id, author, content)
        if kind == "attest":
            return self._apply_attest(msg_id, author, content)
        if kind == "role":
            return self._apply_role(author, content)
        if kind == "key/rotate":
            return self._apply_rotate(author, content)
        return set()

    def _next_order(self) -> int:
        self._order += 1
        return self._order

    def _record(self, identity: str) -> _Record:
        record = self._records.get(identity)
        if record is None:
            record = self._records[identity] = _Record(id=identity)
        return record

    def _apply_about(self, msg_id: str, author: str, content: Mapping[str, Any]) -> set[str]:
        if content.get("about") != author:
            return set()
        record = self._record(author)
        if record.holds(msg_id):
            return set()
        routes = content.get("routes")
        record.add_claim(
            _Claim(
                name=_opt_str(content.get("name")),
                lei=_opt_str(content.get("lei")),
                routes=None
                if not isinstance(routes, list | tuple)
                else [r for r in routes if isinstance(r, str)],
                message=msg_id,
                order=self._next_order(),
            )
        )
        return {author}

    def _apply_attest(self, msg_id: str, author: str, content: Mapping[str, Any]) -> set[str]:
        subject, name = content.get("subject"), content.get("name")
        if author not in self.registrars or not isinstance(subject, str):
            return set()
        if not isinstance(name, str):
            return set()
        record = self._record(subject)
        if record.holds(msg_id):
            return set()
        expires = content.get("expires")
        record.attestations[author] = _Attestation(
            name=name,
            lei=_opt_str(content.get("lei")),
            by=author,
            expires=expires if isinstance(expires, int) and not isinstance(expires, bool) else None,
            message=msg_id,
            order=self._next_order(),
        )
        return {subject}

    def _apply_role(self, author: str, content: Mapping[str, Any]) -> set[str]:
        role, role_id = content.get("role"), content.get("id")
        if not (isinstance(role, str) and isinstance(role_id, str)) or role_id == author:
            return set()
        role_record = self._record(role_id)
        if role_record.rotated_to is not None:
            # A retired key's signature binds nothing new.
            return set()
        return self._bind(author, role, role_record)

    def _bind(self, owner: str, role: str, role_record: _Record) -> set[str]:
        """Make ``owner`` the owner of ``role_record`` as ``role``; returns changed ids."""
        changed: set[str] = set()
        previous = role_record.owner
        if previous is not None and previous != owner:
            old = self._records.get(previous)
            if old is not None and old.drop_role(role_record.id):
                changed.add(previous)
        if previous != owner:
            role_record.owner = owner
            changed.add(role_record.id)
        if self._record(owner).set_role(role, role_record.id):
            changed.add(owner)
        return changed

    def _apply_rotate(self, author: str, content: Mapping[str, Any]) -> set[str]:
        target = content.get("to")
        if not isinstance(target, str) or target == author:
            return set()
        new = self._record(target)
        if new.rotated_to is not None:
            return set()
        old = self._record(author)
        old.rotated_to = target
        self._rotated.add(author)
        changed = {author, target}

        held = {c.message for c in new.claims}
        merged = new.claims + [_copy_claim(c) for c in old.claims if c.message not in held]
        merged.sort(key=lambda c: -c.order)
        new.claims = merged[:MAX_CLAIMS]

        for by, attestation in old.attestations.items():
            mine = new.attestations.get(by)
            if mine is None or attestation.order > mine.order:
                new.attestations[by] = _copy_attestation(attestation)

        # Roles the old key owned now belong to the new key. The old record
        # keeps its list as it was at the rotation (``_bind`` edits it).
        frozen_roles = list(old.roles)
        for role, role_id in frozen_roles:
            role_record = self._records.get(role_id)
            if role_id != target and role_record is not None and role_record.owner == author:
                changed |= self._bind(target, role, role_record)
        old.roles = frozen_roles
        if new.owner == author:
            # The new key was the old key's role key; now it is the identity itself.
            new.owner = None

        # A role key that rotates stays its owner's role key.
        owner = old.owner
        owner_record = None if owner is None else self._records.get(owner)
        if owner is not None and owner_record is not None:
            role_name = next((r for r, i in owner_record.roles if i == author), None)
            if role_name is not None:
                if owner != target:
                    changed |= self._bind(owner, role_name, new)
                owner_record.drop_role(author)
                changed.add(owner)
        return changed

    # --- persistence ------------------------------------------------------------------

    def record(self, identity: str) -> dict[str, Any] | None:
        """The stored form of one identity (JSON-ready), or ``None`` if unknown. Raises nothing.

        Richer than ``identity``: it keeps every registrar's newest
        attestation and each item's apply order, which ``from_records`` needs.
        """
        record = self._records.get(identity)
        return None if record is None else record.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """The whole registry's state as a JSON-ready dict (no configuration). Raises nothing."""
        return {"identities": [self._records[i].to_dict() for i in sorted(self._records)]}

    @classmethod
    def from_records(
        cls,
        records: Iterable[Mapping[str, Any]],
        registrars: Collection[str] = (),
        admission: Admission = "open",
        *,
        node_id: str | None = None,
    ) -> Registry:
        """A registry holding ``records`` (as ``record`` wrote them), with this configuration.

        Raises ``StorageError`` when a record is malformed or two share an id,
        and ``ValueError`` for a bad ``admission``.
        """
        registry = cls(registrars, admission, node_id=node_id)
        for data in records:
            record = _Record.from_dict(data)
            if record.id in registry._records:
                raise StorageError(f"identity {record.id} stored twice")
            registry._records[record.id] = record
            if record.rotated_to is not None:
                registry._rotated.add(record.id)
            orders = [c.order for c in record.claims]
            orders += [a.order for a in record.attestations.values()]
            registry._order = max([registry._order, *orders])
        return registry

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        registrars: Collection[str] = (),
        admission: Admission = "open",
        *,
        node_id: str | None = None,
    ) -> Registry:
        """The registry ``to_dict`` wrote, with this configuration.

        Raises ``StorageError`` when ``data`` is malformed, ``ValueError`` for
        a bad ``admission``.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("identities"), list):
            raise StorageError("malformed stored registry: expected {'identities': [...]}")
        return cls.from_records(data["identities"], registrars, admission, node_id=node_id)


def search_text(record: Mapping[str, Any]) -> str:
    """The text a store matches a name search against, for a ``Registry.record``.

    Every name the record's claims and attestations state, casefolded, one a
    line: a superset of what ``Registry.search`` matches (the newest claimed
    name and the current attestation's), so a store's substring match of the
    casefolded query finds every hit and little else. Not the record's JSON:
    its field names and ids matched every record, and JSON escapes hid names
    with a quote or backslash. A key that has rotated away has none (a
    search leaves it out and finds its successor, which holds its claims).
    Raises nothing; a malformed record gives "".
    """
    if record.get("rotated_to") is not None:
        return ""
    names: list[str] = []
    for part in ("claims", "attestations"):
        items = record.get(part)
        for item in items if isinstance(items, list) else ():
            name = item.get("name") if isinstance(item, Mapping) else None
            if isinstance(name, str):
                names.append(name.casefold())
    return "\n".join(names)


# --- helpers ---------------------------------------------------------------------------


def _copy_claim(claim: _Claim) -> _Claim:
    routes = None if claim.routes is None else list(claim.routes)
    return _Claim(claim.name, claim.lei, routes, claim.message, claim.order)


def _copy_attestation(attestation: _Attestation) -> _Attestation:
    return _Attestation(
        attestation.name,
        attestation.lei,
        attestation.by,
        attestation.expires,
        attestation.message,
        attestation.order,
    )


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _opt_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {value!r}")
    return value


def _texts(value: object) -> list[str]:
    return [_text(v) for v in _list(value)]


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value
