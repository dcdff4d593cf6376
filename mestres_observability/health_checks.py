"""Built-in health checks: SQL, Redis, HTTP, disk and system resources.

Each factory returns a callable to register with
:meth:`~mestres_observability.HealthRegistry.add` or
:func:`~mestres_observability.health_check`; all of them are re-exported from
:mod:`mestres_observability.health`. Optional drivers (SQLAlchemy, redis-py)
are imported when the check is built; a missing one raises
:class:`~mestres_observability.errors.MissingExtraError` naming the pip extra.

Example:
    >>> from mestres_observability import get_observability
    >>> from mestres_observability.health import disk_check
    >>> get_observability().health.add("disk", disk_check("/", max_percent=95), critical=False)
    >>> get_observability().health.remove("disk")

None of these checks puts a host, a URL or an exception message in what it
returns: failures surface as the exception class name only.
"""

from __future__ import annotations

import inspect
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psutil

from ._fault import FaultReporter
from .config import ObservabilityConfig
from .errors import MissingExtraError

__all__ = ["SystemCheck", "disk_check", "http_check", "redis_check", "sql_check", "system_check"]


# ---------------------------------------------------------------------- SQL
def sql_check(target: Any, *, query: str = "SELECT 1", connect_timeout: int = 2,
              ) -> Callable[[], bool]:
    """A check that runs ``query`` (default ``SELECT 1``) on a database.

    Args:
        target: a SQLAlchemy ``Engine``, a database URL (an engine is created
            once, with ``pool_pre_ping``, and its pool disposed when the
            instance shuts down; extra ``sql``), or a DB-API
            ``connect`` callable returning a new connection (closed after use).
        query: the statement to run.
        connect_timeout: seconds passed to PostgreSQL drivers for a URL target
            (libpq rounds values below 2 up to 2). The registry's timeout
            bounds the probe regardless.

    Returns:
        A sync check returning ``True``; driver errors propagate as exceptions
        (reported by class name only).

    Raises:
        MissingExtraError: a URL was given and SQLAlchemy is not installed.
        TypeError: ``target`` is none of the above.
    """
    if isinstance(target, str):
        try:
            import sqlalchemy
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MissingExtraError("sql_check with a database URL", "sql", "sqlalchemy") from exc
        url = sqlalchemy.engine.make_url(target)
        connect_args: dict[str, Any] = {}
        if url.get_backend_name() == "postgresql":
            connect_args["connect_timeout"] = max(1, int(connect_timeout))
        pool: dict[str, Any] = {}
        if url.get_backend_name() != "sqlite":
            pool = {"pool_size": 1, "max_overflow": 1}
        engine = sqlalchemy.create_engine(url, pool_pre_ping=True, connect_args=connect_args,
                                          **pool)
        return _engine_check(engine, query, owned=True)
    if hasattr(target, "connect") and hasattr(target, "dialect"):
        return _engine_check(target, query, owned=False)
    if callable(target):
        connect: Callable[[], Any] = target

        def check_dbapi() -> bool:
            conn = connect()
            try:
                cur = conn.cursor()
                try:
                    cur.execute(query)
                    cur.fetchone()
                finally:
                    cur.close()
            finally:
                conn.close()
            return True

        return check_dbapi
    raise TypeError("sql_check needs a SQLAlchemy Engine, a database URL or a DB-API connect "
                    f"callable, got {type(target).__name__}")


