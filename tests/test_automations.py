"""The crashed-run automation's shape (its effect on a real server: test_prefect_server)."""

from __future__ import annotations

import pytest
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from socialcrm import automations
from socialcrm.cli import main


def test_the_automation_expects_news_after_every_heartbeat_of_a_socialcrm_run() -> None:
    built = automations.crash_detection(540).model_dump(mode="json")
    trigger = built["trigger"]
    assert trigger["posture"] == "Proactive"
    assert trigger["after"] == ["prefect.flow-run.heartbeat"]
    assert trigger["expect"] == ["prefect.flow-run.*"]  # named states disarm it too
    assert trigger["for_each"] == ["prefect.resource.id"]
    assert trigger["within"] == 540
    assert trigger["match_related"] == {
        "prefect.resource.role": "tag",
        "prefect.resource.id": "prefect.tag.socialcrm",
    }
    (action,) = built["actions"]
    assert action["type"] == "change-flow-run-state"
    assert action["state"] == "CRASHED"
    assert "540 s" in action["message"]


def test_the_wait_is_three_heartbeat_periods() -> None:
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}):
        assert automations.default_wait_s() == 180
    with (
        temporary_settings(restore_defaults={PREFECT_FLOWS_HEARTBEAT_FREQUENCY}),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        pytest.raises(ValueError, match="heartbeats are off"),
    ):
        automations.default_wait_s()


def test_a_wait_too_short_to_tell_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 10 seconds"):
        automations.crash_detection(5)


def test_the_command_needs_the_server_it_acts_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["prefect", "automations"]) == 2
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err
