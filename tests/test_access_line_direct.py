"""The access-log line (and business events) by the direct path: the very bytes of structlog's call.

While the library's own logging is in place, ``RequestPass._access_log`` hands its fields to
``logs.direct_writer``'s writer, which builds the event dict as structlog's wrapper and the
library's chain would and writes it under the handler's lock. Each request here is logged
twice, by the direct path and by the structlog call it replaces (``state.direct_line``
cleared), and the two lines must be equal byte for byte. Each condition under which the
result could differ (another chain, another handler, the level, the console format, a
logger the library did not bind) must send the line through structlog, which then writes or
filters it as before.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry import trace as otel_trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from mestres_observability import _compat, bind_context, log_event, set_user_id
from mestres_observability import logs as logs_module
from mestres_observability._fault import FaultReporter
from mestres_observability.config import ObservabilityConfig
from mestres_observability.http import HttpState, RequestPass, http_state, start_request
from mestres_observability.logs import clear_context, configure_logging
from mestres_observability.testing import capture_logs, fresh_observability
from tests._support import restored_logging

FIXED_TS = "2026-01-02T03:04:05.678Z"
CARD = "4111 1111 1111 1111"
ACCESS = "mestres_observability.access"

#: the settings the lines are compared under: ordinary, and hostile to every field the
#: library writes itself (its names redacted, values cut at 16 characters, a pattern that
#: matches a method)
CONFIGS: dict[str, dict[str, Any]] = {
    "ordinary": {"log_max_value_length": 64},
    "hostile": {"log_max_value_length": 16,
                "redact_keys": ("user_agent", "method", "endpoint", "status_code", "logger",
                                "tenant"),
                "redact_patterns": ("GET", r"secret-\w+")},
}


# ---------------------------------------------------------------------- set-up
class Logged:
    """The library's logging on a buffer, pytest's own handlers off the root logger (the
    direct path needs the library's handler alone), the access state and its counters."""

    def __init__(self, obs: Any, out: io.StringIO) -> None:
        self.obs = obs
        self.out = out
        self.state: HttpState = http_state(obs)
        self.direct_calls: list[bool] = []
        self._others: list[logging.Handler] = []

    def __enter__(self) -> Logged:
        """pytest's handlers off the root logger (they are put there for each test phase)."""
        root = logging.getLogger()
        self._others = [h for h in root.handlers if not getattr(h, "mestres_handler", False)]
        for h in self._others:
            root.removeHandler(h)
        return self

    def __exit__(self, *exc: Any) -> None:
        root = logging.getLogger()
        for h in self._others:
            root.addHandler(h)

    def settle(self) -> None:
        """Bind the access logger and count what its direct writer does."""
        state = self.state
        if not state.logger_settled:
            state.settle_logger()
        inner = state.direct_line
        if inner is not None and not getattr(inner, "counted", False):
            def counted(method: str, event: str, fields: dict[str, Any]) -> bool:
                took = inner(method, event, fields)
                self.direct_calls.append(took)
                return took
            counted.counted = True  # type: ignore[attr-defined]
            state.direct_line = counted

    def take(self) -> str:
        text = self.out.getvalue()
        self.out.seek(0)
        self.out.truncate()
        return text


@pytest.fixture(params=sorted(CONFIGS))
def logged(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Logged]:
    yield from _logged(monkeypatch, **CONFIGS[request.param])


@pytest.fixture
def ordinary(monkeypatch: pytest.MonkeyPatch) -> Iterator[Logged]:
    """:func:`logged` with the ordinary settings only."""
    yield from _logged(monkeypatch, **CONFIGS["ordinary"])


def _logged(monkeypatch: pytest.MonkeyPatch, **settings_: Any) -> Iterator[Logged]:
    monkeypatch.setattr(logs_module, "_timestamp", lambda: FIXED_TS)
    out = io.StringIO()
    with fresh_observability(tracing_enabled=False, service_name="shop") as obs, \
            restored_logging():
        configure_logging(ObservabilityConfig(service_name="shop", log_format="json",
                                              **settings_), obs.faults, stream=out)
        yield Logged(obs, out)


def _pass(logged: Logged, **request: Any) -> RequestPass:
    rp = start_request(logged.state, request.pop("method", "GET"),
                       request.pop("path", "/orders/42"), **request)
    assert rp is not None
    return rp


def _both_ways(logged: Logged, emit: Callable[[], None]) -> tuple[str, str]:
    """What ``emit`` writes by the direct path, then by the structlog call it replaces."""
    logged.settle()
    direct = logged.state.direct_line
    assert direct is not None
    with logged:
        emit()
        first = logged.take()
        logged.state.direct_line = None
        try:
            emit()
        finally:
            logged.state.direct_line = direct
    return first, logged.take()


# ---------------------------------------------------------------------- the property
hex_ids = st.tuples(st.integers(1, 2**128 - 1).map(lambda v: format(v, "032x")),
                    st.integers(1, 2**64 - 1).map(lambda v: format(v, "016x")), st.booleans())
texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=120),  # non-ASCII, U+2028 ...
    st.sampled_from(["", "\u2028", "caf\u00e9 \U0001f600", "x" * 200, CARD, f"card {CARD}",
                     "Bearer abcdefghijkl", "secret-sauce", "GET", "eyJhbGciOi.eyJzdWIiOi.sig",
                     "https://bob:hunter2@example.com/", '"} {"level":"admin']),
)
queries = st.one_of(
    st.just(""),
    st.sampled_from(["page=2", f"card={CARD.replace(' ', '')}", "token=abc&x=1",
                     "q=caf%C3%A9&sort=asc", "a=" + "b" * 100, "password=hunter2;x=1"]),
    st.text(alphabet="abc=&;%+2F", max_size=30),
)
#: fields an application binds for the request (bind_context: reserved names under fields)
bound_fields = st.dictionaries(
    st.one_of(st.sampled_from(["tenant", "order_id", "level", "event", "fields", "trace_id",
                               "request_id", "user_id", "url", "password", "note"]),
              st.text(alphabet="abcxyz_", min_size=1, max_size=8)),
    st.one_of(texts, st.integers(), st.none(), st.floats(allow_nan=True)), max_size=4)