def _engine_check(engine: Any, query: str, *, owned: bool) -> Callable[[], bool]:
    """The check for an engine; ``owned``: built here from a URL, so its pool is ours to reset.

    A pool built before a fork (``gunicorn --preload``) holds connections the
    parent also uses: sharing one socket between two processes corrupts both
    sides' protocol state. In a new process, the first run of a check on an
    owned engine therefore replaces the pool without closing the parent's
    connections (SQLAlchemy's ``dispose(close=False)``). An engine the
    application passed in is left to the application (same call, in its own
    post-fork hook).
    """
    try:
        from sqlalchemy import text
    except ImportError as exc:  # pragma: no cover - an Engine implies SQLAlchemy
        raise MissingExtraError("sql_check", "sql", "sqlalchemy") from exc
    statement = text(query)
    pool_pid = [os.getpid()]

    def check_sql() -> bool:
        if owned and pool_pid[0] != os.getpid():  # runs are single-flight: no race here
            engine.dispose(close=False)
            pool_pid[0] = os.getpid()
        with engine.connect() as conn:
            conn.execute(statement).fetchall()
        return True

    if owned:  # the registry's close() releases the pool's connections (reopened on next use)
        setattr(check_sql, "close", engine.dispose)  # noqa: B010 - an attribute of a function
    return check_sql


# ---------------------------------------------------------------------- Redis
def redis_check(target: Any, *, timeout: float = 2.0) -> Callable[[], Any]:
    """A check that sends ``PING`` to Redis.

    Args:
        target: a redis-py client (``redis.Redis``; a ``redis.asyncio.Redis``
            gives an async check) or a ``redis://`` URL (a client is created
            once with socket timeouts of ``timeout`` seconds; extra ``redis``).
        timeout: socket connect and read timeout for a URL target.

    Raises:
        MissingExtraError: a URL was given and redis-py is not installed.
        TypeError: ``target`` has no ``ping`` method.
    """
    client = target
    if isinstance(target, str):
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MissingExtraError("redis_check with a URL", "redis", "redis") from exc
        client = redis.Redis.from_url(target, socket_timeout=timeout,
                                      socket_connect_timeout=timeout, retry_on_timeout=False)
    ping = getattr(client, "ping", None)
    if ping is None or not callable(ping):
        raise TypeError(f"redis_check needs a redis client or URL, got {type(target).__name__}")
    if inspect.iscoroutinefunction(ping) or inspect.iscoroutinefunction(
            getattr(type(client), "execute_command", None)):
        async def check_redis_async() -> bool:
            return bool(await ping())

        return check_redis_async

    def check_redis() -> bool:
        return bool(ping())

    if isinstance(target, str):  # our client: the registry's close() releases its connections
        setattr(check_redis, "close", client.close)  # noqa: B010 - an attribute of a function
    return check_redis


