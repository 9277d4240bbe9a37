"""No secret leaves the process: not in logs, output, artifacts, the state store or errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client

from connectors.http import ApiError
from flows.leads import LeadsRun, leads
from flows.tickets import TicketsRun, tickets
from sandbox.server import Sandbox, start_sandbox

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
SECRETS = [
    "sandbox-x-bearer",
    "sandbox-x-user-token",
    "sandbox-client-secret",
    "sandbox-zendesk-token",
]


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = start_sandbox(seed=3, write_config=tmp_path / "socialcrm.yaml", workdir=tmp_path)
    yield box
    box.stop()


def test_secrets_appear_in_no_output_of_a_run(
    sandbox: Sandbox,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    config = str(sandbox.config_path)
    leads(LeadsRun(config=config))
    tickets(TicketsRun(config=config))
    # Access tokens the sandbox issued are secrets too (read from its insides, test-only).
    issued = sorted(sandbox._world.salesforce.tokens)
    assert issued

    # A failing run: its error must not carry the secret it failed with.
    text = sandbox.config_path.read_text() if sandbox.config_path else ""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        text.replace(
            "${ZENDESK_API_TOKEN:-sandbox-zendesk-token}",
            "${ZENDESK_API_TOKEN:-wrong-zendesk-token-42}",
        ).replace("state.db", "fresh-state.db")  # so there is something to deliver
    )
    with pytest.raises(ApiError) as failure:
        tickets(TicketsRun(config=str(bad)))

    outputs = {
        "logs": caplog.text,
        "stdio": "".join(capsys.readouterr()),
        "error": str(failure.value) + repr(failure.value),
    }
    with get_client(sync_client=True) as client:
        outputs["artifacts"] = "\n".join(
            f"{a.key} {a.description} {a.data}" for a in client.read_artifacts()
        )
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with engine.connect() as connection:
        dump = []
        for table in sa.inspect(engine).get_table_names():
            dump += [
                repr(tuple(row)) for row in connection.execute(sa.text(f"select * from {table}"))
            ]
    engine.dispose()
    outputs["state store"] = "\n".join(dump)

    assert outputs["artifacts"] and outputs["logs"] and outputs["state store"]
    for where, text in outputs.items():
        for secret in [*SECRETS, "wrong-zendesk-token-42", *issued]:
            assert secret not in text, f"{secret!r} leaked into {where}"
