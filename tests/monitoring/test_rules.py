"""The rules: what every alert carries, what the seed got wrong and is fixed, and how the
catalogue and the settings shape them (namespace, disabled features, RUM, teams)."""

from __future__ import annotations

import math

import pytest

from mestres_observability.config import ObservabilityConfig
from mestres_observability.monitoring import _yaml, promql, rules
from mestres_observability.monitoring.settings import RenderSettings
from tests.monitoring._tools import add_fake_rum


def alert_map(settings: RenderSettings | None = None) -> dict[str, rules.Alert]:
    return {a.name: a for _g, a in rules.alerts(settings or RenderSettings())}


def selector_names(expr: str) -> set[str]:
    return {s.name for s in promql.selectors(promql.parse(expr)) if s.name}


def test_the_required_alerts_exist() -> None:
    names = set(alert_map())
    assert {"LowOrderVolume", "HighErrorRate", "InventoryLow", "HighMemoryUsage",
            "DatabaseConnectionsHigh", "HighLatency", "HealthCheckFailing",
            "AvailabilityBudgetFastBurn", "AvailabilityBudgetSlowBurn",
            "LatencyBudgetFastBurn", "LatencyBudgetSlowBurn"} <= names


def test_every_alert_has_labels_annotations_a_runbook_section_and_cases() -> None:
    settings = RenderSettings(runbook_url="https://example.org/runbook")
    for name, alert in alert_map(settings).items():
        assert alert.labels["severity"] in ("page", "ticket"), name
        assert alert.labels["team"] == "backend"
        assert alert.labels["service"] == settings.service
        assert set(alert.annotations) == {"summary", "description", "runbook_url"}
        assert alert.annotations["runbook_url"] == f"https://example.org/runbook#{name.lower()}"
        assert alert.meaning
        assert alert.checks
        assert alert.tuning
        outcomes = [c.fires for c in alert.cases]
        assert True in outcomes, name
        assert False in outcomes, name
        assert alert.probe or alert.probe_note, name
        # templates only use what the test generator can expand
        for case in alert.cases:
            for text in alert.annotations.values():
                rules.expand_template(text, case.labels, case.value)


def test_paging_alerts_on_request_ratios_show_their_low_traffic_guard() -> None:
    for name in ("HighErrorRate", "AvailabilityBudgetFastBurn", "LatencyBudgetFastBurn"):
        alert = alert_map()[name]
        assert ">= 0.1" in alert.expr
        guard = [c for c in alert.cases if "guard" in c.name]
        assert guard, name
        assert not guard[0].fires, name
    # tickets have no guard, and their cases say so
    slow = alert_map()["AvailabilityBudgetSlowBurn"]
    assert any("guard" in c.name and c.fires for c in slow.cases)


def test_burn_rates_are_the_sre_workbook_pairs() -> None:
    a = alert_map()
    fast, slow = a["AvailabilityBudgetFastBurn"].expr, a["AvailabilityBudgetSlowBurn"].expr
    for window in ("ratio_rate1h", "ratio_rate5m", "ratio_rate6h", "ratio_rate30m"):
        assert window in fast
    assert "(14.4 * 0.001)" in fast
    assert "(6 * 0.001)" in fast
    for window in ("ratio_rate1d", "ratio_rate2h", "ratio_rate3d", "ratio_rate6h"):
        assert window in slow
    assert "(3 * 0.001)" in slow
    assert "(1 * 0.001)" in slow
    assert "(14.4 * 0.01)" in a["LatencyBudgetFastBurn"].expr  # 99% latency target
    assert a["AvailabilityBudgetFastBurn"].labels["severity"] == "page"
    assert a["AvailabilityBudgetSlowBurn"].labels["severity"] == "ticket"


