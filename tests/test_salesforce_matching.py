"""Matching people to records already in the org, and the writes around them: duplicate
rules, Tasks, campaign members, updates, deletes, assignment on create only."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.crm import salesforce
from connectors.crm.salesforce import Match, MatchKey, MatchRules, SalesforceConnection
from connectors.http import ApiError, RetryPolicy
from sandbox import soql
from sandbox.server import Sandbox, start_sandbox
from sandbox.sf_seed import CASES, CrmSeed
from socialcrm.config import SalesforceSettings

EXT = "Social_Profile_Id__c"
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "api-samples"
INJECTIONS = [
    "x' OR Name LIKE '%",
    "a\\' OR Id != null OR Social_Handle__c = '",
    "back\\slash\\",
    "%",
    "_",
    "' OR ''='",
    'quote"double',
    "new\nline",
]


# --- units: query building, normalising, parsing ----------------------------------------


def test_long_in_lists_are_split_into_queries_under_the_uri_budget() -> None:
    values = [f"x:{n:012d}" for n in range(3000)]
    handles = [f"handle_{n}" for n in range(3000)]
    queries = salesforce.in_queries(
        "Lead", ["Id", EXT], [(EXT, values), ("Social_Handle__c", handles)]
    )
    assert len(queries) > 2
    seen: dict[str, set[str]] = {EXT: set(), "Social_Handle__c": set()}
    for text in queries:
        assert len(quote_plus(text)) <= salesforce.SOQL_URI_BUDGET
        assert len(text) < 100_000
        parsed = soql.parse(text)  # well-formed for the sandbox's strict parser
        assert parsed.sobject == "Lead"
        for comparison in soql.fields_in(parsed.where):
            assert comparison.op == "in"
            seen[comparison.field].update(v.value for v in comparison.values)
    assert seen == {EXT: set(values), "Social_Handle__c": set(handles)}
    # A small list is one query; a tighter budget splits it; no values, no query.
    assert len(salesforce.in_queries("Lead", ["Id"], [(EXT, values[:10])])) == 1
    assert len(salesforce.in_queries("Lead", ["Id"], [(EXT, values[:10])], budget=300)) > 1
    assert salesforce.in_queries("Lead", ["Id"], [(EXT, [])]) == []


def test_in_lists_fill_each_query_to_its_budget_and_no_further() -> None:
    """The size arithmetic is exact: hostile values (whose URL encoding is longer than
    their text) still fit, and every query but the last is full."""
    values = [f"{INJECTIONS[n % len(INJECTIONS)]}{n}" for n in range(400)]
    handles = [f"h{n}é%" for n in range(400)]
    conditions = [(EXT, values), ("Social_Handle__c", handles)]
    budget = 2_000
    queries = salesforce.in_queries("Lead", ["Id"], conditions, budget=budget)
    sizes = [len(quote_plus(text)) for text in queries]
    assert max(sizes) <= budget
    longest = max(len(quote_plus(salesforce.soql_quote(v))) for v in values + handles)
    assert all(size > budget - longest - 60 for size in sizes[:-1])


def test_values_stay_data_inside_the_in_lists() -> None:
    (text,) = salesforce.in_queries("Contact", ["Id"], [("Social_Handle__c", INJECTIONS)])
    parsed = soql.parse(text)
    (comparison,) = soql.fields_in(parsed.where)
    assert comparison.field == "Social_Handle__c" and comparison.op == "in"
    assert [v.value for v in comparison.values] == INJECTIONS


def test_keys_normalise_the_way_records_are_compared() -> None:
    person = MatchKey(
        "x:1",
        email="  Ana.Lopez@Example.COM ",
        handle=" @Ana_Lopez",
        profile_url="http://www.twitter.com/Ana_Lopez/",
    )
    assert person.value("external_id") == "x:1"
    assert person.value("email") == "ana.lopez@example.com"
    assert person.value("handle") == "ana_lopez"
    assert person.value("profile_url") == "x.com/ana_lopez"
    assert MatchKey("x:1", external_id="custom").value("external_id") == "custom"
    assert MatchKey("x:1", email="not an email", handle="@").value("email") is None
    assert MatchKey("x:1", handle="@").value("handle") is None


def test_a_write_names_the_people_whose_earlier_lookup_it_can_have_changed() -> None:
    """A batch looked up while the batch before was written is looked up again where that
    write sent one of its people's values (in any spelling that matches) or wrote to the
    record, or a candidate, they matched; nobody else."""
    rules = MatchRules()
    written = salesforce.Written.of(
        [
            {"Social_Profile_Id__c": "x:1", "Email": " Ann@Example.COM ", "LastName": "Ray"},
            {"Social_Profile_Id__c": "x:2", "Social_Handle__c": "@Bob"},
            {"Social_Profile_URL__c": "https://twitter.com/carol/"},
        ],
        ids=["00Q000000000001AAA"],
        rules=rules,
    )
    same_email = MatchKey("x:9", email="ann@example.com")
    same_handle = MatchKey("x:8", handle="bob")
    same_url = MatchKey("x:7", profile_url="https://x.com/Carol")
    stranger = MatchKey("x:6", email="zoe@example.com", handle="zoe")
    assert written.may_change(same_email, None)
    assert written.may_change(same_handle, None)
    assert written.may_change(same_url, None)
    assert not written.may_change(stranger, None)
    on_written = Match("Lead", "00Q000000000001AAA", "handle")
    elsewhere = Match("Lead", "00Q000000000002AAA", "handle")
    tie = Match("Lead", None, "email", candidates=("00Q000000000001AAA", "00Q000000000003AAA"))
    assert written.may_change(stranger, on_written)
    assert written.may_change(stranger, tie)
    assert not written.may_change(stranger, elsewhere)
    # A write that failed part-way may have changed anything: everyone is looked up again.
    assert salesforce.Written.ANYTHING.may_change(stranger, None)


def test_duplicates_detected_becomes_a_duplicate_outcome_with_the_matched_id() -> None:
    path = SAMPLES / "sf_error_duplicates_detected.json"
    if not path.exists():
        pytest.skip("shared samples not present")
    sample = json.loads(path.read_text())
    (error,) = sample["body"]
    per_record = {
        "statusCode": error["errorCode"],
        "message": error["message"],
        "fields": [],
        "duplicateResult": error["duplicateResult"],
    }
    results = [{"success": False, "errors": [per_record]}, {"success": True, "id": "00Q1"}]
    dup, ok = salesforce.parse_collection_results(results, ["x:1", "x:2"], "Lead")
    assert (dup.status, dup.destination_id, dup.retryable) == (
        "duplicate",
        "0038M0000016Wv8QAE",
        False,
    )
    assert dup.problems[0].reason.startswith("DUPLICATES_DETECTED: ")
    assert salesforce.duplicate_matches(dup) == [("Contact", "0038M0000016Wv8QAE")]
    assert (ok.status, ok.destination_id) == ("updated", "00Q1")
    # Mixed with another error it is a plain failure.
    mixed = [{"success": False, "errors": [per_record, {"statusCode": "STRING_TOO_LONG"}]}]
    assert salesforce.parse_collection_results(mixed, ["x:3"], "Lead")[0].status == "failed"


# --- against a seeded org -------------------------------------------------------------------


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = start_sandbox(workdir=tmp_path_factory.mktemp("sf-matching"), crm_seed=True)
    yield box
    box.stop()


@pytest.fixture
def box(org: Sandbox) -> Iterator[Sandbox]:
    org.set_options(faults={"salesforce": {"rate": 0}}, sf_duplicate_rules=True)
    org.reset_calls()
    yield org
    org.set_options(sf_duplicate_rules=True)


def connect(box: Sandbox, **crm: Any) -> SalesforceConnection:
    settings = SalesforceSettings.model_validate(
        {
            "login_url": box.urls["salesforce"],
            "auth": {
                "method": "client_credentials",
                "client_id": "${SF_MATCH_TEST_ID:-sandbox-client-id}",
                "client_secret": "${SF_MATCH_TEST_SECRET:-sandbox-client-secret}",
            },
            "ca_bundle": Path(box.ca_path),
            **crm,
        }
    )
    return salesforce.connect(settings, policy=RetryPolicy(sleep=lambda s: time.sleep(min(s, 0.2))))


def api(box: Sandbox) -> requests.Session:
    http = requests.Session()
    http.verify = str(box.ca_path)
    http.trust_env = False
    token = http.post(
        f"{box.urls['salesforce']}/services/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "sandbox-client-id",
            "client_secret": "sandbox-client-secret",
        },
        timeout=10,
    ).json()["access_token"]
    http.headers["Authorization"] = f"Bearer {token}"
    return http


def keys_of(truth: dict[str, Any]) -> list[MatchKey]:
    return [
        MatchKey(key, email=t["email"], handle=t["handle"], profile_url=t["profile_url"])
        for key, t in truth.items()
    ]


def expected(entry: dict[str, Any]) -> Match | None:
    if entry["object"] is None:
        return None
    if entry["ambiguous"]:
        return Match(
            entry["object"], None, entry["matched_by"], candidates=tuple(entry["ambiguous"])
        )
    return Match(
        entry["object"],
        entry["id"],
        entry["matched_by"],
        owner_id=entry["owner_id"],
        is_converted=entry["is_converted"],
        converted_contact_id=entry["converted_contact_id"],
    )


def records(box: Sandbox, sobject: str) -> list[dict[str, Any]]:
    return list(box.state()["salesforce"][sobject])


def lead(ext: str, **fields: Any) -> dict[str, Any]:
    return {EXT: ext, "LastName": "Doe", "Company": "Acme", **fields}


@pytest.mark.slow
def test_every_seeded_person_matches_exactly_as_seeded(box: Sandbox) -> None:
    truth = box.crm_truth()
    assert {t["case"] for t in truth.values()} == set(CASES)
    conn = connect(box)
    strangers = [MatchKey(f"x:stranger-{n}", handle=f"stranger_{n}") for n in range(5)]
    found = salesforce.find_matches(conn, [*keys_of(truth), *strangers])
    assert found == {k: m for k, t in truth.items() if (m := expected(t)) is not None}
    by_case = {t["case"]: found.get(k) for k, t in truth.items()}
    for key in ("external_id", "email", "handle", "profile_url"):
        match = by_case[key]
        assert match is not None and match.matched_by == key
    # Contact beats Lead: our own Lead by external id loses to the customer's Contact.
    winner = by_case["contact_over_lead"]
    assert winner is not None and (winner.object, winner.matched_by) == ("Contact", "handle")
    ambiguous = by_case["ambiguous"]
    assert ambiguous is not None and ambiguous.ambiguous and len(ambiguous.candidates) == 2
    converted = by_case["converted"]
    assert converted is not None and converted.is_converted and converted.converted_contact_id
    assert by_case["reused_handle"] is None
    # One query per object, both in one call, reads only.
    log = box.soql_log()[-2:]
    assert [soql.parse(q).sobject for q in log] == ["Contact", "Lead"]
    assert conn.reads == 3  # two describes and one composite call
    assert conn.writes == 0 and box.state()["writes"]["salesforce"] == 0


@pytest.mark.slow
def test_rules_choose_the_keys_and_a_missing_field_is_skipped(box: Sandbox) -> None:
    truth = box.crm_truth()
    conn = connect(box)
    only_ids = salesforce.find_matches(
        conn, keys_of(truth), MatchRules(keys=frozenset({"external_id"}))
    )
    assert {m.matched_by for m in only_ids.values()} == {"external_id"}
    assert {truth[k]["case"] for k in only_ids} == {"external_id", "converted", "contact_over_lead"}
    # contact_over_lead: without handles, only our Lead is left to find.
    assert all(
        m.object == "Lead" for k, m in only_ids.items() if truth[k]["case"] == "contact_over_lead"
    )
    missing = MatchRules(profile_url_field="Nope__c")
    found = salesforce.find_matches(conn, keys_of(truth), missing)
    assert not any(truth[k]["case"] == "profile_url" for k in found)
    assert sum(truth[k]["case"] == "handle" for k in found) == CrmSeed().handle
    assert all("Nope__c" not in q for q in box.soql_log())
    contacts_only = salesforce.find_matches(conn, keys_of(truth), MatchRules(objects=("Contact",)))
    assert {m.object for m in contacts_only.values()} == {"Contact"}


@pytest.mark.slow
def test_injection_text_matches_nothing_and_every_query_is_well_formed(box: Sandbox) -> None:
    conn = connect(box)
    salesforce.upsert(conn, "Lead", EXT, [lead("x:inj-owner", Social_Handle__c="victim")], ["k"])
    before = len(box.soql_log())
    people = [
        MatchKey(f"x:inj-{n}", email=f"{text}@example.com", handle=text, profile_url=text)
        for n, text in enumerate(INJECTIONS)
    ]
    assert salesforce.find_matches(conn, people) == {}
    sent = box.soql_log()[before:]
    assert len(sent) == 2
    for text in sent:
        parsed = soql.parse(text)
        handles = [
            v.value
            for c in soql.fields_in(parsed.where)
            if c.field == "Social_Handle__c"
            for v in c.values
        ]
        assert {h.lstrip("@") for h in handles} >= {
            t.strip().lstrip("@").casefold() for t in INJECTIONS if t.strip().lstrip("@")
        }
    # And a real handle next to them still matches.
    found = salesforce.find_matches(conn, [*people, MatchKey("x:inj-owner", handle="@VICTIM")])
    assert list(found) == ["x:inj-owner"] and found["x:inj-owner"].matched_by == "external_id"


@pytest.mark.slow
def test_thousands_of_people_take_a_composite_call_per_five_queries_of_any_object(
    box: Sandbox,
) -> None:
    truth = box.crm_truth()
    conn = connect(box)
    crowd = [
        MatchKey(
            f"x:{10**17 + n}",
            handle=f"crowd_member_{n}",
            profile_url=f"https://x.com/crowd_member_{n}",
        )
        for n in range(3000)
    ]
    before = len(box.soql_log())
    found = salesforce.find_matches(conn, [*crowd, *keys_of(truth)])
    assert found == {k: m for k, t in truth.items() if (m := expected(t)) is not None}
    sent = box.soql_log()[before:]
    objects = [soql.parse(q).sobject for q in sent]
    # Too long for a URI (16,384 bytes), within SOQL's 100,000 characters, five to a
    # composite call: 3,000 people (with the spellings of their handles and profile URLs)
    # took dozens of GET queries per object before; now a handful, Contacts' and Leads'
    # together (one round trip for both objects when they fit five).
    path = "/services/data/v60.0/query?q="
    assert sum(len(path) + len(quote_plus(q)) > 16_384 for q in sent) >= len(sent) - 2
    assert all(len(q) <= 100_000 for q in sent)
    assert set(objects) == {"Contact", "Lead"}
    calls = -(-len(sent) // 5)
    assert calls <= sum(-(-objects.count(o) // 5) for o in ("Contact", "Lead")) <= 4
    assert conn.reads == calls + 2  # and the two describes
    held = box.state()["calls"]["salesforce"]
    assert held.get("POST /services/data/v60.0/composite") == calls
    assert not any(k.endswith("/query") for k in held)


@pytest.mark.slow
def test_duplicate_rules_refuse_a_new_lead_with_a_known_email(box: Sandbox) -> None:
    truth = box.crm_truth()
    emailed = [t for t in truth.values() if t["case"] == "email"]
    conn = connect(box)
    batch = [lead(f"x:dup-{n}", Email=t["email"].upper()) for n, t in enumerate(emailed)] + [
        lead("x:dup-fresh", Email="fresh.person@example.com")
    ]
    keys = [r[EXT] for r in batch]
    outcomes = salesforce.upsert(conn, "Lead", EXT, batch, keys)
    for outcome, t in zip(outcomes, emailed, strict=False):
        assert (outcome.status, outcome.destination_id) == ("duplicate", t["id"])
        assert salesforce.duplicate_matches(outcome) == [(t["object"], t["id"])]
        assert outcome.problems[0].reason.startswith(
            "DUPLICATES_DETECTED: Use one of these records?"
        )
    assert outcomes[-1].status == "created"
    held = {r[EXT] for r in records(box, "Lead") if r[EXT]}
    assert "x:dup-fresh" in held and not any(f"x:dup-{n}" in held for n in range(len(emailed)))
    # Updating a record by its external id never trips the rule.
    again = salesforce.upsert(
        conn, "Lead", EXT, [lead("x:dup-fresh", Email=emailed[0]["email"])], ["f"]
    )
    assert again[0].status == "updated"
    # The rule is an org option.
    box.set_options(sf_duplicate_rules=False)
    off = salesforce.upsert(
        conn, "Lead", EXT, [lead("x:dup-off", Email=emailed[0]["email"])], ["o"]
    )
    assert off[0].status == "created"


@pytest.mark.slow
def test_duplicate_error_has_the_real_shape_on_every_path(box: Sandbox) -> None:
    truth = box.crm_truth()
    target = [t for t in truth.values() if t["case"] == "email"][-1]  # untouched by others
    http = api(box)
    base = f"{box.urls['salesforce']}/services/data/v60.0"
    single = http.post(
        f"{base}/sobjects/Lead", json=lead("x:dup-single", Email=target["email"]), timeout=10
    )
    assert single.status_code == 400
    (error,) = single.json()
    assert (
        error["errorCode"] == "DUPLICATES_DETECTED"
        and error["message"] == "Use one of these records?"
    )
    result = error["duplicateResult"]
    assert result["allowSave"] is False and result["duplicateRuleEntityType"] == "Lead"
    (match_result,) = result["matchResults"]
    assert match_result["entityType"] == target["object"] and match_result["size"] == 1
    assert match_result["matchRecords"][0]["record"]["Id"] == target["id"]
    body = {
        "allOrNone": False,
        "records": [{"attributes": {"type": "Lead"}, **lead("x:dup-coll", Email=target["email"])}],
    }
    (item,) = http.post(f"{base}/composite/sobjects", json=body, timeout=10).json()
    assert item["success"] is False and "id" not in item
    (per_record,) = item["errors"]
    # As the docs' collections example shows it: the rule's match is not named in a batch.
    assert per_record == {
        "statusCode": "DUPLICATES_DETECTED",
        "message": "Use one of these records?",
        "fields": [],
    }


@pytest.mark.slow
def test_bulk_rows_refused_as_duplicates_come_back_with_the_matched_id(box: Sandbox) -> None:
    truth = box.crm_truth()
    emailed = [t for t in truth.values() if t["case"] == "email"]
    conn = connect(box, bulk_threshold=3)
    box.set_options(sf_bulk_delay_ms=0)
    batch = [lead(f"x:bulkdup-ok-{n}") for n in range(3)] + [
        lead(f"x:bulkdup-{n}", Email=t["email"]) for n, t in enumerate(emailed[:2])
    ]
    keys = [r[EXT] for r in batch]
    outcomes = salesforce.upsert(conn, "Lead", EXT, batch, keys)
    assert [o.status for o in outcomes] == ["created"] * 3 + ["duplicate"] * 2
    assert [o.destination_id for o in outcomes[3:]] == [t["id"] for t in emailed[:2]]
    calls = box.state()["calls"]["salesforce"]
    assert calls["PUT /services/data/v60.0/jobs/ingest/:id/batches"] == 1
    # The job's failedResults name no match: the two go again one by one, whose errors do.
    assert "PATCH /services/data/v60.0/composite/sobjects/:sobject/:field" not in calls
    assert calls["PATCH /services/data/v60.0/sobjects/:sobject/:field/:value"] == 2
    http = api(box)
    jobs = f"{box.urls['salesforce']}/services/data/v60.0/jobs/ingest"
    job = http.get(jobs, timeout=10).json()["records"][-1]
    failed = salesforce.read_bulk_csv(
        http.get(f"{jobs}/{job['id']}/failedResults/", timeout=10).text
    )
    assert {row["sf__Error"] for row in failed} == {
        "DUPLICATES_DETECTED:Use one of these records?: --"
    }


@pytest.mark.slow
def test_tasks_are_upserted_once_however_often_they_are_sent(box: Sandbox) -> None:
    truth = box.crm_truth()
    contact = next(t for t in truth.values() if t["object"] == "Contact" and not t["ambiguous"])
    conn = connect(box)
    tasks = [
        {
            "Subject": f"X mention {n}",
            "WhoId": contact["id"],
            "ActivityDate": "2026-11-20",
            "Description": f"Loved the launch {n} 🚀",
            "Type": "Other",
            "TaskSubtype": "Task",
        }
        for n in range(3)
    ]
    keys = [f"x:mention:task-{n}" for n in range(3)]
    first = salesforce.upsert_tasks(conn, tasks, keys)
    assert [o.status for o in first] == ["created"] * 3
    second = salesforce.upsert_tasks(conn, tasks, keys)
    assert [o.status for o in second] == ["updated"] * 3
    assert [o.destination_id for o in second] == [o.destination_id for o in first]
    held = [t for t in records(box, "Task") if t["Socialcrm_Key__c"] in keys]
    assert len(held) == 3
    assert all(t["Status"] == "Completed" and t["IsClosed"] is True for t in held)
    assert all(t["WhoId"] == contact["id"] and t["TaskSubtype"] == "Task" for t in held)
    bad = salesforce.upsert_tasks(conn, [{"WhoId": "001000000000000AAA"}], ["x:bad-task"])
    assert bad[0].status == "failed" and "FIELD_INTEGRITY_EXCEPTION" in bad[0].problems[0].reason


@pytest.mark.slow
def test_campaign_members_are_added_once(box: Sandbox) -> None:
    truth = box.crm_truth()
    conn = connect(box)
    http = api(box)
    base = f"{box.urls['salesforce']}/services/data/v60.0"
    campaign = http.post(
        f"{base}/sobjects/Campaign", json={"Name": "Launch week", "IsActive": True}, timeout=10
    ).json()["id"]
    leads = [t["id"] for t in truth.values() if t["object"] == "Lead" and t["id"]][:3]
    contacts = [t["id"] for t in truth.values() if t["object"] == "Contact"][:2]
    first = salesforce.add_campaign_members(
        conn, campaign, "Sent", lead_ids=leads, contact_ids=contacts
    )
    assert [o.record_key for o in first] == leads + contacts
    assert {o.status for o in first} == {"created"} and all(o.destination_id for o in first)
    second = salesforce.add_campaign_members(
        conn, campaign, "Sent", lead_ids=[*leads, leads[0]], contact_ids=contacts
    )
    assert [o.status for o in second] == ["unchanged"] * 5
    members = [m for m in records(box, "CampaignMember") if m["CampaignId"] == campaign]
    assert len(members) == 5 and {m["Status"] for m in members} == {"Sent"}
    # The org's own answer to a second membership.
    body = {
        "allOrNone": False,
        "records": [
            {"attributes": {"type": "CampaignMember"}, "CampaignId": campaign, "LeadId": leads[0]}
        ],
    }
    (item,) = http.post(f"{base}/composite/sobjects", json=body, timeout=10).json()
    assert item["errors"] == [
        {"statusCode": "DUPLICATE_VALUE", "message": "Already a campaign member.", "fields": []}
    ]


@pytest.mark.slow
def test_delete_twice_is_gone_and_no_error(box: Sandbox) -> None:
    conn = connect(box)
    batch = [lead(f"x:del-{n}") for n in range(3)]
    created = salesforce.upsert(conn, "Lead", EXT, batch, [r[EXT] for r in batch])
    ids = [o.destination_id for o in created]
    assert all(ids)
    task = salesforce.upsert_tasks(conn, [{"Subject": "hi", "WhoId": ids[0]}], ["x:del-task"])
    first = salesforce.delete_records(conn, "Lead", [*ids, ids[0]])  # type: ignore[list-item]
    assert [(o.record_key, o.status, o.destination_id) for o in first] == [
        (i, "deleted", i) for i in ids
    ]
    second = salesforce.delete_records(conn, "Lead", ids)  # type: ignore[arg-type]
    assert [o.status for o in second] == ["deleted"] * 3 and not any(o.problems for o in second)
    held = {r["Id"] for r in records(box, "Lead")}
    assert not held & set(ids)
    assert task[0].destination_id not in {t["Id"] for t in records(box, "Task")}  # went along
    # The recycle bin: queryAll sees them, query does not; a new upsert makes a new record.
    soql_text = f"SELECT Id, IsDeleted FROM Lead WHERE Id = {salesforce.soql_quote(ids[0])}"  # type: ignore[arg-type]
    assert salesforce.query(conn, soql_text) == []
    assert conn.sf.query_all(soql_text, include_deleted=True)["records"][0]["IsDeleted"] is True
    again = salesforce.upsert(conn, "Lead", EXT, batch[:1], ["again"])
    assert again[0].status == "created" and again[0].destination_id != ids[0]
    # Single-record DELETE: 204, then 404 ENTITY_IS_DELETED; an unknown id is NOT_FOUND.
    http = api(box)
    url = f"{box.urls['salesforce']}/services/data/v60.0/sobjects/Lead"
    assert http.delete(f"{url}/{again[0].destination_id}", timeout=10).status_code == 204
    gone = http.delete(f"{url}/{again[0].destination_id}", timeout=10)
    assert gone.status_code == 404 and gone.json()[0]["errorCode"] == "ENTITY_IS_DELETED"
    assert (
        http.delete(f"{url}/00Q5g00000zzzzzAAA", timeout=10).json()[0]["errorCode"] == "NOT_FOUND"
    )
    # A malformed id fails; more than 200 ids at once is refused whole.
    (bad,) = salesforce.delete_records(conn, "Lead", ["not-an-id"])
    assert bad.status == "failed" and "MALFORMED_ID" in bad.problems[0].reason
    many = http.delete(
        f"{box.urls['salesforce']}/services/data/v60.0/composite/sobjects",
        params={"ids": ",".join(ids * 70)},  # type: ignore[arg-type]
        timeout=10,
    )
    assert many.status_code == 400 and many.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"


@pytest.mark.slow
def test_update_records_by_id(box: Sandbox) -> None:
    conn = connect(box)
    created = salesforce.upsert(conn, "Lead", EXT, [lead("x:upd-1"), lead("x:upd-2")], ["a", "b"])
    ids = [o.destination_id for o in created]
    salesforce.delete_records(conn, "Lead", ids[1:])  # type: ignore[arg-type]
    outcomes = salesforce.update_records(
        conn,
        "Lead",
        [
            {"Id": ids[0], "Helpdesk_Ticket_URL__c": "https://acme.zendesk.com/agent/tickets/7"},
            {"Id": ids[1], "Title": "x"},
        ],
        ["a", "b"],
    )
    assert (outcomes[0].status, outcomes[0].destination_id) == ("updated", ids[0])
    assert outcomes[1].status == "failed" and "ENTITY_IS_DELETED" in outcomes[1].problems[0].reason
    held = next(r for r in records(box, "Lead") if r["Id"] == ids[0])
    assert held["Helpdesk_Ticket_URL__c"] == "https://acme.zendesk.com/agent/tickets/7"
    with pytest.raises(ValueError, match="no Id"):
        salesforce.update_records(conn, "Lead", [{"Title": "x"}], ["c"])


def owners(box: Sandbox, keys: list[str]) -> dict[str, str]:
    return {r[EXT]: r["OwnerId"] for r in records(box, "Lead") if r[EXT] in keys}


@pytest.mark.slow
def test_assignment_rules_run_on_creates_only(box: Sandbox) -> None:
    conn = connect(box, auto_assign=True)
    batch = [lead(f"x:assign-{n}") for n in range(3)]
    keys = [r[EXT] for r in batch]
    created = salesforce.upsert(conn, "Lead", EXT, batch, keys)
    assert {o.status for o in created} == {"created"}
    assigned = owners(box, keys)
    queue = set(box._world.salesforce.store.owners)
    assert set(assigned.values()) <= queue and len(set(assigned.values())) == 3  # round robin
    # Known records are sent with FALSE: nobody's lead changes hands; a new one is assigned.
    newcomer = lead("x:assign-new")
    again = salesforce.upsert(
        conn, "Lead", EXT, [*batch, newcomer], [*keys, "x:assign-new"], known=keys
    )
    assert [o.status for o in again] == ["updated"] * 3 + ["created"]
    after = owners(box, [*keys, "x:assign-new"])
    assert {k: after[k] for k in keys} == assigned
    assert after["x:assign-new"] in queue
    # What the org does to updates sent with TRUE (the old behaviour): owners reshuffle.
    salesforce.upsert(conn, "Lead", EXT, batch, keys)
    assert owners(box, keys) != assigned
    # assign=False overrides the setting; the bulk path never asks for assignment.
    fixed = salesforce.upsert(conn, "Lead", EXT, [lead("x:assign-off")], ["off"], assign=False)
    assert fixed[0].status == "created"
    assert (
        owners(box, ["x:assign-off"])["x:assign-off"] == box._world.salesforce.store.default_owner
    )
    box.set_options(sf_bulk_delay_ms=0)
    bulk_conn = connect(box, bulk_threshold=2, auto_assign=True)
    bulk_batch = [lead(f"x:assign-bulk-{n}") for n in range(3)]
    bulk_keys = [r[EXT] for r in bulk_batch]
    box.reset_calls()
    salesforce.upsert(bulk_conn, "Lead", EXT, bulk_batch, bulk_keys)  # new + assign: collections
    assert (
        "PUT /services/data/v60.0/jobs/ingest/:id/batches" not in box.state()["calls"]["salesforce"]
    )
    before = owners(box, bulk_keys)
    salesforce.upsert(bulk_conn, "Lead", EXT, bulk_batch, bulk_keys, known=bulk_keys)  # by Bulk
    assert (
        box.state()["calls"]["salesforce"]["PUT /services/data/v60.0/jobs/ingest/:id/batches"] == 1
    )
    assert owners(box, bulk_keys) == before


@pytest.mark.slow
def test_the_seed_is_deterministic_and_served_over_http(tmp_path: Path, box: Sandbox) -> None:
    with start_sandbox(workdir=tmp_path / "again", crm_seed=True) as other:
        assert other.crm_truth() == box.crm_truth()
        http = requests.Session()
        http.verify = str(other.ca_path)
        http.trust_env = False
        url = f"{other.urls['salesforce']}/_sandbox/crm"
        assert http.get(url, timeout=10).json() == box.crm_truth()
        assert http.post(url, json={}, timeout=10).json() == box.crm_truth()  # same spec: as is
        refused = http.post(url, json={"handle": 1}, timeout=10)
        assert refused.status_code == 400 and "already seeded" in refused.json()["error"]
    with start_sandbox(workdir=tmp_path / "empty") as empty:
        assert empty.crm_truth() == {}
        assert empty.state()["salesforce"]["Contact"] == []
        small = empty.seed_crm(
            {
                "external_id": 1,
                "handle": 1,
                "noise": 0,
                **{c: 0 for c in CASES[1:] if c != "handle"},
            }
        )
        assert [t["case"] for t in small.values()] == ["external_id", "handle"]
        assert (
            len(empty.state()["salesforce"]["Contact"]) + len(empty.state()["salesforce"]["Lead"])
            == 2
        )
        with pytest.raises(ValueError, match="unknown crm_seed"):
            empty.seed_crm({"nope": 1})


@pytest.mark.slow
def test_a_query_the_org_refuses_inside_a_composite_call_names_its_error(box: Sandbox) -> None:
    conn = connect(box)
    with pytest.raises(ApiError) as raised:
        salesforce.query_many(conn, ["SELECT Id FROM Lead", "SELECT Nope FROM Lead"])
    assert raised.value.error_code == "INVALID_FIELD" and raised.value.status == 400
    assert "q1" in str(raised.value)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40))
def test_query_lengths_are_counted_as_quote_plus_encodes(text: str) -> None:
    """``in_queries`` sizes each value without encoding it; the count must be exact."""
    assert salesforce.url_encoded_length(text) == len(quote_plus(text))
