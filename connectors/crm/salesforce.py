"""Salesforce sink, through simple-salesforce: auth, describe, upsert by external id.

simple-salesforce cannot log in anywhere but ``*.salesforce.com`` and has no timeout nor
retry, so we obtain the token ourselves, hand it a session from the shared HTTP layer,
and run every call under the shared retry policy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jwt
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError

from connectors.http import (
    Action,
    ApiError,
    RetryPolicy,
    build_session,
    call_with_retry,
    register_secret,
    transport_error,
)
from socialcrm.config import SalesforceSettings, resolve_secret
from socialcrm.records import DestinationField, RecordProblem, SinkOutcome

log = logging.getLogger("socialcrm.salesforce")

SYSTEM = "salesforce"
COLLECTION_LIMIT = 200
RECORD_ATTEMPTS = 3
# Errors inside a 200 collection answer that a later attempt may fix on its own.
TRANSIENT_RECORD_ERRORS = {"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "UNKNOWN_EXCEPTION"}
T = TypeVar("T")


@dataclass
class SalesforceConnection:
    settings: SalesforceSettings
    session: requests.Session
    sf: Salesforce
    instance_url: str
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    reads: int = 0
    writes: int = 0
    _describe: dict[str, dict[str, DestinationField]] = field(default_factory=dict)

    def reauthenticate(self) -> None:
        token, instance_url = obtain_token(self.settings, self.session)
        self.sf = _client(self.settings, self.session, token, instance_url)
        self.instance_url = instance_url

    def call(
        self, call: str, fn: Callable[[Salesforce], T], *, write: bool, keys: Sequence[str] = ()
    ) -> T:
        def once() -> T:
            if write:
                self._check_quota(call, keys)
                self.writes += 1
            else:
                self.reads += 1
            return fn(self.sf)

        result = call_with_retry(
            once,
            system=SYSTEM,
            call=call,
            classify=lambda exc: classify(call, exc),
            policy=self.policy,
            reauthenticate=self.reauthenticate,
            record_keys=keys,
        )
        usage = self.sf.api_usage.get("api-usage")
        if usage is not None:
            log.info("salesforce %s: org API usage %s/%s today", call, usage.used, usage.total)
        return result

    def _check_quota(self, call: str, keys: Sequence[str]) -> None:
        """Leave the org's daily allowance to the people who work in it."""
        usage = self.api_usage()
        if usage is None or usage[1] <= 0:
            return
        used, total = usage
        if used >= total * self.settings.quota_headroom:
            raise ApiError(
                SYSTEM,
                call,
                f"quota: org API usage {used}/{total} is at or above the configured headroom "
                f"({self.settings.quota_headroom:.0%}); writing resumes on the next run",
                action=Action.QUOTA,
                record_keys=list(keys),
            )

    def api_usage(self) -> tuple[int, int] | None:
        usage = self.sf.api_usage.get("api-usage")
        return (int(usage.used), int(usage.total)) if usage is not None else None

    def record_url(self, sobject: str, record_id: str) -> str:
        """The Lightning page of a record, for run artifacts and for sales."""
        return f"{self.instance_url.rstrip('/')}/lightning/r/{sobject}/{record_id}/view"


