"""Flask app for ``gunicorn -c python:mestres_observability.gunicorn flask_app:app``."""

from __future__ import annotations

import gc
import os

from flask import Flask, jsonify

from mestres_observability import init_observability

app = Flask(__name__)


@app.get("/orders/<int:order_id>")
def order(order_id: int) -> object:
    response = jsonify({"id": order_id})
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


@app.get("/gc")
def collect() -> object:
    """A full collection in this worker; its pid and generation-2 collection count."""
    gc.collect()
    return jsonify({"pid": os.getpid(), "collections": gc.get_stats()[2]["collections"]})


@app.get("/boom")
def boom() -> object:
    raise RuntimeError("boom")  # a 500 whose traceback is logged


_made = [0]


@app.get("/jobs/<int:count>")
def jobs(count: int) -> object:
    """``count`` new label sets of a user counter (fills a small multiprocess directory)."""
    first = _made[0]
    _made[0] += count
    for i in range(first, first + count):
        JOBS.labels(f"{os.getpid()}-{i}").inc()
    response = jsonify({"created": count})
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


obs = init_observability(app, service_name="flask-multiworker",
                         configure_logging=os.environ.get("APP_CONFIGURE_LOGGING") == "1",
                         tracing_enabled=False, access_log=False)
JOBS = obs.counter("jobs", "Jobs.", ["id"])
