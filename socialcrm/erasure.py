"""Erasure in the state store: find everything about a person, then remove it in one go.

``find_footprint`` reads what the store holds about a person (their row, engagements,
messages and the conversations that are theirs alone, ledger entries, intents, dead
letters) and gathers their identifiers (user id, handles, names, emails) as
:class:`Needles`, which also find them in free text. ``erase_from_store`` deletes all of
it in one transaction, replaces mentions of them in other people's free text with
``[erased]``, records the suppression (reason ``erased``) and one audit line holding
counts and statuses only.

The store goes last in an erasure (the flow handles the CRM and the helpdesk first): until
this transaction commits, the ledger still says where the person's records are, so an
erasure interrupted anywhere can simply be run again.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from socialcrm import consent, schema
from socialcrm.state import StateStore, _chunks, utcnow

ERASED_TEXT = "[erased]"
# Tables this module writes, never searched or scrubbed; cursors hold only post ids.
OWN_TABLES = {
    "store_meta",
    "suppressions",
    "erasure_audit",
    "alembic_version",
    "cursors",
    "tokens",  # OAuth tokens: random text a handle could match, never about a person
}
# Fields of a stored profile that are someone's own identity: never scrubbed (two people
# may share a name), only deleted with that person.
IDENTITY_FIELDS = {
    "platform",
    "user_id",
    "handle",
    "username",
    "display_name",
    "name",
    "email",
    "profile_url",
    "id",
}
_PERSON = re.compile(r"(?P<platform>[a-z][a-z0-9]*):(?P<user_id>[A-Za-z0-9_.@-]{1,100})")
_SAFE_AUDIT_TEXT = re.compile(r"[a-z][a-z _:/-]{0,60}")
_SCAN_BATCH = 1000


class ErasureError(ValueError):
    """An erasure that cannot proceed; the message names no one."""


@dataclass(frozen=True, slots=True)
class Person:
    platform: str
    user_id: str

    @property
    def key(self) -> str:
        return f"{self.platform}:{self.user_id}"


def parse_person(ref: str) -> Person:
    """``"x:12345"`` -> Person; the identity key, never a handle (handles change)."""
    match = _PERSON.fullmatch(ref.strip())
    if not match:
        raise ErasureError('expected a person key like "x:12345" (platform, colon, user id)')
    return Person(match["platform"], match["user_id"])


@dataclass
class Needles:
    """A person's identifiers, to find them in text: whole words, any case.

    The user id matches only between non-alphanumerics (``x:conversation:12-34`` names user
    12, ``x:like:99:123`` names user 123, ``4123`` does not name 123).
    """

    person: Person
    handles: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)

    def add(
        self,
        *,
        handles: Iterable[str | None] = (),
        names: Iterable[str | None] = (),
        emails: Iterable[str | None] = (),
    ) -> None:
        for target, values, shortest in (
            (self.handles, handles, 2),
            (self.names, names, 3),
            (self.emails, emails, 3),
        ):
            for value in values:
                text = " ".join(str(value or "").split()).lstrip("@")
                if len(text) >= shortest and text.lower() not in {t.lower() for t in target}:
                    target.add(text)
        self._pattern = None

    def pattern(self) -> re.Pattern[str]:
        if self._pattern is None:
            parts = [rf"(?<![0-9A-Za-z]){re.escape(self.person.user_id)}(?![0-9A-Za-z])"]
            for handle in sorted(self.handles, key=len, reverse=True):
                parts.append(rf"(?<![\w@])@?{re.escape(handle)}(?![\w])")
            for name in sorted(self.names, key=len, reverse=True):
                words = r"\s+".join(re.escape(word) for word in name.split())
                parts.append(rf"(?<![\w]){words}(?![\w])")
            for email in sorted(self.emails, key=len, reverse=True):
                parts.append(rf"(?<![\w.+-]){re.escape(email)}(?![\w])")
            self._pattern = re.compile("|".join(parts), re.IGNORECASE)
        return self._pattern

    def found_in(self, text: str | None) -> bool:
        return bool(text) and self.pattern().search(str(text)) is not None

    def scrub(self, text: str) -> str:
        return self.pattern().sub(ERASED_TEXT, text)

    def terms(self) -> list[str]:
        """Every identifier, for matching done elsewhere (helpdesk redaction)."""
        return [self.person.user_id, *self.handles, *self.names, *self.emails]

    def like_terms(self) -> list[str]:
        """Lower-case substrings for a SQL ``LIKE`` pre-filter (confirmed by ``pattern``),
        in plain and JSON-escaped forms (SQLite stores JSON with ``\\u`` escapes).

        Also as a ``lower()`` that folds ASCII letters only leaves the term written as is,
        in capitals or capitalised: PostgreSQL in the C locale does that to the text.
        """
        found: dict[str, None] = {}
        for term in self.terms():
            lowered = term.lower()
            found[lowered] = None
            found[json.dumps(lowered)[1:-1]] = None
            found[json.dumps(term)[1:-1].lower()] = None
            for written in (term, term.upper(), term.title()):
                found[_ascii_lower(written)] = None
        return list(found)


def _ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


@dataclass
class Footprint:
    """What the state store holds about one person."""

    person: Person
    people: int = 0
    engagement_keys: list[str] = field(default_factory=list)
    message_keys: list[str] = field(default_factory=list)  # theirs, and in their conversations
    own_message_keys: list[str] = field(default_factory=list)  # the ones they sent
    conversation_keys: list[str] = field(default_factory=list)  # theirs alone (1:1, mentions)
    shared_conversation_keys: list[str] = field(default_factory=list)  # groups they spoke in
    deliveries: list[tuple[str, str, str | None]] = field(default_factory=list)
    intents: list[tuple[str, str]] = field(default_factory=list)
    dead_letter_ids: list[int] = field(default_factory=list)
    other_rows: dict[str, int] = field(default_factory=dict)  # tables with a person_key
    suppression: str | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.people
            or self.engagement_keys
            or self.message_keys
            or self.deliveries
            or self.intents
            or self.dead_letter_ids
            or any(self.other_rows.values())
        )

    def destination_ids(
        self, destination: str, record_keys: Iterable[str] | None = None
    ) -> list[str]:
        """Ids in ``destination`` the ledger knows for this person (optionally only for
        ``record_keys``)."""
        wanted = set(record_keys) if record_keys is not None else None
        return sorted(
            {
                str(dest_id)
                for key, dest, dest_id in self.deliveries
                if dest == destination and dest_id and (wanted is None or key in wanted)
            }
        )

    def counts(self) -> dict[str, int]:
        return {
            "people": self.people,
            "engagements": len(self.engagement_keys),
            "messages": len(self.message_keys),
            "conversations": len(self.conversation_keys),
            "deliveries": len(self.deliveries),
            "intents": len(self.intents),
            "dead_letters": len(self.dead_letter_ids),
            "other_rows": sum(self.other_rows.values()),
        }


def find_footprint(
    store: StateStore, person: Person, needles: Needles | None = None
) -> tuple[Footprint, Needles]:
    """Everything the store holds about ``person``, and their identifiers (read only)."""
    needles = needles or Needles(person)
    with store.transaction() as connection:
        footprint = _find(connection, person, needles)
    footprint.suppression = consent.suppression_reasons(store, [person.key]).get(person.key)
    return footprint, needles


def _find(connection: sa.Connection, person: Person, needles: Needles) -> Footprint:
    key = person.key
    found = Footprint(person)
    people, engagements, messages = schema.people, schema.engagements, schema.messages
    for person_row in connection.execute(
        sa.select(people).where(people.c.person_key == key)
    ).mappings():
        found.people += 1
        profile = dict(person_row["profile"] or {})
        needles.add(
            handles=[person_row["handle"], profile.get("handle")],
            names=[profile.get("display_name")],
            emails=[profile.get("email")],
        )
    found.engagement_keys = sorted(
        connection.execute(
            sa.select(engagements.c.engagement_key).where(engagements.c.person_key == key)
        ).scalars()
    )
    own = connection.execute(
        sa.select(messages.c.message_key, messages.c.conversation_key, messages.c.sender).where(
            messages.c.person_key == key
        )
    ).all()
    found.own_message_keys = sorted(row.message_key for row in own)
    for message in own:
        sender = dict(message.sender or {})
        needles.add(
            handles=[sender.get("handle")],
            names=[sender.get("display_name")],
            emails=[sender.get("email")],
        )
    # A conversation is theirs alone when every customer message in it is theirs, or when
    # its key names them (a 1:1 conversation is named after both user ids).
    conversations = {row.conversation_key for row in own}
    for candidate in _keys_naming(connection, messages.c.conversation_key, person, distinct=True):
        conversations.add(candidate)
    mine: set[str] = set()
    shared: set[str] = set()
    for chunk in _chunks(sorted(conversations)):
        senders: dict[str, set[str]] = {c: set() for c in chunk}
        for pair in connection.execute(
            sa.select(messages.c.conversation_key, messages.c.person_key)
            .where(messages.c.conversation_key.in_(chunk), messages.c.from_brand.is_(False))
            .distinct()
        ):
            senders[pair.conversation_key].add(pair.person_key)
        for conversation, who in senders.items():
            if who <= {key} or needles.found_in(_conversation_id(conversation)):
                mine.add(conversation)
            else:
                shared.add(conversation)
    found.conversation_keys = sorted(mine)
    found.shared_conversation_keys = sorted(shared)
    message_keys = set(found.own_message_keys)
    for chunk in _chunks(found.conversation_keys):
        message_keys.update(
            connection.execute(
                sa.select(messages.c.message_key).where(messages.c.conversation_key.in_(chunk))
            ).scalars()
        )
    found.message_keys = sorted(message_keys)
    record_keys = {key, *found.engagement_keys, *found.message_keys, *found.conversation_keys}
    found.deliveries = _ledger_rows(connection, schema.deliveries, record_keys, person)
    found.intents = [
        (k, d) for k, d, _ in _ledger_rows(connection, schema.intents, record_keys, person)
    ]
    found.dead_letter_ids = _dead_letters(connection, record_keys, needles)
    for table in _person_key_tables():
        count = connection.execute(
            sa.select(sa.func.count()).select_from(table).where(table.c.person_key == key)
        ).scalar_one()
        found.other_rows[table.name] = int(count)
    return found


def _conversation_id(conversation_key: str) -> str:
    return conversation_key.rsplit(":", 1)[-1]


def _keys_naming(
    connection: sa.Connection, column: Any, person: Person, *, distinct: bool = False
) -> list[str]:
    """Values of a key column that name the person's user id (``LIKE``, then the regex)."""
    needle = _like_escape(person.user_id)
    query = sa.select(column).where(column.like(f"%{needle}%", escape="\\"))
    if distinct:
        query = query.distinct()
    bounded = Needles(person).pattern()
    return [value for value in connection.execute(query).scalars() if bounded.search(value)]


