"""``anomaly serve``: detection and forecasts over Prometheus data, exported as metrics.

:class:`AnomalyService` reads each watched query's history from Prometheus,
fits one detector per series (or takes it from a model file), then every
``interval`` reads the new points, updates the detectors in order and
forecasts each series a few hours ahead. What it finds is exposed on its own
registry (never the service's) with the catalogue's ``anomaly-serve``
families: ``anomaly_score{metric}``, ``anomalies_total{metric,severity}``,
``forecast{metric,horizon}`` and its bounds ``forecast_lower`` and
``forecast_upper``, for Grafana panels and alert rules. Every anomaly is also
handed to the ``on_anomaly`` callbacks (the incident manager).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from .. import catalogue
from .detector import Detector, Point, severity
from .model import Model
from .source import EmptyResult, PrometheusError, PrometheusSource, Series

__all__ = ["AnomalyService", "Watch", "horizon_label", "service_metrics"]

_log = logging.getLogger("mestres_observability.anomaly.serve")


@dataclass(frozen=True)
class Watch:
    """One watched query: ``name`` names its series in the exported metrics."""

    name: str
    query: str


def horizon_label(seconds: float) -> str:
    """``3600`` -> ``1h``, ``5400`` -> ``90m``, ``45`` -> ``45s``."""
    s = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0 and s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def service_metrics(registry: CollectorRegistry) -> dict[str, Any]:
    """The ``anomaly-serve`` families of the catalogue, built on ``registry``."""
    out: dict[str, Any] = {}
    for d in catalogue.entries(process="anomaly-serve"):
        kind = Gauge if d.kind == "gauge" else Counter
        out[d.name] = kind(d.name, d.doc, list(d.labels), registry=registry)
    return out


@dataclass
class _Tracked:
    detector: Detector
    last_t: float
    times: deque[float] = field(default_factory=deque)
    values: deque[float] = field(default_factory=deque)


class AnomalyService:
    """Watches Prometheus queries, exports anomaly scores and forecasts.

    Args:
        source: the Prometheus to read.
        watches: the queries.
        step: seconds between points (the range queries' step).
        history: seconds of history read at start (and kept for forecasting).
        horizons: forecast horizons, in seconds (``(3600, 14400)``: 1 h and 4 h).
        make_detector: builds an untrained detector for a series without a model.
        model: trained detectors by series name (``anomaly train``), used first.
        registry: where the metrics go (default: a new one).
        on_anomaly: called with each anomaly as a :class:`~.detector.Point`.
    """

    def __init__(self, source: PrometheusSource, watches: Sequence[Watch], *, step: float,
                 history: float, horizons: Sequence[float], make_detector: Callable[[], Detector],
                 model: Model | None = None, registry: CollectorRegistry | None = None,
                 on_anomaly: Sequence[Callable[[Point], None]] = ()) -> None:
        self.source = source
        self.watches = list(watches)
        self.step = step
        self.history = history
        self.horizons = [h for h in horizons if h >= step]
        self.make_detector = make_detector
        self.model = model
        self.registry = registry or CollectorRegistry()
        self.metrics = service_metrics(self.registry)
        self.on_anomaly = list(on_anomaly)
        self.tracked: dict[str, _Tracked] = {}
        self.errors = 0
        self._keep = max(2, int(history // step) + 1)

    # ------------------------------------------------------------ one round
    def poll(self, now: float | None = None) -> list[Point]:
        """Read what is new since the last round, update, export; the anomalies found."""
        now = time.time() if now is None else now
        found: list[Point] = []
        for w in self.watches:
            start = self._start_of(w, now)
            try:
                series = self.source.query_range(w.query, start, now, self.step, allow_empty=True)
            except PrometheusError as exc:
                self.errors += 1
                _log.warning("anomaly serve: %s", exc)
                continue
            for s in series:
                found += self._ingest(s.name(w.name), s)
        self._forecast()
        return found

    def _start_of(self, w: Watch, now: float) -> float:
        mine = [t.last_t for name, t in self.tracked.items() if name.split("{")[0] == w.name]
        return min(mine) + self.step if mine else now - self.history

    def _ingest(self, name: str, s: Series) -> list[Point]:
        tracked = self.tracked.get(name)
        if tracked is None:
            detector = self.model.detectors.get(name) if self.model else None
            fresh = detector is None
            if detector is None:
                detector = self.make_detector()
            tracked = _Tracked(detector, -math.inf, deque(maxlen=self._keep), deque(maxlen=self._keep))
            self.tracked[name] = tracked
            if not fresh and self.model is not None:  # carry on after the training range
                tracked.last_t = float(self.model.info.get("end", -math.inf))
            if fresh:  # learn from the history just read (all but its last point)
                pairs = [(t, v) for t, v in zip(s.timestamps, s.values, strict=True)
                         if not math.isnan(v)]
                if len(pairs) <= 1:  # nothing to learn from yet: next round reads it again
                    del self.tracked[name]
                    return []
                if len(pairs) > 1:
                    try:
                        detector.fit([p[0] for p in pairs[:-1]], [p[1] for p in pairs[:-1]])
                    except ValueError as exc:
                        _log.warning("anomaly serve: %s: %s", name, exc)
                        del self.tracked[name]
                        return []
                    tracked.last_t = pairs[-2][0]
                    keep = [i for i, t in enumerate(s.timestamps) if t <= tracked.last_t]
                    tracked.times.extend(s.timestamps[i] for i in keep)
                    tracked.values.extend(s.values[i] for i in keep)
        new = [(t, v) for t, v in zip(s.timestamps, s.values, strict=True) if t > tracked.last_t]
        if not new:
            return []
        verdicts = tracked.detector.score_many([t for t, _ in new], [v for _, v in new])
        found: list[Point] = []
        last_score = math.nan
        for (t, v), verdict in zip(new, verdicts, strict=True):
            tracked.times.append(t)
            tracked.values.append(v)
            if not math.isnan(verdict.score):
                last_score = verdict.score
            if verdict.is_anomaly:
                p = Point(t, name, v, verdict.score, True, severity(verdict.score), verdict.kind)
                found.append(p)
                self.metrics["anomalies_total"].labels(name, p.severity).inc()
                for callback in self.on_anomaly:
                    try:
                        callback(p)
                    except Exception:  # a failing hook must not stop detection
                        _log.exception("anomaly serve: on_anomaly hook failed for %s", name)
        tracked.last_t = new[-1][0]
        if not math.isnan(last_score):
            self.metrics["anomaly_score"].labels(name).set(last_score)
        return found

    def _forecast(self) -> None:
        if not self.horizons:
            return
        from .forecast import SeasonalForecaster

        longest = max(round(h / self.step) for h in self.horizons)
        for name, tracked in self.tracked.items():
            try:
                f = SeasonalForecaster(step=self.step, max_horizon=longest).fit(
                    list(tracked.times), list(tracked.values)).predict(longest)
            except ValueError:
                continue  # not two seasons of history yet
            for h in self.horizons:
                i = round(h / self.step) - 1
                label = horizon_label(h)
                self.metrics["forecast"].labels(name, label).set(f.mean[i])
                self.metrics["forecast_lower"].labels(name, label).set(f.lower[i])
                self.metrics["forecast_upper"].labels(name, label).set(f.upper[i])

    # ------------------------------------------------------------ serving
    def run(self, interval: float, stop: threading.Event) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.poll()
            except EmptyResult:
                pass
            except Exception:  # keep serving: the next round may work
                self.errors += 1
                _log.exception("anomaly serve: round failed")
            stop.wait(max(0.0, interval - (time.monotonic() - started)))
