"""Celery workers: task metrics, one CONSUMER span per task, trace context in the task headers.

One call, in the module that builds the Celery app (the worker and the web
processes that enqueue tasks both import it)::

    from celery import Celery
    from mestres_observability import init_observability
    from mestres_observability.celery import instrument_celery

    app = Celery("shop", broker="redis://localhost:6379/0")
    init_observability(service_name="shop-worker")
    instrument_celery(app)      # automatic when celery was imported before init_observability

What it does, through Celery's public signals (process-wide: every Celery app of
the process is covered; handlers look the current instance up when they run):

* **publishing** (``before_task_publish``, in the web process or a task that
  enqueues another): the current trace context (W3C ``traceparent``,
  ``tracestate``, ``baggage``), the request id and the bound user id
  (:func:`~mestres_observability.set_user_id`) and the publishing time travel in
  the task's message headers;
* **running** (``task_prerun``/``task_postrun``, in the worker): one CONSUMER
  span per run, child of the span that enqueued it (in an eager run: of the
  current span), current while the task runs, so ``@track_order`` and friends,
  ``span()`` and every log line inside the task carry its trace id; the request
  id, user id, ``task_id`` and ``task_name`` are bound in the log context for
  the run; ``celery_tasks_in_progress{task}``, ``celery_task_duration_seconds{task}``,
  ``celery_task_queue_wait_seconds{task}`` (from publishing, or from the ETA,
  to the start of the run) and ``celery_tasks_total{task,state}`` with
  ``state`` one of ``succeeded``, ``failed``, ``retried``, ``rejected``,
  ``revoked`` (``ignored`` for ``Ignore``);
* **the worker** (``worker_init``, ``setup_logging``, ``worker_process_shutdown``):
  the separate ``/metrics`` port (``metrics_port``) is served by the main
  process, Celery leaves the library's JSON log output in place (when the
  library configured logging), and each pool process flushes its spans on the
  way out. Under the prefork pool, tasks run in child processes: set
  ``PROMETHEUS_MULTIPROC_DIR`` before the worker starts (see
  ``docs/workers.md``) and the main process's ``/metrics`` shows every
  child's totals; a warning says so when it is missing.

:func:`celery_check` is a health check that pings the workers with a timeout.
Task names pass the cardinality guard. Nothing here ever raises into Celery:
faults are counted under ``component="celery"``.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry import trace as otel_trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

from ._compat import restore_structlog_context
from ._current import get_observability
from .errors import MissingExtraError
from .http import bound_user_id
from .tracing import clean_attributes, record_exception

try:
    from celery import signals  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingExtraError("mestres_observability.celery", "celery", "celery") from exc

__all__ = ["REQUEST_ID_HEADER", "SENT_AT_HEADER", "USER_ID_HEADER", "celery_check",
           "instrument_celery", "instrumented"]

_log = logging.getLogger("mestres_observability")

#: Task header carrying the publishing request's id.
REQUEST_ID_HEADER = "mestres_request_id"
#: Task header carrying the user id bound when the task was published.
USER_ID_HEADER = "mestres_user_id"
#: Task header carrying the publishing time (seconds since the Unix epoch).
SENT_AT_HEADER = "mestres_sent_at"
#: Attribute of a run's ``task.request`` holding its state between prerun and postrun.
_RUN_ATTR = "mestres_observability_run"

#: Celery's final states -> the ``state`` label.
STATES: dict[str | None, str] = {
    "SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried", "REJECTED": "rejected",
    "IGNORED": "ignored", "REVOKED": "revoked",
    None: "failed",  # an eager run whose exception propagated (apply(throw=True))
}

_lock = threading.Lock()
_connected = False
_warned_prefork = False


def _header(request: Any, key: str) -> Any:
    """A task header: an attribute of the worker's request (message headers), or an entry of
    its ``headers`` (an eager ``apply(headers=...)``)."""
    value = getattr(request, key, None)
    if value is None:
        nested = getattr(request, "headers", None)
        if isinstance(nested, dict):
            value = nested.get(key)
    return value


class _Getter(Getter[Any]):
    """OpenTelemetry getter reading propagation fields off a task request (``task.request``)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = _header(carrier, key)
        if isinstance(value, str):
            return [value]
        return None

    def keys(self, carrier: Any) -> list[str]:
        return [k for k in vars(carrier) if isinstance(k, str)]


