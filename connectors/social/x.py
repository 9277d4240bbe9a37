"""X API v2 source: the brand's mentions, quotes, reposts and likes, page by page.

Reads top to bottom: a thin client (auth, rate-limit windows, errors), then one page
fetcher per stream, then the payload parsers. Mentions resume from a ``since_id``;
quote timelines are newest first, so paging stops at the first already-seen id; like and
repost lists have no cursor at all and are re-read and diffed by the state store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import requests
from pydantic import SecretStr

from connectors.http import (
    Action,
    ApiError,
    RetryPolicy,
    build_session,
    call_with_retry,
    register_secret,
    retry_after_seconds,
    sanitize_json,
    transport_error,
)
from socialcrm.config import XAccount, resolve_secret
from socialcrm.records import Engagement, EngagementKind, Page, RecordProblem, SocialProfile

log = logging.getLogger("socialcrm.x")

SYSTEM = "x"
# created_at, public_metrics (followers/following/tweet counts) and profile_image_url
# (the default avatar) feed the bot heuristics (socialcrm.exclusions).
USER_FIELDS = "created_at,description,location,public_metrics,verified,profile_image_url,url"
TWEET_FIELDS = "created_at,author_id,conversation_id,in_reply_to_user_id,referenced_tweets"
# The mentions timeline only reaches this many of the newest posts.
MENTIONS_REACH = 800

Stream = Literal["mentions", "quotes", "reposts", "likes"]


@dataclass
class _HttpFailure(Exception):
    response: requests.Response


@dataclass
class XClient:
    """One authenticated session for one account, with its rate-limit windows."""

    account: XAccount
    session: requests.Session
    token: SecretStr
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    calls: int = 0
    credential: str = "bearer_token"  # the config key a refused token came from
    # A token that expires: given the refused token, a valid one (x_dm.DmTokens.renew).
    renew: Callable[[SecretStr], SecretStr] | None = None
    _windows: dict[str, tuple[int, float]] = field(default_factory=dict)
    _window_lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, path: str, params: dict[str, Any], *, template: str) -> dict[str, Any]:
        url = self.account.api_base_url.rstrip("/") + path
        call = f"GET {template}"

        sent_with: list[SecretStr] = []  # the token of the last attempt (it may be renewed)

        def once() -> dict[str, Any]:
            self._wait_for_window(template)
            sent_with[:] = [self.token]
            response = self.session.get(
                url,
                params=params,
                headers={"Authorization": f"Bearer {sent_with[0].get_secret_value()}"},
            )
            self.calls += 1
            self._remember_window(template, response.headers)
            if response.status_code != 200:
                raise _HttpFailure(response)
            body = sanitize_json(response.json())
            if not isinstance(body, dict):
                raise ApiError(SYSTEM, call, "response body is not a JSON object", status=200)
            return body

        def attempt() -> dict[str, Any]:
            return call_with_retry(
                once,
                system=SYSTEM,
                call=call,
                classify=lambda exc: _classify(call, exc, self.account, self.credential),
                policy=self.policy,
            )

        if self.renew is not None and not self.token.get_secret_value():
            self.token = self.renew(self.token)  # the first call of a renewing client
        try:
            return attempt()
        except ApiError as error:
            if error.status != 401 or self.renew is None:
                raise
            # An expired user-context token: renewed once (by whichever call asks first;
            # the others find the new one stored).
            self.token = self.renew(sent_with[0] if sent_with else self.token)
            return attempt()

    def _remember_window(self, template: str, headers: Any) -> None:
        remaining = headers.get("x-rate-limit-remaining")
        reset = headers.get("x-rate-limit-reset")
        if remaining is not None and reset is not None:
            with contextlib.suppress(ValueError):  # a garbled header is no reason to fail
                self._windows[template] = (int(remaining), float(reset))

    def _wait_for_window(self, template: str) -> None:
        """Wait for the window to reset rather than spend a call on a certain 429.

        Streams walked in parallel share the client: each call takes one of the
        remaining calls under a lock, so together they never overrun the window.
        """
        with self._window_lock:
            remaining, reset = self._windows.get(template, (1, 0.0))
            if remaining > 0:
                self._windows[template] = (remaining - 1, reset)
                return
        delay = reset - time.time() + 1.0
        if delay <= 0:
            return
        if delay > self.account.max_rate_limit_wait_seconds:
            raise ApiError(
                SYSTEM,
                f"GET {template}",
                f"rate limit window resets in {delay:.0f}s, over the configured "
                f"max_rate_limit_wait_seconds={self.account.max_rate_limit_wait_seconds:.0f}",
                status=429,
                action=Action.QUOTA,
            )
        log.info("x %s: rate limit window spent; waiting %.1fs for its reset", template, delay)
        self.policy.sleep(delay)


def connect(account: XAccount, *, policy: RetryPolicy | None = None) -> XClient:
    token = resolve_secret(account.bearer_token, what=f"accounts[{account.name}].bearer_token")
    register_secret(token.get_secret_value())
    session = build_session(ca_bundle=account.ca_bundle, timeout=account.timeout_seconds)
    policy = policy or RetryPolicy(max_wait_seconds=account.max_rate_limit_wait_seconds)
    return XClient(account=account, session=session, token=token, policy=policy)


def _classify(
    call: str, exc: BaseException, account: XAccount, credential: str = "bearer_token"
) -> ApiError | None:
    if isinstance(exc, requests.RequestException):
        return transport_error(SYSTEM, call, exc)
    if isinstance(exc, ValueError):  # JSON decode of a 200 body
        return ApiError(SYSTEM, call, f"malformed JSON body: {exc}", status=200)
    if not isinstance(exc, _HttpFailure):
        return None
    response = exc.response
    status = response.status_code
    detail = _problem_detail(response)
    retry_after = retry_after_seconds(response.headers)
    if status == 429:
        daily = _daily_cap_wait(response)
        if daily:  # the window may reset first: asking then would meet the same cap
            retry_after = max(retry_after or 0.0, daily)
        wait = retry_after or 0.0
        if wait > account.max_rate_limit_wait_seconds:
            # A 24-hour cap (or a window) that outlasts the wait we allow: waiting 15
            # minutes and asking again would only meet the same 429.
            return ApiError(
                SYSTEM,
                call,
                f"{detail}: the limit resets in {wait / 60:.0f} min, over "
                f"max_rate_limit_wait_seconds={account.max_rate_limit_wait_seconds:.0f}; "
                "the next run resumes where this one stopped",
                status=status,
                action=Action.QUOTA,
            )
    if status == 429 or status >= 500:
        return ApiError(
            SYSTEM,
            call,
            detail,
            status=status,
            action=Action.RETRY,
            retry_after=retry_after,
        )
    if status == 401:
        detail = f"{detail}: check accounts[{account.name}].{credential}"
    elif status == 403:
        detail = f"{detail}: the app's access level does not allow this endpoint"
    return ApiError(SYSTEM, call, detail, status=status, action=Action.FAIL)


def _daily_cap_wait(response: requests.Response, now: float | None = None) -> float:
    """Seconds until a spent 24-hour cap resets (``x-app-limit-24hour-*`` and
    ``x-user-limit-24hour-*``, sent by endpoints with daily caps); 0 when none is spent."""
    now = time.time() if now is None else now
    headers = response.headers
    wait = 0.0
    for scope in ("app", "user"):
        remaining = headers.get(f"x-{scope}-limit-24hour-remaining")
        reset = headers.get(f"x-{scope}-limit-24hour-reset")
        with contextlib.suppress(TypeError, ValueError):
            if remaining is not None and int(remaining) <= 0 and reset is not None:
                wait = max(wait, float(reset) - now + 1.0)
    return wait


def _problem_detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason or "no body"
    if isinstance(body, dict):
        parts = [str(body.get("title") or ""), str(body.get("detail") or "")]
        for error in _list(body.get("errors")):
            if isinstance(error, dict) and error.get("message"):
                parts.append(str(error["message"]))
        text = ": ".join(part for part in parts if part)
        return text or str(body)[:300]
    return str(body)[:300]


# ---------------------------------------------------------------------------------------
# Streams


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """Where to read next in one stream; small and plain so a task can take it."""

    stream: Stream
    post_id: str | None = None
    since_id: str | None = None
    pagination_token: str | None = None
    newest_id: str | None = None
    start_time: str | None = None

    @property
    def cursor_name(self) -> str:
        return self.stream if self.post_id is None else f"{self.stream}:{self.post_id}"


def recent_posts(client: XClient, *, since: datetime | None = None) -> list[dict[str, Any]]:
    """The brand's own recent posts: likes, reposts and quotes hang off these."""
    account = client.account
    params: dict[str, Any] = {
        "max_results": max(5, account.recent_posts),
        "exclude": "retweets,replies",
        "tweet.fields": "created_at",
    }
    if since is not None:
        params["start_time"] = _x_time(since)
    body = client.get(f"/2/users/{account.user_id}/tweets", params, template="/2/users/:id/tweets")
    posts = [post for post in _list(body.get("data")) if isinstance(post, dict) and post.get("id")]
    return posts[: account.recent_posts]


