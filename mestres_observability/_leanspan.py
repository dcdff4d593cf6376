"""The lean recording span: the library's own spans without the SDK's per-span machinery.

:mod:`~mestres_observability.tracing` starts the spans the library creates
itself (the SERVER span of each request, business spans, :func:`span`,
``@traced``, Celery and outbound spans) with a :class:`LeanTracer` when the
tracer provider is the library's own and nothing but the library's pipeline
is attached to it (see ``tracing.setup_tracing``). A :class:`LeanSpan` is an
OpenTelemetry API ``Span`` that records what the SDK's span records, with the
same rules, and nothing else:

* **ids and flags** as the SDK's ``RandomIdGenerator`` draws them
  (``random.getrandbits``, never zero), the trace id and trace state of a valid
  parent, the W3C ``sampled`` and ``random`` flags set as the SDK sets them;
* **sampling** as the provider's sampler decides (:class:`SamplingPlan`:
  ``always_on``, ``always_off``, ``traceidratio`` and their ``parentbased_``
  forms); an unsampled span is a ``NonRecordingSpan``, as from the SDK;
* **attributes** within the provider's ``SpanLimits`` (count, value length),
  the oldest evicted first and counted, an updated key moved last; the usual
  values (``str``, ``int``, ``bool``, ``float``) are checked inline, anything
  else is cleaned by the SDK's own ``BoundedAttributes``;
* **events, links, status** (an ``OK`` status is final, ``UNSET`` is ignored,
  a description only with ``ERROR``), ``update_name``, ``record_exception``,
  the context-manager behaviour and the warnings of the SDK for calls on an
  ended span (logged by ``opentelemetry.sdk.trace``, as the SDK does);
* the **resource and instrumentation scope** the SDK's tracer would give it.

What it leaves out is the SDK's cost: no lock per call, no ``BoundedAttributes``
and ``ReadableSpan`` built per span, no processor chain. It is a valid parent:
set in the context with ``trace.set_span_in_context``, every SDK tracer (an
OpenTelemetry instrumentation, your own) finds it current and parents its
spans to it. It reads like a ``ReadableSpan`` (``name``, ``attributes``,
``events``, ``status``...) and :meth:`LeanSpan.readable` gives a real one (for
``testing.captured_spans()``, and for exporters other than OTLP/HTTP).

Export: ended spans join the SDK spans in the same bounded queue and ledger
(``tracing._Pipeline``). With the OTLP/HTTP exporter a batch is encoded by
:func:`encode_spans` straight into the protobuf bytes of an
``ExportTraceServiceRequest``, the same bytes the SDK's encoder produces
(tests compare them), four to five times faster, then sent by the exporter's
own HTTP client (retries, compression, timeout).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import struct
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from random import getrandbits
from time import time_ns
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, INVALID_SPAN

from ._compat import current_span_key, span_context_unpacks, valid_span_context_maker

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, SpanLimits
    from opentelemetry.trace import TraceState
    from opentelemetry.util import types

__all__ = ["LeanSpan", "LeanSwitch", "LeanTracer", "SamplingPlan", "encode_spans",
           "sampling_plan"]

#: The SDK's span logger: the warnings of calls on an ended span come from it, as with SDK spans.
_sdk_log = logging.getLogger("opentelemetry.sdk.trace")
#: The SDK encoder's logger: an attribute value it cannot encode is skipped and logged there.
_encoder_log = logging.getLogger("opentelemetry.exporter.otlp.proto.common._internal")

_MASK64 = (1 << 64) - 1
_MISSING: Any = object()
_UNLIMITED = sys.maxsize
_UNSET_STATUS = Status(StatusCode.UNSET)
#: ``TraceFlags`` by value: bit 0 sampled, bit 1 random trace id (what the SDK can set)
_FLAGS = tuple(TraceFlags(i) for i in range(4))
_get_current_span = trace.get_current_span
#: ``SpanContext`` of ids known valid, from one tuple (``_compat.valid_span_context_maker``)
_valid_context = valid_span_context_maker()
#: a ``SpanContext`` may be read by unpacking it (``_compat.span_context_unpacks``)
_UNPACK = span_context_unpacks()
#: the key of the span in a ``Context`` (``_compat.current_span_key``), or None
_SPAN_KEY = current_span_key()


# ---------------------------------------------------------------------- sampling
class SamplingPlan:
    """A sampler's decision rule: ``always_on``, ``always_off``, ``traceidratio`` and
    their ``parentbased_`` forms, decided as the SDK's samplers decide.

    Attributes:
        parent_based: a valid parent decides (its ``sampled`` flag, remote or local).
        bound: the root decision, sampled when ``trace_id & (2**64 - 1) < bound``
            (``TraceIdRatioBased``'s rule; ``2**64`` for always on, 0 for always off).
    """

    __slots__ = ("bound", "name", "parent_based")

    def __init__(self, name: str, parent_based: bool, bound: int) -> None:
        self.name = name
        self.parent_based = parent_based
        self.bound = bound

    def sampled(self, parent: SpanContext | None, trace_id: int) -> bool:
        """The decision for a span of ``trace_id`` under ``parent`` (``None``: a root span)."""
        if parent is not None and self.parent_based:
            return bool(parent.trace_flags & 1)
        return trace_id & _MASK64 < self.bound

    def __repr__(self) -> str:
        return f"SamplingPlan({self.name!r}, parent_based={self.parent_based}, bound={self.bound})"


def sampling_plan(name: str, ratio: float) -> SamplingPlan | None:
    """The plan of sampler ``name`` (``traces_sampler``) with ``ratio``, or ``None`` when
    the lean span cannot honour that sampler."""
    parent_based = name.startswith("parentbased_")
    root = name[len("parentbased_"):] if parent_based else name
    if root == "always_on":
        bound = 1 << 64
    elif root == "always_off":
        bound = 0
    elif root == "traceidratio":
        bound = round(ratio * (1 << 64))  # TraceIdRatioBased.get_bound_for_rate
    else:
        return None
    return SamplingPlan(name, parent_based, bound)


# ---------------------------------------------------------------------- tracer
class LeanSwitch:
    """Shared by every :class:`LeanTracer` of the process: off once another span processor
    is added to the library's provider (its spans then go to the SDK, as before)."""

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = True


class LeanTracer(trace.Tracer):
    """Starts :class:`LeanSpan` objects where the SDK tracer ``sdk`` would start spans.

    Args:
        sdk: the SDK tracer of the same provider and scope; used for every span
            once ``switch`` is off.
        provider: the SDK provider (its ``resource``, read at export time, so a
            forked worker's ``service.instance.id`` is the one exported).
        plan: the provider's sampler (:func:`sampling_plan`).
        limits: the provider's ``SpanLimits``.
        name, version: the instrumentation scope (as ``provider.get_tracer(name, version)``).
        end_span: called with each ended span (the delegating processor's ``end_lean``).
        extra: processors that see every span start and end (``attach_processor``).
        switch: the process's :class:`LeanSwitch`.
    """

    def __init__(self, sdk: trace.Tracer, provider: Any, plan: SamplingPlan, limits: SpanLimits,
                 name: str, version: str | None, end_span: Callable[[LeanSpan], None],
                 extra: list[Any], switch: LeanSwitch) -> None:
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.sdk = sdk
        self.provider = provider
        self.plan = plan
        self.limits = limits
        version = version or ""
        self.scope = InstrumentationScope(name, version, None, None)
        self.info = getattr(sdk, "instrumentation_info", None)  # deprecated, still on spans
        self.end_span = end_span
        self.extra = extra
        self.switch = switch
        self.max_attributes = _limit(limits.max_span_attributes)
        self.max_length = _limit(limits.max_span_attribute_length)

    def start_span(self, name: str, context: Context | None = None,
                   kind: SpanKind = SpanKind.INTERNAL, attributes: types.Attributes = None,
                   links: Sequence[Link] | None = (), start_time: int | None = None,
                   record_exception: bool = True, set_status_on_exception: bool = True,
                   ) -> trace.Span:
        """A recording :class:`LeanSpan`, or a ``NonRecordingSpan`` when not sampled
        (the SDK tracer's span once another processor was added to the provider)."""
        if not self.switch.on:
            return self.sdk.start_span(name, context, kind, attributes, links, start_time,
                                       record_exception, set_status_on_exception)
        if context is not None and _SPAN_KEY is not None:  # get_current_span(context)
            current: Any = context.get(_SPAN_KEY)
            if current is None or (type(current) is not NonRecordingSpan
                                   and type(current) is not LeanSpan
                                   and not isinstance(current, trace.Span)):
                current = INVALID_SPAN
        else:
            current = _get_current_span(context)
        parent: SpanContext | None = current.get_span_context()
        if parent is not None:
            if _UNPACK and type(parent) is SpanContext:  # is_valid, without a call
                if not parent[5]:
                    parent = None
            elif not parent.is_valid:
                parent = None
        return self._open(name, parent, kind, attributes, links, start_time, context,
                          record_exception, set_status_on_exception, False)

    def start_remote_child(self, name: str, parent: SpanContext, kind: SpanKind,
                           attributes: dict[str, Any]) -> trace.Span | None:
        """:meth:`start_span` under ``parent``, a valid remote span context alone in its
        ``Context`` (what a propagator extracts from a lone ``traceparent``), without that
        ``Context``; ``None`` when the span needs it (the SDK tracer's span, once another
        processor was added; processors that see span starts): then call
        :meth:`start_span` with it.

        ``attributes`` is handed over: the span may keep that dict as its own (values cut
        to the limit in place), so the caller must not use it again.
        """
        if not self.switch.on or self.extra:
            return None
        return self._open(name, parent, kind, attributes, (), None, None, True, True, True)

    def _open(self, name: str, parent: SpanContext | None, kind: SpanKind,
              attributes: types.Attributes, links: Sequence[Link] | None,
              start_time: int | None, context: Context | None, record_exception: bool,
              set_status_on_exception: bool, handed: bool) -> trace.Span:
        """The span of :meth:`start_span` under ``parent`` (a valid context, or ``None``:
        a root span); ``handed``: ``attributes`` is a dict the span may keep."""
        state: TraceState | None
        if parent is None:
            trace_id = getrandbits(128)
            while not trace_id:  # pragma: no cover - one chance in 2**128
                trace_id = getrandbits(128)
            flags = 2  # RandomIdGenerator.is_trace_id_random()
            state = None
        else:
            if _UNPACK and type(parent) is SpanContext:  # its fields without a call each
                trace_id, _, _, parent_flags, state, _ = parent
            else:
                trace_id, parent_flags, state = (parent.trace_id, parent.trace_flags,
                                                 parent.trace_state)
            flags = parent_flags & 2
        plan = self.plan
        if parent is not None and plan.parent_based:
            sampled = parent_flags & 1
        else:
            sampled = 1 if trace_id & _MASK64 < plan.bound else 0
        span_id = getrandbits(64)
        while not span_id:  # pragma: no cover - one chance in 2**64
            span_id = getrandbits(64)
        # the ids are valid (drawn non-zero, or the valid parent's): SpanContext's checks skipped
        ctx = _valid_context((trace_id, span_id, False, _FLAGS[flags | sampled],
                              state if state is not None else DEFAULT_TRACE_STATE, True))
        if not sampled:
            return NonRecordingSpan(ctx)
        return LeanSpan(self, name, ctx, parent, kind, attributes, links, start_time, context,
                        record_exception, set_status_on_exception, handed)

    @contextlib.contextmanager  # the SDK's is also an async context manager
    def start_as_current_span(  # type: ignore[override]
            self, name: str, context: Context | None = None, kind: SpanKind = SpanKind.INTERNAL,
            attributes: types.Attributes = None, links: Sequence[Link] | None = (),
            start_time: int | None = None, record_exception: bool = True,
            set_status_on_exception: bool = True, end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        """:meth:`start_span`, current in the block (as the SDK tracer's)."""
        span = self.start_span(name, context, kind, attributes, links, start_time,
                               record_exception, set_status_on_exception)
        with trace.use_span(span, end_on_exit=end_on_exit, record_exception=record_exception,
                            set_status_on_exception=set_status_on_exception) as current:
            yield current


def _limit(value: int | None) -> int:
    return _UNLIMITED if value is None else value


def _inline(attrs: dict[str, Any], attributes: Mapping[str, Any], length: int) -> bool:
    """Copy ``attributes`` into ``attrs`` when every key is a non-empty ``str`` and every
    value a ``str`` (cut to ``length``), ``int``, ``bool`` or ``float``; False at the first
    item that needs the SDK's cleaning (``attrs`` is then incomplete)."""
    for key, value in attributes.items():
        t = type(value)
        if t is str:
            if len(value) > length:
                value = value[:length]
        elif t is not int and t is not bool and t is not float and not (
                t is tuple and _clean_strings(value, length)):
            return False
        if type(key) is not str or not key:
            return False
        attrs[key] = value
    return True


def _clean_in_place(attributes: dict[str, Any], length: int) -> bool:
    """:func:`_inline` on ``attributes`` itself: True when every key is a non-empty ``str``
    and every value one :func:`_inline` takes, the strings longer than ``length`` cut in
    place; False at the first item that needs the SDK's cleaning (the strings before it
    cut already, which that cleaning, cutting to the same length, leaves as they are)."""
    for key, value in attributes.items():
        t = type(value)
        if t is str:
            if len(value) > length:
                attributes[key] = value[:length]  # a value replaced: the iteration goes on
        elif t is not int and t is not bool and t is not float and not (
                t is tuple and _clean_strings(value, length)):
            return False
        if type(key) is not str or not key:
            return False
    return True


def _clean_strings(value: tuple[Any, ...], length: int) -> bool:
    """True when ``value`` is a non-empty tuple of strings within ``length``: what the SDK's
    cleaning keeps as it is (captured headers are such tuples)."""
    return bool(value) and all(type(item) is str and len(item) <= length for item in value)


# ---------------------------------------------------------------------- span
def _ended(method: str) -> None:
    _sdk_log.warning("Tried calling %s on an ended span.", method)


class LeanSpan(trace.Span):
    """A recording span of the library's own (see the module docstring).

    Start it with :meth:`LeanTracer.start_span`. The OpenTelemetry ``Span`` API
    in full, plus the read side of ``ReadableSpan``.
    """

    __slots__ = ("_attrs", "_context", "_end", "_kind", "_name", "_parent", "_start",
                 "_tracer")

    # rarely set: class defaults, stored on the instance only when they change
    _dropped = 0
    _events: Any = ()
    _links: Any = ()
    _status = _UNSET_STATUS
    _record_exception = True
    _set_status_on_exception = True

    def __init__(self, tracer: LeanTracer, name: str, context: SpanContext,
                 parent: SpanContext | None, kind: SpanKind, attributes: types.Attributes,
                 links: Sequence[Link] | None, start_time: int | None,
                 parent_context: Context | None, record_exception: bool = True,
                 set_status_on_exception: bool = True, handed: bool = False) -> None:
        self._tracer = tracer
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._end: int | None = None
        if handed and type(attributes) is dict and len(attributes) <= tracer.max_attributes \
                and _clean_in_place(attributes, tracer.max_length):
            self._attrs = attributes  # the caller's dict, clean: kept, not copied
        else:
            attrs: dict[str, Any] = {}
            self._attrs = attrs
            if attributes and (len(attributes) > tracer.max_attributes
                               or not _inline(attrs, attributes, tracer.max_length)):
                attrs.clear()  # a key or value the SDK's rules must clean
                self._store_all(attributes)
        if links:
            self._add_links(links)
        if not record_exception:
            self._record_exception = False
        if not set_status_on_exception:
            self._set_status_on_exception = False
        self._start = start_time if start_time is not None else time_ns()
        extra = tracer.extra
        if extra:
            for processor in extra:
                processor.on_start(self, parent_context=parent_context)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(name="{self._name}", context={self._context})'

    # ------------------------------------------------------------------ attributes
    def _store(self, key: str, value: Any) -> None:
        """Insert one clean attribute as ``BoundedAttributes`` does (oldest evicted first)."""
        attrs = self._attrs
        cap = self._tracer.max_attributes
        if cap == 0:
            self._dropped += 1
            return
        # pop, not "in" then del: another thread may set the same key meanwhile
        if attrs.pop(key, _MISSING) is _MISSING and len(attrs) >= cap:
            with contextlib.suppress(StopIteration, RuntimeError):
                attrs.pop(next(iter(attrs)), None)
            self._dropped += 1
        attrs[key] = value

    def _store_all(self, attributes: Mapping[str, Any]) -> None:
        """Clean ``attributes`` with the SDK's own rules, then store them."""
        if self._tracer.max_attributes == 0:
            self._dropped += len(attributes)
            return
        cleaned = BoundedAttributes(None, attributes, max_value_len=_known(self._tracer.max_length))
        self._dropped += cleaned.dropped
        for key in cleaned:
            self._store(key, cleaned[key])

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        """Set one attribute (ignored, with the SDK's warning, once the span ended)."""
        if self._end is not None:
            _sdk_log.warning("Setting attribute on ended span.")
            return
        t = type(value)
        if t is str:
            length = self._tracer.max_length
            if len(value) > length:  # type: ignore[arg-type]
                value = value[:length]  # type: ignore[index]
        elif t is not int and t is not bool and t is not float:
            self._set_slow(key, value)
            return
        if type(key) is not str or not key:
            self._set_slow(key, value)
            return
        attrs = self._attrs
        if attrs.pop(key, _MISSING) is _MISSING and len(attrs) >= self._tracer.max_attributes:
            self._store(key, value)
            return
        attrs[key] = value

    def _set_slow(self, key: Any, value: Any) -> None:
        if not key or not isinstance(key, str):
            _sdk_log.warning("invalid key `%s`. must be non-empty string. Dropping key from "
                             "attributes.", key)
            self._dropped += 1
            return
        if self._tracer.max_attributes == 0:
            self._dropped += 1
            return
        cleaned = BoundedAttributes(None, None, immutable=False,
                                    max_value_len=_known(self._tracer.max_length))
        cleaned[key] = value
        self._store(key, cleaned[key])

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """Set several attributes (ignored, with the SDK's warning, once the span ended)."""
        if self._end is not None:
            _sdk_log.warning("Setting attribute on ended span.")
            return
        attrs = self._attrs
        cap = self._tracer.max_attributes
        length = self._tracer.max_length
        done = 0
        for key, value in attributes.items():
            t = type(value)
            if t is str:
                if len(value) > length:  # type: ignore[arg-type]
                    value = value[:length]  # type: ignore[index]
            elif t is not int and t is not bool and t is not float and not (
                    t is tuple and _clean_strings(value, length)):  # type: ignore[arg-type]
                break
            if type(key) is not str or not key:
                break
            if attrs.pop(key, _MISSING) is _MISSING and len(attrs) >= cap:
                break
            attrs[key] = value
            done += 1
        else:
            return
        # the rest, from the first item the inline checks cannot take, as the SDK does
        self._store_all(dict(itertools.islice(attributes.items(), done, None)))

    # ------------------------------------------------------------------ events, links
    def add_event(self, name: str, attributes: types.Attributes = None,
                  timestamp: int | None = None) -> None:
        """Add an event (limits as the SDK's: ``max_events``, ``max_event_attributes``)."""
        from opentelemetry.sdk.trace import Event

        limits = self._tracer.limits
        bounded = BoundedAttributes(limits.max_event_attributes, attributes,
                                    max_value_len=limits.max_attribute_length, immutable=True)
        if self._end is not None:
            _ended("_add_event")
            return
        events = self._events
        if not events:
            from opentelemetry.sdk.util import BoundedList

            events = self._events = BoundedList(limits.max_events)
        events.append(Event(name=name, attributes=bounded, timestamp=timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        """Add a link (limits as the SDK's: ``max_links``, ``max_link_attributes``)."""
        if not _valid_link(context, attributes):
            return
        limits = self._tracer.limits
        link = Link(context, BoundedAttributes(limits.max_link_attributes, attributes,
                                               max_value_len=limits.max_attribute_length,
                                               immutable=True))
        if self._end is not None:
            _ended("_add_link")
            return
        self._link_list().append(link)

    def _link_list(self) -> Any:
        links = self._links
        if not links:
            from opentelemetry.sdk.util import BoundedList

            links = self._links = BoundedList(self._tracer.limits.max_links)
        return links

    def _add_links(self, links: Sequence[Link]) -> None:
        """The links given at start, as the SDK keeps them (valid ones, bounded)."""
        limits = self._tracer.limits
        kept = self._link_list()
        for link in links:
            if link and _valid_link(link.context, link.attributes):
                kept.append(Link(link.context, BoundedAttributes(
                    limits.max_link_attributes, link.attributes,
                    max_value_len=limits.max_attribute_length, immutable=True)))

    # ------------------------------------------------------------------ the rest of the API
    def get_span_context(self) -> SpanContext:
        """This span's context (ids, flags, trace state)."""
        return self._context

    def update_name(self, name: str) -> None:
        """Rename the span (ignored, with the SDK's warning, once it ended)."""
        if self._end is not None:
            _ended("update_name")
            return
        self._name = name

    def is_recording(self) -> bool:
        """True until :meth:`end`."""
        return self._end is None

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """Set the status with the SDK's rules: ``OK`` is final, ``UNSET`` is ignored."""
        if self._end is not None:
            _ended("set_status")
            return
        if isinstance(status, Status):
            if self._status.status_code is StatusCode.OK or status.status_code is StatusCode.UNSET:
                return
            if description is not None:
                _sdk_log.warning("Description %s ignored. Use either `Status` or "
                                 "`(StatusCode, Description)`", description)
            self._status = status
        elif isinstance(status, StatusCode):
            if self._status.status_code is StatusCode.OK or status is StatusCode.UNSET:
                return
            self._status = Status(status, description)

    def record_exception(self, exception: BaseException, attributes: types.Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        """Record ``exception`` as the SDK does (an ``exception`` event)."""
        stacktrace = "".join(traceback.format_exception(exception))
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        exception_type = f"{module}.{qualname}" if module and module != "builtins" else qualname
        event: dict[str, Any] = {
            "exception.type": exception_type,
            "exception.message": str(exception),
            "exception.stacktrace": stacktrace,
            "exception.escaped": str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event(name="exception", attributes=event, timestamp=timestamp)

    def end(self, end_time: int | None = None) -> None:
        """End the span: it goes to the export pipeline (a second call only warns)."""
        if self._end is not None:
            _sdk_log.warning("Calling end() on an ended span.")
            return
        self._end = end_time if end_time is not None else time_ns()
        self._tracer.end_span(self)

    def end_server(self, status: int, route: str | None = None, name: str | None = None) -> bool:
        """End the span with ``http.response.status_code`` set to ``status`` (then
        ``http.route`` to ``route`` and the name to ``name``, when given): what
        ``update_name(name)``, ``set_attributes({...})`` and ``end()`` do, in one call.

        False, with nothing done, when that needs the general path: the span ended
        already, the attributes within reach of ``max_span_attributes`` (the eviction and
        dropped count of :meth:`set_attributes`), ``status`` not an ``int`` or ``route``
        not a ``str`` (the SDK's cleaning); the caller then makes those calls.
        """
        if self._end is not None or type(status) is not int:
            return False
        attrs = self._attrs
        tracer = self._tracer
        if route is None:
            if len(attrs) >= tracer.max_attributes:
                return False
            # set_attributes' inline path: an existing key moves last
            attrs.pop("http.response.status_code", None)
            attrs["http.response.status_code"] = status
        else:
            if type(route) is not str or len(attrs) + 2 > tracer.max_attributes:
                return False
            if len(route) > tracer.max_length:
                route = route[:tracer.max_length]
            attrs.pop("http.response.status_code", None)
            attrs["http.response.status_code"] = status
            attrs.pop("http.route", None)
            attrs["http.route"] = route
        if name is not None:
            self._name = name
        self._end = time_ns()
        tracer.end_span(self)
        return True

    def __exit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                 exc_tb: TracebackType | None) -> None:
        """End the span, recording an exception first (as the SDK's span does)."""
        if exc_val is not None and self._end is None:
            if self._record_exception:
                self.record_exception(exception=exc_val, escaped=True)
            if self._set_status_on_exception:
                self.set_status(Status(status_code=StatusCode.ERROR,
                                       description=f"{type(exc_val).__name__}: {exc_val}"))
        super().__exit__(exc_type, exc_val, exc_tb)

    # ------------------------------------------------------------------ ReadableSpan's read side
    @property
    def name(self) -> str:
        """The span name."""
        return self._name

    @property
    def context(self) -> SpanContext:
        """The span's context (as ``ReadableSpan.context``)."""
        return self._context

    @property
    def kind(self) -> SpanKind:
        """The span kind."""
        return self._kind

    @property
    def parent(self) -> SpanContext | None:
        """The parent's context, ``None`` for a root span."""
        return self._parent

    @property
    def start_time(self) -> int:
        """Start, nanoseconds since the epoch."""
        return self._start

    @property
    def end_time(self) -> int | None:
        """End, nanoseconds since the epoch (``None`` while recording)."""
        return self._end

    @property
    def status(self) -> Status:
        """The status."""
        return self._status

    @property
    def attributes(self) -> Mapping[str, Any]:
        """The attributes (read-only view)."""
        return MappingProxyType(self._attrs)

    @property
    def events(self) -> Sequence[Any]:
        """The events (SDK ``Event`` objects)."""
        return tuple(self._events)

    @property
    def links(self) -> Sequence[Link]:
        """The links."""
        return tuple(self._links)

    @property
    def dropped_attributes(self) -> int:
        """Attributes dropped by the limits."""
        return self._dropped

    @property
    def dropped_events(self) -> int:
        """Events dropped by ``max_events``."""
        return getattr(self._events, "dropped", 0)

    @property
    def dropped_links(self) -> int:
        """Links dropped by ``max_links``."""
        return getattr(self._links, "dropped", 0)

    @property
    def resource(self) -> Any:
        """The provider's resource."""
        return self._tracer.provider.resource

    @property
    def instrumentation_scope(self) -> Any:
        """The instrumentation scope (as the SDK tracer's)."""
        return self._tracer.scope

    def readable(self) -> ReadableSpan:
        """This span as an SDK ``ReadableSpan`` (for processors and exporters that need one)."""
        from opentelemetry.sdk.trace import ReadableSpan

        attributes: Any = dict(self._attrs)
        if self._dropped:
            attributes = BoundedAttributes(None, attributes, immutable=True)
            attributes.dropped = self._dropped
        tracer = self._tracer
        return ReadableSpan(
            name=self._name, context=self._context, parent=self._parent,
            resource=tracer.provider.resource, attributes=attributes, events=self._events,
            links=self._links, kind=self._kind, status=self._status, start_time=self._start,
            end_time=self._end, instrumentation_info=tracer.info,
            instrumentation_scope=tracer.scope,
        )

    def scrub(self, scrubber: Any) -> None:
        """Redact this ended span's attributes and event attributes in place with
        ``scrubber`` (a :class:`~mestres_observability._redact.SpanScrubber`), before
        anything sees it (``scrub_span_attributes``)."""
        attrs = self._attrs
        if attrs:
            scrubbed = scrubber.attributes(attrs)
            if scrubbed is not None:
                attrs.update(scrubbed)  # the same keys: their order is kept
        events = self._events
        if events:
            found = scrub_events(scrubber, events, getattr(events, "dropped", 0))
            if found is not None:
                self._events = found

    def to_json(self, indent: int | None = 4) -> str:
        """``ReadableSpan.to_json`` of this span."""
        return str(self.readable().to_json(indent))

    def otlp(self) -> bytes:
        """This span as the bytes of an OTLP ``Span`` message (see :func:`encode_spans`)."""
        ctx = self._context
        parent = self._parent
        name = self._name.encode()
        parts = [b"\x0a\x10", ctx.trace_id.to_bytes(16, "big"), b"\x12\x08",
                 ctx.span_id.to_bytes(8, "big")]
        state = ctx.trace_state
        if state:
            _field(parts, b"\x1a", _trace_state(state))
        if parent is not None:
            parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
        if name:
            parts += (b"\x2a", _varint(len(name)), name)
        parts += (b"\x30", _SMALL[self._kind.value + 1], b"\x39", _pack_q(self._start),
                  b"\x41", _pack_q(self._end or 0))
        _attributes(parts, b"\x4a", self._attrs)
        if self._dropped:
            parts += (b"\x50", _varint(self._dropped))
        events, links = self._events, self._links
        _tail(parts, events, getattr(events, "dropped", 0), links, getattr(links, "dropped", 0),
              self._status)
        parts += (b"\x85\x01", _REMOTE_FLAGS if parent is not None and parent.is_remote
                  else _LOCAL_FLAGS)
        return b"".join(parts)


def bounded_list(items: Sequence[Any], dropped: int) -> Any:
    """``items`` in an SDK ``BoundedList`` whose ``dropped`` count is ``dropped`` (what
    ``ReadableSpan.dropped_events`` / ``dropped_links`` read)."""
    from opentelemetry.sdk.util import BoundedList

    out: Any = BoundedList(None)
    out.extend(items)
    out.dropped = dropped
    return out


def scrub_events(scrubber: Any, events: Sequence[Any], dropped: int) -> Any:
    """``events`` with each event's attributes redacted by ``scrubber``, as a
    ``BoundedList`` keeping ``dropped``; ``None`` when nothing needed redacting."""
    changed: list[Any] | None = None
    for i, event in enumerate(events):
        attrs = scrubber.attributes(event.attributes)
        if attrs is None:
            continue
        from opentelemetry.sdk.trace import Event

        if changed is None:
            changed = list(events)
        bounded = BoundedAttributes(None, attrs, immutable=True)
        bounded.dropped = _dropped(event)
        changed[i] = Event(name=event.name, attributes=bounded, timestamp=event.timestamp)
    return None if changed is None else bounded_list(changed, dropped)


def _known(limit: int) -> int | None:
    return None if limit == _UNLIMITED else limit


def _valid_link(context: SpanContext, attributes: types.Attributes) -> bool:
    """The SDK's rule: a link needs a valid context, or attributes, or a trace state."""
    return bool(context and (context.is_valid or (attributes or context.trace_state)))


# ---------------------------------------------------------------------- OTLP encoding
# Protobuf wire format of opentelemetry/proto/{collector/trace,trace,common,resource}/v1,
# fields in field-number order as the protobuf runtime writes them, proto3 defaults
# (empty strings, zeros) left out, oneof members (AnyValue) always written.
_SMALL = tuple(bytes((i,)) for i in range(128))
_pack_q = struct.Struct("<Q").pack
_pack_d = struct.Struct("<d").pack
_pack_i = struct.Struct("<I").pack
_LOCAL_FLAGS = _pack_i(0x100)  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_REMOTE_FLAGS = _pack_i(0x300)  # ... | SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_KEYS: dict[str, bytes] = {}  # attribute key -> its encoded KeyValue.key field
_PAIRS: dict[tuple[str, str], bytes] = {}  # (key, short str value) -> its KeyValue message


def _varint(n: int) -> bytes:
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n > 127:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(parts: list[bytes], tag: bytes, payload: bytes) -> None:
    """Append a length-delimited field."""
    n = len(payload)
    parts += (tag, _SMALL[n] if n < 128 else _varint(n), payload)


def _key(key: str) -> bytes:
    found = _KEYS.get(key)
    if found is None:
        raw = key.encode()
        found = (b"\x0a" + _varint(len(raw)) + raw) if raw else b""
        if len(_KEYS) < 4096:
            _KEYS[key] = found
    return found


def _any_value(value: Any) -> bytes:
    """An ``AnyValue`` message, with the SDK encoder's type tests in its order."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        raw = value.encode()
        return b"\x0a" + _varint(len(raw)) + raw
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            raise ValueError(f"Value out of range: {value}")
        return b"\x18" + _varint(value & _MASK64)
    if isinstance(value, float):
        return b"\x21" + _pack_d(value)
    if isinstance(value, bytes):
        return b"\x3a" + _varint(len(value)) + value
    if isinstance(value, Sequence):
        parts: list[bytes] = []
        for item in value:
            _field(parts, b"\x0a", _any_value(item))
        inner = b"".join(parts)
        return b"\x2a" + _varint(len(inner)) + inner
    if isinstance(value, Mapping):
        parts = []
        for k, v in value.items():
            _field(parts, b"\x0a", _key_value(str(k), v))
        inner = b"".join(parts)
        return b"\x32" + _varint(len(inner)) + inner
    raise Exception(f"Invalid type {type(value)} of value {value}")  # as the SDK encoder


def _key_value(key: str, value: Any) -> bytes:
    """A ``KeyValue`` message; raises where the SDK's encoder raises."""
    t = type(value)
    if t is str:
        if len(value) <= 64:  # a short string value: most repeat (methods, routes, hosts)
            found = _PAIRS.get((key, value))
            if found is not None:
                return found
        raw: bytes = value.encode()
        n = len(raw)
        if n < 126:
            kv = _key(key) + b"\x12" + _SMALL[n + 2] + b"\x0a" + _SMALL[n] + raw
            if len(value) <= 64 and len(_PAIRS) < 4096:
                _PAIRS[(key, value)] = kv
            return kv
        any_value = b"\x0a" + _varint(n) + raw
    elif t is int:
        if not -(1 << 63) <= value < (1 << 63):
            raise ValueError(f"Value out of range: {value}")
        any_value = b"\x18" + _varint(value & _MASK64)
    elif t is bool:
        any_value = b"\x10\x01" if value else b"\x10\x00"
    elif t is float:
        any_value = b"\x21" + _pack_d(value)
    else:
        any_value = _any_value(value)
    n = len(any_value)
    return _key(key) + b"\x12" + (_SMALL[n] if n < 128 else _varint(n)) + any_value


def _attributes(parts: list[bytes], tag: bytes, attributes: Mapping[str, Any] | None) -> None:
    """Append each attribute as a ``KeyValue`` field; one that cannot be encoded is skipped
    and logged, as the SDK's encoder does."""
    if not attributes:
        return
    for key, value in list(attributes.items()):
        try:
            kv = _key_value(key, value)
        except Exception as error:
            _encoder_log.exception("Failed to encode key %s: %s", key, error)
            continue
        n = len(kv)
        parts += (tag, _SMALL[n] if n < 128 else _varint(n), kv)


def _trace_state(state: Any) -> bytes:
    return ",".join([f"{k}={v}" for k, v in state.items()]).encode()


def _dropped(obj: Any) -> int:
    """``dropped_attributes`` of an event or link (a ``BoundedAttributes`` count)."""
    attributes = getattr(obj, "attributes", None)
    return attributes.dropped if isinstance(attributes, BoundedAttributes) else 0


def _tail(parts: list[bytes], events: Any, dropped_events: int, links: Any,
          dropped_links: int, status: Status | None) -> None:
    """Events, dropped events, links, dropped links and status (fields 11-15) of a span."""
    for event in events:
        inner: list[bytes] = []
        if event.timestamp:
            inner += (b"\x09", _pack_q(event.timestamp))
        raw = event.name.encode()
        if raw:
            _field(inner, b"\x12", raw)
        _attributes(inner, b"\x1a", event.attributes)
        dropped = _dropped(event)
        if dropped:
            inner += (b"\x20", _varint(dropped))
        _field(parts, b"\x5a", b"".join(inner))
    if dropped_events:
        parts += (b"\x60", _varint(dropped_events))
    for link in links:
        ctx = link.context
        inner = [b"\x0a\x10", ctx.trace_id.to_bytes(16, "big"), b"\x12\x08",
                 ctx.span_id.to_bytes(8, "big")]
        # (no trace_state: the SDK's encoder leaves a link's out)
        _attributes(inner, b"\x22", link.attributes)
        dropped = _dropped(link)
        if dropped:
            inner += (b"\x28", _varint(dropped))
        inner += (b"\x35", _REMOTE_FLAGS if ctx.is_remote else _LOCAL_FLAGS)
        _field(parts, b"\x6a", b"".join(inner))
    if dropped_links:
        parts += (b"\x70", _varint(dropped_links))
    if status is not None:
        code = status.status_code.value
        message = (status.description or "").encode()
        if not message and not code:
            parts.append(b"\x7a\x00")
        else:
            inner = []
            if message:
                _field(inner, b"\x12", message)
            if code:
                inner += (b"\x18", _varint(code))
            _field(parts, b"\x7a", b"".join(inner))


def _readable_otlp(span: ReadableSpan) -> bytes:
    """An SDK ``ReadableSpan`` as the bytes of an OTLP ``Span`` message (public properties)."""
    ctx = span.get_span_context()
    assert ctx is not None
    parent = span.parent
    parts = [b"\x0a\x10", ctx.trace_id.to_bytes(16, "big"), b"\x12\x08",
             ctx.span_id.to_bytes(8, "big")]
    if ctx.trace_state is not None:
        state = _trace_state(ctx.trace_state)
        if state:
            _field(parts, b"\x1a", state)
    if parent:
        parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    name = span.name.encode()
    if name:
        _field(parts, b"\x2a", name)
    parts += (b"\x30", _SMALL[span.kind.value + 1])
    if span.start_time:
        parts += (b"\x39", _pack_q(span.start_time))
    if span.end_time:
        parts += (b"\x41", _pack_q(span.end_time))
    _attributes(parts, b"\x4a", span.attributes)
    if span.dropped_attributes:
        parts += (b"\x50", _varint(span.dropped_attributes))
    _tail(parts, span.events, span.dropped_events, span.links, span.dropped_links, span.status)
    parts += (b"\x85\x01", _REMOTE_FLAGS if parent and parent.is_remote else _LOCAL_FLAGS)
    return b"".join(parts)


_RESOURCES: dict[int, tuple[Any, bytes]] = {}  # id(resource) -> (resource, Resource message)
_SCOPES: dict[int, tuple[Any, bytes]] = {}  # id(scope) -> (scope, InstrumentationScope message)


def _resource_message(resource: Any) -> bytes:
    found = _RESOURCES.get(id(resource))
    if found is not None and found[0] is resource:
        return found[1]
    parts: list[bytes] = []
    _attributes(parts, b"\x0a", resource.attributes)
    encoded = b"".join(parts)
    if len(_RESOURCES) >= 64:
        _RESOURCES.clear()
    _RESOURCES[id(resource)] = (resource, encoded)
    return encoded


def _scope_message(scope: Any) -> bytes:
    if scope is None:
        return b""
    found = _SCOPES.get(id(scope))
    if found is not None and found[0] is scope:
        return found[1]
    parts: list[bytes] = []
    for tag, text in ((b"\x0a", scope.name), (b"\x12", scope.version)):
        raw = (text or "").encode()
        if raw:
            _field(parts, tag, raw)
    _attributes(parts, b"\x1a", scope.attributes)
    encoded = b"".join(parts)
    if len(_SCOPES) >= 256:
        _SCOPES.clear()
    _SCOPES[id(scope)] = (scope, encoded)
    return encoded


def encode_spans(spans: Sequence[Any]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of ``spans`` (lean or SDK ``ReadableSpan``).

    The same bytes as ``encode_spans(spans).SerializePartialToString()`` of the
    OTLP exporter's encoder: spans grouped by resource, then by instrumentation
    scope, in order of first appearance, each in batch order. Raises where that
    encoder raises for a whole span (a name that is not valid UTF-8); an
    attribute it cannot encode is skipped and logged, as there.
    """
    groups: list[tuple[Any, list[tuple[Any, list[bytes]]]]] = []
    buckets: dict[tuple[int, int], list[bytes]] = {}
    for span in spans:
        body = span.otlp() if type(span) is LeanSpan else _readable_otlp(span)
        resource = span.resource
        scope = span.instrumentation_scope or None
        key = (id(resource), id(scope))
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = _bucket(groups, resource, scope)
        bucket.append(body)
    out: list[bytes] = []
    for resource, scopes in groups:
        rs: list[bytes] = []
        _field(rs, b"\x0a", _resource_message(resource))
        for scope, bodies in scopes:
            ss: list[bytes] = []
            _field(ss, b"\x0a", _scope_message(scope))
            for body in bodies:
                _field(ss, b"\x12", body)
            schema = scope.schema_url if scope else None
            if schema:
                _field(ss, b"\x1a", schema.encode())
            _field(rs, b"\x12", b"".join(ss))
        if resource.schema_url:
            _field(rs, b"\x1a", resource.schema_url.encode())
        _field(out, b"\x0a", b"".join(rs))
    return b"".join(out)


def _bucket(groups: list[tuple[Any, list[tuple[Any, list[bytes]]]]], resource: Any,
            scope: Any) -> list[bytes]:
    """The span list of ``(resource, scope)``, equal objects sharing one (the SDK encoder
    groups by equality; the batch loop looks up by identity first)."""
    scopes: list[tuple[Any, list[bytes]]] | None = None
    for known, known_scopes in groups:
        if known == resource:
            scopes = known_scopes
            break
    if scopes is None:
        scopes = []
        groups.append((resource, scopes))
    for known_scope, bodies in scopes:
        if known_scope == scope:
            return bodies
    bodies = []
    scopes.append((scope, bodies))
    return bodies
