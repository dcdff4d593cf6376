"""Incoming trace-context headers are bounded before extraction (W3C limits), counted, and
never logged: through ``bound_trace_headers`` and through the Flask, Starlette/FastAPI and
Django adapters (hypothesis-generated oversized and malformed headers)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import string
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mestres_observability.http import (
    BAGGAGE_BYTES,
    BAGGAGE_MEMBERS,
    PROPAGATOR_LOGGERS,
    TRACEPARENT_LENGTH,
    TRACESTATE_CHARS,
    TRACESTATE_MEMBERS,
    bound_trace_headers,
)
from mestres_observability.testing import captured_spans, fresh_observability, sample_value

from .conftest import PARENT_ID, TRACE_ID, TRACEPARENT

METRIC = "mestres_observability_trace_headers_dropped_total"
HEADERS = ("traceparent", "tracestate", "baggage")
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
BAGGAGE = "tenant=t1,userId=alice"
#: put in every hostile header: it must appear in no log record
MARK = "qX7zTRACEMARKz7Xq"


# ---------------------------------------------------------------------- the bound itself
def _members(value: str) -> list[str]:
    return [m for m in (p.strip(" \t") for p in value.split(",")) if m]


def _over(name: str, value: str) -> bool:
    """Whether ``value`` exceeds the W3C limits of header ``name`` (independent of the code)."""
    if name == "traceparent":
        return len(value.strip(" \t")) > 55
    if name == "tracestate":
        return len(value) > 512 or len(_members(value)) > 32
    return len(value.encode()) > 8192 or len(_members(value)) > 64


def test_the_limits_are_the_w3c_ones() -> None:
    assert TRACEPARENT_LENGTH == len(TRACEPARENT) == 55
    assert (TRACESTATE_MEMBERS, TRACESTATE_CHARS) == (32, 512)
    assert (BAGGAGE_MEMBERS, BAGGAGE_BYTES) == (64, 8192)


def test_headers_at_the_limits_are_passed_as_they_are() -> None:
    at_limits = [
        {"traceparent": TRACEPARENT, "tracestate": TRACESTATE, "baggage": BAGGAGE},
        {"traceparent": f"  {TRACEPARENT}\t"},  # white space around is not counted
        {"tracestate": ",".join(f"k{i}=v" for i in range(32))},
        {"tracestate": "a=" + "x" * 510},
        {"tracestate": ",".join(["k=v"] + [""] * 40)},  # empty members are no members
        {"baggage": ",".join(f"k{i}=v" for i in range(64))},
        {"baggage": "a=" + "x" * 8190},
        {"baggage": "a=" + "é" * 4095},  # 8192 bytes in UTF-8
        {"b3": "x" * 10_000},  # not a W3C header: not bounded
    ]
    for headers in at_limits:
        assert bound_trace_headers(headers) is headers, headers


def test_headers_over_the_limits_are_dropped_or_cut_to_whole_members() -> None:
    def bound(name: str, value: str) -> str | None:
        return bound_trace_headers({name: value}).get(name)

    # traceparent: version 00 is exactly 55 characters
    assert bound("traceparent", TRACEPARENT + "0") is None
    assert bound("traceparent", TRACEPARENT + "-" + MARK * 600) is None
    assert bound("traceparent", "ff" + TRACEPARENT[2:] + "-x") is None
    assert bound("traceparent", "x" * 10_000) is None
    # a later version is parsed as its first 55 characters when the 56th is "-"
    later = "01" + TRACEPARENT[2:]
    assert bound("traceparent", later + "-" + MARK * 600) == later
    assert bound("traceparent", later + "x") is None
    # tracestate: 32 members, 512 characters; members over 128 characters go first
    assert bound("tracestate", ",".join(f"k{i}=v" for i in range(40))) == ",".join(
        f"k{i}=v" for i in range(32))
    long_member = "big=" + "x" * 200
    assert bound("tracestate", ",".join([long_member, "a=1", "b=2"] + ["c=3"] * 30)) == ",".join(
        ["a=1", "b=2"] + ["c=3"] * 30)
    cut = bound("tracestate", ",".join(f"k{i}=" + "v" * 100 for i in range(6)))
    assert cut == ",".join(f"k{i}=" + "v" * 100 for i in range(4))  # 4 x 104 + 3 <= 512
    # baggage: 64 members, 8192 bytes; the first members that fit are kept
    assert bound("baggage", ",".join(f"k{i}=v" for i in range(100))) == ",".join(
        f"k{i}=v" for i in range(64))
    members = [f"k{i}=" + "v" * 1000 for i in range(9)]  # 1003 bytes each
    assert bound("baggage", ",".join(members)) == ",".join(members[:8])
    assert bound("baggage", "a=" + "é" * 4096) is None  # 8194 bytes in UTF-8: no member fits
    assert bound("baggage", MARK * 250_000) is None  # one 4 MB member: dropped
    assert bound("baggage", "t=1," + MARK * 250_000) == "t=1"


def test_the_request_pass_checks_the_shortest_headers_over_the_limits() -> None:
    """The request pass checks lengths inline before calling bound_trace_headers: the
    shortest headers over each limit still reach it (33 one-character tracestate members
    take 65 characters, 65 baggage members 129)."""
    from mestres_observability.http import http_state, start_request

    shortest = {"traceparent": TRACEPARENT + " x", "tracestate": ",".join("a" * 33),
                "baggage": ",".join("b" * 65)}
    assert [len(v) for v in shortest.values()] == [57, 65, 129]
    with fresh_observability(traces_exporter="none", access_log=False) as obs:
        state = http_state(obs)
        for name, value in shortest.items():
            headers = {"traceparent": TRACEPARENT, name: value}
            rp = start_request(state, "GET", "/x", trace_headers=headers)
            assert rp is not None
            rp.finish(200)
        # within the limits, one character less: not counted
        rp = start_request(state, "GET", "/x", trace_headers={
            "traceparent": TRACEPARENT, "tracestate": ",".join("a" * 32),
            "baggage": ",".join("b" * 64)})
        assert rp is not None
        rp.finish(200)
        assert counted(obs) == dict.fromkeys(HEADERS, 1.0)


_printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_member = st.one_of(
    st.text(_printable, max_size=30),
    st.builds("{}={}".format, st.text(st.sampled_from(string.ascii_lowercase + "_-*/@"),
                                      min_size=1, max_size=10),
              st.text(_printable, max_size=40)),
)
_listy = st.builds(lambda ms, i, sep: sep.join([*ms[:i], MARK, *ms[i:]]),
                   st.lists(_member, max_size=150), st.integers(0, 150),
                   st.sampled_from([",", ", ", " ,\t", ",,"]))
_repeated = st.builds(lambda m, n: ",".join([m + MARK] * n), _member, st.integers(1, 1200))
_long = st.builds(lambda a, n: a + MARK * n, st.text(_printable, max_size=10),
                  st.integers(1, 2500))
#: a hostile header value: many members, a member repeated, one long member; MARK inside
hostile = st.one_of(_listy, _repeated, _long).map(lambda v: v.strip(" \t") or MARK)
_traceparent = st.one_of(
    st.just(TRACEPARENT),
    hostile,
    st.builds(lambda v, tail: f"{v}-{TRACE_ID}-{PARENT_ID}-01-{MARK}{tail}",
              st.sampled_from(["00", "01", "cc", "ff", "zz"]), st.text(_printable, max_size=600)),
).map(lambda v: v.strip(" \t") or MARK)
hostile_headers = st.fixed_dictionaries({"traceparent": _traceparent},
                                        optional={"tracestate": hostile, "baggage": hostile})


@given(headers=hostile_headers)
@settings(max_examples=200, deadline=None)
def test_bounded_headers_are_within_the_limits_and_made_of_the_input(
        headers: dict[str, str]) -> None:
    out = bound_trace_headers(headers)
    for name in HEADERS:
        if name not in headers:
            continue
        value = headers[name]
        if not _over(name, value):
            assert out.get(name) == value
            continue
        kept = out.get(name)
        if kept is None:
            continue
        assert kept  # dropped, or something left
        assert not _over(name, kept)
        if name == "traceparent":
            assert kept == value[:55]
        else:  # whole members of the input, in their order
            source = _members(value)
            it = iter(source)
            assert all(m in it for m in _members(kept)), (kept, value[:200])
            if name == "baggage":
                assert _members(kept) == source[:len(_members(kept))]


# ---------------------------------------------------------------------- log records
@contextlib.contextmanager
def all_records() -> Iterator[list[logging.LogRecord]]:
    """Every log record of the block, of every logger, DEBUG and up."""
    got: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    root = logging.getLogger()
    handler = Keep(logging.DEBUG)
    levels = {name: logging.getLogger(name).level for name in PROPAGATOR_LOGGERS}
    before = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in PROPAGATOR_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield got
    finally:
        root.removeHandler(handler)
        root.setLevel(before)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def assert_not_logged(records: list[logging.LogRecord], events: list[dict[str, Any]],
                      mark: str = MARK) -> None:
    for r in records:
        text = f"{r.getMessage()} {r.args!r} {r.exc_text or ''} {vars(r)!r}"
        assert mark not in text, (r.name, r.getMessage()[:300])
    for e in events:
        assert mark not in repr(e), repr(e)[:300]


def test_the_sdk_would_log_the_header_without_the_filter() -> None:
    """The fault is real: the propagators quote malformed headers in their warnings
    (here called outside the request pass, so the filter leaves them alone)."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator

    with all_records() as records:
        W3CBaggagePropagator().extract({"baggage": "x" * 9000 + MARK})
        W3CBaggagePropagator().extract({"baggage": f"bad {MARK}"})
    assert sum(MARK in r.getMessage() for r in records) == 2


