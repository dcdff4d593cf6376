"""The streaming seasonal detector: robust baselines, calibrated per series, constant work per point.

For each new point up to five *components* measure how far it is from what
the series' own past says it should be, each as a robust z-score (distance to
a median, in units of the interquartile range / 1.349, the standard deviation
of a normal distribution with that IQR):

* ``level``: the value against the last ``window`` values (a global outlier);
  left out while a seasonal baseline explains the series (its residuals
  spread less than ``seasonal_gain`` times the values do: the daily peak is
  then no anomaly);
* ``change``: the step from the previous value against the last ``window``
  steps (a jump in a smooth series that stays inside its usual range);
* ``daily`` and ``weekly``: the value against the median of the means of the
  same time-of-day (of-week) bucket and its two neighbours over the last
  ``periods`` days (weeks), and that residual against the recent residuals;
  once a bucket has seen 20 residuals, against that time of day's own spread
  (counts are noisier at the peak than at night);
* ``sustained``: the mean of the last ``sustained`` signed deviations (from
  the weekly baseline, else the daily, else the level), times the square root
  of their number: a drop or rise that lasts, each point of it unremarkable
  (with ``scales``, the largest such value over several numbers of points:
  one component, a scan over how long an episode lasts).

A z-score means different things on different series (a heavy-tailed one
reaches 6 every day), so each component's z is turned into an empirical
p-value: the share of the component's last ``rank_window`` z-scores that were
at least as large; beyond every one of them, an exponential tail fitted to the
top 1 % (once 1,000 are kept), so the bar can be lower than one in
``rank_window``. A z-score joins that window ``rank_delay`` points late (one
episode is not ranked against itself), and those of a reported episode never
(an anomaly does not raise the bar for the next one). The sustained component
restarts when a better baseline starts (weekly over daily over level). The
point's p-value is the smallest of the components'
times their number (Bonferroni), and it is an anomaly when that is at most
``alpha`` and the detector is not cooling down from the previous anomaly
(``cooldown`` points: one report per episode, not one per point of it; with
``quiet``, it ends early once that many points in a row were unremarkable). The
default ``alpha`` is ``len(components) / (window + 1)``: an anomaly is a
point further out, on some component, than everything in the baseline window
(once more history has been ranked, the bar is the same share of it).

The score reported for every point is ``log(p) / log(1 / (rank_window + 1))``,
between 0 and 1: 1 means "further out than anything in the history the
detector keeps". Every step is a few binary searches and insertions into
arrays of fixed size, so the work per point is bounded whatever the length of
the series; so is the memory per series (about 450 KiB with the defaults,
mostly the sorted windows of the five components' z-scores). Missing values (NaN: a gap in
Prometheus) update nothing; ``absent_after`` missing points in a row raise
one ``absent`` anomaly.

Parameters were chosen on principle and checked on the Numenta Anomaly
Benchmark, never per series: see ``docs/anomaly.md``.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, insort
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from .detector import Verdict

__all__ = ["COMPONENTS", "SeasonalDetector", "SeasonalParams"]

#: The components, in the order they are reported.
COMPONENTS: tuple[str, ...] = ("level", "change", "daily", "weekly", "sustained")

_DAY = 86400.0
_WEEK = 7 * _DAY
_IQR_TO_SIGMA = 1.349
_STEP_SAMPLES = 20
_SPREAD_WEIGHT = 0.05
_SPREAD_MIN_SEEN = 20
_MIN_HISTORY = 10
_MIN_RANKED = 20
_SOURCES = {"daily": 2, "weekly": 3}
_TAIL_SHARE = 100  # the tail model is fitted to the top 1 % of the ranked z-scores...
_TAIL_MIN_N = 1000  # ...once they hold at least 10
_QUIET_P = 1e-3  # a point is unremarkable (``quiet``) when no component's p-value is below this


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
        min_z: a point is an anomaly only if its component's z-score is at least this.
        seasonal_gain: leave the level component out while a seasonal baseline's
            residuals spread less than this share of the values' spread.
        sustained: deviations the sustained component averages.
        scales: further numbers of deviations the sustained component also
            averages (a scan over episode lengths: ``(3, 30)`` at one point a
            minute); it reports the largest of the scaled means, as one component
            (no further Bonferroni factor); ``()``: ``sustained`` only.
        rank_delay: points a z-score waits before it joins its component's ranked
            window (the points of one episode are not ranked against each other);
            those waiting when an anomaly is reported, and the next ``rank_delay``
            ones, never join (an anomaly does not raise the bar for the next).
        quiet: end a cool-down early once this many points in a row were
            unremarkable (no component's p-value below 0.001, before Bonferroni);
            0: never, the cool-down always lasts ``cooldown`` points. A change that
            lasts (a level shift) stays remarkable and keeps its cool-down; a spike
            that is over releases it, so the next one is reported.
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
    min_z: float = 0.0
    seasonal_gain: float = 0.5
    sustained: int = 10
    scales: tuple[int, ...] = ()
    rank_delay: int = 30
    quiet: int = 0
    components: tuple[str, ...] = COMPONENTS
    daily_buckets: int = 288
    weekly_buckets: int = 336

    def __post_init__(self) -> None:
        for name in ("window", "seasonal_window", "periods", "rank_window", "daily_buckets",
                     "weekly_buckets"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")
        if (self.cooldown < 0 or self.absent_after < 0 or self.sustained < 1 or self.rank_delay < 0
                or self.quiet < 0):
            raise ValueError("cooldown, absent_after, rank_delay and quiet must be >= 0, "
                             "sustained >= 1")
        if self.alpha is not None and not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be between 0 and 1, not {self.alpha!r}")
        try:
            scales = tuple(int(w) for w in self.scales)  # a list from JSON or --param
        except (TypeError, ValueError):
            raise ValueError(f"scales must be whole numbers, not {self.scales!r}") from None
        if any(w < 1 for w in scales):
            raise ValueError(f"scales must be at least 1, not {self.scales!r}")
        object.__setattr__(self, "scales", scales)
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

    def scale(self) -> float:
        """The interquartile range over 1.349 (a normal distribution's standard deviation)."""
        return (self.quantile(0.75) - self.quantile(0.25)) / _IQR_TO_SIGMA

    def z(self, x: float, reference: float) -> float:
        """Signed robust z-score of ``x`` (``reference``: a magnitude for a zero spread)."""
        med = self.quantile(0.5)
        scale = self.scale()
        if scale <= 0.0:
            scale = max(abs(reference) * 1e-3, 1e-6)
        return (x - med) / scale

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
    """Empirical upper-tail p-value of a z-score among the last ``size`` ones.

    A z-score joins the ranked window ``delay`` points after it was scored (so the
    points of one episode are not ranked against each other), and not at all when
    the detector drops it as part of a reported episode (:meth:`forget`).
    """

    __slots__ = ("delay", "pending", "window")

    def __init__(self, size: int, delay: int = 0) -> None:
        self.window = _Window(size)
        self.delay = delay
        self.pending: deque[float] = deque()

    def p(self, z: float) -> float:
        """The p-value of ``z`` against the ranked window (1 while it holds too few)."""
        w = self.window
        n = len(w)
        if n < _MIN_RANKED:
            return 1.0
        a = w.sorted
        # (how many past z-scores are >= z, plus this one) / (n + 1)
        p = (n - bisect_left(a, z) + 1) / (n + 1)
        if n >= _TAIL_MIN_N and z > a[-1]:
            # beyond every ranked z-score: an exponential tail fitted to the top 1 % (peaks
            # over threshold), so a point far beyond everything seen gets a p-value below
            # 1 / (n + 1) instead of the same one as a new maximum by a hair
            tail = n // _TAIL_SHARE
            u = a[n - tail]
            excess = sum(a[n - tail:]) / tail - u
            if excess > 0.0:
                p = min(p, tail / (n + 1) * math.exp(-(z - u) / excess))
        return max(p, 1e-300)

    def push(self, z: float) -> None:
        """Queue ``z`` for the ranked window."""
        self.pending.append(z)
        while len(self.pending) > self.delay:
            self.window.add(self.pending.popleft())

    def forget(self) -> None:
        """Drop the queued z-scores (they belong to a reported episode)."""
        self.pending.clear()

    def state(self) -> dict[str, Any]:
        out = self.window.state()
        out["delay"] = self.delay
        out["pending"] = list(self.pending)
        return out

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> _Rank:
        r = cls(1, int(data.get("delay", 0)))
        r.window = _Window.from_state(data)
        r.pending.extend(float(x) for x in data.get("pending", ()))
        return r


class _Season:
    """Same-time-of-period baseline: per bucket, the mean of each of the last ``periods`` periods."""

    __slots__ = ("buckets", "counts", "epochs", "period", "periods", "residuals", "seen", "signed",
                 "spread", "sums")

    def __init__(self, period: float, buckets: int, periods: int, residual_window: int) -> None:
        self.period = period
        self.buckets = buckets
        self.periods = periods
        self.sums = array("d", [0.0]) * (buckets * periods)
        self.counts = array("d", [0.0]) * (buckets * periods)
        self.epochs = array("q", [-1]) * (buckets * periods)  # which period a slot holds
        self.residuals = _Window(residual_window)
        self.spread = array("d", [0.0]) * buckets  # per bucket: mean |residual|, recent
        self.seen = array("d", [0.0]) * buckets  # residuals seen per bucket
        self.signed = math.nan  # this point's signed z, when there is one

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
        self.signed = math.nan
        if len(near) >= 2 * k:
            near.sort()
            predicted = near[len(near) // 2]
            r = x - predicted
            spread, seen = self.spread, self.seen
            if len(self.residuals) >= _MIN_RANKED:
                z = self.residuals.z(r, predicted)
                local = [spread[(phase + d) % nb] for d in (-1, 0, 1)
                         if seen[(phase + d) % nb] >= _SPREAD_MIN_SEEN]
                if local and z and r:
                    # noise differs with the time of day (counts: more at the peak): once
                    # a bucket has seen enough residuals, scale by its own spread (never
                    # below a quarter of the overall one)
                    overall = abs(r / z)
                    here = 1.2533 * sum(local) / len(local)  # mean |r| -> sigma
                    z *= overall / max(here, 0.25 * overall)
                self.signed = z
                out = abs(z)
            self.residuals.add(r)
            n = seen[phase] = seen[phase] + 1.0
            spread[phase] += max(_SPREAD_WEIGHT, 1.0 / n) * (abs(r) - spread[phase])
        i = phase * k + epoch % k
        if epochs[i] != epoch:
            epochs[i], sums[i], counts[i] = epoch, 0.0, 0.0
        sums[i] += x
        counts[i] += 1.0
        return out

    def state(self) -> dict[str, Any]:
        return {"sums": list(self.sums), "counts": list(self.counts), "epochs": list(self.epochs),
                "spread": list(self.spread), "seen": list(self.seen),
                "residuals": self.residuals.state()}

    def load(self, data: dict[str, Any]) -> None:
        n = len(self.sums)
        if not len(data["sums"]) == len(data["counts"]) == len(data["epochs"]) == n:
            raise ValueError("seasonal state does not match the parameters")
        self.sums = array("d", [float(v) for v in data["sums"]])
        self.counts = array("d", [float(v) for v in data["counts"]])
        self.epochs = array("q", [int(v) for v in data["epochs"]])
        if not len(data["spread"]) == len(data["seen"]) == self.buckets:
            raise ValueError("seasonal state does not match the parameters")
        self.spread = array("d", [float(v) for v in data["spread"]])
        self.seen = array("d", [float(v) for v in data["seen"]])
        self.residuals = _Window.from_state(data["residuals"])


class SeasonalDetector:
    """The streaming seasonal detector (see the module docstring)."""

    kind = "seasonal"

    def __init__(self, params: SeasonalParams | None = None) -> None:
        self.params = p = params or SeasonalParams()
        self._level = _Window(p.window)
        self._change = _Window(p.window)
        self._ranks = {c: _Rank(p.rank_window, p.rank_delay) for c in p.components}
        self._seasons: dict[str, _Season] = {}
        self._previous = math.nan
        self._last_t = math.nan
        self._steps: list[float] = []
        self._step = 0.0
        self._cool = 0
        self._calm = 0  # unremarkable points in a row during a cool-down (``quiet``)
        self._missing = 0
        # the sustained component's windows: `sustained` first, then `scales`
        self._windows = (p.sustained, *(int(w) for w in p.scales if int(w) != p.sustained))
        self._recent: deque[float] = deque(maxlen=max(self._windows))
        self._sums = [0.0] * len(self._windows)
        self._skip = 0  # z-scores still to leave out of the ranks (an episode)
        self._source = 0  # the baseline the sustained component measures from (see update)
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
        signed = math.nan  # the deviation the sustained component averages
        source = 0  # its baseline: 1 level, 2 daily, 3 weekly
        cyclic = self._cyclic()
        if len(self._level) >= _MIN_HISTORY:
            level_z = self._level.z(value, value)
            if not cyclic:
                signed, source = level_z, 1
                if "level" in self._ranks:
                    zs.append(("level", abs(level_z)))
        self._level.add(value)
        if "change" in self._ranks and not math.isnan(self._previous):
            step = value - self._previous
            if len(self._change) >= _MIN_HISTORY:
                zs.append(("change", abs(self._change.z(step, self._previous))))
            self._change.add(step)
        self._previous = value
        if self._step > 0.0:
            for name, season in self._seasons.items():
                z = season.z(timestamp, value)
                if z is not None:
                    zs.append((name, z))
                    # the last season with a baseline (weekly over daily over level)
                    if not math.isnan(season.signed):
                        signed, source = season.signed, _SOURCES[name]
        if source > self._source:
            # a better baseline speaks from now on: deviations from the old one (a daily
            # baseline is far off all weekend) say nothing about the new one's, so the
            # sustained component starts afresh instead of ranking against them
            self._source = source
            self._recent.clear()
            self._sums = [0.0] * len(self._windows)
            if "sustained" in self._ranks:
                self._ranks["sustained"] = _Rank(p.rank_window, p.rank_delay)
        if "sustained" in self._ranks and source and source == self._source:
            recent, sums = self._recent, self._sums
            n = len(recent)
            for k, w in enumerate(self._windows):
                if n >= w:
                    sums[k] -= recent[n - w]  # the deviation leaving this window
                sums[k] += signed
            recent.append(signed)
            n += 1
            if n >= self._windows[0]:
                zs.append(("sustained", max(abs(sums[k]) / math.sqrt(w)
                                            for k, w in enumerate(self._windows) if n >= w)))
        best_p, best, best_z = 1.0, "", 0.0
        ranks = self._ranks
        for name, z in zs:
            pz = ranks[name].p(z)
            if pz < best_p or (pz == best_p and z > best_z):
                best_p, best, best_z = pz, name, z
        if best_z < p.min_z:
            best_p = 1.0
        raw_p = best_p  # the smallest component p-value, before Bonferroni
        best_p = min(1.0, best_p * len(ranks))
        score = min(1.0, math.log(best_p) / self._floor) if best_p < 1.0 else 0.0
        if self._skip > 0:
            self._skip -= 1
        else:
            for name, z in zs:
                ranks[name].push(z)
        if self._cool > 0:
            self._cool -= 1
            if p.quiet:
                # the episode is over once `quiet` points in a row were unremarkable
                self._calm = self._calm + 1 if raw_p > _QUIET_P else 0
                if self._calm >= p.quiet:
                    self._cool = 0
            return Verdict(score, False, best, True)
        if best_p <= self._alpha:
            self._cool = p.cooldown
            self._calm = 0
            # the episode's z-scores (those queued, and the next `rank_delay` ones) are
            # not ranked: an anomaly does not raise the bar for the next one; a change
            # that lasts is learned after that, as before
            for name, _z in zs:
                ranks[name].forget()
            self._skip = p.rank_delay
            return Verdict(score, True, best)
        return Verdict(score, False, best)

    def _cyclic(self) -> bool:
        """Whether a seasonal baseline explains the series: its residuals spread less
        than ``seasonal_gain`` times the values do (the level component is then left
        out: the usual peaks of the cycle are not anomalies)."""
        if not self._seasons or len(self._level) < _MIN_HISTORY:
            return False
        level = self._level.scale()
        for season in self._seasons.values():
            r = season.residuals
            if len(r) >= _MIN_RANKED and r.scale() < self.params.seasonal_gain * level:
                return True
        return False

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
        params["scales"] = list(self.params.scales)
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
            "calm": self._calm,
            "missing": self._missing,
            "recent": list(self._recent),
            "sustained_sums": list(self._sums),
            "sustained_source": self._source,
            "rank_skip": self._skip,
        }

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> SeasonalDetector:
        """The detector :meth:`state` describes."""
        raw = dict(data["params"])
        raw["components"] = tuple(raw["components"])
        raw["scales"] = tuple(raw.get("scales", ()))
        d = cls(SeasonalParams(**raw))
        d.load_state(data)
        return d

    def load_state(self, data: dict[str, Any]) -> None:
        """Take the learned state of :meth:`state` (written with the same parameters)."""
        self._level = _Window.from_state(data["level"])
        self._change = _Window.from_state(data["change"])
        if set(data["ranks"]) != set(self._ranks):
            raise ValueError("model state does not match its components")
        self._ranks = {k: _Rank.from_state(v) for k, v in data["ranks"].items()}
        for rank in self._ranks.values():
            rank.delay = self.params.rank_delay  # a file written before rank_delay: 0 there
        self._steps = [float(x) for x in data["steps"]]
        self._step = float(data["step"])
        if self._step > 0.0:
            self._make_seasons()
            for k, v in data["seasons"].items():
                self._seasons[k].load(v)
        self._previous = math.nan if data["previous"] is None else float(data["previous"])
        self._last_t = math.nan if data["last_t"] is None else float(data["last_t"])
        self._cool = int(data["cooldown_left"])
        self._calm = int(data.get("calm", 0))
        self._missing = int(data["missing"])
        self._recent.extend(float(x) for x in data["recent"])
        kept = list(self._recent)
        sums = data.get("sustained_sums")  # the running sums, so a loaded model continues exactly
        if sums is not None and len(sums) == len(self._windows):
            self._sums = [float(x) for x in sums]
        else:
            self._sums = [sum(kept[-w:]) for w in self._windows]
        self._source = int(data.get("sustained_source", 0))
        self._skip = int(data.get("rank_skip", 0))
