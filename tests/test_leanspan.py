"""The lean recording span against the SDK's span, operation by operation, and its OTLP
encoder against the SDK's encoder, byte by byte.

Each property builds an SDK span and a lean span on one private SDK provider (small span
limits, so eviction and drop counts are exercised), applies the same operations to both
and compares what a processor and the wire would see, ids and timestamps aside. The
lean span path as the library selects it, and on the wire of each framework, is in
``tests/adapters/test_lean_spans.py`` and ``tests/test_lean_selection.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace import sampling as sdk_sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from mestres_observability import _leanspan
from mestres_observability._leanspan import LeanSpan, LeanSwitch, LeanTracer, encode_spans

LIMITS = SpanLimits(max_attribute_length=24, max_span_attributes=6, max_events=3,
                    max_event_attributes=3, max_links=2, max_link_attributes=2)
SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio")
quiet = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


class Pair:
    """An SDK tracer and a lean tracer on the same provider; ended spans of both kept."""

    def __init__(self, sampler: Any = None, limits: SpanLimits = LIMITS,
                 plan: _leanspan.SamplingPlan | None = None) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": "pair", "n": 1}),
            sampler=sampler or sdk_sampling.ParentBased(sdk_sampling.ALWAYS_ON),
            span_limits=limits, shutdown_on_exit=False)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.sdk = self.provider.get_tracer("mestres_observability", "9.9")
        self.ended: list[LeanSpan] = []
        self.lean = LeanTracer(self.sdk, self.provider,
                               plan or _leanspan.sampling_plan("parentbased_always_on", 1.0),
                               limits, "mestres_observability", "9.9", self.ended.append, [],
                               LeanSwitch())

    def sdk_span(self) -> ReadableSpan:
        (span,) = self.exporter.get_finished_spans()
        self.exporter.clear()
        return span


# ---------------------------------------------------------------------- operations
keys = st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "http.route"])
scalars = st.one_of(
    st.text(max_size=40), st.integers(min_value=-(2**70), max_value=2**70), st.booleans(),
    st.floats(allow_nan=False), st.none(), st.binary(max_size=8),
)
values = st.one_of(
    scalars, st.lists(st.integers(-5, 5), max_size=3), st.lists(st.text(max_size=5), max_size=3),
    # tuples of strings (captured headers), some past the length limit
    st.lists(st.text(max_size=30), max_size=3).map(tuple),
    st.dictionaries(st.text(min_size=1, max_size=3), st.integers(-3, 3), max_size=2),
)
attribute_maps = st.dictionaries(st.one_of(keys, st.just("")), values, max_size=8)
contexts = st.builds(
    lambda t, s, remote, state: SpanContext(t, s, remote, TraceFlags(1),
                                            TraceState([("k", state)]) if state else None),
    st.integers(0, 2**128 - 1), st.integers(0, 2**64 - 1), st.booleans(),
    st.sampled_from(["", "v1"]))
statuses = st.one_of(
    st.builds(Status, st.sampled_from(list(StatusCode)), st.one_of(st.none(), st.text(max_size=8))),
    st.sampled_from(list(StatusCode)),
)
operations = st.lists(st.one_of(
    st.tuples(st.just("set_attribute"), keys, values),
    st.tuples(st.just("set_attributes"), attribute_maps),
    st.tuples(st.just("add_event"), st.text(max_size=6), st.one_of(st.none(), attribute_maps)),
    st.tuples(st.just("add_link"), contexts, st.one_of(st.none(), attribute_maps)),
    st.tuples(st.just("set_status"), statuses, st.one_of(st.none(), st.just("why"))),
    st.tuples(st.just("update_name"), st.text(max_size=10)),
    st.tuples(st.just("record_exception"), st.sampled_from([ValueError("v"), KeyError("k")])),
), max_size=12)


def apply(span: Any, ops: list[tuple[Any, ...]]) -> None:
    for op, *args in ops:
        if op == "add_event":
            span.add_event(args[0], args[1], timestamp=1_000)
        elif op == "record_exception":
            span.record_exception(args[0], timestamp=2_000)
        else:
            getattr(span, op)(*args)


def content(span: ReadableSpan) -> dict[str, Any]:
    """Everything a processor or exporter reads from a finished span, ids and times aside."""
    return {
        "name": span.name, "kind": span.kind,
        "parent": (span.parent.trace_id, span.parent.span_id, span.parent.is_remote)
        if span.parent else None,
        "trace_id": span.context.trace_id, "flags": int(span.context.trace_flags),
        "trace_state": span.context.trace_state.to_header(),
        "attributes": list((span.attributes or {}).items()),
        "dropped_attributes": span.dropped_attributes,
        "events": [(e.name, e.timestamp, list((e.attributes or {}).items()),
                    e.dropped_attributes) for e in span.events],
        "dropped_events": span.dropped_events,
        "links": [(link.context, list((link.attributes or {}).items()), link.dropped_attributes)
                  for link in span.links],
        "dropped_links": span.dropped_links,
        "status": (span.status.status_code, span.status.description),
        "resource": dict(span.resource.attributes),
        "scope": span.instrumentation_scope,
    }


@quiet
@given(start=st.one_of(st.none(), attribute_maps), ops=operations,
       kind=st.sampled_from(list(SpanKind)), remote=st.booleans(),
       after_end=st.lists(st.tuples(st.just("set_attribute"), keys, values), max_size=2))
def test_a_lean_span_records_what_the_sdk_span_records(
        no_sdk_warnings: None, start: dict[str, Any] | None, ops: list[tuple[Any, ...]],
        kind: SpanKind, remote: bool, after_end: list[tuple[Any, ...]]) -> None:
    pair = Pair()
    parent = trace.set_span_in_context(NonRecordingSpan(SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, remote, TraceFlags(1),
        TraceState([("vendor", "x")]))))
    sdk = pair.sdk.start_span("op", context=parent, kind=kind, attributes=start)
    lean = pair.lean.start_span("op", context=parent, kind=kind, attributes=start)
    assert type(lean) is LeanSpan
    for span in (sdk, lean):
        apply(span, ops)
        span.end()
        apply(span, after_end)  # ignored once ended, by both
    expected = pair.sdk_span()
    assert pair.ended == [lean]
    assert content(lean.readable()) == content(expected)
    assert content(lean) == content(expected)  # the ReadableSpan side of the lean span itself
    # on the wire: the lean encoder, the SDK encoder of its ReadableSpan, and of the SDK span
    # give the same bytes once the ids and timestamps are the SDK span's
    wire = encode_spans([lean])
    assert wire == sdk_encode([lean.readable()]).SerializePartialToString()
    assert encode_spans([expected]) == sdk_encode([expected]).SerializePartialToString()


def test_encoder_groups_a_mixed_batch_as_the_sdk_does(no_sdk_warnings: None) -> None:
    pair, other = Pair(), Pair()
    spans: list[Any] = []
    for i in range(4):
        lean = pair.lean.start_span(f"lean{i}", attributes={"i": i})
        lean.end()
        spans.append(lean)
        s = (pair if i % 2 else other).provider.get_tracer(f"scope{i % 3}").start_span(f"sdk{i}")
        s.end()
        spans.append((pair if i % 2 else other).sdk_span())
    readable = [s.readable() if isinstance(s, LeanSpan) else s for s in spans]
    assert encode_spans(spans) == sdk_encode(readable).SerializePartialToString()


def test_an_attribute_the_encoder_cannot_take_is_skipped_as_by_the_sdk(
        caplog: pytest.LogCaptureFixture) -> None:
    pair = Pair(limits=SpanLimits(max_attribute_length=1024))
    lean = pair.lean.start_span("big", attributes={"huge": 2**64, "ok": 1})
    lean.end()
    with caplog.at_level(logging.ERROR):
        wire = encode_spans([lean])
    assert wire == sdk_encode([lean.readable()]).SerializePartialToString()
    assert "Failed to encode key huge" in caplog.text
    bad = pair.lean.start_span("\ud800")  # not UTF-8: the SDK's encoder refuses the batch
    bad.end()
    for encode in (encode_spans, lambda spans: sdk_encode(spans).SerializePartialToString()):
        with pytest.raises(Exception):  # noqa: B017 - the SDK raises its own types
            encode([bad if encode is encode_spans else bad.readable()])


# ---------------------------------------------------------------------- ids, sampling
def _sdk_sampler(name: str, ratio: float) -> Any:
    s = sdk_sampling
    return {
        "always_on": s.ALWAYS_ON, "always_off": s.ALWAYS_OFF,
        "traceidratio": s.TraceIdRatioBased(ratio),
        "parentbased_always_on": s.ParentBased(s.ALWAYS_ON),
        "parentbased_always_off": s.ParentBased(s.ALWAYS_OFF),
        "parentbased_traceidratio": s.ParentBased(s.TraceIdRatioBased(ratio)),
    }[name]


parents = st.one_of(
    st.none(),
    st.builds(lambda t, s, remote, flags: SpanContext(t, s, remote, TraceFlags(flags)),
              st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.booleans(),
              st.sampled_from([0, 1, 2, 3])),
)


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(SAMPLERS), ratio=st.floats(0.0, 1.0),
       trace_id=st.integers(1, 2**128 - 1), parent=parents)
def test_sampling_decisions_match_the_sdk_samplers(name: str, ratio: float, trace_id: int,
                                                   parent: SpanContext | None) -> None:
    plan = _leanspan.sampling_plan(name, ratio)
    assert plan is not None
    ctx = trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
    expected = _sdk_sampler(name, ratio).should_sample(ctx, trace_id, "x").decision.is_sampled()
    assert plan.sampled(parent, trace_id) is expected


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(SAMPLERS), ratio=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
       parent=parents)
def test_lean_tracer_decides_flags_and_parents_as_the_sdk_tracer(
        name: str, ratio: float, parent: SpanContext | None) -> None:
    pair = Pair(sampler=_sdk_sampler(name, ratio), plan=_leanspan.sampling_plan(name, ratio))
    ctx = trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
    for _ in range(3):
        sdk = pair.sdk.start_span("x", context=ctx)
        lean = pair.lean.start_span("x", context=ctx)
        if parent is not None:  # the trace continues: the same decision, flags and state
            assert lean.is_recording() is sdk.is_recording()
            assert lean.get_span_context().trace_flags == sdk.get_span_context().trace_flags
            assert lean.get_span_context().trace_id == parent.trace_id
        else:  # a new trace: a new random id, sampled flag as decided, random flag set
            lc = lean.get_span_context()
            assert lc.trace_flags & 2 == sdk.get_span_context().trace_flags & 2 == 2
            assert bool(lc.trace_flags & 1) is lean.is_recording() is _sdk_sampler(
                name, ratio).should_sample(None, lc.trace_id, "x").decision.is_sampled()
        assert type(lean) is (LeanSpan if lean.is_recording() else NonRecordingSpan)
        assert not lean.get_span_context().is_remote
        assert lean.get_span_context().is_valid
        sdk.end()
        lean.end()


def test_ids_are_random_128_and_64_bit() -> None:
    pair = Pair()
    spans = [pair.lean.start_span("x") for _ in range(2000)]
    trace_ids = {s.get_span_context().trace_id for s in spans}
    span_ids = {s.get_span_context().span_id for s in spans}
    assert len(trace_ids) == len(span_ids) == 2000
    assert max(trace_ids).bit_length() > 120
    assert max(span_ids).bit_length() > 56
    assert 0 not in trace_ids
    assert 0 not in span_ids


def test_sampling_plan_refuses_other_samplers() -> None:
    assert _leanspan.sampling_plan("xray", 1.0) is None
    assert _leanspan.sampling_plan("parentbased_jaeger_remote", 1.0) is None


# ---------------------------------------------------------------------- parenting, API
def test_sdk_spans_started_under_a_lean_span_are_its_children() -> None:
    pair = Pair()
    lean = pair.lean.start_span("server", kind=SpanKind.SERVER)
    token = otel_context.attach(trace.set_span_in_context(lean))
    try:
        assert trace.get_current_span() is lean
        with pair.provider.get_tracer("user").start_as_current_span("child") as child:
            grandchild = pair.lean.start_span("grandchild")
            grandchild.end()
    finally:
        otel_context.detach(token)
    lean.end()
    sdk_child = pair.sdk_span()
    assert sdk_child.parent is not None
    assert sdk_child.parent.span_id == lean.get_span_context().span_id
    assert sdk_child.context.trace_id == lean.get_span_context().trace_id
    assert not sdk_child.parent.is_remote
    assert grandchild.parent.span_id == child.get_span_context().span_id  # type: ignore[attr-defined]


def test_context_manager_and_use_span_record_an_exception_like_the_sdk(
        no_sdk_warnings: None) -> None:
    pair = Pair(limits=SpanLimits(max_attribute_length=4096))
    seen: dict[str, list[dict[str, Any]]] = {}
    for label, tracer in (("sdk", pair.sdk), ("lean", pair.lean)):
        out = seen[label] = []
        for way in ("span as context manager", "start_as_current_span"):
            with pytest.raises(ValueError):  # noqa: PT012 - the raise is the point
                if way == "span as context manager":
                    with tracer.start_span(way):
                        raise ValueError("bad input")
                else:
                    with tracer.start_as_current_span(way) as current:
                        assert trace.get_current_span() is current
                        raise ValueError("bad input")
            got = pair.sdk_span() if label == "sdk" else pair.ended.pop().readable()
            data = content(got)
            for event in data["events"]:  # timestamps aside
                event_attrs = dict(event[2])
                out.append({"event": event[0], "escaped": event_attrs["exception.escaped"],
                            "type": event_attrs["exception.type"],
                            "message": event_attrs["exception.message"]})
            out.append({"status": data["status"], "name": data["name"]})
    assert seen["lean"] == seen["sdk"]
    assert {"status": (StatusCode.ERROR, "ValueError: bad input"),
            "name": "start_as_current_span"} in seen["lean"]
    assert [e["escaped"] for e in seen["lean"] if "escaped" in e] == ["True", "False"]


def test_calls_on_an_ended_span_warn_as_the_sdk_does(caplog: pytest.LogCaptureFixture) -> None:
    pair = Pair()
    logged = []
    for tracer in (pair.sdk, pair.lean):
        span = tracer.start_span("x")
        span.end()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="opentelemetry.sdk.trace"):
            span.end()
            span.set_attribute("a", 1)
            span.set_attributes({"a": 1})
            span.add_event("e")
            span.update_name("y")
            span.set_status(StatusCode.ERROR)
        logged.append([(r.name, r.getMessage()) for r in caplog.records])
    assert logged[0] == logged[1]
    assert len(logged[1]) == 6


def test_links_at_start_and_status_rules() -> None:
    pair = Pair()
    link_ctx = SpanContext(7, 8, True, TraceFlags(1))
    links = [Link(link_ctx, {"a": 1}), Link(trace.INVALID_SPAN_CONTEXT)]
    for tracer in (pair.sdk, pair.lean):
        span = tracer.start_span("linked", links=links)
        span.set_status(Status(StatusCode.OK))
        span.set_status(StatusCode.ERROR, "ignored: OK is final")
        span.end()
    expected = content(pair.sdk_span())
    lean = pair.ended[0]
    got = content(lean.readable())
    assert got.pop("trace_id") != expected.pop("trace_id")  # two new traces
    assert got == expected
    assert lean.status.status_code is StatusCode.OK
    assert len(lean.links) == 1  # the invalid link is left out, as by the SDK


def test_switch_off_gives_sdk_spans() -> None:
    pair = Pair()
    pair.lean.switch.on = False
    span = pair.lean.start_span("x")
    assert not isinstance(span, LeanSpan)
    span.end()
    assert pair.sdk_span().name == "x"


# ---------------------------------------------------------------------- traceparent inline
hexes = st.text("0123456789abcdefABCDEF", min_size=0, max_size=34)
traceparents = st.one_of(
    st.builds(lambda v, t, s, f: f"{v}-{t}-{s}-{f}",
              st.sampled_from(["00", "01", "ff", "0", "zz"]),
              st.one_of(st.just("0" * 32), st.just("4bf92f3577b34da6a3ce929d0e0e4736"), hexes),
              st.one_of(st.just("0" * 16), st.just("00f067aa0ba902b7"), hexes),
              st.sampled_from(["00", "01", "02", "03", "ff", "1", "0g"])),
    st.text(max_size=60),
)


@pytest.fixture(scope="module")
def w3c_installed() -> Iterator[None]:
    """An instance whose propagator is the library's W3C one (the default)."""
    from opentelemetry import propagate

    from mestres_observability.testing import fresh_observability
    from mestres_observability.tracing import _GLOBAL

    with fresh_observability(service_name="extract"):
        assert _GLOBAL.w3c is propagate.get_global_textmap()
        yield


