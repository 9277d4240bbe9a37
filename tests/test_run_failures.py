"""A failed run says what to fix: the mapping, the credentials."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from connectors.http import ApiError
from flows.leads import LeadsRun, leads
from sandbox.server import Sandbox, start_sandbox
from socialcrm.config import ConfigError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
SHIPPED = Path(__file__).resolve().parents[1] / "mappings" / "lead.salesforce.yaml"


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = start_sandbox(seed=3, write_config=tmp_path / "socialcrm.yaml", workdir=tmp_path)
    yield box
    box.stop()


def test_a_mapping_field_the_org_lacks_stops_the_run_naming_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    spec = yaml.safe_load(SHIPPED.read_text())
    spec["fields"]["Twitter_Bio__c"] = {"source": "bio"}
    (tmp_path / "lead.salesforce.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as failure:
        leads(LeadsRun(config=str(sandbox.config_path)))
    message = str(failure.value)
    assert "Twitter_Bio__c" in message and "Lead has no such field" in message
    assert "deploy/salesforce" in message and "socialcrm mapping check" in message
    assert sandbox.state()["salesforce"]["Lead"] == []


def test_bad_crm_credentials_stop_the_run_naming_the_setting(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sandbox.config_path is not None
    data = yaml.safe_load(sandbox.config_path.read_text())
    data["crm"]["auth"]["client_secret"] = "${SCRM_WRONG_SECRET}"
    sandbox.config_path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("SCRM_WRONG_SECRET", "not-the-secret")
    with pytest.raises(ApiError) as failure:
        leads(LeadsRun(config=str(sandbox.config_path)))
    message = str(failure.value)
    assert "check crm.login_url and crm.auth" in message
    assert "not-the-secret" not in message
