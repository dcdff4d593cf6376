"""The framework-agnostic request pass (mestres_observability.http)."""

from __future__ import annotations

import base64
import functools
import ipaddress
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mestres_observability.config import ObservabilityConfig
from mestres_observability.errors import ConfigurationError
from mestres_observability.http import (
    UNMATCHED,
    bound_user_id,
    check_metrics_auth,
    client_address,
    http_state,
    new_request_id,
    normalize_method,
    redact_query,
    safe_request_id,
    serve_endpoint,
    split_host,
    start_request,
    status_label,
)
from mestres_observability.testing import fresh_observability, sample_value

from .conftest import (
    PARENT_ID,
    SECRET_VALUES,
    TRACE_ID,
    TRACEPARENT,
    sensitive_name_variants,
    use_memory_tracer,
)

_SAFE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.mark.parametrize(
    ("method", "expected"),
    [("GET", "GET"), ("PATCH", "PATCH"), ("FOO", "_OTHER"), ("get", "_OTHER"), ("", "_OTHER")],
)
def test_methods_outside_the_standard_set_become_other(method: str, expected: str) -> None:
    assert normalize_method(method) == expected


def test_status_labels() -> None:
    assert status_label(404) == "404"
    assert status_label(404, grouped=True) == "4xx"
    assert status_label(503, grouped=True) == "5xx"


@pytest.mark.parametrize("value", ["abc-123", "A.b_c-9", "x" * 128])
def test_safe_request_ids_are_kept(value: str) -> None:
    assert safe_request_id(value) == value


@pytest.mark.parametrize(
    "value",
    [None, "", "x" * 129, "a\r\nSet-Cookie: x=1", "x" * 10_240, "caf\u00e9", "../etc", "a b"],
)
def test_unsafe_request_ids_are_replaced_by_a_uuid4(value: str | None) -> None:
    out = safe_request_id(value)
    assert out != value
    assert _UUID4.fullmatch(out)


@given(st.text(max_size=300))
def test_request_id_is_always_safe(value: str) -> None:
    out = safe_request_id(value)
    assert _SAFE.fullmatch(out)
    assert (out == value) == bool(_SAFE.fullmatch(value))


def test_query_secrets_are_redacted() -> None:
    keys = frozenset({"token", "password", "key", "api_key"})
    out = redact_query("page=2&token=s3cr3t&Password=hunter2&api-key=k&to%6Ben=x&q=a", keys)
    assert "s3cr3t" not in out
    assert "hunter2" not in out
    assert "=k&" not in out
    assert "=x" not in out
    assert out.startswith("page=2&token=[REDACTED]&Password=[REDACTED]")
    assert out.endswith("&q=a")


@given(
    st.sampled_from(["token", "password", "secret", "api_key", "TOKEN"]),
    st.text(alphabet=st.characters(codec="ascii", exclude_characters="&"), min_size=6),
    st.lists(st.tuples(st.sampled_from(["page", "q", "sort"]),
                       st.text(alphabet="abc123", max_size=5)), max_size=3),
)
def test_redaction_never_leaks_a_sensitive_value(
    key: str, secret: str, others: list[tuple[str, str]]
) -> None:
    secret = "SECRET" + secret
    parts = [f"{k}={v}" for k, v in others] + [f"{key}={secret}"]
    out = redact_query("&".join(parts), frozenset({"token", "password", "secret", "api_key"}))
    assert secret not in out
    for k, v in others:
        assert f"{k}={v}" in out


@functools.cache
def _state_redactor() -> Any:
    """The request pass's query redaction with the default settings."""
    with fresh_observability(tracing_enabled=False) as obs:
        return http_state(obs).redact_query


