"""URLconf of the per-request controls tests (tests/test_http_controls.py)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path
from django.views import View

from mestres_observability import do_not_track


def order(request: HttpRequest, order_id: int) -> HttpResponse:
    return HttpResponse(b"x" * 10, content_type="text/plain")


def upload(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.body[:5], content_type="text/plain")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(iter([b"abc", b"defg"]))


async def astream(request: HttpRequest) -> StreamingHttpResponse:
    async def chunks() -> Any:
        for chunk in (b"ab", b"cde"):
            yield chunk

    return StreamingHttpResponse(chunks())


@do_not_track
def ping(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"pong")


@do_not_track
class Quiet(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(b"quiet")


urlpatterns = [
    path("orders/<int:order_id>", order),
    path("upload", upload),
    path("stream", stream),
    path("astream", astream),
    path("ping", ping),
    path("quiet", Quiet.as_view()),
]
