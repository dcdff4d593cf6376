"""URLconf of the Django span-control tests (``tests/test_span_controls.py``)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path


def order(request: HttpRequest, order_id: int) -> HttpResponse:
    from tests.test_span_controls import view_work

    view_work()
    response = HttpResponse("ok", content_type="text/plain")
    response["X-Order-Ref"] = "ORD-12345678"
    response["Set-Cookie"] = "sid=abc; HttpOnly"
    response.set_cookie("cart", "c-1")  # in response.cookies, not among the headers
    return response


urlpatterns = [path("orders/<int:order_id>", order, name="order")]
