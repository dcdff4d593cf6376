"""System (host/container) and process metrics computed at scrape time."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mestres_observability import system
from mestres_observability._fault import FaultReporter
from mestres_observability.config import ObservabilityConfig
from mestres_observability.observability import Observability
from mestres_observability.system import (
    ProcessCollector,
    SystemCollector,
    register_system_collectors,
)
from mestres_observability.testing import fresh_observability, sample_value
from tests._support import require_binary, wait_until

MiB = 1024 * 1024
SYSTEM_FAMILIES = ("memory_usage_bytes", "memory_usage_percent", "cpu_usage_percent",
                   "disk_usage_percent")
PROCESS_SAMPLES = ("process_cpu_seconds_total", "process_resident_memory_bytes",
                   "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
                   "process_start_time_seconds", "process_threads")

CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait guest guest_nice")
VMem = namedtuple("VMem", "total available percent used free")


# ---------------------------------------------------------------------- helpers
def _samples(obs: Observability) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Parse the text exposition: sample name -> {sorted labels: value}."""
    text = obs.render_metrics().body.decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _errors(obs: Observability) -> float:
    return sample_value("mestres_observability_errors_total", obs, component="system")


class _Faults(FaultReporter):
    """A FaultReporter bound to its own counter, remembering the kinds reported."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: list[str] = []
        self.bind(Counter("errs", "x", ["component"], registry=CollectorRegistry()))

    def report(self, component: str, kind: str, message: str = "",
               exc: BaseException | None = None, **fields: object) -> None:
        self.kinds.append(kind)


def _cgroup(tmp: Path, **files: str) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (tmp / name.replace("_", ".", 1)).write_text(text + "\n")
    return tmp


def _values(collector: Any) -> dict[str, dict[tuple[str, ...], float]]:
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in collector.collect():
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(s.labels.values())] = s.value
    return out


class _Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def host_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Make instances built in this test read an empty cgroup directory: host values."""
    empty = tmp_path / "no-cgroup"
    empty.mkdir()
    monkeypatch.setattr(system, "DEFAULT_CGROUP_ROOT", str(empty))
    return empty


def _disk_threads(mountpoint: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"mestres-obs-disk:{mountpoint}"]


# ---------------------------------------------------------------------- real scrape
def test_real_scrape_values_present_and_plausible() -> None:
    with fresh_observability() as obs:
        samples = _samples(obs)
        mem = samples["memory_usage_bytes"][()]
        assert 1 * MiB < mem <= psutil.virtual_memory().total
        assert 0 < samples["memory_usage_percent"][()] <= 100.0
        cpu = samples["cpu_usage_percent"][()]
        assert 0.0 <= cpu <= 100.0
        disk = samples["disk_usage_percent"][(("mountpoint", "/"),)]
        assert 0.0 <= disk <= 100.0
        assert disk == pytest.approx(psutil.disk_usage("/").percent, abs=1.0)

        me = psutil.Process()
        assert samples["process_start_time_seconds"][()] == pytest.approx(
            me.create_time(), abs=1.0)
        rss = samples["process_resident_memory_bytes"][()]
        assert 10 * MiB < rss <= samples["process_virtual_memory_bytes"][()]
        assert samples["process_threads"][()] >= 1
        assert samples["process_cpu_seconds_total"][()] > 0
        if os.name == "posix":
            assert 3 <= samples["process_open_fds"][()] <= samples["process_max_fds"][()]
        # sample_value sees the same families
        assert sample_value("process_threads") >= 1
        assert sample_value("memory_usage_bytes") > 0
        assert _errors(obs) == 0


def test_namespace_applies_to_system_families_not_process() -> None:
    with fresh_observability(namespace="shop") as obs:
        samples = _samples(obs)
        for base in SYSTEM_FAMILIES:
            assert f"shop_{base}" in samples
            assert base not in samples
        for name in PROCESS_SAMPLES:
            if name.endswith("_fds") and os.name != "posix":
                continue
            assert name in samples
            assert f"shop_{name}" not in samples


def test_switches_turn_families_off() -> None:
    with fresh_observability(system_metrics=False, process_metrics=False) as obs:
        samples = _samples(obs)
        assert not any(n in samples for n in SYSTEM_FAMILIES + PROCESS_SAMPLES)
    with fresh_observability(system_metrics=False) as obs:
        samples = _samples(obs)
        assert "process_threads" in samples
        assert "memory_usage_bytes" not in samples


