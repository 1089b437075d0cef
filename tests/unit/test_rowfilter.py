"""The row filter language: refusals with positions, SQL built from literals only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.errors import FilterSyntaxError
from sync.policy.rowfilter import RowFilter


@pytest.mark.parametrize(("text", "pos", "what"), [
    ("a = 1; drop table contact", 5, "';' is not allowed"),
    ("lower(a) = 'x'", 0, "function calls are not allowed"),
    ("a = 1 -- hi", 6, "comments are not allowed"),
    ("a = 1 /* x */", 6, "comments are not allowed"),
    ("a in (select 1)", 6, "only literals"),
    ("(select 1)", 1, "subqueries are not allowed"),
    ("a = b", 4, "only literals"),
    ("a = null", 4, "is null"),
    ("a = 'open", 4, "unterminated string"),
    ("a ~ 'x'", 2, "unexpected character"),
    ("a", 1, "expected a comparison"),
    ("", 0, "empty row filter"),
])
def test_refusals_point_at_the_problem(text: str, pos: int, what: str) -> None:
    with pytest.raises(FilterSyntaxError) as err:
        RowFilter.parse(text)
    assert err.value.position == pos
    assert what in str(err.value)


def test_injection_stays_a_literal() -> None:
    f = RowFilter.parse("lastname = 'x''); DROP TABLE contact; --'")
    assert f.to_sql("t").as_string(None) == \
        "\"t\".\"lastname\" = 'x''); DROP TABLE contact; --'"
    assert f.evaluate({"lastname": "x'); DROP TABLE contact; --"})


def test_three_valued_logic_matches_sql() -> None:
    f = RowFilter.parse("not (country = 'IE')")
    assert f.evaluate({"country": "SE"})
    assert not f.evaluate({"country": "IE"})
    assert not f.evaluate({"country": None})        # NOT NULL is NULL: row not kept
    g = RowFilter.parse("country is null or statecode in (1, 2)")
    assert g.evaluate({"country": None, "statecode": None})
    assert g.columns == {"country", "statecode"}


@given(values=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=3))
def test_sql_text_does_not_depend_on_the_values(values: list[str]) -> None:
    """Whatever the literals (quotes, ';', comments, DROP TABLE), the SQL text sent to a
    peer is the same: values travel only as bound settings."""
    def quoted(v: str) -> str:
        return "'" + v.replace("'", "''") + "'"
    types = {"s": "text"}
    f = RowFilter.parse(f"s in ({', '.join(quoted(v) for v in values)})")
    g = RowFilter.parse(f"s in ({', '.join(quoted('x') for _ in values)})")
    sql_f, params = f.to_sql_params("t", types)
    sql_g, _ = g.to_sql_params("t", types)
    assert sql_f.as_string(None) == sql_g.as_string(None)
    assert [v for _, v in params] == values
