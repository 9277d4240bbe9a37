"""The X simulator answers like the real API v2, and its ground truth is consistent."""

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

from sandbox.dm_seed import seed_dms
from sandbox.seed import DAY_MS, build_world
from sandbox.server import Sandbox, start_sandbox
from socialcrm.config import load_settings

RECORDINGS = Path(__file__).resolve().parents[2] / "shared" / "recordings" / "x"
WEIGHTS = {"mention": 3, "reply": 3, "quote": 4, "repost": 2, "like": 1}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    folder = tmp_path_factory.mktemp("sandbox-x")
    box = start_sandbox(write_config=folder / "socialcrm.yaml")
    yield box
    box.stop()


@pytest.fixture(scope="module")
def x(sandbox: Sandbox) -> requests.Session:
    session = requests.Session()
    session.verify = str(sandbox.ca_path)
    session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise override verify
    session.headers["Authorization"] = "Bearer sandbox-x-bearer"
    return session


@pytest.fixture(scope="module")
def brand_id(sandbox: Sandbox) -> str:
    return str(sandbox.state()["x"]["brand"]["id"])


def get(x: requests.Session, sandbox: Sandbox, path: str, **params: Any) -> requests.Response:
    return x.get(sandbox.urls["x"] + path, params=params, timeout=10)


def walk(x: requests.Session, sandbox: Sandbox, path: str, **params: Any) -> list[dict[str, Any]]:
    pages = []
    token = None
    while True:
        query = dict(params, **({"pagination_token": token} if token else {}))
        response = get(x, sandbox, path, **query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body)
        token = body["meta"].get("next_token")
        if token is None:
            return pages


def truth(sandbox: Sandbox, *kinds: str) -> list[dict[str, Any]]:
    return [e for e in sandbox.state()["x"]["engagements"] if e["kind"] in kinds]


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def test_mentions_match_the_recorded_shape(
    sandbox: Sandbox, x: requests.Session, brand_id: str
) -> None:
    recording_file = RECORDINGS / "mentions_default_next_token.json"
    if not recording_file.exists():
        pytest.skip("shared recordings not available")
    recorded = json.loads(recording_file.read_text())
    response = get(x, sandbox, f"/2/users/{brand_id}/mentions")
    body = response.json()
    assert set(body) == set(recorded["body"])
    assert _shape(body["data"][0]) == _shape(recorded["body"]["data"][0])
    assert set(body["meta"]) == set(recorded["body"]["meta"])
    assert response.headers["content-type"] == recorded["headers"]["content-type"]
    for header in ("x-rate-limit-limit", "x-rate-limit-remaining", "x-rate-limit-reset"):
        assert response.headers[header].isdigit()
    assert response.headers["x-rate-limit-limit"] == recorded["headers"]["x-rate-limit-limit"]


def test_liking_users_and_retweeted_by_match_the_recorded_shapes(
    sandbox: Sandbox, x: requests.Session
) -> None:
    if not RECORDINGS.exists():
        pytest.skip("shared recordings not available")
    post = sandbox.state()["x"]["posts"][0]["id"]
    for name, endpoint in (
        ("liking_users", "liking_users"),
        ("retweeted_by_next_token", "retweeted_by"),
    ):
        recorded = json.loads((RECORDINGS / f"{name}.json").read_text())["body"]
        body = get(x, sandbox, f"/2/tweets/{post}/{endpoint}", max_results=5).json()
        assert _shape(body["data"][0]) == _shape(recorded["data"][0])
        assert set(body["meta"]) == set(recorded["meta"]) | {"next_token"}


