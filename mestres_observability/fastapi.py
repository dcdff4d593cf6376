"""Starlette/FastAPI adapter: a pure ASGI middleware (not ``BaseHTTPMiddleware``).

``init_observability(app)`` (or :func:`instrument`) adds
:class:`ObservabilityMiddleware` once. It matches the app's routes up front
(``scope["route"]`` is only set after routing, and the in-progress gauge needs
the template at the start), joining ``Mount`` prefixes into one template such
as ``/api/orders/{order_id}``; times each response until its last body chunk
is sent (streaming included, background tasks excluded); serves the library
endpoints itself, so nothing appears in the OpenAPI schema; and passes
``lifespan`` and ``websocket`` scopes through untouched.

Example::

    from fastapi import FastAPI
    from mestres_observability import init_observability

    app = FastAPI()
    init_observability(app, service_name="mestres-cafe-api")
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.routing import Host, Match, Mount

from ._adapter import resolve_user_id, setup
from ._compat import (
    FASTAPI_NATIVE_SPAN_ATTR,
    FASTAPI_TELEMETRY_SCOPE_KEY,
    disable_fastapi_native_tracing,
)
from ._endpoint import Endpoint, Request
from .errors import ConfigurationError
from .http import (
    HttpState,
    RequestPass,
    UserIdResolver,
    asgi_is_html,
    begin_request,
    http_state,
    is_untracked,
    response_size,
)
from .observability import Observability, get_observability

__all__ = ["DO_NOT_TRACK_EXTENSION", "ObservabilityMiddleware", "instrument", "route_template",
           "untracked_routes"]

#: ``openapi_extra`` key that marks a FastAPI route as not tracked (the route option of
#: :func:`~mestres_observability.http.do_not_track`):
#: ``@app.get("/ping", openapi_extra={DO_NOT_TRACK_EXTENSION: True})``. It is an OpenAPI
#: extension, so it also shows in the route's operation in the schema.
DO_NOT_TRACK_EXTENSION = "x-mestres-observability-do-not-track"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATE_KEY = "mestres_observability"
_TERMINAL = frozenset(("http.response.pathsend", "http.response.zerocopysend"))
_HEADERS = {
    b"user-agent": "user_agent", b"x-forwarded-for": "forwarded_for", b"host": "host",
    b"traceparent": "traceparent", b"tracestate": "tracestate", b"baggage": "baggage",
}


class _Wiring:
    """Per-app settings shared with the middleware instance (built lazily by Starlette)."""

    def __init__(self, user_id_resolver: UserIdResolver | None) -> None:
        self.user_id_resolver = user_id_resolver


def route_template(routes: Any, scope: Scope, prefix: str = "") -> tuple[str | None, bool]:
    """The template of the route ``scope`` would reach, mount prefixes joined.

    Returns ``(template or None, cacheable)``; a ``Host`` route makes the answer
    depend on the ``Host`` header, so it is not cacheable by path.
    """
    partial: tuple[Any, Scope] | None = None
    cacheable = True
    for route in routes:
        if isinstance(route, Host):
            cacheable = False
        match, child = route.matches(scope)
        if match is Match.FULL:
            return _template_of(route, scope, child, prefix, cacheable)
        if match is Match.PARTIAL and partial is None:
            partial = (route, child)
    if partial is not None:
        return _template_of(partial[0], scope, partial[1], prefix, cacheable)
    return None, cacheable


def untracked_routes(routes: Any, prefix: str = "") -> dict[str, frozenset[str] | None]:
    """Template -> methods (``None``: all) of the routes marked not tracked: their endpoint
    by :func:`~mestres_observability.http.do_not_track`, or ``openapi_extra`` by
    :data:`DO_NOT_TRACK_EXTENSION`; ``Mount`` prefixes joined as :func:`route_template` does."""
    found: dict[str, frozenset[str] | None] = {}
    for route in routes:
        if isinstance(route, (Mount, Host)):
            sub = getattr(route, "routes", None)
            if sub:
                found.update(untracked_routes(
                    sub, prefix + route.path if isinstance(route, Mount) else prefix))
            continue
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            continue
        extra = getattr(route, "openapi_extra", None)
        if is_untracked(getattr(route, "endpoint", None)) or is_untracked(route) or (
                isinstance(extra, dict) and extra.get(DO_NOT_TRACK_EXTENSION) is True):
            methods = getattr(route, "methods", None)
            old = found.get(prefix + path, frozenset())
            found[prefix + path] = (None if methods is None or old is None
                                    else old | frozenset(methods))
    return found


def _template_of(route: Any, scope: Scope, child: Scope, prefix: str,
                 cacheable: bool) -> tuple[str | None, bool]:
    if isinstance(route, (Mount, Host)):
        new_prefix = prefix + route.path if isinstance(route, Mount) else prefix
        sub = getattr(route, "routes", None)
        if sub:
            inner, inner_cacheable = route_template(sub, {**scope, **child}, new_prefix)
            return (inner if inner is not None else new_prefix or "/"), (
                cacheable and inner_cacheable)
        return new_prefix or "/", cacheable
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return None, cacheable
    return prefix + path, cacheable


class ObservabilityMiddleware:
    """Pure ASGI middleware: request metrics, SERVER span, access log, request id, endpoints.

    Args:
        app: the next ASGI app.
        starlette_app: the Starlette/FastAPI app whose routes give the templates
            (without it, the template comes from ``scope["route"]`` after routing).
        wiring: per-app settings (internal; set by :func:`instrument`).
    """

    def __init__(self, app: ASGIApp, starlette_app: Any = None,
                 wiring: _Wiring | None = None) -> None:
        self.app = app
        self.starlette_app = starlette_app
        self.wiring = wiring if wiring is not None else _Wiring(None)
        self._cache: dict[tuple[str, str, str], str | None] = {}
        self._pages: dict[tuple[str, str], str | None] = {}
        self._cache_key: tuple[int, int] = (0, 0)
        self._untracked: dict[str, frozenset[str] | None] = {}
        self._untracked_key: tuple[int, int] = (0, 0)
        module = type(starlette_app).__module__ if starlette_app is not None else ""
        #: which ``OTEL_PYTHON_<FRAMEWORK>_EXCLUDED_URLS`` applies
        self.framework = "fastapi" if module.startswith("fastapi") else "starlette"

    def _routes(self) -> Any:
        sa = self.starlette_app
        if sa is None:
            return None
        router = getattr(sa, "router", sa)
        return getattr(router, "routes", None)

    def _match(self, scope: Scope, method: str) -> str | None:
        sa = self.starlette_app  # self._routes(), inline
        if sa is None:
            return None
        routes = getattr(getattr(sa, "router", sa), "routes", None)
        if routes is None:
            return None
        marker = (id(routes), len(routes))
        if marker != self._cache_key:
            self._cache.clear()
            self._cache_key = marker
        key = (scope.get("root_path", ""), scope["path"], method)
        try:
            return self._cache[key]
        except KeyError:
            pass
        template, cacheable = route_template(routes, scope)
        if cacheable and template is not None:
            if len(self._cache) >= 2048:
                self._cache.clear()
            self._cache[key] = template
        return template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            state = http_state()
            path: str = scope["path"]
            root_path: str = scope.get("root_path", "")
            route_path = path[len(root_path):] if root_path and path.startswith(root_path) else path
            endpoint = state.endpoints.get(route_path)
            rx = state.excluded_rx  # state.excluded(route_path), inline
            if endpoint is None and (not state.enabled or route_path in state.excluded_exact or (
                    rx is not None and rx.fullmatch(route_path) is not None)):
                await self.app(scope, receive, send)
                return
            headers = _read_headers(scope, state)
            rp = self._start(state, scope, headers, route_path, endpoint)
        except Exception as exc:
            get_observability().faults.report("http", "asgi", "request pass failed", exc)
            await self.app(scope, receive, send)
            return
        if endpoint is not None:
            if rp is None:
                measured = state.measured.get(route_path)
                if measured is not None:  # e.g. the RUM endpoint: counted under its own route
                    rp = self._start(measured, scope, headers, route_path, endpoint)
            await self._serve(state, endpoint, scope, receive, send, rp, route_path)
            return
        if rp is None:
            await self.app(scope, receive, send)
            return
        await self._measured(state, scope, receive, send, rp)

    def _start(self, state: HttpState, scope: Scope, headers: dict[str, str],
               route_path: str, endpoint: Endpoint | None) -> RequestPass | None:
        path: str = scope["path"]
        if endpoint is not None or path != route_path:
            # start_request's check, of the full path (root_path included): __call__ checked
            # route_path already, for the requests that reach no endpoint
            rx = state.excluded_rx
            if not state.enabled or path in state.excluded_exact or (
                    rx is not None and rx.fullmatch(path) is not None):
                return None
        method: str = scope.get("method", "GET")
        # the library's own endpoints get their path as route once served
        route = self._match(scope, method) if endpoint is None else None
        # marked routes: looked up only once the route table is known to have some
        if route is not None and (self._untracked or self._untracked_key != self._cache_key
                                  ) and self._is_untracked(route, method):
            return None
        url_rx = state.excluded_urls[self.framework]
        if url_rx is not None and url_rx.search(_url(scope)):
            return None
        client = scope.get("client")
        trace_headers: dict[str, str] | None = None
        if state.tracing:
            trace_headers = {k: headers[k] for k in ("traceparent", "tracestate", "baggage")
                             if k in headers}
        server_span = None
        if state.tracing or state.access_log:
            # FastAPI's native telemetry (0.16x) may have started the SERVER span already:
            # the access log is correlated with it even when our tracing is off
            native = scope.get(FASTAPI_TELEMETRY_SCOPE_KEY)
            if native is not None:
                server_span = getattr(native, FASTAPI_NATIVE_SPAN_ATTR, None)
                if server_span is not None and not server_span.is_recording():
                    server_span = None
        query = scope.get("query_string", b"")
        # positional: begin_request is start_request without the checks done above
        return begin_request(
            state, method, path, query.decode("latin-1") if query else "",
            headers.get("request_id"), headers.get("user_agent"),
            client[0] if client else None, headers.get("forwarded_for"), route,
            scope.get("scheme", "http"),
            headers.get("host") if state.tracing else None,  # span only
            trace_headers, server_span)

    def _is_untracked(self, route: str, method: str) -> bool:
        """True when ``route`` (a template) is a route marked not tracked, for ``method``;
        the marked routes are found again when the route table changes (``_match`` keeps
        its marker in ``_cache_key``)."""
        if self._untracked_key != self._cache_key:
            routes = self._routes()
            self._untracked = untracked_routes(routes) if routes is not None else {}
            self._untracked_key = self._cache_key
        if not self._untracked or route not in self._untracked:
            return False
        methods = self._untracked[route]
        return methods is None or method in methods or (method == "HEAD" and "GET" in methods)

    async def _measured(self, state: HttpState, scope: Scope, receive: Receive, send: Send,
                        rp: RequestPass) -> None:
        status = 0
        rid = (state.request_id_bytes, rp.request_id.encode("ascii"))
        resolver = self.wiring.user_id_resolver
        timing = state.server_timing
        if rp.labels is None:  # http_label_callback: it gets the request
            rp.native = _hook_request(scope)
        sizes = state.sizes
        declared: str | None = None
        sent = 0
        if sizes:
            receive = _counting_receive(receive, rp, scope)
        rp.track_in_progress()
        controls = (
            state.request_hook is not None or state.response_hook is not None
            or state.capture_request is not None or state.capture_response is not None
        ) and rp.span is not None
        request: Any = None

        if sizes or timing or controls:
            async def send_wrapper(message: Message) -> None:
                nonlocal status, declared, sent
                mtype = message["type"]
                if mtype == "http.response.start":
                    status = message["status"]
                    if sizes:
                        declared = _header(message.get("headers", ()), b"content-length")
                    headers = [*message.get("headers", ()), rid]
                    if timing and asgi_is_html(headers):
                        value = rp.server_timing()
                        if value is not None:
                            headers.append((b"server-timing", value.encode("latin-1")))
                    out = {**message, "headers": headers}
                    if controls:
                        if state.capture_response is not None:
                            rp.capture_response_headers(headers)
                        if request is not None:
                            rp.response_hook(request, out)
                    await send(out)
                    return
                await send(message)
                if sizes and mtype == "http.response.body":
                    sent += len(message.get("body", b""))
                if (mtype == "http.response.body" and not message.get("more_body", False)) or (
                    mtype in _TERMINAL
                ):
                    if sizes:
                        rp.response_size = response_size(rp.method_original, status or 200,
                                                         declared, sent)
                    rp.finish(status or 200, None,
                              None if resolver is None else _user_id(resolver, scope, state,
                                                                     rp.native))
        else:
            async def send_wrapper(message: Message) -> None:
                # without sizes, Server-Timing and span controls: the status, the request
                # id, the end of the body
                nonlocal status
                mtype = message["type"]
                if mtype == "http.response.start":
                    status = message["status"]
                    await send({**message, "headers": [*message.get("headers", ()), rid]})
                    return
                await send(message)
                if (mtype == "http.response.body" and not message.get("more_body", False)) or (
                    mtype in _TERMINAL
                ):
                    rp.finish(status or 200, None,
                              None if resolver is None else _user_id(resolver, scope, state,
                                                                     rp.native))

        rp.activate()
        if controls:
            if state.capture_request is not None:
                rp.capture_request_headers(scope.get("headers", ()))
            if state.request_hook is not None or state.response_hook is not None:
                # the one the label callback got, when there is one (built once a request)
                request = rp.native if rp.native is not None else _hook_request(scope)
                rp.native = request  # and the user-id resolver gets it too
                rp.request_hook(request)
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            rp.finish(status or 500, exc, _user_id(resolver, scope, state, rp.native))
            raise
        finally:
            if not rp.finished:
                if sizes:  # the app stopped without ending the body: what was sent
                    rp.response_size = response_size(rp.method_original, status or 500,
                                                     None, sent)
                rp.finish(status or 500, None, _user_id(resolver, scope, state, rp.native))
            rp.deactivate()

    async def _serve(self, state: HttpState, endpoint: Endpoint, scope: Scope, receive: Receive,
                     send: Send, rp: RequestPass | None, path: str) -> None:
        req = Request.from_asgi(scope, receive, path, state.trusted)
        req.routes = _Routes(self, scope.get("root_path", ""))
        status, out, body = await endpoint.adispatch(req)
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out]
        if rp is not None:
            rp.set_route(path)
            raw.append((state.request_id_bytes, rp.request_id.encode("ascii")))
        try:
            await send({"type": "http.response.start", "status": status, "headers": raw})
            await send({"type": "http.response.body", "body": body})
        finally:
            if rp is not None:
                rp.finish(status)


class _Routes:
    """``routes(path)`` of the endpoint layer: the template of the app's route a browser
    URL path would reach (as the request metrics label it), via the middleware's cache."""

    __slots__ = ("_mw", "_root")

    def __init__(self, mw: ObservabilityMiddleware, root_path: str) -> None:
        self._mw = mw
        self._root = root_path

    def __call__(self, path: str) -> str | None:
        mw = self._mw
        key = (self._root, path)
        pages = mw._pages  # apart from the request cache: beacons never evict its entries
        if key in pages:
            return pages[key]
        template = None
        try:
            routes = mw._routes()
            if routes is not None:
                template, _cacheable = route_template(routes, {
                    "type": "http", "path": path, "root_path": self._root, "method": "GET",
                    "headers": [], "query_string": b""})
        except Exception:
            template = None
        if len(pages) >= 2048:
            pages.clear()
        pages[key] = template
        return template


