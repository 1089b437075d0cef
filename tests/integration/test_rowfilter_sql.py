"""Property: a compiled filter selects in PostgreSQL exactly the rows Python evaluation keeps."""

from __future__ import annotations

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync.policy.rowfilter import RowFilter

COLUMNS = {"n": st.one_of(st.none(), st.integers(-3, 3)),
           "s": st.one_of(st.none(), st.sampled_from(["a", "b", "o'k", "x; --"]))}
LITERALS = {"n": st.integers(-3, 3).map(str),
            "s": st.sampled_from(["a", "b", "o'k", "x; --"]).map(
                lambda v: "'" + v.replace("'", "''") + "'")}


@st.composite
def filters(draw, depth: int = 0) -> str:
    kind = draw(st.sampled_from(["cmp", "in", "null"] + (["and", "or", "not"] if depth < 3
                                                        else [])))
    col = draw(st.sampled_from(sorted(COLUMNS)))
    if kind == "cmp":
        op = draw(st.sampled_from(["=", "!=", "<>", "<", "<=", ">", ">="]))
        return f"{col} {op} {draw(LITERALS[col])}"
    if kind == "in":
        vals = draw(st.lists(LITERALS[col], min_size=1, max_size=3))
        neg = draw(st.booleans())
        return f"{col} {'not ' if neg else ''}in ({', '.join(vals)})"
    if kind == "null":
        return f"{col} is {'not ' if draw(st.booleans()) else ''}null"
    if kind == "not":
        return f"not ({draw(filters(depth + 1))})"
    return f"({draw(filters(depth + 1))}) {kind} ({draw(filters(depth + 1))})"


ROWS = st.lists(st.fixed_dictionaries(COLUMNS), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=filters(), rows=ROWS)
def test_sql_and_python_agree(pg_clusters, text: str, rows: list[dict]) -> None:
    f = RowFilter.parse(text)
    # the form sent to peers: values bound with set_config, cast to the column's type
    condition, params = f.to_sql_params("t", {"n": "integer", "s": "text"})
    with psycopg.connect(pg_clusters["eu-west"].url()) as conn:
        conn.execute("CREATE TEMP TABLE t (i int, n int, s text)")
        with conn.cursor().copy("COPY t (i, n, s) FROM STDIN") as copy:
            for i, r in enumerate(rows):
                copy.write_row((i, r["n"], r["s"]))
        for name, value in params:
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        got = {r[0] for r in conn.execute(
            psycopg.sql.SQL("SELECT i FROM t WHERE {}").format(condition))}
        literal = {r[0] for r in conn.execute(
            psycopg.sql.SQL("SELECT i FROM t WHERE {}").format(f.to_sql("t")))}
        conn.rollback()
    expected = {i for i, r in enumerate(rows) if f.evaluate(r)}
    assert got == expected == literal, text
