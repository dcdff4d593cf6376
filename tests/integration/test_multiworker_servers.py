"""Real servers with several workers: every scrape shows the total of all workers.

Flask and Django run under gunicorn (3 workers, with the shipped config module
``python:mestres_observability.gunicorn``), FastAPI under uvicorn (2 workers).
gunicorn workers are recycled (``--max-requests``) during the run, so the
dead-worker merge of the ``child_exit`` hook is exercised too: N requests must give exactly N in
``http_requests_total`` on every scrape, wherever it lands.

Also: ``gunicorn --preload`` with tracing exported over OTLP to a real receiver
and health checks started in the master before the fork (RELIABILITY #33), and
the separate metrics port under gunicorn (the master serves it) and under
uvicorn (one worker serves it; a sibling takes it over when that worker dies).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mestres_observability.multiprocess import prepare_directory
from tests._support import free_port, mounted_tmpfs, require_binary, wait_until
from tests.otlp_receiver import OTLPReceiver, ReceivedSpan

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


def _settled_totals(port: int, expected: float, scrapes: int) -> list[float]:
    """``scrapes`` totals, taken once the last request's increment has landed.

    A server counts a request when it finishes it, which can be just after the
    client has read the whole response: the first scrape may still miss the
    last few. Wait (bounded) until the total reaches ``expected``; every scrape
    after that must show it exactly (never more, never less).
    """
    wait_until(lambda: _requests_total(port) >= expected, timeout=10,
               message=f"the total to reach {expected}")
    return [_requests_total(port) for _ in range(scrapes)]


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

    def start(argv: list[str], extra_env: dict[str, str | None] | None = None, *,
              streams: bool = False) -> int:
        """Start the server; ``streams``: stdout and stderr in two files instead of one."""
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
        with (tmp_path / "server.log").open("ab") as log, \
                (tmp_path / "server.err").open("ab") as err:
            proc = subprocess.Popen([a.replace("{port}", str(port)) for a in argv], cwd=APPS,
                                    env=env, stdout=log, stderr=err if streams else subprocess.STDOUT,
                                    start_new_session=True)
        started.append(proc)

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            return _get(port, "/metrics")[0] in (200, 404)  # 404: metrics on their own port

        wait_until(up, timeout=30, message="the server to answer /metrics")
        return port

    start.mpdir = mpdir  # type: ignore[attr-defined]
    start.started_pid = lambda: started[-1].pid  # type: ignore[attr-defined]
    start.log = tmp_path / "server.log"  # type: ignore[attr-defined]
    start.err = tmp_path / "server.err"  # type: ignore[attr-defined]
    start.processes = started  # type: ignore[attr-defined]
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
    sent = 0
    # an idle async worker can win every accept of sequential connections (uvicorn): go on,
    # within a bound, until at least two workers have answered
    while sent < REQUESTS or (len(pids) < 2 and sent < 10 * REQUESTS):
        status, headers, _body = _get(port, f"/orders/{sent}")
        assert status == 200
        pids.add(headers.get("x-worker-pid", ""))
        sent += 1
    assert len(pids) >= 2, f"requests were not spread over workers: {pids}"
    if recycled:
        assert len(pids) > workers, "workers were not recycled (max requests)"
    # every scrape, whichever worker answers it, shows the total of all workers
    totals = _settled_totals(port, sent, 4 * workers)
    assert totals == [float(sent)] * len(totals)
    # recycled workers were merged: the directory does not grow with them
    def dead_files() -> list[str]:
        names = [p.name for p in mpdir.glob("*.db")]
        tails = {n: n[:-3].rsplit("_", 1)[-1] for n in names}
        return [n for n, t in tails.items() if t.isdigit() and not psutil.pid_exists(int(t))]

    wait_until(lambda: not dead_files(), timeout=15, message="dead workers' files to be merged")
    assert (mpdir / "counter_archive.db").exists() or not recycled
    assert _requests_total(port) == sent
    # process metrics of sibling workers, labelled by pid
    wait_until(lambda: len(_process_pids(port)) >= 2, timeout=10,
               message="process metrics of several workers")


def _gunicorn(app: str, workers: int = 3) -> list[str]:
    return [require_binary("gunicorn", BIN_DIR), "-c", "python:mestres_observability.gunicorn",
            "--workers", str(workers), "--bind", "127.0.0.1:{port}", "--max-requests", "25",
            "--graceful-timeout", "5", "--chdir", str(APPS), app]


def _uvicorn(*options: str) -> list[str]:
    """``uvicorn --workers 2`` serving the FastAPI app on the server fixture's port."""
    return [require_binary("uvicorn", BIN_DIR), "fastapi_app:app", "--workers", "2",
            "--host", "127.0.0.1", "--port", "{port}", "--app-dir", str(APPS), *options]


