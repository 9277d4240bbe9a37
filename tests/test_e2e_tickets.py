"""End to end: direct messages become Zendesk tickets, against the sandbox, in Prefect.

Ground truth is the sandbox's own DM events; tickets and comments are read back from
its Zendesk simulator. Every comment carries ``[ref x:dm:<id>]``, which is how a
message is found in the helpdesk.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from truth import bots

from flows.tickets import TicketsRun, tickets
from sandbox.server import Sandbox, start_sandbox
from socialcrm.routing import load_rules, route

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
RULES = load_rules(Path(__file__).resolve().parents[1] / "mappings" / "routing.yaml")
REF = re.compile(r"\[ref x:dm:(\d+)\]")


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = start_sandbox(seed=5, write_config=tmp_path / "socialcrm.yaml", workdir=tmp_path)
    yield box
    box.stop()


def run(sandbox: Sandbox, **params: Any) -> dict[str, Any]:
    return tickets(TicketsRun(config=str(sandbox.config_path), **params))


def customer_messages(sandbox: Sandbox) -> list[dict[str, Any]]:
    return [
        e
        for e in sandbox.state()["x"]["dm_events"]
        if e["event_type"] == "MessageCreate" and not e["from_brand"]
    ]


def expected(sandbox: Sandbox) -> tuple[dict[str, set[str]], set[str], set[str]]:
    """Conversation -> message ids that must be comments; spam ids; brand ids."""
    by_conversation: dict[str, set[str]] = defaultdict(set)
    spam: set[str] = set()
    for event in customer_messages(sandbox):
        if route(RULES, event["text"]).route == "spam":
            spam.add(event["id"])
        else:
            by_conversation[event["dm_conversation_id"]].add(event["id"])
    brand = {e["id"] for e in sandbox.state()["x"]["dm_events"] if e["from_brand"]}
    return dict(by_conversation), spam, brand


def helpdesk(sandbox: Sandbox) -> dict[str, list[dict[str, Any]]]:
    """external_id -> tickets holding it (must be exactly one each)."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ticket in sandbox.state()["zendesk"]["tickets"]:
        found[ticket["external_id"]].append(ticket)
    return dict(found)


def refs(ticket: dict[str, Any]) -> list[str]:
    return [m for c in ticket["comments"] for m in REF.findall(c.get("body") or "")]


def zendesk_writes(sandbox: Sandbox) -> int:
    return int(sandbox.state()["writes"].get("zendesk", 0))


def test_one_ticket_per_conversation_and_every_customer_message_exactly_once(
    sandbox: Sandbox,
) -> None:
    summary = run(sandbox)
    conversations, spam, brand = expected(sandbox)
    held = helpdesk(sandbox)
    assert {key.split(":", 2)[2] for key in held} == set(conversations)
    assert all(len(found) == 1 for found in held.values()), "two tickets for one conversation"
    everything: Counter[str] = Counter()
    for key, (ticket,) in held.items():
        ids = refs(ticket)
        everything.update(ids)
        assert set(ids) == conversations[key.split(":", 2)[2]]
    assert all(n == 1 for n in everything.values()), "a message was added twice"
    # Threading: comments in the order the customer wrote them.
    sent = {e["id"]: (e["created_at"], int(e["id"])) for e in customer_messages(sandbox)}
    for (ticket,) in held.values():
        ids = refs(ticket)
        assert ids == sorted(ids, key=lambda i: sent[i])
    # Identity: one requester per person, found by the social id, on every ticket.
    users = {u["id"]: u for u in sandbox.state()["zendesk"]["users"]}
    senders: dict[str, str] = {}  # the first customer to write opens the ticket
    for event in sorted(customer_messages(sandbox), key=lambda e: sent[e["id"]]):
        if route(RULES, event["text"]).route != "spam":
            senders.setdefault(event["dm_conversation_id"], event["sender_id"])
    requester_of: dict[str, set[int]] = defaultdict(set)
    for key, (ticket,) in held.items():
        sender = senders[key.split(":", 2)[2]]
        requester = users[ticket["requester_id"]]
        assert requester["external_id"] == f"x:{sender}"
        requester_of[sender].add(ticket["requester_id"])
    assert all(len(ids) == 1 for ids in requester_of.values())
    external_ids = [u["external_id"] for u in users.values() if u.get("external_id")]
    assert len(external_ids) == len(set(external_ids))
    assert not (set(everything) & brand), "a brand message became a customer comment"
    assert not (set(everything) & spam)
    assert summary["tickets_created"] == len(conversations)


