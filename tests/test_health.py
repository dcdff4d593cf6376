"""Health registry: status model, timeouts, single-flight, formats, security, built-in checks."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mestres_observability import health_check, init_observability
from mestres_observability.errors import MissingExtraError
from mestres_observability.health import (
    HealthRegistry,
    HealthResponse,
    disk_check,
    http_check,
    redis_check,
    sql_check,
    system_check,
)
from mestres_observability.observability import Observability
from mestres_observability.testing import fresh_observability, sample_value
from tests._support import require_module, wait_until

TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
MARGIN = 0.3
SECRET = "hunter2"


def body(r: HealthResponse) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(r.body, parse_constant=lambda c: pytest.fail(c))
    return data


def header(r: HealthResponse, name: str) -> str | None:
    for k, v in r.headers:
        if k.lower() == name.lower():
            return v
    return None


def _obs(**settings: Any) -> Any:
    # thresholds at 100: a busy test machine must not turn checks.system degraded
    base: dict[str, Any] = {"service_name": "cafe", "service_version": "1.2.3",
                            "health_cache_ttl": 0.0, "health_cpu_threshold": 100.0,
                            "health_memory_threshold": 100.0, "health_disk_threshold": 100.0}
    return fresh_observability(**{**base, **settings})


@pytest.fixture
def hobs() -> Iterator[Observability]:
    with _obs() as o:
        yield o


@pytest.fixture
def xobs() -> Iterator[Observability]:
    """Details exposed (``health_expose_details=True``)."""
    with _obs(health_expose_details=True) as o:
        yield o


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Lets hung checks finish at the end of the test."""
    ev = threading.Event()
    yield ev
    ev.set()


# ---------------------------------------------------------------------- shapes
def check_seed_shape(kind: str, r: HealthResponse) -> dict[str, Any]:
    """JSON-schema-ish validation of the seed-style JSON."""
    assert r.status in (200, 503)
    assert header(r, "Content-Type") == "application/json"
    assert header(r, "Cache-Control") == "no-store"
    b = body(r)
    allowed = {"basic": {"healthy"}, "liveness": {"alive"}, "readiness": {"ready", "not_ready"},
               "detailed": {"healthy", "degraded", "unhealthy"}}[kind]
    assert b["status"] in allowed
    assert isinstance(b["service"], str)
    assert isinstance(b["version"], str)
    assert TS_RE.match(b["timestamp"]), b["timestamp"]
    ts = dt.datetime.fromisoformat(b["timestamp"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.timezone.utc) - ts).total_seconds()) < 5
    assert (r.status == 503) == (b["status"] in ("unhealthy", "not_ready"))
    for name, entry in b.get("checks", {}).items():
        assert isinstance(name, str)
        assert entry["status"] in (("healthy", "degraded") if name == "system"
                                   else ("healthy", "unhealthy"))
        assert isinstance(entry["critical"], bool)
        assert isinstance(entry["response_time_ms"], (int, float))
        assert entry["response_time_ms"] >= 0
        assert ("error" in entry) == (entry["status"] != "healthy")
        if "error" in entry:
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", entry["error"])
    return b


def check_draft_shape(r: HealthResponse) -> dict[str, Any]:
    """The IETF health-check draft: status enum, checks values are arrays, no output on pass."""
    assert header(r, "Content-Type") == "application/health+json"
    assert header(r, "Cache-Control") == "no-store"
    b = body(r)
    assert b["status"] in ("pass", "warn", "fail")
    assert (r.status == 503) == (b["status"] == "fail")
    for key, items in b.get("checks", {}).items():
        assert isinstance(key, str)
        assert isinstance(items, list)
        assert items
        for item in items:
            assert item["status"] in ("pass", "warn", "fail")
            assert TS_RE.match(item["time"])
            if item["status"] == "pass":
                assert "output" not in item
            else:
                assert isinstance(item["output"], str)
    return b


def test_basic_and_liveness(hobs: Observability) -> None:
    for kind, word in (("basic", "healthy"), ("liveness", "alive")):
        r = hobs.health.probe(kind)
        b = check_seed_shape(kind, r)
        assert r.status == 200
        assert b == {"status": word, "service": "cafe", "version": "1.2.3",
                     "timestamp": b["timestamp"]}


def test_status_model(hobs: Observability) -> None:
    h = hobs.health
    h.add("db", lambda: True)
    h.add("cache", lambda: True, critical=False)
    r = h.probe("detailed")
    b = check_seed_shape("detailed", r)
    assert (r.status, b["status"]) == (200, "healthy")
    assert set(b["checks"]) == {"db", "cache", "system"}
    assert b["checks"]["system"]["status"] == "healthy"

    h.add("cache", lambda: False, critical=False)
    r = h.probe("detailed")
    b = check_seed_shape("detailed", r)
    assert (r.status, b["status"]) == (200, "degraded")
    assert b["checks"]["cache"] == {"status": "unhealthy", "critical": False,
                                    "response_time_ms": b["checks"]["cache"]["response_time_ms"],
                                    "error": "failed"}
    assert h.probe("readiness").status == 200  # non-critical failure: still ready

    def db() -> bool:
        raise ConnectionRefusedError("nope")

    h.add("db", db)
    r = h.probe("detailed")
    b = check_seed_shape("detailed", r)
    assert (r.status, b["status"]) == (503, "unhealthy")
    assert b["checks"]["db"]["error"] == "ConnectionRefusedError"
    r = h.probe("readiness")
    b = check_seed_shape("readiness", r)
    assert (r.status, b["status"]) == (503, "not_ready")
    assert set(b["checks"]) == {"db"}  # readiness runs critical checks only
    assert h.probe("liveness").status == 200
    assert h.probe("basic").status == 200

    h.remove("db")
    assert h.probe("readiness").status == 200
    with pytest.raises(ValueError):
        h.probe("bogus")