@pytest.mark.parametrize(("query", "expected"), [
    ("X-Amz-Signature=fe5f80&X-Amz-Date=20240101T000000Z",
     "X-Amz-Signature=[REDACTED]&X-Amz-Date=20240101T000000Z"),
    ("oauth_signature=tR3%2BTy8%3D&oauth_nonce=abc", "oauth_signature=[REDACTED]&oauth_nonce=abc"),
    ("auth_code=Splx&state=xyz", "auth_code=[REDACTED]&state=xyz"),
    ("code=Splx&state=xyz", "code=[REDACTED]&state=xyz"),
    ("user[password]=hunter2&user[name]=bob", "user[password]=[REDACTED]&user[name]=bob"),
    ("user%5Bpassword%5D=hunter2", "user%5Bpassword%5D=[REDACTED]"),
    ("user%255Bpassword%255D=hunter2", "user%255Bpassword%255D=[REDACTED]"),  # twice encoded
    ("password[]=a&password[]=b", "password[]=[REDACTED]&password[]=[REDACTED]"),
    ("sessionid=9f86&PHPSESSID=1&JSESSIONID=2", "sessionid=[REDACTED]&PHPSESSID=[REDACTED]"
                                                "&JSESSIONID=[REDACTED]"),
    ("accessToken=x&apiKey=y&clientSecret=z",
     "accessToken=[REDACTED]&apiKey=[REDACTED]&clientSecret=[REDACTED]"),
    ("api+key=k&api%20key=k2", "api+key=[REDACTED]&api%20key=[REDACTED]"),
    ("card=4111+1111+1111+1111", "card=[REDACTED]"),
    ("card=4111%201111%201111%201111", "card=[REDACTED]"),
    ("card=4111-1111-1111-1111&order=4111111111111112", "card=[REDACTED]&order=4111111111111112"),
    ("next=postgres%3A%2F%2Fu%3Apw%40db", "next=[REDACTED]"),
    ("next=postgres://u:pw@db/x", "next=[REDACTED]"),
    ("h=Bearer%20tok", "h=[REDACTED]"),
    ("h=basic+dTpw", "h=[REDACTED]"),
    ("t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", "t=[REDACTED]"),
    ("back=%2Flogin%3Fpassword%3Dhunter2", "back=[REDACTED]"),
    ("a=1;sessionid=abc;b=2", "a=1;sessionid=[REDACTED];b=2"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", "[REDACTED]"),
])
def test_query_secrets_by_name_and_by_value(query: str, expected: str) -> None:
    assert _state_redactor()(query) == expected


@pytest.mark.parametrize("query", [
    "", "page=2", "page=2&sort=name&q=a%20b", "country_code=US&zip_code=12345&status_code=200",
    "sort_key=name&tokens_used=5&monkey=1&codec=h264", "q=caf%C3%A9+au+lait&x=%ZZ&&=&k",
    "ts=2024-01-01T10:00:00Z&url=https%3A%2F%2Fexample.com%2Fa", "password=&token",
    "order_id=1234567890123",  # 13 digits failing Luhn: an id, kept
])
def test_harmless_queries_are_kept_exactly_as_sent(query: str) -> None:
    assert _state_redactor()(query) is query


_HARMLESS = st.lists(st.tuples(st.sampled_from(["page", "q", "sort", "lang"]),
                               st.text(alphabet="abc123", max_size=5)), max_size=3)


@given(sensitive_name_variants(), SECRET_VALUES, _HARMLESS)
def test_a_sensitive_name_in_any_encoding_never_shows_its_value(
        name: str, value: str, others: list[tuple[str, str]]) -> None:
    parts = [f"{k}={v}" for k, v in others] + [f"{name}={value}"]
    out = _state_redactor()("&".join(parts))
    assert value not in out
    assert value not in urllib.parse.unquote_plus(out)
    assert f"{name}=[REDACTED]" in out  # the shape: the name as sent
    for k, v in others:
        assert f"{k}={v}" in out


def test_client_address_honours_forwarded_for_only_from_trusted_proxies() -> None:
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    assert client_address("203.0.113.9", "1.2.3.4", trusted) == "203.0.113.9"  # spoofed
    assert client_address("10.0.0.2", "198.51.100.7", trusted) == "198.51.100.7"
    assert client_address("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.0.0.5", trusted) == (
        "198.51.100.7")
    assert client_address("10.0.0.2", "garbage, 10.0.0.9", trusted) == "10.0.0.9"
    assert client_address("10.0.0.2", "1.2.3.4", ()) == "10.0.0.2"


def test_bad_trusted_proxy_fails_at_setup() -> None:
    with fresh_observability(trusted_proxies=("not-an-ip",)) as obs, pytest.raises(
        ConfigurationError, match="trusted_proxies"
    ):
        http_state(obs)


def test_split_host() -> None:
    assert split_host("example.com:8080") == ("example.com", 8080)
    assert split_host("example.com") == ("example.com", None)
    assert split_host("[::1]:80") == ("::1", 80)
    assert split_host("::1") == ("::1", None)


def test_exclusion_patterns() -> None:
    with fresh_observability(excluded_paths=("/static/*", "/ping")) as obs:
        state = http_state(obs)
        assert state.excluded("/static/app.js")
        assert state.excluded("/ping")
        assert not state.excluded("/pingx")
        assert not state.excluded("/metrics")  # explicit list replaces the default
        assert start_request(state, "GET", "/static/x") is None


def test_library_endpoints_are_excluded_by_default() -> None:
    with fresh_observability() as obs:
        state = http_state(obs)
        for path in ("/metrics", "/health", "/health/readiness", "/health/liveness"):
            assert state.excluded(path)


def test_request_pass_finishes_once_and_restores_in_progress() -> None:
    with fresh_observability(tracing_enabled=False, access_log=False) as obs:
        state = http_state(obs)
        rp = start_request(state, "GET", "/x", route="/x")
        assert rp is not None
        rp.track_in_progress()
        assert sample_value("http_requests_in_progress", method="GET", endpoint="/x") == 1
        rp.finish(200)
        rp.finish(500)
        assert sample_value("http_requests_total", method="GET", endpoint="/x", status="200") == 1
        assert sample_value("http_requests_total", method="GET", endpoint="/x", status="500") == 0
        assert sample_value("http_requests_in_progress", method="GET", endpoint="/x") == 0
        unmatched = start_request(state, "FOO", "/nope")
        assert unmatched is not None
        unmatched.finish(404)
        assert sample_value(
            "http_requests_total", method="_OTHER", endpoint=UNMATCHED, status="404") == 1


def test_grouped_status() -> None:
    with fresh_observability(group_status_codes=True, access_log=False) as obs:
        rp = start_request(http_state(obs), "GET", "/x", route="/x")
        assert rp is not None
        rp.finish(503)
        assert sample_value("http_requests_total", method="GET", endpoint="/x", status="5xx") == 1


def test_disabled_measures_nothing_but_endpoints_answer() -> None:
    with fresh_observability(enabled=False) as obs:
        state = http_state(obs)
        assert start_request(state, "GET", "/x") is None
        status, _headers, body = serve_endpoint(obs, "metrics", "GET")
        assert status == 200
        assert body.startswith(b"#") or body == b""


def _basic(user_pass: str) -> str:
    return "Basic " + base64.b64encode(user_pass.encode()).decode()


def test_metrics_auth_bearer_and_basic() -> None:
    bearer = ObservabilityConfig(metrics_auth="bearer:tok3n")
    assert check_metrics_auth(bearer, "Bearer tok3n")
    assert not check_metrics_auth(bearer, "Bearer tok3")
    assert not check_metrics_auth(bearer, None)
    assert not check_metrics_auth(bearer, _basic("a:tok3n"))
    basic = ObservabilityConfig(metrics_auth="basic:scraper:pa:ss")
    assert check_metrics_auth(basic, _basic("scraper:pa:ss"))
    assert not check_metrics_auth(basic, _basic("scraper:nope"))
    assert not check_metrics_auth(basic, "Basic %%%")
    assert check_metrics_auth(ObservabilityConfig(), None)


def test_metrics_endpoint_statuses() -> None:
    with fresh_observability(metrics_auth="bearer:tok") as obs:
        status, headers, _ = serve_endpoint(obs, "metrics", "GET")
        assert status == 401
        assert dict(headers)["WWW-Authenticate"].startswith("Bearer")
        status, headers, body = serve_endpoint(obs, "metrics", "GET", authorization="Bearer tok")
        assert status == 200
        assert b"http_requests_total" in body
        status, headers, head_body = serve_endpoint(obs, "metrics", "HEAD",
                                                    authorization="Bearer tok")
        assert status == 200
        assert head_body == b""
        assert int(dict(headers)["Content-Length"]) > 0
        status, headers, _ = serve_endpoint(obs, "metrics", "POST", authorization="Bearer tok")
        assert status == 405
        assert dict(headers)["Allow"] == "GET, HEAD"


def test_separate_metrics_listener() -> None:
    from mestres_observability._metrics_server import (
        metrics_server_address,
        start_metrics_server,
        stop_metrics_server,
    )

    with fresh_observability(metrics_port=0, metrics_auth="bearer:tok") as obs:
        assert http_state(obs).endpoints.get("/metrics") is None  # not on the app
        try:
            address = start_metrics_server(obs)
            assert address is not None
            assert start_metrics_server(obs) == address  # started once
            url = f"http://{address[0]}:{address[1]}/metrics"
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(url, timeout=5)
            assert err.value.code == 401
            err.value.close()
            req = urllib.request.Request(url, headers={"Authorization": "Bearer tok"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.status == 200
                assert b"http_requests_total" in resp.read()
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=5)
            assert err.value.code == 404
            err.value.close()
        finally:
            stop_metrics_server()
        assert metrics_server_address() is None


def test_unprotected_metrics_warning_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    import mestres_observability.http as http_module

    http_module._warned.discard("unit-test")
    with fresh_observability() as obs, caplog.at_level("WARNING", "mestres_observability"):
        http_module.warn_unprotected_metrics(obs, "unit-test")
        http_module.warn_unprotected_metrics(obs, "unit-test")
    assert sum("without protection" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    http_module._warned.discard("unit-test")
    with fresh_observability(metrics_auth="bearer:x") as obs, caplog.at_level("WARNING"):
        http_module.warn_unprotected_metrics(obs, "unit-test")
    assert not any("without protection" in r.getMessage() for r in caplog.records)


def test_new_request_ids_are_distinct_uuid4s() -> None:
    ids = [new_request_id() for _ in range(1000)]  # several draws of the pool
    assert len(set(ids)) == len(ids)
    assert all(_UUID4.fullmatch(i) for i in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_does_not_reuse_the_parents_request_ids() -> None:
    new_request_id()  # the pool now holds ids drawn by this process
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write, "".join(new_request_id() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 4096).decode()
    os.close(read)
    parent = "".join(new_request_id() for _ in range(3))
    assert len(child) == 3 * 36
    assert child != parent
    assert not {child[i:i + 36] for i in range(0, 108, 36)} & {
        parent[i:i + 36] for i in range(0, 108, 36)}


def test_server_span_parent_baggage_and_one_exemplar_for_both_series() -> None:
    from opentelemetry import baggage, trace

    with fresh_observability(access_log=False) as obs:
        exporter = use_memory_tracer(obs)
        state = http_state(obs)
        rp = start_request(state, "GET", "/orders/7", route="/orders/{id}", peer="10.0.0.1",
                           server_address="shop.example:8443", user_agent="ua/1",
                           trace_headers={"traceparent": TRACEPARENT, "baggage": "tenant=t1"})
        assert rp is not None
        rp.activate()
        try:
            assert baggage.get_baggage("tenant") == "t1"
            assert trace.get_current_span() is rp.span
        finally:
            rp.deactivate()
        rp.finish(503)
        (sp,) = exporter.get_finished_spans()
        assert sp.parent is not None
        assert format(sp.parent.span_id, "016x") == PARENT_ID
        assert format(sp.context.trace_id, "032x") == TRACE_ID
        assert sp.name == "GET /orders/{id}"
        assert sp.attributes is not None
        assert sp.attributes["server.address"] == "shop.example"
        assert sp.attributes["server.port"] == 8443
        assert sp.attributes["client.address"] == "10.0.0.1"
        assert sp.attributes["http.response.status_code"] == 503
        assert sp.attributes["error.type"] == "503"
        exemplars = [
            sample.exemplar for metric in obs.registry.collect() for sample in metric.samples
            if sample.name in ("http_requests_total", "http_request_duration_seconds_bucket")
            and sample.exemplar is not None
        ]
        expected = {"trace_id": TRACE_ID, "span_id": format(sp.context.span_id, "016x")}
        assert len(exemplars) == 2
        assert all(e.labels == expected for e in exemplars)


def test_bound_user_id_and_request_id_binding_follow_the_context() -> None:
    import contextvars

    import structlog

    from mestres_observability.logs import bind_context, set_user_id

    def scenario() -> list[object]:
        seen: list[object] = [bound_user_id()]
        set_user_id("u-1")
        seen.append(bound_user_id())
        structlog.contextvars.bind_contextvars(user_id=7)  # structlog's own API works too
        seen.append(bound_user_id())
        structlog.contextvars.unbind_contextvars("user_id")
        seen.append(bound_user_id())
        bind_context(user_id="u-2")
        seen.append(bound_user_id())
        structlog.contextvars.clear_contextvars()
        seen.append(bound_user_id())
        return seen

    assert contextvars.copy_context().run(scenario) == [None, "u-1", 7, None, "u-2", None]

    def request_ids() -> list[object]:
        with fresh_observability(tracing_enabled=False) as obs:
            state = http_state(obs)
            seen: list[object] = []
            structlog.contextvars.bind_contextvars(request_id="outer")
            for rid in ("first", "second"):
                rp = start_request(state, "GET", "/x", request_id=rid)
                assert rp is not None
                rp.activate()
                seen.append(structlog.contextvars.get_contextvars().get("request_id"))
                rp.deactivate()
                seen.append(structlog.contextvars.get_contextvars().get("request_id"))
            return seen

    # bound for the request, and the value from before is back after it, every time
    assert contextvars.copy_context().run(request_ids) == ["first", "outer", "second", "outer"]


def test_fields_bound_during_a_request_are_undone_when_it_ends() -> None:
    import contextvars

    import structlog

    from mestres_observability.logs import bind_context, set_user_id

    def scenario() -> list[dict[str, object]]:
        with fresh_observability(tracing_enabled=False) as obs:
            state = http_state(obs)
            bind_context(tenant="outer")
            seen = []
            for rid in ("first", "second"):
                rp = start_request(state, "GET", "/a", request_id=rid)
                assert rp is not None
                rp.activate()
                seen.append(structlog.contextvars.get_contextvars())
                set_user_id("u-1")
                bind_context(tenant="inner", cart=3)
                rp.deactivate()
                seen.append(structlog.contextvars.get_contextvars())
            return seen

    # a thread serving one request after another (WSGI) starts each one clean
    assert contextvars.copy_context().run(scenario) == [
        {"tenant": "outer", "request_id": "first"}, {"tenant": "outer"},
        {"tenant": "outer", "request_id": "second"}, {"tenant": "outer"},
    ]
