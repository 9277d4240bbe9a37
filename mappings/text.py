"""Character classes for cleaning text, built once from the Unicode database.

Python's ``re`` has no ``\\p{...}`` classes, so the classes are compiled from
``unicodedata`` categories at first use. Every cleaning step then runs as one regex
pass per value in C, which is what keeps the engine columnar and fast.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import cache

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
# The same without NUL, for searching a NUL-joined column (NUL itself is checked apart).
CONTROL_CHARS_BUT_NUL = re.compile("[\x01-\x08\x0b-\x1f\x7f\ud800-\udfff]")


# Letters in any script: word characters minus digits and underscore.
HAS_LETTER = re.compile(r"[^\W\d_]")


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
    found = set("".join(ASTRAL.findall(text)))
    noise = sorted(char for char in found if _astral_is_noise(char))
    if not noise:
        return text
    if len(noise) <= 16:  # str.replace scans are faster than a regex over astral classes
        for char in noise:
            text = text.replace(char, "")
        return text
    return re.compile("[" + "".join(re.escape(char) for char in noise) + "]+").sub("", text)


# Patterns over a padded NUL-joined column (see mappings.columnar): a value that is empty or
# only whitespace; a value without a single letter; from a value's first space on; a
# value's first word (with its opening separator, which the replacement puts back).
BLANK_VALUE = re.compile(r"\x00\s*(?=\x00)")
NO_LETTER_VALUE = re.compile(r"\x00(?:[^\w\x00]|[\d_])*(?=\x00)")
FROM_FIRST_SPACE = re.compile(r" [^\x00]*")
FIRST_WORD = re.compile(r"\x00[^ \x00]+ ?")
