"""The simulated X world: one brand, its posts, and people engaging with it.

Everything derives from ``random.Random(seed)`` and a fixed anchor time (midnight UTC of
the start day), so two sandboxes started the same day with the same seed hold identical
ids, names and texts; benchmarks and end-to-end tests can compare runs.

Ids are snowflake-like: the creation time in milliseconds sits in the high bits, so ids
increase with time and compare as integers, as ``since_id`` expects.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandbox import seed_data as D

TWITTER_EPOCH_MS = 1288834974657
DAY_MS = 86_400_000


def snowflake(ms: int, seq: int) -> str:
    return str(((ms - TWITTER_EPOCH_MS) << 22) | (seq & 0x3FFFFF))


def x_time(ms: int) -> str:
    """X's timestamp format: ``2026-11-20T10:00:00.000Z``."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def now_ms() -> int:
    return int(datetime.now(tz=UTC).timestamp() * 1000)


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()  # an override value that removes the key from the wire payload


def overridden(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Hostile records: what the API sends instead of the well-formed payload."""
    for key, value in overrides.items():
        if value is ABSENT:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def marked(row: dict[str, Any], hostile: str | None, deliverable: bool) -> dict[str, Any]:
    """Ground-truth rows of hostile items say what is hostile and if it can be delivered."""
    if hostile is not None:
        row["hostile"] = hostile
        row["deliverable"] = deliverable
    return row


@dataclass
class XUser:
    id: str
    name: str
    username: str
    created_ms: int
    description: str
    location: str | None
    url: str | None
    verified: bool
    profile_image_url: str
    public_metrics: dict[str, int]
    lang: str
    suspended: bool = False
    hostile: str | None = None  # what is hostile about this user (sandbox.hostile)
    deliverable: bool = True  # whether a careful client can still make a lead of them
    overrides: dict[str, Any] = field(default_factory=dict)
    bot: str | None = None  # what makes this account look automated (``add_bots``)

    def truth(self) -> dict[str, Any]:
        row = marked(self.payload(), self.hostile, self.deliverable)
        if self.bot is not None:
            row["bot"] = self.bot
        return row

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "username": self.username,
            "created_at": x_time(self.created_ms),
            "description": self.description,
            "profile_image_url": self.profile_image_url,
            "protected": False,
            "public_metrics": dict(self.public_metrics),
            "verified": self.verified,
            "verified_type": "blue" if self.verified else "none",
            "url": self.url or "",
        }
        if self.location is not None:
            data["location"] = self.location
        return overridden(data, self.overrides) if self.overrides else data


@dataclass
class XTweet:
    id: str
    text: str
    author_id: str
    created_ms: int
    lang: str
    conversation_id: str
    kind: str  # post | mention | reply | quote | retweet (of a quote: sandbox.x_api)
    post_id: str | None = None  # the brand post replied to or quoted
    in_reply_to_user_id: str | None = None
    hostile: str | None = None
    deliverable: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to the rendered tweet
    twice: bool = False  # served twice in the same page
    author_in_includes: bool = True  # False: the expansion leaves the author out


@dataclass
class Reaction:
    """A like or repost: X gives it no id of its own, only (post, user)."""

    kind: str  # like | repost
    post_id: str
    user_id: str
    created_ms: int
    hostile: str | None = None
    deliverable: bool = True
    twice: bool = False  # the liker is listed twice in the same page

    @property
    def id(self) -> str:
        return f"{self.post_id}:{self.user_id}"


@dataclass
class World:
    brand: XUser
    users: dict[str, XUser]
    posts: list[XTweet]  # brand posts, oldest first
    tweets: list[XTweet]  # mentions, replies and quotes, oldest first
    reactions: list[Reaction]
    rng: random.Random
    last_id: int = 0
    partial_error_posts: set[str] = field(default_factory=set)

    def next_tweet_id(self, ms: int) -> str:
        # Strictly above everything seen so far, even if the clock went backwards.
        candidate = max(int(snowflake(ms, self.rng.randrange(4096))), self.last_id + 1)
        self.last_id = candidate
        return str(candidate)

    def engagements(self) -> list[dict[str, Any]]:
        """Ground truth a pipeline should deliver: suspended users' likes are not visible."""
        rows: list[dict[str, Any]] = []
        for t in self.tweets:
            row = {
                "id": t.id,
                "kind": t.kind,
                "user_id": t.author_id,
                "post_id": t.post_id,
                "text": t.text,
                "created_at": x_time(t.created_ms),
            }
            rows.append(marked(row, t.hostile, t.deliverable))
        for r in self.reactions:
            if self.users[r.user_id].suspended:
                continue
            row = {
                "id": r.id,
                "kind": r.kind,
                "user_id": r.user_id,
                "post_id": r.post_id,
                "text": None,
                "created_at": x_time(r.created_ms),
            }
            rows.append(marked(row, r.hostile, r.deliverable))
        rows.sort(key=lambda row: row["created_at"])
        return rows


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text.replace("ß", "ss"))
    return "".join(c for c in folded if c.isascii() and (c.isalnum() or c == "_")).lower()


