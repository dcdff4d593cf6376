"""``python -m mestres_observability``: the ``mestres-observability`` command line."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main(prog_name="mestres-observability")
