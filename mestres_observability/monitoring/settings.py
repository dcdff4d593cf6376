"""What one rendering of the monitoring stack is for: the service, its targets, its SLOs."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

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
        pushgateway_target: ``host:port`` of the Pushgateway batch jobs push to
            (the library's ``pushgateway_url``); set: a ``pushgateway`` scrape job
            with ``honor_labels: true`` (so ``job`` and ``instance`` stay the pushed
            job's) and the PushgatewayDown alert. ``None``: no such job.
        job_max_age_seconds: JobNotSucceeded fires for a batch job whose last
            success is older than this (default 26 h: a daily job plus a margin).
        job_max_ages: ``(job name, seconds)`` pairs overriding
            :attr:`job_max_age_seconds` for single jobs (``(("hourly_sync", 5400),)``).
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
        error_ratio_threshold: HighErrorRate fires above this share of 5xx responses.
        latency_p99_threshold: HighLatency fires when a route's p99 is above this (seconds).
        min_page_request_rate: the low-traffic guard: requests per second (over the
            alert's long window) below which an error-ratio or burn-rate alert does
            not page (a ticket still opens when the budget burns over days).
        min_orders_per_hour: LowOrderVolume fires below this many orders in an hour.
        inventory_low_threshold: InventoryLow fires below this many units in stock.
        memory_threshold_percent: HighMemoryUsage fires above this ``memory_usage_percent``.
        disk_threshold_percent: HighDiskUsage fires above this ``disk_usage_percent``.
        db_connections_threshold: DatabaseConnectionsHigh fires above this share of
            PostgreSQL's ``max_connections`` in use.
        alert_teams: ``(rule group, team)`` pairs overriding :attr:`team` for the
            alerts of one group (``(("business", "sales"),)``); groups: ``http``,
            ``business``, ``infrastructure``, ``health``, ``slo``, ``self``, ``rum``,
            ``jobs``.
        alert_for_override: test-only: replaces the ``for:`` of every alert
            (``"0s"``), so an end-to-end run sees alerts fire within seconds.
        alert_group_wait: Alertmanager's ``group_wait`` (first notification of a group).
        alert_group_interval: Alertmanager's ``group_interval``.
        alert_repeat_interval: Alertmanager's ``repeat_interval``.
        slack_api_url_file: the file Alertmanager reads the Slack webhook URL from
            (the URL itself is never written into the output).
        slack_channel: the Slack channel of pages.
        email_to: the address tickets are mailed to.
        email_from: the sender of Alertmanager's mail.
        smtp_smarthost: ``host:port`` of the SMTP server (STARTTLS required).
        smtp_auth_username: SMTP user; empty: no SMTP authentication.
        smtp_auth_password_file: the file Alertmanager reads the SMTP password from.
        metrics_credentials_file: when the service protects ``/metrics``
            (``metrics_auth``), the file Prometheus reads the token or password from.
        incidents_url: the address of ``mestres-observability incidents serve``
            (``http://incidents:9095``, or with its ``/alertmanager`` path); set:
            Alertmanager also sends every alert, and its resolution, there.
            ``None``: no such receiver.
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
    pushgateway_target: str | None = None
    job_max_age_seconds: float = 26 * 3600.0
    job_max_ages: tuple[tuple[str, float], ...] = ()
    jaeger_url: str = "http://jaeger:16686"
    otlp_endpoint: str = "http://jaeger:4318"
    log_path: str = "/var/log/mestres/app.log"
    scrape_interval: str = "15s"
    prometheus_url: str = "http://prometheus:9090"
    elasticsearch_url: str = "http://elasticsearch:9200"
    log_index_prefix: str = "mestres-logs"
    slow_request_seconds: float = 2.0
    trace_sample_percent: float = 10.0
    error_ratio_threshold: float = 0.05
    latency_p99_threshold: float = 1.0
    min_page_request_rate: float = 0.1
    min_orders_per_hour: float = 1.0
    inventory_low_threshold: float = 10.0
    memory_threshold_percent: float = 85.0
    disk_threshold_percent: float = 90.0
    db_connections_threshold: float = 0.8
    alert_teams: tuple[tuple[str, str], ...] = ()
    alert_for_override: str | None = None
    alert_group_wait: str = "30s"
    alert_group_interval: str = "5m"
    alert_repeat_interval: str = "4h"
    slack_api_url_file: str = "/etc/alertmanager/secrets/slack-webhook-url"
    slack_channel: str = "#alerts"
    email_to: str = "oncall@example.com"
    email_from: str = "alertmanager@example.com"
    smtp_smarthost: str = "smtp.example.com:587"
    smtp_auth_username: str = ""
    smtp_auth_password_file: str = "/etc/alertmanager/secrets/smtp-password"
    metrics_credentials_file: str = "/etc/prometheus/secrets/metrics-credentials"
    incidents_url: str | None = None

    def __post_init__(self) -> None:
        """Refuse job age limits that cannot work (not positive, a job named twice)
        and an incidents address that is not an http(s) URL.

        Raises:
            ValueError: a limit that is not a positive number, or an empty or
                repeated job name in :attr:`job_max_ages`; an :attr:`incidents_url`
                without ``http://`` or ``https://`` and a host.
        """
        if self.incidents_url is not None:
            parts = urlsplit(self.incidents_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"incidents_url: {self.incidents_url!r} is not an http(s) URL "
                                 "(e.g. http://incidents:9095)")
        limits = [("job_max_age_seconds", self.job_max_age_seconds)]
        seen: set[str] = set()
        for name, seconds in self.job_max_ages:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"job_max_ages: {name!r} is not a job name")
            if name in seen:
                raise ValueError(f"job_max_ages: job {name!r} is given twice")
            seen.add(name)
            limits.append((f"job_max_ages[{name!r}]", seconds))
        for what, seconds in limits:
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
                    or not seconds > 0 or seconds == float("inf"):
                raise ValueError(f"{what}: {seconds!r} is not a positive number of seconds")

    def job_max_age(self, job: str) -> float:
        """The age limit of batch job ``job``'s last success, in seconds."""
        return dict(self.job_max_ages).get(job, self.job_max_age_seconds)

    def metric(self, base: str) -> str:
        """The exposed name of catalogue entry ``base`` under this service's namespace.

        Raises:
            KeyError: ``base`` is not in the catalogue (the message names near names).
        """
        return catalogue.lookup(base).exposed_name(self.config.namespace)
