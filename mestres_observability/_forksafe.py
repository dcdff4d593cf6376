"""Fresh locks in a forked child (``gunicorn --preload``).

A lock that another thread of the parent holds at ``fork()`` stays held
forever in the child, whose copy of that thread does not exist. Objects
register the attributes holding their locks here; in each forked child every
registered attribute gets a new :class:`threading.Lock`. Owners are held
weakly, so registering never keeps an object alive.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["renew_locks_after_fork"]

_owners: weakref.WeakKeyDictionary[Any, tuple[tuple[str, ...], Callable[[], Any]]] = (
    weakref.WeakKeyDictionary())


def renew_locks_after_fork(owner: Any, *attributes: str,
                           factory: Callable[[], Any] = threading.Lock) -> None:
    """Give ``owner`` a fresh lock (``factory()``) in each of ``attributes`` in every forked child.

    ``owner`` must support weak references and hash by identity (a module, or
    an object without ``__eq__``; with ``__slots__`` it needs ``"__weakref__"``).
    """
    _owners[owner] = (attributes, factory)


def _after_fork_in_child() -> None:  # pragma: no cover - runs in forked children
    for owner, (attributes, factory) in list(_owners.items()):
        for name in attributes:
            setattr(owner, name, factory())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
