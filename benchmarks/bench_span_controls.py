"""Per-request cost of the span controls on the Flask adapter.

Run: ``python benchmarks/bench_span_controls.py [--cpu]`` (about a minute;
``--cpu``: CPU time per request instead of wall-clock time). The same
in-process WSGI drive as ``bench_http.py`` (``GET /orders/42`` with a
``traceparent``, interleaved rounds, overhead = median over rounds of variant -
bare app in the same round). Variants, all with metrics, a lean SERVER span and
the access log:

* ``ours full, scrubbing off``: ``scrub_span_attributes=False``;
* ``ours full``: the defaults (span attributes scrubbed when the span ends);
* ``ours full + controls``: plus three captured request headers, two captured
  response headers and both hooks (each setting one attribute);
* ``ours full + controls, SDK spans``: the same with ``lean_spans=False``.

Figures are reported, not gated: they depend on the machine.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_http


def _request_hook(span: Any, request: Any) -> None:
    span.set_attribute("app.tenant", request.headers.get("X-Tenant", "none"))


def _response_hook(span: Any, request: Any, response: Any) -> None:
    span.set_attribute("app.cache", response.headers.get("X-Cache", "miss"))


CONTROLS = {
    "capture_request_headers": ("x-tenant", "accept", "authorization"),
    "capture_response_headers": ("content-type", "x-cache"),
    "server_request_hook": _request_hook,
    "server_response_hook": _response_hook,
}


def _ours(make: Callable[[], Any], lean: bool = True, **settings: Any) -> tuple[Any, Any]:
    from mestres_observability import init_observability
    from mestres_observability.flask import instrument

    app = make()
    obs = init_observability(
        configure_logging=False, system_metrics=False, process_metrics=False,
        service_name="bench", respect_global_tracer_provider=False, span_queue_size=65536,
        traces_exporter="otlp", otlp_endpoint="http://127.0.0.1:9", lean_spans=lean,
        **settings)
    pipeline = obs.tracing._pipeline
    if pipeline is not None:  # spans batched and handed to an exporter that discards them
        pipeline.exporter.inner = bench_http._Discard()
        pipeline.fast_send = None
    instrument(app, obs)
    return app, obs


def variants() -> dict[str, Callable[[], Any] | None]:
    from flask import Flask, jsonify

    def make() -> Any:
        app = Flask("bench")

        @app.get("/orders/<int:order_id>")
        def order(order_id: int) -> Any:
            response = jsonify({"id": order_id})
            response.headers["X-Cache"] = "hit"
            return response

        return app

    return {
        "bare": make,
        "ours full, scrubbing off": lambda: _ours(make, scrub_span_attributes=False),
        "ours full": lambda: _ours(make),
        "ours full + controls": lambda: _ours(make, **CONTROLS),
        "ours full + controls, SDK spans": lambda: _ours(make, lean=False, **CONTROLS),
    }


def measure_cpu(rounds: int = 15, per_round: int = 400) -> dict[str, tuple[float, float]]:
    """Per variant: median CPU time per request (``time.process_time``, all threads) and its
    overhead over the bare app (median over interleaved rounds of variant - bare)."""
    import gc
    import statistics
    import time

    from mestres_observability._current import swap

    runs = {}
    for label, factory in variants().items():
        assert factory is not None
        built = factory()
        app, obs = built if isinstance(built, tuple) else (built, None)
        runs[label] = (_runner_with_headers(app), obs)
    times: dict[str, list[float]] = {label: [] for label in runs}
    for round_no in range(rounds + 1):
        for label, (run, obs) in runs.items():
            if obs is not None:
                swap(obs)
            gc.collect()
            t0 = time.process_time()
            run(per_round)
            if round_no:  # round 0 warms up
                times[label].append((time.process_time() - t0) / per_round * 1e6)
    bare = times["bare"]
    return {label: (statistics.median(v), statistics.median(
        a - b for a, b in zip(v, bare, strict=True))) for label, v in times.items()}


def main() -> None:
    bench_http._setup_globals()
    if "--cpu" in sys.argv[1:]:
        print("\nFlask span controls: CPU us per request, median (overhead over bare, median)")
        for label, (median, overhead) in measure_cpu().items():
            print(f"  {label:<36} {median:8.1f}   (+{overhead:6.1f})")
        return
    figures = bench_http.measure("Flask span controls", variants(), _runner_with_headers)
    print("\nFlask span controls: us per request, best round (overhead over bare, median)")
    for label, value in figures.items():
        if value is not None:
            print(f"  {label:<36} {value[0]:8.1f}   (+{value[1]:6.1f})")
    off = figures["ours full, scrubbing off"]
    on = figures["ours full"]
    controls = figures["ours full + controls"]
    if off and on and controls:
        print(f"  scrubbing: +{on[1] - off[1]:.1f} us per request; controls: "
              f"+{controls[1] - on[1]:.1f} us over the defaults")
    print(f"\n({bench_http.ROUNDS} rounds x {bench_http.PER_ROUND} requests)")


def _runner_with_headers(app: Any) -> Callable[[int], None]:
    """``bench_http.wsgi_runner`` with the captured request headers sent too."""
    return bench_http.wsgi_runner(app, {"HTTP_X_TENANT": "acme", "HTTP_ACCEPT": "application/json",
                                        "HTTP_AUTHORIZATION": "Bearer abcdefghijkl"})


if __name__ == "__main__":
    main()
