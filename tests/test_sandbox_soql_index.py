"""The Salesforce simulator's shortcuts change how fast a query runs, never its answer.

Queries are answered from the records an index names for ``=`` and ``IN`` on text (an OR
of such, an AND holding one) and by a scan otherwise; both must give the same rows in the
same order, before and after records change and are deleted. An ``IN`` list of plain
strings is read as one token; it must parse as the token-by-token reading does.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sandbox import soql
from sandbox.sf_query import QueryEngine
from sandbox.sf_schema import OBJECTS
from sandbox.sf_store import RecordStore
from sandbox.wire import Options, Request

LEAD = OBJECTS["Lead"]
NO_ASSIGN = Request("POST", "", {}, {"sforce-auto-assign": "FALSE"})
FIELDS = ("Email", "Social_Handle__c", "Company", "Status")
VALUES = ("ann@x.io", "ANN@X.IO", "bob@y.org", "zoe", "Zoe", "acme", "Acme ", "Open", "")


def soql_text(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


comparison = st.one_of(
    st.builds(
        lambda f, v: f"{f} = {soql_text(v)}", st.sampled_from(FIELDS), st.sampled_from(VALUES)
    ),
    st.builds(
        lambda f, vs: f"{f} IN ({', '.join(soql_text(v) for v in vs)})",
        st.sampled_from(FIELDS),
        st.lists(st.sampled_from(VALUES), min_size=1, max_size=4),
    ),
    st.builds(lambda f: f"{f} = null", st.sampled_from(FIELDS)),
    st.builds(lambda f: f"{f} IN ('zoe', null)", st.sampled_from(FIELDS)),
    st.builds(
        lambda f, v: f"{f} != {soql_text(v)}", st.sampled_from(FIELDS), st.sampled_from(VALUES)
    ),
    st.builds(lambda f: f"{f} LIKE 'a%'", st.sampled_from(FIELDS)),
)
condition = st.recursive(
    comparison,
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"({a} OR {b})", inner, inner),
        st.builds(lambda a, b: f"({a} AND {b})", inner, inner),
        st.builds(lambda a: f"(NOT {a})", inner),
    ),
    max_leaves=5,
)
record = st.fixed_dictionaries(
    {"LastName": st.just("Doe")},
    optional={name: st.sampled_from(VALUES[:-1]) for name in FIELDS},
)


def run(engine: QueryEngine, where: str) -> list[str]:
    req = Request(
        "GET", "/services/data/v60.0/query", {"q": [f"SELECT Id FROM Lead WHERE {where}"]}, {}
    )
    result: Any = engine.query(req, "60.0")
    return [row["Id"] for row in result["records"]]


def scanned(engine: QueryEngine, where: str) -> list[str]:
    engine._candidates = lambda *_args: None  # type: ignore[method-assign]
    try:
        return run(engine, where)
    finally:
        del engine._candidates


@settings(max_examples=150, deadline=None)
@example(  # a value a record takes after the index was built is found
    records=[{"LastName": "Doe", "Company": "zoe"}],
    changes=[(0, {"LastName": "Doe", "Company": "acme"})],
    deleted=[],
    wheres=["Company = 'acme'"],
)
@given(
    records=st.lists(record, max_size=12),
    changes=st.lists(st.tuples(st.integers(0, 11), record), max_size=4),
    deleted=st.lists(st.integers(0, 11), max_size=3),
    wheres=st.lists(condition, min_size=1, max_size=4),
)
def test_indexed_queries_give_what_a_scan_gives(
    records: list[dict[str, Any]],
    changes: list[tuple[int, dict[str, Any]]],
    deleted: list[int],
    wheres: list[str],
) -> None:
    store = RecordStore(seed=3)
    engine = QueryEngine(store, Options())
    ids = [store.apply(LEAD, values, None, NO_ASSIGN) for values in records]
    for where in wheres:  # builds the indexes before the changes below
        assert run(engine, where) == scanned(engine, where)
    for at, values in changes if ids else ():
        # A changed field holds the new value, a field sent as null loses its value.
        update = {name: values.get(name) for name in FIELDS}
        store.apply(LEAD, update, store.records["Lead"][ids[at % len(ids)]], NO_ASSIGN)
    for at in deleted if ids else ():
        if ids[at % len(ids)] in store.records["Lead"]:
            store.delete(LEAD, store.records["Lead"][ids[at % len(ids)]])
    for where in wheres:
        assert run(engine, where) == scanned(engine, where)


literal_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(literal_text, min_size=1, max_size=6),
    spaces=st.sampled_from(["", " ", "  ", "\n"]),
    negate=st.booleans(),
)
def test_an_in_list_read_whole_parses_as_token_by_token(
    values: list[str], spaces: str, negate: bool
) -> None:
    listed = f",{spaces}".join(soql_text(v) for v in values)
    op = "NOT IN" if negate else "IN"
    text = (
        f"SELECT Id FROM Lead WHERE Email {op}{spaces}({spaces}{listed}{spaces}) AND Company = 'x'"
    )
    whole = soql.parse(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(soql, "_STRING_LIST", soql.re.compile(r"(?!)"))
        by_token = soql.parse(text)
    assert whole == by_token
    assert [v.value for v in whole.where.parts[0].values] == values  # type: ignore[union-attr]
