"""Who never becomes a lead, and why: exclusion lists and bot heuristics.

Every skip has a reason a person can read ("excluded handle @acme", "excluded email
domain acme.com", "bot: account 3 days old, 600 posts/day"), so the run can record it.
A profile field the platform did not give is unknown, never a bot signal.

More reasons plug in as *checks*: callables ``(PersonRow) -> str | None`` run before the
lists (consent and opt-outs belong there: ``skip_reasons(..., checks=[opted_out])``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from socialcrm.config import BotHeuristics, Exclusions
from socialcrm.state import PersonRow

Check = Callable[[PersonRow], str | None]
"""A pluggable reason to skip a person: returns the reason, or None to let them through."""

DAY_SECONDS = 86_400.0
_EMAIL = re.compile(r"[\w.+-]+@((?:[\w-]+\.)+[\w-]+)")


@dataclass(frozen=True, slots=True)
class BotVerdict:
    """What the heuristics saw: each signal that held, and whether that makes a bot."""

    is_bot: bool
    signals: tuple[str, ...] = ()
    hard: bool = False

    @property
    def reason(self) -> str | None:
        return f"bot: {', '.join(self.signals)}" if self.is_bot else None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return int(value)


def _moment(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _age_text(days: float) -> str:
    if days < 1:
        return "account less than a day old"
    whole = int(days)
    return f"account {whole} day{'s' if whole != 1 else ''} old"


def bot_verdict(
    profile: Mapping[str, Any], heuristics: BotHeuristics, now: datetime | None = None
) -> BotVerdict:
    """Judge a stored profile (``PersonRow.profile``) by the configured bot signals.

    Reads ``created_at``, ``posts``, ``followers``, ``following`` and
    ``default_profile_image``; a missing or unreadable one contributes nothing.
    """
    if not heuristics.enabled:
        return BotVerdict(False)
    now = now or datetime.now(UTC)
    signals: list[str] = []
    hard = False
    created = _moment(profile.get("created_at"))
    age = (now - created).total_seconds() / DAY_SECONDS if created is not None else None
    if age is not None and age < 0:
        age = None  # created in the future: the date is wrong, not the account
    limit = heuristics.min_account_age_days
    if age is not None and limit is not None and age < limit:
        signals.append(_age_text(age))
    posts = _count(profile.get("posts"))
    if age is not None and posts is not None:
        rate = posts / max(age, 1.0)
        hard_limit, soft_limit = heuristics.hard_max_posts_per_day, heuristics.max_posts_per_day
        if hard_limit is not None and rate > hard_limit:
            hard = True
            signals.append(f"{rate:.0f} posts/day")
        elif soft_limit is not None and rate > soft_limit:
            signals.append(f"{rate:.0f} posts/day")
    followers, following = _count(profile.get("followers")), _count(profile.get("following"))
    ratio_limit = heuristics.max_following_to_followers_ratio
    if (
        ratio_limit is not None
        and followers is not None
        and following is not None
        and following >= heuristics.min_following
        and following / max(followers, 1) > ratio_limit
    ):
        plural = "" if followers == 1 else "s"
        signals.append(f"follows {following} accounts with {followers} follower{plural}")
    if heuristics.default_profile_image and profile.get("default_profile_image") is True:
        signals.append("default profile image")
    return BotVerdict(hard or len(signals) >= heuristics.signals_needed, tuple(signals), hard)


def _domain_matches(domain: str, excluded: str) -> bool:
    return domain == excluded or domain.endswith("." + excluded)


def _emails(profile: Mapping[str, Any]) -> list[str]:
    """The profile's email and any address written in its bio."""
    found: list[str] = []
    email = profile.get("email")
    if isinstance(email, str) and "@" in email:
        found.append(email.strip())
    bio = profile.get("bio")
    if isinstance(bio, str):
        found.extend(match.group(0) for match in _EMAIL.finditer(bio))
    return found