def _url(scope: Scope) -> str:
    """The URL ``excluded_urls`` are searched in, as the OpenTelemetry ASGI middleware
    builds it: ``scheme://server[:port]path`` (the port left out when it is 80)."""
    server = scope.get("server") or ("0.0.0.0", 80)
    host = str(server[0]) + (f":{server[1]}" if str(server[1]) != "80" else "")
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('path', '')}"


def _header(headers: Any, name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


def _counting_receive(receive: Receive, rp: RequestPass, scope: Scope) -> Receive:
    """``receive`` that sets ``rp.request_size``: the request's Content-Length, else the
    body bytes the app read."""
    declared = _header(scope.get("headers", ()), b"content-length")
    if declared is not None and declared.strip().isdigit():
        rp.request_size = int(declared)
        return receive
    rp.request_size = 0

    async def counted() -> Message:
        message = await receive()
        if message.get("type") == "http.request":
            rp.request_size = (rp.request_size or 0) + len(message.get("body", b""))
        return message

    return counted
def _hook_request(scope: Scope) -> Any:
    """The ``starlette.requests.Request`` the span hooks get (no ``receive``: a hook cannot
    consume the body the application reads)."""
    from starlette.requests import Request as StarletteRequest

    return StarletteRequest(scope)


def _read_headers(scope: Scope, state: HttpState) -> dict[str, str]:
    found: dict[str, str] = {}
    wanted = _HEADERS
    rid = state.request_id_bytes
    for name, value in scope.get("headers", ()):
        slot = wanted.get(name)
        if slot is not None:
            found[slot] = value.decode("latin-1")
        elif name == rid:
            found["request_id"] = value.decode("latin-1")
    return found


def _user_id(resolver: UserIdResolver | None, scope: Scope, state: HttpState,
             request: Any = None) -> Any:
    """The resolver's answer (the access log falls back on a bound ``user_id``); it gets
    ``request``, the request the label callback and the hooks got, when one was built."""
    if resolver is None:
        return None
    if request is None:
        request = _hook_request(scope)
    return resolve_user_id(resolver, request, state.faults)


def instrument(app: Any, obs: Observability | None = None, *,
               user_id_resolver: UserIdResolver | None = None,
               keep_fastapi_telemetry: bool = False) -> None:
    """Wire a Starlette or FastAPI app once (before it starts).

    Args:
        app: the Starlette/FastAPI application.
        obs: the instance used for set-up checks (default: the current one);
            requests use the instance current when they run.
        user_id_resolver: ``callable(request) -> user id`` run when the
            response ends, for the access log's ``user_id``.
        keep_fastapi_telemetry: leave FastAPI's native tracing (0.16x) on even
            when it would use the global tracer provider. By default it is
            turned off for this app so each request gets one SERVER span, ours;
            a native tracer provider you passed explicitly is always kept (the
            library then correlates logs with FastAPI's span).

    Raises:
        ConfigurationError: the app already started (Starlette refuses new
            middleware then); call ``init_observability(app)`` at start-up.
    """
    if not keep_fastapi_telemetry:
        disable_fastapi_native_tracing(app)
    wiring = getattr(app.state, STATE_KEY, None)
    if isinstance(wiring, _Wiring):
        if user_id_resolver is not None:
            wiring.user_id_resolver = user_id_resolver
        _setup(obs)
        return
    wiring = _Wiring(user_id_resolver)
    try:
        app.add_middleware(ObservabilityMiddleware, starlette_app=app, wiring=wiring)
    except RuntimeError as exc:
        raise ConfigurationError(
            "app", type(app).__name__,
            f"cannot add middleware ({exc}); call init_observability(app) before the app starts",
        ) from None
    setattr(app.state, STATE_KEY, wiring)
    _setup(obs)


def _setup(obs: Observability | None) -> None:
    setup(obs, "starlette")
