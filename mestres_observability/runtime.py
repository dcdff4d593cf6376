"""Python runtime metrics: the garbage collector's counts and the interpreter's identity.

The families are prometheus_client's own, with its names, labels and help
texts (what ``GCCollector`` and ``PlatformCollector`` put on its global
registry), on each instance's registry while ``runtime_metrics`` (and
``enabled``) is on:

* ``python_gc_objects_collected_total{generation}``,
  ``python_gc_objects_uncollectable_total{generation}`` and
  ``python_gc_collections_total{generation}`` (CPython only: other
  interpreters have no ``gc.get_stats()``);
* ``python_info{implementation,major,minor,patchlevel,version}``, always 1.

**One process** (and the ``expose_global_registry`` case, where the global
registry's own collectors are left to it): read at scrape time, nothing runs
in between.

**Several worker processes** (``PROMETHEUS_MULTIPROC_DIR``): a scrape reaches
one worker, which cannot read its siblings' garbage collector, and
prometheus_client's collector would report that one worker as if it were the
service. So every worker writes its own counts to the shared files, as
``liveall`` gauges, which carry a ``pid`` label and are removed with the
worker's files when it dies (its series end with it, as with ``process_*``).
It writes them when it initialises, then every ``runtime_metrics_interval``
seconds on a small daemon thread (restarted in forked children), and again
whenever it serves a scrape itself; at scrape time the families are given back
their counter type. A scrape therefore shows ``python_gc_*{pid}`` of every live
worker, each at most ``runtime_metrics_interval`` seconds old (the serving
worker's: current). Nothing is done inside the collector: a ``gc.callbacks``
hook could run while the same thread holds prometheus_client's value lock,
and deadlock. ``python_info`` is the same in every worker and is served by
the scraping one, without ``pid``.
"""

from __future__ import annotations

import contextlib
import gc
import platform
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from . import _compat
from ._fault import FaultReporter
from ._forksafe import run_after_fork
from .catalogue import MetricDef, entries
from .config import ObservabilityConfig

__all__ = [
    "FILE_FAMILIES",
    "RUNTIME_METRICS",
    "from_files",
    "gc_supported",
    "register_runtime_collectors",
    "write_gc_counts",
]

#: The metrics of this module: the ``"runtime"`` entries of the catalogue.
RUNTIME_METRICS: tuple[MetricDef, ...] = entries(source="runtime")

#: ``gc.get_stats()`` key of each garbage-collector counter, by exposed name.
_GC_STATS: dict[str, str] = {
    "python_gc_objects_collected_total": "collected",
    "python_gc_objects_uncollectable_total": "uncollectable",
    "python_gc_collections_total": "collections",
}
_GC_ENTRIES: tuple[MetricDef, ...] = tuple(d for d in RUNTIME_METRICS if d.name in _GC_STATS)

#: In multiprocess mode: name of each garbage-collector family in the files (a
#: ``liveall`` gauge named like the counter's sample) -> its catalogue entry.
FILE_FAMILIES: dict[str, MetricDef] = {d.name: d for d in _GC_ENTRIES}


def gc_supported() -> bool:
    """Whether this interpreter has garbage-collector statistics (CPython)."""
    return hasattr(gc, "get_stats") and platform.python_implementation() == "CPython"


def from_files(family: Metric) -> Metric:
    """A garbage-collector family read from the multiprocess files, as the counter it is.

    Families of other names are returned unchanged.
    """
    entry = FILE_FAMILIES.get(family.name)
    if entry is None:
        return family
    counter = CounterMetricFamily(entry.family_name(), entry.doc,
                                  labels=list(entry.all_labels(multiprocess=True)))
    counter.samples = [Sample(entry.name, s.labels, s.value, s.timestamp) for s in family.samples]
    return counter


