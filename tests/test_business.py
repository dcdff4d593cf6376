"""track_order & co.: values recorded, host untouched, bad input counted."""

from __future__ import annotations

import asyncio
import inspect
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mestres_observability import (
    Observability,
    record_order,
    record_payment,
    set_inventory_level,
    track_inventory_movement,
    track_order,
    track_payment,
    track_user_action,
)
from mestres_observability.business import read_order
from mestres_observability.testing import capture_logs, fresh_observability, sample_value


@dataclass
class Item:
    product_id: str
    quantity: Any


@dataclass
class Order:
    id: int
    status: str
    total_amount: Any
    user_id: int | None = 7
    items: list[Item] = field(default_factory=list)


def errors(component: str = "business") -> float:
    return sample_value("mestres_observability_errors_total", component=component)


def test_order_object_recorded(obs: Observability) -> None:
    @track_order
    def create(cart: list[Item]) -> Order:
        return Order(1, "paid", Decimal("19.99"), items=cart)

    cart = [Item("espresso", 2), Item("latte", 1)]
    result = create(cart)
    assert result.items is cart
    assert sample_value("orders_total", status="paid") == 1
    assert sample_value("revenue_total", currency="BRL") == pytest.approx(19.99)
    assert sample_value("order_value_count", currency="BRL") == 1
    assert sample_value("products_sold_total", product_id="espresso") == 2
    assert sample_value("products_sold_total", product_id="latte") == 1
    assert errors() == 0


def test_mapping_order_with_currency_and_options(obs: Observability) -> None:
    @track_order(currency="EUR")
    def create() -> dict[str, Any]:
        return {"id": "A1", "status": "pending", "total_amount": 10, "items": []}

    @track_order
    def create_usd() -> dict[str, Any]:
        return {"status": "paid", "total_amount": 5.5, "currency": "USD"}

    create()
    create_usd()
    assert sample_value("revenue_total", currency="EUR") == 10
    assert sample_value("revenue_total", currency="USD") == 5.5


def test_custom_extractor(obs: Observability) -> None:
    @track_order(extract=lambda r: {"status": r[0], "total_amount": r[1]})
    def create() -> tuple[str, Decimal]:
        return ("paid", Decimal("3.10"))

    assert create() == ("paid", Decimal("3.10"))
    assert sample_value("revenue_total", currency="BRL") == pytest.approx(3.1)


def test_revenue_statuses_narrow_revenue_only() -> None:
    with fresh_observability(revenue_statuses=("paid",)):
        record_order({"status": "paid", "total_amount": 10})
        record_order({"status": "cancelled", "total_amount": 99})
        assert sample_value("revenue_total", currency="BRL") == 10
        assert sample_value("orders_total", status="cancelled") == 1


def test_raise_counts_error_type_and_keeps_exception_identity(obs: Observability) -> None:
    class OutOfBeans(RuntimeError):
        pass

    boom = OutOfBeans("no beans")

    @track_order
    def create() -> None:
        raise boom

    with pytest.raises(OutOfBeans) as info:
        create()
    assert info.value is boom
    # the traceback still points into the user's function
    assert any(fr.name == "create" for fr in info.traceback)
    assert sample_value("order_errors_total", error_type="OutOfBeans") == 1
    assert sample_value("orders_total", status="paid") == 0


@pytest.mark.parametrize(
    "total",
    [float("nan"), float("inf"), -float("inf"), Decimal("NaN"), -5, "19.99", None, True,
     10**400, [], object()],
)
def test_bad_totals_rejected_counted_and_host_safe(obs: Observability, total: Any) -> None:
    order = {"status": "paid", "total_amount": total}

    @track_order
    def create() -> dict[str, Any]:
        return order

    assert create() is order
    assert sample_value("orders_total", status="paid") == 1
    assert sample_value("revenue_total", currency="BRL") == 0
    assert math.isfinite(sample_value("order_value_sum", currency="BRL"))
    assert errors() >= 1


@pytest.mark.parametrize("result", [None, 42, "order", b"x", [1, 2], {"items": "abc"}])
def test_unreadable_returns_pass_through(obs: Observability, result: Any) -> None:
    @track_order
    def create() -> Any:
        return result

    assert create() is result


def test_bad_quantities_skip_item_only(obs: Observability) -> None:
    record_order({"status": "paid", "total_amount": 1,
                  "items": [{"product_id": "a", "quantity": True},
                            {"product_id": "b", "quantity": "3"},
                            {"product_id": "c", "quantity": -1},
                            {"quantity": 1},
                            {"product_id": "d", "quantity": Decimal("2")}]})
    assert sample_value("products_sold_total", product_id="a") == 0
    assert sample_value("products_sold_total", product_id="b") == 0
    assert sample_value("products_sold_total", product_id="d") == 2
    assert errors() == 4


