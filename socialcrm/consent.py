"""Who must not be written about: opt-outs and erased people, checked before any write.

The suppression list lives in the state store, but never as a list of people: each entry
is an HMAC-SHA256 of the person's identity key (``"x:12345"``) under a random salt made
once per store (``store_meta``). Checking a known key is one hash away; reading the list
tells nothing about who is on it, and the same person hashes differently in another
store. Reasons are ``opt-out`` (do not make a lead of me) and ``erased`` (``socialcrm
erase`` ran); an erasure outranks an opt-out.

How a flow uses it, before writing about people::

    hidden = consent.is_suppressed(store, [p.person_key for p in people])
    people = [p for p in people if p.person_key not in hidden]

or, for the reason (an erased person is dropped even from support, someone who opted
out is not), ``consent.suppression_reasons``, or as an exclusion check:
``ExclusionRules.build(..., checks=[consent.suppression_check(store, keys)])``.
``consent.merge_config(store, settings.consent)`` at the start of a run adds the config's
static ``opt_out`` list.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import weakref
from collections.abc import Callable, Iterable
from functools import lru_cache

import sqlalchemy as sa

from socialcrm import schema
from socialcrm.config import ConsentSettings
from socialcrm.state import PersonRow, StateStore, _chunks, insert_ignoring_duplicates, utcnow

SALT_KEY = "suppression_salt"
OPT_OUT = "opt-out"
ERASED = "erased"
REASONS = (OPT_OUT, ERASED)
_RANK = {OPT_OUT: 1, ERASED: 2}
HASH_PREFIX = 12  # hex digits of the hash shown in audits and summaries

_salts: weakref.WeakKeyDictionary[StateStore, bytes] = weakref.WeakKeyDictionary()


def salt(store: StateStore) -> bytes:
    """The store's suppression salt; made (once, race-free) if migration 0003 did not."""
    cached = _salts.get(store)
    if cached is not None:
        return cached
    table = schema.store_meta
    with store.transaction() as connection:
        value = connection.execute(
            sa.select(table.c.value).where(table.c.key == SALT_KEY)
        ).scalar_one_or_none()
        if value is None:
            connection.execute(
                insert_ignoring_duplicates(connection, table).values(
                    key=SALT_KEY, value=secrets.token_hex(32)
                )
            )
            value = connection.execute(
                sa.select(table.c.value).where(table.c.key == SALT_KEY)
            ).scalar_one()
    result = bytes.fromhex(value)
    if not store.dry_run:  # a dry run's new salt is rolled back with everything else
        _salts[store] = result
    return result


@lru_cache(maxsize=65_536)
def key_hash(salt_bytes: bytes, person_key: str) -> str:
    """HMAC-SHA256 of an identity key, hex: the only form a suppression is stored in.

    Cached: every page is checked against the list before it is stored, and the same
    people like post after post. (Memory only; nothing of it is ever written.)"""
    return hmac.new(salt_bytes, person_key.strip().encode("utf-8"), hashlib.sha256).hexdigest()


def person_hash(store: StateStore, person_key: str) -> str:
    return key_hash(salt(store), person_key)


def hash_prefix(store: StateStore, person_key: str) -> str:
    """What audits and summaries show of a person: a prefix of the keyed hash."""
    return person_hash(store, person_key)[:HASH_PREFIX]


def opt_out(store: StateStore, person_keys: Iterable[str], reason: str = OPT_OUT) -> int:
    """Suppress these people; returns how many entries were added or raised to ``reason``.

    Idempotent: suppressing twice changes nothing, and an ``erased`` entry is never
    lowered back to ``opt-out``.
    """
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {', '.join(REASONS)}")
    with store.transaction() as connection:
        return _suppress(connection, salt(store), person_keys, reason)


