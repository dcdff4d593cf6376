"""``mestres_observability.db`` without a server: the operation label and the argument checks.

Real PostgreSQL and Redis: ``tests/integration/test_db_postgres_redis.py``.
"""

from __future__ import annotations

from typing import Any

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
    try:
        assert instrument_sqlalchemy(engine, name="mem") is engine
        assert instrument_sqlalchemy(engine, name="mem") is engine
        with fresh_observability() as obs:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
            assert sample_value("db_query_duration_seconds_count", obs, database="mem",
                                operation="SELECT") == 1
    finally:
        # the pool keeps its sqlite connection open until disposed; left to the garbage
        # collector, Python 3.13 reports it (ResourceWarning) in whichever later test
        # collects it (test_endpoint in the full suite)
        engine.dispose()


class FakePool:
    """The public surface of ``psycopg_pool.ConnectionPool`` that the Django pool watch uses."""

    def __init__(self, stats_fail: bool = False) -> None:
        self.lent: list[object] = []
        self.stats_fail = stats_fail

    def getconn(self, timeout: float | None = None) -> object:
        conn = object()
        self.lent.append(conn)
        return conn

    def putconn(self, conn: object) -> None:
        self.lent.remove(conn)

    def get_stats(self) -> dict[str, int]:
        if self.stats_fail:
            raise RuntimeError("stats broken")
        return {"pool_min": 2, "pool_max": 4, "pool_size": 3, "pool_available": 0}


class FakeConnection:
    """A Django connection of ``alias`` whose ``pool`` property hands out ``pool``."""

    def __init__(self, pool: Any, options: dict[str, Any]) -> None:
        self.alias = "shop"
        self.settings_dict = {"OPTIONS": options}
        self.execute_wrappers: list[Any] = []
        self._pool = pool
        self.connection = pool.getconn()

    @property
    def pool(self) -> Any:
        return self._pool


def test_a_django_pool_is_wrapped_at_its_first_connection_and_counts_what_it_lends() -> None:
    from mestres_observability import db
    from mestres_observability.testing import fresh_observability, sample_value

    pool = FakePool()
    with fresh_observability() as obs:
        def gauges() -> list[float]:
            return [sample_value(n, obs, database="shop")
                    for n in ("db_pool_size", "db_pool_checked_out", "db_pool_overflow")]

        first = FakeConnection(pool, {"pool": True})  # lent before the wrapping
        db._on_connection_created(connection=first)
        assert gauges() == [2, 1, 1]  # min_size; one lent; pool_size 3 - min_size 2
        second = FakeConnection(pool, {"pool": True})  # through the wrapped getconn
        db._on_connection_created(connection=second)  # counted once, not twice
        assert gauges() == [2, 2, 1]
        assert sample_value("db_pool_wait_seconds_count", obs, database="shop") == 1
        db._on_connection_created(connection=FakeConnection(pool, {"pool": True}))
        assert sample_value("db_pool_wait_seconds_count", obs, database="shop") == 2
        pool.putconn(first.connection)
        pool.putconn(second.connection)
        assert gauges() == [2, 1, 1]
        assert len(pool.lent) == 1  # the pool's own work is untouched


def test_a_django_connection_without_the_pool_option_is_left_alone() -> None:
    from mestres_observability import db

    class NoPool(FakeConnection):
        @property
        def pool(self) -> Any:
            raise AssertionError("the pool property must not be read")

    pool = FakePool()
    connection = NoPool(pool, {})
    db._on_connection_created(connection=connection)
    assert connection.execute_wrappers  # the statement wrapper, as always
    assert pool.getconn.__func__ is FakePool.getconn  # type: ignore[attr-defined]


def test_a_failing_pool_read_is_counted_and_never_reaches_the_query() -> None:
    from mestres_observability import db
    from mestres_observability.testing import fresh_observability, sample_value

    pool = FakePool(stats_fail=True)
    with fresh_observability() as obs:
        db._on_connection_created(connection=FakeConnection(pool, {"pool": {"max_size": 4}}))
        conn = pool.getconn()  # the wrapped one: still hands the connection out
        assert conn in pool.lent
        pool.putconn(conn)
        assert conn not in pool.lent
        assert sample_value("mestres_observability_errors_total", obs, component="db") >= 1
