"""The metrics-only request pass, trimmed: the same series, bounds and context as before.

The pass keeps what it resolves per series (the request counter's value holder, a
histogram observer, the in-progress gauge's holder) and skips the context walk when the
application bound nothing; these tests show each shortcut records and restores what the
long way does.
"""

from __future__ import annotations

import contextvars
import logging
import math
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from mestres_observability import _compat
from mestres_observability import http as http_module
from mestres_observability.cardinality import OVERFLOW, LabelGuard
from mestres_observability.http import UNMATCHED, http_state, start_request
from mestres_observability.logs import bind_context
from mestres_observability.testing import fresh_observability, sample_value

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for m in registry.collect() for s in m.samples
            if not s.name.endswith("_created")]


# ---------------------------------------------------------------------- histogram observer
amounts = st.one_of(st.sampled_from([*BUCKETS, 0.0, -0.0, -1.0, math.inf, -math.inf, math.nan,
                                     0.0050000001, 0.0049999999, 1e-9, 1e300]),
                    st.floats(allow_nan=True, allow_infinity=True))


def _assert_same_samples(slow_registry: CollectorRegistry,
                         fast_registry: CollectorRegistry) -> None:
    """The two registries hold the same samples (NaN equal to NaN)."""
    slow, fast = _samples(slow_registry), _samples(fast_registry)
    assert len(slow) == len(fast)
    for (n1, l1, v1), (n2, l2, v2) in zip(slow, fast, strict=True):
        assert (n1, l1) == (n2, l2)
        assert v1 == v2 or (math.isnan(v1) and math.isnan(v2))


@settings(max_examples=200, deadline=None)
@given(values=st.lists(amounts, max_size=20), locked=st.booleans())
def test_histogram_observer_records_what_observe_records(values: list[float],
                                                         locked: bool) -> None:
    """Both forms: MutexValue's ``inc`` inline (``locked``), the holders' own ``inc``."""
    registries = []
    mutex = _compat._mutex_value_class
    for fast in (False, True):
        registry = CollectorRegistry()
        child = Histogram("d", "d", ["k"], registry=registry, buckets=BUCKETS).labels("v")
        if not locked:
            _compat._mutex_value_class = lambda: None  # type: ignore[assignment]
        try:
            observe = _compat.histogram_observer(child) if fast else child.observe
        finally:
            _compat._mutex_value_class = mutex  # type: ignore[assignment]
        for v in values:
            observe(v)
        registries.append(registry)
    _assert_same_samples(*registries)


def test_histogram_observer_is_not_observe_for_a_plain_histogram() -> None:
    child = Histogram("d", "d", ["k"], registry=CollectorRegistry(), buckets=BUCKETS).labels("v")
    assert _compat.histogram_observer(child) != child.observe


def test_histogram_observer_falls_back_on_other_classes_and_missing_internals(
        caplog: pytest.LogCaptureFixture) -> None:
    seen: list[float] = []

    class Own(Histogram):
        def observe(self, amount: float, exemplar: Any = None) -> None:
            seen.append(amount)
            super().observe(amount, exemplar)

    own = Own("o", "o", ["k"], registry=CollectorRegistry(), buckets=BUCKETS).labels("v")
    observe = _compat.histogram_observer(own)
    observe(0.2)
    assert seen == [0.2]  # its own observe ran

    broken = Histogram("b", "b", ["k"], registry=CollectorRegistry(), buckets=BUCKETS).labels("v")
    del broken._buckets  # an unexpected release
    _compat._degraded.pop("prometheus_client histogram value holders", None)
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        assert _compat.histogram_observer(broken) == broken.observe
    assert "histogram value holders" in caplog.text
    _compat._degraded.pop("prometheus_client histogram value holders", None)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(amounts, max_size=20), locked=st.booleans())
