"""Database and cache metrics against a real PostgreSQL and a real Redis.

SQLAlchemy: statements by operation (never the SQL text), errors, and the pool
gauges and wait time while a small pool is exhausted and released. Django (in a
subprocess, with its own settings): statements of its PostgreSQL connection,
from the main thread and another one, and hits and misses of its Redis cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mestres_observability.db import instrument_sqlalchemy
from mestres_observability.testing import fresh_observability, sample_value
from tests._support import require_module
from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_sqlalchemy_statements_errors_and_pool(postgres_server: PostgresServer) -> None:
    sa = require_module("sqlalchemy")
    require_module("psycopg2")
    engine = sa.create_engine(postgres_server.url, pool_size=2, max_overflow=1, pool_timeout=0.3)
    instrument_sqlalchemy(engine, name="shop")
    with fresh_observability() as obs:
        def value(name: str, **labels: str) -> float:
            return sample_value(name, obs, **labels)

        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE stock_secret_table (sku text, n int)"))
            conn.execute(sa.text("INSERT INTO stock_secret_table VALUES ('espresso-4242', 5)"))
            for _ in range(3):
                conn.execute(sa.text("SELECT n FROM stock_secret_table WHERE sku = :s"),
                             {"s": "espresso-4242"})
            conn.execute(sa.text("UPDATE stock_secret_table SET n = n - 1"))
        with pytest.raises(sa.exc.ProgrammingError), engine.connect() as conn:
            conn.execute(sa.text("SELECT * FROM no_such_table"))
        count = "db_query_duration_seconds_count"
        assert value(count, database="shop", operation="CREATE") == 1
        assert value(count, database="shop", operation="INSERT") == 1
        assert value(count, database="shop", operation="SELECT") == 4  # the failed one too
        assert value(count, database="shop", operation="UPDATE") == 1
        assert value("db_query_errors_total", database="shop", operation="SELECT") == 1
        body = obs.render_metrics().body.decode()
        assert "stock_secret_table" not in body
        assert "espresso-4242" not in body

        # exhaust the pool: 2 + 1 overflow, then a fourth caller waits pool_timeout and gives up
        held = [engine.connect() for _ in range(3)]
        assert value("db_pool_size", database="shop") == 2
        assert value("db_pool_checked_out", database="shop") == 3
        assert value("db_pool_overflow", database="shop") == 1
        waits_before = value("db_pool_wait_seconds_count", database="shop")
        with pytest.raises(sa.exc.TimeoutError):
            engine.connect()
        assert value("db_pool_wait_seconds_count", database="shop") == waits_before + 1
        assert value("db_pool_wait_seconds_sum", database="shop") >= 0.3
        held.pop().close()
        assert value("db_pool_checked_out", database="shop") == 2
        assert value("db_pool_overflow", database="shop") == 1  # three open, one beyond the size
        for conn in held:
            conn.close()
        assert value("db_pool_checked_out", database="shop") == 0
        assert value("db_pool_overflow", database="shop") == 0  # the pool closed the extra one
    engine.dispose()


_DJANGO = """
import json, sys, threading
import django
from django.conf import settings

settings.configure(
    DEBUG=False, SECRET_KEY="x", INSTALLED_APPS=["mestres_observability.django"],
    MESTRES_OBSERVABILITY={"configure_logging": False, "service_name": "shop-django"},
    DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "postgres",
                           "USER": "postgres", "HOST": "127.0.0.1", "PORT": PG_PORT}},
    CACHES={"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                        "LOCATION": REDIS_URL}},
)
django.setup()
from django.core.cache import cache, caches
from django.db import connection, connections
from mestres_observability import get_observability
from mestres_observability.testing import sample_value

with connection.cursor() as cur:
    cur.execute("CREATE TEMP TABLE orders_secret (id int)")
    cur.execute("INSERT INTO orders_secret VALUES (%s)", [1])
    cur.execute("SELECT id FROM orders_secret")
    try:
        cur.execute("SELEC broken")
    except Exception:
        pass

def other_thread():
    with connections["default"].cursor() as cur:
        cur.execute("SELECT 1")
    caches["default"].get("never-set-2")
    connections["default"].close()

t = threading.Thread(target=other_thread)
t.start()
t.join()

