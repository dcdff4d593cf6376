"""Correct metrics across several worker processes (gunicorn, uvicorn ``--workers``).

prometheus_client's multiprocess mode is chosen when ``prometheus_client`` is
*imported*: ``PROMETHEUS_MULTIPROC_DIR`` must name a directory before the
application (and therefore this library) is imported. Each process then writes
its values into memory-mapped files in that directory, and ``/metrics`` on any
worker reads all of them. This module adds what prometheus_client leaves out:

* **Bounded scrapes with recycled workers.** prometheus_client keeps every dead
  worker's files, so scrape time grows with each recycled worker
  (gunicorn ``max_requests``). :func:`mark_process_dead` (called by the shipped
  gunicorn ``child_exit`` hook, and at scrape time for workers found dead) merges
  a dead worker's counter, histogram, summary and ``min``/``max``/``sum``/
  ``mostrecent`` gauge files into one archive file per kind, under an exclusive
  ``flock`` and with an atomic rename, then removes them. Scrapes read the files
  under a shared ``flock``, so a counter never dips and no count is lost (a
  small journal makes the merge crash-safe). ``live*`` and ``all`` gauge files of
  a dead worker are removed: their values died with it.
* **Dead-worker detection without a master hook** (uvicorn workers): each
  process leaves a marker with its pid and start time; at scrape time a pid
  whose process is gone, or whose pid now belongs to a process started at
  another time, is dead. A worker never removes the files of a live sibling.
* **A full directory never kills a worker.** prometheus_client writes its files
  through ``mmap`` and grows them sparsely, so a full filesystem ends the process
  with SIGBUS. Here space is reserved before a file grows; when it cannot grow, new
  label sets are not written (their values stay in the process), existing series
  keep updating, and each dropped series is counted in
  ``mestres_observability_errors_total{component="multiprocess"}`` and logged (once
  per interval). Growth is retried every few seconds, so series dropped while the
  disk was full appear, with their whole count, once space is back.
* **What never reaches the files** is served from the scraping worker: callback
  gauges (``set_active_connections``), exemplars (prometheus_client drops them in
  multiprocess mode; here the scraping worker attaches the exemplars it
  recorded itself), system metrics, and ``process_*`` metrics of every live
  worker, read with psutil and labelled by ``pid``. Each worker's garbage
  collector counts (``python_gc_*{pid}``) are written by that worker, see
  :mod:`mestres_observability.runtime`.

:func:`prepare_directory` creates the directory (mode 0700) or empties it safely
at start-up; :mod:`mestres_observability.gunicorn` calls it for you.
"""

from __future__ import annotations

import bisect
import errno
import json
import os
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from . import _compat
from ._fault import FaultReporter
from ._forksafe import run_after_fork
from .config import ObservabilityConfig
from .errors import ConfigurationError
from .runtime import FILE_FAMILIES, from_files

_fcntl: Any
try:  # POSIX only; Windows has no fork-based servers, and there the files are read unlocked
    import fcntl as _fcntl
except ImportError:  # pragma: no cover
    _fcntl = None

__all__ = [
    "ENV_VAR",
    "MultiprocessCollector",
    "MultiprocessMetricMaker",
    "build_collector",
    "check_environment",
    "is_multiprocess",
    "live_pids",
    "mark_process_dead",
    "multiprocess_dir",
    "prepare_directory",
    "register_process",
]

#: The environment variable prometheus_client reads.
ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"

_LOCK_NAME = "merge.lock"
_JOURNAL_NAME = "merge.journal"
_ARCHIVE = "archive"
_MARKER_SUFFIX = ".alive"
#: file kinds (``_compat.values_file_kind``) merged into an archive when their process dies
_MERGED_PREFIXES = ("counter", "histogram", "summary", "gauge_min", "gauge_max", "gauge_sum",
                    "gauge_mostrecent")


# ---------------------------------------------------------------------- environment
def multiprocess_dir() -> str | None:
    """The directory named by ``PROMETHEUS_MULTIPROC_DIR`` (or its deprecated lowercase form)."""
    return os.environ.get(ENV_VAR) or os.environ.get(ENV_VAR.lower()) or None


