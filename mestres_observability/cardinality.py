"""Cardinality guard: a bound on distinct label sets per metric.

Label values that come from data (product ids, actions, error types, routes,
browser input) are cleaned (``str()``, invalid Unicode replaced, truncated to
:data:`MAX_LABEL_LENGTH` characters) and counted per metric. Once a metric has
``limit`` distinct label sets, new sets have their data-derived labels replaced
by :data:`OVERFLOW` and ``mestres_observability_label_overflow_total{metric}``
counts them, so the sum over a metric's series still equals what was recorded.
Gauges are never merged (a merged ``inventory_level`` would fire alerts
falsely): their excess is dropped and counted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from ._forksafe import renew_locks_after_fork

__all__ = ["MAX_LABEL_LENGTH", "OVERFLOW", "LabelGuard", "clean_label_value"]

#: Replacement value for data-derived labels past the bound.
OVERFLOW = "<overflow>"
#: Label values are truncated to this many characters.
MAX_LABEL_LENGTH = 128


def clean_label_value(value: object) -> str:
    """Turn any value into a safe label value.

    ``str()`` of the value, lone surrogates and other unencodable code points
    replaced by ``?``, truncated to :data:`MAX_LABEL_LENGTH` characters.
    Raises only if the object's own ``__str__`` raises.
    """
    s = value if type(value) is str else str(value)
    if len(s) > MAX_LABEL_LENGTH:
        s = s[:MAX_LABEL_LENGTH]
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            s = s.encode("utf-8", "replace").decode("utf-8")
    return s


class LabelGuard:
    """Resolves raw label values to a prometheus_client child, within a bound.

    Args:
        metric: the prometheus_client metric with labels.
        name: the metric's base name (used as the ``metric`` label of the
            overflow counter and for per-metric limits).
        labelnames: the label names, in order.
        data_labels: the names of labels whose values come from data; only
            these are replaced by :data:`OVERFLOW`.
        limit: distinct label sets allowed before folding.
        drop_excess: gauges: return ``None`` past the bound instead of folding.
        on_overflow: called once per folded or dropped call (counts it).
    """

    __slots__ = (
        "__weakref__", "_children", "_data_idx", "_drop", "_fast", "_lock", "_metric",
        "_on_overflow", "labelnames", "limit", "name",
    )

    def __init__(
        self,
        metric: Any,
        name: str,
        labelnames: Sequence[str],
        data_labels: Sequence[str],
        limit: int,
        *,
        drop_excess: bool = False,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        self._metric = metric
        self.name = name
        self.labelnames = tuple(labelnames)
        self._data_idx = tuple(i for i, n in enumerate(self.labelnames) if n in set(data_labels))
        self.limit = limit
        self._drop = drop_excess
        self._on_overflow = on_overflow
        self._children: dict[tuple[str, ...], Any] = {}
        # raw (hashable) input tuple -> child; bounded so it cannot grow with input
        self._fast: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")  # gunicorn --preload: fresh in a forked child

    @property
    def series_count(self) -> int:
        """Distinct label sets currently held (overflow sets included)."""
        return len(self._children)

    def child(self, values: tuple[Any, ...]) -> Any | None:
        """The child for ``values``; ``None`` for a gauge past its bound.

        Raises only if a value's ``__str__`` raises (callers count that).
        """
        try:
            return self._fast[values]
        except KeyError:
            pass
        except TypeError:  # unhashable raw value: take the slow path, no caching
            return self._resolve(tuple(clean_label_value(v) for v in values), None)
        cleaned = tuple(clean_label_value(v) for v in values)
        return self._resolve(cleaned, values)

    def settled(self, values: tuple[Any, ...]) -> bool:
        """True when ``values`` resolved to their own child within the bound (not folded
        or dropped): every later :meth:`child` call with them returns that child and
        counts nothing, so a caller may keep it."""
        try:
            return values in self._fast
        except TypeError:  # unhashable
            return False

    def _resolve(self, cleaned: tuple[str, ...], raw: tuple[Any, ...] | None) -> Any | None:
        child = self._children.get(cleaned)
        overflowed = False
        if child is None:
            with self._lock:
                child = self._children.get(cleaned)
                if child is None:
                    if len(self._children) < self.limit:
                        child = self._metric.labels(*cleaned)
                        self._children[cleaned] = child
                    elif self._drop:
                        overflowed = True
                    else:
                        folded = tuple(
                            OVERFLOW if i in self._data_idx else v for i, v in enumerate(cleaned)
                        )
                        child = self._children.get(folded)
                        if child is None:
                            child = self._metric.labels(*folded)
                            self._children[folded] = child
                        overflowed = True
        if overflowed:
            if self._on_overflow is not None:
                self._on_overflow()
            return None if self._drop else child
        if (
            raw is not None
            and len(self._fast) < 4 * self.limit
            and all(type(v) is str for v in raw)  # 1 == True == 1.0: cache str keys only
        ):
            self._fast[raw] = child
        return child
