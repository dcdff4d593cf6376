"""Span controls: server-span hooks, header capture, scrubbing of span attributes, user
redaction patterns.

Every framework (Flask, FastAPI, Django under WSGI and ASGI) serves the same view; the
spans are read off the OTLP wire (``tests/otlp_receiver.py``) or from
``testing.captured_spans()``, with lean spans and with SDK spans (``lean_spans=False``),
which must give the same attributes.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace

from mestres_observability import span
from mestres_observability.config import ObservabilityConfig
from mestres_observability.errors import ConfigurationError
from mestres_observability.testing import captured_spans, fresh_observability, sample_value
from tests.otlp_receiver import OTLPReceiver

CARD = "4111 1111 1111 1111"  # Luhn-valid test card
REQUEST_HEADERS = {
    "X-Client-Region": "eu-west",
    "Authorization": "Bearer abcdefghijkl",
    "X-Api-Key": "k-123456789",
    "X-Secret-Thing": "sesame",
    "Accept-Language": "pt-BR",
}
CAPTURE = {
    "capture_request_headers": ("x-client-region", "authorization", "x-api-key", "x-secret-.*",
                                "Accept-Language"),
    "capture_response_headers": ("x-order-ref", "set-cookie", "content-type"),
    "capture_headers_sanitize_fields": ("X-SECRET-.*",),
}
#: what each framework's hooks saw: (hook, type name of the request, of the response)
SEEN: list[tuple[str, str, str]] = []
ERRORS = "mestres_observability_errors_total"
UNSAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


# ---------------------------------------------------------------------- the view
def view_work() -> None:
    """What application code does inside the request: attributes on the current span."""
    current = trace.get_current_span()
    current.set_attribute("app.card", f"paid with {CARD}")
    current.set_attribute("app.password", "hunter2")
    current.set_attribute("app.callback", "https://shop.example/cb?token=abc123def&ok=1")
    current.set_attribute("app.order_ref", "ORD-12345678 shipped")
    current.add_event("app.note", {"text": f"card {CARD} declined once"})


def request_hook(sp: Any, request: Any) -> None:
    SEEN.append(("request", type(request).__name__, ""))
    path = getattr(request, "path", None)  # Flask, Django
    if not isinstance(path, str):
        path = request.url.path  # Starlette
    sp.set_attribute("app.hook.path", path)
    sp.set_attribute("app.hook.token", "from-the-hook")  # a redacted key


def response_hook(sp: Any, request: Any, response: Any) -> None:
    SEEN.append(("response", type(request).__name__, type(response).__name__))
    status = response["status"] if isinstance(response, dict) else response.status_code
    sp.set_attribute("app.hook.status", status)


def raising_hook(*args: Any) -> None:
    raise RuntimeError("hook bug")


# ---------------------------------------------------------------------- frameworks
Send = Callable[[Mapping[str, str]], tuple[int, str, dict[str, str]]]


def _flask() -> Send:
    flask = pytest.importorskip("flask")
    from mestres_observability.flask import instrument

    app = flask.Flask("span-controls")

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> Any:
        view_work()
        response = flask.make_response("ok")
        response.headers["x-order-ref"] = "ORD-12345678"
        response.headers["Set-Cookie"] = "sid=abc; HttpOnly"
        return response

    instrument(app)
    client = app.test_client()

    def send(headers: Mapping[str, str]) -> tuple[int, str, dict[str, str]]:
        r = client.get("/orders/7", headers=dict(headers))
        return r.status_code, r.get_data(as_text=True), {k.lower(): v for k, v in r.headers.items()}

    return send


def _fastapi() -> Send:
    pytest.importorskip("fastapi")
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse
    from fastapi.testclient import TestClient

    from mestres_observability.fastapi import instrument

    app = FastAPI()

    @app.get("/orders/{order_id}")
    def order(order_id: int) -> PlainTextResponse:
        view_work()
        return PlainTextResponse("ok", headers={"X-Order-Ref": "ORD-12345678",
                                                "Set-Cookie": "sid=abc; HttpOnly"})

    instrument(app)
    client = TestClient(app)

    def send(headers: Mapping[str, str]) -> tuple[int, str, dict[str, str]]:
        r = client.get("/orders/7", headers=dict(headers))
        return r.status_code, r.text, {k.lower(): v for k, v in r.headers.items()}

    return send


def _django_ready() -> None:
    """``django.setup()`` once, outside the tests' instances (the app's ``ready()``
    initialises an instance of its own, which would retire the current one's pipeline)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.adapters.django_settings")
    import django
    from django.apps import apps

    from mestres_observability import _current, get_observability

    if not apps.ready:
        previous = get_observability()
        django.setup()
        _current.swap(previous).shutdown(timeout=1.0)


