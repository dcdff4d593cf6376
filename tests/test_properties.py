"""Hypothesis properties of the core (issue 2, a-d)."""

from __future__ import annotations

import subprocess
import threading
from collections import Counter as Tally
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse

from mestres_observability import record_order, track_order, track_user_action
from mestres_observability.cardinality import OVERFLOW
from mestres_observability.testing import fresh_observability, sample_value

from ._support import require_binary
from .strategies import label_text, orders

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(st.lists(orders, max_size=25))
def test_a_any_sequence_of_orders_sums(batch: list[dict[str, Any]]) -> None:
    with fresh_observability() as obs:
        for order in batch:
            record_order(order)
        by_status = Tally(o["status"] for o in batch)
        for status, n in by_status.items():
            assert sample_value("orders_total", obs, status=status) == n
        expected_revenue = sum((Decimal(str(o["total_amount"])) for o in batch), Decimal(0))
        got = sample_value("revenue_total", obs, currency="BRL")
        assert got == pytest.approx(float(expected_revenue), rel=1e-9, abs=1e-9)
        sold = Tally()
        for o in batch:
            for item in o["items"]:
                sold[item["product_id"]] += item["quantity"]
        for pid, qty in sold.items():
            assert sample_value("products_sold_total", obs, product_id=pid) == qty
        assert sample_value("mestres_observability_errors_total", obs, component="business") == 0


@FAST
@given(st.lists(label_text, min_size=1, max_size=8))
def test_b_any_label_text_keeps_exposition_parseable(values: list[str]) -> None:
    with fresh_observability() as obs:
        for v in values:
            track_user_action(v)
            record_order({"status": v, "total_amount": 1, "items": [{"product_id": v, "quantity": 1}]})
        text = obs.render_metrics().body.decode("utf-8")
        fams = list(text_parse(text))
        total = sum(s.value for f in fams for s in f.samples if s.name == "user_actions_total")
        assert total == len(values)
        om = obs.render_metrics("application/openmetrics-text").body.decode("utf-8")
        list(om_parse(om))


@pytest.mark.integration
def test_b_any_label_text_passes_promtool() -> None:
    promtool = require_binary("promtool")

    @settings(max_examples=25, deadline=None)
    @given(st.lists(label_text, min_size=1, max_size=6))
    def check(values: list[str]) -> None:
        with fresh_observability() as obs:
            for v in values:
                track_user_action(v)
            body = obs.render_metrics().body
            res = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                                 timeout=60)
            assert res.returncode == 0, (values, res.stdout, res.stderr)

    check()


@FAST
@given(st.lists(st.text(max_size=6), max_size=300), st.integers(min_value=1, max_value=20))
def test_c_cardinality_bound_holds_and_no_count_lost(actions: list[str], limit: int) -> None:
    with fresh_observability(label_limits={"user_actions_total": limit}) as obs:
        for a in actions:
            track_user_action(a)
        series = [s for f in obs.registry.collect() for s in f.samples
                  if s.name == "user_actions_total"]
        assert len(series) <= limit + 1
        assert sum(s.value for s in series) == len(actions)
        distinct = len({a[:128] for a in actions})
        overflowed = sample_value("user_actions_total", obs, action=OVERFLOW, user_type="guest")
        if distinct <= limit:
            assert overflowed == 0


def test_d_threads_exact_totals() -> None:
    with fresh_observability() as obs:
        @track_order
        def create(i: int) -> dict[str, Any]:
            return {"status": "paid", "total_amount": 1,
                    "items": [{"product_id": f"p{i % 7}", "quantity": 1}]}

        n_threads, per_thread = 8, 10_000
        stop = threading.Event()
        scrapes: list[float] = []

        def scraper() -> None:
            while not stop.is_set():
                body = obs.render_metrics().body.decode()
                fams = list(text_parse(body))
                v = next((s.value for f in fams for s in f.samples
                          if s.name == "orders_total" and s.labels == {"status": "paid"}), 0.0)
                scrapes.append(v)
                stop.wait(0.002)  # scrape in a tight loop, but let the workers run

        def worker() -> None:
            for i in range(per_thread):
                create(i)

        scrape_thread = threading.Thread(target=scraper)
        scrape_thread.start()
        threads = [threading.Thread(target=worker) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        scrape_thread.join()
        total = n_threads * per_thread
        assert sample_value("orders_total", obs, status="paid") == total
        assert sample_value("revenue_total", obs, currency="BRL") == total
        assert sum(sample_value("products_sold_total", obs, product_id=f"p{k}")
                   for k in range(7)) == total
        assert scrapes == sorted(scrapes), "a counter decreased between scrapes"
