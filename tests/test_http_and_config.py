"""The shared HTTP layer's policy and the config loader's error messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from connectors.crm.salesforce import classify, parse_collection_results, soql_quote
from connectors.http import (
    Action,
    ApiError,
    RetryPolicy,
    call_with_retry,
    redact,
    register_secret,
    retry_after_seconds,
)
from socialcrm.config import ConfigError, load_settings, resolve_secret

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "api-samples"

GOOD = """
accounts:
  - name: brand
    user_id: "1000"
    handle: brand
    bearer_token: ${X_TOKEN}
crm:
  login_url: https://acme.my.salesforce.com
  auth: {method: client_credentials, client_id: "${SF_ID}", client_secret: "${SF_SECRET}"}
"""


def test_retry_after_reads_every_header_style() -> None:
    assert retry_after_seconds({"Retry-After": "7"}) == 7
    assert retry_after_seconds({"x-rate-limit-reset": "1100"}, now=1000) == 101
    assert retry_after_seconds({"ratelimit-reset": "12"}) == 12
    assert retry_after_seconds({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=0) > 0
    assert retry_after_seconds({}) is None


def test_validation_errors_are_never_retried() -> None:
    calls = []

    def failing() -> None:
        calls.append(1)
        raise ValueError("bad")

    with pytest.raises(ApiError):
        call_with_retry(
            failing,
            system="s",
            call="c",
            classify=lambda e: ApiError("s", "c", str(e), status=400),
            policy=RetryPolicy(sleep=lambda _: None),
        )
    assert calls == [1]


def test_transient_errors_are_retried_with_a_cap_and_name_the_records() -> None:
    calls = []

    def failing() -> None:
        calls.append(1)
        raise requests.ConnectionError("reset by peer")

    with pytest.raises(ApiError) as error:
        call_with_retry(
            failing,
            system="salesforce",
            call="PATCH x",
            classify=lambda e: ApiError("salesforce", "PATCH x", str(e), action=Action.RETRY),
            policy=RetryPolicy(max_attempts=3, sleep=lambda _: None),
            record_keys=["x:1"],
        )
    assert len(calls) == 3
    assert "x:1" in str(error.value) and "salesforce" in str(error.value)


def expiring(times: float, policy: RetryPolicy) -> tuple[str | ApiError, int]:
    """A call whose session is refused ``times`` times in a row: its result, and how many
    times the session was renewed."""
    refusals, renewals = [0], [0]

    def call() -> str:
        if refusals[0] < times:
            refusals[0] += 1
            raise RuntimeError("expired")
        return "ok"

    try:
        result: str | ApiError = call_with_retry(
            call,
            system="s",
            call="c",
            classify=lambda e: ApiError("s", "c", "expired", 401, Action.REAUTH),
            policy=policy,
            reauthenticate=lambda: renewals.__setitem__(0, renewals[0] + 1),
        )
    except ApiError as error:
        result = error
    return result, renewals[0]


def test_an_expired_session_is_renewed_and_the_call_retried() -> None:
    assert expiring(1, RetryPolicy(sleep=lambda _: None)) == ("ok", 1)


def test_a_session_refused_after_every_renewal_stops_after_a_few() -> None:
    """Calls side by side share a session: a call may meet one another call renewed, then
    its own expiring, so it may renew more than once; never without end."""
    assert expiring(2, RetryPolicy(sleep=lambda _: None)) == ("ok", 2)
    policy = RetryPolicy(sleep=lambda _: None, max_reauthentications=3)
    error, renewals = expiring(float("inf"), policy)
    assert isinstance(error, ApiError) and error.status == 401 and renewals == 3


def test_secrets_are_redacted_from_messages() -> None:
    register_secret("s3cr3t-value-123")
    text = redact("failed with s3cr3t-value-123 and Bearer abc.def and client_secret=zzz")
    assert "s3cr3t" not in text and "abc.def" not in text and "zzz" not in text


@pytest.mark.skipif(not SAMPLES.exists(), reason="shared samples not present")
def test_collection_results_map_back_to_records_in_order() -> None:
    sample = json.loads((SAMPLES / "sf_collections_partial_error.json").read_text())
    outcomes = parse_collection_results(sample["body"], ["x:1", "x:2"], "Lead")
    assert [o.status for o in outcomes] == ["updated", "failed"]
    assert outcomes[0].destination_id == "00Q5e00000AbCdEEAV"
    problem = outcomes[1].problems[0]
    assert problem.field == "LastName" and "REQUIRED_FIELD_MISSING" in problem.reason
    upserted = json.loads((SAMPLES / "sf_collections_upsert_results.json").read_text())["body"]
    assert [o.status for o in parse_collection_results(upserted, ["a", "b"], "Lead")] == [
        "created",
        "updated",
    ]


def test_a_short_collection_answer_is_an_error_not_a_silent_loss() -> None:
    with pytest.raises(ApiError):
        parse_collection_results([{"success": True, "id": "1"}], ["a", "b"], "Lead")


def test_salesforce_failure_table() -> None:
    from simple_salesforce.exceptions import (
        SalesforceExpiredSession,
        SalesforceGeneralError,
        SalesforceRefusedRequest,
    )

    expired = SalesforceExpiredSession(
        "u", 401, "Lead", [{"errorCode": "INVALID_SESSION_ID", "message": "x"}]
    )
    quota = SalesforceRefusedRequest(
        "u", 403, "Lead", [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "x"}]
    )
    down = SalesforceGeneralError(
        "u", 503, "Lead", [{"errorCode": "SERVER_UNAVAILABLE", "message": "x"}]
    )
    assert classify("c", expired).action is Action.REAUTH  # type: ignore[union-attr]
    assert classify("c", quota).action is Action.QUOTA  # type: ignore[union-attr]
    busy = SalesforceRefusedRequest(
        "u",
        403,
        "Lead",
        [
            {
                "errorCode": "REQUEST_LIMIT_EXCEEDED",
                "message": "ConcurrentPerOrgLongTxn Limit exceeded.",
            }
        ],
    )
    assert classify("c", busy).action is Action.RETRY  # type: ignore[union-attr]
    assert classify("c", down).action is Action.RETRY  # type: ignore[union-attr]
    assert classify("c", KeyError("bug")) is None


def test_soql_quote_keeps_injection_text_inside_the_literal() -> None:
    assert soql_quote("' OR Name != '") == "'\\' OR Name != \\''"
    assert soql_quote("a\\b\n") == "'a\\\\b\\n'"


def test_config_loads_and_resolves_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "socialcrm.yaml"
    path.write_text(GOOD)
    settings = load_settings(path)
    assert settings.state_url() == f"sqlite:///{tmp_path / '.socialcrm' / 'state.db'}"
    assert settings.mapping_path(settings.crm.lead_mapping).name == "lead.salesforce.yaml"
    monkeypatch.setenv("X_TOKEN", "abc")
    assert resolve_secret(settings.accounts[0].bearer_token, what="t").get_secret_value() == "abc"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("handle: brand", "handel: brand"), "accounts.0.handel: unknown key"),
        (('user_id: "1000"', "user_id: abc"), "accounts.0.user_id"),
        (("bearer_token: ${X_TOKEN}", "bearer_token: AAAAliteral"), "a secret must be a reference"),
        (("method: client_credentials, ", "method: jwt, "), "needs username, private_key"),
        (
            ("https://acme.my.salesforce.com", "${SF_LOGIN_URL}"),
            "crm.login_url: Value error, only secrets take ${ENV_VAR} references",
        ),
        (
            ("https://acme.my.salesforce.com", "acme.my.salesforce.com"),
            "crm.login_url: Value error, expected a web address",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    message = _config_error(tmp_path, GOOD.replace(*change))
    assert expected in message and "AAAAliteral" not in message


def _config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    return str(error.value)


def test_missing_secret_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match="NOPE_NOT_SET"):
        resolve_secret("${NOPE_NOT_SET}", what="crm.auth.client_secret")
    monkeypatch.setenv("X_DM_TOKEN", "")  # an uncommented `X_DM_TOKEN=` line in .env
    with pytest.raises(ConfigError, match=r"dm_token: .*X_DM_TOKEN is not set or empty"):
        resolve_secret("${X_DM_TOKEN}", what="accounts.0.dm_token")
    assert resolve_secret("${X_DM_TOKEN:-sandbox}", what="t").get_secret_value() == "sandbox"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # A secret written as a number or a mapping: the error names the key, not the value.
        (('client_secret: "${SF_SECRET}"', "client_secret: 8362947561029384756"), "client_secret"),
        (("bearer_token: ${X_TOKEN}", "bearer_token: {k: 8362947561029384756}"), "bearer_token"),
        # A YAML error shows where, never the line (it may be the secret itself).
        (("bearer_token: ${X_TOKEN}", "bearer_token: 8362947561029384756: x"), "line 6, column"),
    ],
)
def test_config_errors_never_echo_a_secret(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    message = _config_error(tmp_path, GOOD.replace(*change))
    assert expected in message and "8362947561029384756" not in message


def test_a_config_path_that_is_no_readable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_settings(tmp_path)
    message = _config_error(tmp_path, GOOD + "".join(f"unknown_{i}: 1\n" for i in range(200)))
    assert len(message.splitlines()) < 30 and "... and 180 more" in message


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ApiError("x", "GET mentions", "spent", 429, Action.QUOTA), False),
        (ApiError("x", "GET mentions", "bad token", 401, Action.REAUTH), False),
        (ApiError("x", "GET mentions", "no such user", 400, Action.FAIL), False),
        (ApiError("x", "GET mentions", "still down", 503, Action.RETRY), True),
        (RuntimeError("database is locked"), True),
    ],
)
def test_the_pull_task_is_retried_only_for_what_may_pass_next_time(
    error: Exception, retried: bool
) -> None:
    from prefect.states import Failed

    from flows.leads import worth_retrying

    assert worth_retrying(None, None, Failed(data=error)) is retried


def test_a_bad_run_option_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from socialcrm import cli

    code = cli.main(["run", "leads", "--config", "socialcrm.example.yaml", "--limit", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "socialcrm: --limit: Input should be greater than or equal to 1"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"crm": {"lead_mapping": "typo.yaml"}}, "field Description: column 'biography'"),
        ({"accounts": "second"}, "accounts: no account named 'second'"),
    ],
)
def test_a_run_whose_config_or_mapping_is_wrong_fails_in_one_line_before_prefect(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, Any],
    expected: str,
) -> None:
    """Checked before the flow starts: no temporary Prefect server, no traceback (checked:
    before, a typo came after about 4 s and 40 lines of Prefect's traceback)."""
    import flows.leads
    from socialcrm import cli

    spec = yaml.safe_load(Path("mappings/lead.salesforce.yaml").read_text())
    spec["fields"]["Description"] = {"source": "biography"}
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    config = yaml.safe_load(Path("socialcrm.example.yaml").read_text())
    account = change.pop("accounts", None)
    for section, values in change.items():
        config[section].update(values)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def never(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the flow started")

    monkeypatch.setattr(flows.leads, "leads", never)
    argv = ["run", "leads", "--config", str(tmp_path / "c.yaml")]
    code = cli.main([*argv, "--account", account] if account else argv)
    err = capsys.readouterr().err
    assert code == 2 and expected in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_a_dm_refresh_token_needs_the_apps_client_id(tmp_path: Path) -> None:
    text = GOOD.replace(
        "bearer_token: ${X_TOKEN}", "bearer_token: ${X_TOKEN}\n    dm_refresh_token: ${X_R}"
    )
    assert "dm_refresh_token needs dm_client_id" in _config_error(tmp_path, text)
    path = tmp_path / "good.yaml"
    path.write_text(text.replace("${X_R}", "${X_R}\n    dm_client_id: abc"))
    assert load_settings(path).accounts[0].dm_client_id == "abc"
