"""The Bulk API 2.0 path of the Salesforce sink: same CRM state and outcomes as sObject
Collections, failed rows keep their error, failed or slow jobs lose nothing, few calls."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from connectors.crm import salesforce
from connectors.crm.salesforce import BulkPolling, SalesforceConnection
from connectors.http import Action, ApiError, RetryPolicy
from sandbox import sf_bulk
from sandbox.server import Sandbox, start_sandbox
from socialcrm.config import SalesforceSettings
from socialcrm.records import SinkOutcome

EXT = "Social_Profile_Id__c"
JOBS = "/services/data/v60.0/jobs/ingest"
HOSTILE = [
    "plain",
    "comma, inside",
    'say "hi", then "bye"',
    '"',
    '""',
    "line1\nline2",
    "crlf\r\nline\rcr",
    "  padded  ",
    "tab\there",
    "semi;pipe|caret^back`quote",
    "Zoë Ångström 東京 🚀",
    "\u202eright-to-left\u200b",
    '=HYPERLINK("http://evil")',  # machine to machine: not neutralised, only quoted
    "#N/A-ish but not #N/A",
    "trailing backslash \\",
    "x" * 5000,
]


# --- narrow units: CSV writing and reading, error parsing, routing ------------------------


def test_csv_round_trip_keeps_hostile_text_exactly() -> None:
    records = [
        (f"k{i}", {EXT: f"x:{i}", "Description": text, "City": None})
        for i, text in enumerate(HOSTILE)
    ]
    ((body, items),) = salesforce.bulk_csv_parts([EXT, "Description", "City"], records)
    assert items == records
    text = body.decode("utf-8")
    assert text.startswith('"Social_Profile_Id__c","Description","City"\n')
    # What the org parses is exactly what we meant; an absent value is an empty cell.
    rows = sf_bulk.read_csv(text)
    assert rows[0] == [EXT, "Description", "City"]
    assert [row[1] for row in rows[1:]] == HOSTILE
    assert all(row[2] == "" for row in rows[1:])
    # And the results the org writes back read the same on our side.
    echoed = sf_bulk.write_csv(
        ["sf__Id", "sf__Created", *rows[0]], [["00Q", "true", *r] for r in rows[1:]]
    )
    read = salesforce.read_bulk_csv(echoed.decode("utf-8"))
    assert [row["Description"] for row in read] == HOSTILE
    assert [row[EXT] for row in read] == [f"x:{i}" for i in range(len(HOSTILE))]


def test_cells_are_written_as_the_json_path_would_send_them() -> None:
    cell = salesforce.csv_cell
    assert (cell(None), cell(True), cell(False)) == ("", "true", "false")
    assert (cell(3), cell(12.5), cell(3.0)) == ("3", "12.5", "3.0")
    assert cell(1e-7) == "0.0000001" and cell(1e21) == "1000000000000000000000"
    assert cell(float("nan")) == ""
    when = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert cell(when) == "2024-05-01T10:00:00+00:00"
    assert cell("#N/A") == "#N/A"  # such records go by collections, see bulk_share


def test_uploads_split_only_beyond_the_size_limit() -> None:
    records = [(f"k{i}", {EXT: f"x:{i}", "Description": "y" * 50}) for i in range(10)]
    ((_, everything),) = salesforce.bulk_csv_parts([EXT, "Description"], records)
    assert len(everything) == 10
    parts = salesforce.bulk_csv_parts([EXT, "Description"], records, limit=200)
    assert [key for _, items in parts for key, _ in items] == [f"k{i}" for i in range(10)]
    assert len(parts) > 1
    for body, items in parts:
        assert len(body) <= 200
        assert body.startswith(b'"Social_Profile_Id__c","Description"\n')
        assert len(sf_bulk.read_csv(body.decode())) == len(items) + 1


def test_sf_error_is_parsed_into_code_message_and_fields() -> None:
    parse = salesforce.parse_bulk_error
    assert parse("REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --") == (
        "REQUIRED_FIELD_MISSING",
        "Required fields are missing: [LastName]",
        ["LastName"],
    )
    assert parse("UNABLE_TO_LOCK_ROW:unable to obtain exclusive access: 00Q5g0000000EgE: --") == (
        "UNABLE_TO_LOCK_ROW",
        "unable to obtain exclusive access: 00Q5g0000000EgE",
        [],
    )
    assert parse("DUPLICATE_VALUE:duplicate: a, b:Email,Phone --")[2] == ["Email", "Phone"]
    assert parse("something else entirely") == ("", "something else entirely", [])


def test_only_records_csv_can_say_faithfully_go_by_bulk() -> None:
    settings = SimpleNamespace(bulk_threshold=3, auto_assign=False)
    conn: Any = SimpleNamespace(settings=settings)
    items = [(f"k{i}", {EXT: f"x:{i}", "LastName": "Doe"}) for i in range(4)]
    odd = [
        ("empty", {EXT: "x:e", "LastName": ""}),
        ("na", {EXT: "x:na", "LastName": "#N/A"}),
        ("noext", {"LastName": "Doe"}),
        ("dup1", {EXT: "x:DUP", "LastName": "Doe"}),
        ("dup2", {EXT: "x:dup", "LastName": "Doe"}),
    ]
    bulk, rest = salesforce.bulk_share(conn, EXT, items + odd)
    assert bulk == items and rest == odd
    assert salesforce.bulk_share(conn, EXT, items[:2]) == ([], items[:2])
    settings.auto_assign = True  # a job runs no default assignment rule
    assert salesforce.bulk_share(conn, EXT, items) == ([], items)


def test_polling_pauses_grow_and_are_bounded() -> None:
    assert list(BulkPolling(first=0.5, factor=2, cap=4, total=20).pauses()) == [
        0.5,
        1.0,
        2.0,
        4.0,
        4.0,
        4.0,
        4.0,
    ]


# --- against the sandbox -------------------------------------------------------------------


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sandbox = start_sandbox(workdir=tmp_path_factory.mktemp("sf-bulk"))
    yield sandbox
    sandbox.stop()


@pytest.fixture
def fresh(box: Sandbox) -> Iterator[Sandbox]:
    box.set_options(faults={"salesforce": {"rate": 0}}, sf_bulk_delay_ms=300)
    box.reset_calls()
    yield box
    box.set_options(faults={"salesforce": {"rate": 0}}, sf_bulk_delay_ms=300)


def connect(box: Sandbox, *, sleep_cap: float | None = None, **crm: Any) -> SalesforceConnection:
    settings = SalesforceSettings.model_validate(
        {
            "login_url": box.urls["salesforce"],
            "auth": {
                "method": "client_credentials",
                "client_id": "${SF_BULK_TEST_ID:-sandbox-client-id}",
                "client_secret": "${SF_BULK_TEST_SECRET:-sandbox-client-secret}",
            },
            "ca_bundle": Path(box.ca_path),
            **crm,
        }
    )
    policy = RetryPolicy()
    if sleep_cap is not None:
        cap = sleep_cap
        policy = RetryPolicy(sleep=lambda seconds: time.sleep(min(seconds, cap)))
    return salesforce.connect(settings, policy=policy)


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


def leads(box: Sandbox, prefix: str) -> dict[str, dict[str, Any]]:
    """Stored leads by external id, without what differs between two orgs (ids, times)."""
    volatile = {"Id", "CreatedDate", "LastModifiedDate", "attributes"}
    return {
        lead[EXT]: {k: v for k, v in lead.items() if k not in volatile}
        for lead in box.state()["salesforce"]["Lead"]
        if str(lead.get(EXT) or "").startswith(prefix)
    }


def sf_calls(box: Sandbox) -> dict[str, int]:
    calls = box.state()["calls"]["salesforce"]
    return {k: v for k, v in calls.items() if k != "POST /services/oauth2/token"}


def lead(ext: str, **fields: Any) -> dict[str, Any]:
    return {EXT: ext, "LastName": "Doe", "Company": "Acme", **fields}


def mixed_batch(prefix: str) -> list[dict[str, Any]]:
    """New and existing leads, hostile text, bad rows, numbers and dates, uneven key sets."""
    records = [
        lead(f"{prefix}:{i}", Description=text, FirstName="Zoë" if i % 2 else None)
        for i, text in enumerate(HOSTILE)
    ]
    records += [
        lead(f"{prefix}:old-1", Description='updated, with "quotes"\nand a line'),
        lead(f"{prefix}:old-2", Title="Head of Things", Engagement_Score__c=12.5),
        lead(f"{prefix}:nums", Engagement_Score__c=0.1 + 0.2, Engagement_Count__c=3),
        lead(f"{prefix}:when", Last_Engaged_At__c="2024-05-01T10:00:00+00:00"),
        {EXT: f"{prefix}:no-last-name", "Company": "Acme"},
        lead(f"{prefix}:bad-platform", Social_Platform__c="Myspace"),
        lead(f"{prefix}:long-city", City="c" * 41),
        lead(f"{prefix}:bad-email", Email="not-an-email"),
        lead(f"{prefix}:literal-na", Description="#N/A"),
        lead(f"{prefix}:empty", Title=""),
    ]
    return [{k: v for k, v in r.items() if v is not None} for r in records]


def existing(prefix: str) -> list[dict[str, Any]]:
    return [
        lead(f"{prefix}:old-1", Email="kept@example.com", Description="before"),
        lead(f"{prefix}:old-2", City="Lyon"),
    ]


def outcome_view(outcomes: list[SinkOutcome]) -> list[tuple[Any, ...]]:
    """What a run records per lead, without the destination ids (they differ per org)."""
    return [
        (o.record_key, o.status, o.retryable, [(p.field, p.reason) for p in o.problems])
        for o in outcomes
    ]


@pytest.mark.slow
def test_bulk_and_collections_leave_the_same_crm_state(tmp_path: Path) -> None:
    results = {}
    for path, threshold in (("collections", 100_000), ("bulk", 5)):
        with start_sandbox(workdir=tmp_path / path) as org:
            conn = connect(org, bulk_threshold=threshold)
            seed = existing("p")
            salesforce.upsert(conn, "Lead", EXT, seed, [r[EXT] for r in seed])
            org.reset_calls()
            batch = mixed_batch("p")
            outcomes = salesforce.upsert(conn, "Lead", EXT, batch, [r[EXT] for r in batch])
            results[path] = (leads(org, "p:"), outcome_view(outcomes), sf_calls(org))
    (held, seen, calls), (bulk_held, bulk_seen, bulk_calls) = (
        results["collections"],
        results["bulk"],
    )
    assert set(calls) == {"PATCH /services/data/v60.0/composite/sobjects/:sobject/:field"}
    assert bulk_calls["PUT /services/data/v60.0/jobs/ingest/:id/batches"] == 1
    # The two records CSV cannot say the way JSON does went by one collections call.
    assert bulk_calls["PATCH /services/data/v60.0/composite/sobjects/:sobject/:field"] == 1
    assert bulk_held == held
    assert bulk_seen == seen
    # The update through a CSV without the Email column did not wipe it.
    assert held["p:old-1"]["Email"] == "kept@example.com"
    assert held["p:old-2"]["City"] == "Lyon"
    assert held["p:15"]["Description"] == HOSTILE[15]
    assert held["p:literal-na"]["Description"] == "#N/A"
    statuses = {key: status for key, status, _, _ in seen}
    assert statuses["p:old-1"] == "updated" and statuses["p:0"] == "created"
    assert {k for k, s in statuses.items() if s == "failed"} == {
        "p:no-last-name",
        "p:bad-platform",
        "p:long-city",
        "p:bad-email",
    }


@pytest.mark.slow
def test_failed_rows_carry_the_sf_error_and_its_field(fresh: Sandbox) -> None:
    conn = connect(fresh, bulk_threshold=3)
    batch = [
        lead("b:ok-1"),
        lead("b:ok-2"),
        {EXT: "b:no-last-name", "Company": "Acme"},
        lead("b:long-city", City="c" * 41),
    ]
    outcomes = salesforce.upsert(conn, "Lead", EXT, batch, [r[EXT] for r in batch])
    by_key = {o.record_key: o for o in outcomes}
    assert [o.record_key for o in outcomes] == [r[EXT] for r in batch]
    assert by_key["b:ok-1"].status == "created" and by_key["b:ok-1"].destination_id
    http = api(fresh)
    base = fresh.urls["salesforce"] + JOBS
    job = http.get(base, timeout=10).json()["records"][-1]
    failed_csv = http.get(f"{base}/{job['id']}/failedResults/", timeout=10).content.decode()
    rows = {row[EXT]: row for row in salesforce.read_bulk_csv(failed_csv)}
    assert set(rows) == {"b:no-last-name", "b:long-city"}
    for key, row in rows.items():
        outcome = by_key[key]
        assert outcome.status == "failed" and not outcome.retryable
        (problem,) = outcome.problems
        code, message, fields = salesforce.parse_bulk_error(row["sf__Error"])
        assert problem.reason == f"{code}: {message}"
        assert problem.field == ",".join(fields)
    assert by_key["b:no-last-name"].problems[0].reason == (
        "REQUIRED_FIELD_MISSING: Required fields are missing: [LastName]"
    )
    assert rows["b:no-last-name"]["sf__Error"] == (
        "REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --"
    )
    assert by_key["b:long-city"].problems[0].field == "City"


@pytest.mark.slow
def test_a_failed_job_is_a_clear_error_naming_every_record(fresh: Sandbox) -> None:
    conn = connect(fresh, bulk_threshold=3)
    batch = [lead(f"f:{i}", Nope__c="x") for i in range(4)]
    keys = [r[EXT] for r in batch]
    with pytest.raises(ApiError) as raised:
        salesforce.upsert(conn, "Lead", EXT, batch, keys)
    error = raised.value
    assert "InvalidBatch : Field name not found : Nope__c" in str(error)
    assert error.action is Action.FAIL and error.record_keys == keys
    assert not leads(fresh, "f:")


@pytest.mark.slow
def test_a_job_that_outlasts_the_wait_is_aborted_and_retried_later(fresh: Sandbox) -> None:
    fresh.set_options(sf_bulk_delay_ms=60_000)
    conn = connect(fresh, bulk_threshold=3)
    conn.bulk_polling = BulkPolling(first=0.2, factor=2, cap=1, total=1.0)
    batch = [lead(f"t:{i}") for i in range(4)]
    keys = [r[EXT] for r in batch]
    with pytest.raises(ApiError) as raised:
        salesforce.upsert(conn, "Lead", EXT, batch, keys)
    error = raised.value
    assert error.action is Action.RETRY and error.record_keys == keys
    assert "still InProgress" in str(error) and "aborted" in str(error)
    http = api(fresh)
    job = http.get(fresh.urls["salesforce"] + JOBS, timeout=10).json()["records"][-1]
    assert job["state"] == "Aborted"
    fresh.set_options(sf_bulk_delay_ms=0)
    assert not leads(fresh, "t:")  # an aborted job never runs later behind our back
    # The next run sends them again and they land once.
    outcomes = salesforce.upsert(conn, "Lead", EXT, batch, keys)
    assert {o.status for o in outcomes} == {"created"}
    assert sorted(leads(fresh, "t:")) == sorted(keys)


def test_collections_calls_of_one_upsert_go_side_by_side_in_order(
    fresh: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calls of 200 touch different records: several, never more than four, are on the
    wire at once (the sandbox holds each 100 ms), and the outcomes still come back in the
    records' order (checked: with one call at a time this fails)."""
    fresh.set_options(latency_ms=100)
    spans: list[tuple[float, float]] = []
    call = SalesforceConnection.call

    def timed(conn: SalesforceConnection, name: str, fn: Any, **kwargs: Any) -> Any:
        began = time.monotonic()
        try:
            return call(conn, name, fn, **kwargs)
        finally:
            if name.startswith("PATCH /composite/sobjects"):
                spans.append((began, time.monotonic()))

    conn = connect(fresh, bulk_threshold=10_000)
    monkeypatch.setattr(SalesforceConnection, "call", timed)
    try:
        batch = [lead(f"side:{i}") for i in range(1000)]
        keys = [r[EXT] for r in batch]
        outcomes = salesforce.upsert(conn, "Lead", EXT, batch, keys)
    finally:
        fresh.set_options(latency_ms=0)
    assert [o.record_key for o in outcomes] == keys
    assert {o.status for o in outcomes} == {"created"}
    assert len(spans) == 5
    # How many were on the wire when each began: more than one, never more than four.
    # (Not "all four at once": a thread scheduled late, or a new TLS connection, can start
    # a call just after another one ended, on a busy machine.)
    in_flight = [sum(s <= start < e for s, e in spans) for start, _ in spans]
    assert 2 <= max(in_flight) <= salesforce.PARALLEL_CALLS, in_flight
    assert sorted(leads(fresh, "side:")) == sorted(keys)


