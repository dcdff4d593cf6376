"""Generic instrumentation: :func:`counted`, :func:`timed`, :func:`timer`.

(:func:`~mestres_observability.traced` and :func:`~mestres_observability.span`
live in :mod:`mestres_observability.tracing`.)

Metrics are created on the current instance's registry the first time a
decorated function runs, and looked up again after a re-init, so decoration at
import time is safe. Users' own metrics are not namespaced.

* ``counted("checkout")`` counts calls as ``checkout_total``.
* ``timed("checkout_seconds")`` observes durations in a histogram (the name must
  end in ``_seconds``); async functions are timed until their coroutine
  finishes, which prometheus_client's own ``.time()`` does not do.
* ``timer(...)`` is the same as a context manager, ``with`` or ``async with``.

A prometheus_client ``Histogram``/``Summary`` (or a child from ``.labels()``)
may be passed instead of a name to time into your own metric.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._current import get_observability
from ._wrapping import around

if TYPE_CHECKING:  # type-only: the request pass finds the instance through _current
    from .observability import Observability

__all__ = ["counted", "timed", "timer"]

F = TypeVar("F", bound=Callable[..., Any])
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"{what}: {name!r} is not a valid Prometheus metric name")


def _default_name(fn: Callable[..., Any], suffix: str) -> str:
    qual = f"{fn.__module__}_{fn.__qualname__}".replace(".", "_").replace("<locals>", "locals")
    return re.sub(r"[^a-zA-Z0-9_]", "_", qual).strip("_") + suffix


class _MetricRef:
    """Late-bound handle: the metric (child) on the current instance, cached per instance."""

    __slots__ = ("_cached", "_obs", "buckets", "documentation", "kind", "labels", "name")

    def __init__(self, kind: str, name: str, documentation: str,
                 labels: Mapping[str, str] | None, buckets: tuple[float, ...] | None) -> None:
        self.kind = kind
        self.name = name
        self.documentation = documentation
        self.labels = dict(labels or {})
        self.buckets = buckets
        self._obs: Observability | None = None
        self._cached: Any = None

    def get(self, obs: Observability) -> Any:
        if obs is self._obs:
            return self._cached
        names = tuple(self.labels)
        metric = obs.metrics.user_metric(
            self.kind,  # type: ignore[arg-type]
            self.name, self.documentation, names, buckets=self.buckets,
        )
        if names:
            guard = obs.metrics.user_guard(self.name, self.kind)  # type: ignore[arg-type]
            values = tuple(self.labels.values())
            child = guard.child(values) if guard is not None else metric.labels(*values)
        else:
            child = metric
        self._obs, self._cached = obs, child
        return child


class _CountHooks:
    __slots__ = ("ref",)

    def __init__(self, ref: _MetricRef) -> None:
        self.ref = ref

    def start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return None

    def _count(self) -> None:
        obs = get_observability()
        if not obs.config.enabled:
            return
        try:
            self.ref.get(obs).inc()
        except Exception as exc:
            obs.faults.report("instrument", "counted", f"counting {self.ref.name} failed", exc)

    def success(self, state: Any, result: Any) -> None:
        self._count()

    def failure(self, state: Any, exc: BaseException) -> None:
        self._count()


class _TimeHooks:
    __slots__ = ("target",)

    def __init__(self, target: _MetricRef | Any) -> None:
        self.target = target

    def start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return time.perf_counter()

    def _observe(self, started: float) -> None:
        elapsed = time.perf_counter() - started
        _observe(self.target, elapsed)

    def success(self, state: Any, result: Any) -> None:
        self._observe(state)

    def failure(self, state: Any, exc: BaseException) -> None:
        self._observe(state)


def _observe(target: _MetricRef | Any, elapsed: float) -> None:
    obs = get_observability()
    if not obs.config.enabled:
        return
    try:
        metric = target.get(obs) if isinstance(target, _MetricRef) else target
        metric.observe(elapsed)
    except Exception as exc:
        obs.faults.report("instrument", "timed", "recording a duration failed", exc)


@overload
def counted(name: F, /) -> F: ...


@overload
def counted(
    name: str | None = None,
    *,
    labels: Mapping[str, str] | None = None,
    documentation: str = "",
) -> Callable[[F], F]: ...


def counted(
    name: str | Callable[..., Any] | None = None,
    *,
    labels: Mapping[str, str] | None = None,
    documentation: str = "",
) -> Any:
    """Count calls of the decorated function (returned or raised) in a counter.

    Args:
        name: counter name; exposed as ``<name>_total`` (a trailing ``_total`` is
            accepted). Default: derived from the function's module and name.
        labels: static labels, e.g. ``{"channel": "web"}``.
        documentation: HELP text.

    Usable bare (``@counted``) or called (``@counted("checkout")``).
    """
    if callable(name):
        fn = name
        return around(fn, _CountHooks(_MetricRef("counter", _default_name(fn, "_calls"),
                                                 documentation, labels, None)))

    if name is not None:
        _check_name(name, "counted")

    def decorate(fn: F) -> F:
        metric_name = name or _default_name(fn, "_calls")
        return around(fn, _CountHooks(_MetricRef("counter", metric_name, documentation,
                                                 labels, None)))

    return decorate


def _timing_target(name_or_metric: Any, labels: Mapping[str, str] | None, documentation: str,
                   buckets: tuple[float, ...] | None, what: str) -> _MetricRef | Any:
    if isinstance(name_or_metric, str):
        _check_name(name_or_metric, what)
        if not name_or_metric.endswith("_seconds"):
            raise ValueError(
                f"{what}: histogram name {name_or_metric!r} must end in '_seconds' "
                "(Prometheus base unit); e.g. 'checkout_duration_seconds'"
            )
        return _MetricRef("histogram", name_or_metric, documentation, labels, buckets)
    if hasattr(name_or_metric, "observe"):
        if labels:
            return name_or_metric.labels(**labels)
        return name_or_metric
    raise TypeError(f"{what} expects a metric name or a Histogram/Summary, "
                    f"got {type(name_or_metric).__name__}")


def timed(
    name_or_metric: Any,
    *,
    labels: Mapping[str, str] | None = None,
    documentation: str = "",
    buckets: tuple[float, ...] | None = None,
) -> Callable[[F], F]:
    """Observe how long the decorated function takes, in seconds.

    Args:
        name_or_metric: a histogram name ending in ``_seconds`` (created on the
            current instance, default buckets ``http_buckets``), or your own
            prometheus_client ``Histogram``/``Summary``.
        labels: static labels.
        documentation: HELP text.
        buckets: histogram buckets.

    Async functions are timed until their coroutine finishes; generators until
    they are exhausted. A raise is timed too and propagates unchanged.
    """
    target = _timing_target(name_or_metric, labels, documentation, buckets, "timed")

    def decorate(fn: F) -> F:
        return around(fn, _TimeHooks(target))

    return decorate


class timer:
    """Context manager timing a block into a histogram; ``with`` or ``async with``.

    Same arguments as :func:`timed`. The duration is available afterwards as
    :attr:`elapsed` (seconds).

    Example:
        >>> with timer("inventory_check_seconds") as t:
        ...     check_inventory()
    """

    def __init__(
        self,
        name_or_metric: Any,
        *,
        labels: Mapping[str, str] | None = None,
        documentation: str = "",
        buckets: tuple[float, ...] | None = None,
    ) -> None:
        self._target = _timing_target(name_or_metric, labels, documentation, buckets, "timer")
        self._started = 0.0
        self.elapsed: float | None = None

    def __enter__(self) -> timer:
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.elapsed = time.perf_counter() - self._started
        _observe(self._target, self.elapsed)

    async def __aenter__(self) -> timer:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)
