"""mestres-observability: production-grade observability for Python web services.

One call at start-up::

    from mestres_observability import init_observability, track_order

    obs = init_observability(app, service_name="mestres-cafe-api")

    @track_order
    def create_order(cart): ...

gives Prometheus metrics at ``/metrics``, OpenTelemetry traces over OTLP, one
JSON log line per request and per business event, and health endpoints.
The names below are the public API; everything in ``_underscored`` modules is
private.
"""

from __future__ import annotations

from ._version import __version__
from .business import (
    record_order,
    record_payment,
    set_inventory_level,
    track_inventory_movement,
    track_order,
    track_payment,
    track_user_action,
)
from .config import ObservabilityConfig
from .errors import ConfigurationError, MetricConflictError, MissingExtraError, ObservabilityError
from .health import HealthRegistry, health_check
from .http import HttpRequestInfo, do_not_track
from .instrument import counted, timed, timer
from .jobs import job
from .logs import bind_context, get_logger, log_event, set_user_id
from .observability import Observability, get_observability, init_observability
from .tracing import span, traced

__all__ = [
    "ConfigurationError",
    "HealthRegistry",
    "HttpRequestInfo",
    "MetricConflictError",
    "MissingExtraError",
    "Observability",
    "ObservabilityConfig",
    "ObservabilityError",
    "__version__",
    "bind_context",
    "counted",
    "do_not_track",
    "get_logger",
    "get_observability",
    "health_check",
    "init_observability",
    "job",
    "log_event",
    "record_order",
    "record_payment",
    "set_inventory_level",
    "set_user_id",
    "span",
    "timed",
    "timer",
    "traced",
    "track_inventory_movement",
    "track_order",
    "track_payment",
    "track_user_action",
]
