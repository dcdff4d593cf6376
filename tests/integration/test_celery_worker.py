"""A real Celery worker (prefork pool, two children) on a real Redis broker.

A Flask request in this process enqueues a task; the worker, a separate
process started with ``celery -A tests.integration.apps.celery_app worker``,
runs it. One trace spans both processes, decoded off the OTLP wire; the worker's
JSON log lines carry the trace id and the web request's id; the main worker
process's ``/metrics`` (``metrics_port``, multiprocess mode) shows the exact
totals of tasks run in its children; the ping check passes while the worker
runs and fails once it stopped.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mestres_observability.testing import fresh_observability
from tests._support import free_port, require_module, wait_until
from tests.otlp_receiver import OTLPReceiver, otlp_receiver  # noqa: F401 (fixture)
from tests.servers import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Worker:
    """``celery worker`` in a subprocess, its stdout in a file."""

    def __init__(self, broker: str, otlp: str, tmp: Path) -> None:
        self.metrics_port = free_port()
        self.mpdir = Path(tempfile.mkdtemp(prefix="mestres-obs-celery-", dir=tmp))
        self.out = tmp / "worker.log"
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                             if p),
               "SHOP_BROKER_URL": broker, "SHOP_WORKER_OBS": "1",
               "PROMETHEUS_MULTIPROC_DIR": str(self.mpdir),
               "MESTRES_OBS_METRICS_PORT": str(self.metrics_port),
               "MESTRES_OBS_LOG_FORMAT": "json",
               "OTEL_EXPORTER_OTLP_ENDPOINT": otlp, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        env.pop("PYTEST_CURRENT_TEST", None)
        self._file = self.out.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.integration.apps.celery_app", "worker",
             "--pool=prefork", "--concurrency=2", "--loglevel=INFO", "-n", "shop@%h",
             "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=self._file, stderr=subprocess.STDOUT)

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for raw in self.out.read_text(errors="replace").splitlines():
            if raw.startswith("{"):
                try:
                    found.append(json.loads(raw))
                except ValueError:
                    continue
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._file.close()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def test_one_trace_across_web_and_worker_with_exact_totals(
    redis: RedisServer, otlp_receiver: OTLPReceiver, tmp_path: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_module("celery")
    flask = require_module("flask")
    monkeypatch.setenv("SHOP_BROKER_URL", redis.url)
    monkeypatch.delenv("SHOP_WORKER_OBS", raising=False)
    sys.modules.pop("tests.integration.apps.celery_app", None)
    shop = importlib.import_module("tests.integration.apps.celery_app")
    from mestres_observability.celery import _uninstrument, celery_check, instrument_celery
    from mestres_observability.observability import instrument_app

    worker = Worker(redis.url, otlp_receiver.endpoint, tmp_path)
    try:
        with fresh_observability(service_name="shop-web", otlp_endpoint=otlp_receiver.endpoint,
                                 health_cache_ttl=0.0) as obs:
            instrument_celery(shop.app)
            obs.health.add("celery", celery_check(shop.app), critical=False)
            wait_until(lambda: obs.health.probe("detailed").status == 200
                       and json.loads(obs.health.probe("detailed").body)["checks"]["celery"][
                           "status"] == "healthy",
                       timeout=60, interval=0.5, message=f"the worker to answer a ping "
                       f"({worker.out.read_text(errors='replace')[-2000:]})")

            web = flask.Flask("shop-web")

            @web.get("/checkout/<order_id>")
            def checkout(order_id: str) -> Any:
                return {"task": shop.place_order.delay(order_id, 25.0).id}

            instrument_app(web, obs)
            response = web.test_client().get("/checkout/o-1")
            assert response.status_code == 200
            request_id = response.headers["X-Request-ID"]
            for i in range(5):
                shop.place_order.delay(f"o-{i + 2}", 10.0)
            shop.fail.delay()
            shop.fail.delay()
            shop.retry_once.delay()

            def settled() -> bool:
                s = _scrape(worker.metrics_port)
                return (_value(s, "celery_tasks_total", task="shop.place_order",
                               state="succeeded") == 6
                        and _value(s, "celery_tasks_total", task="shop.fail", state="failed") == 2
                        and _value(s, "celery_tasks_total", task="shop.retry_once",
                                   state="succeeded") == 1)

            wait_until(settled, timeout=60, interval=0.2, message="the worker's totals")
        samples = _scrape(worker.metrics_port)

        # exact totals, from tasks run in the prefork children, on the main process's port
        assert _value(samples, "celery_tasks_total", task="shop.retry_once", state="retried") == 1
        assert _value(samples, "celery_task_duration_seconds_count", task="shop.place_order") == 6
        assert _value(samples, "celery_task_queue_wait_seconds_count",
                      task="shop.place_order") == 6
        assert _value(samples, "celery_task_queue_wait_seconds_count",
                      task="shop.retry_once") == 2
        assert _value(samples, "celery_tasks_in_progress", task="shop.place_order") == 0
        assert _value(samples, "orders_total", status="paid") == 6  # @track_order in the task
        pids = {line["worker_pid"] for line in worker.lines() if line["event"] == "placing order"}
        assert worker.proc.pid not in pids  # run in the children, counted on the parent's port

        # one trace across both processes, off the OTLP wire
        otlp_receiver.wait_for(lambda: {"GET /checkout/<order_id>", "shop.place_order",
                                        "process_order"} <= otlp_receiver.span_names(), timeout=30)
        server = otlp_receiver.by_name("GET /checkout/<order_id>")
        tasks = [s for s in otlp_receiver.received()
                 if s.name == "shop.place_order" and s.trace_id == server.trace_id]
        assert len(tasks) == 1
        (task,) = tasks
        assert task.parent_span_id == server.span_id
        assert task.resource["service.name"] == "shop-worker"
        assert task.attributes["messaging.system"] == "celery"
        orders = [s for s in otlp_receiver.received()
                  if s.name == "process_order" and s.parent_span_id == task.span_id]
        assert len(orders) == 1
        assert orders[0].trace_id == server.trace_id

        # the worker's JSON log line carries the task's trace and the web request's id
        (line,) = [x for x in worker.lines()
                   if x["event"] == "placing order" and x.get("order_id") == "o-1"]
        assert line["trace_id"] == server.trace_id
        assert line["request_id"] == request_id
        assert line["task_name"] == "shop.place_order"
        assert line["service"] == "shop-worker"
        celery_lines = [x for x in worker.lines() if x.get("logger", "").startswith("celery")]
        assert celery_lines  # Celery's own lines go through the same JSON output

        # the ping check fails once the worker is gone (within its timeout)
        worker.stop()
        with fresh_observability(health_cache_ttl=0.0) as obs:
            obs.health.add("celery", celery_check(shop.app, timeout=0.3))
            started = time.monotonic()
            body = json.loads(obs.health.probe("detailed").body)
            assert time.monotonic() - started < 1.5
            assert body["checks"]["celery"]["status"] == "unhealthy"
    finally:
        worker.stop()
        _uninstrument()
        sys.modules.pop("tests.integration.apps.celery_app", None)
