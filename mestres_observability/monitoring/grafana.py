"""Grafana: datasource and dashboard provisioning, and the dashboards themselves.

:func:`render` writes

* ``grafana/provisioning/datasources/datasources.yml``: Prometheus (with
  exemplar links to the Jaeger datasource: a dot on a latency panel opens its
  trace), Jaeger (with links from a span to its log lines) and Elasticsearch
  (the JSON logs, with links from a ``trace_id`` to its trace);
* ``grafana/provisioning/dashboards/dashboards.yml``: a file provider reading
  :data:`DASHBOARDS_DIR`;
* ``grafana/dashboards/*.json``: the Business overview, Technical and (when the
  catalogue has browser metrics that are switched on) RUM dashboards, in the
  classic JSON model at :data:`SCHEMA_VERSION`, the version the pinned
  :data:`GRAFANA_IMAGE` writes, so Grafana neither migrates nor rewrites them.

Every expression is built from :mod:`mestres_observability.catalogue` entries
under the service's namespace; a family whose feature is off (say
``system_metrics``) leaves no panel behind. Every panel that reads a histogram
asks Prometheus for exemplars. :func:`dashboard_expressions` lists each
panel's PromQL with Grafana's variables replaced, for the static check and
for querying Prometheus directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from .. import catalogue
from ..catalogue import MetricDef
from .rules import rum_entries as _vital_entries
from .settings import RenderSettings

__all__ = [
    "DASHBOARDS_DIR",
    "ELASTICSEARCH_UID",
    "GRAFANA_IMAGE",
    "GRAFANA_VARIABLES",
    "JAEGER_UID",
    "PREDICTION_PANEL_BUILDERS",
    "PROMETHEUS_UID",
    "SCHEMA_VERSION",
    "WEB_VITAL_THRESHOLDS",
    "dashboard_expressions",
    "dashboard_provider",
    "dashboards",
    "datasources",
    "prediction_panels",
    "render",
    "rum_entries",
]

#: The Grafana image the compose file runs; the dashboards are written for it.
GRAFANA_IMAGE = "grafana/grafana:11.6.0"
#: ``schemaVersion`` of the classic dashboard JSON that Grafana 11.6 writes
#: (Grafana 11.0-11.2 wrote 39, 11.3-11.5 40, 11.6 41; 12.x writes 42).
SCHEMA_VERSION = 41
#: Provisioned datasource uids (dashboards refer to datasources by uid).
PROMETHEUS_UID = "prometheus"
JAEGER_UID = "jaeger"
ELASTICSEARCH_UID = "elasticsearch"
#: Where the compose file mounts ``grafana/dashboards`` in the Grafana container.
DASHBOARDS_DIR = "/etc/grafana/dashboards"
#: What :func:`dashboard_expressions` puts in place of Grafana's variables: the
#: values of a one-day view with a 15 s scrape interval.
GRAFANA_VARIABLES: dict[str, str] = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1d",
}
#: web-vitals 4+/5+ thresholds (good at most, poor above), in milliseconds
#: except CLS (unitless); from the web-vitals sources (``src/on*.ts``).
WEB_VITAL_THRESHOLDS: dict[str, tuple[float, float]] = {
    "lcp": (2500.0, 4000.0),
    "inp": (200.0, 500.0),
    "cls": (0.1, 0.25),
    "fcp": (1800.0, 3000.0),
    "ttfb": (800.0, 1800.0),
}
#: Label names, in order of preference, that group browser metrics by page.
_PAGE_LABELS = ("page_group", "page", "route", "endpoint", "path_template")

_PROM = {"type": "prometheus", "uid": PROMETHEUS_UID}


# ---------------------------------------------------------------------- model
@dataclass(frozen=True)
class _Query:
    expr: str
    legend: str = ""
    instant: bool = False
    heatmap: bool = False
    table: bool = False


@dataclass(frozen=True)
class _Panel:
    title: str
    kind: str  # timeseries, stat, table, heatmap, piechart, gauge, bargauge
    queries: tuple[_Query, ...]
    unit: str = "short"
    description: str = ""
    width: int = 12
    height: int = 8
    time_from: str | None = None
    thresholds: tuple[tuple[float, str], ...] = ()
    threshold_lines: bool = False
    mappings: tuple[tuple[str, str, str], ...] = ()  # (value, text, colour)
    min: float | None = None
    max: float | None = None
    stack: bool = False


@dataclass(frozen=True)
class _Row:
    title: str


_Item = _Panel | _Row


class _Ctx:
    """What a dashboard builder needs: names under the namespace and feature switches."""

    def __init__(self, settings: RenderSettings, entries: Sequence[MetricDef]) -> None:
        self.settings = settings
        self.by_name = {d.name: d for d in entries}
        self.entries = tuple(entries)
        self.histogram_buckets = frozenset(
            d.family_name(settings.config.namespace) + "_bucket"
            for d in entries if d.kind == "histogram")

    def on(self, base: str) -> bool:
        entry = self.by_name.get(base)
        return entry is not None and _enabled(entry, self.settings)

    def m(self, base: str) -> str:
        return self.by_name[base].exposed_name(self.settings.config.namespace)

    def bucket(self, base: str) -> str:
        return self.by_name[base].family_name(self.settings.config.namespace) + "_bucket"

    def count(self, base: str) -> str:
        return self.by_name[base].family_name(self.settings.config.namespace) + "_count"

    def sum(self, base: str) -> str:
        return self.by_name[base].family_name(self.settings.config.namespace) + "_sum"

    def reads_histogram(self, expr: str) -> bool:
        return any(name in self.histogram_buckets for name in re.findall(r"[a-zA-Z_:][\w:]*", expr))


def _enabled(entry: MetricDef, settings: RenderSettings) -> bool:
    """Whether ``entry`` is exposed by the service rendered for.

    A feature the library's settings do not know yet (a catalogue entry added
    ahead of its setting) counts as off. A family of another process
    (``anomaly-serve``) is on when the rendering's own setting of that name is
    (``anomaly_rules``).
    """
    if entry.process != "service":
        return bool(getattr(settings, entry.feature, False))
    try:
        return catalogue.is_enabled(entry, settings.config)
    except AttributeError:
        return False


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it in the ``le`` label."""
    return repr(float(bound))