def fetch_page(
    client: XClient, request: StreamRequest
) -> tuple[Page[Engagement], StreamRequest | None]:
    """Read one page of a stream; return it and the request for the next page, if any.

    ``page.cursor`` is set only on the last page of a walk: a crash part-way leaves the
    stored cursor where it was, and the next run reads the walk again from the top.
    """
    account = client.account
    size = account.page_size
    if request.stream == "mentions":
        params: dict[str, Any] = {
            "max_results": size,
            "expansions": "author_id,referenced_tweets.id",
            "tweet.fields": TWEET_FIELDS,
            "user.fields": USER_FIELDS,
        }
        if request.since_id:
            params["since_id"] = request.since_id
        elif request.start_time:
            params["start_time"] = request.start_time
        path, template = f"/2/users/{account.user_id}/mentions", "/2/users/:id/mentions"
    elif request.stream == "quotes":
        params = {
            "max_results": max(10, size),
            "exclude": "retweets",  # reposts of the quotes: not engagements with the post
            "expansions": "author_id",
            "tweet.fields": TWEET_FIELDS,
            "user.fields": USER_FIELDS,
        }
        path, template = f"/2/tweets/{request.post_id}/quote_tweets", "/2/tweets/:id/quote_tweets"
    else:
        endpoint = "liking_users" if request.stream == "likes" else "retweeted_by"
        params = {"max_results": size, "user.fields": USER_FIELDS}
        path, template = f"/2/tweets/{request.post_id}/{endpoint}", f"/2/tweets/:id/{endpoint}"
    if request.pagination_token:
        params["pagination_token"] = request.pagination_token
    body = client.get(path, params, template=template)

    if request.stream in ("mentions", "quotes"):
        page = parse_tweets(
            body, stream=request.stream, brand_id=account.user_id, post_id=request.post_id
        )
    else:
        kind = EngagementKind.LIKE if request.stream == "likes" else EngagementKind.REPOST
        page = parse_users(body, kind=kind, post_id=request.post_id or "")

    meta = _dict(body.get("meta"))
    newest = request.newest_id or _str_or_none(meta.get("newest_id")) or _newest(page)
    reached_known = False
    if request.since_id and request.stream == "quotes":
        # Quote timelines have no since_id: drop what we already have and stop there.
        kept = [r for r in page.records if _id_after(r.id, request.since_id)]
        reached_known = len(kept) < len(page.records)
        page.records = kept
    token = _str_or_none(meta.get("next_token"))
    if token and not reached_known:
        page.next_token = token
        return page, replace(request, pagination_token=token, newest_id=newest)
    if request.stream in ("mentions", "quotes"):
        page.cursor = newest or request.since_id
    return page, None


