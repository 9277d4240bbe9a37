"""Casting mapped columns to destination types and checking them, one column at a time.

Each check yields a column of reasons for the rows it fails; the engine turns those into
RecordProblems only once it knows which rows are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mappings import fieldtypes, text
from mappings.columnar import JoinedColumn
from mappings.spec import FieldSpec
from mappings.transforms import as_text, format_datetime, is_text, parse_datetime
from socialcrm.records import DestinationField

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
class Issues:
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
    name: str, spec: FieldSpec, values: pd.Series, limit: int, issues: Issues
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
    issues: Issues,
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


def cast(
    name: str, spec: FieldSpec, series: pd.Series, dest: DestinationField, issues: Issues
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
    return passthrough(series)


def passthrough(series: pd.Series) -> pd.Series:
    """Without a known destination type: numbers and booleans stay, everything else is text."""
    if pd.api.types.is_bool_dtype(series.dtype) or (
        pd.api.types.is_numeric_dtype(series.dtype) and not is_text(series)
    ):
        if pd.api.types.is_float_dtype(series.dtype):
            return series.where(np.isfinite(series.astype("float64")))
        return series
    return _clean_text(series)
