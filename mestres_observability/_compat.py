"""Every use of another library's private attributes or file formats, in one place.

Each accessor below names the internal it relies on, says why the library
needs it and which public API would replace it. Each one feature-detects the
internal and, when a release no longer has it, falls back to the public path
or turns its optimisation off: it never raises into the host, and logs the
degradation once (:func:`degraded_features` lists them). ``nox -s newest_deps``
runs the suite against the newest releases, so a break shows up there first.

Hot paths resolve the internal once, at set-up or once per series (a holder
object, a bound callable, a context variable), and then use it directly;
FastAPI's per-request record is read inline through two constants.

Only the standard library and the libraries wrapped here are imported (web
frameworks never at import time): this module sits in the foundations layer.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import logging
import mmap
import os
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import structlog

from ._forksafe import fork_generation, renew_locks_after_fork, run_after_fork

__all__ = [
    "FASTAPI_NATIVE_SPAN_ATTR",
    "FASTAPI_TELEMETRY_SCOPE_KEY",
    "STRUCTLOG_UNBOUND",
    "current_span_key",
    "degraded_features",
    "disable_fastapi_native_tracing",
    "exemplar_recorder",
    "flask_request_context_var",
    "flush_values_drops",
    "guard_values_files",
    "histogram_observer",
    "histogram_upper_bounds",
    "labelled_children",
    "mark_django_response_logged",
    "merge_values_files",
    "metric_base_name",
    "multiprocess_values_active",
    "otlp_span_sender",
    "proxy_target_getter",
    "read_values_file",
    "rebind_structlog_context",
    "registered_names",
    "registry_collectors",
    "renew_metric_lock",
    "renew_multiprocess_value_lock",
    "request_done_recorder",
    "request_recorder",
    "restore_structlog_context",
    "runtime_context_ops",
    "set_values_drop_listener",
    "span_context_unpacks",
    "span_emitter",
    "span_queue",
    "structlog_context_var",
    "structlog_logger_parts",
    "update_provider_resource",
    "use_multiprocess_values",
    "uvicorn_worker_count",
    "valid_span_context_maker",
    "value_adder",
    "value_holder",
    "values_dropped_total",
    "values_file_kind",
    "values_file_pid",
    "values_file_spare_word",
    "write_values_file",
]

_log = logging.getLogger("mestres_observability")
_degraded: dict[str, str] = {}
_degraded_lock = threading.Lock()
# fresh in a forked child: the after-fork hooks of multiprocess.py may log a degradation
renew_locks_after_fork(sys.modules[__name__], "_degraded_lock")


def _degrade(feature: str, consequence: str, exc: BaseException | None = None) -> None:
    """Log once per ``feature`` that an internal is missing, and what is lost."""
    with _degraded_lock:
        if feature in _degraded:
            return
        _degraded[feature] = consequence
    _log.warning("mestres_observability: %s is not available with the installed release "
                 "(%s); %s", feature, "missing" if exc is None else repr(exc), consequence)


def degraded_features() -> dict[str, str]:
    """Internals found missing so far (feature -> what is lost), for diagnostics and tests."""
    with _degraded_lock:
        return dict(_degraded)


# ====================================================================== prometheus_client
def value_holder(child: Any) -> Any:
    """The value holder behind a prometheus_client counter or gauge child, else the child.

    Internal: ``child._value`` (``MutexValue``, or the mmap-backed value class in
    multiprocess mode). Why: ``child.inc()`` checks the sign and the label state,
    then calls the holder's ``inc``; the request pass knows both already (a
    labelled child, +1 or -1 on a gauge), and those checks were a fifth of the
    calls of the metrics-only pass. The holder takes its own lock, so this is
    as thread- and process-safe as ``inc()``. Public replacement: ``child.inc()``
    (and ``child.dec()``), which is what the fallback returns: the child itself.
    The request pass resolves it once per series and keeps it.
    """
    value = getattr(child, "_value", None)
    return value if value is not None and callable(getattr(value, "inc", None)) else child


def value_adder(holder: Any) -> Callable[[float], None]:
    """``holder.inc`` (``holder``: from :func:`value_holder`), for a ``MutexValue`` as one
    update under its lock taken with ``acquire()``/``release()``.

    Internal: ``MutexValue._lock`` and ``_value`` (checked in its ``inc``'s code, see
    :func:`_mutex_value_class`). Why: ``inc`` takes its lock with ``with``, whose
    ``__enter__`` parses the arguments ``acquire`` takes: the in-progress gauge's ``+1``
    costs about half as much this way. Public replacement: ``holder.inc`` (the holder's
    own, or the gauge child's ``inc`` when :func:`value_holder` fell back), which is what
    is returned for any other class (multiprocess mode's mmap values included).
    """
    mutex = _mutex_value_class()
    if mutex is None or type(holder) is not mutex:
        return holder.inc  # type: ignore[no-any-return]
    lock = holder._lock

    def add(amount: float) -> None:
        lock.acquire()
        try:
            holder._value += amount
        finally:
            lock.release()

    return add


def histogram_observer(child: Any) -> Callable[[float], None]:
    """``child.observe`` without exemplar, as one call over the child's value holders.

    Internal: ``child._sum``, ``child._upper_bounds`` and ``child._buckets`` of a
    prometheus_client ``Histogram`` child. Why: ``observe()`` checks the label
    state (two calls) and walks the bounds in Python before incrementing the sum
    and one bucket; the request pass observes one duration per request into a
    child it resolved once, so the returned function adds to the sum and finds
    the bucket with :func:`bisect.bisect_left` (the first bound ``>=`` the
    amount, as the walk finds), through the same holders, under their own
    locks. A NaN goes through ``observe()`` itself. Public replacement:
    ``child.observe``, which is what the fallback returns (another class, such as
    the multiprocess histogram or an inert child, or other internals). Resolved
    once per series. With the single-process ``MutexValue`` holders (see
    :func:`exemplar_recorder`) their ``inc`` is done inline, under their own locks.
    """
    observe: Callable[[float], None] = child.observe
    try:
        from prometheus_client import Histogram

        if type(child).observe is not Histogram.observe:
            return observe
        total = child._sum
        bounds = [float(b) for b in child._upper_bounds]
        incs = [b.inc for b in child._buckets]
        inc_sum = total.inc
        if (not bounds or len(bounds) != len(incs) or bounds[-1] != float("inf")
                or bounds != sorted(bounds) or not callable(inc_sum)):
            raise ValueError("unexpected histogram buckets")
    except Exception as exc:
        _degrade("prometheus_client histogram value holders",
                 "request durations are observed through observe()", exc)
        return observe
    from bisect import bisect_left

    locked = _locked_histogram(child)
    if locked is not None:
        # MutexValue (single process): its ``inc`` inline, under its own lock
        _observe, bounds, total, sum_lock, buckets, locks = locked

        def observe_locked(amount: float) -> None:
            if amount != amount:  # NaN: no bucket (observe's walk finds none)
                observe(amount)
                return
            sum_lock.acquire()
            try:
                total._value += amount
            finally:
                sum_lock.release()
            i = bisect_left(bounds, amount)
            lock = locks[i]
            lock.acquire()
            try:
                buckets[i]._value += 1
            finally:
                lock.release()

        return observe_locked

    def observe_fast(amount: float) -> None:
        if amount != amount:  # NaN: no bucket (observe's walk finds none)
            observe(amount)
            return
        inc_sum(amount)
        incs[bisect_left(bounds, amount)](1)

    return observe_fast


def _locked_histogram(child: Any) -> tuple[Callable[[float], None], list[float], Any, Any,
                                            list[Any], list[Any]] | None:
    """``(observe, bounds, sum holder, its lock, bucket holders, their locks)`` of a
    prometheus_client ``Histogram`` child whose holders are all ``MutexValue`` (see
    :func:`histogram_observer`), else ``None`` (never raises)."""
    try:
        from prometheus_client import Histogram

        if type(child).observe is not Histogram.observe:
            return None
        mutex = _mutex_value_class()
        total = child._sum
        buckets = list(child._buckets)
        bounds = [float(b) for b in child._upper_bounds]
        if (mutex is None or type(total) is not mutex or not buckets
                or any(type(b) is not mutex for b in buckets) or len(bounds) != len(buckets)
                or bounds[-1] != float("inf") or bounds != sorted(bounds)):
            return None
        return child.observe, bounds, total, total._lock, buckets, [b._lock for b in buckets]
    except Exception:
        return None


def _count_nothing(_amount: float) -> None:
    """What :func:`request_recorder` does for a series a cardinality guard dropped."""


def request_recorder(counter: Any, histogram: Any) -> Callable[[float], None]:
    """``record(duration)``: ``counter.inc()`` and ``histogram.observe(duration)`` (no
    exemplar) as one call; either child may be ``None`` (dropped by a guard: nothing is
    recorded for it).

    Internal: the same as :func:`value_holder` and :func:`histogram_observer`. Why: the
    metrics-only request pass records both series of a request together; with
    single-process ``MutexValue`` holders the counter's, the sum's and the bucket's
    ``inc`` are done inline, each under its own lock, in one Python call instead of
    three. Public replacement: ``inc()`` and ``observe()``; the fallback (another value
    class, such as multiprocess mode's, other internals, a dropped series) calls the
    holder's ``inc`` and :func:`histogram_observer`'s function, which fall back on their
    own. Resolved once per series.

    The locks are taken with ``acquire()`` and released in ``finally``, as ``with`` does
    but cheaper: a lock's ``__enter__`` parses the arguments ``acquire`` takes (about
    70 ns more per use, five uses per request).
    """
    holder: Any = value_holder(counter) if counter is not None else None
    mutex = _mutex_value_class()
    locked = _locked_histogram(histogram) if histogram is not None else None
    if locked is not None and mutex is not None and type(holder) is mutex:
        return _locked_recorder(holder, locked, None)
    count = holder.inc if holder is not None else _count_nothing
    observe_any = histogram_observer(histogram) if histogram is not None else _count_nothing

    def record(amount: float) -> None:
        count(1)
        observe_any(amount)

    return record


def request_done_recorder(counter: Any, histogram: Any,
                          in_progress: Any) -> Callable[[float], None] | None:
    """``record(duration)``: what :func:`request_recorder`'s function does, and
    ``in_progress.inc(-1)`` (the request leaves ``http_requests_in_progress``), as one call;
    ``None`` unless every holder is a single-process ``MutexValue``.

    Internal: the same as :func:`request_recorder`, and the gauge holder's ``_lock`` and
    ``_value`` (``in_progress``: a :func:`value_holder` of the gauge's child). Why: the
    request pass ends each tracked request with both, the gauge's ``inc(-1)`` one Python
    call more than the counter's and the histogram's; here it is done inline, under the
    gauge holder's own lock, as ``inc`` does. Public replacement: ``inc()``,
    ``observe()`` and ``dec()``; with ``None`` (another value class, such as multiprocess
    mode's, other internals, a dropped series) the caller records through
    :func:`request_recorder` and calls ``in_progress.inc(-1)`` itself. Resolved once per
    series.
    """
    mutex = _mutex_value_class()
    if mutex is None or type(in_progress) is not mutex or counter is None or histogram is None:
        return None
    holder = value_holder(counter)
    locked = _locked_histogram(histogram)
    if locked is None or type(holder) is not mutex:
        return None
    return _locked_recorder(holder, locked, in_progress)


def _locked_recorder(holder: Any, locked: tuple[Any, ...],
                     in_progress: Any) -> Callable[[float], None]:
    """The inline recorder of :func:`request_recorder` (``in_progress``: None) and
    :func:`request_done_recorder` (the gauge's ``MutexValue`` holder, taken down by 1
    first): ``MutexValue`` holders only, each updated under its own lock."""
    from bisect import bisect_left

    observe, bounds, total, sum_lock, buckets, locks = locked
    c_lock = holder._lock
    g_lock = in_progress._lock if in_progress is not None else None

    def record_locked(amount: float) -> None:
        if g_lock is not None:
            g_lock.acquire()
            try:
                in_progress._value -= 1
            finally:
                g_lock.release()
        c_lock.acquire()
        try:
            holder._value += 1
        finally:
            c_lock.release()
        if amount != amount:  # NaN: no bucket (observe's walk finds none)
            observe(amount)
            return
        sum_lock.acquire()
        try:
            total._value += amount
        finally:
            sum_lock.release()
        i = bisect_left(bounds, amount)
        lock = locks[i]
        lock.acquire()
        try:
            buckets[i]._value += 1
        finally:
            lock.release()

    return record_locked


def _mutex_value_class() -> Any:
    """prometheus_client's ``MutexValue`` when its ``inc`` and ``set_exemplar`` still work on
    ``_lock``, ``_value`` and ``_exemplar`` (what :func:`exemplar_recorder` writes under the
    lock), else ``None``."""
    from prometheus_client import values

    cls = getattr(values, "MutexValue", None)
    if cls is None:
        return None
    if not ({"_lock", "_value"} <= _names_used(getattr(cls, "inc", None))
            and {"_lock", "_exemplar"} <= _names_used(getattr(cls, "set_exemplar", None))):
        return None
    return cls


def exemplar_recorder(counter: Any, histogram: Any) -> Callable[[float, dict[str, str]], None]:
    """``counter.inc(1, labels)`` and ``histogram.observe(amount, labels)`` as one call,
    for exemplar labels the caller built itself and knows valid.

    Internal: the value holders of a prometheus_client ``Counter`` child
    (``child._value``) and ``Histogram`` child (``_sum``, ``_upper_bounds``,
    ``_buckets``), their ``inc``/``set_exemplar``, ``samples.Exemplar`` as a tuple;
    for the single-process ``MutexValue`` its ``_lock``, ``_value`` and
    ``_exemplar`` (checked in its methods' code). Why: with an exemplar, ``inc()``
    and ``observe()`` check the label state and validate the exemplar's labels
    (each name against the label-name rules, their length) on every call: about
    37 of the 50 prometheus_client calls of a traced request. The request pass
    attaches its own span's ids (``trace_id``: 32 hex, ``span_id``: 16 hex, 63
    characters with the names), always valid, to children it resolved once. The
    returned function adds 1 to the counter and ``amount`` to the histogram's sum
    and bucket (the first bound ``>=`` the amount, by :func:`bisect.bisect_left`)
    and sets the same ``Exemplar(labels, value, timestamp)`` objects ``inc()`` and
    ``observe()`` set (one ``time.time()`` for both); a ``MutexValue`` is
    incremented and given its exemplar under one acquisition of its own lock,
    other value classes (multiprocess: exemplars are not kept there) through
    their ``inc``/``set_exemplar``. A NaN goes through ``observe()``. Either
    child may be ``None`` (dropped by a cardinality guard): nothing is recorded
    for it. Public replacement: ``inc(1, labels)`` and ``observe(amount,
    labels)``, which is what the fallback calls (another class, other internals).
    Resolved once per series.
    """
    try:
        from prometheus_client import Counter, Histogram
        from prometheus_client.samples import Exemplar

        if getattr(Exemplar, "_fields", None) != ("labels", "value", "timestamp"):
            raise ValueError("unexpected Exemplar fields")
        mutex = _mutex_value_class()
        c_value: Any = None
        c_inc: Any = None
        c_set: Any = None
        c_lock: Any = None
        h_observe: Any = None
        bounds: list[float] = []
        buckets: list[Any] = []
        sum_inc: Any = None
        b_inc: list[Any] = []
        b_set: list[Any] = []
        b_locked: list[Any] | None = None
        h_sum: Any = None
        sum_lock: Any = None
        c_plain = counter is None
        if counter is not None:
            if type(counter).inc is not Counter.inc:
                raise ValueError("not prometheus_client's Counter")
            c_value = counter._value
            c_inc, c_set = c_value.inc, c_value.set_exemplar
            c_lock = c_value._lock if mutex is not None and type(c_value) is mutex else None
        h_plain = histogram is None
        if histogram is not None:
            if type(histogram).observe is not Histogram.observe:
                raise ValueError("not prometheus_client's Histogram")
            h_observe = histogram.observe
            bounds = [float(b) for b in histogram._upper_bounds]
            buckets = list(histogram._buckets)
            sum_inc = histogram._sum.inc
            b_set = [b.set_exemplar for b in buckets]
            b_inc = [b.inc for b in buckets]
            if (not bounds or len(bounds) != len(buckets) or bounds[-1] != float("inf")
                    or bounds != sorted(bounds) or not callable(sum_inc)):
                raise ValueError("unexpected histogram buckets")
            h_sum = histogram._sum
            if (mutex is not None and type(h_sum) is mutex
                    and all(type(b) is mutex for b in buckets)):
                b_locked = [b._lock for b in buckets]
                sum_lock = h_sum._lock
    except Exception as exc:
        _degrade("prometheus_client exemplar value holders",
                 "request exemplars are attached through inc() and observe()", exc)

        def record_public(amount: float, labels: dict[str, str]) -> None:
            if counter is not None:
                counter.inc(1, labels)
            if histogram is not None:
                histogram.observe(amount, labels)

        return record_public
    from bisect import bisect_left

    make = tuple.__new__  # Exemplar(labels, value, timestamp), without its Python __new__
    now = time.time
    c_acquire: Any = c_lock.acquire if c_lock is not None else None
    c_release: Any = c_lock.release if c_lock is not None else None
    sum_acquire: Any = sum_lock.acquire if sum_lock is not None else None
    sum_release: Any = sum_lock.release if sum_lock is not None else None

    def record(amount: float, labels: dict[str, str]) -> None:
        ts = now()
        if not c_plain:
            one = make(Exemplar, (labels, 1, ts))
            if c_acquire is not None:
                c_acquire()  # acquire/release: C calls, where ``with`` runs two in Python
                try:
                    c_value._value += 1
                    c_value._exemplar = one
                finally:
                    c_release()
            else:
                c_inc(1)
                c_set(one)
        if h_plain:
            return
        if amount != amount:  # NaN: no bucket, no exemplar (observe's walk finds none)
            h_observe(amount, labels)
            return
        i = bisect_left(bounds, amount)
        ex = make(Exemplar, (labels, amount, ts))
        if b_locked is not None:
            sum_acquire()
            try:
                h_sum._value += amount
            finally:
                sum_release()
            bucket = buckets[i]
            lock = b_locked[i]
            lock.acquire()
            try:
                bucket._value += 1
                bucket._exemplar = ex
            finally:
                lock.release()
        else:
            sum_inc(amount)
            b_inc[i](1)
            b_set[i](ex)

    return record


def multiprocess_values_active() -> bool:
    """True when prometheus_client was imported in multiprocess mode (values in files).

    Internal: ``prometheus_client.values.ValueClass._multiprocess``. Why: the mode
    is fixed when prometheus_client is imported (it reads
    ``PROMETHEUS_MULTIPROC_DIR`` then), and the library must tell a variable set
    too late from one set in time. Public replacement: none (a
    ``prometheus_client.values.is_multiprocess()`` would do). Fallback: the value
    class is not the single-process ``MutexValue``.
    """
    try:
        from prometheus_client import values

        cls = values.ValueClass
    except (ImportError, AttributeError) as exc:
        _degrade("prometheus_client.values.ValueClass",
                 "multiprocess mode is assumed off", exc)
        return False
    flag = getattr(cls, "_multiprocess", None)
    if isinstance(flag, bool):
        return flag
    return cls is not getattr(values, "MutexValue", cls)


def use_multiprocess_values() -> bool:
    """Switch prometheus_client to the value class its environment asks for now.

    Internal: ``values.ValueClass = values.get_value_class()``. Why: the gunicorn
    config module sets ``PROMETHEUS_MULTIPROC_DIR`` after importing this package
    (which imported prometheus_client), and before any metric value exists, so
    the choice prometheus_client made at import can still be corrected. Public
    replacement: none; users set the variable before starting the server.
    Returns False (and logs once) when the internal is missing: the
    multiprocess check at init then raises its configuration error.
    """
    try:
        from prometheus_client import values

        get_value_class = values.get_value_class
        values.ValueClass = get_value_class()  # type: ignore[no-untyped-call]
    except Exception as exc:
        _degrade("prometheus_client.values.get_value_class",
                 "set PROMETHEUS_MULTIPROC_DIR before the server starts", exc)
        return False
    return True


_LOCK_TYPE = type(threading.Lock())


def renew_multiprocess_value_lock() -> bool:
    """Give prometheus_client's multiprocess value lock a fresh lock (call in a forked child).

    Internal: the module-level lock of ``values.MultiProcessValue``, a closure
    variable shared by the methods of the value class (``ValueClass.inc``).
    Why: prometheus_client guards every value of the process with that one
    lock and registers no fork hook, so a child forked while another thread of
    the parent (the gunicorn master's metrics listener) held it would block
    forever at its first increment. Public replacement: a fork hook in
    prometheus_client itself. Returns False when no such lock is found.
    """
    try:
        from prometheus_client import values

        method = getattr(values.ValueClass, "inc", None)
        renewed = False
        for cell in getattr(method, "__closure__", None) or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if type(contents) is _LOCK_TYPE:
                cell.cell_contents = threading.Lock()
                renewed = True
    except Exception as exc:
        _degrade("the prometheus_client multiprocess value lock",
                 "a forked worker may wait on a lock its parent held", exc)
        return False
    if not renewed:
        _degrade("the prometheus_client multiprocess value lock",
                 "a forked worker may wait on a lock its parent held")
    return renewed


def renew_metric_lock(metric: Any) -> None:
    """Give a labelled prometheus_client metric a fresh ``labels()`` lock (in a forked child).

    Internal: ``metric._lock`` (taken by ``labels()`` and ``remove()``). Why:
    like the value lock, it has no fork hook, and the library keeps one metric
    object per definition for the life of a multiprocess worker. Public
    replacement: a fork hook in prometheus_client. A metric without it has
    nothing to renew.
    """
    if hasattr(metric, "_lock"):
        metric._lock = threading.Lock()


def labelled_children(metric: Any) -> list[tuple[dict[str, str], Any]]:
    """``(labels, child)`` of every child of a prometheus_client metric (itself if unlabelled).

    Internal: ``metric._labelnames``, ``metric._lock`` and ``metric._metrics``.
    Why: in multiprocess mode prometheus_client drops exemplars, so the scraping
    worker attaches the ones its children remembered (``_MPCounter`` and
    ``_MPHistogram``). Public replacement: none (``collect()`` yields samples,
    not children). Fallback: no children, so no exemplars in multiprocess mode.
    """
    try:
        labelnames = metric._labelnames
        if not labelnames:
            return [({}, metric)]
        with metric._lock:
            items = list(metric._metrics.items())
    except Exception as exc:
        _degrade("prometheus_client metric children",
                 "multiprocess scrapes carry no exemplars", exc)
        return []
    return [(dict(zip(labelnames, values, strict=False)), child) for values, child in items]


def metric_base_name(metric: Any) -> str | None:
    """The name a prometheus_client metric was built with (no ``_total``), or None.

    Internal: ``metric._name``. Public replacement: ``metric.describe()[0].name``,
    the fallback (it builds a family, so it is slower).
    """
    name = getattr(metric, "_name", None)
    if isinstance(name, str):
        return name
    try:
        return str(metric.describe()[0].name)
    except Exception:
        return None


def histogram_upper_bounds(histogram: Any) -> Sequence[float] | None:
    """The bucket upper bounds of a prometheus_client histogram (``+Inf`` last), or None.

    Internal: ``histogram._upper_bounds``. Why: the multiprocess histogram
    remembers the last exemplar of each bucket, by bucket index. Public
    replacement: none (the buckets passed at construction). Fallback: None,
    and the caller records no exemplar.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    if isinstance(bounds, Sequence) and bounds:
        return bounds
    _degrade("prometheus_client histogram bucket bounds",
             "multiprocess histograms carry no exemplars")
    return None


def registry_collectors(registry: Any) -> list[Any]:
    """The collectors registered on a ``CollectorRegistry``, in registration order.

    Internal: ``registry._lock`` and ``registry._collector_to_names``. Why: in
    multiprocess mode the scraping worker serves the collectors of its own
    registry (system metrics, callback gauges) beside the files. Public
    replacement: none. Fallback: none listed (those families go missing from
    multiprocess scrapes; logged once).
    """
    try:
        with registry._lock:
            return list(registry._collector_to_names)
    except Exception as exc:
        _degrade("CollectorRegistry collectors",
                 "multiprocess scrapes leave out this process's own collectors", exc)
        return []


_TYPE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "info": ("_info",),
}


def registered_names(registry: Any) -> set[str]:
    """Every series name a ``CollectorRegistry`` would refuse as a duplicate.

    Internal: ``registry._names_to_collectors``. Why: with
    ``expose_global_registry`` the library checks at init that prometheus_client's
    global registry holds no name it exposes too, and leaves ``process_*`` to
    it. Public replacement: none. Fallback: the names of what ``collect()``
    yields now, with prometheus_client's type suffixes (slower, same answer for
    collectors that describe themselves).
    """
    names = getattr(registry, "_names_to_collectors", None)
    if isinstance(names, Mapping):
        return set(names)
    found: set[str] = set()
    try:
        for family in registry.collect():
            found.add(family.name)
            found.update(family.name + s for s in _TYPE_SUFFIXES.get(family.type, ()))
            found.update(sample.name for sample in family.samples)
    except Exception as exc:
        _degrade("CollectorRegistry names", "duplicate names are not checked", exc)
    return found


# ---------------------------------------------------------------------- multiprocess files
# prometheus_client's per-process file (``mmap_dict.MmapedDict``): a 4-byte int
# (bytes used), 4 spare bytes, then entries: a 4-byte key length, the UTF-8
# key padded with spaces to 8-byte alignment, two doubles (value, timestamp).
# Files are named ``<kind>_<pid>.db``, ``kind`` being the metric type, or
# ``gauge_<mode>`` for gauges; prometheus_client's merge reads the kind (and a
# gauge's mode) from the name. The library reads, merges and writes these
# files to keep scrapes bounded with recycled workers (multiprocess.py).
_HEADER = struct.Struct("<ii")
_LENGTH = struct.Struct("<i")
_ENTRY_VALUES = struct.Struct("<dd")


def read_values_file(filename: str) -> Iterator[tuple[str, float, float]]:
    """``(key, value, timestamp)`` of every entry of one file.

    Internal: ``prometheus_client.mmap_dict.MmapedDict.read_all_values_from_file``
    (an undocumented static method). Public replacement: none. Fallback: the
    library's own reader of the same format. Raises ``FileNotFoundError``, and
    ``struct.error`` for an empty file (its process died before writing).
    """
    try:
        from prometheus_client.mmap_dict import MmapedDict

        reader = MmapedDict.read_all_values_from_file
    except (ImportError, AttributeError) as exc:
        _degrade("prometheus_client.mmap_dict.MmapedDict", "its files are read by our own "
                 "reader of the same format", exc)
        yield from _read_values_ourselves(filename)
        return
    for key, value, timestamp, _pos in reader(filename):  # type: ignore[no-untyped-call]
        yield key, value, timestamp


def _read_values_ourselves(filename: str) -> Iterator[tuple[str, float, float]]:
    with open(filename, "rb") as f:
        data = f.read()
    used = _LENGTH.unpack_from(data, 0)[0]
    pos = _HEADER.size
    while pos < used:
        length = _LENGTH.unpack_from(data, pos)[0]
        if length < 0 or pos + length > used:
            raise RuntimeError(f"{filename}: read beyond the used size; the file is corrupted")
        pos += _LENGTH.size
        key = data[pos:pos + length].decode("utf-8")
        pos += length + (8 - (length + 4) % 8)
        value, timestamp = _ENTRY_VALUES.unpack_from(data, pos)
        pos += _ENTRY_VALUES.size
        yield key, value, timestamp


def write_values_file(filename: str, entries: Mapping[str, tuple[float, float]],
                      spare_word: int) -> None:
    """Write ``entries`` (key -> (value, timestamp)) as one file, atomically.

    File format: see the comment above; the header's spare word holds
    ``spare_word`` (prometheus_client leaves it zero and never reads it). Public
    replacement: none (``MmapedDict`` writes one value at a time, in place).
    """
    body = bytearray()
    for key, (value, timestamp) in entries.items():
        encoded = key.encode("utf-8")
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        body += _LENGTH.pack(len(encoded)) + padded + _ENTRY_VALUES.pack(value, timestamp)
    used = _HEADER.size + len(body)
    tmp = filename + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, _HEADER.pack(used, spare_word) + bytes(body))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, filename)


def values_file_spare_word(filename: str) -> int:
    """The spare header word of a file (0 when missing or short)."""
    try:
        with open(filename, "rb") as f:
            head = f.read(_HEADER.size)
    except FileNotFoundError:
        return 0
    return int(_HEADER.unpack(head)[1]) if len(head) == _HEADER.size else 0


def values_file_pid(name: str) -> int | None:
    """The pid in a file name ``<kind>_<pid>.db``, or None (not such a file, or an archive)."""
    if not name.endswith(".db"):
        return None
    tail = name[:-3].rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def values_file_kind(name: str) -> str:
    """The ``kind`` of a file name ``<kind>_<pid>.db`` (``counter``, ``gauge_livesum`` ...)."""
    return name[:-3].rsplit("_", 1)[0] if name.endswith(".db") else name


def merge_values_files(files: Sequence[str]) -> list[Any]:
    """The metric families of ``files`` merged as prometheus_client's multiprocess collector does.

    Internal: ``MultiProcessCollector.merge(files, accumulate=True)`` (an
    undocumented static method). Why: the library chooses the files (it skips
    ones a worker has not sized yet, and reads under its merge lock). Public
    replacement: ``MultiProcessCollector(registry, path)``, the fallback: it
    reads every file of the directory of the first one.
    """
    from prometheus_client.multiprocess import MultiProcessCollector

    merge = getattr(MultiProcessCollector, "merge", None)
    if callable(merge):
        return list(merge(files, accumulate=True))
    _degrade("prometheus_client MultiProcessCollector.merge",
             "scrapes read the whole directory through the public collector")
    if not files:
        return []
    collector = MultiProcessCollector(None, path=os.path.dirname(files[0]))  # type: ignore[no-untyped-call]
    return list(collector.collect())  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------------- files that cannot grow
# prometheus_client's ``MmapedDict`` creates its file with ``truncate`` (a sparse file)
# and grows it the same way, then writes through the mmap. When the filesystem is full,
# the kernel cannot back the page being written and the process gets SIGBUS (exit 135):
# a full PROMETHEUS_MULTIPROC_DIR kills the worker. The guard below reserves the space
# with ``os.posix_fallocate`` (which fails with ENOSPC, or an explicit write of zeros
# where fallocate is unsupported) *before* the mmap is written, and when the file cannot
# grow, a new key (a new label set) is not added: its value lives only in the
# prometheus_client value object of this process, existing series keep updating, and
# the drop is counted. Internals: ``MmapedDict.__init__``, ``_init_value``,
# ``read_value``, ``write_value`` and its attributes ``_f``, ``_m``, ``_used``,
# ``_capacity``, ``_positions`` (checked below through the names the originals use),
# ``mmap_dict._INITIAL_MMAP_SIZE``, and the value class's ``__init__`` (drops are
# reported after it returns, outside prometheus_client's value lock, which the error
# counter's own increment takes). Public replacement: none (prometheus_client could
# reserve before growing). Fallback: prometheus_client's own code (logged once).
_ENTRY_HEAD = struct.Struct("<i")
_TWO_DOUBLES = struct.Struct("<dd")
_pack_two_doubles = _TWO_DOUBLES.pack
_unpack_two_doubles = _TWO_DOUBLES.unpack_from
#: seconds between two attempts to grow a file that could not grow
_GROW_RETRY_SECONDS = 5.0
_values_guarded = False
_values_guard_lock = threading.Lock()
# drops are counted under prometheus_client's value lock (serialised there) and reported
# under this lock, outside it: ``_dropped`` only grows, ``_reported`` follows it
_dropped = 0
_reported = 0
_drops_lock = threading.Lock()
_drop_listener: Callable[[int], object] | None = None


def _drops_reported_by_parent() -> None:  # pragma: no cover - runs in forked children
    # fresh locks (a parent thread may have held them), and what the parent dropped is the
    # parent's to report (one renew_locks_after_fork per module: that one renews _degraded_lock)
    global _reported, _drops_lock, _values_guard_lock
    _drops_lock = threading.Lock()
    _values_guard_lock = threading.Lock()
    _reported = _dropped


run_after_fork(_drops_reported_by_parent)


def _reserve(fd: int, offset: int, length: int, *, may_write: bool) -> None:
    """Make the file's blocks in ``[offset, offset+length)`` exist (raises ``OSError`` if not).

    ``may_write``: the range holds no data, so zeros may be written where the
    filesystem has no fallocate.
    """
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        try:
            fallocate(fd, offset, length)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS) or not may_write:
                raise
    elif not may_write:
        return  # nothing safe to try; prometheus_client's own behaviour
    zeros = bytes(min(length, 1 << 16))
    pos, end = offset, offset + length
    while pos < end:
        pos += os.pwrite(fd, zeros[: end - pos], pos)


def _note_drop() -> None:
    global _dropped
    _dropped += 1  # the caller holds prometheus_client's value lock


def values_dropped_total() -> int:
    """New series this process could not add to its files (the directory was full)."""
    return _dropped


def set_values_drop_listener(listener: Callable[[int], object] | None) -> None:
    """Call ``listener(n)`` with the number of newly dropped series (outside any metric lock)."""
    global _drop_listener
    _drop_listener = listener
    flush_values_drops()


def flush_values_drops() -> None:
    """Report the drops counted since the last report to the listener (never raises)."""
    global _reported
    listener = _drop_listener
    if listener is None or _dropped == _reported:
        return
    with _drops_lock:
        n = _dropped - _reported
        _reported += n
    if n > 0:
        try:
            listener(n)
        except Exception:
            _log.debug("the multiprocess drop listener failed", exc_info=True)


def _wrap_value_class(cls: Any) -> None:
    """Report drops after each value object of the multiprocess value class is made."""
    original = cls.__init__
    if getattr(original, "_mestres_reports_drops", False):
        return

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if _dropped != _reported:
            flush_values_drops()

    __init__._mestres_reports_drops = True  # type: ignore[attr-defined]
    cls.__init__ = __init__


def _names_used(fn: Any) -> set[str]:
    code = getattr(fn, "__code__", None)
    return set(getattr(code, "co_names", ()))


def guard_values_files() -> bool:
    """Make prometheus_client's per-process files reserve space before they grow.

    See the comment above. Idempotent; call it in multiprocess mode before the
    first metric value (it also covers files already open). Returns False (and
    logs once) when prometheus_client's file class is not the one this was
    written for: then a full directory can still end the process with SIGBUS.
    """
    global _values_guarded
    with _values_guard_lock:
        if _values_guarded:
            _wrap_current_value_class()
            return True
        try:
            from prometheus_client import mmap_dict

            cls = mmap_dict.MmapedDict
            initial = mmap_dict._INITIAL_MMAP_SIZE
            original_init = getattr(cls.__init__, "_mestres_original", cls.__init__)
            needed = {
                "__init__": {"_f", "_m", "_used", "_capacity", "_positions"},
                "_init_value": {"_used", "_capacity", "_f", "_m", "_positions", "truncate"},
                "read_value": {"_positions", "_init_value", "_m"},
                "write_value": {"_positions", "_init_value", "_m"},
            }
            missing = [name for name, names in needed.items()
                       if not names <= _names_used(getattr(cls, name, None))]
            if missing or not isinstance(initial, int) or initial <= 0:
                raise AttributeError(f"MmapedDict internals changed: {missing or 'size'}")
        except Exception as exc:
            _degrade("prometheus_client.mmap_dict.MmapedDict growth",
                     "a full multiprocess directory can still end the process with SIGBUS", exc)
            return False
        _install_values_guard(cls, original_init, initial)
        _values_guarded = True
        _wrap_current_value_class()
        return True


def _wrap_current_value_class() -> None:
    try:
        from prometheus_client import values

        cls = values.ValueClass
        if getattr(cls, "_multiprocess", False):
            _wrap_value_class(cls)
    except Exception as exc:
        _degrade("prometheus_client.values.ValueClass.__init__",
                 "series dropped on a full multiprocess directory are counted at scrape time",
                 exc)


def _install_values_guard(cls: Any, original_init: Callable[..., None], initial: int) -> None:
    def attach(self: Any, filename: str) -> bool:
        """Open ``filename`` with its space reserved; False when the space is not there."""
        try:
            with open(filename, "a+b") as f:
                fd = f.fileno()
                size = os.fstat(fd).st_size
                if size == 0:
                    try:
                        _reserve(fd, 0, initial, may_write=True)
                    except OSError:
                        os.ftruncate(fd, 0)  # leave it empty: scrapes skip empty files
                        raise
            original_init(self, filename)
        except OSError:
            return False
        # a file opened again keeps its size; what lies past ``_used`` may be a hole
        self._mestres_backed = self._capacity if size == 0 else self._used
        self._mestres_retry_at = 0.0
        return True

    def __init__(self: Any, filename: str, read_mode: bool = False) -> None:
        if read_mode:
            original_init(self, filename, read_mode)
            return
        if not attach(self, filename):
            # detached: no file yet; every key is dropped until the space is there
            self._f = None  # prometheus_client's close() then does nothing
            self._m = None
            self._fname = filename
            self._capacity = 0
            self._used = 8
            self._positions = {}
            self._mestres_backed = 0
            self._mestres_retry_at = time.monotonic() + _GROW_RETRY_SECONDS

    def _init_value(self: Any, key: str) -> bool:
        """Add ``key``; False (nothing written) when the file cannot grow."""
        retry_at = getattr(self, "_mestres_retry_at", 0.0)
        if retry_at:
            if time.monotonic() < retry_at:
                return False
            self._mestres_retry_at = 0.0
            if self._f is None and not attach(self, self._fname):
                self._mestres_retry_at = time.monotonic() + _GROW_RETRY_SECONDS
                return False
        encoded = key.encode("utf-8")
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        entry = _ENTRY_HEAD.pack(len(encoded)) + padded + _pack_two_doubles(0.0, 0.0)
        used = self._used
        end = used + len(entry)
        backed = getattr(self, "_mestres_backed", used)
        if end > backed:
            capacity = self._capacity
            grown = capacity
            while end > grown:
                grown *= 2
            fd = self._f.fileno()
            try:
                _reserve(fd, backed, grown - backed, may_write=True)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, capacity)  # give back what a failed reserve took
                self._mestres_retry_at = time.monotonic() + _GROW_RETRY_SECONDS
                return False
            self._mestres_backed = grown
            if grown != capacity:
                self._capacity = grown
                self._m = mmap.mmap(fd, grown)
        self._m[used:end] = entry
        self._used = end
        self._m[0:4] = _ENTRY_HEAD.pack(end)
        self._positions[key] = end - 16
        return True

    def read_value(self: Any, key: str) -> tuple[float, float]:
        pos = self._positions.get(key)
        if pos is None:
            if not self._init_value(key):
                _note_drop()  # a new series (values are read once, when a child is made)
                return 0.0, 0.0
            pos = self._positions[key]
        return _unpack_two_doubles(self._m, pos)

    def write_value(self: Any, key: str, value: float, timestamp: float) -> None:
        pos = self._positions.get(key)
        if pos is None:
            if not self._init_value(key):
                return  # a dropped series: its value stays in this process's value object
            pos = self._positions[key]
        self._m[pos:pos + 16] = _pack_two_doubles(value, timestamp)  # one slice: atomic

    __init__._mestres_original = original_init  # type: ignore[attr-defined]
    cls.__init__ = __init__
    cls._init_value = _init_value
    cls.read_value = read_value
    cls.write_value = write_value


