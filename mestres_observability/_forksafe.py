"""Fresh locks and state in a forked child (``gunicorn --preload``).

A lock that another thread of the parent holds at ``fork()`` stays held
forever in the child, whose copy of that thread does not exist; threads,
executors and counts of the parent are not the child's either. Objects
register here the attributes holding their locks (each gets a new lock in
every forked child) and, when they have more to reset, a method to call
there; modules register a function. Owners are held weakly, so registering
never keeps an object alive. Every after-fork action of the library goes
through this module: nothing else calls :func:`os.register_at_fork`.

Order in the child. The interpreter runs ``after_in_child`` hooks in the
order they were registered; this module registers one when it is imported,
before any other module of the library registers anything, and in it:

1. every lock of :func:`renew_locks_after_fork` is renewed, so the steps
   below may take any of them;
2. every :func:`call_after_fork` method runs, in registration order;
3. every :func:`run_after_fork` function runs, in registration order (for
   modules: their import order).

A step that raises does not stop the others. All of this runs before any
fork hook other libraries registered later (the OpenTelemetry SDK's
processors and provider register theirs when they are built). A function
that must run *after* such a hook, seeing what it did, is registered with
``run_after_fork(fn, after_existing=True)``: it gets a hook of its own,
which runs after every hook registered before that call.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["ForkGeneration", "call_after_fork", "fork_generation", "renew_locks_after_fork",
           "run_after_fork"]


class ForkGeneration:
    """How many times this process's line was forked (``n``: 0 in the process that
    imported the library, one more in each forked child, before any other hook runs).

    Hot paths compare ``fork_generation.n`` with the value they saw, an attribute read,
    instead of calling ``os.getpid()``, which is a system call on every call (glibc
    stopped caching it): the SDK's batch processor does that for every span.
    """

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


#: the process's :class:`ForkGeneration`
fork_generation = ForkGeneration()

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


_functions: list[Callable[[], object]] = []
_own_hooks: list[Callable[[], object]] = []


def run_after_fork(fn: Callable[[], object], *, after_existing: bool = False) -> None:
    """Call ``fn()`` in every forked child, after the locks and methods registered here.

    For module-level state (``fn`` is held strongly: a module function, or a
    bound method of a module-level object). Registering the same function
    again does nothing.

    Args:
        fn: what to call; an exception it raises is swallowed (the other
            hooks still run).
        after_existing: run ``fn`` after every fork hook registered in the
            process until now, other libraries' included, instead of in this
            module's shared hook (which runs before them). Each such function
            gets one interpreter hook of its own, so register it once per
            process, not per object.
    """
    if after_existing:
        if fn in _own_hooks:
            return
        _own_hooks.append(fn)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=lambda: _quietly(fn))
        return
    if fn not in _functions:
        _functions.append(fn)


def _quietly(fn: Callable[[], object]) -> None:  # pragma: no cover - runs in forked children
    # one hook's failure must not leave the others as the parent left them
    with contextlib.suppress(Exception):
        fn()


def _after_fork_in_child() -> None:  # pragma: no cover - runs in forked children
    fork_generation.n += 1
    for owner, (attributes, factory) in list(_owners.items()):
        for name in attributes:
            setattr(owner, name, factory())
    for owner, method in list(_calls.items()):
        with contextlib.suppress(Exception):  # as in _quietly
            getattr(owner, method)()
    for fn in list(_functions):
        _quietly(fn)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
