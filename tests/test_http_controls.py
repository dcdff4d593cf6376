"""Per-request controls (issue 16) on Flask, FastAPI and Django through their test clients:
static labels (``http_labels``), the per-request label callback with its allowlist, the
per-route opt-out (:func:`do_not_track` and each framework's route option), excluded
methods, ``excluded_urls`` / ``OTEL_PYTHON_*_EXCLUDED_URLS``, and the body size histograms."""

from __future__ import annotations

import asyncio
import importlib
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mestres_observability import do_not_track
from mestres_observability.cardinality import OVERFLOW
from mestres_observability.config import ObservabilityConfig
from mestres_observability.errors import ConfigurationError
from mestres_observability.http import (
    HttpRequestInfo,
    http_state,
    is_untracked,
    response_size,
    start_request,
)
from mestres_observability.testing import fresh_observability, sample_value
from tests._support import require_module
from tests.adapters import conftest as adapter_fixtures
from tests.adapters.conftest import LogCapture, series, use_memory_tracer

flask = require_module("flask")
fastapi = require_module("fastapi")
django = require_module("django")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import PlainTextResponse, StreamingResponse  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

ALLOWED = {"tier": ["free", "pro"]}
logs = adapter_fixtures.logs  # the adapter tests' JSON access-log capture (a fixture)


def tier_of(info: HttpRequestInfo) -> dict[str, str]:
    """The label callback of the tests: the ``X-Tier`` header; ``X-Tier: boom`` raises."""
    value = info.header("X-Tier")
    if value == "boom":
        raise RuntimeError("callback failed")
    return {"tier": value} if value is not None else {}


def errors(obs: Any) -> float:
    return sample_value("mestres_observability_errors_total", obs, component="http")


# ---------------------------------------------------------------------- settings
def test_http_labels_are_validated() -> None:
    for bad in ({"method": "x"}, {"status": "x"}, {"le": "x"}, {"9lives": "x"},
                {"__name": "x"}, {"a-b": "x"}):
        with pytest.raises(ConfigurationError, match="http_labels"):
            ObservabilityConfig(http_labels=bad)
    with pytest.raises(ConfigurationError, match="http_labels"):
        ObservabilityConfig(http_labels={"app": 3})
    cfg = ObservabilityConfig.from_env({"MESTRES_OBS_HTTP_LABELS": "app=shop, region=eu"})
    assert cfg.http_labels == {"app": "shop", "region": "eu"}


def test_label_callback_settings() -> None:
    with pytest.raises(ConfigurationError, match="http_label_callback"):
        ObservabilityConfig(http_label_callback=tier_of)  # labels not declared
    with pytest.raises(ConfigurationError, match="http_label_values"):
        ObservabilityConfig(http_label_values=ALLOWED)  # no callback
    with pytest.raises(ConfigurationError, match="http_label_values"):
        ObservabilityConfig(http_label_values={"tier": []}, http_label_callback=tier_of)
    with pytest.raises(ConfigurationError, match="both"):
        ObservabilityConfig(http_labels={"tier": "x"}, http_label_values=ALLOWED,
                            http_label_callback=tier_of)
    with pytest.raises(ConfigurationError, match="dotted path"):
        ObservabilityConfig(http_label_values=ALLOWED, http_label_callback="nope")
    with pytest.raises(ConfigurationError, match="callable"):
        ObservabilityConfig(http_label_values=ALLOWED, http_label_callback=3)
    cfg = ObservabilityConfig.from_env({
        "MESTRES_OBS_HTTP_LABEL_VALUES": '{"tier": ["free", "pro"]}',
        "MESTRES_OBS_HTTP_LABEL_CALLBACK": "tests.test_http_controls:tier_of",
    })
    assert cfg.http_label_values == {"tier": ("free", "pro")}
    assert cfg.http_label_callback is tier_of
    with pytest.raises(ConfigurationError, match="MESTRES_OBS_HTTP_LABEL_VALUES"):
        ObservabilityConfig.from_env({"MESTRES_OBS_HTTP_LABEL_VALUES": "tier=free"})
    with pytest.raises(ConfigurationError, match="cannot import"):
        ObservabilityConfig.from_env({"MESTRES_OBS_HTTP_LABEL_VALUES": '{"tier": ["a"]}',
                                      "MESTRES_OBS_HTTP_LABEL_CALLBACK": "tests.nothing:here"})


