"""The endpoint layer (mestres_observability._endpoint): body cap, credentials, negotiation,
CORS/OPTIONS, the path table, and one new endpoint kind served by every adapter."""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mestres_observability import _endpoint
from mestres_observability._endpoint import (
    GZIP,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    SAME_ORIGIN,
    BodyTooLarge,
    CorsPolicy,
    Credentials,
    Endpoint,
    EndpointKind,
    Fault,
    Headers,
    IncompleteBody,
    Offer,
    Request,
    Response,
    build_endpoints,
    negotiate,
    parse_ranges,
    register_endpoint,
    unregister_endpoint,
)
from mestres_observability.exposition import MetricsResponse
from mestres_observability.exposition import negotiate as negotiate_openmetrics
from mestres_observability.health import HealthResponse, _wants_health_json
from mestres_observability.http import (
    EndpointResponse,
    check_metrics_auth,
    client_address,
    http_state,
    serve_endpoint,
)
from mestres_observability.testing import fresh_observability, sample_value

from .strategies import label_text


# ---------------------------------------------------------------------- helpers
class Faults:
    """A stand-in for FaultReporter: records what is reported."""

    def __init__(self) -> None:
        self.reported: list[tuple[str, str, BaseException | None]] = []

    def report(self, component: str, kind: str, message: str = "",
               exc: BaseException | None = None, **fields: object) -> None:
        self.reported.append((component, kind, exc))


class Context:
    def __init__(self) -> None:
        self.faults = Faults()


class CountingStream(io.BytesIO):
    """A body stream that records how many bytes were asked for and returned."""

    def __init__(self, data: bytes, chunk: int | None = None) -> None:
        super().__init__(data)
        self.calls = 0
        self.chunk = chunk

    def read(self, n: int | None = -1) -> bytes:
        self.calls += 1
        if self.chunk is not None and n is not None and n > self.chunk:
            n = self.chunk  # a chunked body: short reads
        return super().read(n)


