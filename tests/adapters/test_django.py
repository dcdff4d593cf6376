"""Django adapter end to end: WSGI (``Client``, sync middleware) and ASGI (``AsyncClient``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests._support import require_module

django = require_module("django")

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.adapters.django_settings")

from mestres_observability import get_observability, init_observability  # noqa: E402
from mestres_observability.errors import ConfigurationError  # noqa: E402
from mestres_observability.testing import fresh_observability, sample_value  # noqa: E402

from . import django_settings  # noqa: E402
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

_READY: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def django_setup() -> Iterator[None]:
    from django.apps import apps

    from mestres_observability import _current

    previous = get_observability()
    if apps.ready:  # set up by an earlier test module, whose instance it kept: ready() again
        apps.get_app_config("mestres_observability").ready()
    else:
        django.setup()
    _READY["obs"] = get_observability()
    yield
    _READY["obs"].shutdown(timeout=1.0)
    _current.swap(previous)


@pytest.fixture
def obs() -> Iterator[Any]:
    django_settings.FAILURES.clear()
    with fresh_observability(tracing_enabled=False) as instance:
        yield instance


def wsgi_client(**kw: Any) -> Any:
    from django.test import Client

    kw.setdefault("raise_request_exception", False)
    return Client(**kw)


def async_get(path: str, **kw: Any) -> Any:
    from django.test import AsyncClient

    client = AsyncClient(raise_request_exception=kw.pop("raise_request_exception", False))
    return asyncio.run(client.get(path, **kw))


def test_app_ready_initialised_from_settings() -> None:
    assert _READY["obs"].config.service_name == "django-tests"
    assert not _READY["obs"].is_default


def test_passing_a_django_object_raises_a_setup_error() -> None:
    from django.core.handlers.wsgi import WSGIHandler

    with pytest.raises(ConfigurationError, match="INSTALLED_APPS"):
        init_observability(WSGIHandler())


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_route_templates_and_status(obs: Any, mode: str) -> None:
    get = wsgi_client().get if mode == "wsgi" else async_get
    assert get("/orders/1").status_code == 200
    assert get("/api/items/3").status_code == 200
    assert get("/async/4").status_code == 200
    assert get("/nope").status_code == 404
    total = "http_requests_total"
    assert sample_value(total, method="GET", endpoint="/orders/<int:order_id>", status="200") == 1
    assert sample_value(total, method="GET", endpoint="/api/items/<int:item_id>",
                        status="200") == 1
    assert sample_value(total, method="GET", endpoint="/async/<int:order_id>", status="200") == 1
    assert sample_value(total, method="GET", endpoint="<unmatched>", status="404") == 1
    assert sample_value("http_requests_in_progress", method="GET",
                        endpoint="/orders/<int:order_id>") == 0


def test_matched_route_keeps_template_on_405_and_other_method(obs: Any) -> None:
    c = wsgi_client()
    assert c.post("/orders/1").status_code == 405
    c.generic("FOO", "/orders/1")
    ep = "/orders/<int:order_id>"
    assert sample_value("http_requests_total", method="POST", endpoint=ep, status="405") == 1
    assert sample_value("http_requests_total", method="_OTHER", endpoint=ep, status="405") == 1


def test_random_unmatched_paths_add_at_most_one_series(obs: Any, check_unmatched_paths: Any
                                                        ) -> None:
    check_unmatched_paths(wsgi_client().get, obs, seed=3)


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_exception_counted_once_and_reaches_django_unchanged(obs: Any, mode: str) -> None:
    if mode == "wsgi":
        with pytest.raises(RuntimeError) as info:
            wsgi_client(raise_request_exception=True).get("/orders/500")
    else:
        with pytest.raises(RuntimeError) as info:
            async_get("/orders/500", raise_request_exception=True)
    assert info.value is django_settings.FAILURES[0]
    labels = {"method": "GET", "endpoint": "/orders/<int:order_id>", "status": "500"}
    assert sample_value("http_requests_total", **labels) == 1
    assert sample_value("http_request_duration_seconds_count", **labels) == 1


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_request_id_echo_and_replacement(obs: Any, mode: str, check_request_ids: Any) -> None:
    c = wsgi_client()

    def echo(value: str | None) -> str:
        headers = {} if value is None else {"X-Request-ID": value}
        r = (c.get("/orders/1", headers=headers) if mode == "wsgi"
             else async_get("/orders/1", headers=headers))
        return str(r.headers["X-Request-ID"])

    check_request_ids(echo)


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_access_log_fields(obs: Any, logs: LogCapture, mode: str) -> None:
    path = f"/orders/9?{SECRET_QUERY}"
    headers = {"User-Agent": "ua/1", "X-Request-ID": "rid-7"}
    if mode == "wsgi":
        wsgi_client().get(path, headers=headers)
    else:
        async_get(path, headers=headers)
    check_access_line(logs, "/orders/<int:order_id>", 200, level="info")


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_query_secrets_never_reach_the_access_log_or_spans(logs: LogCapture, mode: str) -> None:
    with fresh_observability() as instance:
        exporter = use_memory_tracer(instance)
        c = wsgi_client()

        def get(path: str) -> None:
            exporter.clear()
            r = c.get(path) if mode == "wsgi" else async_get(path)
            assert r.status_code == 200

        check_leaky_queries(get, logs, exporter.get_finished_spans)


def test_user_id_resolver(obs: Any, logs: LogCapture, settings_override: Any) -> None:
    settings_override(MESTRES_OBSERVABILITY_USER_ID_RESOLVER=lambda r: r.headers.get("X-User"))
    wsgi_client().get("/orders/1", headers={"X-User": "u-5"})
    assert logs.lines()[-1]["user_id"] == "u-5"


@pytest.fixture
def settings_override() -> Iterator[Any]:
    from django.test import override_settings

    active: list[Any] = []

    def apply(**values: Any) -> None:
        o = override_settings(**values)
        o.enable()
        active.append(o)

    yield apply
    for o in reversed(active):
        o.disable()


def test_streaming_and_library_endpoints(obs: Any) -> None:
    c = wsgi_client()
    r = c.get("/stream")
    assert b"".join(r.streaming_content) == b"abc"
    r.close()
    assert sample_value("http_requests_total", method="GET", endpoint="/stream",
                        status="200") == 1
    assert c.get("/metrics").status_code == 200
    assert c.head("/metrics").content == b""
    assert c.get("/lib/metrics").status_code == 200  # include() of the urls works too


def test_metrics_auth() -> None:
    with fresh_observability(tracing_enabled=False, metrics_auth="bearer:tok"):
        c = wsgi_client()
        r = c.get("/metrics")
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        r = c.get("/metrics", headers={"Authorization": "Bearer tok"})
        assert r.status_code == 200
        assert b"http_requests_total" in r.content


def test_excluded_paths(logs: LogCapture) -> None:
    with fresh_observability(tracing_enabled=False, excluded_paths=("/orders/*",)) as instance:
        wsgi_client().get("/orders/1")
        assert series(instance, "http_requests_total") == []
        assert logs.lines() == []


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_trace_propagation_and_log_correlation(logs: LogCapture, mode: str) -> None:

    with fresh_observability() as instance:
        exporter = use_memory_tracer(instance)
        headers = {"traceparent": TRACEPARENT, "User-Agent": "ua/3"}
        if mode == "wsgi":
            wsgi_client().get("/orders/2", headers=headers)
        else:
            async_get("/orders/2", headers=headers)
        (span,) = exporter.get_finished_spans()
        check_server_span(span, "/orders/<int:order_id>",
                          {"server.address": "testserver", "user_agent.original": "ua/3"})
        assert logs.lines()[0]["trace_id"] == TRACE_ID


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_health_endpoints(obs: Any, mode: str) -> None:
    get = wsgi_client().get if mode == "wsgi" else async_get
    for path in ("/health", "/health/liveness", "/health/readiness", "/health/detailed"):
        r = get(path)
        assert r.status_code == 200, path
        assert r.json()["status"]
    detailed = get("/health/detailed").json()
    assert "system" in detailed["checks"]
    assert detailed["status"] in ("healthy", "degraded")
    draft = get("/health/detailed", headers={"Accept": "application/health+json"})
    assert draft["Content-Type"].startswith("application/health+json")
    assert draft.json()["status"] in ("pass", "warn")


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_server_span_on_the_wire_joins_the_callers_trace(
        otlp_receiver: OTLPReceiver, logs: LogCapture, mode: str) -> None:
    headers = {"traceparent": TRACEPARENT, "User-Agent": "ua/9"}
    with fresh_observability(otlp_endpoint=otlp_receiver.endpoint, service_name="wire"):
        r = (wsgi_client().get("/orders/7?page=2", headers=headers) if mode == "wsgi"
             else async_get("/orders/7?page=2", headers=headers))
        assert r.status_code == 200
    check_wire_span(otlp_receiver, logs, "/orders/<int:order_id>", {
        "url.path": "/orders/7", "url.scheme": "http", "server.address": "testserver",
        "user_agent.original": "ua/9",
    })


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_lean_and_sdk_spans_match_on_the_wire_children_parented_to_the_lean_span(
        mode: str) -> None:
    headers = {"traceparent": TRACEPARENT, "User-Agent": "ua/9"}

    def send() -> int:
        r = (wsgi_client().get("/traced", headers=headers) if mode == "wsgi"
             else async_get("/traced", headers=headers))
        return int(r.status_code)

    check_lean_matches_sdk(send)