def test_excluded_methods_and_urls_settings() -> None:
    assert ObservabilityConfig(excluded_methods=("options", "HEAD")).excluded_methods == (
        "OPTIONS", "HEAD")
    with pytest.raises(ConfigurationError, match="excluded_methods"):
        ObservabilityConfig(excluded_methods=("GET /x",))
    with pytest.raises(ConfigurationError, match="regular expression"):
        ObservabilityConfig(excluded_urls=("(unclosed",))
    with pytest.raises(ConfigurationError, match="excluded_urls_by_framework"):
        ObservabilityConfig(excluded_urls_by_framework={"bottle": ("x",)})
    env = {"OTEL_PYTHON_EXCLUDED_URLS": "healthz,/internal/.*",
           "OTEL_PYTHON_FLASK_EXCLUDED_URLS": "ping"}
    cfg = ObservabilityConfig.from_env(env)
    assert cfg.excluded_urls == ("healthz", "/internal/.*")
    assert cfg.source_of("excluded_urls") == "env OTEL_PYTHON_EXCLUDED_URLS"
    assert cfg.source_of("excluded_urls_by_framework") == "env OTEL_PYTHON_FLASK_EXCLUDED_URLS"
    # the framework's own variable replaces the generic one for that framework only
    assert cfg.excluded_urls_for("flask") == ("ping",)
    assert cfg.excluded_urls_for("django") == ("healthz", "/internal/.*")
    # our variable wins over OpenTelemetry's
    cfg = ObservabilityConfig.from_env({**env, "MESTRES_OBS_EXCLUDED_URLS": "other"})
    assert cfg.excluded_urls_for("fastapi") == ("other",)
    assert cfg.excluded_urls_for("flask") == ("ping",)


def test_response_size_rules() -> None:
    assert response_size("GET", 200, "12", 3) == 12  # declared wins
    assert response_size("GET", 200, None, 3) == 3  # counted when nothing declared
    assert response_size("GET", 200, "junk", 3) == 3
    assert response_size("HEAD", 200, "12", 0) == 0  # no body is sent
    assert response_size("GET", 304, "12", 0) == 0
    assert response_size("GET", 204, None, 0) == 0


def test_do_not_track_marks_and_returns_the_view() -> None:
    def view() -> None: ...

    assert not is_untracked(view)
    assert do_not_track(view) is view
    assert is_untracked(view)

    class V: ...

    def as_view() -> None: ...

    as_view.view_class = V  # type: ignore[attr-defined]  # what Flask and Django set
    do_not_track(V)
    assert is_untracked(as_view)


# ---------------------------------------------------------------------- the callback
_VALUES = st.one_of(st.none(), st.text(max_size=20), st.sampled_from(["free", "pro"]),
                    st.integers(), st.binary(max_size=4), st.lists(st.integers(), max_size=2))
_RESULTS = st.one_of(
    st.dictionaries(st.sampled_from(["tier", "other", "x"]), _VALUES, max_size=3),
    _VALUES, st.just("raise"))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(results=st.lists(_RESULTS, min_size=1, max_size=5))
