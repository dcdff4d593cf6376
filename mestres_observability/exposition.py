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
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import generate_latest as _text_latest
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import generate_latest as _om_latest

from ._fault import FaultReporter

__all__ = [
    "OPENMETRICS_CONTENT_TYPE",
    "TEXT_CONTENT_TYPE",
    "MetricsResponse",
    "negotiate",
    "render_metrics",
]

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_OM_VERSIONS = {"", "1.0.0", "0.0.1"}


class _Collectable(Protocol):
    def collect(self) -> Iterable[Any]: ...


@dataclass(frozen=True)
class MetricsResponse:
    """What an adapter sends back for ``/metrics``."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _media_ranges(header: str) -> Iterator[tuple[str, dict[str, str], float]]:
    for part in header.split(","):
        pieces = [p.strip() for p in part.split(";")]
        media = pieces[0].lower()
        if not media:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for p in pieces[1:]:
            k, _, v = p.partition("=")
            k = k.strip().lower()
            v = v.strip().strip('"')
            if k == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:
                    q = 0.0
            else:
                params[k] = v
        yield media, params, q


def negotiate(accept: str | None) -> bool:
    """True when the ``Accept`` header prefers OpenMetrics 1.0 over text 0.0.4."""
    if not accept:
        return False
    best_om = 0.0
    best_text = 0.0
    for media, params, q in _media_ranges(accept[:4096]):
        if media == "application/openmetrics-text" and params.get("version", "") in _OM_VERSIONS:
            best_om = max(best_om, q)
        elif media in ("text/plain", "text/*", "*/*"):
            best_text = max(best_text, q)
    return best_om > 0.0 and best_om >= best_text


def _accepts_gzip(accept_encoding: str | None) -> bool:
    if not accept_encoding:
        return False
    for media, _params, q in _media_ranges(accept_encoding[:1024]):
        if media in ("gzip", "x-gzip") and q > 0.0:
            return True
    return False


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
