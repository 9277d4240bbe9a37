"""Apply a mapping spec to a DataFrame, one column at a time, and validate the result.

The flow hands over one row per record; the engine evaluates every destination field as a
whole column (transforms, then a cast to the destination type, then length, picklist and
required checks) and only at the end splits rows into delivered records and rejected
ones. Python code runs per field and per transform, never per row, except for the few
values a step changes (found in one pass over the column: mappings.columnar), to build the
output dicts, and for the problems of the rows that have them.
"""

from __future__ import annotations

import gc
import string
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import compress
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd

from mappings.columnar import Joined
from mappings.jsonsafe import build_records, json_records, json_value
from mappings.spec import FieldSpec, MappingSpec
from mappings.transforms import (
    TRANSFORMS,
    TransformContext,
    as_text,
    column,
    is_text,
    null_series,
)
from mappings.validate import EMAIL, WEB_URL, Issues, cast, passthrough
from socialcrm.records import DestinationField, RecordProblem

__all__ = ["EMAIL", "STAGE", "WEB_URL", "MappingResult", "apply_spec", "json_records"]

STAGE = "mapping"


@dataclass
class MappingResult:
    """Delivered records (JSON-safe, input order) and the rows that could not be mapped."""

    records: list[dict[str, Any]]
    keys: list[str]
    rejected: list[RecordProblem]
    frame: pd.DataFrame
    warnings: list[RecordProblem] = field(default_factory=list)


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


def _finish(
    name: str,
    spec: FieldSpec,
    series: pd.Series,
    dest: DestinationField | None,
    required: bool,
    issues: Issues,
    memo: dict[Any, Any] | None = None,
) -> pd.Series:
    """Cast and validate one mapped column; problems go to ``issues``."""
    if dest is not None:
        series = cast(name, spec, series, dest, issues, memo)
    else:
        series = passthrough(series, memo)
    if required:
        _reject_empty(name, series, issues)
    return series


def _reject_empty(name: str, series: pd.Series, issues: Issues) -> None:
    """A required field left empty rejects its row, unless the field rejected it already
    (a value that is not a number is rejected once, not once more for being empty)."""
    empty = np.flatnonzero(series.isna().to_numpy())
    rejected = [reasons.index.to_numpy() for field, reasons in issues.rejects if field == name]
    if rejected and len(empty):
        empty = np.setdiff1d(empty, np.concatenate(rejected))
    if len(empty):
        what = f"{name} is required but empty after mapping"
        issues.reject(name, pd.Series(what, index=empty, dtype="str"))


# Transforms whose value in a row depends on that row's value alone (coalesce reads others).
_VALUE_LOCAL = frozenset(TRANSFORMS) - {"coalesce"}
_FEW_VALUES_FROM = 2_000  # rows: below this, factorizing costs more than it saves
_FEW_VALUES = 64  # distinct values in a sample of about 1,000 rows