def test_any_callback_result_gives_only_allowlisted_values(results: list[Any]) -> None:
    returned = iter(results)

    def callback(info: HttpRequestInfo) -> Any:
        got = next(returned)
        if got == "raise":
            raise ValueError("from the callback")
        return got

    with fresh_observability(tracing_enabled=False, access_log=False,
                             http_label_values=ALLOWED, http_label_callback=callback,
                             http_size_metrics=True) as obs:
        state = http_state(obs)
        for _ in results:
            rp = start_request(state, "GET", "/x", route="/x")
            assert rp is not None
            rp.request_size = 1
            rp.response_size = 2
            rp.track_in_progress()
            rp.finish(200)  # never raises
        for family in ("http_requests_total", "http_request_duration_seconds_count",
                       "http_requests_in_progress", "http_request_size_bytes_count",
                       "http_response_size_bytes_count"):
            tiers = {s["tier"] for s in series(obs, family)}
            assert tiers, family
            assert tiers <= {"free", "pro", "other"}, (family, tiers)
        total = sum(sample_value("http_requests_total", obs, method="GET", endpoint="/x",
                                 status="200", tier=t) for t in ("free", "pro", "other"))
        assert total == len(results)
        assert sample_value("http_requests_in_progress", obs, method="GET", endpoint="/x",
                            tier="other") == 0


# ---------------------------------------------------------------------- Flask
def flask_app() -> Any:
    app = flask.Flask(__name__)

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> Any:
        return "x" * 10

    @app.post("/upload")
    def upload() -> Any:
        return flask.request.get_data()[:5]

    @app.get("/stream")
    def stream() -> Any:
        return flask.Response(iter([b"abc", b"defg"]))

    @app.get("/ping")
    @do_not_track
    def ping() -> Any:
        return "pong"

    from flask.views import MethodView

    class Quiet(MethodView):
        mestres_observability_do_not_track = True  # the route option: a view attribute

        def get(self) -> Any:
            return "quiet"

    app.add_url_rule("/quiet", view_func=Quiet.as_view("quiet"))
    return app


def _served(framework: str, make_app: Callable[[], Any], **cfg: Any
            ) -> Iterator[tuple[Any, Any]]:
    """Once: ``(obs, test client)`` of a fresh app of ``make_app`` wired by
    ``mestres_observability.<framework>`` under an instance of ``cfg`` (tracing off unless
    asked); the tests iterate over it so the instance ends with the loop."""
    instrument = importlib.import_module(f"mestres_observability.{framework}").instrument
    cfg.setdefault("tracing_enabled", False)
    with fresh_observability(**cfg) as obs:
        app = make_app()
        instrument(app, obs)
        if framework == "fastapi":
            with TestClient(app) as client:  # runs the app's lifespan
                yield obs, client
        else:
            yield obs, app.test_client()


def _flask(**cfg: Any) -> Iterator[tuple[Any, Any]]:
    return _served("flask", flask_app, **cfg)


def test_flask_static_and_callback_labels(logs: LogCapture) -> None:
    for obs, client in _flask(http_labels={"app": "shop"}, http_label_values=ALLOWED,
                              http_label_callback=tier_of, http_size_metrics=True):
        assert client.get("/orders/1", headers={"X-Tier": "pro"}).status_code == 200
        client.get("/orders/2", headers={"X-Tier": "gold"})  # not allowed
        client.get("/orders/3", headers={"X-Tier": "boom"})  # raises
        client.get("/orders/4")  # missing
        labels = {"method": "GET", "endpoint": "/orders/<int:order_id>", "status": "200",
                  "app": "shop"}
        assert sample_value("http_requests_total", obs, **labels, tier="pro") == 1
        assert sample_value("http_requests_total", obs, **labels, tier="other") == 3
        assert sample_value("http_request_duration_seconds_count", obs, **labels,
                            tier="other") == 3
        assert sample_value("http_response_size_bytes_count", obs, **labels, tier="pro") == 1
        assert {s["app"] for s in series(obs, "http_requests_in_progress")} == {"shop"}
        assert errors(obs) == 1  # the raising callback, counted once
        assert len(logs.lines()) == 4  # the requests themselves are untouched