# ====================================================================== OpenTelemetry SDK
def span_queue(processor: Any) -> Any:
    """The bounded queue (a ``collections.deque``) inside a ``BatchSpanProcessor``, or None.

    Internal: ``processor._batch_processor._queue`` (SDK 1.28 and later; before
    that ``processor.queue``). Why: a span that arrives at a full queue is
    dropped and counted before the SDK sees it (the SDK would drop the oldest
    and log a warning per span, costing the caller a log record each time),
    and the spans still queued tell export failures from queue drops. Public
    replacement: none (a queue-size callback or a drop counter in the SDK).
    Fallback: None; the caller then leaves queue-full drops to the SDK.
    Resolved once per processor; the caller keeps the deque.
    """
    inner = getattr(processor, "_batch_processor", None)
    queue = getattr(inner, "_queue", None) if inner is not None else getattr(
        processor, "queue", None)
    if queue is not None and callable(getattr(queue, "__len__", None)) and callable(
            getattr(queue, "clear", None)):
        return queue
    _degrade("the BatchSpanProcessor queue",
             "spans dropped at a full queue are left to the SDK (logged, not counted)")
    return None


def span_emitter(processor: Any) -> Callable[[Any], None] | None:
    """A function queueing one sampled, ended span into a ``BatchSpanProcessor`` as its
    ``on_end`` does, in one call; or None.

    Internal: ``processor._batch_processor`` and its ``_queue``, ``_shutdown``,
    ``_pid``, ``_max_export_batch_size`` and ``_worker_awaken`` (SDK 1.28 and later).
    Why: ``on_end`` checks the sampled flag (the caller's lean spans are sampled) and
    goes through ``BatchProcessor.emit``: two Python calls per span, on the thread of
    the request. The function does what ``emit`` does (append to the deque, wake the
    worker once a batch is full) and hands the span to ``on_end`` itself when the
    processor is shut down, its queue is full or the process forked since (told by
    ``_forksafe.fork_generation``, not by ``os.getpid()``, a system call per span, which
    is checked once per batch for forks made without the interpreter's hooks; the
    SDK's own re-init, drop count and warnings then apply). Public replacement:
    none. Fallback: None; the caller then calls ``processor.on_end``.
    """
    inner = getattr(processor, "_batch_processor", None)
    queue = getattr(inner, "_queue", None)
    batch = getattr(inner, "_max_export_batch_size", None)
    if (inner is None or not isinstance(queue, deque) or queue.maxlen is None
            or type(batch) is not int or not hasattr(inner, "_worker_awaken")
            or type(getattr(inner, "_pid", None)) is not int
            or type(getattr(inner, "_shutdown", None)) is not bool):
        _degrade("the BatchSpanProcessor's queue", "lean spans are queued through on_end")
        return None
    on_end = processor.on_end
    append = queue.appendleft
    popleft = queue.popleft
    maxlen = queue.maxlen
    getpid = os.getpid
    forks = fork_generation
    # the fork generation this emitter last saw: compared instead of ``inner._pid !=
    # os.getpid()``, a system call per span (what BatchProcessor.emit does); a forked
    # child's first span goes through on_end, where the SDK checks the pid itself
    # (and re-initialises the processor unless its own fork hook did already)
    seen = [forks.n]
    # spans queued since the pid was last checked: a fork made without the interpreter's
    # fork hooks (a server forking from C without PyOS_AfterFork_Child: uWSGI unless
    # py-call-osafterfork) bumps no generation, so the pid is still checked once per
    # batch; those spans are then handed to on_end, oldest first (the first one makes
    # the SDK re-initialise the processor: a fresh queue and worker), and none is lost
    since = [0]

    def emit(span: Any) -> None:
        n = len(queue)
        if n >= maxlen or inner._shutdown or forks.n != seen[0]:
            on_end(span)  # full (the SDK drops and counts), shut down, or forked
            seen[0] = forks.n
            since[0] = 0
            return
        append(span)
        k = since[0] + 1
        if k >= batch:
            since[0] = 0
            if inner._pid != getpid():  # forked from C since: see above
                mine = []
                for _ in range(min(k, len(queue))):
                    mine.append(popleft())
                for queued in reversed(mine):
                    on_end(queued)
                return
        else:
            since[0] = k
        if n + 1 >= batch:
            awaken = inner._worker_awaken  # replaced in a forked child
            if not awaken.is_set():
                awaken.set()

    return emit


