"""Django views of the library endpoints (for ``include("mestres_observability.django.urls")``).

The middleware answers these paths before URL resolution, so the views only
run when the middleware is not installed.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]

from ..http import serve_endpoint
from ..observability import get_observability

__all__ = ["basic", "detailed", "liveness", "metrics", "readiness", "respond"]


def respond(request: HttpRequest, kind: str) -> HttpResponse:
    """Serve library endpoint ``kind`` for ``request`` as a Django response."""
    meta = request.META
    status, headers, body = serve_endpoint(
        get_observability(), kind, request.method or "GET", accept=meta.get("HTTP_ACCEPT"),
        accept_encoding=meta.get("HTTP_ACCEPT_ENCODING"),
        authorization=meta.get("HTTP_AUTHORIZATION"),
    )
    response = HttpResponse(body, status=status)
    for k, v in headers:
        response[k] = v
    return response


def metrics(request: HttpRequest) -> HttpResponse:
    """``/metrics``."""
    return respond(request, "metrics")


def basic(request: HttpRequest) -> HttpResponse:
    """``/health``."""
    return respond(request, "basic")


def liveness(request: HttpRequest) -> HttpResponse:
    """``/health/liveness``."""
    return respond(request, "liveness")


def readiness(request: HttpRequest) -> HttpResponse:
    """``/health/readiness``."""
    return respond(request, "readiness")


def detailed(request: HttpRequest) -> HttpResponse:
    """``/health/detailed``."""
    return respond(request, "detailed")
