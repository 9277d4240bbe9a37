"""The review gate: a leads run pauses with its plan, and writes it only when approved.

The runs pause on the test's Prefect server; the test plays the ops person through
Prefect's API, as the UI's Resume form does.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowFilter,
    FlowFilterName,
)
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import resume_flow_run
from truth import PLAIN_SCORING

import flows.leads as leads_module
from flows.leads import LeadsRun, leads
from sandbox.server import Sandbox, start_sandbox

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = start_sandbox(seed=11, write_config=tmp_path / "socialcrm.yaml", workdir=tmp_path)
    assert box.config_path is not None
    data = yaml.safe_load(box.config_path.read_text())
    data["accounts"][0]["recent_posts"] = 5
    data["qualification"] = {**(data.get("qualification") or {}), **PLAIN_SCORING}
    box.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    yield box
    box.stop()


def lead_ids(sandbox: Sandbox) -> dict[str, dict[str, Any]]:
    held = sandbox.state()["salesforce"]["Lead"]
    return {lead["Social_Profile_Id__c"]: lead for lead in held}


def paused_runs() -> set[UUID]:
    """Runs paused before this test's (a failed test may leave one behind)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["leads"])), limit=50
        )
    return {run.id for run in runs if run.state is not None and run.state.is_paused()}


class ReviewedRun:
    """A leads run with review on, in a thread, so the test can act while it waits."""

    def __init__(self, config: str, limit: int) -> None:
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.earlier = paused_runs()
        params = LeadsRun(config=config, review=True, limit=limit, review_timeout_minutes=5)
        self.thread = threading.Thread(target=self._run, args=(params,), daemon=True)
        self.thread.start()

    def _run(self, params: LeadsRun) -> None:
        try:
            self.result = leads(params)
        except BaseException as exc:
            self.error = exc

    def wait_paused(self, timeout: float = 120) -> UUID:
        deadline = time.time() + timeout
        with get_client(sync_client=True) as client:
            while time.time() < deadline:
                assert self.error is None, f"the run failed before pausing: {self.error!r}"
                runs = client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=["leads"])),
                    sort=FlowRunSort.START_TIME_DESC,
                    limit=5,
                )
                for run in runs:
                    state = run.state
                    if state is not None and state.is_paused() and run.id not in self.earlier:
                        return run.id
                time.sleep(0.5)
        raise AssertionError("the reviewed run never paused")

    def finish(self, timeout: float = 120) -> dict[str, Any]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not finish after the decision"
        assert self.error is None, f"the run failed: {self.error!r}"
        assert self.result is not None
        return self.result


def review_table(run_id: UUID) -> list[dict[str, Any]]:
    """The previewed records, read back from the run's artifact as the UI shows them."""
    import json

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    by_key = {a.key: a for a in artifacts}
    review = next(a for key, a in by_key.items() if key and key.endswith("-review"))
    assert "would create" in str(review.data)
    table = next(a for key, a in by_key.items() if key and key.endswith("-review-records"))
    data = table.data if isinstance(table.data, list) else json.loads(str(table.data))
    return list(data)


def test_an_approved_review_writes_exactly_the_previewed_leads(sandbox: Sandbox) -> None:
    run = ReviewedRun(str(sandbox.config_path), limit=12)
    run_id = run.wait_paused()
    preview = review_table(run_id)
    assert 8 <= len(preview) <= 12  # 12 people handled; the seed's bots are skipped
    assert lead_ids(sandbox) == {}, "a paused run wrote before approval"

    # New engagements arriving meanwhile are not slipped into what was approved.
    sandbox.generate(engagements=30)
    resume_flow_run(run_id, run_input={"approve": True, "comment": "looks right"})
    summary = run.finish()

    held = lead_ids(sandbox)
    assert set(held) == {row["Social_Profile_Id__c"] for row in preview}
    for row in preview:
        lead = held[row["Social_Profile_Id__c"]]
        for field in ("LastName", "Social_Handle__c", "Engagement_Score__c"):
            assert lead.get(field) == row.get(field), field
    assert summary["created"] == len(preview)
    assert len(preview) + summary["skipped"] == 12  # the 12 handled: written or skipped
    assert summary["status"] == "completed: approved in review (looks right)"


