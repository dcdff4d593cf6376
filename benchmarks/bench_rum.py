"""RUM ingestion throughput per core, for a 20-event batch (issue 12).

    python benchmarks/bench_rum.py

One request carries 20 events as the snippet sends them (15 Web Vitals, 2
navigation timings, 2 resource summaries, 1 business event), each with its
own report id and the page's trace id (so de-duplication and exemplars do
their work). Each round posts a fresh set of such requests (ids never
repeat), single-threaded, and the best round is kept; the figure is events
per second on one core:

1. through the endpoint layer (what every adapter dispatches to: checks,
   rate limits, capped read, validation, metrics);
2. through the Flask adapter (a WSGI call with a prepared environ: the HTTP
   metrics of the request included).

Figures are reported, never gated.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROUNDS = 15
REQUESTS = 200
EVENTS = 20
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def batch(n: int) -> bytes:
    """The ``n``-th 20-event request body (ids unique across ``n``)."""
    view = f"v1-bench{n:08d}"
    url = f"/products/p{n % 50}"
    events: list[dict[str, Any]] = []
    for i, metric in enumerate(("TTFB", "FCP", "LCP", "CLS", "INP") * 3):
        value = 0.05 if metric == "CLS" else 150.0 + 37 * i
        events.append({"type": "web_vitals", "data": {
            "metric": metric, "value": value, "id": f"{view}-{i}-{metric}", "url": url,
            "navigation_type": "navigate", "timestamp": 1.7e12, "trace_id": TRACE}})
    for i in range(2):
        events.append({"type": "navigation", "data": {
            "phases": {"dns": 1.2, "connect": 3.4, "request": 40.1, "response": 5.5,
                       "dom": 120.0, "load": 480.3},
            "id": f"{view}-nav{i}", "url": url, "timestamp": 1.7e12, "trace_id": TRACE}})
        events.append({"type": "resource", "data": {
            "initiators": {"script": {"count": 4, "duration": 210.5},
                           "img": {"count": 9, "duration": 880.0},
                           "css": {"count": 2, "duration": 40.0}},
            "id": f"{view}-r{i}", "url": url, "timestamp": 1.7e12, "trace_id": TRACE}})
    events.append({"type": "business_events", "data": {
        "event": "add_to_cart", "data": {"product_id": f"p{n % 50}", "quantity": 1},
        "id": f"{view}-b", "url": url, "timestamp": 1.7e12, "trace_id": TRACE}})
    assert len(events) == EVENTS
    return json.dumps({"events": events}).encode()


def main() -> None:
    from flask import Flask

    from mestres_observability._endpoint import Request
    from mestres_observability.flask import instrument
    from mestres_observability.http import http_state
    from mestres_observability.testing import fresh_observability

    bodies = [batch(n) for n in range(ROUNDS * REQUESTS * 2)]
    settings = {"rum_enabled": True, "rum_rate_limit": 0.0, "rum_global_rate_limit": 0.0,
                "rum_dedup_size": 100_000, "tracing_enabled": False}
    with fresh_observability(**settings) as obs:
        endpoint = http_state(obs).endpoints["/api/v1/metrics"]
        app = Flask("bench")

        @app.get("/products/<pid>")
        def product(pid: str) -> str:
            return "ok"

        instrument(app, obs)
        wsgi = app.wsgi_app
        headers = [("Content-Type", "text/plain;charset=UTF-8"), ("Host", "shop.example"),
                   ("Origin", "http://shop.example")]
        it = iter(bodies)

        def layer() -> None:
            body = next(it)
            req = Request("POST", "/api/v1/metrics",
                          [*headers, ("Content-Length", str(len(body)))],
                          peer="203.0.113.7", read=io.BytesIO(body).read)
            status = endpoint.dispatch(req).status
            assert status == 204, status

        def flask() -> None:
            body = next(it)
            environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/api/v1/metrics",
                       "SCRIPT_NAME": "", "QUERY_STRING": "", "SERVER_NAME": "shop.example",
                       "SERVER_PORT": "80", "HTTP_HOST": "shop.example",
                       "HTTP_ORIGIN": "http://shop.example", "REMOTE_ADDR": "203.0.113.7",
                       "CONTENT_TYPE": "text/plain;charset=UTF-8",
                       "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
                       "wsgi.url_scheme": "http"}
            out: list[str] = []
            b"".join(wsgi(environ, lambda s, h, e=None: out.append(s)))
            assert out[0].startswith("204"), out

        best = {"endpoint layer": float("inf"), "Flask adapter": float("inf")}
        for _ in range(ROUNDS):
            for name, fn in (("endpoint layer", layer), ("Flask adapter", flask)):
                t0 = time.perf_counter()
                for _ in range(REQUESTS):
                    fn()
                best[name] = min(best[name], (time.perf_counter() - t0) / REQUESTS)
        recorded = obs.metrics.rum_events_total.child("web_vitals")
        assert recorded is not None
    print(f"RUM ingestion, {EVENTS}-event batch, one core, best of {ROUNDS} rounds "
          f"of {REQUESTS} requests:")
    for name, seconds in best.items():
        print(f"  {name:15s} {seconds * 1e6:8.0f} us/request  {EVENTS / seconds:9,.0f} events/s")


if __name__ == "__main__":
    main()