def _quantile(q: float, bucket: str, by: Iterable[str] = ()) -> str:
    labels = ", ".join(["le", *by])
    return (f"histogram_quantile({q}, sum by ({labels}) "
            f"(rate({bucket}[$__rate_interval])))")


def _rate(metric: str, by: Iterable[str] = (), selector: str = "", window: str = "$__rate_interval",
          func: str = "rate") -> str:
    by = list(by)
    grouping = f" by ({', '.join(by)})" if by else ""
    return f"sum{grouping} ({func}({metric}{selector}[{window}]))"


# ---------------------------------------------------------------------- dashboards
#: More panels for the Business overview's "Predictions" row (which shows the
#: anomaly score and the forecasts of ``anomaly serve`` when ``anomaly_rules``
#: is on). Each callable takes the settings and returns panel dicts in
#: Grafana's JSON model (``gridPos`` and ``id`` are assigned here).
PREDICTION_PANEL_BUILDERS: list[Callable[[RenderSettings], list[dict[str, Any]]]] = []


def prediction_panels(settings: RenderSettings) -> list[dict[str, Any]]:
    """The extra predictions panels: those of every builder in
    :data:`PREDICTION_PANEL_BUILDERS` (none by default)."""
    out: list[dict[str, Any]] = []
    for build in PREDICTION_PANEL_BUILDERS:
        out.extend(build(settings))
    return out


def _business(c: _Ctx) -> list[_Item]:
    items: list[_Item] = [_Row("Sales")]
    if c.on("revenue_total"):
        items.append(_Panel(
            "Revenue today", "stat",
            (_Query(f"sum by (currency) (increase({c.m('revenue_total')}[$__range]))",
                    "{{currency}}", instant=True),),
            description="Revenue of the orders returned since midnight (dashboard time zone), "
            "per currency.", width=6, time_from="now/d"))
    if c.on("orders_total"):
        items.append(_Panel(
            "Orders today", "stat",
            (_Query(f"sum(increase({c.m('orders_total')}[$__range]))", "orders",
                    instant=True),),
            description="Orders returned since midnight.", width=6, time_from="now/d"))
        items.append(_Panel(
            "Orders per hour", "timeseries",
            (_Query(_rate(c.m("orders_total"), ["status"]) + " * 3600", "{{status}}"),),
            description="Order rate by status, in orders per hour (a per-second rate() "
            "times 3600).", unit="short", stack=True))
    if c.on("order_value"):
        items.append(_Panel(
            "Average order value", "stat",
            (_Query(f"sum by (currency) (increase({c.sum('order_value')}[$__range])) / "
                    f"sum by (currency) (increase({c.count('order_value')}[$__range]))",
                    "{{currency}}", instant=True),),
            description="Mean order total over the dashboard's time range, per currency.",
            width=6))
        items.append(_Panel(
            "Order value (p50, p90, p99)", "timeseries",
            tuple(_Query(_quantile(q, c.bucket("order_value"), ["currency"]),
                         f"p{round(q * 100)} {{{{currency}}}}") for q in (0.5, 0.9, 0.99)),
            description="Order totals, from the order_value histogram. Dots are exemplars: "
            "click one to open the trace of that order.", width=18))
    if c.on("products_sold_total"):
        items.append(_Panel(
            "Top selling products", "bargauge",
            (_Query(f"topk(10, sum by (product_id) "
                    f"(increase({c.m('products_sold_total')}[$__range])))",
                    "{{product_id}}", instant=True),),
            description="Units sold over the dashboard's time range, top 10 products.",
            height=10))
    if c.on("inventory_level"):
        items.append(_Panel(
            "Lowest stock", "bargauge",
            (_Query(f"bottomk(10, max by (product_id) ({c.m('inventory_level')}))",
                    "{{product_id}}", instant=True),),
            description="The ten products with the fewest units in stock.", height=10,
            thresholds=((0, "red"), (5, "orange"), (20, "green"))))
    if c.on("inventory_movements_total"):
        items.append(_Panel(
            "Inventory movements per hour", "timeseries",
            (_Query(_rate(c.m("inventory_movements_total"), ["movement_type"]) + " * 3600",
                    "{{movement_type}}"),),
            description="Units moved in and out of stock per hour, every product added up.",
            width=24))
    items.append(_Row("Payments"))
    if c.on("payments_total"):
        items.append(_Panel(
            "Payment outcomes", "piechart",
            (_Query(f"sum by (status) (increase({c.m('payments_total')}[$__range]))",
                    "{{status}}", instant=True),),
            description="Payments by status over the dashboard's time range.", width=8))
        items.append(_Panel(
            "Payments per hour by method and status", "timeseries",
            (_Query(_rate(c.m("payments_total"), ["method", "status"]) + " * 3600",
                    "{{method}} {{status}}"),),
            description="Payment rate in payments per hour.", width=16))
    if c.on("payment_amount_total"):
        items.append(_Panel(
            "Amount processed by status", "stat",
            (_Query(f"sum by (status, currency) "
                    f"(increase({c.m('payment_amount_total')}[$__range]))",
                    "{{status}} {{currency}}", instant=True),),
            description="Payment amounts over the dashboard's time range.", width=8))
    errors = [(base, label) for base, label in
              (("order_errors_total", "order"), ("payment_errors_total", "payment"))
              if c.on(base)]
    if errors:
        items.append(_Panel(
            "Order and payment failures per hour", "timeseries",
            tuple(_Query(_rate(c.m(base), ["error_type"]) + " * 3600",
                         f"{label} {{{{error_type}}}}") for base, label in errors),
            description="Order and payment functions that raised, by exception class, per "
            "hour.", width=16))
    if c.on("user_actions_total"):
        items.append(_Row("Customers"))
        items.append(_Panel(
            "User actions per hour", "timeseries",
            (_Query(_rate(c.m("user_actions_total"), ["action", "user_type"]) + " * 3600",
                    "{{action}} ({{user_type}})"),),
            description="User actions per hour, guests and signed-in users apart.",
            width=24))
    return items


