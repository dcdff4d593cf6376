"""One framework-agnostic pass over an HTTP request.

The Flask, Starlette/FastAPI and Django adapters only translate their
framework's request and response into the calls below; everything else
happens here, once per request:

* the ``endpoint`` label is the route template (``/orders/{order_id}``), or
  :data:`UNMATCHED` when no route matched, so random paths add one series;
* methods outside the standard set become ``_OTHER``
  (:func:`normalize_method`);
* the status label is the code, or ``2xx``-style with ``group_status_codes``;
* ``excluded_paths`` (exact or ``*`` patterns), ``excluded_methods``,
  ``excluded_urls`` (regular expressions searched in the full URL, as
  ``OTEL_PYTHON_EXCLUDED_URLS``) and views marked with :func:`do_not_track`
  are neither measured, traced nor logged;
* ``http_labels`` adds static labels to every request series, and
  ``http_label_callback`` per-request ones, each value checked against its
  allowlist (``http_label_values``) and the cardinality guard;
* with ``http_size_metrics``, request and response body sizes are observed;
* one SERVER span per request following the OpenTelemetry HTTP semantic
  conventions, joined to the caller's trace through W3C ``traceparent``
  (trace-context headers are bounded to the W3C limits first, and nothing of
  them is logged: :func:`bound_trace_headers`);
  the OpenTelemetry API is not touched at all when tracing is off;
* the request id (``X-Request-ID``) is kept when safe, else a new UUID4, and
  bound into the structlog context for the request;
* one ``http_request`` access-log line, level by status, with the query string
  redacted and ``X-Forwarded-For`` honoured only from trusted proxies.

:class:`HttpState` holds the path table of the library's own endpoints
(``/metrics`` with optional bearer/basic protection, the health probes), built
by the endpoint layer (:mod:`mestres_observability._endpoint`) from the kinds
registered at the end of this module; :func:`serve_endpoint` /
:func:`aserve_endpoint` answer one of them by kind name.
"""

from __future__ import annotations

import contextvars
import copy
import inspect
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry import trace as otel_trace
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

from . import _current as _current_module
from ._compat import (
    STRUCTLOG_UNBOUND,
    current_span_key,
    exemplar_recorder,
    request_done_recorder,
    request_recorder,
    restore_structlog_context,
    runtime_context_ops,
    span_context_unpacks,
    structlog_context_var,
    value_adder,
    value_holder,
)
from ._current import get_observability
from ._endpoint import (
    Credentials,
    Endpoint,
    EndpointKind,
    Fault,
    Request,
    Response,
    build_endpoints,
    client_address,
    endpoint_kind,
    register_endpoint,
)
from ._endpoint import parse_networks as _parse_networks
from ._forksafe import run_after_fork
from ._leanspan import LeanSpan, LeanTracer
from ._redact import REDACTED, QueryRedactor, Redactor
from .config import DEFAULT_REDACT_QUERY_PARAMS, OTHER_LABEL_VALUE
from .tracing import extract_context, remote_context, remote_parent

if TYPE_CHECKING:
    from .observability import Observability

__all__ = [
    "DO_NOT_TRACK_ATTR",
    "STANDARD_METHODS",
    "UNMATCHED",
    "EndpointResponse",
    "HeaderCapture",
    "HttpRequestInfo",
    "HttpState",
    "RequestPass",
    "aserve_endpoint",
    "asgi_is_html",
    "bound_endpoint",
    "bound_trace_headers",
    "bound_user_id",
    "check_metrics_auth",
    "client_address",
    "do_not_track",
    "excluded_url_pattern",
    "http_state",
    "is_html",
    "is_untracked",
    "new_request_id",
    "normalize_method",
    "redact_query",
    "response_size",
    "safe_request_id",
    "serve_endpoint",
    "split_host",
    "start_request",
    "status_label",
    "warn_unprotected_metrics",
    "wsgi_headers",
    "wsgi_is_html",
    "wsgi_trace_headers",
]

#: ``endpoint`` label of requests that matched no route.
UNMATCHED = "<unmatched>"
#: Methods kept as they are; any other becomes ``_OTHER`` (semantic conventions).
STANDARD_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# request ids drawn and formatted 64 at a time (one getrandom call); emptied in a forked
# child so workers never share ids
_ID_POOL: list[str] = []
_POOL_IDS = 64
# per 128-bit id: the version nibble (bits 76-79) set to 4, the RFC 4122 variant (bits
# 62-63) to 10; the masks cover the pool's ids at once (one big-integer AND and OR)
_ID_MASK = int.from_bytes((~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)).to_bytes(16, "big")
                          * _POOL_IDS, "big")
_ID_BITS = int.from_bytes(((0x4 << 76) | (0x2 << 62)).to_bytes(16, "big") * _POOL_IDS, "big")
_ID_GROUPS = re.compile(r"(.{8})(.{4})(.{4})(.{4})(.{12})")
_log = logging.getLogger("mestres_observability")

EndpointResponse = Response
"""``(status, headers, body)`` of a library endpoint (the endpoint layer's response type)."""
UserIdResolver = Callable[[Any], Any]


def normalize_method(method: str) -> str:
    """``method`` when standard (case-sensitive, as the conventions say), else ``_OTHER``."""
    return method if method in STANDARD_METHODS else "_OTHER"


def status_label(code: int, grouped: bool = False) -> str:
    """The ``status`` label: ``"404"``, or ``"4xx"`` when ``grouped``."""
    return f"{code // 100}xx" if grouped else str(code)


def safe_request_id(value: str | None) -> str:
    """``value`` when it is a safe request id (<= 128 of ``[A-Za-z0-9._-]``), else a UUID4."""
    if value and len(value) <= 128 and _SAFE_ID.fullmatch(value):
        return value
    return new_request_id()


def new_request_id() -> str:
    """A random UUID4 in its canonical text form (as ``str(uuid.uuid4())``, faster).

    The 122 random bits come from :func:`os.urandom`, drawn and formatted for
    64 ids at a time; a forked child discards what its parent drew.
    """
    try:
        return _ID_POOL.pop()
    except IndexError:
        bits = (int.from_bytes(os.urandom(16 * _POOL_IDS), "big") & _ID_MASK) | _ID_BITS
        # 8-4-4-4-12 hex digits each, split and joined in C (no Python loop per id)
        ids = list(map("-".join, _ID_GROUPS.findall(f"{bits:0{32 * _POOL_IDS}x}")))
        first = ids.pop()
        _ID_POOL.extend(ids)
        return first


run_after_fork(_ID_POOL.clear)


def wsgi_trace_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """The W3C trace headers of a WSGI environ (or Django's ``META``), keyed in lower case."""
    headers: dict[str, str] = {}
    if "HTTP_TRACEPARENT" in environ:
        headers["traceparent"] = environ["HTTP_TRACEPARENT"]
        if "HTTP_TRACESTATE" in environ:
            headers["tracestate"] = environ["HTTP_TRACESTATE"]
    if "HTTP_BAGGAGE" in environ:
        headers["baggage"] = environ["HTTP_BAGGAGE"]
    return headers


def redact_query(query: str, keys: frozenset[str] | QueryRedactor) -> str:
    """``query`` with the values of sensitive parameters replaced by ``[REDACTED]``.

    ``keys``: the sensitive names, or a
    :class:`~mestres_observability._redact.QueryRedactor` (which also checks
    values: the request pass uses the one of :class:`HttpState`). Names are
    matched after percent-decoding, case-insensitively and part by part
    (``user[password]``); the rest of the query is kept as sent.
    """
    redactor = keys if isinstance(keys, QueryRedactor) else QueryRedactor(keys)
    return redactor(query)


def split_host(value: str) -> tuple[str, int | None]:
    """``("example.com", 8080)`` from a ``Host`` header value (IPv6 brackets removed)."""
    value = value.strip()[:256]
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, None
        rest = value[end + 1:]
        port = rest[1:] if rest.startswith(":") else ""
        return value[1:end], int(port) if port.isdigit() and len(port) <= 5 else None
    host, sep, port = value.rpartition(":")
    if not sep or ":" in host:
        return value, None
    return host, int(port) if port.isdigit() and len(port) <= 5 else None


