"""Fresh locks and state in a forked child (``gunicorn --preload``).

A lock that another thread of the parent holds at ``fork()`` stays held
forever in the child, whose copy of that thread does not exist; threads,
executors and counts of the parent are not the child's either. Objects
register here the attributes holding their locks (each gets a new lock in
every forked child) and, when they have more to reset, a method to call
there. Owners are held weakly, so registering never keeps an object alive.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["call_after_fork", "renew_locks_after_fork"]

_owners: weakref.WeakKeyDictionary[Any, tuple[tuple[str, ...], Callable[[], Any]]] = (
    weakref.WeakKeyDictionary())


def renew_locks_after_fork(owner: Any, *attributes: str,
                           factory: Callable[[], Any] = threading.Lock) -> None:
    """Give ``owner`` a fresh lock (``factory()``) in each of ``attributes`` in every forked child.

    ``owner`` must support weak references and hash by identity (a module, or
    an object without ``__eq__``; with ``__slots__`` it needs ``"__weakref__"``).
    """
    _owners[owner] = (attributes, factory)


_calls: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def call_after_fork(owner: Any, method: str) -> None:
    """Call ``owner.<method>()`` in every forked child, after the registered locks are renewed.

    The method resets what the child must not inherit (its own locks included,
    if it replaces them itself); the same conditions on ``owner`` apply.
    """
    _calls[owner] = method


def _after_fork_in_child() -> None:  # pragma: no cover - runs in forked children
    for owner, (attributes, factory) in list(_owners.items()):
        for name in attributes:
            setattr(owner, name, factory())
    for owner, method in list(_calls.items()):
        # one owner's failure must not leave the others as the parent left them
        with contextlib.suppress(Exception):
            getattr(owner, method)()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
