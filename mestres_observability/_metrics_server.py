"""Optional separate ``/metrics`` listener (``metrics_port``), so metrics stay off the public app.

One daemon thread per process serves ``metrics_path`` on
``metrics_host:metrics_port`` with the same content negotiation and
protection as the in-app endpoint, for whatever instance is current when a
scrape arrives. It is started once; later calls return the running address.

Several workers, one port:

* **gunicorn**: the master serves the port (the ``when_ready`` hook of
  :mod:`mestres_observability.gunicorn`, or the preloaded application). A
  forked worker closes its inherited copy of the listening socket and never
  binds the port itself.
* **no master hook** (``uvicorn --workers N``): in multiprocess mode the first
  worker that binds the port serves every worker's totals (the files are
  shared). A worker that finds the port taken (``EADDRINUSE``) does not fail:
  it logs once at info level and keeps retrying on a daemon thread every
  :data:`RETRY_INTERVAL` seconds, so when the serving worker exits or is
  recycled, a sibling takes the port over. If what holds the port is not a
  mestres-observability listener, the standby logs a warning instead (still
  once) and keeps retrying.

Outside multiprocess mode a port that cannot be bound is a configuration error
raised at start-up.

**Slow or idle clients cannot take the listener.** A client has
:data:`HEADER_TIMEOUT` seconds in all to send its request line and headers
(trickling a byte at a time does not extend it), every socket read and write
times out after the same time, and at most :data:`MAX_CONNECTIONS` connections
are served at once, one thread each. A new connection past the bound takes the
place of the oldest one still sending its headers (closed at once), so a
flood of half-sent requests never locks a scraper out; when every slot is
busy answering, the newcomer gets a ``503`` and is closed without a thread.
Threads are capped at twice the bound, evicted connections still ending
included: on a loaded machine a newcomer waits briefly for one to end, then
gets the same ``503``.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from ._endpoint import Endpoint, Headers, Request
from ._forksafe import run_after_fork
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .observability import Observability

__all__ = ["HEADER_TIMEOUT", "MAX_CONNECTIONS", "RETRY_INTERVAL", "metrics_server_address",
           "metrics_server_role", "start_metrics_server", "stop_metrics_server"]

_log = logging.getLogger("mestres_observability")

#: Seconds between two bind attempts of a worker standing by for the port.
RETRY_INTERVAL = 5.0
#: Seconds a client has to send a whole request head; also each socket read's and write's
#: timeout. Read when a listener starts.
HEADER_TIMEOUT = 5.0
#: Connections served at once (one thread each). Read when a listener starts.
MAX_CONNECTIONS = 32
_CONN_THREAD = "mestres-observability-metrics-conn"
_BUSY_503 = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
             b"Content-Length: 5\r\nRetry-After: 1\r\nConnection: close\r\n\r\nbusy\n")
_SERVER_NAME = "mestres-observability"

_lock = threading.Lock()
_server: _Server | None = None
_thread: threading.Thread | None = None
_standby: _Standby | None = None
#: ``(host, port)`` a parent process served when this process was forked from it.
_inherited: tuple[str, int] | None = None


class _Handler(BaseHTTPRequestHandler):
    server_version = _SERVER_NAME
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.header_timeout)  # each read and write

    def handle_one_request(self) -> None:
        self.server.reading(self.connection)  # the head must arrive before its deadline
        super().handle_one_request()

    def _answer(self, method: str) -> None:
        from .observability import get_observability

        self.server.answering(self.connection)

        path, _, query = self.path.partition("?")
        endpoint = _endpoints(get_observability()).get(path)
        if endpoint is None:
            status, headers, body = 404, [("Content-Type", "text/plain; charset=utf-8")], (
                b"not found\n")
        else:
            read = self.rfile.read if self.headers.get("Content-Length") else None
            status, headers, body = endpoint.dispatch(Request(
                method, path, Headers(self.headers.items()), query=query,
                peer=self.client_address[0], read=read))
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


_table: tuple[Any, dict[str, Endpoint]] | None = None


def _endpoints(obs: Observability) -> dict[str, Endpoint]:
    """The listener's path table for ``obs``: ``metrics_path`` (default ``/metrics``) only."""
    global _table
    cached = _table
    if cached is not None and cached[0] is obs:
        return cached[1]
    from .http import METRICS_ENDPOINT

    path = obs.config.metrics_path or "/metrics"
    table = {path: Endpoint(METRICS_ENDPOINT, path, obs, obs.config)}
    _table = (obs, table)
    return table


