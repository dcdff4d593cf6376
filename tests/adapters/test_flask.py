"""Flask adapter end to end through Flask's test client."""

from __future__ import annotations

import string
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests._support import require_module

flask = require_module("flask")

from opentelemetry.trace import StatusCode  # noqa: E402

from mestres_observability import init_observability  # noqa: E402
from mestres_observability.flask import FlaskMiddleware, instrument  # noqa: E402
from mestres_observability.testing import fresh_observability, sample_value  # noqa: E402

from .conftest import (  # noqa: E402
    SECRET_QUERY,
    SECRET_VALUES,
    TRACE_ID,
    TRACEPARENT,
    LogCapture,
    OTLPReceiver,
    check_access_line,
    check_leaky_queries,
    check_lean_matches_sdk,
    check_server_span,
    check_wire_span,
    sensitive_name_variants,
    use_memory_tracer,
)
from .traced_view import traced_work  # noqa: E402

SEEN: list[BaseException] = []


def make_app() -> Any:
    app = flask.Flask(__name__)

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> Any:
        if order_id == 404:
            flask.abort(404)
        return {"id": order_id}

    @app.get("/boom")
    def boom() -> Any:
        raise RuntimeError("boom")

    @app.get("/slow-stream")
    def slow_stream() -> Any:
        def gen() -> Iterator[bytes]:
            yield b"a"
            time.sleep(0.05)
            yield b"b"
        return flask.Response(gen())

    @app.get("/assets/<path:name>")
    def static_file(name: str) -> Any:
        return name

    @app.get("/crash")
    def crash() -> Any:
        raise KeyError("unhandled")

    @app.get("/traced")
    def traced() -> Any:
        return traced_work()

    @app.errorhandler(RuntimeError)
    def on_error(exc: RuntimeError) -> Any:
        SEEN.append(exc)
        return "failed", 500

    return app


@pytest.fixture
def app() -> Iterator[Any]:
    SEEN.clear()
    with fresh_observability(tracing_enabled=False) as obs:
        application = make_app()
        instrument(application, obs)
        yield application


def test_route_templates_and_status(app: Any) -> None:
    c = app.test_client()
    assert c.get("/orders/1").status_code == 200
    assert c.get("/orders/404").status_code == 404
    assert c.post("/orders/1").status_code == 405
    ep = "/orders/<int:order_id>"
    assert sample_value("http_requests_total", method="GET", endpoint=ep, status="200") == 1
    assert sample_value("http_requests_total", method="GET", endpoint=ep, status="404") == 1
    assert sample_value("http_requests_total", method="POST", endpoint=ep, status="405") == 1
    assert sample_value("http_request_duration_seconds_count", method="GET", endpoint=ep,
                        status="200") == 1
    assert sample_value("http_requests_in_progress", method="GET", endpoint=ep) == 0