def test_property_that_raises_is_treated_as_missing(obs: Observability) -> None:
    class Weird:
        status = "paid"

        @property
        def total_amount(self) -> float:
            raise RuntimeError("db gone")

    w = Weird()
    record_order(w)
    assert sample_value("orders_total", status="paid") == 1


def test_async_function_and_method(obs: Observability) -> None:
    class Service:
        @track_order
        async def create(self, n: int) -> dict[str, Any]:
            await asyncio.sleep(0)
            return {"status": "paid", "total_amount": n}

    assert inspect.iscoroutinefunction(Service.create)
    assert inspect.iscoroutinefunction(Service().create)
    assert list(inspect.signature(Service.create).parameters) == ["self", "n"]
    assert Service.create.__name__ == "create"
    asyncio.run(Service().create(3))
    assert sample_value("revenue_total", currency="BRL") == 3


def test_cancelled_error_propagates_untouched(obs: Observability) -> None:
    @track_order
    async def create() -> None:
        raise asyncio.CancelledError()

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(create())
    assert sample_value("order_errors_total", error_type="CancelledError") == 1


def test_keyboard_interrupt_propagates(obs: Observability) -> None:
    @track_payment
    def pay() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pay()
    assert sample_value("payment_errors_total", error_type="KeyboardInterrupt") == 1


def test_payments(obs: Observability) -> None:
    @track_payment
    def pay() -> dict[str, Any]:
        return {"id": "p1", "order_id": 1, "amount": Decimal("12.50"), "method": "pix",
                "status": "approved"}

    pay()
    record_payment({"amount": 1, "method": "card", "status": "declined"})
    assert sample_value("payments_total", method="pix", status="approved") == 1
    assert sample_value("payments_total", method="card", status="declined") == 1
    assert sample_value("payment_amount_total", method="pix", status="approved",
                        currency="BRL") == 12.5


def test_user_actions_and_inventory(obs: Observability) -> None:
    track_user_action("add_to_cart")
    track_user_action("add_to_cart", user_id=42)
    track_inventory_movement("espresso", "out", 3)
    track_inventory_movement("espresso", "out", Decimal("1"))
    track_inventory_movement("espresso", "out", float("nan"))
    set_inventory_level("espresso", 8)
    set_inventory_level("espresso", 7)
    set_inventory_level("espresso", float("inf"))
    assert sample_value("user_actions_total", action="add_to_cart", user_type="guest") == 1
    assert sample_value("user_actions_total", action="add_to_cart", user_type="authenticated") == 1
    assert sample_value("inventory_movements_total", product_id="espresso", movement_type="out") == 4
    assert sample_value("inventory_level", product_id="espresso") == 7
    assert errors() == 2


def test_decorated_before_init_records_in_current_instance() -> None:
    @track_order
    def create() -> dict[str, Any]:
        return {"status": "paid", "total_amount": 1}

    with fresh_observability() as first:
        create()
        assert sample_value("orders_total", first, status="paid") == 1
    with fresh_observability() as second:
        create()
        create()
        assert sample_value("orders_total", second, status="paid") == 2
        assert sample_value("orders_total", first, status="paid") == 1


def test_disabled_is_a_no_op() -> None:
    with fresh_observability(enabled=False) as obs:
        @track_order
        def create() -> dict[str, Any]:
            return {"status": "paid", "total_amount": 1}

        create()
        track_user_action("x")
        assert sample_value("orders_total", obs, status="paid") == 0
        assert obs.render_metrics().status == 200


def test_track_order_rejects_non_callable() -> None:
    with pytest.raises(TypeError):
        track_order(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------- fast paths (issue 2)
_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.decimals(allow_nan=True, allow_infinity=True), st.just(""), st.lists(st.integers(), max_size=2),
)
_item = st.dictionaries(st.sampled_from(["product_id", "quantity", "other"]), _values, max_size=3)
_order = st.dictionaries(
    st.sampled_from(["id", "user_id", "status", "currency", "total_amount", "total", "items"]),
    st.one_of(_values, st.lists(st.one_of(_item, _values), max_size=4)),
    max_size=7,
)


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


