"""Traces over the real wire: OTLP/HTTP protobuf to a loopback receiver, and its faults."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest

from mestres_observability import track_order
from mestres_observability.catalogue import SPAN_DROP_REASONS
from mestres_observability.testing import fresh_observability, sample_value
from mestres_observability.tracing import span, traced
from tests.otlp_receiver import OTLPReceiver, otlp_receiver  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

ORDER = {"id": "o-42", "user_id": "u-7", "status": "paid", "total_amount": Decimal("19.99"),
         "items": [{"product_id": "cafe", "quantity": 2, "price": Decimal("9.995")}]}


@track_order
def create_order() -> dict[str, Any]:
    with span("validate_inventory", warehouse="sp-1"):
        pass
    with span("charge_card"):
        pass
    return ORDER


class Boom(Exception):
    pass


@traced("risky_step")
def risky() -> None:
    raise Boom("nope")


def dropped_metric(obs: Any) -> dict[str, int]:
    """``mestres_observability_spans_dropped_total`` as exposed, by reason."""
    return {r: int(sample_value("mestres_observability_spans_dropped_total", obs, reason=r))
            for r in SPAN_DROP_REASONS}


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "sdk"])
def test_spans_links_attributes_resource_and_status(otlp_receiver: OTLPReceiver,  # noqa: F811
                                                    lean: bool) -> None:
    rx = otlp_receiver
    with fresh_observability(otlp_endpoint=rx.endpoint, service_name="otlp-test",
                             lean_spans=lean) as obs:
        assert obs.tracing.lean is lean
        # lean spans: encoded by the library, sent by the exporter's client
        assert (obs.tracing._pipeline.fast_send is not None) is lean
        assert create_order() is ORDER
        with pytest.raises(Boom):
            risky()
    rx.wait_for(lambda: {"process_order", "validate_inventory", "charge_card",
                         "risky_step"} <= rx.span_names())
    assert rx.bad_requests == []
    order = rx.by_name("process_order")
    child = rx.by_name("validate_inventory")
    assert child.parent_span_id == order.span_id
    assert child.trace_id == order.trace_id
    assert rx.by_name("charge_card").parent_span_id == order.span_id
    assert child.attributes == {"warehouse": "sp-1"}
    assert order.attributes["order.id"] == "o-42"
    assert order.attributes["order.user_id"] == "u-7"
    assert order.attributes["order.items_count"] == 1
    assert order.attributes["order.total_amount"] == pytest.approx(19.99)
    assert isinstance(order.attributes["order.total_amount"], float)
    assert order.attributes["order.status"] == "paid"
    for key in ("service.name", "service.version", "deployment.environment.name",
                "service.instance.id"):
        assert key in order.resource
    failed = rx.by_name("risky_step")
    assert failed.status_code == 2  # STATUS_CODE_ERROR
    assert "exception" in failed.events
    assert order.status_code != 2
    assert len({s.span_id for s in rx.spans}) == len(rx.spans)  # each span exactly once


def test_retry_after_503_delivers_exactly_once() -> None:
    with OTLPReceiver("503", failures=1, retry_after="1") as rx:
        with fresh_observability(otlp_endpoint=rx.endpoint, otlp_timeout=5.0,
                                 shutdown_timeout=8.0) as obs:
            for i in range(5):
                with span(f"step-{i}"):
                    pass
            obs.shutdown()
        rx.wait_for(lambda: len(rx.spans) == 5)
        assert rx.requests == 2
        assert sorted(s.name for s in rx.spans) == [f"step-{i}" for i in range(5)]


def test_long_retry_after_gives_up_and_counts() -> None:
    with OTLPReceiver("503", failures=100, retry_after="3600") as rx, \
            fresh_observability(otlp_endpoint=rx.endpoint) as obs:
        with span("lost"):
            pass
        started = time.monotonic()
        obs.shutdown()
        assert time.monotonic() - started < 3.0
        assert rx.requests == 1
        assert dropped_metric(obs) == obs.tracing.dropped_by_reason
        assert obs.tracing.dropped_by_reason["export_failed"] == 1


def test_400_is_not_retried_and_counted() -> None:
    with OTLPReceiver("400") as rx, fresh_observability(otlp_endpoint=rx.endpoint) as obs:
        for _ in range(3):
            with span("rejected"):
                pass
        obs.shutdown()
        assert rx.requests == 1
        assert dropped_metric(obs) == obs.tracing.dropped_by_reason
        assert obs.tracing.dropped_by_reason["export_failed"] == 3
        assert obs.tracing.dropped == 3


def test_partial_success_still_delivers() -> None:
    with OTLPReceiver("partial") as rx:
        with fresh_observability(otlp_endpoint=rx.endpoint) as obs:
            with span("partly"):
                pass
            obs.shutdown()
        assert rx.span_names() == {"partly"}


def _time_calls(n: int) -> float:
    @traced("hot")
    def hot(x: int) -> int:
        return x + 1

    started = time.perf_counter()
    for i in range(n):
        assert hot(i) == i + 1
    return time.perf_counter() - started


@pytest.mark.parametrize("mode", ["closed", "hang", "trickle"])
def test_collector_down_or_hanging_keeps_speed_and_bounded_shutdown(mode: str) -> None:
    with fresh_observability(traces_exporter="none"):
        _time_calls(200)  # warm-up
        baseline = min(_time_calls(2000) for _ in range(3))
    rx = OTLPReceiver(mode).start() if mode != "closed" else None
    endpoint = rx.endpoint if rx is not None else OTLPReceiver.closed_port()
    try:
        with fresh_observability(otlp_endpoint=endpoint, span_queue_size=512) as obs:
            elapsed = _time_calls(2000)
            started = time.monotonic()
            obs.shutdown()  # default bound: shutdown_timeout = 5 s
            took = time.monotonic() - started
            # never held by the exporter (one blocked export retry alone takes about 1 s);
            # a generous bound, as this machine is shared and noisy
            assert elapsed < max(5 * baseline, baseline + 0.75), (elapsed, baseline)
            assert took <= 5.5, took
            # every span is accounted for, once shutdown() returned: none exported, all
            # dropped (in flight or queued when the bound expired: "shutdown")
            assert obs.tracing.exported == 0
            assert obs.tracing.dropped == 2000, obs.tracing.dropped_by_reason
            assert dropped_metric(obs) == obs.tracing.dropped_by_reason
    finally:
        if rx is not None:
            rx.stop()


def _export_threads() -> list[Any]:
    import threading

    return [t for t in threading.enumerate() if t.name == "mestres-observability-span-export"]


def test_trickling_collector_one_export_ends_within_its_deadline() -> None:
    """RELIABILITY: a collector answering one byte every 0.5 s resets a per-read timeout
    forever; the export's total deadline (``otlp_timeout`` + grace) ends it anyway, and
    its span is counted ``export_timeout``."""
    with OTLPReceiver("trickle") as rx, fresh_observability(
            otlp_endpoint=rx.endpoint, otlp_timeout=1.0, shutdown_timeout=10.0) as obs:
        with span("trickled"):
            pass
        started = time.monotonic()
        obs.shutdown()  # flushes the one span: one export
        took = time.monotonic() - started
        assert rx.requests == 1
        assert rx.trickled >= 1  # the answer was on its way: every read succeeded
        assert took <= 1.0 + 1.0, took  # otlp_timeout + slack, far below the 10 s bound
        assert obs.tracing.exported == 0
        assert obs.tracing.dropped_by_reason == {"queue_full": 0, "export_failed": 0,
                                                 "export_timeout": 1, "shutdown": 0}
        assert dropped_metric(obs) == obs.tracing.dropped_by_reason
        assert len(_export_threads()) <= 1  # the abandoned export: one thread, no pile-up


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "sdk"])
def test_trickling_collector_every_span_counted_by_reason_within_the_shutdown_bound(
        lean: bool) -> None:
    """2,000 spans against a trickling collector, then shutdown (default bounds: 2 s per
    export, 5 s for the shutdown): when shutdown() returns, exported + dropped == created
    exactly, by reason, and /metrics says the same; lean spans and SDK spans alike."""
    with OTLPReceiver("trickle") as rx, fresh_observability(otlp_endpoint=rx.endpoint,
                                                            lean_spans=lean) as obs:
        assert obs.tracing.lean is lean
        for i in range(2000):
            with span(f"s{i % 7}"):
                pass
        started = time.monotonic()
        obs.shutdown()
        took = time.monotonic() - started
        handle = obs.tracing
        assert took <= 5.0 + 0.5, took
        assert handle.exported + handle.dropped == 2000, (handle.exported, handle.dropped)
        assert handle.exported == 0
        by_reason = handle.dropped_by_reason
        # batches abandoned at (or waiting behind) the deadline; the rest at the bound
        assert by_reason["export_timeout"] >= 512, by_reason
        assert by_reason["export_timeout"] + by_reason["shutdown"] == 2000, by_reason
        assert dropped_metric(obs) == by_reason
        assert rx.requests == 1  # one stuck export at a time: no request pile-up
        assert len(_export_threads()) <= 1
        time.sleep(0.3)  # nothing is counted after shutdown() returned
        assert handle.dropped_by_reason == by_reason
        assert dropped_metric(obs) == by_reason


def test_trickling_collector_leaves_request_latency_alone() -> None:
    """Requests served by an instrumented Flask app take as long with a trickling
    collector as with no exporter at all: the export blocks its own threads only."""
    flask = pytest.importorskip("flask")
    from mestres_observability.flask import instrument

    def serve(n: int, **settings: Any) -> float:
        with fresh_observability(span_queue_size=256, **settings) as obs:
            app = flask.Flask("trickle")

            @app.get("/orders/<oid>")
            def order(oid: str) -> str:
                with span("load_order"):
                    return oid

            instrument(app, obs)
            client = app.test_client()
            client.get("/orders/warm-up")
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                for i in range(n):
                    assert client.get(f"/orders/{i}").status_code == 200
                best = min(best, time.perf_counter() - started)
            obs.shutdown()
            return best

    baseline = serve(300, traces_exporter="none")
    with OTLPReceiver("trickle") as rx:
        stuck = serve(300, otlp_endpoint=rx.endpoint)
        assert rx.requests >= 1  # an export was stuck while the requests ran
    # a generous bound, as this machine is shared and noisy
    assert stuck < max(2 * baseline, baseline + 0.5), (stuck, baseline)


def test_shutdown_twice_and_concurrently_is_bounded() -> None:
    import threading

    with OTLPReceiver("hang") as rx, fresh_observability(otlp_endpoint=rx.endpoint, otlp_timeout=0.5,
                             shutdown_timeout=1.0) as obs:
        with span("x"):
            pass
        started = time.monotonic()
        threads = [threading.Thread(target=obs.tracing.shutdown, args=(1.0,))
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        obs.shutdown()
        assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "sdk"])
def test_burst_accounting_created_equals_exported_plus_dropped(lean: bool) -> None:
    from tests._support import wait_until

    with OTLPReceiver("ok") as rx, fresh_observability(
        otlp_endpoint=rx.endpoint, span_queue_size=16, otlp_timeout=0.5, shutdown_timeout=2.0,
        lean_spans=lean,
    ) as obs:
        assert obs.tracing.lean is lean
        for _ in range(3000):
            with span("burst"):
                pass
        obs.shutdown()
        handle = obs.tracing
        wait_until(lambda: handle.exported + handle.dropped == 3000, timeout=5.0,
                   message="every span exported or counted as dropped")
        assert handle.dropped > 0
        wait_until(lambda: len(rx.spans) == handle.exported, timeout=5.0)
        assert dropped_metric(obs) == handle.dropped_by_reason


def test_traces_endpoint_and_headers_from_the_environment_reach_the_wire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is used as given (it beats the base endpoint) and
    ``OTEL_EXPORTER_OTLP_HEADERS`` is sent with every export."""
    from mestres_observability import ObservabilityConfig

    with OTLPReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", OTLPReceiver.closed_port())
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rx.endpoint + "/v1/traces")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret,x-tenant=cafe")
        cfg = ObservabilityConfig.from_env()
        assert cfg.effective_traces_exporter == "otlp"
        with fresh_observability(otlp_endpoint=cfg.otlp_endpoint,
                                 otlp_traces_endpoint=cfg.otlp_traces_endpoint,
                                 otlp_headers=cfg.otlp_headers) as obs:
            with span("with-headers"):
                pass
            obs.shutdown()
        rx.wait_for(lambda: "with-headers" in rx.span_names())
        assert rx.bad_requests == []
        assert rx.headers[0]["x-api-key"] == "s3cret"
        assert rx.headers[0]["x-tenant"] == "cafe"
        assert obs.tracing.dropped == 0


