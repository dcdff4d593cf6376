"""Host, container and process metrics, computed at scrape time.

Two collectors are registered on each instance's registry by
:func:`register_system_collectors`; neither starts a thread or reads anything
expensive when it is registered, and both compute their values inside
``collect()``, i.e. when ``/metrics`` is scraped:

* :class:`SystemCollector` (setting ``system_metrics``): ``memory_usage_bytes``,
  ``memory_usage_percent``, ``cpu_usage_percent`` and
  ``disk_usage_percent{mountpoint}``, with the namespace prefix. Container-aware:
  where cgroup v2 files give a memory limit (``memory.max``) or a CPU quota
  (``cpu.max``), memory is the container's working set against its limit and
  CPU is a percentage of the quota; otherwise psutil reports the whole host.
* :class:`ProcessCollector` (setting ``process_metrics``): prometheus_client's
  standard ``process_*`` names (no prefix) plus ``process_threads``, read with
  psutil so they work on every platform psutil supports.

Faults (``psutil.AccessDenied``, an unreadable ``/proc`` or cgroup file, a
missing mount point) omit only the family concerned and are counted in
``mestres_observability_errors_total{component="system"}``; the rest of the
scrape goes on. Each scrape of the system collector stays within
``system_scrape_budget`` seconds: ``statvfs`` of a dead network mount can hang
forever, so disk usage is read on a small worker thread that the scrape waits
for at most the remaining budget.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._fault import FaultReporter
from ._forksafe import call_after_fork, renew_locks_after_fork, run_after_fork
from .catalogue import MetricDef, entries
from .config import ObservabilityConfig

__all__ = [
    "DEFAULT_CGROUP_ROOT",
    "SYSTEM_METRICS",
    "ProcessCollector",
    "SystemCollector",
    "register_system_collectors",
]

#: Where the cgroup v2 hierarchy is mounted on Linux.
DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"

#: The metrics of this module: the ``"system"`` and ``"process"`` entries of
#: :data:`~mestres_observability.catalogue.CATALOGUE` (for the docs' metrics reference).
SYSTEM_METRICS: tuple[MetricDef, ...] = entries(source=("system", "process"))
_DOCS = {d.name: d.doc for d in SYSTEM_METRICS}
_SYSTEM = tuple(d for d in SYSTEM_METRICS if d.source == "system")

#: A disk worker thread with nothing to do for this long exits (a new one starts on demand).
_DISK_WORKER_IDLE = 60.0


# ---------------------------------------------------------------------- disk worker
class _DiskJob:
    """One ``statvfs``-like read of one mount point, done on a worker thread."""

    __slots__ = ("done", "error", "read", "result", "submitted")

    def __init__(self, read: Callable[[], float]) -> None:
        self.read = read
        self.submitted = time.monotonic()
        self.done = threading.Event()
        self.result: float | None = None
        self.error: BaseException | None = None


class _MountWorker:
    """A lazily started daemon thread that reads one mount point's usage.

    There is at most one pending read per mount point in the whole process, so
    a hung network mount holds one thread and no more, however many scrapes
    ask; the other mount points keep their own worker. The thread exits after
    :data:`_DISK_WORKER_IDLE` seconds without work.
    """

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self._cond = threading.Condition(threading.Lock())
        self._job: _DiskJob | None = None
        self._taken = False
        self._thread: threading.Thread | None = None

    def request(self, read: Callable[[], float]) -> tuple[_DiskJob, bool]:
        """Queue a read unless one is pending; return the job and whether it is new."""
        with self._cond:
            job = self._job
            if job is not None and not job.done.is_set():
                return job, False
            job = _DiskJob(read)
            self._job = job
            self._taken = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name=f"mestres-obs-disk:{self.mountpoint}", daemon=True
                )
                self._thread.start()
            else:
                self._cond.notify()
            return job, True

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._job is None or self._taken:
                    if not self._cond.wait(timeout=_DISK_WORKER_IDLE) and (
                        self._job is None or self._taken
                    ):
                        self._thread = None
                        return
                job = self._job
                self._taken = True
            try:
                job.result = job.read()
            except BaseException as exc:  # handed to the scrape that asked
                job.error = exc
            finally:
                job.done.set()

    def busy(self) -> bool:
        """True while a read is pending (for tests and diagnostics)."""
        job = self._job
        return job is not None and not job.done.is_set()


_workers: dict[str, _MountWorker] = {}
_workers_lock = threading.Lock()


def _worker_for(mountpoint: str) -> _MountWorker:
    with _workers_lock:
        worker = _workers.get(mountpoint)
        if worker is None:
            worker = _workers[mountpoint] = _MountWorker(mountpoint)
        return worker


def _reset_workers_after_fork() -> None:  # pragma: no cover - exercised in forked children
    global _workers_lock
    _workers_lock = threading.Lock()
    _workers.clear()  # their threads (and any pending disk read) stayed in the parent


run_after_fork(_reset_workers_after_fork)


# ---------------------------------------------------------------------- helpers
class _Skip(Exception):
    """A family cannot be read this scrape (already counted)."""


def _read_text(path: Path) -> str | None:
    """A small cgroup file's content, or None when it does not exist."""
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read(4096).strip()
    except FileNotFoundError:
        return None


