"""Direct messages and write intents (tickets pipeline).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("message_key", sa.String(300), primary_key=True),
        sa.Column("account", sa.String(100), nullable=False),
        sa.Column("conversation_key", sa.String(300), nullable=False),
        sa.Column("person_key", sa.String(200), nullable=False),
        sa.Column("sender", sa.JSON, nullable=False),
        sa.Column("text", sa.Text, nullable=True),
        sa.Column("attachments", sa.JSON, nullable=False),
        sa.Column("sent_at", TZ, nullable=False),
        sa.Column("from_brand", sa.Boolean, nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("route", sa.String(20), nullable=False),
        sa.Column("rule", sa.String(100), nullable=True),
        sa.Column("priority", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
    )
    op.create_index("ix_messages_conversation_key", "messages", ["conversation_key"])
    op.create_index("ix_messages_status", "messages", ["status", "conversation_key"])
    op.create_table(
        "intents",
        sa.Column("record_key", sa.String(300), primary_key=True),
        sa.Column("destination", sa.String(100), primary_key=True),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("idempotency_key", sa.String(100), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("intents")
    op.drop_index("ix_messages_status", "messages")
    op.drop_index("ix_messages_conversation_key", "messages")
    op.drop_table("messages")
