"""End to end: the leads flow over real HTTPS against the sandbox, in Prefect.

The sandbox's ground truth (every engagement it holds) is compared with what reached
its Salesforce simulator.
"""

from __future__ import annotations

import gc
import json
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from truth import PLAIN_SCORING, bots, engagement_counts, qualified

from flows.leads import LeadsRun, leads
from sandbox.server import Sandbox, start_sandbox
from socialcrm import cli
from socialcrm.config import DEFAULT_WEIGHTS
from socialcrm.state import StateStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

WEIGHTS = {kind.value: weight for kind, weight in DEFAULT_WEIGHTS.items()}


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with own_sandbox(tmp_path) as box:
        yield box


@contextmanager
def own_sandbox(tmp_path: Path, **options: Any) -> Iterator[Sandbox]:
    """The seeded sandbox, started with these options, its config in ``tmp_path``."""
    box = start_sandbox(
        seed=11, write_config=tmp_path / "socialcrm.yaml", workdir=tmp_path, **options
    )
    try:
        yield box
    finally:
        box.stop()


def write_in_bio(box: Sandbox, person_key: str, text: str) -> None:
    """What the X user ``person_key`` tells in their bio (people put addresses there)."""
    box._world.x_world.users[person_key.split(":", 1)[1]].description = text


def configure(sandbox: Sandbox, **changes: Any) -> str:
    """Edit the written config: account keys go to the account, the rest to the top."""
    assert sandbox.config_path is not None
    data = yaml.safe_load(sandbox.config_path.read_text())
    data["accounts"][0]["recent_posts"] = 100  # every seeded post, so truth is complete
    data["qualification"] = {**(data.get("qualification") or {}), **PLAIN_SCORING}
    for key, value in changes.items():
        if key in ("recent_posts", "streams", "page_size"):
            data["accounts"][0][key] = value
        elif key in ("crm", "qualification"):
            data[key].update(value)
        else:
            data[key] = value
    sandbox.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(sandbox.config_path)


def expected_leads(sandbox: Sandbox, threshold: float = 3.0) -> dict[str, dict[str, int]]:
    """Person key -> counts per kind, for everyone the ground truth says qualifies."""
    state = sandbox.state()
    return qualified(engagement_counts(state), state, threshold)


def sf_leads(sandbox: Sandbox) -> dict[str, dict[str, Any]]:
    leads_held = sandbox.state()["salesforce"]["Lead"]
    keys = [lead["Social_Profile_Id__c"] for lead in leads_held]
    assert len(keys) == len(set(keys)), "duplicate leads in the CRM"
    return dict(zip(keys, leads_held, strict=True))


def engage_again(sandbox: Sandbox, people: set[str]) -> set[str]:
    """240 new engagements in the sandbox; who of ``people`` made one of them."""
    before = {e["id"] + e["kind"] for e in sandbox.state()["x"]["engagements"]}
    sandbox.generate(engagements=240)
    return {
        f"x:{e['user_id']}"
        for e in sandbox.state()["x"]["engagements"]
        if e["id"] + e["kind"] not in before and f"x:{e['user_id']}" in people
    }


def sf_writes(sandbox: Sandbox) -> int:
    return int(sandbox.state()["writes"].get("salesforce", 0))


def test_first_run_creates_exactly_one_lead_per_qualified_person(sandbox: Sandbox) -> None:
    config = configure(sandbox)
    summary = leads(LeadsRun(config=config))
    expected = expected_leads(sandbox)
    held = sf_leads(sandbox)
    assert set(held) == set(expected)
    assert summary["created"] == len(expected) and summary["failed"] == 0
    assert summary["api_calls"]["salesforce"]["writes"] == math.ceil(len(expected) / 200)
    for key, counts in expected.items():
        lead = held[key]
        assert lead["Engagement_Count__c"] == sum(counts.values())
        assert lead["Engagement_Score__c"] == pytest.approx(
            sum(WEIGHTS[k] * n for k, n in counts.items())
        )
        assert lead["LastName"] and lead["Company"]
        assert lead["Social_Handle__c"] and lead["Social_Profile_URL__c"].startswith(
            "https://x.com/"
        )
        assert "Engagement score" in lead["Description"]
    # The social context a salesperson reads: what was said, with links to the posts.
    talker = max(expected, key=lambda k: expected[k].get("mention", 0))
    assert '"' in held[talker]["Description"] and "/status/" in held[talker]["Description"]


def test_second_run_writes_nothing(sandbox: Sandbox) -> None:
    config = configure(sandbox)
    leads(LeadsRun(config=config))
    sandbox.reset_calls()
    again = leads(LeadsRun(config=config))
    assert again["created"] == again["updated"] == 0
    assert again["new_engagements"] == 0
    assert again["api_calls"]["salesforce"]["writes"] == 0
    assert sf_writes(sandbox) == 0


