"""Grafana provisioning and dashboards: structure, catalogue names, features, exemplars, RUM."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
import yaml

from mestres_observability import catalogue
from mestres_observability.catalogue import MetricDef
from mestres_observability.config import ObservabilityConfig
from mestres_observability.monitoring import grafana
from mestres_observability.monitoring.settings import RenderSettings

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "topk", "bottomk", "max", "min",
    "count", "le", "status", "endpoint", "currency", "product_id", "method", "error_type",
    "action", "user_type", "movement_type", "instance", "mountpoint", "check", "service", "version",
    "environment", "component", "metric", "page_group", "time", "job",
}


def _render(**config: Any) -> dict[str, str]:
    return grafana.render(RenderSettings(config=ObservabilityConfig(**config)))


def _dashboards(out: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {path: json.loads(text) for path, text in out.items() if path.endswith(".json")}


def _targets(dash: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in dash["panels"] for t in p.get("targets", ())]


def _histogram_buckets(namespace: str, entries: tuple[MetricDef, ...] = catalogue.CATALOGUE
                       ) -> set[str]:
    return {d.family_name(namespace) + "_bucket" for d in entries if d.kind == "histogram"}


def test_files_rendered() -> None:
    out = _render()
    assert set(out) == {
        "grafana/provisioning/datasources/datasources.yml",
        "grafana/provisioning/dashboards/dashboards.yml",
        "grafana/dashboards/business.json",
        "grafana/dashboards/technical.json",
    }


def test_dashboards_are_valid_json_at_the_pinned_schema_with_unique_ids() -> None:
    assert grafana.GRAFANA_IMAGE.startswith("grafana/grafana:11.6.")
    assert grafana.SCHEMA_VERSION == 41
    uids = set()
    for path, dash in _dashboards(_render()).items():
        assert dash["schemaVersion"] == grafana.SCHEMA_VERSION, path
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), f"{path}: duplicate panel ids"
        assert all(isinstance(i, int) and i > 0 for i in ids)
        assert dash["uid"] not in uids
        assert len(dash["uid"]) <= 40
        uids.add(dash["uid"])
        for p in dash["panels"]:
            pos = p["gridPos"]
            assert pos["x"] >= 0, (path, p["title"])
            assert pos["x"] + pos["w"] <= 24, (path, p["title"])
            refs = [t["refId"] for t in p.get("targets", ())]
            assert len(refs) == len(set(refs))
        # panels do not overlap
        cells: set[tuple[int, int]] = set()
        for p in dash["panels"]:
            pos = p["gridPos"]
            mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                    for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not mine & cells, (path, p["title"])
            cells |= mine


def test_datasource_uids_match_the_provisioning() -> None:
    out = _render()
    provisioned = yaml.safe_load(out["grafana/provisioning/datasources/datasources.yml"])
    assert provisioned["apiVersion"] == 1
    by_uid = {d["uid"]: d for d in provisioned["datasources"]}
    assert set(by_uid) == {grafana.PROMETHEUS_UID, grafana.JAEGER_UID, grafana.ELASTICSEARCH_UID}
    # exemplars link to the trace datasource, by the label the library writes
    dests = by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert dests == [{"name": "trace_id", "datasourceUid": "jaeger",
                      "urlDisplayLabel": "Open trace"}]
    assert by_uid["jaeger"]["type"] == "jaeger"
    assert by_uid["jaeger"]["jsonData"]["tracesToLogsV2"]["datasourceUid"] == "elasticsearch"
    # no secret is written: the password is an environment reference
    assert by_uid["elasticsearch"]["secureJsonData"]["basicAuthPassword"] == \
        "${LOGS_READER_PASSWORD}"
    for dash in _dashboards(out).values():
        for panel in dash["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in by_uid
            for t in panel["targets"]:
                assert t["datasource"]["uid"] in by_uid
                assert by_uid[t["datasource"]["uid"]]["type"] == t["datasource"]["type"]


def test_provisioning_interpolates_only_the_password() -> None:
    text = _render()["grafana/provisioning/datasources/datasources.yml"]
    # Grafana expands $VAR and ${VAR} in provisioning files; $$ is a literal $
    refs = re.findall(r"(?<!\$)\$\{?([A-Za-z_][A-Za-z0-9_.]*)", text.replace("$$", ""))
    assert refs == ["LOGS_READER_PASSWORD"]
    data = yaml.safe_load(text)
    jaeger = next(d for d in data["datasources"] if d["uid"] == "jaeger")
    assert "$${__trace.traceId}" in jaeger["jsonData"]["tracesToLogsV2"]["query"]


def test_dashboard_provider_reads_the_mounted_directory() -> None:
    provider = yaml.safe_load(_render()["grafana/provisioning/dashboards/dashboards.yml"])
    (p,) = provider["providers"]
    assert p["type"] == "file"
    assert p["options"]["path"] == grafana.DASHBOARDS_DIR


def test_every_histogram_panel_has_exemplars_on() -> None:
    buckets = _histogram_buckets("")
    histogram_panels = 0
    for dash in _dashboards(_render()).values():
        for panel, t in _targets(dash):
            reads = bool(set(NAME_RE.findall(t["expr"])) & buckets)
            assert t["exemplar"] is reads, (panel["title"], t["expr"])
            histogram_panels += reads
    assert histogram_panels >= 6  # p50/p95/p99, heatmap, SLO share, order value x3


def test_exemplars_off_when_the_service_writes_none() -> None:
    for config in ({"exemplars": False}, {"tracing_enabled": False}):
        for dash in _dashboards(_render(**config)).values():
            assert not any(t["exemplar"] for _, t in _targets(dash)), config


def test_expressions_use_catalogue_names_only() -> None:
    samples = {n for d in catalogue.CATALOGUE for n in d.sample_names("")}
    labels = {lab for d in catalogue.CATALOGUE for lab in d.labels}  # in by (...) clauses
    exprs = grafana.dashboard_expressions(RenderSettings())
    assert len(exprs) >= 30
    for title, expr in exprs:
        assert "$" not in expr, (title, expr)  # Grafana variables replaced
        names = set(NAME_RE.findall(re.sub(r'"[^"]*"|\[[^\]]*\]', "", expr)))
        unknown = {n for n in names
                   if n not in samples and n not in PROMQL_WORDS and n not in labels}
        assert not unknown, (title, expr, unknown)


def test_every_catalogue_family_appears_somewhere() -> None:
    every_feature = RenderSettings(config=ObservabilityConfig(rum_enabled=True,
                                                              http_size_metrics=True),
                                   anomaly_rules=True)
    exprs = " ".join(e for _, e in grafana.dashboard_expressions(every_feature))
    shown = {d.name for d in catalogue.CATALOGUE
             if any(n in exprs for n in d.sample_names("", created=False))}
    missing = {d.name for d in catalogue.CATALOGUE} - shown
    # process_* families not plotted on their own: read through the ones above
    assert missing <= {"process_virtual_memory_bytes", "process_start_time_seconds",
                       "process_threads"}, missing


def test_orders_per_hour_is_per_hour() -> None:
    exprs = dict(grafana.dashboard_expressions(RenderSettings()))
    assert exprs["business: Orders per hour"].endswith("* 3600")
    assert "rate(orders_total" in exprs["business: Orders per hour"]


def test_namespace_applied() -> None:
    exprs = grafana.dashboard_expressions(RenderSettings(config=ObservabilityConfig(
        namespace="shop")))
    text = " ".join(e for _, e in exprs)
    assert "shop_http_request_duration_seconds_bucket" in text
    assert "shop_orders_total" in text
    assert "shop_cpu_usage_percent" in text
    assert re.search(r"(?<![\w])orders_total", text) is None
    # the unprefixed families keep their names
    assert "mestres_observability_errors_total" in text
    assert "process_cpu_seconds_total" in text
    buckets = _histogram_buckets("shop")
    for dash in _dashboards(_render(namespace="shop")).values():
        for _, t in _targets(dash):
            assert t["exemplar"] is bool(set(NAME_RE.findall(t["expr"])) & buckets)


def _titles(out: dict[str, str]) -> set[str]:
    return {p["title"] for d in _dashboards(out).values() for p in d["panels"]}


def test_disabled_features_remove_panels() -> None:
    full = _titles(_render())
    no_system = _titles(_render(system_metrics=False))
    assert {"CPU usage", "Memory usage", "Memory in use", "Disk usage"} <= full - no_system
    assert "Process CPU (cores)" in no_system
    no_process = _titles(_render(process_metrics=False))
    assert {"Process CPU (cores)", "Process resident memory"} <= full - no_process
    assert "CPU usage" in no_process
    neither = _render(system_metrics=False, process_metrics=False)
    exprs = " ".join(t["expr"] for d in _dashboards(neither).values() for _, t in _targets(d))
    for d in catalogue.entries(source=("system", "process")):
        assert d.name not in exprs
    # tracing off: no spans-dropped panel
    assert "Spans dropped per second" in full
    assert "Spans dropped per second" not in _titles(_render(tracing_enabled=False))
    # the master switch turns every optional family off
    assert "CPU usage" not in _titles(_render(enabled=False))


def test_runtime_panels_follow_the_setting() -> None:
    full = _titles(_render())
    assert {"Garbage collections per second by generation",
            "Objects freed by the garbage collector per second", "Python runtimes"} <= full
    off = _render(runtime_metrics=False)
    exprs = " ".join(t["expr"] for d in _dashboards(off).values() for _, t in _targets(d))
    assert "python_" not in exprs
    tech = _dashboards(off)["grafana/dashboards/technical.json"]
    assert "Python runtime" not in [p["title"] for p in tech["panels"] if p["type"] == "row"]


def test_empty_rows_dropped() -> None:
    out = _render(system_metrics=False, process_metrics=False)
    tech = _dashboards(out)["grafana/dashboards/technical.json"]
    rows = [p["title"] for p in tech["panels"] if p["type"] == "row"]
    assert "Resources" in rows  # active_connections still there
    for i, p in enumerate(tech["panels"]):
        if p["type"] == "row":
            assert i + 1 < len(tech["panels"])
            assert tech["panels"][i + 1]["type"] != "row"


def test_slo_threshold_panel_only_for_a_bucket_bound() -> None:
    on = grafana.dashboard_expressions(RenderSettings())
    assert any('le="0.25"' in e for _, e in on)
    off = grafana.dashboard_expressions(RenderSettings(slo_latency_threshold=0.3))
    assert not any("le=" in e for _, e in off)


def test_revenue_today_starts_at_midnight() -> None:
    business = _dashboards(_render())["grafana/dashboards/business.json"]
    panel = next(p for p in business["panels"] if p["title"] == "Revenue today")
    assert panel["timeFrom"] == "now/d"
    assert "[$__range]" in panel["targets"][0]["expr"]


def test_anomaly_rules_give_the_business_overview_its_predictions_row() -> None:
    settings = RenderSettings(config=ObservabilityConfig(), anomaly_rules=True)
    business = _dashboards(grafana.render(settings))["grafana/dashboards/business.json"]
    titles = [p["title"] for p in business["panels"]]
    row = titles.index("Predictions")
    assert {"Anomaly score by series", "Forecast with its 80% interval"} <= set(titles[row:])
    exprs = {t["expr"] for p, t in _targets(business) if titles.index(p["title"]) > row}
    for family in ("anomaly_score", "forecast", "forecast_lower", "forecast_upper"):
        assert any(f"({family})" in e or f"({family}{{" in e or f" {family}" in e
                   for e in exprs), (family, exprs)


def test_predictions_hook() -> None:
    business = _dashboards(_render())["grafana/dashboards/business.json"]
    assert "Predictions" not in {p["title"] for p in business["panels"]}

    def build(settings: RenderSettings) -> list[dict[str, Any]]:
        return [{"type": "timeseries", "title": "Orders forecast", "datasource":
                 {"type": "prometheus", "uid": "prometheus"},
                 "targets": [{"refId": "A", "expr": "orders_total", "datasource":
                              {"type": "prometheus", "uid": "prometheus"}}]}]

    grafana.PREDICTION_PANEL_BUILDERS.append(build)
    try:
        business = _dashboards(_render())["grafana/dashboards/business.json"]
    finally:
        grafana.PREDICTION_PANEL_BUILDERS.remove(build)
    titles = [p["title"] for p in business["panels"]]
    assert titles[-2:] == ["Predictions", "Orders forecast"]
    ids = [p["id"] for p in business["panels"]]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------------- RUM
RUM_FAKE = (
    MetricDef("rum_lcp_seconds", "histogram", "Largest Contentful Paint.",
              ("page_group", "navigation_type", "rating"), ("page_group",),
              buckets="http_buckets", group="http", unit="seconds", feature="system_metrics"),
    MetricDef("rum_cls", "histogram", "Cumulative Layout Shift.",
              ("page_group",), ("page_group",), buckets="order_value_buckets", group="http",
              feature="system_metrics"),
    MetricDef("rum_js_errors_total", "counter", "JavaScript errors.",
              ("page_group",), ("page_group",), group="http", feature="system_metrics"),
)


def test_no_rum_dashboard_by_default() -> None:
    assert grafana.rum_entries(RenderSettings()) == []  # rum_enabled is off by default
    assert "grafana/dashboards/rum.json" not in _render()


def _rum_panels(settings: RenderSettings) -> dict[str, dict[str, Any]]:
    rum = grafana.dashboards(settings)["rum.json"]
    assert rum["schemaVersion"] == grafana.SCHEMA_VERSION
    ids = [p["id"] for p in rum["panels"]]
    assert len(ids) == len(set(ids))
    return {p["title"]: p for p in rum["panels"]}


def test_the_rum_dashboard_draws_each_vital_of_the_real_metrics_against_its_thresholds() -> None:
    """The real catalogue: one histogram carries LCP, INP, FCP and TTFB in a ``metric``
    label, CLS has its own; each vital gets its own p75 panel pinned to it, with the
    web-vitals thresholds, and an exact share of good views (the bounds are buckets)."""
    settings = RenderSettings(config=ObservabilityConfig(namespace="shop", rum_enabled=True))
    panels = _rum_panels(settings)
    expected = {"LCP": (2.5, 4.0), "INP": (0.2, 0.5), "FCP": (1.8, 3.0), "TTFB": (0.8, 1.8)}
    for vital, (good, poor) in expected.items():
        p75 = panels[f"{vital} p75 by page"]
        expr = p75["targets"][0]["expr"]
        assert expr == ("histogram_quantile(0.75, sum by (le, page) (rate("
                        f'shop_rum_web_vitals_seconds_bucket{{metric="{vital}"}}'
                        "[$__rate_interval])))")
        assert p75["targets"][0]["exemplar"] is True
        steps = p75["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, good, poor]
        assert p75["fieldConfig"]["defaults"]["unit"] == "s"
        share = panels[f"{vital}: share of good page views"]["targets"][0]["expr"]
        assert f'shop_rum_web_vitals_seconds_bucket{{metric="{vital}", le="{good!r}"}}' in share
        assert f'shop_rum_web_vitals_seconds_count{{metric="{vital}"}}' in share
    cls = panels["CLS p75 by page"]
    assert "shop_rum_layout_shift_bucket[" in cls["targets"][0]["expr"]
    assert [s["value"] for s in cls["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [
        None, 0.1, 0.25]
    assert 'shop_rum_layout_shift_bucket{le="0.1"}' in panels[
        "CLS: share of good page views"]["targets"][0]["expr"]
    # no panel mixes the vitals: every read of the shared histogram pins one
    for title, panel in panels.items():
        for target in panel.get("targets", []):
            if "rum_web_vitals_seconds" in target["expr"]:
                assert 'metric="' in target["expr"], title
    assert panels["rum_navigation_seconds p75 by phase"]["targets"][0]["expr"].startswith(
        "histogram_quantile(0.75, sum by (le, phase)")
    assert panels["JS errors per minute by page"]["targets"][0]["expr"] == (
        "sum by (page) (rate(shop_rum_js_errors_total[$__rate_interval])) * 60")
    mean = panels["Mean resource load time by initiator"]["targets"][0]["expr"]
    assert mean == ("sum by (initiator) (rate(shop_rum_resource_duration_seconds_total"
                    "[$__rate_interval])) / sum by (initiator) (rate(shop_rum_resources_total"
                    "[$__rate_interval]))")
    titles = [t for t, _ in grafana.dashboard_expressions(settings)]
    assert "rum: LCP p75 by page" in titles


def test_every_rum_family_of_the_catalogue_is_on_the_rum_dashboard() -> None:
    settings = RenderSettings(config=ObservabilityConfig(rum_enabled=True))
    exprs = " ".join(t["expr"] for p in _rum_panels(settings).values()
                     for t in p.get("targets", []))
    for entry in catalogue.CATALOGUE:
        if entry.name.startswith("rum_"):
            assert entry.exposed_name(settings.config.namespace).removesuffix("_total") in exprs


def test_a_histogram_named_after_its_vital_gets_its_panel_too() -> None:
    """An entry like ``rum_lcp_seconds`` (no ``metric`` label) is one vital's histogram."""
    entries = catalogue.CATALOGUE + RUM_FAKE
    settings = RenderSettings(config=ObservabilityConfig(namespace="shop"))
    panels = {p["title"]: p for p in grafana.dashboards(settings, entries)["rum.json"]["panels"]}
    lcp = panels["LCP p75 by page_group"]
    assert "shop_rum_lcp_seconds_bucket[" in lcp["targets"][0]["expr"]
    assert [s["value"] for s in lcp["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [
        None, 2.5, 4.0]
    assert 'shop_rum_lcp_seconds_bucket{le="2.5"}' in panels[
        "LCP: share of good page views"]["targets"][0]["expr"]


def test_rum_dashboard_follows_the_feature() -> None:
    entries = catalogue.CATALOGUE + RUM_FAKE
    off = RenderSettings(config=ObservabilityConfig(system_metrics=False))
    assert "rum.json" not in grafana.dashboards(off, entries)
    unknown = tuple(dataclasses.replace(d, feature="rum_not_a_setting") for d in RUM_FAKE)
    assert grafana.rum_entries(RenderSettings(), catalogue.CATALOGUE + unknown) == []
    partial = (*catalogue.CATALOGUE, RUM_FAKE[0], dataclasses.replace(RUM_FAKE[2], feature="no_such"))
    rum = grafana.dashboards(RenderSettings(), partial)["rum.json"]
    assert not any("js_errors" in t.get("expr", "") for _, t in _targets(rum))


@pytest.mark.parametrize("service", ["mestres-cafe-api", "Shop API (EU)", "x" * 60])
def test_uids_are_stable_and_short(service: str) -> None:
    a = grafana.dashboards(RenderSettings(service=service))
    b = grafana.dashboards(RenderSettings(service=service))
    assert [d["uid"] for d in a.values()] == [d["uid"] for d in b.values()]
    assert all(re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"]) for d in a.values())