def _compile_exclusions(patterns: tuple[str, ...]) -> tuple[frozenset[str], re.Pattern[str] | None]:
    exact = frozenset(p for p in patterns if "*" not in p)
    wild = [p for p in patterns if "*" in p]
    if not wild:
        return exact, None
    rx = "|".join(".*".join(re.escape(piece) for piece in p.split("*")) for p in wild)
    return exact, re.compile(f"(?:{rx})")


def _excluded_by(rules: tuple[frozenset[str], re.Pattern[str] | None], path: str) -> bool:
    exact, rx = rules
    return path in exact or (rx is not None and rx.fullmatch(path) is not None)


#: The attribute :func:`do_not_track` sets on a view (or a class-based view's class). On
#: Flask, setting it to ``True`` yourself is the route option; on Django use the decorator
#: or the route option :data:`mestres_observability.django.DO_NOT_TRACK_KWARG` instead (the
#: Django adapter looks views up for the attribute only once the decorator marked one).
DO_NOT_TRACK_ATTR = "mestres_observability_do_not_track"
# how many views do_not_track marked in this process: the adapters look routes up for the
# mark only when there is one (a FastAPI route's openapi_extra is found without it)
_marked = [0]

_F = TypeVar("_F")


def do_not_track(view: _F) -> _F:
    """Mark a view as not measured, traced nor access-logged (a per-route opt-out).

    Works on Flask views (functions and ``MethodView`` classes), FastAPI and
    Starlette endpoints (sync or async) and Django views (functions, and
    class-based views as a class decorator or on ``as_view()``'s result); the
    view itself is returned unchanged, so the decorator goes above or below the
    framework's route decorator::

        @app.get("/ping")
        @do_not_track
        def ping(): ...

    The request still runs as usual and gets its request id header; it adds
    nothing to the HTTP metrics, has no SERVER span (a span its code starts
    is a root span) and writes no access-log line, as ``excluded_paths`` does.
    """
    setattr(view, DO_NOT_TRACK_ATTR, True)
    _marked[0] += 1
    return view


def is_untracked(view: Any) -> bool:
    """True when ``view`` (or the class of a class-based view) was marked by
    :func:`do_not_track` (it carries :data:`DO_NOT_TRACK_ATTR` set to true)."""
    for target in (view, getattr(view, "view_class", None), getattr(view, "cls", None)):
        if target is not None and getattr(target, DO_NOT_TRACK_ATTR, False) is True:
            return True
    return False


