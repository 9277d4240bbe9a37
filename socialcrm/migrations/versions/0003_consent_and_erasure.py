"""Consent and erasure: store settings (the suppression salt), suppressions, erasure audit.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
SALT_KEY = "suppression_salt"  # socialcrm.consent.SALT_KEY


def upgrade() -> None:
    meta = op.create_table(
        "store_meta",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.String(500), nullable=False),
    )
    # One random salt per store, made once: every suppression hash depends on it.
    op.bulk_insert(meta, [{"key": SALT_KEY, "value": secrets.token_hex(32)}])
    op.create_table(
        "suppressions",
        sa.Column("key_hash", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(20), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "erasure_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TZ, nullable=False),
        sa.Column("person_hash", sa.String(16), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("crm_policy", sa.String(20), nullable=False),
        sa.Column("helpdesk_policy", sa.String(20), nullable=False),
        sa.Column("outcome", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("erasure_audit")
    op.drop_table("suppressions")
    op.drop_table("store_meta")
