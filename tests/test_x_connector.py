"""X source unit tests: pagination, cursors, rate-limit waits and payload parsing.

The network is replaced by a scripted session here only; end-to-end tests drive the
same code over real HTTPS against the sandbox.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from connectors.http import Action, ApiError, RetryPolicy
from connectors.social import x
from socialcrm.config import XAccount
from socialcrm.records import EngagementKind

RECORDINGS = Path(__file__).resolve().parents[2] / "shared" / "recordings"
BRAND = "1000"


def response(status: int, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = json.dumps(body).encode() if not isinstance(body, bytes) else body
    r.headers.update({"content-type": "application/json", **(headers or {})})
    return r


class ScriptedSession:
    def __init__(self, answers: list[requests.Response]) -> None:
        self.answers = answers
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def get(self, url: str, params: dict[str, Any], headers: dict[str, str]) -> requests.Response:
        assert headers["Authorization"] == "Bearer token-123"
        self.seen.append((url, dict(params)))
        return self.answers.pop(0)


def client(
    answers: list[requests.Response], **account: Any
) -> tuple[x.XClient, ScriptedSession, list[float]]:
    slept: list[float] = []
    session = ScriptedSession(answers)
    acct = XAccount(
        name="brand",
        user_id=BRAND,
        handle="brand",
        bearer_token="${X_TOKEN}",
        api_base_url="https://api.test",
        **account,
    )
    policy = RetryPolicy(sleep=slept.append, backoff_initial=0.01)
    return x.XClient(acct, session, SecretStr("token-123"), policy), session, slept  # type: ignore[arg-type]


def tweet(id_: str, author: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": id_,
        "text": f"@brand hi {id_}",
        "author_id": author,
        "created_at": "2026-11-20T10:00:00.000Z",
        **extra,
    }


def user(id_: str) -> dict[str, Any]:
    return {"id": id_, "name": f"User {id_}", "username": f"u{id_}"}


def walk(c: x.XClient, request: x.StreamRequest) -> list[Any]:
    pages = []
    next_request: x.StreamRequest | None = request
    while next_request is not None:
        page, next_request = x.fetch_page(c, next_request)
        pages.append(page)
    return pages


def test_mentions_follow_next_token_and_set_the_cursor_on_the_last_page_only() -> None:
    first = {
        "data": [tweet("30", "7"), tweet("29", "8")],
        "includes": {"users": [user("7"), user("8")]},
        "meta": {"result_count": 2, "newest_id": "30", "oldest_id": "29", "next_token": "t2"},
    }
    second = {
        "data": [tweet("28", "7")],
        "includes": {"users": [user("7")]},
        "meta": {"result_count": 1, "newest_id": "28", "oldest_id": "28"},
    }
    c, session, _ = client([response(200, first), response(200, second)])
    pages = walk(c, x.StreamRequest("mentions", since_id="20"))
    assert [p.cursor for p in pages] == [None, "30"]
    assert [r.id for p in pages for r in p.records] == ["30", "29", "28"]
    assert session.seen[0][1]["since_id"] == "20"
    assert session.seen[1][1]["pagination_token"] == "t2"
    assert "start_time" not in session.seen[0][1]


def test_empty_mentions_page_keeps_the_old_cursor() -> None:
    c, _, _ = client([response(200, {"meta": {"result_count": 0}})])
    (page,) = walk(c, x.StreamRequest("mentions", since_id="20"))
    assert page.records == [] and page.cursor == "20"


def test_replies_to_brand_posts_are_replies_and_quotes_stay_quotes() -> None:
    body = {
        "data": [
            tweet(
                "3",
                "7",
                referenced_tweets=[{"type": "replied_to", "id": "99"}],
                in_reply_to_user_id=BRAND,
            ),
            tweet("2", "7", referenced_tweets=[{"type": "quoted", "id": "98"}]),
            tweet("1", "7"),
        ],
        "includes": {"users": [user("7")]},
        "meta": {"result_count": 3, "newest_id": "3"},
    }
    c, _, _ = client([response(200, body)])
    (page,) = walk(c, x.StreamRequest("mentions"))
    kinds = [(r.kind, r.post_id) for r in page.records]
    assert kinds == [
        (EngagementKind.REPLY, "99"),
        (EngagementKind.QUOTE, "98"),
        (EngagementKind.MENTION, None),
    ]
    assert page.records[1].key == "x:quote:2"


def test_reposts_are_no_mentions_or_quotes_and_the_quote_walk_excludes_them() -> None:
    """X lists reposts among mentions and quote tweets ("RT @..."): the reposter did not
    write it, and retweeted_by already counts reposts of the brand's posts."""
    mentions = {
        "data": [
            tweet(
                "4",
                "7",
                text="RT @brand: big launch",
                referenced_tweets=[{"type": "retweeted", "id": "9"}],
            ),
            # No referenced_tweets (X leaves it out when there is none): their own words.
            tweet("3", "8", text="RT @fan: love @brand, and so do I"),
        ],
        "includes": {"users": [user("7"), user("8")]},
        "meta": {"result_count": 3, "newest_id": "4"},
    }
    quotes = {
        "data": [
            tweet("6", "8", referenced_tweets=[{"type": "retweeted", "id": "5"}]),
            tweet("5", "7", referenced_tweets=[{"type": "quoted", "id": "1"}]),
        ],
        "includes": {"users": [user("7"), user("8")]},
        "meta": {"result_count": 2},
    }
    c, session, _ = client([response(200, mentions), response(200, quotes)])
    (page,) = walk(c, x.StreamRequest("mentions"))
    assert [(r.id, r.kind) for r in page.records] == [("3", EngagementKind.MENTION)]
    assert page.cursor == "4" and not page.problems
    (page,) = walk(c, x.StreamRequest("quotes", post_id="1"))
    assert [(r.id, r.kind) for r in page.records] == [("5", EngagementKind.QUOTE)]
    assert session.seen[-1][1]["exclude"] == "retweets"


