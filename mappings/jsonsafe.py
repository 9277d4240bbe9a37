"""Rows as JSON allows them: pandas gives NaN, NaT and numpy scalars, CRMs need null.

``json.dumps`` writes NaN as the invalid token ``NaN`` (toolchain notes, section 7), so every
record and payload leaving the engine passes through here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from mappings.transforms import is_text


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


def json_value(value: Any) -> Any:
    """One value as JSON allows it (None for every kind of missing)."""
    return _json_value(value)


_NONE = np.array(None, dtype=object)


def _json_column(series: pd.Series, present: np.ndarray | slice | None = None) -> list[Any]:
    """A column as JSON-safe Python values: None for every kind of missing.

    ``present``: where a text column has values, when known already (a full slice: all).
    """
    if pd.api.types.is_float_dtype(series.dtype) and not isinstance(series.dtype, pd.Float64Dtype):
        numbers = series.to_numpy(dtype="float64")
        finite = np.isfinite(numbers)
        values = numbers.tolist()
        if not finite.all():
            for i in np.flatnonzero(~finite).tolist():
                values[i] = None
        return values
    if is_text(series):
        array = series.to_numpy()
        if present is None:
            missing = series.isna().to_numpy()
        elif isinstance(present, slice):
            whole: list[Any] = array.tolist()
            return whole
        else:
            missing = np.ones(len(array), dtype=bool)
            missing[present] = False
        return (np.where(missing, _NONE, array) if missing.any() else array).tolist()
    plain = series.astype(object).where(series.notna(), None).tolist()
    if isinstance(series.dtype, pd.BooleanDtype | pd.Int64Dtype):
        return plain
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_integer_dtype(series.dtype):
        return plain
    return [_json_value(value) for value in plain]


def json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts that ``json.dumps(..., allow_nan=False)`` accepts.

    A few rows (the payloads of rejected records) are converted value by value: column by
    column, pandas' per-column overhead would dominate.
    """
    if frame.shape[1] and len(frame) <= _FEW_ROWS:
        names = [str(name) for name in frame.columns]
        rows = frame.to_numpy(dtype=object)
        return [dict(zip(names, map(_json_value, row), strict=True)) for row in rows]
    columns = {str(name): frame.iloc[:, i] for i, name in enumerate(frame.columns)}
    return build_records(columns, {}, len(frame))


_FEW_ROWS = 256


def build_records(
    columns: Mapping[str, pd.Series],
    constants: Mapping[str, Any],
    size: int | None = None,
    present: Mapping[str, np.ndarray | slice] | None = None,
) -> list[dict[str, Any]]:
    """One JSON-safe dict per row of ``columns``, in column order.

    ``constants`` names the columns holding one value in every row, given JSON-safe: they
    are written into each dict without reading the column. ``present`` gives, for some
    text columns, the rows holding a value (so that nulls need no second scan).
    """
    names = tuple(columns)
    if not names:
        return []
    if size is None:
        size = len(next(iter(columns.values()))) if columns else 0
    known = present or {}
    lists = [
        _json_column(columns[name], known.get(name)) for name in names if name not in constants
    ]
    build = _record_builder(names, tuple(name in constants for name in names))
    return build(lists, [constants[name] for name in names if name in constants], size)


@lru_cache(maxsize=64)
def _record_builder(
    names: tuple[str, ...], constant: tuple[bool, ...]
) -> Callable[[list[list[Any]], list[Any], int], list[dict[str, Any]]]:
    """A function building the dicts with one dict display per row.

    ``{"A": a, "B": b}`` builds a dict with known keys in one step, twice as fast as
    ``dict(zip(names, row))``; the display is generated once per field list (keys are
    ``repr`` of the names, values local variables), as ``dataclasses`` does.
    """
    entries: list[str] = []
    variables: list[str] = []
    fixed: list[str] = []
    for name, is_constant in zip(names, constant, strict=True):
        if is_constant:
            fixed.append(f"k{len(fixed)}")
            entries.append(f"{name!r}: {fixed[-1]}")
        else:
            variables.append(f"v{len(variables)}")
            entries.append(f"{name!r}: {variables[-1]}")
    loop = (
        f"for ({', '.join(variables)},) in zip(*columns)" if variables else "for _ in range(size)"
    )
    lines = ["def build(columns, constants, size):"]
    if fixed:
        lines.append(f"    ({', '.join(fixed)},) = constants")
    lines.append(f"    return [{{{', '.join(entries)}}} {loop}]")
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), "<mapping records>", "exec"), namespace)  # noqa: S102
    built: Callable[[list[list[Any]], list[Any], int], list[dict[str, Any]]] = namespace["build"]
    return built
