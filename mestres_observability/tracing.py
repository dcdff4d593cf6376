"""OpenTelemetry traces: provider set-up, bounded export, spans API, exemplars.

:func:`setup_tracing` runs inside :func:`~mestres_observability.init_observability`.

* **One provider per process.** OpenTelemetry allows one global
  ``TracerProvider``. The first init installs a library-owned SDK provider
  (``shutdown_on_exit=False``) with one *delegating* span processor; every later
  init only repoints that processor at its own exporter pipeline (the SDK
  cannot remove a processor). The resource and the sampler are therefore fixed
  by the first init in a process. If you installed an SDK provider yourself,
  the delegating processor is added to yours instead
  (``respect_global_tracer_provider``).
* **Bounded.** Spans go through a ``BatchSpanProcessor`` with a bounded queue
  (``span_queue_size``). Each export has a *total* deadline of ``otlp_timeout``
  (2 s by default) plus :data:`EXPORT_GRACE`: the exporter runs on a worker
  thread, and one still running then (a collector that hangs, or trickles its
  answer a byte at a time, which a per-read timeout never ends) is abandoned,
  at most one at a time. :meth:`TracingHandle.shutdown` runs on a daemon thread
  joined for at most its bound, and the library's own ``atexit`` hook uses the
  same bound, so a hung collector can never hang the process on exit.
* **Lean spans.** The spans the library starts itself are lean spans
  (:mod:`mestres_observability._leanspan`) when the provider is the library's, no
  other processor is added to it and the sampler is a built-in one
  (``lean_spans`` forces the SDK path): the same spans on the wire without the
  SDK's per-span work, in the same pipeline, encoded for OTLP/HTTP by the
  library (:func:`_leanspan.encode_spans`) and sent by the exporter's own client.
* **Tail sampling** (``tail_sampling``, off by default): in front of the queue, a
  :class:`~mestres_observability._tailsample.TailSampler` holds each trace's spans until
  its local root ends, then passes the whole trace on (errored, slow, or by the ratio)
  or drops it; bounded by ``tail_sampling_max_spans``, counted in
  ``mestres_observability_tail_sampling_*``. What it holds at shutdown counts as
  ``shutdown``.
* **Counted.** Every span ended is, exactly once, exported or dropped, by
  reason (``SPAN_DROP_REASONS``: ``queue_full``, ``export_failed``,
  ``export_timeout``, ``shutdown``), counted in
  ``mestres_observability_spans_dropped_total{reason}`` when it happens (at
  ``on_end`` for a full queue), spans still queued when the shutdown bound
  expires included (see :class:`_Pipeline`).

The spans API (:func:`span`, :func:`traced`) looks up the current instance at
call time, so decoration at import time is safe.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import importlib
import inspect
import json
import logging
import math
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import NonRecordingSpan, Span, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState

from . import _compat, _leanspan, _tailsample
from ._current import get_observability
from ._fault import FaultReporter
from ._forksafe import call_after_fork, run_after_fork
from ._wrapping import around
from .catalogue import SPAN_DROP_REASONS, TAIL_DECISIONS, TAIL_SPAN_OUTCOMES
from .config import ObservabilityConfig
from .errors import ConfigurationError, MissingExtraError
from .metrics import LibraryMetrics

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import Sampler

__all__ = ["TracingHandle", "attach_processor", "extract_context", "record_exception",
           "setup_tracing", "span", "traced"]

F = TypeVar("F", bound=Callable[..., Any])
_log = logging.getLogger("mestres_observability.tracing")

TRACER_NAME = "mestres_observability"
#: Longest string attribute value kept on a span (longer values are cut).
MAX_ATTRIBUTE_LENGTH = 1024
_MAX_ATTRIBUTES = 64
#: ``service.instance.id``: one per process, stable across re-inits.
INSTANCE_ID = str(uuid.uuid4())

_NOOP_TRACER: trace.Tracer = trace.NoOpTracer()
#: Seconds an export may run beyond ``otlp_timeout`` before it is abandoned (counted
#: ``export_timeout``): the exporter's own timeout, when it works, ends it first.
EXPORT_GRACE = 0.25


# ---------------------------------------------------------------------- attributes
def _attr_value(value: Any) -> Any:
    """An OpenTelemetry-compatible attribute value, or ``None`` to skip it."""
    t = type(value)
    if t is str:
        return value if len(value) <= MAX_ATTRIBUTE_LENGTH else value[:MAX_ATTRIBUTE_LENGTH]
    if t is bool or t is float:
        return value
    if t is int:
        return value if -(2**63) <= value < 2**63 else str(value)[:MAX_ATTRIBUTE_LENGTH]
    if value is None:
        return None
    if isinstance(value, Decimal):
        f = float(value)
        return f if math.isfinite(f) else str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _attr_value(int(value))
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        items = [_attr_value(v) for v in value[:128]]
        kinds = {type(i) for i in items}
        if len(kinds) == 1 and None not in items:
            return tuple(items)
        return tuple(str(i) for i in items if i is not None)
    text = str(value)
    return text[:MAX_ATTRIBUTE_LENGTH]


def clean_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Sanitise span attributes: ``Decimal`` as float, strings capped, others as text.

    Never raises; a value whose ``str`` fails is skipped.
    """
    out: dict[str, Any] = {}
    for i, (key, value) in enumerate(attributes.items()):
        if i >= _MAX_ATTRIBUTES:
            break
        try:
            v = _attr_value(value)
        except Exception:
            continue
        if v is not None:
            out[str(key)[:256]] = v
    return out


# ---------------------------------------------------------------------- scrubbing
class _Scrub:
    """``scrub_span_attributes``: redacts an ended span (lean spans in place, SDK spans as a
    redacted ``ReadableSpan`` copy, made only when something changed). Never raises: a
    failure is counted and the span goes on as it is."""

    __slots__ = ("faults", "scrubber")

    def __init__(self, config: ObservabilityConfig, faults: FaultReporter) -> None:
        from ._redact import QueryRedactor, Redactor, SpanScrubber
        from .config import DEFAULT_REDACT_QUERY_PARAMS

        values = Redactor(config.redact_keys, card_numbers=config.redact_card_numbers,
                          patterns=config.redact_patterns)
        self.scrubber = SpanScrubber(values, QueryRedactor(
            (*DEFAULT_REDACT_QUERY_PARAMS, *config.redact_keys), values))
        self.faults = faults

    def __call__(self, span: Any) -> Any:
        try:
            if type(span) is _leanspan.LeanSpan:
                span.scrub(self.scrubber)
                return span
            return scrub_readable(self.scrubber, span)
        except Exception as exc:
            self.faults.report("tracing", "scrub", "redacting span attributes failed", exc)
            return span


