"""Per-request overhead of the HTTP adapters against the bare app and the peers.

Run: ``python benchmarks/bench_http.py [flask] [fastapi] [django] [--markdown]
[--no-cpu]`` (all three by default; about 3-4 minutes; ``--markdown`` also prints the
tables as docs/benchmarks.md shows them; ``--cpu`` runs the CPU measure alone,
``--no-cpu`` leaves it out; ``--profile`` prints cProfile call counts per request;
``--thread-time`` times the rounds with the thread's CPU time instead of the wall clock,
for a loaded machine; ``BENCH_VARIANTS="ours full;primitives by hand"`` keeps only those
variants, beside the bare app, in the wall-clock measure). Apps are driven
in-process (a WSGI callable with a prepared environ, an ASGI app with a
prepared scope on one event loop, Django's ``WSGIHandler``), so the figures
measure middleware, not a test client. Each variant serves ``GET /orders/42``
with a W3C ``traceparent`` header, in many short rounds (``BENCH_ROUNDS`` x
``BENCH_REQUESTS``, 60 x 50 by default) that interleave all variants. Each
variant shows its best round in microseconds per request and its overhead: the
median over rounds of (variant - bare app, same round). Paired, short rounds
keep a shared, noisy machine from favouring whichever variant ran in a quiet
moment; the ratios are computed from those overheads.

Variants per framework:

* ``bare``: the app alone.
* ``ours metrics``: mestres-observability with tracing and access log off.
* ``ours full``: metrics + SERVER span (the library's own provider and bounded
  pipeline: a lean span; parent extracted) + one JSON access-log line + request id.
* ``ours full, SDK spans``: the same with ``lean_spans=False``.
* ``ours full, library logging``: ``ours full`` with the library's own logging, as
  ``init_observability`` sets it up by default (``configure_logging=True``: its
  processors, redaction, orjson renderer and standard-output handler; standard
  output is the same ``/dev/null`` sink the structlog lines go to). The other
  ``ours`` rows log through the plain structlog configuration the peers and the
  floor use, so that they compare the work per request, not the renderer. The
  full-pass targets are shown for both: the default set-up, and a service that
  keeps its own structlog chain (whose line costs what it costs the floor).
* ``peer metrics``: prometheus_flask_exporter / prometheus-fastapi-instrumentator
  (and starlette_exporter) / django-prometheus.
* ``peer otel``: the OpenTelemetry Flask / FastAPI / Django instrumentation.
* ``peer metrics+otel+log``: both, plus one structlog JSON line per request.
* ``primitives by hand``: the floor. The bare app wrapped in a few lines of WSGI
  or ASGI code doing by hand what the full pass must do at least: a timer, a
  SERVER span from the SDK with the parent extracted and the same
  semantic-convention attributes, a counter and a histogram observation with
  the span's exemplar, one structlog JSON line with the access log's twelve
  fields. No request id, no in-progress gauge, no route lookup (a constant),
  no redaction, no fault handling.
* ``metrics by hand``: the floor of the metrics-only pass. The bare app wrapped in a
  few lines recording what ``ours metrics`` records but the in-progress gauge (the
  request count and duration every metrics peer records, some with more series
  beside): a timer, the status, then ``labels(...).inc()`` on a counter and
  ``labels(...).observe()`` on a histogram (method, a constant route, status). No
  request id, no in-progress gauge, no route lookup, no cardinality bound, no fault
  handling; its timer stops when the app returns, before the body is sent (ours
  times to the body's last byte), which can only favour the floor.

Then the **CPU measure** (a process of its own, ``--cpu``): a real OTLP/HTTP
exporter on each side (the library's pipeline; the peers' ``BatchSpanProcessor``)
sending to a loopback receiver in another process, and the process CPU time per
request (``time.process_time()``, all threads, so the export's encoding and HTTP
requests count), each round flushed before it is timed; rows ``bare``, ``ours
full``, ``ours full, SDK spans``, ``peer metrics+otel+log``, ``primitives by hand``
(``BENCH_CPU_ROUNDS`` x ``BENCH_CPU_REQUESTS``, 15 x 200 by default).

Peers that are not installed are shown as ``n/a``. Figures are reported, not
gated: they depend on the machine.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Histogram

warnings.simplefilter("ignore")

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "60"))
PER_ROUND = int(os.environ.get("BENCH_REQUESTS", "50"))
#: the clock of the wall-clock measure's rounds: ``time.perf_counter`` by default;
#: ``--thread-time`` takes ``time.thread_time`` (the CPU time of the benchmark's thread),
#: which leaves out the time the thread waits for a core on a loaded machine
_CLOCK: Callable[[], float] = time.perf_counter
#: ``BENCH_VARIANTS="ours full;primitives by hand"``: only these variants (and the bare app)
#: in the wall-clock measure, a narrower harness; all by default
_ONLY = {v.strip() for v in os.environ.get("BENCH_VARIANTS", "").split(";") if v.strip()}


class _Discard(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def _setup_globals(otlp_endpoint: str | None = None) -> None:
    """The peers' global provider (a batch processor; an OTLP/HTTP exporter to
    ``otlp_endpoint`` in the CPU measure, else one that discards) and structlog."""
    global _OTLP_ENDPOINT
    _OTLP_ENDPOINT = otlp_endpoint
    exporter: SpanExporter = _Discard()
    if otlp_endpoint is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint + "/v1/traces")
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=65536))
    trace.set_tracer_provider(provider)
    global _log
    structlog.configure(
        processors=_plain_processors(),
        logger_factory=structlog.PrintLoggerFactory(file=SINK),
        cache_logger_on_first_use=True,
    )
    # the peers' and the floor's logger: the same configuration, bound now, so that the
    # library's own logging (``ours full, library logging`` reconfigures structlog) never
    # reaches it
    _log = structlog.wrap_logger(
        structlog.PrintLogger(SINK), processors=_plain_processors(),
        wrapper_class=structlog.make_filtering_bound_logger(0), context_class=dict,
        cache_logger_on_first_use=True).bind()


#: where every log line of the run goes: the structlog lines and, for ``ours full,
#: library logging``, standard output while a round runs (:func:`_to_sink`)
SINK = open(os.devnull, "w")  # noqa: SIM115 - lives for the whole run


def _plain_processors() -> list[Any]:
    """The plain structlog chain of the peers' and the floor's log line."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.JSONRenderer(),
    ]


