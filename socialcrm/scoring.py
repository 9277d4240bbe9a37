"""Engagement scoring: weights per kind, a time window, exponential decay and buying intent.

Pure functions of (a person's engagements, ``Qualification``, ``now``); nothing here reads
the store or the clock unless ``now`` is left out.

The score of a person at ``now``::

    sum(weight[kind] * 0.5 ** (age_days / half_life_days))      over engagements in the window
  + min(max_bonus, intent.weight * sum(0.5 ** (age_days / half_life_days)))
                                                   over distinct intent phrases, each aged by
                                                   the newest in-window engagement saying it

An engagement is in the window when it is at most ``window_days`` old. Ages below zero (a
clock ahead of ours) count as zero, so no factor ever exceeds one.

The stored score
----------------
``state.StateStore`` keeps one number per person (``people.score``) to pre-select the
people worth scoring (``pending_people(min_score=threshold)``) without reading their
engagements. That number is :func:`stored_score`: the lifetime weighted total with no
window and no decay, plus the whole ``max_bonus`` once any text of the person ever matched
an intent phrase. It is an **upper bound** of :func:`score_breakdown` at every moment, for
every weight >= 0 (the config enforces it): each decay factor is at most 1, the window only
removes terms, and the intent bonus never exceeds ``max_bonus``. Pre-selecting with
``stored >= threshold`` therefore never misses a qualified person; the exact score then
decides (``ScoreBreakdown.qualified``).

Why not store the exact decayed score? It changes with the clock, not only with new
engagements: it would be stale the moment it is written and computing it on ingest means
reading every past engagement of every person a page touches. The bound is computed from
the running counts alone, stays valid as time passes, and only loosens the pre-selection
(people whose engagements have aged out are scored and then left out). After a change of
``weights`` or ``intent``, run ``StateStore.rescore_people`` so the bounds follow.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from typing import Protocol

import numpy as np

from socialcrm.config import IntentSettings, Qualification

DAY_SECONDS = 86_400.0
# A stored score above the weighted total by more than this carries an intent bonus; far
# above rounding (4 decimals) and far below any sensible max_bonus.
_BONUS_EPSILON = 1e-3


class Scorable(Protocol):
    """What scoring reads of an engagement: ``state.EngagementRow`` and ``records.Engagement``
    both fit (``occurred_at`` None means "now")."""

    @property
    def kind(self) -> str: ...

    @property
    def occurred_at(self) -> datetime | None: ...

    @property
    def text(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class ScoreBreakdown:
    """A person's score at one moment, and what it is made of.

    ``counts`` and ``engagement_count`` cover the window only; ``last_engaged_at`` is the
    newest engagement whatever its age. ``intent_phrases`` are the distinct phrases found in
    the window, as written in the phrase lists, newest first.
    """

    score: float
    counts: dict[str, int] = field(default_factory=dict)
    last_engaged_at: datetime | None = None
    intent_phrases: tuple[str, ...] = ()
    intent_bonus: float = 0.0
    engagement_count: int = 0
    qualified: bool = False


# ---------------------------------------------------------------------------------------
# Intent phrases

_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "`": "'", "´": "'", "‛": "'"})
_SEPARATORS = re.compile(r"[\s\-‐‑‒–—]+")  # spaces and every dash


@lru_cache(maxsize=16_384)
def fold(text: str) -> str:
    """Case- and accent-free form with one space between words: how phrases are compared.

    "Combien ÇA coûte" -> "combien ca coute"; "recommandez-vous" -> "recommandez vous";
    typographic apostrophes become "'". Cached: a text is scored, then ranked for the
    lead's description, in the same batch.
    """
    text = text.translate(_APOSTROPHES)
    if not text.isascii():  # ASCII has nothing to decompose
        text = unicodedata.normalize("NFKD", text).translate(_combining_marks())
    return _SEPARATORS.sub(" ", text.casefold()).strip()


@lru_cache(maxsize=1)
def _combining_marks() -> dict[int, None]:
    """Every combining mark (accents and the like), for ``str.translate`` to delete."""
    return {c: None for c in range(sys.maxunicode + 1) if unicodedata.combining(chr(c))}


@lru_cache(maxsize=16)
def load_phrases(language: str) -> tuple[str, ...]:
    """The shipped phrase list of a language (``socialcrm/intent/{language}.txt``)."""
    source = resources.files("socialcrm").joinpath("intent", f"{language}.txt")
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"no shipped intent phrase list for {language!r}") from None
    phrases = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return tuple(phrase for phrase in phrases if phrase)


_Trie = dict[str, "_Trie"]


def phrase_pattern(phrases: Iterable[str]) -> str:
    """One regex alternative for ``phrases``, as a character trie.

    ``a demo|a quote|...`` makes the regex engine try every phrase at every position; the
    trie tries one branch per character (1.7 times faster on posts). A phrase that is the
    start of a longer one is an optional tail (``demo(?:s)?``), tried longer first:
    with a ``(?!\\w)`` after it, the longest phrase ending at a word boundary wins, as in
    an alternation sorted longest first.
    """
    trie: _Trie = {}
    for phrase in phrases:
        node = trie
        for char in phrase:
            node = node.setdefault(char, {})
        node[""] = {}  # a phrase ends here

    def render(node: _Trie) -> str:
        branches = [re.escape(char) + render(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return render(trie)


_FOUND_KEPT = 16_384  # texts whose phrases a matcher remembers (see IntentMatcher.find)


@dataclass(frozen=True)
class IntentMatcher:
    """Finds phrases in text: case/accent-insensitive, whole words, longest phrase first."""

    pattern: re.Pattern[str] | None
    names: Mapping[str, str]  # folded phrase -> phrase as written in its list
    # A text is looked into when stored, scored, and ranked twice for the lead: once.
    _found: dict[str, tuple[str, ...]] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )

    @classmethod
    def from_phrases(cls, phrases: Iterable[str]) -> IntentMatcher:
        names: dict[str, str] = {}
        for phrase in phrases:
            folded = fold(phrase)
            if folded and folded not in names:
                names[folded] = " ".join(phrase.split())
        if not names:
            return cls(None, names)
        return cls(re.compile(rf"(?<!\w){phrase_pattern(names)}(?!\w)"), names)

    def find(self, text: str | None) -> list[str]:
        """Distinct phrases found in ``text``, in order of appearance."""
        if not text or self.pattern is None:
            return []
        found = self._found.get(text)
        if found is None:
            matches = self.pattern.finditer(fold(text))
            found = tuple(dict.fromkeys(self.names[m.group(0)] for m in matches))
            if len(self._found) >= _FOUND_KEPT:
                self._found.clear()
            self._found[text] = found
        return list(found)


@lru_cache(maxsize=32)
def _matcher(languages: tuple[str, ...], extra: tuple[str, ...]) -> IntentMatcher:
    phrases = [phrase for language in languages for phrase in load_phrases(language)]
    return IntentMatcher.from_phrases([*phrases, *extra])


def intent_matcher(intent: IntentSettings | Qualification) -> IntentMatcher:
    """The (cached) matcher for a config's languages and extra phrases."""
    settings = intent.intent if isinstance(intent, Qualification) else intent
    return _matcher(tuple(settings.languages), tuple(settings.extra_phrases))


