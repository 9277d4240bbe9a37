"""The mapping spec applied the naive way: one row at a time, one plain function per value.

This is what one writes first: loop over the rows, evaluate every field's source, run its
transforms value by value, cast and check the result, collect problems. It reads the same
spec and metadata as ``mappings.apply_spec`` and returns the same ``MappingResult``
(records, keys, rejected, warnings; its ``frame`` is built from the records), so it is the
baseline of ``bench.mapping`` and the reference the engine is tested against.

It shares nothing with the engine's implementation on purpose (no ``mappings.transforms``,
no ``mappings.validate``): names are cleaned with ``unicodedata`` character by character,
text is trimmed with ``str.strip``, dates are parsed one by one. Only the spec model, the
e-mail and URL rules (``EMAIL``, ``WEB_URL``: the definition of a valid value) and the
destination type families are imported.

Scope: columns typed the way ``socialcrm.qualify.lead_candidates`` builds them (text, float,
integer, boolean and datetime columns); object columns mixing types are read value by
value, each printed as its own type's column would be (booleans ``true``, whole floats
without ``.0``), as the engine does.
"""

from __future__ import annotations

import math
import re
import string
import sys
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from mappings import MappingResult, MappingSpec, fieldtypes
from mappings.engine import EMAIL, WEB_URL
from mappings.spec import FieldSpec
from mappings.transforms import LookupArg
from socialcrm.records import DestinationField, RecordProblem

STAGE = "mapping"
TRIM_CHARS = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()) + (
    "\u200b\u200c\u200d\u2060\ufeff"
)
NAME_NOISE = {"So", "Sk", "Sm", "Sc", "Cc", "Cf", "Co", "Cs", "Cn", "Me"}
HAS_LETTER = re.compile(r"[^\W\d_]")  # a word character that is neither a digit nor "_"
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")  # tab and newline stay
# What ``datetime.fromisoformat`` reads exactly as pandas does; anything else goes to pandas.
PLAIN_ISO = re.compile(
    r"[1-9]\d{3}-\d\d-\d\d"
    r"(?:T(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d{1,6})?)?(?:Z|[+-][01]\d:?[0-5]\d)?)?"
)
PREVIEW = 40
SHOWN_PICKLIST_VALUES = 6
BOOLEAN_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


# --- reading values --------------------------------------------------------------------------


def _column_kinds(frame: pd.DataFrame) -> dict[str, str]:
    """How each column's values print as text: decided by the column's dtype, like pandas."""
    kinds = {}
    for name in frame.columns:
        dtype = frame[name].dtype
        if pd.api.types.is_bool_dtype(dtype):
            kinds[str(name)] = "bool"
        elif pd.api.types.is_float_dtype(dtype):
            kinds[str(name)] = "float"
        elif pd.api.types.is_integer_dtype(dtype):
            kinds[str(name)] = "int"
        elif pd.api.types.is_datetime64_any_dtype(dtype):
            kinds[str(name)] = "datetime"
        elif pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
            kinds[str(name)] = "text"
        else:
            kinds[str(name)] = "object"
    return kinds


def is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def as_text(value: Any) -> str | None:
    """A value as text: whole floats without ``.0``, booleans as ``true``/``false``."""
    if is_missing(value):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return str(value)
    if isinstance(value, pd.Timestamp):
        return format_timestamp(value)
    return str(value)


def read(row: Mapping[str, Any], name: str, kinds: Mapping[str, str]) -> Any:
    """A source value; absent columns are empty; object columns' values print as text."""
    if name not in row:
        return None
    value = row[name]
    if is_missing(value):
        return None
    if kinds.get(name) == "object" and not isinstance(value, str):
        # Each value as its own type's column prints it; a date as Python prints it.
        return str(value) if isinstance(value, pd.Timestamp) else as_text(value)
    if kinds.get(name) == "datetime":
        return pd.Timestamp(value)
    return value


# --- transforms, one value at a time ---------------------------------------------------------


def trim(value: Any) -> str | None:
    text = as_text(value)
    if text is None:
        return None
    return text.replace("\x00", "").strip(TRIM_CHARS) or None


