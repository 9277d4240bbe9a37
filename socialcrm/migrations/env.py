"""Alembic environment: the store hands over its own connection, so no URL lives here."""

from __future__ import annotations

from alembic import context

from socialcrm.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through socialcrm.state.migrate(), which passes a connection"
    )

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
