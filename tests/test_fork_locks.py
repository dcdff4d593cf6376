"""gunicorn --preload: a lock another thread holds at ``fork()`` is fresh in the child.

Each case runs in a fresh interpreter: a thread takes one of the library's
locks and keeps it, the main thread forks, and the child (which inherits the
lock in its held state unless an at-fork hook replaced it) must acquire it
within a timeout and then use the object that owns it. The child reports
through its exit status: 0 works, 3 the lock is still held, 4 the object did
not work. ``signal.alarm`` ends a child that deadlocks anyway.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

_HARNESS = r"""
import io, json, os, signal, sys, threading, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a threaded process
from mestres_observability import init_observability, logs

obs = init_observability(service_name="svc", configure_logging=False, tracing_enabled=False)

{setup}

def hold(get_locks, held, release):
    locks = get_locks()
    for lk in locks:
        lk.acquire()
    held.set()
    release.wait(60)
    for lk in reversed(locks):
        lk.release()

held, release = threading.Event(), threading.Event()
threading.Thread(target=hold, args=(locks_to_hold, held, release), daemon=True).start()
assert held.wait(10)
pid = os.fork()
if pid == 0:
    signal.alarm(20)  # a deadlock ends the child with SIGALRM instead of hanging the test
    try:
        for lk in locks_in_child():
            if not lk.acquire(timeout=2):
                os._exit(3)
            lk.release()
        ok = works_in_child()
    except BaseException as exc:
        sys.stderr.write(f"child failed: {{exc!r}}\n")
        ok = False
    sys.stderr.flush()
    os._exit(0 if ok else 4)
_, status = os.waitpid(pid, 0)
release.set()
sys.exit(os.waitstatus_to_exitcode(status))
"""

_LOGS = r"""
buf = io.StringIO()
logs.configure_logging(obs.config, obs.faults, stream=buf)
handler = logs._state.output[0]

def locks_to_hold():  # the module lock (re-init) and the handler's (every written line)
    return [logs._lock, handler.lock]

def locks_in_child():
    return [logs._lock, handler.lock]

def works_in_child():
    child_buf = io.StringIO()
    logs.configure_logging(obs.config, obs.faults, stream=child_buf)  # takes logs._lock
    logs.get_logger("child").info("written_in_child", n=1)
    logs.log_event("order_created", order_id="o-1")
    lines = [json.loads(x) for x in child_buf.getvalue().splitlines()]
    return [x["event"] for x in lines] == ["written_in_child", "order_created"]
"""

_GUARD = r"""
family = obs.metrics.orders_total
family.inc(("paid",))
guard = family._guard

def locks_to_hold():  # what a parent thread holds while it adds a new label set
    return [guard._lock]

def locks_in_child():
    return [guard._lock]

def sample(status):
    name = obs.config.metric_name("orders_total")
    return obs.registry.get_sample_value(name, {"status": status})

def works_in_child():
    family.inc(("shipped",))  # a new label set: resolved under the guard's lock
    family.inc(("shipped",))
    family.inc(("paid",))
    return sample("shipped") == 2.0 and sample("paid") == 2.0 and guard.series_count == 2
"""

_USER_METRICS = r"""
obs.metrics.user_metric("counter", "jobs_total", "Jobs.", ("kind",))

def locks_to_hold():  # what a parent thread holds while it creates a user metric
    return [obs.metrics._user_lock]

def locks_in_child():
    return [obs.metrics._user_lock]

def works_in_child():
    made = obs.metrics.user_metric("counter", "emails_total", "Emails.", ("kind",))
    made.labels("welcome").inc()
    guard = obs.metrics.user_guard("emails_total", "counter")
    guard.child(("reset",)).inc()  # the user metric's own guard: its lock is fresh too
    again = obs.metrics.user_metric("counter", "emails_total", "Emails.", ("kind",))
    return (again is made
            and obs.registry.get_sample_value("emails_total", {"kind": "welcome"}) == 1.0
            and obs.registry.get_sample_value("emails_total", {"kind": "reset"}) == 1.0)
"""

_USER_GUARD = r"""
obs.metrics.user_metric("counter", "jobs_total", "Jobs.", ("kind",))
guard = obs.metrics.user_guard("jobs_total", "counter")

def locks_to_hold():
    return [guard._lock]

def locks_in_child():
    return [guard._lock]

def works_in_child():
    guard.child(("nightly",)).inc()
    return obs.registry.get_sample_value("jobs_total", {"kind": "nightly"}) == 1.0
"""

_INIT = r"""
from mestres_observability import _current as current_module

def locks_to_hold():  # a parent thread in the middle of init_observability / shutdown
    return [current_module.lock, obs._lock]

def locks_in_child():
    return [current_module.lock, obs._lock]

def works_in_child():
    again = init_observability(service_name="child", configure_logging=False,
                               tracing_enabled=False)
    obs.shutdown(timeout=1.0)  # takes the old instance's own lock
    return again.config.service_name == "child" and obs.closed
"""

_COMPAT = r"""
from mestres_observability import _compat

def locks_to_hold():  # a parent thread logging that an internal is missing
    return [_compat._degraded_lock]

def locks_in_child():
    return [_compat._degraded_lock]

def works_in_child():
    _compat._degrade("a test feature", "nothing lost")
    return "a test feature" in _compat.degraded_features()
"""

_COMPAT_DROPS = r"""
from mestres_observability import _compat

def locks_to_hold():  # a parent thread reporting series a full directory dropped
    return [_compat._drops_lock, _compat._values_guard_lock]

def locks_in_child():
    return [_compat._drops_lock, _compat._values_guard_lock]

def works_in_child():
    seen = []
    _compat.set_values_drop_listener(seen.append)
    _compat._note_drop()
    _compat.flush_values_drops()
    return seen == [1] and _compat.guard_values_files() in (True, False)
"""


def _run(setup: str) -> subprocess.CompletedProcess[str]:
    script = _HARNESS.format(setup=setup)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=90, check=False)


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(_LOGS, id="logs-module-lock-and-handler"),
        pytest.param(_GUARD, id="library-metric-cardinality-guard"),
        pytest.param(_USER_METRICS, id="metrics-user-lock"),
        pytest.param(_USER_GUARD, id="user-metric-cardinality-guard"),
        pytest.param(_INIT, id="init-lock-and-instance-lock"),
        pytest.param(_COMPAT, id="compat-degradation-log-lock"),
        pytest.param(_COMPAT_DROPS, id="compat-full-directory-drop-locks"),
    ],
)
def test_lock_held_by_a_parent_thread_at_fork_is_usable_in_the_child(setup: str) -> None:
    """Exit 3 means the child inherited the lock held; 4 that its owner stopped working."""
    out = _run(setup)
    assert out.returncode == 0, (out.returncode, out.stderr)


def test_the_harness_detects_a_lock_that_stays_held() -> None:
    """Control: a plain lock without an at-fork hook is reported as held (exit 3)."""
    setup = r"""
plain = threading.Lock()

def locks_to_hold():
    return [plain]

def locks_in_child():
    return [plain]

def works_in_child():
    return True
"""
    out = _run(setup)
    assert out.returncode == 3, (out.returncode, out.stderr)