def _django(mode: str) -> Send:
    pytest.importorskip("django")
    from django.test import AsyncClient, Client, override_settings

    _django_ready()

    def send(headers: Mapping[str, str]) -> tuple[int, str, dict[str, str]]:
        with override_settings(ROOT_URLCONF="tests.span_controls_urls"):
            if mode == "wsgi":
                r = Client().get("/orders/7", headers=dict(headers))
            else:
                r = asyncio.run(AsyncClient().get("/orders/7", headers=dict(headers)))
        return r.status_code, r.content.decode(), {k.lower(): v for k, v in r.headers.items()}

    return send


FRAMEWORKS: dict[str, Callable[[], Send]] = {
    "flask": _flask, "fastapi": _fastapi,
    "django-wsgi": lambda: _django("wsgi"), "django-asgi": lambda: _django("asgi"),
}
ROUTES = {"flask": "/orders/<int:order_id>", "fastapi": "/orders/{order_id}",
          "django-wsgi": "/orders/<int:order_id>", "django-asgi": "/orders/<int:order_id>"}
REQUEST_TYPES = {"flask": "Request", "fastapi": "Request", "django-wsgi": "WSGIRequest",
                 "django-asgi": "ASGIRequest"}
RESPONSE_TYPES = {"flask": "Response", "fastapi": "dict", "django-wsgi": "HttpResponse",
                  "django-asgi": "HttpResponse"}


@pytest.fixture(params=list(FRAMEWORKS))
def framework(request: pytest.FixtureRequest) -> str:
    if str(request.param).startswith("django"):
        pytest.importorskip("django")
        _django_ready()
    return str(request.param)


@pytest.fixture
def rx() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as receiver:
        yield receiver


def _server_span(rx: OTLPReceiver, name: str) -> Any:
    rx.wait_for(lambda: name in rx.span_names())
    assert rx.bad_requests == []
    return rx.by_name(name)


def _serve(framework: str, rx: OTLPReceiver, lean: bool = True, **settings: Any) -> Any:
    """One request through ``framework`` under an instance exporting to ``rx``: the
    SERVER span as received, and the protobuf message of it."""
    SEEN.clear()
    with fresh_observability(otlp_endpoint=rx.endpoint, lean_spans=lean, **settings) as obs:
        assert obs.tracing.lean is lean
        send = FRAMEWORKS[framework]()
        status, body, headers = send(REQUEST_HEADERS)
        assert (status, body) == (200, "ok")
        assert headers["x-order-ref"] == "ORD-12345678"
        obs.shutdown(timeout=5)
    name = f"GET {ROUTES[framework]}"
    received = _server_span(rx, name)
    message = next(m[2] for m in rx.messages if m[2].name == name)
    return received, message


# ---------------------------------------------------------------------- hooks
def test_hooks_get_the_span_and_the_framework_request_and_response(
        framework: str, rx: OTLPReceiver) -> None:
    sp, _ = _serve(framework, rx, server_request_hook=request_hook,
                   server_response_hook=response_hook)
    expected = [("request", REQUEST_TYPES[framework], ""),
                ("response", REQUEST_TYPES[framework], RESPONSE_TYPES[framework])]
    assert expected == SEEN
    # what the hooks set is on the SERVER span, scrubbed like the rest
    assert sp.attributes["app.hook.path"] == "/orders/7"
    assert sp.attributes["app.hook.status"] == 200
    assert sp.attributes["app.hook.token"] == "[REDACTED]"


def test_a_raising_hook_leaves_the_response_intact_and_is_counted(
        framework: str, rx: OTLPReceiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="mestres_observability")
    SEEN.clear()
    with fresh_observability(otlp_endpoint=rx.endpoint, server_request_hook=raising_hook,
                             server_response_hook=raising_hook) as obs:
        send = FRAMEWORKS[framework]()
        before = sample_value(ERRORS, obs, component="http")
        for _ in range(2):
            status, body, headers = send(REQUEST_HEADERS)
            assert (status, body) == (200, "ok")
            assert headers["x-order-ref"] == "ORD-12345678"
        assert sample_value(ERRORS, obs, component="http") == before + 4
        logged = [r.getMessage() for r in caplog.records if "hook raised" in r.getMessage()]
        assert len(logged) == 2, logged  # each hook's fault logged once, not per request
        obs.shutdown(timeout=5)
    sp = _server_span(rx, f"GET {ROUTES[framework]}")
    assert sp.attributes["http.response.status_code"] == 200