#: keys bound through structlog's own API, which moves nothing
raw_fields = st.dictionaries(
    st.sampled_from(["logger", "timestamp", "service", "level", "_record", "_from_structlog",
                     "positional_args", "exc_info", "span_id"]),
    st.one_of(st.text(max_size=10), st.integers()), max_size=2)
statuses = st.one_of(st.sampled_from([200, 201, 204, 302, 400, 404, 499, 500, 503]),
                     st.integers(100, 599))
durations = st.one_of(st.floats(0, 100), st.sampled_from([0.0, 4.1e-05, 1e-07, 0.000123,
                                                          123.456789]))


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=st.sampled_from(["GET", "POST", "DELETE", "PROPFIND", "get"]),
       path=st.one_of(st.just("/orders/42"), texts.map(lambda t: "/" + t)),
       query=queries, request_id=st.one_of(st.none(), texts), user_agent=st.one_of(st.none(), texts),
       peer=st.sampled_from([None, "127.0.0.1", "2001:db8::1"]),
       endpoint=st.one_of(st.just("/orders/<int:order_id>"), texts),
       status=statuses, duration=durations,
       user_id=st.one_of(st.none(), texts, st.integers()),
       bound_user=st.one_of(st.none(), texts, st.integers()),
       bound=bound_fields, raw=raw_fields,
       ids=st.one_of(st.none(), hex_ids), current_span=st.booleans())
@example(method="GET", path="/orders/42", query=f"card={CARD}", request_id="r-1",
         user_agent="caf\u00e9\u2028" + "x" * 100, peer="127.0.0.1", endpoint="/orders/<id>",
         status=503, duration=4.1e-05, user_id=None, bound_user="\u00fcser",
         bound={"tenant": "t-\u2028", "level": "admin"}, raw={}, ids=None, current_span=True)