_GETTER = _Getter()


class _Run:
    """What ``task_prerun`` started and ``task_postrun`` ends, for one run of a task."""

    __slots__ = ("ctx_before", "faults", "in_progress", "metrics", "name", "span", "start",
                 "token")

    def __init__(self, metrics: Any, faults: Any, name: str) -> None:
        self.metrics = metrics
        self.faults = faults
        self.name = name
        self.start = time.perf_counter()
        self.span: Any = None
        self.token: Any = None
        self.ctx_before: contextvars.Context | None = None
        self.in_progress: Any = None


# ---------------------------------------------------------------------- publishing
def _before_publish(sender: Any = None, headers: dict[str, Any] | None = None,
                    **_: Any) -> None:
    """``before_task_publish``: trace context, request id, user id and time into the headers."""
    if headers is None:
        return
    obs = get_observability()
    if not obs.config.enabled:
        return
    try:
        propagate.inject(headers)
        bound = structlog.contextvars.get_contextvars()
        request_id = bound.get("request_id")
        if request_id is not None:
            headers[REQUEST_ID_HEADER] = str(request_id)
        user_id = bound_user_id()
        if user_id is not None:
            headers[USER_ID_HEADER] = user_id if isinstance(user_id, (str, int)) else str(user_id)
        headers[SENT_AT_HEADER] = time.time()
    except Exception as exc:
        obs.faults.report("celery", "publish", "adding trace context to a task failed", exc)


# ---------------------------------------------------------------------- running
def _eta_timestamp(eta: Any) -> float | None:
    if not eta:
        return None
    try:
        if isinstance(eta, str):
            eta = _dt.datetime.fromisoformat(eta)
        if isinstance(eta, _dt.datetime):
            if eta.tzinfo is None:
                eta = eta.replace(tzinfo=_dt.timezone.utc)
            return float(eta.timestamp())
    except (TypeError, ValueError):
        return None
    return None


def _prerun(sender: Any = None, task_id: Any = None, task: Any = None, **_: Any) -> None:
    """``task_prerun``: span, log context, in-progress gauge and queue wait of one run."""
    if task is None:
        return
    obs = get_observability()
    cfg = obs.config
    if not cfg.enabled:
        return
    try:
        request = task.request
        name = str(getattr(task, "name", None) or "unknown")
        run = _Run(obs.metrics, obs.faults, name)
        setattr(request, _RUN_ATTR, run)
        fields: dict[str, Any] = {"task_id": str(task_id), "task_name": name}
        request_id = _header(request, REQUEST_ID_HEADER)
        if request_id is not None:
            fields["request_id"] = request_id
        user_id = _header(request, USER_ID_HEADER)
        if user_id is not None:
            fields["user_id"] = user_id
        run.ctx_before = contextvars.copy_context()
        structlog.contextvars.bind_contextvars(**fields)
        tracing = obs.tracing
        if tracing.enabled:
            parent = (propagate.extract(request, getter=_GETTER)
                      if _header(request, "traceparent") else None)
            delivery = getattr(request, "delivery_info", None) or {}
            attributes = clean_attributes({
                "messaging.system": "celery",
                "messaging.operation.type": "process",
                "messaging.operation.name": "run",
                "messaging.message.id": str(task_id),
                "messaging.destination.name": delivery.get("routing_key") or "",
                "celery.task_name": name,
                "celery.retries": getattr(request, "retries", 0) or 0,
            })
            span = tracing.own_tracer.start_span(name, context=parent, kind=SpanKind.CONSUMER,
                                                 attributes=attributes)
            run.span = span
            run.token = otel_context.attach(otel_trace.set_span_in_context(span, parent))
        if cfg.celery_metrics:
            metrics = obs.metrics
            run.in_progress = metrics.celery_tasks_in_progress.guard.child((name,))
            if run.in_progress is not None:
                run.in_progress.inc()
            sent = _header(request, SENT_AT_HEADER)
            if isinstance(sent, (int, float)) and not isinstance(sent, bool):
                since = max(float(sent), _eta_timestamp(getattr(request, "eta", None)) or 0.0)
                metrics.celery_task_queue_wait_seconds.observe(
                    (name,), max(0.0, time.time() - since))
    except Exception as exc:
        obs.faults.report("celery", "prerun", "starting a task's instrumentation failed", exc)