def _id_after(value: str, since: str) -> bool:
    try:
        return int(value) > int(since)
    except ValueError:
        return True


def _newest(page: Page[Engagement]) -> str | None:
    ids = [r.id for r in page.records if _NUMERIC.fullmatch(r.id)]
    return max(ids, key=int) if ids else None


def _x_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------
# Payload parsing: hostile input is expected; every bad item becomes a RecordProblem.


def _list(value: Any) -> list[Any]:
    """A JSON array, or nothing: a payload's shape is a claim, not a promise."""
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


MAX_USERNAME = 50
"""Longer is no X username: refused with its record, never left to fail a page's store."""

# ASCII digits only: str.isdigit() also takes "²" or "①", which int() refuses.
_NUMERIC = re.compile(r"[0-9]{1,20}")  # a 64-bit id has at most 20 digits


def _id(value: Any) -> str | None:
    """X ids are numeric strings; a bare JSON number is read as the same id."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**64:
        return str(value)
    if isinstance(value, str) and _NUMERIC.fullmatch(value):
        return value
    return None


def unnamed_key(prefix: str, item: Any) -> str:
    """The dead-letter key of a record with no usable id: its content's fingerprint, so
    two bad records (in two pages, at the same place) keep a letter each."""
    text = json.dumps(item, sort_keys=True, default=str, ensure_ascii=True)
    return f"{prefix}:#{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_time(value: Any) -> datetime | None:
    """An API timestamp in UTC. SQLite keeps a timestamp's wall-clock time and drops its
    offset, so "10:00+05:00" stored as it is would read back as 10:00 UTC."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_profile(user: dict[str, Any]) -> SocialProfile:
    """An X user object as a profile; raises ValueError naming the bad field."""
    user_id = _id(user.get("id"))
    if user_id is None:
        raise ValueError(f"id: expected a numeric string, got {user.get('id')!r:.40}")
    # The id is the identity; a missing handle costs only the readable profile link.
    raw_username = user.get("username")
    username = raw_username if isinstance(raw_username, str) else ""
    if len(username) > MAX_USERNAME:  # X allows 15; the store keeps 200
        raise ValueError(f"username: {len(username)} characters, more than {MAX_USERNAME}")
    metrics = _dict(user.get("public_metrics"))
    return SocialProfile(
        platform="x",
        user_id=user_id,
        handle=username,
        display_name=_str_or_none(user.get("name")),
        bio=_str_or_none(user.get("description")),
        location=_str_or_none(user.get("location")),
        profile_url=f"https://x.com/{username}" if username else f"https://x.com/i/user/{user_id}",
        followers=_int_or_none(metrics.get("followers_count")),
        following=_int_or_none(metrics.get("following_count")),
        posts=_int_or_none(metrics.get("tweet_count")),
        verified=user.get("verified") if isinstance(user.get("verified"), bool) else None,
        created_at=parse_time(user.get("created_at")),
        default_profile_image=_default_profile_image(user),
    )


