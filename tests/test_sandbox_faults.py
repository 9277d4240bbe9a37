"""Injected faults answer in each system's real wire shape; hostile X records are served
through the normal endpoints and flagged in the ground truth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox.server import Sandbox, start_sandbox

GOOD = {"client_id": "sandbox-client-id", "client_secret": "sandbox-client-secret"}
SF_DATA = "/services/data/v60.0"
UPSERT = f"{SF_DATA}/composite/sobjects/Lead/Social_Profile_Id__c"
ZD_AUTH = ("agent@sandbox.example/token", "sandbox-zendesk-token")
OFF = {"x": {"rate": 0}, "salesforce": {"rate": 0}, "zendesk": {"rate": 0}}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = start_sandbox(workdir=tmp_path_factory.mktemp("sandbox-faults"))
    yield box
    box.stop()


@pytest.fixture(autouse=True)
def faults_off(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts and ends with no faults and zeroed counters."""
    if "sandbox" not in request.fixturenames:
        yield
        return
    box: Sandbox = request.getfixturevalue("sandbox")
    box.set_options(faults=OFF)
    box.reset_calls()
    yield
    box.set_options(faults=OFF)


def session(box: Sandbox) -> requests.Session:
    http = requests.Session()
    http.verify = str(box.ca_path)
    http.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise override verify
    return http


@pytest.fixture(scope="module")
def x(sandbox: Sandbox) -> requests.Session:
    http = session(sandbox)
    http.headers["Authorization"] = "Bearer sandbox-x-bearer"
    return http


@pytest.fixture(scope="module")
def zd(sandbox: Sandbox) -> requests.Session:
    http = session(sandbox)
    http.auth = ZD_AUTH
    return http


