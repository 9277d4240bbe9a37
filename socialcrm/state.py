"""The state store: cursors, engaged people, the delivery ledger and dead letters.

One SQLAlchemy URL: a SQLite file by default, PostgreSQL for production. Every page of a
source is recorded in one transaction together with its cursor, so a crash can only
make a page be read again, never lost; engagement keys make the second read harmless.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.pool import StaticPool

from socialcrm import schema, scoring
from socialcrm.config import Qualification
from socialcrm.records import (
    Engagement,
    RecordProblem,
    SinkOutcome,
    SocialProfile,
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Keep IN lists far below every backend's bound-parameter limit (SQLite: 32766).
_CHUNK = 500


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; everything we store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _chunks(values: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def payload_hash(payload: dict[str, Any]) -> str:
    """Stable hash of what we send, so an unchanged record is not sent again."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_PROFILE_FIELDS = tuple(item.name for item in fields(SocialProfile))


def profile_to_json(profile: SocialProfile) -> dict[str, Any]:
    """The profile as JSON-ready values. Not ``asdict``: its deep copy of every value
    cost more than the rest of storing a page."""
    data = {name: getattr(profile, name) for name in _PROFILE_FIELDS}
    if profile.created_at is not None:
        data["created_at"] = profile.created_at.isoformat()
    return data


@dataclass(slots=True)
class IngestResult:
    new: int = 0
    already_seen: int = 0
    fresh: set[str] = field(default_factory=set)  # keys of the engagements stored now
    # People whose stored score (an upper bound, see scoring) reaches the threshold now.
    may_qualify: int = 0


@dataclass(slots=True)
class PersonRow:
    person_key: str
    platform: str
    user_id: str
    handle: str
    profile: dict[str, Any]
    counts: dict[str, int]
    engagement_count: int
    score: float
    first_engaged_at: datetime | None
    last_engaged_at: datetime | None
    updated_at: datetime | None = None  # as read: ``clear_pending`` sees a change since


@dataclass(slots=True)
class EngagementRow:
    person_key: str
    kind: str
    post_id: str | None
    text: str | None
    url: str | None
    occurred_at: datetime


class TokenNotSaved(RuntimeError):
    """The store refused a renewed token; says why without quoting it."""


@dataclass(frozen=True, slots=True)
class StoredToken:
    """An OAuth token a run renewed: ``refresh_token`` is the one to use next time."""

    access_token: str
    expires_at: datetime | None
    refresh_token: str | None
    origin: str | None = None  # hash of the configured token the chain started from

    def __repr__(self) -> str:  # never the tokens themselves
        return f"StoredToken(expires_at={self.expires_at!r})"


@dataclass(slots=True)
class Delivery:
    record_key: str
    destination_id: str | None
    payload_hash: str | None
    status: str


# What the ledger remembers: where a record went. A matched record (someone else's lead,
# a Contact) is remembered too, so later runs treat it the same way and erasure finds it.
ADOPTED = frozenset({"matched lead"})  # someone else's lead we add our fields to
LEDGER_STATUSES = frozenset(
    {"created", "updated", "failed", "matched lead", "matched contact", "logged on lead"}
)


@dataclass(slots=True)
class DeadLetter:
    id: int
    record_key: str
    pipeline: str
    stage: str
    system: str
    field: str | None
    reason: str
    payload: dict[str, Any] | None
    attempts: int
    created_at: datetime


def _advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _unicode_lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # SQLite's own lower() folds ASCII only: "ДМИТРИЙ" and "Émile" would stay as they are,
    # and an erasure's search for a name in other people's text would miss them.
    dbapi_connection.create_function("lower", 1, _unicode_lower, deterministic=True)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    # With WAL, NORMAL may lose the last commits on power loss but never corrupts; a page
    # and its cursor commit together, so a lost commit is simply read again next run.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_engine(url: str) -> sa.Engine:
    """The store's engine. Its errors never quote the statement's values
    (``hide_parameters``): they hold tokens, people's names and what they wrote, and an
    error travels into logs and the run's artifacts."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and ":memory:" not in path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, hide_parameters=True)


MIGRATION_LOCK = 0x50C1A1C4  # any constant both workers agree on


def migrate(connection: sa.Connection, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (Alembic), on the caller's connection."""
    if connection.dialect.name == "postgresql":
        # Workers starting at once on an empty database would race to create the schema;
        # the lock lasts until the caller's transaction ends.
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