def intent_phrases(text: str | None, intent: IntentSettings | Qualification) -> list[str]:
    """Buying-intent phrases in one text (empty when intent scoring is disabled)."""
    settings = intent.intent if isinstance(intent, Qualification) else intent
    if not settings.enabled:
        return []
    return intent_matcher(settings).find(text)


# ---------------------------------------------------------------------------------------
# Scores


def decay_factor(age_days: float, half_life_days: float | None) -> float:
    """``0.5 ** (age / half_life)``; 1 without decay or for ages below zero."""
    if half_life_days is None or age_days <= 0:
        return 1.0
    return float(0.5 ** (age_days / half_life_days))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _kind_weight(kind: str, qualification: Qualification) -> float:
    return qualification.weight(kind)


def score_people(
    engagements: Mapping[str, Sequence[Scorable]],
    qualification: Qualification,
    now: datetime | None = None,
) -> dict[str, ScoreBreakdown]:
    """Score many people at once: one vectorised pass over all their engagements.

    Args:
        engagements: person key -> that person's engagements (any order, any age).
        qualification: weights, window, decay, intent and threshold.
        now: the moment the score is for; default the current time (pass it in tests).
    """
    now = _aware(now) if now is not None else datetime.now(UTC)
    now_ts = now.timestamp()
    keys = list(engagements)
    owner: list[int] = []
    weights: list[float] = []
    stamps: list[float] = []
    for index, key in enumerate(keys):
        for row in engagements[key]:
            owner.append(index)
            weights.append(_kind_weight(str(row.kind), qualification))
            at = row.occurred_at
            stamps.append(_aware(at).timestamp() if at is not None else now_ts)
    ages = np.maximum((now_ts - np.asarray(stamps, dtype=float)) / DAY_SECONDS, 0.0)
    window = qualification.window_days
    inside = ages <= window if window is not None else np.ones(len(ages), dtype=bool)
    half_life = qualification.half_life_days
    factors = 0.5 ** (ages / half_life) if half_life is not None else np.ones(len(ages))
    contributions = np.where(inside, np.asarray(weights, dtype=float) * factors, 0.0)
    totals = np.bincount(np.asarray(owner, dtype=np.intp), contributions, minlength=len(keys))

    intent = qualification.intent
    matcher = intent_matcher(intent) if intent.enabled and intent.weight > 0 else None
    results: dict[str, ScoreBreakdown] = {}
    position = 0
    for index, key in enumerate(keys):
        rows = engagements[key]
        counts: dict[str, int] = {}
        newest_factor: dict[str, float] = {}  # phrase -> factor of its newest engagement
        newest_at: dict[str, float] = {}
        last: datetime | None = None
        for offset, row in enumerate(rows):
            at = _aware(row.occurred_at) if row.occurred_at is not None else now
            last = at if last is None or at > last else last
            i = position + offset
            if not inside[i]:
                continue
            kind = str(row.kind)
            counts[kind] = counts.get(kind, 0) + 1
            if matcher is not None and row.text:
                for phrase in matcher.find(row.text):
                    if phrase not in newest_at or stamps[i] > newest_at[phrase]:
                        newest_at[phrase] = stamps[i]
                        newest_factor[phrase] = float(factors[i])
        position += len(rows)
        bonus = 0.0
        if newest_factor:
            bonus = min(intent.max_bonus, intent.weight * sum(newest_factor.values()))
        total = round(float(totals[index]) + bonus, 4)
        phrases = sorted(newest_at, key=lambda p: newest_at[p], reverse=True)
        results[key] = ScoreBreakdown(
            score=total,
            counts=counts,
            last_engaged_at=last,
            intent_phrases=tuple(phrases),
            intent_bonus=round(bonus, 4),
            engagement_count=sum(counts.values()),
            qualified=total >= qualification.threshold,
        )
    return results


