"""Health checks: liveness, readiness and detailed probes with timeouts.

A :class:`HealthRegistry` (``obs.health``) holds named checks. A check is a
sync or async callable that returns ``True``/``False``, ``None`` (pass), a
mapping of details, or raises. Probes are framework-agnostic:
:meth:`HealthRegistry.probe` and :meth:`HealthRegistry.aprobe` return a
:class:`HealthResponse` (status, headers, body) that the adapters serve at
``/health``, ``/health/liveness``, ``/health/readiness`` and
``/health/detailed``.

How checks run:

* concurrently, each under the smaller of its own timeout
  (``health_check_timeout`` by default) and the probe's overall deadline
  (``health_deadline``, 0.8 s: below the kubelet's 1 s default probe timeout).
  A timeout measures the check's own run, from when it starts; a probe never
  waits past its deadline: a run still queued then is ``not_started``;
* sync checks on a thread pool owned by the library (:class:`_Pool`): 16
  threads within their timeout, critical checks first and with room kept for
  them, more threads only beside stuck ones, 64 at most; async checks on the
  caller's event loop under :meth:`~HealthRegistry.aprobe` and on a
  library-owned event-loop thread under :meth:`~HealthRegistry.probe` (a loop
  stalled by a check that blocks it is left to that check, the others move to
  a new one);
* **at most one run per check at a time** (single-flight). Python cannot stop a
  thread, so a hung check keeps its one thread; later probes do not start a
  second run but report ``timeout`` at once, and concurrent probes share one run;
* whatever a check raises (``BaseException`` included) fails that check; only a
  cancellation of :meth:`~HealthRegistry.aprobe` itself propagates;
* a finished result is reused for ``health_cache_ttl`` seconds;
* fork-safe (``gunicorn --preload``): a forked child starts its own thread pool
  and event-loop thread on its first probe, with a fresh lock and fresh
  single-flight state, so a run still in flight in the parent at the fork
  (hung or not) is run again in the child rather than reported as ``timeout``.

Responses carry a status and an error *kind* only (the exception class name,
``timeout``, ``not_started`` ...), and details with every address replaced by
``[address]``; the full, redacted detail goes to the
``mestres_observability.health`` logger.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import datetime as _dt
import functools
import heapq
import inspect
import ipaddress
import itertools
import json
import logging
import math
import re
import threading
import time
import traceback
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ._endpoint import Credentials, Offer, Response, challenge, negotiate
from ._fault import FaultReporter
from ._forksafe import call_after_fork
from ._redact import Redactor
from .config import ObservabilityConfig
from .health_checks import (
    SystemCheck,
    disk_check,
    http_check,
    redis_check,
    sql_check,
    system_check,
)
from .metrics import LibraryMetrics

__all__ = [
    "PROBE_KINDS",
    "CheckResult",
    "HealthRegistry",
    "HealthResponse",
    "disk_check",
    "health_check",
    "http_check",
    "redis_check",
    "sql_check",
    "system_check",
]

_log = logging.getLogger("mestres_observability.health")

#: The probe kinds :meth:`HealthRegistry.probe` answers.
PROBE_KINDS: tuple[str, ...] = ("basic", "liveness", "readiness", "detailed")
#: Keys the library sets on every check entry; a check's own details never override them.
RESERVED_KEYS: frozenset[str] = frozenset({"status", "response_time_ms", "error", "critical"})
#: Name of the built-in system resources entry of ``/health/detailed``.
SYSTEM = "system"

_JSON = "application/json"
_HEALTH_JSON = "application/health+json"
_NO_STORE = ("Cache-Control", "no-store")
_DETAILED_CHALLENGE = challenge("bearer", "health")
_FAIL_WORDS = frozenset({"unhealthy", "fail", "failed", "down", "error", "not_ready"})
_MAX_WORKERS = 16  # threads running checks within their timeout
_MAX_THREADS = 64  # hard cap on the pool's threads, stuck ones included
_RESERVED_WORKERS = 4  # of both, kept for critical checks
_MAX_STALLED_LOOPS = 4  # event-loop threads set aside because a check blocks them
_WATCH_TICK = 0.02  # how often a probe looks again at a loop that may have stalled
_STALL_GRACE = 0.1  # a loop that runs no callback for this long, past a timeout, has stalled
_MAX_DETAIL_BYTES = 8192

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


HealthResponse = Response
"""What a probe answers, for any web framework to serve as is.

The endpoint layer's response, a named tuple ``(status, headers, body)``:
``status`` is 200, 503, or 401 for a refused ``detailed``; ``headers`` are
``(name, value)`` pairs (``Content-Type``, ``Cache-Control: no-store``...);
``body`` is the JSON body.
"""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one run of one check.

    Attributes:
        ok: the check passed.
        duration: how long the run took, in seconds (measured, not estimated).
        error: ``None`` when it passed, else ``"timeout"``, ``"not_started"``
            (still queued at the probe's deadline), the exception class name,
            or ``"failed"`` (the check returned a false value).
        details: JSON-safe, redacted, bounded details the check returned.
        finished: ``time.monotonic()`` when the run ended.
    """

    ok: bool
    duration: float
    error: str | None = None
    details: Mapping[str, Any] | None = None
    finished: float = 0.0


@dataclass(frozen=True)
class _Check:
    name: str
    fn: Callable[[], Any]
    critical: bool
    timeout: float | None
    is_async: bool


