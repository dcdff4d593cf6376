"""``_forksafe``: what runs in a forked child, and in which order.

Each case forks a fresh interpreter's process for real; the child writes what
it saw to a pipe. The order is part of the contract (see the module
docstring): locks, then methods, then functions, all before fork hooks other
libraries registered later, except functions registered ``after_existing``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import mestres_observability

PACKAGE = Path(mestres_observability.__file__).resolve().parent

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

_FORK_AND_REPORT = r"""
def report_from_child(collect):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, json.dumps(collect()).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    print(os.read(r, 1 << 16).decode())
"""

_ORDER = r"""
import json, os, threading, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a threaded process
from mestres_observability import _forksafe
""" + _FORK_AND_REPORT + r"""
order = []

class Owner:
    def __init__(self):
        self.lock = threading.Lock()
        _forksafe.renew_locks_after_fork(self, "lock")
        _forksafe.call_after_fork(self, "reset")

    def reset(self):
        order.append(["method sees its lock renewed", not self.lock.locked()])

owner = Owner()
owner.lock.acquire()  # held by the parent at the fork

def first():
    order.append("first")
    raise RuntimeError("a failing hook does not stop the others")

def second():
    order.append("second")

def late():
    order.append("after_existing")

_forksafe.run_after_fork(first)
_forksafe.run_after_fork(second)
_forksafe.run_after_fork(second)  # registered twice: runs once
os.register_at_fork(after_in_child=lambda: order.append("another library, registered later"))
_forksafe.run_after_fork(late, after_existing=True)
_forksafe.run_after_fork(late, after_existing=True)
_forksafe.run_after_fork(lambda: order.append("registered after the other library"))
report_from_child(lambda: order)
"""


def _run(script: str) -> Any:
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_fork
def test_after_fork_order_locks_methods_functions_then_later_hooks() -> None:
    assert _run(_ORDER) == [
        ["method sees its lock renewed", True],
        "first",
        "second",
        "registered after the other library",  # still in the shared hook, before theirs
        "another library, registered later",
        "after_existing",
    ]


_INSTANCE_ID = r"""
import json, os, warnings
warnings.simplefilter("ignore", DeprecationWarning)
from opentelemetry import trace
from mestres_observability import init_observability, tracing
""" + _FORK_AND_REPORT + r"""
init_observability(service_name="svc", configure_logging=False, traces_exporter="none")
provider = trace.get_tracer_provider()
parent = provider.resource.attributes["service.instance.id"]
assert parent == tracing.INSTANCE_ID

def collect():
    return {"parent": parent, "module": tracing.INSTANCE_ID,
            "resource": provider.resource.attributes["service.instance.id"]}

report_from_child(collect)
"""


@needs_fork
def test_a_forked_worker_keeps_the_instance_id_the_library_gave_it() -> None:
    """The SDK's own fork hook sets a new ``service.instance.id`` too; ours runs after it.

    ``after_existing``: the library's resource update is registered after the
    provider (and its hook) exists, so the id on the worker's spans is the one
    the library's logs and metrics use, not a second one.
    """
    seen = _run(_INSTANCE_ID)
    assert seen["module"] != seen["parent"]
    assert seen["resource"] == seen["module"]


def _fork_hook_registrations(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.lineno for node in ast.walk(tree)
            if (isinstance(node, ast.Attribute) and node.attr == "register_at_fork")
            or (isinstance(node, ast.Name) and node.id == "register_at_fork")
            or (isinstance(node, ast.alias) and node.name == "register_at_fork")]


def test_only_forksafe_registers_fork_hooks() -> None:
    found = {str(path.relative_to(PACKAGE)): lines for path in sorted(PACKAGE.rglob("*.py"))
             if path.name != "_forksafe.py" and (lines := _fork_hook_registrations(path))}
    assert found == {}, "route these through mestres_observability._forksafe"
    assert _fork_hook_registrations(PACKAGE / "_forksafe.py")  # the scan sees the real one
