"""Fixtures of the integration tests: throwaway servers from :mod:`tests.servers`."""

from __future__ import annotations

from tests.servers import postgres_server, redis_server  # noqa: F401  (re-exported fixtures)
