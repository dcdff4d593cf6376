"""Project-wide fixtures. Users get the same ones from ``mestres_observability.testing``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from mestres_observability.testing import obs  # noqa: F401  (re-exported fixture)


@pytest.fixture
def no_sdk_warnings() -> Iterator[None]:
    """The SDK warns about full attribute maps, truncation and calls on ended spans; keep
    the output readable."""
    names = ("opentelemetry.attributes", "opentelemetry.sdk.trace",
             "opentelemetry.exporter.otlp.proto.common._internal", "opentelemetry.trace.status")
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    for logger, _ in saved:
        logger.setLevel(logging.CRITICAL)
    yield
    for logger, level in saved:
        logger.setLevel(level)