def _failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    """``task_failure``: the exception on the run's span."""
    run = getattr(getattr(sender, "request", None), _RUN_ATTR, None)
    if run is None or run.span is None or exception is None:
        return
    try:
        record_exception(run.span, exception)
        run.span.set_attribute("error.type", type(exception).__qualname__)
        run.span.set_status(Status(StatusCode.ERROR, type(exception).__name__))
    except Exception as exc:
        run.faults.report("celery", "failure", "recording a task failure failed", exc)


def _postrun(sender: Any = None, task_id: Any = None, task: Any = None, state: Any = None,
             **_: Any) -> None:
    """``task_postrun``: count, time and end what :func:`_prerun` started."""
    request = getattr(task, "request", None)
    run: _Run | None = getattr(request, _RUN_ATTR, None)
    if run is None:
        return
    try:
        setattr(request, _RUN_ATTR, None)
        label = STATES.get(state) or str(state).lower()
        duration = time.perf_counter() - run.start
        metrics = run.metrics
        if metrics.config.celery_metrics:
            exemplar = metrics.current_exemplar()  # the task's span, still current
            metrics.celery_task_duration_seconds.observe((run.name,), duration, exemplar)
            metrics.celery_tasks_total.inc((run.name, label), 1.0, exemplar)
        if run.in_progress is not None:
            run.in_progress.dec()
        span = run.span
        if span is not None:
            span.set_attribute("celery.state", label)
            if label == "failed":
                span.set_status(Status(StatusCode.ERROR, "task failed"))
            span.end()
    except Exception as exc:
        run.faults.report("celery", "postrun", "ending a task's instrumentation failed", exc)
    finally:
        if run.token is not None:
            with contextlib.suppress(Exception):  # detached in another context
                otel_context.detach(run.token)
        if run.ctx_before is not None:
            restore_structlog_context(run.ctx_before)


def _count_unrun(task_name: Any, state: str) -> None:
    obs = get_observability()
    if not (obs.config.enabled and obs.config.celery_metrics):
        return
    try:
        obs.metrics.celery_tasks_total.inc((str(task_name or "unknown"), state), 1.0, None)
    except Exception as exc:
        obs.faults.report("celery", state, f"counting a {state} task failed", exc)


def _rejected(sender: Any = None, message: Any = None, **_: Any) -> None:
    """``task_rejected``: a message the worker refused (an unknown task, a bad message)."""
    headers = getattr(message, "headers", None) or {}
    _count_unrun(headers.get("task") if isinstance(headers, dict) else None, "rejected")


def _revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    """``task_revoked``: a task revoked before it ran, or terminated."""
    name = getattr(sender, "name", None) or getattr(request, "task", None)
    _count_unrun(name, "revoked")


# ---------------------------------------------------------------------- the worker
def _is_prefork(worker: Any) -> bool:
    pool = getattr(worker, "pool_cls", None)
    text = f"{getattr(pool, '__module__', '')}.{getattr(pool, '__name__', pool)}".lower()
    return "prefork" in text or "processes" in text


def _worker_init(sender: Any = None, **_: Any) -> None:
    """``worker_init`` (main process): the metrics port; a warning for prefork without files."""
    global _warned_prefork
    obs = get_observability()
    try:
        from . import multiprocess

        if (_is_prefork(sender) and not multiprocess.is_multiprocess()
                and obs.config.celery_metrics and not _warned_prefork):
            _warned_prefork = True
            _log.warning(
                "mestres_observability: this Celery worker runs tasks in prefork child processes "
                "but %s is not set, so each child keeps its task metrics to itself and /metrics "
                "of the main process shows none of them; set %s to an empty private directory "
                "before the worker starts (see docs/workers.md)",
                multiprocess.ENV_VAR, multiprocess.ENV_VAR)
        if obs.config.metrics_port is not None:
            from ._metrics_server import start_metrics_server

            address = start_metrics_server(obs)
            if address is not None:
                _log.info("mestres_observability: /metrics of the Celery worker on %s:%s",
                          *address)
    except Exception as exc:
        obs.faults.report("celery", "worker_init", "setting up the worker failed", exc)