def test_pagination_walks_every_mention_exactly_once(
    sandbox: Sandbox, x: requests.Session, brand_id: str
) -> None:
    pages = walk(
        x,
        sandbox,
        f"/2/users/{brand_id}/mentions",
        max_results=100,
        expansions="author_id",
        **{"tweet.fields": "author_id,created_at"},
    )
    ids = [t["id"] for page in pages for t in page["data"]]
    assert len(ids) == len(set(ids))
    assert [int(i) for i in ids] == sorted((int(i) for i in ids), reverse=True)
    expected = {e["id"] for e in truth(sandbox, "mention", "reply")}
    assert set(ids) == expected
    for page in pages:
        authors = {u["id"] for u in page["includes"]["users"]}
        assert {t["author_id"] for t in page["data"]} == authors
        assert page["meta"]["newest_id"] == page["data"][0]["id"]
        assert page["meta"]["oldest_id"] == page["data"][-1]["id"]
    assert "next_token" not in pages[-1]["meta"]


def test_fields_are_only_the_defaults_unless_asked(
    sandbox: Sandbox, x: requests.Session, brand_id: str
) -> None:
    plain = get(x, sandbox, f"/2/users/{brand_id}/mentions", max_results=5).json()
    assert {k for t in plain["data"] for k in t} == {"id", "text", "edit_history_tweet_ids"}
    assert "includes" not in plain
    replies = [e for e in truth(sandbox, "reply")]
    newest_reply = max(replies, key=lambda e: int(e["id"]))
    asked = get(
        x,
        sandbox,
        f"/2/users/{brand_id}/mentions",
        max_results=5,
        until_id=str(int(newest_reply["id"]) + 1),
        **{"tweet.fields": "referenced_tweets,in_reply_to_user_id,conversation_id"},
    ).json()
    tweet = asked["data"][0]
    assert tweet["id"] == newest_reply["id"]
    assert tweet["referenced_tweets"] == [{"type": "replied_to", "id": newest_reply["post_id"]}]
    assert tweet["in_reply_to_user_id"] == brand_id
    assert tweet["conversation_id"] == newest_reply["post_id"]


def test_since_id_returns_only_newer_mentions(
    sandbox: Sandbox, x: requests.Session, brand_id: str
) -> None:
    ids = sorted(int(e["id"]) for e in truth(sandbox, "mention", "reply"))
    since = ids[-7]
    pages = walk(x, sandbox, f"/2/users/{brand_id}/mentions", since_id=str(since), max_results=5)
    got = [int(t["id"]) for page in pages for t in page["data"]]
    assert sorted(got) == ids[-6:]


def test_empty_page_has_no_data_key(sandbox: Sandbox, x: requests.Session, brand_id: str) -> None:
    newest = max(int(e["id"]) for e in truth(sandbox, "mention", "reply"))
    body = get(x, sandbox, f"/2/users/{brand_id}/mentions", since_id=str(newest + 10**9)).json()
    assert body == {"meta": {"result_count": 0}}


def test_out_of_range_max_results_is_an_invalid_request(
    sandbox: Sandbox, x: requests.Session, brand_id: str
) -> None:
    response = get(x, sandbox, f"/2/users/{brand_id}/mentions", max_results=101)
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "https://api.twitter.com/2/problems/invalid-request"
    assert body["errors"][0]["parameters"] == {"max_results": ["101"]}
    unknown = get(x, sandbox, f"/2/users/{brand_id}/mentions", previous_token="abc")
    assert unknown.status_code == 400
    assert "previous_token" in unknown.json()["errors"][0]["message"]