def test_request_recorder_records_what_inc_and_observe_record(values: list[float],
                                                              locked: bool) -> None:
    """Both forms of ``request_recorder``: the MutexValue holders incremented inline under
    their locks (``locked``), and the fallback through the holders' own ``inc``."""
    from prometheus_client import Counter

    registries = []
    mutex = _compat._mutex_value_class
    for fast in (False, True):
        registry = CollectorRegistry()
        counter = Counter("c", "c", ["k"], registry=registry).labels("v")
        child = Histogram("d", "d", ["k"], registry=registry, buckets=BUCKETS).labels("v")
        if not locked:
            _compat._mutex_value_class = lambda: None  # type: ignore[assignment]
        try:
            record = _compat.request_recorder(counter, child) if fast else None
        finally:
            _compat._mutex_value_class = mutex  # type: ignore[assignment]
        if fast and locked:
            assert record is not None
            assert record.__name__ == "record_locked"
        for v in values:
            if record is not None:
                record(v)
            else:
                counter.inc()
                child.observe(v)
        registries.append(registry)
    _assert_same_samples(*registries)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(amounts, max_size=20))
def test_request_done_recorder_records_what_inc_observe_and_dec_record(
        values: list[float]) -> None:
    """Counter, histogram and in-progress gauge through the one call: the same samples as
    ``inc()``, ``observe()`` and ``dec()`` (the gauge back where each request found it)."""
    from prometheus_client import Counter, Gauge

    registries = []
    for fast in (False, True):
        registry = CollectorRegistry()
        counter = Counter("c", "c", ["k"], registry=registry).labels("v")
        child = Histogram("d", "d", ["k"], registry=registry, buckets=BUCKETS).labels("v")
        gauge = Gauge("g", "g", ["k"], registry=registry).labels("v")
        holder = _compat.value_holder(gauge)
        record = _compat.request_done_recorder(counter, child, holder) if fast else None
        if fast:
            assert record is not None
        for v in values:
            holder.inc(1)
            if record is not None:
                record(v)
            else:
                counter.inc()
                child.observe(v)
                gauge.dec()
        registries.append(registry)
    _assert_same_samples(*registries)


def test_request_done_recorder_is_none_unless_every_holder_is_a_mutex_value() -> None:
    """Another value class (multiprocess mode's), a dropped series, or internals that
    changed: ``None``, and the caller records and leaves the gauge the public way."""
    from prometheus_client import Counter, Gauge

    registry = CollectorRegistry()
    counter = Counter("c", "c", ["k"], registry=registry).labels("v")
    child = Histogram("d", "d", ["k"], registry=registry, buckets=BUCKETS).labels("v")
    gauge = Gauge("g", "g", ["k"], registry=registry).labels("v")
    holder = _compat.value_holder(gauge)
    assert _compat.request_done_recorder(counter, child, gauge) is None  # the child, no holder
    assert _compat.request_done_recorder(None, child, holder) is None
    assert _compat.request_done_recorder(counter, None, holder) is None
    mutex = _compat._mutex_value_class
    _compat._mutex_value_class = lambda: None  # type: ignore[assignment]
    try:
        assert _compat.request_done_recorder(counter, child, holder) is None
    finally:
        _compat._mutex_value_class = mutex  # type: ignore[assignment]


def test_the_pass_leaves_the_gauge_the_public_way_without_the_done_recorder() -> None:
    """With ``request_done_recorder`` unavailable the request is still counted once and
    taken out of ``http_requests_in_progress`` through the holder's own ``inc(-1)``."""
    original = http_module.request_done_recorder
    http_module.request_done_recorder = lambda *a: None  # type: ignore[assignment]
    try:
        with fresh_observability(tracing_enabled=False, access_log=False) as obs:
            state = http_state(obs)
            for _ in range(3):
                _request(state, "/a", "/a")
            assert sample_value("http_requests_total", method="GET", endpoint="/a",
                                status="200") == 3
            assert sample_value("http_request_duration_seconds_count", method="GET",
                                endpoint="/a", status="200") == 3
            assert sample_value("http_requests_in_progress", method="GET", endpoint="/a") == 0
            assert [fn for _holder, fn in state.done_recorders.values()] == [None]
            assert set(state.recorders) == {("GET", "/a", 200)}
    finally:
        http_module.request_done_recorder = original  # type: ignore[assignment]