def is_multiprocess() -> bool:
    """True when prometheus_client was imported in multiprocess mode (values in files)."""
    return _compat.multiprocess_values_active()


def check_environment(config: ObservabilityConfig) -> str | None:
    """Validate the multiprocess set-up at init; the directory in use, or ``None``.

    Raises:
        ConfigurationError: the variable is set but prometheus_client was imported
            without it (or the reverse), the directory is missing, not a directory,
            not writable, or world-writable and owned by another user, or
            ``expose_global_registry`` is on.
    """
    path = multiprocess_dir()
    active = is_multiprocess()
    if path is None and not active:
        return None
    if path is None:
        raise ConfigurationError(
            ENV_VAR, None,
            "prometheus_client was imported in multiprocess mode but the variable is no "
            "longer set; keep it set for the life of the process",
            env=ENV_VAR,
        )
    if not active:
        raise ConfigurationError(
            ENV_VAR, path,
            "the variable was set after prometheus_client had been imported, so metrics stay "
            "in this process only; set it before the application (and mestres_observability) "
            "is imported, e.g. in the environment of the server or at the top of the gunicorn "
            "config (gunicorn -c python:mestres_observability.gunicorn)",
            env=ENV_VAR,
        )
    _check_directory(path)
    if config.expose_global_registry:
        raise ConfigurationError(
            "expose_global_registry", True,
            f"not available in multiprocess mode ({ENV_VAR} is set): prometheus_client's "
            "global registry would report this process only; create your metrics with "
            "obs.counter()/obs.gauge()/obs.histogram() instead",
        )
    return path


