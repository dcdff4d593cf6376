"""A seeded generator of a shop's metrics with labelled anomalies (the shop benchmark).

Minute-level series for a few weeks: request rate with a daily and weekly
cycle, orders and units sold per product following it, and the 95th
percentile latency rising with load; then one kind of anomaly injected at
known times:

* ``spike``: a few minutes at two to four times the usual value;
* ``drop``: five to thirty minutes at a tenth to a third of it;
* ``level_shift``: from some minute on, 1.6 or 0.55 times the value;
* ``drift``: a slow rise of up to +60 % over one to two days, then staying there;
* ``dead``: a metric stops being reported (a gap in Prometheus: NaN).

The same seed gives the same data on every machine (numpy's ``default_rng``).
``benchmarks/shop_anomaly.py`` scores the detectors on it; the end-to-end test
backfills it into a real Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._deps import missing

try:
    import numpy as np
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise missing("numpy", "the shop benchmark") from exc

__all__ = ["KINDS", "METRICS", "Event", "Shop", "generate"]

#: Kinds of injected anomalies.
KINDS: tuple[str, ...] = ("spike", "drop", "level_shift", "drift", "dead")
#: The generated series (``products_sold:<id>`` per product).
METRICS: tuple[str, ...] = ("http_requests", "orders", "latency_p95", "products_sold:espresso",
                            "products_sold:latte", "products_sold:croissant")

_DAY = 86400
_START = 1_767_225_600  # 2026-01-01T00:00:00Z, a Thursday


@dataclass(frozen=True)
class Event:
    """One injected anomaly: which metric, what kind, from when to when (Unix seconds)."""

    metric: str
    kind: str
    start: float
    end: float


@dataclass
class Shop:
    """Generated series on one time axis, and the injected events.

    Attributes:
        timestamps: Unix seconds, one per ``step``.
        series: values per metric name (NaN: not reported).
        events: the injected anomalies.
        step: seconds between points.
        history: how many leading points are clean history (no injection).
    """

    timestamps: Any
    series: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    step: int = 60
    history: int = 0

    @property
    def days(self) -> float:
        """Length of the evaluated part (after the history), in days."""
        return (len(self.timestamps) - self.history) * self.step / _DAY


def _clean(rng: Any, t: Any) -> dict[str, Any]:
    day = (t % _DAY) / _DAY
    weekday = ((t // _DAY) + 3) % 7  # 0 = Monday (1 January 2026 is a Thursday)
    daily = np.clip(0.25 + 0.75 * np.exp(-((day - 0.55) ** 2) / 0.03)
                    + 0.35 * np.exp(-((day - 0.33) ** 2) / 0.005), 0.05, None)
    weekly = np.where(weekday >= 5, 0.7, 1.0)
    rate = 40.0 * daily * weekly  # requests per second
    out = {"http_requests": rng.poisson(rate * 60) / 60.0}
    orders = rng.poisson(rate * 60 * 0.02)
    out["orders"] = orders.astype(float)
    for product, share in (("espresso", 0.5), ("latte", 0.3), ("croissant", 0.35)):
        out[f"products_sold:{product}"] = rng.poisson(rate * 60 * 0.02 * share).astype(float)
    out["latency_p95"] = (0.12 + 0.004 * rate) * rng.lognormal(0.0, 0.08, len(t))
    return out


def generate(kind: str | None = None, *, weeks: int = 4, history_weeks: int = 2, seed: int = 7,
             events_per_metric: int = 3, step: int = 60, start: float = _START) -> Shop:
    """The shop's series with anomalies of ``kind`` (``None``: every kind) injected
    after ``history_weeks`` of clean history (none when ``events_per_metric`` is 0;
    level shifts, drifts and dead metrics are injected once per metric).

    Raises:
        ValueError: an unknown kind, or no room after the history.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown anomaly kind {kind!r}; one of {', '.join(KINDS)}")
    if not 0 < history_weeks < weeks:
        raise ValueError("history_weeks must be between 0 and weeks")
    rng = np.random.default_rng(seed)
    first = float(start) - float(start) % step
    t = np.arange(first, first + weeks * 7 * _DAY, step, dtype=float)
    series = _clean(rng, t)
    history = history_weeks * 7 * _DAY // step
    shop = Shop(t, series, [], step, history)
    kinds = () if events_per_metric == 0 else KINDS if kind is None else (kind,)
    span = len(t) - history
    for k in kinds:
        metrics = ["http_requests", "latency_p95"] if k == "dead" else list(METRICS)
        if k == "drift":
            metrics = ["latency_p95", "http_requests"]
        if k == "level_shift":
            metrics = ["http_requests", "orders", "latency_p95"]
        for metric in metrics:
            count = 1 if k in ("dead", "level_shift", "drift") else events_per_metric
            # evenly spread start points, jittered, away from the end
            slots = np.linspace(history + span * 0.05, history + span * 0.8, count + 1)[:count]
            for s in slots:
                i = int(s + rng.integers(0, max(1, int(span * 0.1))))
                _inject(rng, shop, metric, k, i)
    shop.events.sort(key=lambda e: (e.start, e.metric))
    return shop


def _inject(rng: Any, shop: Shop, metric: str, kind: str, i: int) -> None:
    x = shop.series[metric]
    t = shop.timestamps
    n = len(x)
    step = shop.step
    if kind == "spike":
        width = int(rng.integers(1, 6))
        x[i:i + width] *= rng.uniform(2.0, 4.0)
        end = i + width - 1
    elif kind == "drop":
        width = int(rng.integers(5, 31))
        x[i:i + width] *= rng.uniform(0.1, 0.33)
        end = i + width - 1
    elif kind == "level_shift":
        x[i:] *= rng.choice([1.6, 0.55])
        end = n - 1
    elif kind == "drift":
        width = int(rng.integers(_DAY // step, 2 * _DAY // step))
        ramp = np.linspace(0.0, 0.6, min(width, n - i))
        x[i:i + len(ramp)] *= 1.0 + ramp
        x[i + len(ramp):] *= 1.6
        end = i + len(ramp) - 1
    else:  # dead
        x[i:] = np.nan
        end = n - 1
    shop.events.append(Event(metric, kind, float(t[i]), float(t[min(end, n - 1)])))
