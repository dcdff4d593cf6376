"""The :class:`Observability` handle, :func:`init_observability` and the current instance.

One instance is *current* at any time. A default one exists before
:func:`init_observability` is called, so decorators applied at import time work
and record into whatever instance is current when the decorated function runs.
The default instance uses built-in defaults (no environment read, so a bad
variable never fails at import) and installs nothing global: no logging
configuration, no tracer provider.

Calling :func:`init_observability` again (tests, app factories, reloads) builds
a fresh instance with its own :class:`~prometheus_client.CollectorRegistry`, so
a duplicate-registration error cannot happen; health checks registered on the
previous instance carry over.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry

from . import _current
from ._current import get_observability
from ._fault import FaultReporter
from ._forksafe import renew_locks_after_fork
from ._wiring import check_app_type, instrument_app, wire_integrations
from .config import ObservabilityConfig
from .errors import MetricConflictError
from .exposition import MetricsResponse, render_metrics
from .metrics import LibraryMetrics

if TYPE_CHECKING:
    import structlog
    from opentelemetry.trace import Tracer

    from .health import HealthRegistry
    from .tracing import TracingHandle

__all__ = ["Observability", "get_observability", "init_observability"]

_log = logging.getLogger("mestres_observability")


class Observability:
    """The handle returned by :func:`init_observability`.

    Attributes:
        config: the effective :class:`~mestres_observability.ObservabilityConfig`.
        registry: this instance's own ``CollectorRegistry``.
        metrics: the library's metrics (:class:`~mestres_observability.metrics.LibraryMetrics`).
        health: the :class:`~mestres_observability.HealthRegistry`.
    """

    def __init__(
        self,
        config: ObservabilityConfig | None = None,
        *,
        install_globals: bool = True,
        previous: Observability | None = None,
        registry: CollectorRegistry | None = None,
        suspend_previous: bool = False,
    ) -> None:
        """Build an instance; ``init_observability`` is the usual way (it also makes it current).

        Args:
            config: the settings (default: built-in defaults).
            install_globals: install the process-wide parts (log output, the
                tracer provider and its span pipeline); ``False`` for the
                default instance.
            previous: the instance this one replaces (its health checks carry over).
            registry: a registry to use instead of a new one.
            suspend_previous: leave the span pipeline that was active running (it
                resumes when its instance is made current again) instead of retiring it.
        """
        from .health import HealthRegistry
        from .system import register_system_collectors
        from .tracing import setup_tracing

        self.config = config if config is not None else ObservabilityConfig()
        self.is_default = not install_globals
        self.faults = FaultReporter()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        from . import multiprocess as mp

        # multiprocess mode (PROMETHEUS_MULTIPROC_DIR): values live in per-process files
        mp_dir = (mp.check_environment(self.config) if install_globals
                  else mp.multiprocess_dir() if mp.is_multiprocess() else None)
        # an instance nobody initialised (the default one) writes no service_info to the
        # shared files: a phantom service_info{service="unknown_service"} otherwise
        mp_maker = mp.MultiprocessMetricMaker(
            discard=() if install_globals else (self.config.metric_name("service_info"),)
        ) if mp_dir is not None else None
        if mp_maker is not None:
            self.metrics = LibraryMetrics(self.registry, self.config, self.faults, maker=mp_maker)
        else:
            self.metrics = LibraryMetrics(self.registry, self.config, self.faults)
        self._closed = False
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")  # gunicorn --preload: fresh in a forked child
        self._expose_global = self.config.expose_global_registry
        if self._expose_global:
            self._check_global_registry()
        if self.config.enabled:
            register_system_collectors(self.registry, self.config, self.faults)
            from .runtime import register_runtime_collectors

            register_runtime_collectors(self.registry, self.config, self.faults,
                                        multiprocess=mp_dir is not None,
                                        write_files=install_globals)
        self._multiprocess = (
            mp.build_collector(mp_dir, self.registry, self.config, self.faults, mp_maker)
            if mp_dir is not None and mp_maker is not None else None
        )
        self._owns_logging = bool(install_globals and self.config.configure_logging)
        if self._owns_logging:
            from .logs import configure_logging

            configure_logging(self.config, self.faults)
        self._tracing: TracingHandle = setup_tracing(
            self.config, self.metrics, self.faults, install_globals=install_globals,
            retire_previous=not suspend_previous,
        )
        self.health: HealthRegistry = HealthRegistry(
            self.config, self.metrics, self.faults,
            inherit=previous.health if previous is not None else None,
        )

    # ------------------------------------------------------------------ signals
    @property
    def tracer(self) -> Tracer:
        """The OpenTelemetry tracer of this instance (a no-op tracer when tracing is off)."""
        return self._tracing.tracer

    @property
    def tracing(self) -> TracingHandle:
        """Tracing state: provider, processors, exporter."""
        return self._tracing

    @property
    def logger(self) -> structlog.typing.FilteringBoundLogger:
        """The library's structlog logger, bound to the request context."""
        from .logs import get_logger

        logger: structlog.typing.FilteringBoundLogger = get_logger("mestres_observability")
        return logger

    @property
    def closed(self) -> bool:
        """True once :meth:`shutdown` ran."""
        return self._closed

    # ------------------------------------------------------------------ metrics
    def counter(self, name: str, documentation: str = "", labels: Sequence[str] = ()) -> Any:
        """A user counter on this instance's registry (same definition: same object).

        ``name`` may end in ``_total``; it is exposed as ``<name>_total``.
        Raises :class:`~mestres_observability.errors.MetricConflictError` on a
        conflicting definition.
        """
        return self.metrics.user_metric("counter", name, documentation, labels)

    def gauge(self, name: str, documentation: str = "", labels: Sequence[str] = ()) -> Any:
        """A user gauge on this instance's registry (same definition: same object)."""
        return self.metrics.user_metric("gauge", name, documentation, labels)

    def histogram(
        self,
        name: str,
        documentation: str = "",
        labels: Sequence[str] = (),
        buckets: Sequence[float] | None = None,
    ) -> Any:
        """A user histogram (default buckets: ``http_buckets``); same definition: same object."""
        return self.metrics.user_metric("histogram", name, documentation, labels, buckets=buckets)

    def set_active_connections(self, value: float | Callable[[], float]) -> None:
        """Set ``active_connections`` directly or from a callback read at scrape time."""
        self.metrics.set_active_connections(value)

    def metric_sources(self) -> list[Any]:
        """What ``/metrics`` exposes: this registry, plus the global one when asked.

        In multiprocess mode: the collector of every worker's files plus this
        process's own scrape-time families (see :mod:`mestres_observability.multiprocess`).
        """
        if self._multiprocess is not None:
            return [self._multiprocess]
        sources: list[Any] = [self.registry]
        if self._expose_global:
            sources.append(REGISTRY)
        return sources

    def render_metrics(
        self, accept: str | None = None, accept_encoding: str | None = None
    ) -> MetricsResponse:
        """Status, headers and body of one ``/metrics`` scrape (see :func:`render_metrics`)."""
        return render_metrics(
            self.metric_sources(), accept, accept_encoding,
            created=self.config.created_series, faults=self.faults,
        )

    def _check_global_registry(self) -> None:
        from ._compat import registered_names

        ours = registered_names(self.registry)
        theirs = registered_names(REGISTRY)
        both = sorted(ours & theirs)
        if both:
            raise MetricConflictError(
                "expose_global_registry: prometheus_client's global REGISTRY already holds "
                f"{', '.join(both[:5])}, which this library exposes too. Rename your metric "
                "or set a namespace (e.g. MESTRES_OBS_NAMESPACE=shop)."
            )

    # ------------------------------------------------------------------ lifecycle
    def shutdown(self, timeout: float | None = None) -> None:
        """Flush and stop this instance; idempotent, bounded by ``shutdown_timeout``.

        Readiness starts draining first, then spans are flushed (at most
        ``timeout`` seconds, default ``config.shutdown_timeout``), then the
        health executor stops. Never raises.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        budget = self.config.shutdown_timeout if timeout is None else timeout
        for step, component in (
            (self.health.start_draining, "health"),
            (lambda: self._tracing.shutdown(budget), "tracing"),
            (self.health.close, "health"),
        ):
            try:
                step()
            except Exception as exc:
                self.faults.report(component, "shutdown", "error during shutdown", exc)

    def _activate(self) -> None:
        """Re-point the process-wide parts at this instance (called by ``_current.swap``).

        The tracer provider's span pipeline feeds this instance's exporter
        again, and, if this instance configured logging, the log output takes
        its service name, redaction and fault counter back. The default
        instance installs nothing process-wide, so it changes nothing. Never raises.
        """
        if self.is_default or self._closed:
            return
        try:
            self._tracing.activate()
        except Exception as exc:
            self.faults.report("tracing", "activate", "re-activating the instance failed", exc)
        if self._owns_logging:
            try:
                from .logs import configure_logging, configured_for

                if not configured_for(self.faults):
                    configure_logging(self.config, self.faults)
            except Exception as exc:
                self.faults.report("logs", "activate", "re-activating the instance failed", exc)

    def _retire(self) -> None:
        """Stop a replaced instance without touching process-wide state."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._tracing.retire()
        except Exception as exc:
            self.faults.report("tracing", "retire", "error retiring instance", exc)
        try:
            self.health.close()
        except Exception as exc:
            self.faults.report("health", "retire", "error retiring instance", exc)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("default" if self.is_default else "active")
        return f"<Observability service={self.config.service_name!r} {state}>"


