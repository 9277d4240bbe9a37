"""The transform vocabulary of mapping specs, each one vectorised over a column.

A transform takes the whole column and returns a new one: the engine loops over fields and
transforms, never over rows. Each transform also declares how its YAML argument is
validated (so a broken spec fails at load time, naming the field) and what it tells
``check_spec`` about the value it produces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache, partial
from itertools import repeat
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from mappings import text
from mappings.columnar import (
    NAN,
    SEPARATOR,
    TRIMMED,
    Joined,
    collapse_spaces,
    joined_case,
    object_array,
    text_series,
)

Scalar = str | int | float | bool | None

SALESFORCE_DATETIME_SUFFIX = "+0000"


@dataclass(frozen=True, slots=True)
class TransformContext:
    """What a transform may read besides its own column: other columns and named lookups."""

    frame: pd.DataFrame
    lookups: Mapping[str, Mapping[str, Scalar]]
    memo: dict[Any, Any] = field(default_factory=dict)


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
        # As text, any date prints (a CRM's date range is for its date fields).
        return format_datetime(parse_datetime(series, in_range=False))
    if pd.api.types.is_object_dtype(dtype):
        # A typed column with gaps (``verified``: True, False, None) arrives as object:
        # each value prints as its own dtype's column would, not as Python's str().
        texts = object_array(map(_scalar_text, series.to_numpy()), len(series))
        return text_series(texts, series.index)
    return series.astype("str")


def _scalar_text(value: Any) -> Any:
    """One value of an object column as ``as_text`` prints its dtype; NaN for nulls."""
    if value is None or value is pd.NA or value is pd.NaT:
        return np.nan
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        number = float(value)
        if number != number:
            return np.nan
        if number.is_integer() and abs(number) < 2**53:
            return str(int(number))
        return str(number)
    return str(value)


def fill_null(series: pd.Series, other: Any) -> pd.Series:
    """``series`` with nulls replaced by ``other`` (a scalar or an aligned column).

    Falls back to object dtype when the types differ: pandas 3 refuses to write a number
    into a ``str`` column.
    """
    missing = series.isna().to_numpy()
    if not missing.any():
        return series
    if isinstance(other, pd.Series):
        if is_text(series):
            values = series.to_numpy().copy()
            values[missing] = as_text(other).to_numpy()[missing]
            return text_series(values, series.index)
        if series.dtype != other.dtype:
            series, other = series.astype(object), other.astype(object)
        return series.where(~missing, other)
    if isinstance(other, str) and is_text(series):
        values = series.to_numpy().copy()
        values[missing] = other
        return text_series(values, series.index)
    if (
        isinstance(other, int | float)
        and not isinstance(other, bool)
        and pd.api.types.is_float_dtype(series.dtype)
    ):
        return series.fillna(other)
    return series.astype(object).where(~missing, other)


# The dates Salesforce stores (Data Loader docs: 1700-01-01T00:00:00Z to 4000-12-31T00:00:00Z).
EARLIEST = pd.Timestamp("1700-01-01T00:00:00Z")
LATEST = pd.Timestamp("4000-12-31T00:00:00Z")
# Words pandas reads as the current time: no value of a source means "when we map it".
_RELATIVE = ["now", "today"]


def parse_datetime(series: pd.Series, *, in_range: bool = True) -> pd.Series:
    """ISO 8601 text (any offset, or naive meaning UTC) to UTC timestamps; NaT when it is
    no date, or (``in_range``) one outside the range CRMs store (``EARLIEST`` .. ``LATEST``)."""
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        converted = series.dt.tz_convert("UTC")
        return _in_range(converted) if in_range else converted
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        localized = series.dt.tz_localize("UTC")
        return _in_range(localized) if in_range else localized
    values = series if is_text(series) else series.astype("str")
    parsed = _parse_iso(values)
    relative = values.isin(_RELATIVE).to_numpy()
    if relative.any():
        parsed = parsed.where(~relative)
    return _in_range(parsed)


def _in_range(parsed: pd.Series) -> pd.Series:
    outside = (parsed < EARLIEST) | (parsed > LATEST)
    return parsed.where(~outside) if outside.any() else parsed


def _parse_iso(values: pd.Series) -> pd.Series:
    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    failed = parsed.isna().to_numpy() & values.notna().to_numpy()
    if failed.any():
        # One value with more than 6 fractional digits makes pandas parse the whole column
        # in nanoseconds, where every date outside 1677-2262 fails: those go again, cut
        # to microseconds, on their own.
        again = values[failed].str.replace(r"(\.\d{6})\d+", r"\1", regex=True)
        reparsed = pd.to_datetime(again, utc=True, errors="coerce", format="ISO8601")
        micros = pd.DatetimeTZDtype(unit="us", tz="UTC")  # years 1-9999, finer than printed
        parsed = parsed.astype(micros)
        parsed[failed] = reparsed.astype(micros)
    return parsed


def format_datetime(parsed: pd.Series, unit: str = "ms") -> pd.Series:
    """UTC timestamps as Salesforce text (``unit="ms"``) or ``YYYY-MM-DD`` (``unit="D"``).

    The digits are table lookups (numpy) written into one ASCII buffer, split once into
    the values: ``dt.strftime`` would call Python per value, and
    ``numpy.datetime_as_string`` plus the suffix and the conversion to ``str`` take about
    twice as long. Years outside 0-9999, which it prints its own way, are left to it.
    """
    micros = parsed.dt.tz_convert(None).to_numpy(dtype="datetime64[us]")
    missing = np.isnat(micros)
    printed = np.full(len(micros), NAN, dtype=object)
    present = np.flatnonzero(~missing)
    if len(present):
        printed[present] = _iso_strings(micros[present], unit)
    return text_series(printed, parsed.index)


_MICROS_A_DAY = 86_400_000_000


@cache
def _digits(width: int) -> np.ndarray:
    """ASCII digits of 0 .. 10**width - 1, zero-padded: one row per number."""
    numbers = np.arange(10**width)
    places = 10 ** np.arange(width - 1, -1, -1)
    return (48 + numbers[:, None] // places % 10).astype(np.uint8)


def _civil_dates(first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """``YYYY-MM-DD`` as ASCII rows for the days ``first`` .. ``last`` since 1970-01-01.

    Howard Hinnant's civil_from_days; returns (rows, years).
    """
    shifted = np.arange(first, last + 1, dtype=np.int64) + 719_468
    era = np.floor_divide(shifted, 146_097)
    day_of_era = shifted - era * 146_097
    year_of_era = (
        day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096
    ) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * month_index + 2) // 5 + 1
    month = np.where(month_index < 10, month_index + 3, month_index - 9)
    year = year_of_era + era * 400 + (month <= 2)
    rows = np.full((len(shifted), 10), ord("-"), dtype=np.uint8)
    rows[:, 0:4] = _digits(4)[np.clip(year, 0, 9999)]
    rows[:, 5:7] = _digits(2)[month]
    rows[:, 8:10] = _digits(2)[day]
    return rows, year


def _iso_strings(micros: np.ndarray, unit: str) -> np.ndarray:
    """``datetime64[us]`` values (no NaT) as ISO text, an object array of ``str``."""
    days, in_day = np.divmod(micros.astype(np.int64), _MICROS_A_DAY)
    first, last = int(days.min()), int(days.max())
    if last - first > 1_000_000:  # dates spread over millennia: numpy prints them
        return _numpy_iso_strings(micros, unit)
    dates, years = _civil_dates(first, last)
    template = "0000-00-00"
    if unit == "ms":
        template += "T00:00:00.000" + SALESFORCE_DATETIME_SUFFIX
    template += SEPARATOR
    rows = np.tile(np.frombuffer(template.encode("ascii"), dtype=np.uint8), (len(days), 1))
    rows[:, 0:10] = dates[days - first]
    if unit == "ms":
        millis = (in_day // 1000).astype(np.int32)
        seconds = millis // 1000
        rows[:, 11:13] = _digits(2)[seconds // 3600]
        rows[:, 14:16] = _digits(2)[seconds // 60 % 60]
        rows[:, 17:19] = _digits(2)[seconds % 60]
        rows[:, 20:23] = _digits(3)[millis % 1000]
    out = object_array(rows.tobytes().decode("ascii").split(SEPARATOR)[:-1], len(days))
    odd = np.flatnonzero(((years < 0) | (years > 9999))[days - first])
    if len(odd):
        out[odd] = _numpy_iso_strings(micros[odd], unit)
    return out


def _numpy_iso_strings(micros: np.ndarray, unit: str) -> np.ndarray:
    strings = np.datetime_as_string(micros, unit=unit)  # type: ignore[call-overload]
    suffix = SALESFORCE_DATETIME_SUFFIX if unit == "ms" else ""
    return object_array((text + suffix for text in strings.tolist()), len(micros))


def keep_unparsed(converted: pd.Series, original: pd.Series) -> pd.Series:
    """Where a conversion failed on a non-null value, keep the value so validation reports it."""
    failed = (converted.isna() & original.notna()).to_numpy()
    if not failed.any():
        return converted
    if is_text(converted) and is_text(original):
        values = converted.to_numpy().copy()
        values[failed] = original.to_numpy()[failed]
        return text_series(values, converted.index)
    return converted.astype(object).where(~failed, original.astype(object))


# --- the transforms --------------------------------------------------------------------


def trim(series: pd.Series, _arg: Any, ctx: TransformContext) -> pd.Series:
    joined = Joined.of(as_text(series), ctx.memo)
    found = joined.units().items_starting_or_ending_with(TRIMMED)
    items = joined.items
    stripped = [items[i].strip(text.TRIM_CHARS) or None for i in found.tolist()]
    return joined.patch(found, stripped, ctx.memo).as_series()


def lowercase(series: pd.Series, _arg: Any, ctx: TransformContext) -> pd.Series:
    return joined_case(as_text(series), memo=ctx.memo)


def uppercase(series: pd.Series, _arg: Any, ctx: TransformContext) -> pd.Series:
    return joined_case(as_text(series), upper=True, memo=ctx.memo)


def clean_name(series: pd.Series, _arg: Any, ctx: TransformContext) -> pd.Series:
    """Display names carry emoji, flags and invisible joiners; a CRM name must not.

    Letters of every script and their combining marks stay; a name left without a single
    letter ("🚀🚀", ".", "_") is no name at all and becomes null. Runs as table lookups
    over the joined column's UTF-16 code units (``text.clean_names``), with the regex
    passes as the fallback: per-value regex calls were the engine's main cost.
    """
    joined = Joined.of(as_text(series), ctx.memo)
    if not joined.count:
        return joined.as_series()
    vectorised = text.clean_names(joined.text)
    if vectorised is None:  # two lone surrogates side by side: the regex passes
        cleaned = joined.text
        noise = text.name_noise()
        if noise.search(cleaned):
            cleaned = noise.sub("", cleaned)
        cleaned = collapse_spaces(text.drop_astral_noise(cleaned))
        result = Joined.of(joined.split(cleaned))
        empty = result.items_matching(text.NO_LETTER_VALUE)
        return result.patch(empty, [None] * len(empty)).as_series()
    cleaned, no_letter = vectorised
    words = cleaned[1:-1].split(SEPARATOR)
    values = np.full(len(joined.values), NAN, dtype=object)
    values[joined.positions()] = object_array(words, joined.count)
    values[joined.row_of(np.flatnonzero(no_letter))] = NAN
    out = text_series(values, joined.series.index)
    # split_name reads the cleaned values from here instead of the column.
    ctx.memo[(NAMES, id(out))] = (out, words, joined.rows, no_letter)
    return out


NAMES = "names"
"""Memo key of a ``clean_name`` result's joined text, for ``split_name``."""


