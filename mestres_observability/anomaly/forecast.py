"""Forecasts a few hours ahead with prediction intervals, never negative (numpy: the ``anomaly`` extra).

:class:`SeasonalForecaster` predicts a point ``h`` steps ahead as the median
of the values one, two, ... ``seasons`` periods before it (a week when the
history covers two weeks, else a day), times the ratio of the last
``recent`` points to what that profile said for them, a ratio that fades with
the horizon (half of it left after ``ratio_half_life`` seconds). The
prediction interval at each horizon is split-conformal: the method is replayed
from rolling origins over the last two seasons of the history (each origin
seeing only the points before it), its errors at that horizon are divided by
``sqrt(forecast + floor)`` (count-like data: the spread grows with the level),
and the bounds are the finite-sample conformal order statistics of those
scores, times the same scale at the forecast.
Forecasts and bounds are clipped at zero: demand and load are never negative.

Baselines (for :func:`evaluate`): :func:`seasonal_naive` (the value one period
before) and :func:`polynomial_regression` (the seed's ``PredictiveAnalytics``:
a degree-2 polynomial of hour, weekday and day of month, fitted by least
squares). :func:`mase` is the mean absolute scaled error (Hyndman & Koehler
2006): the forecast's mean absolute error divided by the in-sample mean
absolute error of the seasonal-naive forecast; below 1, the forecast beats it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._deps import missing

try:
    import numpy as np
    from numpy.typing import ArrayLike
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise missing("numpy", "forecasting") from exc

__all__ = ["Forecast", "SeasonalForecaster", "evaluate", "mase", "polynomial_regression",
           "season_length", "seasonal_naive"]

_DAY = 86400.0
_WEEK = 7 * _DAY


@dataclass(frozen=True)
class Forecast:
    """Predictions for the ``horizon`` steps after the history.

    Attributes:
        timestamps: Unix seconds of each predicted step.
        mean: the point forecast.
        lower: lower bound of the prediction interval.
        upper: upper bound.
        coverage: the interval's nominal coverage (0.8: 80 %).
    """

    timestamps: list[float]
    mean: list[float]
    lower: list[float]
    upper: list[float]
    coverage: float


def season_length(step: float, history_seconds: float) -> int:
    """Points per season: a week when the history spans two, else a day."""
    period = _WEEK if history_seconds >= 2 * _WEEK else _DAY
    return max(1, round(period / step))


class SeasonalForecaster:
    """Seasonal-profile forecaster with a fading level ratio and empirical intervals."""

    def __init__(self, *, step: float, seasons: int = 4, recent: int | None = None,
                 coverage: float = 0.8, ratio_half_life: float = 6 * 3600.0,
                 max_horizon: int = 48, calibration_seasons: int = 2, max_origins: int = 250,
                 interval_scale: str = "sqrt") -> None:
        if step <= 0 or seasons < 1 or not 0.0 < coverage < 1.0 or max_horizon < 1:
            raise ValueError("step > 0, seasons >= 1, 0 < coverage < 1 and max_horizon >= 1")
        if max_origins < 1 or calibration_seasons < 1:
            raise ValueError("max_origins and calibration_seasons must be at least 1, got "
                             f"{max_origins} and {calibration_seasons}")
        if interval_scale not in ("sqrt", "absolute"):
            raise ValueError(f"interval_scale must be 'sqrt' or 'absolute', got {interval_scale!r}")
        self.step = float(step)
        self.seasons = seasons
        self.recent = recent
        self.coverage = coverage
        self.decay = 0.5 ** (self.step / ratio_half_life)
        self.max_horizon = max_horizon
        self.max_origins = max_origins
        self.calibration_seasons = calibration_seasons
        self.interval_scale = interval_scale
        self._floor = 1e-9
        self._y: Any = None
        self._t0 = 0.0
        self._m = 1
        self._errors: Any = None  # (max_horizon, 2) conformal bounds of (y - yhat) / scale

    # ------------------------------------------------------------ fitting
    def fit(self, timestamps: ArrayLike, values: ArrayLike) -> SeasonalForecaster:
        """Learn from a regular history (one point per ``step``; NaN for gaps).

        Raises:
            ValueError: less than two seasons of history.
        """
        y = np.asarray(values, dtype=float)
        t = np.asarray(timestamps, dtype=float)
        if len(y) != len(t) or len(y) < 2:
            raise ValueError("timestamps and values of equal length (at least 2) are needed")
        self._m = season_length(self.step, float(t[-1] - t[0]) + self.step)
        if len(y) < 2 * self._m:
            raise ValueError(f"at least two seasons of history are needed ({2 * self._m} points "
                             f"at this step); got {len(y)}")
        self._y = y
        self._t0 = float(t[0])
        self._errors = self._backtest()
        return self

    def _recent(self) -> int:
        return self.recent if self.recent is not None else max(3, round(3 * 3600 / self.step))

    def _profile(self, y: Any, end: int, horizon: int) -> Any:
        """The seasonal median for positions end .. end+horizon-1 of ``y``, from ``y[:end]``."""
        m = self._m
        pos = np.arange(end, end + horizon)
        rows = []
        for k in range(1, self.seasons + 1):
            idx = pos - k * m
            # a horizon longer than a season looks back whole seasons more
            idx = np.where(idx >= end, idx - m * ((idx - end) // m + 1), idx)
            ok = idx >= 0
            row = np.full(horizon, np.nan)
            row[ok] = y[idx[ok]]
            rows.append(row)
        stack = np.vstack(rows)
        with warnings.catch_warnings():  # a column of gaps only: NaN, said by the result
            warnings.simplefilter("ignore", RuntimeWarning)
            out: Any = np.nanmedian(stack, axis=0)
        return out

    def _point(self, y: Any, end: int, horizon: int) -> Any:
        profile = self._profile(y, end, horizon)
        r = self._recent()
        past_profile = self._profile(y, end - r, r) if end - r >= self._m else None
        ratio = 1.0
        if past_profile is not None:
            actual = y[end - r:end]
            ok = ~np.isnan(actual) & ~np.isnan(past_profile)
            denominator = float(past_profile[ok].sum()) if ok.any() else 0.0
            if denominator > 0.0:
                ratio = min(2.0, max(0.5, float(actual[ok].sum()) / denominator))
        fade = self.decay ** np.arange(1, horizon + 1)
        out = profile * (1.0 + (ratio - 1.0) * fade)
        return np.clip(out, 0.0, None)

    def _scale(self, pred: Any) -> Any:
        """The unit an error is measured in at forecast ``pred``: errors grow with the level.

        ``sqrt(pred + floor)``, the standard deviation of a count with that mean (demand,
        requests), with a floor of 1 % of the history's mean level so quiet hours are
        not given a zero-width interval.
        """
        if self.interval_scale == "absolute":
            return np.ones_like(pred)
        return np.sqrt(np.clip(pred, 0.0, None) + self._floor)

    def _backtest(self) -> Any:
        """Split-conformal interval offsets per horizon, from rolling origins over the history.

        From each origin (at least one season plus ``recent`` points in, up to
        ``max_origins`` of them, evenly spaced over the last ``calibration_seasons``
        seasons, so they visit every time of day), the method is run on
        the history before the origin only and its errors at each horizon, in units
        of :meth:`_scale`, are kept. The bounds are the conformal order statistics
        of those scores, the ``floor((n + 1) * (1 - coverage) / 2)``-th and
        ``ceil((n + 1) * (1 + coverage) / 2)``-th of ``n``, which cover a new
        exchangeable error with at least the nominal probability (plain quantiles of
        a few dozen errors cover less).
        """
        y = self._y
        h = self.max_horizon
        n = len(y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            level = float(np.nanmean(np.abs(y))) if (~np.isnan(y)).any() else 0.0
        self._floor = max(0.01 * level, 1e-9)
        first = min(n - 1, max(self._m + self._recent(), n - self.calibration_seasons * self._m))
        span = n - 1 - first
        stride = max(1, math.ceil(span / self.max_origins))
        scores: list[Any] = []
        for o in range(first, n - 1, stride):
            pred = self._point(y, o, h)
            actual = np.full(h, np.nan)
            seen = y[o:o + h]
            actual[:len(seen)] = seen
            scores.append((actual - pred) / self._scale(pred))
        q = np.zeros((h, 2))
        if not scores:
            return q
        e = np.vstack(scores)
        alpha = (1.0 - self.coverage) / 2.0
        for j in range(h):
            col = np.sort(e[:, j][~np.isnan(e[:, j])])
            k = len(col)
            if k < 5:
                q[j] = q[j - 1] if j else (0.0, 0.0)
                continue
            lo = math.floor((k + 1) * alpha)  # 1-based order statistics
            hi = math.ceil((k + 1) * (1.0 - alpha))
            q[j] = (col[lo - 1] if lo >= 1 else col[0], col[hi - 1] if hi <= k else col[-1])
        return q

    # ------------------------------------------------------------ predicting
    def predict(self, horizon: int) -> Forecast:
        """The next ``horizon`` steps (at most ``max_horizon``) after the history."""
        if self._y is None:
            raise RuntimeError("fit the forecaster first")
        if not 1 <= horizon <= self.max_horizon:
            raise ValueError(f"horizon must be between 1 and {self.max_horizon}")
        y = self._y
        mean = self._point(y, len(y), horizon)
        mean = np.where(np.isnan(mean), 0.0, mean)
        q = self._errors[:horizon]
        unit = self._scale(mean)
        lower = np.clip(mean + q[:, 0] * unit, 0.0, None)
        upper = np.clip(mean + q[:, 1] * unit, 0.0, None)
        upper = np.maximum(upper, mean)
        lower = np.minimum(lower, mean)
        last = self._t0 + (len(y) - 1) * self.step
        ts = [last + (i + 1) * self.step for i in range(horizon)]
        return Forecast(ts, mean.tolist(), lower.tolist(), upper.tolist(), self.coverage)


# ---------------------------------------------------------------- baselines and errors
def seasonal_naive(timestamps: ArrayLike, values: ArrayLike, horizon: int,
                   step: float) -> list[float]:
    """The value one season before each predicted step (a week with two weeks of history)."""
    y = np.asarray(values, dtype=float)
    t = np.asarray(timestamps, dtype=float)
    m = season_length(step, float(t[-1] - t[0]) + step)
    n = len(y)
    out = []
    for h in range(1, horizon + 1):
        i = n + h - 1 - m * math.ceil(h / m)
        out.append(float(y[i]) if 0 <= i < n and not math.isnan(y[i]) else 0.0)
    return out


def polynomial_regression(timestamps: ArrayLike, values: ArrayLike, horizon: int,
                          step: float) -> list[float]:
    """The seed's forecast: least squares on the degree-2 polynomial features of
    (hour, weekday, day of month), clipped at zero (its ``max(0, ...)``)."""
    t = np.asarray(timestamps, dtype=float)
    y = np.asarray(values, dtype=float)

    def design(ts: Any) -> Any:
        hour = (ts % _DAY) // 3600
        weekday = ((ts // _DAY) + 3) % 7
        dom = np.array([_day_of_month(float(x)) for x in ts])
        cols = [np.ones_like(hour), hour, weekday, dom, hour * hour, hour * weekday, hour * dom,
                weekday * weekday, weekday * dom, dom * dom]
        return np.vstack(cols).T

    ok = ~np.isnan(y)
    coef, *_ = np.linalg.lstsq(design(t[ok]), y[ok], rcond=None)
    future = t[-1] + step * np.arange(1, horizon + 1)
    return np.clip(design(future) @ coef, 0.0, None).tolist()  # type: ignore[no-any-return]


def _nanmean(a: Any) -> float:
    """The mean of the non-NaN values, NaN (and no warning) when there are none."""
    a = np.asarray(a, dtype=float)
    ok = ~np.isnan(a)
    return float(a[ok].mean()) if ok.any() else math.nan


def _day_of_month(ts: float) -> int:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).day


def mase(actual: ArrayLike, predicted: ArrayLike, history: ArrayLike,
         m: int) -> float:
    """Mean absolute scaled error: the forecast's MAE over the in-sample MAE of the
    seasonal-naive forecast with season ``m`` (NaN where either is undefined)."""
    a = np.asarray(actual, dtype=float)
    p = np.asarray(predicted, dtype=float)
    h = np.asarray(history, dtype=float)
    scale = _nanmean(np.abs(h[m:] - h[:-m])) if len(h) > m else math.nan
    ok = ~np.isnan(a) & ~np.isnan(p)
    if not ok.any() or not scale or math.isnan(scale):
        return math.nan
    return float(np.mean(np.abs(a[ok] - p[ok])) / scale)


def evaluate(timestamps: ArrayLike, values: ArrayLike, *, step: float, start: int,
             horizon: int, every: int,
             methods: dict[str, Callable[[Any, Any, int], list[float]]] | None = None,
             ) -> dict[str, dict[str, float]]:
    """Rolling-origin evaluation: from each origin ``start, start + every, ...``
    forecast ``horizon`` steps with each method fitted on everything before.

    Returns per method the median MASE over the origins, its total absolute
    error over the seasonal-naive forecast's on the same steps, the sMAPE (%) and,
    for the seasonal forecaster, the share of actual values inside its interval
    (``coverage``) and the interval's mean width over the mean actual value (``width``).
    """
    t = np.asarray(timestamps, dtype=float)
    y = np.asarray(values, dtype=float)

    fitted: dict[int, Forecast] = {}  # one fit per origin serves the MASE and the coverage

    def fit(tt: Any, yy: Any, h: int) -> Forecast:
        if len(yy) not in fitted:
            fitted.clear()
            fitted[len(yy)] = SeasonalForecaster(step=step, max_horizon=h).fit(tt, yy).predict(h)
        return fitted[len(yy)]

    def ours(tt: Any, yy: Any, h: int) -> list[float]:
        return fit(tt, yy, h).mean

    chosen = methods or {
        "seasonal": ours,
        "seasonal_naive": lambda tt, yy, h: seasonal_naive(tt, yy, h, step),
        "polynomial": lambda tt, yy, h: polynomial_regression(tt, yy, h, step),
    }
    scores: dict[str, list[tuple[float, float, float]]] = {k: [] for k in chosen}
    total_abs: dict[str, float] = dict.fromkeys(chosen, 0.0)
    naive_abs = 0.0
    inside: list[float] = []
    width = 0.0
    level = 0.0
    for o in range(start, len(y) - horizon + 1, every):
        tt, yy = t[:o], y[:o]
        actual = y[o:o + horizon]
        m = season_length(step, float(tt[-1] - tt[0]) + step)
        naive = np.asarray(seasonal_naive(tt, yy, horizon, step))
        naive_abs += float(np.nansum(np.abs(actual - naive)))
        for name, fn in chosen.items():
            pred = np.asarray(fn(tt, yy, horizon))
            total_abs[name] += float(np.nansum(np.abs(actual - pred)))
            with np.errstate(all="ignore"):
                smape = _nanmean(2 * np.abs(actual - pred) / (np.abs(actual) + np.abs(pred))) * 100
            scores[name].append((mase(actual, pred, yy, m), 0.0, smape))
        f = fit(tt, yy, horizon)
        ok = ~np.isnan(actual)
        lower, upper = np.asarray(f.lower)[ok], np.asarray(f.upper)[ok]
        inside.append(float(np.mean((actual[ok] >= lower) & (actual[ok] <= upper))))
        width += float(np.sum(upper - lower))
        level += float(np.sum(np.abs(actual[ok])))
    out: dict[str, dict[str, float]] = {}
    for name, rows in scores.items():
        arr = np.asarray(rows)
        finite = arr[:, 0][~np.isnan(arr[:, 0])]
        out[name] = {"mase": float(np.median(finite)) if len(finite) else math.nan,
                     "mae_vs_naive": total_abs[name] / naive_abs if naive_abs else math.nan,
                     "smape": _nanmean(arr[:, 2]),
                     "origins": float(len(rows))}
    out["seasonal"]["coverage"] = float(np.mean(inside)) if inside else math.nan
    out["seasonal"]["width"] = width / level if level else math.nan
    return out
