"""Python runtime metrics (issue 16): prometheus_client's ``python_gc_*`` and ``python_info``
on each instance's registry, and each worker's own GC counts in multiprocess mode."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from mestres_observability import catalogue, runtime
from mestres_observability.testing import fresh_observability
from tests.test_multiprocess import _private_dir, _run

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
GC_NAMES = ("python_gc_objects_collected", "python_gc_objects_uncollectable",
            "python_gc_collections")


def _families(body: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(body)}  # type: ignore[no-untyped-call]


def _theirs() -> dict[str, Any]:
    """What prometheus_client's own collectors produce, on a registry of their own."""
    registry = CollectorRegistry()
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    return {m.name: m for m in registry.collect()}


def test_the_families_are_prometheus_clients_own() -> None:
    theirs = _theirs()
    with fresh_observability() as obs:
        ours = {m.name: m for m in obs.registry.collect() if m.name in theirs}
    assert set(ours) == set(theirs) == {*GC_NAMES, "python_info"}
    for name, family in theirs.items():
        assert ours[name].type == family.type
        assert ours[name].documentation == family.documentation
        assert [s.labels for s in ours[name].samples] == [s.labels for s in family.samples]
    info = ours["python_info"].samples[0]
    assert info.labels["implementation"] == "CPython"
    assert info.value == 1.0
    # and the catalogue says the same
    for d in runtime.RUNTIME_METRICS:
        assert theirs[d.family_name()].documentation == d.doc
        assert set(theirs[d.family_name()].samples[0].labels) == set(d.labels)


def test_counts_move_with_the_collector() -> None:
    import gc

    def collections(obs: Any) -> float:
        fam = _families(obs.render_metrics(accept=OPENMETRICS).body.decode())
        return next(s.value for s in fam["python_gc_collections"].samples
                    if s.labels["generation"] == "2")

    with fresh_observability() as obs:
        before = collections(obs)
        gc.collect()
        gc.collect()
        assert collections(obs) == before + 2


def test_the_setting_turns_them_off() -> None:
    with fresh_observability(runtime_metrics=False) as obs:
        names = {m.name for m in obs.registry.collect()}
    assert not names & {*GC_NAMES, "python_info"}
    with fresh_observability(enabled=False) as obs:
        assert not {m.name for m in obs.registry.collect()} & {*GC_NAMES, "python_info"}


def test_with_the_global_registry_they_are_exposed_once() -> None:
    with fresh_observability(expose_global_registry=True) as obs:
        body = obs.render_metrics(accept=OPENMETRICS).body.decode()
        own = {m.name for m in obs.registry.collect()}
    assert not own & {*GC_NAMES, "python_info"}  # left to prometheus_client's global registry
    for name in (*GC_NAMES, "python_info"):
        assert body.count(f"# TYPE {name} ") == 1, name


def test_from_files_gives_the_counter_back() -> None:
    gauge = GaugeMetricFamily("python_gc_collections_total", "Multiprocess metric",
                              labels=["generation", "pid"])
    gauge.add_metric(["0", "41"], 7.0)
    counter = runtime.from_files(gauge)
    assert counter.type == "counter"
    assert counter.name == "python_gc_collections"
    assert counter.documentation == catalogue.lookup("python_gc_collections_total").doc
    assert [(s.name, s.labels, s.value) for s in counter.samples] == [
        ("python_gc_collections_total", {"generation": "0", "pid": "41"}, 7.0)]
    other = GaugeMetricFamily("inventory_level", "x", value=1.0)
    assert runtime.from_files(other) is other


_FORKED = """
import gc, json, os, time
from mestres_observability import ObservabilityConfig, init_observability

OM = "application/openmetrics-text; version=1.0.0"
obs = init_observability(config=ObservabilityConfig(configure_logging=False,
                                                    runtime_metrics_interval=0.05))

def scrape():
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    body = obs.render_metrics(accept=OM).body.decode()
    out = {}
    for f in text_string_to_metric_families(body):
        if f.name.startswith("python_"):
            out[f.name] = {"type": f.type,
                           "samples": [[s.name, s.labels, s.value] for s in f.samples]}
    return out

to_parent, from_child = os.pipe()
to_child, from_parent = os.pipe()
child = os.fork()
if child == 0:  # a worker: a few full collections, then it waits to be told to exit
    for _ in range(5):
        gc.collect()
    os.write(from_child, str(gc.get_stats()[2]["collections"]).encode())
    os.read(to_child, 1)
    os._exit(0)
child_count = float(os.read(to_parent, 64).decode())
deadline = time.monotonic() + 10
while True:  # the child's writer thread writes its counts within the interval
    live = scrape()
    got = [s for s in live["python_gc_collections"]["samples"]
           if s[1] == {"generation": "2", "pid": str(child)}]
    if got and got[0][2] == child_count or time.monotonic() > deadline:
        break
    time.sleep(0.02)
os.write(from_parent, b"x")
os.waitpid(child, 0)
gone = scrape()
print(json.dumps({"parent": os.getpid(), "child": child, "child_count": child_count,
                  "parent_count": gc.get_stats()[2]["collections"], "live": live,
                  "gone": gone}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_each_worker_writes_its_own_counts_in_multiprocess_mode(tmp_path: Path) -> None:
    out = json.loads(_run(_FORKED, _private_dir(tmp_path)).stdout.strip().splitlines()[-1])
    parent, child = str(out["parent"]), str(out["child"])
    live, gone = out["live"], out["gone"]
    assert set(live) == {*GC_NAMES, "python_info"}
    for name in GC_NAMES:
        assert live[name]["type"] == "counter"
        samples = live[name]["samples"]
        assert {s[1]["pid"] for s in samples} == {parent, child}, name
        assert {s[1]["generation"] for s in samples} == {"0", "1", "2"}
        assert all(s[0] == name + "_total" for s in samples)
    by_pid = {s[1]["pid"]: s[2] for s in live["python_gc_collections"]["samples"]
              if s[1]["generation"] == "2"}
    # the child's own count (its five full collections), not the scraping parent's
    assert by_pid[child] == out["child_count"]
    assert by_pid[parent] <= out["parent_count"] < out["child_count"]
    # python_info: the serving process's, without pid
    assert next(s[1] for s in live["python_info"]["samples"]).keys() == {
        "implementation", "major", "minor", "patchlevel", "version"}
    # the exited worker's series went with it
    assert {s[1]["pid"] for s in gone["python_gc_collections"]["samples"]} == {parent}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_multiprocess_mode_without_the_setting_writes_nothing(tmp_path: Path) -> None:
    mpdir = _private_dir(tmp_path)
    code = """
    import json
    from mestres_observability import ObservabilityConfig, init_observability
    obs = init_observability(config=ObservabilityConfig(configure_logging=False,
                                                        runtime_metrics=False))
    print(json.dumps(obs.render_metrics().body.decode()))
    """
    body = json.loads(_run(code, mpdir).stdout.strip().splitlines()[-1])
    assert "python_gc" not in body
    assert "python_info" not in body
    assert not list(mpdir.glob("gauge_liveall_*.db"))


def test_a_registry_that_already_has_them_keeps_its_own() -> None:
    from mestres_observability._fault import FaultReporter
    from mestres_observability.config import ObservabilityConfig

    registry = CollectorRegistry(auto_describe=True)  # as the instances' and the global one
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    faults = FaultReporter()
    runtime.register_runtime_collectors(registry, ObservabilityConfig(), faults)  # no error
    assert sorted(m.name for m in registry.collect()) == sorted((*GC_NAMES, "python_info"))
