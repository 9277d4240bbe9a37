"""From engaged people to lead candidates: the columns every lead mapping reads.

The summary text is what a salesperson reads on the lead to see why it exists: the
score, the counts, the buying-intent phrases, and the person's most telling engagements
with links to the posts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime

import pandas as pd

from socialcrm.config import Qualification
from socialcrm.records import EngagementKind
from socialcrm.scoring import ScoreBreakdown, intent_phrases, score_people
from socialcrm.state import EngagementRow, PersonRow

PLATFORM_NAMES = {"x": "X", "mastodon": "Mastodon", "instagram": "Instagram"}
KIND_PLURALS = {
    "mention": "mentions",
    "reply": "replies",
    "quote": "quotes",
    "repost": "reposts",
    "like": "likes",
    "follow": "follows",
    "comment": "comments",
    "message": "messages",
}
CANDIDATE_COLUMNS = [
    "person_key",
    "platform",
    "user_id",
    "handle",
    "display_name",
    "bio",
    "location",
    "profile_url",
    "followers",
    "following",
    "verified",
    "email",
    "score",
    "engagement_count",
    *[f"{kind.value}_count" for kind in EngagementKind],
    "first_engaged_at",
    "last_engaged_at",
    "engagement_summary",
    "top_post_url",
]
# Beside CANDIDATE_COLUMNS: the distinct intent phrases found ("pricing; a demo", or
# empty) and whether the decayed score reaches the threshold (the flow keeps those).
SCORING_COLUMNS = ["intent_phrases", "qualified"]
# What a lead mapping can read: the candidate's columns, the flow's link to the person's
# sales ticket, and the record key.
LEAD_ROW_COLUMNS = [*CANDIDATE_COLUMNS, *SCORING_COLUMNS, "helpdesk_ticket_url", "record_key"]
# What the Task mapping (a matched customer's activity) reads besides those.
TASK_ROW_COLUMNS = [*LEAD_ROW_COLUMNS, "who_id", "task_key", "platform_name"]


_EMAIL_IN_TEXT = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


def email_in(bio: object) -> str | None:
    """An address people put in their bio for contact ("biz: ana@acme.com"): the only email
    a social profile gives, and one of the keys that finds an existing Contact or Lead."""
    if not isinstance(bio, str):
        return None
    found = _EMAIL_IN_TEXT.search(bio)
    return found.group(0).lower() if found else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def top_engagements(
    rows: Sequence[EngagementRow], qualification: Qualification, limit: int = 5
) -> list[EngagementRow]:
    """Buying intent first, then what a person said before what they liked; among equals,
    the newest first."""

    def rank(row: EngagementRow) -> tuple[int, int, float, float]:
        try:
            weight = qualification.weight(EngagementKind(row.kind))
        except ValueError:
            weight = 0.0
        intent = 1 if row.text and intent_phrases(row.text, qualification) else 0
        return (intent, 1 if row.text else 0, weight, row.occurred_at.timestamp())

    return sorted(rows, key=rank, reverse=True)[:limit]


def summary_text(
    person: PersonRow,
    top: Sequence[EngagementRow],
    *,
    excerpt_length: int = 280,
    breakdown: ScoreBreakdown | None = None,
) -> str:
    """The lead's description; with ``breakdown``, its (decayed) score and intent phrases."""
    platform = PLATFORM_NAMES.get(person.platform, person.platform)
    shown = round(breakdown.score if breakdown is not None else person.score, 1)
    counts = ", ".join(
        f"{count} {KIND_PLURALS.get(kind, kind) if count != 1 else kind}"
        for kind, count in sorted(person.counts.items(), key=lambda item: (-item[1], item[0]))
    )
    first = person.first_engaged_at.date().isoformat() if person.first_engaged_at else "?"
    last = person.last_engaged_at.date().isoformat() if person.last_engaged_at else "?"
    lines = [
        f"Engagement score {shown:g} from {person.engagement_count} engagements "
        f"with the brand on {platform} ({counts}), first {first}, last {last}.",
    ]
    if breakdown is not None and breakdown.intent_phrases:
        quoted = ", ".join(f'"{phrase}"' for phrase in breakdown.intent_phrases)
        lines.append(f"Buying intent: {quoted}.")
    lines.append("Top engagements:")
    for row in top:
        day = row.occurred_at.date().isoformat()
        if row.text:
            text = " ".join(row.text.split())
            if len(text) > excerpt_length:
                text = text[: excerpt_length - 1] + "…"
            lines.append(f'- {day} {row.kind}: "{text}" {row.url or ""}'.rstrip())
        else:
            lines.append(f"- {day} {row.kind} of {row.url or 'a brand post'}")
    return "\n".join(lines)


def lead_candidates(
    people: Sequence[PersonRow],
    engagements: Mapping[str, Sequence[EngagementRow]],
    qualification: Qualification,
    *,
    now: datetime | None = None,
) -> pd.DataFrame:
    """One row per person: ``CANDIDATE_COLUMNS`` then ``SCORING_COLUMNS``.

    ``score`` is the decayed, windowed score with its intent bonus at ``now`` (default:
    the current time; pass it for a deterministic result); the counts, ``engagement_count``
    and the engagement dates are the person's whole history. ``qualified`` says whether
    ``score`` reaches ``qualification.threshold``: people pre-selected by their stored
    (upper-bound) score may not.
    """
    histories = {p.person_key: engagements.get(p.person_key, ()) for p in people}
    scores = score_people(histories, qualification, now)
    rows = []
    for person in people:
        profile = person.profile
        breakdown = scores[person.person_key]
        top = top_engagements(histories[person.person_key], qualification)
        row = {
            "person_key": person.person_key,
            "platform": person.platform,
            "user_id": person.user_id,
            "handle": person.handle,
            "display_name": profile.get("display_name"),
            "bio": profile.get("bio"),
            "location": profile.get("location"),
            "profile_url": profile.get("profile_url"),
            "followers": profile.get("followers"),
            "following": profile.get("following"),
            "verified": profile.get("verified"),
            "email": profile.get("email") or email_in(profile.get("bio")),
            "score": breakdown.score,
            "engagement_count": person.engagement_count,
            **{
                f"{kind.value}_count": int(person.counts.get(kind.value, 0))
                for kind in EngagementKind
            },
            "first_engaged_at": _iso(person.first_engaged_at),
            "last_engaged_at": _iso(person.last_engaged_at),
            "engagement_summary": summary_text(person, top, breakdown=breakdown),
            "top_post_url": next((row.url for row in top if row.url), None),
            "intent_phrases": "; ".join(breakdown.intent_phrases) or None,
            "qualified": breakdown.qualified,
        }
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*CANDIDATE_COLUMNS, *SCORING_COLUMNS])
    # Typed even when empty (a batch of people all skipped): an object column used as a
    # mask would select columns, not rows.
    return frame.astype({"qualified": bool, "score": "float64"})
