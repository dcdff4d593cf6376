"""Databases and caches: SQLAlchemy engines, Django's database connections and Django's caches.

* :func:`instrument_sqlalchemy` (one call per engine, through SQLAlchemy's
  public events): ``db_query_duration_seconds{database,operation}`` and
  ``db_query_errors_total{database,operation}`` per statement; the pool's
  ``db_pool_size``, ``db_pool_checked_out`` and ``db_pool_overflow`` gauges,
  updated on every checkout and checkin (so they are right in multiprocess
  mode too, where each worker writes its own); and
  ``db_pool_wait_seconds{database}``, the time to get a connection from the
  pool (waiting for a free one, or opening one, pre-ping included).
* :func:`instrument_django` (the Django app does it in ``ready()``): the same
  statement metrics for every Django database connection (a wrapper in
  ``connection.execute_wrappers``, added to each connection when it is
  created); the same pool gauges and wait time for every alias that uses
  Django's connection pool (PostgreSQL with psycopg 3 and ``OPTIONS["pool"]``,
  Django 5.1+: its ``psycopg_pool.ConnectionPool``'s public ``getconn`` and
  ``putconn`` are wrapped at its first connection, see
  :func:`instrument_django_db`); and
  ``cache_requests_total{cache,result}`` with ``result`` ``hit``
  or ``miss`` for ``get``/``get_many`` (and what is built on them:
  ``get_or_set``, ``aget``...) of every configured cache.

``operation`` is the statement's first keyword (``SELECT``, ``INSERT``,
``UPDATE``, ``DELETE``, ``BEGIN``, ``COMMIT`` ...; ``OTHER`` for anything
outside the known set): never the SQL text, so values and table names never
reach a label. ``database`` (the engine's name or the Django alias) and
``cache`` pass the cardinality guard. Everything is bound late (the current
instance when the statement runs) and a fault is counted under
``component="db"``, never raised into the query.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._current import get_observability

__all__ = ["OPERATIONS", "instrument_django", "instrument_django_cache", "instrument_django_db",
           "instrument_sqlalchemy", "sql_operation"]

#: Statement keywords kept as the ``operation`` label; anything else is ``OTHER``.
OPERATIONS: frozenset[str] = frozenset({
    "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "REPLACE", "WITH", "VALUES",
    "BEGIN", "START", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "END",
    "CREATE", "ALTER", "DROP", "TRUNCATE", "GRANT", "REVOKE", "COMMENT",
    "SET", "SHOW", "EXPLAIN", "ANALYZE", "VACUUM", "COPY", "CALL", "EXECUTE", "PREPARE",
    "DECLARE", "FETCH", "CLOSE", "LOCK", "LISTEN", "NOTIFY", "PRAGMA", "DESCRIBE", "USE",
})
_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*([A-Za-z]+)", re.S)
_cache: dict[str, str] = {}
_CACHE_MAX = 2048


def sql_operation(statement: Any) -> str:
    """The ``operation`` label of a statement: its first keyword, upper-cased, or ``OTHER``.

    Leading blanks, ``--`` and ``/* */`` comments and parentheses are skipped.

    Example:
        >>> sql_operation("/* app */ select * from orders where id = %s")
        'SELECT'
    """
    if not isinstance(statement, str):
        statement = str(statement)
    found = _cache.get(statement)
    if found is not None:
        return found
    match = _FIRST_WORD.match(statement)
    word = match.group(1).upper() if match else ""
    op = word if word in OPERATIONS else "OTHER"
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[statement] = op
    return op


def _record_statement(database: str, operation: str, seconds: float, failed: bool) -> None:
    obs = get_observability()
    cfg = obs.config
    if not (cfg.enabled and cfg.db_metrics):
        return
    try:
        metrics = obs.metrics
        labels = (database, operation)
        exemplar = metrics.current_exemplar()
        metrics.db_query_duration_seconds.observe(labels, seconds, exemplar)
        if failed:
            metrics.db_query_errors_total.inc(labels, 1.0, exemplar)
    except Exception as exc:
        obs.faults.report("db", "statement", "recording a database statement failed", exc)


# ---------------------------------------------------------------------- SQLAlchemy
_START = "mestres_observability_query_start"
_MARK = "mestres_observability_db"


def _pool_gauges(engine: Any, database: str, *, returning: bool = False) -> None:
    """Set the pool gauges from the pool's public ``size()``, ``checkedout()``, ``overflow()``.

    ``returning``: called from the ``checkin`` event, which fires before the
    connection is back: the values are those the pool has once it is (one
    fewer checked out; one fewer overflow connection when the pool is full
    and closes it instead of keeping it).
    """
    obs = get_observability()
    cfg = obs.config
    if not (cfg.enabled and cfg.db_metrics):
        return
    try:
        pool = engine.pool
        metrics = obs.metrics
        labels = (database,)
        size = _read(pool, "size")
        out = _read(pool, "checkedout")
        overflow = _read(pool, "overflow")  # QueuePool: counts up from -size
        if returning and out is not None:
            if size is not None and overflow is not None and size - out + overflow >= size:
                overflow -= 1  # no room in the queue: the returned connection is closed
            out -= 1
        for value, gauge in ((size, metrics.db_pool_size), (out, metrics.db_pool_checked_out),
                             (overflow, metrics.db_pool_overflow)):
            if value is not None:
                gauge.set(labels, max(0.0, value))
    except Exception as exc:
        obs.faults.report("db", "pool", "reading the connection pool failed", exc)


def _read(pool: Any, method: str) -> float | None:
    read = getattr(pool, method, None)
    return float(read()) if callable(read) else None


def instrument_sqlalchemy(engine: Any, *, name: str | None = None) -> Any:
    """Record statement, error and pool metrics for a SQLAlchemy ``Engine`` (once per engine).

    Args:
        engine: a SQLAlchemy ``Engine`` (``create_engine(...)``; for an
            ``AsyncEngine``, pass its ``sync_engine``).
        name: the ``database`` label (default: the URL's database name, else
            the dialect's name).

    Returns:
        ``engine``, so ``engine = instrument_sqlalchemy(create_engine(url))``.

    Raises:
        TypeError: ``engine`` is not a SQLAlchemy engine.
    """
    target = getattr(engine, "sync_engine", engine)
    if not (hasattr(target, "dialect") and hasattr(target, "pool")
            and callable(getattr(target, "raw_connection", None))):
        raise TypeError(f"instrument_sqlalchemy needs a SQLAlchemy Engine, got "
                        f"{type(engine).__name__}")
    if getattr(target, _MARK, None) is not None:
        return engine
    from sqlalchemy import event

    database = name or target.url.database or target.dialect.name
    setattr(target, _MARK, database)

    def before(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any,
               executemany: bool) -> None:
        conn.info.setdefault(_START, []).append(time.perf_counter())

    def after(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any,
              executemany: bool) -> None:
        starts = conn.info.get(_START)
        if starts:
            _record_statement(database, sql_operation(statement),
                              time.perf_counter() - starts.pop(), False)

    def failed(ctx: Any) -> None:
        conn = ctx.connection
        starts = conn.info.get(_START) if conn is not None else None
        seconds = time.perf_counter() - starts.pop() if starts else 0.0
        if ctx.statement is not None:
            _record_statement(database, sql_operation(ctx.statement), seconds, True)

    def checked_out(*args: Any) -> None:
        _pool_gauges(target, database)

    def checked_in(*args: Any) -> None:
        _pool_gauges(target, database, returning=True)

    event.listen(target, "before_cursor_execute", before)
    event.listen(target, "after_cursor_execute", after)
    event.listen(target, "handle_error", failed)
    event.listen(target, "checkout", checked_out)
    event.listen(target, "checkin", checked_in)

    # No pool event fires before a checkout starts: the wait is the time the engine's
    # public raw_connection() (what every Connection is opened with) takes.
    original = target.raw_connection

    @functools.wraps(original)
    def raw_connection() -> Any:
        started = time.perf_counter()
        try:
            return original()
        finally:
            _observe_wait(database, time.perf_counter() - started)

    target.raw_connection = raw_connection
    _pool_gauges(target, database)
    return engine


def _observe_wait(database: str, seconds: float) -> None:
    obs = get_observability()
    cfg = obs.config
    if not (cfg.enabled and cfg.db_metrics):
        return
    try:
        obs.metrics.db_pool_wait_seconds.observe((database,), seconds)
    except Exception as exc:
        obs.faults.report("db", "pool_wait", "recording a pool wait failed", exc)


# ---------------------------------------------------------------------- Django
_django_lock = threading.Lock()
_django_db_on = False


def _django_execute(execute: Callable[..., Any], sql: Any, params: Any, many: bool,
                    context: dict[str, Any]) -> Any:
    """The ``execute_wrappers`` entry: time one statement of a Django connection."""
    connection = context.get("connection")
    alias = getattr(connection, "alias", None) or "default"
    started = time.perf_counter()
    try:
        result = execute(sql, params, many, context)
    except Exception:
        _record_statement(alias, sql_operation(sql), time.perf_counter() - started, True)
        raise
    _record_statement(alias, sql_operation(sql), time.perf_counter() - started, False)
    return result


def _add_wrapper(connection: Any) -> None:
    wrappers = getattr(connection, "execute_wrappers", None)
    if isinstance(wrappers, list) and _django_execute not in wrappers:
        # first in the list: the outermost wrapper, and out of reach of the pop() of a
        # user's `with connection.execute_wrapper(...)` block
        wrappers.insert(0, _django_execute)


class _PoolWatch:
    """What is known of one Django connection pool: its alias and the connections it lent.

    ``out`` holds the ``id()`` of each connection ``getconn`` handed out and
    ``putconn`` has not taken back yet (a lent connection is alive, so its id is
    its own), so ``db_pool_checked_out`` is exact even while the pool opens
    connections in the background (psycopg_pool's ``pool_size - pool_available``
    counts a connection being opened as lent).
    """

    __slots__ = ("database", "lock", "out", "pool")

    def __init__(self, pool: Any, database: str) -> None:
        self.pool = pool
        self.database = database
        self.lock = threading.Lock()
        self.out: set[int] = set()


def _django_pool_gauges(watch: _PoolWatch) -> None:
    """Set the pool gauges of one Django pool from its public ``get_stats()`` and what it lent.

    * ``db_pool_size``: ``pool_min`` (``min_size``), the connections the pool
      keeps open: SQLAlchemy's ``pool_size``;
    * ``db_pool_overflow``: ``pool_size - pool_min``, the connections open (or
      being opened) beyond it, up to ``max_size``: SQLAlchemy's overflow, with
      ``max_size - min_size`` as its ``max_overflow``;
    * ``db_pool_checked_out``: the connections lent right now.

    ``get_stats()``, never ``pop_stats()``: the pool's own counters stay the user's.
    """
    obs = get_observability()
    cfg = obs.config
    if not (cfg.enabled and cfg.db_metrics):
        return
    try:
        stats = watch.pool.get_stats()
        metrics = obs.metrics
        labels = (watch.database,)
        with watch.lock:
            out = float(len(watch.out))
        minimum = stats.get("pool_min")
        opened = stats.get("pool_size")
        if minimum is not None:
            metrics.db_pool_size.set(labels, float(minimum))
            if opened is not None:
                metrics.db_pool_overflow.set(labels, max(0.0, float(opened) - minimum))
        metrics.db_pool_checked_out.set(labels, out)
    except Exception as exc:
        obs.faults.report("db", "pool", "reading the connection pool failed", exc)


def _watch_pool(pool: Any, database: str) -> _PoolWatch | None:
    """Wrap the public ``getconn`` and ``putconn`` of a ``psycopg_pool.ConnectionPool`` (once).

    Returns what is known of the pool (``None``: not a pool).
    """
    if not all(callable(getattr(pool, name, None)) for name in ("getconn", "putconn",
                                                                 "get_stats")):
        return None
    with _django_lock:
        known = getattr(pool, _MARK, None)
        if isinstance(known, _PoolWatch):
            return known
        watch = _PoolWatch(pool, database)
        getconn, putconn = pool.getconn, pool.putconn

        @functools.wraps(getconn)
        def timed_getconn(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                conn = getconn(*args, **kwargs)
            finally:
                _observe_wait(database, time.perf_counter() - started)
            with watch.lock:
                watch.out.add(id(conn))
            _django_pool_gauges(watch)
            return conn

        @functools.wraps(putconn)
        def counted_putconn(conn: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return putconn(conn, *args, **kwargs)
            finally:
                with watch.lock:
                    watch.out.discard(id(conn))
                _django_pool_gauges(watch)

        pool.getconn = timed_getconn
        pool.putconn = counted_putconn
        setattr(pool, _MARK, watch)
    return watch


def _connection_pool(connection: Any) -> Any:
    """The ``psycopg_pool.ConnectionPool`` an open Django connection came from, or ``None``.

    Only asked of a connection that is open: Django's ``pool`` property
    creates the alias's pool on first use, and a pool created before the
    test runner renames the database would connect to the wrong one.
    """
    options = (getattr(connection, "settings_dict", None) or {}).get("OPTIONS") or {}
    if not options.get("pool") or getattr(connection, "connection", None) is None:
        return None
    return getattr(connection, "pool", None)


def _watch_connection(connection: Any) -> None:
    """An open Django connection: if it came from Django's pool, watch the pool (wrapping it
    at its first connection) and count the connection as lent."""
    try:
        pool = _connection_pool(connection)
        if pool is None:
            return
        watch = _watch_pool(pool, getattr(connection, "alias", None) or "default")
        if watch is None:
            return
        with watch.lock:
            # the pool's getconn counted it already, unless it ran before the wrapping
            # (the pool's first connection, or a thread that raced it)
            watch.out.add(id(connection.connection))
        _django_pool_gauges(watch)
    except Exception as exc:
        get_observability().faults.report("db", "pool_wrap",
                                          "instrumenting a connection pool failed", exc)


def _on_connection_created(sender: Any = None, connection: Any = None, **_: Any) -> None:
    if connection is not None:
        _add_wrapper(connection)
        _watch_connection(connection)


def instrument_django_db() -> None:
    """Time every statement of every Django database connection, and watch Django's pools
    (once per process).

    Each connection gets the wrapper when it is created (the
    ``connection_created`` signal), and the connections open in this thread
    get it now.

    An alias with Django's connection pool (``OPTIONS={"pool": True}`` or a
    dict of ``psycopg_pool.ConnectionPool`` arguments; PostgreSQL, psycopg 3,
    Django 5.1+) gets the ``db_pool_*`` gauges and ``db_pool_wait_seconds``
    (the time ``getconn`` takes: waiting for a free connection, or for one
    being opened, health check included), updated at each checkout and
    checkin. The pool's public ``getconn`` and ``putconn`` are wrapped at its
    first connection (Django creates the pool then): that first wait is not
    timed, the later ones are.
    """
    global _django_db_on
    from django.db import connections  # type: ignore[import-untyped]
    from django.db.backends.signals import connection_created  # type: ignore[import-untyped]

    with _django_lock:
        if not _django_db_on:
            connection_created.connect(_on_connection_created, weak=False,
                                       dispatch_uid="mestres_observability.db")
            _django_db_on = True
    for connection in connections.all(initialized_only=True):
        _add_wrapper(connection)
        _watch_connection(connection)


_MISSING = object()


def _count_cache(alias: str, hits: int, misses: int) -> None:
    obs = get_observability()
    cfg = obs.config
    if not (cfg.enabled and cfg.db_metrics):
        return
    try:
        counter = obs.metrics.cache_requests_total
        if hits:
            counter.inc((alias, "hit"), float(hits), None)
        if misses:
            counter.inc((alias, "miss"), float(misses), None)
    except Exception as exc:
        obs.faults.report("db", "cache", "counting a cache read failed", exc)


def _wrap_cache(cache: Any, alias: str) -> Any:
    """Count hits and misses of one cache backend instance (its ``get`` and ``get_many``)."""
    if vars(cache).get(_MARK):
        return cache
    get, get_many = cache.get, cache.get_many

    @functools.wraps(get)
    def counted_get(key: Any, default: Any = None, version: Any = None) -> Any:
        value = get(key, _MISSING, version=version)
        if value is _MISSING:
            _count_cache(alias, 0, 1)
            return default
        _count_cache(alias, 1, 0)
        return value

    @functools.wraps(get_many)
    def counted_get_many(keys: Iterable[Any], version: Any = None) -> Any:
        keys = list(keys)
        found = get_many(keys, version=version)
        _count_cache(alias, len(found), max(0, len(set(keys)) - len(found)))
        return found

    cache.get = counted_get
    cache.get_many = counted_get_many
    setattr(cache, _MARK, True)
    return cache


_django_cache_on = False


def instrument_django_cache(aliases: Iterable[str] | None = None) -> None:
    """Count hits and misses of Django's caches (``settings.CACHES``; once per process).

    Args:
        aliases: the caches to count (default: every configured one).

    Every backend instance ``django.core.cache.caches`` hands out from now on
    (one per thread) is counted, through its public ``create_connection``.
    """
    global _django_cache_on
    from django.core.cache import caches  # type: ignore[import-untyped]

    wanted = None if aliases is None else frozenset(aliases)
    with _django_lock:
        if not _django_cache_on:
            original = caches.create_connection

            @functools.wraps(original)
            def create_connection(alias: str) -> Any:
                cache = original(alias)
                if wanted is None or alias in wanted:
                    try:
                        _wrap_cache(cache, alias)
                    except Exception as exc:
                        get_observability().faults.report("db", "cache_wrap",
                                                          "instrumenting a cache failed", exc)
                return cache

            caches.create_connection = create_connection
            _django_cache_on = True
    for alias in caches:
        if wanted is None or alias in wanted:
            _wrap_cache(caches[alias], alias)


def instrument_django(obs: Any = None) -> None:
    """:func:`instrument_django_db` and :func:`instrument_django_cache`, unless ``db_metrics``
    is off (the Django app calls it in ``ready()``). Never raises: a failure is counted."""
    instance = obs if obs is not None else get_observability()
    if not (instance.config.enabled and instance.config.db_metrics):
        return
    try:
        instrument_django_db()
        instrument_django_cache()
    except Exception as exc:
        instance.faults.report("db", "django", "instrumenting Django's databases failed", exc)