class _to_sink:
    """Standard output to :data:`SINK` within the block (the library's log handler writes
    to the current ``sys.stdout``)."""

    def __enter__(self) -> None:
        self.saved = sys.stdout
        sys.stdout = SINK

    def __exit__(self, *exc: Any) -> None:
        sys.stdout = self.saved


_log: Any = None


def log_line() -> None:
    """One structlog JSON line, as a peer set-up would add per request."""
    _log.info("http_request", method="GET", url="/orders/42", status_code=200)


#: OTLP/HTTP endpoint of the library's exporter in the CPU measure (``--cpu``); None: the
#: wall-clock measure, where the exporter discards, as the peers' does
_OTLP_ENDPOINT: str | None = None


def _init(full: bool, lean: bool = True, library_logging: bool = False) -> Any:
    """The library as it runs in production: its own tracer provider (the benchmark's global
    one is the peers'), an OTLP exporter behind its bounded pipeline; ``lean=False``: SDK
    spans (``lean_spans=false``); ``library_logging``: the library's own logging set-up
    (``configure_logging=True``, its default), else the plain structlog configuration."""
    from mestres_observability import init_observability
    from mestres_observability.http import http_state

    if not library_logging:  # the plain configuration again (an earlier init may have
        structlog.configure(  # replaced it)
            processors=_plain_processors(),
            logger_factory=structlog.PrintLoggerFactory(file=SINK),
            wrapper_class=structlog.make_filtering_bound_logger(0), context_class=dict,
            cache_logger_on_first_use=True,
        )
    with _to_sink():
        obs = _init_observability(init_observability, full, lean, library_logging)
    state = http_state(obs)
    if state.logger is not None:
        # bound now, under the structlog configuration this variant logs with (a later
        # variant's init may configure structlog again)
        state.logger.bind()
    return obs


def _init_observability(init_observability: Any, full: bool, lean: bool,
                        library_logging: bool) -> Any:
    obs = init_observability(
        configure_logging=library_logging, tracing_enabled=full, access_log=full,
        lean_spans=lean,
        system_metrics=False, process_metrics=False, service_name="bench",
        respect_global_tracer_provider=False, span_queue_size=65536,
        traces_exporter="otlp" if full else None,
        otlp_endpoint=_OTLP_ENDPOINT or "http://127.0.0.1:9",
    )
    pipeline = obs.tracing._pipeline
    if full and _OTLP_ENDPOINT is None and pipeline is not None:
        # the wall-clock measure: spans are batched and handed to an exporter that discards
        # them, as the peers' are (no encoding on either side)
        pipeline.exporter.inner = _Discard()
        pipeline.fast_send = None
    return obs


def _ours(adapter: str, make: Callable[[], Any], full: bool, lean: bool = True,
          library_logging: bool = False) -> tuple[Any, Any]:
    """A fresh app wired by ``mestres_observability.<adapter>.instrument``, and its instance."""
    import importlib

    app = make()
    obs = _init(full, lean, library_logging)
    importlib.import_module(f"mestres_observability.{adapter}").instrument(app, obs)
    return app, obs


# ---------------------------------------------------------------------- the floor
class _ByHand:
    """The primitives of one request, written by hand (see ``primitives by hand``)."""

    def __init__(self, route: str) -> None:
        registry = CollectorRegistry()
        labels = ["method", "endpoint", "status"]
        self.counter = Counter("hand_requests", "requests", labels, registry=registry)
        self.histogram = Histogram("hand_duration_seconds", "duration", labels,
                                   registry=registry)
        self.tracer = trace.get_tracer("bench")
        self.route = route
        self.name = f"GET {route}"

    def begin_wsgi(self, environ: dict[str, Any]) -> tuple[Any, ...]:
        return self._begin(environ["HTTP_TRACEPARENT"], environ["PATH_INFO"],
                           environ["HTTP_USER_AGENT"], environ["REMOTE_ADDR"])

    def begin_asgi(self, scope: dict[str, Any]) -> tuple[Any, ...]:
        headers = dict(scope["headers"])
        return self._begin(headers[b"traceparent"].decode(), scope["path"],
                           headers[b"user-agent"].decode(), scope["client"][0])

    def _begin(self, traceparent: str, path: str, user_agent: str,
               client: str) -> tuple[Any, ...]:
        ctx = propagate.extract({"traceparent": traceparent})
        span = self.tracer.start_span(self.name, context=ctx, kind=SpanKind.SERVER, attributes={
            "http.request.method": "GET", "url.path": path, "url.scheme": "http",
            "server.address": "bench", "user_agent.original": user_agent,
            "client.address": client, "http.route": self.route,
        })
        token = otel_context.attach(trace.set_span_in_context(span, ctx))
        return span, token, path, user_agent, client, time.perf_counter()

    def end(self, begun: tuple[Any, ...], status: int) -> None:
        span, token, path, user_agent, client, t0 = begun
        duration = time.perf_counter() - t0
        otel_context.detach(token)
        span.set_attributes({"http.response.status_code": status})
        span.end()
        sc = span.get_span_context()
        trace_id, span_id = f"{sc.trace_id:032x}", f"{sc.span_id:016x}"
        exemplar = {"trace_id": trace_id, "span_id": span_id}
        code = str(status)
        self.counter.labels("GET", self.route, code).inc(1, exemplar)
        self.histogram.labels("GET", self.route, code).observe(duration, exemplar)
        _log.info("http_request", request_id=None, method="GET", url=path, endpoint=self.route,
                 status_code=status, duration_seconds=round(duration, 6),
                 user_agent=user_agent, ip_address=client, user_id=None,
                 trace_id=trace_id, span_id=span_id)