def test_global_registry_exposure_keeps_each_process_family_once() -> None:
    with fresh_observability(expose_global_registry=True) as obs:
        text = obs.render_metrics().body.decode()
        for name in PROCESS_SAMPLES:
            if name.endswith("_fds") and os.name != "posix":
                continue
            assert text.count(f"# TYPE {name} ") == 1, name


def test_text_output_passes_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    with fresh_observability(namespace="shop", system_mountpoints=("/", str(tmp_path))) as obs:
        body = obs.render_metrics().body
    assert b"shop_disk_usage_percent" in body
    assert b"process_threads" in body
    proc = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


# ---------------------------------------------------------------------- registration
def test_registration_is_cheap_reads_nothing_and_starts_no_thread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def forbidden(*args: object, **kwargs: object) -> Any:
        raise AssertionError("read at registration")

    monkeypatch.setattr(psutil, "virtual_memory", forbidden)
    monkeypatch.setattr(psutil, "disk_usage", forbidden)
    monkeypatch.setattr(psutil, "Process", forbidden)
    before = {t.ident for t in threading.enumerate()}
    registry = CollectorRegistry(auto_describe=True)
    faults = _Faults()
    cfg = ObservabilityConfig(system_mountpoints=(str(tmp_path / "fresh-mount"),))
    register_system_collectors(registry, cfg, faults)
    assert {t.ident for t in threading.enumerate()} == before
    assert "memory_usage_bytes" in registry._names_to_collectors
    assert "process_cpu_seconds_total" in registry._names_to_collectors
    assert faults.kinds == []


# ---------------------------------------------------------------------- cgroup v2
def test_cgroup_memory_limit_and_cpu_quota(tmp_path: Path) -> None:
    cg = _cgroup(tmp_path, memory_max=str(200 * MiB), memory_current=str(100 * MiB),
                 memory_stat=f"anon {70 * MiB}\ninactive_file {20 * MiB}\nactive_file 1",
                 cpu_max="200000 100000", cpu_stat="usage_usec 1000000\nuser_usec 1")
    clock = _Clock(10.0)
    faults = _Faults()
    col = SystemCollector(ObservabilityConfig(system_mountpoints=()), faults,
                          cgroup_dir=cg, clock=clock)
    first = _values(col)
    assert first["memory_usage_bytes"][()] == 80 * MiB  # working set: current - inactive_file
    assert first["memory_usage_percent"][()] == pytest.approx(40.0)
    assert "cpu_usage_percent" not in first  # no time has passed since the baseline

    (cg / "cpu.stat").write_text("usage_usec 2000000\nuser_usec 1\n")
    clock.now = 11.0
    # 1 CPU-second in 1 s against a quota of 2 CPUs
    assert _values(col)["cpu_usage_percent"][()] == pytest.approx(50.0)
    (cg / "cpu.stat").write_text("usage_usec 2500000\n")
    clock.now = 13.0
    assert _values(col)["cpu_usage_percent"][()] == pytest.approx(12.5)
    (cg / "cpu.stat").write_text("usage_usec 2600000\n")
    clock.now = 13.01  # 0.1 CPU-s in 10 ms: a burst above the 2-CPU quota, shown as 100 %
    assert _values(col)["cpu_usage_percent"][()] == 100.0
    assert faults.kinds == []


def test_cgroup_max_falls_back_to_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cg = _cgroup(tmp_path, memory_max="max", memory_current=str(5 * MiB),
                 cpu_max="max 100000", cpu_stat="usage_usec 99")
    monkeypatch.setattr(psutil, "virtual_memory",
                        lambda: VMem(1000 * MiB, 750 * MiB, 25.0, 1, 1))
    times = [CpuTimes(10.0, 0.0, 10.0, 80.0, 0.0, 0.0, 0.0)]
    monkeypatch.setattr(psutil, "cpu_times", lambda percpu=False: times[-1])

    def shared_baseline(*args: object, **kwargs: object) -> float:
        raise AssertionError("psutil.cpu_percent's shared baseline must not be used")

    monkeypatch.setattr(psutil, "cpu_percent", shared_baseline)
    faults = _Faults()
    col = SystemCollector(ObservabilityConfig(system_mountpoints=()), faults, cgroup_dir=cg)
    v = _values(col)
    assert v["memory_usage_bytes"][()] == 250 * MiB
    assert v["memory_usage_percent"][()] == pytest.approx(25.0)
    assert v["cpu_usage_percent"][()] == pytest.approx(20.0)  # no delta yet: since boot
    # 30 busy (of which 10 guest, already inside user) + 10 idle + 10 iowait
    times.append(CpuTimes(40.0, 0.0, 10.0, 90.0, 10.0, 10.0, 0.0))
    assert _values(col)["cpu_usage_percent"][()] == pytest.approx(100.0 * 30 / 50)
    times.append(CpuTimes(40.0, 0.0, 10.0, 190.0, 10.0, 10.0, 0.0))
    assert _values(col)["cpu_usage_percent"][()] == pytest.approx(0.0)
    assert faults.kinds == []


