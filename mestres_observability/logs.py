"""Structured logs: structlog and the standard library through one JSON renderer.

:func:`configure_logging` (called by :func:`~mestres_observability.init_observability`
unless ``configure_logging=False``) sets up structlog on top of the standard
library's ``logging``, with one handler on the root logger that writes one JSON
object per line to standard output. Third-party and framework logs
(``logging.getLogger(...)``) pass through the same processors and renderer.

Every line carries ``timestamp`` (ISO 8601 UTC, ``Z``), ``level``, ``event``,
``logger`` and ``service``; ``request_id`` and ``user_id`` when bound in the
request context (:func:`request_context`, :func:`bind_context`,
:func:`set_user_id`); ``trace_id`` (32 hex) and ``span_id`` (16 hex) whenever a
span is current. Secrets are redacted before rendering (see
:mod:`mestres_observability._redact`), long values are truncated with a marker,
and the JSON is ASCII-only, so no input (newline, NUL, U+2028 ...) can split or
forge a line (written by orjson where that gives the standard encoder's very
bytes, see :func:`render_json`). A field whose ``str`` raises is rendered as a marker: logging
never raises into the caller.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, TextIO

import structlog
from opentelemetry import trace as _otel_trace

from ._compat import rebind_structlog_context, structlog_logger_parts
from ._fault import FaultReporter
from ._forksafe import renew_locks_after_fork
from ._redact import EXEMPT_KEYS, Redactor
from .config import DEFAULT_REDACT_KEYS, ObservabilityConfig

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "INTERNAL_KEYS",
    "RESERVED_KEYS",
    "USER_FIELDS_KEY",
    "BoundLogger",
    "bind_context",
    "clear_context",
    "configure_logging",
    "event_enabled",
    "get_logger",
    "log_event",
    "request_context",
    "server_formatter",
    "server_handler",
    "server_logging_config",
    "set_user_id",
]

#: Keys the library owns on every line; :func:`log_event` moves colliding user
#: fields under :data:`USER_FIELDS_KEY` instead of overwriting them.
RESERVED_KEYS = frozenset({
    "timestamp", "level", "event", "logger", "service", "trace_id", "span_id",
    "request_id", "exception", "fields",
})
#: Where user fields whose names collide with the library's or structlog's are put.
USER_FIELDS_KEY = "fields"
#: Keys structlog and the standard library use internally (or in their call signatures):
#: a user field of that name is moved under :data:`USER_FIELDS_KEY` too.
INTERNAL_KEYS = frozenset({
    "_record", "_from_structlog", "_logger", "_name", "positional_args", "exc_info",
    "stack_info", "stacklevel", "extra", "self", "method_name",
})
# moved from logger calls, logger-bound values and the bound context: everything but the
# correlation ids, which a caller may set on purpose (``log.info(..., request_id=job.id)``)
_MOVED = frozenset(RESERVED_KEYS - {"trace_id", "span_id", "request_id"}) | INTERNAL_KEYS
# moved from business events (log_event): every reserved or internal key
_MOVED_EVENT = RESERVED_KEYS | INTERNAL_KEYS
EVENTS_LOGGER = "mestres_observability.events"
_HEAD = ("timestamp", "level", "event", "logger", "service")

EventDict = MutableMapping[str, Any]


class _MovedFields(dict):  # type: ignore[type-arg]
    """The ``fields`` dict the library builds (what it holds is merged, never overwritten)."""

    __slots__ = ()


def _exc_info_value(value: Any) -> bool:
    """True for what ``exc_info`` means to logging (``True``, an exception, a 3-tuple)."""
    if value is None or value is True or value is False or isinstance(value, BaseException):
        return True
    return (type(value) is tuple and len(value) == 3
            and (value[0] is None or (isinstance(value[0], type)
                                      and issubclass(value[0], BaseException))))


def _move_fields(values: dict[str, Any], moving: frozenset[str],
                 into: Any = None) -> dict[str, Any]:
    """``values`` with the keys in ``moving`` put under ``fields`` (merged into ``into``,
    the ``fields`` already there, when the library built it). One rule for every entry
    point: any key is logged, none overwrites the library's or breaks structlog."""
    out: dict[str, Any] = {}
    moved = _MovedFields(into) if type(into) is _MovedFields else _MovedFields()
    for key, value in values.items():
        if key == USER_FIELDS_KEY and type(value) is _MovedFields:
            moved.update(value)  # moved already (a call passed on): merged, not nested
        elif key in moving and not (key == "exc_info" and _exc_info_value(value)):
            moved[key] = value
        else:
            out[key] = value
    if moved:
        out[USER_FIELDS_KEY] = moved
    return out


