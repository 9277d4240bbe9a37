"""SOQL stays data, exports neutralise formulas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.crm import salesforce
from flows.reporting import _cell
from sandbox.server import Sandbox, start_sandbox
from socialcrm.config import SalesforceSettings

INJECTIONS = [
    "' OR Name != '",
    "x' OR Id != null OR Email = 'y",
    "\\' OR LastName != \\'",
    "%' OR Email LIKE '%",
]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = start_sandbox(workdir=tmp_path_factory.mktemp("soql"))
    yield box
    box.stop()


def test_injection_text_in_a_soql_value_matches_nothing(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_ID", "sandbox-client-id")
    monkeypatch.setenv("T_SECRET", "sandbox-client-secret")
    settings = SalesforceSettings.model_validate(
        {
            "login_url": sandbox.urls["salesforce"],
            "ca_bundle": Path(sandbox.ca_path),
            "auth": {
                "method": "client_credentials",
                "client_id": "${T_ID}",
                "client_secret": "${T_SECRET}",
            },
        }
    )
    conn = salesforce.connect(settings)
    records = [
        {
            "Social_Profile_Id__c": f"x:{i}",
            "LastName": f"L{i}",
            "Company": "C",
            "Social_Handle__c": f"h{i}",
        }
        for i in range(3)
    ]
    salesforce.upsert(
        conn, "Lead", "Social_Profile_Id__c", records, [r["Social_Profile_Id__c"] for r in records]
    )
    everything = conn.sf.query("SELECT Id FROM Lead")["totalSize"]
    assert everything == 3
    for text in INJECTIONS:
        soql = f"SELECT Id FROM Lead WHERE Social_Handle__c = {salesforce.soql_quote(text)}"
        assert conn.sf.query(soql)["totalSize"] == 0, text
    assert (
        conn.sf.query(
            f"SELECT Id FROM Lead WHERE Social_Handle__c = {salesforce.soql_quote('h1')}"
        )["totalSize"]
        == 1
    )


@pytest.mark.parametrize(
    "formula", ['=HYPERLINK("http://evil")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)"]
)
def test_exported_cells_never_start_a_formula(formula: str) -> None:
    assert _cell(formula).startswith("'")
    assert _cell("plain text") == "plain text"