# ---------------------------------------------------------------------- current instance
def _default_instance() -> Observability:
    return Observability(ObservabilityConfig(), install_globals=False)


_current.set_default_factory(_default_instance)


def _start(cfg: ObservabilityConfig, *, suspend_previous: bool = False,
           read_env: bool = False) -> Observability:
    """Build an instance from ``cfg``, make it current, then retire (or suspend) the previous one.

    ``suspend_previous`` (``testing.fresh_observability``): the previous
    instance keeps its span pipeline and health executor, so making it current
    again (:func:`mestres_observability._current.swap`) resumes it as it was.
    """
    with _current.lock:
        previous = _current.peek()
        obs = Observability(cfg, install_globals=True, previous=previous,
                            suspend_previous=suspend_previous)
        _current.swap(obs)
        if not suspend_previous and previous is not None and not previous.closed:
            previous._retire()
    if read_env:
        for text in ObservabilityConfig.unknown_env_settings():
            _log.warning(text)
    # only what differs from the defaults (plus the service identity), secrets redacted
    defaults = ObservabilityConfig().as_dict()
    changed = {
        k: v for k, v in cfg.as_dict().items()
        if k in ("service_name", "service_version", "environment")
        or k not in defaults or defaults[k] != v
    }
    _log.info(
        "mestres_observability initialised",
        extra={"settings": changed, "service": cfg.service_name},
    )
    return obs


