"""The detectors: what they catch and what they leave alone, bounded state, gaps,
model files, and the optional extra kept out of the core."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mestres_observability.anomaly import model as model_file
from mestres_observability.anomaly.detector import Point, anomalies, run, severity
from mestres_observability.anomaly.seasonal import SeasonalDetector, SeasonalParams
from tests._support import require_module

ROOT = Path(__file__).resolve().parents[1]
STEP = 300.0  # 5 minutes
DAY_POINTS = int(86400 / STEP)


def daily_series(days: int, seed: int = 1) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    ts = [1_700_000_000.0 - 1_700_000_000.0 % 86400 + i * STEP for i in range(days * DAY_POINTS)]
    xs = [100 + 50 * math.sin(2 * math.pi * (t % 86400) / 86400) + rng.gauss(0, 3) for t in ts]
    return ts, xs


def split(ts: list[float], xs: list[float], at: int) -> tuple[list[float], ...]:
    return ts[:at], xs[:at], ts[at:], xs[at:]


# ---------------------------------------------------------------- seasonal detector
def test_seasonal_detector_flags_a_spike_once_and_not_the_usual_cycle() -> None:
    ts, xs = daily_series(10)
    at = 7 * DAY_POINTS
    xs[at + 100] += 80  # a spike, inside the usual range of the day's cycle
    d = SeasonalDetector().fit(ts[:at], xs[:at])
    points = run(d, "load", ts[at:], xs[at:])
    found = anomalies(points)
    assert [p.timestamp for p in found] == [ts[at + 100]]
    assert found[0].metric == "load"
    assert found[0].severity in ("medium", "high", "critical")
    assert found[0].score >= d.alert_score
    assert all(0.0 <= p.score <= 1.0 for p in points)


def test_a_drop_at_a_busy_time_of_day_is_caught_by_the_daily_baseline() -> None:
    ts, xs = daily_series(10, seed=2)
    at = 8 * DAY_POINTS
    peak = at + DAY_POINTS // 4  # the sine's maximum: 150
    for i in range(peak, peak + 12):
        xs[i] = 60.0  # low for noon, but an ordinary value at night
    d = SeasonalDetector().fit(ts[:at], xs[:at])
    found = anomalies(run(d, "orders", ts[at:], xs[at:]))
    # one report for the hour-long episode and its cool-down (the same time tomorrow,
    # measured against a baseline that holds the drop, may be reported again)
    episode = [p for p in found if p.timestamp <= ts[peak + d.params.cooldown]]
    assert len(episode) == 1
    assert ts[peak] <= found[0].timestamp <= ts[peak + 2]


def test_cooldown_suppresses_the_rest_of_an_episode_then_rearms() -> None:
    ts, xs = daily_series(9, seed=3)
    at = 7 * DAY_POINTS
    xs[at + 10] += 200
    xs[at + 20] += 200  # inside the cool-down: not reported
    xs[at + 400] += 200  # after it: reported
    d = SeasonalDetector(SeasonalParams(cooldown=100)).fit(ts[:at], xs[:at])
    verdicts = d.score_many(ts[at:], xs[at:])
    reported = [i for i, v in enumerate(verdicts) if v.is_anomaly]
    # nothing in the cool-down; the episode's z-scores do not raise the bar, so a
    # chance record of the noise after the cool-down may be reported too
    assert reported[0] == 10
    assert 400 in reported
    assert not [i for i in reported if 10 < i <= 110]
    assert verdicts[20].suppressed
    assert not verdicts[20].is_anomaly


def test_gaps_update_nothing_and_a_long_one_is_reported_once_as_absent() -> None:
    ts, xs = daily_series(8, seed=4)
    at = 7 * DAY_POINTS
    d = SeasonalDetector(SeasonalParams(absent_after=5)).fit(ts[:at], xs[:at])
    before = json.dumps(d.state())
    verdicts = [d.update(ts[at + i], math.nan) for i in range(12)]
    assert [v.kind for v in verdicts if v.is_anomaly] == ["absent"]
    assert all(math.isnan(v.score) for v in verdicts if not v.is_anomaly)
    state = d.state()
    assert state["missing"] == 12
    state["missing"] = 0
    assert json.dumps(state) == before  # nothing else learned from a gap


def test_state_is_bounded_whatever_the_length_of_the_series() -> None:
    params = SeasonalParams(window=200, seasonal_window=300, rank_window=500)
    sizes = []
    for days in (6, 12):
        ts, xs = daily_series(days, seed=5)
        d = SeasonalDetector(params).fit(ts, xs)
        sizes.append(len(json.dumps(d.state())) // 1000)
    assert sizes[1] <= sizes[0] * 1.1  # twice the points, the same state


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="window must be at least 1"):
        SeasonalParams(window=0)
    with pytest.raises(ValueError, match="components"):
        SeasonalParams(components=("level", "hourly"))
    with pytest.raises(ValueError, match="alpha"):
        SeasonalParams(alpha=1.5)
    p = SeasonalParams.for_history(600)
    assert (p.window, p.cooldown) == (600, 150)
    assert p.threshold == pytest.approx(5 / 601)  # five components, beyond the whole window


def test_severity_follows_the_seed_thresholds() -> None:
    assert [severity(s) for s in (0.95, 0.8, 0.6, 0.4, 0.1)] == [
        "critical", "high", "medium", "low", "low"]


def test_point_as_dict_is_json() -> None:
    p = Point(1.0, "m", math.nan, math.nan, False, "", "")
    assert json.loads(json.dumps(p.as_dict())) == {
        "timestamp": 1.0, "metric": "m", "value": None, "score": None, "is_anomaly": False,
        "severity": "", "kind": ""}


def test_far_beyond_the_ranked_window_the_fitted_tail_gives_smaller_p_values() -> None:
    from mestres_observability.anomaly.seasonal import _Rank

    rng = random.Random(8)
    rank = _Rank(5000)
    for _ in range(5000):
        rank.push(abs(rng.gauss(0, 1)))
    top = max(rank.window.sorted)
    inside = rank.p(1.0)
    assert inside == pytest.approx(sum(z >= 1.0 for z in rank.window.sorted) / 5001, abs=1e-3)
    just, far, farther = rank.p(top + 0.01), rank.p(top + 3), rank.p(top + 6)
    assert just <= 1 / 5001  # never above the empirical p-value
    assert far < just / 10  # an exponential tail fitted to the top 1 %
    assert 0 < farther < far
    young = _Rank(5000)
    for _ in range(500):  # too few z-scores for a tail: the empirical p-value only
        young.push(abs(rng.gauss(0, 1)))
    assert young.p(50.0) == pytest.approx(1 / 501)


def test_a_reported_episode_does_not_raise_the_bar_for_the_next_one() -> None:
    # one point a minute and a bar of one in 100,000 (the shop benchmark's): reached only
    # beyond every ranked z-score; the first spike's z-scores are left out of the ranks,
    # so a second spike of the same size is still reported
    rng = random.Random(9)
    ts = [1_700_000_000.0 + 60.0 * i for i in range(6000)]
    xs = [100.0 + rng.gauss(0, 3) for _ in ts]
    for i in range(4000, 4004):
        xs[i] += 60
    for i in range(5000, 5004):
        xs[i] += 60
    params = SeasonalParams(alpha=1e-5, rank_window=20000, cooldown=300,
                            components=("level", "change", "sustained"))
    d = SeasonalDetector(params).fit(ts[:3000], xs[:3000])
    verdicts = d.score_many(ts[3000:], xs[3000:])
    assert [i + 3000 for i, v in enumerate(verdicts) if v.is_anomaly] == [4000, 5000]
    with pytest.raises(ValueError, match="rank_delay"):
        SeasonalParams(rank_delay=-1)


def _minute_series(kind: str) -> tuple[list[float], list[float]]:
    rng = random.Random(11)
    ts = [1_700_000_000.0 + 60.0 * i for i in range(6000)]
    xs = [100.0 + rng.gauss(0, 3) for _ in ts]
    if kind == "spikes":  # two short spikes 100 points apart, inside a 300-point cool-down
        for start in (4000, 4100):
            for i in range(start, start + 3):
                xs[i] += 60
    else:  # a level shift that lasts
        for i in range(4000, 6000):
            xs[i] += 40
    return ts, xs


@pytest.mark.parametrize(("kind", "quiet", "cooldown", "expected"), [
    ("spikes", 30, 300, [4000, 4100]),  # the first spike is over: the second is reported
    ("spikes", 0, 300, [4000]),  # a plain cool-down hides the second
    ("shift", 30, 300, [4000]),  # a level shift stays remarkable: reported once
])
def test_a_quiet_cool_down_ends_after_an_episode_but_not_during_a_level_shift(
        kind: str, quiet: int, cooldown: int, expected: list[int]) -> None:
    ts, xs = _minute_series(kind)
    params = SeasonalParams(alpha=1e-5, rank_window=20000, cooldown=cooldown, quiet=quiet,
                            components=("level", "change", "sustained"))
    d = SeasonalDetector(params).fit(ts[:3000], xs[:3000])
    verdicts = d.score_many(ts[3000:], xs[3000:])
    assert [i + 3000 for i, v in enumerate(verdicts) if v.is_anomaly] == expected


def test_a_short_plain_cool_down_reports_a_level_shift_again_and_again() -> None:
    # what `quiet` avoids: a cool-down short enough to catch the second spike above
    ts, xs = _minute_series("shift")
    params = SeasonalParams(alpha=1e-5, rank_window=20000, cooldown=30,
                            components=("level", "change", "sustained"))
    d = SeasonalDetector(params).fit(ts[:3000], xs[:3000])
    assert sum(v.is_anomaly for v in d.score_many(ts[3000:], xs[3000:])) > 3
    with pytest.raises(ValueError, match="quiet"):
        SeasonalParams(quiet=-1)


def test_a_model_saved_inside_a_quiet_cool_down_continues_exactly(tmp_path: Path) -> None:
    ts, xs = _minute_series("spikes")
    params = SeasonalParams(alpha=1e-5, rank_window=20000, cooldown=300, quiet=30,
                            components=("level", "change", "sustained"))
    d = SeasonalDetector(params).fit(ts[:3000], xs[:3000])
    d.score_many(ts[3000:4020], xs[3000:4020])  # the first spike, then 17 calm points
    assert d.state()["calm"] > 0
    path = tmp_path / "model.json"
    model_file.save(model_file.Model("seasonal", {"load": d}), path)
    again = model_file.load(path).detectors["load"]
    assert again.score_many(ts[4020:], xs[4020:]) == d.score_many(ts[4020:], xs[4020:])


def _shallow_drop() -> tuple[list[float], list[float]]:
    rng = random.Random(12)
    ts = [1_700_000_000.0 + 60.0 * i for i in range(6000)]
    xs = [100.0 + rng.gauss(0, 3) for _ in ts]
    for i in range(4500, 4530):  # half an hour one standard deviation low
        xs[i] -= 3.0
    return ts, xs


@pytest.mark.parametrize(("scales", "expected"), [((), []), ((30,), [4526]), ((3, 30), [4526])])
def test_sustained_scales_find_a_long_shallow_drop_that_ten_points_miss(
        scales: tuple[int, ...], expected: list[int]) -> None:
    # a z of 1 for 30 points: 3.2 over ten of them (within chance at this bar), 5.5 over 30
    ts, xs = _shallow_drop()
    params = SeasonalParams(alpha=1e-5, rank_window=20000, scales=scales,
                            components=("level", "change", "sustained"))
    d = SeasonalDetector(params).fit(ts[:3000], xs[:3000])
    verdicts = d.score_many(ts[3000:], xs[3000:])
    assert [i + 3000 for i, v in enumerate(verdicts) if v.is_anomaly] == expected
    assert all(v.kind == "sustained" for v in verdicts if v.is_anomaly)
    with pytest.raises(ValueError, match="scales"):
        SeasonalParams(scales=(0,))
    with pytest.raises(ValueError, match="scales"):
        SeasonalParams(scales=("x",))  # type: ignore[arg-type]
    assert SeasonalParams(scales=[3, 30]).scales == (3, 30)  # type: ignore[arg-type]  # --param


def test_a_model_with_sustained_scales_continues_exactly(tmp_path: Path) -> None:
    ts, xs = _shallow_drop()
    params = SeasonalParams(alpha=1e-5, rank_window=20000, scales=(3, 30),
                            components=("level", "change", "sustained"))
    d = SeasonalDetector(params).fit(ts[:4515], xs[:4515])  # inside the drop
    path = tmp_path / "model.json"
    model_file.save(model_file.Model("seasonal", {"load": d}), path)
    again = model_file.load(path).detectors["load"]
    assert again.params.scales == (3, 30)
    assert again.score_many(ts[4515:], xs[4515:]) == d.score_many(ts[4515:], xs[4515:])


def test_the_sustained_component_restarts_when_the_weekly_baseline_speaks() -> None:
    ts, xs = daily_series(16, seed=10)
    d = SeasonalDetector()
    d.fit(ts[:13 * DAY_POINTS], xs[:13 * DAY_POINTS])
    before = d.state()["sustained_source"]
    d.fit(ts[13 * DAY_POINTS:], xs[13 * DAY_POINTS:])
    after = d.state()
    assert (before, after["sustained_source"]) == (2, 3)  # daily, then weekly
    # ranked since the switch only (plus the points still queued)
    ranked = len(after["ranks"]["sustained"]["values"]) + len(after["ranks"]["sustained"]["pending"])
    assert ranked < len(after["ranks"]["daily"]["values"])


def test_a_model_saved_inside_an_episode_continues_exactly(tmp_path: Path) -> None:
    ts, xs = daily_series(9, seed=6)
    at = 7 * DAY_POINTS
    xs[at + 5] += 150
    d = SeasonalDetector().fit(ts[:at], xs[:at])
    assert [v.is_anomaly for v in d.score_many(ts[at:at + 10], xs[at:at + 10])].count(True) == 1
    path = tmp_path / "model.json"
    model_file.save(model_file.Model("seasonal", {"load": d}), path)
    again = model_file.load(path).detectors["load"]
    assert again.state()["rank_skip"] > 0  # the episode's z-scores are still left out
    assert again.score_many(ts[at + 10:], xs[at + 10:]) == d.score_many(ts[at + 10:], xs[at + 10:])


# ---------------------------------------------------------------- model files
def test_model_round_trip_continues_exactly_where_it_stopped(tmp_path: Path) -> None:
    ts, xs = daily_series(9, seed=6)
    at = 7 * DAY_POINTS
    xs[at + 50] += 150
    trained = SeasonalDetector().fit(ts[:at], xs[:at])
    path = tmp_path / "model.json"
    model_file.save(model_file.Model("seasonal", {"load": trained}, info={"step": 300}), path)
    loaded = model_file.load(path)
    assert loaded.kind == "seasonal"
    assert loaded.info == {"step": 300}
    again = loaded.detectors["load"]
    assert again.score_many(ts[at:], xs[at:]) == trained.score_many(ts[at:], xs[at:])
    assert b"pickle" not in path.read_bytes()


def test_a_model_file_of_another_version_is_refused_with_what_to_do(tmp_path: Path) -> None:
    ts, xs = daily_series(2)
    path = tmp_path / "model.json"
    model_file.save(model_file.Model("seasonal", {"m": SeasonalDetector().fit(ts, xs)}), path)
    body = json.loads(path.read_text())
    body["version"] = 99
    path.write_text(json.dumps(body))
    with pytest.raises(model_file.ModelFormatError, match=r"format version 99.*train the model again"):
        model_file.load(path)
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(model_file.ModelFormatError, match="not a mestres-observability anomaly model"):
        model_file.load(path)
    path.write_bytes(b"\x80\x04\x95 pickle")
    with pytest.raises(model_file.ModelFormatError, match="not JSON"):
        model_file.load(path)
    body["version"] = model_file.FORMAT_VERSION
    del body["metrics"]["m"]["level"]
    path.write_text(json.dumps(body))
    with pytest.raises(model_file.ModelFormatError, match="damaged"):
        model_file.load(path)


# ---------------------------------------------------------------- IsolationForest
def test_isolation_forest_is_fitted_on_history_only_and_round_trips(tmp_path: Path) -> None:
    require_module("sklearn")
    from mestres_observability.anomaly.forest import ForestParams, IsolationForestDetector

    ts, xs = daily_series(9, seed=7)
    at = 7 * DAY_POINTS
    xs[at + 100] += 120
    d = IsolationForestDetector(ForestParams(cooldown=50)).fit(ts[:at], xs[:at])
    verdicts = d.score_many(ts[at:], xs[at:])
    flagged = [i for i, v in enumerate(verdicts) if v.is_anomaly]
    assert flagged[0] in (100, 101)  # the spike, or the next point (its window holds the spike)
    assert len(flagged) <= 10  # not a fixed share of the batch (the seed's contamination=0.1)
    path = tmp_path / "forest.json"
    d2 = IsolationForestDetector(ForestParams(cooldown=50)).fit(ts[:at], xs[:at])
    model_file.save(model_file.Model("isolation-forest", {"m": d2}), path)
    loaded = model_file.load(path).detectors["m"]
    assert loaded.score_many(ts[at:], xs[at:]) == verdicts  # refitted with its seed: same scores


def test_isolation_forest_leaves_gaps_unscored_and_needs_history() -> None:
    require_module("sklearn")
    from mestres_observability.anomaly.forest import IsolationForestDetector

    ts, xs = daily_series(3, seed=8)
    with pytest.raises(ValueError, match="needs at least 30 points"):
        IsolationForestDetector().fit(ts[:15], xs[:15])
    d = IsolationForestDetector().fit(ts[:500], xs[:500])
    window = [xs[500], math.nan, xs[502]]
    verdicts = d.score_many(ts[500:503], window)
    assert not math.isnan(verdicts[0].score)
    assert all(math.isnan(v.score) for v in verdicts[1:])  # a gap in the rolling window: no score
    with pytest.raises(RuntimeError, match="fit"):
        IsolationForestDetector().score_many([1.0], [1.0])


# ---------------------------------------------------------------- the optional extra
def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, check=False, env=env)


def test_the_library_never_imports_numpy_or_scikit_learn() -> None:
    proc = _python("""
        import importlib, json, pkgutil, sys
        import mestres_observability as m
        skipped = []
        for info in pkgutil.walk_packages(m.__path__, "mestres_observability."):
            if info.name.startswith(("mestres_observability.anomaly", "mestres_observability.django")):
                continue
            try:
                importlib.import_module(info.name)
            except ImportError as exc:  # a framework adapter whose framework is missing
                skipped.append(f"{info.name}: {exc}")
        import mestres_observability.anomaly, mestres_observability.anomaly.seasonal
        import mestres_observability.anomaly.nab, mestres_observability.anomaly.model
        print(json.dumps({"loaded": sorted(k for k in sys.modules
                                           if k.split(".")[0] in ("numpy", "sklearn", "scipy")),
                          "skipped": skipped}))
    """)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []


def test_a_missing_extra_names_the_pip_command() -> None:
    proc = _python("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("numpy", "sklearn"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        from mestres_observability import MissingExtraError
        from mestres_observability.anomaly.seasonal import SeasonalDetector
        SeasonalDetector().update(0.0, 1.0)  # the seasonal detector needs no extra
        try:
            import mestres_observability.anomaly.forest
        except MissingExtraError as exc:
            print(exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'mestres-observability[anomaly]'" in proc.stdout
