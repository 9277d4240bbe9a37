"""End to end: ``erase`` leaves no trace of a person, by the configured policy.

A leads run and a tickets run first put the person everywhere: a people row, engagements,
DMs and their ledger entries in the store, a lead in the CRM (plus Tasks, and a Contact
sales keeps), a requester and a ticket with their words in the helpdesk. After the erase,
every table of the store (all text and JSON columns) and every record of the sandbox CRM
and helpdesk is searched for their user id, handle and display name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from connectors.crm import salesforce
from flows.erase import NEUTRAL_SUBJECT, EraseRun, ErasureIncomplete, erase
from flows.leads import LeadsRun, leads
from flows.tickets import TicketsRun, tickets
from sandbox.server import Sandbox, start_sandbox
from socialcrm import consent, erasure, inbox
from socialcrm.config import load_settings
from socialcrm.records import Engagement, EngagementKind, RecordProblem, SocialProfile
from socialcrm.state import StateStore

# The end-to-end tests (slow) run flows; the unit tests at the end need neither Prefect
# nor HTTP.
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Target:
    """The person to erase and what finds them in text."""

    key: str
    user_id: str
    handle: str
    name: str

    def pattern(self) -> re.Pattern[str]:
        return re.compile(
            rf"(?<![0-9A-Za-z]){re.escape(self.user_id)}(?![0-9A-Za-z])"
            rf"|(?<![\w]){re.escape(self.handle)}(?![\w])"
            rf"|{re.escape(self.name)}",
            re.IGNORECASE,
        )


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = start_sandbox(seed=5, write_config=tmp_path / "socialcrm.yaml", workdir=tmp_path)
    yield box
    box.stop()


def configure(sandbox: Sandbox, **consent_settings: str) -> None:
    assert sandbox.config_path is not None
    lines = "".join(f"  {name}: {value}\n" for name, value in consent_settings.items())
    with sandbox.config_path.open("a", encoding="utf-8") as config:
        config.write(f"consent:\n{lines}")


def state_url(sandbox: Sandbox) -> str:
    return load_settings(str(sandbox.config_path)).state_url()


def run_erase(sandbox: Sandbox, target: Target, **params: Any) -> dict[str, Any]:
    return erase(EraseRun(config=str(sandbox.config_path), person=target.key, **params))


def populate(sandbox: Sandbox) -> Target:
    """Run both flows, and pick a person with a lead, a requester and a ticket whose
    handle and name no one else's record holds (so a trace is always theirs)."""
    config = str(sandbox.config_path)
    leads(LeadsRun(config=config))
    tickets(TicketsRun(config=config))
    state = sandbox.state()
    with_lead = {lead.get("Social_Profile_Id__c") for lead in state["salesforce"]["Lead"]}
    requesters = {u["external_id"] for u in state["zendesk"]["users"] if u["external_id"]}
    users = {u["id"]: u for u in state["x"]["users"]}
    for key in sorted(with_lead & requesters):
        user = users.get(key.split(":", 1)[1])
        if user is None or not user.get("name") or len(user["name"]) < 5:
            continue
        target = Target(key, user["id"], user["username"], user["name"])
        others = [u for u in users.values() if u["id"] != user["id"]]
        clash = target.pattern()
        if not any(clash.search(f"{u['username']} {u.get('name')}") for u in others):
            return target
    raise AssertionError("the seeded world has no person with both a lead and a ticket")


def add_crm_extras(sandbox: Sandbox, target: Target) -> dict[str, str]:
    """A Contact sales owns (carrying their id), a sales Task on it, our Task on it, and
    our Task plus a sales Task on their lead."""
    settings = load_settings(str(sandbox.config_path))
    conn = salesforce.connect(settings.crm)
    lead = salesforce.query(
        conn,
        f"SELECT Id FROM Lead WHERE Social_Profile_Id__c = {salesforce.soql_quote(target.key)}",
    )[0]["Id"]
    contact = conn.sf.Contact.create({"LastName": target.name, "Social_Profile_Id__c": target.key})[
        "id"
    ]
    ids = {"lead": lead, "contact": contact}
    tasks = {
        "sales_on_contact": {"WhoId": contact, "Subject": "Renewal call"},
        "ours_on_contact": {
            "WhoId": contact,
            "Subject": f"DM from @{target.handle}",
            "Socialcrm_Key__c": f"{target.key}:dm:1",
        },
        "ours_on_lead": {
            "WhoId": lead,
            "Subject": f"Mention by @{target.handle}",
            "Description": f"{target.name} asked for a demo",
            "Socialcrm_Key__c": f"{target.key}:mention:1",
        },
        "sales_on_lead": {"WhoId": lead, "Subject": f"Call {target.name}"},
    }
    for name, fields in tasks.items():
        ids[name] = conn.sf.Task.create(fields)["id"]
    return ids


