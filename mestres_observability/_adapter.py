"""What every framework adapter shares besides translating requests: set-up and the user-id resolver.

The Flask, Starlette/FastAPI and Django adapters call :func:`setup` once when
they are wired (it validates the HTTP settings, warns once when ``/metrics``
is served unprotected on the app or when the app runs under gunicorn or
``uvicorn --workers N`` without multiprocess mode, and starts the separate
metrics port when one is configured) and :func:`resolve_user_id` at the end of
each request that has a user-id resolver.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._compat import uvicorn_worker_count
from ._current import get_observability
from ._metrics_server import start_metrics_server
from .http import http_state, warn_unprotected_metrics
from .multiprocess import ENV_VAR, is_multiprocess

if TYPE_CHECKING:  # type-only
    from ._fault import FaultReporter
    from .observability import Observability

__all__ = ["resolve_user_id", "setup", "warn_single_process_under_gunicorn",
           "warn_single_process_under_uvicorn_workers"]

_log = logging.getLogger("mestres_observability")
_warned_gunicorn = [False]
_warned_uvicorn = [False]


def warn_single_process_under_gunicorn() -> bool:
    """Log once per process when gunicorn runs the app without multiprocess mode.

    gunicorn names itself in ``SERVER_SOFTWARE`` (``gunicorn/<version>``) in the
    master and every worker. Without multiprocess mode each worker keeps its
    own counts and a scrape reads whichever worker answers it: totals jump
    between scrapes and ``rate()`` sees resets. Returns whether it warned.
    """
    if _warned_gunicorn[0] or not os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/"):
        return False
    if is_multiprocess():
        return False
    _warned_gunicorn[0] = True
    _log.warning(
        "running under gunicorn without multiprocess mode: with more than one worker each "
        "scrape of /metrics reads only the worker that answers it (totals jump, rate() sees "
        "resets). Start gunicorn with the library's config (gunicorn -c "
        "python:mestres_observability.gunicorn ...) or set %s before the app is imported.",
        ENV_VAR,
    )
    return True


def warn_single_process_under_uvicorn_workers() -> bool:
    """Log once per process when ``uvicorn --workers N`` (N > 1) runs the app without
    multiprocess mode.

    uvicorn sets nothing in its workers' environment; a worker is recognised by how
    uvicorn starts it (see :func:`~mestres_observability._compat.uvicorn_worker_count`).
    Each worker then keeps its own counts and a scrape reads whichever worker
    answers it, as under gunicorn. Returns whether it warned.
    """
    if _warned_uvicorn[0] or is_multiprocess():
        return False
    workers = uvicorn_worker_count()
    if workers is None:
        return False
    _warned_uvicorn[0] = True
    _log.warning(
        "running under uvicorn --workers %d without multiprocess mode: each scrape of "
        "/metrics reads only the worker that answers it (totals jump, rate() sees resets). "
        "Set %s to a directory prepared with "
        "mestres_observability.multiprocess.prepare_directory() before starting uvicorn.",
        workers, ENV_VAR,
    )
    return True


def setup(obs: Observability | None, where: str) -> Observability:
    """Set-up shared by the adapters; ``where`` names the framework in the warning.

    Raises:
        ConfigurationError: a setting the HTTP pass needs is unusable (at set-up, never later).
    """
    instance = obs if obs is not None else get_observability()
    http_state(instance)  # validates trusted_proxies & co. at set-up
    warn_unprotected_metrics(instance, where)
    warn_single_process_under_gunicorn()
    warn_single_process_under_uvicorn_workers()
    if instance.config.metrics_port is not None:
        start_metrics_server(instance)
    return instance


def resolve_user_id(resolver: Callable[[Any], Any], request: Any, faults: FaultReporter) -> Any:
    """``resolver(request)``, or ``None`` when it raises (the fault is counted, never raised)."""
    try:
        return resolver(request)
    except Exception as exc:
        faults.report("http", "user_id_resolver", "user_id_resolver failed", exc)
        return None