class BoundLogger(structlog.stdlib.BoundLogger):
    """structlog's standard-library logger, for which any field name is just a field.

    ``get_logger()`` returns it while the library's logging configuration is
    in place. A field named like a key the library owns (``level``,
    ``timestamp``, ``event``, ``logger``, ``service``, ``exception``,
    ``fields``) or one structlog and ``logging`` use internally
    (:data:`INTERNAL_KEYS`: ``_record``, ``positional_args``, ``exc_info``
    unless it is an exception or ``True`` ...) is moved under ``fields``:
    nothing raises, nothing is overwritten, nothing is dropped. The event is
    positional-only, so even ``event=`` and ``self=`` are fields.
    """

    def _fielded(self, kw: dict[str, Any]) -> dict[str, Any]:
        if kw and not _MOVED.isdisjoint(kw):
            return _move_fields(kw, _MOVED, self._context.get(USER_FIELDS_KEY))
        return kw

    def bind(self, /, **new_values: Any) -> Self:
        """A new logger with ``new_values`` added (colliding names under ``fields``)."""
        return super().bind(**self._fielded(new_values))

    def new(self, /, **new_values: Any) -> Self:
        """Clear the bound values and bind ``new_values``."""
        if new_values and not _MOVED.isdisjoint(new_values):
            new_values = _move_fields(new_values, _MOVED)  # nothing bound before is kept
        return super().new(**new_values)

    def debug(self, event: str | None = None, /, *args: Any, **kw: Any) -> Any:
        """Log at DEBUG."""
        if kw and not _MOVED.isdisjoint(kw):  # inline: this runs for every line
            kw = self._fielded(kw)
        return self._proxy_to_logger("debug", event, *args, **kw)

    def info(self, event: str | None = None, /, *args: Any, **kw: Any) -> Any:
        """Log at INFO."""
        if kw and not _MOVED.isdisjoint(kw):  # inline: this runs for every line
            kw = self._fielded(kw)
        return self._proxy_to_logger("info", event, *args, **kw)

    def warning(self, event: str | None = None, /, *args: Any, **kw: Any) -> Any:
        """Log at WARNING."""
        if kw and not _MOVED.isdisjoint(kw):  # inline: this runs for every line
            kw = self._fielded(kw)
        return self._proxy_to_logger("warning", event, *args, **kw)

    warn = warning

    def error(self, event: str | None = None, /, *args: Any, **kw: Any) -> Any:
        """Log at ERROR."""
        if kw and not _MOVED.isdisjoint(kw):  # inline: this runs for every line
            kw = self._fielded(kw)
        return self._proxy_to_logger("error", event, *args, **kw)

    def critical(self, event: str | None = None, /, *args: Any, **kw: Any) -> Any:
        """Log at CRITICAL."""
        if kw and not _MOVED.isdisjoint(kw):  # inline: this runs for every line
            kw = self._fielded(kw)
        return self._proxy_to_logger("critical", event, *args, **kw)

    def fatal(self, event: str | None = None, /, *args: Any, **kw: Any) -> Any:
        """Log at CRITICAL."""
        if kw and not _MOVED.isdisjoint(kw):  # inline: this runs for every line
            kw = self._fielded(kw)
        return self._proxy_to_logger("critical", event, *args, **kw)

    def exception(self, event: str | None = None, /, *args: Any, **kw: Any) -> Any:
        """Log at ERROR with the exception being handled."""
        kw = self._fielded(kw)
        kw.setdefault("exc_info", True)
        return self._proxy_to_logger("exception", event, *args, **kw)

    def log(  # type: ignore[override]  # level positional-only too: ``level=`` is a field
            self, level: int, event: str | None = None, /, *args: Any, **kw: Any) -> Any:
        """Log at ``level`` (a ``logging`` level number)."""
        name = logging.getLevelName(level).lower() if isinstance(level, int) else "info"
        if name not in _LEVELNO or name in ("warn", "fatal"):
            name = "info"
        return self._proxy_to_logger(name, event, *args, **self._fielded(kw))

    async def adebug(self, event: str | None = None, /, *args: Any, **kw: Any) -> None:
        """Log at DEBUG from a thread pool."""
        await super().adebug(event, *args, **self._fielded(kw))  # type: ignore[arg-type]

    async def ainfo(self, event: str | None = None, /, *args: Any, **kw: Any) -> None:
        """Log at INFO from a thread pool."""
        await super().ainfo(event, *args, **self._fielded(kw))  # type: ignore[arg-type]

    async def awarning(self, event: str | None = None, /, *args: Any, **kw: Any) -> None:
        """Log at WARNING from a thread pool."""
        await super().awarning(event, *args, **self._fielded(kw))  # type: ignore[arg-type]

    async def aerror(self, event: str | None = None, /, *args: Any, **kw: Any) -> None:
        """Log at ERROR from a thread pool."""
        await super().aerror(event, *args, **self._fielded(kw))  # type: ignore[arg-type]

    async def acritical(self, event: str | None = None, /, *args: Any, **kw: Any) -> None:
        """Log at CRITICAL from a thread pool."""
        await super().acritical(event, *args, **self._fielded(kw))  # type: ignore[arg-type]

    async def afatal(self, event: str | None = None, /, *args: Any, **kw: Any) -> None:
        """Log at CRITICAL from a thread pool."""
        await super().acritical(event, *args, **self._fielded(kw))  # type: ignore[arg-type]

    async def aexception(self, event: str | None = None, /, *args: Any, **kw: Any) -> None:
        """Log at ERROR with the exception being handled, from a thread pool."""
        await super().aexception(event, *args, **self._fielded(kw))  # type: ignore[arg-type]


class _State:
    """Settings read by the processors at run time (swapped on re-init)."""

    def __init__(self) -> None:
        self.service = "unknown_service"
        self.redactor = Redactor(DEFAULT_REDACT_KEYS)
        self.faults: FaultReporter | None = None
        self.levels_set: list[str] = []
        self.captures: list[list[dict[str, Any]]] = []
        #: the structlog processor list installed by :func:`configure_logging`
        self.chain: list[Any] | None = None
        #: a copy of :attr:`chain` as installed: the direct paths compare the live list with
        #: it, so a processor an app adds to (or swaps in) that list in place is not skipped
        self.chain_as_installed: list[Any] | None = None
        #: the stdlib logger of business events (its level decides :func:`event_enabled`)
        self.events_std: logging.Logger | None = None
        #: the library's handler, its formatter and the renderer (for :func:`write_direct`)
        self.output: tuple[_StdoutHandler, logging.Formatter, Any] | None = None


_state = _State()
_lock = threading.Lock()


# gunicorn --preload: a fresh ``_lock`` in a forked child. The handler's own lock
# (``logging.Handler.lock``, taken by write_direct too) is re-initialised by the
# standard library's ``logging`` at a fork.
renew_locks_after_fork(sys.modules[__name__], "_lock")


def _report(kind: str, message: str, exc: BaseException | None = None) -> None:
    faults = _state.faults
    if faults is not None:
        faults.report("logging", kind, message, exc)


# ---------------------------------------------------------------------- processors
_ids: tuple[int, int, str, str] = (0, 0, "", "")  # last span's ids, formatted once