# ---------------------------------------------------------------------- through the adapters
Send = Callable[[Mapping[str, str]], tuple[int, str]]


def _flask() -> Send:
    flask = pytest.importorskip("flask")
    from mestres_observability.flask import instrument

    app = flask.Flask("trace-headers")

    @app.get("/echo")
    def echo() -> str:
        from opentelemetry import baggage

        return ",".join(f"{k}={v}" for k, v in baggage.get_all().items())

    instrument(app)
    client = app.test_client()

    def send(headers: Mapping[str, str]) -> tuple[int, str]:
        r = client.get("/echo", headers=dict(headers))
        return r.status_code, r.get_data(as_text=True)

    return send


def _starlette() -> Send:
    pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from mestres_observability.fastapi import instrument

    async def echo(request: Request) -> PlainTextResponse:
        from opentelemetry import baggage

        return PlainTextResponse(",".join(f"{k}={v}" for k, v in baggage.get_all().items()))

    app = Starlette(routes=[Route("/echo", echo)])
    instrument(app)
    client = TestClient(app)

    def send(headers: Mapping[str, str]) -> tuple[int, str]:
        r = client.get("/echo", headers=dict(headers))
        return r.status_code, r.text

    return send


def _django(mode: str) -> Send:
    pytest.importorskip("django")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.adapters.django_settings")
    import django
    from django.test import AsyncClient, Client, override_settings

    from mestres_observability import _current, get_observability

    if not django.apps.apps.ready:  # the app's ready() initialises an instance: keep ours
        previous = get_observability()
        django.setup()
        _current.swap(previous).shutdown(timeout=1.0)

    def send(headers: Mapping[str, str]) -> tuple[int, str]:
        with override_settings(ROOT_URLCONF="tests.adapters.trace_headers_urls"):
            if mode == "wsgi":
                r = Client().get("/echo", headers=dict(headers))
            else:
                r = asyncio.run(AsyncClient().get("/echo", headers=dict(headers)))
        return r.status_code, r.content.decode()

    return send