def _distinct_values(series: pd.Series) -> tuple[np.ndarray, pd.Series] | None:
    """(a code per row, the distinct values, null included) for a text column with few.

    Platforms, countries, cities: such a field is mapped once per distinct value and
    spread back to the rows, which gives the same result (every transform but coalesce
    and every check depend on the row's own value only).
    """
    if len(series) < _FEW_VALUES_FROM or not is_text(series):
        return None
    sample = series.iloc[:: len(series) // 1000]
    if sample.nunique(dropna=False) > _FEW_VALUES:
        return None
    codes, distinct = pd.factorize(series, use_na_sentinel=False)
    if len(distinct) * 8 > len(series):
        return None
    return codes, pd.Series(distinct, dtype=series.dtype)


def _spread(reasons: pd.Series, codes: np.ndarray) -> pd.Series:
    """Reasons found per distinct value, for every row holding that value."""
    which = np.full(int(codes.max()) + 1, -1, dtype=np.int64)
    which[reasons.index.to_numpy()] = np.arange(len(reasons))
    per_row = which[codes]
    rows = np.flatnonzero(per_row >= 0)
    return pd.Series(reasons.to_numpy()[per_row[rows]], index=rows, dtype="str")


def _finish_distinct(
    name: str,
    spec: FieldSpec,
    dest: DestinationField | None,
    required: bool,
    distinct: tuple[np.ndarray, pd.Series],
    ctx: TransformContext,
    issues: Issues,
) -> pd.Series:
    """A field mapped on its source's distinct values (``_distinct_values``), then spread."""
    codes, values = distinct
    assert spec.source is not None
    small = TransformContext(frame=pd.DataFrame({spec.source: values}), lookups=ctx.lookups)
    found = Issues()
    mapped = _finish(name, spec, _evaluate(spec, small, {}), dest, False, found, small.memo)
    for field_name, reasons in found.rejects:
        issues.reject(field_name, _spread(reasons, codes))
    for field_name, reasons in found.warnings:
        issues.warn(field_name, _spread(reasons, codes))
    series = pd.Series(pd.api.extensions.take(mapped.array, codes), index=ctx.frame.index)
    if required:
        _reject_empty(name, series, issues)
    return series


def _constant_column(
    name: str, spec: FieldSpec, dest: DestinationField | None, required: bool, index: pd.Index
) -> pd.Series | None:
    """A constant is validated once on one row and repeated; None if it has a problem."""
    issues = Issues()
    single = _finish(name, spec, _constant(spec.value, pd.RangeIndex(1)), dest, required, issues)
    if issues.rejects or issues.warnings:
        return None
    value = single.iloc[0]
    if pd.isna(value):
        return pd.Series(np.nan, index=index, dtype=single.dtype)
    return pd.Series(value, index=index, dtype=single.dtype)


def _problems(
    found: list[tuple[str, pd.Series]],
    wanted: np.ndarray,
    keys: list[str],
    system: str,
    payloads: dict[int, dict[str, Any]] | None,
) -> list[RecordProblem]:
    """RecordProblems for the rows ``wanted`` (a mask), ordered by row then by field."""
    order = {name: i for i, (name, _) in enumerate(found)}
    items: list[tuple[int, int, RecordProblem]] = []
    for name, reasons in found:
        rows = reasons.index.to_numpy()
        texts = reasons.to_numpy()
        keep = wanted[rows]
        if not keep.all():
            rows, texts = rows[keep], texts[keep]
        rank = order[name]
        for row, reason in zip(rows.tolist(), texts.tolist(), strict=True):
            payload = payloads.get(row) if payloads is not None else None
            problem = RecordProblem(keys[row], STAGE, system, str(reason), name, payload)
            items.append((row, rank, problem))
    items.sort(key=itemgetter(0, 1))
    return [problem for _, _, problem in items]


class _CollectorPause:
    """Pauses Python's cycle collector while mappings run, in any number of threads.

    A mapping allocates millions of objects and no reference cycle: every collection it
    triggers walks lists of a million values for nothing (a sixth of the time at 300,000
    rows). Reference counting still frees everything; the collector resumes (if it was
    on) when the last running mapping ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._resume = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._running == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0 and self._resume:
                    gc.enable()


collector_paused = _CollectorPause()


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
    with collector_paused():
        return _apply(spec, frame, fields, key_column, system)


def _apply(
    spec: MappingSpec,
    frame: pd.DataFrame,
    fields: Mapping[str, DestinationField] | None,
    key_column: str,
    system: str,
) -> MappingResult:
    work = frame.reset_index(drop=True)
    key_text = as_text(work[key_column])
    keys = key_text.fillna("").tolist()
    ctx = TransformContext(frame=work, lookups=spec.lookups)
    issues = Issues()
    cache: dict[tuple[Any, ...], Any] = {}
    requires_create = spec.operation != "update"
    mapped: dict[str, pd.Series] = {}
    constants: dict[str, Any] = {}  # fields holding one value in every row

    missing_key = np.flatnonzero(key_text.isna().to_numpy())
    if len(missing_key):
        issues.reject(key_column, pd.Series("record has no key", index=missing_key, dtype="str"))

    for name, field_spec in spec.fields.items():
        dest = fields.get(name) if fields is not None else None
        required = field_spec.required or (
            dest is not None and requires_create and dest.required_on_create
        )
        if "value" in field_spec.model_fields_set and not field_spec.transforms:
            constant = _constant_column(name, field_spec, dest, required, work.index)
            if constant is not None:
                mapped[name] = constant
                constants[name] = json_value(constant.iloc[0]) if len(constant) else None
                continue
        if field_spec.source is not None and all(
            step.name in _VALUE_LOCAL for step in field_spec.transforms
        ):
            distinct = _distinct_values(column(work, field_spec.source))
            if distinct is not None:
                mapped[name] = _finish_distinct(
                    name, field_spec, dest, required, distinct, ctx, issues
                )
                continue
        series = _evaluate(field_spec, ctx, cache)
        mapped[name] = _finish(name, field_spec, series, dest, required, issues, ctx.memo)
        for kept in ctx.memo.values():
            if isinstance(kept, Joined):  # a field's joined texts are not read again
                kept.release()

    rejected_mask = np.zeros(len(work), dtype=bool)
    for _, reasons in issues.rejects:
        rejected_mask[reasons.index.to_numpy()] = True
    kept = np.flatnonzero(~rejected_mask)
    rejected_rows = np.flatnonzero(rejected_mask)

    payload_rows = json_records(work.iloc[rejected_rows])
    payloads = dict(zip(rejected_rows.tolist(), payload_rows, strict=True))
    rejected = _problems(issues.rejects, rejected_mask, keys, system, payloads)
    warnings = _problems(issues.warnings, ~rejected_mask, keys, system, None)

    present = {}
    for name, series in mapped.items():
        joined = ctx.memo.get(("joined", id(series)))
        if joined is not None and joined.series is series:
            present[name] = joined.positions()
    records = build_records(mapped, constants, len(work), present)
    if len(rejected_rows):
        records = list(compress(records, (~rejected_mask).tolist()))
        kept_keys = [keys[i] for i in kept]
    else:
        kept_keys = keys
    return MappingResult(
        records=records,
        keys=kept_keys,
        rejected=rejected,
        frame=_result_frame(mapped, kept, kept_keys, key_column),
        warnings=warnings,
    )


def _result_frame(
    mapped: dict[str, pd.Series], kept: np.ndarray, keys: list[str], key_column: str
) -> pd.DataFrame:
    out = pd.DataFrame(mapped, copy=False)
    if len(kept) < len(out):
        out = out.take(kept)
    out.index = pd.Index(keys, name=key_column, dtype="str")
    return out
