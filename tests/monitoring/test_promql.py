"""The static PromQL check: it reads the expressions the renderers write, accepts them all,
and refuses an unknown metric or label, a wrong namespace and a disabled feature."""

from __future__ import annotations

import importlib.util

import pytest

from mestres_observability.config import ObservabilityConfig
from mestres_observability.monitoring import promql, rules
from mestres_observability.monitoring.settings import RenderSettings
from tests.monitoring._tools import add_fake_rum

CFG = ObservabilityConfig()


def problems(expr: str, config: ObservabilityConfig = CFG) -> list[str]:
    return [p.message for p in promql.check_expression(expr, config=config)]


def all_expressions(settings: RenderSettings) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Rendered rule files and, when part B's Grafana renderer exists, its panel queries."""
    files = rules.render(settings)
    panels: list[tuple[str, str]] = []
    if importlib.util.find_spec("mestres_observability.monitoring.grafana") is not None:
        from mestres_observability.monitoring import grafana  # type: ignore[attr-defined]

        panels = list(grafana.dashboard_expressions(settings))
    return files, panels


@pytest.mark.parametrize("settings", [
    RenderSettings(),
    RenderSettings(config=ObservabilityConfig(namespace="shop"), service="shop-api"),
    RenderSettings(config=ObservabilityConfig(system_metrics=False, process_metrics=False)),
    RenderSettings(pushgateway_target="pushgateway:9091", job_max_ages=(("hourly_sync", 5400),)),
    RenderSettings(config=ObservabilityConfig(rum_enabled=True, namespace="shop")),
], ids=["defaults", "namespace", "system-metrics-off", "pushgateway-and-job-ages", "rum"])
def test_every_rendered_expression_names_only_known_metrics_and_labels(
        settings: RenderSettings) -> None:
    files, panels = all_expressions(settings)
    found = promql.check_rule_files(files, config=settings.config, extra_expressions=panels)
    assert found == [], "\n".join(map(str, found))
    # and the check did look at every rule (nothing silently skipped)
    n_rules = len(promql.rule_expressions(files))
    assert n_rules == sum(len(g.recordings) + len(g.alerts) for g in rules.build(settings))
    assert n_rules > 40


def test_with_rum_metrics_the_rum_rules_check_too(monkeypatch: pytest.MonkeyPatch) -> None:
    add_fake_rum(monkeypatch)
    files, panels = all_expressions(RenderSettings())
    assert "prometheus/rules/rum.yml" in files
    assert promql.check_rule_files(files, config=CFG, extra_expressions=panels) == []


def test_exported_job_exists_on_the_families_whose_own_label_is_job() -> None:
    """A ``job_*`` series scraped from node-exporter's textfile or the service keeps its
    batch job's name in ``exported_job``: known there, nowhere else."""
    relabel = 'label_replace({m}, "job", "$1", "exported_job", "(.+)")'
    assert problems(f"max by (job) ({relabel.format(m='job_last_success_timestamp_seconds')})") \
        == []
    assert problems('job_runs_total{exported_job="inventory_sync"}') == []
    found = problems('http_requests_total{exported_job="x"}')
    assert found
    assert "no label 'exported_job'" in found[0]
    found = problems(relabel.format(m="orders_total"))
    assert found
    assert "'exported_job'" in found[0]


def test_unknown_metric_is_refused_with_the_nearest_names() -> None:
    found = problems("sum(rate(http_request_total[5m]))")
    assert len(found) == 1
    assert "http_request_total is not a metric" in found[0]
    assert "http_requests_total" in found[0]  # the near miss is named


def test_unknown_label_in_a_matcher_is_refused() -> None:
    found = problems('rate(http_requests_total{route="/orders"}[5m])')
    assert found == ["http_requests_total has no label 'route' (it has endpoint, instance, job, "
                     "method, status)"]


def test_label_lost_by_an_aggregation_is_refused() -> None:
    found = problems("sum by (job) (rate(http_requests_total[5m])) / on (endpoint) "
                     "sum by (job, endpoint) (rate(http_requests_total[5m]))")
    assert any("'endpoint' in on(...), left side" in m for m in found), found
    assert problems("sum by (code) (rate(http_requests_total[5m]))") == [
        "label 'code' in by(...) of sum: the series have endpoint, instance, job, method, status"]