def test_wrong_bearer_gets_the_real_401(sandbox: Sandbox, brand_id: str) -> None:
    session = requests.Session()
    session.verify = str(sandbox.ca_path)
    session.trust_env = False
    url = f"{sandbox.urls['x']}/2/users/{brand_id}/mentions"
    for headers in ({"Authorization": "Bearer nope"}, {}):
        response = session.get(url, headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json() == {
            "title": "Unauthorized",
            "type": "about:blank",
            "status": 401,
            "detail": "Unauthorized",
        }


def test_low_rate_limit_gives_429_until_the_reset_time(
    sandbox: Sandbox, x: requests.Session
) -> None:
    post = sandbox.state()["x"]["posts"][-1]["id"]
    path = f"/2/tweets/{post}/liking_users"
    sandbox.set_options(rate_limits={"GET /2/tweets/:id/liking_users": 2}, rate_window_seconds=1)
    try:
        first, second, third = (get(x, sandbox, path, max_results=5) for _ in range(3))
        assert [first.status_code, second.status_code, third.status_code] == [200, 200, 429]
        assert second.headers["x-rate-limit-remaining"] == "0"
        assert third.headers["content-type"] == "application/problem+json"
        assert third.json() == {
            "title": "Too Many Requests",
            "type": "about:blank",
            "status": 429,
            "detail": "Too Many Requests",
        }
        reset = int(third.headers["x-rate-limit-reset"])
        assert reset >= time.time() - 1
        time.sleep(max(reset - time.time(), 0) + 0.05)
        assert get(x, sandbox, path, max_results=5).status_code == 200
    finally:
        sandbox.set_options(rate_limits=None, rate_window_seconds=900)
    assert get(x, sandbox, path).headers["x-rate-limit-limit"] == "75"


def test_liking_users_report_suspended_likers_as_errors_inside_200(
    sandbox: Sandbox, x: requests.Session
) -> None:
    state = sandbox.state()["x"]
    suspended = {u["id"] for u in state["suspended_users"]}
    assert suspended
    seen_errors = []
    for post in state["posts"]:
        pages = walk(x, sandbox, f"/2/tweets/{post['id']}/liking_users", max_results=40)
        users = [u["id"] for page in pages for u in page.get("data", [])]
        assert len(users) == len(set(users))  # each user once per post
        expected = {
            e["user_id"]
            for e in state["engagements"]
            if e["kind"] == "like" and e["post_id"] == post["id"]
        }
        assert set(users) == expected
        for page in pages:
            for error in page.get("errors", []):
                assert error["type"] == "https://api.twitter.com/2/problems/resource-not-found"
                assert error["resource_type"] == "user"
                assert "data" in page  # partial: errors sit next to data
                seen_errors.append(error["resource_id"])
    assert set(seen_errors) == suspended


def test_retweeted_by_and_quote_tweets_match_the_ground_truth(
    sandbox: Sandbox, x: requests.Session
) -> None:
    state = sandbox.state()["x"]
    post = state["posts"][-2]["id"]
    pages = walk(x, sandbox, f"/2/tweets/{post}/retweeted_by", max_results=3)
    got = {u["id"] for page in pages for u in page.get("data", [])}
    assert got == {e["user_id"] for e in truth(sandbox, "repost") if e["post_id"] == post}
    quoted = Counter(e["post_id"] for e in truth(sandbox, "quote")).most_common(1)[0][0]
    fields = {"tweet.fields": "referenced_tweets,author_id"}
    path = f"/2/tweets/{quoted}/quote_tweets"
    quotes = {e["id"] for e in truth(sandbox, "quote") if e["post_id"] == quoted}
    pages = walk(x, sandbox, path, max_results=10, expansions="author_id", **fields)
    tweets = [t for page in pages for t in page["data"]]
    assert all("newest_id" not in page["meta"] for page in pages)  # as recorded
    # As recorded too: reposts of the quotes come along ("RT @quoter: ..."), unless excluded.
    reposts = [t for t in tweets if t["id"] not in quotes]
    assert reposts and all(t["text"].startswith("RT @") for t in reposts)
    assert all(t["referenced_tweets"][0]["type"] == "retweeted" for t in reposts)
    assert {t["referenced_tweets"][0]["id"] for t in reposts} <= quotes
    pages = walk(x, sandbox, path, max_results=10, exclude="retweets", **fields)
    tweets = [t for page in pages for t in page["data"]]
    assert {t["id"] for t in tweets} == quotes
    assert all(t["referenced_tweets"] == [{"type": "quoted", "id": quoted}] for t in tweets)


def test_brand_timeline_is_newest_first(
    sandbox: Sandbox, x: requests.Session, brand_id: str
) -> None:
    pages = walk(
        x,
        sandbox,
        f"/2/users/{brand_id}/tweets",
        max_results=10,
        **{"tweet.fields": "created_at,public_metrics"},
    )
    posts = [t for page in pages for t in page["data"]]
    assert len(posts) == len(sandbox.state()["x"]["posts"])
    assert [p["created_at"] for p in posts] == sorted(
        (p["created_at"] for p in posts), reverse=True
    )
    likes = Counter(e["post_id"] for e in truth(sandbox, "like"))
    newest = posts[0]
    assert newest["public_metrics"]["like_count"] >= likes[newest["id"]]


def test_generate_adds_engagements_visible_through_since_id(
    sandbox: Sandbox, x: requests.Session, brand_id: str
) -> None:
    before = max(int(e["id"]) for e in truth(sandbox, "mention", "reply"))
    response = x.post(
        sandbox.urls["x"] + "/_sandbox/generate", json={"engagements": 60}, timeout=10
    )
    added = response.json()["added"]
    assert sum(added.values()) == 60
    pages = walk(x, sandbox, f"/2/users/{brand_id}/mentions", since_id=str(before), max_results=100)
    new = [t for page in pages if "data" in page for t in page["data"]]
    assert len(new) == added["mention"] + added["reply"]
    assert all(int(t["id"]) > before for t in new)
    stamps = [e["created_at"] for e in sandbox.state()["x"]["engagements"]][-5:]
    assert all(len(s) == 24 and s.endswith("Z") for s in stamps)


def test_state_counts_calls_per_endpoint_template(
    sandbox: Sandbox, x: requests.Session, brand_id: str
) -> None:
    assert x.post(sandbox.urls["salesforce"] + "/_sandbox/reset-calls", timeout=10).ok
    get(x, sandbox, f"/2/users/{brand_id}/mentions")
    get(x, sandbox, f"/2/users/{brand_id}/mentions", max_results=5)
    state = x.get(sandbox.urls["salesforce"] + "/_sandbox/state", timeout=10).json()
    assert state["calls"]["x"] == {"GET /2/users/:id/mentions": 2}
    assert state["reads"] == {"x": 2, "salesforce": 0, "zendesk": 0}
    assert state["writes"] == {"x": 0, "salesforce": 0, "zendesk": 0}


def test_written_config_validates(sandbox: Sandbox) -> None:
    assert sandbox.config_path is not None
    settings = load_settings(sandbox.config_path)
    account = settings.accounts[0]
    assert account.api_base_url == sandbox.urls["x"]
    assert account.user_id == sandbox.state()["x"]["brand"]["id"]
    assert account.ca_bundle == sandbox.ca_path
    assert settings.crm.login_url == sandbox.urls["salesforce"]
    assert settings.state_url().endswith(str(sandbox.config_path.parent / "state.db"))


def test_seed_is_deterministic_and_about_half_qualify() -> None:
    anchor = 1_795_824_000_000 // DAY_MS * DAY_MS
    first, second = build_world(7, anchor_ms=anchor), build_world(7, anchor_ms=anchor)
    assert first.engagements() == second.engagements()
    engagements = first.engagements()
    scores: Counter[str] = Counter()
    for e in engagements:
        scores[e["user_id"]] += WEIGHTS[e["kind"]]
    share = sum(1 for s in scores.values() if s >= 3) / len(scores)
    assert 0.4 <= share <= 0.6
    names = " ".join(u.name for u in first.users.values())
    for sample in ("é", "ü", "ã", "山", "ع", "न", "Я" if "Я" in names else "а", "🙃"):
        assert sample in names or sample == "🙃"


def test_cli_prints_one_ready_line_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "cfg" / "socialcrm.yaml"
    env = {k: v for k, v in os.environ.items() if k != "REQUESTS_CA_BUNDLE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--write-config", str(config)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["ready"] is True
        assert ready["config"] == str(config.resolve())
        assert set(ready["urls"]) == {"x", "salesforce", "zendesk"}
        session = requests.Session()
        session.verify = str(config.parent / "ca.pem")
        session.trust_env = False
        state = session.get(ready["urls"]["x"] + "/_sandbox/state", timeout=10).json()
        assert state["x"]["brand"]["username"] == "acmecloud"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


# --- direct messages ------------------------------------------------------------------------

DM_FIELDS = "id,text,event_type,created_at,dm_conversation_id,sender_id,participant_ids"


@pytest.fixture(scope="module")
def dm(sandbox: Sandbox) -> requests.Session:
    session = requests.Session()
    session.verify = str(sandbox.ca_path)
    session.trust_env = False
    session.headers["Authorization"] = "Bearer sandbox-x-user-token"
    return session


def dm_truth(sandbox: Sandbox) -> list[dict[str, Any]]:
    return list(sandbox.state()["x"]["dm_events"])


def walk_dms(dm: requests.Session, sandbox: Sandbox, path: str, **params: Any) -> list[Any]:
    """Follow next_token until a page comes back empty, as DM clients must."""
    pages = []
    token = None
    while True:
        query = dict(params, **({"pagination_token": token} if token else {}))
        response = get(dm, sandbox, path, **query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body)
        token = body["meta"].get("next_token")
        if token is None:
            return pages


def test_dm_pagination_walks_every_event_exactly_once(
    sandbox: Sandbox, dm: requests.Session
) -> None:
    pages = walk_dms(
        dm,
        sandbox,
        "/2/dm_events",
        max_results=37,
        expansions="sender_id,participant_ids",
        **{"dm_event.fields": DM_FIELDS, "user.fields": "created_at,description"},
    )
    events = [e for page in pages for e in page.get("data", [])]
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids))
    assert [int(i) for i in ids] == sorted((int(i) for i in ids), reverse=True)
    truth = dm_truth(sandbox)
    assert set(ids) == {e["id"] for e in truth}
    by_id = {e["id"]: e for e in truth}
    for event in events:
        expected = by_id[event["id"]]
        assert event["sender_id"] == expected["sender_id"]
        assert event["dm_conversation_id"] == expected["dm_conversation_id"]
        assert event.get("text") == expected["text"]
    for page in pages[:-1]:
        assert page["meta"]["result_count"] == len(page["data"])
        assert "previous_token" in page["meta"]
        users = {u["id"] for u in page["includes"]["users"]}
        wanted = {e["sender_id"] for e in page["data"]}
        wanted |= {p for e in page["data"] for p in e.get("participant_ids", [])}
        assert users == wanted
        assert all({"created_at", "description"} <= set(u) for u in page["includes"]["users"])
    assert pages[-1] == {"meta": {"result_count": 0}}  # the token on the last page leads here


