"""Run artifacts: what ops read in the Prefect UI after a run.

Only counts, record keys, names, handles and links go here: never a secret, never a
raw payload.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext

from socialcrm.records import RecordProblem

MAX_ROWS = 500


SHOWN_AS_DELIVERED = ("created", "updated", "matched lead", "matched contact", "logged on lead")


def _in_flow_run() -> bool:
    return FlowRunContext.get() is not None


def _cell(value: Any, limit: int = 200) -> Any:
    if isinstance(value, str):
        text = " ".join(value.split())
        if text[:1] in ("=", "+", "-", "@"):
            text = "'" + text  # a spreadsheet must never run what a stranger wrote
        return text if len(text) <= limit else text[: limit - 1] + "…"
    return value


def publish_leads_artifacts(
    account: str,
    summary: dict[str, Any],
    delivered: Sequence[dict[str, Any]],
    problems: Sequence[RecordProblem],
    would_write: Sequence[dict[str, Any]],
    warnings: Sequence[RecordProblem] = (),
) -> None:
    if not _in_flow_run():
        return
    key = f"leads-{account}".lower().replace("_", "-")
    calls = summary["api_calls"]
    lines = [
        f"# Leads run for `{account}`: {summary['status']}",
        "",
        "| | count |",
        "|---|---|",
        *(
            f"| {label} | {summary[name]} |"
            for label, name in [
                ("engagements fetched", "fetched"),
                ("new engagements", "new_engagements"),
                ("engaged users", "engaged_users"),
                ("qualified (to deliver)", "qualified"),
                ("leads created", "created"),
                ("leads updated", "updated"),
                ("existing leads matched (ours added)", "matched_lead"),
                ("customers (Task on their Contact, no lead)", "matched_contact"),
                ("someone else's lead, same address (Task on it)", "logged_on_lead"),
                ("unchanged (not sent)", "unchanged"),
                ("skipped (exclusions, bots, opt-outs, decayed score)", "skipped"),
                ("failed", "failed"),
                ("dead-lettered", "dead_lettered"),
                ("source warnings", "source_warnings"),
                ("values changed by the mapping (records delivered)", "mapping_warnings"),
            ]
        ),
        "",
        f"API calls: X {calls['x']['reads']} reads; Salesforce {calls['salesforce']['reads']} "
        f"reads, {calls['salesforce']['writes']} writes"
        + (
            f" (org usage {summary['salesforce_api_usage']})"
            if summary.get("salesforce_api_usage")
            else ""
        ),
    ]
    for gap in summary.get("gaps") or []:
        lines += ["", f"**Warning**: {gap}"]
    if summary["dry_run"]:
        lines += [
            "",
            f"**Dry run**: would create {summary['would_create']} and update "
            f"{summary['would_update']} leads; nothing was written.",
        ]
    create_markdown_artifact(
        key=f"{key}-summary", markdown="\n".join(lines), description="Counts of the leads run"
    )
    rows = [
        {k: _cell(row.get(k)) for k in ("status", "name", "handle", "score", "url", "record_key")}
        for row in delivered
        if row["status"] in SHOWN_AS_DELIVERED
    ]
    if rows:
        create_table_artifact(
            key=f"{key}-leads",
            table=rows[:MAX_ROWS],
            description=f"Leads created or updated, existing records matched ({len(rows)} in all)",
        )
    # Who opted out or was erased is not listed by name: a kept list of the very people
    # who asked to be left alone (the store holds only keyed hashes of them).
    skipped = [
        {
            "handle": None if consent_skip else _cell(row.get("handle")),
            "name": None if consent_skip else _cell(row.get("name")),
            "reason": _cell(row["status"].removeprefix("skipped: "), 300),
            "record_key": None if consent_skip else _cell(row.get("record_key")),
        }
        for row in delivered
        if row["status"].startswith("skipped")
        for consent_skip in [row["status"].startswith("skipped: consent")]
    ]
    if skipped:
        create_table_artifact(
            key=f"{key}-skipped",
            table=skipped[:MAX_ROWS],
            description=f"People skipped and why ({len(skipped)} in all); no CRM write",
        )
    new_leads = sales_view(delivered)
    if new_leads:
        create_table_artifact(
            key=f"{key}-new-leads",
            table=[{k: _cell(v) for k, v in row.items()} for row in new_leads[:MAX_ROWS]],
            description=f"New leads to review, best first ({len(new_leads)} in all)",
        )
    if would_write:
        preview = [
            {k: _cell(v) for k, v in row.items() if k != "Description"}
            for row in would_write[:MAX_ROWS]
        ]
        create_table_artifact(
            key=f"{key}-preview",
            table=preview,
            description=f"Would-be leads ({len(would_write)} in all)",
        )
    _publish_errors(key, problems, "Records not delivered")
    if warnings:
        create_table_artifact(
            key=f"{key}-warnings",
            table=[
                {
                    "record_key": _cell(w.record_key),
                    "stage": w.stage,
                    "field": w.field,
                    "reason": _cell(w.reason, 300),
                }
                for w in warnings[:MAX_ROWS]
            ],
            description=f"Values dropped or changed; the records went on ({len(warnings)} in all)",
        )


SALES_COLUMNS = ("score", "name", "company", "handle", "top_engagement", "url")


def sales_view(delivered: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leads this run created, best first: what sales opens the run for."""
    created = [row for row in delivered if row.get("status") == "created"]
    created.sort(key=lambda row: (-(row.get("score") or 0), str(row.get("name") or "")))
    return [{column: row.get(column) for column in SALES_COLUMNS} for row in created]