def test_second_run_makes_no_zendesk_write(sandbox: Sandbox) -> None:
    run(sandbox)
    sandbox.reset_calls()
    again = run(sandbox)
    assert again["new_messages"] == 0
    assert zendesk_writes(sandbox) == 0
    assert again["api_calls"]["zendesk"]["writes"] == 0


def test_runs_renew_the_dm_token_and_keep_the_rotated_refresh_token(
    sandbox: Sandbox,
) -> None:
    """A user-context token lives 2 hours: scheduled runs renew it with the refresh token,
    which X rotates, so the next run (any worker) must go on from the newest one."""
    import time

    from sandbox.x_dm import CLIENT_ID, REFRESH_TOKEN

    assert sandbox.config_path is not None
    data = yaml.safe_load(sandbox.config_path.read_text())
    account = data["accounts"][0]
    del account["dm_token"]
    account["dm_refresh_token"] = "${SCRM_TEST_X_REFRESH:-" + REFRESH_TOKEN + "}"
    account["dm_client_id"] = CLIENT_ID
    sandbox.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    sandbox.set_options(x_user_token_ttl_s=1.0)  # expires within a run: renewed on the 401

    def renewals() -> int:
        return int(sandbox.state()["calls"]["x"].get("POST /2/oauth2/token", 0))

    first = run(sandbox)
    assert first["tickets_created"] > 0 and renewals() >= 1
    time.sleep(1.2)
    done = renewals()
    sandbox.generate(dms=3)
    second = run(sandbox)  # the configured refresh token is spent: only the stored one works
    assert second["status"] == "completed" and second["new_messages"] == 3
    assert renewals() > done
    from socialcrm.config import load_settings
    from socialcrm.state import StateStore

    url = load_settings(sandbox.config_path).state_url()
    with StateStore.open(url) as store:
        stored = store.stored_token(f"x-dm:{account['name']}")
    assert stored is not None and stored.refresh_token
    shown = json.dumps([first, second])
    assert stored.access_token not in shown and stored.refresh_token not in shown


def test_a_new_message_reopens_a_solved_ticket_with_one_comment(sandbox: Sandbox) -> None:
    run(sandbox)
    urls = sandbox.urls["zendesk"]
    session = requests.Session()
    session.verify = str(sandbox.ca_path)
    session.trust_env = False
    session.auth = ("agent@sandbox.example/token", "sandbox-zendesk-token")
    before = helpdesk(sandbox)
    for (ticket,) in before.values():
        answer = session.put(
            f"{urls}/api/v2/tickets/{ticket['id']}",
            json={"ticket": {"status": "solved"}},
            timeout=10,
        )
        assert answer.status_code == 200
    known = {e["id"] for e in customer_messages(sandbox)}
    sandbox.generate(dms=12)
    fresh = [e for e in customer_messages(sandbox) if e["id"] not in known]
    fresh = [e for e in fresh if route(RULES, e["text"]).route != "spam"]
    reopened_conversations = {e["dm_conversation_id"] for e in fresh} & {
        key.split(":", 2)[2] for key in before
    }
    assert reopened_conversations, "the generator should write into existing conversations"

    summary = run(sandbox)

    after = helpdesk(sandbox)
    for key, (ticket,) in after.items():
        conversation = key.split(":", 2)[2]
        new_ids = {e["id"] for e in fresh if e["dm_conversation_id"] == conversation}
        if key in before:
            old_refs = refs(before[key][0])
            assert refs(ticket)[: len(old_refs)] == old_refs
            assert set(refs(ticket)[len(old_refs) :]) == new_ids
            assert ticket["status"] == ("open" if new_ids else "solved")
    assert summary["reopened"] == len(reopened_conversations)


