"""URLconf of the Django route-option tests (tests/adapters/test_django_route_option.py):
no view here is marked by ``do_not_track``; two routes opt out through ``path()``'s extra
keywords, one directly and one through an ``include()``."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from mestres_observability.django import DO_NOT_TRACK_KWARG


def order(request: HttpRequest, order_id: int) -> HttpResponse:
    return HttpResponse(b"order")


def ping(request: HttpRequest) -> HttpResponse:  # an extra keyword would raise TypeError
    return HttpResponse(b"pong")


async def aping(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"apong")


def stats(request: HttpRequest, kind: str) -> HttpResponse:
    return HttpResponse(kind.encode())


internal = [path("stats/<str:kind>", stats)]

urlpatterns = [
    path("orders/<int:order_id>", order),
    path("ping", ping, {DO_NOT_TRACK_KWARG: True}),
    path("aping", aping, {DO_NOT_TRACK_KWARG: True}),
    path("internal/", include(internal), {DO_NOT_TRACK_KWARG: True}),
]
