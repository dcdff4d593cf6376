"""``ObservabilityMiddleware`` for Django, sync (WSGI) and async (ASGI).

Put it first in ``MIDDLEWARE`` so it measures everything below it. The route
template comes from ``request.resolver_match.route`` (``/orders/<int:pk>``,
``include()`` prefixes joined); requests that resolve to nothing share
``<unmatched>``. Streaming responses are timed until Django closes them
(after the last chunk is sent).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings  # type: ignore[import-untyped]
from django.http import (  # type: ignore[import-untyped]
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
)

from .._adapter import resolve_user_id
from .._compat import mark_django_response_logged
from .._endpoint import Endpoint, Headers, Request, Response
from ..http import (
    HttpState,
    RequestPass,
    UserIdResolver,
    begin_request,
    http_state,
    is_html,
    is_untracked,
    response_size,
    wsgi_headers,
    wsgi_trace_headers,
)
from ..http import _marked as _views_marked
from ..observability import get_observability
from . import DO_NOT_TRACK_KWARG

__all__ = ["ObservabilityMiddleware", "route_of"]

_ATTR = "_mestres_observability_pass"
_EXC = "_mestres_observability_exc"


def route_of(request: HttpRequest) -> str | None:
    """The resolved route template of ``request`` with a leading ``/`` (or ``None``)."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return None
    route = match.route
    if not isinstance(route, str):
        return None
    found = _TEMPLATES.get(route)
    if found is None:
        found = "/" + route.replace("^", "").replace("$", "").lstrip("/")
        if len(_TEMPLATES) < 2048:  # the URLconf's routes (bounded anyway)
            _TEMPLATES[route] = found
    return found


_TEMPLATES: dict[str, str] = {}