def _keep_our_logging(**_: Any) -> None:
    """``setup_logging``: a receiver means Celery leaves the root logger (the JSON output) alone."""
    return


def _process_shutdown(**_: Any) -> None:
    """``worker_process_shutdown`` / ``worker_shutdown``: flush the process's spans."""
    try:
        get_observability().shutdown()
    except Exception:  # never break Celery's shutdown
        _log.debug("mestres_observability: shutting down in the worker failed", exc_info=True)


_HANDLERS: tuple[tuple[Any, Callable[..., Any]], ...] = (
    (signals.before_task_publish, _before_publish),
    (signals.task_prerun, _prerun),
    (signals.task_failure, _failure),
    (signals.task_postrun, _postrun),
    (signals.task_rejected, _rejected),
    (signals.task_revoked, _revoked),
    (signals.worker_init, _worker_init),
    (signals.worker_process_shutdown, _process_shutdown),
    (signals.worker_shutdown, _process_shutdown),
)


def instrument_celery(app: Any = None, obs: Any = None) -> None:
    """Instrument Celery in this process (once; later calls change nothing).

    Args:
        app: the Celery app (optional: Celery's signals are process-wide, so
            every app of the process is covered; given, its type is checked).
        obs: the instance whose ``configure_logging`` decides whether Celery
            keeps its own log set-up (default: the current one). Metrics and
            spans always go to the instance current when a task runs.

    Raises:
        TypeError: ``app`` is not a Celery app.
    """
    global _connected
    if app is not None and not callable(getattr(app, "task", None)):
        raise TypeError(f"instrument_celery needs a Celery app, got {type(app).__name__}")
    instance = obs if obs is not None else get_observability()
    with _lock:
        if not _connected:
            for signal, handler in _HANDLERS:
                signal.connect(handler, weak=False, dispatch_uid=f"mestres_observability.{handler.__name__}")
            _connected = True
        if instance.config.configure_logging and not instance.is_default:
            signals.setup_logging.connect(_keep_our_logging, weak=False,
                                          dispatch_uid="mestres_observability.setup_logging")


def instrumented() -> bool:
    """Whether :func:`instrument_celery` ran in this process."""
    return _connected


def auto_instrument(obs: Any) -> None:
    """What ``init_observability`` calls when ``celery`` is imported (``celery_auto_instrument``)."""
    instrument_celery(obs=obs)


def _uninstrument() -> None:
    """Disconnect every handler (tests)."""
    global _connected
    with _lock:
        for signal, handler in _HANDLERS:
            signal.disconnect(handler, dispatch_uid=f"mestres_observability.{handler.__name__}")
        signals.setup_logging.disconnect(_keep_our_logging,
                                         dispatch_uid="mestres_observability.setup_logging")
        _connected = False


# ---------------------------------------------------------------------- health
def celery_check(app: Any, *, timeout: float = 0.5,
                 destination: Iterable[str] | None = None) -> Callable[[], dict[str, Any]]:
    """A health check that pings the Celery workers and passes when at least one answers.

    Register it where the workers matter, usually not critical for a web
    process's readiness::

        obs.health.add("celery", celery_check(app), critical=False)

    The ping returns as soon as one worker (or each of ``destination``) has
    answered, so a healthy check takes one broker round trip; with no answer
    it gives up after ``timeout``.

    Args:
        app: the Celery app (its broker carries the ping).
        timeout: seconds to wait for an answer (keep it below ``health_check_timeout``).
        destination: worker node names that must all answer (default: any one worker).

    Returns:
        A sync check returning ``{"workers": <answers>}``; unhealthy when none answered.
    """
    if not callable(getattr(getattr(app, "control", None), "ping", None)):
        raise TypeError(f"celery_check needs a Celery app, got {type(app).__name__}")
    nodes = list(destination) if destination is not None else None
    wait = float(timeout)

    def check_celery() -> dict[str, Any]:
        replies = app.control.ping(timeout=wait, destination=nodes,
                                   limit=len(nodes) if nodes else 1) or []
        count = len(replies)
        return {"status": "healthy" if count else "unhealthy", "workers": count}

    return check_celery