def test_hooks_are_not_called_for_an_unsampled_request(framework: str) -> None:
    SEEN.clear()
    with fresh_observability(server_request_hook=request_hook,
                             server_response_hook=response_hook):
        send = FRAMEWORKS[framework]()
        # the caller's trace is not sampled: the SERVER span does not record
        assert send({"traceparent": UNSAMPLED})[:2] == (200, "ok")
        assert SEEN == []
        assert send({})[:2] == (200, "ok")  # and a sampled one does
    assert [s[0] for s in SEEN] == ["request", "response"]


def test_hooks_are_not_called_with_tracing_off(framework: str) -> None:
    SEEN.clear()
    with fresh_observability(tracing_enabled=False, server_request_hook=request_hook,
                             server_response_hook=response_hook):
        assert FRAMEWORKS[framework]()({})[:2] == (200, "ok")
    assert SEEN == []


# ---------------------------------------------------------------------- header capture
def test_configured_headers_are_captured_and_sanitized_on_the_wire(
        framework: str, rx: OTLPReceiver) -> None:
    sp, _ = _serve(framework, rx, **CAPTURE)
    a = sp.attributes
    assert a["http.request.header.x-client-region"] == ["eu-west"]
    assert a["http.request.header.accept-language"] == ["pt-BR"]
    # sanitize fields (regex, case-insensitive) and the library's redact_keys
    assert a["http.request.header.x-secret-thing"] == ["[REDACTED]"]
    assert a["http.request.header.authorization"] == ["[REDACTED]"]
    assert a["http.request.header.x-api-key"] == ["[REDACTED]"]
    assert a["http.response.header.x-order-ref"] == ["ORD-12345678"]
    cookies = 2 if framework.startswith("django") else 1  # Django: set_cookie() too
    assert a["http.response.header.set-cookie"] == ["[REDACTED]"] * cookies
    assert a["http.response.header.content-type"][0].startswith("text/")
    # nothing not asked for
    assert not any(k.startswith("http.request.header.user-agent") for k in a)
    wire = repr(a)
    for secret in ("abcdefghijkl", "k-123456789", "sesame", "sid=abc"):
        assert secret not in wire


def test_headers_are_not_captured_unless_configured(framework: str, rx: OTLPReceiver) -> None:
    sp, _ = _serve(framework, rx)
    assert not any(k.startswith(("http.request.header.", "http.response.header."))
                   for k in sp.attributes)


