"""``mestres_observability.celery`` in one process: eager runs, headers, states, logs, spans.

The worker across processes (prefork pool, Redis broker, one trace decoded off
the OTLP wire, totals on a scrape) is ``tests/integration/test_celery_worker.py``.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from mestres_observability import set_user_id, track_order
from mestres_observability.logs import get_logger, request_context
from mestres_observability.testing import (
    capture_logs,
    captured_spans,
    fresh_observability,
    sample_value,
)
from mestres_observability.tracing import span
from tests._support import require_module

celery = require_module("celery")
from mestres_observability import celery as obs_celery  # noqa: E402

_APPS = itertools.count()


@pytest.fixture
def app() -> Iterator[Any]:
    """An eager Celery app with a few tasks, instrumented; disconnected afterwards."""
    application = celery.Celery(f"shop-tests-{next(_APPS)}", broker="memory://",
                                backend="cache+memory://", set_as_current=False)
    application.conf.task_always_eager = True
    application.conf.task_store_eager_result = False

    @application.task(name="shop.add", shared=False)
    def add(x: int, y: int) -> int:
        get_logger("shop.tasks").info("adding", x=x, y=y)
        return x + y

    @application.task(name="shop.fail", shared=False)
    def fail() -> None:
        raise ValueError("out of beans")

    @application.task(name="shop.flaky", shared=False, bind=True, max_retries=1, default_retry_delay=0)
    def flaky(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=RuntimeError("try again"), countdown=0)
        return "ok"

    @application.task(name="shop.order", shared=False)
    @track_order
    def order(order_id: str) -> dict[str, Any]:
        return {"order_id": order_id, "status": "paid", "total": 12.5, "currency": "BRL",
                "items": [{"product_id": "espresso", "quantity": 2}]}

    obs_celery.instrument_celery(application)
    try:
        yield application
    finally:
        obs_celery._uninstrument()


def _count(obs: Any, task: str, state: str) -> float:
    return sample_value("celery_tasks_total", obs, task=task, state=state)


def test_an_eager_task_is_counted_timed_and_a_child_of_the_current_span(app: Any) -> None:
    with fresh_observability() as obs, captured_spans() as spans:
        with span("checkout") as parent:
            assert app.tasks["shop.add"].delay(2, 3).get() == 5
        assert _count(obs, "shop.add", "succeeded") == 1
        assert sample_value("celery_task_duration_seconds_count", obs, task="shop.add") == 1
        assert sample_value("celery_tasks_in_progress", obs, task="shop.add") == 0
        # an eager run was never published: no queue wait
        assert sample_value("celery_task_queue_wait_seconds_count", obs, task="shop.add") == 0
    task_span = spans.by_name("shop.add")
    assert task_span.kind is SpanKind.CONSUMER
    assert task_span.parent.span_id == parent.get_span_context().span_id
    assert task_span.attributes["messaging.system"] == "celery"
    assert task_span.attributes["celery.state"] == "succeeded"


def test_failed_and_retried_tasks_are_counted_by_state(app: Any) -> None:
    with fresh_observability() as obs, captured_spans() as spans:
        app.tasks["shop.fail"].apply()
        with pytest.raises(ValueError, match="out of beans"):
            app.tasks["shop.fail"].apply(throw=True)
        assert app.tasks["shop.flaky"].apply().get() == "ok"
        assert _count(obs, "shop.fail", "failed") == 2
        assert _count(obs, "shop.flaky", "retried") == 1
        assert _count(obs, "shop.flaky", "succeeded") == 1
        assert sample_value("celery_tasks_in_progress", obs, task="shop.fail") == 0
    failed = [s for s in spans.spans if s.name == "shop.fail"]
    assert len(failed) == 2
    assert all(s.status.status_code is StatusCode.ERROR for s in failed)
    assert any(e.name == "exception" and e.attributes["exception.message"] == "out of beans"
               for s in failed for e in s.events)


def test_track_order_inside_a_task_records_under_the_task_span(app: Any) -> None:
    with fresh_observability() as obs, captured_spans() as spans:
        app.tasks["shop.order"].delay("o-1").get()
        assert sample_value("orders_total", obs, status="paid") == 1
        assert sample_value("products_sold_total", obs, product_id="espresso") == 2
    task_span = spans.by_name("shop.order")
    order_span = spans.by_name("process_order")
    assert order_span.parent.span_id == task_span.context.span_id
    assert order_span.context.trace_id == task_span.context.trace_id


def test_log_lines_in_a_task_carry_its_trace_id_and_the_publishers_ids(app: Any) -> None:
    with fresh_observability(), captured_spans() as spans, capture_logs() as events, \
            request_context(request_id="req-42"):
        set_user_id("u-7")
        app.tasks["shop.add"].delay(1, 1).get()
    (line,) = [e for e in events if e["event"] == "adding"]
    task_span = spans.by_name("shop.add")
    assert line["trace_id"] == format(task_span.context.trace_id, "032x")
    assert line["span_id"] == format(task_span.context.span_id, "016x")
    assert line["task_name"] == "shop.add"
    assert line["task_id"]
    assert line["request_id"] == "req-42"
    assert line["user_id"] == "u-7"


def test_the_log_context_of_a_run_does_not_leak_into_the_next(app: Any) -> None:
    with fresh_observability(), capture_logs() as events:
        app.tasks["shop.add"].delay(1, 2).get()
        get_logger("after").info("after the task")
    (after,) = [e for e in events if e["event"] == "after the task"]
    assert "task_id" not in after
    assert "trace_id" not in after


def test_publishing_puts_trace_context_request_and_user_id_in_the_headers(app: Any) -> None:
    from celery import signals

    with fresh_observability(), request_context(request_id="req-1"), span("enqueue") as sp:
        set_user_id(99)
        headers: dict[str, Any] = {}
        signals.before_task_publish.send(sender="shop.add", headers=headers, body=None)
    ctx = sp.get_span_context()
    assert headers["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")
    assert headers[obs_celery.REQUEST_ID_HEADER] == "req-1"
    assert headers[obs_celery.USER_ID_HEADER] == 99
    assert isinstance(headers[obs_celery.SENT_AT_HEADER], float)
    json.dumps(headers)  # the message stays serialisable


def test_a_published_run_is_parented_by_the_publisher_and_measures_its_wait(app: Any) -> None:
    """What a worker does with the headers: the request carries them as attributes."""
    import time

    trace_id, span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    with fresh_observability() as obs, captured_spans() as spans:
        app.tasks["shop.add"].apply((1, 2), headers={
            "traceparent": f"00-{trace_id}-{span_id}-01",
            obs_celery.SENT_AT_HEADER: time.time() - 2.0,
            obs_celery.REQUEST_ID_HEADER: "req-w",
        })
        waited = sample_value("celery_task_queue_wait_seconds_sum", obs, task="shop.add")
    task_span = spans.by_name("shop.add")
    assert format(task_span.context.trace_id, "032x") == trace_id
    assert format(task_span.parent.span_id, "016x") == span_id
    assert task_span.parent.is_remote
    assert 2.0 <= waited < 10.0


def test_rejected_and_revoked_tasks_are_counted() -> None:
    from types import SimpleNamespace

    from celery import signals

    obs_celery.instrument_celery()
    try:
        with fresh_observability() as obs:
            signals.task_rejected.send(sender=None, message=SimpleNamespace(
                headers={"task": "shop.unknown"}), exc=None)
            class Task:
                name = "shop.add"

            signals.task_revoked.send(sender=Task(),
                                      request=None, terminated=True, signum=15, expired=False)
            assert _count(obs, "shop.unknown", "rejected") == 1
            assert _count(obs, "shop.add", "revoked") == 1
    finally:
        obs_celery._uninstrument()


def test_metrics_off_by_setting_still_trace(app: Any) -> None:
    with fresh_observability(celery_metrics=False) as obs, captured_spans() as spans:
        app.tasks["shop.add"].delay(1, 2).get()
        body = obs.render_metrics().body.decode()
    assert "celery_tasks_total" not in body
    assert spans.by_name("shop.add").kind is SpanKind.CONSUMER


def test_a_fault_in_the_instrumentation_never_reaches_the_task(
    app: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with fresh_observability() as obs:
        def boom(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("metrics broke")

        monkeypatch.setattr(obs.metrics, "current_exemplar", boom)
        assert app.tasks["shop.add"].delay(2, 2).get() == 4
        assert sample_value("mestres_observability_errors_total", obs, component="celery") == 1


def test_celery_check_passes_with_a_reply_and_fails_without() -> None:
    from types import SimpleNamespace

    replies: list[Any] = [{"worker@host": {"ok": "pong"}}]
    calls: list[dict[str, Any]] = []

    def ping(**kwargs: Any) -> list[Any]:
        calls.append(kwargs)
        return list(replies)

    check = obs_celery.celery_check(SimpleNamespace(control=SimpleNamespace(ping=ping)),
                                    timeout=0.3)
    assert check() == {"status": "healthy", "workers": 1}
    replies.clear()
    assert check() == {"status": "unhealthy", "workers": 0}
    assert calls[0]["timeout"] == 0.3
    with pytest.raises(TypeError, match="Celery app"):
        obs_celery.celery_check(object())
    with pytest.raises(TypeError, match="Celery app"):
        obs_celery.instrument_celery(object())


_AUTO = """
import json, sys
{before}
from mestres_observability import init_observability
init_observability(configure_logging=False, {settings})
{after}
import mestres_observability.celery as c
print(json.dumps({{"instrumented": c.instrumented()}}))
"""


@pytest.mark.parametrize(("before", "settings", "after", "expected"), [
    ("import celery", "", "", True),
    ("import celery", "celery_auto_instrument=False", "", False),
    ("", "", "assert 'celery' not in sys.modules", False),
])
def test_init_observability_instruments_celery_when_it_is_imported(
    before: str, settings: str, after: str, expected: bool,
) -> None:
    code = textwrap.dedent(_AUTO.format(before=before, settings=settings, after=after))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"instrumented": expected}


def test_a_prefork_worker_without_multiprocess_mode_is_warned_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from celery.concurrency.prefork import TaskPool

    class Worker:
        pool_cls = TaskPool

    obs_celery._warned_prefork = False
    with fresh_observability(), caplog.at_level("WARNING", logger="mestres_observability"):
        obs_celery._worker_init(sender=Worker())
        obs_celery._worker_init(sender=Worker())
    said = [r for r in caplog.records if "PROMETHEUS_MULTIPROC_DIR" in r.getMessage()]
    assert len(said) == 1
