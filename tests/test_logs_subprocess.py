"""A real process: its stdout parsed line by line, correlated with the spans it exported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.otlp_receiver import OTLPReceiver

ROOT = Path(__file__).resolve().parent.parent

APP = textwrap.dedent('''
    import logging
    import sys
    from decimal import Decimal

    from mestres_observability import get_logger, init_observability, track_order, track_payment
    from mestres_observability.logs import request_context, set_user_id
    from mestres_observability.tracing import span

    obs = init_observability(service_name="sub-svc", service_version="1.2.3",
                             otlp_endpoint=sys.argv[1], log_format="auto")

    @track_order
    def create_order():
        with span("validate_inventory"):
            get_logger("shop.inventory").info(
                "checking", password="hunter2", note="card 4111 1111 1111 1111")
        return {"id": "o-1", "user_id": "u-1", "status": "paid",
                "total_amount": Decimal("19.99"), "items": [{"product_id": "cafe", "quantity": 1}]}

    @track_payment
    def pay():
        return {"id": "p-1", "order_id": "o-1", "amount": Decimal("19.99"), "method": "pix",
                "status": "approved"}

    with request_context(request_id="req-abc"):
        set_user_id("u-1")
        create_order()
        pay()
    logging.getLogger("thirdparty.lib").warning("line one\\nline two \\u2028 end")
    obs.shutdown()
''')

USER_PROVIDER = textwrap.dedent('''
    import json
    import sys

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    mine = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(mine))
    trace.set_tracer_provider(provider)

    from mestres_observability import init_observability
    from mestres_observability.tracing import span

    for _ in range(3):
        obs = init_observability(otlp_endpoint=sys.argv[1], configure_logging=False)
    with span("shared"):
        pass
    obs.shutdown()
    print(json.dumps({
        "same_provider": trace.get_tracer_provider() is provider,
        "mine": [s.name for s in mine.get_finished_spans()],
        "processors": len(provider._active_span_processor._span_processors),
    }))
''')


def _run(script: str, endpoint: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "MESTRES_OBS_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-c", script, endpoint], capture_output=True, text=True, timeout=60,
        env=env, cwd=ROOT, check=False,
    )


def test_stdout_lines_correlate_with_exported_spans() -> None:
    with OTLPReceiver() as rx:
        proc = _run(APP, rx.endpoint)
        assert proc.returncode == 0, proc.stderr
        rx.wait_for(lambda: {"process_order", "process_payment", "validate_inventory"}
                    <= rx.span_names())
    raw = proc.stdout.split("\n")
    assert raw[-1] == ""
    lines: list[dict[str, Any]] = [json.loads(line) for line in raw[:-1]]  # one object per line
    assert len(proc.stdout.splitlines()) == len(lines)
    assert "hunter2" not in proc.stdout
    assert "4111 1111" not in proc.stdout
    for d in lines:
        assert {"timestamp", "level", "event", "logger", "service"} <= d.keys()
        assert d["service"] == "sub-svc"
        assert d["timestamp"].endswith("Z")

    by_event = {d["event"]: d for d in lines}
    order = rx.by_name("process_order")
    payment = rx.by_name("process_payment")
    inventory = rx.by_name("validate_inventory")
    assert inventory.parent_span_id == order.span_id
    assert order.resource["service.name"] == "sub-svc"
    assert order.resource["service.version"] == "1.2.3"

    created = by_event["order_created"]
    assert (created["trace_id"], created["span_id"]) == (order.trace_id, order.span_id)
    assert created["order_id"] == "o-1"
    assert created["total_amount"] == 19.99
    assert created["request_id"] == "req-abc"
    assert created["user_id"] == "u-1"
    paid = by_event["payment_processed"]
    assert (paid["trace_id"], paid["span_id"]) == (payment.trace_id, payment.span_id)
    assert {paid["payment_id"], paid["order_id"], paid["method"], paid["status"]} == {
        "p-1", "o-1", "pix", "approved"}
    checking = by_event["checking"]
    assert checking["span_id"] == inventory.span_id
    assert checking["password"] == "[REDACTED]"
    assert "[REDACTED]" in checking["note"]
    third = by_event["line one\nline two \u2028 end"]
    assert third["logger"] == "thirdparty.lib"
    assert "trace_id" not in third
    # the seed's Kibana query: event:(order_created OR payment_processed OR user_registered)
    assert {d["event"] for d in lines} >= {"order_created", "payment_processed"}


def test_user_installed_provider_is_respected() -> None:
    with OTLPReceiver() as rx:
        proc = _run(USER_PROVIDER, rx.endpoint)
        assert proc.returncode == 0, proc.stderr
        rx.wait_for(lambda: "shared" in rx.span_names())
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"same_provider": True, "mine": ["shared"], "processors": 2}


# ---------------------------------------------------------------- property, on a real stdout
LOGGING_CHILD = textwrap.dedent('''
    import json
    import logging
    import sys

    from mestres_observability import get_logger, init_observability, log_event

    init_observability(service_name="prop-svc", log_format="auto")
    done = get_logger("probe")
    done.info("ready")
    for n, request in enumerate(sys.stdin):
        case = json.loads(request)
        secret = case["secret"]
        log_event(case["event"], **{case["key"] or "k": case["value"],
                                    "nested": {"password": secret}, "secret": secret})
        logging.getLogger("thirdparty").warning("%s %s", case["value"], case["event"])
        done.info("case_done", n=n)
''')


class LoggingChild:
    """One long-lived process that logs each case sent on its stdin to its real stdout."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OTEL_", "MESTRES_OBS_"))}
        env["PYTHONPATH"] = str(ROOT)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOGGING_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, cwd=ROOT, text=True, encoding="utf-8",
            errors="strict", bufsize=1,
        )
        self.n = 0
        self._read_until("ready")  # the start-up lines (the init line)

    def _read_until(self, marker: str) -> list[str]:
        assert self.proc.stdout is not None
        out: list[str] = []
        while True:
            line = self.proc.stdout.readline()
            assert line.endswith("\n"), f"child ended or wrote a partial line: {line!r}"
            parsed = json.loads(line)
            if parsed.get("logger") == "probe" and parsed.get("event") == marker:
                if marker == "case_done":
                    assert parsed["n"] == self.n
                    self.n += 1
                return out
            out.append(line[:-1])

    def lines_for(self, case: dict[str, str]) -> list[str]:
        """The raw stdout lines the child wrote for ``case``, its ``case_done`` marker excluded."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(case, ensure_ascii=True) + "\n")
        self.proc.stdin.flush()
        return self._read_until("case_done")

    def close(self) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            assert self.proc.wait(timeout=30) == 0
        finally:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def logging_child() -> Iterator[LoggingChild]:
    child = LoggingChild()
    try:
        yield child
    finally:
        child.close()


hostile = st.text(alphabet=st.characters(codec="utf-8"), max_size=60) | st.sampled_from([
    "\n", "\r\n", "\r", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x00",
    "\x1b[31m", '"} {"level":"admin", "event":"forged"}', "\ud800", "\\", "",
])


@settings(max_examples=120, deadline=None)
@given(event=hostile, key=hostile, value=hostile,
       secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=12, max_size=20))
def test_property_stdout_keeps_one_object_per_line_and_never_leaks(
    logging_child: LoggingChild, event: str, key: str, value: str, secret: str,
) -> None:
    """Arbitrary strings in an event name, a field name and a value, through a real process's
    stdout: exactly one JSON object per line (two lines per case), the event and field survive,
    and a redacted value never appears unless the caller put it in plain fields too."""
    lines = logging_child.lines_for({"event": event, "key": key, "value": value,
                                     "secret": secret})
    assert len(lines) == 2, lines
    for line in lines:
        assert line.isascii(), line
        assert isinstance(json.loads(line), dict)
    business, third = (json.loads(x) for x in lines)
    assert business["service"] == "prop-svc"
    assert business["logger"] == "mestres_observability.events"
    assert third["logger"] == "thirdparty"
    assert third["level"] == "warning"
    if secret not in event + key + value:
        assert secret not in "\n".join(lines)
