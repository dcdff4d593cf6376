"""The example shop (``examples/coffee_shop.py``) as a WSGI app for gunicorn.

``gunicorn -c python:mestres_observability.gunicorn --workers 2 shop_app:app``:
the same routes, health checks and business decorators as ``make demo``, with
JSON logs and tracing on (sampled spans give the latency histogram its
exemplars).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))

import coffee_shop

from mestres_observability import init_observability

app = coffee_shop.create_app()
init_observability(app, service_name="mestres-cafe-api", environment="e2e", log_format="json")
