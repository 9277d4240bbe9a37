"""Salesforce sink, through simple-salesforce: auth, describe, upsert by external id,
matching people to existing Contacts and Leads (``find_matches``), activities
(``upsert_tasks``), campaign membership (``add_campaign_members``), updates and deletes by
id (``update_records``, ``delete_records``) and SOQL reads (``query``).

simple-salesforce cannot log in anywhere but ``*.salesforce.com`` and has no timeout nor
retry, so we obtain the token ourselves, hand it a session from the shared HTTP layer,
and run every call under the shared retry policy.

Large batches go through a Bulk API 2.0 ingest job instead of sObject Collections. The
Bulk 2.0 calls are plain HTTP on the same session and token: simple-salesforce's bulk2
handler sleeps and polls on its own schedule (up to a day), retries nothing and raises on a
Failed job without the per-row results, so it is used for neither.
"""

from __future__ import annotations

import contextvars
import csv
import io
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import quote, quote_plus

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
    is_systemic,
    register_secret,
    transport_error,
)
from socialcrm.config import SalesforceSettings, resolve_secret
from socialcrm.records import DestinationField, RecordProblem, SinkOutcome

log = logging.getLogger("socialcrm.salesforce")

SYSTEM = "salesforce"
COLLECTION_LIMIT = 200
PARALLEL_CALLS = 4  # calls of one upsert, or of one lookup, in flight at once
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
DUPLICATES_DETECTED = "DUPLICATES_DETECTED"
DUPLICATE = "duplicate"  # the outcome status of a record the org's duplicate rules refused
# A GET /query URI and its headers must stay under 16,384 bytes (beyond: HTTP 414), well
# below the 100,000-character SOQL limit; each query's URL-encoded text stays under this,
# leaving room for the path and the headers (the bearer token, ~120 bytes).
SOQL_URI_BUDGET = 14_000
# Several queries travel in one POST /composite (one API call however many it holds, at
# most 5 queries each). Their text is in the body, so only SOQL's own limit of 100,000
# characters applies; the budget (URL-encoded) keeps a margin below it.
COMPOSITE_QUERIES = 5
COMPOSITE_SOQL_BUDGET = 90_000
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
    # A batch is matched while the batch before is written: two threads count calls.
    _counting: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _renewing: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reauthenticate(self, refused: Salesforce | None = None) -> None:
        """A new session. ``refused``: the client a call was refused with; when another
        call has renewed it meanwhile, that session serves (calls side by side find it
        expired together: one login for all, not one each)."""
        with self._renewing:
            if refused is not None and self.sf is not refused:
                return
            token, instance_url = obtain_token(self.settings, self.session)
            self.sf = _client(self.settings, self.session, token, instance_url)
            self.instance_url = instance_url

    def call(
        self, call: str, fn: Callable[[Salesforce], T], *, write: bool, keys: Sequence[str] = ()
    ) -> T:
        used: list[Salesforce] = []  # the client of the last attempt

        def once() -> T:
            if write:
                self._check_quota(call, keys)
            with self._counting:
                if write:
                    self.writes += 1
                else:
                    self.reads += 1
            used[:] = [self.sf]
            return fn(used[0])

        result = call_with_retry(
            once,
            system=SYSTEM,
            call=call,
            classify=lambda exc: classify(call, exc),
            policy=self.policy,
            reauthenticate=lambda: self.reauthenticate(used[0] if used else None),
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
    elif code == "REQUEST_LIMIT_EXCEEDED" and "Concurrent" not in message:
        action = Action.QUOTA  # "TotalRequests Limit exceeded.": the day's API calls are spent
    elif code == "REQUEST_LIMIT_EXCEEDED":
        action = Action.RETRY  # "ConcurrentPerOrgLongTxn Limit exceeded.": clears in moments
    elif status >= 500 or status == 429 or code in TRANSIENT_RECORD_ERRORS:
        action = Action.RETRY
    else:
        action = Action.FAIL
    text = f"{code}: {message}" if code else message
    return ApiError(SYSTEM, call, text, status=status, action=action, error_code=code or None)


def parse_describe(body: Any) -> dict[str, DestinationField]:
    """The fields of a describe answer, as the mapping engine checks them."""
    return {
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


def describe(conn: SalesforceConnection, sobject: str) -> dict[str, DestinationField]:
    """Field metadata of an object, cached for the connection's life (one run)."""
    if sobject not in conn._describe:
        body = conn.call(
            f"GET /sobjects/{sobject}/describe",
            lambda sf: sf.restful(f"sobjects/{sobject}/describe"),
            write=False,
        )
        conn._describe[sobject] = parse_describe(body)
    return conn._describe[sobject]


def upsert(
    conn: SalesforceConnection,
    sobject: str,
    external_id_field: str,
    records: Sequence[dict[str, Any]],
    keys: Sequence[str],
    *,
    assign: bool | None = None,
    known: Collection[str] = (),
) -> list[SinkOutcome]:
    """Upsert by external id: sObject Collections, 200 records a call, or for a batch of
    ``bulk_threshold`` records or more one Bulk API 2.0 job (a handful of calls in all).

    The upsert is idempotent (same external id, same record), so a retried call after a
    timeout cannot create a duplicate. Returns one outcome per key, in order: ``created``,
    ``updated``, ``failed``, or ``duplicate`` when the org's duplicate rules refused a new
    record (see ``parse_collection_results``). Records that failed for a passing reason (a
    row lock) are sent again a few times, by collections once they are few.

    Assignment: ``assign`` (``None``: ``settings.auto_assign``) runs the org's lead
    assignment rules on records created here (``Sforce-Auto-Assign: TRUE``). Salesforce runs
    them on every record such a call updates too, reshuffling owners a salesperson set, so
    records whose key is in ``known`` (the caller knows they exist: its ledger, a match) go
    in calls of their own with ``FALSE``, as does everything when ``assign`` is off. A Bulk
    API 2.0 job runs no default assignment rule, so records to assign always go by
    collections; known records may go by Bulk.

    A Bulk result names no matched record for a ``DUPLICATES_DETECTED`` row, and neither
    does a collections result as the docs show it: those records are sent once more one by
    one (a single-record upsert's error carries the ``duplicateResult``). Duplicates are
    few: the records matched in the org beforehand never meet the rule.
    """
    assign_new = conn.settings.auto_assign if assign is None else assign
    known_keys = set(known)
    by_key: dict[str, SinkOutcome] = {}
    pending = list(zip(keys, records, strict=True))
    for attempt in range(RECORD_ATTEMPTS):
        if attempt:
            conn.policy.sleep(min(2.0**attempt, 10.0))  # row locks clear in moments
        outcomes: list[SinkOutcome] = []
        for existing in (False, True):
            group = [(k, r) for k, r in pending if (k in known_keys) == existing]
            if not group:
                continue
            rules = assign_new and not existing
            by_bulk, by_collections = bulk_share(conn, external_id_field, group, assign=rules)
            sent: list[tuple[list[tuple[str, dict[str, Any]]], list[SinkOutcome]]] = []
            if by_bulk:
                sent.append((by_bulk, _bulk_upsert_once(conn, sobject, external_id_field, by_bulk)))
            if by_collections:
                sent.append(
                    (
                        by_collections,
                        _upsert_once(
                            conn, sobject, external_id_field, by_collections, assign=rules
                        ),
                    )
                )
            for items, results in sent:
                unnamed = {
                    o.record_key for o in results if o.status == DUPLICATE and not o.destination_id
                }
                outcomes.extend(o for o in results if o.record_key not in unnamed)
                if unnamed:
                    again = [(k, r) for k, r in items if k in unnamed]
                    outcomes.extend(
                        _name_duplicates(conn, sobject, external_id_field, again, assign=rules)
                    )
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
    *,
    assign: bool,
) -> list[SinkOutcome]:
    """The items in calls of 200, ``PARALLEL_CALLS`` calls at a time.

    The calls touch different records (one external id each), so they need not wait for
    each other; a row lock one of them meets is retried like any other (``upsert``). A
    call that fails for good fails its own records only (``upsert`` sends them again
    while attempts remain): the others' outcomes (a lead created) stand. A spent quota or
    refused credentials raise (see ``side_by_side``).
    """
    headers = {"Sforce-Auto-Assign": "TRUE" if assign else "FALSE"}
    path = f"composite/sobjects/{sobject}/{external_id_field}"
    size = COLLECTION_LIMIT
    chunks = [items[start : start + size] for start in range(0, len(items), size)]

    def send_chunk(chunk: Sequence[tuple[str, dict[str, Any]]]) -> list[SinkOutcome]:
        keys = [key for key, _ in chunk]
        body = {
            "allOrNone": False,
            "records": [{"attributes": {"type": sobject}, **record} for _, record in chunk],
        }

        def send(sf: Salesforce) -> Any:
            return sf.restful(path, method="PATCH", json=body, headers=headers)

        try:
            results = conn.call(
                f"PATCH /composite/sobjects/{sobject}/{external_id_field}",
                send,
                write=True,
                keys=keys,
            )
        except ApiError as error:
            if is_systemic(error):
                raise
            return failed_call(keys, error)  # the other calls' outcomes stand
        return parse_collection_results(results, keys, sobject)

    return [outcome for outcomes in side_by_side(send_chunk, chunks) for outcome in outcomes]


def _name_duplicates(
    conn: SalesforceConnection,
    sobject: str,
    external_id_field: str,
    items: Sequence[tuple[str, dict[str, Any]]],
    *,
    assign: bool,
) -> list[SinkOutcome]:
    """Refused by a duplicate rule without naming the match: each record alone, whose
    ``DUPLICATES_DETECTED`` error names it (or, the rule quiet now, its upsert result)."""
    headers = {"Sforce-Auto-Assign": "TRUE" if assign else "FALSE"}

    def send_one(item: tuple[str, dict[str, Any]]) -> SinkOutcome:
        key, record = item
        value = str(record.get(external_id_field) or "")
        fields = {k: v for k, v in record.items() if k != external_id_field}
        path = f"sobjects/{sobject}/{external_id_field}/{quote(value, safe='')}"

        def send(sf: Salesforce) -> Any:
            try:
                return sf.restful(path, method="PATCH", json=fields, headers=headers)
            except SalesforceError as refused:  # the answer we asked for, not a failure
                if refused.status == 400 and isinstance(refused.content, list):
                    return {"refused": refused.content}
                raise

        try:
            answer = conn.call(
                f"PATCH /sobjects/{sobject}/{external_id_field}/:value",
                send,
                write=True,
                keys=[key],
            )
        except ApiError as error:
            if is_systemic(error):
                raise
            return failed_call([key], error)[0]
        if isinstance(answer, dict) and "refused" in answer:
            errors = [
                {**e, "statusCode": e.get("errorCode")}
                for e in answer["refused"]
                if isinstance(e, dict)
            ]
            return parse_collection_results([{"success": False, "errors": errors}], [key], sobject)[
                0
            ]
        if isinstance(answer, dict) and answer.get("id"):
            status = "created" if answer.get("created") else "updated"
            return SinkOutcome(key, status, destination_id=str(answer["id"]))
        return SinkOutcome(key, "updated")  # 204: an older API version's update

    return side_by_side(send_one, list(items))


def failed_call(keys: Sequence[str], error: ApiError) -> list[SinkOutcome]:
    """The records of one call that failed for good (retries spent, or refused whole),
    each with the call's error: sent again (``RETRY``) or dead-lettered."""
    retryable = error.action is Action.RETRY
    return [
        SinkOutcome(
            key,
            "failed",
            problems=[RecordProblem(key, "delivery", SYSTEM, str(error))],
            retryable=retryable,
        )
        for key in keys
    ]


def side_by_side(fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
    """``fn`` of each item, ``PARALLEL_CALLS`` at a time, results in the items' order.

    The first failure (in the items' order) is raised once the calls running are done;
    items no thread has taken by then are dropped.
    """
    if len(items) <= 1:
        return [fn(item) for item in items]
    pool = ThreadPoolExecutor(min(PARALLEL_CALLS, len(items)), thread_name_prefix="salesforce")
    try:
        # Logs stay the caller's (a Prefect task's); a context is entered by one thread.
        futures = [pool.submit(contextvars.copy_context().run, fn, item) for item in items]
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def parse_collection_results(
    results: Any,
    keys: Sequence[str],
    sobject: str,
    *,
    success: str | None = None,
    done: Mapping[str, str] | None = None,
) -> list[SinkOutcome]:
    """One outcome per record from a collection answer (always HTTP 200, even if all failed).

    A success is ``success`` (default: ``created``/``updated`` from the upsert's ``created``
    flag). ``done`` maps error codes that mean the work is already done to a status (a
    delete of a record already gone). A record refused only by the org's duplicate rules
    (``DUPLICATES_DETECTED``) is not a failure but an outcome of its own, because
    ``SinkOutcome`` has no field for it:

    - ``status`` is ``"duplicate"``;
    - ``destination_id`` is the existing record the rule matched (a Contact before a Lead,
      else the first one listed): attach to it instead of creating;
    - ``problems`` holds one ``RecordProblem`` whose reason starts ``DUPLICATES_DETECTED:``
      and whose ``payload`` is ``{"duplicate_rule": ..., "matches": [{"object", "id"}...]}``
      (every matched record; ``duplicate_matches`` reads it back);
    - it is not retryable: sending it again meets the same rule.
    """
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
            status = success or ("created" if result.get("created") else "updated")
            outcomes.append(SinkOutcome(key, status, destination_id=result.get("id")))
            continue
        raw = result.get("errors") if isinstance(result, dict) else None
        errors = [e for e in raw if isinstance(e, dict)] if isinstance(raw, list) else []
        codes = {str(e.get("statusCode")) for e in errors}
        if errors and codes == {DUPLICATES_DETECTED}:
            outcomes.append(_duplicate_outcome(key, errors[0]))
            continue
        if errors and done and codes <= set(done):
            status = done[str(errors[0].get("statusCode"))]
            destination = result.get("id") if isinstance(result, dict) else None
            outcomes.append(SinkOutcome(key, status, destination_id=destination or None))
            continue
        problems = [
            RecordProblem(
                record_key=key,
                stage="delivery",
                system=SYSTEM,
                field=",".join(error.get("fields") or []) or None,
                reason=f"{error.get('statusCode', 'ERROR')}: {error.get('message', '')}",
            )
            for error in errors or [{}]
        ]
        retryable = bool(codes) and codes <= TRANSIENT_RECORD_ERRORS
        outcomes.append(SinkOutcome(key, "failed", problems=problems, retryable=retryable))
    return outcomes


def duplicate_matches(outcome: SinkOutcome) -> list[tuple[str, str]]:
    """(object, id) of every record a ``duplicate`` outcome's rule matched; [] otherwise."""
    found: list[tuple[str, str]] = []
    for problem in outcome.problems:
        matches = (problem.payload or {}).get("matches")
        for match in matches if isinstance(matches, list) else []:
            if isinstance(match, dict) and match.get("id"):
                found.append((str(match.get("object") or ""), str(match["id"])))
    return found


def _duplicate_outcome(key: str, error: dict[str, Any]) -> SinkOutcome:
    """A ``DUPLICATES_DETECTED`` error (with its ``duplicateResult``) as an outcome."""
    result = error.get("duplicateResult")
    result = result if isinstance(result, dict) else {}
    matches: list[dict[str, str]] = []
    for match_result in result.get("matchResults") or []:
        if not isinstance(match_result, dict):
            continue
        entity = str(match_result.get("entityType") or "")
        for match in match_result.get("matchRecords") or []:
            record = match.get("record") if isinstance(match, dict) else None
            if not isinstance(record, dict) or not record.get("Id"):
                continue
            kind = (record.get("attributes") or {}).get("type") or entity
            pair = {"object": str(kind), "id": str(record["Id"])}
            if pair not in matches:
                matches.append(pair)
    preferred = next((m["id"] for m in matches if m["object"] == "Contact"), None)
    if preferred is None and matches:
        preferred = matches[0]["id"]
    shown = ", ".join(f"{m['object']} {m['id']}" for m in matches) or "no record named"
    problem = RecordProblem(
        record_key=key,
        stage="delivery",
        system=SYSTEM,
        reason=f"{DUPLICATES_DETECTED}: {error.get('message', '')} (matches: {shown})",
        payload={"duplicate_rule": result.get("duplicateRule"), "matches": matches},
    )
    return SinkOutcome(key, DUPLICATE, destination_id=preferred, problems=[problem])


# --- Bulk API 2.0 ----------------------------------------------------------------------

Item = tuple[str, dict[str, Any]]


def bulk_share(
    conn: SalesforceConnection,
    external_id_field: str,
    items: Sequence[Item],
    *,
    assign: bool | None = None,
) -> tuple[list[Item], list[Item]]:
    """Split a batch into (by Bulk API 2.0, by sObject Collections).

    Everything goes by collections below ``bulk_threshold``, and when leads are to be
    auto-assigned (``assign``, default ``settings.auto_assign``: a Bulk job runs only an
    assignment rule named by id, never the org's default one).
    Results of a job come back unordered and are matched on the external id, so records
    without one or sharing one (Salesforce compares them case-insensitively) go by
    collections, as do records holding a value CSV cannot say the way JSON does: an empty
    string (JSON clears the field, an empty cell leaves it) or the literal ``#N/A`` (the
    cell would clear the field).
    """
    if len(items) < conn.settings.bulk_threshold:
        return [], list(items)
    if conn.settings.auto_assign if assign is None else assign:
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
        if code == DUPLICATES_DETECTED:  # no matched id in a CSV: ``upsert`` asks again
            found[key] = _duplicate_outcome(key, {"message": message})
            continue
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


# --- SOQL reads ---------------------------------------------------------------------------


def query(conn: SalesforceConnection, soql: str) -> list[dict[str, Any]]:
    """Every record of a SOQL query, following ``nextRecordsUrl`` page by page.

    Each page is one read under the retry policy (and counted in ``conn.reads``), so a
    dropped connection costs one page, not the whole walk. Build ``soql`` with
    ``soql_quote`` for every value that came from outside; keep it under the URI limit
    (``in_queries`` splits long ``IN`` lists).
    """
    page = conn.call("GET /query", lambda sf: sf.query(soql), write=False)
    return _all_pages(conn, page)


def _all_pages(conn: SalesforceConnection, page: dict[str, Any]) -> list[dict[str, Any]]:
    """A query's first page plus every later one, one read per ``nextRecordsUrl``."""
    records = list(page.get("records") or [])
    while not page.get("done", True) and page.get("nextRecordsUrl"):
        url = str(page["nextRecordsUrl"])

        def more(sf: Salesforce, url: str = url) -> Any:
            return sf.query_more(url, identifier_is_url=True)

        page = conn.call("GET /query/:locator", more, write=False)
        records.extend(page.get("records") or [])
    return records


def query_many(conn: SalesforceConnection, soqls: Sequence[str]) -> list[dict[str, Any]]:
    """Every record of several queries, five to a ``POST /composite`` call (see
    ``query_each``)."""
    return [record for records in query_each(conn, soqls) for record in records]


def query_each(conn: SalesforceConnection, soqls: Sequence[str]) -> list[list[dict[str, Any]]]:
    """Every record of each query, query by query, five queries to a ``POST /composite``
    call, the calls side by side (``side_by_side``).

    Used where a batch needs more than one query (matching a few thousand people): the org
    counts each composite call once, and the queries' text is in the body, not the URI, so
    ``in_queries(..., budget=COMPOSITE_SOQL_BUDGET)`` may make each one long. A query the
    org refuses raises ``ApiError`` with its error code; later pages follow
    ``nextRecordsUrl`` one call each, as in ``query``.
    """
    if len(soqls) == 1 and len(quote_plus(soqls[0])) <= SOQL_URI_BUDGET:
        return [query(conn, soqls[0])]
    prefix = f"/services/data/v{conn.settings.api_version}/query/?q="

    def send_group(group: Sequence[str]) -> list[list[dict[str, Any]]]:
        body = {
            "allOrNone": False,
            "compositeRequest": [
                {"method": "GET", "url": prefix + quote_plus(soql), "referenceId": f"q{i}"}
                for i, soql in enumerate(group)
            ],
        }

        def send(sf: Salesforce) -> Any:
            return sf.restful("composite", method="POST", json=body)

        answer = conn.call("POST /composite", send, write=False)
        answers = {
            item.get("referenceId"): item for item in (answer or {}).get("compositeResponse") or []
        }
        found: list[list[dict[str, Any]]] = []
        for i in range(len(group)):
            item = answers.get(f"q{i}") or {}
            status = int(item.get("httpStatusCode") or 0)
            page = item.get("body")
            if status >= 300 or not isinstance(page, dict):
                errors = page if isinstance(page, list) else []
                first = errors[0] if errors and isinstance(errors[0], dict) else {}
                raise ApiError(
                    SYSTEM,
                    "POST /composite",
                    f"query q{i}: {first.get('message') or page or 'no answer'}",
                    status=status or None,
                    error_code=first.get("errorCode"),
                )
            found.append(_all_pages(conn, page))
        return found

    step = COMPOSITE_QUERIES
    groups = [soqls[start : start + step] for start in range(0, len(soqls), step)]
    return [records for found in side_by_side(send_group, groups) for records in found]


_URL_SAFE = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-~ "


def field_values(
    conn: SalesforceConnection, sobject: str, field: str, ids: Collection[str]
) -> dict[str, str]:
    """``field`` of the records with these ids, where it is not empty (few queries)."""
    soqls = in_queries(sobject, ["Id", field], [("Id", sorted(ids))])
    found = {str(r["Id"]): str(r.get(field) or "").strip() for r in query_many(conn, soqls)}
    return {rid: value for rid, value in found.items() if value}


def url_encoded_length(text: str) -> int:
    """``len(quote_plus(text))`` without encoding: a safe byte (or a space, which becomes
    "+") stays one character, any other UTF-8 byte becomes three (``%XX``)."""
    encoded = text.encode("utf-8")
    return len(encoded) + 2 * len(encoded.translate(None, _URL_SAFE))


def in_queries(
    sobject: str,
    select: Sequence[str],
    conditions: Sequence[tuple[str, Iterable[str]]],
    *,
    budget: int = SOQL_URI_BUDGET,
) -> list[str]:
    """``SELECT … FROM sobject WHERE f1 IN (…) OR f2 IN (…)`` split into as few queries as
    fit: each one's URL-encoded text is at most ``budget`` characters (a GET URI must stay
    under 16,384 bytes; SOQL itself allows 100,000 characters). Every value is quoted with
    ``soql_quote``; duplicates are sent once. No values: no query."""
    head = f"SELECT {', '.join(dict.fromkeys(select))} FROM {sobject} WHERE "

    cost = url_encoded_length  # per character, so costs of parts add up exactly

    queries: list[str] = []
    current: dict[str, list[str]] = {}
    head_cost = size = cost(head)

    def flush() -> None:
        nonlocal current, size
        if current:
            where = " OR ".join(f"{name} IN ({', '.join(lits)})" for name, lits in current.items())
            queries.append(head + where)
        current, size = {}, head_cost

    comma, joiner = cost(", "), cost(" OR ")
    for name, values in conditions:
        opening = cost(f"{name} IN ()")
        for value in dict.fromkeys(values):
            literal = soql_quote(value)
            own = cost(literal)
            for _ in range(2):
                if name in current:
                    extra = comma + own
                else:
                    extra = (joiner if current else 0) + opening + own
                if not current or size + extra <= budget:
                    break
                flush()
            if head_cost + extra > budget:
                raise ValueError(f"a value for {name} is too long for one query")
            current.setdefault(name, []).append(literal)
            size += extra
    flush()
    return queries


# --- matching people to records already in the org ----------------------------------------

MatchedBy = Literal["external_id", "email", "profile_url", "handle"]
# Strongest first: the order in which keys decide, inside each object.
MATCH_KEYS: tuple[MatchedBy, ...] = ("external_id", "email", "profile_url", "handle")


@dataclass(frozen=True, slots=True)
class MatchKey:
    """What we know of one person to look them up in the org.

    ``external_id`` is the value of the external id field (``None``: the ``person_key``, the
    identity key we write there). The others are optional; empty ones are not looked up.
    """

    person_key: str
    external_id: str | None = None
    email: str | None = None
    handle: str | None = None
    profile_url: str | None = None

    def value(self, key: MatchedBy) -> str | None:
        """The normalised value of one key (how records' values are compared to it)."""
        if key == "external_id":
            raw = self.person_key if self.external_id is None else self.external_id
            return raw.strip() or None
        if key == "email":
            return normalize_email(self.email)
        if key == "handle":
            return normalize_handle(self.handle)
        return normalize_profile_url(self.profile_url)


@dataclass(frozen=True, slots=True)
class MatchRules:
    """Which keys ``find_matches`` uses, in which objects, through which fields.

    ``objects`` is in precedence order (Contact first: a customer is not a lead again).
    A key whose field an object lacks (per describe) is skipped for that object.
    ``ignore_claimed``: a handle or profile URL match on a record that carries another
    person's external id does not count (handles change hands; ids do not).
    """

    keys: frozenset[MatchedBy] = frozenset(MATCH_KEYS)
    objects: tuple[str, ...] = ("Contact", "Lead")
    external_id_field: str = "Social_Profile_Id__c"
    email_field: str = "Email"
    handle_field: str = "Social_Handle__c"
    profile_url_field: str = "Social_Profile_URL__c"
    ignore_claimed: bool = True

    def field_for(self, key: MatchedBy) -> str:
        return {
            "external_id": self.external_id_field,
            "email": self.email_field,
            "handle": self.handle_field,
            "profile_url": self.profile_url_field,
        }[key]


@dataclass(frozen=True, slots=True)
class Match:
    """The existing record a person is, and why we think so.

    ``id`` is ``None`` when the deciding key found several records (``candidates`` lists
    them): the caller must not guess. ``is_converted``/``converted_contact_id`` say a Lead
    was converted (it can no longer be updated; its Contact can).
    """

    object: str
    id: str | None
    matched_by: MatchedBy
    owner_id: str | None = None
    is_converted: bool = False
    converted_contact_id: str | None = None
    candidates: tuple[str, ...] = ()
    # The external id the record carries when it is not the person's own: the lead of
    # another of our people (the same human on another account), or another tool's.
    claimed_by: str | None = None

    @property
    def ambiguous(self) -> bool:
        return self.id is None


def normalize_email(value: str | None) -> str | None:
    text = (value or "").strip().casefold()
    return text if "@" in text else None


def normalize_handle(value: str | None) -> str | None:
    """``@Ana_Lopez`` and ``ana_lopez`` are the same handle."""
    text = (value or "").strip().lstrip("@").strip().casefold()
    return text or None


def normalize_profile_url(value: str | None) -> str | None:
    """Scheme, ``www.``, a trailing slash and case do not matter; ``twitter.com`` is
    ``x.com``."""
    text = (value or "").strip().casefold()
    text = re.sub(r"^https?://", "", text)
    text = re.sub(r"^(www\.|mobile\.)", "", text).rstrip("/")
    if text.startswith("twitter.com/"):
        text = "x.com/" + text[len("twitter.com/") :]
    return text or None


def _query_values(key: MatchedBy, person: MatchKey) -> list[str]:
    """The literal values to ask the org for: what records may hold for this person
    (SOQL compares text case-insensitively; ``normalize_*`` decides what matches)."""
    if key == "external_id":
        value = person.value("external_id")
        return [value] if value else []
    if key == "email":
        email = person.value("email")
        return [email] if email else []
    if key == "handle":
        handle = person.value("handle")
        return [handle, "@" + handle] if handle else []
    raw = (person.profile_url or "").strip().rstrip("/")
    if not raw:
        return []
    variants = [raw, raw + "/"]
    path = re.sub(r"^https?://(www\.)?(x|twitter)\.com/", "", raw, flags=re.IGNORECASE)
    if path != raw:  # an X profile: the other host's spelling too (records predate x.com)
        variants += [f"https://x.com/{path}", f"https://twitter.com/{path}"]
    return list(dict.fromkeys(variants))


def _normalized(key: MatchedBy, value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    if key == "external_id":
        return value.strip() or None  # case-sensitive, like the shipped field
    if key == "email":
        return normalize_email(value)
    if key == "handle":
        return normalize_handle(value)
    return normalize_profile_url(value)


@dataclass(frozen=True)
class Written:
    """What a write may have changed in the org, for matches found while it ran: the
    records it wrote to (ids) and the match values it sent (normalised, by key)."""

    ids: frozenset[str]
    values: Mapping[MatchedBy, frozenset[str]]
    anything: bool = False  # it failed part-way: what it changed is not known

    ANYTHING: ClassVar[Written]

    @classmethod
    def of(
        cls, records: Iterable[Mapping[str, Any]], ids: Iterable[str], rules: MatchRules
    ) -> Written:
        found: dict[MatchedBy, set[str]] = {key: set() for key in MATCH_KEYS}
        for record in records:
            for key in MATCH_KEYS:
                value = _normalized(key, record.get(rules.field_for(key)))
                if value is not None:
                    found[key].add(value)
        return cls(frozenset(ids), {key: frozenset(v) for key, v in found.items()})

    def may_change(self, person: MatchKey, match: Match | None) -> bool:
        """Whether this write can have changed what ``person`` matches: it sent one of their
        values, or wrote to the record (or a candidate) they matched."""
        if self.anything:
            return True
        if match is not None and (match.id in self.ids or self.ids.intersection(match.candidates)):
            return True
        return any(
            (value := person.value(key)) is not None and value in self.values[key]
            for key in MATCH_KEYS
        )


Written.ANYTHING = Written(frozenset(), {key: frozenset() for key in MATCH_KEYS}, anything=True)


def find_matches(
    conn: SalesforceConnection,
    people: Sequence[MatchKey],
    rules: MatchRules | None = None,
) -> dict[str, Match]:
    """The existing Contact or Lead each person already is, by person key (people who match
    nothing are absent).

    Every object's queries go out together: one SOQL query when only one is needed and it
    fits a URI; else long queries (up to SOQL's own limit, see ``in_queries``) five to a
    composite call (``query_each``): one round trip for a batch of a few thousand people.
    Every value quoted with ``soql_quote``, all pages read.

    Precedence: objects in ``rules.objects`` order (Contact beats Lead); inside an object,
    external id, then email, then profile URL, then handle. The first (object, key) that
    finds anything decides: one record is the match; two or more different records are
    reported as ambiguous (``Match.id`` is ``None``, ``candidates`` lists them), never
    guessed. Handles and emails compare case-insensitively, a handle's leading ``@`` does
    not count, profile URLs compare as ``normalize_profile_url`` says; external ids compare
    exactly. A key whose field an object lacks is skipped for that object (logged), so an
    org without, say, ``Social_Profile_URL__c`` on Contact still matches by the rest.
    """
    rules = rules or MatchRules()
    unique = list({person.person_key: person for person in people}.values())
    found: dict[str, Match] = {}
    if not unique:
        return found
    looks = [look for sobject in rules.objects if (look := _lookup(conn, sobject, unique, rules))]
    # Every object's queries in as few calls as they fit (one, mostly): one round trip.
    answers = iter(query_each(conn, [soql for look in looks for soql in look.soqls]))
    for look in looks:
        records = [record for _ in look.soqls for record in next(answers)]
        index: dict[MatchedBy, dict[str, list[dict[str, Any]]]] = {key: {} for key in look.keys}
        for record in records:
            for key in look.keys:
                value = _normalized(key, record.get(rules.field_for(key)))
                if value is not None:
                    index[key].setdefault(value, []).append(record)
        open_people = [p for p in unique if p.person_key not in found]
        for person in open_people:
            match = _decide(look.sobject, person, look.keys, index, look.ext_field, rules)
            if match is not None:
                found[person.person_key] = match
        log.info(
            "salesforce matching: %s: %d people, %d queries, %d records, %d matched so far",
            look.sobject,
            len(open_people),
            len(look.soqls),
            len(records),
            len(found),
        )
    return found


@dataclass(frozen=True)
class _Lookup:
    sobject: str
    keys: list[MatchedBy]  # the match keys this object has fields for, in precedence order
    ext_field: str | None
    soqls: list[str]


def _lookup(
    conn: SalesforceConnection, sobject: str, people: Sequence[MatchKey], rules: MatchRules
) -> _Lookup | None:
    """The queries that find ``people`` among an object's records; None if it has no field
    to match by. Everyone is looked for in every object (not only who an earlier object
    did not match), so that all objects' queries go out together."""
    fields = describe(conn, sobject)
    active: list[MatchedBy] = []
    for key in MATCH_KEYS:
        name = rules.field_for(key)
        if key not in rules.keys:
            continue
        if name not in fields or fields[name].type == "textarea":  # absent, unfilterable
            log.info(
                "salesforce matching: %s has no filterable field %s; not matching by %s",
                sobject,
                name,
                key,
            )
            continue
        active.append(key)
    if not active:
        return None
    ext_field = rules.external_id_field if rules.external_id_field in fields else None
    select = ["Id", *(n for n in ("OwnerId", "IsConverted", "ConvertedContactId") if n in fields)]
    select += [rules.field_for(key) for key in active]
    if ext_field:
        select.append(ext_field)
    conditions = []
    for key in active:
        name = rules.field_for(key)
        limit = fields[name].length or 255
        values = [v for p in people for v in _query_values(key, p) if len(v) <= limit]
        conditions.append((name, values))
    soqls = in_queries(sobject, select, conditions, budget=COMPOSITE_SOQL_BUDGET)
    return _Lookup(sobject, active, ext_field, soqls)


def _decide(
    sobject: str,
    person: MatchKey,
    active: Sequence[MatchedBy],
    index: Mapping[MatchedBy, Mapping[str, list[dict[str, Any]]]],
    ext_field: str | None,
    rules: MatchRules,
) -> Match | None:
    own = person.value("external_id")
    for key in active:
        value = person.value(key)
        if value is None:
            continue
        hits = index[key].get(value, [])
        if key in ("handle", "profile_url") and rules.ignore_claimed and ext_field:
            hits = [
                r
                for r in hits
                if not (r.get(ext_field) or "").strip() or r[ext_field].strip() == own
            ]
        ids = list(dict.fromkeys(str(r["Id"]) for r in hits))
        if not ids:
            continue
        if len(ids) > 1:
            return Match(sobject, None, key, candidates=tuple(sorted(ids)))
        record = hits[0]
        claim = str(record.get(ext_field) or "").strip() if ext_field else ""
        return Match(
            object=sobject,
            id=ids[0],
            matched_by=key,
            owner_id=record.get("OwnerId"),
            is_converted=bool(record.get("IsConverted")),
            converted_contact_id=record.get("ConvertedContactId"),
            claimed_by=claim if claim and claim != own else None,
        )
    return None


# --- Tasks, campaign members, updates and deletes -------------------------------------------

TASK_KEY_FIELD = "Socialcrm_Key__c"
ALREADY_MEMBER = "already a campaign member"


def upsert_tasks(
    conn: SalesforceConnection,
    tasks: Sequence[dict[str, Any]],
    keys: Sequence[str],
    *,
    external_id_field: str = TASK_KEY_FIELD,
) -> list[SinkOutcome]:
    """Completed Tasks (activities on a Contact or Lead, ``WhoId``), idempotent: upserted by
    ``external_id_field`` (``Socialcrm_Key__c``), so a rerun never adds a second Task.

    Each task's external id defaults to its key and its ``Status`` to ``Completed``; give
    ``Subject``, ``WhoId``, ``ActivityDate`` (``YYYY-MM-DD``), ``Description``, ``Type``,
    ``TaskSubtype``... as the org names them. Fields the org lets us set on create only
    (``TaskSubtype``) are left out for Tasks that already exist (one query finds them),
    since Salesforce refuses the whole record otherwise. Assignment rules never run.
    Returns one outcome per key, in order (``created``/``updated``/``failed``).
    """
    fields = describe(conn, "Task")
    if external_id_field not in fields:
        raise ApiError(
            SYSTEM,
            "GET /sobjects/Task/describe",
            f"the org's Task has no field {external_id_field}: deploy the socialcrm "
            "Salesforce metadata (deploy/salesforce) before writing activities",
            record_keys=list(keys),
        )
    records = [
        {external_id_field: key, "Status": "Completed", **task}
        for key, task in zip(keys, tasks, strict=True)
    ]
    create_only = {n for n, f in fields.items() if f.createable and not f.updateable}
    known: set[str] = set()
    if any(create_only & set(record) for record in records):
        values = [str(record[external_id_field]) for record in records]
        soqls = in_queries("Task", [external_id_field], [(external_id_field, values)])
        existing = {
            str(r.get(external_id_field) or "").casefold()
            for soql in soqls
            for r in query(conn, soql)
        }
        for key, record in zip(keys, records, strict=True):
            if str(record[external_id_field]).casefold() in existing:
                known.add(key)
                for name in create_only & set(record):
                    del record[name]
    return upsert(conn, "Task", external_id_field, records, keys, assign=False, known=known)


def add_campaign_members(
    conn: SalesforceConnection,
    campaign_id: str,
    status: str | None = None,
    *,
    lead_ids: Sequence[str] = (),
    contact_ids: Sequence[str] = (),
) -> list[SinkOutcome]:
    """Put Leads and Contacts in a campaign (``CampaignMember`` records, 200 a call).

    Idempotent: a person already in the campaign (``DUPLICATE_VALUE`` "Already a campaign
    member.") is ``unchanged`` (without a member id: the answer names none). Outcomes are
    keyed by the Lead or Contact id, one per distinct id, leads first. ``status`` is the
    member status (``None``: the campaign's default, e.g. ``Sent``).
    """
    items: list[tuple[str, dict[str, Any]]] = []
    for field_name, ids in (("LeadId", lead_ids), ("ContactId", contact_ids)):
        for record_id in dict.fromkeys(ids):
            record: dict[str, Any] = {"CampaignId": campaign_id, field_name: record_id}
            if status is not None:
                record["Status"] = status
            items.append((record_id, record))

    def parse(results: Any, keys: Sequence[str]) -> list[SinkOutcome]:
        outcomes = parse_collection_results(results, keys, "CampaignMember", success="created")
        for i, (outcome, result) in enumerate(zip(outcomes, results, strict=True)):
            errors = result.get("errors") if isinstance(result, dict) else None
            if (
                outcome.status == "failed"
                and errors
                and all(
                    isinstance(e, dict)
                    and e.get("statusCode") == "DUPLICATE_VALUE"
                    and ALREADY_MEMBER in str(e.get("message", "")).casefold()
                    for e in errors
                )
            ):
                outcomes[i] = SinkOutcome(outcome.record_key, "unchanged")
        return outcomes

    return _collection_write(conn, "POST", "CampaignMember", items, parse)


def update_records(
    conn: SalesforceConnection,
    sobject: str,
    records: Sequence[dict[str, Any]],
    keys: Sequence[str],
) -> list[SinkOutcome]:
    """Update records by ``Id`` (each record carries its ``Id``), 200 a call, without
    running assignment rules. One outcome per key, in order: ``updated`` or ``failed`` (a
    deleted record fails with ``ENTITY_IS_DELETED``, not retryable)."""
    items = []
    for key, record in zip(keys, records, strict=True):
        if not record.get("Id"):
            raise ValueError(f"update_records: the record for {key} has no Id")
        items.append((key, record))

    def parse(results: Any, chunk_keys: Sequence[str]) -> list[SinkOutcome]:
        return parse_collection_results(results, chunk_keys, sobject, success="updated")

    return _collection_write(conn, "PATCH", sobject, items, parse)


def delete_records(
    conn: SalesforceConnection, sobject: str, ids: Sequence[str]
) -> list[SinkOutcome]:
    """Delete records by id (``DELETE /composite/sobjects?ids=…``, 200 a call; they go to
    the org's recycle bin, with what Salesforce deletes along). One outcome per distinct id,
    keyed and ``destination_id`` by the id: ``deleted``, also when it was already gone
    (``ENTITY_IS_DELETED``/``NOT_FOUND``), so erasing twice is no error; else ``failed``."""
    items: list[Item] = [(record_id, {}) for record_id in dict.fromkeys(ids)]
    gone = {"ENTITY_IS_DELETED": "deleted", "NOT_FOUND": "deleted"}

    def parse(results: Any, chunk_keys: Sequence[str]) -> list[SinkOutcome]:
        outcomes = parse_collection_results(
            results, chunk_keys, sobject, success="deleted", done=gone
        )
        for outcome in outcomes:
            if outcome.status == "deleted":
                outcome.destination_id = outcome.record_key
        return outcomes

    return _collection_write(conn, "DELETE", sobject, items, parse)


def _collection_write(
    conn: SalesforceConnection,
    method: str,
    sobject: str,
    items: Sequence[Item],
    parse: Callable[[Any, Sequence[str]], list[SinkOutcome]],
) -> list[SinkOutcome]:
    """sObject Collections create (POST), update (PATCH) or delete (DELETE), 200 records a
    call, ``allOrNone`` false; records that failed for a passing reason go again."""
    by_key: dict[str, SinkOutcome] = {}
    pending = list(items)
    call = f"{method} /composite/sobjects"
    headers = {"Sforce-Auto-Assign": "FALSE"}
    for attempt in range(RECORD_ATTEMPTS):
        if attempt:
            conn.policy.sleep(min(2.0**attempt, 10.0))
        for start in range(0, len(pending), COLLECTION_LIMIT):
            chunk = pending[start : start + COLLECTION_LIMIT]
            chunk_keys = [key for key, _ in chunk]
            request: dict[str, Any] = {"method": method}
            if method == "DELETE":
                request["params"] = {"ids": ",".join(chunk_keys), "allOrNone": "false"}
            else:
                request["headers"] = headers
                request["json"] = {
                    "allOrNone": False,
                    "records": [{"attributes": {"type": sobject}, **r} for _, r in chunk],
                }

            def send(sf: Salesforce, request: dict[str, Any] = request) -> Any:
                return sf.restful("composite/sobjects", **request)

            results = conn.call(call, send, write=True, keys=chunk_keys)
            for outcome in parse(results, chunk_keys):
                by_key[outcome.record_key] = outcome
        pending = [(k, r) for k, r in pending if by_key[k].retryable]
        if not pending:
            break
    return [by_key[key] for key, _ in items]