def test_draft_format(hobs: Observability) -> None:
    h = hobs.health
    h.add("db", lambda: True)
    accept = "application/health+json"
    for kind in ("basic", "liveness", "readiness", "detailed"):
        b = check_draft_shape(h.probe(kind, accept=accept))
        assert b["status"] == "pass"
    b = check_draft_shape(h.probe("detailed", accept=accept))
    assert b["serviceId"] == "cafe"
    assert b["version"] == "1.2.3"
    assert "db:responseTime" in b["checks"]
    assert "cpu:utilization" in b["checks"]
    h.add("opt", lambda: False, critical=False)
    assert check_draft_shape(h.probe("detailed", accept=accept))["status"] == "warn"
    h.add("db", lambda: False)
    r = h.probe("detailed", accept=accept)
    b = check_draft_shape(r)
    assert (r.status, b["status"]) == (503, "fail")
    assert b["checks"]["db:responseTime"][0]["output"] == "failed"
    # kubelet sends */*: plain JSON; q=0 refuses the draft
    assert header(h.probe("liveness", accept="*/*"), "Content-Type") == "application/json"
    assert header(h.probe("liveness", accept="application/health+json;q=0, */*"),
                  "Content-Type") == "application/json"
    assert header(h.probe("liveness", accept="application/json;q=0.5, application/health+json"),
                  "Content-Type") == "application/health+json"


def test_reserved_keys_win_and_details(xobs: Observability) -> None:
    h = xobs.health
    h.add("c", lambda: {"status": "healthy", "response_time_ms": -5, "error": "boom",
                        "critical": "no", "queue_depth": 3})
    b = check_seed_shape("detailed", h.probe("detailed"))
    entry = b["checks"]["c"]
    assert entry["status"] == "healthy"
    assert entry["critical"] is True
    assert entry["response_time_ms"] >= 0
    assert "error" not in entry
    assert entry["queue_depth"] == 3
    h.add("c", lambda: {"status": "fail", "queue_depth": 9})
    r = h.probe("detailed")
    b = check_seed_shape("detailed", r)
    assert r.status == 503
    assert b["checks"]["c"]["error"] == "failed"


def test_details_hidden_by_default(hobs: Observability) -> None:
    hobs.health.add("c", lambda: {"host": "10.1.2.3", "ok": True})
    raw = hobs.health.probe("detailed").body.decode()
    assert "10.1.2.3" not in raw


@pytest.mark.parametrize(("value", "ok"), [
    (None, True), (True, True), ("yes", True), (1, True), (False, False), (0, False),
    ("", False), ({}, True),
])
def test_return_values_normalised(hobs: Observability, value: Any, ok: bool) -> None:
    hobs.health.add("c", lambda: value)
    b = check_seed_shape("detailed", hobs.health.probe("detailed"))
    assert (b["checks"]["c"]["status"] == "healthy") is ok


def test_hostile_details_are_json_safe_and_bounded(xobs: Observability) -> None:
    h = xobs.health
    h.add("odd", lambda: {"when": dt.datetime(2024, 1, 1), "amount": Decimal("1.5"),
                          "raw": b"\x00\xff", "nan": math.nan, "inf": -math.inf,
                          "password": SECRET})
    h.add("huge", lambda: {f"k{i}": "x" * 1000 for i in range(1000)})
    r = h.probe("detailed")
    b = check_seed_shape("detailed", r)
    assert len(r.body) < 64 * 1024
    assert b["checks"]["huge"]["status"] == "healthy"
    assert b["checks"]["odd"]["amount"] == 1.5
    assert b["checks"]["odd"]["nan"] == "nan"
    assert SECRET not in r.body.decode()


class _Hostile:
    def __bool__(self) -> bool:
        raise RuntimeError(SECRET)


def test_hostile_return_value(hobs: Observability) -> None:
    hobs.health.add("c", _Hostile)
    r = hobs.health.probe("detailed")
    assert r.status == 503
    assert body(r)["checks"]["c"]["error"] == "RuntimeError"


# ---------------------------------------------------------------------- timeouts
def test_hung_sync_check_times_out_without_piling_threads(
        hobs: Observability, release: threading.Event) -> None:
    calls = []

    def hang() -> bool:
        calls.append(1)
        release.wait(60)
        return True

    hobs.health.add("hang", hang, timeout=0.2)
    t0 = time.monotonic()
    r = hobs.health.probe("detailed")
    elapsed = time.monotonic() - t0
    assert elapsed < 0.2 + MARGIN
    b = check_seed_shape("detailed", r)
    assert r.status == 503
    assert b["checks"]["hang"]["error"] == "timeout"
    assert b["checks"]["hang"]["response_time_ms"] >= 150
    assert sample_value("health_check_status", hobs, check="hang") == 0.0
    before = threading.active_count()
    for i in range(50):
        kind = ("readiness", "detailed")[i % 2]
        t0 = time.monotonic()
        r = hobs.health.probe(kind)
        assert time.monotonic() - t0 < 0.2 + MARGIN  # each probe, not only the first
        assert r.status == 503
        assert body(r)["checks"]["hang"]["error"] == "timeout"
    assert threading.active_count() <= before
    assert len(calls) == 1  # never a second run while the first is stuck
    release.set()
    wait_until(lambda: hobs.health.probe("readiness").status == 200, timeout=5,
               message="check runs again once the stuck run returned")
    assert len(calls) == 2