def test_each_collector_keeps_its_own_cpu_baseline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    times = [CpuTimes(0.0, 0.0, 0.0, 100.0, 0.0, 0.0, 0.0)]
    monkeypatch.setattr(psutil, "cpu_times", lambda percpu=False: times[-1])
    cfg = ObservabilityConfig(system_mountpoints=())
    a = SystemCollector(cfg, _Faults(), cgroup_dir=tmp_path)
    b = SystemCollector(cfg, _Faults(), cgroup_dir=tmp_path)
    times.append(CpuTimes(50.0, 0.0, 0.0, 150.0, 0.0, 0.0, 0.0))
    assert _values(a)["cpu_usage_percent"][()] == pytest.approx(50.0)
    times.append(CpuTimes(50.0, 0.0, 0.0, 250.0, 0.0, 0.0, 0.0))
    # a's baseline moved, b's did not: a sees an idle interval, b the whole span
    assert _values(a)["cpu_usage_percent"][()] == pytest.approx(0.0)
    assert _values(b)["cpu_usage_percent"][()] == pytest.approx(100.0 * 50 / 200)


def test_unreadable_cgroup_file_omits_only_that_family(tmp_path: Path) -> None:
    cg = _cgroup(tmp_path, memory_max=str(100 * MiB), cpu_max="max 100000")
    (cg / "memory.current").mkdir()  # reading it raises IsADirectoryError
    faults = _Faults()
    v = _values(SystemCollector(ObservabilityConfig(system_mountpoints=()), faults,
                                cgroup_dir=cg))
    assert "memory_usage_bytes" not in v
    assert "memory_usage_percent" not in v
    assert "cpu_usage_percent" in v
    assert faults.kinds == ["memory"]


_cgroup_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["max", "max 100000", "0 100000", "100000 0", "-5", "1e3", "",
                     "usage_usec", "usage_usec x", "usage_usec -10"]),
    st.integers(-(2**70), 2**70).map(str),
    st.tuples(st.integers(-10, 10**7), st.integers(-10, 10**7)).map(lambda t: f"{t[0]} {t[1]}"),
)


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({
    "memory.max": _cgroup_text, "memory.current": _cgroup_text, "memory.stat": _cgroup_text,
    "cpu.max": _cgroup_text, "cpu.stat": _cgroup_text,
}), st.floats(0.0, 10.0))
def test_arbitrary_cgroup_contents_never_break_the_scrape(files: dict[str, str],
                                                          step: float) -> None:
    with tempfile.TemporaryDirectory() as d:
        for name, text in files.items():
            Path(d, name).write_text(text, encoding="utf-8", errors="replace")
        clock = _Clock()
        registry = CollectorRegistry()
        col = SystemCollector(ObservabilityConfig(system_mountpoints=()), _Faults(),
                              cgroup_dir=d, clock=clock)
        registry.register(col)
        for _ in range(2):
            clock.now += step
            families = list(col.collect())
            for family in families:
                for s in family.samples:
                    assert math.isfinite(s.value)
                    assert s.value >= 0
            text = generate_latest(registry).decode()
            list(text_string_to_metric_families(text))


