"""Throwaway PostgreSQL and Redis servers for integration tests.

``postgres_server`` makes a fresh cluster with the Debian ``postgresql``
binaries (``/usr/lib/postgresql/<version>/bin``, not on ``PATH``) in a
temporary folder outside pytest's own (which the ``postgres`` user cannot
reach), runs it as ``postgres`` through ``runuser`` when the tests run as root
(``initdb`` refuses root, and CI runs as root), with its socket in that folder
(``-k``) and TCP on a free loopback port. ``redis_server`` starts
``redis-server`` on a free port without persistence. Both can be stopped and
restarted on the same port mid-test, or frozen (``SIGSTOP``: the port still
accepts connections but nothing answers) and thawed. Missing binaries skip
locally with the reason and fail under ``MESTRES_TEST_REQUIRE_INTEGRATION=1``
(CI).

Use :func:`running` (or its shortcuts :func:`running_postgres` and
:func:`running_redis`) in a test, or the ``postgres_server``/``redis_server``
fixtures, which ``tests/integration/conftest.py`` provides.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import psutil
import pytest

from tests._support import free_port, require_binary, wait_until

__all__ = ["PostgresServer", "RedisServer", "postgres_server", "redis_server", "running",
           "running_postgres", "running_redis"]

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class PostgresServer:
    """A throwaway PostgreSQL cluster (trust authentication, user ``postgres``)."""

    def __init__(self) -> None:
        self.initdb = require_binary("initdb", PG_BIN_GLOB)
        self.pg_ctl = str(Path(self.initdb).with_name("pg_ctl"))
        self._prefix: list[str] = []
        if _is_root():
            runuser = require_binary("runuser")
            self._prefix = [runuser, "-u", "postgres", "--"]
        self.base = Path(tempfile.mkdtemp(prefix="mestres-obs-pg-"))
        self.base.chmod(0o700)
        if _is_root():
            shutil.chown(self.base, "postgres", "postgres")
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = free_port()
        self._frozen: list[psutil.Process] = []
        self._run([self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres",
                   "-E", "UTF8", "--no-sync"])

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg2 driver)."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def dsn(self) -> str:
        """libpq connection string."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=2"

    def _run(self, args: list[str]) -> None:
        proc = subprocess.run([*self._prefix, *args], capture_output=True, text=True,
                              timeout=60, cwd=self.base, check=False)
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stdout}"
                               f"{proc.stderr}\n{log}")

    def start(self) -> None:
        """Start (or restart) the server on its port and wait until it accepts connections."""
        opts = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c full_page_writes=off -c synchronous_commit=off")
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", opts,
                   "-w", "-t", "30", "start"])
        wait_until(lambda: port_open(self.port), timeout=30, message="postgres to listen")

    def stop(self) -> None:
        """Stop at once (``-m immediate``: like a crash, clients see the connection drop)."""
        self.thaw()
        self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        wait_until(lambda: not port_open(self.port), timeout=30, message="postgres to stop")

    def running(self) -> bool:
        """True while the postmaster is up."""
        return (self.data / "postmaster.pid").exists()

    def freeze(self) -> None:
        """``SIGSTOP`` the postmaster and every backend: connections hang instead of failing."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        master = psutil.Process(pid)
        master.suspend()  # first, so that it forks no new backend meanwhile
        self._frozen = [master, *master.children(recursive=True)]
        for proc in self._frozen[1:]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.suspend()

    def thaw(self) -> None:
        """Undo :meth:`freeze` (``SIGCONT``); harmless when not frozen."""
        frozen, self._frozen = self._frozen, []
        for proc in frozen:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.resume()

    def cleanup(self) -> None:
        """Stop if running and delete the cluster."""
        self.thaw()
        if self.running():
            with contextlib.suppress(Exception):
                self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.base, ignore_errors=True)


class RedisServer:
    """A ``redis-server`` on a free loopback port, without persistence."""

    def __init__(self) -> None:
        self.binary = require_binary("redis-server")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mestres-obs-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _pong(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def start(self) -> None:
        """Start (or restart) on the same port and wait for ``PONG``."""
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self._pong, timeout=20, message="redis-server to answer PING")

    def stop(self) -> None:
        """Stop the server and wait until the port is closed."""
        self._kill()
        wait_until(lambda: not port_open(self.port), timeout=10, message="redis to stop")

    def freeze(self) -> None:
        """``SIGSTOP`` the server: connections are accepted by the kernel, never answered."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Undo :meth:`freeze` (``SIGCONT``)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # SIGKILL also ends a frozen process
            self.proc.wait(10)
            self.proc = None

    def cleanup(self) -> None:
        """Stop if running and delete the working folder."""
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class _Server(Protocol):
    def start(self) -> None: ...

    def cleanup(self) -> None: ...


S = TypeVar("S", bound=_Server)


@contextlib.contextmanager
def running(make: Callable[[], S]) -> Iterator[S]:
    """A server made by ``make`` (a server class), started, and removed on exit.

    Making it skips the test, with the reason, when a binary is missing, and
    fails it instead under ``MESTRES_TEST_REQUIRE_INTEGRATION=1`` (see
    :func:`tests._support.require_binary`).
    """
    server = make()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def running_postgres() -> contextlib.AbstractContextManager[PostgresServer]:
    """A started throwaway PostgreSQL server, removed on exit."""
    return running(PostgresServer)


def running_redis() -> contextlib.AbstractContextManager[RedisServer]:
    """A started throwaway Redis server, stopped on exit."""
    return running(RedisServer)


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A started :class:`PostgresServer` for one test."""
    with running(PostgresServer) as server:
        yield server


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A started :class:`RedisServer` for one test."""
    with running(RedisServer) as server:
        yield server
