"""Spans API, provider set-up and exemplars (in-memory spans; the wire is in tests/integration)."""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from mestres_observability import ConfigurationError, MissingExtraError, track_order
from mestres_observability.testing import captured_spans, fresh_observability, reset
from mestres_observability.tracing import _GLOBAL, MAX_ATTRIBUTE_LENGTH, span, traced


class Boom(Exception):
    pass


def test_traced_sync_keeps_result_signature_and_nests() -> None:
    sentinel = object()

    @traced
    def outer(a: int, *, b: str = "x") -> object:
        """Doc."""
        return inner()

    @traced("inner-step", kind="db")
    def inner() -> object:
        return sentinel

    assert inspect.signature(outer).parameters.keys() == {"a", "b"}
    assert outer.__doc__ == "Doc."
    with fresh_observability(), captured_spans() as spans:
        assert outer(1) is sentinel
    assert spans.names() == ["inner-step", "test_traced_sync_keeps_result_signature_and_nests."
                             "<locals>.outer"]
    child, parent = spans.spans
    assert child.parent is not None
    assert child.parent.span_id == parent.context.span_id
    assert dict(child.attributes or {}) == {"kind": "db"}


def test_exception_recorded_and_reraised_unchanged() -> None:
    err = Boom("bad")

    @traced("fails")
    def fails() -> None:
        raise err

    with fresh_observability(), captured_spans() as spans:
        with pytest.raises(Boom) as info:
            fails()
        assert info.value is err
        with pytest.raises(Boom) as info2, span("ctx"):
            raise err
        assert info2.value is err
    for s in spans.spans:
        assert s.status.status_code is StatusCode.ERROR
        assert [e.name for e in s.events] == ["exception"]
        assert (s.attributes or {})["error.type"] == "Boom"


def test_async_function_and_async_with() -> None:
    @traced("async-op")
    async def op(x: int) -> int:
        async with span("inside"):
            await asyncio.sleep(0)
        return x * 2

    assert inspect.iscoroutinefunction(op)
    with fresh_observability(), captured_spans() as spans:
        assert asyncio.run(op(21)) == 42
    inside, outer = spans.by_name("inside"), spans.by_name("async-op")
    assert inside.parent is not None
    assert inside.parent.span_id == outer.context.span_id


def test_generator_span_is_current_only_inside_the_body() -> None:
    seen: list[bool] = []

    @traced("gen")
    def numbers() -> Iterator[int]:
        seen.append(trace.get_current_span().is_recording())
        yield 1
        seen.append(trace.get_current_span().is_recording())
        yield 2

    with fresh_observability(), captured_spans() as spans:
        gen = numbers()
        assert next(gen) == 1
        assert not trace.get_current_span().is_recording()  # not leaked to the consumer
        assert list(gen) == [2]
    assert seen == [True, True]
    assert spans.names() == ["gen"]


def test_generator_close_and_error() -> None:
    @traced("gen-err")
    def broken() -> Iterator[int]:
        yield 1
        raise Boom("x")

    with fresh_observability(), captured_spans() as spans:
        g = broken()
        next(g)
        with pytest.raises(Boom):
            next(g)
        g2 = broken()
        next(g2)
        g2.close()
    errs = [s.status.status_code for s in spans.spans]
    assert errs == [StatusCode.ERROR, StatusCode.UNSET]


def test_async_generator() -> None:
    @traced("agen")
    async def items() -> AsyncIterator[int]:
        for i in range(3):
            async with span(f"item-{i}"):
                yield i

    async def main() -> list[int]:
        return [i async for i in items()]

    with fresh_observability(), captured_spans() as spans:
        assert asyncio.run(main()) == [0, 1, 2]
    parent = spans.by_name("agen")
    for i in range(3):
        child = spans.by_name(f"item-{i}")
        assert child.parent is not None
        assert child.parent.span_id == parent.context.span_id


