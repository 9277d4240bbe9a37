"""The Zendesk simulator answers like Zendesk Support, over real HTTPS, and keeps the truth."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox.server import Sandbox, start_sandbox
from socialcrm.config import load_settings, resolve_secret

SHARED = Path(__file__).resolve().parents[2] / "shared"
RECORDINGS = SHARED / "recordings" / "zendesk"
SAMPLES = SHARED / "api-samples"
AUTH = ("agent@sandbox.example/token", "sandbox-zendesk-token")
_serial = count(1)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    folder = tmp_path_factory.mktemp("sandbox-zendesk")
    box = start_sandbox(write_config=folder / "socialcrm.yaml")
    yield box
    box.stop()


@pytest.fixture(scope="module")
def zd(sandbox: Sandbox) -> requests.Session:
    session = requests.Session()
    session.verify = str(sandbox.ca_path)
    session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise override verify
    session.auth = AUTH
    return session


def url(sandbox: Sandbox, path: str) -> str:
    return sandbox.urls["zendesk"] + path


def recorded(name: str, folder: Path = RECORDINGS) -> dict[str, Any]:
    path = folder / name
    if not path.exists():
        pytest.skip("shared recordings not available")
    return dict(json.loads(path.read_text()))


def new_user(zd: requests.Session, sandbox: Sandbox, **fields: Any) -> dict[str, Any]:
    n = next(_serial)
    user = {"name": f"Person {n}", "external_id": f"x-{1000 + n}", "role": "end-user", **fields}
    response = zd.post(url(sandbox, "/api/v2/users/create_or_update"), json={"user": user})
    assert response.status_code in (200, 201), response.text
    return dict(response.json()["user"])


def new_ticket(zd: requests.Session, sandbox: Sandbox, **fields: Any) -> dict[str, Any]:
    n = next(_serial)
    ticket = {
        "subject": f"DM from customer {n}",
        "comment": {"body": "my invoice is wrong", "public": True},
        "external_id": f"x-dm-{n}",
        "tags": ["social", "x"],
        "priority": "normal",
        "type": "question",
        **fields,
    }
    response = zd.post(url(sandbox, "/api/v2/tickets.json"), json={"ticket": ticket})
    assert response.status_code == 201, response.text
    return dict(response.json()["ticket"])


def put_ticket(
    zd: requests.Session, sandbox: Sandbox, ticket_id: int, **fields: Any
) -> requests.Response:
    return zd.put(url(sandbox, f"/api/v2/tickets/{ticket_id}"), json={"ticket": fields})


def test_wrong_credentials_get_the_real_401(sandbox: Sandbox) -> None:
    sample = recorded("zendesk_error_401.json", SAMPLES)
    session = requests.Session()
    session.verify = str(sandbox.ca_path)
    session.trust_env = False
    for auth in (None, ("agent@sandbox.example/token", "nope"), ("agent@sandbox.example", AUTH[1])):
        response = session.get(url(sandbox, "/api/v2/tickets.json"), auth=auth, timeout=10)
        assert response.status_code == 401
        assert response.json() == sample["body"]
        assert response.headers["WWW-Authenticate"] == sample["headers"]["www-authenticate"]
        assert response.headers["X-Rate-Limit"] == "700"


def test_create_or_update_matches_by_external_id_and_has_the_recorded_shape(
    sandbox: Sandbox, zd: requests.Session
) -> None:
    created_rec = recorded("user_create_or_update_201.json")
    body = {"user": {"name": "Jane Doe", "external_id": "x-906948460078698496", "role": "end-user"}}
    first = zd.post(url(sandbox, "/api/v2/users/create_or_update.json"), json=body, timeout=10)
    assert first.status_code == 201
    assert first.headers["Location"] == first.json()["user"]["url"]
    assert first.headers["Content-Type"] == created_rec["headers"]["content-type"]
    assert set(first.json()["user"]) == set(created_rec["body"]["user"])
    assert first.headers["X-Rate-Limit"] == created_rec["headers"]["x-rate-limit"]
    assert int(first.headers["X-Rate-Limit-Remaining"]) < 700
    body["user"].update(name="Jane D.", email="jane@example.com")
    second = zd.post(url(sandbox, "/api/v2/users/create_or_update"), json=body, timeout=10)
    assert second.status_code == 200
    user = second.json()["user"]
    assert user["id"] == first.json()["user"]["id"]
    assert (user["name"], user["email"]) == ("Jane D.", "jane@example.com")
    # Matched by email when the external id is unknown: the user adopts the new external id.
    by_email = {"user": {"name": "J", "email": "JANE@example.com", "external_id": "x-42"}}
    third = zd.post(url(sandbox, "/api/v2/users/create_or_update"), json=by_email, timeout=10)
    assert third.status_code == 200 and third.json()["user"]["id"] == user["id"]

    search_rec = recorded("users_search_by_external_id.json")["body"]
    found = zd.get(url(sandbox, "/api/v2/users/search.json"), params={"external_id": "x-42"}).json()
    assert set(found) == set(search_rec)
    assert found["count"] == 1 and found["users"][0]["id"] == user["id"]
    assert zd.get(url(sandbox, f"/api/v2/users/{user['id']}")).json()["user"]["name"] == "J"
    renamed = zd.put(url(sandbox, f"/api/v2/users/{user['id']}.json"), json={"user": {"name": "X"}})
    assert renamed.status_code == 200 and renamed.json()["user"]["name"] == "X"


def test_user_validation_errors_use_the_record_invalid_shape(
    sandbox: Sandbox, zd: requests.Session
) -> None:
    rec = recorded("user_create_or_update_422.json")
    bad_email = {"user": {"name": "A", "email": "badmail", "external_id": "x-bad"}}
    response = zd.post(url(sandbox, "/api/v2/users/create_or_update"), json=bad_email)
    assert response.status_code == 422
    assert response.json() == rec["body"]
    nameless = zd.post(
        url(sandbox, "/api/v2/users/create_or_update"), json={"user": {"external_id": "x-none"}}
    )
    assert nameless.status_code == 422
    assert set(nameless.json()) == {"error", "description", "details"}
    assert nameless.json()["details"]["name"][0]["description"].startswith("Name:")


def test_ticket_create_replays_on_the_same_idempotency_key(
    sandbox: Sandbox, zd: requests.Session
) -> None:
    requester = new_user(zd, sandbox)
    ticket = {
        "subject": "Login problem",
        "comment": {"body": "je n'arrive pas à me connecter", "public": True},
        "requester_id": requester["id"],
        "external_id": "x-dm-idem-1",
        "tags": ["social"],
    }
    headers = {"Idempotency-Key": "dm-2119326798645825189"}
    path = url(sandbox, "/api/v2/tickets.json")
    first = zd.post(path, json={"ticket": ticket}, headers=headers, timeout=10)
    second = zd.post(path, json={"ticket": ticket}, headers=headers, timeout=10)
    assert first.status_code == second.status_code == 201
    assert first.headers["x-idempotency-lookup"] == "miss"
    assert second.headers["x-idempotency-lookup"] == "hit"
    assert first.json() == second.json()
    assert first.headers["Location"].endswith(
        f"/api/v2/tickets/{first.json()['ticket']['id']}.json"
    )
    body = first.json()
    assert body["ticket"]["status"] == "new" and body["ticket"]["via"]["channel"] == "api"
    assert body["ticket"]["description"] == ticket["comment"]["body"]
    assert body["audit"]["events"][0]["type"] == "Comment"
    held = [t for t in sandbox.state()["zendesk"]["tickets"] if t["external_id"] == "x-dm-idem-1"]
    assert len(held) == 1

    changed = dict(ticket, subject="Another subject")
    clash = zd.post(path, json={"ticket": changed}, headers=headers, timeout=10)
    assert clash.status_code == 400
    assert clash.json()["error"] == "IdempotentRequestError"
    assert "description" in clash.json()


def test_invalid_tickets_are_record_invalid(sandbox: Sandbox, zd: requests.Session) -> None:
    sample = recorded("zendesk_error_422_record_invalid.json", SAMPLES)["body"]
    path = url(sandbox, "/api/v2/tickets")
    no_subject = zd.post(path, json={"ticket": {"comment": {"body": "hi"}}})
    assert no_subject.status_code == 422
    assert no_subject.json() == sample
    no_comment = zd.post(path, json={"ticket": {"subject": "hi"}})
    assert no_comment.status_code == 422
    assert no_comment.json()["details"]["base"][0]["field_key"] == "description"
    unknown = zd.post(
        path, json={"ticket": {"subject": "s", "comment": {"body": "b"}, "requester_id": 1}}
    )
    assert unknown.status_code == 422 and "requester" in unknown.json()["details"]
    missing = zd.get(url(sandbox, "/api/v2/tickets/987654321.json"))
    assert missing.status_code == 404
    assert missing.json() == {"error": "RecordNotFound", "description": "Not found"}


def test_requester_object_creates_or_reuses_the_end_user(
    sandbox: Sandbox, zd: requests.Session
) -> None:
    who = {"name": "Zoé Lefèvre", "email": "zoe@example.fr", "external_id": "x-777"}
    first = new_ticket(zd, sandbox, requester=who)
    second = new_ticket(zd, sandbox, requester=dict(who, name="Someone else"))
    assert first["requester_id"] == second["requester_id"]
    user = zd.get(url(sandbox, f"/api/v2/users/{first['requester_id']}")).json()["user"]
    assert (user["name"], user["external_id"], user["role"]) == ("Zoé Lefèvre", "x-777", "end-user")


def test_external_id_is_a_filter_not_a_key(sandbox: Sandbox, zd: requests.Session) -> None:
    one = new_ticket(zd, sandbox, external_id="x-conv-shared")
    two = new_ticket(zd, sandbox, external_id="x-conv-shared")
    body = zd.get(url(sandbox, "/api/v2/tickets.json"), params={"external_id": "x-conv-shared"})
    listing = body.json()
    assert set(listing) == {"tickets", "next_page", "previous_page", "count"}
    assert listing["count"] == 2
    assert [t["id"] for t in listing["tickets"]] == [one["id"], two["id"]]
    none = zd.get(url(sandbox, "/api/v2/tickets"), params={"external_id": "nobody"}).json()
    assert none == {"tickets": [], "next_page": None, "previous_page": None, "count": 0}


def test_comments_append_and_a_solved_ticket_reopens_only_when_asked(
    sandbox: Sandbox, zd: requests.Session
) -> None:
    requester = new_user(zd, sandbox)
    ticket = new_ticket(zd, sandbox, requester_id=requester["id"])
    update = put_ticket(
        zd, sandbox, ticket["id"], comment={"body": "New DM: any update?", "public": False}
    )
    assert update.status_code == 200
    assert set(update.json()) == {"ticket", "audit"}
    assert update.json()["audit"]["events"][0]["public"] is False
    solved = put_ticket(zd, sandbox, ticket["id"], status="solved")
    assert solved.json()["ticket"]["status"] == "solved"
    assert solved.json()["audit"]["events"][0]["previous_value"] == "new"
    from_customer = {"body": "still broken", "public": True, "author_id": requester["id"]}
    again = put_ticket(zd, sandbox, ticket["id"], comment=from_customer)
    assert again.json()["ticket"]["status"] == "solved"  # no automatic reopening via the API
    reopened = put_ticket(
        zd, sandbox, ticket["id"], status="open", comment=from_customer, additional_tags=["dm"]
    )
    assert reopened.json()["ticket"]["status"] == "open"
    assert reopened.json()["ticket"]["tags"] == ["social", "x", "dm"]

    comments = zd.get(url(sandbox, f"/api/v2/tickets/{ticket['id']}/comments.json")).json()
    assert set(comments) == {"comments", "next_page", "previous_page", "count"}
    assert comments["count"] == 4
    bodies = [c["body"] for c in comments["comments"]]
    assert bodies == ["my invoice is wrong", "New DM: any update?", "still broken", "still broken"]
    first = comments["comments"][0]
    keys = {"id", "type", "body", "html_body", "plain_body", "public", "author_id", "created_at"}
    assert keys <= set(first) and first["type"] == "Comment"
    assert [c["author_id"] for c in comments["comments"]][2] == requester["id"]
    assert [c["public"] for c in comments["comments"]] == [True, False, True, True]


def test_closed_tickets_refuse_updates(sandbox: Sandbox, zd: requests.Session) -> None:
    ticket = new_ticket(zd, sandbox)
    assert put_ticket(zd, sandbox, ticket["id"], status="closed").status_code == 200
    refused = put_ticket(zd, sandbox, ticket["id"], comment={"body": "hello?"})
    assert refused.status_code == 422
    body = refused.json()
    assert body["error"] == "RecordInvalid"
    assert body["details"]["status"][0]["description"] == "Status: closed prevents ticket update"
    aged = new_ticket(zd, sandbox)
    put_ticket(zd, sandbox, aged["id"], status="solved")
    assert sandbox.close_solved_tickets() >= 1
    assert zd.get(url(sandbox, f"/api/v2/tickets/{aged['id']}")).json()["ticket"]["status"] == (
        "closed"
    )


def test_every_nth_request_gets_a_plain_text_429(sandbox: Sandbox, zd: requests.Session) -> None:
    sample = recorded("zendesk_429.json", SAMPLES)
    sandbox.set_options(zendesk_429_every=2)
    try:
        answers = [zd.get(url(sandbox, "/api/v2/tickets.json")) for _ in range(4)]
    finally:
        sandbox.set_options(zendesk_429_every=0)
    limited = [r for r in answers if r.status_code == 429]
    assert len(limited) == 2 and all(r.status_code == 200 for r in answers if r not in limited)
    for response in limited:
        assert response.headers["Retry-After"] == "1"
        assert response.headers["Content-Type"] == sample["headers"]["content-type"]
        with pytest.raises(ValueError):
            response.json()
        assert response.text


def test_per_minute_limit_answers_429_until_the_window_ends(
    sandbox: Sandbox, zd: requests.Session
) -> None:
    sandbox.set_options(zendesk_rate_limit=2, zendesk_window_seconds=1)
    try:
        answers = [zd.get(url(sandbox, "/api/v2/users/me")) for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 429]
        assert [r.headers["X-Rate-Limit-Remaining"] for r in answers[:2]] == ["1", "0"]
        assert answers[2].headers["Retry-After"] == "1"
        assert answers[2].headers["Content-Type"].startswith("text/plain")
        time.sleep(1.05)
        assert zd.get(url(sandbox, "/api/v2/users/me")).status_code == 200
    finally:
        sandbox.set_options(zendesk_rate_limit=None, zendesk_window_seconds=60)
    assert zd.get(url(sandbox, "/api/v2/users/me")).headers["X-Rate-Limit"] == "700"


def test_offset_and_cursor_pagination_visit_every_ticket_once(
    sandbox: Sandbox, zd: requests.Session
) -> None:
    for _ in range(5):
        new_ticket(zd, sandbox)
    expected = [t["id"] for t in sandbox.state()["zendesk"]["tickets"]]
    seen: list[int] = []
    next_url: str | None = url(sandbox, "/api/v2/tickets.json?per_page=2")
    while next_url:
        page = zd.get(next_url).json()
        assert page["count"] == len(expected)
        seen += [t["id"] for t in page["tickets"]]
        next_url = page["next_page"]
    assert seen == expected

    seen = []
    page = zd.get(url(sandbox, "/api/v2/tickets"), params={"page[size]": 3}).json()
    while True:
        assert set(page) == {"tickets", "meta", "links"}
        assert set(page["meta"]) == {"has_more", "after_cursor", "before_cursor"}
        seen += [t["id"] for t in page["tickets"]]
        if not page["meta"]["has_more"]:
            break
        page = zd.get(page["links"]["next"]).json()
    assert seen == expected
    back = zd.get(page["links"]["prev"]).json()
    assert [t["id"] for t in back["tickets"]] == seen[
        -len(page["tickets"]) - 3 : -len(page["tickets"])
    ]


def test_create_many_runs_as_a_job(sandbox: Sandbox, zd: requests.Session) -> None:
    tickets = [
        {"subject": "bulk 1", "comment": {"body": "one"}, "external_id": "x-bulk-1"},
        {"comment": {"body": "no subject"}},
        {"subject": "bulk 3", "comment": {"body": "three"}},
    ]
    queued = zd.post(url(sandbox, "/api/v2/tickets/create_many.json"), json={"tickets": tickets})
    assert queued.status_code == 200
    job = queued.json()["job_status"]
    assert (job["status"], job["total"], job["results"]) == ("queued", 3, None)
    statuses = []
    for _ in range(3):
        job = zd.get(job["url"]).json()["job_status"]
        statuses.append(job["status"])
        if job["status"] == "completed":
            break
    assert statuses == ["working", "completed"]
    results = job["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert "id" in results[0] and "id" in results[2]
    assert results[1]["error"] == "RecordInvalid" and "Subject" in results[1]["details"]
    listing = zd.get(url(sandbox, "/api/v2/tickets"), params={"external_id": "x-bulk-1"}).json()
    assert listing["tickets"][0]["id"] == results[0]["id"]

    too_many = [{"subject": str(i), "comment": {"body": "b"}} for i in range(101)]
    refused = zd.post(url(sandbox, "/api/v2/tickets/create_many"), json={"tickets": too_many})
    assert refused.status_code == 400
    assert refused.json() == {
        "error": "TooManyValues",
        "description": "Parameter  cannot specify more than 100 values",
        "max_count": 100,
    }


def test_state_holds_tickets_with_comments_and_counts_calls(
    sandbox: Sandbox, zd: requests.Session
) -> None:
    sandbox.reset_calls()
    ticket = new_ticket(zd, sandbox)
    put_ticket(zd, sandbox, ticket["id"], comment={"body": "second"})
    zd.get(url(sandbox, f"/api/v2/tickets/{ticket['id']}.json"))
    zd.get(url(sandbox, "/api/v2/tickets"), params={"external_id": ticket["external_id"]})
    state = sandbox.state()
    assert state["calls"]["zendesk"] == {
        "GET /api/v2/tickets": 1,
        "GET /api/v2/tickets/:id": 1,
        "POST /api/v2/tickets": 1,
        "PUT /api/v2/tickets/:id": 1,
    }
    assert state["writes"]["zendesk"] == 2 and state["reads"]["zendesk"] == 2
    held = {t["id"]: t for t in state["zendesk"]["tickets"]}[ticket["id"]]
    assert [c["body"] for c in held["comments"]] == ["my invoice is wrong", "second"]
    assert any(u["email"] == "agent@sandbox.example" for u in state["zendesk"]["users"])
    unknown = zd.get(url(sandbox, "/api/v2/nothing/here"))
    assert unknown.status_code == 404


def test_written_config_validates_and_points_the_helpdesk_here(sandbox: Sandbox) -> None:
    assert sandbox.config_path is not None
    settings = load_settings(sandbox.config_path)
    helpdesk = settings.helpdesk
    assert helpdesk is not None and helpdesk.kind == "zendesk"
    assert helpdesk.base_url == sandbox.urls["zendesk"]
    assert helpdesk.email == "agent@sandbox.example"
    assert helpdesk.ca_bundle == sandbox.ca_path
    token = resolve_secret(helpdesk.api_token, what="helpdesk.api_token")
    assert token.get_secret_value() == "sandbox-zendesk-token"
    dm_token = settings.accounts[0].dm_token
    assert dm_token is not None
    assert resolve_secret(dm_token, what="dm_token").get_secret_value() == "sandbox-x-user-token"


def _free_port_triple() -> int:
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base > 65000:
            continue
        try:
            for offset in (1, 2):
                with socket.socket() as other:
                    other.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    pytest.skip("no three consecutive free ports")


def test_fixed_port_puts_zendesk_on_port_plus_two(tmp_path: Path) -> None:
    base = _free_port_triple()
    with start_sandbox(port=base, workdir=tmp_path) as box:
        assert box.urls["zendesk"] == f"https://127.0.0.1:{base + 2}"


def test_lists_come_100_a_page_and_the_connector_reads_every_page(
    zd: requests.Session, sandbox: Sandbox
) -> None:
    """A long conversation: the marker of message 140 is on the comments' second page, and
    the check whether a comment already landed must find it there."""
    from connectors.helpdesk import zendesk

    ticket = new_ticket(zd, sandbox)
    for n in range(150):
        response = put_ticket(
            zd, sandbox, ticket["id"], comment={"body": f"msg {n} [ref x:dm:{n}]", "public": True}
        )
        assert response.status_code == 200
    first = zd.get(url(sandbox, f"/api/v2/tickets/{ticket['id']}/comments")).json()
    assert len(first["comments"]) == 100 and first["count"] == 151
    assert first["next_page"].startswith(sandbox.urls["zendesk"] + "/api/v2/tickets/")
    assert first["previous_page"] is None
    last = zd.get(first["next_page"]).json()
    assert len(last["comments"]) == 51 and last["next_page"] is None
    assert last["previous_page"]
    settings = load_settings(sandbox.config_path)
    assert settings.helpdesk is not None
    client = zendesk.connect(settings.helpdesk)
    comments = zendesk.ticket_comments(client, ticket["id"])
    assert len(comments) == 151
    assert any("[ref x:dm:140]" in c["body"] for c in comments)
