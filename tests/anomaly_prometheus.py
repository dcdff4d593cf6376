"""A real Prometheus holding the shop benchmark: backfilled with promtool, started on loopback."""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests._support import free_port, require_binary, wait_until

#: exported names of the shop's series (products as one family with a label)
FAMILIES = {
    "http_requests": ("shop_requests_per_second", ""),
    "orders": ("shop_orders_per_minute", ""),
    "products_sold:espresso": ("shop_products_sold_per_minute", 'product_id="espresso"'),
    "products_sold:latte": ("shop_products_sold_per_minute", 'product_id="latte"'),
}


def openmetrics(shop: Any, gap: tuple[float, float] | None = None) -> str:
    """The shop's series as OpenMetrics text (gauges; NaN and ``gap`` left out)."""
    lines: list[str] = []
    by_family: dict[str, list[str]] = {}
    for metric, (family, _labels) in FAMILIES.items():
        by_family.setdefault(family, []).append(metric)
    for family, metrics in by_family.items():
        lines.append(f"# TYPE {family} gauge")
        for metric in metrics:
            labels = FAMILIES[metric][1]
            sel = f"{family}{{{labels}}}" if labels else family
            for t, v in zip(shop.timestamps, shop.series[metric], strict=True):
                if math.isnan(v) or (gap and metric == "orders" and gap[0] <= t < gap[1]):
                    continue
                lines.append(f"{sel} {v:.6g} {int(t)}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@dataclass
class BackfilledPrometheus:
    """A running Prometheus whose TSDB holds the given OpenMetrics samples."""

    url: str
    process: subprocess.Popen[bytes]
    directory: Path


@contextlib.contextmanager
def backfilled_prometheus(text: str) -> Iterator[BackfilledPrometheus]:
    """Backfill ``text`` with ``promtool tsdb create-blocks-from openmetrics`` and start
    ``prometheus`` on it, with a retention long enough to keep the old blocks."""
    promtool = require_binary("promtool")
    prometheus = require_binary("prometheus")
    root = Path(tempfile.mkdtemp(prefix="anomaly-prom-"))
    try:
        (root / "input.om").write_text(text, encoding="utf-8")
        data = root / "data"
        data.mkdir()
        subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics",
                        str(root / "input.om"), str(data)], check=True, capture_output=True,
                       timeout=300)
        (root / "prometheus.yml").write_text("global:\n  scrape_interval: 1m\nscrape_configs: []\n",
                                             encoding="utf-8")
        port = free_port()
        log = (root / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [prometheus, f"--config.file={root / 'prometheus.yml'}",
             f"--storage.tsdb.path={data}", "--storage.tsdb.retention.time=100y",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            with urllib.request.urlopen(url + "/-/ready", timeout=2) as r:
                return bool(r.status == 200)

        try:
            wait_until(ready, timeout=60, message="prometheus ready")
            yield BackfilledPrometheus(url, proc, root)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            log.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def now_aligned(days_back: float) -> float:
    """Midnight UTC ``days_back`` days before today (data ending before now)."""
    today = time.time() // 86400 * 86400
    return today - days_back * 86400