def test_generator_send_throw_and_return_reach_the_body() -> None:
    from collections.abc import Generator

    @traced("echo")
    def echo() -> Generator[int, int, str]:
        total = 0
        while total < 10:
            try:
                total += yield total
            except Boom:
                assert trace.get_current_span().is_recording()
                total += 100
        return f"total={total}"

    def consume() -> Generator[int, int, str]:
        return (yield from echo())

    with fresh_observability(), captured_spans() as spans:
        g = consume()
        assert next(g) == 0
        assert g.send(3) == 3
        with pytest.raises(StopIteration) as stop:
            g.throw(Boom("x"))
        assert stop.value.value == "total=103"
        assert not trace.get_current_span().is_recording()
    (done,) = spans.spans
    assert done.name == "echo"
    assert done.status.status_code is StatusCode.UNSET


def test_async_generator_asend_athrow_and_aclose() -> None:
    from collections.abc import AsyncGenerator

    closed: list[bool] = []

    @traced("aecho")
    async def aecho() -> AsyncGenerator[int, int]:
        total = 0
        try:
            while True:
                try:
                    total += yield total
                except Boom:
                    total += 100
        finally:
            closed.append(trace.get_current_span().is_recording())

    async def main() -> list[int]:
        g = aecho()
        out = [await g.__anext__(), await g.asend(2), await g.athrow(Boom("x"))]
        assert not trace.get_current_span().is_recording()
        await g.aclose()
        return out

    with fresh_observability(), captured_spans() as spans:
        assert asyncio.run(main()) == [0, 2, 102]
    assert closed == [True]  # the body's clean-up ran with its span current
    assert [s.name for s in spans.spans] == ["aecho"]


def test_attributes_are_sanitised_never_raise() -> None:
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    with fresh_observability(), captured_spans() as spans, span(
        "attrs", money=Decimal("19.99"), big="x" * 100_000, hostile=Hostile(),
        none=None, huge=10**30, seq=[1, 2], flag=True,
    ):
        pass
    attrs = dict(spans.by_name("attrs").attributes or {})
    assert attrs["money"] == pytest.approx(19.99)
    assert isinstance(attrs["money"], float)
    assert len(attrs["big"]) == MAX_ATTRIBUTE_LENGTH
    assert "hostile" not in attrs
    assert "none" not in attrs
    assert attrs["huge"] == str(10**30)
    assert attrs["seq"] == (1, 2)
    assert attrs["flag"] is True


def test_business_span_is_parent_of_user_spans_and_log_carries_trace() -> None:
    from mestres_observability.testing import capture_logs

    @track_order
    def create() -> dict[str, object]:
        with span("validate_inventory"):
            pass
        return {"id": "o1", "user_id": "u1", "status": "paid", "total_amount": Decimal("5.5")}

    with fresh_observability(), captured_spans() as spans, capture_logs() as events:
        create()
    order = spans.by_name("process_order")
    child = spans.by_name("validate_inventory")
    assert child.parent is not None
    assert child.parent.span_id == order.context.span_id
    created = [e for e in events if e["event"] == "order_created"]
    assert created
    assert created[0]["trace_id"] == format(order.context.trace_id, "032x")
    assert created[0]["total_amount"] == 5.5


def test_disabled_tracing_creates_no_spans_and_costs_nothing() -> None:
    @traced("off")
    def f() -> int:
        return 1

    with fresh_observability(tracing_enabled=False) as obs, captured_spans() as spans:
        assert not obs.tracing.enabled
        assert f() == 1
        with span("also-off") as sp:
            assert not sp.is_recording()
    assert spans.names() == []