@contextmanager
def _sqlite_file_lock(engine: sa.Engine, name: str) -> Iterator[None]:
    """Wait for other processes on the same SQLite file (SQLite would refuse, not wait)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or ":memory:" in database:
        yield
        return
    path = Path(database)
    with open(path.with_name(f"{path.name}.{name}.lock"), "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sqlite_snapshot(engine: sa.Engine) -> tuple[sa.Engine, Path] | None:
    """A copy of a SQLite file for a dry run (engine, path); None for other databases.

    A dry run writes in one transaction it rolls back at the end. On SQLite the first of
    those writes would take the file's only write lock for the whole run: real runs
    beside it would fail after the busy timeout, and so would storing a renewed token (a
    rotated refresh token lost is an app to authorize again). On the copy, nothing the
    dry run does touches the file; tokens still go to the file. The copy is a file next
    to the store (not memory: a store of gigabytes would cost as much RAM), deleted when
    the dry run closes.
    """
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or ":memory:" in database:
        return None
    original = Path(database)
    handle, name = tempfile.mkstemp(
        prefix=f"{original.name}.dry-run-", suffix=".db", dir=original.parent
    )
    os.close(handle)
    path = Path(name)
    copy = sa.create_engine(
        f"sqlite:///{path}",
        poolclass=StaticPool,  # one connection for the run's one transaction
        connect_args={"check_same_thread": False},  # a run's threads share it
        hide_parameters=True,
    )
    sa.event.listen(copy, "connect", _sqlite_pragmas)
    try:
        with engine.connect() as source, copy.connect() as target:
            source.connection.dbapi_connection.backup(  # type: ignore[union-attr]
                target.connection.dbapi_connection
            )
    except BaseException:
        copy.dispose()
        _remove_sqlite_file(path)
        raise
    return copy, path


def _remove_sqlite_file(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class StateStore:
    """All durable state of the pipeline behind one small API.

    In ``dry_run`` every write happens inside one transaction that is rolled back on
    close: the run computes exactly what it would do, and leaves no trace.
    """

    def __init__(self, engine: sa.Engine, *, dry_run: bool = False) -> None:
        self.engine = engine
        self.dry_run = dry_run
        self._dry_connection: sa.Connection | None = None
        self._dry_transaction: sa.RootTransaction | None = None
        self._outer = threading.local()  # this thread's open transaction, if any
        self._dry_copy: tuple[sa.Engine, Path] | None = None
        if dry_run:
            self._dry_copy = _sqlite_snapshot(engine)
            self._dry_connection = (self._dry_copy[0] if self._dry_copy else engine).connect()
            self._dry_transaction = self._dry_connection.begin()

    @classmethod
    def open(cls, url: str, *, dry_run: bool = False) -> StateStore:
        engine = create_engine(url)
        with _sqlite_file_lock(engine, "migrate"), engine.begin() as connection:
            migrate(connection)
        return cls(engine, dry_run=dry_run)

    def close(self) -> None:
        if self._dry_transaction is not None:
            self._dry_transaction.rollback()
        if self._dry_connection is not None:
            self._dry_connection.close()
        if self._dry_copy is not None:
            copy, path = self._dry_copy
            copy.dispose()
            _remove_sqlite_file(path)
            self._dry_copy = None
        self.engine.dispose()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """One unit of work; in a dry run, a part of the one transaction rolled back.

        A transaction opened inside another one in the same thread joins it: several
        store calls (a page's engagements, its cursor, its dead letters) then commit
        together, once, or not at all.
        """
        if self._dry_connection is not None:
            yield self._dry_connection
            return
        outer: sa.Connection | None = getattr(self._outer, "connection", None)
        if outer is not None:
            yield outer
            return
        with self.engine.begin() as connection:
            self._outer.connection = connection
            try:
                yield connection
            finally:
                self._outer.connection = None

    @contextmanager
    def lock(self, name: str) -> Iterator[bool]:
        """Hold the lock ``name`` (e.g. ``leads:brand``) if no one else does; yields whether.

        PostgreSQL: a session advisory lock. SQLite: an exclusive ``flock`` on a file next to
        the database. Both vanish with the process that held them, so a run killed with -9
        never blocks the next one.
        """
        if self.dry_run or ":memory:" in str(self.engine.url):
            yield True
            return
        if self.engine.dialect.name == "postgresql":
            with self._advisory_locks([name]) as busy:
                yield busy is None
            return
        database = Path(str(self.engine.url.database))
        # Readable, and unique: "leads:delivery" and "leads-delivery" are two locks.
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        safe = "".join(ch if ch.isalnum() else "_" for ch in name)[:60] + "-" + digest
        with open(database.with_name(f"{database.name}.{safe}.lock"), "a+b") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def _advisory_locks(self, names: Sequence[str]) -> Iterator[str | None]:
        """PostgreSQL session advisory locks, all on one connection (an erasure holds two
        per account: one connection each would empty the pool at seven accounts)."""
        with self.engine.connect() as connection:
            held: list[int] = []
            busy: str | None = None
            try:
                for name in names:
                    key = _advisory_key(name)
                    taken = connection.execute(
                        sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}
                    ).scalar()
                    connection.commit()
                    if not taken:
                        busy = name
                        break
                    held.append(key)
                yield busy
            finally:
                try:
                    for key in reversed(held):
                        connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    connection.commit()
                except sa.exc.DBAPIError:  # the session is gone, and its locks with it
                    connection.invalidate()

    @contextmanager
    def locks(self, names: Sequence[str]) -> Iterator[str | None]:
        """Hold every lock of ``names`` or none; yields the first one someone else holds."""
        if self.engine.dialect.name == "postgresql" and not self.dry_run:
            with self._advisory_locks(names) as busy:
                if busy is None:
                    yield None
                    return
            yield busy  # every lock given back first
            return
        with ExitStack() as held:
            for name in names:
                if not held.enter_context(self.lock(name)):
                    yield name
                    return
            yield None

    # cursors -------------------------------------------------------------------------

    def get_cursor(self, account: str, stream: str) -> str | None:
        with self.transaction() as connection:
            return connection.execute(
                sa.select(schema.cursors.c.value).where(
                    schema.cursors.c.account == account, schema.cursors.c.stream == stream
                )
            ).scalar_one_or_none()

    def cursors(self, account: str) -> dict[str, str]:
        with self.transaction() as connection:
            rows = connection.execute(
                sa.select(schema.cursors.c.stream, schema.cursors.c.value).where(
                    schema.cursors.c.account == account
                )
            )
            return {row.stream: row.value for row in rows}

    def _set_cursor(self, connection: sa.Connection, account: str, stream: str, value: str) -> None:
        table = schema.cursors
        updated = connection.execute(
            table.update()
            .where(table.c.account == account, table.c.stream == stream)
            .values(value=value, updated_at=utcnow())
        )
        if updated.rowcount == 0:
            connection.execute(
                table.insert().values(
                    account=account, stream=stream, value=value, updated_at=utcnow()
                )
            )

    # engagements and people -----------------------------------------------------------

    def ingest(
        self,
        account: str,
        records: Sequence[Engagement],
        qualification: Qualification,
        *,
        cursors: dict[str, str] | None = None,
    ) -> IngestResult:
        """Record a page (or pages) of engagements and advance its cursors, all or nothing.

        Engagements already seen (same key) change nothing, so re-reading a page after a
        crash, or re-reading the like list of a post, is free of double counting.
        """
        result = IngestResult()
        unique: dict[str, Engagement] = {}
        for record in records:
            unique.setdefault(record.key, record)
        now = utcnow()
        with self.transaction() as connection:
            seen: set[str] = set()
            keys = list(unique)
            for chunk in _chunks(keys):
                seen.update(
                    connection.execute(
                        sa.select(schema.engagements.c.engagement_key).where(
                            schema.engagements.c.engagement_key.in_(chunk)
                        )
                    ).scalars()
                )
            fresh = [record for key, record in unique.items() if key not in seen]
            result.already_seen = len(records) - len(fresh)
            result.new = len(fresh)
            result.fresh = {record.key for record in fresh}
            if fresh:
                connection.execute(
                    schema.engagements.insert(),
                    [
                        {
                            "engagement_key": record.key,
                            "account": account,
                            "person_key": record.author.key,
                            "kind": record.kind.value,
                            "post_id": record.post_id,
                            "text": record.text,
                            "url": record.url,
                            "occurred_at": record.occurred_at or now,
                        }
                        for record in fresh
                    ],
                )
                result.may_qualify = self._update_people(connection, fresh, qualification, now)
            for stream, value in (cursors or {}).items():
                self._set_cursor(connection, account, stream, value)
        return result

    def _update_people(
        self,
        connection: sa.Connection,
        fresh: Sequence[Engagement],
        qualification: Qualification,
        now: datetime,
    ) -> int:
        """Counts and scores the people of ``fresh``; returns how many may qualify."""
        by_person: dict[str, list[Engagement]] = {}
        for record in fresh:
            by_person.setdefault(record.author.key, []).append(record)
        table = schema.people
        existing = _locked_people(connection, sorted(by_person))
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for key, items in by_person.items():
            row = existing.get(key)
            latest, values = _person_values(row, items, qualification, now)
            if row is None:
                identity = {"platform": latest.platform, "user_id": latest.user_id}
                inserts.append({"person_key": key, **identity, **values})
            else:
                updates.append({"key_": key, **values})
        if inserts:
            inserts.sort(key=lambda row: row["person_key"])  # the lock order, as above
            # Another run may insert one of them meanwhile (nothing locks a row that is not
            # there yet): that insert is skipped here and its row updated like the others.
            added = set(
                connection.execute(
                    insert_ignoring_duplicates(connection, table).returning(table.c.person_key),
                    inserts,
                ).scalars()
            )
            lost = sorted(row["person_key"] for row in inserts if row["person_key"] not in added)
            inserts = [row for row in inserts if row["person_key"] in added]
            for key, row in _locked_people(connection, lost).items():
                _, values = _person_values(row, by_person[key], qualification, now)
                updates.append({"key_": key, **values})
        if updates:
            # One statement for the page (executemany), not one round trip per person.
            columns = [name for name in updates[0] if name != "key_"]
            connection.execute(
                table.update()
                .where(table.c.person_key == sa.bindparam("key_"))
                .values({name: sa.bindparam(name) for name in columns}),
                updates,
            )
        return sum(row["score"] >= qualification.threshold for row in [*inserts, *updates])

    def rescore_people(self, qualification: Qualification, *, batch_size: int = 1000) -> int:
        """Recompute every stored score from the engagements, after a change of weights or
        intent settings; returns how many changed.

        A person whose stored score rises to the threshold or above becomes pending, so
        the next run scores them again. Reads one batch of people at a time.
        """
        people, engagements = schema.people, schema.engagements
        matcher = scoring.intent_matcher(qualification)
        scan = qualification.intent.enabled and qualification.intent.weight > 0
        changed = 0
        after = ""
        while True:
            with self.transaction() as connection:
                rows = connection.execute(
                    sa.select(people.c.person_key, people.c.score)
                    .where(people.c.person_key > after)
                    .order_by(people.c.person_key)
                    .limit(batch_size)
                ).all()
                if not rows:
                    return changed
                keys = [row.person_key for row in rows]
                counts: dict[str, dict[str, int]] = {key: {} for key in keys}
                seen: set[str] = set()
                for chunk in _chunks(keys):
                    for found in connection.execute(
                        sa.select(
                            engagements.c.person_key, engagements.c.kind, engagements.c.text
                        ).where(engagements.c.person_key.in_(chunk))
                    ):
                        kinds = counts[found.person_key]
                        kinds[found.kind] = kinds.get(found.kind, 0) + 1
                        if scan and found.person_key not in seen and matcher.find(found.text):
                            seen.add(found.person_key)
                for row in rows:
                    new = scoring.stored_score(
                        counts[row.person_key], qualification, intent_seen=row.person_key in seen
                    )
                    if abs(new - float(row.score)) < 1e-9:
                        continue
                    changed += 1
                    values: dict[str, Any] = {"score": new, "updated_at": utcnow()}
                    if new >= qualification.threshold > float(row.score):
                        values["pending"] = True
                    connection.execute(
                        people.update().where(people.c.person_key == row.person_key).values(values)
                    )
            after = rows[-1].person_key

    def pending_people(
        self, *, batch_size: int, min_score: float, only: Sequence[str] | None = None
    ) -> Iterator[list[PersonRow]]:
        """Qualified people whose lead must be (re)delivered, in batches, by key order.

        Keyset pagination keeps memory bound to one batch however many people wait.
        """
        table = schema.people
        after = ""
        while True:
            with self.transaction() as connection:
                rows = connection.execute(
                    sa.select(table)
                    .where(table.c.pending.is_(True), table.c.person_key > after)
                    .where(table.c.score >= min_score)
                    .where(table.c.person_key.in_(list(only)) if only is not None else sa.true())
                    .order_by(table.c.person_key)
                    .limit(batch_size)
                ).mappings()
                batch = [_person(row) for row in rows]
            if not batch:
                return
            yield batch
            after = batch[-1].person_key

    def count_people(self) -> tuple[int, int]:
        """(people seen, pending people) — for run summaries."""
        table = schema.people
        with self.transaction() as connection:
            total = connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            pending = connection.execute(
                sa.select(sa.func.count()).select_from(table).where(table.c.pending.is_(True))
            ).scalar_one()
        return int(total), int(pending)

    def clear_pending(self, people: Iterable[PersonRow]) -> int:
        """These people's leads are delivered, unless their row changed since it was read.

        Another run may store something new about a person while their lead is written (a
        tickets run's sales DM: counts, score, the ticket's link, ``mark_pending``): that
        row stays pending, and the next delivery sends what changed. Returns how many
        were cleared.
        """
        rows = [{"key_": p.person_key, "seen_": p.updated_at} for p in people]
        if not rows:
            return 0
        table = schema.people
        with self.transaction() as connection:
            # One statement for the batch (executemany): a row-value IN list was slower
            # on SQLite (1.0 s against 0.6 s for 38,000 people).
            result = connection.execute(
                table.update()
                .where(
                    table.c.person_key == sa.bindparam("key_"),
                    table.c.updated_at == sa.bindparam("seen_"),
                )
                .values(pending=False),
                rows,
            )
        return int(result.rowcount or 0)

    def mark_pending(self, person_keys: Iterable[str]) -> int:
        """Deliver these people's leads again (a dead-letter replay)."""
        keys = list(person_keys)
        changed = 0
        with self.transaction() as connection:
            for chunk in _chunks(keys):
                result = connection.execute(
                    schema.people.update()
                    .where(schema.people.c.person_key.in_(chunk))
                    .values(pending=True, updated_at=utcnow())
                )
                changed += int(result.rowcount or 0)
        return changed

    def clear_unqualified_pending(self, min_score: float) -> int:
        """People below the threshold need no delivery until they engage again."""
        table = schema.people
        with self.transaction() as connection:
            result = connection.execute(
                table.update()
                .where(table.c.pending.is_(True), table.c.score < min_score)
                .values(pending=False)
            )
        return int(result.rowcount or 0)

    def people(self, person_keys: Sequence[str]) -> list[PersonRow]:
        table = schema.people
        found: list[PersonRow] = []
        with self.transaction() as connection:
            for chunk in _chunks(list(person_keys)):
                rows = connection.execute(sa.select(table).where(table.c.person_key.in_(chunk)))
                found.extend(_person(row) for row in rows.mappings())
        return found

    def engagements_of(self, person_keys: Sequence[str]) -> dict[str, list[EngagementRow]]:
        table = schema.engagements
        found: dict[str, list[EngagementRow]] = {}
        with self.transaction() as connection:
            for chunk in _chunks(list(person_keys)):
                rows = connection.execute(
                    sa.select(
                        table.c.person_key,
                        table.c.kind,
                        table.c.post_id,
                        table.c.text,
                        table.c.url,
                        table.c.occurred_at,
                    ).where(table.c.person_key.in_(chunk))
                )
                for row in rows:
                    found.setdefault(row.person_key, []).append(
                        EngagementRow(
                            person_key=row.person_key,
                            kind=row.kind,
                            post_id=row.post_id,
                            text=row.text,
                            url=row.url,
                            occurred_at=_aware(row.occurred_at) or utcnow(),
                        )
                    )
        return found

    # delivery ledger -----------------------------------------------------------------

    def deliveries(self, record_keys: Sequence[str], destination: str) -> dict[str, Delivery]:
        table = schema.deliveries
        found: dict[str, Delivery] = {}
        with self.transaction() as connection:
            for chunk in _chunks(list(record_keys)):
                rows = connection.execute(
                    sa.select(table).where(
                        table.c.destination == destination, table.c.record_key.in_(chunk)
                    )
                )
                for row in rows:
                    found[row.record_key] = _delivery(row)
        return found

    def rows_with_status(
        self, destination: str, status: str, *, limit: int, max_attempts: int | None = None
    ) -> list[Delivery]:
        """Up to ``limit`` ``destination`` rows with ``status`` (and fewer than
        ``max_attempts`` attempts), oldest first."""
        table = schema.deliveries
        query = sa.select(table).where(table.c.destination == destination, table.c.status == status)
        if max_attempts is not None:
            query = query.where(table.c.attempts < max_attempts)
        with self.transaction() as connection:
            rows = connection.execute(
                query.order_by(table.c.updated_at, table.c.record_key).limit(limit)
            )
            return [_delivery(row) for row in rows]

    def forget_deliveries(self, destination: str, record_keys: Sequence[str]) -> int:
        """Remove these keys' ``destination`` rows from the ledger."""
        table = schema.deliveries
        removed = 0
        with self.transaction() as connection:
            for chunk in _chunks(list(record_keys)):
                removed += connection.execute(
                    table.delete().where(
                        table.c.destination == destination, table.c.record_key.in_(chunk)
                    )
                ).rowcount
        return removed

    def record_deliveries(self, destination: str, outcomes: Sequence[SinkOutcome]) -> None:
        """Write the ledger for a batch; failed records keep the last good hash."""
        table = schema.deliveries
        now = utcnow()
        with self.transaction() as connection:

            def rows_of(keys: list[str]) -> dict[str, Any]:
                return {
                    row.record_key: row
                    for chunk in _chunks(keys)
                    for row in connection.execute(
                        sa.select(table).where(
                            table.c.destination == destination, table.c.record_key.in_(chunk)
                        )
                    )
                }

            known = rows_of([o.record_key for o in outcomes])

            def values(outcome: SinkOutcome, row: Any) -> dict[str, Any]:
                failed = outcome.status == "failed"
                # An adopted lead stays adopted when an update of it fails: the status is
                # all that says it is someone else's lead (only our fields go to it).
                status = outcome.status
                if failed and row is not None and row.status in ADOPTED:
                    status = row.status
                return {
                    "status": status,
                    "updated_at": now,
                    "attempts": (row.attempts if row else 0) + 1,
                    "destination_id": outcome.destination_id
                    or (row.destination_id if row else None),
                    "payload_hash": (row.payload_hash if row else None)
                    if failed
                    else outcome.payload_hash,
                }

            inserts: list[dict[str, Any]] = []
            updates: list[dict[str, Any]] = []
            latest = {o.record_key: o for o in outcomes if o.status in LEDGER_STATUSES}
            for key, outcome in latest.items():
                row = known.get(key)
                if row is None:
                    inserts.append(
                        {"record_key": key, "destination": destination, **values(outcome, None)}
                    )
                else:
                    updates.append({"key_": key, **values(outcome, row)})
            # One statement each for the batch (executemany), not one per record.
            if inserts:
                # Another run may record the same key meanwhile (a requester is shared by
                # the accounts a person wrote to): its row is updated with ours, the later,
                # computed from its row as any update is (attempts, last good hash).
                added = set(
                    connection.execute(
                        insert_ignoring_duplicates(connection, table).returning(table.c.record_key),
                        inserts,
                    ).scalars()
                )
                lost = [row["record_key"] for row in inserts if row["record_key"] not in added]
                theirs = rows_of(lost)
                updates.extend(
                    {"key_": key, **values(latest[key], theirs.get(key))} for key in lost
                )
            if updates:
                connection.execute(
                    table.update()
                    .where(
                        table.c.record_key == sa.bindparam("key_"),
                        table.c.destination == destination,
                    )
                    .values({name: sa.bindparam(name) for name in updates[0] if name != "key_"}),
                    updates,
                )

    # dead letters --------------------------------------------------------------------

    def add_dead_letters(self, pipeline: str, problems: Sequence[RecordProblem]) -> int:
        """Store problems; a record already dead-lettered at the same stage is updated."""
        if not problems:
            return 0
        table = schema.dead_letters
        now = utcnow()
        with self.transaction() as connection:
            for problem in problems:
                existing = connection.execute(
                    sa.select(table.c.id, table.c.attempts).where(
                        table.c.record_key == problem.record_key,
                        table.c.pipeline == pipeline,
                        table.c.stage == problem.stage,
                        table.c.field == problem.field
                        if problem.field is not None
                        else table.c.field.is_(None),
                    )
                ).first()
                values = {
                    "system": problem.system,
                    "reason": problem.reason,
                    "payload": problem.payload,
                    "updated_at": now,
                }
                if existing is None:
                    connection.execute(
                        table.insert().values(
                            record_key=problem.record_key,
                            pipeline=pipeline,
                            stage=problem.stage,
                            field=problem.field,
                            attempts=1,
                            created_at=now,
                            **values,
                        )
                    )
                else:
                    connection.execute(
                        table.update()
                        .where(table.c.id == existing.id)
                        .values(attempts=existing.attempts + 1, **values)
                    )
        return len(problems)

    def dead_letters(
        self, *, pipeline: str | None = None, ids: Sequence[int] | None = None
    ) -> list[DeadLetter]:
        table = schema.dead_letters
        query = sa.select(table).order_by(table.c.id)
        if pipeline is not None:
            query = query.where(table.c.pipeline == pipeline)
        if ids is not None:
            query = query.where(table.c.id.in_(list(ids)))
        with self.transaction() as connection:
            return [
                DeadLetter(
                    id=row.id,
                    record_key=row.record_key,
                    pipeline=row.pipeline,
                    stage=row.stage,
                    system=row.system,
                    field=row.field,
                    reason=row.reason,
                    payload=row.payload,
                    attempts=row.attempts,
                    created_at=_aware(row.created_at) or utcnow(),
                )
                for row in connection.execute(query)
            ]

    def discard_dead_letters(self, ids: Sequence[int]) -> int:
        """Letters an operator has read and let go (a malformed source record, which no
        replay can redo: the source sends it whole or never again); returns how many."""
        table = schema.dead_letters
        removed = 0
        with self.transaction() as connection:
            for chunk in _chunks(sorted(set(ids))):
                result = connection.execute(table.delete().where(table.c.id.in_(chunk)))
                removed += int(result.rowcount or 0)
        return removed

    # renewed tokens ------------------------------------------------------------------

    def stored_token(self, name: str) -> StoredToken | None:
        table = schema.tokens
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(
                    table.c.access_token, table.c.expires_at, table.c.refresh_token, table.c.origin
                ).where(table.c.name == name)
            ).first()
        if row is None:
            return None
        return StoredToken(row.access_token, _aware(row.expires_at), row.refresh_token, row.origin)

    def save_token(self, name: str, token: StoredToken) -> None:
        """Kept at once and even in a dry run: a rotated refresh token lost is a token
        nobody can renew any more (someone must authorize the app again)."""
        table = schema.tokens
        values = {
            "access_token": token.access_token,
            "expires_at": token.expires_at,
            "refresh_token": token.refresh_token,
            "origin": token.origin,
            "updated_at": utcnow(),
        }
        try:
            with self.engine.begin() as connection:
                updated = connection.execute(
                    table.update().where(table.c.name == name).values(values)
                ).rowcount
                if not updated:
                    connection.execute(table.insert().values(name=name, **values))
        except sa.exc.DBAPIError as error:
            # The database's own text may quote the row (PostgreSQL: "Failing row
            # contains (...)"), tokens included; this error is logged.
            why = type(error.orig or error).__name__
            raise TokenNotSaved(f"the renewed token {name!r} could not be stored ({why})") from None

    def resolve_dead_letters(self, record_keys: Iterable[str], pipeline: str) -> int:
        """A record delivered at last leaves the dead-letter store."""
        keys = list(record_keys)
        removed = 0
        with self.transaction() as connection:
            for chunk in _chunks(keys):
                result = connection.execute(
                    schema.dead_letters.delete().where(
                        schema.dead_letters.c.pipeline == pipeline,
                        schema.dead_letters.c.record_key.in_(chunk),
                    )
                )
                removed += int(result.rowcount or 0)
        return removed