def test_flask_under_gunicorn_three_workers(server: object) -> None:
    port = server(_gunicorn("flask_app:app"))  # type: ignore[operator]
    _drive_and_check(port, server.mpdir, 3)  # type: ignore[attr-defined]


def test_django_under_gunicorn_three_workers(server: object) -> None:
    port = server(_gunicorn("django_project:application"))  # type: ignore[operator]
    _drive_and_check(port, server.mpdir, 3)  # type: ignore[attr-defined]


def _service_info(port: int) -> list[dict[str, str]]:
    _status, _headers, body = _get(port, "/metrics")
    return [dict(s.labels) for family in text_string_to_metric_families(body.decode())
            if family.name == "service_info" for s in family.samples]


def test_django_under_gunicorn_exposes_one_service_info_series(server: object) -> None:
    """issue 11 (2): the Django app's ``ready()`` looks at the current instance before it
    initialises the real one; that default instance must leave no
    ``service_info{service="unknown_service"}`` in the shared files."""
    port = server(_gunicorn("django_project:application", workers=2))  # type: ignore[operator]
    for i in range(20):
        assert _get(port, f"/orders/{i}")[0] == 200
    for _ in range(6):  # whichever worker answers the scrape
        assert [s["service"] for s in _service_info(port)] == ["django-multiworker"]


def test_plain_gunicorn_without_the_config_module_says_the_scrape_is_one_workers(
        server: object) -> None:
    """The README's install line then ``gunicorn -w 2 app:app``: no multiprocess mode, so a
    scrape reads one worker; each worker says so once at start-up, and with the config
    module nothing is said."""
    bare = [require_binary("gunicorn", BIN_DIR), "--workers", "2", "--bind", "127.0.0.1:{port}",
            "--chdir", str(APPS), "flask_app:app"]
    server(bare, {"PROMETHEUS_MULTIPROC_DIR": None})  # type: ignore[operator]
    warning = "running under gunicorn without multiprocess mode"
    wait_until(lambda: server.log.read_text().count(warning) == 2,  # type: ignore[attr-defined]
               timeout=15, message="one warning per worker")
    _stop(server)
    server(_gunicorn("flask_app:app", workers=2))  # type: ignore[operator]
    time.sleep(1.0)  # both workers have booted and set up
    assert server.log.read_text().count(warning) == 2  # type: ignore[attr-defined]


def test_plain_uvicorn_workers_without_multiprocess_mode_say_the_scrape_is_one_workers(
        server: object) -> None:
    """``uvicorn --workers 2`` without ``PROMETHEUS_MULTIPROC_DIR``: each worker says once at
    start-up that a scrape reads one worker; with the directory set nothing is said."""
    argv = _uvicorn("--no-access-log")
    port = server(argv, {"PROMETHEUS_MULTIPROC_DIR": None})  # type: ignore[operator]
    warning = "running under uvicorn --workers 2 without multiprocess mode"
    wait_until(lambda: server.log.read_text().count(warning) == 2,  # type: ignore[attr-defined]
               timeout=30, message="one warning per worker")
    assert _get(port, "/orders/1")[0] == 200  # the workers serve as before
    _stop(server)
    assert server.log.read_text().count(warning) == 2  # type: ignore[attr-defined]
    port = server(argv)  # type: ignore[operator]
    wait_until(lambda: len(_process_pids(port)) >= 2, timeout=30,
               message="both uvicorn workers to register")  # both have set up
    assert server.log.read_text().count(warning) == 2  # type: ignore[attr-defined]


