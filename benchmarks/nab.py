"""Score anomaly detectors on the Numenta Anomaly Benchmark (NAB v1.1), by NAB's rules.

    python benchmarks/nab.py --data ../shared/nab/data --windows ../shared/nab/labels/combined_windows.json
    python benchmarks/nab.py --data DIR --windows FILE --detector isolation-forest
    python benchmarks/nab.py --data DIR --windows FILE --scores DIR/results/windowedGaussian

Every CSV under ``--data`` is one series. A detector sees each series in time
order, one point at a time (no look-ahead); the first min(floor(0.15 n), 750)
records are its probation period (it learns from them; detections there are
not scored); one parameter set is used for every file; the threshold is tuned
once per cost profile over the whole corpus. With ``--scores DIR`` the anomaly
scores of existing NAB result files are scored instead of running a detector;
with ``--decisions`` the detector's own anomaly decisions are scored, with no
threshold tuned at all.

Prints one line per profile (``standard: 55.3``), the normalised score: 0 for
the null detector, 100 for a perfect one. Details (thresholds, detected and
missed windows, false positives, run time) go to standard error; ``--out DIR``
writes NAB-style result files that ``--scores`` reads back.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mestres_observability.anomaly import nab
from mestres_observability.anomaly.detector import Detector

DETECTORS = ("seasonal", "isolation-forest", "null")


def make_detector(name: str, probation: int) -> Detector | None:
    """The detector ``name`` with the corpus-wide parameters, for a file whose
    first ``probation`` records are history (``None``: the null detector)."""
    if name == "seasonal":
        from mestres_observability.anomaly.seasonal import SeasonalDetector, SeasonalParams

        return SeasonalDetector(SeasonalParams.for_history(probation))
    if name == "isolation-forest":
        from mestres_observability.anomaly.forest import ForestParams, IsolationForestDetector

        return IsolationForestDetector(ForestParams.for_history(probation))
    if name == "null":
        return None
    raise SystemExit(f"unknown detector {name!r}; one of {', '.join(DETECTORS)}")


def detect_file(args: tuple[str, str, str, bool]) -> tuple[str, list[datetime], list[float], float]:
    """Run detector ``args[0]`` over one data file; (name, timestamps, scores, CPU seconds).
    With ``args[3]`` the score is the detector's own decision (1 for an anomaly, else 0)."""
    detector_name, name, path, decisions = args
    timestamps, values = nab.read_series(path)
    probation = nab.probation_length(len(values))
    detector = make_detector(detector_name, probation)
    start = time.process_time()
    scores: list[float] = []
    if detector is None:
        scores = [0.0] * len(values)
    else:
        history_t = [t.timestamp() for t in timestamps[:probation]]
        detector.fit(history_t, values[:probation])
        scores = [0.0] * probation  # probation: not scored
        rest_t = [t.timestamp() for t in timestamps[probation:]]
        for v in detector.score_many(rest_t, values[probation:]):  # in time order
            # what the detector reports: the scores of its anomalies (0 elsewhere), so a
            # tuned threshold can only drop reports; --decisions: the reports alone
            if decisions:
                scores.append(1.0 if v.is_anomaly else 0.0)
            else:
                scores.append(v.score if v.is_anomaly else 0.0)
    return name, timestamps, scores, time.process_time() - start


def write_results(out: Path, detector: str, name: str, timestamps: Sequence[datetime],
                  scores: Sequence[float]) -> None:
    """One NAB results file: ``<category>/<detector>_<file>.csv`` with ``timestamp,anomaly_score``."""
    category, _, file = name.rpartition("/")
    target = out / category / f"{detector}_{file}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "anomaly_score"])
        for t, s in zip(timestamps, scores, strict=True):
            w.writerow([t.strftime("%Y-%m-%d %H:%M:%S"), repr(s)])


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="folder of series CSVs (timestamp,value)")
    ap.add_argument("--windows", required=True, type=Path, help="NAB combined_windows.json")
    ap.add_argument("--profiles", type=Path,
                    help="NAB profiles.json (default: config/profiles.json beside the windows' folder)")
    ap.add_argument("--detector", default=None,
                    help=f"one of {', '.join(DETECTORS)} (default seasonal); with --scores: the "
                         "results' file-name prefix (default: the folder's name)")
    ap.add_argument("--scores", type=Path, help="score existing NAB results files instead")
    ap.add_argument("--threshold", type=float, help="one fixed threshold for every profile")
    ap.add_argument("--decisions", action="store_true",
                    help="score the detector's own anomaly decisions (1 or 0) at a fixed "
                         "threshold of 0.5: no threshold tuned at all")
    ap.add_argument("--only", default="", help="only the data files whose path contains this")
    ap.add_argument("--jobs", type=int, default=1, help="processes running the detector (default 1)")
    ap.add_argument("--out", type=Path, help="write NAB-style results files here")
    args = ap.parse_args(argv)
    say = log or (lambda text: print(text, file=sys.stderr))

    started = time.monotonic()
    profiles_path = args.profiles or args.windows.parent.parent / "config" / "profiles.json"
    profiles = nab.load_profiles(profiles_path)
    windows = nab.load_windows(args.windows)
    files = {k: v for k, v in nab.data_files(args.data).items() if args.only in k}
    if not files:
        raise SystemExit(f"no CSV files under {args.data}")
    unknown = sorted(set(files) - set(windows))
    if unknown:
        raise SystemExit(f"{len(unknown)} data file(s) have no windows in {args.windows}, "
                         f"e.g. {unknown[0]}")

    swept: list[nab.ScoredFile] = []
    cpu = 0.0
    if args.scores is not None:
        results = nab.results_files(args.scores, files, args.detector)
        for name in files:
            timestamps, scores = nab.read_series(results[name], "anomaly_score")
            swept.append(nab.sweep_file(name, timestamps, scores, windows[name]))
    else:
        args.detector = args.detector or "seasonal"
        make_detector(args.detector, 1)  # fail early on an unknown name or a missing extra
        jobs = [(args.detector, name, str(path), args.decisions) for name, path in files.items()]
        if args.decisions and args.threshold is None:
            args.threshold = 0.5
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as pool:
                outcomes = list(pool.map(detect_file, jobs))
        else:
            outcomes = [detect_file(j) for j in jobs]
        for name, timestamps, scores, seconds in outcomes:
            cpu += seconds
            swept.append(nab.sweep_file(name, timestamps, scores, windows[name]))
            if args.out is not None:
                write_results(args.out, args.detector, name, timestamps, scores)

    fixed = dict.fromkeys(profiles, args.threshold) if args.threshold is not None else None
    results_by_profile = nab.score_corpus(
        swept, profiles, thresholds=fixed, total_windows=sum(len(windows[n]) for n in files))
    for name in [p for p in nab.PROFILE_NAMES if p in results_by_profile] + [
            p for p in results_by_profile if p not in nab.PROFILE_NAMES]:
        r = results_by_profile[name]
        print(f"{name}: {r.score:.1f}")
        say(f"  {name}: threshold {r.threshold:.6g}, windows detected {r.detected} / missed "
            f"{r.missed}, false positives {r.false_positives}, raw {r.raw:.3f}")
    points = sum(len(f.scores) for f in swept)
    say(f"  {len(files)} files, {points} scored records, detector CPU {cpu:.1f} s, "
        f"wall {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
