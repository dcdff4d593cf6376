"""``mestres_observability.db`` without a server: the operation label and the argument checks.

Real PostgreSQL and Redis: ``tests/integration/test_db_postgres_redis.py``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mestres_observability.db import OPERATIONS, instrument_sqlalchemy, sql_operation


@pytest.mark.parametrize(("statement", "operation"), [
    ("SELECT 1", "SELECT"),
    ("  select * from orders where id = %s", "SELECT"),
    ("/* checkout */ INSERT INTO orders VALUES (1)", "INSERT"),
    ("-- a comment\nupdate stock set n = n - 1", "UPDATE"),
    ("(SELECT 1) UNION (SELECT 2)", "SELECT"),
    ("WITH t AS (SELECT 1) SELECT * FROM t", "WITH"),
    ("DELETE FROM carts", "DELETE"),
    ("BEGIN", "BEGIN"),
    ("savepoint s1", "SAVEPOINT"),
    ("frobnicate the table", "OTHER"),
    ("", "OTHER"),
    ("42", "OTHER"),
])
def test_the_operation_is_the_first_keyword(statement: str, operation: str) -> None:
    assert sql_operation(statement) == operation


@given(st.text(max_size=200))
def test_the_operation_is_always_a_known_word(statement: str) -> None:
    op = sql_operation(statement)
    assert op in OPERATIONS or op == "OTHER"
    if op != "OTHER":  # the label is a word of the statement itself, never anything else
        assert op.lower() in statement.lower()


def test_instrument_sqlalchemy_refuses_what_is_not_an_engine() -> None:
    with pytest.raises(TypeError, match="SQLAlchemy Engine"):
        instrument_sqlalchemy(object())


def test_an_sqlite_engine_is_instrumented_once_and_counts_statements() -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from mestres_observability.testing import fresh_observability, sample_value

    engine = sqlalchemy.create_engine("sqlite://")
    assert instrument_sqlalchemy(engine, name="mem") is engine
    assert instrument_sqlalchemy(engine, name="mem") is engine
    with fresh_observability() as obs:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        assert sample_value("db_query_duration_seconds_count", obs, database="mem",
                            operation="SELECT") == 1
