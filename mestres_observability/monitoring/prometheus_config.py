"""``prometheus/prometheus.yml``: scrape the service, its exporters and Alertmanager; load the rules.

* The service's job is named after the service (``job="mestres-cafe-api"``:
  every rule selects its series with it) and scrapes each ``--target`` at the
  service's ``metrics_path``; when the service protects ``/metrics``
  (``metrics_auth``), the token or password is read from
  ``metrics_credentials_file``, never written here.
* The node, PostgreSQL and Redis exporters and Alertmanager have a job each
  (the seed's names and ports).
* With ``pushgateway_target``, the Pushgateway has a job too, with
  ``honor_labels: true``: what batch jobs pushed keeps its own ``job`` (the
  batch job's name) and ``instance`` (its grouping key) instead of the
  Pushgateway's.
* Rule files are listed one by one, relative to this file: a file left over
  from an earlier rendering (RUM switched off) is not loaded.
"""

from __future__ import annotations

from typing import Any

from . import _yaml
from .exporters import EXPORTERS, PUSHGATEWAY_JOB
from .rules import build, rule_file_paths
from .settings import RenderSettings

__all__ = ["config", "render"]


def _service_job(settings: RenderSettings) -> dict[str, Any]:
    cfg = settings.config
    job: dict[str, Any] = {
        "job_name": settings.service,
        "metrics_path": cfg.metrics_path or "/metrics",
        "static_configs": [{"targets": list(settings.targets)}],
    }
    credentials = cfg.metrics_credentials
    if credentials is not None:
        scheme, value = credentials
        if scheme == "bearer":
            job["authorization"] = {"type": "Bearer",
                                    "credentials_file": settings.metrics_credentials_file}
        else:
            job["basic_auth"] = {"username": value.split(":", 1)[0],
                                 "password_file": settings.metrics_credentials_file}
    return job


def config(settings: RenderSettings) -> dict[str, Any]:
    """The Prometheus configuration as a mapping."""
    interval = settings.scrape_interval
    scrape = [_service_job(settings)]
    for exporter in EXPORTERS:
        scrape.append({"job_name": exporter.job, "static_configs": [
            {"targets": [getattr(settings, exporter.target_setting)]}]})
    if settings.pushgateway_target:
        scrape.append({"job_name": PUSHGATEWAY_JOB, "honor_labels": True,
                       "static_configs": [{"targets": [settings.pushgateway_target]}]})
    scrape.append({"job_name": "alertmanager",
                   "static_configs": [{"targets": [settings.alertmanager_target]}]})
    return {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "external_labels": {"environment": settings.environment},
        },
        "rule_files": rule_file_paths(build(settings)),
        "alerting": {"alertmanagers": [
            {"static_configs": [{"targets": [settings.alertmanager_target]}]}]},
        "scrape_configs": scrape,
    }


def render(settings: RenderSettings) -> dict[str, str]:
    """``prometheus/prometheus.yml``."""
    return {"prometheus/prometheus.yml": _yaml.dump(config(settings))}
