"""Framework detection and wiring for ``init_observability(app)`` (part of the public face).

The app's framework is read from its type (its class or a base class named
``Flask`` in ``flask``, ``Starlette`` in ``starlette``; anything from
``django.`` is refused with the way Django is wired instead), without
importing any framework. The adapter module that wires it is found by name,
the way OpenTelemetry finds instrumentations: the face never imports an
adapter module statically, so the adapters sit above it in the layers and
import the face, never the other way round.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:  # type-only
    from .observability import Observability

__all__ = ["ADAPTERS", "check_app_type", "framework_of", "instrument_app", "wire_integrations"]

#: framework -> the adapter module whose ``instrument(app, obs)`` wires it.
ADAPTERS: dict[str, str] = {
    "flask": "mestres_observability.flask",
    "starlette": "mestres_observability.fastapi",
}


def framework_of(app: Any) -> str | None:
    """``"flask"``, ``"starlette"`` (FastAPI included), ``"django"`` or ``None``, from ``app``'s type."""
    for klass in type(app).__mro__:
        mod = klass.__module__
        if klass.__name__ == "Flask" and mod.startswith("flask"):
            return "flask"
        if klass.__name__ == "Starlette" and mod.startswith("starlette"):
            return "starlette"
        if mod.startswith("django."):
            return "django"
    return None


def check_app_type(app: Any) -> None:
    """Raise :class:`ConfigurationError` unless ``app`` is ``None``, a Flask or a Starlette app."""
    if app is None:
        return
    kind = framework_of(app)
    if kind == "django":
        raise ConfigurationError(
            "app", type(app).__name__,
            "Django is wired by its installed app and middleware, not by an app object: add "
            "'mestres_observability.django' to INSTALLED_APPS and "
            "'mestres_observability.django.ObservabilityMiddleware' to MIDDLEWARE, then call "
            "init_observability() without an app",
        )
    if kind is None:
        raise ConfigurationError(
            "app", type(app).__name__,
            "expected a Flask app or a Starlette/FastAPI app (or None)",
        )


def instrument_app(app: Any, obs: Observability | None = None) -> None:
    """Wire a Flask or Starlette/FastAPI app (once; later calls change nothing)."""
    kind = framework_of(app)
    module = ADAPTERS.get(kind) if kind is not None else None
    if module is None:
        check_app_type(app)
        return
    importlib.import_module(module).instrument(app, obs)


def wire_integrations(obs: Observability) -> None:
    """Instrument the integrations whose library this process imported already (at init).

    Celery (``celery_auto_instrument``): when ``celery`` is in ``sys.modules``
    (a worker, or a web process that enqueues tasks), its signals are
    connected. Nothing is imported that was not imported before. Never raises:
    a failure is counted under the integration's component.
    """
    cfg = obs.config
    if not cfg.enabled:
        return
    if cfg.celery_auto_instrument and "celery" in sys.modules:
        try:
            importlib.import_module("mestres_observability.celery").auto_instrument(obs)
        except Exception as exc:
            obs.faults.report("celery", "auto_instrument", "instrumenting Celery failed", exc)
