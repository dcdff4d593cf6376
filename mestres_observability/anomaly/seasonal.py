"""The streaming seasonal detector: robust baselines, calibrated per series, constant work per point.

For each new point four *components* measure how far it is from what the
series' own past says it should be, each as a robust z-score (distance to a
median, in units of the interquartile range / 1.349, the standard deviation
of a normal distribution with that IQR):

* ``level``: the value against the last ``window`` values (a global outlier);
* ``change``: the step from the previous value against the last ``window``
  steps (a jump in a smooth series that stays inside its usual range);
* ``daily`` and ``weekly``: the value against the median of the means of the
  same time-of-day (of-week) bucket and its two neighbours over the last
  ``periods`` days (weeks), and that residual against its own recent
  distribution (a drop at a time of day when traffic is usually high).

A z-score means different things on different series (a heavy-tailed one
reaches 6 every day), so each component's z is turned into an empirical
p-value: the share of the component's last ``rank_window`` z-scores that were
at least as large. The point's p-value is the smallest of the components'
times their number (Bonferroni), and it is an anomaly when that is at most
``alpha`` and the detector is not cooling down from the previous anomaly
(``cooldown`` points: one report per episode, not one per point of it). The
default ``alpha`` is ``len(components) / (window + 1)``: an anomaly is a
point further out, on some component, than everything in the baseline window
(once more history has been ranked, the bar is the same share of it).

The score reported for every point is ``log(p) / log(1 / (rank_window + 1))``,
between 0 and 1: 1 means "further out than anything in the history the
detector keeps". Every step is a few binary searches and insertions into
arrays of fixed size, so the work per point is bounded whatever the length of
the series; the memory per series is fixed by the parameters (about 130 KB
with the defaults). Missing values (NaN: a gap in Prometheus) update nothing;
``absent_after`` missing points in a row raise one ``absent`` anomaly.

Parameters were chosen on principle and checked on the Numenta Anomaly
Benchmark, never per series: see ``docs/anomaly.md``.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, insort
from dataclasses import asdict, dataclass
from typing import Any

from .detector import Verdict

__all__ = ["COMPONENTS", "SeasonalDetector", "SeasonalParams"]

#: The components, in the order they are reported.
COMPONENTS: tuple[str, ...] = ("level", "change", "daily", "weekly")

_DAY = 86400.0
_WEEK = 7 * _DAY
_IQR_TO_SIGMA = 1.349
_STEP_SAMPLES = 20
_MIN_HISTORY = 10
_MIN_RANKED = 20


@dataclass(frozen=True)
class SeasonalParams:
    """The parameters of :class:`SeasonalDetector` (one set for every series).

    Attributes:
        window: values (and steps) the level and change baselines keep.
        seasonal_window: seasonal residuals kept to scale the daily and weekly components.
        periods: days (weeks) whose same-time values form the seasonal baselines.
        rank_window: z-scores kept per component to calibrate it into a p-value.
        alpha: the p-value at or below which a point is an anomaly; ``None``:
            ``len(components) / (window + 1)``.
        cooldown: points after an anomaly during which no other is reported.
        absent_after: missing points in a row that make an ``absent`` anomaly (0: never).
        components: the components used (a subset of :data:`COMPONENTS`).
        daily_buckets: buckets per day of the daily baseline (5 minutes each by default).
        weekly_buckets: buckets per week of the weekly baseline (30 minutes each by default).
    """

    window: int = 750
    seasonal_window: int = 2000
    periods: int = 3
    rank_window: int = 5000
    alpha: float | None = None
    cooldown: int = 187
    absent_after: int = 10
    components: tuple[str, ...] = COMPONENTS
    daily_buckets: int = 288
    weekly_buckets: int = 336

    def __post_init__(self) -> None:
        for name in ("window", "seasonal_window", "periods", "rank_window", "daily_buckets",
                     "weekly_buckets"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")
        if self.cooldown < 0 or self.absent_after < 0:
            raise ValueError("cooldown and absent_after must be >= 0")
        if self.alpha is not None and not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be between 0 and 1, not {self.alpha!r}")
        unknown = set(self.components) - set(COMPONENTS)
        if unknown or not self.components:
            raise ValueError(f"components must be a non-empty subset of {COMPONENTS}, "
                             f"not {self.components!r}")

    @property
    def threshold(self) -> float:
        """The p-value at or below which a point is an anomaly (``alpha`` or its default)."""
        return self.alpha if self.alpha is not None else len(self.components) / (self.window + 1)

    @classmethod
    def for_history(cls, points: int, **overrides: Any) -> SeasonalParams:
        """Parameters for a series whose first ``points`` records are history only
        (NAB's probation period): ``window = points``, ``cooldown = points // 4``."""
        base: dict[str, Any] = {"window": max(points, _MIN_HISTORY * 5),
                                "cooldown": max(points // 4, 1)}
        base.update(overrides)
        return cls(**base)


class _Window:
    """The last ``size`` values, in arrival order and sorted (robust location and scale)."""

    __slots__ = ("pos", "ring", "size", "sorted")

    def __init__(self, size: int) -> None:
        self.size = size
        self.ring = array("d")
        self.sorted = array("d")
        self.pos = 0

    def __len__(self) -> int:
        return len(self.ring)

    def add(self, x: float) -> None:
        if len(self.ring) < self.size:
            self.ring.append(x)
        else:
            old = self.ring[self.pos]
            self.ring[self.pos] = x
            self.pos = (self.pos + 1) % self.size
            del self.sorted[bisect_left(self.sorted, old)]
        insort(self.sorted, x)

    def quantile(self, q: float) -> float:
        a = self.sorted
        k = q * (len(a) - 1)
        i = int(k)
        if i + 1 >= len(a):
            return a[-1]
        f = k - i
        return a[i] * (1.0 - f) + a[i + 1] * f

    def z(self, x: float, reference: float) -> float:
        """Robust z-score of ``x`` (``reference``: a magnitude for a zero spread)."""
        med = self.quantile(0.5)
        scale = (self.quantile(0.75) - self.quantile(0.25)) / _IQR_TO_SIGMA
        if scale <= 0.0:
            scale = max(abs(reference) * 1e-3, 1e-6)
        return abs(x - med) / scale

    def state(self) -> dict[str, Any]:
        ordered = list(self.ring[self.pos:]) + list(self.ring[:self.pos])
        return {"size": self.size, "values": ordered}

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> _Window:
        w = cls(int(data["size"]))
        for x in data["values"]:
            w.add(float(x))
        return w


class _Rank:
    """Empirical upper-tail p-value of a z-score among the last ``size`` ones."""

    __slots__ = ("window",)

    def __init__(self, size: int) -> None:
        self.window = _Window(size)

    def p(self, z: float) -> float:
        w = self.window
        n = len(w)
        # (how many past z-scores are >= z, plus this one) / (n + 1)
        p = (n - bisect_left(w.sorted, z) + 1) / (n + 1) if n >= _MIN_RANKED else 1.0
        w.add(z)
        return p

    def state(self) -> dict[str, Any]:
        return self.window.state()

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> _Rank:
        r = cls(1)
        r.window = _Window.from_state(data)
        return r


class _Season:
    """Same-time-of-period baseline: per bucket, the mean of each of the last ``periods`` periods."""

    __slots__ = ("buckets", "counts", "epochs", "period", "periods", "residuals", "sums")

    def __init__(self, period: float, buckets: int, periods: int, residual_window: int) -> None:
        self.period = period
        self.buckets = buckets
        self.periods = periods
        self.sums = array("d", [0.0]) * (buckets * periods)
        self.counts = array("d", [0.0]) * (buckets * periods)
        self.epochs = array("q", [-1]) * (buckets * periods)  # which period a slot holds
        self.residuals = _Window(residual_window)

    def z(self, t: float, x: float) -> float | None:
        nb, k = self.buckets, self.periods
        epoch = int(t // self.period)
        phase = int((t - epoch * self.period) / self.period * nb) % nb
        sums, counts, epochs = self.sums, self.counts, self.epochs
        near: list[float] = []
        for d in (-1, 0, 1):
            base = ((phase + d) % nb) * k
            for i in range(base, base + k):
                # a slot counts while it holds one of the last `periods` periods
                if counts[i] > 0.0 and epoch - k < epochs[i] <= epoch:
                    near.append(sums[i] / counts[i])
        out = None
        if len(near) >= 2 * k:
            near.sort()
            predicted = near[len(near) // 2]
            r = x - predicted
            if len(self.residuals) >= _MIN_RANKED:
                out = self.residuals.z(r, predicted)
            self.residuals.add(r)
        i = phase * k + epoch % k
        if epochs[i] != epoch:
            epochs[i], sums[i], counts[i] = epoch, 0.0, 0.0
        sums[i] += x
        counts[i] += 1.0
        return out

    def state(self) -> dict[str, Any]:
        return {"sums": list(self.sums), "counts": list(self.counts), "epochs": list(self.epochs),
                "residuals": self.residuals.state()}

    def load(self, data: dict[str, Any]) -> None:
        n = len(self.sums)
        if not len(data["sums"]) == len(data["counts"]) == len(data["epochs"]) == n:
            raise ValueError("seasonal state does not match the parameters")
        self.sums = array("d", [float(v) for v in data["sums"]])
        self.counts = array("d", [float(v) for v in data["counts"]])
        self.epochs = array("q", [int(v) for v in data["epochs"]])
        self.residuals = _Window.from_state(data["residuals"])


class SeasonalDetector:
    """The streaming seasonal detector (see the module docstring)."""

    kind = "seasonal"

    def __init__(self, params: SeasonalParams | None = None) -> None:
        self.params = p = params or SeasonalParams()
        self._level = _Window(p.window)
        self._change = _Window(p.window)
        self._ranks = {c: _Rank(p.rank_window) for c in p.components}
        self._seasons: dict[str, _Season] = {}
        self._previous = math.nan
        self._last_t = math.nan
        self._steps: list[float] = []
        self._step = 0.0
        self._cool = 0
        self._missing = 0
        self._floor = math.log(1.0 / (p.rank_window + 1))
        self._alpha = p.threshold

    # ------------------------------------------------------------ interface
    def fit(self, timestamps: Any, values: Any) -> SeasonalDetector:
        """Learn from history (points in time order); nothing is reported for them."""
        for t, x in zip(timestamps, values, strict=True):
            self.update(float(t), float(x))
        self._cool = 0
        return self

    def update(self, timestamp: float, value: float) -> Verdict:
        """Score one new point (in time order) and say whether it is an anomaly."""
        p = self.params
        if math.isnan(value):
            self._missing += 1
            if p.absent_after and self._missing == p.absent_after and not math.isnan(self._previous):
                return Verdict(1.0, True, "absent")
            return Verdict(math.nan, False, "")
        self._missing = 0
        self._learn_step(timestamp)
        zs: list[tuple[str, float]] = []
        if "level" in self._ranks:
            if len(self._level) >= _MIN_HISTORY:
                zs.append(("level", self._level.z(value, value)))
            self._level.add(value)
        if "change" in self._ranks and not math.isnan(self._previous):
            step = value - self._previous
            if len(self._change) >= _MIN_HISTORY:
                zs.append(("change", self._change.z(step, self._previous)))
            self._change.add(step)
        self._previous = value
        if self._step > 0.0:
            for name, season in self._seasons.items():
                z = season.z(timestamp, value)
                if z is not None:
                    zs.append((name, z))
        best_p, best = 1.0, ""
        for name, z in zs:
            pz = self._ranks[name].p(z)
            if pz < best_p:
                best_p, best = pz, name
        best_p = min(1.0, best_p * len(self._ranks))
        score = min(1.0, math.log(best_p) / self._floor) if best_p < 1.0 else 0.0
        if self._cool > 0:
            self._cool -= 1
            return Verdict(score, False, best, True)
        if best_p <= self._alpha:
            self._cool = p.cooldown
            return Verdict(score, True, best)
        return Verdict(score, False, best)

    def score_many(self, timestamps: Any, values: Any) -> list[Verdict]:
        """:meth:`update` with each point in turn."""
        return [self.update(float(t), float(x)) for t, x in zip(timestamps, values, strict=True)]

    @property
    def alert_score(self) -> float:
        """The score at and above which a point is an anomaly (outside a cool-down)."""
        return math.log(self._alpha) / self._floor

    def _learn_step(self, t: float) -> None:
        if self._step == 0.0 and not math.isnan(self._last_t):
            self._steps.append(t - self._last_t)
            if len(self._steps) >= _STEP_SAMPLES:
                ordered = sorted(self._steps)
                self._step = max(ordered[len(ordered) // 2], 1.0)
                self._make_seasons()
        self._last_t = t

    def _make_seasons(self) -> None:
        p = self.params
        for name, period, buckets in (("daily", _DAY, p.daily_buckets),
                                      ("weekly", _WEEK, p.weekly_buckets)):
            if name in self._ranks:
                # no more buckets than points per period
                n = max(1, min(buckets, int(period // self._step)))
                self._seasons[name] = _Season(period, n, p.periods, p.seasonal_window)

    # ------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        """Parameters and learned state, as JSON-compatible data."""
        params = asdict(self.params)
        params["components"] = list(self.params.components)
        return {
            "params": params,
            "level": self._level.state(),
            "change": self._change.state(),
            "ranks": {k: r.state() for k, r in self._ranks.items()},
            "seasons": {k: s.state() for k, s in self._seasons.items()},
            "previous": None if math.isnan(self._previous) else self._previous,
            "last_t": None if math.isnan(self._last_t) else self._last_t,
            "steps": list(self._steps),
            "step": self._step,
            "cooldown_left": self._cool,
            "missing": self._missing,
        }

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> SeasonalDetector:
        """The detector :meth:`state` describes."""
        raw = dict(data["params"])
        raw["components"] = tuple(raw["components"])
        d = cls(SeasonalParams(**raw))
        d._level = _Window.from_state(data["level"])
        d._change = _Window.from_state(data["change"])
        if set(data["ranks"]) != set(d._ranks):
            raise ValueError("model state does not match its components")
        d._ranks = {k: _Rank.from_state(v) for k, v in data["ranks"].items()}
        d._steps = [float(x) for x in data["steps"]]
        d._step = float(data["step"])
        if d._step > 0.0:
            d._make_seasons()
            for k, v in data["seasons"].items():
                d._seasons[k].load(v)
        d._previous = math.nan if data["previous"] is None else float(data["previous"])
        d._last_t = math.nan if data["last_t"] is None else float(data["last_t"])
        d._cool = int(data["cooldown_left"])
        d._missing = int(data["missing"])
        return d
