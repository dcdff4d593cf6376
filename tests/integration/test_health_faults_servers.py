"""A real gunicorn worker whose health checks raise ``BaseException`` s (issue 10, item 6).

The checks of ``apps/health_faults_app.py`` raise ``SystemExit``, ``KeyboardInterrupt``,
``GeneratorExit`` and ``asyncio.CancelledError``, sync and async. The worker must answer
every probe with the 503 health JSON naming each error kind (never gunicorn's HTML 500),
and stay the same process throughout.
"""

from __future__ import annotations

import json
import os

import pytest

from tests._support import require_binary
from tests.integration import test_multiworker_servers as _servers
from tests.integration.test_multiworker_servers import APPS, BIN_DIR, _get

server = _servers.server  # the same fixture: a server in its own process group, stopped after

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX servers")]

KINDS = ("SystemExit", "KeyboardInterrupt", "GeneratorExit", "CancelledError")


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_a_gunicorn_worker_answers_health_json_when_checks_raise_base_exceptions(
        server: object, worker_class: str) -> None:
    port = server([  # type: ignore[operator]
        require_binary("gunicorn", BIN_DIR), "-c", "python:mestres_observability.gunicorn",
        "--workers", "1", "--worker-class", worker_class,
        *(["--threads", "2"] if worker_class == "gthread" else []),
        "--bind", "127.0.0.1:{port}", "--graceful-timeout", "5", "--chdir", str(APPS),
        "health_faults_app:app"])
    status, _headers, body = _get(port, "/pid")
    assert status == 200
    pid = json.loads(body)["pid"]
    for _ in range(3):
        for path in ("/health/readiness", "/health/detailed"):
            status, headers, body = _get(port, path)
            assert status == 503, body[:300]
            assert headers["content-type"] == "application/json", body[:300]
            checks = json.loads(body)["checks"]
            for kind in KINDS:
                assert checks[kind]["error"] == kind, checks
                assert checks[f"async_{kind}"]["error"] == kind, checks
            assert checks["good"]["status"] == "healthy"
        status, _headers, body = _get(port, "/health/liveness")
        assert status == 200
    status, _headers, body = _get(port, "/pid")
    assert json.loads(body)["pid"] == pid  # the worker was never killed by a check
    log = server.log.read_text()  # type: ignore[attr-defined]
    assert log.count("Booting worker") == 1, log
