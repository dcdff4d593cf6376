"""Django ``AppConfig``: initialises the library from ``settings.MESTRES_OBSERVABILITY``."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig  # type: ignore[import-untyped]

__all__ = ["MestresObservabilityConfig"]


class MestresObservabilityConfig(AppConfig):  # type: ignore[misc]
    """Runs ``init_observability(**settings.MESTRES_OBSERVABILITY)`` in ``ready()``.

    Without the setting, an instance you initialised yourself (e.g. in
    ``wsgi.py`` before Django starts) is kept; otherwise the library starts
    from ``MESTRES_OBS_*``/``OTEL_*`` variables and defaults.
    """

    name = "mestres_observability.django"
    label = "mestres_observability"
    verbose_name = "mestres-observability"
    default = True

    def ready(self) -> None:
        """Initialise the library, start the separate metrics listener if configured and
        instrument the database connections and caches (``db_metrics``)."""
        from django.conf import settings  # type: ignore[import-untyped]

        from .._adapter import setup
        from ..observability import get_observability, init_observability

        options: Any = getattr(settings, "MESTRES_OBSERVABILITY", None)
        current = get_observability()
        if options is None and not current.is_default:
            obs = current
        else:
            obs = init_observability(**dict(options or {}))
        setup(obs, "django")
        from ..db import instrument_django

        instrument_django(obs)  # statement and cache metrics (db_metrics)
