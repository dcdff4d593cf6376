"""Flask adapter: ``init_observability(app)`` or :func:`instrument` directly.

A WSGI middleware around ``app.wsgi_app`` measures the whole request, to the
end of the body (the server's ``close()``), and serves the library endpoints
without registering routes; the app's ``full_dispatch_request`` is wrapped on
the instance to read the route template (``/orders/<int:order_id>``) before
the user's ``before_request`` hooks run and to note whether the body is
complete already; Flask's ``got_request_exception`` signal (sent only on
failures) hands over unhandled exceptions, and a ``teardown_request`` hook,
added only with a user-id resolver, runs it.

Example::

    from flask import Flask
    from mestres_observability import init_observability

    app = Flask(__name__)
    init_observability(app, service_name="mestres-cafe-api")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any

from flask import Flask, got_request_exception, request
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.wsgi import ClosingIterator, get_current_url

from ._adapter import resolve_user_id, setup
from ._compat import flask_request_context_var, proxy_target_getter
from ._endpoint import Endpoint, Request
from .http import (
    HttpState,
    RequestPass,
    UserIdResolver,
    begin_request,
    http_state,
    is_untracked,
    response_size,
    wsgi_headers,
    wsgi_is_html,
    wsgi_trace_headers,
)
from .observability import Observability, get_observability

__all__ = ["FlaskMiddleware", "instrument"]

EXTENSION_KEY = "mestres_observability"
_PASS = "mestres_observability.pass"

StartResponse = Callable[..., Any]
#: ``flask.request``'s target (one context lookup, not one per attribute); see ``_compat``
_current_request = proxy_target_getter(request)
#: Flask's request-context variable (``_compat.flask_request_context_var``), or None
_REQUEST_CTX = flask_request_context_var()


def _text(value: str) -> str:
    """WSGI strings are latin-1 decoded bytes; give the UTF-8 text back."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return value


