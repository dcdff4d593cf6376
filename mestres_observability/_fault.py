"""Self-monitoring of the library's own faults.

Instrumentation never raises into the host. When something inside the library
fails at run time (a value it cannot read, a collector that throws, an exporter
that is down) the fault is counted in
``mestres_observability_errors_total{component}`` and logged once per
(component, kind) per interval, so a persistent fault cannot flood the logs.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from ._forksafe import renew_locks_after_fork

__all__ = ["COMPONENTS", "FaultReporter"]

#: The fixed set of ``component`` label values (bounded by construction).
COMPONENTS: tuple[str, ...] = (
    "business", "metrics", "cardinality", "system", "exposition", "tracing", "logging",
    "health", "http", "multiprocess", "config", "instrument",
    "celery", "outbound", "db", "jobs",
)

_log = logging.getLogger("mestres_observability")


class _Counter(Protocol):
    def labels(self, *values: str) -> Any: ...


class FaultReporter:
    """Counts and rate-limits the logging of internal faults.

    Args:
        interval: seconds during which a second fault of the same
            (component, kind) is counted but not logged again.
    """

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._children: dict[str, Any] = {}
        self._last_logged: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._logging = threading.local()
        renew_locks_after_fork(self, "_lock")  # gunicorn --preload: fresh in a forked child

    def bind(self, counter: _Counter) -> None:
        """Attach the ``mestres_observability_errors_total`` counter (one child per component)."""
        self._children = {c: counter.labels(c) for c in COMPONENTS}

    def report(
        self,
        component: str,
        kind: str,
        message: str = "",
        exc: BaseException | None = None,
        **fields: object,
    ) -> None:
        """Count a fault and log it unless the same kind was logged within ``interval``.

        Never raises. ``component`` outside :data:`COMPONENTS` is counted as ``metrics``.
        """
        try:
            child = self._children.get(component) or self._children.get("metrics")
            if child is not None:
                child.inc()
            if getattr(self._logging, "active", False):
                return  # a fault raised while logging a fault: count only (no recursion)
            now = time.monotonic()
            key = (component, kind)
            with self._lock:
                last = self._last_logged.get(key)
                if last is not None and now - last < self.interval:
                    return
                if len(self._last_logged) > 1024:
                    self._last_logged.clear()
                self._last_logged[key] = now
            self._logging.active = True
            try:
                _log.warning(
                    "mestres_observability %s fault (%s): %s",
                    component, kind, message or (type(exc).__name__ if exc else ""),
                    exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
                    extra={"component": component, "fault_kind": kind, **fields},
                )
            finally:
                self._logging.active = False
        except Exception:  # pragma: no cover - last line of defence
            pass
