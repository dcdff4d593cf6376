"""Flask app for ``gunicorn --preload`` with tail sampling (``MESTRES_OBS_TAIL_SAMPLING``).

The master initialises tracing and, before the fork, leaves one trace undecided (a
child span held, its root still open): no worker may inherit it. Each checkout runs
a child span; ``/checkout/<n>`` fails with a 500 when ``n`` is a multiple of 3.
"""

from __future__ import annotations

import os
import time

from flask import Flask, jsonify
from opentelemetry import trace

from mestres_observability import init_observability, span

app = Flask(__name__)


@app.get("/checkout/<int:n>")
def checkout(n: int) -> object:
    trace.get_current_span().set_attribute("app.worker_pid", os.getpid())
    with span("charge_card", **{"app.worker_pid": os.getpid()}):
        time.sleep(0.02)  # keeps a sync worker busy, so concurrent requests spread over workers
    if n % 3 == 0:
        raise RuntimeError("card declined")
    response = jsonify({"n": n})
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


obs = init_observability(app, service_name="flask-tail", configure_logging=False,
                         access_log=False, otlp_endpoint=os.environ["OTLP_TEST_ENDPOINT"])
_open = obs.tracing.own_tracer.start_span("master.open")  # never ends: its child stays held
obs.tracing.own_tracer.start_span(
    "master.held", context=trace.set_span_in_context(_open)).end()