def test_seed_corrections() -> None:
    a = alert_map()
    # HighErrorRate: a ratio of 5xx to all requests, not an absolute rate
    high = promql.parse(a["HighErrorRate"].expr)
    assert isinstance(high, promql.Binary)
    assert high.op == "and"
    assert isinstance(high.lhs, promql.Binary)
    assert high.lhs.op == ">"
    ratio = high.lhs.lhs
    assert isinstance(ratio, promql.Paren)
    assert isinstance(ratio.expr, promql.Binary)
    assert ratio.expr.op == "/"
    # orders per hour: increase over 1h, not a per-second rate
    recs = {r.record: r for g in rules.build(RenderSettings()) for r in g.recordings}
    assert recs["job:orders:increase1h"].expr.startswith("sum by (job) (increase(orders_total")
    assert "increase(orders_total" in a["LowOrderVolume"].expr
    assert "rate(orders_total" not in a["LowOrderVolume"].expr
    # memory from the percentage the library exports
    assert selector_names(a["HighMemoryUsage"].expr) == {"memory_usage_percent"}
    # connections from the PostgreSQL exporter, against the server's limit
    assert selector_names(a["DatabaseConnectionsHigh"].expr) == {
        "pg_stat_activity_count", "pg_settings_max_connections"}


def test_the_orders_per_hour_case_expects_a_count_per_hour() -> None:
    group = next(g for g in rules.build(RenderSettings()) if g.key == "recording")
    case = next(c for c in group.recording_cases if "60 orders per hour" in c.name)
    assert case.series[0].values == "0+1x120"  # one a minute
    assert case.samples == (({"__name__": "job:orders:increase1h",
                              "job": "mestres-cafe-api"}, 60.0),)


def test_every_series_is_scoped_to_the_service_or_its_exporter() -> None:
    settings = RenderSettings(service="shop-api", pushgateway_target="pushgateway:9091")
    for group in rules.build(settings):
        exprs = [r.expr for r in group.recordings] + [a.expr for a in group.alerts]
        if group.key == "jobs":  # the batch-job rules: see the next test
            continue
        for expr in exprs:
            for sel in promql.selectors(promql.parse(expr)):
                if sel.name and ":" in sel.name:
                    jobs = [v for lab, op, v in sel.matchers if lab == "job"]
                    assert jobs == ["shop-api"], expr  # recorded series
                    continue
                if sel.name is None:
                    continue
                jobs = [v for lab, op, v in sel.matchers if lab == "job"]
                assert jobs in (["shop-api"], ["postgres-exporter"], ["redis-exporter"]), expr


def test_batch_job_series_are_selected_by_the_batch_jobs_name_not_the_service() -> None:
    """The ``job`` label of ``job_*`` series is the batch job's (Pushgateway, honor_labels)
    or moved to ``exported_job`` (textfile collector, the service's /metrics): the service's
    ``job=`` matcher would select none of them. The jobs rules name no scrape job but the
    Pushgateway's own ``up``, and a per-job limit selects the job by its name."""
    settings = RenderSettings(service="shop-api", pushgateway_target="pushgateway:9091",
                              job_max_ages=(("hourly_sync", 5400.0),))
    group = next(g for g in rules.build(settings) if g.key == "jobs")
    assert [r.record for r in group.recordings] == [
        "job:job_last_success_timestamp_seconds:max", "job:job_last_failure_timestamp_seconds:max"]
    for rec in group.recordings:
        assert 'label_replace(' in rec.expr
        assert '"exported_job", "(.+)")' in rec.expr
        assert rec.expr.startswith("max by (job) (")
    for expr in [r.expr for r in group.recordings] + [a.expr for a in group.alerts]:
        for sel in promql.selectors(promql.parse(expr)):
            jobs = [v for lab, _op, v in sel.matchers if lab == "job"]
            if sel.name == "up":
                assert jobs == ["pushgateway"], expr
            else:
                assert jobs in ([], ["hourly_sync"]), expr
                assert "shop-api" not in expr
    assert [a.name for a in group.alerts] == ["JobNotSucceeded", "JobFailing", "PushgatewayDown"]


