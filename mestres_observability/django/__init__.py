"""Django adapter: an installable app plus :class:`ObservabilityMiddleware`.

Settings::

    INSTALLED_APPS = [..., "mestres_observability.django"]
    MIDDLEWARE = ["mestres_observability.django.ObservabilityMiddleware", ...]  # first
    MESTRES_OBSERVABILITY = {"service_name": "mestres-cafe-api"}

The app's ``ready()`` calls :func:`~mestres_observability.init_observability`
with ``MESTRES_OBSERVABILITY``. The middleware serves the library endpoints
itself; including ``mestres_observability.django.urls`` is optional.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["DO_NOT_TRACK_KWARG", "ObservabilityMiddleware"]

#: The route option of :func:`~mestres_observability.do_not_track` on Django: an extra
#: keyword of ``path()`` or ``re_path()``, ``path("ping", views.ping, {DO_NOT_TRACK_KWARG:
#: True})``, or of an ``include()`` for every route in it. The middleware takes it out of
#: the view's keyword arguments, so the view never sees it.
DO_NOT_TRACK_KWARG = "mestres_observability_do_not_track"

if TYPE_CHECKING:
    from .middleware import ObservabilityMiddleware


def __getattr__(name: str) -> Any:
    # imported lazily: Django loads this package before settings are ready
    if name == "ObservabilityMiddleware":
        from .middleware import ObservabilityMiddleware

        return ObservabilityMiddleware
    raise AttributeError(name)