def sf_token(box: Sandbox) -> str:
    response = session(box).post(
        f"{box.urls['salesforce']}/services/oauth2/token",
        data={"grant_type": "client_credentials", **GOOD},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.fixture(scope="module")
def sf(sandbox: Sandbox) -> requests.Session:
    http = session(sandbox)
    http.headers["Authorization"] = f"Bearer {sf_token(sandbox)}"
    return http


def mentions_url(box: Sandbox) -> str:
    return f"{box.urls['x']}/2/users/{box.state()['x']['brand']['id']}/mentions"


def lead(ext: str) -> dict[str, Any]:
    return {
        "attributes": {"type": "Lead"},
        "Social_Profile_Id__c": ext,
        "LastName": "Doe",
        "Company": "Acme",
    }


def stored_ids(box: Sandbox) -> set[str]:
    return {r["Social_Profile_Id__c"] for r in box.state()["salesforce"]["Lead"]}


def only(system: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {system: {"rate": 1.0, "kinds": {kind: 1}}, **extra}


# --- 429 and 503 -------------------------------------------------------------------------


def test_x_429_is_problem_json_with_exhausted_rate_headers(
    sandbox: Sandbox, x: requests.Session
) -> None:
    url = mentions_url(sandbox)
    sandbox.set_options(faults=only("x", "429"))
    before = int(time.time())
    response = x.get(url, timeout=10)
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "title": "Too Many Requests",
        "type": "about:blank",
        "status": 429,
        "detail": "Too Many Requests",
    }
    assert response.headers["x-rate-limit-remaining"] == "0"
    assert response.headers["x-rate-limit-limit"] == "450"
    assert 1 <= int(response.headers["x-rate-limit-reset"]) - before <= 3
    assert sandbox.state()["faults"]["x"] == {"429": 1}


def test_zendesk_429_is_plain_text_with_retry_after(sandbox: Sandbox, zd: requests.Session) -> None:
    sandbox.set_options(faults=only("zendesk", "429"))
    response = zd.get(f"{sandbox.urls['zendesk']}/api/v2/tickets.json", timeout=10)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.headers["content-type"].startswith("text/plain")
    assert "X-Rate-Limit" in response.headers
    with pytest.raises(ValueError):
        json.loads(response.text)
    assert sandbox.state()["faults"]["zendesk"] == {"429": 1}


def test_503_bodies_follow_each_system(
    sandbox: Sandbox, x: requests.Session, sf: requests.Session, zd: requests.Session
) -> None:
    url = mentions_url(sandbox)
    sandbox.set_options(
        faults={**only("x", "503"), **only("salesforce", "503"), **only("zendesk", "503")}
    )
    answer = x.get(url, timeout=10)
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json() == {
        "title": "Service Unavailable",
        "type": "about:blank",
        "status": 503,
        "detail": "Service Unavailable",
    }

    answer = sf.get(
        f"{sandbox.urls['salesforce']}{SF_DATA}/query",
        params={"q": "SELECT Id FROM Lead"},
        timeout=10,
    )
    assert answer.status_code == 503
    assert answer.json() == [
        {"message": "Server temporarily unavailable", "errorCode": "SERVER_UNAVAILABLE"}
    ]

    kinds = set()
    for _ in range(12):  # JSON or a plain-text maintenance page, both with Retry-After
        answer = zd.get(f"{sandbox.urls['zendesk']}/api/v2/users/me.json", timeout=10)
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == "1"
        if answer.headers["content-type"].startswith("application/json"):
            assert answer.json()["error"] == "ServiceUnavailable"
            kinds.add("json")
        else:
            assert answer.headers["content-type"].startswith("text/plain")
            kinds.add("text")
    assert kinds == {"json", "text"}
    faults = sandbox.state()["faults"]
    assert faults == {"x": {"503": 1}, "salesforce": {"503": 1}, "zendesk": {"503": 12}}


# --- resets and slow answers -------------------------------------------------------------


def test_reset_drops_the_connection_and_sometimes_after_the_write(
    sandbox: Sandbox, sf: requests.Session, x: requests.Session
) -> None:
    sandbox.set_options(faults=only("salesforce", "reset", seed=11))
    sent: list[str] = []
    for n in range(24):
        ext = f"x-reset-{n}"
        sent.append(ext)
        body = {"allOrNone": False, "records": [lead(ext)]}
        with pytest.raises(requests.ConnectionError):
            sf.patch(f"{sandbox.urls['salesforce']}{UPSERT}", json=body, timeout=10)
    stored = stored_ids(sandbox) & set(sent)
    state = sandbox.state()
    phases = state["fault_phases"]["salesforce"]
    # The client saw 24 errors, yet the writes that were applied before the reset are there.
    assert 0 < len(stored) < len(sent)
    assert phases == {"reset_after": len(stored), "reset_before": len(sent) - len(stored)}
    assert state["faults"]["salesforce"] == {"reset": 24}

    url = mentions_url(sandbox)
    sandbox.set_options(faults=only("x", "reset"))
    with pytest.raises(requests.ConnectionError):
        x.get(url, timeout=10)
    sandbox.set_options(faults=OFF)
    assert x.get(url, timeout=10).status_code == 200  # the pool recovers


def test_slow_answer_outlasts_a_short_client_timeout(sandbox: Sandbox, x: requests.Session) -> None:
    url = mentions_url(sandbox)
    sandbox.set_options(faults=only("x", "slow", slow_seconds=1.0))
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        x.get(url, timeout=0.5)
    assert time.monotonic() - started < 1.0
    assert sandbox.state()["faults"]["x"] == {"slow": 1}
    sandbox.set_options(faults={**OFF, "slow_seconds": 3.0})


def test_slow_answer_arrives_when_the_client_waits(sandbox: Sandbox, x: requests.Session) -> None:
    url = mentions_url(sandbox)
    sandbox.set_options(faults=only("x", "slow", slow_seconds=0.3))
    started = time.monotonic()
    assert x.get(url, timeout=5).status_code == 200
    assert time.monotonic() - started >= 0.3
    sandbox.set_options(faults={**OFF, "slow_seconds": 3.0})


# --- Salesforce session, limits and partial collections ----------------------------------


def test_expired_session_revokes_the_token_until_a_new_one_is_issued(sandbox: Sandbox) -> None:
    token = sf_token(sandbox)
    http = session(sandbox)
    query = f"{sandbox.urls['salesforce']}{SF_DATA}/query"
    params = {"q": "SELECT Id FROM Lead LIMIT 1"}
    sandbox.set_options(faults=only("salesforce", "expired_session"))
    answer = http.get(
        query, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 401
    assert answer.json() == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]
    fresh = sf_token(sandbox)  # the token endpoint itself is never faulted
    sandbox.set_options(faults=OFF)
    again = http.get(query, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert again.status_code == 401
    ok = http.get(query, params=params, headers={"Authorization": f"Bearer {fresh}"}, timeout=10)
    assert ok.status_code == 200
    assert sandbox.state()["faults"]["salesforce"] == {"expired_session": 1}


def test_request_limit_is_a_403_with_limit_info(sandbox: Sandbox, sf: requests.Session) -> None:
    sandbox.set_options(faults=only("salesforce", "request_limit"))
    answer = sf.get(f"{sandbox.urls['salesforce']}{SF_DATA}/limits", timeout=10)
    assert answer.status_code == 403
    assert answer.json() == [
        {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
    ]
    assert answer.headers["Sforce-Limit-Info"].startswith("api-usage=")


def test_api_usage_can_be_set_near_the_daily_limit(sandbox: Sandbox, sf: requests.Session) -> None:
    sandbox.set_options(sf_daily_limit=100, sf_api_usage=98)
    try:
        limits = f"{sandbox.urls['salesforce']}{SF_DATA}/limits"
        first = sf.get(limits, timeout=10)
        assert first.status_code == 200
        assert first.headers["Sforce-Limit-Info"] == "api-usage=99/100"
        assert sf.get(limits, timeout=10).headers["Sforce-Limit-Info"] == "api-usage=100/100"
        over = sf.get(limits, timeout=10)
        assert over.status_code == 403
        assert over.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    finally:
        sandbox.set_options(sf_daily_limit=15000, sf_api_usage=0)


def test_partial_collection_fails_some_records_with_unable_to_lock_row(
    sandbox: Sandbox, sf: requests.Session
) -> None:
    sandbox.set_options(faults=only("salesforce", "partial"))
    exts = [f"x-partial-{n}" for n in range(20)]
    body = {"allOrNone": False, "records": [lead(e) for e in exts]}
    answer = sf.patch(f"{sandbox.urls['salesforce']}{UPSERT}", json=body, timeout=10)
    assert answer.status_code == 200
    results = answer.json()
    failed = {e for e, r in zip(exts, results, strict=True) if not r["success"]}
    assert 0 < len(failed) < len(exts)
    for ext, result in zip(exts, results, strict=True):
        if ext in failed:
            (error,) = result["errors"]
            assert error["statusCode"] == "UNABLE_TO_LOCK_ROW"
            assert error["message"].startswith(
                "unable to obtain exclusive access to this record or 1 records: "
            )
            assert "id" not in result
    stored = stored_ids(sandbox)
    assert not failed & stored
    assert set(exts) - failed <= stored
    # Only collections calls can be partial: a query in the same mode is answered normally.
    query = sf.get(
        f"{sandbox.urls['salesforce']}{SF_DATA}/query",
        params={"q": "SELECT Id FROM Lead"},
        timeout=10,
    )
    assert query.status_code == 200
    assert sandbox.state()["faults"]["salesforce"] == {"partial": 1}


# --- configuration -----------------------------------------------------------------------


def test_rate_zero_injects_nothing(
    sandbox: Sandbox, x: requests.Session, zd: requests.Session
) -> None:
    url = mentions_url(sandbox)
    sandbox.set_options(faults={"x": {"rate": 0.0}, "zendesk": {"rate": 0.0}})
    statuses = Counter(x.get(url, timeout=10).status_code for _ in range(20))
    statuses.update(
        zd.get(f"{sandbox.urls['zendesk']}/api/v2/users/me.json", timeout=10).status_code
        for _ in range(20)
    )
    assert statuses == {200: 40}
    assert sandbox.state()["faults"] == {"x": {}, "salesforce": {}, "zendesk": {}}


def test_sandbox_routes_are_never_faulted(sandbox: Sandbox) -> None:
    sandbox.set_options(fault_rate=1.0)
    http = session(sandbox)
    for system in ("x", "salesforce", "zendesk"):
        state = http.get(f"{sandbox.urls[system]}/_sandbox/state", timeout=10)
        assert state.status_code == 200
    sf_token(sandbox)  # nor is the token endpoint
    assert sandbox.state()["faults"] == {"x": {}, "salesforce": {}, "zendesk": {}}


def test_options_endpoint_sets_and_reports_faults(sandbox: Sandbox) -> None:
    http = session(sandbox)
    options = f"{sandbox.urls['x']}/_sandbox/options"
    answer = http.post(
        options, json={"faults": {"zendesk": {"rate": 0.25}, "slow_seconds": 2}}, timeout=10
    )
    assert answer.status_code == 200
    faults = answer.json()["faults"]
    assert faults["zendesk"] == {"rate": 0.25, "kinds": {"429": 1, "503": 1, "reset": 1, "slow": 1}}
    assert faults["slow_seconds"] == 2.0
    bad = http.post(options, json={"faults": {"salesforce": {"kinds": {"429": 1}}}}, timeout=10)
    assert bad.status_code == 400  # Salesforce never answers 429
    assert http.get(options, timeout=10).json()["faults"]["salesforce"]["kinds"]["partial"] == 1
    with pytest.raises(ValueError):
        sandbox.set_options(hostile=True)
    sandbox.set_options(faults={**OFF, "slow_seconds": 3.0})


def test_fault_rate_applies_the_default_mix_everywhere(tmp_path: Path) -> None:
    with start_sandbox(workdir=tmp_path, fault_rate=0.2, faults={"seed": 3}) as box:
        config = box.state()["options"]["faults"]
        assert {config[s]["rate"] for s in ("x", "salesforce", "zendesk")} == {0.2}
        assert config["salesforce"]["kinds"]["request_limit"] == 0
        assert config["seed"] == 3
        http = session(box)
        http.headers["Authorization"] = "Bearer sandbox-x-bearer"
        box.set_options(faults={"slow_seconds": 0.05})
        url = mentions_url(box)
        outcomes: Counter[str] = Counter()
        for _ in range(60):
            try:
                outcomes[str(http.get(url, timeout=5).status_code)] += 1
            except requests.ConnectionError:
                outcomes["reset"] += 1
        counted = box.state()["faults"]["x"]
        assert 0 < sum(counted.values()) < 30
        assert outcomes["429"] == counted.get("429", 0)
        assert outcomes["reset"] == counted.get("reset", 0)


def test_cli_takes_fault_rate_faults_and_hostile(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REQUESTS_CA_BUNDLE"}
    faults = json.dumps({"zendesk": {"rate": 0.5, "kinds": {"503": 1}}})
    command = [sys.executable, "-m", "sandbox", "--workdir", str(tmp_path)]
    command += ["--fault-rate", "0.2", "--faults", faults, "--hostile"]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).resolve().parents[1]
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        http = requests.Session()
        http.verify = ready["ca"]
        http.trust_env = False
        state = http.get(ready["urls"]["x"] + "/_sandbox/state", timeout=10).json()
        faults = state["options"]["faults"]
        assert faults["x"]["rate"] == 0.2
        assert faults["zendesk"] == {"rate": 0.5, "kinds": {"503": 1.0}}
        assert state["x"]["hostile"]["mentions"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


# --- hostile records ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = start_sandbox(workdir=tmp_path_factory.mktemp("sandbox-hostile"), hostile=True)
    yield box
    box.stop()


def marked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "hostile" in r]


def test_mentions_serve_hostile_items(hostile: Sandbox) -> None:
    http = session(hostile)
    http.headers["Authorization"] = "Bearer sandbox-x-bearer"
    params = {"max_results": 100, "expansions": "author_id", "tweet.fields": "created_at,author_id"}
    answer = http.get(mentions_url(hostile), params=params, timeout=10)
    assert answer.status_code == 200
    assert "\\ud800" in answer.text  # a lone surrogate, legal only as a JSON escape
    body = answer.json()  # ... which requests still parses
    texts = [t.get("text") for t in body["data"]]
    assert any(isinstance(t, str) and "\ud800" in t for t in texts)
    assert any(isinstance(t, str) and "\x00" in t for t in texts)
    ids = [str(t.get("id")) for t in body["data"]]
    assert [i for i, n in Counter(ids).items() if n > 1]  # the same id twice in one page
    assert any(isinstance(t.get("id"), int) for t in body["data"])
    assert any(t.get("created_at") == "yesterday" for t in body["data"])
    assert any(t.get("created_at", "").startswith("2099") for t in body["data"])
    included = {u["id"] for u in body["includes"]["users"] if isinstance(u.get("id"), str)}
    authors = {t["author_id"] for t in body["data"] if isinstance(t.get("author_id"), str)}
    assert authors - included  # a mention whose author is missing from includes.users
    assert any(u.get("name") == "Ren\ud800e" for u in body["includes"]["users"])


def test_liking_users_and_dms_serve_hostile_users(hostile: Sandbox) -> None:
    http = session(hostile)
    http.headers["Authorization"] = "Bearer sandbox-x-bearer"
    served: list[dict[str, Any]] = []
    fields = {"user.fields": "description,public_metrics,verified,created_at"}
    for post in hostile.state()["x"]["posts"][-4:]:
        url = f"{hostile.urls['x']}/2/tweets/{post['id']}/liking_users"
        served += http.get(url, params=fields, timeout=10).json().get("data", [])
    assert any("name" not in u for u in served)
    assert any(u.get("id") is None for u in served)
    assert any(u.get("verified") == "yes" for u in served)
    assert any(len(u.get("description") or "") == 100_000 for u in served)
    assert any(
        isinstance((u.get("public_metrics") or {}).get("followers_count"), str) for u in served
    )
    http.headers["Authorization"] = "Bearer sandbox-x-user-token"
    events = http.get(
        f"{hostile.urls['x']}/2/dm_events", params={"dm_event.fields": "sender_id"}, timeout=10
    ).json()["data"]
    assert any("sender_id" not in e for e in events)
    assert any(e.get("text") == '=HYPERLINK("http://evil.example","click")' for e in events)


def test_ground_truth_flags_hostile_items(hostile: Sandbox) -> None:
    x = hostile.state()["x"]
    users, engagements, dms = marked(x["users"]), marked(x["engagements"]), marked(x["dm_events"])
    kinds = Counter(e["kind"] for e in engagements)
    assert x["hostile"] == {
        "users": len(users),
        "likes": kinds["like"],
        "mentions": kinds["mention"] + kinds["reply"],
        "quotes": kinds["quote"],
        "dms": len(dms),
    }
    assert len(users) + len(engagements) + len(dms) >= 60
    for row in [*users, *engagements, *dms]:
        assert isinstance(row["hostile"], str) and row["hostile"]
        assert isinstance(row["deliverable"], bool)
    by_what = {e["hostile"]: e for e in engagements}
    assert by_what["author_id null"]["deliverable"] is False
    assert by_what["emoji-only text"]["deliverable"] is True
    assert {u["hostile"]: u["deliverable"] for u in users}["100,000-character bio"] is True
    unusable_ids = {"id null", "id missing", "id is an empty string"}
    assert not any(u["deliverable"] for u in users if u["hostile"] in unusable_ids)


def test_hostile_false_leaves_the_seeded_world_unchanged(
    sandbox: Sandbox, hostile: Sandbox
) -> None:
    plain, rich = sandbox.state()["x"], hostile.state()["x"]
    assert "hostile" not in plain
    for key in ("users", "engagements", "dm_events"):
        assert not marked(plain[key])
        unmarked = [r for r in rich[key] if "hostile" not in r]
        assert len(unmarked) == len(plain[key])
    assert [e["id"] for e in plain["engagements"]] == [
        e["id"] for e in rich["engagements"] if "hostile" not in e
    ]
    assert len(plain["users"]) == 436 and len(plain["dm_events"]) == 264
