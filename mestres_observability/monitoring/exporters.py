"""The exporters scraped beside the service, and the metrics of theirs that rules and dashboards use.

The catalogue names every metric the library exposes; these tables name the
few series read from the node, PostgreSQL and Redis exporters (and the
``up``-style series Prometheus writes itself), with their labels, so the
static check of :mod:`~mestres_observability.monitoring.promql` can vouch for
every expression. The end-to-end test reads each of them from the real
exporters (Debian's ``prometheus-node-exporter`` 1.5, ``prometheus-postgres-exporter``
0.11 and ``prometheus-redis-exporter`` 1.45): add a metric here, and that test
shows it exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["EXPORTERS", "PROMETHEUS_SERIES", "PUSHGATEWAY_JOB", "TARGET_LABELS", "Exporter",
           "by_job"]

#: Labels Prometheus adds to every scraped series (from the target).
TARGET_LABELS: tuple[str, ...] = ("job", "instance")


@dataclass(frozen=True)
class Exporter:
    """One exporter scraped by the rendered Prometheus.

    Attributes:
        job: the scrape job name (also the ``job`` label of its series).
        target_setting: the :class:`~mestres_observability.monitoring.settings.RenderSettings`
            field holding its ``host:port``.
        metrics: metric name -> its labels (besides ``job`` and ``instance``).
    """

    job: str
    target_setting: str
    metrics: Mapping[str, tuple[str, ...]]


EXPORTERS: tuple[Exporter, ...] = (
    Exporter("node-exporter", "node_exporter_target", MappingProxyType({
        "node_cpu_seconds_total": ("cpu", "mode"),
        "node_load1": (),
        "node_memory_MemAvailable_bytes": (),
        "node_memory_MemTotal_bytes": (),
        "node_filesystem_avail_bytes": ("device", "fstype", "mountpoint"),
        "node_filesystem_size_bytes": ("device", "fstype", "mountpoint"),
        "node_network_receive_bytes_total": ("device",),
        "node_network_transmit_bytes_total": ("device",),
    })),
    Exporter("postgres-exporter", "postgres_exporter_target", MappingProxyType({
        "pg_up": (),
        "pg_stat_activity_count": ("datname", "state", "server"),
        "pg_settings_max_connections": ("server",),
    })),
    Exporter("redis-exporter", "redis_exporter_target", MappingProxyType({
        "redis_up": (),
        "redis_connected_clients": (),
        "redis_memory_used_bytes": (),
    })),
)

#: The scrape job of the Pushgateway (rendered when ``pushgateway_target`` is set). It
#: scrapes with ``honor_labels: true``: the pushed series keep the ``job`` and
#: ``instance`` of their push (the batch job's name and its grouping key), so only
#: the Pushgateway's own series (``up`` among them) carry ``job="pushgateway"``.
PUSHGATEWAY_JOB = "pushgateway"

#: Series Prometheus writes for every target, whatever it exposes.
PROMETHEUS_SERIES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "up": (),
    "scrape_duration_seconds": (),
    "scrape_samples_scraped": (),
})


def by_job(job: str) -> Exporter:
    """The exporter whose scrape job is ``job``.

    Raises:
        KeyError: no such exporter.
    """
    for exporter in EXPORTERS:
        if exporter.job == job:
            return exporter
    raise KeyError(f"no exporter with job {job!r}")