def _ledger_rows(
    connection: sa.Connection, table: sa.Table, record_keys: set[str], person: Person
) -> list[tuple[str, str, str | None]]:
    """Ledger (or intent) rows of these records, or whose record key names the person."""
    has_id = "destination_id" in table.c
    columns = [table.c.record_key, table.c.destination]
    if has_id:
        columns.append(table.c.destination_id)
    rows: dict[tuple[str, str], str | None] = {}
    for chunk in _chunks(sorted(record_keys)):
        for row in connection.execute(sa.select(*columns).where(table.c.record_key.in_(chunk))):
            rows[(row[0], row[1])] = row[2] if has_id else None
    naming = set(_keys_naming(connection, table.c.record_key, person, distinct=True))
    for chunk in _chunks(sorted(naming)):
        for row in connection.execute(sa.select(*columns).where(table.c.record_key.in_(chunk))):
            rows[(row[0], row[1])] = row[2] if has_id else None
    return sorted((k, d, i) for (k, d), i in rows.items())


# Payload fields that say whose record a letter holds (a tweet's author, a DM's sender, a
# user object's id, a lead candidate's person key).
_OWNER_FIELDS = ("person_key", "author_id", "sender_id", "user_id", "id")


def _owned(payload: Any, person: Person) -> bool:
    if not isinstance(payload, dict):
        return False
    return any(str(payload.get(f)) in (person.key, person.user_id) for f in _OWNER_FIELDS)


