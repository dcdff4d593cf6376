"""What a new user trips over with real frameworks (issue 11): views returning HTTP
responses under ``@track_order``, and ``@track_order`` put above the route decorator."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import pytest

from mestres_observability import traced, track_order, track_payment
from mestres_observability.testing import fresh_observability, sample_value
from tests._support import require_module

ORDER = {"id": 7, "status": "paid", "total_amount": 19.9,
         "items": [{"product_id": "espresso", "quantity": 2}]}


def _recorded(obs: Any) -> None:
    assert sample_value("orders_total", obs, status="paid") == 1
    assert sample_value("revenue_total", obs, currency="BRL") == pytest.approx(19.9)
    assert sample_value("products_sold_total", obs, product_id="espresso") == 2
    assert sample_value("mestres_observability_errors_total", obs, component="business") == 0


# ---------------------------------------------------------------- views returning responses
def test_flask_views_returning_json_responses_record_the_order() -> None:
    flask = require_module("flask")
    app = flask.Flask(__name__)

    @app.post("/jsonify")
    @track_order
    def with_jsonify() -> Any:
        return flask.jsonify(ORDER), 201

    @app.post("/response")
    @track_order
    def with_response() -> Any:
        return flask.Response(json.dumps(ORDER), status=201, mimetype="application/json")

    for path in ("/jsonify", "/response"):
        with fresh_observability() as obs:
            assert app.test_client().post(path).status_code == 201
            _recorded(obs)


def test_django_view_returning_json_response_records_the_order() -> None:
    require_module("django")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.adapters.django_settings")
    from django.http import JsonResponse

    @track_order
    def view(request: Any) -> Any:
        return JsonResponse(ORDER, status=201)

    with fresh_observability() as obs:
        assert view(None).status_code == 201
        _recorded(obs)


def test_starlette_endpoint_returning_json_response_records_the_order() -> None:
    require_module("starlette")
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    @track_order
    async def create(request: Any) -> Any:
        return JSONResponse(ORDER, status_code=201)

    @track_payment
    async def pay(request: Any) -> Any:
        return JSONResponse({"id": "p-1", "amount": 19.9, "method": "pix", "status": "approved"})

    app = Starlette(routes=[Route("/orders", create, methods=["POST"]),
                            Route("/payments", pay, methods=["POST"])])
    with fresh_observability() as obs, TestClient(app) as client:
        assert client.post("/orders").status_code == 201
        assert client.post("/payments").status_code == 200
        _recorded(obs)
        assert sample_value("payment_amount_total", obs, method="pix", status="approved",
                            currency="BRL") == pytest.approx(19.9)


# ---------------------------------------------------------------- decorator order
def _route_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if "already registered as" in str(w.message)]


def test_track_order_above_a_flask_route_warns_at_decoration() -> None:
    flask = require_module("flask")
    from tests.adapters import first_hour_apps as apps

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        app = apps.flask_app_decorated_in_the_wrong_order(flask)
    (text,) = _route_warnings(record)
    assert "create_order() is already registered as endpoint 'create_order' of Flask app" in text
    assert "@track_order was applied above the route decorator" in text
    assert record[0].filename.endswith("first_hour_apps.py")  # points at the user's line
    with fresh_observability() as obs:  # what the warning says: nothing is recorded
        app.test_client().post("/orders")
        assert sample_value("orders_total", obs, status="paid") == 0


def test_track_order_above_a_blueprint_route_warns() -> None:
    flask = require_module("flask")
    from tests.adapters import first_hour_apps as apps

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        apps.blueprint_decorated_in_the_wrong_order(flask)
    (text,) = _route_warnings(record)
    assert "a route of blueprint 'shop'" in text


def test_track_order_above_a_fastapi_route_warns_at_decoration() -> None:
    fastapi = require_module("fastapi")
    from tests.adapters import first_hour_apps as apps

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        apps.fastapi_app_decorated_in_the_wrong_order(fastapi)
    texts = _route_warnings(record)
    assert len(texts) == 2
    assert "create_order() is already registered as route '/orders'" in texts[0]
    assert "pay() is already registered as route '/payments'" in texts[1]
    assert "@track_payment" in texts[1]


def test_the_right_order_does_not_warn() -> None:
    flask = require_module("flask")
    fastapi = require_module("fastapi")
    from tests.adapters import first_hour_apps as apps

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        app = apps.flask_app_in_the_right_order(flask)
        apps.fastapi_app_in_the_right_order(fastapi)

        @traced
        def helper() -> None: ...
    assert _route_warnings(record) == []
    with fresh_observability() as obs:
        app.test_client().post("/orders")
        assert sample_value("orders_total", obs, status="paid") == 1


# ---------------------------------------------------------------- exceptions and OpenTelemetry
def _chain(depth: int) -> None:
    try:
        if depth:
            _chain(depth - 1)
        else:
            raise KeyError("k" * 500)
    except Exception as exc:
        raise RuntimeError("x" * 3000) from exc


def test_a_raising_request_logs_nothing_from_opentelemetry(
        caplog: pytest.LogCaptureFixture) -> None:
    """issue 11 (6): the SERVER span's exception event, and the long path and Host the client
    sent, stay within the span attribute limit, so the SDK never warns."""
    flask = require_module("flask")
    from mestres_observability.flask import instrument
    from mestres_observability.testing import captured_spans

    app = flask.Flask(__name__)

    @app.get("/boom/<path:rest>")
    def boom(rest: str) -> Any:
        _chain(6)

    with fresh_observability() as obs, captured_spans() as spans:
        instrument(app, obs)
        client = app.test_client()
        response = client.get("/boom/" + "p" * 3000, headers={"Host": ("h" * 60 + ".") * 20 + "test"})
        assert response.status_code == 500
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []
    (server,) = [s for s in spans.spans if s.name == "GET /boom/<path:rest>"]
    (event,) = server.events
    assert event.name == "exception"
    assert dict(event.attributes or {})["exception.type"] == "RuntimeError"


# ---------------------------------------------------------------- gunicorn without its config
GUNICORN_WARNING = ("running under gunicorn without multiprocess mode",
                    "gunicorn -c python:mestres_observability.gunicorn")
UVICORN_WARNING = ("running under uvicorn --workers 4 without multiprocess mode",
                   "PROMETHEUS_MULTIPROC_DIR", "prepare_directory()")


@pytest.mark.parametrize(("software", "workers", "multiprocess", "warning"), [
    ("gunicorn/23.0.0", None, False, GUNICORN_WARNING),
    ("gunicorn/23.0.0", None, True, None),  # the config module (or the variable) was used
    ("uvicorn", None, False, None),  # one uvicorn process
    (None, None, False, None),
    (None, 4, False, UVICORN_WARNING),  # a worker of uvicorn --workers 4
    (None, 4, True, None),  # PROMETHEUS_MULTIPROC_DIR was set
])
def test_under_several_workers_without_multiprocess_mode_the_adapter_warns_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        software: str | None, workers: int | None, multiprocess: bool,
        warning: tuple[str, ...] | None) -> None:
    flask = require_module("flask")
    from mestres_observability import _adapter

    if software is None:
        monkeypatch.delenv("SERVER_SOFTWARE", raising=False)
    else:
        monkeypatch.setenv("SERVER_SOFTWARE", software)
    monkeypatch.setattr(_adapter, "uvicorn_worker_count", lambda: workers)
    monkeypatch.setattr(_adapter, "is_multiprocess", lambda: multiprocess)
    monkeypatch.setattr(_adapter, "_warned_gunicorn", [False])
    monkeypatch.setattr(_adapter, "_warned_uvicorn", [False])
    with fresh_observability():
        from mestres_observability.flask import instrument

        instrument(flask.Flask("a"))
        instrument(flask.Flask("b"))
    found = [r.getMessage() for r in caplog.records
             if "without multiprocess mode" in r.getMessage()]
    assert len(found) == (0 if warning is None else 1), found
    if warning is not None:
        start, *hints = warning
        assert found[0].startswith(start)
        for hint in hints:
            assert hint in found[0]
