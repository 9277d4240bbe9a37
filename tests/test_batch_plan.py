"""Held-back leads keep what they are looked up by, however often they wait."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any, cast

import pandas as pd

from connectors.crm import salesforce
from flows.leads import BatchPlan, recheck_held
from socialcrm.state import PersonRow


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


def test_a_lead_held_twice_keeps_its_row_and_is_looked_at_again() -> None:
    _, held = plan(1, ["x:1", "x:2"]).split({"x:2"})
    assert held.frame is not None and list(held.frame["person_key"]) == ["x:2"]
    merged = plan(2, ["x:3"]).after(held)
    assert merged.frame is not None and sorted(merged.frame["person_key"]) == ["x:2", "x:3"]
    _, again = merged.split({"x:2", "x:3"})  # a small last batch: held once more
    assert again.frame is not None and sorted(again.frame["person_key"]) == ["x:2", "x:3"]

    # The write since created x:2's address: x:2 is decided again, x:3 goes as it is.
    written = salesforce.Written.of([{"Email": "2@example.com"}], [], salesforce.MatchRules())
    ctx = SimpleNamespace(last_write=written, serial=threading.Lock(), deferred=[])
    kept = recheck_held(cast(Any, ctx), again)
    assert kept.send_keys == ["x:3"]
    assert [p.person_key for p in ctx.deferred] == ["x:2"]


def test_a_held_lead_without_its_row_is_decided_again_rather_than_guessed() -> None:
    _, held = plan(1, ["x:1", "x:2"]).split({"x:2"})
    held.frame = None
    written = salesforce.Written.of([], [], salesforce.MatchRules())
    ctx = SimpleNamespace(last_write=written, serial=threading.Lock(), deferred=[])
    assert recheck_held(cast(Any, ctx), held).send_keys == []
    assert [p.person_key for p in ctx.deferred] == ["x:2"]