def _delivery(row: Any) -> Delivery:
    return Delivery(
        record_key=row.record_key,
        destination_id=row.destination_id,
        payload_hash=row.payload_hash,
        status=row.status,
    )


def _locked_people(connection: sa.Connection, keys: Sequence[str]) -> dict[str, Any]:
    """The stored rows of these people (sorted keys), locked until the commit.

    Locked (PostgreSQL; SQLite's writer holds the database since the engagements' insert):
    a tickets run adding a sales DM to the same person must not write its counts in
    between and have them overwritten. Sorted, so two writers lock in the same order and
    never wait for each other in a circle.
    """
    table = schema.people
    existing: dict[str, Any] = {}
    for chunk in _chunks(keys):
        for found in connection.execute(
            sa.select(  # not the profile: it is replaced, never read back
                table.c.person_key,
                table.c.counts,
                table.c.score,
                table.c.first_engaged_at,
                table.c.last_engaged_at,
            )
            .where(table.c.person_key.in_(chunk))
            .order_by(table.c.person_key)
            .with_for_update()
        ).mappings():
            existing[found["person_key"]] = found
    return existing


def insert_ignoring_duplicates(connection: sa.Connection, table: sa.Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` on both backends: rows whose key exists are
    skipped (another writer's meanwhile, or an earlier run's)."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


def _person_values(
    row: Any, items: Sequence[Engagement], qualification: Qualification, now: datetime
) -> tuple[SocialProfile, dict[str, Any]]:
    """(the profile the latest engagement carried, the person's values after ``items``);
    ``row`` is what is stored (None: nothing yet)."""
    counts: dict[str, int] = dict(row["counts"]) if row else {}
    intent_seen = _intent_seen(row, counts, items, qualification)
    for item in items:
        counts[item.kind.value] = counts.get(item.kind.value, 0) + 1
    times = [item.occurred_at or now for item in items]
    earlier = [_aware(row["first_engaged_at"]), _aware(row["last_engaged_at"])] if row else []
    known = [t for t in earlier if t is not None]
    latest = max(items, key=lambda item: item.occurred_at or now).author
    return latest, {
        "handle": latest.handle,
        "profile": profile_to_json(latest),
        "counts": counts,
        "engagement_count": sum(counts.values()),
        # An upper bound of the decayed score at any later time (see scoring).
        "score": scoring.stored_score(counts, qualification, intent_seen=intent_seen),
        "first_engaged_at": min([*times, *known]),
        "last_engaged_at": max([*times, *known]),
        "pending": True,
        "updated_at": now,
    }


def score(counts: dict[str, int], qualification: Qualification) -> float:
    """Lifetime weighted engagement total (no window, decay or intent); weights from config.

    The decayed score is ``scoring.score_breakdown``; the stored one ``scoring.stored_score``.
    """
    return round(scoring.weighted_total(counts, qualification), 4)


def _intent_seen(
    row: Any, counts: dict[str, int], fresh: Sequence[Engagement], qualification: Qualification
) -> bool:
    """Whether any text of the person ever matched an intent phrase: the stored bound of
    ``row`` (before this page's counts) remembers earlier pages, ``fresh`` adds this one."""
    intent = qualification.intent
    if not intent.enabled or intent.weight <= 0 or intent.max_bonus <= 0:
        return False
    if row is not None and scoring.bound_has_intent(float(row["score"]), counts, qualification):
        return True
    texts = [item.text for item in fresh if item.text]
    if not texts:  # likes and reposts: most people, no text to look into
        return False
    matcher = scoring.intent_matcher(qualification)
    return any(matcher.find(text) for text in texts)


def _person(row: Any) -> PersonRow:
    return PersonRow(
        person_key=row["person_key"],
        platform=row["platform"],
        user_id=row["user_id"],
        handle=row["handle"],
        profile=dict(row["profile"]),
        counts=dict(row["counts"]),
        engagement_count=int(row["engagement_count"]),
        score=float(row["score"]),
        first_engaged_at=_aware(row["first_engaged_at"]),
        last_engaged_at=_aware(row["last_engaged_at"]),
        updated_at=row.get("updated_at"),
    )
