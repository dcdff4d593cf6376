"""The OpenTelemetry Collector configuration: tail sampling keeps errors and slow traces."""

from __future__ import annotations

from typing import Any

import yaml

from mestres_observability.monitoring import collector
from mestres_observability.monitoring.settings import RenderSettings


def _config(settings: RenderSettings | None = None) -> dict[str, Any]:
    text = collector.render(settings or RenderSettings())["otel-collector/config.yaml"]
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def test_every_component_of_the_pipeline_is_defined() -> None:
    cfg = _config()
    pipelines = cfg["service"]["pipelines"]
    assert set(pipelines) == {"traces"}
    traces = pipelines["traces"]
    for kind in ("receivers", "processors", "exporters"):
        for name in traces[kind]:
            assert name in cfg[kind], (kind, name)
    for ext in cfg["service"]["extensions"]:
        assert ext in cfg["extensions"]
    # memory limiter first, sampling before batching (a batch would split traces)
    assert traces["processors"] == ["memory_limiter", "tail_sampling", "batch"]


def test_otlp_in_and_otlp_out_to_jaeger() -> None:
    cfg = _config()
    protocols = cfg["receivers"]["otlp"]["protocols"]
    assert protocols["http"]["endpoint"].endswith(":4318")
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    (exporter,) = cfg["service"]["pipelines"]["traces"]["exporters"]
    assert exporter.split("/")[0] == "otlphttp"  # not the removed `jaeger` exporter
    assert cfg["exporters"][exporter]["endpoint"] == RenderSettings().otlp_endpoint
    assert not any(name.split("/")[0] == "jaeger" for name in cfg["exporters"])


def test_tail_sampling_keeps_errors_slow_traces_and_a_share() -> None:
    settings = RenderSettings(slo_latency_threshold=0.5, trace_sample_percent=5.0,
                              otlp_endpoint="http://traces:4318")
    cfg = _config(settings)
    policies = {p["type"]: p for p in cfg["processors"]["tail_sampling"]["policies"]}
    assert set(policies) == {"status_code", "latency", "probabilistic"}
    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    assert policies["latency"]["latency"]["threshold_ms"] == 500
    assert policies["probabilistic"]["probabilistic"]["sampling_percentage"] == 5.0
    assert cfg["exporters"]["otlphttp/jaeger"]["endpoint"] == "http://traces:4318"
    names = [p["name"] for p in cfg["processors"]["tail_sampling"]["policies"]]
    assert len(names) == len(set(names))


def test_health_check_extension_on_the_documented_port() -> None:
    cfg = _config()
    assert cfg["extensions"]["health_check"]["endpoint"].endswith(f":{collector.HEALTH_PORT}")
