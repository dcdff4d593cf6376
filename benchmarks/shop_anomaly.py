"""The shop benchmark: detectors and forecasts on generated shop metrics with labelled anomalies.

    python benchmarks/shop_anomaly.py              # 4 weeks at one point a minute, every kind
    python benchmarks/shop_anomaly.py --weeks 3 --kinds spike,drop --json

For each kind of anomaly (spike, drop, level shift, slow drift, dead metric)
the generator (``mestres_observability.anomaly.shopdata``, seeded) makes the
shop's six series with only that kind injected after two clean weeks. Each
detector is fitted on the clean weeks of each series and then fed the rest in
order. An injected event counts as detected when an anomaly is reported on
its metric between its start and:

* spike, drop: its end plus 15 minutes;
* level shift: 6 hours after its start;
* drift: its end plus one day (the ramp is slow by design);
* dead metric: 30 minutes after its start.

Precision is the share of reported anomalies that fall in such a window,
recall the share of events detected, F1 their harmonic mean; time to detect is
from an event's start to its first anomaly; false positives per day count the
other anomalies over the evaluated days (all six series together).

Then the forecasts: demand per product and load (request rate), summed to 15
minutes, 4 hours (16 steps) ahead from rolling origins over the evaluated
weeks: MASE and error against seasonal naive and the seed's polynomial regression.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mestres_observability.anomaly import forecast, shopdata
from mestres_observability.anomaly.detector import Detector
from mestres_observability.anomaly.forest import IsolationForestDetector
from mestres_observability.anomaly.seasonal import SeasonalDetector, SeasonalParams

MATCH_AFTER = {"spike": 900.0, "drop": 900.0, "level_shift": 6 * 3600.0, "drift": 86400.0,
               "dead": 1800.0}
DETECTORS = ("seasonal", "isolation-forest")


#: One point a minute: an alarm bar of one point in 100,000 per series (one chance alarm
#: in about ten weeks), ranked against two weeks of z-scores; a bar that low is only
#: reached beyond everything ranked, where the fitted tail gives the p-value. A cool-down
#: ends after half an hour of unremarkable points (``quiet``: ``rank_delay``, the longest
#: injected episode), not after the three hours of ``cooldown``; a level shift keeps it.
#: The sustained component scans 3, 10 and 30 points (``scales``): spikes of a few
#: minutes, drops of up to half an hour.
MINUTE_LEVEL = SeasonalParams(alpha=1e-5, rank_window=20000, quiet=30, scales=(3, 30))


def make(name: str) -> Detector:
    """The detector for minute-level data (the IsolationForest with its defaults)."""
    return SeasonalDetector(MINUTE_LEVEL) if name == "seasonal" else IsolationForestDetector()


def match_window(e: shopdata.Event) -> tuple[float, float]:
    """When an anomaly on the event's metric counts as detecting it."""
    if e.kind in ("level_shift", "dead"):
        return e.start, e.start + MATCH_AFTER[e.kind]
    return e.start, e.end + MATCH_AFTER[e.kind]


def detect_kind(kind: str, detector: str, weeks: int, seed: int) -> dict[str, Any]:
    """Precision, recall, F1, time to detect and false positives per day for one kind."""
    shop = shopdata.generate(kind, weeks=weeks, seed=seed)
    h = shop.history
    reported: list[tuple[str, float]] = []
    cpu = time.process_time()
    for metric, values in shop.series.items():
        d = make(detector)
        d.fit(shop.timestamps[:h].tolist(), values[:h].tolist())
        verdicts = d.score_many(shop.timestamps[h:].tolist(), values[h:].tolist())
        reported += [(metric, float(t)) for t, v in zip(shop.timestamps[h:], verdicts, strict=True)
                     if v.is_anomaly]
    cpu = time.process_time() - cpu
    true_positive = 0
    delays: list[float] = []
    detected = 0
    matched: set[int] = set()
    for e in shop.events:
        lo, hi = match_window(e)
        hits = [i for i, (m, t) in enumerate(reported) if m == e.metric and lo <= t <= hi]
        matched.update(hits)
        if hits:
            detected += 1
            delays.append(min(reported[i][1] for i in hits) - e.start)
    true_positive = len(matched)
    precision = true_positive / len(reported) if reported else 1.0
    recall = detected / len(shop.events) if shop.events else math.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "kind": kind, "detector": detector, "events": len(shop.events), "detected": detected,
        "anomalies": len(reported), "precision": precision, "recall": recall, "f1": f1,
        "mean_time_to_detect_s": sum(delays) / len(delays) if delays else math.nan,
        "false_positives_per_day": (len(reported) - true_positive) / shop.days,
        "cpu_s": cpu,
    }


def forecast_shop(weeks: int, seed: int, every: int) -> dict[str, dict[str, dict[str, float]]]:
    """Forecast errors for load and each product's demand (15-minute sums, 4 hours ahead)."""
    shop = shopdata.generate(None, weeks=weeks, seed=seed, events_per_metric=0)
    out: dict[str, dict[str, dict[str, float]]] = {}
    group = 15
    n = len(shop.timestamps) // group
    t15 = shop.timestamps[: n * group: group].tolist()
    for metric in ("http_requests", "products_sold:espresso", "products_sold:latte",
                   "products_sold:croissant"):
        y = shop.series[metric][: n * group].reshape(n, group).sum(axis=1).tolist()
        out[metric] = forecast.evaluate(t15, y, step=900.0, start=shop.history // group,
                                        horizon=16, every=every)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weeks", type=int, default=4, help="weeks generated (2 are history)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--kinds", default=",".join(shopdata.KINDS),
                    help="kinds of anomaly, comma-separated ('none': forecasts only)")
    ap.add_argument("--detectors", default=",".join(DETECTORS))
    ap.add_argument("--forecast-every", type=int, default=12,
                    help="15-minute steps between forecast origins (0: no forecasts)")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args(argv)
    started = time.monotonic()
    rows = [detect_kind(k, d, args.weeks, args.seed)
            for k in args.kinds.split(",") if k not in ("", "none")
            for d in args.detectors.split(",")]
    forecasts = forecast_shop(args.weeks, args.seed, args.forecast_every) if args.forecast_every else {}
    if args.json:
        print(json.dumps({"detection": rows, "forecast": forecasts}, indent=2))
        return 0
    print(f"{'kind':12} {'detector':17} {'events':>6} {'P':>5} {'R':>5} {'F1':>5} "
          f"{'TTD min':>8} {'FP/day':>7}")
    for r in rows:
        print(f"{r['kind']:12} {r['detector']:17} {r['events']:6d} {r['precision']:5.2f} "
              f"{r['recall']:5.2f} {r['f1']:5.2f} {r['mean_time_to_detect_s'] / 60:8.1f} "
              f"{r['false_positives_per_day']:7.2f}")
    if forecasts:
        print("\nforecast, 4 h ahead (15-minute sums): median MASE / total error vs seasonal naive")
        for metric, methods in forecasts.items():
            cells = ", ".join(f"{name} {m['mase']:.2f} / {m['mae_vs_naive']:.2f}"
                              for name, m in methods.items())
            print(f"  {metric:24} {cells}; 80% interval coverage "
                  f"{methods['seasonal']['coverage']:.3f}, width {methods['seasonal']['width']:.3f}")
    print(f"\nwall {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
