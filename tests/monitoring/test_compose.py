"""The compose file: valid against the Compose Specification, pinned, healthy, no passwords."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mestres_observability.monitoring import collector, compose, grafana, logs
from mestres_observability.monitoring.settings import RenderSettings
from tests._support import REQUIRE_INTEGRATION, require_binary, require_module

SCHEMA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "schemas" / "compose-spec"
          / "compose-spec.json")
SECRET_WORDS = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|PASS$", re.I)
INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}"
                           r"|\$([A-Za-z_][A-Za-z0-9_]*)")


def _compose(settings: RenderSettings | None = None) -> dict[str, Any]:
    out = compose.render(settings or RenderSettings())
    data: dict[str, Any] = yaml.safe_load(out[compose.COMPOSE_FILE])
    return data


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [*_strings(k), *_strings(v)]]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _schema() -> dict[str, Any]:
    if not SCHEMA.is_file():
        reason = f"the Compose Specification schema is not at {SCHEMA} (shared/ beside the clone)"
        if REQUIRE_INTEGRATION:
            pytest.fail(f"MESTRES_TEST_REQUIRE_INTEGRATION=1 but {reason}")
        pytest.skip(reason)
    schema: dict[str, Any] = json.loads(SCHEMA.read_text(encoding="utf-8"))
    return schema


@pytest.mark.parametrize("settings", [
    RenderSettings(),
    RenderSettings(service="Shop API (EU)", log_path="/srv/logs/shop.json",
                   node_exporter_target="node:9200", slack_api_url_file="/run/secrets/slack"),
], ids=["default", "custom"])
def test_validates_against_the_compose_spec(settings: RenderSettings) -> None:
    jsonschema = require_module("jsonschema")
    schema = _schema()
    validator = jsonschema.Draft7Validator(schema)
    data = _compose(settings)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # the validator does reject a broken file (the schema is really applied)
    broken = {**data, "services": {"x": {"image": "a", "healthcheck": {"retries": []}}}}
    assert list(validator.iter_errors(broken))


def test_the_services_of_the_stack() -> None:
    services = _compose()["services"]
    assert set(services) == {
        "prometheus", "alertmanager", "grafana", "jaeger", "otel-collector", "elasticsearch",
        "elasticsearch-setup", "kibana", "kibana-setup", "fluent-bit", "node-exporter",
        "postgres-exporter", "redis-exporter"}
    assert "version" not in _compose()  # obsolete in the Compose Specification


def test_images_pinned() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo, f"{name}: {image} has no tag"
        assert tag not in ("latest", ""), (name, image)
        assert re.match(r"v?\d+\.\d+\.\d+", tag), (name, image)
    assert services["grafana"]["image"] == grafana.GRAFANA_IMAGE
    assert services["otel-collector"]["image"] == collector.COLLECTOR_IMAGE
    assert "contrib" in collector.COLLECTOR_IMAGE
    es_tag = services["elasticsearch"]["image"].rpartition(":")[2]
    assert services["kibana"]["image"].rpartition(":")[2] == es_tag == logs.ELASTIC_VERSION


def _minor(version: str) -> tuple[int, int]:
    m = re.search(r"(\d+)\.(\d+)\.\d+", version)
    assert m, version
    return int(m.group(1)), int(m.group(2))


@pytest.mark.integration
@pytest.mark.parametrize(("service", "binary"), [
    ("prometheus", "prometheus"),
    ("alertmanager", "prometheus-alertmanager"),
    ("node-exporter", "prometheus-node-exporter"),
    ("postgres-exporter", "prometheus-postgres-exporter"),
    ("redis-exporter", "prometheus-redis-exporter"),
])
def test_image_versions_are_the_ones_the_tests_run(service: str, binary: str) -> None:
    path = require_binary(binary)
    res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    text = res.stdout + res.stderr
    assert _minor(compose.IMAGES[service].rpartition(":")[2]) == _minor(text), text


def test_health_checks() -> None:
    services = _compose()["services"]
    one_shot = {"elasticsearch-setup", "kibana-setup"}
    for name, svc in services.items():
        if name in one_shot:
            assert svc["restart"] == "no"
            continue
        if name in compose.NO_HEALTHCHECK:
            assert "healthcheck" not in svc
            assert svc["x-no-healthcheck"] == compose.NO_HEALTHCHECK[name]
            continue
        check = svc["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert check["retries"] >= 3
    assert set(compose.NO_HEALTHCHECK) == {"otel-collector", "fluent-bit"}


def test_no_hard_coded_passwords() -> None:
    data = _compose()
    text = compose.render(RenderSettings())[compose.COMPOSE_FILE]
    assert "admin123" not in text  # the seed's Grafana password
    for name, svc in data["services"].items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), name
        targets = {s["target"] for s in svc.get("secrets", ())}
        for key, value in env.items():
            if key.endswith("_FILE"):
                assert value in targets, (name, key, value)  # a mounted secret
                continue
            if SECRET_WORDS.search(key):
                m = re.fullmatch(r"\$\{([A-Z_]+)(:\?[^}]*|:-)\}", str(value))
                assert m, f"{name}.{key} = {value!r}: not an ${{VAR:?}} reference"
    # secrets: declared, read from files beside the compose file, mounted where settings say
    declared = data["secrets"]
    assert all(v == {"file": f"./secrets/{k}"} for k, v in declared.items())
    for svc in data["services"].values():
        for s in svc.get("secrets", ()):
            assert s["source"] in declared
    am = {s["target"] for s in data["services"]["alertmanager"]["secrets"]}
    settings = RenderSettings()
    assert am == {settings.slack_api_url_file, settings.smtp_auth_password_file}


def test_interpolation_is_well_formed_and_documented() -> None:
    out = compose.render(RenderSettings())
    data = yaml.safe_load(out[compose.COMPOSE_FILE])
    env_example = out[compose.ENV_FILE]
    required: set[str] = set()
    for s in _strings(data):
        rest = INTERPOLATION.sub("", s)
        assert "$" not in rest, f"unescaped $ in {s!r} (write $$ for a literal $)"
        for m in INTERPOLATION.finditer(s):
            name, op = m.group(1), m.group(2)
            if name and op == ":?":
                required.add(name)
            elif name:
                assert name in compose.OPTIONAL_VARIABLES, name
            assert not m.group(4), f"bare ${m.group(4)} in {s!r}: use ${{...}}"
    assert required == set(compose.REQUIRED_VARIABLES)
    for name in required:
        assert f"\n{name}=\n" in env_example
    for name in compose.OPTIONAL_VARIABLES:
        assert f"# {name}=" in env_example


def test_variables_the_rendered_files_read_are_given_to_their_containers() -> None:
    settings = RenderSettings()
    services = _compose(settings)["services"]
    files = {**grafana.render(settings), **logs.render(settings)}
    readers = {
        "grafana": files["grafana/provisioning/datasources/datasources.yml"],
        "fluent-bit": files["fluent-bit/fluent-bit.conf"],
        "elasticsearch-setup": files["elasticsearch/setup.sh"],
        "kibana-setup": files["kibana/setup.sh"],
    }
    for service, text in readers.items():
        used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)(?::[?-][^}]*)?\}", text))
        used -= {"KIBANA_URL"} if service != "kibana-setup" else set()
        env = services[service].get("environment", {})
        assert used, service
        assert used <= set(env), (service, used - set(env))


def test_mounts_match_the_rendered_files() -> None:
    settings = RenderSettings()
    data = _compose(settings)
    rendered = {**grafana.render(settings), **logs.render(settings),
                **collector.render(settings)}
    dirs = {str(Path(p).parent) for p in rendered} | {
        str(q) for p in rendered for q in Path(p).parents}
    for name, svc in data["services"].items():
        for vol in svc.get("volumes", ()):
            source = vol.split(":", 1)[0]
            if source.startswith("./"):
                rel = source[2:]
                if rel in ("prometheus", "alertmanager"):  # rendered by the rules part
                    continue
                assert rel in rendered or rel in dirs, (name, vol)
            elif not source.startswith(("/", "$")):
                assert source in data["volumes"], (name, vol)
    prom = data["services"]["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom
    assert "--enable-feature=exemplar-storage" in prom
    am = data["services"]["alertmanager"]["command"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in am
    assert f"./grafana/dashboards:{grafana.DASHBOARDS_DIR}:ro" in \
        data["services"]["grafana"]["volumes"]
    log_dir = os.path.dirname(settings.log_path)
    assert any(v.endswith(f":{log_dir}:ro") for v in data["services"]["fluent-bit"]["volumes"])
    for svc in data["services"].values():
        for dep in svc.get("depends_on", {}):
            assert dep in data["services"]


def test_exporter_ports_follow_the_targets() -> None:
    services = _compose(RenderSettings(node_exporter_target="node-exporter:9200"))["services"]
    assert services["node-exporter"]["healthcheck"]["test"][-1] == "http://localhost:9200/metrics"


def test_project_name_is_valid() -> None:
    name = _compose(RenderSettings(service="Shop API (EU)"))["name"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name), name
