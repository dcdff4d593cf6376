"""The fast JSON renderer (orjson) writes the very bytes the standard library's encoder writes.

Each event is logged twice through the library's real processor chain, once with the fast
path and once with it off (the standard encoder alone), and the two lines must be equal
byte for byte; both the direct path (the library's handler alone) and the path through
``logging`` (another handler on the root logger) are covered. The renderer is also fed raw,
uncleaned values directly (NaN, huge ints, objects whose ``str`` raises ...).
"""

from __future__ import annotations

import datetime as dt
import enum
import io
import json
import logging
import math
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mestres_observability import get_logger, log_event
from mestres_observability import logs as logs_module
from mestres_observability._fault import FaultReporter
from mestres_observability.config import ObservabilityConfig
from mestres_observability.logs import configure_logging, render_json
from mestres_observability.testing import fresh_observability
from tests._support import restored_logging

pytestmark = pytest.mark.skipif(logs_module._FAST_DUMPS is None, reason="orjson not usable")

FIXED_TS = "2026-01-02T03:04:05.678Z"


# ---------------------------------------------------------------------- hostile values
class _NoStr:
    """``str`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        return "<_NoStr>"


class _NoRepr:
    """``repr`` raises (hypothesis shows it as such if a test fails)."""

    def __str__(self) -> str:
        return "printable"

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class _Printable:
    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


class _Colour(enum.Enum):
    RED = "red"


class _Level(enum.IntEnum):
    HIGH = 3


class _Str(str):
    pass


_SPECIAL_TEXT = ["", "\u2028", "\u2029", "\ud800", "a\udfffb", "\x7f", "\x00", "\x1b[31m",
                 "\n", '"} {"level":"admin', "1e-05", "0.0000", "caf\u00e9", "\U0001f600",
                 "token=abc123", "4111 1111 1111 1111", "Bearer abcdefghij"]
_SPECIAL_FLOATS = [0.0, -0.0, 1e-4, 9.99e-5, 1e-5, 1e-6, 1e-10, 5e-324, 1e15, 1e16, 1e17,
                   1.5e300, -1e22, math.nan, math.inf, -math.inf, 2.5, 1 / 3]
_SPECIAL_INTS = [2**63, 2**63 + 1, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**40]

texts = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=()), max_size=30),  # lone surrogates too
    st.text(max_size=30),
    st.sampled_from(_SPECIAL_TEXT),
)
floats = st.one_of(st.floats(), st.floats(min_value=1e-11, max_value=1e-3),
                   st.floats(min_value=1e15, max_value=1e18), st.sampled_from(_SPECIAL_FLOATS))
ints = st.one_of(st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
                 st.sampled_from(_SPECIAL_INTS))
scalars = st.one_of(
    texts, floats, ints, st.booleans(), st.none(),
    st.decimals(),  # NaN, sNaN and infinities included
    st.datetimes(), st.dates(), st.times(), st.binary(max_size=20),
    st.builds(_NoStr), st.builds(_NoRepr), texts.map(_Printable), st.sampled_from([_Colour.RED, _Level.HIGH]),
    texts.map(_Str),
)
keys = st.one_of(texts, st.integers(), st.none(), st.booleans(), floats)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(keys, inner, max_size=4),
        st.frozensets(st.integers(), max_size=3),
    ),
    max_leaves=12,
)
#: keyword arguments of a log call (``self`` and ``event`` are the logger method's own)
fields = st.dictionaries(texts.filter(lambda k: k not in ("self", "event")), values,
                         max_size=6)


# ---------------------------------------------------------------------- set-up
class _Recorder(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        pass


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The library's logging configured on a buffer, every timestamp the same."""
    out = io.StringIO()
    monkeypatch.setattr(logs_module, "_timestamp", lambda: FIXED_TS)
    with fresh_observability(), restored_logging():
        configure_logging(ObservabilityConfig(service_name="shop", log_format="json",
                                              log_max_value_length=64),
                          FaultReporter(), stream=out)
        yield out


def _both_ways(out: io.StringIO, emit: Callable[[], None]) -> tuple[str, str, int]:
    """What ``emit`` writes with the fast renderer and with the standard encoder alone,
    and how many of the fast run's lines orjson wrote."""
    fast = logs_module._FAST_DUMPS
    used = [0]

    def counting(value: Any) -> bytes:
        used[0] += 1
        return fast(value)  # type: ignore[no-any-return]

    written = []
    for dumps in (counting, None):
        out.seek(0)
        out.truncate()
        logs_module._FAST_DUMPS = dumps
        try:
            emit()
        finally:
            logs_module._FAST_DUMPS = fast
        written.append(out.getvalue())
    return written[0], written[1], used[0]


def _only_library_handler(direct: bool) -> tuple[list[logging.Handler], logging.Handler | None]:
    """Remove the root's other handlers (pytest's) for the direct path, or add one for the
    path through ``logging``; returns what to put back and what to remove."""
    root = logging.getLogger()
    others = [h for h in root.handlers if not getattr(h, "mestres_handler", False)]
    if direct:
        for h in others:
            root.removeHandler(h)
        return others, None
    extra = _Recorder()
    root.addHandler(extra)
    return [], extra


def _restore(others: list[logging.Handler], extra: logging.Handler | None) -> None:
    root = logging.getLogger()
    for h in others:
        root.addHandler(h)
    if extra is not None:
        root.removeHandler(extra)


