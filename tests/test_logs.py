"""Structured logs: fields, correlation, reserved keys, redaction, line safety, stdlib logging."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mestres_observability import bind_context, get_logger, log_event
from mestres_observability._fault import FaultReporter
from mestres_observability.config import ObservabilityConfig
from mestres_observability.logs import configure_logging, request_context, set_user_id
from mestres_observability.testing import capture_logs, fresh_observability
from mestres_observability.tracing import span
from tests._support import restored_logging

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Sink:
    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def raw(self) -> list[str]:
        return self.buffer.getvalue().split("\n")[:-1]

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line, parse_constant=_no_constants) for line in self.raw()]

    def event(self, name: str) -> dict[str, Any]:
        return next(d for d in self.lines() if d.get("event") == name)


def _no_constants(text: str) -> Any:
    raise ValueError(f"non-strict JSON constant {text}")


@pytest.fixture
def sink() -> Iterator[Sink]:
    out = Sink()
    cfg = ObservabilityConfig(service_name="shop", log_format="json",
                              log_levels={"noisy.lib": "ERROR"}, log_max_value_length=64)
    with fresh_observability(), restored_logging():
        configure_logging(cfg, FaultReporter(), stream=out.buffer)
        try:
            yield out
        finally:
            logging.getLogger("noisy.lib").setLevel(logging.NOTSET)


def test_core_fields_and_order(sink: Sink) -> None:
    get_logger("shop.checkout").info("cart_loaded", items=3)
    line = sink.raw()[0]
    assert line.startswith('{"timestamp":')
    d = sink.lines()[0]
    assert TS.match(d["timestamp"])
    assert (d["level"], d["event"], d["logger"], d["service"], d["items"]) == (
        "info", "cart_loaded", "shop.checkout", "shop", 3)
    assert "trace_id" not in d


def test_trace_and_request_correlation(sink: Sink) -> None:
    with request_context(request_id="req-1"):
        set_user_id("u-9")
        with span("process_order") as sp:
            log_event("order_created", order_id="o1", total_amount=12.5)
        ctx = sp.get_span_context()
        get_logger().info("after")
    get_logger().info("outside")
    created, after, outside = sink.lines()
    assert created["trace_id"] == format(ctx.trace_id, "032x")
    assert created["span_id"] == format(ctx.span_id, "016x")
    assert created["request_id"] == "req-1"
    assert created["user_id"] == "u-9"
    assert created["logger"] == "mestres_observability.events"
    assert "trace_id" not in after
    assert after["user_id"] == "u-9"
    assert "request_id" not in outside
    assert "user_id" not in outside


def test_request_context_is_restored_on_error(sink: Sink) -> None:
    bind_context(tenant="t1")

    def handler() -> None:
        with request_context(request_id="r"):
            bind_context(user_id="u")
            raise KeyError("x")

    with pytest.raises(KeyError):
        handler()
    assert structlog.contextvars.get_contextvars() == {"tenant": "t1"}


def test_concurrent_tasks_do_not_share_context(sink: Sink) -> None:
    async def handle(i: int) -> None:
        with request_context(request_id=f"r{i}"):
            set_user_id(f"u{i}")
            await asyncio.sleep(0)
            get_logger("req").info("served", n=i)

    async def main() -> None:
        await asyncio.gather(*(handle(i) for i in range(50)))

    asyncio.run(main())
    lines = sink.lines()
    assert len(lines) == 50
    for d in lines:
        assert d["request_id"] == f"r{d['n']}"
        assert d["user_id"] == f"u{d['n']}"


def test_reserved_keys_cannot_be_overwritten(sink: Sink) -> None:
    with span("s") as sp:
        log_event("x", level="admin", timestamp=0, event="y", trace_id="forged", service="evil",
                  logger="l", amount=1)
    d = sink.lines()[0]
    assert (d["event"], d["level"], d["service"]) == ("x", "info", "shop")
    assert d["trace_id"] == format(sp.get_span_context().trace_id, "032x")
    assert d["fields"] == {"level": "admin", "timestamp": 0, "event": "y",
                           "trace_id": "forged", "service": "evil", "logger": "l"}
    assert d["amount"] == 1


def test_redaction_and_truncation(sink: Sink) -> None:
    log_event("payment_processed", payment={"card_number": "4111111111111111"},
              note="card 4111-1111-1111-1111", password="hunter2",
              url="https://x/?token=abc123", request_id="4111111111111111",
              long="z" * 500, tokens_used=10)
    text = sink.buffer.getvalue()
    for secret in ("4111111111111111", "4111-1111", "hunter2", "abc123"):
        assert secret not in text.replace('{"request_id":"4111111111111111"}', "")
    d = sink.lines()[0]
    assert d["fields"]["request_id"] == "4111111111111111"  # reserved key, never Luhn-redacted
    assert d["tokens_used"] == 10
    assert d["long"].endswith("[truncated 436 chars]")


def test_exceptions_are_structured(sink: Sink) -> None:
    try:
        raise ValueError("bad value password=hunter2")
    except ValueError:
        get_logger("x").exception("failed")
        logging.getLogger("stdlib").exception("std failed")
    a, b = sink.lines()
    for d in (a, b):
        assert d["exception"]["type"] == "ValueError"
        assert "hunter2" not in json.dumps(d)
        assert "Traceback" in d["exception"]["stacktrace"]
    assert b["level"] == "error"
    assert b["logger"] == "stdlib"


def test_stdlib_logging_goes_through_same_renderer(sink: Sink) -> None:
    logging.getLogger("thirdparty").warning("hello %s", "world", extra={"user": "bob"})
    logging.getLogger("noisy.lib").warning("hidden")
    logging.getLogger("noisy.lib").error("shown")
    get_logger("noisy.lib").warning("hidden too")
    lines = sink.lines()
    assert [d["event"] for d in lines] == ["hello world", "shown"]
    assert lines[0]["user"] == "bob"
    assert lines[0]["service"] == "shop"


def test_hostile_values_never_raise(sink: Sink) -> None:
    class Bad:
        def __repr__(self) -> str:
            raise RuntimeError("repr")

        __str__ = __repr__

    get_logger().info("weird", bad=Bad(), nan=float("nan"), inf=float("-inf"), obj={1: {2}})
    d = sink.lines()[0]
    assert d["bad"].startswith("<unrepresentable Bad")
    assert d["nan"] == "nan"
    assert d["inf"] == "-inf"
    assert d["obj"] == {"1": [2]}


def test_reconfigure_does_not_stack_handlers(sink: Sink) -> None:
    cfg = ObservabilityConfig(service_name="again", log_format="json")
    for _ in range(5):
        configure_logging(cfg, FaultReporter(), stream=sink.buffer)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "mestres_handler", False)]
    assert len(ours) == 1
    get_logger().info("once")
    assert [d["service"] for d in sink.lines()] == ["again"]


def test_console_renderer_for_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    with restored_logging():
        configure_logging(ObservabilityConfig(log_format="auto"), FaultReporter(), stream=out)
        get_logger("t").info("readable", k=1)
        assert "readable" in out.getvalue()
        assert not out.getvalue().startswith("{")


def test_broken_stdout_is_counted_not_raised() -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError("EPIPE")

    faults = FaultReporter()
    seen: list[str] = []
    faults.report = lambda component, kind, *a, **k: seen.append(kind)  # type: ignore[method-assign]
    with restored_logging():
        configure_logging(ObservabilityConfig(log_format="json"), faults, stream=Broken())
        get_logger().info("lost")
        assert seen == ["output"]


def test_capture_logs_helper_without_configured_logging() -> None:
    with fresh_observability(service_name="cap"), capture_logs() as events:
        log_event("user_registered", user_id="u1", api_key="k")
    assert events == [{**events[0], "event": "user_registered", "user_id": "u1",
                       "api_key": "[REDACTED]", "service": "cap", "level": "info"}]


hostile = st.text(alphabet=st.characters(codec="utf-8"), max_size=80) | st.sampled_from([
    "\n", "\r\n", "\u2028", "\u2029", "\x85", "\x1c", "\x00", "\x1b[31m",
    '"} {"level":"admin', "\ud800",
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=hostile, key=hostile, value=hostile, secret=st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz", min_size=12, max_size=20))
def test_property_one_object_per_line_and_no_leak(sink: Sink, event: str, key: str, value: str,
                                                  secret: str) -> None:
    sink.buffer.seek(0)
    sink.buffer.truncate()
    log_event(event, **{key or "k": value, "nested": {"password": secret}, "secret": secret})
    logging.getLogger("std").warning("%s %s", value, event)
    raw = sink.buffer.getvalue()
    assert raw.isascii()
    assert len(raw.splitlines()) == 2 == len(sink.raw())
    for d in sink.lines():
        assert isinstance(d, dict)
    if secret not in event + key + value:
        assert secret not in raw


# ---------------------------------------------------------------- any field name (issue 10 #7)
#: Names the library, structlog or logging own (the first two raised into the caller).
COLLIDING = ("_record", "positional_args", "exc_info", "stack_info", "_from_structlog",
             "_logger", "_name", "extra", "stacklevel", "self", "method_name", "timestamp",
             "level", "event", "logger", "service", "exception", "fields")
CORRELATION = ("trace_id", "span_id", "request_id")
_MARK = "v-7f3a"


def _value_of(line: dict[str, Any], key: str) -> Any:
    """Where a field ended up: its own key, or under ``fields`` (the one rule)."""
    moved = line.get("fields")
    if isinstance(moved, dict) and key in moved:
        return moved[key]
    return line.get(key)


@pytest.mark.parametrize("key", COLLIDING)
@pytest.mark.parametrize("entry", ["info", "log_event", "bind_context", "bind", "initial",
                                   "request_context", "exception", "ainfo"])
def test_a_colliding_field_name_is_moved_under_fields_never_raised_or_dropped(
        sink: Sink, key: str, entry: str) -> None:
    log = get_logger("app")
    fields = {key: f"{_MARK}-{key}"}
    if entry == "info":
        log.info("evt", **fields)
    elif entry == "log_event":
        log_event("evt", **fields)
    elif entry == "bind_context":
        bind_context(**fields)
        log.info("evt")
    elif entry == "bind":
        if key == "self":  # structlog's lazy proxy takes ``self`` in bind() until first use
            log.info("warm-up")
            sink.buffer.seek(0)
            sink.buffer.truncate()
        log.bind(**fields).info("evt")
    elif entry == "initial":
        get_logger("app", **fields).info("evt")
    elif entry == "request_context":
        with request_context(**fields):
            log.info("evt")
    elif entry == "exception":
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("evt", **fields)
    else:
        asyncio.run(log.ainfo("evt", **fields))
    (line,) = sink.lines()
    assert (line["event"], line["logger"], line["service"]) == (
        "evt", "mestres_observability.events" if entry == "log_event" else "app", "shop")
    assert line["level"] == ("error" if entry == "exception" else "info")
    assert TS.match(line["timestamp"])
    assert line["fields"][key] == f"{_MARK}-{key}"
    if entry == "exception":
        assert line["exception"]["type"] == "ValueError"


@pytest.mark.parametrize("key", CORRELATION)
def test_correlation_ids_given_to_a_logger_are_kept_and_business_events_move_them(
        sink: Sink, key: str) -> None:
    get_logger("app").info("evt", **{key: "given"})
    log_event("evt", **{key: "given"})
    first, second = sink.lines()
    assert first[key] == "given"  # a caller may set the line's correlation id
    assert second["fields"] == {key: "given"}  # business data never sets it


def test_exc_info_keeps_its_meaning_when_it_holds_an_exception(sink: Sink) -> None:
    log = get_logger("app")
    err = KeyError("k")
    log.info("a", exc_info=err)
    log.info("b", exc_info=(type(err), err, None))
    log.info("c", exc_info=False)
    log.info("d", exc_info="client text")
    a, b, c, d = sink.lines()
    assert a["exception"]["type"] == b["exception"]["type"] == "KeyError"
    assert "exception" not in c
    assert "fields" not in c
    assert d["fields"] == {"exc_info": "client text"}
    assert "exception" not in d


def test_fields_moved_from_the_context_the_logger_and_the_call_are_all_kept(
        sink: Sink) -> None:
    bind_context(level="from-context", tenant="t")
    log = get_logger("app").bind(logger="from-bind")
    log.info("evt", event="from-call", n=1)
    log_event("biz", timestamp="from-event")
    first, second = sink.lines()
    assert first["fields"] == {"level": "from-context", "logger": "from-bind",
                               "event": "from-call"}
    assert (first["tenant"], first["n"], first["event"], first["logger"]) == (
        "t", 1, "evt", "app")
    assert second["fields"] == {"level": "from-context", "timestamp": "from-event"}


def test_arguments_that_do_not_format_are_logged_not_raised(sink: Sink) -> None:
    log = get_logger("app")
    log.info("100% done for %s", "bob", "extra")
    log.info("%(who)s paid", {"who": "ann"})
    log.info("%s of %s", 1, 2)
    bad, named, ok = sink.lines()
    assert bad["event"] == "100% done for %s"
    assert bad["fields"] == {"positional_args": ["bob", "extra"]}
    assert named["event"] == "ann paid"
    assert ok["event"] == "1 of 2"


def test_stdlib_extra_fields_with_reserved_names_go_under_fields(sink: Sink) -> None:
    logging.getLogger("std").warning("hello %s", "you", extra={"level": "admin",
                                                              "event": "forged", "user": "u"})
    (line,) = sink.lines()
    assert (line["level"], line["event"], line["user"]) == ("warning", "hello you", "u")
    assert line["fields"] == {"level": "admin", "event": "forged"}


def test_fields_bound_through_structlogs_own_api_never_raise(sink: Sink) -> None:
    structlog.contextvars.bind_contextvars(_record="x", _from_structlog="y")
    get_logger("app").info("evt")
    (line,) = sink.lines()
    assert line["fields"] == {"_record": "x", "_from_structlog": "y"}


_KEY_NAMES = st.one_of(
    st.sampled_from(COLLIDING + CORRELATION + ("user_id", "msg", "args", "name", "levelno")),
    st.text(max_size=30),
    st.text(alphabet="_abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12).map(
        lambda k: "_" + k),
)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(_KEY_NAMES, min_size=1, max_size=6, unique=True),
       entry=st.sampled_from(["info", "log_event", "bind_context", "bind"]))
def test_any_field_names_are_logged_with_their_values_and_never_raise(
        sink: Sink, keys: list[str], entry: str) -> None:
    sink.buffer.seek(0)
    sink.buffer.truncate()
    structlog.contextvars.clear_contextvars()
    fields = {key: f"{_MARK}{i}" for i, key in enumerate(keys)}
    log = get_logger("app")
    if entry == "info":
        log.info("evt", **fields)
    elif entry == "log_event":
        log_event("evt", **fields)
    elif entry == "bind_context":
        bind_context(**fields)
        log.info("evt")
    else:
        log.info("warm-up")  # structlog's lazy proxy takes ``self`` in bind() until first use
        sink.buffer.seek(0)
        sink.buffer.truncate()
        log.bind(**fields).info("evt")
    structlog.contextvars.clear_contextvars()
    (line,) = sink.lines()  # one line, strict JSON
    assert line["event"] == "evt"
    assert line["service"] == "shop"
    assert line["level"] == "info"
    for key, value in fields.items():
        kept = _value_of(line, key)
        assert kept in (value, "[REDACTED]"), (key, line)  # a secret-looking name is redacted
        if kept == "[REDACTED]":
            assert value not in sink.buffer.getvalue()


# ---------------------------------------------------------------- direct path (issue 2)
class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _without_timestamp(line: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k != "timestamp"}


@contextlib.contextmanager
def _only_ours() -> Iterator[list[str]]:
    """Root keeps only the library's handler (pytest adds its own); yields emit() calls."""
    root = logging.getLogger()
    others = [h for h in root.handlers if not getattr(h, "mestres_handler", False)]
    ours = next(h for h in root.handlers if getattr(h, "mestres_handler", False))
    emitted: list[str] = []
    real_emit = ours.emit

    def spy(record: logging.LogRecord) -> None:
        emitted.append(record.name)
        real_emit(record)

    ours.emit = spy  # type: ignore[method-assign]
    for h in others:
        root.removeHandler(h)
    try:
        yield emitted
    finally:
        del ours.emit
        for h in others:
            root.addHandler(h)


