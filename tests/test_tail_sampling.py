"""Tail sampling ("keep the failed checkouts", issue 16): traces decided when their local root
span ends, kept whole when it errored or was slow, plus a ratio of the rest; bounded, counted.

Wire tests export to a real OTLP/HTTP receiver on loopback (``tests.otlp_receiver``) through
the lean span path and the SDK path; the property tests drive the sampler with random span
trees, endings in any order, and a small bound.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

from mestres_observability import ObservabilityConfig, span
from mestres_observability._tailsample import MIN_DECISIONS, TailSampler
from mestres_observability.catalogue import TAIL_DECISIONS, TAIL_SPAN_OUTCOMES
from mestres_observability.errors import ConfigurationError
from mestres_observability.testing import captured_spans, fresh_observability, sample_value
from tests._support import require_module
from tests.otlp_receiver import OTLPReceiver

MASK64 = (1 << 64) - 1
TRACES = "mestres_observability_tail_sampling_traces_total"
SPANS = "mestres_observability_tail_sampling_spans_total"
DROPPED = "mestres_observability_spans_dropped_total"
LEAN = pytest.mark.parametrize("lean", [True, False], ids=["lean", "sdk"])


@pytest.fixture
def rx() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as receiver:
        yield receiver


def decisions(obs: Any) -> dict[str, int]:
    return {d: int(sample_value(TRACES, obs, decision=d)) for d in TAIL_DECISIONS}


def outcomes(obs: Any) -> dict[str, int]:
    return {o: int(sample_value(SPANS, obs, outcome=o)) for o in TAIL_SPAN_OUTCOMES}


def by_trace(rx: OTLPReceiver) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for s in rx.received():
        out[s.trace_id].add(s.name)
    return dict(out)


def tail(obs: Any) -> TailSampler:
    sampler = obs.tracing._pipeline.tail
    assert sampler is not None
    return sampler


# ---------------------------------------------------------------------- settings
def test_settings_defaults_environment_and_validation() -> None:
    cfg = ObservabilityConfig()
    assert (cfg.tail_sampling, cfg.tail_sampling_latency_threshold, cfg.tail_sampling_ratio,
            cfg.tail_sampling_max_spans) == (False, 2.0, 0.1, 10000)
    env = ObservabilityConfig.from_env({
        "MESTRES_OBS_TAIL_SAMPLING": "true", "MESTRES_OBS_TAIL_SAMPLING_LATENCY_THRESHOLD": "0.5",
        "MESTRES_OBS_TAIL_SAMPLING_RATIO": "0.25", "MESTRES_OBS_TAIL_SAMPLING_MAX_SPANS": "50"})
    assert (env.tail_sampling, env.tail_sampling_latency_threshold, env.tail_sampling_ratio,
            env.tail_sampling_max_spans) == (True, 0.5, 0.25, 50)
    with pytest.raises(ConfigurationError, match="tail_sampling_ratio"):
        ObservabilityConfig(tail_sampling_ratio=1.5)
    with pytest.raises(ConfigurationError, match="MESTRES_OBS_TAIL_SAMPLING_RATIO"):
        ObservabilityConfig.from_env({"MESTRES_OBS_TAIL_SAMPLING_RATIO": "2"})
    with pytest.raises(ConfigurationError, match="tail_sampling_max_spans"):
        ObservabilityConfig(tail_sampling_max_spans=0)
    with pytest.raises(ConfigurationError, match="tail_sampling_latency_threshold"):
        ObservabilityConfig(tail_sampling_latency_threshold=-1)


def test_off_by_default_every_span_goes_straight_on(rx: OTLPReceiver) -> None:
    with fresh_observability(otlp_endpoint=rx.endpoint) as obs:
        assert obs.tracing._pipeline.tail is None
        with span("root"), span("child"):
            pass
        assert decisions(obs) == dict.fromkeys(TAIL_DECISIONS, 0)  # exposed from the start
    rx.wait_for(lambda: {"root", "child"} <= rx.span_names())


def test_a_head_sampler_that_drops_traces_is_warned_about(
        caplog: pytest.LogCaptureFixture, rx: OTLPReceiver) -> None:
    with caplog.at_level(logging.WARNING, "mestres_observability.tracing"), \
            fresh_observability(otlp_endpoint=rx.endpoint, tail_sampling=True,
                                traces_sampler="parentbased_traceidratio",
                                traces_sampler_arg=0.5):
        pass
    assert any("head sampler" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------- checkouts on the wire
@LEAN
def test_an_errored_flask_checkout_is_kept_whole_and_fast_ok_ones_are_not(
        rx: OTLPReceiver, lean: bool) -> None:
    flask = require_module("flask")
    from mestres_observability import track_order
    from mestres_observability.flask import instrument

    app = flask.Flask(__name__)
    user_tracer: list[Any] = []

    @track_order
    def place_order() -> dict[str, Any]:
        with span("reserve_stock"):
            pass
        with user_tracer[0].start_as_current_span("charge_card"):  # the user's own SDK span
            pass
        return {"order_id": "o-1", "user_id": "u-1", "total": 10, "items": [], "status": "paid"}

    @app.post("/checkout")
    def checkout() -> Any:
        place_order()
        if flask.request.args.get("fail"):
            raise RuntimeError("payment gateway down")
        return {"ok": True}

    with fresh_observability(otlp_endpoint=rx.endpoint, lean_spans=lean, tail_sampling=True,
                             tail_sampling_ratio=0.0, tail_sampling_latency_threshold=30.0
                             ) as obs:
        assert obs.tracing.lean is lean
        user_tracer.append(obs.tracing.provider.get_tracer("shop"))
        instrument(app)
        c = app.test_client()
        for _ in range(5):
            assert c.post("/checkout").status_code == 200
        assert c.post("/checkout?fail=1").status_code == 500
        assert decisions(obs) == {"error": 1, "slow": 0, "ratio": 0, "sampled_out": 5,
                                  "overflow": 0}
        assert outcomes(obs) == {"kept": 4, "sampled_out": 20, "overflow": 0}
        assert tail(obs).held == 0
    rx.wait_for(lambda: "POST /checkout" in rx.span_names())
    traces = by_trace(rx)
    assert list(traces.values()) == [{"POST /checkout", "process_order", "reserve_stock",
                                      "charge_card"}]
    server = rx.by_name("POST /checkout")
    assert server.status_code == 2  # ERROR
    ids = {s.span_id for s in rx.received()}
    for s in rx.received():
        assert s.parent_span_id in ids or s is server  # every parent is on the wire too
    assert obs.tracing.dropped == 0


@LEAN
def test_a_slow_fastapi_checkout_is_kept_a_fast_one_is_not(rx: OTLPReceiver, lean: bool) -> None:
    require_module("fastapi")
    require_module("httpx")
    import asyncio

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mestres_observability.fastapi import instrument

    app = FastAPI()

    @app.get("/checkout/{mode}")
    async def checkout(mode: str) -> dict[str, str]:
        with span("price_cart"):
            if mode == "slow":
                await asyncio.sleep(1.2)
        return {"mode": mode}

    with fresh_observability(otlp_endpoint=rx.endpoint, lean_spans=lean, tail_sampling=True,
                             tail_sampling_ratio=0.0, tail_sampling_latency_threshold=1.0
                             ) as obs:
        assert obs.tracing.lean is lean
        instrument(app)
        with TestClient(app) as c:
            assert c.get("/checkout/fast").status_code == 200
            assert c.get("/checkout/slow").status_code == 200
        assert decisions(obs)["slow"] == 1
        assert decisions(obs)["sampled_out"] == 1
    rx.wait_for(lambda: "GET /checkout/{mode}" in rx.span_names())
    [names] = by_trace(rx).values()
    assert names == {"GET /checkout/{mode}", "price_cart"}
    assert rx.by_name("GET /checkout/{mode}").attributes["url.path"] == "/checkout/slow"


@LEAN
@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_fast_ok_traces_are_kept_by_trace_id_at_the_ratio(rx: OTLPReceiver, lean: bool,
                                                          ratio: float) -> None:
    roots: dict[str, bool] = {}
    bound = round(ratio * (1 << 64))
    with fresh_observability(otlp_endpoint=rx.endpoint, lean_spans=lean, tail_sampling=True,
                             tail_sampling_ratio=ratio, span_queue_size=4096) as obs:
        for _ in range(400):
            with span("root") as root, span("child"):
                tid = root.get_span_context().trace_id
                roots[format(tid, "032x")] = tid & MASK64 < bound  # TraceIdRatioBased's rule
        kept = sum(roots.values())
        assert decisions(obs) == {"error": 0, "slow": 0, "ratio": kept,
                                  "sampled_out": 400 - kept, "overflow": 0}
    if ratio == 0.0:
        assert kept == 0
    elif ratio == 1.0:
        assert kept == 400
    else:  # binomial(400, 0.5): sd 10, six of them either way
        assert 140 <= kept <= 260
    if kept:
        rx.wait_for(lambda: len(rx.received()) >= 2 * kept)
    else:
        time.sleep(0.2)
    traces = by_trace(rx)
    assert set(traces) == {t for t, k in roots.items() if k}
    assert all(names == {"root", "child"} for names in traces.values())


@LEAN
def test_children_ending_after_the_root_follow_its_decision(rx: OTLPReceiver,
                                                            lean: bool) -> None:
    with fresh_observability(otlp_endpoint=rx.endpoint, lean_spans=lean, tail_sampling=True,
                             tail_sampling_ratio=0.0) as obs:
        tracer = obs.tracing.own_tracer
        late = {}
        for name in ("failed", "fine"):
            root = tracer.start_span(name)
            ctx = trace.set_span_in_context(root)
            late[name] = tracer.start_span(f"{name}.late", context=ctx)  # a background task
            tracer.start_span(f"{name}.early", context=ctx).end()
            if name == "failed":
                root.set_status(Status(StatusCode.ERROR, "card declined"))
            root.end()
        assert tail(obs).held == 0
        late["failed"].end()
        late["fine"].end()
        assert outcomes(obs) == {"kept": 3, "sampled_out": 3, "overflow": 0}
    rx.wait_for(lambda: "failed.late" in rx.span_names())
    assert rx.span_names() == {"failed", "failed.early", "failed.late"}


def test_a_root_whose_parent_is_remote_is_a_local_root_and_an_exception_event_counts(
        rx: OTLPReceiver) -> None:
    remote = NonRecordingSpan(SpanContext(0xABC << 64, 0x42, True, TraceFlags(1)))
    with fresh_observability(otlp_endpoint=rx.endpoint, tail_sampling=True,
                             tail_sampling_ratio=0.0) as obs:
        tracer = obs.tracing.own_tracer
        with tracer.start_as_current_span("incoming", context=trace.set_span_in_context(remote)
                                          ) as root:
            with span("work"):
                pass
            root.record_exception(ValueError("handled, but recorded"))
        assert decisions(obs)["error"] == 1
    rx.wait_for(lambda: {"incoming", "work"} <= rx.span_names())
    assert rx.by_name("incoming").parent_span_id == format(0x42, "016x")


# ---------------------------------------------------------------------- bound, overflow, shutdown
@LEAN
def test_overflow_evicts_the_oldest_trace_whole_and_counts_it(rx: OTLPReceiver,
                                                              lean: bool) -> None:
    with fresh_observability(otlp_endpoint=rx.endpoint, lean_spans=lean, tail_sampling=True,
                             tail_sampling_ratio=0.0, tail_sampling_max_spans=5) as obs:
        tracer = obs.tracing.own_tracer
        sampler = tail(obs)
        errors_before = sample_value("mestres_observability_errors_total", obs,
                                     component="tracing")
        old = tracer.start_span("old")  # a request that never seems to end
        for _ in range(4):
            tracer.start_span("old.child", context=trace.set_span_in_context(old)).end()
        assert sampler.held == 4
        new = tracer.start_span("new")
        for _ in range(3):
            tracer.start_span("new.child", context=trace.set_span_in_context(new)).end()
            assert sampler.held <= 5
        assert sampler.held == 3  # "old" evicted whole when the bound was passed
        assert decisions(obs)["overflow"] == 1
        assert outcomes(obs)["overflow"] == 4
        assert sample_value("mestres_observability_errors_total", obs,
                            component="tracing") == errors_before + 1
        old.set_status(Status(StatusCode.ERROR))
        old.end()  # its trace is gone: the root follows, nothing incomplete is exported
        new.set_status(Status(StatusCode.ERROR))
        new.end()
        assert outcomes(obs) == {"kept": 4, "sampled_out": 0, "overflow": 5}
        assert decisions(obs)["error"] == 1
    rx.wait_for(lambda: "new" in rx.span_names())
    assert sorted(s.name for s in rx.received()) == ["new", "new.child", "new.child",
                                                     "new.child"]


def test_memory_stays_bounded_under_many_open_traces(rx: OTLPReceiver) -> None:
    with fresh_observability(otlp_endpoint=rx.endpoint, tail_sampling=True,
                             tail_sampling_ratio=0.0, tail_sampling_max_spans=100) as obs:
        tracer = obs.tracing.own_tracer
        sampler = tail(obs)
        peak = 0
        for _ in range(2000):  # roots that never end: their children would pile up
            root = tracer.start_span("leaked")
            for _ in range(3):
                tracer.start_span("c", context=trace.set_span_in_context(root)).end()
            peak = max(peak, sampler.held)
        assert peak <= 100
        assert len(sampler._decided) <= max(100, MIN_DECISIONS)
        assert outcomes(obs)["overflow"] + sampler.held == 6000


def test_spans_still_held_at_shutdown_are_dropped_and_counted(rx: OTLPReceiver) -> None:
    with fresh_observability(otlp_endpoint=rx.endpoint, tail_sampling=True,
                             tail_sampling_ratio=0.0) as obs:
        tracer = obs.tracing.own_tracer
        root = tracer.start_span("in_flight")
        tracer.start_span("done", context=trace.set_span_in_context(root)).end()
        assert tail(obs).held == 1
    assert obs.tracing.dropped_by_reason["shutdown"] == 1
    assert sample_value(DROPPED, obs, reason="shutdown") == 1
    assert sample_value(SPANS, obs, outcome="sampled_out") == 0  # not a decision
    root.set_status(Status(StatusCode.ERROR))
    root.end()  # after shutdown: no longer this instance's
    time.sleep(0.2)
    assert rx.received() == []


def test_captured_spans_still_sees_every_span(rx: OTLPReceiver) -> None:
    with fresh_observability(otlp_endpoint=rx.endpoint, tail_sampling=True,
                             tail_sampling_ratio=0.0) as obs, captured_spans() as spans:
        with span("fast_ok"):
            pass
        assert decisions(obs)["sampled_out"] == 1
        assert spans.names() == ["fast_ok"]


def test_concurrent_requests_on_threads_each_arrive_whole_or_not_at_all(
        rx: OTLPReceiver) -> None:
    import threading

    failed: dict[str, int] = {}
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(40):
            try:
                with span("request") as root:
                    for _ in range(3):
                        with span("step"):
                            pass
                    if (n + i) % 5 == 0:
                        raise ValueError("declined")
            except ValueError:
                with lock:
                    failed[format(root.get_span_context().trace_id, "032x")] = 4

    with fresh_observability(otlp_endpoint=rx.endpoint, tail_sampling=True,
                             tail_sampling_ratio=0.0, span_queue_size=8192) as obs:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert tail(obs).held == 0
        assert decisions(obs)["error"] == len(failed) == 48
        assert outcomes(obs) == {"kept": 192, "sampled_out": 768, "overflow": 0}
    rx.wait_for(lambda: len(rx.received()) >= 192)
    got: dict[str, int] = defaultdict(int)
    for s in rx.received():
        got[s.trace_id] += 1
    assert dict(got) == failed


# ---------------------------------------------------------------------- properties
class Count:
    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


def readable(tid: int, sid: int, parent: int | None, *, remote: bool = False,
             error: bool = False, exception: bool = False, duration: int = 1) -> ReadableSpan:
    return ReadableSpan(
        name=f"s{sid}", context=SpanContext(tid, sid, False, TraceFlags(1)),
        parent=None if parent is None else SpanContext(tid, parent, remote, TraceFlags(1)),
        status=Status(StatusCode.ERROR) if error else Status(StatusCode.UNSET),
        events=(Event("exception"),) if exception else (), start_time=1_000,
        end_time=1_000 + duration)


@st.composite
def forests(draw: st.DrawFn) -> tuple[list[tuple[ReadableSpan, bool]], dict[int, tuple[str, int]]]:
    """Random traces (trees of spans, some under a remote parent, some with children that end
    after their root), interleaved: the spans in end order, whether each is the local root,
    and each trace's expected decision and size."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    traces: list[list[tuple[ReadableSpan, bool]]] = []
    expected: dict[int, tuple[str, int]] = {}
    for _ in range(draw(st.integers(1, 12))):
        tid = draw(st.integers(1, 2**128 - 1))
        if tid in expected:
            continue
        outcome = draw(st.sampled_from(["error", "exception", "slow", "fast"]))
        root_id = rng.getrandbits(63) + 1
        remote = draw(st.booleans())
        root = readable(tid, root_id, 7 if remote else None, remote=remote,
                        error=outcome == "error", exception=outcome == "exception",
                        duration=10_000 if outcome == "slow" else 10)
        early: list[tuple[ReadableSpan, bool]] = []
        late: list[tuple[ReadableSpan, bool]] = []
        ids = [root_id]
        for _ in range(draw(st.integers(0, 6))):
            sid = rng.getrandbits(63) + 1
            child = readable(tid, sid, rng.choice(ids), error=rng.random() < 0.2)
            ids.append(sid)
            (late if rng.random() < 0.25 else early).append((child, False))
        rng.shuffle(early)
        traces.append([*early, (root, True), *late])
        expected[tid] = ("error" if outcome == "exception" else outcome, len(ids))
    order: list[tuple[ReadableSpan, bool]] = []
    while any(traces):  # interleave the traces, each in its own end order
        t = rng.choice([t for t in traces if t])
        order.append(t.pop(0))
    return order, expected