def test_hung_async_check_sync_and_async_probe(hobs: Observability) -> None:
    async def hang() -> bool:
        await asyncio.Event().wait()
        return True

    hobs.health.add("ahang", hang, timeout=0.2)
    t0 = time.monotonic()
    r = hobs.health.probe("readiness")
    assert time.monotonic() - t0 < 0.2 + MARGIN
    assert r.status == 503
    assert body(r)["checks"]["ahang"]["error"] == "timeout"

    async def main() -> HealthResponse:
        return await hobs.health.aprobe("readiness")

    before = threading.active_count()
    for _ in range(5):
        t0 = time.monotonic()
        r = asyncio.run(main())
        assert time.monotonic() - t0 < 0.2 + MARGIN
        assert r.status == 503
        assert body(r)["checks"]["ahang"]["error"] == "timeout"
    assert threading.active_count() <= before


def test_hung_async_check_never_piles_up_tasks(hobs: Observability) -> None:
    """50 probes (sync and async) against a hung async check: at most one run at any time."""
    running = [0]
    peak = [0]
    starts = [0]

    async def hang() -> bool:
        starts[0] += 1
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        try:
            await asyncio.Event().wait()
        finally:
            running[0] -= 1
        return True

    hobs.health.add("ahang", hang, timeout=0.05)
    assert hobs.health.probe("readiness").status == 503
    before = threading.active_count()

    async def aprobes() -> None:
        for _ in range(25):
            t0 = time.monotonic()
            r = await hobs.health.aprobe("readiness")
            assert time.monotonic() - t0 < 0.05 + MARGIN
            assert body(r)["checks"]["ahang"]["error"] == "timeout"

    for _ in range(25):
        t0 = time.monotonic()
        r = hobs.health.probe("readiness")
        assert time.monotonic() - t0 < 0.05 + MARGIN
        assert body(r)["checks"]["ahang"]["error"] == "timeout"
    asyncio.run(aprobes())
    assert peak[0] == 1  # never two runs at once
    wait_until(lambda: running[0] == 0, timeout=5, message="the hung run to be cancelled")
    n = starts[0]
    assert hobs.health.probe("readiness").status == 503
    assert starts[0] == n + 1  # cancelled at its timeout, so the next probe runs it again
    assert threading.active_count() <= before


def test_deadline_bounds_slow_check(release: threading.Event) -> None:
    with fresh_observability(health_deadline=0.15, health_check_timeout=5.0,
                             health_cache_ttl=0.0) as o:
        o.health.add("slow", lambda: release.wait(60))
        t0 = time.monotonic()
        r = o.health.probe("readiness")
        assert time.monotonic() - t0 < 0.15 + MARGIN
        assert body(r)["checks"]["slow"]["error"] == "timeout"


def test_slow_result_past_timeout_counts_as_timeout(hobs: Observability) -> None:
    done = threading.Event()

    def slow() -> bool:
        time.sleep(0.3)
        done.set()
        return True

    hobs.health.add("slow", slow, timeout=0.1)
    assert body(hobs.health.probe("readiness"))["checks"]["slow"]["error"] == "timeout"
    assert done.wait(5)
    time.sleep(0.05)
    # the late success is recorded as a timeout, not flipped to healthy
    assert sample_value("health_check_status", hobs, check="slow") == 0.0


def test_async_checks_in_aprobe(hobs: Observability) -> None:
    async def ok() -> dict[str, int]:
        await asyncio.sleep(0.01)
        return {"n": 1}

    def sync_ok() -> bool:
        return True

    hobs.health.add("a", ok)
    hobs.health.add("s", sync_ok)
    r = asyncio.run(hobs.health.aprobe("detailed"))
    b = check_seed_shape("detailed", r)
    assert r.status == 200
    assert b["checks"]["a"]["response_time_ms"] >= 5
    assert sample_value("health_check_duration_seconds", hobs, check="a") >= 0.005


