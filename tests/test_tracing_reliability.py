"""Export deadline and span drop accounting, against exporters that misbehave in process.

The same faults over a real socket (a collector that hangs or trickles its answer) are in
``tests/integration/test_otlp_export.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from mestres_observability import tracing
from mestres_observability.testing import fresh_observability
from mestres_observability.tracing import span
from tests._support import wait_until

METRIC = "mestres_observability_spans_dropped_total"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


class StuckExporter:
    """Blocks every export until :attr:`release` is set (a collector that never answers)."""

    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.release = threading.Event()
        self.result = result
        self.calls = 0
        self.returned = 0
        self.contexts: list[Any] = []
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, get_value

        with self._lock:
            self.calls += 1
            self.contexts.append(get_value(_SUPPRESS_INSTRUMENTATION_KEY))
        self.release.wait(30)
        with self._lock:
            self.returned += 1
        return self.result

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@pytest.fixture
def stuck(monkeypatch: pytest.MonkeyPatch) -> Iterator[StuckExporter]:
    """Every instance built in the test exports through one :class:`StuckExporter`."""
    exporter = StuckExporter()
    monkeypatch.setattr(tracing, "_exporter", lambda config, name: exporter)
    yield exporter
    exporter.release.set()


@pytest.fixture(autouse=True, params=["lean", "sdk"])
def span_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: the library's spans as lean spans (the default), then as SDK spans;
    both share one queue bound, one drop ledger and one shutdown deadline."""
    if request.param == "sdk":
        monkeypatch.setattr(tracing, "_lean_tracer", lambda *args: None)
    return str(request.param)


