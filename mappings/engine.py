"""Apply a mapping spec to a DataFrame, one column at a time, and validate the result.

The flow hands over one row per record; the engine evaluates every destination field as a
whole column (transforms, then a cast to the destination type, then length, picklist and
required checks) and only at the end splits rows into delivered records and rejected
ones. Python code runs per field and per transform, never per row, except to build the
output dicts and the problems of the rows that have them.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mappings import fieldtypes, text
from mappings.columnar import JoinedColumn
from mappings.spec import FieldSpec, MappingSpec
from mappings.transforms import (
    TRANSFORMS,
    TransformContext,
    as_text,
    column,
    format_datetime,
    is_text,
    null_series,
    parse_datetime,
)
from socialcrm.records import DestinationField, RecordProblem

STAGE = "mapping"

# Deliberately simple: one @, no spaces, a dot in the domain. Salesforce's own check is
# stricter in places, but anything failing this one is certainly refused.
EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")
WEB_URL = re.compile(r"https?://[^\s/?#]+\S*", re.IGNORECASE)
# The same rules over a NUL-joined column (mappings.columnar): each finds the values that
# do NOT fully match, starting at the value's separator so that the scan is one fast pass.
_INVALID_EMAIL = re.compile(r"\x00(?![^@\s\x00]+@[^@\s.\x00]+(?:\.[^@\s.\x00]+)+\x00)")
_INVALID_WEB_URL = re.compile(r"\x00(?!https?://[^\s/?#\x00]+[^\s\x00]*\x00)", re.IGNORECASE)
_NOT_SALESFORCE_DATETIME = re.compile(r"\x00(?!\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000\x00)")
_NOT_ISO_DATE = re.compile(r"\x00(?!\d{4}-\d\d-\d\d\x00)")


def _not_matching(values: pd.Series, invalid: re.Pattern[str]) -> pd.Series:
    """Non-null values found by one of the ``_INVALID``/``_NOT`` patterns (bool per row)."""
    return JoinedColumn.of(values).rows_matching(invalid)


_BOOLEAN_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
_PREVIEW = 40
_SHOWN_PICKLIST_VALUES = 6


@dataclass
class MappingResult:
    """Delivered records (JSON-safe, input order) and the rows that could not be mapped."""

    records: list[dict[str, Any]]
    keys: list[str]
    rejected: list[RecordProblem]
    frame: pd.DataFrame
    warnings: list[RecordProblem] = field(default_factory=list)


@dataclass
class _Issues:
    """Per-field problem columns, turned into RecordProblems once the kept rows are known."""

    rejects: list[tuple[str, pd.Series]] = field(default_factory=list)
    warnings: list[tuple[str, pd.Series]] = field(default_factory=list)

    def reject(self, name: str, reasons: pd.Series) -> None:
        if len(reasons):
            self.rejects.append((name, reasons))

    def warn(self, name: str, reasons: pd.Series) -> None:
        if len(reasons):
            self.warnings.append((name, reasons))


def _preview(values: pd.Series) -> pd.Series:
    shown = as_text(values).str.slice(0, _PREVIEW)
    return "'" + shown + "'"


def _render_template(template: str, frame: pd.DataFrame) -> pd.Series:
    """Placeholders filled column-wise; a row whose placeholders are all null is null."""
    pieces = list(string.Formatter().parse(template))
    if all(name is None for _, name, _, _ in pieces):
        return pd.Series(template, index=frame.index, dtype="str")
    rendered = pd.Series("", index=frame.index, dtype="str")
    present = pd.Series(False, index=frame.index)
    for literal, name, _, _ in pieces:
        if literal:
            rendered = rendered + literal
        if name is not None:
            values = as_text(column(frame, name))
            present = present | values.notna()
            rendered = rendered + values.fillna("")
    return rendered.where(present)


def _constant(value: Any, index: pd.Index) -> pd.Series:
    if value is None:
        return null_series(index)
    return pd.Series(value, index=index, dtype="str" if isinstance(value, str) else None)


def _evaluate(spec: FieldSpec, ctx: TransformContext, cache: dict[tuple[Any, ...], Any]) -> Any:
    """A field's column before validation.

    Results are cached by (origin, transform prefix): FirstName and LastName both start
    with ``display_name`` + ``clean_name``, which then runs once.
    """
    if "value" in spec.model_fields_set:
        key: tuple[Any, ...] = ("value", repr(spec.value))
        series = _constant(spec.value, ctx.frame.index)
    elif spec.source is not None:
        key = ("source", spec.source)
        series = column(ctx.frame, spec.source)
    else:
        key = ("template", spec.template)
        rendered = cache.get(key)
        series = (
            rendered if rendered is not None else _render_template(str(spec.template), ctx.frame)
        )
    cache[key] = series
    for step in spec.transforms:
        key = (*key, step.name, repr(step.arg))
        cached = cache.get(key)
        if cached is None:
            cached = TRANSFORMS[step.name].apply(series, step.arg, ctx)
            cache[key] = cached
        series = cached
    return series


def _clean_text(series: pd.Series) -> pd.Series:
    """Text as Salesforce accepts it: no C0 controls or lone surrogates, no blank values."""
    joined = JoinedColumn.of(as_text(series))
    values = joined.values
    if text.CONTROL_CHARS_BUT_NUL.search(joined.text):
        values = values.str.replace(text.CONTROL_CHARS, "", regex=True)
        joined = JoinedColumn.of(values)
    blank = joined.rows_matching(text.BLANK_VALUE)
    return values.where(~blank) if blank.any() else values


def _utf16_length(values: pd.Series, limit: int) -> pd.Series:
    """Length as Salesforce counts it: UTF-16 units, so an emoji counts twice.

    Only values longer than half the limit can exceed it, so only those are encoded.
    """
    lengths = values.str.len().fillna(0).astype("int64")
    maybe = lengths * 2 > limit
    if maybe.any():
        encoded = values[maybe].str.encode("utf-16-le", errors="surrogatepass")
        units = encoded.str.len() // 2  # type: ignore[misc]
        lengths = lengths.where(~maybe, units).astype("int64")
    return lengths


def _cut_to(values: pd.Series, limit: int) -> pd.Series:
    """Truncate to the longest prefix of at most ``limit`` UTF-16 units.

    Cutting ceil(excess / 2) characters never cuts too much (a character is at most two
    units), so a few rounds reach the longest fitting prefix. Each round slices the rows
    sharing a target length together: a loop over distinct lengths, not over rows.
    """
    cut = values.str.slice(0, limit)
    while True:
        excess = _utf16_length(cut, limit) - limit
        over = excess > 0
        if not over.any():
            return cut
        target = cut[over].str.len().astype("int64") - (excess[over] + 1) // 2
        for length in sorted(set(target.tolist())):
            rows = target.index[target == length]
            cut = cut.where(~cut.index.isin(rows), cut[rows].str.slice(0, length))


def _check_length(
    name: str, spec: FieldSpec, values: pd.Series, limit: int, issues: _Issues
) -> pd.Series:
    lengths = _utf16_length(values, limit)
    too_long = lengths > limit
    if not too_long.any():
        return values
    described = (
        "value is " + lengths[too_long].astype("str") + f" characters, {name} allows {limit}"
    )
    if spec.on_too_long == "reject":
        issues.reject(name, described + " (policy: reject)")
        return values
    issues.warn(name, described + " (truncated)")
    return values.where(~too_long, _cut_to(values[too_long], limit))


def _invalid(
    name: str,
    values: pd.Series,
    bad: pd.Series,
    what: str,
    policy: str,
    issues: _Issues,
    original: pd.Series,
) -> pd.Series:
    """Apply ``on_invalid`` to the rows in ``bad``: null + warning, or reject."""
    if not bad.any():
        return values
    reasons = "value " + _preview(original[bad]) + f" {what}"
    if policy == "reject":
        issues.reject(name, reasons + " (policy: reject)")
        return values
    issues.warn(name, reasons + " (dropped)")
    return values.where(~bad)


def _cast(
    name: str, spec: FieldSpec, series: pd.Series, dest: DestinationField, issues: _Issues
) -> pd.Series:
    kind = fieldtypes.family(dest.type)
    policy = spec.on_invalid or "drop"
    present = series.notna()
    if kind == fieldtypes.STRING:
        values = _clean_text(series)
        field_type = dest.type.lower()
        if field_type == "email":
            bad = _not_matching(values, _INVALID_EMAIL)
            values = _invalid(name, values, bad, "is not an email", policy, issues, values)
        elif field_type == "url":
            bad = _not_matching(values, _INVALID_WEB_URL)
            values = _invalid(name, values, bad, "is not a web URL", policy, issues, values)
        if dest.restricted_picklist and dest.picklist_values:
            allowed = list(dest.picklist_values)
            bad = values.notna() & ~values.isin(allowed)
            shown = ", ".join(allowed[:_SHOWN_PICKLIST_VALUES])
            more = ", ..." if len(allowed) > _SHOWN_PICKLIST_VALUES else ""
            what = f"is not allowed in {name} (allowed: {shown}{more})"
            values = _invalid(name, values, bad, what, spec.on_invalid or "reject", issues, values)
        if dest.length:
            values = _check_length(name, spec, values, dest.length, issues)
        return values
    if kind in (fieldtypes.NUMERIC, fieldtypes.INTEGER):
        if pd.api.types.is_bool_dtype(series.dtype):
            series = series.astype("float64")
        numbers = pd.to_numeric(series, errors="coerce").astype("float64")
        finite = np.isfinite(numbers)
        if kind == fieldtypes.INTEGER:
            whole = finite & (numbers % 1 == 0) & (numbers.abs() < 2**53)
            numbers = numbers.where(whole)
            numbers = _invalid(
                name, numbers, present & ~whole, "is not a whole number", policy, issues, series
            )
            return numbers.astype("Int64")
        numbers = numbers.where(finite)
        return _invalid(name, numbers, present & ~finite, "is not a number", policy, issues, series)
    if kind == fieldtypes.BOOLEAN:
        if pd.api.types.is_bool_dtype(series.dtype):
            return series.astype("boolean")
        flags = as_text(series).str.strip().str.lower().map(_BOOLEAN_WORDS)
        flags = _invalid(
            name, flags, present & flags.isna(), "is not true or false", policy, issues, series
        )
        return flags.astype("boolean")
    if kind in (fieldtypes.DATETIME, fieldtypes.DATE):
        unit = "ms" if kind == fieldtypes.DATETIME else "D"
        expected = _NOT_SALESFORCE_DATETIME if unit == "ms" else _NOT_ISO_DATE
        if is_text(series) and not _not_matching(series, expected).any():
            return series  # already written by to_datetime / to_date: no second parse
        parsed = parse_datetime(series)
        printed = format_datetime(parsed, unit=unit)
        what = "is not an ISO 8601 " + ("date-time" if unit == "ms" else "date")
        return _invalid(name, printed, present & parsed.isna(), what, policy, issues, series)
    return _passthrough(series)


def _passthrough(series: pd.Series) -> pd.Series:
    """Without a known destination type: numbers and booleans stay, everything else is text."""
    if pd.api.types.is_bool_dtype(series.dtype) or (
        pd.api.types.is_numeric_dtype(series.dtype) and not is_text(series)
    ):
        if pd.api.types.is_float_dtype(series.dtype):
            return series.where(np.isfinite(series.astype("float64")))
        return series
    return _clean_text(series)


def _finish(
    name: str,
    spec: FieldSpec,
    series: pd.Series,
    dest: DestinationField | None,
    required: bool,
    issues: _Issues,
) -> pd.Series:
    """Cast and validate one mapped column; problems go to ``issues``."""
    series = _cast(name, spec, series, dest, issues) if dest is not None else _passthrough(series)
    if required:
        empty = series.isna()
        if empty.any():
            what = f"{name} is required but empty after mapping"
            issues.reject(name, pd.Series(what, index=series.index)[empty])
    return series


def _constant_column(
    name: str, spec: FieldSpec, dest: DestinationField | None, required: bool, index: pd.Index
) -> pd.Series | None:
    """A constant is validated once on one row and repeated; None if it has a problem."""
    issues = _Issues()
    single = _finish(name, spec, _constant(spec.value, pd.RangeIndex(1)), dest, required, issues)
    if issues.rejects or issues.warnings:
        return None
    value = single.iloc[0]
    if pd.isna(value):
        return pd.Series(np.nan, index=index, dtype=single.dtype)
    return pd.Series(value, index=index, dtype=single.dtype)


def _json_value(value: Any) -> Any:
    """One value as JSON allows it; only used for object columns and rejected payloads."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _json_value(value.item())
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _json_value(item) for key, item in value.items()}
    return str(value)


