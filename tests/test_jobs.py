"""``job()``: metrics, span, log context, decorator, textfile and a failed push, in one process.

The real Pushgateway: ``tests/integration/test_jobs_pushgateway.py``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from opentelemetry.trace import StatusCode
from prometheus_client.parser import text_string_to_metric_families

from mestres_observability import job
from mestres_observability.logs import get_logger
from mestres_observability.testing import (
    capture_logs,
    captured_spans,
    fresh_observability,
    sample_value,
)
from tests._support import free_port


def test_a_successful_and_a_failed_run() -> None:
    with fresh_observability() as obs, captured_spans() as spans, capture_logs() as events:
        before = time.time()
        with job("inventory_sync"):
            get_logger("shop").info("syncing")
        with pytest.raises(RuntimeError, match="supplier down"), job("inventory_sync"):
            raise RuntimeError("supplier down")
        assert sample_value("job_runs_total", obs, job="inventory_sync", status="success") == 1
        assert sample_value("job_runs_total", obs, job="inventory_sync", status="failure") == 1
        success = sample_value("job_last_success_timestamp_seconds", obs, job="inventory_sync")
        failure = sample_value("job_last_failure_timestamp_seconds", obs, job="inventory_sync")
        assert before <= success <= failure <= time.time()
        assert 0 <= sample_value("job_duration_seconds", obs, job="inventory_sync") < 5
    ok, bad = [s for s in spans.spans if s.name == "inventory_sync"]
    assert ok.attributes["job.name"] == "inventory_sync"
    assert bad.status.status_code is StatusCode.ERROR
    (line,) = [e for e in events if e["event"] == "syncing"]
    assert line["job"] == "inventory_sync"
    assert line["trace_id"] == format(ok.context.trace_id, "032x")
    finished = [e for e in events if e["event"] == "job_finished"]
    assert [e["status"] for e in finished] == ["success", "failure"]


def test_the_job_field_does_not_outlive_the_run() -> None:
    with fresh_observability(), capture_logs() as events:
        with job("a"):
            pass
        get_logger("shop").info("later")
    (later,) = [e for e in events if e["event"] == "later"]
    assert "job" not in later


def test_decorator_on_sync_and_async_functions() -> None:
    @job("nightly_report")
    def report(n: int) -> int:
        return n * 2

    @job("async_sync")
    async def fetch() -> str:
        await asyncio.sleep(0)
        return "ok"

    @job("broken")
    def broken() -> None:
        raise KeyError("x")

    with fresh_observability() as obs:
        assert report(2) == 4
        assert report(3) == 6
        assert asyncio.run(fetch()) == "ok"
        with pytest.raises(KeyError):
            broken()
        assert sample_value("job_runs_total", obs, job="nightly_report", status="success") == 2
        assert sample_value("job_runs_total", obs, job="async_sync", status="success") == 1
        assert sample_value("job_runs_total", obs, job="broken", status="failure") == 1
    assert report.__name__ == "report"


def test_names_are_checked() -> None:
    for bad in ("", "  ", None, 3):
        with pytest.raises(ValueError, match="non-empty name"):
            job(bad)  # type: ignore[arg-type]


def _read(path: Path) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[s.name + str(sorted(s.labels.items()))] = s.value
    return out


def test_textfile_is_written_atomically_and_keeps_the_last_success(tmp_path: Path) -> None:
    with fresh_observability(job_textfile_dir=str(tmp_path)), job("inventory_sync"):
        pass
    path = tmp_path / "inventory_sync.prom"
    first = _read(path)
    key = "job_last_success_timestamp_seconds[('job', 'inventory_sync')]"
    assert first["job_runs_total[('job', 'inventory_sync'), ('status', 'success')]"] == 1
    assert key in first
    assert not any("_created" in k for k in first)
    assert sorted(os.listdir(tmp_path)) == ["inventory_sync.prom"]  # no temporary file left
    # the next cron run fails, in a new process (a fresh instance here)
    with fresh_observability(job_textfile_dir=str(tmp_path)), \
            pytest.raises(RuntimeError), job("inventory_sync"):
        raise RuntimeError("boom")
    second = _read(path)
    assert second[key] == first[key]
    assert second["job_runs_total[('job', 'inventory_sync'), ('status', 'failure')]"] == 1
    assert "job_last_failure_timestamp_seconds[('job', 'inventory_sync')]" in second


def test_other_jobs_series_stay_out_of_a_jobs_file(tmp_path: Path) -> None:
    with fresh_observability(job_textfile_dir=str(tmp_path)):
        with job("a"):
            pass
        with job("b/../evil"):
            pass
    assert sorted(os.listdir(tmp_path)) == ["a.prom", "b_.._evil.prom"]
    assert all("'b" not in k for k in _read(tmp_path / "a.prom"))


def test_a_failed_push_is_counted_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with fresh_observability(pushgateway_url=url, pushgateway_timeout=0.5) as obs:
        started = time.monotonic()
        with job("inventory_sync"):
            pass
        assert time.monotonic() - started < 3
        assert sample_value("mestres_observability_errors_total", obs, component="jobs") == 1
    assert "Pushgateway failed" in caplog.text


def test_an_unwritable_textfile_dir_is_counted(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with fresh_observability(job_textfile_dir=str(missing)) as obs:
        with job("x"):
            pass
        assert sample_value("mestres_observability_errors_total", obs, component="jobs") == 1


def test_job_metrics_off_records_and_pushes_nothing(tmp_path: Path) -> None:
    with fresh_observability(job_metrics=False, job_textfile_dir=str(tmp_path)) as obs:
        with job("x"):
            pass
        assert "job_runs_total" not in obs.render_metrics().body.decode()
    assert os.listdir(tmp_path) == []


def test_pushgateway_url_is_validated() -> None:
    from mestres_observability import ConfigurationError

    with pytest.raises(ConfigurationError, match="pushgateway_url"):
        fresh_observability(pushgateway_url="ftp://gw").__enter__()