class _MetricsByHand:
    """The metrics of one request, written by hand (see ``metrics by hand``)."""

    def __init__(self, route: str) -> None:
        registry = CollectorRegistry()
        labels = ["method", "endpoint", "status"]
        self.counter = Counter("hand_requests", "requests", labels, registry=registry)
        self.histogram = Histogram("hand_duration_seconds", "duration", labels,
                                   registry=registry)
        self.route = route

    def begin_wsgi(self, environ: dict[str, Any]) -> tuple[str, float]:
        return environ["REQUEST_METHOD"], time.perf_counter()

    def begin_asgi(self, scope: dict[str, Any]) -> tuple[str, float]:
        return scope["method"], time.perf_counter()

    def end(self, begun: tuple[str, float], status: int) -> None:
        method, t0 = begun
        duration = time.perf_counter() - t0
        code = str(status)
        self.counter.labels(method, self.route, code).inc()
        self.histogram.labels(method, self.route, code).observe(duration)


def _around_wsgi(app: Callable[..., Any], hand: _ByHand | _MetricsByHand) -> Callable[..., Any]:
    """``app`` with ``hand``'s ``begin_wsgi`` before it and its ``end`` (with the response's
    status, 500 if none was started) after it."""
    begin, end = hand.begin_wsgi, hand.end

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        begun = begin(environ)
        status = [500]

        def capture(code: str, headers: Any, exc_info: Any = None) -> Any:
            status[0] = int(code[:3])
            return start_response(code, headers, exc_info)

        try:
            return app(environ, capture)
        finally:
            end(begun, status[0])

    return wrapped


def _around_asgi(app: Any, hand: _ByHand | _MetricsByHand) -> Any:
    """:func:`_around_wsgi` for an ASGI ``app`` (``begin_asgi`` gets the scope)."""
    begin, end = hand.begin_asgi, hand.end

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        begun = begin(scope)
        status = [500]

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await app(scope, receive, capture)
        finally:
            end(begun, status[0])

    return wrapped


def by_hand_wsgi(app: Callable[..., Any], route: str) -> Callable[..., Any]:
    """``app`` with the request primitives written by hand around it (WSGI)."""
    return _around_wsgi(app, _ByHand(route))


def by_hand_asgi(app: Any, route: str) -> Any:
    """``app`` with the request primitives written by hand around it (ASGI)."""
    return _around_asgi(app, _ByHand(route))


def metrics_by_hand_wsgi(app: Callable[..., Any], route: str) -> Callable[..., Any]:
    """``app`` with a request's counter and histogram written by hand around it (WSGI)."""
    return _around_wsgi(app, _MetricsByHand(route))


def metrics_by_hand_asgi(app: Any, route: str) -> Any:
    """``app`` with a request's counter and histogram written by hand around it (ASGI)."""
    return _around_asgi(app, _MetricsByHand(route))


# ---------------------------------------------------------------------- drivers
def wsgi_runner(app: Callable[..., Any],
                extra_environ: dict[str, str] | None = None) -> Callable[[int], None]:
    """``run(n)``: ``n`` GET /orders/42 requests with a ``traceparent`` through the WSGI ``app``
    (``extra_environ``: more request headers and variables)."""
    base: dict[str, Any] = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/orders/42", "SCRIPT_NAME": "",
        "QUERY_STRING": "", "SERVER_NAME": "bench", "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "bench",
        "HTTP_USER_AGENT": "bench/1", "HTTP_TRACEPARENT": TRACEPARENT,
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0), "wsgi.multithread": False, "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        **(extra_environ or {}),
    }

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        if not status.startswith("200"):
            raise RuntimeError(f"unexpected status {status}")
        return None

    def run(n: int) -> None:
        for _ in range(n):
            environ = dict(base)
            environ["wsgi.input"] = io.BytesIO(b"")
            result = app(environ, start_response)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()

    return run


