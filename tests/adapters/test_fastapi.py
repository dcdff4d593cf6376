"""Starlette/FastAPI adapter end to end through Starlette's test client (and raw ASGI)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests._support import require_module

fastapi = require_module("fastapi")

from fastapi import BackgroundTasks, FastAPI, WebSocket  # noqa: E402
from fastapi.responses import PlainTextResponse, StreamingResponse  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from mestres_observability import get_observability, init_observability  # noqa: E402
from mestres_observability.fastapi import ObservabilityMiddleware, instrument  # noqa: E402
from mestres_observability.testing import fresh_observability, sample_value  # noqa: E402

from .conftest import (  # noqa: E402
    SECRET_QUERY,
    TRACE_ID,
    TRACEPARENT,
    LogCapture,
    OTLPReceiver,
    check_access_line,
    check_leaky_queries,
    check_lean_matches_sdk,
    check_server_span,
    check_wire_span,
    series,
    use_memory_tracer,
)
from .traced_view import traced_work  # noqa: E402

RAISED: list[BaseException] = []
EVENTS: list[str] = []
IN_PROGRESS: list[float] = []


def make_app() -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        EVENTS.append("startup")
        yield
        EVENTS.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, int]:
        IN_PROGRESS.append(sample_value("http_requests_in_progress", method="GET",
                                        endpoint="/orders/{order_id}"))
        return {"id": order_id}

    @app.get("/traced")
    async def traced() -> dict[str, Any]:
        return traced_work()

    @app.get("/sync/{name}")
    def sync(name: str) -> dict[str, str]:
        return {"name": name}

    @app.get("/boom")
    async def boom() -> None:
        exc = RuntimeError("boom")
        RAISED.append(exc)
        raise exc

    @app.get("/stream")
    def stream() -> StreamingResponse:
        def gen() -> Iterator[bytes]:
            yield b"a"
            time.sleep(0.05)
            yield b"b"
        return StreamingResponse(gen())

    @app.get("/background")
    async def background(tasks: BackgroundTasks) -> PlainTextResponse:
        tasks.add_task(time.sleep, 0.3)
        return PlainTextResponse("ok")

    @app.get("/assets/{name}")
    async def asset(name: str) -> PlainTextResponse:
        return PlainTextResponse(name)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    sub = FastAPI()

    @sub.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    app.mount("/api", sub)
    return app


@pytest.fixture
def app() -> Iterator[FastAPI]:
    RAISED.clear()
    EVENTS.clear()
    IN_PROGRESS.clear()
    with fresh_observability(tracing_enabled=False) as obs:
        application = make_app()
        instrument(application, obs)
        yield application


def client(app: Any, **kw: Any) -> TestClient:
    kw.setdefault("raise_server_exceptions", False)
    return TestClient(app, **kw)


def test_route_templates_mounts_and_status(app: FastAPI) -> None:
    c = client(app)
    assert c.get("/orders/1").status_code == 200
    assert c.post("/orders/1").status_code == 405
    assert c.get("/sync/x").status_code == 200
    assert c.get("/api/items/3").status_code == 200
    assert c.get("/nope").status_code == 404
    total = "http_requests_total"
    assert sample_value(total, method="GET", endpoint="/orders/{order_id}", status="200") == 1
    assert sample_value(total, method="POST", endpoint="/orders/{order_id}", status="405") == 1
    assert sample_value(total, method="GET", endpoint="/sync/{name}", status="200") == 1
    assert sample_value(total, method="GET", endpoint="/api/items/{item_id}", status="200") == 1
    assert sample_value(total, method="GET", endpoint="<unmatched>", status="404") == 1
    assert IN_PROGRESS == [1.0]
    assert sample_value("http_requests_in_progress", method="GET",
                        endpoint="/orders/{order_id}") == 0


def test_random_unmatched_paths_add_at_most_one_series(app: FastAPI,
                                                        check_unmatched_paths: Any) -> None:
    check_unmatched_paths(client(app).get, get_observability(), seed=7)


def test_other_method(app: FastAPI) -> None:
    client(app).request("FOO", "/orders/1")
    assert sample_value("http_requests_total", method="_OTHER", endpoint="/orders/{order_id}",
                        status="405") == 1


def test_exception_counted_once_and_reaches_the_framework_unchanged(app: FastAPI) -> None:
    with pytest.raises(RuntimeError) as info:
        client(app, raise_server_exceptions=True).get("/boom")
    assert info.value is RAISED[0]
    assert sample_value("http_requests_total", method="GET", endpoint="/boom", status="500") == 1
    assert sample_value("http_request_duration_seconds_count", method="GET", endpoint="/boom",
                        status="500") == 1
    assert sample_value("http_requests_in_progress", method="GET", endpoint="/boom") == 0


def test_exception_handler_sees_the_same_object() -> None:
    seen: list[BaseException] = []
    with fresh_observability(tracing_enabled=False):
        application = make_app()

        @application.exception_handler(Exception)
        async def handler(request: Any, exc: Exception) -> PlainTextResponse:
            seen.append(exc)
            return PlainTextResponse("failed", status_code=500)

        RAISED.clear()
        instrument(application)
        assert client(application).get("/boom").status_code == 500
        assert seen == RAISED
        assert seen[0] is RAISED[0]
        assert sample_value("http_requests_total", method="GET", endpoint="/boom",
                            status="500") == 1


async def _raw(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": headers, "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 80)}
    await app(scope, receive, send)
    return sent[0]


def test_request_id_echo_and_replacement(app: FastAPI, check_request_ids: Any) -> None:
    def echo(value: str | None) -> str:
        headers = [] if value is None else [(b"x-request-id", value.encode("latin-1"))]
        start = asyncio.run(_raw(app, "/orders/1", headers))
        return str(dict(start["headers"])[b"x-request-id"].decode("latin-1"))

    check_request_ids(echo)


def test_access_log_fields(app: FastAPI, logs: LogCapture) -> None:
    client(app).get(f"/orders/2?{SECRET_QUERY}",
                    headers={"User-Agent": "ua/1", "X-Request-ID": "rid-7"})
    line = check_access_line(logs, "/orders/{order_id}", 200, level="info")
    assert line["url"].startswith("/orders/2?token=[REDACTED]&page=2")


def test_query_secrets_never_reach_the_access_log_or_spans(logs: LogCapture) -> None:
    with fresh_observability() as obs:
        exporter = use_memory_tracer(obs)
        application = make_app()
        instrument(application)
        c = client(application)

        def get(path: str) -> None:
            exporter.clear()
            assert c.get(path).status_code == 200

        check_leaky_queries(get, logs, lambda: [s for s in exporter.get_finished_spans()
                                                if s.kind is SpanKind.SERVER])


def test_trusted_proxy_address(logs: LogCapture) -> None:
    with fresh_observability(tracing_enabled=False, trusted_proxies=("127.0.0.0/8",)):
        application = make_app()
        instrument(application)
        asyncio.run(_raw(application, "/orders/1", [(b"x-forwarded-for", b"198.51.100.7")]))
        assert logs.lines()[-1]["ip_address"] == "198.51.100.7"


def test_user_id_resolver(logs: LogCapture) -> None:
    with fresh_observability(tracing_enabled=False):
        application = make_app()
        instrument(application, user_id_resolver=lambda r: r.headers.get("x-user"))
        client(application).get("/orders/1", headers={"X-User": "u-9"})
        assert logs.lines()[-1]["user_id"] == "u-9"


def test_excluded_paths_are_not_measured(logs: LogCapture) -> None:
    with fresh_observability(tracing_enabled=False, excluded_paths=("/assets/*",)):
        application = make_app()
        instrument(application)
        assert client(application).get("/assets/a.js").status_code == 200
        assert series(get_observability(), "http_requests_total") == []
        assert logs.lines() == []


def test_metrics_auth_and_head() -> None:
    with fresh_observability(tracing_enabled=False, metrics_auth="basic:prom:pw"):
        application = make_app()
        instrument(application)
        c = client(application)
        r = c.get("/metrics")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Basic")
        assert c.get("/metrics", auth=("prom", "nope")).status_code == 401
        r = c.get("/metrics", auth=("prom", "pw"))
        assert r.status_code == 200
        assert "http_requests_total" in r.text
        r = c.head("/metrics", auth=("prom", "pw"))
        assert r.status_code == 200
        assert r.content == b""
        assert "/metrics" not in application.openapi()["paths"]


def test_streaming_timed_to_end_of_body_background_excluded(app: FastAPI) -> None:
    c = client(app)
    assert c.get("/stream").content == b"ab"
    assert sample_value("http_request_duration_seconds_sum", method="GET", endpoint="/stream",
                        status="200") >= 0.05
    assert c.get("/background").text == "ok"
    assert sample_value("http_request_duration_seconds_sum", method="GET",
                        endpoint="/background", status="200") < 0.3


def test_lifespan_and_websocket_pass_through(app: FastAPI) -> None:
    with client(app) as c:
        assert EVENTS == ["startup"]
        with c.websocket_connect("/ws") as ws:
            assert ws.receive_text() == "hi"
    assert EVENTS == ["startup", "shutdown"]
    assert all(s["endpoint"] != "/ws" for s in series(get_observability(),
                                                          "http_requests_total"))


def test_reinit_with_same_app_does_not_double_register() -> None:
    application = make_app()
    with fresh_observability(tracing_enabled=False) as first:
        instrument(application, first)
        count = len(application.user_middleware)
        second = init_observability(application, configure_logging=False, tracing_enabled=False)
        try:
            assert len(application.user_middleware) == count
            assert sum(m.cls is ObservabilityMiddleware for m in application.user_middleware) == 1
            client(application).get("/orders/1")
            labels = {"method": "GET", "endpoint": "/orders/{order_id}", "status": "200"}
            assert sample_value("http_requests_total", second, **labels) == 1
            assert sample_value("http_requests_total", first, **labels) == 0
            # a third init after the app started: no error, nothing added
            third = init_observability(application, configure_logging=False,
                                       tracing_enabled=False)
            third.shutdown()
        finally:
            second.shutdown()


def test_trace_propagation_and_log_correlation(logs: LogCapture) -> None:
    with fresh_observability() as obs:
        exporter = use_memory_tracer(obs)
        application = make_app()
        instrument(application)
        c = client(application, base_url="https://shop.example:8443")
        c.get("/orders/7", headers={"traceparent": TRACEPARENT, "User-Agent": "ua/2"})
        c.get("/boom")
        spans = exporter.get_finished_spans()
        server = [s for s in spans if s.kind is SpanKind.SERVER]
        assert len(server) == 2
        span = server[0]
        check_server_span(span, "/orders/{order_id}", {
            "url.scheme": "https", "server.address": "shop.example",
            "user_agent.original": "ua/2", "client.address": "testclient",
        })
        line = logs.lines()[0]
        assert line["trace_id"] == TRACE_ID
        assert server[1].status.status_code is StatusCode.ERROR
        assert any(e.name == "exception" for e in server[1].events)


def test_fastapi_native_server_span_is_reused_not_doubled(logs: LogCapture) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    native_exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(native_exporter))
    try:
        application = FastAPI(telemetry={"tracer_provider": provider})
    except TypeError:
        pytest.skip("this FastAPI has no native telemetry")

    @application.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, int]:
        return {"id": order_id}

    with fresh_observability() as obs:
        ours = use_memory_tracer(obs)
        instrument(application)
        client(application).get("/orders/5", headers={"traceparent": TRACEPARENT})
        server = [s for s in native_exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
        assert len(server) == 1
        assert ours.get_finished_spans() == ()
        line = logs.lines()[0]
        assert line["trace_id"] == TRACE_ID
        assert line["span_id"] == format(server[0].context.span_id, "016x")
        assert sample_value("http_requests_total", method="GET", endpoint="/orders/{order_id}",
                            status="200") == 1


def test_health_endpoints(app: FastAPI) -> None:
    c = client(app)
    for path in ("/health", "/health/liveness", "/health/readiness"):
        r = c.get(path)
        assert r.status_code == 200, path
        assert r.json()["status"]
    assert "/health" not in app.openapi()["paths"]


def test_native_tracing_on_the_global_provider_is_turned_off_once() -> None:
    from mestres_observability._compat import disable_fastapi_native_tracing

    application = FastAPI()
    config = getattr(application, "_telemetry", None)
    if not isinstance(config, dict):
        pytest.skip("this FastAPI has no native telemetry")
    assert config["tracing"] is True
    with fresh_observability():
        instrument(application)
    assert config["tracing"] is False
    assert disable_fastapi_native_tracing(application) is False  # nothing left to change


@pytest.mark.parametrize("telemetry", [None, "frozen", {"tracing": "yes"}, 42])
def test_unexpected_native_telemetry_shapes_are_left_alone(telemetry: Any) -> None:
    from types import MappingProxyType

    from starlette.applications import Starlette

    from mestres_observability._compat import disable_fastapi_native_tracing

    application = Starlette()
    if telemetry == "frozen":
        telemetry = MappingProxyType({"tracing": True, "tracer_provider": None})
    if telemetry is not None:
        application._telemetry = telemetry  # type: ignore[attr-defined]
    assert disable_fastapi_native_tracing(application) is False
    with fresh_observability():
        instrument(application)  # never raises on a shape it does not know
    if isinstance(telemetry, MappingProxyType):
        assert telemetry["tracing"] is True


def test_server_span_on_the_wire_joins_the_callers_trace(
        otlp_receiver: OTLPReceiver, logs: LogCapture) -> None:
    with fresh_observability(otlp_endpoint=otlp_receiver.endpoint, service_name="wire"):
        application = make_app()
        instrument(application)
        r = client(application).get(
            "/orders/7?page=2", headers={"traceparent": TRACEPARENT, "User-Agent": "ua/9"})
        assert r.status_code == 200
    check_wire_span(otlp_receiver, logs, "/orders/{order_id}", {
        "url.path": "/orders/7", "url.scheme": "http", "server.address": "testserver",
        "user_agent.original": "ua/9", "client.address": "testclient",
    })


def test_lean_and_sdk_spans_match_on_the_wire_children_parented_to_the_lean_span() -> None:
    def send() -> int:
        application = make_app()
        instrument(application)
        with client(application) as c:
            return int(c.get("/traced", headers={"traceparent": TRACEPARENT,
                                                 "User-Agent": "ua/9"}).status_code)

    check_lean_matches_sdk(send)
