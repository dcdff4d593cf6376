"""Cost per Celery task and per outbound call, against OpenTelemetry's instrumentation alone.

Run: ``python benchmarks/bench_beyond.py``

Both sides create their spans on the same SDK tracer provider (the library's,
with no exporter), in one process, timed in interleaved rounds so that load
from other processes hits every contender alike:

* **Celery**: one eager ``task.apply()`` of a trivial task, bare (no
  instrumentation), with ``opentelemetry-instrumentation-celery`` alone, and with
  ``mestres_observability.celery`` alone (CONSUMER span, four task metrics,
  the log context);
* **outbound**: one ``requests`` call through a ``Session`` whose adapter
  answers from memory (no network, so only the instrumentation is measured),
  bare, with ``opentelemetry-instrumentation-requests`` alone and with
  ``mestres_observability.outbound`` alone (CLIENT span, two metrics, header
  injection).

Reported: microseconds per call, the overhead over bare, and the ratio of our
overhead to OpenTelemetry's (below 1: cheaper than the instrumentation alone,
while also recording the metrics).
"""

from __future__ import annotations

import os
import sys
import timeit
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mestres_observability import init_observability

ROUNDS = 9


def interleaved(cases: dict[str, tuple[Callable[[], None], Callable[[], None], Callable[[], Any]]],
                n: int) -> dict[str, float]:
    """Best per-call time (us) of each case: ``(set up, tear down, call)`` per round."""
    out = dict.fromkeys(cases, float("inf"))
    for _ in range(ROUNDS):
        for name, (up, down, call) in cases.items():
            up()
            try:
                call()  # warm
                out[name] = min(out[name], timeit.timeit(call, number=n) / n * 1e6)
            finally:
                down()
    return out


def report(title: str, times: dict[str, float]) -> None:
    bare, otel, ours = times["bare"], times["opentelemetry"], times["mestres"]
    print(f"\n{title}")
    print(f"  {'case':<16}{'us/call':>10}{'overhead':>12}")
    for name, value in times.items():
        print(f"  {name:<16}{value:>10.2f}{value - bare:>12.2f}")
    ratio = (ours - bare) / (otel - bare) if otel > bare else float("nan")
    print(f"  ours / OpenTelemetry, whole call: {ours / otel:.2f}x; overhead: {ratio:.2f}x")


def bench_celery() -> None:
    import celery
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    from mestres_observability import celery as ours

    app = celery.Celery("bench", broker="memory://", set_as_current=False)
    app.conf.task_always_eager = True
    app.conf.task_store_eager_result = False

    @app.task(name="bench.add", shared=False, ignore_result=True)
    def add(x: int, y: int) -> int:
        return x + y

    otel = CeleryInstrumentor()

    def nothing() -> None:
        return None

    def call() -> Any:
        return add.apply((1, 2))

    times = interleaved({
        "bare": (nothing, nothing, call),
        "opentelemetry": (otel.instrument, otel.uninstrument, call),
        "mestres": (lambda: ours.instrument_celery(app), ours._uninstrument, call),
    }, n=3_000)
    report("Celery: one eager task.apply()", times)


def bench_requests() -> None:
    import requests
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from requests.adapters import BaseAdapter

    from mestres_observability import outbound

    class Memory(BaseAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:
            response = requests.Response()
            response.status_code = 200
            response._content = b"{}"
            response.request = request
            response.url = request.url
            return response

        def close(self) -> None:
            return None

    session = requests.Session()
    session.mount("http://", Memory())
    otel = RequestsInstrumentor()

    def nothing() -> None:
        return None

    def call() -> Any:
        return session.get("http://payments.internal/charges/42")

    times = interleaved({
        "bare": (nothing, nothing, call),
        "opentelemetry": (otel.instrument, otel.uninstrument, call),
        "mestres": (outbound.instrument_requests, outbound.uninstrument_requests, call),
    }, n=5_000)
    report("Outbound: one requests call (in-memory adapter)", times)


def main() -> None:
    init_observability(service_name="bench", configure_logging=False, traces_exporter="none",
                       system_metrics=False, process_metrics=False)
    print(f"Python {sys.version.split()[0]}; best of {ROUNDS} interleaved rounds")
    bench_celery()
    bench_requests()


if __name__ == "__main__":
    main()