def _stop(server: object) -> None:
    """SIGTERM the last server started and wait for it (its shutdown lines are logged)."""
    proc = server.processes[-1]  # type: ignore[attr-defined]
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=20)


def _json_lines(path: Path) -> list[dict[str, object]]:
    """Every line of ``path`` as a JSON object: fails on the first line that is not one."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{path.name} line {number} is not JSON: {line!r}\n{path.read_text()}")
        assert isinstance(record, dict), line
        out.append(record)
    return out


def _server_lines(server: object) -> list[dict[str, object]]:
    lines = _json_lines(server.log) + _json_lines(server.err)  # type: ignore[attr-defined]
    assert all(r.get("timestamp") and r.get("level") and r.get("logger") for r in lines), lines
    return lines


@pytest.mark.parametrize("app_logging", ["0", "1"], ids=["server-only", "app-configures"])
def test_gunicorn_lines_are_json_on_both_streams(server: object, app_logging: str) -> None:
    """issue 11 (5): with the shipped config module, gunicorn's own lines (start, worker
    boot and exit on recycling, the 500 traceback, shutdown) are the library's JSON."""
    port = server(_gunicorn("flask_app:app", workers=2),  # type: ignore[operator]
                  {"APP_CONFIGURE_LOGGING": app_logging, "MESTRES_OBS_SERVICE_NAME": "shop"},
                  streams=True)
    for i in range(80):  # --max-requests 25: workers are recycled
        assert _get(port, f"/orders/{i}")[0] == 200
    assert _get(port, "/boom")[0] == 500
    _stop(server)
    lines = _server_lines(server)
    events = [str(r["event"]) for r in lines]
    assert any(e.startswith("Starting gunicorn") for e in events), events
    assert sum(e.startswith("Booting worker with pid") for e in events) > 2, events
    assert any(e.startswith("Worker exiting") for e in events), events
    assert any(e.startswith("Shutting down") for e in events), events
    (failure,) = [r for r in lines if "exception" in r]
    exception = failure["exception"]
    assert isinstance(exception, dict)
    assert exception["type"] == "RuntimeError"
    assert "raise RuntimeError" in str(exception["stacktrace"])
    # before init: the service from the environment; after init: the app's own
    (start,) = [r for r in lines if str(r["event"]).startswith("Starting gunicorn")]
    assert start["service"] == "shop"
    exits = {r["service"] for r in lines if str(r["event"]).startswith("Worker exiting")}
    assert exits == ({"flask-multiworker"} if app_logging == "1" else {"shop"})


def test_uvicorn_lines_are_json_on_both_streams(server: object) -> None:
    """issue 11 (5): uvicorn with the library's ``--log-config``, two workers, access log on:
    its start and shutdown lines and the FastAPI 500 traceback are JSON; access lines dropped."""
    from mestres_observability.uvicorn import LOG_CONFIG_FILE

    port = server(_uvicorn("--log-config", LOG_CONFIG_FILE),  # type: ignore[operator]
                  {"APP_CONFIGURE_LOGGING": "1"}, streams=True)
    for i in range(10):
        assert _get(port, f"/orders/{i}")[0] == 200
    assert _get(port, "/boom")[0] == 500
    _stop(server)
    lines = _server_lines(server)
    events = [str(r["event"]) for r in lines]
    assert any(e.startswith("Uvicorn running on") for e in events), events
    assert any(e.startswith("Started server process") for e in events), events
    assert any(e.startswith("Finished server process") for e in events), events
    (failure,) = [r for r in lines if "exception" in r]
    assert str(failure["event"]).strip() == "Exception in ASGI application"
    exception = failure["exception"]
    assert isinstance(exception, dict)
    assert exception["type"] == "RuntimeError"
    assert not any("GET /orders" in e for e in events)  # uvicorn's access lines: dropped


