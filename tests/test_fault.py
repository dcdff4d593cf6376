"""The fault reporter keeps working in a child forked while another thread held its lock."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_CHILD = r"""
import os, signal, sys, threading
from mestres_observability._fault import FaultReporter

class Child:
    def __init__(self): self.n = 0
    def inc(self): self.n += 1

class Counter:
    def __init__(self): self.children = {}
    def labels(self, c): return self.children.setdefault(c, Child())

counter = Counter()
reporter = FaultReporter(interval=0.0)
reporter.bind(counter)
held, release = threading.Event(), threading.Event()

def hold():
    with reporter._lock:
        held.set()
        release.wait()

threading.Thread(target=hold, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    signal.alarm(10)  # a hang here is the bug: end the child instead of the test run
    reporter.report("http", "boom", "a fault in the worker")
    os._exit(0 if counter.children["http"].n == 1 else 3)
release.set()
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_reporter_logs_in_a_child_forked_while_its_lock_was_held() -> None:
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, (out.returncode, out.stderr)
    assert "a fault in the worker" in out.stderr