def test_request_recorder_falls_back_on_dropped_series_and_other_classes() -> None:
    """A child dropped by a guard (``None``) records nothing; a histogram class of its
    own is observed through its own ``observe``."""
    from prometheus_client import Counter

    registry = CollectorRegistry()
    counter = Counter("c", "c", ["k"], registry=registry).labels("v")
    histogram = Histogram("d", "d", ["k"], registry=registry, buckets=BUCKETS).labels("v")
    _compat.request_recorder(counter, None)(0.2)
    _compat.request_recorder(None, histogram)(0.3)
    _compat.request_recorder(None, None)(0.4)
    assert registry.get_sample_value("c_total", {"k": "v"}) == 1
    assert registry.get_sample_value("d_count", {"k": "v"}) == 1
    assert registry.get_sample_value("d_sum", {"k": "v"}) == 0.3

    seen: list[float] = []

    class Own(Histogram):
        def observe(self, amount: float, exemplar: Any = None) -> None:
            seen.append(amount)
            super().observe(amount, exemplar)

    own = Own("o", "o", ["k"], registry=registry, buckets=BUCKETS).labels("v")
    record = _compat.request_recorder(counter, own)
    assert record.__name__ == "record"  # not the inline form
    record(0.5)
    assert seen == [0.5]
    assert registry.get_sample_value("c_total", {"k": "v"}) == 2
    assert registry.get_sample_value("o_bucket", {"k": "v", "le": "0.5"}) == 1


# ---------------------------------------------------------------------- guard
def test_label_guard_settled_only_within_the_bound() -> None:
    registry = CollectorRegistry()
    from prometheus_client import Counter

    guard = LabelGuard(Counter("t", "t", ["e"], registry=registry), "t_total", ["e"], ["e"], 2)
    assert not guard.settled(("a",))  # not resolved yet
    guard.child(("a",))
    guard.child(("b",))
    guard.child(("c",))  # past the bound: folded
    assert guard.settled(("a",))
    assert guard.settled(("b",))
    assert not guard.settled(("c",))
    assert not guard.settled(([],))  # unhashable
    guard.child((1,))  # not a str: never kept by the guard either
    assert not guard.settled((1,))


# ---------------------------------------------------------------------- the pass
def _request(state: Any, path: str, route: str, status: int = 200) -> None:
    rp = start_request(state, "GET", path)
    assert rp is not None
    rp.activate()
    try:
        rp.set_route(route)
        before = sample_value("http_requests_in_progress", method="GET", endpoint=route)
        rp.track_in_progress()
        during = sample_value("http_requests_in_progress", method="GET", endpoint=route)
        assert during == (before + 1 if rp._in_progress is not None else before)
        rp.finish(status)
    finally:
        rp.deactivate()


def test_series_past_the_bound_are_counted_as_folded_on_every_request() -> None:
    limits = {"http_requests_total": 2, "http_request_duration_seconds": 2,
              "http_requests_in_progress": 2}
    with fresh_observability(tracing_enabled=False, access_log=False,
                             label_limits=limits) as obs:
        state = http_state(obs)
        routes = [f"/r{i}" for i in range(4)]
        for _ in range(3):
            for route in routes:
                _request(state, route, route)
        for route in routes[:2]:
            assert sample_value("http_requests_total", method="GET", endpoint=route,
                                status="200") == 3
            assert sample_value("http_request_duration_seconds_count", method="GET",
                                endpoint=route, status="200") == 3
        assert sample_value("http_requests_total", method="GET", endpoint=OVERFLOW,
                            status="200") == 6
        assert sample_value("http_request_duration_seconds_count", method="GET",
                            endpoint=OVERFLOW, status="200") == 6
        # 6 folded requests per series family, each counted (none cached past the bound)
        for name in ("http_requests_total", "http_request_duration_seconds"):
            assert sample_value("mestres_observability_label_overflow_total", metric=name) == 6
        # the in-progress gauge drops its excess: tracked only for the first two routes
        assert sample_value("mestres_observability_label_overflow_total",
                            metric="http_requests_in_progress") == 6
        # the tracked series end through one recorder that leaves the gauge too; the
        # untracked ones (the gauge's excess) through the plain one, folded: none kept
        assert set(state.done_recorders) == {("GET", "/r0", 200), ("GET", "/r1", 200)}
        assert all(fn is not None for _holder, fn in state.done_recorders.values())
        assert state.recorders == {}
        assert set(state.in_progress_values) == {("GET", "/r0"), ("GET", "/r1")}
        for route in routes[:2]:
            assert sample_value("http_requests_in_progress", method="GET", endpoint=route) == 0


