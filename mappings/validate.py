"""Casting mapped columns to destination types and checking them, one column at a time.

Each check yields a column of reasons for the rows it fails; the engine turns those into
RecordProblems only once it knows which rows are kept. Text checks find the few values
that fail in one pass over the column (mappings.columnar) and build reasons for those only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np
import pandas as pd

from mappings import fieldtypes, text
from mappings.columnar import CONTROLS, WHITESPACE, Joined, Memo
from mappings.spec import FieldSpec
from mappings.transforms import (
    EARLIEST,
    FORMATTED,
    LATEST,
    as_text,
    format_datetime,
    is_text,
    parse_datetime,
)
from socialcrm.records import DestinationField

# Deliberately simple: one @, no spaces, a dot in the domain. Salesforce's own check is
# stricter in places, but anything failing this one is certainly refused.
EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")
WEB_URL = re.compile(r"https?://[^\s/?#]+\S*", re.IGNORECASE)
# The same rules over a NUL-joined column (mappings.columnar): each finds the values that
# do NOT fully match, starting at the value's separator so that the scan is one fast pass.
_INVALID_EMAIL = re.compile(r"\x00(?![^@\s\x00]+@[^@\s.\x00]+(?:\.[^@\s.\x00]+)+\x00)")
# ``https?`` in any case spelt out: IGNORECASE would fold every character of the scan.
# (Under IGNORECASE "s" also matches "ſ", U+017F, which WEB_URL accepts: so does this.)
_INVALID_WEB_URL = re.compile(r"\x00(?![hH][tT][tT][pP][sSſ]?://[^\s/?#\x00]+[^\s\x00]*\x00)")
# A value ``_clean_value`` changes: one holding a control character or a lone surrogate
# (NUL is gone already: mappings.columnar removes it), or a blank one.
_CONTROLS = "\x01-\x08\x0b-\x1f\x7f\ud800-\udfff"
_CLEANING_NEEDED = re.compile(f"\x00(?:[^\x00{_CONTROLS}]*+[{_CONTROLS}]|\\s*+(?=\x00))")
# C0 controls but tab and newline, DEL, and the first byte of an encoded surrogate.
_SUSPECT_BYTES = bytes([*range(0, 9), *range(11, 32), 127, 0xED])

RANGE_NOTE = f" from {EARLIEST.year} to {LATEST.year}"  # the dates Salesforce stores
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


# --- text ----------------------------------------------------------------------------------


def _clean_value(value: str) -> str | None:
    value = text.CONTROL_CHARS.sub("", value)
    return value if value.strip() else None


def _items_needing_cleaning(items: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Values ``_clean_value`` may change, for long text, where joining costs more than this.

    Every step is a ``str`` or ``bytes`` method mapped in C, one pass a value: UTF-8 keeps
    each control character as one byte, and a lone surrogate encodes (with
    ``surrogatepass``) to a three-byte sequence starting with ``0xED``, as do some Hangul
    syllables. ``bytes.translate`` deletes those bytes: a value it shortens is a candidate,
    and the caller's ``_clean_value`` keeps the ones that did not change. Returns (the
    candidates' indices, each value's UTF-8 size, which is at least its length in UTF-16
    units). Values are encoded a slice at a time, so that the copies stay small.
    """
    found, sizes = [], []
    for start in range(0, len(items), _SLICE):
        chunk = items[start : start + _SLICE]
        count = len(chunk)
        encoded = list(map(str.encode, chunk, repeat("utf-8"), repeat("surrogatepass")))
        size = np.fromiter(map(len, encoded), np.int64, count)
        kept = map(bytes.translate, encoded, repeat(None), repeat(_SUSPECT_BYTES))
        suspect = np.fromiter(map(len, kept), np.int64, count) != size
        blank = (size == 0) | np.fromiter(map(str.isspace, chunk), bool, count)
        found.append(np.flatnonzero(suspect | blank) + start)
        sizes.append(size)
    if not found:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(found), np.concatenate(sizes)


_SLICE = 512  # values a slice: their UTF-8 copies stay in the CPU cache across the passes


