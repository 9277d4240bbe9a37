"""The sandbox's ground truth, counted the plain way, for end-to-end tests.

Tests that compare the CRM with the seed turn decay and intent bonuses off
(``PLAIN_SCORING``), so that a person's score is the weighted count of their
engagements; decay and intent have their own tests (test_scoring.py). Bots of the seed
are never leads under the default exclusions.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from socialcrm.config import DEFAULT_WEIGHTS

PLAIN_SCORING: dict[str, Any] = {
    "window_days": None,
    "half_life_days": None,
    "intent": {"enabled": False},
}
WEIGHTS = {kind.value: weight for kind, weight in DEFAULT_WEIGHTS.items()}


def bots(state: dict[str, Any]) -> set[str]:
    """Person keys the seed made look automated."""
    return {f"x:{user['id']}" for user in state["x"]["users"] if user.get("bot")}


def engagement_counts(state: dict[str, Any]) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for engagement in state["x"]["engagements"]:
        counts[f"x:{engagement['user_id']}"][engagement["kind"]] += 1
    return counts


def qualified(
    counts: dict[str, Counter[str]], state: dict[str, Any], threshold: float = 3.0
) -> dict[str, dict[str, int]]:
    """Person key -> counts per kind, for everyone who must become a lead."""
    excluded = bots(state)
    return {
        key: dict(kinds)
        for key, kinds in counts.items()
        if key not in excluded and sum(WEIGHTS[kind] * n for kind, n in kinds.items()) >= threshold
    }
