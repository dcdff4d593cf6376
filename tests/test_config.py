"""ObservabilityConfig: precedence, validation, sources, redaction."""

from __future__ import annotations

import logging

import pytest

from mestres_observability import ConfigurationError, ObservabilityConfig, init_observability
from mestres_observability.config import settings_table


def test_defaults_are_pure_and_valid() -> None:
    cfg = ObservabilityConfig()
    assert cfg.service_name == "unknown_service"
    assert cfg.http_buckets[0] == 0.005
    assert cfg.effective_traces_exporter == "none"
    assert cfg.effective_excluded_paths == cfg.library_paths
    assert "/metrics" in cfg.library_paths


def test_precedence_keyword_over_mestres_over_otel_over_default() -> None:
    env = {"MESTRES_OBS_SERVICE_NAME": "from-mestres", "OTEL_SERVICE_NAME": "from-otel"}
    assert ObservabilityConfig.from_env(env).service_name == "from-mestres"
    assert ObservabilityConfig.from_env({"OTEL_SERVICE_NAME": "from-otel"}).service_name == "from-otel"
    cfg = ObservabilityConfig.from_env(env, service_name="kw")
    assert cfg.service_name == "kw"
    assert cfg.source_of("service_name") == "keyword"
    assert ObservabilityConfig.from_env(env).source_of("service_name") == "env MESTRES_OBS_SERVICE_NAME"
    assert ObservabilityConfig.from_env({}).source_of("namespace") == "default"


def test_otel_translations() -> None:
    cfg = ObservabilityConfig.from_env({
        "OTEL_SDK_DISABLED": "true",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1500",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s%3Dcret,x=1",
        "OTEL_RESOURCE_ATTRIBUTES": "team=coffee,region=br",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
    })
    assert cfg.tracing_enabled is False
    assert cfg.otlp_timeout == pytest.approx(1.5)
    assert cfg.otlp_headers == {"api-key": "s=cret", "x": "1"}
    assert cfg.resource_attributes == {"team": "coffee", "region": "br"}
    assert cfg.traces_exporter == "console"
    assert cfg.traces_sampler_arg == 0.25
    assert cfg.effective_traces_exporter == "none"  # tracing disabled wins


def test_exporter_guess_from_endpoint_and_explicit_wins() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert ObservabilityConfig.from_env(env).effective_traces_exporter == "otlp"
    env["OTEL_TRACES_EXPORTER"] = "none"
    assert ObservabilityConfig.from_env(env).effective_traces_exporter == "none"
    assert ObservabilityConfig.from_env(env, traces_exporter="console").effective_traces_exporter == "console"


def test_lists_and_maps_from_variables() -> None:
    cfg = ObservabilityConfig.from_env({
        "MESTRES_OBS_HTTP_BUCKETS": "0.1, 0.5,1",
        "MESTRES_OBS_REVENUE_STATUSES": "paid,shipped",
        "MESTRES_OBS_LABEL_LIMITS": "products_sold_total=5000",
        "MESTRES_OBS_ENABLED": "off",
    })
    assert cfg.http_buckets == (0.1, 0.5, 1.0)
    assert cfg.revenue_statuses == ("paid", "shipped")
    assert cfg.limit_for("products_sold_total") == 5000
    assert cfg.limit_for("orders_total") == cfg.max_label_values
    assert cfg.enabled is False


@pytest.mark.parametrize(
    ("env", "setting", "var"),
    [
        ({"MESTRES_OBS_HEALTH_DEADLINE": "-1"}, "health_deadline", "MESTRES_OBS_HEALTH_DEADLINE"),
        ({"MESTRES_OBS_HTTP_BUCKETS": "1,0.5"}, "http_buckets", "MESTRES_OBS_HTTP_BUCKETS"),
        ({"OTEL_TRACES_SAMPLER_ARG": "abc"}, "traces_sampler_arg", "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "traces_exporter", "OTEL_TRACES_EXPORTER"),
        ({"MESTRES_OBS_MAX_LABEL_VALUES": "0"}, "max_label_values", "MESTRES_OBS_MAX_LABEL_VALUES"),
        ({"MESTRES_OBS_ENABLED": "maybe"}, "enabled", "MESTRES_OBS_ENABLED"),
        ({"MESTRES_OBS_NAMESPACE": "9shop"}, "namespace", "MESTRES_OBS_NAMESPACE"),
        ({"MESTRES_OBS_LOG_LEVEL": "loud"}, "log_level", "MESTRES_OBS_LOG_LEVEL"),
    ],
)
def test_bad_values_name_setting_value_and_variable(env: dict[str, str], setting: str, var: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ObservabilityConfig.from_env(env)
    assert info.value.setting == setting
    assert setting in str(info.value)
    assert var in str(info.value)


def test_bad_keyword_fails_at_init_not_later(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="http_buckets"):
        init_observability(http_buckets=(1.0, 1.0), configure_logging=False)
    with pytest.raises(TypeError, match="did you mean 'namespace'"):
        init_observability(namespce="x")
    with pytest.raises(ConfigurationError, match="max_label_values"):
        ObservabilityConfig(max_label_values=True)  # type: ignore[arg-type]


def test_config_is_used_as_given_with_keywords_on_top(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESTRES_OBS_NAMESPACE", "fromenv")
    base = ObservabilityConfig(service_name="given", configure_logging=False)
    obs = init_observability(config=base, environment="staging")
    try:
        assert obs.config.namespace == ""  # environment not read
        assert obs.config.service_name == "given"
        assert obs.config.environment == "staging"
        assert obs.config.source_of("environment") == "keyword"
    finally:
        obs.shutdown()


def test_secrets_are_redacted_in_repr_explain_and_dict() -> None:
    cfg = ObservabilityConfig(otlp_headers={"api-key": "topsecret"}, metrics_auth="bearer:tok3n",
                              health_detailed_token="h3alth")
    for text in (repr(cfg), cfg.explain(), str(cfg.as_dict())):
        assert "topsecret" not in text
        assert "tok3n" not in text
        assert "h3alth" not in text
        assert "[REDACTED]" in text
    assert cfg.metrics_credentials == ("bearer", "tok3n")
    with pytest.raises(ConfigurationError) as info:
        ObservabilityConfig(metrics_auth="basic:nopassword-secret")
    assert "nopassword-secret" not in str(info.value)


def test_unknown_env_variable_warns_with_nearest(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MESTRES_OBS_NAMESPCE", "x")
    texts = ObservabilityConfig.unknown_env_settings()
    assert any("MESTRES_OBS_NAMESPACE" in t for t in texts)
    with caplog.at_level(logging.WARNING, logger="mestres_observability"):
        obs = init_observability(configure_logging=False)
    obs.shutdown()
    assert any("MESTRES_OBS_NAMESPCE" in r.getMessage() for r in caplog.records)


def test_settings_table_lists_every_setting() -> None:
    table = settings_table()
    for name in ObservabilityConfig.SETTINGS:
        assert f"`{name}`" in table
    assert "OTEL_SERVICE_NAME" in table