def _parse_kv(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def _own_cgroup_dir(root: Path) -> Path:
    """The cgroup v2 directory of this process (``root`` inside a cgroup namespace)."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("0::"):
                    rel = line[3:].strip().lstrip("/")
                    candidate = root / rel if rel else root
                    if rel and (candidate / "cgroup.controllers").exists():
                        return candidate
    except OSError:
        pass
    return root


def _host_cpu(times: Any) -> tuple[float, float]:
    """(busy, total) seconds from ``psutil.cpu_times()``, counted as psutil.cpu_percent does."""
    total = float(sum(times))
    # guest time is already included in user/nice on Linux
    total -= float(getattr(times, "guest", 0.0)) + float(getattr(times, "guest_nice", 0.0))
    idle = float(getattr(times, "idle", 0.0)) + float(getattr(times, "iowait", 0.0))
    return total - idle, total


# ---------------------------------------------------------------------- system collector
class SystemCollector(Collector):
    """Memory, CPU and disk usage of the container or host, read at scrape time.

    Each scrape reads memory, then CPU, then disk usage, and skips (and counts)
    whatever would start after ``budget`` seconds. CPU usage is computed from
    this collector's own baseline of CPU times (never from
    ``psutil.cpu_percent(interval=None)``, whose baseline is shared by the
    whole process): the busy share of the time between two scrapes. The first
    scrape compares against the baseline taken when the collector was built
    (or, on a host, against boot when that interval is too short to measure).

    Args:
        config: settings (namespace, ``system_mountpoints``, ``system_scrape_budget``).
        faults: where faults are counted (component ``system``).
        cgroup_dir: directory holding the cgroup v2 files (``memory.max``,
            ``memory.current``, ``memory.stat``, ``cpu.max``, ``cpu.stat``).
            Default: this process's cgroup under ``/sys/fs/cgroup``. Where the
            files do not exist (cgroup v1, macOS, Windows) the host is reported.
        mountpoints: overrides ``config.system_mountpoints``.
        budget: overrides ``config.system_scrape_budget`` (seconds).
        clock: monotonic clock used for CPU rates (injectable for tests).
    """

    def __init__(
        self,
        config: ObservabilityConfig,
        faults: FaultReporter,
        *,
        cgroup_dir: str | os.PathLike[str] | None = None,
        mountpoints: Sequence[str] | None = None,
        budget: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._faults = faults
        self._clock = clock
        self._budget = config.system_scrape_budget if budget is None else float(budget)
        self._mountpoints = tuple(
            dict.fromkeys(config.system_mountpoints if mountpoints is None else mountpoints)
        )
        self._names = {d.name: config.metric_name(d.name) for d in _SYSTEM}
        self._cgroup = (
            Path(cgroup_dir) if cgroup_dir is not None
            else _own_cgroup_dir(Path(DEFAULT_CGROUP_ROOT))
        )
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")  # a parent's scrape thread may hold it at fork
        # CPU baseline: (mode, busy-or-usage seconds, total-or-wall seconds)
        self._cpu_prev: tuple[str, float, float] | None = None
        self._cpu_last: float | None = None
        self._prime_cpu()

    # ------------------------------------------------------------------ protocol
    def describe(self) -> Iterable[Metric]:
        """The families this collector may expose (no reads: registration stays cheap)."""
        for d in _SYSTEM:
            yield GaugeMetricFamily(self._names[d.name], d.doc, labels=list(d.labels))

    def collect(self) -> Iterable[Metric]:
        """Read every family within the time budget; faults omit only their family."""
        start = time.monotonic()
        families: list[Metric] = []
        for kind, reader in (("memory", self._memory), ("cpu", self._cpu),
                             ("disk", self._disk)):
            if time.monotonic() - start >= self._budget:
                self._faults.report(
                    "system", "budget", f"{kind} usage skipped: system_scrape_budget "
                    f"({self._budget}s) used up", family=kind,
                )
                continue
            try:
                families.extend(reader(start))
            except _Skip:
                continue
            except Exception as exc:
                self._faults.report("system", kind, f"cannot read {kind} usage", exc)
        return families

    # ------------------------------------------------------------------ memory
    def _memory(self, start: float) -> Iterator[Metric]:
        used: float
        percent: float
        limit_text = _read_text(self._cgroup / "memory.max")
        limit = int(limit_text) if limit_text and limit_text != "max" else None
        if limit is not None and limit > 0:
            current_text = _read_text(self._cgroup / "memory.current")
            if current_text is None:
                raise OSError(f"{self._cgroup / 'memory.current'} is missing")
            used = float(int(current_text))
            if used < 0:
                raise OSError(f"{self._cgroup / 'memory.current'} holds a negative value")
            stat = _read_text(self._cgroup / "memory.stat")
            if stat:
                inactive = _parse_kv(stat).get("inactive_file", 0)
                used = max(0.0, used - inactive)
            percent = 100.0 * used / limit
        else:
            vm = psutil.virtual_memory()
            used = float(vm.total - vm.available)
            percent = 100.0 * used / vm.total if vm.total else 0.0
        yield GaugeMetricFamily(self._names["memory_usage_bytes"],
                                _DOCS["memory_usage_bytes"], value=used)
        yield GaugeMetricFamily(self._names["memory_usage_percent"],
                                _DOCS["memory_usage_percent"], value=percent)

    # ------------------------------------------------------------------ cpu
    def _cpu_quota(self) -> float | None:
        """CPUs granted by ``cpu.max`` (quota / period), or None without a quota."""
        text = _read_text(self._cgroup / "cpu.max")
        if not text:
            return None
        quota, _, period = text.partition(" ")
        if quota == "max":
            return None
        cores = int(quota) / int(period or "100000")
        return cores if cores > 0 else None

    def _cpu_reading(self) -> tuple[str, float, float, float | None]:
        """(mode, busy seconds, total-or-wall seconds, quota in CPUs)."""
        cores = self._cpu_quota()
        if cores is not None:
            stat = _read_text(self._cgroup / "cpu.stat")
            if stat is None:
                raise OSError(f"{self._cgroup / 'cpu.stat'} is missing")
            usage = _parse_kv(stat).get("usage_usec")
            if usage is None:
                raise OSError(f"no usage_usec in {self._cgroup / 'cpu.stat'}")
            return "cgroup", usage / 1e6, self._clock(), cores
        busy, total = _host_cpu(psutil.cpu_times())
        return "host", busy, total, None

    def _prime_cpu(self) -> None:
        try:
            mode, busy, total, _ = self._cpu_reading()
        except Exception:  # the first scrape reports the fault
            return
        self._cpu_prev = (mode, busy, total)

    def _cpu(self, start: float) -> Iterator[Metric]:
        mode, busy, total, cores = self._cpu_reading()
        with self._lock:
            prev = self._cpu_prev
            value: float | None = None
            advance = True
            if prev is not None and prev[0] == mode:
                d_busy, d_total = busy - prev[1], total - prev[2]
                if d_total > 0:
                    scale = d_total * cores if cores is not None else d_total
                    # a window shorter than the quota period can show bursts above the
                    # quota that throttling evens out: clamp to the quota
                    value = min(100.0, max(0.0, 100.0 * d_busy / scale))
                else:  # no measurable time since the baseline: keep it
                    advance = False
                    value = self._cpu_last
            if value is None and mode == "host" and total > 0:
                value = 100.0 * busy / total  # no usable baseline: average since boot
            if advance:
                self._cpu_prev = (mode, busy, total)
            if value is not None:
                self._cpu_last = value
        if value is None:
            return  # container with a fresh baseline: reported from the next scrape
        yield GaugeMetricFamily(self._names["cpu_usage_percent"],
                                _DOCS["cpu_usage_percent"], value=value)

    # ------------------------------------------------------------------ disk
    def _disk(self, start: float) -> Iterator[Metric]:
        if not self._mountpoints:
            return
        family = GaugeMetricFamily(self._names["disk_usage_percent"],
                                   _DOCS["disk_usage_percent"], labels=["mountpoint"])
        waits: list[tuple[str, _DiskJob, bool]] = []
        for mp in self._mountpoints:
            job, fresh = _worker_for(mp).request(_disk_reader(mp))
            waits.append((mp, job, fresh))
        for mp, job, fresh in waits:
            remaining = self._budget - (time.monotonic() - start)
            if not fresh and time.monotonic() - job.submitted > self._budget:
                self._faults.report(
                    "system", "disk_hung",
                    f"disk usage of {mp!r} skipped: an earlier read has not returned",
                    mountpoint=mp,
                )
                continue
            if remaining <= 0 or not job.done.wait(remaining):
                self._faults.report(
                    "system", "disk_timeout",
                    f"disk usage of {mp!r} skipped: no answer within system_scrape_budget",
                    mountpoint=mp,
                )
                continue
            if job.error is not None:
                kind = "disk_missing" if isinstance(job.error, FileNotFoundError) else "disk"
                self._faults.report("system", kind, f"cannot read disk usage of {mp!r}",
                                    job.error, mountpoint=mp)
                continue
            if job.result is not None:
                family.add_metric([mp], job.result)
        if family.samples:
            yield family


def _disk_reader(mountpoint: str) -> Callable[[], float]:
    def read() -> float:
        # looked up at call time so tests can monkeypatch psutil.disk_usage
        return float(psutil.disk_usage(mountpoint).percent)

    return read


# ---------------------------------------------------------------------- process collector
#: (family name, type) of each ``process_*`` family, in catalogue order
_PROCESS_FAMILIES: tuple[tuple[str, str], ...] = tuple(
    (d.family_name(), d.kind) for d in SYSTEM_METRICS if d.source == "process"
)


def _exposed(name: str, kind: str) -> str:
    return name + "_total" if kind == "counter" else name


class ProcessCollector(Collector):
    """``process_*`` metrics of this process (or of several), read with psutil at scrape time.

    The names are prometheus_client's (``process_cpu_seconds_total``,
    ``process_resident_memory_bytes``, ``process_virtual_memory_bytes``,
    ``process_open_fds``, ``process_max_fds``, ``process_start_time_seconds``)
    plus ``process_threads``; they carry no namespace prefix. File descriptor
    counts exist on POSIX systems only.

    Args:
        faults: where faults are counted (component ``system``).
        pids: a callable listing the pids to report, called at every scrape;
            each series then carries a ``pid`` label (for sibling workers in
            multiprocess mode). A pid that has exited by the time it is read is
            skipped. Default: this process only, without a ``pid`` label.
        exclude: exposed family names not to report (e.g. those prometheus_client's
            global registry already exposes on the same page).
    """

    def __init__(
        self,
        faults: FaultReporter,
        *,
        pids: Callable[[], Iterable[int]] | None = None,
        exclude: Iterable[str] = (),
    ) -> None:
        self._faults = faults
        self._pids = pids
        skip = set(exclude)
        self._families = tuple(
            (name, kind) for name, kind in _PROCESS_FAMILIES
            if name not in skip and _exposed(name, kind) not in skip
        )
        self._procs: dict[int, psutil.Process] = {}
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        call_after_fork(self, "_reset_after_fork")  # a parent's scrape may hold the locks

    def _reset_after_fork(self) -> None:
        """In a forked child: fresh locks (never inherited held) and no parent handles."""
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._procs = {}

    def describe(self) -> Iterable[Metric]:
        """The families this collector may expose (no reads)."""
        labels = ["pid"] if self._pids is not None else []
        for name, kind in self._families:
            doc = _DOCS[_exposed(name, kind)]
            if kind == "counter":
                yield CounterMetricFamily(name, doc, labels=labels)
            else:
                yield GaugeMetricFamily(name, doc, labels=labels)

    def _process(self, pid: int) -> psutil.Process:
        with self._lock:
            proc = self._procs.get(pid)
        if proc is None or not proc.is_running():  # is_running also detects pid reuse
            proc = psutil.Process(pid)
            with self._lock:
                if len(self._procs) > 4096:
                    self._procs.clear()
                self._procs[pid] = proc
        return proc

    def _read(self, proc: psutil.Process, name: str, own: bool) -> float | None:
        if name == "process_cpu_seconds":
            t = proc.cpu_times()
            return float(t.user + t.system)
        if name == "process_resident_memory_bytes":
            return float(proc.memory_info().rss)
        if name == "process_virtual_memory_bytes":
            return float(proc.memory_info().vms)
        if name == "process_open_fds":
            return float(proc.num_fds()) if hasattr(proc, "num_fds") else None
        if name == "process_max_fds":
            if hasattr(proc, "rlimit") and hasattr(psutil, "RLIMIT_NOFILE"):
                return float(proc.rlimit(psutil.RLIMIT_NOFILE)[0])
            if own:
                try:
                    import resource
                except ImportError:  # Windows
                    return None
                return float(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            return None
        if name == "process_start_time_seconds":
            return float(proc.create_time())
        if name == "process_threads":
            return float(proc.num_threads())
        raise AssertionError(name)  # pragma: no cover

    def collect(self) -> Iterable[Metric]:
        """Read each family for each pid; a fault omits that reading, a vanished pid is skipped."""
        list_pids = self._pids
        labelled = list_pids is not None
        own_pid = os.getpid()
        try:
            pids: list[int] = (
                list(dict.fromkeys(int(p) for p in list_pids())) if list_pids is not None
                else [own_pid]
            )
        except Exception as exc:
            self._faults.report("system", "process_pids", "the pids callable failed", exc)
            return []
        with self._read_lock:  # psutil's oneshot() cache is per object, not thread-safe
            return self._collect(pids, labelled, own_pid)

    def _collect(self, pids: list[int], labelled: bool, own_pid: int) -> list[Metric]:
        values: dict[str, list[tuple[list[str], float]]] = {n: [] for n, _ in self._families}
        for pid in pids:
            try:
                proc = self._process(pid)
                readings: dict[str, float] = {}
                with proc.oneshot():
                    for name, _kind in self._families:
                        try:
                            value = self._read(proc, name, pid == own_pid)
                        except (psutil.NoSuchProcess, psutil.ZombieProcess):
                            raise
                        except Exception as exc:
                            self._faults.report("system", f"process:{name}",
                                                f"cannot read {name} of pid {pid}", exc, pid=pid)
                            continue
                        if value is not None:
                            readings[name] = value
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                with self._lock:
                    self._procs.pop(pid, None)
                if pid == own_pid:  # pragma: no cover - cannot happen for ourselves
                    self._faults.report("system", "process", "own process not readable")
                continue  # a listed pid that has exited: not a fault
            except Exception as exc:
                self._faults.report("system", "process", f"cannot read pid {pid}", exc, pid=pid)
                continue
            labels = [str(pid)] if labelled else []
            for name, value in readings.items():
                values[name].append((labels, value))
        out: list[Metric] = []
        label_names = ["pid"] if labelled else []
        for name, kind in self._families:
            samples = values[name]
            if not samples:
                continue
            doc = _DOCS[_exposed(name, kind)]
            family: CounterMetricFamily | GaugeMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(name, doc, labels=label_names)
            else:
                family = GaugeMetricFamily(name, doc, labels=label_names)
            for labels, value in samples:
                family.add_metric(labels, value)
            out.append(family)
        return out


# ---------------------------------------------------------------------- registration
def register_system_collectors(
    registry: CollectorRegistry,
    config: ObservabilityConfig,
    faults: FaultReporter,
    *,
    cgroup_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Register the system and process collectors that the settings ask for.

    Cheap: no thread is started and nothing is measured until the first scrape.
    When ``expose_global_registry`` is on, ``process_*`` families that
    prometheus_client's global registry already exposes are left to it, so no
    family appears twice on ``/metrics``.

    Args:
        registry: the instance's registry.
        config: settings ``system_metrics``, ``process_metrics``,
            ``system_mountpoints``, ``system_scrape_budget``, ``namespace``.
        faults: the instance's fault reporter.
        cgroup_dir: cgroup v2 directory to read instead of this process's own.
    """
    if config.system_metrics:
        registry.register(SystemCollector(config, faults, cgroup_dir=cgroup_dir))
    if config.process_metrics:
        exclude: set[str] = set()
        if config.expose_global_registry:
            from prometheus_client import REGISTRY

            from ._compat import registered_names

            exclude = registered_names(REGISTRY)
        collector = ProcessCollector(faults, exclude=exclude)
        if collector._families:
            registry.register(collector)
