"""Multiprocess mode: merged dead workers, exact totals, bounded scrapes, init checks.

prometheus_client chooses multiprocess mode when it is imported, so everything
that needs the mode runs in a fresh interpreter (``_run``); the file-level
merge and directory handling are tested in-process on real
prometheus_client files written with ``MmapedDict``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from mestres_observability import multiprocess as mp
from mestres_observability.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")


def _run(code: str, mpdir: Path | None, *, check: bool = True, timeout: float = 120,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.pop("PROMETHEUS_MULTIPROC_DIR", None)
    full.pop("prometheus_multiproc_dir", None)
    if mpdir is not None:
        full["PROMETHEUS_MULTIPROC_DIR"] = str(mpdir)
    full.update(env or {})
    full["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _private_dir(tmp_path: Path) -> Path:
    d = tmp_path / "prom"
    d.mkdir(mode=0o700)
    return d


def _write(path: Path, entries: dict[str, tuple[float, float]]) -> None:
    d = MmapedDict(str(path))
    for key, (value, ts) in entries.items():
        d.write_value(key, value, ts)
    d.close()


def _key(labels: dict[str, str], name: str = "jobs_total", metric: str = "jobs") -> str:
    return mmap_key(metric, name, list(labels), list(labels.values()), "Jobs.")


def _values(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    files = [str(p) for p in path.glob("*.db")]
    out = {}
    for family in MultiProcessCollector.merge(files, accumulate=True):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# ---------------------------------------------------------------- file-level merge (in-process)
def test_merge_keeps_every_count_and_removes_dead_files(tmp_path: Path) -> None:
    d = _private_dir(tmp_path)
    for pid in (101, 102, 103):
        _write(d / f"counter_{pid}.db", {_key({"k": "a"}): (pid - 100.0, 0.0)})
        _write(d / f"gauge_livesum_{pid}.db", {_key({}, "busy", "busy"): (1.0, 0.0)})
        _write(d / f"gauge_all_{pid}.db", {_key({}, "g", "g"): (5.0, 0.0)})
    before = _values(d)[("jobs_total", (("k", "a"),))]
    assert mp.mark_process_dead([101, 102], str(d)) == 6
    names = sorted(p.name for p in d.glob("*.db"))
    assert names == ["counter_103.db", "counter_archive.db", "gauge_all_103.db",
                     "gauge_livesum_103.db"]
    after = _values(d)
    assert after[("jobs_total", (("k", "a"),))] == before == 6.0
    assert after[("busy", ())] == 1.0  # only the live worker's in-progress value
    # a second merge folds into the same archive
    assert mp.mark_process_dead(103, str(d)) == 3
    assert _values(d)[("jobs_total", (("k", "a"),))] == 6.0
    assert mp.mark_process_dead(103, str(d)) == 0


def test_mostrecent_gauges_merge_by_timestamp_and_max_min_sum_by_mode(tmp_path: Path) -> None:
    d = _private_dir(tmp_path)
    level = _key({"product_id": "p"}, "inventory_level", "inventory_level")
    _write(d / "gauge_mostrecent_201.db", {level: (7.0, 2000.0)})
    _write(d / "gauge_mostrecent_202.db", {level: (3.0, 1000.0)})  # older, merged later
    _write(d / "gauge_max_201.db", {_key({}, "m", "m"): (4.0, 0.0)})
    _write(d / "gauge_max_202.db", {_key({}, "m", "m"): (9.0, 0.0)})
    _write(d / "gauge_sum_201.db", {_key({}, "s", "s"): (4.0, 0.0)})
    _write(d / "gauge_sum_202.db", {_key({}, "s", "s"): (9.0, 0.0)})
    mp.mark_process_dead(201, str(d))
    mp.mark_process_dead(202, str(d))
    v = _values(d)
    assert v[("inventory_level", (("product_id", "p"),))] == 7.0
    assert v[("m", ())] == 9.0
    assert v[("s", ())] == 13.0


def test_histogram_buckets_are_merged_exactly(tmp_path: Path) -> None:
    d = _private_dir(tmp_path)
    for pid, n in ((301, 2.0), (302, 5.0)):
        _write(d / f"histogram_{pid}.db", {
            mmap_key("lat", "lat_bucket", ["le"], ["0.5"], "L"): (n, 0.0),
            mmap_key("lat", "lat_bucket", ["le"], ["+Inf"], "L"): (1.0, 0.0),
            mmap_key("lat", "lat_sum", [], [], "L"): (n / 10, 0.0),
        })
    before = _values(d)
    mp.mark_process_dead([301, 302], str(d))
    assert _values(d) == before
    assert before[("lat_count", ())] == 9.0


@settings(max_examples=40, deadline=None)
@given(
    workers=st.lists(
        st.tuples(
            st.dictionaries(st.sampled_from(["a", "b", "c"]),
                            st.integers(min_value=0, max_value=10**6), max_size=3),
            st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
            st.floats(min_value=1.0, max_value=2e9, allow_nan=False),
        ),
        min_size=1, max_size=8,
    ),
    batches=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=8),
)
def test_merging_in_any_grouping_preserves_totals_and_newest_gauge(
    workers: list[tuple[dict[str, int], float, float]], batches: list[int],
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        level = _key({}, "level", "level")
        for i, (counts, value, ts) in enumerate(workers):
            pid = 1000 + i
            _write(d / f"counter_{pid}.db",
                   {_key({"k": k}): (float(n), 0.0) for k, n in counts.items()})
            _write(d / f"gauge_mostrecent_{pid}.db", {level: (value, ts)})
        before = _values(d)
        pids = [1000 + i for i in range(len(workers))]
        for size in batches:  # merge the dead in arbitrary groups, the rest at the end
            group, pids = pids[:size], pids[size:]
            mp.mark_process_dead(group, tmp)
        mp.mark_process_dead(pids, tmp)
        after = _values(d)
        newest = max(workers, key=lambda w: w[2])[2]
        assert {k: v for k, v in after.items() if k[0] != "level"} == \
            {k: v for k, v in before.items() if k[0] != "level"}
        assert after[("level", ())] in {w[1] for w in workers if w[2] == newest}
        assert {p.name for p in d.glob("*.db")} == {"counter_archive.db",
                                                   "gauge_mostrecent_archive.db"}


def test_interrupted_merge_is_finished_without_double_counting(tmp_path: Path) -> None:
    d = _private_dir(tmp_path)
    key = _key({"k": "a"})
    _write(d / "counter_401.db", {key: (4.0, 0.0)})
    _write(d / "counter_402.db", {key: (10.0, 0.0)})
    # simulate a crash after the archive was renamed into place, before the sources went
    journal = {"sources": {"counter": ["counter_401.db"]}, "targets": {"counter": 1},
               "remove": ["counter_401.db"]}
    (d / "merge.journal").write_text(json.dumps(journal))
    mp._write_archive(str(d / "counter_archive.db"), {key: (4.0, 0.0)}, 1)
    mp.mark_process_dead(402, str(d))  # recovers first, then merges 402
    assert not (d / "merge.journal").exists()
    assert sorted(p.name for p in d.glob("*.db")) == ["counter_archive.db"]
    assert _values(d)[("jobs_total", (("k", "a"),))] == 14.0


def test_interrupted_merge_before_the_rename_is_redone(tmp_path: Path) -> None:
    d = _private_dir(tmp_path)
    key = _key({"k": "a"})
    _write(d / "counter_501.db", {key: (4.0, 0.0)})
    journal = {"sources": {"counter": ["counter_501.db"]}, "targets": {"counter": 1},
               "remove": ["counter_501.db"]}
    (d / "merge.journal").write_text(json.dumps(journal))
    mp.mark_process_dead(999999, str(d))
    assert sorted(p.name for p in d.glob("*.db")) == ["counter_archive.db"]
    assert _values(d)[("jobs_total", (("k", "a"),))] == 4.0


def test_pid_reuse_is_detected_from_the_start_time(tmp_path: Path) -> None:
    d = _private_dir(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid = sleeper.pid
        _write(d / f"counter_{pid}.db", {_key({}): (1.0, 0.0)})
        created = mp._create_time(pid)
        assert created is not None
        (d / f"proc_{pid}_{created}.alive").touch()
        assert pid in mp.live_pids(str(d))
        (d / f"proc_{pid}_{created}.alive").unlink()
        (d / f"proc_{pid}_{created - 500}.alive").touch()  # written by an earlier process
        assert pid not in mp.live_pids(str(d))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert pid not in mp.live_pids(str(d))


# ---------------------------------------------------------------- directory handling
def test_prepare_directory_creates_0700_and_wipes_only_its_own_files(tmp_path: Path) -> None:
    d = tmp_path / "new"
    mp.prepare_directory(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    (d / "counter_1.db").write_bytes(b"x")
    (d / "proc_1_2.alive").touch()
    (d / "merge.lock").touch()
    (d / "notes.txt").write_text("keep me")
    outside = tmp_path / "outside.db"
    outside.write_text("keep")
    (d / "link.db").symlink_to(outside)
    mp.prepare_directory(d)
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]
    assert outside.read_text() == "keep"


def test_prepare_directory_refuses_a_symlink(tmp_path: Path) -> None:
    real = _private_dir(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ConfigurationError, match="PROMETHEUS_MULTIPROC_DIR"):
        mp.prepare_directory(link)


def _foreign_world_writable(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        d = tmp_path / "shared"
        d.mkdir()
        os.chown(d, 65534, 65534)
        os.chmod(d, 0o1777)
        return d
    import tempfile

    t = Path(tempfile.gettempdir())
    st = t.stat()
    if not st.st_mode & stat.S_IWOTH or st.st_uid == os.geteuid():
        pytest.skip("no world-writable directory owned by another user to test with")
    return t


def _error_in_subprocess(call: str, mpdir: Path | None, *setup: str) -> str:
    """What a fresh interpreter prints (exception class and message) when ``call``,
    after the ``setup`` lines, raises with ``PROMETHEUS_MULTIPROC_DIR=mpdir``."""
    lines = ["from mestres_observability import init_observability", *setup,
             "try:", f"    {call}", "except Exception as exc:",
             "    print(type(exc).__name__, exc)"]
    return _run("\n".join(lines), mpdir).stdout


def test_world_writable_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    d = _foreign_world_writable(tmp_path)
    with pytest.raises(ConfigurationError, match="world-writable"):
        mp.prepare_directory(d, wipe=False)
    out = _error_in_subprocess("init_observability(configure_logging=False)", d)
    assert "ConfigurationError" in out
    assert "PROMETHEUS_MULTIPROC_DIR" in out


# ---------------------------------------------------------------- init checks (subprocesses)
def test_missing_directory_fails_at_init_naming_the_variable(tmp_path: Path) -> None:
    out = _error_in_subprocess(
        "check_environment(ObservabilityConfig())", tmp_path / "missing",
        "from mestres_observability.multiprocess import check_environment",
        "from mestres_observability import ObservabilityConfig",
    )
    assert "ConfigurationError" in out
    assert "PROMETHEUS_MULTIPROC_DIR" in out
    assert "does not exist" in out


def test_variable_set_after_import_fails_loudly(tmp_path: Path) -> None:
    d = _private_dir(tmp_path)
    out = _error_in_subprocess("init_observability(configure_logging=False)", None,
                               "import os", f"os.environ['PROMETHEUS_MULTIPROC_DIR'] = {str(d)!r}")
    assert "ConfigurationError" in out
    assert "after prometheus_client" in out


def test_expose_global_registry_is_refused(tmp_path: Path) -> None:
    out = _error_in_subprocess(
        "init_observability(configure_logging=False, expose_global_registry=True)",
        _private_dir(tmp_path),
    )
    assert "ConfigurationError" in out
    assert "expose_global_registry" in out


# ---------------------------------------------------------------- real workers (subprocesses)
_WORKERS = """
import os, time, json, statistics
from mestres_observability import init_observability
from mestres_observability.testing import sample_value
from mestres_observability import multiprocess as mp
from prometheus_client.multiprocess import MultiProcessCollector
obs = init_observability(service_name="svc", configure_logging=False, system_metrics=False,
                         process_metrics=False)
DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"]
LABELS = ("GET", "/orders/{id}", "200")

def worker(n):
    pid = os.fork()
    if pid == 0:
        obs.metrics.http_requests_total.inc(LABELS, n)
        obs.metrics.http_request_duration_seconds.observe(LABELS, 0.01 * (n % 7))
        obs.metrics.inventory_level.set(("beans",), n)
        obs.metrics.http_requests_in_progress.inc(LABELS[:2])
        os._exit(0)
    return pid

def scrape_seconds(collect, repeat=5):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        list(collect())
        times.append(time.perf_counter() - t)
    return min(times)

def in_progress():
    try:
        return sample_value("http_requests_in_progress", method="GET", endpoint="/orders/{id}")
    except KeyError:  # no live worker has the series
        return 0.0

def total():
    try:
        return sample_value("http_requests_total", method="GET", endpoint="/orders/{id}",
                            status="200")
    except KeyError:  # nothing counted yet
        return 0.0
"""


@pytest.mark.slow
def test_hundreds_of_recycled_workers_keep_scrapes_bounded_and_totals_exact(
    tmp_path: Path,
) -> None:
    d = _private_dir(tmp_path)
    proc = _run(_WORKERS + """
raw = MultiProcessCollector(None)  # prometheus_client alone, for comparison
base = scrape_seconds(obs.metric_sources()[0].collect)
expected = 0
pids = []
for n in range(1, 301):
    pids.append(worker(n))
    expected += n
