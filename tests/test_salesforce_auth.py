"""Salesforce auth methods against the sandbox's token endpoint, over real HTTPS."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from connectors.crm import salesforce
from connectors.http import ApiError
from sandbox.server import Sandbox, start_sandbox
from socialcrm.config import SalesforceSettings


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = start_sandbox(workdir=tmp_path_factory.mktemp("sf-auth"))
    yield box
    box.stop()


def settings(sandbox: Sandbox, **auth: object) -> SalesforceSettings:
    extra = {"instance_url": auth.pop("instance_url")} if "instance_url" in auth else {}
    return SalesforceSettings.model_validate(
        {
            "login_url": sandbox.urls["salesforce"],
            "auth": auth,
            "ca_bundle": Path(sandbox.ca_path),
            **extra,
        }
    )


def test_client_credentials(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_ID", "sandbox-client-id")
    monkeypatch.setenv("T_SECRET", "sandbox-client-secret")
    conn = salesforce.connect(
        settings(
            sandbox, method="client_credentials", client_id="${T_ID}", client_secret="${T_SECRET}"
        )
    )
    assert "LastName" in salesforce.describe(conn, "Lead")


def test_jwt_bearer(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    monkeypatch.setenv("T_ID", "sandbox-client-id")
    monkeypatch.setenv("T_KEY", pem)
    conn = salesforce.connect(
        settings(
            sandbox,
            method="jwt",
            client_id="${T_ID}",
            username="integration@acme.example",
            private_key="${T_KEY}",
        )
    )
    assert conn.instance_url == sandbox.urls["salesforce"]


def test_wrong_secret_says_what_to_check_and_hides_the_secret(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_ID", "sandbox-client-id")
    monkeypatch.setenv("T_SECRET", "not-the-right-secret-123")
    with pytest.raises(ApiError) as error:
        salesforce.connect(
            settings(
                sandbox,
                method="client_credentials",
                client_id="${T_ID}",
                client_secret="${T_SECRET}",
            )
        )
    assert "crm.auth" in str(error.value)
    assert "not-the-right-secret-123" not in str(error.value)


def test_untrusted_certificate_is_refused_with_a_clear_message(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_ID", "sandbox-client-id")
    monkeypatch.setenv("T_SECRET", "sandbox-client-secret")
    untrusted = SalesforceSettings.model_validate(
        {
            "login_url": sandbox.urls["salesforce"],
            "auth": {
                "method": "client_credentials",
                "client_id": "${T_ID}",
                "client_secret": "${T_SECRET}",
            },
        }
    )
    with pytest.raises(ApiError) as error:
        salesforce.connect(untrusted)
    assert "ca_bundle" in str(error.value)


def test_calls_refused_together_renew_the_session_once(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four calls side by side meet the expired session together: one of them logs in
    again and the others use that session (checked: each renewing made four logins,
    which count toward the org's login limits)."""
    monkeypatch.setenv("T_ID", "sandbox-client-id")
    monkeypatch.setenv("T_SECRET", "sandbox-client-secret")
    conn = salesforce.connect(
        settings(
            sandbox, method="client_credentials", client_id="${T_ID}", client_secret="${T_SECRET}"
        )
    )
    with sandbox._world.lock:
        sandbox._world.salesforce.tokens.clear()  # the session expires
    logins = sandbox.state()["calls"]["salesforce"]["POST /services/oauth2/token"]
    together = threading.Barrier(4)
    first_tries: set[int] = set()

    def limits(sf: Any) -> Any:
        if threading.get_ident() not in first_tries:  # every first try on the old session
            first_tries.add(threading.get_ident())
            together.wait(timeout=10)
        return sf.restful("limits")

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: conn.call("GET /limits", limits, write=False), range(4)))
    assert all("DailyApiRequests" in answer for answer in answers)
    assert sandbox.state()["calls"]["salesforce"]["POST /services/oauth2/token"] == logins + 1