class _Names:
    """Produces unique usernames, as X guarantees them."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.taken: set[str] = set()

    def username(self, base: str) -> str:
        base = _ascii(base)[:12] or "user"
        candidate = base
        while candidate in self.taken:
            candidate = f"{base[:10]}{self.rng.randrange(10, 9999)}"[:15]
        self.taken.add(candidate)
        return candidate

    def person(self, lang: str) -> tuple[str, str]:
        rng = self.rng
        if lang == "ru":
            display, roman = rng.choice(D.RUSSIAN_NAMES)
            return display, self.username(roman)
        firsts, lasts, style = D.FIRST_LAST[lang]
        (f_disp, f_rom), (l_disp, l_rom) = rng.choice(firsts), rng.choice(lasts)
        if style == "eastern":
            display = f"{l_disp} {f_disp}" if rng.random() < 0.5 else f"{l_disp}{f_disp}"
        elif style == "eastern-nospace":
            display = f"{l_disp}{f_disp}"
        else:
            display = f"{f_disp} {l_disp}"
        sep = rng.choice(["", "_", "."])
        roman = f"{f_rom}{sep if sep != '.' else ''}{l_rom}" if rng.random() < 0.7 else l_rom
        return display, self.username(roman)


def _make_user(
    rng: random.Random, names: _Names, anchor: int, seq: int, lang: str | None = None
) -> XUser:
    langs = list(D.LANGUAGE_WEIGHTS)
    lang = lang or rng.choices(langs, weights=[D.LANGUAGE_WEIGHTS[x] for x in langs])[0]
    roll = rng.random()
    if roll < 0.05:
        display, username = rng.choice(D.ORG_NAMES)
        username = names.username(username)
    else:
        display, username = names.person(lang)
    if 0.05 <= roll < 0.10:
        display = rng.choice(D.UNUSABLE_NAMES)
    elif roll > 0.85:
        display = f"{display} {rng.choice(D.EMOJI)}"
    created = anchor - rng.randrange(60, 5000) * DAY_MS - rng.randrange(DAY_MS)
    uid = snowflake(created, seq) if rng.random() < 0.8 else str(rng.randrange(10**6, 10**9))
    bio = rng.choice(D.BIOS[lang] + D.BIOS["en"][:2])
    if "{email}" in bio:
        bio = bio.format(email=f"{username.replace('_', '.')}@example.com")
    followers = int(rng.paretovariate(1.1) * 40)
    return XUser(
        id=uid,
        name=display,
        username=username,
        created_ms=created,
        description=bio,
        location=rng.choice(D.LOCATIONS[lang]) if rng.random() < 0.8 else None,
        url=f"https://t.co/{_token(rng, 10)}" if rng.random() < 0.3 else None,
        verified=rng.random() < 0.06,
        profile_image_url=f"https://pbs.twimg.com/profile_images/{seq}/{_token(rng, 8)}_normal.jpg",
        public_metrics={
            "followers_count": followers,
            "following_count": rng.randrange(0, 2000),
            "tweet_count": rng.randrange(1, 40000),
            "listed_count": followers // 200,
        },
        lang=lang,
    )


def _token(rng: random.Random, n: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(rng.choice(alphabet) for _ in range(n))


def _text(rng: random.Random, bank: dict[str, list[str]], lang: str, brand: str) -> tuple[str, str]:
    # Mostly the author's language, sometimes English: people switch.
    use = lang if rng.random() < 0.75 else "en"
    return rng.choice(bank[use]).format(brand=brand), use


def build_world(
    seed: int = 7,
    *,
    anchor_ms: int | None = None,
    n_users: int = 400,
    n_posts: int = 30,
) -> World:
    """Seed the world; the counts are tuned so that about half the people qualify as leads."""
    rng = random.Random(seed)
    if anchor_ms is None:
        anchor_ms = (now_ms() // DAY_MS) * DAY_MS
    names = _Names(rng)
    names.taken.add("acmecloud")
    brand_created = anchor_ms - 3000 * DAY_MS
    brand = XUser(
        id=snowflake(brand_created, 1),
        name="Acme Cloud ☁️",
        username="acmecloud",
        created_ms=brand_created,
        description="The cloud that just works. Support: @acmehelp",
        location="Everywhere",
        url="https://t.co/acmecloud",
        verified=True,
        profile_image_url="https://pbs.twimg.com/profile_images/1/acme_normal.jpg",
        public_metrics={
            "followers_count": 48210,
            "following_count": 312,
            "tweet_count": 9120,
            "listed_count": 611,
        },
        lang="en",
    )
    world = World(brand=brand, users={}, posts=[], tweets=[], reactions=[], rng=rng)
    for i in range(n_users):
        user = _make_user(rng, names, anchor_ms, seq=i + 2)
        world.users[user.id] = user
    users = list(world.users.values())

    for i in range(n_posts):
        ms = anchor_ms - (n_posts - i) * DAY_MS + rng.randrange(8 * 3600_000, 18 * 3600_000)
        pid = world.next_tweet_id(ms)
        text = f"{D.BRAND_POSTS[i % len(D.BRAND_POSTS)]} https://t.co/{_token(rng, 10)}"
        world.posts.append(XTweet(pid, text, brand.id, ms, "en", pid, "post"))

    # Skewed activity: about half the people are one-off likers (below any sane threshold);
    # the rest are regulars with a heavy-tailed appetite, a few of them engaging a lot.
    rng.shuffle(users)
    casual, regulars = users[: int(len(users) * 0.47)], users[int(len(users) * 0.47) :]
    activity = {u.id: min(rng.paretovariate(1.2), 40.0) for u in regulars}
    talkative = {u.id: rng.betavariate(0.7, 1.3) for u in regulars}
    events: list[tuple[int, str, str, str | None]] = []  # (ms, kind, user_id, post_id)

    def after_post(post: XTweet) -> int:
        # Most reactions come within hours of a post; none after the anchor.
        ms = post.created_ms + int(rng.expovariate(1 / 9) * 3600_000)
        return ms if ms < anchor_ms else rng.randrange(post.created_ms + 1, anchor_ms)

    for user in casual:
        roll = rng.random()
        picks = rng.sample(world.posts, 2 if roll < 0.2 else 1)
        kind = "repost" if roll > 0.8 else "like"
        events.extend((after_post(post), kind, user.id, post.id) for post in picks)

    talk_w = [activity[u.id] * talkative[u.id] for u in regulars]
    for kind, count in (("mention", 420), ("reply", 260), ("quote", 140)):
        for author in rng.choices(regulars, weights=talk_w, k=count):
            if kind == "mention":
                ms = anchor_ms - rng.randrange(30 * DAY_MS)
                events.append((ms, kind, author.id, None))
            else:
                post = rng.choice(world.posts[-20:] if rng.random() < 0.7 else world.posts)
                events.append((after_post(post), kind, author.id, post.id))

    react_w = {u.id: activity[u.id] * (1.2 - talkative[u.id]) for u in regulars}
    for kind, per_post in (("repost", 15), ("like", 55)):
        for post in world.posts:
            n = max(1, int(rng.gauss(per_post, per_post / 3)))
            chosen = _weighted_sample(rng, [u.id for u in regulars], react_w, n)
            events.extend((after_post(post), kind, uid, post.id) for uid in chosen)

    seen = {uid for _, _, uid, _ in events}
    for user in regulars:  # everybody did at least one thing, else they would not be here
        if user.id not in seen:
            post = rng.choice(world.posts)
            events.append((after_post(post), "like", user.id, post.id))

    events.sort(key=lambda e: e[0])
    likes_seen: set[tuple[str, str, str]] = set()
    for ms, kind, uid, post_id in events:
        _add_event(world, ms, kind, uid, post_id, likes_seen)

    # A few suspended users: their likes surface as 200-with-errors on liking_users.
    for post in world.posts[-3:-1]:
        world.partial_error_posts.add(post.id)
        ghost = _make_user(rng, names, anchor_ms, seq=len(world.users) + 2, lang="en")
        ghost.suspended = True
        world.users[ghost.id] = ghost
        ms = after_post(post)
        world.reactions.append(Reaction("like", post.id, ghost.id, ms))
    add_bots(world, seed, anchor_ms)
    return world


DEFAULT_AVATAR = "https://abs.twimg.com/sticky/default_profile_images/default_profile_normal.png"
# Scores as the shipped defaults count them, to pick bots that would otherwise qualify.
_BOT_PICK_WEIGHTS = {"mention": 3, "reply": 3, "quote": 4, "repost": 2, "like": 1}


@dataclass(frozen=True)
class BotPlan:
    """One bot of the seeded world: its label in the ground truth and its profile."""

    label: str  # ground truth ``bot``; empty: a heavy but genuine poster (one signal only)
    young: bool  # the account was opened just before its first engagement
    age_days: int  # otherwise, its age at the anchor
    posts_per_day: int
    followers: int
    following: int
    default_avatar: bool


BOT_PLANS = (
    BotPlan("new account, 650 posts/day, default avatar", True, 0, 650, 3, 41, True),
    BotPlan("follow-spam ratio, default avatar", False, 730, 2, 12, 4900, True),
    BotPlan("2400 posts/day", False, 400, 2400, 310, 280, False),
    BotPlan("new account, follow-spam ratio", True, 0, 3, 4, 1200, False),
    BotPlan("", False, 1100, 300, 5200, 310, False),
)


def add_bots(world: World, seed: int, anchor_ms: int) -> list[XUser]:
    """Turn a few engaged users into automated-looking accounts (``BOT_PLANS``).

    Their own random generator, applied last: every id, name, text and engagement of the
    world stays as without, and so does the number of users; only the chosen users'
    creation date, metrics and avatar change. The last plan is a near miss: one bot signal
    (a heavy poster), no ``bot`` label, to keep heuristics honest.
    """
    rng = random.Random(f"socialcrm-bots-{seed}")
    first: dict[str, int] = {}
    scores: dict[str, int] = {}
    talkers: set[str] = set()
    for t in world.tweets:
        first[t.author_id] = min(first.get(t.author_id, t.created_ms), t.created_ms)
        scores[t.author_id] = scores.get(t.author_id, 0) + _BOT_PICK_WEIGHTS.get(t.kind, 0)
        talkers.add(t.author_id)
    for r in world.reactions:
        first[r.user_id] = min(first.get(r.user_id, r.created_ms), r.created_ms)
        scores[r.user_id] = scores.get(r.user_id, 0) + _BOT_PICK_WEIGHTS.get(r.kind, 0)
    pool = sorted(
        (
            u
            for u in world.users.values()
            if u.id in talkers and scores[u.id] >= 4 and not u.suspended and u.hostile is None
        ),
        key=lambda u: int(u.id),
    )
    chosen: list[XUser] = []
    for plan in BOT_PLANS:
        fits = [
            u
            for u in pool
            if u not in chosen and (not plan.young or first[u.id] >= anchor_ms - 20 * DAY_MS)
        ]
        if not fits:
            continue
        user = rng.choice(fits)
        if plan.young:
            user.created_ms = first[user.id] - rng.randrange(DAY_MS, 3 * DAY_MS)
        else:
            user.created_ms = anchor_ms - plan.age_days * DAY_MS - rng.randrange(DAY_MS)
        age_days = max((anchor_ms - user.created_ms) / DAY_MS, 1.0)
        user.public_metrics = {
            "followers_count": plan.followers,
            "following_count": plan.following,
            "tweet_count": int(age_days * plan.posts_per_day),
            "listed_count": 0,
        }
        if plan.default_avatar:
            user.profile_image_url = DEFAULT_AVATAR
        user.bot = plan.label or None
        chosen.append(user)
    return chosen


def _weighted_sample(
    rng: random.Random, ids: list[str], weights: dict[str, float], n: int
) -> list[str]:
    # Efraimidis–Spirakis: weighted sampling without replacement (one like per post per user).
    keyed = sorted(ids, key=lambda i: rng.random() ** (1 / max(weights[i], 1e-9)), reverse=True)
    return keyed[:n]


def _add_event(
    world: World,
    ms: int,
    kind: str,
    uid: str,
    post_id: str | None,
    reacted: set[tuple[str, str, str]],
) -> str | None:
    rng = world.rng
    brand = world.brand
    user = world.users[uid]
    if kind in ("like", "repost"):
        assert post_id is not None
        if (kind, post_id, uid) in reacted:
            return None
        reacted.add((kind, post_id, uid))
        world.reactions.append(Reaction(kind, post_id, uid, ms))
        return f"{post_id}:{uid}"
    tid = world.next_tweet_id(ms)
    if kind == "mention":
        text, lang = _text(rng, D.MENTIONS, user.lang, brand.username)
        world.tweets.append(XTweet(tid, text, uid, ms, lang, tid, "mention"))
    elif kind == "reply":
        body, lang = _text(rng, D.REPLIES, user.lang, brand.username)
        tweet = XTweet(
            tid,
            f"@{brand.username} {body}",
            uid,
            ms,
            lang,
            str(post_id),
            "reply",
            post_id=post_id,
            in_reply_to_user_id=brand.id,
        )
        world.tweets.append(tweet)
    else:
        body, lang = _text(rng, D.QUOTES, user.lang, brand.username)
        text = f"{body} https://t.co/{_token(rng, 10)}"
        world.tweets.append(XTweet(tid, text, uid, ms, lang, tid, "quote", post_id=post_id))
    return tid


def generate(world: World, engagements: int, at_ms: int | None = None) -> dict[str, int]:
    """Add new activity: about half from people already seen, half from newcomers."""
    rng = world.rng
    at_ms = at_ms or now_ms()
    names = _Names(rng)
    names.taken.update(u.username for u in world.users.values())
    names.taken.add(world.brand.username)
    known = [u for u in world.users.values() if not u.suspended and u.hostile is None]
    reacted = {(r.kind, r.post_id, r.user_id) for r in world.reactions}
    added = {"mention": 0, "reply": 0, "quote": 0, "repost": 0, "like": 0}
    recent = world.posts[-5:]
    for i in range(engagements):
        if rng.random() < 0.5 and known:
            user = rng.choice(known)
        else:
            user = _make_user(rng, names, at_ms, seq=len(world.users) + 2)
            world.users[user.id] = user
            known.append(user)
        kind = rng.choices(list(added), weights=[25, 15, 10, 15, 35])[0]
        post_id = None if kind == "mention" else rng.choice(recent).id
        ms = at_ms - (engagements - i) * 10  # strictly increasing, all "just now"
        for _ in range(5):
            if _add_event(world, ms, kind, user.id, post_id, reacted) is not None:
                added[kind] += 1
                break
            post_id = rng.choice(world.posts).id  # already reacted to that one: try another
    return added