def otlp_span_sender(exporter: Any) -> Callable[[bytes], bool] | None:
    """A function sending one serialized ``ExportTraceServiceRequest`` through ``exporter``
    (the OTLP/HTTP span exporter), True when the collector accepted it; or None.

    Internal: ``OTLPSpanExporter._client`` (its HTTP client: compression, retries
    with backoff and ``Retry-After`` within the exporter's timeout), ``_shutdown``
    and ``_max_request_size`` (exporter 1.4x). Why: the lean spans are encoded
    straight into the request's protobuf bytes (the bytes the SDK's encoder
    produces, four to five times faster), so only the sending half of
    ``export()`` is needed. Public replacement: an exporter method taking
    serialized bytes. Fallback: None, and the caller hands ``ReadableSpan``
    objects to ``export()`` (the encoding then costs what the SDK's does); also
    None for a subclass of the exporter (it may change ``export()``) and when
    the SDK's internal metrics are on (``export()`` counts spans in them).
    Resolved once per pipeline.
    """
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        return None
    if type(exporter) is not OTLPSpanExporter:
        return None
    if os.environ.get("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "").strip().lower() == "true":
        return None
    client = getattr(exporter, "_client", None)
    send = getattr(client, "export", None)
    limit = getattr(exporter, "_max_request_size", None)
    if not callable(send) or not isinstance(limit, int) or not isinstance(
            getattr(exporter, "_shutdown", None), bool):
        _degrade("OTLPSpanExporter._client",
                 "lean spans are encoded by the SDK's encoder before export (more CPU per span)")
        return None

    def sender(body: bytes) -> bool:
        if exporter._shutdown:
            return False
        if limit > 0 and len(body) > limit:
            _log.warning("Dropping span batch: serialized size %d bytes exceeds max_request_size "
                         "%d bytes.", len(body), limit)
            return False
        return bool(getattr(send(body), "success", False))

    return sender


def _span_context_is_tuple() -> bool:
    """True when ``SpanContext`` is the 6-tuple :func:`valid_span_context_maker` and
    :func:`span_context_unpacks` rely on (checked once, with both ways of making one)."""
    global _SPAN_CONTEXT_TUPLE
    if _SPAN_CONTEXT_TUPLE is None:
        from opentelemetry.trace import SpanContext, TraceFlags, TraceState

        try:
            make = functools.partial(tuple.__new__, SpanContext)
            state = TraceState([("k", "v")])
            for args in ((0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, False,
                          TraceFlags(1), state), ((1 << 128) - 1, (1 << 64) - 1, True,
                                                  TraceFlags(2), TraceState())):
                ours, theirs = make((*args, True)), SpanContext(*args)
                fields = (*args, True)
                if (type(ours) is not SpanContext or ours != theirs or len(theirs) != 6
                        or tuple(theirs) != fields
                        or (ours.trace_id, ours.span_id, ours.is_remote, ours.trace_flags,
                            ours.trace_state, ours.is_valid) != fields):
                    raise ValueError("SpanContext is not the tuple it was")
            invalid = SpanContext(0, 0, False)
            if tuple(invalid)[5] is not False or invalid.is_valid is not False:
                raise ValueError("SpanContext is not the tuple it was")
        except Exception as exc:
            _degrade("opentelemetry SpanContext as a tuple",
                     "lean spans make and read their contexts through SpanContext's API", exc)
            _SPAN_CONTEXT_TUPLE = False
        else:
            _SPAN_CONTEXT_TUPLE = True
    return _SPAN_CONTEXT_TUPLE


_SPAN_CONTEXT_TUPLE: bool | None = None


def valid_span_context_maker() -> Callable[[tuple[Any, ...]], Any]:
    """``make((trace_id, span_id, is_remote, trace_flags, trace_state, True))``: an
    OpenTelemetry ``SpanContext`` from ids the caller knows valid, in one C call.

    Internal: ``SpanContext`` is a ``tuple`` of ``(trace_id, span_id, is_remote,
    trace_flags, trace_state, is_valid)`` whose ``__new__`` (Python) replaces a
    ``None`` flags or state by the defaults, works out ``is_valid`` and calls
    ``tuple.__new__`` with that tuple. Why: the lean span makes one per span
    from ids it drew or took from a valid parent (non-zero, within range) and a
    ``TraceFlags`` and ``TraceState`` it has: ``__new__`` was one Python call per
    span for nothing. Checked once here: a context made both ways must be equal
    and read the same through the public properties. Public replacement:
    ``SpanContext(trace_id, span_id, is_remote, trace_flags, trace_state)``, which
    the fallback calls.
    """
    from opentelemetry.trace import SpanContext

    def public(fields: tuple[Any, ...]) -> Any:
        return SpanContext(fields[0], fields[1], fields[2], fields[3], fields[4])

    if not _span_context_is_tuple():
        return public
    return functools.partial(tuple.__new__, SpanContext)


def span_context_unpacks() -> bool:
    """True when a ``SpanContext`` (exactly that class) may be read by unpacking it:
    ``trace_id, span_id, is_remote, trace_flags, trace_state, is_valid = ctx``.

    Internal: the tuple layout behind ``SpanContext``'s properties (see
    :func:`valid_span_context_maker`; checked once, the same way). Why: each property
    is a Python call (``return self[i]``); the request pass reads five of the parent's
    fields when it starts a lean span and four of its own span's to log its ids: nine
    Python calls per traced request. Public replacement: the properties, which callers
    use when this is False or the context is of another class.
    """
    return _span_context_is_tuple()


def current_span_key() -> str | None:
    """The key under which OpenTelemetry's ``set_span_in_context`` puts the span in a
    ``Context`` (and ``get_current_span`` reads it), or None.

    Internal: ``opentelemetry.trace.propagation._SPAN_KEY``. Why: ``set_span_in_context``
    is ``set_value`` (a copy of the context, the key set, a new ``Context``) and
    ``get_current_span`` is ``get_value`` and an ABC ``isinstance``: two Python calls
    each, the first three times per traced request (the extracted parent, the SERVER
    span made current), the second once (the lean span's parent). With the key the
    caller builds the same ``Context`` (a ``dict``) or reads it with C calls. Checked
    once: a context built with the key must equal what ``set_span_in_context`` gives,
    and ``get_current_span`` must read the span from it. Public replacement:
    ``set_span_in_context`` and ``get_current_span``, which the callers use on None.
    """
    try:
        from opentelemetry.context import Context
        from opentelemetry.trace import (
            INVALID_SPAN_CONTEXT,
            NonRecordingSpan,
            get_current_span,
            set_span_in_context,
        )
        from opentelemetry.trace.propagation import _SPAN_KEY

        key = _SPAN_KEY
        probe = NonRecordingSpan(INVALID_SPAN_CONTEXT)
        base = Context({"mestres_observability.probe": 1})
        theirs = set_span_in_context(probe, base)
        ours = Context({**base, key: probe})
        if (type(key) is not str or type(theirs) is not Context or theirs != ours
                or get_current_span(ours) is not probe
                or get_current_span(Context({key: probe})) is not probe):
            raise ValueError("set_span_in_context does not set the key it had")
    except Exception as exc:
        _degrade("opentelemetry's current-span context key",
                 "spans are put into and read from contexts through the trace API", exc)
        return None
    return key


def runtime_context_ops() -> tuple[Callable[[Any], Any], Callable[[Any], None]] | None:
    """``(attach, reset)``: OpenTelemetry's ``context.attach`` and its runtime context's
    ``detach`` as the context variable's own ``set`` and ``reset``; or None.

    Internal: ``opentelemetry.context._RUNTIME_CONTEXT``, a ``ContextVarsRuntimeContext``
    (the default; ``OTEL_PYTHON_CONTEXT`` may choose another) and its ``_current_context``
    variable. Why: ``attach(ctx)`` is ``_RUNTIME_CONTEXT.attach(ctx)``, which is
    ``_current_context.set(ctx)``, and ``detach`` the same with ``reset``: four Python
    calls per traced request for two C calls. ``reset`` raises where the API's
    ``detach`` logs (a token from another context): callers catch that and hand the
    token to ``context.detach``, which logs as before. Public replacement:
    ``context.attach`` / ``context.detach``; None (another runtime context) means the
    caller uses them.
    """
    try:
        from opentelemetry import context as otel_context
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

        runtime = otel_context._RUNTIME_CONTEXT
        if type(runtime) is not ContextVarsRuntimeContext:
            return None  # someone's own runtime context: the API, which calls it
        var = runtime._current_context
        if not isinstance(var, contextvars.ContextVar):
            raise TypeError(f"_current_context is {type(var).__name__}")
        probe = otel_context.Context({"mestres_observability.probe": 1})
        token = var.set(probe)
        try:
            seen = otel_context.get_current()
        finally:
            var.reset(token)
        if seen is not probe:
            raise ValueError("the runtime context does not read its context variable")
    except Exception as exc:
        _degrade("opentelemetry's runtime context variable",
                 "request contexts are attached through context.attach", exc)
        return None
    return var.set, var.reset


def update_provider_resource(provider: Any, attributes: Mapping[str, Any]) -> bool:
    """Merge ``attributes`` into an SDK ``TracerProvider``'s resource (in a forked child).

    Internal: ``TracerProvider._update_resource(resource)``, which the SDK's own
    fork hook uses. Why: a worker forked from a preloaded application is a
    service instance of its own (``service.instance.id``), but the provider and
    its resource were built before the fork. Public replacement: none (the
    resource is fixed at construction). Fallback: False; the worker keeps the
    parent's attributes (logged once).
    """
    update = getattr(provider, "_update_resource", None)
    if update is None:
        _degrade("TracerProvider._update_resource",
                 "forked workers keep the parent's service.instance.id")
        return False
    try:
        from opentelemetry.sdk.resources import Resource

        update(Resource(dict(attributes)))
    except Exception as exc:
        _degrade("TracerProvider._update_resource",
                 "forked workers keep the parent's service.instance.id", exc)
        return False
    return True


# ====================================================================== FastAPI
#: FastAPI's native telemetry (0.16x): the ``scope`` key of its per-request record (a
#: private type) and the record's attribute holding the SERVER span it started.
#: Internal: both. Why: when native tracing stays on, the access log is correlated with
#: FastAPI's span instead of a second one. Public replacement: FastAPI making its span
#: current, or a public accessor. The adapter reads them inline, per request
#: (``getattr(scope.get(KEY), ATTR, None)``: no extra call), so a missing record or
#: attribute means no native span (no correlation), never an error.
FASTAPI_TELEMETRY_SCOPE_KEY = "fastapi.telemetry"
FASTAPI_NATIVE_SPAN_ATTR = "span"


def disable_fastapi_native_tracing(app: Any) -> bool:
    """Turn FastAPI's native tracing off for ``app`` when it would only use the global provider.

    Internal: ``app._telemetry``, the mapping FastAPI (0.16x) reads on every
    request. Why: one SERVER span per request, ours. Public replacement:
    ``FastAPI(telemetry={"tracing": False})`` at construction; there is no
    setter afterwards. Only a mutable mapping with ``tracing`` on and no
    explicit ``tracer_provider`` is changed; anything else (another FastAPI
    version, a plain Starlette app, a provider passed on purpose) is left alone.

    Returns:
        True when native tracing was turned off here.
    """
    try:
        config = getattr(app, "_telemetry", None)
        if (isinstance(config, MutableMapping) and config.get("tracing") is True
                and config.get("tracer_provider") is None):
            config["tracing"] = False
            return True
    except Exception as exc:  # an unexpected shape must not break set-up
        _log.debug("leaving FastAPI native telemetry as it is: %r", exc)
    return False


# ====================================================================== structlog
#: The value structlog gives a context variable that is not bound (checked at import).
STRUCTLOG_UNBOUND: Any = Ellipsis


class _BoundKey:
    """``get``/``set`` of one structlog context key through structlog's public API.

    The fallback of :func:`structlog_context_var`, same interface as a
    :class:`contextvars.ContextVar` for the two calls the request pass makes.
    """

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def get(self, default: Any = STRUCTLOG_UNBOUND) -> Any:
        return structlog.contextvars.get_contextvars().get(self.key, default)

    def set(self, value: Any) -> None:
        structlog.contextvars.bind_contextvars(**{self.key: value})


def _probe_structlog() -> str | None:
    """The name prefix of structlog's context variables when they are one per key, else None.

    Internal: structlog (21.1 and later) backs each key with its own
    ``ContextVar`` named ``structlog_<key>``, unbound meaning ``Ellipsis``. The
    probe runs in a throwaway context, so nothing is bound anywhere.
    """
    def probe() -> str | None:
        key = "mestres_observability_probe"
        tokens = structlog.contextvars.bind_contextvars(**{key: 1})
        var = getattr(tokens.get(key), "var", None)
        if not isinstance(var, contextvars.ContextVar) or not var.name.endswith(key):
            return None
        prefix = var.name[: -len(key)]
        if not prefix or structlog.contextvars.get_contextvars().get(key) != 1:
            return None
        structlog.contextvars.unbind_contextvars(key)
        if var.get(None) is not STRUCTLOG_UNBOUND or key in structlog.contextvars.get_contextvars():
            return None
        return prefix

    try:
        return contextvars.Context().run(probe)
    except Exception:
        return None


_STRUCTLOG_PREFIX = _probe_structlog()


def structlog_context_var(key: str) -> Any:
    """structlog's own context variable for ``key`` (what ``bind_contextvars(key=...)`` sets).

    Internal: one ``ContextVar`` per key (found through the tokens
    ``bind_contextvars`` returns, in a throwaway context). Why: setting and
    reading it directly is what ``bind_contextvars`` and ``get_contextvars``
    do, minus their per-call key formatting, dicts and (for the latter) the
    walk over every variable of the context. Public replacement:
    ``bind_contextvars``/``get_contextvars``, which the fallback object calls
    (``get(default)`` and ``set(value)`` like a ``ContextVar``). Resolved once,
    at import of the request pass.
    """
    if _STRUCTLOG_PREFIX is not None:
        try:
            tokens = contextvars.Context().run(structlog.contextvars.bind_contextvars,
                                               **{key: None})
            var = tokens[key].var
            if isinstance(var, contextvars.ContextVar):
                return var
        except Exception:  # pragma: no cover - the probe passed
            pass
    _degrade("structlog's per-key context variables",
             "the request id is bound through bind_contextvars (slower)")
    return _BoundKey(key)


def _restore_fast(before: contextvars.Context) -> None:
    prefix = _STRUCTLOG_PREFIX
    assert prefix is not None
    for var, value in contextvars.copy_context().items():
        if var.name.startswith(prefix):
            old = before.get(var, STRUCTLOG_UNBOUND)
            if old is not value:
                var.set(old)


def rebind_structlog_context(old: Mapping[str, Any]) -> None:
    """Make structlog's bound context equal ``old`` again, through its public API only."""
    now = structlog.contextvars.get_contextvars()
    extra = [k for k in now if k not in old]
    if extra:
        structlog.contextvars.unbind_contextvars(*extra)
    changed = {k: v for k, v in old.items() if now.get(k, STRUCTLOG_UNBOUND) is not v}
    if changed:
        structlog.contextvars.bind_contextvars(**changed)


def _restore_public(before: contextvars.Context) -> None:
    rebind_structlog_context(before.run(structlog.contextvars.get_contextvars))


#: ``restore_structlog_context(before)``: set structlog's context (the request id and
#: whatever the application bound) back to what it was in ``before`` (a copied context).
#: Internal: structlog's variable-name prefix and its ``Ellipsis`` for "unbound" (checked
#: at import), to walk the context once. Public replacement and fallback:
#: ``get_contextvars`` before and after, then ``unbind_contextvars``/``bind_contextvars``.
restore_structlog_context: Callable[[contextvars.Context], None] = (
    _restore_fast if _STRUCTLOG_PREFIX is not None else _restore_public)


def structlog_logger_parts(logger: Any) -> tuple[Sequence[Any], Any] | None:
    """The processors and the wrapped logger a bound structlog logger runs its calls
    through, or ``None`` when they cannot be read.

    Internal: ``BoundLoggerBase._processors`` and ``._logger`` (set by its
    ``__init__``; "available to custom wrapper classes", structlog's docs say).
    Why: the access-log line takes a direct path (``logs.direct_writer``) only
    when the logger would run the library's own chain on a standard-library
    logger; a logger bound and cached earlier keeps the processors it was bound
    with, whatever ``structlog.configure`` said since, so the configuration
    cannot tell. Public replacement: none; the fallback (``None``) is the
    logger called as usual, every line through its processors.
    """
    if not isinstance(logger, structlog.BoundLoggerBase):
        return None  # a lazy proxy, another wrapper: called as usual (not a degradation)
    processors = getattr(logger, "_processors", None)
    wrapped = getattr(logger, "_logger", None)
    if not isinstance(processors, Sequence) or wrapped is None:
        _degrade("structlog's BoundLoggerBase._processors/_logger",
                 "the access-log line runs structlog's processor chain (slower)")
        return None
    return processors, wrapped


# ====================================================================== Django
def mark_django_response_logged(response: Any) -> None:
    """Tell Django not to log this response on ``django.request``.

    Why: Django's ``log_response`` writes one warning per 4xx/5xx answer unless
    the response carries its private ``_has_been_logged`` flag; the library's
    endpoints are logged by the library's own settings, and a refused browser
    beacon must not become one warning line each. Public replacement: none
    (Django has no public switch per response). If Django stops reading the flag,
    setting it does nothing and Django logs as it would anyway; never raises.
    """
    with contextlib.suppress(Exception):
        response._has_been_logged = True


# ====================================================================== Flask / Werkzeug
def proxy_target_getter(proxy: Any) -> Callable[[], Any]:
    """A callable returning the object behind a Werkzeug ``LocalProxy`` (``flask.request``).

    Internal: ``proxy._get_current_object`` (documented by Werkzeug and Flask as
    the way to reach the proxied object, but underscored). Why: the Flask
    adapter reads several request attributes per request; one context lookup
    instead of one per attribute. Resolved once (the bound callable is the same
    for every request: it looks the context up when called). Public
    replacement: the proxy itself, the fallback (attribute reads go through it).
    """
    getter = getattr(proxy, "_get_current_object", None)
    if callable(getter):
        return getter  # type: ignore[no-any-return]
    _degrade("LocalProxy._get_current_object",
             "request attributes are read through the proxy (slower)")
    return lambda: proxy


def flask_request_context_var() -> Any:
    """Flask's context variable of the current request context, or ``None``.

    Internal: ``flask.globals._cv_request`` (Flask 2.2 and later; ``flask.request``
    is a ``LocalProxy`` over it, reading its ``request`` attribute). Why: the Flask
    adapter reaches the request once per request inside ``full_dispatch_request``;
    ``var.get().request`` is one C call where the proxy's ``_get_current_object`` is a
    Python call around the same lookup. Feature check: with a stand-in set in the
    variable (in a copied context, so nothing leaks, and no Flask app or request
    context is created, so no Flask signal fires), ``flask.request`` resolves to the
    stand-in's ``request``. Public replacement and fallback (``None``):
    :func:`proxy_target_getter` of ``flask.request``.
    """
    try:
        import flask
        import flask.globals as flask_globals

        var = getattr(flask_globals, "_cv_request", None)
        if isinstance(var, contextvars.ContextVar):
            marker = object()

            class _StandIn:
                request = marker

            def resolves() -> bool:
                var.set(_StandIn())
                return flask.request._get_current_object() is marker  # type: ignore[attr-defined]

            if contextvars.copy_context().run(resolves):
                return var
    except Exception as exc:
        _degrade("flask.globals._cv_request",
                 "the Flask adapter reaches the request through flask.request (slower)", exc)
        return None
    _degrade("flask.globals._cv_request",
             "the Flask adapter reaches the request through flask.request (slower)")
    return None


# ====================================================================== uvicorn
def uvicorn_worker_count() -> int | None:
    """``N`` of ``uvicorn --workers N`` when this process is one of those workers, else ``None``.

    Internal: the running ``multiprocessing`` process object's ``_kwargs`` (the
    standard library keeps the ``kwargs`` given to ``Process`` there for
    ``run()``), and how uvicorn starts a worker: ``uvicorn._subprocess.get_subprocess``
    passes ``config`` (its ``Config``, whose ``workers`` is the public setting)
    and ``target``, a bound method of ``uvicorn.supervisors.multiprocess.Process``
    for ``--workers`` (of ``Server`` for ``--reload``, which runs one worker).
    Why: uvicorn has no hook and sets no variable in its workers; without this
    the adapters cannot say that a scrape reads one worker of several, as they
    do under gunicorn. Public replacement: none (``sys.argv`` misses
    ``uvicorn.run(workers=...)`` and ``WEB_CONCURRENCY``). uvicorn is never
    imported here: outside a uvicorn worker, or when a release starts its
    workers another way, this answers ``None`` (no warning, nothing else
    changes) and never raises.
    """
    if "uvicorn" not in sys.modules:
        return None
    try:
        import multiprocessing

        if multiprocessing.parent_process() is None:
            return None
        kwargs = getattr(multiprocessing.current_process(), "_kwargs", None)
        if not isinstance(kwargs, Mapping):
            return None
        owner = getattr(kwargs.get("target"), "__self__", None)
        if type(owner).__module__ != "uvicorn.supervisors.multiprocess":
            return None
        workers = getattr(kwargs.get("config"), "workers", None)
        if isinstance(workers, int) and not isinstance(workers, bool) and workers > 1:
            return workers
    except Exception:
        return None
    return None
