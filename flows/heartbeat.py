"""A flow run returns when its work is done, not up to a second later.

Prefect 3.9 sends flow-run heartbeats from a thread that sleeps in 1-second steps. Its
sync engine joins that thread at the end of every run, after the run's final state is
already recorded, so each ``leads(...)`` call (and each deployment's process) ends 0 to
1 s late: 0.8 s of a 5-s leads run at 10,000 engagements in ``make bench``. Prefect's
async engine does not join (``join_on_exit=False``): the thread sees the stop flag at its
next step and ends by itself without sending anything more. This module makes the sync
engine do the same. Heartbeats during the run, and so Prefect's crashed-run detection,
are unchanged.

``_send_heartbeats`` is private to Prefect; if a later release renames it or drops its
``join_on_exit`` argument, nothing is changed and runs keep the wait.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from prefect import flow_engine

_MARK = "_socialcrm_without_join"

Heartbeats = Callable[..., AbstractContextManager[None]]


def without_join(original: Heartbeats) -> Heartbeats:
    """``original`` (Prefect's ``_send_heartbeats``) asked never to join its thread."""

    @contextmanager
    def send_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
        with original(engine, join_on_exit=False):
            yield

    setattr(send_heartbeats, _MARK, True)
    return send_heartbeats


def install() -> bool:
    """Replace Prefect's heartbeat context once; True if the runs no longer wait."""
    original = getattr(flow_engine, "_send_heartbeats", None)
    if original is None:
        return False
    if getattr(original, _MARK, False):
        return True
    try:
        accepts = "join_on_exit" in inspect.signature(original).parameters
    except (TypeError, ValueError):
        return False
    if not accepts:
        return False
    global prefect_send_heartbeats
    prefect_send_heartbeats = original
    flow_engine._send_heartbeats = without_join(original)  # type: ignore[assignment]
    return True


prefect_send_heartbeats: Heartbeats | None = None
"""Prefect's own function, once replaced."""
installed = install()
