"""The Salesforce org's records: validation, defaults, ownership and batch semantics.

Validation runs for a whole batch before anything is stored, which is what makes
``allOrNone`` roll back cleanly and lets duplicate unique values inside one request fail.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sandbox import soql
from sandbox.sf_schema import (
    ASSIGNABLE,
    OBJECTS,
    OTHER_PREFIXES,
    Field,
    SObject,
    check_value,
    find_object,
    is_id,
    object_for_id,
    record_error,
    sf_id,
)
from sandbox.wire import Request

ROLLED_BACK = record_error(
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "Record rolled back because not all records were valid and the request was using "
    "AllOrNone header",
    [],
)
# (object, record body, existing record or None, keys to skip, error found before checks)
Planned = tuple[SObject, dict[str, Any], dict[str, Any] | None, set[str], dict[str, Any] | None]
ENTITY_IS_DELETED = record_error("ENTITY_IS_DELETED", "entity is deleted", [])
ALREADY_MEMBER = record_error("DUPLICATE_VALUE", "Already a campaign member.", [])
# The org's standard Lead duplicate rule, reduced to its exact-email part (the real matching
# rule also compares names and companies fuzzily). It blocks: ``allowSave`` is false, so the
# ``Sforce-Duplicate-Rule-Header`` cannot save the record anyway.
DUPLICATE_RULE = "Standard_Lead_Duplicate_Rule"
DUPLICATE_MESSAGE = "Use one of these records?"
MATCH_RULES = {
    "Lead": "Standard_Lead_Match_Rule_v1_0",
    "Contact": "Standard_Contact_Match_Rule_v1_1",
}


class SfError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.body: list[dict[str, Any]] = [{**(extra or {}), "message": message, "errorCode": code}]
        if fields is not None:
            self.body[0]["fields"] = fields

    @classmethod
    def of_record(cls, status: int, error: dict[str, Any]) -> SfError:
        """A per-record error (``statusCode``) as a single-record call's error array."""
        extra = {k: v for k, v in error.items() if k not in ("statusCode", "message", "fields")}
        return cls(status, error["statusCode"], error["message"], error.get("fields"), extra)


def json_body(req: Request) -> Any:
    """The request's JSON, refused with Salesforce's parser error (it rejects ``NaN``)."""

    def refuse(token: str) -> Any:
        # Python's json accepts NaN; Salesforce's parser does not (pandas users meet this).
        raise ValueError(f"Unexpected character ('{token[0]}'): expected a valid value")

    try:
        return json.loads(req.body.decode("utf-8") or "null", parse_constant=refuse)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SfError(400, "JSON_PARSER_ERROR", f"{exc} at [line:1, column:1]") from None


INDEXED_FIELDS = frozenset({"Email"})
"""Without an index, each new Lead's duplicate check scanned every Lead and Contact: a
Bulk job of 4,000 leads into an org of 15,000 took the simulator half a second."""


def _now() -> str:
    return soql.sf_datetime(datetime.now(tz=UTC))


