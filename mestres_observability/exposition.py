"""Framework-agnostic ``/metrics`` rendering with content negotiation.

:func:`render_metrics` takes the request's ``Accept`` and ``Accept-Encoding``
headers and returns ``(status, headers, body)``: OpenMetrics 1.0 when the
scraper asks for it (Prometheus does, and only that format carries exemplars),
Prometheus text 0.0.4 otherwise, gzip-compressed when accepted. Adapters only
translate that triple into their framework's response.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import generate_latest as _text_latest
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import generate_latest as _om_latest

from ._endpoint import GZIP, Offer, Response
from ._endpoint import negotiate as _negotiate
from ._fault import FaultReporter

__all__ = [
    "OPENMETRICS_CONTENT_TYPE",
    "TEXT_CONTENT_TYPE",
    "MetricsResponse",
    "negotiate",
    "render_metrics",
]

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_OM_VERSIONS = ("", "1.0.0", "0.0.1")


class _Collectable(Protocol):
    def collect(self) -> Iterable[Any]: ...


MetricsResponse = Response
"""What an adapter sends back for ``/metrics``.

The endpoint layer's response, a named tuple ``(status, headers, body)``.
"""

#: OpenMetrics 1.0 (the versions Prometheus asks for), only when asked for by name.
_OPENMETRICS = Offer(frozenset({"application/openmetrics-text"}),
                     {"version": frozenset(_OM_VERSIONS)}, wildcard=False)
_TEXT = Offer(frozenset({"text/plain"}))
_OFFERS = (_OPENMETRICS, _TEXT)  # a tie goes to OpenMetrics


def negotiate(accept: str | None) -> bool:
    """True when the ``Accept`` header prefers OpenMetrics 1.0 over text 0.0.4."""
    return _negotiate(accept, _OFFERS) is _OPENMETRICS


def _accepts_gzip(accept_encoding: str | None) -> bool:
    return _negotiate(accept_encoding, (GZIP,), limit=1024) is GZIP


class _View:
    """Several collectables seen as one, optionally without ``*_created`` samples."""

    def __init__(self, sources: Iterable[_Collectable], created: bool) -> None:
        self._sources = list(sources)
        self._created = created

    def collect(self) -> Iterator[Any]:
        for source in self._sources:
            for family in source.collect():
                if not self._created and family.type in ("counter", "histogram", "summary"):
                    family.samples = [s for s in family.samples if not s.name.endswith("_created")]
                yield family


def render_metrics(
    sources: Iterable[_Collectable],
    accept: str | None = None,
    accept_encoding: str | None = None,
    *,
    created: bool = True,
    faults: FaultReporter | None = None,
) -> MetricsResponse:
    """Render the metrics of ``sources`` (registries or collectors) for one scrape.

    Args:
        sources: registries (or anything with ``collect()``), exposed together.
        accept: the request's ``Accept`` header.
        accept_encoding: the request's ``Accept-Encoding`` header.
        created: include the ``*_created`` series.
        faults: where to count a failed collection.

    Returns:
        A :class:`MetricsResponse`. A collection failure gives a generic 500
        body (no traceback) and is counted under ``component="exposition"``.
    """
    openmetrics = negotiate(accept)
    view = _View(sources, created)
    try:
        if openmetrics:
            body = _om_latest(view)  # type: ignore[no-untyped-call]
            ctype = OPENMETRICS_CONTENT_TYPE
        else:
            body = _text_latest(view)  # type: ignore[arg-type,unused-ignore]
            ctype = TEXT_CONTENT_TYPE
    except Exception as exc:
        if faults is not None:
            faults.report("exposition", type(exc).__name__, "metrics collection failed", exc)
        return MetricsResponse(
            500,
            [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")],
            b"metrics collection failed\n",
        )
    headers = [("Content-Type", ctype), ("Cache-Control", "no-store"), ("Vary", "Accept, Accept-Encoding")]
    if _accepts_gzip(accept_encoding):
        body = gzip.compress(body, compresslevel=5)
        headers.append(("Content-Encoding", "gzip"))
    headers.append(("Content-Length", str(len(body))))
    return MetricsResponse(200, headers, body)