class ObservabilityMiddleware:
    """Request metrics, SERVER span, access log, request id and the library endpoints.

    The setting ``MESTRES_OBSERVABILITY_USER_ID_RESOLVER`` (a callable or its
    dotted path, ``callable(request) -> user id``) fills the access log's
    ``user_id`` at the end of each request; its faults are counted. It must
    not query the database in an async view (Django forbids that there).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        from django.utils.module_loading import import_string  # type: ignore[import-untyped]

        self.get_response = get_response
        resolver: Any = getattr(settings, "MESTRES_OBSERVABILITY_USER_ID_RESOLVER", None)
        if isinstance(resolver, str):
            resolver = import_string(resolver)
        self.user_id_resolver: UserIdResolver | None = resolver
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
            self.process_view: Callable[..., Any] = self._aprocess_view
        else:
            self.process_view = self._process_view

    # ---------------------------------------------------------------- entry
    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        prepared = self._prepare(request)
        if prepared is None:
            return self.get_response(request)
        state, endpoint, rp = prepared
        if endpoint is not None:
            return self._endpoint_response(state, rp, request, endpoint.dispatch(
                endpoint_request(request, state.trusted)))
        assert rp is not None
        rp.activate()
        if state.request_hook is not None:
            rp.request_hook(request)
        try:
            response = self.get_response(request)
        except BaseException as exc:
            self._failed(state, rp, request, exc)
            raise
        return self._respond(state, rp, request, response)

    async def __acall__(self, request: HttpRequest) -> Any:
        prepared = self._prepare(request)
        if prepared is None:
            return await self.get_response(request)
        state, endpoint, rp = prepared
        if endpoint is not None:
            return self._endpoint_response(state, rp, request, await endpoint.adispatch(
                endpoint_request(request, state.trusted)))
        assert rp is not None
        rp.activate()
        if state.request_hook is not None:
            rp.request_hook(request)
        try:
            response = await self.get_response(request)
        except BaseException as exc:
            self._failed(state, rp, request, exc)
            raise
        return self._respond(state, rp, request, response)

    # ---------------------------------------------------------------- hooks
    def _process_view(self, request: HttpRequest, view_func: Any, view_args: Any,
                      view_kwargs: Any) -> None:
        # the route option is the middleware's, not the view's (the view would get an
        # unexpected keyword argument)
        view_kwargs.pop(DO_NOT_TRACK_KWARG, None)
        rp = getattr(request, _ATTR, None)
        if rp is not None:
            rp.route = route_of(request)  # set_route
            rp.track_in_progress()

    async def _aprocess_view(self, request: HttpRequest, view_func: Any, view_args: Any,
                             view_kwargs: Any) -> None:
        self._process_view(request, view_func, view_args, view_kwargs)

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        """Note the view's exception for the span; Django's handling goes on unchanged."""
        if getattr(request, _ATTR, None) is not None:
            setattr(request, _EXC, exception)

    # ---------------------------------------------------------------- helpers
    def _prepare(self, request: HttpRequest
                 ) -> tuple[HttpState, Endpoint | None, RequestPass | None] | None:
        try:
            state = http_state()
            path_info = request.path_info
            endpoint = state.endpoints.get(path_info)
            rx = state.excluded_rx  # state.excluded(path_info), inline
            if endpoint is None and (not state.enabled or path_info in state.excluded_exact or (
                    rx is not None and rx.fullmatch(path_info) is not None)):
                return None
            if endpoint is None and _excluded_here(state, request, path_info):
                return None
            rp = _start(state, request, path_info, endpoint is None)
            if rp is None and endpoint is None:
                return None
            if rp is None:
                measured = state.measured.get(path_info)
                if measured is not None:  # e.g. the RUM endpoint: counted under its own route
                    rp = _start(measured, request, path_info)
            if rp is not None:
                setattr(request, _ATTR, rp)
                if rp.labels is None:  # http_label_callback: it gets the request
                    rp.native = request
                if state.sizes:
                    length = request.META.get("CONTENT_LENGTH")
                    rp.request_size = int(length) if length and length.isdigit() else 0
                if endpoint is None and state.capture_request is not None:
                    rp.capture_request_headers(wsgi_headers(request.META))
            return state, endpoint, rp
        except Exception as exc:
            get_observability().faults.report("http", "django", "request pass failed", exc)
            return None

    def _failed(self, state: HttpState, rp: RequestPass, request: HttpRequest,
                exc: BaseException) -> None:
        """The view stack raised: record it as a 500 and leave the request context."""
        try:
            rp.finish(500, exc, self._user_id(state, request))
        finally:
            rp.deactivate()

    def _respond(self, state: HttpState, rp: RequestPass, request: HttpRequest,
                 response: HttpResponseBase) -> HttpResponseBase:
        """Add the request id and record the response (streamed ones when Django closes them).

        Runs with the request context still active and leaves it.
        """
        try:
            if rp.route is None:
                rp.route = route_of(request)  # set_route
            response[state.request_id_header] = rp.request_id
            if state.server_timing and is_html(response.get("Content-Type")):
                value = rp.server_timing()
                if value is not None:
                    existing = response.get("Server-Timing")
                    response["Server-Timing"] = f"{existing}, {value}" if existing else value
            if state.response_hook is not None:
                rp.response_hook(request, response)
            if state.capture_response is not None:
                # cookies set with ``set_cookie()`` are not among the headers until rendered
                rp.capture_response_headers([*response.items(), *(
                    ("set-cookie", c.OutputString()) for c in response.cookies.values())])
            exc = getattr(request, _EXC, None)
            uid = None if self.user_id_resolver is None else self._user_id(state, request)
            status = response.status_code
            if state.sizes:
                _response_size(rp, response, status)
            if response.streaming:
                # recorded when Django closes the body; deactivate() below keeps a bound user_id
                inner_close = response.close

                def close() -> None:
                    try:
                        inner_close()
                    finally:
                        rp.finish(status, exc, uid)

                response.close = close
            else:
                rp.finish(status, exc, uid)
        except Exception as err:
            state.faults.report("http", "django", "recording the response failed", err)
        finally:
            rp.deactivate()
        return response

    def _endpoint_response(self, state: HttpState, rp: RequestPass | None,
                           request: HttpRequest, result: Response) -> HttpResponseBase:
        response = django_response(result)
        mark_django_response_logged(response)  # refused beacons: no django.request line each
        status = result.status
        if rp is not None:
            rp.set_route(request.path_info)
            response[state.request_id_header] = rp.request_id
            rp.finish(status)
        return response

    def _user_id(self, state: HttpState, request: HttpRequest) -> Any:
        resolver = self.user_id_resolver
        if resolver is None:
            return None
        return resolve_user_id(resolver, request, state.faults)


def endpoint_request(request: HttpRequest, trusted: tuple[Any, ...] = ()) -> Request:
    """The endpoint layer's request for a Django request (the body through ``request.read``)."""
    meta = request.META
    req = Request(request.method or "GET", request.path_info, Headers.from_environ(meta),
                  query=meta.get("QUERY_STRING", ""), peer=meta.get("REMOTE_ADDR"),
                  trusted=trusted, read=request.read)
    req.routes = _Routes(getattr(request, "urlconf", None))
    return req


class _Routes:
    """``routes(path)`` of the endpoint layer: the route template (as ``route_of`` gives it)
    of the view a browser URL path resolves to, script prefix removed."""

    __slots__ = ("_urlconf",)

    def __init__(self, urlconf: Any) -> None:
        self._urlconf = urlconf

    def __call__(self, path: str) -> str | None:
        from django.urls import get_script_prefix  # type: ignore[import-untyped]

        prefix = get_script_prefix()
        if prefix and prefix != "/":
            if not path.startswith(prefix) and path != prefix.rstrip("/"):
                return None
            path = "/" + path[len(prefix):]
        urlconf = self._urlconf
        return _resolved_route(path, urlconf if isinstance(urlconf, str) else None)


@functools.lru_cache(maxsize=2048)
def _resolved_route(path: str, urlconf: str | None) -> str | None:
    from django.urls import resolve

    try:
        match = resolve(path, urlconf)
    except Exception:  # Resolver404, and whatever a URL converter raises on junk
        return None
    route = match.route
    if not isinstance(route, str):
        return None
    return "/" + route.replace("^", "").replace("$", "").lstrip("/")