@cache
def _name_noise() -> re.Pattern[str]:
    """Every character a name loses: symbols, controls, invisibles, emoji variation selectors."""
    ranges: list[list[int]] = []
    for code in range(1, sys.maxunicode + 1):
        char = chr(code)
        if (
            (unicodedata.category(char) in NAME_NOISE and not char.isspace())
            or 0xFE00 <= code <= 0xFE0F
            or 0xE0100 <= code <= 0xE01EF
        ):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    spans = "".join(f"{re.escape(chr(low))}-{re.escape(chr(high))}" for low, high in ranges)
    return re.compile(f"[{spans}]+")


def clean_name(value: Any) -> str | None:
    """Letters, marks, digits and punctuation stay; symbols, emoji and invisibles go."""
    text = as_text(value)
    if text is None:
        return None
    name = " ".join(_name_noise().sub("", text.replace("\x00", "")).split())
    return name if HAS_LETTER.search(name) else None


def split_name(value: Any, part: str) -> str | None:
    text = as_text(value)
    if text is None:
        return None
    words = text.split()
    if len(words) > 1:
        return words[0] if part == "first" else " ".join(words[1:])
    if part == "first" or not words:
        return None
    return words[0]


def lookup(value: Any, arg: LookupArg, tables: Mapping[str, Mapping[str, Any]]) -> Any:
    text = as_text(value)
    if text is None:
        return None
    table = tables[arg.table] if isinstance(arg.table, str) else arg.table
    found = table.get(text)
    if found is None:
        folded = {str(key).casefold(): item for key, item in table.items()}
        found = folded.get(text.casefold())
    if found is None:
        found = arg.default
    return found


def to_number(value: Any) -> float | None:
    """A number as pandas reads it; None when it is not one."""
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    try:
        parsed = pd.to_numeric(value, errors="coerce")
    except (TypeError, ValueError):
        return None
    return None if is_missing(parsed) else float(parsed)


def round_number(value: Any, digits: int) -> Any:
    """Rounded as numpy rounds (scale, round half to even, unscale), not as ``round``."""
    if value is None or isinstance(value, bool):
        return value
    number = to_number(value)
    if number is None:
        return value  # not a number: kept, so that the cast reports it
    scale = 10.0**digits
    scaled = number * scale
    if not math.isfinite(scaled):
        return number
    rounded = round(scaled) / scale
    return rounded if math.isfinite(rounded) else number


RANGE_NOTE = " from 1700 to 4000"  # what Salesforce stores


def parse_timestamp(value: Any) -> datetime | pd.Timestamp | None:
    """ISO 8601 text to an aware UTC time; naive times are UTC; None when it is not a date
    or one outside what Salesforce stores (1700-01-01 .. 4000-12-31T00:00:00Z)."""
    stamp = _parse_timestamp(value)
    if stamp is None:
        return None
    earliest = datetime(1700, 1, 1, tzinfo=UTC)
    latest = datetime(4000, 12, 31, tzinfo=UTC)
    return stamp if earliest <= stamp <= latest else None


def _parse_timestamp(value: Any) -> datetime | pd.Timestamp | None:
    if value is None:
        return None
    if isinstance(value, pd.Timestamp):
        return value.tz_convert("UTC") if value.tzinfo else value.tz_localize("UTC")
    text = str(value)
    if text in ("now", "today"):  # pandas reads these as the current time
        return None
    if PLAIN_ISO.fullmatch(text):
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            return None
        if stamp.tzinfo is None:
            return stamp.replace(tzinfo=UTC)
        return stamp.astimezone(UTC)
    # A list, not the bare string: pandas reads a scalar differently (it stops at a NUL).
    parsed = pd.to_datetime([text], utc=True, errors="coerce", format="ISO8601")[0]
    return None if parsed is pd.NaT else parsed


def format_timestamp(stamp: datetime | pd.Timestamp, unit: str = "ms") -> str:
    day = f"{stamp.year:04d}-{stamp.month:02d}-{stamp.day:02d}"
    if unit == "D":
        return day
    millis = stamp.microsecond // 1000
    return f"{day}T{stamp.hour:02d}:{stamp.minute:02d}:{stamp.second:02d}.{millis:03d}+0000"