def test_job_age_limits_default_and_per_job() -> None:
    plain = alert_map()["JobNotSucceeded"]
    assert plain.expr == "time() - job:job_last_success_timestamp_seconds:max > 93600"
    tuned = alert_map(RenderSettings(job_max_age_seconds=7200,
                                     job_max_ages=(("hourly_sync", 5400), ("weekly", 8 * 86400))))
    expr = tuned["JobNotSucceeded"].expr
    assert '(time() - job:job_last_success_timestamp_seconds:max{job="hourly_sync"}) > 5400' \
        in expr
    assert '{job="weekly"}) > 691200' in expr
    assert "> 7200 unless on (job)" in expr
    names = [c.name for c in tuned["JobNotSucceeded"].cases]
    assert any("hourly_sync's own limit" in n for n in names)
    assert any("weekly" in n and "within its own" in n for n in names)  # beyond the default
    # the example jobs of the cases stay clear of the overridden names
    clash = alert_map(RenderSettings(job_max_ages=(("inventory_sync", 600),)))
    assert {c.labels.get("job") for c in clash["JobNotSucceeded"].cases if c.fires} == {
        "inventory_sync_2", "nightly_report", "inventory_sync"}
    for bad in ({"job_max_age_seconds": 0}, {"job_max_age_seconds": float("nan")},
                {"job_max_ages": (("x", -1.0),)}, {"job_max_ages": (("x", 60), ("x", 70))},
                {"job_max_ages": (("", 60),)}):
        with pytest.raises(ValueError, match="job_max_age"):
            RenderSettings(**bad)  # type: ignore[arg-type]
    assert RenderSettings(job_max_ages=(("x", 60),)).job_max_age("x") == 60
    assert RenderSettings().job_max_age("x") == 93600


def test_jobs_rules_follow_the_job_metrics_feature_and_the_pushgateway() -> None:
    assert "PushgatewayDown" not in alert_map()  # no Pushgateway configured
    off = RenderSettings(config=ObservabilityConfig(job_metrics=False))
    assert not {"JobNotSucceeded", "JobFailing"} & set(alert_map(off))
    assert "prometheus/rules/jobs.yml" not in rules.render(off)
    shop = RenderSettings(config=ObservabilityConfig(namespace="shop"))
    recs = {r.record for g in rules.build(shop) for r in g.recordings}
    assert "job:shop_job_last_success_timestamp_seconds:max" in recs


def test_namespace_prefixes_every_catalogue_metric() -> None:
    settings = RenderSettings(config=ObservabilityConfig(namespace="shop"))
    names = set()
    for group in rules.build(settings):
        for expr in [r.expr for r in group.recordings] + [a.expr for a in group.alerts]:
            names |= selector_names(expr)
    catalogue_names = {n for n in names if not n.startswith(("pg_", "redis_", "up", "slo:"))
                       and ":" not in n}
    assert catalogue_names
    assert all(n.startswith(("shop_", "mestres_observability_")) for n in catalogue_names), \
        catalogue_names
    assert "job:shop_orders:increase1h" in {r.record for g in rules.build(settings)
                                            for r in g.recordings}


def test_a_disabled_feature_leaves_no_rule_behind() -> None:
    off = RenderSettings(config=ObservabilityConfig(system_metrics=False))
    names = set(alert_map(off))
    assert "HighMemoryUsage" not in names
    assert "HighDiskUsage" not in names
    assert "HighErrorRate" in names
    assert not any("memory_usage_percent" in text for text in rules.render(off).values())