class _Standby:
    """A daemon thread retrying the bind while a sibling worker holds the port."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mestres-observability-metrics-standby",
                                       daemon=True)

    def _run(self) -> None:
        announced = False
        while not self.stop.is_set():
            if not announced:
                announced = True
                self._announce()
            if self.stop.wait(RETRY_INTERVAL):
                return
            try:
                if _take_over(self):
                    _log.info("mestres_observability: this worker (pid %s) now serves /metrics "
                              "on %s:%s", os.getpid(), self.host, self.port)
                    return
            except Exception:  # never let the standby thread die noisily or take the worker
                _log.debug("mestres_observability: metrics port retry failed", exc_info=True)

    def _announce(self) -> None:
        """Log once why this worker is not serving: a sibling serves, or something else holds it."""
        if _held_by_us(self.host, self.port):
            _log.info("mestres_observability: %s:%s is served by another worker (it serves every "
                      "worker's totals); pid %s stands by and retries every %ss",
                      self.host, self.port, os.getpid(), RETRY_INTERVAL)
        else:
            _log.warning("mestres_observability: metrics_port %s:%s is held by another program; "
                         "pid %s keeps retrying every %ss (pick a free port)",
                         self.host, self.port, os.getpid(), RETRY_INTERVAL)


def _marker(port: int) -> str | None:
    """The file naming the worker that serves ``port`` (multiprocess mode only)."""
    from .multiprocess import multiprocess_dir

    directory = multiprocess_dir()
    return os.path.join(directory, f"metrics-port-{port}.pid") if directory else None


def _mark_serving(port: int) -> None:
    """Note this process as the one serving ``port``, for siblings that stand by."""
    path = _marker(port)
    if path is None or not _multiprocess():
        return
    with contextlib.suppress(OSError), open(path, "w", encoding="ascii") as fh:
        fh.write(str(os.getpid()))


def _sibling_serves(port: int) -> bool:
    """True when the marker names another live process (the serving sibling)."""
    path = _marker(port)
    if path is None:
        return False
    try:
        with open(path, encoding="ascii") as fh:
            pid = int(fh.read().strip() or "0")
    except (OSError, ValueError):
        return False
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # alive, another user's
    except OSError:
        return False
    return True


def _held_by_us(host: str, port: int) -> bool:
    """True when a sibling worker serves ``host:port``: its marker in the multiprocess
    directory names a live process, or a mestres-observability listener answers there
    (a loaded sibling may answer slowly: the marker does not depend on it answering)."""
    if _sibling_serves(port):
        return True
    target = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    conn = http.client.HTTPConnection(target, port, timeout=2)
    try:
        conn.request("HEAD", "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return (resp.getheader("Server") or "").strip() == _SERVER_NAME
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class _Server(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with a bound on connections and a deadline for request heads.

    Each connection is ``[reading, deadline]``: reading its head (evictable, closed
    once the deadline passes) or answering. The accept loop reaps expired heads
    (``service_actions`` runs every half second) and makes room for a newcomer by
    closing the oldest connection still reading; with every slot answering, the
    newcomer gets a 503 from the accept thread itself.
    """

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int]) -> None:
        self.header_timeout = HEADER_TIMEOUT
        self.max_connections = max(1, MAX_CONNECTIONS)
        self._conns: dict[socket.socket, list[Any]] = {}
        self._conns_lock = threading.Lock()
        # connection threads alive, evicted ones still ending included: a hard cap of twice
        # the bound, so a flood of newcomers on a loaded machine cannot outrun the evictions
        self.max_threads = 2 * self.max_connections
        self._thread_slots = threading.BoundedSemaphore(self.max_threads)
        self.threads = 0
        self.peak_threads = 0
        super().__init__(address, _Handler)

    # ------------------------------------------------------------ per connection state
    def reading(self, conn: socket.socket) -> None:
        with self._conns_lock:
            state = self._conns.get(conn)
            if state is not None:
                state[0], state[1] = True, time.monotonic() + self.header_timeout

    def answering(self, conn: socket.socket) -> None:
        with self._conns_lock:
            state = self._conns.get(conn)
            if state is not None:
                state[0] = False

    @property
    def connections(self) -> int:
        """Connections currently held (reading or answering)."""
        return len(self._conns)

    def _close(self, conn: socket.socket) -> None:
        """End a connection another thread is blocked on: its read returns at once."""
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------ accept loop
    def process_request(self, request: Any, client_address: Any) -> None:
        evict = None
        with self._conns_lock:
            if len(self._conns) >= self.max_connections:
                readers = [(state[1], c) for c, state in self._conns.items() if state[0]]
                if readers:
                    evict = min(readers, key=lambda r: r[0])[1]
                    self._conns.pop(evict, None)
            full = len(self._conns) >= self.max_connections
            if not full:
                self._conns[request] = [True, time.monotonic() + self.header_timeout]
        if evict is not None:
            self._close(evict)
        # an evicted connection's thread ends as soon as its read returns; under load that
        # can lag, so wait a little for one to end rather than exceed the cap
        if not full and not self._thread_slots.acquire(timeout=self.header_timeout / 5):
            with self._conns_lock:
                self._conns.pop(request, None)
            full = True
        if full:  # every slot is answering a request: a short 503, no thread
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(_BUSY_503)
            self.shutdown_request(request)
            return
        with self._conns_lock:
            self.threads += 1
            self.peak_threads = max(self.peak_threads, self.threads)
        try:
            threading.Thread(target=self._connection_thread, args=(request, client_address),
                             name=_CONN_THREAD, daemon=True).start()
        except Exception:  # could not start a thread: give the slot back
            self._thread_ended()
            with self._conns_lock:
                self._conns.pop(request, None)
            self.shutdown_request(request)

    def _connection_thread(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._thread_ended()

    def _thread_ended(self) -> None:
        with self._conns_lock:
            self.threads -= 1
        self._thread_slots.release()

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that resets or vanishes mid-request: nothing for the service's logs
        _log.debug("mestres_observability: metrics listener request failed", exc_info=True)

    def service_actions(self) -> None:
        now = time.monotonic()
        with self._conns_lock:
            expired = [c for c, state in self._conns.items() if state[0] and state[1] <= now]
            for conn in expired:
                self._conns.pop(conn, None)
        for conn in expired:
            self._close(conn)


def _bind(host: str, port: int) -> _Server:
    return _Server((host, port))


def _serve(server: _Server) -> None:
    """Start serving ``server`` (the caller holds ``_lock``)."""
    global _server, _thread
    thread = threading.Thread(target=server.serve_forever, name="mestres-observability-metrics",
                              daemon=True)
    thread.start()
    _server, _thread = server, thread
    _mark_serving(int(server.server_address[1]))


def _take_over(standby: _Standby) -> bool:
    """One retry of a standby: bind and serve when the port is free."""
    global _standby
    with _lock:
        if _standby is not standby or standby.stop.is_set():
            return True  # stopped or replaced meanwhile: end this thread
        try:
            server = _bind(standby.host, standby.port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
        _serve(server)
        _standby = None
        return True


def _multiprocess() -> bool:
    from .multiprocess import is_multiprocess, multiprocess_dir

    return bool(multiprocess_dir()) and is_multiprocess()


def start_metrics_server(obs: Observability | None = None) -> tuple[str, int] | None:
    """Start the listener for ``obs`` (default: current) once; its ``(host, port)``.

    Returns ``None`` when ``metrics_port`` is unset, and when another process
    serves the port for this one: the parent this process was forked from
    (gunicorn's master), or, in multiprocess mode, a sibling worker that bound
    it first (this process then stands by; see the module documentation).

    Raises:
        ConfigurationError: the address cannot be bound (names ``metrics_port``),
            except for a port held by a sibling in multiprocess mode.
    """
    global _standby
    if obs is None:
        from .observability import get_observability

        obs = get_observability()
    cfg = obs.config
    with _lock:
        if _server is not None:
            return metrics_server_address()
        if cfg.metrics_port is None:
            return None
        if _inherited is not None and cfg.metrics_port in (0, _inherited[1]):
            return None  # the parent (gunicorn's master) serves it
        if _standby is not None:
            return None
        try:
            server = _bind(cfg.metrics_host, cfg.metrics_port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and cfg.metrics_port != 0 and _multiprocess():
                standby = _Standby(cfg.metrics_host, cfg.metrics_port)
                _standby = standby
                standby.thread.start()
                return None
            raise ConfigurationError(
                "metrics_port", cfg.metrics_port,
                f"cannot listen on {cfg.metrics_host}:{cfg.metrics_port} ({exc.strerror or exc}); "
                "pick a free port or unset it to serve /metrics on the app",
            ) from None
        _serve(server)
        return metrics_server_address()


def metrics_server_address() -> tuple[str, int] | None:
    """``(host, port)`` of the listener this process runs, or ``None``."""
    server = _server
    if server is None:
        return None
    host, port = server.server_address[:2]
    return (str(host), int(port))


def metrics_server_role() -> str:
    """What this process does for ``metrics_port``.

    ``"serving"`` (it runs the listener), ``"standby"`` (a sibling holds the
    port; retrying), ``"parent"`` (forked from the process that serves it) or
    ``"off"``.
    """
    if _server is not None:
        return "serving"
    if _standby is not None:
        return "standby"
    if _inherited is not None:
        return "parent"
    return "off"


def stop_metrics_server() -> None:
    """Stop the listener or the standby thread (tests; at exit the daemon threads simply end)."""
    global _server, _thread, _standby, _inherited
    with _lock:
        server, thread, standby = _server, _thread, _standby
        _server = _thread = _standby = None
        _inherited = None
    if standby is not None:
        standby.stop.set()
        standby.thread.join(timeout=5)
    if server is not None:
        server.shutdown()
        server.server_close()
    if thread is not None:
        thread.join(timeout=5)


def _after_fork_in_child() -> None:  # pragma: no cover - runs in forked children
    """The serving thread and the standby thread did not survive the fork: forget them.

    The parent keeps serving; the child closes its copy of the listening socket
    (so the port is not held open by workers if the parent dies) and remembers
    that its parent serves. ``server.shutdown()`` must never run here: it would
    wait forever for a ``serve_forever`` loop that only exists in the parent.
    """
    global _lock, _server, _thread, _standby, _inherited
    _lock = threading.Lock()
    server, _server, _thread = _server, None, None
    if server is not None:
        host, port = server.server_address[:2]
        _inherited = (str(host), int(port))
        with contextlib.suppress(OSError):
            server.socket.close()
    if _standby is not None:
        # the parent stands by and retries; a child's own start call starts its own standby
        _standby = None


run_after_fork(_after_fork_in_child)