def score_breakdown(
    rows: Sequence[Scorable], qualification: Qualification, now: datetime | None = None
) -> ScoreBreakdown:
    """One person's score at ``now`` and what makes it (see the module docstring)."""
    return score_people({"": rows}, qualification, now)[""]


def engagement_score(
    rows: Sequence[Scorable], qualification: Qualification, now: datetime | None = None
) -> float:
    """One person's decayed, windowed score with the intent bonus, at ``now``."""
    return score_breakdown(rows, qualification, now).score


# ---------------------------------------------------------------------------------------
# The stored upper bound


def weighted_total(counts: Mapping[str, int], qualification: Qualification) -> float:
    """Lifetime weighted total of engagement counts: no window, no decay, no intent."""
    return sum(_kind_weight(kind, qualification) * count for kind, count in counts.items())


def stored_score(
    counts: Mapping[str, int], qualification: Qualification, *, intent_seen: bool
) -> float:
    """The upper bound kept in the store: see "The stored score" in the module docstring."""
    intent = qualification.intent
    bonus = intent.max_bonus if intent_seen and intent.enabled and intent.weight > 0 else 0.0
    return round(weighted_total(counts, qualification) + bonus, 4)


def bound_has_intent(
    stored: float, counts: Mapping[str, int], qualification: Qualification
) -> bool:
    """Whether a stored bound includes the intent bonus (it is above the weighted total).

    The store has no column for it: the bound itself remembers, as long as the weights did
    not change since it was written (``StateStore.rescore_people`` after a change).
    """
    return stored - weighted_total(counts, qualification) > _BONUS_EPSILON