def test_a_callback_label_past_the_cardinality_bound_folds_into_overflow() -> None:
    # two series allowed: the "free" and "pro" requests get theirs; the third label set
    # ("other", from a value outside the allowlist) is past the bound: its data-derived
    # labels (the route and the callback's tier) fold into OVERFLOW, and it is counted
    for obs, client in _flask(http_label_values=ALLOWED, http_label_callback=tier_of,
                              label_limits={"http_requests_total": 2}):
        client.get("/orders/1", headers={"X-Tier": "free"})
        client.get("/orders/2", headers={"X-Tier": "pro"})
        client.get("/orders/3", headers={"X-Tier": "gold"})  # not allowed: "other"
        client.get("/orders/4", headers={"X-Tier": "pro"})  # its series exists: kept
        route = {"method": "GET", "endpoint": "/orders/<int:order_id>", "status": "200"}
        assert sample_value("http_requests_total", obs, **route, tier="free") == 1
        assert sample_value("http_requests_total", obs, **route, tier="pro") == 2
        assert sample_value("http_requests_total", obs, **route, tier="other") == 0
        assert sample_value("http_requests_total", obs, method="GET", endpoint=OVERFLOW,
                            status="200", tier=OVERFLOW) == 1
        assert {s["tier"] for s in series(obs, "http_requests_total")} == {
            "free", "pro", OVERFLOW}
        assert sample_value("mestres_observability_label_overflow_total", obs,
                            metric="http_requests_total") == 1
        # the other families have their own bound (the default): nothing folded there
        assert sample_value("http_request_duration_seconds_count", obs, **route,
                            tier="other") == 1


def test_flask_do_not_track_and_view_attribute(logs: LogCapture) -> None:
    for obs, client in _flask():
        assert client.get("/ping").data == b"pong"
        assert client.get("/quiet").data == b"quiet"
        client.get("/orders/1")
        endpoints = {s["endpoint"] for s in series(obs, "http_requests_total")}
        assert endpoints == {"/orders/<int:order_id>"}
        assert [line["endpoint"] for line in logs.lines()] == ["/orders/<int:order_id>"]


def test_flask_excluded_methods_and_urls(logs: LogCapture) -> None:
    for obs, client in _flask(excluded_methods=("OPTIONS",),
                              excluded_urls_by_framework={"flask": (r"orders/9\d*$",)}):
        client.options("/orders/1")
        client.get("/orders/99")
        client.get("/orders/1")
        assert series(obs, "http_requests_total") == [
            {"method": "GET", "endpoint": "/orders/<int:order_id>", "status": "200"}]
        assert len(logs.lines()) == 1


def test_flask_size_histograms() -> None:
    for obs, client in _flask(http_size_metrics=True):
        client.post("/upload", data=b"y" * 300)
        response = client.get("/stream")
        assert response.data == b"abcdefg"
        response.close()  # the server closes the body: the streamed size is observed
        client.head("/orders/1")
        post = {"method": "POST", "endpoint": "/upload", "status": "200"}
        assert sample_value("http_request_size_bytes_sum", obs, **post) == 300
        assert sample_value("http_response_size_bytes_sum", obs, **post) == 5
        get = {"method": "GET", "endpoint": "/stream", "status": "200"}
        assert sample_value("http_response_size_bytes_sum", obs, **get) == 7  # streamed
        assert sample_value("http_request_size_bytes_sum", obs, **get) == 0
        head = {"method": "HEAD", "endpoint": "/orders/<int:order_id>", "status": "200"}
        assert sample_value("http_response_size_bytes_count", obs, **head) == 1
        assert sample_value("http_response_size_bytes_sum", obs, **head) == 0


def test_size_histograms_are_off_by_default() -> None:
    for obs, client in _flask():
        client.get("/orders/1")
        assert not any(m.name.endswith("_size_bytes") for m in obs.registry.collect())


# ---------------------------------------------------------------------- FastAPI
def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def order(order_id: int) -> PlainTextResponse:
        return PlainTextResponse("x" * 10)

    @app.post("/upload")
    async def upload(request: Request) -> PlainTextResponse:
        return PlainTextResponse((await request.body())[:5])

    @app.get("/stream")
    def stream() -> StreamingResponse:
        return StreamingResponse(iter([b"abc", b"defg"]))

    @app.get("/ping")
    @do_not_track
    async def ping() -> PlainTextResponse:
        return PlainTextResponse("pong")

    from mestres_observability.fastapi import DO_NOT_TRACK_EXTENSION

    @app.get("/quiet", openapi_extra={DO_NOT_TRACK_EXTENSION: True})
    def quiet() -> PlainTextResponse:
        return PlainTextResponse("quiet")

    @app.post("/quiet")
    def quiet_post() -> PlainTextResponse:  # same path, another method: measured
        return PlainTextResponse("posted")

    return app