for p in pids:
    os.waitpid(p, 0)
files_before = len([f for f in os.listdir(DIR) if f.endswith(".db")])
raw_time = scrape_seconds(raw.collect, repeat=3)
for p in pids:  # what the gunicorn child_exit hook does
    mp.mark_process_dead(p)
merged_time = scrape_seconds(obs.metric_sources()[0].collect)
files_after = len([f for f in os.listdir(DIR) if f.endswith(".db")])
print(json.dumps({"base": base, "raw": raw_time, "merged": merged_time, "expected": expected,
                  "total": total(), "files_before": files_before, "files_after": files_after,
                  "in_progress": in_progress(),
                  "count": sample_value("http_request_duration_seconds_count", method="GET",
                                        endpoint="/orders/{id}", status="200")}))
""", d)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["total"] == r["expected"] == 45150
    assert r["count"] == 300
    assert r["in_progress"] == 0  # dead workers' live gauges are gone
    assert r["files_before"] >= 1200
    assert r["files_after"] <= 10
    # prometheus_client alone reads 1200 files; merged, the scrape is back near the baseline
    assert r["merged"] < r["raw"] / 5
    assert r["merged"] < max(5 * r["base"], r["base"] + 0.02)


@pytest.mark.slow
def test_scrape_time_detection_without_hooks_and_no_dip_under_concurrent_merges(
    tmp_path: Path,
) -> None:
    d = _private_dir(tmp_path)
    proc = _run(_WORKERS + """
