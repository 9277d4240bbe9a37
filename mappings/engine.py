"""Apply a mapping spec to a DataFrame, one column at a time, and validate the result.

The flow hands over one row per record; the engine evaluates every destination field as a
whole column (transforms, then a cast to the destination type, then length, picklist and
required checks) and only at the end splits rows into delivered records and rejected
ones. Python code runs per field and per transform, never per row, except to build the
output dicts and the problems of the rows that have them.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mappings.jsonsafe import json_records
from mappings.spec import FieldSpec, MappingSpec
from mappings.transforms import TRANSFORMS, TransformContext, as_text, column, null_series
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
) -> pd.Series:
    """Cast and validate one mapped column; problems go to ``issues``."""
    series = cast(name, spec, series, dest, issues) if dest is not None else passthrough(series)
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
    issues = Issues()
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