def test_the_direct_line_is_the_structlog_line(
        logged: Logged, method: str, path: str, query: str, request_id: str | None,
        user_agent: str | None, peer: str | None, endpoint: str, status: int, duration: float,
        user_id: Any, bound_user: Any, bound: dict[str, Any], raw: dict[str, Any],
        ids: tuple[str, str, bool] | None, current_span: bool) -> None:
    rp = _pass(logged, method=method, path=path, query=query, request_id=request_id,
               user_agent=user_agent, peer=peer)
    rp.activate()
    try:
        if bound_user is not None:
            set_user_id(bound_user)
        bind_context(**bound)
        structlog.contextvars.bind_contextvars(**raw)
        span = NonRecordingSpan(SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736,
                                            0x00F067AA0BA902B7, is_remote=False,
                                            trace_flags=TraceFlags(1)))

        def emit() -> None:
            if current_span:
                with otel_trace.use_span(span):
                    rp._access_log(status, duration, endpoint, user_id, ids)
            else:
                rp._access_log(status, duration, endpoint, user_id, ids)

        direct, chain = _both_ways(logged, emit)
    finally:
        rp.deactivate()
        clear_context()
    assert logged.direct_calls[-1] is True  # the direct path wrote the first line
    assert direct == chain
    assert direct.count("\n") == 1
    assert direct.isascii()
    line = json.loads(direct)
    assert line["event"] == "http_request"
    assert line["level"] == ("info" if status < 400 else "warning" if status < 500 else "error")
    assert list(line)[:5] == ["timestamp", "level", "event", "logger", "service"]


# ---------------------------------------------------------------------- what the line holds
def test_the_direct_line_redacts_truncates_and_correlates(ordinary: Logged) -> None:
    """Not only equal to the chain's: the line itself is right (secrets out, long values cut,
    the bound fields and the correlation ids in)."""
    rp = _pass(ordinary, path="/pay", query=f"card={CARD.replace(' ', '')}&page=2",
               request_id="r-7", user_agent="agent " + "u" * 100, peer="127.0.0.1")
    rp.activate()
    try:
        bind_context(tenant="acme", note=f"paid with {CARD}")
        set_user_id("u\u2028\u00e9")
        ordinary.settle()
        with ordinary:
            rp._access_log(404, 4.1e-05, "/pay", None, ("4bf92f3577b34da6a3ce929d0e0e4736",
                                                        "00f067aa0ba902b7", True))
    finally:
        rp.deactivate()
        clear_context()
    assert ordinary.direct_calls == [True]
    text = ordinary.take()
    assert "4111" not in text
    assert "\u2028" not in text
    assert text.isascii()
    assert '"duration_seconds":4.1e-05,' in text
    line = json.loads(text)
    assert list(line)[:16] == ["timestamp", "level", "event", "logger", "service",
                               "request_id", "method", "url", "endpoint", "status_code",
                               "duration_seconds", "user_agent", "ip_address", "user_id",
                               "trace_id", "span_id"]
    assert set(list(line)[16:]) == {"tenant", "note"}  # in the context's order
    assert (line["timestamp"], line["level"], line["logger"], line["service"]) == (
        FIXED_TS, "warning", ACCESS, "shop")
    assert line["url"] == "/pay?card=[REDACTED]&page=2"
    assert line["user_agent"] == "agent " + "u" * 58 + "...[truncated 42 chars]"
    assert (line["user_id"], line["request_id"], line["tenant"]) == ("u\u2028\u00e9", "r-7",
                                                                      "acme")
    assert line["note"] == "paid with [REDACTED]"
    assert (line["trace_id"], line["span_id"]) == ("4bf92f3577b34da6a3ce929d0e0e4736",
                                                   "00f067aa0ba902b7")


def test_captured_lines_see_the_direct_access_line(ordinary: Logged) -> None:
    rp = _pass(ordinary, request_id="r-c")
    ordinary.settle()
    with ordinary, capture_logs() as events:
        rp.finish(201)
    assert ordinary.direct_calls == [True]
    assert [(e["event"], e["request_id"], e["status_code"]) for e in events] == [
        ("http_request", "r-c", 201)]
    assert json.loads(ordinary.take())["request_id"] == "r-c"


# ---------------------------------------------------------------------- fallbacks
def _one_request(logged: Logged, status: int = 200, request_id: str = "r-1") -> None:
    rp = _pass(logged, request_id=request_id)
    with logged:
        rp.finish(status)


def _chain_line(logged: Logged, emit: Callable[[], None]) -> str:
    """What the structlog call writes (the direct path off)."""
    saved, logged.state.direct_line = logged.state.direct_line, None
    try:
        emit()
    finally:
        logged.state.direct_line = saved
    return logged.take()