def _fastapi(**cfg: Any) -> Iterator[tuple[Any, Any]]:
    return _served("fastapi", fastapi_app, **cfg)


def test_fastapi_static_and_callback_labels(logs: LogCapture) -> None:
    for obs, client in _fastapi(http_labels={"app": "shop"}, http_label_values=ALLOWED,
                                http_label_callback=tier_of):
        client.get("/orders/1", headers={"X-Tier": "free"})
        client.get("/orders/2", headers={"X-Tier": "gold"})
        client.get("/orders/3", headers={"X-Tier": "boom"})
        labels = {"method": "GET", "endpoint": "/orders/{order_id}", "status": "200",
                  "app": "shop"}
        assert sample_value("http_requests_total", obs, **labels, tier="free") == 1
        assert sample_value("http_requests_total", obs, **labels, tier="other") == 2
        assert sample_value("http_requests_in_progress", obs, method="GET",
                            endpoint="/orders/{order_id}", app="shop", tier="free") == 0
        assert errors(obs) == 1
        assert len(logs.lines()) == 3


@pytest.mark.parametrize("users", [
    ("callback", "request", "response", "resolver"),
    ("callback", "request", "response"),
    ("callback", "resolver"),
    ("request", "response", "resolver"),
])
def test_fastapi_builds_one_request_for_the_label_callback_hooks_and_resolver(
        monkeypatch: pytest.MonkeyPatch, users: tuple[str, ...]) -> None:
    """The label callback, the span hooks and the user-id resolver, whichever are on, get
    one Starlette request, built once a request."""
    from mestres_observability import fastapi as adapter

    built: list[Any] = []
    real = adapter._hook_request

    def counted(scope: Any) -> Any:
        request = real(scope)
        built.append(request)
        return request

    monkeypatch.setattr(adapter, "_hook_request", counted)
    seen: list[tuple[str, Any]] = []

    def callback(info: HttpRequestInfo) -> dict[str, str]:
        seen.append(("callback", info.request))
        return tier_of(info)

    def resolver(request: Any) -> str:
        seen.append(("resolver", request))
        return "u-1"

    cfg: dict[str, Any] = {"tracing_enabled": True, "access_log": False}
    if "callback" in users:
        cfg.update(http_label_values=ALLOWED, http_label_callback=callback)
    if "request" in users:
        cfg.update(server_request_hook=lambda sp, req: seen.append(("request", req)),
                   server_response_hook=lambda sp, req, res: seen.append(("response", req)))
    with fresh_observability(**cfg) as obs:
        app = fastapi_app()
        adapter.instrument(app, obs,
                           user_id_resolver=resolver if "resolver" in users else None)
        with TestClient(app) as client:
            for n in (1, 2):
                assert client.get(f"/orders/{n}", headers={"X-Tier": "pro"}).text == "x" * 10
        tier = {"tier": "pro"} if "callback" in users else {}
        assert sample_value("http_requests_total", obs, method="GET",
                            endpoint="/orders/{order_id}", status="200", **tier) == 2
    assert len(built) == 2  # one per request
    assert sorted(kind for kind, _ in seen) == sorted(users * 2)
    for request in built:
        assert sorted(kind for kind, got in seen if got is request) == sorted(users)


def test_fastapi_do_not_track_and_openapi_extra(logs: LogCapture) -> None:
    for obs, client in _fastapi():
        assert client.get("/ping").text == "pong"
        assert client.get("/quiet").text == "quiet"
        assert client.post("/quiet").text == "posted"
        assert {(s["method"], s["endpoint"]) for s in series(obs, "http_requests_total")} == {
            ("POST", "/quiet")}
        assert len(logs.lines()) == 1