import threading
seen = []
stop = threading.Event()
reader_pid = os.fork()
if reader_pid == 0:  # a sibling worker that scrapes continuously (reaping included)
    try:
        values = []
        for _ in range(400):
            values.append(total())
        dips = sum(1 for a, b in zip(values, values[1:]) if b < a)
        print(json.dumps({"dips": dips, "last": values[-1]}), flush=True)
    except BaseException as exc:
        import traceback; print(json.dumps({"error": traceback.format_exc()}), flush=True)
    finally:
        os._exit(0)
expected = 0
for n in range(1, 151):
    os.waitpid(worker(n), 0)
    expected += n
    if n % 10 == 0:
        obs.metric_sources()[0].collect()  # scrape-time reaping from this worker too
os.waitpid(reader_pid, 0)
final = total()
files = len([f for f in os.listdir(DIR) if f.endswith(".db")])
print(json.dumps({"expected": expected, "final": final, "files": files}))
""", d)
    lines = [json.loads(x) for x in proc.stdout.strip().splitlines()]
    assert not [x for x in lines if "error" in x], [x["error"] for x in lines if "error" in x]
    reader = next(x for x in lines if "dips" in x)
    main = next(x for x in lines if "final" in x)
    assert reader["dips"] == 0
    assert main["final"] == main["expected"] == 11325
    assert main["files"] <= 10  # dead workers were merged at scrape time


def test_callback_gauges_process_metrics_and_exemplars_are_served(tmp_path: Path) -> None:
    d = _private_dir(tmp_path)
    proc = _run("""
import os, json
from mestres_observability import init_observability
obs = init_observability(service_name="svc", configure_logging=False)
r, w = os.pipe()
done_r, done_w = os.pipe()
child = os.fork()
if child == 0:
    obs.metrics.http_requests_total.inc(("GET", "/a", "200"))
    os.write(done_w, b"x")  # counted: the parent may scrape now
    os.close(w)
    os.read(r, 1)  # stay alive until the parent has scraped
    os._exit(0)
os.read(done_r, 1)  # registered as live is not enough: wait for the child's increment
obs.set_active_connections(lambda: 7)
obs.metrics.exemplar_provider = lambda: {"trace_id": "abc123"}
obs.metrics.http_requests_total.inc(("GET", "/a", "200"))
obs.metrics.http_request_duration_seconds.observe(("GET", "/a", "200"), 0.2)
import time
from mestres_observability import multiprocess as mp
deadline = time.time() + 10
while child not in mp.live_pids() and time.time() < deadline:
    time.sleep(0.05)
body = obs.render_metrics(accept="application/openmetrics-text; version=1.0.0").body.decode()
kept = f"counter_{child}.db" in os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
os.close(w)
os.waitpid(child, 0)
print(json.dumps({"body": body, "child": child, "me": os.getpid(), "kept": kept}))
""", d)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    body = r["body"]
    lines = body.splitlines()
    assert r["kept"], "a scrape must never merge a live sibling's files"
    # the total of both processes, with the exemplar this (scraping) process recorded
    assert any(ln.startswith('http_requests_total{endpoint="/a",method="GET",status="200"} 2.0 '
                             '# {trace_id="abc123"} 1.0') for ln in lines), body
    assert any(ln.startswith("http_request_duration_seconds_bucket") and 'le="0.25"' in ln
               and 'trace_id="abc123"' in ln for ln in lines)
    assert "active_connections 7.0" in lines
    assert body.count("# TYPE active_connections gauge") == 1
    for pid in (r["child"], r["me"]):
        assert any(ln.startswith(f'process_resident_memory_bytes{{pid="{pid}"}}') for ln in lines)
    assert any(ln.startswith("memory_usage_bytes ") for ln in lines)


def test_instances_share_metric_objects_so_no_count_is_lost(tmp_path: Path) -> None:
    proc = _run("""