def _predictions(c: _Ctx) -> list[_Item]:
    """The Business overview's predictions, from ``mestres-observability anomaly serve``."""
    if not c.on("anomaly_score"):
        return []
    items: list[_Item] = [_Row("Predictions")]
    items.append(_Panel(
        "Anomaly score by series", "timeseries",
        (_Query(f"max by (metric) ({c.m('anomaly_score')})", "{{metric}}"),),
        description="0: usual for this hour of the week; 1: further out than anything in the "
        "series' history (mestres-observability anomaly serve).", min=0, max=1, width=8,
        thresholds=((0, "green"), (0.9, "red")), threshold_lines=True))
    if c.on("forecast"):
        items.append(_Panel(
            "Forecast with its 80% interval", "timeseries",
            (_Query(f"max by (metric, horizon) ({c.m('forecast')})", "{{metric}} {{horizon}}"),
             _Query(f"max by (metric, horizon) ({c.m('forecast_lower')})",
                    "{{metric}} {{horizon}} low"),
             _Query(f"max by (metric, horizon) ({c.m('forecast_upper')})",
                    "{{metric}} {{horizon}} high")),
            description="Demand and load a few hours ahead, never negative, with the bounds "
            "the forecaster expects to hold 80% of the time.", width=8))
    if c.on("anomalies_total"):
        items.append(_Panel(
            "Anomalies reported", "timeseries",
            (_Query(_rate(c.m("anomalies_total"), ["metric", "severity"], window="1h",
                          func="increase"), "{{metric}} {{severity}}"),),
            width=8))
    return items