@settings(max_examples=300, deadline=None)
@given(forests(), st.sampled_from([0.0, 0.3, 1.0]), st.integers(1, 40))
def test_a_trace_is_exported_whole_iff_its_local_root_keeps_it(
        forest: tuple[list[tuple[ReadableSpan, bool]], dict[int, tuple[str, int]]],
        ratio: float, max_spans: int) -> None:
    order, expected = forest
    traces = {d: Count() for d in TAIL_DECISIONS}
    spans = {o: Count() for o in TAIL_SPAN_OUTCOMES}
    overflowed: list[int] = []
    sampler = TailSampler(0.000005, ratio, max_spans, traces, spans, overflowed.append)
    out: dict[int, list[int]] = defaultdict(list)
    for sp, _ in order:
        for kept in sampler.on_end(sp) or ():
            out[kept.context.trace_id].append(kept.context.span_id)
        assert sampler.held <= max_spans
    bound = round(ratio * (1 << 64))
    evicted = {tid for tid, d in sampler._decided.items() if d == "overflow"}
    for tid, (outcome, size) in expected.items():
        by_ratio = tid & MASK64 < bound
        keep = outcome in ("error", "slow") or by_ratio
        if tid in evicted:  # dropped whole, only ever when the bound was passed
            assert not by_ratio
            assert tid not in out
            assert overflowed
        elif keep:
            assert len(out[tid]) == size == len(set(out[tid]))  # complete, each span once
        else:
            assert tid not in out
    # every span counted exactly once, every trace decided exactly once
    assert sum(c.value for c in spans.values()) == sum(size for _, size in expected.values())
    assert spans["kept"].value == sum(len(v) for v in out.values())
    # an evicted trace: its held spans reported at eviction, its later ones follow it
    assert spans["overflow"].value == sum(expected[tid][1] for tid in evicted)
    assert sum(overflowed) <= spans["overflow"].value
    assert sum(c.value for c in traces.values()) == len(expected)
    assert traces["overflow"].value == len(evicted)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forests(), st.booleans(), st.sampled_from([0.0, 0.5]))
