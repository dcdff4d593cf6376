"""What every detector shares: the verdict of one point, anomalies, severities.

A detector learns from history (``fit``), then takes new points one at a time
in time order (``update``) and answers with a :class:`Verdict`: a score
between 0 and 1 and whether the point is an anomaly. :func:`run` applies one
to a whole series and :func:`anomalies` keeps the anomalies, each with its
timestamp, metric, value, score and severity.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

__all__ = [
    "SEVERITY_THRESHOLDS",
    "Anomaly",
    "Detector",
    "Point",
    "Verdict",
    "anomalies",
    "run",
    "severity",
]

#: The seed's severity thresholds: a score above each makes that severity.
SEVERITY_THRESHOLDS: tuple[tuple[str, float], ...] = (
    ("critical", 0.9), ("high", 0.7), ("medium", 0.5), ("low", 0.3))


def severity(score: float) -> str:
    """``critical`` above 0.9, ``high`` above 0.7, ``medium`` above 0.5, else ``low``."""
    for name, bound in SEVERITY_THRESHOLDS[:-1]:
        if score > bound:
            return name
    return "low"


class Verdict(NamedTuple):
    """A detector's answer for one point.

    Attributes:
        score: 0 (usual) to 1 (further out than anything seen); NaN for a missing value.
        is_anomaly: whether the point is reported as an anomaly.
        kind: what made the score (the detector's component, ``absent``...).
        suppressed: the detector is cooling down from an anomaly: nothing is
            reported, whatever the score (NAB sees a score of 0 then).
    """

    score: float
    is_anomaly: bool
    kind: str = ""
    suppressed: bool = False


@runtime_checkable
class Detector(Protocol):
    """The interface of every detector (one series per detector)."""

    kind: str

    def fit(self, timestamps: Any, values: Any) -> Any:
        """Learn from history, in time order; returns the detector."""

    def update(self, timestamp: float, value: float) -> Verdict:
        """Score the next point, in time order (NaN: a missing value)."""

    def score_many(self, timestamps: Sequence[float], values: Sequence[float]) -> list[Verdict]:
        """:meth:`update` with each point in turn (faster for a batch, for some detectors)."""

    def state(self) -> dict[str, Any]:
        """Parameters and learned state as JSON-compatible data (see :mod:`.model`)."""


@dataclass(frozen=True)
class Point:
    """One scored point of one metric (a row of ``anomaly detect --json``)."""

    timestamp: float
    metric: str
    value: float
    score: float
    is_anomaly: bool
    severity: str
    kind: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-compatible fields (NaN scores and values become ``None``)."""
        return {
            "timestamp": self.timestamp,
            "metric": self.metric,
            "value": None if math.isnan(self.value) else self.value,
            "score": None if math.isnan(self.score) else round(self.score, 6),
            "is_anomaly": self.is_anomaly,
            "severity": self.severity,
            "kind": self.kind,
        }


#: An anomaly is a point reported as one.
Anomaly = Point


def run(detector: Detector, metric: str, timestamps: Sequence[float],
        values: Sequence[float]) -> list[Point]:
    """Update ``detector`` with every point in order; one :class:`Point` per point."""
    out: list[Point] = []
    verdicts = detector.score_many(timestamps, values)
    for t, x, v in zip(timestamps, values, verdicts, strict=True):
        sev = severity(v.score) if v.is_anomaly else ""
        out.append(Point(float(t), metric, float(x), v.score, v.is_anomaly, sev, v.kind))
    return out


def anomalies(points: Iterable[Point]) -> list[Point]:
    """The points reported as anomalies."""
    return [p for p in points if p.is_anomaly]