def to_datetime(value: Any, unit: str) -> Any:
    stamp = parse_timestamp(value)
    return value if stamp is None else format_timestamp(stamp, unit)


def render(template: str, row: Mapping[str, Any], kinds: Mapping[str, str]) -> str | None:
    pieces = list(string.Formatter().parse(template))
    if all(name is None for _, name, _, _ in pieces):
        return template
    out, present = [], False
    for literal, name, _, _ in pieces:
        out.append(literal)
        if name is not None:
            text = as_text(read(row, name, kinds))
            present = present or text is not None
            out.append(text or "")
    return "".join(out) if present else None


def evaluate(
    spec: FieldSpec,
    row: Mapping[str, Any],
    kinds: Mapping[str, str],
    tables: Mapping[str, Mapping[str, Any]],
) -> Any:
    """A field's value before the cast: origin, then every transform in turn."""
    if "value" in spec.model_fields_set:
        value: Any = spec.value
    elif spec.source is not None:
        value = read(row, spec.source, kinds)
    else:
        value = render(str(spec.template), row, kinds)
    for step in spec.transforms:
        name, arg = step.name, step.arg
        if name == "trim":
            value = trim(value)
        elif name == "lowercase":
            value = None if value is None else str(as_text(value)).lower()
        elif name == "uppercase":
            value = None if value is None else str(as_text(value)).upper()
        elif name == "clean_name":
            value = clean_name(value)
        elif name == "split_name":
            value = split_name(value, arg)
        elif name == "truncate":
            value = None if value is None else str(as_text(value))[:arg]
        elif name == "url":
            if value is not None:
                prefix, suffix = arg.split("{value}", 1)
                value = prefix + quote(str(as_text(value)), safe="", errors="ignore") + suffix
        elif name == "lookup":
            value = lookup(value, arg, tables)
        elif name == "coalesce":
            for column in arg:
                if value is None:
                    value = as_text(read(row, column, kinds))
        elif name == "default":
            value = arg if value is None else value
        elif name == "round":
            value = round_number(value, arg)
        elif name == "to_datetime":
            value = to_datetime(value, "ms")
        elif name == "to_date":
            value = to_datetime(value, "D")
    return value


# --- casting and checking one value ----------------------------------------------------------


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le", errors="surrogatepass")) // 2


def clean_text(value: Any) -> str | None:
    """No C0 controls (tab and newline stay), no lone surrogates, no blank values."""
    text = as_text(value)
    if text is None:
        return None
    text = CONTROL.sub("", text)
    return text if text.strip() else None


def preview(value: Any) -> str:
    return "'" + str(as_text(value))[:PREVIEW] + "'"


class Row:
    """Problems found in one row: rejections and warnings, each tagged with the field."""

    def __init__(self) -> None:
        self.rejects: list[tuple[str, str]] = []
        self.warnings: list[tuple[str, str]] = []

    def invalid(self, name: str, value: Any, what: str, policy: str) -> Any:
        reason = f"value {preview(value)} {what}"
        if policy == "reject":
            self.rejects.append((name, reason + " (policy: reject)"))
            return value
        self.warnings.append((name, reason + " (dropped)"))
        return None