def test_traced_requests_past_the_bound_are_folded_each_time_with_their_exemplar() -> None:
    """With a sampled span of ours the series get its ids as exemplar through the kept
    exemplar recorders; folded series are still counted as folded on every request."""
    from prometheus_client.openmetrics.exposition import generate_latest

    limits = {"http_requests_total": 2, "http_request_duration_seconds": 2,
              "http_requests_in_progress": 2}
    with fresh_observability(access_log=False, label_limits=limits) as obs:
        state = http_state(obs)
        assert state.tracing
        routes = [f"/r{i}" for i in range(4)]
        last: dict[str, str] = {}
        for _ in range(3):
            for route in routes:
                rp = start_request(state, "GET", route)
                assert rp is not None
                assert rp.span is not None
                rp.set_route(route)
                rp.finish(200)
                last[route] = f"{rp.span.get_span_context().span_id:016x}"
        for route in routes[:2]:
            assert sample_value("http_requests_total", method="GET", endpoint=route,
                                status="200") == 3
        assert sample_value("http_requests_total", method="GET", endpoint=OVERFLOW,
                            status="200") == 6
        assert sample_value("http_request_duration_seconds_count", method="GET",
                            endpoint=OVERFLOW, status="200") == 6
        for name in ("http_requests_total", "http_request_duration_seconds"):
            assert sample_value("mestres_observability_label_overflow_total", metric=name) == 6
        assert set(state.exemplar_recorders) == {("GET", "/r0", 200), ("GET", "/r1", 200)}
        assert state.recorders == {}  # the exemplar path only
        found = [(s.name, s.labels["endpoint"], s.exemplar.labels)
                 for m in obs.registry.collect() for s in m.samples
                 if s.exemplar is not None and s.name.startswith("http_request")]
        for route in [*routes[:2], OVERFLOW]:
            counted = [e for n, r, e in found if n == "http_requests_total" and r == route]
            buckets = [e for n, r, e in found
                       if n == "http_request_duration_seconds_bucket" and r == route]
            mine = last[route if route != OVERFLOW else "/r3"]
            assert [e["span_id"] for e in counted] == [mine]
            assert counted[0] in buckets  # the last request's bucket holds the same ids
        text = generate_latest(obs.registry).decode()
        assert f'span_id="{last["/r0"]}"' in text


def test_grouped_status_codes_share_a_series() -> None:
    with fresh_observability(tracing_enabled=False, access_log=False,
                             group_status_codes=True) as obs:
        state = http_state(obs)
        for status in (200, 201, 204, 404, 200):
            _request(state, "/a", "/a", status)
        assert sample_value("http_requests_total", method="GET", endpoint="/a",
                            status="2xx") == 4
        assert sample_value("http_request_duration_seconds_count", method="GET", endpoint="/a",
                            status="4xx") == 1
        assert len(state.done_recorders) == 4  # one per code seen, two series


def test_an_unmatched_request_is_counted_under_unmatched() -> None:
    with fresh_observability(tracing_enabled=False, access_log=False) as obs:
        state = http_state(obs)
        for _ in range(2):
            rp = start_request(state, "GET", "/nowhere")
            assert rp is not None
            rp.track_in_progress()
            rp.finish(404)
        assert sample_value("http_requests_total", method="GET", endpoint=UNMATCHED,
                            status="404") == 2
        assert sample_value("http_requests_in_progress", method="GET", endpoint=UNMATCHED) == 0