def test_histogram_quantile_needs_le() -> None:
    assert problems("histogram_quantile(0.99, sum by (job, le) "
                    "(rate(http_request_duration_seconds_bucket[5m])))") == []
    found = problems("histogram_quantile(0.99, sum by (job) "
                     "(rate(http_request_duration_seconds_bucket[5m])))")
    assert any("without an 'le' label" in m for m in found)
    # _count samples have no le
    assert problems('http_request_duration_seconds_count{le="0.25"}') != []


def test_namespace_is_applied() -> None:
    shop = ObservabilityConfig(namespace="shop")
    assert problems("rate(shop_orders_total[5m])", shop) == []
    found = problems("rate(orders_total[5m])", shop)
    assert found
    assert "shop_orders_total" in found[0]
    # process_* and mestres_observability_* are never prefixed
    assert problems("process_resident_memory_bytes{pid='1'}", shop) == []
    assert problems("mestres_observability_errors_total", shop) == []


def test_a_disabled_feature_makes_its_metrics_unknown() -> None:
    off = ObservabilityConfig(system_metrics=False)
    found = problems("memory_usage_percent > 85", off)
    assert found
    assert "off under these settings" in found[0]
    assert "system_metrics" in found[0]


def test_exporter_metrics_come_from_the_table() -> None:
    assert problems('pg_stat_activity_count{datname="shop",state="idle"}') == []
    assert problems("pg_stat_activity_count{database='shop'}") != []
    assert problems("pg_stat_statements_calls") != []


def test_recording_rules_become_known_series() -> None:
    files = {"r.yml": """
groups:
  - name: g
    rules:
      - record: job:http_requests:rate5m
        expr: sum by (job) (rate(http_requests_total[5m]))
      - alert: A
        expr: job:http_requests:rate5m{endpoint="/x"} > 1
      - alert: B
        expr: job:http_requests:rate5m{job="x"} > 1
"""}
    found = promql.check_rule_files(files, config=CFG)
    assert [p.where for p in found] == ["r.yml g A"]
    assert "no label 'endpoint'" in found[0].message


@pytest.mark.parametrize("expr", [
    "sum(rate(http_requests_total{job=~\"$job\"}[$__rate_interval]))",
    "increase(orders_total[$__range]) / ${__range_s}",
    "topk(10, sum by (product_id) (increase(products_sold_total[24h])))",
    "-sum without (instance) (rate(http_requests_total[5m] offset 1w)) ^ 2",
    "max_over_time(inventory_level[1h:5m]) < bool 10",
    "count_values(\"value\", health_check_status)",
    "label_replace(up, \"host\", \"$1\", \"instance\", \"(.*):.*\")",
    "absent(http_requests_total{job=\"x\"})",
    "http_requests_total @ 1609746000",
    "sum by (job) (rate(http_requests_total[5m])) * on (job) group_left (version) "
    "max by (job, version) (service_info)",
])
def test_reads_the_forms_dashboards_use(expr: str) -> None:
    assert problems(expr) == []


def test_syntax_errors_are_reported_not_raised() -> None:
    found = problems("sum(rate(http_requests_total[5m])")
    assert found
    assert found[0].startswith("syntax:")
    assert problems("frobnicate(up)")[0].startswith("syntax: unknown function")


def test_precedence_follows_prometheus() -> None:
    node = promql.parse("a or b and c > 1 + 2 * 3")
    assert isinstance(node, promql.Binary)
    assert node.op == "or"
    rhs = node.rhs
    assert isinstance(rhs, promql.Binary)
    assert rhs.op == "and"
    cmp = rhs.rhs
    assert isinstance(cmp, promql.Binary)
    assert cmp.op == ">"
    add = cmp.rhs
    assert isinstance(add, promql.Binary)
    assert add.op == "+"
    assert isinstance(add.rhs, promql.Binary)
    assert add.rhs.op == "*"
    power = promql.parse("2 ^ 3 ^ 2")  # right-associative
    assert isinstance(power, promql.Binary)
    assert isinstance(power.rhs, promql.Binary)