def add_store_extras(sandbox: Sandbox, target: Target) -> None:
    """Dead letters: another's whose payload mentions them, another's, and theirs with no
    usable key (their tweet); an open intent; another person's engagement that mentions
    their handle."""
    settings = load_settings(str(sandbox.config_path))
    with StateStore.open(settings.state_url()) as store:
        store.add_dead_letters(
            "leads",
            [
                RecordProblem(
                    "x:mention:1", "mapping", "salesforce", "bad", payload={"h": target.handle}
                ),
                RecordProblem("x:mention:2", "mapping", "salesforce", "bad", payload={"h": "z"}),
                RecordProblem(
                    "x:mentions:#0f0f", "source", "x", "id", payload={"author_id": target.user_id}
                ),
            ],
        )
        inbox.open_intent(store, f"{target.key}:probe", "zendesk:ticket", "create", "k1")
        other = SocialProfile(platform="x", user_id="42", handle="someone_else", display_name="S E")
        store.ingest(
            "brand",
            [
                Engagement(
                    platform="x",
                    id="990001",
                    kind=EngagementKind.MENTION,
                    author=other,
                    text=f"totally agree with @{target.handle} here",
                )
            ],
            settings.qualification,
        )


def store_traces(url: str, target: Target) -> list[str]:
    """Every table, every row, every column: where the person still shows."""
    pattern = target.pattern()
    found = []
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            for name in sa.inspect(connection).get_table_names():
                table = sa.Table(name, sa.MetaData(), autoload_with=connection)
                for row in connection.execute(sa.select(table)).mappings():
                    for column, value in row.items():
                        text = value if isinstance(value, str) else json.dumps(value, default=str)
                        if pattern.search(text) or pattern.search(_decoded(text)):
                            found.append(f"store {name}.{column}: {text[:80]}")
    finally:
        engine.dispose()
    return found


def _decoded(text: str) -> str:
    try:
        return json.dumps(json.loads(text), ensure_ascii=False)
    except ValueError:
        return text


def remote_traces(
    sandbox: Sandbox, target: Target, *, skip_ids: frozenset[str] | set[str] = frozenset()
) -> list[str]:
    pattern = target.pattern()
    state = sandbox.state()
    found = []
    for sobject, records in state["salesforce"].items():
        for record in records:
            if record.get("Id") in skip_ids:
                continue
            text = json.dumps(record, ensure_ascii=False)
            if pattern.search(text):
                found.append(f"salesforce {sobject} {record.get('Id')}")
    zendesk = state["zendesk"]
    for part in ("users", "tickets", "deleted_tickets", "job_statuses"):
        for item in zendesk.get(part) or []:
            if pattern.search(json.dumps(item, ensure_ascii=False)):
                found.append(f"zendesk {part} {item.get('id')}")
    return found


def writes(sandbox: Sandbox) -> dict[str, int]:
    state = sandbox.state()["writes"]
    return {system: int(state.get(system, 0)) for system in ("salesforce", "zendesk")}


def row_counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return {
                name: int(
                    connection.execute(sa.text(f'SELECT COUNT(*) FROM "{name}"')).scalar_one()
                )
                for name in sa.inspect(connection).get_table_names()
            }
    finally:
        engine.dispose()


