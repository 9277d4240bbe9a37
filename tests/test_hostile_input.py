"""Hostile input: every item is delivered cleanly or rejected with a reason; nothing crashes.

Two parts: a property test that throws generated payloads in the X API's own shapes at
the parsers, the store, scoring and the lead mapping; and an end-to-end run against a
sandbox seeded with hand-picked hostile records (100,000-character bios, NUL, lone
surrogates, formulas, SOQL injection, duplicate ids, dates in 2099, missing authors...).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from truth import PLAIN_SCORING, bots

from connectors.http import sanitize_json
from connectors.social.x import parse_tweets, parse_users
from connectors.social.x_dm import parse_dm_events
from mappings import apply_spec, load_spec
from socialcrm.config import Qualification
from socialcrm.qualify import lead_candidates
from socialcrm.records import EngagementKind
from socialcrm.state import StateStore

NASTY = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\u200b\u200d",
    "\u202eevil",
    "🚀" * 50,
    "<script>alert(1)</script>",
    "' OR Name != '",
    '=HYPERLINK("http://evil.example")',
    "+cmd|' /C calc'!A0",
    "@SUM(1+1)",
    "\t\r\n",
    "x" * 100_000,
    "2099-01-01T00:00:00.000Z",
    "yesterday",
    "ﷺ",
    "Ω≈ç√",
    "null",
    "-1",
    "0",
]
text = st.one_of(st.sampled_from(NASTY), st.text(max_size=60))
anything = st.one_of(
    text,
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(text, text, max_size=2),
)
ids = st.one_of(
    st.integers(min_value=1, max_value=10**19).map(str), st.sampled_from(["7", "8"]), anything
)
user = st.fixed_dictionaries(
    {"id": ids},
    optional={
        "name": anything,
        "username": anything,
        "description": anything,
        "location": anything,
        "created_at": anything,
        "verified": anything,
        "public_metrics": st.one_of(
            anything,
            st.fixed_dictionaries(
                {}, optional={"followers_count": anything, "following_count": anything}
            ),
        ),
    },
)
tweet = st.fixed_dictionaries(
    {"id": ids},
    optional={
        "text": anything,
        "author_id": ids,
        "created_at": anything,
        "referenced_tweets": st.one_of(
            anything,
            st.lists(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["quoted", "replied_to", "x"]), "id": ids}
                ),
                max_size=2,
            ),
        ),
        "in_reply_to_user_id": ids,
    },
)
page = st.fixed_dictionaries(
    {"data": st.lists(st.one_of(tweet, anything), max_size=8)},
    optional={
        "includes": st.fixed_dictionaries({"users": st.lists(user, max_size=6)}),
        "errors": st.lists(st.dictionaries(text, anything, max_size=3), max_size=2),
        "meta": st.dictionaries(text, anything, max_size=2),
    },
)
# CI sees the same payloads every run (a red build must mean a change broke something);
# SOCIALCRM_EXPLORE=1 draws new ones, to go looking for trouble.
DERANDOMIZE = os.environ.get("SOCIALCRM_EXPLORE") != "1"
SPEC = load_spec(Path(__file__).resolve().parents[1] / "mappings" / "lead.salesforce.yaml")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StateStore]:
    with StateStore.open(f"sqlite:///{tmp_path_factory.mktemp('hostile') / 's.db'}") as s:
        yield s


@settings(
    max_examples=220,
    derandomize=DERANDOMIZE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(body=page, users=st.lists(user, max_size=6))
def test_generated_hostile_pages_never_crash_the_pipeline(
    body: dict[str, Any], users: list[dict[str, Any]], store: StateStore
) -> None:
    body = sanitize_json(json.loads(json.dumps(body)))  # what the wire can carry
    tweets = parse_tweets(body, stream="mentions", brand_id="1")
    likes = parse_users(sanitize_json({"data": users}), kind=EngagementKind.LIKE, post_id="5")
    dms = parse_dm_events(body, brand_id="1")
    data = body.get("data") or []
    assert len(tweets.records) + len(tweets.problems) == len(data)
    assert len(likes.records) + len(likes.problems) == len(users)
    for problem in [*tweets.problems, *likes.problems, *dms.problems]:
        assert problem.reason and problem.record_key
    records = [*tweets.records, *likes.records]
    store.ingest("brand", records, Qualification())
    keys = sorted({r.author.key for r in records})
    people = store.people(keys)
    frame = lead_candidates(people, store.engagements_of(keys), Qualification())
    frame = frame.assign(record_key=frame["person_key"])
    mapped = apply_spec(SPEC, frame, None, key_column="record_key")
    json.dumps(mapped.records, allow_nan=False)
    assert len(mapped.records) + len({p.record_key for p in mapped.rejected}) == len(people)


# ---------------------------------------------------------------------------------------
# End to end against the hostile sandbox.

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


@pytest.mark.slow
def test_hostile_sandbox_runs_clean_and_loses_nothing_good(
    tmp_path: Path, prefect_harness: None
) -> None:
    from flows.leads import LeadsRun, leads
    from flows.tickets import TicketsRun, tickets
    from sandbox.server import start_sandbox
    from socialcrm.routing import load_rules, route

    box = start_sandbox(
        seed=7, write_config=tmp_path / "socialcrm.yaml", workdir=tmp_path, hostile=True
    )
    try:
        config = str(box.config_path)
        data = yaml.safe_load(Path(config).read_text())
        data["qualification"] = {**(data.get("qualification") or {}), **PLAIN_SCORING}
        Path(config).write_text(yaml.safe_dump(data, sort_keys=False))
        lead_run = leads(LeadsRun(config=config))
        ticket_run = tickets(TicketsRun(config=config))
        assert lead_run["status"] == ticket_run["status"] == "completed"  # 0 crashed runs
        state = box.state()
    finally:
        box.stop()
    assert lead_run["failed"] == 0, "Salesforce refused something the mapping let through"

    # Every good person reaches the CRM as the clean world says.
    weights = {k.value: w for k, w in Qualification().weights.items()}
    recent = {p["id"] for p in sorted(state["x"]["posts"], key=lambda p: p["id"])[-20:]}
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for e in state["x"]["engagements"]:
        if "hostile" in e or (
            e["kind"] in ("like", "repost", "quote") and e["post_id"] not in recent
        ):
            continue
        counts[f"x:{e['user_id']}"][e["kind"]] += 1
    good = {
        k
        for k, c in counts.items()
        if sum(weights[n] * v for n, v in c.items()) >= 3 and k not in bots(state)
    }
    leads_held = {lead["Social_Profile_Id__c"]: lead for lead in state["salesforce"]["Lead"]}
    assert good <= set(leads_held)
    for lead in leads_held.values():
        for name, value in lead.items():
            if isinstance(value, str):
                assert not CONTROL.search(value), f"{name} carries a control character"
                assert "\ufffd" not in name

    # Every hostile item: in the store, or a dead letter naming field and reason.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with engine.connect() as connection:
        stored = set(
            connection.execute(sa.text("select engagement_key from engagements")).scalars()
        )
        letters = connection.execute(
            sa.text("select pipeline, stage, record_key, field, reason from dead_letters")
        ).all()
    engine.dispose()
    assert all(letter.reason and letter.field for letter in letters)
    hostile = [e for e in state["x"]["engagements"] if "hostile" in e]
    assert len(hostile) >= 60
    lost = [
        e
        for e in hostile
        if f"x:{e['kind']}:{e['id']}" not in stored
        and not any(
            str(e["id"]) in letter.record_key
            or (e["kind"] == "like" and str(e["post_id"]) in letter.record_key)
            for letter in letters
        )
    ]
    unaccounted = [e for e in lost if e.get("deliverable")]
    assert len(unaccounted) <= sum(1 for dead in letters if "#" in dead.record_key), unaccounted

    # Every good customer message is in the helpdesk exactly once.
    rules = load_rules(Path(__file__).resolve().parents[1] / "mappings" / "routing.yaml")
    refs = Counter(
        ref
        for t in state["zendesk"]["tickets"]
        for c in t["comments"]
        for ref in re.findall(r"\[ref x:dm:(\d+)\]", c.get("body") or "")
    )
    wanted = {
        e["id"]
        for e in state["x"]["dm_events"]
        if e["event_type"] == "MessageCreate"
        and not e["from_brand"]
        and "hostile" not in e
        and route(rules, e["text"]).route != "spam"
    }
    assert wanted <= set(refs) and all(refs[i] == 1 for i in wanted)
