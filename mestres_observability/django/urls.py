"""URL patterns of the library endpoints, at the configured paths.

``path("", include("mestres_observability.django.urls"))`` in your root
URLconf. Optional: :class:`~mestres_observability.django.ObservabilityMiddleware`
serves the same paths itself.
"""

from __future__ import annotations

from typing import Any

from django.urls import path  # type: ignore[import-untyped]

from ..observability import get_observability
from . import views

__all__ = ["urlpatterns"]


def _patterns() -> list[Any]:
    cfg = get_observability().config
    out = []
    for p, view, name in (
        (cfg.metrics_path if cfg.metrics_port is None else None, views.metrics, "metrics"),
        (cfg.health_path, views.basic, "health"),
        (cfg.health_liveness_path, views.liveness, "health-liveness"),
        (cfg.health_readiness_path, views.readiness, "health-readiness"),
        (cfg.health_detailed_path, views.detailed, "health-detailed"),
    ):
        if p:
            out.append(path(p.lstrip("/"), view, name=f"mestres-observability-{name}"))
    return out


urlpatterns = _patterns()
