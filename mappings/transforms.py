"""The transform vocabulary of mapping specs, each one vectorised over a column.

A transform takes the whole column and returns a new one: the engine loops over fields and
transforms, never over rows. Each transform also declares how its YAML argument is
validated (so a broken spec fails at load time, naming the field) and what it tells
``check_spec`` about the value it produces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from mappings import text
from mappings.columnar import (
    SEPARATOR,
    collapse_spaces,
    column_apply,
    regex_step,
    rows_matching,
    strip_chars,
)

Scalar = str | int | float | bool | None

SALESFORCE_DATETIME_SUFFIX = "+0000"


@dataclass(frozen=True, slots=True)
class TransformContext:
    """What a transform may read besides its own column: other columns and named lookups."""

    frame: pd.DataFrame
    lookups: Mapping[str, Mapping[str, Scalar]]
    memo: dict[tuple[str, int], Any] = field(default_factory=dict)


def null_series(index: pd.Index) -> pd.Series:
    """An all-null column: absent source columns behave as empty, not as an error per row."""
    return pd.Series([None] * len(index), index=index, dtype=object)


def column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A source column, or an all-null one when the flow did not provide it."""
    if name in frame.columns:
        return frame[name]
    return null_series(frame.index)


def is_text(series: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(series.dtype) and series.dtype != object


def as_text(series: pd.Series) -> pd.Series:
    """Any column as ``str`` dtype with NaN for nulls.

    Whole-number floats print without ``.0``: an integer column with a gap arrives as
    float64 (pandas), and a user id must not become ``"12345.0"``.
    """
    if is_text(series):
        return series
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return series.map({True: "true", False: "false"}).astype("str")
    if pd.api.types.is_float_dtype(dtype):
        values = series.astype("float64")
        whole = np.isfinite(values) & (values % 1 == 0) & (values.abs() < 2**53)
        printed = values.astype("str")
        as_int = values.where(whole, 0).astype("int64").astype("str")
        return printed.where(~whole, as_int)
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(dtype):
        return format_datetime(parse_datetime(series))
    return series.astype("str")


def fill_null(series: pd.Series, other: Any) -> pd.Series:
    """``series`` with nulls replaced by ``other`` (a scalar or an aligned column).

    Falls back to object dtype when the types differ: pandas 3 refuses to write a number
    into a ``str`` column.
    """
    missing = series.isna()
    if not missing.any():
        return series
    if isinstance(other, pd.Series):
        if is_text(series):
            other = as_text(other)
        elif series.dtype != other.dtype:
            series, other = series.astype(object), other.astype(object)
        return series.where(~missing, other)
    if (isinstance(other, str) and is_text(series)) or (
        isinstance(other, int | float)
        and not isinstance(other, bool)
        and pd.api.types.is_float_dtype(series.dtype)
    ):
        return series.fillna(other)
    return series.astype(object).where(~missing, other)


def parse_datetime(series: pd.Series) -> pd.Series:
    """ISO 8601 text (any offset, or naive meaning UTC) to UTC timestamps; NaT when invalid."""
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return series.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return series.dt.tz_localize("UTC")
    values = series if is_text(series) else series.astype("str")
    return pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")


def format_datetime(parsed: pd.Series, unit: str = "ms") -> pd.Series:
    """UTC timestamps as Salesforce text (``unit="ms"``) or ``YYYY-MM-DD`` (``unit="D"``).

    ``numpy.datetime_as_string`` formats the whole array in C; ``dt.strftime`` would call
    Python per value.
    """
    naive = parsed.dt.tz_convert(None).to_numpy(dtype="datetime64[us]")
    strings = np.datetime_as_string(naive, unit=unit)  # type: ignore[call-overload]
    printed = pd.Series(strings, index=parsed.index, dtype="str")
    if unit == "ms":
        printed = printed + SALESFORCE_DATETIME_SUFFIX
    return printed.where(parsed.notna())


def keep_unparsed(converted: pd.Series, original: pd.Series) -> pd.Series:
    """Where a conversion failed on a non-null value, keep the value so validation reports it."""
    failed = converted.isna() & original.notna()
    if not failed.any():
        return converted
    return converted.astype(object).where(~failed, original.astype(object))


# --- the transforms --------------------------------------------------------------------


def trim(series: pd.Series, _arg: Any, _ctx: TransformContext) -> pd.Series:
    return strip_chars(as_text(series), text.TRIM_CHARS)


def lowercase(series: pd.Series, _arg: Any, _ctx: TransformContext) -> pd.Series:
    return as_text(series).str.lower()


def uppercase(series: pd.Series, _arg: Any, _ctx: TransformContext) -> pd.Series:
    return as_text(series).str.upper()


def clean_name(series: pd.Series, _arg: Any, _ctx: TransformContext) -> pd.Series:
    """Display names carry emoji, flags and invisible joiners; a CRM name must not.

    Letters of every script and their combining marks stay; a name left without a single
    letter ("🚀🚀", ".", "_") is no name at all and becomes null. Runs as whole-column
    passes (mappings.columnar): per-value regex calls were the engine's main cost.
    """
    cleaned = column_apply(
        as_text(series),
        [regex_step(text.name_noise(), ""), text.drop_astral_noise, collapse_spaces],
    )
    return cleaned.where(~rows_matching(cleaned, text.NO_LETTER_VALUE))


def split_name(series: pd.Series, part: str, ctx: TransformContext) -> pd.Series:
    """One word is a last name (Salesforce requires LastName, FirstName is optional)."""
    key = ("split_name", id(series))
    parts = ctx.memo.get(key)
    if parts is None:
        # FirstName and LastName split the same column: split once (the engine keeps the
        # input alive for the whole apply, so its id is stable).
        values = column_apply(as_text(series), [collapse_spaces])
        first_word = column_apply(values, [regex_step(text.FROM_FIRST_SPACE, "")])
        rest = column_apply(values, [regex_step(text.FIRST_WORD, SEPARATOR)])
        several = rest.str.len() > 0
        first = first_word.where(several)
        last = rest.where(several, first_word)
        parts = (first, last.where(last.str.len() > 0), series)
        ctx.memo[key] = parts
    return parts[0] if part == "first" else parts[1]


def truncate(series: pd.Series, length: int, _ctx: TransformContext) -> pd.Series:
    return as_text(series).str.slice(0, length)


def url(series: pd.Series, template: str, _ctx: TransformContext) -> pd.Series:
    """Percent-encodes the value so that a handle cannot inject a path or query."""
    values = as_text(series)
    safe = values.str.fullmatch(text.URL_SAFE, na=False)
    needs_encoding = values.notna() & ~safe
    if needs_encoding.any():
        # Only the rare values outside [A-Za-z0-9._~-] go through urllib, one by one.
        encoded = values[needs_encoding].map(partial(quote, safe=""))
        values = values.where(~needs_encoding, encoded)
    prefix, suffix = template.split("{value}", 1)
    return (prefix + values + suffix).where(values.notna())


def lookup(series: pd.Series, arg: LookupArg, ctx: TransformContext) -> pd.Series:
    """Exact match first, then case-insensitive; null stays null, unmatched -> default."""
    table = ctx.lookups[arg.table] if isinstance(arg.table, str) else arg.table
    values = as_text(series)
    found = values.map(dict(table))
    unmatched = found.isna() & values.notna()
    if unmatched.any():
        folded = {str(key).casefold(): value for key, value in table.items()}
        found = fill_null(found, values.str.casefold().map(folded))
        unmatched = found.isna() & values.notna()
    if arg.default is not None and unmatched.any():
        found = fill_null(found.where(~unmatched), arg.default).where(values.notna())
    return found


def coalesce(series: pd.Series, columns: tuple[str, ...], ctx: TransformContext) -> pd.Series:
    for name in columns:
        series = fill_null(series, column(ctx.frame, name))
    return series


def default(series: pd.Series, value: Scalar, _ctx: TransformContext) -> pd.Series:
    return fill_null(series, value)


def round_number(series: pd.Series, digits: int, _ctx: TransformContext) -> pd.Series:
    if pd.api.types.is_bool_dtype(series.dtype):
        return series
    if pd.api.types.is_numeric_dtype(series.dtype):
        return _round(series.astype("float64"), digits)
    numbers = pd.to_numeric(series, errors="coerce").astype("float64")
    return keep_unparsed(_round(numbers, digits), series)


def _round(numbers: pd.Series, digits: int) -> pd.Series:
    """numpy rounds by scaling, which overflows near 1e308; such numbers have no decimals."""
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = numbers.round(digits)
    return rounded.where(np.isfinite(rounded) | ~np.isfinite(numbers), numbers)


def to_datetime(series: pd.Series, _arg: Any, _ctx: TransformContext) -> pd.Series:
    return keep_unparsed(format_datetime(parse_datetime(series)), series)


def to_date(series: pd.Series, _arg: Any, _ctx: TransformContext) -> pd.Series:
    return keep_unparsed(format_datetime(parse_datetime(series), unit="D"), series)


# --- argument validation ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LookupArg:
    table: str | Mapping[str, Scalar]
    default: Scalar = None


def _no_arg(arg: Any) -> None:
    if arg not in (None, True):
        raise ValueError(f"takes no argument, got {arg!r}")


def _positive_int(arg: Any) -> int:
    if isinstance(arg, bool) or not isinstance(arg, int) or arg < 0:
        raise ValueError(f"needs a non-negative whole number, got {arg!r}")
    return arg


def _split_part(arg: Any) -> str:
    if arg not in ("first", "last"):
        raise ValueError(f"needs 'first' or 'last', got {arg!r}")
    return str(arg)


def _url_template(arg: Any) -> str:
    if not isinstance(arg, str) or arg.count("{value}") != 1:
        raise ValueError(f"needs a text containing {{value}} once, got {arg!r}")
    return arg


def _scalar(arg: Any) -> Scalar:
    if arg is not None and not isinstance(arg, str | int | float | bool):
        raise ValueError(f"needs a single value (text, number or boolean), got {arg!r}")
    scalar: Scalar = arg
    return scalar


def lookup_table(arg: Any) -> dict[str, Scalar]:
    """YAML keys may parse as numbers; rows are matched as text, so keys become text."""
    if not isinstance(arg, Mapping) or not arg:
        raise ValueError(f"a lookup table must be a non-empty mapping, got {arg!r}")
    return {str(key): _scalar(value) for key, value in arg.items()}


def _lookup(arg: Any) -> LookupArg:
    if isinstance(arg, str):
        return LookupArg(table=arg)
    if isinstance(arg, Mapping) and "table" in arg:
        unknown = set(arg) - {"table", "default"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} (allowed: table, default)")
        table = arg["table"]
        return LookupArg(
            table=table if isinstance(table, str) else lookup_table(table),
            default=_scalar(arg.get("default")),
        )
    raise ValueError("needs a lookup table name or {table: {...}, default: ...}")


def _columns(arg: Any) -> tuple[str, ...]:
    if isinstance(arg, str):
        return (arg,)
    if isinstance(arg, list) and arg and all(isinstance(item, str) for item in arg):
        return tuple(arg)
    raise ValueError(f"needs a list of column names, got {arg!r}")


@dataclass(frozen=True, slots=True)
class TransformDef:
    """A transform with its argument parser and what ``check_spec`` may infer from it.

    ``produces`` is the type family of the output (None: same as the input).
    ``may_null`` says whether it can turn a present value into null, which matters when
    proving that a required field is never empty.
    """

    apply: Callable[[pd.Series, Any, TransformContext], pd.Series]
    parse: Callable[[Any], Any]
    produces: str | None
    may_null: bool


TRANSFORMS: dict[str, TransformDef] = {
    "trim": TransformDef(trim, _no_arg, "string", True),
    "lowercase": TransformDef(lowercase, _no_arg, "string", False),
    "uppercase": TransformDef(uppercase, _no_arg, "string", False),
    "clean_name": TransformDef(clean_name, _no_arg, "string", True),
    "split_name": TransformDef(split_name, _split_part, "string", True),
    "truncate": TransformDef(truncate, _positive_int, "string", True),
    "url": TransformDef(url, _url_template, "string", False),
    "lookup": TransformDef(lookup, _lookup, None, True),
    "coalesce": TransformDef(coalesce, _columns, None, False),
    "default": TransformDef(default, _scalar, None, False),
    "round": TransformDef(round_number, _positive_int, "numeric", False),
    "to_datetime": TransformDef(to_datetime, _no_arg, "datetime", False),
    "to_date": TransformDef(to_date, _no_arg, "date", False),
}
