"""The current-instance holder: one place that owns, swaps and re-activates the instance."""

from __future__ import annotations

from mestres_observability import _current, get_observability, init_observability, log_event
from mestres_observability.testing import (
    capture_logs,
    captured_spans,
    fresh_observability,
    reset,
)
from mestres_observability.tracing import span


def test_face_and_holder_agree() -> None:
    from mestres_observability import observability

    assert observability.get_observability is _current.get_observability
    with fresh_observability() as obs:
        assert _current.peek() is obs
        assert get_observability() is obs


def test_swap_returns_the_previous_instance_and_leaves_it_running() -> None:
    with fresh_observability(service_name="a") as a:
        b = reset()
        assert b.is_default
        assert get_observability() is b
        assert _current.swap(a) is b
        assert get_observability() is a
        assert not a.closed  # swapping never shuts an instance down


def test_fresh_observability_suspends_and_restores_the_previous_instance() -> None:
    with fresh_observability(service_name="outer") as outer:
        outer.health.add("outer_check", lambda: True)
        with fresh_observability(service_name="inner") as inner:
            assert get_observability() is inner
        assert inner.closed
        assert get_observability() is outer
        assert not outer.closed
        assert outer.health.probe("readiness").status == 200  # its executor still runs
        with captured_spans() as spans, span("after_restore"):
            pass
        assert spans.names() == ["after_restore"]


def test_an_init_inside_the_block_is_retired_when_the_block_ends() -> None:
    with fresh_observability(service_name="outer") as outer:
        with fresh_observability(service_name="inner"):
            stray = init_observability(service_name="stray", configure_logging=False)
        assert stray.closed
        assert get_observability() is outer


def test_restoring_an_instance_gives_the_log_output_back_to_it() -> None:
    with fresh_observability(service_name="outer-svc", configure_logging=True):
        with fresh_observability(service_name="inner-svc", configure_logging=True), \
                capture_logs() as inner_events:
            log_event("inside")
        with capture_logs() as outer_events:
            log_event("after")
    assert inner_events[0]["service"] == "inner-svc"
    assert outer_events[0]["service"] == "outer-svc"