def _technical(c: _Ctx) -> list[_Item]:
    s = c.settings
    items: list[_Item] = [_Row("Traffic")]
    req = c.m("http_requests_total")
    errors_sel = '{status=~"5.."}'
    if c.on("http_requests_total"):
        items.append(_Panel(
            "Requests per second by route", "timeseries",
            (_Query(_rate(req, ["endpoint"]), "{{endpoint}}"),),
            description="Request rate per route template.", unit="reqps"))
        items.append(_Panel(
            "Requests per second by status", "timeseries",
            (_Query(_rate(req, ["status"]), "{{status}}"),), unit="reqps", stack=True))
        items.append(_Panel(
            "Error ratio (5xx)", "timeseries",
            (_Query(f"{_rate(req, selector=errors_sel)} / {_rate(req)}", "all routes"),),
            description="Share of requests answered with a 5xx status (a ratio, not a "
            "rate of errors).", unit="percentunit", min=0,
            thresholds=((0, "green"), (1 - s.slo_availability / 100, "red")),
            threshold_lines=True))
        items.append(_Panel(
            "Error ratio (5xx) by route", "timeseries",
            (_Query(f"{_rate(req, ['endpoint'], errors_sel)} / {_rate(req, ['endpoint'])}",
                    "{{endpoint}}"),),
            unit="percentunit", min=0))
    if c.on("http_requests_in_progress"):
        items.append(_Panel(
            "Requests in progress", "timeseries",
            (_Query(f"sum by (endpoint) ({c.m('http_requests_in_progress')})", "{{endpoint}}"),),
            description="Requests being handled right now, every worker added up."))
    if c.on("http_request_duration_seconds"):
        items.append(_Row("Latency"))
        bucket = c.bucket("http_request_duration_seconds")
        for q in (0.5, 0.95, 0.99):
            items.append(_Panel(
                f"Latency p{round(q * 100)} by route", "timeseries",
                (_Query(_quantile(q, bucket, ["endpoint"]), "{{endpoint}}"),),
                description=f"{round(q * 100)}th percentile of the request duration per route "
                "(from the histogram buckets). Dots are exemplars: click one to open its trace.",
                unit="s", width=8,
                thresholds=((0, "green"), (s.slo_latency_threshold, "red")),
                threshold_lines=True))
        items.append(_Panel(
            "Latency distribution", "heatmap",
            (_Query(f"sum by (le) (rate({bucket}[$__rate_interval]))", "{{le}}", heatmap=True),),
            description="Request durations of every route, bucket by bucket, with exemplars.",
            unit="s", width=16))
        if s.slo_latency_threshold in s.config.http_buckets:
            items.append(_Panel(
                f"Requests faster than {s.slo_latency_threshold:g} s", "stat",
                (_Query(f"sum(rate({bucket}{{le=\"{_le(s.slo_latency_threshold)}\"}}"
                        f"[$__rate_interval])) / "
                        f"sum(rate({c.count('http_request_duration_seconds')}"
                        f"[$__rate_interval]))", "share"),),
                description="Share of requests under the latency objective's threshold; the "
                f"objective is {s.slo_latency_target:g}%.", unit="percentunit", width=8,
                thresholds=((0, "red"), (s.slo_latency_target / 100, "green"))))
    sizes = [b for b in ("http_request_size_bytes", "http_response_size_bytes") if c.on(b)]
    if sizes:  # http_size_metrics
        items.append(_Row("Body sizes"))
        for base in sizes:
            what = "Request" if base == "http_request_size_bytes" else "Response"
            items.append(_Panel(
                f"{what} body size p95 by route", "timeseries",
                (_Query(_quantile(0.95, c.bucket(base), ["endpoint"]), "{{endpoint}}"),),
                description=f"95th percentile of the {what.lower()} body size per route "
                "(http_size_metrics; from the histogram buckets).", unit="bytes", width=12))
    system = [b for b in ("cpu_usage_percent", "memory_usage_percent", "memory_usage_bytes",
                          "disk_usage_percent") if c.on(b)]
    process = [b for b in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                           "process_open_fds") if c.on(b)]
    if system or process or c.on("active_connections"):
        items.append(_Row("Resources"))
    if c.on("cpu_usage_percent"):
        items.append(_Panel(
            "CPU usage", "timeseries",
            (_Query(f"max by (instance) ({c.m('cpu_usage_percent')})", "{{instance}}"),),
            description="CPU busy time of the container (its quota) or host, in percent.",
            unit="percent", width=8, min=0, max=100,
            thresholds=((0, "green"), (s.config.health_cpu_threshold, "red")),
            threshold_lines=True))
    if c.on("memory_usage_percent"):
        items.append(_Panel(
            "Memory usage", "timeseries",
            (_Query(f"max by (instance) ({c.m('memory_usage_percent')})", "{{instance}}"),),
            description="Memory in use as a percentage of the container's limit, or the "
            "host's memory.", unit="percent", width=8, min=0, max=100,
            thresholds=((0, "green"), (s.config.health_memory_threshold, "red")),
            threshold_lines=True))
    if c.on("memory_usage_bytes"):
        items.append(_Panel(
            "Memory in use", "timeseries",
            (_Query(f"max by (instance) ({c.m('memory_usage_bytes')})", "{{instance}}"),),
            unit="bytes", width=8))
    if c.on("disk_usage_percent"):
        items.append(_Panel(
            "Disk usage", "bargauge",
            (_Query(f"max by (instance, mountpoint) ({c.m('disk_usage_percent')})",
                    "{{instance}} {{mountpoint}}", instant=True),),
            unit="percent", width=8, min=0, max=100,
            thresholds=((0, "green"), (s.config.health_disk_threshold, "red"))))
    if c.on("process_cpu_seconds_total"):
        items.append(_Panel(
            "Process CPU (cores)", "timeseries",
            (_Query(_rate(c.m("process_cpu_seconds_total"), ["instance"]), "{{instance}}"),),
            description="CPU seconds per second used by the service's processes (every "
            "worker added up).", width=8))
    if c.on("process_resident_memory_bytes"):
        items.append(_Panel(
            "Process resident memory", "timeseries",
            (_Query(f"sum by (instance) ({c.m('process_resident_memory_bytes')})",
                    "{{instance}}"),), unit="bytes", width=8))
    if c.on("process_open_fds") and c.on("process_max_fds"):
        items.append(_Panel(
            "Open file descriptors (share of the limit)", "timeseries",
            (_Query(f"max by (instance) ({c.m('process_open_fds')} / "
                    f"{c.m('process_max_fds')})", "{{instance}}"),),
            unit="percentunit", width=8, min=0, max=1))
    if c.on("active_connections"):
        items.append(_Panel(
            "Active connections", "timeseries",
            (_Query(f"sum by (instance) ({c.m('active_connections')})", "{{instance}}"),),
            description="Connections the application reports (e.g. its database pool).",
            width=8))
    gc_collections = c.on("python_gc_collections_total")
    gc_objects = c.on("python_gc_objects_collected_total")
    if gc_collections or gc_objects:
        items.append(_Row("Python runtime"))
    if gc_collections:
        items.append(_Panel(
            "Garbage collections per second by generation", "timeseries",
            (_Query(_rate(c.m("python_gc_collections_total"), ["generation"]),
                    "generation {{generation}}"),),
            description="Collections of each generation by CPython's garbage collector, "
            "every worker added up. A climbing generation-2 rate means long-lived objects "
            "churn (full collections are the slow ones).", width=8))
    if gc_objects:
        queries = [_Query(_rate(c.m("python_gc_objects_collected_total"), ["generation"]),
                          "collected, generation {{generation}}")]
        if c.on("python_gc_objects_uncollectable_total"):
            queries.append(_Query(
                _rate(c.m("python_gc_objects_uncollectable_total"), ["generation"]),
                "uncollectable, generation {{generation}}"))
        items.append(_Panel(
            "Objects freed by the garbage collector per second", "timeseries", tuple(queries),
            description="Objects the collector freed (and found uncollectable: above zero, "
            "reference cycles it cannot free), per generation, every worker added up.",
            width=8))
    if c.on("health_check_status") or c.on("health_check_duration_seconds"):
        items.append(_Row("Health checks"))
    if c.on("health_check_status"):
        items.append(_Panel(
            "Health checks", "stat",
            (_Query(f"min by (check) ({c.m('health_check_status')})", "{{check}}",
                    instant=True),),
            description="Last result of each health check (the worst over instances).",
            mappings=(("1", "pass", "green"), ("0", "fail", "red"))))
    if c.on("health_check_duration_seconds"):
        items.append(_Panel(
            "Health check duration", "timeseries",
            (_Query(f"max by (check) ({c.m('health_check_duration_seconds')})", "{{check}}"),),
            unit="s"))
    items.extend(_beyond_requests(c))
    items.append(_Row("Instrumentation"))
    if c.on("service_info"):
        items.append(_Panel(
            "Versions running", "table",
            (_Query(f"count by (service, version, environment) ({c.m('service_info')})",
                    instant=True, table=True),),
            description="Instances per service version and environment.", width=8))
    if c.on("python_info"):
        items.append(_Panel(
            "Python runtimes", "table",
            (_Query(f"count by (implementation, version) ({c.m('python_info')})",
                    instant=True, table=True),),
            description="Interpreter implementation and version, per series (one per "
            "instance, from the worker that answered the scrape).", width=8))
    if c.on("mestres_observability_spans_dropped_total") and s.config.tracing_enabled:
        items.append(_Panel(
            "Spans dropped per second", "timeseries",
            (_Query(_rate(c.m("mestres_observability_spans_dropped_total"), ["reason"]),
                    "{{reason}}"),),
            description="Spans ended but never exported, by reason: queue_full, "
            "export_failed, export_timeout, shutdown. Above zero, traces are missing.",
            width=8))
    if (c.on("mestres_observability_tail_sampling_traces_total")
            and c.on("mestres_observability_tail_sampling_spans_total")
            and s.config.tracing_enabled):
        items.append(_Panel(
            "Tail sampling per second", "timeseries",
            (_Query(_rate(c.m("mestres_observability_tail_sampling_traces_total"), ["decision"]),
                    "traces {{decision}}"),
             _Query(_rate(c.m("mestres_observability_tail_sampling_spans_total"), ["outcome"]),
                    "spans {{outcome}}")),
            description="Traces decided by tail sampling when their local root ended (kept: "
            "error, slow, ratio; sampled_out; overflow) and spans by outcome. Overflow "
            "above zero: raise tail_sampling_max_spans. Flat zero: tail sampling is off.",
            width=8))
    if c.on("mestres_observability_trace_headers_dropped_total") and s.config.tracing_enabled:
        items.append(_Panel(
            "Trace headers cut or dropped per second", "timeseries",
            (_Query(_rate(c.m("mestres_observability_trace_headers_dropped_total"), ["header"]),
                    "{{header}}"),),
            description="Incoming traceparent, tracestate or baggage headers over the W3C "
            "limits, cut to whole members or dropped before extraction. Steady traffic "
            "here is a misbehaving client or an attack, not a fault.", width=8))
    if c.on("mestres_observability_errors_total"):
        items.append(_Panel(
            "Library faults per second by component", "timeseries",
            (_Query(_rate(c.m("mestres_observability_errors_total"), ["component"]),
                    "{{component}}"),),
            description="Faults inside mestres-observability; the application was not "
            "affected, but some signal is incomplete.", width=8))
    if c.on("mestres_observability_label_overflow_total"):
        items.append(_Panel(
            "Label sets folded by the cardinality guard", "timeseries",
            (_Query(_rate(c.m("mestres_observability_label_overflow_total"), ["metric"]),
                    "{{metric}}"),),
            description="Label sets beyond max_label_values, folded into <overflow>.",
            width=8))
    return items


