"""Helpers of the monitoring tests: render into a folder, run Prometheus' tools and servers."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mestres_observability import catalogue
from mestres_observability.monitoring.render import render_all
from mestres_observability.monitoring.settings import RenderSettings
from tests._support import free_port, require_binary, wait_until

#: Stand-ins for the RUM issue's metrics: two web-vital histograms (INP's poor
#: threshold 0.5 s is an http_buckets bound, LCP's 4 s is not) and a JS error
#: counter, switched by a feature that exists today.
FAKE_RUM = (
    catalogue.MetricDef("rum_lcp_seconds", "histogram", "Largest contentful paint.",
                        ("page_group", "navigation_type", "rating"), ("page_group",),
                        buckets="http_buckets", group="http", unit="seconds",
                        feature="system_metrics"),
    catalogue.MetricDef("rum_inp_seconds", "histogram", "Interaction to next paint.",
                        ("page_group", "navigation_type", "rating"), ("page_group",),
                        buckets="http_buckets", group="http", unit="seconds",
                        feature="system_metrics"),
    catalogue.MetricDef("rum_js_errors_total", "counter", "JavaScript errors.",
                        ("page_group",), ("page_group",), group="http",
                        feature="system_metrics"),
)


def add_fake_rum(monkeypatch: Any) -> None:
    """Put :data:`FAKE_RUM` into the catalogue for one test."""
    monkeypatch.setattr(catalogue, "CATALOGUE", catalogue.CATALOGUE + FAKE_RUM)
    for entry in FAKE_RUM:
        monkeypatch.setitem(catalogue._BY_NAME, entry.name, entry)


def render(out: Path, **kwargs: Any) -> Path:
    """Render the stack for ``RenderSettings(**kwargs)`` into ``out``; return ``out``."""
    render_all(RenderSettings(**kwargs), out)
    return out


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output as text."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def http_json(url: str, body: Any = None, timeout: float = 5) -> Any:
    """GET (or POST ``body`` as JSON) and decode the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw.strip() else None


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def process(args: list[str], ready_url: str, log: Path, timeout: float = 30,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A server process, ready once ``ready_url`` answers 200; stopped on exit."""
    with log.open("wb") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        def up() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            return _ready(ready_url)

        wait_until(up, timeout=timeout, interval=0.1, message=f"{args[0]} to be ready")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def alertmanager(config: Path, port: int | None = None) -> Iterator[str]:
    """Debian's ``prometheus-alertmanager`` on ``port`` (default: a free loopback port);
    yields its base URL."""
    binary = require_binary("prometheus-alertmanager")
    port = port or free_port()
    storage = Path(tempfile.mkdtemp(prefix="mestres-obs-am-"))
    base = f"http://127.0.0.1:{port}"
    try:
        with process([binary, f"--config.file={config}", f"--storage.path={storage}",
                      f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                      "--log.level=warn"], f"{base}/-/ready", storage / "log.txt"):
            yield base
    finally:
        shutil.rmtree(storage, ignore_errors=True)


class Webhook:
    """A local HTTP server that records every POSTed JSON body (Slack stands in here)."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                owner.bodies.append(json.loads(self.rfile.read(length) or b"null"))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/slack"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
