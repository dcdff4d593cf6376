"""A real process: its stdout parsed line by line, correlated with the spans it exported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

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
