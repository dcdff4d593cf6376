"""The RUM payload schema: every limit, every rejection reason, and the published JSON Schema.

The validator (``mestres_observability.rum._schema``) and the JSON Schema
shipped beside the snippet (and printed on the docs' RUM page) describe the
same payloads: valid ones pass both, and the page shows the file as it is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mestres_observability.rum import REASONS, SCHEMA_FILE
from mestres_observability.rum._schema import (
    EVENT_REASONS,
    METRICS,
    PHASES,
    REQUEST_REASONS,
    PayloadError,
    parse,
    url_path,
    valid_trace_id,
)

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = frozenset(("add_to_cart", "order_completed", "product_viewed", "checkout_started"))
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def run(doc: Any, *, raw: bytes | None = None, max_events: int = 50) -> tuple[list[Any], list[Any]]:
    body = raw if raw is not None else json.dumps(doc).encode()
    events, rejected, _batched = parse(body, max_events=max_events, business_events=ALLOWED)
    return events, rejected


def reject(doc: Any = None, *, raw: bytes | None = None) -> tuple[str, str]:
    events, rejected = run(doc, raw=raw)
    assert not events
    assert len(rejected) == 1
    return rejected[0].reason, rejected[0].field


def whole(raw: bytes, max_events: int = 50) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        parse(raw, max_events=max_events, business_events=ALLOWED)
    return info.value


def vital(metric: str = "LCP", value: Any = 1200.0, **extra: Any) -> dict[str, Any]:
    return {"type": "web_vitals", "data": {"metric": metric, "value": value, **extra}}


# ---------------------------------------------------------------------- shapes
def test_the_three_accepted_shapes() -> None:
    one = vital()
    for doc, batched in ((one, False), ([one, one], True), ({"events": [one]}, True)):
        events, rejected, is_batch = parse(json.dumps(doc).encode(), max_events=50,
                                           business_events=ALLOWED)
        assert rejected == []
        assert is_batch is batched
        assert [e.name for e in events] == ["LCP"] * (2 if isinstance(doc, list) else 1)


@pytest.mark.parametrize("raw", [
    b"", b"nul", b"{", b"\xff\xfe", b"\xef\xbb\xbf{}", b"[" * 60000, b"{\"a\":" * 20000,
    "\"\ud800\"".encode("utf-8", "surrogatepass"),
])
def test_unreadable_json_is_refused_as_a_whole(raw: bytes) -> None:
    assert whole(raw).reason == "invalid_json"


@pytest.mark.parametrize("doc", [1, "x", None, True, {"events": {}}, {"events": [], "x": 1}])
def test_other_documents_are_invalid_payloads(doc: Any) -> None:
    assert whole(json.dumps(doc).encode()).reason == "invalid_payload"


def test_duplicate_keys_at_the_top_are_refused() -> None:
    assert whole(b'{"type": "web_vitals", "type": "errors", "data": {}}').reason == "invalid_payload"


def test_more_events_than_the_cap_refuse_the_batch_and_count_each() -> None:
    err = whole(json.dumps([vital()] * 51).encode())
    assert (err.reason, err.field, err.events) == ("too_many_events", "events", 51)
    assert len(run([vital()] * 50)[0]) == 50
    assert whole(json.dumps([vital()] * 3).encode(), max_events=2).reason == "too_many_events"


def test_ten_thousand_tiny_events_in_64_kib_are_refused() -> None:
    raw = json.dumps([{}] * 10_000).encode()
    assert len(raw) < 65536
    assert whole(raw).reason == "too_many_events"


# ---------------------------------------------------------------------- per event
@pytest.mark.parametrize(("doc", "reason", "field"), [
    ([1], "invalid_envelope", "events[0]"),
    ([{"type": "web_vitals", "data": {}, "extra": 1}], "invalid_envelope", "events[0]"),
    ([{"data": {}}], "missing_field", "events[0].type"),
    ([{"type": 7, "data": {}}], "invalid_type", "events[0].type"),
    ([{"type": "clicks", "data": {}}], "unknown_type", "events[0].type"),
    ([{"type": "web_vitals"}], "missing_field", "events[0].data"),
    ([{"type": "web_vitals", "data": []}], "invalid_type", "events[0].data"),
    ([vital("LCP", 1, password="x")], "unknown_field", "events[0].data"),
    ([vital("XYZ")], "unknown_metric", "events[0].data.metric"),
    ([{"type": "web_vitals", "data": {"value": 1}}], "missing_field", "events[0].data.metric"),
    ([{"type": "web_vitals", "data": {"metric": "LCP"}}], "missing_field", "events[0].data.value"),
    ([vital("LCP", True)], "invalid_type", "events[0].data.value"),
    ([vital("LCP", "123")], "invalid_type", "events[0].data.value"),
    ([vital("LCP", None)], "invalid_type", "events[0].data.value"),
    ([vital("LCP", -1)], "out_of_range", "events[0].data.value"),
    ([vital("LCP", 1e308)], "out_of_range", "events[0].data.value"),
    ([vital("CLS", 1e6)], "out_of_range", "events[0].data.value"),
    ([vital("LCP", 1, rating="great")], "invalid_value", "events[0].data.rating"),
    ([vital("LCP", 1, navigation_type="teleport")], "invalid_value",
     "events[0].data.navigation_type"),
    ([vital("LCP", 1, id="a b")], "invalid_value", "events[0].data.id"),
    ([vital("LCP", 1, id="x" * 65)], "too_long", "events[0].data.id"),
    ([vital("LCP", 1, url="/" + "x" * 2048)], "too_long", "events[0].data.url"),
    ([vital("LCP", 1, url=7)], "invalid_type", "events[0].data.url"),
    ([vital("LCP", 1, timestamp=-5)], "out_of_range", "events[0].data.timestamp"),
    ([vital("LCP", 1, session_id="<script>")], "invalid_value", "events[0].data.session_id"),
    ([{"type": "navigation", "data": {"phases": {"dns": 1, "teleport": 2}}}], "unknown_field",
     "events[0].data.phases"),
    ([{"type": "navigation", "data": {"phases": {"dns": -1}}}], "out_of_range",
     "events[0].data.phases.dns"),
    ([{"type": "navigation", "data": {}}], "missing_field", "events[0].data.phases"),
    ([{"type": "resource", "data": {"initiators": {"img": {"count": 1.5}}}}], "invalid_type",
     "events[0].data.initiators.img.count"),
    ([{"type": "resource", "data": {"initiators": {"img": {"count": 1, "url": "x"}}}}],
     "unknown_field", "events[0].data.initiators.img"),
    ([{"type": "resource", "data": {"initiators": {"https://evil/": {"count": 1}}}}],
     "unknown_field", "events[0].data.initiators"),
    ([{"type": "errors", "data": {"type": "fatal"}}], "invalid_value", "events[0].data.type"),
    ([{"type": "errors", "data": {"type": "javascript", "message": "m" * 257}}], "too_long",
     "events[0].data.message"),
    ([{"type": "errors", "data": {"type": "javascript", "stack": "s" * 4097}}], "too_long",
     "events[0].data.stack"),
    ([{"type": "errors", "data": {"type": "javascript", "lineno": -1}}], "out_of_range",
     "events[0].data.lineno"),
    ([{"type": "errors", "data": {"message": "x"}}], "missing_field", "events[0].data.type"),
    ([{"type": "business_events", "data": {"event": "drop_table"}}], "unknown_event",
     "events[0].data.event"),
    ([{"type": "business_events", "data": {"event": "add_to_cart", "data": {"a": {"b": 1}}}}],
     "invalid_type", "events[0].data.data"),
    ([{"type": "business_events", "data": {"event": "add_to_cart",
                                           "data": {str(i): i for i in range(17)}}}],
     "too_many_keys", "events[0].data.data"),
])
def test_each_bad_field_gets_its_reason_and_schema_path(doc: Any, reason: str, field: str) -> None:
    assert reject(doc) == (reason, field)
    assert reason in EVENT_REASONS


def test_single_envelope_fields_have_no_batch_prefix() -> None:
    assert reject(vital("LCP", -1)) == ("out_of_range", "data.value")


def test_nan_infinity_and_huge_numbers_are_refused_per_field() -> None:
    for text, reason in (("NaN", "invalid_value"), ("Infinity", "invalid_value"),
                         ("-Infinity", "invalid_value"), ("1e999", "out_of_range"),
                         ("-1e999", "out_of_range"), ("1" * 400, "out_of_range"),
                         ("9" * 5000, "out_of_range")):
        raw = ('[{"type": "web_vitals", "data": {"metric": "LCP", "value": ' + text + "}}]").encode()
        assert reject(raw=raw) == (reason, "events[0].data.value"), text


def test_duplicate_and_too_many_keys_inside_an_event_reject_that_event_only() -> None:
    raw = (b'[{"type": "web_vitals", "data": {"metric": "LCP", "metric": "CLS", "value": 1}},'
           b' {"type": "web_vitals", "data": {"metric": "FCP", "value": 1}}]')
    events, rejected = run(None, raw=raw)
    assert [e.name for e in events] == ["FCP"]
    assert [(r.reason, r.field) for r in rejected] == [("duplicate_key", "events[0].data")]
    many = json.dumps([{"type": "web_vitals", "data": {f"k{i}": i for i in range(65)}}]).encode()
    assert reject(raw=many) == ("too_many_keys", "events[0].data")


def test_lone_surrogates_never_pass() -> None:
    for field in ("url", "id", "rating"):
        raw = ('[{"type": "web_vitals", "data": {"metric": "LCP", "value": 1, "' + field
               + '": "\\ud800"}}]').encode()
        reason, path = reject(raw=raw)
        assert reason == "invalid_value"
        assert path == f"events[0].data.{field}"
    raw = b'[{"type": "business_events", "data": {"event": "\\udfffadd_to_cart"}}]'
    assert reject(raw=raw)[0] == "invalid_value"


def test_valid_siblings_are_kept() -> None:
    events, rejected = run([vital("LCP", 1), vital("LCP", -1), vital("INP", 2), 3])
    assert [e.name for e in events] == ["LCP", "INP"]
    assert [r.field for r in rejected] == ["events[1].data.value", "events[3]"]


def test_rejection_fields_never_echo_the_input() -> None:
    junk = "<script>alert(1)</script>"
    docs = [[{"type": junk, "data": {}}], [vital(junk)], [vital("LCP", 1, **{junk: 1})],
            [{"type": "navigation", "data": {"phases": {junk: 1}}}],
            [{"type": "resource", "data": {"initiators": {junk: {"count": 1}}}}],
            [{"type": "business_events", "data": {"event": junk}}]]
    for doc in docs:
        _reason, field = reject(doc)
        assert junk not in field
        assert re.fullmatch(r"events\[\d+\](\.[a-z_.]+)?", field), field


def test_every_type_is_read() -> None:
    events, rejected = run([
        vital("CLS", 0.12, id="v1-a-CLS", url="https://shop.example/p/1?q=secret#frag",
              trace_id=TRACE, navigation_type="back-forward-cache", rating="needs-improvement",
              delta=0.02, timestamp=1.7e12, session_id="s-1", user_agent="UA", user_id=7),
        {"type": "navigation", "data": {"phases": dict.fromkeys(PHASES, 1.5)}},
        {"type": "resource", "data": {"initiators": {"img": {"count": 3, "duration": 12.5},
                                                     "script": {"count": 1}}}},
        {"type": "errors", "data": {"type": "promise_rejection", "message": "m", "filename": "f",
                                    "lineno": 1, "colno": 2, "stack": "s"}},
        {"type": "business_events", "data": {"event": "order_completed",
                                             "data": {"total": 9.9, "ok": True, "x": None,
                                                      "s": "t"}}},
    ])
    assert rejected == []
    cls, navigation, resource, error, business = events
    assert (cls.name, cls.value, cls.path, cls.id, cls.trace_id) == (
        "CLS", 0.12, "/p/1", "v1-a-CLS", TRACE)
    assert dict(navigation.items) == dict.fromkeys(PHASES, 1.5)
    assert resource.items == (("img", 3, 12.5), ("script", 1, 0.0))
    assert (error.name, error.error) == ("promise_rejection", ("m", "f", 1, 2, "s"))
    assert business.name == "order_completed"


def test_metric_ranges_cover_the_web_vitals() -> None:
    assert set(METRICS) == {"LCP", "INP", "CLS", "FCP", "TTFB", "FID"}
    assert REASONS == REQUEST_REASONS + EVENT_REASONS
    assert len(set(REASONS)) == len(REASONS)


@pytest.mark.parametrize(("value", "valid"), [
    (TRACE, True), ("0" * 32, False), (TRACE.upper(), False), (TRACE[:-1], False),
    (TRACE + "0", False), ("g" * 32, False), (None, False), (1, False),
])
def test_trace_ids_are_used_only_when_valid(value: Any, valid: bool) -> None:
    assert valid_trace_id(value) == (value if valid else None)


@pytest.mark.parametrize(("url", "path"), [
    ("/a/b?token=x#y", "/a/b"), ("https://shop.example/a?x=1", "/a"), ("https://shop.example", "/"),
    ("http://[::1", None), ("javascript:alert(1)", None), ("//evil.example/x", "/x"), ("", None),
    ("relative/path", None),
])
def test_url_paths_drop_query_and_fragment(url: str, path: str | None) -> None:
    assert url_path(url) == path


# ---------------------------------------------------------------------- the published schema
jsonschema = pytest.importorskip("jsonschema")
SCHEMA = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

ids = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)
ms = st.floats(min_value=0, max_value=600_000, allow_nan=False)
common = st.fixed_dictionaries({}, optional={
    "url": st.text(max_size=60).map(lambda s: "/" + s), "id": ids,
    "trace_id": st.sampled_from([TRACE, "0" * 32, "nope"]),
    "timestamp": st.floats(min_value=0, max_value=1e13, allow_nan=False),
    "session_id": ids,
})


def _with(common_part: dict[str, Any], data: dict[str, Any], type_: str) -> dict[str, Any]:
    return {"type": type_, "data": {**common_part, **data}}


envelopes = st.one_of(
    st.builds(_with, common, st.fixed_dictionaries(
        {"metric": st.sampled_from(["LCP", "INP", "FCP", "TTFB", "FID"]), "value": ms},
        optional={"rating": st.sampled_from(["good", "needs-improvement", "poor"])}),
        st.just("web_vitals")),
    st.builds(_with, common, st.fixed_dictionaries(
        {"metric": st.just("CLS"), "value": st.floats(min_value=0, max_value=100)}),
        st.just("web_vitals")),
    st.builds(_with, common, st.fixed_dictionaries(
        {"phases": st.dictionaries(st.sampled_from(PHASES), ms, max_size=8)}),
        st.just("navigation")),
    st.builds(_with, common, st.fixed_dictionaries({"initiators": st.dictionaries(
        st.sampled_from(["img", "script", "fetch", "other"]),
        st.fixed_dictionaries({"count": st.integers(0, 100_000), "duration": ms}), max_size=4)}),
        st.just("resource")),
    st.builds(_with, common, st.fixed_dictionaries(
        {"type": st.sampled_from(["javascript", "promise_rejection"])},
        optional={"message": st.text(max_size=256), "lineno": st.integers(0, 10_000_000),
                  "stack": st.text(max_size=300)}), st.just("errors")),
    st.builds(_with, common, st.fixed_dictionaries(
        {"event": st.sampled_from(sorted(ALLOWED))},
        optional={"data": st.dictionaries(st.text(max_size=64),
                                          st.one_of(st.none(), st.booleans(),
                                                    st.text(max_size=256),
                                                    st.integers(-10**9, 10**9)),
                                          max_size=16)}),
        st.just("business_events")),
)


def _no_surrogates(doc: Any) -> bool:
    return "\\ud8" not in json.dumps(doc) and "\\udf" not in json.dumps(doc)


@settings(max_examples=300, deadline=None)
@given(st.lists(envelopes, max_size=50))
def test_payloads_valid_by_the_json_schema_are_accepted(batch: list[Any]) -> None:
    for doc in (batch, {"events": batch}):
        if not _no_surrogates(doc):
            continue
        assert VALIDATOR.is_valid(doc), list(VALIDATOR.iter_errors(doc))[:1]
        events, rejected = run(doc)
        assert rejected == []
        assert len(events) == len(batch)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["type", "data", "metric", "value", "events",
                                                       "phases", "event", "url", "id", "x"]),
                                      inner, max_size=4), max_leaves=20)
       | st.lists(envelopes, max_size=3))
def test_whatever_the_validator_accepts_the_json_schema_accepts(doc: Any) -> None:
    try:
        raw = json.dumps(doc).encode()
    except (ValueError, UnicodeEncodeError):
        return
    try:
        events, rejected = run(None, raw=raw)
    except PayloadError:
        return
    if events and not rejected and "NaN" not in raw.decode() and "Infinity" not in raw.decode():
        candidate = json.loads(raw)
        if isinstance(candidate, list) or "events" in candidate or "type" in candidate:
            assert VALIDATOR.is_valid(candidate), candidate


def test_the_docs_page_shows_the_schema_file() -> None:
    page = (ROOT / "docs" / "rum.md").read_text(encoding="utf-8")
    block = page.split("<!-- payload schema -->", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert json.loads(block) == SCHEMA
