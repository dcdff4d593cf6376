"""Fixtures and checks shared by the adapter tests: JSON logs, in-memory spans, request ids."""

from __future__ import annotations

import io
import json
import random
import re
import string
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mestres_observability.config import DEFAULT_REDACT_KEYS, DEFAULT_REDACT_QUERY_PARAMS
from mestres_observability.observability import Observability
from tests.otlp_receiver import OTLPReceiver, otlp_receiver  # noqa: F401 (fixture)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class LogCapture:
    """structlog rendering real JSON lines into a buffer."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()

    @property
    def text(self) -> str:
        return self.buffer.getvalue()

    def lines(self, event: str | None = "http_request") -> list[dict[str, Any]]:
        out = []
        for line in self.text.splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if event is None or record.get("event") == event:
                out.append(record)
        return out


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """Configure structlog to write JSON lines to a buffer for the test."""
    cap = LogCapture()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=cap.buffer),
        cache_logger_on_first_use=False,
    )
    try:
        yield cap
    finally:
        structlog.reset_defaults()


def use_memory_tracer(obs: Observability) -> InMemorySpanExporter:
    """Give ``obs`` an SDK tracer exporting to memory (independent of global state)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    obs._tracing = SimpleNamespace(  # type: ignore[assignment]
        tracer=tracer, own_tracer=tracer, enabled=True,
        shutdown=lambda timeout=None: provider.shutdown(), retire=lambda: None,
    )
    import mestres_observability.http as http_module

    http_module._cached = None
    return exporter


def series(obs: Observability, family: str) -> list[dict[str, str]]:
    """Label sets of the samples named ``family`` (e.g. ``http_requests_total``)."""
    out = []
    for metric in obs.registry.collect():
        for sample in metric.samples:
            if sample.name == family:
                out.append(dict(sample.labels))
    return out


#: Request ids an adapter must not echo: header injection, oversized, one past the limit.
UNSAFE_REQUEST_IDS = ("a\r\nSet-Cookie: x=1", "x" * 10_240, "x" * 129)
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _request_id_rules(echo: Callable[[str | None], str]) -> None:
    """The request-id rules through one adapter.

    ``echo(value)`` sends a request with ``X-Request-ID: value`` (no header for
    ``None``) and returns the ``X-Request-ID`` of the response. A safe id comes
    back as sent; an unsafe or missing one is replaced by a fresh UUID4.
    """
    for safe in ("abc-1", "ok.1", "abc_1", "A" * 128):
        assert echo(safe) == safe
    fresh = {echo(bad) for bad in (*UNSAFE_REQUEST_IDS, None, None)}
    assert len(fresh) == len(UNSAFE_REQUEST_IDS) + 2  # a new id every time
    assert all(UUID4.fullmatch(rid) for rid in fresh), fresh


def _unmatched_paths_rule(get: Callable[[str], object], obs: Observability, *, seed: int,
                          alphabet: str = string.ascii_letters + "-.", new_series: int = 1) -> None:
    """300 random paths through one adapter add at most ``new_series`` series, all ``<unmatched>``.

    ``get(path)`` sends one GET request; ``new_series`` allows for a redirect
    status next to the 404.
    """
    get("/orders/1")
    before = series(obs, "http_requests_total")
    rng = random.Random(seed)
    for _ in range(300):
        get("/" + "".join(rng.choices(alphabet, k=rng.randint(1, 40))))
    after = series(obs, "http_requests_total")
    assert len(after) - len(before) <= new_series
    assert {s["endpoint"] for s in after} - {s["endpoint"] for s in before} <= {"<unmatched>"}
    assert any(s["endpoint"] == "<unmatched>" for s in after)


@pytest.fixture
def check_request_ids() -> Callable[..., None]:
    """:func:`_request_id_rules`, for a test to run through its adapter."""
    return _request_id_rules


@pytest.fixture
def check_unmatched_paths() -> Callable[..., None]:
    """:func:`_unmatched_paths_rule`, for a test to run through its adapter."""
    return _unmatched_paths_rule


#: The access log's fields (the seed's), present on every ``http_request`` line.
ACCESS_LOG_KEYS = ("timestamp", "request_id", "method", "url", "endpoint", "status_code",
                   "duration_seconds", "user_agent", "ip_address", "user_id")
#: A query string with two secrets the access log must never show.
SECRET_QUERY = "token=SECRET123&page=2&password=hunter2"


def check_access_line(logs: LogCapture, endpoint: str, status: int,
                      level: str | None = None) -> dict[str, Any]:
    """The one ``http_request`` line of a request sent with :data:`SECRET_QUERY`,
    ``User-Agent: ua/1`` and ``X-Request-ID: rid-7``, checked; returned for more."""
    (line,) = logs.lines()
    for key in ACCESS_LOG_KEYS:
        assert key in line, key
    assert line["request_id"] == "rid-7"
    assert line["status_code"] == status
    assert isinstance(line["status_code"], int)
    assert isinstance(line["duration_seconds"], float)
    assert line["endpoint"] == endpoint
    assert line["user_agent"] == "ua/1"
    if level is not None:
        assert line["level"] == level
    assert "SECRET123" not in logs.text
    assert "hunter2" not in logs.text
    assert "token=[REDACTED]&page=2" in line["url"]
    return line


