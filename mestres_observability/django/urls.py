"""URL patterns of the library endpoints, at the configured paths.

``path("", include("mestres_observability.django.urls"))`` in your root
URLconf. Optional: :class:`~mestres_observability.django.ObservabilityMiddleware`
serves the same paths itself.
"""

from __future__ import annotations

from typing import Any

from django.urls import path  # type: ignore[import-untyped]

from .._endpoint import build_endpoints
from ..observability import get_observability
from . import views

__all__ = ["urlpatterns"]


def _patterns() -> list[Any]:
    cfg = get_observability().config
    return [path(p.lstrip("/"), views.respond, {"kind": ep.kind.name},
                 name=f"mestres-observability-{ep.kind.url_name}")
            for p, ep in build_endpoints(cfg, None).items()]


urlpatterns = _patterns()