def split_name(series: pd.Series, part: str, ctx: TransformContext) -> pd.Series:
    """One word is a last name (Salesforce requires LastName, FirstName is optional)."""
    key = ("split_name", id(series))
    parts = ctx.memo.get(key)
    if parts is None or parts[2] is not series:
        # FirstName and LastName split the same column: split once (the memo keeps the
        # input alive, so its id stays its own).
        parts = (*_split_names(series, ctx), series)
        ctx.memo[key] = parts
    return parts[0] if part == "first" else parts[1]


def _split_names(series: pd.Series, ctx: TransformContext) -> tuple[pd.Series, pd.Series]:
    names = ctx.memo.get((NAMES, id(series)))
    if names is not None and names[0] is series:
        _, words, rows, empty = names
    else:
        joined = Joined.of(as_text(series), ctx.memo)
        collapsed = collapse_spaces(joined.text)
        words = joined.items if collapsed == joined.text else collapsed[1:-1].split(SEPARATOR)
        rows, empty = joined.rows, None
    pieces = list(map(str.partition, words, repeat(" ")))
    firsts = [first if rest else NAN for first, _, rest in pieces]
    lasts = [rest or first or NAN for first, _, rest in pieces]
    where = slice(None) if rows is None else rows
    nameless = np.zeros(0, dtype=np.int64)
    if empty is not None and empty.any():  # clean_name left no letter: null
        nameless = np.flatnonzero(empty) if rows is None else rows[empty]
    columns = []
    for items in (firsts, lasts):
        values = np.full(len(series), NAN, dtype=object)
        values[where] = object_array(items, len(items))
        values[nameless] = NAN
        columns.append(text_series(values, series.index))
    return columns[0], columns[1]