def excluded_url_pattern(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One pattern searching for any of ``patterns`` (``None`` for none), as the
    OpenTelemetry instrumentations join ``OTEL_PYTHON_EXCLUDED_URLS``."""
    return re.compile("|".join(patterns)) if patterns else None


def response_size(method: str, status: int, declared: str | None, counted: int) -> int:
    """The response body size in bytes that was sent: ``0`` for ``HEAD`` and for 1xx, 204
    and 304 responses (no body), else the ``Content-Length`` declared, else what was
    ``counted`` passing by."""
    if method == "HEAD" or status < 200 or status in (204, 304):
        return 0
    if declared is not None:
        declared = declared.strip()
        if declared.isdigit():
            return int(declared)
    return counted


class HttpRequestInfo:
    """What ``http_label_callback`` receives for one request.

    Attributes:
        method: the request method (``_OTHER`` for a non-standard one).
        path: the URL path.
        route: the route template (``None`` when nothing matched or not known yet).
        request: the framework's request (``flask.Request``,
            ``starlette.requests.Request``, Django's ``HttpRequest``), or ``None``
            when the framework never built one (a failure before routing).
    """

    __slots__ = ("method", "path", "request", "route")

    def __init__(self, method: str, path: str, route: str | None, request: Any) -> None:
        self.method = method
        self.path = path
        self.route = route
        self.request = request

    def header(self, name: str, default: str | None = None) -> str | None:
        """A request header (case-insensitive), or ``default``."""
        request = self.request
        if request is None:
            return default
        value = request.headers.get(name)
        return default if value is None else str(value)

    def __repr__(self) -> str:
        return f"HttpRequestInfo({self.method} {self.path}, route={self.route!r})"


def is_html(content_type: str | None) -> bool:
    """True for a ``text/html`` content type (parameters and case ignored)."""
    return content_type is not None and content_type[:9].lower() == "text/html"


def wsgi_is_html(headers: list[tuple[str, str]]) -> bool:
    """True when WSGI response ``headers`` declare ``text/html``."""
    for name, value in headers:
        if len(name) == 12 and name.lower() == "content-type":
            return value[:9].lower() == "text/html"
    return False


def asgi_is_html(headers: Any) -> bool:
    """True when ASGI response ``headers`` (``(bytes, bytes)`` pairs) declare ``text/html``."""
    for name, value in headers:
        if len(name) == 12 and name.lower() == b"content-type":
            return value[:9].lower() == b"text/html"  # type: ignore[no-any-return]
    return False


class HeaderCapture:
    """Which headers become span attributes, and under which key (``capture_*_headers``).

    Header names are matched whole and case-insensitively against the configured names
    or regular expressions (OpenTelemetry's ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*``
    rules); a matched header is recorded as ``<prefix><lower-case name>`` (semantic
    conventions: ``http.request.header.x-client-region``), a tuple of its values. Values
    of headers matching ``capture_headers_sanitize_fields``, or named by ``redact_keys``,
    are recorded as ``[REDACTED]``.
    """

    __slots__ = ("_keys", "_names", "_redactor", "_sanitize", "prefix")

    #: values kept per header (repeated headers), and characters per value
    MAX_VALUES = 16

    def __init__(self, prefix: str, names: tuple[str, ...], sanitize: tuple[str, ...],
                 redact_keys: tuple[str, ...]) -> None:
        self.prefix = prefix
        self._names = re.compile("|".join(f"(?:{n})" for n in names), re.IGNORECASE)
        self._sanitize = (re.compile("|".join(f"(?:{n})" for n in sanitize), re.IGNORECASE)
                          if sanitize else None)
        self._redactor = Redactor(redact_keys)
        #: header name as sent -> (attribute key, redacted) or ``None`` (not captured)
        self._keys: dict[str, tuple[str, bool] | None] = {}

    @classmethod
    def build(cls, prefix: str, names: tuple[str, ...], cfg: Any) -> HeaderCapture | None:
        """The capture of ``names`` under ``prefix``, or ``None`` when there are none."""
        if not names:
            return None
        return cls(prefix, names, cfg.capture_headers_sanitize_fields, cfg.redact_keys)

    def _key(self, name: str) -> tuple[str, bool] | None:
        found = self._keys.get(name, _UNSET)
        if found is not _UNSET:
            return found  # type: ignore[no-any-return]
        lower = name.strip().lower()
        hit: tuple[str, bool] | None = None
        if self._names.fullmatch(lower):
            sanitize = self._sanitize
            redacted = (sanitize is not None and sanitize.fullmatch(lower) is not None) or \
                self._redactor.sensitive_key(lower)
            hit = (self.prefix + lower, redacted)
        if len(self._keys) < 1024:
            self._keys[name] = hit
        return hit

    def attributes(self, headers: Any) -> dict[str, tuple[str, ...]]:
        """The span attributes of ``headers``: ``(name, value)`` pairs, ``str`` or ``bytes``
        (ASGI, decoded as Latin-1)."""
        found: dict[str, list[str]] = {}
        for name, value in headers:
            if type(name) is bytes:
                name = name.decode("latin-1")
            hit = self._key(name)
            if hit is None:
                continue
            values = found.setdefault(hit[0], [])
            if len(values) < self.MAX_VALUES:
                if hit[1]:
                    values.append(REDACTED)
                else:
                    text = value.decode("latin-1") if type(value) is bytes else str(value)
                    values.append(text[:1024])
        return {k: tuple(v) for k, v in found.items()}


def wsgi_headers(environ: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The request headers of a WSGI ``environ`` (or Django's ``request.META``) as
    ``(name, value)`` pairs, names in lower case with ``-``."""
    out = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            out.append((key[5:].lower().replace("_", "-"), value))
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            out.append((key.lower().replace("_", "-"), value))
    return out


class HttpState:
    """Everything the request pass derives from one :class:`Observability`, built once.

    Adapters get it with :func:`http_state` at request time, so a re-init of
    the library takes over without re-wiring the app.
    """

    def __init__(self, obs: Observability) -> None:
        cfg = obs.config
        self.obs = obs
        self.config = cfg
        self.faults = obs.faults
        self.enabled = cfg.enabled
        self.metrics = obs.metrics
        self.requests_total = obs.metrics.http_requests_total
        self.duration = obs.metrics.http_request_duration_seconds
        self.in_progress = obs.metrics.http_requests_in_progress
        # the guards' lookups, taking the label tuple as it is (one call per series)
        self.requests_child = self.requests_total.guard.child
        self.duration_child = self.duration.guard.child
        self.in_progress_child = self.in_progress.guard.child
        #: ``http_labels`` values, after ``(method, endpoint[, status])`` in every key
        self.label_values: tuple[str, ...] = tuple(cfg.http_labels.values())
        #: ``http_label_callback`` and its labels' allowlists (``http_label_values``)
        self.label_callback: Callable[[HttpRequestInfo], Any] | None = cfg.http_label_callback
        self.label_allowed: tuple[tuple[str, frozenset[str]], ...] = tuple(
            (name, frozenset(values)) for name, values in cfg.http_label_values.items())
        self.label_fallback = (OTHER_LABEL_VALUE,) * len(self.label_allowed)
        self.excluded_methods = frozenset(cfg.excluded_methods)
        #: framework -> the ``excluded_urls`` pattern in force for it (``None``: none)
        self.excluded_urls: dict[str, re.Pattern[str] | None] = {
            fw: excluded_url_pattern(cfg.excluded_urls_for(fw))
            for fw in ("flask", "fastapi", "starlette", "django")}
        #: observe request and response sizes (``http_size_metrics``)
        self.sizes = bool(cfg.enabled and cfg.http_size_metrics)
        self.tracing = bool(cfg.enabled and obs.tracing.enabled)
        self.tracer = obs.tracing.own_tracer if self.tracing else None  # lean spans: see tracing
        self.access_log = bool(cfg.enabled and cfg.access_log)
        self.grouped = cfg.group_status_codes
        #: path -> :class:`~mestres_observability._endpoint.Endpoint` (one dict get per request)
        self.endpoints: dict[str, Endpoint] = build_endpoints(cfg, obs)
        excluded = cfg.effective_excluded_paths
        rules = _compile_exclusions(excluded)
        measured = [p for p, ep in self.endpoints.items() if ep.kind.measured is not None]
        if cfg.excluded_paths is None:  # the library's own endpoints, registered kinds included
            excluded = (*excluded, *(p for p in self.endpoints
                                     if p not in excluded and p not in measured))
        # a measured kind's requests never take the ordinary pass (so it costs ordinary
        # requests nothing): the adapters start them on their own state (:attr:`measured`)
        excluded = (*excluded, *(p for p in measured if p not in excluded))
        self.excluded_exact, self.excluded_rx = _compile_exclusions(excluded)
        self.trusted = _parse_networks(cfg.trusted_proxies)
        self.redact_keys = frozenset(
            k.lower().replace("-", "_") for k in (*DEFAULT_REDACT_QUERY_PARAMS, *cfg.redact_keys)
        )
        #: the access log's query redaction: names, then values (cards, credentials, URLs)
        self.redact_query = QueryRedactor(
            self.redact_keys, Redactor(cfg.redact_keys, card_numbers=cfg.redact_card_numbers,
                                       patterns=cfg.redact_patterns))
        self.request_id_header = cfg.request_id_header
        self.request_id_lower = cfg.request_id_header.lower()
        self.request_id_environ = "HTTP_" + cfg.request_id_header.upper().replace("-", "_")
        self.request_id_bytes = self.request_id_lower.encode("latin-1")
        self.logger: Any = None
        #: :attr:`logger` is what the access log calls from now on (see :meth:`settle_logger`)
        self.logger_settled = False
        #: the access line's direct path (``logs.direct_writer``), found by :meth:`settle_logger`
        self.direct_line: Callable[[str, str, dict[str, Any]], bool] | None = None
        if self.access_log:
            from .logs import get_logger

            self.logger = get_logger("mestres_observability.access")
        self._status_labels: dict[int, str] = {}
        #: :meth:`host`'s cache (``Host`` value -> host, port), read inline by the request pass
        self.hosts: dict[str, tuple[str, int | None]] = {}
        #: ``(method, endpoint, status code)`` -> what :meth:`recorder` gives for it
        self.recorders: dict[tuple[str, str, int], Callable[[float], None]] = {}
        #: ``(method, endpoint, status code)`` -> ``(in-progress value holder, what
        #: :meth:`done_recorder` gives for them)``
        self.done_recorders: dict[tuple[str, str, int],
                                  tuple[Any, Callable[[float], None] | None]] = {}
        #: ``(method, endpoint)`` -> the in-progress gauge's value holder and its ``inc``
        self.in_progress_values: dict[tuple[str, str],
                                      tuple[Any, Callable[[float], None]]] = {}
        #: ``(method, endpoint, status code)`` -> what :meth:`exemplar_recorder` gives for it
        self.exemplar_recorders: dict[tuple[str, str, int],
                                      Callable[[float, dict[str, str]], None]] = {}
        #: add ``Server-Timing: traceparent`` to HTML responses (tracing on and the setting)
        self.server_timing = bool(self.tracing and cfg.server_timing)
        #: span controls (``None`` when unset or tracing is off): the hooks, and the header
        #: capture of ``capture_request_headers`` / ``capture_response_headers``
        self.request_hook: Callable[..., Any] | None = (
            cfg.server_request_hook if self.tracing else None)
        self.response_hook: Callable[..., Any] | None = (
            cfg.server_response_hook if self.tracing else None)
        self.capture_request = HeaderCapture.build(
            "http.request.header.", cfg.capture_request_headers, cfg) if self.tracing else None
        self.capture_response = HeaderCapture.build(
            "http.response.header.", cfg.capture_response_headers, cfg) if self.tracing else None
        #: path of a measured endpoint kind -> the state its requests are measured with
        #: (counted under their own path; span and access log as the kind says)
        self.measured: dict[str, HttpState] = {}
        for path in measured:
            if not _excluded_by(rules, path):
                kind_measured = self.endpoints[path].kind.measured
                assert kind_measured is not None
                spans, log = kind_measured(cfg)
                self.measured[path] = self._variant(bool(spans), bool(log))

    def _variant(self, spans: bool, access_log: bool) -> HttpState:
        """A copy sharing everything, minus span and/or access log, and excluding nothing."""
        v = copy.copy(self)
        v.tracing = self.tracing and spans
        v.tracer = self.tracer if v.tracing else None
        v.access_log = self.access_log and access_log
        v.excluded_exact, v.excluded_rx = frozenset(), None
        v.server_timing = False
        v.measured = {}
        return v

    def settle_logger(self) -> Any:
        """The access logger, at its first line: structlog's lazy proxy, or the logger it
        binds when it binds the same one every time (``cache_logger_on_first_use``), which
        spares the proxy's two calls on every line after it."""
        self.logger_settled = True
        proxy = self.logger
        try:
            bound = proxy.bind()
            if bound is proxy.bind():  # cached on first use: the proxy gives only it now
                self.logger = bound
                from .logs import direct_writer

                self.direct_line = direct_writer(bound, access_line=True)
        except Exception as exc:
            self.faults.report("http", "access_log", "binding the access logger failed", exc)
        return self.logger

    def host(self, value: str) -> tuple[str, int | None]:
        """Cached :func:`split_host` (a service answers under a handful of ``Host`` values)."""
        hit = self.hosts.get(value)
        if hit is None:
            hit = split_host(value)
            if len(hit[0]) > 255:  # no DNS name is longer: a forged Host header
                hit = (hit[0][:255], hit[1])
            if len(self.hosts) < 256:
                self.hosts[value] = hit
        return hit

    def excluded(self, path: str) -> bool:
        """True when ``path`` is in ``excluded_paths`` (exact or ``*`` pattern)."""
        if path in self.excluded_exact:
            return True
        rx = self.excluded_rx
        return rx is not None and rx.fullmatch(path) is not None

    def status(self, code: int) -> str:
        """Cached :func:`status_label` for this configuration."""
        label = self._status_labels.get(code)
        if label is None:
            label = status_label(code, self.grouped)
            if len(self._status_labels) < 1024:
                self._status_labels[code] = label
        return label

    def recorder(self, method: str, endpoint: str, code: int) -> Callable[[float], None]:
        """``record(duration)`` of one request series: adds one to ``http_requests_total``
        and records the duration, as the children's ``inc``/``observe`` without exemplar
        do (one call: :func:`~mestres_observability._compat.request_recorder`).

        Resolved through the cardinality guards; kept in :attr:`recorders` (bounded)
        only when both series are within their bounds, so a folded series is still
        counted as folded on each request.
        """
        key = (method, endpoint, self.status(code), *self.label_values)
        counter = self.requests_child(key)
        histogram = self.duration_child(key)
        found = request_recorder(counter, histogram)
        if (len(self.recorders) < 4096 and self.requests_total.guard.settled(key)
                and self.duration.guard.settled(key)):
            self.recorders[(method, endpoint, code)] = found
        return found

    def done_recorder(self, method: str, endpoint: str, code: int,
                      in_progress: Any) -> Callable[[float], None] | None:
        """``record(duration)`` of one request series that also takes the request out of
        ``http_requests_in_progress`` (``in_progress``: its value holder, from
        :meth:`in_progress_value`), as one call
        (:func:`~mestres_observability._compat.request_done_recorder`); ``None`` when that
        cannot be done in one (the caller uses :meth:`recorder` and the holder's ``inc``).

        Resolved through the guards; kept in :attr:`done_recorders` (bounded) as
        :meth:`recorder` keeps its own.
        """
        key = (method, endpoint, self.status(code), *self.label_values)
        found = request_done_recorder(self.requests_child(key), self.duration_child(key),
                                      in_progress)
        if (len(self.done_recorders) < 4096 and self.requests_total.guard.settled(key)
                and self.duration.guard.settled(key)):
            self.done_recorders[(method, endpoint, code)] = (in_progress, found)
        return found

    def exemplar_recorder(self, method: str, endpoint: str, code: int
                          ) -> Callable[[float, dict[str, str]], None]:
        """``record(duration, labels)`` of one request series: what ``inc(1, labels)`` on
        ``http_requests_total`` and ``observe(duration, labels)`` on the duration do, for
        exemplar labels known valid (the pass's own span ids; see
        :func:`~mestres_observability._compat.exemplar_recorder`).

        Resolved and kept (in :attr:`exemplar_recorders`) as :meth:`recorder` is.
        """
        key = (method, endpoint, self.status(code), *self.label_values)
        found = exemplar_recorder(self.requests_child(key), self.duration_child(key))
        if (len(self.exemplar_recorders) < 4096 and self.requests_total.guard.settled(key)
                and self.duration.guard.settled(key)):
            self.exemplar_recorders[(method, endpoint, code)] = found
        return found

    def in_progress_value(self, method: str, endpoint: str, labels: tuple[str, ...] = ()
                          ) -> tuple[Any, Callable[[float], None]] | None:
        """``(holder, add)`` of ``http_requests_in_progress{method, endpoint}``: the value
        holder (its ``inc`` as the gauge's, see
        :func:`~mestres_observability._compat.value_holder`) and ``add(amount)``, its
        ``inc`` (:func:`~mestres_observability._compat.value_adder`); ``None`` past the
        gauge's bound. Kept in :attr:`in_progress_values` when settled (and without
        per-request ``labels``)."""
        key = (method, endpoint, *self.label_values, *labels)
        child = self.in_progress_child(key)
        if child is None:
            return None
        value = value_holder(child)
        found = (value, value_adder(value))
        if not labels and len(self.in_progress_values) < 4096 and self.in_progress.guard.settled(
                key):
            self.in_progress_values[(method, endpoint)] = found
        return found


_cached: tuple[Any, HttpState] | None = None


def http_state(obs: Observability | None = None) -> HttpState:
    """The :class:`HttpState` of ``obs`` (default: the current instance), cached.

    Raises:
        ConfigurationError: a setting the HTTP pass needs is unusable
            (e.g. ``trusted_proxies``).
    """
    global _cached
    if obs is None:
        obs = _current_module._current or get_observability()  # get_observability(), inline
    cached = _cached
    if cached is not None and cached[0] is obs:
        return cached[1]
    state = HttpState(obs)
    _cached = (obs, state)
    return state


# structlog's own context variables (resolved once; see _compat.structlog_context_var)
_REQUEST_ID_VAR = structlog_context_var("request_id")
_REQUEST_ID_IS_VAR = isinstance(_REQUEST_ID_VAR, contextvars.ContextVar)  # not the fallback
_USER_ID_VAR = structlog_context_var("user_id")
_UNSET: Any = object()
#: a ``SpanContext`` may be read by unpacking it (``_compat.span_context_unpacks``)
_UNPACK = span_context_unpacks()
#: ``context.attach`` and the runtime context's reset, as the context variable's own
#: methods where that is what they do (``_compat.runtime_context_ops``)
_attach, _reset = runtime_context_ops() or (otel_context.attach, otel_context.detach)
#: the key of the span in a ``Context`` (``_compat.current_span_key``), or None
_SPAN_KEY = current_span_key()
#: what is left of the context extracted from a lone ``traceparent`` once the SERVER span
#: replaces the caller's span in it (:func:`_start_span`, :meth:`RequestPass.activate`)
_NOTHING_ELSE = otel_context.Context()


def bound_user_id() -> Any:
    """The ``user_id`` bound in structlog's context (``bind_context`` / ``set_user_id``), or ``None``."""
    value = _USER_ID_VAR.get(Ellipsis)  # structlog's "unbound" (_compat.STRUCTLOG_UNBOUND)
    return None if value is Ellipsis else value


def _span_ids(span: Any) -> tuple[str, str, bool] | None:
    """``(trace_id, span_id, sampled)`` of ``span`` as hex, or ``None`` when invalid."""
    sc = span.get_span_context()
    if _UNPACK and type(sc) is SpanContext:  # its fields without a call each
        trace_id, span_id, _, flags, _, valid = sc
        if not valid:
            return None
        # the text of f"{trace_id:032x}" (valid ids fit 16 and 8 bytes) in half the time
        return (trace_id.to_bytes(16, "big").hex(), span_id.to_bytes(8, "big").hex(),
                bool(flags & 1))
    if not sc.is_valid:
        return None
    return f"{sc.trace_id:032x}", f"{sc.span_id:016x}", bool(sc.trace_flags & 1)


class RequestPass:
    """The state of one measured request, from :func:`start_request` to :meth:`finish`.

    Adapters call :meth:`set_route` when the route template is known,
    :meth:`track_in_progress` once it is, :meth:`activate` /
    :meth:`deactivate` around the application (binds the request id, makes
    the span current) and :meth:`finish` exactly when the last body byte is
    sent (further calls do nothing).
    """

    __slots__ = (
        "_ctx_before", "_ctx_bound", "_ctx_token", "_external_span", "_finished", "_in_progress",
        "_kept_user_id", "_parent", "_rid_token", "_route_at_start", "_span", "body_complete",
        "client", "error", "forwarded_for", "labels", "method", "method_original", "native",
        "path", "peer", "query", "request_id", "request_size", "resolved_user_id",
        "response_size", "route", "start", "state", "user_agent",
    )

    def __init__(self, state: HttpState, method: str, path: str, query: str,
                 request_id: str, route: str | None, user_agent: str | None = None,
                 peer: str | None = None, forwarded_for: str | None = None,
                 client: str | None = None) -> None:
        self.state = state
        self.method = method if method in STANDARD_METHODS else "_OTHER"  # normalize_method
        self.method_original = method
        self.path = path
        self.query = query
        self.request_id = request_id
        self.route = route
        self.user_agent = user_agent
        self.peer = peer
        self.forwarded_for = forwarded_for
        #: the client's address for span and log (``client_address``: the peer, or the
        #: address a trusted proxy forwarded for)
        self.client = client
        self._span: Any = None
        self._parent: Any = None
        self._external_span: Any = None
        self._route_at_start = route is not None
        self._ctx_token: Any = None
        self._ctx_before: contextvars.Context | None = None
        self._ctx_bound: contextvars.Context | None = None
        self._rid_token: contextvars.Token[Any] | None = None
        self._kept_user_id: Any = _UNSET
        self._in_progress: Any = None
        self._finished = False
        #: the ``http_label_values`` of this request (``None``: not asked yet; ``()``: none)
        self.labels: tuple[str, ...] | None = None if state.label_callback else ()
        #: the framework's request, for ``http_label_callback`` (set by the adapters; the
        #: Starlette adapter gives the same one to the span hooks and the user-id resolver)
        self.native: Any = None
        #: body sizes in bytes (``http_size_metrics``; set by the adapters, ``None``: unknown)
        self.request_size: int | None = None
        self.response_size: int | None = None
        #: noted by the adapters while the request runs (the Flask adapter's signal and
        #: teardown handlers): the exception the framework handled, what the
        #: ``user_id_resolver`` gave, and whether the response body is complete already
        self.error: BaseException | None = None
        self.resolved_user_id: Any = None
        self.body_complete = False
        self.start = time.perf_counter()

    # ------------------------------------------------------------------ during
    @property
    def span(self) -> Any:
        """The SERVER span (``None`` when tracing is off)."""
        return self._span

    @property
    def finished(self) -> bool:
        """True once :meth:`finish` ran."""
        return self._finished

    def server_timing(self) -> str | None:
        """``traceparent;desc="00-<trace>-<span>-01"`` for a ``Server-Timing`` header.

        ``None`` unless this request has a sampled SERVER span of ours (a link
        to an unsampled trace would lead nowhere). Adapters call it for HTML
        responses when :attr:`HttpState.server_timing` is on.
        """
        span = self._span
        if span is None:
            return None
        try:
            ids = _span_ids(span)
        except Exception:
            return None
        if ids is None or not ids[2]:
            return None
        return f'traceparent;desc="00-{ids[0]}-{ids[1]}-01"'

    def set_route(self, template: str | None) -> None:
        """Record the route template (``None``: nothing matched)."""
        self.route = template

    # ------------------------------------------------------------------ span controls
    def request_hook(self, request: Any) -> None:
        """Call ``server_request_hook(span, request)`` with the framework's request, when
        the setting is set and this request's SERVER span is recording. Never raises: a
        hook that raises is counted (``errors_total{component="http"}``) and logged once."""
        hook = self.state.request_hook
        span = self._span
        if hook is None or span is None:
            return
        try:
            if span.is_recording():
                hook(span, request)
        except Exception as exc:
            self.state.faults.report("http", "request_hook", "server_request_hook raised", exc)

    def response_hook(self, request: Any, response: Any) -> None:
        """Call ``server_response_hook(span, request, response)`` (as :meth:`request_hook`)."""
        hook = self.state.response_hook
        span = self._span
        if hook is None or span is None:
            return
        try:
            if span.is_recording():
                hook(span, request, response)
        except Exception as exc:
            self.state.faults.report("http", "response_hook", "server_response_hook raised", exc)

    def capture_request_headers(self, headers: Any) -> None:
        """Record the configured request headers (``(name, value)`` pairs) on the span."""
        self._capture(self.state.capture_request, headers)

    def capture_response_headers(self, headers: Any) -> None:
        """Record the configured response headers (``(name, value)`` pairs) on the span."""
        self._capture(self.state.capture_response, headers)

    def _capture(self, capture: HeaderCapture | None, headers: Any) -> None:
        span = self._span
        if capture is None or span is None:
            return
        try:
            if span.is_recording():
                found = capture.attributes(headers)
                if found:
                    span.set_attributes(found)
        except Exception as exc:
            self.state.faults.report("http", "capture_headers", "capturing headers failed", exc)

    def track_in_progress(self) -> None:
        """Count this request in ``http_requests_in_progress`` (once; undone by :meth:`finish`)."""
        if self._in_progress is not None or self._finished:
            return
        try:
            state = self.state
            endpoint = self.route or UNMATCHED
            labels = self.labels
            if labels is None:
                labels = self.resolve_labels()
            found = None if labels else state.in_progress_values.get((self.method, endpoint))
            if found is None:
                found = state.in_progress_value(self.method, endpoint, labels)
            if found is not None:
                found[1](1)
                self._in_progress = found[0]
        except Exception as exc:
            self.state.faults.report("http", "in_progress", "in-progress gauge failed", exc)

    def resolve_labels(self) -> tuple[str, ...]:
        """The values of the ``http_label_values`` labels for this request, asked of
        ``http_label_callback`` once (at :meth:`track_in_progress`, else at
        :meth:`finish`): each value the callback gives that is in its label's allowlist,
        else ``other``. A callback that raises or returns something else than a mapping
        of strings gives ``other`` where it failed, and the fault is counted."""
        state = self.state
        callback = state.label_callback
        if callback is None:
            self.labels = ()
            return ()
        values = state.label_fallback
        try:
            got = callback(HttpRequestInfo(self.method, self.path, self.route, self.native))
            if not isinstance(got, Mapping):
                raise TypeError(f"http_label_callback returned {type(got).__name__}, "
                                "expected a mapping of label names to strings")
            out = []
            bad = None
            for name, allowed in state.label_allowed:
                value = got.get(name)
                if type(value) is str:
                    out.append(value if value in allowed else OTHER_LABEL_VALUE)
                else:
                    if value is not None:
                        bad = name
                    out.append(OTHER_LABEL_VALUE)
            values = tuple(out)
            if bad is not None:
                raise TypeError(f"http_label_callback gave {bad!r} a value that is not a "
                                "string")
        except Exception as exc:
            state.faults.report("http", "label_callback", "http_label_callback failed", exc)
        self.labels = values
        return values

    def activate(self) -> None:
        """Bind the request id into the log context and make the span current."""
        try:
            if _REQUEST_ID_IS_VAR:
                # the token restores the request id; the copy tells whether the app bound
                # more and holds the values to restore if it did (the same as before the
                # request but for the request id, which the token puts back)
                self._rid_token = _REQUEST_ID_VAR.set(self.request_id)
                self._ctx_bound = contextvars.copy_context()
            else:  # the public fallback: the context before, restored through structlog
                self._ctx_before = contextvars.copy_context()
                _REQUEST_ID_VAR.set(self.request_id)
            if self._span is not None:
                # the extracted context, so the caller's baggage reaches the app too
                parent = self._parent
                if _SPAN_KEY is not None and parent is not None:  # set_span_in_context
                    ctx = otel_context.Context({**parent, _SPAN_KEY: self._span})
                else:
                    ctx = otel_trace.set_span_in_context(self._span, parent)
                self._ctx_token = _attach(ctx)
        except Exception as exc:
            self.state.faults.report("http", "activate", "binding request context failed", exc)

    def deactivate(self) -> None:
        """Undo :meth:`activate` (call in ``finally``, in the same thread or task).

        Fields the application bound during the request (``bind_context``,
        ``set_user_id``, structlog's ``bind_contextvars``) are undone too, so
        they never reach the next request served by the same thread. A request
        not finished yet (a streamed body, recorded when the server closes it)
        keeps the bound ``user_id`` for its access-log line.
        """
        try:
            if not self._finished and self.state.access_log:
                self._kept_user_id = bound_user_id()
            if self._ctx_token is not None:
                token, self._ctx_token = self._ctx_token, None
                try:
                    _reset(token)
                except Exception:  # a token from another context: the API logs it, as ever
                    otel_context.detach(token)
            if self._ctx_bound is not None:
                bound, self._ctx_bound = self._ctx_bound, None
                token, self._rid_token = self._rid_token, None
                try:
                    # nothing set in the context since activate() (a C comparison, no walk)
                    unchanged = contextvars.copy_context() == bound
                except Exception:  # a value whose == raises: compare the long way
                    unchanged = False
                if not unchanged:  # what the app bound, undone; the request id stays bound
                    restore_structlog_context(bound)
                if token is not None:
                    try:  # the request id as it was before activate() set it
                        _REQUEST_ID_VAR.reset(token)
                    except (ValueError, RuntimeError):
                        # a token from another context (a framework that ends the request
                        # in a copy of the one it began in): the value the token kept
                        old = token.old_value
                        _REQUEST_ID_VAR.set(STRUCTLOG_UNBOUND if old is token.MISSING
                                            else old)
            elif self._ctx_before is not None:
                before, self._ctx_before = self._ctx_before, None
                restore_structlog_context(before)
        except Exception as exc:
            self.state.faults.report("http", "deactivate", "resetting request context failed", exc)

    # ------------------------------------------------------------------ end
    def finish(self, status: int, exc: BaseException | None = None,
               user_id: Any = None) -> None:
        """Record the request: metrics, span end, access log. Runs once; never raises."""
        if self._finished:
            return
        self._finished = True
        state = self.state
        duration = time.perf_counter() - self.start
        endpoint = self.route or UNMATCHED
        span = self._span if self._span is not None else self._external_span
        ids = None
        if span is None and self.labels == () and state.metrics.exemplar_provider is None:
            # no span, no exemplar, no per-request labels: the series' one recorder, which
            # takes the request out of the in-progress gauge too where it can
            try:
                in_progress = self._in_progress
                record_done = None
                if in_progress is not None:
                    done = state.done_recorders.get((self.method, endpoint, status))
                    if done is not None and done[0] is in_progress:
                        record_done = done[1]
                    else:
                        record_done = state.done_recorder(self.method, endpoint, status,
                                                          in_progress)
                if record_done is not None:
                    self._in_progress = None
                    record_done(duration)
                else:
                    record = state.recorders.get((self.method, endpoint, status))
                    if record is None:
                        record = state.recorder(self.method, endpoint, status)
                    record(duration)
            except Exception as err:
                state.faults.report("http", "metrics", "recording request metrics failed", err)
        else:  # a span, exemplars or per-request labels
            try:
                if span is not None:
                    ids = _span_ids(span)
                exemplar = None
                own = False
                provider = state.metrics.exemplar_provider
                if provider is not None:
                    # one exemplar for both series, from our span when there is one
                    if self._span is None:
                        exemplar = provider()
                    elif ids is not None and ids[2] and self._span.is_recording():
                        own = True
                labels = self.labels
                if labels is None:
                    labels = self.resolve_labels()
                if own and not labels:  # our span's ids: valid exemplar labels, attached without checks
                    assert ids is not None
                    rec = state.exemplar_recorders.get((self.method, endpoint, status))
                    if rec is None:
                        rec = state.exemplar_recorder(self.method, endpoint, status)
                    rec(duration, {"trace_id": ids[0], "span_id": ids[1]})
                elif own or exemplar or labels:
                    if own:
                        assert ids is not None
                        exemplar = {"trace_id": ids[0], "span_id": ids[1]}
                    key = (self.method, endpoint, state.status(status), *state.label_values,
                           *labels)
                    counter = state.requests_child(key)
                    histogram = state.duration_child(key)
                    if counter is not None:
                        counter.inc(1, exemplar)
                    if histogram is not None:
                        histogram.observe(duration, exemplar)
                else:
                    record = state.recorders.get((self.method, endpoint, status))
                    if record is None:
                        record = state.recorder(self.method, endpoint, status)
                    record(duration)
            except Exception as err:
                state.faults.report("http", "metrics", "recording request metrics failed", err)
        if self._in_progress is not None:
            try:
                self._in_progress.inc(-1)
            except Exception as err:
                state.faults.report("http", "in_progress", "in-progress gauge failed", err)
            self._in_progress = None
        if state.sizes:
            self._record_sizes(status, endpoint)
        if self._span is not None:
            self._end_span(status, exc)
        if state.access_log:
            self._access_log(status, duration, endpoint, user_id, ids)

    def _record_sizes(self, status: int, endpoint: str) -> None:
        """Observe the body sizes the adapter set (``http_size_metrics``)."""
        state = self.state
        try:
            key = (self.method, endpoint, state.status(status), *state.label_values,
                   *(self.labels or ()))
            for size, family in ((self.request_size, state.metrics.http_request_size_bytes),
                                 (self.response_size, state.metrics.http_response_size_bytes)):
                if size is not None:
                    child = family.guard.child(key)
                    if child is not None:
                        child.observe(size)
        except Exception as err:
            state.faults.report("http", "sizes", "recording body sizes failed", err)

    def _end_span(self, status: int, exc: BaseException | None) -> None:
        try:
            span = self._span
            route = self.route if self.route and not self._route_at_start else None
            name = (None if route is None
                    else f"{self.method if self.method != '_OTHER' else 'HTTP'} {route}")
            if (exc is None and type(status) is int and status < 500 and type(span) is LeanSpan
                    and span.end_server(status, route, name)):
                return  # the usual case in one call (False: nothing done, the calls below)
            attributes: dict[str, Any] = {"http.response.status_code": status}
            if route is not None:
                span.update_name(name)
                attributes["http.route"] = route
            if exc is not None:
                from .tracing import record_exception  # values cut to the span limit first

                record_exception(span, exc)
                attributes["error.type"] = type(exc).__qualname__
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            elif status >= 500:
                attributes["error.type"] = str(status)
                span.set_status(Status(StatusCode.ERROR))
            span.set_attributes(attributes)  # one call: the SDK locks once per call
            span.end()
        except Exception as err:
            self.state.faults.report("http", "span", "ending the server span failed", err)

    def _access_log(self, status: int, duration: float, endpoint: str, user_id: Any,
                    ids: tuple[str, str, bool] | None) -> None:
        state = self.state
        try:
            url = self.path
            if self.query:
                url = f"{url}?{state.redact_query(self.query)}"
            if user_id is None:
                user_id = self._kept_user_id
                if user_id is _UNSET:  # bound_user_id(), inline
                    user_id = _USER_ID_VAR.get(Ellipsis)
                    if user_id is Ellipsis:
                        user_id = None
            logger = state.logger
            if not state.logger_settled:
                logger = state.settle_logger()
            direct = state.direct_line
            if direct is not None:  # the library's own logging: the same line, written directly
                level = "info" if status < 400 else "warning" if status < 500 else "error"
                fields = {"request_id": self.request_id, "method": self.method, "url": url,
                          "endpoint": endpoint, "status_code": status,
                          "duration_seconds": round(duration, 6),
                          "user_agent": self.user_agent, "ip_address": self.client,
                          "user_id": user_id}
                if ids is not None:
                    fields["trace_id"] = ids[0]
                    fields["span_id"] = ids[1]
                if not direct(level, "http_request", fields):
                    getattr(logger, level)("http_request", **fields)
                return
            log = (logger.info if status < 400 else logger.warning if status < 500
                   else logger.error)
            # the fields as keywords (no dict built and unpacked again); one order, two calls
            if ids is not None:
                log("http_request", request_id=self.request_id, method=self.method, url=url,
                    endpoint=endpoint, status_code=status, duration_seconds=round(duration, 6),
                    user_agent=self.user_agent, ip_address=self.client, user_id=user_id,
                    trace_id=ids[0], span_id=ids[1])
            else:
                log("http_request", request_id=self.request_id, method=self.method, url=url,
                    endpoint=endpoint, status_code=status, duration_seconds=round(duration, 6),
                    user_agent=self.user_agent, ip_address=self.client, user_id=user_id)
        except Exception as err:
            state.faults.report("http", "access_log", "writing the access log failed", err)


def start_request(
    state: HttpState,
    method: str,
    path: str,
    *,
    query: str = "",
    route: str | None = None,
    request_id: str | None = None,
    user_agent: str | None = None,
    peer: str | None = None,
    forwarded_for: str | None = None,
    scheme: str = "http",
    server_address: str | None = None,
    trace_headers: Mapping[str, str] | None = None,
    server_span: Any = None,
) -> RequestPass | None:
    """Begin measuring one request; ``None`` when disabled, or the path or method excluded.

    Args:
        state: from :func:`http_state`.
        method: the request method as sent.
        path: the URL path (without query string).
        query: the raw query string (redacted before logging).
        route: the route template when already known (Starlette).
        request_id: the incoming request id header value, if any.
        user_agent: the ``User-Agent`` header.
        peer: the address of the connected peer.
        forwarded_for: the ``X-Forwarded-For`` header (trusted proxies only).
        scheme: ``http`` or ``https``.
        server_address: the ``Host`` header (port included or not).
        trace_headers: ``traceparent``/``tracestate``/``baggage`` keyed in
            lower case; read only when tracing is on.
        server_span: a SERVER span the framework already started for this
            request (FastAPI's native telemetry); it is used for log
            correlation instead of starting a second one.
    """
    # state.excluded(path), inline
    rx = state.excluded_rx
    if not state.enabled or path in state.excluded_exact or (
            rx is not None and rx.fullmatch(path) is not None):
        return None
    return begin_request(state, method, path, query, request_id, user_agent, peer,
                         forwarded_for, route, scheme, server_address, trace_headers,
                         server_span)


def begin_request(state: HttpState, method: str, path: str, query: str,
                  request_id: str | None, user_agent: str | None, peer: str | None,
                  forwarded_for: str | None, route: str | None = None, scheme: str = "http",
                  server_address: str | None = None,
                  trace_headers: Mapping[str, str] | None = None,
                  server_span: Any = None) -> RequestPass | None:
    """:func:`start_request` for an adapter that checked ``enabled`` and the path's
    exclusion itself: the same arguments, positional (one call fewer per request, and no
    keyword parsing); ``None`` when the method is excluded or starting failed (counted).
    """
    if state.excluded_methods and method in state.excluded_methods:
        return None
    try:
        if request_id:
            rid = safe_request_id(request_id)
        else:
            try:  # new_request_id(), inline while its pool lasts
                rid = _ID_POOL.pop()
            except IndexError:
                rid = new_request_id()
        rp = RequestPass(state, method, path, query, rid, route, user_agent, peer,
                         forwarded_for,
                         # once: span and log (client_address gives the peer itself
                         # without both)
                         client_address(peer, forwarded_for, state.trusted)
                         if forwarded_for and state.trusted else peer)
        if server_span is not None:
            rp._external_span = server_span
        elif state.tracing:
            _start_span(rp, state, scheme, server_address, trace_headers)
        return rp
    except Exception as exc:
        state.faults.report("http", "start", "starting the request pass failed", exc)
        return None


def _start_span(rp: RequestPass, state: HttpState, scheme: str, server_address: str | None,
                trace_headers: Mapping[str, str] | None) -> None:
    ctx = None
    parent = None
    if trace_headers:
        h = trace_headers
        # one length check per header (the _WITHIN lengths, inline): only a long header
        # costs more (bound_trace_headers)
        if len(h.get("traceparent", "")) > 55 or len(h.get("tracestate", "")) > 64 or len(
                h.get("baggage", "")) > 128:
            trace_headers = bound_trace_headers(h, state)
        # the caller's span, parsed inline when it is all the extracted context would
        # hold (no baggage); else that context (propagator log records dropped: _quiet)
        if not trace_headers.get("baggage"):
            parent = remote_parent(trace_headers)
            if parent is None:  # not parsed inline (another propagator, a malformed
                # header): the propagator's context, without parsing a second time
                ctx = propagate.extract(trace_headers)
        else:
            ctx = extract_context(trace_headers)
    attributes: dict[str, Any] = {
        "http.request.method": rp.method,
        "url.path": rp.path[:1024],  # the span attribute limit: past it the SDK warns
        "url.scheme": scheme,
    }
    if rp.method == "_OTHER":
        attributes["http.request.method_original"] = rp.method_original[:64]
    if server_address:
        hit = state.hosts.get(server_address)  # state.host(), its cache read inline
        host, port = hit if hit is not None else state.host(server_address)
        attributes["server.address"] = host
        if port is not None:
            attributes["server.port"] = port
    if rp.user_agent:
        attributes["user_agent.original"] = rp.user_agent[:512]
    if rp.client:
        attributes["client.address"] = rp.client
    name = rp.method if rp.method != "_OTHER" else "HTTP"
    if rp.route:
        attributes["http.route"] = rp.route
        name = f"{name} {rp.route}"
    tracer = state.tracer
    assert tracer is not None
    if parent is not None:
        if type(tracer) is LeanTracer:
            span = tracer.start_remote_child(name, parent, SpanKind.SERVER, attributes)
            if span is not None:
                # the extracted context held the caller's span and nothing else: activate()
                # puts the SERVER span in its place
                rp._parent = _NOTHING_ELSE
                rp._span = span
                return
        ctx = remote_context(parent)
    rp._parent = ctx
    rp._span = tracer.start_span(name, context=ctx, kind=SpanKind.SERVER, attributes=attributes)


# ---------------------------------------------------------------------- trace-context headers
#: W3C limits applied to incoming trace-context headers before extraction (W3C Trace
#: Context: the traceparent format, tracestate limits; W3C Baggage: limits).
#: ``traceparent``: version 00 is exactly 55 characters.
TRACEPARENT_LENGTH = 55
#: ``tracestate``: list members and characters; members longer than 128 characters go first.
TRACESTATE_MEMBERS, TRACESTATE_CHARS, TRACESTATE_MEMBER_CHARS = 32, 512, 128
#: ``baggage``: list members and bytes (UTF-8, as the OpenTelemetry propagator measures).
BAGGAGE_MEMBERS, BAGGAGE_BYTES = 64, 8192
# Up to these lengths a header is within its limits whatever it holds (33 tracestate members
# take 65 characters, 65 baggage members 129, and 128 characters are at most 512 bytes),
# so a request with ordinary headers pays one length check per header and nothing else.
_WITHIN = {"traceparent": TRACEPARENT_LENGTH, "tracestate": 64, "baggage": 128}
# a long header is cut from its first characters only: a 1 MB one costs what 8 KB does
_SCAN = 8192


def _cut_traceparent(value: str) -> str | None:
    """``None`` when ``value`` is within the limit, else what is kept (``""``: dropped)."""
    v = value.strip(" \t")
    if len(v) <= TRACEPARENT_LENGTH:
        return None
    # a later version starts with the version-00 fields and is parsed as its first 55
    # characters when the 56th is "-" (Trace Context, versioning); version 00 (and ff) is
    # invalid
    if v[:2] not in ("00", "ff") and v[TRACEPARENT_LENGTH] == "-":
        return v[:TRACEPARENT_LENGTH]
    return ""


def _members(value: str) -> list[str]:
    """The non-empty list members among the first :data:`_SCAN` characters of ``value``
    (a member cut there is left out), without optional white space."""
    parts = value[:_SCAN].split(",")
    if len(value) > _SCAN and value[_SCAN] != ",":
        parts.pop()
    return [m for m in (p.strip(" \t") for p in parts) if m]


def _cut_tracestate(value: str) -> str | None:
    """``None`` when within the limits, else ``value`` cut to whole members as the spec
    says: members over 128 characters removed first, then members from the end."""
    if len(value) <= TRACESTATE_CHARS and value.count(",") < TRACESTATE_MEMBERS:
        return None
    members = _members(value)
    if len(value) <= TRACESTATE_CHARS and len(members) <= TRACESTATE_MEMBERS:
        return None  # empty members only
    kept: list[str] = []
    size = -1
    for m in members:
        if len(m) > TRACESTATE_MEMBER_CHARS:
            continue
        if len(kept) == TRACESTATE_MEMBERS or size + 1 + len(m) > TRACESTATE_CHARS:
            break
        kept.append(m)
        size += 1 + len(m)
    return ",".join(kept)


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _cut_baggage(value: str) -> str | None:
    """``None`` when within the limits, else the first whole members that fit them."""
    fits = len(value) <= BAGGAGE_BYTES // 4 or _utf8_length(value) <= BAGGAGE_BYTES
    if fits and value.count(",") < BAGGAGE_MEMBERS:
        return None
    members = _members(value)
    if fits and len(members) <= BAGGAGE_MEMBERS:
        return None  # empty members only
    kept: list[str] = []
    size = -1
    for m in members:
        n = _utf8_length(m)
        if len(kept) == BAGGAGE_MEMBERS or size + 1 + n > BAGGAGE_BYTES:
            break
        kept.append(m)
        size += 1 + n
    return ",".join(kept)


_CUTS: tuple[tuple[str, Callable[[str], str | None]], ...] = (
    ("traceparent", _cut_traceparent), ("tracestate", _cut_tracestate),
    ("baggage", _cut_baggage),
)


def bound_trace_headers(headers: Mapping[str, str], state: HttpState | None = None
                        ) -> Mapping[str, str]:
    """``headers`` (``traceparent``/``tracestate``/``baggage``, lower case) within the W3C
    limits: ``headers`` itself when they are, else a copy with each header over its limits
    dropped or cut to whole list members, each counted in
    ``mestres_observability_trace_headers_dropped_total{header}`` of ``state``'s instance.

    * ``traceparent`` longer than 55 characters (white space around it aside): dropped (the
      request starts a new trace), except a later version whose 56th character is ``-``,
      which is cut to its first 55 (as the spec parses it);
    * ``tracestate`` over 32 members or 512 characters: members over 128 characters are
      removed, then members from the end, until it fits;
    * ``baggage`` over 64 members or 8192 bytes: its first members that fit are kept.

    Only the first 8192 characters of a header are looked at. Nothing is logged.
    """
    out: dict[str, str] | None = None
    for name, cut in _CUTS:
        value = headers.get(name)
        if value is None or len(value) <= _WITHIN[name]:
            continue
        kept = cut(value)
        if kept is None:
            continue
        if out is None:
            out = dict(headers)
        if kept:
            out[name] = kept
        else:
            del out[name]
        if state is not None:
            try:
                state.metrics.mestres_observability_trace_headers_dropped_total.metric.labels(
                    name).inc()
            except Exception as exc:  # pragma: no cover - defensive
                state.faults.report("http", "trace_headers", "counting a cut header failed", exc)
    return headers if out is None else out


#: Loggers of the W3C propagators; their warnings about a malformed header quote it (up to
#: 4 KB of a 1 MB ``baggage``). Records they emit while the request pass extracts are dropped.
PROPAGATOR_LOGGERS = ("opentelemetry.baggage.propagation",
                      "opentelemetry.trace.propagation.tracecontext", "opentelemetry.trace.span")
_EXTRACTING = _start_span.__code__


def _quiet(record: logging.LogRecord) -> bool:
    """Logger filter: False for a record emitted inside :func:`_start_span` (the extraction
    of a client's headers), found by walking up the stack. It runs only when one of
    :data:`PROPAGATOR_LOGGERS` logs, never per request."""
    frame = inspect.currentframe()
    for _ in range(64):
        if frame is None:
            break
        if frame.f_code is _EXTRACTING:
            return False
        frame = frame.f_back
    return True


for _name in PROPAGATOR_LOGGERS:
    if _quiet not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_quiet)


