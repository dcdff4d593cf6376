"""The RUM ingestion endpoint: checks, limits, validation, metrics and ``browser_error`` logs.

One :class:`RumState` per instance (:func:`rum_state`) holds what the handler
derives from the settings and the per-process bounded state (token buckets,
recent report ids, log sampling). :func:`ingest` / :func:`aingest` answer
one request, in this order, each step cheaper than the next:

1. ``Content-Type`` (``application/json`` or ``text/plain``) and
   ``Content-Encoding`` (identity only): 415;
2. ``Origin``: refused (403) when it is neither the app's host nor allowed;
3. the client's token bucket, then the process's: 429 with ``Retry-After``;
4. the body through the endpoint layer's capped reader: 413 past the cap
   whatever ``Content-Length`` says;
5. the schema (:mod:`._schema`): 400 for an unusable body, and per event a
   rejection counted by reason while the valid siblings are recorded.

Nothing of the input is echoed: answers are ``204`` or a short JSON
``{"error": <reason>, "field": <schema path>}``.
"""

from __future__ import annotations

import fnmatch
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._endpoint import BodyTooLarge, IncompleteBody, Request, Response, is_trusted, parse_networks
from .._redact import Redactor
from ._limits import ClientBuckets, RecentIds, TokenBucket, client_key, retry_after
from ._schema import Event, PayloadError, parse

if TYPE_CHECKING:
    from ..observability import Observability

__all__ = ["PageGroups", "RumState", "aingest", "ingest", "rum_state"]