def test_flask_under_gunicorn_preload(server: object) -> None:
    port = server([*_gunicorn("flask_app:app"), "--preload"])  # type: ignore[operator]
    _drive_and_check(port, server.mpdir, 3)  # type: ignore[attr-defined]


def test_fastapi_under_uvicorn_two_workers(server: object) -> None:
    port = server(_uvicorn("--no-access-log"))  # type: ignore[operator]
    # uvicorn spawns its workers: the second may still be importing the app when the first answers
    wait_until(lambda: len(_process_pids(port)) >= 2, timeout=30,
               message="both uvicorn workers to register")
    # uvicorn's own recycling (--limit-max-requests) restarts workers too slowly to test here;
    # scrape-time dead-worker detection is covered by tests/test_multiprocess.py
    _drive_and_check(port, server.mpdir, 2, recycled=False)  # type: ignore[attr-defined]


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_separate_metrics_port_belongs_to_the_gunicorn_master(server: object,
                                                              preload: bool) -> None:
    """The master serves the port; workers recycled while it scrapes (forks mid-scrape) run on."""
    metrics_port = free_port()
    port = server([*_gunicorn("flask_app:app"), *(["--preload"] if preload else [])],  # type: ignore[operator]
                  {"MESTRES_OBS_METRICS_PORT": str(metrics_port)})
    stop = threading.Event()
    scrapes: list[int] = []

    def scrape_continuously() -> None:  # the master's listener thread is busy at the forks
        while not stop.is_set():
            scrapes.append(_get(metrics_port, "/metrics")[0])

    scraper = threading.Thread(target=scrape_continuously, daemon=True)
    scraper.start()
    try:
        pids = set()
        for i in range(120):  # --max-requests 25: several workers forked during scrapes
            status, headers, _body = _get(port, f"/orders/{i}")
            assert status == 200
            pids.add(headers["x-worker-pid"])
    finally:
        stop.set()
        scraper.join(15)
    assert len(pids) > 3, "workers were not recycled"
    assert scrapes
    assert set(scrapes) == {200}
    # one listener (in the master) for every worker's totals; no worker failed to bind it
    assert _settled_totals(metrics_port, 120, 5) == [120.0] * 5
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
    assert _settled_totals(port, 60, 6) == [60.0] * 6


def test_gunicorn_workers_survive_a_full_multiprocess_directory(server: object,
                                                               tmp_path: Path) -> None:
    """Issue 10 #1 under gunicorn: workers filling a 1 MiB directory are not killed (SIGBUS),
    every request and scrape still answers, and the drops are counted."""
    with mounted_tmpfs(tmp_path / "prometheus", "1m"):
        port = server(_gunicorn("flask_app:app", workers=2))  # type: ignore[operator]
        def multiprocess_errors() -> float:
            _status, _headers, body = _get(port, "/metrics")
            for family in text_string_to_metric_families(body.decode()):
                for s in family.samples:
                    if (s.name == "mestres_observability_errors_total"
                            and s.labels == {"component": "multiprocess"}):
                        return float(s.value)
            return 0.0

        first = multiprocess_errors()
        pids: set[str] = set()
        for _ in range(12):  # 12 x 3000 label sets over two workers: far more than 1 MiB holds
            status, headers, _body = _get(port, "/jobs/3000")
            assert status == 200
            pids.add(headers["x-worker-pid"])
        for i in range(20):
            status, headers, _body = _get(port, f"/orders/{i}")
            assert status == 200
            pids.add(headers["x-worker-pid"])
        assert len(pids) == 2, f"a worker was replaced (killed?): {pids}"
        status, _headers, body = _get(port, "/metrics")
        assert status == 200
        assert body.count(b'jobs_total{id="') > 1000  # the earlier series
        assert multiprocess_errors() - first > 10_000
        log = server.log.read_text()  # type: ignore[attr-defined]
        assert "SIGBUS" not in log
        assert "Traceback" not in log
        assert "is full: new label sets are not recorded" in log


