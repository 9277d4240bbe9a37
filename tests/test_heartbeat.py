"""Flow runs do not wait for Prefect's heartbeat thread at their end (flows/heartbeat.py)."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from prefect import flow_engine

import flows
from flows import heartbeat


class _Engine:
    """What ``_send_heartbeats`` reads of a flow-run engine; the first heartbeat blocks
    until the test lets it go, so the thread is certainly alive when the run ends."""

    heartbeat_seconds = 30

    def __init__(self) -> None:
        self.flow_run = None
        self.logger = logging.getLogger("test.heartbeat")
        self.sent = 0
        self.sending = threading.Event()
        self.release = threading.Event()

    def _build_heartbeat_event_template(self) -> tuple[Any, Any]:
        return None, None

    def _emit_flow_run_heartbeat(self, resource: Any, related: Any) -> None:
        self.sent += 1
        self.sending.set()
        self.release.wait()


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Prefect's heartbeat threads, recording whether anyone joined them."""
    started: list[Any] = []

    class RecordingThread(threading.Thread):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.joined = False
            started.append(self)

        def join(self, timeout: float | None = None) -> None:
            self.joined = True
            super().join(timeout)

    shim = SimpleNamespace(Thread=RecordingThread, Event=threading.Event)
    monkeypatch.setattr(flow_engine, "threading", shim)
    return started


def _one_run(send_heartbeats: Any, engine: _Engine) -> None:
    with send_heartbeats(engine):
        assert engine.sending.wait(timeout=30)


def test_importing_the_flows_replaces_prefects_heartbeat_context() -> None:
    assert flows is not None
    assert heartbeat.installed
    assert flow_engine._send_heartbeats is not heartbeat.prefect_send_heartbeats
    assert heartbeat.install()  # a second import changes nothing more
    assert getattr(flow_engine._send_heartbeats, "_socialcrm_without_join", False)


def test_a_run_ends_without_joining_and_the_thread_ends_by_itself(threads: list[Any]) -> None:
    engine = _Engine()
    _one_run(flow_engine._send_heartbeats, engine)
    (thread,) = threads
    assert not thread.joined
    assert thread.is_alive()  # still in its first heartbeat when the run ended
    engine.release.set()
    threading.Thread.join(thread, timeout=30)
    assert not thread.is_alive()
    assert engine.sent == 1  # nothing more sent after the run ended


def test_prefects_own_context_joins(threads: list[Any]) -> None:
    """The check above would pass for nothing if Prefect never joined."""
    assert heartbeat.prefect_send_heartbeats is not None
    engine = _Engine()
    engine.release.set()
    _one_run(heartbeat.prefect_send_heartbeats, engine)
    (thread,) = threads
    assert thread.joined


def test_a_prefect_without_the_argument_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def older(engine: Any) -> Any:
        raise AssertionError("not called")

    monkeypatch.setattr(flow_engine, "_send_heartbeats", older)
    assert not heartbeat.install()
    assert flow_engine._send_heartbeats is older