#: Query strings whose secrets reached the access log before (issue 10 #3): the query,
#: and the strings none of which may appear in the logged ``url``.
LEAKY_QUERIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("X-Amz-Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe", ("fe5f80f77d5f",)),
    ("oauth_signature=tR3%2BTy81lMeYAr%2FFid0kMTYa%2FWM%3D", ("tR3", "Ty81lMeYAr")),
    ("auth_code=SplxlOBeZQQYbYS6WxSbIA", ("SplxlOBeZQQ",)),
    ("user[password]=hunter2x", ("hunter2x",)),
    ("user%5Bpassword%5D=hunter2y", ("hunter2y",)),
    ("password[]=hunter2z", ("hunter2z",)),
    ("sessionid=9f86d081884c7d65", ("9f86d081884c",)),
    ("card=4111+1111+1111+1111", ("4111",)),
    ("card=4111%201111%201111%201111", ("4111",)),
    ("next=postgres%3A%2F%2Fu%3Apw%40db", ("pw%40", "pw@", "%3Apw", ":pw")),
    ("h=Bearer%20tok", ("tok",)),
)


def check_leaky_queries(get: Callable[[str], object], logs: LogCapture,
                        spans: Callable[[], list[Any]] | None = None) -> None:
    """Each of :data:`LEAKY_QUERIES` through one adapter (``get(path_with_query)``):
    the logged ``url`` keeps the query's shape with the secret's value redacted, the
    harmless parameters as sent; the spans carry no query (or a redacted one)."""
    for query, secrets in LEAKY_QUERIES:
        logs.buffer.seek(0)
        logs.buffer.truncate()
        get(f"/orders/1?page=2&{query}&q=a%20b")
        (line,) = logs.lines()
        url = line["url"]
        assert url.startswith("/orders/1?page=2&"), url
        assert url.endswith("=[REDACTED]&q=a%20b"), url
        assert url.count("&") == 2, url  # the shape: three parameters
        for secret in secrets:
            assert secret not in url, (query, url)
        for span in spans() if spans is not None else ():
            attrs = dict(span.attributes or {})
            for key in ("url.query", "http.target", "url.full", "http.url"):
                value = str(attrs.get(key, ""))
                assert not any(secret in value for secret in secrets), (key, value)
            for key, value in attrs.items():
                assert not any(len(secret) >= 6 and secret in str(value)
                               for secret in secrets), (key, value)


#: Every name whose query values are redacted by default.
SENSITIVE_NAMES = sorted({*DEFAULT_REDACT_QUERY_PARAMS, *DEFAULT_REDACT_KEYS})


@st.composite
def sensitive_name_variants(draw: st.DrawFn) -> str:
    """A sensitive name as a client may send it: case, separators, camelCase, brackets,
    percent-encoding (once or twice, any character)."""
    name = draw(st.sampled_from(SENSITIVE_NAMES))
    words = name.split("_")
    if len(words) > 1 and draw(st.booleans()):  # accessToken
        name = words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])
    else:
        name = draw(st.sampled_from(["_", "-", ".", "+", "%20"])).join(words)
    name = "".join(c.upper() if draw(st.booleans()) else c for c in name)
    name = draw(st.sampled_from(["{}", "{}[]", "user[{}]", "a[b][{}]", "{}[0]", " {} "])).format(
        name)
    out = []
    for c in name:
        if c not in "+%" and draw(st.integers(0, 4)) == 0:
            enc = f"%{ord(c):02X}" if draw(st.booleans()) else f"%{ord(c):02x}"
            out.append(enc.replace("%", "%25") if draw(st.booleans()) else enc)
        else:
            out.append(c)
    return "".join(out)


#: Values of sensitive parameters (distinct from anything else in a log line).
SECRET_VALUES = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~",
                 min_size=4, max_size=40).map(lambda v: "Zq9" + v)


def check_server_span(span: Any, route: str, attributes: dict[str, Any]) -> None:
    """A SERVER span named after ``route``, joined to :data:`TRACEPARENT`'s trace,
    with ``http.route``, status 200 and ``attributes``."""
    from opentelemetry.trace import SpanKind

    assert span.kind is SpanKind.SERVER
    assert span.name == f"GET {route}"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_ID
    attrs = dict(span.attributes or {})
    assert attrs["http.route"] == route
    assert attrs["http.response.status_code"] == 200
    for key, value in attributes.items():
        assert attrs[key] == value, key