def cast(name: str, spec: FieldSpec, value: Any, dest: DestinationField, row: Row) -> Any:
    kind = fieldtypes.family(dest.type)
    policy = spec.on_invalid or "drop"
    if kind == fieldtypes.STRING:
        text = clean_text(value)
        field_type = dest.type.lower()
        if text is not None and field_type == "email" and not EMAIL.fullmatch(text):
            text = row.invalid(name, text, "is not an email", policy)
        elif text is not None and field_type == "url" and not WEB_URL.fullmatch(text):
            text = row.invalid(name, text, "is not a web URL", policy)
        allowed = list(dest.picklist_values)
        if dest.restricted_picklist and allowed and text is not None and text not in allowed:
            shown = ", ".join(allowed[:SHOWN_PICKLIST_VALUES])
            more = ", ..." if len(allowed) > SHOWN_PICKLIST_VALUES else ""
            what = f"is not allowed in {name} (allowed: {shown}{more})"
            text = row.invalid(name, text, what, spec.on_invalid or "reject")
        if text is not None and dest.length:
            units = utf16_units(text)
            if units > dest.length:
                reason = f"value is {units} characters, {name} allows {dest.length}"
                if spec.on_too_long == "reject":
                    row.rejects.append((name, reason + " (policy: reject)"))
                else:
                    row.warnings.append((name, reason + " (truncated)"))
                    text = text[: dest.length]
                    while utf16_units(text) > dest.length:
                        text = text[:-1]
                    if not text.strip():  # what is left is blank: no value
                        text = None
        return text
    if kind in (fieldtypes.NUMERIC, fieldtypes.INTEGER):
        if value is None:
            return None
        number = to_number(value)
        if kind == fieldtypes.INTEGER:
            if number is None or not math.isfinite(number) or number % 1 or abs(number) >= 2**53:
                return row.invalid(name, value, "is not a whole number", policy)
            return int(number)
        if number is None or not math.isfinite(number):
            return row.invalid(name, value, "is not a number", policy)
        return number
    if kind == fieldtypes.BOOLEAN:
        if value is None or isinstance(value, bool):
            return value
        flag = BOOLEAN_WORDS.get(str(as_text(value)).strip().lower())
        if flag is None:
            return row.invalid(name, value, "is not true or false", policy)
        return flag
    if kind in (fieldtypes.DATETIME, fieldtypes.DATE):
        if value is None:
            return None
        unit = "ms" if kind == fieldtypes.DATETIME else "D"
        stamp = parse_timestamp(value)
        if stamp is None:
            what = "is not an ISO 8601 " + ("date-time" if unit == "ms" else "date") + RANGE_NOTE
            return row.invalid(name, value, what, policy)
        return format_timestamp(stamp, unit)
    return passthrough(value)


def passthrough(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    return clean_text(value)


def json_value(value: Any) -> Any:
    if is_missing(value):
        return None
    if isinstance(value, np.generic):
        return json_value(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bool | str | int):
        return value
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    return str(value)


# --- the loop --------------------------------------------------------------------------------


def map_rows(
    spec: MappingSpec,
    frame: pd.DataFrame,
    fields: Mapping[str, DestinationField] | None = None,
    *,
    key_column: str = "record_key",
    system: str = "salesforce",
) -> MappingResult:
    """``apply_spec``, row by row: same arguments, same result."""
    if key_column not in frame.columns:
        raise KeyError(f"{spec.origin}: input has no key column {key_column!r}")
    kinds = _column_kinds(frame)
    requires_create = spec.operation != "update"
    records: list[dict[str, Any]] = []
    keys: list[str] = []
    rejected: list[RecordProblem] = []
    warnings: list[RecordProblem] = []
    for raw in frame.to_dict("records"):
        row = {str(name): value for name, value in raw.items()}
        problems = Row()
        key = as_text(read(row, key_column, kinds))
        if key is None:
            problems.rejects.append((key_column, "record has no key"))
        record: dict[str, Any] = {}
        for name, field_spec in spec.fields.items():
            dest = fields.get(name) if fields is not None else None
            value = evaluate(field_spec, row, kinds, spec.lookups)
            value = cast(name, field_spec, value, dest, problems) if dest else passthrough(value)
            required = field_spec.required or (
                dest is not None and requires_create and dest.required_on_create
            )
            if required and value is None:
                problems.rejects.append((name, f"{name} is required but empty after mapping"))
            record[name] = value
        if problems.rejects:
            payload = {name: json_value(value) for name, value in row.items()}
            rejected.extend(
                RecordProblem(key or "", STAGE, system, reason, name, payload)
                for name, reason in problems.rejects
            )
            continue
        warnings.extend(
            RecordProblem(key or "", STAGE, system, reason, name, None)
            for name, reason in problems.warnings
        )
        records.append(record)
        keys.append(key or "")
    out = pd.DataFrame(records, index=pd.Index(keys, name=key_column, dtype="str"))
    return MappingResult(
        records=records, keys=keys, rejected=rejected, frame=out, warnings=warnings
    )