def add_trace_ids(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Add ``trace_id``/``span_id`` of the current span (unless the caller set them)."""
    global _ids
    if "trace_id" not in event_dict:
        try:
            ctx = _otel_trace.get_current_span().get_span_context()
            if ctx.is_valid:
                ids = _ids
                if ids[0] != ctx.span_id or ids[1] != ctx.trace_id:
                    ids = _ids = (ctx.span_id, ctx.trace_id, format(ctx.trace_id, "032x"),
                                  format(ctx.span_id, "016x"))
                event_dict["trace_id"] = ids[2]
                event_dict["span_id"] = ids[3]
        except Exception as exc:  # pragma: no cover - defensive
            _report("trace_ids", "reading the current span failed", exc)
    return event_dict


def merge_context(logger: Any, name: str, event_dict: EventDict) -> EventDict:
    """structlog's ``merge_contextvars``, and the ``fields`` moved out of the bound context
    merged with those of the call (both are kept)."""
    own = event_dict.get(USER_FIELDS_KEY)
    event_dict = structlog.contextvars.merge_contextvars(logger, name, event_dict)
    if type(own) is _MovedFields:
        bound = structlog.contextvars.get_contextvars().get(USER_FIELDS_KEY)
        if type(bound) is _MovedFields and bound is not own:
            event_dict[USER_FIELDS_KEY] = _MovedFields({**bound, **own})
    return event_dict


def add_logger_name(logger: Any, _: str, event_dict: EventDict) -> EventDict:
    """Add ``logger`` from the stdlib logger or the log record."""
    if "logger" not in event_dict:
        record = event_dict.get("_record")
        name = (record.name if isinstance(record, logging.LogRecord)
                else getattr(logger, "name", None))
        if name and isinstance(name, str):
            event_dict["logger"] = name
    return event_dict


_format_positional = structlog.stdlib.PositionalArgumentsFormatter()


def format_positional(logger: Any, name: str, event_dict: EventDict) -> EventDict:
    """``log.info("%s paid", user)``: the stdlib's formatting of positional arguments.

    An event that does not format with its arguments (``log.info("100% done", x)``)
    is logged unformatted, its arguments under ``fields``, instead of raising.
    """
    if "positional_args" not in event_dict:
        return event_dict
    try:
        return _format_positional(logger, name, event_dict)
    except Exception:
        args = event_dict.pop("positional_args", None)
        into = event_dict.get(USER_FIELDS_KEY)
        moved = _MovedFields(into) if type(into) is _MovedFields else _MovedFields()
        moved["positional_args"] = args
        event_dict[USER_FIELDS_KEY] = moved
        return event_dict


def add_extra(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Standard-library records: ``extra=`` fields, colliding names under ``fields``
    (as ``structlog.stdlib.ExtraAdder`` does otherwise)."""
    record = event_dict.get("_record")
    if not isinstance(record, logging.LogRecord):
        return event_dict
    extra = {k: v for k, v in record.__dict__.items() if k not in _LOG_RECORD_KEYS}
    if extra.get("service", extra) == _state.service:
        del extra["service"]  # what the line carries anyway: not repeated under fields
    if extra:
        for key, value in _move_fields(extra, _MOVED,
                                       event_dict.get(USER_FIELDS_KEY)).items():
            event_dict[key] = value
    return event_dict


_LOG_RECORD_KEYS = frozenset(
    logging.LogRecord("name", 0, "pathname", 0, "msg", (), None).__dict__) | {"message", "asctime"}


def add_service(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Set ``service`` to the configured service name (overrides any field)."""
    event_dict["service"] = _state.service
    return event_dict


_second: tuple[int, str] = (-1, "")  # (whole second, "YYYY-mm-ddTHH:MM:SS.") formatted once


def _timestamp() -> str:
    global _second
    now = time.time()
    sec = int(now)
    cached = _second
    if cached[0] == sec:
        prefix = cached[1]
    else:
        prefix = _dt.datetime.fromtimestamp(sec, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
        _second = (sec, prefix)
    ms = int((now - sec) * 1000)
    return prefix + _MILLIS[ms if ms < 1000 else 999]


_MILLIS = tuple(f"{ms:03d}Z" for ms in range(1000))  # the timestamp's tail, formatted once


def add_timestamp(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Set ``timestamp``: ISO 8601, UTC, millisecond precision, ``Z`` suffix."""
    event_dict["timestamp"] = _timestamp()
    return event_dict


def structure_exception(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Render ``exc_info`` as ``exception: {type, message, stacktrace}``."""
    exc_info = event_dict.pop("exc_info", None)
    if not exc_info:
        return event_dict
    try:
        if exc_info is True:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if not isinstance(exc_info, tuple) or exc_info[0] is None:
            return event_dict
        import traceback

        etype, value, tb = exc_info
        try:
            message = str(value)
        except Exception:
            message = "<unprintable exception>"
        event_dict["exception"] = {
            "type": getattr(etype, "__qualname__", str(etype)),
            "message": message,
            "stacktrace": "".join(traceback.format_exception(etype, value, tb)),
        }
    except Exception as exc:
        event_dict["exception"] = {"type": "unknown", "message": "<exception not renderable>"}
        _report("exception_render", "rendering an exception failed", exc)
    return event_dict


def redact_and_clean(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Redact secrets, truncate long values and make every value JSON-safe.

    Runs in the caller's thread, before the event reaches any ``logging``
    handler, so other handlers (yours, pytest's) only ever see cleaned values.
    """
    record = event_dict.pop("_record", None)
    from_structlog = event_dict.pop("_from_structlog", None)
    if (record is not None and not isinstance(record, logging.LogRecord)) or (
            record is None and from_structlog is not None):
        # fields of those names bound through structlog's own API: data, under fields
        stray = {k: v for k, v in (("_record", record), ("_from_structlog", from_structlog))
                 if v is not None}
        into = event_dict.get(USER_FIELDS_KEY)
        moved = _MovedFields(into) if type(into) is _MovedFields else _MovedFields()
        moved.update(stray)
        event_dict = {**event_dict, USER_FIELDS_KEY: moved}
        record = from_structlog = None
    cleaned = _state.redactor.clean_event(event_dict)
    if record is not None:
        cleaned["_record"] = record
        cleaned["_from_structlog"] = from_structlog
    return cleaned


def clean_foreign(logger: Any, name: str, event_dict: EventDict) -> EventDict:
    """Formatter step: structure and clean records that came from the stdlib ``logging``."""
    if event_dict.get("_from_structlog"):
        return event_dict
    return redact_and_clean(logger, name, structure_exception(logger, name, event_dict))


def finalize(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Put the core keys first and feed test captures."""
    head = {k: event_dict[k] for k in _HEAD if k in event_dict}
    head.update(event_dict)  # existing keys keep their (leading) place
    if _state.captures:
        for sink in _state.captures:
            sink.append(dict(head))
    return head


def _finish(event_dict: EventDict) -> EventDict:
    """``add_timestamp``, ``add_service`` and ``finalize`` in one step (same result)."""
    event_dict["timestamp"] = _timestamp()
    event_dict["service"] = _state.service
    head = {}
    for k in _HEAD:  # finalize(), inline
        if k in event_dict:
            head[k] = event_dict[k]
    head.update(event_dict)
    if _state.captures:
        for sink in _state.captures:
            sink.append(dict(head))
    return head


def render_json(_: Any, __: str, event_dict: EventDict) -> str:
    """One JSON object, ASCII only (no raw newline, NUL or U+2028), strict (no NaN).

    The line is written by orjson when that gives the very bytes the standard
    library's encoder gives (see :func:`_fast_dumps`), else by the latter.
    """
    dumps = _FAST_DUMPS
    fast = (_fast_view(event_dict) if dumps is not None and type(event_dict) is dict
            else None)
    if fast is not None:
        assert dumps is not None
        try:
            out: bytes = dumps(fast)
        except Exception:  # a lone surrogate, an int past 64 bits, a key that is not a str ...
            pass
        else:
            # non-ASCII text is written raw by orjson (U+2028 too), DEL unescaped
            if out.isascii() and b"\x7f" not in out:
                return out.decode("ascii")
    try:
        return _ENCODER.encode(event_dict)
    except Exception as exc:
        _report("render", "rendering a log line failed", exc)
        fallback = {
            "timestamp": event_dict.get("timestamp"), "level": str(event_dict.get("level")),
            "event": "log_render_failed", "service": _state.service,
            "original_event": str(event_dict.get("event"))[:200],
        }
        return json.dumps(fallback, ensure_ascii=True, default=str)


def _fast_view(event_dict: dict[str, Any]) -> dict[str, Any] | None:
    """What orjson is given for ``event_dict``: the dict itself when its values are
    :func:`_plain`; a copy whose top-level finite floats outside orjson's range (a request's
    ``duration_seconds`` of 4.1e-05) are ``orjson.Fragment`` of their ``repr``, the very
    text the standard encoder writes, when those are the only values that are not; else
    ``None`` (the standard encoder writes the line)."""
    out = None
    for key, value in event_dict.items():
        t = type(value)
        if t is str or t is int or value is None or t is bool:
            continue
        if t is float:
            if (_FLOAT_LOW <= value < _FLOAT_HIGH or -_FLOAT_HIGH < value <= -_FLOAT_LOW
                    or value == 0.0):  # NaN fails every comparison
                continue
            fragment = _FRAGMENT
            if fragment is None or value - value != 0.0:  # NaN, infinities: refused
                return None
            if out is None:
                out = dict(event_dict)
            out[key] = fragment(float.__repr__(value).encode("ascii"))
        elif not ((t is dict and _plain(value.values(), 1))
                  or ((t is list or t is tuple) and _plain(value, 1))):
            return None
    return event_dict if out is None else out


def _default(value: Any) -> Any:
    try:
        return str(value)
    except Exception:
        return f"<unrepresentable {type(value).__qualname__}>"


# built once: json.dumps with options builds a new encoder on every call
_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, default=_default,
                            separators=(",", ":"))


# ---------------------------------------------------------------------- fast renderer
# orjson writes the same JSON as _ENCODER for the values the processors leave (str, int,
# finite float, bool, None, dict, list) except: text outside ASCII (written as raw UTF-8,
# U+2028 included, where _ENCODER escapes it), DEL (0x7f, raw; _ENCODER escapes it), lone
# surrogates, ints past 64 bits and keys that are not str (orjson raises), non-finite
# floats (orjson writes null; _ENCODER refuses them) and the spelling of some floats.
# render_json takes orjson's line only when none of these can be in it: the values are
# walked first (_plain), the line checked after.
_FAST_DEPTH = 16  # deeper (or circular) values take the standard encoder
_FLOAT_LOW = 1e-4  # below it (zero aside) repr writes 1e-05 and orjson 0.00001 or 1e-5
_FLOAT_HIGH = 1e16  # from here repr writes 1e+16; orjson since 3.11.7 too, before it 1e16
#: floats from _FLOAT_LOW up that orjson must spell as repr does for the fast path to be used
_PROBE_FLOATS = (0.0, -0.0, 1.0, -2.5, 0.1, 1e-4, 0.00012345, 1 / 3, 123456.789,
                 1e15, 9999999999999998.0)
#: floats from _FLOAT_HIGH up; if orjson spells them as repr does, the range is unbounded
_PROBE_LARGE = (1e16, -1.5e17, 1.2345e22, 1.7976931348623157e308)
_PROBE_TEXT = ("", "plain", '"\\/', "\n\r\t\b\f", "\x00\x01\x1f", "{}[],:")


def _fast_dumps() -> Any:
    """orjson's ``dumps``, or ``None`` when orjson is missing or spells the probes otherwise.

    Sets the float range it is used for (see :func:`_plain`): finite floats of
    magnitude from 1e-4 (and zero) to 1e16, or with no upper bound when orjson
    writes large floats as ``repr`` does (``1e+16``, orjson 3.11.7 and later).
    """
    global _FLOAT_HIGH
    try:
        import orjson
    except ImportError:  # pragma: no cover - a dependency; the standard encoder stands in
        return None
    dumps = orjson.dumps
    try:
        for value in (*_PROBE_FLOATS, *_PROBE_TEXT, 2**63, -(2**63), 2**64 - 1):
            if dumps(value) != _ENCODER.encode(value).encode("ascii"):
                return None
        probe = {"a": [1, 2.5, None, True, False, {"b": "c"}], "d": {}, "e": []}
        if dumps(probe) != _ENCODER.encode(probe).encode("ascii"):
            return None
        if all(dumps(v) == _ENCODER.encode(v).encode("ascii") for v in _PROBE_LARGE):
            _FLOAT_HIGH = float("inf")
    except Exception:  # pragma: no cover - a broken build
        return None
    return dumps


def _plain(values: Any, depth: int) -> bool:
    """True when orjson writes each of ``values`` as :data:`_ENCODER` does (a quick type walk).

    str, int, bool, None, and floats in the range above; dicts and lists of
    those, up to :data:`_FAST_DEPTH` levels. What orjson rejects (lone
    surrogates, ints past 64 bits, keys that are not str) raises there, and the
    standard encoder writes the line.
    """
    for v in values:
        t = type(v)
        if t is str or t is int or v is None or t is bool:
            continue
        if t is float:
            if (_FLOAT_LOW <= v < _FLOAT_HIGH or -_FLOAT_HIGH < v <= -_FLOAT_LOW
                    or v == 0.0):  # NaN fails every comparison
                continue
            return False
        if t is dict:
            if depth < _FAST_DEPTH and _plain(v.values(), depth + 1):
                continue
            return False
        if t is list or t is tuple:
            if depth < _FAST_DEPTH and _plain(v, depth + 1):
                continue
            return False
        return False
    return True


#: ``orjson.dumps`` when usable (see :func:`_fast_dumps`), else ``None``
_FAST_DUMPS: Any = _fast_dumps()


def _fragment_type() -> Any:
    """``orjson.Fragment`` (orjson 3.10 and later) when it writes its text as it is, else None."""
    if _FAST_DUMPS is None:
        return None
    try:
        import orjson

        fragment = orjson.Fragment
        for value in (4.1e-05, 1e-10, 5e-324, -9.99e-05, 1e16, -1.5e300):
            text = float.__repr__(value)
            probe = {"a": fragment(text.encode("ascii")), "b": [1]}
            if _FAST_DUMPS(probe) != _ENCODER.encode({"a": value, "b": [1]}).encode("ascii"):
                return None
    except Exception:  # an orjson without Fragment: such floats take the standard encoder
        return None
    return fragment


#: ``orjson.Fragment`` when usable (see :func:`_fragment_type`), else ``None``
_FRAGMENT: Any = _fragment_type()


class _SafeConsoleRenderer:
    """structlog's ConsoleRenderer, falling back to JSON when it fails."""

    def __init__(self) -> None:
        self._inner = structlog.dev.ConsoleRenderer(colors=False)

    def __call__(self, logger: Any, name: str, event_dict: EventDict) -> str:
        try:
            text = self._inner(logger, name, dict(event_dict))
            return str(text).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        except Exception:
            return render_json(logger, name, event_dict)


def _context_chain() -> list[Any]:
    """Processors that need the caller's context (contextvars, current span)."""
    return [
        merge_context,
        add_logger_name,
        structlog.stdlib.add_log_level,
        format_positional,
        add_trace_ids,
    ]


def _structlog_chain() -> list[Any]:
    """What runs in the caller's thread for structlog loggers (cleaned before any handler)."""
    return [*_context_chain(), structure_exception, redact_and_clean]


def _post_chain() -> list[Any]:
    """Processors that run just before rendering."""
    return [add_timestamp, add_service, finalize]


# ---------------------------------------------------------------------- handler
class _StdoutHandler(logging.Handler):
    """Writes formatted records to the *current* ``sys.stdout``, one per line.

    Output failures (closed pipe, full disk) are counted and never raised.
    """

    mestres_handler = True

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._stream = stream
        self._failed_once = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(self.format(record))
        except RecursionError:  # pragma: no cover
            raise
        except Exception as exc:
            self.handleError(record, exc)

    def _write(self, line: str) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        stream.write(line + "\n")
        stream.flush()

    def write_line(self, line: str) -> None:
        """Write one rendered line (the direct path, :func:`write_direct`); never raises."""
        try:
            with self.lock:  # type: ignore[union-attr]  # the same lock emit() runs under
                self._write(line)
        except RecursionError:  # pragma: no cover
            raise
        except Exception as exc:
            self.handleError(None, exc)

    def handleError(self, record: logging.LogRecord | None,
                    exc: BaseException | None = None) -> None:
        if not self._failed_once:
            self._failed_once = True
            with contextlib.suppress(Exception):
                sys.stderr.write(f"mestres_observability: writing a log line failed: {exc!r}\n")
        _report("output", "writing a log line failed", exc)


_LEVELNO = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
            "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR,
            "critical": logging.CRITICAL, "fatal": logging.CRITICAL}


def _sole_handler(logger: Any, levelno: int, handler: logging.Handler,
                  formatter: logging.Formatter) -> bool:
    """True when ``handler`` alone would receive a ``levelno`` record of ``logger``."""
    if not isinstance(logger, logging.Logger) or logger.disabled:
        return False
    found = False
    c: logging.Logger | None = logger
    while c is not None:
        if c.filters:
            return False
        for h in c.handlers:
            if h is not handler or found:
                return False
            found = True
        if not c.propagate:
            break
        c = c.parent
    return (found and not handler.filters and levelno >= handler.level
            and handler.formatter is formatter)


def write_direct(logger: Any, name: str, event_dict: EventDict) -> Any:
    """Last structlog processor: render a structlog event and write it straight out.

    A structlog event is already filtered by level, carries its context and is
    cleaned by the time it gets here. When the library's handler is the only
    one that would see the record (no other handler or filter on the way from
    the logger up to the root, the handler keeps the library's formatter),
    building a ``logging.LogRecord`` and going through ``ProcessorFormatter``
    would produce the very same line, so this renders it with the same
    processors and writes it under the handler's lock, skipping the standard
    library. Otherwise (``caplog``, your own handler or filter) the event goes
    to ``logging`` as before, and those handlers see it. The handler is looked
    up at each call, so loggers cached before a re-configuration keep the fast
    path.
    """
    output = _state.output
    levelno = _LEVELNO.get(name)
    if output is None or levelno is None or not _sole_handler(logger, levelno, output[0],
                                                              output[1]):
        return structlog.stdlib.ProcessorFormatter.wrap_for_formatter(logger, name, event_dict)
    handler, _, renderer = output
    try:
        line = str(renderer(logger, name, _finish(event_dict)))
    except Exception as exc:
        handler.handleError(None, exc)
    else:
        handler.write_line(line)
    raise structlog.DropEvent


#: method name -> level number, for the names whose ``level`` on the line is the name itself
#: (``add_log_level``'s mapping: only ``warn`` and ``exception`` are renamed)
_DIRECT_LEVELNO = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                   "error": logging.ERROR, "critical": logging.CRITICAL}


def _chain_steps(std: logging.Logger, name: str, event_dict: EventDict,
                 merged: bool = False) -> EventDict:
    """The library's chain from ``merge_context`` to ``redact_and_clean``, each step skipped
    where it has nothing to do for ``event_dict`` (same result as running them in turn).

    ``std`` is the standard-library logger, ``name`` a key of :data:`_DIRECT_LEVELNO`;
    ``merged``: ``merge_context`` ran already.
    """
    if not merged:
        event_dict = merge_context(std, name, event_dict)
    if "logger" not in event_dict:  # add_logger_name
        if "_record" in event_dict:
            event_dict = add_logger_name(std, name, event_dict)
        else:
            logger_name = std.name
            if logger_name and isinstance(logger_name, str):
                event_dict["logger"] = logger_name
    event_dict["level"] = name  # add_log_level
    if "positional_args" in event_dict:
        event_dict = format_positional(std, name, event_dict)
    if "trace_id" not in event_dict:
        event_dict = add_trace_ids(std, name, event_dict)
    if "exc_info" in event_dict:
        event_dict = structure_exception(std, name, event_dict)
    if "_record" in event_dict or "_from_structlog" in event_dict:
        return redact_and_clean(std, name, event_dict)
    return _state.redactor.clean_event(event_dict)


def _write_steps(std: logging.Logger, name: str, event_dict: EventDict,
                 handler: _StdoutHandler, merged: bool = False) -> None:
    """:func:`_chain_steps`, then what :func:`write_direct` does with the JSON renderer."""
    event_dict = _chain_steps(std, name, event_dict, merged)
    try:
        line = render_json(std, name, _finish(event_dict))
    except Exception as exc:
        handler.handleError(None, exc)
    else:
        handler.write_line(line)


def _direct_output(std: logging.Logger, levelno: int) -> _StdoutHandler | None:
    """The library's handler when a ``levelno`` line of ``std`` would reach it alone, JSON
    rendered (what :func:`write_direct` writes by itself), else ``None``."""
    output = _state.output
    if (output is None or output[2] is not render_json
            or not _sole_handler(std, levelno, output[0], output[1])):
        return None
    return output[0]


_CHAIN_LENGTH = 9  # filter_by_level, the eight of _structlog_chain() and write_direct


def direct_writer(logger: Any, *, access_line: bool = False,
                  ) -> Callable[[str, str, dict[str, Any]], bool] | None:
    """A direct path for the lines of ``logger`` (a bound logger of the library's own), or ``None``.

    ``write(method, event, fields)`` writes the very line ``getattr(logger,
    method)(event, **fields)`` would write (same bytes, same test captures,
    same fault counting) without structlog's wrapper and processor loop, and
    returns True; or it returns False, having written and changed nothing, when
    the result could differ: the logger runs another chain than the one
    :func:`configure_logging` installed last, the line is filtered out by level
    (``isEnabledFor``, checked as ``filter_by_level`` does) or would reach
    another handler or filter (``caplog``, your own: looked up at each call),
    the console format, a field name the wrapper would move under ``fields``.
    Then make the call. ``fields`` is taken over (a fresh dict, in call order).

    ``access_line``: ``fields`` are the access line's, in its order
    (``request_id``, ``method``, ``url``, ``endpoint``, ``status_code``,
    ``duration_seconds``, ``user_agent``, ``ip_address``, ``user_id``,
    ``trace_id``, ``span_id``); the values the library produced itself skip the
    redactor when it would leave them as they are (their names not redacted, the
    method and the names found clean, the ids not past the length).

    ``None`` for a logger that is not one of the library's :class:`BoundLogger`
    on a standard-library logger with the library's chain (structlog configured
    by you before the logger was bound, a lazy proxy that is not cached, your
    own wrapper class).
    """
    if type(logger) is not BoundLogger:
        return None
    parts = structlog_logger_parts(logger)
    chain = _state.chain
    if parts is None or chain is None:
        return None
    processors, std = parts
    context = structlog.get_context(logger)
    if (processors is not chain or len(chain) != _CHAIN_LENGTH
            or not isinstance(std, logging.Logger) or type(context) is not dict):
        return None
    own = ACCESS_OWN_FIELDS if access_line else ()

    def write(method: str, event: str, fields: dict[str, Any]) -> bool:
        levelno = _DIRECT_LEVELNO.get(method)
        if (processors is not _state.chain
                or processors != _state.chain_as_installed  # changed in place since
                or levelno is None or not std.isEnabledFor(levelno)
                or not _MOVED.isdisjoint(fields)):
            return False
        handler = _direct_output(std, levelno)
        if handler is None:
            return False
        if context:  # what the logger has bound comes first, the call's fields win
            fields = {**context, **fields}
        fields["event"] = event
        if own and not context and _own_fields_pass(fields, method, event, std.name):
            _write_own(std, method, fields, own, handler)
        else:
            _write_steps(std, method, fields, handler)
        return True

    return write


#: (the redactor, the method values and the names it leaves as they are) for
#: :func:`_own_fields_pass`, rebuilt when the redactor changes (a re-configuration)
_own_cache: tuple[Redactor | None, set[str], set[str]] = (None, set(), set())
#: what the direct access line's ``own`` fields hold: the request method (a standard one or
#: ``_OTHER``), the status code (int), the duration (float), the span's hex ids
ACCESS_OWN_FIELDS = ("method", "status_code", "duration_seconds", "trace_id", "span_id")
_ID_LENGTH = 32  # the longer of the hex ids; exempt from scanning, cut only past the length


def _own_fields_pass(fields: dict[str, Any], method: str, event: str,
                     logger_name: str) -> bool:
    """True when the redactor would leave the library's own values of ``fields``
    (:data:`ACCESS_OWN_FIELDS`, every one there), the event, logger and level names as they
    are, and the span's ids are given: then :func:`_write_own` gives the line
    :func:`_write_steps` gives (unless the context adds a key a step treats specially,
    which :func:`_write_own` checks). The client- and app-controlled fields (``url``,
    ``user_agent``, ``request_id``, ``ip_address``, ``user_id``, ``endpoint``) and the
    bound context always go through the redactor."""
    global _own_cache
    redactor = _state.redactor
    cache = _own_cache
    if cache[0] is not redactor:
        cache = _own_cache = (redactor, set(), set())
        if redactor.max_length >= _ID_LENGTH and not any(
                redactor.sensitive_key(k) and k not in EXEMPT_KEYS for k in (
                    *ACCESS_OWN_FIELDS, "event", "logger", "level")):
            cache[2].add("")  # the names are safe; the values are checked one by one below
    names = cache[2]
    if not names or not logger_name:  # no name: add_logger_name would set no ``logger``
        return False
    if (event not in names or logger_name not in names or method not in names):
        for text in (event, logger_name, method):
            if text not in names:
                if type(text) is not str or redactor.clean_event({"": text})[""] != text:
                    return False
                if len(names) < 64:
                    names.add(text)
    try:
        request_method = fields["method"]
        status = fields["status_code"]
        duration = fields["duration_seconds"]
        trace_id = fields["trace_id"]
        span_id = fields["span_id"]
    except KeyError:  # no span ids (add_trace_ids has work), or not the access line's fields
        return False
    methods = cache[1]
    if request_method not in methods:
        if (type(request_method) is not str
                or redactor.clean_event({"method": request_method})["method"] != request_method):
            return False
        if len(methods) < 64:
            methods.add(request_method)
    # the ids: hex of 32 and 16 digits (format(..., "032x") of the span's ints), exempt
    # from scanning, within the length checked above
    return (type(status) is int and -(2**63) <= status <= 2**63
            and type(duration) is float and duration - duration == 0.0
            and type(trace_id) is str and type(span_id) is str)


#: keys a step of the chain or :func:`_finish` treats specially, if the context adds them
_CHAIN_KEYS = frozenset({"logger", "level", "timestamp", "service", "event", "_record",
                         "_from_structlog", "positional_args", "exc_info", "trace_id",
                         "span_id"})


def _write_own(std: logging.Logger, name: str, event_dict: dict[str, Any],
               own: tuple[str, ...], handler: _StdoutHandler) -> None:
    """:func:`_write_steps` for a line whose ``own`` values pass unchanged (see
    :func:`_own_fields_pass`): only the other fields and what the context adds go through
    the redactor, and the line is assembled in :func:`_finish`'s order."""
    count = len(event_dict)
    merged = (merge_context(std, name, event_dict) if USER_FIELDS_KEY in event_dict
              else structlog.contextvars.merge_contextvars(std, name, event_dict))
    if merged is not event_dict or (len(event_dict) != count and not _CHAIN_KEYS.isdisjoint(
            list(event_dict)[count:])):
        _write_steps(std, name, merged, handler, merged=True)  # a step has work
        return
    variable = event_dict.copy()
    for key in own:
        del variable[key]
    del variable["event"]
    cleaned = _state.redactor.clean_event(variable)
    service = _state.service
    head = {"timestamp": _timestamp(), "level": name, "event": event_dict["event"],
            "logger": std.name, "service": service}
    head.update(event_dict)  # the own values as they are, every key in its place
    head.update(cleaned)  # the others cleaned (same places)
    if _state.captures:
        for sink in _state.captures:
            sink.append(dict(head))
    try:
        line = _render_own(std, name, head, cleaned)
    except Exception as exc:
        handler.handleError(None, exc)
    else:
        handler.write_line(line)


def _render_own(std: logging.Logger, name: str, head: dict[str, Any],
                cleaned: dict[str, Any]) -> str:
    """:func:`render_json` of :func:`_write_own`'s ``head``, the same text, without the walk
    over every value: the head's own values are known (str, an int status, a finite float
    duration, checked by :func:`_own_fields_pass`), so only the ``cleaned`` ones are walked,
    and a duration outside orjson's exact range is put in ``head`` itself as the
    ``orjson.Fragment`` :func:`_fast_view` would put in a copy. Anything else (a cleaned
    value orjson may spell otherwise, orjson refusing the dict, text outside ASCII) goes to
    :func:`render_json` with the head as it came."""
    dumps = _FAST_DUMPS
    if dumps is not None and _plain(cleaned.values(), 1):
        duration = head["duration_seconds"]
        fragment = _FRAGMENT
        if not (_FLOAT_LOW <= duration < _FLOAT_HIGH or -_FLOAT_HIGH < duration <= -_FLOAT_LOW
                or duration == 0.0):
            if fragment is None:
                return render_json(std, name, head)
            head["duration_seconds"] = fragment(float.__repr__(duration).encode("ascii"))
        try:
            out: bytes = dumps(head)
        except Exception:  # a lone surrogate, an int past 64 bits ...
            pass
        else:
            if out.isascii() and b"\x7f" not in out:
                return out.decode("ascii")
        head["duration_seconds"] = duration  # the float again, in its place
    return render_json(std, name, head)


def configure_logging(config: ObservabilityConfig, faults: FaultReporter,
                      *, stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library's ``logging`` from ``config``.

    Safe to call again (re-init): the previous handler is replaced, never
    stacked, and per-logger levels set earlier are reset.

    Args:
        config: ``log_level``, ``log_levels``, ``log_format``, ``redact_keys``,
            ``redact_card_numbers``, ``log_max_value_length`` and ``service_name`` apply.
        faults: where logging faults are counted.
        stream: write here instead of the current ``sys.stdout`` (tests).
    """
    global _events_logger
    with _lock:
        _state.service = config.service_name
        _state.redactor = Redactor(
            config.redact_keys, card_numbers=config.redact_card_numbers,
            max_length=config.log_max_value_length, patterns=config.redact_patterns,
        )
        _state.faults = faults
        fmt = config.log_format
        if fmt == "auto":
            try:
                out = stream if stream is not None else sys.stdout
                fmt = "console" if out.isatty() else "json"
            except Exception:
                fmt = "json"
        renderer: Any = _SafeConsoleRenderer() if fmt == "console" else render_json
        formatter = _formatter(renderer)
        handler = _StdoutHandler(stream)
        handler.setFormatter(formatter)
        _state.output = (handler, formatter, renderer)
        root = logging.getLogger()
        for old in list(root.handlers):
            if getattr(old, "mestres_handler", False):
                root.removeHandler(old)
        root.addHandler(handler)
        root.setLevel(config.log_level)
        for name in _state.levels_set:
            logging.getLogger(name).setLevel(logging.NOTSET)
        _state.levels_set = []
        for name, level in config.log_levels.items():
            logging.getLogger(name).setLevel(level.upper())
            _state.levels_set.append(name)
        chain: list[Any] = [structlog.stdlib.filter_by_level, *_structlog_chain(), write_direct]
        structlog.configure(
            processors=chain,
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=BoundLogger,
            context_class=dict,
            cache_logger_on_first_use=True,
        )
        _state.chain = chain
        _state.chain_as_installed = list(chain)
        _state.events_std = logging.getLogger(EVENTS_LOGGER)
        _events_logger = None


def _formatter(renderer: Any) -> structlog.stdlib.ProcessorFormatter:
    """The formatter of the library's handler: stdlib records through the same chain."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_context_chain(), add_extra],
        processors=[
            clean_foreign,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *_post_chain(),
            renderer,
        ],
    )


# ---------------------------------------------------------------------- server logs
def server_logging_config(level: str = "INFO") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` mapping: the server's own lines as the library's JSON.

    gunicorn (``gunicorn.error``: start, worker boot and exit, tracebacks) and
    uvicorn (``uvicorn``, ``uvicorn.error``: start, the traceback of an
    unhandled exception) and everything logged to the root logger before
    :func:`~mestres_observability.init_observability` configures logging,
    written to standard output as one JSON object per line by the library's
    formatter (the same fields, redaction and line safety as every other
    line). The servers' access lines are dropped: the library writes its own
    ``http_request`` line per request.

    :mod:`mestres_observability.gunicorn` sets it as gunicorn's
    ``logconfig_dict``; :mod:`mestres_observability.uvicorn` ships it for
    uvicorn's ``--log-config``. Levels of the servers' loggers are left to
    their ``--log-level``; ``level`` is the root logger's until init sets
    ``log_level``.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"mestres_json": {"()": "mestres_observability.logs.server_formatter"}},
        "handlers": {
            "mestres_stdout": {"()": "mestres_observability.logs.server_handler",
                               "formatter": "mestres_json"},
            "mestres_discard": {"class": "logging.NullHandler"},
        },
        "root": {"level": level, "handlers": ["mestres_stdout"]},
        "loggers": {
            "gunicorn.error": {"handlers": ["mestres_stdout"], "propagate": False},
            "gunicorn.access": {"handlers": ["mestres_discard"], "propagate": False},
            "uvicorn": {"handlers": ["mestres_stdout"], "propagate": False},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": ["mestres_discard"], "propagate": False},
        },
    }


def server_formatter() -> logging.Formatter:
    """The library's JSON formatter for the servers' records (see :func:`server_logging_config`).

    Before the library has configured logging, ``service`` is taken from
    ``MESTRES_OBS_SERVICE_NAME`` or ``OTEL_SERVICE_NAME`` when set.
    """
    import os

    if _state.faults is None:  # logging not configured by the library (yet)
        name = os.environ.get("MESTRES_OBS_SERVICE_NAME") or os.environ.get("OTEL_SERVICE_NAME")
        if name:
            _state.service = name
    return _formatter(render_json)


def server_handler() -> logging.Handler:
    """The library's handler (standard output, one line per record, never raises).

    :func:`configure_logging` replaces it on the root logger instead of adding
    a second one.
    """
    return _StdoutHandler()


# ---------------------------------------------------------------------- public API
def configured_for(faults: FaultReporter) -> bool:
    """True when the last :func:`configure_logging` was for the instance counting into ``faults``."""
    return _state.faults is faults


def get_logger(name: str | None = None, /, **initial: Any) -> Any:
    """A structlog logger named ``name`` (the stdlib logger name), with ``initial`` fields bound.

    Example:
        >>> log = get_logger("shop.checkout")
        >>> log.info("cart_loaded", items=3)  # doctest: +SKIP
    """
    if initial and not _MOVED.isdisjoint(initial):
        initial = _move_fields(initial, _MOVED)
    if name is None:
        return structlog.get_logger(**initial)
    return structlog.get_logger(name, **initial)


_events_logger: Any = None


def event_enabled(level: int = logging.INFO) -> bool:
    """False when a business event at ``level`` would be dropped by the configured log level.

    Lets callers skip building an event nobody will see. Known only while the
    library's own logging configuration is in place; otherwise ``True`` (your
    structlog configuration decides).
    """
    std = _own_events_logger()
    return True if std is None else std.isEnabledFor(level)


def _own_events_logger() -> logging.Logger | None:
    """The stdlib logger of business events while the library's chain is the live
    structlog configuration, else ``None`` (someone else configured structlog)."""
    std = _state.events_std
    chain = _state.chain
    if (std is None or chain is None or structlog.get_config()["processors"] is not chain
            or chain != _state.chain_as_installed):  # a processor added in place: the chain
        return None
    return std


def log_event(event: str, /, **fields: Any) -> None:
    """Log a business event (``order_created``, ``payment_processed`` ...) at INFO.

    Fields whose names are reserved (:data:`RESERVED_KEYS`: ``level``,
    ``timestamp``, ``event``, ``trace_id`` ...) or internal to structlog and
    ``logging`` (:data:`INTERNAL_KEYS`: ``_record``, ``positional_args`` ...)
    cannot overwrite the library's own or break the logging: they are moved
    under the ``fields`` key. Emitted inside a span, the line carries that
    span's ``trace_id``. Never raises.
    """
    global _events_logger
    try:
        if not _MOVED_EVENT.isdisjoint(fields):
            fields = _move_fields(fields, _MOVED_EVENT)
        event = event if type(event) is str else str(event)
        std = _own_events_logger()
        if std is not None:
            # the library's chain is live: run it as structlog's logger would, minus the
            # wrapper (no bound context on this logger; level checked here)
            if std.isEnabledFor(logging.INFO):
                fields["event"] = event
                handler = _direct_output(std, logging.INFO)
                if handler is not None:  # the line write_direct would write, written here
                    _write_steps(std, "info", fields, handler)
                    return
                out: Any = fields
                chain = _state.chain or []
                try:
                    for proc in chain[1:]:  # [0] is filter_by_level
                        out = proc(std, "info", out)
                except structlog.DropEvent:
                    return
                args, kwargs = out
                std.info(*args, **kwargs)
            return
        logger = _events_logger
        if logger is None:
            logger = _events_logger = structlog.get_logger(EVENTS_LOGGER)
        logger.info(event, **fields)
    except Exception as exc:
        _report("log_event", "logging a business event failed", exc)


def bind_context(**fields: Any) -> None:
    """Bind fields (``user_id``, ``tenant`` ...) for the rest of the current request or task.

    Every line logged afterwards in this context carries them. The HTTP
    adapters undo what was bound during a request when it ends; outside a
    request, use :func:`request_context` or :func:`clear_context`. A name the
    library or structlog owns (``level``, ``event``, ``_record`` ...) is bound
    under ``fields`` instead; ``request_id``, ``trace_id`` and ``span_id`` set
    the lines' correlation ids.
    """
    structlog.contextvars.bind_contextvars(**_context_fields(fields))


def _context_fields(fields: dict[str, Any]) -> dict[str, Any]:
    if not fields or _MOVED.isdisjoint(fields):
        return fields
    bound = structlog.contextvars.get_contextvars().get(USER_FIELDS_KEY)
    return _move_fields(fields, _MOVED, bound)


def set_user_id(user_id: Any) -> None:
    """Bind ``user_id`` for the rest of the current request (see :func:`bind_context`)."""
    structlog.contextvars.bind_contextvars(user_id=user_id)


def clear_context() -> None:
    """Remove every field bound with :func:`bind_context` in the current context."""
    structlog.contextvars.clear_contextvars()


@contextlib.contextmanager
def request_context(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` (e.g. ``request_id=...``) for the block, then restore the previous context.

    Fields bound inside the block with :func:`bind_context` or
    :func:`set_user_id` are removed too, on success and on error, so nothing
    leaks into the next request served by the same thread or task. Contextvars
    follow the usual rules: a task or thread started inside the block gets a
    copy of the context at that moment.

    Example:
        >>> with request_context(request_id="r-1"):
        ...     set_user_id(42)
    """
    before = structlog.contextvars.get_contextvars()
    tokens = structlog.contextvars.bind_contextvars(**_context_fields(fields))
    try:
        yield
    finally:
        try:
            structlog.contextvars.reset_contextvars(**tokens)
            rebind_structlog_context(before)
        except Exception as exc:  # pragma: no cover - defensive
            _report("context", "restoring the log context failed", exc)



def _chain_live() -> bool:
    """True when structlog and the root logger currently use this module's chain."""
    try:
        processors = structlog.get_config()["processors"]
    except Exception:  # pragma: no cover
        return False
    return redact_and_clean in processors and any(
        getattr(h, "mestres_handler", False) for h in logging.getLogger().handlers
    )


@contextlib.contextmanager
def _capture(config: ObservabilityConfig | None = None) -> Iterator[list[dict[str, Any]]]:
    """Capture processed event dicts (see :func:`mestres_observability.testing.capture_logs`)."""
    sink: list[dict[str, Any]] = []
    previous = (_state.service, _state.redactor)
    if _chain_live():
        # our chain is live: just add a sink (lines are still written)
        _state.captures.append(sink)
        try:
            yield sink
        finally:
            _state.captures.remove(sink)
        return
    old_config = structlog.get_config()
    if config is not None:
        _state.service = config.service_name
        _state.redactor = Redactor(config.redact_keys, card_numbers=config.redact_card_numbers,
                                   max_length=config.log_max_value_length,
                                   patterns=config.redact_patterns)

    def drop(_: Any, __: str, event_dict: EventDict) -> EventDict:
        raise structlog.DropEvent

    structlog.configure(
        processors=[*_structlog_chain(), *_post_chain(), drop],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    global _events_logger
    saved_events, _events_logger = _events_logger, None
    _state.captures.append(sink)
    try:
        yield sink
    finally:
        _state.captures.remove(sink)
        _events_logger = saved_events
        _state.service, _state.redactor = previous
        structlog.configure(**old_config)