def asgi_runner(app: Any) -> Callable[[int], None]:
    loop = asyncio.new_event_loop()
    headers = [(b"host", b"bench"), (b"user-agent", b"bench/1"),
               (b"traceparent", TRACEPARENT.encode())]
    base = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": "/orders/42", "raw_path": b"/orders/42", "root_path": "",
            "query_string": b"", "headers": headers, "client": ("127.0.0.1", 5000),
            "server": ("bench", 80)}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"unexpected status {message['status']}")

    async def many(n: int) -> None:
        for _ in range(n):
            await app(dict(base), receive, send)

    def run(n: int) -> None:
        loop.run_until_complete(many(n))

    return run


# ---------------------------------------------------------------------- variants
Wrap = Callable[[Any], Any]


def _variants(adapter: str, make: Callable[..., Any], metrics_peer: Wrap, otel: Wrap,
              by_hand: Wrap, metrics_by_hand: Wrap,
              more_metrics_peers: dict[str, Callable[[], Any] | None] | None = None,
              ) -> dict[str, Callable[[], Any] | None]:
    """The variants of one framework whose app ``make(log=False)`` builds."""
    return {
        "bare": make,
        "ours metrics": lambda: _ours(adapter, make, False),
        "ours full": lambda: _ours(adapter, make, True),
        "ours full, SDK spans": lambda: _ours(adapter, make, True, lean=False),
        "ours full, library logging": lambda: _ours(adapter, make, True, library_logging=True),
        "peer metrics": _optional(lambda: metrics_peer(make())),
        **(more_metrics_peers or {}),
        "peer otel": _optional(lambda: otel(make())),
        "peer metrics+otel+log": _optional(lambda: otel(metrics_peer(make(log=True)))),
        "primitives by hand": lambda: by_hand(make()),
        "metrics by hand": lambda: metrics_by_hand(make()),
    }


# ---------------------------------------------------------------------- Flask
def flask_variants() -> dict[str, Callable[[], Any] | None]:
    from flask import Flask

    def make(log: bool = False) -> Any:
        app = Flask("bench")

        @app.get("/orders/<int:order_id>")
        def order(order_id: int) -> Any:
            if log:
                log_line()
            return {"id": order_id}

        return app

    def exporter(app: Any) -> Any:
        from prometheus_flask_exporter import PrometheusMetrics

        PrometheusMetrics(app, registry=CollectorRegistry())
        return app

    def otel(app: Any) -> Any:
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor().instrument_app(app)
        return app

    return _variants("flask", make, exporter, otel,
                     lambda app: by_hand_wsgi(app, "/orders/<int:order_id>"),
                     lambda app: metrics_by_hand_wsgi(app, "/orders/<int:order_id>"))


# ---------------------------------------------------------------------- FastAPI
def fastapi_variants() -> dict[str, Callable[[], Any] | None]:
    from fastapi import FastAPI

    def make(log: bool = False) -> Any:
        # FastAPI >= 0.16x traces natively whenever a global tracer provider is set
        # (several spans per request); turned off so every variant measures only itself
        try:
            app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})
        except TypeError:
            app = FastAPI()

        @app.get("/orders/{order_id}")
        async def order(order_id: int) -> dict[str, int]:
            if log:
                log_line()
            return {"id": order_id}

        return app

    def instrumentator(app: Any) -> Any:
        from prometheus_fastapi_instrumentator import Instrumentator

        Instrumentator(registry=CollectorRegistry()).instrument(app)
        return app

    def starlette_exporter(app: Any) -> Any:
        from starlette_exporter import PrometheusMiddleware

        app.add_middleware(PrometheusMiddleware, app_name="bench", group_paths=True)
        return app

    def otel(app: Any) -> Any:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app)
        return app

    return _variants("fastapi", make, instrumentator, otel,
                     lambda app: by_hand_asgi(app, "/orders/{order_id}"),
                     lambda app: metrics_by_hand_asgi(app, "/orders/{order_id}"),
                     {"peer metrics (starlette_exporter)":
                      _optional(lambda: starlette_exporter(make()))})


# ---------------------------------------------------------------------- Django
def _django_view(request: Any, order_id: int) -> Any:
    from django.http import JsonResponse

    if getattr(request, "_bench_log", False) or _DJANGO_LOG[0]:
        log_line()
    return JsonResponse({"id": order_id})


_DJANGO_LOG = [False]


def _django_urls() -> Any:
    from django.urls import path

    return [path("orders/<int:order_id>", _django_view)]


urlpatterns: list[Any] = []


def django_variants() -> dict[str, Callable[[], Any] | None]:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False, SECRET_KEY="bench", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
            INSTALLED_APPS=[], MIDDLEWARE=[], USE_TZ=True, LOGGING_CONFIG=None,
        )
        django.setup()
        urlpatterns[:] = _django_urls()

    def handler(middleware: list[str], otel: bool = False, log: bool = False) -> Any:
        from django.core.handlers.wsgi import WSGIHandler
        from django.test.utils import override_settings

        with override_settings(MIDDLEWARE=list(middleware)):
            instrumentor = None
            if otel:
                from opentelemetry.instrumentation.django import DjangoInstrumentor

                instrumentor = DjangoInstrumentor()
                instrumentor.instrument()
            h = WSGIHandler()
            if instrumentor is not None:
                instrumentor.uninstrument()

        def app(environ: Any, start_response: Any) -> Any:
            _DJANGO_LOG[0] = log
            return h(environ, start_response)

        return app

    def ours(full: bool, lean: bool = True, library_logging: bool = False) -> Any:
        obs = _init(full, lean, library_logging)
        return handler(["mestres_observability.django.ObservabilityMiddleware"]), obs

    prom = ["django_prometheus.middleware.PrometheusBeforeMiddleware",
            "django_prometheus.middleware.PrometheusAfterMiddleware"]
    return {
        "bare": lambda: handler([]),
        "ours metrics": lambda: ours(False),
        "ours full": lambda: ours(True),
        "ours full, SDK spans": lambda: ours(True, lean=False),
        "ours full, library logging": lambda: ours(True, library_logging=True),
        "peer metrics": _optional(lambda: handler(prom), "django_prometheus"),
        "peer otel": _optional(lambda: handler([], otel=True),
                               "opentelemetry.instrumentation.django"),
        "peer metrics+otel+log": _optional(lambda: handler(prom, otel=True, log=True),
                                           "django_prometheus"),
        "primitives by hand": lambda: by_hand_wsgi(handler([]), "/orders/<int:order_id>"),
        "metrics by hand": lambda: metrics_by_hand_wsgi(handler([]), "/orders/<int:order_id>"),
    }


