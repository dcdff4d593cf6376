"""The cardinality guard: bound, overflow, no count lost, label cleaning."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, Counter, Gauge

from mestres_observability import Observability, record_order, set_inventory_level
from mestres_observability.cardinality import (
    MAX_LABEL_LENGTH,
    OVERFLOW,
    LabelGuard,
    clean_label_value,
)
from mestres_observability.testing import fresh_observability, sample_value


def test_clean_label_value() -> None:
    lone = json.loads('"\\ud800"')
    assert clean_label_value(lone) == "?"
    assert clean_label_value("x" * 10_000) == "x" * MAX_LABEL_LENGTH
    assert clean_label_value(5) == "5"
    assert clean_label_value("café ☕") == "café ☕"


def test_guard_folds_data_labels_past_limit() -> None:
    reg = CollectorRegistry()
    c = Counter("t", "t", ["product_id", "kind"], registry=reg)
    folded = []
    g = LabelGuard(c, "t_total", ["product_id", "kind"], ["product_id"], 3,
                   on_overflow=lambda: folded.append(1))
    for i in range(10):
        g.child((f"p{i}", "static")).inc()
    assert g.series_count == 4  # 3 + the overflow series
    assert reg.get_sample_value("t_total", {"product_id": OVERFLOW, "kind": "static"}) == 7
    assert len(folded) == 7
    total = sum(s.value for m in reg.collect() for s in m.samples if s.name == "t_total")
    assert total == 10


def test_gauge_excess_dropped_not_merged() -> None:
    with fresh_observability(label_limits={"inventory_level": 2}) as obs:
        for i in range(5):
            set_inventory_level(f"p{i}", i)
        assert sample_value("inventory_level", product_id="p1") == 1
        assert sample_value("inventory_level", product_id=OVERFLOW) == 0
        text = obs.render_metrics().body.decode()
        assert OVERFLOW not in text.split("inventory_level")[1].split("\n# ")[0]
        assert sample_value("mestres_observability_label_overflow_total",
                            metric="inventory_level") == 3


def test_many_products_bounded_and_sum_preserved(obs: Observability) -> None:
    limit = obs.config.max_label_values
    n = limit + 500
    for i in range(n):
        record_order({"status": "paid", "total_amount": 1,
                      "items": [{"product_id": f"sku-{i}", "quantity": 1}]})
    series = [s for m in obs.registry.collect() for s in m.samples
              if s.name == "products_sold_total"]
    assert len(series) == limit + 1
    assert sum(s.value for s in series) == n
    assert sample_value("products_sold_total", product_id=OVERFLOW) == 500
    assert sample_value("mestres_observability_label_overflow_total",
                        metric="products_sold_total") == 500


def test_unhashable_and_odd_values_do_not_raise() -> None:
    reg = CollectorRegistry()
    gauge = Gauge("g", "g", ["a"], registry=reg)
    g = LabelGuard(gauge, "g", ["a"], ["a"], 10)
    g.child(([1, 2],)).set(1)  # type: ignore[union-attr]
    g.child((True,)).set(2)  # type: ignore[union-attr]
    g.child((1,)).set(3)  # type: ignore[union-attr]
    assert reg.get_sample_value("g", {"a": "[1, 2]"}) == 1
    assert reg.get_sample_value("g", {"a": "True"}) == 2
    assert reg.get_sample_value("g", {"a": "1"}) == 3
