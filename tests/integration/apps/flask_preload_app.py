"""Flask app for ``gunicorn --preload``: the module runs once, in the master, before the fork.

The master initialises tracing (OTLP to ``OTLP_TEST_ENDPOINT``), exports a span
and runs ``/health/detailed`` once, so the span processor's thread, the health
thread pool and the health event-loop thread all exist before gunicorn forks
the workers. With ``APP_PRELOADED=1`` the ``held_in_master`` check never
finishes in the master: its run is still in flight at the fork. Every worker
must nevertheless export its own spans and run its own checks within their
timeouts. Without ``--preload`` (``APP_PRELOADED=0``) each worker runs this
module itself.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

from flask import Flask, jsonify
from opentelemetry import trace

from mestres_observability import health_check, init_observability, span

#: the process that forks the workers runs this module only under ``--preload``
MASTER = os.getpid() if os.environ.get("APP_PRELOADED") == "1" else -1
_never = threading.Event()

app = Flask(__name__)


@app.get("/orders/<int:order_id>")
def order(order_id: int) -> object:
    trace.get_current_span().set_attribute("app.worker_pid", os.getpid())
    time.sleep(0.02)  # keeps a sync worker busy, so concurrent requests spread over workers
    response = jsonify({"id": order_id})
    response.headers["X-Worker-Pid"] = str(os.getpid())
    response.headers["X-Span-Type"] = type(trace.get_current_span()).__name__
    return response


@health_check("held_in_master", timeout=0.5)
def held_in_master() -> dict[str, int]:
    if os.getpid() == MASTER:
        _never.wait()  # hangs for good in the master only
    return {"pid": os.getpid()}


@health_check("async_dependency", timeout=0.5)
async def async_dependency() -> dict[str, int]:
    await asyncio.sleep(0.01)
    return {"pid": os.getpid()}


obs = init_observability(app, service_name="flask-preload", configure_logging=False,
                         access_log=False, otlp_endpoint=os.environ["OTLP_TEST_ENDPOINT"],
                         health_expose_details=True, health_cache_ttl=0.0)

obs.health.probe("detailed")  # starts the pool, the loop thread and the hung run in the master
with span("master.preload", **{"app.worker_pid": os.getpid()}):
    pass  # still queued (OTEL_BSP_SCHEDULE_DELAY is 3 s) when gunicorn forks the workers