def test_without_flasks_request_context_var_the_pass_reads_the_proxy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback of ``_compat.flask_request_context_var`` (``None``): the route, the
    in-progress gauge and the body check go through ``flask.request`` as before."""
    import mestres_observability.flask as adapter

    monkeypatch.setattr(adapter, "_REQUEST_CTX", None)
    with fresh_observability(tracing_enabled=False) as obs:
        application = make_app()
        instrument(application, obs)
        c = application.test_client()
        assert c.get("/orders/7").status_code == 200
        r = c.get("/slow-stream", buffered=False)
        assert r.get_data() == b"ab"
        assert sample_value("http_requests_total", method="GET", endpoint="/slow-stream",
                            status="200") == 0  # streamed: recorded when the body ends
        r.close()
        ep = "/orders/<int:order_id>"
        assert sample_value("http_requests_total", method="GET", endpoint=ep,
                            status="200") == 1
        assert sample_value("http_requests_total", method="GET", endpoint="/slow-stream",
                            status="200") == 1
        assert sample_value("http_requests_in_progress", method="GET", endpoint=ep) == 0
        assert not sample_value("mestres_observability_errors_total", component="http")


def test_a_sized_body_that_is_not_a_list_is_recorded_before_the_body_is_read() -> None:
    """The body check reads ``is_streamed`` for what is not Flask's own list: a tuple
    body is complete, so the request is recorded when the app returns."""
    with fresh_observability(tracing_enabled=False) as obs:
        application = flask.Flask(__name__)

        @application.get("/tuple")
        def tuple_body() -> Any:
            response = flask.Response()
            response.response = (b"a", b"b")
            return response

        instrument(application, obs)
        result = application.wsgi_app({"REQUEST_METHOD": "GET", "PATH_INFO": "/tuple",
                                       "SERVER_NAME": "x", "SERVER_PORT": "80",
                                       "wsgi.url_scheme": "http"},
                                      lambda *a: None)
        counted = sample_value("http_requests_total", method="GET", endpoint="/tuple",
                               status="200")
        body = b"".join(result)
        getattr(result, "close", lambda: None)()
        assert counted == 1  # before the body was read or closed
        assert body == b"ab"


def test_random_unmatched_paths_add_at_most_one_series(app: Any, check_unmatched_paths: Any
                                                        ) -> None:
    c = app.test_client()
    check_unmatched_paths(c.get, flask_obs(), seed=5, alphabet=string.ascii_letters + "/.-",
                          new_series=2)  # <unmatched> 404 (+ a possible redirect status)


def flask_obs() -> Any:
    from mestres_observability import get_observability

    return get_observability()


def test_other_method(app: Any) -> None:
    app.test_client().open("/orders/1", method="FOO")
    assert sample_value("http_requests_total", method="_OTHER",
                        endpoint="/orders/<int:order_id>", status="405") == 1


def test_exception_counted_once_and_reaches_flask_unchanged(app: Any) -> None:
    r = app.test_client().get("/boom")
    assert r.status_code == 500
    assert len(SEEN) == 1
    assert str(SEEN[0]) == "boom"
    assert sample_value("http_requests_total", method="GET", endpoint="/boom", status="500") == 1


def test_propagated_exception_is_the_same_object() -> None:
    raised: list[BaseException] = []
    with fresh_observability(tracing_enabled=False):
        application = flask.Flask(__name__)
        application.testing = True  # PROPAGATE_EXCEPTIONS

        @application.get("/boom")
        def boom() -> Any:
            exc = ValueError("x")
            raised.append(exc)
            raise exc

        instrument(application)
        with pytest.raises(ValueError) as info:
            application.test_client().get("/boom")
        assert info.value is raised[0]
        assert sample_value("http_requests_total", method="GET", endpoint="/boom",
                            status="500") == 1
        assert sample_value("http_request_duration_seconds_count", method="GET",
                            endpoint="/boom", status="500") == 1


def test_request_id_echo_and_replacement(app: Any, check_request_ids: Any) -> None:
    c = app.test_client()

    def echo(value: str | None) -> str:
        extra = {} if value is None else {"HTTP_X_REQUEST_ID": value}
        r = c.get("/orders/1", environ_overrides=extra)
        assert "Set-Cookie" not in r.headers
        return str(r.headers["X-Request-ID"])

    check_request_ids(echo)


def test_access_log_fields(app: Any, logs: LogCapture) -> None:
    c = app.test_client()
    c.get(f"/orders/404?{SECRET_QUERY}", headers={"User-Agent": "ua/1", "X-Request-ID": "rid-7"})
    check_access_line(logs, "/orders/<int:order_id>", 404, level="warning")


def test_query_secrets_never_reach_the_access_log_or_spans(logs: LogCapture) -> None:
    with fresh_observability() as obs:
        exporter = use_memory_tracer(obs)
        application = make_app()
        instrument(application)
        c = application.test_client()

        def get(path: str) -> None:
            exporter.clear()
            assert c.get(path).status_code == 200

        check_leaky_queries(get, logs, exporter.get_finished_spans)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=sensitive_name_variants(), value=SECRET_VALUES)
def test_a_sensitive_query_name_in_any_encoding_never_reaches_the_access_log(
        app: Any, logs: LogCapture, name: str, value: str) -> None:
    logs.buffer.seek(0)
    logs.buffer.truncate()
    assert app.test_client().get(f"/orders/1?page=2&{name}={value}").status_code == 200
    (line,) = logs.lines()
    assert value not in logs.text
    assert line["url"].endswith("=[REDACTED]")


def test_user_id_resolver_and_faults(logs: LogCapture) -> None:
    with fresh_observability(tracing_enabled=False):
        application = make_app()
        instrument(application, user_id_resolver=lambda request: request.headers.get("X-User"))
        c = application.test_client()
        c.get("/orders/1", headers={"X-User": "u-42"})
        assert logs.lines()[-1]["user_id"] == "u-42"
        instrument(application, user_id_resolver=lambda request: 1 / 0)
        assert c.get("/orders/1").status_code == 200
        assert logs.lines()[-1]["user_id"] is None
        assert sample_value("mestres_observability_errors_total", component="http") >= 1


def test_excluded_paths_are_not_measured(logs: LogCapture) -> None:
    with fresh_observability(tracing_enabled=False, excluded_paths=("/assets/*",)):
        application = make_app()
        instrument(application)
        assert application.test_client().get("/assets/app.js").status_code == 200
        assert sample_value("http_requests_total", method="GET",
                            endpoint="/assets/<path:name>", status="200") == 0
        assert logs.lines() == []


def test_metrics_auth_and_head() -> None:
    with fresh_observability(tracing_enabled=False, metrics_auth="bearer:tok"):
        application = make_app()
        instrument(application)
        c = application.test_client()
        r = c.get("/metrics")
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        r = c.get("/metrics", headers={"Authorization": "Bearer tok"})
        assert r.status_code == 200
        assert b"http_requests_total" in r.data
        r = c.head("/metrics", headers={"Authorization": "Bearer tok"})
        assert r.status_code == 200
        assert r.data == b""
        r = c.get("/metrics", headers={"Authorization": "Bearer tok",
                                       "Accept": "application/openmetrics-text; version=1.0.0"})
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")


def test_streaming_timed_to_end_of_body(app: Any) -> None:
    r = app.test_client().get("/slow-stream", buffered=False)
    assert r.get_data() == b"ab"
    r.close()
    labels = {"method": "GET", "endpoint": "/slow-stream", "status": "200"}
    assert sample_value("http_request_duration_seconds_count", **labels) == 1
    assert sample_value("http_request_duration_seconds_sum", **labels) >= 0.05


def test_reinit_with_same_app_does_not_double_register() -> None:
    application = make_app()
    with fresh_observability(tracing_enabled=False) as first:
        mw = instrument(application, first)
        dispatch = application.full_dispatch_request
        second = init_observability(application, configure_logging=False, tracing_enabled=False)
        try:
            assert application.extensions["mestres_observability"] is mw
            assert isinstance(application.wsgi_app, FlaskMiddleware)
            assert not isinstance(application.wsgi_app.wsgi_app, FlaskMiddleware)
            assert application.full_dispatch_request == dispatch  # not wrapped twice
            assert application.full_dispatch_request == mw.full_dispatch_request
            assert not application.before_request_funcs.get(None)
            assert not application.after_request_funcs.get(None)
            application.test_client().get("/orders/1")
            labels = {"method": "GET", "endpoint": "/orders/<int:order_id>", "status": "200"}
            assert sample_value("http_requests_total", second, **labels) == 1
            assert sample_value("http_requests_total", first, **labels) == 0
        finally:
            second.shutdown()


def test_trace_propagation_and_log_correlation(logs: LogCapture) -> None:
    with fresh_observability() as obs:
        exporter = use_memory_tracer(obs)
        application = make_app()
        instrument(application)
        c = application.test_client()
        c.get("/orders/7", headers={"traceparent": TRACEPARENT, "User-Agent": "ua/2"},
              base_url="https://shop.example:8443")
        assert c.get("/crash").status_code == 500
        spans = exporter.get_finished_spans()
        assert len(spans) == 2
        span = spans[0]
        check_server_span(span, "/orders/<int:order_id>", {
            "http.request.method": "GET", "url.path": "/orders/7", "url.scheme": "https",
            "server.address": "shop.example", "server.port": 8443,
            "user_agent.original": "ua/2", "client.address": "127.0.0.1",
        })
        line = logs.lines()[0]
        assert line["trace_id"] == TRACE_ID
        assert line["span_id"] == format(span.context.span_id, "016x")
        failed = spans[1]
        assert failed.status.status_code is StatusCode.ERROR
        assert any(e.name == "exception" for e in failed.events)


def test_health_endpoints(app: Any) -> None:
    c = app.test_client()
    for path in ("/health", "/health/liveness", "/health/readiness"):
        r = c.get(path)
        assert r.status_code == 200, path
        assert r.is_json
    assert c.post("/health").status_code == 405
    assert sample_value("http_requests_total", method="GET", endpoint="/health",
                        status="200") == 0  # library endpoints are not measured


def test_server_span_on_the_wire_joins_the_callers_trace(
        otlp_receiver: OTLPReceiver, logs: LogCapture) -> None:
    with fresh_observability(otlp_endpoint=otlp_receiver.endpoint, service_name="wire"):
        application = make_app()
        instrument(application)
        r = application.test_client().get(
            "/orders/7?page=2", headers={"traceparent": TRACEPARENT, "User-Agent": "ua/9"})
        assert r.status_code == 200
    check_wire_span(otlp_receiver, logs, "/orders/<int:order_id>", {
        "url.path": "/orders/7", "url.scheme": "http", "server.address": "localhost",
        "user_agent.original": "ua/9", "client.address": "127.0.0.1",
    })


def test_lean_and_sdk_spans_match_on_the_wire_children_parented_to_the_lean_span() -> None:
    def send() -> int:
        application = make_app()
        instrument(application)
        return int(application.test_client().get(
            "/traced", headers={"traceparent": TRACEPARENT, "User-Agent": "ua/9"}).status_code)

    check_lean_matches_sdk(send)


@pytest.mark.parametrize("streamed", [False, True])
def test_user_id_bound_in_the_view_reaches_the_access_log(logs: LogCapture,
                                                          streamed: bool) -> None:
    from mestres_observability.logs import set_user_id

    with fresh_observability(tracing_enabled=False):
        application = flask.Flask(__name__)

        @application.get("/me")
        def me() -> Any:
            set_user_id("u-42")
            if streamed:  # the line is written when the server closes the body
                return flask.Response(iter([b"a", b"b"]))
            return {"ok": True}

        @application.get("/anonymous")
        def anonymous() -> Any:
            return {"ok": True}

        instrument(application)
        client = application.test_client()
        r = client.get("/me", buffered=False)
        assert r.get_data() in (b"ab", b'{"ok":true}\n')
        r.close()
        client.get("/anonymous")  # the same thread: nothing bound by /me is left over
        first, second = logs.lines()
        assert (first["endpoint"], first["user_id"]) == ("/me", "u-42")
        assert (second["endpoint"], second["user_id"]) == ("/anonymous", None)
