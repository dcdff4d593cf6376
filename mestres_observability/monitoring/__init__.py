"""Monitoring as code: everything a monitoring stack needs, rendered from the metric catalogue.

Alert and recording rules with their own ``promtool`` tests, Prometheus and
Alertmanager configurations, Grafana dashboards and provisioning, the
OpenTelemetry Collector, log shipping (Fluent Bit, an Elasticsearch index
template, Kibana saved objects), a compose file, and Slack, email and webhook
notifiers. Run it through the command line (``mestres-observability render``).

Every expression reads :mod:`mestres_observability.catalogue` and the
library's settings, so a renamed metric or a disabled feature cannot leave a
stale panel or alert behind. This package sits beside the library: it may
import the catalogue, the configuration and the signals, and nothing in the
library imports it.
"""