# ---------------------------------------------------------------------- request context
class _NoEq:
    def __eq__(self, other: object) -> bool:
        raise ValueError("no ==")

    __hash__ = object.__hash__


@pytest.mark.parametrize("app_binds", [False, True], ids=["nothing bound", "the app binds"])
def test_the_context_walk_runs_only_when_the_app_bound_something(
        monkeypatch: pytest.MonkeyPatch, app_binds: bool) -> None:
    walks: list[object] = []
    real = http_module.restore_structlog_context  # type: ignore[attr-defined]

    def spy(before: contextvars.Context) -> None:
        walks.append(before)
        real(before)

    monkeypatch.setattr(http_module, "restore_structlog_context", spy)

    def scenario() -> list[dict[str, Any]]:
        with fresh_observability(tracing_enabled=False) as obs:
            state = http_state(obs)
            bind_context(tenant="outer")
            seen = []
            for rid in ("first", "second"):
                rp = start_request(state, "GET", "/a", request_id=rid)
                assert rp is not None
                rp.activate()
                seen.append(structlog.contextvars.get_contextvars())
                if app_binds:
                    bind_context(cart=3)
                rp.deactivate()
                seen.append(structlog.contextvars.get_contextvars())
            return seen

    assert contextvars.copy_context().run(scenario) == [
        {"tenant": "outer", "request_id": "first"}, {"tenant": "outer"},
        {"tenant": "outer", "request_id": "second"}, {"tenant": "outer"},
    ]
    assert len(walks) == (2 if app_binds else 0)


def test_a_bound_value_whose_equality_raises_takes_the_walk() -> None:
    def scenario() -> tuple[dict[str, Any], object, object]:
        with fresh_observability(tracing_enabled=False) as obs:
            state = http_state(obs)
            first = _NoEq()
            bind_context(odd=first)
            rp = start_request(state, "GET", "/a", request_id="r-1")
            assert rp is not None
            rp.activate()
            bind_context(odd=_NoEq())  # a different object: comparing the contexts raises
            rp.deactivate()
            return (structlog.contextvars.get_contextvars(), first,
                    sample_value("mestres_observability_errors_total", component="http"))

    after, first, faults = contextvars.copy_context().run(scenario)
    assert after["odd"] is first  # restored by the walk
    assert "request_id" not in after
    assert not faults


def test_the_request_id_is_unbound_again_when_it_was_never_bound() -> None:
    def scenario() -> list[object]:
        with fresh_observability(tracing_enabled=False) as obs:
            state = http_state(obs)
            rp = start_request(state, "GET", "/a", request_id="r-1")
            assert rp is not None
            rp.activate()
            during = structlog.contextvars.get_contextvars().get("request_id")
            rp.deactivate()
            return [during, structlog.contextvars.get_contextvars().get("request_id", "unset")]

    assert contextvars.copy_context().run(scenario) == ["r-1", "unset"]


