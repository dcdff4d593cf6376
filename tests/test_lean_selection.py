"""Which path the library's own spans take, shown on the OTLP wire.

The lean span path is used only when the tracer provider is the library's own, no other
span processor is attached to it and the sampler is a built-in one; each condition that
selects the SDK path is set up in a fresh interpreter (the provider, its processors and
its sampler are fixed for the life of a process), which serves one traced Flask request
and one business span and exports them to the receiver of this test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mestres_observability.errors import ConfigurationError
from mestres_observability.testing import fresh_observability
from tests._support import require_module
from tests.otlp_receiver import OTLPReceiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"

_SCRIPT = """
import json, sys
from opentelemetry import trace
mode, endpoint = sys.argv[1], sys.argv[2]
user = None
if mode == "own provider":
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    user = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(user))
    trace.set_tracer_provider(provider)
import flask
from mestres_observability import init_observability, span
from mestres_observability.flask import instrument
settings = {"custom sampler": {"traces_sampler": "custom_always_on"},
            "setting": {"lean_spans": False}}.get(mode, {})
obs = init_observability(otlp_endpoint=endpoint, service_name="selection",
                         configure_logging=False, **settings)
if mode in ("extra processor", "extra processor, re-init"):
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    user = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(user))
    if mode == "extra processor, re-init":
        obs = init_observability(otlp_endpoint=endpoint, service_name="selection",
                                 configure_logging=False)
app = flask.Flask("selection")
seen = []

@app.get("/orders/<int:order_id>")
def order(order_id):
    seen.append(type(trace.get_current_span()).__name__)
    with span("business") as sp:
        seen.append(type(sp).__name__)
    return {"id": order_id}

instrument(app)
status = app.test_client().get("/orders/7", headers={"traceparent": sys.argv[3]}).status_code
result = {"lean": obs.tracing.lean, "seen": seen, "status": status,
          "sampler": trace.get_tracer_provider().sampler.get_description(),
          "user": sorted(s.name for s in user.get_finished_spans()) if user else None}
obs.shutdown(timeout=5)
print(json.dumps(result))
"""


def _sampler_distribution(root: Path) -> Path:
    """An installed distribution on ``root`` with an ``opentelemetry_traces_sampler`` entry
    point ``custom_always_on`` (a sampler the lean spans cannot honour)."""
    (root / "custom_sampler_pkg.py").write_text(
        "from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased\n"
        "class Custom(ParentBased):\n"
        "    def get_description(self):\n"
        "        return 'CustomSampler'\n"
        "def make(arg):\n"
        "    return Custom(ALWAYS_ON)\n", encoding="utf-8")
    info = root / "custom_sampler-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: custom-sampler\nVersion: 1.0\n",
                                   encoding="utf-8")
    (info / "entry_points.txt").write_text(
        "[opentelemetry_traces_sampler]\ncustom_always_on = custom_sampler_pkg:make\n",
        encoding="utf-8")
    return root


def _run(mode: str, rx: OTLPReceiver, extra_path: Path | None = None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESTRES_OBS_"))}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, mode, rx.endpoint, TRACEPARENT],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == 200
    # on the wire either way: the SERVER span joined to the caller's trace, the business
    # span its child
    rx.wait_for(lambda: {"GET /orders/<int:order_id>", "business"} <= rx.span_names())
    assert rx.bad_requests == []
    server, business = rx.by_name("GET /orders/<int:order_id>"), rx.by_name("business")
    assert server.trace_id == business.trace_id == TRACE_ID
    assert business.parent_span_id == server.span_id
    assert server.attributes["http.route"] == "/orders/<int:order_id>"
    return out


@pytest.fixture(autouse=True)
def _flask() -> None:
    require_module("flask")


@pytest.fixture
def rx() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as receiver:
        yield receiver


def test_the_library_provider_alone_gives_lean_spans(rx: OTLPReceiver) -> None:
    out = _run("default", rx)
    assert out["lean"] is True
    assert out["seen"] == ["LeanSpan", "LeanSpan"]


def test_a_provider_of_your_own_gives_sdk_spans_your_processor_sees(
        rx: OTLPReceiver) -> None:
    out = _run("own provider", rx)
    assert out["lean"] is False
    assert out["seen"] == ["_Span", "_Span"]
    assert out["user"] == ["GET /orders/<int:order_id>", "business"]


@pytest.mark.parametrize("mode", ["extra processor", "extra processor, re-init"])
def test_a_processor_added_to_the_library_provider_turns_lean_spans_off(
        rx: OTLPReceiver, mode: str) -> None:
    out = _run(mode, rx)
    assert out["lean"] is False
    assert out["seen"] == ["_Span", "_Span"]
    assert out["user"] == ["GET /orders/<int:order_id>", "business"]  # it sees every span


def test_a_sampler_the_lean_span_cannot_honour_gives_sdk_spans(
        rx: OTLPReceiver, tmp_path: Path) -> None:
    out = _run("custom sampler", rx, _sampler_distribution(tmp_path))
    assert out["sampler"] == "CustomSampler"  # the entry point's sampler is the provider's
    assert out["lean"] is False
    assert out["seen"] == ["_Span", "_Span"]


def test_lean_spans_false_forces_the_sdk_path(rx: OTLPReceiver) -> None:
    out = _run("setting", rx)
    assert out["lean"] is False
    assert out["seen"] == ["_Span", "_Span"]


def test_an_unknown_sampler_name_is_refused_at_init() -> None:
    with pytest.raises(ConfigurationError, match="no installed sampler"), \
            fresh_observability(traces_sampler="no_such_sampler"):
        pass
    with pytest.raises(ConfigurationError, match="traces_sampler"), \
            fresh_observability(traces_sampler="Bad Name!"):
        pass


def test_lean_spans_from_the_environment() -> None:
    from mestres_observability.config import ObservabilityConfig

    assert ObservabilityConfig.from_env({"MESTRES_OBS_LEAN_SPANS": "false"}).lean_spans is False
    assert ObservabilityConfig().lean_spans is True


_SAMPLING = """
import json, sys
from opentelemetry import trace
import flask
from mestres_observability import init_observability, span
from mestres_observability.flask import instrument
obs = init_observability(configure_logging=False, traces_sampler=sys.argv[1],
                         traces_sampler_arg=float(sys.argv[2]))
