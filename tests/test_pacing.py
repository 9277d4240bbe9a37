"""Pacing: parallel threads share one budget per external system."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from connectors.http import ApiError, Pacing, call_with_retry, pace, set_pacing
from connectors.social.x import XClient


@pytest.fixture(autouse=True)
def no_pacing() -> object:
    yield
    set_pacing("test", None)


def test_per_second_spaces_calls_across_threads() -> None:
    set_pacing("test", Pacing(per_second=50))
    stamps: list[float] = []
    lock = threading.Lock()

    def call() -> None:
        pace("test")
        with lock:
            stamps.append(time.monotonic())

    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(20):
            pool.submit(call)
    stamps.sort()
    # 20 calls at 50/s cannot take less than 19 intervals of 20 ms, whatever the threads.
    assert stamps[-1] - stamps[0] >= 19 * 0.02 * 0.95


def test_every_attempt_is_paced(monkeypatch: pytest.MonkeyPatch) -> None:
    paced: list[str] = []
    monkeypatch.setattr("connectors.http.pace", lambda system: paced.append(system))

    def flaky() -> int:
        if len(paced) < 3:
            raise ConnectionError("reset")
        return 7

    def classify(exc: BaseException) -> ApiError | None:
        from connectors.http import Action

        return ApiError("test", "GET /", str(exc), action=Action.RETRY)

    from connectors.http import RetryPolicy

    policy = RetryPolicy(sleep=lambda _: None, backoff_initial=0.0, backoff_max=0.0)
    assert (
        call_with_retry(flaky, system="test", call="GET /", classify=classify, policy=policy) == 7
    )
    assert paced == ["test", "test", "test"]


def test_x_window_is_shared_by_threads() -> None:
    client = XClient.__new__(XClient)  # only the window bookkeeping is exercised
    client._windows = {"GET /t": (5, time.time() + 3600)}
    client._window_lock = threading.Lock()
    taken: list[bool] = []

    def take() -> None:
        try:
            client._wait_for_window("GET /t")
            taken.append(True)
        except ApiError:
            taken.append(False)

    client.account = type("A", (), {"max_rate_limit_wait_seconds": 0})()
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(12):
            pool.submit(take)
    # Five calls were left in the window: five go, the rest stop instead of a sure 429.
    assert taken.count(True) == 5 and taken.count(False) == 7


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_named_prefect_limit_must_exist_on_the_server() -> None:
    """Prefect skips a missing limit quietly: the pacing asked for would not happen."""
    from conftest import minimal_settings
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from flows.leads import apply_rate_limits
    from socialcrm.config import ConfigError, Settings

    def settings(limit: str) -> Settings:
        return minimal_settings(rate_limits={"salesforce": {"prefect_limit": limit}})

    with pytest.raises(ConfigError, match=r"rate_limits\.salesforce\.prefect_limit: .*'sf-typo'"):
        apply_rate_limits(settings("sf-typo"))
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name="sf-calls", limit=5, slot_decay_per_second=5.0)
        )
    try:
        apply_rate_limits(settings("sf-calls"))
    finally:
        set_pacing("salesforce", None)