def test_exemplar_provider_only_for_sampled_recording_span() -> None:
    with fresh_observability() as obs:
        provider = obs.metrics.exemplar_provider
        assert provider is not None
        assert provider() is None
        with span("s") as sp:
            ex = provider()
            assert ex is not None
            assert ex["trace_id"] == format(sp.get_span_context().trace_id, "032x")
            assert len(ex["trace_id"]) == 32
            assert len(ex["span_id"]) == 16
            assert len(ex["trace_id"]) + len(ex["span_id"]) + len("trace_idspan_id") <= 128
    with fresh_observability(exemplars=False) as obs:
        assert obs.metrics.exemplar_provider is None


def test_reinit_keeps_one_processor_and_repoints_it() -> None:
    with fresh_observability():
        provider = _GLOBAL.provider
        assert provider is not None
        before = len(provider._active_span_processor._span_processors)
    for _ in range(20):
        with fresh_observability(traces_exporter="console"):
            pass
    assert _GLOBAL.provider is provider
    assert len(provider._active_span_processor._span_processors) == before
    assert trace.get_tracer_provider() is provider


def test_default_instance_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(trace, "set_tracer_provider", lambda p: calls.append(p))
    previous = _GLOBAL.provider
    obs = reset()
    assert obs.tracing.provider is None
    assert _GLOBAL.provider is previous
    assert calls == []


def test_bad_sampler_arg_and_propagator_fail_at_init() -> None:
    with pytest.raises(ConfigurationError, match="traces_sampler_arg"), fresh_observability(
        traces_sampler="traceidratio", traces_sampler_arg=1.5
    ):
        pass
    with pytest.raises(ConfigurationError, match="propagators"), fresh_observability(
        propagators=("no-such-propagator",)
    ):
        pass


def test_otlp_without_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(MissingExtraError, match=r"mestres-observability\[otlp\]"), \
            fresh_observability(traces_exporter="otlp"):
        pass


def test_console_exporter_writes_compact_lines_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    import json

    with fresh_observability(traces_exporter="console") as obs:
        with span("printed", k="v"):
            pass
        obs.shutdown()
    out, err = capfd.readouterr()
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(d["span"] == "printed" and d["attributes"] == {"k": "v"} for d in lines)
    assert "printed" not in out


def test_missing_auto_instrumentation_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="mestres_observability.tracing"), \
            fresh_observability(auto_instrument=("surely_not_installed_lib",)):
        pass
    assert "surely_not_installed_lib" in caplog.text


# ---------------------------------------------------------------- set-up read from OTEL_* (issue 3)
_SETUP_PROBE = """
import json
from opentelemetry import baggage, context, propagate, trace
from mestres_observability import get_logger, init_observability
from mestres_observability.testing import capture_logs
from mestres_observability.tracing import span

obs = init_observability(configure_logging=False)
provider = trace.get_tracer_provider()
carrier = {}
token = context.attach(baggage.set_baggage("tenant", "t1"))
with span("root") as sp, capture_logs() as events:
    propagate.inject(carrier)
    recording = sp.is_recording()
    exemplar = obs.metrics.current_exemplar()
    get_logger("probe").info("inside")
context.detach(token)
ctx = sp.get_span_context()
print(json.dumps({
    "ours": obs.tracing.provider is provider,
    "sampler": provider.sampler.get_description(),
    "resource": dict(provider.resource.attributes),
    "recording": recording,
    "sampled": bool(ctx.trace_flags & 1),
    "carrier": sorted(carrier),
    "exemplar": exemplar,
    "trace_id": format(ctx.trace_id, "032x"),
    "log_trace_id": events[0].get("trace_id"),
}))
"""