def _reason(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


class _Body:
    """The app's response iterable; records the request when the server closes it."""

    __slots__ = ("_exc", "_holder", "_result", "_rp", "_sent", "_uid")

    def __init__(self, result: Iterable[bytes], rp: RequestPass, holder: list[Any],
                 uid: Any) -> None:
        self._result = result
        self._rp = rp
        self._holder = holder
        self._uid = uid
        self._sent = 0

    def __iter__(self) -> Iterator[bytes]:
        if len(self._holder) == 1:  # http_size_metrics off
            return iter(self._result)
        return self._counted()

    def _counted(self) -> Iterator[bytes]:
        for chunk in self._result:
            self._sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            holder = self._holder
            if len(holder) > 1:
                _sizes(self._rp, holder, self._sent)
            self._rp.finish(holder[0], None, self._uid)


def _sizes(rp: RequestPass, holder: list[Any], sent: int) -> None:
    """Set the request pass's body sizes (``holder``: status, declared Content-Length)."""
    rp.response_size = response_size(rp.method_original, holder[0], holder[1], sent)


def _full_start_response(start_response: StartResponse, state: HttpState, rp: RequestPass,
                         holder: list[Any]) -> StartResponse:
    """The ``start_response`` the app gets when more than the status and the request id is
    read or added: the declared Content-Length (``http_size_metrics``), ``Server-Timing``,
    the captured response headers."""
    sizes = state.sizes
    header = state.request_id_header
    rid = rp.request_id
    timing = state.server_timing
    capture_response = state.capture_response is not None

    def _start_response(status: str, headers: list[tuple[str, str]],
                        exc_info: Any = None) -> Any:
        try:
            holder[0] = int(status[:3])
        except ValueError:
            holder[0] = 500
        if sizes:
            holder[1] = next((v for k, v in headers if k.lower() == "content-length"), None)
        headers.append((header, rid))
        if timing and wsgi_is_html(headers):
            value = rp.server_timing()
            if value is not None:
                headers.append(("Server-Timing", value))
        if capture_response:
            rp.capture_response_headers(headers)
        return start_response(status, headers, exc_info)

    return _start_response


class _Routes:
    """``routes(path)`` of the endpoint layer: the rule of the app's ``GET`` route at a
    browser URL path (``SCRIPT_NAME`` included), as the request metrics label it."""

    __slots__ = ("_adapter", "_app", "_cache", "_script")

    def __init__(self, app: Flask, script: str) -> None:
        self._app = app
        self._script = script
        self._adapter: Any = None
        self._cache: dict[str, str | None] = {}

    def __call__(self, path: str) -> str | None:
        cache = self._cache
        if path in cache:
            return cache[path]
        template = self._match(path)
        if len(cache) >= 2048:
            cache.clear()
        cache[path] = template
        return template

    def _match(self, path: str) -> str | None:
        script = self._script
        if script:
            if path != script and not path.startswith(script + "/"):
                return None
            path = path[len(script):] or "/"
        try:
            adapter = self._adapter
            if adapter is None:
                adapter = self._adapter = self._app.url_map.bind("localhost")
            rule, _args = adapter.match(path, method="GET", return_rule=True)
        except Exception:  # NotFound, MethodNotAllowed, RequestRedirect, host rules...
            return None
        return script + str(rule.rule)


class FlaskMiddleware:
    """The WSGI side of the adapter (installed as ``app.wsgi_app`` by :func:`instrument`)."""

    def __init__(self, wsgi_app: Callable[..., Any], app: Flask,
                 user_id_resolver: UserIdResolver | None = None) -> None:
        self.wsgi_app = wsgi_app
        self.app = app
        self.user_id_resolver = user_id_resolver
        self._full_dispatch: Callable[[], Any] = app.full_dispatch_request
        self._matchers: dict[str, _Routes] = {}
        # endpoint names of the views marked by do_not_track, found again when views change
        self._untracked: frozenset[str] = frozenset()
        self._untracked_views = -1
        self._untracked_paths: dict[tuple[str, str], bool] = {}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        try:
            state = http_state()
            path_info = environ.get("PATH_INFO") or "/"
            if not path_info.isascii():
                path_info = _text(path_info)
            endpoint = state.endpoints.get(path_info)
            rp = self._begin(state, environ, path_info)
        except Exception as exc:
            get_observability().faults.report("http", "flask", "request pass failed", exc)
            return self.wsgi_app(environ, start_response)
        if endpoint is not None:
            return self._serve(state, endpoint, environ, start_response, rp, path_info)
        if rp is None:
            return self.wsgi_app(environ, start_response)
        environ[_PASS] = rp
        if state.capture_request is not None:
            rp.capture_request_headers(wsgi_headers(environ))
        holder: list[Any] = [500]
        sizes = state.sizes
        header = state.request_id_header
        rid = rp.request_id
        if sizes or state.server_timing or state.capture_response is not None:
            if sizes:
                holder.append(None)  # the Content-Length the response declares
                length = environ.get("CONTENT_LENGTH")
                rp.request_size = int(length) if length and length.isdigit() else 0
            _start_response = _full_start_response(start_response, state, rp, holder)
        else:
            # the status and the request id: nothing else to read or add

            def _start_response(status: str, headers: list[tuple[str, str]],
                                exc_info: Any = None) -> Any:
                try:
                    holder[0] = int(status[:3])
                except ValueError:
                    holder[0] = 500
                headers.append((header, rid))
                return start_response(status, headers, exc_info)

        rp.activate()
        try:
            result = self.wsgi_app(environ, _start_response)
        except BaseException as exc:
            rp.finish(500, exc, rp.resolved_user_id)
            rp.deactivate()
            raise
        error = rp.error
        if error is not None or rp.body_complete:
            # the body is complete already (or the request failed): record now, with
            # the span current and the request id bound
            if sizes:
                _sizes(rp, holder, 0)
            rp.finish(holder[0], error, rp.resolved_user_id)
            rp.deactivate()
            return result
        rp.deactivate()  # keeps a bound user_id for the line written when the body ends
        return _Body(result, rp, holder, rp.resolved_user_id)

    def _begin(self, state: HttpState, environ: dict[str, Any],
               path_info: str) -> RequestPass | None:
        """The request pass of a request to ``path_info`` under ``state`` (the current one,
        or an endpoint's measured variant), or ``None`` when excluded: the exclusions of
        :func:`~mestres_observability.http.start_request` checked here, then
        :func:`~mestres_observability.http.begin_request` called positionally."""
        rx = state.excluded_rx  # state.excluded(path_info), inline
        if not state.enabled or path_info in state.excluded_exact or (
                rx is not None and rx.fullmatch(path_info) is not None):
            return None
        url_rx = state.excluded_urls["flask"]  # excluded_urls: searched in flask.request.url
        if url_rx is not None and url_rx.search(get_current_url(environ)):
            return None
        if len(self.app.view_functions) != self._untracked_views:
            self._find_untracked()
        if self._untracked and self._is_untracked(environ, path_info):
            return None
        script = environ.get("SCRIPT_NAME")
        path = path_info
        if script:
            path = _text(script) + path_info
            if path in state.excluded_exact or (rx is not None and rx.fullmatch(path)
                                                is not None):
                return None  # as start_request checks the full path
        get = environ.get
        if not state.tracing:  # scheme, Host and trace headers: for the span only
            return begin_request(state, get("REQUEST_METHOD", "GET"), path,
                                 get("QUERY_STRING", ""), get(state.request_id_environ),
                                 get("HTTP_USER_AGENT"), get("REMOTE_ADDR"),
                                 get("HTTP_X_FORWARDED_FOR"))
        return begin_request(state, get("REQUEST_METHOD", "GET"), path, get("QUERY_STRING", ""),
                             get(state.request_id_environ), get("HTTP_USER_AGENT"),
                             get("REMOTE_ADDR"), get("HTTP_X_FORWARDED_FOR"), None,
                             get("wsgi.url_scheme", "http"),
                             get("HTTP_HOST") or get("SERVER_NAME"),
                             wsgi_trace_headers(environ))

    def _find_untracked(self) -> None:
        views = self.app.view_functions
        self._untracked = frozenset(name for name, view in views.items() if is_untracked(view))
        self._untracked_views = len(views)
        self._untracked_paths.clear()

    def _is_untracked(self, environ: dict[str, Any], path_info: str) -> bool:
        """True when the request reaches a view marked by ``do_not_track``."""
        method = environ.get("REQUEST_METHOD", "GET")
        key = (method, path_info)
        found = self._untracked_paths.get(key)
        if found is None:
            try:
                adapter = self.app.url_map.bind_to_environ(environ)
                rule, _args = adapter.match(path_info, method=method, return_rule=True)
                found = rule.endpoint in self._untracked
            except Exception:  # NotFound, MethodNotAllowed, RequestRedirect...
                found = False
            if len(self._untracked_paths) >= 4096:
                self._untracked_paths.clear()
            self._untracked_paths[key] = found
        return found

    def _serve(self, state: HttpState, endpoint: Endpoint, environ: dict[str, Any],
               start_response: StartResponse, rp: RequestPass | None, path: str) -> Any:
        script = _text(environ.get("SCRIPT_NAME", ""))
        if rp is None:
            measured = state.measured.get(path)
            if measured is not None:  # e.g. the RUM endpoint: counted under its own route
                rp = self._begin(measured, environ, path)
        req = Request.from_wsgi(environ, path, state.trusted)
        req.routes = self._routes_for(script)
        status, headers, body = endpoint.dispatch(req)
        if rp is not None:
            rp.set_route(script + path)
            headers.append((state.request_id_header, rp.request_id))
        start_response(_reason(status), headers)
        if rp is not None:
            rp.finish(status)
        return [body]

    def _routes_for(self, script: str) -> _Routes:
        matchers = self._matchers
        found = matchers.get(script)
        if found is None:
            if len(matchers) >= 16:
                matchers.clear()
            found = matchers[script] = _Routes(self.app, script)
        return found

    # ---------------------------------------------------------------- inside Flask
    def full_dispatch_request(self) -> Any:
        """Installed as the app's ``full_dispatch_request``: reads the route
        template before the user's ``before_request`` hooks run (the request
        context is pushed and routing done by then), and notes whether the
        finished response's body is complete already (not streamed).

        One call around Flask's own, instead of a ``before_request`` and an
        ``after_request`` hook: Flask resolves every hook through
        ``ensure_sync``, which cost more than the work the hooks did.
        """
        rp = None
        try:
            ctx = _REQUEST_CTX.get(None) if _REQUEST_CTX is not None else None
            req = ctx.request if ctx is not None else _current_request()
            environ = req.environ
            rp = environ.get(_PASS)
            if rp is not None:
                rule = req.url_rule
                template = rule.rule if rule is not None else self._rule_for_405()
                if template is not None:
                    script = environ.get("SCRIPT_NAME")
                    rp.route = _text(script) + template if script else template  # set_route
                if rp.labels is None:  # http_label_callback: it gets the request
                    rp.native = req
                rp.track_in_progress()
                if rp.state.request_hook is not None:
                    rp.request_hook(req)
        except Exception as exc:
            get_observability().faults.report("http", "flask_route", "reading the route failed",
                                              exc)
        response = self._full_dispatch()
        if rp is not None:
            if rp.state.response_hook is not None:
                rp.response_hook(req, response)
            try:
                body = response.response
                # response.is_streamed, inline for the bodies Flask makes (a list)
                if type(body) is list or not response.is_streamed:
                    rp.body_complete = True
                elif (response.status_code >= 400 and isinstance(body, ClosingIterator)):
                    # an HTTPException (abort(404), routing errors) turned into a response
                    # by running it as a WSGI app: a short body held in memory
                    response.make_sequence()
                    rp.body_complete = True
            except Exception as exc:
                rp.state.faults.report("http", "flask_body", "body check failed", exc)
        return response

    @staticmethod
    def _rule_for_405() -> str | None:
        err = request.routing_exception
        if not isinstance(err, MethodNotAllowed) or not err.valid_methods:
            return None
        from flask.globals import request_ctx

        adapter = request_ctx.url_adapter
        if adapter is None:
            return None
        rule, _args = adapter.match(method=next(iter(err.valid_methods)), return_rule=True)
        return str(rule.rule)

    def on_exception(self, sender: Any, exception: BaseException, **extra: Any) -> None:
        """``got_request_exception`` receiver: keep the exception for the span."""
        rp = request.environ.get(_PASS)
        if rp is not None:
            rp.error = exception

    def teardown(self, exc: BaseException | None) -> None:
        """Run the user-id resolver (registered only when there is one)."""
        environ = request.environ
        rp = environ.get(_PASS)
        if rp is None:
            return
        resolver = self.user_id_resolver
        if resolver is not None:
            rp.resolved_user_id = resolve_user_id(resolver, request, rp.state.faults)


def instrument(app: Flask, obs: Observability | None = None, *,
               user_id_resolver: UserIdResolver | None = None) -> FlaskMiddleware:
    """Wire a Flask app once: request metrics, spans, access log, request id, endpoints.

    Args:
        app: the Flask application.
        obs: the instance used for set-up checks (default: the current one);
            requests always use the instance current when they run, so a
            later ``init_observability`` takes over without re-wiring.
        user_id_resolver: ``callable(request) -> user id`` run at the end of
            each request for the access log's ``user_id``; its faults are counted.

    Returns:
        The middleware (the same object on every call for the same app).
    """
    existing = app.extensions.get(EXTENSION_KEY)
    if isinstance(existing, FlaskMiddleware):
        if user_id_resolver is not None:
            existing.user_id_resolver = user_id_resolver
            _add_teardown(app, existing)
        _setup(obs)
        return existing
    mw = FlaskMiddleware(app.wsgi_app, app, user_id_resolver)
    app.wsgi_app = mw  # type: ignore[method-assign]
    # on the instance, around whatever the class (or a subclass) defines; Flask refuses
    # its hook decorators after the first request, and this needs none
    app.full_dispatch_request = mw.full_dispatch_request  # type: ignore[method-assign]
    got_request_exception.connect(mw.on_exception, app, weak=False)
    if user_id_resolver is not None:
        _add_teardown(app, mw)
    app.extensions[EXTENSION_KEY] = mw
    _setup(obs)
    return mw


def _add_teardown(app: Flask, mw: FlaskMiddleware) -> None:
    funcs = app.teardown_request_funcs.setdefault(None, [])
    if mw.teardown not in funcs:
        funcs.append(mw.teardown)


def _setup(obs: Observability | None) -> None:
    setup(obs, "flask")