def _comparable(message: Any) -> bytes:
    """A SERVER span message without what differs between two requests (ids, times)."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    copy = Span()
    copy.CopyFrom(message)
    for name in ("trace_id", "span_id", "parent_span_id", "start_time_unix_nano",
                 "end_time_unix_nano"):
        copy.ClearField(name)  # type: ignore[arg-type]
    for event in copy.events:
        event.ClearField("time_unix_nano")
    return copy.SerializeToString(deterministic=True)


def test_lean_and_sdk_spans_are_identical_on_the_wire(rx: OTLPReceiver) -> None:
    """Header capture, hooks and scrubbing on both paths give the same span message."""
    settings_ = {**CAPTURE, "server_request_hook": request_hook,
                 "server_response_hook": response_hook}
    with OTLPReceiver() as other:
        _, lean = _serve("flask", rx, lean=True, **settings_)
        _, sdk = _serve("flask", other, lean=False, **settings_)
    assert {kv.key for kv in lean.attributes} >= {"http.request.header.authorization",
                                                  "app.card", "app.hook.token"}
    assert _comparable(lean) == _comparable(sdk)


# ---------------------------------------------------------------------- scrubbing
@pytest.mark.parametrize("lean", [True, False], ids=["lean", "sdk"])
def test_attributes_user_code_sets_inside_a_request_are_scrubbed(
        framework: str, rx: OTLPReceiver, lean: bool) -> None:
    sp, message = _serve(framework, rx, lean=lean, redact_patterns=(r"ORD-[0-9]{8}",))
    a = sp.attributes
    assert a["app.card"] == "paid with [REDACTED]"
    assert a["app.password"] == "[REDACTED]"
    assert a["app.callback"] == "https://shop.example/cb?token=[REDACTED]&ok=1"
    assert a["app.order_ref"] == "[REDACTED] shipped"
    (event,) = [e for e in message.events if e.name == "app.note"]
    assert {kv.key: kv.value.string_value for kv in event.attributes} == {
        "text": "card [REDACTED] declined once"}
    assert a["url.path"] == "/orders/7"  # ordinary values untouched


def test_scrubbing_can_be_turned_off(rx: OTLPReceiver) -> None:
    sp, _ = _serve("flask", rx, scrub_span_attributes=False)
    assert sp.attributes["app.card"] == f"paid with {CARD}"
    assert sp.attributes["app.password"] == "hunter2"


def test_business_spans_and_spans_of_other_tracers_are_scrubbed(rx: OTLPReceiver) -> None:
    with fresh_observability(otlp_endpoint=rx.endpoint, redact_patterns=("SKU-[0-9]+",)) as obs:
        with span("checkout", card=CARD, customer_email="a@b.c", note="SKU-991 in cart") as sp:
            sp.set_attribute("payment.card_number", "5555555555554444")
            sp.set_attribute("db.statement", "UPDATE users SET password='x' WHERE id=1")
        # an SDK span another instrumentation starts under the library's provider
        other = trace.get_tracer("other.instrumentation").start_span(
            "GET", attributes={"url.full": "https://api.example/v1?api_key=XYZ123&page=2",
                               "http.request.header.cookie": ("a=1",)})
        other.end()
        obs.shutdown(timeout=5)
    rx.wait_for(lambda: {"checkout", "GET"} <= rx.span_names())
    a = rx.by_name("checkout").attributes
    assert a["card"] == "[REDACTED]"
    assert a["payment.card_number"] == "[REDACTED]"
    assert a["customer_email"] == "a@b.c"
    assert a["note"] == "[REDACTED] in cart"
    assert a["db.statement"] == "UPDATE users SET password=[REDACTED] WHERE id=1"
    b = rx.by_name("GET").attributes
    assert b["url.full"] == "https://api.example/v1?api_key=[REDACTED]&page=2"
    assert b["http.request.header.cookie"] == ["[REDACTED]"]


def test_captured_spans_see_the_scrubbed_attributes() -> None:
    with fresh_observability(), captured_spans() as spans, \
            span("pay", token="t0k3n-value") as sp:
        sp.set_attribute("app.card", CARD)
    got = spans.by_name("pay")
    assert dict(got.attributes) == {"token": "[REDACTED]", "app.card": "[REDACTED]"}


def test_a_scrubber_that_raises_is_a_counted_fault_and_the_span_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A lean span whose redaction raises is counted (``errors_total{component="tracing"}``)
    and still reaches the captured spans, as the scrubber left it; the caller never sees
    the error."""
    from mestres_observability import _leanspan

    def broken(self: Any, scrubber: Any) -> None:
        raise RuntimeError("scrubber bug")

    monkeypatch.setattr(_leanspan.LeanSpan, "scrub", broken)
    with fresh_observability() as obs, captured_spans() as spans:
        assert obs.tracing.lean
        with span("pay", order="o-1"):
            pass
        assert spans.by_name("pay").attributes["order"] == "o-1"
        assert sample_value("mestres_observability_errors_total", component="tracing") == 1


def test_exception_events_are_scrubbed() -> None:
    with fresh_observability(), captured_spans() as spans, pytest.raises(ValueError), \
            span("charge"):
        raise ValueError(f"card {CARD} refused")
    (event,) = spans.by_name("charge").events
    assert event.attributes["exception.message"] == "card [REDACTED] refused"
    assert CARD not in event.attributes["exception.stacktrace"]


# ---------------------------------------------------------------------- user patterns
def test_user_patterns_redact_log_lines_and_spans() -> None:
    from mestres_observability.logs import get_logger

    out = io.StringIO()
    with fresh_observability(configure_logging=True, log_format="json",
                             redact_patterns=(r"ORD-[0-9]{8}", r"(?i)iban:\s*\S+")) as obs:
        from mestres_observability import logs as logs_module

        logs_module.configure_logging(obs.config, obs.faults, stream=out)
        with captured_spans() as spans, span("ship", ref="ORD-12345678") as sp:
            sp.set_attribute("app.note", "IBAN: PT50000201231234567890154 on file")
            get_logger("test").info("shipped", ref="order ORD-12345678", note="iban: X1")
    line = next(json.loads(x) for x in out.getvalue().splitlines() if '"shipped"' in x)
    assert line["ref"] == "order [REDACTED]"
    assert line["note"] == "[REDACTED]"
    attrs = spans.by_name("ship").attributes
    assert attrs["ref"] == "[REDACTED]"
    assert attrs["app.note"] == "[REDACTED] on file"


