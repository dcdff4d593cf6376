"""Structured logs: fields, correlation, reserved keys, redaction, line safety, stdlib logging."""

from __future__ import annotations

import asyncio
import io
import json
import logging
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
    saved_structlog = structlog.get_config()
    root = logging.getLogger()
    saved_level = root.level
    cfg = ObservabilityConfig(service_name="shop", log_format="json",
                              log_levels={"noisy.lib": "ERROR"}, log_max_value_length=64)
    with fresh_observability():
        configure_logging(cfg, FaultReporter(), stream=out.buffer)
        try:
            yield out
        finally:
            for h in list(root.handlers):
                if getattr(h, "mestres_handler", False):
                    root.removeHandler(h)
            root.setLevel(saved_level)
            logging.getLogger("noisy.lib").setLevel(logging.NOTSET)
            structlog.configure(**saved_structlog)
            structlog.contextvars.clear_contextvars()


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
    saved = structlog.get_config()
    try:
        configure_logging(ObservabilityConfig(log_format="auto"), FaultReporter(), stream=out)
        get_logger("t").info("readable", k=1)
        assert "readable" in out.getvalue()
        assert not out.getvalue().startswith("{")
    finally:
        for h in list(logging.getLogger().handlers):
            if getattr(h, "mestres_handler", False):
                logging.getLogger().removeHandler(h)
        structlog.configure(**saved)


def test_broken_stdout_is_counted_not_raised() -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError("EPIPE")

    faults = FaultReporter()
    seen: list[str] = []
    faults.report = lambda component, kind, *a, **k: seen.append(kind)  # type: ignore[method-assign]
    saved = structlog.get_config()
    try:
        configure_logging(ObservabilityConfig(log_format="json"), faults, stream=Broken())
        get_logger().info("lost")
        assert seen == ["output"]
    finally:
        for h in list(logging.getLogger().handlers):
            if getattr(h, "mestres_handler", False):
                logging.getLogger().removeHandler(h)
        structlog.configure(**saved)


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
