"""The seed's IsolationForest detector, done correctly (numpy and scikit-learn: the ``anomaly`` extra).

The seed's ``AnomalyDetector`` turned gaps into zeros, divided by zero in its
percent change, re-fitted its scaler on the data it was scoring and flagged a
fixed 10 % of every batch (``contamination=0.1``). Here:

* features are computed from each point and the ``window`` points before it
  only (value, deviation from the rolling mean in rolling standard deviations,
  rolling mean and standard deviation, first difference, and the time of day
  and of week as sine/cosine pairs); a point whose window holds a gap gets no
  score (NaN), never a made-up zero;
* the scaler (median and interquartile range per feature) and the forest are
  fitted on history only (:meth:`IsolationForestDetector.fit`), with a fixed
  seed;
* a new point's forest score is ranked among the history's scores: an
  empirical p-value, so the share of points flagged follows ``alpha``, not a
  contamination guess; an anomaly starts a ``cooldown`` like the seasonal
  detector's.

The model file stores the parameters and the (scaled) training features, and
the forest is fitted again with the same seed on load: nothing is unpickled.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ._deps import missing
from .detector import Verdict

try:
    import numpy as np
    from sklearn.ensemble import IsolationForest
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise missing("numpy and scikit-learn", "the IsolationForest detector") from exc

__all__ = ["FEATURES", "ForestParams", "IsolationForestDetector", "features"]

#: Feature names, in column order.
FEATURES: tuple[str, ...] = ("value", "rolling_z", "rolling_mean", "rolling_std", "diff",
                             "day_sin", "day_cos", "week_sin", "week_cos")

_DAY = 86400.0
_WEEK = 7 * _DAY
_MAX_TRAINING_ROWS = 20000


@dataclass(frozen=True)
class ForestParams:
    """Parameters of :class:`IsolationForestDetector`.

    Attributes:
        window: points before each point that its rolling features use.
        n_estimators: trees in the forest.
        max_samples: points each tree is grown on.
        seed: the random seed (fitting is reproducible, also on load).
        alpha: the p-value (share of history scoring as high) at or below which
            a point is an anomaly; ``None``: ``1 / (training rows + 1)``, a
            point more isolated than every point of the history.
        cooldown: points after an anomaly during which no other is reported.
        seasonal_features: include the time-of-day and time-of-week features.
    """

    window: int = 10
    n_estimators: int = 100
    max_samples: int = 256
    seed: int = 42
    alpha: float | None = None
    cooldown: int = 187
    seasonal_features: bool = True

    def __post_init__(self) -> None:
        if self.window < 2 or self.n_estimators < 1 or self.max_samples < 2:
            raise ValueError("window >= 2, n_estimators >= 1 and max_samples >= 2 are needed")
        if self.alpha is not None and not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be between 0 and 1, not {self.alpha!r}")
        if self.cooldown < 0:
            raise ValueError("cooldown must be >= 0")

    @classmethod
    def for_history(cls, points: int, **overrides: Any) -> ForestParams:
        """Parameters for a series whose first ``points`` records are history (NAB's
        probation period): ``cooldown = points // 4`` as for the seasonal detector."""
        base: dict[str, Any] = {"cooldown": max(points // 4, 1)}
        base.update(overrides)
        return cls(**base)


def features(timestamps: Sequence[float], values: Sequence[float], window: int,
             seasonal: bool = True) -> Any:
    """The feature matrix (one row per point, :data:`FEATURES` columns; without the
    four seasonal ones when ``seasonal`` is false). Each row uses that point and
    the ``window`` points before it; rows whose window is incomplete or holds a
    gap (NaN) are NaN."""
    x = np.asarray(values, dtype=float)
    t = np.asarray(timestamps, dtype=float)
    n = len(x)
    out = np.full((n, 9 if seasonal else 5), np.nan)
    if n > window:
        # windows of the `window` points before each point (sliding, no copy)
        past = np.lib.stride_tricks.sliding_window_view(x, window)[:-1]  # row i: x[i:i+w]
        mean = past.mean(axis=1)
        std = past.std(axis=1)
        cur = x[window:]
        scale = np.where(std > 0.0, std, np.maximum(np.abs(mean) * 1e-3, 1e-6))
        out[window:, 0] = cur
        out[window:, 1] = (cur - mean) / scale
        out[window:, 2] = mean
        out[window:, 3] = std
        out[window:, 4] = cur - x[window - 1:-1]
    if seasonal:
        out[:, 5] = np.sin(2 * np.pi * (t % _DAY) / _DAY)
        out[:, 6] = np.cos(2 * np.pi * (t % _DAY) / _DAY)
        out[:, 7] = np.sin(2 * np.pi * (t % _WEEK) / _WEEK)
        out[:, 8] = np.cos(2 * np.pi * (t % _WEEK) / _WEEK)
    bad = np.isnan(out[:, :5]).any(axis=1)
    out[bad] = np.nan
    return out


class IsolationForestDetector:
    """Rolling features, robust scaling and an IsolationForest fitted on history only."""

    kind = "isolation-forest"

    def __init__(self, params: ForestParams | None = None) -> None:
        self.params = params or ForestParams()
        self._center: Any = None
        self._scale: Any = None
        self._train: Any = None  # scaled training rows
        self._train_scores: Any = None  # sorted
        self._forest: Any = None
        self._recent_t: deque[float] = deque(maxlen=self.params.window + 1)
        self._recent_x: deque[float] = deque(maxlen=self.params.window + 1)
        self._cool = 0

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has been called with enough history."""
        return self._forest is not None

    def fit(self, timestamps: Sequence[float], values: Sequence[float]) -> IsolationForestDetector:
        """Fit the scaler and the forest on history (in time order).

        Raises:
            ValueError: fewer than ``window + 20`` points without gaps.
        """
        p = self.params
        rows = features(timestamps, values, p.window, p.seasonal_features)
        rows = rows[~np.isnan(rows).any(axis=1)]
        if len(rows) < 20:
            raise ValueError(f"the IsolationForest detector needs at least {p.window + 20} "
                             f"points of history without gaps; got {len(rows)} usable rows")
        rows = rows[-_MAX_TRAINING_ROWS:]
        center = np.median(rows, axis=0)
        q75, q25 = np.percentile(rows, [75, 25], axis=0)
        scale = (q75 - q25) / 1.349
        spread = rows.std(axis=0)
        scale = np.where(scale > 0, scale, np.where(spread > 0, spread, 1.0))
        self._center, self._scale = center, scale
        self._fit_scaled((rows - center) / scale)
        for t, x in zip(list(timestamps)[-(p.window + 1):], list(values)[-(p.window + 1):],
                        strict=True):
            self._recent_t.append(float(t))
            self._recent_x.append(float(x))
        self._cool = 0
        return self

    def _fit_scaled(self, scaled: Any) -> None:
        p = self.params
        forest = IsolationForest(n_estimators=p.n_estimators,
                                 max_samples=min(p.max_samples, len(scaled)),
                                 random_state=p.seed)
        forest.fit(scaled)
        self._forest = forest
        self._train = scaled
        self._train_scores = np.sort(-forest.score_samples(scaled))  # higher: more isolated

    def _alpha(self) -> float:
        n = len(self._train_scores)
        return self.params.alpha if self.params.alpha is not None else 1.0 / (n + 1)

    def _p_values(self, rows: Any) -> Any:
        """Upper-tail empirical p-values of the rows' forest scores among the history's."""
        out = np.full(len(rows), np.nan)
        ok = ~np.isnan(rows).any(axis=1)
        if ok.any():
            s = -self._forest.score_samples((rows[ok] - self._center) / self._scale)
            n = len(self._train_scores)
            above = n - np.searchsorted(self._train_scores, s, side="left")
            out[ok] = (above + 1.0) / (n + 1.0)
        return out

    def _verdict(self, p: float) -> Verdict:
        if math.isnan(p):
            return Verdict(math.nan, False, "")
        n = len(self._train_scores)
        score = min(1.0, math.log(p) / math.log(1.0 / (n + 1))) if p < 1.0 else 0.0
        if self._cool > 0:
            self._cool -= 1
            return Verdict(score, False, "forest", True)
        if p <= self._alpha():
            self._cool = self.params.cooldown
            return Verdict(score, True, "forest")
        return Verdict(score, False, "forest")

    def update(self, timestamp: float, value: float) -> Verdict:
        """Score one new point (in time order). Slow per point (one forest call):
        :meth:`score_many` scores a batch at once."""
        return self.score_many([timestamp], [value])[0]

    def score_many(self, timestamps: Sequence[float], values: Sequence[float]) -> list[Verdict]:
        """Score new points (in time order, after the history) in one forest call."""
        if not self.fitted:
            raise RuntimeError("fit the IsolationForest detector on history first")
        p = self.params
        head_t, head_x = list(self._recent_t), list(self._recent_x)
        all_t = head_t + [float(t) for t in timestamps]
        all_x = head_x + [float(x) for x in values]
        rows = features(all_t, all_x, p.window, p.seasonal_features)[len(head_t):]
        pv = self._p_values(rows)
        for t, x in zip(timestamps, values, strict=True):
            self._recent_t.append(float(t))
            self._recent_x.append(float(x))
        return [self._verdict(float(v)) for v in pv]

    # ------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        """Parameters, scaler and training rows (the forest is fitted again on load)."""
        if not self.fitted:
            raise RuntimeError("an unfitted IsolationForest detector has no state to save")
        return {
            "params": asdict(self.params),
            "center": self._center.tolist(),
            "scale": self._scale.tolist(),
            "training_rows": self._train.tolist(),
            "recent_t": list(self._recent_t),
            "recent_x": [None if math.isnan(x) else x for x in self._recent_x],
            "cooldown_left": self._cool,
        }

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> IsolationForestDetector:
        """The detector :meth:`state` describes (the forest refitted with its seed)."""
        d = cls(ForestParams(**data["params"]))
        d.load_state(data)
        return d

    def load_state(self, data: dict[str, Any]) -> None:
        """Take the scaler, training rows and recent points of :meth:`state` (same parameters)."""
        self._center = np.asarray(data["center"], dtype=float)
        self._scale = np.asarray(data["scale"], dtype=float)
        rows = np.asarray(data["training_rows"], dtype=float)
        width = 9 if self.params.seasonal_features else 5
        if rows.ndim != 2 or rows.shape[1] != width or self._center.shape != (width,):
            raise ValueError("the model's training rows do not match its parameters")
        self._fit_scaled(rows)
        self._recent_t.extend(float(t) for t in data["recent_t"])
        self._recent_x.extend(math.nan if x is None else float(x) for x in data["recent_x"])
        self._cool = int(data["cooldown_left"])