# ---------------------------------------------------------------------- multiprocess writer
class _GCFileWriter:
    """This process's garbage-collector counts, written into the multiprocess files.

    One per process. :meth:`start` builds the ``liveall`` gauges, writes the
    counts at once and starts the thread that rewrites them every interval.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: dict[tuple[str, int], Any] = {}
        self._written: dict[tuple[str, int], float] = {}
        self._gauges: dict[str, Any] = {}
        self._interval = 5.0
        self._faults: FaultReporter | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._active = False

    def start(self, interval: float, faults: FaultReporter) -> None:
        """Write now, then every ``interval`` seconds on the writer thread (never raises)."""
        with self._lock:
            self._interval = interval
            self._faults = faults
            self._active = True
        self.write()
        self._ensure_thread()
        self._wake.set()  # a running thread picks up the new interval

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            thread = threading.Thread(target=self._run, name="mestres-obs-runtime", daemon=True)
            self._thread = thread
        try:
            thread.start()
        except RuntimeError as exc:  # interpreter shutting down
            self._report("runtime_thread", "cannot start the runtime metrics thread", exc)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            self.write()

    def _child(self, name: str, generation: int) -> Any:
        key = (name, generation)
        child = self._children.get(key)
        if child is None:
            gauge = self._gauges.get(name)
            if gauge is None:
                from prometheus_client import Gauge

                entry = FILE_FAMILIES[name]
                gauge = self._gauges[name] = Gauge(
                    name, entry.doc, list(entry.labels), registry=None,
                    multiprocess_mode="liveall")
            child = self._children[key] = gauge.labels(str(generation))
        return child

    def write(self) -> None:
        """Write the counts that changed since the last write (never raises)."""
        if not self._active:
            return
        try:
            stats = gc.get_stats()
            with self._lock:
                for generation, stat in enumerate(stats):
                    for name, key in _GC_STATS.items():
                        value = float(stat[key])
                        if self._written.get((name, generation)) != value:
                            self._child(name, generation).set(value)
                            self._written[(name, generation)] = value
        except Exception as exc:
            self._report("runtime", "cannot write the garbage collector's counts", exc)

    def _report(self, kind: str, message: str, exc: BaseException) -> None:
        faults = self._faults
        if faults is not None:
            faults.report("system", kind, message, exc)

    def after_fork(self) -> None:  # pragma: no cover - runs in forked children
        """In a forked child: fresh state, its own files written, its own thread."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        self._written = {}  # the child's files start empty: write everything again
        for gauge in self._gauges.values():  # a parent thread may have held their locks
            _compat.renew_metric_lock(gauge)
        if self._active:
            self.write()
            self._ensure_thread()


_writer = _GCFileWriter()
# after every other fork hook: prometheus_client's value lock must be renewed first
run_after_fork(_writer.after_fork, after_existing=True)


def write_gc_counts() -> None:
    """Write this process's garbage-collector counts to the multiprocess files now.

    What the writer thread does every ``runtime_metrics_interval``; does
    nothing until an instance started it (multiprocess mode, ``runtime_metrics``).
    """
    _writer.write()


class _WriteOnScrape(Collector):
    """Refreshes the serving process's counts in the files before they are read."""

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        _writer.write()
        return ()


# ---------------------------------------------------------------------- registration
def register_runtime_collectors(
    registry: CollectorRegistry,
    config: ObservabilityConfig,
    faults: FaultReporter,
    *,
    multiprocess: bool = False,
    write_files: bool = True,
) -> None:
    """Register the runtime families on ``registry`` when ``runtime_metrics`` is on.

    Args:
        registry: the instance's registry.
        config: settings ``enabled``, ``runtime_metrics``, ``runtime_metrics_interval``,
            ``expose_global_registry``.
        faults: the instance's fault reporter (component ``system``).
        multiprocess: values live in the multiprocess files: the garbage
            collector's counts are written there (see the module docs) instead
            of read at scrape time.
        write_files: in multiprocess mode, start writing this process's counts
            (``False`` for an instance nobody initialised: it leaves the files alone).
    """
    if not (config.enabled and config.runtime_metrics):
        return
    from prometheus_client import GCCollector, PlatformCollector

    exclude: set[str] = set()
    if config.expose_global_registry and not multiprocess:
        from prometheus_client import REGISTRY

        from ._compat import registered_names

        exclude = registered_names(REGISTRY)  # its GC and platform collectors stay its own
    # a registry that already has them (prometheus_client's global one passed as the
    # instance's registry) keeps its own: ValueError is its duplicate-name refusal
    if "python_info" not in exclude:
        with contextlib.suppress(ValueError):
            PlatformCollector(registry=registry)
    if not gc_supported():
        return
    if not multiprocess:
        if not {d.name for d in _GC_ENTRIES} & exclude:
            with contextlib.suppress(ValueError):
                GCCollector(registry=registry)
        return
    if write_files:
        registry.register(_WriteOnScrape())
        _writer.start(config.runtime_metrics_interval, faults)