def test_rum_alerts_exist_exactly_when_rum_metrics_do(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "prometheus/rules/rum.yml" not in rules.render(RenderSettings())
    add_fake_rum(monkeypatch)
    names = set(alert_map())
    assert {"WebVitalLCPPoor", "WebVitalINPPoor", "JavaScriptErrors"} <= names
    a = alert_map()
    # INP's poor threshold (0.5 s) is a bucket bound: an exact share; LCP's (4 s) is not
    assert 'le="0.5"' in a["WebVitalINPPoor"].expr
    assert "histogram_quantile(0.75" in a["WebVitalLCPPoor"].expr
    assert "page_group" in a["WebVitalLCPPoor"].expr
    # their feature off: gone again
    off = RenderSettings(config=ObservabilityConfig(system_metrics=False))
    assert "prometheus/rules/rum.yml" not in rules.render(off)


def test_latency_threshold_must_be_a_bucket_bound() -> None:
    cfg = ObservabilityConfig()
    assert rules.latency_bound_problem(cfg, 0.25) is None
    problem = rules.latency_bound_problem(cfg, 0.3)
    assert problem is not None
    assert "nearest bounds: 0.25 and 0.5" in problem
    with pytest.raises(ValueError, match="nearest bounds"):
        rules.build(RenderSettings(slo_latency_threshold=0.3))
    custom = ObservabilityConfig(http_buckets=(0.1, 0.3, 1.0))
    with pytest.raises(ValueError, match="latency_p99_threshold"):
        rules.build(RenderSettings(config=custom, slo_latency_threshold=0.3))
    settings = RenderSettings(config=custom, slo_latency_threshold=0.3, latency_p99_threshold=0.5)
    sli = [r for g in rules.build(settings) for r in g.recordings
           if r.record == "slo:sli_error:ratio_rate5m" and r.labels.get("slo") == "latency"]
    assert 'le="0.3"' in sli[0].expr


def test_alert_teams_and_for_override() -> None:
    settings = RenderSettings(alert_teams=(("business", "sales"),), alert_for_override="0s")
    a = alert_map(settings)
    assert a["LowOrderVolume"].labels["team"] == "sales"
    assert a["HighErrorRate"].labels["team"] == "backend"
    assert {x.for_ for x in a.values()} == {"0s"}
    text = rules.render(settings)["prometheus/rules/business.yml"]
    assert "for: 0s" in text
    assert "team: sales" in text


def test_rule_files_parse_as_yaml_with_one_group_each() -> None:
    files = rules.render(RenderSettings())
    for path, text in files.items():
        assert text.startswith(_yaml.HEADER)
        doc = _yaml.load(text)
        assert len(doc["groups"]) == 1, path
        assert doc["groups"][0]["name"].startswith("mestres-cafe-api-")


@pytest.mark.parametrize(("value", "expected"), [
    (0.0, "0"), (3.0, "3"), (92.0, "92"), (1234567.0, "1.235M"), (0.001234, "1.234m"),
    (0.5, "500m"),
])
def test_humanize_matches_prometheus(value: float, expected: str) -> None:
    assert rules.expand_template("{{ $value | humanize }}", {}, value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (4.975, "4.975s"), (3725.0, "1h 2m 5s"), (0.25, "250ms"), (90061.0, "1d 1h 1m 1s"),
    (0.0, "0s"),
])
def test_humanize_duration_matches_prometheus(value: float, expected: str) -> None:
    assert rules.expand_template("{{ $value | humanizeDuration }}", {}, value) == expected


def test_templates_outside_the_known_forms_are_refused() -> None:
    assert rules.expand_template("{{ $value | humanizePercentage }} on {{ $labels.x }}",
                                 {"x": "a"}, 0.0909) == "9.09% on a"
    with pytest.raises(ValueError, match="not supported"):
        rules.expand_template("{{ $value }}", {}, 1.0)


def test_go_float_formats_bounds_like_prometheus_client() -> None:
    from prometheus_client.utils import floatToGoString

    for b in (*ObservabilityConfig().http_buckets, 1e7, 123456789.0, 0.0001, math.inf):
        assert rules.go_float(b) == floatToGoString(b)
