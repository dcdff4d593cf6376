"""The library's Prometheus metrics, built per instance on its own registry.

Every metric the library exposes is declared once in
:mod:`mestres_observability.catalogue` (name, type, unit, labels, meaning);
:class:`LibraryMetrics` builds those it owns (:data:`LIBRARY_METRICS`) on an
:class:`~prometheus_client.CollectorRegistry` owned by one
:class:`~mestres_observability.Observability`, so a second instance can never
hit a duplicate registration. The metrics reference page of the docs is
generated from the same catalogue (:func:`metrics_reference`).

Metric and label names are public API: they change only with a major version,
after a deprecation period in which both names are exposed.

Labels whose values come from data go through a
:class:`~mestres_observability.cardinality.LabelGuard`.

Exemplars reach tracing only through :attr:`LibraryMetrics.exemplar_provider`,
a callable that tracing installs; metrics never import tracing.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ._fault import FaultReporter
from ._forksafe import renew_locks_after_fork
from .cardinality import LabelGuard
from .catalogue import MetricDef, entries, is_enabled, lookup, reference_table
from .config import ObservabilityConfig
from .errors import MetricConflictError

__all__ = [
    "CURRENT",
    "HTTP_REQUEST_FAMILIES",
    "LIBRARY_METRICS",
    "GuardedCounter",
    "GuardedGauge",
    "GuardedHistogram",
    "LibraryMetrics",
    "MetricDef",
    "metrics_reference",
]

Kind = Literal["counter", "gauge", "histogram"]
ExemplarProvider = Callable[[], "dict[str, str] | None"]


class _Current:
    """Type of :data:`CURRENT`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "CURRENT"


#: Default ``exemplar=`` of :meth:`GuardedCounter.inc` and
#: :meth:`GuardedHistogram.observe`: ask the exemplar provider (the current span).
CURRENT: Any = _Current()


#: The HTTP request families whose series also carry the ``http_labels`` and
#: ``http_label_values`` labels (after their own, in that order).
HTTP_REQUEST_FAMILIES: frozenset[str] = frozenset((
    "http_requests_total", "http_request_duration_seconds", "http_requests_in_progress",
    "http_request_size_bytes", "http_response_size_bytes",
))
#: The metrics :class:`LibraryMetrics` builds: the ``"library"`` entries of
#: :data:`~mestres_observability.catalogue.CATALOGUE`, in registration order.
LIBRARY_METRICS: tuple[MetricDef, ...] = entries(source="library")


def _make(
    kind: Kind,
    name: str,
    doc: str,
    labels: Sequence[str],
    registry: CollectorRegistry,
    *,
    buckets: Sequence[float] | None = None,
    multiprocess_mode: str = "all",
) -> Any:
    if kind == "counter":
        return Counter(name, doc, labels, registry=registry)
    if kind == "gauge":
        return Gauge(name, doc, labels, registry=registry,
                     multiprocess_mode=cast(Any, multiprocess_mode))
    return Histogram(name, doc, labels, registry=registry, buckets=tuple(buckets or ()))


class _Inert:
    """The metric of a family its setting turns off: registered nowhere, records nothing."""

    __slots__ = ()

    def labels(self, *values: object, **kw: object) -> _Inert:
        return self

    def inc(self, amount: float = 1.0, exemplar: object = None) -> None:
        return None

    def dec(self, amount: float = 1.0) -> None:
        return None

    def set(self, value: float) -> None:
        return None

    def observe(self, amount: float, exemplar: object = None) -> None:
        return None

    def set_function(self, f: Callable[[], float]) -> None:
        return None


_INERT = _Inert()


class _Family:
    __slots__ = ("_guard", "_metric", "_owner", "definition")

    def __init__(self, owner: LibraryMetrics, definition: MetricDef, metric: Any,
                 guard: LabelGuard) -> None:
        self._owner = owner
        self._metric = metric
        self._guard = guard
        self.definition = definition

    @property
    def metric(self) -> Any:
        """The underlying prometheus_client metric."""
        return self._metric

    @property
    def guard(self) -> LabelGuard:
        """The cardinality guard; ``guard.child(values_tuple)`` is :meth:`child` without
        the argument packing, for per-request paths."""
        return self._guard

    def child(self, *values: object) -> Any | None:
        """The prometheus_client child for ``values`` through the cardinality guard."""
        return self._guard.child(values)


