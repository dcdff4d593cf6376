"""gunicorn configuration for several workers: ``gunicorn -c python:mestres_observability.gunicorn app:app``.

Importing this module (gunicorn does it in the master, before ``--preload``
imports the application) makes sure prometheus_client's multiprocess mode is on
and its directory is clean:

* ``PROMETHEUS_MULTIPROC_DIR`` set: the directory is created (mode 0700) or
  emptied safely (only the files this mode writes; symlinks never followed).
* unset: a private directory is made with :func:`tempfile.mkdtemp` (mode 0700,
  unpredictable name: never a shared ``/tmp`` path) and removed at exit.

The hooks below do the rest. Use the module as is, or import the hooks into
your own config file::

    # gunicorn.conf.py
    from mestres_observability.gunicorn import (  # noqa: F401
        child_exit, logconfig_dict, on_exit, on_starting, post_fork, when_ready, worker_exit,
    )
    workers = 4
    max_requests = 1000

* :func:`on_starting` gives the directory to gunicorn's ``user``/``group`` when
  the master runs as root;
* :func:`child_exit` merges a dead worker's files into the archives so scrapes
  stay fast however many workers are recycled (``max_requests``);
* :func:`when_ready` starts the separate ``/metrics`` listener in the master
  when ``MESTRES_OBS_METRICS_PORT`` is set (one port, every worker's totals);
* :func:`post_fork` registers each worker so siblings can tell it is alive;
* :func:`worker_exit` shuts the worker's instance down on its way out:
  readiness turns 503 (draining), queued spans are flushed within
  ``shutdown_timeout``;
* :data:`logconfig_dict` writes gunicorn's own lines (start, worker boot and
  exit, tracebacks) as the library's JSON on standard output (import it into
  your own config file too, or leave it out to keep gunicorn's text lines).
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import shutil
import tempfile
from typing import Any

from . import multiprocess as _mp
from .logs import server_logging_config as _server_logging_config

__all__ = ["child_exit", "logconfig_dict", "on_exit", "on_starting", "post_fork", "prepare",
           "when_ready", "worker_exit"]

_log = logging.getLogger("mestres_observability")
_temporary_dir: str | None = None
_prepared_in: int | None = None


def prepare() -> str:
    """Set up the multiprocess directory once per master process; returns its path.

    Runs when this module is imported. Raises
    :class:`~mestres_observability.errors.ConfigurationError` for an unusable
    directory (symlink, owned by another user and world-writable).
    """
    global _temporary_dir, _prepared_in
    path = _mp.multiprocess_dir()
    if _prepared_in == os.getpid() and path:
        return path
    if not path:
        path = tempfile.mkdtemp(prefix="mestres-obs-metrics-")
        _temporary_dir = path
        os.environ[_mp.ENV_VAR] = path
        atexit.register(_remove_temporary_dir)
    else:
        _mp.prepare_directory(path, wipe=True)
    _prepared_in = os.getpid()
    if not _mp.is_multiprocess():
        # importing this package imported prometheus_client before the variable could be
        # set; no metric value exists yet, so switch the value class now
        from ._compat import use_multiprocess_values

        use_multiprocess_values()
    return path


def _remove_temporary_dir() -> None:
    global _temporary_dir
    if _temporary_dir is not None and _prepared_in == os.getpid():
        shutil.rmtree(_temporary_dir, ignore_errors=True)
        _temporary_dir = None


def on_starting(server: Any) -> None:
    """gunicorn hook (master, before workers): prepare the directory, hand it to ``user``."""
    path = prepare()
    uid = getattr(server.cfg, "uid", None)
    gid = getattr(server.cfg, "gid", None)
    if os.geteuid() == 0 and (uid, gid) != (os.geteuid(), os.getegid()):
        _mp.prepare_directory(path, wipe=False, uid=uid, gid=gid)


def when_ready(server: Any) -> None:
    """gunicorn hook (master, listening): start the separate metrics port if configured.

    With several workers a separate port belongs to the master: workers are
    forked from it, close their copy of the listening socket and never bind
    the port themselves. If the port is still taken (say, by the previous
    master during a restart), the master stands by and retries instead of
    failing (see :mod:`mestres_observability._metrics_server`).
    """
    from .config import ObservabilityConfig

    config = ObservabilityConfig.from_env()
    if config.metrics_port is None:
        return
    from . import _current
    from ._metrics_server import start_metrics_server
    from .observability import Observability

    with _current.lock:
        current = _current.get_observability()
        if current.is_default:  # no preloaded app: serve with the environment's settings
            current = Observability(config, install_globals=False)
            _current.swap(current)
    address = start_metrics_server(current)
    if address is not None:
        server.log.info("mestres_observability: /metrics for all workers on %s:%s", *address)


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn hook (each new worker): leave the liveness marker siblings check."""
    _mp.register_process()


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn hook (each worker, on its way out): drain, then flush.

    Calls ``shutdown()`` on the worker's current instance: readiness answers
    503 from then on, and the spans still queued are exported within
    ``shutdown_timeout`` instead of being lost with the process. Never raises.
    """
    try:
        from .observability import get_observability

        get_observability().shutdown()
    except Exception:  # never break gunicorn's worker exit
        _log.exception("mestres_observability: shutting down worker %s failed",
                       getattr(worker, "pid", "?"))


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn hook (master, a worker exited): merge and remove its metric files."""
    try:
        _mp.mark_process_dead(worker.pid)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            _log.exception("mestres_observability: cleaning up worker %s failed", worker.pid)
        else:  # a full PROMETHEUS_MULTIPROC_DIR: an expected condition, no traceback
            _log.warning("mestres_observability: worker %s's metric files are kept unmerged: "
                         "the multiprocess directory is full (%s); scrapes still read them",
                         worker.pid, exc.strerror)
    except Exception:  # never take the master down over metrics
        _log.exception("mestres_observability: cleaning up worker %s failed", worker.pid)


def on_exit(server: Any) -> None:
    """gunicorn hook (master, exiting): remove the directory if this module created it."""
    _remove_temporary_dir()


#: gunicorn setting: gunicorn's own lines (start, worker boot and exit, tracebacks) and the
#: root logger's as the library's JSON on standard output; gunicorn's access lines dropped
#: (the library logs one ``http_request`` line per request). See
#: :func:`mestres_observability.logs.server_logging_config`.
logconfig_dict: dict[str, Any] = _server_logging_config()

prepare()