def records(sandbox: Sandbox, sobject: str) -> dict[str, dict[str, Any]]:
    return {r["Id"]: r for r in sandbox.state()["salesforce"].get(sobject, [])}


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_erase_leaves_no_trace_and_a_rerun_writes_nothing(sandbox: Sandbox) -> None:
    target = populate(sandbox)
    extras = add_crm_extras(sandbox, target)
    add_store_extras(sandbox, target)
    url = state_url(sandbox)
    assert store_traces(url, target) and remote_traces(sandbox, target)
    leads_before = records(sandbox, "Lead")
    other_tickets = [
        t for t in sandbox.state()["zendesk"]["tickets"] if target.handle not in t["subject"]
    ]
    people_before = row_counts(url)["people"]

    # A dry run finds everything, lists it, and changes nothing anywhere.
    before_writes, before_rows = writes(sandbox), row_counts(url)
    plan = run_erase(sandbox, target, dry_run=True)
    assert writes(sandbox) == before_writes
    assert row_counts(url) == before_rows
    planned = {(p["system"], p["action"], p["object"]) for p in plan["plan"]}
    assert {("crm", "delete", "Lead"), ("crm", "delete", "Task")} <= planned
    assert ("helpdesk", "delete for good", "user") in planned
    assert ("helpdesk", "redact", "comment") in planned
    assert plan["store"]["people"] == 1 and plan["store"]["messages"] >= 1
    assert not target.pattern().search(json.dumps(plan, ensure_ascii=False))

    summary = run_erase(sandbox, target)

    assert summary["status"] == "completed"
    assert not target.pattern().search(json.dumps(summary, ensure_ascii=False))
    assert store_traces(url, target) == []
    # The Contact is sales' record: kept as it was, and the summary says so.
    assert remote_traces(sandbox, target, skip_ids={extras["contact"]}) == []
    contacts = records(sandbox, "Contact")
    assert contacts[extras["contact"]]["LastName"] == target.name
    assert summary["crm"]["contacts_kept"] == 1 and "note" in summary
    tasks = records(sandbox, "Task")
    assert extras["sales_on_contact"] in tasks
    assert not {extras["ours_on_contact"], extras["ours_on_lead"], extras["sales_on_lead"]} & set(
        tasks
    )
    # Everyone else is untouched.
    assert set(records(sandbox, "Lead")) == set(leads_before) - {extras["lead"]}
    after_tickets = {t["id"]: t for t in sandbox.state()["zendesk"]["tickets"]}
    for ticket in other_tickets:
        assert after_tickets[ticket["id"]]["subject"] == ticket["subject"]
        assert after_tickets[ticket["id"]]["description"] == ticket["description"]
    assert row_counts(url)["people"] == people_before - 1
    # Their ticket stays for the record: closed, neutral subject, words redacted.
    theirs = [t for t in after_tickets.values() if t["subject"] == NEUTRAL_SUBJECT]
    assert theirs and all(t["status"] == "closed" for t in theirs)
    assert all(set(c["body"]) <= {"\u2587", "\n", " "} for t in theirs for c in t["comments"])
    # The mention of them in someone else's words is gone, the words are not.
    with StateStore.open(url) as store:
        assert consent.is_suppressed(store, [target.key]) == {target.key}
        lines = erasure.audit_lines(store)
        assert store.engagements_of(["x:42"])["x:42"][0].text == "totally agree with [erased] here"
        # Others' letters stay, replayable, with the mention of them scrubbed (no trace
        # above); theirs is gone (checked: a letter mentioning them was deleted outright).
        kept = {d.record_key for d in store.dead_letters()}
        assert kept == {"x:mention:1", "x:mention:2"}
    assert len(lines) == 1 and lines[0].status == "completed"
    assert lines[0].outcome["crm"]["leads_deleted"] == 1
    assert lines[0].outcome["helpdesk"]["requesters_deleted"] == 1
    assert not target.pattern().search(json.dumps(asdict(lines[0]), ensure_ascii=False))

    # Again: nothing left to do, nothing written anywhere.
    before_writes, before_rows = writes(sandbox), row_counts(url)
    again = run_erase(sandbox, target)
    assert again["status"] == "already erased"
    assert writes(sandbox) == before_writes
    assert row_counts(url) == before_rows


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_anonymise_keeps_the_lead_without_the_person(sandbox: Sandbox) -> None:
    configure(sandbox, crm="anonymise")
    target = populate(sandbox)
    extras = add_crm_extras(sandbox, target)

    summary = run_erase(sandbox, target)

    assert summary["crm"]["leads_anonymised"] == 1
    lead = records(sandbox, "Lead")[extras["lead"]]
    assert lead["LastName"] == "Erased"
    assert lead["FirstName"] is None and lead["Social_Profile_Id__c"] is None
    tasks = records(sandbox, "Task")
    assert tasks[extras["sales_on_lead"]]["Subject"] == "Erased"
    assert tasks[extras["sales_on_lead"]]["WhoId"] == extras["lead"]
    assert not {extras["ours_on_lead"], extras["ours_on_contact"]} & set(tasks)
    assert extras["sales_on_contact"] in tasks
    assert remote_traces(sandbox, target, skip_ids={extras["contact"]}) == []
    assert store_traces(state_url(sandbox), target) == []


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_keep_policies_leave_the_crm_and_helpdesk_but_the_store_forgets(
    sandbox: Sandbox,
) -> None:
    configure(sandbox, crm="keep", helpdesk="keep")
    target = populate(sandbox)
    before = writes(sandbox)

    summary = run_erase(sandbox, target)

    assert summary["crm"]["status"] == "kept" and summary["helpdesk"]["status"] == "kept"
    assert writes(sandbox) == before
    assert remote_traces(sandbox, target)  # kept, by policy
    assert store_traces(state_url(sandbox), target) == []


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_helpdesk_delete_policy_and_closed_tickets_go_for_good(sandbox: Sandbox) -> None:
    configure(sandbox, helpdesk="delete")
    target = populate(sandbox)
    zendesk_url = sandbox.urls["zendesk"]
    session = requests.Session()
    session.verify, session.trust_env = str(sandbox.ca_path), False
    session.auth = ("agent@sandbox.example/token", "sandbox-zendesk-token")
    mine = [
        t
        for t in sandbox.state()["zendesk"]["tickets"]
        if re.search(re.escape(target.handle), t["subject"], re.IGNORECASE)
    ]
    assert mine
    for ticket in mine:  # solved, then closed by Zendesk's automation: no more edits
        session.put(
            f"{zendesk_url}/api/v2/tickets/{ticket['id']}",
            json={"ticket": {"status": "solved"}},
            timeout=10,
        ).raise_for_status()
    sandbox.close_solved_tickets()

    summary = run_erase(sandbox, target)

    assert summary["helpdesk"]["tickets_deleted"] == len(mine)
    state = sandbox.state()["zendesk"]
    assert not {t["id"] for t in mine} & {t["id"] for t in state["tickets"]}
    assert not state["deleted_tickets"]
    assert remote_traces(sandbox, target) == []


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_an_erase_interrupted_anywhere_is_finished_by_running_it_again(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = populate(sandbox)
    url = state_url(sandbox)
    from connectors.helpdesk import zendesk

    def crash(*_args: Any, **_kwargs: Any) -> bool:
        raise RuntimeError("killed")

    # Killed between the soft and the permanent deletion of the requester: CRM done,
    # tickets redacted, store untouched.
    monkeypatch.setattr(zendesk, "delete_user_for_good", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run_erase(sandbox, target)
    monkeypatch.undo()
    assert row_counts(url)["people"] > 0 and store_traces(url, target)
    # Killed in the store step: everything external done, the store still whole.
    monkeypatch.setattr(erasure, "erase_from_store", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run_erase(sandbox, target)
    monkeypatch.undo()
    assert store_traces(url, target)

    summary = run_erase(sandbox, target)

    assert summary["status"] == "completed"
    assert store_traces(url, target) == []
    assert remote_traces(sandbox, target) == []


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_cli_erase_prints_a_summary_without_personal_data(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    from socialcrm.cli import main

    target = populate(sandbox)
    config = str(sandbox.config_path)
    assert main(["erase", "--config", config, "--person", target.key, "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert dry["dry_run"] and dry["plan"]
    assert main(["erase", "--config", config, "--person", target.key]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(out)["status"] == "completed"
    assert not target.pattern().search(out)
    assert main(["erase", "--config", config, "--person", "@" + target.handle]) == 2
    assert main(["consent", "check", "--config", config, "--person", target.key]) == 0
    checked = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert checked["people"] == [{"person": target.key, "suppressed": "erased"}]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_an_api_error_is_raised_without_the_persons_data(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connectors.helpdesk import zendesk
    from connectors.http import ApiError

    target = populate(sandbox)

    def refuse(*_args: Any, **_kwargs: Any) -> bool:
        raise ApiError("zendesk", "DELETE /api/v2/users/:id", f"{target.name} <{target.key}>")

    monkeypatch.setattr(zendesk, "delete_user", refuse)
    with pytest.raises(ErasureIncomplete) as raised:
        run_erase(sandbox, target)
    assert "helpdesk" in str(raised.value)
    assert not target.pattern().search(str(raised.value))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_in_a_group_ticket_only_their_words_go(sandbox: Sandbox) -> None:
    populate(sandbox)
    state = sandbox.state()
    group = next(
        t
        for t in state["zendesk"]["tickets"]
        if t["external_id"] and "-" not in t["external_id"].rsplit(":", 1)[-1]
    )
    senders = {e["id"]: e["sender_id"] for e in state["x"]["dm_events"]}
    requester = next(u for u in state["zendesk"]["users"] if u["id"] == group["requester_id"])
    by_sender: dict[str, list[int]] = {}
    for comment in group["comments"]:
        ref = re.search(r"\[ref x:dm:(\d+)\]", comment["body"])
        if ref:
            by_sender.setdefault(senders[ref[1]], []).append(comment["id"])
    member = next(s for s in sorted(by_sender) if f"x:{s}" != requester["external_id"])
    user = next(u for u in state["x"]["users"] if u["id"] == member)
    target = Target(f"x:{member}", member, user["username"], user["name"])
    # The note that names their lead (when they asked sales) goes too; others' notes stay.
    their_leads = {
        lead["Id"]
        for lead in state["salesforce"]["Lead"]
        if lead.get("Social_Profile_Id__c") == target.key
    }
    their_note = {
        c["id"]
        for c in group["comments"]
        if any(f"[ref crm Lead/{lead}]" in c["body"] for lead in their_leads)
    }

    run_erase(sandbox, target)

    after = next(t for t in sandbox.state()["zendesk"]["tickets"] if t["id"] == group["id"])
    assert after["subject"] == group["subject"] and after["status"] == group["status"]
    for comment in after["comments"]:
        wholly = set(comment["body"]) <= {"\u2587", "\n", " "}
        assert wholly == (comment["id"] in [*by_sender[member], *their_note])
    users = {u["id"]: u for u in sandbox.state()["zendesk"]["users"]}
    assert users[requester["id"]]["active"] is True
    assert remote_traces(sandbox, target) == []
    assert store_traces(state_url(sandbox), target) == []


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_person_engaging_again_does_not_come_back_as_a_lead(sandbox: Sandbox) -> None:
    target = populate(sandbox)
    run_erase(sandbox, target)

    leads(LeadsRun(config=str(sandbox.config_path)))  # likes are read again every run

    ids = {lead.get("Social_Profile_Id__c") for lead in sandbox.state()["salesforce"]["Lead"]}
    assert target.key not in ids
    assert store_traces(state_url(sandbox), target) == []


# --- units: identifiers, the store step on both backends, Zendesk's privacy tools ---------


def test_needles_find_whole_ids_handles_and_names() -> None:
    person = erasure.parse_person(" x:123 ")
    needles = erasure.Needles(person)
    needles.add(handles=["@Ana_L"], names=["Ana  Lopez"], emails=["ana@example.com"])
    assert person.key == "x:123"
    for text in (
        "x:conversation:123-456",
        "x:like:99:123",
        "hi @ana_l!",
        "ANA LOPEZ",
        "ana@example.com",
    ):
        assert needles.found_in(text), text
    for text in ("4123", "x:1234", "ana_lopez", "banana lopezz", None):
        assert not needles.found_in(text), text
    assert needles.scrub("thanks @Ana_L and Ana Lopez") == "thanks [erased] and [erased]"
    with pytest.raises(erasure.ErasureError):
        erasure.parse_person("@ana_l")


def _profile(user_id: str, handle: str, name: str) -> SocialProfile:
    return SocialProfile(platform="x", user_id=user_id, handle=handle, display_name=name)


def test_the_store_step_removes_the_person_and_keeps_everyone_else(state_url: str) -> None:
    from datetime import UTC, datetime

    from socialcrm.config import Qualification
    from socialcrm.records import DirectMessage, SinkOutcome
    from socialcrm.routing import Decision

    ana, bob = _profile("5551", "ana_l", "Ana Lopez"), _profile("5552", "bob_k", "Bob Kent")
    brand = _profile("1000", "acme", "Acme")
    now = datetime(2026, 11, 20, tzinfo=UTC)

    def dm(id_: str, conversation: str, sender: SocialProfile, text: str) -> DirectMessage:
        return DirectMessage("x", id_, conversation, sender, text, now, sender is brand)

    support = Decision(route="support", rule=None, priority="normal")
    with StateStore.open(state_url) as store:
        store.ingest(
            "brand",
            [
                Engagement("x", "1", EngagementKind.MENTION, ana, now, text="@acme hi"),
                Engagement("x", "2", EngagementKind.MENTION, bob, now, text="cc @ana_l"),
            ],
            Qualification(),
        )
        inbox.ingest_messages(
            store,
            "brand",
            [
                (dm("11", "1000-5551", ana, "help, I'm Ana Lopez"), support),
                (dm("12", "1000-5551", brand, "Hi Ana Lopez!"), support),
                (dm("13", "777", ana, "group hello"), support),
                (dm("14", "777", bob, "hello Ana Lopez"), support),
            ],
        )
        store.record_deliveries(
            "Lead",
            [SinkOutcome("x:5551", "created", "00QA"), SinkOutcome("x:5552", "created", "00QB")],
        )
        store.record_deliveries(
            "zendesk:ticket",
            [
                SinkOutcome("x:conversation:1000-5551", "created", "7"),
                SinkOutcome("x:conversation:777", "created", "8"),
            ],
        )
        store.record_deliveries(
            "zendesk:comment",
            [
                SinkOutcome("x:dm:11", "created", "7"),
                SinkOutcome("x:dm:13", "created", "8"),
                SinkOutcome("x:dm:14", "created", "8"),
            ],
        )
        inbox.open_intent(store, "x:dm:13", "zendesk:comment", "comment", "x:dm:13")
        store.add_dead_letters("leads", [RecordProblem("x:5551", "delivery", "salesforce", "no")])
        footprint, needles = erasure.find_footprint(store, erasure.parse_person("x:5551"))
        assert footprint.conversation_keys == ["x:conversation:1000-5551"]
        assert footprint.shared_conversation_keys == ["x:conversation:777"]
        assert footprint.destination_ids("Lead") == ["00QA"]

        done = erasure.erase_from_store(
            store,
            footprint.person,
            needles,
            crm_policy="delete",
            helpdesk_policy="redact",
            outcome={"crm": {"leads_deleted": 1}, "helpdesk": {}},
        )

        assert done.audited and done.suppression == "added"
        assert done.counts["messages"] == 3 and done.counts["dead_letters"] == 1
        assert store.people(["x:5551"]) == [] and len(store.people(["x:5552"])) == 1
        assert store.deliveries(["x:5552"], "Lead")["x:5552"].destination_id == "00QB"
        assert set(store.deliveries(["x:conversation:777"], "zendesk:ticket")) == {
            "x:conversation:777"
        }
        assert set(store.deliveries(["x:dm:13", "x:dm:14"], "zendesk:comment")) == {"x:dm:14"}
        assert inbox.open_intents(store, ["x:dm:13"], "zendesk:comment") == set()
        assert store.engagements_of(["x:5552"])["x:5552"][0].text == "cc [erased]"
        left = {
            m.message_key: m.text
            for b in inbox.pending_conversations(store, batch_size=10)
            for ms in b.values()
            for m in ms
        }
        assert left == {"x:dm:14": "hello [erased]"}
        assert store.dead_letters() == []
        assert consent.suppression_reasons(store, ["x:5551"]) == {"x:5551": "erased"}
        (line,) = erasure.audit_lines(store, person_key="x:5551")
        assert line.outcome["store"]["people"] == 1 and "5551" not in json.dumps(asdict(line))
        with pytest.raises(erasure.ErasureError):
            erasure.erase_from_store(
                store,
                erasure.parse_person("x:5552"),
                erasure.Needles(erasure.parse_person("x:5552")),
                crm_policy="delete",
                helpdesk_policy="redact",
                outcome={"crm": {"note": "bob_k 5552"}},
            )

        again = erasure.erase_from_store(
            store,
            footprint.person,
            needles,
            crm_policy="delete",
            helpdesk_policy="redact",
            outcome={},
        )
        assert not again.audited and len(erasure.audit_lines(store)) == 1


@pytest.fixture(scope="module")
def bare_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    folder = tmp_path_factory.mktemp("sandbox-erase")
    box = start_sandbox(write_config=folder / "socialcrm.yaml")
    yield box
    box.stop()


def test_zendesk_privacy_tools_redact_and_delete_for_good(bare_sandbox: Sandbox) -> None:
    from connectors.helpdesk import zendesk
    from connectors.http import ApiError

    settings = load_settings(str(bare_sandbox.config_path))
    assert settings.helpdesk is not None
    client = zendesk.connect(settings.helpdesk)
    user_id = zendesk.upsert_requester(client, "x:909", "Ana Lopez")
    ticket, _ = zendesk.create_ticket(
        client,
        {
            "subject": "DM from @ana_l",
            "comment": {"body": "I'm Ana Lopez\nx.com/ana_l"},
            "requester_id": user_id,
        },
        idempotency_key="erase-units-1",
        key="k",
    )
    zendesk.add_comment(
        client, ticket["id"], {"body": "Dear Ana Lopez, done", "public": True}, key="k"
    )
    first, second = zendesk.ticket_comments(client, ticket["id"])

    whole = zendesk.redaction_markup(first["html_body"], None)
    partial = zendesk.redaction_markup(second["html_body"], ["Ana Lopez", "ana_l"])
    assert whole and partial
    with pytest.raises(ApiError) as refused:  # the markup must be the comment itself
        zendesk.redact_comment(client, ticket["id"], first["id"], whole.replace("I", "We"))
    assert refused.value.status == 422
    zendesk.redact_comment(client, ticket["id"], first["id"], whole)
    zendesk.redact_comment(client, ticket["id"], second["id"], partial)
    first, second = zendesk.ticket_comments(client, ticket["id"])
    assert set(first["body"]) == {"\u2587", "\n"}
    assert second["body"] == "Dear \u2587\u2587\u2587\u2587\u2587\u2587\u2587\u2587\u2587, done"
    assert zendesk.get_ticket(client, ticket["id"])["description"] == first["body"]
    assert zendesk.redaction_markup(first["html_body"], None) is None  # nothing left

    with pytest.raises(ApiError) as open_ticket:  # Zendesk keeps requesters of open tickets
        zendesk.delete_user(client, user_id)
    assert open_ticket.value.status == 422
    assert [t["id"] for t in zendesk.requested_tickets(client, user_id)] == [ticket["id"]]
    zendesk.update_ticket(client, ticket["id"], {"status": "closed", "external_id": None})
    with pytest.raises(ApiError):  # closed: no edit but redaction
        zendesk.update_ticket(client, ticket["id"], {"subject": "x"})
    assert zendesk.delete_user(client, user_id) is True
    assert zendesk.users_by_external_id(client, "x:909") == []
    assert zendesk.delete_user(client, user_id) is False
    assert zendesk.delete_user_for_good(client, user_id) is True
    assert zendesk.delete_user_for_good(client, user_id) is False
    scrubbed = [u for u in bare_sandbox.state()["zendesk"]["users"] if u["id"] == user_id]
    assert scrubbed[0]["name"] == "Permanently Deleted User" and scrubbed[0]["email"] is None
    assert scrubbed[0]["external_id"] is None and scrubbed[0]["active"] is False
    assert zendesk.requested_tickets(client, user_id) == []

    assert zendesk.delete_ticket_for_good(client, ticket["id"]) is True
    assert zendesk.find_ticket(client, ticket["id"]) is None
    assert zendesk.delete_ticket_for_good(client, ticket["id"]) is False
    state = bare_sandbox.state()["zendesk"]
    assert ticket["id"] not in {t["id"] for t in state["tickets"] + state["deleted_tickets"]}