def test_quote_walk_stops_at_the_first_known_quote() -> None:
    first = {
        "data": [tweet("50", "7"), tweet("40", "8")],
        "includes": {"users": [user("7"), user("8")]},
        "meta": {"result_count": 2, "next_token": "more"},
    }
    c, session, _ = client([response(200, first)])
    pages = walk(c, x.StreamRequest("quotes", post_id="5", since_id="45"))
    assert [r.id for p in pages for r in p.records] == ["50"]
    assert pages[-1].cursor == "50" and len(session.seen) == 1


def test_likes_have_synthetic_ids_and_partial_errors_are_warnings() -> None:
    body = {
        "data": [user("7"), {"id": "not-a-number", "username": "x"}],
        "errors": [
            {
                "value": "9",
                "detail": "User has been suspended: [9].",
                "title": "Forbidden",
                "resource_type": "user",
                "parameter": "id",
                "resource_id": "9",
                "type": "https://api.twitter.com/2/problems/resource-not-found",
            }
        ],
        "meta": {"result_count": 2},
    }
    c, _, _ = client([response(200, body)])
    (page,) = walk(c, x.StreamRequest("likes", post_id="5"))
    assert [r.key for r in page.records] == ["x:like:5:7"]
    assert page.cursor is None
    assert len(page.warnings) == 1 and "suspended" in page.warnings[0].reason
    assert len(page.problems) == 1 and page.problems[0].field == "id"


@pytest.mark.parametrize("odd", ["²", "①", "١٢", "5" * 21, " 5"])
def test_an_id_int_cannot_read_is_a_problem_not_a_crashed_walk(odd: str) -> None:
    """``str.isdigit`` takes "²" and Arabic-Indic digits; the walk reads the newest id as a
    number for its cursor. Such an id is a dead letter and the walk goes on (checked:
    "²" was a record, and the quote walk failed with ValueError on every run)."""
    first = {
        "data": [tweet(odd, "7"), tweet("50", "8")],
        "includes": {"users": [user("7"), user("8")]},
        "meta": {"result_count": 2},
    }
    c, _, _ = client([response(200, first)])
    (page,) = walk(c, x.StreamRequest("quotes", post_id="5"))
    assert [r.id for r in page.records] == ["50"]
    assert page.cursor == "50"
    assert [p.field for p in page.problems] == ["id"]