cache.set("espresso", 3)
cache.get("espresso")
cache.get("latte")
cache.get("latte", default="none")
cache.get_many(["espresso", "latte", "mocha"])
cache.get_or_set("tea", 7)
obs = get_observability()
out = {
    "service": obs.config.service_name,
    "select": sample_value("db_query_duration_seconds_count", database="default",
                           operation="SELECT"),
    "insert": sample_value("db_query_duration_seconds_count", database="default",
                           operation="INSERT"),
    "create": sample_value("db_query_duration_seconds_count", database="default",
                           operation="CREATE"),
    "errors": sample_value("db_query_errors_total", database="default", operation="OTHER"),
    "hits": sample_value("cache_requests_total", cache="default", result="hit"),
    "misses": sample_value("cache_requests_total", cache="default", result="miss"),
    "secret_in_body": "orders_secret" in obs.render_metrics().body.decode(),
}
print(json.dumps(out))
"""


def test_django_connections_and_cache(postgres_server: PostgresServer,
                                      redis_server: RedisServer) -> None:
    require_module("django")
    require_module("psycopg2")
    require_module("redis")
    code = (f"PG_PORT = {str(postgres_server.port)!r}\nREDIS_URL = {redis_server.url!r}\n"
            + textwrap.dedent(_DJANGO))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["service"] == "shop-django"
    assert out["create"] == 1
    assert out["insert"] == 1
    assert out["select"] == 2  # one per thread: each thread's connection got the wrapper
    assert out["errors"] == 1  # "SELEC broken" is no known operation
    # get: 1 hit, 2 misses; get_many: 1 hit, 2 misses; get_or_set: a miss, then Django's
    # add() and a second get(), a hit; the other thread's own cache instance: 1 miss
    assert out["hits"] == 3
    assert out["misses"] == 6
    assert out["secret_in_body"] is False


_DJANGO_POOL = """
import json, sys, threading
import django
from django.conf import settings

settings.configure(
    DEBUG=False, SECRET_KEY="x", INSTALLED_APPS=["mestres_observability.django"],
    MESTRES_OBSERVABILITY={"configure_logging": False, "service_name": "shop-pool"},
    DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "postgres",
                           "USER": "postgres", "HOST": "127.0.0.1", "PORT": PG_PORT,
                           "OPTIONS": {"pool": {"min_size": 2, "max_size": 4,
                                                "timeout": 0.4}}}},
)
django.setup()
from django.db import connection, connections
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

def value(name, **labels):
    # read the multiprocess directory, as /metrics of any worker would
    registry = CollectorRegistry()
    MultiProcessCollector(registry, MULTIPROC_DIR)
    found = registry.get_sample_value(name, {"database": "default", **labels})
    return found if found is not None else 0.0

GAUGES = ("db_pool_size", "db_pool_checked_out", "db_pool_overflow")
out = {"before": [value(g) for g in GAUGES]}
with connection.cursor() as cur:  # the pool's first connection: the pool is wrapped now
    cur.execute("SELECT 1")
    out["first"] = [value(g) for g in GAUGES]
connection.close()
out["warm"] = [value(g) for g in GAUGES]
out["waits_warm"] = value("db_pool_wait_seconds_count")
release = threading.Event()
held = threading.Barrier(5)
errors = []

def hold():
    try:
        with connections["default"].cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            cur.fetchone()
    finally:
        held.wait(timeout=30)
    release.wait(timeout=30)
    connections["default"].close()

threads = [threading.Thread(target=hold) for _ in range(4)]
for t in threads:
    t.start()
held.wait(timeout=30)
out["held"] = [value(g) for g in GAUGES]
out["waits_held"] = value("db_pool_wait_seconds_count")
try:  # a fifth caller: the pool is at max_size, it waits `timeout` and gives up
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
except Exception as exc:
    errors.append(type(exc).__name__)
out["errors"] = errors
out["waits_after_timeout"] = value("db_pool_wait_seconds_count")
out["wait_sum"] = value("db_pool_wait_seconds_sum")
release.set()
for t in threads:
    t.join()
out["released"] = [value(g) for g in GAUGES]
with connection.cursor() as cur:  # a free one at once: one more wait, still one lent
    cur.execute("SELECT 1")
    out["one_lent"] = value("db_pool_checked_out")
connection.close()
out["end"] = value("db_pool_checked_out")
print(json.dumps(out))
"""


def test_django_connection_pool_gauges_and_wait(postgres_server: PostgresServer,
                                               tmp_path: Path) -> None:
    """Django's own pool (OPTIONS pool, psycopg 3): four threads hold four connections."""
    django = require_module("django")
    if django.VERSION < (5, 1):
        pytest.skip("Django's connection pool needs Django 5.1")
    require_module("psycopg")
    require_module("psycopg_pool")
    mp_dir = tmp_path / "mp"
    mp_dir.mkdir()
    code = (f"PG_PORT = {str(postgres_server.port)!r}\nMULTIPROC_DIR = {str(mp_dir)!r}\n"
            + textwrap.dedent(_DJANGO_POOL))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("prometheus_multiproc_dir", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # [size, checked out, overflow]: size is min_size, overflow what is open beyond it
    assert out["before"] == [0, 0, 0]  # no pool before the first query (Django makes it then)
    # (overflow: 0 or 1, as the pool grew or not for a request made while it was filling)
    assert out["first"][:2] == [2, 1]
    assert out["warm"][:2] == [2, 0]
    assert out["waits_warm"] == 0  # that first getconn ran before the wrapping
    assert out["held"] == [2, 4, 2]
    assert out["waits_held"] == 4
    assert out["errors"] == ["OperationalError"]  # Django's wrapping of PoolTimeout
    assert out["waits_after_timeout"] == 5
    assert out["wait_sum"] >= 0.4  # the fifth caller's wait, at least the pool's timeout
    # back in the pool, still open (max_idle closes the extra two later)
    assert out["released"] == [2, 0, 2]
    assert out["one_lent"] == 1
    assert out["end"] == 0
