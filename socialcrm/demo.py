"""``make demo``: the whole leads pipeline against the sandbox, narrated.

Starts the simulators, runs the leads flow three times (first sync, a rerun that must
write nothing, a run after new engagements) and prints what each run did.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

DEMO_DIR = Path(".socialcrm/demo")


def _line(text: str = "") -> None:
    print(text, flush=True)


def _summary(title: str, summary: dict[str, Any], seconds: float) -> None:  # leads runs
    calls = summary["api_calls"]
    _line(
        f"{title} ({seconds:.1f}s): {summary['fetched']} engagements fetched "
        f"({summary['new_engagements']} new) from {summary['engaged_users']} people; "
        f"{summary['qualified']} qualified -> {summary['created']} leads created, "
        f"{summary['updated']} updated, {summary['unchanged']} unchanged, "
        f"{summary['failed']} failed"
    )
    _line(
        f"    API calls: X {calls['x']['reads']} reads; Salesforce "
        f"{calls['salesforce']['reads']} reads, {calls['salesforce']['writes']} writes"
    )


def main() -> int:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The demo narrates itself; Prefect's per-task chatter would drown it.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    if not os.environ.get("PREFECT_API_URL"):
        # Ephemeral mode: the temporary server is killed at exit while it may still be
        # flushing task-run events, which it reports as tracebacks that mean nothing here.
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

    from sandbox.server import start_sandbox

    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir(parents=True)
    config = DEMO_DIR / "socialcrm.yaml"
    # 50 ms a call, as the real APIs answer from a nearby region.
    sandbox = start_sandbox(seed=7, write_config=config, workdir=DEMO_DIR, latency_ms=50)
    try:
        _line(
            f"Sandbox up: X API at {sandbox.urls['x']}, Salesforce at {sandbox.urls['salesforce']}"
        )
        _line(f"Config written to {config} (copy socialcrm.example.yaml for real accounts)")
        _line("Starting Prefect (ephemeral mode, no server needed)...")

        from flows.leads import LeadsRun, leads

        params = LeadsRun(config=str(config))
        started = time.perf_counter()
        first = leads(params)
        _summary("Run 1, first sync", first, time.perf_counter() - started)
        state = sandbox.state()
        shown = sorted(
            state["salesforce"]["Lead"], key=lambda r: -(r.get("Engagement_Score__c") or 0)
        )
        _line("    Top leads now in Salesforce:")
        for lead in shown[:8]:
            name = f"{lead.get('FirstName') or ''} {lead.get('LastName') or ''}".strip()
            _line(
                f"      {name[:28]:<28} @{(lead.get('Social_Handle__c') or '')[:18]:<18} "
                f"score {lead.get('Engagement_Score__c')!s:>5}  "
                f"{sandbox.urls['salesforce']}/lightning/r/Lead/{lead['Id']}/view"
            )

        started = time.perf_counter()
        second = leads(params)
        _summary("Run 2, nothing new", second, time.perf_counter() - started)

        added = sandbox.generate(engagements=300)
        _line(f"Sandbox: {sum(added['added'].values())} new engagements arrive ({added['added']})")
        started = time.perf_counter()
        third = leads(params)
        _summary("Run 3, incremental", third, time.perf_counter() - started)

        leads_held = len(sandbox.state()["salesforce"]["Lead"])
        _line(f"Salesforce sandbox now holds {leads_held} leads, one per qualified person.")

        from flows.tickets import TicketsRun, tickets

        started = time.perf_counter()
        inbox = tickets(TicketsRun(config=str(config)))
        routes = ", ".join(f"{n} {r}" for r, n in inbox["by_route"].items())
        _line(
            f"Run 4, DMs to tickets ({time.perf_counter() - started:.1f}s): "
            f"{inbox['fetched']} direct messages ({routes}) -> "
            f"{inbox['tickets_created']} Zendesk tickets, {inbox['comments_added']} follow-up "
            f"comments; {inbox['leads_created']} leads created and {inbox['leads_updated']} "
            "updated from sales questions"
        )
        for ticket in sandbox.state()["zendesk"]["tickets"][:4]:
            _line(
                f"      #{ticket['id']} {ticket['subject'][:60]:<60} "
                f"{len(ticket['comments'])} comment(s)"
            )
        _line(
            "Try it yourself: `.venv/bin/socialcrm sandbox --write-config my.yaml` in one "
            "terminal, `.venv/bin/socialcrm run leads --config my.yaml` in another."
        )
        ok = second["created"] == 0 and second["api_calls"]["salesforce"]["writes"] == 0
        return 0 if ok and first["created"] > 0 else 1
    finally:
        sandbox.stop()


if __name__ == "__main__":
    sys.exit(main())