# ---------------------------------------------------------------------- through the chain
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(event=values, data=fields, direct=st.booleans())
def test_fast_and_standard_lines_are_byte_identical(stream: io.StringIO, event: Any,
                                                    data: dict[str, Any], direct: bool) -> None:
    log = get_logger("shop.checkout")
    std = logging.getLogger("thirdparty")

    def emit() -> None:
        log.info(event, **data)
        log_event(event if isinstance(event, str) else "order_created", **data)
        std.warning("from %s", "logging", extra={"payload": data, "value": event})
        try:
            raise ValueError(data)
        except ValueError:
            log.exception("failed", **data)

    others, extra = _only_library_handler(direct)
    try:
        fast, standard, _used = _both_ways(stream, emit)
    finally:
        _restore(others, extra)
    assert fast == standard
    assert fast.isascii()
    assert len(fast.splitlines()) == 4
    for line in fast.splitlines():
        json.loads(line, parse_constant=_no_constants)


def _no_constants(text: str) -> Any:
    raise ValueError(f"non-strict JSON constant {text}")


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "through logging"])
def test_ordinary_lines_are_written_by_orjson(stream: io.StringIO, direct: bool) -> None:
    """The fast path is the one taken for the usual lines (the property above is not vacuous)."""
    log = get_logger("mestres_observability.access")

    def emit() -> None:
        log.info("http_request", request_id="r-1", method="GET", url="/orders/42?page=2",
                 endpoint="/orders/<int:order_id>", status_code=200, duration_seconds=0.000123,
                 user_agent="bench/1", ip_address="127.0.0.1", user_id=None,
                 trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="00f067aa0ba902b7")
        log_event("order_created", order_id="o-1", total_amount=19.99, items_count=3,
                  items=[{"sku": "latte", "quantity": 2}], paid=True, ratio=1e15)
        logging.getLogger("thirdparty").warning("hello %s", "world", extra={"user": "bob"})

    others, extra = _only_library_handler(direct)
    try:
        fast, standard, used = _both_ways(stream, emit)
    finally:
        _restore(others, extra)
    assert fast == standard
    assert used == 3
    first = fast.splitlines()[0]
    assert first.startswith(f'{{"timestamp":"{FIXED_TS}","level":"info","event":"http_request",'
                            '"logger":"mestres_observability.access","service":"shop",')
    assert '"duration_seconds":0.000123,' in first


@pytest.mark.parametrize(("value", "fast"), [
    ("plain", True), (0.5, True), (-0.0, True), (2**64 - 1, True), ([1, "a"], True),
    ("caf\u00e9", False), ("\u2028", False), ("\x7f", False), ("\ud800", False),
    (1e-5, False), (9.99e-5, False), (math.nan, False), (2**64, False), ({1: "a"}, False),
    (_Str("s"), False), (_Colour.RED, False),
])
def test_what_takes_the_standard_encoder(value: Any, fast: bool) -> None:
    """Values orjson would spell otherwise (or refuses) are left to the standard encoder."""
    assert _renders_fast({"value": value}) is fast


def _renders_fast(event: dict[str, Any]) -> bool:
    """True when render_json returns orjson's line for ``event``."""
    fast = logs_module._FAST_DUMPS
    hits = [0]

    def probe(value: Any) -> bytes:
        hits[0] += 1
        out: bytes = fast(value)
        return out

    logs_module._FAST_DUMPS = probe
    try:
        line = render_json(None, "info", event)
    finally:
        logs_module._FAST_DUMPS = fast
    try:
        expected = fast(event).decode("ascii")
    except Exception:  # orjson refuses it, or writes raw UTF-8
        return False
    return hits[0] == 1 and line == expected


# ---------------------------------------------------------------------- the renderer alone
@settings(max_examples=400, deadline=None)
@given(event=st.dictionaries(keys, values, max_size=8))
def test_render_json_is_the_same_for_raw_values(event: dict[Any, Any]) -> None:
    """Fed directly (no cleaning before it), including NaN, huge ints, keys that are not
    str and objects whose ``str`` raises: the same text as the standard encoder, or the same
    ``log_render_failed`` line when that refuses the event."""
    fast = logs_module._FAST_DUMPS
    with_fast = render_json(None, "info", event)
    logs_module._FAST_DUMPS = None
    try:
        standard = render_json(None, "info", event)
    finally:
        logs_module._FAST_DUMPS = fast
    assert with_fast == standard


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_still_give_the_render_failed_line(value: float) -> None:
    """As before the fast path: the standard encoder refuses them and the line says so."""
    line = render_json(None, "info", {"timestamp": FIXED_TS, "level": "info", "event": "e",
                                      "service": "shop", "x": value})
    assert json.loads(line) == {"timestamp": FIXED_TS, "level": "info",
                                "event": "log_render_failed",
                                "service": logs_module._state.service, "original_event": "e"}


def test_fast_dumps_checks_the_orjson_build() -> None:
    """The probe accepts the installed orjson and records the float range it spells as repr."""
    assert logs_module._fast_dumps() is not None
    top = logs_module._FLOAT_HIGH
    assert top in (1e16, math.inf)
    # orjson before 3.11.7 writes 1e16 where repr writes 1e+16: no fast path from there up
    assert _renders_fast({"x": 1e16}) is (top == math.inf)
    assert _renders_fast({"x": -1.5e300}) is (top == math.inf)
    assert _renders_fast({"x": 9999999999999998.0, "when": str(dt.date(2026, 1, 1)),
                          "d": float(Decimal("19.99"))})