def test_fastapi_excluded_methods_and_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", r"/orders/9\d*$")
    cfg = ObservabilityConfig.from_env(configure_logging=False, tracing_enabled=False,
                                       excluded_methods=("HEAD",)).as_dict()
    for obs, client in _fastapi(**{k: cfg[k] for k in ("excluded_methods",
                                                       "excluded_urls_by_framework")}):
        client.head("/orders/1")
        client.get("/orders/99")
        client.get("/orders/1")
        assert series(obs, "http_requests_total") == [
            {"method": "GET", "endpoint": "/orders/{order_id}", "status": "200"}]


def test_fastapi_size_histograms() -> None:
    for obs, client in _fastapi(http_size_metrics=True):
        client.post("/upload", content=b"y" * 300)

        def chunked() -> Iterator[bytes]:  # no Content-Length: the bytes received count
            yield b"y" * 40
            yield b"y" * 2

        client.post("/upload", content=chunked())
        client.get("/stream")
        post = {"method": "POST", "endpoint": "/upload", "status": "200"}
        assert sample_value("http_request_size_bytes_sum", obs, **post) == 342
        assert sample_value("http_response_size_bytes_sum", obs, **post) == 10
        get = {"method": "GET", "endpoint": "/stream", "status": "200"}
        assert sample_value("http_response_size_bytes_sum", obs, **get) == 7


# ---------------------------------------------------------------------- Django
@pytest.fixture(scope="module")
def django_ready() -> None:
    """Django set up as tests/adapters/test_trace_headers.py does it (the app's ``ready()``
    initialises an instance: the current one is kept)."""
    from django.apps import apps

    from mestres_observability import _current, get_observability

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.adapters.django_settings")
    if not apps.ready:
        previous = get_observability()
        django.setup()
        _current.swap(previous).shutdown(timeout=1.0)


def _django(**cfg: Any) -> Iterator[tuple[Any, Any]]:
    from django.test import Client, override_settings

    cfg.setdefault("tracing_enabled", False)
    with fresh_observability(**cfg) as obs, override_settings(
            ROOT_URLCONF="tests.adapters.controls_urls"):
        yield obs, Client(raise_request_exception=False)


def test_django_static_and_callback_labels(django_ready: None, logs: LogCapture) -> None:
    for obs, client in _django(http_labels={"app": "shop"}, http_label_values=ALLOWED,
                               http_label_callback=tier_of):
        client.get("/orders/1", HTTP_X_TIER="pro")
        client.get("/orders/2", HTTP_X_TIER="gold")
        client.get("/orders/3", HTTP_X_TIER="boom")
        client.get("/nowhere", HTTP_X_TIER="free")  # unmatched: asked at the end
        labels = {"method": "GET", "endpoint": "/orders/<int:order_id>", "status": "200",
                  "app": "shop"}
        assert sample_value("http_requests_total", obs, **labels, tier="pro") == 1
        assert sample_value("http_requests_total", obs, **labels, tier="other") == 2
        assert sample_value("http_requests_total", obs, method="GET", endpoint="<unmatched>",
                            status="404", app="shop", tier="free") == 1
        assert errors(obs) == 1
        assert len(logs.lines()) == 4


def test_django_do_not_track(django_ready: None, logs: LogCapture) -> None:
    for obs, client in _django():
        assert client.get("/ping").content == b"pong"
        assert client.get("/quiet").content == b"quiet"  # a class-based view, decorated
        client.get("/orders/1")
        assert {s["endpoint"] for s in series(obs, "http_requests_total")} == {
            "/orders/<int:order_id>"}
        assert len(logs.lines()) == 1


def test_django_async_do_not_track(django_ready: None) -> None:
    from django.test import AsyncClient, override_settings

    with fresh_observability(tracing_enabled=False) as obs, override_settings(
            ROOT_URLCONF="tests.adapters.controls_urls"):
        client = AsyncClient()
        assert asyncio.run(client.get("/ping")).content == b"pong"
        asyncio.run(client.get("/orders/1"))
        assert {s["endpoint"] for s in series(obs, "http_requests_total")} == {
            "/orders/<int:order_id>"}


