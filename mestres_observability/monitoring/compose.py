"""``docker-compose.monitoring.yml``: the whole monitoring stack in one compose project.

:func:`render` writes the compose file and ``monitoring.env.example`` (the
variables to set in ``.env``). The services read the other rendered files
by relative path, so the output directory is the compose project:

========================  ==========================================================
service                   what it runs
========================  ==========================================================
prometheus                scrapes the service, the exporters and itself; evaluates
                          the rules; keeps exemplars (``exemplar-storage``)
alertmanager              routes alerts to Slack and email (secrets files)
grafana                   the provisioned datasources and dashboards
jaeger                    trace storage and UI; takes OTLP from the collector
otel-collector            OTLP in from the services, tail sampling, OTLP to Jaeger
elasticsearch             the JSON logs (security on: passwords from ``.env``)
elasticsearch-setup       one-shot: users, roles and the index template
kibana                    log search and the saved views
kibana-setup              one-shot: imports the saved objects
fluent-bit                tails the service's log file into Elasticsearch
node-exporter             host metrics
postgres-exporter         PostgreSQL metrics (password from a secrets file)
redis-exporter            Redis metrics
========================  ==========================================================

Every image is pinned (:data:`IMAGES`). The Prometheus, Alertmanager and
exporter versions are the ones the test-suite runs (Debian 12's packages), so
the rendered files are proven against the same versions the compose file
starts. No password is written: each is either a ``${VAR:?}`` reference to
the project's ``.env`` or a compose secret read from ``secrets/<name>``.
Services get a health check, except those whose images carry no shell or
HTTP client (:data:`NO_HEALTHCHECK` says why, in an ``x-no-healthcheck``
field).
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

import yaml

from . import collector, grafana, logs
from .settings import RenderSettings

__all__ = [
    "COMPOSE_FILE",
    "ENV_FILE",
    "IMAGES",
    "NO_HEALTHCHECK",
    "OPTIONAL_VARIABLES",
    "REQUIRED_VARIABLES",
    "compose",
    "render",
    "secret_files",
]

COMPOSE_FILE = "docker-compose.monitoring.yml"
ENV_FILE = "monitoring.env.example"

#: Pinned images, by service.
IMAGES: dict[str, str] = {
    "prometheus": "prom/prometheus:v2.42.0",
    "alertmanager": "prom/alertmanager:v0.25.0",
    "grafana": grafana.GRAFANA_IMAGE,
    "jaeger": "jaegertracing/jaeger:2.5.0",
    "otel-collector": collector.COLLECTOR_IMAGE,
    "elasticsearch": f"docker.elastic.co/elasticsearch/elasticsearch:{logs.ELASTIC_VERSION}",
    "kibana": f"docker.elastic.co/kibana/kibana:{logs.ELASTIC_VERSION}",
    "fluent-bit": logs.FLUENT_BIT_IMAGE,
    "node-exporter": "prom/node-exporter:v1.5.0",
    "postgres-exporter": "quay.io/prometheuscommunity/postgres-exporter:v0.11.1",
    "redis-exporter": "oliver006/redis_exporter:v1.45.0-alpine",
}

#: Services without a health check, and why.
NO_HEALTHCHECK: dict[str, str] = {
    "otel-collector": "the image is built FROM scratch (no shell, no HTTP client); probe "
                      f"its health_check extension on port {collector.HEALTH_PORT} from outside",
    "fluent-bit": "the image is distroless (no shell, no HTTP client); probe "
                  "http://fluent-bit:2020/api/v1/health from outside",
}

#: Variables the project's ``.env`` must set (the compose file refuses to start without).
REQUIRED_VARIABLES: dict[str, str] = {
    "ELASTIC_PASSWORD": "password of the elastic superuser (setup jobs, health check)",
    "KIBANA_SYSTEM_PASSWORD": "password Kibana uses to reach Elasticsearch",
    "LOGS_WRITER_PASSWORD": "password of logs_writer (Fluent Bit)",
    "LOGS_READER_PASSWORD": "password of logs_reader (Grafana's logs datasource)",
}
#: Optional variables and their defaults.
OPTIONAL_VARIABLES: dict[str, str] = {
    "GRAFANA_ADMIN_USER": "admin",
    "MESTRES_LOG_DIR": "/var/log/mestres",
    "POSTGRES_EXPORTER_URI": "host.docker.internal:5432/postgres?sslmode=disable",
    "POSTGRES_EXPORTER_USER": "postgres_exporter",
    "REDIS_ADDR": "redis://host.docker.internal:6379",
    "REDIS_PASSWORD": "",
}


def secret_files(settings: RenderSettings) -> dict[str, str]:
    """Compose secrets: name -> path inside the containers that read it.

    Each is read from ``secrets/<name>`` beside the compose file; write the
    Slack webhook address, the SMTP password, Grafana's admin password and the
    PostgreSQL exporter's password there, one per file.
    """
    return {
        posixpath.basename(settings.slack_api_url_file): settings.slack_api_url_file,
        posixpath.basename(settings.smtp_auth_password_file): settings.smtp_auth_password_file,
        "grafana_admin_password": "/run/secrets/grafana_admin_password",
        "postgres_exporter_password": "/run/secrets/postgres_exporter_password",
    }


def _required(name: str) -> str:
    return f"${{{name}:?set {name} in .env (see {ENV_FILE})}}"


def _optional(name: str) -> str:
    return f"${{{name}:-{OPTIONAL_VARIABLES[name]}}}"


def _http_check(url: str, interval: str = "15s", start: str = "20s") -> dict[str, Any]:
    return {"test": ["CMD", "wget", "-q", "--spider", url], "interval": interval,
            "timeout": "5s", "retries": 5, "start_period": start}


def _port(target: str) -> str:
    return target.rsplit(":", 1)[-1]


def _secret(name: str, target: str) -> dict[str, Any]:
    return {"source": name, "target": target}


def compose(settings: RenderSettings) -> dict[str, Any]:
    """The compose project as a mapping (what :func:`render` writes as YAML)."""
    secrets = secret_files(settings)
    slack, smtp = (posixpath.basename(settings.slack_api_url_file),
                   posixpath.basename(settings.smtp_auth_password_file))
    log_dir = posixpath.dirname(settings.log_path) or "/var/log/mestres"
    project = re.sub(r"[^a-z0-9_-]+", "-", settings.service.lower()).strip("-_") or "service"
    es_env = {name: _required(name) for name in REQUIRED_VARIABLES}
    host_gateway = ["host.docker.internal:host-gateway"]
    services: dict[str, Any] = {
        "prometheus": {
            "image": IMAGES["prometheus"],
            "command": [
                "--config.file=/etc/prometheus/prometheus.yml",
                "--storage.tsdb.path=/prometheus",
                "--storage.tsdb.retention.time=15d",
                "--web.enable-lifecycle",
                "--enable-feature=exemplar-storage",
            ],
            "volumes": ["./prometheus:/etc/prometheus:ro", "prometheus_data:/prometheus"],
            "ports": ["9090:9090"],
            "extra_hosts": list(host_gateway),
            "healthcheck": _http_check("http://localhost:9090/-/ready"),
            "restart": "unless-stopped",
        },
        "alertmanager": {
            "image": IMAGES["alertmanager"],
            "command": ["--config.file=/etc/alertmanager/alertmanager.yml",
                        "--storage.path=/alertmanager"],
            "volumes": ["./alertmanager:/etc/alertmanager:ro", "alertmanager_data:/alertmanager"],
            "ports": ["9093:9093"],
            "secrets": [_secret(slack, secrets[slack]), _secret(smtp, secrets[smtp])],
            "healthcheck": _http_check("http://localhost:9093/-/ready"),
            "restart": "unless-stopped",
        },
        "grafana": {
            "image": IMAGES["grafana"],
            "environment": {
                "GF_SECURITY_ADMIN_USER": _optional("GRAFANA_ADMIN_USER"),
                "GF_SECURITY_ADMIN_PASSWORD__FILE": secrets["grafana_admin_password"],
                "GF_USERS_ALLOW_SIGN_UP": "false",
                "GF_AUTH_ANONYMOUS_ENABLED": "false",
                "GF_SERVER_ROOT_URL": settings.grafana_url,
                # read by the logs datasource's provisioning (${LOGS_READER_PASSWORD})
                "LOGS_READER_PASSWORD": _required("LOGS_READER_PASSWORD"),
            },
            "volumes": [
                "./grafana/provisioning:/etc/grafana/provisioning:ro",
                f"./grafana/dashboards:{grafana.DASHBOARDS_DIR}:ro",
                "grafana_data:/var/lib/grafana",
            ],
            "secrets": [_secret("grafana_admin_password", secrets["grafana_admin_password"])],
            "ports": ["3000:3000"],
            "depends_on": {"prometheus": {"condition": "service_healthy"},
                           "jaeger": {"condition": "service_healthy"}},
            "healthcheck": _http_check("http://localhost:3000/api/health"),
            "restart": "unless-stopped",
        },
        "jaeger": {
            "image": IMAGES["jaeger"],
            "environment": {"JAEGER_LISTEN_HOST": "0.0.0.0"},
            "ports": ["16686:16686"],
            "healthcheck": _http_check("http://localhost:13133/status"),
            "restart": "unless-stopped",
        },
        "otel-collector": {
            "image": IMAGES["otel-collector"],
            "command": ["--config=/etc/otelcol-contrib/config.yaml"],
            "volumes": ["./otel-collector/config.yaml:/etc/otelcol-contrib/config.yaml:ro"],
            "ports": ["4317:4317", "4318:4318"],
            "depends_on": {"jaeger": {"condition": "service_healthy"}},
            "x-no-healthcheck": NO_HEALTHCHECK["otel-collector"],
            "restart": "unless-stopped",
        },
        "elasticsearch": {
            "image": IMAGES["elasticsearch"],
            "environment": {
                "discovery.type": "single-node",
                "xpack.security.enabled": "true",
                # plain HTTP inside the compose network; see the docs to turn TLS on
                "xpack.security.http.ssl.enabled": "false",
                "xpack.security.transport.ssl.enabled": "false",
                "ELASTIC_PASSWORD": _required("ELASTIC_PASSWORD"),
                "ES_JAVA_OPTS": "-Xms1g -Xmx1g",
            },
            "volumes": ["elasticsearch_data:/usr/share/elasticsearch/data"],
            "ports": ["127.0.0.1:9200:9200"],
            "ulimits": {"nofile": {"soft": 65536, "hard": 65536}},
            "healthcheck": {
                "test": ["CMD-SHELL",
                         'curl -fsS -u "elastic:$${ELASTIC_PASSWORD}" '
                         '"http://localhost:9200/_cluster/health?wait_for_status=yellow'
                         '&timeout=1s" >/dev/null'],
                "interval": "15s", "timeout": "10s", "retries": 10, "start_period": "60s"},
            "restart": "unless-stopped",
        },
        "elasticsearch-setup": {
            "image": IMAGES["elasticsearch"],
            "command": ["bash", "/setup/setup.sh"],
            "volumes": ["./elasticsearch:/setup:ro"],
            "environment": es_env,
            "depends_on": {"elasticsearch": {"condition": "service_healthy"}},
            "restart": "no",
        },
        "kibana": {
            "image": IMAGES["kibana"],
            "environment": {
                "ELASTICSEARCH_HOSTS": settings.elasticsearch_url,
                "ELASTICSEARCH_USERNAME": "kibana_system",
                "ELASTICSEARCH_PASSWORD": _required("KIBANA_SYSTEM_PASSWORD"),
                "SERVER_PUBLICBASEURL": settings.kibana_url,
            },
            "ports": ["5601:5601"],
            "depends_on": {"elasticsearch-setup": {
                "condition": "service_completed_successfully"}},
            "healthcheck": {
                "test": ["CMD-SHELL",
                         "curl -s -o /dev/null -w '%{http_code}' http://localhost:5601/api/status"
                         " | grep -qE '^(200|401)$$'"],
                "interval": "15s", "timeout": "10s", "retries": 20, "start_period": "60s"},
            "restart": "unless-stopped",
        },
        "kibana-setup": {
            "image": IMAGES["elasticsearch"],
            "command": ["bash", "/setup/setup.sh"],
            "volumes": ["./kibana:/setup:ro"],
            "environment": {"ELASTIC_PASSWORD": _required("ELASTIC_PASSWORD"),
                            "KIBANA_URL": "http://kibana:5601"},
            "depends_on": {"kibana": {"condition": "service_healthy"}},
            "restart": "no",
        },
        "fluent-bit": {
            "image": IMAGES["fluent-bit"],
            "command": ["/fluent-bit/bin/fluent-bit", "-c", "/fluent-bit/etc/fluent-bit.conf"],
            "volumes": [
                "./fluent-bit:/fluent-bit/etc:ro",
                f"{_optional('MESTRES_LOG_DIR')}:{log_dir}:ro",
                "fluent_bit_state:/fluent-bit/state",
            ],
            "environment": {"LOGS_WRITER_PASSWORD": _required("LOGS_WRITER_PASSWORD")},
            "depends_on": {"elasticsearch-setup": {
                "condition": "service_completed_successfully"}},
            "x-no-healthcheck": NO_HEALTHCHECK["fluent-bit"],
            "restart": "unless-stopped",
        },
        "node-exporter": {
            "image": IMAGES["node-exporter"],
            "command": [
                "--path.procfs=/host/proc", "--path.sysfs=/host/sys", "--path.rootfs=/rootfs",
                "--collector.filesystem.mount-points-exclude=^/(sys|proc|dev|host|etc)($$|/)",
            ],
            "volumes": ["/proc:/host/proc:ro", "/sys:/host/sys:ro", "/:/rootfs:ro"],
            "pid": "host",
            "healthcheck": _http_check(
                f"http://localhost:{_port(settings.node_exporter_target)}/metrics"),
            "restart": "unless-stopped",
        },
        "postgres-exporter": {
            "image": IMAGES["postgres-exporter"],
            "environment": {
                "DATA_SOURCE_URI": _optional("POSTGRES_EXPORTER_URI"),
                "DATA_SOURCE_USER": _optional("POSTGRES_EXPORTER_USER"),
                "DATA_SOURCE_PASS_FILE": secrets["postgres_exporter_password"],
            },
            "secrets": [_secret("postgres_exporter_password",
                                secrets["postgres_exporter_password"])],
            "extra_hosts": list(host_gateway),
            "healthcheck": _http_check(
                f"http://localhost:{_port(settings.postgres_exporter_target)}/metrics"),
            "restart": "unless-stopped",
        },
        "redis-exporter": {
            "image": IMAGES["redis-exporter"],
            "environment": {"REDIS_ADDR": _optional("REDIS_ADDR"),
                            "REDIS_PASSWORD": _optional("REDIS_PASSWORD")},
            "extra_hosts": list(host_gateway),
            "healthcheck": _http_check(
                f"http://localhost:{_port(settings.redis_exporter_target)}/metrics"),
            "restart": "unless-stopped",
        },
    }
    return {
        "name": f"{project}-monitoring",
        "services": services,
        "volumes": {name: {} for name in ("prometheus_data", "alertmanager_data", "grafana_data",
                                          "elasticsearch_data", "fluent_bit_state")},
        "secrets": {name: {"file": f"./secrets/{name}"} for name in secrets},
    }


def _env_example() -> str:
    lines = ["# Copy to .env beside docker-compose.monitoring.yml and fill in.",
             "# Required (the compose file refuses to start without them):"]
    for name, what in REQUIRED_VARIABLES.items():
        lines += [f"# {what}", f"{name}="]
    lines.append("# Optional (defaults shown):")
    lines += [f"# {name}={default}" for name, default in OPTIONAL_VARIABLES.items()]
    return "\n".join(lines) + "\n"


def render(settings: RenderSettings) -> dict[str, str]:
    """The compose file and the ``.env`` template, keyed by path relative to the output."""
    names = ", ".join(f"secrets/{n}" for n in secret_files(settings))
    head = (
        "# Generated by mestres-observability render: edit the settings, not this file.\n"
        f"# Before `docker compose -f {COMPOSE_FILE} up -d`: copy {ENV_FILE} to .env\n"
        "# and fill it in, and write one secret per file:\n"
        f"#   {names}.\n")
    body = yaml.safe_dump(compose(settings), sort_keys=False, width=100)
    return {COMPOSE_FILE: head + body, ENV_FILE: _env_example()}