class RecordStore:
    def __init__(self, seed: int) -> None:
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in OBJECTS}
        self.counter = 1000 + seed * 7919
        self.round_robin = 0
        self.owners = [sf_id("005", 900 + n) for n in range(3)]  # an assignment rule's queue
        self.default_owner = sf_id("005", 42)  # the integration user
        # (object, field) -> folded value -> record ids: for the fields upserts match on
        # (keeps 200-record batches against thousands of leads from going quadratic), and
        # for any field a query compares with = or IN, from its first such query (a query
        # reads those records, not them all). The simulator's speed, not an org's indexes.
        self.index: dict[tuple[str, str], dict[str, set[str]]] = {}
        # The recycle bin: deleted records, out of ``records`` and the index, ``IsDeleted``.
        self.deleted: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in OBJECTS}
        # Duplicate rules: a new Lead whose Email matches a Lead or Contact is refused.
        self.duplicate_rules = True

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
        error = self._references(obj, values)
        if error is None:
            error = self._object_rules(obj, values, {**merged, **values}, existing, claimed)
        if error is not None:
            return {}, error
        return values, None

    def locate(self, record_id: str) -> tuple[SObject, dict[str, Any], bool] | None:
        """(object, record, deleted?) for a live or recycled record; 15-character ids too."""
        obj = object_for_id(record_id)
        if obj is None or not is_id(record_id):
            return None
        for deleted, pool in ((False, self.records[obj.name]), (True, self.deleted[obj.name])):
            record = pool.get(record_id)
            if record is None and len(record_id) == 15:
                record = next((r for i, r in pool.items() if i[:15] == record_id), None)
            if record is not None:
                return obj, record, deleted
        return None

    def _references(self, obj: SObject, values: dict[str, Any]) -> dict[str, Any] | None:
        """Lookups must name a record of an allowed type that exists (when we simulate it);
        15-character ids are stored as the 18-character form, as the org does."""
        for f in obj.fields:
            value = values.get(f.name)
            if f.type != "reference" or not value:
                continue
            if not is_id(str(value)):
                return record_error(
                    "MALFORMED_ID", f"{f.label}: id value of incorrect type: {value}", [f.name]
                )
            target = object_for_id(str(value))
            name = target.name if target is not None else OTHER_PREFIXES.get(str(value)[:3])
            if name is not None and name not in f.reference_to:
                return record_error(
                    "FIELD_INTEGRITY_EXCEPTION",
                    f"{f.label}: id value of incorrect type: {value}",
                    [f.name],
                )
            if target is None:
                continue  # an object the sandbox does not simulate (User, Account, ...)
            found = self.locate(str(value))
            if found is None:
                return record_error(
                    "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [f.name]
                )
            if found[2]:
                return ENTITY_IS_DELETED
            values[f.name] = found[1]["Id"]
        return None

    def _object_rules(
        self,
        obj: SObject,
        values: dict[str, Any],
        merged: dict[str, Any],
        existing: dict[str, Any] | None,
        claimed: dict[tuple[str, str], str],
    ) -> dict[str, Any] | None:
        if obj.name == "Lead" and existing is not None and existing.get("IsConverted"):
            return record_error(
                "CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead", []
            )
        if obj.name == "CampaignMember" and existing is None:
            who = merged.get("LeadId") or merged.get("ContactId")
            if not who:
                return record_error(
                    "REQUIRED_FIELD_MISSING",
                    "Required fields are missing: [LeadId, ContactId]",
                    ["LeadId", "ContactId"],
                )
            if self.member_key(merged) in claimed or self.membership(
                str(merged["CampaignId"]), str(who)
            ):
                return ALREADY_MEMBER
        if obj.name == "Lead" and existing is None and self.duplicate_rules:
            email = merged.get("Email")
            if email:
                return self.duplicates_detected(str(email))
        return None

    @staticmethod
    def member_key(values: dict[str, Any]) -> tuple[str, str]:
        who = values.get("LeadId") or values.get("ContactId")
        return ("#member", f"{values.get('CampaignId')}|{who}")

    def membership(self, campaign_id: str, who_id: str) -> dict[str, Any] | None:
        for member in self.records["CampaignMember"].values():
            if member.get("CampaignId") == campaign_id and who_id in (
                member.get("LeadId"),
                member.get("ContactId"),
            ):
                return member
        return None

    def duplicates_detected(self, email: str) -> dict[str, Any] | None:
        """The ``DUPLICATES_DETECTED`` per-record error for a new Lead with this Email, with
        its ``duplicateResult``; ``None`` when no Lead nor Contact has the address."""
        match_results = []
        for name in ("Lead", "Contact"):
            obj = OBJECTS[name]
            f = obj.field("Email")
            assert f is not None
            found = self.find(obj, f, email)
            if not found:
                continue
            match_results.append(
                {
                    "entityType": name,
                    "errors": [],
                    "matchEngine": "ExactMatchEngine",
                    "matchRecords": [
                        {
                            "additionalInformation": [],
                            "fieldDiffs": [],
                            "matchConfidence": 100.0,
                            "record": {
                                "attributes": {
                                    "type": name,
                                    "url": f"/services/data/v60.0/sobjects/{name}/{r['Id']}",
                                },
                                "Id": r["Id"],
                            },
                        }
                        for r in found
                    ],
                    "rule": MATCH_RULES[name],
                    "size": len(found),
                    "success": True,
                }
            )
        if not match_results:
            return None
        error = record_error("DUPLICATES_DETECTED", DUPLICATE_MESSAGE, [])
        error["duplicateResult"] = {
            "allowSave": False,
            "duplicateRule": DUPLICATE_RULE,
            "duplicateRuleEntityType": "Lead",
            "errorMessage": DUPLICATE_MESSAGE,
            "matchResults": match_results,
        }
        return error

    def claim(
        self, obj: SObject, values: dict[str, Any], rid: str, claimed: dict[tuple[str, str], str]
    ) -> None:
        for f in obj.fields:
            if f.unique and values.get(f.name) is not None:
                claimed[(f.name, str(values[f.name]).lower())] = rid
        if obj.name == "CampaignMember" and rid.startswith("#new"):
            claimed[self.member_key(values)] = rid

    def apply(
        self, obj: SObject, values: dict[str, Any], existing: dict[str, Any] | None, req: Request
    ) -> str:
        now = _now()
        # Sforce-Auto-Assign (default TRUE): Lead assignment rules run on create and, for TRUE,
        # on update too; an assignment rule id runs on create only; FALSE never.
        header = (req.header("sforce-auto-assign") or "TRUE").strip().upper()
        assignable = obj.name in ASSIGNABLE
        if existing is None:
            record: dict[str, Any] = {
                "Id": self.new_id(obj.key_prefix),
                "IsDeleted": False,
                "CreatedDate": now,
            }
            for f in obj.fields:
                if f.default is not None:
                    record[f.name] = f.default
                elif f.type == "boolean" and f.defaulted:
                    record[f.name] = False
            if assignable and header != "FALSE":
                # the rule runs and overrides any owner given
                values = {k: v for k, v in values.items() if k != "OwnerId"}
                record["OwnerId"] = self.next_owner()
            elif obj.field("OwnerId") is not None:
                record["OwnerId"] = self.default_owner
            self.records[obj.name][record["Id"]] = record
        else:
            record = existing
            if assignable and header == "TRUE":
                values = {k: v for k, v in values.items() if k != "OwnerId"}
                record["OwnerId"] = self.next_owner()
        self._reindex(obj, record, add=False)
        for name, value in values.items():
            if value is None:
                record.pop(name, None)
            else:
                record[name] = value
        self._reindex(obj, record, add=True)
        if record.get("Status") is None and obj.field("Status"):
            record["Status"] = obj.field("Status").default  # type: ignore[union-attr]
        if obj.field("FirstName") is not None:  # a person's Name is computed from its parts
            record["Name"] = (
                " ".join(p for p in (record.get("FirstName"), record.get("LastName")) if p) or None
            )
        if obj.name == "Task":
            record["IsClosed"] = record.get("Status") == "Completed"
        if obj.name == "CampaignMember":
            record["HasResponded"] = record.get("Status") == "Responded"
        record["LastModifiedDate"] = now
        return str(record["Id"])

    def next_owner(self) -> str:
        """The owner an assignment rule gives next (round robin over a queue of three)."""
        owner = self.owners[self.round_robin % len(self.owners)]
        self.round_robin += 1
        return owner

    def delete(self, obj: SObject, record: dict[str, Any]) -> None:
        """Into the recycle bin, with what goes along: a Lead's or Contact's campaign
        memberships and activities, a Campaign's members."""
        if record["Id"] not in self.records[obj.name]:
            return
        self._reindex(obj, record, add=False)
        del self.records[obj.name][record["Id"]]
        record["IsDeleted"] = True
        record["LastModifiedDate"] = _now()
        self.deleted[obj.name][record["Id"]] = record
        rid = record["Id"]
        cascades = {
            "CampaignMember": ("LeadId", "ContactId", "CampaignId"),
            "Task": ("WhoId", "WhatId"),
        }
        for child, links in cascades.items():
            if child == obj.name:
                continue
            for other in list(self.records[child].values()):
                if any(other.get(link) == rid for link in links):
                    self.delete(OBJECTS[child], other)

    @staticmethod
    def indexed(f: Field) -> bool:
        """Fields looked up by value: keys, and Email (each new Lead's duplicate rule)."""
        return f.unique or f.external_id or f.id_lookup or f.name in INDEXED_FIELDS

    def search_index(self, obj: SObject, field_name: str) -> dict[str, set[str]]:
        """Folded value -> ids of the live records holding it in ``field_name``; a field
        no key indexes is indexed now, and kept up to date from then on."""
        key = (obj.name, field_name)
        found = self.index.get(key)
        if found is None:
            found = {}
            for record in self.records[obj.name].values():
                value = record.get(field_name)
                if value is not None:
                    found.setdefault(str(value).lower(), set()).add(record["Id"])
            self.index[key] = found
        return found

    def _reindex(self, obj: SObject, record: dict[str, Any], *, add: bool) -> None:
        for f in obj.fields:
            value = record.get(f.name)
            if value is None:
                continue
            key = (obj.name, f.name)
            if key not in self.index and (f.name == "Id" or not self.indexed(f)):
                continue
            ids = self.index.setdefault(key, {}).setdefault(str(value).lower(), set())
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
        if (obj.name, f.name) in self.index or self.indexed(f):
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
                # A batch's duplicate error names no match (the docs' collections example):
                # only a single-record call's error carries the duplicateResult.
                shown = {k: v for k, v in error.items() if k != "duplicateResult"}
                results.append({"success": False, "errors": [shown]})
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