from mestres_observability import init_observability
from mestres_observability.testing import sample_value
a = init_observability(configure_logging=False)
a.metrics.orders_total.inc(("paid",), 2)
b = init_observability(configure_logging=False)
b.metrics.orders_total.inc(("paid",), 3)
a.metrics.orders_total.inc(("paid",), 1)
c1 = b.counter("jobs_done", "Jobs.", ["kind"])
assert c1 is init_observability(configure_logging=False).counter("jobs_done", "Jobs.", ["kind"])
print(sample_value("orders_total", status="paid"))
""", _private_dir(tmp_path))
    assert proc.stdout.strip().splitlines()[-1] == "6.0"


def test_gunicorn_module_makes_a_private_directory_when_unset(tmp_path: Path) -> None:
    proc = _run("""
import os, stat
import mestres_observability.gunicorn as g
d = os.environ["PROMETHEUS_MULTIPROC_DIR"]
print(d, oct(stat.S_IMODE(os.stat(d).st_mode)), os.path.basename(d).startswith("mestres-obs-"))
g._remove_temporary_dir()
print(os.path.exists(d))
""", None)
    first, second = proc.stdout.strip().splitlines()[-2:]
    assert first.endswith("0o700 True")
    assert second == "False"


def test_gunicorn_worker_exit_drains_flushes_and_never_raises() -> None:
    proc = _run("""
import os
from types import SimpleNamespace
import mestres_observability.gunicorn as g
from mestres_observability import init_observability
obs = init_observability(configure_logging=False, system_metrics=False, process_metrics=False)
print(obs.health.probe("readiness").status, obs.closed)
worker = SimpleNamespace(pid=os.getpid())
g.worker_exit(None, worker)
print(obs.health.probe("readiness").status, obs.health.probe("liveness").status, obs.closed)
again = init_observability(configure_logging=False, system_metrics=False, process_metrics=False)
def broken(timeout=None):
    raise RuntimeError("boom")
again.shutdown = broken
g.worker_exit(None, worker)  # a failing shutdown is logged, never raised into gunicorn
print("survived")
g._remove_temporary_dir()
""", None)
    lines = proc.stdout.strip().splitlines()[-3:]
    assert lines == ["200 False", "503 200 True", "survived"]
    assert "shutting down worker" in proc.stderr


# ---------------------------------------------------------------- fork safety (gunicorn --preload)
_FORK_WITH_LOCKS_HELD = """
import gc, json, os, signal, threading, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a threaded process
from mestres_observability import init_observability
from mestres_observability import multiprocess as mp
from mestres_observability import system
from prometheus_client import values

obs = init_observability(service_name="svc", configure_logging=False, tracing_enabled=False)
obs.metrics.http_requests_total.inc(("GET", "/a", "200"))
PARENT = os.getpid()
gate = threading.Event()

def hung_in_parent():
    if os.getpid() == PARENT:
        gate.wait(30)
    return True

obs.health.add("db", hung_in_parent, timeout=0.5)
obs.health.probe("detailed")  # the run is now in flight (single-flight) and hangs in the parent

# what a scrape thread of the parent (the gunicorn master's metrics listener) may hold at a fork
value_lock = next(c.cell_contents for c in values.ValueClass.inc.__closure__
                  if type(c.cell_contents) is type(threading.Lock()))
locks = [value_lock, obs.health._lock, mp._state_lock, mp._cache_lock, system._workers_lock]
locks += [m._lock for _d, m in mp._cache.values() if hasattr(m, "_lock")]
collectors = [o for o in gc.get_objects()
              if isinstance(o, (system.SystemCollector, system.ProcessCollector))]
assert collectors
locks += [lk for c in collectors for lk in (c._lock, getattr(c, "_read_lock", None))
          if lk is not None]
held = threading.Event()
release = threading.Event()

def holder():
    with mp._flock(os.environ["PROMETHEUS_MULTIPROC_DIR"], exclusive=False):
        for lk in locks:
            lk.acquire()
        held.set()
        release.wait(60)
        for lk in reversed(locks):
            lk.release()

