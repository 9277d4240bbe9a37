"""OAuth tokens a run renews: X rotates the refresh token of a DM user-context token.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("access_token", sa.Text, nullable=False),
        sa.Column("expires_at", TZ, nullable=True),
        sa.Column("refresh_token", sa.Text, nullable=True),
        sa.Column("origin", sa.String(64), nullable=True),
        sa.Column("updated_at", TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tokens")
