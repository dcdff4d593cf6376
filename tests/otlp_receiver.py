"""A real OTLP/HTTP trace receiver on loopback, decoding with the official protobuf messages.

Usage::

    from tests.otlp_receiver import OTLPReceiver

    with OTLPReceiver() as rx:
        init_observability(otlp_endpoint=rx.endpoint, ...)
        ...
        rx.wait_for(lambda: rx.span_names() >= {"process_order"})

or the ``otlp_receiver`` pytest fixture. It misbehaves on demand (``mode``):

* ``"ok"``: 200 with an empty ``ExportTraceServiceResponse``;
* ``"hang"``: accepts the request and never answers (until the receiver stops);
* ``"503"``/``"429"``: that status with ``Retry-After: retry_after`` for the first
  ``failures`` requests, then 200;
* ``"400"``: 400, never retried by a correct client;
* ``"partial"``: 200 with ``partial_success.rejected_spans = 3``;
* ``"trickle"``: reads the request, then answers 200 one byte every
  ``trickle_interval`` seconds (0.5), so each read of the client succeeds and a
  per-read timeout never fires; the spans are not recorded (the client gives up
  on them long before the answer is complete). It stops when the receiver stops.

:meth:`OTLPReceiver.closed_port` gives an endpoint where nothing listens.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

__all__ = ["OTLPReceiver", "ReceivedSpan", "otlp_receiver"]


@dataclass
class ReceivedSpan:
    """One decoded span with its resource attributes."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    status_code: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    events: list[str] = field(default_factory=list)


def _any_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    value = getattr(v, kind)
    if kind == "array_value":
        return [_any_value(x) for x in value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.values}
    return value


class OTLPReceiver:
    """OTLP/HTTP receiver for ``POST /v1/traces`` on ``127.0.0.1`` (see the module docstring)."""

    def __init__(self, mode: str = "ok", *, failures: int = 1, retry_after: str = "1",
                 trickle_interval: float = 0.5) -> None:
        self.mode = mode
        self.failures = failures
        self.retry_after = retry_after
        self.trickle_interval = trickle_interval
        #: bytes of answers sent in ``trickle`` mode so far
        self.trickled = 0
        self.spans: list[ReceivedSpan] = []
        #: every span as decoded, with its resource and scope: ``(Resource, InstrumentationScope,
        #: Span)`` protobuf messages, in arrival order
        self.messages: list[tuple[Any, Any, Any]] = []
        self.requests = 0
        #: the headers of every request, lower-cased names, in arrival order
        self.headers: list[dict[str, str]] = []
        self.bad_requests: list[str] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                receiver._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> OTLPReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """Base endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` style; ``/v1/traces`` is appended)."""
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def closed_port() -> str:
        """A base endpoint on a loopback port where nothing listens."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"http://127.0.0.1:{port}"

    # ------------------------------------------------------------------ queries
    def received(self) -> list[ReceivedSpan]:
        """A copy of every span received so far, in arrival order."""
        with self._lock:
            return list(self.spans)

    def span_names(self) -> set[str]:
        with self._lock:
            return {s.name for s in self.spans}

    def by_name(self, name: str) -> ReceivedSpan:
        with self._lock:
            for s in self.spans:
                if s.name == name:
                    return s
        raise KeyError(name)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.02)
        raise AssertionError(f"OTLP receiver: condition not met in {timeout}s "
                             f"(got {sorted(self.span_names())})")

    # ------------------------------------------------------------------ handler
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length)
        with self._lock:
            self.requests += 1
            n = self.requests
            self.headers.append({k.lower(): v for k, v in h.headers.items()})
        if self.mode == "hang":
            self._release.wait()
            return
        if self.mode == "trickle":
            self._trickle(h)
            return
        if self.mode in ("503", "429") and n <= self.failures:
            self._reply(h, int(self.mode), b"", {"Retry-After": self.retry_after})
            return
        if self.mode == "400":
            self._reply(h, 400, b"", {})
            return
        encoding = h.headers.get("Content-Encoding")
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            if h.path != "/v1/traces" or h.headers.get("Content-Type") != "application/x-protobuf":
                raise ValueError(f"unexpected {h.path} {h.headers.get('Content-Type')}")
            request = ExportTraceServiceRequest.FromString(body)
        except Exception as exc:
            with self._lock:
                self.bad_requests.append(repr(exc))
            self._reply(h, 400, b"", {})
            return
        received = []
        messages = []
        for rs in request.resource_spans:
            resource = {kv.key: _any_value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    messages.append((rs.resource, ss.scope, sp))
                    received.append(ReceivedSpan(
                        trace_id=sp.trace_id.hex(), span_id=sp.span_id.hex(),
                        parent_span_id=sp.parent_span_id.hex(), name=sp.name,
                        status_code=sp.status.code,
                        attributes={kv.key: _any_value(kv.value) for kv in sp.attributes},
                        resource=resource, events=[e.name for e in sp.events],
                    ))
        with self._lock:
            self.spans.extend(received)
            self.messages.extend(messages)
        response = ExportTraceServiceResponse()
        if self.mode == "partial":
            response.partial_success.rejected_spans = 3
            response.partial_success.error_message = "x"
        self._reply(h, 200, response.SerializeToString(), {})

    def _trickle(self, h: BaseHTTPRequestHandler) -> None:
        body = ExportTraceServiceResponse().SerializeToString()
        answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        try:
            for i in range(len(answer)):
                h.wfile.write(answer[i:i + 1])
                h.wfile.flush()
                with self._lock:
                    self.trickled += 1
                if self._release.wait(self.trickle_interval):
                    break
        except OSError:
            pass
        h.close_connection = True

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, body: bytes,
               headers: dict[str, str]) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/x-protobuf")
            h.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(body)
        except OSError:
            pass


@pytest.fixture
def otlp_receiver() -> Iterator[OTLPReceiver]:
    """A started :class:`OTLPReceiver` in ``ok`` mode (set ``.mode`` to misbehave)."""
    with OTLPReceiver() as rx:
        yield rx
