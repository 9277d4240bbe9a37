"""Salesforce sink, through simple-salesforce: auth, describe, upsert by external id.

simple-salesforce cannot log in anywhere but ``*.salesforce.com`` and has no timeout nor
retry, so we obtain the token ourselves, hand it a session from the shared HTTP layer,
and run every call under the shared retry policy.

Large batches go through a Bulk API 2.0 ingest job instead of sObject Collections. The
Bulk 2.0 calls are plain HTTP on the same session and token: simple-salesforce's bulk2
handler sleeps and polls on its own schedule (up to a day), retries nothing and raises on a
Failed job without the per-row results, so it is used for neither.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import jwt
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError
from simple_salesforce.util import exception_handler

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
# Bulk API 2.0: one upload per job, at most 150 MB once Salesforce has base64-encoded it.
BULK_UPLOAD_BYTES = 100_000_000
BULK_JOB_ATTEMPTS = 3  # fresh jobs tried when a retried upload landed twice in one job
BULK_DONE = ("JobComplete", "Failed", "Aborted")
BULK_NULL = "#N/A"  # a CSV cell that sets the field to null
# A Failed job's errorMessage starting so blames the data we sent (retrying cannot help).
BULK_INPUT_ERRORS = ("InvalidBatch", "ClientInputError", "InvalidJob")
T = TypeVar("T")


@dataclass(frozen=True)
class BulkPolling:
    """How we wait for a Bulk API 2.0 job: pauses growing from ``first`` by ``factor`` up to
    ``cap`` seconds, at most ``total`` seconds of pauses in all (then the job is aborted and
    its records go again on the next run)."""

    first: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    total: float = 900.0

    def pauses(self) -> Iterator[float]:
        waited, pause = 0.0, self.first
        while waited + pause <= self.total:
            yield pause
            waited += pause
            pause = min(pause * self.factor, self.cap)


@dataclass
class SalesforceConnection:
    settings: SalesforceSettings
    session: requests.Session
    sf: Salesforce
    instance_url: str
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    bulk_polling: BulkPolling = field(default_factory=BulkPolling)
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
    """Upsert by external id: sObject Collections, 200 records a call, or for a batch of
    ``bulk_threshold`` records or more one Bulk API 2.0 job (a handful of calls in all).

    The upsert is idempotent (same external id, same record), so a retried call after a
    timeout cannot create a duplicate. Returns one outcome per key, in order. Records that
    failed for a passing reason (a row lock) are sent again a few times, by collections
    once they are few.
    """
    by_key: dict[str, SinkOutcome] = {}
    pending = list(zip(keys, records, strict=True))
    for attempt in range(RECORD_ATTEMPTS):
        if attempt:
            conn.policy.sleep(min(2.0**attempt, 10.0))  # row locks clear in moments
        by_bulk, by_collections = bulk_share(conn, external_id_field, pending)
        outcomes: list[SinkOutcome] = []
        if by_bulk:
            outcomes.extend(_bulk_upsert_once(conn, sobject, external_id_field, by_bulk))
        if by_collections:
            outcomes.extend(_upsert_once(conn, sobject, external_id_field, by_collections))
        for outcome in outcomes:
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


# --- Bulk API 2.0 ----------------------------------------------------------------------

Item = tuple[str, dict[str, Any]]


def bulk_share(
    conn: SalesforceConnection, external_id_field: str, items: Sequence[Item]
) -> tuple[list[Item], list[Item]]:
    """Split a batch into (by Bulk API 2.0, by sObject Collections).

    Everything goes by collections below ``bulk_threshold``, and when leads are auto-assigned
    (a Bulk job runs only an assignment rule named by id, never the org's default one).
    Results of a job come back unordered and are matched on the external id, so records
    without one or sharing one (Salesforce compares them case-insensitively) go by
    collections, as do records holding a value CSV cannot say the way JSON does: an empty
    string (JSON clears the field, an empty cell leaves it) or the literal ``#N/A`` (the
    cell would clear the field).
    """
    if len(items) < conn.settings.bulk_threshold:
        return [], list(items)
    if conn.settings.auto_assign:
        log.info("salesforce: auto_assign is on, so %d records go by collections", len(items))
        return [], list(items)
    seen: dict[str, int] = {}
    for _, record in items:
        value = record.get(external_id_field)
        if value is not None:
            folded = str(value).casefold()
            seen[folded] = seen.get(folded, 0) + 1
    bulk: list[Item] = []
    rest: list[Item] = []
    for key, record in items:
        value = record.get(external_id_field)
        plain = value is not None and value != "" and seen[str(value).casefold()] == 1
        if plain and not any(v == "" or v == BULK_NULL for v in record.values()):
            bulk.append((key, record))
        else:
            rest.append((key, record))
    if len(bulk) < conn.settings.bulk_threshold:
        return [], list(items)
    return bulk, rest


def csv_cell(value: Any) -> str:
    """A value as the JSON path would send it, as CSV text; ``None`` is an empty cell, which
    leaves the field as it is (an update never wipes what a salesperson typed)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        text = repr(value)
        return format(Decimal(text), "f") if "e" in text or "E" in text else text
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


