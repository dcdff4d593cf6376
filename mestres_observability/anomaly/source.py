"""Range queries against Prometheus' HTTP API, standard library only.

:class:`PrometheusSource` asks ``/api/v1/query_range`` for one query over a
time range at one step, in chunks of at most ``max_points`` points per series
(Prometheus refuses more than 11,000), and returns each series on the same
grid of timestamps (``start`` aligned down to a multiple of the step), with
``NaN`` where Prometheus has no sample: a gap stays a gap (the seed turned it
into a zero). Errors say what went wrong: :class:`PrometheusUnreachable`
(connection refused, DNS, timeout), :class:`BadQuery` (Prometheus refused the
PromQL), :class:`EmptyResult` (no series in the range), and
:class:`PrometheusError` for anything else the server answered.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ObservabilityError

__all__ = ["BadQuery", "EmptyResult", "PrometheusError", "PrometheusSource", "PrometheusUnreachable",
           "Series"]

#: Prometheus refuses range queries of more than 11,000 points per series.
MAX_POINTS = 11_000


class PrometheusError(ObservabilityError, RuntimeError):
    """Prometheus could not answer a query (the message says why)."""


class PrometheusUnreachable(PrometheusError):
    """No answer from the Prometheus server (refused, unknown host, timeout)."""


class BadQuery(PrometheusError, ValueError):
    """Prometheus refused the PromQL expression or its parameters."""


class EmptyResult(PrometheusError):
    """The query matched no series in the range."""


@dataclass(frozen=True)
class Series:
    """One series of a range query, on the query's time grid.

    Attributes:
        labels: its label set (``__name__`` included when the result has one).
        timestamps: Unix seconds, ``start, start + step, ...`` up to ``end``.
        values: one per timestamp; ``NaN`` where Prometheus has no sample.
    """

    labels: dict[str, str]
    timestamps: list[float]
    values: list[float] = field(repr=False)

    def name(self, alias: str = "") -> str:
        """A readable name: ``alias`` (or ``__name__``) with the other labels in braces."""
        base = alias or self.labels.get("__name__", "")
        rest = {k: v for k, v in sorted(self.labels.items()) if k != "__name__"}
        if not rest:
            return base or "{}"
        inner = ",".join(f'{k}="{v}"' for k, v in rest.items())
        return f"{base}{{{inner}}}"

    @property
    def missing(self) -> int:
        """How many points of the grid have no sample."""
        return sum(1 for v in self.values if math.isnan(v))


def _parse_value(text: str) -> float:
    return float(text)  # Prometheus writes NaN, +Inf and -Inf as strings float() reads


class PrometheusSource:
    """A Prometheus server's range-query API.

    Args:
        url: the server's base address (``http://prometheus:9090``).
        timeout: seconds to wait for each HTTP request.
        max_points: points per series per request (chunk size).
        headers: extra HTTP headers (``Authorization`` for a proxy in front).
    """

    def __init__(self, url: str, *, timeout: float = 30.0, max_points: int = MAX_POINTS,
                 headers: Mapping[str, str] | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"Prometheus address must be http(s)://host:port, not {url!r}")
        if not 1 <= max_points <= MAX_POINTS:
            raise ValueError(f"max_points must be between 1 and {MAX_POINTS}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.max_points = max_points
        self.headers = dict(headers or {})

    def _get(self, path: str, params: Mapping[str, str]) -> Any:
        address = f"{self.url}{path}"
        body = urllib.parse.urlencode(params).encode()
        request = urllib.request.Request(
            address, data=body, method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded",
                     "Accept": "application/json", **self.headers})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            detail = _error_text(raw) or exc.reason
            if exc.code in (400, 422):
                raise BadQuery(f"Prometheus at {self.url} refused the query "
                               f"{params.get('query', '')!r}: {detail}") from None
            raise PrometheusError(f"Prometheus at {self.url} answered HTTP {exc.code} to "
                                  f"{path}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PrometheusUnreachable(
                f"cannot reach Prometheus at {self.url} ({reason}); check --prometheus and "
                f"that the server is up") from None
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise PrometheusError(f"{address} did not answer with JSON: is it Prometheus?") from None
        if not isinstance(data, dict) or data.get("status") != "success":
            raise PrometheusError(f"Prometheus at {self.url}: {_error_text(raw) or 'no success status'}")
        return data["data"]

    def query_range(self, query: str, start: float, end: float, step: float, *,
                    allow_empty: bool = False) -> list[Series]:
        """Every series of ``query`` from ``start`` to ``end`` (Unix seconds) at ``step`` seconds.

        Raises:
            BadQuery: Prometheus refused the query (or ``end`` is before ``start``).
            EmptyResult: no series in the range (unless ``allow_empty``).
            PrometheusUnreachable: no answer from the server.
            PrometheusError: another error answered by the server.
        """
        if step <= 0:
            raise BadQuery(f"step must be positive, not {step!r}")
        if end < start:
            raise BadQuery(f"the range ends ({end}) before it starts ({start})")
        first = math.floor(start / step) * step
        n = int((end - first) // step) + 1
        grid = [first + i * step for i in range(n)]
        found: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], list[float]]] = {}
        chunk = self.max_points
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk) - 1
            data = self._get("/api/v1/query_range", {
                "query": query, "start": _fmt(grid[lo]), "end": _fmt(grid[hi]), "step": _fmt(step),
                "timeout": f"{max(1, int(self.timeout))}s"})
            if data.get("resultType") != "matrix":
                raise BadQuery(f"the query {query!r} does not give a range vector "
                               f"(result type {data.get('resultType')!r})")
            for item in data.get("result", []):
                labels = {str(k): str(v) for k, v in item.get("metric", {}).items()}
                key = tuple(sorted(labels.items()))
                if key not in found:
                    found[key] = (labels, [math.nan] * n)
                values = found[key][1]
                for ts, text in item.get("values", []):
                    i = round((float(ts) - first) / step)
                    if 0 <= i < n:
                        values[i] = _parse_value(text)
        if not found and not allow_empty:
            raise EmptyResult(f"the query {query!r} matched no series between {_fmt(start)} and "
                              f"{_fmt(end)} on {self.url}")
        return [Series(labels, list(grid), values) for labels, values in found.values()]


def _fmt(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")


def _error_text(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return raw[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        return f"{data.get('errorType', 'error')}: {data.get('error', '')}".strip()
    return ""
