"""The body of the ``/traced`` view every adapter test app serves (lean span tests).

Inside a request it does what application code does with the current span: reads it
with ``trace.get_current_span()``, sets an attribute, adds an event, records a handled
exception, calls another service with ``requests`` (instrumented by
``opentelemetry-instrumentation-requests`` in the test) and opens a span of its own
with an SDK tracer (:data:`USER_TRACER`).
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

#: the URL the view calls with ``requests`` (a loopback server the test starts)
LOOPBACK: list[str] = []
#: the SDK tracer of "user code" (set by the test)
USER_TRACER: list[Any] = []
#: type name of ``trace.get_current_span()`` in each request
SEEN: list[str] = []


def traced_work() -> dict[str, Any]:
    import requests

    current = trace.get_current_span()
    SEEN.append(type(current).__name__)
    current.set_attribute("app.order_id", 7)
    current.add_event("app.checked", {"items": 3})
    try:
        raise ValueError("handled in the view")
    except ValueError as exc:
        current.record_exception(exc)
    requests.get(LOOPBACK[0], timeout=10).raise_for_status()
    with USER_TRACER[0].start_as_current_span("user.step") as step:
        step.set_attribute("step", 1)
    return {"ok": True}