def test_new_engagements_are_read_incrementally_and_touch_only_their_people(
    sandbox: Sandbox,
) -> None:
    config = configure(sandbox)
    leads(LeadsRun(config=config))
    before = {key: dict(lead) for key, lead in sf_leads(sandbox).items()}
    engagements_before = {e["id"] + e["kind"] for e in sandbox.state()["x"]["engagements"]}
    sandbox.generate(engagements=240)
    new = [
        e
        for e in sandbox.state()["x"]["engagements"]
        if e["id"] + e["kind"] not in engagements_before
    ]
    touched = {f"x:{e['user_id']}" for e in new}
    sandbox.reset_calls()

    summary = leads(LeadsRun(config=config))

    calls = sandbox.state()["calls"]["x"]
    new_mentions = sum(1 for e in new if e["kind"] in ("mention", "reply"))
    # Mentions resume from since_id: one page holds everything new.
    assert calls.get("GET /2/users/:id/mentions", 0) == math.ceil(max(new_mentions, 1) / 100)
    assert summary["new_engagements"] == len(new)
    expected = expected_leads(sandbox)
    held = sf_leads(sandbox)
    assert set(held) == set(expected)
    changed = {
        key
        for key, lead in held.items()
        if key not in before or before[key]["LastModifiedDate"] != lead["LastModifiedDate"]
    }
    assert changed <= touched
    assert changed == {key for key in touched if key in expected}
    assert summary["created"] + summary["updated"] == len(changed)


def test_a_thousand_new_leads_take_at_most_five_write_calls(sandbox: Sandbox) -> None:
    sandbox.generate(engagements=2400)
    config = configure(sandbox, qualification={"threshold": 1})
    summary = leads(LeadsRun(config=config, limit=1000))
    # The limit counts the people handled; the seed's bots among them are skipped.
    assert summary["created"] + summary["skipped"] == 1000
    assert summary["skipped"] <= len(bots(sandbox.state()))
    assert sf_writes(sandbox) <= 5
    assert len(sf_leads(sandbox)) == summary["created"]


def sf_calls(sandbox: Sandbox, ending: str) -> int:
    return sum(n for k, n in sandbox.state()["calls"]["salesforce"].items() if k.endswith(ending))


def many_engagements(sandbox: Sandbox) -> None:
    """2,400 new engagements on every seeded post: reading all their likes spends X's
    75-calls window, so the window is shortened to a second (the wait stays real)."""
    sandbox.generate(engagements=2400)
    sandbox.set_options(rate_window_seconds=1)


@pytest.mark.parametrize("bulk_threshold", [10**6, 1], ids=["collections", "bulk"])
def test_an_update_keeps_what_sales_typed_and_a_deleted_lead_comes_back_whole(
    sandbox: Sandbox, tmp_path: Path, bulk_threshold: int
) -> None:
    """Company and LeadSource are create-only in the shipped spec: the person's next
    engagement updates the social fields, not the company a salesperson typed. A lead
    sales deleted is created again with them, not refused as missing its Company."""
    from connectors.crm import salesforce
    from socialcrm.config import load_settings

    config = configure(sandbox, crm={"bulk_threshold": bulk_threshold})
    leads(LeadsRun(config=config))
    before = sf_leads(sandbox)
    touched = sorted(engage_again(sandbox, set(before)))
    edited, deleted = touched[0], touched[-1]
    assert edited != deleted
    sf = salesforce.connect(load_settings(config).crm).sf
    sf.Lead.update(before[edited]["Id"], {"Company": "Acme Corp", "LeadSource": "Web"})
    sf.Lead.delete(before[deleted]["Id"])
    # Planned again with nothing new: the ledger's hash, which leaves create-only fields
    # out, must find its lead unchanged (no write).
    still = sorted(set(before) - set(touched))[:5]
    with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        assert store.mark_pending(still) == len(still)

    summary = leads(LeadsRun(config=config))

    assert summary["failed"] == 0
    held = sf_leads(sandbox)
    assert set(held) == set(expected_leads(sandbox))
    assert held[edited]["Company"] == "Acme Corp" and held[edited]["LeadSource"] == "Web"
    assert held[edited]["Engagement_Count__c"] > before[edited]["Engagement_Count__c"]
    assert held[deleted]["Id"] != before[deleted]["Id"]
    assert held[deleted]["Company"] == "[not provided]" and held[deleted]["LeadSource"] == "Social"
    assert summary["outcomes"][deleted] == "created"
    for key in still:
        assert summary["outcomes"][key] == "unchanged"
        assert held[key]["LastModifiedDate"] == before[key]["LastModifiedDate"]


