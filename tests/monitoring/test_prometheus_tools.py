"""Prometheus' and Alertmanager's own tools accept the rendered output, the generated rule
tests pass (and fail when a rule is broken), routes reach their receivers, and a running
Alertmanager inhibits the ticket while the page of the same service and SLO fires."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mestres_observability.config import ObservabilityConfig
from mestres_observability.monitoring import rules
from tests._support import require_binary, wait_until
from tests.monitoring._tools import add_fake_rum, alertmanager, http_json, render, run

pytestmark = pytest.mark.integration

VARIANTS = {
    "defaults": {},
    "namespace-and-auth": {"config": ObservabilityConfig(namespace="shop",
                                                         metrics_auth="bearer:s3cret"),
                           "service": "shop-api", "targets": ("10.0.0.1:8000", "10.0.0.2:8000"),
                           "alert_teams": (("business", "sales"),),
                           "smtp_auth_username": "alerts"},
    "system-metrics-off": {"config": ObservabilityConfig(system_metrics=False)},
    "pushgateway-and-job-ages": {"pushgateway_target": "127.0.0.1:9091",
                                 "job_max_age_seconds": 7200,
                                 "job_max_ages": (("hourly_sync", 5400), ("weekly", 8 * 86400))},
}


@pytest.fixture(params=list(VARIANTS), ids=list(VARIANTS))
def out(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    kwargs = dict(VARIANTS[request.param])
    if "smtp_auth_username" in kwargs:  # promtool checks that the credentials file exists
        secret = tmp_path / "metrics-token"
        secret.write_text("s3cret\n")
        kwargs["metrics_credentials_file"] = str(secret)
    rendered = render(tmp_path / "out", **kwargs)
    for path in rendered.rglob("*"):
        if path.is_file():
            assert "s3cret" not in path.read_text(), path  # secrets stay in their files
    return rendered


def test_promtool_check_config_and_rules(out: Path) -> None:
    promtool = require_binary("promtool")
    res = run([promtool, "check", "config", str(out / "prometheus" / "prometheus.yml")])
    assert res.returncode == 0, res.stdout + res.stderr
    rule_files = sorted((out / "prometheus" / "rules").glob("*.yml"))
    assert len(rule_files) >= 8
    res = run([promtool, "check", "rules", *map(str, rule_files)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_generated_rule_tests_pass(out: Path) -> None:
    promtool = require_binary("promtool")
    tests = sorted((out / "prometheus" / "tests").glob("*.yml"))
    assert {t.stem for t in tests} == {p.stem for p in (out / "prometheus" / "rules").glob("*.yml")}
    started = time.monotonic()
    res = run([promtool, "test", "rules", *map(str, tests)], timeout=300)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert res.stdout.count("SUCCESS") == len(tests)
    assert time.monotonic() - started < 120


def test_rum_rule_tests_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    promtool = require_binary("promtool")
    add_fake_rum(monkeypatch)
    out = render(tmp_path)
    res = run([promtool, "test", "rules", str(out / "prometheus" / "tests" / "rum.yml")])
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr


def test_rum_rules_from_the_real_rum_metrics_pass_promtool(tmp_path: Path) -> None:
    """With RUM on, the web-vitals alerts come from the real catalogue entries (one histogram
    with a ``metric`` label, plus CLS) and their generated tests pass."""
    promtool = require_binary("promtool")
    out = render(tmp_path, config=ObservabilityConfig(rum_enabled=True))
    rum = (out / "prometheus" / "rules" / "rum.yml").read_text(encoding="utf-8")
    for alert in ("WebVitalLCPPoor", "WebVitalINPPoor", "WebVitalFCPPoor", "WebVitalTTFBPoor",
                  "WebVitalCLSPoor", "JavaScriptErrors"):
        assert f"alert: {alert}" in rum, alert
    assert 'rum_web_vitals_seconds_bucket{job="mestres-cafe-api",metric="LCP",le="4.0"}' in rum
    res = run([promtool, "test", "rules", str(out / "prometheus" / "tests" / "rum.yml")])
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr


@pytest.mark.parametrize(("rule", "old", "new"), [
    ("http", "> 0.05", "> 0.5"),              # HighErrorRate no longer fires
    ("http", ">= 0.1", ">= 0"),               # the traffic guard is gone: it pages
    ("slo", "(14.4 * 0.001)", "(1 * 0.001)"),  # a 5x burn now pages
    ("business", "increase(orders_total{", "rate(orders_total{"),  # the seed's per-second rate
    ("jobs", '"exported_job"', '"job"'),      # textfile-route jobs keep node-exporter's job
    ("jobs", "> 93600", "> 100000"),          # a later limit: the 27-hour-old success is silent
    ("jobs", "on (job) job:", "on (instance) job:"),  # JobFailing no longer matches per job
])
def test_generated_tests_catch_a_broken_rule(tmp_path: Path, rule: str, old: str,
                                             new: str) -> None:
    promtool = require_binary("promtool")
    out = render(tmp_path)
    path = out / "prometheus" / "rules" / f"{rule}.yml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    res = run([promtool, "test", "rules", str(out / "prometheus" / "tests" / f"{rule}.yml")])
    assert res.returncode != 0
    assert "FAILED" in res.stdout + res.stderr


def test_amtool_check_config(out: Path) -> None:
    amtool = require_binary("amtool")
    res = run([amtool, "check-config", str(out / "alertmanager" / "alertmanager.yml")])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 inhibit rules" in res.stdout


@pytest.mark.parametrize(("labels", "receiver"), [
    (["severity=page", "team=backend"], "backend-page"),
    (["severity=ticket", "team=backend"], "backend-ticket"),
    (["severity=page", "team=sales"], "sales-page"),
    (["severity=ticket", "team=sales"], "sales-ticket"),
    (["severity=page", "team=nobody"], "backend-page"),   # an unrouted team still pages
    (["severity=ticket"], "backend-ticket"),
])
def test_amtool_routes_each_severity_to_its_receiver(tmp_path: Path, labels: list[str],
                                                     receiver: str) -> None:
    amtool = require_binary("amtool")
    out = render(tmp_path, alert_teams=(("business", "sales"),))
    config = str(out / "alertmanager" / "alertmanager.yml")
    res = run([amtool, "config", "routes", "test", f"--config.file={config}",
               f"--verify.receivers={receiver}", "service=mestres-cafe-api", *labels])
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == receiver


def test_every_rendered_alert_routes_to_its_severity_receiver(tmp_path: Path) -> None:
    amtool = require_binary("amtool")
    out = render(tmp_path)
    config = str(out / "alertmanager" / "alertmanager.yml")
    for _group, alert in rules.alerts(rules.RenderSettings()):
        labels = [f"{k}={v}" for k, v in alert.labels.items()]
        res = run([amtool, "config", "routes", "test", f"--config.file={config}",
                   f"alertname={alert.name}", *labels])
        assert res.stdout.strip() == f"backend-{alert.labels['severity']}", alert.name


def _alert(name: str, severity: str, service: str = "mestres-cafe-api",
           **labels: str) -> dict[str, object]:
    return {"labels": {"alertname": name, "severity": severity, "team": "backend",
                       "service": service, **labels},
            "annotations": {"summary": name}}


def test_a_running_alertmanager_inhibits_the_ticket_of_the_paging_slo(tmp_path: Path) -> None:
    secret = tmp_path / "slack-url"
    secret.write_text("http://127.0.0.1:9/never-called\n")
    out = render(tmp_path / "out", slack_api_url_file=str(secret), alert_group_wait="1h")
    with alertmanager(out / "alertmanager" / "alertmanager.yml") as base:
        page = _alert("AvailabilityBudgetFastBurn", "page", slo="availability")
        tickets = {
            "same": _alert("AvailabilityBudgetSlowBurn", "ticket", slo="availability"),
            "other-slo": _alert("LatencyBudgetSlowBurn", "ticket", slo="latency"),
            "cause": _alert("PostgresDown", "ticket"),
            "other-service": _alert("AvailabilityBudgetSlowBurn", "ticket",
                                    service="billing-api", slo="availability"),
        }
        http_json(f"{base}/api/v2/alerts", [page, *tickets.values()])

        def by_name() -> dict[tuple[str, str], dict[str, object]]:
            found = http_json(f"{base}/api/v2/alerts")
            return {(a["labels"]["alertname"], a["labels"]["service"]): a for a in found}

        wait_until(lambda: len(by_name()) == 5, timeout=10, message="the alerts to be received")

        def ticket_suppressed() -> bool:
            status = by_name()[("AvailabilityBudgetSlowBurn", "mestres-cafe-api")]["status"]
            return status["state"] == "suppressed"  # type: ignore[index,no-any-return]

        wait_until(ticket_suppressed, timeout=10, message="the ticket to be inhibited")
        alerts = by_name()
        page_fp = alerts[("AvailabilityBudgetFastBurn", "mestres-cafe-api")]["fingerprint"]
        same = alerts[("AvailabilityBudgetSlowBurn", "mestres-cafe-api")]["status"]
        assert same["inhibitedBy"] == [page_fp]  # type: ignore[index]
        for key in (("LatencyBudgetSlowBurn", "mestres-cafe-api"),
                    ("PostgresDown", "mestres-cafe-api"),
                    ("AvailabilityBudgetSlowBurn", "billing-api")):
            status = alerts[key]["status"]
            assert status["state"] == "active", key  # type: ignore[index]
            assert status["inhibitedBy"] == [], key  # type: ignore[index]
        assert alerts[("AvailabilityBudgetFastBurn", "mestres-cafe-api")]["status"][  # type: ignore[index]
            "state"] == "active"


def test_amtool_accepts_the_incidents_receiver_and_routes_every_alert_to_it(tmp_path: Path) -> None:
    amtool = require_binary("amtool")
    out = render(tmp_path, incidents_url="http://incidents:9095")
    config = str(out / "alertmanager" / "alertmanager.yml")
    res = run([amtool, "check-config", config])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 receivers" in res.stdout  # backend-page, backend-ticket, incidents
    for labels, expected in ((["severity=page", "team=backend"], "incidents,backend-page"),
                             (["severity=ticket"], "incidents,backend-ticket")):
        res = run([amtool, "config", "routes", "test", f"--config.file={config}",
                   "service=mestres-cafe-api", *labels])
        assert res.stdout.strip() == expected, res.stdout + res.stderr
    assert "http://incidents:9095/alertmanager" in Path(config).read_text()