class GuardedCounter(_Family):
    """A labelled counter behind the cardinality guard, with exemplars."""

    __slots__ = ()

    def inc(self, values: tuple[object, ...] = (), amount: float = 1.0,
            exemplar: dict[str, str] | object | None = CURRENT) -> None:
        """Add ``amount`` (finite, >= 0: callers validate) to the series for ``values``.

        ``exemplar``: labels of the exemplar to attach; by default the current
        span's (see :meth:`LibraryMetrics.current_exemplar`), ``None`` for none.
        Callers recording several series in one call read it once and pass it.
        """
        child = self._guard.child(values) if values else self._metric
        if child is None:
            return
        if exemplar is CURRENT:
            exemplar = self._owner.current_exemplar()
        if exemplar:
            child.inc(amount, exemplar)
        else:
            child.inc(amount)


class GuardedHistogram(_Family):
    """A labelled histogram behind the cardinality guard, with exemplars."""

    __slots__ = ()

    def observe(self, values: tuple[object, ...], amount: float,
                exemplar: dict[str, str] | object | None = CURRENT) -> None:
        """Observe ``amount`` in the series for ``values`` (``exemplar`` as in
        :meth:`GuardedCounter.inc`)."""
        child = self._guard.child(values) if values else self._metric
        if child is None:
            return
        if exemplar is CURRENT:
            exemplar = self._owner.current_exemplar()
        if exemplar:
            child.observe(amount, exemplar)
        else:
            child.observe(amount)


class GuardedGauge(_Family):
    """A labelled gauge behind the cardinality guard; excess label sets are dropped."""

    __slots__ = ()

    def set(self, values: tuple[object, ...], value: float) -> None:
        """Set the series for ``values``."""
        child = self._guard.child(values) if values else self._metric
        if child is not None:
            child.set(value)

    def inc(self, values: tuple[object, ...] = (), amount: float = 1.0) -> None:
        """Increase the series for ``values``."""
        child = self._guard.child(values) if values else self._metric
        if child is not None:
            child.inc(amount)

    def dec(self, values: tuple[object, ...] = (), amount: float = 1.0) -> None:
        """Decrease the series for ``values``."""
        child = self._guard.child(values) if values else self._metric
        if child is not None:
            child.dec(amount)


#: The class of a :class:`LibraryMetrics` attribute, by metric type.
_GUARDED: dict[str, type[_Family]] = {
    "counter": GuardedCounter, "histogram": GuardedHistogram, "gauge": GuardedGauge,
}


