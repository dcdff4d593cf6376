"""Django views of the library endpoints (for ``include("mestres_observability.django.urls")``).

The middleware answers these paths before URL resolution, so the views only
run when the middleware is not installed.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]
from django.views.decorators.csrf import csrf_exempt  # type: ignore[import-untyped]

from ..http import bound_endpoint, http_state
from ..observability import get_observability
from .middleware import django_response, endpoint_request

__all__ = ["basic", "detailed", "liveness", "metrics", "readiness", "respond"]


@csrf_exempt  # type: ignore[untyped-decorator]  # RUM beacons carry no CSRF token
def respond(request: HttpRequest, kind: str) -> HttpResponse:
    """Serve library endpoint ``kind`` for ``request`` as a Django response.

    Exempt from CSRF: the only kind taking a ``POST`` (the RUM endpoint) is
    written to by browsers' beacons, which carry no token; it is protected by
    its origin check, rate limits and validation instead.
    """
    obs = get_observability()
    endpoint = bound_endpoint(obs, kind, request.path_info)
    return django_response(endpoint.dispatch(endpoint_request(request, http_state(obs).trusted)))


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