def test_someone_who_opts_out_while_the_review_waits_is_not_written(sandbox: Sandbox) -> None:
    from socialcrm import consent
    from socialcrm.config import load_settings
    from socialcrm.state import StateStore

    run = ReviewedRun(str(sandbox.config_path), limit=12)
    run_id = run.wait_paused()
    preview = [row for row in review_table(run_id) if row["status"] == "would create"]
    leaving = preview[0]["Social_Profile_Id__c"]
    with StateStore.open(load_settings(sandbox.config_path).state_url()) as store:
        assert consent.opt_out(store, [leaving]) == 1
    resume_flow_run(run_id, run_input={"approve": True, "comment": ""})
    summary = run.finish()
    held = lead_ids(sandbox)
    assert leaving not in held
    assert set(held) == {row["Social_Profile_Id__c"] for row in preview[1:]}
    assert summary["created"] == len(preview) - 1


def test_a_rejected_review_writes_nothing_and_says_so(sandbox: Sandbox) -> None:
    run = ReviewedRun(str(sandbox.config_path), limit=8)
    run_id = run.wait_paused()
    assert len(review_table(run_id)) > 0
    writes_before = int(sandbox.state()["writes"].get("salesforce", 0))

    resume_flow_run(run_id, run_input={"approve": False, "comment": "wrong campaign"})
    summary = run.finish()

    assert lead_ids(sandbox) == {}
    assert int(sandbox.state()["writes"].get("salesforce", 0)) == writes_before
    assert summary["status"].startswith("not written: rejected in review (wrong campaign)")
    assert summary["created"] == summary["updated"] == 0

    # The people stay pending: an unreviewed run afterwards delivers them.
    follow_up = leads(LeadsRun(config=str(sandbox.config_path), limit=8))
    assert follow_up["created"] + follow_up["skipped"] == 8
    assert follow_up["created"] > 0


def test_a_review_without_decision_writes_nothing(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decision(**_: object) -> None:
        raise FlowPauseTimeout("Flow run was paused and never resumed.")

    monkeypatch.setattr(leads_module, "pause_flow_run", no_decision)
    summary = leads(LeadsRun(config=str(sandbox.config_path), review=True, limit=5))
    assert summary["status"].startswith("not written: no review decision within 60 minutes")
    assert lead_ids(sandbox) == {}


def test_a_review_shows_people_sharing_an_address_as_one_lead_and_writes_it_so(
    sandbox: Sandbox,
) -> None:
    """Everyone gives the same address: the review shows one new lead and the others as
    Tasks on it, and the approved run writes exactly that (checked: without it, the
    preview shows every one of them as a new lead)."""
    address = "team@example.com"
    for user in sandbox._world.x_world.users.values():
        user.description = f"Write to {address}"
    run = ReviewedRun(str(sandbox.config_path), limit=8)
    run_id = run.wait_paused()
    statuses = Counter(row["status"] for row in review_table(run_id))
    assert statuses["would create"] == 1 and statuses["would log on lead"] >= 2, statuses

    resume_flow_run(run_id, run_input={"approve": True, "comment": "one person"})
    summary = run.finish()

    (lead,) = sandbox.state()["salesforce"]["Lead"]
    assert lead["Email"] == address
    tasks = [t for t in sandbox.state()["salesforce"]["Task"] if t.get("WhoId") == lead["Id"]]
    assert summary["created"] == 1
    assert summary["logged_on_lead"] == len(tasks) == statuses["would log on lead"]


def test_a_review_shows_the_tasks_it_would_log_for_customers(sandbox: Sandbox) -> None:
    """People who are already Contacts get a Task, not a lead: the review shows them too,
    and approval writes exactly those Tasks (they were written unseen before)."""
    truth = sandbox.seed_crm()
    run = ReviewedRun(str(sandbox.config_path), limit=200)
    run_id = run.wait_paused()
    table = review_table(run_id)
    shown = {row["record_key"] for row in table if row["status"] == "would log on contact"}
    assert shown and shown <= set(truth)  # people the org knows (a Contact, a converted lead)
    resume_flow_run(run_id, run_input={"approve": True, "comment": ""})
    summary = run.finish()
    assert summary["matched_contact"] == len(shown)