def _probe(**env: str) -> dict[str, Any]:
    """Run :data:`_SETUP_PROBE` in a fresh interpreter (the provider's resource and sampler
    are fixed by the first init of a process) with only ``env`` among the settings."""
    import json
    import os
    import subprocess

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESTRES_OBS_"))}
    proc = subprocess.run([sys.executable, "-c", _SETUP_PROBE], capture_output=True, text=True,
                          timeout=60, env={**clean, **env}, check=False)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_defaults_parent_based_always_on_w3c_and_the_service_resource() -> None:
    out = _probe(MESTRES_OBS_SERVICE_NAME="cafe", MESTRES_OBS_SERVICE_VERSION="1.2.3",
                 MESTRES_OBS_ENVIRONMENT="staging")
    assert out["ours"]
    assert out["sampler"].startswith("ParentBased{root:AlwaysOnSampler")
    assert (out["recording"], out["sampled"]) == (True, True)
    assert out["carrier"] == ["baggage", "traceparent"]  # W3C trace context and baggage
    resource = out["resource"]
    assert (resource["service.name"], resource["service.version"],
            resource["deployment.environment.name"]) == ("cafe", "1.2.3", "staging")
    assert len(resource["service.instance.id"]) == 36
    assert out["exemplar"]["trace_id"] == out["trace_id"] == out["log_trace_id"]


def test_sampler_resource_and_propagators_from_otel_variables() -> None:
    out = _probe(OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="0",
                 OTEL_RESOURCE_ATTRIBUTES="team=coffee,deployment.environment.name=from-env",
                 OTEL_SERVICE_NAME="otel-svc", OTEL_PROPAGATORS="baggage")
    assert out["sampler"] == "TraceIdRatioBased{0.0}"
    assert (out["recording"], out["sampled"]) == (False, False)
    assert out["exemplar"] is None  # exemplars only for sampled spans
    assert out["log_trace_id"] == out["trace_id"]  # an unsampled span still correlates logs
    assert out["carrier"] == ["baggage"]  # no traceparent: tracecontext is not configured
    resource = out["resource"]
    assert resource["team"] == "coffee"
    assert resource["deployment.environment.name"] == "from-env"  # no setting overrides it
    assert resource["service.name"] == "otel-svc"


# ---------------------------------------------------------------- exporter none, auto-instrumentation
def test_exporter_none_still_creates_spans_for_log_correlation() -> None:
    from mestres_observability import get_logger
    from mestres_observability.testing import capture_logs

    with fresh_observability(traces_exporter="none") as obs, capture_logs() as events:
        assert obs.tracing.exporter == "none"
        with span("local") as sp:
            assert sp.is_recording()
            get_logger("x").info("correlated")
    ctx = sp.get_span_context()
    assert events[0]["trace_id"] == format(ctx.trace_id, "032x")
    assert events[0]["span_id"] == format(ctx.span_id, "016x")
    assert obs.tracing.exported == obs.tracing.dropped == 0


def test_installed_instrumentation_is_enabled_on_our_provider_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import types

    calls: list[object] = []

    class FakelibInstrumentor:
        is_instrumented_by_opentelemetry = False

        def instrument(self, **kwargs: object) -> None:
            calls.append(kwargs.get("tracer_provider"))

    module = types.ModuleType("opentelemetry.instrumentation.fakelib_issue3")
    module.FakelibInstrumentor = FakelibInstrumentor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for _ in range(2):
        with fresh_observability(auto_instrument=("fakelib_issue3",)):
            pass
    assert calls == [_GLOBAL.provider]


def test_failing_instrumentation_is_counted_never_raised() -> None:
    import types

    class BrokenInstrumentor:
        def instrument(self, **kwargs: object) -> None:
            raise RuntimeError("instrumentation blew up")

    module = types.ModuleType("opentelemetry.instrumentation.broken_issue3")
    module.BrokenInstrumentor = BrokenInstrumentor  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        with fresh_observability(auto_instrument=("broken_issue3",)) as obs:
            from mestres_observability.testing import sample_value

            assert sample_value("mestres_observability_errors_total", obs,
                                component="tracing") == 1
    finally:
        del sys.modules[module.__name__]


def test_missing_auto_instrumentation_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="mestres_observability.tracing"):
        for _ in range(3):
            with fresh_observability(auto_instrument=("not_installed_issue3",)):
                pass
    said = [r for r in caplog.records if "not_installed_issue3" in r.getMessage()]
    assert len(said) == 1
    assert "pip install opentelemetry-instrumentation-not-installed-issue3" in said[0].getMessage()


