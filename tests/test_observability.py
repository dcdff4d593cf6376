"""Lifecycle: default instance, re-init, shutdown, user metrics, global registry."""

from __future__ import annotations

import gc
import threading
from typing import Any

import pytest
from prometheus_client import REGISTRY, Counter

from mestres_observability import (
    ConfigurationError,
    MetricConflictError,
    Observability,
    get_observability,
    init_observability,
    track_order,
)
from mestres_observability.testing import fresh_observability, reset, sample_value


def test_default_instance_exists_before_init() -> None:
    default = reset()
    assert get_observability() is default
    assert default.is_default

    @track_order
    def create() -> dict[str, Any]:
        return {"status": "paid", "total_amount": 2}

    create()
    assert sample_value("orders_total", status="paid") == 1


def test_reinit_in_a_loop_never_duplicates() -> None:
    threads_before = threading.active_count()
    first = None
    for _ in range(100):
        obs = init_observability(service_name="loop", configure_logging=False)
        first = first or obs
        obs.metrics.orders_total.inc(("paid",))
    assert get_observability() is obs
    assert first.closed
    assert sample_value("orders_total", status="paid") == 1
    gc.collect()
    assert threading.active_count() <= threads_before + 2
    obs.shutdown()


def test_shutdown_twice_and_concurrently() -> None:
    obs = init_observability(configure_logging=False)
    ts = [threading.Thread(target=obs.shutdown) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(5)
    obs.shutdown()
    assert obs.closed


def test_user_metric_factories_same_object_and_conflicts(obs: Observability) -> None:
    c1 = obs.counter("coffee_brewed", "cups", ["size"])
    c2 = obs.counter("coffee_brewed_total", "cups", ["size"])
    assert c1 is c2
    with pytest.raises(MetricConflictError, match="coffee_brewed"):
        obs.counter("coffee_brewed", "cups", ["origin"])
    with pytest.raises(MetricConflictError):
        obs.gauge("coffee_brewed", "cups", ["size"])
    h = obs.histogram("brew_seconds", buckets=(1, 2))
    assert obs.histogram("brew_seconds", buckets=(1, 2)) is h
    with pytest.raises(MetricConflictError):
        obs.histogram("brew_seconds", buckets=(1, 3))
    c1.labels("large").inc()
    assert sample_value("coffee_brewed_total", size="large") == 1


def test_active_connections_direct_and_callback(obs: Observability) -> None:
    obs.set_active_connections(3)
    assert sample_value("active_connections") == 3
    values = iter([5.0])

    def pool_size() -> float:
        return next(values)

    obs.set_active_connections(pool_size)
    assert sample_value("active_connections") == 5
    # the callback now raises StopIteration: last value kept, fault counted
    assert sample_value("active_connections") == 5
    assert sample_value("mestres_observability_errors_total", component="metrics") >= 1


def test_namespace_prefix_rules() -> None:
    with fresh_observability(namespace="shop") as obs:
        obs.metrics.orders_total.inc(("paid",))
        text = obs.render_metrics().body.decode()
        assert "shop_orders_total{" in text
        assert "shop_service_info{" in text
        assert "\nmestres_observability_errors_total{" in text
        assert "shop_mestres_observability" not in text


def test_service_info() -> None:
    with fresh_observability(service_name="api", service_version="1.2.3", environment="staging"):
        assert sample_value("service_info", service="api", version="1.2.3",
                            environment="staging") == 1


def test_global_registry_exposed_and_conflict_fails_at_init() -> None:
    mine = Counter("user_defined_things", "x", registry=REGISTRY)
    try:
        mine.inc()
        with fresh_observability(expose_global_registry=True) as obs:
            text = obs.render_metrics().body.decode()
            assert "user_defined_things_total 1.0" in text
            assert text.count("# TYPE orders_total counter") == 1
        clash = Counter("orders", "clash", ["status"], registry=REGISTRY)
        try:
            with pytest.raises(MetricConflictError, match="orders"):
                init_observability(expose_global_registry=True, configure_logging=False)
        finally:
            REGISTRY.unregister(clash)
    finally:
        REGISTRY.unregister(mine)


def test_sample_value_errors(obs: Observability) -> None:
    with pytest.raises(KeyError):
        sample_value("no_such_metric_total")
    assert sample_value("orders_total", status="never") == 0.0


def test_django_object_rejected_with_guidance() -> None:
    class WSGIHandler:  # looks like django.core.handlers.wsgi.WSGIHandler
        pass

    WSGIHandler.__module__ = "django.core.handlers.wsgi"
    with pytest.raises(ConfigurationError, match="INSTALLED_APPS"):
        init_observability(WSGIHandler(), configure_logging=False)
    with pytest.raises(ConfigurationError, match="Flask app"):
        init_observability(object(), configure_logging=False)


def test_created_series_can_be_turned_off() -> None:
    with fresh_observability(created_series=False) as obs:
        obs.metrics.orders_total.inc(("paid",))
        assert "_created" not in obs.render_metrics().body.decode()
    with fresh_observability() as obs:
        obs.metrics.orders_total.inc(("paid",))
        assert "orders_created" in obs.render_metrics().body.decode()


def test_import_does_not_pull_frameworks() -> None:
    import subprocess
    import sys

    code = ("import sys, mestres_observability; "
            "print(','.join(m for m in ('flask','django','starlette','fastapi','redis',"
            "'sqlalchemy','sklearn','psycopg2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