def _dead_letters(connection: sa.Connection, record_keys: set[str], needles: Needles) -> list[int]:
    """The person's own dead letters: of their records, keyed by them, or holding a record
    of theirs that had no usable key. Others' letters that only mention them are kept, and
    their text scrubbed (``_scrub_mentions``): deleting them would lose those people's
    failures, which replay could no longer redo.

    Read in batches and matched here: payloads are JSON, stored escaped on SQLite.
    """
    table = schema.dead_letters
    found: list[int] = []
    after = 0
    while True:
        rows = connection.execute(
            sa.select(
                table.c.id, table.c.record_key, table.c.reason, table.c.field, table.c.payload
            )
            .where(table.c.id > after)
            .order_by(table.c.id)
            .limit(_SCAN_BATCH)
        ).all()
        if not rows:
            return found
        for row in rows:
            if (
                row.record_key in record_keys
                or needles.found_in(row.record_key)
                or _owned(row.payload, needles.person)
            ):
                found.append(int(row.id))
        after = int(rows[-1].id)


def _person_key_tables() -> list[sa.Table]:
    """Tables other than the known ones that hold rows keyed by a person (forward
    compatible: a table added later with a ``person_key`` column is erased too)."""
    known = {"people", "engagements", "messages"}
    return [
        table
        for table in schema.metadata.sorted_tables
        if "person_key" in table.c and table.name not in known | OWN_TABLES
    ]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --- erasing ------------------------------------------------------------------------------