threading.Thread(target=holder, daemon=True).start()
assert held.wait(10)
child = os.fork()
if child == 0:
    signal.alarm(20)  # a deadlock ends the child with SIGALRM
    out = {}
    obs.metrics.http_requests_total.inc(("GET", "/b", "200"))  # a new child series: metric + value locks
    out["open_lock_fds"] = len(mp._lock_fds)
    t = time.monotonic()
    resp = obs.health.probe("detailed")
    out["probe_s"] = time.monotonic() - t
    out["probe"] = resp.status
    out["db"] = json.loads(resp.body)["checks"]["db"]["status"]
    body = obs.render_metrics().body.decode()
    out["scraped"] = 'http_requests_total{endpoint="/b",method="GET",status="200"} 1.0' in body
    print(json.dumps(out), flush=True)
    os._exit(0)
_, status = os.waitpid(child, 0)
release.set()
gate.set()
print(json.dumps({"child_status": status}))
"""


def test_a_forked_worker_never_inherits_a_held_lock_or_an_in_flight_check(tmp_path: Path) -> None:
    """RELIABILITY #33: every lock a parent thread may hold at the fork is fresh in the child.

    A thread of the parent holds the health registry lock, prometheus_client's
    value lock, the metric locks, the system collectors' locks and a shared
    merge ``flock`` while the process forks, and a health check is in flight
    (hung) in the parent. The child must count, probe and scrape without
    waiting for any of them, and run the check itself.
    """
    proc = _run(_FORK_WITH_LOCKS_HELD, _private_dir(tmp_path), timeout=60)
    lines = [json.loads(x) for x in proc.stdout.strip().splitlines()]
    status = next(x["child_status"] for x in lines if "child_status" in x)
    assert os.WIFEXITED(status), (status, proc.stderr)
    assert os.WEXITSTATUS(status) == 0, (status, proc.stderr)
    child = next(x for x in lines if "probe" in x)
    assert child["open_lock_fds"] == 0
    assert child["probe"] == 200
    assert child["db"] == "healthy"  # run again in the child, not reported as a timeout
    assert child["probe_s"] < 1.0
    assert child["scraped"]


# ---------------------------------------------------------------- a full directory (issue 10 #1)
_FILL_THE_DIRECTORY = """
import json, os
from flask import Flask
from mestres_observability import _compat, init_observability
app = Flask(__name__)
obs = init_observability(app, service_name="svc", configure_logging=False, tracing_enabled=False,
                         system_metrics=False, process_metrics=False, access_log=False)
jobs = obs.counter("jobs", "Jobs.", ["id"])
jobs.labels("early").inc(5)
obs.metrics.http_requests_total.inc(("GET", "/a", "200"))
for i in range(20_000):  # thousands of label sets: far more than 256 KiB holds
    jobs.labels(f"job-{i:06d}").inc()
jobs.labels("early").inc(2)  # an existing series still updates
obs.histogram("late_seconds", "Late.", ["k"]).labels("x").observe(0.1)  # a new file kind
obs.metrics.http_requests_total.inc(("GET", "/a", "200"))  # and a library one
response = app.test_client().get("/metrics")
body = response.get_data(as_text=True)
print(json.dumps({"status": response.status_code, "body": body,
                  "dropped": _compat.values_dropped_total(),
                  "files": {n: os.path.getsize(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], n))
                            for n in os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])}}))
"""


def test_a_full_multiprocess_directory_drops_new_series_and_keeps_serving(
        tmp_path: Path) -> None:
    """Issue 10 #1: on a full filesystem prometheus_client's sparse mmap write ends the
    process with SIGBUS (exit 135). Here the process lives, serves what it has, counts."""
    from tests._support import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "small", "256k") as d:
        proc = _run(_FILL_THE_DIRECTORY, d, check=False)
    # before the fix: -7 (SIGBUS) within the first few thousand label sets
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["status"] == 200
    lines = r["body"].splitlines()
    assert 'jobs_total{id="early"} 7.0' in lines
    assert 'http_requests_total{endpoint="/a",method="GET",status="200"} 2.0' in lines
    kept = sum(1 for ln in lines if ln.startswith('jobs_total{id="job-'))
    assert 500 < kept < 20_000  # the earlier series are there, the rest were dropped
    # every dropped series is counted: the jobs that did not fit and the histogram's series
    assert r["dropped"] >= 20_000 - kept
    errors = f'mestres_observability_errors_total{{component="multiprocess"}} {float(r["dropped"])}'
    assert errors in lines
    assert proc.stderr.count("is full: new label sets are not recorded") == 1  # logged once
    # the histogram's file could not be created: left empty (scrapes skip it), no crash
    assert [size for name, size in r["files"].items() if name.startswith("histogram_")] == [0]


# ---------------------------------------------------------------- metrics_port with several workers
_PORT_WORKER = """
import json, logging, os, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
from mestres_observability import init_observability
from mestres_observability import _metrics_server as ms
ms.RETRY_INTERVAL = 0.2
obs = init_observability(service_name="svc", configure_logging=False, tracing_enabled=False,
                         metrics_port=int(sys.argv[1]))
