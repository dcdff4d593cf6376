"""uvicorn's own log lines as the library's JSON.

From the command line (``--log-config`` takes a file; this module prints the
path of the one it ships)::

    uvicorn app:app --workers 4 --log-config "$(python -m mestres_observability.uvicorn)"

or in code::

    import uvicorn
    from mestres_observability.uvicorn import LOG_CONFIG

    uvicorn.run("app:app", workers=4, log_config=LOG_CONFIG)

uvicorn's start and shutdown lines and the traceback of an unhandled exception
(``Exception in ASGI application``) then come out as one JSON object per line
on standard output, through the same formatter as every other line; uvicorn's
access lines are dropped (the library logs one ``http_request`` line per
request). See :func:`mestres_observability.logs.server_logging_config`. This
module does not import uvicorn.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .logs import server_logging_config

__all__ = ["LOG_CONFIG", "LOG_CONFIG_FILE", "main"]

#: ``log_config=`` for ``uvicorn.run()`` / ``uvicorn.Config`` (a fresh copy per import).
LOG_CONFIG: dict[str, Any] = server_logging_config()

#: The same configuration as a file, for ``uvicorn --log-config`` (shipped with the package).
LOG_CONFIG_FILE: str = str(Path(__file__).with_name("uvicorn_log_config.json"))


def main(argv: list[str] | None = None) -> int:
    """``python -m mestres_observability.uvicorn``: print :data:`LOG_CONFIG_FILE`."""
    print(LOG_CONFIG_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
