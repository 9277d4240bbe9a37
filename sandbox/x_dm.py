"""X API v2 DM lookup: ``/2/dm_events`` and the two per-conversation variants.

DMs are private, so X refuses the app-only bearer here with a 403 "Unsupported
Authentication" problem (not a 401): only a user-context token (``USER_TOKEN``) reads them.
Events come newest first and only from the last 30 days; there is no ``since_id``, so
clients page until they meet an event they already hold.

User-context tokens expire (``x_user_token_ttl_s``, 2 hours as on X) and are renewed at
``POST /2/oauth2/token`` with ``grant_type=refresh_token``: each refresh token works once
and the answer carries the next one (X rotates them). ``USER_TOKEN`` itself never expires,
for configs that hand a ready token.

Pagination follows the recordings: every non-empty page carries ``previous_token`` (newer
events) and ``next_token`` (older ones), even the last page, whose ``next_token`` then
leads to ``{"meta":{"result_count":0}}``. Clients must stop on either signal.
"""

from __future__ import annotations

import base64
import functools
import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from sandbox.dm_seed import DMEvent, DMInbox
from sandbox.seed import DAY_MS, XTweet, XUser, now_ms, overridden, x_time
from sandbox.wire import Options, Request, Response, json_response
from sandbox.x_params import (
    BEARER,
    PROBLEM,
    TWEET_FIELDS,
    USER_DEFAULTS,
    USER_FIELDS,
    XError,
    check_params,
    decode_token,
    encode_token,
    invalid,
    list_param,
    max_results,
    problem,
)

USER_TOKEN = "sandbox-x-user-token"
REFRESH_TOKEN = "sandbox-x-refresh-token"  # the first refresh token a config hands over
CLIENT_ID = "sandbox-x-client-id"
DM_FIELDS = [
    "id",
    "text",
    "event_type",
    "created_at",
    "dm_conversation_id",
    "sender_id",
    "participant_ids",
    "referenced_tweets",
    "attachments",
]
DM_DEFAULTS = ("id", "event_type", "text")
DM_EXPANSIONS = ["attachments.media_keys", "participant_ids", "referenced_tweets.id", "sender_id"]
EVENT_TYPES = ["MessageCreate", "ParticipantsJoin", "ParticipantsLeave"]
MEDIA_FIELDS = ["duration_ms", "height", "media_key", "preview_image_url", "type", "url", "width"]
DM_PARAMS = [
    "dm_event.fields",
    "event_types",
    "expansions",
    "max_results",
    "pagination_token",
    "user.fields",
    "tweet.fields",
    "media.fields",
]
VISIBLE_MS = 30 * DAY_MS

Spend = Callable[[str], tuple[dict[str, str], bool]]
RenderTweet = Callable[[XTweet, list[str]], dict[str, Any]]


def unsupported_authentication() -> Response:
    """What X answers when an app-only bearer asks for user-context data (DMs)."""
    body = {
        "title": "Unsupported Authentication",
        "detail": "Authenticating with OAuth 2.0 Application-Only is forbidden for this "
        "endpoint.  Supported authentication types are [OAuth 1.0a User Context, "
        "OAuth 2.0 User Context].",
        "type": "https://api.twitter.com/2/problems/unsupported-authentication",
        "status": 403,
    }
    return json_response(403, body, content_type=PROBLEM)


