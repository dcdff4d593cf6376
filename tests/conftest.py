"""Project-wide fixtures. Users get the same ones from ``mestres_observability.testing``."""

from __future__ import annotations

from mestres_observability.testing import obs  # noqa: F401  (re-exported fixture)