_JSON = ("Content-Type", "application/json")
_SAFE = [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")]
_MEDIA = frozenset(("application/json", "text/plain"))
_STATUS = {"rate_limited": 429, "origin": 403, "unsupported_media_type": 415,
           "unsupported_encoding": 415, "body_too_large": 413}
_QUERY_IN_TEXT = re.compile(r"[?#][^\s:)]*")
RoutesOf = Callable[[str], "str | None"]


class PageGroups:
    """The ``page`` label of a URL path: route template, else mapping, else fallback.

    Args:
        mapping: ``pattern -> group``, tried in order: a pattern with ``*`` is a
            glob over the whole path, any other a path prefix (``/blog``
            matches ``/blog`` and ``/blog/...``, not ``/blogger``).
        fallback: the group of everything else.
    """

    def __init__(self, mapping: Mapping[str, str], fallback: str) -> None:
        self.fallback = fallback
        self._rules: list[tuple[re.Pattern[str] | None, str, str]] = []
        for pattern, group in mapping.items():
            rx = re.compile(fnmatch.translate(pattern)) if "*" in pattern else None
            self._rules.append((rx, pattern.rstrip("/"), group))
        self._cache: dict[str, str] = {}

    def group(self, path: str | None, routes: RoutesOf | None = None) -> str:
        """The group of ``path`` (``None``: the fallback); ``routes`` gives the app's template."""
        if path is None:
            return self.fallback
        if routes is not None:
            try:
                template = routes(path)
            except Exception:
                template = None
            if template:
                return template
        hit = self._cache.get(path)
        if hit is None:
            hit = self._match(path)
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[path] = hit
        return hit

    def _match(self, path: str) -> str:
        for rx, prefix, group in self._rules:
            if rx is not None:
                if rx.match(path):
                    return group
            elif not prefix or path == prefix or path.startswith(prefix + "/"):
                return group
        return self.fallback


class _LogBudget:
    """``per_minute`` log lines a minute (token bucket); the rest are counted, not logged."""

    def __init__(self, per_minute: int) -> None:
        self.bucket = TokenBucket(per_minute / 60.0, float(per_minute)) if per_minute else None
        self.suppressed = 0
        self.lock = threading.Lock()

    def allow(self) -> int | None:
        """``None``: do not log this one; else how many were not logged since the last line."""
        bucket = self.bucket
        if bucket is None:
            return None
        with self.lock:
            if bucket.take() > 0.0:
                self.suppressed += 1
                return None
            skipped, self.suppressed = self.suppressed, 0
            return skipped


class RumState:
    """What the RUM handler derives from one instance, built once (see :func:`rum_state`)."""

    def __init__(self, obs: Observability) -> None:
        cfg = obs.config
        m = obs.metrics
        self.obs = obs
        self.enabled = bool(cfg.enabled and cfg.rum_enabled)
        self.vitals = m.rum_web_vitals_seconds
        self.layout_shift = m.rum_layout_shift
        self.navigation = m.rum_navigation_seconds
        self.resources = m.rum_resources_total
        self.resource_seconds = m.rum_resource_duration_seconds_total
        self.js_errors = m.rum_js_errors_total
        self.business = m.rum_business_events_total
        self.accepted = m.rum_events_total
        self.rejected = m.rum_events_rejected_total
        self.duplicates = m.rum_events_duplicate_total
        self.max_body = cfg.rum_max_body
        self.max_events = cfg.rum_max_events
        self.business_events = frozenset(cfg.rum_business_events)
        self.exemplars = bool(cfg.exemplars)
        self.clients = (ClientBuckets(cfg.rum_rate_limit, float(cfg.rum_rate_burst),
                                      cfg.rum_rate_clients) if cfg.rum_rate_limit > 0 else None)
        self.everyone = (TokenBucket(cfg.rum_global_rate_limit, 2.0 * cfg.rum_global_rate_limit)
                         if cfg.rum_global_rate_limit > 0 else None)
        self.recent = RecentIds(cfg.rum_dedup_size) if cfg.rum_dedup_size > 0 else None
        self.pages = PageGroups(cfg.rum_page_groups, cfg.rum_page_fallback)
        self.check_origin = cfg.rum_check_origin
        origins = frozenset(o.rstrip("/").lower() for o in cfg.rum_allowed_origins)
        self.any_origin = "*" in origins
        self.origins = origins
        self.trusted = parse_networks(cfg.trusted_proxies)
        self.redactor = Redactor(cfg.redact_keys, card_numbers=cfg.redact_card_numbers,
                                 max_length=4096)
        self.log_budget = _LogBudget(cfg.rum_error_log_limit)
        self._logger: Any = None

    # ------------------------------------------------------------------ request checks
    def refuse(self, reason: str, events: int = 1, field: str = "",
               extra: tuple[tuple[str, str], ...] = ()) -> Response:
        """Count ``events`` rejections for ``reason`` and answer with its status."""
        if events:
            self.rejected.inc((reason,), float(events), None)
        body = {"error": reason}
        if field:
            body["field"] = field
        return Response(_STATUS.get(reason, 400), [_JSON, *_SAFE, *extra],
                        json.dumps(body).encode())

    def precheck(self, req: Request) -> Response | None:
        """The answer to a request refused before its body is read, else ``None``."""
        headers = req.headers
        ctype = headers.get("content-type")
        if ctype is None or ctype.split(";", 1)[0].strip().lower() not in _MEDIA:
            return self.refuse("unsupported_media_type", field="Content-Type")
        encoding = headers.get("content-encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            return self.refuse("unsupported_encoding", field="Content-Encoding")
        if self.check_origin:
            origin = headers.get("origin")
            if origin is not None and not self.origin_ok(origin, req):
                return self.refuse("origin", field="Origin")
        clients = self.clients
        if clients is not None:
            wait = clients.take(client_key(req.client))
            if wait:
                return self.refuse("rate_limited", extra=(("Retry-After", retry_after(wait)),))
        everyone = self.everyone
        if everyone is not None:
            wait = everyone.take()
            if wait:
                return self.refuse("rate_limited", extra=(("Retry-After", retry_after(wait)),))
        return None

    def origin_ok(self, origin: str, req: Request) -> bool:
        """True when ``origin`` is the app's own (its ``Host``) or an allowed one."""
        value = origin.strip().rstrip("/").lower()
        if self.any_origin or value in self.origins:
            return True
        if value == "null" or "://" not in value:
            return False
        headers = req.headers
        host = headers.get("host")
        if self.trusted and req.peer is not None and is_trusted(req.peer, self.trusted):
            host = (headers.get("x-forwarded-host") or host or "").split(",")[0]
        if not host:
            return False
        try:
            parts = urllib.parse.urlsplit(value)
            default = _PORTS.get(parts.scheme)
            served = urllib.parse.urlsplit("//" + host.strip().lower())
            # a Host without a port means the default one (of the page's scheme: behind a
            # TLS-terminating proxy the request itself may be plain HTTP)
            return bool(parts.hostname) and parts.hostname == served.hostname and (
                (parts.port or default) == (served.port or default))
        except ValueError:
            return False

    # ------------------------------------------------------------------ the body
    def process(self, body: bytes, routes: RoutesOf | None) -> Response:
        """Validate ``body``, record the valid events and answer."""
        try:
            events, rejections, _batched = parse(body, max_events=self.max_events,
                                                 business_events=self.business_events)
        except PayloadError as exc:
            return self.refuse(exc.reason, exc.events, exc.field)
        accepted = 0
        if events:
            accepted = self.record(events, routes)
        if not rejections:
            return Response(204, list(_SAFE), b"")
        counts: dict[str, int] = {}
        for r in rejections:
            counts[r.reason] = counts.get(r.reason, 0) + 1
        for reason, n in counts.items():
            self.rejected.inc((reason,), float(n), None)
        first = rejections[0]
        return Response(400, [_JSON, *_SAFE], json.dumps({
            "error": first.reason, "field": first.field, "accepted": accepted,
            "rejected": len(rejections)}).encode())

    def record(self, events: list[Event], routes: RoutesOf | None) -> int:
        """Record valid events (repeated ids once); the number recorded."""
        recent = self.recent
        group = self.pages.group
        exemplars = self.exemplars
        accepted = 0
        for ev in events:
            if ev.id is not None and recent is not None and recent.seen((ev.type, ev.name, ev.id)):
                self.duplicates.inc((), 1.0, None)
                continue
            exemplar = {"trace_id": ev.trace_id} if exemplars and ev.trace_id else None
            kind = ev.type
            if kind == "web_vitals":
                page = group(ev.path, routes)
                if ev.name == "CLS":
                    self.layout_shift.observe((page,), ev.value, exemplar)
                else:
                    self.vitals.observe((ev.name, page), ev.value / 1000.0, exemplar)
            elif kind == "navigation":
                page = group(ev.path, routes)
                for phase, value in ev.items:
                    self.navigation.observe((phase, page), value / 1000.0, exemplar)
            elif kind == "resource":
                page = group(ev.path, routes)
                for initiator, count, duration in ev.items:
                    if count:
                        self.resources.inc((initiator, page), float(count), None)
                    if duration:
                        self.resource_seconds.inc((initiator, page), duration / 1000.0, None)
            elif kind == "errors":
                page = group(ev.path, routes)
                self.js_errors.inc((ev.name, page), 1.0, exemplar)
                self.log_error(ev, page)
            else:
                self.business.inc((ev.name,), 1.0, exemplar)
            self.accepted.inc((kind,), 1.0, None)
            accepted += 1
        return accepted

    # ------------------------------------------------------------------ browser_error
    def log_error(self, ev: Event, page: str) -> None:
        """One ``browser_error`` line with fixed keys, redacted and truncated; sampled."""
        skipped = self.log_budget.allow()
        if skipped is None or ev.error is None:
            return
        try:
            message, filename, lineno, colno, stack = ev.error
            scrub = self.redactor.scrub_text
            source = filename.split("?", 1)[0].split("#", 1)[0][:256]
            fields: dict[str, Any] = {
                "error_type": ev.name,
                "message": scrub(message[:256]),
                "source": scrub(source),
                "line": lineno,
                "column": colno,
                "stack": scrub(_QUERY_IN_TEXT.sub("", stack[:4096])),
                "page": page,
            }
            if ev.trace_id is not None:
                fields["trace_id"] = ev.trace_id
            if skipped:
                fields["suppressed"] = skipped
            logger = self._logger
            if logger is None:
                from ..logs import get_logger

                logger = self._logger = get_logger("mestres_observability.rum")
            logger.warning("browser_error", **fields)
        except Exception as exc:
            self.obs.faults.report("logging", "browser_error", "logging a browser error failed", exc)


_PORTS = {"http": 80, "https": 443}
_lock = threading.Lock()
_cached: tuple[Any, RumState] | None = None


def rum_state(obs: Observability) -> RumState:
    """The :class:`RumState` of ``obs``, built on first use (one per instance)."""
    global _cached
    cached = _cached
    if cached is not None and cached[0] is obs:
        return cached[1]
    with _lock:
        cached = _cached
        if cached is not None and cached[0] is obs:
            return cached[1]
        state = RumState(obs)
        _cached = (obs, state)
        return state


def _read_error(state: RumState, exc: Exception) -> Response:
    if isinstance(exc, BodyTooLarge):
        return state.refuse("body_too_large", field="body")
    return state.refuse("incomplete_body", field="body")


def ingest(obs: Observability, req: Request) -> Response:
    """The RUM ingestion handler (blocking)."""
    state = rum_state(obs)
    if not state.enabled:
        return Response(204, list(_SAFE), b"")
    early = state.precheck(req)
    if early is not None:
        return early
    try:
        body = req.read_body(state.max_body)
    except (BodyTooLarge, IncompleteBody) as exc:
        return _read_error(state, exc)
    return state.process(body, req.routes)


async def aingest(obs: Observability, req: Request) -> Response:
    """The RUM ingestion handler (ASGI: the body through ``receive``)."""
    state = rum_state(obs)
    if not state.enabled:
        return Response(204, list(_SAFE), b"")
    early = state.precheck(req)
    if early is not None:
        return early
    try:
        body = await req.aread_body(state.max_body)
    except (BodyTooLarge, IncompleteBody) as exc:
        return _read_error(state, exc)
    return state.process(body, req.routes)
