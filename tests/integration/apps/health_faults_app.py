"""Flask app whose health checks raise ``BaseException`` s, for a real gunicorn worker.

``gunicorn -c python:mestres_observability.gunicorn health_faults_app:app``: each of
``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit`` and ``asyncio.CancelledError`` is
raised by a sync check (named after it) and an async one (``async_<name>``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from flask import Flask, jsonify

from mestres_observability import init_observability

BASE_EXCEPTIONS: tuple[type[BaseException], ...] = (
    SystemExit, KeyboardInterrupt, GeneratorExit, asyncio.CancelledError)

app = Flask(__name__)


@app.get("/pid")
def pid() -> Any:
    return jsonify({"pid": os.getpid()})


def _sync(exc: type[BaseException]) -> Callable[[], bool]:
    def check() -> bool:
        raise exc()
    return check


def _async(exc: type[BaseException]) -> Callable[[], Any]:
    async def check() -> bool:
        await asyncio.sleep(0)
        raise exc()
    return check


obs = init_observability(app, service_name="health-faults", configure_logging=False,
                         tracing_enabled=False, access_log=False, health_cache_ttl=0.0,
                         health_cpu_threshold=100.0, health_memory_threshold=100.0,
                         health_disk_threshold=100.0)
for _exc in BASE_EXCEPTIONS:
    obs.health.add(_exc.__name__, _sync(_exc))
    obs.health.add(f"async_{_exc.__name__}", _async(_exc))
obs.health.add("good", lambda: True)
