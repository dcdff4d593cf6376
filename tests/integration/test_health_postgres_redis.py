"""Health checks against a real PostgreSQL and a real Redis, stopped and restarted mid-test."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mestres_observability.health import redis_check, sql_check
from mestres_observability.testing import fresh_observability, sample_value
from tests._support import require_module, wait_until
from tests.servers import PostgresServer, RedisServer, running_postgres, running_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server

DEADLINE = 0.8
MARGIN = 0.3


def _probe(obs: Any, kind: str) -> tuple[int, dict[str, Any], float]:
    t0 = time.monotonic()
    r = obs.health.probe(kind)
    elapsed = time.monotonic() - t0
    return r.status, json.loads(r.body), elapsed


def test_postgres_and_redis_down_and_back(postgres_server: PostgresServer,
                                          redis_server: RedisServer) -> None:
    with fresh_observability(service_name="svc", health_cache_ttl=0.0,
                             health_deadline=DEADLINE) as obs:
        obs.health.add("postgres", sql_check(postgres_server.url), timeout=0.6)
        obs.health.add("redis", redis_check(redis_server.url, timeout=0.3), timeout=0.5)

        code, body, elapsed = _probe(obs, "detailed")
        assert code == 200, body
        assert body["checks"]["postgres"]["status"] == "healthy"
        assert body["checks"]["redis"]["status"] == "healthy"
        assert body["checks"]["postgres"]["response_time_ms"] > 0
        assert sample_value("health_check_status", obs, check="postgres") == 1.0
        assert sample_value("health_check_duration_seconds", obs, check="postgres") > 0
        assert _probe(obs, "readiness")[0] == 200

        # PostgreSQL goes away mid-test
        postgres_server.stop()
        code, body, elapsed = _probe(obs, "detailed")
        assert code == 503, body
        assert body["status"] == "unhealthy"
        assert body["checks"]["postgres"]["status"] == "unhealthy"
        assert body["checks"]["postgres"]["error"] in ("OperationalError", "timeout")
        assert body["checks"]["redis"]["status"] == "healthy"
        assert elapsed < DEADLINE + MARGIN
        assert sample_value("health_check_status", obs, check="postgres") == 0.0
        raw = obs.health.probe("detailed").body.decode()
        assert "127.0.0.1" not in raw
        assert str(postgres_server.port) not in raw
        # liveness does not care; readiness does
        assert _probe(obs, "liveness")[0] == 200
        code, body, elapsed = _probe(obs, "readiness")
        assert code == 503
        assert body["status"] == "not_ready"
        assert elapsed < DEADLINE + MARGIN

        postgres_server.start()
        wait_until(lambda: _probe(obs, "detailed")[0] == 200, timeout=15,
                   message="postgres check healthy again")
        assert sample_value("health_check_status", obs, check="postgres") == 1.0

        # Redis goes away mid-test
        redis_server.stop()
        code, body, elapsed = _probe(obs, "detailed")
        assert code == 503, body
        assert body["checks"]["redis"]["status"] == "unhealthy"
        assert body["checks"]["redis"]["error"] in ("ConnectionError", "TimeoutError", "timeout")
        assert body["checks"]["postgres"]["status"] == "healthy"
        assert elapsed < DEADLINE + MARGIN
        assert _probe(obs, "liveness")[0] == 200
        assert _probe(obs, "readiness")[0] == 503

        redis_server.start()
        wait_until(lambda: _probe(obs, "detailed")[0] == 200, timeout=15,
                   message="redis check healthy again")


def test_dbapi_connect_callable(postgres_server: PostgresServer) -> None:
    psycopg2 = require_module("psycopg2")
    check = sql_check(lambda: psycopg2.connect(postgres_server.dsn()))
    assert check() is True
    postgres_server.stop()
    with pytest.raises(psycopg2.OperationalError):
        check()
    postgres_server.start()
    assert check() is True


def test_aprobe_with_real_servers(postgres_server: PostgresServer,
                                  redis_server: RedisServer) -> None:
    redis_asyncio = require_module("redis.asyncio")

    async def main() -> None:
        client = redis_asyncio.Redis.from_url(redis_server.url, socket_timeout=0.3,
                                              socket_connect_timeout=0.3)
        try:
            with fresh_observability(health_cache_ttl=0.0) as obs:
                obs.health.add("postgres", sql_check(postgres_server.url))
                obs.health.add("redis", redis_check(client))
                r = await obs.health.aprobe("readiness")
                assert r.status == 200, r.body
                redis_server.stop()
                t0 = time.monotonic()
                r = await obs.health.aprobe("readiness")
                assert time.monotonic() - t0 < DEADLINE + MARGIN
                assert r.status == 503
                assert json.loads(r.body)["checks"]["redis"]["status"] == "unhealthy"
        finally:
            await client.aclose()

    asyncio.run(main())
