"""Mestres Café example service, instrumented with mestres-observability.

    python examples/coffee_shop.py --scripted   # what `make demo` runs
    python examples/coffee_shop.py --serve      # keep it running (`make serve`)

A small Flask shop: products, orders, payments. One `init_observability(app)`
call gives it /metrics, traces, JSON logs and health endpoints; `@track_order`
and `@track_payment` give it business metrics. The scripted mode starts the
service on a free loopback port, drives a session of orders over real HTTP,
then prints what an operator gets: the log lines, a metrics excerpt, the
health report, and one order seen through all three signals: its trace drawn
as a waterfall (spans from OpenTelemetry's in-memory exporter), the log lines
and the metric exemplars that carry the same trace id. Embedded defaults, no
external server.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flask import Flask, abort, jsonify, request

from mestres_observability import (
    __version__,
    health_check,
    init_observability,
    set_inventory_level,
    span,
    track_inventory_movement,
    track_order,
    track_payment,
    track_user_action,
)
from mestres_observability.testing import capture_logs, captured_spans

CATALOGUE: dict[str, Decimal] = {
    "espresso": Decimal("6.50"),
    "cappuccino": Decimal("9.90"),
    "beans-yellow-bourbon-250g": Decimal("42.00"),
    "beans-catuai-1kg": Decimal("139.00"),
    "v60-filter-paper": Decimal("24.90"),
}


@dataclass
class Item:
    product_id: str
    quantity: int


@dataclass
class Order:
    id: int
    user_id: int | None
    status: str
    total_amount: Decimal
    items: list[Item] = field(default_factory=list)


@dataclass
class Payment:
    id: str
    order_id: int
    amount: Decimal
    method: str
    status: str


class OutOfStock(Exception):
    """Raised when an order asks for more than the stock."""


stock: dict[str, int] = dict.fromkeys(CATALOGUE, 30)
orders: dict[int, Order] = {}
_ids = itertools.count(1001)
_lock = threading.Lock()


@track_order
def place_order(user_id: int | None, lines: list[dict[str, Any]]) -> Order:
    """Validate the cart, reserve stock and price it. Raises OutOfStock."""
    items = [Item(str(line["product_id"]), int(line["quantity"])) for line in lines]
    with span("validate_inventory", **{"order.lines": len(items)}), _lock:
        for it in items:
            if it.product_id not in CATALOGUE:
                raise KeyError(it.product_id)
            if stock[it.product_id] < it.quantity:
                raise OutOfStock(it.product_id)
        for it in items:
            stock[it.product_id] -= it.quantity
            track_inventory_movement(it.product_id, "out", it.quantity)
            set_inventory_level(it.product_id, stock[it.product_id])
    with span("calculate_totals"):
        total = sum((CATALOGUE[it.product_id] * it.quantity for it in items), Decimal("0"))
    order = Order(next(_ids), user_id, "pending", total, items)
    orders[order.id] = order
    return order


@track_payment
def pay(order: Order, method: str) -> Payment:
    """Charge an order (the gateway declines one card payment in five)."""
    status = "declined" if method == "card" and random.random() < 0.2 else "approved"
    if status == "approved":
        order.status = "paid"
    return Payment(f"pay-{order.id}", order.id, order.total_amount, method, status)


def create_app() -> Flask:
    """The Flask application (routes only; instrumentation is one call in main)."""
    app = Flask("mestres-cafe-api")

    @app.get("/products/<product_id>")
    def product(product_id: str) -> Any:
        track_user_action("view_product")
        if product_id not in CATALOGUE:
            abort(404)
        return jsonify(id=product_id, price=float(CATALOGUE[product_id]), stock=stock[product_id])

    @app.post("/orders")
    def create_order() -> Any:
        body = request.get_json(force=True)
        user_id = body.get("user_id")
        track_user_action("checkout", user_id=user_id)
        try:
            order = place_order(user_id, body["items"])
        except OutOfStock:
            return jsonify(error="out_of_stock"), 409
        return jsonify(id=order.id, total=float(order.total_amount), status=order.status), 201

    @app.post("/orders/<int:order_id>/payments")
    def create_payment(order_id: int) -> Any:
        order = orders.get(order_id)
        if order is None:
            abort(404)
        payment = pay(order, request.get_json(force=True).get("method", "pix"))
        code = 201 if payment.status == "approved" else 402
        return jsonify(id=payment.id, status=payment.status), code

    @app.get("/orders/<int:order_id>")
    def get_order(order_id: int) -> Any:
        order = orders.get(order_id)
        if order is None:
            abort(404)
        return jsonify(id=order.id, status=order.status, total=float(order.total_amount))

    @app.get("/boom")
    def boom() -> Any:
        raise RuntimeError("simulated bug")

    @app.get("/")
    def shop_front() -> Any:
        links = "".join(f'<li><a href="/shop/{p}">{p}</a></li>' for p in CATALOGUE)
        return _page("Mestres Café", f"<p>Specialty coffee, roasted to order.</p><ul>{links}</ul>")

    @app.get("/shop/<product_id>")
    def product_page(product_id: str) -> Any:
        if product_id not in CATALOGUE:
            abort(404)
        return _page(product_id, f"<p>R$ {CATALOGUE[product_id]}</p><p><a href=\"/\">Back</a></p>"
                     "<script>addEventListener('load', function () { mestresRUM.trackBusinessEvent("
                     f"'product_viewed', {{product_id: '{product_id}'}}); }});</script>")

    return app


def _page(title: str, body: str) -> str:
    """An HTML page of the shop with the RUM snippet, an add-to-cart button (whose
    handler takes 60 ms, so the visit has an INP) and a button that throws."""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<script src="/observability/rum.js" data-endpoint="/api/v1/metrics" async></script></head>
<body><h1>{title}</h1>{body}
<button id="add-to-cart">Add to cart</button> <button id="break">Break the page</button>
<script>
document.getElementById("add-to-cart").addEventListener("click", function () {{
  var end = performance.now() + 60; while (performance.now() < end) {{}}  // cart work
  if (window.mestresRUM) mestresRUM.trackBusinessEvent("add_to_cart", {{source: "page"}});
}});
document.getElementById("break").addEventListener("click", function () {{
  throw new Error("demo: the checkout widget failed");
}});
</script></body></html>"""


