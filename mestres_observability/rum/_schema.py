"""The RUM ingestion payload: parsed and validated, field by field (pure, no I/O).

:func:`parse` takes the body bytes and gives back the valid events and one
:class:`Rejection` per invalid one (a fixed reason and the path of the field,
built from the schema's own names, never from the input), or raises
:class:`PayloadError` when the body as a whole is unusable. Every limit of the
schema is a constant below; ``docs/rum.md`` and ``static/payload.schema.json``
publish the same schema.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Collection, Mapping
from typing import Any

__all__ = [
    "ERROR_TYPES", "EVENT_REASONS", "INITIATORS", "MAX_DATA_KEYS", "MAX_KEYS", "MAX_STACK",
    "MAX_STRING", "MAX_URL", "METRICS", "NAVIGATION_TYPES", "PHASES", "REQUEST_REASONS",
    "TYPES", "Event", "PayloadError", "Rejection", "parse", "url_path", "valid_trace_id",
]

#: Event types (``type`` of an envelope).
TYPES: tuple[str, ...] = ("web_vitals", "navigation", "resource", "errors", "business_events")
#: Web Vitals metric -> the range of its value (milliseconds; CLS unitless).
METRICS: Mapping[str, tuple[float, float]] = {
    "LCP": (0.0, 600_000.0), "INP": (0.0, 600_000.0), "FCP": (0.0, 600_000.0),
    "TTFB": (0.0, 600_000.0), "FID": (0.0, 600_000.0), "CLS": (0.0, 100.0),
}
#: Navigation timing phases (``phases`` keys), milliseconds in ``[0, 600000]``.
PHASES: tuple[str, ...] = ("redirect", "dns", "connect", "tls", "request", "response", "dom",
                           "load")
#: Resource initiator types (``initiators`` keys); the snippet sends others as ``other``.
INITIATORS: frozenset[str] = frozenset((
    "script", "link", "css", "img", "image", "fetch", "xmlhttprequest", "beacon", "iframe",
    "frame", "navigation", "audio", "video", "track", "font", "icon", "input", "embed", "object",
    "use", "early-hints", "other",
))
ERROR_TYPES: tuple[str, ...] = ("javascript", "promise_rejection")
RATINGS: frozenset[str] = frozenset(("good", "needs-improvement", "poor"))
NAVIGATION_TYPES: frozenset[str] = frozenset((
    "navigate", "reload", "back-forward", "back-forward-cache", "prerender", "restore",
    "soft-navigation",
))
#: Reasons a whole request is refused (counted once per request).
REQUEST_REASONS: tuple[str, ...] = (
    "rate_limited", "origin", "unsupported_media_type", "unsupported_encoding",
    "body_too_large", "incomplete_body", "invalid_json", "invalid_payload", "too_many_events",
)
#: Reasons one event of a batch is refused (its valid siblings are still recorded).
EVENT_REASONS: tuple[str, ...] = (
    "invalid_envelope", "unknown_type", "unknown_metric", "unknown_event", "unknown_field",
    "missing_field", "invalid_type", "invalid_value", "out_of_range", "too_long",
    "duplicate_key", "too_many_keys",
)

MAX_KEYS = 64          # keys of any object
MAX_STRING = 256       # characters of a string field (messages, names)
MAX_STACK = 4096       # characters of an error's stack
MAX_URL = 2048         # characters of a URL
MAX_ID = 64            # characters of ids (id, session_id, trace_id)
MAX_DATA_KEYS = 16     # keys of a business event's data
MAX_COUNT = 100_000    # resources of one initiator in one report
MAX_MS = 600_000.0     # ten minutes
MAX_TIMESTAMP = 1e13   # milliseconds since the epoch (year 2286)
MAX_LINE = 10_000_000

_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_TRACE_RE = re.compile(r"[0-9a-f]{32}")
_ZERO_TRACE = "0" * 32
_COMMON = frozenset(("timestamp", "session_id", "trace_id", "url", "id", "user_agent", "user_id"))
_KEYS: Mapping[str, frozenset[str]] = {
    "web_vitals": _COMMON | {"metric", "value", "rating", "navigation_type", "delta"},
    "navigation": _COMMON | {"phases", "navigation_type"},
    "resource": _COMMON | {"initiators"},
    "errors": _COMMON | {"type", "message", "filename", "lineno", "colno", "stack"},
    "business_events": _COMMON | {"event", "data"},
}
_ENVELOPE = frozenset(("type", "data"))


class PayloadError(ValueError):
    """The body as a whole is refused: :attr:`reason` (one of :data:`REQUEST_REASONS`)."""

    def __init__(self, reason: str, field: str = "", events: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        #: how many events the refusal counts for
        self.events = events


class Rejection:
    """One refused event: a fixed :attr:`reason` and the schema path of the field."""

    __slots__ = ("field", "reason")

    def __init__(self, reason: str, field: str) -> None:
        self.reason = reason
        self.field = field

    def __repr__(self) -> str:
        return f"Rejection({self.reason!r}, {self.field!r})"


class Event:
    """One valid event.

    Attributes:
        type: one of :data:`TYPES`.
        name: the Web Vitals metric, the error type or the business event ("" otherwise).
        value: the metric's value (milliseconds; CLS unitless).
        path: the URL path of the page (no query, no fragment), or ``None``.
        id: the report id (de-duplication), or ``None``.
        trace_id: the page's trace id when it is a valid one, else ``None``.
        items: navigation: ``(phase, ms)`` pairs; resource: ``(initiator, count, ms)``.
        error: errors: ``(message, filename, lineno, colno, stack)``.
    """

    __slots__ = ("error", "id", "items", "name", "path", "trace_id", "type", "value")

    def __init__(self, type_: str, name: str, path: str | None, id_: str | None,
                 trace_id: str | None) -> None:
        self.type = type_
        self.name = name
        self.path = path
        self.id = id_
        self.trace_id = trace_id
        self.value = 0.0
        self.items: tuple[tuple[Any, ...], ...] = ()
        self.error: tuple[str, str, int, int, str] | None = None

    def __repr__(self) -> str:
        return f"Event({self.type!r}, {self.name!r}, {self.value!r})"


class _Bad(dict):  # type: ignore[type-arg]
    """An object the parser refused (duplicate keys, too many keys): its events are rejected."""

    reason = "duplicate_key"


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(pairs) > MAX_KEYS:
        bad = _Bad()
        bad.reason = "too_many_keys"
        return bad
    if len(obj) != len(pairs):
        return _Bad()
    return obj


def _constant(text: str) -> float:
    return math.nan  # NaN, Infinity, -Infinity: refused per field as not finite


def _int(text: str) -> float | int:
    return int(text) if len(text) <= 20 else math.inf  # a 5000-digit int: out of range


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant,
                            parse_int=_int)


class _Reject(Exception):
    def __init__(self, reason: str, field: str) -> None:
        self.reason = reason
        self.field = field


def valid_trace_id(value: object) -> str | None:
    """``value`` when it is 32 lowercase hex digits and not all zeros, else ``None``."""
    if type(value) is str and len(value) == 32 and value != _ZERO_TRACE \
            and _TRACE_RE.fullmatch(value):
        return value
    return None


def url_path(url: str) -> str | None:
    """The path of a page URL or path: no query string, no fragment; ``None`` if there is none."""
    if not url:
        return None
    if url.startswith("/") and not url.startswith("//"):
        path = url.split("?", 1)[0].split("#", 1)[0]
    else:
        try:
            path = urllib.parse.urlsplit(url).path
        except ValueError:
            return None
        if not path:
            path = "/"
    return path if path.startswith("/") else None


def parse(body: bytes, *, max_events: int, business_events: Collection[str]
          ) -> tuple[list[Event], list[Rejection], bool]:
    """The events of a request body: ``(valid events, rejections, batched)``.

    ``batched`` tells whether the body was a batch (an array or ``{"events": [...]}``),
    so rejection fields read ``events[3].data.value`` rather than ``data.value``.

    Raises:
        PayloadError: the body is not UTF-8 JSON of one of the accepted shapes, or
            holds more than ``max_events`` events.
    """
    try:
        text = body.decode("utf-8")
        doc = _DECODER.decode(text)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        raise PayloadError("invalid_json") from None
    if type(doc) is list:
        items = doc
        batched = True
    elif isinstance(doc, dict):
        if type(doc) is _Bad:
            raise PayloadError("invalid_payload")
        if "events" in doc:
            if len(doc) != 1 or type(doc["events"]) is not list:
                raise PayloadError("invalid_payload", "events")
            items = doc["events"]
            batched = True
        else:
            items = [doc]
            batched = False
    else:
        raise PayloadError("invalid_payload")
    if len(items) > max_events:
        raise PayloadError("too_many_events", "events", len(items))
    events: list[Event] = []
    rejected: list[Rejection] = []
    for i, item in enumerate(items):
        prefix = f"events[{i}]." if batched else ""
        try:
            events.append(_event(item, business_events))
        except _Reject as r:
            rejected.append(Rejection(r.reason, prefix + r.field if r.field else prefix[:-1]))
    return events, rejected, batched


# ---------------------------------------------------------------------- fields
def _obj(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Reject("invalid_type", field)
    if type(value) is _Bad:
        raise _Reject(value.reason, field)
    return value


def _str(value: Any, field: str, limit: int = MAX_STRING) -> str:
    if type(value) is not str:
        raise _Reject("invalid_type", field)
    if len(value) > limit:
        raise _Reject("too_long", field)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800")
            raise _Reject("invalid_value", field) from None
    return value


def _num(value: Any, field: str, low: float, high: float) -> float:
    t = type(value)
    if t is not float and t is not int:  # bool is refused: True is not a number here
        raise _Reject("invalid_type", field)
    if value != value:  # NaN (also Infinity, read as NaN by the decoder)
        raise _Reject("invalid_value", field)
    if not low <= value <= high:
        raise _Reject("out_of_range", field)
    return float(value)


def _int_field(value: Any, field: str, low: int, high: int) -> int:
    if type(value) is not int:
        if type(value) is float and value == value and math.isinf(value):
            raise _Reject("out_of_range", field)
        raise _Reject("invalid_type", field)
    if not low <= value <= high:
        raise _Reject("out_of_range", field)
    return value


def _event(item: Any, business_events: Collection[str]) -> Event:
    if not isinstance(item, dict):
        raise _Reject("invalid_envelope", "")
    if type(item) is _Bad:
        raise _Reject(item.reason, "")
    if not _ENVELOPE.issuperset(item):
        raise _Reject("invalid_envelope", "")
    if "type" not in item:
        raise _Reject("missing_field", "type")
    type_ = item["type"]
    if type(type_) is not str:
        raise _Reject("invalid_type", "type")
    if type_ not in _KEYS:
        raise _Reject("unknown_type", "type")
    if "data" not in item:
        raise _Reject("missing_field", "data")
    data = _obj(item["data"], "data")
    if not _KEYS[type_].issuperset(data):
        raise _Reject("unknown_field", "data")
    # the fields every type may carry
    path = None
    if "url" in data:
        path = url_path(_str(data["url"], "data.url", MAX_URL))
    id_ = None
    if "id" in data:
        id_ = _str(data["id"], "data.id", MAX_ID)
        if not _ID_RE.fullmatch(id_):
            raise _Reject("invalid_value", "data.id")
    trace_id = None
    if "trace_id" in data:
        trace_id = valid_trace_id(_str(data["trace_id"], "data.trace_id", MAX_ID))
    if "timestamp" in data:
        _num(data["timestamp"], "data.timestamp", 0.0, MAX_TIMESTAMP)
    if "session_id" in data and not _ID_RE.fullmatch(
            _str(data["session_id"], "data.session_id", MAX_ID)):
        raise _Reject("invalid_value", "data.session_id")
    if "user_agent" in data:
        _str(data["user_agent"], "data.user_agent", 512)
    if "user_id" in data:
        uid = data["user_id"]
        if uid is not None and type(uid) is not int:
            _str(uid, "data.user_id", 128)
    return _TYPED[type_](data, path, id_, trace_id, business_events)


def _web_vitals(data: dict[str, Any], path: str | None, id_: str | None,
                trace_id: str | None, _events: Collection[str]) -> Event:
    if "metric" not in data:
        raise _Reject("missing_field", "data.metric")
    metric = _str(data["metric"], "data.metric")
    bounds = METRICS.get(metric)
    if bounds is None:
        raise _Reject("unknown_metric", "data.metric")
    if "value" not in data:
        raise _Reject("missing_field", "data.value")
    value = _num(data["value"], "data.value", *bounds)
    if "delta" in data:
        _num(data["delta"], "data.delta", -bounds[1], bounds[1])
    if "rating" in data and _str(data["rating"], "data.rating") not in RATINGS:
        raise _Reject("invalid_value", "data.rating")
    _navigation_type(data)
    ev = Event("web_vitals", metric, path, id_, trace_id)
    ev.value = value
    return ev


def _navigation_type(data: dict[str, Any]) -> None:
    if "navigation_type" in data and _str(
            data["navigation_type"], "data.navigation_type") not in NAVIGATION_TYPES:
        raise _Reject("invalid_value", "data.navigation_type")


def _navigation(data: dict[str, Any], path: str | None, id_: str | None,
                trace_id: str | None, _events: Collection[str]) -> Event:
    if "phases" not in data:
        raise _Reject("missing_field", "data.phases")
    phases = _obj(data["phases"], "data.phases")
    items = []
    for name, value in phases.items():
        if name not in PHASES:
            raise _Reject("unknown_field", "data.phases")
        items.append((name, _num(value, f"data.phases.{name}", 0.0, MAX_MS)))
    _navigation_type(data)
    ev = Event("navigation", "", path, id_, trace_id)
    ev.items = tuple(items)
    return ev


def _resource(data: dict[str, Any], path: str | None, id_: str | None,
              trace_id: str | None, _events: Collection[str]) -> Event:
    if "initiators" not in data:
        raise _Reject("missing_field", "data.initiators")
    initiators = _obj(data["initiators"], "data.initiators")
    items = []
    for name, value in initiators.items():
        if name not in INITIATORS:
            raise _Reject("unknown_field", "data.initiators")
        field = f"data.initiators.{name}"
        entry = _obj(value, field)
        if not {"count", "duration"}.issuperset(entry):
            raise _Reject("unknown_field", field)
        count = _int_field(entry.get("count", 0), field + ".count", 0, MAX_COUNT)
        duration = _num(entry.get("duration", 0), field + ".duration", 0.0, MAX_COUNT * MAX_MS)
        items.append((name, count, duration))
    ev = Event("resource", "", path, id_, trace_id)
    ev.items = tuple(items)
    return ev


def _errors(data: dict[str, Any], path: str | None, id_: str | None,
            trace_id: str | None, _events: Collection[str]) -> Event:
    if "type" not in data:
        raise _Reject("missing_field", "data.type")
    kind = _str(data["type"], "data.type")
    if kind not in ERROR_TYPES:
        raise _Reject("invalid_value", "data.type")
    message = _str(data.get("message", ""), "data.message")
    filename = _str(data.get("filename", ""), "data.filename", MAX_URL)
    lineno = _int_field(data.get("lineno", 0), "data.lineno", 0, MAX_LINE)
    colno = _int_field(data.get("colno", 0), "data.colno", 0, MAX_LINE)
    stack = _str(data.get("stack", ""), "data.stack", MAX_STACK)
    ev = Event("errors", kind, path, id_, trace_id)
    ev.error = (message, filename, lineno, colno, stack)
    return ev


def _business_events(data: dict[str, Any], path: str | None, id_: str | None,
                     trace_id: str | None, allowed: Collection[str]) -> Event:
    if "event" not in data:
        raise _Reject("missing_field", "data.event")
    name = _str(data["event"], "data.event")
    if name not in allowed:
        raise _Reject("unknown_event", "data.event")
    if "data" in data:
        extra = _obj(data["data"], "data.data")
        if len(extra) > MAX_DATA_KEYS:
            raise _Reject("too_many_keys", "data.data")
        for key, value in extra.items():
            _str(key, "data.data", MAX_ID)
            if value is None or type(value) is bool:
                continue
            if type(value) is str:
                _str(value, "data.data")
            else:
                _num(value, "data.data", -1e15, 1e15)
    return Event("business_events", name, path, id_, trace_id)


_TYPED = {
    "web_vitals": _web_vitals, "navigation": _navigation, "resource": _resource,
    "errors": _errors, "business_events": _business_events,
}