def test_a_username_no_column_holds_is_a_problem_naming_the_field() -> None:
    """A 201-character username failed the page's store on PostgreSQL (a like list is
    read again every run, so every run failed); it is now refused with its record."""
    body = {"data": [user("7"), {**user("8"), "username": "u" * 201}], "meta": {}}
    page = x.parse_users(body, kind=EngagementKind.LIKE, post_id="5")
    assert [r.key for r in page.records] == ["x:like:5:7"]
    assert [(p.record_key, p.field) for p in page.problems] == [("x:like:5:8", "username")]


def test_records_without_an_id_keep_a_dead_letter_each() -> None:
    """Unidentifiable records are keyed by their content, not their place in the page:
    two different ones at the same place of two pages are two letters (checked: keyed
    "#0" both, the second overwrote the first), the same one read twice is one."""
    bad = [{"id": "oops", "text": "first"}, {"id": "oops", "text": "second"}]
    keys = []
    for item in [*bad, bad[0]]:
        body = {"data": [item], "meta": {"result_count": 1}}
        page = x.parse_tweets(body, stream="mentions", brand_id=BRAND)
        keys += [p.record_key for p in page.problems]
    assert keys[0] != keys[1] and keys[0] == keys[2]
    assert all(key.startswith("x:mentions:#") for key in keys)


def test_tweet_without_its_author_is_a_problem_naming_the_field() -> None:
    body = {
        "data": [tweet("3", "404"), tweet("2", "7")],
        "includes": {"users": [user("7")]},
        "meta": {"result_count": 2},
    }
    c, _, _ = client([response(200, body)])
    (page,) = walk(c, x.StreamRequest("mentions"))
    assert [r.id for r in page.records] == ["2"]
    assert page.problems[0].record_key == "x:mention:3"
    assert page.problems[0].field == "author_id"


def test_429_waits_for_the_reset_header_then_succeeds() -> None:
    import time

    reset = str(int(time.time()) + 42)
    limited = response(
        429,
        {"title": "Too Many Requests", "status": 429},
        {"x-rate-limit-remaining": "0", "x-rate-limit-reset": reset},
    )
    ok = response(
        200,
        {"meta": {"result_count": 0}},
        {"x-rate-limit-remaining": "10", "x-rate-limit-reset": reset},
    )
    c, _, slept = client([limited, ok])
    walk(c, x.StreamRequest("mentions"))
    assert len(slept) >= 1 and 38 <= max(slept) <= 45


def test_a_spent_window_is_waited_for_before_the_next_call() -> None:
    import time

    reset = str(int(time.time()) + 30)
    spent = response(
        200,
        {
            "data": [tweet("3", "7")],
            "includes": {"users": [user("7")]},
            "meta": {"result_count": 1, "next_token": "n"},
        },
        {"x-rate-limit-remaining": "0", "x-rate-limit-reset": reset},
    )
    ok = response(200, {"meta": {"result_count": 0}})
    c, _, slept = client([spent, ok])
    walk(c, x.StreamRequest("mentions"))
    assert len(slept) == 1 and 25 <= slept[0] <= 32


def test_a_window_beyond_the_max_wait_stops_with_a_quota_error() -> None:
    import time

    reset = str(int(time.time()) + 3600)
    limited = response(
        429,
        {"title": "Too Many Requests"},
        {"x-rate-limit-remaining": "0", "x-rate-limit-reset": reset},
    )
    c, session, slept = client([limited, limited], max_rate_limit_wait_seconds=60)
    with pytest.raises(ApiError) as error:
        walk(c, x.StreamRequest("mentions"))
    assert error.value.action is Action.QUOTA  # a clean stop; the next run resumes
    assert len(session.seen) == 1 and not slept


def daily_capped(cap_resets_in: int) -> requests.Response:
    """A 429 whose 15-minute window resets in 30 s and whose 24-hour cap is spent."""
    import time

    now = int(time.time())
    headers = {
        "x-rate-limit-remaining": "0",
        "x-rate-limit-reset": str(now + 30),
        "x-app-limit-24hour-limit": "1000",
        "x-app-limit-24hour-remaining": "0",
        "x-app-limit-24hour-reset": str(now + cap_resets_in),
    }
    return response(429, {"title": "Too Many Requests"}, headers)


