"""A small, strict subset of SOQL: enough for the queries a sync pipeline issues.

Supported: ``SELECT f1, f2 | COUNT() FROM Obj [WHERE cond] [ORDER BY f [ASC|DESC]
[NULLS FIRST|LAST], ...] [LIMIT n] [OFFSET n]`` with ``= != <> < <= > >=``, ``[NOT] IN
(...)``, ``LIKE``, ``NOT``, parentheses, string literals with SOQL's backslash escapes,
``null``, ``true``/``false``, numbers and datetime literals.

Like the real parser, mixing AND and OR at one level without parentheses is a
MALFORMED_QUERY, and string literals are data, never syntax: an escaped quote cannot end
the literal, which is why a test can prove injection text matches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


class SoqlError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Literal:
    value: Any  # str | float | bool | None, datetimes normalized to Salesforce's format
    kind: str  # string | number | boolean | null | datetime
    like: str | None = None  # regex for LIKE, built where the escapes are still visible


@dataclass(frozen=True)
class Comparison:
    field: str
    op: str  # = != < <= > >= in notin like
    values: tuple[Literal, ...]
    column: int


@dataclass(frozen=True)
class BoolOp:
    op: str  # and | or | not
    parts: tuple[Condition, ...]


Condition = Comparison | BoolOp


@dataclass
class Query:
    fields: list[tuple[str, int]]  # (name as written, column) ; empty for COUNT()
    count: bool
    sobject: str
    where: Condition | None
    order: list[tuple[str, bool, bool]]  # (field, descending, nulls_last)
    limit: int | None
    offset: int


_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      | (?P<string>'(?:[^'\\]|\\.)*')
      | (?P<unterminated>')
      | (?P<datetime>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d))
      | (?P<date>\d{4}-\d\d-\d\d)
      | (?P<number>[+-]?\d+(?:\.\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<op><=|>=|!=|<>|=|<|>)
      | (?P<punct>[(),])
      | (?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "'": "'", "\\": "\\"}


def sf_datetime(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def parse_datetime(text: str) -> str | None:
    """Normalize an ISO-8601 datetime to ``2026-11-20T10:00:00.000+0000``; None if invalid."""
    match = re.fullmatch(
        r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(\.\d{1,6})?(Z|[+-]\d\d:?\d\d)?", text.strip()
    )
    if not match:
        return None
    zone = match[4] or "Z"
    zone = "+00:00" if zone == "Z" else zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
    try:
        moment = datetime.fromisoformat(f"{match[1]}T{match[2]}{match[3] or ''}{zone}")
    except ValueError:
        return None
    return sf_datetime(moment)


_LIKE_PARTS = re.compile(r"%|_|[^%_]+")


def _like_regex(part: re.Match[str]) -> str:
    text = part.group()
    return ".*" if text == "%" else "." if text == "_" else re.escape(text)


def _decode_string(raw: str, soql: str, column: int, like: bool = True) -> tuple[str, str | None]:
    """Return (value, LIKE regex). ``\\%`` and ``\\_`` stay literal in LIKE patterns.

    The regex is left out (None) when the literal does not follow LIKE and has no escape:
    the values of an ``IN`` list of thousands need none.
    """
    if "\\" not in raw:  # most literals: nothing to unescape, done a run at a time
        value_text = raw[1:-1]
        return value_text, _LIKE_PARTS.sub(_like_regex, value_text) if like else None
    value: list[str] = []
    pattern: list[str] = []
    i = 1
    while i < len(raw) - 1:
        ch = raw[i]
        if ch == "\\":
            nxt = raw[i + 1]
            if nxt in _ESCAPES:
                value.append(_ESCAPES[nxt])
                pattern.append(re.escape(_ESCAPES[nxt]))
            elif nxt in "%_":
                value.append("\\" + nxt)
                pattern.append(re.escape(nxt))
            else:
                raise _malformed(
                    soql,
                    column,
                    f"Invalid string literal '{raw[1:-1]}'. Illegal character "
                    f"sequence '\\{nxt}' in string literal.",
                )
            i += 2
            continue
        value.append(ch)
        pattern.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return "".join(value), "".join(pattern)


def _malformed(soql: str, column: int, message: str) -> SoqlError:
    return SoqlError(
        "MALFORMED_QUERY",
        f"\n{soql}\n{' ' * column}^\nERROR at Row:1:Column:{column + 1}\n{message}",
    )


@dataclass
class _Tok:
    kind: str
    text: str
    column: int
    literal: Literal | None = None
    values: tuple[Literal, ...] = ()  # a "strings" token: a whole IN list


# An IN list of plain string literals (no escapes): one token, not two a value. A matcher
# sends thousands of values a query; anything else goes token by token.
_STRING_LIST = re.compile(r"\s*(\(\s*'[^'\\]*'(?:\s*,\s*'[^'\\]*')*\s*\))")
_LIST_ITEM = re.compile(r"'([^'\\]*)'")


def _tokenize(soql: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(soql):
        if tokens and tokens[-1].kind == "ident" and tokens[-1].text.lower() == "in":
            found = _STRING_LIST.match(soql, pos)
            if found is not None:
                items = tuple(Literal(v, "string") for v in _LIST_ITEM.findall(found[1]))
                tokens.append(_Tok("strings", found[1], found.start(1), values=items))
                pos = found.end()
                continue
        match = _TOKEN.match(soql, pos)
        assert match is not None  # the pattern's last branch takes any character
        pos = match.end()
        kind = match.lastgroup or "other"
        text, column = match.group(), match.start()
        if kind == "ws":
            continue
        if kind == "unterminated":
            raise _malformed(
                soql, column, f"line 1:{len(soql)} mismatched character '<EOF>' expecting \"'\""
            )
        if kind == "other":
            raise _malformed(soql, column, f"unexpected token: '{text}'")
        tok = _Tok(kind, text, column)
        if kind == "string":
            after_like = bool(tokens) and tokens[-1].text.lower() == "like"
            value, like = _decode_string(text, soql, column, after_like)
            tok.literal = Literal(value, "string", like)
        elif kind == "number":
            tok.literal = Literal(float(text), "number")
        elif kind in ("datetime", "date"):
            normalized = parse_datetime(text if kind == "datetime" else f"{text}T00:00:00Z")
            if normalized is None:
                raise _malformed(soql, column, f"unexpected token: '{text}'")
            tok.literal = Literal(normalized, "datetime")
        elif kind == "ident" and text.lower() in ("null", "true", "false"):
            word = text.lower()
            flag = None if word == "null" else word == "true"
            tok.literal = Literal(flag, "null" if word == "null" else "boolean")
        tokens.append(tok)
    return tokens


class _Parser:
    def __init__(self, soql: str) -> None:
        self.soql = soql
        self.tokens = _tokenize(soql)
        self.pos = 0

    def peek(self, offset: int = 0) -> _Tok | None:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def is_word(self, word: str, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok is not None and tok.kind == "ident" and tok.text.lower() == word

    def fail(self, tok: _Tok | None = None) -> SoqlError:
        tok = tok or self.peek()
        if tok is None:
            return _malformed(self.soql, len(self.soql), "unexpected token: '<EOF>'")
        return _malformed(self.soql, tok.column, f"unexpected token: '{tok.text}'")

    def take(self, kind: str | None = None, word: str | None = None) -> _Tok:
        tok = self.peek()
        if tok is None or (kind and tok.kind != kind) or (word and not self.is_word(word)):
            raise self.fail(tok)
        self.pos += 1
        return tok

    def parse(self) -> Query:
        self.take(word="select")
        fields: list[tuple[str, int]] = []
        count = False
        if self.is_word("count") and self.peek(1) and self.peek(1).text == "(":  # type: ignore[union-attr]
            self.pos += 1
            self.take(kind="punct")
            if self.take(kind="punct").text != ")":
                raise self.fail(self.tokens[self.pos - 1])
            count = True
        else:
            while True:
                tok = self.take(kind="ident")
                if tok.text.lower() == "from":
                    raise self.fail(tok)
                fields.append((tok.text, tok.column))
                nxt = self.peek()
                if nxt is not None and nxt.text == ",":
                    self.pos += 1
                    continue
                break
        self.take(word="from")
        sobject = self.take(kind="ident").text
        where = None
        if self.is_word("where"):
            self.pos += 1
            where = self.condition()
        order: list[tuple[str, bool, bool]] = []
        if self.is_word("order"):
            self.pos += 1
            self.take(word="by")
            while True:
                name = self.take(kind="ident").text
                descending = False
                if self.is_word("asc") or self.is_word("desc"):
                    descending = self.take().text.lower() == "desc"
                nulls_last = descending
                if self.is_word("nulls"):
                    self.pos += 1
                    if not (self.is_word("first") or self.is_word("last")):
                        raise self.fail()
                    nulls_last = self.take().text.lower() == "last"
                order.append((name, descending, nulls_last))
                nxt = self.peek()
                if nxt is None or nxt.text != ",":
                    break
                self.pos += 1
        limit = self.int_clause("limit")
        offset = self.int_clause("offset") or 0
        if self.peek() is not None:
            raise self.fail()
        return Query(fields, count, sobject, where, order, limit, offset)

    def int_clause(self, word: str) -> int | None:
        if not self.is_word(word):
            return None
        self.pos += 1
        tok = self.take(kind="number")
        if not tok.text.isdigit():
            raise self.fail(tok)
        return int(tok.text)

    def condition(self) -> Condition:
        parts = [self.term()]
        joiner: str | None = None
        while self.is_word("and") or self.is_word("or"):
            word = self.peek().text.lower()  # type: ignore[union-attr]
            if joiner is not None and word != joiner:
                raise self.fail()  # SOQL wants parentheses when AND and OR are mixed
            joiner = word
            self.pos += 1
            parts.append(self.term())
        return parts[0] if joiner is None else BoolOp(joiner, tuple(parts))

    def term(self) -> Condition:
        if self.is_word("not"):
            self.pos += 1
            return BoolOp("not", (self.term(),))
        tok = self.peek()
        if tok is not None and tok.text == "(":
            self.pos += 1
            inner = self.condition()
            if self.take(kind="punct").text != ")":
                raise self.fail(self.tokens[self.pos - 1])
            return inner
        field = self.take(kind="ident")
        if field.literal is not None:
            raise self.fail(field)
        if self.is_word("not") and self.is_word("in", 1):
            self.pos += 2
            return Comparison(field.text, "notin", self.value_list(), field.column)
        if self.is_word("in"):
            self.pos += 1
            return Comparison(field.text, "in", self.value_list(), field.column)
        if self.is_word("like"):
            self.pos += 1
            value = self.value()
            if value.kind != "string":
                raise self.fail(self.tokens[self.pos - 1])
            return Comparison(field.text, "like", (value,), field.column)
        op = self.take(kind="op").text
        return Comparison(field.text, "!=" if op == "<>" else op, (self.value(),), field.column)

    def value(self) -> Literal:
        tok = self.take()
        if tok.literal is None:
            raise self.fail(tok)
        return tok.literal

    def value_list(self) -> tuple[Literal, ...]:
        tok = self.peek()
        if tok is not None and tok.kind == "strings":
            self.pos += 1
            return tok.values
        if self.take(kind="punct").text != "(":
            raise self.fail(self.tokens[self.pos - 1])
        values = [self.value()]
        while True:
            tok = self.take(kind="punct")
            if tok.text == ")":
                return tuple(values)
            if tok.text != ",":
                raise self.fail(tok)
            values.append(self.value())


def parse(soql: str) -> Query:
    return _Parser(soql).parse()


def fields_in(condition: Condition | None) -> list[Comparison]:
    if condition is None:
        return []
    if isinstance(condition, Comparison):
        return [condition]
    return [c for part in condition.parts for c in fields_in(part)]


def _fold(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


Predicate = Callable[[Any], bool]
Reader = Callable[[Any], Any]


def compile_condition(condition: Condition | None, reader: Callable[[str], Reader]) -> Predicate:
    """A predicate to run on every record: values folded once, ``IN`` lists as sets (an org
    answers a 2,000-value ``IN`` over 100,000 records without scanning the list each time).

    Text comparisons ignore case, ``= null`` means unset. The predicate takes a record;
    ``reader(field)`` gives the function that reads that field's value from it.
    """
    if condition is None:
        return lambda item: True
    if isinstance(condition, BoolOp):
        parts = [compile_condition(part, reader) for part in condition.parts]
        if condition.op == "not":
            return lambda item: not parts[0](item)
        if condition.op == "and":
            return lambda item: all(part(item) for part in parts)
        return lambda item: any(part(item) for part in parts)
    op, read = condition.op, reader(condition.field)
    wanted = [_fold(v.value) for v in condition.values]
    if op in ("in", "notin"):
        hashable = {w for w in wanted if w is not None}
        has_null = any(w is None for w in wanted)

        def member(item: Any) -> bool:
            actual = read(item)
            if actual is None:
                return has_null
            if isinstance(actual, str):
                actual = actual.lower()
            try:
                return actual in hashable
            except TypeError:
                return actual in wanted

        return member if op == "in" else (lambda item: not member(item))
    if op == "=":
        return lambda item: _fold(read(item)) == wanted[0]
    if op == "!=":
        return lambda item: _fold(read(item)) != wanted[0]
    if op == "like":
        pattern = re.compile(condition.values[0].like or "", re.IGNORECASE | re.DOTALL)
        return lambda item: (v := read(item)) is not None and pattern.fullmatch(str(v)) is not None
    target = wanted[0]
    compare = {
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }[op]

    def ordered(item: Any) -> bool:
        actual = _fold(read(item))
        if actual is None or target is None:
            return False
        try:
            return bool(compare(actual, target))
        except TypeError:
            return False

    return ordered