def write_sales_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> int:
    """The sales view as CSV for a spreadsheet; nothing a stranger wrote can run as a formula."""
    with open(path, "w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(SALES_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(row.get(k)) for k in SALES_COLUMNS})
    return len(rows)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def publish_tickets_artifacts(
    account: str,
    summary: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    problems: Sequence[RecordProblem],
) -> None:
    if not _in_flow_run():
        return
    key = f"tickets-{account}".lower().replace("_", "-")
    routes = ", ".join(f"{n} {r}" for r, n in summary["by_route"].items()) or "none"
    calls = summary["api_calls"]
    lines = [
        f"# Tickets run for `{account}`: {summary['status']}",
        "",
        f"Messages fetched: {summary['fetched']} ({summary['new_messages']} new: {routes})",
        "",
        "| | count |",
        "|---|---|",
        f"| tickets created | {summary['tickets_created']} |",
        f"| tickets updated | {summary['tickets_updated']} |",
        f"| comments added | {summary['comments_added']} |",
        f"| tickets reopened | {summary['reopened']} |",
        f"| messages failed | {summary['failed']} |",
        f"| leads created / updated / failed from sales DMs | {summary['leads_created']} / "
        f"{summary['leads_updated']} / {summary.get('leads_failed', 0)} |",
        "",
        f"API calls: X {calls['x']['reads']} reads; Zendesk {calls['zendesk']['reads']} reads, "
        f"{calls['zendesk']['writes']} writes; Salesforce {calls['salesforce']['writes']} writes",
    ]
    for gap in summary.get("gaps") or []:
        lines += ["", f"**Warning**: {gap}"]
    if summary["dry_run"]:
        lines += [
            "",
            f"**Dry run**: would create {summary['would_create']} tickets; nothing was written.",
        ]
    create_markdown_artifact(
        key=f"{key}-summary", markdown="\n".join(lines), description="Counts of the tickets run"
    )
    if rows:
        table = [{k: _cell(v) for k, v in row.items()} for row in rows[:MAX_ROWS]]
        create_table_artifact(
            key=f"{key}-tickets",
            table=table,
            description=f"Tickets created or updated ({len(rows)} in all)",
        )
    _publish_errors(key, problems, "Messages, and leads of sales DMs, not delivered")


def _publish_errors(key: str, problems: Sequence[RecordProblem], title: str) -> None:
    if not problems:
        return
    errors = [
        {
            "record_key": _cell(p.record_key),
            "stage": p.stage,
            "system": p.system,
            "field": p.field,
            "reason": _cell(p.reason, 300),
        }
        for p in problems[:MAX_ROWS]
    ]
    create_table_artifact(
        key=f"{key}-errors",
        table=errors,
        description=f"{title} ({len(problems)} in all); see `socialcrm dead-letters list`",
    )


def publish_review_artifact(
    account: str,
    headline: str,
    preview: Sequence[dict[str, Any]],
    rejected: Sequence[RecordProblem],
) -> None:
    """What a reviewer approves: every lead the run would write, and what it would not."""
    if not _in_flow_run():
        return
    key = f"leads-{account}".lower().replace("_", "-")
    lines = [
        f"# Review: the leads run for `{account}` {headline}",
        "",
        "Nothing has been written yet. Approve or reject on this run's page "
        "(**Resume** opens the form); approval writes exactly the records below "
        "(the table leaves out the long description).",
    ]
    if len(preview) > MAX_ROWS:
        lines += [
            "",
            f"**The table shows the first {MAX_ROWS} of {len(preview)} records; approval "
            f"writes all {len(preview)}.** To see every one, run again with a lower limit.",
        ]
    if rejected:
        lines += ["", "## Rejected, and why", "", "| record | field | reason |", "|---|---|---|"]
        lines += [
            f"| {_md(p.record_key)} | {_md(p.field or '')} | {_md(p.reason)} |"
            for p in rejected[:MAX_ROWS]
        ]
    create_markdown_artifact(
        key=f"{key}-review", markdown="\n".join(lines), description=f"Review: {headline}"
    )
    if preview:
        create_table_artifact(
            key=f"{key}-review-records",
            table=[
                {k: _cell(v) for k, v in row.items() if k != "Description"}
                for row in preview[:MAX_ROWS]
            ],
            description=f"Leads to approve ({len(preview)} in all)",
        )


def _md(value: str) -> str:
    """A table cell that stays one cell whatever a stranger wrote."""
    text = str(_cell(value, 300))
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
