"""Helpers for the snippet's tests in a real browser (Debian's headless Chromium via Playwright).

:class:`Shop` serves the example shop (``examples/coffee_shop.py``) on a loopback
port with RUM on and keeps every RUM body the browser sent; the ``browser`` and
``shop`` fixtures (``tests/rum/conftest.py``) start Chromium and the shop.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from mestres_observability.testing import fresh_observability

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
RUM_PATH = "/api/v1/metrics"
READY = "window.mestresRUM && window.mestresRUM.v === 1"


def load_shop() -> Any:
    spec = importlib.util.spec_from_file_location("coffee_shop", ROOT / "examples" / "coffee_shop.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["coffee_shop"] = module
    spec.loader.exec_module(module)
    return module


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


class Shop:
    """The example shop on a loopback port; keeps every RUM body the browser sent."""

    def __init__(self, obs: Any) -> None:
        from mestres_observability.flask import instrument

        self.obs = obs
        app = load_shop().create_app()
        instrument(app, obs)
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        inner = app.wsgi_app

        def recorder(environ: dict[str, Any], start_response: Any) -> Any:
            if environ.get("PATH_INFO") == RUM_PATH and environ["REQUEST_METHOD"] == "POST":
                body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                with self._lock:
                    self.bodies.append(body)
                environ["wsgi.input"] = io.BytesIO(body)
            return inner(environ, start_response)

        self.server = make_server("127.0.0.1", 0, recorder, server_class=_Server,
                                  handler_class=_Quiet)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            bodies = list(self.bodies)
        return [e for b in bodies for e in json.loads(b)["events"]]

    def scrape(self) -> str:
        req = urllib.request.Request(self.base + "/metrics", headers={"Accept": OPENMETRICS})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.read().decode()

    def sample(self, name: str, **labels: str) -> float:
        from prometheus_client.openmetrics.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.scrape()):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        return 0.0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def running_shop(**settings: Any) -> Iterator[Shop]:
    """The shop with RUM on and ``settings`` (e.g. ``rum_sample_rate``) on a fresh instance."""
    with fresh_observability(rum_enabled=True, service_name="mestres-cafe-api", **settings) as obs:
        server = Shop(obs)
        try:
            yield server
        finally:
            server.close()


def wait_for(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def vitals_of(events: list[dict[str, Any]], path: str) -> set[str]:
    return {e["data"]["metric"] for e in events
            if e["type"] == "web_vitals" and e["data"].get("url") == path}
