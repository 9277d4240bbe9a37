"""The Salesforce simulator behaves like an org for the calls a lead sink makes."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceExpiredSession, SalesforceMalformedRequest

from sandbox.server import Sandbox, start_sandbox

RECORDINGS = Path(__file__).resolve().parents[2] / "shared" / "recordings" / "salesforce"
GOOD = {"client_id": "sandbox-client-id", "client_secret": "sandbox-client-secret"}
UPSERT = "composite/sobjects/Lead/Social_Profile_Id__c"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = start_sandbox(workdir=tmp_path_factory.mktemp("sandbox-sf"))
    yield box
    box.stop()


@pytest.fixture(scope="module")
def http(sandbox: Sandbox) -> requests.Session:
    session = requests.Session()
    session.verify = str(sandbox.ca_path)
    session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise override verify
    return session


@pytest.fixture(scope="module")
def token(sandbox: Sandbox, http: requests.Session) -> str:
    response = http.post(
        f"{sandbox.urls['salesforce']}/services/oauth2/token",
        data={"grant_type": "client_credentials", **GOOD},
        timeout=10,
    )
    return str(response.json()["access_token"])


@pytest.fixture(scope="module")
def sf(sandbox: Sandbox, http: requests.Session, token: str) -> Salesforce:
    return Salesforce(
        instance_url=sandbox.urls["salesforce"], session_id=token, session=http, version="60.0"
    )


def lead(ext: str, **fields: Any) -> dict[str, Any]:
    return {
        "attributes": {"type": "Lead"},
        "Social_Profile_Id__c": ext,
        "LastName": "Doe",
        "Company": "Acme",
        **fields,
    }


def upsert(sf: Salesforce, records: list[dict[str, Any]], all_or_none: bool = False) -> Any:
    return sf.restful(UPSERT, method="PATCH", json={"allOrNone": all_or_none, "records": records})


def stored(sandbox: Sandbox, ext: str) -> dict[str, Any] | None:
    leads = sandbox.state()["salesforce"]["Lead"]
    return next((r for r in leads if r["Social_Profile_Id__c"] == ext), None)


def test_token_endpoint_accepts_only_the_sandbox_credentials(
    sandbox: Sandbox, http: requests.Session
) -> None:
    url = f"{sandbox.urls['salesforce']}/services/oauth2/token"
    good = http.post(url, data={"grant_type": "client_credentials", **GOOD}, timeout=10).json()
    assert set(good) == {
        "access_token",
        "signature",
        "scope",
        "instance_url",
        "id",
        "token_type",
        "issued_at",
    }
    assert good["instance_url"] == sandbox.urls["salesforce"]
    assert good["token_type"] == "Bearer" and good["issued_at"].isdigit()
    basic = http.post(
        url,
        data={"grant_type": "client_credentials"},
        timeout=10,
        auth=(GOOD["client_id"], GOOD["client_secret"]),
    )
    assert basic.status_code == 200
    bad = http.post(
        url,
        data={
            "grant_type": "client_credentials",
            "client_id": "sandbox-client-id",
            "client_secret": "wrong",
        },
        timeout=10,
    )
    assert bad.status_code == 400
    assert bad.json() == {
        "error": "invalid_client",
        "error_description": "invalid client credentials",
    }
    claims = base64.urlsafe_b64encode(json.dumps({"iss": "sandbox-client-id"}).encode()).decode()
    jwt = http.post(
        url,
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": f"e30.{claims.rstrip('=')}.sig",
        },
        timeout=10,
    )
    assert jwt.status_code == 200


def test_unknown_session_gets_invalid_session_id(sandbox: Sandbox, http: requests.Session) -> None:
    response = http.get(
        f"{sandbox.urls['salesforce']}/services/data/v60.0/sobjects/Lead/describe",
        headers={"Authorization": "Bearer nope"},
        timeout=10,
    )
    assert response.status_code == 401
    assert response.json() == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]
    stale = Salesforce(
        instance_url=sandbox.urls["salesforce"], session_id="stale", session=http, version="60.0"
    )
    with pytest.raises(SalesforceExpiredSession):
        stale.query("SELECT Id FROM Lead")


def test_describe_lead_marks_last_name_and_company_required(sf: Salesforce) -> None:
    describe = sf.Lead.describe()
    assert describe["keyPrefix"] == "00Q"
    fields = {f["name"]: f for f in describe["fields"]}
    required = {
        n
        for n, f in fields.items()
        if f["createable"]
        and not f["nillable"]
        and not f["defaultedOnCreate"]
        and f["type"] != "boolean"
    }
    assert required == {"LastName", "Company"}
    ext = fields["Social_Profile_Id__c"]
    assert ext["externalId"] and ext["unique"] and ext["idLookup"] and ext["length"] == 80
    status = fields["Status"]
    assert status["restrictedPicklist"] and status["defaultedOnCreate"]
    assert [v["value"] for v in status["picklistValues"] if v["defaultValue"]] == [
        "Open - Not Contacted"
    ]
    assert fields["IsConverted"]["createable"] is False
    assert fields["Engagement_Score__c"]["type"] == "double"
    assert {"Id", "LastName", "Social_Handle__c"} <= {
        f["name"] for f in sf.Contact.describe()["fields"]
    }


def test_collections_upsert_creates_then_updates(sandbox: Sandbox, sf: Salesforce) -> None:
    first = upsert(
        sf,
        [
            lead("x:100", Title="CTO", Engagement_Score__c=7),
            lead("x:101", Last_Engaged_At__c="2026-11-20T10:00:00.000Z"),
        ],
    )
    assert [r["created"] for r in first] == [True, True]
    assert all(r["success"] and r["errors"] == [] and len(r["id"]) == 18 for r in first)
    assert first[0]["id"].startswith("00Q")
    record = stored(sandbox, "x:100")
    assert record is not None
    assert record["Status"] == "Open - Not Contacted"
    assert record["OwnerId"].startswith("005") and record["IsConverted"] is False
    second = upsert(sf, [lead("x:100", Title=None, LastName="Roe"), lead("x:102")])
    assert [r["created"] for r in second] == [False, True]
    assert second[0]["id"] == first[0]["id"]
    record = stored(sandbox, "x:100")
    assert record is not None
    assert record["Title"] is None and record["LastName"] == "Roe"
    assert record["Engagement_Score__c"] == 7.0
    assert stored(sandbox, "x:101")["Last_Engaged_At__c"] == "2026-11-20T10:00:00.000+0000"  # type: ignore[index]


def test_collections_report_per_record_errors_and_store_the_rest(
    sandbox: Sandbox, sf: Salesforce
) -> None:
    records = [
        lead("x:200"),
        lead("x:201", LastName="L" * 81),
        {"attributes": {"type": "Lead"}, "Social_Profile_Id__c": "x:202", "Company": "NoName"},
        lead("x:203", Social_Platform__c="MySpace"),
        lead("x:204", Email="not-an-email"),
        lead("x:205", Engagement_Score__c="lots"),
        lead("x:206", IsConverted=True),
        lead("x:207"),
    ]
    results = upsert(sf, records)
    codes = [r["errors"][0]["statusCode"] if r["errors"] else None for r in results]
    assert codes == [
        None,
        "STRING_TOO_LONG",
        "REQUIRED_FIELD_MISSING",
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "INVALID_EMAIL_ADDRESS",
        "INVALID_TYPE_ON_FIELD_IN_RECORD",
        "INVALID_FIELD_FOR_INSERT_UPDATE",
        None,
    ]
    too_long = results[1]["errors"][0]
    assert too_long["message"] == f"Last Name: data value too large: {'L' * 81} (max length=80)"
    assert too_long["fields"] == ["LastName"]
    assert results[2]["errors"][0]["message"] == "Required fields are missing: [LastName]"
    assert all("id" not in r for r in results[1:7])
    assert stored(sandbox, "x:200") and stored(sandbox, "x:207")
    assert stored(sandbox, "x:201") is None and stored(sandbox, "x:202") is None


def test_duplicate_external_ids_in_one_request_both_fail(sandbox: Sandbox, sf: Salesforce) -> None:
    results = upsert(sf, [lead("x:300"), lead("X:300"), lead("x:301")])
    assert [r["success"] for r in results] == [False, False, True]
    assert results[0]["errors"][0]["statusCode"] == "DUPLICATE_EXTERNAL_ID"


def test_more_than_200_records_is_refused_whole(sandbox: Sandbox, sf: Salesforce) -> None:
    with pytest.raises(SalesforceMalformedRequest) as caught:
        upsert(sf, [lead(f"x:big-{i}") for i in range(201)])
    assert caught.value.content[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    assert stored(sandbox, "x:big-0") is None
    with pytest.raises(SalesforceMalformedRequest) as unknown:
        upsert(sf, [lead("x:400", Foo__c="bar")])
    assert unknown.value.content == [
        {
            "message": "No such column 'Foo__c' on sobject of type Lead",
            "errorCode": "INVALID_FIELD",
            "fields": [],
        }
    ]


def test_all_or_none_rolls_everything_back(sandbox: Sandbox, sf: Salesforce) -> None:
    results = upsert(sf, [lead("x:500"), lead("x:501", Company=None), lead("x:502")], True)
    assert [r["errors"][0]["statusCode"] for r in results] == [
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "REQUIRED_FIELD_MISSING",
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    ]
    assert stored(sandbox, "x:500") is None and stored(sandbox, "x:502") is None


def test_nan_in_a_body_is_a_json_parser_error(
    sandbox: Sandbox, http: requests.Session, token: str
) -> None:
    url = f"{sandbox.urls['salesforce']}/services/data/v60.0/{UPSERT}"
    body = json.dumps(
        {"allOrNone": False, "records": [lead("x:600", Engagement_Score__c=float("nan"))]}
    )
    response = http.patch(
        url,
        data=body,
        timeout=10,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "JSON_PARSER_ERROR"


def test_single_record_upsert_create_update_and_get(
    sandbox: Sandbox, sf: Salesforce, http: requests.Session, token: str
) -> None:
    assert (
        sf.Lead.upsert("Social_Profile_Id__c/x%3A700", {"LastName": "Seven", "Company": "S"}) == 201
    )
    url = (
        f"{sandbox.urls['salesforce']}/services/data/v60.0/sobjects/Lead/Social_Profile_Id__c/x:700"
    )
    again = http.patch(
        url, json={"Title": "CEO"}, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert again.status_code == 200
    body = again.json()
    assert body["created"] is False and body["success"] is True
    record = sf.Lead.get(body["id"])
    assert record["attributes"] == {
        "type": "Lead",
        "url": f"/services/data/v60.0/sobjects/Lead/{body['id']}",
    }
    assert record["Title"] == "CEO" and record["Name"] == "Seven"
    recording = RECORDINGS / "sobject_get_lead.json"
    if recording.exists():
        recorded = json.loads(recording.read_text())["body"]
        common = set(record) & set(recorded)
        assert {"attributes", "Id", "LastName", "Company", "Status", "OwnerId"} <= common
        for key in common:
            assert isinstance(record[key], type(recorded[key])) or None in (
                record[key],
                recorded[key],
            )


def test_auto_assign_header_decides_the_owner(sandbox: Sandbox, sf: Salesforce) -> None:
    assigned = sf.restful(
        UPSERT,
        method="PATCH",
        json={"allOrNone": False, "records": [lead(f"x:80{i}") for i in range(3)]},
    )
    owners = {stored(sandbox, f"x:80{i}")["OwnerId"] for i in range(3)}  # type: ignore[index]
    assert len(owners) == 3 and all(r["created"] for r in assigned)  # round robin
    sf.restful(
        UPSERT,
        method="PATCH",
        headers={"Sforce-Auto-Assign": "FALSE"},
        json={"allOrNone": False, "records": [lead("x:810"), lead("x:811")]},
    )
    fixed = {stored(sandbox, f"x:81{i}")["OwnerId"] for i in range(2)}  # type: ignore[index]
    assert len(fixed) == 1 and not fixed & owners


def test_soql_in_query_and_the_recorded_shape(sf: Salesforce) -> None:
    upsert(sf, [lead("x:900", Social_Handle__c="ana"), lead("x:901", Social_Handle__c="bo")])
    result = sf.query(
        "SELECT Id, Social_Profile_Id__c FROM Lead "
        "WHERE Social_Profile_Id__c IN ('x:900', 'x:901', 'x:nope') "
        "ORDER BY Social_Profile_Id__c DESC"
    )
    assert result["totalSize"] == 2 and result["done"] is True
    assert [r["Social_Profile_Id__c"] for r in result["records"]] == ["x:901", "x:900"]
    assert set(result["records"][0]) == {"attributes", "Id", "Social_Profile_Id__c"}
    recording = RECORDINGS / "query_lead_by_email_found.json"
    if recording.exists():
        recorded = json.loads(recording.read_text())["body"]
        assert set(result) == set(recorded)
        assert set(result["records"][0]["attributes"]) == set(recorded["records"][0]["attributes"])
    none = sf.query("SELECT Id FROM Lead WHERE Email = 'nobody@example.com'")
    assert none == {"totalSize": 0, "done": True, "records": []}


def test_injection_text_is_data(sf: Salesforce) -> None:
    upsert(
        sf, [lead("x:950", Social_Handle__c="x"), lead("x:951", Social_Handle__c="x' OR Name != '")]
    )
    attack = (
        "SELECT Id, Social_Profile_Id__c FROM Lead WHERE Social_Handle__c = 'x\\' OR Name != \\''"
    )
    result = sf.query(attack)
    assert [r["Social_Profile_Id__c"] for r in result["records"]] == ["x:951"]
    assert (
        sf.query("SELECT Id FROM Lead WHERE Social_Handle__c = 'x\\' OR Name != \\'x'")["totalSize"]
        == 0
    )


def test_malformed_and_unknown_field_queries_are_400(sf: Salesforce) -> None:
    with pytest.raises(SalesforceMalformedRequest) as malformed:
        sf.query("SELECT Id FRM Lead")
    assert malformed.value.content[0]["errorCode"] == "MALFORMED_QUERY"
    with pytest.raises(SalesforceMalformedRequest) as mixed:
        sf.query("SELECT Id FROM Lead WHERE LastName = 'a' AND Company = 'b' OR Title = 'c'")
    assert mixed.value.content[0]["errorCode"] == "MALFORMED_QUERY"
    with pytest.raises(SalesforceMalformedRequest) as unknown:
        sf.query("SELECT Id, Foo__c FROM Lead")
    assert unknown.value.content[0]["errorCode"] == "INVALID_FIELD"
    assert "No such column 'Foo__c' on entity 'Lead'" in unknown.value.content[0]["message"]


def test_query_pages_past_2000_rows_through_next_records_url(
    sandbox: Sandbox, sf: Salesforce
) -> None:
    for batch in range(11):
        results = upsert(
            sf, [lead(f"x:bulk-{batch}-{i}", Social_Handle__c="bulk") for i in range(200)]
        )
        assert all(r["success"] for r in results)
    first = sf.query("SELECT Id FROM Lead WHERE Social_Handle__c = 'bulk'")
    assert first["totalSize"] == 2200 and first["done"] is False and len(first["records"]) == 2000
    assert first["nextRecordsUrl"].startswith("/services/data/v60.0/query/01g")
    assert first["nextRecordsUrl"].endswith("-2000")
    second = sf.query_more(first["nextRecordsUrl"], identifier_is_url=True)
    assert second["done"] is True and len(second["records"]) == 200
    ids = {r["Id"] for r in first["records"] + second["records"]}
    assert len(ids) == 2200
    assert (
        len(sf.query_all("SELECT Id FROM Lead WHERE Social_Handle__c = 'bulk'")["records"]) == 2200
    )


def test_state_lists_leads_and_counts_write_calls(
    sandbox: Sandbox, sf: Salesforce, http: requests.Session
) -> None:
    sandbox.reset_calls()
    upsert(sf, [lead("x:state-1")])
    sf.query("SELECT Id FROM Lead LIMIT 1")
    state = http.get(sandbox.urls["x"] + "/_sandbox/state", timeout=10).json()
    assert state["calls"]["salesforce"] == {
        "GET /services/data/v60.0/query": 1,
        "PATCH /services/data/v60.0/composite/sobjects/:sobject/:field": 1,
    }
    assert state["writes"]["salesforce"] == 1 and state["reads"]["salesforce"] == 1
    assert any(r["Social_Profile_Id__c"] == "x:state-1" for r in state["salesforce"]["Lead"])
    assert state["salesforce"]["Contact"] == []
    assert sf.api_usage["api-usage"].total == 15000


def test_composite_runs_queries_in_one_call_and_answers_each_on_its_own(
    sandbox: Sandbox, http: requests.Session, token: str
) -> None:
    base = f"{sandbox.urls['salesforce']}/services/data/v60.0"
    headers = {"Authorization": f"Bearer {token}"}
    query = "/services/data/v60.0/query/?q="

    def composite(subrequests: list[dict[str, Any]]) -> requests.Response:
        body = {"allOrNone": False, "compositeRequest": subrequests}
        return http.post(f"{base}/composite", json=body, headers=headers, timeout=10)

    handles = ", ".join(f"'h{n:05d}'" for n in range(3000))  # far over a URI's 16,384 bytes
    answer = composite(
        [
            {"method": "GET", "url": query + "SELECT+Id+FROM+Lead+LIMIT+1", "referenceId": "a"},
            {"method": "GET", "url": query + "SELECT+Nope+FROM+Lead", "referenceId": "b"},
            {"method": "GET", "url": "/services/data/v60.0/nothing/here", "referenceId": "c"},
            {
                "method": "GET",
                "url": query + f"SELECT Id FROM Lead WHERE Social_Handle__c IN ({handles})",
                "referenceId": "d",
            },
        ]
    )
    assert answer.status_code == 200
    items = answer.json()["compositeResponse"]
    assert [(i["referenceId"], i["httpStatusCode"]) for i in items] == [
        ("a", 200),
        ("b", 400),
        ("c", 404),
        ("d", 200),
    ]
    assert set(items[0]["body"]) >= {"totalSize", "done", "records"}
    assert items[1]["body"][0]["errorCode"] == "INVALID_FIELD"
    recording = RECORDINGS / "composite_subrequest_not_found.json"
    if recording.exists():
        recorded = json.loads(recording.read_text())["body"]["compositeResponse"][0]
        assert set(items[2]) == set(recorded)
        assert items[2]["body"] == recorded["body"]
    six = [
        {"method": "GET", "url": query + "SELECT+Id+FROM+Lead", "referenceId": f"q{n}"}
        for n in range(6)
    ]
    refused = composite(six)  # five queries at most per composite request
    assert refused.status_code == 400 and refused.json()[0]["errorCode"] == "LIMIT_EXCEEDED"
