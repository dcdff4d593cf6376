"""Forecast error on NAB's ``realKnownCause/nyc_taxi.csv`` (taxi passengers per 30 minutes).

    python benchmarks/forecast_taxi.py --data ../shared/nab/data/realKnownCause/nyc_taxi.csv

From rolling origins over the second half of the series, each method is
fitted on everything before the origin and forecasts the next 4 hours (8
steps): the seasonal forecaster, seasonal naive (the value a week before) and
the seed's polynomial regression. Prints the median MASE (scaled by the
in-sample error of seasonal naive: below 1 beats it), the total absolute error
against seasonal naive's on the same steps, the sMAPE and the coverage of the
80 % interval.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mestres_observability.anomaly import forecast, nab


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="nyc_taxi.csv")
    ap.add_argument("--horizon", type=int, default=8, help="steps ahead (30 minutes each)")
    ap.add_argument("--every", type=int, default=25, help="steps between forecast origins")
    args = ap.parse_args(argv)
    timestamps, values = nab.read_series(args.data)
    t = [x.timestamp() for x in timestamps]
    result = forecast.evaluate(t, values, step=1800.0, start=len(values) // 2,
                               horizon=args.horizon, every=args.every)
    for name, m in result.items():
        extra = (f", 80% interval coverage {m['coverage']:.3f}, width {m['width']:.3f}"
                 if "coverage" in m else "")
        print(f"{name}: MASE {m['mase']:.3f}, error vs seasonal naive {m['mae_vs_naive']:.3f}, "
              f"sMAPE {m['smape']:.1f}%{extra} ({int(m['origins'])} origins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
