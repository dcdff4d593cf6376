"""Outbound calls with ``requests`` and ``httpx`` (sync and async) to real loopback servers.

Each call is counted and timed by method, host and status (``error`` without a
response), through the cardinality guard; it gets a CLIENT span with the HTTP
semantic-convention attributes; and the called server receives a
``traceparent`` whose parent is that span.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from mestres_observability import outbound
from mestres_observability.testing import captured_spans, fresh_observability, sample_value
from mestres_observability.tracing import span
from tests._support import free_port, require_module

pytestmark = pytest.mark.integration

requests = require_module("requests")
httpx = require_module("httpx")


class Loopback:
    """A threaded HTTP server on 127.0.0.1: ``/ok`` 200, anything else 404; records headers."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                seen.append({k.lower(): v for k, v in self.headers.items()})
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                code = 200 if self.path.startswith("/ok") else 404
                body = b"{}"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    server = Loopback()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def globally() -> Iterator[None]:
    outbound.instrument_requests()
    outbound.instrument_httpx()
    try:
        yield
    finally:
        outbound.uninstrument_requests()
        outbound.uninstrument_httpx()


def _client_spans(spans: Any) -> list[Any]:
    return [s for s in spans.spans if s.kind is SpanKind.CLIENT]


def _check_propagated(server: Loopback, client: Any, index: int = -1) -> None:
    _, trace_id, parent_id, _ = server.seen[index]["traceparent"].split("-")
    assert trace_id == format(client.context.trace_id, "032x")
    assert parent_id == format(client.context.span_id, "016x")


def test_requests_calls_are_counted_timed_traced_and_propagated(
    loopback: Loopback, globally: None,
) -> None:
    with fresh_observability() as obs, captured_spans() as spans:
        with span("checkout") as parent:
            assert requests.get(loopback.url + "/ok?token=s3cret&sku=1", timeout=5).ok
            assert requests.post(loopback.url + "/missing", json={"a": 1},
                                 timeout=5).status_code == 404
        assert sample_value("http_client_requests_total", obs, method="GET",
                            host=loopback.host, status="200") == 1
        assert sample_value("http_client_requests_total", obs, method="POST",
                            host=loopback.host, status="404") == 1
        assert sample_value("http_client_request_duration_seconds_count", obs, method="GET",
                            host=loopback.host) == 1
    get, post = _client_spans(spans)
    assert get.name == "GET"
    assert get.parent.span_id == parent.get_span_context().span_id
    assert get.attributes["http.request.method"] == "GET"
    assert get.attributes["http.response.status_code"] == 200
    assert get.attributes["server.address"] == "127.0.0.1"
    assert get.attributes["server.port"] == loopback.port
    assert get.attributes["url.full"] == loopback.url + "/ok?token=[REDACTED]&sku=1"
    assert get.status.status_code is StatusCode.UNSET
    assert post.attributes["error.type"] == "404"
    assert post.status.status_code is StatusCode.ERROR
    _check_propagated(loopback, get, 0)
    _check_propagated(loopback, post, 1)


def test_a_call_without_a_response_is_counted_as_error(globally: None) -> None:
    port = free_port()
    with fresh_observability() as obs, captured_spans() as spans:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/", timeout=2)
        assert sample_value("http_client_requests_total", obs, method="GET",
                            host=f"127.0.0.1:{port}", status="error") == 1
    (client,) = _client_spans(spans)
    assert client.attributes["error.type"] == "ConnectionError"
    assert client.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in client.events)


def test_one_session_alone(loopback: Loopback) -> None:
    session = outbound.instrument_requests(requests.Session())
    assert outbound.instrument_requests(session) is session  # wraps once
    with fresh_observability() as obs, captured_spans() as spans:
        session.get(loopback.url + "/ok", timeout=5)
        requests.get(loopback.url + "/ok", timeout=5)  # not instrumented
        assert sample_value("http_client_requests_total", obs, method="GET",
                            host=loopback.host, status="200") == 1
    assert len(_client_spans(spans)) == 1
    outbound.uninstrument_requests(session)
    assert "send" not in vars(session)


def test_httpx_sync_and_async(loopback: Loopback, globally: None) -> None:
    async def both() -> int:
        async with httpx.AsyncClient() as client:
            response = await client.get(loopback.url + "/ok")
        return response.status_code

    with fresh_observability() as obs, captured_spans() as spans:
        with httpx.Client() as client:
            assert client.get(loopback.url + "/ok").status_code == 200
            assert client.post(loopback.url + "/nope", content=b"x").status_code == 404
        assert asyncio.run(both()) == 200
        assert sample_value("http_client_requests_total", obs, method="GET",
                            host=loopback.host, status="200") == 2
        assert sample_value("http_client_requests_total", obs, method="POST",
                            host=loopback.host, status="404") == 1
    clients = _client_spans(spans)
    assert len(clients) == 3
    for i, client_span in enumerate(clients):
        _check_propagated(loopback, client_span, i)


def test_httpx_transports_for_one_client(loopback: Loopback) -> None:
    async def call() -> int:
        async with httpx.AsyncClient(transport=outbound.AsyncHTTPXTransport()) as client:
            return (await client.get(loopback.url + "/ok")).status_code

    with fresh_observability() as obs, captured_spans() as spans:
        with httpx.Client(transport=outbound.HTTPXTransport()) as client:
            client.get(loopback.url + "/ok")
        with httpx.Client() as plain:
            plain.get(loopback.url + "/ok")  # not instrumented
        assert asyncio.run(call()) == 200
        assert sample_value("http_client_requests_total", obs, method="GET",
                            host=loopback.host, status="200") == 2
    assert len(_client_spans(spans)) == 2
    assert "traceparent" not in loopback.seen[1]


def test_hosts_pass_the_cardinality_guard(globally: None) -> None:
    ports = [free_port() for _ in range(3)]
    with fresh_observability(label_limits={"http_client_requests_total": 2}) as obs:
        for port in ports:
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://127.0.0.1:{port}/", timeout=2)
        assert sample_value("http_client_requests_total", obs, method="GET",
                            host="<overflow>", status="error") == 1
        assert sample_value("mestres_observability_label_overflow_total", obs,
                            metric="http_client_requests_total") == 1


def test_metrics_off_keep_spans_and_faults_never_reach_the_call(
    loopback: Loopback, globally: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with fresh_observability(http_client_metrics=False) as obs, captured_spans() as spans:
        requests.get(loopback.url + "/ok", timeout=5)
        assert "http_client_requests_total" not in obs.render_metrics().body.decode()
    assert len(_client_spans(spans)) == 1
    with fresh_observability() as obs:
        def boom() -> None:
            raise RuntimeError("broken")

        monkeypatch.setattr(obs.metrics, "current_exemplar", boom)
        assert requests.get(loopback.url + "/ok", timeout=5).ok
        assert sample_value("mestres_observability_errors_total", obs, component="outbound") == 1


def test_default_ports_are_left_out_of_the_host_label() -> None:
    assert outbound._target("https://pay.example.com/charge")[0] == "pay.example.com"
    assert outbound._target("http://pay.example.com:80/")[0] == "pay.example.com"
    assert outbound._target("https://pay.example.com:8443/")[0] == "pay.example.com:8443"
    assert outbound._target("https://user:pw@PAY.example.com/x")[3] == "https://pay.example.com/x"
    assert outbound._target("http://[::1]:8080/x")[:3] == ("[::1]:8080", "::1", 8080)
