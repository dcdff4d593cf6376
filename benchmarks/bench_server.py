"""CPU per request in real servers: each variant of ``bench_http.py`` in a server of its own.

Run: ``python benchmarks/bench_server.py [flask] [fastapi] [django] [--markdown]``
(Linux: it reads ``/proc``; gunicorn and uvicorn from ``benchmarks/requirements.txt``;
about 2 minutes). Where ``bench_http.py`` drives the apps in-process, this starts one
real server per variant on loopback, all at once: gunicorn with one sync worker for Flask
and Django, uvicorn with one process for FastAPI. Every variant that traces exports over
OTLP/HTTP to one loopback receiver (another process; the library through its own
pipeline, the peers and the floor through the SDK's ``BatchSpanProcessor``), and standard
output (the access-log and structlog lines) goes to ``/dev/null`` for all.

The benchmark's own process is the client: ``GET /orders/42`` with a W3C
``traceparent`` and a ``User-Agent``, a new connection per request (gunicorn's sync
worker closes each one), in rounds of ``BENCH_SERVER_REQUESTS`` requests (200) that
interleave the servers, ``BENCH_SERVER_ROUNDS`` times (12) after a warm-up round. A
round's figure is the CPU time the server's processes and threads spent in it
(``/proc/<pid>/task/<tid>/schedstat``, nanoseconds, all threads, so the export counts),
per request; a variant's overhead is the median over rounds of (variant - bare app, same
round). The client's own time is not in it. A thread that runs after its round ends (a
batch exported late) is counted in a later round of the same server, so the medians
over many rounds still hold all the work.

Variants: ``bare``, ``ours metrics``, ``ours full``, ``ours full, library logging``,
``peer metrics``, ``peer metrics+otel+log``, ``primitives by hand`` (see
``bench_http.py``). Figures are reported, not gated.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_http  # noqa: E402  (the variants, their tables, the OTLP receiver)

ROUNDS = int(os.environ.get("BENCH_SERVER_ROUNDS", "12"))
PER_ROUND = int(os.environ.get("BENCH_SERVER_REQUESTS", "200"))
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
VARIANTS = ("bare", "ours metrics", "ours full", "ours full, library logging",
            "peer metrics", "peer metrics+otel+log", "primitives by hand")
FRAMEWORKS = (("Flask", "flask", "gunicorn"), ("FastAPI", "fastapi", "uvicorn"),
              ("Django (WSGI)", "django", "gunicorn"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (gunicorn's arbiter and its worker)."""
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                for child in fh.read().split():
                    out.extend(_tree(int(child)))
    except OSError:
        pass
    return out


def cpu_ns(pid: int) -> int:
    """CPU time of ``pid``'s processes and all their threads so far, in nanoseconds."""
    total = 0
    for p in _tree(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/schedstat") as fh:
                    total += int(fh.read().split()[0])
            except OSError:  # a thread that just ended
                continue
    return total


class Server:
    """One variant's server process on a loopback port of its own."""

    def __init__(self, framework: str, kind: str, variant: str, otlp: str) -> None:
        self.variant = variant
        self.port = _free_port()
        env = {**os.environ, "BENCH_SERVER_FRAMEWORK": framework,
               "BENCH_SERVER_VARIANT": variant, "BENCH_SERVER_OTLP": otlp,
               "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}
        if kind == "gunicorn":
            cmd = [sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", "sync",
                   "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning",
                   "--chdir", HERE, "_server_app:app"]
        else:
            cmd = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", "1", "--no-access-log",
                   "--log-level", "warning", "--app-dir", HERE, "_server_app:app"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"{self.variant}: the server exited: {err[-2000:]}")
            try:
                self.get()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.variant}: no answer on port {self.port}")

    def get(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/orders/42", headers={
                "traceparent": TRACEPARENT, "User-Agent": "bench-client/1.0",
                "Connection": "close"})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{self.variant}: HTTP {answer.status}")
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure(framework: str, kind: str, otlp: str) -> dict[str, tuple[float, float]]:
    """Per variant: median CPU per request (us) and the median overhead over the bare app."""
    servers = [Server(framework, kind, v, otlp) for v in VARIANTS]
    try:
        live = []
        for server in servers:
            try:
                server.wait_ready()
                live.append(server)
            except RuntimeError as exc:
                print(f"  {server.variant}: skipped ({exc})")
        times: dict[str, list[float]] = {s.variant: [] for s in live}
        for round_no in range(ROUNDS + 1):
            for server in live:
                n = PER_ROUND if round_no else 100  # round 0 warms up
                before = cpu_ns(server.proc.pid)
                for _ in range(n):
                    server.get()
                elapsed = cpu_ns(server.proc.pid) - before
                if round_no:
                    times[server.variant].append(elapsed / n / 1000)
        bare = times["bare"]
        return {label: (statistics.median(values),
                        statistics.median(v - b for v, b in zip(values, bare, strict=True)))
                for label, values in times.items()}
    finally:
        for server in servers:
            server.stop()


