"""`socialcrm prefect blocks`: secrets move into Prefect Secret blocks, never printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.blocks.system import Secret

from socialcrm import cli
from socialcrm.config import load_settings, resolve_secret

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

CONFIG = """\
# keep this comment
accounts:
  - name: brand
    user_id: "1"
    handle: brand
    bearer_token: ${SCRM_TEST_BEARER}   # app-only token
crm:
  login_url: https://example.my.salesforce.com
  auth:
    method: client_credentials
    client_id: ${SCRM_TEST_CLIENT_ID}
    client_secret: ${SCRM_TEST_CLIENT_SECRET:-fallback-value-1}
"""


def test_blocks_are_created_from_the_environment_and_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "socialcrm.yaml"
    config.write_text(CONFIG)
    monkeypatch.setenv("SCRM_TEST_BEARER", "bearer-value-7f3a")
    monkeypatch.setenv("SCRM_TEST_CLIENT_ID", "client-id-value-91c2")
    monkeypatch.delenv("SCRM_TEST_CLIENT_SECRET", raising=False)
    rewritten = tmp_path / "socialcrm.blocks.yaml"

    code = cli.main(
        ["prefect", "blocks", "--config", str(config), "--write-config", str(rewritten), "--local"]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    for secret in ("bearer-value-7f3a", "client-id-value-91c2", "fallback-value-1"):
        assert secret not in out.out + out.err
    assert "created  socialcrm-scrm-test-bearer from $SCRM_TEST_BEARER" in out.out
    assert Secret.load("socialcrm-scrm-test-bearer").get() == "bearer-value-7f3a"
    assert Secret.load("socialcrm-scrm-test-client-secret").get() == "fallback-value-1"
    assert (
        "created  socialcrm-scrm-test-client-secret from the config's fallback value: "
        "$SCRM_TEST_CLIENT_SECRET is not set" in out.out
    )

    text = rewritten.read_text()
    assert "# keep this comment" in text and "${" not in text
    settings = load_settings(rewritten)
    monkeypatch.delenv("SCRM_TEST_BEARER")
    token = resolve_secret(settings.accounts[0].bearer_token, what="bearer")
    assert token.get_secret_value() == "bearer-value-7f3a"

    # Again without --overwrite: existing blocks are kept, not replaced.
    monkeypatch.setenv("SCRM_TEST_BEARER", "a-newer-value")
    assert cli.main(["prefect", "blocks", "--config", str(config), "--local"]) == 0
    assert "kept     socialcrm-scrm-test-bearer" in capsys.readouterr().out
    assert Secret.load("socialcrm-scrm-test-bearer").get() == "bearer-value-7f3a"


def test_a_missing_variable_is_named_and_fails_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "socialcrm.yaml"
    config.write_text(CONFIG.replace("SCRM_TEST_", "SCRM_UNSET_"))
    for name in ("SCRM_UNSET_BEARER", "SCRM_UNSET_CLIENT_ID", "SCRM_UNSET_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["prefect", "blocks", "--config", str(config), "--local"]) == 2
    err = capsys.readouterr().err
    assert "SCRM_UNSET_BEARER" in err and "SCRM_UNSET_CLIENT_ID" in err


def test_without_a_server_url_it_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "socialcrm.yaml"
    config.write_text(CONFIG)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert cli.main(["prefect", "blocks", "--config", str(config)]) == 2
    assert "PREFECT_API_URL" in capsys.readouterr().err