class SharedInstanceIdError(AssertionError):
    """Several workers exported spans under one ``service.instance.id``."""


class PhantomSpanDropError(AssertionError):
    """Workers counted spans as dropped although every span arrived exactly once."""


def _sample(port: int, name: str) -> float:
    """The sum of the samples called ``name`` (every label set) on ``/metrics``."""
    _status, _headers, body = _get(port, "/metrics")
    values = [float(s.value) for family in text_string_to_metric_families(body.decode())
              for s in family.samples if s.name == name]
    if not values:
        raise KeyError(name)
    return sum(values)


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_tracing_and_health_work_in_every_gunicorn_worker(server: object, preload: bool) -> None:
    """RELIABILITY #33: ``gunicorn --preload -w 3``, everything initialised in the master.

    The master (see ``apps/flask_preload_app.py``) exports a span and runs
    ``/health/detailed`` before the fork, leaving one check's run hung there.
    Every worker must export its own spans (none lost, none twice) under its
    own ``service.instance.id``, answer ``/health/detailed`` by running its
    checks itself within their timeouts, and every scrape must show the exact
    total. The same without ``--preload``.
    """
    requests = 90
    with OTLPReceiver() as rx:
        port = server(  # type: ignore[operator]
            [require_binary("gunicorn", BIN_DIR), "-c", "python:mestres_observability.gunicorn",
             "--workers", "3", *(["--preload"] if preload else []), "--bind", "127.0.0.1:{port}",
             "--graceful-timeout", "5", "--chdir", str(APPS), "flask_preload_app:app"],
            # the master's import-time span is still queued when the workers are forked
            {"OTLP_TEST_ENDPOINT": rx.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "3000",
             "APP_PRELOADED": "1" if preload else "0"},
        )
        with ThreadPoolExecutor(6) as pool:  # concurrent requests reach every sync worker
            answers = list(pool.map(lambda i: _get(port, f"/orders/{i}"), range(requests)))
        assert [status for status, _h, _b in answers] == [200] * requests
        served = Counter(headers["x-worker-pid"] for _s, headers, _b in answers)
        assert len(served) == 3, f"requests were not spread over the 3 workers: {served}"
        # the library's SERVER spans are lean spans in every worker (the default path)
        assert {headers["x-span-type"] for _s, headers, _b in answers} == {"LeanSpan"}

        # /health/detailed in each worker: its own runs, within the check timeouts
        probed: dict[str, list[float]] = {}

        def probe(_: int) -> tuple[int, dict[str, object], float]:
            t = time.monotonic()
            status, _headers, body = _get(port, "/health/detailed")
            return status, json.loads(body), time.monotonic() - t

        deadline = time.monotonic() + 30
        while set(probed) != set(served) and time.monotonic() < deadline:
            with ThreadPoolExecutor(6) as pool:
                for status, body, elapsed in pool.map(probe, range(12)):
                    assert status == 200, body
                    checks = body["checks"]
                    assert isinstance(checks, dict)
                    for name in ("held_in_master", "async_dependency"):
                        entry = checks[name]
                        assert entry["status"] == "healthy", body
                        assert "error" not in entry, body
                        assert entry["response_time_ms"] < 500  # below its 0.5 s timeout
                    assert checks["held_in_master"]["pid"] == checks["async_dependency"]["pid"]
                    probed.setdefault(str(checks["held_in_master"]["pid"]), []).append(elapsed)
        assert set(probed) == set(served), f"probes answered by {set(probed)}, not {set(served)}"
        assert max(max(v) for v in probed.values()) < 2.0  # health_deadline 0.8 s + HTTP

        # every scrape, whichever worker answers it, shows the exact total
        assert _settled_totals(port, requests, 9) == [float(requests)] * 9

        # spans: every worker's, each exactly once; the master's preload span exactly once
        def worker_spans() -> list[ReceivedSpan]:
            return [s for s in rx.received() if str(s.attributes.get("app.worker_pid")) in served
                    and s.name != "master.preload"]

        def import_spans() -> int:
            return [s.name for s in rx.received()].count("master.preload")

        rx.wait_for(lambda: len(worker_spans()) >= requests, timeout=20)
        wait_until(lambda: import_spans() >= (1 if preload else 3), timeout=10,
                   message="the import-time spans")
        spans = worker_spans()
        assert len(spans) == requests
        assert len({s.span_id for s in spans}) == requests  # none exported twice
        assert Counter(str(s.attributes["app.worker_pid"]) for s in spans) == served
        assert import_spans() == (1 if preload else 3)  # the master's span: not again per worker
        assert not rx.bad_requests
        dropped = _sample(port, "mestres_observability_spans_dropped_total")
        instance_ids = {str(s.attributes["app.worker_pid"]): s.resource.get("service.instance.id")
                        for s in spans}
    log = server.log.read_text()  # type: ignore[attr-defined]
    assert "Traceback" not in log, log
    # every span arrived exactly once (checked above), so none may be counted as dropped
    if dropped != 0:
        raise PhantomSpanDropError(f"spans_dropped_total is {dropped}, nothing was dropped")
    # one service.instance.id per worker process
    if len(set(instance_ids.values())) != len(served):
        raise SharedInstanceIdError(f"workers share service.instance.id: {instance_ids}")


