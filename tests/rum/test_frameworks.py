"""The RUM endpoint through Flask, Starlette and Django (WSGI and ASGI), at their raw interfaces.

* hypothesis-generated junk (random JSON, wrong types, NaN/Infinity, 1e308,
  deep nesting, long strings, binary, lone surrogates, lying or absent
  ``Content-Length``, chunked bodies, other content types and encodings,
  foreign origins, other methods) never gets a 5xx, a traceback or a fault,
  and never adds a series outside the bounds;
* 10,000 random URLs and event names add at most the bounded series;
* page groups are the framework's own route templates;
* the HTTP metrics count the endpoint under its own route, without a span;
* ``Server-Timing`` carries the page's trace context on HTML responses only;
* Django: the generated URL patterns take beacons without a CSRF token.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mestres_observability.rum import REASONS, TYPES
from mestres_observability.rum._schema import METRICS
from mestres_observability.testing import captured_spans, fresh_observability, sample_value
from tests.rum._apps import DRIVERS, HTML, Driver, django_ready

ALLOWED = {"product_viewed", "order_completed", "add_to_cart", "checkout_started"}
FALLBACK = "<other>"
#: per framework: a URL of a parameterised route, and its template
PARAM_ROUTE = {
    "flask": ("/products/{}", "/products/<product_id>"),
    "starlette": ("/products/{}", "/products/{product_id}"),
    "django-wsgi": ("/orders/{}", "/orders/<int:order_id>"),
    "django-asgi": ("/orders/{}", "/orders/<int:order_id>"),
}
RUM_SETTINGS: dict[str, Any] = {
    "rum_enabled": True, "rum_rate_limit": 0.0, "rum_global_rate_limit": 0.0,
    "tracing_enabled": False,
}


@pytest.fixture(scope="module")
def django_setup() -> Iterator[None]:
    yield from django_ready()


@pytest.fixture(params=list(DRIVERS))
def framework(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name.startswith("django"):
        request.getfixturevalue("django_setup")  # before the instance: ready() initialises one
    return name


@pytest.fixture
def obs(framework: str) -> Iterator[Any]:
    with fresh_observability(**RUM_SETTINGS) as instance:
        yield instance


@pytest.fixture
def driver(framework: str, obs: Any) -> Driver:
    return DRIVERS[framework](obs)


def labels_of(obs: Any) -> dict[str, list[dict[str, str]]]:
    """Label sets of every rum_* family's primary samples (histograms: their _count)."""
    out: dict[str, list[dict[str, str]]] = {}
    for metric in obs.registry.collect():
        if not metric.name.startswith("rum_"):
            continue
        for s in metric.samples:
            if s.name.endswith(("_created", "_bucket", "_sum")):
                continue
            out.setdefault(metric.name, []).append(dict(s.labels))
    return out


def check_bounds(obs: Any, driver: Driver) -> int:
    """Every data-derived label is within its bound; the number of rum series."""
    pages_ok = driver.templates | {FALLBACK, "<overflow>"}
    total = 0
    for family, sets in labels_of(obs).items():
        total += len(sets)
        for labels in sets:
            for key, value in labels.items():
                assert "?" not in value, (family, labels)
                assert "#" not in value, (family, labels)
                if key == "page":
                    assert value in pages_ok, (family, value)
                elif key == "metric":
                    assert value in set(METRICS) - {"CLS"}, value
                elif key == "event":
                    assert value in ALLOWED, value
                elif key == "reason":
                    assert value in REASONS, value
                elif key == "type":
                    assert value in (*TYPES, "javascript", "promise_rejection"), value
    pages = len(pages_ok)
    bound = (5 * pages + pages + 8 * pages + 2 * 22 * pages + 2 * pages + len(ALLOWED)
             + len(TYPES) + len(REASONS) + 1)
    assert total <= bound
    return total


def faults(obs: Any) -> float:
    return sample_value("mestres_observability_errors_total", obs, component="http")


# ---------------------------------------------------------------------- junk never hurts
KEYS = st.sampled_from(["type", "data", "metric", "value", "events", "url", "id", "event",
                        "phases", "initiators", "count", "duration", "message", "stack",
                        "trace_id", "lineno"]) | st.text(max_size=8)
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25)


