"""The example service runs as `make demo` runs it, and shows what it should."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_scripted_session() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "coffee_shop.py"), "--scripted"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    log_part, _, rest = out.partition("== /metrics excerpt ==")
    assert rest, out[-2000:]
    records = [json.loads(line) for line in log_part.splitlines() if line.startswith("{")]
    events = [r.get("event") for r in records]
    assert "order_created" in events
    assert "payment_processed" in events
    assert "http_request" in events
    access = [r for r in records if r.get("event") == "http_request"]
    assert any(r.get("request_id") == "demo-000" for r in access)
    created = next(r for r in records if r.get("event") == "order_created")
    assert len(created.get("trace_id", "")) == 32
    metrics_part, _, health_part = rest.partition("== /health/detailed")
    assert 'orders_total{status="pending"}' in metrics_part or 'orders_total{status="paid"}' in metrics_part
    assert 'endpoint="/orders/<int:order_id>/payments"' in metrics_part
    assert 'endpoint="<unmatched>"' in metrics_part
    assert "order_errors_total{error_type=\"OutOfStock\"}" in metrics_part
    assert '"inventory_db"' in health_part
    assert "/health/liveness: HTTP 200" in health_part
