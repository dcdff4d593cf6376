"""The Django route option of ``do_not_track`` (issue 16, per-request controls): a route
(or every route of an ``include()``) with ``{DO_NOT_TRACK_KWARG: True}`` in ``path()``'s extra
keywords adds nothing to the HTTP metrics and writes no access-log line, the view never sees
the keyword, and it works when no view in the process is marked by the decorator (the
middleware finds the option by reading the URLconf once)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

from mestres_observability import http
from mestres_observability.testing import fresh_observability
from tests._support import require_module
from tests.adapters.conftest import LogCapture, series

django = require_module("django")

URLCONF = "tests.adapters.route_option_urls"


@pytest.fixture
def no_marked_views() -> Iterator[None]:
    """As in a process where no view was decorated (other test modules mark some)."""
    from django.apps import apps

    from mestres_observability import _current, get_observability

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.adapters.django_settings")
    if not apps.ready:
        previous = get_observability()
        django.setup()
        _current.swap(previous).shutdown(timeout=1.0)
    marked = http._marked[0]
    http._marked[0] = 0
    try:
        yield
    finally:
        http._marked[0] = marked


@pytest.fixture
def client(no_marked_views: None) -> Iterator[tuple[Any, Any]]:
    from django.test import Client, override_settings

    with fresh_observability(tracing_enabled=False) as obs, override_settings(
            ROOT_URLCONF=URLCONF):
        yield obs, Client(raise_request_exception=True)


def test_a_route_and_an_include_opt_out(client: tuple[Any, Any], logs: LogCapture) -> None:
    obs, c = client
    assert c.get("/ping").content == b"pong"  # the view got no extra keyword
    assert c.get("/internal/stats/cpu").content == b"cpu"
    assert c.get("/orders/7").content == b"order"
    assert series(obs, "http_requests_total") == [
        {"method": "GET", "endpoint": "/orders/<int:order_id>", "status": "200"}]
    assert [line["endpoint"] for line in logs.lines()] == ["/orders/<int:order_id>"]


def test_the_route_option_under_asgi(no_marked_views: None) -> None:
    from django.test import AsyncClient, override_settings

    with fresh_observability(tracing_enabled=False) as obs, override_settings(
            ROOT_URLCONF=URLCONF):
        c = AsyncClient(raise_request_exception=True)
        assert asyncio.run(c.get("/aping")).content == b"apong"
        assert asyncio.run(c.get("/orders/1")).content == b"order"
        assert {s["endpoint"] for s in series(obs, "http_requests_total")} == {
            "/orders/<int:order_id>"}


def test_without_the_option_every_route_is_measured(no_marked_views: None) -> None:
    from django.test import Client, override_settings

    from mestres_observability.django.middleware import _has_route_option

    assert _has_route_option(URLCONF) is True
    assert _has_route_option("tests.adapters.trace_headers_urls") is False
    with fresh_observability(tracing_enabled=False) as obs, override_settings(
            ROOT_URLCONF="tests.adapters.trace_headers_urls"):
        Client().get("/nowhere")
        assert series(obs, "http_requests_total") == [
            {"method": "GET", "endpoint": "<unmatched>", "status": "404"}]
