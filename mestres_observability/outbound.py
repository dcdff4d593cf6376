"""Outbound HTTP calls (payment, shipping, stock APIs) through ``requests`` and ``httpx``.

Each call gets:

* ``http_client_requests_total{method,host,status}`` (``status`` is the code,
  or ``error`` when no response came back) and
  ``http_client_request_duration_seconds{method,host}``; ``host`` is the
  target's host name (with its port when not the scheme's default) and passes
  the cardinality guard;
* a ``CLIENT`` span named after the method, with the OpenTelemetry HTTP
  semantic-convention attributes (``http.request.method``, ``url.full``
  without credentials and with sensitive query values redacted,
  ``server.address``, ``server.port``, ``http.response.status_code``,
  ``error.type``), current during the call, so the exemplars of the metrics
  point at it;
* the trace context (W3C ``traceparent`` and the configured propagators)
  injected into the request headers, so the called service joins the trace.

Wire it once::

    from mestres_observability.outbound import instrument_httpx, instrument_requests

    instrument_requests()              # every requests.Session (requests.get too)
    instrument_httpx()                 # every httpx client, sync and async

or per client::

    session = instrument_requests(requests.Session())
    client = httpx.Client(transport=HTTPXTransport())
    aclient = httpx.AsyncClient(transport=AsyncHTTPXTransport())

The wrappers look the current instance up per call; a fault in them is
counted under ``component="outbound"`` and never reaches the call. Use either
these or OpenTelemetry's ``opentelemetry-instrumentation-requests``/``-httpx``
for the spans, not both (each opens a CLIENT span).
"""

from __future__ import annotations

import functools
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry import trace as otel_trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ._current import get_observability
from .config import DEFAULT_REDACT_QUERY_PARAMS
from .errors import MissingExtraError
from .http import normalize_method, redact_query
from .tracing import record_exception

__all__ = ["AsyncHTTPXTransport", "HTTPXTransport", "instrument_httpx", "instrument_requests",
           "uninstrument_httpx", "uninstrument_requests"]

_MARK = "mestres_observability_outbound"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDACT = frozenset(DEFAULT_REDACT_QUERY_PARAMS)