def _check_directory(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigurationError(
            ENV_VAR, path, "the directory does not exist; create it (mode 0700) before the "
            "workers start, e.g. with mestres_observability.multiprocess.prepare_directory()",
            env=ENV_VAR) from None
    except OSError as exc:
        raise ConfigurationError(ENV_VAR, path, f"cannot stat the directory ({exc.strerror})",
                                 env=ENV_VAR) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigurationError(ENV_VAR, path, "not a directory", env=ENV_VAR)
    _check_ownership(path, st)
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigurationError(ENV_VAR, path, "the directory is not writable by this process",
                                 env=ENV_VAR)


def _check_ownership(path: str, st: os.stat_result) -> None:
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    if euid is None:  # pragma: no cover - Windows
        return
    if st.st_mode & stat.S_IWOTH and st.st_uid != euid:
        raise ConfigurationError(
            ENV_VAR, path,
            f"the directory is world-writable and owned by uid {st.st_uid}, not by this user "
            "(like a shared /tmp: anyone could plant, replace or symlink metric files); use a "
            "private directory (mode 0700) owned by the service user",
            env=ENV_VAR)


def prepare_directory(
    path: str | os.PathLike[str] | None = None,
    *,
    wipe: bool = True,
    uid: int | None = None,
    gid: int | None = None,
) -> Path:
    """Create the multiprocess directory (mode 0700) or empty it, safely, at start-up.

    Only the files this mode writes are removed (``*.db``, markers, the merge
    lock and journal, temporary files); symbolic links are never followed and
    other files are left alone, so a mistaken path cannot wipe unrelated data.
    Call it once, before any worker starts (the gunicorn config module does).

    Args:
        path: the directory (default: ``PROMETHEUS_MULTIPROC_DIR``).
        wipe: remove the previous run's files.
        uid: give the directory to this user (gunicorn ``user`` setting), when root.
        gid: and to this group.

    Raises:
        ConfigurationError: no path, the path is a symlink or not a directory, or
            the directory is owned by someone else and world-writable.
    """
    raw = os.fspath(path) if path is not None else multiprocess_dir()
    if not raw:
        raise ConfigurationError(ENV_VAR, None, "no directory given and the variable is unset",
                                 env=ENV_VAR)
    target = Path(raw)
    try:
        os.mkdir(target, 0o700)
        os.chmod(target, 0o700)  # the umask may have narrowed mkdir's mode, never widened
    except FileExistsError:
        st = os.lstat(target)
        if stat.S_ISLNK(st.st_mode):
            raise ConfigurationError(ENV_VAR, raw, "is a symbolic link; refusing to use it",
                                     env=ENV_VAR) from None
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigurationError(ENV_VAR, raw, "not a directory", env=ENV_VAR) from None
        _check_ownership(raw, st)
    wanted_owner = (uid is not None and uid >= 0) or (gid is not None and gid >= 0)
    if wanted_owner and hasattr(os, "chown") and os.geteuid() == 0:
        os.chown(target, uid if uid is not None else -1, gid if gid is not None else -1)
    if wipe:
        with os.scandir(target) as entries:
            for entry in entries:
                name = entry.name
                ours = (name.endswith((".db", ".db.tmp", _MARKER_SUFFIX, ".journal.tmp"))
                        or name in (_LOCK_NAME, _JOURNAL_NAME))
                if ours and (entry.is_symlink() or entry.is_file(follow_symlinks=False)):
                    with suppress(FileNotFoundError):  # raced with another wipe
                        os.unlink(entry.path)
    return target


# ---------------------------------------------------------------------- process markers
_registered: dict[str, int] = {}
_state_lock = threading.Lock()


def _create_time(pid: int) -> int | None:
    """Start time of ``pid`` in hundredths of a second since the epoch, or None if gone."""
    import psutil

    try:
        return round(psutil.Process(pid).create_time() * 100)
    except psutil.AccessDenied:
        return -1  # it exists, we cannot tell when it started
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def register_process(path: str | None = None) -> None:
    """Leave a marker (pid and start time) so siblings can tell this process is alive.

    Called at init in multiprocess mode, and again in every forked child (a
    ``fork`` hook re-registers it). Never raises.
    """
    where = path or multiprocess_dir()
    if not where:
        return
    pid = os.getpid()
    try:
        with _state_lock:
            if _registered.get(where) != pid:
                created = _create_time(pid)
                if created is not None and created >= 0:
                    marker = os.path.join(where, f"proc_{pid}_{created}{_MARKER_SUFFIX}")
                    with open(marker, "w", encoding="ascii"):
                        pass
                _registered[where] = pid
    except OSError:
        pass  # without a marker, liveness falls back to "pid exists" (conservative)


def _after_fork() -> None:  # pragma: no cover - runs in forked children
    # locks another thread may have held at fork time are replaced, then the child registers
    global _state_lock, _cache_lock
    _state_lock = threading.Lock()
    _cache_lock = threading.Lock()
    for _definition, metric in list(_cache.values()):
        _compat.renew_metric_lock(metric)  # labelled parents: .labels() takes it
    if is_multiprocess():
        with suppress(Exception):
            _compat.renew_multiprocess_value_lock()  # prometheus_client's one value lock
    # merge-lock descriptors a parent thread had open at the fork: the parent unlocks them;
    # the child's copies would only leak (and keep a lock alive if the parent died)
    for fd in list(_lock_fds):
        with suppress(OSError):
            os.close(fd)
    _lock_fds.clear()
    for where in list(_registered):
        _registered.pop(where, None)
        register_process(where)


def _markers(path: str) -> dict[int, int]:
    found: dict[int, int] = {}
    try:
        names = os.listdir(path)
    except OSError:
        return found
    for name in names:
        if name.startswith("proc_") and name.endswith(_MARKER_SUFFIX):
            parts = name[: -len(_MARKER_SUFFIX)].split("_")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                pid, created = int(parts[1]), int(parts[2])
                found[pid] = max(created, found.get(pid, 0))
    return found


_file_pid = _compat.values_file_pid


def _pids_with_files(path: str) -> set[int]:
    try:
        names = os.listdir(path)
    except OSError:
        return set()
    return {pid for pid in map(_file_pid, names) if pid is not None}


def _alive(pid: int, markers: dict[int, int]) -> bool:
    if pid == os.getpid():
        return True
    created = _create_time(pid)
    if created is None:
        return False
    expected = markers.get(pid)
    # a marker from another start time means the pid was reused by an unrelated process
    return expected is None or created < 0 or abs(created - expected) <= 1


def live_pids(path: str | None = None) -> list[int]:
    """Pids that have metric files in the directory and are still running (this one included)."""
    where = path or multiprocess_dir()
    if not where:
        return [os.getpid()]
    markers = _markers(where)
    pids = _pids_with_files(where) | {os.getpid()}
    return sorted(p for p in pids if _alive(p, markers))


# ---------------------------------------------------------------------- locking and merging
#: Descriptors of the merge lock file this process has open right now.
_lock_fds: set[int] = set()


@contextmanager
def _flock(path: str, exclusive: bool, blocking: bool = True) -> Iterator[bool]:
    fcntl = _fcntl
    if fcntl is None:  # pragma: no cover
        yield True
        return
    fd = os.open(os.path.join(path, _LOCK_NAME),
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    _lock_fds.add(fd)
    try:
        flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, flags if blocking else flags | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                yield False
                return
            raise
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        _lock_fds.discard(fd)
        os.close(fd)


def _size(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0


# prometheus_client's file format: an archive is one such file, whose spare header word
# holds the archive's generation (the journal tells a finished merge by it)
_read_entries = _compat.read_values_file
_archive_generation = _compat.values_file_spare_word
_write_archive = _compat.write_values_file


def _combine(prefix: str, files: Iterable[str]) -> dict[str, tuple[float, float]]:
    merged: dict[str, tuple[float, float]] = {}
    for filename in files:
        try:
            entries = list(_read_entries(filename))
        except FileNotFoundError:
            continue
        except struct.error:  # an empty file: its process died before writing a value
            if os.path.getsize(filename) == 0:
                continue
            raise
        for key, value, ts in entries:
            old = merged.get(key)
            if old is None:
                merged[key] = (value, ts)
            elif prefix == "gauge_min":
                merged[key] = (min(old[0], value), 0.0)
            elif prefix == "gauge_max":
                merged[key] = (max(old[0], value), 0.0)
            elif prefix == "gauge_mostrecent":
                if ts >= old[1]:
                    merged[key] = (value, ts)
            else:  # counters, histograms (raw buckets), summaries, sum gauges
                merged[key] = (old[0] + value, 0.0)
    return merged


def _apply_journal(path: str, journal: dict[str, Any]) -> None:
    """Finish a merge described by ``journal`` (idempotent: archive generations tell)."""
    sources: dict[str, list[str]] = journal["sources"]
    for prefix, target_gen in journal["targets"].items():
        archive = os.path.join(path, f"{prefix}_{_ARCHIVE}.db")
        if _archive_generation(archive) == target_gen:
            continue  # already written before an interruption
        files = [archive] + [os.path.join(path, n) for n in sources.get(prefix, [])]
        _write_archive(archive, _combine(prefix, files), target_gen)
    for name in journal["remove"]:
        with suppress(FileNotFoundError):
            os.unlink(os.path.join(path, name))
    os.unlink(os.path.join(path, _JOURNAL_NAME))


def _recover(path: str) -> None:
    journal_file = os.path.join(path, _JOURNAL_NAME)
    try:
        with open(journal_file, encoding="utf-8") as f:
            journal = json.load(f)
    except FileNotFoundError:
        return
    except ValueError:  # torn journal: it was never renamed into place, so nothing ran
        os.unlink(journal_file)
        return
    _apply_journal(path, journal)


def _merge_locked(path: str, pids: Iterable[int]) -> int:
    _recover(path)
    dead = {int(p) for p in pids}
    sources: dict[str, list[str]] = {}
    remove: list[str] = []
    for name in sorted(os.listdir(path)):
        pid = _file_pid(name)
        if pid is not None and pid in dead:
            prefix = _compat.values_file_kind(name)
            if prefix in _MERGED_PREFIXES:
                sources.setdefault(prefix, []).append(name)
            remove.append(name)
        elif name.startswith("proc_") and name.endswith(_MARKER_SUFFIX):
            parts = name.split("_")
            if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) in dead:
                remove.append(name)
    if not remove:
        return 0
    targets = {
        prefix: _archive_generation(os.path.join(path, f"{prefix}_{_ARCHIVE}.db")) + 1
        for prefix in sources
    }
    journal = {"sources": sources, "targets": targets, "remove": remove}
    tmp = os.path.join(path, _JOURNAL_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.write(fd, json.dumps(journal).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        # a full directory: nothing was merged or removed (the dead workers' files stay
        # and are still read by every scrape); the next merge retries
        with suppress(OSError):
            os.unlink(tmp)
        raise
    os.replace(tmp, os.path.join(path, _JOURNAL_NAME))
    _apply_journal(path, journal)
    return sum(1 for n in remove if n.endswith(".db"))


def mark_process_dead(pid: int | Iterable[int], path: str | None = None, *,
                      blocking: bool = True) -> int:
    """Clean up after dead worker(s): merge their files into the archives and remove them.

    Counters, histograms, summaries and ``min``/``max``/``sum``/``mostrecent``
    gauges are merged (no count lost; ``mostrecent`` keeps the newest value by
    timestamp); ``live*`` and ``all`` gauge files are removed. Runs under an
    exclusive lock with an atomic rename, so concurrent scrapes never see a
    value twice or not at all. Only call it for processes that have exited.

    Args:
        pid: one pid or several.
        path: the directory (default: ``PROMETHEUS_MULTIPROC_DIR``).
        blocking: wait for the lock; with ``False`` return 0 when it is busy.

    Returns:
        The number of metric files merged or removed.
    """
    where = path or multiprocess_dir()
    if not where:
        return 0
    pids = [pid] if isinstance(pid, int) else list(pid)
    with _flock(where, exclusive=True, blocking=blocking) as got:
        if not got:
            return 0
        return _merge_locked(where, pids)


# ---------------------------------------------------------------------- metric objects
class _MPCounter(Counter):
    """Counter that remembers its last exemplar in this process (files cannot hold it)."""

    _mp_exemplar: Exemplar | None = None

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        super().inc(amount, exemplar)
        if exemplar:
            self._mp_exemplar = Exemplar(exemplar, amount, time.time())


class _MPHistogram(Histogram):
    """Histogram that remembers the last exemplar of each bucket in this process."""

    _mp_exemplars: dict[int, Exemplar] | None = None
    _mp_bounds: Sequence[float] | None = None

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        super().observe(amount, exemplar)
        if exemplar:
            bounds = self._mp_bounds
            if bounds is None:  # resolved once per child
                bounds = self._mp_bounds = _compat.histogram_upper_bounds(self) or ()
            if not bounds:
                return
            index = bisect.bisect_left(bounds, amount)
            if self._mp_exemplars is None:
                self._mp_exemplars = {}
            self._mp_exemplars[index] = Exemplar(exemplar, amount, time.time())


class _MPGauge(Gauge):
    """Gauge whose callback (``set_function``) is served by the scraping process."""

    _mp_callback: Callable[[], float] | None = None

    def set_function(self, f: Callable[[], float]) -> None:
        super().set_function(f)
        self._mp_callback = f


_cache: dict[tuple[str, str], tuple[tuple[Any, ...], Any]] = {}
_cache_lock = threading.Lock()
run_after_fork(_after_fork)


class _Discarded:
    """A metric that records nothing (and so writes no file); its children are itself."""

    def labels(self, *values: object, **kw: object) -> _Discarded:
        return self

    def set(self, value: float) -> None:
        return None

    def inc(self, amount: float = 1.0, exemplar: object = None) -> None:
        return None

    def dec(self, amount: float = 1.0) -> None:
        return None

    def observe(self, amount: float, exemplar: object = None) -> None:
        return None

    def set_function(self, f: Callable[[], float]) -> None:
        return None


class MultiprocessMetricMaker:
    """Metric factory for :class:`~mestres_observability.metrics.LibraryMetrics` in multiprocess mode.

    Values live in per-process files keyed by metric name and labels, so two
    objects for one series in one process would overwrite each other's counts.
    The same definition therefore returns the same object for every
    :class:`~mestres_observability.Observability` of the process (a conflicting
    definition raises ``ValueError``). Objects are registered on no registry:
    :class:`MultiprocessCollector` reads the files instead.

    Args:
        discard: names of metrics this maker's instance must not write: it gets
            an object that records nothing instead. The default instance (which
            nobody initialised) discards ``service_info``, so no
            ``service_info{service="unknown_service"}`` reaches the files beside
            the real service's.
    """

    def __init__(self, discard: Sequence[str] = ()) -> None:
        self.made: list[Any] = []
        self.discard = frozenset(discard)
        _compat.guard_values_files()  # before this instance's first value: see the module doc

    def __call__(
        self,
        kind: str,
        name: str,
        doc: str,
        labels: Sequence[str],
        registry: Any = None,
        *,
        buckets: Sequence[float] | None = None,
        multiprocess_mode: str = "all",
    ) -> Any:
        """Return the process-wide metric object for this definition."""
        if name in self.discard:
            return _Discarded()
        definition = (kind, doc, tuple(labels), tuple(buckets or ()), multiprocess_mode)
        with _cache_lock:
            found = _cache.get((kind, name))
            if found is not None:
                if found[0] != definition:
                    raise ValueError(
                        f"{name} is already defined in this process as {found[0][0]} with labels "
                        f"{list(found[0][2])} (buckets {list(found[0][3])}, mode {found[0][4]}); "
                        "in multiprocess mode a metric keeps its definition for the life of the "
                        "process"
                    )
                metric = found[1]
            else:
                if kind == "counter":
                    metric = _MPCounter(name, doc, labels, registry=None)
                elif kind == "gauge":
                    metric = _MPGauge(name, doc, labels, registry=None,
                                      multiprocess_mode=multiprocess_mode)  # type: ignore[arg-type]
                else:
                    metric = _MPHistogram(name, doc, labels, registry=None,
                                          buckets=tuple(buckets or ()))
                _cache[(kind, name)] = (definition, metric)
        self.made.append(metric)
        return metric


def build_collector(
    path: str,
    registry: Any,
    config: ObservabilityConfig,
    faults: FaultReporter,
    maker: MultiprocessMetricMaker,
) -> MultiprocessCollector:
    """The ``/metrics`` source of one instance in multiprocess mode.

    The instance's registry holds only its scrape-time collectors there (metric
    objects are registered nowhere); its own ``process_*`` collector is replaced
    by one that reads every live worker, labelled by ``pid``.
    """
    from .system import ProcessCollector

    register_process(path)

    def dropped(n: int) -> None:
        for _ in range(n):
            faults.report("multiprocess", "directory_full",
                          f"{ENV_VAR} ({path}) is full: new label sets are not recorded "
                          "(existing series keep updating); free space or enlarge it")

    _compat.set_values_drop_listener(dropped)
    siblings = (ProcessCollector(faults, pids=lambda: live_pids(path))
                if config.enabled and config.process_metrics else None)

    def local() -> list[Any]:
        collectors = _compat.registry_collectors(registry)
        chosen = [c for c in collectors if not isinstance(c, ProcessCollector)]
        if siblings is not None:
            chosen.append(siblings)
        return chosen

    return MultiprocessCollector(path, faults, maker, local)


_children = _compat.labelled_children


# ---------------------------------------------------------------------- the collector
class MultiprocessCollector:
    """What ``/metrics`` shows in multiprocess mode: every process's files plus this one's extras.

    Reads the directory under a shared lock with prometheus_client's merge,
    after cleaning up workers found dead. Families produced by ``local``
    collectors (system metrics, ``process_*`` of every live worker labelled by
    ``pid``) and callback gauges are served by this process and take precedence
    over a file family of the same name; exemplars this process recorded are
    attached to the matching samples.

    Args:
        path: the multiprocess directory.
        faults: where faults are counted (component ``multiprocess``).
        maker: the instance's :class:`MultiprocessMetricMaker`.
        local: collectors evaluated in the scraping process.
        reap: detect and clean up dead workers at scrape time.
    """

    def __init__(
        self,
        path: str,
        faults: FaultReporter,
        maker: MultiprocessMetricMaker,
        local: Callable[[], Iterable[Any]] = lambda: (),
        *,
        reap: bool = True,
    ) -> None:
        self.path = path
        self._faults = faults
        self._maker = maker
        self._local = local
        self._reap_enabled = reap

    def reap(self) -> int:
        """Merge the files of processes found dead (skipped while another process merges)."""
        markers = _markers(self.path)
        dead = [p for p in _pids_with_files(self.path) if not _alive(p, markers)]
        dead += [p for p in markers if p not in dead and not _alive(p, markers)]
        if not dead:
            return 0
        return mark_process_dead(dead, self.path, blocking=False)

    def _file_families(self) -> list[Metric]:
        with _flock(self.path, exclusive=False):
            files = []
            with os.scandir(self.path) as entries:
                for entry in entries:
                    # a file a worker created a moment ago may not be sized yet: no values
                    if entry.name.endswith(".db") and _size(entry) > 0:
                        files.append(entry.path)
            return _compat.merge_values_files(files)

    def _exemplars(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], Exemplar]:
        found: dict[tuple[str, tuple[tuple[str, str], ...]], Exemplar] = {}
        for metric in dict.fromkeys(self._maker.made):
            if isinstance(metric, _MPCounter):
                name = _compat.metric_base_name(metric)
                for labels, child in _children(metric):
                    if child._mp_exemplar is not None and name is not None:
                        key = (name + "_total", tuple(sorted(labels.items())))
                        found[key] = child._mp_exemplar
            elif isinstance(metric, _MPHistogram):
                name = _compat.metric_base_name(metric)
                for labels, child in _children(metric):
                    bounds = child._mp_bounds  # set with the child's first exemplar
                    if name is None or not bounds:
                        continue
                    for index, ex in list((child._mp_exemplars or {}).items()):
                        bound = floatToGoString(bounds[index])  # type: ignore[no-untyped-call]
                        key = (name + "_bucket",
                               tuple(sorted({**labels, "le": bound}.items())))
                        found[key] = ex
        return found

    def collect(self) -> Iterable[Metric]:
        """One scrape: reap, read the files, add this process's families and exemplars."""
        _compat.flush_values_drops()
        if self._reap_enabled:
            try:
                self.reap()
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    # a full directory: the dead workers' files stay and are read as they
                    # are; counted and logged with the other full-directory faults, no traceback
                    self._faults.report("multiprocess", "directory_full",
                                        "dead-worker clean-up skipped: PROMETHEUS_MULTIPROC_DIR "
                                        "is full (their files are kept and still read)")
                else:
                    self._faults.report("multiprocess", "reap", "dead-worker clean-up failed", exc)
            except Exception as exc:
                self._faults.report("multiprocess", "reap", "dead-worker clean-up failed", exc)
        local: list[Metric] = []
        for metric in dict.fromkeys(self._maker.made):
            if isinstance(metric, _MPGauge) and metric._mp_callback is not None:
                local.extend(metric.collect())
        for collector in self._local():
            try:
                local.extend(collector.collect())
            except Exception as exc:
                self._faults.report("multiprocess", "local_collector",
                                    "a per-process collector failed", exc)
        own = {m.name for m in local}
        exemplars = self._exemplars()
        out: list[Metric] = []
        for family in self._file_families():
            if family.name in own:
                continue
            if family.name in FILE_FAMILIES:  # each worker's GC counts: counters again
                family = from_files(family)
            if exemplars:
                family.samples = [
                    s._replace(exemplar=exemplars.get((s.name, tuple(sorted(s.labels.items())))))
                    if (s.name, tuple(sorted(s.labels.items()))) in exemplars else s
                    for s in family.samples
                ]
            out.append(family)
        return out + local