# ---------------------------------------------------------------------- main
def _optional(factory: Callable[[], Any], module: str | None = None) -> Callable[[], Any] | None:
    if module is not None:
        import importlib.util

        if importlib.util.find_spec(module) is None:
            return None
    return factory


def serving(framework: str, label: str) -> Any:
    """The app of variant ``label`` of ``framework`` (``flask``, ``fastapi``, ``django``),
    built and made the instance requests use, for a benchmark that serves one variant
    (``bench_server.py``'s servers, ``instructions.py``)."""
    factory = globals()[f"{framework}_variants"]()[label]
    if factory is None:
        raise SystemExit(f"variant {label!r} is not installed")
    built = factory()
    app, obs = built if isinstance(built, tuple) else (built, None)
    if obs is not None:  # imported only here: the bare app's process never imports it
        from mestres_observability._current import swap

        swap(obs)  # requests use the current instance (bound late)
    return app


def measure(name: str, variants: dict[str, Callable[[], Any] | None],
            runner: Callable[[Any], Callable[[int], None]]
            ) -> dict[str, tuple[float, float] | None]:
    """Per variant: best round (us/request) and overhead over the bare app (us/request).

    Rounds interleave the variants, so drift hits all alike; the overhead is the
    median over rounds of (variant - bare) in the same round, which a burst of
    load on a shared machine moves far less than a difference of two minima.
    """
    from mestres_observability._current import swap

    runs: dict[str, tuple[Callable[[int], None], Any]] = {}
    out: dict[str, tuple[float, float] | None] = {}
    for label, factory in variants.items():
        if _ONLY and label != "bare" and label not in _ONLY:
            continue
        out[label] = None
        if factory is None:
            continue
        try:
            built = factory()
        except ImportError:
            continue
        app, obs = built if isinstance(built, tuple) else (built, None)
        runs[label] = (runner(app), obs)
    times: dict[str, list[float]] = {label: [] for label in runs}
    for round_no in range(ROUNDS + 1):
        for label, (run, obs) in runs.items():
            if obs is not None:
                swap(obs)  # requests use the current instance (bound late)
            gc.collect()
            n = PER_ROUND if round_no else 200  # round 0 warms up
            with _to_sink():
                t0 = _CLOCK()
                run(n)
                elapsed = _CLOCK() - t0
            if round_no:
                times[label].append(elapsed / n * 1e6)
    bare = times["bare"]
    for label, values in times.items():
        overhead = statistics.median(v - b for v, b in zip(values, bare, strict=True))
        out[label] = (min(values), overhead)
    return out


def report(name: str, figures: dict[str, tuple[float, float] | None]) -> None:
    print(f"\n{name}: us per request, best round (overhead over bare, median of rounds)")
    over: dict[str, float] = {}
    for label, value in figures.items():
        if value is None:
            print(f"  {label:<36} n/a (peer not installed)")
            continue
        best, overhead = value
        print(f"  {label:<36} {best:8.1f}   (+{overhead:6.1f})")
        if label != "bare":
            over[label] = overhead
    combined = over.get("peer metrics+otel+log")
    metric_peers = [v for k, v in over.items() if k.startswith("peer metrics") and "+" not in k]
    if combined and "ours full" in over:
        print(f"  ratio ours full / peers metrics+otel+log: "
              f"{over['ours full'] / combined:5.2f}  (target <= 0.25, aim 0.20)")
        if over.get("ours full, library logging"):
            print(f"  ratio ours full, library logging / peers metrics+otel+log: "
                  f"{over['ours full, library logging'] / combined:5.2f}  (target <= 0.25)")
    floor = over.get("primitives by hand")
    if combined and floor and "ours full" in over:
        print(f"  ratio primitives by hand / peers metrics+otel+log: {floor / combined:5.2f}"
              f"   ours full / primitives by hand: {over['ours full'] / floor:5.2f}"
              f"  (target <= 0.75)")
        if over.get("ours full, library logging"):
            print(f"  ratio ours full, library logging / primitives by hand: "
                  f"{over['ours full, library logging'] / floor:5.2f}  (target <= 0.75)")
    cheapest = min(metric_peers) if metric_peers else None
    if cheapest and "ours metrics" in over:
        print(f"  ratio ours metrics / cheapest metrics peer: "
              f"{over['ours metrics'] / cheapest:5.2f}  (target <= 0.30)")
    if cheapest and "metrics by hand" in over:
        print(f"  ratio metrics by hand / cheapest metrics peer: "
              f"{over['metrics by hand'] / cheapest:5.2f}")


