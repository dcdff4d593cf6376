"""End to end on loopback: the rendered stack monitors the example shop for real.

The shop (``examples/coffee_shop.py``) runs under gunicorn with 2 workers; a
real PostgreSQL and Redis stand behind Debian's postgres and redis exporters,
and the node exporter reads this host. Debian's Prometheus 2.42 runs on the
rendered ``prometheus.yml`` and rules (1 s scrape and evaluation, every
``for:`` shortened through the test-only ``alert_for_override``), with
exemplar storage on, and the rendered Alertmanager sends to a local webhook
that stands in for Slack (the rendered Slack receiver reads its URL from a file).

Orders, payments and 5xx are driven through HTTP. Then, through Prometheus'
HTTP API:

* every recording rule has data; every alert's quantity (its probe) has data,
  or the alert says why it cannot on a short healthy run (a counter that has
  no series before its first event) and the series is indeed absent;
* the 1 d and 3 d windows of the SLO rules are read as they are: their range
  holds the whole run, so they return data without waiting for days;
* every dashboard panel query returns data, when the Grafana renderer is installed;
* HighErrorRate fires; DatabaseConnectionsHigh (threshold lowered to 1% for the
  test) fires on the real exporter's series, joined on job and instance;
* the exporters' metrics the rules may use exist with the labels the static
  check assumes;
* ``query_exemplars`` returns trace ids for the latency histogram;
* the firing page reaches the webhook as a Slack message.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from mestres_observability.config import ObservabilityConfig
from mestres_observability.monitoring import promql, rules
from mestres_observability.monitoring.exporters import EXPORTERS
from mestres_observability.monitoring.render import render_all
from mestres_observability.monitoring.settings import RenderSettings
from mestres_observability.multiprocess import prepare_directory
from tests._support import free_port, require_binary, wait_until
from tests.monitoring._tools import Webhook, alertmanager, http_json, process
from tests.servers import running_postgres, running_redis

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX servers")]

ROOT = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "apps"
BIN_DIR = str(Path(sys.executable).parent)
SERVICE = "mestres-cafe-api"
#: Counters that have no series until their first event: the healthy run never has one.
EVENT_ONLY = {"mestres_observability_errors_total", "mestres_observability_label_overflow_total",
              "payment_errors_total"}


class Stack:
    """Handles of the running stack."""

    prometheus: str
    shop: str
    settings: RenderSettings
    out: Path
    webhook: Webhook
    pg_exporter: str
    started: float


def _call(base: str, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with ExitStack() as stack_:
        yield _start(stack_)


def _gunicorn(stack_: ExitStack, tmp: Path) -> str:
    port = free_port()
    mpdir = tmp / "multiproc"
    prepare_directory(mpdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESTRES_OBS_", "OTEL_"))}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(PROMETHEUS_MULTIPROC_DIR=str(mpdir),
               PYTHONPATH=os.pathsep.join([str(APPS), str(ROOT)]))
    log = tmp / "shop.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [require_binary("gunicorn", BIN_DIR), "-c", "python:mestres_observability.gunicorn",
             "--workers", "2", "--bind", f"127.0.0.1:{port}", "--chdir", str(APPS),
             "--graceful-timeout", "5", "shop_app:app"],
            cwd=APPS, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    stack_.callback(stop)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        return _call(base, "GET", "/health/liveness")[0] == 200

    wait_until(up, timeout=30, message="the shop under gunicorn")
    return base


def _start(stack_: ExitStack) -> Stack:
    s = Stack()
    s.started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="mestres-obs-e2e-"))
    import shutil

    stack_.callback(shutil.rmtree, tmp, True)
    pg = stack_.enter_context(running_postgres())
    redis = stack_.enter_context(running_redis())
    ports = {name: free_port() for name in ("pg", "redis", "node")}
    env = dict(os.environ, DATA_SOURCE_NAME=(
        f"postgresql://postgres@127.0.0.1:{pg.port}/postgres?sslmode=disable"))
    exporters = {
        "pg": [require_binary("prometheus-postgres-exporter"),
               f"--web.listen-address=127.0.0.1:{ports['pg']}"],
        "redis": [require_binary("prometheus-redis-exporter"),
                  "-redis.addr", f"redis://127.0.0.1:{redis.port}",
                  "-web.listen-address", f"127.0.0.1:{ports['redis']}"],
        "node": [require_binary("prometheus-node-exporter"),
                 f"--web.listen-address=127.0.0.1:{ports['node']}",
                 "--collector.disable-defaults", "--collector.cpu", "--collector.meminfo",
                 "--collector.filesystem", "--collector.loadavg", "--collector.netdev"],
    }
    for name, args in exporters.items():
        stack_.enter_context(process(args, f"http://127.0.0.1:{ports[name]}/metrics",
                                     tmp / f"{name}-exporter.log", env=env))
    s.shop = _gunicorn(stack_, tmp)
    s.webhook = stack_.enter_context(Webhook())
    secret = tmp / "slack-webhook-url"
    secret.write_text(s.webhook.url + "\n")
    am_port = free_port()
    s.pg_exporter = f"127.0.0.1:{ports['pg']}"
    s.settings = RenderSettings(
        # the shop runs no Celery worker, outbound client, SQLAlchemy engine or batch job:
        # render for what it is, as its own settings would say
        config=ObservabilityConfig(celery_metrics=False, http_client_metrics=False,
                                   db_metrics=False, job_metrics=False),
        service=SERVICE, targets=(s.shop.removeprefix("http://"),),
        alertmanager_target=f"127.0.0.1:{am_port}",
        node_exporter_target=f"127.0.0.1:{ports['node']}", postgres_exporter_target=s.pg_exporter,
        redis_exporter_target=f"127.0.0.1:{ports['redis']}", scrape_interval="1s",
        alert_for_override="0s", db_connections_threshold=0.01,
        slack_api_url_file=str(secret), alert_group_wait="1s", alert_group_interval="1s")
    s.out = tmp / "out"
    render_all(s.settings, s.out)
    stack_.enter_context(alertmanager(s.out / "alertmanager" / "alertmanager.yml", am_port))
    prom_port = free_port()
    s.prometheus = f"http://127.0.0.1:{prom_port}"
    stack_.enter_context(process(
        [require_binary("prometheus"), f"--config.file={s.out / 'prometheus' / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
         "--enable-feature=exemplar-storage", "--log.level=warn"],
        f"{s.prometheus}/-/ready", tmp / "prometheus.log"))
    # traffic once Prometheus scrapes the shop, then a trickle until the end: every window
    # of every rule then has an increase to read
    wait_until(lambda: bool(query(s, f'up{{job="{SERVICE}"}} == 1')), timeout=20, interval=0.2,
               message="Prometheus to scrape the shop")
    _drive(s.shop)
    stop = threading.Event()
    trickle = threading.Thread(target=_trickle, args=(s.shop, stop), daemon=True)
    trickle.start()
    stack_.callback(trickle.join, 10)
    stack_.callback(stop.set)
    return s


def _trickle(base: str, stop: threading.Event) -> None:
    while not stop.wait(0.2):
        with contextlib.suppress(OSError):
            _call(base, "GET", "/products/espresso")
            _call(base, "POST", "/orders",
                  {"items": [{"product_id": "v60-filter-paper", "quantity": 1}]})
            _call(base, "GET", "/boom")


def _drive(base: str) -> None:
    """Orders, payments, browsing, health probes and a share of 5xx, through HTTP."""
    products = ["espresso", "cappuccino", "beans-catuai-1kg", "v60-filter-paper"]
    statuses: list[int] = []
    for i in range(60):
        product = products[i % len(products)]
        statuses.append(_call(base, "GET", f"/products/{product}")[0])
        status, body = _call(base, "POST", "/orders",
                             {"user_id": i, "items": [{"product_id": product, "quantity": 1}]})
        statuses.append(status)
        if status == 201:
            order_id = json.loads(body)["id"]
            for _ in range(4):  # orders live in the worker that took them
                paid, _body = _call(base, "POST", f"/orders/{order_id}/payments",
                                    {"method": "pix"})
                if paid != 404:
                    statuses.append(paid)
                    break
        if i % 3 == 0:
            statuses.append(_call(base, "GET", "/boom")[0])
        if i % 10 == 0:
            _call(base, "GET", "/health/detailed")
    assert statuses.count(201) >= 30
    assert statuses.count(500) >= 15


def query(s: Stack, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"query": expr}
    if at is not None:
        params["time"] = at
    url = f"{s.prometheus}/api/v1/query?" + urllib.parse.urlencode(params)
    answer = http_json(url)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]  # type: ignore[no-any-return]


def _eventually(s: Stack, expr: str, timeout: float = 30) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def has_data() -> bool:
        nonlocal found
        found = query(s, expr)
        return bool(found)

    wait_until(has_data, timeout=timeout, interval=0.5, message=f"data for {expr}")
    return found


def _absent_event_series(s: Stack, expr: str) -> list[str]:
    """The event-only metrics ``expr`` selects that have no series in Prometheus."""
    names = {sel.name for sel in promql.selectors(promql.parse(expr)) if sel.name}
    return sorted(n for n in names if n in EVENT_ONLY and not query(s, f"count({n})"))


def test_every_recording_rule_has_data(stack: Stack) -> None:
    records = sorted({r.record for g in rules.build(stack.settings) for r in g.recordings})
    assert len(records) > 20
    for record in records:
        found = _eventually(stack, f'{record}{{job="{SERVICE}"}}')
        values = [float(r["value"][1]) for r in found]
        assert any(math.isfinite(v) for v in values), (record, values)
    # the 3-day windows hold the whole run: read as they are
    ratio = query(stack, f'slo:sli_error:ratio_rate3d{{job="{SERVICE}",slo="availability"}}')
    assert 0.05 < float(ratio[0]["value"][1]) < 0.6
    # orders per hour is a count: 3600 times the seed's per-second rate(orders_total[1h])
    # (read where the rule was last evaluated: the raw expressions see the same samples)
    sample = query(stack, f'timestamp(job:orders:increase1h{{job="{SERVICE}"}})')
    at = float(sample[0]["value"][1])
    per_hour = float(query(stack, f'job:orders:increase1h{{job="{SERVICE}"}}', at)[0]["value"][1])
    seed = float(query(stack, f'sum(rate(orders_total{{job="{SERVICE}"}}[1h]))', at)[0]["value"][1])
    assert per_hour >= 1
    assert per_hour / seed == pytest.approx(3600, rel=1e-6)


def test_every_alert_quantity_has_data_or_says_why(stack: Stack) -> None:
    explained = []
    for _group, alert in rules.alerts(stack.settings):
        if not alert.probe_note:
            _eventually(stack, alert.probe)
            continue
        found = query(stack, alert.probe)
        if not found:
            missing = _absent_event_series(stack, alert.probe)
            assert missing, f"{alert.name}: no data, and not for the reason it gives"
            explained.append((alert.name, missing))
    # the run has no library fault and no label overflow: those two are the explained ones
    assert {name for name, _ in explained} <= {"ObservabilityFaults", "LabelOverflow"}


def test_every_dashboard_query_has_data(stack: Stack) -> None:
    from mestres_observability.monitoring import grafana

    variables = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h",
                 "__range_s": "3600", "__range_ms": "3600000"}

    def substitute(expr: str) -> str:
        def one(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(2)
            return variables.get(name, ".*")

        return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)

    panels = [(title, substitute(expr)) for title, expr in
              grafana.dashboard_expressions(stack.settings)]
    assert panels
    deadline = time.monotonic() + 20
    empty = [(t, e) for t, e in panels if not query(stack, e)]
    while empty and time.monotonic() < deadline:
        time.sleep(0.5)
        empty = [(t, e) for t, e in empty if not query(stack, e)]
    # a panel on a counter that has no series before its first event (library faults) is
    # empty on a healthy run; any other empty panel is a bug
    unexplained = [(t, e) for t, e in empty if not _absent_event_series(stack, e)]
    assert unexplained == [], unexplained


def _alerts(s: Stack) -> list[dict[str, Any]]:
    return http_json(f"{s.prometheus}/api/v1/alerts")["data"]["alerts"]  # type: ignore[no-any-return]


def test_high_error_rate_fires_and_slack_gets_the_page(stack: Stack) -> None:
    def firing() -> bool:
        return any(a["labels"]["alertname"] == "HighErrorRate" and a["state"] == "firing"
                   for a in _alerts(stack))

    wait_until(firing, timeout=30, interval=0.5, message="HighErrorRate to fire")
    alert = next(a for a in _alerts(stack) if a["labels"]["alertname"] == "HighErrorRate")
    assert alert["labels"]["severity"] == "page"
    assert alert["labels"]["service"] == SERVICE
    assert alert["annotations"]["runbook_url"].endswith("#higherrorrate")

    def delivered() -> list[dict[str, Any]]:
        return [att for body in stack.webhook.bodies for att in body.get("attachments", [])
                if "HighErrorRate" in att.get("title", "")]

    wait_until(lambda: bool(delivered()), timeout=30, interval=0.5,
               message="the page to reach the Slack webhook")
    att = delivered()[0]
    assert att["title"].startswith("[FIRING:1] HighErrorRate (page)")
    assert att["color"] == "#FF0000"
    assert "of requests to mestres-cafe-api failed with a 5xx" in att["text"]
    assert {a["text"] for a in att["actions"]} == {"View in Grafana", "View logs", "Runbook"}
    runbook = next(a for a in att["actions"] if a["text"] == "Runbook")
    assert runbook["url"].endswith("#higherrorrate")
    body = next(b for b in stack.webhook.bodies if att in b.get("attachments", []))
    assert body["channel"] == "#alerts"


def test_database_connections_high_reads_the_real_exporter(stack: Stack) -> None:
    def firing() -> list[dict[str, Any]]:
        return [a for a in _alerts(stack) if a["labels"]["alertname"] ==
                "DatabaseConnectionsHigh" and a["state"] == "firing"]

    wait_until(lambda: bool(firing()), timeout=30, interval=0.5,
               message="DatabaseConnectionsHigh (threshold 1%) to fire")
    alert = firing()[0]
    assert alert["labels"]["instance"] == stack.pg_exporter
    assert alert["labels"]["job"] == "postgres-exporter"
    ratio = float(alert["value"])
    assert 0.01 < ratio < 0.5  # a few connections out of max_connections (100)
    rule = next(r for g in http_json(f"{stack.prometheus}/api/v1/rules")["data"]["groups"]
                for r in g["rules"] if r["name"] == "DatabaseConnectionsHigh")
    assert rule["health"] == "ok"


def test_exporter_metrics_exist_with_the_labels_the_check_assumes(stack: Stack) -> None:
    for exporter in EXPORTERS:
        for name, labels in exporter.metrics.items():
            series = _eventually(stack, f'{name}{{job="{exporter.job}"}}')
            seen = set().union(*(s["metric"] for s in series))
            allowed = {*labels, "job", "instance", "__name__"}
            assert seen <= allowed, (name, seen - allowed)
            assert set(labels) <= seen, (name, set(labels) - seen)


def test_exemplars_carry_trace_ids(stack: Stack) -> None:
    bucket = f'http_request_duration_seconds_bucket{{job="{SERVICE}"}}'
    params = urllib.parse.urlencode({"query": bucket, "start": stack.started - 60,
                                     "end": time.time() + 60})
    found: list[str] = []

    def has_exemplars() -> bool:
        data = http_json(f"{stack.prometheus}/api/v1/query_exemplars?{params}")["data"]
        found[:] = [e["labels"].get("trace_id", "") for series in data
                    for e in series["exemplars"]]
        return bool(found)

    wait_until(has_exemplars, timeout=30, interval=0.5, message="exemplars on the histogram")
    assert all(re.fullmatch(r"[0-9a-f]{32}", t) for t in found), found[:5]