def _target(url: str) -> tuple[str, str, int | None, str]:
    """``(host label, server.address, server.port, url.full)`` of ``url``."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    scheme = parts.scheme.lower()
    default = _DEFAULT_PORTS.get(scheme)
    shown = f"[{host}]" if ":" in host else host  # IPv6 in brackets
    label = shown if port is None or port == default else f"{shown}:{port}"
    netloc = shown if port is None else f"{shown}:{port}"
    full = urllib.parse.urlunsplit((scheme, netloc, parts.path,
                                    redact_query(parts.query, _REDACT), ""))
    return label or "unknown", host, port if port is not None else default, full


class _Call:
    """One outbound call, from :meth:`start` (headers injected) to :meth:`finish`."""

    __slots__ = ("host", "labels", "metrics", "obs", "span", "start", "token")

    def __init__(self, obs: Any, method: str, url: str, headers: Any) -> None:
        self.obs = obs
        self.span: Any = None
        self.token: Any = None
        m = normalize_method(method.upper())
        host, address, port, full = _target(url)
        self.labels = (m, host)
        tracing = obs.tracing
        if tracing.enabled:
            attributes: dict[str, Any] = {"http.request.method": m, "url.full": full,
                                          "server.address": address}
            if port is not None:
                attributes["server.port"] = port
            if m == "_OTHER":
                attributes["http.request.method_original"] = method[:64]
            span = tracing.own_tracer.start_span(m if m != "_OTHER" else "HTTP",
                                                 kind=SpanKind.CLIENT, attributes=attributes)
            self.span = span
            self.token = otel_context.attach(otel_trace.set_span_in_context(span))
        propagate.inject(headers)
        self.start = time.perf_counter()

    def finish(self, status: int | None, exc: BaseException | None) -> None:
        duration = time.perf_counter() - self.start
        obs = self.obs
        try:
            if obs.config.http_client_metrics:
                metrics = obs.metrics
                exemplar = metrics.current_exemplar()
                method, host = self.labels
                metrics.http_client_requests_total.inc(
                    (method, host, str(status) if status is not None else "error"), 1.0, exemplar)
                metrics.http_client_request_duration_seconds.observe(self.labels, duration,
                                                                     exemplar)
            span = self.span
            if span is not None:
                if status is not None:
                    span.set_attribute("http.response.status_code", status)
                    if status >= 400:
                        span.set_attribute("error.type", str(status))
                        span.set_status(Status(StatusCode.ERROR))
                if exc is not None:
                    record_exception(span, exc)
                    span.set_attribute("error.type", type(exc).__qualname__)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.end()
        except Exception as err:
            obs.faults.report("outbound", "finish", "recording an outbound call failed", err)
        finally:
            if self.token is not None:
                otel_context.detach(self.token)


def _begin(method: str, url: str, headers: Any) -> _Call | None:
    obs = get_observability()
    if not obs.config.enabled:
        return None
    try:
        return _Call(obs, method, url, headers)
    except Exception as exc:
        obs.faults.report("outbound", "start", "instrumenting an outbound call failed", exc)
        return None


def _measured(method: str, url: str, headers: Any, send: Callable[[], Any]) -> Any:
    """``send()`` measured and traced as one outbound call (the response has ``status_code``)."""
    call = _begin(method, url, headers)
    if call is None:
        return send()
    try:
        response = send()
    except BaseException as exc:
        call.finish(None, exc)
        raise
    call.finish(response.status_code, None)
    return response


async def _ameasured(method: str, url: str, headers: Any,
                     send: Callable[[], Awaitable[Any]]) -> Any:
    """The awaited counterpart of :func:`_measured`."""
    call = _begin(method, url, headers)
    if call is None:
        return await send()
    try:
        response = await send()
    except BaseException as exc:
        call.finish(None, exc)
        raise
    call.finish(response.status_code, None)
    return response


# ---------------------------------------------------------------------- requests
def _requests_send(original: Any) -> Any:
    @functools.wraps(original)
    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        return _measured(request.method or "GET", request.url or "", request.headers,
                         lambda: original(self, request, **kwargs))

    setattr(send, _MARK, original)
    return send


def instrument_requests(session: Any = None) -> Any:
    """Measure and trace ``requests`` calls: every session, or only ``session``.

    Args:
        session: a ``requests.Session`` to instrument alone; by default
            ``requests.Session.send`` is wrapped, which covers ``requests.get``
            and every session.

    Returns:
        ``session`` (or ``None``), so ``session = instrument_requests(requests.Session())``.

    Raises:
        MissingExtraError: ``requests`` is not installed.

    Idempotent: instrumenting twice wraps once.
    """
    try:
        import requests
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError("instrument_requests", "requests", "requests") from exc
    if session is None:
        current = requests.Session.send
        if not hasattr(current, _MARK):
            requests.Session.send = _requests_send(current)  # type: ignore[method-assign]
        return None
    if hasattr(type(session).send, _MARK) or hasattr(vars(session).get("send"), _MARK):
        return session  # every session is instrumented already, or this one is
    send = functools.partial(_requests_send(type(session).send), session)
    setattr(send, _MARK, True)
    session.send = send
    return session


def uninstrument_requests(session: Any = None) -> None:
    """Undo :func:`instrument_requests` (for ``session``, or the global wrapper)."""
    import requests

    if session is None:
        original = getattr(requests.Session.send, _MARK, None)
        if original is not None:
            requests.Session.send = original  # type: ignore[method-assign]
    elif hasattr(vars(session).get("send"), _MARK):
        del session.send


# ---------------------------------------------------------------------- httpx
def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError("the httpx instrumentation", "httpx", "httpx") from exc
    return httpx


def _sync_handle(original: Any) -> Any:
    @functools.wraps(original)
    def handle_request(self: Any, request: Any) -> Any:
        return _measured(request.method, str(request.url), request.headers,
                         lambda: original(self, request))

    setattr(handle_request, _MARK, original)
    return handle_request


def _async_handle(original: Any) -> Any:
    @functools.wraps(original)
    async def handle_async_request(self: Any, request: Any) -> Any:
        return await _ameasured(request.method, str(request.url), request.headers,
                                lambda: original(self, request))

    setattr(handle_async_request, _MARK, original)
    return handle_async_request


def instrument_httpx() -> None:
    """Measure and trace every ``httpx`` call, sync and async (its transports' request handlers).

    Raises:
        MissingExtraError: ``httpx`` is not installed.

    Idempotent. For one client only, pass :class:`HTTPXTransport` /
    :class:`AsyncHTTPXTransport` as its ``transport`` instead.
    """
    httpx = _httpx()
    if not hasattr(httpx.HTTPTransport.handle_request, _MARK):
        httpx.HTTPTransport.handle_request = _sync_handle(httpx.HTTPTransport.handle_request)
    if not hasattr(httpx.AsyncHTTPTransport.handle_async_request, _MARK):
        httpx.AsyncHTTPTransport.handle_async_request = _async_handle(
            httpx.AsyncHTTPTransport.handle_async_request)


def uninstrument_httpx() -> None:
    """Undo :func:`instrument_httpx`."""
    httpx = _httpx()
    for cls, name in ((httpx.HTTPTransport, "handle_request"),
                      (httpx.AsyncHTTPTransport, "handle_async_request")):
        original = getattr(getattr(cls, name), _MARK, None)
        if original is not None:
            setattr(cls, name, original)


class HTTPXTransport:
    """An ``httpx`` transport that measures and traces the calls of one ``httpx.Client``.

    Args:
        transport: the transport to wrap (default: ``httpx.HTTPTransport(**kwargs)``).
        **kwargs: arguments of ``httpx.HTTPTransport`` (``retries``, ``verify`` ...).

    Example:
        >>> client = httpx.Client(transport=HTTPXTransport(retries=2))  # doctest: +SKIP
    """

    def __init__(self, transport: Any = None, **kwargs: Any) -> None:
        self._inner = transport if transport is not None else _httpx().HTTPTransport(**kwargs)

    def handle_request(self, request: Any) -> Any:
        """Send ``request`` through the wrapped transport, measured and traced."""
        return _measured(request.method, str(request.url), request.headers,
                         lambda: self._inner.handle_request(request))

    def close(self) -> None:
        """Close the wrapped transport."""
        self._inner.close()

    def __enter__(self) -> HTTPXTransport:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._inner.__exit__(*exc)


class AsyncHTTPXTransport:
    """The ``httpx.AsyncClient`` counterpart of :class:`HTTPXTransport`.

    Args:
        transport: the transport to wrap (default: ``httpx.AsyncHTTPTransport(**kwargs)``).
        **kwargs: arguments of ``httpx.AsyncHTTPTransport``.
    """

    def __init__(self, transport: Any = None, **kwargs: Any) -> None:
        self._inner = (transport if transport is not None
                       else _httpx().AsyncHTTPTransport(**kwargs))

    async def handle_async_request(self, request: Any) -> Any:
        """Send ``request`` through the wrapped transport, measured and traced."""
        return await _ameasured(request.method, str(request.url), request.headers,
                                lambda: self._inner.handle_async_request(request))

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._inner.aclose()

    async def __aenter__(self) -> AsyncHTTPXTransport:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._inner.__aexit__(*exc)
