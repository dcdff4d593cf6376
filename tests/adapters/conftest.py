"""Fixtures shared by the adapter tests: JSON log capture and in-memory spans."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mestres_observability.observability import Observability

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class LogCapture:
    """structlog rendering real JSON lines into a buffer."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()

    @property
    def text(self) -> str:
        return self.buffer.getvalue()

    def lines(self, event: str | None = "http_request") -> list[dict[str, Any]]:
        out = []
        for line in self.text.splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if event is None or record.get("event") == event:
                out.append(record)
        return out


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """Configure structlog to write JSON lines to a buffer for the test."""
    cap = LogCapture()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=cap.buffer),
        cache_logger_on_first_use=False,
    )
    try:
        yield cap
    finally:
        structlog.reset_defaults()


def use_memory_tracer(obs: Observability) -> InMemorySpanExporter:
    """Give ``obs`` an SDK tracer exporting to memory (independent of global state)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    obs._tracing = SimpleNamespace(  # type: ignore[assignment]
        tracer=provider.get_tracer("tests"), enabled=True,
        shutdown=lambda timeout=None: provider.shutdown(), retire=lambda: None,
    )
    import mestres_observability.http as http_module

    http_module._cached = None
    return exporter


def series(obs: Observability, family: str) -> list[dict[str, str]]:
    """Label sets of the samples named ``family`` (e.g. ``http_requests_total``)."""
    out = []
    for metric in obs.registry.collect():
        for sample in metric.samples:
            if sample.name == family:
                out.append(dict(sample.labels))
    return out