@dataclass
class StoreErasure:
    """What the store step did (or, in a dry run, would do): counts only."""

    counts: dict[str, int]
    scrubbed: dict[str, int]
    suppression: str  # added | raised | unchanged
    audited: bool

    def summary(self) -> dict[str, Any]:
        return {
            **self.counts,
            "scrubbed_rows": sum(self.scrubbed.values()),
            "suppression": self.suppression,
            "audited": self.audited,
        }


def erase_from_store(
    store: StateStore,
    person: Person,
    needles: Needles,
    *,
    crm_policy: str,
    helpdesk_policy: str,
    outcome: dict[str, Any],
) -> StoreErasure:
    """Delete every row about ``person``, scrub mentions of them elsewhere, suppress them
    and write one audit line: all in one transaction (a dry-run store rolls it back).

    ``outcome`` is what the other systems reported (counts and statuses); it goes into
    the audit line, and is refused if it holds anything that names the person. A person
    already erased, with nothing left to remove, changes nothing: no new audit line.
    """
    salt_bytes = consent.salt(store)
    digest = consent.key_hash(salt_bytes, person.key)
    with store.transaction() as connection:
        found = _find(connection, person, needles)
        scrubbed = _scrub_mentions(connection, needles, dry=True)
        current = connection.execute(
            sa.select(schema.suppressions.c.reason).where(schema.suppressions.c.key_hash == digest)
        ).scalar_one_or_none()
        quiet = found.empty and not any(scrubbed.values()) and not _did_something(outcome)
        if quiet and current == consent.ERASED:
            return StoreErasure(found.counts(), {}, "unchanged", audited=False)
        _delete(connection, found)
        scrubbed = _scrub_mentions(connection, needles, dry=False)
        changed = consent._suppress(connection, salt_bytes, [person.key], consent.ERASED)
        suppression = "unchanged" if not changed else ("raised" if current else "added")
        record = {
            "crm": outcome.get("crm", {}),
            "helpdesk": outcome.get("helpdesk", {}),
            "store": {
                **found.counts(),
                "scrubbed_rows": sum(scrubbed.values()),
                "suppression": suppression,
            },
        }
        _check_audit(record, needles)
        connection.execute(
            schema.erasure_audit.insert().values(
                at=utcnow(),
                person_hash=digest[: consent.HASH_PREFIX],
                status=str(outcome.get("status") or "completed"),
                crm_policy=crm_policy,
                helpdesk_policy=helpdesk_policy,
                outcome=record,
            )
        )
    return StoreErasure(found.counts(), scrubbed, suppression, audited=True)


def _did_something(outcome: dict[str, Any]) -> bool:
    """Whether another system reported a change (a count of deleted, redacted... > 0)."""
    verbs = ("_deleted", "_anonymised", "_redacted", "_updated")
    return any(
        isinstance(value, int) and value > 0 and str(name).endswith(verbs)
        for part in outcome.values()
        if isinstance(part, dict)
        for name, value in part.items()
    )


def _delete(connection: sa.Connection, found: Footprint) -> None:
    key = found.person.key
    connection.execute(schema.people.delete().where(schema.people.c.person_key == key))
    connection.execute(schema.engagements.delete().where(schema.engagements.c.person_key == key))
    for chunk in _chunks(found.message_keys):
        connection.execute(schema.messages.delete().where(schema.messages.c.message_key.in_(chunk)))
    for table, rows in ((schema.deliveries, found.deliveries), (schema.intents, found.intents)):
        for record_key, destination, *_ in rows:
            connection.execute(
                table.delete().where(
                    table.c.record_key == record_key, table.c.destination == destination
                )
            )
    for chunk in _chunks(found.dead_letter_ids):
        connection.execute(schema.dead_letters.delete().where(schema.dead_letters.c.id.in_(chunk)))
    for table in _person_key_tables():
        connection.execute(table.delete().where(table.c.person_key == key))


