"""Log shipping: Fluent Bit, the Elasticsearch index template, Kibana saved objects.

:func:`render` writes

* ``fluent-bit/fluent-bit.conf`` and ``fluent-bit/parsers.conf``: Fluent Bit
  tails the service's JSON log file (``log_path``; the library writes one JSON
  object per line to standard output: redirect it there, or point the shipper
  at the container runtime's log file), parses each line, takes the record's
  time from its ``timestamp`` field and ships it to Elasticsearch into daily
  indices ``<log_index_prefix>-YYYY.MM.DD``, buffering on disk while
  Elasticsearch is away;
* ``elasticsearch/index-template.json``: a composable index template whose
  field types are what the library writes (:data:`LOG_FIELDS`);
* ``elasticsearch/setup.sh``: the one-shot job of the compose file that sets
  the ``kibana_system`` password, creates the ``logs_writer`` (Fluent Bit) and
  ``logs_reader`` (Grafana) users with their roles and installs the template;
* ``kibana/saved-objects.ndjson`` and ``kibana/setup.sh``: a data view and the
  seed's three views (error ratio by endpoint, slow requests, business events
  timeline) on one dashboard, imported by a second one-shot job.

Passwords are read from environment variables of the containers (set them
in the compose project's ``.env``); none is written into these files.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

from .settings import RenderSettings

__all__ = [
    "BUSINESS_EVENTS",
    "DATE_FORMAT",
    "ELASTIC_VERSION",
    "FLUENT_BIT_IMAGE",
    "KIBANA_DATA_VIEW_ID",
    "LOG_FIELDS",
    "fluent_bit_config",
    "index_template",
    "kibana_objects",
    "render",
]

#: One version for Elasticsearch and Kibana (they must match).
ELASTIC_VERSION = "8.17.0"
#: The log shipper's image.
FLUENT_BIT_IMAGE = "fluent/fluent-bit:3.2.4"
#: Date format of ``timestamp`` and ``@timestamp`` in the index template.
DATE_FORMAT = "strict_date_optional_time||epoch_millis"
#: Business events the library logs (:mod:`mestres_observability.business`).
BUSINESS_EVENTS: tuple[str, ...] = (
    "order_created", "order_failed", "payment_processed", "payment_failed",
)
#: Saved-object id of the Kibana data view over the log indices.
KIBANA_DATA_VIEW_ID = "mestres-logs"

_KEYWORD: dict[str, Any] = {"type": "keyword", "ignore_above": 1024}
_TEXT_AND_KEYWORD: dict[str, Any] = {
    "type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 1024}}}

#: Every field the library writes on a log line, with its Elasticsearch
#: mapping. Keys of the core (``logs.py``), of the access log (``http.py``) and
#: of the business events (``business.py``); fields an application adds are
#: mapped by the template's dynamic rules (strings as keywords).
LOG_FIELDS: dict[str, dict[str, Any]] = {
    # set by Fluent Bit from ``timestamp``
    "@timestamp": {"type": "date", "format": DATE_FORMAT},
    # every line (mestres_observability.logs)
    "timestamp": {"type": "date", "format": DATE_FORMAT},
    "level": _KEYWORD,
    "event": _KEYWORD,
    "logger": _KEYWORD,
    "service": _KEYWORD,
    "trace_id": _KEYWORD,
    "span_id": _KEYWORD,
    "request_id": _KEYWORD,
    "user_id": _KEYWORD,
    "exception": {"properties": {
        "type": _KEYWORD,
        "message": {"type": "text"},
        "stacktrace": {"type": "text", "index": False},
    }},
    # user fields whose names are reserved, and the init line's settings: any shape
    "fields": {"type": "flattened"},
    "settings": {"type": "flattened"},
    # faults of the library (mestres_observability._fault)
    "component": _KEYWORD,
    "fault_kind": _KEYWORD,
    # the access log (mestres_observability.http): one line per request
    "method": _KEYWORD,
    "url": {"type": "keyword", "ignore_above": 2048},
    "endpoint": _KEYWORD,
    "status_code": {"type": "integer"},
    "duration_seconds": {"type": "float"},
    "user_agent": _TEXT_AND_KEYWORD,
    "ip_address": _KEYWORD,
    # business events (mestres_observability.business)
    "order_id": _KEYWORD,
    "payment_id": _KEYWORD,
    "total_amount": {"type": "float"},
    "amount": {"type": "float"},
    "currency": _KEYWORD,
    "items_count": {"type": "integer"},
    "status": _KEYWORD,
    "error_type": _KEYWORD,
    # a line that was not JSON (Fluent Bit keeps it whole) and the renderer's fallback
    "log": {"type": "text"},
    "original_event": _KEYWORD,
}


# ---------------------------------------------------------------------- Fluent Bit
def _section(name: str, entries: Mapping[str, object]) -> str:
    width = max(len(k) for k in entries)
    lines = [f"[{name}]"] + [f"    {k.ljust(width)} {v}" for k, v in entries.items()]
    return "\n".join(lines) + "\n"


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    if not host:
        return rest, default_port
    return host, int(port)


def fluent_bit_config(settings: RenderSettings) -> dict[str, str]:
    """``fluent-bit.conf`` and ``parsers.conf`` (classic format), keyed by file name."""
    host, port = _host_port(settings.elasticsearch_url, 9200)
    head = "# Generated by mestres-observability render: edit the settings, not this file.\n"
    main = head + "\n".join([
        _section("SERVICE", {
            "Flush": 5,
            "Log_Level": "info",
            "Parsers_File": "parsers.conf",
            "HTTP_Server": "On",
            "HTTP_Listen": "0.0.0.0",
            "HTTP_Port": 2020,
            "Health_Check": "On",
            "storage.path": "/fluent-bit/state/buffer",
            "storage.sync": "normal",
            "storage.backlog.mem_limit": "16M",
        }),
        _section("INPUT", {
            "Name": "tail",
            "Tag": f"{settings.log_index_prefix}.service",
            "Path": settings.log_path,
            "Parser": "mestres_json",
            "DB": "/fluent-bit/state/tail.db",
            "Refresh_Interval": 5,
            "Rotate_Wait": 10,
            "Mem_Buf_Limit": "32MB",
            "Buffer_Max_Size": "256k",
            "Skip_Long_Lines": "On",
            "storage.type": "filesystem",
        }),
        _section("OUTPUT", {
            "Name": "es",
            "Match": f"{settings.log_index_prefix}.*",
            "Host": host,
            "Port": port,
            "HTTP_User": "logs_writer",
            "HTTP_Passwd": "${LOGS_WRITER_PASSWORD}",
            "Logstash_Format": "On",
            "Logstash_Prefix": settings.log_index_prefix,
            "Logstash_DateFormat": "%Y.%m.%d",
            "Time_Key": "@timestamp",
            "Include_Tag_Key": "Off",
            "Suppress_Type_Name": "On",
            "Replace_Dots": "On",
            "Generate_ID": "On",
            "Trace_Error": "On",
            "Retry_Limit": 10,
            "storage.total_limit_size": "512M",
        }),
    ])
    parsers = head + _section("PARSER", {
        "Name": "mestres_json",
        "Format": "json",
        "Time_Key": "timestamp",
        "Time_Format": "%Y-%m-%dT%H:%M:%S.%LZ",
        "Time_Keep": "On",
    })
    return {"fluent-bit.conf": main, "parsers.conf": parsers}


# ---------------------------------------------------------------------- Elasticsearch
def index_template(settings: RenderSettings) -> dict[str, Any]:
    """The composable index template (``PUT _index_template/<prefix>``) for the log indices.

    Fields the library writes have explicit types (:data:`LOG_FIELDS`); other
    strings become keywords. ``ignore_malformed`` keeps a line whose field has
    an unexpected type (a number where a date belongs): the field is left
    unindexed instead of the whole line being refused.
    """
    return {
        "index_patterns": [f"{settings.log_index_prefix}-*"],
        "priority": 200,
        "template": {
            "settings": {
                "number_of_shards": 1,
                "number_of_replicas": 0,
                "index.mapping.ignore_malformed": True,
                "index.mapping.total_fields.limit": 2000,
            },
            "mappings": {
                "dynamic": True,
                "date_detection": False,
                "dynamic_templates": [
                    {"strings_as_keywords": {"match_mapping_type": "string",
                                             "mapping": {"type": "keyword",
                                                         "ignore_above": 1024}}},
                ],
                "properties": LOG_FIELDS,
            },
        },
        "_meta": {"generated_by": "mestres-observability", "service": settings.service},
    }


def _setup_script(settings: RenderSettings) -> str:
    es = settings.elasticsearch_url.rstrip("/")
    prefix = settings.log_index_prefix
    writer_role = {"cluster": ["monitor"], "indices": [{
        "names": [f"{prefix}-*"], "privileges": ["create_doc", "create_index", "auto_configure"]}]}
    reader_role = {"indices": [{"names": [f"{prefix}-*"],
                                "privileges": ["read", "view_index_metadata"]}]}
    q = shlex.quote
    return f"""#!/bin/bash