sampler = trace.get_tracer_provider().sampler
app = flask.Flask("sampling")
seen = []

@app.get("/")
def index():
    sc = trace.get_current_span().get_span_context()
    seen.append([type(trace.get_current_span()).__name__, bool(sc.trace_flags & 1),
                 format(sc.trace_id, "032x")])
    return "ok"

instrument(app)
client = app.test_client()
for flags in ("01", "00"):
    client.get("/", headers={"traceparent": f"00-{'4bf92f3577b34da6a3ce929d0e0e4736'}-"
                                            f"00f067aa0ba902b7-{flags}"})
roots = []
for _ in range(200):
    with span("root") as sp:
        ctx = sp.get_span_context()
        expected = sampler.should_sample(None, ctx.trace_id, "root").decision.is_sampled()
        roots.append([bool(ctx.trace_flags & 1), expected, sp.is_recording()])
print(json.dumps({"lean": obs.tracing.lean, "requests": seen, "roots": roots}))
"""


@pytest.mark.parametrize("sampler", ["parentbased_traceidratio", "traceidratio"])
def test_the_configured_sampler_decides_lean_spans_as_the_sdk_would(sampler: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESTRES_OBS_"))}
    proc = subprocess.run([sys.executable, "-c", _SAMPLING, sampler, "0.5"],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["lean"] is True
    (sampled_parent, unsampled_parent) = out["requests"]
    if sampler.startswith("parentbased_"):
        # the incoming traceparent's flag decides: recorded (lean) when sampled, not else
        assert sampled_parent[:2] == ["LeanSpan", True]
        assert unsampled_parent[:2] == ["NonRecordingSpan", False]
    else:  # the trace id alone decides, whatever the caller's flag
        assert sampled_parent[1] == unsampled_parent[1]
    assert sampled_parent[2] == unsampled_parent[2] == TRACE_ID
    roots = out["roots"]
    assert all(flag == expected == recording for flag, expected, recording in roots)
    assert 40 < sum(flag for flag, _e, _r in roots) < 160  # about half, as the ratio says


def test_captured_spans_sees_lean_spans_as_readable_spans() -> None:
    from opentelemetry.sdk.trace import ReadableSpan

    from mestres_observability import span
    from mestres_observability.testing import captured_spans

    with fresh_observability(service_name="captured") as obs, captured_spans() as spans:
        assert obs.tracing.lean
        with span("outer", **{"order.id": "o-1"}) as outer, span("inner"):
            assert type(outer).__name__ == "LeanSpan"
    inner, outer_view = spans.spans
    assert isinstance(inner, ReadableSpan)
    assert isinstance(outer_view, ReadableSpan)
    assert spans.names() == ["inner", "outer"]
    assert dict(outer_view.attributes) == {"order.id": "o-1"}
    assert inner.parent is not None
    assert inner.parent.span_id == outer_view.context.span_id
    assert outer_view.instrumentation_scope.name == "mestres_observability"
