"""Tail sampling under ``gunicorn --preload -w 3``: each worker decides its own requests'
traces, errored checkouts arrive whole from every worker (the master, under ``--preload``,
forked them with a trace of its own held), and every scrape shows the decisions of all
workers."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests._support import require_binary
from tests.integration.test_multiworker_servers import APPS, BIN_DIR, _get, _sample, server
from tests.otlp_receiver import OTLPReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX servers")]

__all__ = ["server"]  # the fixture, used below


def test_errored_checkouts_arrive_whole_from_every_gunicorn_worker(server: object) -> None:
    requests = 90
    with OTLPReceiver() as rx:
        port = server(  # type: ignore[operator]
            [require_binary("gunicorn", BIN_DIR), "-c", "python:mestres_observability.gunicorn",
             "--workers", "3", "--preload", "--bind", "127.0.0.1:{port}",
             "--graceful-timeout", "5", "--chdir", str(APPS), "flask_tail_app:app"],
            {"OTLP_TEST_ENDPOINT": rx.endpoint, "MESTRES_OBS_TAIL_SAMPLING": "true",
             "MESTRES_OBS_TAIL_SAMPLING_RATIO": "0", "OTEL_BSP_SCHEDULE_DELAY": "200"},
        )
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: _get(port, f"/checkout/{i}"), range(requests)))
        statuses = Counter(status for status, _h, _b in answers)
        assert statuses == {200: 60, 500: 30}
        served = {h["x-worker-pid"] for s, h, _b in answers if s == 200}
        assert len(served) == 3, f"requests were not spread over the 3 workers: {served}"
        rx.wait_for(lambda: len(rx.received()) >= 60, timeout=20)
        traces: dict[str, list[str]] = defaultdict(list)
        pids: set[str] = set()
        for s in rx.received():
            traces[s.trace_id].append(s.name)
            pids.add(str(s.attributes.get("app.worker_pid")))
        assert len(traces) == 30
        assert all(sorted(names) == ["GET /checkout/<int:n>", "charge_card"]
                   for names in traces.values()), traces
        assert len(pids) >= 2  # kept traces from several workers (30 errors over 3 workers)
        # every scrape, whichever worker answers, sums the workers' decisions
        assert _sample(port, "mestres_observability_tail_sampling_traces_total") == requests
        assert _sample(port, "mestres_observability_tail_sampling_spans_total") == 2 * requests
        assert _sample(port, "mestres_observability_spans_dropped_total") == 0
    log = server.log.read_text()  # type: ignore[attr-defined]
    assert "fault (" not in log, log  # no library fault in any worker (the 500s log their own)