# ---------------------------------------------------------------------- HTTP
def http_check(url: str, *, timeout: float = 2.0, method: str = "GET",
               headers: dict[str, str] | None = None) -> Callable[[], dict[str, Any]]:
    """A check that passes when ``url`` answers 2xx (standard library only).

    Redirects are followed; 4xx and 5xx raise ``HTTPError`` (the error kind).

    Args:
        url: an ``http://`` or ``https://`` URL.
        timeout: socket timeout in seconds.
        method: request method.
        headers: extra request headers.

    Returns:
        A sync check returning ``{"status_code": <code>}``.

    Raises:
        ValueError: ``url`` is not http(s).
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"http_check needs an http:// or https:// URL, got scheme {scheme!r}")
    sent = dict(headers or {})

    def check_http() -> dict[str, Any]:
        req = urllib.request.Request(url, method=method, headers=sent)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            code = int(resp.status)
        ok = 200 <= code < 300
        return {"status": "healthy" if ok else "unhealthy", "status_code": code}

    return check_http


# ---------------------------------------------------------------------- disk
def disk_check(path: str = "/", max_percent: float = 90.0) -> Callable[[], dict[str, Any]]:
    """A check that fails when the file system holding ``path`` is fuller than ``max_percent``.

    Returns:
        A sync check returning ``{"disk_percent": <used %>}`` (failing above the limit).
    """
    limit = float(max_percent)

    def check_disk() -> dict[str, Any]:
        percent = float(psutil.disk_usage(path).percent)
        return {"status": "unhealthy" if percent > limit else "healthy",
                "disk_percent": percent, "max_percent": limit}

    return check_disk


# ---------------------------------------------------------------------- system
class SystemCheck:
    """CPU, memory and disk usage against thresholds (the ``checks.system`` entry).

    Readings come from :class:`~mestres_observability.system.SystemCollector`:
    container-aware (cgroup v2 limits and quota), CPU from this check's own
    baseline of CPU times (never the process-wide
    ``psutil.cpu_percent(interval=None)`` baseline), disk reads bounded by
    ``system_scrape_budget`` and at most one pending read per mount point.

    Calling it returns ``cpu_percent``, ``memory_percent``, ``disk_percent``
    (the fullest mount point; ``disks`` per mount point when there are several),
    ``exceeded`` (the resources above their threshold) and a failing
    ``status`` when any threshold is exceeded.

    Args:
        config: thresholds ``health_cpu_threshold``, ``health_memory_threshold``,
            ``health_disk_threshold`` and ``system_mountpoints`` (default: built-in defaults).
        faults: where read faults are counted (component ``system``).
        cpu_threshold: overrides the CPU threshold (percent).
        memory_threshold: overrides the memory threshold (percent).
        disk_threshold: overrides the disk threshold (percent).
        mountpoints: overrides ``system_mountpoints``.
    """

    def __init__(self, *, config: ObservabilityConfig | None = None,
                 faults: FaultReporter | None = None, cpu_threshold: float | None = None,
                 memory_threshold: float | None = None, disk_threshold: float | None = None,
                 mountpoints: Sequence[str] | None = None) -> None:
        from .system import SystemCollector

        cfg = config if config is not None else ObservabilityConfig()
        self.cpu_threshold = cfg.health_cpu_threshold if cpu_threshold is None else cpu_threshold
        self.memory_threshold = (cfg.health_memory_threshold if memory_threshold is None
                                 else memory_threshold)
        self.disk_threshold = (cfg.health_disk_threshold if disk_threshold is None
                               else disk_threshold)
        self._names = {cfg.metric_name(base): key for base, key in (
            ("cpu_usage_percent", "cpu_percent"), ("memory_usage_percent", "memory_percent"),
            ("disk_usage_percent", "disk_percent"))}
        self._collector = SystemCollector(cfg, faults if faults is not None else FaultReporter(),
                                          mountpoints=mountpoints)

    def read(self) -> dict[str, Any]:
        """Current readings: ``cpu_percent``, ``memory_percent``, ``disk_percent``, ``disks``."""
        out: dict[str, Any] = {}
        disks: dict[str, float] = {}
        for family in self._collector.collect():
            key = self._names.get(family.name)
            if key is None:
                continue
            for sample in family.samples:
                if key == "disk_percent":
                    disks[sample.labels.get("mountpoint", "")] = round(float(sample.value), 2)
                else:
                    out[key] = round(float(sample.value), 2)
        if disks:
            out["disk_percent"] = max(disks.values())
            if len(disks) > 1:
                out["disks"] = disks
        return out

    def __call__(self) -> dict[str, Any]:
        """Read and compare against the thresholds."""
        values = self.read()
        exceeded = [name for name, key, limit in (
            ("cpu", "cpu_percent", self.cpu_threshold),
            ("memory", "memory_percent", self.memory_threshold),
            ("disk", "disk_percent", self.disk_threshold),
        ) if key in values and values[key] > limit]
        values["exceeded"] = exceeded
        values["status"] = "unhealthy" if exceeded else "healthy"
        return values


def system_check(*, cpu_threshold: float = 90.0, memory_threshold: float = 90.0,
                 disk_threshold: float = 90.0, mountpoints: Iterable[str] = ("/",),
                 ) -> SystemCheck:
    """A check of CPU, memory and disk usage that fails above any threshold (percent).

    ``/health/detailed`` always includes one as ``checks.system`` (reported
    ``degraded``, never ``unhealthy``); register this one yourself, usually with
    ``critical=False``, to have it in readiness or under another name.
    """
    return SystemCheck(cpu_threshold=cpu_threshold, memory_threshold=memory_threshold,
                       disk_threshold=disk_threshold, mountpoints=tuple(mountpoints))