def obtain_token(settings: SalesforceSettings, session: requests.Session) -> tuple[str, str]:
    """OAuth2 token for the configured method; returns (access token, instance URL)."""
    auth = settings.auth
    if auth.method == "session":
        assert auth.access_token is not None and settings.instance_url is not None
        token = resolve_secret(auth.access_token, what="crm.auth.access_token").get_secret_value()
        register_secret(token)
        return token, settings.instance_url
    assert auth.client_id is not None
    client_id = resolve_secret(auth.client_id, what="crm.auth.client_id").get_secret_value()
    if auth.method == "client_credentials":
        assert auth.client_secret is not None
        secret = resolve_secret(auth.client_secret, what="crm.auth.client_secret")
        register_secret(secret.get_secret_value())
        form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret.get_secret_value(),
        }
    else:
        assert auth.private_key is not None and auth.username is not None
        key = resolve_secret(auth.private_key, what="crm.auth.private_key").get_secret_value()
        claims = {
            "iss": client_id,
            "sub": auth.username,
            "aud": auth.jwt_audience,
            "exp": int(time.time()) + 180,
        }
        form = {
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": jwt.encode(claims, key, algorithm="RS256"),
        }
    url = settings.login_url.rstrip("/") + "/services/oauth2/token"
    call = "POST /services/oauth2/token"

    def once() -> requests.Response:
        return session.post(url, data=form)

    def classify_token(exc: BaseException) -> ApiError | None:
        if isinstance(exc, requests.RequestException):
            return transport_error(SYSTEM, call, exc)
        return None

    response = call_with_retry(once, system=SYSTEM, call=call, classify=classify_token)
    if response.status_code >= 500:
        raise ApiError(SYSTEM, call, response.text[:200], status=response.status_code)
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or "access_token" not in body:
        reason = body.get("error_description") or body.get("error") or response.text[:200]
        raise ApiError(
            SYSTEM,
            call,
            f"login refused ({reason}): check crm.login_url and crm.auth",
            status=response.status_code,
        )
    token = str(body["access_token"])
    register_secret(token)
    return token, str(body["instance_url"])


def _client(
    settings: SalesforceSettings, session: requests.Session, token: str, instance_url: str
) -> Salesforce:
    return Salesforce(
        instance_url=instance_url,
        session_id=token,
        session=session,
        version=settings.api_version,
    )


def connect(
    settings: SalesforceSettings, *, policy: RetryPolicy | None = None
) -> SalesforceConnection:
    session = build_session(ca_bundle=settings.ca_bundle, timeout=settings.timeout_seconds)
    token, instance_url = obtain_token(settings, session)
    return SalesforceConnection(
        settings=settings,
        session=session,
        sf=_client(settings, session, token, instance_url),
        instance_url=instance_url,
        policy=policy or RetryPolicy(),
    )


def classify(call: str, exc: BaseException) -> ApiError | None:
    """Salesforce's failure table: what to retry, what to re-auth, where to stop."""
    if isinstance(exc, requests.RequestException):
        return transport_error(SYSTEM, call, exc)
    if not isinstance(exc, SalesforceError):
        return None
    errors: list[Any] = exc.content if isinstance(exc.content, list) else []
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    code = str(first.get("errorCode") or "")
    message = str(first.get("message") or exc.content)[:500]
    status = int(exc.status)
    if status == 401:
        action = Action.REAUTH
    elif code == "REQUEST_LIMIT_EXCEEDED":
        action = Action.QUOTA
    elif status >= 500 or status == 429 or code in TRANSIENT_RECORD_ERRORS:
        action = Action.RETRY
    else:
        action = Action.FAIL
    text = f"{code}: {message}" if code else message
    return ApiError(SYSTEM, call, text, status=status, action=action, error_code=code or None)


def describe(conn: SalesforceConnection, sobject: str) -> dict[str, DestinationField]:
    """Field metadata of an object, cached for the connection's life (one run)."""
    if sobject not in conn._describe:
        body = conn.call(
            f"GET /sobjects/{sobject}/describe",
            lambda sf: sf.restful(f"sobjects/{sobject}/describe"),
            write=False,
        )
        conn._describe[sobject] = {
            f["name"]: DestinationField(
                name=f["name"],
                type=f.get("type", "string"),
                label=f.get("label", f["name"]),
                length=f.get("length") or None,
                nillable=bool(f.get("nillable", True)),
                createable=bool(f.get("createable", False)),
                updateable=bool(f.get("updateable", False)),
                defaulted_on_create=bool(f.get("defaultedOnCreate", False)),
                external_id=bool(f.get("externalId", False)),
                restricted_picklist=bool(f.get("restrictedPicklist", False)),
                picklist_values=tuple(
                    p["value"] for p in f.get("picklistValues") or [] if p.get("active", True)
                ),
            )
            for f in (body or {}).get("fields", [])
        }
    return conn._describe[sobject]