class LibraryMetrics:
    """All library metrics of one instance, plus the user metric factories.

    Attributes are named after :data:`LIBRARY_METRICS` (``http_requests_total``,
    ``orders_total`` ...) and are :class:`GuardedCounter`,
    :class:`GuardedHistogram` or :class:`GuardedGauge`.
    """

    exemplar_provider: ExemplarProvider | None
    """Returns exemplar labels for the active sampled span, or ``None``; set by tracing."""

    def __init__(
        self,
        registry: CollectorRegistry,
        config: ObservabilityConfig,
        faults: FaultReporter,
        *,
        maker: Callable[..., Any] = _make,
    ) -> None:
        self.registry = registry
        self.config = config
        self.faults = faults
        self.exemplar_provider = None
        self._maker = maker
        self._families: dict[str, _Family] = {}
        self._user: dict[str, tuple[tuple[Any, ...], Any, LabelGuard | None]] = {}
        self._user_lock = threading.Lock()
        # gunicorn --preload: fresh in a forked child
        renew_locks_after_fork(self, "_user_lock")
        self._active_conn_cb: Callable[[], float] | None = None
        self._active_conn_last = 0.0

        overflow_def = lookup("mestres_observability_label_overflow_total")
        errors_def = lookup("mestres_observability_errors_total")
        self._overflow_metric = self._build_raw(overflow_def)
        errors_metric = self._build_raw(errors_def)
        faults.bind(errors_metric)
        for d in LIBRARY_METRICS:
            if d is overflow_def:
                metric = self._overflow_metric
            elif d is errors_def:
                metric = errors_metric
            elif not is_enabled(d, config):  # off by its setting (rum_enabled, celery_metrics ...)
                metric = _INERT  # the attribute exists; nothing is recorded or exposed
            else:
                metric = self._build_raw(d)
            labels, data_labels = d.labels, d.data_labels
            if d.name in HTTP_REQUEST_FAMILIES:  # http_labels, then http_label_values
                labels = (*labels, *config.http_labels, *config.http_label_values)
                data_labels = (*data_labels, *config.http_label_values)
            guard = self._guard(d.name, metric, labels, data_labels, d.kind == "gauge")
            fam = _GUARDED[d.kind](self, d, metric, guard)
            self._families[d.name] = fam
            setattr(self, d.name, fam)
        # pre-create the catalogue's fixed series so they appear from the first scrape
        for d in LIBRARY_METRICS:
            for values in d.presets:
                self._families[d.name].metric.labels(*values)
        self.service_info.set(
            (config.service_name, config.service_version, config.environment), 1
        )

    # typed accessors, one per LIBRARY_METRICS entry (the attributes are set above);
    # tests/test_catalogue.py checks that they match the catalogue
    http_requests_total: GuardedCounter
    http_request_duration_seconds: GuardedHistogram
    http_requests_in_progress: GuardedGauge
    http_request_size_bytes: GuardedHistogram
    http_response_size_bytes: GuardedHistogram
    orders_total: GuardedCounter
    order_errors_total: GuardedCounter
    revenue_total: GuardedCounter
    order_value: GuardedHistogram
    products_sold_total: GuardedCounter
    payments_total: GuardedCounter
    payment_amount_total: GuardedCounter
    payment_errors_total: GuardedCounter
    user_actions_total: GuardedCounter
    inventory_movements_total: GuardedCounter
    inventory_level: GuardedGauge
    active_connections: GuardedGauge
    service_info: GuardedGauge
    health_check_status: GuardedGauge
    health_check_duration_seconds: GuardedGauge
    mestres_observability_errors_total: GuardedCounter
    mestres_observability_label_overflow_total: GuardedCounter
    mestres_observability_spans_dropped_total: GuardedCounter
    mestres_observability_tail_sampling_traces_total: GuardedCounter
    mestres_observability_tail_sampling_spans_total: GuardedCounter
    mestres_observability_trace_headers_dropped_total: GuardedCounter
    rum_web_vitals_seconds: GuardedHistogram
    rum_layout_shift: GuardedHistogram
    rum_navigation_seconds: GuardedHistogram
    rum_resources_total: GuardedCounter
    rum_resource_duration_seconds_total: GuardedCounter
    rum_js_errors_total: GuardedCounter
    rum_business_events_total: GuardedCounter
    rum_events_total: GuardedCounter
    rum_events_rejected_total: GuardedCounter
    rum_events_duplicate_total: GuardedCounter
    celery_tasks_total: GuardedCounter
    celery_task_duration_seconds: GuardedHistogram
    celery_task_queue_wait_seconds: GuardedHistogram
    celery_tasks_in_progress: GuardedGauge
    http_client_requests_total: GuardedCounter
    http_client_request_duration_seconds: GuardedHistogram
    db_query_duration_seconds: GuardedHistogram
    db_query_errors_total: GuardedCounter
    db_pool_size: GuardedGauge
    db_pool_checked_out: GuardedGauge
    db_pool_overflow: GuardedGauge
    db_pool_wait_seconds: GuardedHistogram
    cache_requests_total: GuardedCounter
    job_runs_total: GuardedCounter
    job_duration_seconds: GuardedGauge
    job_last_success_timestamp_seconds: GuardedGauge
    job_last_failure_timestamp_seconds: GuardedGauge

    def _build_raw(self, d: MetricDef) -> Any:
        cfg = self.config
        name = cfg.metric_name(d.name) if d.prefixed else d.name
        buckets = getattr(cfg, d.buckets) if d.buckets else None
        labels = d.labels
        if d.name in HTTP_REQUEST_FAMILIES:
            labels = (*labels, *cfg.http_labels, *cfg.http_label_values)
        return self._maker(d.kind, name, d.doc, labels, self.registry, buckets=buckets,
                           multiprocess_mode=d.multiprocess_mode)

    def _guard(self, name: str, metric: Any, labels: Sequence[str], data_labels: Sequence[str],
               drop: bool) -> LabelGuard:
        overflow_child: list[Any] = []

        def on_overflow() -> None:
            if not overflow_child:
                overflow_child.append(self._overflow_metric.labels(name))
            overflow_child[0].inc()

        return LabelGuard(metric, name, labels, data_labels, self.config.limit_for(name),
                          drop_excess=drop, on_overflow=on_overflow)

    def current_exemplar(self) -> dict[str, str] | None:
        """Exemplar labels of the current sampled span, or ``None`` (read once per call,
        then passed to each ``inc``/``observe`` of that call)."""
        provider = self.exemplar_provider
        return provider() if provider is not None else None

    def family(self, name: str) -> _Family:
        """A library metric by base name (``"orders_total"``)."""
        return self._families[name]

    # ---------------------------------------------------------------- active_connections
    def set_active_connections(self, value: float | Callable[[], float]) -> None:
        """Set ``active_connections`` to a number, or to a callback read at scrape time.

        A callback must be fast (it runs inside the scrape). If it raises or
        returns a non-finite value, the last good value is kept and the fault is
        counted under ``component="metrics"``.
        """
        gauge = self.active_connections.metric
        if callable(value):
            self._active_conn_cb = value

            def read() -> float:
                cb = self._active_conn_cb
                try:
                    v = float(cb()) if cb is not None else self._active_conn_last
                    if not math.isfinite(v):
                        raise ValueError("non-finite value")
                    self._active_conn_last = v
                except Exception as exc:
                    self.faults.report("metrics", "active_connections_callback",
                                       "active_connections callback failed", exc)
                return self._active_conn_last

            gauge.set_function(read)
        else:
            self._active_conn_cb = None
            v = float(value)
            if not math.isfinite(v):
                raise ValueError(f"active_connections must be finite, got {value!r}")
            self._active_conn_last = v
            gauge.set_function(lambda: self._active_conn_last)

    # ---------------------------------------------------------------- user metrics
    def user_metric(
        self,
        kind: Kind,
        name: str,
        documentation: str = "",
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float] | None = None,
        guarded: bool = True,
    ) -> Any:
        """Return the user metric ``name``, creating it on first use.

        The same definition returns the same prometheus_client object; a
        conflicting one (other type, labels or buckets) raises
        :class:`~mestres_observability.errors.MetricConflictError`.
        """
        key_name = name[:-6] if kind == "counter" and name.endswith("_total") else name
        definition = (kind, tuple(labels), tuple(buckets) if buckets is not None else None)
        existing = self._user.get(key_name)
        if existing is not None:
            if existing[0] != definition:
                raise MetricConflictError(
                    f"metric {name!r} already exists as {existing[0][0]} with labels "
                    f"{list(existing[0][1])}"
                    + (f" and buckets {list(existing[0][2])}" if existing[0][2] else "")
                    + f"; requested {kind} with labels {list(labels)}"
                    + (f" and buckets {list(buckets)}" if buckets else "")
                )
            return existing[1]
        with self._user_lock:
            existing = self._user.get(key_name)
            if existing is not None:
                return self.user_metric(kind, name, documentation, labels, buckets=buckets)
            doc = documentation or name.replace("_", " ")
            b = buckets if buckets is not None else (
                self.config.http_buckets if kind == "histogram" else None)
            try:
                metric = self._maker(kind, key_name, doc, labels, self.registry, buckets=b)
            except ValueError as exc:
                raise MetricConflictError(f"cannot create metric {name!r}: {exc}") from exc
            guard = (self._guard(key_name, metric, labels, labels, kind == "gauge")
                     if labels and guarded else None)
            self._user[key_name] = (definition, metric, guard)
            return metric

    def user_guard(self, name: str, kind: Kind) -> LabelGuard | None:
        """The cardinality guard of a user metric created by :meth:`user_metric`."""
        key_name = name[:-6] if kind == "counter" and name.endswith("_total") else name
        entry = self._user.get(key_name)
        return entry[2] if entry else None


def metrics_reference(
    config: ObservabilityConfig | None = None, defs: Sequence[MetricDef] = LIBRARY_METRICS
) -> str:
    """Markdown table of metric definitions (for the docs' metrics reference), with the
    names ``config``'s namespace gives (see :func:`~mestres_observability.catalogue.reference_table`)."""
    cfg = config or ObservabilityConfig()
    return reference_table(defs, cfg.namespace)