def _ratio(over: dict[str, float], a: str, b: str) -> str:
    return f"{over[a] / over[b]:.2f}" if over.get(a) and over.get(b) else "n/a"


def table(heading: str, labels: Sequence[str],
          results: Mapping[str, Mapping[str, tuple[float, float] | None]],
          ratios: Sequence[tuple[str, str, str]]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """The Markdown rows of a run (one column per framework): a row per variant in
    ``labels`` (figure and overhead), then a row per ``(title, a, b)`` of ``ratios`` (the
    overhead of ``a`` over that of ``b``); and the overheads, per framework, for more rows."""
    names = list(results)
    rows = [f"| {heading} | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for label in labels:
        cells = []
        for name in names:
            value = results[name].get(label)
            cells.append("—" if value is None else f"{value[0]:.0f} (+{value[1]:.0f})")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    overs = {name: {k: v[1] for k, v in figs.items() if v is not None and k != "bare"}
             for name, figs in results.items()}
    for title, a, b in ratios:
        rows.append(f"| {title} | " + " | ".join(_ratio(overs[n], a, b) for n in names) + " |")
    return rows, overs


def markdown(results: dict[str, dict[str, tuple[float, float] | None]]) -> str:
    """The run as a Markdown table (``--markdown``), as docs/benchmarks.md shows it."""
    names = list(results)
    # the order of the framework with the most variants (FastAPI has two metrics peers)
    widest = max(results.values(), key=lambda figs: len(list(figs)))
    labels = list(widest)
    labels += [label for figs in results.values() for label in figs if label not in labels]
    rows, overs = table("variant", labels, results, (
        ("**ours full / peers combined** (target ≤ 0.25)", "ours full", "peer metrics+otel+log"),
        ("primitives by hand / peers combined", "primitives by hand", "peer metrics+otel+log"),
        ("**ours full / primitives by hand** (target ≤ 0.75)", "ours full",
         "primitives by hand"),
        ("ours full with SDK spans / peers combined", "ours full, SDK spans",
         "peer metrics+otel+log"),
        ("**ours full, library logging (the default) / peers combined** (target ≤ 0.25)",
         "ours full, library logging", "peer metrics+otel+log"),
        ("**ours full, library logging (the default) / primitives by hand** (target ≤ 0.75)",
         "ours full, library logging", "primitives by hand"),
    ))
    cheapest: dict[str, float | None] = {}
    for n in names:
        peers = [v for k, v in overs[n].items() if k.startswith("peer metrics") and "+" not in k]
        cheapest[n] = min(peers) if peers else None
    for title, label in (("**ours metrics / cheapest metrics peer** (target ≤ 0.30)",
                          "ours metrics"),
                         ("metrics by hand / cheapest metrics peer", "metrics by hand")):
        cells = []
        for n in names:
            peer = cheapest[n]
            cells.append(f"{overs[n][label] / peer:.2f}" if peer and label in overs[n] else "n/a")
        rows.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


# ---------------------------------------------------------------------- CPU per request
CPU_ROUNDS = int(os.environ.get("BENCH_CPU_ROUNDS", "15"))
CPU_PER_ROUND = int(os.environ.get("BENCH_CPU_REQUESTS", "200"))
#: the variants of the CPU measure (each exporting over OTLP/HTTP, but the bare app)
CPU_VARIANTS = ("bare", "ours full", "ours full, SDK spans", "ours full, library logging",
                "peer metrics+otel+log", "primitives by hand")

#: A loopback OTLP/HTTP receiver, run in its own process: it decodes every request with the
#: official protobuf messages (so a malformed one is counted) and answers 200; ``GET`` gives
#: "<spans received> <requests it could not decode>".
_RECEIVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
got = [0, 0]
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            req = ExportTraceServiceRequest.FromString(body)
            got[0] += sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
        except Exception:
            got[1] += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        out = f"{got[0]} {got[1]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def _flush_live() -> None:
    """Export what the library's live pipeline holds. One process has one live pipeline
    (each ``init_observability`` retires the previous instance's and points the
    process-wide span processor at its own), so every ``ours`` variant's spans go to the
    pipeline of the instance built last: flushing the variant's own (retired) pipeline
    would leave its spans to be exported, and counted, in another variant's round."""
    from mestres_observability import tracing

    target = tracing._GLOBAL.delegate.target
    if target is not None:
        target.bsp.force_flush()


def measure_cpu(variants: dict[str, Callable[[], Any] | None],
                runner: Callable[[Any], Callable[[int], None]]
                ) -> dict[str, tuple[float, float] | None]:
    """Per variant: median CPU time per request (us, all threads, export included) and its
    median overhead over the bare app in the same round.

    Each round serves ``CPU_PER_ROUND`` requests, then flushes the variant's span
    pipeline, so the batch's encoding and its HTTP request fall in the round.
    """
    from mestres_observability._current import swap

    runs: dict[str, tuple[Callable[[int], None], Any, Callable[[], Any]]] = {}
    out: dict[str, tuple[float, float] | None] = {}
    for label in CPU_VARIANTS:
        out[label] = None
        factory = variants.get(label)
        if factory is None:
            continue
        try:
            built = factory()
        except ImportError:
            continue
        app, obs = built if isinstance(built, tuple) else (built, None)
        flush: Callable[[], Any] = lambda: None  # noqa: E731
        if obs is not None:
            flush = _flush_live
        elif label != "bare":
            flush = trace.get_tracer_provider().force_flush  # type: ignore[attr-defined]
        runs[label] = (runner(app), obs, flush)
    times: dict[str, list[float]] = {label: [] for label in runs}
    for round_no in range(CPU_ROUNDS + 1):
        for label, (run, obs, flush) in runs.items():
            if obs is not None:
                swap(obs)
            gc.collect()
            n = CPU_PER_ROUND if round_no else 100
            with _to_sink():
                t0 = time.process_time()
                run(n)
                flush()
                elapsed = time.process_time() - t0
            if round_no:
                times[label].append(elapsed / n * 1e6)
    bare = times["bare"]
    for label, values in times.items():
        overhead = statistics.median(v - b for v, b in zip(values, bare, strict=True))
        out[label] = (statistics.median(values), overhead)
    return out


def report_cpu(name: str, figures: dict[str, tuple[float, float] | None]) -> None:
    print(f"\n{name}: CPU us per request, all threads, OTLP/HTTP export included "
          f"(median; overhead over bare, median of rounds)")
    over: dict[str, float] = {}
    for label, value in figures.items():
        if value is None:
            print(f"  {label:<36} n/a (peer not installed)")
            continue
        print(f"  {label:<36} {value[0]:8.1f}   (+{value[1]:6.1f})")
        over[label] = value[1]
    if over.get("peer metrics+otel+log"):
        print(f"  CPU ratio ours full / peers metrics+otel+log: "
              f"{_ratio(over, 'ours full', 'peer metrics+otel+log')}"
              f"   ours full / primitives by hand: {_ratio(over, 'ours full', 'primitives by hand')}"
              f"   SDK spans / peers: "
              f"{_ratio(over, 'ours full, SDK spans', 'peer metrics+otel+log')}")


def markdown_cpu(results: dict[str, dict[str, tuple[float, float] | None]]) -> str:
    """The CPU measure as a Markdown table (``--markdown``)."""
    rows, _ = table("CPU per request", CPU_VARIANTS, results, (
        ("**ours full / peers combined**", "ours full", "peer metrics+otel+log"),
        ("ours full / primitives by hand", "ours full", "primitives by hand"),
        ("ours full with SDK spans / peers combined", "ours full, SDK spans",
         "peer metrics+otel+log"),
    ))
    return "\n".join(rows)


_FRAMEWORKS = (
    ("Flask", "flask_variants", "wsgi_runner"),
    ("FastAPI", "fastapi_variants", "asgi_runner"),
    ("Django (WSGI)", "django_variants", "wsgi_runner"),
)


def _cpu_main(only: set[str], as_markdown: bool) -> None:
    """The CPU measure (``--cpu``), in a process of its own: the peers' global provider
    exports over OTLP/HTTP there, to a receiver in another process."""
    import subprocess

    receiver = subprocess.Popen([sys.executable, "-c", _RECEIVER], stdout=subprocess.PIPE,
                                text=True)
    try:
        assert receiver.stdout is not None
        endpoint = f"http://127.0.0.1:{receiver.stdout.readline().strip()}"
        _setup_globals(endpoint)
        results: dict[str, dict[str, tuple[float, float] | None]] = {}
        t0 = time.perf_counter()
        for name, variants, runner in _FRAMEWORKS:
            if only and name.split()[0].lower() not in only:
                continue
            try:
                figures = measure_cpu(globals()[variants](), globals()[runner])
            except ImportError as exc:
                print(f"\n{name}: skipped ({exc})")
                continue
            report_cpu(name, figures)
            results[name] = figures
        import urllib.request

        with urllib.request.urlopen(endpoint) as answer:
            spans, bad = answer.read().decode().split()
        print(f"\n({CPU_ROUNDS} rounds x {CPU_PER_ROUND} requests; "
              f"{time.perf_counter() - t0:.0f} s; the receiver decoded {spans} spans, "
              f"{bad} request(s) it could not decode)")
        if as_markdown and results:
            print()
            print(markdown_cpu(results))
    finally:
        receiver.kill()
        receiver.wait()


# ---------------------------------------------------------------------- profile
PROFILE_VARIANTS = ("bare", "ours metrics", "ours full", "ours full, SDK spans",
                    "ours full, library logging", "peer metrics+otel+log", "primitives by hand")
#: where a function's code lives -> the group it is counted in
_GROUPS = (("mestres_observability", "mestres_observability"),
           ("opentelemetry", "OpenTelemetry API/SDK"), ("structlog", "structlog"),
           ("prometheus", "prometheus_client + exporters"), ("json", "JSON encoding"),
           ("orjson", "JSON encoding"),
           ("flask", "framework"), ("werkzeug", "framework"), ("starlette", "framework"),
           ("fastapi", "framework"), ("django", "framework"), ("anyio", "framework"),
           ("asyncio", "framework"), ("pydantic", "framework"))


def _group(filename: str) -> str:
    for needle, group in _GROUPS:
        if needle in filename:
            return group
    return "standard library"


#: stages of the library's pass: the functions whose cumulative time is each stage's
#: (``begin_request``: what ``start_request`` and the adapters call)
_STAGES = (
    ("SERVER span start (headers, extraction, span)", ("_start_span",)),
    ("SERVER span end (status, attributes, queue)", ("_end_span",)),
    ("access-log line (fields, structlog, JSON)", ("_access_log",)),
    ("request pass without span and log line", ("begin_request", "finish", "activate",
                                                "deactivate", "track_in_progress")),
)


def _by_library(stats: Any, n: int) -> dict[str, float]:
    """Calls per request by library; a C built-in's calls count for the library calling it."""
    out: dict[str, float] = {}
    for (filename, _line, _fn), (_cc, calls, _tt, _ct, callers) in stats.stats.items():
        if filename != "~":
            group = _group(filename)
            out[group] = out.get(group, 0.0) + calls / n
            continue
        for (caller_file, _l, _f), caller_entry in callers.items():
            group = _group(caller_file)
            out[group] = out.get(group, 0.0) + caller_entry[1] / n
    return out


def _stages(stats: Any) -> dict[str, float]:
    """Cumulative profiled seconds of each of :data:`_STAGES` (the library's functions)."""
    cum: dict[str, float] = {}
    for (filename, _line, fn), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        if "mestres_observability" in filename and filename.endswith("http.py"):
            cum[fn] = cum.get(fn, 0.0) + ct
    span_log = sum(cum.get(f, 0.0) for f in ("_start_span", "_end_span", "_access_log"))
    out = {label: sum(cum.get(f, 0.0) for f in fns) for label, fns in _STAGES[:3]}
    out[_STAGES[3][0]] = sum(cum.get(f, 0.0) for f in _STAGES[3][1]) - span_log
    return out


def _profile_main(only: set[str]) -> None:
    """``--profile``: cProfile call counts per request by variant, the full pass's calls
    over the bare app by library, and its profiled time by stage (the counts are exact;
    cProfile's times inflate Python calls, so read the shares, not the microseconds)."""
    import cProfile
    import pstats

    from mestres_observability._current import swap

    _setup_globals()
    n = 5000
    for name, variants_name, runner_name in _FRAMEWORKS:
        if only and name.split()[0].lower() not in only:
            continue
        variants = globals()[variants_name]()
        runner = globals()[runner_name]
        print(f"\n{name}: function calls per request (cProfile, C built-ins included)")
        libraries: dict[str, dict[str, float]] = {}
        totals: dict[str, float] = {}
        stages: dict[str, dict[str, float]] = {}
        for label in PROFILE_VARIANTS:
            factory = variants.get(label)
            if factory is None:
                continue
            built = factory()
            app, obs = built if isinstance(built, tuple) else (built, None)
            if obs is not None:
                swap(obs)
            run = runner(app)
            with _to_sink():
                run(1000)
                profiler = cProfile.Profile()
                profiler.enable()
                run(n)
                profiler.disable()
            stats = pstats.Stats(profiler)
            libraries[label] = _by_library(stats, n)
            totals[label] = stats.total_tt  # type: ignore[attr-defined]
            stages[label] = _stages(stats)
            print(f"  {label:<36} {stats.total_calls / n:7.0f}"  # type: ignore[attr-defined]
                  f"  (+{(stats.total_calls / n) - sum(libraries['bare'].values()):4.0f} "  # type: ignore[attr-defined]
                  f"over bare)")
        bare = libraries["bare"]
        for label in ("ours metrics", "ours full", "ours full, SDK spans",
                      "ours full, library logging"):
            if label not in libraries:
                continue
            print(f"  {label}: calls per request over the bare app, by library")
            over = {g: c - bare.get(g, 0.0) for g, c in libraries[label].items()}
            for group, calls in sorted(over.items(), key=lambda kv: -kv[1]):
                if abs(calls) >= 0.5:
                    print(f"    {group:<34} {calls:+6.0f}")
            overhead = totals[label] - totals["bare"]
            if label == "ours metrics":
                continue
            print(f"  {label}: share of the profiled overhead over the bare app, by stage")
            for stage, seconds in stages[label].items():
                print(f"    {stage:<48} {seconds / overhead:4.0%}")
            rest = 1 - sum(stages[label].values()) / overhead
            print(f"    {'the adapter itself, and the rest':<48} {rest:4.0%}")


def main() -> None:
    global _CLOCK
    args = [a.lower() for a in sys.argv[1:]]
    as_markdown = "--markdown" in args
    if "--thread-time" in args:
        _CLOCK = time.thread_time
    only = {a for a in args if not a.startswith("--")}
    if "--cpu" in args:
        _cpu_main(only, as_markdown)
        return
    if "--profile" in args:
        _profile_main(only)
        return
    _setup_globals()
    t0 = time.perf_counter()
    results: dict[str, dict[str, tuple[float, float] | None]] = {}
    for name, variants, runner in _FRAMEWORKS:
        if only and name.split()[0].lower() not in only:
            continue
        try:
            figures = measure(name, globals()[variants](), globals()[runner])
        except ImportError as exc:
            print(f"\n{name}: skipped ({exc})")
            continue
        report(name, figures)
        results[name] = figures
    clock = "thread CPU time" if _CLOCK is time.thread_time else "wall clock"
    print(f"\n({ROUNDS} rounds x {PER_ROUND} requests, {clock}; "
          f"{time.perf_counter() - t0:.0f} s)")
    if as_markdown and results:
        print()
        print(markdown(results))
    if "--no-cpu" not in args:
        # a process of its own: the peers' global provider exports over OTLP there
        import subprocess

        sys.stdout.flush()
        subprocess.run([sys.executable, os.path.abspath(__file__), "--cpu", *sys.argv[1:]],
                       check=False)


if __name__ == "__main__":
    main()