# ---------------------------------------------------------------------- faults through the instance
@pytest.mark.parametrize("error", [psutil.AccessDenied(1), OSError(5, "I/O error")])
def test_memory_read_fault_omits_only_memory(
    monkeypatch: pytest.MonkeyPatch, host_mode: Path, error: Exception
) -> None:
    def broken() -> Any:
        raise error

    monkeypatch.setattr(psutil, "virtual_memory", broken)
    with fresh_observability() as obs:
        samples = _samples(obs)
        assert "memory_usage_bytes" not in samples
        assert "memory_usage_percent" not in samples
        assert "cpu_usage_percent" in samples
        assert "disk_usage_percent" in samples
        assert "process_resident_memory_bytes" in samples
        assert _errors(obs) == 1
        _samples(obs)
        assert _errors(obs) == 2  # counted at every scrape (logged once)


def test_cpu_read_fault_omits_only_cpu(monkeypatch: pytest.MonkeyPatch, host_mode: Path) -> None:
    def broken(percpu: bool = False) -> Any:
        raise OSError(13, "Permission denied: '/proc/stat'")

    monkeypatch.setattr(psutil, "cpu_times", broken)
    with fresh_observability() as obs:
        samples = _samples(obs)
        assert "cpu_usage_percent" not in samples
        assert "memory_usage_bytes" in samples
        assert _errors(obs) == 1


def test_process_family_fault_omits_only_that_family(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(psutil.Process, "num_fds"):
        pytest.skip("no file descriptor counts on this platform")

    def denied(self: psutil.Process) -> int:
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "num_fds", denied)
    with fresh_observability() as obs:
        samples = _samples(obs)
        assert "process_open_fds" not in samples
        assert "process_max_fds" in samples
        assert "process_threads" in samples
        assert _errors(obs) == 1


def test_budget_skips_families_that_would_start_late(
    monkeypatch: pytest.MonkeyPatch, host_mode: Path
) -> None:
    real = psutil.virtual_memory

    def slow() -> Any:
        time.sleep(0.3)
        return real()

    monkeypatch.setattr(psutil, "virtual_memory", slow)
    with fresh_observability(system_scrape_budget=0.1) as obs:
        samples = _samples(obs)
        assert "memory_usage_bytes" in samples  # started within the budget
        assert "cpu_usage_percent" not in samples
        assert "disk_usage_percent" not in samples
        assert _errors(obs) == 2
        assert "process_threads" in samples


def test_zero_budget_reads_nothing() -> None:
    with fresh_observability(system_scrape_budget=0.0) as obs:
        samples = _samples(obs)
        assert not any(n in samples for n in SYSTEM_FAMILIES)
        assert "process_threads" in samples


# ---------------------------------------------------------------------- disk
def test_unknown_mountpoint_skipped_and_counted(tmp_path: Path) -> None:
    missing = str(tmp_path / "not-mounted")
    with fresh_observability(system_mountpoints=("/", missing)) as obs:
        samples = _samples(obs)
        assert list(samples["disk_usage_percent"]) == [(("mountpoint", "/"),)]
        assert _errors(obs) == 1


@pytest.fixture
def hanging_disk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[
        tuple[str, threading.Event, list[str]]]:
    """psutil.disk_usage blocks on an Event for one mount point (a dead NFS mount)."""
    dead = str(tmp_path)
    release = threading.Event()
    calls: list[str] = []
    real = psutil.disk_usage

    def disk_usage(path: str) -> Any:
        if path == dead:
            calls.append(path)
            release.wait(30)
        return real(path)

    monkeypatch.setattr(psutil, "disk_usage", disk_usage)
    try:
        yield dead, release, calls
    finally:
        release.set()
        wait_until(lambda: not system._worker_for(dead).busy(), message="disk worker released")


def test_hanging_statvfs_stays_within_budget_and_does_not_pile_up(
    hanging_disk: tuple[str, threading.Event, list[str]]
) -> None:
    dead, release, calls = hanging_disk
    budget = 0.2
    with fresh_observability(system_mountpoints=("/", dead), system_scrape_budget=budget) as obs:
        for attempt in range(3):
            t0 = time.monotonic()
            samples = _samples(obs)
            elapsed = time.monotonic() - t0
            assert elapsed < budget + 0.5, f"scrape {attempt} took {elapsed:.2f}s"
            # the healthy mount point still reports; the dead one is omitted
            assert list(samples["disk_usage_percent"]) == [(("mountpoint", "/"),)]
            assert "memory_usage_bytes" in samples
            assert len(_disk_threads(dead)) == 1
            assert calls == [dead]  # one pending read, never a second one
        assert _errors(obs) == 3

        release.set()
        wait_until(lambda: not system._worker_for(dead).busy(), message="read finished")
        samples = _samples(obs)
        assert (("mountpoint", dead),) in samples["disk_usage_percent"]
        assert len(_disk_threads(dead)) == 1  # the same worker, reused
        assert calls == [dead, dead]


