"""The metric catalogue is the one source of truth for what the library exposes.

What an initialised instance puts on ``/metrics`` (single-process and
multiprocess mode, with the system and process metrics on and off) is exactly
the catalogue's enabled entries, with their types, labels, help texts and
sample names; the typed attributes of ``LibraryMetrics`` match it; the module
needs the standard library only; every entry is well-formed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from mestres_observability import catalogue, metrics, system
from mestres_observability.catalogue import ALWAYS, CATALOGUE, MetricDef, is_enabled
from mestres_observability.config import ObservabilityConfig
from mestres_observability.metrics import (
    LIBRARY_METRICS,
    GuardedCounter,
    GuardedGauge,
    GuardedHistogram,
    LibraryMetrics,
    metrics_reference,
)
from mestres_observability.runtime import RUNTIME_METRICS
from mestres_observability.system import SYSTEM_METRICS
from mestres_observability.testing import fresh_observability
from tests.test_multiprocess import _private_dir, _run

ROOT = Path(__file__).resolve().parent.parent
#: what an instance of the library exposes (other processes' entries, such as
#: `anomaly serve`'s, are exposed elsewhere: tests/test_anomaly_prometheus.py)
SERVICE = catalogue.entries(process="service")
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
GUARDED = {"counter": GuardedCounter, "gauge": GuardedGauge, "histogram": GuardedHistogram}

#: settings under which the exposed families are compared with the catalogue
SETTINGS: list[dict[str, Any]] = [
    {},
    {"system_metrics": False},
    {"process_metrics": False},
    {"system_metrics": False, "process_metrics": False},
    {"enabled": False},
    {"namespace": "shop", "created_series": False},
    {"rum_enabled": True},
    {"rum_enabled": True, "namespace": "shop"},
    {"celery_metrics": False, "http_client_metrics": False, "db_metrics": False,
     "job_metrics": False},
    {"runtime_metrics": False},
]

#: run in a fresh interpreter (multiprocess mode is chosen at import): init with
#: the settings, scrape, record one series in every library family, scrape again
_PROBE = """
import json
from mestres_observability import ObservabilityConfig, init_observability
from mestres_observability.metrics import LIBRARY_METRICS

OM = "application/openmetrics-text; version=1.0.0"
out = []
for settings in SETTINGS:
    obs = init_observability(config=ObservabilityConfig(configure_logging=False, **settings))
    before = obs.render_metrics(accept=OM).body.decode()
    for d in LIBRARY_METRICS:
        family = obs.metrics.family(d.name)
        values = tuple("x" for _ in d.labels)
        if d.kind == "counter":
            family.inc(values, 1.0, None)
        elif d.kind == "histogram":
            family.observe(values, 0.1, None)
        else:
            family.set(values, 1.0)
    after = obs.render_metrics(accept=OM).body.decode()
    out.append({"before": before, "after": after})
    obs.shutdown(timeout=1.0)
