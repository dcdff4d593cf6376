"""The example service runs as `make demo` runs it, and shows what it should."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests._support import require_binary

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
    # one order through the three signals: its trace as a waterfall, then its log lines and
    # the metric exemplars that carry the same trace id
    _, _, order_part = health_part.partition("== One order, three signals: trace_id ")
    assert order_part, out[-2000:]
    trace_id = order_part[:32]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
    rows = [line for line in order_part.splitlines() if line.rstrip().endswith("|")]
    names = [row[:38].strip() for row in rows]
    assert names == ["POST /orders", "process_order", "validate_inventory", "calculate_totals"]
    indents = [len(row) - len(row.lstrip()) for row in rows]
    assert indents == [2, 4, 6, 6]  # nesting: server span > process_order > its two steps
    assert all(re.search(r" \d+\.\d\d ms  \|[ █#]{40}\|$", row) for row in rows), rows
    logs_part = order_part.partition("logs with this trace_id")[2]
    assert "order_created  (process_order)" in logs_part
    assert "http_request   (POST /orders)" in logs_part
    # the same order in the JSON log above, with the same trace id
    created = [r for r in records if r.get("event") == "order_created"
               and r.get("trace_id") == trace_id]
    assert len(created) == 1
    metrics_part_2 = order_part.partition("metrics whose exemplar points at this trace")[2]
    assert re.search(r'^  orders_total\{status="pending"\} \d+\.0 +\(process_order\)$',
                     metrics_part_2, re.M), metrics_part_2


def test_make_demo_installs_the_library_and_flask_only() -> None:
    """``make demo`` (issue 11) builds its own light environment: no development toolchain."""
    make = require_binary("make")
    # --no-print-directory: under `make test` this make is nested and would print
    # "make[1]: Entering directory" lines around the recipe
    res = subprocess.run([make, "-n", "-B", "--no-print-directory", "demo"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    installs = [line for line in lines if "pip install" in line]
    assert installs, lines
    assert all("-e '.[flask]'" in line and ".venv-demo/" in line for line in installs), installs
    assert lines[-1] == ".venv-demo/bin/python examples/coffee_shop.py --scripted"