# ---------------------------------------------------------------------- library endpoints
def check_metrics_auth(config: Any, authorization: str | None) -> bool:
    """True when ``metrics_auth`` is unset or ``authorization`` satisfies it (constant time)."""
    creds = Credentials.of(config.metrics_credentials, "metrics")
    return creds is None or creds.check(authorization)


def _metrics(obs: Observability, req: Request) -> Response:
    """The ``metrics`` handler: protection, then one scrape of ``obs``."""
    creds = Credentials.of(obs.config.metrics_credentials, "metrics")
    headers = req.headers
    if creds is not None and not creds.check(headers.get("authorization")):
        return creds.unauthorized()
    return obs.render_metrics(headers.get("accept"), headers.get("accept-encoding"))


def _probe(kind: str) -> tuple[Callable[[Any, Request], Response],
                                Callable[[Any, Request], Any]]:
    """The sync and async handlers of health probe ``kind``."""

    def handler(obs: Observability, req: Request) -> Response:
        h = req.headers
        return obs.health.probe(kind, accept=h.get("accept"), authorization=h.get("authorization"))

    async def ahandler(obs: Observability, req: Request) -> Response:
        h = req.headers
        return await obs.health.aprobe(kind, accept=h.get("accept"),
                                       authorization=h.get("authorization"))

    return handler, ahandler