def exposed(obs: Any) -> dict[str, float]:
    """``mestres_observability_spans_dropped_total`` as ``/metrics`` shows it, by label set."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    body = obs.render_metrics(accept=OPENMETRICS).body.decode()
    return {",".join(f"{k}={v}" for k, v in sorted(s.labels.items())): s.value
            for f in text_string_to_metric_families(body) for s in f.samples
            if s.name == METRIC}


def end_spans(n: int) -> None:
    for i in range(n):
        with span(f"s{i % 3}") as sp:
            assert type(sp).__name__ == ("LeanSpan" if _PATH[0] == "lean" else "_Span")


_PATH = ["lean"]


@pytest.fixture(autouse=True)
def _path_seen(span_path: str) -> None:
    _PATH[0] = span_path


def export_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mestres-observability-span-export"]


# ---------------------------------------------------------------------- item 5: drop counter
def test_queue_full_drops_reach_metrics_at_once_without_any_export(stuck: StuckExporter) -> None:
    """With the exporter stuck on its first batch, every span beyond the queue is on
    ``/metrics`` the moment it is dropped, not at the next export (which never comes)."""
    with fresh_observability(traces_exporter="console", span_queue_size=16, otlp_timeout=30.0,
                             shutdown_timeout=1.0) as obs:
        end_spans(16)  # one batch: the SDK's worker hands it over, the exporter blocks
        wait_until(lambda: stuck.calls == 1, timeout=5.0, message="the first export")
        end_spans(16)  # the queue again
        assert obs.tracing.dropped == 0
        for n in (1, 7, 100):
            end_spans(n)
            dropped = obs.tracing.dropped
            assert dropped > 0
            # equal right away, with no export having finished
            assert sum(exposed(obs).values()) == dropped
            assert obs.tracing.dropped_by_reason["queue_full"] == dropped
            assert stuck.returned == 0
        assert dropped == 108
        obs.shutdown()  # the bound (1 s) expires: the stuck batch and the queue are counted
        assert obs.tracing.exported + obs.tracing.dropped == 16 + 16 + 108
        assert obs.tracing.dropped_by_reason == {"queue_full": 108, "export_failed": 0,
                                                 "export_timeout": 0, "shutdown": 32}


def test_every_reason_is_exposed_from_the_first_scrape() -> None:
    from mestres_observability.catalogue import SPAN_DROP_REASONS

    with fresh_observability(traces_exporter="none") as obs:
        assert exposed(obs) == {f"reason={r}": 0.0 for r in SPAN_DROP_REASONS}


# ---------------------------------------------------------------------- item 4: export deadline
def test_an_export_past_its_deadline_is_abandoned_and_counted(stuck: StuckExporter) -> None:
    with fresh_observability(traces_exporter="console", span_queue_size=8, otlp_timeout=0.3,
                             shutdown_timeout=5.0) as obs:
        started = time.monotonic()
        end_spans(8)  # a full batch: exported at once, on the exporter's worker thread
        wait_until(lambda: obs.tracing.dropped_by_reason["export_timeout"] == 8, timeout=3.0,
                   message="the batch abandoned at its deadline")
        took = time.monotonic() - started
        assert 0.3 <= took <= 0.3 + tracing.EXPORT_GRACE + 0.5, took
        assert stuck.calls == 1
        assert stuck.returned == 0  # still blocked: abandoned
        assert sum(exposed(obs).values()) == 8
        # the SDK suppresses instrumentation while it exports: the worker has that context
        assert stuck.contexts == [True]
        # the next batch waits for the abandoned export within its own deadline, then
        # is dropped: no second export thread, no second call
        end_spans(8)
        wait_until(lambda: obs.tracing.dropped_by_reason["export_timeout"] == 16, timeout=3.0,
                   message="the batch behind the stuck export")
        assert stuck.calls == 1
        assert len(export_threads()) == 1
        # the stuck export returns (success, too late): nothing more is counted, and the
        # next batch is exported again
        stuck.release.set()
        wait_until(lambda: not export_threads(), timeout=3.0, message="the worker ends")
        assert obs.tracing.exported == 0
        end_spans(8)
        wait_until(lambda: obs.tracing.exported == 8, timeout=3.0, message="the next export")
        obs.shutdown()
        assert obs.tracing.exported + obs.tracing.dropped == 24
        assert obs.tracing.dropped_by_reason["export_timeout"] == 16


def test_failed_and_raising_exports_are_counted_export_failed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Failing:
        def __init__(self) -> None:
            self.calls = 0

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            self.calls += 1
            if self.calls == 1:
                return SpanExportResult.FAILURE
            raise OSError("collector gone")

        def shutdown(self) -> None:
            pass

    exporter = Failing()
    monkeypatch.setattr(tracing, "_exporter", lambda config, name: exporter)
    with fresh_observability(traces_exporter="console", span_queue_size=4) as obs:
        end_spans(4)
        wait_until(lambda: exporter.calls == 1, timeout=3.0)
        end_spans(4)
        obs.shutdown()
        assert obs.tracing.dropped_by_reason == {"queue_full": 0, "export_failed": 8,
                                                 "export_timeout": 0, "shutdown": 0}
        assert exposed(obs)["reason=export_failed"] == 8


def test_spans_ended_after_shutdown_are_counted_as_shutdown(stuck: StuckExporter) -> None:
    stuck.release.set()
    with fresh_observability(traces_exporter="console") as obs:
        end_spans(3)
        obs.tracing.shutdown(2.0)
        assert obs.tracing.exported == 3
        handle = obs.tracing
    # the handle is detached from the provider now; its pipeline still refuses what
    # reaches it directly (a span that ended while shutdown ran)
    pipeline = handle._pipeline
    assert pipeline is not None
    from opentelemetry.sdk.trace import TracerProvider

    late = TracerProvider().get_tracer("t").start_span("late")
    late.end()
    pipeline.on_end(late)  # type: ignore[arg-type]
    assert handle.dropped_by_reason["shutdown"] == 1
    assert handle.exported + handle.dropped == 4


def test_the_ledger_is_exact_under_concurrent_spans_and_shutdown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """8 threads end spans while a slow exporter works and shutdown's bound expires
    mid-flush: every span the threads ended is, once shutdown() returned, exported or
    dropped exactly once, and /metrics agrees.

    The spans are counted where they end (in the threads), not by wrapping a pipeline
    method: lean spans reach the pipeline through the delegating processor's
    ``end_lean``, whose usual case bypasses ``on_end``, so a wrapper on one entry point
    sees only some of them."""

    class Slow:
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            time.sleep(0.02)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    monkeypatch.setattr(tracing, "_exporter", lambda config, name: Slow())
    with fresh_observability(traces_exporter="console", span_queue_size=64) as obs:
        handle = obs.tracing
        pipeline = handle._pipeline
        assert pipeline is not None
        ended = [0] * 8  # one slot per thread: no lock needed
        stop = threading.Event()

        def work(i: int) -> None:
            while not stop.is_set():
                with span("c"):
                    pass
                ended[i] += 1

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        pipeline.shutdown(0.05)  # the threads still end spans into it, counted "shutdown"
        stop.set()
        for t in threads:
            t.join()
        assert handle.exported + handle.dropped == sum(ended), handle.dropped_by_reason
        assert handle.dropped_by_reason["shutdown"] > 0
        assert handle.exported > 0
        assert sum(exposed(obs).values()) == handle.dropped
        exported_then = handle.exported
        time.sleep(0.1)  # the SDK's worker may still hand batches: none is exported any more
        assert handle.exported == exported_then