def truncate(series: pd.Series, length: int, _ctx: TransformContext) -> pd.Series:
    return as_text(series).str.slice(0, length)


def url(series: pd.Series, template: str, _ctx: TransformContext) -> pd.Series:
    """Percent-encodes the value so that a handle cannot inject a path or query."""
    values = as_text(series)
    safe = values.str.fullmatch(text.URL_SAFE, na=False)
    needs_encoding = values.notna() & ~safe
    if needs_encoding.any():
        # Only the rare values outside [A-Za-z0-9._~-] go through urllib, one by one.
        # A lone surrogate has no UTF-8 form: it is dropped, as the cast drops it elsewhere.
        encoded = values[needs_encoding].map(partial(quote, safe="", errors="ignore"))
        values = values.where(~needs_encoding, encoded)
    prefix, suffix = template.split("{value}", 1)
    return (prefix + values + suffix).where(values.notna())


def lookup(series: pd.Series, arg: LookupArg, ctx: TransformContext) -> pd.Series:
    """Exact match first, then case-insensitive; null stays null, unmatched -> default.

    A lookup column holds few distinct values: each is looked up once.
    """
    values = as_text(series)
    codes, uniques = pd.factorize(values)
    if not len(uniques):
        return _lookup_values(values, arg, ctx)
    found = _lookup_values(pd.Series(uniques, dtype=values.dtype), arg, ctx)
    taken = pd.api.extensions.take(found.array, codes, allow_fill=True)
    return pd.Series(taken, index=values.index)


def _lookup_values(values: pd.Series, arg: LookupArg, ctx: TransformContext) -> pd.Series:
    table = ctx.lookups[arg.table] if isinstance(arg.table, str) else arg.table
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


FORMATTED = "formatted"
"""Memo key of the rows ``to_datetime``/``to_date`` printed (the cast does not parse them)."""


def _to_datetime(series: pd.Series, unit: str, ctx: TransformContext) -> pd.Series:
    parsed = parse_datetime(series)
    printed = keep_unparsed(format_datetime(parsed, unit=unit), series)
    ctx.memo[(FORMATTED, unit, id(printed))] = (printed, parsed.notna().to_numpy())
    return printed


def to_datetime(series: pd.Series, _arg: Any, ctx: TransformContext) -> pd.Series:
    return _to_datetime(series, "ms", ctx)


def to_date(series: pd.Series, _arg: Any, ctx: TransformContext) -> pd.Series:
    return _to_datetime(series, "D", ctx)


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