def test_an_extra_handler_gets_the_line_through_logging(ordinary: Logged,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """caplog (a handler added after the logger was settled) is seen at the next line."""
    ordinary.settle()
    _one_request(ordinary, request_id="r-direct")
    assert ordinary.direct_calls == [True]
    direct = ordinary.take()
    with caplog.at_level(logging.INFO):
        rp = _pass(ordinary, request_id="r-caplog")
        with ordinary:  # pytest's handlers off, then caplog's on: a handler added later
            logging.getLogger().addHandler(caplog.handler)
            try:
                rp.finish(200)
            finally:
                logging.getLogger().removeHandler(caplog.handler)
    assert ordinary.direct_calls == [True, False]
    assert [r.name for r in caplog.records] == [ACCESS]
    line = json.loads(ordinary.take())
    assert line["request_id"] == "r-caplog"
    assert direct.replace("r-direct", "r-caplog").split('"duration_seconds"')[0] == \
        json.dumps(line, separators=(",", ":")).split('"duration_seconds"')[0]


def test_a_filter_on_the_way_takes_the_chain(ordinary: Logged) -> None:
    seen: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        seen.append(record.name)
        return True

    ordinary.settle()
    std = logging.getLogger(ACCESS)
    std.addFilter(keep)
    try:
        _one_request(ordinary)
    finally:
        std.removeFilter(keep)
    assert ordinary.direct_calls == [False]
    assert seen == [ACCESS]
    assert json.loads(ordinary.take())["event"] == "http_request"


@pytest.mark.parametrize("status", [200, 404, 500])
def test_the_access_loggers_level_is_honoured(ordinary: Logged, status: int) -> None:
    """WARNING on the access logger: 2xx lines are filtered out (by the chain, as before),
    4xx and 5xx still written, by the direct path."""
    ordinary.settle()
    std = logging.getLogger(ACCESS)
    std.setLevel(logging.WARNING)
    try:
        _one_request(ordinary, status)
    finally:
        std.setLevel(logging.NOTSET)
    written = ordinary.take()
    if status < 400:
        assert ordinary.direct_calls == [False]
        assert written == ""
    else:
        assert ordinary.direct_calls == [True]
        assert json.loads(written)["level"] == ("warning" if status < 500 else "error")


def test_logging_disable_is_left_to_the_chain(ordinary: Logged) -> None:
    """``logging.disable`` stops ``isEnabledFor``, not structlog's ``filter_by_level``: the
    chain decides, and writes the line as it did before the direct path."""
    ordinary.settle()
    logging.disable(logging.INFO)
    try:
        _one_request(ordinary, request_id="r-off")
        disabled = ordinary.take()
        chain = _chain_line(ordinary, lambda: _one_request(ordinary, request_id="r-off"))
    finally:
        logging.disable(logging.NOTSET)
    assert ordinary.direct_calls == [False]
    assert disabled.split('"duration_seconds"')[0] == chain.split('"duration_seconds"')[0]


def test_the_console_format_takes_the_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    root = logging.getLogger()
    others = [h for h in root.handlers if not getattr(h, "mestres_handler", False)]
    with fresh_observability(tracing_enabled=False) as obs, restored_logging():
        configure_logging(ObservabilityConfig(log_format="console"), FaultReporter(),
                          stream=out)
        for h in others:
            root.removeHandler(h)
        try:
            logged = Logged(obs, out)
            logged.settle()
            _one_request(logged, request_id="r-console")
        finally:
            for h in others:
                root.addHandler(h)
    assert logged.direct_calls == [False]
    text = out.getvalue()
    assert "http_request" in text
    assert "r-console" in text
    assert not text.startswith("{")


def test_structlog_configured_by_the_app_before_the_first_line(ordinary: Logged) -> None:
    """The access logger bound under the app's own chain: no direct path, the app's chain
    writes every line."""
    seen: list[dict[str, Any]] = []

    def keep(logger: Any, name: str, event: Any) -> Any:
        seen.append(dict(event))
        raise structlog.DropEvent

    structlog.configure(processors=[structlog.contextvars.merge_contextvars, keep],
                        logger_factory=structlog.stdlib.LoggerFactory(),
                        cache_logger_on_first_use=True)
    ordinary.settle()
    assert ordinary.state.direct_line is None
    _one_request(ordinary, request_id="r-app")
    _one_request(ordinary, request_id="r-app2")
    assert [e["request_id"] for e in seen] == ["r-app", "r-app2"]
    assert ordinary.take() == ""


def test_structlog_configured_by_the_app_after_the_first_line(ordinary: Logged) -> None:
    """A cached logger keeps the chain it was bound with (structlog's rule): the direct path
    still writes exactly what that chain writes."""
    ordinary.settle()
    _one_request(ordinary, request_id="r-before")
    ordinary.take()
    structlog.configure(processors=[structlog.processors.JSONRenderer()],
                        logger_factory=structlog.PrintLoggerFactory(io.StringIO()))
    rp = _pass(ordinary, request_id="r-after")
    direct, chain = _both_ways(ordinary, lambda: rp._access_log(200, 0.25, "/x", None, None))
    assert ordinary.direct_calls[-1] is True
    assert direct == chain
    assert json.loads(direct)["request_id"] == "r-after"


@pytest.mark.parametrize("change", ["insert", "replace"])
def test_a_processor_the_app_puts_into_the_live_chain_runs_on_every_line(
        ordinary: Logged, change: str) -> None:
    """The chain list structlog hands out is the one installed: a processor an app adds to
    it in place (or swaps in) runs on the access line and on business events too."""
    ordinary.settle()
    _one_request(ordinary, request_id="r-before")
    ordinary.take()

    def tag(_logger: Any, _name: str, event: Any) -> Any:
        event["tagged"] = True
        return event

    procs = structlog.get_config()["processors"]
    saved = list(procs)
    try:
        if change == "insert":
            procs.insert(-1, tag)
        else:  # the redaction step swapped for one that tags, then redacts
            k = next(i for i, p in enumerate(procs) if p is logs_module.redact_and_clean)
            procs[k] = lambda lg, n, e: logs_module.redact_and_clean(lg, n, tag(lg, n, e))
        _one_request(ordinary, request_id="r-after")
        with ordinary:
            log_event("order_created", order_id=7)
        lines = [json.loads(line) for line in ordinary.take().splitlines()]
    finally:
        procs[:] = saved
    assert [(line["event"], line.get("tagged")) for line in lines] == [
        ("http_request", True), ("order_created", True)]


def test_a_new_library_configuration_takes_the_chain_for_an_old_logger(
        ordinary: Logged) -> None:
    """configure_logging again (a re-init) installs a new chain: a logger bound under the
    previous one goes through structlog, which writes the line."""
    ordinary.settle()
    out = io.StringIO()
    configure_logging(ObservabilityConfig(service_name="shop2", log_format="json"),
                      FaultReporter(), stream=out)
    _one_request(ordinary, request_id="r-re")
    assert ordinary.direct_calls == [False]
    line = json.loads(out.getvalue())
    assert (line["request_id"], line["service"]) == ("r-re", "shop2")


def test_a_logger_of_another_wrapper_class_takes_the_chain(ordinary: Logged) -> None:
    """structlog configured with the library's chain but another wrapper class (a logger the
    library did not bind as its own): no direct path, the same chain writes the line."""
    chain = logs_module._state.chain
    structlog.configure(processors=chain, wrapper_class=structlog.stdlib.BoundLogger,
                        logger_factory=structlog.stdlib.LoggerFactory(),
                        cache_logger_on_first_use=True)
    ordinary.settle()
    assert ordinary.state.direct_line is None
    _one_request(ordinary, request_id="r-wrap")
    assert json.loads(ordinary.take())["request_id"] == "r-wrap"


def test_direct_writer_refuses_what_it_cannot_reproduce(ordinary: Logged) -> None:
    ordinary.settle()
    write = ordinary.state.direct_line
    assert write is not None
    assert write("exception", "e", {}) is False  # a method whose level is renamed
    assert write("info", "e", {"level": "x"}) is False  # a field the wrapper moves
    assert ordinary.take() == ""
    assert logs_module.direct_writer(structlog.get_logger(ACCESS)) is None  # a lazy proxy
    assert logs_module.direct_writer(object()) is None


def test_the_logger_parts_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """structlog_logger_parts: a release without the attributes degrades (once) to the
    structlog call; what is not a bound logger is simply not one."""
    bound = structlog.wrap_logger(logging.getLogger("x"), processors=[],
                                  wrapper_class=logs_module.BoundLogger).bind()
    parts = _compat.structlog_logger_parts(bound)
    assert parts is not None
    assert parts[1] is logging.getLogger("x")
    assert _compat.structlog_logger_parts(object()) is None
    monkeypatch.delattr(bound, "_processors")
    assert _compat.structlog_logger_parts(bound) is None
    assert "structlog's BoundLoggerBase._processors/_logger" in _compat.degraded_features()
    assert logs_module.direct_writer(bound) is None


# ---------------------------------------------------------------------- business events
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fields=st.dictionaries(st.one_of(st.sampled_from(["level", "event", "fields",
                                                         "_record", "exc_info", "trace_id"]),
                                        st.text(min_size=1, max_size=8)),
                              st.one_of(texts, st.integers(), st.floats(), st.none(),
                                        st.lists(st.integers(), max_size=3)), max_size=5),
       bound=bound_fields)