def upsert(
    conn: SalesforceConnection,
    sobject: str,
    external_id_field: str,
    records: Sequence[dict[str, Any]],
    keys: Sequence[str],
) -> list[SinkOutcome]:
    """Upsert by external id through sObject Collections, 200 records a call.

    The upsert is idempotent (same external id, same record), so a retried call after a
    timeout cannot create a duplicate. Results come back in request order. Records that
    failed for a passing reason (a row lock) are sent again, alone, a few times.
    """
    by_key: dict[str, SinkOutcome] = {}
    pending = list(zip(keys, records, strict=True))
    for attempt in range(RECORD_ATTEMPTS):
        if attempt:
            conn.policy.sleep(min(2.0**attempt, 10.0))  # row locks clear in moments
        for outcome in _upsert_once(conn, sobject, external_id_field, pending):
            by_key[outcome.record_key] = outcome
        pending = [(k, r) for k, r in pending if by_key[k].retryable]
        if not pending:
            break
    return [by_key[key] for key in keys]


def _upsert_once(
    conn: SalesforceConnection,
    sobject: str,
    external_id_field: str,
    items: Sequence[tuple[str, dict[str, Any]]],
) -> list[SinkOutcome]:
    keys = [key for key, _ in items]
    records = [record for _, record in items]
    outcomes: list[SinkOutcome] = []
    size = COLLECTION_LIMIT
    headers = {"Sforce-Auto-Assign": "TRUE" if conn.settings.auto_assign else "FALSE"}
    path = f"composite/sobjects/{sobject}/{external_id_field}"
    for start in range(0, len(records), size):
        chunk = records[start : start + size]
        chunk_keys = list(keys[start : start + size])
        body = {
            "allOrNone": False,
            "records": [{"attributes": {"type": sobject}, **record} for record in chunk],
        }

        def send(sf: Salesforce, body: dict[str, Any] = body) -> Any:
            return sf.restful(path, method="PATCH", json=body, headers=headers)

        results = conn.call(
            f"PATCH /composite/sobjects/{sobject}/{external_id_field}",
            send,
            write=True,
            keys=chunk_keys,
        )
        outcomes.extend(parse_collection_results(results, chunk_keys, sobject))
    return outcomes


def parse_collection_results(results: Any, keys: Sequence[str], sobject: str) -> list[SinkOutcome]:
    """One outcome per record from a collection answer (always HTTP 200, even if all failed)."""
    if not isinstance(results, list) or len(results) != len(keys):
        got = len(results) if isinstance(results, list) else type(results).__name__
        raise ApiError(
            SYSTEM,
            f"composite/sobjects/{sobject}",
            f"expected {len(keys)} results in request order, got {got}",
            record_keys=list(keys),
        )
    outcomes = []
    for key, result in zip(keys, results, strict=True):
        if isinstance(result, dict) and result.get("success"):
            status = "created" if result.get("created") else "updated"
            outcomes.append(SinkOutcome(key, status, destination_id=result.get("id")))
            continue
        errors = result.get("errors") if isinstance(result, dict) else None
        problems = [
            RecordProblem(
                record_key=key,
                stage="delivery",
                system=SYSTEM,
                field=",".join(error.get("fields") or []) or None,
                reason=f"{error.get('statusCode', 'ERROR')}: {error.get('message', '')}",
            )
            for error in errors or [{}]
            if isinstance(error, dict)
        ]
        codes = {str(e.get("statusCode")) for e in errors or [] if isinstance(e, dict)}
        retryable = bool(codes) and codes <= TRANSIENT_RECORD_ERRORS
        outcomes.append(SinkOutcome(key, "failed", problems=problems, retryable=retryable))
    return outcomes


def soql_quote(value: str) -> str:
    """A SOQL string literal: user data stays data (handles like ``' OR Name != '``)."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace("'", "\\'")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
        .replace("\b", "\\b")
        .replace("\f", "\\f")
    )
    return f"'{escaped}'"
