"""The end of the request's SERVER span: ``LeanSpan.end_server`` (the usual case in one
call) against the general path (``update_name``, ``set_attributes``, ``end``), and the
delegating processor's inline queueing against each condition that must leave it.

The general path is the reference: a property compares ``end_server`` with it (and
with the SDK's span) under small attribute limits; the request pass is run both ways
(``end_server`` refused) and the spans compared, queued once and counted in the ledger.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mestres_observability import _leanspan, tracing
from mestres_observability._leanspan import LeanSpan, LeanSwitch, LeanTracer
from mestres_observability.http import http_state, start_request
from mestres_observability.testing import captured_spans, fresh_observability

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STATUS = "http.response.status_code"


def content(span: Any) -> dict[str, Any]:
    """What an exporter reads from an ended span, ids and times aside (attribute order in)."""
    return {
        "name": span.name, "kind": span.kind,
        "attributes": list((span.attributes or {}).items()),
        "dropped_attributes": span.dropped_attributes,
        "events": [(e.name, list((e.attributes or {}).items())) for e in span.events],
        "status": (span.status.status_code, span.status.description),
        "ended": span.end_time is not None,
    }


def general_end(span: Any, status: Any, route: str | None, name: str | None) -> None:
    """What ``RequestPass._end_span`` does without the fast path (status < 500, no error)."""
    attributes: dict[str, Any] = {STATUS: status}
    if route is not None:
        assert name is not None
        span.update_name(name)
        attributes["http.route"] = route
    span.set_attributes(attributes)
    span.end()


# ---------------------------------------------------------------------- LeanSpan.end_server
start_keys = st.sampled_from(["a", "b", "c", "d", "e", STATUS, "http.route"])
start_values = st.one_of(st.text(max_size=12), st.integers(-5, 600), st.booleans())


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.dictionaries(start_keys, start_values, max_size=7),
       status=st.one_of(st.integers(100, 599), st.sampled_from([HTTPStatus.OK, True])),
       route=st.one_of(st.none(), st.text(max_size=14), st.just(b"/bytes")),
       cap=st.integers(0, 9), length=st.integers(0, 10))
def test_end_server_records_what_the_general_path_records(
        no_sdk_warnings: None, start: dict[str, Any], status: Any, route: Any, cap: int,
        length: int) -> None:
    """Same name, attributes in the same order, dropped count, status and end as
    ``update_name`` + ``set_attributes`` + ``end`` (on a lean span and on the SDK's span),
    under attribute count and length limits; the shortcut is taken exactly when no limit
    is within reach and the values are a plain ``int`` and ``str``, else nothing is done."""
    limits = SpanLimits(max_span_attributes=cap, max_attribute_length=length)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "t"}),
                              span_limits=limits, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sdk_tracer = provider.get_tracer("mestres_observability")
    ended: list[LeanSpan] = []
    lean = LeanTracer(sdk_tracer, provider, _leanspan.sampling_plan("always_on", 1.0), limits,
                      "mestres_observability", None, ended.append, [], LeanSwitch())
    name = f"GET {route}" if route is not None else None
    sdk = sdk_tracer.start_span("GET", kind=SpanKind.SERVER, attributes=start)
    general = lean.start_span("GET", kind=SpanKind.SERVER, attributes=start)
    fast = lean.start_span("GET", kind=SpanKind.SERVER, attributes=start)
    assert type(general) is LeanSpan
    assert type(fast) is LeanSpan
    general_end(sdk, status, route, name)
    general_end(general, status, route, name)
    n = len(fast.attributes)
    before = content(fast)
    took = fast.end_server(status, route, name)
    needed = 1 if route is None else 2
    assert took is (type(status) is int and (route is None or type(route) is str)
                    and n + needed <= cap)
    if not took:
        assert content(fast) == before  # nothing done: the general path starts clean
        general_end(fast, status, route, name)
    (expected,) = exporter.get_finished_spans()
    assert content(fast) == content(general) == content(expected)
    assert ended == [general, fast]  # handed to the pipeline once each
    assert fast.end_time is not None
    assert fast.end_time >= fast.start_time


def test_end_server_on_an_ended_span_leaves_it_to_the_general_path(
        caplog: pytest.LogCaptureFixture) -> None:
    ended: list[LeanSpan] = []
    provider = TracerProvider(shutdown_on_exit=False)
    lean = LeanTracer(provider.get_tracer("t"), provider,
                      _leanspan.sampling_plan("always_on", 1.0), SpanLimits(), "t", None,
                      ended.append, [], LeanSwitch())
    span = lean.start_span("GET", kind=SpanKind.SERVER)
    assert type(span) is LeanSpan
    span.end()
    end = span.end_time
    assert span.end_server(200, "/x", "GET /x") is False
    assert span.name == "GET"
    assert dict(span.attributes) == {}
    assert span.end_time == end
    assert ended == [span]
    with caplog.at_level(logging.WARNING, logger="opentelemetry.sdk.trace"):
        general_end(span, 200, "/x", "GET /x")  # what _end_span then does: the SDK's warnings
    assert "Calling end() on an ended span." in caplog.text
    assert ended == [span]


# ---------------------------------------------------------------------- the request pass
class Served:
    """One request through the pass: the span's content, whether ``end_server`` took it,
    how often the span is in the pipeline's queue and what the ledger counted."""

    def __init__(self, took: list[bool], view: dict[str, Any], queued: int, ended: int,
                 dropped: dict[str, int]) -> None:
        self.took = took
        self.view = view
        self.queued = queued
        self.ended = ended
        self.dropped = dropped


def serve(monkeypatch: pytest.MonkeyPatch, *, fast: bool, method: str = "GET",
          route_at_start: bool = False, status: int = 200, exc: BaseException | None = None,
          room: int | None = None, app: Any = None) -> Served:
    """A traced request with a late route (as Flask sets it) or one known at start;
    ``fast=False``: ``end_server`` refuses, so the general path ends the span; ``room``:
    the attribute count limit set to the span's attributes at start plus ``room``."""
    took: list[bool] = []
    original = LeanSpan.end_server

    def spy(self: LeanSpan, *args: Any) -> bool:
        result = original(self, *args) if fast else False
        took.append(result)
        return result

    route = "/orders/<int:order_id>"
    with monkeypatch.context() as m:
        m.setattr(tracing, "_exporter", lambda config, name: InMemorySpanExporter())
        m.setattr(LeanSpan, "end_server", spy)
        served = _serve(m, method, route, route_at_start, status, exc, room, app)
    return Served(took, *served)


def _serve(m: pytest.MonkeyPatch, method: str, route: str, route_at_start: bool, status: int,
           exc: BaseException | None, room: int | None,
           app: Any) -> tuple[dict[str, Any], int, int, dict[str, int]]:
    with fresh_observability(traces_exporter="console", access_log=False) as obs:
        state = http_state(obs)
        pipeline = obs.tracing._pipeline
        assert pipeline is not None
        rp = start_request(state, method, "/orders/7", route=route if route_at_start else None,
                           user_agent="agent/1", peer="10.0.0.1", server_address="shop:8080",
                           trace_headers={"traceparent": TRACEPARENT})
        assert rp is not None
        span = rp._span
        assert type(span) is LeanSpan, "lean spans are off in this process"
        if room is not None:
            m.setattr(span._tracer, "max_attributes", len(span.attributes) + room)
        if app is not None:
            app(span)
        if not route_at_start:
            rp.route = route
        ended = pipeline.ended
        dropped = dict(pipeline.dropped_by)
        rp.finish(status, exc)
        queued = sum(1 for queued in pipeline._queue if queued is span)
        view = content(span)
        counted = pipeline.ended - ended
        dropped = {k: v - dropped[k] for k, v in pipeline.dropped_by.items() if v != dropped[k]}
    return view, queued, counted, dropped


@pytest.mark.parametrize(("case", "settings_", "took"), [
    ("late route", {}, [True]),
    ("route at start", {"route_at_start": True, "status": 404}, [True]),
    ("another method", {"method": "PURGE"}, [True]),
    ("server error", {"status": 503}, []),
    ("exception", {"exc": ValueError("boom")}, []),
    ("room for both", {"room": 2}, [True]),
    ("room for one, route late", {"room": 1}, [False]),
    ("room for one, route at start", {"room": 1, "route_at_start": True}, [True]),
    ("no room", {"room": 0, "route_at_start": True}, [False]),
    ("status set by the app", {"app": lambda sp: sp.set_attribute(STATUS, 1)}, [True]),
    ("route set by the app", {"app": lambda sp: sp.set_attribute("http.route", "x")}, [True]),
    ("ended by the app", {"app": lambda sp: sp.end()}, [False]),
])
def test_the_request_pass_ends_its_span_as_the_general_path_does(
        monkeypatch: pytest.MonkeyPatch, no_sdk_warnings: None, case: str, settings_: dict[str, Any],
        took: list[bool]) -> None:
    """Fast and general path give the same span, queued once and counted once in the
    ledger; the fast path is taken exactly where expected (a limit within reach, a span
    ended already, an error status or exception: the general path)."""
    fast = serve(monkeypatch, fast=True, **settings_)
    general = serve(monkeypatch, fast=False, **settings_)
    assert fast.took == took, case
    assert fast.view == general.view, case
    assert fast.view["ended"]
    assert (fast.queued, fast.ended, fast.dropped) == (general.queued, general.ended,
                                                       general.dropped)
    # queued once; counted at the pass's end, or before it by the app's end()
    counted = 0 if case == "ended by the app" else 1
    assert (fast.queued, fast.ended, fast.dropped) == (1, counted, {})
    if "room" in settings_ and took == [False]:
        assert fast.view["dropped_attributes"] == 1  # the oldest evicted, as set_attributes
    if case == "ended by the app":
        assert STATUS not in dict(fast.view["attributes"])  # set on neither path
        return
    attributes = dict(fast.view["attributes"])
    assert attributes[STATUS] == settings_.get("status", 200)
    if not settings_.get("route_at_start"):
        last = -2 if took == [] else -1  # then error.type follows
        assert fast.view["attributes"][last] == ("http.route", "/orders/<int:order_id>")
        assert fast.view["name"] == ("HTTP" if case == "another method" else "GET") + \
            " /orders/<int:order_id>"


def test_sdk_spans_keep_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(LeanSpan, "end_server", lambda *a: calls.append(a) or True)
    with fresh_observability(traces_exporter="console", access_log=False,
                             lean_spans=False) as obs, captured_spans() as spans:
        rp = start_request(http_state(obs), "GET", "/orders/7")
        assert rp is not None
        assert type(rp._span) is not LeanSpan
        rp.route = "/orders/<int:order_id>"
        rp.finish(200)
        (span,) = spans.spans
    assert calls == []
    assert span.name == "GET /orders/<int:order_id>"
    assert list(span.attributes.items())[-2:] == [(STATUS, 200),
                                                   ("http.route", "/orders/<int:order_id>")]


# ---------------------------------------------------------------------- the pipeline's inline queueing
def _lean_request(obs: Any) -> tuple[Any, LeanSpan]:
    rp = start_request(http_state(obs), "GET", "/orders/7", route="/orders/<int:order_id>")
    assert rp is not None
    assert type(rp._span) is LeanSpan
    return rp, rp._span


def _emits(monkeypatch: pytest.MonkeyPatch, pipeline: Any) -> list[Any]:
    seen: list[Any] = []
    emit = pipeline._emit
    assert emit is not None

    def spy(span: Any) -> None:
        seen.append(span)
        emit(span)

    monkeypatch.setattr(pipeline, "_emit", spy)
    return seen


def test_the_usual_case_is_queued_inline_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    with fresh_observability(traces_exporter="console", access_log=False) as obs:
        pipeline = obs.tracing._pipeline
        seen = _emits(monkeypatch, pipeline)
        on_end: list[Any] = []
        monkeypatch.setattr(pipeline, "on_end", on_end.append)
        rp, span = _lean_request(obs)
        rp.finish(200)
        assert seen == [span]
        assert on_end == []
        assert list(pipeline._queue).count(span) == 1
        assert pipeline.ended == 1


@pytest.mark.parametrize("condition", ["shut down", "tail sampling", "queue full"])
def test_each_condition_leaves_the_inline_queueing(monkeypatch: pytest.MonkeyPatch,
                                                  condition: str) -> None:
    """A pipeline shut down, tail sampling on, a full queue: the span goes through the
    pipeline's on_end (counted there), never appended inline."""
    extra = {"tail_sampling": True, "tail_sampling_ratio": 1.0} if condition == "tail sampling" else {}
    size = 2 if condition == "queue full" else 2048
    with fresh_observability(traces_exporter="console", access_log=False,
                             span_queue_size=size, **extra) as obs:
        pipeline = obs.tracing._pipeline
        seen = _emits(monkeypatch, pipeline)
        if condition == "shut down":
            pipeline.shutdown(1.0)
        elif condition == "queue full":
            pipeline._queue.extend(["filler"] * size)
        rp, span = _lean_request(obs)
        rp.finish(200)
        assert seen == []
        if condition == "shut down":
            assert pipeline.dropped_by["shutdown"] == 1
        elif condition == "queue full":
            assert pipeline.dropped_by["queue_full"] == 1
            pipeline._queue.clear()
        else:  # kept (the local root, fast, sampled by the ratio 1) and queued by on_end
            assert list(pipeline._queue).count(span) == 1
            assert pipeline.ended == 1


@pytest.mark.parametrize(("debt", "dropped", "left"), [(0, 1, 0), (1, 0, 0)])
def test_a_span_queued_after_the_ledger_closed_is_counted(
        monkeypatch: pytest.MonkeyPatch, debt: int, dropped: int, left: int) -> None:
    """Queued inline after finish() closed the ledger: a shutdown drop, or the debt
    finish() left (a batch counted there before its span was counted here)."""
    with fresh_observability(traces_exporter="console", access_log=False) as obs:
        pipeline = obs.tracing._pipeline
        seen = _emits(monkeypatch, pipeline)
        monkeypatch.setattr(pipeline, "settled", True)
        monkeypatch.setattr(pipeline, "_debt", debt)
        rp, span = _lean_request(obs)
        rp.finish(200)
        assert seen == [span]
        assert pipeline.ended == 0
        assert pipeline.dropped_by["shutdown"] == dropped
        assert pipeline._debt == left
        pipeline._queue.clear()


def test_an_emitter_that_raises_is_counted_as_export_failed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(span: Any) -> None:
        raise RuntimeError("boom")

    with fresh_observability(traces_exporter="console", access_log=False) as obs:
        pipeline = obs.tracing._pipeline
        monkeypatch.setattr(pipeline, "_emit", boom)
        rp, _ = _lean_request(obs)
        rp.finish(200)
        assert pipeline.dropped_by["export_failed"] == 1
        assert pipeline.ended == 0


def test_the_pipeline_and_processors_are_read_when_the_span_ends() -> None:
    """A span started under one instance and ended after a re-init reaches the pipeline
    current at its end; a processor attached after its start sees it."""
    with fresh_observability(traces_exporter="console", access_log=False) as first:
        old = first.tracing._pipeline
        rp, span = _lean_request(first)
        with fresh_observability(traces_exporter="console", access_log=False) as second, \
                captured_spans() as spans:
            new = second.tracing._pipeline
            assert new is not old
            assert tracing._GLOBAL.delegate.target is new
            rp.finish(200)
            assert list(new._queue).count(span) == 1
            assert new.ended == 1
            assert old.ended == 0
            assert span not in old._queue
            assert spans.names() == ["GET /orders/<int:order_id>"]
            new._queue.clear()


# ---------------------------------------------------------------------- the scrub at the end
scrub_keys = st.sampled_from(["app.note", "url.path", "app.password", "http.request.header.authorization",
                              "url.query", "url.full", "db.statement"])
scrub_values = st.one_of(
    st.sampled_from(["plain text", "password=hunter2", "ticket=abc123", "/pay?token=t0k3n",
                     "4111 1111 1111 1111"]),
    st.integers(), st.booleans(), st.floats(allow_nan=False),
    st.lists(st.sampled_from(["a", "password=x"]), max_size=2).map(tuple),
    st.lists(st.sampled_from(["b", "4111111111111111"]), max_size=2))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(scrub_keys, scrub_values, min_size=1, max_size=5),
                min_size=1, max_size=6))
# a query-ruled key after a plain one with the same value: url.query must still be redacted
# by the query rules (a warm scrubber that took it for a plain key would leave it)
@example([{"app.note": "ticket=abc123", "url.query": "ticket=abc123"}])
def test_span_attributes_scrub_alike_with_keys_known_or_not(
        spans: list[dict[str, Any]]) -> None:
    """A scrubber that has seen the keys (known plain keys take the short way) redacts as
    a fresh one: a key redacted whole, or under the query rules, is never taken for a
    plain one."""
    from mestres_observability._redact import QueryRedactor, Redactor, SpanScrubber

    def scrubber() -> SpanScrubber:
        values = Redactor(("password", "authorization"), card_numbers=True)
        return SpanScrubber(values, QueryRedactor(("password", "token", "ticket"), values))

    warm = scrubber()
    for attributes in spans:
        for key in attributes:
            warm.sensitive_key(key)
        assert warm.attributes(attributes) == scrubber().attributes(attributes), attributes