# ---------------------------------------------------------------------- cache, single flight
def test_ttl_cache_and_single_flight() -> None:
    calls = []
    lock = threading.Lock()

    def dep() -> bool:
        with lock:
            calls.append(1)
        time.sleep(0.1)
        return True

    with fresh_observability(health_cache_ttl=30.0) as o:
        o.health.add("dep", dep)
        codes: list[int] = []
        threads = [threading.Thread(target=lambda: codes.append(o.health.probe("readiness")
                                                                 .status)) for _ in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert codes == [200] * 200
        assert len(calls) == 1
        o.health.probe("detailed")
        assert len(calls) == 1


# ---------------------------------------------------------------------- security
class OperationalError(Exception):
    pass


def test_password_never_in_any_response(caplog: pytest.LogCaptureFixture) -> None:
    def db() -> bool:
        raise OperationalError(f"connection failed: password={SECRET} host=10.1.2.3")

    async def adb() -> bool:
        raise OperationalError(f"postgresql://u:{SECRET}@10.1.2.3/db")

    def leaky() -> dict[str, str]:
        return {"dsn": f"postgresql://u:{SECRET}@db/x", "password": SECRET}

    caplog.set_level(logging.DEBUG, logger="mestres_observability.health")
    for expose in (False, True):
        with _obs(health_expose_details=expose) as o:
            o.health.add("db", db)
            o.health.add("adb", adb, critical=False)
            o.health.add("leaky", leaky, critical=False)
            for kind in ("basic", "liveness", "readiness", "detailed"):
                for accept in (None, "application/health+json"):
                    for r in (o.health.probe(kind, accept=accept),
                              asyncio.run(o.health.aprobe(kind, accept=accept))):
                        text = r.body.decode() + repr(r.headers)
                        assert SECRET not in text
                        assert "10.1.2.3" not in text
            b = body(o.health.probe("detailed"))
            assert b["checks"]["db"]["error"] == "OperationalError"
            assert b["checks"]["adb"]["error"] == "OperationalError"
    assert "OperationalError" in caplog.text  # the detail goes to the log ...
    assert "connection failed: password=" in caplog.text
    assert "10.1.2.3" in caplog.text
    assert SECRET not in caplog.text  # ... redacted


def test_detailed_token() -> None:
    with fresh_observability(health_detailed_token="s3cret-token", health_cache_ttl=0.0) as o:
        o.health.add("c", lambda: {"depth": 4})
        for auth in (None, "", "Bearer wrong", "Basic s3cret-token", "s3cret-token"):
            r = o.health.probe("detailed", authorization=auth)
            assert r.status == 401
            assert header(r, "WWW-Authenticate", ) == 'Bearer realm="health"'
            assert b"depth" not in r.body
        r = o.health.probe("detailed", authorization="Bearer s3cret-token")
        assert r.status == 200
        assert body(r)["checks"]["c"]["depth"] == 4
        assert o.health.probe("readiness").status == 200  # only detailed is protected


# ---------------------------------------------------------------------- readiness flag
def _is_ready(o: Any) -> bool:
    """Read the flag anew (mypy keeps an attribute narrowed across method calls)."""
    return bool(o.health.is_ready)


def test_readiness_flag() -> None:
    with fresh_observability(health_start_ready=False) as o:
        assert not _is_ready(o)
        r = o.health.probe("readiness")
        assert r.status == 503
        assert body(r)["reason"] == "starting"
        assert o.health.probe("liveness").status == 200
        o.health.mark_started()
        assert _is_ready(o)
        assert o.health.probe("readiness").status == 200
        o.health.start_draining()
        r = o.health.probe("readiness")
        assert r.status == 503
        assert body(r)["reason"] == "draining"
        b = check_draft_shape(o.health.probe("readiness", accept="application/health+json"))
        assert b["status"] == "fail"
        assert o.health.probe("liveness").status == 200


def test_shutdown_drains() -> None:
    with fresh_observability() as o:
        assert o.health.probe("readiness").status == 200
        o.shutdown()
        assert o.health.probe("readiness").status == 503
        assert o.health.probe("liveness").status == 200


# ---------------------------------------------------------------------- registration
def test_decorator_binds_to_current_and_survives_reinit() -> None:
    with fresh_observability() as o:
        @health_check("deco", critical=False, timeout=0.3)
        def deco() -> bool:
            return True

        assert deco() is True  # returned unchanged
        assert "deco" in o.health.names

        @health_check()
        async def named_by_function() -> bool:
            return True

        assert "named_by_function" in o.health.names
        o2 = init_observability(configure_logging=False)
        try:
            assert {"deco", "named_by_function"} <= set(o2.health.names)
            assert o2.health is not o.health
        finally:
            o2.shutdown()


def test_add_validates() -> None:
    with fresh_observability() as o:
        with pytest.raises(ValueError, match="reserved"):
            o.health.add("system", lambda: True)
        with pytest.raises(ValueError):
            o.health.add("", lambda: True)
        with pytest.raises(ValueError):
            o.health.add("x", lambda: True, timeout=0)
        with pytest.raises(TypeError):
            o.health.add("x", 42)  # type: ignore[arg-type]


def test_inherit_and_close_idempotent() -> None:
    with fresh_observability(health_cache_ttl=0.0) as o:
        o.health.add("a", lambda: True)
        o.health.probe("detailed")
        reg = HealthRegistry(o.config, o.metrics, o.faults, inherit=o.health)
        assert reg.names == ("a",)
        assert reg.probe("readiness").status == 200
        reg.close()
        reg.close()
        assert reg.probe("readiness").status == 200  # workers start again on demand
        reg.close()


def test_close_stops_worker_threads(release: threading.Event) -> None:
    with fresh_observability(health_cache_ttl=0.0) as o:
        async def ok() -> bool:
            return True

        o.health.add("s", lambda: True)
        o.health.add("a", ok)
        before = {t.name for t in threading.enumerate()}
        o.health.probe("detailed")
        o.health.close()
        wait_until(lambda: not any(t.name.startswith("mestres-obs-health") and
                                   t.name not in before for t in threading.enumerate()),
                   timeout=5, message="health threads to stop")


# ---------------------------------------------------------------------- property
json_ish = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
              st.binary(max_size=10), st.decimals(), st.datetimes()),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_ish, expose=st.booleans(), draft=st.booleans())
def test_any_return_value_gives_valid_response(value: Any, expose: bool, draft: bool) -> None:
    with fresh_observability(health_cache_ttl=0.0, health_expose_details=expose) as o:
        o.health.add("c", lambda: value, critical=True)
        r = o.health.probe("detailed", accept="application/health+json" if draft else None)
        if draft:
            check_draft_shape(r)
        else:
            check_seed_shape("detailed", r)


# ---------------------------------------------------------------------- built-in checks
def test_disk_and_system_checks(hobs: Observability) -> None:
    assert disk_check("/", max_percent=100)()["status"] == "healthy"
    assert disk_check("/", max_percent=-1)()["status"] == "unhealthy"
    strict = system_check(cpu_threshold=-1, memory_threshold=-1, disk_threshold=-1)
    out = strict()
    assert out["status"] == "unhealthy"
    assert "memory" in out["exceeded"]
    assert system_check(cpu_threshold=101, memory_threshold=101, disk_threshold=101)()[
        "status"] == "healthy"
    hobs.health.add("disk", disk_check("/", max_percent=-1), critical=False)
    b = check_seed_shape("detailed", hobs.health.probe("detailed"))
    assert b["status"] == "degraded"