def test_business_events_by_the_direct_path_are_the_chains(
        logged: Logged, monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any],
        bound: dict[str, Any]) -> None:
    taken: list[bool] = []
    real = logs_module._direct_output

    def spy(std: logging.Logger, levelno: int) -> Any:
        handler = real(std, levelno)
        taken.append(handler is not None)
        return handler

    bind_context(**bound)
    try:
        with logged, monkeypatch.context() as m:
            m.setattr(logs_module, "_direct_output", spy)
            log_event("order_created", **fields)
        direct = logged.take()
        with logged, monkeypatch.context() as m:
            m.setattr(logs_module, "_direct_output", lambda std, levelno: None)
            log_event("order_created", **fields)
        chain = logged.take()
    finally:
        clear_context()
    assert taken == [True]
    assert direct == chain
    assert direct.count("\n") == 1


# ---------------------------------------------------------------------- the renderer
@pytest.mark.skipif(logs_module._FRAGMENT is None, reason="orjson without Fragment")
@pytest.mark.parametrize("value", [4.1e-05, 1e-07, -9.99e-05, 5e-324, 1e16, -1.5e300])
def test_a_float_out_of_orjsons_range_stays_on_orjson(monkeypatch: pytest.MonkeyPatch,
                                                      value: float) -> None:
    """A request's duration of 4.1e-05 s: written by orjson (its repr as a fragment), the
    standard encoder's very text; without Fragment, the standard encoder writes it."""
    event = {"event": "http_request", "duration_seconds": value, "status_code": 200,
             "nested": {"a": [1, "b"]}}
    fast = logs_module._FAST_DUMPS
    calls: list[Any] = []

    def counting(obj: Any) -> bytes:
        calls.append(obj)
        return fast(obj)  # type: ignore[no-any-return]

    monkeypatch.setattr(logs_module, "_FAST_DUMPS", counting)
    line = logs_module.render_json(None, "info", event)
    standard = logs_module._ENCODER.encode(event)
    outside = not logs_module._FLOAT_LOW <= abs(value) < logs_module._FLOAT_HIGH
    if outside:  # (1e16 and up is in range with an orjson that spells them as repr does)
        assert type(calls[0]["duration_seconds"]) is logs_module._FRAGMENT
    assert len(calls) == 1
    assert line == standard
    monkeypatch.setattr(logs_module, "_FRAGMENT", None)
    calls.clear()
    assert logs_module.render_json(None, "info", event) == standard
    if outside:
        assert calls == []  # the standard encoder alone


