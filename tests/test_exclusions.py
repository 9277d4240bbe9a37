"""Exclusions: lists, bot heuristics with their reasons, unknown fields, config errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.social.x import parse_profile
from sandbox.seed import BOT_PLANS, DAY_MS, build_world
from socialcrm.config import BotHeuristics, ConfigError, Exclusions, parse_settings
from socialcrm.exclusions import ExclusionRules, bot_verdict, skip_reason, skip_reasons
from socialcrm.state import PersonRow, profile_to_json

NOW = datetime(2026, 6, 1, tzinfo=UTC)
BOTS = BotHeuristics()


def person(user_id: str = "42", handle: str = "ann", **profile: Any) -> PersonRow:
    return PersonRow(
        person_key=f"x:{user_id}",
        platform="x",
        user_id=user_id,
        handle=handle,
        profile={"handle": handle, **profile},
        counts={},
        engagement_count=0,
        score=0.0,
        first_engaged_at=None,
        last_engaged_at=None,
    )


def created(days: float) -> str:
    return (NOW - timedelta(days=days)).isoformat()


def excl(**data: Any) -> Exclusions:
    return Exclusions.model_validate(data)


# --- lists ----------------------------------------------------------------------------------


def test_excluded_handles_ignore_case_and_at() -> None:
    rules = excl(handles=["@AcmeCloud", "rival_co"])
    assert rules.handles == ["acmecloud", "rival_co"]
    assert skip_reason(person(handle="ACMECLOUD"), rules, now=NOW) == "excluded handle @acmecloud"
    assert skip_reason(person(handle="Rival_Co"), rules, now=NOW) == "excluded handle @rival_co"
    assert skip_reason(person(handle="acmecloud2"), rules, now=NOW) is None


def test_excluded_user_ids_as_person_keys_or_bare_ids() -> None:
    rules = excl(user_ids=["x:42", "77"])
    assert skip_reason(person("42"), rules, now=NOW) == "excluded user id x:42"
    assert skip_reason(person("77"), rules, now=NOW) == "excluded user id x:77"
    mastodon = person("42")
    mastodon.person_key, mastodon.platform = "mastodon:42", "mastodon"
    assert skip_reason(mastodon, rules, now=NOW) is None  # a key names one platform


def test_excluded_email_domains_match_the_email_and_the_bio_and_subdomains() -> None:
    rules = excl(email_domains=["Acme.com", "@rival.io"])
    assert rules.email_domains == ["acme.com", "rival.io"]
    reason = "excluded email domain acme.com"
    assert skip_reason(person(email="ann@acme.com"), rules, now=NOW) == reason
    assert skip_reason(person(email="Ann@EU.Acme.COM"), rules, now=NOW) == reason
    bio = "PM. Reach me: ann.lee+x@rival.io"
    assert skip_reason(person(bio=bio), rules, now=NOW) == "excluded email domain rival.io"
    assert skip_reason(person(email="ann@notacme.com"), rules, now=NOW) is None
    assert skip_reason(person(bio="Support: @acme.com fan"), rules, now=NOW) is None
    own = skip_reason(person(email="bo@ours.dev"), excl(), own_domains=["Ours.dev"], now=NOW)
    assert own == "excluded email domain ours.dev"


def test_every_reason_is_recorded_and_checks_come_first() -> None:
    def opted_out(p: PersonRow) -> str | None:
        return "opt-out" if p.user_id == "42" else None

    rules = excl(handles=["ann"], user_ids=["42"])
    reason = skip_reason(person(), rules, checks=[opted_out], now=NOW)
    assert reason == "opt-out; excluded handle @ann; excluded user id x:42"
    batch = [person("42"), person("43", handle="bob"), person("44", handle="ANN")]
    prepared = ExclusionRules.build(rules, checks=[opted_out])
    assert skip_reasons(batch, prepared, now=NOW) == {
        "x:42": "opt-out; excluded handle @ann; excluded user id x:42",
        "x:44": "excluded handle @ann",
    }


# --- bots -----------------------------------------------------------------------------------


def test_young_account_with_default_image_is_a_bot() -> None:
    p = person(created_at=created(3), posts=20, default_profile_image=True)
    assert skip_reason(p, excl(), now=NOW) == "bot: account 3 days old, default profile image"


def test_posting_rate_alone_is_one_signal_far_above_it_is_enough() -> None:
    heavy = person(created_at=created(400), posts=400 * 300)
    assert bot_verdict(heavy.profile, BOTS, NOW).signals == ("300 posts/day",)
    assert skip_reason(heavy, excl(), now=NOW) is None  # one signal of the two needed
    firehose = person(created_at=created(400), posts=400 * 1500)
    assert skip_reason(firehose, excl(), now=NOW) == "bot: 1500 posts/day"
    verdict = bot_verdict(firehose.profile, BOTS, NOW)
    assert verdict.hard and verdict.is_bot


def test_fresh_spammer_lists_every_signal() -> None:
    p = person(
        created_at=created(3),
        posts=1800,
        followers=1,
        following=900,
        default_profile_image=True,
    )
    assert skip_reason(p, excl(), now=NOW) == (
        "bot: account 3 days old, 600 posts/day, follows 900 accounts with 1 follower, "
        "default profile image"
    )


def test_follow_ratio_needs_enough_follows() -> None:
    spam = person(created_at=created(10), followers=4, following=1200)
    assert skip_reason(spam, excl(), now=NOW) == (
        "bot: account 10 days old, follows 1200 accounts with 4 followers"
    )
    few = person(created_at=created(10), followers=0, following=400)  # ratio 400, 400 follows
    assert skip_reason(few, excl(), now=NOW) is None


def test_unknown_fields_never_flag() -> None:
    for profile in (
        {},
        {"created_at": None, "posts": None, "followers": None, "following": None},
        {"created_at": "yesterday", "posts": 10**7, "default_profile_image": None},
        {"created_at": created(-30), "posts": 10**7},  # created in the future
        {"posts": 10**7, "following": 5000, "default_profile_image": True},  # no age, no fans
        {"created_at": created(2), "posts": "9999", "followers": "1", "following": True},
        {"created_at": created(400), "posts": -5, "followers": -1, "following": 10**6},
    ):
        assert skip_reason(person(**profile), excl(), now=NOW) is None, profile


def test_each_signal_can_be_switched_off_and_the_count_changed() -> None:
    p = person(created_at=created(3), posts=20, default_profile_image=True)
    assert skip_reason(p, excl(bots={"enabled": False}), now=NOW) is None
    assert skip_reason(p, excl(bots={"default_profile_image": False}), now=NOW) is None
    assert skip_reason(p, excl(bots={"min_account_age_days": None}), now=NOW) is None
    one = excl(bots={"signals_needed": 1, "default_profile_image": False})
    assert skip_reason(p, one, now=NOW) == "bot: account 3 days old"
    stricter = excl(bots={"min_account_age_days": 2})
    assert skip_reason(p, stricter, now=NOW) is None
    baby = person(created_at=created(0.2), default_profile_image=True)
    reason = skip_reason(baby, excl(), now=NOW)
    assert reason == "bot: account less than a day old, default profile image"


# --- the X profile and the sandbox's bots ---------------------------------------------------


def test_x_profiles_carry_what_the_heuristics_read() -> None:
    user = {
        "id": "5",
        "username": "bot5",
        "created_at": "2026-05-29T00:00:00.000Z",
        "public_metrics": {"followers_count": 2, "following_count": 800, "tweet_count": 1500},
        "profile_image_url": "https://abs.twimg.com/sticky/default_profile_images/default_profile_normal.png",
    }
    profile = parse_profile(user)
    assert (profile.followers, profile.following, profile.posts) == (2, 800, 1500)
    assert profile.default_profile_image is True
    assert profile.created_at == datetime(2026, 5, 29, tzinfo=UTC)
    custom = {**user, "profile_image_url": "https://pbs.twimg.com/profile_images/1/a_normal.jpg"}
    assert parse_profile(custom).default_profile_image is False
    assert parse_profile({"id": "5"}).default_profile_image is None
    assert parse_profile({**custom, "default_profile_image": True}).default_profile_image is True
    stored = profile_to_json(profile)
    verdict = bot_verdict(stored, BOTS, NOW)
    assert verdict.is_bot and "500 posts/day" in verdict.signals


def test_the_sandbox_seeds_bots_the_default_heuristics_catch() -> None:
    anchor = 1_795_824_000_000 // DAY_MS * DAY_MS
    now = datetime.fromtimestamp(anchor / 1000, tz=UTC) + timedelta(hours=6)
    world = build_world(7, anchor_ms=anchor)
    assert [u.id for u in world.users.values()] == [
        u.id for u in build_world(7, anchor_ms=anchor).users.values()
    ]
    flagged, labelled = set(), set()
    for user in world.users.values():
        if user.suspended:
            continue
        profile = profile_to_json(parse_profile(user.payload()))
        if bot_verdict(profile, BOTS, now).is_bot:
            flagged.add(user.id)
        if user.bot:
            labelled.add(user.id)
    assert flagged == labelled
    assert len(labelled) == sum(1 for plan in BOT_PLANS if plan.label)
    engaged = {e["user_id"] for e in world.engagements()}
    assert labelled <= engaged


# --- configuration --------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "accounts": [{"name": "b", "user_id": "1", "handle": "b", "bearer_token": "${T}"}],
    "crm": {
        "login_url": "https://x",
        "instance_url": "https://i",
        "auth": {"method": "session", "access_token": "${A}"},
    },
}


def load(exclusions: dict[str, Any] | None) -> Any:
    data = dict(BASE) if exclusions is None else {**BASE, "exclusions": exclusions}
    return parse_settings(data, source=Path("c.yaml"), base_dir=Path())


def test_configs_without_exclusions_load_with_bot_heuristics_on() -> None:
    settings = load(None)
    assert settings.exclusions.bots.enabled and settings.exclusions.handles == []
    assert settings.exclusions.bots.signals_needed == 2


@pytest.mark.parametrize(
    ("exclusions", "expected"),
    [
        (
            {"handles": ["ok", "not a handle"]},
            "exclusions.handles.1: Value error, expected a handle",
        ),
        ({"user_ids": ["x:"]}, "exclusions.user_ids.0: Value error, expected a person key"),
        ({"email_domains": ["acme"]}, "expected an email domain like example.com (got 'acme')"),
        ({"email_domains": ["ann@acme.com"]}, "exclusions.email_domains.0"),
        ({"bots": {"signals_needed": 0}}, "exclusions.bots.signals_needed"),
        ({"bots": {"max_posts_per_day": -1}}, "exclusions.bots.max_posts_per_day"),
        (
            {"bots": {"max_posts_per_day": 500, "hard_max_posts_per_day": 100}},
            "hard_max_posts_per_day (100) must be at least max_posts_per_day (500)",
        ),
        ({"bots": {"min_age_days": 3}}, "exclusions.bots.min_age_days: unknown key"),
    ],
)
def test_exclusion_errors_name_the_key(exclusions: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(exclusions)
    assert expected in str(error.value)
