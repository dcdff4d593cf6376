"""The standby worker of ``metrics_port`` tells a serving sibling from another program by
the marker the serving worker writes in the multiprocess directory, not only by asking
the port over HTTP: a sibling too loaded to answer within the probe's timeout is still a
sibling (under a loaded CI machine the standby warned "held by another program")."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mestres_observability import _metrics_server as ms


@pytest.fixture
def squatter() -> Iterator[int]:
    """A listening socket that never answers (a hung sibling, or another program)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


@pytest.fixture
def sibling() -> Iterator[int]:
    """A live process other than this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_silent_sibling_named_by_its_marker_is_a_sibling(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, squatter: int, sibling: int) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    (tmp_path / f"metrics-port-{squatter}.pid").write_text(str(sibling))
    assert ms._held_by_us("127.0.0.1", squatter) is True


def test_without_a_live_marker_a_silent_listener_is_another_program(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, squatter: int) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid in (dead.pid, os.getpid(), "junk"):  # a dead worker, this process, a torn file
        (tmp_path / f"metrics-port-{squatter}.pid").write_text(str(pid))
        assert ms._sibling_serves(squatter) is False
    assert ms._held_by_us("127.0.0.1", squatter) is False


def test_the_serving_worker_writes_its_marker(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(ms, "_multiprocess", lambda: True)
    ms._mark_serving(9464)
    assert (tmp_path / "metrics-port-9464.pid").read_text() == str(os.getpid())
    monkeypatch.setattr(ms, "_multiprocess", lambda: False)
    ms._mark_serving(9465)  # single-process mode: no sibling to tell
    assert not (tmp_path / "metrics-port-9465.pid").exists()