class _Lines:
    """A file for ``csv.writer`` that keeps each written row apart, to measure uploads."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.append(text)
        return len(text)


def bulk_csv_parts(
    columns: Sequence[str], items: Sequence[Item], limit: int = BULK_UPLOAD_BYTES
) -> list[tuple[bytes, list[Item]]]:
    """The upload(s): CSV, every value quoted, LF line endings, one job per ``limit`` bytes."""
    lines = _Lines()
    writer = csv.writer(lines, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(columns)
    header = lines.lines.pop().encode("utf-8")
    parts: list[tuple[bytes, list[Item]]] = []
    rows: list[bytes] = []
    chunk: list[Item] = []
    size = len(header)
    for key, record in items:
        writer.writerow([csv_cell(record.get(name)) for name in columns])
        row = lines.lines.pop().encode("utf-8")
        if chunk and size + len(row) > limit:
            parts.append((header + b"".join(rows), chunk))
            rows, chunk, size = [], [], len(header)
        rows.append(row)
        chunk.append((key, record))
        size += len(row)
    if chunk:
        parts.append((header + b"".join(rows), chunk))
    return parts


def read_bulk_csv(text: str) -> list[dict[str, str]]:
    """Rows of a results CSV; quoted cells keep their commas, quotes and line breaks."""
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 27))  # long text areas: 131,072
    return list(csv.DictReader(io.StringIO(text, newline="")))


def parse_bulk_error(text: str) -> tuple[str, str, list[str]]:
    """``sf__Error`` (``CODE:message:Field1,Field2 --``) as (code, message, fields)."""
    body = text.strip()
    if body.endswith("--"):
        body = body[:-2].rstrip()
    code, sep, rest = body.partition(":")
    if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", code):
        return "", text.strip(), []
    message, sep, names = rest.rpartition(":")
    if sep and re.fullmatch(r"[A-Za-z0-9_.,]*", names):
        return code, message, [name for name in names.split(",") if name]
    return code, rest, []


def _bulk_upsert_once(
    conn: SalesforceConnection, sobject: str, external_id_field: str, items: Sequence[Item]
) -> list[SinkOutcome]:
    columns = [external_id_field]
    for _, record in items:
        columns.extend(name for name in record if name not in columns)
    outcomes: list[SinkOutcome] = []
    for body, part in bulk_csv_parts(columns, items):
        outcomes.extend(_bulk_job(conn, sobject, external_id_field, body, part))
    return outcomes


def _bulk_job(
    conn: SalesforceConnection,
    sobject: str,
    external_id_field: str,
    body: bytes,
    items: Sequence[Item],
) -> list[SinkOutcome]:
    """One job: create, upload, close, wait, read results; one outcome per item."""
    keys = [key for key, _ in items]
    job_id = _open_bulk_job(conn, sobject, external_id_field, body, keys)
    info = _wait_for_job(conn, job_id, keys)
    state = info.get("state")
    processed = int(info.get("numberRecordsProcessed") or 0)
    failed = int(info.get("numberRecordsFailed") or 0)
    reason = str(info.get("errorMessage") or "")
    call = f"Bulk API 2.0 job {job_id}"
    log.info(
        "salesforce %s: %s, %d records, %d processed, %d failed",
        call,
        state,
        len(keys),
        processed,
        failed,
    )
    if state == "Aborted":
        raise ApiError(
            SYSTEM,
            call,
            "the job was aborted in the org; the records are sent again on the next run",
            action=Action.RETRY,
            record_keys=keys,
        )
    if state == "Failed" and processed == 0:
        # Refused whole, like a 400 on a collections call (a column the org does not know);
        # a failure of the org's own making is worth another try on the next run.
        ours = reason.startswith(BULK_INPUT_ERRORS)
        action = Action.FAIL if ours else Action.RETRY
        raise ApiError(SYSTEM, call, f"job Failed: {reason}", action=action, record_keys=keys)
    successes = _bulk_results(conn, job_id, "successfulResults", keys) if processed > failed else []
    failures = _bulk_results(conn, job_id, "failedResults", keys) if failed else []
    return _bulk_outcomes(job_id, external_id_field, items, successes, failures, reason)


def _bulk_outcomes(
    job_id: str,
    external_id_field: str,
    items: Sequence[Item],
    successes: list[dict[str, str]],
    failures: list[dict[str, str]],
    job_error: str,
) -> list[SinkOutcome]:
    """Result rows matched back to records on the external id (rows come in any order)."""
    by_value = {csv_cell(record.get(external_id_field)): key for key, record in items}
    found: dict[str, SinkOutcome] = {}
    for row in successes:
        key = by_value.get(row.get(external_id_field, ""))
        if key is None:
            log.warning("salesforce bulk job %s: a success for a record we did not send", job_id)
            continue
        status = "created" if row.get("sf__Created", "").lower() == "true" else "updated"
        found[key] = SinkOutcome(key, status, destination_id=row.get("sf__Id") or None)
    for row in failures:
        key = by_value.get(row.get(external_id_field, ""))
        if key is None:
            log.warning("salesforce bulk job %s: a failure for a record we did not send", job_id)
            continue
        code, message, fields = parse_bulk_error(row.get("sf__Error", ""))
        problem = RecordProblem(
            record_key=key,
            stage="delivery",
            system=SYSTEM,
            field=",".join(fields) or None,
            reason=f"{code}: {message}" if code else message,
        )
        retryable = code in TRANSIENT_RECORD_ERRORS
        found[key] = SinkOutcome(key, "failed", problems=[problem], retryable=retryable)
    outcomes = []
    for key, _ in items:
        if key in found:
            outcomes.append(found[key])
            continue
        # Neither succeeded nor failed: the job stopped before it; safe to send again.
        why = f"not processed by Bulk API 2.0 job {job_id}"
        if job_error:
            why += f": {job_error}"
        problem = RecordProblem(key, "delivery", SYSTEM, why)
        outcomes.append(SinkOutcome(key, "failed", problems=[problem], retryable=True))
    return outcomes


def _open_bulk_job(
    conn: SalesforceConnection,
    sobject: str,
    external_id_field: str,
    body: bytes,
    keys: Sequence[str],
) -> str:
    """Create a job, upload its one CSV and close it; returns the job id.

    A retried upload (its first answer lost) may have landed twice, which makes the org
    refuse to close the job: that job is aborted and a fresh one gets the data.
    """
    spec = {
        "object": sobject,
        "externalIdFieldName": external_id_field,
        "contentType": "CSV",
        "operation": "upsert",
        "lineEnding": "LF",
        "columnDelimiter": "COMMA",
    }
    for attempt in range(1, BULK_JOB_ATTEMPTS + 1):
        info = _bulk_call(conn, "POST", "ingest", "ingest", json_body=spec, write=True, keys=keys)
        job_id = str(info.json()["id"])
        try:
            _bulk_call(
                conn,
                "PUT",
                f"ingest/{job_id}/batches",
                "ingest/:id/batches",
                csv_body=body,
                write=True,
                keys=keys,
            )
            if _close_bulk_job(conn, job_id, keys):
                return job_id
        except ApiError:
            _abort_bulk_job(conn, job_id)
            raise
        _abort_bulk_job(conn, job_id)
        log.warning(
            "salesforce bulk job %s: upload landed twice, trying a new job (%d/%d)",
            job_id,
            attempt,
            BULK_JOB_ATTEMPTS,
        )
    raise ApiError(
        SYSTEM,
        "PATCH /jobs/ingest/:id",
        f"{BULK_JOB_ATTEMPTS} Bulk API 2.0 jobs refused to close; the records are sent again "
        "on the next run",
        action=Action.RETRY,
        record_keys=list(keys),
    )


def _close_bulk_job(conn: SalesforceConnection, job_id: str, keys: Sequence[str]) -> bool:
    """Mark the upload complete; ``False`` when the org refused an open job (double upload)."""
    try:
        _bulk_call(
            conn,
            "PATCH",
            f"ingest/{job_id}",
            "ingest/:id",
            json_body={"state": "UploadComplete"},
            write=True,
            keys=keys,
        )
        return True
    except ApiError as error:
        if error.action is not Action.FAIL:
            raise
        # A retried close whose first attempt landed is refused: the job is no longer Open.
        info = _bulk_call(conn, "GET", f"ingest/{job_id}", "ingest/:id", keys=keys).json()
        if info.get("state") != "Open":
            return True
        if error.error_code == "INVALIDJOB":
            return False
        raise


def _abort_bulk_job(conn: SalesforceConnection, job_id: str) -> dict[str, Any] | None:
    """Best effort: a job we give up on must not run later behind our back."""
    try:
        aborted = {"state": "Aborted"}
        response = _bulk_call(
            conn, "PATCH", f"ingest/{job_id}", "ingest/:id", json_body=aborted, write=True
        )
    except ApiError as error:
        log.warning("salesforce bulk job %s: could not abort it: %s", job_id, error)
        return None
    info: dict[str, Any] = response.json()
    return info


def _wait_for_job(conn: SalesforceConnection, job_id: str, keys: Sequence[str]) -> dict[str, Any]:
    """Poll the job with growing pauses until it ends; abort it when the wait runs out."""
    waited = 0.0
    info: dict[str, Any] = {}
    for pause in conn.bulk_polling.pauses():
        conn.policy.sleep(pause)
        waited += pause
        info = _bulk_call(conn, "GET", f"ingest/{job_id}", "ingest/:id", keys=keys).json()
        if info.get("state") in BULK_DONE:
            return info
    aborted = _abort_bulk_job(conn, job_id)
    if aborted is None:  # it may have ended meanwhile (an ended job cannot be aborted)
        info = _bulk_call(conn, "GET", f"ingest/{job_id}", "ingest/:id", keys=keys).json()
        if info.get("state") in ("JobComplete", "Failed"):
            return info
    outcome = "aborted" if aborted is not None else "could not be aborted and may still run"
    raise ApiError(
        SYSTEM,
        f"Bulk API 2.0 job {job_id}",
        f"still {info.get('state', 'unknown')} after {waited:.0f}s of waiting; the job "
        f"{outcome}; the records are sent again on the next run",
        action=Action.RETRY,
        record_keys=list(keys),
    )


def _bulk_results(
    conn: SalesforceConnection, job_id: str, kind: str, keys: Sequence[str]
) -> list[dict[str, str]]:
    response = _bulk_call(
        conn, "GET", f"ingest/{job_id}/{kind}/", f"ingest/:id/{kind}", accept="text/csv", keys=keys
    )
    # Decoded by hand: requests would read a text/csv body without charset as Latin-1.
    return read_bulk_csv(response.content.decode("utf-8-sig"))


def _bulk_call(
    conn: SalesforceConnection,
    method: str,
    path: str,
    template: str,
    *,
    json_body: dict[str, Any] | None = None,
    csv_body: bytes | None = None,
    accept: str = "application/json",
    write: bool = False,
    keys: Sequence[str] = (),
) -> requests.Response:
    """One Bulk API 2.0 call on the client's session and token, under the retry policy."""

    def send(sf: Salesforce) -> requests.Response:
        headers = {"Authorization": f"Bearer {sf.session_id}", "Accept": accept}
        data: bytes | None = None
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(json_body, allow_nan=False).encode("utf-8")
        elif csv_body is not None:
            headers["Content-Type"] = "text/csv"
            data = csv_body
        response = sf.session.request(method, sf.bulk2_url + path, headers=headers, data=data)
        limit_info = response.headers.get("Sforce-Limit-Info")
        if limit_info:  # keeps the quota check current, as simple-salesforce's own calls do
            sf.api_usage = Salesforce.parse_api_usage(limit_info)
        if response.status_code >= 300:
            exception_handler(response, name=template)
        return response

    return conn.call(f"{method} /jobs/{template}", send, write=write, keys=keys)


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