def _clean_text(series: pd.Series, memo: Memo | None = None) -> Joined:
    """Text as Salesforce accepts it: no C0 controls or lone surrogates, no blank values."""
    joined = Joined.of(as_text(series), memo)
    if joined.long():
        found, joined.unit_bound = _items_needing_cleaning(joined.items)
    elif joined.units().exact:
        units = joined.units()
        found = np.union1d(
            np.union1d(units.items_with(CONTROLS), units.items_with_lone_surrogates()),
            units.items_starting_or_ending_with(WHITESPACE),  # blank values start so
        )
    else:
        found = joined.items_matching(_CLEANING_NEEDED)
    items = joined.items
    changed = [(i, _clean_value(items[i])) for i in found.tolist()]
    changed = [(i, value) for i, value in changed if value != items[i]]
    if not changed:
        return joined
    found = np.fromiter((i for i, _ in changed), np.int64, len(changed))
    return joined.patch(found, [value for _, value in changed], memo)


def utf16_units(value: str) -> int:
    """Length as Salesforce counts it: UTF-16 units, so an emoji counts twice."""
    if value.isascii():
        return len(value)
    return len(value.encode("utf-16-le", errors="surrogatepass")) // 2


def _cut_to(value: str, limit: int) -> str:
    """The longest prefix of at most ``limit`` UTF-16 units.

    Cutting ceil(excess / 2) characters never cuts too much (a character is at most two
    units), so a few rounds reach the longest fitting prefix.
    """
    cut = value[:limit]
    while (excess := utf16_units(cut) - limit) > 0:
        cut = cut[: len(cut) - (excess + 1) // 2]
    return cut


def _reasons(reasons: list[str], rows: np.ndarray, suffix: str) -> pd.Series:
    return pd.Series([reason + suffix for reason in reasons], index=rows, dtype="str")


class _TextChecks:
    """The checks of one text column, each building reasons for the values that fail it.

    A value dropped by a check (null + warning) is left out of the checks after it; a
    truncated value replaces the original. ``result`` builds the column once, at the end.
    """

    def __init__(self, name: str, joined: Joined, issues: Issues, memo: Memo | None) -> None:
        self.name = name
        self.joined = joined
        self.issues = issues
        self.memo = memo
        self.dropped = np.zeros(joined.count, dtype=bool)
        self.cut: dict[int, str | None] = {}

    def invalid(self, found: np.ndarray, what: str, policy: str) -> None:
        """Apply ``on_invalid`` to the values at ``found`` (indices into the items)."""
        found = found[~self.dropped[found]]
        if not len(found):
            return
        items = self.joined.items
        reasons = [f"value '{items[i][:_PREVIEW]}' {what}" for i in found.tolist()]
        rows = self.joined.row_of(found)
        if policy == "reject":
            self.issues.reject(self.name, _reasons(reasons, rows, " (policy: reject)"))
            return
        self.issues.warn(self.name, _reasons(reasons, rows, " (dropped)"))
        self.dropped[found] = True

    def not_allowed(self, allowed: tuple[str, ...]) -> np.ndarray:
        choices = frozenset(allowed)
        found = self.joined.items_where(choices.__contains__)
        return np.setdiff1d(np.arange(self.joined.count), found, assume_unique=True)

    def length(self, limit: int, on_too_long: str) -> None:
        joined = self.joined
        items = joined.items
        if joined.long():  # not joined: count the units of the values that may be too long
            bound = joined.lengths() * 2 if joined.unit_bound is None else joined.unit_bound
            maybe = np.flatnonzero((bound > limit) & ~self.dropped)
            counts = [utf16_units(items[i]) for i in maybe.tolist()]
            units = np.fromiter(counts, np.int64, len(maybe))
        else:
            units = joined.units().lengths()
            maybe = np.flatnonzero((units > limit) & ~self.dropped)
            units = units[maybe]
        over = units > limit
        if not over.any():
            return
        found = maybe[over]
        name = self.name
        reasons = [f"value is {count} characters, {name} allows {limit}" for count in units[over]]
        rows = joined.row_of(found)
        if on_too_long == "reject":
            self.issues.reject(name, _reasons(reasons, rows, " (policy: reject)"))
            return
        self.issues.warn(name, _reasons(reasons, rows, " (truncated)"))
        for i in found.tolist():
            cut = _cut_to(items[i], limit)
            self.cut[i] = cut if cut.strip() else None  # what is left is blank: no value

    def result(self) -> pd.Series:
        joined = self.joined
        if not self.dropped.any() and not self.cut:
            return joined.as_series()
        changes: dict[int, str | None] = dict.fromkeys(np.flatnonzero(self.dropped).tolist())
        changes.update(self.cut)
        found = np.fromiter(changes, np.int64, len(changes))
        return joined.patch(found, list(changes.values()), self.memo).as_series()


def _cast_text(
    name: str,
    spec: FieldSpec,
    series: pd.Series,
    dest: DestinationField,
    issues: Issues,
    memo: Memo | None,
) -> pd.Series:
    policy = spec.on_invalid or "drop"
    checks = _TextChecks(name, _clean_text(series, memo), issues, memo)
    field_type = dest.type.lower()
    if field_type == "email":
        found = checks.joined.items_matching(_INVALID_EMAIL)
        checks.invalid(found, "is not an email", policy)
    elif field_type == "url":
        joined = checks.joined
        if joined.count and joined.units().exact:
            found = joined.units().items_not_web_urls()
        else:
            found = joined.items_matching(_INVALID_WEB_URL)
        checks.invalid(found, "is not a web URL", policy)
    if dest.restricted_picklist and dest.picklist_values:
        allowed = dest.picklist_values
        shown = ", ".join(allowed[:_SHOWN_PICKLIST_VALUES])
        more = ", ..." if len(allowed) > _SHOWN_PICKLIST_VALUES else ""
        what = f"is not allowed in {name} (allowed: {shown}{more})"
        checks.invalid(checks.not_allowed(allowed), what, spec.on_invalid or "reject")
    if dest.length:
        checks.length(dest.length, spec.on_too_long)
    return checks.result()


# --- everything else -------------------------------------------------------------------------


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


def _cast_datetime(series: pd.Series, unit: str, memo: Memo | None) -> tuple[pd.Series, pd.Series]:
    """(Salesforce text, rows that are not dates)."""
    formatted = memo.get((FORMATTED, unit, id(series))) if memo is not None else None
    if formatted is not None and formatted[0] is series:
        # Written by to_datetime / to_date: the rows it parsed are printed already, and
        # the rows it kept unparsed would fail the same parse again.
        failed = series.notna().to_numpy() & ~formatted[1]
        return series, pd.Series(failed, index=series.index)
    parsed = parse_datetime(series)
    return format_datetime(parsed, unit=unit), series.notna() & parsed.isna()


def cast(
    name: str,
    spec: FieldSpec,
    series: pd.Series,
    dest: DestinationField,
    issues: Issues,
    memo: Memo | None = None,
) -> pd.Series:
    kind = fieldtypes.family(dest.type)
    policy = spec.on_invalid or "drop"
    if kind == fieldtypes.STRING:
        return _cast_text(name, spec, series, dest, issues, memo)
    present = series.notna()
    if kind in (fieldtypes.NUMERIC, fieldtypes.INTEGER):
        if pd.api.types.is_bool_dtype(series.dtype):
            series = series.astype("float64")
        # NaT would become the smallest int64, a finite number: missing stays missing.
        numbers = pd.to_numeric(series, errors="coerce").astype("float64").where(present)
        finite = np.isfinite(numbers)
        if kind == fieldtypes.INTEGER:
            whole = finite & (numbers % 1 == 0) & (numbers.abs() < 2**53)
            numbers = numbers.where(whole)
            numbers = _invalid(
                name, numbers, present & ~whole, "is not a whole number", policy, issues, series
            )
            return numbers.astype("Int64")
        if not finite.all():
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
        printed, failed = _cast_datetime(series, unit, memo)
        what = "is not an ISO 8601 " + ("date-time" if unit == "ms" else "date") + RANGE_NOTE
        return _invalid(name, printed, failed, what, policy, issues, series)
    return passthrough(series, memo)


def passthrough(series: pd.Series, memo: Memo | None = None) -> pd.Series:
    """Without a known destination type: numbers and booleans stay, everything else is text."""
    if pd.api.types.is_bool_dtype(series.dtype) or (
        pd.api.types.is_numeric_dtype(series.dtype) and not is_text(series)
    ):
        if pd.api.types.is_float_dtype(series.dtype):
            return series.where(np.isfinite(series.astype("float64")))
        return series
    return _clean_text(series, memo).as_series()
