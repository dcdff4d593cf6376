"""The app one server of ``bench_server.py`` serves: one variant of ``bench_http.py``.

Read by gunicorn (``_server_app:app``, Flask and Django) or uvicorn (FastAPI) in the
server's own process, from the environment ``bench_server.py`` sets:
``BENCH_SERVER_FRAMEWORK`` (``flask``, ``fastapi``, ``django``), ``BENCH_SERVER_VARIANT``
(a variant name of ``bench_http.py``) and ``BENCH_SERVER_OTLP`` (the loopback OTLP/HTTP
receiver every exporting variant sends its spans to).
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_http

bench_http._setup_globals(os.environ["BENCH_SERVER_OTLP"])
app: Any = bench_http.serving(os.environ["BENCH_SERVER_FRAMEWORK"],
                              os.environ["BENCH_SERVER_VARIANT"])