# Generated by mestres-observability render. One-shot job of the compose file:
# passwords come from the job's environment (the compose project's .env).
set -euo pipefail
ES={q(es)}
: "${{ELASTIC_PASSWORD:?}}" "${{KIBANA_SYSTEM_PASSWORD:?}}"
: "${{LOGS_WRITER_PASSWORD:?}}" "${{LOGS_READER_PASSWORD:?}}"
es() {{ curl -fsS -u "elastic:${{ELASTIC_PASSWORD}}" -H 'Content-Type: application/json' "$@"; }}
json_str() {{ local s=${{1//\\\\/\\\\\\\\}}; s=${{s//\\"/\\\\\\"}}; printf '"%s"' "$s"; }}
until es "$ES/_cluster/health?wait_for_status=yellow&timeout=5s" >/dev/null; do sleep 2; done
# bodies with a password go through standard input, never the command line
password_body() {{ printf '{{"password": %s}}' "$(json_str "$1")"; }}
user() {{  # name password role
  printf '{{"password": %s, "roles": ["%s"]}}' "$(json_str "$2")" "$3" |
    es -X POST "$ES/_security/user/$1" --data-binary @- >/dev/null
}}
password_body "${{KIBANA_SYSTEM_PASSWORD}}" |
  es -X POST "$ES/_security/user/kibana_system/_password" --data-binary @- >/dev/null
es -X PUT "$ES/_security/role/logs_writer" -d {q(json.dumps(writer_role))} >/dev/null
es -X PUT "$ES/_security/role/logs_reader" -d {q(json.dumps(reader_role))} >/dev/null
user logs_writer "${{LOGS_WRITER_PASSWORD}}" logs_writer
user logs_reader "${{LOGS_READER_PASSWORD}}" logs_reader
es -X PUT "$ES/_index_template/{prefix}" -d @/setup/index-template.json >/dev/null
echo "elasticsearch: users, roles and the index template are in place"
"""


# ---------------------------------------------------------------------- Kibana
def _so(obj_id: str, so_type: str, attributes: dict[str, Any],
        references: list[dict[str, str]], migration: str) -> dict[str, Any]:
    return {"id": obj_id, "type": so_type, "attributes": attributes,
            "references": references, "migrationVersion": {so_type: migration}}


def _search_source(query: str, index_ref: bool = True) -> str:
    source: dict[str, Any] = {"query": {"query": query, "language": "kuery"}, "filter": []}
    if index_ref:
        source["indexRefName"] = "kibanaSavedObjectMeta.searchSourceJSON.index"
    return json.dumps(source)


def _events_query() -> str:
    return "event : (" + " or ".join(f'"{e}"' for e in BUSINESS_EVENTS) + ")"


def kibana_objects(settings: RenderSettings) -> list[dict[str, Any]]:
    """The Kibana saved objects: a data view, the seed's three views and their dashboard.

    * *Error ratio by endpoint*: a TSVB time series of the share of
      ``http_request`` lines with ``status_code >= 500``, one line per
      endpoint (the seed counted 4xx, client mistakes, as errors and plotted
      counts);
    * *Slow requests*: a saved search of ``http_request`` lines slower than
      ``slow_request_seconds``, slowest first, with their trace and request ids;
    * *Business events timeline*: the library's business events per interval,
      split by event, and the saved search listing them.

    The objects are in the saved-object format Kibana 7.14+ exports, which
    Kibana 8 migrates on import (as it does for its own sample data).
    """
    view = KIBANA_DATA_VIEW_ID
    ref = [{"name": "kibanaSavedObjectMeta.searchSourceJSON.index", "type": "index-pattern",
            "id": view}]
    slow_query = f'event : "http_request" and duration_seconds > {settings.slow_request_seconds:g}'
    error_ratio = {
        "title": "Error ratio by endpoint", "type": "metrics", "aggs": [],
        "params": {
            "id": "mo-error-ratio", "type": "timeseries", "use_kibana_indexes": True,
            "index_pattern_ref_name": "metrics_0_index_pattern",
            "time_field": "@timestamp", "interval": "", "drop_last_bucket": 1,
            "axis_position": "left", "axis_formatter": "percent", "axis_min": 0,
            "show_legend": 1, "show_grid": 1, "tooltip_mode": "show_all",
            "filter": {"query": 'event : "http_request"', "language": "kuery"},
            "series": [{
                "id": "mo-error-ratio-series", "label": "5xx share",
                "split_mode": "terms", "terms_field": "endpoint", "terms_size": "10",
                "terms_order_by": "_count", "chart_type": "line", "line_width": 2,
                "point_size": 1, "fill": 0, "stacked": "none", "formatter": "percent",
                "color": "#E7664C", "split_color_mode": "kibana",
                "metrics": [{
                    "id": "mo-error-ratio-metric", "type": "filter_ratio",
                    "numerator": {"query": "status_code >= 500", "language": "kuery"},
                    "denominator": {"query": "*", "language": "kuery"},
                    "metric_agg": "count",
                }],
            }],
        },
    }
    timeline = {
        "title": "Business events timeline", "type": "histogram",
        "params": {"type": "histogram", "addTooltip": True, "addLegend": True,
                   "legendPosition": "right", "times": [], "addTimeMarker": False},
        "aggs": [
            {"id": "1", "enabled": True, "type": "count", "schema": "metric", "params": {}},
            {"id": "2", "enabled": True, "type": "date_histogram", "schema": "segment",
             "params": {"field": "@timestamp", "interval": "auto", "min_doc_count": 1,
                        "extended_bounds": {}}},
            {"id": "3", "enabled": True, "type": "terms", "schema": "group",
             "params": {"field": "event", "size": len(BUSINESS_EVENTS) + 5, "order": "desc",
                        "orderBy": "1"}},
        ],
    }
    objects = [
        _so(view, "index-pattern", {
            "title": f"{settings.log_index_prefix}-*", "timeFieldName": "@timestamp",
            "name": f"{settings.service} logs"}, [], "7.11.0"),
        _so("mo-error-ratio-by-endpoint", "visualization", {
            "title": "Error ratio by endpoint",
            "description": "Share of requests answered with a 5xx status, per endpoint.",
            "visState": json.dumps(error_ratio), "uiStateJSON": "{}", "version": 1,
            "kibanaSavedObjectMeta": {"searchSourceJSON": _search_source("", False)}},
            [{"name": "metrics_0_index_pattern", "type": "index-pattern", "id": view}],
            "7.14.0"),
        _so("mo-slow-requests", "search", {
            "title": f"Slow requests (> {settings.slow_request_seconds:g} s)",
            "description": "Requests slower than the threshold, slowest first.",
            "columns": ["endpoint", "method", "status_code", "duration_seconds", "trace_id",
                        "request_id"],
            "sort": [["duration_seconds", "desc"]],
            "kibanaSavedObjectMeta": {"searchSourceJSON": _search_source(slow_query)}},
            ref, "7.9.3"),
        _so("mo-business-events", "search", {
            "title": "Business events",
            "description": "Orders and payments as the library logs them, newest first.",
            "columns": ["event", "order_id", "payment_id", "status", "total_amount", "amount",
                        "currency", "trace_id"],
            "sort": [["@timestamp", "desc"]],
            "kibanaSavedObjectMeta": {"searchSourceJSON": _search_source(_events_query())}},
            ref, "7.9.3"),
        _so("mo-business-events-timeline", "visualization", {
            "title": "Business events timeline",
            "description": "Business events per interval, by event.",
            "visState": json.dumps(timeline), "uiStateJSON": "{}", "version": 1,
            "kibanaSavedObjectMeta": {"searchSourceJSON": _search_source(_events_query())}},
            ref, "7.14.0"),
    ]
    panels = [("mo-error-ratio-by-endpoint", "visualization", 0, 0, 24, 15),
              ("mo-business-events-timeline", "visualization", 24, 0, 24, 15),
              ("mo-slow-requests", "search", 0, 15, 48, 15),
              ("mo-business-events", "search", 0, 30, 48, 15)]
    panels_json = [{"version": ELASTIC_VERSION, "type": kind, "panelIndex": str(i),
                    "gridData": {"x": x, "y": y, "w": w, "h": h, "i": str(i)},
                    "embeddableConfig": {"enhancements": {}}, "panelRefName": f"panel_{i}"}
                   for i, (_, kind, x, y, w, h) in enumerate(panels)]
    objects.append(_so("mo-logs-dashboard", "dashboard", {
        "title": f"{settings.service} · Application logs",
        "description": "The seed's three views: error ratio by endpoint, slow requests, "
        "business events.",
        "panelsJSON": json.dumps(panels_json),
        "optionsJSON": json.dumps({"useMargins": True, "syncColors": False,
                                   "hidePanelTitles": False}),
        "timeRestore": True, "timeFrom": "now-24h", "timeTo": "now",
        "refreshInterval": {"pause": False, "value": 60000},
        "kibanaSavedObjectMeta": {"searchSourceJSON": _search_source("", False)}},
        [{"name": f"panel_{i}", "type": kind, "id": obj_id}
         for i, (obj_id, kind, *_rest) in enumerate(panels)], "7.14.0"))
    return objects


def _kibana_setup_script() -> str:
    return """#!/bin/bash
# Generated by mestres-observability render. One-shot job of the compose file:
# imports the saved objects once Kibana answers.
set -euo pipefail
: "${ELASTIC_PASSWORD:?}"
KIBANA="${KIBANA_URL:-http://kibana:5601}"
until curl -fsS -u "elastic:${ELASTIC_PASSWORD}" "$KIBANA/api/status" >/dev/null; do sleep 3; done
curl -fsS -u "elastic:${ELASTIC_PASSWORD}" -H 'kbn-xsrf: mestres-observability' \\
  -X POST "$KIBANA/api/saved_objects/_import?overwrite=true" \\
  --form file=@/setup/saved-objects.ndjson >/dev/null
echo "kibana: saved objects imported"
"""


def render(settings: RenderSettings) -> dict[str, str]:
    """Fluent Bit, Elasticsearch and Kibana files, keyed by path relative to the output."""
    out = {f"fluent-bit/{name}": text for name, text in fluent_bit_config(settings).items()}
    out["elasticsearch/index-template.json"] = json.dumps(
        index_template(settings), indent=2) + "\n"
    out["elasticsearch/setup.sh"] = _setup_script(settings)
    out["kibana/saved-objects.ndjson"] = "".join(
        json.dumps(o, separators=(",", ":"), ensure_ascii=False) + "\n"
        for o in kibana_objects(settings))
    out["kibana/setup.sh"] = _kibana_setup_script()
    return out