def test_duration_exemplar_is_visible_in_the_openmetrics_exposition() -> None:
    """What the HTTP adapters record: the duration histogram carries the sampled span's ids as
    an OpenMetrics exemplar; no exemplar outside a span."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    with fresh_observability() as obs:
        obs.metrics.http_request_duration_seconds.observe(("GET", "/outside", "200"), 0.01)
        with span("GET /orders/{id}") as sp:
            obs.metrics.http_request_duration_seconds.observe(("GET", "/orders/{id}", "200"),
                                                              0.042)
        body = obs.render_metrics("application/openmetrics-text;version=1.0.0").body.decode()
    ctx = sp.get_span_context()
    exemplars = [(s.labels, s.exemplar) for f in text_string_to_metric_families(body)
                 for s in f.samples
                 if s.name == "http_request_duration_seconds_bucket" and s.exemplar is not None]
    assert len(exemplars) == 1, exemplars
    labels, exemplar = exemplars[0]
    assert labels["endpoint"] == "/orders/{id}"
    assert labels["le"] == "0.05"
    assert exemplar.labels == {"trace_id": format(ctx.trace_id, "032x"),
                               "span_id": format(ctx.span_id, "016x")}
    assert exemplar.value == pytest.approx(0.042)


# ---------------------------------------------------------------- issue 11 (6)
def _deep_raise(depth: int) -> None:
    """Raise a chain of ``depth`` exceptions: message and stack trace past 1024 characters."""
    try:
        if depth:
            _deep_raise(depth - 1)
        else:
            raise KeyError("k" * 500)
    except Exception as exc:
        raise ValueError("x" * 3000) from exc


def _otel_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.name.startswith("opentelemetry")]


def test_a_raising_span_logs_nothing_from_opentelemetry(caplog: pytest.LogCaptureFixture) -> None:
    """The library's own exception event stays within the attribute limit (no SDK warning),
    keeping the start and the end of the stack trace."""

    @traced
    def work() -> None:
        _deep_raise(6)

    @track_order
    def create() -> None:
        _deep_raise(6)

    with fresh_observability(), captured_spans() as spans:
        with pytest.raises(ValueError), span("block"):
            _deep_raise(6)
        with pytest.raises(ValueError):
            work()
        with pytest.raises(ValueError):
            create()
    assert _otel_records(caplog) == []
    for name in ("block", "test_a_raising_span_logs_nothing_from_opentelemetry.<locals>.work",
                 "process_order"):
        (event,) = spans.by_name(name).events
        attrs = dict(event.attributes or {})
        assert event.name == "exception"
        assert attrs["exception.type"] == "ValueError"
        assert attrs["exception.message"].startswith("xxx")
        stack = attrs["exception.stacktrace"].rstrip("\n")
        assert all(len(v) <= MAX_ATTRIBUTE_LENGTH for v in attrs.values() if isinstance(v, str))
        assert stack.startswith("Traceback (most recent call last):")
        assert stack.splitlines()[-1].startswith("ValueError: xxx")
        assert 'raise ValueError("x" * 3000) from exc' in stack[-300:]  # the raising frame
        assert "chars cut]..." in stack
        assert len(attrs["exception.stacktrace"]) <= MAX_ATTRIBUTE_LENGTH


def test_long_business_values_are_cut_before_they_reach_the_span(
        caplog: pytest.LogCaptureFixture) -> None:
    @track_order
    def create() -> dict[str, Any]:
        return {"id": "o" * 5000, "status": "paid", "total_amount": 1}

    with fresh_observability(), captured_spans() as spans:
        create()
    assert _otel_records(caplog) == []
    assert len(spans.by_name("process_order").attributes["order.id"]) == MAX_ATTRIBUTE_LENGTH