class UserTokens:
    """OAuth 2.0 user-context tokens: access tokens that expire, refresh tokens used once."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._access: dict[str, float] = {}  # token -> expiry (time.time())
        self._refresh = {REFRESH_TOKEN}
        self.refreshes = 0

    def valid(self, token: str) -> bool:
        if token == USER_TOKEN:
            return True
        with self._lock:
            return self._access.get(token, 0.0) > time.time()

    def token_endpoint(self, req: Request) -> Response:
        form = {k: v[-1] for k, v in parse_qs(req.body.decode("utf-8", "replace")).items()}
        client_id = form.get("client_id")
        basic = req.header("authorization") or ""
        if basic.startswith("Basic "):  # a confidential client names itself this way
            client_id = base64.b64decode(basic[6:]).decode("utf-8", "replace").partition(":")[0]
        if form.get("grant_type") != "refresh_token" or not form.get("refresh_token"):
            return _oauth_error("invalid_request", "Missing required parameter [grant_type].")
        if client_id != CLIENT_ID:
            return _oauth_error("unauthorized_client", "Missing valid authorization header")
        with self._lock:
            if form["refresh_token"] not in self._refresh:
                return _oauth_error("invalid_request", "Value passed for the token was invalid.")
            self._refresh.discard(form["refresh_token"])
            access, refresh = secrets.token_urlsafe(48), secrets.token_urlsafe(48)
            ttl = self.options.x_user_token_ttl_s
            self._access[access] = time.time() + ttl
            self._refresh.add(refresh)
            self.refreshes += 1
        body = {
            "token_type": "bearer",
            "expires_in": int(ttl),
            "access_token": access,
            "scope": "tweet.read users.read dm.read offline.access",
            "refresh_token": refresh,
        }
        return json_response(200, body)


def _oauth_error(error: str, description: str) -> Response:
    return json_response(400, {"error": error, "error_description": description})


class DMEndpoints:
    def __init__(
        self, inbox: DMInbox, spend: Spend, render_tweet: RenderTweet, tokens: UserTokens
    ) -> None:
        self.inbox = inbox
        self.tokens = tokens
        self.spend = spend  # the X simulator's rate-limit windows, shared
        self.render_tweet = render_tweet
        self.routes: list[tuple[re.Pattern[str], str, Callable[[Request, str], Response]]] = [
            (re.compile(r"^/2/dm_events()$"), "GET /2/dm_events", self.all_events),
            (
                re.compile(r"^/2/dm_conversations/with/([^/]+)/dm_events$"),
                "GET /2/dm_conversations/with/:id/dm_events",
                self.with_participant,
            ),
            (
                re.compile(r"^/2/dm_conversations/([^/]+)/dm_events$"),
                "GET /2/dm_conversations/:id/dm_events",
                self.conversation,
            ),
        ]

    def route(self, req: Request) -> tuple[str, Callable[[], Response]] | None:
        if req.method == "POST" and req.path.rstrip("/") == "/2/oauth2/token":
            return "POST /2/oauth2/token", functools.partial(self.tokens.token_endpoint, req)
        if req.method != "GET":
            return None
        for pattern, key, handler in self.routes:
            match = pattern.match(req.path.rstrip("/"))
            if match:
                return key, functools.partial(self._guarded, req, key, handler, match.group(1))
        return None

    def _guarded(
        self, req: Request, key: str, handler: Callable[[Request, str], Response], arg: str
    ) -> Response:
        auth = req.header("authorization")
        if auth == f"Bearer {BEARER}":
            return unsupported_authentication()
        if not auth or not auth.startswith("Bearer ") or not self.tokens.valid(auth[7:]):
            return problem(401, "Unauthorized")
        rate_headers, allowed = self.spend(key)
        if not allowed:
            return problem(429, "Too Many Requests", headers=rate_headers)
        try:
            response = handler(req, arg)
        except XError as exc:
            response = exc.response
        response.headers.update(rate_headers)
        return response

    # --- endpoints -----------------------------------------------------------------------

    def all_events(self, req: Request, _: str) -> Response:
        return self._page(req, self.inbox.events)

    def with_participant(self, req: Request, participant_id: str) -> Response:
        if not participant_id.isdigit():
            raise invalid(
                "participant_id",
                participant_id,
                f"The `participant_id` query parameter value [{participant_id}] is not valid",
            )
        conversation = self.inbox.one_to_one(participant_id)
        return self._page(req, [e for e in self.inbox.events if e.conversation_id == conversation])

    def conversation(self, req: Request, conversation_id: str) -> Response:
        if not re.match(r"^[0-9]+(-[0-9]+)?$", conversation_id):
            raise invalid(
                "dm_conversation_id",
                conversation_id,
                f"The `dm_conversation_id` query parameter value [{conversation_id}] is not valid",
            )
        events = [e for e in self.inbox.events if e.conversation_id == conversation_id]
        return self._page(req, events)  # someone else's conversation: simply nothing

    # --- paging and rendering ------------------------------------------------------------

    def _page(self, req: Request, events: list[DMEvent]) -> Response:
        check_params(req, DM_PARAMS)
        size = max_results(req, 1, 100, 100)
        fields = list_param(req, "dm_event.fields", DM_FIELDS)
        types = list_param(req, "event_types", EVENT_TYPES)
        expansions = list_param(req, "expansions", DM_EXPANSIONS)
        user_fields = list_param(req, "user.fields", USER_FIELDS)
        tweet_fields = list_param(req, "tweet.fields", TWEET_FIELDS)
        media_fields = list_param(req, "media.fields", MEDIA_FIELDS)
        oldest = now_ms() - VISIBLE_MS
        items = [e for e in events if e.created_ms >= oldest]
        if types:
            items = [e for e in items if e.event_type in types]
        items.sort(key=lambda e: int(e.id), reverse=True)
        token = req.param("pagination_token")
        if token:
            direction, boundary = decode_token(token, 2)
            if direction == 0:
                items = [e for e in items if int(e.id) < boundary][:size]
            else:  # previous: the newer events nearest the boundary, still newest first
                items = [e for e in items if int(e.id) > boundary][-size:]
        page = items[:size]
        if not page:
            return json_response(200, {"meta": {"result_count": 0}})
        served = [e for item in page for e in ([item, item] if item.twice else [item])]
        body: dict[str, Any] = {"data": [self._event(e, fields) for e in served]}
        includes = self._includes(page, expansions, user_fields, tweet_fields, media_fields)
        if includes:
            body["includes"] = includes
        body["meta"] = {
            "result_count": len(served),
            "next_token": encode_token(0, int(page[-1].id)),
            "previous_token": encode_token(1, int(page[0].id)),
        }
        return json_response(200, body)

    def _event(self, e: DMEvent, fields: list[str]) -> dict[str, Any]:
        full: dict[str, Any] = {
            "id": e.id,
            "event_type": e.event_type,
            "created_at": x_time(e.created_ms),
            "dm_conversation_id": e.conversation_id,
            "sender_id": e.sender_id,
        }
        if e.text is not None:
            full["text"] = e.text
        if e.participant_ids:
            full["participant_ids"] = list(e.participant_ids)
        if e.referenced_tweet_id:
            full["referenced_tweets"] = [{"id": e.referenced_tweet_id}]
        if e.media_keys:
            full["attachments"] = {"media_keys": list(e.media_keys)}
        if e.overrides:
            full = overridden(full, e.overrides)
        wanted = set(DM_DEFAULTS) | set(fields)
        return {k: v for k, v in full.items() if k in wanted}

    def _includes(
        self,
        page: list[DMEvent],
        expansions: list[str],
        user_fields: list[str],
        tweet_fields: list[str],
        media_fields: list[str],
    ) -> dict[str, Any]:
        world = self.inbox.world
        user_ids: list[str] = []
        for e in page:
            if "sender_id" in expansions:
                user_ids.append(e.sender_id)
            if "participant_ids" in expansions and e.participant_ids:
                user_ids.extend(e.participant_ids)
        users: dict[str, XUser] = {u.id: u for u in [world.brand, *world.users.values()]}
        wanted = set(USER_DEFAULTS) | set(user_fields)
        includes: dict[str, Any] = {}
        found = [users[i] for i in dict.fromkeys(user_ids) if i in users]
        if found:
            includes["users"] = [
                {k: v for k, v in u.payload().items() if k in wanted} for u in found
            ]
        if "attachments.media_keys" in expansions:
            media = [self._media(e, k, media_fields) for e in page for k in e.media_keys or []]
            if media:
                includes["media"] = media
        if "referenced_tweets.id" in expansions:
            posts = {p.id: p for p in world.posts}
            refs = dict.fromkeys(e.referenced_tweet_id for e in page if e.referenced_tweet_id)
            tweets = [self.render_tweet(posts[i], tweet_fields) for i in refs if i in posts]
            if tweets:
                includes["tweets"] = tweets
        return includes

    def _media(self, e: DMEvent, key: str, fields: list[str]) -> dict[str, Any]:
        media_id = key.split("_", 1)[-1]
        full = {
            "media_key": key,
            "type": "photo",
            "url": f"https://ton.twitter.com/1.1/ton/data/dm/{e.id}/{media_id}/sandbox.jpg",
            "width": 1170,
            "height": 2532,
        }
        wanted = {"media_key", "type"} | set(fields)
        return {k: v for k, v in full.items() if k in wanted}