#: attribute maps the inline checks take (long strings among them), or any
clean_maps = st.one_of(st.dictionaries(keys, st.one_of(
    st.text(min_size=20, max_size=40), st.text(max_size=5), st.integers(-(2**63), 2**63 - 1),
    st.booleans(), st.floats(allow_nan=False),
    st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=2).map(tuple)),
    max_size=8), attribute_maps)


@quiet
@given(start=clean_maps, ops=operations, sampled=st.booleans(),
       state=st.sampled_from(["", "vendor=x,other=y"]))
def test_a_remote_child_with_handed_attributes_records_what_the_sdk_span_records(
        no_sdk_warnings: None, start: dict[str, Any], ops: list[tuple[Any, ...]],
        sampled: bool, state: str) -> None:
    """``start_remote_child`` (the SERVER span under an inline-parsed ``traceparent``) keeps
    the dict it is handed, values cut in place, and records what an SDK span started under
    the same remote parent, through its ``Context``, records."""
    pair = Pair()
    remote = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True,
                         TraceFlags(1 if sampled else 0), TraceState.from_header([state]))
    handed = dict(start)
    sdk = pair.sdk.start_span("op", context=trace.set_span_in_context(NonRecordingSpan(remote)),
                              kind=SpanKind.SERVER, attributes=start)
    lean = pair.lean.start_remote_child("op", remote, SpanKind.SERVER, handed)
    if not sampled:
        assert type(lean) is NonRecordingSpan
        assert not sdk.is_recording()
        return
    assert type(lean) is LeanSpan
    for span in (sdk, lean):
        apply(span, ops)
        span.end()
    expected = pair.sdk_span()
    assert content(lean) == content(expected)
    assert encode_spans([lean]) == sdk_encode([lean.readable()]).SerializePartialToString()