def _listener_pid(root_pid: int, port: int) -> int | None:
    """The pid, among ``root_pid``'s descendants, listening on ``port``."""
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            # psutil < 6 names it connections()
            conns = getattr(proc, "net_connections", getattr(proc, "connections", None))(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr[1] == port for c in conns):
            return int(proc.pid)
    return None


def test_separate_metrics_port_under_uvicorn_workers_survives_the_serving_worker(
    server: object,
) -> None:
    """uvicorn has no master hook: one worker serves ``metrics_port``, a sibling takes it over."""
    metrics_port = free_port()
    port = server(  # type: ignore[operator]
        _uvicorn("--no-access-log"),
        {"MESTRES_OBS_METRICS_PORT": str(metrics_port)},
    )
    pids = set()
    for i in range(60):
        status, headers, _body = _get(port, f"/orders/{i}")
        assert status == 200
        pids.add(headers["x-worker-pid"])
    assert _get(port, "/metrics")[0] == 404  # not on the app
    assert _settled_totals(metrics_port, 60, 5) == [60.0] * 5
    root = server.started_pid()  # type: ignore[attr-defined]
    serving = _listener_pid(root, metrics_port)
    assert serving is not None, "no worker listens on the metrics port"
    os.kill(serving, signal.SIGKILL)  # the serving worker dies (or is recycled)

    def served_again() -> bool:
        owner = _listener_pid(root, metrics_port)
        return owner is not None and owner != serving and _get(metrics_port, "/metrics")[0] == 200

    wait_until(served_again, timeout=30, message="a sibling to take the metrics port over")
    for i in range(60, 90):
        assert _get(port, f"/orders/{i}")[0] == 200
    # the dead worker's counts are kept (merged at scrape time), the new ones added
    assert _settled_totals(metrics_port, 90, 5) == [90.0] * 5
    log = server.log.read_text()  # type: ignore[attr-defined]
    assert "Traceback" not in log, log
    assert "cannot listen" not in log, log
    assert "held by another program" not in log, log