print(json.dumps(out))
"""


def _scrapes(settings: list[dict[str, Any]], mpdir: Path | None) -> list[dict[str, str]]:
    code = f"SETTINGS = {settings!r}\n" + textwrap.dedent(_PROBE)
    proc = _run(code, mpdir)
    result: list[dict[str, str]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _families(body: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(body)}  # type: ignore[no-untyped-call]


def _expected(settings: dict[str, Any]) -> dict[str, MetricDef]:
    namespace = settings.get("namespace", "")
    return {d.family_name(namespace): d for d in SERVICE if is_enabled(d, settings)}


def _check_exposure(settings: dict[str, Any], scrape: dict[str, str], *, multiprocess: bool) -> None:
    expected = _expected(settings)
    namespace = settings.get("namespace", "")
    created = settings.get("created_series", True) and not multiprocess
    before = _families(scrape["before"])
    after = _families(scrape["after"])
    # nothing outside the catalogue, and every enabled entry once a series exists
    assert set(before) <= set(expected), sorted(set(before) - set(expected))
    assert set(after) == set(expected), (sorted(set(after) - set(expected)),
                                         sorted(set(expected) - set(after)))
    if not multiprocess:  # the files hold only series written so far
        assert set(before) == set(expected)
    sample_names: set[str] = set()
    for name, family in after.items():
        d = expected[name]
        assert family.type == d.kind, name
        if not multiprocess:  # prometheus_client's file merge writes its own help text
            assert family.documentation == d.doc, name
        labels = set(d.all_labels(multiprocess=multiprocess))
        assert family.samples, name
        for s in family.samples:
            sample_names.add(s.name)
            assert set(s.labels) - {"le"} == labels, (s.name, s.labels)
            assert ("le" in s.labels) == s.name.endswith("_bucket"), s.name
    wanted = {n for d in expected.values() for n in d.sample_names(namespace, created=created)}
    assert sample_names == wanted, (sorted(sample_names ^ wanted))
    for n in sample_names:
        found = catalogue.find_sample(n, namespace)
        assert found is not None
        assert found.family_name(namespace) in after


def test_exposed_families_match_the_catalogue_in_single_process_mode() -> None:
    scrapes = _scrapes(SETTINGS, None)
    for settings, scrape in zip(SETTINGS, scrapes, strict=True):
        _check_exposure(settings, scrape, multiprocess=False)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items())
                         or "defaults")
def test_exposed_families_match_the_catalogue_in_multiprocess_mode(
    tmp_path: Path, settings: dict[str, Any]
) -> None:
    # one interpreter per case: the files of a process hold every family it ever wrote
    (scrape,) = _scrapes([settings], _private_dir(tmp_path))
    _check_exposure(settings, scrape, multiprocess=True)


def test_families_of_an_instance_in_this_process_are_in_the_catalogue() -> None:
    for settings in ({}, {"rum_enabled": True}):
        with fresh_observability(**settings) as obs:
            collected = {m.name: m.type for m in obs.registry.collect()}
        assert collected == {d.family_name(): d.kind for d in SERVICE
                             if is_enabled(d, settings)}


def test_with_the_global_registry_every_entry_is_still_exposed_once() -> None:
    from prometheus_client import REGISTRY

    with fresh_observability(expose_global_registry=True) as obs:
        body = obs.render_metrics(accept=OPENMETRICS).body.decode()
        own = {m.name for m in obs.registry.collect()}
    exposed = _families(body)
    ours = {d.family_name() for d in SERVICE if is_enabled(d, obs.config)}
    # process_* families prometheus_client's global registry already has are left to it
    assert ours <= set(exposed)
    assert own <= ours
    assert set(exposed) - ours <= {m.name for m in REGISTRY.collect()}
    assert body.count("# TYPE process_cpu_seconds counter") == 1


# ---------------------------------------------------------------- the metrics handle
def test_library_metrics_annotations_match_the_catalogue() -> None:
    hints = typing.get_type_hints(LibraryMetrics)
    annotated = {name: t for name, t in hints.items()
                 if isinstance(t, type) and issubclass(t, tuple(GUARDED.values()))}
    assert annotated == {d.name: GUARDED[d.kind] for d in LIBRARY_METRICS}


def test_library_metrics_attributes_are_plain_instance_attributes_of_the_catalogue() -> None:
    with fresh_observability() as obs:
        handle = obs.metrics
        for d in LIBRARY_METRICS:
            attr = vars(handle)[d.attr]  # set on the instance: no property on the hot path
            assert type(attr) is GUARDED[d.kind], d.name
            assert attr.definition is d
            assert handle.family(d.name) is attr
            assert attr.guard.labelnames == d.labels
            assert attr.guard.limit == obs.config.limit_for(d.name)


def test_library_system_and_runtime_tables_partition_the_catalogue() -> None:
    assert LIBRARY_METRICS + SYSTEM_METRICS + RUNTIME_METRICS == SERVICE
    assert all(d.source == "library" for d in LIBRARY_METRICS)
    assert {d.source for d in SYSTEM_METRICS} == {"system", "process"}
    assert {d.source for d in RUNTIME_METRICS} == {"runtime"}
    assert metrics.MetricDef is vars(system)["MetricDef"] is MetricDef
    # the original positional form still builds an entry
    old = metrics.MetricDef("jobs_total", "counter", "Jobs.", ("kind",), ("kind",), None, True,
                            "all", "business")
    assert old.group == "business"
    assert old.feature == ALWAYS
    assert old.attr == "jobs_total"


# ---------------------------------------------------------------- standard library only
def test_catalogue_imports_with_the_standard_library_alone() -> None:
    path = str(ROOT / "mestres_observability" / "catalogue.py")
    code = textwrap.dedent(f"""
        import importlib.util, json, sys

        BLOCKED = ("prometheus_client", "psutil", "opentelemetry", "structlog",
                   "mestres_observability")

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Block())
        before = set(sys.modules)
        spec = importlib.util.spec_from_file_location("catalogue_alone", {path!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules["catalogue_alone"] = module
        spec.loader.exec_module(module)
        new = sorted(set(sys.modules) - before - {{"catalogue_alone"}})
        print(json.dumps({{
            "foreign": [m for m in new if m.split(".")[0] not in sys.stdlib_module_names],
            "loaded": sorted(m for m in sys.modules
                             if m.split(".")[0] in BLOCKED[:-1]),
            "entries": len(module.CATALOGUE),
            "sample": module.lookup("orders_total").sample_names("shop"),
        }}))
    """)
    # -S: no site-packages on the path, so nothing but the standard library is importable
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          timeout=60, check=False, env={"PATH": os.environ.get("PATH", "")})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["foreign"] == []
    assert out["loaded"] == []
    assert out["entries"] == len(CATALOGUE)
    assert out["sample"] == ["shop_orders_total", "shop_orders_created"]


# ---------------------------------------------------------------- well-formed entries
@pytest.mark.parametrize("entry", CATALOGUE, ids=lambda d: d.name)
def test_entry_is_well_formed(entry: MetricDef) -> None:
    assert catalogue.problems(entry) == []
    cfg = ObservabilityConfig()
    if entry.buckets is not None:
        buckets = getattr(cfg, entry.buckets)
        assert isinstance(buckets, tuple)
        assert buckets
        assert all(isinstance(b, float) for b in buckets)
    if entry.feature != ALWAYS and entry.process == "service":
        assert isinstance(getattr(cfg, entry.feature), bool), entry.feature
    if entry.process != "service":  # a setting of the rendered stack (dashboards, rules)
        from mestres_observability.monitoring.settings import RenderSettings

        assert isinstance(getattr(RenderSettings(), entry.feature), bool), entry.feature
    for namespace in ("", "shop"):
        c = ObservabilityConfig(namespace=namespace)
        assert entry.exposed_name(namespace) == (
            c.metric_name(entry.name) if entry.prefixed else entry.name)
    if entry.source in ("system", "process"):
        assert entry.process == "service"
        assert entry.data_labels == ()  # scrape-time families have no data-derived labels


def test_names_and_sample_names_are_unique() -> None:
    for namespace in ("", "shop"):
        seen: dict[str, str] = {}
        for d in CATALOGUE:
            for n in (d.family_name(namespace), *d.sample_names(namespace)):
                assert seen.setdefault(n, d.name) == d.name, f"{n}: {seen[n]} and {d.name}"


def test_problems_finds_malformed_entries() -> None:
    def found(d: MetricDef) -> str:
        return " | ".join(catalogue.problems(d))

    assert "end in _total" in found(MetricDef("orders", "counter", "x"))
    assert "end in _total" in found(MetricDef("level_total", "gauge", "x"))
    assert "unit must be 'seconds'" in found(MetricDef("wait_seconds", "gauge", "x"))
    assert "must end in _bytes" in found(MetricDef("size", "gauge", "x", unit="bytes"))
    assert "subset of labels" in found(MetricDef("a", "gauge", "x", ("k",), ("j",)))
    assert "buckets" in found(MetricDef("h", "histogram", "x"))
    assert "buckets" in found(MetricDef("g", "gauge", "x", buckets="http_buckets"))
    assert "invalid label" in found(MetricDef("b", "histogram", "x", ("le",), buckets="b"))
    assert "invalid metric name" in found(MetricDef("bad-name", "gauge", "x"))
    assert "gauges only" in found(MetricDef("c_total", "counter", "x", multiprocess_mode="livesum"))
    assert "unknown multiprocess mode" in found(MetricDef("g", "gauge", "x", multiprocess_mode="avg"))
    assert "sample suffix" in found(MetricDef("jobs_created", "gauge", "x"))
    assert "unknown group" in found(MetricDef("g", "gauge", "x", group=typing.cast(Any, "misc")))
    assert "one string value per label" in found(
        MetricDef("r_total", "counter", "x", ("a", "b"), presets=(("only-a",),)))
    assert found(MetricDef("temperature_celsius", "gauge", "x", unit="celsius")) == ""


def test_preset_series_are_exposed_from_the_first_scrape() -> None:
    """A family's fixed label values (``presets``) have their series at zero before anything
    is recorded: ``mestres_observability_spans_dropped_total`` has one per drop reason."""
    with_presets = [d for d in LIBRARY_METRICS if d.presets]
    spans = catalogue.lookup("mestres_observability_spans_dropped_total")
    assert spans in with_presets
    assert spans.labels == ("reason",)
    assert spans.presets == tuple((r,) for r in catalogue.SPAN_DROP_REASONS)
    with fresh_observability(traces_exporter="none") as obs:
        families = _families(obs.render_metrics(accept=OPENMETRICS).body.decode())
    for d in with_presets:
        samples = {tuple(s.labels[k] for k in d.labels): s.value
                   for s in families[d.family_name()].samples if s.name == d.name}
        assert samples == dict.fromkeys(d.presets, 0.0), d.name


# ---------------------------------------------------------------- helpers
def test_lookup_and_find_sample() -> None:
    assert catalogue.lookup("orders_total").labels == ("status",)
    with pytest.raises(KeyError, match="did you mean orders_total"):
        catalogue.lookup("order_total")
    hist = catalogue.lookup("http_request_duration_seconds")
    assert hist.sample_names("shop") == (
        "shop_http_request_duration_seconds_bucket", "shop_http_request_duration_seconds_sum",
        "shop_http_request_duration_seconds_count", "shop_http_request_duration_seconds_created")
    assert hist.sample_names(created=False)[-1] == "http_request_duration_seconds_count"
    assert catalogue.find_sample("shop_orders_created", "shop") is catalogue.lookup("orders_total")
    assert catalogue.find_sample("orders_total", "shop") is None  # prefixed under a namespace
    assert catalogue.find_sample("process_cpu_seconds_total", "shop") is not None  # never prefixed
    assert catalogue.find_sample("process_cpu_seconds_created") is None  # collector: no _created
    assert catalogue.lookup("process_cpu_seconds_total").all_labels(multiprocess=True) == ("pid",)
    info = MetricDef("build_info", "info", "Build.", ("version",))
    assert info.family_name("shop") == "shop_build"
    assert info.sample_names("shop") == ("shop_build_info",)


@given(st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True) | st.just(""))
def test_every_sample_name_leads_back_to_its_entry(namespace: str) -> None:
    cfg = ObservabilityConfig(namespace=namespace)
    for d in CATALOGUE:
        exposed = cfg.metric_name(d.name) if d.prefixed else d.name
        assert d.exposed_name(namespace) == exposed
        for sample in d.sample_names(namespace):
            assert catalogue.find_sample(sample, namespace) is d, (namespace, sample)


def test_entries_filters() -> None:
    assert catalogue.entries() == CATALOGUE
    assert catalogue.entries(source="library") == LIBRARY_METRICS
    assert {d.name for d in catalogue.entries(group="health")} == {
        "health_check_status", "health_check_duration_seconds"}
    assert {d.name for d in catalogue.entries(process="anomaly-serve")} == {
        "anomaly_score", "anomalies_total", "forecast", "forecast_lower", "forecast_upper"}
    assert catalogue.entries(process="anomaly-serve") == catalogue.entries(source="anomaly")


def test_is_enabled_follows_the_feature_and_the_master_switch() -> None:
    memory = catalogue.lookup("memory_usage_bytes")
    orders = catalogue.lookup("orders_total")
    assert is_enabled(memory, ObservabilityConfig())
    assert not is_enabled(memory, ObservabilityConfig(system_metrics=False))
    assert not is_enabled(memory, {"enabled": False})
    assert is_enabled(memory, {"process_metrics": False})
    assert is_enabled(orders, ObservabilityConfig(enabled=False))
    # a feature that is off by default reads as off in a mapping without it, as in the config
    defaults = ObservabilityConfig()
    for d in SERVICE:  # anomaly-serve families follow the rendering settings, not the config
        assert is_enabled(d, {}) == is_enabled(d, defaults), d.name
    vitals = catalogue.lookup("rum_web_vitals_seconds")
    assert not is_enabled(vitals, {})
    assert is_enabled(vitals, {"rum_enabled": True})
    assert not is_enabled(vitals, ObservabilityConfig(rum_enabled=True, enabled=False))


def test_reference_table_is_the_metrics_reference() -> None:
    assert metrics_reference() == catalogue.reference_table(LIBRARY_METRICS)
    shop = metrics_reference(ObservabilityConfig(namespace="shop"), CATALOGUE)
    assert "| `shop_orders_total` | counter | - | `status`† | `" not in shop  # no feature cell
    assert "| `shop_orders_total` | counter | - | `status`† | - |" in shop
    assert "| `process_threads` | gauge | - | `pid`‡ | `process_metrics` |" in shop
    page = (ROOT / "docs" / "reference" / "metrics.md").read_text(encoding="utf-8")
    for d in CATALOGUE:
        assert page.count(f"| `{d.name}` | {d.kind} | {d.unit or '-'} |") == 1, d.name