def test_sales_dm_gives_a_lead_and_spam_gives_nothing(sandbox: Sandbox) -> None:
    summary = run(sandbox)
    messages = customer_messages(sandbox)
    sales_senders = {
        f"x:{e['sender_id']}" for e in messages if route(RULES, e["text"]).route == "sales"
    } - bots(sandbox.state())  # a bot asking for prices is still no lead
    spam_only = {
        f"x:{e['sender_id']}" for e in messages if route(RULES, e["text"]).route == "spam"
    } - {f"x:{e['sender_id']}" for e in messages if route(RULES, e["text"]).route != "spam"}
    assert sales_senders and spam_only
    leads = {lead["Social_Profile_Id__c"]: lead for lead in sandbox.state()["salesforce"]["Lead"]}
    assert sales_senders <= set(leads)
    assert not (spam_only & set(leads))
    for key in sales_senders:
        assert "message" in leads[key]["Description"]
    requesters = {u.get("external_id") for u in sandbox.state()["zendesk"]["users"]}
    assert not (spam_only & requesters)
    assert summary["by_route"].get("spam", 0) >= len(spam_only)
    assert summary["leads_created"] == len(sales_senders)


def test_routing_agrees_with_what_the_senders_meant(sandbox: Sandbox) -> None:
    # Only messages that make sense on their own: "Any update?" is support only in its
    # thread, and its thread already has a ticket.
    by_topic: dict[str, list[str]] = defaultdict(list)
    for event in customer_messages(sandbox):
        if event["standalone"]:
            by_topic[event["topic"]].append(route(RULES, event["text"]).route)
    for topic in ("support", "sales", "spam"):
        routes = by_topic[topic]
        agreed = sum(1 for r in routes if r == topic) / len(routes)
        assert agreed >= 0.9, f"{topic}: only {agreed:.0%} routed as meant: {Counter(routes)}"
    assert "spam" not in by_topic["other"], "a harmless message was thrown away as spam"


def test_zendesk_429s_are_waited_out_and_change_nothing(sandbox: Sandbox) -> None:
    sandbox.set_options(zendesk_429_every=25)
    summary = run(sandbox)
    conversations, _, _ = expected(sandbox)
    held = helpdesk(sandbox)
    assert len(held) == len(conversations) == summary["tickets_created"]
    assert all(len(found) == 1 for found in held.values())
    total = Counter(ref for (ticket,) in held.values() for ref in refs(ticket))
    assert set(total) == set().union(*conversations.values())
    assert all(n == 1 for n in total.values())


def test_mentions_asking_for_help_become_tickets_only_when_switched_on(
    sandbox: Sandbox,
) -> None:
    import yaml

    from flows.leads import LeadsRun, leads

    config = str(sandbox.config_path)
    leads(LeadsRun(config=config))
    run(sandbox)
    assert not [k for k in helpdesk(sandbox) if ":mention-" in k], "off by default"

    assert sandbox.config_path is not None
    data = yaml.safe_load(sandbox.config_path.read_text())
    data["routing"] = {"tickets_from_mentions": True}
    sandbox.config_path.write_text(yaml.safe_dump(data))
    known = {e["id"] for e in sandbox.state()["x"]["engagements"]}
    sandbox.generate(engagements=400)
    leads(LeadsRun(config=config))
    run(sandbox)

    mentions = [e for e in sandbox.state()["x"]["engagements"] if e["kind"] in ("mention", "reply")]
    asking = {e["id"] for e in mentions if route(RULES, e["text"], "mention").route == "support"}
    held = {k.split("mention-", 1)[1] for k in helpdesk(sandbox) if ":mention-" in k}
    new_asking = {i for i in asking if i not in known}
    assert new_asking, "the generator should write some mentions asking for help"
    assert held == new_asking
    for key, (ticket, *_) in helpdesk(sandbox).items():
        # Agents tell a public request (their answer is public too) from a private one.
        assert ("mention" if ":mention-" in key else "dm") in ticket["tags"], key
        assert ("dm" if ":mention-" in key else "mention") not in ticket["tags"], key