def report(name: str, figures: dict[str, tuple[float, float]]) -> None:
    print(f"\n{name}: server CPU us per request, all threads, OTLP/HTTP export included "
          "(median; overhead over bare, median of rounds)")
    for label, (value, overhead) in figures.items():
        print(f"  {label:<36} {value:8.1f}   (+{overhead:6.1f})")
    over = {k: v[1] for k, v in figures.items()}
    print(f"  ratio ours full, library logging / peers metrics+otel+log: "
          f"{bench_http._ratio(over, 'ours full, library logging', 'peer metrics+otel+log')}"
          f"   / primitives by hand: "
          f"{bench_http._ratio(over, 'ours full, library logging', 'primitives by hand')}"
          f"   ours metrics / peer metrics: {bench_http._ratio(over, 'ours metrics', 'peer metrics')}")


def markdown(results: dict[str, dict[str, tuple[float, float]]]) -> str:
    rows, _ = bench_http.table("server CPU per request", VARIANTS, results, (
        ("**ours full / peers combined**", "ours full", "peer metrics+otel+log"),
        ("**ours full, library logging / peers combined**", "ours full, library logging",
         "peer metrics+otel+log"),
        ("ours full / primitives by hand", "ours full", "primitives by hand"),
        ("ours full, library logging / primitives by hand", "ours full, library logging",
         "primitives by hand"),
        ("ours metrics / peer metrics", "ours metrics", "peer metrics"),
    ))
    return "\n".join(rows)


def _receiver() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", bench_http._RECEIVER],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, f"http://127.0.0.1:{proc.stdout.readline().strip()}"


def main() -> None:
    args = [a.lower() for a in sys.argv[1:]]
    only = {a for a in args if not a.startswith("--")}
    if not os.path.exists("/proc/self/task"):
        print("bench_server.py: skipped (it reads per-thread CPU time from Linux's /proc)")
        return
    missing = [m for m in ("gunicorn", "uvicorn") if shutil.which(m) is None
               and not os.path.exists(os.path.join(os.path.dirname(sys.executable), m))]
    if missing:
        print(f"bench_server.py: skipped ({', '.join(missing)} not installed: "
              "pip install -r benchmarks/requirements.txt)")
        return
    receiver, otlp = _receiver()
    t0 = time.perf_counter()
    results: dict[str, dict[str, tuple[float, float]]] = {}
    try:
        for name, framework, kind in FRAMEWORKS:
            if only and framework not in only:
                continue
            results[name] = measure(framework, kind, otlp)
            report(name, results[name])
        with urllib.request.urlopen(otlp) as answer:
            spans, bad = answer.read().decode().split()
    finally:
        receiver.kill()
        receiver.wait()
    print(f"\n({ROUNDS} rounds x {PER_ROUND} requests per server; "
          f"{time.perf_counter() - t0:.0f} s; the receiver decoded {spans} spans, "
          f"{bad} request(s) it could not decode)")
    if "--markdown" in args and results:
        print()
        print(markdown(results))


if __name__ == "__main__":
    main()