def test_dm_pages_match_the_recorded_shapes(sandbox: Sandbox, dm: requests.Session) -> None:
    if not RECORDINGS.exists():
        pytest.skip("shared recordings not available")
    recorded = json.loads((RECORDINGS / "dm_conversation_events.json").read_text())
    conversation = next(
        e["dm_conversation_id"]
        for e in dm_truth(sandbox)
        if "-" in e["dm_conversation_id"] and e["event_type"] == "MessageCreate"
    )
    response = get(dm, sandbox, f"/2/dm_conversations/{conversation}/dm_events", max_results=2)
    body = response.json()
    assert set(body) == set(recorded["body"])
    assert set(body["data"][0]) == set(recorded["body"]["data"][0])  # defaults: id, type, text
    assert set(body["meta"]) == set(recorded["body"]["meta"])
    assert response.headers["content-type"] == recorded["headers"]["content-type"]
    assert response.headers["x-rate-limit-limit"] == recorded["headers"]["x-rate-limit-limit"]


def test_dm_conversation_endpoints_agree(sandbox: Sandbox, dm: requests.Session) -> None:
    truth = [e for e in dm_truth(sandbox) if e["event_type"] == "MessageCreate"]
    customer = next(e["sender_id"] for e in truth if not e["from_brand"])
    conversation = next(e["dm_conversation_id"] for e in truth if e["sender_id"] == customer)
    low, high = conversation.split("-")
    assert int(low) < int(high) and customer in (low, high)
    fields = {"dm_event.fields": DM_FIELDS}
    by_id = walk_dms(dm, sandbox, f"/2/dm_conversations/{conversation}/dm_events", **fields)
    with_user = walk_dms(dm, sandbox, f"/2/dm_conversations/with/{customer}/dm_events", **fields)
    events = [e for page in by_id for e in page.get("data", [])]
    assert events == [e for page in with_user for e in page.get("data", [])]
    expected = [e["id"] for e in dm_truth(sandbox) if e["dm_conversation_id"] == conversation]
    assert [e["id"] for e in events] == expected[::-1]