def test_direct_path_writes_the_same_line_as_the_logging_path(sink: Sink) -> None:
    log = get_logger("shop.checkout")
    other = _Recorder()
    with _only_ours() as emitted, request_context(request_id="r-1"), span("process_order"):
        log.info("paid", card="4111 1111 1111 1111", token="t", amount=1.5)
        log_event("order_created", order_id="o-1", level="x")
        assert emitted == []  # written directly, no LogRecord
        logging.getLogger().addHandler(other)  # a foreign handler: the record must reach it
        try:
            log.info("paid", card="4111 1111 1111 1111", token="t", amount=1.5)
            log_event("order_created", order_id="o-1", level="x")
        finally:
            logging.getLogger().removeHandler(other)
    assert emitted == ["shop.checkout", "mestres_observability.events"]
    raw = sink.raw()
    lines = sink.lines()
    assert len(lines) == 4
    assert _without_timestamp(lines[0]) == _without_timestamp(lines[2])
    assert _without_timestamp(lines[1]) == _without_timestamp(lines[3])
    assert [list(d) for d in lines[:2]] == [list(d) for d in lines[2:]]  # same key order
    assert raw[0].startswith('{"timestamp":')
    assert '"logger":"shop.checkout"' in raw[0]
    assert (lines[0]["card"], lines[0]["token"]) == ("[REDACTED]", "[REDACTED]")
    assert (lines[1]["fields"], lines[1]["request_id"]) == ({"level": "x"}, "r-1")
    assert len(lines[1]["trace_id"]) == 32
    assert [r.name for r in other.records] == ["shop.checkout", "mestres_observability.events"]
    assert "4111" not in str(other.records[0].msg)  # other handlers only see cleaned values