def _suppress(
    connection: sa.Connection, salt_bytes: bytes, person_keys: Iterable[str], reason: str
) -> int:
    table = schema.suppressions
    hashes = sorted({key_hash(salt_bytes, key) for key in person_keys if key.strip()})
    known: dict[str, str] = {}
    for chunk in _chunks(hashes):
        for row in connection.execute(
            sa.select(table.c.key_hash, table.c.reason).where(table.c.key_hash.in_(chunk))
        ):
            known[row.key_hash] = row.reason
    now = utcnow()
    fresh = [h for h in hashes if h not in known]
    if fresh:
        connection.execute(
            insert_ignoring_duplicates(connection, table),
            [
                {"key_hash": h, "reason": reason, "created_at": now, "updated_at": now}
                for h in fresh
            ],
        )
    raised = [h for h, was in known.items() if _RANK.get(was, 0) < _RANK[reason]]
    for chunk in _chunks(raised):
        connection.execute(
            table.update().where(table.c.key_hash.in_(chunk)).values(reason=reason, updated_at=now)
        )
    return len(fresh) + len(raised)


def withdraw(store: StateStore, person_keys: Iterable[str]) -> int:
    """Lift suppressions (the person consents again); returns how many were lifted."""
    table = schema.suppressions
    hashes = sorted({key_hash(salt(store), key) for key in person_keys if key.strip()})
    removed = 0
    with store.transaction() as connection:
        for chunk in _chunks(hashes):
            result = connection.execute(table.delete().where(table.c.key_hash.in_(chunk)))
            removed += int(result.rowcount or 0)
    return removed


def suppression_reasons(store: StateStore, person_keys: Iterable[str]) -> dict[str, str]:
    """``{person_key: reason}`` for the suppressed ones among ``person_keys`` (batched)."""
    table = schema.suppressions
    salt_bytes = salt(store)
    by_hash: dict[str, list[str]] = {}
    for key in dict.fromkeys(person_keys):
        by_hash.setdefault(key_hash(salt_bytes, key), []).append(key)
    found: dict[str, str] = {}
    with store.transaction() as connection:
        for chunk in _chunks(list(by_hash)):
            for row in connection.execute(
                sa.select(table.c.key_hash, table.c.reason).where(table.c.key_hash.in_(chunk))
            ):
                for key in by_hash[row.key_hash]:
                    found[key] = row.reason
    return found


def is_suppressed(store: StateStore, person_keys: Iterable[str]) -> set[str]:
    """Which of ``person_keys`` must not be written about (opted out or erased)."""
    return set(suppression_reasons(store, person_keys))


def suppression_check(
    store: StateStore, person_keys: Iterable[str]
) -> Callable[[PersonRow], str | None]:
    """An exclusion check (``ExclusionRules.build(checks=[...])``) for a batch of people,
    looked up once; its reasons name no one."""
    reasons = suppression_reasons(store, person_keys)

    def check(person: PersonRow) -> str | None:
        reason = reasons.get(person.person_key)
        if reason is None:
            return None
        return "consent: erased" if reason == ERASED else "consent: opted out"

    return check


def merge_config(store: StateStore, settings: ConsentSettings) -> int:
    """Add the config's static ``opt_out`` list to the store (at run start); idempotent."""
    if not settings.opt_out:
        return 0
    return opt_out(store, settings.opt_out, OPT_OUT)


def counts(store: StateStore) -> dict[str, int]:
    """Suppressions by reason, and erasures audited: what may be shown of the list."""
    table = schema.suppressions
    with store.transaction() as connection:
        rows = connection.execute(
            sa.select(table.c.reason, sa.func.count()).group_by(table.c.reason)
        )
        found = {str(row[0]): int(row[1]) for row in rows}
        audited = connection.execute(
            sa.select(sa.func.count()).select_from(schema.erasure_audit)
        ).scalar_one()
    return {OPT_OUT: found.get(OPT_OUT, 0), ERASED: found.get(ERASED, 0), "audited": int(audited)}
