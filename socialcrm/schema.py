"""Tables of the state store. Migrations in ``socialcrm/migrations`` create and evolve them.

Kept as SQLAlchemy Core tables (not ORM classes): the store moves rows in batches and
never needs identity maps or lazy loading.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# Where each (account, stream) resumes; written in the same transaction as the page's records.
cursors = sa.Table(
    "cursors",
    metadata,
    sa.Column("account", sa.String(100), primary_key=True),
    sa.Column("stream", sa.String(200), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# One row per person who engaged: running totals, so qualification spans runs.
people = sa.Table(
    "people",
    metadata,
    sa.Column("person_key", sa.String(200), primary_key=True),
    sa.Column("platform", sa.String(40), nullable=False),
    sa.Column("user_id", sa.String(100), nullable=False),
    sa.Column("handle", sa.String(200), nullable=False),
    sa.Column("profile", sa.JSON, nullable=False),
    sa.Column("counts", sa.JSON, nullable=False),
    sa.Column("engagement_count", sa.Integer, nullable=False, default=0),
    sa.Column("score", sa.Float, nullable=False, default=0.0),
    sa.Column("first_engaged_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_engaged_at", sa.DateTime(timezone=True), nullable=True),
    # Set when totals change, cleared once the person's lead is delivered (or judged moot).
    sa.Column("pending", sa.Boolean, nullable=False, default=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("ix_people_pending", people.c.pending, people.c.person_key)

# Every engagement seen once; its key makes re-reads (likes, reposts) harmless.
engagements = sa.Table(
    "engagements",
    metadata,
    sa.Column("engagement_key", sa.String(300), primary_key=True),
    sa.Column("account", sa.String(100), nullable=False),
    sa.Column("person_key", sa.String(200), nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("post_id", sa.String(100), nullable=True),
    sa.Column("text", sa.Text, nullable=True),
    sa.Column("url", sa.String(500), nullable=True),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
)

# What each destination holds for each record: its id and the hash of what we last sent.
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("record_key", sa.String(300), primary_key=True),
    sa.Column("destination", sa.String(100), primary_key=True),
    sa.Column("destination_id", sa.String(100), nullable=True),
    sa.Column("payload_hash", sa.String(64), nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# Records that could not be delivered, with enough to understand and replay them.
dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("record_key", sa.String(300), nullable=False, index=True),
    sa.Column("pipeline", sa.String(40), nullable=False),
    sa.Column("stage", sa.String(40), nullable=False),
    sa.Column("system", sa.String(40), nullable=False),
    sa.Column("field", sa.String(200), nullable=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.JSON, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# Direct messages seen, with their routing decision and delivery status.
messages = sa.Table(
    "messages",
    metadata,
    sa.Column("message_key", sa.String(300), primary_key=True),
    sa.Column("account", sa.String(100), nullable=False),
    sa.Column("conversation_key", sa.String(300), nullable=False, index=True),
    sa.Column("person_key", sa.String(200), nullable=False),
    sa.Column("sender", sa.JSON, nullable=False),
    sa.Column("text", sa.Text, nullable=True),
    sa.Column("attachments", sa.JSON, nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("from_brand", sa.Boolean, nullable=False),
    sa.Column("channel", sa.String(20), nullable=False),
    sa.Column("route", sa.String(20), nullable=False),
    sa.Column("rule", sa.String(100), nullable=True),
    sa.Column("priority", sa.String(20), nullable=False),
    # pending -> delivered | skipped (brand, spam) | failed (dead-lettered)
    sa.Column("status", sa.String(20), nullable=False),
)
sa.Index("ix_messages_status", messages.c.status, messages.c.conversation_key)

# Written before a write that is not idempotent (ticket create, comment add); a row
# still open on the next run means "look in the destination before writing again".
intents = sa.Table(
    "intents",
    metadata,
    sa.Column("record_key", sa.String(300), primary_key=True),
    sa.Column("destination", sa.String(100), primary_key=True),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("idempotency_key", sa.String(100), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# --- consent and erasure (migration 0003) ------------------------------------------------

# Small settings of the store itself, e.g. the random salt of the suppression hashes.
store_meta = sa.Table(
    "store_meta",
    metadata,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.String(500), nullable=False),
)

# People who opted out or were erased, by a keyed hash of their identity key only: the
# list must never become a list of the very people who asked to be forgotten.
suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("key_hash", sa.String(64), primary_key=True),
    sa.Column("reason", sa.String(20), nullable=False),  # opt-out | erased
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# One line per erasure: when, a prefix of the person's hash, and what each system did, as
# counts and statuses; never an id, a handle, a name or an email.
erasure_audit = sa.Table(
    "erasure_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("person_hash", sa.String(16), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("crm_policy", sa.String(20), nullable=False),
    sa.Column("helpdesk_policy", sa.String(20), nullable=False),
    sa.Column("outcome", sa.JSON, nullable=False),
)


# --- renewed OAuth tokens (migration 0004) ------------------------------------------------

# The latest token of a connection a run renews itself (an X DM user-context token): X
# rotates the refresh token at every renewal, so the one in the config works only once.
tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),  # e.g. "x-dm:brand"
    sa.Column("access_token", sa.Text, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("refresh_token", sa.Text, nullable=True),
    # A hash of the configured token that started the chain: a new one there (the app
    # authorized again) starts a new chain instead of renewing the stored one.
    sa.Column("origin", sa.String(64), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