@settings(max_examples=300, deadline=None)
@given(order=_order)
def test_property_plain_dict_fast_path_reads_like_general_path(order: dict[str, Any]) -> None:
    from types import MappingProxyType

    fast = read_order(order, "BRL")  # type(order) is dict: fast path when the shape allows
    items = order.get("items")
    general_items = ([MappingProxyType(i) if isinstance(i, dict) else i for i in items]
                     if isinstance(items, list) else items)
    general = read_order(MappingProxyType({**order, "items": general_items}
                                          if "items" in order else order), "BRL")
    for name in ("id", "user_id", "status", "total", "currency", "items", "items_count", "faults"):
        assert _same(getattr(fast, name), getattr(general, name)), name


def test_exemplar_of_the_order_span_on_every_series() -> None:
    from mestres_observability.testing import captured_spans

    @track_order
    def create() -> dict[str, Any]:
        return {"id": 1, "status": "paid", "total_amount": Decimal("12.5"),
                "items": [{"product_id": "espresso", "quantity": 2}]}

    with fresh_observability() as obs, captured_spans() as spans:
        create()
        trace_id = format(spans.by_name("process_order").context.trace_id, "032x")
        seen = {}
        for metric in obs.metrics.registry.collect():
            for sample in metric.samples:
                if sample.exemplar is not None:
                    seen[sample.name] = sample.exemplar.labels["trace_id"]
    for name in ("orders_total", "revenue_total", "products_sold_total", "order_value_bucket"):
        assert seen.get(name) == trace_id, (name, seen)


def test_filtered_business_event_still_counts_and_logs_nothing() -> None:
    @track_order
    def create() -> dict[str, Any]:
        return {"id": 1, "status": "paid", "total_amount": 3}

    with fresh_observability(configure_logging=True, log_level="WARNING", log_format="json"), \
            capture_logs() as events:
        create()
        assert sample_value("orders_total", status="paid") == 1
    assert [e for e in events if e["event"] == "order_created"] == []
    with fresh_observability(configure_logging=True, log_level="INFO", log_format="json"), \
            capture_logs() as events:
        create()
    assert [e["order_id"] for e in events if e["event"] == "order_created"] == ["1"]


def test_span_attributes_set_on_the_decorator_span() -> None:
    from mestres_observability.testing import captured_spans

    @track_payment
    def pay() -> dict[str, Any]:
        return {"id": "p1", "order_id": "o1", "amount": Decimal("9.9"), "method": "pix",
                "status": "approved"}

    with fresh_observability(), captured_spans() as spans:
        pay()
    attrs = dict(spans.by_name("process_payment").attributes or {})
    assert attrs == {"payment.id": "p1", "payment.order_id": "o1", "payment.amount": 9.9,
                     "payment.method": "pix", "payment.status": "approved",
                     "payment.currency": "BRL"}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(amount=st.decimals(allow_nan=True, allow_infinity=True))
def test_property_decimal_amounts_never_raise(amount: Decimal) -> None:
    from mestres_observability.business import _amount

    value, fault = _amount(amount)
    assert (value is None) != (fault is None)
    if value is not None:
        assert math.isfinite(value)
        assert value >= 0


def test_business_events_carry_their_fields_and_the_span_trace_id() -> None:
    """issue 3: order_created/payment_processed fields, emitted inside (and correlated with)
    their span, for the seed's Kibana query on ``event``."""
    from mestres_observability.testing import captured_spans

    @track_order
    def create() -> dict[str, Any]:
        return {"id": "o-1", "user_id": "u-1", "status": "paid", "total_amount": Decimal("19.99"),
                "items": [{"product_id": "cafe", "quantity": 2},
                          {"product_id": "pao", "quantity": 1}]}

    @track_payment
    def pay() -> dict[str, Any]:
        return {"id": "p-1", "order_id": "o-1", "amount": Decimal("19.99"), "method": "pix",
                "status": "approved"}

    with fresh_observability(), captured_spans() as spans, capture_logs() as events:
        create()
        pay()
    created = next(e for e in events if e["event"] == "order_created")
    paid = next(e for e in events if e["event"] == "payment_processed")
    assert {k: created[k] for k in ("order_id", "user_id", "total_amount", "items_count")} == {
        "order_id": "o-1", "user_id": "u-1", "total_amount": 19.99, "items_count": 2}
    assert isinstance(created["total_amount"], float)  # money is a number in logs
    assert {k: paid[k] for k in ("payment_id", "order_id", "amount", "method", "status")} == {
        "payment_id": "p-1", "order_id": "o-1", "amount": 19.99, "method": "pix",
        "status": "approved"}
    for event, span_name in ((created, "process_order"), (paid, "process_payment")):
        ctx = spans.by_name(span_name).context
        assert (event["trace_id"], event["span_id"]) == (format(ctx.trace_id, "032x"),
                                                         format(ctx.span_id, "016x"))


