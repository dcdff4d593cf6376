"""Health checks against a real PostgreSQL and a real Redis, stopped, frozen and restarted mid-test.

The servers come from :mod:`tests.servers` (fixtures in ``conftest.py``):
PostgreSQL is a throwaway ``initdb`` cluster in a temporary folder, run as
``postgres`` through ``runuser`` when the tests run as root.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import tests._support
import tests.servers
from mestres_observability.health import redis_check, sql_check
from mestres_observability.observability import Observability
from mestres_observability.testing import fresh_observability, sample_value
from tests._support import require_module, wait_until
from tests.servers import PostgresServer, RedisServer, running

pytestmark = pytest.mark.integration

DEADLINE = 0.8
MARGIN = 0.3
PG_TIMEOUT = 0.6
PASSWORD = "pg-hunter2"


def _obs(**settings: Any) -> Any:
    # thresholds at 100: a busy test machine must not turn checks.system degraded
    base: dict[str, Any] = {"service_name": "svc", "health_cache_ttl": 0.0,
                            "health_deadline": DEADLINE, "health_cpu_threshold": 100.0,
                            "health_memory_threshold": 100.0, "health_disk_threshold": 100.0}
    return fresh_observability(**{**base, **settings})


def _probe(obs: Any, kind: str) -> tuple[int, dict[str, Any], float]:
    t0 = time.monotonic()
    r = obs.health.probe(kind)
    elapsed = time.monotonic() - t0
    return r.status, json.loads(r.body), elapsed


@pytest.fixture
def http_base() -> Iterator[Any]:
    """Serve the health endpoints of an instance over real HTTP (Flask on werkzeug)."""
    flask = require_module("flask")
    serving = require_module("werkzeug.serving")
    servers: list[Any] = []

    def serve(obs: Observability) -> str:
        from mestres_observability.observability import instrument_app

        app = flask.Flask("health-it")
        instrument_app(app, obs)
        server = serving.make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def _get(url: str) -> tuple[int, str, float]:
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            code, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        code, text = err.code, err.read().decode()
    return code, text, time.monotonic() - t0


def _library_threads() -> int:
    """Threads other than the test HTTP server's (one short-lived thread per request)."""
    return sum(1 for t in threading.enumerate() if "process_request_thread" not in t.name)


def test_postgres_and_redis_down_and_back(postgres_server: PostgresServer,
                                          redis_server: RedisServer,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mestres_observability.health")
    # trust authentication ignores the password; it is here to show it never leaks
    url = postgres_server.url.replace("postgres@", f"postgres:{PASSWORD}@")
    with _obs() as obs:
        obs.health.add("postgres", sql_check(url), timeout=PG_TIMEOUT)
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
        assert body["checks"]["postgres"]["response_time_ms"] <= (PG_TIMEOUT + MARGIN) * 1000
        assert body["checks"]["redis"]["status"] == "healthy"
        assert elapsed < DEADLINE + MARGIN
        assert sample_value("health_check_status", obs, check="postgres") == 0.0
        for kind in ("basic", "liveness", "readiness", "detailed"):
            for accept in (None, "application/health+json"):
                raw = obs.health.probe(kind, accept=accept).body.decode()
                assert "127.0.0.1" not in raw
                assert str(postgres_server.port) not in raw
                assert PASSWORD not in raw
        assert "OperationalError" in caplog.text  # the detail is in the log ...
        assert PASSWORD not in caplog.text  # ... without the password
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
        assert sample_value("health_check_status", obs, check="redis") == 1.0


def test_frozen_servers_time_out_over_http_and_recover(postgres_server: PostgresServer,
                                                       redis_server: RedisServer,
                                                       http_base: Any) -> None:
    """SIGSTOP: connections hang instead of failing (the hard case); HTTP answers in time."""
    timeout = 0.4
    with _obs() as obs:
        # socket timeouts far above the check's: only the registry's timeout can save the probe
        obs.health.add("postgres", sql_check(postgres_server.url), timeout=timeout)
        obs.health.add("redis", redis_check(redis_server.url, timeout=5.0), timeout=timeout)
        base = http_base(obs)
        code, text, _ = _get(f"{base}/health/readiness")
        assert code == 200, text

        postgres_server.freeze()
        redis_server.freeze()
        try:
            code, text, elapsed = _get(f"{base}/health/readiness")
            assert code == 503, text
            assert elapsed < timeout + MARGIN
            checks = json.loads(text)["checks"]
            assert checks["postgres"]["error"] == "timeout"
            assert checks["redis"]["error"] == "timeout"
            code, text, _ = _get(f"{base}/health/detailed")
            assert code == 503, text
            before = _library_threads()
            for kind in ("readiness", "detailed") * 25:
                code, text, elapsed = _get(f"{base}/health/{kind}")
                assert code == 503, text
                assert elapsed < timeout + MARGIN, (kind, elapsed)
            assert _library_threads() <= before, [t.name for t in threading.enumerate()]
            code, text, elapsed = _get(f"{base}/health/liveness")
            assert code == 200
            assert elapsed < MARGIN
        finally:
            postgres_server.thaw()
            redis_server.thaw()
        wait_until(lambda: _get(f"{base}/health/readiness")[0] == 200, timeout=20,
                   message="checks healthy again after SIGCONT")


def test_dbapi_connect_callable(postgres_server: PostgresServer) -> None:
    psycopg2 = require_module("psycopg2")
    check = sql_check(lambda: psycopg2.connect(postgres_server.dsn()))
    assert check() is True
    postgres_server.stop()
    with pytest.raises(psycopg2.OperationalError):
        check()
    postgres_server.start()
    assert check() is True


def test_sync_redis_client(redis_server: RedisServer) -> None:
    redis = require_module("redis")
    client = redis.Redis.from_url(redis_server.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    check = redis_check(client)
    assert check() is True
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        check()
    redis_server.start()
    wait_until(check, timeout=10, message="redis client reconnects")
    client.close()


def test_aprobe_with_real_servers(postgres_server: PostgresServer,
                                  redis_server: RedisServer) -> None:
    redis_asyncio = require_module("redis.asyncio")

    async def main() -> None:
        client = redis_asyncio.Redis.from_url(redis_server.url, socket_timeout=0.3,
                                              socket_connect_timeout=0.3)
        try:
            with _obs() as obs:
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
                assert (await obs.health.aprobe("liveness")).status == 200
        finally:
            await client.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("required", [False, True])
def test_missing_binary_skips_or_fails(monkeypatch: pytest.MonkeyPatch, required: bool) -> None:
    """No PostgreSQL: a clear skip locally, a failure under MESTRES_TEST_REQUIRE_INTEGRATION=1."""
    monkeypatch.setattr(tests._support, "REQUIRE_INTEGRATION", required)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(tests.servers, "PG_BIN_GLOB", "/nonexistent-mestres-pg/*/bin")
    expected = pytest.fail.Exception if required else pytest.skip.Exception
    for make in (PostgresServer, RedisServer):
        with pytest.raises(expected, match="is not installed") as err, running(make):
            pytest.fail("a server started without its binary")
        assert ("MESTRES_TEST_REQUIRE_INTEGRATION=1" in str(err.value)) is required
