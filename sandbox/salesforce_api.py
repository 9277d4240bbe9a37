"""Salesforce REST simulator: OAuth token, describe, sObject writes and deletes,
collections (create, update, upsert, delete), SOQL, Bulk API 2.0 ingest jobs
(``sandbox.sf_bulk``), the Lead duplicate rule and a seeded existing org (``sandbox.sf_seed``).

Faithful where sinks get hurt: error bodies are JSON arrays (``errorCode``) while
collections answer HTTP 200 with per-record ``statusCode`` errors in request order;
``allOrNone`` rolls everything back; upserts report ``created``; SOQL pages through
``nextRecordsUrl`` paths; every data call is counted in ``Sforce-Limit-Info``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote

from sandbox import soql
from sandbox.faults import unable_to_lock
from sandbox.sf_bulk import BulkIngest
from sandbox.sf_query import COMPOSITE_HEADER, QueryEngine
from sandbox.sf_schema import OBJECTS, Field, SObject, is_id, record_error
from sandbox.sf_store import (
    ENTITY_IS_DELETED,
    ROLLED_BACK,
    Planned,
    RecordStore,
    SfError,
    json_body,
)
from sandbox.wire import Options, Request, Response, json_response

CLIENT_ID = "sandbox-client-id"
CLIENT_SECRET = "sandbox-client-secret"
ORG_ID = "00D5g000004SaNdEAK"
JSON = "application/json;charset=UTF-8"
MAX_COLLECTION = 200


class SalesforceSimulator:
    def __init__(self, options: Options, seed: int) -> None:
        self.options = options
        self.base_url = ""  # set by the server once the port is known
        self.tokens: set[str] = set()
        self.api_usage = 0
        self.store = RecordStore(seed)
        self.queries = QueryEngine(self.store, options)
        # Set by the fault injector for one collections call: given the record count, the
        # positions that fail with UNABLE_TO_LOCK_ROW (and are not stored).
        self.locked_rows: Callable[[int], set[int]] | None = None
        self.bulk = BulkIngest(self, options)

    # --- routing ------------------------------------------------------------------------

    def route(self, req: Request) -> tuple[str, Callable[[], Response]] | None:
        self.bulk.advance()  # jobs run in the background, whoever is looking
        path = req.path.rstrip("/") or "/"
        m, method = None, req.method
        if path == "/services/oauth2/token" and method == "POST":
            return "POST /services/oauth2/token", lambda: self.token(req)
        if path == "/services/data" and method == "GET":
            return "GET /services/data", lambda: self._plain(self.versions())
        m = re.match(r"^/services/data/v(\d+\.\d)(/.*)?$", path)
        if not m:
            return None
        version, rest = m[1], m[2] or ""
        parts = [unquote(p) for p in rest.split("/")[1:]]
        table: list[tuple[str, str, Callable[..., Any]]] = [
            ("GET", "", self.resources),
            ("GET", "limits", self.limits),
            ("GET", "sobjects", self.describe_global),
            ("GET", "sobjects/:sobject/describe", self.describe),
            ("POST", "sobjects/:sobject", self.create_one),
            ("GET", "sobjects/:sobject/:id", self.get_one),
            ("PATCH", "sobjects/:sobject/:id", self.update_one),
            ("DELETE", "sobjects/:sobject/:id", self.delete_one),
            ("PATCH", "sobjects/:sobject/:field/:value", self.upsert_one),
            ("GET", "query", self.queries.query),
            ("GET", "queryAll", self.queries.query),
            ("GET", "query/:locator", self.queries.query_more),
            ("POST", "composite", self.composite),
            ("POST", "composite/sobjects", self.collection_create),
            ("PATCH", "composite/sobjects", self.collection_update),
            ("DELETE", "composite/sobjects", self.collection_delete),
            ("PATCH", "composite/sobjects/:sobject/:field", self.collection_upsert),
            ("POST", "jobs/ingest", self.bulk.create),
            ("GET", "jobs/ingest", self.bulk.list_jobs),
            ("GET", "jobs/ingest/:id", self.bulk.info),
            ("PATCH", "jobs/ingest/:id", self.bulk.set_state),
            ("DELETE", "jobs/ingest/:id", self.bulk.delete),
            ("PUT", "jobs/ingest/:id/batches", self.bulk.upload),
            ("GET", "jobs/ingest/:id/successfulResults", self.bulk.successful),
            ("GET", "jobs/ingest/:id/failedResults", self.bulk.failed),
            ("GET", "jobs/ingest/:id/unprocessedrecords", self.bulk.unprocessed),
        ]
        for verb, template, handler in table:
            pieces = template.split("/") if template else []
            if verb != method or len(pieces) != len(parts):
                continue
            args = [p for t, p in zip(pieces, parts, strict=True) if t.startswith(":")]
            if all(t.startswith(":") or t == p for t, p in zip(pieces, parts, strict=True)):
                key = f"{method} /services/data/v{version}" + (f"/{template}" if template else "")
                return key, lambda h=handler, a=args: self._data_call(req, version, h, a)
        return None

    # --- composite: several requests in one call ---------------------------------------

    def composite(self, req: Request, version: str) -> dict[str, Any]:
        """``POST /composite``: up to 25 subrequests in order, at most 5 of them queries;
        one API call. The sandbox runs reads only (``GET`` query, queryAll, query more):
        what the connector sends; other methods answer the subrequest with an error. A
        subrequest's URL is in the body, so no URI limit applies to its query, only SOQL's
        own 100,000 characters."""
        body = json_body(req)
        subs = body.get("compositeRequest") if isinstance(body, dict) else None
        if not isinstance(subs, list) or not subs:
            raise SfError(400, "JSON_PARSER_ERROR", "compositeRequest: a list of subrequests")
        if len(subs) > 25:
            raise SfError(
                400, "LIMIT_EXCEEDED", "Limit Exceeded: a composite request takes 25 subrequests"
            )
        queries = [s for s in subs if isinstance(s, dict) and "/query" in str(s.get("url"))]
        if len(queries) > 5:
            raise SfError(
                400, "LIMIT_EXCEEDED", "Limit Exceeded: at most 5 query subrequests per request"
            )
        answers = []
        for sub in subs:
            ref = str(sub.get("referenceId") or "") if isinstance(sub, dict) else ""
            status, payload = self._subrequest(req, sub)
            answers.append(
                {"body": payload, "httpHeaders": {}, "httpStatusCode": status, "referenceId": ref}
            )
        return {"compositeResponse": answers}

    def _subrequest(self, req: Request, sub: Any) -> tuple[int, Any]:
        if not isinstance(sub, dict) or not sub.get("referenceId") or not sub.get("url"):
            return 400, [{"errorCode": "INVALID_INPUT", "message": "method, url, referenceId"}]
        method = str(sub.get("method") or "").upper()
        path, _, raw_query = str(sub["url"]).partition("?")
        m = re.match(r"^/services/data/v(\d+\.\d)/(query|queryAll)(/[^/?]+)?/?$", path)
        if method == "GET" and not m:
            return 404, [
                {"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}
            ]
        if method != "GET" or not m:
            return 400, [
                {
                    "errorCode": "NOT_SUPPORTED",
                    "message": f"the sandbox runs query subrequests only, not {method} {path}",
                }
            ]
        sub_req = Request(
            "GET", path, Request.parse_query(raw_query), {**req.headers, COMPOSITE_HEADER: "1"}
        )
        result: dict[str, Any] | Response
        try:
            if m[3]:
                result = self.queries.query_more(sub_req, m[1], m[3].strip("/"))
            else:
                result = self.queries.query(sub_req, m[1])
        except SfError as exc:
            return exc.status, exc.body
        except soql.SoqlError as exc:
            return 400, [{"message": exc.message, "errorCode": exc.code}]
        if isinstance(result, Response):
            return result.status, json.loads(result.body or b"null")
        return 200, result

    def _plain(self, payload: Any, status: int = 200) -> Response:
        return json_response(status, payload, content_type=JSON)

    def _data_call(
        self, req: Request, version: str, handler: Callable[..., Any], args: list[str]
    ) -> Response:
        auth = req.header("authorization") or ""
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            error = SfError(401, "INVALID_SESSION_ID", "Session expired or invalid")
            return self._plain(error.body, 401)
        self.api_usage += 1
        limit_header = {"Sforce-Limit-Info": self.limit_info()}
        try:
            if self.api_usage > self.options.sf_daily_limit:
                raise SfError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
            result = handler(req, version, *args)
        except SfError as exc:
            result = self._plain(exc.body, exc.status)
        except soql.SoqlError as exc:
            result = self._plain([{"message": exc.message, "errorCode": exc.code}], 400)
        if not isinstance(result, Response):
            result = self._plain(result)
        result.headers.update(limit_header)
        return result

    # --- auth and metadata ---------------------------------------------------------------

    def token(self, req: Request) -> Response:
        form = {k: v[-1] for k, v in parse_qs(req.body.decode("utf-8", "replace")).items()}
        form = {**{k: v[-1] for k, v in req.query.items()}, **form}
        grant = form.get("grant_type")
        if grant == "client_credentials":
            client_id, secret = form.get("client_id"), form.get("client_secret")
            basic = req.header("authorization") or ""
            if basic.startswith("Basic "):
                try:
                    client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    client_id = secret = None
            if client_id != CLIENT_ID or secret != CLIENT_SECRET:
                return self._oauth_error("invalid_client", "invalid client credentials")
        elif grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            # The signature is deliberately not checked: the sandbox has no certificate to
            # check it against. Only the shape and the issuer (the consumer key) are.
            issuer = _jwt_issuer(form.get("assertion") or "")
            if issuer is None:
                return self._oauth_error("invalid_grant", "invalid assertion")
            if issuer != CLIENT_ID:
                return self._oauth_error("invalid_client_id", "client identifier invalid")
        else:
            return self._oauth_error("unsupported_grant_type", "grant type not supported")
        access = f"{ORG_ID[:15]}!AQ{secrets.token_urlsafe(72)}"
        self.tokens.add(access)
        issued = str(int(time.time() * 1000))
        signature = base64.b64encode(hashlib.sha256((access + issued).encode()).digest()).decode()
        return self._plain(
            {
                "access_token": access,
                "signature": signature,
                "scope": "api",
                "instance_url": self.base_url,
                "id": f"{self.base_url}/id/{ORG_ID}/{self.store.default_owner}",
                "token_type": "Bearer",
                "issued_at": issued,
            }
        )

    def _oauth_error(self, error: str, description: str) -> Response:
        return self._plain({"error": error, "error_description": description}, 400)

    def versions(self) -> list[dict[str, str]]:
        names = {
            "58.0": "Summer '23",
            "59.0": "Winter '24",
            "60.0": "Spring '24",
            "61.0": "Summer '24",
            "62.0": "Winter '25",
        }
        return [
            {"label": label, "url": f"/services/data/v{v}", "version": v}
            for v, label in names.items()
        ]

    def resources(self, req: Request, version: str) -> dict[str, str]:
        base = f"/services/data/v{version}"
        return {
            name: f"{base}/{name}"
            for name in ("sobjects", "query", "queryAll", "composite", "limits")
        }

    def limits(self, req: Request, version: str) -> dict[str, Any]:
        limit = self.options.sf_daily_limit
        return {"DailyApiRequests": {"Max": limit, "Remaining": max(limit - self.api_usage, 0)}}

    def describe_global(self, req: Request, version: str) -> dict[str, Any]:
        return {
            "encoding": "UTF-8",
            "maxBatchSize": MAX_COLLECTION,
            "sobjects": [
                {
                    "name": o.name,
                    "label": o.name,
                    "keyPrefix": o.key_prefix,
                    "createable": True,
                    "updateable": True,
                    "queryable": True,
                    "custom": False,
                    "urls": {
                        "sobject": f"/services/data/v{version}/sobjects/{o.name}",
                        "describe": f"/services/data/v{version}/sobjects/{o.name}/describe",
                    },
                }
                for o in OBJECTS.values()
            ],
        }

    def describe(self, req: Request, version: str, sobject: str) -> dict[str, Any]:
        return self.store.object(sobject).describe(version)

    # --- single-record endpoints ---------------------------------------------------------

    def _write_one(
        self, req: Request, obj: SObject, body: Any, existing: dict[str, Any] | None, skip: set[str]
    ) -> str:
        if not isinstance(body, dict):
            raise SfError(400, "JSON_PARSER_ERROR", "Expected a JSON object for the record")
        self.store.unknown_fields(obj, body, skip)
        values, error = self.store.check(obj, body, existing, skip, {})
        if error:
            raise SfError.of_record(400, error)
        return self.store.apply(obj, values, existing, req)

    def _live(self, sobject: str, rid: str) -> tuple[SObject, dict[str, Any]]:
        """The record at ``/sobjects/{type}/{id}``: 404 ``NOT_FOUND`` when there is none of
        that type, 404 ``ENTITY_IS_DELETED`` when it is in the recycle bin."""
        obj = self.store.object(sobject)
        found = self.store.locate(rid)
        if found is None or found[0].name != obj.name:
            raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
        if found[2]:
            raise SfError(404, "ENTITY_IS_DELETED", "entity is deleted", [])
        return obj, found[1]

    def create_one(self, req: Request, version: str, sobject: str) -> Response:
        obj = self.store.object(sobject)
        rid = self._write_one(req, obj, json_body(req), None, set())
        return self._plain({"id": rid, "success": True, "errors": []}, 201)

    def get_one(self, req: Request, version: str, sobject: str, rid: str) -> dict[str, Any]:
        obj, record = self._live(sobject, rid)
        rendered = self.store.render(obj, record, version)
        fields = req.param("fields")
        if fields:
            wanted = {name.strip().lower() for name in fields.split(",")}
            rendered = {
                k: v for k, v in rendered.items() if k == "attributes" or k.lower() in wanted
            }
        return rendered

    def update_one(self, req: Request, version: str, sobject: str, rid: str) -> Response:
        obj, existing = self._live(sobject, rid)
        self._write_one(req, obj, json_body(req), existing, {"id"})
        return Response(204)

    def delete_one(self, req: Request, version: str, sobject: str, rid: str) -> Response:
        """204 with no body; the record goes to the recycle bin (``queryAll`` still sees it)."""
        obj, record = self._live(sobject, rid)
        self.store.delete(obj, record)
        return Response(204)

    def upsert_one(
        self, req: Request, version: str, sobject: str, field_name: str, value: str
    ) -> Response:
        obj = self.store.object(sobject)
        f = self.store.lookup_field(obj, field_name)
        body = json_body(req)
        matches = self.store.find(obj, f, value)
        if len(matches) > 1:
            urls = [f"/services/data/v{version}/sobjects/{obj.name}/{r['Id']}" for r in matches]
            return self._plain(urls, 300)
        existing = matches[0] if matches else None
        if f.name == "Id" and existing is None:
            raise SfError(
                404,
                "NOT_FOUND",
                "Provided external ID field does not exist or is not accessible: " + value,
            )
        if isinstance(body, dict) and f.name != "Id":
            body = {**{k: v for k, v in body.items() if k.lower() != f.name.lower()}, f.name: value}
        rid = self._write_one(req, obj, body, existing, {"id"})
        created = existing is None
        return self._plain(
            {"id": rid, "success": True, "errors": [], "created": created}, 201 if created else 200
        )

    # --- sObject Collections -------------------------------------------------------------

    def _records(self, req: Request) -> tuple[bool, list[Any]]:
        body = json_body(req)
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise SfError(400, "JSON_PARSER_ERROR", "Request body must contain a records array")
        records = body["records"]
        if len(records) > MAX_COLLECTION:
            raise SfError(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        if not all(isinstance(r, dict) for r in records):
            raise SfError(400, "JSON_PARSER_ERROR", "Each record must be a JSON object")
        return bool(body.get("allOrNone", False)), records

    def _type_of(self, record: dict[str, Any], expected: SObject | None) -> SObject:
        name = (record.get("attributes") or {}).get("type")
        if not name:
            if expected is not None:
                return expected
            raise SfError(400, "INVALID_TYPE", "Must send a concrete entity type.")
        obj = self.store.object(name)
        if expected is not None and obj.name != expected.name:
            raise SfError(400, "INVALID_TYPE", f"Record type {name} does not match {expected.name}")
        return obj

    def collection_create(self, req: Request, version: str) -> list[dict[str, Any]]:
        all_or_none, records = self._records(req)
        typed = []
        for record in records:
            obj = self._type_of(record, None)
            self.store.unknown_fields(obj, record, set())
            typed.append((obj, record))
        return self.store.run_batch(req, all_or_none, self.lock(self.plan_create(typed)), False)

    def collection_update(self, req: Request, version: str) -> list[dict[str, Any]]:
        all_or_none, records = self._records(req)
        typed = []
        for record in records:
            obj = self._type_of(record, None)
            self.store.unknown_fields(obj, record, {"id"})
            typed.append((obj, record))
        return self.store.run_batch(req, all_or_none, self.lock(self.plan_update(typed)), False)

    def collection_upsert(
        self, req: Request, version: str, sobject: str, field_name: str
    ) -> list[dict[str, Any]]:
        obj = self.store.object(sobject)
        f = self.store.lookup_field(obj, field_name)
        all_or_none, records = self._records(req)
        for record in records:
            self._type_of(record, obj)
            self.store.unknown_fields(obj, record, {"id"})
        plan = self.plan_upsert(obj, f, records)
        return self.store.run_batch(req, all_or_none, self.lock(plan), upsert=True)

    def collection_delete(self, req: Request, version: str) -> list[dict[str, Any]]:
        """``DELETE /composite/sobjects?ids=a,b&allOrNone=false``: up to 200 ids of any
        types, one DeleteResult per id in request order (HTTP 200 even if all failed). An id
        already deleted, or one that never was, fails with ``ENTITY_IS_DELETED``."""
        ids = [i.strip() for i in (req.param("ids") or "").split(",") if i.strip()]
        if not ids:
            raise SfError(400, "MISSING_ARGUMENT", "ids parameter must be specified")
        if len(ids) > MAX_COLLECTION:
            raise SfError(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        all_or_none = (req.param("allOrNone") or "false").strip().lower() == "true"
        locked = self.locked_rows(len(ids)) if self.locked_rows is not None else set()
        planned: list[tuple[str, Any]] = []  # (id, (object, record) or an error)
        seen: set[str] = set()
        for i, rid in enumerate(ids):
            found = self.store.locate(rid)
            if not is_id(rid):
                planned.append((rid, record_error("MALFORMED_ID", f"malformed id {rid}", [])))
            elif found is None or found[2] or found[1]["Id"] in seen:
                planned.append((rid, ENTITY_IS_DELETED))
            elif i in locked:
                planned.append((rid, unable_to_lock(found[1]["Id"])))
            else:
                seen.add(found[1]["Id"])
                planned.append((rid, (found[0], found[1])))
        failed = any(isinstance(target, dict) for _, target in planned)
        results: list[dict[str, Any]] = []
        for _, target in planned:
            if isinstance(target, dict):
                results.append({"success": False, "errors": [target]})
            elif all_or_none and failed:
                results.append({"success": False, "errors": [ROLLED_BACK]})
            else:
                obj, record = target
                self.store.delete(obj, record)
                results.append({"id": record["Id"], "success": True, "errors": []})
        return results

    # --- per-record planning, shared with Bulk API 2.0 jobs (sandbox.sf_bulk) ------------

    def plan_create(self, records: list[tuple[SObject, dict[str, Any]]]) -> list[Planned]:
        return [(obj, record, None, set(), None) for obj, record in records]

    def plan_update(self, records: list[tuple[SObject, dict[str, Any]]]) -> list[Planned]:
        plan: list[Planned] = []
        for obj, record in records:
            rid = next((str(v) for k, v in record.items() if k.lower() == "id"), None)
            found = self.store.locate(rid or "")
            existing = found[1] if found is not None and found[0].name == obj.name else None
            error = None
            if rid is None:
                error = record_error("MISSING_ARGUMENT", "Id not specified in an update call", [])
            elif existing is not None and found is not None and found[2]:
                existing, error = None, ENTITY_IS_DELETED
            elif existing is None:
                error = record_error(
                    "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", []
                )
            plan.append((obj, record, existing, {"id"}, error))
        return plan

    def plan_upsert(self, obj: SObject, f: Field, records: list[dict[str, Any]]) -> list[Planned]:
        """Match each record on the external id; duplicates inside one call fail each other."""
        values: list[str | None] = []
        for record in records:
            raw = next((v for k, v in record.items() if k.lower() == f.name.lower()), None)
            values.append(None if raw is None else str(raw))
        folded = [v.lower() for v in values if v is not None]
        plan: list[Planned] = []
        for record, value in zip(records, values, strict=True):
            existing, error = None, None
            if value is None:
                error = record_error("MISSING_ARGUMENT", f"{f.name} not specified", [f.name])
            elif folded.count(value.lower()) > 1:
                error = record_error(
                    "DUPLICATE_EXTERNAL_ID", f"Duplicate external id specified: {value}", [f.name]
                )
            else:
                found = self.store.find(obj, f, value)
                if len(found) > 1:
                    ids = ", ".join(r["Id"] for r in found)
                    error = record_error(
                        "DUPLICATE_EXTERNAL_ID",
                        f"{f.name}: more than one record found for external id field: [{ids}]",
                        [f.name],
                    )
                existing = found[0] if len(found) == 1 else None
            plan.append((obj, record, existing, {"id"}, error))
        return plan

    def lock(
        self, plan: list[Planned], locked_rows: Callable[[int], set[int]] | None = None
    ) -> list[Planned]:
        """Injected row-lock contention: the chosen records fail before anything is stored."""
        locked_rows = locked_rows or self.locked_rows
        if locked_rows is None:
            return plan
        locked = locked_rows(len(plan))
        planned: list[Planned] = []
        for i, (obj, body, existing, skip, error) in enumerate(plan):
            if i in locked and error is None:
                held = existing["Id"] if existing else self.store.default_owner
                error = unable_to_lock(held)
            planned.append((obj, body, existing, skip, error))
        return planned

    @property
    def duplicate_rules(self) -> bool:
        """Whether the org's (blocking, exact-email) Lead duplicate rule is active."""
        return self.store.duplicate_rules

    @duplicate_rules.setter
    def duplicate_rules(self, on: bool) -> None:
        self.store.duplicate_rules = bool(on)

    def limit_info(self) -> str:
        return f"api-usage={self.api_usage}/{self.options.sf_daily_limit}"

    def state(self) -> dict[str, list[dict[str, Any]]]:
        self.bulk.advance()
        return self.store.state()


def _jwt_issuer(assertion: str) -> str | None:
    parts = assertion.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    issuer = payload.get("iss") if isinstance(payload, dict) else None
    return issuer if isinstance(issuer, str) else None
