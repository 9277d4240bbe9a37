"""X API v2 simulator: the read endpoints a brand's engagement pipeline uses.

Shapes follow the recorded responses (``recordings/x``): string ids, ``data`` omitted on
empty pages, ``meta.next_token`` only when there is more, problem+json errors, rate-limit
headers on every answer, and resource-not-found entries inside 200 bodies.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox.dm_seed import DMInbox
from sandbox.seed import Reaction, World, XTweet, XUser, overridden, x_time
from sandbox.wire import Options, Request, Response, json_response
from sandbox.x_dm import USER_TOKEN, DMEndpoints, UserTokens
from sandbox.x_params import (
    BEARER,
    MENTIONS_REACHABLE,
    OTHER_FIELDS,
    TWEET_DEFAULTS,
    TWEET_EXPANSIONS,
    TWEET_FIELDS,
    USER_DEFAULTS,
    USER_EXPANSIONS,
    USER_FIELDS,
    XError,
    check_params,
    decode_token,
    encode_token,
    id_param,
    invalid,
    list_param,
    max_results,
    not_found,
    problem,
)


def reaction_order(r: Reaction) -> tuple[int, int]:
    """How reactions are listed (reversed: most recent first) and paged."""
    return r.created_ms, int(r.user_id)


def post_metrics(world: World) -> dict[str, dict[str, int]]:
    """Each brand post's public metrics, counted from the world."""
    counts: dict[str, dict[str, int]] = {}
    for post in world.posts:
        counts[post.id] = {
            "retweet_count": 0,
            "reply_count": 0,
            "like_count": 0,
            "quote_count": 0,
            "bookmark_count": 0,
            "impression_count": 0,
        }
    names = {
        "like": "like_count",
        "repost": "retweet_count",
        "reply": "reply_count",
        "quote": "quote_count",
    }
    pairs = [(r.post_id, r.kind) for r in world.reactions]
    pairs += [(t.post_id, t.kind) for t in world.tweets if t.post_id]
    for post_id, kind in pairs:
        if post_id in counts:
            counts[post_id][names[kind]] += 1
    for c in counts.values():
        c["impression_count"] = 40 * c["like_count"] + 311
        c["bookmark_count"] = c["like_count"] // 9
    return counts


@dataclass
class WorldIndex:
    """The world's tweets, reactions and users grouped the way the endpoints read them."""

    version: tuple[int, ...]
    metrics: dict[str, dict[str, int]]
    users: dict[str, XUser]  # the brand too
    posts: dict[str, XTweet]
    mentions: list[XTweet]  # mentions and replies, oldest first
    quotes: dict[str, list[XTweet]]  # by quoted post
    quote_retweets: dict[str, list[XTweet]]  # reposts of those quotes, by the brand post
    reactions: dict[tuple[str, str], list[Reaction]]  # by (kind, post), most recent first

    @classmethod
    def build(cls, world: World, version: tuple[int, ...]) -> WorldIndex:
        quotes: dict[str, list[XTweet]] = {}
        mentions = []
        for t in world.tweets:
            if t.kind in ("mention", "reply"):
                mentions.append(t)
            elif t.kind == "quote" and t.post_id:
                quotes.setdefault(t.post_id, []).append(t)
        taken = {t.id for t in world.tweets} | {p.id for p in world.posts}
        users = sorted(world.users)
        quote_retweets: dict[str, list[XTweet]] = {}
        for post_id, quoting in quotes.items():
            for t in quoting:
                retweet = _retweet_of(t, world, users, taken)
                if retweet is not None:
                    quote_retweets.setdefault(post_id, []).append(retweet)
        reactions: dict[tuple[str, str], list[Reaction]] = {}
        for r in world.reactions:
            reactions.setdefault((r.kind, r.post_id), []).append(r)
        for items in reactions.values():
            items.sort(key=reaction_order, reverse=True)
        return cls(
            version=version,
            metrics=post_metrics(world),
            users={u.id: u for u in [world.brand, *world.users.values()]},
            posts={p.id: p for p in world.posts},
            mentions=sorted(mentions, key=lambda t: int(t.id)),
            quotes=quotes,
            quote_retweets=quote_retweets,
            reactions=reactions,
        )