def test_a_deleted_lead_comes_back_with_create_only_values_that_are_not_required(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Only LeadSource create-only: the upsert of a deleted lead succeeds without it (it is
    not required), so it is set right after, on the new lead (checked: before, the lead
    came back without a LeadSource)."""
    from connectors.crm import salesforce
    from socialcrm.config import load_settings

    spec = yaml.safe_load(Path("mappings/lead.salesforce.yaml").read_text())
    spec["fields"]["Company"].pop("create_only")
    (tmp_path / "source_once.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    config = configure(sandbox, crm={"lead_mapping": "source_once.yaml"})
    leads(LeadsRun(config=config))
    before = sf_leads(sandbox)
    deleted = min(engage_again(sandbox, set(before)))
    salesforce.connect(load_settings(config).crm).sf.Lead.delete(before[deleted]["Id"])

    summary = leads(LeadsRun(config=config))

    assert summary["outcomes"][deleted] == "created" and summary["failed"] == 0
    lead = sf_leads(sandbox)[deleted]
    assert lead["Id"] != before[deleted]["Id"] and lead["LeadSource"] == "Social"


def test_leads_go_out_in_full_calls_across_batches(sandbox: Sandbox) -> None:
    """Batches of 300 people, no Bulk job: the tail of each batch waits for the next one,
    so every collections call but the last carries 200 leads."""
    many_engagements(sandbox)
    config = configure(
        sandbox, qualification={"threshold": 1}, crm={"batch_size": 300, "bulk_threshold": 10**6}
    )
    summary = leads(LeadsRun(config=config))
    created = summary["created"]
    assert created > 600 and len(sf_leads(sandbox)) == created
    assert sf_calls(sandbox, "/composite/sobjects/:sobject/:field") == -(-created // 200)
    again = leads(LeadsRun(config=config))
    assert again["created"] == 0 and len(sf_leads(sandbox)) == created


def test_batches_below_the_bulk_threshold_join_into_one_bulk_job(sandbox: Sandbox) -> None:
    many_engagements(sandbox)
    config = configure(
        sandbox, qualification={"threshold": 1}, crm={"batch_size": 300, "bulk_threshold": 500}
    )
    summary = leads(LeadsRun(config=config))
    created = summary["created"]
    assert len(sf_leads(sandbox)) == created > 1000
    jobs = sf_calls(sandbox, "POST /services/data/v60.0/jobs/ingest")
    upserts = sf_calls(sandbox, "/composite/sobjects/:sobject/:field")
    # No batch reaches 500 leads alone; together they make jobs of 500 or more, and only
    # the run's last leads (fewer than 500) may go by collections.
    assert 1 <= jobs <= created // 500
    assert upserts <= 3


def test_dry_run_writes_nothing_anywhere(sandbox: Sandbox) -> None:
    config = configure(sandbox)
    preview = leads(LeadsRun(config=config, dry_run=True))
    assert preview["would_create"] == len(expected_leads(sandbox))
    assert sf_writes(sandbox) == 0 and sf_leads(sandbox) == {}
    real = leads(LeadsRun(config=config))
    assert real["created"] == preview["would_create"]


def test_a_dry_run_in_batches_writes_nothing_and_does_not_overlap_them(
    sandbox: Sandbox,
) -> None:
    """A dry run's store is one connection: its batches go one after another, not side by
    side as in a real run, and the preview is the same as in one batch."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    config = configure(sandbox, crm={"batch_size": 40})
    state = leads(LeadsRun(config=config, dry_run=True), return_state=True)
    preview = state.result()
    assert preview["would_create"] == len(expected_leads(sandbox))
    assert sf_writes(sandbox) == 0 and sf_leads(sandbox) == {}
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    runs = {task.name: task for task in tasks}
    batches = sum(1 for name in runs if name.startswith("deliver "))
    assert batches >= 3
    for n in range(1, batches):
        written, prepared = runs[f"deliver {n}"].end_time, runs[f"prepare {n + 1}"].start_time
        assert written is not None and prepared is not None and written <= prepared


def test_limit_delivers_at_most_that_many_and_the_rest_next_time(sandbox: Sandbox) -> None:
    config = configure(sandbox)
    first = leads(LeadsRun(config=config, limit=50))
    assert first["created"] + first["skipped"] == 50  # the seed's bots are skipped
    rest = leads(LeadsRun(config=config))
    assert set(sf_leads(sandbox)) == set(expected_leads(sandbox))
    assert rest["created"] == len(expected_leads(sandbox)) - first["created"]


def test_while_another_accounts_run_delivers_a_run_pulls_only(sandbox: Sandbox) -> None:
    """Pending people are shared by the accounts of a store: the leads runs of two
    accounts never deliver them at once. The one that finds delivery busy pulls, and its
    people are delivered by the next run."""
    from flows.leads import DELIVERY_LOCK
    from socialcrm.config import load_settings
    from socialcrm.state import StateStore

    config = configure(sandbox)
    url = load_settings(config).state_url()
    with StateStore.open(url) as other, other.lock(DELIVERY_LOCK) as held:
        assert held
        pulled = leads(LeadsRun(config=config))
    assert pulled["status"].startswith("pulled only: another leads run")
    assert pulled["new_engagements"] > 0 and pulled["created"] == 0
    assert sf_writes(sandbox) == 0
    later = leads(LeadsRun(config=config))
    assert later["status"] == "completed"
    assert set(sf_leads(sandbox)) == set(expected_leads(sandbox))


def test_a_batch_whose_people_are_all_skipped_is_no_crash(sandbox: Sandbox) -> None:
    """Every pending person excluded (here: by a bot rule anyone meets): nothing to map."""
    config = configure(
        sandbox,
        exclusions={"bots": {"max_posts_per_day": 0.0001, "hard_max_posts_per_day": 0.0001}},
    )
    summary = leads(LeadsRun(config=config, limit=5))
    assert summary["created"] == 0 and summary["skipped"] == 5
    assert sf_writes(sandbox) == 0


def with_first_name(sandbox: Sandbox, tmp_path: Path, first_name: dict[str, Any]) -> str:
    """The config, with the shipped lead spec but this FirstName."""
    spec = yaml.safe_load(Path("mappings/lead.salesforce.yaml").read_text())
    spec["fields"]["FirstName"] = first_name
    (tmp_path / "first_name.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return configure(sandbox, crm={"lead_mapping": "first_name.yaml"})


def over_40(sandbox: Sandbox, people: Any) -> set[str]:
    """Who of ``people`` has a "handle bio" longer than FirstName's 40 characters."""
    users = {f"x:{u['id']}": u for u in sandbox.state()["x"]["users"]}
    return {
        key
        for key in people
        if len(f"{users[key]['username']} {users[key].get('description') or ''}".strip()) > 40
    }


def test_too_long_value_for_a_reject_field_is_dead_lettered_and_the_rest_delivered(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # FirstName holds 40 characters; handle plus bio often exceed it.
    first_name = {"template": "{handle} {bio}", "on_too_long": "reject"}
    summary = leads(LeadsRun(config=with_first_name(sandbox, tmp_path, first_name)))

    expected = expected_leads(sandbox)
    too_long = over_40(sandbox, expected)
    assert too_long and len(too_long) < len(expected)
    assert set(sf_leads(sandbox)) == set(expected) - too_long
    assert summary["failed"] == len(too_long) == summary["dead_lettered"]
    with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        letters = store.dead_letters(pipeline="leads")
    assert {letter.record_key for letter in letters} == too_long
    assert all(letter.field == "FirstName" for letter in letters)
    assert all("40" in letter.reason for letter in letters)


def test_values_the_mapping_cuts_are_reported_and_their_leads_delivered(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A truncated value is a warning, not a failure: the lead goes, the run counts it and
    lists it in an artifact naming the record and the field (checked: before, mapping
    warnings were dropped without a word)."""
    from prefect import get_client

    first_name = {"template": "{handle} {bio}"}  # cut at 40 characters
    summary = leads(LeadsRun(config=with_first_name(sandbox, tmp_path, first_name)))

    expected = expected_leads(sandbox)
    cut = over_40(sandbox, expected)
    assert cut and set(sf_leads(sandbox)) == set(expected)
    assert summary["failed"] == 0 and summary["mapping_warnings"] >= len(cut)
    with get_client(sync_client=True) as client:
        tables = [a for a in client.read_artifacts() if a.key == "leads-brand-warnings"]
    assert tables, "a warnings artifact"
    ours = max(tables, key=lambda a: a.created or 0)  # other tests' runs publish it too
    rows = json.loads(ours.data) if isinstance(ours.data, str) else ours.data
    flagged = {row["record_key"] for row in rows if row["field"] == "FirstName"}
    assert flagged == cut


def test_replaying_dead_letters_after_the_mapping_is_fixed_delivers_them(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = yaml.safe_load(Path("mappings/lead.salesforce.yaml").read_text())
    spec["fields"]["FirstName"] = {"template": "{handle} {bio}", "on_too_long": "reject"}
    (tmp_path / "strict.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    config = configure(sandbox, crm={"lead_mapping": "strict.yaml"})
    first = leads(LeadsRun(config=config))
    assert first["dead_lettered"] > 0
    # The cause is fixed: back to the shipped mapping.
    config = configure(sandbox, crm={"lead_mapping": "lead.salesforce.yaml"})
    (tmp_path / "strict.yaml").unlink()
    capsys.readouterr()
    assert cli.main(["dead-letters", "replay", "--config", config, "--all"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["leads"] == first["dead_lettered"] and summary["remaining"] == 0
    assert set(sf_leads(sandbox)) == set(expected_leads(sandbox))
    with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        assert store.dead_letters() == []


def test_a_replay_leaves_out_who_was_added_to_the_opt_out_list_since(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone is added to ``consent.opt_out`` after their lead failed: a replay run
    before any leads run must not write them (checked: replay did not read the list,
    and wrote the lead)."""
    spec = yaml.safe_load(Path("mappings/lead.salesforce.yaml").read_text())
    spec["fields"]["FirstName"] = {"template": "{handle} {bio}", "on_too_long": "reject"}
    (tmp_path / "strict.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    config = configure(sandbox, crm={"lead_mapping": "strict.yaml"})
    first = leads(LeadsRun(config=config))
    with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        failed = sorted({letter.record_key for letter in store.dead_letters()})
    assert len(failed) >= 2 and first["dead_lettered"] > 0
    config = configure(
        sandbox, crm={"lead_mapping": "lead.salesforce.yaml"}, consent={"opt_out": failed[:1]}
    )
    capsys.readouterr()
    assert cli.main(["dead-letters", "replay", "--config", config, "--all"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    held = set(sf_leads(sandbox))
    assert failed[0] not in held
    assert set(failed[1:]) <= held
    assert summary["leads"] == len(failed) - 1  # the one left out is not counted replayed


def test_a_retried_pull_does_not_read_again_the_walks_it_finished(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A late page fails for good (retries spent): Prefect retries the pull task, whose
    walks start from the stored cursors, so the mentions, finished before the failure,
    are asked only for what is newer (checked: the retry walked every mention page
    again, and counted them twice)."""
    from connectors.http import Action, ApiError
    from connectors.social import x

    fetch = x.fetch_page
    calls: list[tuple[str, bool]] = []  # (stream, after the failure)
    failed = threading.Event()

    def failing_once(client: Any, request: Any) -> Any:
        if len(calls) == 60 and not failed.is_set():
            failed.set()
            raise ApiError("x", "GET /2/tweets/:id/liking_users", "503", 503, Action.RETRY)
        calls.append((request.stream, failed.is_set()))
        return fetch(client, request)

    monkeypatch.setattr(x, "fetch_page", failing_once)
    summary = leads(LeadsRun(config=configure(sandbox)))
    assert failed.is_set() and summary["status"] == "completed"
    mentions_before = sum(1 for stream, after in calls if stream == "mentions" and not after)
    mentions_after = sum(1 for stream, after in calls if stream == "mentions" and after)
    assert mentions_before >= 2
    assert mentions_after == 1  # since the stored cursor: nothing newer
    assert set(sf_leads(sandbox)) == set(expected_leads(sandbox))


def test_a_spent_api_quota_stops_writing_cleanly_and_the_next_run_resumes(
    sandbox: Sandbox,
) -> None:
    config = configure(sandbox, crm={"quota_headroom": 0.5, "batch_size": 50})
    # Under 7 calls: the describes, then per batch of 50 one match call and one write.
    sandbox.set_options(sf_daily_limit=14)
    stopped = leads(LeadsRun(config=config))
    assert stopped["status"].startswith("quota:")
    partial = len(sf_leads(sandbox))
    assert 0 < partial < len(expected_leads(sandbox))
    sandbox.set_options(sf_daily_limit=15000)
    resumed = leads(LeadsRun(config=config))
    assert resumed["status"] == "completed"
    assert set(sf_leads(sandbox)) == set(expected_leads(sandbox))


def test_mapping_check_names_a_field_lead_does_not_have(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = configure(sandbox)
    assert cli.main(["mapping", "check", "--config", config]) == 0
    spec = yaml.safe_load(Path("mappings/lead.salesforce.yaml").read_text())
    spec["fields"]["Favourite_Colour__c"] = {"value": "blue"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    config = configure(sandbox, crm={"lead_mapping": "bad.yaml"})
    capsys.readouterr()
    assert cli.main(["mapping", "check", "--config", config]) != 0
    assert "Favourite_Colour__c" in capsys.readouterr().out


def test_a_misspelt_source_column_is_named_by_the_check_and_stops_the_run_unwritten(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``source: biography`` (the column is ``bio``) would leave the field empty in every
    lead: ``mapping check`` names it and a run writes nothing (checked: before, both
    passed and every lead went without it)."""
    from socialcrm.config import ConfigError

    spec = yaml.safe_load(Path("mappings/lead.salesforce.yaml").read_text())
    spec["fields"]["Description"] = {"source": "biography"}
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    config = configure(sandbox, crm={"lead_mapping": "typo.yaml"})
    capsys.readouterr()
    assert cli.main(["mapping", "check", "--config", config]) != 0
    assert "field Description: column 'biography' is not in the input" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="biography"):
        leads(LeadsRun(config=config))
    assert sf_leads(sandbox) == {}


def test_cli_run_prints_the_json_summary_last(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    config = configure(sandbox)
    assert cli.main(["run", "leads", "--config", config]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    for key in (
        "fetched",
        "engaged_users",
        "qualified",
        "created",
        "updated",
        "unchanged",
        "failed",
        "api_calls",
    ):
        assert key in summary
    assert summary["api_calls"]["salesforce"]["writes"] >= 1


@pytest.mark.postgres
def test_leads_and_tickets_on_a_postgresql_store(tmp_path: Path, postgres_url: str) -> None:
    from flows.tickets import TicketsRun, tickets

    with own_sandbox(tmp_path, state_url=postgres_url) as box:
        config = configure(box)
        first = leads(LeadsRun(config=config))
        assert first["created"] == len(expected_leads(box)) > 0
        again = leads(LeadsRun(config=config))
        assert again["created"] == again["updated"] == 0
        assert again["api_calls"]["salesforce"]["writes"] == 0
        inbox = tickets(TicketsRun(config=config))
        assert inbox["tickets_created"] > 0
        assert tickets(TicketsRun(config=config))["api_calls"]["zendesk"]["writes"] == 0


def test_more_new_mentions_than_the_timeline_reaches_is_reported_as_a_gap(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connectors.social import x

    config = configure(sandbox)
    assert leads(LeadsRun(config=config))["gaps"] == []  # a first run has nothing to miss
    monkeypatch.setattr(x, "MENTIONS_REACH", 10)  # the real reach is 800
    sandbox.generate(engagements=200)
    summary = leads(LeadsRun(config=config))
    assert summary["gaps"] and "possible gap" in summary["gaps"][0]


def test_the_pull_is_one_task_whose_logs_show_every_page(sandbox: Sandbox) -> None:
    """Ops read each page in the run's logs, under one ``pull`` task (not one per stream)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    config = configure(sandbox)
    state = leads(LeadsRun(config=config), return_state=True)
    summary = state.result()
    run_id = state.state_details.flow_run_id
    assert run_id is not None
    APILogWorker.drain_all(timeout=30)
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
        logs = []
        while batch := client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200, offset=len(logs)
        ):
            logs.extend(batch)
    pulls = [task for task in tasks if task.name.startswith("pull")]
    assert len(pulls) == 1, [task.name for task in tasks]
    streams = int(pulls[0].name.split()[1])
    assert pulls[0].name == f"pull {streams} streams" and streams > 30  # 30 posts x 3 + mentions
    pages = [log for log in logs if " engagements (" in log.message]
    assert {log.task_run_id for log in pages} == {pulls[0].id}
    # Every page is there: what the page lines add up to is what the run fetched.
    assert sum(int(log.message.split(": ", 1)[1].split()[0]) for log in pages) == summary["fetched"]
    assert summary["fetched"] > 0


def test_a_batch_is_mapped_while_the_one_before_is_written_yet_matches_its_leads(
    tmp_path: Path,
) -> None:
    """Batch 2 is prepared and looked up in the org while batch 1 is on the wire; whoever
    batch 1's write can have changed is looked up again once it is in. Two people, one in
    each batch, sharing the address in their bios make one lead, not two (the org's
    duplicate rule is off, so nothing else would catch it). Batch 1 goes as a Bulk job:
    five round trips and its processing, so batch 2's first lookup misses its lead
    (checked: without the second lookup, or matching before the write, there are two)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with own_sandbox(tmp_path, latency_ms=100, sf_duplicate_rules=False) as box:
        expected = expected_leads(box)
        first, last = min(expected), max(expected)  # batches go by person key
        address = "shared.person@example.com"
        for key in (first, last):
            write_in_bio(box, key, f"Mail me: {address}")
        batch_size = len(expected) * 3 // 4  # two batches of the pending people
        config = configure(box, crm={"batch_size": batch_size, "bulk_threshold": 100})
        state = leads(LeadsRun(config=config), return_state=True)
        summary = state.result()
        held = box.state()["salesforce"]["Lead"]
    sharing = [lead for lead in held if (lead.get("Email") or "").lower() == address]
    assert len(sharing) == 1, sharing
    outcomes = summary["outcomes"]
    assert (outcomes[first], outcomes[last]) == ("created", "logged on lead")
    assert len(held) == len(expected) - 1

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    runs = {task.name: task for task in tasks}
    assert {"prepare 1", "deliver 1", "prepare 2", "deliver 2"} <= runs.keys()
    assert "prepare 3" not in runs
    prepared, written = runs["prepare 2"].start_time, runs["deliver 1"].end_time
    assert prepared is not None and written is not None
    assert prepared < written, "batch 2 was not prepared while batch 1 was written"


def test_the_crm_is_connected_during_the_pull_once_someone_may_qualify(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose people cannot qualify makes no CRM call at all (not even the token);
    once the pull stores someone who may, the token and the describes go out beside it,
    on a thread of their own, once a run (checked: without the early connect, the
    delivery's own thread connects). The run's starting objects are frozen for the
    collector while it goes on, and only then."""
    from connectors.crm import salesforce

    connects: list[str] = []
    frozen: list[int] = []
    connect = salesforce.connect

    def spied(*args: Any, **kwargs: Any) -> Any:
        connects.append(threading.current_thread().name)
        frozen.append(gc.get_freeze_count())
        return connect(*args, **kwargs)

    monkeypatch.setattr(salesforce, "connect", spied)
    config = configure(sandbox, qualification={"threshold": 10_000.0})
    nobody = leads(LeadsRun(config=config))
    assert nobody["new_engagements"] > 0 and nobody["created"] == 0
    assert connects == []
    assert sandbox.state()["calls"]["salesforce"] == {}

    sandbox.generate(engagements=240)
    config = configure(sandbox, qualification={"threshold": 3.0})
    summary = leads(LeadsRun(config=config))
    assert summary["created"] > 0
    assert len(connects) == 1 and connects[0].startswith("crm-connect"), connects
    calls = sandbox.state()["calls"]["salesforce"]
    assert calls["POST /services/oauth2/token"] == 1
    assert calls["GET /services/data/v60.0/sobjects/:sobject/describe"] == 2  # Lead, Contact
    assert frozen[0] > 0 and gc.get_freeze_count() == 0


@pytest.mark.parametrize("matching", [True, False], ids=["matched", "named-by-duplicate-rule"])
def test_two_of_our_people_with_one_address_share_a_lead_and_neither_takes_it_over(
    tmp_path: Path, matching: bool
) -> None:
    """Two accounts giving the same address are one person for sales: one lead, the
    first's. The second's engagement goes on it as a Task; it never writes its external
    id or its social fields over the first's, so later runs do not flip the lead between
    them (checked: taking the lead over, as adoption of a lead nobody claimed does, makes
    the lead flip to the second and back). The second finds the lead by matching, or,
    with matching off, as the lead the org's duplicate rule names when it refuses the
    second's create (checked the same way)."""
    with own_sandbox(tmp_path, latency_ms=0) as box:
        expected = expected_leads(box)
        first, second = min(expected), max(expected)  # batches go by person key
        address = "one.person@example.com"
        for key in (first, second):
            write_in_bio(box, key, f"Mail me: {address}")
        batch_size = len(expected) * 3 // 4  # first in batch 1, second in batch 2
        config = configure(box, crm={"batch_size": batch_size, "matching": {"enabled": matching}})

        def the_lead() -> dict[str, Any]:
            held = box.state()["salesforce"]["Lead"]
            (lead,) = [lead for lead in held if (lead.get("Email") or "").lower() == address]
            return lead

        summary = leads(LeadsRun(config=config))
        lead = the_lead()
        assert (summary["outcomes"][first], summary["outcomes"][second]) == (
            "created",
            "logged on lead",
        )
        assert summary["logged_on_lead"] == 1
        assert lead["Social_Profile_Id__c"] == first
        assert lead["Social_Handle__c"] == box._world.x_world.users[first.split(":")[1]].username
        tasks = [t for t in box.state()["salesforce"]["Task"] if t.get("WhoId") == lead["Id"]]
        assert [t["Socialcrm_Key__c"].split(":engaged:")[0] for t in tasks] == [second]
        assert "Engagement score" in (tasks[0].get("Description") or "")

        # Every lead changes (a mapping edit, everyone sent again): the first's is updated
        # as its own, the second's Task stays as it was, and nobody takes the lead over.
        spec = yaml.safe_load(Path("mappings/lead.salesforce.yaml").read_text())
        spec["fields"]["LeadSource"] = {"value": "Social media"}
        (tmp_path / "edited.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        config = configure(box, crm={"lead_mapping": "edited.yaml"})
        with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
            assert store.mark_pending(expected) == len(expected)
        again = leads(LeadsRun(config=config))
        assert again["created"] == 0 and again["failed"] == 0
        assert (again["outcomes"][first], again["outcomes"][second]) == (
            "updated",
            "logged on lead",
        )
        assert the_lead()["Id"] == lead["Id"]
        assert the_lead()["Social_Profile_Id__c"] == first
        assert the_lead()["LeadSource"] == "Social media"
        after = [t for t in box.state()["salesforce"]["Task"] if t.get("WhoId") == lead["Id"]]
        assert after == tasks
        assert len(box.state()["salesforce"]["Lead"]) == len(expected) - 1


@pytest.mark.parametrize(
    ("at_first", "at_second", "batch_size"),
    [(3, 5, "twice"), (3, -3, "twice"), (-3, -2, "twice"), (3, 5, "default")],
    ids=[
        "in-the-same-call",
        "one-held-back-for-the-next-call",
        "both-held-back-for-the-last-call",
        "defaults-the-whole-batch-held-back-for-a-bulk-job",
    ],
)
def test_two_new_people_with_one_address_in_one_batch_make_one_lead(
    tmp_path: Path, at_first: int, at_second: int, batch_size: str
) -> None:
    """People of one batch are looked up together, before either lead exists; with the
    org's duplicate rule off nothing else would stop a second lead, whether they go in the
    same call, one of them waits for the next (the batch's last 4 leads are held back to
    fill calls of 200), both wait for the last call, or, with the default settings, the
    whole batch waits for a Bulk job. The second goes after the first and is logged on
    its lead (checked: without ``defer_same_address``, resp. ``recheck_held``, and with
    ``defer_same_address`` after ``hold_back``, there are two leads with that address)."""
    with own_sandbox(tmp_path, latency_ms=0, sf_duplicate_rules=False) as box:
        expected = expected_leads(box)
        ordered = sorted(expected)
        first, second = ordered[at_first], ordered[at_second]  # one batch: everyone
        address = "One.Person@Example.com"
        write_in_bio(box, first, f"Mail me: {address}")
        write_in_bio(box, second, f"mail: {address.lower()} please")
        crm = {"batch_size": 2 * len(expected)} if batch_size == "twice" else {}
        config = configure(box, crm=crm)
        summary = leads(LeadsRun(config=config))
        held = box.state()["salesforce"]["Lead"]
        tasks = box.state()["salesforce"]["Task"]
    sharing = [lead for lead in held if (lead.get("Email") or "").lower() == address.lower()]
    assert len(sharing) == 1, sharing
    assert sharing[0]["Social_Profile_Id__c"] == first
    assert (summary["outcomes"][first], summary["outcomes"][second]) == (
        "created",
        "logged on lead",
    )
    assert [t["Socialcrm_Key__c"].split(":engaged:")[0] for t in tasks] == [second]
    assert tasks[0]["WhoId"] == sharing[0]["Id"]
    assert len(held) == len(expected) - 1
    assert summary["created"] == len(expected) - 1


@pytest.mark.parametrize(
    "failing",
    ["upsert_tasks", "field_values"],
    ids=["the-task-write", "reading-the-lead-the-duplicate-rule-names"],
)
def test_a_failed_call_for_the_second_of_two_people_leaves_them_pending_for_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The second of two people with one address gets a Task on the first's lead. When a
    call on that way fails for good (retries spent): writing the Task, or, with matching
    off, reading whose lead the org's duplicate rule names, the second is counted failed
    and stays pending, the first's lead stands, and the next run writes the Task
    (checked: the old code cleared the second without a word, resp. failed the whole
    batch, the first's created lead included)."""
    from connectors.crm import salesforce
    from connectors.http import Action, ApiError

    def unavailable(*_: Any, **__: Any) -> Any:
        raise ApiError("salesforce", failing, "503 Service Unavailable", 503, Action.RETRY)

    with own_sandbox(tmp_path, latency_ms=0, sf_duplicate_rules=failing == "field_values") as box:
        expected = expected_leads(box)
        first, second = min(expected), max(expected)
        address = "one.person@example.com"
        write_in_bio(box, first, f"Mail me: {address}")
        write_in_bio(box, second, f"mail: {address} please")
        crm: dict[str, Any] = {"matching": {"enabled": failing != "field_values"}}
        if failing == "field_values":
            crm["batch_size"] = len(expected) * 3 // 4  # first in batch 1, second in batch 2
        config = configure(box, crm=crm)
        with monkeypatch.context() as patch:
            patch.setattr(salesforce, failing, unavailable)
            summary = leads(LeadsRun(config=config))
        assert (summary["outcomes"][first], summary["outcomes"][second]) == ("created", "failed")
        assert summary["failed"] == 1 and summary["created"] == len(expected) - 1
        with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
            batches = store.pending_people(batch_size=1000, min_score=0)
            assert {p.person_key for batch in batches for p in batch} == {second}
        assert box.state()["salesforce"]["Task"] == []

        again = leads(LeadsRun(config=config))
        assert again["outcomes"] == {second: "logged on lead"}
        (task,) = box.state()["salesforce"]["Task"]
        assert task["Socialcrm_Key__c"].startswith(second + ":engaged:")
        sharing = [
            lead
            for lead in box.state()["salesforce"]["Lead"]
            if (lead.get("Email") or "").lower() == address
        ]
        assert [lead["Social_Profile_Id__c"] for lead in sharing] == [first]
        assert task["WhoId"] == sharing[0]["Id"]


def test_a_dry_run_shows_the_second_of_two_people_with_one_address_logged_on_the_lead(
    tmp_path: Path,
) -> None:
    """A dry run writes nothing, so no lookup finds the first's lead; it still shows what
    a real run does with the second (in the same batch or a later one): a Task on the
    first's lead, not a second lead (checked: without remembering the addresses, both
    show as "would create")."""
    with own_sandbox(tmp_path) as box:
        expected = expected_leads(box)
        ordered = sorted(expected)
        same_batch, later_batch = ordered[3], ordered[-3]
        address = "one.person@example.com"
        for key in (ordered[1], same_batch, later_batch):
            write_in_bio(box, key, f"Mail me: {address}")
        config = configure(box, crm={"batch_size": len(expected) * 3 // 4})
        summary = leads(LeadsRun(config=config, dry_run=True))
        assert box.state()["salesforce"]["Lead"] == []
    outcomes = summary["outcomes"]
    assert outcomes[ordered[1]] == "would create"
    assert outcomes[same_batch] == outcomes[later_batch] == "would log on lead"
    assert summary["would_create"] == len(expected) - 2