def test_system_thresholds_degrade() -> None:
    with fresh_observability(health_memory_threshold=0.0) as o:
        r = o.health.probe("detailed")
        b = check_seed_shape("detailed", r)
        assert r.status == 200
        assert b["status"] == "degraded"
        system = b["checks"]["system"]
        assert system["status"] == "degraded"
        assert system["error"] == "threshold_exceeded"
        assert 0 <= system["memory_percent"] <= 100
        assert o.health.probe("readiness").status == 200


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(500 if self.path == "/bad" else 204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_http_check() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        port = server.server_address[1]
        assert http_check(f"http://127.0.0.1:{port}/ok")() == {"status": "healthy",
                                                               "status_code": 204}
        import urllib.error

        with pytest.raises(urllib.error.HTTPError):
            http_check(f"http://127.0.0.1:{port}/bad")()
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ValueError):
        http_check("file:///etc/passwd")


def test_sql_check_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    import sqlalchemy

    # every engine made here is disposed at the end: Python 3.13 warns (ResourceWarning,
    # an error here) when the pool's sqlite connection is only garbage-collected later
    made: list[Any] = []
    real = sqlalchemy.create_engine

    def spy(*args: Any, **kwargs: Any) -> Any:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(sqlalchemy, "create_engine", spy)
    try:
        assert sql_check("sqlite://")() is True
        assert sql_check(lambda: sqlite3.connect(":memory:"))() is True
        engine = sqlalchemy.create_engine("sqlite://")
        assert sql_check(engine)() is True
        with pytest.raises(sqlite3.OperationalError):
            sql_check(lambda: sqlite3.connect(":memory:"), query="SELECT * FROM nowhere")()
        with pytest.raises(TypeError):
            sql_check(42)
    finally:
        for made_engine in made:
            made_engine.dispose()
    assert len(made) == 2  # the URL check's own engine, and the test's


def test_closing_the_registry_releases_the_connections_its_url_checks_opened(
        tmp_path: Any) -> None:
    """An engine built from a URL is the library's: its pool is disposed when the instance
    closes (no connection left to the garbage collector); one the app passed is left alone,
    and a check run after the close opens a new connection."""
    import sqlalchemy

    user_engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'user.db'}")
    try:
        with fresh_observability() as obs:
            owned = sql_check(f"sqlite:///{tmp_path / 'owned.db'}")
            mine = owned.close.__self__  # the engine the check built
            obs.health.add("owned", owned)
            obs.health.add("user", sql_check(user_engine))
            assert owned() is True
            assert obs.health.probe("readiness").status == 200
            assert mine.pool.checkedin() == 1
            assert user_engine.pool.checkedin() == 1
            obs.health.close()
            assert mine.pool.checkedin() == 0  # disposed: a fresh, empty pool
            assert user_engine.pool.checkedin() == 1  # the application's, untouched
            assert owned() is True  # still usable: a new connection
            obs.health.close()
    finally:
        user_engine.dispose()


def test_a_failing_release_is_counted_never_raised() -> None:
    def check() -> bool:
        return True

    def boom() -> None:
        raise RuntimeError("cannot close")

    check.close = boom
    with fresh_observability() as obs:
        obs.health.add("c", check)
        obs.health.close()  # no exception
        assert sample_value("mestres_observability_errors_total", obs, component="health") >= 1


_SQL_AFTER_FORK = """
import json, os, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a threaded process
import sqlalchemy
made = []
real = sqlalchemy.create_engine

def spy(*args, **kwargs):
    made.append(real(*args, **kwargs))
    return made[-1]

sqlalchemy.create_engine = spy
from mestres_observability.health import sql_check
user_engine = real("sqlite://")
owned_check, user_check = sql_check("sqlite://"), sql_check(user_engine)
assert owned_check() and user_check()
owned_pool, user_pool = made[0].pool, user_engine.pool
child = os.fork()
if child == 0:
    ok = owned_check() and user_check()
    fresh = made[0].pool
    ok = ok and owned_check()
    print(json.dumps({"ok": ok, "replaced": fresh is not owned_pool, "once": made[0].pool is fresh,
                      "user_kept": user_engine.pool is user_pool}), flush=True)
    os._exit(0)
os.waitpid(child, 0)
assert owned_check()
print(json.dumps({"parent_kept": made[0].pool is owned_pool}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_sql_check_replaces_its_own_pool_in_a_forked_worker() -> None:
    """A URL-built engine's pool is not shared with the parent after a fork (--preload)."""
    require_module("sqlalchemy")
    out = subprocess.run([sys.executable, "-c", _SQL_AFTER_FORK], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    child, parent = (json.loads(x) for x in out.stdout.strip().splitlines())
    assert child == {"ok": True, "replaced": True, "once": True, "user_kept": True}
    assert parent == {"parent_kept": True}


def test_missing_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingExtraError, match=r"mestres-observability\[sql\]"):
        sql_check("postgresql://localhost/db")
    with pytest.raises(MissingExtraError, match=r"mestres-observability\[redis\]"):
        redis_check("redis://localhost")


def test_redis_check_rejects_non_client() -> None:
    with pytest.raises(TypeError):
        redis_check(object())