def _setting_path(setting: str) -> Callable[[Any], tuple[str | None]]:
    """``paths`` of a kind served at the path held by one setting."""
    return lambda cfg: (getattr(cfg, setting),)


_NO_STORE = ("Cache-Control", "no-store")
_METRICS_FAULT = Fault("metrics_endpoint", "metrics endpoint failed", Response(
    500, [("Content-Type", "text/plain; charset=utf-8"), _NO_STORE],
    b"metrics collection failed\n"))
_HEALTH_FAULT = Fault("health_endpoint", "health endpoint failed", Response(
    503, [("Content-Type", "application/health+json"), _NO_STORE], b'{"status": "fail"}'))

#: ``/metrics`` on the app (not when ``metrics_port`` moves it to its own listener).
METRICS_ENDPOINT = register_endpoint(EndpointKind(
    "metrics", lambda cfg: (cfg.metrics_path,) if cfg.metrics_port is None else (),
    _metrics, fault=_METRICS_FAULT))
for _kind, _setting, _route in (("basic", "health_path", "health"),
                                ("liveness", "health_liveness_path", "health-liveness"),
                                ("readiness", "health_readiness_path", "health-readiness"),
                                ("detailed", "health_detailed_path", "health-detailed")):
    _sync, _async = _probe(_kind)
    register_endpoint(EndpointKind(_kind, _setting_path(_setting), _sync, _async,
                                   fault=_HEALTH_FAULT, route_name=_route))
