"""Overhead of the spans API and of a rendered log line, as ratios from one run.

Run: ``python benchmarks/bench_tracing.py``

* ``@traced`` against a hand-written ``tracer.start_as_current_span`` on the same
  SDK tracer (target: at most 1.2x), with no exporter and with the collector
  down (closed port: spans queue and drop, the caller must not notice);
* ``span()`` context manager against the same raw call;
* one log line rendered by the library (structlog, redaction, trace ids, JSON,
  written straight to the stream when the library's handler is the only one
  that would see the record; through the stdlib handler otherwise, measured
  too) against plain structlog running the same processors straight into a
  ``PrintLogger``;
* that line and the HTTP access-log line (twelve fields) rendered by orjson
  (where it writes the standard encoder's very bytes, the default) against the
  same lines with the standard library's encoder alone.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import sys
import timeit
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import structlog

from mestres_observability import init_observability
from mestres_observability import logs as logs_module
from mestres_observability.logs import configure_logging, get_logger
from mestres_observability.tracing import span, traced

N = 20_000
REPEAT = 5


def best(fn: Any, n: int = N) -> float:
    """Best per-call time in microseconds."""
    return min(timeit.repeat(fn, number=n, repeat=REPEAT)) / n * 1e6


def interleaved(fns: dict[str, Any], n: int, rounds: int = 7) -> dict[str, float]:
    """Best per-call time (us) of each function, measured in alternation so that
    load from other processes hits every contender alike."""
    out = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            out[k] = min(out[k], timeit.timeit(fn, number=n) / n * 1e6)
    return out


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def bench_spans(label: str, **settings: Any) -> None:
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
    obs = init_observability(configure_logging=False, **settings)
    tracer = obs.tracer

    def work(x: int) -> int:
        return x + 1

    @traced("work")
    def decorated(x: int) -> int:
        return x + 1

    def raw(x: int) -> int:
        with tracer.start_as_current_span("work"):
            return x + 1

    def with_cm(x: int) -> int:
        with span("work"):
            return x + 1

    best(lambda: raw(1), 2000)  # warm-up
    t = interleaved({"plain": lambda: work(1), "raw": lambda: raw(1),
                     "traced": lambda: decorated(1), "cm": lambda: with_cm(1)}, 5000)
    t_plain, t_raw, t_traced, t_cm = t["plain"], t["raw"], t["traced"], t["cm"]
    print(f"[{label}] plain call           {t_plain:7.2f} us")
    print(f"[{label}] raw start_as_current {t_raw:7.2f} us")
    print(f"[{label}] @traced              {t_traced:7.2f} us   ratio {t_traced / t_raw:.2f}x "
          "(target <= 1.2x)")
    print(f"[{label}] with span()          {t_cm:7.2f} us   ratio {t_cm / t_raw:.2f}x")
    obs.shutdown(timeout=1.0)


def bench_logs() -> None:
    sink = io.StringIO()
    obs = init_observability(configure_logging=False, traces_exporter="none",
                             service_name="bench")
    configure_logging(obs.config.replace(log_format="json"), obs.faults, stream=sink)
    ours = get_logger("bench")

    plain_sink = io.StringIO()
    plain = structlog.wrap_logger(
        structlog.PrintLogger(plain_sink),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            logs_module.add_trace_ids,
            logs_module.structure_exception,
            logs_module.redact_and_clean,
            logs_module.add_timestamp,
            logs_module.add_service,
            logs_module.finalize,
            logs_module.render_json,
        ],
    )
    bare = structlog.wrap_logger(
        structlog.PrintLogger(plain_sink),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.JSONRenderer(),
        ],
    )
    fields = {"order_id": "o-1", "total_amount": 19.99, "items_count": 3, "user_id": "u-1"}
    access = get_logger("mestres_observability.access")
    access_fields = {
        "request_id": "5b0e1c1e-8a3b-4b8e-9d1c-3c1f2e4a5b6c", "method": "GET",
        "url": "/orders/42?page=2", "endpoint": "/orders/<int:order_id>", "status_code": 200,
        "duration_seconds": 0.000123, "user_agent": "bench/1", "ip_address": "127.0.0.1",
        "user_id": None, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
    }
    fast = logs_module._FAST_DUMPS

    def standard_encoder(fn: Any) -> Any:
        """``fn`` with the fast renderer off (the standard library's encoder alone)."""
        def run() -> None:
            logs_module._FAST_DUMPS = None
            try:
                fn()
            finally:
                logs_module._FAST_DUMPS = fast
        return run

    def event_line() -> None:
        ours.info("order_created", **fields)

    def access_line() -> None:
        access.info("http_request", **access_fields)

    def reset() -> None:
        sink.seek(0)
        sink.truncate()
        plain_sink.seek(0)
        plain_sink.truncate()

    def timed_reset(fn: Any) -> Any:
        def run() -> None:
            fn()
            if sink.tell() > 1 << 22 or plain_sink.tell() > 1 << 22:
                reset()
        return run

    class Foreign(logging.Handler):
        """Another handler on the root logger: records must go through logging."""

        def emit(self, record: logging.LogRecord) -> None:
            pass

    root = logging.getLogger()
    foreign = Foreign()

    def ours_via_stdlib() -> None:
        root.addHandler(foreign)
        try:
            ours.info("order_created", **fields)
        finally:
            root.removeHandler(foreign)

    n = 2000
    t = interleaved({
        "ours": timed_reset(event_line),
        "ours standard": timed_reset(standard_encoder(event_line)),
        "access": timed_reset(access_line),
        "access standard": timed_reset(standard_encoder(access_line)),
        "stdlib": timed_reset(ours_via_stdlib),
        "plain": timed_reset(lambda: plain.info("order_created", **fields)),
        "bare": timed_reset(lambda: bare.info("order_created", **fields)),
    }, n)
    t_ours, t_plain, t_bare = t["ours"], t["plain"], t["bare"]
    reset()
    with span("process_order"):
        t_ours_span = best(lambda: ours.info("order_created", **fields), n)
        reset()
    print(f"[logs] library line (direct)         {t_ours:7.2f} us")
    print(f"[logs] library line via stdlib       {t['stdlib']:7.2f} us   (another root handler)")
    print(f"[logs] plain structlog, same procs   {t_plain:7.2f} us   ratio {t_ours / t_plain:.2f}x")
    print(f"[logs] bare structlog JSON           {t_bare:7.2f} us   ratio {t_ours / t_bare:.2f}x")
    print(f"[logs] library line inside a span    {t_ours_span:7.2f} us")
    if fast is not None:
        print(f"[logs] library line, standard encoder {t['ours standard']:6.2f} us   orjson / standard "
              f"{t_ours / t['ours standard']:.2f}x")
        print(f"[logs] access-log line (12 fields)   {t['access']:7.2f} us   standard encoder "
              f"{t['access standard']:.2f} us, orjson / standard "
              f"{t['access'] / t['access standard']:.2f}x")
    else:
        print("[logs] orjson not installed: every line uses the standard encoder")
    for h in list(logging.getLogger().handlers):
        if getattr(h, "mestres_handler", False):
            logging.getLogger().removeHandler(h)
    obs.shutdown(timeout=1.0)


if __name__ == "__main__":
    if sys.argv[1:] != ["logs"]:
        bench_spans("no exporter", traces_exporter="none")
        bench_spans("collector down", otlp_endpoint=closed_port(), span_queue_size=2048)
    bench_logs()