def test_optional_drivers_not_imported() -> None:
    code = ("import sys, mestres_observability.health as h; "
            "print(sorted(m for m in ('sqlalchemy', 'redis', 'psycopg2', 'psycopg') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_blackhole_dependency_times_out_without_piling_threads() -> None:
    """A server that accepts TCP but never answers (a black hole): libpq and redis-py wait."""
    psycopg2 = require_module("psycopg2")
    import socket

    hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    port = hole.getsockname()[1]
    try:
        with _obs() as o:
            o.health.add("pg", sql_check(lambda: psycopg2.connect(
                host="127.0.0.1", port=port, user="u", password=SECRET, dbname="d",
                connect_timeout=3)), timeout=0.2)
            o.health.add("redis", redis_check(f"redis://:{SECRET}@127.0.0.1:{port}/0",
                                              timeout=3.0), timeout=0.2)
            before = threading.active_count()
            t0 = time.monotonic()
            r = o.health.probe("readiness")
            assert time.monotonic() - t0 < 0.2 + MARGIN
            b = body(r)
            assert r.status == 503
            assert b["checks"]["pg"]["error"] == "timeout"
            assert b["checks"]["redis"]["error"] == "timeout"
            for _ in range(50):
                t0 = time.monotonic()
                assert o.health.probe("detailed").status == 503
                assert time.monotonic() - t0 < 0.2 + MARGIN
            # one worker per check (pg, redis, system) plus the system disk reader, however many probes
            assert threading.active_count() <= before + 4, [t.name for t in threading.enumerate()]
            assert SECRET not in o.health.probe("detailed").body.decode()
    finally:
        hole.close()


# ---------------------------------------------------------------------- issue 4 audit
def test_obs_health_is_a_registry(hobs: Observability) -> None:
    assert isinstance(hobs.health, HealthRegistry)
    hobs.health.add("c", lambda: True, critical=False, timeout=0.25)
    assert hobs.health.names == ("c",)


def test_defaults_fit_the_kubelet_probe_timeout() -> None:
    """The kubelet's default ``timeoutSeconds`` is 1 s: defaults and docs agree with it."""
    from pathlib import Path

    from mestres_observability.config import ObservabilityConfig

    cfg = ObservabilityConfig()
    assert cfg.health_deadline == 0.8
    assert cfg.health_check_timeout <= cfg.health_deadline < 1.0
    assert cfg.health_cache_ttl == 1.0
    assert (cfg.health_cpu_threshold, cfg.health_memory_threshold,
            cfg.health_disk_threshold) == (90.0, 90.0, 90.0)
    assert cfg.health_start_ready is True
    assert cfg.health_expose_details is False
    assert cfg.health_detailed_token is None
    docs = Path(__file__).resolve().parent.parent / "docs"
    page = (docs / "health.md").read_text()
    assert "`health_deadline`, 0.8 s" in page
    assert "`health_check_timeout`, 0.5 s" in page
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert probe in page
        assert probe in (docs / "deployment" / "kubernetes.md").read_text()


def test_checks_run_concurrently(hobs: Observability) -> None:
    def slow() -> bool:
        time.sleep(0.25)
        return True

    for i in range(4):
        hobs.health.add(f"slow{i}", slow, timeout=0.6)
    t0 = time.monotonic()
    r = hobs.health.probe("readiness")
    elapsed = time.monotonic() - t0
    assert r.status == 200, r.body
    assert elapsed < 0.6  # one after the other would take 1 s
    for i in range(4):
        assert body(r)["checks"][f"slow{i}"]["response_time_ms"] >= 200


def test_response_time_is_measured_and_the_gauge_holds_the_last_run(hobs: Observability) -> None:
    delay = [0.12]

    def dep() -> bool:
        time.sleep(delay[0])
        return True

    hobs.health.add("dep", dep, timeout=0.5)
    ms = body(hobs.health.probe("detailed"))["checks"]["dep"]["response_time_ms"]
    assert 110 <= ms < 500
    assert 0.11 <= sample_value("health_check_duration_seconds", hobs, check="dep") < 0.5
    delay[0] = 0.0
    ms = body(hobs.health.probe("detailed"))["checks"]["dep"]["response_time_ms"]
    assert ms < 100
    assert sample_value("health_check_duration_seconds", hobs, check="dep") < 0.1  # last, not sum
    assert sample_value("health_check_status", hobs, check="dep") == 1.0
    assert sample_value("health_check_status", hobs, check="system") == 1.0


def test_ttl_cache_expires() -> None:
    calls: list[float] = []

    def dep() -> bool:
        calls.append(time.monotonic())
        return True

    with _obs(health_cache_ttl=0.3) as o:
        o.health.add("dep", dep)
        for _ in range(20):
            assert o.health.probe("readiness").status == 200
        assert len(calls) == 1  # reused within the TTL
        time.sleep(0.35)
        assert o.health.probe("readiness").status == 200
        assert len(calls) == 2  # run again once it expired
    with _obs(health_cache_ttl=0.0) as o:
        calls.clear()
        o.health.add("dep", dep)
        for _ in range(3):
            o.health.probe("readiness")
        assert len(calls) == 3  # TTL 0: no cache


def test_liveness_and_basic_never_run_checks(hobs: Observability) -> None:
    calls: list[str] = []

    def critical_down() -> bool:
        calls.append("x")
        raise ConnectionRefusedError("down")

    async def acritical_down() -> bool:
        calls.append("a")
        return False

    hobs.health.add("db", critical_down)
    hobs.health.add("adb", acritical_down)
    for kind in ("basic", "liveness"):
        for accept in (None, "application/health+json"):
            r = hobs.health.probe(kind, accept=accept)
            assert r.status == 200
            assert "checks" not in body(r)
            assert asyncio.run(hobs.health.aprobe(kind, accept=accept)).status == 200
    assert calls == []
    assert hobs.health.probe("readiness").status == 503
    assert sorted(calls) == ["a", "x"]


def test_sync_checks_run_on_a_bounded_pool(release: threading.Event) -> None:
    """More hung checks than workers: threads bounded (by the pool's cap), the probe answers.

    The checks are critical, so up to 16 start at once; the rest wait for room
    (``not_started`` at the deadline) until the first ones are stuck past their timeout.
    """
    with _obs(health_deadline=0.3) as o:
        for i in range(24):
            o.health.add(f"hang{i}", lambda: release.wait(60))
        before = set(threading.enumerate())
        t0 = time.monotonic()
        r = o.health.probe("detailed")
        assert time.monotonic() - t0 < 0.3 + MARGIN
        assert r.status == 503
        errors = [c["error"] for n, c in body(r)["checks"].items() if n != "system"]
        assert errors.count("timeout") >= 16
        assert set(errors) <= {"timeout", "not_started"}
        new = [t for t in threading.enumerate() if t not in before
               and t.name.startswith("mestres-obs-health-")]
        assert 0 < len(new) <= 24 + 1, [t.name for t in new]  # one per hung check at most
        release.set()
        wait_until(lambda: o.health.probe("readiness").status == 200, timeout=10,
                   message="queued checks to run once workers are free")


def test_async_checks_share_one_library_loop_thread_under_probe(hobs: Observability) -> None:
    loops: set[int] = set()
    threads: set[str] = set()

    def make(n: int) -> Any:
        async def check() -> bool:
            await asyncio.sleep(0.01 * n)
            loops.add(id(asyncio.get_running_loop()))
            threads.add(threading.current_thread().name)
            return True

        return check

    for n in range(5):
        hobs.health.add(f"a{n}", make(n))
    for _ in range(3):
        assert hobs.health.probe("readiness").status == 200
    assert len(loops) == 1
    assert threads == {"mestres-obs-health-loop"}
    assert sum(t.name == "mestres-obs-health-loop" for t in threading.enumerate()) == 1


def test_a_check_that_cannot_start_is_a_failure_not_an_exception(
        hobs: Observability, monkeypatch: pytest.MonkeyPatch) -> None:
    """Instrumentation faults never reach the host app: no thread to run on -> error kind."""
    hobs.health.add("db", lambda: True)

    def no_threads() -> Any:
        raise RuntimeError(f"can't start new thread {SECRET}")

    monkeypatch.setattr(hobs.health, "_get_executor", no_threads)
    r = hobs.health.probe("readiness")
    assert r.status == 503
    assert body(r)["checks"]["db"]["error"] == "RuntimeError"
    assert SECRET not in r.body.decode()
    r = asyncio.run(hobs.health.aprobe("detailed"))
    assert r.status == 503
    assert body(r)["checks"]["db"]["error"] == "RuntimeError"
    assert sample_value("health_check_status", hobs, check="db") == 0.0
    assert sample_value("mestres_observability_errors_total", hobs, component="health") >= 1
    monkeypatch.undo()
    assert hobs.health.probe("readiness").status == 200


def test_system_thresholds_for_each_resource() -> None:
    out = system_check(cpu_threshold=-1, memory_threshold=-1, disk_threshold=-1)()
    assert set(out["exceeded"]) == {"cpu", "memory", "disk"}
    for key in ("cpu_percent", "memory_percent", "disk_percent"):
        assert 0 <= out[key] <= 100
    with fresh_observability(health_disk_threshold=0.0, health_cpu_threshold=100.0,
                             health_memory_threshold=100.0, health_cache_ttl=0.0) as o:
        r = o.health.probe("detailed")
        b = check_seed_shape("detailed", r)
        assert (r.status, b["status"]) == (200, "degraded")
        assert b["checks"]["system"]["exceeded"] == ["disk"]
        d = check_draft_shape(o.health.probe("detailed", accept="application/health+json"))
        assert d["status"] == "warn"
        assert d["checks"]["disk:utilization"][0]["status"] == "warn"
        assert d["checks"]["memory:utilization"][0]["status"] == "warn"  # one entry, one status


def test_http_check_times_out_on_a_silent_server(hobs: Observability) -> None:
    import socket

    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/health"
        t0 = time.monotonic()
        with pytest.raises(OSError):  # socket timeout, wrapped or not by urllib
            http_check(url, timeout=0.2)()
        assert time.monotonic() - t0 < 0.2 + MARGIN
        hobs.health.add("upstream", http_check(url, timeout=5.0), timeout=0.2)
        t0 = time.monotonic()
        r = hobs.health.probe("readiness")
        assert time.monotonic() - t0 < 0.2 + MARGIN
        assert body(r)["checks"]["upstream"]["error"] == "timeout"
    finally:
        silent.close()


def test_password_never_in_a_token_protected_detailed_response() -> None:
    def db() -> bool:
        raise OperationalError(f"FATAL: password authentication failed: {SECRET}@10.1.2.3")

    with _obs(health_detailed_token="tok") as o:
        o.health.add("db", db)
        o.health.add("info", lambda: {"url": f"redis://:{SECRET}@10.1.2.3:6379", "depth": 2},
                     critical=False)
        for accept in (None, "application/health+json"):
            for auth in ("Bearer tok", None):
                for r in (o.health.probe("detailed", accept=accept, authorization=auth),
                          asyncio.run(o.health.aprobe("detailed", accept=accept,
                                                      authorization=auth))):
                    assert SECRET not in r.body.decode() + repr(r.headers)
        b = body(o.health.probe("detailed", authorization="Bearer tok"))
        assert b["checks"]["db"] == {"status": "unhealthy", "critical": True, "error":
                                     "OperationalError",
                                     "response_time_ms": b["checks"]["db"]["response_time_ms"]}
        assert b["checks"]["info"]["depth"] == 2  # the token shows details, redacted


_PRE_INIT = """
import json, signal, time
handlers = {s: signal.getsignal(s) for s in signal.valid_signals() if signal.getsignal(s) is not None}
from mestres_observability import get_observability, health_check, init_observability

calls = []

@health_check("early", critical=False, timeout=0.1)
def early():
    calls.append(1)
    time.sleep(0.3)
    return True

@health_check("dep")
async def dep():
    return True

default = get_observability()
settings = dict(configure_logging=False, health_cache_ttl=0.0, health_cpu_threshold=100.0,
                health_memory_threshold=100.0, health_disk_threshold=100.0)
out = {"default_is_default": default.is_default}
for run in ("init", "reinit"):
    obs = init_observability(**settings)
    det = json.loads(obs.health.probe("detailed").body)
    ready = obs.health.probe("readiness")
    out[run] = {"new": obs is not default and obs.health is not default.health,
                "names": list(obs.health.names), "detailed": det["status"],
                "early": det["checks"]["early"].get("error"),
                "early_critical": det["checks"]["early"]["critical"],
                "ready": ready.status, "ready_checks": sorted(json.loads(ready.body)["checks"])}
out["ran"] = len(calls) >= 2
obs.shutdown()
out["signals_untouched"] = all(signal.getsignal(s) == h for s, h in handlers.items())
print(json.dumps(out))
"""


def test_checks_registered_before_init_carry_over_and_survive_reinit() -> None:
    """In a fresh interpreter: decorate at import time, then init, then init again."""
    out = subprocess.run([sys.executable, "-c", _PRE_INIT], capture_output=True, text=True,
                         timeout=120, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    expected_run = {"new": True, "names": ["early", "dep"], "detailed": "degraded",
                    "early": "timeout", "early_critical": False, "ready": 200,
                    "ready_checks": ["dep"]}
    assert got == {"default_is_default": True, "init": expected_run, "reinit": expected_run,
                   "ran": True, "signals_untouched": True}


@pytest.mark.parametrize("framework", ["flask", "fastapi"])
def test_adapters_serve_the_four_paths(framework: str) -> None:
    """The adapters mount what probe()/aprobe() answer, as is, at the four paths."""
    from mestres_observability.observability import instrument_app

    with _obs(health_detailed_token="tok") as o:
        o.health.add("db", lambda: True)
        o.health.add("opt", lambda: False, critical=False)
        if framework == "flask":
            flask = require_module("flask")
            app = flask.Flask("health-adapter")
            instrument_app(app, o)
            c = app.test_client()

            def get(path: str, **headers: str) -> tuple[int, str | None, dict[str, Any]]:
                r = c.get(path, headers=headers)
                return r.status_code, r.headers.get("Content-Type"), json.loads(r.data)
        else:
            fastapi = require_module("fastapi")
            testclient = require_module("starlette.testclient")
            app = fastapi.FastAPI()
            instrument_app(app, o)
            c = testclient.TestClient(app)

            def get(path: str, **headers: str) -> tuple[int, str | None, dict[str, Any]]:
                r = c.get(path, headers=headers)
                return r.status_code, r.headers.get("content-type"), r.json()

        assert get("/health")[2]["status"] == "healthy"
        assert get("/health/liveness")[2]["status"] == "alive"
        code, _, b = get("/health/readiness")
        assert (code, b["status"], sorted(b["checks"])) == (200, "ready", ["db"])
        assert get("/health/detailed")[0] == 401
        code, ctype, b = get("/health/detailed", Authorization="Bearer tok")
        assert (code, ctype, b["status"]) == (200, "application/json", "degraded")
        assert set(b["checks"]) == {"db", "opt", "system"}
        code, ctype, b = get("/health/detailed", Authorization="Bearer tok",
                             Accept="application/health+json")
        assert (code, ctype, b["status"]) == (200, "application/health+json", "warn")
        o.health.add("db", lambda: False)
        assert get("/health/readiness")[0] == 503
        assert get("/health/liveness")[0] == 200


# ---------------------------------------------------------------- issue 11 (4)
def _late_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "mestres_observability.health" and r.levelno == logging.WARNING
            and "after the first" in r.getMessage()]


@pytest.mark.parametrize("kind", ["readiness", "detailed"])
def test_checks_registered_after_the_first_probe_warn_once(caplog: pytest.LogCaptureFixture,
                                                           kind: str) -> None:
    """Django imports views.py at the first routed request of each worker: checks declared
    there are missing from every probe answered before. The next probe says so, once."""
    with fresh_observability() as obs:
        obs.health.add("early", lambda: True)
        assert obs.health.probe(kind).status == 200
        assert _late_warnings(caplog) == []
        obs.health.add("database", lambda: True)
        obs.health.add("cache", lambda: True, critical=False)
        assert obs.health.probe(kind).status == 200
        asyncio.run(obs.health.aprobe(kind))
        obs.health.probe(kind)
    (text,) = _late_warnings(caplog)
    assert "'database'" in text
    assert "'cache'" in text
    assert "AppConfig.ready()" in text
    assert "'early'" not in text


def test_checks_registered_before_the_first_probe_do_not_warn(
        caplog: pytest.LogCaptureFixture) -> None:
    with fresh_observability() as obs:
        obs.health.probe("liveness")  # runs no check: not a first probe of the checks
        obs.health.add("database", lambda: True)
        obs.health.probe("readiness")
        obs.health.add("database", lambda: False)  # replacing a known check is not late
        obs.health.probe("readiness")
    assert _late_warnings(caplog) == []
