"""Two workers, one account, one PostgreSQL store: every lead and ticket exactly once.

Each run is its own process with its own Prefect engine, as two workers picking up the
same deployment would be. They start together against a sandbox slowed down enough that
they overlap; the store's per-(account, pipeline) lock lets one do the work.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from truth import PLAIN_SCORING, engagement_counts, qualified

from sandbox.server import Sandbox, start_sandbox
from socialcrm.routing import load_rules, route

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[1]
REF = re.compile(r"\[ref x:dm:(\d+)\]")


def run_together(flow: str, config: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """Start two `socialcrm run` processes at once; their JSON summaries."""
    processes = []
    for worker in ("a", "b"):
        env = dict(os.environ)
        env.update(
            PREFECT_HOME=str(tmp_path / f"prefect-{worker}"),
            DO_NOT_TRACK="1",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_LEVEL="WARNING",
            PREFECT_SERVER_LOGGING_LEVEL="CRITICAL",
        )
        env.pop("PREFECT_API_URL", None)
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "socialcrm.cli", "run", flow, "--config", str(config)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
    summaries = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    return summaries


@pytest.fixture
def sandbox(tmp_path: Path, postgres_url: str) -> Any:
    box = start_sandbox(
        seed=11,
        write_config=tmp_path / "socialcrm.yaml",
        workdir=tmp_path,
        state_url=postgres_url,
        latency_ms=15,
    )
    assert box.config_path is not None
    data = yaml.safe_load(box.config_path.read_text())
    data["accounts"][0]["recent_posts"] = 100
    data["qualification"] = {**(data.get("qualification") or {}), **PLAIN_SCORING}
    box.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    yield box
    box.stop()


def test_two_workers_deliver_every_lead_and_ticket_exactly_once(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    assert sandbox.config_path is not None
    leads_runs = run_together("leads", sandbox.config_path, tmp_path)

    state = sandbox.state()
    expected = set(qualified(engagement_counts(state), state))
    held = [lead["Social_Profile_Id__c"] for lead in sandbox.state()["salesforce"]["Lead"]]
    assert len(held) == len(set(held)), "a lead was created twice"
    assert set(held) == expected
    assert sum(run["created"] for run in leads_runs) == len(expected)
    statuses = sorted(run["status"] for run in leads_runs)
    print("leads runs:", statuses)

    tickets_runs = run_together("tickets", sandbox.config_path, tmp_path)
    rules = load_rules(ROOT / "mappings" / "routing.yaml")
    wanted: dict[str, set[str]] = {}
    for event in sandbox.state()["x"]["dm_events"]:
        if event["event_type"] != "MessageCreate" or event["from_brand"]:
            continue
        if route(rules, event["text"]).route != "spam":
            wanted.setdefault(event["dm_conversation_id"], set()).add(event["id"])
    tickets = sandbox.state()["zendesk"]["tickets"]
    by_conversation = Counter(t["external_id"].split(":", 2)[2] for t in tickets)
    assert set(by_conversation) == set(wanted)
    assert all(n == 1 for n in by_conversation.values()), "two tickets for one conversation"
    comments: Counter[str] = Counter()
    for ticket in tickets:
        for comment in ticket["comments"]:
            comments.update(REF.findall(comment.get("body") or ""))
    assert set(comments) == set().union(*wanted.values())
    assert all(n == 1 for n in comments.values()), "a message was added twice"
    assert sum(run["tickets_created"] for run in tickets_runs) == len(wanted)
    print("tickets runs:", sorted(run["status"] for run in tickets_runs))