def test_group_conversation_has_join_events_without_text(
    sandbox: Sandbox, dm: requests.Session
) -> None:
    joins = [e for e in dm_truth(sandbox) if e["event_type"] == "ParticipantsJoin"]
    assert joins and all(e["text"] is None for e in joins)
    group = joins[0]["dm_conversation_id"]
    assert group.isdigit()  # group conversations are a single snowflake
    body = get(
        dm,
        sandbox,
        f"/2/dm_conversations/{group}/dm_events",
        event_types="ParticipantsJoin",
        expansions="participant_ids",
        **{"dm_event.fields": DM_FIELDS},
    ).json()
    assert {e["id"] for e in body["data"]} == {e["id"] for e in joins}
    assert all("text" not in e and e["participant_ids"] for e in body["data"])
    joined = {p for e in body["data"] for p in e["participant_ids"]}
    assert {u["id"] for u in body["includes"]["users"]} == joined


def test_dms_need_user_context(sandbox: Sandbox, x: requests.Session, brand_id: str) -> None:
    response = get(x, sandbox, "/2/dm_events")
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "title": "Unsupported Authentication",
        "detail": "Authenticating with OAuth 2.0 Application-Only is forbidden for this "
        "endpoint.  Supported authentication types are [OAuth 1.0a User Context, "
        "OAuth 2.0 User Context].",
        "type": "https://api.twitter.com/2/problems/unsupported-authentication",
        "status": 403,
    }
    anonymous = requests.get(
        sandbox.urls["x"] + "/2/dm_events", verify=str(sandbox.ca_path), timeout=10
    )
    assert anonymous.status_code == 401