def _retweet_of(quote: XTweet, world: World, users: list[str], taken: set[str]) -> XTweet | None:
    """Every other quote is reposted by someone: X lists such reposts among a post's quote
    tweets ("RT @quoter: ...", recordings/x/quote_tweets.json) unless asked
    ``exclude=retweets``. Not an engagement with the brand's post: never in the truth."""
    number = int(quote.id)
    retweet_id = str(number + (1 << 21))  # half a millisecond later in snowflake terms
    if number % 2 or not users or retweet_id in taken or quote.author_id not in world.users:
        return None
    taken.add(retweet_id)
    author = users[number // 2 % len(users)]
    quoter = world.users[quote.author_id].username
    return XTweet(
        retweet_id,
        f"RT @{quoter}: {quote.text}"[:140],
        author,
        quote.created_ms,
        quote.lang,
        retweet_id,
        "retweet",
        post_id=quote.id,
    )


class XSimulator:
    def __init__(self, world: World, options: Options, inbox: DMInbox | None = None) -> None:
        self.world = world
        self.options = options
        self.windows: dict[str, tuple[float, int]] = {}
        self.epoch = options.rate_epoch
        self.dms: DMEndpoints | None = None
        self._indexed: WorldIndex | None = None
        if inbox is not None:
            render = lambda t, f: self._tweet(t, f, self._metrics())  # noqa: E731
            self.dms = DMEndpoints(inbox, self._spend, render, UserTokens(options))
        self.routes: list[tuple[re.Pattern[str], str, Callable[[Request, str], Response]]] = [
            (
                re.compile(r"^/2/users/([^/]+)/mentions$"),
                "GET /2/users/:id/mentions",
                self.mentions,
            ),
            (re.compile(r"^/2/users/([^/]+)/tweets$"), "GET /2/users/:id/tweets", self.timeline),
            (
                re.compile(r"^/2/tweets/([^/]+)/quote_tweets$"),
                "GET /2/tweets/:id/quote_tweets",
                self.quote_tweets,
            ),
            (
                re.compile(r"^/2/tweets/([^/]+)/liking_users$"),
                "GET /2/tweets/:id/liking_users",
                lambda r, i: self.reactors(r, i, "like"),
            ),
            (
                re.compile(r"^/2/tweets/([^/]+)/retweeted_by$"),
                "GET /2/tweets/:id/retweeted_by",
                lambda r, i: self.reactors(r, i, "repost"),
            ),
            (
                re.compile(r"^/2/users/by/username/([^/]+)$"),
                "GET /2/users/by/username/:username",
                self.user_by_username,
            ),
            (re.compile(r"^/2/users/([0-9]+)$"), "GET /2/users/:id", self.user_by_id),
        ]

    def route(self, req: Request) -> tuple[str, Callable[[], Response]] | None:
        """Match a request; returns the call key and a thunk producing the response."""
        dm_route = self.dms.route(req) if self.dms is not None else None
        if dm_route is not None:
            return dm_route
        if req.method != "GET":
            return None
        for pattern, key, handler in self.routes:
            match = pattern.match(req.path)
            if match:
                return key, functools.partial(self._guarded, req, key, handler, match.group(1))
        return None

    def _guarded(
        self, req: Request, key: str, handler: Callable[[Request, str], Response], arg: str
    ) -> Response:
        # Public data: the app bearer or a user-context token (as the DM connector holds).
        if req.header("authorization") not in (f"Bearer {BEARER}", f"Bearer {USER_TOKEN}"):
            return problem(401, "Unauthorized")  # no rate headers on 401, as recorded
        rate_headers, allowed = self._spend(key)
        if not allowed:
            return problem(429, "Too Many Requests", headers=rate_headers)
        try:
            response = handler(req, arg)
        except XError as exc:
            response = exc.response
        response.headers.update(rate_headers)
        return response

    def _spend(self, key: str) -> tuple[dict[str, str], bool]:
        limit = self.options.rate_limits.get(key, 900)
        if self.epoch != self.options.rate_epoch:
            self.windows.clear()
            self.epoch = self.options.rate_epoch
        now = time.time()
        start, used = self.windows.get(key, (now, 0))
        if now >= start + self.options.rate_window_seconds:
            start, used = now, 0
        allowed = used < limit
        if allowed:
            used += 1
        self.windows[key] = (start, used)
        reset = int(start + self.options.rate_window_seconds + 0.999)
        headers = {
            "x-rate-limit-limit": str(limit),
            "x-rate-limit-remaining": str(max(limit - used, 0)),
            "x-rate-limit-reset": str(reset),
        }
        return headers, allowed

    # --- parameters ----------------------------------------------------------------------

    # --- rendering -----------------------------------------------------------------------

    def _index(self) -> WorldIndex:
        """The world grouped for serving, rebuilt whenever it grew or shrank.

        Without it every call scanned every tweet, reaction and user: at 100,000
        engagements the simulator spent 50 ms a call on itself, more than the latency it
        simulates. Tweets, reactions and users are only ever added or removed, never
        changed in what is indexed (kind, post, id), so their counts are the version.
        """
        w = self.world
        version = (
            id(w),
            id(w.tweets),
            len(w.tweets),
            id(w.reactions),
            len(w.reactions),
            len(w.users),
            id(w.posts),
            len(w.posts),
        )
        if self._indexed is None or self._indexed.version != version:
            self._indexed = WorldIndex.build(w, version)
        return self._indexed

    def _metrics(self) -> dict[str, dict[str, int]]:
        return self._index().metrics

    def _tweet(self, t: XTweet, fields: list[str], metrics: dict[str, dict[str, int]]) -> Any:
        full: dict[str, Any] = {
            "id": t.id,
            "text": t.text,
            "edit_history_tweet_ids": [t.id],
            "author_id": t.author_id,
            "created_at": x_time(t.created_ms),
            "conversation_id": t.conversation_id,
            "lang": t.lang,
            "possibly_sensitive": False,
            "reply_settings": "everyone",
        }
        seed = int(t.id) >> 22
        full["public_metrics"] = metrics.get(t.id) or {
            "retweet_count": seed % 3,
            "reply_count": seed % 2,
            "like_count": seed % 7,
            "quote_count": 0,
            "bookmark_count": 0,
            "impression_count": 20 + seed % 500,
        }
        mentions = []
        for m in re.finditer(r"@(\w{1,15})", t.text):
            entity: dict[str, Any] = {"start": m.start(), "end": m.end(), "username": m[1]}
            if m[1].lower() == self.world.brand.username:
                entity["id"] = self.world.brand.id
            mentions.append(entity)
        if mentions:
            full["entities"] = {"mentions": mentions}
        if t.in_reply_to_user_id:
            full["in_reply_to_user_id"] = t.in_reply_to_user_id
        if t.post_id:
            kind = {"reply": "replied_to", "retweet": "retweeted"}.get(t.kind, "quoted")
            full["referenced_tweets"] = [{"type": kind, "id": t.post_id}]
        if t.overrides:
            full = overridden(full, t.overrides)
        wanted = set(TWEET_DEFAULTS) | set(fields)
        return {k: v for k, v in full.items() if k in wanted}

    def post_payloads(self) -> list[dict[str, Any]]:
        """The brand's posts with every field, oldest first (for the state endpoint)."""
        metrics = self._metrics()
        return [self._tweet(p, TWEET_FIELDS, metrics) for p in self.world.posts]

    def _user(self, u: XUser, fields: list[str]) -> dict[str, Any]:
        wanted = set(USER_DEFAULTS) | set(fields)
        return {k: v for k, v in u.payload().items() if k in wanted}

    def _tweet_page(
        self, req: Request, tweets: list[XTweet], size: int, *, ids_in_meta: bool
    ) -> Response:
        """Newest-first page after the token's position, with includes for expansions."""
        tweets = sorted(tweets, key=lambda t: int(t.id), reverse=True)
        token = req.param("pagination_token")
        if token:
            (boundary,) = decode_token(token, 1)
            tweets = [t for t in tweets if int(t.id) < boundary]
        page, more = tweets[:size], len(tweets) > size
        if not page:
            return json_response(200, {"meta": {"result_count": 0}})
        fields = list_param(req, "tweet.fields", TWEET_FIELDS)
        user_fields = list_param(req, "user.fields", USER_FIELDS)
        expansions = list_param(req, "expansions", TWEET_EXPANSIONS)
        metrics = self._metrics()
        # Hostile worlds: a tweet can be served twice in one page (``twice``).
        served = [t for item in page for t in ([item, item] if item.twice else [item])]
        body: dict[str, Any] = {"data": [self._tweet(t, fields, metrics) for t in served]}
        includes = self._includes(page, expansions, fields, user_fields, metrics)
        if includes:
            body["includes"] = includes
        meta: dict[str, Any] = {"result_count": len(served)}
        if ids_in_meta:
            meta["newest_id"], meta["oldest_id"] = page[0].id, page[-1].id
        if more:
            meta["next_token"] = encode_token(int(page[-1].id))
        body["meta"] = meta
        return json_response(200, body)

    def _includes(
        self,
        page: list[XTweet],
        expansions: list[str],
        fields: list[str],
        user_fields: list[str],
        metrics: dict[str, dict[str, int]],
    ) -> dict[str, Any]:
        user_ids: list[str] = []
        tweet_ids: list[str] = []
        for t in page:
            if "author_id" in expansions and t.author_in_includes:
                user_ids.append(t.author_id)
            if "in_reply_to_user_id" in expansions and t.in_reply_to_user_id:
                user_ids.append(t.in_reply_to_user_id)
            if "entities.mentions.username" in expansions and "@" in t.text:
                user_ids.append(self.world.brand.id)
            if t.post_id and {"referenced_tweets.id", "referenced_tweets.id.author_id"} & set(
                expansions
            ):
                tweet_ids.append(t.post_id)
                if "referenced_tweets.id.author_id" in expansions:
                    user_ids.append(self.world.brand.id)
        includes: dict[str, Any] = {}
        index = self._index()
        users = index.users
        # Ids nobody can resolve (hostile worlds) are simply left out, as X does.
        found = [users[i] for i in dict.fromkeys(user_ids) if i in users]
        if found:
            includes["users"] = [self._user(u, user_fields) for u in found]
        posts = index.posts
        unique_tweets = list(dict.fromkeys(tweet_ids))
        if unique_tweets:
            includes["tweets"] = [
                self._tweet(posts[i], fields, metrics) for i in unique_tweets if i in posts
            ]
        return includes

    # --- endpoints -----------------------------------------------------------------------

    def _timeline_filters(self, req: Request, tweets: list[XTweet]) -> list[XTweet]:
        since_id, until_id = id_param(req, "since_id"), id_param(req, "until_id")
        if since_id is not None:
            tweets = [t for t in tweets if int(t.id) > since_id]
        if until_id is not None:
            tweets = [t for t in tweets if int(t.id) < until_id]
        for name, keep in (
            ("start_time", lambda t, v: x_time(t.created_ms) >= v),
            ("end_time", lambda t, v: x_time(t.created_ms) <= v),
        ):
            value = req.param(name)
            if value is not None:
                if not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$", value):
                    raise invalid(name, value, f"Invalid '{name}':'{value}'.")
                if since_id is not None or until_id is not None:
                    raise invalid(
                        name,
                        value,
                        "Invalid use of 'since_id' or 'until_id' in "
                        "conjunction with 'start_time' or 'end_time'.",
                    )
                stamp = value if "." in value else value[:-1] + ".000Z"
                tweets = [t for t in tweets if keep(t, stamp)]
        return tweets

    def _unknown_user(self, user_id: str) -> Response | None:
        if user_id == self.world.brand.id or user_id in self.world.users:
            return None
        return json_response(200, {"errors": [not_found("user", user_id)]})

    def mentions(self, req: Request, user_id: str) -> Response:
        check_params(
            req,
            [
                "since_id",
                "until_id",
                "start_time",
                "end_time",
                "pagination_token",
                "max_results",
                "expansions",
                "tweet.fields",
                "user.fields",
                *OTHER_FIELDS,
            ],
        )
        size = max_results(req, 5, 100, 10)
        missing = self._unknown_user(user_id)
        if missing:
            return missing
        mentions = self._index().mentions if user_id == self.world.brand.id else []
        reachable = mentions[-MENTIONS_REACHABLE:]
        return self._tweet_page(req, self._timeline_filters(req, reachable), size, ids_in_meta=True)

    def timeline(self, req: Request, user_id: str) -> Response:
        check_params(
            req,
            [
                "since_id",
                "until_id",
                "start_time",
                "end_time",
                "exclude",
                "pagination_token",
                "max_results",
                "expansions",
                "tweet.fields",
                "user.fields",
                *OTHER_FIELDS,
            ],
        )
        size = max_results(req, 5, 100, 10)
        list_param(req, "exclude", ["retweets", "replies"])
        missing = self._unknown_user(user_id)
        if missing:
            return missing
        posts = list(self.world.posts) if user_id == self.world.brand.id else []
        return self._tweet_page(req, self._timeline_filters(req, posts), size, ids_in_meta=True)

    def quote_tweets(self, req: Request, tweet_id: str) -> Response:
        check_params(
            req,
            [
                "pagination_token",
                "max_results",
                "exclude",
                "expansions",
                "tweet.fields",
                "user.fields",
                *OTHER_FIELDS,
            ],
        )
        size = max_results(req, 10, 100, 10)
        excluded = list_param(req, "exclude", ["retweets", "replies"])
        index = self._index()
        if tweet_id not in index.posts:
            return json_response(200, {"errors": [not_found("tweet", tweet_id)]})
        quotes = index.quotes.get(tweet_id, [])
        if "retweets" not in excluded:
            quotes = [*quotes, *index.quote_retweets.get(tweet_id, [])]
        return self._tweet_page(req, quotes, size, ids_in_meta=False)

    def reactors(self, req: Request, tweet_id: str, kind: str) -> Response:
        check_params(
            req,
            [
                "pagination_token",
                "max_results",
                "expansions",
                "user.fields",
                "tweet.fields",
                *OTHER_FIELDS,
            ],
        )
        size = max_results(req, 1, 100, 100)
        user_fields = list_param(req, "user.fields", USER_FIELDS)
        list_param(req, "expansions", USER_EXPANSIONS)
        list_param(req, "tweet.fields", TWEET_FIELDS)
        index = self._index()
        if tweet_id not in index.posts:
            return json_response(200, {"errors": [not_found("tweet", tweet_id)]})
        items = index.reactions.get((kind, tweet_id), [])  # most recent first
        token = req.param("pagination_token")
        if token:
            boundary = tuple(decode_token(token, 2))
            items = [r for r in items if reaction_order(r) < boundary]
        page, more = items[:size], len(items) > size
        data, errors = [], []
        for r in page:
            user = self.world.users[r.user_id]
            if user.suspended:
                errors.append(not_found("user", user.id))
            else:
                data.extend([self._user(user, user_fields)] * (2 if r.twice else 1))
        body: dict[str, Any] = {}
        if data:
            body["data"] = data
        if errors:
            body["errors"] = errors
        meta: dict[str, Any] = {"result_count": len(data)}
        if more:
            meta["next_token"] = encode_token(*reaction_order(page[-1]))
        body["meta"] = meta
        return json_response(200, body)

    def user_by_id(self, req: Request, user_id: str) -> Response:
        check_params(req, ["expansions", "user.fields", "tweet.fields"])
        fields = list_param(req, "user.fields", USER_FIELDS)
        user = self.world.users.get(user_id)
        if user_id == self.world.brand.id:
            user = self.world.brand
        if user is None or user.suspended:
            return json_response(200, {"errors": [not_found("user", user_id)]})
        return json_response(200, {"data": self._user(user, fields)})

    def user_by_username(self, req: Request, username: str) -> Response:
        check_params(req, ["expansions", "user.fields", "tweet.fields"])
        fields = list_param(req, "user.fields", USER_FIELDS)
        for user in [self.world.brand, *self.world.users.values()]:
            if user.username.lower() == username.lower() and not user.suspended:
                return json_response(200, {"data": self._user(user, fields)})
        return json_response(200, {"errors": [not_found("user", username, "username")]})