obs.metrics.http_requests_total.inc(("GET", "/a", "200"))
print(json.dumps({"started": ms.start_metrics_server(obs), "role": ms.metrics_server_role(),
                  "again": ms.start_metrics_server(obs)}), flush=True)
deadline = time.monotonic() + 60
while ms.metrics_server_role() != "serving" and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps({"role": ms.metrics_server_role()}), flush=True)
sys.stdin.readline()
"""


def _port_worker(mpdir: Path, port: int, log: Path) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.pop("prometheus_multiproc_dir", None)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(mpdir)
    env["PYTHONPATH"] = str(ROOT)
    with log.open("a") as err:
        return subprocess.Popen([sys.executable, "-c", textwrap.dedent(_PORT_WORKER), str(port)],
                                env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err, text=True)


def _end(proc: subprocess.Popen[str] | None) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def _line(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"worker exited ({proc.poll()})"
    return dict(json.loads(line))


def _scrape(port: int) -> tuple[int, str]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.status, resp.read().decode()


@pytest.mark.slow
def test_metrics_port_second_worker_stands_by_and_takes_over(tmp_path: Path) -> None:
    """uvicorn-style workers (no master hook): one serves the port, a sibling takes it over."""
    from tests._support import free_port

    d = _private_dir(tmp_path)
    port = free_port()
    first = _port_worker(d, port, tmp_path / "first.log")
    second = None
    try:
        assert _line(first) == {"started": ["127.0.0.1", port], "role": "serving",
                                "again": ["127.0.0.1", port]}
        assert _line(first) == {"role": "serving"}
        second = _port_worker(d, port, tmp_path / "second.log")
        assert _line(second) == {"started": None, "role": "standby", "again": None}
        status, body = _scrape(port)
        assert status == 200
        # both workers' counts, whichever of them serves
        assert 'http_requests_total{endpoint="/a",method="GET",status="200"} 2.0' in body
        first.kill()  # the serving worker dies (or is recycled)
        first.wait(10)
        assert _line(second) == {"role": "serving"}  # within a few retries
        status, body = _scrape(port)
        assert status == 200
        assert 'http_requests_total{endpoint="/a",method="GET",status="200"} 2.0' in body
    finally:
        _end(first)
        _end(second)
    log = (tmp_path / "second.log").read_text()
    assert log.count("is served by another worker") == 1, log
    assert log.count("now serves /metrics") == 1, log
    assert "Traceback" not in log, log
    assert "WARNING" not in log, log


@pytest.mark.slow
def test_metrics_port_held_by_another_program_warns_once_and_keeps_the_worker(
    tmp_path: Path,
) -> None:
    import socket

    d = _private_dir(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        worker = _port_worker(d, port, tmp_path / "worker.log")
        try:
            assert _line(worker) == {"started": None, "role": "standby", "again": None}
            from tests._support import wait_until

            wait_until(lambda: "held by another program" in (tmp_path / "worker.log").read_text(),
                       timeout=15, message="the standby's warning")
        finally:
            _end(worker)
    log = (tmp_path / "worker.log").read_text()
    assert log.count("held by another program") == 1, log
    assert "Traceback" not in log, log


def test_metrics_port_taken_outside_multiprocess_mode_is_a_configuration_error() -> None:
    import socket

    from mestres_observability._metrics_server import metrics_server_role, start_metrics_server
    from mestres_observability.testing import fresh_observability

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        with fresh_observability(metrics_port=port) as obs:
            with pytest.raises(ConfigurationError, match="metrics_port"):
                start_metrics_server(obs)
            assert metrics_server_role() == "off"


_FORK_SERVING_PARENT = """
import json, os, signal, time, urllib.request, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a threaded process
from mestres_observability import init_observability
from mestres_observability import _metrics_server as ms
obs = init_observability(service_name="svc", configure_logging=False, tracing_enabled=False,
                         metrics_port=0)