FRAMEWORKS: dict[str, Callable[[], Send]] = {
    "flask": _flask, "starlette": _starlette,
    "django-wsgi": lambda: _django("wsgi"), "django-asgi": lambda: _django("asgi"),
}


@pytest.fixture(scope="module")
def instance() -> Iterator[Any]:
    """One tracing instance for the module (no exporter: spans for extraction only)."""
    with fresh_observability(traces_exporter="none") as obs:
        yield obs


@pytest.fixture(scope="module", params=list(FRAMEWORKS))
def send(request: pytest.FixtureRequest, instance: Any) -> Send:
    return FRAMEWORKS[request.param]()


def counted(obs: Any) -> dict[str, float]:
    return {h: sample_value(METRIC, obs, header=h) for h in HEADERS}


def test_normal_trace_context_still_propagates(send: Send, instance: Any) -> None:
    before = counted(instance)
    with captured_spans() as spans:
        status, body = send({"traceparent": TRACEPARENT, "tracestate": TRACESTATE,
                             "baggage": BAGGAGE})
    assert status == 200
    assert body == BAGGAGE  # the caller's baggage reaches the app
    (server,) = spans.exporter.get_finished_spans()
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == PARENT_ID
    assert server.parent.trace_state.to_header() == TRACESTATE
    assert counted(instance) == before


