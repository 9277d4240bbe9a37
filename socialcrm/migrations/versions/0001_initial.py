"""Initial state store: cursors, people, engagements, deliveries, dead letters.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cursors",
        sa.Column("account", sa.String(100), primary_key=True),
        sa.Column("stream", sa.String(200), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "people",
        sa.Column("person_key", sa.String(200), primary_key=True),
        sa.Column("platform", sa.String(40), nullable=False),
        sa.Column("user_id", sa.String(100), nullable=False),
        sa.Column("handle", sa.String(200), nullable=False),
        sa.Column("profile", sa.JSON, nullable=False),
        sa.Column("counts", sa.JSON, nullable=False),
        sa.Column("engagement_count", sa.Integer, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("first_engaged_at", TZ, nullable=True),
        sa.Column("last_engaged_at", TZ, nullable=True),
        sa.Column("pending", sa.Boolean, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_index("ix_people_pending", "people", ["pending", "person_key"])
    op.create_table(
        "engagements",
        sa.Column("engagement_key", sa.String(300), primary_key=True),
        sa.Column("account", sa.String(100), nullable=False),
        sa.Column("person_key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("post_id", sa.String(100), nullable=True),
        sa.Column("text", sa.Text, nullable=True),
        sa.Column("url", sa.String(500), nullable=True),
        sa.Column("occurred_at", TZ, nullable=False),
    )
    op.create_index("ix_engagements_person_key", "engagements", ["person_key"])
    op.create_table(
        "deliveries",
        sa.Column("record_key", sa.String(300), primary_key=True),
        sa.Column("destination", sa.String(100), primary_key=True),
        sa.Column("destination_id", sa.String(100), nullable=True),
        sa.Column("payload_hash", sa.String(64), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("record_key", sa.String(300), nullable=False),
        sa.Column("pipeline", sa.String(40), nullable=False),
        sa.Column("stage", sa.String(40), nullable=False),
        sa.Column("system", sa.String(40), nullable=False),
        sa.Column("field", sa.String(200), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload", sa.JSON, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_index("ix_dead_letters_record_key", "dead_letters", ["record_key"])


def downgrade() -> None:
    for table in ("dead_letters", "deliveries", "engagements", "people", "cursors"):
        op.drop_table(table)
