"""Decorators keep users' types: mypy --strict on a typed usage file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_usage_file_type_checks() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         str(ROOT / "tests" / "typing_usage.py")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