def _beyond_requests(c: _Ctx) -> list[_Item]:
    """Rows for what runs outside the request: Celery tasks, outbound calls, databases and
    caches, batch jobs (each row only while its families are on)."""
    items: list[_Item] = []
    if c.on("celery_tasks_total"):
        items.append(_Row("Celery tasks"))
        items.append(_Panel(
            "Tasks finished per second by task and state", "timeseries",
            (_Query(_rate(c.m("celery_tasks_total"), ["task", "state"]), "{{task}} {{state}}"),),
            unit="ops", width=8, stack=True))
        items.append(_Panel(
            "Task duration p95 by task", "timeseries",
            (_Query(_quantile(0.95, c.bucket("celery_task_duration_seconds"), ["task"]),
                    "{{task}}"),),
            description="95th percentile of task run time in the workers. Dots are "
            "exemplars: click one to open the task's trace.", unit="s", width=8))
        items.append(_Panel(
            "Time waiting in the queue p95 by task", "timeseries",
            (_Query(_quantile(0.95, c.bucket("celery_task_queue_wait_seconds"), ["task"]),
                    "{{task}}"),),
            description="From publishing (or the ETA) to the start of the run: growing means "
            "too few workers.", unit="s", width=8))
        items.append(_Panel(
            "Tasks in progress", "timeseries",
            (_Query(f"sum by (task) ({c.m('celery_tasks_in_progress')})", "{{task}}"),),
            width=8))
    if c.on("http_client_requests_total"):
        items.append(_Row("Outbound calls"))
        calls = c.m("http_client_requests_total")
        items.append(_Panel(
            "Outbound requests per second by host and status", "timeseries",
            (_Query(_rate(calls, ["host", "status"]), "{{host}} {{status}}"),),
            description="Calls to payment, shipping and other APIs; status error: no "
            "response.", unit="reqps", width=8))
        items.append(_Panel(
            "Outbound error ratio by host", "timeseries",
            (_Query(_rate(calls, ["host"], '{status=~"5..|error"}') + " / "
                    + _rate(calls, ["host"]), "{{host}}"),),
            unit="percentunit", min=0, width=8))
        items.append(_Panel(
            "Outbound latency p95 by host", "timeseries",
            (_Query(_quantile(0.95, c.bucket("http_client_request_duration_seconds"), ["host"]),
                    "{{host}}"),),
            description="Dots are exemplars: click one to open the call's trace.", unit="s",
            width=8))
    if c.on("db_query_duration_seconds"):
        items.append(_Row("Databases and caches"))
        items.append(_Panel(
            "Statement duration p95 by operation", "timeseries",
            (_Query(_quantile(0.95, c.bucket("db_query_duration_seconds"),
                              ["database", "operation"]), "{{database}} {{operation}}"),),
            unit="s", width=8))
        items.append(_Panel(
            "Statement errors per second", "timeseries",
            (_Query(_rate(c.m("db_query_errors_total"), ["database", "operation"]),
                    "{{database}} {{operation}}"),),
            unit="ops", width=8))
        items.append(_Panel(
            "Connection pool", "timeseries",
            (_Query(f"sum by (database) ({c.m('db_pool_checked_out')})", "{{database}} in use"),
             _Query(f"sum by (database) ({c.m('db_pool_size')})", "{{database}} size"),
             _Query(f"sum by (database) ({c.m('db_pool_overflow')})", "{{database}} overflow")),
            description="Connections in use against the pool size; overflow above zero means "
            "the pool is too small.", width=8))
        items.append(_Panel(
            "Pool wait p95", "timeseries",
            (_Query(_quantile(0.95, c.bucket("db_pool_wait_seconds"), ["database"]),
                    "{{database}}"),),
            unit="s", width=8))
        items.append(_Panel(
            "Cache hit ratio", "timeseries",
            (_Query(_rate(c.m("cache_requests_total"), ["cache"], '{result="hit"}') + " / "
                    + _rate(c.m("cache_requests_total"), ["cache"]), "{{cache}}"),),
            unit="percentunit", min=0, max=1, width=8))
    if c.on("job_runs_total"):
        items.append(_Row("Batch jobs"))
        items.append(_Panel(
            "Time since the last success", "table",
            (_Query(f"time() - max by (job) ({c.m('job_last_success_timestamp_seconds')})",
                    instant=True, table=True),),
            description="Seconds since each job last succeeded (pushed to the Pushgateway or "
            "written as a textfile).", unit="s", width=8))
        items.append(_Panel(
            "Runs by job and status", "timeseries",
            (_Query(_rate(c.m("job_runs_total"), ["job", "status"], window="1h",
                          func="increase"), "{{job}} {{status}}"),),
            width=8))
        items.append(_Panel(
            "Last run duration and last failure", "timeseries",
            (_Query(f"max by (job) ({c.m('job_duration_seconds')})", "{{job}} duration"),
             _Query(f"time() - max by (job) ({c.m('job_last_failure_timestamp_seconds')})",
                    "{{job}} since failure")),
            unit="s", width=8))
    return items


