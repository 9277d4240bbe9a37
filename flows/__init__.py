"""Prefect flows: leads, tickets, replay and erase."""

from flows import heartbeat as _heartbeat  # noqa: F401  (flow runs end without a join)