@pytest.mark.parametrize("ids", [True, False], ids=["span ids", "no span"])
def test_the_librarys_own_values_skip_the_redactor_only_when_it_would_keep_them(
        logged: Logged, monkeypatch: pytest.MonkeyPatch, ids: bool) -> None:
    """The ordinary settings with the span's ids: the assembled line (_write_own), equal to
    the chain's; the hostile ones (the method and status_code names redacted, ids cut) or no
    span ids (add_trace_ids has work): every step run (_write_steps)."""
    calls: list[str] = []
    for name in ("_write_own", "_write_steps"):
        real = getattr(logs_module, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> None:
            calls.append(_name)
            _real(*args, **kw)

        monkeypatch.setattr(logs_module, name, spy)
    rp = _pass(logged, method="POST", query="page=2", request_id="r-o", user_agent="ua")
    span_ids = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True) if ids else None
    rp.activate()
    try:
        bind_context(tenant="acme")
        direct, chain = _both_ways(logged, lambda: rp._access_log(500, 4.1e-05, "/o", 7,
                                                                  span_ids))
    finally:
        rp.deactivate()
        clear_context()
    assert direct == chain
    ordinary = "method" not in logs_module._state.redactor.keys
    assert calls == (["_write_own"] if ordinary and ids else ["_write_steps"])
    line = json.loads(direct)
    assert line["tenant"] == ("acme" if ordinary else "[REDACTED]")
    assert line["method"] == ("POST" if ordinary else "[REDACTED]")