def init_observability(
    app: Any = None,
    *,
    service_name: str | None = None,
    config: ObservabilityConfig | None = None,
    **settings: Any,
) -> Observability:
    """Set up metrics, traces, logs and health for this process, and wire ``app``.

    Args:
        app: a Flask app or a Starlette/FastAPI app to instrument (optional).
            Django is wired by ``INSTALLED_APPS`` and the middleware instead.
        service_name: shortcut for the ``service_name`` setting.
        config: a complete :class:`ObservabilityConfig`, used as given (no
            environment read); ``settings`` apply on top.
        **settings: any :class:`ObservabilityConfig` field.

    Returns:
        The new current :class:`Observability`.

    Raises:
        ConfigurationError: a setting or ``MESTRES_OBS_*``/``OTEL_*`` variable is invalid.
        MissingExtraError: a feature was requested whose extra is not installed.

    Safe to call again: the previous instance is retired (its health checks
    carry over) and a fresh registry is used, so there is never a
    duplicate-registration error.
    """
    if service_name is not None:
        settings["service_name"] = service_name
    if config is not None:
        cfg = config.replace(**settings) if settings else config
    else:
        cfg = ObservabilityConfig.from_env(**settings)
    check_app_type(app)
    obs = _start(cfg, read_env=config is None)
    wire_integrations(obs)
    if app is not None:
        instrument_app(app, obs)
    return obs
