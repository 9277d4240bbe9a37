"""The brand's DM inbox: customers writing to the brand, and the brand answering.

Seeded from its own ``random.Random`` (derived from the world seed) so that adding DMs did
not change a single id or text of the engagement world that benchmarks compare against.
Every customer message records the topic the generator meant (support, sales, spam,
other): the helpdesk pipeline's routing is scored against it.

Ids share the tweets' snowflake space and stay above ``world.last_id`` when generated, so
"newer" means "greater" for DMs too, as on X.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from sandbox import dm_data as T
from sandbox.seed import (
    DAY_MS,
    World,
    XUser,
    _make_user,
    _Names,
    _token,
    marked,
    now_ms,
    snowflake,
    x_time,
)

HOUR_MS = 3_600_000
MINUTE_MS = 60_000


@dataclass
class DMEvent:
    id: str
    event_type: str  # MessageCreate | ParticipantsJoin | ParticipantsLeave
    conversation_id: str
    sender_id: str
    created_ms: int
    text: str | None = None
    participant_ids: list[str] | None = None
    media_keys: list[str] | None = None
    referenced_tweet_id: str | None = None
    from_brand: bool = False
    topic: str = "other"
    lang: str = "en"
    standalone: bool = True  # the text alone shows the topic (see dm_data.NEEDS_CONTEXT)
    hostile: str | None = None
    deliverable: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to the rendered event
    twice: bool = False  # served twice in the same page


@dataclass
class Conversation:
    id: str
    customers: list[str]  # participants other than the brand
    topic: str
    lang: str
    group: bool = False


@dataclass
class DMInbox:
    world: World
    rng: random.Random
    events: list[DMEvent] = field(default_factory=list)  # oldest first
    conversations: dict[str, Conversation] = field(default_factory=dict)
    emails: dict[str, str] = field(default_factory=dict)
    used_ids: set[int] = field(default_factory=set)

    def truth(self) -> list[dict[str, Any]]:
        """Ground truth for ``/_sandbox/state``: every event, oldest first."""
        return [
            marked(
                {
                    "id": e.id,
                    "event_type": e.event_type,
                    "text": e.text,
                    "dm_conversation_id": e.conversation_id,
                    "sender_id": e.sender_id,
                    "created_at": x_time(e.created_ms),
                    "from_brand": e.from_brand,
                    "topic": e.topic,
                    "lang": e.lang,
                    "standalone": e.standalone,
                },
                e.hostile,
                e.deliverable,
            )
            for e in self.events
        ]

    def one_to_one(self, customer_id: str) -> str:
        """X names a 1:1 conversation after both user ids, numerically lower one first."""
        low, high = sorted((int(customer_id), int(self.world.brand.id)))
        return f"{low}-{high}"

    # --- building blocks ------------------------------------------------------------------

    def _new_id(self, ms: int, *, above_all: bool) -> str:
        candidate = int(snowflake(ms, self.rng.randrange(4096)))
        if above_all:
            candidate = max(candidate, self.world.last_id + 1)
        while candidate in self.used_ids:
            candidate += 1
        self.used_ids.add(candidate)
        self.world.last_id = max(self.world.last_id, candidate)
        return str(candidate)

    def _email(self, user: XUser) -> str:
        if user.id not in self.emails:
            local = user.username.replace("_", ".").strip(".") or f"user{user.id[-4:]}"
            self.emails[user.id] = f"{local}@{self.rng.choice(T.EMAIL_DOMAINS)}"
        return self.emails[user.id]

    def _fill(self, text: str, user: XUser) -> str:
        return text.format(
            email=self._email(user),
            invoice=f"INV-{self.rng.randrange(2024, 2027)}-{self.rng.randrange(1000, 9999)}",
            seats=self.rng.choice([5, 12, 20, 35, 50, 120]),
            link=self.rng.choice(T.SPAM_LINKS),
        )

    def _pick(self, bank: T.Bank, topic: str, lang: str) -> str:
        texts = bank[topic].get(lang) or bank[topic]["en"]
        return self.rng.choice(texts)

    def message(
        self,
        conv: Conversation,
        sender: XUser,
        ms: int,
        text: str,
        topic: str,
        *,
        above_all: bool = False,
        media: bool = False,
        post_id: str | None = None,
    ) -> DMEvent:
        """Append one MessageCreate; media and shared posts show up as t.co links, as on X."""
        event_id = self._new_id(ms, above_all=above_all)
        standalone = text not in T.NEEDS_CONTEXT
        text = self._fill(text, sender)
        media_keys = None
        if media:
            media_keys = [f"3_{snowflake(ms - 1500, self.rng.randrange(4096))}"]
        if media or post_id:
            text = f"{text} https://t.co/{_token(self.rng, 10)}"
        event = DMEvent(
            id=event_id,
            event_type="MessageCreate",
            conversation_id=conv.id,
            sender_id=sender.id,
            created_ms=ms,
            text=text,
            media_keys=media_keys,
            referenced_tweet_id=post_id,
            from_brand=sender.id == self.world.brand.id,
            topic=topic,
            lang=conv.lang,
            standalone=standalone,
        )
        self.events.append(event)
        return event

    def _customer(self, lang: str, names: _Names, at_ms: int, *, known: bool) -> XUser:
        """An engaged user with no conversation yet (when asked and possible), else a new one."""
        if known:
            taken = {c for conv in self.conversations.values() for c in conv.customers}
            pool = [
                u
                for u in self.world.users.values()
                if not u.suspended and u.hostile is None and u.lang == lang and u.id not in taken
            ]
            if pool:
                return self.rng.choice(sorted(pool, key=lambda u: int(u.id)))
        user = _make_user(self.rng, names, at_ms, seq=len(self.world.users) + 2, lang=lang)
        self.world.users[user.id] = user
        return user

    def _names(self) -> _Names:
        names = _Names(self.rng)
        names.taken.update(u.username for u in self.world.users.values())
        names.taken.add(self.world.brand.username)
        return names

    def _choose(self, weights: dict[str, int]) -> str:
        return self.rng.choices(list(weights), weights=list(weights.values()))[0]


def seed_dms(
    world: World,
    seed: int,
    *,
    anchor_ms: int | None = None,
    conversations: int = 60,
    customer_messages: int = 200,
    brand_messages: int = 60,
) -> DMInbox:
    """About 60 one-to-one threads and one group over the 20 days before the anchor."""
    if anchor_ms is None:
        anchor_ms = (now_ms() // DAY_MS) * DAY_MS
    inbox = DMInbox(world=world, rng=random.Random(f"socialcrm-dms-{seed}"))
    inbox.used_ids.update(int(t.id) for t in [*world.posts, *world.tweets])
    rng, names = inbox.rng, inbox._names()
    group_customer, group_brand = len(T.GROUP_MESSAGES), 2

    plans: list[tuple[Conversation, XUser, list[bool]]] = []  # (conv, customer, replies)
    counts: list[int] = []
    for _ in range(conversations):
        lang, topic = inbox._choose(T.DM_LANGUAGE_WEIGHTS), inbox._choose(T.TOPIC_WEIGHTS)
        known = topic != "spam" and rng.random() < 0.55  # spammers are fresh accounts
        user = inbox._customer(lang, names, anchor_ms, known=known)
        conv = Conversation(inbox.one_to_one(user.id), [user.id], topic, lang)
        inbox.conversations[conv.id] = conv
        plans.append((conv, user, []))
        counts.append(rng.choice([1, 1, 2, 3]) if topic == "spam" else 1)
    # Support threads run long, thank-you notes short; spammers already said their piece.
    talkers = [i for i, (conv, _, _) in enumerate(plans) if conv.topic != "spam"]
    weights = [{"support": 6, "sales": 4, "other": 1}[plans[i][0].topic] for i in talkers]
    while sum(counts) < customer_messages - group_customer:
        counts[rng.choices(talkers, weights=weights)[0]] += 1
    replies = [0] * len(plans)
    while sum(replies) < brand_messages - group_brand:
        i = rng.choice(talkers)
        if replies[i] < counts[i]:
            replies[i] += 1

    for i, (conv, user, _) in enumerate(plans):
        after = set(rng.sample(range(counts[i]), replies[i]))  # brand answers these
        span = sum(6 * HOUR_MS for _ in range(counts[i] + replies[i]))
        ms = anchor_ms - rng.randrange(span + HOUR_MS, 20 * DAY_MS)
        _thread(inbox, conv, user, counts[i], after, ms)
    _group(inbox, names, anchor_ms, group_brand)
    inbox.events.sort(key=lambda e: int(e.id))
    return inbox


def _thread(
    inbox: DMInbox, conv: Conversation, user: XUser, n: int, after: set[int], ms: int
) -> None:
    rng, brand = inbox.rng, inbox.world.brand
    answered, last_reply = False, ""
    for j in range(n):
        topic, media, post = conv.topic, False, None
        if j == 0:
            text = inbox._pick(T.OPENERS, topic, conv.lang)
            if topic in ("sales", "other") and rng.random() < 0.15:
                post = rng.choice(inbox.world.posts).id  # "saw this post..." shares a link
        elif topic == "support" and answered and j == n - 1 and rng.random() < 0.4:
            text, topic = rng.choice(T.RESOLVED[conv.lang]), "other"
        elif topic == "support" and rng.random() < 0.15:
            text, media = T.SCREENSHOT[conv.lang], True
        else:
            text = inbox._pick(T.FOLLOW_UPS, topic, conv.lang)
        media = media or rng.random() < 0.04
        inbox.message(conv, user, ms, text, topic, media=media, post_id=post)
        ms += rng.randrange(2 * MINUTE_MS, 6 * HOUR_MS)
        answered = False
        if j in after:
            reply = inbox._pick(T.BRAND_REPLIES, conv.topic, conv.lang)
            if reply == last_reply:  # one retry: the same canned answer twice reads oddly
                reply = inbox._pick(T.BRAND_REPLIES, conv.topic, conv.lang)
            last_reply = reply
            inbox.message(conv, brand, ms, reply, conv.topic)
            ms += rng.randrange(5 * MINUTE_MS, 6 * HOUR_MS)
            answered = True


def _group(inbox: DMInbox, names: _Names, anchor_ms: int, brand_replies: int) -> None:
    """One group conversation (a single snowflake id): joins, a leave, and a pricing talk."""
    rng, brand = inbox.rng, inbox.world.brand
    ms = anchor_ms - rng.randrange(3 * DAY_MS, 12 * DAY_MS)
    members = [inbox._customer("en", names, anchor_ms, known=i == 0) for i in range(4)]
    conv = Conversation(snowflake(ms - 1000, 77), [m.id for m in members], "sales", "en", True)
    inbox.conversations[conv.id] = conv
    joins = [(members[0], [members[0].id, brand.id, members[1].id]), (members[0], [members[2].id])]
    joins.append((members[1], [members[3].id]))
    for sender, joined in joins:
        inbox.events.append(
            DMEvent(
                id=inbox._new_id(ms, above_all=False),
                event_type="ParticipantsJoin",
                conversation_id=conv.id,
                sender_id=sender.id,
                created_ms=ms,
                participant_ids=joined,
            )
        )
        ms += rng.randrange(MINUTE_MS, 30 * MINUTE_MS)
    for k, text in enumerate(T.GROUP_MESSAGES):
        inbox.message(conv, members[k % 3], ms, text, "sales")
        ms += rng.randrange(5 * MINUTE_MS, 2 * HOUR_MS)
        if k >= len(T.GROUP_MESSAGES) - brand_replies:
            inbox.message(conv, brand, ms, inbox._pick(T.BRAND_REPLIES, "sales", "en"), "sales")
            ms += rng.randrange(5 * MINUTE_MS, 2 * HOUR_MS)
    leaver = members[3]
    inbox.events.append(
        DMEvent(
            id=inbox._new_id(ms, above_all=False),
            event_type="ParticipantsLeave",
            conversation_id=conv.id,
            sender_id=leaver.id,
            created_ms=ms,
            participant_ids=[leaver.id],
        )
    )


def generate_dms(inbox: DMInbox, n: int, at_ms: int | None = None) -> int:
    """``n`` new customer messages "just now": half in existing threads, half in new ones."""
    rng = inbox.rng
    at_ms = at_ms or now_ms()
    names = inbox._names()
    threads = [c for c in inbox.conversations.values() if not c.group and c.topic != "spam"]
    threads.sort(key=lambda c: c.id)
    users = inbox.world.users
    for i in range(n):
        ms = at_ms - (n - i) * 10
        if threads and rng.random() < 0.5:
            conv = rng.choice(threads)
            text = inbox._pick(T.FOLLOW_UPS, conv.topic, conv.lang)
            inbox.message(conv, users[conv.customers[0]], ms, text, conv.topic, above_all=True)
            continue
        lang, topic = inbox._choose(T.DM_LANGUAGE_WEIGHTS), inbox._choose(T.TOPIC_WEIGHTS)
        user = inbox._customer(lang, names, at_ms, known=topic != "spam" and rng.random() < 0.5)
        conv = Conversation(inbox.one_to_one(user.id), [user.id], topic, lang)
        inbox.conversations[conv.id] = conv
        if topic != "spam":
            threads.append(conv)
        text = inbox._pick(T.OPENERS, topic, lang)
        inbox.message(conv, user, ms, text, topic, above_all=True)
    return n
