"""Shared helpers for the test-suite: free ports, required binaries, polling."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REQUIRE_INTEGRATION = os.environ.get("MESTRES_TEST_REQUIRE_INTEGRATION", "") not in ("", "0")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bind to 0, read it back, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_binary(name: str, *extra_dirs: str) -> str:
    """Path of ``name``; skip with a clear reason when it is missing.

    Under ``MESTRES_TEST_REQUIRE_INTEGRATION=1`` (set by CI) a missing binary
    fails the test instead of skipping it, so CI always runs integration tests.
    """
    found = shutil.which(name)
    if found is None:
        for d in extra_dirs:
            for candidate in sorted(Path("/").glob(d.lstrip("/")), reverse=True):
                p = candidate / name
                if p.exists() and os.access(p, os.X_OK):
                    found = str(p)
                    break
            if found:
                break
    if found is None:
        reason = f"{name!r} is not installed (Debian: see .ci/run for the package)"
        if REQUIRE_INTEGRATION:
            pytest.fail(f"MESTRES_TEST_REQUIRE_INTEGRATION=1 but {reason}")
        pytest.skip(reason)
    return found


def require_module(name: str) -> Any:
    """Import ``name``; skip with a clear reason when it is missing.

    Like :func:`require_binary`, a missing module fails the test under
    ``MESTRES_TEST_REQUIRE_INTEGRATION=1``: CI installs every extra the suite
    needs, so a skip there would hide a missing dependency.
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        reason = f"could not import {name!r} ({exc}); install the dev extras: make venv"
        if REQUIRE_INTEGRATION:
            pytest.fail(f"MESTRES_TEST_REQUIRE_INTEGRATION=1 but {reason}")
        pytest.skip(reason, allow_module_level=True)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05,
               message: str = "condition") -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {message}")


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``"256k"``) on ``path`` (created), for disk-full tests.

    Needs root (CI runs as root); skips with the reason when the mount fails,
    and fails instead under ``MESTRES_TEST_REQUIRE_INTEGRATION=1``.
    """
    path.mkdir(mode=0o700, exist_ok=True)
    mount = shutil.which("mount")
    result = (subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                              str(path)], capture_output=True, text=True, check=False)
              if mount else None)
    if result is None or result.returncode != 0:
        why = result.stderr.strip() if result is not None else "no mount command"
        reason = f"cannot mount a {size} tmpfs on {path} (needs root): {why}"
        if REQUIRE_INTEGRATION:
            pytest.fail(f"MESTRES_TEST_REQUIRE_INTEGRATION=1 but {reason}")
        pytest.skip(reason)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@contextlib.contextmanager
def restored_logging() -> Iterator[None]:
    """Undo, on the way out, what ``configure_logging`` did to this process: the library's
    handlers leave the root logger, whose level comes back, structlog's configuration is
    the one before and its context variables are cleared."""
    import logging

    import structlog

    saved_structlog = structlog.get_config()
    root = logging.getLogger()
    saved_level = root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if getattr(handler, "mestres_handler", False):
                root.removeHandler(handler)
        root.setLevel(saved_level)
        structlog.configure(**saved_structlog)
        structlog.contextvars.clear_contextvars()