def test_a_context_key_a_step_treats_specially_takes_every_step(
        ordinary: Logged, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = logs_module._write_steps

    def spy(*args: Any, **kw: Any) -> None:
        calls.append("steps")
        real(*args, **kw)

    monkeypatch.setattr(logs_module, "_write_steps", spy)
    rp = _pass(ordinary, request_id="r-k")
    rp.activate()
    try:
        structlog.contextvars.bind_contextvars(logger="spoofed", level="x", exc_info="y")
        direct, chain = _both_ways(ordinary, lambda: rp._access_log(
            200, 0.5, "/k", None, ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7",
                                   True)))
    finally:
        rp.deactivate()
        clear_context()
    assert calls == ["steps"]
    assert direct == chain
    line = json.loads(direct)
    assert (line["logger"], line["level"]) == ("spoofed", "info")
    assert "exc_info" not in line


@pytest.mark.parametrize("now", [1767323045.0, 1767323045.0009, 1767323045.678, 1767323045.9999,
                                 1767323046.5, 0.001])
def test_the_timestamp_is_the_formatted_one(monkeypatch: pytest.MonkeyPatch, now: float) -> None:
    """The milliseconds come from a table now: the very text the format gave."""
    import datetime as dt
    import time

    monkeypatch.setattr(time, "time", lambda: now)
    sec = int(now)
    ms = min(int((now - sec) * 1000), 999)
    expected = (dt.datetime.fromtimestamp(sec, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
                + f"{ms:03d}Z")
    assert logs_module._timestamp() == expected


@pytest.mark.parametrize("where", ["_chain_steps", "_own_fields_pass", "_finish"])
def test_a_fault_on_the_direct_path_is_counted_not_raised(
        ordinary: Logged, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """A fault in the direct path never reaches the request, and is counted where the chain
    counts it: a step's (``http``/``access_log``, as a processor's would be), the
    rendering's (``logging``, handled as write_direct handles it: no line)."""
    from mestres_observability.testing import sample_value

    def boom(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("boom")

    def faults(component: str) -> float:
        return sample_value("mestres_observability_errors_total", ordinary.obs,
                            component=component)

    ordinary.settle()
    monkeypatch.setattr(logs_module, where, boom)
    before = (faults("http"), faults("logging"))
    with ordinary:
        for n in range(2):
            _pass(ordinary, request_id=f"r-{n}").finish(200)  # does not raise
    after = (faults("http"), faults("logging"))
    assert "http_request" not in ordinary.take()  # the fault's own warning line only
    if where == "_finish":
        assert ordinary.direct_calls == [True, True]
        assert after == (before[0], before[1] + 2)
    else:
        assert ordinary.direct_calls == []  # raised inside the writer
        assert after == (before[0] + 2, before[1])


def test_the_direct_line_writes_bound_floats_as_the_standard_encoder(ordinary: Any) -> None:
    """A bound value orjson spells otherwise (1e-05 as 0.00001, 1e-07 as 1e-7) keeps the
    own path off orjson: the direct line is the structlog line, byte for byte (the walk of
    the cleaned fields in _render_own is what sends it to the standard encoder)."""
    rp = _pass(ordinary, path="/pay", request_id="r-7", user_agent="agent", peer="127.0.0.1")
    rp.activate()
    try:
        bind_context(amount=1e-05, tiny=[1e-07])
        direct, chain = _both_ways(ordinary, lambda: rp._access_log(
            200, 0.5, "/pay", None,
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)))
    finally:
        rp.deactivate()
        clear_context()
    assert ordinary.direct_calls == [True]
    assert direct == chain
    assert '"amount":1e-05' in direct
    assert '"tiny":[1e-07]' in direct