def test_a_span_context_reset_from_another_context_is_left_to_the_api(
        caplog: pytest.LogCaptureFixture) -> None:
    """The SERVER span's context is reset through the context variable itself; a token
    from another context (which the variable refuses) goes to OpenTelemetry's
    ``detach``, which logs it as it always did: no fault, the rest of the undo runs."""
    from opentelemetry import trace as otel_trace

    def scenario() -> tuple[object, object, object, object]:
        with fresh_observability(tracing_enabled=True) as obs:
            state = http_state(obs)
            rp = start_request(state, "GET", "/a", request_id="r-1")
            assert rp is not None
            assert rp.span is not None
            rp.activate()
            during = otel_trace.get_current_span()
            other = contextvars.copy_context()
            other.run(rp.deactivate)  # not the context activate() ran in
            after_other = other.run(structlog.contextvars.get_contextvars)
            return (during is rp.span, after_other.get("request_id", "unset"),
                    sample_value("mestres_observability_errors_total", component="http"),
                    rp.span.is_recording())

    with caplog.at_level(logging.ERROR, logger="opentelemetry.context"):
        current, rid, faults, _ = contextvars.copy_context().run(scenario)
    assert current is True
    assert rid == "unset"  # the request id unbound there all the same
    assert not faults
    assert any("Failed to detach context" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("app_binds", [False, True], ids=["nothing bound", "app binds"])
def test_a_request_id_token_from_another_context_puts_back_the_value_it_kept(
        app_binds: bool) -> None:
    """The request id is put back with its ``ContextVar`` token; ``reset`` refuses a token
    from another context, and then the value the token kept is set instead: the outer
    request id comes back there, what the app bound is undone, no fault is counted."""
    def scenario() -> tuple[object, object, dict[str, Any], object, object]:
        with fresh_observability(tracing_enabled=False, access_log=False) as obs:
            state = http_state(obs)
            bind_context(request_id="outer", tenant="t")
            rp = start_request(state, "GET", "/a", request_id="inner")
            assert rp is not None
            rp.activate()
            if app_binds:
                bind_context(cart=3)
            during = structlog.contextvars.get_contextvars()["request_id"]
            other = contextvars.copy_context()
            other.run(rp.deactivate)  # not the context activate() ran in
            rp.deactivate()  # a second call does nothing
            return (during, other.run(structlog.contextvars.get_contextvars)["request_id"],
                    other.run(structlog.contextvars.get_contextvars),
                    sample_value("mestres_observability_errors_total", component="http"),
                    rp._rid_token)

    during, after, bound, faults, token = contextvars.copy_context().run(scenario)
    assert (during, after) == ("inner", "outer")
    assert bound == {"request_id": "outer", "tenant": "t"}
    assert not faults
    assert token is None


@pytest.mark.parametrize("cached", [True, False], ids=["cached on first use", "not cached"])
def test_the_access_logger_is_settled_only_when_structlog_caches_it(cached: bool) -> None:
    """At its first line the access log keeps the logger structlog's proxy binds when the
    proxy gives that one logger every time (``cache_logger_on_first_use``); otherwise the
    proxy stays, and a configuration made between two requests is the one that logs."""
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []

    def keep(into: list[dict[str, Any]]) -> Any:
        def processor(logger: Any, name: str, event: Any) -> Any:
            into.append(dict(event))
            raise structlog.DropEvent
        return processor

    saved = structlog.get_config()
    try:
        with fresh_observability(tracing_enabled=False, configure_logging=False) as obs:
            structlog.configure(processors=[keep(first)], cache_logger_on_first_use=cached)
            state = http_state(obs)
            proxy = state.logger
            for n in range(2):
                if n == 1:  # reconfigured between the requests
                    structlog.configure(processors=[keep(second)],
                                        cache_logger_on_first_use=cached)
                rp = start_request(state, "GET", "/a", request_id=f"r-{n}")
                assert rp is not None
                rp.finish(200)
            assert state.logger_settled
            assert (state.logger is not proxy) is cached
    finally:
        structlog.configure(**saved)
    events = [(e["event"], e["request_id"]) for e in first + second]
    assert events == [("http_request", "r-0"), ("http_request", "r-1")]
    # cached: the logger bound at the first line logs both; not cached: the new configuration
    assert [e["request_id"] for e in second] == ([] if cached else ["r-1"])


def test_request_ids_are_canonical_uuid4s_with_every_random_bit_drawn() -> None:
    """The pool's ids (formatted 64 at a time) read back as ``uuid.UUID`` version 4, RFC
    4122 variant, in its canonical text; the 122 other bits each take both values."""
    import uuid

    ids = [http_module.new_request_id() for _ in range(640)]
    assert len(set(ids)) == len(ids)
    seen_set, seen_clear = 0, 0
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        seen_set |= parsed.int
        seen_clear |= ~parsed.int & ((1 << 128) - 1)
    fixed = (0xF << 76) | (0x3 << 62)
    assert seen_set & ~fixed == seen_clear & ~fixed == ((1 << 128) - 1) & ~fixed