def test_a_remote_child_needs_its_context_when_the_sdk_path_or_a_watcher_is_on() -> None:
    pair = Pair()
    remote = SpanContext(0x1, 0x2, True, TraceFlags(1))
    assert type(pair.lean.start_remote_child("op", remote, SpanKind.SERVER, {})) is LeanSpan
    pair.lean.extra.append(SimpleSpanProcessor(InMemorySpanExporter()))
    assert pair.lean.start_remote_child("op", remote, SpanKind.SERVER, {}) is None
    pair.lean.extra.clear()
    pair.lean.switch.on = False
    attributes = {"a": "x" * 100}
    assert pair.lean.start_remote_child("op", remote, SpanKind.SERVER, attributes) is None
    assert attributes == {"a": "x" * 100}  # untouched: the caller starts the span with it


@settings(max_examples=300, deadline=None)
@given(value=traceparents, extra=st.sampled_from([{}, {"tracestate": "a=1"},
                                                   {"baggage": "k=v"}]))
def test_inline_traceparent_gives_what_propagate_extract_gives(
        w3c_installed: None, value: str, extra: dict[str, str]) -> None:
    from opentelemetry import baggage, propagate

    from mestres_observability.tracing import extract_context

    headers = {"traceparent": value, **extra}
    ours = extract_context(headers)
    theirs = propagate.extract(headers)
    assert trace.get_current_span(ours).get_span_context() == \
        trace.get_current_span(theirs).get_span_context()
    assert type(trace.get_current_span(ours)) is type(trace.get_current_span(theirs))
    assert baggage.get_all(ours) == baggage.get_all(theirs)
    assert len(ours) == len(theirs)  # the same keys: nothing else in the new context
