"""Scoring of the Numenta Anomaly Benchmark (NAB v1.1), standard library only.

NAB scores a streaming detector's per-record anomaly scores against labelled
*anomaly windows*. A score at or above the threshold is a detection:

* inside a window, the first detection counts, weighted by a scaled sigmoid of
  its position (the window's first record earns the full ``tp_weight``, its
  last almost nothing); later detections in the same window change nothing;
* a window without a detection costs ``fn_weight``;
* every detection outside the windows costs up to ``fp_weight``: the full
  weight when far from (or before) every window, less right after one;
* the first ``min(floor(0.15 n), 750)`` records of each file are the
  probation period: not scored, whatever the detector says.

The threshold is tuned once per cost profile over the whole corpus (never per
file), and the sum over the files is normalised so that the null detector
(which detects nothing) scores 0 and a perfect one 100::

    100 * (raw - null) / (perfect - null)

where ``perfect`` is ``tp_weight`` times the number of windows. This module
is an independent implementation of those rules; ``benchmarks/nab.py`` runs
it, and the test suite checks it against the published score of NAB's
Windowed Gaussian detector.

Use it on your own data the same way: one CSV per series (``timestamp,value``),
a JSON file of windows (``{"dir/file.csv": [["start", "end"], ...]}``) and a
detector's scores (:func:`score_corpus`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

__all__ = [
    "PROFILE_NAMES",
    "FileScore",
    "Profile",
    "ProfileResult",
    "ScoredFile",
    "data_files",
    "load_profiles",
    "load_windows",
    "parse_timestamp",
    "probation_length",
    "read_series",
    "results_files",
    "scaled_sigmoid",
    "score_corpus",
    "sweep_file",
]

#: The three cost profiles of ``config/profiles.json``, in NAB's reporting order.
PROFILE_NAMES: tuple[str, ...] = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")

_PROBATION_FRACTION = 0.15
_PROBATION_CAP_RECORDS = 5000  # NAB: min(floor(0.15 n), 0.15 * 5000) = 750 at most


@dataclass(frozen=True)
class Profile:
    """One cost profile: the weights of a true positive, false positive, false negative."""

    name: str
    tp_weight: float = 1.0
    fp_weight: float = 0.11
    fn_weight: float = 1.0


def load_profiles(path: str | Path) -> dict[str, Profile]:
    """The profiles of a NAB ``profiles.json`` (``{"standard": {"CostMatrix": {...}}}``)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    out: dict[str, Profile] = {}
    for name, body in raw.items():
        cost = body["CostMatrix"]
        out[name] = Profile(name, float(cost["tpWeight"]), float(cost["fpWeight"]),
                            float(cost["fnWeight"]))
    return out


def parse_timestamp(text: str) -> datetime:
    """A NAB timestamp (``2014-07-01 00:00:00``, with or without ``.000000``)."""
    return datetime.fromisoformat(text.strip())


