"""What one rendering of the monitoring stack is for: the service, its targets, its SLOs."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import catalogue
from ..config import ObservabilityConfig

__all__ = ["RenderSettings"]


@dataclass(frozen=True)
class RenderSettings:
    """Inputs of ``mestres-observability render``; every renderer takes one of these.

    Attributes:
        config: the library settings of the service rendered for (namespace,
            enabled features, histogram bucket bounds), usually
            ``ObservabilityConfig.from_env()`` so the output matches the service.
        service: the service name (``service`` label of ``service_info``, alert labels).
        targets: ``host:port`` of each instance to scrape.
        environment: the deployment environment shown in notifications.
        slo_availability: availability objective, in percent of requests that are not 5xx.
        slo_latency_threshold: latency objective's threshold, in seconds: one
            of the ``http_buckets`` bounds.
        slo_latency_target: percent of requests faster than the threshold.
        anomaly_rules: also render the anomaly-detection rules.
        team: ``team`` label of every alert (routing in Alertmanager).
        grafana_url: base address of Grafana, for links in alerts and notifications.
        kibana_url: base address of Kibana, for links.
        runbook_url: base address of the runbook page; each alert links to its section.
        alertmanager_target: ``host:port`` of Alertmanager for Prometheus.
        node_exporter_target: ``host:port`` of the node exporter.
        postgres_exporter_target: ``host:port`` of the PostgreSQL exporter.
        redis_exporter_target: ``host:port`` of the Redis exporter.
        jaeger_url: Jaeger's query address (the Grafana trace datasource).
        otlp_endpoint: where the collector sends traces (Jaeger's OTLP port).
        log_path: the JSON log file the log shipper tails.
        scrape_interval: Prometheus' scrape and evaluation interval (``15s``).
        prometheus_url: Prometheus' address as Grafana reaches it (the metrics datasource).
        elasticsearch_url: Elasticsearch's address as the log shipper, Grafana and
            the setup job reach it.
        log_index_prefix: prefix of the daily log indices (``mestres-logs-2024.05.01``);
            the index template, the Kibana data view and Grafana's logs datasource use it.
        slow_request_seconds: requests slower than this are listed in Kibana's
            "slow requests" view.
        trace_sample_percent: share of the traces that are neither errors nor slow
            that the collector keeps (tail sampling), in percent.
        slack_webhook_file: where Alertmanager reads the Slack webhook address (a
            compose secret), so the address is never written into a config file.
        smtp_password_file: where Alertmanager reads the SMTP password (a compose secret).
    """

    config: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    service: str = "mestres-cafe-api"
    targets: tuple[str, ...] = ("127.0.0.1:8000",)
    environment: str = "production"
    slo_availability: float = 99.9
    slo_latency_threshold: float = 0.25
    slo_latency_target: float = 99.0
    anomaly_rules: bool = False
    team: str = "backend"
    grafana_url: str = "http://localhost:3000"
    kibana_url: str = "http://localhost:5601"
    runbook_url: str = (
        "https://github.com/mestres-cafe/mestres-observability/blob/main/docs/runbook.md")
    alertmanager_target: str = "alertmanager:9093"
    node_exporter_target: str = "node-exporter:9100"
    postgres_exporter_target: str = "postgres-exporter:9187"
    redis_exporter_target: str = "redis-exporter:9121"
    jaeger_url: str = "http://jaeger:16686"
    otlp_endpoint: str = "http://jaeger:4318"
    log_path: str = "/var/log/mestres/app.log"
    scrape_interval: str = "15s"
    prometheus_url: str = "http://prometheus:9090"
    elasticsearch_url: str = "http://elasticsearch:9200"
    log_index_prefix: str = "mestres-logs"
    slow_request_seconds: float = 2.0
    trace_sample_percent: float = 10.0
    slack_webhook_file: str = "/run/secrets/slack_webhook_url"
    smtp_password_file: str = "/run/secrets/smtp_password"

    def metric(self, base: str) -> str:
        """The exposed name of catalogue entry ``base`` under this service's namespace.

        Raises:
            KeyError: ``base`` is not in the catalogue (the message names near names).
        """
        return catalogue.lookup(base).exposed_name(self.config.namespace)