def test_dm_empty_page_and_invalid_parameters(sandbox: Sandbox, dm: requests.Session) -> None:
    talked = {e["dm_conversation_id"] for e in dm_truth(sandbox)}
    brand = sandbox.state()["x"]["brand"]["id"]
    silent = next(
        u["id"]
        for u in sandbox.state()["x"]["users"]
        if not any(u["id"] in c.split("-") for c in talked)
    )
    assert silent != brand
    empty = get(dm, sandbox, f"/2/dm_conversations/with/{silent}/dm_events")
    assert empty.status_code == 200
    assert empty.json() == {"meta": {"result_count": 0}}
    assert empty.headers["x-rate-limit-limit"] == "300"
    for params in ({"max_results": 0}, {"since_id": "1"}, {"event_types": "Tweet"}):
        bad = get(dm, sandbox, "/2/dm_events", **params)
        assert bad.status_code == 400
        assert bad.json()["type"] == "https://api.twitter.com/2/problems/invalid-request"


def test_generate_dms_adds_messages_old_and_new_conversations(
    sandbox: Sandbox, dm: requests.Session
) -> None:
    state = sandbox.state()["x"]
    before = dm_truth(sandbox)
    highest = max(
        [int(e["id"]) for e in before] + [int(e["id"]) for e in state["engagements"] if e["text"]]
    )
    conversations = {e["dm_conversation_id"] for e in before}
    added = sandbox.generate(dms=40)["added"]
    assert added["dms"] == 40 and sum(v for k, v in added.items() if k != "dms") == 0
    new = [e for e in dm_truth(sandbox) if int(e["id"]) > highest]
    assert len(new) == 40
    assert all(not e["from_brand"] and e["event_type"] == "MessageCreate" for e in new)
    assert {e["topic"] for e in new} <= {"support", "sales", "spam", "other"}
    old = [e for e in new if e["dm_conversation_id"] in conversations]
    assert 5 <= len(old) <= 35  # about half continue an existing thread
    first = get(dm, sandbox, "/2/dm_events", max_results=40).json()
    assert {e["id"] for e in first["data"]} == {e["id"] for e in new}
    users = {u["id"] for u in sandbox.state()["x"]["users"]}
    assert {e["sender_id"] for e in new} <= users
    response = dm.post(sandbox.urls["x"] + "/_sandbox/generate", json={"dms": 2, "engagements": 3})
    assert response.json()["added"]["dms"] == 2