def test_default_exporter_timeout_bounds_one_hung_export() -> None:
    """The default ``otlp_timeout`` (2 s) ends an export the collector never answers: the
    shutdown waits for it, not for its own (longer) bound, and the span is counted."""
    with OTLPReceiver("hang") as rx, fresh_observability(otlp_endpoint=rx.endpoint,
                                                         shutdown_timeout=8.0) as obs:
        with span("never-answered"):
            pass
        started = time.monotonic()
        obs.shutdown()
        took = time.monotonic() - started
        assert 1.5 <= took <= 4.0, took
        assert obs.tracing.dropped == 1
        assert dropped_metric(obs) == obs.tracing.dropped_by_reason


_EXIT_WITHOUT_SHUTDOWN = """
import sys, time
from mestres_observability import init_observability
from mestres_observability.tracing import span

init_observability(otlp_endpoint=sys.argv[1], configure_logging=False, otlp_timeout=30.0,
                   shutdown_timeout=1.0)
for i in range(3):
    with span(f"at-exit-{i}"):
        pass
print(time.time(), flush=True)  # the interpreter exits next: atexit hooks run
"""


@pytest.mark.parametrize("mode", ["ok", "hang"])
def test_process_exit_flushes_within_the_bound_without_shutdown(mode: str) -> None:
    """The library's own atexit hook flushes pending spans and never waits longer than
    ``shutdown_timeout``, even with an export timeout of 30 s against a hung collector
    (the SDK's own exit hook, which would wait for it, is off)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESTRES_OBS_"))}
    with OTLPReceiver(mode) as rx:
        proc = subprocess.run([sys.executable, "-c", _EXIT_WITHOUT_SHUTDOWN, rx.endpoint],
                              capture_output=True, text=True, timeout=60, env=env, check=False)
        exited = time.time()
        assert proc.returncode == 0, proc.stderr
        at_exit = exited - float(proc.stdout.split()[-1])
        assert at_exit < 3.0, (at_exit, proc.stderr)
        if mode == "ok":
            rx.wait_for(lambda: {f"at-exit-{i}" for i in range(3)} <= rx.span_names())
        else:
            rx.wait_for(lambda: rx.requests == 1)  # the flush was attempted, then abandoned
            assert rx.spans == []


def test_restored_instance_exports_after_fresh_observability(
        otlp_receiver: OTLPReceiver) -> None:  # noqa: F811
    """fresh_observability() suspends the instance it replaces: once the block ends, that
    instance is current again and its spans reach its collector (they were dropped as
    after-shutdown when the inner init retired its pipeline)."""
    rx = otlp_receiver
    with fresh_observability(otlp_endpoint=rx.endpoint, service_name="outer") as outer:
        with span("before_suspend"):
            pass
        with fresh_observability(service_name="inner", traces_exporter="none"), \
                span("while_suspended"):
            pass
        with span("after_restore"):
            pass
        assert outer.tracing.dropped == 0
    rx.wait_for(lambda: {"before_suspend", "after_restore"} <= rx.span_names())
    assert "while_suspended" not in rx.span_names()  # the inner instance exports nothing
