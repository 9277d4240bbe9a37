"""Scoring: weights, window, decay, buying-intent phrases, threshold, and the stored bound."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socialcrm.config import ConfigError, Qualification, load_settings, parse_settings
from socialcrm.qualify import CANDIDATE_COLUMNS, SCORING_COLUMNS, lead_candidates
from socialcrm.records import Engagement, EngagementKind, SocialProfile
from socialcrm.scoring import (
    decay_factor,
    engagement_score,
    fold,
    intent_matcher,
    intent_phrases,
    load_phrases,
    phrase_pattern,
    score_breakdown,
    score_people,
    stored_score,
    weighted_total,
)
from socialcrm.state import StateStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    kind: str
    occurred_at: datetime | None
    text: str | None = None


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def rules(**changes: Any) -> Qualification:
    return Qualification.model_validate(changes)


NO_INTENT = {"intent": {"enabled": False}}

# --- weights, window, decay -------------------------------------------------------------


def test_decay_halves_the_weight_at_each_half_life() -> None:
    q = rules(**NO_INTENT)
    assert engagement_score([Row("mention", ago(0))], q, NOW) == 3.0
    assert engagement_score([Row("mention", ago(30))], q, NOW) == pytest.approx(1.5)
    assert engagement_score([Row("mention", ago(60))], q, NOW) == pytest.approx(0.75)
    assert decay_factor(15, 30) == pytest.approx(2**-0.5)
    assert engagement_score([Row("mention", ago(60))], rules(half_life_days=None), NOW) == 3.0


def test_the_window_cuts_older_engagements() -> None:
    q = rules(window_days=90, half_life_days=None, **NO_INTENT)
    edge = score_breakdown([Row("like", ago(90)), Row("quote", ago(90.001))], q, NOW)
    assert edge.score == 1.0
    assert edge.counts == {"like": 1} and edge.engagement_count == 1
    # The newest engagement is reported whatever the window says.
    old = score_breakdown([Row("quote", ago(400))], q, NOW)
    assert old.score == 0 and old.last_engaged_at == ago(400)
    unbounded = rules(window_days=None, half_life_days=None, **NO_INTENT)
    assert engagement_score([Row("quote", ago(4000))], unbounded, NOW) == 4.0


def test_weights_per_kind_and_unknown_kinds() -> None:
    q = rules(weights={"like": 0.5, "mention": 10}, half_life_days=None, **NO_INTENT)
    rows = [Row("like", NOW), Row("like", NOW), Row("mention", NOW), Row("poke", NOW)]
    assert engagement_score(rows, q, NOW) == 11.0  # quote etc. keep their defaults
    # The stored bound reads the same weights from the counts' text keys.
    assert weighted_total({"like": 2, "mention": 1, "poke": 3, "quote": 1}, q) == 15.0


def test_engagements_from_the_future_and_without_time_count_fully() -> None:
    q = rules(**NO_INTENT)
    assert engagement_score([Row("mention", NOW + timedelta(days=3))], q, NOW) == 3.0
    assert engagement_score([Row("mention", None)], q, NOW) == 3.0
    naive = NOW.replace(tzinfo=None) - timedelta(days=30)
    assert engagement_score([Row("mention", naive)], q, NOW) == pytest.approx(1.5)


def test_threshold_edge_qualifies_at_equality() -> None:
    q = rules(threshold=3, **NO_INTENT)
    assert score_breakdown([Row("mention", NOW)], q, NOW).qualified
    assert not score_breakdown([Row("mention", ago(0.01))], q, NOW).qualified
    assert score_breakdown([Row("like", NOW)] * 3, q, NOW).qualified


def test_score_people_matches_one_by_one_and_handles_empty_histories() -> None:
    q = Qualification()
    histories = {
        "x:1": [Row("mention", ago(3), "how much is the pro plan?"), Row("like", ago(40))],
        "x:2": [],
        "x:3": [Row("repost", ago(200)), Row("reply", ago(10), "merci !")],
    }
    together = score_people(histories, q, NOW)
    for key, rows in histories.items():
        assert together[key] == score_breakdown(rows, q, NOW)
    assert together["x:2"].score == 0 and together["x:2"].last_engaged_at is None


# --- intent -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@acme what's your PRICING for teams?", ["pricing"]),
        ("Can we get a DEMO next week?", ["a demo"]),
        ("We'd like to book a demo", ["book a demo"]),  # the longest phrase wins
        ("free\n  trial?", ["free trial"]),
        ("free-trial please", ["free trial"]),
        ("@acme COMBIEN CA COUTE pour 10 postes ?", ["combien ça coûte"]),
        ("Vous proposez une démo ?", ["une démo"]),
        ("vous proposez une DEMO ?", ["une démo"]),
        ("on cherche un devis pour 200 postes", ["un devis"]),
        ("Quelle est la période d’essai ?", ["période d'essai"]),
        ("Recommandez-vous un outil ?", ["recommandez-vous"]),
        ("pricing? and a demo? and pricing again", ["pricing", "a demo"]),
    ],
)
def test_intent_phrases_match_case_and_accent_insensitively(text: str, expected: list[str]) -> None:
    assert intent_phrases(text, Qualification()) == expected


@pytest.mark.parametrize(
    "text",
    [
        "democracy is a demographic thing",  # no match inside words
        "repricing, devisable, tarifaire",
        "@pricing_bot hello",
        "your status page says all green but our deploys are failing 😤",
        "the demo is broken again, fix it",
        "I want to cancel my subscription, the price increase is outrageous",
        "panne depuis ce matin ?",
        "la démo plante, c'est inadmissible",
        "je veux résilier mon abonnement",
        "",
    ],
)
def test_intent_phrases_do_not_fire_on_complaints_or_inside_words(text: str) -> None:
    assert intent_phrases(text, Qualification()) == []


def test_shipped_phrase_lists() -> None:
    for language in ("en", "fr"):
        phrases = load_phrases(language)
        assert 30 <= len(phrases) <= 60
        folded = [fold(p) for p in phrases]
        assert len(set(folded)) == len(folded), f"{language}: duplicate phrases"
    assert intent_phrases("une démo", rules(intent={"languages": ["en"]})) == []
    assert intent_phrases("book a demo", rules(intent={"languages": ["fr"]})) == []
    extra = rules(intent={"languages": [], "extra_phrases": ["  Wie viel   kostet "]})
    assert intent_phrases("wie VIEL kostet das?", extra) == ["Wie viel kostet"]


def test_intent_bonus_counts_distinct_phrases_decays_and_is_capped() -> None:
    q = rules(weights={"mention": 0, "reply": 0}, intent={"weight": 5, "max_bonus": 12})
    one = score_breakdown([Row("mention", NOW, "pricing?")], q, NOW)
    assert (one.score, one.intent_phrases, one.intent_bonus) == (5.0, ("pricing",), 5.0)
    # The same phrase twice counts once, aged by its newest engagement.
    twice = [Row("mention", ago(30), "pricing?"), Row("reply", ago(0), "pricing!")]
    assert engagement_score(twice, q, NOW) == 5.0
    assert engagement_score([Row("mention", ago(30), "pricing?")], q, NOW) == 2.5
    many = [Row("mention", NOW, "pricing, a free trial and a quote for 5 seats")]
    capped = score_breakdown(many, q, NOW)
    assert len(capped.intent_phrases) == 3 and capped.intent_bonus == 12.0
    # Outside the window a phrase no longer counts.
    assert engagement_score([Row("mention", ago(91), "pricing")], q, NOW) == 0
    assert engagement_score(many, rules(intent={"enabled": False}), NOW) == 3.0
    newest_first = score_breakdown(
        [Row("reply", ago(5), "pricing"), Row("reply", ago(1), "une démo")], q, NOW
    )
    assert newest_first.intent_phrases == ("une démo", "pricing")


# --- the stored upper bound ---------------------------------------------------------------

TEXTS = [None, "", "hello", "pricing?", "une démo svp", "book a demo and a free trial", "devis"]
KINDS = [kind.value for kind in EngagementKind]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(KINDS),
            st.floats(min_value=-10, max_value=400, allow_nan=False),
            st.sampled_from(TEXTS),
        ),
        max_size=12,
    ),
    weights=st.dictionaries(
        st.sampled_from(KINDS), st.floats(min_value=0, max_value=20, allow_nan=False)
    ),
    window=st.one_of(st.none(), st.integers(min_value=1, max_value=365)),
    half_life=st.one_of(st.none(), st.floats(min_value=0.5, max_value=200)),
    intent_weight=st.floats(min_value=0, max_value=10),
    max_bonus=st.floats(min_value=0, max_value=30),
)
def test_stored_score_is_an_upper_bound_of_the_decayed_score(
    rows: list[tuple[str, float, str | None]],
    weights: dict[str, float],
    window: int | None,
    half_life: float | None,
    intent_weight: float,
    max_bonus: float,
) -> None:
    q = rules(
        weights=weights,
        window_days=window,
        half_life_days=half_life,
        intent={"weight": intent_weight, "max_bonus": max_bonus},
    )
    history = [Row(kind, ago(days), text) for kind, days, text in rows]
    counts: dict[str, int] = {}
    for row in history:
        counts[row.kind] = counts.get(row.kind, 0) + 1
    seen = any(intent_phrases(row.text, q) for row in history)
    bound = stored_score(counts, q, intent_seen=seen)
    for later in (0, 1, 45, 365):  # and it stays one as time passes
        assert score_breakdown(history, q, NOW + timedelta(days=later)).score <= bound + 1e-9


def engagement(
    id_: str, kind: EngagementKind, user: str, at: datetime, text: str | None = None
) -> Engagement:
    profile = SocialProfile(platform="x", user_id=user, handle=f"u{user}", display_name="Ann Lee")
    return Engagement("x", id_, kind, profile, occurred_at=at, text=text, url=f"https://x/{id_}")


def test_the_store_keeps_the_bound_and_remembers_intent_across_pages(state_url: str) -> None:
    q = Qualification()
    with StateStore.open(state_url) as store:
        store.ingest("brand", [engagement("1", EngagementKind.MENTION, "7", ago(2), "pricing?")], q)
        assert store.people(["x:7"])[0].score == 3 + 10  # max_bonus in the bound
        store.ingest("brand", [engagement("p:7", EngagementKind.LIKE, "7", ago(1))], q)
        assert store.people(["x:7"])[0].score == 4 + 10  # remembered without the text
        store.ingest("brand", [engagement("2", EngagementKind.MENTION, "8", ago(1), "hi")], q)
        assert store.people(["x:8"])[0].score == 3


def test_lead_candidates_carry_the_decayed_score_and_intent(state_url: str) -> None:
    q = Qualification()
    page = [
        engagement("1", EngagementKind.MENTION, "7", ago(2), "Can we get a demo? pricing?"),
        engagement("2", EngagementKind.MENTION, "8", ago(60), "love it"),
        engagement("3", EngagementKind.REPLY, "8", ago(120), "great"),
    ]
    with StateStore.open(state_url) as store:
        store.ingest("brand", page, q)
        [batch] = list(store.pending_people(batch_size=10, min_score=q.threshold))
        assert [p.person_key for p in batch] == ["x:7", "x:8"]  # both bounds pass
        frame = lead_candidates(batch, store.engagements_of(["x:7", "x:8"]), q, now=NOW)
    assert list(frame.columns) == [*CANDIDATE_COLUMNS, *SCORING_COLUMNS]
    rows = {row["person_key"]: row for row in frame.to_dict("records")}
    hot, cold = rows["x:7"], rows["x:8"]
    assert hot["score"] == pytest.approx(3 * 2 ** (-2 / 30) + 10 * 2 ** (-2 / 30), abs=1e-4)
    assert hot["intent_phrases"] == "a demo; pricing" and hot["qualified"]
    assert 'Buying intent: "a demo", "pricing".' in hot["engagement_summary"]
    assert hot["engagement_summary"].startswith("Engagement score 12.4 from 1 engagements")
    assert cold["score"] == pytest.approx(0.75) and not cold["qualified"]
    assert pd.isna(cold["intent_phrases"])
    assert cold["engagement_count"] == 2 and cold["reply_count"] == 1  # the whole history


def test_rescore_people_follows_a_weight_change(state_url: str) -> None:
    with StateStore.open(state_url) as store:
        store.ingest(
            "brand",
            [engagement("p:9", EngagementKind.LIKE, "9", ago(1))],
            Qualification(),
        )
        store.clear_unqualified_pending(3)
        heavier = rules(weights={"like": 5})
        assert store.rescore_people(heavier, batch_size=1) == 1
        assert store.people(["x:9"])[0].score == 5
        assert [p.person_key for b in store.pending_people(batch_size=5, min_score=3) for p in b]
        assert store.rescore_people(heavier) == 0


# --- configuration ------------------------------------------------------------------------


def test_existing_configs_still_load_with_the_new_defaults() -> None:
    settings_ = load_settings(ROOT / "socialcrm.example.yaml")
    q = settings_.qualification
    assert (q.threshold, q.window_days, q.half_life_days) == (3, 90, 30)
    assert q.intent.enabled and q.intent.languages == ["en", "fr"]
    assert (q.intent.weight, q.intent.max_bonus) == (5, 10)


BASE: dict[str, Any] = {
    "accounts": [{"name": "b", "user_id": "1", "handle": "b", "bearer_token": "${T}"}],
    "crm": {"login_url": "https://x", "auth": {"method": "session", "access_token": "${A}"}},
}


@pytest.mark.parametrize(
    ("qualification", "expected"),
    [
        ({"intent": {"languages": ["de"]}}, "no shipped intent phrase list for 'de'"),
        ({"intent": {"extra_phrases": ["  ?! "]}}, "needs at least one letter or digit"),
        ({"weights": {"like": -1}}, "negative for: like"),
        ({"half_life_days": 0}, "qualification.half_life_days"),
        ({"window_days": 0}, "qualification.window_days"),
        ({"intent": {"max_bonus": -1}}, "qualification.intent.max_bonus"),
        ({"intent": {"wieght": 3}}, "qualification.intent.wieght: unknown key"),
    ],
)
def test_qualification_errors_name_the_key(qualification: dict[str, Any], expected: str) -> None:
    data = {**BASE, "crm": {**BASE["crm"], "instance_url": "https://i"}}
    with pytest.raises(ConfigError) as error:
        parse_settings(
            {**data, "qualification": qualification}, source=Path("c.yaml"), base_dir=Path()
        )
    assert expected in str(error.value)


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Combien ÇA coûte", "combien ca coute"),
        ("recommandez\u2011vous", "recommandez vous"),  # a non-breaking hyphen
        ("Quel est   le PRIX ?", "quel est le prix ?"),  # ASCII: the fast path
        ("can\u2019t wait", "can't wait"),
        ("e\u0301te\u0301 Straße", "ete strasse"),  # marks already apart; ß folds
        ("ﬁnancement", "financement"),  # a ligature decomposes
        ("料金はいくらですか", "料金はいくらてすか"),  # the dakuten is a mark too, as in phrases
        ("", ""),
    ],
)
def test_fold_removes_case_accents_and_dashes(text: str, folded: str) -> None:
    assert fold(text) == folded


def _fold_reference(text: str) -> str:
    """``fold`` written the slow, obvious way: character by character."""
    apostrophes = str.maketrans(dict.fromkeys("\u2019\u2018\u02bc`\u00b4\u201b", "'"))
    decomposed = unicodedata.normalize("NFKD", text.translate(apostrophes))
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"[\s\-\u2010\u2011\u2012\u2013\u2014]+", " ", bare.casefold()).strip()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_fold_matches_the_character_by_character_definition(text: str) -> None:
    assert fold(text) == _fold_reference(text)


_SHIPPED = {fold(p) for language in ("en", "fr") for p in load_phrases(language)}
# Plus their first words ("book a demo": "book", "book a"): phrases inside longer ones.
_PHRASES = sorted(_SHIPPED | {" ".join(p.split()[:n]) for p in _SHIPPED for n in (1, 2)})
_ALTERNATION = re.compile(
    "(?<!\\w)(?:"
    + "|".join(re.escape(p) for p in sorted(_PHRASES, key=len, reverse=True))
    + ")(?!\\w)"
)
_TRIE = re.compile(f"(?<!\\w){phrase_pattern(_PHRASES)}(?!\\w)")
_PIECES = sorted({word for p in _PHRASES for word in p.split()} | {"x", "s", "-", "é", "_"})


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=12), st.lists(st.sampled_from(["", " ", "s"])))
def test_the_phrase_trie_finds_what_the_longest_first_alternation_finds(
    words: list[str], joints: list[str]
) -> None:
    """Texts made of the phrases' own words (glued, spaced, pluralised): the trie must
    pick the same phrase at the same place as the plain alternation, longest first."""
    text = "".join(w + (joints[i] if i < len(joints) else " ") for i, w in enumerate(words))
    trie = [(m.start(), m.group(0)) for m in _TRIE.finditer(text)]
    assert trie == [(m.start(), m.group(0)) for m in _ALTERNATION.finditer(text)]


def test_a_phrase_inside_a_longer_one_and_prefixes() -> None:
    phrases = ["demo", "demos", "a demo", "ab", "book", "book a demo"]
    pattern = re.compile(f"(?<!\\w){phrase_pattern(phrases)}(?!\\w)")
    text = "a demos, demo, a demo, ab, abc, a, book a demo, book a dem"
    assert [m.group(0) for m in pattern.finditer(text)] == [
        "demos", "demo", "a demo", "ab", "book a demo", "book",
    ]  # fmt: skip


def test_a_text_is_looked_into_once_and_its_answer_cannot_be_changed() -> None:
    matcher = intent_matcher(Qualification())
    text = "how much is it? can we book a demo (memo test)"
    first = matcher.find(text)
    assert first == ["how much is", "book a demo"]
    first.append("tampered")
    assert matcher._found[text] == ("how much is", "book a demo")
    assert matcher.find(text) == ["how much is", "book a demo"]
