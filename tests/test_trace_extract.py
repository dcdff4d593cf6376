"""The inline W3C trace-context parse (``tracing.remote_parent``, ``extract_context``)
against OpenTelemetry's propagator, and the request pass's SERVER span under it.

The inline parse must give exactly the context ``propagate.extract`` gives (the same
remote span context, trace state in its order, baggage, nothing else), and leave to the
propagator every header it does not accept for certain; a global propagator set since
with ``propagate.set_global_textmap`` is always used instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from mestres_observability.http import http_state, start_request
from mestres_observability.testing import captured_spans, fresh_observability
from mestres_observability.tracing import (
    _GLOBAL,
    extract_context,
    remote_context,
    remote_parent,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{SPAN_ID}-01"

hexes = st.text("0123456789abcdefABCDEF", min_size=0, max_size=34)


def _ids(size: int, known: str) -> st.SearchStrategy[str]:
    """Ids of ``size`` hex digits: a known one, in upper case, all zeros, drawn in lower
    case, drawn in mixed case, or of any length."""
    return st.one_of(st.just(known), st.just(known.upper()), st.just("0" * size),
                     st.text("0123456789abcdef", min_size=size, max_size=size),
                     st.text("0123456789abcdefABCDEF", min_size=size, max_size=size), hexes)


traceparents = st.one_of(
    st.builds(lambda v, t, s, f: f"{v}-{t}-{s}-{f}",
              st.sampled_from(["00", "00", "01", "cc", "ff", "0", "zz", "0A"]),
              _ids(32, TRACE_ID), _ids(16, SPAN_ID),
              st.sampled_from(["00", "01", "02", "03", "09", "ff", "FF", "aB", "1", "0g",
                               "01-x"])),
    # white space around it, a later version's extra field, one character more or less
    st.builds(lambda pad, tail: f"{pad}{VALID}{tail}", st.sampled_from(["", " ", "\t"]),
              st.sampled_from(["", " ", "\t", "-", "-00", "0", "\n"])),
    st.just(VALID[:-1]),
    st.text(max_size=60),
)
tracestates = st.one_of(
    st.sampled_from(["", "a=1", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", " a=1 , b=2 ",
                     "a=1,,b=2", "A=1", "a=1,a=2", "a=", "=1", "a=1 2", "tenant@vendor=x",
                     "a=1," * 40, "k=" + "v" * 256, ("k=" + "v" * 200 + ",") * 3]),
    st.text("abcz019=,@ -_*/\t", max_size=40),
)
baggages = st.one_of(
    st.sampled_from(["", "k=v", "k=v%20w,k2=2", "bad", "k=v;prop=1", " k = v ", "k=v,,j=w",
                     "=v", "k=" + "v" * 5000]),
    st.text("abk=,;% \t", max_size=30),
)


@pytest.fixture(scope="module")
def w3c_installed() -> Iterator[None]:
    """An instance whose propagator is the library's W3C one (the default)."""
    with fresh_observability(service_name="extract"):
        assert _GLOBAL.w3c is propagate.get_global_textmap()
        assert _GLOBAL.w3c_baggage is not None
        yield


def _remote(ctx: otel_context.Context) -> SpanContext:
    return trace.get_current_span(ctx).get_span_context()


def _assert_same_context(ours: otel_context.Context, theirs: otel_context.Context) -> None:
    a, b = _remote(ours), _remote(theirs)
    assert a == b
    assert (a.is_remote, a.trace_flags, a.is_valid) == (b.is_remote, b.trace_flags, b.is_valid)
    assert a.trace_state.to_header() == b.trace_state.to_header()  # the members' order too
    assert type(trace.get_current_span(ours)) is type(trace.get_current_span(theirs))
    assert baggage.get_all(ours) == baggage.get_all(theirs)
    assert dict(ours).keys() == dict(theirs).keys()  # nothing else in the new context