def test_failure_events_are_emitted_inside_the_failed_span() -> None:
    """``order_failed``/``payment_failed`` carry the error type and the trace id of the span
    that records the exception with status ERROR."""
    from opentelemetry.trace import StatusCode

    from mestres_observability.testing import captured_spans

    class OutOfBeans(RuntimeError):
        pass

    class Declined(RuntimeError):
        pass

    @track_order
    def create() -> None:
        raise OutOfBeans("no beans")

    @track_payment
    async def pay() -> None:
        raise Declined("card declined")

    with fresh_observability(), captured_spans() as spans, capture_logs() as events:
        with pytest.raises(OutOfBeans):
            create()
        with pytest.raises(Declined):
            asyncio.run(pay())
    by_event = {e["event"]: e for e in events}
    for event, span_name, error_type in (("order_failed", "process_order", "OutOfBeans"),
                                         ("payment_failed", "process_payment", "Declined")):
        sp = spans.by_name(span_name)
        assert sp.status.status_code is StatusCode.ERROR
        assert [e.name for e in sp.events] == ["exception"]
        line = by_event[event]
        assert line["error_type"] == error_type
        assert line["trace_id"] == format(sp.context.trace_id, "032x")
        assert line["span_id"] == format(sp.context.span_id, "016x")
    assert "order_created" not in by_event
    assert "payment_processed" not in by_event


def test_business_exemplars_are_visible_in_the_openmetrics_exposition() -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    from mestres_observability.testing import captured_spans

    @track_payment
    def pay() -> dict[str, Any]:
        return {"id": "p-1", "amount": Decimal("5"), "method": "pix", "status": "approved"}

    with fresh_observability() as obs, captured_spans() as spans:
        pay()
        ctx = spans.by_name("process_payment").context
        om = obs.render_metrics("application/openmetrics-text;version=1.0.0").body.decode()
        text = obs.render_metrics("text/plain").body.decode()
    expected = {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}
    found = {s.name: s.exemplar.labels for f in text_string_to_metric_families(om)
             for s in f.samples if s.exemplar is not None}
    assert found.get("payments_total") == expected, found
    assert found.get("payment_amount_total") == expected, found
    assert "trace_id" not in text  # the classic text format has no exemplars


# ---------------------------------------------------------------- first hour (issue 11)
def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "mestres_observability" and r.levelname == "WARNING"]


@pytest.mark.parametrize("decorator", ["order", "payment"])
def test_returning_none_records_nothing_and_says_so(caplog: pytest.LogCaptureFixture,
                                                    decorator: str) -> None:
    """issue 11 (8): ``None`` is not an order with every field missing: no count, no event."""
    track = track_order if decorator == "order" else track_payment

    @track
    def create() -> None:
        return None

    with fresh_observability() as obs, capture_logs() as events:
        assert create() is None
        if decorator == "order":
            assert sample_value("orders_total", obs, status="unknown") == 0
        else:
            assert sample_value("payments_total", obs, method="unknown", status="unknown") == 0
        assert errors() == 1
    assert [e["event"] for e in events if e["event"] in ("order_created", "payment_processed")] == []
    (text,) = _warnings(caplog)
    assert "the function returned None; nothing to record" in text
    assert "field rejected" not in text


@pytest.mark.parametrize(("result", "what"), [
    ("order-1", "a str"), (42, "an int"), ([1, 2], "a list"), ({}, "a dict"),
    ({"user_id": 3, "currency": "EUR"}, "a dict"), (("paid", 3), "a tuple"),
])
def test_non_orders_record_nothing_and_show_extract(caplog: pytest.LogCaptureFixture,
                                                    result: Any, what: str) -> None:
    text = _not_an_order(result, caplog)
    assert f"the function returned {what}, which has none of the order fields" in text


def _not_an_order(result: Any, caplog: pytest.LogCaptureFixture) -> str:
    """``result`` from a ``@track_order`` function: given back as is, no order counted or
    logged, one warning that shows ``extract=``; its text."""
    @track_order
    def view() -> Any:
        return result

    with fresh_observability() as obs, capture_logs() as events:
        assert view() is result
        assert sample_value("orders_total", obs, status="unknown") == 0
    assert [e for e in events if e["event"] == "order_created"] == []
    (text,) = _warnings(caplog)
    assert "extract=" in text
    return text