def test_on_the_wire_a_trace_is_there_whole_iff_the_rule_keeps_it(
        forest: tuple[list[tuple[ReadableSpan, bool]], dict[int, tuple[str, int]]],
        lean: bool, ratio: float) -> None:
    """The same random trees, as real spans (lean or SDK) through the whole pipeline to a real
    OTLP receiver: each trace arrives complete, or not at all, as the rule says."""
    order, expected = forest
    with OTLPReceiver() as rx:
        with fresh_observability(otlp_endpoint=rx.endpoint, lean_spans=lean, tail_sampling=True,
                                 tail_sampling_ratio=ratio,
                                 tail_sampling_latency_threshold=0.000005) as obs:
            assert obs.tracing.lean is lean
            tracer = obs.tracing.own_tracer
            # the fake spans give the tree, the outcome and the end order; started for real
            # here (new ids: the trace ids are the tracer's, so the ratio is re-derived)
            real: dict[int, Any] = {}
            roots: dict[int, Any] = {}
            started: dict[tuple[int, int], Any] = {}
            for sp, _is_root in sorted(order, key=lambda x: x[0].parent is not None
                                       and not x[0].parent.is_remote):
                ctx = sp.context
                key = (ctx.trace_id, ctx.span_id)
                if _is_root:
                    parent = trace.set_span_in_context(NonRecordingSpan(sp.parent)) \
                        if sp.parent is not None else None
                    started[key] = roots[ctx.trace_id] = tracer.start_span(
                        sp.name, context=parent, start_time=sp.start_time)
            pending = [(sp, r) for sp, r in order if not r]
            while pending:  # start children once their parent is started
                rest = []
                for sp, r in pending:
                    p = started.get((sp.context.trace_id, sp.parent.span_id))
                    if p is None:
                        rest.append((sp, r))
                        continue
                    started[(sp.context.trace_id, sp.context.span_id)] = tracer.start_span(
                        sp.name, context=trace.set_span_in_context(p), start_time=sp.start_time)
                pending = rest
            for sp, _ in order:
                live = started[(sp.context.trace_id, sp.context.span_id)]
                if sp.status.status_code is StatusCode.ERROR:
                    live.set_status(Status(StatusCode.ERROR))
                if sp.events:
                    live.add_event("exception")
                live.end(end_time=sp.end_time)
            for tid, root in roots.items():
                real[tid] = root.get_span_context().trace_id
        bound = round(ratio * (1 << 64))
        want = {format(real[tid], "032x"): size for tid, (outcome, size) in expected.items()
                if outcome in ("error", "slow") or real[tid] & MASK64 < bound}
        if want:
            rx.wait_for(lambda: len(rx.received()) >= sum(want.values()))
        got = defaultdict(int)
        for s in rx.received():
            got[s.trace_id] += 1
        assert dict(got) == want