def test_a_sales_dm_links_its_ticket_and_the_crm_record_both_ways(tmp_path: Path) -> None:
    """Issue 7, item 7: ticket link on the lead (or the Contact's Task), CRM link on the
    ticket, each written once. Seed 11's org already knows two of the sales senders: one
    as a Lead by external id, one as a Contact by handle."""
    box = start_sandbox(
        seed=11, write_config=tmp_path / "socialcrm.yaml", workdir=tmp_path, crm_seed=True
    )
    try:
        summary = run(box)
        state = box.state()
        zendesk_url = yaml.safe_load(box.config_path.read_text())["helpdesk"]["base_url"]
        # Each sales sender's latest conversation with a sales message is the one linked.
        latest: dict[str, tuple[str, str]] = {}
        for event in customer_messages(box):
            if route(RULES, event["text"]).route == "sales":
                person = f"x:{event['sender_id']}"
                when = (event["created_at"], event["dm_conversation_id"])
                latest[person] = max(latest.get(person, when), when)
        tickets = {key.split(":", 2)[2]: found[0] for key, found in helpdesk(box).items()}
        ticket_of = {person: tickets[conv] for person, (_, conv) in latest.items()}
        sf = state["salesforce"]
        leads = {lead["Social_Profile_Id__c"]: lead for lead in sf["Lead"]}
        truth = box.crm_truth()
        contacts = {
            key: entry["id"]
            for key, entry in truth.items()
            if key in latest and entry.get("object") == "Contact"
        }
        assert contacts, "the seed has a sales sender who already is a Contact"
        linked = 0
        per_ticket: Counter[int] = Counter()
        for person, ticket in ticket_of.items():
            url = f"{zendesk_url.rstrip('/')}/agent/tickets/{ticket['id']}"
            notes = [c for c in ticket["comments"] if not c.get("public", True)]
            if person in contacts:
                tasks = [t for t in sf["Task"] if t.get("WhoId") == contacts[person]]
                assert [t.get("Helpdesk_Ticket_URL__c") for t in tasks] == [url]
                target = f"/lightning/r/Contact/{contacts[person]}/view"
                assert person not in leads, "a Contact got a lead"
            elif person in leads:
                assert leads[person]["Helpdesk_Ticket_URL__c"] == url
                target = f"/lightning/r/Lead/{leads[person]['Id']}/view"
            else:
                continue  # a bot, an ambiguous match: no record, no note (counted below)
            mine = [note for note in notes if target in note["body"]]
            assert len(mine) == 1, f"{person}: {len(mine)} CRM notes on ticket {ticket['id']}"
            handle = next(u["username"] for u in state["x"]["users"] if f"x:{u['id']}" == person)
            assert handle.lower() not in mine[0]["body"].lower(), "the note holds no personal data"
            per_ticket[ticket["id"]] += 1
            linked += 1
        # A group conversation gets a note per sales sender, and nothing more.
        for ticket in tickets.values():
            notes = [c for c in ticket["comments"] if not c.get("public", True)]
            assert len(notes) == per_ticket[ticket["id"]]
        assert linked >= len(contacts) + 1 and summary["crm_links"] == linked
        assert truth and any(truth.get(p, {}).get("matched_by") == "external_id" for p in latest), (
            "the seed has a sales sender who already is our Lead"
        )

        box.reset_calls()
        again = run(box)
        assert again["crm_links"] == 0 and zendesk_writes(box) == 0
        assert int(box.state()["writes"].get("salesforce", 0)) == 0
    finally:
        box.stop()