def _default_profile_image(user: dict[str, Any]) -> bool | None:
    """Whether the account still has X's default avatar; None when we cannot tell.

    API v2 has no flag for it (v1.1's ``default_profile_image``, taken when present):
    the default avatar's ``profile_image_url`` lives under ``/default_profile_images/``.
    """
    flag = user.get("default_profile_image")
    if isinstance(flag, bool):
        return flag
    url = user.get("profile_image_url")
    if isinstance(url, str) and url.strip():
        return "/default_profile_images/" in url
    return None


def _partial_errors(body: dict[str, Any]) -> list[RecordProblem]:
    """X reports missing or suspended items in a 200's ``errors``: per item, not fatal."""
    problems = []
    for error in _list(body.get("errors")):
        if not isinstance(error, dict):
            continue
        resource = error.get("resource_id") or error.get("value") or "?"
        problems.append(
            RecordProblem(
                record_key=f"x:{error.get('resource_type', 'item')}:{resource}",
                stage="source-warning",
                system=SYSTEM,
                field=_str_or_none(error.get("parameter")) or _str_or_none(error.get("field")),
                reason=str(error.get("detail") or error.get("title") or "partial error"),
            )
        )
    return problems


def parse_users(body: dict[str, Any], *, kind: EngagementKind, post_id: str) -> Page[Engagement]:
    page: Page[Engagement] = Page(records=[], warnings=_partial_errors(body))
    for user in _list(body.get("data")):
        if not isinstance(user, dict):
            key = unnamed_key(f"x:{kind.value}:{post_id}", user)
            page.problems.append(_bad(key, None, "not an object"))
            continue
        try:
            profile = parse_profile(user)
        except ValueError as exc:
            field_name, _, reason = str(exc).partition(": ")
            user_id = _id(user.get("id"))
            key = (
                f"x:{kind.value}:{post_id}:{user_id}"
                if user_id
                else unnamed_key(f"x:{kind.value}:{post_id}", user)
            )
            page.problems.append(_bad(key, field_name, reason, user))
            continue
        page.records.append(
            Engagement(
                platform="x",
                id=f"{post_id}:{profile.user_id}",
                kind=kind,
                author=profile,
                post_id=post_id,
                url=f"https://x.com/i/web/status/{post_id}",
            )
        )
    return page


