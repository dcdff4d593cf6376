"""Core overhead, reported as ratios measured in one run (issue 2).

    python benchmarks/bench_core.py

1. ``@track_order`` against the same work written by hand with
   prometheus_client (metrics only: tracing off, business log events filtered by
   level in both), then with a span and a JSON log line written by hand with the
   OpenTelemetry SDK and structlog (same processors) against ``@track_order``
   with tracing and logging on. Target: at most 1.3x.
2. One labelled increment through the cardinality guard against a raw
   ``labels().inc()``.

Each case is timed in interleaved rounds and the best round is kept, so both
sides of a ratio see the same machine state. Figures are reported, never gated.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry, Counter, Histogram

ROUNDS = 7
N = 20_000


def best_per_call(fns: dict[str, Callable[[], None]], n: int = N) -> dict[str, float]:
    """Best-of-ROUNDS time per call in microseconds, rounds interleaved across cases."""
    best = {k: float("inf") for k in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / n * 1e6)
    return best


def make_order() -> dict[str, Any]:
    return {"id": 1001, "user_id": 7, "status": "paid", "total_amount": Decimal("42.90"),
            "items": [{"product_id": "espresso", "quantity": 2},
                      {"product_id": "beans-1kg", "quantity": 1}]}


def handwritten_metrics() -> Callable[[], dict[str, Any]]:
    reg = CollectorRegistry()
    orders = Counter("orders", "o", ["status"], registry=reg)
    revenue = Counter("revenue", "r", ["currency"], registry=reg)
    value = Histogram("order_value", "v", ["currency"], registry=reg,
                      buckets=(5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000))
    sold = Counter("products_sold", "p", ["product_id"], registry=reg)

    def create() -> dict[str, Any]:
        order = make_order()
        orders.labels(order["status"]).inc()
        total = float(order["total_amount"])
        revenue.labels("BRL").inc(total)
        value.labels("BRL").observe(total)
        for item in order["items"]:
            sold.labels(item["product_id"]).inc(item["quantity"])
        return order

    return create


def main() -> None:
    import structlog
    from opentelemetry.sdk.trace import TracerProvider

    from mestres_observability import track_order
    from mestres_observability.testing import fresh_observability

    results: list[tuple[str, float, float, float, str]] = []

    # -- 1a. metrics only --------------------------------------------------------------
    hand = handwritten_metrics()
    with fresh_observability(tracing_enabled=False, log_level="WARNING", configure_logging=True,
                             log_format="json"):
        ours = track_order(make_order)
        t = best_per_call({"hand": hand, "ours": ours})
    results.append(("@track_order vs prometheus_client by hand (metrics only)",
                    t["hand"], t["ours"], t["ours"] / t["hand"], "<= 1.3x"))

    # -- 1b. metrics + span + JSON log line --------------------------------------------
    sink = io.StringIO()
    provider = TracerProvider()  # recording spans, no exporter: the same for both sides
    tracer = provider.get_tracer("bench")
    from mestres_observability import logs as obs_logs

    with fresh_observability(traces_exporter="none", configure_logging=True, log_format="json",
                             respect_global_tracer_provider=True) as obs:
        ours_full = track_order(make_order)
        procs = getattr(obs_logs, "benchmark_processors", None)
        processors: list[Any] = procs() if callable(procs) else [
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ]
        hand_logger = structlog.wrap_logger(structlog.PrintLogger(sink), processors=processors)
        hand_m = handwritten_metrics()

        def hand_full() -> dict[str, Any]:
            with tracer.start_as_current_span("process_order") as sp:
                order = hand_m()
                sp.set_attributes({"order.id": "1001", "order.user_id": "7",
                                   "order.items_count": 2, "order.total_amount": 42.9,
                                   "order.status": "paid"})
                hand_logger.info("order_created", order_id="1001", user_id="7",
                                 total_amount=42.9, items_count=2, status="paid",
                                 currency="BRL")
                return order

        real_stdout = sys.stdout
        sys.stdout = io.StringIO()  # our JSON lines go to stdout: keep the terminal clean
        try:
            t = best_per_call({"hand": hand_full, "ours": ours_full}, n=N // 4)
        finally:
            sys.stdout = real_stdout
    results.append(("@track_order vs OTel span + structlog line + metrics by hand",
                    t["hand"], t["ours"], t["ours"] / t["hand"], "<= 1.3x"))

    # -- 2. one labelled increment through the guard ------------------------------------
    with fresh_observability(tracing_enabled=False) as obs:
        fam = obs.metrics.products_sold_total
        raw = Counter("raw_sold", "r", ["product_id"], registry=CollectorRegistry())
        values = ("espresso",)
        t = best_per_call({"raw": lambda: raw.labels("espresso").inc(),
                           "guard": lambda: fam.inc(values)}, n=N * 5)
    results.append(("labelled increment via guard vs raw labels().inc()",
                    t["raw"], t["guard"], t["guard"] / t["raw"], "reported"))

    print(f"{'case':62} {'baseline us':>12} {'ours us':>9} {'ratio':>7}  target")
    for name, base, ours_us, ratio, target in results:
        print(f"{name:62} {base:12.2f} {ours_us:9.2f} {ratio:7.2f}x  {target}")


if __name__ == "__main__":
    main()
