"""Whole-column text passes: one C-level run over a column joined into one text.

``Series.str`` calls Python once per value, and for short values such as names that
per-call overhead dominates. Joining the non-null values with NUL (a character no value
keeps: Salesforce refuses it anyway, so it is removed first), running a regex or
``str.replace`` once over the joined text and splitting it again gives the same result
several times faster.

The joined text is padded: it starts and ends with NUL, so every value sits between two
separators. Patterns used here must not consume a separator except a leading one (a match
that starts at a value's opening NUL belongs to that value) and must put it back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd

SEPARATOR = "\x00"

TextStep = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class JoinedColumn:
    """The non-null values of a text column, NUL-joined and padded, and where they came from."""

    values: pd.Series  # the column itself, NUL removed when a value held it
    present: np.ndarray  # bool mask of non-null rows
    text: str
    count: int

    @classmethod
    def of(cls, values: pd.Series) -> JoinedColumn:
        """Join a ``str`` column; NUL inside a value (rare, and refused by CRMs) is removed."""
        present = values.notna().to_numpy()
        items = values[present].tolist()
        text = SEPARATOR + SEPARATOR.join(items) + SEPARATOR
        if text.count(SEPARATOR) != max(len(items), 1) + 1:
            values = values.str.replace(SEPARATOR, "", regex=False)
            items = values[present].tolist()
            text = SEPARATOR + SEPARATOR.join(items) + SEPARATOR
        return cls(values=values, present=present, text=text, count=len(items))

    def split(self, text: str) -> pd.Series:
        """Back to one value per row (nulls where the input was null)."""
        out = np.full(len(self.present), np.nan, dtype=object)
        if self.count:
            out[self.present] = text[1:-1].split(SEPARATOR)
        return pd.Series(out, index=self.values.index, dtype="str")

    def rows_matching(self, pattern: re.Pattern[str]) -> pd.Series:
        """Rows with a match of ``pattern`` (bool per row), from one ``finditer`` pass.

        Meant for patterns that match rarely (each match costs a Python step). A match
        belongs to the value whose opening separator is at or before its start; the row is
        found through the separator positions with numpy.
        """
        hits = np.zeros(len(self.present), dtype=bool)
        starts = [match.start() for match in pattern.finditer(self.text)]
        if starts and self.count:
            codes = np.frombuffer(self.text.encode("utf-32-le", "surrogatepass"), np.uint32)
            separators = np.flatnonzero(codes == 0)
            value = np.searchsorted(separators, np.asarray(starts), side="right") - 1
            value = value[(value >= 0) & (value < self.count)]
            hits[np.flatnonzero(self.present)[np.unique(value)]] = True
        return pd.Series(hits, index=self.values.index)


def regex_step(pattern: re.Pattern[str], repl: str | Callable[[re.Match[str]], str]) -> TextStep:
    def step(text: str) -> str:
        return pattern.sub(repl, text)

    return step


def column_apply(values: pd.Series, steps: Sequence[TextStep]) -> pd.Series:
    """Run text steps over the whole column at once (values: ``str`` dtype)."""
    joined = JoinedColumn.of(values)
    if not joined.count:
        return joined.values
    text = joined.text
    for step in steps:
        text = step(text)
    if text == joined.text:  # nothing to change: skip re-building the column
        return joined.values
    return joined.split(text)


def rows_matching(values: pd.Series, pattern: re.Pattern[str]) -> pd.Series:
    """``values.str.contains(pattern)`` for rarely matching patterns, in one pass."""
    return JoinedColumn.of(values).rows_matching(pattern)


def strip_chars(values: pd.Series, chars: str) -> pd.Series:
    """``values.str.strip(chars)``, empty results null: two regex passes over the column.

    Trailing characters are found by running the leading-characters pattern over the
    reversed text, because every pattern here must start at a separator to be fast.
    """
    joined = JoinedColumn.of(values)
    leading = _leading_pattern(chars)
    text = joined.text
    changed = False
    if leading.search(text):
        text, changed = leading.sub(SEPARATOR, text), True
    reversed_text = text[::-1]
    if leading.search(reversed_text):
        text, changed = leading.sub(SEPARATOR, reversed_text)[::-1], True
    if not changed and not _EMPTY_VALUE.search(text):
        return joined.values
    stripped = JoinedColumn(
        values=joined.split(text) if changed else joined.values,
        present=joined.present,
        text=text,
        count=joined.count,
    )
    empty = stripped.rows_matching(_EMPTY_VALUE)
    return stripped.values.where(~empty)


_EMPTY_VALUE = re.compile(SEPARATOR + f"(?={SEPARATOR})")


@cache
def _leading_pattern(chars: str) -> re.Pattern[str]:
    return re.compile(SEPARATOR + "[" + "".join(re.escape(c) for c in chars) + "]+")


# --- text steps for joined columns ----------------------------------------------------

_OTHER_WHITESPACE = re.compile(
    "[" + "".join(re.escape(chr(c)) for c in range(0x3100) if chr(c).isspace() and c != 32) + "]"
)


def collapse_spaces(text: str) -> str:
    """Every whitespace run becomes one space; none at either end of a value.

    ``str.replace`` loops are memchr-fast; an ``\\s+`` regex would stop at every space.
    """
    text = _OTHER_WHITESPACE.sub(" ", text)
    while "  " in text:
        text = text.replace("  ", " ")
    return text.replace(SEPARATOR + " ", SEPARATOR).replace(" " + SEPARATOR, SEPARATOR)
