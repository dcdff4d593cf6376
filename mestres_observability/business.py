"""Business instrumentation: orders, payments, user actions, inventory.

Decorators (:func:`track_order`, :func:`track_payment`) and plain calls
(:func:`record_order`, :func:`record_payment`, :func:`track_user_action`,
:func:`track_inventory_movement`, :func:`set_inventory_level`).

They store no metric objects when they decorate: every call looks up the
current :class:`~mestres_observability.Observability`, so decoration at import
time works before :func:`~mestres_observability.init_observability` and a
re-init takes over cleanly.

Values are read from attributes or mapping keys (``status``, ``total_amount``,
``items`` with ``product_id`` and ``quantity``, ``id``, ``user_id``,
``currency``); an ``extract=`` callable serves other shapes. A framework
response carrying JSON (Django ``JsonResponse``, a Flask ``Response`` or
``jsonify()``, possibly as Flask's ``(response, status)`` tuple, Starlette's
``JSONResponse``) is read from its body, found by duck typing (no framework is
imported): an in-memory body of at most 1 MiB whose content type is
``application/json`` or ``*+json``. ``None``, a value with none of the fields
(a string, a list, ``{}``) and any other HTTP response record nothing: the
warning names what was returned and shows ``extract=``. Money may be
``int``, ``float`` or ``Decimal``; anything else (``None``, strings, ``bool``,
NaN, infinities, negative amounts) is rejected: the order is still counted, the
bad field is skipped, and the fault is counted in
``mestres_observability_errors_total{component="business"}`` and logged once.
The decorated function's return value and exceptions are never touched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from numbers import Real
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import logs as _logs
from . import tracing as _tracing
from ._current import get_observability
from ._wrapping import around

if TYPE_CHECKING:  # type-only: the request pass finds the instance through _current
    from .observability import Observability

__all__ = [
    "OrderInfo",
    "PaymentInfo",
    "record_order",
    "record_payment",
    "set_inventory_level",
    "track_inventory_movement",
    "track_order",
    "track_payment",
    "track_user_action",
]

F = TypeVar("F", bound=Callable[..., Any])
Extractor = Callable[[Any], Any]

_MISSING: Any = object()
UNKNOWN = "unknown"

#: Fault kinds after which nothing is recorded (no metric, no event), with the warning's text.
_NOTHING = {
    "no_order": "{subject} None; nothing to record",
    "no_payment": "{subject} None; nothing to record",
    "not_an_order": (
        "{subject} {what}, which has none of the order fields (status, total_amount, items, "
        "id); nothing to record. Return the order, or pass extract= to pick it out: "
        "@track_order(extract=lambda result: result[\"order\"])"
    ),
    "not_a_payment": (
        "{subject} {what}, which has none of the payment fields (amount, method, status, id, "
        "order_id); nothing to record. Return the payment, or pass extract= to pick it out: "
        "@track_payment(extract=lambda result: result[\"payment\"])"
    ),
    "http_response": (
        "{subject} an HTTP response ({what}) whose body could not be read as JSON ({why}); "
        "nothing to record. Decorate the function that returns the order rather than the "
        "view, or pass extract=, e.g. @track_order(extract=lambda r: json.loads(r.content)) "
        "for Django, extract=lambda r: r.get_json() for Flask, "
        "extract=lambda r: json.loads(r.body) for Starlette"
    ),
}
#: Largest response body read as JSON (bytes).
MAX_RESPONSE_BODY = 1 << 20
#: Types that cannot be an order or a payment (exact types: a NamedTuple order is read by
#: attribute as before)
_SCALARS = frozenset({str, bytes, bytearray, bool, int, float, Decimal, list, tuple, set,
                      frozenset})
_response_kinds: dict[type, bool] = {}


# ---------------------------------------------------------------------- reading values
def _field(obj: Any, key: str) -> Any:
    """``obj[key]`` for mappings, ``obj.key`` otherwise; ``_MISSING`` when absent."""
    if type(obj) is dict:  # fast path: the common case, no ABC check
        return obj.get(key, _MISSING)
    if isinstance(obj, Mapping):
        return obj.get(key, _MISSING)
    try:
        return getattr(obj, key, _MISSING)
    except Exception:  # a property that raises
        return _MISSING


_INF = float("inf")


def _int_to_float(value: int) -> float | None:
    try:
        return float(value)
    except OverflowError:
        return None


def _amount(value: Any) -> tuple[float | None, str | None]:
    """A money or quantity value as a finite non-negative float, or a fault kind."""
    kind = type(value)
    if kind is int or kind is float or kind is Decimal:  # fast path (bool's type is bool)
        if kind is int:
            f = _int_to_float(value)
            if f is None:
                return None, "invalid_amount"
        else:
            try:
                f = float(value)
            except (ValueError, ArithmeticError):  # Decimal("sNaN")
                return None, "invalid_amount"
        if f != f or f == _INF or f == -_INF:
            return None, "non_finite_amount"
        return (None, "negative_amount") if f < 0 else (f + 0.0, None)
    if value is _MISSING or value is None:
        return None, "missing_amount"
    if isinstance(value, bool) or not isinstance(value, (Real, Decimal)):
        return None, "invalid_amount_type"
    try:
        f = float(value)
    except (OverflowError, ValueError, TypeError, ArithmeticError):
        return None, "invalid_amount"
    if not math.isfinite(f):
        return None, "non_finite_amount"
    if f < 0:
        return None, "negative_amount"
    return f + 0.0, None  # -0.0 -> 0.0


def _text(value: Any, default: str = UNKNOWN) -> str:
    if value is _MISSING or value is None:
        return default
    if isinstance(value, str):
        return value if value else default
    try:
        return str(value)
    except Exception:
        return default


def _is_response(obj: Any) -> bool:
    """True when ``obj`` looks like a framework HTTP response (``status_code`` and ``headers``).

    Decided once per type (Django, werkzeug and Starlette responses all have an
    ``int`` ``status_code`` and a ``headers`` mapping); no framework is imported.
    """
    kind = type(obj)
    known = _response_kinds.get(kind)
    if known is None:
        try:
            known = (type(getattr(obj, "status_code", None)) is int
                     and getattr(obj, "headers", None) is not None)
        except Exception:
            known = False
        if len(_response_kinds) < 256:
            _response_kinds[kind] = known
    return known


def _response_document(response: Any) -> tuple[Any, str | None]:
    """The parsed JSON body of an HTTP response, or ``(None, reason)``; never raises.

    Only a body already in memory is read: Starlette's ``body``, Django's
    ``content`` (not for a streaming response), werkzeug's ``get_data()`` (not
    for a streamed one), and only with a JSON content type.
    """
    try:
        ctype = response.headers.get("Content-Type")
        media = str(ctype or "").split(";", 1)[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            return None, f"content type {media or 'unset'}"
        body = getattr(response, "body", None)  # Starlette
        if not isinstance(body, (bytes, bytearray)):
            body = None
            if getattr(response, "streaming", None) is False:  # Django
                content = getattr(response, "content", None)
                if isinstance(content, (bytes, bytearray)):
                    body = content
            elif getattr(response, "is_streamed", None) is False:  # werkzeug (Flask)
                get_data = getattr(response, "get_data", None)
                if callable(get_data):
                    body = get_data()
        if not isinstance(body, (bytes, bytearray)):
            return None, "a streamed body"
        if len(body) > MAX_RESPONSE_BODY:
            return None, f"a body of more than {MAX_RESPONSE_BODY} bytes"
        return json.loads(body), None
    except Exception as exc:
        return None, f"{type(exc).__name__}"


def _unwrap(value: Any) -> tuple[Any, str | None]:
    """What to read from a return value: a response's JSON document, Flask's ``(rv, status)``
    first element, or the value itself; ``(None, reason)`` for an unreadable response."""
    if type(value) is tuple and 2 <= len(value) <= 3 and type(value[1]) is int \
            and 100 <= value[1] <= 599:  # Flask's (body, status[, headers]) view return
        value = value[0]
        if type(value) is dict:
            return value, None
    if _is_response(value):
        return _response_document(value)
    return value, None


def _response_name(returned: Any) -> str:
    """The type name of the response in a return value (inside Flask's tuple, if so)."""
    return type(returned[0] if type(returned) is tuple else returned).__name__


def _inside(returned: Any, document: Any, inner: str) -> str:
    """``a JsonResponse whose JSON body is a list`` ... for the warning text."""
    held = "null" if document is None else inner
    if type(returned) is tuple and not _is_response(returned[0]):
        return f"a (value, status) tuple holding {held}"
    return f"a {_response_name(returned)} whose JSON body is {held}"


def _what(value: Any) -> str:
    """``a str``, ``a dict`` ... for the warning text."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


@dataclass
class OrderInfo:
    """What the library read from an order (after validation)."""

    id: str | None = None
    user_id: str | None = None
    status: str = UNKNOWN
    total: float | None = None
    currency: str = ""
    items: list[tuple[str, float]] = field(default_factory=list)
    items_count: int = 0
    faults: list[str] = field(default_factory=list)
    #: for a warning after which nothing is recorded: what was returned, and why
    what: str = ""
    why: str = ""


@dataclass
class PaymentInfo:
    """What the library read from a payment (after validation)."""

    id: str | None = None
    order_id: str | None = None
    amount: float | None = None
    method: str = UNKNOWN
    status: str = UNKNOWN
    currency: str = ""
    faults: list[str] = field(default_factory=list)
    what: str = ""
    why: str = ""


def _optional_text(value: Any) -> str | None:
    return None if value is _MISSING or value is None else _text(value)


def _read_plain_order(order: dict[str, Any], info: OrderInfo) -> bool:
    """Fast path of :func:`read_order` for a ``dict`` whose items are ``dict``s.

    Returns ``False`` (and leaves ``info`` untouched) for any other shape, so
    the general path decides; the result is the same either way.
    """
    items = order.get("items")
    if items is not None and type(items) is not list:
        return False
    if items:
        for item in items:
            if type(item) is not dict:
                return False
    get = order.get
    oid = get("id")
    uid = get("user_id")
    status = get("status")
    if (oid is not None and type(oid) is not str and type(oid) is not int) or (
        uid is not None and type(uid) is not str and type(uid) is not int
    ) or (status is not None and type(status) is not str):
        return False
    info.id = None if oid is None else ((oid or UNKNOWN) if type(oid) is str else str(oid))
    info.user_id = None if uid is None else ((uid or UNKNOWN) if type(uid) is str else str(uid))
    info.status = status or UNKNOWN
    cur = get("currency")
    if isinstance(cur, str) and cur:
        info.currency = cur
    total = get("total_amount", _MISSING)
    if total is _MISSING:
        total = get("total", _MISSING)
    info.total, fault = _amount(total)
    faults = info.faults
    if fault:
        if oid is None and status is None and items is None and (total is _MISSING
                                                                  or total is None):
            info.what = "a dict"
            faults.append("not_an_order")  # {} or only user_id/currency: nothing to record
            return True
        faults.append(fault)
    if items:
        info.items_count = len(items)
        out = info.items
        for item in items:
            pid = item.get("product_id")
            qty, qfault = _amount(item.get("quantity", _MISSING))
            if pid is None:
                faults.append("missing_product_id")
            elif qfault or qty is None:
                faults.append("invalid_quantity")
            else:
                out.append((pid if type(pid) is str and pid else _text(pid), qty))
    return True


_Info = TypeVar("_Info", "OrderInfo", "PaymentInfo")


def _not_plain(value: Any, info: _Info, reader: Callable[[Any, str], _Info],
               currency: str, not_fault: str, no_fault: str) -> _Info | None:
    """What :func:`read_order`/:func:`read_payment` return for a value that is not a plain
    dict: a framework response (read from its JSON body, or refused with the reason), a
    scalar (not an order or payment); ``None`` when ``value`` is to be read by its fields."""
    returned = value
    value, why = _unwrap(value)
    if why is not None:
        info.what, info.why = _response_name(returned), why
        info.faults.append("http_response")
        return info
    if value is not returned:
        inner = reader(value, currency)
        if inner.faults[:1] in ([not_fault], [no_fault]):
            inner.faults[0] = not_fault
            inner.what = _inside(returned, value, inner.what)
        return inner
    if type(value) in _SCALARS:
        info.what = _what(value)
        info.faults.append(not_fault)
        return info
    return None


def read_order(order: Any, currency: str) -> OrderInfo:
    """Read an order (object or mapping) into an :class:`OrderInfo`; never raises."""
    info = OrderInfo(currency=currency)
    if order is None:
        info.faults.append("no_order")
        return info
    if type(order) is dict:
        try:
            if _read_plain_order(order, info):
                return info
        except Exception:  # a hostile __str__ or __float__: the general path copes
            info = OrderInfo(currency=currency)
    else:
        done = _not_plain(order, info, read_order, currency, "not_an_order", "no_order")
        if done is not None:
            return done
    oid = _field(order, "id")
    info.id = _optional_text(oid)
    info.user_id = _optional_text(_field(order, "user_id"))
    status = _field(order, "status")
    info.status = _text(status)
    cur = _field(order, "currency")
    if isinstance(cur, str) and cur:
        info.currency = cur
    total = _field(order, "total_amount")
    if total is _MISSING:
        total = _field(order, "total")
    info.total, fault = _amount(total)
    items = _field(order, "items")
    if fault:
        if info.id is None and _absent(status) and _absent(total) and _absent(items):
            info.what = _what(order)
            info.faults.append("not_an_order")
            return info
        info.faults.append(fault)
    if items is _MISSING or items is None:
        return info
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        info.faults.append("invalid_items")
        return info
    try:
        for item in items:
            info.items_count += 1
            pid = _field(item, "product_id")
            qty, qfault = _amount(_field(item, "quantity"))
            if pid is _MISSING or pid is None:
                info.faults.append("missing_product_id")
                continue
            if qfault:
                info.faults.append("invalid_quantity")
                continue
            assert qty is not None
            info.items.append((_text(pid), qty))
    except Exception:
        info.faults.append("invalid_items")
    return info


def _absent(value: Any) -> bool:
    return value is _MISSING or value is None


def read_payment(payment: Any, currency: str) -> PaymentInfo:
    """Read a payment (object or mapping) into a :class:`PaymentInfo`; never raises."""
    info = PaymentInfo(currency=currency)
    if payment is None:
        info.faults.append("no_payment")
        return info
    if type(payment) is not dict:
        done = _not_plain(payment, info, read_payment, currency, "not_a_payment", "no_payment")
        if done is not None:
            return done
    info.id = _optional_text(_field(payment, "id"))
    info.order_id = _optional_text(_field(payment, "order_id"))
    method = _field(payment, "method")
    info.method = _text(method)
    status = _field(payment, "status")
    info.status = _text(status)
    cur = _field(payment, "currency")
    if isinstance(cur, str) and cur:
        info.currency = cur
    amount = _field(payment, "amount")
    info.amount, fault = _amount(amount)
    if fault:
        if info.id is None and info.order_id is None and _absent(method) and _absent(status) \
                and _absent(amount):
            info.what = _what(payment)
            info.faults.append("not_a_payment")
            return info
        info.faults.append(fault)
    return info


# ---------------------------------------------------------------------- recording
def _apply_extractor(obs: Observability, extract: Extractor | None, result: Any) -> Any:
    if extract is None:
        return result
    try:
        return extract(result)
    except Exception as exc:
        obs.faults.report("business", "extractor_raised", "extract= callable raised", exc)
        return None


def _nothing_to_record(obs: Observability, info: OrderInfo | PaymentInfo, subject: str,
                       extract: Extractor | None) -> bool:
    """Report a return value that holds nothing to record (``None``, a non-order, an
    unreadable response); True when so."""
    faults = info.faults
    if not faults or faults[0] not in _NOTHING:
        return False
    kind = faults[0]
    if extract is not None:
        subject = "extract= returned"
    obs.faults.report("business", kind,
                      _NOTHING[kind].format(subject=subject, what=info.what, why=info.why))
    return True


def _record_order(obs: Observability, order: Any, currency: str | None,
                  extract: Extractor | None,
                  subject: str = "the function returned") -> OrderInfo | None:
    try:
        cfg = obs.config
        info = read_order(_apply_extractor(obs, extract, order), currency or cfg.default_currency)
        if info.faults and _nothing_to_record(obs, info, subject, extract):
            return None
        m = obs.metrics
        exemplar = m.current_exemplar()  # once per call, not once per series
        m.orders_total.inc((info.status,), 1.0, exemplar)
        total = info.total
        if total is not None:
            cur = (info.currency,)
            if not cfg.revenue_statuses or info.status in cfg.revenue_statuses:
                m.revenue_total.inc(cur, total, exemplar)
            m.order_value.observe(cur, total, exemplar)
        if info.items:
            sold = m.products_sold_total
            for pid, qty in info.items:
                sold.inc((pid,), qty, exemplar)
        for kind in info.faults:
            obs.faults.report("business", kind, f"order field rejected: {kind}")
        return info
    except Exception as exc:
        obs.faults.report("business", "record_order", "recording an order failed", exc)
        return None


def _order_event(info: OrderInfo) -> dict[str, Any]:
    return {
        "order_id": info.id, "user_id": info.user_id, "total_amount": info.total,
        "currency": info.currency, "items_count": info.items_count, "status": info.status,
    }


def _log(obs: Observability, event: str, fields: dict[str, Any]) -> None:
    try:
        _logs.log_event(event, **fields)
    except Exception as exc:
        obs.faults.report("logging", "log_event", f"logging {event} failed", exc)


def _recording(sp: Any) -> bool:
    """True when ``sp`` (the span the decorator opened, or ``None``) records attributes."""
    if sp is None:
        return False
    try:
        return bool(sp.is_recording())
    except Exception:  # pragma: no cover - defensive
        return False


def _set_span_attributes(sp: Any, attributes: Mapping[str, Any]) -> None:
    # values from data (ids, statuses) are cut here: past the span limit the SDK would
    # truncate them itself and log a warning each time
    cap = _tracing.MAX_ATTRIBUTE_LENGTH
    sp.set_attributes({k: v if type(v) is not str or len(v) <= cap else v[:cap]
                       for k, v in attributes.items() if v is not None})


def record_order(order: Any, *, currency: str | None = None,
                 extract: Extractor | None = None) -> None:
    """Record a finished order without a decorator (metrics and the ``order_created`` event).

    Never raises; bad fields are skipped and counted.
    """
    obs = get_observability()
    if not obs.config.enabled:
        return
    info = _record_order(obs, order, currency, extract, "record_order() was given")
    if info is not None:
        _log(obs, "order_created", _order_event(info))


def _record_payment(obs: Observability, payment: Any, currency: str | None,
                    extract: Extractor | None,
                    subject: str = "the function returned") -> PaymentInfo | None:
    try:
        info = read_payment(_apply_extractor(obs, extract, payment),
                            currency or obs.config.default_currency)
        if info.faults and _nothing_to_record(obs, info, subject, extract):
            return None
        m = obs.metrics
        exemplar = m.current_exemplar()
        m.payments_total.inc((info.method, info.status), 1.0, exemplar)
        if info.amount is not None:
            m.payment_amount_total.inc((info.method, info.status, info.currency), info.amount,
                                       exemplar)
        for kind in info.faults:
            obs.faults.report("business", kind, f"payment field rejected: {kind}")
        return info
    except Exception as exc:
        obs.faults.report("business", "record_payment", "recording a payment failed", exc)
        return None


def _payment_event(info: PaymentInfo) -> dict[str, Any]:
    return {
        "payment_id": info.id, "order_id": info.order_id, "amount": info.amount,
        "currency": info.currency, "method": info.method, "status": info.status,
    }


def record_payment(payment: Any, *, currency: str | None = None,
                   extract: Extractor | None = None) -> None:
    """Record a processed payment without a decorator (metrics and ``payment_processed``)."""
    obs = get_observability()
    if not obs.config.enabled:
        return
    info = _record_payment(obs, payment, currency, extract, "record_payment() was given")
    if info is not None:
        _log(obs, "payment_processed", _payment_event(info))


# ---------------------------------------------------------------------- decorators
class _BusinessHooks:
    """Span around the call, metrics and the business event inside it."""

    __slots__ = ("currency", "extract", "kind")

    def __init__(self, kind: str, currency: str | None, extract: Extractor | None) -> None:
        self.kind = kind
        self.currency = currency
        self.extract = extract

    def start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        obs = get_observability()
        if not obs.config.enabled:
            return None
        cm = sp = None
        if obs.tracing.enabled:
            try:
                cm = _tracing.span("process_order" if self.kind == "order" else "process_payment")
                sp = cm.__enter__()
            except Exception as exc:
                obs.faults.report("tracing", "business_span", "could not open span", exc)
                cm = sp = None
        return (obs, cm, sp)

    def success(self, state: Any, result: Any) -> None:
        if state is None:
            return
        obs, cm, sp = state
        try:
            if self.kind == "order":
                info = _record_order(obs, result, self.currency, self.extract)
                if info is not None:
                    if _recording(sp):
                        _set_span_attributes(sp, {
                            "order.id": info.id, "order.user_id": info.user_id,
                            "order.items_count": info.items_count,
                            "order.total_amount": info.total, "order.status": info.status,
                            "order.currency": info.currency,
                        })
                    if _logs.event_enabled():
                        _log(obs, "order_created", _order_event(info))
            else:
                pinfo = _record_payment(obs, result, self.currency, self.extract)
                if pinfo is not None:
                    if _recording(sp):
                        _set_span_attributes(sp, {
                            "payment.id": pinfo.id, "payment.order_id": pinfo.order_id,
                            "payment.amount": pinfo.amount, "payment.method": pinfo.method,
                            "payment.status": pinfo.status, "payment.currency": pinfo.currency,
                        })
                    if _logs.event_enabled():
                        _log(obs, "payment_processed", _payment_event(pinfo))
        except Exception as exc:  # pragma: no cover - _record_* already guard
            obs.faults.report("business", "success_hook", "recording failed", exc)
        finally:
            _close(obs, cm, None)

    def failure(self, state: Any, exc: BaseException) -> None:
        if state is None:
            return
        obs, cm, _sp = state
        try:
            error_type = type(exc).__name__
            if self.kind == "order":
                obs.metrics.order_errors_total.inc((error_type,))
                _log(obs, "order_failed", {"error_type": error_type})
            else:
                obs.metrics.payment_errors_total.inc((error_type,))
                _log(obs, "payment_failed", {"error_type": error_type})
        except Exception as inner:
            obs.faults.report("business", "failure_hook", "recording a failure failed", inner)
        finally:
            _close(obs, cm, exc)


def _close(obs: Observability, cm: Any, exc: BaseException | None) -> None:
    if cm is None:
        return
    try:
        if exc is None:
            cm.__exit__(None, None, None)
        else:
            cm.__exit__(type(exc), exc, exc.__traceback__)
    except Exception as inner:
        obs.faults.report("tracing", "business_span", "could not close span", inner)


def _business_decorator(kind: str, fn: Any, currency: str | None,
                        extract: Extractor | None) -> Any:
    if fn is not None:
        if not callable(fn):
            raise TypeError(f"track_{kind} expects a function, got {type(fn).__name__}")
        return around(fn, _BusinessHooks(kind, currency, extract), decorator=f"@track_{kind}")

    def decorate(f: F) -> F:
        return around(f, _BusinessHooks(kind, currency, extract), decorator=f"@track_{kind}")

    return decorate


@overload
def track_order(fn: F, /) -> F: ...


@overload
def track_order(
    *, extract: Extractor | None = None, currency: str | None = None
) -> Callable[[F], F]: ...


def track_order(
    fn: F | None = None, /, *, extract: Extractor | None = None, currency: str | None = None
) -> Any:
    """Decorate a function that returns an order; bare or with options.

    On return: ``orders_total{status}``, ``revenue_total{currency}``,
    ``order_value``, ``products_sold_total{product_id}`` and the
    ``order_created`` log event, inside a ``process_order`` span (so your own
    ``with span("validate_inventory")`` steps nest under it). On raise:
    ``order_errors_total{error_type}`` and ``order_failed``; the same exception
    object propagates. Works on sync and async functions and methods.

    Args:
        fn: the function (when used bare, ``@track_order``).
        extract: turns the return value into something with the order fields.
        currency: currency when the order has none (default: the config's).

    Example:
        >>> @track_order
        ... def create_order(cart):
        ...     return {"id": 1, "status": "paid", "total_amount": Decimal("19.90"),
        ...             "items": [{"product_id": "espresso", "quantity": 2}]}
    """
    return _business_decorator("order", fn, currency, extract)


@overload
def track_payment(fn: F, /) -> F: ...


@overload
def track_payment(
    *, extract: Extractor | None = None, currency: str | None = None
) -> Callable[[F], F]: ...


def track_payment(
    fn: F | None = None, /, *, extract: Extractor | None = None, currency: str | None = None
) -> Any:
    """Decorate a function that returns a payment (``id``, ``order_id``, ``amount``, ``method``,
    ``status``); bare or with options.

    On return: ``payments_total{method,status}``,
    ``payment_amount_total{method,status,currency}`` and ``payment_processed``,
    inside a ``process_payment`` span. On raise: ``payment_errors_total{error_type}``
    and ``payment_failed``; the exception propagates unchanged.
    """
    return _business_decorator("payment", fn, currency, extract)


# ---------------------------------------------------------------------- plain calls
def track_user_action(action: str, user_id: object | None = None) -> None:
    """Count a user action: ``user_actions_total{action, user_type}``.

    ``user_type`` is ``authenticated`` when ``user_id`` is given, else ``guest``
    (as in the seed). Never raises.
    """
    obs = get_observability()
    if not obs.config.enabled:
        return
    try:
        user_type = "guest" if user_id is None or user_id == "" else "authenticated"
        obs.metrics.user_actions_total.inc((_text(action), user_type))
    except Exception as exc:
        obs.faults.report("business", "user_action", "recording a user action failed", exc)


def track_inventory_movement(product_id: object, movement_type: str, quantity: object) -> None:
    """Count units moved: ``inventory_movements_total{product_id, movement_type}``.

    ``quantity`` must be a finite non-negative number (direction goes in
    ``movement_type``: ``in``, ``out``, ``adjustment``...). Never raises.
    """
    obs = get_observability()
    if not obs.config.enabled:
        return
    try:
        qty, fault = _amount(quantity)
        if fault is not None or qty is None:
            obs.faults.report("business", f"inventory_{fault}", "inventory quantity rejected")
            return
        obs.metrics.inventory_movements_total.inc((_text(product_id), _text(movement_type)), qty)
    except Exception as exc:
        obs.faults.report("business", "inventory_movement", "recording a movement failed", exc)


def set_inventory_level(product_id: object, level: object) -> None:
    """Set ``inventory_level{product_id}`` (the seed's ``InventoryLow`` alert reads it).

    ``level`` must be a finite number (negative allowed for back-orders). Past
    the cardinality bound new products are dropped and counted, never merged.
    """
    obs = get_observability()
    if not obs.config.enabled:
        return
    try:
        if isinstance(level, bool) or not isinstance(level, (Real, Decimal)):
            obs.faults.report("business", "inventory_invalid_level", "inventory level rejected")
            return
        value = float(level)
        if not math.isfinite(value):
            obs.faults.report("business", "inventory_non_finite", "inventory level rejected")
            return
        obs.metrics.inventory_level.set((_text(product_id),), value)
    except Exception as exc:
        obs.faults.report("business", "inventory_level", "setting a level failed", exc)