def rum_entries(settings: RenderSettings,
                entries: Sequence[MetricDef] | None = None) -> list[MetricDef]:
    """The browser (RUM) metrics of the catalogue that the service exposes.

    Catalogue entries whose name starts with ``rum_`` and whose feature is on
    (``rum_enabled``, off by default): the RUM dashboard is rendered when there
    are any.
    """
    pool = catalogue.CATALOGUE if entries is None else entries
    return [d for d in pool if d.name.startswith("rum_") and _enabled(d, settings)]


def _page_label(d: MetricDef) -> list[str]:
    return [lab for lab in _PAGE_LABELS if lab in d.labels][:1]


def _vital_panels(c: _Ctx, d: MetricDef, vital: str, fixed: dict[str, str]) -> list[_Item]:
    """p75 of one web vital by page group against its thresholds, and its share of good views."""
    ns = c.settings.config.namespace
    page = _page_label(d)
    # the thresholds are in milliseconds (CLS unitless); a histogram in seconds divides them
    scale = 1000.0 if d.unit == "seconds" and vital != "cls" else 1.0
    good = WEB_VITAL_THRESHOLDS[vital][0] / scale
    poor = WEB_VITAL_THRESHOLDS[vital][1] / scale
    pinned = ", ".join(f'{k}="{v}"' for k, v in fixed.items())
    bucket = d.family_name(ns) + "_bucket" + (f"{{{pinned}}}" if pinned else "")
    label = vital.upper()
    unit = "s" if d.unit == "seconds" else "short"
    legend = f"{{{{{page[0]}}}}}" if page else "p75"
    items: list[_Item] = [_Panel(
        f"{label} p75" + (f" by {page[0]}" if page else ""), "timeseries",
        (_Query(_quantile(0.75, bucket, page), legend),),
        description=(f"75th percentile of {label} as browsers report it; green up to "
                     f"{good:g}, red above {poor:g} (web-vitals thresholds)."),
        unit=unit, thresholds=((0, "green"), (good, "orange"), (poor, "red")),
        threshold_lines=True, width=8)]
    bounds: tuple[float, ...] = tuple(getattr(c.settings.config, d.buckets or "", ()) or ())
    if any(abs(b - good) < 1e-9 for b in bounds):
        good_sel = ", ".join([*(f'{k}="{v}"' for k, v in fixed.items()), f'le="{_le(good)}"'])
        count = d.family_name(ns) + "_count" + (f"{{{pinned}}}" if pinned else "")
        by = f" by ({page[0]})" if page else ""
        items.append(_Panel(
            f"{label}: share of good page views", "timeseries",
            (_Query(f"sum{by} (rate({d.family_name(ns)}_bucket{{{good_sel}}}"
                    f"[$__rate_interval])) / sum{by} (rate({count}[$__rate_interval]))", legend),),
            description=f"Share of {label} reports at or under {good:g} (good), from the "
                        "bucket at that bound: exact, no interpolation.",
            unit="percentunit", min=0, max=1, width=4))
    return items


def _rum(c: _Ctx, rum: Sequence[MetricDef]) -> list[_Item]:
    """Web vitals p75 per vital and page group (thresholds), navigation, errors, ingestion.

    The web-vital histograms and the vitals each carries come from
    :func:`~mestres_observability.monitoring.rules.rum_entries`, the list the
    alert rules are made from: a histogram with a ``metric`` label gives a panel
    per vital (``{metric="LCP"}`` ...), one named after a vital a panel of its own.
    """
    ns = c.settings.config.namespace
    vitals = _vital_entries(c.settings.config, rum)
    with_vitals = {id(d) for d, _, _ in vitals}
    items: list[_Item] = [_Row("Web vitals")]
    for d, vital, fixed in vitals:
        items += _vital_panels(c, d, vital, fixed)
    others = [d for d in rum if d.kind == "histogram" and id(d) not in with_vitals]
    if others:
        items.append(_Row("Page loads"))
    for d in others:  # e.g. navigation phases: p75 by their own label
        by = [lab for lab in d.labels if lab not in _PAGE_LABELS][:1] or _page_label(d)
        items.append(_Panel(
            f"{d.name} p75" + (f" by {by[0]}" if by else ""), "timeseries",
            (_Query(_quantile(0.75, d.family_name(ns) + "_bucket", by),
                    f"{{{{{by[0]}}}}}" if by else "p75"),),
            description=d.docs, unit="s" if d.unit == "seconds" else "short"))
    counters = {d.name: d for d in rum if d.kind == "counter"}
    if counters:
        items.append(_Row("Errors, resources and ingestion"))
    resources, load = counters.get("rum_resources_total"), counters.get(
        "rum_resource_duration_seconds_total")
    for d in counters.values():
        if d is load and resources is not None:  # shown as a mean beside the count
            by = [lab for lab in d.labels if lab not in _PAGE_LABELS][:1]
            items.append(_Panel(
                "Mean resource load time" + (f" by {by[0]}" if by else ""), "timeseries",
                (_Query(f"{_rate(load.exposed_name(ns), by)} / "
                        f"{_rate(resources.exposed_name(ns), by)}",
                        f"{{{{{by[0]}}}}}" if by else "mean"),),
                description=load.docs, unit="s"))
            continue
        is_error = "error" in d.name
        by = _page_label(d) if is_error else (
            [lab for lab in d.labels if lab not in _PAGE_LABELS][:1] or _page_label(d))
        items.append(_Panel(
            ("JS errors per minute" if is_error else f"{d.name} per minute")
            + (f" by {by[0]}" if by else ""), "timeseries",
            (_Query(_rate(d.exposed_name(ns), by) + " * 60",
                    f"{{{{{by[0]}}}}}" if by else d.name),),
            description=d.docs, width=24 if is_error else 12))
    return items