def _free_text_columns(table: sa.Table) -> list[sa.Column[Any]]:
    """Columns of free text (``Text``, ``JSON``): where others may mention the person."""
    return [
        column
        for column in table.c
        if isinstance(column.type, sa.Text | sa.JSON) and not column.primary_key
    ]


def _scrub_mentions(connection: sa.Connection, needles: Needles, *, dry: bool) -> dict[str, int]:
    """Replace mentions of the person in everyone else's free text with ``[erased]``.

    Each table is pre-filtered in SQL (``LIKE`` on the lower-cased text) and confirmed
    with the regex here; the identity fields of other people's profiles are left alone.
    """
    terms = needles.like_terms()
    changed: dict[str, int] = {}
    for table in schema.metadata.sorted_tables:
        if table.name in OWN_TABLES:
            continue
        columns = _free_text_columns(table)
        keys = list(table.primary_key.columns)
        if not columns or not keys:
            continue
        conditions = [
            sa.func.lower(sa.cast(column, sa.Text)).like(f"%{_like_escape(term)}%", escape="\\")
            for column in columns
            for term in terms
        ]
        rows = connection.execute(sa.select(*keys, *columns).where(sa.or_(*conditions))).mappings()
        updates: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for row in rows:
            values: dict[str, Any] = {}
            for column in columns:
                before = row[column.name]
                after = _scrub_value(before, needles, isinstance(column.type, sa.JSON))
                if after != before:
                    values[column.name] = after
            if values:
                updates.append(({k.name: row[k.name] for k in keys}, values))
        if updates:
            changed[table.name] = len(updates)
        if dry:
            continue
        for where, values in updates:
            connection.execute(
                table.update()
                .where(*(table.c[name] == value for name, value in where.items()))
                .values(values)
            )
    return changed


def _scrub_value(value: Any, needles: Needles, is_json: bool, field_name: str | None = None) -> Any:
    if isinstance(value, str):
        if is_json and field_name in IDENTITY_FIELDS:
            return value
        return needles.scrub(value) if needles.found_in(value) else value
    if isinstance(value, dict):
        return {k: _scrub_value(v, needles, is_json, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_value(v, needles, is_json, field_name) for v in value]
    return value


def _check_audit(record: Any, needles: Needles, path: str = "outcome") -> None:
    """An audit line holds counts and statuses; anything else is a bug, refused here."""
    if isinstance(record, dict):
        for name, value in record.items():
            if not _SAFE_AUDIT_TEXT.fullmatch(str(name)):
                raise ErasureError(f"{path}: audit keys are plain words")
            _check_audit(value, needles, f"{path}.{name}")
    elif isinstance(record, list | tuple):
        for value in record:
            _check_audit(value, needles, path)
    elif isinstance(record, str):
        if not _SAFE_AUDIT_TEXT.fullmatch(record) or needles.found_in(record):
            raise ErasureError(f"{path}: an audit value must be a plain status word")
    elif record is not None and not isinstance(record, bool | int | float):
        raise ErasureError(f"{path}: audit values are counts and statuses")


@dataclass(frozen=True, slots=True)
class AuditLine:
    id: int
    at: str
    person_hash: str
    status: str
    crm_policy: str
    helpdesk_policy: str
    outcome: dict[str, Any]


def audit_lines(store: StateStore, *, person_key: str | None = None) -> list[AuditLine]:
    """The erasure audit, oldest first (optionally for one person, by hash prefix)."""
    table = schema.erasure_audit
    query = sa.select(table).order_by(table.c.id)
    if person_key is not None:
        query = query.where(table.c.person_hash == consent.hash_prefix(store, person_key))
    with store.transaction() as connection:
        return [
            AuditLine(
                id=int(row.id),
                at=row.at.isoformat(),
                person_hash=row.person_hash,
                status=row.status,
                crm_policy=row.crm_policy,
                helpdesk_policy=row.helpdesk_policy,
                outcome=dict(row.outcome or {}),
            )
            for row in connection.execute(query)
        ]


def iter_text(value: Any) -> Iterator[str]:
    """Every string inside a stored value (for searches in tests and checks)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_text(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from iter_text(item)


def sanitise(text: str, needles: Needles, extra: Sequence[str] = ()) -> str:
    """An error message made safe to print or log: the person's identifiers replaced."""
    cleaned = needles.scrub(text)
    for term in extra:
        if term:
            cleaned = cleaned.replace(term, ERASED_TEXT)
    return cleaned