def test_oversized_headers_are_cut_counted_and_never_logged(send: Send, instance: Any) -> None:
    from mestres_observability.testing import capture_logs

    before = counted(instance)
    headers = {
        "traceparent": TRACEPARENT + "-" + MARK * 600,  # 10 KB of version 00: dropped
        "tracestate": ",".join(f"k{i}=v{MARK}" for i in range(40)),  # cut to 32 members
        "baggage": ",".join([BAGGAGE, MARK * 60_000]),  # 1 MB: cut to its first members
    }
    with all_records() as records, capture_logs() as events, captured_spans() as spans:
        status, body = send(headers)
    assert status == 200
    assert body == BAGGAGE
    (server,) = spans.exporter.get_finished_spans()
    assert server.parent is None  # a new trace: the traceparent was dropped
    assert format(server.context.trace_id, "032x") != TRACE_ID
    after = counted(instance)
    assert {h: after[h] - before[h] for h in HEADERS} == dict.fromkeys(HEADERS, 1.0)
    assert_not_logged(records, events)


def test_malformed_members_are_ignored_without_logging_them(send: Send, instance: Any) -> None:
    """Within the limits but malformed: the propagators drop what they cannot parse and
    would log it, quoted; inside the request pass those records are dropped."""
    from mestres_observability.testing import capture_logs

    headers = {"traceparent": TRACEPARENT, "tracestate": f"ok=1,{MARK} bad",
               "baggage": f"tenant=t1,{MARK},{MARK}=a\"b;c,k=v"}
    with all_records() as records, capture_logs() as events:
        status, body = send(headers)
    assert status == 200
    assert body == "tenant=t1,k=v"
    assert_not_logged(records, events)


@given(headers=hostile_headers)
@example(headers={"traceparent": TRACEPARENT, "baggage": MARK * 65_000})
@example(headers={"traceparent": TRACEPARENT + MARK, "tracestate": MARK * 10_000,
                  "baggage": ",".join([f"k={MARK}"] * 5000)})
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_hostile_headers_through_every_adapter(send: Send, instance: Any,
                                               headers: dict[str, str]) -> None:
    """Any oversized or malformed trace context: the request is served, each header over
    its limits is counted once, and nothing of any header is logged."""
    from mestres_observability.testing import capture_logs

    before = counted(instance)
    with all_records() as records, capture_logs() as events:
        status, _body = send(headers)
    assert status == 200
    after = counted(instance)
    expected = {h: float(h in headers and _over(h, headers[h])) for h in HEADERS}
    assert {h: after[h] - before[h] for h in HEADERS} == expected, {
        h: len(v) for h, v in headers.items()}
    assert_not_logged(records, events)
