"""Browser real-user monitoring: the snippet, its ingestion endpoint and the ``rum_*`` metrics.

With ``rum_enabled=True`` every adapter serves two endpoint kinds, declared
here through the endpoint layer:

* ``rum_script`` at ``rum_script_path`` (``/observability/rum.js``): the
  dependency-free snippet shipped as package data (``static/rum.js``, also a
  file to copy into a bundle), with the endpoint and sample rate of the
  settings filled in;
* ``rum`` at ``rum_path`` (``POST /api/v1/metrics``): validates what browsers
  send and turns it into Prometheus histograms and counters (Web Vitals,
  navigation phases, resources, JavaScript errors, business events), with the
  page's trace id as exemplar, and JavaScript errors into ``browser_error``
  log lines. Requests to it are counted in the HTTP metrics under their own
  route, without a SERVER span or an access-log line unless
  ``rum_server_spans`` / ``rum_access_log`` say so.

Embed the snippet with :func:`script_tag` (or write the tag yourself)::

    <script src="/observability/rum.js" data-endpoint="/api/v1/metrics" async></script>

Rate limits, de-duplication of repeated reports and exemplars are per worker
process. See ``docs/rum.md``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._endpoint import CorsPolicy, EndpointKind, Fault, Response, register_endpoint
from ._ingest import PageGroups, RumState, aingest, ingest, rum_state
from ._schema import EVENT_REASONS, REQUEST_REASONS, TYPES
from ._script import script_source, script_text, serve_script

if TYPE_CHECKING:
    from ..observability import Observability

__all__ = [
    "INGEST_ENDPOINT", "REASONS", "SCHEMA_FILE", "SCRIPT_ENDPOINT", "SCRIPT_FILE", "TYPES",
    "PageGroups", "RumState", "rum_state", "script_source", "script_tag", "script_text",
]

#: The snippet as shipped (copy it into a bundle, or let the adapters serve it).
SCRIPT_FILE = Path(__file__).resolve().parent / "static" / "rum.js"
#: The JSON Schema of the ingestion payload (published in the docs too).
SCHEMA_FILE = Path(__file__).resolve().parent / "static" / "payload.schema.json"
#: Every ``reason`` of ``rum_events_rejected_total``.
REASONS: tuple[str, ...] = REQUEST_REASONS + EVENT_REASONS


def _when_on(setting: str) -> Any:
    return lambda cfg: (getattr(cfg, setting),) if cfg.rum_enabled else ()


_RUM_FAULT = Fault("rum_endpoint", "RUM ingestion failed", Response(
    500, [("Content-Type", "application/json"), ("Cache-Control", "no-store"),
          ("X-Content-Type-Options", "nosniff")], b'{"error": "internal"}'), component="http")

#: ``GET``/``HEAD`` of the snippet at ``rum_script_path`` (with ``rum_enabled``).
SCRIPT_ENDPOINT = register_endpoint(EndpointKind(
    "rum_script", _when_on("rum_script_path"), serve_script, route_name="rum-script",
    fault=Fault("rum_script", "serving the RUM snippet failed")))

#: ``POST`` of browser reports at ``rum_path`` (with ``rum_enabled``).
INGEST_ENDPOINT = register_endpoint(EndpointKind(
    "rum", _when_on("rum_path"), ingest, aingest, methods=("POST",),
    cors=lambda cfg: CorsPolicy(frozenset(cfg.rum_allowed_origins), headers=("Content-Type",),
                                expose=("Retry-After",)),
    max_body=lambda cfg: cfg.rum_max_body, fault=_RUM_FAULT,
    measured=lambda cfg: (cfg.rum_server_spans, cfg.rum_access_log)))


def script_tag(obs: Observability | None = None, *, sample_rate: float | None = None,
               defer: bool = False) -> str:
    """The ``<script>`` tag that loads the snippet, for a page template.

    Args:
        obs: the instance whose paths to use (default: the current one).
        sample_rate: ``data-sample-rate`` for this page (default: the setting).
        defer: ``defer`` instead of ``async``.

    Example:
        >>> script_tag()  # doctest: +SKIP
        '<script src="/observability/rum.js" data-endpoint="/api/v1/metrics" async></script>'
    """
    if obs is None:
        from .._current import get_observability

        obs = get_observability()
    cfg = obs.config
    parts = [f'<script src="{html.escape(cfg.rum_script_path or "/observability/rum.js")}"']
    if cfg.rum_path:
        parts.append(f'data-endpoint="{html.escape(cfg.rum_path)}"')
    if sample_rate is not None:
        parts.append(f'data-sample-rate="{float(sample_rate):g}"')
    parts.append("defer" if defer else "async")
    return " ".join(parts) + "></script>"


del _when_on