def test_record_order_none_names_the_call(caplog: pytest.LogCaptureFixture) -> None:
    with fresh_observability(), capture_logs() as events:
        record_order(None)
    assert [e for e in events if e["event"] == "order_created"] == []
    assert _warnings(caplog) == ["mestres_observability business fault (no_order): "
                                 "record_order() was given None; nothing to record"]


class _Headers(dict):  # type: ignore[type-arg]
    """Case-insensitive ``get``, as Django's, werkzeug's and Starlette's headers are."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return next((v for k, v in self.items() if k.lower() == key.lower()), default)


class DjangoLike:
    """What Django's ``JsonResponse`` looks like to the decorator (``content``, ``streaming``)."""

    streaming = False

    def __init__(self, body: bytes, ctype: str = "application/json", status: int = 200) -> None:
        self.content = body
        self.status_code = status
        self.headers = _Headers({"Content-Type": ctype})


class StarletteLike:
    def __init__(self, body: bytes, ctype: str = "application/json") -> None:
        self.body = body
        self.status_code = 201
        self.headers = _Headers({"content-type": ctype})


class WerkzeugLike:
    is_streamed = False

    def __init__(self, body: bytes, ctype: str = "application/json") -> None:
        self._body = body
        self.status_code = 201
        self.headers = _Headers({"Content-Type": ctype})

    def get_data(self) -> bytes:
        return self._body


_ORDER_JSON = (b'{"id": 7, "status": "paid", "total_amount": 19.9,'
               b' "items": [{"product_id": "espresso", "quantity": 2}]}')


@pytest.mark.parametrize("make", [
    DjangoLike, StarletteLike, WerkzeugLike,
    lambda body: (WerkzeugLike(body), 201),  # Flask's (response, status)
], ids=["django", "starlette", "werkzeug", "flask-tuple"])
def test_json_http_responses_are_read_from_their_body(make: Any) -> None:
    """issue 11 (3): a view returning a JSON response records the order in its body."""
    response = make(_ORDER_JSON)

    @track_order
    def view() -> Any:
        return response

    with fresh_observability() as obs, capture_logs() as events:
        assert view() is response
        assert sample_value("orders_total", obs, status="paid") == 1
        assert sample_value("revenue_total", obs, currency="BRL") == pytest.approx(19.9)
        assert sample_value("products_sold_total", obs, product_id="espresso") == 2
        assert errors() == 0
    (created,) = [e for e in events if e["event"] == "order_created"]
    assert created["order_id"] == "7"


def test_flask_dict_tuple_is_read() -> None:
    @track_order
    def view() -> Any:
        return {"status": "paid", "total_amount": 5}, 201

    with fresh_observability() as obs:
        view()
        assert sample_value("revenue_total", obs, currency="BRL") == 5


def test_json_payment_response_is_read() -> None:
    @track_payment
    def view() -> Any:
        return StarletteLike(b'{"id": "p1", "amount": 9.5, "method": "pix", "status": "approved"}')

    with fresh_observability() as obs:
        view()
        assert sample_value("payment_amount_total", obs, method="pix", status="approved",
                            currency="BRL") == 9.5


@pytest.mark.parametrize(("response", "why"), [
    (DjangoLike(b"<html></html>", "text/html"), "content type text/html"),
    (DjangoLike(b"not json"), "JSONDecodeError"),
    (DjangoLike(b"[" + b"1," * (1 << 20) + b"1]"), "more than 1048576 bytes"),
    (type("Streamed", (WerkzeugLike,), {"is_streamed": True})(_ORDER_JSON), "a streamed body"),
])
def test_unreadable_http_responses_record_nothing_and_show_extract(
        caplog: pytest.LogCaptureFixture, response: Any, why: str) -> None:
    text = _not_an_order(response, caplog)
    assert f"an HTTP response ({type(response).__name__})" in text
    assert why in text
    assert "missing_amount" not in text


def test_json_body_that_is_not_an_order_says_what_it_holds(
        caplog: pytest.LogCaptureFixture) -> None:
    @track_order
    def view() -> Any:
        return DjangoLike(b"[1, 2]")

    with fresh_observability():
        view()
    (text,) = _warnings(caplog)
    assert "the function returned a DjangoLike whose JSON body is a list" in text


def test_a_named_tuple_order_is_still_read_by_attribute() -> None:
    from typing import NamedTuple

    class Placed(NamedTuple):
        id: int
        status: str
        total_amount: Decimal

    with fresh_observability() as obs:
        record_order(Placed(1, "paid", Decimal("4.5")))
        assert sample_value("revenue_total", obs, currency="BRL") == 4.5
