"""The sales view: new leads best first, with why they exist, safe to open in a spreadsheet."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from flows.reporting import sales_view, write_sales_csv


def test_new_leads_only_best_first() -> None:
    delivered = [
        {"status": "created", "score": 4.0, "name": "B", "handle": "b"},
        {"status": "updated", "score": 99.0, "name": "Old", "handle": "old"},
        {"status": "created", "score": 12.5, "name": "A", "handle": "a", "company": "Acme"},
        {"status": "failed", "score": 50.0, "name": "F", "handle": "f"},
        {"status": "created", "score": 4.0, "name": "A2", "handle": "a2"},
    ]
    rows = sales_view(delivered)
    assert [row["name"] for row in rows] == ["A", "A2", "B"]
    assert list(rows[0]) == ["score", "name", "company", "handle", "top_engagement", "url"]
    assert rows[0]["company"] == "Acme"


def test_csv_neutralises_formulas(tmp_path: Path) -> None:
    hostile = ['=HYPERLINK("http://evil","x")', "+1+1", "-2", "@SUM(A1)", "\tTAB", "plain"]
    rows = [
        {"score": 5, "name": text, "company": text, "handle": "h", "top_engagement": text}
        for text in hostile
    ]
    path = tmp_path / "leads.csv"
    assert write_sales_csv(rows, path) == len(hostile)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        read = list(csv.DictReader(handle))
    for row, text in zip(read, hostile, strict=True):
        for column in ("name", "company", "top_engagement"):
            if text == "plain":
                assert row[column] == "plain"
            else:
                assert row[column] == "'" + text
                assert row[column][0] not in "=+-@\t"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_run_lists_its_new_leads_for_sales(tmp_path: Path) -> None:
    from sandbox.server import start_sandbox
    from socialcrm import cli

    box = start_sandbox(seed=11, write_config=tmp_path / "socialcrm.yaml", workdir=tmp_path)
    try:
        out = tmp_path / "new-leads.csv"
        code = cli.main(
            [
                "run",
                "leads",
                "--config",
                str(box.config_path),
                "--limit",
                "30",
                "--sales-csv",
                str(out),
            ]
        )
        assert code == 0
        with open(out, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
        # 30 people handled; the seed's bots among them are skipped, not listed.
        assert 25 <= len(rows) == len(box.state()["salesforce"]["Lead"]) <= 30
        scores = [float(row["score"]) for row in rows]
        assert scores == sorted(scores, reverse=True)
        assert all(
            row["url"].endswith("/view") and "/lightning/r/Lead/" in row["url"] for row in rows
        )
        assert all(row["company"] and row["top_engagement"] for row in rows)
    finally:
        box.stop()


def test_the_skipped_table_never_names_who_opted_out(monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.reporting as reporting

    tables: dict[str, Any] = {}
    monkeypatch.setattr(reporting, "_in_flow_run", lambda: True)
    monkeypatch.setattr(reporting, "create_markdown_artifact", lambda **_: None)
    monkeypatch.setattr(
        reporting, "create_table_artifact", lambda key, table, **_: tables.update({key: table})
    )
    delivered = [
        {
            "record_key": "x:1",
            "status": "skipped: consent: opt-out",
            "handle": "ann",
            "name": "Ann",
        },
        {
            "record_key": "x:2",
            "status": "skipped: bot: 900 posts/day",
            "handle": "b0t",
            "name": "B",
        },
    ]
    counts = ["fetched", "new_engagements", "engaged_users", "qualified", "created", "updated"]
    counts += ["matched_lead", "matched_contact", "logged_on_lead", "unchanged", "skipped"]
    counts += ["failed", "dead_lettered", "source_warnings", "mapping_warnings"]
    summary: dict[str, Any] = {
        **dict.fromkeys(counts, 0),
        "status": "completed",
        "dry_run": False,
        "api_calls": {"x": {"reads": 1}, "salesforce": {"reads": 1, "writes": 0}},
    }
    reporting.publish_leads_artifacts("brand", summary, delivered, [], [])
    skipped = tables["leads-brand-skipped"]
    assert skipped[0] == {
        "handle": None,
        "name": None,
        "reason": "consent: opt-out",
        "record_key": None,
    }
    assert skipped[1]["handle"] == "b0t" and skipped[1]["record_key"] == "x:2"
    assert "ann" not in repr(tables) and "x:1" not in repr(tables)
