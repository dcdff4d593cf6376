"""The batch-job alerts on real servers (issue 16): jobs push to Debian's
``prometheus-pushgateway`` or write node-exporter's textfile, Debian's
``prometheus`` scrapes both with the rendered configuration (the Pushgateway
with ``honor_labels``), and the rendered JobNotSucceeded and JobFailing
expressions are evaluated through Prometheus' HTTP API: with a limit of one
second both routes' jobs fire, with the default 26 hours none does, and the
job whose last run failed fires JobFailing either way.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from mestres_observability import job
from mestres_observability.monitoring import rules
from mestres_observability.monitoring.settings import RenderSettings
from mestres_observability.testing import fresh_observability, sample_value
from tests._support import free_port, require_binary, wait_until
from tests.integration.test_jobs_pushgateway import Pushgateway
from tests.monitoring._tools import http_json, process, render

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUCCESS = "job:job_last_success_timestamp_seconds:max"


class Jobs:
    """The Pushgateway and node exporter the jobs reported to, and when they ran."""

    pushgateway: Pushgateway
    node_exporter: str
    started: float
    finished: float


@pytest.fixture(scope="module")
def jobs() -> Iterator[Jobs]:
    with ExitStack() as stack:
        j = Jobs()
        j.pushgateway = Pushgateway()
        stack.callback(j.pushgateway.stop)
        textfiles = Path(tempfile.mkdtemp(prefix="mestres-obs-textfile-"))
        stack.callback(shutil.rmtree, textfiles, True)
        port = free_port()
        j.node_exporter = f"127.0.0.1:{port}"
        stack.enter_context(process(
            [require_binary("prometheus-node-exporter"), f"--web.listen-address={j.node_exporter}",
             "--collector.disable-defaults", "--collector.textfile",
             f"--collector.textfile.directory={textfiles}"],
            f"http://{j.node_exporter}/metrics", textfiles / "node-exporter.log"))
        j.started = time.time()
        # a cron job that pushes; one that writes node-exporter's textfile; one that
        # succeeded, then failed (its last success stays on the Pushgateway)
        with fresh_observability(pushgateway_url=j.pushgateway.url, job_instance="cron-1") as obs:
            with job("inventory_sync"):
                pass
            with job("stock_refresh"):
                pass
            assert sample_value("mestres_observability_errors_total", obs, component="jobs") == 0
        with fresh_observability(pushgateway_url=j.pushgateway.url, job_instance="cron-1"), \
                pytest.raises(RuntimeError), job("stock_refresh"):
            raise RuntimeError("supplier API down")
        with fresh_observability(job_textfile_dir=str(textfiles)), job("nightly_report"):
            pass
        assert (textfiles / "nightly_report.prom").exists()
        j.finished = time.time()
        yield j


def _prometheus(stack: ExitStack, settings: RenderSettings) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="mestres-obs-jobs-prom-"))
    stack.callback(shutil.rmtree, tmp, True)  # after Prometheus has stopped
    out = render(tmp / "out", **vars(settings))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stack.enter_context(process(
        [require_binary("prometheus"), f"--config.file={out / 'prometheus' / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"], f"{base}/-/ready", tmp / "prometheus.log"))
    return base


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    answer = http_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]  # type: ignore[no-any-return]


def _by_job(result: list[dict[str, Any]]) -> dict[str, float]:
    return {r["metric"]["job"]: float(r["value"][1]) for r in result}


def _settings(jobs: Jobs, **more: Any) -> RenderSettings:
    return RenderSettings(pushgateway_target=jobs.pushgateway.url.removeprefix("http://"),
                          node_exporter_target=jobs.node_exporter, scrape_interval="1s",
                          alert_for_override="0s", **more)


def _alert_expr(settings: RenderSettings, name: str) -> str:
    return next(a.expr for _g, a in rules.alerts(settings) if a.name == name)


@pytest.mark.parametrize("limit", [1.0, None], ids=["one-second-limit", "default-26h-limit"])
def test_job_alerts_on_a_real_prometheus(jobs: Jobs, limit: float | None) -> None:
    settings = _settings(jobs, **({"job_max_age_seconds": limit} if limit else {}))
    with ExitStack() as stack:
        base = _prometheus(stack, settings)
        # both routes reach the recording rule under the batch job's own name: the pushed
        # job keeps job= (honor_labels), the textfile one comes back from exported_job
        wait_until(lambda: set(_by_job(_query(base, SUCCESS))) >= {
            "inventory_sync", "stock_refresh", "nightly_report"}, timeout=30, interval=0.3,
            message="the jobs' success times in Prometheus")
        recorded = _by_job(_query(base, SUCCESS))
        for name in ("inventory_sync", "stock_refresh", "nightly_report"):
            assert jobs.started <= recorded[name] <= jobs.finished, name
        raw = _query(base, 'job_last_success_timestamp_seconds{job="node-exporter"}')
        assert [r["metric"]["exported_job"] for r in raw] == ["nightly_report"]
        pushed = _query(base, 'job_last_success_timestamp_seconds{job="inventory_sync"}')
        assert [r["metric"]["instance"] for r in pushed] == ["cron-1"]

        not_succeeded = _alert_expr(settings, "JobNotSucceeded")
        fired = _by_job(_query(base, not_succeeded))
        if limit is not None:  # a second is long past for every job
            wait_until(lambda: set(_by_job(_query(base, not_succeeded))) == {
                "inventory_sync", "stock_refresh", "nightly_report"}, timeout=10,
                message="JobNotSucceeded for every job")
            fired = _by_job(_query(base, not_succeeded))
            assert all(limit < age < time.time() - jobs.started + 5 for age in fired.values())
        else:
            assert fired == {}
        # stock_refresh failed after its success, the others did not
        failing = _by_job(_query(base, _alert_expr(settings, "JobFailing")))
        assert set(failing) == {"stock_refresh"}
        assert 0 <= failing["stock_refresh"] < time.time() - jobs.started + 5
        assert _query(base, _alert_expr(settings, "PushgatewayDown")) == []  # it is up

        # the rules Prometheus loaded fire the same alerts
        def firing() -> set[tuple[str, str]]:
            alerts = http_json(f"{base}/api/v1/alerts")["data"]["alerts"]
            return {(a["labels"]["alertname"], a["labels"].get("job", "")) for a in alerts
                    if a["state"] == "firing" and a["labels"]["alertname"].startswith("Job")}

        expected = {("JobFailing", "stock_refresh")}
        if limit is not None:
            expected |= {("JobNotSucceeded", j)
                         for j in ("inventory_sync", "stock_refresh", "nightly_report")}
        wait_until(lambda: firing() == expected, timeout=15, interval=0.3,
                   message=f"Prometheus to fire {sorted(expected)}")


def test_pushgateway_down_fires_when_it_cannot_be_scraped() -> None:
    gone = Pushgateway()
    gone.stop()
    settings = RenderSettings(pushgateway_target=gone.url.removeprefix("http://"),
                              scrape_interval="1s", alert_for_override="0s")
    with ExitStack() as stack:
        base = _prometheus(stack, settings)

        def down() -> bool:
            alerts = http_json(f"{base}/api/v1/alerts")["data"]["alerts"]
            return any(a["labels"]["alertname"] == "PushgatewayDown" and a["state"] == "firing"
                       for a in alerts)

        wait_until(down, timeout=20, interval=0.3, message="PushgatewayDown to fire")
