"""The separate metrics listener (``metrics_port``) against slow and idle clients (issue 10 #8).

Before: one thread per connection and no timeout, so 300 half-sent requests held
300 threads (+7 MB) until the clients closed them. Now a request head has a
total deadline, the connections served at once are bounded, and a newcomer
past the bound takes the place of the oldest connection still sending its head.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.core import GaugeMetricFamily

from mestres_observability import _metrics_server as ms
from mestres_observability.testing import fresh_observability
from tests._support import wait_until

HALF_SENT = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n"  # no blank line


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    monkeypatch.setattr(ms, "HEADER_TIMEOUT", 2.0, raising=False)  # the default 5 s, shortened for the suite
    with fresh_observability(metrics_port=0) as obs:
        address = ms.start_metrics_server(obs)
        assert address is not None
        try:
            yield address
        finally:
            ms.stop_metrics_server()


def _scrape(address: tuple[str, int]) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=5) as resp:
        return resp.status, resp.read()


def _closed_by_server(sock: socket.socket, by: float) -> bool:
    """True when the server ends ``sock`` (EOF or reset) before ``by`` (monotonic)."""
    sock.settimeout(max(0.01, by - time.monotonic()))
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_the_defaults_bound_a_head_to_five_seconds_and_the_listener_to_32_connections() -> None:
    assert ms.HEADER_TIMEOUT == 5.0
    assert ms.MAX_CONNECTIONS == 32


def _connection_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == ms._CONN_THREAD)


def test_300_half_sent_requests_hold_a_bounded_number_of_threads_and_a_scrape_still_succeeds(
        listener: tuple[str, int]) -> None:
    server = ms._server
    assert server is not None
    socks: list[socket.socket] = []
    peak = held = 0
    try:
        for _ in range(300):
            sock = socket.create_connection(listener, timeout=5)
            sock.sendall(HALF_SENT)
            socks.append(sock)
            peak = max(peak, _connection_threads())
            held = max(held, server.connections)
        opened = time.monotonic()
        time.sleep(0.2)  # let the listener take them all in
        peak = max(peak, _connection_threads())
        assert held <= ms.MAX_CONNECTIONS  # connections held at once
        # threads: was 300, one per connection; now the bound, plus evicted ones still ending,
        # capped at twice the bound (the listener's own count; a thread that has given its
        # place back may still be finishing its last lines when threading.enumerate() looks)
        assert server.peak_threads <= 2 * ms.MAX_CONNECTIONS, server.peak_threads
        assert peak <= 2 * ms.MAX_CONNECTIONS + 4, peak
        # a scraper is never locked out by them (it takes the oldest half-sent one's place)
        for _ in range(3):
            status, body = _scrape(listener)
            assert status == 200
            assert b"# TYPE http_requests_total counter" in body
        # every half-sent connection is closed by the server within the head deadline
        by = opened + ms.HEADER_TIMEOUT + 1.5
        still_open = [s for s in socks if not _closed_by_server(s, by)]
        assert still_open == []
        wait_until(lambda: _connection_threads() == 0, timeout=5, message="threads to end")
    finally:
        for sock in socks:
            sock.close()


def test_a_head_trickled_a_byte_at_a_time_is_cut_at_the_deadline(
        listener: tuple[str, int]) -> None:
    sock = socket.create_connection(listener, timeout=5)
    start = time.monotonic()
    try:
        closed = False
        for byte in HALF_SENT * 4:  # one byte every 0.25 s: each read is quick, the head never ends
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.25)
            if time.monotonic() - start > ms.HEADER_TIMEOUT + 2:
                break
        closed = closed or _closed_by_server(sock, start + ms.HEADER_TIMEOUT + 2)
        assert closed
        assert time.monotonic() - start < ms.HEADER_TIMEOUT + 2
    finally:
        sock.close()


def test_when_every_slot_is_answering_a_newcomer_gets_a_quick_503(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ms, "MAX_CONNECTIONS", 2, raising=False)
    release = threading.Event()
    entered = threading.Semaphore(0)

    class Slow:
        def describe(self) -> Any:  # registration reads this, not collect()
            return [GaugeMetricFamily("slow_gauge", "Slow.")]

        def collect(self) -> Any:
            entered.release()
            release.wait(10)
            yield GaugeMetricFamily("slow_gauge", "Slow.", value=1)

    with fresh_observability(metrics_port=0) as obs:
        obs.registry.register(Slow())
        address = ms.start_metrics_server(obs)
        assert address is not None
        results: list[int] = []
        scrapers = [threading.Thread(target=lambda: results.append(_scrape(address)[0]))
                    for _ in range(2)]
        try:
            for t in scrapers:
                t.start()
            assert entered.acquire(timeout=5)
            assert entered.acquire(timeout=5)  # both slots are answering
            t0 = time.monotonic()
            sock = socket.create_connection(address, timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
            sock.close()
            assert reply.startswith(b"HTTP/1.0 503 ")
            assert time.monotonic() - t0 < 1.0
        finally:
            release.set()
            for t in scrapers:
                t.join(10)
            ms.stop_metrics_server()
        assert results == [200, 200]  # the two being answered were not disturbed


def test_threads_are_capped_at_twice_the_bound_even_when_evicted_ones_are_slow_to_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An evicted connection whose thread does not end (a loaded machine) holds its thread:
    newcomers past the cap wait briefly, then get a 503 instead of a new thread."""
    monkeypatch.setattr(ms, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(ms, "HEADER_TIMEOUT", 1.0)
    release = threading.Event()
    original = ms._Server.process_request_thread

    def stuck(self: ms._Server, request: Any, client_address: Any) -> None:
        release.wait(10)  # the thread ignores its eviction until released
        original(self, request, client_address)

    monkeypatch.setattr(ms._Server, "process_request_thread", stuck)
    with fresh_observability(metrics_port=0) as obs:
        address = ms.start_metrics_server(obs)
        assert address is not None
        server = ms._server
        assert server is not None
        socks = []
        try:
            for _ in range(4):  # two held, two evicted: four threads, the cap
                sock = socket.create_connection(address, timeout=5)
                sock.sendall(HALF_SENT)
                socks.append(sock)
            wait_until(lambda: server.threads == 4, timeout=5, message="four threads")
            late = socket.create_connection(address, timeout=5)
            socks.append(late)
            late.sendall(HALF_SENT)
            assert late.recv(64).startswith(b"HTTP/1.0 503")
            assert server.peak_threads == 4
        finally:
            release.set()
            for sock in socks:
                sock.close()
            ms.stop_metrics_server()
        wait_until(lambda: server.threads == 0, timeout=5, message="threads to end")