def test_a_call_of_an_upsert_that_fails_for_good_fails_only_its_own_records(
    fresh: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of five calls side by side, one fails for good (retries spent) in every attempt:
    its 200 records fail with the error (sent again in each of the upsert's attempts,
    then left to the caller as retryable), and the other 800 are created, reported so
    (checked: raising the call's error made the caller fail all 1,000, created ones too,
    which then came back "updated" and never joined a campaign). A refused session still
    stops everything."""
    doomed = "fail:400"  # the first record of the third call
    call = SalesforceConnection.call
    attempts: list[int] = []

    def failing(conn: SalesforceConnection, name: str, fn: Any, **kwargs: Any) -> Any:
        if doomed in kwargs.get("keys", ()):
            attempts.append(1)
            raise ApiError("salesforce", name, "503 (retries spent)", 503, Action.RETRY)
        return call(conn, name, fn, **kwargs)

    conn = connect(fresh, sleep_cap=0.0, bulk_threshold=10_000)
    monkeypatch.setattr(SalesforceConnection, "call", failing)
    batch = [lead(f"fail:{i}") for i in range(1000)]
    keys = [r[EXT] for r in batch]
    outcomes = salesforce.upsert(conn, "Lead", EXT, batch, keys)
    assert [o.record_key for o in outcomes] == keys
    failed = [o for o in outcomes if o.status == "failed"]
    assert [o.record_key for o in failed] == keys[400:600]
    assert all(o.retryable and "503 (retries spent)" in o.problems[0].reason for o in failed)
    assert {o.status for o in outcomes[:400] + outcomes[600:]} == {"created"}
    assert len(attempts) == salesforce.RECORD_ATTEMPTS
    assert sorted(leads(fresh, "fail:")) == sorted(keys[:400] + keys[600:])

    def refused(conn: SalesforceConnection, name: str, fn: Any, **kwargs: Any) -> Any:
        if doomed in kwargs.get("keys", ()):
            raise ApiError("salesforce", name, "INVALID_SESSION_ID", 401, Action.FAIL)
        return call(conn, name, fn, **kwargs)

    monkeypatch.setattr(SalesforceConnection, "call", refused)
    with pytest.raises(ApiError, match="INVALID_SESSION_ID"):
        salesforce.upsert(conn, "Lead", EXT, batch, keys)


def test_a_job_runs_when_its_time_comes_not_when_someone_next_looks(fresh: Sandbox) -> None:
    """As in the org, a closed job is processed once its processing time has passed, so
    the poll that finds it done answers at once (checked: without the server's timer the
    job stays UploadComplete until the next request)."""
    fresh.set_options(sf_bulk_delay_ms=100)
    conn = connect(fresh)
    items = [(f"due:{i}", lead(f"due:{i}")) for i in range(3)]
    [(body, _)] = salesforce.bulk_csv_parts([EXT, "LastName", "Company"], items)
    job_id = salesforce._open_bulk_job(conn, "Lead", EXT, body, [key for key, _ in items])
    jobs = fresh._world.salesforce.bulk.jobs  # looked at without a request: no one polls
    deadline = time.monotonic() + 10
    while jobs[job_id].state != "JobComplete" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert jobs[job_id].state == "JobComplete"
    assert sorted(leads(fresh, "due:")) == ["due:0", "due:1", "due:2"]


@pytest.mark.slow
def test_row_locks_are_retried_and_nothing_is_lost(fresh: Sandbox) -> None:
    # Every job close and every collections call meets row-lock contention on some rows.
    fresh.set_options(faults={"salesforce": {"rate": 1.0, "kinds": {"partial": 1}}})
    conn = connect(fresh, bulk_threshold=5, sleep_cap=0.3)
    batch = [lead(f"l:{i}") for i in range(40)]
    keys = [r[EXT] for r in batch]
    outcomes = salesforce.upsert(conn, "Lead", EXT, batch, keys)
    held = leads(fresh, "l:")
    assert [o.record_key for o in outcomes] == keys
    for outcome in outcomes:
        if outcome.status == "created":
            assert outcome.record_key in held
        else:
            assert outcome.retryable and outcome.record_key not in held
            assert outcome.problems[0].reason.startswith("UNABLE_TO_LOCK_ROW: ")
    created = sum(o.status == "created" for o in outcomes)
    assert created >= 30  # ~20% locked at first, most of them landed on a retry
    calls = sf_calls(fresh)
    retries = calls.get("PATCH /services/data/v60.0/composite/sobjects/:sobject/:field", 0)
    assert calls["PATCH /services/data/v60.0/jobs/ingest/:id"] + retries >= 2


@pytest.mark.slow
def test_five_thousand_records_take_at_most_eight_calls(fresh: Sandbox) -> None:
    conn = connect(fresh)  # the default threshold: 2000
    batch = [lead(f"n:{i}", City=f"City {i % 7}") for i in range(5000)]
    batch[17] = {EXT: "n:17", "Company": "Acme"}  # one bad row, so failedResults is read
    keys = [r[EXT] for r in batch]
    started = time.monotonic()
    outcomes = salesforce.upsert(conn, "Lead", EXT, batch, keys)
    elapsed = time.monotonic() - started
    calls = sf_calls(fresh)
    state = fresh.state()
    total = sum(calls.values())
    polls = calls["GET /services/data/v60.0/jobs/ingest/:id"]
    print(f"5000 records by Bulk API 2.0: {total} calls {calls}, {elapsed:.2f}s")
    assert total <= 8 and polls <= 3
    assert state["writes"]["salesforce"] == conn.writes == 3
    assert state["reads"]["salesforce"] == conn.reads == total - 3
    assert [o.record_key for o in outcomes] == keys
    assert sum(o.status == "created" for o in outcomes) == 4999
    assert outcomes[17].status == "failed"
    assert len(leads(fresh, "n:")) == 4999


def lose_first_answer(conn: SalesforceConnection, method: str, pattern: str) -> list[str]:
    """The first matching call reaches the org, but its answer is lost (a reset after)."""
    real = conn.session.request
    lost: list[str] = []

    def request(verb: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = real(verb, url, *args, **kwargs)
        if verb == method and re.search(pattern, url) and not lost:
            lost.append(url)
            raise requests.ConnectionError("connection reset by peer (answer lost)")
        return response

    conn.session.request = request  # type: ignore[method-assign]
    return lost


@pytest.mark.slow
def test_an_upload_that_landed_twice_goes_again_in_a_fresh_job(fresh: Sandbox) -> None:
    conn = connect(fresh, bulk_threshold=3, sleep_cap=0.3)
    lost = lose_first_answer(conn, "PUT", r"/jobs/ingest/\w+/batches$")
    batch = [lead(f"u:{i}") for i in range(6)]
    keys = [r[EXT] for r in batch]
    outcomes = salesforce.upsert(conn, "Lead", EXT, batch, keys)
    assert lost and {o.status for o in outcomes} == {"created"}
    assert sorted(leads(fresh, "u:")) == sorted(keys)
    calls = sf_calls(fresh)
    assert calls["POST /services/data/v60.0/jobs/ingest"] == 2
    assert calls["PUT /services/data/v60.0/jobs/ingest/:id/batches"] == 3
    jobs = api(fresh).get(fresh.urls["salesforce"] + JOBS, timeout=10).json()["records"]
    assert [job["state"] for job in jobs[-2:]] == ["Aborted", "JobComplete"]


@pytest.mark.slow
def test_a_close_whose_answer_was_lost_is_not_mistaken_for_a_failure(fresh: Sandbox) -> None:
    conn = connect(fresh, bulk_threshold=3, sleep_cap=0.3)
    lost = lose_first_answer(conn, "PATCH", r"/jobs/ingest/\w+$")  # the close
    batch = [lead(f"c:{i}") for i in range(6)]
    keys = [r[EXT] for r in batch]
    outcomes = salesforce.upsert(conn, "Lead", EXT, batch, keys)
    assert lost and {o.status for o in outcomes} == {"created"}
    assert sorted(leads(fresh, "c:")) == sorted(keys)
    calls = sf_calls(fresh)
    assert calls["POST /services/data/v60.0/jobs/ingest"] == 1
    assert calls["PATCH /services/data/v60.0/jobs/ingest/:id"] == 2  # the retry was refused


@pytest.mark.slow
def test_resets_and_503s_on_bulk_calls_lose_and_double_nothing(fresh: Sandbox) -> None:
    faults = {"rate": 0.3, "kinds": {"reset": 1, "503": 1, "expired_session": 1}}
    fresh.set_options(faults={"salesforce": faults, "seed": 21})
    conn = connect(fresh, bulk_threshold=5, sleep_cap=0.05)
    batch = [lead(f"r:{i}", City="Oslo") for i in range(30)]
    keys = [r[EXT] for r in batch]
    try:
        outcomes = salesforce.upsert(conn, "Lead", EXT, batch, keys)
    except ApiError as error:  # retries ran out: the next run sends everything again
        assert error.action is Action.RETRY and error.record_keys
        outcomes = []
    fresh.set_options(faults={"salesforce": {"rate": 0}})
    state = fresh.state()
    print("faults", state["faults"]["salesforce"], state["fault_phases"]["salesforce"])
    print("calls", sf_calls(fresh), "outcomes", Counter(o.status for o in outcomes))
    assert sum(state["faults"]["salesforce"].values()) > 0
    for outcome in outcomes:
        assert outcome.status in ("created", "updated") or outcome.retryable
    again = salesforce.upsert(conn, "Lead", EXT, batch, keys)
    assert {o.status for o in again} <= {"created", "updated"}
    held = [lead[EXT] for lead in fresh.state()["salesforce"]["Lead"] if lead[EXT].startswith("r:")]
    assert sorted(held) == sorted(keys)  # each exactly once


@pytest.mark.slow
def test_the_quota_check_stops_a_job_before_it_is_created(fresh: Sandbox) -> None:
    conn = connect(fresh, bulk_threshold=3)
    fresh.set_options(sf_api_usage=14_000)  # headroom 90% of 15,000
    try:
        salesforce.describe(conn, "Lead")  # every run reads this first: usage is known
        batch = [lead(f"q:{i}") for i in range(4)]
        with pytest.raises(ApiError) as raised:
            salesforce.upsert(conn, "Lead", EXT, batch, [r[EXT] for r in batch])
    finally:
        fresh.set_options(sf_api_usage=0)
    assert raised.value.action is Action.QUOTA
    assert conn.writes == 0
    assert "POST /services/data/v60.0/jobs/ingest" not in sf_calls(fresh)


def run_job(http: requests.Session, base: str, csv_text: str, **spec: str) -> dict[str, Any]:
    """Create, upload, close and wait for a raw Bulk API 2.0 upsert job; returns its info."""
    body = {"object": "Lead", "operation": "upsert", "externalIdFieldName": EXT, **spec}
    job = http.post(base, json=body, timeout=10).json()
    upload = http.put(
        f"{base}/{job['id']}/batches",
        data=csv_text.encode(),
        headers={"Content-Type": "text/csv"},
        timeout=10,
    )
    assert upload.status_code == 201 and upload.content == b""
    closed = http.patch(f"{base}/{job['id']}", json={"state": "UploadComplete"}, timeout=10)
    assert closed.json()["state"] == "UploadComplete"
    for _ in range(50):
        info: dict[str, Any] = http.get(f"{base}/{job['id']}", timeout=10).json()
        if info["state"] in ("JobComplete", "Failed", "Aborted"):
            return info
        time.sleep(0.1)
    raise AssertionError("job never ended")


@pytest.mark.slow
def test_simulated_jobs_follow_the_csv_rules_and_refusals(fresh: Sandbox) -> None:
    fresh.set_options(sf_bulk_delay_ms=50)
    http = api(fresh)
    base = fresh.urls["salesforce"] + JOBS
    header = f"{EXT},LastName,Company,City,Title\n"
    run_job(http, base, header + "w:1,Doe,Acme,Lyon,Boss\n")
    # An empty cell leaves the field as it is, #N/A clears it.
    info = run_job(http, base, header + 'w:1,Doe,Acme,"",#N/A\n')
    assert info["numberRecordsProcessed"] == 1 and info["numberRecordsFailed"] == 0
    stored = leads(fresh, "w:")["w:1"]
    assert stored["City"] == "Lyon" and stored["Title"] is None
    # Unknown columns fail the whole job, as the org words it.
    failed = run_job(http, base, f"{EXT},LastName,Nope__c\nw:2,Doe,x\n")
    assert failed["state"] == "Failed"
    assert failed["errorMessage"] == "InvalidBatch : Field name not found : Nope__c"
    # CRLF data in an LF job is refused.
    crlf = run_job(http, base, header.replace("\n", "\r\n") + "w:3,Doe,Acme,,\r\n")
    assert crlf["errorMessage"].startswith("ClientInputError : LineEnding is invalid")
    # Two uploads to one job: the close is refused in the JSON error shape.
    job = http.post(base, json={"object": "Lead", "operation": "insert"}, timeout=10).json()
    for _ in range(2):
        http.put(
            f"{base}/{job['id']}/batches",
            data=b"LastName,Company\nDoe,Acme\n",
            headers={"Content-Type": "text/csv"},
            timeout=10,
        )
    refused = http.patch(f"{base}/{job['id']}", json={"state": "UploadComplete"}, timeout=10)
    assert refused.status_code == 400
    assert refused.json()[0]["errorCode"] == "INVALIDJOB"
    assert "only do 'PUT' once" in refused.json()[0]["message"]
    # An open job cannot be deleted; an aborted one can, and is gone.
    assert http.delete(f"{base}/{job['id']}", timeout=10).status_code == 400
    http.patch(f"{base}/{job['id']}", json={"state": "Aborted"}, timeout=10)
    assert http.delete(f"{base}/{job['id']}", timeout=10).status_code == 204
    missing = http.get(f"{base}/{job['id']}", timeout=10)
    assert missing.status_code == 404 and missing.json()[0]["errorCode"] == "NOT_FOUND"
    # Upsert without an external id field is refused at creation.
    bad = http.post(base, json={"object": "Lead", "operation": "upsert"}, timeout=10)
    assert bad.status_code == 400 and bad.json()[0]["errorCode"] == "INVALIDJOB"