@pytest.mark.parametrize(("setting", "value"), [
    ("redact_patterns", ("ORD-[0-9",)),
    ("redact_patterns", ("x*",)),
    ("capture_request_headers", ("x-(",)),
    ("capture_response_headers", ("[",)),
    ("capture_headers_sanitize_fields", ("(?P<",)),
])
def test_bad_patterns_fail_at_init_naming_the_setting(setting: str, value: Any) -> None:
    with pytest.raises(ConfigurationError) as err:
        ObservabilityConfig(**{setting: value})
    assert err.value.setting == setting


def test_otel_variables_and_import_paths() -> None:
    cfg = ObservabilityConfig.from_env({
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": "content-type,X-.*",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE": "content-length",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS": "x-token",
        "MESTRES_OBS_SERVER_REQUEST_HOOK": "tests.test_span_controls:request_hook",
        "MESTRES_OBS_SERVER_RESPONSE_HOOK": "tests.test_span_controls.response_hook",
        "MESTRES_OBS_REDACT_PATTERNS": "ORD-[0-9]{8}",
    })
    assert cfg.capture_request_headers == ("content-type", "X-.*")
    assert cfg.capture_response_headers == ("content-length",)
    assert cfg.capture_headers_sanitize_fields == ("x-token",)
    assert cfg.server_request_hook is request_hook
    assert cfg.server_response_hook is response_hook
    assert cfg.redact_patterns == ("ORD-[0-9]{8}",)
    with pytest.raises(ConfigurationError) as err:
        ObservabilityConfig.from_env({"MESTRES_OBS_SERVER_REQUEST_HOOK": "tests.nowhere:hook"})
    assert err.value.setting == "server_request_hook"
    with pytest.raises(ConfigurationError):
        ObservabilityConfig(server_response_hook="not callable at all")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        ObservabilityConfig(server_request_hook=42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- property
def _luhn_complete(body: str) -> str:
    """``body`` plus the check digit that makes it pass Luhn."""
    for d in "0123456789":
        digits = body + d
        total = 0
        for i, ch in enumerate(reversed(digits)):
            n = int(ch) * (2 if i % 2 else 1)
            total += n - 9 if n > 9 else n
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


_cards = st.builds(lambda n, sep: sep.join(re.findall(".{1,4}", _luhn_complete(n))),
                   st.text("0123456789", min_size=12, max_size=18), st.sampled_from(["", " ", "-"]))
_refs = st.from_regex(r"ORD-[0-9]{8}", fullmatch=True)
_filler = st.text(st.characters(codec="utf-8", exclude_characters="0123456789"), max_size=20)
_secrets = st.one_of(_cards, _refs)
_values = st.builds(lambda a, s, b: f"{a} {s} {b}", _filler, _secrets, _filler)
_keys = st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){0,2}", fullmatch=True)


@pytest.fixture(scope="module")
def patterned() -> Iterator[Any]:
    with fresh_observability(redact_patterns=(r"ORD-[0-9]{8}",)) as obs:
        yield obs


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attrs=st.dictionaries(_keys, st.one_of(_values, st.lists(_values, min_size=1, max_size=3)),
                             min_size=1, max_size=5),
       event=_values, lean=st.booleans())
def test_no_card_number_or_pattern_match_survives_in_any_exported_attribute(
        patterned: Any, attrs: dict[str, Any], event: str, lean: bool) -> None:
    tracer = patterned.tracing.own_tracer if lean else patterned.tracing.tracer
    with captured_spans() as spans:
        sp = tracer.start_span("prop")
        sp.set_attributes(attrs)
        sp.add_event("e", {"text": event})
        sp.end()
    got = spans.by_name("prop")
    texts: list[str] = []
    for value in [*got.attributes.values(), *got.events[0].attributes.values()]:
        texts.extend(value if isinstance(value, tuple) else [value])
    for text in texts:
        assert not re.search(r"ORD-[0-9]{8}", text)
        for m in re.finditer(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])", text):
            assert not _luhn_ok(m.group(0).replace(" ", "").replace("-", "")), text


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return 13 <= len(digits) <= 19 and total % 10 == 0