def parse_tweets(
    body: dict[str, Any], *, stream: str, brand_id: str, post_id: str | None = None
) -> Page[Engagement]:
    page: Page[Engagement] = Page(records=[], warnings=_partial_errors(body))
    includes = _dict(body.get("includes"))
    users: dict[str, dict[str, Any]] = {}
    for user in _list(includes.get("users")):
        user_id = _id(user.get("id")) if isinstance(user, dict) else None
        if user_id:
            users[user_id] = user
    for tweet in _list(body.get("data")):
        if not isinstance(tweet, dict):
            page.problems.append(_bad(unnamed_key(f"x:{stream}", tweet), None, "not an object"))
            continue
        tweet_id = _id(tweet.get("id"))
        if tweet_id is None:
            page.problems.append(
                _bad(
                    unnamed_key(f"x:{stream}", tweet),
                    "id",
                    f"expected a numeric string, got {tweet.get('id')!r:.40}",
                    tweet,
                )
            )
            continue
        if _is_repost(tweet):
            continue  # an amplified post, not their words: reposts come from retweeted_by
        kind, touched = _tweet_kind(tweet, stream, brand_id)
        touched = touched or post_id
        key = f"x:{kind.value}:{tweet_id}"
        author_id = _id(tweet.get("author_id"))
        user = users.get(author_id) if author_id else None
        if user is None:
            page.problems.append(
                _bad(key, "author_id", f"author {author_id!r:.40} not in includes.users", tweet)
            )
            continue
        try:
            profile = parse_profile(user)
        except ValueError as exc:
            field_name, _, reason = str(exc).partition(": ")
            page.problems.append(_bad(key, f"author.{field_name}", reason, tweet))
            continue
        text = tweet.get("text")
        page.records.append(
            Engagement(
                platform="x",
                id=tweet_id,
                kind=kind,
                author=profile,
                occurred_at=parse_time(tweet.get("created_at")),
                post_id=touched,
                text=text if isinstance(text, str) else None,
                url=f"https://x.com/{profile.handle}/status/{tweet_id}",
            )
        )
    return page


def _is_repost(tweet: dict[str, Any]) -> bool:
    """A retweet: X lists reposts of a quote among the quotes (unless excluded) and
    reposts of posts naming the brand among its mentions. ``referenced_tweets`` is always
    asked for, and X leaves it out for a tweet that references nothing: a text starting
    "RT @" without it is an old-style repost with words of its own, a mention."""
    references = tweet.get("referenced_tweets")
    return isinstance(references, list) and any(
        isinstance(r, dict) and r.get("type") == "retweeted" for r in references
    )


def _tweet_kind(
    tweet: dict[str, Any], stream: str, brand_id: str
) -> tuple[EngagementKind, str | None]:
    """A quote stays a quote whichever stream it came from, so its key is the same."""
    references = [r for r in _list(tweet.get("referenced_tweets")) if isinstance(r, dict)]
    quoted = next((r.get("id") for r in references if r.get("type") == "quoted"), None)
    replied = next((r.get("id") for r in references if r.get("type") == "replied_to"), None)
    if stream == "quotes" or quoted:
        return EngagementKind.QUOTE, _str_or_none(quoted)
    if replied and tweet.get("in_reply_to_user_id") == brand_id:
        return EngagementKind.REPLY, _str_or_none(replied)
    return EngagementKind.MENTION, None


def _bad(
    key: str, field_name: str | None, reason: str, payload: dict[str, Any] | None = None
) -> RecordProblem:
    return RecordProblem(
        record_key=key,
        stage="source",
        system=SYSTEM,
        field=field_name or None,
        reason=reason,
        payload=payload,
    )