ODD = (VALID.upper(), f"00-{TRACE_ID.upper()}-{SPAN_ID}-01", f"00-{TRACE_ID}-{SPAN_ID.upper()}-01",
       f"00-{TRACE_ID}-{SPAN_ID}-0A", " " + VALID, VALID + "\n", "01" + VALID[2:],
       "ff" + VALID[2:], f"00-{'0' * 32}-{SPAN_ID}-01", f"00-{TRACE_ID}-{'0' * 16}-01",
       VALID[:-1] + "g", VALID.replace("-", "_"))


@settings(max_examples=600, deadline=None)
@given(traceparent=st.one_of(st.none(), traceparents),
       tracestate=st.one_of(st.none(), tracestates),
       baggage_value=st.one_of(st.none(), baggages))
def test_the_inline_parse_gives_what_the_propagator_gives(
        w3c_installed: None, traceparent: str | None, tracestate: str | None,
        baggage_value: str | None) -> None:
    headers = {name: value for name, value in (("traceparent", traceparent),
                                               ("tracestate", tracestate),
                                               ("baggage", baggage_value))
               if value is not None}
    theirs = propagate.extract(headers)
    _assert_same_context(extract_context(headers), theirs)
    parent = remote_parent(headers)
    if parent is not None:
        assert type(parent) is SpanContext
        assert parent.is_remote
        assert parent == _remote(theirs)
        assert parent.trace_state.to_header() == _remote(theirs).trace_state.to_header()
        if not baggage_value:  # then the remote span is all the extracted context holds
            assert list(dict(theirs).values()) == [trace.get_current_span(theirs)]
            _assert_same_context(remote_context(parent), theirs)


def test_the_inline_parse_takes_the_usual_headers_itself(
        w3c_installed: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The headers most requests carry never reach the propagator (so the property above
    compares the inline parse, not the propagator with itself); the others do."""
    reached: list[Any] = []
    real = propagate.extract
    def spy(headers: Any, *args: Any, **kwargs: Any) -> Any:
        reached.append(headers)
        return real(headers, *args, **kwargs)

    monkeypatch.setattr(propagate, "extract", spy)
    sampled = {"traceparent": VALID}
    with_state = {"traceparent": VALID, "tracestate": "congo=t61rcWkgMzE,rojo=1"}
    with_baggage = {"traceparent": VALID, "baggage": "user=alice,tier=gold%201"}
    for headers in (sampled, with_state, with_baggage):
        extract_context(headers)
    assert reached == []
    parent = remote_parent(with_state)
    assert parent is not None
    assert (f"{parent.trace_id:032x}", f"{parent.span_id:016x}") == (TRACE_ID, SPAN_ID)
    assert parent.trace_flags == TraceFlags(1)
    assert list(parent.trace_state.items()) == [("congo", "t61rcWkgMzE"), ("rojo", "1")]
    assert remote_parent(with_baggage) == parent.__class__(  # baggage: in the Context
        parent.trace_id, parent.span_id, True, parent.trace_flags)
    assert baggage.get_all(extract_context(with_baggage)) == {"user": "alice",
                                                              "tier": "gold 1"}
    for odd in ODD:  # the propagator decides (white space around and version 01 are valid)
        assert remote_parent({"traceparent": odd}) is None
        theirs = real({"traceparent": odd})
        _assert_same_context(extract_context({"traceparent": odd}), theirs)
    assert len(reached) == len(ODD)


class _Fixed(TextMapPropagator):
    """A propagator of someone else's: every request is a child of one fixed span."""

    CONTEXT = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1))

    def __init__(self) -> None:
        self.calls = 0

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        self.calls += 1
        return trace.set_span_in_context(NonRecordingSpan(self.CONTEXT), otel_context.Context())

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        return None

    @property
    def fields(self) -> set[str]:
        return {"traceparent"}


@pytest.mark.parametrize("lean", [True, False], ids=["lean spans", "SDK spans"])
def test_a_global_propagator_set_since_is_used_instead_of_the_inline_parse(lean: bool) -> None:
    with fresh_observability(service_name="custom", tracing_enabled=True,
                             lean_spans=lean) as obs:
        ours = propagate.get_global_textmap()
        assert ours is _GLOBAL.w3c
        custom = _Fixed()
        propagate.set_global_textmap(custom)
        try:
            headers = {"traceparent": VALID}
            assert remote_parent(headers) is None
            assert _remote(extract_context(headers)) == _Fixed.CONTEXT
            rp = start_request(http_state(obs), "GET", "/a", trace_headers=headers)
            assert rp is not None
            assert rp.span.parent == _Fixed.CONTEXT  # the custom propagator's, not VALID's
            assert rp.span.get_span_context().trace_id == 0x1234
            rp.finish(200)
            assert custom.calls == 2
        finally:
            propagate.set_global_textmap(ours)
        # the library's own propagator back: the inline parse again
        assert remote_parent({"traceparent": VALID}) is not None