# ---------------------------------------------------------------------- JSON model
def _target(c: _Ctx, q: _Query, ref: str) -> dict[str, Any]:
    exemplar = (c.reads_histogram(q.expr) and c.settings.config.exemplars
                and c.settings.config.tracing_enabled)
    target: dict[str, Any] = {
        "datasource": _PROM,
        "editorMode": "code",
        "expr": q.expr,
        "exemplar": exemplar,
        "instant": q.instant,
        "legendFormat": q.legend or "__auto",
        "range": not q.instant,
        "refId": ref,
    }
    if q.heatmap:
        target["format"] = "heatmap"
    elif q.table:
        target["format"] = "table"
    return target


def _panel_json(c: _Ctx, p: _Panel, pid: int, pos: dict[str, int]) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": colour, "value": None if i == 0 else value}
                                   for i, (value, colour) in enumerate(p.thresholds)]
    if not steps:
        steps = [{"color": "green", "value": None}]
    defaults: dict[str, Any] = {
        "unit": p.unit,
        "thresholds": {"mode": "absolute", "steps": steps},
        "mappings": [{"type": "value", "options": {
            value: {"text": text, "color": colour, "index": i}
            for i, (value, text, colour) in enumerate(p.mappings)}}] if p.mappings else [],
    }
    if p.min is not None:
        defaults["min"] = p.min
    if p.max is not None:
        defaults["max"] = p.max
    options: dict[str, Any] = {}
    if p.kind == "timeseries":
        defaults["color"] = {"mode": "palette-classic"}
        defaults["custom"] = {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if p.stack else 0,
            "showPoints": "never", "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if p.stack else "none"},
            "thresholdsStyle": {"mode": "dashed" if p.threshold_lines else "off"},
        }
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True,
                              "calcs": []},
                   "tooltip": {"mode": "multi", "sort": "desc"}}
    elif p.kind == "stat":
        defaults["color"] = {"mode": "thresholds"}
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "value", "graphMode": "none", "justifyMode": "auto",
                   "orientation": "auto", "textMode": "auto", "wideLayout": True,
                   "showPercentChange": False}
    elif p.kind == "bargauge":
        defaults["color"] = {"mode": "thresholds"}
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "displayMode": "gradient", "orientation": "horizontal",
                   "showUnfilled": True, "valueMode": "color"}
    elif p.kind == "piechart":
        defaults["color"] = {"mode": "palette-classic"}
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "pieType": "donut", "displayLabels": ["name", "percent"],
                   "legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                              "values": ["value"]},
                   "tooltip": {"mode": "single", "sort": "none"}}
    elif p.kind == "heatmap":
        options = {"calculate": False, "cellGap": 1, "color": {"mode": "scheme",
                   "scheme": "Oranges", "steps": 64, "exponent": 0.5, "scale": "exponential",
                   "fill": "dark-orange", "reverse": False},
                   "exemplars": {"color": "rgba(255,0,255,0.7)"},
                   "filterValues": {"le": 1e-9}, "legend": {"show": True},
                   "rowsFrame": {"layout": "auto"}, "yAxis": {"axisPlacement": "left",
                                                              "unit": p.unit},
                   "tooltip": {"mode": "single", "yHistogram": True, "showColorScale": False}}
    elif p.kind == "table":
        options = {"showHeader": True, "cellHeight": "sm"}
    panel: dict[str, Any] = {
        "datasource": _PROM,
        "description": p.description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": pos,
        "id": pid,
        "options": options,
        "targets": [_target(c, q, chr(ord("A") + i)) for i, q in enumerate(p.queries)],
        "title": p.title,
        "type": p.kind,
    }
    if p.kind == "table":
        panel["transformations"] = [{"id": "organize", "options": {
            "excludeByName": {"Time": True, "Value": True}}}]
    if p.time_from:
        panel["timeFrom"] = p.time_from
        panel["hideTimeOverride"] = False
    return panel


def _layout(c: _Ctx, items: Sequence[_Item], extra: Sequence[dict[str, Any]] = ()
            ) -> list[dict[str, Any]]:
    """Panels with ids and grid positions: left to right in 24 columns, rows full width.

    A row followed by no panel is dropped (every panel of it was switched off).
    """
    kept: list[_Item] = [it for i, it in enumerate(items)
                         if not isinstance(it, _Row)
                         or (i + 1 < len(items) and not isinstance(items[i + 1], _Row))]
    out: list[dict[str, Any]] = []
    x = y = line_height = 0
    pid = 0

    def place(width: int, height: int) -> dict[str, int]:
        nonlocal x, y, line_height
        if x + width > 24:
            x, y, line_height = 0, y + line_height, 0
        pos = {"h": height, "w": width, "x": x, "y": y}
        x += width
        line_height = max(line_height, height)
        return pos

    def new_row(title: str) -> None:
        nonlocal x, y, line_height, pid
        if x:
            x, y, line_height = 0, y + line_height, 0
        pid += 1
        out.append({"collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                    "id": pid, "panels": [], "title": title, "type": "row"})
        y += 1

    for it in kept:
        if isinstance(it, _Row):
            new_row(it.title)
        else:
            pid += 1
            out.append(_panel_json(c, it, pid, place(it.width, it.height)))
    if extra:
        new_row("Predictions")
        for panel in extra:
            pid += 1
            size = panel.get("gridPos") or {}
            out.append({**panel, "id": pid,
                        "gridPos": place(int(size.get("w", 12)), int(size.get("h", 8)))})
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "service"


def _uid(kind: str, settings: RenderSettings) -> str:
    return f"mo-{kind}-{_slug(settings.service)}"[:40].rstrip("-")


def _dashboard(c: _Ctx, kind: str, title: str, panels: list[dict[str, Any]],
               description: str) -> dict[str, Any]:
    s = c.settings
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": description,
        "editable": False,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"asDropdown": False, "icon": "external link", "includeVars": False,
                   "keepTime": True, "tags": ["mestres-observability"], "targetBlank": False,
                   "title": "Dashboards", "type": "dashboards"}],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["mestres-observability", _slug(s.service), kind],
        "templating": {"list": []},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": f"{s.service} · {title}",
        "uid": _uid(kind, s),
        "version": 1,
        "weekStart": "",
    }