def test_a_daily_cap_resetting_within_the_allowed_wait_is_waited_for() -> None:
    ok = response(200, {"meta": {"result_count": 0}})
    c, session, slept = client([daily_capped(600), ok])
    walk(c, x.StreamRequest("mentions"))
    assert len(session.seen) == 2 and 595 <= max(slept) <= 605  # the cap's reset, once


def test_a_spent_daily_cap_stops_cleanly_instead_of_waiting_for_the_window() -> None:
    """The 15-minute window resets soon, the 24-hour cap does not: asking again after the
    window would meet the same 429."""
    c, session, slept = client([daily_capped(20_000), daily_capped(20_000)])
    with pytest.raises(ApiError) as error:
        walk(c, x.StreamRequest("mentions"))
    assert error.value.action is Action.QUOTA and "resets in 333 min" in str(error.value)
    assert len(session.seen) == 1 and not slept


def test_401_fails_at_once_and_says_which_setting_to_fix() -> None:
    body = {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}
    c, session, _ = client([response(401, body)])
    with pytest.raises(ApiError) as error:
        walk(c, x.StreamRequest("mentions"))
    assert "accounts[brand].bearer_token" in str(error.value)
    assert "token-123" not in str(error.value)
    assert len(session.seen) == 1


def test_5xx_is_retried() -> None:
    c, session, _ = client(
        [
            response(503, {"title": "Service Unavailable"}),
            response(200, {"meta": {"result_count": 0}}),
        ]
    )
    walk(c, x.StreamRequest("mentions"))
    assert len(session.seen) == 2


@pytest.mark.skipif(not RECORDINGS.exists(), reason="shared recordings not present")
@pytest.mark.parametrize(
    ("name", "stream"),
    [
        ("mentions_default_next_token.json", "mentions"),
        ("quote_tweets.json", "quotes"),
        ("liking_users.json", "likes"),
        ("retweeted_by_next_token.json", "reposts"),
    ],
)
def test_real_recorded_pages_parse(name: str, stream: str) -> None:
    recording = json.loads((RECORDINGS / "x" / name).read_text())
    body = recording["body"]
    if stream in ("mentions", "quotes"):
        page = x.parse_tweets(body, stream=stream, brand_id="783214", post_id="1")
        with_author = [t for t in body.get("data", []) if t.get("author_id")]
        assert len(page.records) + len(page.problems) == len(body.get("data", []))
        assert len(page.records) == len(with_author) or page.problems
    else:
        kind = EngagementKind.LIKE if stream == "likes" else EngagementKind.REPOST
        page = x.parse_users(body, kind=kind, post_id="1")
        assert len(page.records) == len(body["data"])
        assert all(r.author.handle for r in page.records)


def test_timestamps_with_an_offset_are_kept_in_utc(state_url: str) -> None:
    """SQLite stores a timestamp's wall-clock time without its offset: parsed in UTC, it
    reads back the same on both backends (checked: before, 10:00+05:00 came back from
    SQLite as 10:00 UTC, five hours late for decay, first and last engaged)."""
    from datetime import UTC, datetime

    from socialcrm.config import Qualification
    from socialcrm.records import Engagement, EngagementKind, SocialProfile
    from socialcrm.state import StateStore

    parsed = x.parse_time("2026-11-20T10:00:00+05:00")
    assert parsed == datetime(2026, 11, 20, 5, tzinfo=UTC) and parsed.tzinfo is UTC
    ana = SocialProfile(platform="x", user_id="5551", handle="ana_l")
    with StateStore.open(state_url) as store:
        store.ingest(
            "brand", [Engagement("x", "1", EngagementKind.MENTION, ana, parsed)], Qualification()
        )
        (stored,) = store.engagements_of(["x:5551"])["x:5551"]
    assert stored.occurred_at == datetime(2026, 11, 20, 5, tzinfo=UTC)
