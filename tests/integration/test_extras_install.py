"""Each framework extra, installed into a fresh virtualenv as its quick start says, gives
what that quick start imports (issue 11, item 1).

The quick starts in ``docs/frameworks/*.md`` are read: each
``pip install "mestres-observability[EXTRA]" SERVER`` line is run (the package
from a wheel built from this checkout, its dependencies from the package index
or pip's cache), then the imports of the Python blocks that follow it, up to the
next install line, are run in that virtualenv with nothing from this checkout on
the path. One virtualenv per extra, made without pip (the test's own pip installs
into it), so the whole test takes a few seconds with a warm pip cache.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests._support import REQUIRE_INTEGRATION

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PAGES = ROOT / "docs" / "frameworks"
#: Top-level modules a quick start may import from what it installs (user modules are skipped).
INSTALLED = {"mestres_observability", "flask", "fastapi", "starlette", "django", "uvicorn",
             "gunicorn"}
INSTALL = re.compile(r'^pip install "mestres-observability\[(\w+)\]"((?: [\w.-]+)*)$')
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
#: The adapter module each extra is for (imported too, as init_observability(app) would).
ADAPTER = {"flask": "flask", "fastapi": "fastapi", "starlette": "fastapi",
           "django": "django.middleware"}


def quick_starts() -> dict[str, tuple[list[str], str]]:
    """``extra -> (other packages on its install line, code importing what it imports)``."""
    found: dict[str, tuple[list[str], str]] = {}
    for page in sorted(PAGES.glob("*.md")):
        current: str | None = None
        for lang, body in BLOCK.findall(page.read_text(encoding="utf-8")):
            if lang == "bash":
                for line in body.splitlines():
                    match = INSTALL.match(line.strip())
                    if match:
                        current = match.group(1)
                        found[current] = (match.group(2).split(), "")
            elif lang == "python" and current is not None:
                others, code = found[current]
                found[current] = (others, code + _imports(body))
    return found


def _imports(source: str) -> str:
    """The import statements of ``source`` for installed modules, plus the
    ``"mestres_observability.x.Y"`` dotted paths it names (Django's settings)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in INSTALLED]
        elif isinstance(node, ast.ImportFrom) and node.module \
                and node.module.split(".")[0] in INSTALLED:
            out.append(f"from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and re.fullmatch(r"mestres_observability(\.\w+)+", node.value):
            out.append(f"_resolve({node.value!r})")
    return "".join(line + "\n" for line in out)


RESOLVE = '''
import importlib
def _resolve(dotted):
    try:
        importlib.import_module(dotted)
    except ImportError:
        module, _, name = dotted.rpartition(".")
        getattr(importlib.import_module(module), name)
'''


def test_the_quick_starts_cover_every_framework_extra() -> None:
    assert set(quick_starts()) == {"flask", "fastapi", "starlette", "django"}
    for extra, (servers, code) in quick_starts().items():
        assert servers, f"the {extra} quick start names no server to install"
        assert "mestres_observability" in code, extra


def _run(args: list[str], *, env: dict[str, str],
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, check=False,
                          env=env, cwd=cwd)


def test_each_extra_installs_what_its_quick_start_imports(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                  str(tmp_path / "dist"), str(ROOT)], env=env)
    if built.returncode != 0:
        message = f"could not build the wheel: {built.stderr[-2000:]}"
        if REQUIRE_INTEGRATION:
            pytest.fail(message)
        pytest.skip(message)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    failures = []
    for extra, (servers, code) in sorted(quick_starts().items()):
        target = tmp_path / f"venv-{extra}"
        venv.create(target, with_pip=False, symlinks=os.name != "nt")
        python = str(target / "bin" / "python")
        installed = _run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
                          f"mestres-observability[{extra}] @ {wheel.as_uri()}", *servers],
                         env=env)
        assert installed.returncode == 0, (extra, installed.stderr[-3000:])
        code += f"import mestres_observability.{ADAPTER[extra]}\n"
        ran = _run([python, "-c", RESOLVE + code], env=env, cwd=tmp_path)
        if ran.returncode != 0:
            failures.append(f"[{extra}]: {ran.stderr.strip().splitlines()[-1]}\n{code}")
        for server in servers:
            if not (target / "bin" / server).exists():
                failures.append(f"[{extra}]: {server} was not installed")
    assert not failures, "\n".join(failures)