def _json_column(series: pd.Series) -> list[Any]:
    """A column as JSON-safe Python values: None for every kind of missing."""
    if pd.api.types.is_float_dtype(series.dtype):
        finite = series.where(np.isfinite(series.astype("float64")))
        return finite.astype(object).where(finite.notna(), None).tolist()
    plain = series.astype(object).where(series.notna(), None).tolist()
    if is_text(series) or isinstance(series.dtype, pd.BooleanDtype | pd.Int64Dtype):
        return plain
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_integer_dtype(series.dtype):
        return plain
    return [_json_value(value) for value in plain]


def json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts that ``json.dumps(..., allow_nan=False)`` accepts."""
    names = [str(name) for name in frame.columns]
    columns = [_json_column(frame.iloc[:, i]) for i in range(frame.shape[1])]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _problems(
    found: list[tuple[str, pd.Series]],
    rows: np.ndarray,
    keys: list[str],
    system: str,
    payloads: dict[int, dict[str, Any]] | None,
) -> list[RecordProblem]:
    """RecordProblems for the given rows, ordered by row then by field."""
    order = {name: i for i, (name, _) in enumerate(found)}
    wanted = set(rows.tolist())
    items: list[tuple[int, int, RecordProblem]] = []
    for name, reasons in found:
        for position, reason in reasons.items():
            row = int(position)  # type: ignore[call-overload]
            if row not in wanted:
                continue
            problem = RecordProblem(
                record_key=keys[row],
                stage=STAGE,
                system=system,
                reason=str(reason),
                field=name,
                payload=payloads.get(row) if payloads is not None else None,
            )
            items.append((row, order[name], problem))
    items.sort(key=lambda item: (item[0], item[1]))
    return [problem for _, _, problem in items]


def apply_spec(
    spec: MappingSpec,
    frame: pd.DataFrame,
    fields: Mapping[str, DestinationField] | None = None,
    *,
    key_column: str = "record_key",
    system: str = "salesforce",
) -> MappingResult:
    """Map every row of ``frame`` to a destination record.

    Args:
        spec: the loaded mapping spec.
        frame: one row per record, flat (dotted) columns; absent columns count as empty.
        fields: destination metadata by field name; when given, values are cast to the
            field types and checked for length, picklist and required-ness.
        key_column: the column holding each row's record key (carried into problems).
        system: the destination system, recorded on every problem.

    Returns:
        Records for the rows that passed, in input order, and one RecordProblem per
        (rejected row, failing field); truncations and dropped values as warnings.
    """
    if key_column not in frame.columns:
        raise KeyError(f"{spec.origin}: input has no key column {key_column!r}")
    work = frame.reset_index(drop=True)
    key_text = as_text(work[key_column])
    keys = key_text.fillna("").tolist()
    ctx = TransformContext(frame=work, lookups=spec.lookups)
    issues = _Issues()
    cache: dict[tuple[Any, ...], Any] = {}
    requires_create = spec.operation != "update"
    mapped: dict[str, pd.Series] = {}

    missing_key = key_text.isna()
    if missing_key.any():
        issues.reject(key_column, pd.Series("record has no key", index=work.index)[missing_key])

    for name, field_spec in spec.fields.items():
        dest = fields.get(name) if fields is not None else None
        required = field_spec.required or (
            dest is not None and requires_create and dest.required_on_create
        )
        if "value" in field_spec.model_fields_set and not field_spec.transforms:
            constant = _constant_column(name, field_spec, dest, required, work.index)
            if constant is not None:
                mapped[name] = constant
                continue
        mapped[name] = _finish(
            name, field_spec, _evaluate(field_spec, ctx, cache), dest, required, issues
        )

    rejected_mask = np.zeros(len(work), dtype=bool)
    for _, reasons in issues.rejects:
        rejected_mask[reasons.index.to_numpy()] = True
    kept = np.flatnonzero(~rejected_mask)
    rejected_rows = np.flatnonzero(rejected_mask)

    payload_rows = json_records(work.iloc[rejected_rows])
    payloads = dict(zip(rejected_rows.tolist(), payload_rows, strict=True))
    rejected = _problems(issues.rejects, rejected_rows, keys, system, payloads)
    warnings = _problems(issues.warnings, kept, keys, system, None)

    kept_keys = [keys[i] for i in kept]
    out = pd.DataFrame(mapped, index=work.index).iloc[kept]
    out.index = pd.Index(kept_keys, name=key_column, dtype="str")
    return MappingResult(
        records=json_records(out),
        keys=kept_keys,
        rejected=rejected,
        frame=out,
        warnings=warnings,
    )
