"""The command line: render with options and MESTRES_OBS_* settings, refuse what cannot be
rendered exactly, check a folder (and say what it could not check)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mestres_observability.cli import main
from mestres_observability.monitoring import _yaml

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    clean = {k: None for k in os.environ if k.startswith(("MESTRES_OBS_", "OTEL_"))}
    result = CliRunner().invoke(main, list(args), env={**clean, **(env or {})},
                                catch_exceptions=False)
    return result.exit_code, result.output


def test_render_writes_the_stack(tmp_path: Path) -> None:
    code, out = invoke("render", "--out", str(tmp_path), "--target", "10.0.0.5:8000",
                       "--target", "10.0.0.6:8000", "--service", "shop-api",
                       "--slo-availability", "99.5", "--slo-latency", "0.5:95")
    assert code == 0, out
    assert "prometheus/rules/slo.yml" in out
    assert "next: mestres-observability check" in out
    prom = _yaml.load((tmp_path / "prometheus" / "prometheus.yml").read_text())
    job = prom["scrape_configs"][0]
    assert job["job_name"] == "shop-api"
    assert job["static_configs"][0]["targets"] == ["10.0.0.5:8000", "10.0.0.6:8000"]
    slo = (tmp_path / "prometheus" / "rules" / "slo.yml").read_text()
    assert "(14.4 * 0.005)" in slo
    assert "(14.4 * 0.05)" in slo
    sli = (tmp_path / "prometheus" / "rules" / "slo-recording.yml").read_text()
    assert 'le="0.5"' in sli
    assert (tmp_path / "runbook.md").read_text().startswith("# Runbook")


def test_pushgateway_and_job_ages(tmp_path: Path) -> None:
    code, out = invoke("render", "--out", str(tmp_path), "--pushgateway", "pgw:9091",
                       "--job-max-age", "7200", "--job-max-age", "hourly_sync=5400")
    assert code == 0, out
    prom = _yaml.load((tmp_path / "prometheus" / "prometheus.yml").read_text())
    pushgateway = next(j for j in prom["scrape_configs"] if j["job_name"] == "pushgateway")
    assert pushgateway == {"job_name": "pushgateway", "honor_labels": True,
                           "static_configs": [{"targets": ["pgw:9091"]}]}
    jobs = (tmp_path / "prometheus" / "rules" / "jobs.yml").read_text()
    assert '{job="hourly_sync"}) > 5400' in jobs
    assert "> 7200 unless on (job)" in jobs
    assert "alert: PushgatewayDown" in jobs
    # without --pushgateway: no such scrape job, no such alert
    code, out = invoke("render", "--out", str(tmp_path / "plain"))
    prom = _yaml.load((tmp_path / "plain" / "prometheus" / "prometheus.yml").read_text())
    assert "pushgateway" not in [j["job_name"] for j in prom["scrape_configs"]]
    assert "PushgatewayDown" not in (tmp_path / "plain" / "prometheus" / "rules" /
                                     "jobs.yml").read_text()


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    code, out = invoke("render", "--out", str(tmp_path), "--slo-latency", "0.3:99",
                       env={"MESTRES_OBS_NAMESPACE": "shop", "OTEL_SERVICE_NAME": "cafe",
                            "MESTRES_OBS_SYSTEM_METRICS": "false",
                            "MESTRES_OBS_HTTP_BUCKETS": "0.1,0.3,1,5"})
    assert code == 0, out
    assert "(namespace shop)" in out
    assert "for cafe" in out
    http = (tmp_path / "prometheus" / "rules" / "http.yml").read_text()
    assert "shop_http_requests_total" in http
    assert 'job="cafe"' in http
    infra = (tmp_path / "prometheus" / "rules" / "infrastructure.yml").read_text()
    assert "memory_usage_percent" not in infra  # the feature is off for this service
    # the option wins over the variable
    code, out = invoke("render", "--out", str(tmp_path / "b"), "--namespace", "cafe",
                       "--slo-latency", "0.3:99", env={"MESTRES_OBS_NAMESPACE": "shop",
                                                       "MESTRES_OBS_HTTP_BUCKETS": "0.1,0.3,1,5"})
    assert code == 0, out
    assert "cafe_http_requests_total" in (tmp_path / "b/prometheus/rules/http.yml").read_text()


def test_a_latency_threshold_that_is_not_a_bucket_bound_is_refused(tmp_path: Path) -> None:
    code, out = invoke("render", "--out", str(tmp_path), "--slo-latency", "0.3:99")
    assert code == 2
    assert "--slo-latency" in out
    assert "nearest bounds: 0.25 and 0.5" in out
    assert not (tmp_path / "prometheus").exists()  # nothing written
    # the default threshold (0.25 s) is refused the same way under buckets without it
    code, out = invoke("render", "--out", str(tmp_path), env={"MESTRES_OBS_HTTP_BUCKETS": "0.1,1"})
    assert code == 2
    assert "nearest bounds: 0.1 and 1.0" in out
    assert "--slo-latency" in out


@pytest.mark.parametrize("args", [
    ["--slo-latency", "fast"], ["--slo-latency", "0.25:100"], ["--slo-availability", "100"],
    ["--target", "no-port"], ["--target", "host:99999"], ["--pushgateway", "pgw"],
    ["--job-max-age", "soon"], ["--job-max-age", "0"], ["--job-max-age", "=60"],
    ["--job-max-age", "x=-1"],
])
def test_bad_options_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    code, out = invoke("render", "--out", str(tmp_path), *args)
    assert code == 2, out
    assert "Invalid value" in out


def test_a_bad_library_setting_is_reported(tmp_path: Path) -> None:
    code, out = invoke("render", "--out", str(tmp_path),
                       env={"MESTRES_OBS_HTTP_BUCKETS": "fast,slow"})
    assert code == 1
    assert "MESTRES_OBS_HTTP_BUCKETS" in out


def test_render_removes_its_own_stale_files_only(tmp_path: Path) -> None:
    assert invoke("render", "--out", str(tmp_path))[0] == 0
    rules = tmp_path / "prometheus" / "rules"
    (rules / "rum.yml").write_text(_yaml.HEADER + "groups: []\n")  # an earlier rendering's
    (rules / "mine.yml").write_text("groups: []\n")                # the user's own
    code, out = invoke("render", "--out", str(tmp_path))
    assert code == 0
    assert "removed stale prometheus/rules/rum.yml" in out
    assert not (rules / "rum.yml").exists()
    assert (rules / "mine.yml").exists()


@pytest.mark.integration
def test_check_passes_on_a_rendered_folder(tmp_path: Path) -> None:
    from tests._support import require_binary

    require_binary("promtool")
    require_binary("amtool")
    assert invoke("render", "--out", str(tmp_path))[0] == 0
    code, out = invoke("check", str(tmp_path), "--strict")
    assert code == 0, out
    for line in ("ok       Prometheus configuration", "ok       rule files",
                 "ok       rule tests", "ok       Alertmanager configuration",
                 "ok       metrics and labels of every expression"):
        assert line in out


@pytest.mark.integration
def test_check_fails_on_a_broken_rule(tmp_path: Path) -> None:
    from tests._support import require_binary

    require_binary("promtool")
    assert invoke("render", "--out", str(tmp_path))[0] == 0
    http = tmp_path / "prometheus" / "rules" / "http.yml"
    http.write_text(http.read_text().replace("http_requests_total{", "http_request_total{"))
    code, out = invoke("check", str(tmp_path))
    assert code == 1
    assert "FAILED   rule tests" in out
    assert "FAILED   metrics and labels" in out
    assert "http_request_total is not a metric" in out


def test_check_says_what_it_could_not_check(tmp_path: Path) -> None:
    assert invoke("render", "--out", str(tmp_path))[0] == 0
    code, out = invoke("check", str(tmp_path), env={"PATH": str(tmp_path / "empty")})
    assert code == 0, out  # missing tools are not failures...
    assert "skipped  rule tests: promtool is not on PATH (Debian/Ubuntu package prometheus" in out
    assert "skipped  Alertmanager configuration: amtool is not on PATH" in out
    assert "ok       metrics and labels of every expression" in out  # ...this needs no tool
    code, out = invoke("check", str(tmp_path), "--strict", env={"PATH": str(tmp_path / "empty")})
    assert code == 1  # unless asked


def test_python_dash_m_runs_the_cli(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESTRES_OBS_")}
    res = subprocess.run([sys.executable, "-m", "mestres_observability", "render", "--out",
                          str(tmp_path), "--service", "via-m"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env=env, check=False)
    assert res.returncode == 0, res.stderr
    assert "for via-m" in res.stdout
    res = subprocess.run([sys.executable, "-m", "mestres_observability", "--help"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
                         check=False)
    assert res.returncode == 0
    assert "Usage: mestres-observability" in res.stdout
    assert "render" in res.stdout
    assert "check" in res.stdout


def test_console_script_is_declared() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'mestres-observability = "mestres_observability.cli:main"' in text
    assert '"click>=8.1"' in text
    assert '"pyyaml>=6"' in text


def test_anomaly_rules_are_rendered_with_their_tests_only_when_asked(tmp_path: Path) -> None:
    code, out = invoke("render", "--out", str(tmp_path / "with"), "--anomaly-rules")
    assert code == 0, out
    assert "anomaly rules: not rendered" not in out
    assert (tmp_path / "with" / "prometheus" / "rules" / "anomaly.yml").exists()
    assert (tmp_path / "with" / "prometheus" / "tests" / "anomaly.yml").exists()
    code, out = invoke("render", "--out", str(tmp_path / "without"))
    assert code == 0, out
    assert not (tmp_path / "without" / "prometheus" / "rules" / "anomaly.yml").exists()


def test_the_tool_groups_are_attached() -> None:
    code, out = invoke("--help")
    assert code == 0, out
    for group in ("anomaly", "incidents", "render", "check"):
        assert group in out