class Greedy:
    """A broken stream that returns more than asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int) -> bytes:
        out, self.data = self.data, b""
        return out


def body_request(data: bytes, content_length: str | None, chunk: int | None = None
                 ) -> tuple[Request, CountingStream]:
    stream = CountingStream(data, chunk)
    headers = [] if content_length is None else [("Content-Length", content_length)]
    return Request("POST", "/in", headers, read=stream.read), stream


class Receiver:
    """An ASGI ``receive`` giving ``chunks`` (then optionally a disconnect); counts calls."""

    def __init__(self, chunks: list[bytes], disconnect: bool = False) -> None:
        self.messages: list[dict[str, Any]] = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)]
        if disconnect:
            self.messages[-1]["more_body"] = True
            self.messages.append({"type": "http.disconnect"})
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return self.messages.pop(0)


def asgi_request(chunks: list[bytes], content_length: str | None,
                 disconnect: bool = False) -> tuple[Request, Receiver]:
    receive = Receiver(chunks, disconnect)
    headers = [] if content_length is None else [(b"content-length", content_length.encode())]
    scope = {"type": "http", "method": "POST", "headers": headers, "query_string": b"a=1",
             "client": ("10.0.0.1", 1234)}
    return Request.from_asgi(scope, receive, "/in"), receive


# ---------------------------------------------------------------------- body cap, sync
def test_declared_length_over_the_cap_is_refused_without_reading() -> None:
    req, stream = body_request(b"x" * 10, "100")  # lies: says more than it sends
    with pytest.raises(BodyTooLarge) as err:
        req.read_body(50)
    assert (err.value.cap, err.value.declared, err.value.status) == (50, 100, 413)
    assert stream.calls == 0
    assert stream.tell() == 0


def test_declared_length_above_the_real_body_reads_what_there_is() -> None:
    req, _ = body_request(b"x" * 10, "40")
    assert req.read_body(50) == b"x" * 10


def test_declared_length_below_the_real_body_reads_only_the_declared_bytes() -> None:
    req, stream = body_request(b"abcde" + b"y" * 1000, "5")
    assert req.read_body(50) == b"abcde"
    assert stream.tell() == 5  # the rest is never read


@pytest.mark.parametrize("content_length", [None, "", "abc", "-1", "1e3", "٣"])
def test_absent_or_invalid_length_stops_one_byte_past_the_cap(content_length: str | None) -> None:
    req, stream = body_request(b"z" * 10_000, content_length)
    with pytest.raises(BodyTooLarge):
        req.read_body(50)
    assert stream.tell() == 51
    req, _ = body_request(b"z" * 50, content_length)
    assert req.read_body(50) == b"z" * 50


def test_chunked_short_reads_are_joined_and_capped() -> None:
    req, stream = body_request(b"q" * 100, None, chunk=7)
    assert req.read_body(100) == b"q" * 100
    assert stream.calls > 10
    req, stream = body_request(b"q" * 1000, None, chunk=7)
    with pytest.raises(BodyTooLarge):
        req.read_body(100)
    assert stream.tell() <= 101


def test_a_stream_returning_more_than_asked_is_still_capped() -> None:
    req = Request("POST", "/in", read=Greedy(b"g" * 500).read)
    with pytest.raises(BodyTooLarge):
        req.read_body(100)
    req = Request("POST", "/in", [("content-length", "3")], read=Greedy(b"abcdef").read)
    assert req.read_body(100) == b"abc"


def test_the_body_is_read_once_and_the_cap_still_applies() -> None:
    req, stream = body_request(b"hello", "5")
    assert req.read_body(10) == b"hello"
    assert req.read_body(10) == b"hello"
    with pytest.raises(BodyTooLarge):
        req.read_body(4)
    assert stream.calls == 1  # the declared length read once, never again
    assert Request("GET", "/").read_body(10) == b""


def test_wsgi_body_only_with_a_length_or_a_terminated_input() -> None:
    environ: dict[str, Any] = {"REQUEST_METHOD": "POST", "wsgi.input": CountingStream(b"data")}
    assert Request.from_wsgi(environ, "/in").read_body(10) == b""  # PEP 3333: nothing declared
    assert environ["wsgi.input"].calls == 0
    environ["wsgi.input_terminated"] = True
    assert Request.from_wsgi(environ, "/in").read_body(10) == b"data"
    environ = {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "2",
               "wsgi.input": CountingStream(b"data")}
    assert Request.from_wsgi(environ, "/in").read_body(10) == b"da"


# ---------------------------------------------------------------------- body cap, async
def test_async_chunks_are_joined() -> None:
    req, receive = asgi_request([b"ab", b"cd", b"ef"], None)
    assert asyncio.run(req.aread_body(10)) == b"abcdef"
    assert receive.calls == 3
    assert asyncio.run(req.aread_body(10)) == b"abcdef"  # cached
    assert receive.calls == 3


def test_async_declared_length_over_the_cap_is_refused_without_receiving() -> None:
    req, receive = asgi_request([b"x"], "1000")
    with pytest.raises(BodyTooLarge):
        asyncio.run(req.aread_body(10))
    assert receive.calls == 0


def test_async_absent_length_stops_at_the_first_chunk_past_the_cap() -> None:
    req, receive = asgi_request([b"x" * 6] * 100, None)
    with pytest.raises(BodyTooLarge):
        asyncio.run(req.aread_body(10))
    assert receive.calls == 2


def test_async_declared_length_below_the_body_keeps_the_declared_bytes() -> None:
    req, _ = asgi_request([b"abc", b"defgh"], "4")
    assert asyncio.run(req.aread_body(10)) == b"abcd"
    req, _ = asgi_request([b"ab"], "9")  # says more than it sends
    assert asyncio.run(req.aread_body(10)) == b"ab"


def test_async_disconnect_is_an_incomplete_body() -> None:
    req, _ = asgi_request([b"ab"], None, disconnect=True)
    with pytest.raises(IncompleteBody) as err:
        asyncio.run(req.aread_body(10))
    assert err.value.status == 400


def test_async_reader_falls_back_to_the_sync_stream_and_sync_refuses_asgi() -> None:
    req, _ = body_request(b"sync", "4")
    assert asyncio.run(req.aread_body(10)) == b"sync"
    req, _ = asgi_request([b"a"], None)
    with pytest.raises(RuntimeError, match="aread_body"):
        req.read_body(10)


# ---------------------------------------------------------------------- request
def test_headers_are_case_insensitive_first_value_wins_and_bounded() -> None:
    h = Headers([("Accept", "a"), ("ACCEPT", "b"), ("X-Long", "v" * (MAX_HEADER_VALUE + 10))])
    assert h["accept"] == h.get("AcCePt") == "a"
    assert "ACCEPT" in h
    assert "nope" not in h
    assert 1 not in h
    assert h.get("missing") is None
    assert h.get("missing", "d") == "d"
    assert len(h["x-long"]) == MAX_HEADER_VALUE
    many = Headers((f"h{i}", "v") for i in range(MAX_HEADERS * 3))
    assert len(many) == MAX_HEADERS
    with pytest.raises(KeyError):
        h["missing"]


def test_requests_from_wsgi_and_asgi_carry_the_same_fields() -> None:
    environ = {"REQUEST_METHOD": "GET", "QUERY_STRING": "a=1", "REMOTE_ADDR": "10.0.0.1",
               "HTTP_ACCEPT": "text/plain", "CONTENT_TYPE": "text/plain",
               "HTTP_X_FORWARDED_FOR": "198.51.100.7", "SERVER_NAME": "x"}
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    w = Request.from_wsgi(environ, "/p", trusted)
    scope = {"type": "http", "method": "GET", "query_string": b"a=1",
             "client": ("10.0.0.1", 5), "headers": [(b"accept", b"text/plain"),
                                                    (b"content-type", b"text/plain"),
                                                    (b"x-forwarded-for", b"198.51.100.7")]}
    a = Request.from_asgi(scope, None, "/p", trusted)
    for r in (w, a):
        assert (r.method, r.path, r.query, r.peer) == ("GET", "/p", "a=1", "10.0.0.1")
        assert dict(r.headers) == {"accept": "text/plain", "content-type": "text/plain",
                                   "x-forwarded-for": "198.51.100.7"}
        assert r.client == "198.51.100.7"  # the peer is a trusted proxy
    assert Request.from_wsgi(environ, "/p").client == "10.0.0.1"  # no trusted proxies


def test_http_keeps_the_trusted_proxy_names() -> None:
    from mestres_observability import http

    assert http.client_address is _endpoint.client_address is client_address
    assert http._parse_networks is _endpoint.parse_networks


# ---------------------------------------------------------------------- response types
def test_one_response_type_under_every_old_name() -> None:
    assert MetricsResponse is HealthResponse is EndpointResponse is Response
    r = Response(200, [("A", "b")], b"x")
    status, headers, body = r
    assert (r.status, r.headers, r.body) == (status, headers, body) == (200, [("A", "b")], b"x")


def test_render_metrics_keeps_its_attributes(obs: Any) -> None:
    r = obs.render_metrics()
    assert r.status == 200
    assert r.body.startswith(b"# HELP")
    assert isinstance(r.headers, list)


# ---------------------------------------------------------------------- credentials
def _basic(user_pass: str) -> str:
    return "Basic " + base64.b64encode(user_pass.encode()).decode()


def test_bearer_credentials() -> None:
    c = Credentials("bearer", "tok3n", "metrics")
    assert c.check("Bearer tok3n")
    assert c.check("bearer   tok3n  ")
    assert c.check("BEARER tok3n")
    for bad in (None, "", "Bearer", "Bearer tok3", "Bearer tok3nn", "tok3n", _basic("a:tok3n"),
                "Token tok3n", "Bearer\ttok3n"):
        assert not c.check(bad), bad
    assert c.challenge == 'Bearer realm="metrics"'
    assert "tok3n" not in repr(c)


def test_basic_credentials() -> None:
    c = Credentials("basic", "scraper:pa:ss", "metrics")
    assert c.check(_basic("scraper:pa:ss"))
    assert c.check(" basic " + _basic("scraper:pa:ss")[6:])
    for bad in (None, _basic("scraper:nope"), "Basic %%%", "Basic é", "Basic c2NyYXBlcg",
                "Bearer scraper:pa:ss", "Basic"):
        assert not c.check(bad), bad
    assert c.challenge == 'Basic realm="metrics"'


def test_unknown_scheme_is_refused_at_set_up() -> None:
    with pytest.raises(ValueError, match="bearer"):
        Credentials("digest", "x", "r")


def test_unauthorized_answer_names_scheme_and_realm() -> None:
    status, headers, body = Credentials("basic", "u:p", "metrics").unauthorized()
    assert status == 401
    assert body == b"unauthorized\n"
    assert dict(headers)["WWW-Authenticate"] == 'Basic realm="metrics"'
    with fresh_observability(metrics_auth="basic:prom:pw") as obs:
        status, headers, _ = serve_endpoint(obs, "metrics", "GET", authorization="Bearer pw")
        assert (status, dict(headers)["WWW-Authenticate"]) == (401, 'Basic realm="metrics"')
    with fresh_observability(health_detailed_token="s3cret") as obs:
        status, headers, _ = serve_endpoint(obs, "detailed", "GET")
        assert (status, dict(headers)["WWW-Authenticate"]) == (401, 'Bearer realm="health"')
        assert serve_endpoint(obs, "detailed", "GET", authorization="Bearer s3cret")[0] == 200


_header_values = st.one_of(
    st.none(), label_text, st.text(),
    st.builds(lambda s: "Basic " + s, label_text),
    st.builds(lambda s: "Bearer " + s, label_text),
    st.builds(lambda b: "Basic " + base64.b64encode(b).decode(), st.binary(max_size=64)),
)


@given(_header_values)
def test_any_authorization_header_never_raises(value: str | None) -> None:
    bearer, basic = Credentials("bearer", "tok", "r"), Credentials("basic", "u:p", "r")
    if bearer.check(value):  # only ever the token itself
        assert value is not None
        assert value.strip().partition(" ")[2].strip() == "tok"
    if basic.check(value):
        assert value is not None
        assert base64.b64decode(value.strip().partition(" ")[2].strip()) == b"u:p"


def test_metrics_and_health_share_the_check() -> None:
    from mestres_observability.config import ObservabilityConfig

    assert check_metrics_auth(ObservabilityConfig(metrics_auth="bearer:t"), "bearer t")
    assert not check_metrics_auth(ObservabilityConfig(metrics_auth="bearer:t"), "Basic t")
    with fresh_observability(health_detailed_token="t") as obs:
        assert obs.health._detailed_credentials.check("bearer t")


# ---------------------------------------------------------------------- negotiation
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


@pytest.mark.parametrize(("accept", "openmetrics"), [
    (PROMETHEUS_ACCEPT, True),
    ("application/openmetrics-text", True),
    ("application/openmetrics-text; version=\"1.0.0\"", True),
    ("text/plain, application/openmetrics-text", True),  # a tie: the server prefers OpenMetrics
    ("*/*", False),
    ("application/*", False),  # OpenMetrics only when asked for by name
    (None, False),
    ("", False),
    ("garbage;;;q=x", False),
    (",,,;;;", False),
    ("application/openmetrics-text;q=0", False),
    ("application/openmetrics-text;q=nan", False),
    ("application/openmetrics-text;q=2", False),
    ("application/openmetrics-text;version=9.9.9", False),
    ("text/plain;q=1, application/openmetrics-text;q=0.5", False),
    ("text/plain;q=0, */*;q=1, application/openmetrics-text;q=0.5", True),  # most specific wins
    ("text/*;q=0.9, application/openmetrics-text;q=0.8", False),
])
def test_openmetrics_or_text(accept: str | None, openmetrics: bool) -> None:
    assert negotiate_openmetrics(accept) is openmetrics


@pytest.mark.parametrize(("accept", "draft"), [
    ("application/health+json", True),
    ("application/json;q=0.5, application/health+json", True),
    ("application/json, application/health+json", True),
    ("application/health+json;q=0, */*", False),
    ("application/health+json;q=0.4, application/json;q=0.5", False),
    ("*/*", False),
    (None, False),
    ("application/health+json;q=abc", False),
])
def test_health_json_or_json(accept: str | None, draft: bool) -> None:
    assert _wants_health_json(accept) is draft


@pytest.mark.parametrize(("header", "gzip"), [
    ("gzip", True), ("x-gzip", True), ("br;q=1, gzip;q=0.8", True), ("GZIP", True),
    ("gzip;q=0", False), ("*", False), ("identity", False), (None, False), ("deflate, br", False),
])
def test_gzip(header: str | None, gzip: bool) -> None:
    assert (negotiate(header, (GZIP,), limit=1024) is GZIP) is gzip


def test_ranges_are_bounded() -> None:
    assert len(parse_ranges("a/b," * 1000)) == 64
    assert parse_ranges("x" * 5000 + ",text/plain", limit=4096) == [("x" * 4096, {}, 1.0)]
    assert parse_ranges('text/plain; Version="0.0.4"; Q=0.5') == [
        ("text/plain", {"version": "0.0.4"}, 0.5)]
    assert parse_ranges(None) == parse_ranges("") == []


def test_wildcard_specificity() -> None:
    json_offer = Offer(frozenset({"application/json"}))
    text_offer = Offer(frozenset({"text/plain"}))
    offers = (json_offer, text_offer)
    assert negotiate("application/*", offers) is json_offer
    assert negotiate("text/*", offers) is text_offer
    assert negotiate("*/*;q=0.5, text/plain;q=0.1", offers) is json_offer
    assert negotiate("image/png", offers) is None


@given(st.one_of(st.none(), st.text(), label_text))
def test_any_accept_header_never_raises(value: str | None) -> None:
    offers = (Offer(frozenset({"application/openmetrics-text"}), wildcard=False),
              Offer(frozenset({"text/plain"})))
    assert negotiate(value, offers) in (*offers, None)
    assert isinstance(negotiate_openmetrics(value), bool)
    assert isinstance(_wants_health_json(value), bool)


# ---------------------------------------------------------------------- OPTIONS and CORS
SHOP = "https://shop.example"


def echo(ctx: Any, req: Request) -> Response:
    body = req.read_body(16) if req.method == "POST" else b""
    return Response(200, [("Content-Type", "text/plain"), ("Vary", "Accept")],
                    b"%s %s %s" % (req.method.encode(), req.query.encode(), body))


def make(kind_kw: dict[str, Any] | None = None, **kw: Any) -> Endpoint:
    options = {"methods": ("GET", "HEAD", "POST"), "max_body": 16, **(kind_kw or {})}
    kind = EndpointKind("echo", lambda cfg: ("/echo",), kw.pop("handler", echo), **options)
    return Endpoint(kind, "/echo", Context())


def cors_endpoint(**policy: Any) -> Endpoint:
    return make({"cors": CorsPolicy(frozenset({SHOP}), headers=("Content-Type",), **policy)})


def preflight(origin: str, method: str = "POST") -> Request:
    return Request("OPTIONS", "/echo", [("Origin", origin),
                                        ("Access-Control-Request-Method", method),
                                        ("Access-Control-Request-Headers", "content-type")])


def test_preflight_from_an_allowed_origin() -> None:
    status, headers, body = cors_endpoint().dispatch(preflight(SHOP))
    h = dict(headers)
    assert (status, body) == (204, b"")
    assert h["Allow"] == h["Access-Control-Allow-Methods"] == "GET, HEAD, POST, OPTIONS"
    assert h["Access-Control-Allow-Origin"] == SHOP
    assert h["Access-Control-Allow-Headers"] == "Content-Type"
    assert h["Access-Control-Max-Age"] == "600"
    assert h["Vary"] == "Origin"
    assert "Access-Control-Allow-Credentials" not in h


def test_disallowed_origin_gets_no_cors_headers() -> None:
    ep = cors_endpoint()
    for req in (preflight("https://evil.example"),
                Request("GET", "/echo", [("Origin", "https://evil.example")]),
                Request("OPTIONS", "/echo")):
        _status, headers, _ = ep.dispatch(req)
        assert not [k for k, _ in headers if k.lower().startswith("access-control-")], req
        assert ("Vary", "Origin") in headers or dict(headers)["Vary"].endswith("Origin")
    assert ep.dispatch(Request("OPTIONS", "/echo"))[0] == 204


def test_actual_request_from_an_allowed_origin() -> None:
    status, headers, body = cors_endpoint(expose=("X-Request-ID",), credentials=True).dispatch(
        Request("POST", "/echo", [("Origin", SHOP), ("Content-Length", "2")],
                read=io.BytesIO(b"hi").read, query="q=1"))
    h = dict(headers)
    assert (status, body) == (200, b"POST q=1 hi")
    assert h["Access-Control-Allow-Origin"] == SHOP
    assert h["Access-Control-Allow-Credentials"] == "true"
    assert h["Access-Control-Expose-Headers"] == "X-Request-ID"
    assert h["Vary"] == "Accept, Origin"  # merged into the handler's Vary


def test_configured_origins_are_normalised() -> None:
    policy = CorsPolicy(frozenset({"HTTPS://Shop.Example/"}))
    assert policy.allows(SHOP)
    assert policy.allows(SHOP.upper())
    assert not policy.allows("https://shop.example.evil")
    assert not policy.allows(None)


def test_any_origin() -> None:
    ep = make({"cors": CorsPolicy(frozenset({"*"}))})
    h = dict(ep.dispatch(preflight("https://anyone.example"))[1])
    assert h["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in h
    with pytest.raises(ValueError, match="credentials"):
        CorsPolicy(frozenset({"*"}), credentials=True)


def test_same_origin_default_sends_no_cors_and_refuses_options() -> None:
    assert not SAME_ORIGIN.active
    ep = make()
    status, headers, _ = ep.dispatch(Request("GET", "/echo", [("Origin", SHOP)]))
    assert status == 200
    assert dict(headers) == {"Content-Type": "text/plain", "Vary": "Accept"}
    status, headers, _ = ep.dispatch(preflight(SHOP))
    assert (status, dict(headers)["Allow"]) == (405, "GET, HEAD, POST")
    listed = make({"methods": ("GET", "OPTIONS")})
    status, headers, _ = listed.dispatch(Request("OPTIONS", "/echo", [("Origin", SHOP)]))
    assert (status, headers) == (204, [("Allow", "GET, OPTIONS")])


# ---------------------------------------------------------------------- table dispatch
def test_unknown_method_gets_405_with_allow() -> None:
    ep = make()
    for method in ("PUT", "DELETE", "get", "BREW"):
        status, headers, body = ep.dispatch(Request(method, "/echo"))
        assert (status, body) == (405, b"method not allowed\n")
        assert dict(headers)["Allow"] == "GET, HEAD, POST"
    assert asyncio.run(ep.adispatch(Request("PUT", "/echo")))[0] == 405


def test_head_answers_like_get_without_the_body() -> None:
    ep = make()
    get = ep.dispatch(Request("GET", "/echo"))
    head = ep.dispatch(Request("HEAD", "/echo"))
    assert head.status == get.status
    assert head.headers == get.headers
    assert head.body == b""


def test_body_over_the_cap_is_413_and_not_a_fault() -> None:
    ep = make()
    req = Request("POST", "/echo", [("Content-Length", "17")], read=io.BytesIO(b"x" * 17).read)
    status, _headers, body = ep.dispatch(req)
    assert (status, body) == (413, b"request body larger than 16 bytes\n")
    assert ep.context.faults.reported == []
    req, _ = asgi_request([b"x" * 10, b"y" * 10], None)
    assert asyncio.run(ep.adispatch(req)).status == 413  # prefetched for the threaded handler


def test_async_request_reaches_the_sync_handler_with_its_body() -> None:
    req, _ = asgi_request([b"he", b"llo"], "5")
    assert asyncio.run(make().adispatch(req)) == Response(
        200, [("Content-Type", "text/plain"), ("Vary", "Accept")], b"POST a=1 hello")


def boom(ctx: Any, req: Request) -> Response:
    raise RuntimeError("secret detail")


async def aboom(ctx: Any, req: Request) -> Response:
    raise RuntimeError("secret detail")


@pytest.mark.parametrize("mode", ["sync", "async", "async-in-thread"])
def test_handler_fault_is_counted_and_answered_generically(mode: str) -> None:
    fault = Fault("echo_endpoint", "echo failed", Response(503, [("X", "y")], b"down\n"))
    ep = make({"fault": fault, "ahandler": aboom if mode == "async" else None}, handler=boom)
    req = Request("GET", "/echo")
    resp = ep.dispatch(req) if mode == "sync" else asyncio.run(ep.adispatch(req))
    assert resp == Response(503, [("X", "y")], b"down\n")
    ((component, kind, exc),) = ep.context.faults.reported
    assert (component, kind, str(exc)) == ("http", "echo_endpoint", "secret detail")
    resp.headers.append(("mutated", "by an adapter"))
    assert ep.dispatch(req).headers == [("X", "y")]  # each answer has its own list


def test_default_fault_and_a_wrong_handler_result_never_raise() -> None:
    ep = make(handler=lambda ctx, req: None)
    assert ep.dispatch(Request("GET", "/echo")) == Response(
        500, [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")],
        b"internal error\n")
    ep.context = object()  # not even a fault reporter
    assert ep.dispatch(Request("GET", "/echo")).status == 500


def test_library_endpoint_faults_keep_their_answers() -> None:
    with fresh_observability() as obs:
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("boom")

        obs.render_metrics = broken  # type: ignore[method-assign]
        obs.health.probe = broken  # type: ignore[method-assign]
        obs.health.aprobe = broken  # type: ignore[method-assign]
        table = http_state(obs).endpoints
        metrics, health = table["/metrics"], table["/health/readiness"]
        for resp in (metrics.dispatch(Request("GET", "/metrics")),
                     asyncio.run(metrics.adispatch(Request("GET", "/metrics")))):
            assert resp == Response(500, [("Content-Type", "text/plain; charset=utf-8"),
                                          ("Cache-Control", "no-store")],
                                    b"metrics collection failed\n")
        for resp in (health.dispatch(Request("GET", "/health")),
                     asyncio.run(health.adispatch(Request("GET", "/health")))):
            assert resp == Response(503, [("Content-Type", "application/health+json"),
                                          ("Cache-Control", "no-store")], b'{"status": "fail"}')
        errors = "mestres_observability_errors_total"
        assert sample_value(errors, obs, component="http") == 4


def test_table_from_config() -> None:
    with fresh_observability(health_liveness_path=None, health_path="/hz") as obs:
        table = http_state(obs).endpoints
        assert type(table) is dict  # one dict get per request
        assert {p: e.kind.name for p, e in table.items()} == {
            "/metrics": "metrics", "/hz": "basic", "/health/readiness": "readiness",
            "/health/detailed": "detailed"}
        assert all(e.context is obs for e in table.values())
    with fresh_observability(metrics_port=0) as obs:
        assert "/metrics" not in http_state(obs).endpoints


def test_cors_and_body_cap_may_come_from_the_settings() -> None:
    kind = EndpointKind("echo", lambda cfg: (cfg.path,), echo, methods=("POST",),
                        cors=lambda cfg: CorsPolicy(frozenset(cfg.origins)),
                        max_body=lambda cfg: cfg.cap)
    config = SimpleNamespace(path="/in", origins=(SHOP,), cap=3)
    ep = build_endpoints(config, Context(), (kind,))["/in"]
    assert (ep.cors.origins, ep.max_body, ep.allow) == (frozenset({SHOP}), 3, "POST, OPTIONS")
    assert dict(ep.dispatch(preflight(SHOP))[1])["Access-Control-Allow-Origin"] == SHOP
    req, _ = asgi_request([b"abcd"], None)
    assert asyncio.run(ep.adispatch(req)).status == 413  # read up to the configured cap


def test_first_registered_kind_wins_a_shared_path() -> None:
    a = EndpointKind("a", lambda cfg: ("/x", None, ""), echo)
    b = EndpointKind("b", lambda cfg: ("/x", "/y"), echo)
    table = build_endpoints(None, "ctx", (a, b))
    assert {p: e.kind.name for p, e in table.items()} == {"/x": "a", "/y": "b"}


# ---------------------------------------------------------------------- one-place change
PING_PATH = "/_test/ping"


def ping(ctx: Any, req: Request) -> Response:
    body = req.read_body(32) if req.method == "POST" else b""
    return Response(200, [("Content-Type", "text/plain; charset=utf-8")],
                    b"pong %s %s" % (req.method.encode(), body))


async def aping(ctx: Any, req: Request) -> Response:
    body = await req.aread_body(32) if req.method == "POST" else b""
    return Response(200, [("Content-Type", "text/plain; charset=utf-8")],
                    b"pong %s %s" % (req.method.encode(), body))


@pytest.fixture(params=["threaded", "async"])
def ping_kind(request: pytest.FixtureRequest) -> Iterator[EndpointKind]:
    """The one place: a new kind, registered; every adapter below serves it unchanged."""
    kind = register_endpoint(EndpointKind(
        "ping", lambda cfg: (PING_PATH,), ping, aping if request.param == "async" else None,
        methods=("GET", "HEAD", "POST"), cors=CorsPolicy(frozenset({SHOP})), max_body=32))
    try:
        yield kind
    finally:
        unregister_endpoint("ping")


def check_ping(get: Any, post: Any, options: Any) -> None:
    status, headers, body = get()
    assert (status, body) == (200, b"pong GET ")
    assert headers["access-control-allow-origin"] == SHOP
    status, _headers, body = post(b"beans")
    assert (status, body) == (200, b"pong POST beans")
    status, _headers, body = post(b"x" * 33)
    assert status == 413
    status, headers, body = options()
    assert status == 204
    assert headers["access-control-allow-methods"] == "GET, HEAD, POST, OPTIONS"


def test_new_kind_served_by_flask(ping_kind: EndpointKind) -> None:
    flask = pytest.importorskip("flask")
    from mestres_observability.flask import instrument

    with fresh_observability(tracing_enabled=False) as obs:
        app = flask.Flask(__name__)
        instrument(app, obs)
        c = app.test_client()
        origin = {"Origin": SHOP}

        def lower(r: Any) -> tuple[int, dict[str, str], bytes]:
            return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.data

        check_ping(lambda: lower(c.get(PING_PATH, headers=origin)),
                   lambda data: lower(c.post(PING_PATH, data=data, headers=origin)),
                   lambda: lower(c.options(PING_PATH, headers={
                       **origin, "Access-Control-Request-Method": "POST"})))
        assert sample_value("http_requests_total", obs, method="GET", endpoint=PING_PATH,
                            status="200") == 0  # a library endpoint: excluded by default


def test_new_kind_served_by_starlette(ping_kind: EndpointKind) -> None:
    pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from mestres_observability.fastapi import instrument

    with fresh_observability(tracing_enabled=False) as obs:
        app = Starlette()
        instrument(app, obs)
        origin = {"Origin": SHOP}
        with TestClient(app) as c:
            def lower(r: Any) -> tuple[int, dict[str, str], bytes]:
                return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content

            check_ping(lambda: lower(c.get(PING_PATH, headers=origin)),
                       lambda data: lower(c.post(PING_PATH, content=data, headers=origin)),
                       lambda: lower(c.options(PING_PATH, headers={
                           **origin, "Access-Control-Request-Method": "POST"})))


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_new_kind_served_by_django(ping_kind: EndpointKind, mode: str) -> None:
    pytest.importorskip("django")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.adapters.django_settings")
    from django.http import HttpResponse
    from django.test import AsyncRequestFactory, RequestFactory

    from mestres_observability.django.middleware import ObservabilityMiddleware

    def view(request: Any) -> Any:
        return HttpResponse(b"app", status=404)

    async def aview(request: Any) -> Any:
        return HttpResponse(b"app", status=404)

    with fresh_observability(tracing_enabled=False):
        if mode == "wsgi":
            mw = ObservabilityMiddleware(view)
            factory: Any = RequestFactory()

            def run(request: Any) -> Any:
                return mw(request)
        else:
            amw = ObservabilityMiddleware(aview)
            factory = AsyncRequestFactory()

            def run(request: Any) -> Any:
                return asyncio.run(amw(request))

        def lower(r: Any) -> tuple[int, dict[str, str], bytes]:
            return r.status_code, {k.lower(): v for k, v in r.items()}, r.content

        origin = {"Origin": SHOP}
        check_ping(lambda: lower(run(factory.get(PING_PATH, headers=origin))),
                   lambda data: lower(run(factory.post(PING_PATH, data=data, headers=origin,
                                                       content_type="text/plain"))),
                   lambda: lower(run(factory.options(PING_PATH, headers={
                       **origin, "Access-Control-Request-Method": "POST"}))))
        assert lower(run(factory.get("/elsewhere")))[2] == b"app"  # other paths reach the app
