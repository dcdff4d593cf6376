"""Helpers for testing code instrumented with mestres-observability.

Example (pytest)::

    from mestres_observability.testing import fresh_observability, sample_value

    def test_checkout_counts_order():
        with fresh_observability() as obs:
            checkout(cart)
            assert sample_value("orders_total", status="paid") == 1

The ``obs`` pytest fixture does the same: add
``from mestres_observability.testing import obs`` to your ``conftest.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from . import _current
from . import observability as _observability
from .config import ObservabilityConfig
from .observability import Observability, get_observability

__all__ = [
    "CapturedSpans", "capture_logs", "captured_spans", "fresh_observability", "obs", "reset",
    "sample_value",
]

_SUFFIXES = ("", "_total", "_created", "_bucket", "_count", "_sum", "_gcount", "_gsum", "_info")


@contextlib.contextmanager
def fresh_observability(**settings: Any) -> Iterator[Observability]:
    """An isolated, current :class:`Observability` for the duration of the block.

    Built from ``ObservabilityConfig(**settings)`` (the environment is not
    read). Logging is left unconfigured unless ``configure_logging=True`` is
    passed. The previous current instance is suspended, not retired: it keeps
    its span pipeline and health checks, and afterwards it is current again
    and exports its spans as before.
    """
    settings.setdefault("configure_logging", False)
    previous = get_observability()
    instance = _observability._start(ObservabilityConfig(**settings), suspend_previous=True)
    try:
        yield instance
    finally:
        instance.shutdown(timeout=1.0)
        with _current.lock:
            # an init_observability() inside the block replaced ``instance``: retire that one too
            latest = _current.swap(previous)
            if latest is not None and latest is not instance and latest is not previous:
                latest._retire()


def reset() -> Observability:
    """Replace the current instance with a fresh default one (built-in defaults) and return it."""
    instance = Observability(ObservabilityConfig(), install_globals=False)
    _current.swap(instance)
    return instance


def sample_value(name: str, obs: Observability | None = None, /, **labels: str) -> float:
    """The value of one exposed sample, as a test wants it.

    Args:
        name: the exposed sample name (``orders_total``, ``order_value_count``,
            ``http_request_duration_seconds_bucket`` ...), namespace included.
        obs: the instance to read (default: the current one).
        **labels: the sample's labels, exactly (``le="0.5"`` for a bucket).

    Returns:
        The value, or ``0.0`` when the family exists but these labels were never seen.

    Raises:
        KeyError: no family exposes a sample called ``name``.
    """
    instance = obs if obs is not None else get_observability()
    wanted = {k: str(v) for k, v in labels.items()}
    known = False
    for source in instance.metric_sources():
        for family in source.collect():
            if not any(name == family.name + s for s in _SUFFIXES):
                continue
            known = True
            for sample in family.samples:
                if sample.name == name and sample.labels == wanted:
                    return float(sample.value)
    if not known:
        raise KeyError(f"no metric exposes a sample named {name!r}")
    return 0.0


try:  # the fixture exists only where pytest is installed
    import pytest

    @pytest.fixture
    def obs() -> Iterator[Observability]:
        """pytest fixture: a fresh, current :class:`Observability`, restored afterwards."""
        with fresh_observability() as instance:
            yield instance

except ImportError:  # pragma: no cover
    pass


@contextlib.contextmanager
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """Capture the log events emitted in the block, as the processed dicts.

    Each entry is what would be rendered: ``event``, ``level``, ``logger``,
    ``service``, ``timestamp``, ``trace_id``/``span_id`` when a span was current,
    bound context fields, with redaction and truncation applied. Works whether or
    not the library configured logging (when it did, lines are still written).

    Example:
        >>> with capture_logs() as events:
        ...     log_event("order_created", order_id="o-1")  # doctest: +SKIP
        >>> events[0]["event"]  # doctest: +SKIP
        'order_created'
    """
    from .logs import _capture

    with _capture(get_observability().config) as sink:
        yield sink


class CapturedSpans:
    """Finished spans collected by :func:`captured_spans` (an OpenTelemetry in-memory exporter)."""

    def __init__(self, exporter: Any) -> None:
        self.exporter = exporter

    @property
    def spans(self) -> list[Any]:
        """Finished spans (``ReadableSpan``), in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def names(self) -> list[str]:
        """Names of the finished spans, in the order they ended."""
        return [s.name for s in self.spans]

    def by_name(self, name: str) -> Any:
        """The first finished span called ``name``; ``KeyError`` when there is none."""
        for s in self.spans:
            if s.name == name:
                return s
        raise KeyError(f"no finished span named {name!r}; have {self.names()}")

    def clear(self) -> None:
        """Forget the spans collected so far."""
        self.exporter.clear()


@contextlib.contextmanager
def captured_spans() -> Iterator[CapturedSpans]:
    """Collect the spans that end in the block (synchronously, nothing exported).

    Needs the library's tracer provider, which the first
    :func:`~mestres_observability.init_observability` installs: use it inside
    :func:`fresh_observability` or with the ``obs`` fixture.

    Example:
        >>> with fresh_observability(), captured_spans() as spans:  # doctest: +SKIP
        ...     checkout(cart)
        ...     assert spans.by_name("process_order").status.is_ok
    """
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from .tracing import attach_processor

    exporter = InMemorySpanExporter()
    detach = attach_processor(SimpleSpanProcessor(exporter))
    try:
        yield CapturedSpans(exporter)
    finally:
        detach()

