"""/metrics rendering: negotiation, gzip, validity under real parsers and promtool."""

from __future__ import annotations

import gzip
import subprocess

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse

from mestres_observability import Observability, record_order, track_user_action
from mestres_observability.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, negotiate

from ._support import require_binary

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (PROMETHEUS_ACCEPT, True),
        ("application/openmetrics-text", True),
        ("*/*", False),
        (None, False),
        ("garbage;;;q=x", False),
        ("application/openmetrics-text;q=0", False),
        ("application/openmetrics-text;version=9.9.9", False),
        ("text/plain;q=1, application/openmetrics-text;q=0.5", False),
    ],
)
def test_negotiation(accept: str | None, openmetrics: bool) -> None:
    assert negotiate(accept) is openmetrics


def unique_series(families: list) -> None:  # type: ignore[type-arg]
    seen = set()
    for fam in families:
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in seen, f"duplicate series {key}"
            seen.add(key)


def test_text_and_openmetrics_carry_same_values(obs: Observability) -> None:
    record_order({"status": "paid", "total_amount": 12.5,
                  "items": [{"product_id": "espresso", "quantity": 3}]})
    text = obs.render_metrics("text/plain")
    om = obs.render_metrics(PROMETHEUS_ACCEPT)
    assert dict(text.headers)["Content-Type"] == TEXT_CONTENT_TYPE
    assert dict(om.headers)["Content-Type"] == OPENMETRICS_CONTENT_TYPE
    assert om.body.endswith(b"# EOF\n")
    tfam = list(text_parse(text.body.decode()))
    ofam = list(om_parse(om.body.decode()))
    unique_series(tfam)
    unique_series(ofam)

    def value(fams: list, name: str, **labels: str) -> float:  # type: ignore[type-arg]
        return next(s.value for f in fams for s in f.samples
                    if s.name == name and s.labels == labels)

    for fams in (tfam, ofam):
        assert value(fams, "orders_total", status="paid") == 1
        assert value(fams, "revenue_total", currency="BRL") == 12.5
        assert value(fams, "products_sold_total", product_id="espresso") == 3


def test_gzip_when_accepted(obs: Observability) -> None:
    resp = obs.render_metrics(None, "br;q=1, gzip;q=0.8")
    assert dict(resp.headers)["Content-Encoding"] == "gzip"
    assert gzip.decompress(resp.body).startswith(b"# HELP")
    assert int(dict(resp.headers)["Content-Length"]) == len(resp.body)
    assert "Content-Encoding" not in dict(obs.render_metrics(None, "gzip;q=0").headers)


def test_failing_collector_gives_generic_500(obs: Observability) -> None:
    class Broken:
        def describe(self) -> list[object]:
            return []

        def collect(self) -> list[object]:
            raise RuntimeError("secret dsn postgres://u:p@h")

    obs.registry.register(Broken())  # type: ignore[arg-type]
    resp = obs.render_metrics()
    assert resp.status == 500
    assert b"secret" not in resp.body
    assert b"Traceback" not in resp.body
    # the fault is counted (read the counter object directly: a scrape would fail again)
    errors = obs.metrics.mestres_observability_errors_total.metric
    assert errors.labels("exposition")._value.get() == 1


def promtool_check(body: bytes) -> subprocess.CompletedProcess[bytes]:
    promtool = require_binary("promtool")
    return subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                          timeout=60)


@pytest.mark.integration
def test_promtool_accepts_text_exposition(obs: Observability) -> None:
    record_order({"status": "paid", "total_amount": 1, "items": [{"product_id": "x", "quantity": 1}]})
    track_user_action('weird "action"\nwith\\newline\x00and ☕')
    obs.set_active_connections(2)
    res = promtool_check(obs.render_metrics().body)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
