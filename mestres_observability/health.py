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
  (``health_deadline``, 0.8 s: below the kubelet's 1 s default probe timeout);
* sync checks on a small bounded thread pool owned by the library, async checks
  on the caller's event loop under :meth:`~HealthRegistry.aprobe` and on one
  library-owned event-loop thread under :meth:`~HealthRegistry.probe`;
* **at most one run per check at a time** (single-flight). Python cannot stop a
  thread, so a hung check keeps its one thread; later probes do not start a
  second run but report ``timeout`` at once, and concurrent probes share one run;
* a finished result is reused for ``health_cache_ttl`` seconds;
* fork-safe (``gunicorn --preload``): a forked child starts its own thread pool
  and event-loop thread on its first probe, with a fresh lock and fresh
  single-flight state, so a run still in flight in the parent at the fork
  (hung or not) is run again in the child rather than reported as ``timeout``.

Responses carry a status and an error *kind* only (the exception class name or
``timeout``); the full, redacted detail goes to the
``mestres_observability.health`` logger.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import datetime as _dt
import inspect
import json
import logging
import math
import queue
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
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
_MAX_WORKERS = 16
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
        error: ``None`` when it passed, else ``"timeout"``, the exception class
            name, or ``"failed"`` (the check returned a false value).
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
    """One in-flight run of one check."""

    __slots__ = ("future", "loop", "started")

    def __init__(self, started: float, future: cf.Future[CheckResult],
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.started = started
        self.future = future
        self.loop = loop

    def alive(self) -> bool:
        """Still running (a task on a loop that has since closed never finishes)."""
        if self.future.done():
            return False
        return self.loop is None or not self.loop.is_closed()


class _State:
    __slots__ = ("job", "last", "last_error")

    def __init__(self) -> None:
        self.job: _Job | None = None
        self.last: CheckResult | None = None
        self.last_error: str | None = "unknown"


class _Pool:
    """A bounded pool of daemon worker threads.

    Unlike :class:`concurrent.futures.ThreadPoolExecutor`, its threads are not
    joined at interpreter exit, so a check stuck forever cannot block the host
    process from exiting. Threads start on demand (only when no worker is idle)
    up to ``max_workers`` and stop at :meth:`shutdown`.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max = max_workers
        self._name = name
        self._queue: queue.SimpleQueue[tuple[cf.Future[Any], Callable[..., Any], tuple[Any, ...]]
                                       | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads = 0
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any) -> cf.Future[T]:
        fut: cf.Future[T] = cf.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("health worker pool is closed")
            self._queue.put((fut, fn, args))
            if self._idle.acquire(blocking=False):
                return fut
            if self._threads < self._max:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self._name}-{self._threads}",
                                 daemon=True).start()
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn, args = item
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:  # handed to whoever waits on the future
                    fut.set_exception(exc)
            del item, fut, fn, args
            self._idle.release()

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in range(threads):
            self._queue.put(None)


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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
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
            loop, self._loop = self._loop, None
            thread, self._loop_thread = self._loop_thread, None
            for state in self._states.values():
                if state.job is not None and state.job.loop is loop:
                    state.job = None
        try:
            if executor is not None:
                executor.shutdown()
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    asyncio.run_coroutine_threadsafe(_stop_loop(), loop)
                if thread is not None:
                    thread.join(1.0)
                if thread is None or not thread.is_alive():
                    loop.close()
        except Exception as exc:
            self._faults.report("health", "close", "error stopping health workers", exc)

    def _reset_after_fork(self) -> None:  # pragma: no cover - forked children
        self._lock = threading.RLock()
        self._executor = None
        self._loop = None
        self._loop_thread = None
        self._states = {}
        self._probed, self._late = False, []  # a worker's first probe is its own

    def _get_executor(self) -> _Pool:
        ex = self._executor
        if ex is None:
            with self._lock:
                if self._executor is None:
                    self._executor = _Pool(_MAX_WORKERS, "mestres-obs-health")
                ex = self._executor
        return ex

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            with self._lock:
                if self._loop is None or self._loop.is_closed():
                    new = asyncio.new_event_loop()
                    thread = threading.Thread(target=_run_loop, args=(new,),
                                              name="mestres-obs-health-loop", daemon=True)
                    thread.start()
                    self._loop, self._loop_thread = new, thread
                loop = self._loop
        return loop

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
            result = CheckResult(False, 0.0, type(exc).__name__, None, time.monotonic())
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
        timeout = self._effective_timeout(check)
        started = time.monotonic()
        if check.is_async:
            if running_loop is not None:
                fut: cf.Future[CheckResult] = cf.Future()
                fut.set_running_or_notify_cancel()
                task = running_loop.create_task(self._run_async(check, timeout, started))
                task.add_done_callback(lambda t: _settle(fut, t, started))
                return _Job(started, fut, running_loop)
            loop = self._get_loop()
            cfut = asyncio.run_coroutine_threadsafe(self._run_async(check, timeout, started), loop)
            return _Job(started, cfut, loop)
        return _Job(started, self._get_executor().submit(self._run_sync, check, timeout, started))

    def _run_sync(self, check: _Check, timeout: float, started: float) -> CheckResult:
        t0 = time.perf_counter()
        try:
            value = check.fn()
            if inspect.isawaitable(value):
                value = asyncio.run(_as_coroutine(value))
        except Exception as exc:
            return self._finish(check, timeout, started, time.perf_counter() - t0, exc=exc)
        return self._finish(check, timeout, started, time.perf_counter() - t0, value=value)

    async def _run_async(self, check: _Check, timeout: float, started: float) -> CheckResult:
        t0 = time.perf_counter()
        try:
            awaitable = check.fn()
            value = await asyncio.wait_for(_as_coroutine(awaitable), timeout)
        except asyncio.TimeoutError:
            return self._finish(check, timeout, started, time.perf_counter() - t0, timed_out=True)
        except Exception as exc:
            return self._finish(check, timeout, started, time.perf_counter() - t0, exc=exc)
        return self._finish(check, timeout, started, time.perf_counter() - t0, value=value)

    def _finish(self, check: _Check, timeout: float, started: float, duration: float, *,
                value: Any = None, exc: BaseException | None = None,
                timed_out: bool = False) -> CheckResult:
        """Normalise a run's outcome, record it (state, metrics, log) and return it."""
        try:
            if timed_out or duration > timeout:
                result = CheckResult(False, duration, "timeout", None, time.monotonic())
                if not timed_out:
                    _log.warning("health check %r returned after %.3fs, past its %.3fs timeout",
                                 check.name, duration, timeout)
            elif exc is not None:
                result = CheckResult(False, duration, type(exc).__name__, None, time.monotonic())
                self._log_exception(check, exc)
            else:
                ok, details, kind = self._normalise(check, value)
                if kind is None and not ok:
                    kind = "threshold_exceeded" if isinstance(check.fn, SystemCheck) else "failed"
                result = CheckResult(ok, duration, kind, details, time.monotonic())
        except Exception as fault:  # pragma: no cover - defensive
            self._faults.report("health", "result", f"cannot record health check {check.name!r}",
                                fault)
            result = CheckResult(False, duration, type(fault).__name__, None, time.monotonic())
        self._record(check, result)
        return result

    def _normalise(self, check: _Check, value: Any,
                   ) -> tuple[bool, dict[str, Any] | None, str | None]:
        """(passed, details, error kind when the value itself could not be read)."""
        if value is None or value is True:
            return True, None, None
        if value is False:
            return False, None, None
        if isinstance(value, Mapping):
            ok = True
            status = value.get("status", None)
            if status is False or (isinstance(status, str) and status.lower() in _FAIL_WORDS):
                ok = False
            raw = {str(k): v for k, v in value.items() if str(k) not in RESERVED_KEYS}
            details = self._redactor.clean(raw)
            if not isinstance(details, dict):  # pragma: no cover - clean keeps mappings
                details = {}
            try:
                size = len(json.dumps(details, default=str))
            except Exception:
                size = _MAX_DETAIL_BYTES + 1
            if size > _MAX_DETAIL_BYTES:
                details = {"details_truncated": True}
            return ok, details or None, None
        try:
            return bool(value), None, None
        except Exception as exc:
            self._log_exception(check, exc)
            return False, None, type(exc).__name__

    def _log_exception(self, check: _Check, exc: BaseException) -> None:
        try:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            text = self._redactor.scrub_text(text)
        except Exception:  # a hostile __str__
            text = type(exc).__name__
        kind = type(exc).__name__
        level = logging.WARNING
        with self._lock:
            state = self._states.get(check.name)
            if state is not None:
                if state.last_error == kind:
                    level = logging.DEBUG  # same failure again: do not flood
                state.last_error = kind
        _log.log(level, "health check %r failed (%s):\n%s", check.name, kind, text,
                 extra={"health_check": check.name, "error_kind": kind})

    def _record(self, check: _Check, result: CheckResult) -> None:
        with self._lock:
            state = self._states.get(check.name)
            if state is not None:
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

    def _set_metrics(self, name: str, result: CheckResult) -> None:
        try:
            self._metrics.health_check_status.set((name,), 1.0 if result.ok else 0.0)
            self._metrics.health_check_duration_seconds.set((name,), result.duration)
        except Exception as exc:
            self._faults.report("health", "metrics", "cannot set health metrics", exc)

    def _timeout_result(self, check: _Check, job: _Job) -> CheckResult:
        result = CheckResult(False, time.monotonic() - job.started, "timeout", None,
                             time.monotonic())
        self._set_metrics(check.name, result)
        return result

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

    def _run_checks(self, checks: list[_Check]) -> dict[str, CheckResult]:
        deadline = time.monotonic() + self._config.health_deadline
        pending: list[tuple[_Check, _Job]] = []
        results: dict[str, CheckResult] = {}
        for check in checks:
            got = self._acquire(check, None)
            if isinstance(got, CheckResult):
                results[check.name] = got
            else:
                pending.append((check, got))
        for check, job in pending:
            until = min(job.started + self._effective_timeout(check), deadline)
            try:
                results[check.name] = job.future.result(max(0.0, until - time.monotonic()))
            except cf.TimeoutError:
                results[check.name] = self._timeout_result(check, job)
            except Exception as exc:  # cancelled by close(), or a fault
                results[check.name] = CheckResult(False, time.monotonic() - job.started,
                                                  type(exc).__name__, None, time.monotonic())
        return {c.name: results[c.name] for c in checks}

    async def _arun_checks(self, checks: list[_Check]) -> dict[str, CheckResult]:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self._config.health_deadline
        results: dict[str, CheckResult] = {}
        waits: list[Awaitable[tuple[str, CheckResult]]] = []
        for check in checks:
            got = self._acquire(check, loop)
            if isinstance(got, CheckResult):
                results[check.name] = got
            else:
                waits.append(self._await_job(check, got, deadline))
        for name, result in await asyncio.gather(*waits):
            results[name] = result
        return {c.name: results[c.name] for c in checks}

    async def _await_job(self, check: _Check, job: _Job,
                         deadline: float) -> tuple[str, CheckResult]:
        until = min(job.started + self._effective_timeout(check), deadline)
        remaining = max(0.0, until - time.monotonic())
        if not job.future.done():
            wrapped = asyncio.wrap_future(job.future)
            # asyncio.wait never cancels what it waits for (the run keeps its single flight)
            await asyncio.wait({wrapped}, timeout=remaining)
        if job.future.done():
            try:
                return check.name, job.future.result(0)
            except Exception as exc:
                return check.name, CheckResult(False, time.monotonic() - job.started,
                                               type(exc).__name__, None, time.monotonic())
        return check.name, self._timeout_result(check, job)

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


def _settle(fut: cf.Future[CheckResult], task: asyncio.Future[CheckResult],
            started: float) -> None:
    if fut.done():  # pragma: no cover
        return
    if task.cancelled():
        fut.set_result(CheckResult(False, time.monotonic() - started, "cancelled", None,
                                   time.monotonic()))
        return
    exc = task.exception()
    if exc is not None:  # pragma: no cover - _run_async catches everything
        fut.set_result(CheckResult(False, time.monotonic() - started, type(exc).__name__, None,
                                   time.monotonic()))
    else:
        fut.set_result(task.result())


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())


async def _stop_loop() -> None:
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks(loop) if t is not me]
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=0.5)
    loop.stop()


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