host, port = ms.start_metrics_server(obs)
child = os.fork()
if child == 0:
    signal.alarm(20)  # stop_metrics_server() waiting for the parent's loop would hang here
    out = {"role": ms.metrics_server_role(), "start": ms.start_metrics_server(obs),
           "fds": sorted(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None}
    out["listening_fd_open"] = any(
        os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") for fd in (out["fds"] or [])
        if os.path.exists(f"/proc/self/fd/{fd}"))
    ms.stop_metrics_server()
    out["after_stop"] = ms.metrics_server_role()
    print(json.dumps(out), flush=True)
    os._exit(0)
_, status = os.waitpid(child, 0)
with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
    code = resp.status
print(json.dumps({"child_status": status, "parent_scrape": code}))
"""


def test_a_worker_forked_from_the_serving_master_never_binds_or_blocks(tmp_path: Path) -> None:
    proc = _run(_FORK_SERVING_PARENT, _private_dir(tmp_path), timeout=60)
    lines = [json.loads(x) for x in proc.stdout.strip().splitlines()]
    parent = next(x for x in lines if "child_status" in x)
    child = next(x for x in lines if "role" in x)
    assert parent["child_status"] == 0, proc.stderr
    assert parent["parent_scrape"] == 200  # closing the child's copy left the parent serving
    assert child["role"] == "parent"
    assert child["start"] is None
    assert child["after_stop"] == "off"
    if child["fds"] is not None:
        assert not child["listening_fd_open"]


def test_a_full_directory_during_a_dead_worker_merge_is_a_warning_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn's child_exit on a full PROMETHEUS_MULTIPROC_DIR: the journal cannot be written,
    so nothing is merged or removed (the files stay, scrapes still read them), the partial
    journal is gone, and the master logs one warning without a traceback."""
    import errno
    import subprocess
    import sys

    from mestres_observability import multiprocess

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "counter_4242.db").write_bytes(b"\0" * 16)
    with monkeypatch.context() as m:
        m.setattr(multiprocess.os, "write", full)
        with pytest.raises(OSError):
            multiprocess.mark_process_dead(4242, str(tmp_path))
    assert (tmp_path / "counter_4242.db").exists()  # kept, unmerged
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    # the hook module switches its importer to multiprocess mode: run it in a child
    hook = tmp_path / "hook"
    hook.mkdir()
    script = (
        "import errno, logging, sys\n"
        "from types import SimpleNamespace\n"
        "logging.basicConfig(stream=sys.stdout, level=logging.WARNING,\n"
        "                    format='%(levelname)s %(message)s|%(exc_text)s')\n"
        "from mestres_observability import gunicorn as g\n"
        "def full(pid):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "g._mp.mark_process_dead = full\n"
        "g.child_exit(None, SimpleNamespace(pid=4242))\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(hook)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    lines = [line for line in out.stdout.splitlines() if "4242" in line]
    assert len(lines) == 1, out.stdout + out.stderr
    assert lines[0].startswith("WARNING ")
    assert "directory is full" in lines[0]
    assert "Traceback" not in out.stdout + out.stderr


def test_the_metrics_only_request_pass_counts_through_mmap_values(tmp_path: Path) -> None:
    """In multiprocess mode the pass's value holders are mmap values, not ``MutexValue``:
    the one-call recorders fall back on the holders' own ``inc`` (the in-progress gauge's
    ``+1`` and ``-1`` included) and the scrape reads each request once, the gauge back at 0."""
    d = _private_dir(tmp_path)
    proc = _run("""
import json
from mestres_observability import init_observability
from mestres_observability import _compat
from mestres_observability.http import http_state, start_request
from mestres_observability.testing import sample_value
obs = init_observability(service_name="svc", configure_logging=False, system_metrics=False,
                         process_metrics=False, tracing_enabled=False, access_log=False)
state = http_state(obs)
during = []
for _ in range(3):
    rp = start_request(state, "GET", "/orders/42", route="/orders/{id}")
    rp.activate()
    rp.track_in_progress()
    during.append(sample_value("http_requests_in_progress", method="GET",
                               endpoint="/orders/{id}"))
    rp.finish(200)
    rp.deactivate()
holder, add = state.in_progress_values[("GET", "/orders/{id}")]
print(json.dumps({
    "during": during,
    "after": sample_value("http_requests_in_progress", method="GET", endpoint="/orders/{id}"),
    "total": sample_value("http_requests_total", method="GET", endpoint="/orders/{id}",
                          status="200"),
    "count": sample_value("http_request_duration_seconds_count", method="GET",
                          endpoint="/orders/{id}", status="200"),
    "holder": type(holder).__name__, "add_is_inc": add == holder.inc,
    "done": [fn is None for _h, fn in state.done_recorders.values()],
}))
""", d)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["holder"] != "MutexValue"
    assert r["add_is_inc"]  # value_adder's fallback
    assert r["done"] == [True]  # request_done_recorder's fallback
    assert r["during"] == [1.0, 1.0, 1.0]
    assert r["after"] == 0.0
    assert r["total"] == 3.0
    assert r["count"] == 3.0
