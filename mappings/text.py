"""Character classes for cleaning text, built once from the Unicode database.

Python's ``re`` has no ``\\p{...}`` classes, so the classes are compiled from
``unicodedata`` categories at first use. Every cleaning step then runs as one regex
pass per value in C, which is what keeps the engine columnar and fast.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

# Categories a person's name never needs: symbols (emoji, pictographs, arrows, currency,
# skin-tone modifiers), controls, format characters (zero-width joiners/spaces, direction
# marks, tag characters of flag sequences), enclosing marks (keycaps), private use,
# surrogates and unassigned code points (emoji newer than this Python's Unicode database).
_NAME_NOISE_CATEGORIES = frozenset({"So", "Sk", "Sm", "Sc", "Cc", "Cf", "Co", "Cs", "Cn", "Me"})

# Variation selectors are combining marks (Mn) but only ever decorate emoji in names;
# other Mn characters (accents, Devanagari vowel signs) must stay.
_VARIATION_SELECTORS = ((0xFE00, 0xFE0F), (0xE0100, 0xE01EF))

# Salesforce rejects NUL and most C0 controls; newline and tab are meaningful in text areas.
# Lone surrogates cannot be encoded as UTF-8 on the wire.
CONTROL_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


# What ``trim`` strips: all Unicode whitespace plus invisible characters that people paste
# around names and handles (zero-width space/joiners, word joiner, byte-order mark).
TRIM_CHARS = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()) + (
    "\u200b\u200c\u200d\u2060\ufeff"
)

# Characters that never need percent-encoding in a URL path segment.
URL_SAFE = re.compile(r"[A-Za-z0-9._~-]*")


def _ranges(codepoints: list[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for cp in codepoints:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    return ranges


def _char_class(ranges: list[tuple[int, int]]) -> str:
    parts = []
    for start, end in ranges:
        if start == end:
            parts.append(re.escape(chr(start)))
        else:
            parts.append(f"{re.escape(chr(start))}-{re.escape(chr(end))}")
    return "[" + "".join(parts) + "]"


@cache
def name_noise() -> re.Pattern[str]:
    """Runs of BMP characters ``clean_name`` removes (built once from unicodedata, ~0.2 s).

    NUL is left out (it separates values in whole-column passes; controls are removed
    before names are cleaned). Astral characters (emoji, flags) are handled by
    :data:`ASTRAL` instead: a class with thousands of astral ranges is scanned range by
    range for every character, which made each letter slow.
    """
    codepoints = [
        cp
        for cp in range(1, 0x10000)
        if unicodedata.category(chr(cp)) in _NAME_NOISE_CATEGORIES
        and not chr(cp).isspace()  # whitespace is collapsed, not removed
    ]
    codepoints.extend(range(_VARIATION_SELECTORS[0][0], _VARIATION_SELECTORS[0][1] + 1))
    return re.compile(_char_class(_ranges(sorted(set(codepoints)))) + "+")


ASTRAL = re.compile("[\U00010000-\U0010ffff]+")


@cache
def _astral_is_noise(char: str) -> bool:
    code = ord(char)
    in_selectors = any(start <= code <= end for start, end in _VARIATION_SELECTORS)
    return in_selectors or unicodedata.category(char) in _NAME_NOISE_CATEGORIES


def drop_astral_noise(text: str) -> str:
    """Remove emoji, flags and other astral symbols; keep astral letters (CJK Ext. B, ...).

    Only the distinct astral characters present are classified, then removed in one pass.
    """
    runs = ASTRAL.findall(text)
    if not runs:
        return text
    found = set("".join(runs))
    noise = frozenset(char for char in found if _astral_is_noise(char))
    if not noise:
        return text
    if len(noise) == len(found):
        return ASTRAL.sub("", text)
    return _any_of(noise).sub("", text)


@lru_cache(maxsize=64)
def _any_of(chars: frozenset[str]) -> re.Pattern[str]:
    return re.compile("[" + "".join(re.escape(char) for char in sorted(chars)) + "]+")


# Over a padded NUL-joined column (see mappings.columnar): a value without a single letter.
NO_LETTER_VALUE = re.compile(r"\x00(?:[^\w\x00]|[\d_])*(?=\x00)")


# --- names on UTF-16 code units, with numpy -------------------------------------------------
#
# The regex passes above cost several nanoseconds a character each, and a name column
# needs half a dozen of them. The same cleaning as table lookups over the column's UTF-16
# code units (numpy, one pass per step over a compact array) is several times faster.


@dataclass(frozen=True, slots=True)
class _UnitTables:
    """Per BMP code point: removed from names, whitespace, a letter (``\\w`` but no digit)."""

    noise: np.ndarray
    space: np.ndarray
    letter: np.ndarray


@cache
def _unit_tables() -> _UnitTables:
    noise = np.zeros(0x10000, dtype=bool)
    space = np.zeros(0x10000, dtype=bool)
    letter = np.zeros(0x10000, dtype=bool)
    for code in range(1, 0x10000):
        char = chr(code)
        if char.isspace():
            space[code] = True
        elif unicodedata.category(char) in _NAME_NOISE_CATEGORIES:
            noise[code] = True
        letter[code] = _is_letter(char)
    noise[_VARIATION_SELECTORS[0][0] : _VARIATION_SELECTORS[0][1] + 1] = True
    return _UnitTables(noise=noise, space=space, letter=letter)


def _is_letter(char: str) -> bool:
    """What ``NO_LETTER_VALUE`` looks for: a word character that is no digit and not "_"."""
    return char.isalnum() and not char.isdecimal()


@cache
def _astral_is_letter(code: int) -> bool:
    return _is_letter(chr(code))


def clean_names(text: str) -> tuple[str, np.ndarray] | None:
    """``clean_name`` on a padded NUL-joined column: (cleaned joined text, no-letter mask).

    The text is cleaned like ``name_noise`` + ``drop_astral_noise`` + ``collapse_spaces``,
    and the mask flags the values left without a letter (``NO_LETTER_VALUE``), one entry
    per value. None when the text holds two lone surrogates that UTF-16 would read as one
    character: the regex passes then handle it.
    """
    tables = _unit_tables()
    units = np.frombuffer(text.encode("utf-16-le", "surrogatepass"), dtype=np.uint16)
    high = (units >= 0xD800) & (units <= 0xDBFF)
    pairs = np.flatnonzero(high[:-1] & (units[1:] >= 0xDC00) & (units[1:] <= 0xDFFF))
    if len(units) - len(pairs) != len(text):
        return None
    drop = tables.noise[units]  # lone surrogates are noise (category Cs) and go
    letter = tables.letter[units]
    if len(pairs):
        codes = (
            0x10000
            + ((units[pairs].astype(np.int64) - 0xD800) << 10)
            + (units[pairs + 1].astype(np.int64) - 0xDC00)
        )
        distinct, where = np.unique(codes, return_inverse=True)
        noisy = np.fromiter((_astral_is_noise(chr(c)) for c in distinct.tolist()), bool)
        letters = np.fromiter((_astral_is_letter(c) for c in distinct.tolist()), bool)
        drop[pairs] = drop[pairs + 1] = noisy[where]
        letter[pairs] = letters[where]
    keep = ~drop
    units, letter = units[keep], letter[keep]
    units = np.where(tables.space[units], np.uint16(32), units)
    # A space goes when it follows a space or a separator, then when it ends a value.
    space = units == 32
    previous = np.empty_like(units)
    previous[0], previous[1:] = 0, units[:-1]
    keep = ~(space & ((previous == 32) | (previous == 0)))
    units, letter = units[keep], letter[keep]
    following = np.empty_like(units)
    following[-1], following[:-1] = 0, units[1:]
    keep = ~((units == 32) & (following == 0))
    units, letter = units[keep], letter[keep]
    separators = np.flatnonzero(units == 0)
    letters_before = np.cumsum(letter, dtype=np.int32)[separators]
    no_letter = letters_before[1:] == letters_before[:-1]
    cleaned = units.tobytes().decode("utf-16-le", "surrogatepass")
    return cleaned, no_letter
