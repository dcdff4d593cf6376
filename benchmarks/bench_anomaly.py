"""Cost of the anomaly detectors: per-point update, and the CPU for 10,000 series at a 15 s step.

    python benchmarks/bench_anomaly.py [--points 40000] [--series 10000] [--step 15]

The seasonal detector is fitted on two days of a daily-seasonal noisy series
at ``--step`` seconds, then timed over the next points, one ``update`` at a
time (what ``anomaly serve`` does); the best of several rounds is kept. The
CPU share of one core for ``--series`` series is ``series / step`` points per
second times the cost per point (target: under 25 %). Memory per series is
measured with tracemalloc after the windows are full. The IsolationForest
detector is timed on batches (``score_many``), its intended use.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mestres_observability.anomaly.seasonal import SeasonalDetector


def series(n: int, step: float, seed: int = 1) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    ts = [1_767_225_600.0 + i * step for i in range(n)]
    xs = [100 + 40 * math.sin(2 * math.pi * (t % 86400) / 86400) + rng.gauss(0, 4) for t in ts]
    return ts, xs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=40_000, help="timed points per round")
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--step", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    warm = int(2 * 86400 / args.step)
    ts, xs = series(warm + args.points, args.step)
    best = math.inf
    for _ in range(args.rounds):
        d = SeasonalDetector().fit(ts[:warm], xs[:warm])
        update = d.update
        start = time.process_time()
        for t, x in zip(ts[warm:], xs[warm:], strict=True):
            update(t, x)
        best = min(best, (time.process_time() - start) / args.points)
    per_second = args.series / args.step
    share = per_second * best
    print(f"seasonal detector: {best * 1e6:.1f} us per point (best of {args.rounds} rounds of "
          f"{args.points})")
    print(f"{args.series} series at a {args.step:g} s step: {per_second:.0f} points/s, "
          f"{share * 100:.1f} % of one core (target < 25 %)")
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    d = SeasonalDetector().fit(ts, xs)  # windows full
    after = tracemalloc.take_snapshot()
    size = sum(s.size_diff for s in after.compare_to(before, "filename"))
    tracemalloc.stop()
    print(f"memory per series: {size / 1024:.0f} KiB ({args.series} series: "
          f"{size * args.series / 2**30:.1f} GiB)")
    try:
        from mestres_observability.anomaly.forest import IsolationForestDetector
    except ImportError as exc:
        print(f"isolation forest: skipped ({exc})")
        return 0
    f = IsolationForestDetector().fit(ts[:warm], xs[:warm])
    batch = 1000
    start = time.process_time()
    for i in range(warm, warm + 10 * batch, batch):
        f.score_many(ts[i:i + batch], xs[i:i + batch])
    per_point = (time.process_time() - start) / (10 * batch)
    print(f"isolation forest: {per_point * 1e6:.1f} us per point in batches of {batch}; one "
          f"update() call: ", end="")
    start = time.process_time()
    for i in range(warm + 10 * batch, warm + 10 * batch + 50):
        f.update(ts[i], xs[i])
    print(f"{(time.process_time() - start) / 50 * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
