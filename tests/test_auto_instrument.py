"""``auto_instrument``: any contrib instrumentation by name, with the real packages installed.

The defect: a name outside the built-in map took the first class of the module
whose name ends in ``Instrumentor``, which is OpenTelemetry's imported abstract
``BaseInstrumentor`` (``TypeError: Can't instantiate abstract class``). The
``opentelemetry_instrumentor`` entry point is used first now, then the
concrete class the module defines.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.trace import SpanKind

from mestres_observability.testing import captured_spans, fresh_observability, sample_value
from mestres_observability.tracing import _GLOBAL, _instrumentor_class
from tests._support import require_module


def _uninstrument(key: str, instrumentor: Any) -> None:
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    _GLOBAL.instrumented.discard(key)


@pytest.fixture
def loopback() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A loopback HTTP server answering 200, recording each request's headers."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_celery_instrumentation_by_name_is_instantiated_and_enabled() -> None:
    require_module("celery")
    mod = require_module("opentelemetry.instrumentation.celery")
    instrumentor = mod.CeleryInstrumentor()
    try:
        with fresh_observability(auto_instrument=("celery",)) as obs:
            assert sample_value("mestres_observability_errors_total", obs,
                                component="tracing") == 0
            assert instrumentor.is_instrumented_by_opentelemetry
            assert "celery" in _GLOBAL.instrumented
    finally:
        _uninstrument("celery", instrumentor)


def test_requests_instrumentation_traces_a_real_call_on_our_provider(
    loopback: tuple[str, list[dict[str, str]]],
) -> None:
    requests = require_module("requests")
    mod = require_module("opentelemetry.instrumentation.requests")
    instrumentor = mod.RequestsInstrumentor()
    url, seen = loopback
    try:
        with fresh_observability(auto_instrument=("requests",)) as obs, captured_spans() as spans:
            assert instrumentor.is_instrumented_by_opentelemetry
            assert requests.get(url + "/stock", timeout=5).status_code == 200
            assert sample_value("mestres_observability_errors_total", obs,
                                component="tracing") == 0
        (client,) = [s for s in spans.spans if s.kind is SpanKind.CLIENT]
        assert 200 in (client.attributes.get("http.response.status_code"),
                       client.attributes.get("http.status_code"))  # new or old semconv
        trace_id = format(client.context.trace_id, "032x")
        assert seen[0]["traceparent"].split("-")[1] == trace_id
    finally:
        _uninstrument("requests", instrumentor)


def test_entry_point_wins_over_the_module_scan() -> None:
    require_module("opentelemetry.instrumentation.celery")
    cls = _instrumentor_class("celery", "no.such.module", "")
    assert cls.__name__ == "CeleryInstrumentor"


def test_module_scan_skips_the_imported_abstract_base(monkeypatch: pytest.MonkeyPatch) -> None:
    instrumentor = require_module("opentelemetry.instrumentation.instrumentor")
    base = instrumentor.BaseInstrumentor
    module = types.ModuleType("opentelemetry.instrumentation.shopfake")
    calls: list[object] = []

    class ShopfakeInstrumentor(base):  # type: ignore[misc, valid-type]
        def instrumentation_dependencies(self) -> tuple[str, ...]:
            return ()

        def _instrument(self, **kwargs: Any) -> None:
            calls.append(kwargs.get("tracer_provider"))

        def _uninstrument(self, **kwargs: Any) -> None:
            return None

    ShopfakeInstrumentor.__module__ = module.__name__
    # the order of a real contrib module: the imported base first, then its own class
    module.BaseInstrumentor = base  # type: ignore[attr-defined]
    module.ShopfakeInstrumentor = ShopfakeInstrumentor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert _instrumentor_class("shopfake", module.__name__, "") is ShopfakeInstrumentor
    try:
        with fresh_observability(auto_instrument=("shopfake",)) as obs:
            assert sample_value("mestres_observability_errors_total", obs,
                                component="tracing") == 0
        assert calls == [_GLOBAL.provider]
    finally:
        _uninstrument("shopfake", ShopfakeInstrumentor())


def test_a_module_with_only_the_abstract_base_is_a_counted_fault(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instrumentor = require_module("opentelemetry.instrumentation.instrumentor")
    module = types.ModuleType("opentelemetry.instrumentation.onlybase")
    module.BaseInstrumentor = instrumentor.BaseInstrumentor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    with fresh_observability(auto_instrument=("onlybase",)) as obs:
        assert sample_value("mestres_observability_errors_total", obs, component="tracing") == 1
    _GLOBAL.instrumented.discard("onlybase")