def test_direct_path_honours_levels_filters_and_propagation(sink: Sink) -> None:
    quiet = logging.getLogger("quiet")
    filtered = logging.getLogger("filtered")
    disabled = logging.getLogger("off")
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "mestres_handler", False))
    with _only_ours() as emitted:
        get_logger("noisy.lib").warning("dropped")  # noisy.lib is at ERROR
        get_logger("noisy.lib").error("kept")
        quiet.propagate = False
        filtered.addFilter(lambda record: False)
        disabled.disabled = True
        handler.setLevel(logging.CRITICAL)
        try:
            get_logger("quiet").info("nowhere")
            get_logger("filtered").error("filtered out")
            get_logger("off").error("disabled")
            get_logger("shop").error("below the handler level")
        finally:
            quiet.propagate = True
            filtered.filters.clear()
            disabled.disabled = False
            handler.setLevel(logging.NOTSET)
    assert [d["event"] for d in sink.lines()] == ["kept"]
    assert emitted == []  # the handler level stops "shop" on the logging way too


def test_event_enabled_follows_the_events_logger_level(sink: Sink) -> None:
    from mestres_observability.logs import EVENTS_LOGGER, event_enabled

    assert event_enabled()
    logging.getLogger(EVENTS_LOGGER).setLevel(logging.WARNING)
    try:
        assert not event_enabled()
        log_event("order_created", order_id="o-1")
        assert sink.lines() == []
    finally:
        logging.getLogger(EVENTS_LOGGER).setLevel(logging.NOTSET)
    log_event("order_created", order_id="o-2")
    assert [d["order_id"] for d in sink.lines()] == ["o-2"]