del _kind, _setting, _route, _sync, _async

# the browser RUM kinds (snippet and ingestion endpoint) register themselves on import
from . import rum as _rum  # noqa: E402,F401


def bound_endpoint(obs: Observability, kind: str, path: str | None = None) -> Endpoint:
    """Endpoint ``kind`` bound to ``obs`` (at ``path``), for serving it outside the path table.

    An unknown kind answers as a failed health probe (counted), as before the table existed.
    """
    found = endpoint_kind(kind)
    if found is None:
        def unknown(_obs: Any, _req: Request) -> Response:
            raise ValueError(f"unknown library endpoint kind {kind!r}")

        found = EndpointKind(kind, lambda cfg: (), unknown, fault=_HEALTH_FAULT)
    return Endpoint(found, path or "", obs, obs.config)


def _request(method: str, accept: str | None, accept_encoding: str | None,
             authorization: str | None) -> Request:
    return Request(method, "", [(k, v) for k, v in (
        ("accept", accept), ("accept-encoding", accept_encoding),
        ("authorization", authorization)) if v is not None])


def serve_endpoint(obs: Observability, kind: str, method: str, *, accept: str | None = None,
                   accept_encoding: str | None = None,
                   authorization: str | None = None) -> EndpointResponse:
    """Answer a library endpoint: ``metrics``, ``basic``, ``liveness``, ``readiness``, ``detailed``.

    ``GET`` and ``HEAD`` only (405 otherwise). Never raises: a fault gives a
    generic 500/503 body and is counted. Adapters serve the path table
    (:attr:`HttpState.endpoints`) instead; this answers by kind name.
    """
    return bound_endpoint(obs, kind).dispatch(
        _request(method, accept, accept_encoding, authorization))


async def aserve_endpoint(obs: Observability, kind: str, method: str, *,
                          accept: str | None = None, accept_encoding: str | None = None,
                          authorization: str | None = None) -> EndpointResponse:
    """Async :func:`serve_endpoint`: health through ``aprobe``, metrics in a worker thread."""
    return await bound_endpoint(obs, kind).adispatch(
        _request(method, accept, accept_encoding, authorization))


_warned: set[str] = set()


def warn_unprotected_metrics(obs: Observability, where: str) -> None:
    """Log once per process when ``/metrics`` is served on the app without protection."""
    cfg = obs.config
    if not cfg.metrics_path or cfg.metrics_port is not None or cfg.metrics_auth:
        return
    if where in _warned:
        return
    _warned.add(where)
    _log.warning(
        "%s serves %s without protection: anyone who reaches the app can read it. Set "
        "metrics_auth (MESTRES_OBS_METRICS_AUTH=bearer:<token>), serve it on a separate port "
        "(metrics_port) or block the path at the ingress.",
        where, cfg.metrics_path,
    )