def test_django_excluded_methods_and_urls(django_ready: None) -> None:
    for obs, client in _django(excluded_methods=("OPTIONS",),
                               excluded_urls=(r"^http://testserver/orders/9",)):
        client.options("/orders/1")
        client.get("/orders/99")
        client.get("/orders/1")
        assert series(obs, "http_requests_total") == [
            {"method": "GET", "endpoint": "/orders/<int:order_id>", "status": "200"}]


def test_django_size_histograms(django_ready: None) -> None:
    for obs, client in _django(http_size_metrics=True):
        client.post("/upload", data=b"y" * 300, content_type="application/octet-stream")
        response = client.get("/stream")
        assert b"".join(response.streaming_content) == b"abcdefg"
        response.close()  # the body ends: the streamed size is observed
        post = {"method": "POST", "endpoint": "/upload", "status": "200"}
        assert sample_value("http_request_size_bytes_sum", obs, **post) == 300
        assert sample_value("http_response_size_bytes_sum", obs, **post) == 5
        get = {"method": "GET", "endpoint": "/stream", "status": "200"}
        assert sample_value("http_response_size_bytes_sum", obs, **get) == 7


def test_django_async_size_histograms(django_ready: None) -> None:
    from django.test import AsyncClient, override_settings

    async def fetch(client: Any) -> bytes:
        response = await client.get("/astream")
        body = b"".join([chunk async for chunk in response.streaming_content])
        await response.aclose() if hasattr(response, "aclose") else response.close()
        return body

    with fresh_observability(tracing_enabled=False, http_size_metrics=True) as obs, \
            override_settings(ROOT_URLCONF="tests.adapters.controls_urls"):
        assert asyncio.run(fetch(AsyncClient())) == b"abcde"
        get = {"method": "GET", "endpoint": "/astream", "status": "200"}
        assert sample_value("http_response_size_bytes_count", obs, **get) == 1
        assert sample_value("http_response_size_bytes_sum", obs, **get) == 5


def test_labels_on_the_exemplar_path() -> None:
    exemplar = {"trace_id": "ab" * 16, "span_id": "cd" * 8}
    with fresh_observability(tracing_enabled=False, access_log=False, exemplars=True,
                             http_labels={"app": "shop"}, http_label_values=ALLOWED,
                             http_label_callback=lambda info: {"tier": "pro"}) as obs:
        obs.metrics.exemplar_provider = lambda: exemplar
        state = http_state(obs)
        rp = start_request(state, "POST", "/pay", route="/pay")
        assert rp is not None
        rp.finish(201)
        labels = {"method": "POST", "endpoint": "/pay", "status": "201", "app": "shop",
                  "tier": "pro"}
        assert sample_value("http_requests_total", obs, **labels) == 1
        assert sample_value("http_request_duration_seconds_count", obs, **labels) == 1


def test_untracked_and_excluded_requests_have_no_span() -> None:
    for obs, client in _flask(excluded_methods=("OPTIONS",)):
        exporter = use_memory_tracer(obs)
        client.get("/ping")
        client.options("/orders/1")
        client.get("/orders/1")
        assert [span.name for span in exporter.get_finished_spans()] == [
            "GET /orders/<int:order_id>"]


def test_exposed_label_names_follow_the_settings() -> None:
    with fresh_observability(http_labels={"app": "shop"}, http_label_values=ALLOWED,
                             http_label_callback=tier_of, http_size_metrics=True) as obs:
        text = obs.render_metrics(None, None)[2].decode()
        assert re.search(r'http_requests_in_progress\{.*app=.*tier=', text) is None  # no series
        families = {m.name: m for m in obs.registry.collect()}
        assert "http_request_size_bytes" in families
        assert obs.metrics.http_requests_total.guard.labelnames == (
            "method", "endpoint", "status", "app", "tier")
        assert obs.metrics.http_requests_in_progress.guard.labelnames == (
            "method", "endpoint", "app", "tier")
