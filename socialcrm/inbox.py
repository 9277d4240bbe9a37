"""The direct-message side of the state store: messages, conversations, write intents.

A message is stored once (its key), with the routing decision taken when it arrived.
Delivery works per conversation: one ticket each, each customer message one comment.
Ticket creation and comment adding are not idempotent, so each is preceded by an intent
row; an intent still open on the next run means the write may have happened, and the
helpdesk is searched before writing again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from socialcrm import schema
from socialcrm.records import DirectMessage
from socialcrm.routing import Decision
from socialcrm.state import StateStore, _aware, _chunks, profile_to_json, utcnow


@dataclass(slots=True)
class StoredMessage:
    message_key: str
    conversation_key: str
    person_key: str
    sender: dict[str, Any]
    text: str | None
    attachments: list[str]
    sent_at: datetime
    route: str
    rule: str | None
    priority: str
    channel: str = "dm"


@dataclass(slots=True)
class MessageIngest:
    new: int = 0
    already_seen: int = 0
    from_brand: int = 0
    by_route: dict[str, int] | None = None


def ingest_messages(
    store: StateStore,
    account: str,
    routed: Sequence[tuple[DirectMessage, Decision]],
    *,
    cursors: dict[str, str] | None = None,
) -> MessageIngest:
    """Record a page of messages with their routes, and the cursor, in one transaction."""
    result = MessageIngest(by_route={})
    table = schema.messages
    unique = {message.key: (message, decision) for message, decision in routed}
    with store.transaction() as connection:
        seen: set[str] = set()
        for chunk in _chunks(list(unique)):
            seen.update(
                connection.execute(
                    sa.select(table.c.message_key).where(table.c.message_key.in_(chunk))
                ).scalars()
            )
        rows = []
        for key, (message, decision) in unique.items():
            if key in seen:
                continue
            skipped = message.from_brand or decision.route == "spam"
            rows.append(
                {
                    "message_key": key,
                    "account": account,
                    "conversation_key": message.conversation_key,
                    "person_key": message.sender.key,
                    "sender": profile_to_json(message.sender),
                    "text": message.text,
                    "attachments": list(message.attachments),
                    "sent_at": message.sent_at or utcnow(),
                    "from_brand": message.from_brand,
                    "channel": message.channel,
                    "route": "brand" if message.from_brand else decision.route,
                    "rule": decision.rule,
                    "priority": decision.priority,
                    "status": "skipped" if skipped else "pending",
                }
            )
        if rows:
            connection.execute(table.insert(), rows)
        by_route: dict[str, int] = {}
        for row in rows:
            name = str(row["route"])
            by_route[name] = by_route.get(name, 0) + 1
        result.by_route = by_route
        result.new = len(rows)
        result.from_brand = sum(1 for row in rows if row["from_brand"])
        result.already_seen = len(routed) - len(rows)
        for stream, value in (cursors or {}).items():
            store._set_cursor(connection, account, stream, value)
    return result


def _stored(row: Any) -> StoredMessage:
    return StoredMessage(
        message_key=row.message_key,
        conversation_key=row.conversation_key,
        person_key=row.person_key,
        sender=dict(row.sender),
        text=row.text,
        attachments=list(row.attachments or []),
        sent_at=_aware(row.sent_at) or utcnow(),
        route=row.route,
        rule=row.rule,
        priority=row.priority,
        channel=row.channel,
    )


def pending_conversations(
    store: StateStore, *, batch_size: int, account: str | None = None
) -> Iterator[dict[str, list[StoredMessage]]]:
    """Conversations with undelivered customer messages, a batch at a time.

    Messages come oldest first within a conversation, so comments keep their order.
    ``account``: that account's only. A run holds its own account's lock: delivering
    another account's messages beside that account's run would post them twice.
    """
    table = schema.messages
    mine = [] if account is None else [table.c.account == account]
    after = ""
    while True:
        with store.transaction() as connection:
            keys = list(
                connection.execute(
                    sa.select(table.c.conversation_key)
                    .where(table.c.status == "pending", table.c.conversation_key > after, *mine)
                    .group_by(table.c.conversation_key)
                    .order_by(table.c.conversation_key)
                    .limit(batch_size)
                ).scalars()
            )
            if not keys:
                return
            rows = connection.execute(
                sa.select(table)
                .where(table.c.status == "pending", table.c.conversation_key.in_(keys), *mine)
                .order_by(table.c.conversation_key, table.c.sent_at, table.c.message_key)
            )
            batch: dict[str, list[StoredMessage]] = {key: [] for key in keys}
            for row in rows:
                batch[row.conversation_key].append(_stored(row))
        yield batch
        after = keys[-1]


def messages_of(store: StateStore, message_keys: Iterable[str], account: str) -> list[str]:
    """Those of ``message_keys`` that came to ``account``, in their order."""
    keys = list(message_keys)
    table = schema.messages
    found: set[str] = set()
    with store.transaction() as connection:
        for chunk in _chunks(keys):
            found.update(
                connection.execute(
                    sa.select(table.c.message_key).where(
                        table.c.message_key.in_(chunk), table.c.account == account
                    )
                ).scalars()
            )
    return [key for key in keys if key in found]


def set_message_status(store: StateStore, message_keys: Iterable[str], status: str) -> None:
    keys = list(message_keys)
    with store.transaction() as connection:
        for chunk in _chunks(keys):
            connection.execute(
                schema.messages.update()
                .where(schema.messages.c.message_key.in_(chunk))
                .values(status=status)
            )


def dm_after(message_key: str, since_id: str | None) -> bool:
    """Whether the DM ``message_key`` (``x:dm:<id>``) is newer than the DM id ``since_id``
    (None: than any); a key without a numeric id is not."""
    number = message_key.rsplit(":", 1)[-1]
    if not number.isdigit():
        return False
    return since_id is None or not since_id.isdigit() or int(number) > int(since_id)


def hear_skipped_spam(
    store: StateStore, conversation_keys: Iterable[str], newer_than: str | None, rule: str
) -> int:
    """Spam-looking DMs these conversations' customers sent after ``newer_than`` (a DM id;
    None: any) go to the helpdesk after all; returns how many.

    A DM walk reads newest first: a customer's "screenshot: bit.ly/..." is read, and
    skipped as spam, before their older support message in the same conversation shows
    it is a support exchange. Only DMs of the walk that found that out are taken back,
    never an older one, which would open the ticket.
    """
    keys = sorted(set(conversation_keys))
    table = schema.messages
    with store.transaction() as connection:
        found: list[str] = []
        for chunk in _chunks(keys):
            for message_key in connection.execute(
                sa.select(table.c.message_key).where(
                    table.c.conversation_key.in_(chunk),
                    table.c.status == "skipped",
                    table.c.route == "spam",
                    table.c.from_brand.is_(False),
                    table.c.channel == "dm",
                )
            ).scalars():
                if dm_after(message_key, newer_than):
                    found.append(message_key)
        for chunk in _chunks(found):
            connection.execute(
                table.update()
                .where(table.c.message_key.in_(chunk))
                .values(status="pending", route="support", rule=rule)
            )
    return len(found)


def message_counts(store: StateStore) -> dict[str, int]:
    """Messages by status, for run summaries."""
    table = schema.messages
    with store.transaction() as connection:
        rows = connection.execute(
            sa.select(table.c.status, sa.func.count()).group_by(table.c.status)
        )
        return {row[0]: int(row[1]) for row in rows}


# intents ---------------------------------------------------------------------------------


def open_intent(
    store: StateStore, record_key: str, destination: str, action: str, idempotency_key: str
) -> None:
    """Say, durably, that a non-idempotent write is about to happen."""
    table = schema.intents
    with store.transaction() as connection:
        connection.execute(
            table.delete().where(
                table.c.record_key == record_key, table.c.destination == destination
            )
        )
        connection.execute(
            table.insert().values(
                record_key=record_key,
                destination=destination,
                action=action,
                idempotency_key=idempotency_key,
                created_at=utcnow(),
            )
        )


def close_intent(store: StateStore, record_key: str, destination: str) -> None:
    table = schema.intents
    with store.transaction() as connection:
        connection.execute(
            table.delete().where(
                table.c.record_key == record_key, table.c.destination == destination
            )
        )


def open_intents(store: StateStore, record_keys: Sequence[str], destination: str) -> set[str]:
    """Which of these records had a write started and never confirmed."""
    table = schema.intents
    found: set[str] = set()
    with store.transaction() as connection:
        for chunk in _chunks(list(record_keys)):
            found.update(
                connection.execute(
                    sa.select(table.c.record_key).where(
                        table.c.destination == destination, table.c.record_key.in_(chunk)
                    )
                ).scalars()
            )
    return found


@dataclass(frozen=True, slots=True)
class SalesTicket:
    """A helpdesk ticket for a conversation in which the person also asked sales."""

    person_key: str
    conversation_key: str
    ticket_id: str


def sales_tickets(
    store: StateStore, ticket_destination: str, person_keys: Sequence[str] | None = None
) -> dict[str, SalesTicket]:
    """Each person's latest conversation with a sales message and a delivered ticket.

    The cross-links between CRM and helpdesk come from here: the lead (or the Contact's
    Task) gets this ticket's link, and this ticket gets a note with the CRM record.
    """
    messages, ledger = schema.messages, schema.deliveries
    latest = sa.func.max(messages.c.sent_at).label("latest")
    query = (
        sa.select(
            messages.c.person_key, messages.c.conversation_key, ledger.c.destination_id, latest
        )
        .join(
            ledger,
            sa.and_(
                ledger.c.record_key == messages.c.conversation_key,
                ledger.c.destination == ticket_destination,
            ),
        )
        .where(
            messages.c.route == "sales",
            messages.c.from_brand.is_(False),
            ledger.c.destination_id.is_not(None),
        )
        .group_by(messages.c.person_key, messages.c.conversation_key, ledger.c.destination_id)
    )
    if person_keys is not None and not person_keys:
        return {}
    chunks: list[Sequence[str] | None] = (
        [None] if person_keys is None else list(_chunks(list(person_keys)))
    )
    found: dict[str, tuple[Any, SalesTicket]] = {}
    with store.transaction() as connection:
        for chunk in chunks:
            narrowed = query if chunk is None else query.where(messages.c.person_key.in_(chunk))
            for row in connection.execute(narrowed):
                ticket = SalesTicket(row.person_key, row.conversation_key, str(row.destination_id))
                when = _aware(row.latest)
                held = found.get(row.person_key)
                if held is None or (when, ticket.conversation_key) > held[0]:
                    found[row.person_key] = ((when, ticket.conversation_key), ticket)
    return {key: ticket for key, (_, ticket) in found.items()}