_FORK = r"""
import os, signal, sys, threading, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a threaded process
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from mestres_observability import init_observability

obs = init_observability(service_name="svc", configure_logging=False, traces_exporter="console",
                         tail_sampling=True, tail_sampling_ratio=0.0)
tail = obs.tracing._pipeline.tail
tracer = obs.tracing.own_tracer
root = tracer.start_span("parent_request")
tracer.start_span("held", context=trace.set_span_in_context(root)).end()
assert tail.held == 1
held, release = threading.Event(), threading.Event()

def hold():  # a parent thread inside the sampler at fork time
    with tail._lock:
        held.set()
        release.wait(60)

threading.Thread(target=hold, daemon=True).start()
assert held.wait(10)
pid = os.fork()
if pid == 0:
    signal.alarm(20)
    ok = tail._lock.acquire(timeout=2)
    if ok:
        tail._lock.release()
    ok = ok and tail.held == 0  # the parent's requests never end here
    child = tracer.start_span("child_request")
    child.set_status(Status(StatusCode.ERROR))
    kept = tail.on_end(child)  # decided here, as in any worker
    os._exit(0 if ok and kept == [child] else 4)
_, status = os.waitpid(pid, 0)
release.set()
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_worker_starts_with_an_empty_buffer_and_a_free_lock() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FORK], capture_output=True, text=True,
                         timeout=90, check=False)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
