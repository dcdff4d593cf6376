"""counted, timed, timer: sync, async, generators, late binding, bad names."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Histogram

from mestres_observability import Observability, counted, timed, timer
from mestres_observability.testing import fresh_observability, sample_value


def test_counted_sync_and_raise(obs: Observability) -> None:
    @counted("brews", labels={"size": "large"})
    def brew(fail: bool = False) -> str:
        if fail:
            raise ValueError("cold")
        return "coffee"

    assert brew() == "coffee"
    with pytest.raises(ValueError, match="cold"):
        brew(fail=True)
    assert sample_value("brews_total", size="large") == 2


def test_counted_bare_uses_function_name(obs: Observability) -> None:
    @counted
    def grind() -> None:
        return None

    grind()
    name = "tests_test_instrument_test_counted_bare_uses_function_name_locals_grind_calls_total"
    assert sample_value(name) == 1


def test_timed_async_measures_until_coroutine_finishes(obs: Observability) -> None:
    @timed("roast_seconds", buckets=(0.01, 0.05, 1.0))
    async def roast() -> int:
        await asyncio.sleep(0.06)
        return 1

    assert inspect.iscoroutinefunction(roast)
    assert asyncio.run(roast()) == 1
    assert sample_value("roast_seconds_count") == 1
    assert sample_value("roast_seconds_sum") >= 0.05
    assert sample_value("roast_seconds_bucket", le="0.05") == 0


def test_timed_generator_until_exhausted(obs: Observability) -> None:
    @timed("stream_seconds")
    def stream() -> Iterator[int]:
        for i in range(3):
            time.sleep(0.01)
            yield i

    assert list(stream()) == [0, 1, 2]
    assert sample_value("stream_seconds_sum") >= 0.025


def test_timed_into_users_own_histogram() -> None:
    reg = CollectorRegistry()
    h = Histogram("own_seconds", "own", ["step"], registry=reg)

    @timed(h, labels={"step": "grind"})
    def grind() -> None:
        return None

    grind()
    assert reg.get_sample_value("own_seconds_count", {"step": "grind"}) == 1


def test_timer_sync_and_async(obs: Observability) -> None:
    with timer("block_seconds") as t:
        time.sleep(0.01)
    assert t.elapsed is not None
    assert t.elapsed >= 0.009

    async def main() -> None:
        async with timer("block_seconds"):
            await asyncio.sleep(0)

    asyncio.run(main())
    assert sample_value("block_seconds_count") == 2


def test_bad_names_fail_at_decoration() -> None:
    with pytest.raises(ValueError, match="_seconds"):
        timed("roast_time")
    with pytest.raises(ValueError, match="valid Prometheus"):
        counted("bad name")
    with pytest.raises(TypeError):
        timed(42)


def test_late_binding_follows_reinit() -> None:
    @counted("late")
    def f() -> None:
        return None

    with fresh_observability() as a:
        f()
    with fresh_observability() as b:
        f()
        f()
        assert sample_value("late_total", b) == 2
    assert sample_value("late_total", a) == 1


def test_conflicting_user_metric_is_counted_not_raised(obs: Observability) -> None:
    obs.gauge("clash_total_thing")

    @counted("clash_total_thing")
    def f() -> int:
        return 7

    assert f() == 7  # the host is unaffected
    assert sample_value("mestres_observability_errors_total", component="instrument") == 1