def test_dm_seed_is_deterministic_and_mixed() -> None:
    anchor = 1_795_824_000_000 // DAY_MS * DAY_MS
    first = seed_dms(build_world(7, anchor_ms=anchor), 7, anchor_ms=anchor)
    second = seed_dms(build_world(7, anchor_ms=anchor), 7, anchor_ms=anchor)
    assert first.truth() == second.truth()
    events = first.truth()
    customer = [e for e in events if e["event_type"] == "MessageCreate" and not e["from_brand"]]
    assert len(customer) == 200
    assert sum(e["from_brand"] for e in events) == 60
    assert {e["topic"] for e in customer} == {"support", "sales", "spam", "other"}
    assert {e["lang"] for e in customer} == {"en", "fr", "es", "de"}
    one_to_one = {e["dm_conversation_id"] for e in events if "-" in e["dm_conversation_id"]}
    assert len(one_to_one) == 60
    per_conversation = Counter(e["dm_conversation_id"] for e in customer)
    assert sum(1 for n in per_conversation.values() if n >= 3) >= 20  # real threads
    assert any(e.media_keys for e in first.events)
    assert all(anchor - 21 * DAY_MS < e.created_ms < anchor for e in first.events)
    texts = " ".join(e["text"] for e in customer)
    assert "é" in texts and "bit.ly" in texts
    # Follow-ups such as "any update?" only make sense in their thread, and say so.
    assert {e["standalone"] for e in customer} == {True, False}
    assert all(e["standalone"] for e in customer if e["text"].startswith("how much is"))


def test_user_tokens_expire_and_each_refresh_token_works_once(sandbox: Sandbox) -> None:
    """OAuth 2.0 user context as X runs it: 2-hour tokens, rotating refresh tokens."""
    import time

    from sandbox.x_dm import CLIENT_ID, REFRESH_TOKEN

    session = requests.Session()
    session.verify = str(sandbox.ca_path)
    session.trust_env = False
    url = sandbox.urls["x"] + "/2/oauth2/token"

    def refresh(token: str, client: str = CLIENT_ID) -> requests.Response:
        form = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client}
        return session.post(url, data=form, timeout=10)

    assert refresh(REFRESH_TOKEN, client="someone-else").json()["error"] == "unauthorized_client"
    sandbox.set_options(x_user_token_ttl_s=1.0)
    try:
        first = refresh(REFRESH_TOKEN)
        body = first.json()
        assert first.status_code == 200 and body["token_type"] == "bearer"
        assert body["expires_in"] == 1 and "offline.access" in body["scope"]
        again = refresh(REFRESH_TOKEN)  # rotated: the old one is spent
        assert again.status_code == 400
        assert again.json() == {
            "error": "invalid_request",
            "error_description": "Value passed for the token was invalid.",
        }
        path = sandbox.urls["x"] + "/2/dm_events"
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        assert session.get(path, headers=headers, timeout=10).status_code == 200
        time.sleep(1.1)
        assert session.get(path, headers=headers, timeout=10).status_code == 401
        assert refresh(body["refresh_token"]).status_code == 200
    finally:
        sandbox.set_options(x_user_token_ttl_s=7200.0)
    assert sandbox.state()["writes"]["x"] == 0  # renewing is no write