def _gc_collections(port: int) -> tuple[dict[str, float], set[str]]:
    """``python_gc_collections_total{generation="2"}`` by pid, and the families' types."""
    _status, _headers, body = _get(port, "/metrics")
    by_pid: dict[str, float] = {}
    types: set[str] = set()
    for family in text_string_to_metric_families(body.decode()):
        if family.name.startswith("python_gc_"):
            types.add(family.type)
        if family.name == "python_gc_collections":
            for s in family.samples:
                if s.name == "python_gc_collections_total" and s.labels["generation"] == "2":
                    by_pid[s.labels["pid"]] = s.value
    return by_pid, types


def _live(pids: set[str]) -> set[str]:
    return {p for p in pids if psutil.pid_exists(int(p))}


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_every_gunicorn_worker_reports_its_own_gc_counts(server: object, preload: bool) -> None:
    """issue 16, runtime metrics: prometheus_client's GC collector would show the one worker
    a scrape reaches; here every scrape shows ``python_gc_*{pid}`` of every live worker,
    with that worker's own counts (a full collection in a worker shows up under its pid),
    and a recycled worker's series go with it. Under ``--preload`` the writer starts in the
    master and again in each forked worker."""
    argv = _gunicorn("flask_app:app")
    argv[argv.index("--max-requests") + 1] = "100000"  # only the test recycles workers
    port = server([*argv, *(["--preload"] if preload else [])],  # type: ignore[operator]
                  {"MESTRES_OBS_RUNTIME_METRICS_INTERVAL": "0.2"})
    # a full collection in each worker: its generation-2 count, as the worker itself reads it
    counted: dict[str, float] = {}
    sent = 0
    # sync workers race for each connection: one may take a run of them (a loaded machine),
    # so ask until two workers have answered (30 requests at least, 300 at most)
    while sent < 30 or (len(counted) < 2 and sent < 300):
        sent += 1
        status, _headers, body = _get(port, "/gc")
        assert status == 200
        answer = json.loads(body)
        counted[str(answer["pid"])] = max(counted.get(str(answer["pid"]), 0.0),
                                         float(answer["collections"]))
    assert len(counted) >= 2, f"the /gc requests reached one worker only: {counted}"

    def every_worker_counted() -> bool:
        by_pid, types = _gc_collections(port)
        assert types == {"counter"}, types
        return all(by_pid.get(pid, -1.0) >= n for pid, n in counted.items())

    # whichever worker serves the scrape, every worker's count is there, within the interval
    for _ in range(6):
        wait_until(every_worker_counted, timeout=10,
                   message=f"every worker's GC count: {counted} in {_gc_collections(port)}")
    by_pid, _types = _gc_collections(port)
    assert set(counted) <= set(by_pid)
    assert _live(set(by_pid)) == set(by_pid)
    # recycle the workers that answered: each is told to stop as --max-requests would (a
    # graceful SIGTERM; counting requests cannot tell which sync worker takes them), gunicorn
    # forks a new one; the dead ones' series go, the new ones' come, one series per live process
    for pid in counted:
        os.kill(int(pid), signal.SIGTERM)
    served: set[str] = set()

    def a_new_worker_served() -> bool:
        served.update(_get(port, f"/orders/{i}")[1]["x-worker-pid"] for i in range(5))
        return bool(served - set(counted))

    wait_until(a_new_worker_served, timeout=30, message="a worker forked after the recycling")

    def only_live_workers() -> bool:
        pids = set(_gc_collections(port)[0])
        return pids == _live(pids) and not (set(counted) - _live(set(counted))) & pids \
            and bool(pids & _live(served - set(counted)))

    wait_until(only_live_workers, timeout=15, message="the recycled workers' GC series to go")
    assert not [line for line in server.log.read_text().splitlines()  # type: ignore[attr-defined]
                if "Traceback" in line]