def load_windows(path: str | Path) -> dict[str, list[tuple[datetime, datetime]]]:
    """The windows of a NAB ``combined_windows.json``: relative file path -> [(start, end)]."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    return {
        name: sorted((parse_timestamp(a), parse_timestamp(b)) for a, b in spans)
        for name, spans in raw.items()
    }


def probation_length(n: int, fraction: float = _PROBATION_FRACTION) -> int:
    """Records at the start of an ``n``-record file that are never scored."""
    return min(math.floor(fraction * n), math.floor(fraction * _PROBATION_CAP_RECORDS))


def scaled_sigmoid(position: float) -> float:
    """NAB's scoring curve: ``2 / (1 + exp(5 x)) - 1``, and -1 from ``x >= 3`` on.

    ``x = -1`` is a window's first record (0.987), ``x = 0`` its right edge (0),
    positive ``x`` how far past the previous window's right edge a false
    positive is, in window lengths.
    """
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


_MAX_TP = scaled_sigmoid(-1.0)


@dataclass
class ScoredFile:
    """One file's scorable records (after the probation period), ready for sweeping.

    Attributes:
        name: the file's path relative to the corpus (``realKnownCause/nyc_taxi.csv``).
        scores: the detector's anomaly score of each scorable record.
        window: per record, the index of the window it lies in, or -1.
        curve: per record, the unweighted scaled sigmoid of its position (the
            true-positive value inside a window, the false-positive cost outside).
        windows: how many windows have a scorable record (a window that lies
            entirely in the probation period is not scored).
    """

    name: str
    scores: list[float] = field(default_factory=list)
    window: list[int] = field(default_factory=list)
    curve: list[float] = field(default_factory=list)
    windows: int = 0


def sweep_file(name: str, timestamps: Sequence[datetime], scores: Sequence[float],
               windows: Sequence[tuple[datetime, datetime]]) -> ScoredFile:
    """Position every record of one file relative to its windows (NAB's sweep).

    Records are matched by position, as NAB does: a window starts at the first
    record whose timestamp equals its start and ends at the first record equal
    to its end (NAB's files have a few repeated and out-of-order timestamps
    around clock changes). Windows whose limits are not timestamps of the file
    start at the first record at or after the start and end at the last record
    before the end is passed.

    Raises:
        ValueError: the numbers of timestamps and scores differ.
    """
    n = len(timestamps)
    if len(scores) != n:
        raise ValueError(f"{name}: {n} timestamps but {len(scores)} scores")
    spans: list[tuple[int, int]] = []
    for start, end in windows:
        span = _span(timestamps, start, end, spans[-1][1] + 1 if spans else 0)
        if span is not None:
            spans.append(span)
    probation = probation_length(n)
    out = ScoredFile(name)
    scorable_windows: set[int] = set()
    w = 0  # next window not yet passed
    prev_right = -1
    prev_width = 0
    for i in range(n):
        while w < len(spans) and spans[w][1] < i:
            prev_right = spans[w][1]
            prev_width = spans[w][1] - spans[w][0] + 1
            w += 1
        inside = w < len(spans) and spans[w][0] <= i
        if inside:
            left, right = spans[w]
            width = right - left + 1
            value = scaled_sigmoid(-(right - i + 1) / width)
        elif prev_right < 0 or prev_width <= 1:
            value = scaled_sigmoid(3.0)
        else:
            value = scaled_sigmoid(abs(prev_right - i) / (prev_width - 1))
        if i < probation:
            continue
        out.scores.append(float(scores[i]))
        out.window.append(w if inside else -1)
        out.curve.append(value)
        if inside:
            scorable_windows.add(w)
    out.windows = len(scorable_windows)
    return out


def _span(timestamps: Sequence[datetime], start: datetime, end: datetime,
          after: int) -> tuple[int, int] | None:
    n = len(timestamps)
    left = next((i for i in range(after, n) if timestamps[i] == start), None)
    if left is None:
        left = next((i for i in range(after, n) if timestamps[i] >= start), None)
        if left is None:
            return None
    right = next((i for i in range(left, n) if timestamps[i] == end), None)
    if right is None:
        right = left - 1
        while right + 1 < n and timestamps[right + 1] <= end:
            right += 1
    return (left, right) if right >= left else None


@dataclass(frozen=True)
class FileScore:
    """One file's result at one threshold: raw score, detected and missed windows, false positives."""

    name: str
    score: float
    detected: int
    missed: int
    false_positives: int


@dataclass(frozen=True)
class ProfileResult:
    """The corpus result for one profile.

    Attributes:
        profile: the cost profile.
        threshold: the threshold used (tuned over the corpus unless fixed).
        raw: the sum of the files' raw scores.
        null: what the null detector scores (every window missed).
        perfect: what a perfect detector scores (every window at its first record).
        score: the normalised score, 0 for null and 100 for perfect.
        files: per-file results at the threshold.
    """

    profile: Profile
    threshold: float
    raw: float
    null: float
    perfect: float
    score: float
    files: tuple[FileScore, ...]

    @property
    def detected(self) -> int:
        """Windows with a detection, over the corpus."""
        return sum(f.detected for f in self.files)

    @property
    def missed(self) -> int:
        """Windows without a detection, over the corpus."""
        return sum(f.missed for f in self.files)

    @property
    def false_positives(self) -> int:
        """Detections outside every window, over the corpus."""
        return sum(f.false_positives for f in self.files)


def _file_at(f: ScoredFile, threshold: float, profile: Profile) -> FileScore:
    best: dict[int, float] = {}
    fp_cost = 0.0
    fps = 0
    for s, w, c in zip(f.scores, f.window, f.curve, strict=True):
        if s < threshold:
            continue
        if w < 0:
            fp_cost += c * profile.fp_weight
            fps += 1
        else:
            value = c * profile.tp_weight / _MAX_TP
            if value > best.get(w, -math.inf):
                best[w] = value
    detected = len(best)
    missed = f.windows - detected
    raw = fp_cost + sum(best.values()) - missed * profile.fn_weight
    return FileScore(f.name, raw, detected, missed, fps)


def _tune(files: Sequence[ScoredFile], profile: Profile) -> float:
    """The threshold that maximises the corpus score (ties: the highest threshold)."""
    points: list[tuple[float, tuple[int, int] | None, float]] = []
    for k, f in enumerate(files):
        for s, w, c in zip(f.scores, f.window, f.curve, strict=True):
            if w < 0:
                points.append((s, None, c * profile.fp_weight))
            else:
                points.append((s, (k, w), c * profile.tp_weight / _MAX_TP))
    points.sort(key=lambda p: p[0], reverse=True)
    window_best: dict[tuple[int, int], float] = {}
    total = -profile.fn_weight * sum(f.windows for f in files)
    best_total, best_threshold = total, math.inf
    i = 0
    while i < len(points):
        threshold = points[i][0]
        while i < len(points) and points[i][0] == threshold:
            _, key, value = points[i]
            if key is None:
                total += value
            else:
                old = window_best.get(key, -profile.fn_weight)
                if value > old:
                    window_best[key] = value
                    total += value - old
            i += 1
        if total > best_total + 1e-12:
            best_total, best_threshold = total, threshold
    return best_threshold


def score_corpus(
    files: Iterable[ScoredFile],
    profiles: Mapping[str, Profile],
    *,
    thresholds: Mapping[str, float] | None = None,
    total_windows: int | None = None,
) -> dict[str, ProfileResult]:
    """Score swept files (:func:`sweep_file`) under each profile.

    Args:
        files: every file of the corpus.
        profiles: the cost profiles by name (:func:`load_profiles`).
        thresholds: a fixed threshold per profile; a profile missing here has
            its threshold tuned over the corpus.
        total_windows: the number of windows of a perfect detector (NAB: every
            window of the labels file); default: the scorable windows of ``files``.
    """
    swept = list(files)
    windows = sum(f.windows for f in swept) if total_windows is None else total_windows
    out: dict[str, ProfileResult] = {}
    for name, profile in profiles.items():
        fixed = thresholds.get(name) if thresholds else None
        threshold = _tune(swept, profile) if fixed is None else fixed
        per_file = tuple(_file_at(f, threshold, profile) for f in swept)
        raw = sum(f.score for f in per_file)
        null = -profile.fn_weight * sum(f.windows for f in swept)
        perfect = profile.tp_weight * windows
        score = 100.0 * (raw - null) / (perfect - null) if perfect != null else 0.0
        out[name] = ProfileResult(profile, threshold, raw, null, perfect, score, per_file)
    return out


# ---------------------------------------------------------------- files
def read_series(path: str | Path, column: str = "value") -> tuple[list[datetime], list[float]]:
    """Timestamps and one numeric column of a NAB CSV (``timestamp,value`` or
    ``timestamp,anomaly_score``)."""
    timestamps: list[datetime] = []
    values: list[float] = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "timestamp" not in reader.fieldnames \
                or column not in reader.fieldnames:
            raise ValueError(f"{path}: expected columns timestamp and {column}, "
                             f"found {reader.fieldnames}")
        for row in reader:
            timestamps.append(parse_timestamp(row["timestamp"]))
            values.append(float(row[column]))
    return timestamps, values


def data_files(root: str | Path) -> dict[str, Path]:
    """Every CSV under ``root`` (recursively), by path relative to it with ``/``."""
    base = Path(root)
    return {p.relative_to(base).as_posix(): p for p in sorted(base.rglob("*.csv"))}


def results_files(root: str | Path, names: Iterable[str], detector: str | None = None) -> dict[str, Path]:
    """The results file of each data file ``names`` under a NAB results folder.

    NAB writes ``<category>/<detector>_<file>.csv`` beside corpus-level
    ``*_scores.csv`` summaries; ``detector`` defaults to the folder's name.

    Raises:
        FileNotFoundError: a data file has no results file.
    """
    base = Path(root)
    prefix = (detector or base.name) + "_"
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in names:
        category, _, file = name.rpartition("/")
        candidates = [base / category / (prefix + file), base / category / file]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            missing.append(name)
        else:
            found[name] = hit
    if missing:
        raise FileNotFoundError(
            f"no results file under {base} for {len(missing)} data file(s), e.g. {missing[0]} "
            f"(expected {prefix}<file>.csv in the same category folder)")
    return found
