"""Rows as JSON allows them: pandas gives NaN, NaT and numpy scalars, CRMs need null.

``json.dumps`` writes NaN as the invalid token ``NaN`` (toolchain notes, section 7), so every
record and payload leaving the engine passes through here.
"""

from __future__ import annotations

import math
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