def django_response(result: Response) -> HttpResponse:
    """A Django response from the endpoint layer's ``(status, headers, body)``."""
    status, headers, body = result
    response = HttpResponse(body, status=status)
    for k, v in headers:
        response[k] = v
    return response


def _excluded_here(state: HttpState, request: HttpRequest, path_info: str) -> bool:
    """``excluded_urls`` (searched in the URL without its query, as the OpenTelemetry
    Django instrumentation does) and views marked by ``do_not_track``."""
    url_rx = state.excluded_urls["django"]
    if url_rx is not None:
        meta = request.META
        host = meta.get("HTTP_HOST") or meta.get("SERVER_NAME", "")
        if url_rx.search(f"{request.scheme}://{host}{request.path}"):
            return True
    urlconf = getattr(settings, "ROOT_URLCONF", None)
    if not (_views_marked[0] or _has_route_option(urlconf)):
        return False
    return _untracked_path(path_info, urlconf, _views_marked[0])


@functools.lru_cache(maxsize=64)
def _has_route_option(urlconf: str | None) -> bool:
    """Whether any route of ``urlconf`` (or an ``include()`` above it) carries the
    :data:`~mestres_observability.django.DO_NOT_TRACK_KWARG` route option; read once per
    URLconf, so paths are resolved per request only when some route opts out."""
    from django.urls import get_resolver

    def opted_out(patterns: Any, depth: int) -> bool:
        for entry in patterns:
            extra = getattr(entry, "default_args", None) or getattr(entry, "default_kwargs", None)
            if isinstance(extra, dict) and extra.get(DO_NOT_TRACK_KWARG) is True:
                return True
            nested = getattr(entry, "url_patterns", None)
            if nested is not None and depth < 32 and opted_out(nested, depth + 1):
                return True
        return False

    try:
        return opted_out(get_resolver(urlconf).url_patterns, 0)
    except Exception:  # a URLconf that fails to import fails in Django's own resolving too
        return False


@functools.lru_cache(maxsize=4096)
def _untracked_path(path: str, urlconf: str | None, _marks: int) -> bool:
    """Whether ``path`` resolves to a view marked by ``do_not_track`` or a route with the
    :data:`~mestres_observability.django.DO_NOT_TRACK_KWARG` option (``_marks``: how many
    views were marked, so a view marked later is seen)."""
    from django.urls import resolve

    try:
        match = resolve(path, urlconf)
    except Exception:  # Resolver404, and whatever a URL converter raises on junk
        return False
    return is_untracked(match.func) or match.kwargs.get(DO_NOT_TRACK_KWARG) is True


def _response_size(rp: RequestPass, response: HttpResponseBase, status: int) -> None:
    """Set ``rp.response_size``; a streamed body is counted as Django sends it."""
    declared = response.get("Content-Length")
    method = rp.method_original
    if not response.streaming:
        rp.response_size = response_size(method, status, declared, len(response.content))
        return
    rp.response_size = response_size(method, status, declared, 0)
    if declared is not None or (rp.response_size == 0 and (method == "HEAD" or status < 200
                                                           or status in (204, 304))):
        return
    content = response.streaming_content
    if getattr(response, "is_async", False):
        async def acounted() -> Any:
            async for chunk in content:
                rp.response_size = (rp.response_size or 0) + len(chunk)
                yield chunk

        response.streaming_content = acounted()
    else:
        def counted() -> Any:
            for chunk in content:
                rp.response_size = (rp.response_size or 0) + len(chunk)
                yield chunk

        response.streaming_content = counted()


def _start(state: HttpState, request: HttpRequest, path_info: str,
           checked: bool = False) -> RequestPass | None:
    """Begin the request pass (``checked``: ``enabled`` and ``path_info``'s exclusion checked
    already, so the full path is checked only when it differs)."""
    path = request.path
    if not checked or path != path_info:  # start_request's check, of the full path
        rx = state.excluded_rx
        if not state.enabled or path in state.excluded_exact or (
                rx is not None and rx.fullmatch(path) is not None):
            return None
    meta = request.META
    get = meta.get
    if not state.tracing:
        return begin_request(state, request.method or "GET", path, get("QUERY_STRING", ""),
                             get(state.request_id_environ), get("HTTP_USER_AGENT"),
                             get("REMOTE_ADDR"), get("HTTP_X_FORWARDED_FOR"))
    return begin_request(
        state, request.method or "GET", path, get("QUERY_STRING", ""),
        get(state.request_id_environ), get("HTTP_USER_AGENT"), get("REMOTE_ADDR"),
        get("HTTP_X_FORWARDED_FOR"), None,
        # scheme and Host: span attributes only (request.scheme reads a setting each time)
        request.scheme or "http", get("HTTP_HOST") or get("SERVER_NAME"),
        wsgi_trace_headers(meta))
