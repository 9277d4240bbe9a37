"""Whole-column text passes: find the few values that need work in C, fix only those.

``Series.str`` calls Python once per value, and for short values such as names that
per-call overhead dominates. Here a text column is joined with NUL (a character no value
keeps: Salesforce refuses it anyway, so it is removed first) into one padded text, every
value between two separators. One pass over that text finds the values a step would
change (a leading space, a control character, a value too long to fit) and only those
are handled one by one in Python; the others are kept as they are, the same Python
objects, so that an unchanged column costs little.

The passes are numpy table lookups over the text's UTF-16 code units (``Units``: one
array, and the very units Salesforce counts lengths in) or, for rules such as an e-mail
address, one regex scan. Patterns used on a joined text start at a value's opening
separator (a match belongs to the value whose separator is at or before its start) and
must not run past the value's closing one.

Long text (descriptions: hundreds of characters a value) is not joined: copying it costs
more than the checks. Those columns are checked value by value with ``str`` and ``bytes``
methods that run in C.

A ``Joined`` view is shared through the mapping's memo, so that the transforms and the
cast of a field read a column once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import compress, repeat
from operator import contains
from typing import Any

import numpy as np
import pandas as pd

from mappings import text as charsets

SEPARATOR = "\x00"
NAN: Any = np.nan

STR = pd.StringDtype(na_value=np.nan)
"""The ``str`` dtype (pandas 3 default for text: NaN for missing values)."""

LONG_TEXT = 160
"""Average length from which a column is checked value by value instead of joined."""

Memo = dict[Any, Any]


def text_series(values: np.ndarray, index: pd.Index) -> pd.Series:
    """A ``str`` Series over an object array holding ``str`` or NaN, without a copy."""
    if STR.storage == "python":
        # pandas-stubs lag pandas 3 here: StringArray takes the dtype (NaN as missing).
        array = pd.arrays.StringArray(values, dtype=STR)  # type: ignore[call-arg]
        return pd.Series(array, index=index, copy=False)
    return pd.Series(values, index=index, dtype=STR)


def object_array(values: Iterable[Any], size: int) -> np.ndarray:
    """An object array of ``size`` values (numpy would turn a list of str into ``<U``)."""
    return np.fromiter(values, dtype=object, count=size)


@dataclass(slots=True)
class Joined:
    """A ``str`` column's non-null values and their padded NUL-joined text.

    ``values`` is the column as an object array (NaN for nulls); ``rows`` the positions
    of the non-null values, in order, None when every value is present; ``items`` those
    values. The joined ``text`` is built on first use, and building it removes NUL from
    the values (``changed`` then says the values differ from ``series``): long text is
    never joined and checks each value for NUL itself.
    """

    series: pd.Series
    values: np.ndarray
    rows: np.ndarray | None
    items: list[str]
    changed: bool  # NUL was removed from a value: ``values`` differs from ``series``
    _text: str | None = None
    _starts: np.ndarray | None = None
    _lengths: np.ndarray | None = None
    _units: Units | None = None
    unit_bound: np.ndarray | None = None  # per item, at least its UTF-16 length, when known

    @classmethod
    def of(cls, series: pd.Series, memo: Memo | None = None) -> Joined:
        """The joined view of a ``str`` column; shared through ``memo`` within one mapping."""
        key = ("joined", id(series))
        if memo is not None:
            found = memo.get(key)
            if found is not None and found.series is series:
                shared: Joined = found
                return shared
        values = series.to_numpy()  # the backing array itself: never written to
        missing = series.isna().to_numpy()
        if missing.any():
            rows: np.ndarray | None = np.flatnonzero(~missing)
            items = values[rows].tolist()
        else:
            rows = None
            items = values.tolist()
        joined = cls(series=series, values=values, rows=rows, items=items, changed=False)
        if memo is not None:
            memo[key] = joined
        return joined

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def text(self) -> str:
        """The padded joined text; a value holding NUL loses it first (see ``remove_nul``)."""
        if self._text is None and self._units is not None and self._units.exact:
            self._text = self._units.codes.tobytes().decode("utf-16-le", "surrogatepass")
        if self._text is None:
            text = SEPARATOR.join(["", *self.items, ""])
            if text.count(SEPARATOR) != self.count + 1:
                self.remove_nul()
                text = SEPARATOR.join(["", *self.items, ""])
            self._text = text
        return self._text

    def remove_nul(self) -> None:
        """NUL inside a value would split it in two: it goes (CRMs refuse it anyway)."""
        items = self.items
        holding = np.fromiter(map(contains, items, repeat(SEPARATOR)), bool, len(items))
        for i in np.flatnonzero(holding).tolist():
            items[i] = items[i].replace(SEPARATOR, "")
        self.values = self.values.copy()
        self.values[self.positions()] = object_array(items, len(items))
        self.changed = True
        self._text = None
        self._lengths = None
        self._starts = None
        self._units = None

    def release(self) -> None:
        """Drop the joined text and what derives from it (rebuilt if needed again)."""
        self._text = self._starts = self._lengths = None
        self._units = None

    def positions(self) -> np.ndarray | slice:
        """Row positions of ``items`` (a full slice when every value is present)."""
        return slice(None) if self.rows is None else self.rows

    def row_of(self, item: np.ndarray) -> np.ndarray:
        return item if self.rows is None else self.rows[item]

    def units(self) -> Units:
        """The joined text as UTF-16 code units (built once)."""
        if self._units is None:
            self._units = Units.of(self.text)
        return self._units

    def lengths(self) -> np.ndarray:
        """Each value's length in characters (code points)."""
        if self._lengths is None:
            self._lengths = np.fromiter(map(len, self.items), np.int64, self.count)
        return self._lengths

    def items_matching(self, pattern: re.Pattern[str]) -> np.ndarray:
        """Indices into ``items`` of values with a match of ``pattern`` in the joined text."""
        starts = [match.start() for match in pattern.finditer(self.text)]
        if not starts or not self.count:
            return np.zeros(0, dtype=np.int64)
        if self._starts is None:
            self._starts = self._value_starts()
        item = np.searchsorted(self._starts, np.asarray(starts), side="right") - 1
        return np.unique(item[item < self.count])

    def _value_starts(self) -> np.ndarray:
        """Where each value's opening separator is in the text (code points), and the end."""
        units = self._units
        if units is None or not units.exact:
            return np.concatenate(([0], np.cumsum(self.lengths() + 1)))
        # A surrogate pair is two code units but one character of the text.
        pairs = _pair_starts(units.codes)
        return units.separators - np.searchsorted(pairs, units.separators)

    def items_where(self, test: Callable[[str], Any]) -> np.ndarray:
        """Indices into ``items`` of values for which ``test`` is true (one call per value)."""
        return np.flatnonzero(np.fromiter(map(test, self.items), bool, self.count))

    def as_series(self) -> pd.Series:
        """The NUL-free column: the input Series itself when nothing changed."""
        if not self.changed:
            return self.series
        return text_series(self.values, self.series.index)

    def patch(
        self, found: np.ndarray, values: list[str | None], memo: Memo | None = None
    ) -> Joined:
        """This column with the values at ``found`` (indices into ``items``) replaced.

        None makes a value null. The result is built from this one (no second scan for
        nulls, no check of the values that did not change) and shared through ``memo``.
        """
        if not len(found):
            return self
        base = self.as_series()
        array = base.array.copy()
        array[self.row_of(found)] = [NAN if value is None else value for value in values]
        series = pd.Series(array, index=base.index, copy=False)
        items = self.items.copy()
        dropped = []
        for i, value in zip(found.tolist(), values, strict=True):
            if value is None:
                dropped.append(i)
            else:
                items[i] = value
        rows, bound = self.rows, self.unit_bound
        if bound is not None:
            bound = bound.copy()
            bound[found] = [0 if value is None else 2 * len(value) for value in values]
        if dropped:
            keep = np.ones(self.count, dtype=bool)
            keep[dropped] = False
            items = list(compress(items, keep.tolist()))
            rows = np.flatnonzero(keep) if rows is None else rows[keep]
            bound = None if bound is None else bound[keep]
        patched = Joined(series, series.to_numpy(), rows, items, changed=False, unit_bound=bound)
        if self._units is not None and self._units.exact:
            patched._units = self._units.patched(found, values)
        if memo is not None:
            memo[("joined", id(series))] = patched
        return patched

    def split(self, text: str, memo: Memo | None = None) -> pd.Series:
        """A transformed joined text back to one value per row (nulls stay null).

        With ``memo``, the result's joined view is shared with ``text`` as its text.
        """
        out = np.full(len(self.values), NAN, dtype=object)
        items = text[1:-1].split(SEPARATOR) if self.count else []
        if self.count:
            out[self.positions()] = object_array(items, self.count)
        series = text_series(out, self.series.index)
        if memo is not None:
            memo[("joined", id(series))] = Joined(
                series, series.to_numpy(), self.rows, items, changed=False, _text=text
            )
        return series

    def long(self) -> bool:
        """Whether values are long enough that value-by-value checks beat joining them."""
        if not self.count:
            return False
        sample = self.items[:: max(1, self.count // 64)]
        return sum(map(len, sample)) > LONG_TEXT * len(sample)


@dataclass(frozen=True, slots=True)
class Units:
    """A joined text as UTF-16 code units: what Salesforce counts, and numpy can scan.

    Checks become table lookups over one array (a few milliseconds for a column) instead
    of regex passes. ``exact`` is False when the text holds a lone high surrogate right
    before a lone low one, which UTF-16 cannot tell from one character: callers then use
    the regex passes.
    """

    codes: np.ndarray  # uint16
    separators: np.ndarray  # positions of the count + 1 separators
    exact: bool

    @classmethod
    def of(cls, text: str) -> Units:
        try:
            codes = np.frombuffer(text.encode("utf-16-le"), dtype=np.uint16)
            exact = True  # no lone surrogate: each surrogate pair is one character
        except UnicodeEncodeError:
            codes = np.frombuffer(text.encode("utf-16-le", "surrogatepass"), dtype=np.uint16)
            # A lone high surrogate right before a lone low one would read as one character.
            exact = len(codes) - len(_pair_starts(codes)) == len(text)
        return cls(codes=codes, separators=np.flatnonzero(codes == 0), exact=exact)

    def patched(self, found: np.ndarray, values: list[str | None]) -> Units:
        """These units with the values at ``found`` replaced (None: left out).

        Slices of the array between the changed values: one copy of the array instead of
        joining and encoding every value again. The values come from the old ones (cut,
        stripped, cleaned), so no two lone surrogates meet: the result stays exact.
        """
        codes, separators = self.codes, self.separators
        pieces, at = [], 0
        for i, value in sorted(zip(found.tolist(), values, strict=True)):
            opening, closing = int(separators[i]), int(separators[i + 1])
            if value is None:
                pieces.append(codes[at:opening])
            else:
                encoded = value.encode("utf-16-le", "surrogatepass")
                pieces += [codes[at : opening + 1], np.frombuffer(encoded, dtype=np.uint16)]
            at = closing
        pieces.append(codes[at:])
        joined = np.concatenate(pieces)
        return Units(codes=joined, separators=np.flatnonzero(joined == 0), exact=True)

    def lengths(self) -> np.ndarray:
        """Each value's length in UTF-16 units: an emoji counts twice, like Salesforce."""
        return np.diff(self.separators) - 1

    def items_at(self, positions: np.ndarray) -> np.ndarray:
        """Indices of the values holding the code units at ``positions``."""
        if not len(positions):
            return positions
        return np.unique(np.searchsorted(self.separators, positions, side="right") - 1)

    def items_with(self, table: np.ndarray) -> np.ndarray:
        """Indices of the values holding a code unit flagged in ``table`` (65,536 flags)."""
        return self.items_at(np.flatnonzero(table[self.codes]))

    def items_with_lone_surrogates(self) -> np.ndarray:
        codes = self.codes
        surrogate = (codes >= 0xD800) & (codes <= 0xDFFF)
        if not surrogate.any():
            return np.zeros(0, dtype=np.int64)
        paired = np.zeros(len(codes), dtype=bool)
        starts = _pair_starts(codes)
        paired[starts] = paired[starts + 1] = True
        return self.items_at(np.flatnonzero(surrogate & ~paired))

    def items_not_web_urls(self) -> np.ndarray:
        """Values that are no ``http(s)://host...`` URL, as ``validate.WEB_URL`` decides.

        A few unit comparisons at each value's start instead of a regex scan of the whole
        text: a value shorter than the prefix meets its closing separator (0), which
        matches none of the expected units, so reading on into the next value is harmless.
        """
        codes = np.concatenate((self.codes, np.zeros(_URL_PREFIX_UNITS, dtype=np.uint16)))
        first = self.separators[:-1] + 1
        valid = np.ones(len(first), dtype=bool)
        for offset, letter in enumerate("http"):
            unit = codes[first + offset]
            valid &= (unit == ord(letter)) | (unit == ord(letter.upper()))
        unit = codes[first + 4]
        # Python's IGNORECASE also matches "ſ" (U+017F) for "s": WEB_URL accepts it.
        after = first + 4 + ((unit == ord("s")) | (unit == ord("S")) | (unit == 0x17F))
        for offset, char in enumerate("://"):
            valid &= codes[after + offset] == ord(char)
        valid &= ~_NOT_HOST_START[codes[after + 3]]
        return np.union1d(np.flatnonzero(~valid), self.items_with(WHITESPACE))

    def items_starting_or_ending_with(self, table: np.ndarray) -> np.ndarray:
        """Values whose first or last unit is flagged in ``table``, and empty values."""
        opening, closing = self.separators[:-1], self.separators[1:]
        # An empty value's first unit is its closing separator, never flagged.
        flagged = table[self.codes[opening + 1]] | table[self.codes[closing - 1]]
        return np.flatnonzero(flagged | (closing == opening + 1))


def _pair_starts(codes: np.ndarray) -> np.ndarray:
    """Positions of high surrogates followed by a low one (one astral character each)."""
    high = (codes[:-1] >= 0xD800) & (codes[:-1] <= 0xDBFF)
    low = (codes[1:] >= 0xDC00) & (codes[1:] <= 0xDFFF)
    return np.flatnonzero(high & low)


def _table(chars: Iterable[str]) -> np.ndarray:
    flags = np.zeros(0x10000, dtype=bool)
    flags[[ord(char) for char in chars]] = True
    return flags


TRIMMED = _table(charsets.TRIM_CHARS)
"""What ``trim`` strips (all BMP characters)."""
WHITESPACE = _table(chr(code) for code in range(0x10000) if chr(code).isspace())
_URL_PREFIX_UNITS = len("https://x")
_NOT_HOST_START = WHITESPACE | _table("/?#" + SEPARATOR)
CONTROLS = _table(chr(code) for code in [*range(1, 9), *range(11, 32), 127])
"""C0 controls but NUL, tab and newline: what Salesforce refuses (NUL is gone already)."""


def joined_case(values: pd.Series, upper: bool = False, memo: Memo | None = None) -> pd.Series:
    """``str.lower``/``str.upper`` of every value in one pass over the joined text.

    Per value and joined give the same result: the only context-dependent rule (a final
    capital sigma) looks at neighbouring letters, and a separator is no letter.
    """
    joined = Joined.of(values, memo)
    text = joined.text
    if joined.changed:  # a value held NUL, which case mapping keeps: value by value
        return values.str.upper() if upper else values.str.lower()
    mapped = text.upper() if upper else text.lower()
    if mapped == text:
        return values
    return joined.split(mapped, memo)


# --- text steps for joined columns ----------------------------------------------------

_OTHER_WHITESPACE = re.compile(
    "[" + "".join(re.escape(chr(c)) for c in range(0x3100) if chr(c).isspace() and c != 32) + "]"
)


def collapse_spaces(text: str) -> str:
    """Every whitespace run becomes one space; none at either end of a value.

    ``str.replace`` loops are memchr-fast; an ``\\s+`` regex would stop at every space.
    Each pass runs only when the text holds what it removes.
    """
    if _OTHER_WHITESPACE.search(text):
        text = _OTHER_WHITESPACE.sub(" ", text)
    while "  " in text:
        text = text.replace("  ", " ")
    if SEPARATOR + " " in text:
        text = text.replace(SEPARATOR + " ", SEPARATOR)
    if " " + SEPARATOR in text:
        text = text.replace(" " + SEPARATOR, SEPARATOR)
    return text
