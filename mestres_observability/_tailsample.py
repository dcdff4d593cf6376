"""Tail sampling: keep every trace whose local root span errored or was slow, and a ratio of
the rest, decided when the local root span ends.

The span pipeline (``tracing._Pipeline``) hands every ended span, lean or SDK, to
:meth:`TailSampler.on_end` before its queue when ``tail_sampling`` is on:

* a **local root** is a span whose parent is absent or remote (the SERVER span of a
  request, a Celery task's CONSUMER span, a job's span);
* the other spans of a trace are **held** per trace id until its local root ends; the
  root then decides for the whole trace: kept when it **errored** (status ``ERROR``,
  or an ``exception`` event on it), when it ran at least ``tail_sampling_latency_threshold``
  seconds (**slow**), or by the **ratio** rule, else sampled out;
* the ratio rule is ``TraceIdRatioBased``'s (``trace_id & (2**64 - 1) < ratio * 2**64``):
  deterministic on the trace id, so services sampling alike keep the same traces
  whole, and a trace it keeps is never held (its spans go on as they end);
* a span of a trace already decided follows the decision (decisions are remembered,
  the latest ``max(tail_sampling_max_spans, 1024)`` of them); a second local root of a
  trace already decided follows it too;
* at most ``tail_sampling_max_spans`` spans are held: past that, the trace held longest
  is evicted whole (a root that never ends cannot pin the memory), counted ``overflow``,
  and its later spans are dropped too, so no trace reaches the wire incomplete;
* at shutdown, what is still held (traces whose local root has not ended) is dropped,
  counted by the pipeline as ``shutdown``.

Counted in ``mestres_observability_tail_sampling_traces_total{decision}`` (once per
trace) and ``mestres_observability_tail_sampling_spans_total{outcome}`` (once per span).
Never raises into the caller, never blocks beyond one short lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.trace import StatusCode

from ._forksafe import call_after_fork
from .catalogue import TAIL_DECISIONS, TAIL_SPAN_OUTCOMES

__all__ = ["MIN_DECISIONS", "TailSampler"]

#: Fewest decisions remembered, whatever ``tail_sampling_max_spans`` is.
MIN_DECISIONS = 1024

_MASK64 = (1 << 64) - 1
_ERROR = StatusCode.ERROR
#: the outcome of a span of a trace decided so
_OUTCOME = dict(zip(TAIL_DECISIONS, ("kept", "kept", "kept", "sampled_out", "overflow"),
                    strict=True))
assert set(_OUTCOME.values()) == set(TAIL_SPAN_OUTCOMES)


class TailSampler:
    """Holds the spans of each trace until its local root ends (see the module docstring).

    Args:
        threshold: seconds from which a local root is slow (its trace kept).
        ratio: share of the other traces kept (0..1), by trace id.
        max_spans: most spans held at once.
        traces: counter children of ``tail_sampling_traces_total`` by decision.
        spans: counter children of ``tail_sampling_spans_total`` by outcome.
        overflow: called (outside the lock) with the number of spans of each eviction.
    """

    __slots__ = ("__weakref__", "_decided", "_held", "_lock", "_size", "bound", "closed",
                 "max_decisions", "max_spans", "on_overflow", "spans", "threshold_ns", "traces")

    def __init__(self, threshold: float, ratio: float, max_spans: int,
                 traces: Mapping[str, Any], spans: Mapping[str, Any],
                 overflow: Callable[[int], None] | None = None) -> None:
        self.threshold_ns = round(threshold * 1e9)
        self.bound = round(ratio * (1 << 64))  # TraceIdRatioBased.get_bound_for_rate
        self.max_spans = max_spans
        self.max_decisions = max(max_spans, MIN_DECISIONS)
        self.traces = traces
        self.spans = spans
        self.on_overflow = overflow
        self._reset()
        call_after_fork(self, "_reset")  # a forked worker never ends its parent's roots

    def _reset(self) -> None:
        """Nothing held, nothing decided, a fresh lock (at start and in a forked child)."""
        self._lock = threading.Lock()
        #: trace id -> its spans held, oldest trace first (insertion order)
        self._held: dict[int, list[Any]] = {}
        self._size = 0
        #: trace id -> its decision (a TAIL_DECISIONS value), oldest first
        self._decided: dict[int, str] = {}
        self.closed = False

    @property
    def held(self) -> int:
        """Spans held now (traces whose local root has not ended)."""
        return self._size

    def decision(self, span: Any) -> str:
        """What the local root ``span`` decides for its trace: ``error``, ``slow``,
        ``ratio`` or ``sampled_out``."""
        if span.status.status_code is _ERROR:
            return "error"
        for event in span.events:
            if event.name == "exception":
                return "error"
        if (span.end_time or 0) - (span.start_time or 0) >= self.threshold_ns:
            return "slow"
        if span.context.trace_id & _MASK64 < self.bound:
            return "ratio"
        return "sampled_out"

    def on_end(self, span: Any) -> list[Any] | None:
        """Take an ended span: the spans to export now (the whole trace when its local
        root kept it), or ``None``. After :meth:`close`, ``[span]`` (the pipeline counts it)."""
        tid = span.context.trace_id
        parent = span.parent
        root = parent is None or parent.is_remote
        if tid & _MASK64 < self.bound:  # kept by the ratio whatever else: never held
            if root:
                reason = self.decision(span)
                with self._lock:
                    first = tid not in self._decided
                    if first:
                        self._remember(tid, reason)
                if first:  # a second local root of the trace is not counted again
                    self.traces[reason].inc()
            self.spans["kept"].inc()
            return [span]
        out: list[Any] | None = None
        evicted = (0, 0)
        with self._lock:
            if self.closed:
                return [span]
            decided = self._decided.get(tid)
            if decided is None:
                if not root:  # held until its local root ends
                    held = self._held.get(tid)
                    if held is None:
                        self._held[tid] = [span]
                    else:
                        held.append(span)
                    self._size += 1
                    if self._size <= self.max_spans:
                        return None
                    evicted = self._evict()
                else:  # the local root decides for its trace
                    out = self._held.pop(tid, None)
                    if out is None:
                        out = [span]
                    else:
                        self._size -= len(out)
                        out.append(span)
                    decided = self.decision(span)
                    self._remember(tid, decided)
        if decided is None:  # over the bound: the traces held longest were evicted
            traces, spans = evicted
            self.traces["overflow"].inc(traces)
            self.spans["overflow"].inc(spans)
            if self.on_overflow is not None:
                self.on_overflow(spans)
            return None
        outcome = _OUTCOME[decided]
        if out is not None:
            self.traces[decided].inc()
            self.spans[outcome].inc(len(out))
            return out if outcome == "kept" else None
        self.spans[outcome].inc()  # a span of a trace decided before follows its decision
        return [span] if outcome == "kept" else None

    def _remember(self, tid: int, decision: str) -> None:
        decided = self._decided
        decided[tid] = decision
        if len(decided) > self.max_decisions:
            del decided[next(iter(decided))]

    def _evict(self) -> tuple[int, int]:
        """Evict the traces held longest until within the bound (under the lock): each is
        remembered as ``overflow``, so its later spans follow. Returns (traces, spans)."""
        n = traces = 0
        held = self._held
        while self._size > self.max_spans and held:
            tid = next(iter(held))
            spans = held.pop(tid)
            self._size -= len(spans)
            n += len(spans)
            traces += 1
            self._remember(tid, "overflow")
        return traces, n

    def close(self) -> int:
        """Stop holding spans (shutdown): drop what is held and return how many spans that
        was; later spans are handed back by :meth:`on_end`."""
        with self._lock:
            self.closed = True
            n = self._size
            self._held.clear()
            self._size = 0
        return n
