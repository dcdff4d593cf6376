"""``job()`` against Debian's ``prometheus-pushgateway`` on a free loopback port.

A run pushes its series grouped by job and instance; a later failed run of the
same job keeps the last success timestamp on the Pushgateway; two jobs and two
instances are separate groups; a Pushgateway that went away costs a counted
fault, never an exception.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mestres_observability import job
from mestres_observability.testing import fresh_observability, sample_value
from tests._support import free_port, require_binary, wait_until
from tests.servers import port_open

pytestmark = pytest.mark.integration


class Pushgateway:
    def __init__(self) -> None:
        binary = require_binary("prometheus-pushgateway")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{self.port}", "--persistence.file="],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: port_open(self.port), timeout=20, message="the Pushgateway to listen")

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def pushgateway() -> Iterator[Pushgateway]:
    gw = Pushgateway()
    try:
        yield gw
    finally:
        gw.stop()


def _labels(job_name: str, instance: str, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"job": job_name, "instance": instance, **more}.items()))


def test_runs_are_pushed_grouped_by_job_and_instance(pushgateway: Pushgateway) -> None:
    settings = {"pushgateway_url": pushgateway.url, "job_instance": "cron-1"}
    with fresh_observability(**settings) as obs:
        started = time.time()
        with job("inventory_sync"):
            pass
        assert sample_value("mestres_observability_errors_total", obs, component="jobs") == 0
    got = pushgateway.samples()
    key = _labels("inventory_sync", "cron-1")
    success = got[("job_last_success_timestamp_seconds", key)]
    assert started <= success <= time.time()
    assert got[("job_runs_total", _labels("inventory_sync", "cron-1", status="success"))] == 1
    assert ("job_duration_seconds", key) in got
    assert not any(name.startswith(("process_", "http_", "orders_")) for name, _ in got
                   if dict(_).get("job") == "inventory_sync")

    # the next run fails (a new process: a fresh instance): the last success stays
    with fresh_observability(**settings), pytest.raises(ValueError), job("inventory_sync"):
        raise ValueError("supplier down")
    got = pushgateway.samples()
    assert got[("job_last_success_timestamp_seconds", key)] == success
    assert ("job_last_failure_timestamp_seconds", key) in got
    assert got[("job_runs_total", _labels("inventory_sync", "cron-1", status="failure"))] == 1

    # another job and another instance are groups of their own
    with fresh_observability(pushgateway_url=pushgateway.url, job_instance="cron-2"):
        with job("inventory_sync"):
            pass
        with job("nightly_report"):
            pass
    got = pushgateway.samples()
    assert got[("job_last_success_timestamp_seconds", key)] == success
    assert ("job_last_success_timestamp_seconds", _labels("inventory_sync", "cron-2")) in got
    assert ("job_last_success_timestamp_seconds", _labels("nightly_report", "cron-2")) in got
    assert ("job_last_success_timestamp_seconds", _labels("nightly_report", "cron-1")) not in got


def test_a_pushgateway_that_went_away_is_counted(pushgateway: Pushgateway) -> None:
    pushgateway.stop()
    with fresh_observability(pushgateway_url=pushgateway.url, pushgateway_timeout=0.5) as obs:
        with job("inventory_sync"):
            pass
        assert sample_value("mestres_observability_errors_total", obs, component="jobs") == 1
        assert sample_value("job_runs_total", obs, job="inventory_sync", status="success") == 1
