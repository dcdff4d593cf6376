"""Real servers with several workers: every scrape shows the total of all workers.

Flask and Django run under gunicorn (3 workers, with the shipped config module
``python:mestres_observability.gunicorn``), FastAPI under uvicorn (2 workers).
gunicorn workers are recycled (``--max-requests``) during the run, so the
dead-worker merge of the ``child_exit`` hook is exercised too: N requests must give exactly N in
``http_requests_total`` on every scrape, wherever it lands.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mestres_observability.multiprocess import prepare_directory
from tests._support import free_port, require_binary, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX servers")]

ROOT = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "apps"
BIN_DIR = str(Path(sys.executable).parent)
REQUESTS = 120


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _requests_total(port: int, path: str = "/metrics") -> float:
    status, _headers, body = _get(port, path)
    assert status == 200
    total = 0.0
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "http_requests":
            total += sum(s.value for s in family.samples
                         if s.name == "http_requests_total"
                         and s.labels.get("endpoint", "").startswith("/orders"))
    return total


def _process_pids(port: int) -> set[str]:
    _status, _headers, body = _get(port, "/metrics")
    return {
        s.labels["pid"]
        for family in text_string_to_metric_families(body.decode())
        if family.name == "process_resident_memory_bytes"
        for s in family.samples if "pid" in s.labels
    }


@pytest.fixture
def server(tmp_path: Path) -> Iterator[object]:
    started: list[subprocess.Popen[bytes]] = []
    mpdir = tmp_path / "prometheus"

    def start(argv: list[str], extra_env: dict[str, str | None] | None = None) -> int:
        port = free_port()
        prepare_directory(mpdir)
        env = dict(os.environ)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(mpdir)
        env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT)])
        for name in list(env):
            if name.startswith("MESTRES_OBS_"):
                del env[name]
        env.pop("DJANGO_SETTINGS_MODULE", None)  # other tests set it in this process
        for name, value in (extra_env or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        with (tmp_path / "server.log").open("ab") as log:
            proc = subprocess.Popen([a.replace("{port}", str(port)) for a in argv], cwd=APPS,
                                    env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        started.append(proc)

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            return _get(port, "/metrics")[0] in (200, 404)  # 404: metrics on their own port

        wait_until(up, timeout=30, message="the server to answer /metrics")
        return port

    start.mpdir = mpdir  # type: ignore[attr-defined]
    start.log = tmp_path / "server.log"  # type: ignore[attr-defined]
    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def _drive_and_check(port: int, mpdir: Path, workers: int, *, recycled: bool = True) -> None:
    pids: set[str] = set()
    for i in range(REQUESTS):
        status, headers, _body = _get(port, f"/orders/{i}")
        assert status == 200
        pids.add(headers.get("x-worker-pid", ""))
    assert len(pids) >= 2, f"requests were not spread over workers: {pids}"
    if recycled:
        assert len(pids) > workers, "workers were not recycled (max requests)"
    # every scrape, whichever worker answers it, shows the total of all workers
    totals = [_requests_total(port) for _ in range(4 * workers)]
    assert totals == [float(REQUESTS)] * len(totals)
    # recycled workers were merged: the directory does not grow with them
    def dead_files() -> list[str]:
        names = [p.name for p in mpdir.glob("*.db")]
        tails = {n: n[:-3].rsplit("_", 1)[-1] for n in names}
        return [n for n, t in tails.items() if t.isdigit() and not psutil.pid_exists(int(t))]

    wait_until(lambda: not dead_files(), timeout=15, message="dead workers' files to be merged")
    assert (mpdir / "counter_archive.db").exists() or not recycled
    assert _requests_total(port) == REQUESTS
    # process metrics of sibling workers, labelled by pid
    wait_until(lambda: len(_process_pids(port)) >= 2, timeout=10,
               message="process metrics of several workers")


def _gunicorn(app: str, workers: int = 3) -> list[str]:
    return [require_binary("gunicorn", BIN_DIR), "-c", "python:mestres_observability.gunicorn",
            "--workers", str(workers), "--bind", "127.0.0.1:{port}", "--max-requests", "25",
            "--graceful-timeout", "5", "--chdir", str(APPS), app]


def test_flask_under_gunicorn_three_workers(server: object) -> None:
    port = server(_gunicorn("flask_app:app"))  # type: ignore[operator]
    _drive_and_check(port, server.mpdir, 3)  # type: ignore[attr-defined]


def test_django_under_gunicorn_three_workers(server: object) -> None:
    port = server(_gunicorn("django_project:application"))  # type: ignore[operator]
    _drive_and_check(port, server.mpdir, 3)  # type: ignore[attr-defined]


def test_flask_under_gunicorn_preload(server: object) -> None:
    port = server([*_gunicorn("flask_app:app"), "--preload"])  # type: ignore[operator]
    _drive_and_check(port, server.mpdir, 3)  # type: ignore[attr-defined]


def test_fastapi_under_uvicorn_two_workers(server: object) -> None:
    port = server([require_binary("uvicorn", BIN_DIR), "fastapi_app:app", "--workers", "2",  # type: ignore[operator]
                   "--host", "127.0.0.1", "--port", "{port}", "--app-dir", str(APPS),
                   "--no-access-log"])
    # uvicorn's own recycling (--limit-max-requests) restarts workers too slowly to test here;
    # scrape-time dead-worker detection is covered by tests/test_multiprocess.py
    _drive_and_check(port, server.mpdir, 2, recycled=False)  # type: ignore[attr-defined]


def test_separate_metrics_port_belongs_to_the_gunicorn_master(server: object) -> None:
    metrics_port = free_port()
    port = server(_gunicorn("flask_app:app"),  # type: ignore[operator]
                  {"MESTRES_OBS_METRICS_PORT": str(metrics_port)})
    for i in range(60):
        assert _get(port, f"/orders/{i}")[0] == 200
    # one listener (in the master) for every worker's totals; no worker failed to bind it
    assert [_requests_total(metrics_port) for _ in range(5)] == [60.0] * 5
    log = server.log.read_text()  # type: ignore[attr-defined]
    assert "/metrics for all workers on" in log
    assert "Traceback" not in log


def test_gunicorn_config_module_makes_its_own_private_directory(server: object) -> None:
    port = server(_gunicorn("flask_app:app"),  # type: ignore[operator]
                  {"PROMETHEUS_MULTIPROC_DIR": None})
    pids = set()
    for i in range(60):
        status, headers, _body = _get(port, f"/orders/{i}")
        assert status == 200
        pids.add(headers.get("x-worker-pid"))
    assert len(pids) >= 2
    assert [_requests_total(port) for _ in range(6)] == [60.0] * 6
