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

    def metric(self, base: str) -> str:
        """The exposed name of catalogue entry ``base`` under this service's namespace.

        Raises:
            KeyError: ``base`` is not in the catalogue (the message names near names).
        """
        return catalogue.lookup(base).exposed_name(self.config.namespace)
