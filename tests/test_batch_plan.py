"""Held-back leads keep what they are looked up by, however often they wait."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pandas as pd
import pytest

from connectors.crm import salesforce
from flows.leads import BatchPlan, recheck_held
from socialcrm import consent
from socialcrm.state import PersonRow, StateStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}") as opened:
        yield opened


def context(store: StateStore, written: Any) -> Any:
    return SimpleNamespace(last_write=written, serial=threading.Lock(), deferred=[], store=store)


def person(key: str) -> PersonRow:
    return PersonRow(key, "x", key.split(":")[1], f"h{key}", {}, {}, 1, 5.0, None, None)


def plan(number: int, keys: list[str]) -> BatchPlan:
    frame = pd.DataFrame(
        {
            "person_key": keys,
            "email": [f"{k.split(':')[1]}@example.com" for k in keys],
            "handle": [f"h{k}" for k in keys],
            "profile_url": [None] * len(keys),
        }
    )
    return BatchPlan(
        number,
        people=[person(k) for k in keys],
        decided=[],
        send_keys=list(keys),
        to_send=[{"Email": f"{k.split(':')[1]}@example.com"} for k in keys],
        frame=frame,
    )


def test_a_lead_held_twice_keeps_its_row_and_is_looked_at_again(store: StateStore) -> None:
    _, held = plan(1, ["x:1", "x:2"]).split({"x:2"})
    assert held.frame is not None and list(held.frame["person_key"]) == ["x:2"]
    merged = plan(2, ["x:3"]).after(held)
    assert merged.frame is not None and sorted(merged.frame["person_key"]) == ["x:2", "x:3"]
    _, again = merged.split({"x:2", "x:3"})  # a small last batch: held once more
    assert again.frame is not None and sorted(again.frame["person_key"]) == ["x:2", "x:3"]

    # The write since created x:2's address: x:2 is decided again, x:3 goes as it is.
    written = salesforce.Written.of([{"Email": "2@example.com"}], [], salesforce.MatchRules())
    ctx = context(store, written)
    kept = recheck_held(cast(Any, ctx), again)
    assert kept.send_keys == ["x:3"]
    assert [p.person_key for p in ctx.deferred] == ["x:2"]


def test_a_held_lead_without_its_row_is_decided_again_rather_than_guessed(
    store: StateStore,
) -> None:
    _, held = plan(1, ["x:1", "x:2"]).split({"x:2"})
    held.frame = None
    written = salesforce.Written.of([], [], salesforce.MatchRules())
    ctx = context(store, written)
    assert recheck_held(cast(Any, ctx), held).send_keys == []
    assert [p.person_key for p in ctx.deferred] == ["x:2"]


def test_a_held_lead_whose_person_opted_out_meanwhile_is_not_written(store: StateStore) -> None:
    """Someone opted out while the batch before was written (a Bulk job can take
    minutes): their held lead is skipped for consent (checked: before, it was created)."""
    _, held = plan(1, ["x:1", "x:2"]).split({"x:1", "x:2"})
    consent.opt_out(store, ["x:2"])
    written = salesforce.Written.of([], [], salesforce.MatchRules())
    kept = recheck_held(context(store, written), held)
    assert kept.send_keys == ["x:1"]
    assert [(o.record_key, o.status) for o in kept.decided] == [
        ("x:2", "skipped: consent: opt-out")
    ]