@health_check("inventory_db", critical=True, timeout=0.3)
def inventory_db() -> dict[str, Any]:
    """Stands in for a database ping: reports the number of products tracked."""
    return {"products": len(stock)}


@health_check("payment_gateway", critical=False, timeout=0.2)
def payment_gateway() -> bool:
    """A non-critical dependency: its failure only degrades /health/detailed."""
    return True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the library logs requests
        return None


def _serve(app: Flask, port: int) -> WSGIServer:
    server = make_server("127.0.0.1", port, app, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _call(base: str, method: str, path: str, body: Any = None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def scripted_session(base: str, n_customers: int = 12) -> None:
    """A morning at the shop: browsing, orders, payments, a few failures."""
    rng = random.Random(7)
    random.seed(7)
    products = list(CATALOGUE)
    for customer in range(n_customers):
        user_id = 100 + customer if customer % 3 else None
        _call(base, "GET", f"/products/{rng.choice(products)}")
        lines = [{"product_id": p, "quantity": rng.randint(1, 3)}
                 for p in rng.sample(products, rng.randint(1, 3))]
        status, body = _call(base, "POST", "/orders", {"user_id": user_id, "items": lines},
                             headers={"X-Request-ID": f"demo-{customer:03d}"})
        if status == 201:
            order_id = json.loads(body)["id"]
            _call(base, "POST", f"/orders/{order_id}/payments",
                  {"method": rng.choice(["pix", "card", "boleto"])})
            _call(base, "GET", f"/orders/{order_id}")
    _call(base, "POST", "/orders", {"items": [{"product_id": "espresso", "quantity": 500}]})
    _call(base, "GET", "/products/unknown-blend")
    _call(base, "GET", "/wp-admin/setup.php")  # a scanner: one <unmatched> series, not one per path
    _call(base, "GET", "/boom")


WANTED = ("orders_total", "revenue_total", "order_errors_total", "products_sold_total",
          "payments_total", "user_actions_total", "inventory_level", "http_requests_total",
          "http_request_duration_seconds_count", "mestres_observability_errors_total",
          "memory_usage_bytes", "cpu_usage_percent", "process_resident_memory_bytes")


def _bar_char() -> str:
    try:
        "\u2588".encode(sys.stdout.encoding or "ascii")
        return "\u2588"
    except (UnicodeEncodeError, LookupError):
        return "#"


def waterfall(spans: list[Any], width: int = 40) -> list[str]:
    """One trace's spans as text: name (indented by nesting), duration, and a bar on a
    shared time axis from the first span's start to the last span's end."""
    ids = {s.context.span_id for s in spans}
    children: dict[int | None, list[Any]] = {}
    for s in spans:
        parent = s.parent.span_id if s.parent is not None and s.parent.span_id in ids else None
        children.setdefault(parent, []).append(s)
    start = min(s.start_time for s in spans)
    total = max(max(s.end_time for s in spans) - start, 1)
    bar = _bar_char()
    lines: list[str] = []

    def draw(parent: int | None, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda x: x.start_time):
            left = round((s.start_time - start) / total * width)
            size = max(1, round((s.end_time - s.start_time) / total * width))
            label = ("  " * depth + s.name)[:34]
            ms = (s.end_time - s.start_time) / 1e6
            lines.append(f"  {label:<34} {ms:8.2f} ms  |{' ' * left}{bar * size}"
                         f"{' ' * max(0, width - left - size)}|")
            draw(s.context.span_id, depth + 1)

    draw(None, 0)
    return lines


def show_one_order(base: str, spans: list[Any], events: list[dict[str, Any]]) -> str | None:
    """Print the last successful order's trace, its log lines and the exemplars with its
    trace id; returns that trace id."""
    orders = [s for s in spans if s.name == "POST /orders"
              and (s.attributes or {}).get("http.response.status_code") == 201]
    if not orders:
        return None
    trace_id = format(orders[-1].context.trace_id, "032x")
    trace = [s for s in spans if format(s.context.trace_id, "032x") == trace_id]
    print(f"\n== One order, three signals: trace_id {trace_id} ==")
    print("trace (OpenTelemetry in-memory exporter):")
    for line in waterfall(trace):
        print(line)
    names = {format(s.context.span_id, "016x"): s.name for s in trace}
    print("logs with this trace_id (span they were logged in):")
    for e in events:
        if e.get("trace_id") == trace_id:
            fields = {k: v for k, v in e.items() if k in (
                "order_id", "total_amount", "status", "request_id", "endpoint", "status_code")}
            print(f"  {e.get('event'):<14} ({names.get(str(e.get('span_id')), '?')}) "
                  + " ".join(f"{k}={v}" for k, v in fields.items()))
    _, om = _call(base, "GET", "/metrics",
                  headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    print("metrics whose exemplar points at this trace (OpenMetrics, span of the exemplar):")
    for line in om.decode().splitlines():
        if f'trace_id="{trace_id}"' in line and "_bucket" not in line:
            sample, _, exemplar = line.partition(" # ")
            span_id = exemplar.partition('span_id="')[2][:16]
            print(f"  {sample:<70} ({names.get(span_id, '?')})")
    return trace_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--scripted", action="store_true", help="run a scripted session and exit")
    mode.add_argument("--serve", action="store_true", help="keep serving until Ctrl-C")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)

    app = create_app()
    obs = init_observability(app, service_name="mestres-cafe-api", service_version=__version__,
                             environment="demo", log_format="json", rum_enabled=True)
    server = _serve(app, args.port)
    base = f"http://127.0.0.1:{server.server_port}"

    if args.serve:
        print(f"Mestres Café API on {base}  (metrics: {base}/metrics, health: {base}/health/detailed)",
              file=sys.stderr)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        obs.shutdown()
        return 0

    print("== Service log (one JSON line per request and per business event) ==", flush=True)
    with captured_spans() as spans, capture_logs() as events:
        scripted_session(base)
        time.sleep(0.05)
    _, metrics = _call(base, "GET", "/metrics")
    print("\n== /metrics excerpt ==")
    for line in metrics.decode().splitlines():
        if line.startswith(WANTED) and "_created" not in line:
            print("  " + line)
    status, health = _call(base, "GET", "/health/detailed")
    print(f"\n== /health/detailed (HTTP {status}) ==")
    print(json.dumps(json.loads(health), indent=2))
    for path in ("/health/liveness", "/health/readiness"):
        status, body = _call(base, "GET", path)
        print(f"{path}: HTTP {status} {body.decode().strip()}")
    show_one_order(base, spans.spans, events)
    server.shutdown()
    obs.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