def check_wire_span(rx: OTLPReceiver, logs: LogCapture, route: str,
                    attributes: dict[str, Any]) -> None:
    """The SERVER span of one request sent with :data:`TRACEPARENT`, as the OTLP
    receiver decoded it off the wire, and the access-log line
    carrying its trace and span ids."""
    name = f"GET {route}"
    rx.wait_for(lambda: name in rx.span_names())
    assert rx.bad_requests == []
    span = rx.by_name(name)
    assert span.trace_id == TRACE_ID
    assert span.parent_span_id == PARENT_ID
    assert "service.instance.id" in span.resource  # resource: fixed by the first init
    assert span.status_code != 2  # not ERROR
    attrs = span.attributes
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.route"] == route
    assert attrs["http.response.status_code"] == 200
    for key, value in attributes.items():
        assert attrs[key] == value, key
    (line,) = logs.lines()
    assert line["trace_id"] == TRACE_ID
    assert line["span_id"] == span.span_id


# ---------------------------------------------------------------------- lean spans on the wire
class Loopback:
    """A plain HTTP server on loopback answering ``200 ok``; keeps each request's headers."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.headers = []  # type: list[dict[str, str]]

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                seen.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/downstream"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Loopback:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def wire_content(rx: OTLPReceiver) -> list[dict[str, Any]]:
    """Every span ``rx`` decoded, as a dict of its protobuf fields with its resource and
    scope, ids and timings aside: the trace id in hex, the parent id in hex or
    ``"<SERVER>"`` for the request's SERVER span; sorted by name."""
    from google.protobuf.json_format import MessageToDict

    messages = list(rx.messages)
    (server_id,) = [s.span_id for _, _, s in messages if s.kind == s.SPAN_KIND_SERVER]
    out = []
    for resource, scope, span in messages:
        d = MessageToDict(span, preserving_proto_field_name=True)
        for key in ("span_id", "start_time_unix_nano", "end_time_unix_nano"):
            d.pop(key)
        for event in d.get("events", []):
            event.pop("time_unix_nano")
        d["trace_id"] = span.trace_id.hex()
        d["parent_span_id"] = ("<SERVER>" if span.parent_span_id == server_id
                               else span.parent_span_id.hex())
        d["resource"] = MessageToDict(resource)
        d["scope"] = MessageToDict(scope)
        out.append(d)
    return sorted(out, key=lambda d: str(d["name"]))


def check_lean_matches_sdk(send: Callable[[], int], route: str = "/traced") -> None:
    """One request to ``route`` (:mod:`tests.adapters.traced_view`, sent with
    :data:`TRACEPARENT` by ``send()``, which returns the status) through the lean span
    path and again through the SDK path (``lean_spans=False``), each exported to its own
    OTLP receiver: both decode to the same spans, field by field (name, kind, parent,
    trace id, attributes, events, status, flags, resource, scope), ids and timings aside;
    the requests CLIENT span and the user's span are children of the SERVER span on the
    wire, and ``trace.get_current_span()`` in the view was the lean span."""
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    from mestres_observability.testing import fresh_observability

    from . import traced_view

    decoded: dict[bool, list[dict[str, Any]]] = {}
    with Loopback() as downstream:
        traced_view.LOOPBACK[:] = [downstream.url]
        for lean in (True, False):
            with OTLPReceiver() as rx:
                instrumentor = RequestsInstrumentor()
                with fresh_observability(otlp_endpoint=rx.endpoint, service_name="wire",
                                         lean_spans=lean) as obs:
                    assert obs.tracing.lean is lean
                    provider = obs.tracing.provider
                    ours = not instrumentor.is_instrumented_by_opentelemetry
                    if ours:
                        instrumentor.instrument(tracer_provider=provider)
                    traced_view.USER_TRACER[:] = [provider.get_tracer("user-code", "1.0")]
                    try:
                        assert send() == 200
                    finally:
                        if ours:
                            instrumentor.uninstrument()
                rx.wait_for(lambda rx=rx: len(rx.messages) >= 3)  # type: ignore[misc]
                assert rx.bad_requests == []
                decoded[lean] = wire_content(rx)
            assert traced_view.SEEN[-1] == ("LeanSpan" if lean else "_Span")
            # the call downstream carried the request's trace
            assert downstream.headers[-1]["traceparent"].split("-")[1] == TRACE_ID
    assert decoded[True] == decoded[False]
    by_name = {d["name"]: d for d in decoded[True]}
    assert set(by_name) == {"GET", f"GET {route}", "user.step"}
    server = by_name[f"GET {route}"]
    assert server["kind"] == "SPAN_KIND_SERVER"
    assert server["trace_id"] == TRACE_ID
    assert server["parent_span_id"] == PARENT_ID
    assert server["flags"] == 0x300  # the parent is remote
    assert server["scope"]["name"] == "mestres_observability"
    attrs = {kv["key"]: kv["value"] for kv in server["attributes"]}
    assert attrs["app.order_id"] == {"int_value": "7"}
    assert attrs["http.route"] == {"string_value": route}
    assert [e["name"] for e in server["events"]] == ["app.checked", "exception"]
    for child in ("GET", "user.step"):
        assert by_name[child]["trace_id"] == TRACE_ID
        assert by_name[child]["parent_span_id"] == "<SERVER>"
        assert by_name[child]["flags"] == 0x100  # a local parent
    assert by_name["GET"]["kind"] == "SPAN_KIND_CLIENT"
    assert by_name["user.step"]["scope"] == {"name": "user-code", "version": "1.0"}
