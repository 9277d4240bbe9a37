"""The Salesforce org's records: validation, defaults, ownership and batch semantics.

Validation runs for a whole batch before anything is stored, which is what makes
``allOrNone`` roll back cleanly and lets duplicate unique values inside one request fail.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sandbox import soql
from sandbox.sf_schema import OBJECTS, Field, SObject, check_value, find_object, record_error, sf_id
from sandbox.wire import Request

ROLLED_BACK = record_error(
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "Record rolled back because not all records were valid and the request was using "
    "AllOrNone header",
    [],
)
# (object, record body, existing record or None, keys to skip, error found before checks)
Planned = tuple[SObject, dict[str, Any], dict[str, Any] | None, set[str], dict[str, Any] | None]


class SfError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None):
        super().__init__(message)
        self.status = status
        self.body: list[dict[str, Any]] = [{"message": message, "errorCode": code}]
        if fields is not None:
            self.body[0]["fields"] = fields


def json_body(req: Request) -> Any:
    """The request's JSON, refused with Salesforce's parser error (it rejects ``NaN``)."""

    def refuse(token: str) -> Any:
        # Python's json accepts NaN; Salesforce's parser does not (pandas users meet this).
        raise ValueError(f"Unexpected character ('{token[0]}'): expected a valid value")

    try:
        return json.loads(req.body.decode("utf-8") or "null", parse_constant=refuse)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SfError(400, "JSON_PARSER_ERROR", f"{exc} at [line:1, column:1]") from None


def _now() -> str:
    return soql.sf_datetime(datetime.now(tz=UTC))


class RecordStore:
    def __init__(self, seed: int) -> None:
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in OBJECTS}
        self.counter = 1000 + seed * 7919
        self.round_robin = 0
        self.owners = [sf_id("005", 900 + n) for n in range(3)]  # an assignment rule's queue
        self.default_owner = sf_id("005", 42)  # the integration user
        # (object, field) -> folded value -> record ids, for the fields upserts match on:
        # keeps 200-record batches against thousands of leads from going quadratic.
        self.index: dict[tuple[str, str], dict[str, set[str]]] = {}

    def new_id(self, prefix: str) -> str:
        self.counter += 1
        return sf_id(prefix, self.counter)

    def object(self, name: str) -> SObject:
        obj = find_object(name)
        if obj is None:
            raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
        return obj

    def render(self, obj: SObject, record: dict[str, Any], version: str = "60.0") -> dict[str, Any]:
        out: dict[str, Any] = {
            "attributes": {
                "type": obj.name,
                "url": f"/services/data/v{version}/sobjects/{obj.name}/{record['Id']}",
            }
        }
        out.update({f.name: record.get(f.name) for f in obj.fields})
        return out

    def unknown_fields(self, obj: SObject, body: dict[str, Any], allowed: set[str]) -> None:
        for key in body:
            if key != "attributes" and key.lower() not in allowed and obj.field(key) is None:
                raise SfError(
                    400,
                    "INVALID_FIELD",
                    f"No such column '{key}' on sobject of type {obj.name}",
                    [],
                )

    def check(
        self,
        obj: SObject,
        body: dict[str, Any],
        existing: dict[str, Any] | None,
        skip: set[str],
        claimed: dict[tuple[str, str], str],
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Validate one record; ``claimed`` tracks unique values taken earlier in the batch."""
        values: dict[str, Any] = {}
        for key, raw in body.items():
            if key == "attributes" or key.lower() in skip:
                continue
            f = obj.field(key)
            assert f is not None  # unknown fields were refused for the whole request
            if not (f.updateable if existing is not None else f.createable):
                return {}, record_error(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {f.name}. Please check the security "
                    "settings of this field and verify that it is read/write for your profile or "
                    "permission set.",
                    [f.name],
                )
            value, error = check_value(f, raw)
            if error:
                return {}, error
            values[f.name] = value
        merged = {**(existing or {}), **values}
        missing = [f.name for f in obj.fields if f.required and merged.get(f.name) in (None, "")]
        if missing:
            return {}, record_error(
                "REQUIRED_FIELD_MISSING",
                f"Required fields are missing: [{', '.join(missing)}]",
                missing,
            )
        own_id = existing["Id"] if existing else None
        for f in obj.fields:
            value = values.get(f.name)
            if not f.unique or value is None:
                continue
            holder = claimed.get((f.name, str(value).lower())) or next(
                (r["Id"] for r in self.find(obj, f, str(value))), None
            )
            if holder is not None and holder != own_id:
                return {}, record_error(
                    "DUPLICATE_VALUE",
                    f"duplicate value found: {f.name} duplicates value on record with id: {holder}",
                    [f.name],
                )
        return values, None

    def claim(
        self, obj: SObject, values: dict[str, Any], rid: str, claimed: dict[tuple[str, str], str]
    ) -> None:
        for f in obj.fields:
            if f.unique and values.get(f.name) is not None:
                claimed[(f.name, str(values[f.name]).lower())] = rid

    def apply(
        self, obj: SObject, values: dict[str, Any], existing: dict[str, Any] | None, req: Request
    ) -> str:
        now = _now()
        if existing is None:
            record: dict[str, Any] = {
                "Id": self.new_id(obj.key_prefix),
                "IsDeleted": False,
                "CreatedDate": now,
            }
            for f in obj.fields:
                if f.default is not None:
                    record[f.name] = f.default
            if obj.name == "Lead":
                record["IsConverted"] = False
            header = (req.header("sforce-auto-assign") or "TRUE").strip().upper()
            if header == "FALSE":
                record["OwnerId"] = self.default_owner
            else:  # TRUE or an assignment rule id: the rule runs and overrides any owner given
                values = {k: v for k, v in values.items() if k != "OwnerId"}
                record["OwnerId"] = self.owners[self.round_robin % len(self.owners)]
                self.round_robin += 1
            self.records[obj.name][record["Id"]] = record
        else:
            record = existing
        self._reindex(obj, record, add=False)
        for name, value in values.items():
            if value is None:
                record.pop(name, None)
            else:
                record[name] = value
        self._reindex(obj, record, add=True)
        if record.get("Status") is None and obj.field("Status"):
            record["Status"] = obj.field("Status").default  # type: ignore[union-attr]
        record["Name"] = (
            " ".join(p for p in (record.get("FirstName"), record.get("LastName")) if p) or None
        )
        record["LastModifiedDate"] = now
        return str(record["Id"])

    def _reindex(self, obj: SObject, record: dict[str, Any], *, add: bool) -> None:
        for f in obj.fields:
            value = record.get(f.name)
            if f.name == "Id" or not (f.unique or f.external_id or f.id_lookup) or value is None:
                continue
            ids = self.index.setdefault((obj.name, f.name), {}).setdefault(
                str(value).lower(), set()
            )
            if add:
                ids.add(record["Id"])
            else:
                ids.discard(record["Id"])

    def find(self, obj: SObject, f: Field, value: str) -> list[dict[str, Any]]:
        """Records whose field equals ``value``; external ids match case-insensitively."""
        records = self.records[obj.name]
        if f.name == "Id":
            if value in records:
                return [records[value]]
            return [r for r in records.values() if r["Id"][:15] == value]
        if (obj.name, f.name) in self.index or f.unique or f.external_id or f.id_lookup:
            ids = self.index.get((obj.name, f.name), {}).get(value.lower(), set())
            return [records[i] for i in sorted(ids)]
        return [r for r in records.values() if str(r.get(f.name) or "").lower() == value.lower()]

    def lookup_field(self, obj: SObject, name: str) -> Field:
        f = obj.field(name)
        if f is None or not (f.external_id or f.id_lookup):
            raise SfError(
                400,
                "INVALID_FIELD",
                f"Field name provided, {name} is not an External ID or indexed field for "
                f"{obj.name}",
                [],
            )
        return f

    def run_batch(
        self,
        req: Request,
        all_or_none: bool,
        plan: list[Planned],
        upsert: bool,
    ) -> list[dict[str, Any]]:
        """Validate every record first, then store (or roll back) — results in request order."""
        claimed: dict[tuple[str, str], str] = {}
        checked: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        for i, (obj, body, existing, skip, pre_error) in enumerate(plan):
            if pre_error is not None:
                checked.append(({}, pre_error))
                continue
            values, error = self.check(obj, body, existing, skip, claimed)
            if error is None:
                self.claim(obj, values, existing["Id"] if existing else f"#new{i}", claimed)
            checked.append((values, error))
        failed = any(error for _, error in checked)
        results: list[dict[str, Any]] = []
        for (obj, _, existing, _, _), (values, error) in zip(plan, checked, strict=True):
            if error is not None:
                results.append({"success": False, "errors": [error]})
            elif all_or_none and failed:
                results.append({"success": False, "errors": [ROLLED_BACK]})
            else:
                rid = self.apply(obj, values, existing, req)
                result: dict[str, Any] = {"id": rid, "success": True, "errors": []}
                if upsert:
                    result["created"] = existing is None
                results.append(result)
        return results

    def state(self) -> dict[str, list[dict[str, Any]]]:
        return {
            name: [self.render(OBJECTS[name], r) for r in recs.values()]
            for name, recs in self.records.items()
        }
