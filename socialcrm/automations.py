"""The Prefect automation that marks an unresponsive socialcrm run Crashed.

A worker machine that dies, or a container that is evicted, leaves its flow run in
Running for ever: nothing is left to report the end. The UI then shows a run that never
finishes, and ops cannot tell a long run from a dead one. Flow runs send a heartbeat event
every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (180 by default, also while a run
waits for a review); this automation expects, after each heartbeat of a run tagged
``socialcrm``, another event of that run (a heartbeat or a state change) and marks the run
Crashed when none comes in time. Prefect Cloud has this built in ("unresponsive run
detection"); a self-hosted server needs it created, once, by ``socialcrm prefect
automations``. Nothing else has to follow: every run resumes from the store, so the next
scheduled run repairs what the dead one left half done.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

NAME = "socialcrm: mark unresponsive runs crashed"
TAG = "socialcrm"
MISSED_HEARTBEATS = 3
"""A run is declared dead after this many heartbeat periods without news (as Cloud does)."""
MINIMUM_WAIT_S = 10


@dataclass(frozen=True)
class AutomationResult:
    name: str
    action: str  # created | updated | kept
    unresponsive_after_s: int


def heartbeat_seconds() -> int | None:
    """The heartbeat period the flow runs of this installation use (None: none sent)."""
    from prefect.settings import get_current_settings

    value = get_current_settings().flows.heartbeat_frequency
    return None if value is None else int(value)


def default_wait_s() -> int:
    """How long without news before a run counts as dead: three heartbeat periods."""
    period = heartbeat_seconds()
    if period is None:
        raise ValueError(
            "flow-run heartbeats are off (PREFECT_FLOWS_HEARTBEAT_FREQUENCY is unset): "
            "set it on the workers (180 is Prefect's default) so runs can be watched"
        )
    return MISSED_HEARTBEATS * period


def crash_detection(unresponsive_after_s: int) -> Any:
    """The automation, as Prefect's docs build it, limited to runs tagged ``socialcrm``."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    if unresponsive_after_s < MINIMUM_WAIT_S:
        raise ValueError(f"unresponsive_after_s must be at least {MINIMUM_WAIT_S} seconds")
    return Automation(
        name=NAME,
        description=(
            "Marks a socialcrm flow run Crashed when it sends no heartbeat or state change "
            f"for {unresponsive_after_s} s (its worker died). The next scheduled run "
            "resumes from the store. Created by `socialcrm prefect automations`."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            # Any event of the run disarms it: a heartbeat, or any state (named or not).
            expect={"prefect.flow-run.*"},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification(
                {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{TAG}"}
            ),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=unresponsive_after_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"No heartbeat for {unresponsive_after_s} s: the process running this "
                    "flow is gone (machine, container or worker stopped). Nothing to undo: "
                    "the next run resumes from the store."
                ),
            )
        ],
    )


def _same(current: Any, wanted: Any) -> bool:
    """Same settings (the trigger's id is made anew with every model, so it is left out)."""

    def settings(automation: Any) -> Any:
        return automation.model_dump(
            mode="json",
            include={"description", "enabled", "trigger", "actions"},
            exclude={"trigger": {"id"}},
        )

    return bool(settings(current) == settings(wanted))


def ensure_crash_detection(unresponsive_after_s: int | None = None) -> AutomationResult:
    """Create the automation, or bring an existing one (found by name) up to date."""
    from prefect.automations import Automation

    wait = default_wait_s() if unresponsive_after_s is None else unresponsive_after_s
    period = heartbeat_seconds()
    if period is not None and wait < 2 * period:
        # A live run sends nothing between two heartbeats: a shorter wait crashes it.
        raise ValueError(
            f"--unresponsive-after {wait} is shorter than two heartbeat periods "
            f"({2 * period} s; PREFECT_FLOWS_HEARTBEAT_FREQUENCY={period}): runs that are "
            "still working would be marked Crashed"
        )
    wanted = crash_detection(wait)
    try:
        current: Any = Automation.read(name=NAME)
    except ValueError:
        wanted.create()
        return AutomationResult(NAME, "created", wait)
    if _same(current, wanted):
        return AutomationResult(NAME, "kept", wait)
    wanted.id = current.id
    wanted.update()
    return AutomationResult(NAME, "updated", wait)