# ---------------------------------------------------------------------- units
def test_header_names_match_whole_and_case_insensitively() -> None:
    from mestres_observability.http import HeaderCapture

    cfg = ObservabilityConfig(capture_request_headers=("x-.*", "Accept"),
                              capture_headers_sanitize_fields=("x-secret",))
    capture = HeaderCapture.build("http.request.header.", cfg.capture_request_headers, cfg)
    assert capture is not None
    got = capture.attributes([("X-Region", "eu"), (b"x-region", b"us"), ("ax-nope", "1"),
                              ("accept", "*/*"), ("accept-encoding", "gzip"),
                              ("X-Secret", "s"), ("x-secretive", "kept"), ("X-Auth-Token", "t")])
    assert got == {"http.request.header.x-region": ("eu", "us"),
                   "http.request.header.accept": ("*/*",),
                   "http.request.header.x-secret": ("[REDACTED]",),
                   "http.request.header.x-secretive": ("kept",),
                   "http.request.header.x-auth-token": ("[REDACTED]",)}  # redact_keys: token
    assert HeaderCapture.build("http.request.header.", (), cfg) is None


def test_a_scrubbed_sdk_span_keeps_its_dropped_counts() -> None:
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider

    from mestres_observability.tracing import _Scrub, scrub_readable

    provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=2, max_events=1),
                              shutdown_on_exit=False)
    sp = provider.get_tracer("t").start_span("s", attributes={"a": 1, "b": 2})
    sp.set_attribute("user.password", "hunter2")  # evicts "a"
    sp.add_event("one", {"note": "x"})
    sp.add_event("two", {"note": f"card {CARD}"})  # evicts "one"
    sp.end()
    scrubber = _Scrub(ObservabilityConfig(), _faults()).scrubber
    out = scrub_readable(scrubber, sp)  # type: ignore[arg-type]
    assert out is not sp
    assert dict(out.attributes) == {"b": 2, "user.password": "[REDACTED]"}
    assert (out.dropped_attributes, out.dropped_events) == (1, 1)
    assert [dict(e.attributes) for e in out.events] == [{"note": "card [REDACTED]"}]
    clean = provider.get_tracer("t").start_span("c", attributes={"a": "fine"})
    clean.end()
    assert scrub_readable(scrubber, clean) is clean  # nothing to redact: no copy  # type: ignore[arg-type]


def _faults() -> Any:
    from mestres_observability._fault import FaultReporter

    return FaultReporter()


def _scrubber() -> Any:
    from mestres_observability._redact import QueryRedactor, Redactor, SpanScrubber

    # as in the default settings: some query parameter names are not redacted keys of
    # the log lines (a ``ticket=`` pair in a plain text stays)
    values = Redactor(("password",))
    return SpanScrubber(values, QueryRedactor(("password", "token", "ticket"), values))


@pytest.mark.parametrize("url_key", ["url.query", "url.full", "http.target"])
def test_a_text_found_clean_under_a_plain_key_is_still_query_redacted_under_a_url_key(
        url_key: str) -> None:
    # the scrubber remembers texts found clean; clean under the plain rules says nothing
    # about the query rules a url attribute also passes
    text = "ticket=abc123" if url_key == "url.query" else "/pay?ticket=abc123"
    scrubber = _scrubber()
    assert scrubber.attributes({"app.note": text}) is None  # clean as a plain text
    out = scrubber.attributes({url_key: text})
    assert out is not None
    assert "abc123" not in out[url_key]
    assert "[REDACTED]" in out[url_key]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["app.note", "url.query", "url.full", "http.target",
                                           "db.statement"]),
                          st.sampled_from(["ticket=abc123", "/pay?ticket=abc123", "plain text",
                                           "a=1&b=2", "/x?token=t0k3n#frag"])),
                min_size=1, max_size=12))
def test_span_scrubbing_does_not_depend_on_what_the_scrubber_saw_before(
        seen: list[tuple[str, str]]) -> None:
    warm = _scrubber()
    for key, text in seen:
        warm_out = warm.attributes({key: text})
        cold_out = _scrubber().attributes({key: text})
        assert warm_out == cold_out, (key, text)
