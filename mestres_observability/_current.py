"""The current :class:`~mestres_observability.Observability` instance, in one place.

One instance is *current* at any time; the request pass, the business and
generic decorators, tracing and health find it here, at call time (bind
late), without importing the public face (:mod:`mestres_observability.observability`).

* :func:`get_observability` returns it; the first call before any
  ``init_observability`` builds the default instance through the factory the
  face registered (:func:`set_default_factory`).
* :func:`swap` makes another instance current and *activates* it: it calls the
  instance's ``_activate()``, which re-points the process-wide parts (the
  tracer provider's span pipeline, the log output's service name, redaction
  and fault counter) at that instance. :func:`swap` neither shuts down nor
  retires the previous instance: callers decide (``init_observability``
  retires it, ``testing.fresh_observability`` suspends and later restores it).
* :data:`lock` serialises every change of the current instance (re-entrant:
  building an instance may look the current one up). It is renewed in forked
  children through :mod:`mestres_observability._forksafe`.

This module is a foundation: it imports nothing of the package at run time.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._forksafe import renew_locks_after_fork

if TYPE_CHECKING:  # type-only: the holder never imports the face at run time
    from .observability import Observability

__all__ = ["get_observability", "lock", "peek", "set_default_factory", "swap"]

_current: Observability | None = None
_factory: Callable[[], Observability] | None = None

#: Held while the current instance changes (re-entrant).
lock = threading.RLock()
renew_locks_after_fork(sys.modules[__name__], "lock", factory=threading.RLock)


def set_default_factory(factory: Callable[[], Observability]) -> None:
    """Register how the default instance is built (the face does, at import)."""
    global _factory
    _factory = factory


def get_observability() -> Observability:
    """The current instance; the default one (built-in defaults) before any init."""
    obs = _current
    if obs is not None:
        return obs
    with lock:
        if _current is None:
            if _factory is None:  # pragma: no cover - the package __init__ imports the face
                raise RuntimeError("mestres_observability.observability was never imported")
            swap(_factory())
        assert _current is not None
        return _current


def peek() -> Observability | None:
    """The current instance, or ``None`` when none was built yet (never builds one)."""
    return _current


def swap(new: Observability) -> Observability | None:
    """Make ``new`` current and activate it; return the previous instance (or ``None``).

    The previous instance is left as it is (not shut down, not retired).
    """
    global _current
    with lock:
        previous = _current
        _current = new
        if previous is not new:
            new._activate()
        return previous
