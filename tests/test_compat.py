"""``mestres_observability._compat``: each accessor with the internal present and missing.

Present: the accessor does what the private attribute gives, checked through
public behaviour where there is one. Missing: the release no longer has the
internal (simulated with ``monkeypatch`` or a stand-in object); the accessor
falls back or turns its optimisation off, never raises, and logs once.

The last tests scan the package source: no other module reads another
library's private attribute (``tests/test_forksafe.py`` scans for fork hooks).
"""

from __future__ import annotations

import ast
import contextvars
import errno
import logging
import math
import os
import threading
from collections import deque
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

import mestres_observability
from mestres_observability import _compat
from mestres_observability.testing import fresh_observability, sample_value

PACKAGE = Path(mestres_observability.__file__).resolve().parent


@pytest.fixture(autouse=True)
def _fresh_degraded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with nothing logged as degraded."""
    monkeypatch.setattr(_compat, "_degraded", {})


def _degraded_once(caplog: pytest.LogCaptureFixture, feature: str) -> None:
    assert feature in _compat.degraded_features()
    lines = [r for r in caplog.records if feature in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].levelno == logging.WARNING


# ---------------------------------------------------------------------- logging once
def test_a_missing_internal_is_logged_once_per_feature(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        for _ in range(3):
            assert _compat.registry_collectors(SimpleNamespace()) == []
    _degraded_once(caplog, "CollectorRegistry collectors")


# ---------------------------------------------------------------------- value holder
def test_value_holder_counts_like_the_public_api() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["k"], registry=registry).labels("a")
    gauge = Gauge("g", "g", ["k"], registry=registry).labels("a")
    assert _compat.value_holder(counter) is not counter
    _compat.value_holder(counter).inc(1)
    counter.inc()
    holder = _compat.value_holder(gauge)
    holder.inc(1)
    holder.inc(1)
    holder.inc(-1)
    assert registry.get_sample_value("c_total", {"k": "a"}) == 2.0
    assert registry.get_sample_value("g", {"k": "a"}) == 1.0


def test_value_holder_missing_gives_the_child_itself() -> None:
    plain = SimpleNamespace(inc=lambda amount=1: None)  # no value holder
    assert _compat.value_holder(plain) is plain
    odd = SimpleNamespace(_value=3.0, inc=lambda amount=1: None)  # a holder without inc()
    assert _compat.value_holder(odd) is odd


def test_value_adder_adds_like_the_holders_inc() -> None:
    """The MutexValue form (its lock taken and released around the update) moves the
    gauge as ``inc`` does, and leaves the lock free."""
    registry = CollectorRegistry()
    gauge = Gauge("g", "g", ["k"], registry=registry).labels("a")
    holder = _compat.value_holder(gauge)
    add = _compat.value_adder(holder)
    assert add != holder.inc  # the inline form for prometheus_client's MutexValue
    for amount in (1, 1, -1, 2.5, -2.5):
        add(amount)
    assert registry.get_sample_value("g", {"k": "a"}) == 1.0
    assert not holder._lock.locked()


def test_value_adder_falls_back_on_the_holders_own_inc() -> None:
    """Another value class (multiprocess mode's mmap value, a child without holder), or a
    MutexValue whose internals changed: its own ``inc``."""
    seen: list[float] = []
    plain = SimpleNamespace(inc=seen.append)
    assert _compat.value_adder(plain) == plain.inc
    _compat.value_adder(plain)(1)
    assert seen == [1]
    registry = CollectorRegistry()
    holder = _compat.value_holder(Gauge("g", "g", ["k"], registry=registry).labels("a"))
    mutex = _compat._mutex_value_class
    _compat._mutex_value_class = lambda: None  # type: ignore[assignment]
    try:
        assert _compat.value_adder(holder) == holder.inc
    finally:
        _compat._mutex_value_class = mutex  # type: ignore[assignment]


# ---------------------------------------------------------------------- exemplar recorder
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LABELS = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}


def _series(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float, Any]]:
    """Samples with their exemplars (labels and value; the timestamp is when it ran)."""
    return [(s.name, s.labels, s.value,
             None if s.exemplar is None else (s.exemplar.labels, s.exemplar.value))
            for m in registry.collect() for s in m.samples if not s.name.endswith("_created")]


def _pair() -> tuple[CollectorRegistry, Any, Any]:
    registry = CollectorRegistry()
    counter = Counter("r", "r", ["k"], registry=registry).labels("a")
    histogram = Histogram("d", "d", ["k"], registry=registry, buckets=BUCKETS).labels("a")
    return registry, counter, histogram


amounts = st.one_of(st.sampled_from([*BUCKETS, 0.0, -1.0, math.inf, math.nan, 0.0050000001]),
                    st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=150, deadline=None)
@given(values=st.lists(amounts, max_size=12), locked=st.booleans())
def test_exemplar_recorder_records_what_inc_and_observe_record(
        values: list[float], locked: bool) -> None:
    public, counter, histogram = _pair()
    for v in values:
        counter.inc(1, LABELS)
        histogram.observe(v, LABELS)
    fast, counter, histogram = _pair()
    mutex = _compat._mutex_value_class
    if not locked:  # the value holders' own inc/set_exemplar (what other value classes get)
        _compat._mutex_value_class = lambda: None  # type: ignore[assignment]
    try:
        record = _compat.exemplar_recorder(counter, histogram)
    finally:
        _compat._mutex_value_class = mutex  # type: ignore[assignment]
    for v in values:
        record(v, LABELS)
    expected, got = _series(public), _series(fast)
    assert len(expected) == len(got)
    for (n1, l1, v1, e1), (n2, l2, v2, e2) in zip(expected, got, strict=True):
        assert (n1, l1, e1 is None) == (n2, l2, e2 is None)
        assert v1 == v2 or (math.isnan(v1) and math.isnan(v2))
        if e1 is not None:
            assert e1[0] == e2[0]
            assert e1[1] == e2[1] or (math.isnan(e1[1]) and math.isnan(e2[1]))
    assert _compat.degraded_features() == {}


def test_exemplar_recorder_sets_prometheus_clients_own_exemplar_objects() -> None:
    """The private API it relies on: if a release changes it, this fails (and the
    fallback below takes over at run time)."""
    from prometheus_client.samples import Exemplar

    assert _compat._mutex_value_class() is values.MutexValue
    registry, counter, histogram = _pair()
    before = __import__("time").time()
    _compat.exemplar_recorder(counter, histogram)(0.02, LABELS)
    assert _compat.degraded_features() == {}  # the fast path, not the fallback
    ex = counter._value.get_exemplar()
    assert type(ex) is Exemplar
    assert ex == Exemplar(LABELS, 1, ex.timestamp)
    assert ex.timestamp >= before
    bucket = histogram._buckets[BUCKETS.index(0.025)].get_exemplar()
    assert type(bucket) is Exemplar
    assert bucket == Exemplar(LABELS, 0.02, ex.timestamp)
    assert registry.get_sample_value("d_bucket", {"k": "a", "le": "0.025"}) == 1.0
    assert registry.get_sample_value("r_total", {"k": "a"}) == 1.0
    # the OpenMetrics exposition carries both, as with inc(1, labels) / observe(v, labels)
    from prometheus_client.openmetrics.exposition import generate_latest

    text = generate_latest(registry).decode()
    assert 'r_total{k="a"} 1.0 # {span_id="00f067aa0ba902b7",trace_id="4bf92f35' in text
    assert 'd_bucket{k="a",le="0.025"} 1.0 # {span_id="00f067aa0ba902b7",' in text


def test_the_inline_increments_hold_under_threads() -> None:
    """The MutexValue forms take the holders' own locks: no increment is lost."""
    registry, counter, histogram = _pair()
    record = _compat.exemplar_recorder(counter, histogram)
    observe = _compat.histogram_observer(histogram)

    def work() -> None:
        for _ in range(3000):
            record(0.02, LABELS)
            observe(0.02)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert registry.get_sample_value("r_total", {"k": "a"}) == 12000
    assert registry.get_sample_value("d_count", {"k": "a"}) == 24000
    assert registry.get_sample_value("d_sum", {"k": "a"}) == pytest.approx(480.0)


def test_exemplar_recorder_with_a_dropped_series_records_the_other() -> None:
    registry, counter, histogram = _pair()
    _compat.exemplar_recorder(None, histogram)(0.2, LABELS)
    _compat.exemplar_recorder(counter, None)(0.2, LABELS)
    _compat.exemplar_recorder(None, None)(0.2, LABELS)
    assert registry.get_sample_value("r_total", {"k": "a"}) == 1.0
    assert registry.get_sample_value("d_count", {"k": "a"}) == 1.0


def test_exemplar_recorder_falls_back_to_inc_and_observe(
        caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Any] = []

    class Own(Counter):
        def inc(self, amount: float = 1, exemplar: Any = None) -> None:
            seen.append(exemplar)
            super().inc(amount, exemplar)

    registry = CollectorRegistry()
    own = Own("o", "o", ["k"], registry=registry).labels("a")
    _, _, histogram = _pair()
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        record = _compat.exemplar_recorder(own, histogram)
        record(0.2, LABELS)
        del histogram._buckets  # an unexpected release
        _compat.exemplar_recorder(Counter("c", "c", ["k"], registry=registry).labels("a"),
                                  histogram)
    assert seen == [LABELS]  # its own inc ran, with the exemplar
    _degraded_once(caplog, "prometheus_client exemplar value holders")


def test_mutex_value_internals_missing_takes_the_holders_methods(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def inc(self: Any, amount: float) -> None:  # a release that renamed its fields
        with self._mutex:
            self._v += amount

    monkeypatch.setattr(values.MutexValue, "inc", inc)
    assert _compat._mutex_value_class() is None
    monkeypatch.delattr(values, "MutexValue")
    assert _compat._mutex_value_class() is None


# ---------------------------------------------------------------------- span contexts
def test_valid_span_context_maker_gives_what_span_context_gives() -> None:
    from opentelemetry.trace import SpanContext, TraceFlags, TraceState

    make = _compat.valid_span_context_maker()
    assert _compat.degraded_features() == {}
    assert make is not None
    state = TraceState([("vendor", "x")])
    for args in ((1, 1, False, TraceFlags(0), state), (2**128 - 1, 2**64 - 1, True,
                                                      TraceFlags(3), TraceState())):
        ctx = make((*args, True))
        assert type(ctx) is SpanContext
        assert ctx == SpanContext(*args)
        assert (ctx.trace_id, ctx.span_id, ctx.is_remote, ctx.trace_flags, ctx.trace_state,
                ctx.is_valid) == (*args, True)
    # the lean span's contexts are made so
    from mestres_observability import _leanspan

    assert _leanspan._valid_context is not None
    assert type(_leanspan._valid_context((1, 2, False, TraceFlags(1), state, True))) is SpanContext


def test_valid_span_context_maker_falls_back_when_span_context_changed(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import opentelemetry.trace as otel_trace

    class Changed(tuple):  # type: ignore[type-arg]  # another layout, no properties
        def __new__(cls, *args: Any) -> Changed:
            return tuple.__new__(cls, (args[1], args[0]))

    monkeypatch.setattr(otel_trace, "SpanContext", Changed)
    monkeypatch.setattr(_compat, "_SPAN_CONTEXT_TUPLE", None)  # checked again
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        make = _compat.valid_span_context_maker()
        assert _compat.span_context_unpacks() is False  # the same check, logged once
    _degraded_once(caplog, "opentelemetry SpanContext as a tuple")
    assert make((1, 2, False, None, None, True)) == Changed(1, 2, False, None, None)


def test_span_context_unpacks_to_what_its_properties_read() -> None:
    from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanContext, TraceFlags, TraceState

    assert _compat.span_context_unpacks() is True
    assert _compat.degraded_features() == {}
    contexts = [
        SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True,
                    TraceFlags(1), TraceState([("vendor", "x")])),
        SpanContext(2**128 - 1, 2**64 - 1, False, TraceFlags(2)),
        SpanContext(1, 2, False),  # default flags and state
        SpanContext(0, 2, True),  # invalid: a zero trace id
        SpanContext(2**128, 1, False),  # invalid: out of range
        INVALID_SPAN_CONTEXT,
    ]
    for ctx in contexts:
        trace_id, span_id, is_remote, flags, state, valid = ctx
        assert (trace_id, span_id, is_remote, flags, state, valid) == (
            ctx.trace_id, ctx.span_id, ctx.is_remote, ctx.trace_flags, ctx.trace_state,
            ctx.is_valid)
    assert [c.is_valid for c in contexts] == [True, True, True, False, False, False]


def test_span_context_unpacks_is_false_for_another_layout(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import opentelemetry.trace as otel_trace

    real = otel_trace.SpanContext

    class Reordered(real):  # type: ignore[misc,valid-type]  # the same API, fields moved
        def __new__(cls, *args: Any, **kwargs: Any) -> Reordered:
            made = real(*args, **kwargs)
            return tuple.__new__(cls, (made[1], made[0], *made[2:]))

        @property
        def trace_id(self) -> int:
            return int(self[1])

        @property
        def span_id(self) -> int:
            return int(self[0])

    monkeypatch.setattr(otel_trace, "SpanContext", Reordered)
    monkeypatch.setattr(_compat, "_SPAN_CONTEXT_TUPLE", None)
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _compat.span_context_unpacks() is False
    _degraded_once(caplog, "opentelemetry SpanContext as a tuple")


def test_current_span_key_builds_and_reads_what_the_trace_api_does() -> None:
    from opentelemetry import trace as otel_trace
    from opentelemetry.context import Context, create_key
    from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, SpanContext

    key = _compat.current_span_key()
    assert key is not None
    assert _compat.degraded_features() == {}
    span = NonRecordingSpan(SpanContext(1, 2, True))
    other = create_key("other")
    for base in (Context(), Context({other: "x"}),
                 otel_trace.set_span_in_context(NonRecordingSpan(SpanContext(3, 4, False)))):
        ours = Context({**base, key: span})
        theirs = otel_trace.set_span_in_context(span, base)
        assert ours == theirs
        assert type(ours) is type(theirs)
        assert otel_trace.get_current_span(ours) is span
    assert Context().get(key) is None
    assert otel_trace.get_current_span(Context()) is INVALID_SPAN


def test_current_span_key_missing(monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    import opentelemetry.trace as otel_trace
    import opentelemetry.trace.propagation as propagation
    from opentelemetry.context import set_value

    real = otel_trace.set_span_in_context
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        # the API sets the span under another key than the one it names
        monkeypatch.setattr(otel_trace, "set_span_in_context",
                            lambda span, context=None: set_value("elsewhere", span, context))
        assert _compat.current_span_key() is None
        monkeypatch.setattr(otel_trace, "set_span_in_context", real)
        monkeypatch.delattr(propagation, "_SPAN_KEY")  # the internal is gone
        assert _compat.current_span_key() is None
    _degraded_once(caplog, "opentelemetry's current-span context key")


def test_runtime_context_ops_are_what_attach_and_detach_do() -> None:
    from opentelemetry import context as otel_context

    ops = _compat.runtime_context_ops()
    assert ops is not None
    assert _compat.degraded_features() == {}
    attach, reset = ops
    key = otel_context.create_key("probe")

    def scenario() -> None:
        before = otel_context.get_current()
        ctx = otel_context.set_value(key, "v", before)
        token = attach(ctx)
        assert otel_context.get_current() is ctx
        assert otel_context.get_value(key) == "v"
        inner = otel_context.attach(otel_context.set_value(key, "w"))  # the API, nested
        otel_context.detach(inner)
        assert otel_context.get_current() is ctx
        reset(token)
        assert otel_context.get_current() is before
        with pytest.raises(RuntimeError):  # where the API's detach logs, reset raises
            reset(token)

    contextvars.copy_context().run(scenario)


def test_runtime_context_ops_leave_another_runtime_context_to_the_api(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry import context as otel_context
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

    class Own(ContextVarsRuntimeContext):  # someone's runtime context (OTEL_PYTHON_CONTEXT)
        pass

    monkeypatch.setattr(otel_context, "_RUNTIME_CONTEXT", Own())
    assert _compat.runtime_context_ops() is None
    assert _compat.degraded_features() == {}  # a choice, not a missing internal

    broken = ContextVarsRuntimeContext()
    broken._current_context = SimpleNamespace()  # type: ignore[assignment]
    monkeypatch.setattr(otel_context, "_RUNTIME_CONTEXT", broken)
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _compat.runtime_context_ops() is None
    _degraded_once(caplog, "opentelemetry's runtime context variable")


# ---------------------------------------------------------------------- multiprocess mode
def test_multiprocess_mode_is_read_from_the_value_class(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _compat.multiprocess_values_active() is False  # this test process: single-process
    monkeypatch.setattr(values, "ValueClass", type("Mmaped", (), {"_multiprocess": True}))
    assert _compat.multiprocess_values_active() is True


def test_multiprocess_mode_without_the_flag_falls_back(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(values, "ValueClass", type("NoFlag", (), {}))
    assert _compat.multiprocess_values_active() is True  # not MutexValue: files
    monkeypatch.setattr(values, "ValueClass", values.MutexValue)
    monkeypatch.delattr(values.MutexValue, "_multiprocess")
    assert _compat.multiprocess_values_active() is False
    monkeypatch.delattr(values, "ValueClass")
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _compat.multiprocess_values_active() is False
    _degraded_once(caplog, "prometheus_client.values.ValueClass")


def test_value_class_is_switched_when_the_internal_exists(
        monkeypatch: pytest.MonkeyPatch) -> None:
    switched = type("Switched", (), {})
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # restored afterwards
    monkeypatch.setattr(values, "get_value_class", lambda: switched)
    assert _compat.use_multiprocess_values() is True
    assert values.ValueClass is switched


def test_value_class_switch_missing_leaves_it_alone(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    before = values.ValueClass
    monkeypatch.delattr(values, "get_value_class")
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _compat.use_multiprocess_values() is False
    assert values.ValueClass is before
    _degraded_once(caplog, "prometheus_client.values.get_value_class")


def _closure_lock(cls: Any) -> Any:
    return next(c.cell_contents for c in cls.inc.__closure__
                if type(c.cell_contents) is type(threading.Lock()))


def test_the_multiprocess_value_lock_is_renewed(monkeypatch: pytest.MonkeyPatch) -> None:
    mmaped = values.MultiProcessValue()  # the class only: no file until a value is made
    monkeypatch.setattr(values, "ValueClass", mmaped)
    held = _closure_lock(mmaped)
    held.acquire()  # as a parent thread would at the fork
    try:
        assert _compat.renew_multiprocess_value_lock() is True
        fresh = _closure_lock(mmaped)
        assert fresh is not held
        assert not fresh.locked()
        # every method shares the one cell
        assert _closure_lock(type("View", (), {"inc": mmaped.set})) is fresh
    finally:
        held.release()


def test_the_multiprocess_value_lock_missing_is_reported(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(values, "ValueClass", values.MutexValue)  # no closure lock
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _compat.renew_multiprocess_value_lock() is False
        assert _compat.renew_multiprocess_value_lock() is False
    _degraded_once(caplog, "the prometheus_client multiprocess value lock")


def test_a_labelled_metric_lock_is_renewed() -> None:
    metric = Counter("jobs", "Jobs.", ["k"], registry=None)
    metric._lock.acquire()  # a parent thread in labels() at the fork
    _compat.renew_metric_lock(metric)
    done = threading.Event()
    threading.Thread(target=lambda: (metric.labels("a").inc(), done.set()), daemon=True).start()
    assert done.wait(5)  # labels() takes the fresh lock


def test_a_metric_without_a_lock_is_left_alone() -> None:
    plain = SimpleNamespace()
    _compat.renew_metric_lock(plain)
    assert vars(plain) == {}


# ---------------------------------------------------------------------- metric internals
def test_children_and_names_of_a_metric() -> None:
    counter = Counter("jobs_total", "Jobs.", ["k", "q"], registry=None)
    a = counter.labels("a", "1")
    b = counter.labels("b", "2")
    children = _compat.labelled_children(counter)
    assert children == [({"k": "a", "q": "1"}, a), ({"k": "b", "q": "2"}, b)]
    single = Counter("once", "Once.", registry=None)
    assert _compat.labelled_children(single) == [({}, single)]
    assert _compat.metric_base_name(counter) == "jobs"
    histogram = Histogram("lat", "L.", buckets=(0.5, 1.0), registry=None)
    assert list(_compat.histogram_upper_bounds(histogram) or ()) == [0.5, 1.0, math.inf]


def test_metric_internals_missing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _compat.labelled_children(SimpleNamespace()) == []
        assert _compat.histogram_upper_bounds(SimpleNamespace()) is None
    _degraded_once(caplog, "prometheus_client metric children")
    _degraded_once(caplog, "prometheus_client histogram bucket bounds")
    # the name falls back to describe(), the public path, then to None
    described = SimpleNamespace(describe=Counter("jobs", "J.", registry=None).describe)
    assert _compat.metric_base_name(described) == "jobs"
    assert _compat.metric_base_name(SimpleNamespace()) is None


# ---------------------------------------------------------------------- registries
def _registry_with_metrics() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("orders", "O.", ["s"], registry=registry).labels("paid").inc()
    Histogram("lat", "L.", buckets=(1.0,), registry=registry).observe(0.1)
    Gauge("level", "G.", registry=registry).set(3)
    return registry


def test_registry_collectors_in_registration_order() -> None:
    registry = CollectorRegistry()
    first, second = Counter("a", "A.", registry=registry), Gauge("b", "B.", registry=registry)
    assert _compat.registry_collectors(registry) == [first, second]


def test_registered_names_present_and_through_collect() -> None:
    registry = _registry_with_metrics()
    names = _compat.registered_names(registry)
    assert {"orders", "orders_total", "orders_created", "lat_bucket", "lat_count", "lat_sum",
            "level"} <= names
    # without the internal: what collect() yields, with the same type suffixes
    public_only = SimpleNamespace(collect=registry.collect)
    assert _compat.registered_names(public_only) == names


def test_registered_names_missing_everything(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _compat.registered_names(SimpleNamespace()) == set()
    _degraded_once(caplog, "CollectorRegistry names")


# ---------------------------------------------------------------------- files
def _key(name: str, **labels: str) -> str:
    return mmap_key(name, name + "_total", list(labels), list(labels.values()), "Jobs.")


def test_files_written_here_read_as_prometheus_client_reads_them(tmp_path: Path) -> None:
    path = str(tmp_path / "counter_archive.db")
    entries = {_key("jobs", k="a"): (4.0, 0.0), _key("jobs", k="ünï"): (2.5, 7.0)}
    _compat.write_values_file(path, entries, 42)
    theirs = [(k, v, t) for k, v, t, _ in MmapedDict.read_all_values_from_file(path)]
    assert theirs == [(k, v, t) for k, (v, t) in entries.items()]
    assert list(_compat.read_values_file(path)) == theirs
    assert _compat.values_file_spare_word(path) == 42
    assert _compat.values_file_spare_word(str(tmp_path / "missing.db")) == 0


def test_files_read_without_prometheus_clients_reader(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "counter_1.db")
    d = MmapedDict(path)  # written by prometheus_client itself
    d.write_value(_key("jobs", k="a"), 3.0, 0.0)
    d.write_value(_key("jobs", k="bb"), 1.0, 5.0)
    d.close()
    expected = list(_compat.read_values_file(path))
    assert len(expected) == 2
    monkeypatch.delattr(MmapedDict, "read_all_values_from_file")
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert list(_compat.read_values_file(path)) == expected
    _degraded_once(caplog, "prometheus_client.mmap_dict.MmapedDict")


def test_file_names() -> None:
    assert _compat.values_file_pid("counter_123.db") == 123
    assert _compat.values_file_kind("counter_123.db") == "counter"
    assert _compat.values_file_pid("gauge_livesum_77.db") == 77
    assert _compat.values_file_kind("gauge_livesum_77.db") == "gauge_livesum"
    assert _compat.values_file_pid("gauge_min_archive.db") is None
    assert _compat.values_file_kind("gauge_min_archive.db") == "gauge_min"
    assert _compat.values_file_pid("merge.lock") is None


def _two_counter_files(tmp_path: Path) -> list[str]:
    files = []
    for pid, value in ((1, 2.0), (2, 3.0)):
        path = str(tmp_path / f"counter_{pid}.db")
        _compat.write_values_file(path, {_key("jobs", k="a"): (value, 0.0)}, 0)
        files.append(path)
    return files


def _jobs_total(families: list[Any]) -> float:
    (family,) = [f for f in families if f.name == "jobs"]
    return sum(s.value for s in family.samples if s.name == "jobs_total")


def test_merge_of_chosen_files(tmp_path: Path) -> None:
    files = _two_counter_files(tmp_path)
    assert _jobs_total(_compat.merge_values_files(files)) == 5.0
    assert _jobs_total(_compat.merge_values_files(files[:1])) == 2.0


def test_merge_without_the_static_method_reads_the_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import prometheus_client.multiprocess

    files = _two_counter_files(tmp_path)
    real_merge = MultiProcessCollector.merge

    class Renamed(MultiProcessCollector):  # a release that renamed its merge
        merge = None  # type: ignore[assignment]

        def collect(self) -> Any:  # the public path, as it would still work
            names = sorted(p.name for p in tmp_path.glob("*.db"))
            return real_merge([str(tmp_path / n) for n in names], accumulate=True)

    monkeypatch.setattr(prometheus_client.multiprocess, "MultiProcessCollector", Renamed)
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _jobs_total(_compat.merge_values_files(files)) == 5.0
        assert _compat.merge_values_files([]) == []
    _degraded_once(caplog, "prometheus_client MultiProcessCollector.merge")


# ---------------------------------------------------------------------- files that cannot grow
def _guarded_dict_class() -> Any:
    """A subclass of MmapedDict with the guard (prometheus_client's class stays as it is)."""
    class Guarded(MmapedDict):
        pass

    original = getattr(MmapedDict.__init__, "_mestres_original", MmapedDict.__init__)
    _compat._install_values_guard(Guarded, original, 1 << 16)
    return Guarded


class _Disk:
    """Stands in for the filesystem's free space: ``full`` makes every reservation fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        self.reserved: list[tuple[int, int]] = []
        real = _compat._reserve

        def reserve(fd: int, offset: int, length: int, *, may_write: bool) -> None:
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.reserved.append((offset, length))
            real(fd, offset, length, may_write=may_write)

        monkeypatch.setattr(_compat, "_reserve", reserve)
        monkeypatch.setattr(_compat, "_GROW_RETRY_SECONDS", 3600.0)


def _file_values(path: str) -> dict[str, float]:
    return {k: v for k, v, _t, _p in MmapedDict.read_all_values_from_file(path)}


def test_a_file_reserves_its_space_before_it_is_written_and_reads_as_prometheus_clients(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = _Disk(monkeypatch)
    path = str(tmp_path / "counter_1.db")
    d = _guarded_dict_class()(path)
    assert disk.reserved == [(0, 1 << 16)]  # the whole first block, before the header is written
    keys = [_key("jobs", k=f"{i:05d}") for i in range(3000)]  # > 64 KiB: grows twice
    for i, key in enumerate(keys):
        d.write_value(key, float(i), 0.5)
    assert d.read_value(keys[7]) == (7.0, 0.5)
    assert disk.reserved[1:] == [(1 << 16, 1 << 16), (1 << 17, 1 << 17)]  # each growth, first
    d.close()
    assert _file_values(path) == {k: float(i) for i, k in enumerate(keys)}
    assert [k for k, _v, _t in _compat._read_values_ourselves(path)] == keys
    assert os.path.getsize(path) == 1 << 18


def test_a_file_that_cannot_grow_drops_new_keys_and_keeps_updating_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = _Disk(monkeypatch)
    path = str(tmp_path / "counter_1.db")
    d = _guarded_dict_class()(path)
    disk.full = True  # the first 64 KiB are reserved; nothing more
    keys = [_key("jobs", k=f"{i:05d}") for i in range(3000)]
    before = _compat.values_dropped_total()
    for key in keys:
        assert d.read_value(key) == (0.0, 0.0)  # what a new child reads first
        d.write_value(key, 1.0, 0.0)
    kept = _file_values(path)
    assert 500 < len(kept) < 3000
    assert list(kept) == keys[:len(kept)]
    dropped = keys[len(kept):]
    assert _compat.values_dropped_total() - before == len(dropped)  # once per new series
    assert os.path.getsize(path) == 1 << 16
    d.write_value(keys[0], 42.0, 0.0)  # an existing series keeps updating
    assert d.read_value(keys[0]) == (42.0, 0.0)
    d.write_value(dropped[0], 5.0, 0.0)  # a dropped one stays out of the file
    assert _file_values(path)[keys[0]] == 42.0
    assert dropped[0] not in _file_values(path)
    # space is back: after the retry interval, a dropped series is written with its value
    disk.full = False
    monkeypatch.setattr(_compat, "_GROW_RETRY_SECONDS", 0.0)
    d._mestres_retry_at = 1e-9
    d.write_value(dropped[0], 6.0, 0.0)
    assert _file_values(path)[dropped[0]] == 6.0
    assert _file_values(path)[keys[0]] == 42.0
    d.close()


def test_a_file_that_cannot_be_created_is_detached_until_there_is_space(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = _Disk(monkeypatch)
    disk.full = True
    path = str(tmp_path / "histogram_1.db")
    d = _guarded_dict_class()(path)
    assert os.path.getsize(path) == 0  # empty: scrapes skip it
    key = _key("lat")
    assert d.read_value(key) == (0.0, 0.0)
    d.write_value(key, 3.0, 0.0)
    assert os.path.getsize(path) == 0
    disk.full = False
    d._mestres_retry_at = 1e-9
    d.write_value(key, 4.0, 0.0)
    assert _file_values(path) == {key: 4.0}
    d.close()
    d.close()  # prometheus_client's close, twice, as its cleanup may do


def test_drops_are_reported_after_the_value_is_made_outside_its_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = _Disk(monkeypatch)
    disk.full = True
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "MmapedDict", _guarded_dict_class())
    monkeypatch.setattr(_compat, "_drop_listener", None)
    monkeypatch.setattr(_compat, "_reported", _compat._dropped)
    cls = values.MultiProcessValue()
    _compat._wrap_value_class(cls)
    _compat._wrap_value_class(cls)  # idempotent
    reports: list[tuple[int, bool]] = []
    holder: list[Any] = []

    def listener(n: int) -> None:
        # the error counter's own increment takes the value lock: it must be free here
        locked = [c.cell_contents for c in cls.inc.__closure__ or ()
                  if type(c.cell_contents) is type(threading.Lock())]
        reports.append((n, bool(locked) and locked[0].locked()))

    cls("counter", "early", "early_total", [], [], "E.")  # dropped before any listener
    _compat.set_values_drop_listener(listener)  # reports what was pending
    assert reports == [(1, False)]
    value = cls("counter", "jobs", "jobs_total", ["k"], ["a"], "Jobs.")
    holder.append(value)
    assert reports == [(1, False), (1, False)]
    value.inc(2.0)  # a dropped series still counts in its process
    assert value.get() == 2.0
    _compat.flush_values_drops()
    assert len(reports) == 2
    _compat.set_values_drop_listener(None)
    cls.close_all_files()


def test_file_growth_internals_missing(monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    import prometheus_client.mmap_dict

    class Other:  # a release whose file class grows differently
        def __init__(self, filename: str) -> None:
            self.filename = filename

    monkeypatch.setattr(_compat, "_values_guarded", False)
    monkeypatch.setattr(prometheus_client.mmap_dict, "MmapedDict", Other)
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _compat.guard_values_files() is False
        assert _compat.guard_values_files() is False
    _degraded_once(caplog, "prometheus_client.mmap_dict.MmapedDict growth")
    assert not hasattr(Other, "_init_value")


# ---------------------------------------------------------------------- OpenTelemetry SDK
class _NullExporter:
    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def test_span_queue_of_a_batch_processor() -> None:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    bsp = BatchSpanProcessor(_NullExporter(), max_queue_size=7,  # type: ignore[arg-type]
                             max_export_batch_size=7)
    try:
        queue = _compat.span_queue(bsp)
        assert isinstance(queue, deque)
        assert queue.maxlen == 7
    finally:
        bsp.shutdown()  # type: ignore[no-untyped-call]
    older = SimpleNamespace(queue=deque(maxlen=3))  # before SDK 1.28: on the processor
    assert _compat.span_queue(older) is older.queue


def test_span_emitter_queues_as_on_end_does() -> None:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    bsp = BatchSpanProcessor(_NullExporter(), max_queue_size=4,  # type: ignore[arg-type]
                             max_export_batch_size=3, schedule_delay_millis=60_000)
    inner = bsp._batch_processor
    queue = _compat.span_queue(bsp)
    fell_back: list[Any] = []
    bsp.on_end = fell_back.append  # type: ignore[method-assign,assignment]
    emit = _compat.span_emitter(bsp)  # the fallback (on_end) bound now
    assert emit is not None
    assert queue is not None
    real = inner._worker_awaken
    inner._worker_awaken = threading.Event()  # the worker waits on the real one: no export
    try:
        emit("a")
        emit("b")
        assert list(queue) == ["b", "a"]
        assert not inner._worker_awaken.is_set()
        emit("c")  # a full batch wakes the worker, as BatchProcessor.emit does
        assert list(queue) == ["c", "b", "a"]
        assert inner._worker_awaken.is_set()
        emit("d")
        assert fell_back == []
        emit("e")  # the queue is full: on_end (the SDK drops the oldest and counts it)
        assert fell_back == ["e"]
        assert len(queue) == 4
        from mestres_observability._forksafe import fork_generation

        queue.clear()
        fork_generation.n += 1  # a forked child: on_end (the SDK re-initialises the processor)
        try:
            emit("f")
            emit("f1")  # only the first span after the fork takes on_end
        finally:
            fork_generation.n -= 1
        assert fell_back == ["e", "f"]
        assert list(queue) == ["f1"]
        emit("f2")  # (the generation changed back: on_end once more)
        assert fell_back == ["e", "f", "f2"]
        queue.clear()
        inner._shutdown = True  # shut down: on_end (which refuses the span and counts it)
        emit("g")
        assert fell_back == ["e", "f", "f2", "g"]
        assert len(queue) == 0
        inner._shutdown = False
    finally:
        inner._worker_awaken = real
        bsp.shutdown()  # type: ignore[no-untyped-call]


def test_span_emitter_makes_no_system_call_per_span(monkeypatch: pytest.MonkeyPatch) -> None:
    # BatchProcessor.emit calls os.getpid() for every span, a system call each time; the
    # emitter tells a fork by the library's fork generation instead
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    bsp = BatchSpanProcessor(_NullExporter(), max_queue_size=64,  # type: ignore[arg-type]
                             max_export_batch_size=32, schedule_delay_millis=60_000)
    try:
        calls: list[int] = []
        real = os.getpid
        monkeypatch.setattr(os, "getpid", lambda: calls.append(1) or real())
        emit = _compat.span_emitter(bsp)
        assert emit is not None
        for i in range(10):
            emit(f"span{i}")
        assert calls == []
        assert len(_compat.span_queue(bsp) or ()) == 10
    finally:
        monkeypatch.undo()
        bsp.shutdown()  # type: ignore[no-untyped-call]


def test_span_emitter_checks_the_pid_once_per_batch_and_loses_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a fork made from C without the interpreter's fork hooks (uWSGI without
    # py-call-osafterfork) bumps no fork generation: the pid, checked once per batch,
    # tells it, and the spans queued since go to on_end in their order
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    bsp = BatchSpanProcessor(_NullExporter(), max_queue_size=64,  # type: ignore[arg-type]
                             max_export_batch_size=4, schedule_delay_millis=60_000)
    inner = bsp._batch_processor
    queue = _compat.span_queue(bsp)
    assert queue is not None
    fell_back: list[Any] = []
    bsp.on_end = fell_back.append  # type: ignore[method-assign,assignment]
    real_awaken = inner._worker_awaken
    inner._worker_awaken = threading.Event()
    calls: list[int] = []
    real = os.getpid
    monkeypatch.setattr(os, "getpid", lambda: calls.append(1) or real())
    emit = _compat.span_emitter(bsp)
    assert emit is not None
    try:
        for i in range(8):
            emit(f"p{i}")
        assert calls == [1, 1]  # once per batch of 4, not per span
        assert fell_back == []
        queue.clear()
        pid, inner._pid = inner._pid, -1  # as if forked from C: another pid, no hooks run
        for i in range(3):
            emit(f"c{i}")
        assert fell_back == []  # not checked yet
        emit("c3")  # the batch's check: every span since, to on_end, oldest first
        assert fell_back == ["c0", "c1", "c2", "c3"]
        assert list(queue) == []
        inner._pid = pid
    finally:
        monkeypatch.undo()
        inner._worker_awaken = real_awaken
        bsp.shutdown()  # type: ignore[no-untyped-call]


def test_span_emitter_in_a_forked_child_queues_into_the_childs_processor() -> None:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    bsp = BatchSpanProcessor(_NullExporter(), max_queue_size=64,  # type: ignore[arg-type]
                             max_export_batch_size=32, schedule_delay_millis=60_000)
    emit = _compat.span_emitter(bsp)
    assert emit is not None
    queue = _compat.span_queue(bsp)
    assert queue is not None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            inner = bsp._batch_processor
            first, second = (SimpleNamespace(name=n, context=SimpleNamespace(
                trace_flags=SimpleNamespace(sampled=True))) for n in ("first", "second"))
            emit(first)  # through on_end: the SDK's pid check, its re-initialised state
            emit(second)  # the emitter's own path again
            if (inner._pid == os.getpid() and list(queue) == [second, first]
                    and inner._worker_thread.is_alive()):
                code = 0
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"\x00"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
        bsp.shutdown()  # type: ignore[no-untyped-call]


def test_span_emitter_missing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _compat.span_emitter(SimpleNamespace()) is None
        assert _compat.span_emitter(SimpleNamespace(_batch_processor=SimpleNamespace(
            _queue=deque(), _max_export_batch_size=2))) is None
    _degraded_once(caplog, "the BatchSpanProcessor's queue")


def test_span_queue_missing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _compat.span_queue(SimpleNamespace()) is None
        assert _compat.span_queue(SimpleNamespace(_batch_processor=SimpleNamespace())) is None
    _degraded_once(caplog, "the BatchSpanProcessor queue")


def test_without_the_queue_spans_still_queued_are_not_counted_as_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from mestres_observability import tracing

    monkeypatch.setattr(_compat, "span_queue", lambda processor: None)
    tracer = TracerProvider().get_tracer("t")
    with fresh_observability(tracing_enabled=False) as obs:
        pipeline = tracing._Pipeline(_NullExporter(), obs.config, obs.metrics,  # type: ignore[arg-type]
                                     obs.faults)
        try:
            assert pipeline._queue is None
            for _ in range(5):
                span = tracer.start_span("s")
                span.end()
                pipeline.on_end(span)  # type: ignore[arg-type]
            pipeline.reconcile()  # nothing exported yet: all five may still be queued
            assert pipeline.dropped == 0
        finally:
            pipeline.shutdown(2.0)
        assert pipeline.dropped == 0
        assert pipeline.exported == 5


def test_otlp_span_sender_sends_encoded_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.sdk.trace import TracerProvider

    from mestres_observability._leanspan import encode_spans
    from tests.otlp_receiver import OTLPReceiver

    monkeypatch.delenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", raising=False)
    span = TracerProvider().get_tracer("t").start_span("sent")
    span.end()
    body = encode_spans([span])  # type: ignore[list-item]
    assert ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans[
        0].name == "sent"
    with OTLPReceiver() as rx:
        exporter = OTLPSpanExporter(endpoint=rx.endpoint + "/v1/traces", timeout=5)
        send = _compat.otlp_span_sender(exporter)
        assert send is not None
        assert send(body) is True
        assert rx.span_names() == {"sent"}
        rx.mode = "400"
        assert send(body) is False  # refused by the collector
        exporter.shutdown()
        assert send(body) is False  # after shutdown, as export() answers
    small = OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces", max_request_size=8)
    sender = _compat.otlp_span_sender(small)
    assert sender is not None
    assert sender(body) is False  # larger than max_request_size: dropped before sending


def test_otlp_span_sender_is_none_where_export_must_run(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    class Mine(OTLPSpanExporter):  # a subclass may change export()
        pass

    assert _compat.otlp_span_sender(Mine(endpoint="http://127.0.0.1:9/v1/traces")) is None
    assert _compat.otlp_span_sender(_NullExporter()) is None
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    assert _compat.otlp_span_sender(OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/t")) is None
    monkeypatch.delenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED")
    older = OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    del older._client  # an exporter release without the client
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _compat.otlp_span_sender(older) is None
        assert _compat.otlp_span_sender(older) is None
    _degraded_once(caplog, "OTLPSpanExporter._client")


def test_without_the_sender_lean_spans_go_through_export(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback: lean spans handed to the exporter's export() as ReadableSpans."""
    from tests.otlp_receiver import OTLPReceiver

    monkeypatch.setattr(_compat, "otlp_span_sender", lambda exporter: None)
    with OTLPReceiver() as rx:
        with fresh_observability(otlp_endpoint=rx.endpoint) as obs:
            assert obs.tracing.lean
            assert obs.tracing._pipeline is not None
            assert obs.tracing._pipeline.fast_send is None
            from mestres_observability import span

            with span("through_export", a=1):
                pass
        rx.wait_for(lambda: "through_export" in rx.span_names())
        assert rx.by_name("through_export").attributes == {"a": 1}
        assert obs.tracing.exported == 1


def test_provider_resource_is_updated() -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource({"service.name": "cafe"}))
    tracer = provider.get_tracer("t")
    assert _compat.update_provider_resource(provider, {"service.instance.id": "worker-2"})
    assert provider.resource.attributes["service.instance.id"] == "worker-2"
    assert provider.resource.attributes["service.name"] == "cafe"
    span = tracer.start_span("after")  # a tracer made before the update gets it too
    span.end()
    assert span.resource.attributes["service.instance.id"] == "worker-2"  # type: ignore[attr-defined]


def test_provider_resource_update_missing(caplog: pytest.LogCaptureFixture) -> None:
    def broken(resource: Any) -> None:
        raise RuntimeError("changed signature")

    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _compat.update_provider_resource(SimpleNamespace(), {"a": "b"}) is False
        assert _compat.update_provider_resource(
            SimpleNamespace(_update_resource=broken), {"a": "b"}) is False
    _degraded_once(caplog, "TracerProvider._update_resource")


# ---------------------------------------------------------------------- FastAPI
def test_fastapi_native_tracing_is_turned_off_through_its_mapping() -> None:
    telemetry = {"tracing": True, "tracer_provider": None}
    app = SimpleNamespace(_telemetry=telemetry)
    assert _compat.disable_fastapi_native_tracing(app) is True
    assert telemetry["tracing"] is False
    assert _compat.disable_fastapi_native_tracing(app) is False  # nothing left to change


@pytest.mark.parametrize("telemetry", [
    None, 42, {"tracing": "yes"}, {"tracing": True, "tracer_provider": object()},
    MappingProxyType({"tracing": True, "tracer_provider": None}),
])
def test_fastapi_native_tracing_missing_or_unexpected_is_left_alone(telemetry: Any) -> None:
    app = SimpleNamespace() if telemetry is None else SimpleNamespace(_telemetry=telemetry)
    assert _compat.disable_fastapi_native_tracing(app) is False
    if isinstance(telemetry, MappingProxyType):
        assert telemetry["tracing"] is True


def test_fastapi_native_record_keys_match_fastapi() -> None:
    """The scope key and attribute the ASGI adapter reads are the ones FastAPI sets."""
    fastapi = pytest.importorskip("fastapi")
    from opentelemetry.sdk.trace import TracerProvider
    from starlette.testclient import TestClient

    seen: list[Any] = []

    class Spy:  # user middleware runs inside FastAPI's native telemetry
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                record = scope.get(_compat.FASTAPI_TELEMETRY_SCOPE_KEY)
                span = getattr(record, _compat.FASTAPI_NATIVE_SPAN_ATTR, None)
                seen.append(span is not None and span.is_recording())
            await self.app(scope, receive, send)

    try:
        app = fastapi.FastAPI(telemetry={"tracer_provider": TracerProvider()})
    except TypeError:
        pytest.skip("this FastAPI has no native telemetry")
    app.get("/")(lambda: {"ok": True})
    app.add_middleware(Spy)
    with TestClient(app) as c:
        assert c.get("/").status_code == 200
    assert seen == [True]  # the native SERVER span, still recording when our middleware runs


def test_fastapi_native_record_without_a_span_is_ignored() -> None:
    pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from mestres_observability.fastapi import instrument

    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])

    class Outer:  # a record of another shape under FastAPI's key
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            scope[_compat.FASTAPI_TELEMETRY_SCOPE_KEY] = object()
            await self.inner(scope, receive, send)

    with fresh_observability(access_log=True):
        instrument(app)
        with TestClient(Outer(app)) as c:
            assert c.get("/").status_code == 200
        assert sample_value("http_requests_total", method="GET", endpoint="/",
                            status="200") == 1.0


# ---------------------------------------------------------------------- structlog
def test_structlog_context_var_is_structlogs_own() -> None:
    var = _compat.structlog_context_var("compat_probe_key")
    assert isinstance(var, contextvars.ContextVar)

    def body() -> list[Any]:
        seen = [var.get(_compat.STRUCTLOG_UNBOUND)]
        var.set("x")
        seen.append(structlog.contextvars.get_contextvars().get("compat_probe_key"))
        structlog.contextvars.unbind_contextvars("compat_probe_key")
        seen.append(var.get(None))
        return seen

    assert contextvars.Context().run(body) == [_compat.STRUCTLOG_UNBOUND, "x",
                                              _compat.STRUCTLOG_UNBOUND]


def test_structlog_context_var_missing_goes_through_the_public_api(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(_compat, "_STRUCTLOG_PREFIX", None)
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        var = _compat.structlog_context_var("compat_public_key")
    assert not isinstance(var, contextvars.ContextVar)
    _degraded_once(caplog, "structlog's per-key context variables")

    def body() -> list[Any]:
        seen = [var.get(_compat.STRUCTLOG_UNBOUND)]
        var.set("y")
        seen.append(structlog.contextvars.get_contextvars().get("compat_public_key"))
        seen.append(var.get())
        return seen

    assert contextvars.Context().run(body) == [_compat.STRUCTLOG_UNBOUND, "y", "y"]


def test_structlog_probe_rejects_another_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _compat._probe_structlog() == "structlog_"
    monkeypatch.setattr(structlog.contextvars, "bind_contextvars", lambda **kw: {})
    assert _compat._probe_structlog() is None


@pytest.mark.parametrize("restore", [_compat._restore_fast, _compat._restore_public],
                         ids=["per-key-variables", "public-api"])
def test_structlog_context_is_restored(restore: Any) -> None:
    def body() -> dict[str, Any]:
        structlog.contextvars.bind_contextvars(request_id="outer", kept="k")
        before = contextvars.copy_context()
        structlog.contextvars.bind_contextvars(request_id="inner", user_id=7)
        structlog.contextvars.unbind_contextvars("kept")
        restore(before)
        return structlog.contextvars.get_contextvars()

    assert contextvars.Context().run(body) == {"request_id": "outer", "kept": "k"}


def test_the_fast_restore_is_chosen_with_this_structlog() -> None:
    assert _compat.restore_structlog_context is _compat._restore_fast


# ---------------------------------------------------------------------- Werkzeug
def test_proxy_target_of_a_local_proxy() -> None:
    local = pytest.importorskip("werkzeug.local")
    current: contextvars.ContextVar[Any] = contextvars.ContextVar("compat_target")
    proxy = local.LocalProxy(current)
    getter = _compat.proxy_target_getter(proxy)
    target = SimpleNamespace(environ={})

    def body() -> Any:
        current.set(target)
        return getter()

    assert contextvars.Context().run(body) is target  # resolved per call, not at set-up


def test_proxy_target_of_flask_request() -> None:
    flask = pytest.importorskip("flask")
    getter = _compat.proxy_target_getter(flask.request)
    app = flask.Flask("compat")
    with app.test_request_context("/x"):
        req = getter()
        assert type(req) is flask.Request
        assert req.path == "/x"


def test_proxy_target_missing_gives_the_proxy(caplog: pytest.LogCaptureFixture) -> None:
    proxy = SimpleNamespace(environ={})
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _compat.proxy_target_getter(proxy)() is proxy
    _degraded_once(caplog, "LocalProxy._get_current_object")


def test_flask_request_context_var_gives_the_current_request() -> None:
    flask = pytest.importorskip("flask")
    var = _compat.flask_request_context_var()
    assert isinstance(var, contextvars.ContextVar)
    app = flask.Flask("compat")
    with app.test_request_context("/y"):
        assert var.get().request is flask.request._get_current_object()
        assert var.get().request.path == "/y"
    assert var.get(None) is None  # resolved per call, not at set-up


def test_flask_request_context_var_missing_gives_none(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("flask")
    import flask.globals

    monkeypatch.delattr(flask.globals, "_cv_request")
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _compat.flask_request_context_var() is None
    _degraded_once(caplog, "flask.globals._cv_request")


def test_flask_request_context_var_of_another_shape_gives_none(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A context variable whose value is not the request context (a release that moved
    things around) fails the probe: the public proxy is used."""
    pytest.importorskip("flask")
    import flask.globals

    monkeypatch.setattr(flask.globals, "_cv_request", contextvars.ContextVar("other"))
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _compat.flask_request_context_var() is None
    _degraded_once(caplog, "flask.globals._cv_request")


# ---------------------------------------------------------------------- source scans
#: Our own private attributes read on objects other than ``self``/``cls`` or one of our
#: modules, as written in the source (file -> accesses).
OWN_PRIVATE = {
    # RequestPass slots, set by start_request
    "http.py": {"rp._external_span", "rp._parent", "rp._span"},
    # _CountingExporter -> its _Pipeline's lock; the Observability's tracing handle
    "tracing.py": {"self.pipeline._lock", "get_observability()._tracing"},
    # attributes of our own metric subclasses; a namedtuple's public _replace()
    "multiprocess.py": {"child._mp_exemplar", "child._mp_exemplars", "child._mp_bounds",
                        "metric._mp_callback", "s._replace"},
    "system.py": {"collector._families"},  # our ProcessCollector
    "health.py": {"inherit._checks"},  # the HealthRegistry being replaced
    "observability.py": {"previous._retire"},  # the Observability being replaced
    # the instance made current, and the one an init inside fresh_observability() made
    "_current.py": {"new._activate"},
    # the RUM page matcher reads its ObservabilityMiddleware's page cache and route table
    "fastapi.py": {"mw._pages", "mw._routes"},
    "testing.py": {"latest._retire"},
}
_ATTR_FUNCS = {"getattr", "hasattr", "setattr", "delattr"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_names(tree: ast.Module) -> set[str]:
    """Names a module binds by importing from this package (its modules, functions...)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (
                node.level > 0 or (node.module or "").startswith("mestres_observability")):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.asname or a.name.split(".")[0] for a in node.names
                         if a.name.startswith("mestres_observability"))
    return names


def _foreign_private_accesses(path: Path, root: Path = PACKAGE) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    ours = _own_names(tree) | {"self", "cls"}
    allowed = OWN_PRIVATE.get(path.name, set())
    found = []
    for node in ast.walk(tree):
        base: ast.expr | None = None
        attr = ""
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base, attr = node.value, node.attr
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in _ATTR_FUNCS and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value)):
            base, attr = node.args[0], node.args[1].value
        if base is None:
            continue
        if isinstance(base, ast.Name) and base.id in ours:
            continue
        access = f"{ast.unparse(base)}.{attr}"
        if access not in allowed:
            found.append(f"{path.relative_to(root)}:{node.lineno}: {access}")
    return found


def test_no_module_but_compat_reads_another_librarys_private_attributes() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "_compat.py":
            found += _foreign_private_accesses(path)
    assert found == [], "move these into mestres_observability/_compat.py:\n" + "\n".join(found)


def test_the_scan_finds_a_foreign_private_attribute(tmp_path: Path) -> None:
    sample = tmp_path / "http.py"
    sample.write_text("from . import _compat\nfrom .x import thing\n"
                      "a = registry._lock\nb = getattr(app, '_telemetry', None)\n"
                      "c = self._own\nd = _compat._degraded\ne = thing._ours\nf = x.__name__\n"
                      "g = rp._span\nh = other._span\n", encoding="utf-8")
    found = _foreign_private_accesses(sample, tmp_path)
    assert found == ["http.py:3: registry._lock", "http.py:4: app._telemetry",
                     "http.py:10: other._span"]


def test_compat_imports_nothing_of_the_package_but_the_foundations() -> None:
    tree = ast.parse((PACKAGE / "_compat.py").read_text(encoding="utf-8"))
    internal = {n.module for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and n.level > 0}
    assert internal <= {"_forksafe", "errors"}


def test_django_response_marked_as_logged_or_left_alone() -> None:
    class Plain:
        pass

    class Frozen:
        __slots__ = ()

    plain = Plain()
    _compat.mark_django_response_logged(plain)
    assert plain._has_been_logged is True  # type: ignore[attr-defined]
    _compat.mark_django_response_logged(Frozen())  # the flag cannot be set: nothing raised


def _uvicorn_child(monkeypatch: pytest.MonkeyPatch, owner_module: str | None,
                   workers: Any) -> None:
    """This process as a spawned child whose ``Process`` got uvicorn-like ``kwargs``: a
    ``target`` bound to a class of ``owner_module`` (``None``: no kwargs) and a config."""
    import multiprocessing
    import sys
    import types

    monkeypatch.setitem(sys.modules, "uvicorn",
                        sys.modules.get("uvicorn") or types.ModuleType("uvicorn"))
    kwargs: Any = None
    if owner_module is not None:
        owner = type("Process", (), {"__module__": owner_module, "target": lambda self: None})
        kwargs = {"config": SimpleNamespace(workers=workers), "target": owner().target,
                  "sockets": [], "stdin_fileno": None}
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
    monkeypatch.setattr(multiprocessing, "current_process",
                        lambda: SimpleNamespace(name="SpawnProcess-1", _kwargs=kwargs))


@pytest.mark.parametrize(("owner", "workers", "expected"), [
    ("uvicorn.supervisors.multiprocess", 3, 3),  # uvicorn --workers 3
    ("uvicorn.server", 1, None),  # --reload: one worker under the reloader
    ("uvicorn.supervisors.multiprocess", 1, None),
    ("uvicorn.supervisors.multiprocess", "2", None),  # not what uvicorn's Config holds
    ("myapp.pool", 4, None),  # another multiprocessing child
    (None, None, None),  # a child without kwargs
])
def test_a_uvicorn_worker_is_recognised_by_how_uvicorn_started_it(
        monkeypatch: pytest.MonkeyPatch, owner: str | None, workers: Any,
        expected: int | None) -> None:
    _uvicorn_child(monkeypatch, owner, workers)
    assert _compat.uvicorn_worker_count() == expected


def test_no_uvicorn_worker_outside_uvicorn_or_in_the_main_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing
    import sys

    _uvicorn_child(monkeypatch, "uvicorn.supervisors.multiprocess", 2)
    assert _compat.uvicorn_worker_count() == 2
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: None)
    assert _compat.uvicorn_worker_count() is None  # the main process
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
    monkeypatch.delitem(sys.modules, "uvicorn")
    assert _compat.uvicorn_worker_count() is None  # uvicorn not even imported

    def broken() -> Any:
        raise RuntimeError("no process")

    monkeypatch.setitem(sys.modules, "uvicorn", object())
    monkeypatch.setattr(multiprocessing, "current_process", broken)
    assert _compat.uvicorn_worker_count() is None  # never raises
