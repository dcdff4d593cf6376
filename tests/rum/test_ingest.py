"""The RUM ingestion endpoint and the snippet route, through the endpoint layer and Flask.

What each check shows: what is recorded (and converted: ms to s, CLS apart),
what is refused and how it is counted, the body cap whatever
``Content-Length`` says, per-client token buckets behind trusted proxies with
bounded memory, report ids counted once within a bounded memory, the origin
checks and CORS, exemplars only from valid trace ids, page groups, the
``browser_error`` log (fixed keys, redacted, truncated, sampled), the HTTP
metrics/spans/access-log treatment, settings, and the snippet route and size.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from mestres_observability import ObservabilityConfig
from mestres_observability._endpoint import Request
from mestres_observability.errors import ConfigurationError
from mestres_observability.http import http_state
from mestres_observability.rum import SCHEMA_FILE, SCRIPT_FILE, script_source, script_tag, script_text
from mestres_observability.rum._ingest import PageGroups, rum_state
from mestres_observability.rum._limits import ClientBuckets, RecentIds, TokenBucket, client_key
from mestres_observability.testing import (
    capture_logs,
    captured_spans,
    fresh_observability,
    sample_value,
)
from tests.rum._apps import Driver, flask_driver

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
TEXT = ("Content-Type", "text/plain;charset=UTF-8")
BASE: dict[str, Any] = {"rum_enabled": True, "tracing_enabled": False}


def dump(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def vital(metric: str, value: float, **extra: Any) -> dict[str, Any]:
    return {"type": "web_vitals", "data": {"metric": metric, "value": value, **extra}}


@pytest.fixture
def obs() -> Iterator[Any]:
    with fresh_observability(**BASE) as instance:
        yield instance


@pytest.fixture
def shop(obs: Any) -> Driver:
    return flask_driver(obs)


def post(obs: Any, body: bytes, *headers: tuple[str, str], peer: str = "203.0.113.5",
         stream: Any = None, length: str | None = "auto") -> tuple[int, dict[str, str], bytes]:
    """One POST through the endpoint layer (as every adapter dispatches it)."""
    endpoint = http_state(obs).endpoints[obs.config.rum_path]
    pairs = [TEXT, *headers] if not any(h[0].lower() == "content-type" for h in headers) \
        else list(headers)
    if length == "auto":
        length = str(len(body))
    if length is not None:
        pairs.append(("Content-Length", length))
    source = stream if stream is not None else io.BytesIO(body)
    req = Request("POST", obs.config.rum_path, pairs, peer=peer,
                  trusted=http_state(obs).trusted, read=source.read)
    status, out, answer = endpoint.dispatch(req)
    return status, {k.lower(): v for k, v in out}, answer


def value(obs: Any, name: str, **labels: str) -> float:
    return sample_value(name, obs, **labels)


# ---------------------------------------------------------------------- recorded
def test_every_type_is_recorded_in_its_family(obs: Any) -> None:
    status, headers, body = post(obs, dump([
        vital("LCP", 2500, url="/p"), vital("INP", 200, url="/p"), vital("FCP", 1800, url="/p"),
        vital("TTFB", 800, url="/p"), vital("FID", 50, url="/p"), vital("CLS", 0.1, url="/p"),
        {"type": "navigation", "data": {"url": "/p", "phases": {"dns": 20, "load": 1500}}},
        {"type": "resource", "data": {"url": "/p", "initiators": {
            "img": {"count": 3, "duration": 300}, "script": {"count": 2, "duration": 50}}}},
        {"type": "errors", "data": {"url": "/p", "type": "javascript", "message": "x"}},
        {"type": "errors", "data": {"url": "/p", "type": "promise_rejection"}},
        {"type": "business_events", "data": {"event": "checkout_started"}},
    ]))
    assert (status, body) == (204, b"")
    assert headers["x-content-type-options"] == "nosniff"
    page = "<other>"
    for metric, le in (("LCP", "2.5"), ("INP", "0.2"), ("FCP", "1.8"), ("TTFB", "0.8")):
        # exactly at the threshold: inside the "good" bucket (le is inclusive)
        assert value(obs, "rum_web_vitals_seconds_bucket", metric=metric, page=page, le=le) == 1
    assert value(obs, "rum_web_vitals_seconds_sum", metric="FCP", page=page) == pytest.approx(1.8)
    assert value(obs, "rum_web_vitals_seconds_bucket", metric="LCP", page=page, le="1.8") == 0
    assert value(obs, "rum_web_vitals_seconds_count", metric="FID", page=page) == 1
    assert value(obs, "rum_web_vitals_seconds_count", metric="CLS", page=page) == 0
    assert value(obs, "rum_layout_shift_bucket", page=page, le="0.1") == 1
    assert value(obs, "rum_navigation_seconds_sum", phase="load", page=page) == 1.5
    assert value(obs, "rum_navigation_seconds_count", phase="dns", page=page) == 1
    assert value(obs, "rum_resources_total", initiator="img", page=page) == 3
    assert value(obs, "rum_resource_duration_seconds_total", initiator="img",
                 page=page) == pytest.approx(0.3)
    assert value(obs, "rum_js_errors_total", type="javascript", page=page) == 1
    assert value(obs, "rum_js_errors_total", type="promise_rejection", page=page) == 1
    assert value(obs, "rum_business_events_total", event="checkout_started") == 1
    assert value(obs, "rum_events_total", type="web_vitals") == 6
    assert value(obs, "rum_events_total", type="errors") == 2


def test_a_partly_bad_batch_keeps_the_good_events_and_names_the_first_bad_field(obs: Any) -> None:
    status, headers, body = post(obs, dump([
        vital("LCP", 1000), vital("LCP", -5), vital("CLS", 7, url=True), vital("INP", 100)]))
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "out_of_range", "field": "events[1].data.value",
                                "accepted": 2, "rejected": 2}
    assert value(obs, "rum_events_total", type="web_vitals") == 2
    assert value(obs, "rum_events_rejected_total", reason="out_of_range") == 1
    assert value(obs, "rum_events_rejected_total", reason="invalid_type") == 1


def test_nothing_of_the_input_is_echoed(obs: Any) -> None:
    evil = "<script>alert('x')</script>"
    for body in (dump([{"type": evil, "data": {}}]), dump(vital(evil, 1)), evil.encode(),
                 dump([vital("LCP", 1, **{evil: evil})])):
        status, _headers, answer = post(obs, body)
        assert status == 400
        assert b"script" not in answer
        assert b"alert" not in answer


# ---------------------------------------------------------------------- the body cap
class CountingStream(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, n: int | None = -1) -> bytes:
        chunk = super().read(n)
        self.bytes_read += len(chunk)
        return chunk


def test_a_body_over_the_cap_is_413_whatever_content_length_says(obs: Any) -> None:
    big = b" " * (1 << 20)
    stream = CountingStream(big)
    status, _h, body = post(obs, big, stream=stream)  # declared 1 MiB: refused unread
    assert (status, json.loads(body)["error"]) == (413, "body_too_large")
    assert stream.bytes_read == 0
    stream = CountingStream(big)
    status, _h, _b = post(obs, big, stream=stream, length=None)  # chunked: cap + 1 bytes read
    assert status == 413
    assert stream.bytes_read == 65537
    stream = CountingStream(dump(vital("LCP", 1)) + big)
    status, _h, _b = post(obs, b"", stream=stream, length=str(len(dump(vital("LCP", 1)))))
    assert status == 204  # Content-Length: the declared bytes only, the rest is not read
    assert stream.bytes_read == len(dump(vital("LCP", 1)))
    assert value(obs, "rum_events_rejected_total", reason="body_too_large") == 2


def test_the_cap_is_a_setting() -> None:
    with fresh_observability(**BASE, rum_max_body=2048) as obs:
        assert post(obs, dump([vital("LCP", 1)] * 40))[0] == 413
        assert post(obs, dump([vital("LCP", 1)] * 10))[0] == 204


# ---------------------------------------------------------------------- media types
@pytest.mark.parametrize("ctype", [
    None, "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/xml",
    "application/xml", "text/html", "application/jsonx", ""])
def test_other_content_types_get_415(obs: Any, ctype: str | None) -> None:
    headers = [("Content-Type", ctype)] if ctype is not None else [("X-No-Type", "1")]
    endpoint = http_state(obs).endpoints["/api/v1/metrics"]
    body = dump(vital("LCP", 1))
    req = Request("POST", "/api/v1/metrics", [*headers, ("Content-Length", str(len(body)))],
                  read=io.BytesIO(body).read)
    status, _h, answer = endpoint.dispatch(req)
    assert (status, json.loads(answer)) == (415, {"error": "unsupported_media_type",
                                                  "field": "Content-Type"})


@pytest.mark.parametrize("ctype", ["application/json", "text/plain", "text/plain;charset=UTF-8",
                                   "Application/JSON; charset=utf-8"])
def test_json_and_text_plain_are_accepted(obs: Any, ctype: str) -> None:
    assert post(obs, dump(vital("LCP", 1)), ("Content-Type", ctype))[0] == 204


@pytest.mark.parametrize(("encoding", "status"), [
    ("gzip", 415), ("br", 415), ("deflate", 415), ("gzip, identity", 415), ("identity", 204)])
def test_only_the_identity_encoding_is_read(obs: Any, encoding: str, status: int) -> None:
    raw = dump(vital("LCP", 1))
    body = gzip.compress(raw) if encoding != "identity" else raw
    got, _h, answer = post(obs, body, ("Content-Encoding", encoding))
    assert got == status
    if status == 415:
        assert json.loads(answer)["error"] == "unsupported_encoding"


def test_other_methods_get_405_and_the_endpoint_is_not_a_page(shop: Driver) -> None:
    status, headers, _body = shop.call("GET", "/api/v1/metrics")
    assert (status, headers["allow"]) == (405, "POST")
    assert shop.call("PUT", "/api/v1/metrics", body=b"{}")[0] == 405


# ---------------------------------------------------------------------- rate limits
def test_each_client_has_its_own_bucket_and_429_says_when_to_retry() -> None:
    with fresh_observability(**BASE, rum_rate_limit=0.5, rum_rate_burst=3) as obs:
        body = dump(vital("LCP", 1))
        assert [post(obs, body, peer="198.51.100.1")[0] for _ in range(4)] == [204, 204, 204, 429]
        status, headers, answer = post(obs, body, peer="198.51.100.1")
        assert status == 429
        assert json.loads(answer) == {"error": "rate_limited"}
        assert 1 <= int(headers["retry-after"]) <= 2
        assert post(obs, body, peer="198.51.100.2")[0] == 204  # another client
        assert value(obs, "rum_events_rejected_total", reason="rate_limited") == 2


def test_forwarded_for_counts_only_from_trusted_proxies() -> None:
    body = dump(vital("LCP", 1))
    with fresh_observability(**BASE, rum_rate_limit=0.1, rum_rate_burst=1) as obs:
        # an untrusted peer rotating X-Forwarded-For is still one client
        assert post(obs, body, ("X-Forwarded-For", "192.0.2.1"))[0] == 204
        assert post(obs, body, ("X-Forwarded-For", "192.0.2.2"))[0] == 429
    with fresh_observability(**BASE, rum_rate_limit=0.1, rum_rate_burst=1,
                             trusted_proxies=("10.0.0.0/8",)) as obs:
        for client in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
            assert post(obs, body, ("X-Forwarded-For", client), peer="10.1.1.1")[0] == 204
        assert post(obs, body, ("X-Forwarded-For", "192.0.2.1"), peer="10.1.1.1")[0] == 429


def test_ipv6_clients_share_a_bucket_per_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key(None) == "-"
    assert client_key("not-an-ip:x") == "not-an-ip:x"


def test_limiter_memory_is_bounded() -> None:
    now = [0.0]
    buckets = ClientBuckets(1.0, 2.0, clients=100, clock=lambda: now[0])
    for i in range(1_000_000 // 50):
        buckets.take(f"192.0.{i // 256 % 256}.{i % 256}-{i}")
    assert len(buckets) == 100
    with fresh_observability(**BASE, rum_rate_clients=50) as obs:
        for i in range(300):
            post(obs, dump(vital("LCP", 1)), peer=f"198.51.{i // 250}.{i % 250}")
        clients = rum_state(obs).clients
        assert clients is not None
        assert len(clients) == 50


def test_token_bucket_refills_at_its_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(2.0, 2.0, clock=lambda: now[0])
    assert [bucket.take(), bucket.take()] == [0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take() == 0.0


def test_the_process_wide_limit_caps_all_clients_together() -> None:
    with fresh_observability(**BASE, rum_rate_limit=0.0, rum_global_rate_limit=1.0) as obs:
        statuses = [post(obs, dump(vital("LCP", 1)), peer=f"192.0.2.{i}")[0] for i in range(5)]
        assert statuses == [204, 204, 429, 429, 429]  # burst: twice the rate


# ---------------------------------------------------------------------- duplicates
def test_a_report_id_is_counted_once(obs: Any) -> None:
    first = vital("CLS", 0.05, id="v1-abc-CLS", url="/p")
    again = vital("CLS", 0.3, id="v1-abc-CLS", url="/p")  # a later hide: same id, new value
    other = vital("LCP", 900, id="v1-abc-CLS", url="/p")  # same id, another metric: counted
    assert post(obs, dump([first, again, other]))[0] == 204
    assert post(obs, dump([first]))[0] == 204
    assert value(obs, "rum_layout_shift_count", page="<other>") == 1
    assert value(obs, "rum_layout_shift_sum", page="<other>") == 0.05
    assert value(obs, "rum_web_vitals_seconds_count", metric="LCP", page="<other>") == 1
    assert value(obs, "rum_events_duplicate_total") == 2
    assert post(obs, dump([vital("LCP", 1), vital("LCP", 1)]))[0] == 204  # no id: each counted
    assert value(obs, "rum_web_vitals_seconds_count", metric="LCP", page="<other>") == 3


def test_remembered_ids_are_bounded() -> None:
    recent = RecentIds(3)
    assert [recent.seen(k) for k in "abca"] == [False, False, False, True]
    assert [recent.seen(k) for k in "de"] == [False, False]
    assert len(recent) == 3
    assert recent.seen("b") is False  # evicted: counted again (bounded memory)
    with fresh_observability(**BASE, rum_dedup_size=100) as obs:
        for start in range(0, 1000, 50):
            post(obs, dump([vital("LCP", 1, id=f"id-{i}") for i in range(start, start + 50)]))
        state = rum_state(obs)
        assert state.recent is not None
        assert len(state.recent) == 100
    with fresh_observability(**BASE, rum_dedup_size=0) as obs:
        post(obs, dump([vital("LCP", 1, id="x"), vital("LCP", 1, id="x")]))
        assert value(obs, "rum_web_vitals_seconds_count", metric="LCP", page="<other>") == 2


# ---------------------------------------------------------------------- origins and CORS
def test_same_origin_and_originless_reports_are_accepted_foreign_ones_refused(obs: Any) -> None:
    body = dump(vital("LCP", 1))
    host = ("Host", "shop.example")
    assert post(obs, body, host)[0] == 204
    assert post(obs, body, host, ("Origin", "https://shop.example"))[0] == 204
    assert post(obs, body, ("Host", "shop.example:8443"),
                ("Origin", "https://shop.example:8443"))[0] == 204
    for origin in ("https://evil.example", "null", "https://shop.example.evil.example",
                   "https://shop.example:8443", "file://"):
        status, headers, answer = post(obs, body, host, ("Origin", origin))
        assert (status, json.loads(answer)["error"]) == (403, "origin"), origin
        assert "access-control-allow-origin" not in headers
    assert value(obs, "rum_events_rejected_total", reason="origin") == 5


def test_allowed_origins_get_cors_and_a_preflight() -> None:
    shop = "https://shop.example"
    with fresh_observability(**BASE, rum_allowed_origins=(shop,)) as obs:
        body = dump(vital("LCP", 1))
        status, headers, _b = post(obs, body, ("Host", "api.example"), ("Origin", shop))
        assert status == 204
        assert headers["access-control-allow-origin"] == shop
        assert headers["vary"] == "Origin"
        status, headers, _b = post(obs, body, ("Host", "api.example"),
                                   ("Origin", "https://evil.example"))
        assert status == 403
        assert "access-control-allow-origin" not in headers
        endpoint = http_state(obs).endpoints["/api/v1/metrics"]
        pre = endpoint.dispatch(Request("OPTIONS", "/api/v1/metrics", [
            ("Origin", shop), ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type")]))
        got = dict(pre.headers)
        assert pre.status == 204
        assert got["Access-Control-Allow-Origin"] == shop
        assert got["Access-Control-Allow-Methods"] == "POST, OPTIONS"
        assert got["Access-Control-Allow-Headers"] == "Content-Type"
        bad = endpoint.dispatch(Request("OPTIONS", "/api/v1/metrics", [
            ("Origin", "null"), ("Access-Control-Request-Method", "POST")]))
        assert "Access-Control-Allow-Origin" not in dict(bad.headers)


def test_the_origin_check_can_be_turned_off_and_honours_trusted_forwarded_host() -> None:
    body = dump(vital("LCP", 1))
    with fresh_observability(**BASE, rum_check_origin=False) as obs:
        assert post(obs, body, ("Host", "a.example"), ("Origin", "https://b.example"))[0] == 204
    with fresh_observability(**BASE, trusted_proxies=("10.0.0.0/8",)) as obs:
        forwarded = (("Host", "internal:8000"), ("X-Forwarded-Host", "shop.example"),
                     ("Origin", "https://shop.example"))
        assert post(obs, body, *forwarded, peer="10.0.0.2")[0] == 204
        assert post(obs, body, *forwarded, peer="192.0.2.9")[0] == 403  # not from a proxy


@pytest.mark.parametrize("bad", ["null", "https://shop.example/path", "shop.example", "ftp:/x"])
def test_allowed_origins_must_be_origins(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="rum_allowed_origins"):
        ObservabilityConfig(rum_allowed_origins=(bad,))
    ObservabilityConfig(rum_allowed_origins=("*", "http://127.0.0.1:8000"))


# ---------------------------------------------------------------------- exemplars
def exemplars(obs: Any) -> list[str]:
    body = obs.render_metrics(accept=OPENMETRICS).body.decode()
    return [line for line in body.splitlines() if line.startswith("rum_") and " # {" in line]


def test_a_valid_page_trace_id_becomes_the_exemplar(obs: Any) -> None:
    post(obs, dump([vital("LCP", 3000, trace_id=TRACE),
                    {"type": "errors", "data": {"type": "javascript", "trace_id": TRACE}},
                    {"type": "business_events",
                     "data": {"event": "add_to_cart", "trace_id": TRACE}}]))
    lines = exemplars(obs)
    assert any(line.startswith('rum_web_vitals_seconds_bucket{le="3.0",metric="LCP"')
               and f'trace_id="{TRACE}"' in line for line in lines), lines
    assert any(line.startswith("rum_js_errors_total") for line in lines)
    assert any(line.startswith("rum_business_events_total") for line in lines)
    assert all(f'{{trace_id="{TRACE}"}}' in line for line in lines)


@pytest.mark.parametrize("trace", ["0" * 32, TRACE.upper(), TRACE[:31], "x" * 32, "", TRACE + "0"])
def test_an_invalid_trace_id_gives_no_exemplar(obs: Any, trace: str) -> None:
    assert post(obs, dump(vital("LCP", 3000, trace_id=trace)))[0] == 204
    assert exemplars(obs) == []


def test_no_exemplars_when_they_are_off() -> None:
    with fresh_observability(**BASE, exemplars=False) as obs:
        post(obs, dump(vital("LCP", 3000, trace_id=TRACE)))
        assert exemplars(obs) == []


# ---------------------------------------------------------------------- pages
def test_page_groups_route_then_mapping_then_fallback() -> None:
    with fresh_observability(**BASE, rum_page_groups={"/blog": "blog", "/docs/*/v2*": "docs-v2",
                                                      "/docs": "docs"},
                             rum_page_fallback="elsewhere") as obs:
        shop = flask_driver(obs)
        urls = {"https://x.example/products/espresso?token=secret#frag": "/products/<product_id>",
                "/blog": "blog", "/blog/2024/post?utm=secret": "blog", "/blogger": "elsewhere",
                "/docs/a/v2/page": "docs-v2", "/docs/a/v1": "docs", "/": "/",
                "/unknown": "elsewhere", "relative": "elsewhere"}
        batch = [vital("LCP", 1, url=u) for u in urls]
        assert shop.post(dump(batch))[0] == 204
        assert shop.post(dump(vital("LCP", 1)))[0] == 204  # no url: the fallback
        want: dict[str, float] = {}
        for page in urls.values():
            want[page] = want.get(page, 0) + 1
        want["elsewhere"] += 1
        for page, n in want.items():
            assert value(obs, "rum_web_vitals_seconds_count", metric="LCP", page=page) == n, page
        assert "secret" not in obs.render_metrics().body.decode()


def test_page_group_matching() -> None:
    groups = PageGroups({"/a/*": "a", "/b": "b", "/": "root"}, "none")
    assert groups.group("/a/1") == "a"
    assert groups.group("/b/c") == "b"
    assert groups.group("/bc") == "root"
    assert groups.group(None) == "none"
    assert groups.group("/a/1", lambda p: "/a/<id>") == "/a/<id>"
    assert groups.group("/a/1", lambda p: None) == "a"

    def broken(path: str) -> str:
        raise RuntimeError("matcher bug")

    assert groups.group("/b", broken) == "b"
    assert PageGroups({}, "none").group("/x") == "none"


def test_page_group_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="rum_page_groups"):
        ObservabilityConfig(rum_page_groups={"blog": "blog"})
    with pytest.raises(ConfigurationError, match="rum_page_groups"):
        ObservabilityConfig(rum_page_groups={"/blog": "x" * 129})
    cfg = ObservabilityConfig.from_env({"MESTRES_OBS_RUM_PAGE_GROUPS": "/blog=blog,/docs/*=docs"})
    assert cfg.rum_page_groups == {"/blog": "blog", "/docs/*": "docs"}


# ---------------------------------------------------------------------- browser_error
def error_event(**data: Any) -> dict[str, Any]:
    return {"type": "errors", "data": {"type": "javascript", **data}}


def test_javascript_errors_are_logged_with_fixed_keys_redacted_and_truncated(obs: Any) -> None:
    with capture_logs() as events:
        post(obs, dump([error_event(
            message="card 4111 1111 1111 1111 failed, password=hunter2",
            filename="https://shop.example/app.js?token=abc#x",
            lineno=10, colno=5, trace_id=TRACE, url="/p?q=secret",
            stack="Error: x\n  at pay (https://shop.example/app.js?session=s3cr3t:10:5)\n"
                  "  Authorization: Bearer abcdefghijklmnop" + "y" * 3900)]))
    (line,) = [e for e in events if e["event"] == "browser_error"]
    assert set(line) - {"level", "logger", "timestamp", "service", "logger_name"} == {
        "event", "error_type", "message", "source", "line", "column", "stack", "page",
        "trace_id"}
    assert line["level"] == "warning"
    assert line["error_type"] == "javascript"
    assert "4111" not in line["message"]
    assert "hunter2" not in line["message"]
    assert line["source"] == "https://shop.example/app.js"
    assert (line["line"], line["column"], line["page"], line["trace_id"]) == (10, 5, "<other>",
                                                                              TRACE)
    assert "s3cr3t" not in line["stack"]
    assert "abcdefghijklmnop" not in line["stack"]
    assert "app.js:10:5" in line["stack"]
    assert len(line["stack"]) <= 4200
    assert "secret" not in json.dumps(line)


def test_input_never_becomes_a_log_key(obs: Any) -> None:
    with capture_logs() as events:
        post(obs, dump([error_event(message="m", evil_key=1),
                        error_event(message="ok")]))
    lines = [e for e in events if e["event"] == "browser_error"]
    assert len(lines) == 1
    assert "evil_key" not in lines[0]


def test_a_flood_of_errors_is_sampled_not_logged_line_by_line() -> None:
    with fresh_observability(**BASE, rum_error_log_limit=5, rum_rate_limit=0.0) as obs, \
            capture_logs() as events:
        for _ in range(10):
            post(obs, dump([error_event(message=f"e{i}") for i in range(10)]))
        lines = [e for e in events if e["event"] == "browser_error"]
        assert len(lines) == 5
        assert value(obs, "rum_js_errors_total", type="javascript", page="<other>") == 100
        budget = rum_state(obs).log_budget
        assert budget.bucket is not None
        budget.bucket._tokens = 1.0  # a minute later
        post(obs, dump([error_event(message="after")]))
        last = [e for e in events if e["event"] == "browser_error"][-1]
        assert (last["message"], last["suppressed"]) == ("after", 95)
    with fresh_observability(**BASE, rum_error_log_limit=0) as obs, capture_logs() as events:
        post(obs, dump([error_event(message="x")]))
        assert [e for e in events if e["event"] == "browser_error"] == []
        assert value(obs, "rum_js_errors_total", type="javascript", page="<other>") == 1


# ---------------------------------------------------------------------- HTTP pass
def ingest_lines(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "http_request"
            and e.get("endpoint") == "/api/v1/metrics"]


def test_counted_under_its_route_not_traced_not_access_logged() -> None:
    with fresh_observability(rum_enabled=True) as obs, captured_spans() as spans, \
            capture_logs() as events:
        shop = flask_driver(obs)
        assert shop.post(dump(vital("LCP", 1)))[0] == 204
        assert shop.post(b"junk")[0] == 400
        assert shop.call("GET", "/")[0] == 200
        for status in ("204", "400"):
            assert value(obs, "http_requests_total", method="POST", endpoint="/api/v1/metrics",
                         status=status) == 1
        assert spans.names() == ["GET /"]
        assert ingest_lines(events) == []
        assert value(obs, "http_requests_total", method="GET", endpoint="/observability/rum.js",
                     status="200") == 0
        shop.call("GET", "/observability/rum.js")
        assert value(obs, "http_requests_total", method="GET", endpoint="/observability/rum.js",
                     status="200") == 0  # the script is a library endpoint like /metrics


def test_spans_and_access_log_lines_when_asked_for() -> None:
    with fresh_observability(rum_enabled=True, rum_server_spans=True, rum_access_log=True) as obs, \
            captured_spans() as spans, capture_logs() as events:
        shop = flask_driver(obs)
        assert shop.post(dump(vital("LCP", 1)))[0] == 204
        assert spans.names() == ["POST /api/v1/metrics"]
        (line,) = ingest_lines(events)
        assert line["status_code"] == 204


def test_explicit_excluded_paths_decide() -> None:
    with fresh_observability(**BASE, excluded_paths=("/api/*",)) as obs:
        shop = flask_driver(obs)
        assert shop.post(dump(vital("LCP", 1)))[0] == 204
        assert value(obs, "http_requests_total", method="POST", endpoint="/api/v1/metrics",
                     status="204") == 0
        assert value(obs, "rum_events_total", type="web_vitals") == 1
    with fresh_observability(rum_enabled=True, excluded_paths=("/health",)) as obs, \
            captured_spans() as spans:
        shop = flask_driver(obs)
        shop.post(dump(vital("LCP", 1)))
        assert value(obs, "http_requests_total", method="POST", endpoint="/api/v1/metrics",
                     status="204") == 1
        assert spans.names() == []  # rum_server_spans still decides


def test_ordinary_requests_do_not_take_the_measured_path(obs: Any) -> None:
    state = http_state(obs)
    assert set(state.measured) == {"/api/v1/metrics"}
    assert state.excluded("/api/v1/metrics")  # never through the ordinary start
    assert not state.excluded("/products/1")
    quiet = state.measured["/api/v1/metrics"]
    assert (quiet.tracing, quiet.access_log, quiet.server_timing) == (False, False, False)
    assert not quiet.excluded("/api/v1/metrics")
    assert quiet.requests_child is state.requests_child


# ---------------------------------------------------------------------- on and off
def test_off_by_default_and_off_paths() -> None:
    with fresh_observability() as obs:
        shop = flask_driver(obs)
        assert shop.post(dump(vital("LCP", 1)))[0] == 404  # the app's own 404
        assert shop.call("GET", "/observability/rum.js")[0] == 404
        assert "rum_" not in obs.render_metrics().body.decode()
    with fresh_observability(**BASE, rum_path="", rum_script_path="/static/rum.js") as obs:
        shop = flask_driver(obs)
        assert shop.post(dump(vital("LCP", 1)))[0] == 404
        assert shop.call("GET", "/static/rum.js")[0] == 200
        assert b'"endpoint":' not in shop.call("GET", "/static/rum.js")[2]


def test_the_master_switch_answers_and_records_nothing() -> None:
    with fresh_observability(**BASE, enabled=False) as obs:
        assert post(obs, dump(vital("LCP", 1)))[0] == 204
        assert "rum_" not in obs.render_metrics().body.decode()


def test_a_fault_is_counted_and_answered_without_detail(obs: Any, monkeypatch: Any) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("internal detail /etc/passwd")

    monkeypatch.setattr(rum_state(obs), "process", broken)
    status, headers, body = post(obs, dump(vital("LCP", 1)))
    assert (status, body) == (500, b'{"error": "internal"}')
    assert headers["cache-control"] == "no-store"
    assert value(obs, "mestres_observability_errors_total", component="http") == 1


@pytest.mark.parametrize(("setting", "bad"), [
    ("rum_vitals_buckets", (0.1, 0.5, 1.0)), ("rum_cls_buckets", (0.1, 0.2)),
    ("rum_vitals_buckets", (0.2, 0.1, 0.5, 0.8, 1.8, 2.5, 3.0, 4.0)), ("rum_sample_rate", 1.5),
    ("rum_business_events", ("has space",)), ("rum_max_body", 10), ("rum_path", "api"),
])
def test_bad_settings_fail_at_init_naming_the_setting(setting: str, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        ObservabilityConfig(**{setting: bad})


def test_buckets_hold_every_threshold() -> None:
    cfg = ObservabilityConfig()
    for t in (0.2, 0.5, 0.8, 1.8, 2.5, 3.0, 4.0, 0.1, 0.3):
        assert t in cfg.rum_vitals_buckets
    assert {0.1, 0.25} <= set(cfg.rum_cls_buckets)


# ---------------------------------------------------------------------- the snippet route
def test_the_snippet_is_served_with_the_settings_filled_in() -> None:
    with fresh_observability(**BASE, rum_path="/rum/collect", rum_sample_rate=0.25) as obs:
        shop = flask_driver(obs)
        status, headers, body = shop.call("GET", "/observability/rum.js")
        assert status == 200
        assert headers["content-type"] == "text/javascript; charset=utf-8"
        assert headers["cache-control"] == "public, max-age=3600"
        assert headers["x-content-type-options"] == "nosniff"
        text = body.decode()
        assert text == script_text("/rum/collect", 0.25)
        assert '{"sample":0.25,"endpoint":"/rum/collect"});' in text
        assert text.replace('{"sample":0.25,"endpoint":"/rum/collect"}', "{}/*cfg*/") \
            == script_source()
        etag = headers["etag"]
        status, headers304, body304 = shop.call("GET", "/observability/rum.js",
                                                [("If-None-Match", etag)])
        assert (status, body304, headers304["etag"]) == (304, b"", etag)
        status, zipped_headers, zipped = shop.call("GET", "/observability/rum.js",
                                                   [("Accept-Encoding", "gzip, br")])
        assert zipped_headers["content-encoding"] == "gzip"
        assert gzip.decompress(zipped) == body
        assert shop.call("HEAD", "/observability/rum.js")[2] == b""
        assert shop.call("POST", "/observability/rum.js", body=b"x")[0] == 405


def test_script_tag() -> None:
    with fresh_observability(**BASE) as obs:
        assert script_tag(obs) == ('<script src="/observability/rum.js" '
                                   'data-endpoint="/api/v1/metrics" async></script>')
        assert script_tag(obs, sample_rate=0.1, defer=True).endswith(
            'data-sample-rate="0.1" defer></script>')


def test_the_snippet_fits_the_size_budget() -> None:
    brotli = pytest.importorskip("brotli")
    raw = SCRIPT_FILE.read_bytes()
    served = script_text("/api/v1/metrics", 1.0).encode()
    for data in (raw, served):
        size = len(brotli.compress(data, quality=11))
        assert size <= 4096, f"rum.js is {size} bytes brotli, budget 4096"
    assert len(gzip.compress(raw, 9)) <= 4700
    assert raw.isascii()  # no encoding surprises in any page


def test_the_snippet_and_the_schema_are_package_data() -> None:
    import fnmatch
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    root = SCRIPT_FILE.parents[3]
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["mestres_observability"]
    for path in (SCRIPT_FILE, SCHEMA_FILE):
        relative = path.relative_to(root / "mestres_observability").as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative
    assert script_source() == SCRIPT_FILE.read_text(encoding="utf-8")