def test_event_enabled_is_true_under_another_structlog_configuration(sink: Sink) -> None:
    from mestres_observability.logs import event_enabled

    logging.getLogger().setLevel(logging.CRITICAL)
    saved = structlog.get_config()
    try:
        assert not event_enabled()
        structlog.configure(processors=[structlog.processors.JSONRenderer()])
        assert event_enabled()  # not our chain: the user's configuration decides
    finally:
        structlog.configure(**saved)


def test_caplog_sees_library_lines_and_they_are_still_written(
    sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        log_event("order_created", order_id="o-1")
        get_logger("shop").info("hello")
    assert [r.name for r in caplog.records] == ["mestres_observability.events", "shop"]
    assert [d["event"] for d in sink.lines()] == ["order_created", "hello"]


def test_capture_logs_with_the_direct_path(sink: Sink) -> None:
    with _only_ours() as emitted, capture_logs() as events:
        log_event("order_created", order_id="o-1", password="p")
    assert [(e["event"], e["password"]) for e in events] == [("order_created", "[REDACTED]")]
    assert sink.event("order_created")["password"] == "[REDACTED]"
    assert emitted == []


def test_logger_cached_before_a_reconfigure_writes_directly_to_the_new_handler(
    sink: Sink,
) -> None:
    log = get_logger("cached")
    log.info("first")  # structlog caches the logger with the chain of that moment
    second = io.StringIO()
    configure_logging(ObservabilityConfig(service_name="again", log_format="json"),
                      FaultReporter(), stream=second)
    with _only_ours() as emitted:
        log.info("second")
    assert emitted == []
    assert [d["event"] for d in sink.lines()] == ["first"]
    assert json.loads(second.getvalue())["service"] == "again"


def test_init_line_lists_only_settings_that_differ_from_the_defaults(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="mestres_observability"), fresh_observability(
        service_name="shop", health_detailed_token="s3cret-token", max_label_values=50,
    ):
        pass
    record = next(r for r in caplog.records if r.getMessage() == "mestres_observability initialised")
    settings_logged = record.settings  # type: ignore[attr-defined]
    assert settings_logged == {
        "service_name": "shop", "service_version": "0.0.0", "environment": "production",
        "max_label_values": 50, "health_detailed_token": "[REDACTED]",
        "configure_logging": False,  # fresh_observability's default
    }
    assert "s3cret-token" not in str(record.__dict__)


# ---------------------------------------------------------------- issue 3 audit
def test_configure_logging_false_leaves_the_users_structlog_and_logging_alone() -> None:
    seen: list[dict[str, Any]] = []

    def mine(_: Any, __: str, event_dict: Any) -> str:
        seen.append(dict(event_dict))
        raise structlog.DropEvent

    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        structlog.configure(processors=[mine], cache_logger_on_first_use=False)
        processors = structlog.get_config()["processors"]
        with fresh_observability(service_name="x", configure_logging=False):
            assert structlog.get_config()["processors"] is processors
            assert root.handlers == handlers
            assert root.level == level
            get_logger("mine").info("untouched", k=1)
        assert seen == [{"event": "untouched", "k": 1}]
    finally:
        structlog.configure(**saved)


def test_redact_keys_setting_replaces_the_list(sink: Sink) -> None:
    cfg = ObservabilityConfig(service_name="shop", log_format="json",
                              redact_keys=("ssn", "pin-code"))
    configure_logging(cfg, FaultReporter(), stream=sink.buffer)
    log_event("kyc", ssn="123-45-6789", customer={"PIN_code": "0000", "name": "Ana"},
              note="ssn=987654321", password="visible-now")
    d = sink.lines()[0]
    assert d["ssn"] == "[REDACTED]"
    assert d["customer"] == {"PIN_code": "[REDACTED]", "name": "Ana"}
    assert "987654321" not in d["note"]
    assert d["password"] == "visible-now"  # the configured list replaces the default one


# ---------------------------------------------------------------- issue 11 (5): server logs
@pytest.fixture
def server_logging() -> Iterator[None]:
    """Apply :func:`server_logging_config` in this process; undo it afterwards."""
    import logging.config

    from mestres_observability.logs import server_logging_config

    root = logging.getLogger()
    names = ("gunicorn.error", "gunicorn.access", "uvicorn", "uvicorn.error", "uvicorn.access")
    saved = (root.level, list(root.handlers),
             {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in names})
    saved_structlog = structlog.get_config()
    logging.config.dictConfig(server_logging_config())
    try:
        yield
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        for n, (handlers, propagate) in saved[2].items():
            logging.getLogger(n).handlers[:] = handlers
            logging.getLogger(n).propagate = propagate
        structlog.configure(**saved_structlog)


def test_server_lines_are_the_librarys_json(server_logging: None,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    try:
        raise RuntimeError("worker crashed")
    except RuntimeError:
        logging.getLogger("gunicorn.error").exception("Exception in worker process")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET / HTTP/1.1" 200')
    logging.getLogger("gunicorn.access").info("access line")
    logging.getLogger("shop").warning("before init")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["logger"], d["event"]) for d in lines] == [
        ("gunicorn.error", "Exception in worker process"),
        ("uvicorn.error", "Started server process [42]"),
        ("shop", "before init"),
    ]
    assert lines[0]["exception"]["type"] == "RuntimeError"
    assert "worker crashed" in lines[0]["exception"]["stacktrace"]
    for d in lines:
        assert TS.match(d["timestamp"])


def test_init_replaces_the_server_handler_on_the_root_logger(server_logging: None) -> None:
    with fresh_observability(configure_logging=True, log_format="json"):
        ours = [h for h in logging.getLogger().handlers if getattr(h, "mestres_handler", False)]
        assert len(ours) == 1


def test_the_shipped_uvicorn_log_config_file_matches_the_code() -> None:
    from mestres_observability.logs import server_logging_config
    from mestres_observability.uvicorn import LOG_CONFIG, LOG_CONFIG_FILE

    with open(LOG_CONFIG_FILE, encoding="utf-8") as f:
        shipped = json.load(f)
    assert shipped == server_logging_config() == LOG_CONFIG, \
        "regenerate mestres_observability/uvicorn_log_config.json from server_logging_config()"


def test_the_gunicorn_config_module_sets_logconfig_dict() -> None:
    import subprocess
    import sys

    # in a child: importing the config module turns on multiprocess mode in its process
    code = ("import mestres_observability.gunicorn as g\n"
            "from mestres_observability.logs import server_logging_config\n"
            "print(g.logconfig_dict == server_logging_config())\n"
            "g._remove_temporary_dir()\n")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False, env=env)
    assert res.stdout.strip() == "True", res.stderr