def dump(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8", "surrogatepass")


SHAPED = st.builds(lambda t, d: {"type": t, "data": d}, st.sampled_from((*TYPES, "bogus")), JUNK)
SPECIAL = [
    b'{"type":"web_vitals","data":{"metric":"LCP","value":NaN}}',
    b'{"type":"web_vitals","data":{"metric":"LCP","value":Infinity}}',
    b'{"type":"web_vitals","data":{"metric":"LCP","value":1e308}}',
    b'{"type":"web_vitals","data":{"metric":"LCP","value":' + b"9" * 400 + b"}}",
    b'{"type":"web_vitals","data":{"metric":"LCP","value":' + b"9" * 5000 + b"}}",
    b'{"type":"web_vitals","data":{"metric":"\\ud800","value":1}}',
    b'{"type":"web_vitals","data":{"metric":"LCP","value":1,"url":"/\\udfff?x"}}',
    b'{"type":"web_vitals","data":{"metric":"LCP","metric":"CLS","value":1}}',
    b"\xef\xbb\xbf" + b'{"type":"web_vitals","data":{"metric":"LCP","value":1}}',
    b'{"type":"web_vitals","data":{"metric":"LCP","value":1200,"url":"/products/x?email=a@b.c"}}',
    b'{"type":"business_events","data":{"event":"add_to_cart"}}',
    b'{"events":[' + b",".join([b'{"type":"web_vitals","data":{"metric":"LCP","value":1}}'] * 51)
    + b"]}",
    "\ud800".encode("utf-8", "surrogatepass"),
]
BODIES = st.one_of(
    st.binary(max_size=512),
    JUNK.map(dump),
    st.lists(SHAPED, max_size=60).map(dump),
    st.integers(1, 70_000).map(lambda n: b"[" * n),
    st.integers(1, 70_000).map(lambda n: b'{"a":' * (n // 5)),
    st.sampled_from(SPECIAL),
    st.integers(50_000, 80_000).map(
        lambda n: dump({"type": "errors", "data": {"type": "javascript", "message": "x" * n}})),
)
REQUESTS = st.fixed_dictionaries({
    "body": BODIES,
    "content_type": st.sampled_from([
        "text/plain;charset=UTF-8", "text/plain;charset=UTF-8", "application/json", None,
        "APPLICATION/JSON; charset=utf-8", "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x", "application/xml"]),
    "encoding": st.sampled_from([None, None, None, "identity", "gzip", "br, gzip"]),
    "declared": st.sampled_from(["auto", "auto", "auto", "short", "long", "absent", "garbage"]),
    "chunks": st.integers(1, 4),
    "origin": st.sampled_from([None, None, "http://testserver", "https://evil.example", "null"]),
    "method": st.sampled_from(["POST"] * 6 + ["GET", "PUT", "OPTIONS", "DELETE"]),
})


def send(driver: Driver, req: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    body: bytes = req["body"]
    declared: str | None = {"auto": str(len(body)), "short": str(len(body) // 2),
                            "long": str(len(body) + 1000), "absent": None,
                            "garbage": "12abc"}[req["declared"]]
    headers = []
    if req["content_type"] is not None:
        headers.append(("Content-Type", req["content_type"]))
    if req["encoding"] is not None:
        headers.append(("Content-Encoding", req["encoding"]))
    if req["origin"] is not None:
        headers.append(("Origin", req["origin"]))
    return driver.call(req["method"], "/api/v1/metrics", headers, body, declared=declared,
                       chunks=req["chunks"])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(req=REQUESTS)
def test_junk_never_gets_a_5xx_and_series_stay_bounded(driver: Driver, obs: Any,
                                                       req: dict[str, Any]) -> None:
    status, headers, body = send(driver, req)
    assert 200 <= status < 500, (status, body[:200])
    assert b"Traceback" not in body
    assert b"Error:" not in body
    assert len(body) < 256
    if req["method"] == "POST" and status != 204:
        answer = json.loads(body)
        assert answer["error"] in REASONS
        assert headers["x-content-type-options"] == "nosniff"
        assert set(answer) <= {"error", "field", "accepted", "rejected"}
    if status == 429:
        assert int(headers["retry-after"]) >= 1
    assert faults(obs) == 0
    check_bounds(obs, driver)


def test_oversized_and_lying_bodies(driver: Driver, obs: Any) -> None:
    event = dump({"type": "web_vitals", "data": {"metric": "LCP", "value": 1200}})
    big = b" " * 70_000 + event
    assert driver.post(big)[0] == 413                            # declared over the cap
    assert driver.post(big, declared=None, chunks=3)[0] in (413, 400)  # chunked: capped
    assert driver.post(big, declared="10")[0] == 400             # reads the declared 10 bytes
    assert driver.post(event, declared=str(len(event) + 500))[0] == 204  # body ends early: fine
    assert driver.post(event)[0] == 204
    assert sample_value("rum_events_rejected_total", obs, reason="body_too_large") >= 1
    assert sample_value("rum_web_vitals_seconds_count", obs, metric="LCP", page=FALLBACK) == 2


# ---------------------------------------------------------------------- 10,000 URLs and names
def test_ten_thousand_random_urls_and_event_names_add_bounded_series(driver: Driver,
                                                                     obs: Any) -> None:
    rng = random.Random(2024)
    url_of, template = PARAM_ROUTE[driver.name]
    tokens: set[str] = set()
    accepted = 0
    for _ in range(200):
        batch = []
        for i in range(50):
            token = f"{rng.getrandbits(48):012d}"
            tokens.add(token)
            kind = i % 4
            if kind == 0:
                url = f"https://shop.example/{token}/x?session={token}#frag{token}"
            elif kind == 1:
                url = url_of.format(token) + f"?email=user{token}@example.com"
            elif kind == 2:
                url = f"/{token}"
            else:
                name = rng.choice([f"evt_{token}", "add_to_cart", "order_completed"])
                batch.append({"type": "business_events",
                              "data": {"event": name, "url": f"/{token}"}})
                continue
            batch.append({"type": "web_vitals",
                          "data": {"metric": rng.choice(["LCP", "INP", "CLS", "TTFB"]),
                                   "value": rng.uniform(0, 5000) if kind else 0.1, "url": url}})
        status, _h, body = driver.post(dump(batch))
        assert status in (204, 400), body
        if status == 400:
            accepted += json.loads(body)["accepted"]
        else:
            accepted += 50
    assert len(tokens) >= 9_900
    assert accepted > 5_000
    total = check_bounds(obs, driver)
    exposed = obs.render_metrics().body.decode()
    assert not any(token in exposed for token in list(tokens)[:500])
    pages = {labels["page"] for labels in labels_of(obs)["rum_web_vitals_seconds"]}
    assert pages == {template, FALLBACK}
    events = {labels["event"] for labels in labels_of(obs)["rum_business_events"]}
    assert events <= {"add_to_cart", "order_completed"}
    assert sample_value("rum_events_rejected_total", obs, reason="unknown_event") > 0
    assert total <= 4 * 2 + 2 + 2 + len(TYPES) + len(REASONS) + 1


# ---------------------------------------------------------------------- HTTP metrics, spans
def test_the_endpoint_is_counted_under_its_route_without_a_span() -> None:
    with fresh_observability(rum_enabled=True) as obs, captured_spans() as spans:
        driver = DRIVERS["flask"](obs)
        event = dump({"type": "web_vitals", "data": {"metric": "LCP", "value": 1200}})
        assert driver.post(event)[0] == 204
        assert driver.call("GET", "/products/1")[0] == 200
        assert sample_value("http_requests_total", obs, method="POST",
                            endpoint="/api/v1/metrics", status="204") == 1
        assert [s.name for s in spans.spans] == ["GET /products/<product_id>"]


@pytest.mark.parametrize("name", list(DRIVERS))
def test_each_framework_counts_the_endpoint_and_groups_by_its_routes(
        request: pytest.FixtureRequest, name: str) -> None:
    if name.startswith("django"):
        request.getfixturevalue("django_setup")
    with fresh_observability(**{**RUM_SETTINGS, "tracing_enabled": True}) as obs, \
            captured_spans() as spans:
        driver = DRIVERS[name](obs)
        url_of, template = PARAM_ROUTE[name]
        batch = [{"type": "web_vitals", "data": {"metric": "LCP", "value": 2000,
                                                  "url": url_of.format(7) + "?q=1"}},
                 {"type": "web_vitals", "data": {"metric": "LCP", "value": 2000,
                                                  "url": "/nowhere/at/all"}}]
        status, headers, _body = driver.post(dump(batch))
        assert status == 204
        assert headers.get("x-request-id")
        assert sample_value("rum_web_vitals_seconds_count", obs, metric="LCP", page=template) == 1
        assert sample_value("rum_web_vitals_seconds_count", obs, metric="LCP", page=FALLBACK) == 1
        assert sample_value("rum_web_vitals_seconds_bucket", obs, metric="LCP", page=template,
                            le="2.5") == 1
        assert sample_value("http_requests_total", obs, method="POST",
                            endpoint="/api/v1/metrics", status="204") == 1
        assert not [s for s in spans.spans if "metrics" in s.name]


# ---------------------------------------------------------------------- Server-Timing
TIMING = re.compile(r'traceparent;desc="00-([0-9a-f]{32})-([0-9a-f]{16})-01"')


@pytest.mark.parametrize("name", list(DRIVERS))
def test_server_timing_on_html_responses_only(request: pytest.FixtureRequest, name: str) -> None:
    if name.startswith("django"):
        request.getfixturevalue("django_setup")
    # Django's test app has no HTML page: its 405 answer is one (HttpResponse's default type)
    html, html_status = ((("PUT", "/orders/5"), 405) if name.startswith("django")
                         else (("GET", "/products/espresso"), 200))
    json_path = "/orders/5" if name.startswith("django") else "/api/orders/5"
    with fresh_observability(tracing_enabled=True) as obs, captured_spans() as spans:
        driver = DRIVERS[name](obs)
        status, headers, _body = driver.call(*html)
        assert status == html_status
        match = TIMING.fullmatch(headers["server-timing"])
        assert match is not None, headers
        span = spans.spans[-1]
        assert match.group(1) == f"{span.context.trace_id:032x}"
        assert match.group(2) == f"{span.context.span_id:016x}"
        status, headers, _body = driver.call("GET", json_path)
        assert status == 200
        assert "server-timing" not in headers
        # an unsampled trace (the caller's traceparent says so): no link to nowhere
        unsampled = [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")]
        status, headers, _body = driver.call(*html, unsampled)
        assert status == html_status
        assert "server-timing" not in headers
    for off in ({"tracing_enabled": False}, {"server_timing": False}):
        with fresh_observability(**off) as obs:
            driver = DRIVERS[name](obs)
            status, headers, _body = driver.call(*html)
            assert status == html_status
            assert "server-timing" not in headers, off


def test_django_keeps_an_existing_server_timing_header(request: pytest.FixtureRequest) -> None:
    request.getfixturevalue("django_setup")
    from django.http import HttpResponse
    from django.test import RequestFactory

    from mestres_observability.django.middleware import ObservabilityMiddleware

    def view(req: Any) -> Any:
        return HttpResponse(HTML, headers={"Server-Timing": "db;dur=5"})

    with fresh_observability(tracing_enabled=True):
        response = ObservabilityMiddleware(view)(RequestFactory().get("/page"))
    first, second = response["Server-Timing"].split(", ")
    assert first == "db;dur=5"
    assert TIMING.fullmatch(second)


# ---------------------------------------------------------------------- Django CSRF
@pytest.mark.parametrize("through", ["urlpatterns", "middleware"])
def test_django_takes_beacons_without_a_csrf_token(request: pytest.FixtureRequest,
                                                   through: str) -> None:
    request.getfixturevalue("django_setup")
    import sys
    import types

    from django.http import HttpResponse
    from django.test import Client, override_settings
    from django.urls import clear_url_caches, include, path

    with fresh_observability(**RUM_SETTINGS) as obs:
        from mestres_observability.django import urls as library_urls

        conf = types.ModuleType("rum_test_urls")
        conf.urlpatterns = [  # type: ignore[attr-defined]
            path("lib/", include(library_urls._patterns())),
            path("form", lambda r: HttpResponse("ok")),  # an ordinary view: CSRF applies
        ]
        sys.modules["rum_test_urls"] = conf
        middleware = ["django.middleware.csrf.CsrfViewMiddleware"]
        if through == "middleware":
            middleware.insert(0, "mestres_observability.django.ObservabilityMiddleware")
        target = "/lib/api/v1/metrics" if through == "urlpatterns" else "/api/v1/metrics"
        try:
            with override_settings(ROOT_URLCONF="rum_test_urls", MIDDLEWARE=middleware):
                clear_url_caches()
                client = Client(enforce_csrf_checks=True)
                event = {"type": "business_events", "data": {"event": "add_to_cart"}}
                response = client.post(target, data=json.dumps(event), content_type="text/plain")
                assert response.status_code == 204, response.content
                assert client.post("/form", data="{}", content_type="text/plain"
                                   ).status_code == 403
        finally:
            clear_url_caches()
            sys.modules.pop("rum_test_urls", None)
        assert sample_value("rum_business_events_total", obs, event="add_to_cart") == 1
