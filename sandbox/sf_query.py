"""SOQL execution against the record store, with query locators for ``nextRecordsUrl``.

``query`` sees live records, ``queryAll`` the recycle bin too (``IsDeleted = true``). Every
SOQL text received is kept in ``log`` (the last ``LOG_SIZE``), so a test can check what a
client sent. The org's size limits hold: a SOQL statement of more than 100,000 characters is
refused (``MALFORMED_QUERY``), and so is a request whose URI, with the query URL-encoded, is
longer than 16,384 bytes (HTTP 414, as Salesforce's front end answers).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

from sandbox import soql
from sandbox.sf_schema import STRING_TYPES, Field, SObject, find_object
from sandbox.sf_store import RecordStore, SfError
from sandbox.wire import Options, Request, Response

SOQL_MAX_CHARS = 100_000
URI_MAX_BYTES = 16_384
# Set (internally) on a query run as a composite subrequest: its text came in a body.
COMPOSITE_HEADER = "x-sandbox-composite-subrequest"
LOG_SIZE = 10_000


class QueryEngine:
    def __init__(self, store: RecordStore, options: Options) -> None:
        self.store = store
        self.options = options
        # locator -> (api version, sobject, rendered rows): the snapshot a cursor pages over
        self.locators: dict[str, tuple[str, str, list[dict[str, Any]]]] = {}
        self.log: deque[str] = deque(maxlen=LOG_SIZE)

    def query(self, req: Request, version: str) -> dict[str, Any] | Response:
        text = req.param("q")
        if not text:
            raise SfError(400, "MALFORMED_QUERY", "A query string has to be specified")
        self.log.append(text)
        in_uri = req.header(COMPOSITE_HEADER) is None
        if in_uri and len(req.path) + len("?q=") + len(quote_plus(text)) > URI_MAX_BYTES:
            return Response(414, b"URI Too Long", {"Content-Type": "text/plain"})
        if len(text) > SOQL_MAX_CHARS:
            raise SfError(
                400,
                "MALFORMED_QUERY",
                f"SOQL statements cannot be longer than {SOQL_MAX_CHARS:,} characters.",
            )
        parsed = soql.parse(text)
        obj = find_object(parsed.sobject)
        if obj is None:
            raise SfError(
                400,
                "INVALID_TYPE",
                f"\n{text}\n^\nERROR at Row:1:Column:1\nsObject type '{parsed.sobject}' is not "
                "supported. If you are attempting to use a custom object, be sure to append the "
                "'__c' after the entity name. Please reference your WSDL or the describe call for "
                "the appropriate names.",
            )

        def resolve(name: str, column: int) -> Field:
            f = obj.field(name)
            if f is None:
                raise SfError(
                    400,
                    "INVALID_FIELD",
                    f"\n{text}\n{' ' * column}^\nERROR at Row:1:Column:{column + 1}\n"
                    f"No such column '{name}' on entity '{obj.name}'. If you are attempting to use "
                    "a custom field, be sure to append the '__c' after the custom field name. "
                    "Please reference your WSDL or the describe call for the appropriate names.",
                )
            return f

        selected = [resolve(name, column) for name, column in parsed.fields]
        canonical: dict[str, str] = {}
        for comparison in soql.fields_in(parsed.where):
            f = resolve(comparison.field, comparison.column)
            canonical[comparison.field] = f.name
            _check_filter(f, comparison)
        for name, _, _ in parsed.order:
            canonical[name] = resolve(name, text.find(name)).name
        dates = {f.name for f in obj.fields if f.type == "date"}
        live = self.store.records[obj.name]
        if req.path.rstrip("/").endswith("/queryAll"):
            pool = [*live.values(), *self.store.deleted[obj.name].values()]
        else:
            ids = self._candidates(parsed.where, obj, canonical, dates)
            # Ids grow with creation, so sorted ids keep the order a scan gives.
            pool = list(live.values()) if ids is None else [live[i] for i in sorted(ids)]
        keep = soql.compile_condition(parsed.where, lambda name: _reader(canonical[name], dates))
        rows = [r for r in pool if keep(r)]
        for name, descending, nulls_last in reversed(parsed.order):
            present = [r for r in rows if r.get(canonical[name]) is not None]
            absent = [r for r in rows if r.get(canonical[name]) is None]
            present.sort(key=_sorter(canonical[name]), reverse=descending)
            rows = present + absent if nulls_last else absent + present
        rows = rows[parsed.offset :]
        if parsed.limit is not None:
            rows = rows[: parsed.limit]
        if parsed.count:
            return {"totalSize": len(rows), "done": True, "records": []}
        rendered = []
        for r in rows:
            item: dict[str, Any] = {
                "attributes": {
                    "type": obj.name,
                    "url": f"/services/data/v{version}/sobjects/{obj.name}/{r['Id']}",
                }
            }
            item.update({f.name: r.get(f.name) for f in selected})
            rendered.append(item)
        locator = self.store.new_id("01g")
        self.locators[locator] = (version, obj.name, rendered)
        return self._batch(req, locator, 0)

    def _candidates(
        self, where: soql.Condition | None, obj: SObject, canonical: dict[str, str], dates: set[str]
    ) -> set[str] | None:
        """Ids of every record that can match ``where``, read off value indexes; None when
        the condition needs a scan. A superset: the full condition still runs on each.

        Usable: ``=`` and ``IN`` on text (folded the way the index folds), an OR of usable
        parts, an AND with one; a null or non-text value, a date, anything else is not.
        """
        if isinstance(where, soql.Comparison):
            name = canonical[where.field]
            values = [literal.value for literal in where.values]
            if where.op not in ("=", "in") or name in dates or not values:
                return None
            if not all(isinstance(value, str) for value in values):
                return None
            index = self.store.search_index(obj, name)
            found: set[str] = set()
            for value in values:
                found |= index.get(value.lower(), set())
            return found
        if isinstance(where, soql.BoolOp) and where.op in ("and", "or"):
            parts = [self._candidates(part, obj, canonical, dates) for part in where.parts]
            usable = [part for part in parts if part is not None]
            if where.op == "or":
                return set().union(*usable) if len(usable) == len(parts) else None
            return set.intersection(*usable) if usable else None
        return None

    def _batch(self, req: Request, locator: str, offset: int) -> dict[str, Any]:
        version, _, rows = self.locators[locator]
        size = self.options.sf_batch_size
        header = re.search(r"batchSize=(\d+)", req.header("sforce-query-options") or "")
        if header:
            size = min(max(int(header[1]), 200), 2000)
        chunk = rows[offset : offset + size]
        done = offset + size >= len(rows)
        page: dict[str, Any] = {"totalSize": len(rows), "done": done}
        if not done:
            page["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}-{offset + size}"
        else:
            self.locators.pop(locator, None)
        page["records"] = chunk
        return page

    def query_more(self, req: Request, version: str, cursor: str) -> dict[str, Any]:
        locator, _, offset = cursor.partition("-")
        if locator not in self.locators or not offset.isdigit():
            raise SfError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._batch(req, locator, int(offset))


def _check_filter(f: Field, comparison: soql.Comparison) -> None:
    if f.type == "textarea":
        raise SfError(400, "INVALID_FIELD", f"field '{f.name}' can not be filtered in a query call")
    expected = (
        "string"
        if f.type in STRING_TYPES
        else {"double": "number", "date": "datetime"}.get(f.type, f.type)
    )
    for value in comparison.values:
        if value.kind not in (expected, "null") or (
            comparison.op == "like" and expected != "string"
        ):
            article = "type " + (
                "string and should be enclosed in quotes" if expected == "string" else expected
            )
            raise SfError(
                400,
                "INVALID_QUERY_FILTER_OPERATOR",
                f"value of filter criterion for field '{f.name}' must be of {article}",
            )


def _reader(field: str, dates: set[str]) -> Callable[[dict[str, Any]], Any]:
    """Reads ``field`` of a record as SOQL compares it (date literals parse as midnight)."""
    if field in dates:

        def read_date(record: dict[str, Any]) -> Any:
            value = record.get(field)
            return None if value is None else f"{value}T00:00:00.000+0000"

        return read_date
    return lambda record: record.get(field)


def _sorter(field: str) -> Callable[[dict[str, Any]], Any]:
    def key(record: dict[str, Any]) -> Any:
        value = record[field]
        return value.lower() if isinstance(value, str) else value

    return key