def test_disk_worker_shared_across_instances(tmp_path: Path) -> None:
    mp = str(tmp_path)
    for _ in range(5):
        with fresh_observability(system_mountpoints=(mp,)) as obs:
            assert sample_value("disk_usage_percent", obs, mountpoint=mp) >= 0
    assert len(_disk_threads(mp)) <= 1


# ---------------------------------------------------------------------- process collector
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def test_process_collector_with_pids_skips_dead_pid() -> None:
    dead = _dead_pid()
    faults = _Faults()
    col = ProcessCollector(faults, pids=lambda: [os.getpid(), dead, os.getpid()])
    v = _values(col)
    assert set(v["process_threads"]) == {(str(os.getpid()),)}
    assert v["process_start_time_seconds"][(str(os.getpid()),)] == pytest.approx(
        psutil.Process().create_time(), abs=1.0)
    assert faults.kinds == []
    described = {f.name: f for f in col.describe()}
    assert "process_cpu_seconds" in described


def test_process_collector_reports_a_child_with_pid_label() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        col = ProcessCollector(_Faults(), pids=lambda: [os.getpid(), child.pid])
        v = _values(col)
        assert set(v["process_resident_memory_bytes"]) == {(str(os.getpid()),),
                                                           (str(child.pid),)}
    finally:
        child.kill()
        child.wait(timeout=30)
    # the same collector, after the child exited: skipped, not a fault
    faults = _Faults()
    col2 = ProcessCollector(faults, pids=lambda: [child.pid])
    assert _values(col2) == {}
    assert faults.kinds == []


def test_process_collector_pids_callable_raising_is_counted() -> None:
    def broken() -> list[int]:
        raise RuntimeError("no worker table")

    faults = _Faults()
    assert _values(ProcessCollector(faults, pids=broken)) == {}
    assert faults.kinds == ["process_pids"]


_FORK_DURING_SCRAPE = """
import json, os, signal, threading, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a threaded process
from mestres_observability import system
from mestres_observability._fault import FaultReporter
from mestres_observability.config import ObservabilityConfig

cfg = ObservabilityConfig(system_mountpoints=("/",))
sys_col = system.SystemCollector(cfg, FaultReporter())
proc_col = system.ProcessCollector(FaultReporter(), pids=lambda: [os.getpid()])
list(sys_col.collect()), list(proc_col.collect())  # disk worker thread started, handles cached
held, release = threading.Event(), threading.Event()

def scrape_in_progress():  # what a parent's scrape thread holds at the moment of the fork
    with system._workers_lock, sys_col._lock, proc_col._lock, proc_col._read_lock:
        held.set()
        release.wait(60)

threading.Thread(target=scrape_in_progress, daemon=True).start()
assert held.wait(10)
child = os.fork()
if child == 0:
    signal.alarm(20)  # an inherited held lock ends the child with SIGALRM
    names = {m.name for m in sys_col.collect()} | {m.name for m in proc_col.collect()}
    pid_labels = {s.labels.get("pid") for m in proc_col.collect() for s in m.samples}
    print(json.dumps({"names": sorted(names), "pids": sorted(p for p in pid_labels if p)}),
          flush=True)
    os._exit(0)
_, status = os.waitpid(child, 0)
release.set()
print(json.dumps({"status": status, "child": child}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_collectors_work_in_a_child_forked_during_a_scrape() -> None:
    """gunicorn --preload: the master's scrape thread may hold the collectors' locks at a fork."""
    out = subprocess.run([sys.executable, "-c", _FORK_DURING_SCRAPE], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.strip().splitlines()]
    parent = next(x for x in lines if "status" in x)
    assert parent["status"] == 0, out.stderr
    child = next(x for x in lines if "names" in x)
    assert "cpu_usage_percent" in child["names"]
    assert "disk_usage_percent" in child["names"]
    assert "process_resident_memory_bytes" in child["names"]
    assert child["pids"] == [str(parent["child"])]  # the child reads itself, not the parent
