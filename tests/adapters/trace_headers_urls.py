"""URLconf of the Django trace-header tests: one view answering with the baggage it sees."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path


def echo(request: HttpRequest) -> HttpResponse:
    from opentelemetry import baggage

    return HttpResponse(",".join(f"{k}={v}" for k, v in baggage.get_all().items()))


urlpatterns = [path("echo", echo, name="echo")]
