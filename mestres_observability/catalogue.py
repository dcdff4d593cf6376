"""The catalogue of every metric the library exposes: one declarative table.

Each :class:`MetricDef` entry of :data:`CATALOGUE` says what one metric family
is (name, type, unit, help text, labels and which of them come from data,
histogram buckets, gauge multiprocess mode, whether the ``namespace`` prefix
applies), when it is exposed (the setting that enables it, the process that
serves it) and how it is documented. Everything else reads this table:

* :class:`~mestres_observability.metrics.LibraryMetrics` builds one attribute
  per entry whose :attr:`~MetricDef.source` is ``"library"``;
* the scrape-time collectors of :mod:`mestres_observability.system` take the
  names, labels and help texts of the ``"system"`` and ``"process"`` entries,
  :mod:`mestres_observability.runtime` those of the ``"runtime"`` ones;
* the metrics reference page of the docs (``docs/gen_reference.py``) is
  generated with :func:`reference_table`;
* alert rules, dashboards and the browser (RUM) and anomaly metrics are to be
  generated from it, so a renamed metric cannot leave a stale panel or alert.

The module imports the standard library only, so tools beside the library
(the CLI, rule and dashboard generators) can read it without prometheus_client
or psutil installed.

Names in the table are *base* names: what is exposed with no ``namespace``
(counters with their ``_total`` suffix, as PromQL sees them).
:meth:`MetricDef.exposed_name` applies a namespace the way
:meth:`ObservabilityConfig.metric_name <mestres_observability.ObservabilityConfig.metric_name>`
does, and :meth:`MetricDef.sample_names` lists the sample names a family
produces (``_total``, ``_bucket``/``_sum``/``_count``, ``_created``), for
static checks of PromQL expressions.

Example::

    from mestres_observability import catalogue

    entry = catalogue.lookup("http_request_duration_seconds")
    entry.exposed_name("shop")          # 'shop_http_request_duration_seconds'
    entry.sample_names("shop")          # ('shop_http_request_duration_seconds_bucket', ...)
    catalogue.find_sample("shop_orders_created", "shop").name   # 'orders_total'

Metric and label names are public API: they change only in a major release,
after a minor release that exposes both names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Literal

__all__ = [
    "ALWAYS",
    "CATALOGUE",
    "GROUPS",
    "KINDS",
    "MULTIPROCESS_MODES",
    "OFF_BY_DEFAULT",
    "PROCESSES",
    "SOURCES",
    "SPAN_DROP_REASONS",
    "TAIL_DECISIONS",
    "TAIL_SPAN_OUTCOMES",
    "TRACE_HEADERS",
    "Group",
    "MetricDef",
    "MetricKind",
    "Source",
    "entries",
    "find_sample",
    "is_enabled",
    "lookup",
    "problems",
    "reference_table",
]

#: Metric types an entry may declare (the Prometheus/OpenMetrics family types).
MetricKind = Literal["counter", "gauge", "histogram", "summary", "info"]
KINDS: tuple[str, ...] = ("counter", "gauge", "histogram", "summary", "info")

#: What a metric is about; dashboards and rule files are organised by group.
Group = Literal["http", "business", "infrastructure", "health", "self", "process", "system",
                "rum", "tasks", "outbound", "database", "jobs", "anomaly"]
GROUPS: tuple[str, ...] = ("http", "business", "infrastructure", "health", "self", "process",
                           "system", "rum", "tasks", "outbound", "database", "jobs", "anomaly")

#: Which part of the library produces a family's values.
Source = Literal["library", "system", "process", "runtime", "anomaly"]
SOURCES: tuple[str, ...] = ("library", "system", "process", "runtime", "anomaly")

#: Processes that expose metrics: ``"service"`` is the instrumented application
#: (every worker of it); ``"anomaly-serve"`` is ``mestres-observability anomaly
#: serve`` (detection and forecasts over Prometheus data, on its own port).
PROCESSES: tuple[str, ...] = ("service", "anomaly-serve")

#: :attr:`MetricDef.feature` of a family exposed whatever the settings.
ALWAYS = "always"

#: Feature settings whose default is off (every other one defaults to on);
#: :func:`is_enabled` reads a mapping without them as the defaults would.
OFF_BY_DEFAULT: frozenset[str] = frozenset({"rum_enabled", "http_size_metrics"})

#: prometheus_client's gauge multiprocess modes.
MULTIPROCESS_MODES: tuple[str, ...] = (
    "all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent",
    "livemostrecent",
)

#: Unit suffixes that a base name may end with; the unit must then say the same.
_UNIT_SUFFIXES: tuple[str, ...] = ("seconds", "bytes", "percent", "ratio")
_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABELS = frozenset({"le", "quantile"})


@dataclass(frozen=True)
class MetricDef:
    """Declaration of one metric family the library exposes.

    The first nine fields keep the order of the original ``MetricDef`` of
    :mod:`mestres_observability.metrics`, so positional construction still
    works; the others are keyword-only.

    Attributes:
        name: base name, before any namespace prefix; counters end in
            ``_total`` and ``info`` families in ``_info`` (the sample name).
        kind: ``counter``, ``gauge``, ``histogram``, ``summary`` or ``info``.
        doc: the HELP text exposed on ``/metrics`` (single-process mode;
            prometheus_client's multiprocess merge replaces it).
        labels: label names, in the order values are passed.
        data_labels: the labels whose values come from data (route templates,
            product ids, statuses...): they pass the cardinality guard.
        buckets: name of the :class:`~mestres_observability.ObservabilityConfig`
            setting that holds a histogram's buckets (``"http_buckets"``).
        prefixed: whether the ``namespace`` setting prefixes the name.
        multiprocess_mode: gauges built by the library only: how
            prometheus_client merges the values of several processes.
        group: ``http``, ``business``, ``infrastructure``, ``health``,
            ``self``, ``process`` or ``system``.
        unit: base unit (``"seconds"``, ``"bytes"``, ``"percent"``), or ``""``
            for counts, states and currency amounts. A name ending in a unit
            suffix declares that unit. Informational (docs, generators): it is
            not sent as OpenMetrics ``# UNIT`` metadata.
        feature: :data:`ALWAYS`, or the name of the boolean setting that turns
            the family on (``"system_metrics"``); see :func:`is_enabled`.
        process: which process exposes it (one of :data:`PROCESSES`).
        source: ``"library"`` (a prometheus_client metric built by
            :class:`~mestres_observability.metrics.LibraryMetrics`, attribute
            of the same name), ``"system"`` or ``"process"`` (computed at
            scrape time by the collectors of :mod:`mestres_observability.system`),
            ``"runtime"`` (prometheus_client's garbage-collector and platform
            families, registered by :mod:`mestres_observability.runtime`),
            or ``"anomaly"`` (set by ``anomaly serve``, process ``anomaly-serve``;
            its :attr:`feature` is a setting of the rendered monitoring stack).
        multiprocess_labels: labels added only in multiprocess mode (``pid``
            on ``process_*``: one series per live worker).
        created: counters, histograms and summaries: whether the family has a
            ``_created`` sample (prometheus_client's metrics do, unless the
            ``created_series`` setting is off or in multiprocess mode;
            scrape-time collectors' families do not).
        description: text for the reference docs; empty means :attr:`doc`.
        presets: label-value tuples (one value per label) whose series are
            created at zero with the family, so a fixed label set is on
            ``/metrics`` from the first scrape; a family without labels always
            has its one series.
    """

    name: str
    kind: MetricKind
    doc: str
    labels: tuple[str, ...] = ()
    data_labels: tuple[str, ...] = ()
    buckets: str | None = None
    prefixed: bool = True
    multiprocess_mode: str = "all"
    group: Group = "business"
    _: KW_ONLY
    unit: str = ""
    feature: str = ALWAYS
    process: str = "service"
    source: Source = "library"
    multiprocess_labels: tuple[str, ...] = ()
    created: bool = True
    description: str = ""
    presets: tuple[tuple[str, ...], ...] = ()

    @property
    def attr(self) -> str:
        """Attribute name on :class:`~mestres_observability.metrics.LibraryMetrics`."""
        return self.name

    @property
    def docs(self) -> str:
        """The text of the reference docs: :attr:`description`, else :attr:`doc`."""
        return self.description or self.doc

    def exposed_name(self, namespace: str = "") -> str:
        """The name on ``/metrics`` with ``namespace`` (as ``ObservabilityConfig.metric_name``)."""
        return f"{namespace}_{self.name}" if namespace and self.prefixed else self.name

    def family_name(self, namespace: str = "") -> str:
        """The family name (OpenMetrics ``# TYPE`` line, ``Metric.name`` in prometheus_client):
        the exposed name without a counter's ``_total`` or an info's ``_info``."""
        name = self.exposed_name(namespace)
        if self.kind == "counter" and name.endswith("_total"):
            return name[:-6]
        if self.kind == "info" and name.endswith("_info"):
            return name[:-5]
        return name

    def sample_names(self, namespace: str = "", *, created: bool = True) -> tuple[str, ...]:
        """Every sample name the family can produce (what a PromQL selector may name).

        Args:
            namespace: the ``namespace`` setting.
            created: include ``_created`` (when the family has one: see :attr:`created`).
        """
        family = self.family_name(namespace)
        with_created = created and self.created
        if self.kind == "counter":
            names = [family + "_total"]
        elif self.kind == "histogram":
            names = [family + "_bucket", family + "_sum", family + "_count"]
        elif self.kind == "summary":
            names = [family, family + "_sum", family + "_count"]
        elif self.kind == "info":
            return (family + "_info",)
        else:
            return (family,)
        if with_created:
            names.append(family + "_created")
        return tuple(names)

    def all_labels(self, *, multiprocess: bool = False) -> tuple[str, ...]:
        """Label names of the series, with the multiprocess-only ones when asked."""
        return self.labels + self.multiprocess_labels if multiprocess else self.labels


#: Why a span was dropped: the ``reason`` label of ``mestres_observability_spans_dropped_total``
#: (see :mod:`mestres_observability.tracing`).
SPAN_DROP_REASONS: tuple[str, ...] = ("queue_full", "export_failed", "export_timeout", "shutdown")
#: What tail sampling decided for a trace: the ``decision`` label of
#: ``mestres_observability_tail_sampling_traces_total`` (kept because its local root
#: errored, was slow, or by the ratio; sampled out; evicted from a full buffer).
TAIL_DECISIONS: tuple[str, ...] = ("error", "slow", "ratio", "sampled_out", "overflow")
#: What became of a span under tail sampling: the ``outcome`` label of
#: ``mestres_observability_tail_sampling_spans_total``.
TAIL_SPAN_OUTCOMES: tuple[str, ...] = ("kept", "sampled_out", "overflow")
#: The W3C trace-context request headers the library bounds before extraction: the
#: ``header`` label of ``mestres_observability_trace_headers_dropped_total``.
TRACE_HEADERS: tuple[str, ...] = ("traceparent", "tracestate", "baggage")

#: Every metric family the library exposes, in registration order.
CATALOGUE: tuple[MetricDef, ...] = (
    # ---- HTTP (filled by the adapters)
    MetricDef("http_requests_total", "counter",
              "HTTP requests handled, by method, route template and status code.",
              ("method", "endpoint", "status"), ("endpoint",), group="http"),
    MetricDef("http_request_duration_seconds", "histogram",
              "HTTP request duration in seconds, until the last body byte is sent.",
              ("method", "endpoint", "status"), ("endpoint",), buckets="http_buckets",
              group="http", unit="seconds"),
    MetricDef("http_requests_in_progress", "gauge",
              "HTTP requests being handled right now.",
              ("method", "endpoint"), ("endpoint",), multiprocess_mode="livesum", group="http"),
    MetricDef("http_request_size_bytes", "histogram",
              "HTTP request body size in bytes (Content-Length, else the bytes received).",
              ("method", "endpoint", "status"), ("endpoint",), buckets="http_size_buckets",
              group="http", unit="bytes", feature="http_size_metrics"),
    MetricDef("http_response_size_bytes", "histogram",
              "HTTP response body size in bytes, as sent (a streamed body when it ends).",
              ("method", "endpoint", "status"), ("endpoint",), buckets="http_size_buckets",
              group="http", unit="bytes", feature="http_size_metrics"),
    # ---- business
    MetricDef("orders_total", "counter", "Orders returned by @track_order / record_order, by status.",
              ("status",), ("status",)),
    MetricDef("order_errors_total", "counter",
              "Order functions that raised, by exception class name.",
              ("error_type",), ("error_type",)),
    MetricDef("revenue_total", "counter",
              "Revenue of returned orders (currency units), by currency. Narrow it with the "
              "revenue_statuses setting.",
              ("currency",), ("currency",)),
    MetricDef("order_value", "histogram", "Distribution of order totals (currency units).",
              ("currency",), ("currency",), buckets="order_value_buckets"),
    MetricDef("products_sold_total", "counter", "Units sold, by product id.",
              ("product_id",), ("product_id",)),
    MetricDef("payments_total", "counter", "Payments processed, by method and status.",
              ("method", "status"), ("method", "status")),
    MetricDef("payment_amount_total", "counter",
              "Amount of processed payments (currency units), by method, status and currency.",
              ("method", "status", "currency"), ("method", "status", "currency")),
    MetricDef("payment_errors_total", "counter",
              "Payment functions that raised, by exception class name.",
              ("error_type",), ("error_type",)),
    MetricDef("user_actions_total", "counter",
              "User actions, by action and user type (guest or authenticated).",
              ("action", "user_type"), ("action",)),
    MetricDef("inventory_movements_total", "counter",
              "Units moved in or out of inventory, by product and movement type.",
              ("product_id", "movement_type"), ("product_id", "movement_type")),
    MetricDef("inventory_level", "gauge", "Units in stock, by product (last value set).",
              ("product_id",), ("product_id",), multiprocess_mode="mostrecent"),
    # ---- infrastructure set by the application
    MetricDef("active_connections", "gauge",
              "Active connections (e.g. a database pool), set directly or from a callback.",
              (), (), multiprocess_mode="livesum", group="infrastructure"),
    MetricDef("service_info", "gauge", "Always 1; identifies the service.",
              ("service", "version", "environment"), (), multiprocess_mode="livemax", group="infrastructure"),
    # ---- health
    MetricDef("health_check_status", "gauge",
              "Result of the last run of each health check (1 pass, 0 fail).",
              ("check",), ("check",), multiprocess_mode="mostrecent", group="health"),
    MetricDef("health_check_duration_seconds", "gauge",
              "Duration of the last run of each health check, in seconds.",
              ("check",), ("check",), multiprocess_mode="mostrecent", group="health",
              unit="seconds"),
    # ---- self-monitoring
    MetricDef("mestres_observability_errors_total", "counter",
              "Faults inside the library, by component; the host was not affected.",
              ("component",), (), prefixed=False, group="self"),
    MetricDef("mestres_observability_label_overflow_total", "counter",
              "Label sets folded into <overflow> (or dropped, for gauges) by the cardinality "
              "guard, by metric.",
              ("metric",), ("metric",), prefixed=False, group="self"),
    MetricDef("mestres_observability_spans_dropped_total", "counter",
              "Spans ended but never exported, by reason (queue_full, export_failed, "
              "export_timeout, shutdown).",
              ("reason",), (), prefixed=False, group="self",
              presets=tuple((r,) for r in SPAN_DROP_REASONS),
              description="Spans ended but never exported, by reason: `queue_full` (the span "
              "queue was full when the span ended), `export_failed` (the exporter failed or "
              "refused the batch), `export_timeout` (the export did not finish within "
              "`otlp_timeout`, or waited behind one that did not), `shutdown` (still queued or "
              "in flight when the shutdown bound expired, or ended after shutdown). Every span "
              "ended is counted exactly once: exported or here."),
    MetricDef("mestres_observability_tail_sampling_traces_total", "counter",
              "Traces decided by tail sampling when their local root span ended, by decision "
              "(error, slow, ratio: kept; sampled_out; overflow: evicted).",
              ("decision",), (), prefixed=False, group="self",
              presets=tuple((d,) for d in TAIL_DECISIONS),
              description="Traces decided by tail sampling (`tail_sampling`), once each, by "
              "`decision`: kept because the local root span errored (`error`), ran at least "
              "`tail_sampling_latency_threshold` (`slow`) or by `tail_sampling_ratio` "
              "(`ratio`); `sampled_out` (dropped by the rule); `overflow` (evicted whole "
              "because more than `tail_sampling_max_spans` spans were held). Zero while tail "
              "sampling is off."),
    MetricDef("mestres_observability_tail_sampling_spans_total", "counter",
              "Spans through tail sampling, by outcome (kept, sampled_out, overflow).",
              ("outcome",), (), prefixed=False, group="self",
              presets=tuple((o,) for o in TAIL_SPAN_OUTCOMES),
              description="Spans ended under tail sampling, once each, by `outcome`: `kept` "
              "(handed to the export queue, then exported or counted in "
              "`mestres_observability_spans_dropped_total`), `sampled_out` (their trace was "
              "not kept), `overflow` (their trace was evicted from the full buffer; also a "
              "fault in `mestres_observability_errors_total{component=\"tracing\"}`). Spans "
              "still held at shutdown are counted `shutdown` in "
              "`mestres_observability_spans_dropped_total`."),
    MetricDef("mestres_observability_trace_headers_dropped_total", "counter",
              "Incoming trace-context headers dropped or cut to whole list members because "
              "they exceed the W3C limits, by header.",
              ("header",), (), prefixed=False, group="self",
              presets=tuple((h,) for h in TRACE_HEADERS),
              description="Incoming trace-context headers over the W3C limits, by header: a "
              "`traceparent` longer than 55 characters (dropped; a later version is cut to "
              "its first 55), a `tracestate` over 32 list members or 512 characters, a "
              "`baggage` over 64 list members or 8192 bytes (both cut to whole members). "
              "Nothing of their content is logged."),
    # ---- browser real-user monitoring (rum package: the ingestion endpoint fills them)
    MetricDef("rum_web_vitals_seconds", "histogram",
              "Core Web Vitals reported by browsers (LCP, INP, FCP, TTFB; FID legacy), in "
              "seconds, by metric and page group.",
              ("metric", "page"), ("page",), buckets="rum_vitals_buckets", group="rum",
              unit="seconds", feature="rum_enabled",
              description="Core Web Vitals reported by browsers, in seconds (the snippet's "
              "milliseconds divided by 1000), by `metric` (`LCP`, `INP`, `FCP`, `TTFB`; `FID` "
              "from legacy clients) and `page` group. The buckets contain every good/poor "
              "threshold (INP 0.2/0.5, TTFB 0.8/1.8, FCP 1.8/3, LCP 2.5/4), so the good "
              "share is an exact bucket ratio. Exemplars carry the page's `trace_id`."),
    MetricDef("rum_layout_shift", "histogram",
              "Cumulative Layout Shift (CLS) reported by browsers, by page group.",
              ("page",), ("page",), buckets="rum_cls_buckets", group="rum",
              feature="rum_enabled",
              description="Cumulative Layout Shift (largest 5 s session window, unitless) by "
              "`page` group; buckets contain the 0.1/0.25 thresholds."),
    MetricDef("rum_navigation_seconds", "histogram",
              "Navigation timing phases of page loads, in seconds, by phase and page group.",
              ("phase", "page"), ("page",), buckets="rum_navigation_buckets", group="rum",
              unit="seconds", feature="rum_enabled",
              description="Navigation timing phases of page loads, in seconds, by `phase` "
              "(`redirect`, `dns`, `connect`, `tls`, `request`, `response`, `dom`, `load`) and "
              "`page` group."),
    MetricDef("rum_resources_total", "counter",
              "Resources loaded by pages, by initiator type and page group.",
              ("initiator", "page"), ("page",), group="rum", feature="rum_enabled"),
    MetricDef("rum_resource_duration_seconds_total", "counter",
              "Total load time of the resources pages loaded, in seconds, by initiator type and "
              "page group.",
              ("initiator", "page"), ("page",), group="rum", unit="seconds",
              feature="rum_enabled",
              description="Total load time of the resources pages loaded, in seconds, by "
              "`initiator` and `page`; divided by `rum_resources_total` it is the mean."),
    MetricDef("rum_js_errors_total", "counter",
              "JavaScript errors and unhandled promise rejections reported by browsers, by type "
              "and page group.",
              ("type", "page"), ("page",), group="rum", feature="rum_enabled"),
    MetricDef("rum_business_events_total", "counter",
              "Business events reported by browsers (allowlisted names), by event.",
              ("event",), ("event",), group="rum", feature="rum_enabled"),
    MetricDef("rum_events_total", "counter",
              "RUM events accepted by the ingestion endpoint, by type.",
              ("type",), (), group="rum", feature="rum_enabled"),
    MetricDef("rum_events_rejected_total", "counter",
              "RUM events (or whole requests) the ingestion endpoint refused, by reason.",
              ("reason",), (), group="rum", feature="rum_enabled",
              description="RUM events the ingestion endpoint refused, by `reason` (a fixed "
              "set, see the RUM page); a request refused as a whole (rate limit, size, "
              "media type, origin, unreadable JSON) counts once."),
    MetricDef("rum_events_duplicate_total", "counter",
              "RUM reports dropped because their id was already counted (per worker process).",
              group="rum", feature="rum_enabled"),
    # ---- Celery tasks (mestres_observability.celery), recorded in the worker
    MetricDef("celery_tasks_total", "counter",
              "Celery tasks finished, by task name and state (succeeded, failed, retried, "
              "rejected, revoked).",
              ("task", "state"), ("task",), group="tasks", feature="celery_metrics"),
    MetricDef("celery_task_duration_seconds", "histogram",
              "Run time of Celery tasks in the worker, by task name.",
              ("task",), ("task",), buckets="task_buckets", group="tasks", unit="seconds",
              feature="celery_metrics"),
    MetricDef("celery_task_queue_wait_seconds", "histogram",
              "Time from publishing a Celery task to the start of its run, by task name.",
              ("task",), ("task",), buckets="task_buckets", group="tasks", unit="seconds",
              feature="celery_metrics"),
    MetricDef("celery_tasks_in_progress", "gauge", "Celery tasks running right now, by task name.",
              ("task",), ("task",), multiprocess_mode="livesum", group="tasks",
              feature="celery_metrics"),
    # ---- outbound HTTP (mestres_observability.outbound: requests, httpx)
    MetricDef("http_client_requests_total", "counter",
              "Outbound HTTP requests, by method, target host and status code (error: no "
              "response).",
              ("method", "host", "status"), ("host",), group="outbound",
              feature="http_client_metrics"),
    MetricDef("http_client_request_duration_seconds", "histogram",
              "Outbound HTTP request duration in seconds, by method and target host.",
              ("method", "host"), ("host",), buckets="http_buckets", group="outbound",
              unit="seconds", feature="http_client_metrics",
              description="Outbound HTTP request duration in seconds, by method and target "
              "host: with httpx until the response headers arrived, with requests until the "
              "body was read (unless `stream=True`)."),
    # ---- database and cache (mestres_observability.db: SQLAlchemy, Django)
    MetricDef("db_query_duration_seconds", "histogram",
              "Database statement duration in seconds, by database and operation (SELECT, "
              "INSERT ...; never the SQL text).",
              ("database", "operation"), ("database",), buckets="db_buckets", group="database",
              unit="seconds", feature="db_metrics"),
    MetricDef("db_query_errors_total", "counter",
              "Database statements that raised, by database and operation.",
              ("database", "operation"), ("database",), group="database", feature="db_metrics"),
    MetricDef("db_pool_size", "gauge", "Connections the pool keeps open at most without "
              "overflow (its size), by database.",
              ("database",), ("database",), multiprocess_mode="livesum", group="database",
              feature="db_metrics"),
    MetricDef("db_pool_checked_out", "gauge", "Pool connections in use right now, by database.",
              ("database",), ("database",), multiprocess_mode="livesum", group="database",
              feature="db_metrics"),
    MetricDef("db_pool_overflow", "gauge",
              "Connections open beyond the pool size right now, by database.",
              ("database",), ("database",), multiprocess_mode="livesum", group="database",
              feature="db_metrics"),
    MetricDef("db_pool_wait_seconds", "histogram",
              "Time to get a connection from the pool (waiting for a free one, or opening one), "
              "by database.",
              ("database",), ("database",), buckets="db_buckets", group="database",
              unit="seconds", feature="db_metrics"),
    MetricDef("cache_requests_total", "counter",
              "Cache reads (Django cache get/get_many), by cache alias and result (hit or miss).",
              ("cache", "result"), ("cache",), group="database", feature="db_metrics"),
    # ---- batch jobs (mestres_observability.jobs: job())
    MetricDef("job_runs_total", "counter", "Runs of batch jobs, by job and status (success or "
              "failure).",
              ("job", "status"), ("job",), group="jobs", feature="job_metrics"),
    MetricDef("job_duration_seconds", "gauge", "Duration of each job's last run, in seconds.",
              ("job",), ("job",), multiprocess_mode="mostrecent", group="jobs", unit="seconds",
              feature="job_metrics"),
    MetricDef("job_last_success_timestamp_seconds", "gauge",
              "When each job last succeeded, in seconds since the Unix epoch.",
              ("job",), ("job",), multiprocess_mode="mostrecent", group="jobs", unit="seconds",
              feature="job_metrics"),
    MetricDef("job_last_failure_timestamp_seconds", "gauge",
              "When each job last failed, in seconds since the Unix epoch.",
              ("job",), ("job",), multiprocess_mode="mostrecent", group="jobs", unit="seconds",
              feature="job_metrics"),
    # ---- host or container, computed at scrape time (system.SystemCollector)
    MetricDef("memory_usage_bytes", "gauge",
              "Memory in use: the container's working set (cgroup v2 memory.current minus "
              "inactive file cache) when it has a memory limit, else the host's total minus "
              "available memory.",
              group="system", unit="bytes", feature="system_metrics", source="system"),
    MetricDef("memory_usage_percent", "gauge",
              "memory_usage_bytes as a percentage of the container's memory limit, else of the "
              "host's total memory.",
              group="system", unit="percent", feature="system_metrics", source="system"),
    MetricDef("cpu_usage_percent", "gauge",
              "CPU busy time since the previous scrape, as a percentage (0-100) of the "
              "container's CPU quota (cgroup v2 cpu.max) when it has one, else of all the "
              "host's CPUs.",
              group="system", unit="percent", feature="system_metrics", source="system"),
    MetricDef("disk_usage_percent", "gauge",
              "Used space of each configured mount point (system_mountpoints), in percent, as "
              "df reports it.",
              ("mountpoint",), group="system", unit="percent", feature="system_metrics",
              source="system"),
    # ---- this process (every live worker in multiprocess mode), at scrape time
    #      (system.ProcessCollector; prometheus_client's standard names)
    MetricDef("process_cpu_seconds_total", "counter",
              "Total user and system CPU time spent by the process, in seconds.",
              prefixed=False, group="process", unit="seconds", feature="process_metrics",
              source="process", multiprocess_labels=("pid",), created=False),
    MetricDef("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
              prefixed=False, group="process", unit="bytes", feature="process_metrics",
              source="process", multiprocess_labels=("pid",)),
    MetricDef("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
              prefixed=False, group="process", unit="bytes", feature="process_metrics",
              source="process", multiprocess_labels=("pid",)),
    MetricDef("process_open_fds", "gauge", "Number of open file descriptors (POSIX only).",
              prefixed=False, group="process", feature="process_metrics",
              source="process", multiprocess_labels=("pid",)),
    MetricDef("process_max_fds", "gauge",
              "Maximum number of open file descriptors (soft limit; POSIX only).",
              prefixed=False, group="process", feature="process_metrics",
              source="process", multiprocess_labels=("pid",)),
    MetricDef("process_start_time_seconds", "gauge",
              "Start time of the process since the Unix epoch, in seconds.",
              prefixed=False, group="process", unit="seconds", feature="process_metrics",
              source="process", multiprocess_labels=("pid",)),
    MetricDef("process_threads", "gauge", "Number of OS threads in the process.",
              prefixed=False, group="process", feature="process_metrics",
              source="process", multiprocess_labels=("pid",)),
    # ---- the Python runtime (runtime module): prometheus_client's GCCollector and
    #      PlatformCollector families; in multiprocess mode each worker's, labelled by pid
    MetricDef("python_gc_objects_collected_total", "counter", "Objects collected during gc",
              ("generation",), prefixed=False, group="process", feature="runtime_metrics",
              source="runtime", multiprocess_labels=("pid",), created=False,
              description="Objects the garbage collector collected, by generation (`0`, `1`, "
              "`2`; CPython only)."),
    MetricDef("python_gc_objects_uncollectable_total", "counter",
              "Uncollectable objects found during GC",
              ("generation",), prefixed=False, group="process", feature="runtime_metrics",
              source="runtime", multiprocess_labels=("pid",), created=False,
              description="Objects the garbage collector found uncollectable, by generation "
              "(CPython only); above zero, something keeps reference cycles it cannot free."),
    MetricDef("python_gc_collections_total", "counter",
              "Number of times this generation was collected",
              ("generation",), prefixed=False, group="process", feature="runtime_metrics",
              source="runtime", multiprocess_labels=("pid",), created=False,
              description="Collections of each generation by the garbage collector (CPython "
              "only)."),
    MetricDef("python_info", "gauge", "Python platform information",
              ("implementation", "major", "minor", "patchlevel", "version"), prefixed=False,
              group="process", feature="runtime_metrics", source="runtime",
              description="Always 1; the interpreter (`implementation`, `version`, `major`, "
              "`minor`, `patchlevel`). In multiprocess mode the scraping worker's, the same "
              "in every worker."),
    # ---- `mestres-observability anomaly serve`, on its own port (dashboards and the
    #      anomaly rules read them when the stack is rendered with --anomaly-rules)
    MetricDef("anomaly_score", "gauge",
              "Anomaly score of the last point of each watched series: 0 usual, 1 further out "
              "than anything in its history.",
              ("metric",), ("metric",), prefixed=False, group="anomaly", feature="anomaly_rules",
              process="anomaly-serve", source="anomaly"),
    MetricDef("anomalies_total", "counter",
              "Anomalies reported, by watched series and severity.",
              ("metric", "severity"), ("metric",), prefixed=False, group="anomaly",
              feature="anomaly_rules", process="anomaly-serve", source="anomaly"),
    MetricDef("forecast", "gauge",
              "Forecast of each watched series, by horizon (1h, 4h...).",
              ("metric", "horizon"), ("metric",), prefixed=False, group="anomaly",
              feature="anomaly_rules", process="anomaly-serve", source="anomaly"),
    MetricDef("forecast_lower", "gauge",
              "Lower bound of the forecast's 80% prediction interval, by horizon.",
              ("metric", "horizon"), ("metric",), prefixed=False, group="anomaly",
              feature="anomaly_rules", process="anomaly-serve", source="anomaly"),
    MetricDef("forecast_upper", "gauge",
              "Upper bound of the forecast's 80% prediction interval, by horizon.",
              ("metric", "horizon"), ("metric",), prefixed=False, group="anomaly",
              feature="anomaly_rules", process="anomaly-serve", source="anomaly"),
)

_BY_NAME: dict[str, MetricDef] = {d.name: d for d in CATALOGUE}


def entries(
    *,
    source: str | Sequence[str] | None = None,
    group: str | Sequence[str] | None = None,
    process: str | None = None,
) -> tuple[MetricDef, ...]:
    """The catalogue's entries in order, optionally only those of some sources,
    groups or one process (``entries(source="library")``)."""
    sources = (source,) if isinstance(source, str) else source
    groups = (group,) if isinstance(group, str) else group
    return tuple(
        d for d in CATALOGUE
        if (sources is None or d.source in sources)
        and (groups is None or d.group in groups)
        and (process is None or d.process == process)
    )


def lookup(name: str) -> MetricDef:
    """The entry with base name ``name`` (``"orders_total"``).

    Raises:
        KeyError: no such metric (the message names the nearest ones).
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        import difflib

        near = difflib.get_close_matches(name, list(_BY_NAME), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise KeyError(f"{name!r} is not a metric of the catalogue{hint}") from None


def find_sample(sample: str, namespace: str = "", *, created: bool = True) -> MetricDef | None:
    """The entry whose family produces the sample name ``sample`` under ``namespace``
    (``find_sample("shop_http_request_duration_seconds_bucket", "shop")``), or ``None``."""
    for d in CATALOGUE:
        if sample in d.sample_names(namespace, created=created):
            return d
    return None


def is_enabled(entry: MetricDef, settings: object) -> bool:
    """Whether ``entry`` is exposed under ``settings``.

    ``settings`` is an :class:`~mestres_observability.ObservabilityConfig` or a
    mapping of setting names to values (missing settings take their default:
    on, except those in :data:`OFF_BY_DEFAULT`). A family whose
    :attr:`~MetricDef.feature` is :data:`ALWAYS` is exposed whatever the
    settings; any other needs its setting and the master switch ``enabled``
    to be true.
    """
    if entry.feature == ALWAYS:
        return True

    def setting(name: str) -> bool:
        if isinstance(settings, Mapping):
            return bool(settings.get(name, name not in OFF_BY_DEFAULT))
        return bool(getattr(settings, name))

    return setting("enabled") and setting(entry.feature)


def problems(entry: MetricDef) -> list[str]:
    """What is wrong with an entry (empty when it is well-formed).

    Checks what needs no other module: name and label syntax, suffixes
    (counters end in ``_total``, no other type does), unit against the name,
    data labels among the labels, kind, group, source, process, gauge mode and
    histogram buckets. The settings named by ``buckets`` and ``feature`` are
    checked against ``ObservabilityConfig`` by the test suite.
    """
    out: list[str] = []
    name = entry.name
    if not _NAME_RE.match(name) or name.startswith("__"):
        out.append(f"invalid metric name {name!r}")
    if entry.kind not in KINDS:
        out.append(f"unknown kind {entry.kind!r}")
    if (entry.kind == "counter") != name.endswith("_total"):
        out.append("counters, and only counters, end in _total")
    if entry.kind == "info" and not name.endswith("_info"):
        out.append("info families end in _info")
    for suffix in ("_created", "_bucket", "_count", "_sum", "_gcount", "_gsum"):
        if name.endswith(suffix):
            out.append(f"a base name must not end in {suffix} (a sample suffix)")
    base = name[:-6] if name.endswith("_total") else name
    named_unit = next((u for u in _UNIT_SUFFIXES if base.endswith("_" + u)), "")
    if named_unit and entry.unit != named_unit:
        out.append(f"the name ends in _{named_unit}: unit must be {named_unit!r}")
    if entry.unit and not base.endswith("_" + entry.unit):
        out.append(f"unit {entry.unit!r}: the name must end in _{entry.unit}")
    every = entry.labels + entry.multiprocess_labels
    for label in every:
        if not _LABEL_RE.match(label) or label.startswith("__") or label in _RESERVED_LABELS:
            out.append(f"invalid label name {label!r}")
    if len(set(every)) != len(every):
        out.append("duplicate label names")
    if not set(entry.data_labels) <= set(entry.labels):
        out.append("data_labels must be a subset of labels")
    if entry.group not in GROUPS:
        out.append(f"unknown group {entry.group!r}")
    if entry.source not in SOURCES:
        out.append(f"unknown source {entry.source!r}")
    if entry.process not in PROCESSES:
        out.append(f"unknown process {entry.process!r}")
    if entry.multiprocess_mode not in MULTIPROCESS_MODES:
        out.append(f"unknown multiprocess mode {entry.multiprocess_mode!r}")
    elif entry.kind != "gauge" and entry.multiprocess_mode != "all":
        out.append("multiprocess_mode applies to gauges only")
    if (entry.kind == "histogram") != (entry.buckets is not None):
        out.append("histograms, and only histograms, name a buckets setting")
    if entry.source == "library" and entry.kind not in ("counter", "gauge", "histogram"):
        out.append("LibraryMetrics builds counters, gauges and histograms only")
    if not entry.doc.strip() or "\n" in entry.doc:
        out.append("help text must be one non-empty line")
    if not entry.feature:
        out.append("feature must be 'always' or a setting name")
    for values in entry.presets:
        if len(values) != len(entry.labels) or not all(isinstance(v, str) for v in values):
            out.append(f"preset {values!r}: one string value per label")
    return out


def reference_table(defs: Sequence[MetricDef] | None = None, namespace: str = "") -> str:
    """Markdown table of ``defs`` (default: the whole catalogue) for the reference docs.

    Columns: exposed name, type, unit, labels (``†``: data-derived, through
    the cardinality guard; ``‡``: multiprocess mode only) and meaning; plus
    the setting that enables the family when some entry has one.
    """
    rows = CATALOGUE if defs is None else tuple(defs)
    with_feature = any(d.feature != ALWAYS for d in rows)
    head = ["metric", "type", "unit", "labels"] + (["enabled by"] if with_feature else [])
    head.append("meaning")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for d in rows:
        labels = ", ".join(
            [f"`{lab}`" + ("†" if lab in d.data_labels else "") for lab in d.labels]
            + [f"`{lab}`‡" for lab in d.multiprocess_labels]
        ) or "none"
        cells = [f"`{d.exposed_name(namespace)}`", d.kind, d.unit or "-", labels]
        if with_feature:
            cells.append("-" if d.feature == ALWAYS else f"`{d.feature}`")
        cells.append(d.docs)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
