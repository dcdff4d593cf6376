"""The RUM endpoint behind each framework, driven at its raw interface.

Each :class:`Driver` sends one request as bytes (any headers, a declared
``Content-Length`` that may lie, a body in chunks) to a small app of its
framework instrumented with the current instance, and returns
``(status, headers, body)``. WSGI apps get an environ, ASGI apps a scope and
a ``receive`` that yields the chunks: no test client in between, so nothing
fixes the request up.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mestres_observability import _current, get_observability
from mestres_observability.observability import Observability

Reply = tuple[int, dict[str, str], bytes]
PEER = "203.0.113.9"
HTML = "<!doctype html><html><body><h1>shop</h1></body></html>"


class Driver:
    """One framework's app and how to call it."""

    def __init__(self, name: str, call: Callable[..., Reply], templates: set[str]) -> None:
        self.name = name
        self._call = call
        #: the route templates a page URL can be grouped under
        self.templates = templates

    def call(self, method: str, path: str, headers: list[tuple[str, str]] | None = None,
             body: bytes = b"", *, declared: str | None = "auto", chunks: int = 1,
             peer: str = PEER, query: str = "") -> Reply:
        """Send one request; ``declared``: the ``Content-Length`` to claim (``"auto"``: the
        real length; ``None``: none, a chunked body)."""
        if declared == "auto":
            declared = str(len(body)) if body or method == "POST" else None
        return self._call(method, path, list(headers or ()), body, declared, max(1, chunks),
                          peer, query)

    def post(self, body: bytes, content_type: str | None = "text/plain;charset=UTF-8",
             **kw: Any) -> Reply:
        """``POST`` to the RUM endpoint."""
        headers = list(kw.pop("headers", ()))
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        return self.call("POST", kw.pop("path", "/api/v1/metrics"), headers, body, **kw)

    def __repr__(self) -> str:
        return f"Driver({self.name})"


# ---------------------------------------------------------------------- raw calls
def wsgi_caller(app: Any) -> Callable[..., Reply]:
    def call(method: str, path: str, headers: list[tuple[str, str]], body: bytes,
             declared: str | None, chunks: int, peer: str, query: str) -> Reply:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "",
            "QUERY_STRING": query, "SERVER_NAME": "testserver", "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": peer, "HTTP_HOST": "testserver",
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
            "wsgi.errors": io.StringIO(), "wsgi.multithread": True, "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        if declared is not None:
            environ["CONTENT_LENGTH"] = declared
        else:
            environ["wsgi.input_terminated"] = True
        for name, value in headers:
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value
            else:
                environ["HTTP_" + key] = value
        seen: dict[str, Any] = {}

        def start_response(status: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen["status"] = int(status[:3])
            seen["headers"] = {k.lower(): v for k, v in hdrs}
            return lambda data: None

        result = app(environ, start_response)
        try:
            out = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return seen["status"], seen["headers"], out

    return call


def asgi_caller(app: Any) -> Callable[..., Reply]:
    def call(method: str, path: str, headers: list[tuple[str, str]], body: bytes,
             declared: str | None, chunks: int, peer: str, query: str) -> Reply:
        raw = [(b"host", b"testserver")]
        if declared is not None:
            raw.append((b"content-length", declared.encode("latin-1")))
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path,
                 "raw_path": path.encode("utf-8", "replace"), "root_path": "",
                 "query_string": query.encode("latin-1"), "headers": raw,
                 "client": (peer, 50000), "server": ("testserver", 80)}
        size = max(1, -(-len(body) // chunks))
        parts = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
        messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
                    for i, p in enumerate(parts)]
        sent: list[dict[str, Any]] = []

        async def run() -> None:
            done = asyncio.Event()

            async def receive() -> dict[str, Any]:
                if messages:
                    return messages.pop(0)
                await done.wait()  # a client that stays until the answer (Django listens)
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    done.set()

            await app(scope, receive, send)

        asyncio.run(run())
        start = next(m for m in sent if m["type"] == "http.response.start")
        out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return (start["status"],
                {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start["headers"]},
                out)

    return call


# ---------------------------------------------------------------------- the apps
def flask_driver(obs: Observability) -> Driver:
    flask = pytest.importorskip("flask")
    from mestres_observability.flask import instrument

    app = flask.Flask("rum-tests")

    @app.get("/")
    def home() -> Any:
        return HTML

    @app.get("/products/<product_id>")
    def product(product_id: str) -> Any:
        return HTML

    @app.get("/api/orders/<int:order_id>")
    def order(order_id: int) -> Any:
        return {"id": order_id}

    instrument(app, obs)
    return Driver("flask", wsgi_caller(app.wsgi_app),
                  {"/", "/products/<product_id>", "/api/orders/<int:order_id>"})


def starlette_app(obs: Observability) -> Any:
    pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Mount, Route

    from mestres_observability.fastapi import instrument

    async def page(request: Any) -> Any:
        return HTMLResponse(HTML)

    async def order(request: Any) -> Any:
        return JSONResponse({"id": request.path_params["order_id"]})

    app = Starlette(routes=[
        Route("/", page), Route("/products/{product_id}", page),
        Mount("/api", routes=[Route("/orders/{order_id:int}", order)]),
    ])
    instrument(app, obs)
    return app


def starlette_driver(obs: Observability) -> Driver:
    return Driver("starlette", asgi_caller(starlette_app(obs)),
                  {"/", "/products/{product_id}", "/api/orders/{order_id:int}", "/api"})


DJANGO_TEMPLATES = {"/orders/<int:order_id>", "/async/<int:order_id>", "/stream",
                    "/api/items/<int:item_id>"}


def django_wsgi_driver(obs: Observability) -> Driver:
    from django.core.handlers.wsgi import WSGIHandler

    return Driver("django-wsgi", wsgi_caller(WSGIHandler()), DJANGO_TEMPLATES | _lib_templates())


def django_asgi_driver(obs: Observability) -> Driver:
    from django.core.handlers.asgi import ASGIHandler

    return Driver("django-asgi", asgi_caller(ASGIHandler()), DJANGO_TEMPLATES | _lib_templates())


def _lib_templates() -> set[str]:
    cfg = get_observability().config
    return {"/lib" + p for p in (cfg.metrics_path, cfg.health_path, cfg.health_liveness_path,
                                  cfg.health_readiness_path, cfg.health_detailed_path,
                                  cfg.rum_path, cfg.rum_script_path) if p}


DRIVERS: dict[str, Callable[[Observability], Driver]] = {
    "flask": flask_driver, "starlette": starlette_driver,
    "django-wsgi": django_wsgi_driver, "django-asgi": django_asgi_driver,
}


def django_ready() -> Iterator[None]:
    """Set Django up once for the module (its app's ready() initialises the library)."""
    pytest.importorskip("django")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.adapters.django_settings")
    import django

    previous = get_observability()
    django.setup()
    ready = get_observability()
    yield
    if ready is not previous:
        ready.shutdown(timeout=1.0)
        _current.swap(previous)