def test_a_dm_backlog_deeper_than_the_rate_limit_is_read_over_several_runs(
    sandbox: Sandbox,
) -> None:
    """Each run may read 4 pages of 5 before X's window is spent (the wait is longer than
    allowed). The next run goes on from the page where the last one stopped, until all
    is read; meanwhile the conversations read wait, so each ticket opens with its first
    message and the comments keep their order (checked: before, every run started again
    from the newest page and stopped at the same depth, for ever)."""
    assert sandbox.config_path is not None
    data = yaml.safe_load(sandbox.config_path.read_text())
    data["accounts"][0].update(page_size=5, max_rate_limit_wait_seconds=1)
    sandbox.config_path.write_text(yaml.safe_dump(data))
    pages = -(-len(sandbox.state()["x"]["dm_events"]) // 5)
    statuses = []
    for _ in range(pages // 4 + 3):
        sandbox.set_options(rate_limits={"GET /2/dm_events": 4})  # a new window per run
        summary = run(sandbox)
        statuses.append(summary["status"])
        if summary["status"] == "completed":
            break
        assert summary["status"].startswith("quota:"), summary["status"]
        assert summary["fetched"] > 0 and summary["waiting"] > 0
        assert summary["tickets_created"] == summary["comments_added"] == 0
    assert statuses[-1] == "completed" and len(statuses) > 2, statuses
    conversations, _, _ = expected(sandbox)
    held = helpdesk(sandbox)
    assert {key.split(":", 2)[2] for key in held} == set(conversations)
    assert all(len(found) == 1 for found in held.values()), "two tickets for one conversation"
    posted = Counter(ref for (ticket,) in held.values() for ref in refs(ticket))
    assert set(posted) == set().union(*conversations.values())
    assert all(n == 1 for n in posted.values()), "a message was added twice"
    sent = {e["id"]: (e["created_at"], int(e["id"])) for e in customer_messages(sandbox)}
    for (ticket,) in held.values():
        assert refs(ticket) == sorted(refs(ticket), key=lambda i: sent[i]), "out of order"
    sandbox.set_options(rate_limits=None)
    assert run(sandbox)["new_messages"] == 0


def test_a_walk_whose_page_x_refuses_starts_over_from_the_newest(sandbox: Sandbox) -> None:
    """The page a stopped run would go on from is refused (400, an expired token): the
    run reads from the newest DMs instead and delivers everything."""
    from connectors.social import x_dm
    from socialcrm.config import load_settings
    from socialcrm.state import StateStore

    assert sandbox.config_path is not None
    settings = load_settings(str(sandbox.config_path))
    stale = x_dm.DmRequest(since_id=None, pagination_token="not-a-token", newest_id="1")
    with StateStore.open(settings.state_url()) as store, store.transaction() as connection:
        store._set_cursor(connection, settings.account(None).name, x_dm.WALK, stale.walk_cursor())
    summary = run(sandbox)
    assert summary["status"] == "completed"
    conversations, _, _ = expected(sandbox)
    assert summary["tickets_created"] == len(conversations)


def test_an_unreadable_walk_cursor_starts_from_the_stored_cursor() -> None:
    from connectors.social import x_dm

    assert x_dm.resume_request("42", "{not json") == x_dm.DmRequest(since_id="42")
    assert x_dm.resume_request("42", "") == x_dm.DmRequest(since_id="42")
    walk = x_dm.DmRequest(since_id="42", pagination_token="t", newest_id="99").walk_cursor()
    assert x_dm.resume_request("42", walk) == x_dm.DmRequest("42", "t", "99")
