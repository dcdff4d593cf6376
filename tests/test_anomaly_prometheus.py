"""Against a real Prometheus holding the backfilled shop benchmark: the source (chunks,
gaps, errors), the command-line groups end to end, and ``anomaly serve``'s metrics."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._support import free_port, require_module, wait_until

np = require_module("numpy")
require_module("sklearn")
click_testing = require_module("click.testing")

from mestres_observability import catalogue  # noqa: E402
from mestres_observability.anomaly import shopdata  # noqa: E402
from mestres_observability.anomaly.cli import anomaly  # noqa: E402
from mestres_observability.anomaly.serve import AnomalyService, Watch  # noqa: E402
from mestres_observability.anomaly.source import (  # noqa: E402
    BadQuery,
    EmptyResult,
    PrometheusSource,
    PrometheusUnreachable,
)
from tests.anomaly_prometheus import backfilled_prometheus, now_aligned, openmetrics  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
STEP = 60.0


class Data:
    shop: Any
    url: str
    start: float
    train_end: float
    end: float
    gap: tuple[float, float]


@pytest.fixture(scope="module")
def prom() -> Iterator[Data]:
    d = Data()
    d.shop = shopdata.generate("spike", weeks=3, history_weeks=2, start=now_aligned(22))
    d.start = float(d.shop.timestamps[0])
    d.train_end = float(d.shop.timestamps[d.shop.history - 1])
    d.end = float(d.shop.timestamps[-1])
    d.gap = (d.start + 3 * 86400, d.start + 3 * 86400 + 3600)  # one hour without orders
    with backfilled_prometheus(openmetrics(d.shop, d.gap)) as server:
        d.url = server.url
        yield d


# ---------------------------------------------------------------- the source
def test_range_queries_come_back_chunked_aligned_and_with_gaps_kept(prom: Data) -> None:
    source = PrometheusSource(prom.url, timeout=30)
    (s,) = source.query_range("shop_requests_per_second", prom.start, prom.end, STEP)
    assert len(s.timestamps) == 3 * 7 * 1440  # more than one request's 11,000 points
    assert s.timestamps[0] == prom.start
    assert set(np.diff(s.timestamps)) == {STEP}
    expected = prom.shop.series["http_requests"]
    assert np.allclose(s.values, expected, rtol=1e-5)
    assert s.labels == {"__name__": "shop_requests_per_second"}
    # the hour without orders stays missing (Prometheus' 5-minute lookback fills its start)
    (orders,) = source.query_range("shop_orders_per_minute", prom.start, prom.end, STEP)
    assert 50 <= orders.missing <= 60
    i = int((prom.gap[0] + 1800 - prom.start) // STEP)
    assert math.isnan(orders.values[i])
    # smaller chunks, same answer; an unaligned start is aligned down to the step
    small = PrometheusSource(prom.url, max_points=997)
    (again,) = small.query_range("shop_requests_per_second", prom.start + 7, prom.end, STEP)
    assert again.timestamps == s.timestamps
    assert np.allclose(again.values, s.values, rtol=1e-9)
    products = source.query_range("shop_products_sold_per_minute", prom.start, prom.start + 3600, STEP)
    assert sorted(p.name() for p in products) == [
        'shop_products_sold_per_minute{product_id="espresso"}',
        'shop_products_sold_per_minute{product_id="latte"}']


def test_clear_errors_for_a_bad_query_an_empty_result_and_no_server(prom: Data) -> None:
    source = PrometheusSource(prom.url, timeout=10)
    with pytest.raises(BadQuery, match=r"refused the query 'rate\(\(': bad_data: .*parse error"):
        source.query_range("rate((", prom.start, prom.end, STEP)
    with pytest.raises(EmptyResult, match="matched no series"):
        source.query_range("no_such_metric", prom.start, prom.end, STEP)
    assert source.query_range("no_such_metric", prom.start, prom.end, STEP, allow_empty=True) == []
    with pytest.raises(BadQuery, match=r"ends .* before it starts"):
        source.query_range("up", prom.end, prom.start, STEP)
    down = PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(PrometheusUnreachable, match=r"cannot reach Prometheus at http://127\.0\.0\.1"):
        down.query_range("up", prom.start, prom.end, STEP)
    with pytest.raises(ValueError, match="http"):
        PrometheusSource("prometheus:9090")


# ---------------------------------------------------------------- the command line
def invoke(*args: str) -> Any:
    result = click_testing.CliRunner().invoke(anomaly, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_train_detect_forecast_end_to_end(prom: Data, tmp_path: Path) -> None:
    model = tmp_path / "model.json"
    queries = ["--query", "requests=shop_requests_per_second", "--query", "shop_orders_per_minute"]
    common = ["--prometheus", prom.url, *queries, "--step", "60s"]
    minute = ["--param", "alpha=1e-5", "--param", "rank_window=20000"]  # one point a minute
    out = invoke("train", *common, *minute, "--start", str(prom.start), "--end",
                 str(prom.train_end), "--model", str(model)).output
    assert "wrote" in out
    assert "requests" in out
    assert "shop_orders_per_minute" in out
    body = json.loads(model.read_text())
    assert body["version"] == 1
    assert set(body["metrics"]) == {"requests", "shop_orders_per_minute"}

    result = invoke("detect", *common, "--model", str(model), "--start",
                    str(prom.train_end + STEP), "--end", str(prom.end), "--json")
    points = json.loads(result.output)
    assert len(points) == 2 * 7 * 1440
    assert {"timestamp", "metric", "score", "is_anomaly", "severity"} <= set(points[0])
    found = [p for p in points if p["is_anomaly"]]
    events = [e for e in prom.shop.events if e.metric in ("http_requests", "orders")]
    hits = [e for e in events if any(
        e.start <= p["timestamp"] <= e.end + 900
        and p["metric"] == ("requests" if e.metric == "http_requests" else "shop_orders_per_minute")
        for p in found)]
    assert len(hits) >= len(events) - 2  # the injected spikes are found
    assert len(found) <= len(events) + 7  # about one chance alarm a week per series

    table = invoke("detect", *common, "--model", str(model), "--start",
                   str(prom.train_end + STEP), "--end", str(prom.end)).output
    assert table.splitlines()[0].split() == ["timestamp", "metric", "value", "score", "anomaly",
                                             "severity", "kind"]
    assert f"{len(points)} points, {len(found)} anomalies" in table

    # without a model: fitted on the history before --start; times as RFC 3339
    rfc = __import__("datetime").datetime.fromtimestamp(prom.end - 86400, __import__(
        "datetime").timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    last_day = json.loads(invoke("detect", *common, "--start", rfc, "--end", str(prom.end),
                                 "--history", "14d", "--json").output)
    assert len(last_day) == 2 * 1441

    fc = json.loads(invoke("forecast", *common, "--start", str(prom.start), "--end",
                           str(prom.end), "--horizon", "4h", "--json").output)
    assert len(fc) == 2 * 240
    assert all(r["lower"] <= r["forecast"] <= r["upper"] and r["lower"] >= 0 for r in fc)
    assert fc[0]["timestamp"] == prom.end + STEP


def test_isolation_forest_through_the_cli_trains_saves_and_detects(prom: Data,
                                                                   tmp_path: Path) -> None:
    model = tmp_path / "forest.json"
    common = ["--prometheus", prom.url, "--query", "requests=shop_requests_per_second",
              "--step", "60s", "--detector", "isolation-forest"]
    out = invoke("train", *common, "--start", str(prom.train_end - 7 * 86400), "--end",
                 str(prom.train_end), "--model", str(model)).output
    assert "wrote" in out
    assert json.loads(model.read_text())["detector"] == "isolation-forest"
    points = json.loads(invoke("detect", *common, "--model", str(model), "--start",
                               str(prom.train_end + STEP), "--end",
                               str(prom.train_end + 2 * 86400), "--json").output)
    assert len(points) == 2 * 1440
    assert {p["metric"] for p in points} == {"requests"}
    assert all(0.0 <= p["score"] <= 1.0 for p in points)
    # a model of the other detector is refused with a clear error, not misread
    r = click_testing.CliRunner().invoke(anomaly, [
        "detect", "--prometheus", prom.url, "--query", "requests=shop_requests_per_second",
        "--step", "60s", "--detector", "seasonal", "--model", str(model), "--start",
        str(prom.train_end + STEP), "--end", str(prom.train_end + 86400)])
    assert r.exit_code == 2, r.output
    assert "holds isolation-forest detectors" in r.output
    assert "Traceback" not in r.output


def test_demand_per_product_is_forecast_never_negative(prom: Data) -> None:
    rows = json.loads(invoke("forecast", "--prometheus", prom.url, "--query",
                             "shop_products_sold_per_minute", "--step", "60s", "--start",
                             str(prom.start), "--end", str(prom.end), "--horizon", "2h",
                             "--json").output)
    by_metric: dict[str, list[Any]] = {}
    for r in rows:
        by_metric.setdefault(r["metric"], []).append(r)
    assert sorted(by_metric) == ['shop_products_sold_per_minute{product_id="espresso"}',
                                 'shop_products_sold_per_minute{product_id="latte"}']
    for series in by_metric.values():
        assert len(series) == 120
        assert all(0 <= r["lower"] <= r["forecast"] <= r["upper"] for r in series)
        assert any(r["forecast"] > 0 for r in series)


def test_cli_errors_are_clear(prom: Data, tmp_path: Path) -> None:
    runner = click_testing.CliRunner()
    r = runner.invoke(anomaly, ["detect", "--prometheus", prom.url, "--query", "rate((",
                                "--start", "-1h"])
    assert r.exit_code == 1
    assert "refused the query" in r.output
    r = runner.invoke(anomaly, ["train", "--prometheus", prom.url, "--query", "up",
                                "--start", "yesterday-ish"])
    assert r.exit_code == 2
    assert "is not a time" in r.output
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"format": "mestres-observability/anomaly-model", "version": 7}))
    r = runner.invoke(anomaly, ["detect", "--prometheus", prom.url, "--query", "up",
                                "--model", str(bad)])
    assert r.exit_code == 1
    assert "format version 7" in r.output


# ---------------------------------------------------------------- anomaly serve
def test_service_exports_the_catalogue_families(prom: Data) -> None:
    from prometheus_client.openmetrics.exposition import generate_latest
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    found_hook: list[Any] = []
    service = AnomalyService(PrometheusSource(prom.url), [Watch("requests", "shop_requests_per_second")],
                             step=STEP, history=14 * 86400, horizons=(3600, 4 * 3600),
                             make_detector=lambda: __import__(
                                 "mestres_observability.anomaly.seasonal", fromlist=["x"]
                             ).SeasonalDetector(), on_anomaly=[found_hook.append])
    assert service.poll(now=prom.train_end) == []  # fitted on the history, nothing reported
    found = service.poll(now=prom.end)
    spikes = [e for e in prom.shop.events if e.metric == "http_requests"]
    assert any(e.start <= p.timestamp <= e.end + 900 for e in spikes for p in found)
    assert found_hook == found
    families = {f.name: f for f in text_string_to_metric_families(  # type: ignore[no-untyped-call]
        generate_latest(service.registry).decode())}
    expected = {d.family_name(): d for d in catalogue.entries(process="anomaly-serve")}
    assert set(families) == set(expected)
    for name, f in families.items():
        assert f.type == expected[name].kind
        assert f.documentation == expected[name].doc
        for s in f.samples:
            assert set(s.labels) == set(expected[name].labels), s
            assert s.name in expected[name].sample_names()
    horizons = {s.labels["horizon"] for s in families["forecast"].samples}
    assert horizons == {"1h", "4h"}
    (score,) = families["anomaly_score"].samples
    assert score.labels == {"metric": "requests"}
    assert 0.0 <= score.value <= 1.0


def test_anomaly_serve_command_serves_metrics_until_sigterm(prom: Data) -> None:
    port = free_port()
    code = "from mestres_observability.anomaly.cli import anomaly; anomaly()"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--prometheus", prom.url, "--query",
         "requests=shop_requests_per_second", "--port", str(port), "--host", "127.0.0.1",
         "--interval", "2s", "--history", "22d"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    body = ""
    try:
        def scraped() -> bool:
            nonlocal body
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                body = r.read().decode()
            return 'forecast{horizon="4h",metric="requests"}' in body

        wait_until(scraped, timeout=120, interval=0.5, message="anomaly serve's forecasts")
        assert 'anomaly_score{metric="requests"}' in body
        assert "mestres_observability" not in body.split("anomaly_score")[0].split("# HELP")[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"metrics on http://127.0.0.1" in err
