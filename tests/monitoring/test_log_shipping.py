"""Log shipping: real log lines fit the index template; Fluent Bit, setup jobs, Kibana views."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mestres_observability.monitoring import logs
from mestres_observability.monitoring.settings import RenderSettings
from tests._support import require_binary

ROOT = Path(__file__).resolve().parents[2]
ISO = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
                 r"(Z|[+-]\d{2}(?::?\d{2})?)?)?)?)?$")


# ---------------------------------------------------------------------- the checker
def _date_ok(value: Any, fmt: str) -> bool:
    """Whether Elasticsearch parses ``value`` with ``fmt`` (the formats the template uses)."""
    for part in fmt.split("||"):
        if part == "epoch_millis" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if part == "strict_date_optional_time" and isinstance(value, str):
            m = ISO.match(value)
            if not m:
                continue
            year, month, day, hour, minute, sec = (int(g) if g else None for g in m.groups()[:6])
            try:
                dt.datetime(year or 1970, month or 1, day or 1, hour or 0, minute or 0, sec or 0)
            except ValueError:
                continue
            return True
        if part not in ("epoch_millis", "strict_date_optional_time"):
            raise AssertionError(f"the checker does not know the date format {part!r}")
    return False


def check_value(path: str, value: Any, mapping: Mapping[str, Any]) -> list[str]:
    """Problems of one JSON value against one field mapping (empty when it fits)."""
    if value is None:
        return []
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in check_value(f"{path}[{i}]", v, mapping)]
    if "properties" in mapping and "type" not in mapping:
        if not isinstance(value, dict):
            return [f"{path}: object expected, got {type(value).__name__}"]
        return check_document(value, mapping["properties"], prefix=path + ".")
    kind = mapping["type"]
    ok: bool
    if kind == "date":
        ok = _date_ok(value, mapping.get("format", "strict_date_optional_time||epoch_millis"))
    elif kind in ("integer", "long", "short"):
        limit = {"integer": 2**31, "short": 2**15, "long": 2**63}[kind]
        ok = isinstance(value, int) and not isinstance(value, bool) and -limit <= value < limit
    elif kind in ("float", "double", "scaled_float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value)
    elif kind in ("keyword", "text", "wildcard"):
        ok = isinstance(value, str)
    elif kind == "boolean":
        ok = isinstance(value, bool)
    elif kind == "flattened":
        ok = isinstance(value, dict)
    else:
        raise AssertionError(f"the checker does not know the mapping type {kind!r}")
    return [] if ok else [f"{path}: {value!r} does not fit {kind}"]


def check_document(doc: Mapping[str, Any], properties: Mapping[str, Any],
                   prefix: str = "") -> list[str]:
    """Problems of a document against mapped properties; unmapped fields are left to
    the dynamic rules (reported by :func:`unmapped`)."""
    return [p for key, value in doc.items() if key in properties
            for p in check_value(prefix + key, value, properties[key])]


def unmapped(doc: Mapping[str, Any], properties: Mapping[str, Any]) -> set[str]:
    return {k for k in doc if k not in properties}


def test_checker_rejects_what_does_not_fit() -> None:
    props = logs.LOG_FIELDS
    assert check_document({"status_code": 200, "duration_seconds": 0.1}, props) == []
    assert check_document({"status_code": "200"}, props)
    assert check_document({"status_code": True}, props)
    assert check_document({"status_code": 2**40}, props)
    assert check_document({"duration_seconds": "fast"}, props)
    assert check_document({"endpoint": 3}, props)
    assert check_document({"timestamp": "yesterday"}, props)
    assert check_document({"timestamp": "2024-02-30T00:00:00Z"}, props)
    assert check_document({"timestamp": "2024-02-29T10:00:00.123Z"}, props) == []
    assert check_document({"exception": "boom"}, props)
    assert check_document({"exception": {"type": 1}}, props)
    assert check_document({"fields": [1]}, props)


# ---------------------------------------------------------------------- real log lines
EXTRA_APP = textwrap.dedent('''
    import logging
    from mestres_observability import init_observability
    from mestres_observability.logs import log_event, get_logger
    obs = init_observability(service_name="extra", log_format="json", namespace="shop")
    log_event("order_created", level="gold", timestamp=3, order_id="o-9", items_count=2,
              total_amount=10)
    try:
        raise ValueError("bad")
    except ValueError:
        get_logger("shop").exception("failed")
    logging.getLogger("thirdparty").warning("plain %s", "line", extra={"component": "x"})
    obs.shutdown()
''')


@pytest.fixture(scope="module")
def log_lines() -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    shop = subprocess.run([sys.executable, str(ROOT / "examples" / "coffee_shop.py"), "--scripted"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert shop.returncode == 0, shop.stderr[-3000:]
    log_part = shop.stdout.partition("== /metrics excerpt ==")[0]
    extra = subprocess.run([sys.executable, "-c", EXTRA_APP], capture_output=True, text=True,
                           timeout=60, cwd=ROOT, env=env)
    assert extra.returncode == 0, extra.stderr[-3000:]
    lines = [json.loads(line) for text in (log_part, extra.stdout)
             for line in text.splitlines() if line.startswith("{")]
    assert len(lines) > 40
    return lines


def test_real_log_lines_fit_the_index_template(log_lines: list[dict[str, Any]]) -> None:
    template = json.loads(logs.render(RenderSettings())["elasticsearch/index-template.json"])
    props = template["template"]["mappings"]["properties"]
    problems = [p for line in log_lines for p in check_document(line, props)]
    assert not problems, problems[:20]
    events = {line.get("event") for line in log_lines}
    assert {"http_request", "order_created", "payment_processed", "order_failed"} <= events
    # what the library writes is mapped explicitly, not left to the dynamic rules
    for line in log_lines:
        assert not unmapped(line, props), (line.get("event"), unmapped(line, props))
    # the checked fields were really there, with the types the brief names
    access = next(line for line in log_lines if line.get("event") == "http_request")
    assert isinstance(access["status_code"], int)
    assert isinstance(access["duration_seconds"], float)
    assert props["status_code"]["type"] == "integer"
    assert props["duration_seconds"]["type"] == "float"
    for key in ("endpoint", "event", "trace_id", "request_id"):
        assert props[key]["type"] == "keyword"
    for key in ("@timestamp", "timestamp"):
        assert props[key]["type"] == "date"
    assert any("exception" in line for line in log_lines)
    assert any("fields" in line for line in log_lines)  # reserved names moved aside
    assert any("settings" in line for line in log_lines)  # the init line


def test_fluent_bit_time_format_reads_the_library_timestamp(
        log_lines: list[dict[str, Any]]) -> None:
    parsers = logs.fluent_bit_config(RenderSettings())["parsers.conf"]
    fmt = re.search(r"Time_Format\s+(\S+)", parsers)
    assert fmt
    py_format = fmt.group(1).replace("%L", "%f")
    for line in log_lines:
        parsed = dt.datetime.strptime(line["timestamp"], py_format)
        # what the es output writes into @timestamp (milliseconds, Z) fits the template
        at = parsed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond // 1000:03d}Z"
        assert check_document({"@timestamp": at}, logs.LOG_FIELDS) == []


def test_reserved_and_core_keys_are_mapped() -> None:
    from mestres_observability import logs as library_logs

    for key in library_logs.RESERVED_KEYS:
        assert key in logs.LOG_FIELDS, key


def test_business_events_are_the_ones_the_library_logs() -> None:
    source = (ROOT / "mestres_observability" / "business.py").read_text(encoding="utf-8")
    logged = set(re.findall(r'_log\(obs, "([a-z_]+)"', source))
    assert logged == set(logs.BUSINESS_EVENTS)


# ---------------------------------------------------------------------- Fluent Bit
def _sections(conf: str) -> list[tuple[str, dict[str, str]]]:
    out: list[tuple[str, dict[str, str]]] = []
    for line in conf.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(r"\[([A-Z]+)\]", line.strip())
        if m:
            out.append((m.group(1), {}))
            continue
        assert line.startswith("    "), line
        key, _, value = line.strip().partition(" ")
        out[-1][1][key] = value.strip()
    return out


def test_fluent_bit_tails_parses_and_ships() -> None:
    settings = RenderSettings(log_path="/srv/shop/app.log", log_index_prefix="shop-logs",
                              elasticsearch_url="http://es.internal:9201")
    files = logs.fluent_bit_config(settings)
    main = dict(_sections(files["fluent-bit.conf"]))
    parsers = [body for name, body in _sections(files["parsers.conf"]) if name == "PARSER"]
    assert main["INPUT"]["Name"] == "tail"
    assert main["INPUT"]["Path"] == "/srv/shop/app.log"
    assert main["INPUT"]["Parser"] in {p["Name"] for p in parsers}
    (parser,) = parsers
    assert parser["Format"] == "json"
    assert parser["Time_Key"] == "timestamp"
    assert parser["Time_Keep"] == "On"
    out = main["OUTPUT"]
    assert out["Name"] == "es"
    assert (out["Host"], out["Port"]) == ("es.internal", "9201")
    assert out["Logstash_Prefix"] == "shop-logs"
    assert out["Suppress_Type_Name"] == "On"  # Elasticsearch 8 has no mapping types
    assert out["HTTP_Passwd"] == "${LOGS_WRITER_PASSWORD}"
    # the tag the input sets is the one the output matches
    tag, match = main["INPUT"]["Tag"], out["Match"]
    assert re.fullmatch(match.replace(".", r"\.").replace("*", ".*"), tag)
    template = logs.index_template(settings)
    assert template["index_patterns"] == ["shop-logs-*"]
    assert out["Time_Key"] in template["template"]["mappings"]["properties"]


# ---------------------------------------------------------------------- setup jobs
class _Recorder(ThreadingHTTPServer):
    requests: list[dict[str, Any]]


class _Handler(BaseHTTPRequestHandler):
    server: _Recorder

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append({"method": self.command, "path": self.path,
                                     "headers": dict(self.headers), "body": body})
        payload = b'{"acknowledged": true, "success": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _record

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def fake_server() -> Iterator[_Recorder]:
    server = _Recorder(("127.0.0.1", 0), _Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


PASSWORDS = {"ELASTIC_PASSWORD": "el\"astic\\pw", "KIBANA_SYSTEM_PASSWORD": "k$b 'sys'",
             "LOGS_WRITER_PASSWORD": "wr!ter", "LOGS_READER_PASSWORD": "rea\\\"der"}


def _run(script: str, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "setup.sh"
    path.write_text(script.replace("/setup/", f"{tmp_path}/"), encoding="utf-8")
    return subprocess.run(["bash", str(path)], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env})


def test_elasticsearch_setup_job(fake_server: _Recorder, tmp_path: Path) -> None:
    require_binary("curl")
    port = fake_server.server_address[1]
    settings = RenderSettings(elasticsearch_url=f"http://127.0.0.1:{port}")
    files = logs.render(settings)
    (tmp_path / "index-template.json").write_text(files["elasticsearch/index-template.json"])
    res = _run(files["elasticsearch/setup.sh"], tmp_path, PASSWORDS)
    assert res.returncode == 0, res.stderr
    by_path = {(r["method"], r["path"].split("?")[0]): r for r in fake_server.requests}
    import base64

    for r in fake_server.requests:
        auth = base64.b64decode(r["headers"]["Authorization"].split()[1]).decode()
        assert auth == f"elastic:{PASSWORDS['ELASTIC_PASSWORD']}"
    body = json.loads(by_path["POST", "/_security/user/kibana_system/_password"]["body"])
    assert body == {"password": PASSWORDS["KIBANA_SYSTEM_PASSWORD"]}
    writer = json.loads(by_path["POST", "/_security/user/logs_writer"]["body"])
    assert writer == {"password": PASSWORDS["LOGS_WRITER_PASSWORD"], "roles": ["logs_writer"]}
    reader = json.loads(by_path["POST", "/_security/user/logs_reader"]["body"])
    assert reader == {"password": PASSWORDS["LOGS_READER_PASSWORD"], "roles": ["logs_reader"]}
    role = json.loads(by_path["PUT", "/_security/role/logs_writer"]["body"])
    assert role["indices"][0]["names"] == ["mestres-logs-*"]
    assert "create_doc" in role["indices"][0]["privileges"]
    template = json.loads(by_path["PUT", "/_index_template/mestres-logs"]["body"])
    assert template == logs.index_template(settings)
    # no password on a command line: they travel in request bodies only
    script = files["elasticsearch/setup.sh"]
    assert "--data-binary @-" in script
    for value in PASSWORDS.values():
        assert value not in script


def test_elasticsearch_setup_needs_its_passwords(tmp_path: Path) -> None:
    res = _run(logs.render(RenderSettings())["elasticsearch/setup.sh"], tmp_path,
               {"ELASTIC_PASSWORD": "x"})
    assert res.returncode != 0
    assert "KIBANA_SYSTEM_PASSWORD" in res.stderr


def test_kibana_setup_job_imports_the_saved_objects(fake_server: _Recorder,
                                                    tmp_path: Path) -> None:
    require_binary("curl")
    files = logs.render(RenderSettings())
    (tmp_path / "saved-objects.ndjson").write_text(files["kibana/saved-objects.ndjson"])
    port = fake_server.server_address[1]
    res = _run(files["kibana/setup.sh"], tmp_path,
               {"ELASTIC_PASSWORD": "pw", "KIBANA_URL": f"http://127.0.0.1:{port}"})
    assert res.returncode == 0, res.stderr
    imports = [r for r in fake_server.requests if r["path"].startswith("/api/saved_objects")]
    (imp,) = imports
    assert imp["path"] == "/api/saved_objects/_import?overwrite=true"
    assert "kbn-xsrf" in {k.lower() for k in imp["headers"]}
    assert files["kibana/saved-objects.ndjson"].encode() in imp["body"]


# ---------------------------------------------------------------------- Kibana
def _objects() -> list[dict[str, Any]]:
    text = logs.render(RenderSettings(slow_request_seconds=1.5))["kibana/saved-objects.ndjson"]
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_saved_objects_are_consistent() -> None:
    objects = _objects()
    ids = {(o["type"], o["id"]) for o in objects}
    assert len(ids) == len(objects)
    for o in objects:
        assert set(o) >= {"id", "type", "attributes", "references", "migrationVersion"}
        for ref in o["references"]:
            assert (ref["type"], ref["id"]) in ids, (o["id"], ref)
        attrs = o["attributes"]
        for key in ("visState", "panelsJSON", "optionsJSON", "uiStateJSON"):
            if key in attrs:
                json.loads(attrs[key])
        if "kibanaSavedObjectMeta" in attrs:
            source = json.loads(attrs["kibanaSavedObjectMeta"]["searchSourceJSON"])
            if "indexRefName" in source:
                assert source["indexRefName"] in {r["name"] for r in o["references"]}
    dashboard = next(o for o in objects if o["type"] == "dashboard")
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    refs = {r["name"] for r in dashboard["references"]}
    assert {p["panelRefName"] for p in panels} == refs
    assert {o["attributes"]["title"] for o in objects if o["type"] != "index-pattern"} >= {
        "Error ratio by endpoint", "Slow requests (> 1.5 s)", "Business events timeline"}


def _fields_in_kql(query: str) -> set[str]:
    return set(re.findall(r"([@A-Za-z_][\w.]*)\s*(?::|>=|<=|>|<)", query))


def test_saved_views_use_mapped_fields_of_the_right_type() -> None:
    aggregatable = {"keyword", "date", "integer", "float", "long", "double"}
    for o in _objects():
        attrs = o["attributes"]
        queries: list[str] = []
        fields: set[str] = set()
        if "kibanaSavedObjectMeta" in attrs:
            source = json.loads(attrs["kibanaSavedObjectMeta"]["searchSourceJSON"])
            queries.append(source["query"]["query"])
        if o["type"] == "search":
            fields |= set(attrs["columns"]) | {s[0] for s in attrs["sort"]}
        if "visState" in attrs:
            vis = json.loads(attrs["visState"])
            for agg in vis.get("aggs", ()):
                if "field" in agg["params"]:
                    fields.add(agg["params"]["field"])
            params = vis["params"]
            if vis["type"] == "metrics":
                fields |= {params["time_field"]} | {s["terms_field"] for s in params["series"]}
                queries.append(params["filter"]["query"])
                for s in params["series"]:
                    for m in s["metrics"]:
                        queries += [m["numerator"]["query"], m["denominator"]["query"]]
        for q in queries:
            fields |= _fields_in_kql(q)
        for f in fields:
            assert f in logs.LOG_FIELDS, (o["id"], f)
            if o["type"] == "visualization" or f in {s[0] for s in attrs.get("sort", ())}:
                assert logs.LOG_FIELDS[f].get("type") in aggregatable, (o["id"], f)


def test_the_seed_views_ask_the_right_questions() -> None:
    by_id = {o["id"]: o for o in _objects()}
    slow = json.loads(by_id["mo-slow-requests"]["attributes"]["kibanaSavedObjectMeta"]
                      ["searchSourceJSON"])["query"]["query"]
    assert "duration_seconds > 1.5" in slow
    assert by_id["mo-slow-requests"]["attributes"]["sort"] == [["duration_seconds", "desc"]]
    ratio = json.loads(by_id["mo-error-ratio-by-endpoint"]["attributes"]["visState"])
    (metric,) = ratio["params"]["series"][0]["metrics"]
    assert metric["type"] == "filter_ratio"  # a ratio, not a count of errors
    assert metric["numerator"]["query"] == "status_code >= 500"
    assert ratio["params"]["series"][0]["terms_field"] == "endpoint"
    events = json.loads(by_id["mo-business-events"]["attributes"]["kibanaSavedObjectMeta"]
                        ["searchSourceJSON"])["query"]["query"]
    for event in logs.BUSINESS_EVENTS:
        assert f'"{event}"' in events