@pytest.mark.parametrize("header", [f"00-{TRACE_ID}-{SPAN_ID}-zz", "not a traceparent",
                                    VALID], ids=["bad flags", "garbage", "another propagator"])
def test_a_header_not_parsed_inline_is_parsed_once_per_request(
        header: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the inline parse gives up (a header it does not accept for certain, another
    global propagator), the request pass asks the propagator and does not parse again."""
    import mestres_observability.http as http_module
    import mestres_observability.tracing as tracing_module

    with fresh_observability(service_name="once", tracing_enabled=True) as obs:
        ours = propagate.get_global_textmap()
        custom = _Fixed()
        if header == VALID:
            propagate.set_global_textmap(custom)
        calls: list[int] = []
        real = tracing_module.remote_parent

        def counting(headers: Any) -> Any:
            calls.append(1)
            return real(headers)

        monkeypatch.setattr(http_module, "remote_parent", counting)
        monkeypatch.setattr(tracing_module, "remote_parent", counting)
        try:
            headers = {"traceparent": header}
            rp = start_request(http_state(obs), "GET", "/a", trace_headers=headers)
            assert rp is not None
            assert len(calls) == 1
            theirs = custom.extract(headers) if header == VALID else propagate.extract(headers)
            parent = rp.span.parent
            if not _remote(theirs).is_valid:  # rejected by the W3C propagator too: a new trace
                assert parent is None
            else:
                assert parent == _remote(theirs)
            rp.finish(200)
        finally:
            propagate.set_global_textmap(ours)


@pytest.mark.parametrize("lean", [True, False], ids=["lean spans", "SDK spans"])
@pytest.mark.parametrize("captured", [False, True], ids=["pipeline", "captured_spans"])
@pytest.mark.parametrize("extra", [{}, {"tracestate": "a=1,b=2"}, {"baggage": "user=alice"}],
                         ids=["traceparent", "tracestate", "baggage"])
def test_the_server_span_and_its_context_are_the_propagators(
        lean: bool, captured: bool, extra: dict[str, str]) -> None:
    """However the SERVER span starts (inline parent, or the extracted context: SDK spans,
    processors watching starts), its parent is the propagator's and the context the app
    runs in is the extracted one with the SERVER span in the caller's place."""
    headers = {"traceparent": VALID, **extra}
    with fresh_observability(service_name="server", tracing_enabled=True,
                             lean_spans=lean) as obs:
        theirs = propagate.extract(headers)
        with captured_spans() if captured else contextlib.nullcontext() as spans:
            rp = start_request(http_state(obs), "GET", "/a", trace_headers=headers)
            assert rp is not None
            span: Any = rp.span
            rp.activate()
            try:
                current = otel_context.get_current()
                assert trace.get_current_span() is span
                assert baggage.get_all() == baggage.get_all(theirs)
                assert dict(current).keys() == dict(theirs).keys()
                # an SDK tracer's span (an instrumentation's) parents to the SERVER span
                child: Any = trace.get_tracer("someone-else").start_span("child")
                child.end()
            finally:
                rp.deactivate()
            rp.finish(200)
        assert span.parent == _remote(theirs)
        assert span.parent.trace_state.to_header() == _remote(theirs).trace_state.to_header()
        ctx = span.get_span_context()
        assert ctx.trace_id == int(TRACE_ID, 16)
        assert ctx.trace_state.to_header() == _remote(theirs).trace_state.to_header()
        assert child.parent is not None
        assert child.parent.span_id == ctx.span_id
        if spans is not None:
            server = spans.by_name("GET")
            assert server.parent == _remote(theirs)
