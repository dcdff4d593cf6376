"""A tiny Django project for the adapter tests (settings and URLconf in one module)."""

from __future__ import annotations

import asyncio

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import include, path

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = __name__
INSTALLED_APPS = ["mestres_observability.django"]
MIDDLEWARE = ["mestres_observability.django.ObservabilityMiddleware"]
MESTRES_OBSERVABILITY = {"configure_logging": False, "service_name": "django-tests"}
LOGGING_CONFIG = None

FAILURES: list[BaseException] = []


def order(request: HttpRequest, order_id: int = 0, item_id: int = 0) -> HttpResponse:
    if order_id == 500:
        exc = RuntimeError("boom")
        FAILURES.append(exc)
        raise exc
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405)
    return JsonResponse({"id": order_id})


async def aorder(request: HttpRequest, order_id: int) -> HttpResponse:
    await asyncio.sleep(0)
    return JsonResponse({"id": order_id})


def stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(iter([b"a", b"b", b"c"]))


def traced(request: HttpRequest) -> HttpResponse:
    from .traced_view import traced_work

    return JsonResponse(traced_work())


item_patterns = [path("items/<int:item_id>", order, name="item")]

urlpatterns = [
    path("orders/<int:order_id>", order, name="order"),
    path("async/<int:order_id>", aorder, name="aorder"),
    path("stream", stream, name="stream"),
    path("traced", traced, name="traced"),
    path("api/", include(item_patterns)),
    path("lib/", include("mestres_observability.django.urls")),
]