class _Job:
    """One run of one check: queued, then running (``started`` set), then done.

    ``future`` holds the run's :class:`CheckResult`. Probes waiting on the run
    register a watcher, called when the run starts and when it ends (so a probe
    learns when a queued run's own timeout clock starts); the watcher list is
    emptied by the probe, so a run stuck forever holds no per-probe state.
    """

    __slots__ = ("_lock", "_watchers", "critical", "future", "loop", "name", "started",
                 "timeout")

    def __init__(self, name: str, timeout: float, critical: bool,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.name = name
        self.timeout = timeout
        self.critical = critical
        self.loop = loop
        self.started: float | None = None
        self._lock = threading.Lock()
        self._watchers: list[Callable[[], None]] = []
        self.future: cf.Future[CheckResult] = cf.Future()
        self.future.add_done_callback(self._notify)

    def alive(self) -> bool:
        """Queued or running (a task on a loop that has since closed never finishes)."""
        if self.future.done():
            return False
        return self.loop is None or not self.loop.is_closed()

    def mark_started(self) -> None:
        """The run begins now: its timeout is measured from here."""
        if self.started is None:
            self.started = time.monotonic()
        self._notify()

    def watch(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._watchers.append(callback)

    def unwatch(self, callback: Callable[[], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._watchers.remove(callback)

    def _notify(self, _future: object = None) -> None:
        with self._lock:
            watchers = list(self._watchers)
        for callback in watchers:
            with contextlib.suppress(Exception):
                callback()


class _State:
    __slots__ = ("job", "last", "last_error")

    def __init__(self) -> None:
        self.job: _Job | None = None
        self.last: CheckResult | None = None
        self.last_error: str | None = "unknown"


class _Worker:
    __slots__ = ("fn", "job", "since", "stuck")

    def __init__(self) -> None:
        self.job: _Job | None = None
        self.fn: Callable[[], Any] | None = None
        self.since = 0.0
        self.stuck = False


class _Pool:
    """Daemon worker threads for sync checks, sized so that hung checks cannot starve the rest.

    * At most ``base`` threads run checks that are still within their timeout
      (*active* threads); non-critical runs may take only ``base - reserve`` of
      them, so critical checks always find room.
    * A thread whose run is past its timeout is *stuck*. Python cannot stop it,
      so it stops counting against ``base`` and a new thread may start beside
      it, up to ``cap`` threads in all (non-critical runs: ``cap - reserve``).
      Each stuck run is reported once through ``on_stuck``.
    * Queued runs start critical first, then in submission order. A thread that
      finds nothing to do ends if there are more than ``base`` threads.
    * Unlike :class:`concurrent.futures.ThreadPoolExecutor`, threads are never
      joined at interpreter exit: a check stuck forever cannot block the host
      process from exiting. :meth:`shutdown` stops the idle ones and cancels
      the queued runs.
    """

    def __init__(self, name: str, *, base: int = _MAX_WORKERS, cap: int = _MAX_THREADS,
                 reserve: int = _RESERVED_WORKERS,
                 on_stuck: Callable[[_Job], None] | None = None) -> None:
        self._name = name
        self._base = base
        self._cap = cap
        self._reserve = reserve
        self._on_stuck = on_stuck
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[int, int, _Job, Callable[[], Any]]] = []
        self._seq = itertools.count()
        self._names = itertools.count(1)
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._closed = False

    def submit(self, job: _Job, fn: Callable[[], Any]) -> None:
        """Queue ``fn`` as the run of ``job``; it starts as soon as there is room."""
        with self._cond:
            if self._closed:
                raise RuntimeError("health worker pool is closed")
            entry = (0 if job.critical else 1, next(self._seq), job, fn)
            heapq.heappush(self._heap, entry)
            try:
                stuck = self._dispatch()
            except Exception:
                if self._workers:  # a running thread takes it later
                    stuck = []
                else:
                    with contextlib.suppress(ValueError):
                        self._heap.remove(entry)
                        heapq.heapify(self._heap)
                    raise
        self._report(stuck)

    def rebalance(self) -> None:
        """Notice runs gone past their timeout and start queued runs in the room that frees."""
        with self._cond:
            try:
                stuck = self._dispatch()
            except Exception:  # no thread could start: the run waits for one
                stuck = []
        self._report(stuck)

    def next_change(self) -> float | None:
        """When a busy thread next turns stuck while runs are queued (``None``: nothing queued)."""
        with self._cond:
            if not self._heap:
                return None
            times = [w.since + w.job.timeout for w in self._workers
                     if w.job is not None and not w.stuck]
            return min(times) if times else None

    def _dispatch(self) -> list[_Job]:
        """Hand queued runs to idle or new threads as the rules allow (lock held)."""
        now = time.monotonic()
        stuck: list[_Job] = []
        active = busy = busy_nc = 0
        for w in self._workers:
            job = w.job
            if job is None:
                continue
            busy += 1
            if not job.critical:
                busy_nc += 1
            if not w.stuck and now - w.since >= job.timeout:
                w.stuck = True
                stuck.append(job)
            if not w.stuck:
                active += 1
        woke = False
        try:
            while self._heap:
                _prio, _seq, job, fn = self._heap[0]
                if job.future.done():  # cancelled while queued
                    heapq.heappop(self._heap)
                    continue
                if busy >= self._cap:
                    break
                if job.critical:
                    if active >= self._base:
                        break
                elif (active >= self._base - self._reserve
                      or busy_nc >= self._cap - self._reserve):
                    break
                if self._idle:
                    worker = self._idle.pop()
                    heapq.heappop(self._heap)
                    woke = True
                else:
                    worker = _Worker()
                    worker.job, worker.fn, worker.since = job, fn, now
                    thread = threading.Thread(target=self._work, args=(worker,),
                                              name=f"{self._name}-{next(self._names)}",
                                              daemon=True)
                    thread.start()  # may raise: then the run stays queued
                    heapq.heappop(self._heap)
                    self._workers.append(worker)
                worker.job, worker.fn, worker.since, worker.stuck = job, fn, now, False
                active += 1
                busy += 1
                if not job.critical:
                    busy_nc += 1
        finally:
            if woke:
                self._cond.notify_all()
        return stuck

    def _spare(self) -> bool:
        """More threads able to run checks (idle or active) than ``base`` (lock held)."""
        return sum(1 for w in self._workers if not w.stuck) > self._base

    def _report(self, stuck: list[_Job]) -> None:
        if self._on_stuck is not None:
            for job in stuck:
                with contextlib.suppress(Exception):
                    self._on_stuck(job)

    def _work(self, me: _Worker) -> None:
        while True:
            with self._cond:
                while me.job is None:
                    if self._closed or self._spare():
                        self._workers.remove(me)
                        with contextlib.suppress(ValueError):
                            self._idle.remove(me)
                        return
                    self._cond.wait()
                job, fn = me.job, me.fn
            if fn is not None and job.future.set_running_or_notify_cancel():
                try:
                    job.future.set_result(fn())
                except BaseException as exc:  # handed to whoever waits on the future
                    job.future.set_exception(exc)
            del job, fn
            with self._cond:
                me.job = me.fn = None
                me.stuck = False
                self._idle.append(me)
                try:
                    stuck = self._dispatch()
                except Exception:  # no new thread: the queued runs wait for this one
                    stuck = []
            self._report(stuck)

    def shutdown(self) -> None:
        with self._cond:
            self._closed = True
            queued, self._heap = self._heap, []
            self._cond.notify_all()
        for entry in queued:
            entry[2].future.cancel()


class _LoopSlot:
    """The library's event-loop thread for async checks under ``probe``.

    ``running`` names the check whose step the loop is executing (set around
    each step). When an async run is past its timeout without having been
    cancelled, the loop is asked for a heartbeat: a loop that does not answer
    within a short grace has stalled, and ``running`` names the check blocking
    it. That check keeps its single flight on this loop; the other async
    checks move to a new one.
    """

    __slots__ = ("answered", "beat", "loop", "running", "thread")

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.running: str | None = None
        self.beat: float | None = None  # when the heartbeat awaiting an answer was posted
        self.answered = -math.inf  # when the last answered heartbeat was posted
        self.thread = threading.Thread(target=_run_loop, args=(self.loop,),
                                       name="mestres-obs-health-loop", daemon=True)

    def verdict(self, since: float, grace: float) -> str:
        """``alive``, ``stalled`` or ``wait``: has the loop run a callback after ``since``?"""
        if self.answered >= since:
            return "alive"
        now = time.monotonic()
        posted = self.beat
        if posted is not None:
            return "stalled" if now - max(posted, since) >= grace else "wait"
        self.beat = now
        try:
            self.loop.call_soon_threadsafe(self._answer, now)
        except RuntimeError:  # closed meanwhile
            self.beat = None
            return "alive"
        return "wait"

    def _answer(self, posted: float) -> None:
        self.answered = max(self.answered, posted)
        if self.beat == posted:
            self.beat = None


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - objects with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def utc_timestamp(now: _dt.datetime | None = None) -> str:
    """ISO 8601 UTC timestamp with milliseconds, ending in ``Z``."""
    t = now if now is not None else _dt.datetime.now(_dt.timezone.utc)
    t = t.astimezone(_dt.timezone.utc)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z"


_HEALTH_JSON_OFFER = Offer(frozenset({_HEALTH_JSON}), wildcard=False)
_JSON_OFFERS = (_HEALTH_JSON_OFFER, Offer(frozenset({_JSON})))  # a tie goes to the draft


def _wants_health_json(accept: str | None) -> bool:
    """True when ``Accept`` prefers ``application/health+json`` over plain JSON."""
    if not accept or "health+json" not in accept:
        return False
    return negotiate(accept, _JSON_OFFERS) is _HEALTH_JSON_OFFER


class HealthRegistry:
    """The health checks of one :class:`~mestres_observability.Observability` instance.

    Args:
        config: the instance's settings (``health_*``, ``service_name``,
            ``service_version``, ``system_mountpoints``, ``redact_keys``).
        metrics: where ``health_check_status`` and
            ``health_check_duration_seconds`` are set.
        faults: where internal faults are counted (component ``health``).
        inherit: a previous registry whose checks carry over (re-init keeps the
            checks registered at import time).

    Example:
        >>> from mestres_observability import get_observability
        >>> health = get_observability().health
        >>> health.add("cache", lambda: True, critical=False)
        >>> health.remove("cache")
    """

    def __init__(self, config: ObservabilityConfig, metrics: LibraryMetrics,
                 faults: FaultReporter, *, inherit: HealthRegistry | None = None) -> None:
        self._config = config
        self._metrics = metrics
        self._faults = faults
        self._lock = threading.RLock()
        self._checks: dict[str, _Check] = dict(inherit._checks) if inherit is not None else {}
        self._states: dict[str, _State] = {}
        self._started = bool(config.health_start_ready)
        self._draining = False
        self._executor: _Pool | None = None
        self._slot: _LoopSlot | None = None
        self._stalled: list[_LoopSlot] = []
        self._redactor = Redactor(config.redact_keys, card_numbers=config.redact_card_numbers,
                                  max_length=512)
        self._system = _Check(SYSTEM, SystemCheck(config=config, faults=faults), False,
                              None, False)
        token = config.health_detailed_token
        self._detailed_credentials = Credentials("bearer", token, "health") if token else None
        #: checks added after the first readiness/detailed probe ran (warned about once)
        self._probed = False
        self._late: list[str] = []
        self._late_warned = False
        call_after_fork(self, "_reset_after_fork")  # gunicorn --preload

    # ------------------------------------------------------------------ registration
    def add(self, name: str, check: Callable[[], Any], *, critical: bool = True,
            timeout: float | None = None) -> None:
        """Register (or replace) a check.

        Args:
            name: the check's name (the ``check`` label and the key under ``checks``).
            check: a sync or async callable without arguments returning ``True``/``False``,
                ``None`` (pass), a mapping of details (a ``status`` of ``"unhealthy"``,
                ``"fail"`` or ``False`` in it fails the check), or raising.
            critical: a failure makes the service ``unhealthy`` and not ready (503);
                a non-critical failure only ``degraded`` (200).
            timeout: seconds; default ``health_check_timeout``. The run is also
                bounded by ``health_deadline``.

        Raises:
            ValueError: ``name`` is empty or ``system`` (reserved), or ``timeout`` is not positive.
            TypeError: ``check`` is not callable.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"health check name must be a non-empty string, got {name!r}")
        if name == SYSTEM:
            raise ValueError("the health check name 'system' is reserved for system resources")
        if not callable(check):
            raise TypeError(f"health check {name!r} must be callable, got {type(check).__name__}")
        if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"health check {name!r}: timeout must be a positive number of "
                             f"seconds, got {timeout!r}")
        entry = _Check(name, check, bool(critical), timeout, _is_async_callable(check))
        with self._lock:
            if self._probed and name not in self._checks and len(self._late) < 32:
                self._late.append(name)
            self._checks[name] = entry
            self._states.pop(name, None)

    def remove(self, name: str) -> None:
        """Unregister a check; unknown names are ignored."""
        with self._lock:
            self._checks.pop(name, None)
            self._states.pop(name, None)

    @property
    def names(self) -> tuple[str, ...]:
        """The registered check names, in registration order."""
        with self._lock:
            return tuple(self._checks)

    # ------------------------------------------------------------------ readiness flag
    def mark_started(self) -> None:
        """Declare start-up complete: readiness may answer 200 from now on."""
        self._started = True

    def start_draining(self) -> None:
        """Declare shutdown begun: readiness answers 503 from now on (liveness stays 200)."""
        self._draining = True

    @property
    def is_ready(self) -> bool:
        """Started and not draining (dependency checks are not consulted)."""
        return self._started and not self._draining

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop the library-owned thread pool and event-loop thread; idempotent, never raises.

        Threads still stuck in a hung check cannot be stopped; they are daemon
        threads left to finish. A later probe starts fresh workers.
        """
        with self._lock:
            executor, self._executor = self._executor, None
            slot, self._slot = self._slot, None
            if slot is not None:
                for state in self._states.values():
                    if state.job is not None and state.job.loop is slot.loop:
                        state.job = None
        try:
            if executor is not None:
                executor.shutdown()
            if slot is not None and not slot.loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    asyncio.run_coroutine_threadsafe(_stop_loop(), slot.loop)
                slot.thread.join(1.0)
                if not slot.thread.is_alive():
                    slot.loop.close()
        except Exception as exc:
            self._faults.report("health", "close", "error stopping health workers", exc)
        self._release_connections()

    def _release_connections(self) -> None:
        """Close what the built-in checks opened themselves (an engine's pool built from a URL,
        a Redis client built from a URL); a later run opens new connections."""
        with self._lock:
            checks = list(self._checks.values())
        for check in checks:
            release = getattr(check.fn, "close", None)
            if not callable(release):
                continue
            try:
                release()
            except Exception as exc:
                self._faults.report("health", "close", f"error closing check {check.name!r}", exc)

    def _reset_after_fork(self) -> None:  # pragma: no cover - forked children
        self._lock = threading.RLock()
        self._executor = None
        self._slot = None
        self._stalled = []
        self._states = {}
        self._probed, self._late = False, []  # a worker's first probe is its own

    def _get_executor(self) -> _Pool:
        ex = self._executor
        if ex is None:
            with self._lock:
                if self._executor is None:
                    self._executor = _Pool("mestres-obs-health", on_stuck=self._stuck)
                ex = self._executor
        return ex

    def _get_slot(self) -> _LoopSlot:
        slot = self._slot
        if slot is None or slot.loop.is_closed():
            with self._lock:
                if self._slot is None or self._slot.loop.is_closed():
                    new = _LoopSlot()
                    new.thread.start()
                    self._slot = new
                slot = self._slot
        return slot

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        """The library's event loop for async checks under :meth:`probe`."""
        return self._get_slot().loop

    def _stuck(self, job: _Job) -> None:
        """A sync run went past its timeout and still holds its thread: count it."""
        self._faults.report("health", "hung", f"health check {job.name!r} still running past "
                            f"its {job.timeout:.3f}s timeout; its thread is set aside")

    def _set_aside(self, slot: _LoopSlot) -> list[str]:
        """The library loop has stalled: leave it to the check blocking it, start a new one.

        Returns the checks whose runs were moved off the stalled loop (to be
        started again on the new one).
        """
        with self._lock:
            if self._slot is not slot:
                return []
            self._stalled = [s for s in self._stalled if s.thread.is_alive()]
            if len(self._stalled) >= _MAX_STALLED_LOOPS:
                full = True
            else:
                full = False
                culprit = slot.running
                moved = []
                for name, state in self._states.items():
                    job = state.job
                    if job is not None and job.loop is slot.loop and name != culprit:
                        state.job = None
                        moved.append(name)
                self._slot = None
                self._stalled.append(slot)
        if full:
            self._faults.report("health", "loop_stalled", "the health event loop is blocked "
                                f"and {_MAX_STALLED_LOOPS} stalled loops are set aside already")
            return []
        self._faults.report("health", "loop_stalled",
                            f"health check {culprit!r} blocks the event loop of async checks "
                            "(a blocking call in async def?); the other async checks move to "
                            "a new loop")
        with contextlib.suppress(RuntimeError):  # runs once the blocking call returns
            asyncio.run_coroutine_threadsafe(_stop_loop(), slot.loop)
        return moved

    # ------------------------------------------------------------------ running checks
    def _effective_timeout(self, check: _Check) -> float:
        own = check.timeout if check.timeout is not None else self._config.health_check_timeout
        return min(own, self._config.health_deadline)

    def _acquire(self, check: _Check, running_loop: asyncio.AbstractEventLoop | None,
                 ) -> CheckResult | _Job:
        """A fresh cached result, the in-flight run, or a newly started run.

        A run that cannot even start (no thread can be started, or a racing
        :meth:`close` shut the pool) is a failed result with the error kind,
        never an exception out of the probe.
        """
        try:
            return self._acquire_or_start(check, running_loop)
        except Exception as exc:
            self._faults.report("health", "start", f"cannot start health check {check.name!r}",
                                exc)
            result = CheckResult(False, 0.0, _error_kind(exc), None, time.monotonic())
            self._set_metrics(check.name, result)
            return result

    def _acquire_or_start(self, check: _Check, running_loop: asyncio.AbstractEventLoop | None,
                          ) -> CheckResult | _Job:
        now = time.monotonic()
        ttl = self._config.health_cache_ttl
        with self._lock:
            state = self._states.get(check.name)
            if state is None:
                state = self._states[check.name] = _State()
            job = state.job
            if job is not None and job.alive():
                return job
            last = state.last
            if last is not None and ttl > 0 and now - last.finished < ttl:
                return last
            job = self._start(check, running_loop)
            state.job = job
            return job

    def _start(self, check: _Check, running_loop: asyncio.AbstractEventLoop | None) -> _Job:
        job = _Job(check.name, self._effective_timeout(check), check.critical)
        if check.is_async:
            if running_loop is not None:
                job.loop = running_loop
                task = running_loop.create_task(self._run_async(check, job, None))
                task.add_done_callback(functools.partial(_settle, job))
                return job
            slot = self._get_slot()
            job.loop = slot.loop
            coro = self._run_async(check, job, slot)
            try:
                cfut = asyncio.run_coroutine_threadsafe(coro, slot.loop)
            except BaseException:
                coro.close()
                raise
            cfut.add_done_callback(functools.partial(_settle, job))
            return job
        self._get_executor().submit(job, functools.partial(self._run_sync, check, job))
        return job

    def _run_sync(self, check: _Check, job: _Job) -> CheckResult:
        job.mark_started()
        t0 = time.perf_counter()
        try:
            value = check.fn()
            if inspect.isawaitable(value):
                awaited = value
                value, exc = asyncio.run(_awaited(_Stepper(lambda: awaited, check.name, None)))
                if exc is not None:
                    return self._finish(check, job, time.perf_counter() - t0, exc=exc)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt ... raised by the check
            return self._finish(check, job, time.perf_counter() - t0, exc=exc)
        return self._finish(check, job, time.perf_counter() - t0, value=value)

    async def _run_async(self, check: _Check, job: _Job, slot: _LoopSlot | None) -> CheckResult:
        job.mark_started()
        t0 = time.perf_counter()
        try:
            value, exc = await asyncio.wait_for(_awaited(_Stepper(check.fn, check.name, slot)),
                                                job.timeout)
        except asyncio.TimeoutError:
            return self._finish(check, job, time.perf_counter() - t0, timed_out=True)
        except asyncio.CancelledError as cancelled:
            if _cancel_requested(default=False):
                raise  # this run's own task is being cancelled (its loop is stopping)
            return self._finish(check, job, time.perf_counter() - t0, exc=cancelled)
        except BaseException as other:  # pragma: no cover - _Stepper keeps the check's own
            return self._finish(check, job, time.perf_counter() - t0, exc=other)
        if exc is not None:
            return self._finish(check, job, time.perf_counter() - t0, exc=exc)
        return self._finish(check, job, time.perf_counter() - t0, value=value)

    def _finish(self, check: _Check, job: _Job, duration: float, *, value: Any = None,
                exc: BaseException | None = None, timed_out: bool = False) -> CheckResult:
        """Normalise a run's outcome, record it (state, metrics, log) and return it."""
        timeout = job.timeout
        try:
            if timed_out or duration > timeout:
                result = CheckResult(False, duration, "timeout", None, time.monotonic())
                if not timed_out:
                    _log.warning("health check %r returned after %.3fs, past its %.3fs timeout",
                                 check.name, duration, timeout)
            elif exc is not None:
                error = _error_kind(exc)
                result = CheckResult(False, duration, error, None, time.monotonic())
                self._log_exception(check, exc)
                if not isinstance(exc, Exception):
                    self._faults.report("health", "base_exception",
                                        f"health check {check.name!r} raised {error}; "
                                        "contained as a failure of the check")
            else:
                ok, details, kind = self._normalise(check, value)
                if kind is None and not ok:
                    kind = "threshold_exceeded" if isinstance(check.fn, SystemCheck) else "failed"
                result = CheckResult(ok, duration, kind, details, time.monotonic())
        except BaseException as fault:  # pragma: no cover - defensive
            self._faults.report("health", "result", f"cannot record health check {check.name!r}",
                                fault if isinstance(fault, Exception) else None)
            result = CheckResult(False, duration, _error_kind(fault), None, time.monotonic())
        self._record(check, job, result)
        return result

    def _normalise(self, check: _Check, value: Any,
                   ) -> tuple[bool, dict[str, Any] | None, str | None]:
        """(passed, details, error kind when the value itself could not be read)."""
        if value is None or value is True:
            return True, None, None
        if value is False:
            return False, None, None
        try:
            if isinstance(value, Mapping):
                ok = True
                status = value.get("status", None)
                if status is False or (isinstance(status, str) and status.lower() in _FAIL_WORDS):
                    ok = False
                raw = {str(k): v for k, v in value.items() if str(k) not in RESERVED_KEYS}
                details = _scrub_tree(self._redactor.clean(raw))
                if not isinstance(details, dict):  # pragma: no cover - clean keeps mappings
                    details = {}
                try:
                    size = len(json.dumps(details, default=str))
                except Exception:
                    size = _MAX_DETAIL_BYTES + 1
                if size > _MAX_DETAIL_BYTES:
                    details = {"details_truncated": True}
                return ok, details or None, None
            return bool(value), None, None
        except BaseException as exc:  # a hostile __bool__, __iter__, get ...
            self._log_exception(check, exc)
            return False, None, _error_kind(exc)

    def _log_exception(self, check: _Check, exc: BaseException) -> None:
        try:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            text = self._redactor.scrub_text(text)
        except BaseException:  # a hostile __str__
            text = _error_kind(exc)
        kind = _error_kind(exc)
        level = logging.WARNING
        with self._lock:
            state = self._states.get(check.name)
            if state is not None:
                if state.last_error == kind:
                    level = logging.DEBUG  # same failure again: do not flood
                state.last_error = kind
        _log.log(level, "health check %r failed (%s):\n%s", check.name, kind, text,
                 extra={"health_check": check.name, "error_kind": kind})

    def _record(self, check: _Check, job: _Job, result: CheckResult) -> None:
        with self._lock:
            state = self._states.get(check.name)
            if state is None or state.job is not job:
                return  # a stale run: replaced check, closed or stalled loop
            state.last = result
            if result.ok:
                if state.last_error is not None and state.last_error != "unknown":
                    _log.info("health check %r is healthy again", check.name)
                state.last_error = None
            elif result.error in ("timeout", "failed"):
                if state.last_error != result.error:
                    _log.warning("health check %r: %s", check.name, result.error)
                state.last_error = result.error
        self._set_metrics(check.name, result)

    def _set_metrics(self, name: str, result: CheckResult, *, duration: bool = True) -> None:
        try:
            self._metrics.health_check_status.set((name,), 1.0 if result.ok else 0.0)
            if duration:
                self._metrics.health_check_duration_seconds.set((name,), result.duration)
        except Exception as exc:
            self._faults.report("health", "metrics", "cannot set health metrics", exc)

    def _timeout_result(self, check: _Check, job: _Job) -> CheckResult:
        started = job.started
        now = time.monotonic()
        result = CheckResult(False, now - started if started is not None else 0.0, "timeout",
                             None, now)
        self._set_metrics(check.name, result)
        return result

    def _not_started(self, check: _Check) -> CheckResult:
        """The run was still queued at the probe's deadline (no thread was free for it)."""
        self._faults.report("health", "not_started",
                            f"health check {check.name!r} did not get to run before the "
                            "probe's deadline: every health thread was busy")
        result = CheckResult(False, 0.0, "not_started", None, time.monotonic())
        self._set_metrics(check.name, result, duration=False)
        return result

    def _outcome(self, check: _Check, job: _Job) -> CheckResult:
        """The result of a finished run (a cancelled or failed future becomes its kind)."""
        try:
            return job.future.result(0)
        except BaseException as exc:  # cancelled by close(), or a fault
            started = job.started
            now = time.monotonic()
            return CheckResult(False, now - started if started is not None else 0.0,
                               _error_kind(exc), None, now)

    def _selected(self, kind: str) -> list[_Check]:
        with self._lock:
            checks = list(self._checks.values())
            if not self._probed:
                self._probed = True
            elif self._late and not self._late_warned:
                self._late_warned = True
                _log.warning(
                    "health checks %s were registered after the first %s probe: the probes "
                    "answered before did not run them. Register checks at start-up, before "
                    "the server takes requests; with Django, in your AppConfig.ready() (a "
                    "check declared in views.py is registered only when the first routed "
                    "request imports the URLconf, in each worker). See docs/health.md",
                    ", ".join(repr(n) for n in self._late), kind,
                )
        if kind == "readiness":
            return [c for c in checks if c.critical]
        return [*checks, self._system]

    def _begin(self, checks: list[_Check], running_loop: asyncio.AbstractEventLoop | None,
               ) -> tuple[dict[str, CheckResult], list[tuple[_Check, _Job]]]:
        """Cached results, and the runs to wait for (critical checks are started first)."""
        results: dict[str, CheckResult] = {}
        pending: list[tuple[_Check, _Job]] = []
        for check in sorted(checks, key=lambda c: not c.critical):
            got = self._acquire(check, running_loop)
            if isinstance(got, CheckResult):
                results[check.name] = got
            else:
                pending.append((check, got))
        return results, pending

    def _sweep(self, pending: list[tuple[_Check, _Job]], results: dict[str, CheckResult],
               deadline: float, watch: Callable[[], None], watched: list[_Job],
               ) -> tuple[list[tuple[_Check, _Job]], float]:
        """Settle what can be settled now; the runs still awaited and when to look again.

        A run is awaited until its own timeout, counted from when it started,
        and never past the probe's deadline; a run still queued at the deadline
        is ``not_started``.
        """
        executor = self._executor
        if executor is not None:
            executor.rebalance()
        now = time.monotonic()
        slot = self._slot
        hold = False  # runs on the library loop past their timeout wait for its verdict
        if slot is not None:
            overdue = [job.started + job.timeout for _c, job in pending
                       if job.loop is slot.loop and job.started is not None
                       and job.started + job.timeout <= now and not job.future.done()]
            if overdue:
                verdict = slot.verdict(min(overdue), _STALL_GRACE)
                if verdict == "stalled":
                    pending = self._restart_moved(self._set_aside(slot), pending, results,
                                                  watch, watched)
                hold = verdict == "wait"
        wake = deadline
        still: list[tuple[_Check, _Job]] = []
        queued = False
        for check, job in pending:
            if job.future.done():
                results[check.name] = self._outcome(check, job)
                continue
            started = job.started
            if started is None:
                if now >= deadline:
                    results[check.name] = self._not_started(check)
                    continue
                queued = True
            else:
                until = min(started + job.timeout, deadline)
                if now >= until:
                    if hold and now < deadline and slot is not None and job.loop is slot.loop:
                        wake = min(wake, now + _WATCH_TICK)
                        still.append((check, job))
                        continue
                    results[check.name] = self._timeout_result(check, job)
                    continue
                wake = min(wake, until)
            still.append((check, job))
        if queued and executor is not None:
            change = executor.next_change()
            if change is not None:
                wake = min(wake, max(change, now + 0.001))
        return still, wake

    def _restart_moved(self, moved: list[str], pending: list[tuple[_Check, _Job]],
                       results: dict[str, CheckResult], watch: Callable[[], None],
                       watched: list[_Job]) -> list[tuple[_Check, _Job]]:
        """Start again, on the new loop, the runs moved off a stalled one."""
        if not moved:
            return pending
        names = set(moved)
        out: list[tuple[_Check, _Job]] = []
        for check, job in pending:
            if check.name not in names:
                out.append((check, job))
                continue
            job.unwatch(watch)
            got = self._acquire(check, None)
            if isinstance(got, CheckResult):
                results[check.name] = got
            else:
                got.watch(watch)
                watched.append(got)
                out.append((check, got))
        return out

    def _run_checks(self, checks: list[_Check]) -> dict[str, CheckResult]:
        deadline = time.monotonic() + self._config.health_deadline
        results, pending = self._begin(checks, None)
        if pending:
            woken = threading.Event()
            watch = woken.set
            watched = [job for _c, job in pending]
            for job in watched:
                job.watch(watch)
            try:
                while True:
                    woken.clear()
                    pending, wake = self._sweep(pending, results, deadline, watch, watched)
                    if not pending:
                        break
                    woken.wait(max(0.0, wake - time.monotonic()))
            finally:
                for job in watched:
                    job.unwatch(watch)
        return {c.name: results[c.name] for c in checks}

    async def _arun_checks(self, checks: list[_Check]) -> dict[str, CheckResult]:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self._config.health_deadline
        results, pending = self._begin(checks, loop)
        if pending:
            woken = asyncio.Event()

            def watch() -> None:
                with contextlib.suppress(RuntimeError):  # the probe's loop has closed
                    loop.call_soon_threadsafe(woken.set)

            watched = [job for _c, job in pending]
            for job in watched:
                job.watch(watch)
            try:
                while True:
                    woken.clear()
                    pending, wake = self._sweep(pending, results, deadline, watch, watched)
                    if not pending:
                        break
                    # only this probe is cancelled here (the request's task), never the runs
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(woken.wait(), max(0.0, wake - time.monotonic()))
            finally:
                for job in watched:
                    job.unwatch(watch)
        return {c.name: results[c.name] for c in checks}

    # ------------------------------------------------------------------ probes
    def probe(self, kind: str, *, accept: str | None = None,
              authorization: str | None = None) -> HealthResponse:
        """Answer one probe (blocking; for WSGI frameworks).

        Args:
            kind: ``"basic"``, ``"liveness"``, ``"readiness"`` or ``"detailed"``.
            accept: the request's ``Accept`` header; ``application/health+json``
                selects the IETF health-check draft format.
            authorization: the raw ``Authorization`` header, checked against
                ``health_detailed_token`` for ``detailed``.

        Returns:
            The response, within ``health_deadline`` seconds plus a small margin.

        Raises:
            ValueError: ``kind`` is not one of :data:`PROBE_KINDS`.
        """
        early = self._early(kind, authorization)
        if early is not None:
            return self._render(kind, early, accept)
        results = self._run_checks(self._selected(kind))
        return self._render(kind, results, accept)

    async def aprobe(self, kind: str, *, accept: str | None = None,
                     authorization: str | None = None) -> HealthResponse:
        """Answer one probe without blocking the event loop (for ASGI frameworks).

        Same arguments and response as :meth:`probe`. Async checks run on the
        running loop; sync checks on the library's thread pool.
        """
        early = self._early(kind, authorization)
        if early is not None:
            return self._render(kind, early, accept)
        results = await self._arun_checks(self._selected(kind))
        return self._render(kind, results, accept)

    def _early(self, kind: str, authorization: str | None) -> str | dict[str, CheckResult] | None:
        """An answer needing no check run: a marker string, ``{}``, or None to run checks."""
        if kind not in PROBE_KINDS:
            raise ValueError(f"unknown probe kind {kind!r}; expected one of {PROBE_KINDS}")
        if kind in ("basic", "liveness"):
            return {}
        if kind == "readiness" and not self.is_ready:
            return "draining" if self._draining else "starting"
        if kind == "detailed" and not self._authorized(authorization):
            return "unauthorized"
        return None

    def _authorized(self, authorization: str | None) -> bool:
        creds = self._detailed_credentials
        return creds is None or creds.check(authorization)

    def _render(self, kind: str, results: str | dict[str, CheckResult],
                accept: str | None) -> HealthResponse:
        cfg = self._config
        draft = _wants_health_json(accept)
        ctype = _HEALTH_JSON if draft else _JSON
        headers = [("Content-Type", ctype), _NO_STORE]
        now = utc_timestamp()
        if results == "unauthorized":
            body = {"status": "unauthorized", "timestamp": now}
            return HealthResponse(
                401, [("Content-Type", _JSON), _NO_STORE,
                      ("WWW-Authenticate", _DETAILED_CHALLENGE)], _dump(body))
        base: dict[str, Any] = {"service": cfg.service_name, "version": cfg.service_version,
                                "timestamp": now}
        if isinstance(results, str):  # readiness refused by the flag
            return self._respond(503, "not_ready", base, {"reason": results}, {}, draft, headers)
        if kind == "basic":
            return self._respond(200, "healthy", base, {}, {}, draft, headers)
        if kind == "liveness":
            return self._respond(200, "alive", base, {}, {}, draft, headers)
        checks = self._entries(results, details=kind == "detailed")
        critical_fail = any(not r.ok and self._is_critical(n) for n, r in results.items())
        if kind == "readiness":
            status_code = 503 if critical_fail else 200
            word = "not_ready" if critical_fail else "ready"
            return self._respond(status_code, word, base, {}, checks, draft, headers)
        any_fail = any(not r.ok for r in results.values())
        word = "unhealthy" if critical_fail else "degraded" if any_fail else "healthy"
        return self._respond(503 if critical_fail else 200, word, base, {}, checks, draft,
                             headers)

    def _is_critical(self, name: str) -> bool:
        check = self._checks.get(name)
        return check.critical if check is not None else False

    def _entries(self, results: dict[str, CheckResult], *, details: bool,
                 ) -> dict[str, dict[str, Any]]:
        expose = details and (self._config.health_expose_details
                              or bool(self._config.health_detailed_token))
        out: dict[str, dict[str, Any]] = {}
        for name, r in results.items():
            entry: dict[str, Any] = {}
            is_system = name == SYSTEM
            if r.details and (expose or is_system):
                entry.update(r.details)
            entry["status"] = ("degraded" if is_system else "unhealthy") if not r.ok else "healthy"
            entry["critical"] = self._is_critical(name)
            entry["response_time_ms"] = round(r.duration * 1000.0, 3)
            if r.error is not None:
                entry["error"] = r.error
            out[name] = entry
        return out

    def _respond(self, code: int, word: str, base: dict[str, Any], extra: dict[str, Any],
                 checks: dict[str, dict[str, Any]], draft: bool,
                 headers: list[tuple[str, str]]) -> HealthResponse:
        if not draft:
            body: dict[str, Any] = {"status": word, **base, **extra}
            if checks:
                body["checks"] = checks
            return HealthResponse(code, headers, _dump(body))
        status = {"healthy": "pass", "alive": "pass", "ready": "pass",
                  "degraded": "warn"}.get(word, "fail")
        doc: dict[str, Any] = {
            "status": status,
            "version": self._config.service_version,
            "serviceId": self._config.service_name,
            "description": f"{self._config.service_name} {word}",
        }
        if extra.get("reason"):
            doc["notes"] = [str(extra["reason"])]
        if checks:
            doc["checks"] = _draft_checks(checks, base["timestamp"])
        return HealthResponse(code, headers, _dump(doc))


def _draft_checks(checks: dict[str, dict[str, Any]], now: str) -> dict[str, list[dict[str, Any]]]:
    """Per-check entries in the IETF health-check draft shape (arrays of objects)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, entry in checks.items():
        st = {"healthy": "pass", "degraded": "warn"}.get(entry["status"], "fail")
        if name == SYSTEM:
            for key, measurement in (("cpu_percent", "cpu:utilization"),
                                     ("memory_percent", "memory:utilization"),
                                     ("disk_percent", "disk:utilization")):
                if key in entry:
                    item: dict[str, Any] = {
                        "componentType": "system", "observedValue": entry[key],
                        "observedUnit": "percent", "status": st, "time": now,
                    }
                    if st != "pass":
                        item["output"] = str(entry.get("error") or "threshold exceeded")
                    out[measurement] = [item]
            if "error" in entry:
                out["system:read"] = [{"componentType": "system", "status": st, "time": now,
                                       "output": str(entry["error"])}]
            continue
        item = {"componentType": "component", "observedValue": entry["response_time_ms"],
                "observedUnit": "ms", "status": st, "time": now}
        if st != "pass":
            item["output"] = str(entry.get("error", "failed"))
        out[f"{name}:responseTime"] = [item]
    return out


def _dump(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), allow_nan=False, default=str).encode()


def _settle(job: _Job, done: asyncio.Future[CheckResult] | cf.Future[CheckResult]) -> None:
    """Hand an async run's outcome to its job (a task cancelled before it ran included)."""
    if job.future.done():  # pragma: no cover
        return
    started = job.started
    now = time.monotonic()
    elapsed = now - started if started is not None else 0.0
    if done.cancelled():
        result = CheckResult(False, elapsed, "cancelled", None, now)
    else:
        exc = done.exception()
        if exc is not None:  # pragma: no cover - _run_async keeps everything
            result = CheckResult(False, elapsed, _error_kind(exc), None, now)
        else:
            result = done.result()
    with contextlib.suppress(cf.InvalidStateError):
        job.future.set_result(result)


def _cancel_requested(default: bool = True) -> bool:
    """Whether the current task has been asked to cancel (Python 3.11+; else ``default``).

    Tells a cancellation of the run's own task (a timeout, the loop stopping)
    from a ``CancelledError`` the check raised by itself.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    if cancelling is None:  # pragma: no cover - Python 3.10
        return default
    return bool(cancelling())


class _Stepper:
    """Awaits ``fn()`` one step at a time: the outcome is ``(value, None)`` or ``(None, exc)``.

    Every exception the check raises is kept as the outcome, ``BaseException``
    included: ``KeyboardInterrupt`` and ``SystemExit`` escaping a task step
    would otherwise stop the whole event loop. Only a cancellation of the task
    itself goes through. Around each step ``slot.running`` names the check, so
    a check that blocks the loop can be told from the others.
    """

    __slots__ = ("_fn", "_name", "_slot")

    def __init__(self, fn: Callable[[], Any], name: str, slot: _LoopSlot | None) -> None:
        self._fn = fn
        self._name = name
        self._slot = slot

    def _mark(self, name: str | None) -> None:
        if self._slot is not None:
            self._slot.running = name

    def __await__(self) -> Generator[Any, Any, tuple[Any, BaseException | None]]:
        self._mark(self._name)
        try:
            awaitable = self._fn()
            steps = awaitable.__await__()
        except BaseException as exc:  # not awaitable (TypeError), or raised when called
            return None, exc
        finally:
            self._mark(None)
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            self._mark(self._name)
            try:
                yielded = steps.throw(thrown) if thrown is not None else steps.send(sent)
            except StopIteration as stop:
                return stop.value, None
            except asyncio.CancelledError as exc:
                if _cancel_requested():
                    raise
                return None, exc
            except BaseException as exc:
                return None, exc
            finally:
                self._mark(None)
            try:
                sent, thrown = (yield yielded), None
            except GeneratorExit:
                with contextlib.suppress(BaseException):
                    steps.close()
                raise
            except BaseException as exc:  # thrown in by the task: passed on to the check
                sent, thrown = None, exc


async def _awaited(stepper: _Stepper) -> tuple[Any, BaseException | None]:
    return await stepper


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        with contextlib.suppress(Exception):
            loop.close()  # a loop set aside after a stall has no one else to close it


async def _stop_loop() -> None:
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks(loop) if t is not me]
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=0.5)
    loop.stop()


# ---------------------------------------------------------------------- what bodies may show
_KIND_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _error_kind(exc: BaseException) -> str:
    """The exception's class name, or its nearest base class with a plain identifier for a name.

    A class made at run time can be called anything (``type("10.0.0.5:5432",
    (OSError,), {})``): a body only ever shows ``[A-Za-z_][A-Za-z0-9_]{0,63}``.
    """
    for cls in type(exc).__mro__:
        name = getattr(cls, "__name__", None)
        if isinstance(name, str) and _KIND_RE.fullmatch(name):
            return name
    return "error"  # pragma: no cover - object's name always matches


_ADDRESS = "[address]"
_URL_HOST_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,31}://)[^\s/?#'\"<>\\]+")
_IPV6_RE = re.compile(r"(?<![\w.:%])[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*(?:%[\w.-]+)?")
_IPV4_RE = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")
_HOST_PORT_RE = re.compile(
    r"(?<![\w.-])(?=[\w.-]*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*"
    r":\d{2,5}(?![\d:])")
_PORT_RE = re.compile(r"(?i)\b(port)(\s*[=:]?\s*)\d{1,5}\b")
_WRAPPED_RE = re.compile(
    r"\[?\[address\]\]?(?::\d{1,5})?"  # [addr]:port
    r"|\(\s*['\"]?\[address\]['\"]?\s*(?:,\s*\d+\s*){1,3}\)")  # ('addr', port[, flow, scope])


def _v6_sub(match: re.Match[str]) -> str:
    text = match.group(0)
    stripped = text.rstrip(".:")
    candidates = [(text, ""), (stripped, text[len(stripped):])]
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit() and len(tail) <= 5:
        candidates.append((head, ""))  # a port after an unbracketed address goes too
    for candidate, rest in candidates:
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        return _ADDRESS + rest
    return text


def _scrub_addresses(text: str) -> str:
    """``text`` with IP addresses, ``host:port`` pairs, URL hosts and port numbers replaced.

    IPv4 and IPv6 literals (with a zone, a port, brackets, or in the
    ``('host', port)`` tuples socket errors quote), the host of any
    ``scheme://`` URL, ``name:port`` and ``port 5432`` all become
    ``[address]`` (ports: ``port [port]``). Used on everything a check
    returns before it can reach a probe body.
    """
    if ":" in text or "." in text:
        if "://" in text:
            text = _URL_HOST_RE.sub(lambda m: m.group(1) + _ADDRESS, text)
        if ":" in text:
            text = _IPV6_RE.sub(_v6_sub, text)
        if "." in text:
            text = _IPV4_RE.sub(_ADDRESS, text)
        if ":" in text:
            text = _HOST_PORT_RE.sub(_ADDRESS, text)
    if "ort" in text:
        text = _PORT_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}[port]", text)
    if _ADDRESS in text:
        text = _WRAPPED_RE.sub(_ADDRESS, text)
    return text


def _scrub_tree(value: Any) -> Any:
    """Apply :func:`_scrub_addresses` to every string and key of a JSON-safe value."""
    if isinstance(value, str):
        return _scrub_addresses(value)
    if isinstance(value, dict):
        return {_scrub_addresses(str(k)): _scrub_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_tree(v) for v in value]
    return value


def health_check(name: str | None = None, *, critical: bool = True,
                 timeout: float | None = None) -> Callable[[F], F]:
    """Register the decorated function as a health check of the current instance.

    Works at import time, before :func:`~mestres_observability.init_observability`:
    the default instance's checks carry over to the instance init creates.
    The function itself is returned unchanged.

    Args:
        name: the check's name (default: the function's ``__name__``).
        critical: see :meth:`HealthRegistry.add`.
        timeout: seconds; default ``health_check_timeout``.

    Example:
        >>> from mestres_observability import health_check
        >>> @health_check("payments", critical=False, timeout=0.3)
        ... def payments_up() -> bool:
        ...     return True
    """

    def decorate(fn: F) -> F:
        from ._current import get_observability

        check_name = name if name else str(getattr(fn, "__name__", repr(fn)))
        get_observability().health.add(check_name, fn, critical=critical, timeout=timeout)
        return fn

    return decorate
