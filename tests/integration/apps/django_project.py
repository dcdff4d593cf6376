"""A one-module Django project (settings, URLconf, WSGI app) for gunicorn workers."""

from __future__ import annotations

import os

from django.http import HttpRequest, JsonResponse
from django.urls import path

os.environ["DJANGO_SETTINGS_MODULE"] = __name__  # this module is the whole project

SECRET_KEY = "integration-tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = __name__
INSTALLED_APPS = ["mestres_observability.django"]
MIDDLEWARE = ["mestres_observability.django.ObservabilityMiddleware"]
MESTRES_OBSERVABILITY = {"service_name": "django-multiworker", "configure_logging": False,
                         "tracing_enabled": False, "access_log": False}
LOGGING_CONFIG = None


def order(request: HttpRequest, order_id: int) -> JsonResponse:
    response = JsonResponse({"id": order_id})
    response["X-Worker-Pid"] = str(os.getpid())
    return response


urlpatterns = [path("orders/<int:order_id>", order)]

from django.core.wsgi import get_wsgi_application  # noqa: E402  (settings above come first)

application = get_wsgi_application()
