"""All settings of mestres-observability, in one typed place.

:class:`ObservabilityConfig` is a frozen dataclass. Building one is pure (no
environment is read); :meth:`ObservabilityConfig.from_env` layers keyword
arguments over ``MESTRES_OBS_*`` variables over the standard ``OTEL_*``
variables over the defaults. Every value is validated when the object is
built, so a bad setting fails at :func:`~mestres_observability.init_observability`
with a :class:`~mestres_observability.errors.ConfigurationError` that names the
setting, the value and the fix; nothing fails later at request time.

The configuration reference in the docs is generated from the field metadata
below (:func:`settings_table`), so it cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import logging
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ._redact import combine_patterns
from .errors import ConfigurationError

__all__ = ["ENV_PREFIX", "ObservabilityConfig", "settings_table"]

ENV_PREFIX = "MESTRES_OBS_"
_log = logging.getLogger("mestres_observability.config")

#: Default histogram buckets for HTTP durations (seconds). Identical to
#: prometheus_client's defaults and OpenTelemetry's stable HTTP boundaries,
#: with a tail to 30 s for slow endpoints.
DEFAULT_HTTP_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0,
)
#: Default buckets (bytes) of the HTTP request and response size histograms: powers of 4
#: from 64 B to 16 MiB.
DEFAULT_HTTP_SIZE_BUCKETS: tuple[float, ...] = tuple(float(4 ** n) for n in range(3, 13))
#: Label value of a per-request label whose value is not in its allowlist.
OTHER_LABEL_VALUE = "other"
#: Labels of the HTTP request families that ``http_labels`` and ``http_label_values`` may not use.
HTTP_BUILTIN_LABELS: tuple[str, ...] = ("method", "endpoint", "status")
#: Frameworks of ``excluded_urls_by_framework`` (``OTEL_PYTHON_<FRAMEWORK>_EXCLUDED_URLS``).
EXCLUDED_URLS_FRAMEWORKS: tuple[str, ...] = ("flask", "fastapi", "starlette", "django")

#: Default buckets for order totals (currency units).
DEFAULT_ORDER_VALUE_BUCKETS: tuple[float, ...] = (
    5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
)
#: Keys whose values are replaced by ``[REDACTED]`` in logs (case-insensitive,
#: ``-`` and ``_`` alike, whole key or ``_``-suffix).
DEFAULT_REDACT_KEYS: tuple[str, ...] = (
    "password", "passwd", "pwd", "secret", "token", "api_key", "apikey", "authorization",
    "cookie", "set_cookie", "card_number", "cvv", "cvc", "private_key", "access_key",
    "client_secret", "session", "credentials",
)
#: Query-string parameters whose values are redacted from logged URLs, besides
#: ``redact_keys``. Names are compared after percent-decoding, case-insensitively,
#: ``-``, ``.`` and ``_`` alike or left out, camelCase split, each part of
#: ``user[password]`` on its own; a name of five or more characters also matches as a
#: ``_``-suffix (``X-Amz-Signature``, ``oauth_signature``), a shorter one only whole
#: (``code``, not ``country_code``). See the configuration reference.
DEFAULT_REDACT_QUERY_PARAMS: tuple[str, ...] = (
    # tokens and keys
    "token", "access_token", "refresh_token", "id_token", "jwt", "key", "api_key", "apikey",
    "access_key", "private_key", "credential", "assertion", "samlresponse",
    "ticket",
    # passwords and secrets
    "password", "passwd", "pwd", "pass", "passphrase", "secret", "client_secret", "pin", "otp",
    # signatures
    "signature", "sig", "hmac",
    # sessions
    "session", "sessionid", "session_id", "sid", "jsessionid", "phpsessid",
    # codes
    "code", "auth_code", "authorization_code", "device_code", "user_code", "verification_code",
    "auth",
)

#: Default buckets (seconds) of ``rum_web_vitals_seconds``: every Web Vitals
#: good/poor threshold is a bound (INP 0.2/0.5, TTFB 0.8/1.8, FCP 1.8/3, LCP
#: 2.5/4, legacy FID 0.1/0.3), so "share of good" is an exact bucket ratio.
DEFAULT_RUM_VITALS_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 1.8, 2.5, 3.0, 4.0, 6.0, 10.0, 20.0,
)
#: Thresholds ``rum_vitals_buckets`` must contain.
RUM_VITALS_THRESHOLDS: tuple[float, ...] = (0.2, 0.5, 0.8, 1.8, 2.5, 3.0, 4.0)
#: Default buckets of ``rum_layout_shift`` (CLS, unitless), with the 0.1/0.25 thresholds.
DEFAULT_RUM_CLS_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 2.0,
)
#: Thresholds ``rum_cls_buckets`` must contain.
RUM_CLS_THRESHOLDS: tuple[float, ...] = (0.1, 0.25)
#: Default buckets (seconds) of ``rum_navigation_seconds``.
DEFAULT_RUM_NAVIGATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
#: Default buckets for task and job durations and queue waits (seconds), to an hour.
DEFAULT_TASK_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1800.0, 3600.0,
)
#: Default buckets for database statements and pool waits (seconds).
DEFAULT_DB_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_ORIGIN_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s?#@]+$")
_EVENT_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _setting(
    default: Any = None,
    *,
    kind: str,
    doc: str,
    otel: str | None = None,
    secret: bool = False,
    choices: tuple[str, ...] | None = None,
    open_choices: bool = False,
    optional: bool = False,
    minimum: float | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    meta = {
        "kind": kind,
        "doc": doc,
        "otel": otel,
        "secret": secret,
        "choices": choices,
        "open_choices": open_choices,
        "optional": optional,
        "minimum": minimum,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, repr=False)
class ObservabilityConfig:
    """Every setting of the library.

    Build it directly (pure, no environment read) or with :meth:`from_env`.
    Lists given through environment variables are comma-separated; mappings are
    ``key=value`` pairs separated by commas. Values are validated on
    construction and a :class:`~mestres_observability.errors.ConfigurationError`
    names any bad one.

    Example:
        >>> cfg = ObservabilityConfig(service_name="mestres-cafe-api", namespace="shop")
        >>> cfg.metric_name("orders_total")
        'shop_orders_total'
    """

    # ---- service identity -------------------------------------------------
    enabled: bool = _setting(
        True, kind="bool",
        doc="Master switch. `false` turns every decorator and middleware into a cheap no-op; "
        "probes keep answering and `/metrics` stays a valid page.",
    )
    service_name: str = _setting(
        "unknown_service", kind="str", otel="OTEL_SERVICE_NAME",
        doc="Service name: `service.name` resource attribute, `service` log field, "
        "`service_info` label.",
    )
    service_version: str = _setting(
        "0.0.0", kind="str", doc="Service version (`service.version`, `service_info`, `/health`)."
    )
    environment: str = _setting(
        "production", kind="str",
        doc="Deployment environment (`deployment.environment.name`, `service_info`).",
    )

    # ---- metrics ----------------------------------------------------------
    namespace: str = _setting(
        "", kind="str",
        doc="Prefix for HTTP, business and infrastructure metric names (`shop` gives "
        "`shop_orders_total`). Not applied to `process_*`, `mestres_observability_*` or "
        "metrics users create themselves.",
    )
    default_currency: str = _setting(
        "BRL", kind="str",
        doc="Currency label used when neither the order nor the decorator names one.",
    )
    revenue_statuses: tuple[str, ...] = _setting(
        (), kind="strs",
        doc="Order statuses that count towards `revenue_total`. Empty: every returned order "
        "(the seed's behaviour).",
    )
    http_buckets: tuple[float, ...] = _setting(
        DEFAULT_HTTP_BUCKETS, kind="floats",
        doc="Histogram buckets (seconds) for `http_request_duration_seconds` and `timed()`.",
    )
    order_value_buckets: tuple[float, ...] = _setting(
        DEFAULT_ORDER_VALUE_BUCKETS, kind="floats",
        doc="Histogram buckets (currency units) for `order_value`.",
    )
    max_label_values: int = _setting(
        1000, kind="int", minimum=1,
        doc="Cardinality guard: distinct label sets per metric before data-derived labels fold "
        "into `<overflow>`.",
    )
    label_limits: dict[str, int] = _setting(
        kind="intmap", factory=dict,
        doc="Per-metric overrides of `max_label_values`, keyed by the metric's base name "
        "(e.g. `products_sold_total=5000`).",
    )
    created_series: bool = _setting(
        True, kind="bool", doc="Expose the `*_created` series of counters and histograms."
    )
    expose_global_registry: bool = _setting(
        False, kind="bool",
        doc="Also expose prometheus_client's global `REGISTRY` (metrics you defined yourself) on "
        "`/metrics`. A family present in both fails at init. Not available in multiprocess mode.",
    )
    system_metrics: bool = _setting(
        True, kind="bool", doc="Collect host/container metrics with psutil at scrape time."
    )
    process_metrics: bool = _setting(
        True, kind="bool", doc="Collect `process_*` metrics for this process at scrape time."
    )
    runtime_metrics: bool = _setting(
        True, kind="bool",
        doc="Expose prometheus_client's `python_gc_*` and `python_info` families; with several "
        "workers, each worker's garbage-collector counts, labelled by `pid`.",
    )
    runtime_metrics_interval: float = _setting(
        5.0, kind="float", minimum=0.01,
        doc="Multiprocess mode: how often (seconds) each worker writes its garbage-collector "
        "counts to the shared files (a worker serving a scrape writes its own first).",
    )
    system_mountpoints: tuple[str, ...] = _setting(
        ("/",), kind="strs",
        doc="Mount points whose usage `disk_usage_percent` reports. Only these are read: a dead "
        "network mount can hang `statvfs`.",
    )
    system_scrape_budget: float = _setting(
        0.25, kind="float", minimum=0.0,
        doc="Time budget (seconds) for the system collector within one scrape; past it, slow "
        "families are skipped and counted.",
    )

    # ---- logs -------------------------------------------------------------
    configure_logging: bool = _setting(
        True, kind="bool",
        doc="Configure structlog and route the standard library's `logging` through the same "
        "JSON renderer. `false` leaves your own structlog configuration alone.",
    )
    log_level: str = _setting(
        "INFO", kind="choice", choices=_LEVELS, doc="Root log level."
    )
    log_levels: dict[str, str] = _setting(
        kind="strmap", factory=dict,
        doc="Per-logger levels, e.g. `sqlalchemy.engine=WARNING,urllib3=ERROR`.",
    )
    log_format: str = _setting(
        "auto", kind="choice", choices=("auto", "json", "console"),
        doc="`json`: one JSON object per line. `console`: readable output for development. "
        "`auto`: console when stdout is a terminal, JSON otherwise.",
    )
    redact_keys: tuple[str, ...] = _setting(
        DEFAULT_REDACT_KEYS, kind="strs",
        doc="Keys whose values are redacted in logs, at any depth (case-insensitive, `-` and `_` "
        "alike, whole key or `_`-suffix).",
    )
    redact_card_numbers: bool = _setting(
        True, kind="bool",
        doc="Redact string values that look like payment card numbers (13-19 digits passing Luhn).",
    )
    redact_patterns: tuple[str, ...] = _setting(
        (), kind="strs",
        doc="Regular expressions whose matches in string values are replaced by `[REDACTED]` in "
        "log lines and span attributes (e.g. an order reference `ORD-[0-9]{8}`); compiled once "
        "into one expression.",
    )
    log_max_value_length: int = _setting(
        4096, kind="int", minimum=16,
        doc="Longer string values in log lines are truncated with a marker.",
    )

    # ---- tracing ----------------------------------------------------------
    tracing_enabled: bool = _setting(
        True, kind="bool", otel="OTEL_SDK_DISABLED",
        doc="Create spans. `OTEL_SDK_DISABLED=true` turns tracing off.",
    )
    traces_exporter: str | None = _setting(
        None, kind="choice", choices=("otlp", "console", "none"), optional=True,
        otel="OTEL_TRACES_EXPORTER",
        doc="`otlp`, `console` or `none`. Unset: `otlp` when an OTLP endpoint is configured, "
        "else `none` (a documented deviation from OpenTelemetry's `otlp` default).",
    )
    otlp_endpoint: str | None = _setting(
        None, kind="str", optional=True, otel="OTEL_EXPORTER_OTLP_ENDPOINT",
        doc="Base OTLP/HTTP endpoint; `/v1/traces` is appended.",
    )
    otlp_traces_endpoint: str | None = _setting(
        None, kind="str", optional=True, otel="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        doc="Full OTLP/HTTP traces URL (used as given).",
    )
    otlp_headers: dict[str, str] = _setting(
        kind="strmap", factory=dict, secret=True, otel="OTEL_EXPORTER_OTLP_HEADERS",
        doc="Headers sent with every export (API keys): never logged.",
    )
    otlp_timeout: float = _setting(
        2.0, kind="float", minimum=0.001, otel="OTEL_EXPORTER_OTLP_TIMEOUT",
        doc="Export request timeout in seconds (the `OTEL_*` variable is in milliseconds).",
    )
    traces_sampler: str = _setting(
        "parentbased_always_on", kind="choice", otel="OTEL_TRACES_SAMPLER",
        choices=(
            "always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio",
        ), open_choices=True,
        doc="Sampler name as in `OTEL_TRACES_SAMPLER`: a built-in one, or the name of an "
        "installed `opentelemetry_traces_sampler` entry point, given `traces_sampler_arg` "
        "(the library's own spans are then SDK spans, see `lean_spans`).",
    )
    traces_sampler_arg: float | None = _setting(
        None, kind="float", optional=True, minimum=0.0, otel="OTEL_TRACES_SAMPLER_ARG",
        doc="Sampler argument (the ratio for `*traceidratio`, 0..1).",
    )
    propagators: tuple[str, ...] = _setting(
        ("tracecontext", "baggage"), kind="strs", otel="OTEL_PROPAGATORS",
        doc="Context propagators (`tracecontext`, `baggage`, `b3`, ... as installed).",
    )
    resource_attributes: dict[str, str] = _setting(
        kind="strmap", factory=dict, otel="OTEL_RESOURCE_ATTRIBUTES",
        doc="Extra resource attributes (`key=value,...`).",
    )
    span_queue_size: int = _setting(
        2048, kind="int", minimum=1, otel="OTEL_BSP_MAX_QUEUE_SIZE",
        doc="Bounded span queue; spans beyond it are dropped and counted.",
    )
    shutdown_timeout: float = _setting(
        5.0, kind="float", minimum=0.0,
        doc="Upper bound (seconds) of `Observability.shutdown()`, flush included.",
    )
    lean_spans: bool = _setting(
        True, kind="bool",
        doc="Start the library's own spans (request SERVER spans, business spans, `span()`, "
        "`@traced`) as lean spans, encoded for OTLP without the SDK's per-span work, when "
        "the tracer provider is the library's, no other span processor is added to it and "
        "the sampler is a built-in one. Same spans on the wire; `false` forces SDK spans.",
    )
    tail_sampling: bool = _setting(
        False, kind="bool",
        doc="Tail sampling: hold the spans of each trace until its local root span ends, then "
        "export the whole trace when that root errored or ran at least "
        "`tail_sampling_latency_threshold` seconds, or when its trace id falls in "
        "`tail_sampling_ratio`; drop it otherwise. Applies to the spans the head sampler "
        "(`traces_sampler`) records.",
    )
    tail_sampling_latency_threshold: float = _setting(
        2.0, kind="float", minimum=0.0,
        doc="Seconds from which a local root span is slow and its trace kept.",
    )
    tail_sampling_ratio: float = _setting(
        0.1, kind="float", minimum=0.0,
        doc="Share (0..1) of the traces neither errored nor slow that are kept, decided on "
        "the trace id as `traceidratio` does (0: none, 1: all).",
    )
    tail_sampling_max_spans: int = _setting(
        10000, kind="int", minimum=1,
        doc="Most spans held while their local root runs; past it the trace held longest is "
        "dropped whole and counted (`mestres_observability_tail_sampling_spans_total`).",
    )
    respect_global_tracer_provider: bool = _setting(
        True, kind="bool",
        doc="If an SDK `TracerProvider` is already installed, add our processor to it instead "
        "of replacing it.",
    )
    exemplars: bool = _setting(
        True, kind="bool",
        doc="Attach `trace_id`/`span_id` exemplars to durations and business counters when a "
        "sampled span is active (visible in the OpenMetrics exposition).",
    )
    auto_instrument: tuple[str, ...] = _setting(
        (), kind="strs",
        doc="OpenTelemetry auto-instrumentations to enable when installed, e.g. "
        "`sqlalchemy,redis`.",
    )

    # ---- span controls ------------------------------------------------------
    server_request_hook: Callable[..., Any] | None = _setting(
        None, kind="callable", optional=True,
        doc="`hook(span, request)`, called with each request's SERVER span and the framework's "
        "request object (Flask `flask.Request`, Starlette/FastAPI `starlette.requests.Request`, "
        "Django `HttpRequest`) while the span is recording. A callable, or its import path "
        "`package.module:name` in a variable. A hook that raises is counted and logged once, "
        "never breaks the request.",
    )
    server_response_hook: Callable[..., Any] | None = _setting(
        None, kind="callable", optional=True,
        doc="`hook(span, request, response)`, called before the SERVER span ends with the "
        "framework's response (Flask and Django: the response object; ASGI: the "
        "`http.response.start` message). Same rules as `server_request_hook`.",
    )
    capture_request_headers: tuple[str, ...] = _setting(
        (), kind="strs", otel="OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST",
        doc="Request headers recorded on the SERVER span as `http.request.header.<name>` (a list "
        "of strings): names or regular expressions, matched whole and case-insensitively "
        "(`content-type,x-.*`).",
    )
    capture_response_headers: tuple[str, ...] = _setting(
        (), kind="strs", otel="OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE",
        doc="Response headers recorded as `http.response.header.<name>`; as "
        "`capture_request_headers`.",
    )
    capture_headers_sanitize_fields: tuple[str, ...] = _setting(
        (), kind="strs", otel="OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS",
        doc="Captured headers whose values are recorded as `[REDACTED]` (names or regular "
        "expressions, whole and case-insensitive). Headers named by `redact_keys` are redacted "
        "as well.",
    )
    scrub_span_attributes: bool = _setting(
        True, kind="bool",
        doc="Redact span attributes with the rules of the logs before export: keys named by "
        "`redact_keys`, card numbers, credentials, JWTs, URL passwords, query-string secrets "
        "and `redact_patterns` in string values. Covers every span the library's pipeline "
        "exports and `captured_spans()` sees.",
    )

    # ---- beyond the web request: Celery, outbound calls, databases, jobs ----
    celery_metrics: bool = _setting(
        True, kind="bool",
        doc="Record `celery_*` task metrics in Celery workers (`mestres_observability.celery`).",
    )
    celery_auto_instrument: bool = _setting(
        True, kind="bool",
        doc="Instrument Celery (task metrics, spans, trace context in task headers) when "
        "`init_observability` runs in a process that imported `celery` or is a Celery worker.",
    )
    task_buckets: tuple[float, ...] = _setting(
        DEFAULT_TASK_BUCKETS, kind="floats",
        doc="Histogram buckets (seconds) for `celery_task_duration_seconds` and "
        "`celery_task_queue_wait_seconds`.",
    )
    http_client_metrics: bool = _setting(
        True, kind="bool",
        doc="Record `http_client_*` metrics of outbound calls (`mestres_observability.outbound`).",
    )
    db_metrics: bool = _setting(
        True, kind="bool",
        doc="Record `db_*` and `cache_*` metrics of instrumented SQLAlchemy engines and Django "
        "connections and caches (`mestres_observability.db`).",
    )
    db_buckets: tuple[float, ...] = _setting(
        DEFAULT_DB_BUCKETS, kind="floats",
        doc="Histogram buckets (seconds) for `db_query_duration_seconds` and "
        "`db_pool_wait_seconds`.",
    )
    job_metrics: bool = _setting(
        True, kind="bool", doc="Record `job_*` metrics of batch jobs (`job()`).",
    )
    pushgateway_url: str | None = _setting(
        None, kind="str", optional=True,
        doc="Pushgateway base URL (`http://pushgateway:9091`): each `job()` pushes its metrics "
        "there when it ends, grouped by job and instance. A failed push is counted, never raised.",
    )
    pushgateway_timeout: float = _setting(
        2.0, kind="float", minimum=0.001,
        doc="Timeout (seconds) of one push to the Pushgateway.",
    )
    job_textfile_dir: str | None = _setting(
        None, kind="str", optional=True,
        doc="Directory of node-exporter's textfile collector: each `job()` writes "
        "`<job>.prom` there when it ends (atomic rename).",
    )
    job_instance: str | None = _setting(
        None, kind="str", optional=True,
        doc="`instance` of a job's Pushgateway grouping key. Unset: the host name.",
    )

    # ---- health -----------------------------------------------------------
    health_deadline: float = _setting(
        0.8, kind="float", minimum=0.01,
        doc="Overall deadline (seconds) of one probe, below the kubelet's 1 s default timeout.",
    )
    health_check_timeout: float = _setting(
        0.5, kind="float", minimum=0.001,
        doc="Default per-check timeout (seconds); each check runs under the smaller of its own "
        "timeout and the deadline.",
    )
    health_cache_ttl: float = _setting(
        1.0, kind="float", minimum=0.0,
        doc="Seconds a check result is reused, so probe storms do not hammer dependencies.",
    )
    health_cpu_threshold: float = _setting(
        90.0, kind="float", minimum=0.0, doc="CPU percent above which `checks.system` is degraded."
    )
    health_memory_threshold: float = _setting(
        90.0, kind="float", minimum=0.0,
        doc="Memory percent above which `checks.system` is degraded.",
    )
    health_disk_threshold: float = _setting(
        90.0, kind="float", minimum=0.0, doc="Disk percent above which `checks.system` is degraded."
    )
    health_expose_details: bool = _setting(
        False, kind="bool",
        doc="Include check details in responses (internal networks only). Error messages are "
        "still never returned, only the error kind.",
    )
    health_detailed_token: str | None = _setting(
        None, kind="str", optional=True, secret=True,
        doc="Bearer token required by `/health/detailed` (compared in constant time).",
    )
    health_start_ready: bool = _setting(
        True, kind="bool",
        doc="Mark start-up complete at init. `false`: readiness stays 503 until "
        "`obs.health.mark_started()`.",
    )

    # ---- HTTP adapters ----------------------------------------------------
    metrics_path: str | None = _setting(
        "/metrics", kind="str", optional=True, doc="Path of the metrics endpoint; empty: off."
    )
    health_path: str | None = _setting(
        "/health", kind="str", optional=True, doc="Basic health endpoint; empty: off."
    )
    health_detailed_path: str | None = _setting(
        "/health/detailed", kind="str", optional=True, doc="Detailed health endpoint; empty: off."
    )
    health_readiness_path: str | None = _setting(
        "/health/readiness", kind="str", optional=True, doc="Readiness probe; empty: off."
    )
    health_liveness_path: str | None = _setting(
        "/health/liveness", kind="str", optional=True, doc="Liveness probe; empty: off."
    )
    metrics_auth: str | None = _setting(
        None, kind="str", optional=True, secret=True,
        doc="Protect `/metrics`: `bearer:<token>` or `basic:<user>:<password>`.",
    )
    metrics_port: int | None = _setting(
        None, kind="int", optional=True, minimum=0,
        doc="Serve `/metrics` on a separate listener on this port instead of the app.",
    )
    metrics_host: str = _setting(
        "127.0.0.1", kind="str", doc="Bind address of the separate metrics listener."
    )
    excluded_paths: tuple[str, ...] | None = _setting(
        None, kind="strs", optional=True,
        doc="Paths not measured, traced or access-logged. Exact paths, or patterns with `*`. "
        "Unset: the library's own endpoints (the RUM ingestion endpoint is still counted in the "
        "request metrics: see `rum_server_spans`, `rum_access_log`).",
    )
    group_status_codes: bool = _setting(
        False, kind="bool", doc="Label HTTP status as `2xx`, `4xx`... instead of the exact code."
    )
    trusted_proxies: tuple[str, ...] = _setting(
        (), kind="strs",
        doc="Addresses or CIDR ranges whose `X-Forwarded-For` is honoured for `ip_address`.",
    )
    request_id_header: str = _setting(
        "X-Request-ID", kind="str", doc="Header read and echoed as the request id."
    )
    access_log: bool = _setting(
        True, kind="bool",
        doc="Write one `http_request` log line per request (the access log) from the adapters.",
    )
    server_timing: bool = _setting(
        True, kind="bool",
        doc="Add `Server-Timing: traceparent;desc=\"00-<trace>-<span>-01\"` to HTML responses "
        "whose SERVER span is sampled (tracing on), so the browser snippet can link its reports "
        "to the trace of the page.",
    )

    excluded_methods: tuple[str, ...] = _setting(
        (), kind="strs",
        doc="Request methods neither measured, traced nor access-logged (e.g. `OPTIONS,HEAD`), "
        "compared in upper case.",
    )
    excluded_urls: tuple[str, ...] | None = _setting(
        None, kind="strs", optional=True, otel="OTEL_PYTHON_EXCLUDED_URLS",
        doc="Regular expressions searched in the full request URL (as the OpenTelemetry "
        "instrumentations do: `healthz,/internal/.*`); a match is neither measured, traced nor "
        "access-logged. `OTEL_PYTHON_FLASK_EXCLUDED_URLS`, `..._FASTAPI_...`, "
        "`..._STARLETTE_...` and `..._DJANGO_...` replace it for their framework "
        "(`excluded_urls_by_framework`).",
    )
    excluded_urls_by_framework: dict[str, tuple[str, ...]] = _setting(
        kind="strsmap", factory=dict,
        doc="Per-framework `excluded_urls` (`flask`, `fastapi`, `starlette`, `django`), each "
        "replacing `excluded_urls` for its framework; unset, filled from "
        "`OTEL_PYTHON_<FRAMEWORK>_EXCLUDED_URLS`. In a variable: a JSON object of lists.",
    )
    http_labels: dict[str, str] = _setting(
        kind="strmap", factory=dict,
        doc="Static labels added to every HTTP request series (`http_requests_total`, the "
        "duration, in-progress and size families), e.g. `app=shop,region=eu`.",
    )
    http_label_values: dict[str, tuple[str, ...]] = _setting(
        kind="strsmap", factory=dict,
        doc="Labels set per request by `http_label_callback`, each with its allowlist of values; "
        "a value outside it (or missing, or the callback failing) becomes `other`. In a "
        "variable: a JSON object of lists (`{\"tier\": [\"free\", \"pro\"]}`).",
    )
    http_label_callback: Callable[[Any], Any] | None = _setting(
        None, kind="callable", optional=True,
        doc="`callable(info) -> mapping` giving the `http_label_values` labels of one request "
        "(`info`: an `HttpRequestInfo`); a callable or its dotted path (`myapp.metrics:labels`).",
    )
    http_size_metrics: bool = _setting(
        False, kind="bool",
        doc="Request and response body size histograms (`http_request_size_bytes`, "
        "`http_response_size_bytes`).",
    )
    http_size_buckets: tuple[float, ...] = _setting(
        DEFAULT_HTTP_SIZE_BUCKETS, kind="floats",
        doc="Buckets (bytes) of the request and response size histograms.",
    )

    # ---- browser real-user monitoring (RUM) -------------------------------
    rum_enabled: bool = _setting(
        False, kind="bool",
        doc="Browser real-user monitoring: serve the snippet at `rum_script_path`, the ingestion "
        "endpoint at `rum_path`, and expose the `rum_*` metrics. Off by default: the endpoint "
        "takes input from anyone who can reach the app.",
    )
    rum_path: str | None = _setting(
        "/api/v1/metrics", kind="str", optional=True,
        doc="Path of the RUM ingestion endpoint (`POST`); empty: off.",
    )
    rum_script_path: str | None = _setting(
        "/observability/rum.js", kind="str", optional=True,
        doc="Path the RUM snippet is served at; empty: off (copy the file into your bundle).",
    )
    rum_allowed_origins: tuple[str, ...] = _setting(
        (), kind="strs",
        doc="Other origins (`https://shop.example`) whose pages may send RUM reports (CORS "
        "allowlist; `*` for any). Empty: same origin only.",
    )
    rum_check_origin: bool = _setting(
        True, kind="bool",
        doc="Refuse (403) a report whose `Origin` header is neither the app's own host nor in "
        "`rum_allowed_origins` (beacons are never preflighted, so CORS alone does not stop them).",
    )
    rum_sample_rate: float = _setting(
        1.0, kind="float", minimum=0.0,
        doc="Share of page views (0..1) the snippet reports; the script tag's "
        "`data-sample-rate` overrides it.",
    )
    rum_max_body: int = _setting(
        65536, kind="int", minimum=1024,
        doc="Largest RUM request body read, in bytes (whatever `Content-Length` says); longer: 413.",
    )
    rum_max_events: int = _setting(
        50, kind="int", minimum=1, doc="Most events in one RUM request; more: 400."
    )
    rum_rate_limit: float = _setting(
        10.0, kind="float", minimum=0.0,
        doc="RUM requests per second allowed per client address (token bucket, per worker "
        "process; IPv6 per /64); over it: 429 with `Retry-After`. 0: no per-client limit.",
    )
    rum_rate_burst: int = _setting(
        50, kind="int", minimum=1, doc="Burst size of the per-client RUM token bucket."
    )
    rum_rate_clients: int = _setting(
        10000, kind="int", minimum=1,
        doc="Client addresses whose token buckets a worker keeps (least recently seen evicted).",
    )
    rum_global_rate_limit: float = _setting(
        1000.0, kind="float", minimum=0.0,
        doc="RUM requests per second one worker process accepts from all clients together "
        "(burst: twice that); 0: no global limit.",
    )
    rum_dedup_size: int = _setting(
        10000, kind="int", minimum=0,
        doc="Report ids a worker remembers to count a repeated report (same `id`) once; 0: off.",
    )
    rum_page_groups: dict[str, str] = _setting(
        kind="strmap", factory=dict,
        doc="Page groups for URLs that match none of the app's routes: `pattern=group` pairs, "
        "tried in order; a pattern with `*` is a glob, otherwise a path prefix "
        "(`/blog=blog,/docs/*=docs`).",
    )
    rum_page_fallback: str = _setting(
        "<other>", kind="str",
        doc="`page` label of URLs that match neither a route nor `rum_page_groups`.",
    )
    rum_business_events: tuple[str, ...] = _setting(
        ("product_viewed", "order_completed", "add_to_cart", "checkout_started"), kind="strs",
        doc="Business event names the RUM endpoint accepts (`rum_business_events_total{event}`); "
        "others are rejected.",
    )
    rum_vitals_buckets: tuple[float, ...] = _setting(
        DEFAULT_RUM_VITALS_BUCKETS, kind="floats",
        doc="Buckets (seconds) of `rum_web_vitals_seconds`; must contain the good/poor "
        "thresholds 0.2, 0.5 (INP), 0.8, 1.8 (TTFB, FCP), 2.5, 3, 4 (LCP, FCP).",
    )
    rum_cls_buckets: tuple[float, ...] = _setting(
        DEFAULT_RUM_CLS_BUCKETS, kind="floats",
        doc="Buckets of `rum_layout_shift` (CLS); must contain the thresholds 0.1 and 0.25.",
    )
    rum_navigation_buckets: tuple[float, ...] = _setting(
        DEFAULT_RUM_NAVIGATION_BUCKETS, kind="floats",
        doc="Buckets (seconds) of `rum_navigation_seconds`.",
    )
    rum_server_spans: bool = _setting(
        False, kind="bool",
        doc="Start a SERVER span for each RUM request (off: beacons do not flood the traces; "
        "they are still counted in the HTTP metrics under their own route).",
    )
    rum_access_log: bool = _setting(
        False, kind="bool", doc="Write an `http_request` access-log line for each RUM request."
    )
    rum_error_log_limit: int = _setting(
        60, kind="int", minimum=0,
        doc="`browser_error` log lines per minute per worker; past it errors are still counted "
        "and the next line says how many were not logged. 0: none logged.",
    )

    _sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False,
                                     metadata={"internal": True})

    SETTINGS: ClassVar[tuple[str, ...]]

    # ------------------------------------------------------------------
    def __post_init__(self) -> None:
        for f in _public_fields():
            raw = getattr(self, f.name)
            object.__setattr__(self, f.name, _coerce(f, raw, env=None))
        self._validate_relations()

    def _validate_relations(self) -> None:
        if self.namespace and not _NAME_RE.match(self.namespace):
            raise ConfigurationError(
                "namespace", self.namespace,
                "must be a Prometheus name: letters, digits and underscores, not starting "
                "with a digit",
            )
        for name in ("http_buckets", "order_value_buckets", "rum_vitals_buckets",
                     "rum_cls_buckets", "rum_navigation_buckets", "task_buckets", "db_buckets",
                     "http_size_buckets"):
            buckets: tuple[float, ...] = getattr(self, name)
            if not buckets:
                raise ConfigurationError(name, buckets, "needs at least one bucket")
            if any(b <= a for a, b in itertools.pairwise(buckets)):
                raise ConfigurationError(name, buckets, "buckets must be strictly increasing")
        if self.traces_sampler_arg is not None and not 0.0 <= self.traces_sampler_arg <= 1.0:
            raise ConfigurationError(
                "traces_sampler_arg", self.traces_sampler_arg, "a ratio must be between 0 and 1"
            )
        if not 0.0 <= self.tail_sampling_ratio <= 1.0:
            raise ConfigurationError(
                "tail_sampling_ratio", self.tail_sampling_ratio, "a ratio must be between 0 and 1"
            )
        for metric, limit in self.label_limits.items():
            if limit < 1:
                raise ConfigurationError(
                    "label_limits", {metric: limit}, "each limit must be at least 1"
                )
        if self.metrics_auth is not None:
            _parse_metrics_auth(self.metrics_auth)
        for path_name in ("metrics_path", "health_path", "health_detailed_path",
                          "health_readiness_path", "health_liveness_path", "rum_path",
                          "rum_script_path"):
            p = getattr(self, path_name)
            if p is not None and not p.startswith("/"):
                raise ConfigurationError(path_name, p, "paths must start with '/' (empty: off)")
        if self.pushgateway_url is not None and urllib.parse.urlsplit(
                self.pushgateway_url).scheme not in ("http", "https"):
            raise ConfigurationError("pushgateway_url", self.pushgateway_url,
                                     "expected an http:// or https:// URL")
        if self.metrics_port is not None and self.metrics_port > 65535:
            raise ConfigurationError("metrics_port", self.metrics_port, "must be 0..65535")
        self._validate_rum()
        self._validate_http_controls()
        for name in ("redact_patterns", "capture_request_headers", "capture_response_headers",
                     "capture_headers_sanitize_fields"):
            for pattern in getattr(self, name):
                try:
                    compiled = re.compile(pattern)
                except re.error as exc:
                    raise ConfigurationError(
                        name, pattern, f"not a valid regular expression ({exc})") from None
                if name == "redact_patterns" and compiled.fullmatch("") is not None:
                    raise ConfigurationError(
                        name, pattern, "matches the empty string (it would redact between "
                        "every two characters)")
        try:
            combine_patterns(self.redact_patterns)
        except re.error as exc:
            raise ConfigurationError("redact_patterns", self.redact_patterns,
                                     f"the patterns do not combine into one ({exc})") from None
        for name, level in self.log_levels.items():
            if level.upper() not in _LEVELS:
                raise ConfigurationError(
                    "log_levels", {name: level}, f"levels must be one of {', '.join(_LEVELS)}"
                )

    def _validate_http_controls(self) -> None:
        object.__setattr__(self, "excluded_methods",
                           tuple(dict.fromkeys(m.upper() for m in self.excluded_methods)))
        seen: set[str] = set()
        for setting, names in (("http_labels", self.http_labels),
                               ("http_label_values", self.http_label_values)):
            for label in names:
                if not _NAME_RE.match(label) or label.startswith("__"):
                    raise ConfigurationError(setting, label, "label names must be Prometheus "
                                             "names (letters, digits, _; no leading digit or __)")
                if label in HTTP_BUILTIN_LABELS or label in ("le", "quantile"):
                    raise ConfigurationError(setting, label, "clashes with a built-in label of "
                                             "the HTTP metrics (method, endpoint, status, le)")
                if label in seen:
                    raise ConfigurationError(setting, label, "set in both http_labels and "
                                             "http_label_values")
                seen.add(label)
        for label, value in self.http_labels.items():
            if len(value) > 128:
                raise ConfigurationError("http_labels", {label: value}, "at most 128 characters")
        for label, allowed in self.http_label_values.items():
            if not allowed:
                raise ConfigurationError("http_label_values", label,
                                         "each label needs at least one allowed value")
            if any(len(v) > 128 for v in allowed):
                raise ConfigurationError("http_label_values", label,
                                         "allowed values are at most 128 characters")
        if self.http_label_values and self.http_label_callback is None:
            raise ConfigurationError("http_label_values", self.http_label_values,
                                     "needs http_label_callback to give the values")
        if self.http_label_callback is not None and not self.http_label_values:
            raise ConfigurationError("http_label_callback", self.http_label_callback,
                                     "declare its labels and allowed values in "
                                     "http_label_values (Prometheus needs fixed label names)")
        for method in self.excluded_methods:
            if not re.fullmatch(r"[A-Z][A-Z0-9_-]{0,31}", method):
                raise ConfigurationError("excluded_methods", method,
                                         "expected an HTTP method name such as OPTIONS")
        for framework in self.excluded_urls_by_framework:
            if framework not in EXCLUDED_URLS_FRAMEWORKS:
                raise ConfigurationError("excluded_urls_by_framework", framework,
                                         "expected one of " + ", ".join(EXCLUDED_URLS_FRAMEWORKS))
        for setting, patterns in (("excluded_urls", self.excluded_urls or ()),
                                  *(("excluded_urls_by_framework", p) for p in
                                    self.excluded_urls_by_framework.values())):
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigurationError(setting, pattern,
                                             f"not a regular expression ({exc})") from None

    def excluded_urls_for(self, framework: str) -> tuple[str, ...]:
        """The ``excluded_urls`` patterns in force for ``framework`` (``flask``, ``fastapi``,
        ``starlette``, ``django``): its own entry of ``excluded_urls_by_framework`` when set,
        else ``excluded_urls`` (the OpenTelemetry instrumentations' precedence)."""
        own = self.excluded_urls_by_framework.get(framework)
        if own is not None:
            return own
        return self.excluded_urls or ()

    def _validate_rum(self) -> None:
        for name, needed in (("rum_vitals_buckets", RUM_VITALS_THRESHOLDS),
                             ("rum_cls_buckets", RUM_CLS_THRESHOLDS)):
            buckets = getattr(self, name)
            missing = [t for t in needed if t not in buckets]
            if missing:
                raise ConfigurationError(
                    name, buckets, "must contain the Web Vitals thresholds "
                    + ", ".join(f"{t:g}" for t in missing) + " (dashboards read those buckets)")
        if not 0.0 <= self.rum_sample_rate <= 1.0:
            raise ConfigurationError("rum_sample_rate", self.rum_sample_rate,
                                     "a share must be between 0 and 1")
        for origin in self.rum_allowed_origins:
            if origin != "*" and not _ORIGIN_RE.match(origin):
                raise ConfigurationError(
                    "rum_allowed_origins", origin,
                    "each entry must be an origin (scheme://host[:port], no path) or '*'")
        for pattern, group in self.rum_page_groups.items():
            if not pattern.startswith("/"):
                raise ConfigurationError("rum_page_groups", {pattern: group},
                                         "patterns are paths starting with '/'")
            if not group or len(group) > 128:
                raise ConfigurationError("rum_page_groups", {pattern: group},
                                         "each group must be 1 to 128 characters")
        if len(self.rum_page_fallback) > 128:
            raise ConfigurationError("rum_page_fallback", self.rum_page_fallback,
                                     "at most 128 characters")
        for event in self.rum_business_events:
            if not _EVENT_RE.match(event):
                raise ConfigurationError(
                    "rum_business_events", event,
                    "event names are 1 to 64 of letters, digits and . _ : -")

    # ------------------------------------------------------------------
    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> ObservabilityConfig:
        """Build a config from keywords, then ``MESTRES_OBS_*``, then ``OTEL_*``, then defaults.

        Args:
            environ: the environment to read (default ``os.environ``).
            **overrides: settings given in code; they win over every variable.

        Raises:
            ConfigurationError: a setting or variable has an unusable value.
            TypeError: an unknown keyword setting.
        """
        env = os.environ if environ is None else environ
        fields = {f.name: f for f in _public_fields()}
        unknown = [k for k in overrides if k not in fields]
        if unknown:
            raise TypeError(_unknown_message(unknown[0], fields))
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name, f in fields.items():
            if name in overrides:
                values[name] = overrides[name]
                sources[name] = "keyword"
                continue
            var = ENV_PREFIX + name.upper()
            if var in env:
                values[name] = _coerce(f, env[var], env=var)
                sources[name] = f"env {var}"
                continue
            otel = f.metadata["otel"]
            if otel and otel in env and env[otel].strip() != "":
                values[name] = _from_otel(f, otel, env[otel])
                sources[name] = f"env {otel}"
        if "excluded_urls_by_framework" not in values:
            by_framework = {}
            for framework in EXCLUDED_URLS_FRAMEWORKS:
                var = f"OTEL_PYTHON_{framework.upper()}_EXCLUDED_URLS"
                if var in env and env[var].strip():
                    by_framework[framework] = tuple(_split(env[var]))
                    sources["excluded_urls_by_framework"] = f"env {var}"
            if by_framework:
                values["excluded_urls_by_framework"] = by_framework
        try:
            cfg = cls(**values)
        except ConfigurationError as exc:
            src = sources.get(exc.setting, "")
            if src.startswith("env ") and exc.env is None:
                raise ConfigurationError(
                    exc.setting, exc.value, exc.problem, env=src[4:]
                ) from None
            raise
        for name in fields:
            sources.setdefault(name, "default")
        object.__setattr__(cfg, "_sources", sources)
        return cfg

    @staticmethod
    def unknown_env_settings(environ: Mapping[str, str] | None = None) -> list[str]:
        """Return one warning text per ``MESTRES_OBS_*`` variable that names no setting."""
        env = os.environ if environ is None else environ
        fields = {f.name: f for f in _public_fields()}
        out = []
        for var in sorted(env):
            if var.startswith(ENV_PREFIX):
                name = var[len(ENV_PREFIX):].lower()
                if name not in fields:
                    out.append(f"unknown environment variable {var}: " + _nearest(name, fields))
        return out

    def replace(self, **changes: Any) -> ObservabilityConfig:
        """Return a copy with ``changes`` applied (validated again); sources say ``keyword``."""
        fields = {f.name: f for f in _public_fields()}
        for k in changes:
            if k not in fields:
                raise TypeError(_unknown_message(k, fields))
        new = dataclasses.replace(self, **changes)
        sources = dict(self._sources) or dict.fromkeys(fields, "config")
        sources.update(dict.fromkeys(changes, "keyword"))
        object.__setattr__(new, "_sources", sources)
        return new

    def source_of(self, name: str) -> str:
        """Where a setting's value came from: ``keyword``, ``env NAME``, ``config`` or ``default``."""
        return self._sources.get(name, "config")

    def as_dict(self, *, redact: bool = True) -> dict[str, Any]:
        """The settings as a plain dict; secrets replaced by ``[REDACTED]`` unless ``redact=False``."""
        out: dict[str, Any] = {}
        for f in _public_fields():
            v = getattr(self, f.name)
            if redact and f.metadata["secret"] and v:
                v = "[REDACTED]"
            out[f.name] = v
        return out

    def explain(self) -> str:
        """A table of every setting, its effective value (secrets redacted) and its source."""
        rows = [(k, repr(v), self.source_of(k)) for k, v in self.as_dict().items()]
        w1 = max(len(r[0]) for r in rows)
        w2 = min(60, max(len(r[1]) for r in rows))
        return "\n".join(f"{a:<{w1}}  {b:<{w2}}  {c}" for a, b, c in rows)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"ObservabilityConfig({inner})"

    # ------------------------------------------------------------------
    def metric_name(self, base: str) -> str:
        """Apply the namespace prefix to a library metric name."""
        return f"{self.namespace}_{base}" if self.namespace else base

    def limit_for(self, metric_base: str) -> int:
        """The cardinality bound for one metric (override or ``max_label_values``)."""
        return self.label_limits.get(metric_base, self.max_label_values)

    @property
    def library_paths(self) -> tuple[str, ...]:
        """The endpoints the library serves itself (metrics and health), those turned on."""
        return tuple(
            p for p in (self.metrics_path, self.health_path, self.health_detailed_path,
                        self.health_readiness_path, self.health_liveness_path) if p
        )

    @property
    def effective_excluded_paths(self) -> tuple[str, ...]:
        """``excluded_paths``, or the library's own endpoints when unset."""
        return self.library_paths if self.excluded_paths is None else self.excluded_paths

    @property
    def effective_traces_exporter(self) -> str:
        """The exporter in force: the setting, else ``otlp`` when an endpoint is set, else ``none``."""
        if not self.tracing_enabled:
            return "none"
        if self.traces_exporter is not None:
            return self.traces_exporter
        if self.otlp_endpoint or self.otlp_traces_endpoint:
            return "otlp"
        return "none"

    @property
    def metrics_credentials(self) -> tuple[str, str] | None:
        """``("bearer", token)`` or ``("basic", "user:password")`` from ``metrics_auth``."""
        return None if self.metrics_auth is None else _parse_metrics_auth(self.metrics_auth)


# ----------------------------------------------------------------------
def _public_fields() -> tuple[dataclasses.Field[Any], ...]:
    return tuple(
        f for f in dataclasses.fields(ObservabilityConfig) if not f.metadata.get("internal")
    )


def _nearest(name: str, fields: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.5)
    if close:
        return f"did you mean {ENV_PREFIX}{close[0].upper()} (setting {close[0]!r})?"
    return "no setting has that name; see ObservabilityConfig for the list"


def _unknown_message(name: str, fields: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown setting {name!r}{hint}"


def _parse_metrics_auth(value: str) -> tuple[str, str]:
    scheme, _, rest = value.partition(":")
    scheme = scheme.lower()
    if scheme == "bearer" and rest:
        return ("bearer", rest)
    if scheme == "basic" and ":" in rest and rest.split(":", 1)[0]:
        return ("basic", rest)
    raise ConfigurationError(
        "metrics_auth", "[REDACTED]",
        "use 'bearer:<token>' or 'basic:<user>:<password>'",
    )


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _coerce(f: dataclasses.Field[Any], raw: Any, *, env: str | None) -> Any:
    """Validate and normalise one value (from Python or from a variable's text)."""
    meta = f.metadata
    kind: str = meta["kind"]
    name = f.name
    shown = "[REDACTED]" if meta["secret"] else raw

    def bad(problem: str) -> ConfigurationError:
        return ConfigurationError(name, shown, problem, env=env)

    if raw is None or (isinstance(raw, str) and raw.strip() == "" and meta["optional"]):
        if meta["optional"]:
            return None
        raise bad("a value is required")
    from_text = isinstance(raw, str)
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if from_text and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise bad("expected a boolean (true/false, 1/0, yes/no, on/off)")
    if kind in ("str", "choice"):
        if not isinstance(raw, str):
            raise bad("expected a string")
        value = raw.strip()
        if kind == "choice":
            choices: tuple[str, ...] = meta["choices"]
            norm = value.upper() if choices == _LEVELS else value.lower()
            if norm not in choices and not (
                    meta["open_choices"] and re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,99}", norm)):
                raise bad(f"expected one of {', '.join(choices)}")
            return norm
        if not value and not meta["optional"] and name not in ("namespace",):
            raise bad("must not be empty")
        return value
    if kind in ("int", "float"):
        if isinstance(raw, bool):
            raise bad("expected a number, not a boolean")
        num: float
        if kind == "int":
            if isinstance(raw, int):
                num = raw
            elif from_text and re.fullmatch(r"\s*[+-]?\d+\s*", raw):
                num = int(raw)
            else:
                raise bad("expected an integer")
        else:
            try:
                num = float(raw)
            except (TypeError, ValueError):
                raise bad("expected a number") from None
        if not math.isfinite(num):
            raise bad("must be finite")
        minimum = meta["minimum"]
        if minimum is not None and num < minimum:
            raise bad(f"must be at least {minimum}")
        return num
    if kind == "callable":
        if from_text:
            return _import_callable(raw.strip(), bad)
        if not callable(raw):
            raise bad("expected a callable (or its import path 'package.module:name')")
        return raw
    if kind == "strs":
        items = _split(raw) if from_text else raw
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise bad("expected a list of strings (comma-separated in a variable)")
        return tuple(i.strip() for i in items if i.strip())
    if kind == "floats":
        items = _split(raw) if from_text else raw
        if not isinstance(items, (list, tuple)):
            raise bad("expected a list of numbers (comma-separated in a variable)")
        out = []
        for i in items:
            if isinstance(i, bool):
                raise bad("buckets must be numbers")
            try:
                v = float(i)
            except (TypeError, ValueError):
                raise bad(f"{i!r} is not a number") from None
            if not math.isfinite(v):
                raise bad("buckets must be finite (+Inf is added automatically)")
            out.append(v)
        return tuple(out)
    if kind in ("intmap", "strmap"):
        if from_text:
            pairs: dict[str, Any] = {}
            for part in _split(raw):
                k, sep, text_value = part.partition("=")
                if not sep or not k.strip():
                    raise bad("expected key=value pairs separated by commas")
                pairs[k.strip()] = text_value.strip()
            raw = pairs
        if not isinstance(raw, Mapping):
            raise bad("expected a mapping (key=value,... in a variable)")
        result: dict[str, Any] = {}
        for k, v in raw.items():
            if not isinstance(k, str):
                raise bad("keys must be strings")
            if kind == "intmap":
                try:
                    if isinstance(v, bool):
                        raise ValueError
                    result[k] = int(v)
                except (TypeError, ValueError):
                    raise bad(f"{k}: expected an integer") from None
            else:
                if not isinstance(v, str):
                    raise bad(f"{k}: expected a string")
                result[k] = v
        return result
    if kind == "strsmap":
        if from_text:
            try:
                raw = json.loads(raw)
            except ValueError:
                raise bad("expected a JSON object of lists of strings") from None
        if not isinstance(raw, Mapping):
            raise bad("expected a mapping of names to lists of strings (JSON in a variable)")
        lists: dict[str, tuple[str, ...]] = {}
        for k, v in raw.items():
            if not isinstance(k, str):
                raise bad("keys must be strings")
            if isinstance(v, str) or not isinstance(v, (list, tuple, set, frozenset)) or not all(
                    isinstance(i, str) for i in v):
                raise bad(f"{k}: expected a list of strings")
            lists[k] = tuple(dict.fromkeys(v))
        return lists
    raise AssertionError(f"unknown setting kind {kind}")  # pragma: no cover


def _import_callable(path: str, bad: Callable[[str], ConfigurationError]) -> Any:
    """The callable at ``package.module:name`` (or ``package.module.name``)."""
    import importlib

    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise bad("expected an import path (a dotted path such as 'package.module:name')")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            found = getattr(found, part)
    except Exception as exc:
        raise bad(f"cannot import it ({type(exc).__name__}: {exc})") from None
    if not callable(found):
        raise bad("the import path does not name a callable")
    return found


def _from_otel(f: dataclasses.Field[Any], var: str, text: str) -> Any:
    """Translate a standard ``OTEL_*`` variable into our setting's terms."""
    if var == "OTEL_SDK_DISABLED":
        disabled = _coerce(f, text, env=var)
        return not disabled
    if var == "OTEL_EXPORTER_OTLP_TIMEOUT":
        ms = _coerce(f, text, env=var)
        return float(ms) / 1000.0
    if var == "OTEL_TRACES_EXPORTER":
        first = _split(text)[0] if _split(text) else text
        return _coerce(f, first, env=var)
    if var in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_RESOURCE_ATTRIBUTES"):
        parsed = _coerce(f, text, env=var)
        return {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in parsed.items()}
    return _coerce(f, text, env=var)


ObservabilityConfig.SETTINGS = tuple(f.name for f in _public_fields())


def settings_table() -> str:
    """Markdown table of every setting: name, variables, type, default, meaning.

    The configuration reference page of the docs is generated from it.
    """
    lines = [
        "| setting | environment | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    defaults = ObservabilityConfig()
    for f in _public_fields():
        env = f"`{ENV_PREFIX}{f.name.upper()}`"
        if f.metadata["otel"]:
            env += f"<br>`{f.metadata['otel']}`"
        d = getattr(defaults, f.name)
        if f.metadata["secret"]:
            shown = "unset"
        elif isinstance(d, tuple):
            shown = ",".join(str(x) for x in d) or "(empty)"
        elif isinstance(d, dict):
            shown = ",".join(f"{k}={v}" for k, v in d.items()) or "(empty)"
        elif d is None:
            shown = "unset"
        else:
            shown = str(d).lower() if isinstance(d, bool) else str(d)
        doc = f.metadata["doc"]
        if f.metadata["choices"]:
            doc += (" Built in: " if f.metadata["open_choices"] else " One of: ") + ", ".join(
                f"`{c}`" for c in f.metadata["choices"]) + "."
        lines.append(f"| `{f.name}` | {env} | `{shown}` | {doc} |")
    return "\n".join(lines)