def _normal_domain(value: str) -> str:
    return value.strip().lower().lstrip("@").removeprefix("*.").rstrip(".")


@dataclass(frozen=True)
class ExclusionRules:
    """``Exclusions`` prepared for fast look-ups; build once per run, apply per person."""

    handles: frozenset[str] = frozenset()
    person_keys: frozenset[str] = frozenset()
    user_ids: frozenset[str] = frozenset()  # bare ids: any platform
    domains: tuple[str, ...] = ()
    bots: BotHeuristics = field(default_factory=BotHeuristics)
    checks: tuple[Check, ...] = ()

    @classmethod
    def build(
        cls,
        exclusions: Exclusions,
        *,
        own_domains: Iterable[str] = (),
        checks: Sequence[Check] = (),
    ) -> ExclusionRules:
        """Args:
        exclusions: the ``exclusions`` section of the config.
        own_domains: more email domains to skip (e.g. the company's own, from elsewhere).
        checks: more reasons to skip, run first (consent, opt-outs).
        """
        keys = frozenset(ref for ref in exclusions.user_ids if ":" in ref)
        bare = frozenset(ref for ref in exclusions.user_ids if ":" not in ref)
        domains = dict.fromkeys(
            [*exclusions.email_domains, *(_normal_domain(d) for d in own_domains if d.strip())]
        )
        return cls(
            handles=frozenset(exclusions.handles),
            person_keys=keys,
            user_ids=bare,
            domains=tuple(domains),
            bots=exclusions.bots,
            checks=tuple(checks),
        )

    def reasons(self, person: PersonRow, now: datetime | None = None) -> list[str]:
        """Every reason to skip ``person``; empty when they may become a lead."""
        found = [reason for check in self.checks if (reason := check(person))]
        handle = (person.handle or "").lstrip("@").lower()
        if handle and handle in self.handles:
            found.append(f"excluded handle @{handle}")
        if person.person_key in self.person_keys or person.user_id in self.user_ids:
            found.append(f"excluded user id {person.person_key}")
        if self.domains:
            for email in _emails(person.profile):
                domain = email.rsplit("@", 1)[1].lower().rstrip(".")
                hit = next((d for d in self.domains if _domain_matches(domain, d)), None)
                if hit is not None:
                    found.append(f"excluded email domain {hit}")
                    break
        verdict = bot_verdict(person.profile, self.bots, now)
        if verdict.reason:
            found.append(verdict.reason)
        return found

    def reason(self, person: PersonRow, now: datetime | None = None) -> str | None:
        """All reasons to skip ``person`` in one line ("; " between them), or None."""
        return "; ".join(self.reasons(person, now)) or None


def skip_reason(
    person: PersonRow,
    exclusions: Exclusions | ExclusionRules,
    *,
    own_domains: Iterable[str] = (),
    checks: Sequence[Check] = (),
    now: datetime | None = None,
) -> str | None:
    """Why ``person`` must not become a lead (every reason, "; "-joined), or None."""
    rules = (
        exclusions
        if isinstance(exclusions, ExclusionRules)
        else ExclusionRules.build(exclusions, own_domains=own_domains, checks=checks)
    )
    return rules.reason(person, now)


def skip_reasons(
    people: Iterable[PersonRow],
    exclusions: Exclusions | ExclusionRules,
    *,
    own_domains: Iterable[str] = (),
    checks: Sequence[Check] = (),
    now: datetime | None = None,
) -> dict[str, str]:
    """``{person_key: reason}`` for the people of a batch who must be skipped."""
    rules = (
        exclusions
        if isinstance(exclusions, ExclusionRules)
        else ExclusionRules.build(exclusions, own_domains=own_domains, checks=checks)
    )
    now = now or datetime.now(UTC)
    skipped: dict[str, str] = {}
    for person in people:
        reason = rules.reason(person, now)
        if reason:
            skipped[person.person_key] = reason
    return skipped