def _renewing_account(config: Path, variable: str) -> Any:
    """The sandbox config's account, renewing its DM token from ``$variable``."""
    from sandbox.x_dm import CLIENT_ID
    from socialcrm.config import load_settings

    return (
        load_settings(config)
        .accounts[0]
        .model_copy(
            update={
                "dm_token": None,
                "dm_refresh_token": "${" + variable + "}",
                "dm_client_id": CLIENT_ID,
            }
        )
    )


def test_calls_side_by_side_renew_the_dm_token_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each renewal spends the refresh token: four lanes starting together get one."""
    from concurrent.futures import ThreadPoolExecutor

    from connectors.social import x_dm
    from sandbox.x_dm import REFRESH_TOKEN
    from socialcrm.state import StateStore

    box = start_sandbox(write_config=tmp_path / "socialcrm.yaml")
    monkeypatch.setenv("SCRM_TEST_X_REFRESH", REFRESH_TOKEN)
    try:
        account = _renewing_account(tmp_path / "socialcrm.yaml", "SCRM_TEST_X_REFRESH")
        with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
            client = x_dm.connect_dm(account, store=store)
            with ThreadPoolExecutor(4) as pool:
                pages = list(
                    pool.map(lambda _: x_dm.fetch_dm_page(client, x_dm.DmRequest()), range(4))
                )
            stored = store.stored_token(f"x-dm:{account.name}")
        assert all(page.records for page, _ in pages)
        assert box.state()["calls"]["x"]["POST /2/oauth2/token"] == 1
        assert stored is not None and stored.refresh_token not in (None, REFRESH_TOKEN)
        assert REFRESH_TOKEN not in repr(stored) and stored.access_token not in repr(stored)
    finally:
        box.stop()


def test_a_new_refresh_token_in_the_config_starts_a_new_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored chain is dead (revoked, or spent by a renewal whose answer was lost):
    authorizing the app again and setting the new refresh token is the whole repair."""
    from connectors.http import ApiError
    from connectors.social import x_dm
    from sandbox.x_dm import CLIENT_ID, REFRESH_TOKEN
    from socialcrm.state import StateStore

    box = start_sandbox(write_config=tmp_path / "socialcrm.yaml")
    monkeypatch.setenv("SCRM_TEST_X_REFRESH", REFRESH_TOKEN)
    box.set_options(x_user_token_ttl_s=1.0)  # every run renews
    try:
        account = _renewing_account(tmp_path / "socialcrm.yaml", "SCRM_TEST_X_REFRESH")
        name = f"x-dm:{account.name}"
        with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
            x_dm.fetch_dm_page(x_dm.connect_dm(account, store=store), x_dm.DmRequest())
            stored = store.stored_token(name)
            assert stored is not None and stored.refresh_token
            # Someone spends the stored refresh token: what X now answers is a new start.
            session = requests.Session()
            session.verify, session.trust_env = str(box.ca_path), False
            form = {
                "grant_type": "refresh_token",
                "refresh_token": stored.refresh_token,
                "client_id": CLIENT_ID,
            }
            fresh = session.post(box.urls["x"] + "/2/oauth2/token", data=form, timeout=10)
            with pytest.raises(ApiError, match="authorize the app again"):
                x_dm.fetch_dm_page(x_dm.connect_dm(account, store=store), x_dm.DmRequest())
            monkeypatch.setenv("SCRM_TEST_X_REFRESH", fresh.json()["refresh_token"])
            page, _ = x_dm.fetch_dm_page(x_dm.connect_dm(account, store=store), x_dm.DmRequest())
        assert page.records
    finally:
        box.stop()