def dashboards(settings: RenderSettings,
               entries: Sequence[MetricDef] | None = None) -> dict[str, dict[str, Any]]:
    """The dashboards as Grafana JSON models, keyed by file name (``business.json`` ...).

    Args:
        settings: what the dashboards are rendered for.
        entries: the catalogue entries to build from (default: the whole
            catalogue); tests pass extra entries (browser metrics) here.
    """
    pool = tuple(catalogue.CATALOGUE if entries is None else entries)
    c = _Ctx(settings, pool)
    out = {
        "business.json": _dashboard(
            c, "business", "Business overview",
            _layout(c, [*_business(c), *_predictions(c)], prediction_panels(settings)),
            "Revenue, orders, products, order values and payment outcomes."),
        "technical.json": _dashboard(
            c, "technical", "Technical",
            _layout(c, _technical(c)),
            "Requests, errors, latency per route, resources, health checks and the "
            "instrumentation's own health."),
    }
    rum = rum_entries(settings, pool)
    if rum:
        out["rum.json"] = _dashboard(
            c, "rum", "Real user monitoring", _layout(c, _rum(c, rum)),
            "Web vitals (p75 per page group against the web-vitals thresholds) and "
            "browser errors.")
    return out


def dashboard_expressions(settings: RenderSettings,
                          entries: Sequence[MetricDef] | None = None
                          ) -> list[tuple[str, str]]:
    """``(panel title, PromQL)`` of every query of every dashboard.

    Grafana's variables are replaced by :data:`GRAFANA_VARIABLES`, so each
    expression is plain PromQL that Prometheus evaluates as is. Titles are
    prefixed with the dashboard file's stem (``technical: Latency p95 by route``).
    """
    out: list[tuple[str, str]] = []
    for name, dash in dashboards(settings, entries).items():
        stem = name.removesuffix(".json")
        for panel in dash["panels"]:
            for target in panel.get("targets", ()):
                expr = str(target.get("expr", ""))
                if not expr or target.get("datasource", {}).get("uid") != PROMETHEUS_UID:
                    continue
                for var, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(var, value)
                out.append((f"{stem}: {panel['title']}", expr))
    return out


# ---------------------------------------------------------------------- provisioning
def datasources(settings: RenderSettings) -> dict[str, Any]:
    """Grafana's datasource provisioning file (``apiVersion: 1``) as a mapping.

    Prometheus links exemplars (label ``trace_id``, as the library writes it)
    to the Jaeger datasource; Jaeger links spans to their log lines in
    Elasticsearch; Elasticsearch links a line's ``trace_id`` back to Jaeger.
    The Elasticsearch password is read from the ``LOGS_READER_PASSWORD``
    variable of the Grafana container, never written here. Grafana expands
    ``$VAR`` in provisioning files, so its own ``${__...}`` macros are
    written ``$${__...}``.
    """
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus", "uid": PROMETHEUS_UID, "type": "prometheus",
                "access": "proxy", "url": settings.prometheus_url, "isDefault": True,
                "editable": False,
                "jsonData": {
                    "httpMethod": "POST",
                    "timeInterval": settings.scrape_interval,
                    "exemplarTraceIdDestinations": [
                        {"name": "trace_id", "datasourceUid": JAEGER_UID,
                         "urlDisplayLabel": "Open trace"},
                    ],
                },
            },
            {
                "name": "Jaeger", "uid": JAEGER_UID, "type": "jaeger", "access": "proxy",
                "url": settings.jaeger_url, "editable": False,
                "jsonData": {
                    "tracesToLogsV2": {
                        "datasourceUid": ELASTICSEARCH_UID, "filterByTraceID": True,
                        "spanStartTimeShift": "-5m", "spanEndTimeShift": "5m",
                        "customQuery": True, "query": 'trace_id:"$${__trace.traceId}"',
                    },
                    "nodeGraph": {"enabled": True},
                },
            },
            {
                "name": "Logs", "uid": ELASTICSEARCH_UID, "type": "elasticsearch",
                "access": "proxy", "url": settings.elasticsearch_url, "editable": False,
                "basicAuth": True, "basicAuthUser": "logs_reader",
                "secureJsonData": {"basicAuthPassword": "${LOGS_READER_PASSWORD}"},
                "jsonData": {
                    "index": f"{settings.log_index_prefix}-*",
                    "timeField": "@timestamp",
                    "logMessageField": "event",
                    "logLevelField": "level",
                    "dataLinks": [{"field": "trace_id", "datasourceUid": JAEGER_UID,
                                   "url": "$${__value.raw}", "urlDisplayLabel": "Open trace"}],
                },
            },
        ],
    }


def dashboard_provider(settings: RenderSettings) -> dict[str, Any]:
    """Grafana's dashboard provisioning file: one file provider over :data:`DASHBOARDS_DIR`."""
    return {
        "apiVersion": 1,
        "providers": [{
            "name": "mestres-observability",
            "folder": settings.service,
            "folderUid": _uid("folder", settings),
            "type": "file",
            "disableDeletion": True,
            "allowUiUpdates": False,
            "updateIntervalSeconds": 60,
            "options": {"path": DASHBOARDS_DIR, "foldersFromFilesStructure": False},
        }],
    }


def _yaml(data: Any, head: str) -> str:
    return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


_HEAD = "# Generated by mestres-observability render: edit the settings, not this file.\n"


def render(settings: RenderSettings) -> dict[str, str]:
    """Grafana's provisioning files and dashboards, keyed by path relative to the output."""
    out = {
        "grafana/provisioning/datasources/datasources.yml": _yaml(datasources(settings), _HEAD),
        "grafana/provisioning/dashboards/dashboards.yml": _yaml(dashboard_provider(settings),
                                                                _HEAD),
    }
    for name, dash in dashboards(settings).items():
        out[f"grafana/dashboards/{name}"] = json.dumps(dash, indent=2, ensure_ascii=False) + "\n"
    return out
