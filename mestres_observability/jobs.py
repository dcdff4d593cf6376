"""Batch jobs: ``with job("inventory_sync"):`` or ``@job("inventory_sync")``.

Each run records, under the job's name:

* ``job_runs_total{job,status}`` (``success`` or ``failure``: the block raised);
* ``job_duration_seconds{job}``, the duration of the last run;
* ``job_last_success_timestamp_seconds{job}`` (and ``..._failure_...``), the
  Unix time the last run succeeded (failed) at: alert on
  ``time() - job_last_success_timestamp_seconds > <period + margin>``;
* a span named after the job (the run's root span when nothing else is
  current) and the ``job`` field on every log line of the run, then one
  ``job_finished`` line with the status and duration.

A cron job's process is gone before Prometheus could scrape it, so at the end
of each run its metrics are also handed on:

* ``pushgateway_url`` set: pushed to the Pushgateway (``POST``, grouping key
  ``job=<name>``, ``instance=<job_instance or the host name>``), within
  ``pushgateway_timeout``. A failed run pushes no success timestamp, and
  ``POST`` replaces only the families it sends, so the last success stays
  visible. Scrape the Pushgateway with ``honor_labels: true``.
* ``job_textfile_dir`` set: written to ``<dir>/<job>.prom`` for
  node-exporter's textfile collector (a temporary file renamed into place, so
  the collector never reads half a file); a failed run keeps the previous
  file's success timestamp.

A failed push or write is logged and counted in
``mestres_observability_errors_total{component="jobs"}``; it never raises
into the job. A job's own exception propagates unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from ._compat import restore_structlog_context
from ._current import get_observability
from ._wrapping import around
from .tracing import span

__all__ = ["job", "push_job_metrics", "write_job_textfile"]

F = TypeVar("F", bound=Callable[..., Any])

_FAMILIES = ("job_runs_total", "job_duration_seconds", "job_last_success_timestamp_seconds",
             "job_last_failure_timestamp_seconds")
_FILE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def _instance(config: Any) -> str:
    return str(config.job_instance or socket.gethostname() or "unknown")


class _JobSamples:
    """A collector of one job's series of this process (for a push or a textfile).

    ``carry``: ``{family: value}`` to use for families this run has no sample of
    (the previous textfile's success timestamp after a failed run).
    """

    def __init__(self, obs: Any, name: str, carry: dict[str, float] | None = None) -> None:
        self.obs = obs
        self.name = name
        self.carry = carry or {}

    def collect(self) -> Iterator[Any]:
        metrics = self.obs.metrics
        for base in _FAMILIES:
            metric = metrics.family(base).metric
            collect = getattr(metric, "collect", None)
            if collect is None:  # job_metrics off: an inert metric
                continue
            for family in collect():
                samples = [s for s in family.samples
                           if s.labels.get("job") == self.name and not s.name.endswith("_created")]
                if not samples and base in self.carry:
                    from prometheus_client.samples import Sample

                    samples = [Sample(family.name, {"job": self.name}, self.carry[base])]
                if samples:
                    family.samples = samples
                    yield family


def push_job_metrics(name: str, obs: Any = None) -> bool:
    """Push job ``name``'s series to ``pushgateway_url`` (what :class:`job` does at the end).

    Returns:
        ``True`` when the Pushgateway accepted them; ``False`` when no URL is
        set or the push failed (logged and counted, never raised).
    """
    instance = obs if obs is not None else get_observability()
    cfg = instance.config
    if not cfg.pushgateway_url:
        return False
    try:
        from prometheus_client import CollectorRegistry, pushadd_to_gateway

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_JobSamples(instance, name))
        pushadd_to_gateway(cfg.pushgateway_url, job=name, registry=registry,
                           grouping_key={"instance": _instance(cfg)},
                           timeout=cfg.pushgateway_timeout)
        return True
    except Exception as exc:
        instance.faults.report("jobs", "push", f"pushing the metrics of job {name!r} to the "
                               "Pushgateway failed", exc)
        return False


def _previous_success(path: str, family: str) -> float | None:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    from prometheus_client.parser import text_string_to_metric_families

    try:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == family:
                    return float(s.value)
    except Exception:  # a file someone else wrote badly: start afresh
        return None
    return None


def write_job_textfile(name: str, obs: Any = None) -> str | None:
    """Write job ``name``'s series to ``<job_textfile_dir>/<name>.prom`` (atomic rename).

    Returns:
        The file's path, or ``None`` when no directory is set or writing
        failed (logged and counted, never raised).
    """
    instance = obs if obs is not None else get_observability()
    cfg = instance.config
    if not cfg.job_textfile_dir:
        return None
    try:
        from prometheus_client import CollectorRegistry, write_to_textfile

        path = os.path.join(cfg.job_textfile_dir, _FILE_NAME.sub("_", name) + ".prom")
        success = cfg.metric_name("job_last_success_timestamp_seconds")
        carry: dict[str, float] = {}
        previous = _previous_success(path, success)
        if previous is not None:
            carry["job_last_success_timestamp_seconds"] = previous
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_JobSamples(instance, name, carry))
        write_to_textfile(path, registry)  # a temporary file, then os.replace
        return path
    except Exception as exc:
        instance.faults.report("jobs", "textfile", f"writing the textfile of job {name!r} "
                               "failed", exc)
        return None


class job:
    """A batch job run: a context manager (``with``/``async with``) and a decorator.

    Args:
        name: the job's name (``job`` label, Pushgateway grouping key, file name).
        push: push to ``pushgateway_url`` at the end (default: when it is set).
        textfile: write to ``job_textfile_dir`` at the end (default: when it is set).

    Example::

        with job("inventory_sync"):
            sync_inventory()

        @job("nightly_report")
        def nightly_report(): ...

    Raises:
        ValueError: ``name`` is empty or not a string.
    """

    __slots__ = ("_ctx", "_name", "_push", "_span", "_started", "_textfile")

    def __init__(self, name: str, *, push: bool | None = None,
                 textfile: bool | None = None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"job() needs a non-empty name, got {name!r}")
        self._name = name.strip()
        self._push = push
        self._textfile = textfile
        self._started = 0.0
        self._span: span | None = None
        self._ctx: contextvars.Context | None = None

    @property
    def name(self) -> str:
        """The job's name."""
        return self._name

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> job:
        import structlog

        self._ctx = contextvars.copy_context()
        with contextlib.suppress(Exception):  # structlog does not raise here
            structlog.contextvars.bind_contextvars(job=self._name)
        self._span = span(self._name, **{"job.name": self._name})
        self._span.__enter__()
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        duration = time.perf_counter() - self._started
        failed = exc is not None
        obs = get_observability()
        try:
            self._record(obs, duration, failed)
        finally:
            sp, self._span = self._span, None
            if sp is not None:
                sp.__exit__(exc_type, exc, tb)
            self._finish(obs)
            ctx, self._ctx = self._ctx, None
            if ctx is not None:
                restore_structlog_context(ctx)

    async def __aenter__(self) -> job:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

    def _record(self, obs: Any, duration: float, failed: bool) -> None:
        cfg = obs.config
        if not (cfg.enabled and cfg.job_metrics):
            return
        try:
            metrics = obs.metrics
            labels = (self._name,)
            now = time.time()
            metrics.job_runs_total.inc((self._name, "failure" if failed else "success"), 1.0)
            metrics.job_duration_seconds.set(labels, duration)
            if failed:
                metrics.job_last_failure_timestamp_seconds.set(labels, now)
            else:
                metrics.job_last_success_timestamp_seconds.set(labels, now)
            from .logs import log_event

            log_event("job_finished", status="failure" if failed else "success",
                      duration_seconds=round(duration, 6))
        except Exception as exc:
            obs.faults.report("jobs", "record", f"recording job {self._name!r} failed", exc)

    def _finish(self, obs: Any) -> None:
        cfg = obs.config
        if not (cfg.enabled and cfg.job_metrics):
            return
        if self._push if self._push is not None else bool(cfg.pushgateway_url):
            push_job_metrics(self._name, obs)
        if self._textfile if self._textfile is not None else bool(cfg.job_textfile_dir):
            write_job_textfile(self._name, obs)

    # ------------------------------------------------------------------ decorator
    def __call__(self, fn: F) -> F:
        """Run ``fn`` (sync or async) as this job, once per call."""
        return around(fn, _JobHooks(self._name, self._push, self._textfile), decorator="job")


class _JobHooks:
    """:func:`around` hooks of ``@job(...)``: a fresh :class:`job` run per call."""

    __slots__ = ("name", "push", "textfile")

    def __init__(self, name: str, push: bool | None, textfile: bool | None) -> None:
        self.name = name
        self.push = push
        self.textfile = textfile

    def start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> job | None:
        run = job(self.name, push=self.push, textfile=self.textfile)
        try:
            run.__enter__()
        except Exception:  # pragma: no cover - __enter__ does not raise
            return None
        return run

    def success(self, state: job | None, result: Any) -> None:
        if state is not None:
            state.__exit__(None, None, None)

    def failure(self, state: job | None, exc: BaseException) -> None:
        if state is not None:
            state.__exit__(type(exc), exc, exc.__traceback__)
