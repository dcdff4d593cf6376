"""Optional separate ``/metrics`` listener (``metrics_port``), so metrics stay off the public app.

One daemon thread per process serves ``metrics_path`` on
``metrics_host:metrics_port`` with the same content negotiation and
protection as the in-app endpoint, for whatever instance is current when a
scrape arrives. It is started once; later calls return the running address.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .observability import Observability

__all__ = ["metrics_server_address", "start_metrics_server", "stop_metrics_server"]

_lock = threading.Lock()
_server: ThreadingHTTPServer | None = None
_thread: threading.Thread | None = None


class _Handler(BaseHTTPRequestHandler):
    server_version = "mestres-observability"
    sys_version = ""

    def _answer(self, method: str) -> None:
        from .http import serve_endpoint
        from .observability import get_observability

        obs = get_observability()
        wanted = obs.config.metrics_path or "/metrics"
        path = self.path.split("?", 1)[0]
        if path != wanted:
            status, headers, body = 404, [("Content-Type", "text/plain; charset=utf-8")], (
                b"not found\n")
        else:
            status, headers, body = serve_endpoint(
                obs, "metrics", method, accept=self.headers.get("Accept"),
                accept_encoding=self.headers.get("Accept-Encoding"),
                authorization=self.headers.get("Authorization"),
            )
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if not any(k.lower() == "content-length" for k, _ in headers):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer("GET")

    def do_HEAD(self) -> None:
        self._answer("HEAD")

    def do_POST(self) -> None:
        self._answer("POST")

    def log_message(self, format: str, *args: object) -> None:
        return  # scrapes are not access-logged


def start_metrics_server(obs: Observability | None = None) -> tuple[str, int] | None:
    """Start the listener for ``obs`` (default: current) once; its ``(host, port)``.

    Returns ``None`` when ``metrics_port`` is unset.

    Raises:
        ConfigurationError: the address cannot be bound (names ``metrics_port``).
    """
    global _server, _thread
    if obs is None:
        from .observability import get_observability

        obs = get_observability()
    cfg = obs.config
    with _lock:
        if _server is not None:
            return metrics_server_address()
        if cfg.metrics_port is None:
            return None
        try:
            server = ThreadingHTTPServer((cfg.metrics_host, cfg.metrics_port), _Handler)
        except OSError as exc:
            raise ConfigurationError(
                "metrics_port", cfg.metrics_port,
                f"cannot listen on {cfg.metrics_host}:{cfg.metrics_port} ({exc.strerror or exc}); "
                "pick a free port or unset it to serve /metrics on the app",
            ) from None
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name="mestres-observability-metrics",
                                  daemon=True)
        thread.start()
        _server, _thread = server, thread
        return metrics_server_address()


def metrics_server_address() -> tuple[str, int] | None:
    """``(host, port)`` of the running listener, or ``None``."""
    server = _server
    if server is None:
        return None
    host, port = server.server_address[:2]
    return (str(host), int(port))


def stop_metrics_server() -> None:
    """Stop the listener (tests; at exit the daemon thread simply ends)."""
    global _server, _thread
    with _lock:
        server, thread = _server, _thread
        _server = _thread = None
    if server is not None:
        server.shutdown()
        server.server_close()
    if thread is not None:
        thread.join(timeout=5)