def scrub_readable(scrubber: Any, span: ReadableSpan) -> ReadableSpan:
    """``span`` with attributes and event attributes redacted by ``scrubber``: a new
    ``ReadableSpan`` (dropped counts kept), or ``span`` itself when nothing changed (an
    ended SDK span's attributes are immutable)."""
    attrs = scrubber.attributes(span.attributes)
    events = _leanspan.scrub_events(scrubber, span.events, span.dropped_events)
    if attrs is None and events is None:
        return span
    from opentelemetry.attributes import BoundedAttributes
    from opentelemetry.sdk.trace import ReadableSpan

    bounded = BoundedAttributes(None, attrs if attrs is not None else dict(span.attributes or {}),
                                immutable=True)
    bounded.dropped = span.dropped_attributes
    return ReadableSpan(
        name=span.name, context=span.context, parent=span.parent, resource=span.resource,
        attributes=bounded,
        events=events if events is not None else _leanspan.bounded_list(span.events,
                                                                         span.dropped_events),
        links=_leanspan.bounded_list(span.links, span.dropped_links), kind=span.kind,
        status=span.status, start_time=span.start_time, end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


# ---------------------------------------------------------------------- processors
def _after_fork_in_child() -> None:  # pragma: no cover - runs in forked children
    """A forked worker is a service instance of its own, with its own span counts."""
    global INSTANCE_ID
    INSTANCE_ID = str(uuid.uuid4())
    _GLOBAL.lock = threading.Lock()


def _resource_after_fork() -> None:  # pragma: no cover - runs in forked children
    """Give the provider built before the fork this worker's ``service.instance.id``."""
    provider = _GLOBAL.provider
    if _GLOBAL.owned and provider is not None:
        _compat.update_provider_resource(provider, {"service.instance.id": INSTANCE_ID})


run_after_fork(_after_fork_in_child)


class _Batch:
    """Spans handed to the exporter in one call; settled exactly once (exported or dropped)."""

    __slots__ = ("settled", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.settled = False


class _Job:
    """One export running on its worker thread (see :meth:`_Pipeline.export`)."""

    __slots__ = ("done", "ok", "spans")

    def __init__(self, spans: Sequence[Any]) -> None:
        self.spans = spans  # ReadableSpan and LeanSpan
        self.done = False
        self.ok = False


class _Pipeline:
    """One instance's exporter behind a BatchSpanProcessor: a deadline per export and a
    ledger in which every span ends up exactly once, exported or dropped by reason.

    Each span the delegating processor ends here is, in exactly one way:

    * with tail sampling, not kept (its trace sampled out or evicted, counted by the
      :class:`~mestres_observability._tailsample.TailSampler`), or still held when the
      pipeline shuts down (``shutdown``); a kept trace goes on below, whole or, when the
      queue cannot take it all, refused as ``queue_full``;
    * refused by :meth:`on_end`: queue full (``queue_full``), pipeline shut down
      (``shutdown``) or the SDK processor raised (``export_failed``), counted at once;
    * accepted into the SDK's queue (:attr:`ended`), then handed to the exporter in a
      batch (:meth:`handed`) that is settled once: exported, ``export_failed``, or
      ``export_timeout`` when :meth:`export` abandons it at its deadline;
    * evicted by the SDK's deque (a race at a full queue): found by :meth:`reconcile`
      on the exporting thread (``queue_full``);
    * still queued, or in a batch not settled yet, when the shutdown ends or its bound
      expires: :meth:`finish` counts it as ``shutdown`` and closes the ledger (batches
      handed later are not exported).

    Every drop reaches ``mestres_observability_spans_dropped_total{reason}`` when it is
    counted, so ``/metrics`` is exact at any moment.
    """

    def __init__(self, exporter: SpanExporter, config: ObservabilityConfig,
                 metrics: LibraryMetrics, faults: FaultReporter) -> None:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.metrics = metrics
        self.faults = faults
        #: total deadline of one export, in seconds (see :data:`EXPORT_GRACE`)
        self.deadline = config.otlp_timeout + EXPORT_GRACE
        self.exporter = _CountingExporter(exporter, self)
        queue = config.span_queue_size
        self.bsp = BatchSpanProcessor(
            cast("SpanExporter", self.exporter), max_queue_size=queue, max_export_batch_size=min(512, queue),
            export_timeout_millis=config.otlp_timeout * 1000,
        )
        self._queue: Any = _compat.span_queue(self.bsp)  # the SDK's deque, resolved once
        #: queues a sampled span as ``bsp.on_end`` does, in one call (lean spans), or None
        self._emit: Callable[[Any], None] | None = (
            _compat.span_emitter(self.bsp) if self._queue is not None else None)
        self.queue_size = queue
        family = metrics.mestres_observability_spans_dropped_total.metric
        self._counters = {reason: family.labels(reason) for reason in SPAN_DROP_REASONS}
        self.closed = False  # no span accepted any more
        self.settled = False  # the ledger is closed: nothing exported or counted any more
        #: sends an encoded OTLP request (lean spans on the OTLP/HTTP exporter), else None
        self.fast_send: Callable[[bytes], bool] | None = None
        self._shutdown_thread: threading.Thread | None = None
        #: holds each trace's spans until its local root decides (``tail_sampling``), or None
        self.tail: _tailsample.TailSampler | None = None
        if config.tail_sampling:
            traces = metrics.mestres_observability_tail_sampling_traces_total.metric
            outcomes = metrics.mestres_observability_tail_sampling_spans_total.metric
            max_spans = config.tail_sampling_max_spans

            def overflow(n: int) -> None:
                faults.report("tracing", "tail_sampling_overflow",
                              f"tail sampling held more than {max_spans} spans: {n} span(s) of "
                              "the traces held longest dropped (tail_sampling_max_spans)")

            self.tail = _tailsample.TailSampler(
                config.tail_sampling_latency_threshold, config.tail_sampling_ratio, max_spans,
                {d: traces.labels(d) for d in TAIL_DECISIONS},
                {o: outcomes.labels(o) for o in TAIL_SPAN_OUTCOMES}, overflow)
        self._new_ledger()
        call_after_fork(self, "_new_ledger")  # a forked worker: its own span counts

    def _new_ledger(self) -> None:
        """Empty counts, fresh locks (at start, and in a forked child, whose SDK queue the
        SDK emptied)."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # an export ended, or the ledger closed
        self.ended = 0  # accepted into the SDK's queue
        self.handed_total = 0  # handed to the exporter
        self.queue_dropped = 0  # evicted by the SDK's deque (counted as queue_full)
        self.exported = 0
        self.dropped_by: dict[str, int] = dict.fromkeys(SPAN_DROP_REASONS, 0)
        self._in_flight: set[_Batch] = set()
        self._job: _Job | None = None  # the export running on its worker: at most one
        self._debt = 0  # see finish()
        self._full_reported = False

    @property
    def dropped(self) -> int:
        """Spans dropped so far, all reasons."""
        return sum(self.dropped_by.values())

    def drop(self, n: int, reason: str, kind: str = "", exc: BaseException | None = None,
             *, fault: bool = True) -> None:
        """Count ``n`` dropped spans under ``reason`` (ledger and metric) and report the fault
        (unless ``fault`` is false)."""
        if n <= 0:
            return
        with self._lock:
            self.dropped_by[reason] += n
        self._counters[reason].inc(n)
        if fault:
            self.faults.report("tracing", kind or reason, f"{n} span(s) dropped ({reason})", exc)

    def on_end(self, span: ReadableSpan) -> None:
        """An ended span (lean or SDK): through tail sampling when it is on, then queued."""
        tail = self.tail
        if tail is None or self.closed:
            self._enqueue(span)
            return
        try:
            kept = tail.on_end(span)
        except Exception as exc:  # pragma: no cover - defensive: never into the caller
            self.drop(1, "export_failed", "tail_sampling", exc)
            return
        if kept is None:
            return
        if len(kept) == 1:
            self._enqueue(kept[0])
            return
        q = self._queue
        if q is not None and len(q) + len(kept) > self.queue_size:
            # a kept trace goes whole or not at all: no incomplete trace on the wire
            with self._lock:
                self.dropped_by["queue_full"] += len(kept)
            self._counters["queue_full"].inc(len(kept))
            self.faults.report("tracing", "queue_full", "span queue full: spans dropped")
            return
        for sp in kept:
            self._enqueue(sp)

    def on_end_lean(self, span: Any) -> None:
        """An ended lean span (sampled, or it would not have recorded): :meth:`on_end`, with
        the usual case (no tail sampling, open, room in the queue) inline and the span
        appended to the SDK's queue in one call."""
        emit = self._emit
        q = self._queue
        if emit is None or self.tail is not None or self.closed or len(q) >= self.queue_size:
            self.on_end(span)
            return
        try:
            emit(span)
        except Exception as exc:
            self.drop(1, "export_failed", "processor_error", exc)
            return
        lock = self._lock  # the ledger, as in _enqueue (acquire/release: cheaper than with)
        lock.acquire()
        try:
            if not self.settled:
                self.ended += 1
                return
            if self._debt:  # see finish()
                self._debt -= 1
                return
        finally:
            lock.release()
        self.drop(1, "shutdown", "after_shutdown")  # queued after finish(): never exported

    def _enqueue(self, span: ReadableSpan) -> None:
        """Into the SDK's queue, or counted (queue full, shut down, processor error)."""
        if self.closed:
            self.drop(1, "shutdown", "after_shutdown")
            return
        q = self._queue
        if q is not None and len(q) >= self.queue_size:
            # full: drop the new span here, counted now (the SDK would drop the oldest and
            # log a warning per span, which costs the caller a LogRecord each time)
            with self._lock:
                self.dropped_by["queue_full"] += 1
            self._counters["queue_full"].inc()
            if not self._full_reported:  # once until the next export (not per span)
                self._full_reported = True
                self.faults.report("tracing", "queue_full", "span queue full: spans dropped")
            return
        try:
            self.bsp.on_end(span)
        except Exception as exc:
            self.drop(1, "export_failed", "processor_error", exc)
            return
        with self._lock:
            if not self.settled:
                self.ended += 1  # counted after queueing, so reconcile() never overshoots
                return
            if self._debt:  # handed before finish() and counted there (see finish)
                self._debt -= 1
                return
        self.drop(1, "shutdown", "after_shutdown")  # queued after finish(): never exported

    def handed(self, n: int) -> _Batch | None:
        """``n`` spans left the queue for the exporter: their batch, or ``None`` once the
        ledger is closed (:meth:`finish` counted them already)."""
        with self._lock:
            if self.settled:
                return None
            self.handed_total += n
            batch = _Batch(n)
            self._in_flight.add(batch)
            self._full_reported = False
        self.reconcile()
        return batch

    def reconcile(self) -> None:
        """Count spans the SDK's deque evicted: accepted - handed - still queued.

        Exact on the exporting thread (the only one taking spans off the queue), where
        :meth:`handed` calls it; elsewhere it may only count too few.
        """
        if self._queue is None:  # without it, queued spans would look lost
            return
        with self._lock:
            if self.settled:
                return
            missing = self.ended - self.handed_total - self.queued() - self.queue_dropped
            if missing <= 0:
                return
            self.queue_dropped += missing
        self.drop(missing, "queue_full")

    def settle(self, batch: _Batch, reason: str | None, exc: BaseException | None = None) -> None:
        """The outcome of ``batch``: exported (``reason`` None) or dropped; first call wins."""
        with self._lock:
            if batch.settled:
                return
            batch.settled = True
            self._in_flight.discard(batch)
            if reason is None:
                self.exported += batch.size
                return
        self.drop(batch.size, reason, exc=exc)

    def export(self, spans: Sequence[ReadableSpan]) -> bool:
        """Export ``spans`` within :attr:`deadline` seconds in all; True when exported.

        The exporter runs on a worker thread: one that trickles or hangs past the
        deadline is abandoned (its batch counted ``export_timeout``; a result it returns
        later is ignored). At most one export is in flight: a batch arriving while an
        abandoned one still runs waits for it within its own deadline, else is dropped
        as ``export_timeout`` too. Runs on the SDK's exporting thread.
        """
        batch = self.handed(len(spans))
        if batch is None:
            return False
        end = time.monotonic() + self.deadline
        changed = self._changed
        with changed:
            free = changed.wait_for(lambda: self._job is None or self.settled,
                                    end - time.monotonic())
            if not free or self.settled:
                busy = not free
                job = None
            else:
                job = self._job = _Job(spans)
        if job is None:
            if busy:
                self.settle(batch, "export_timeout")
            return False
        try:
            # the caller's context (the SDK suppresses instrumentation of the export there)
            worker = threading.Thread(target=contextvars.copy_context().run,
                                      args=(self._run, job), daemon=True,
                                      name="mestres-observability-span-export")
            worker.start()
        except Exception as exc:  # no thread left in the process
            with changed:
                self._job = None
            self.settle(batch, "export_failed", exc)
            return False
        with changed:
            changed.wait_for(lambda: job.done or self.settled, end - time.monotonic())
            done, ok = job.done, job.ok
        if not done:
            self.settle(batch, "export_timeout")
            return False
        self.settle(batch, None if ok else "export_failed")
        return ok

    def _run(self, job: _Job) -> None:
        """The worker thread of one export."""
        from opentelemetry.sdk.trace.export import SpanExportResult

        ok = False
        try:
            # lean spans on (a processor added since gets SDK spans the public way)
            send = self.fast_send if _GLOBAL.lean.on else None
            if send is not None:
                try:
                    body: bytes | None = _leanspan.encode_spans(job.spans)
                except Exception:  # what the SDK's encoder refuses too: it logs and fails
                    body = None
                if body is not None:
                    ok = send(body)
                    return
            spans = job.spans
            if any(type(s) is _leanspan.LeanSpan for s in spans):
                spans = [s.readable() if type(s) is _leanspan.LeanSpan else s for s in spans]
            ok = self.exporter.inner.export(spans) is SpanExportResult.SUCCESS
        except Exception as exc:
            self.faults.report("tracing", "export", "span export raised", exc)
        finally:
            with self._changed:
                job.done, job.ok = True, ok
                if self._job is job:
                    self._job = None
                self._changed.notify_all()

    def finish(self) -> None:
        """Close the ledger: every span accepted and not settled yet counts as ``shutdown``.

        Runs when the flush ends or when the shutdown bound expires, whichever is first;
        afterwards no batch is exported or counted. A span that :meth:`on_end` queued
        while this runs is counted there; one handed already (in a batch, counted here)
        but not yet in :attr:`ended` makes the count here one too low, which the late
        :meth:`on_end` makes up for through ``_debt``.
        """
        with self._changed:
            if self.settled:
                return
            self.settled = True
            left = self.ended - self.handed_total - self.queue_dropped  # accepted, never handed
            for batch in self._in_flight:
                batch.settled = True
                left += batch.size
            self._in_flight.clear()
            if left < 0:
                self._debt, left = -left, 0
            self._changed.notify_all()  # an export waiting on its worker returns now
        self.drop(left, "shutdown")

    def queued(self) -> int:
        q = self._queue
        return len(q) if q is not None else 0

    def shutdown(self, timeout: float) -> None:
        """Flush and stop within ``timeout`` seconds (daemon thread, bounded join); every span
        is exported or counted when it returns."""
        undecided = 0
        with self._lock:
            first = not self.closed
            self.closed = True
            if first:
                if self.tail is not None:
                    # traces whose local root has not ended are never decided: dropped
                    undecided = self.tail.close()
                t = threading.Thread(target=self._shutdown_body,
                                     name="mestres-observability-span-shutdown", daemon=True)
                self._shutdown_thread = t
                t.start()
            thread = self._shutdown_thread
        self.drop(undecided, "shutdown", fault=False)
        if thread is not None:
            thread.join(max(0.0, timeout))
            if thread.is_alive():
                self.finish()  # the bound expired: what is left is counted now
                if first:
                    self.faults.report("tracing", "shutdown_timeout",
                                       f"span export did not finish within {timeout:.1f}s")

    def _shutdown_body(self) -> None:
        try:
            # the SDK's worker exports what is queued, each export within our deadline
            self.bsp.shutdown()  # type: ignore[no-untyped-call]
        except Exception as exc:
            self.faults.report("tracing", "shutdown", "span processor shutdown failed", exc)
        finally:
            self.finish()


class _CountingExporter:
    """The SpanExporter the SDK's processor calls: each batch goes through
    :meth:`_Pipeline.export` (deadline, ledger)."""

    def __init__(self, inner: SpanExporter, pipeline: _Pipeline) -> None:
        self.inner = inner
        self.pipeline = pipeline

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from opentelemetry.sdk.trace.export import SpanExportResult

        ok = self.pipeline.export(spans)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        try:
            self.inner.shutdown()
        except Exception as exc:
            self.pipeline.faults.report("tracing", "exporter_shutdown", "exporter shutdown", exc)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _make_delegate() -> SpanProcessor:
    from opentelemetry.sdk.trace import SpanProcessor

    class DelegatingSpanProcessor(SpanProcessor):
        """The library's only processor on the provider; repointed on re-init."""

        def __init__(self) -> None:
            self.target: _Pipeline | None = None
            self.extra: list[Any] = []
            #: redacts an ended span before anything sees it (``scrub_span_attributes``)
            self.scrub: _Scrub | None = None

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            for p in self.extra:
                p.on_start(span, parent_context=parent_context)

        def on_end(self, span: ReadableSpan) -> None:
            scrub = self.scrub
            if scrub is not None:
                span = scrub(span)
            target = self.target
            if target is not None:
                target.on_end(span)
            for p in self.extra:
                p.on_end(span)

        def end_lean(self, span: _leanspan.LeanSpan) -> None:
            """A lean span ended: into the same pipeline; extra processors get a ReadableSpan."""
            scrub = self.scrub
            if scrub is not None:
                try:  # scrub.lean(span), inline
                    span.scrub(scrub.scrubber)
                except Exception as exc:
                    scrub.faults.report("tracing", "scrub", "redacting span attributes failed",
                                        exc)
            target = self.target
            if target is not None:
                target.on_end_lean(span)
            extra = self.extra
            if extra:
                view = span.readable()
                for p in extra:
                    p.on_end(view)

        def shutdown(self) -> None:
            target = self.target
            if target is not None:
                target.shutdown(_GLOBAL.bound)

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return DelegatingSpanProcessor()


class _Global:
    """Process-wide tracing state (one provider, one delegating processor)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.provider: TracerProvider | None = None
        self.owned = False
        self.delegate: Any = None
        self.active: TracingHandle | None = None
        self.atexit_registered = False
        self.fork_hook_registered = False
        self.bound = 5.0
        self.instrumented: set[str] = set()
        #: the owned provider's sampler and span limits, and the lean spans' rule for that
        #: sampler (``None``: one they cannot honour)
        self.sampler: Any = None
        self.limits: Any = None
        self.plan: _leanspan.SamplingPlan | None = None
        #: off once a span processor other than ours is added to the owned provider
        self.lean = _leanspan.LeanSwitch()
        #: the global propagator the library installed when it is W3C trace context first
        #: (then baggage or nothing): :func:`extract_context` parses a traceparent itself
        self.w3c: Any = None
        #: its baggage propagator (``None``: trace context alone)
        self.w3c_baggage: Any = None


_GLOBAL = _Global()


def _at_exit() -> None:
    handle = _GLOBAL.active
    if handle is not None:
        handle.shutdown(_GLOBAL.bound)


# ---------------------------------------------------------------------- handle
class TracingHandle:
    """Tracing state of one :class:`~mestres_observability.Observability` instance.

    Attributes:
        tracer: the OpenTelemetry tracer (a no-op tracer when tracing is off).
        own_tracer: the tracer of the spans the library starts itself: a lean span
            tracer when :attr:`lean` (see :mod:`mestres_observability._leanspan`),
            else :attr:`tracer`.
        enabled: whether spans are created at all.
        provider: the SDK provider in use (``None`` for the default instance or when off).
        exporter: ``otlp``, ``console`` or ``none``.
    """

    def __init__(self, tracer: trace.Tracer, enabled: bool, *, provider: Any = None,
                 pipeline: _Pipeline | None = None, exporter: str = "none",
                 own_tracer: trace.Tracer | None = None) -> None:
        self.tracer = tracer
        self.own_tracer = own_tracer if own_tracer is not None else tracer
        self.enabled = enabled
        self.provider = provider
        self.exporter = exporter
        self._pipeline = pipeline
        self._done = False
        #: what the delegating processor redacts ended spans with (``None``: off)
        self.scrub: _Scrub | None = None

    @property
    def lean(self) -> bool:
        """True when the library's own spans are lean spans (the provider is the library's,
        only its pipeline is attached, the sampler is one they honour, ``lean_spans`` on)."""
        own = self.own_tracer
        return isinstance(own, _leanspan.LeanTracer) and own.switch.on

    @property
    def dropped(self) -> int:
        """Spans this instance dropped so far."""
        return self._pipeline.dropped if self._pipeline is not None else 0

    @property
    def dropped_by_reason(self) -> dict[str, int]:
        """Spans this instance dropped so far, by reason (``queue_full``, ``export_failed``,
        ``export_timeout``, ``shutdown``): the ``reason`` label of
        ``mestres_observability_spans_dropped_total``."""
        if self._pipeline is None:
            return dict.fromkeys(SPAN_DROP_REASONS, 0)
        return dict(self._pipeline.dropped_by)

    @property
    def exported(self) -> int:
        """Spans this instance's exporter accepted so far."""
        return self._pipeline.exported if self._pipeline is not None else 0

    def _detach(self) -> None:
        with _GLOBAL.lock:
            d = _GLOBAL.delegate
            if d is not None and self._pipeline is not None and d.target is self._pipeline:
                d.target = None
            if _GLOBAL.active is self:
                _GLOBAL.active = None

    def shutdown(self, timeout: float) -> None:
        """Flush pending spans and stop exporting; returns within ``timeout`` seconds.

        Idempotent; never raises. The process-wide provider stays installed
        (spans are still created for log correlation, but no longer exported).
        """
        try:
            self._detach()
            self._done = True
            if self._pipeline is not None:
                self._pipeline.shutdown(timeout)
        except Exception:  # pragma: no cover - defensive
            pass

    def activate(self) -> None:
        """Make this handle's pipeline the one the process-wide provider feeds again.

        Used when an instance becomes current again (``testing.fresh_observability``
        restoring the instance it suspended). Nothing changes for a handle that
        installed no provider (the default instance, tracing off) or that was
        shut down or retired. Never raises.
        """
        if self.provider is None or self._done:
            return
        with _GLOBAL.lock:
            d = _GLOBAL.delegate
            if d is not None:
                d.target = self._pipeline
                d.scrub = self.scrub
            _GLOBAL.active = self

    def retire(self) -> None:
        """Stop this instance after a re-init: its pipeline drains in the background."""
        try:
            self._detach()
            if self._pipeline is not None and not self._done:
                self._done = True
                p = self._pipeline
                threading.Thread(target=p.shutdown, args=(_GLOBAL.bound,), daemon=True,
                                 name="mestres-observability-span-retire").start()
        except Exception:  # pragma: no cover - defensive
            pass


# ---------------------------------------------------------------------- set-up
def _sampler(config: ObservabilityConfig) -> Sampler:
    from opentelemetry.sdk.trace import sampling

    arg = config.traces_sampler_arg
    name = config.traces_sampler
    if arg is not None and not 0.0 <= arg <= 1.0:
        raise ConfigurationError("traces_sampler_arg", arg, "the ratio must be between 0 and 1",
                                 env=None)
    ratio = 1.0 if arg is None else float(arg)
    if name == "always_on":
        return sampling.ALWAYS_ON
    if name == "always_off":
        return sampling.ALWAYS_OFF
    if name == "traceidratio":
        return sampling.TraceIdRatioBased(ratio)
    if name == "parentbased_always_off":
        return sampling.ParentBased(sampling.ALWAYS_OFF)
    if name == "parentbased_traceidratio":
        return sampling.ParentBased(sampling.TraceIdRatioBased(ratio))
    if name == "parentbased_always_on":
        return sampling.ParentBased(sampling.ALWAYS_ON)
    return _entry_point_sampler(name, arg)


def _entry_point_sampler(name: str, arg: float | None) -> Sampler:
    """The sampler an installed ``opentelemetry_traces_sampler`` entry point called ``name``
    builds (as the SDK's own configuration loads ``OTEL_TRACES_SAMPLER``), given ``arg``.

    Raises:
        ConfigurationError: no such entry point, or it does not build a ``Sampler``.
    """
    from importlib.metadata import entry_points

    from opentelemetry.sdk.trace.sampling import Sampler as SdkSampler

    found = list(entry_points(group="opentelemetry_traces_sampler", name=name))
    if not found:
        raise ConfigurationError(
            "traces_sampler", name,
            "no installed sampler has that name: install the package providing it (an "
            "opentelemetry_traces_sampler entry point) or use one of always_on, always_off, "
            "traceidratio, parentbased_always_on, parentbased_always_off, "
            "parentbased_traceidratio", env=None)
    try:
        sampler = found[0].load()(arg)
    except Exception as exc:
        raise ConfigurationError("traces_sampler", name, f"the sampler failed to build: {exc!r}",
                                 env=None) from exc
    if not isinstance(sampler, SdkSampler):
        raise ConfigurationError("traces_sampler", name,
                                 f"its entry point built {type(sampler).__name__}, not a Sampler",
                                 env=None)
    return sampler


def _ratio(config: ObservabilityConfig) -> float:
    arg = config.traces_sampler_arg
    return 1.0 if arg is None else float(arg)


def _resource(config: ObservabilityConfig) -> Any:
    from opentelemetry.sdk.resources import Resource

    attrs: dict[str, Any] = dict(config.resource_attributes)
    attrs.update({
        "service.name": config.service_name,
        "service.version": config.service_version,
        "deployment.environment.name": config.environment,
        "service.instance.id": INSTANCE_ID,
    })
    for key in ("service.name", "service.version", "deployment.environment.name"):
        source = config.source_of(_SETTING_OF[key])
        if source == "default" and key in config.resource_attributes:
            attrs[key] = config.resource_attributes[key]
    return Resource.create(attrs)


_SETTING_OF = {
    "service.name": "service_name", "service.version": "service_version",
    "deployment.environment.name": "environment",
}


def _propagators(config: ObservabilityConfig) -> list[Any]:
    """The propagators ``config.propagators`` names, in order (``none`` left out)."""
    from importlib.metadata import entry_points

    props = []
    for name in config.propagators:
        if name == "none":
            continue
        found = list(entry_points(group="opentelemetry_propagator", name=name))
        if not found:
            raise ConfigurationError(
                "propagators", name,
                "unknown propagator: install the package that provides it or use "
                "tracecontext, baggage",
            )
        props.append(found[0].load()())
    return props


def _w3c_parts(propagator: Any, parts: list[Any]) -> tuple[Any, Any]:
    """``(propagator, its baggage propagator or None)`` when ``propagator`` is the composite
    of ``parts`` and they are exactly the OpenTelemetry W3C trace-context propagator, then
    the W3C baggage one or nothing (by type: a propagator of another class under the same
    entry-point name is not), so that :func:`extract_context` may parse a ``traceparent``
    itself; ``(None, None)`` otherwise."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not 1 <= len(parts) <= 2 or type(parts[0]) is not TraceContextTextMapPropagator:
        return None, None
    if len(parts) == 1:
        return propagator, None
    if type(parts[1]) is not W3CBaggagePropagator:
        return None, None
    return propagator, parts[1]


def _console_formatter(span: ReadableSpan) -> str:
    ctx = span.get_span_context()
    parent = span.parent
    start, end = span.start_time or 0, span.end_time or 0
    data = {
        "span": span.name,
        "trace_id": format(ctx.trace_id, "032x") if ctx else None,
        "span_id": format(ctx.span_id, "016x") if ctx else None,
        "parent_id": format(parent.span_id, "016x") if parent else None,
        "kind": span.kind.name,
        "duration_ms": round((end - start) / 1e6, 3),
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }
    return json.dumps(data, ensure_ascii=True, default=str, separators=(",", ":")) + "\n"


def _exporter(config: ObservabilityConfig, name: str) -> SpanExporter | None:
    if name == "none":
        return None
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr, formatter=_console_formatter)
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise MissingExtraError(
            "the OTLP trace exporter", "otlp", "opentelemetry-exporter-otlp-proto-http"
        ) from None
    endpoint = config.otlp_traces_endpoint
    if endpoint is None and config.otlp_endpoint:
        endpoint = config.otlp_endpoint.rstrip("/") + "/v1/traces"
    if endpoint is None:
        endpoint = "http://localhost:4318/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint, headers=dict(config.otlp_headers) or None,
                            timeout=config.otlp_timeout)


def _owned_provider_class() -> type[TracerProvider]:
    """The SDK ``TracerProvider``, noticing a span processor someone else adds to it."""
    from opentelemetry.sdk.trace import TracerProvider as SdkProvider

    class OwnedTracerProvider(SdkProvider):
        """The library's tracer provider (an SDK ``TracerProvider`` in every other respect)."""

        def add_span_processor(self, span_processor: SpanProcessor) -> None:
            super().add_span_processor(span_processor)
            if span_processor is not _GLOBAL.delegate:
                _foreign_processor()

    return OwnedTracerProvider


def _install_provider(config: ObservabilityConfig) -> Any:
    """The SDK provider carrying the delegating processor (installed once per process)."""
    from opentelemetry.sdk.trace import SpanLimits
    from opentelemetry.sdk.trace import TracerProvider as SdkProvider

    g = _GLOBAL
    if g.provider is not None:
        return g.provider
    current = trace.get_tracer_provider()
    if isinstance(current, SdkProvider) and config.respect_global_tracer_provider:
        provider = current
        g.owned = False
    else:
        sampler = _sampler(config)
        limits = SpanLimits(max_attribute_length=MAX_ATTRIBUTE_LENGTH)
        provider = _owned_provider_class()(
            resource=_resource(config), sampler=sampler, shutdown_on_exit=False,
            span_limits=limits,
        )
        g.owned = True
        g.sampler, g.limits = sampler, limits
        g.plan = _leanspan.sampling_plan(config.traces_sampler, _ratio(config))
        if not isinstance(current, SdkProvider):
            trace.set_tracer_provider(provider)
    g.delegate = _make_delegate()
    provider.add_span_processor(g.delegate)
    g.provider = provider
    if not g.fork_hook_registered:
        # after the SDK provider's own fork hook (registered when it was built), so this id
        # is the one that stays
        run_after_fork(_resource_after_fork, after_existing=True)
        g.fork_hook_registered = True
    if not g.atexit_registered:
        atexit.register(_at_exit)
        g.atexit_registered = True
    return provider


_INSTRUMENTORS = {
    "sqlalchemy": ("opentelemetry.instrumentation.sqlalchemy", "SQLAlchemyInstrumentor"),
    "redis": ("opentelemetry.instrumentation.redis", "RedisInstrumentor"),
    "requests": ("opentelemetry.instrumentation.requests", "RequestsInstrumentor"),
    "httpx": ("opentelemetry.instrumentation.httpx", "HTTPXClientInstrumentor"),
    "psycopg": ("opentelemetry.instrumentation.psycopg", "PsycopgInstrumentor"),
    "psycopg2": ("opentelemetry.instrumentation.psycopg2", "Psycopg2Instrumentor"),
    "urllib3": ("opentelemetry.instrumentation.urllib3", "URLLib3Instrumentor"),
}


def _instrumentor_class(key: str, module_name: str, class_name: str) -> Any:
    """The instrumentor class for ``key``: its ``opentelemetry_instrumentor`` entry point,
    else the named class, else the concrete ``*Instrumentor`` class the module defines.

    Raises:
        ImportError: neither an entry point nor the module exists.
        LookupError: the module defines no concrete instrumentor class.
    """
    from importlib.metadata import entry_points

    for ep in entry_points(group="opentelemetry_instrumentor", name=key):
        return ep.load()
    module = importlib.import_module(module_name)
    found = getattr(module, class_name, None) if class_name else None
    if found is not None:
        return found
    # the module also holds what it imported (OpenTelemetry's abstract BaseInstrumentor):
    # a concrete class, preferably one the module defines itself
    candidates = [v for k, v in vars(module).items()
                  if k.endswith("Instrumentor") and isinstance(v, type) and not inspect.isabstract(v)
                  and k != "BaseInstrumentor"]
    own = [c for c in candidates if c.__module__.startswith(module.__name__)]
    if own or candidates:
        return (own or candidates)[0]
    raise LookupError(f"{module_name} defines no concrete *Instrumentor class")


def _auto_instrument(config: ObservabilityConfig, provider: Any, faults: FaultReporter) -> None:
    for name in config.auto_instrument:
        key = name.lower()
        if key in _GLOBAL.instrumented:
            continue
        module_name, class_name = _INSTRUMENTORS.get(
            key, (f"opentelemetry.instrumentation.{key}", "")
        )
        try:
            cls = _instrumentor_class(key, module_name, class_name)
        except ImportError:
            _log.info(
                "auto-instrumentation %r skipped: %s is not installed "
                "(pip install opentelemetry-instrumentation-%s)", name, module_name,
                key.replace("_", "-"),
            )
            _GLOBAL.instrumented.add(key)
            continue
        except Exception as exc:
            faults.report("tracing", "auto_instrument", f"auto-instrumentation {name} failed", exc)
            continue
        try:
            instrumentor = cls()
            if not getattr(instrumentor, "is_instrumented_by_opentelemetry", False):
                instrumentor.instrument(tracer_provider=provider)
            _GLOBAL.instrumented.add(key)
        except Exception as exc:
            faults.report("tracing", "auto_instrument", f"auto-instrumentation {name} failed", exc)


def _exemplar() -> dict[str, str] | None:
    """``trace_id``/``span_id`` of the current sampled, recording span, else ``None``."""
    current = trace.get_current_span()
    if not current.is_recording():
        return None
    ctx = current.get_span_context()
    if not (ctx.trace_flags & 1) or not ctx.is_valid:
        return None
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


def setup_tracing(
    config: ObservabilityConfig, metrics: LibraryMetrics, faults: FaultReporter,
    *, install_globals: bool, retire_previous: bool = True,
) -> TracingHandle:
    """Build the tracing state of one instance (see the module docstring).

    Args:
        config: tracing settings (exporter, endpoints, sampler, queue, bounds).
        metrics: the instance's metrics (dropped spans, exemplar hook).
        faults: where run-time faults are counted.
        install_globals: ``False`` for the default instance, which installs
            nothing process-wide and uses whatever global provider exists.
        retire_previous: retire the handle that was active (its pipeline
            drains in the background); ``False`` suspends it instead, so its
            :meth:`TracingHandle.activate` resumes it.

    Raises:
        ConfigurationError: bad sampler argument or unknown propagator.
        MissingExtraError: ``otlp`` chosen without the ``otlp`` extra.
    """
    enabled = bool(config.enabled and config.tracing_enabled)
    if not enabled:
        return TracingHandle(_NOOP_TRACER, False)
    if config.exemplars:
        metrics.exemplar_provider = _exemplar
    if not install_globals:
        return TracingHandle(trace.get_tracer(TRACER_NAME), True)

    exporter_name = config.effective_traces_exporter
    sampler = _sampler(config)  # validate even when the provider already exists
    del sampler
    exporter = _exporter(config, exporter_name)
    from opentelemetry.propagators.composite import CompositePropagator

    parts = _propagators(config)
    propagator = CompositePropagator(parts)
    if config.tail_sampling and config.traces_sampler not in ("always_on",
                                                              "parentbased_always_on"):
        _log.warning("tail_sampling decides among the traces the head sampler records: with "
                     "traces_sampler=%s, traces it does not sample are never seen, errored or "
                     "slow ones included (use parentbased_always_on to keep them all)",
                     config.traces_sampler)

    with _GLOBAL.lock:
        provider = _install_provider(config)
        _GLOBAL.bound = config.shutdown_timeout
        pipeline = _Pipeline(exporter, config, metrics, faults) if exporter is not None else None
        previous = _GLOBAL.active
        _GLOBAL.delegate.target = pipeline
        propagate.set_global_textmap(propagator)
        _GLOBAL.w3c, _GLOBAL.w3c_baggage = _w3c_parts(propagator, parts)
        try:
            from . import _version

            version = _version.__version__
        except Exception:  # pragma: no cover
            version = None
        tracer = provider.get_tracer(TRACER_NAME, version)
        own = _lean_tracer(config, provider, tracer, version)
        if own is not None and pipeline is not None:
            pipeline.fast_send = _compat.otlp_span_sender(exporter)
        handle = TracingHandle(tracer, True, provider=provider, pipeline=pipeline,
                               exporter=exporter_name, own_tracer=own)
        handle.scrub = _Scrub(config, faults) if config.scrub_span_attributes else None
        _GLOBAL.delegate.scrub = handle.scrub
        _GLOBAL.active = handle
    if retire_previous and previous is not None and previous is not handle:
        previous.retire()
    if config.auto_instrument:
        _auto_instrument(config, provider, faults)
    return handle


def _lean_tracer(config: ObservabilityConfig, provider: Any, tracer: trace.Tracer,
                 version: str | None) -> _leanspan.LeanTracer | None:
    """The lean span tracer for the library's own spans, or ``None`` for the SDK path: a
    provider that is not the library's, a processor added to it by someone else, a
    sampler the lean span cannot honour, or ``lean_spans`` off."""
    from opentelemetry.sdk.trace import Tracer as SdkTracer

    g = _GLOBAL
    if not (config.lean_spans and g.owned and g.lean.on and g.plan is not None
            and provider is g.provider and isinstance(tracer, SdkTracer)
            and getattr(provider, "sampler", None) is g.sampler):
        return None
    return _leanspan.LeanTracer(tracer, provider, g.plan, g.limits, TRACER_NAME, version,
                                g.delegate.end_lean, g.delegate.extra, g.lean)


def _foreign_processor() -> None:
    """Someone added a span processor to the library's provider: from now on every span,
    the library's own included, is an SDK span that processor sees."""
    if _GLOBAL.lean.on:
        _GLOBAL.lean.on = False
        _log.info("a span processor was added to the library's tracer provider: the library's "
                  "own spans are SDK spans from now on (lean spans off)")


_TRACEPARENT_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACE_FLAGS = {f"{i:02x}": TraceFlags(i) for i in range(256)}
#: ``SpanContext`` of ids known valid, in one C call (``_compat.valid_span_context_maker``)
_valid_context = _compat.valid_span_context_maker()
#: the key of the span in a ``Context`` (``_compat.current_span_key``), or None
_SPAN_KEY = _compat.current_span_key()


#: the longest ``tracestate`` the inline parse takes (the propagator's own limit, past which
#: it drops the header with a warning, is larger: 8192 in the API 1.4x); the request pass
#: cuts a longer one to 512 first (``http.bound_trace_headers``)
_INLINE_TRACESTATE = 512


def remote_parent(headers: Mapping[str, str]) -> trace.SpanContext | None:
    """The caller's span context in ``headers`` (trace-context headers keyed in lower
    case), parsed here, when the global propagator is the W3C one the library installed
    (trace context, then baggage or nothing: checked by type at set-up and by identity
    here, so a propagator set since with ``propagate.set_global_textmap`` is used
    instead) and the ``traceparent`` is one this parse accepts for certain: version
    ``00``, 55 characters, lower-case hex, non-zero ids, any flags; with no
    ``tracestate`` or one of at most :data:`_INLINE_TRACESTATE` characters (read by
    ``TraceState.from_header``, as the propagator reads it). ``None`` for anything else
    (another propagator; a malformed ``traceparent``, in upper case, of another version,
    with white space around it; a long ``tracestate``): call :func:`extract_context`.

    It is the remote span ``propagate.extract(headers)`` puts in the new ``Context`` it
    returns; with no ``baggage`` header that span is all the ``Context`` holds
    (:func:`remote_context` builds it).
    """
    if propagate.get_global_textmap() is not _GLOBAL.w3c:
        return None
    value = headers.get("traceparent")
    if type(value) is not str or len(value) != 55:
        return None
    m = _TRACEPARENT_00.fullmatch(value)
    if m is None:
        return None
    trace_id, span_id = int(m[1], 16), int(m[2], 16)
    if not (trace_id and span_id):  # all-zero ids: invalid (the propagator keeps no parent)
        return None
    state: Any = headers.get("tracestate")
    if state is None:
        state = DEFAULT_TRACE_STATE
    elif type(state) is str and len(state) <= _INLINE_TRACESTATE:
        state = TraceState.from_header([state])  # the propagator's call (a list, one header)
    else:
        return None
    # 32 and 16 hex digits, non-zero: valid ids, SpanContext's checks skipped
    parent: trace.SpanContext = _valid_context((trace_id, span_id, True, _TRACE_FLAGS[m[3]],
                                                state, True))
    return parent


def remote_context(parent: trace.SpanContext) -> otel_context.Context:
    """A new ``Context`` holding ``parent`` as a remote ``NonRecordingSpan``: what the W3C
    trace-context propagator extracts (``set_span_in_context(span, Context())``)."""
    remote = NonRecordingSpan(parent)
    if _SPAN_KEY is not None:
        return otel_context.Context({_SPAN_KEY: remote})
    return trace.set_span_in_context(remote, otel_context.Context())


def extract_context(headers: Mapping[str, str]) -> otel_context.Context:
    """``propagate.extract(headers)`` for trace-context headers keyed in lower case.

    When :func:`remote_parent` parses the trace context, the result is built here, as
    the W3C propagator builds it (a remote ``NonRecordingSpan`` in a new context), then
    ``baggage`` is read into it by that propagator's own baggage propagator; anything
    else goes to ``propagate.extract``.
    """
    parent = remote_parent(headers)
    if parent is None:
        return propagate.extract(headers)
    ctx = remote_context(parent)
    w3c_baggage = _GLOBAL.w3c_baggage
    if w3c_baggage is not None and headers.get("baggage"):
        # the composite's next step: the baggage propagator, given that context
        ctx = w3c_baggage.extract(headers, ctx)
    return ctx


def attach_processor(processor: Any) -> Callable[[], None]:
    """Feed every span the library's provider starts and ends to ``processor`` as well.

    For ``testing.captured_spans()``: ``processor`` sees spans beside the
    active pipeline, whichever instance is current. Returns the function that
    detaches it again.

    Raises:
        RuntimeError: no ``init_observability`` installed the library's provider yet.
    """
    delegate = _GLOBAL.delegate
    if delegate is None:
        raise RuntimeError(
            "captured_spans() needs init_observability() (or fresh_observability()) first"
        )
    delegate.extra.append(processor)

    def detach() -> None:
        with contextlib.suppress(ValueError):
            delegate.extra.remove(processor)

    return detach


# ---------------------------------------------------------------------- spans API
def _current_tracer() -> trace.Tracer | None:
    t = get_observability()._tracing
    if not t.enabled:
        return None
    return t.own_tracer


def _cut(text: str) -> str:
    """``text`` within :data:`MAX_ATTRIBUTE_LENGTH`, keeping its start and its end."""
    if len(text) <= MAX_ATTRIBUTE_LENGTH:
        return text
    keep = MAX_ATTRIBUTE_LENGTH - len(f"\n...[{len(text)} chars cut]...\n")
    head = 320
    return f"{text[:head]}\n...[{len(text) - keep} chars cut]...\n{text[-(keep - head):]}"


def record_exception(sp: Span, exc: BaseException) -> None:
    """Record ``exc`` on ``sp`` as OpenTelemetry's ``exception`` event, every value cut to
    :data:`MAX_ATTRIBUTE_LENGTH` first.

    The SDK's own ``Span.record_exception`` passes the whole stack trace and
    message, which the span limits then truncate with a warning from
    ``opentelemetry.attributes`` on every exception. Here the message keeps its
    start, and the stack trace (its exception lines cut to 240 characters) keeps
    its start (the outermost frames) and its end (the raising frame and the
    exception line). Never raises.
    """
    try:
        import traceback

        kind = type(exc)
        module = kind.__module__
        name = f"{module}.{kind.__qualname__}" if module and module != "builtins" \
            else kind.__qualname__
        try:
            message = str(exc)
        except Exception:
            message = "<unprintable exception>"
        # each part is a frame or an exception line: a long message is cut in place, so
        # the end of the stack trace still shows the raising frame
        stack = "".join(part if len(part) <= 256 else f"{part[:240]}...\n"
                        for part in traceback.format_exception(kind, exc, exc.__traceback__))
        sp.add_event("exception", {
            "exception.type": name[:MAX_ATTRIBUTE_LENGTH],
            "exception.message": message[:MAX_ATTRIBUTE_LENGTH],
            "exception.stacktrace": _cut(stack),
            "exception.escaped": "False",
        })
    except Exception as err:  # pragma: no cover - defensive
        _report_fault("record_exception", err)


def _fail(sp: Span, exc: BaseException) -> None:
    try:
        if isinstance(exc, Exception):
            record_exception(sp, exc)
            sp.set_attribute("error.type", type(exc).__qualname__)
            sp.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        elif not isinstance(exc, GeneratorExit):
            sp.set_attribute("error.type", type(exc).__qualname__)
            sp.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    except Exception:  # pragma: no cover - defensive
        pass


def _start(name: str, attributes: Mapping[str, Any]) -> tuple[Span, Any] | None:
    """Start a span under the current context; ``None`` when tracing is off or fails."""
    try:
        tracer = _current_tracer()
        if tracer is None:
            return None
        sp = tracer.start_span(name, attributes=clean_attributes(attributes) if attributes
                               else None)
        return sp, trace.set_span_in_context(sp)
    except Exception as exc:
        _report_fault("start_span", exc)
        return None


def _report_fault(kind: str, exc: BaseException) -> None:
    with contextlib.suppress(Exception):
        get_observability().faults.report("tracing", kind, "span API failed", exc)


class span:
    """Context manager opening a span named ``name`` (``with`` or ``async with``).

    The span is current inside the block, so nested spans and log lines pick it
    up. An exception raised in the block is recorded on the span (status
    ``ERROR``) and re-raised unchanged. Attribute values are sanitised:
    ``Decimal`` becomes a float, long strings are capped. Never raises on its
    own account; when tracing is off it yields a non-recording span.

    Example:
        >>> with span("validate_inventory", **{"order.id": "o-1"}) as sp:
        ...     sp.set_attribute("items", 3)
    """

    __slots__ = ("_attributes", "_name", "_span", "_token")

    def __init__(self, name: str, **attributes: Any) -> None:
        self._name = name
        self._attributes = attributes
        self._span: Span | None = None
        self._token: Any = None

    def __enter__(self) -> Span:
        started = _start(self._name, self._attributes)
        if started is None:
            return trace.INVALID_SPAN
        self._span, ctx = started
        self._token = otel_context.attach(ctx)
        return self._span

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        sp = self._span
        if sp is None:
            return
        self._span = None
        try:
            if exc is not None:
                _fail(sp, exc)
            sp.end()
        finally:
            token, self._token = self._token, None
            if token is not None:
                otel_context.detach(token)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


@overload
def traced(name: F, /) -> F: ...


@overload
def traced(name: str | None = None, /, **attributes: Any) -> Callable[[F], F]: ...


def traced(name: Any = None, /, **attributes: Any) -> Any:
    """Decorator: run the function inside a span (sync, async, generators; bare ``@traced`` too).

    Args:
        name: span name (default: the function's ``__qualname__``).
        **attributes: attributes set on every span (sanitised like :func:`span`'s).

    The decorated function keeps its signature, name and
    ``inspect.iscoroutinefunction``; it returns the same object and raises
    the same exception object, recorded on the span with status ``ERROR``.
    Generators have the span current only while their body runs.

    Example:
        >>> @traced("charge_card", provider="stripe")
        ... def charge(amount): ...
    """
    if callable(name) and not attributes:
        return _decorate(name, None, {})
    if name is not None and not isinstance(name, str):
        raise TypeError("traced() takes a span name (str) or is used bare as @traced")

    def decorator(fn: F) -> F:
        return _decorate(fn, name, attributes)

    return decorator


def _decorate(fn: F, name: str | None, attributes: dict[str, Any]) -> F:
    span_name = name or getattr(fn, "__qualname__", None) or repr(fn)
    attrs = clean_attributes(attributes) if attributes else {}
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        return around(fn, _StepSpanHooks(span_name, attrs))
    return around(fn, _CallSpanHooks(span_name, attrs))


class _CallSpanHooks:
    """:func:`around` hooks of ``@traced`` on a function or coroutine: current for the call."""

    __slots__ = ("attrs", "name")

    def __init__(self, name: str, attrs: dict[str, Any]) -> None:
        self.name = name
        self.attrs = attrs

    def start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Span, Any] | None:
        started = _start(self.name, self.attrs)
        if started is None:
            return None
        return started[0], otel_context.attach(started[1])

    def success(self, state: tuple[Span, Any] | None, result: Any) -> None:
        if state is not None:
            _end(state[0], None, state[1])

    def failure(self, state: tuple[Span, Any] | None, exc: BaseException) -> None:
        if state is not None:
            _end(state[0], exc, state[1])


class _StepSpanHooks(_CallSpanHooks):
    """Hooks of ``@traced`` on a generator: the span is current only while its body runs."""

    __slots__ = ()

    def start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Span, Any] | None:
        return _start(self.name, self.attrs)

    def enter(self, state: tuple[Span, Any] | None) -> Any:
        return otel_context.attach(state[1]) if state is not None else None

    def leave(self, token: Any) -> None:
        if token is not None:
            otel_context.detach(token)

    def success(self, state: tuple[Span, Any] | None, result: Any) -> None:
        if state is not None:
            _end(state[0], None, None)

    def failure(self, state: tuple[Span, Any] | None, exc: BaseException) -> None:
        if state is not None:
            _end(state[0], exc, None)


def _end(sp: Span, exc: BaseException | None, token: Any) -> None:
    """Record ``exc`` (if any), end ``sp`` and detach ``token`` (if any); never raises."""
    try:
        if exc is not None:
            _fail(sp, exc)
        sp.end()
    except Exception as err:  # pragma: no cover - the SDK does not raise here
        _report_fault("end_span", err)
    finally:
        if token is not None:
            otel_context.detach(token)
