"""Notifiers against local servers: payloads, timeouts, bounded retries, signatures, secrets."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import itertools
import json
import logging
import random
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mestres_observability.monitoring.notifiers import (
    Alert,
    DeliveryResult,
    EmailNotifier,
    Notifier,
    RetryPolicy,
    SlackNotifier,
    WebhookNotifier,
    sign,
    verify_signature,
)
from tests._support import free_port, require_binary, require_module

TOKEN = "T0001/B0002/SuperSecretToken42"
FAST = RetryPolicy(attempts=4, initial_delay=0.01, max_delay=0.02, total_timeout=10.0)
ALERT = Alert(
    name="HighErrorRate", severity="critical", service="mestres-cafe-api",
    summary="5xx ratio above 5%", description="For 5 minutes on /orders.",
    starts_at=dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.timezone.utc),
    labels={"team": "backend"},
    links={"grafana": "http://grafana.local/d/mo-technical", "kibana": "http://kibana.local/app",
           "runbook": "http://docs.local/runbook#higherrorrate"})


# ---------------------------------------------------------------------- HTTP server
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    script: list[tuple[int, dict[str, str], bytes]]
    requests: list[dict[str, Any]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers),
                                     "body": body, "at": time.monotonic()})
        script = self.server.script
        status, headers, payload = script.pop(0) if len(script) > 1 else script[0]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.script = [(200, {}, b"ok")]
    srv.requests = []
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv: _Server, path: str = f"/services/{TOKEN}") -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


class _Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def test_common_interface() -> None:
    notifiers: list[Notifier] = [
        SlackNotifier("http://127.0.0.1:1/x"), WebhookNotifier("http://127.0.0.1:1/y"),
        EmailNotifier("127.0.0.1", 1, sender="a@b.c", recipients=["d@e.f"])]
    for n in notifiers:
        assert callable(n.send_alert)


# ---------------------------------------------------------------------- Slack
def test_slack_payload_is_the_seed_message(server: _Server) -> None:
    result = SlackNotifier(_url(server), retry=FAST).send_alert(ALERT)
    assert result.ok
    assert result == DeliveryResult(ok=True, notifier="slack", attempts=1, status=200,
                                    elapsed=result.elapsed)
    (req,) = server.requests
    assert req["path"] == f"/services/{TOKEN}"
    assert req["headers"]["Content-Type"].startswith("application/json")
    payload = json.loads(req["body"])
    (att,) = payload["attachments"]
    assert att["color"] == "#FF0000"
    assert att["title"] == "🚨 CRITICAL Alert: HighErrorRate"
    assert att["text"] == "5xx ratio above 5%\nFor 5 minutes on /orders."
    assert att["fields"] == [
        {"title": "Service", "value": "mestres-cafe-api", "short": True},
        {"title": "Timestamp", "value": "2024-05-01T10:00:00Z", "short": True}]
    assert att["actions"] == [
        {"type": "button", "text": "View in Grafana", "url": "http://grafana.local/d/mo-technical"},
        {"type": "button", "text": "View Logs", "url": "http://kibana.local/app"}]
    assert att["title_link"] == ALERT.links["runbook"]
    assert payload["text"]  # the notification text


@pytest.mark.parametrize(("severity", "colour"), [
    ("critical", "#FF0000"), ("high", "#FF8C00"), ("medium", "#FFD700"), ("low", "#00FF00"),
    ("warning", "#FFD700"), ("whatever", "#808080")])
def test_slack_colour_by_severity(severity: str, colour: str) -> None:
    alert = Alert(name="x", severity=severity, service="s", summary="y")
    assert SlackNotifier.message(alert)["attachments"][0]["color"] == colour


def test_slack_buttons_only_for_links_given() -> None:
    alert = Alert(name="x", severity="low", service="s", summary="y",
                  links={"grafana": "http://g"})
    att = SlackNotifier.message(alert)["attachments"][0]
    assert [a["text"] for a in att["actions"]] == ["View in Grafana"]
    assert "actions" not in SlackNotifier.message(
        Alert(name="x", severity="low", service="s", summary="y"))["attachments"][0]


def test_slack_from_file(tmp_path: Path, server: _Server) -> None:
    secret = tmp_path / "slack_webhook_url"
    secret.write_text(_url(server) + "\n")
    assert SlackNotifier.from_file(secret, retry=FAST).send_alert(ALERT).ok
    with pytest.raises(ValueError, match="cannot read"):
        SlackNotifier.from_file(tmp_path / "missing")


@pytest.mark.parametrize("bad", ["", "hooks.slack.com/services/x", "ftp://h/x", "http:///x"])
def test_misconfiguration_raises_at_construction(bad: str) -> None:
    with pytest.raises(ValueError, match="http"):
        SlackNotifier(bad)


@pytest.mark.parametrize("kwargs", [{"attempts": 0}, {"jitter": 2.0}, {"multiplier": 0.5},
                                    {"total_timeout": -1.0}])
def test_bad_retry_policy(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


# ---------------------------------------------------------------------- retries
def test_retries_on_5xx_with_backoff_and_jitter(server: _Server) -> None:
    server.script = [(500, {}, b"oops"), (502, {}, b""), (503, {}, b""), (200, {}, b"ok")]
    sleeps = _Sleeps()
    policy = RetryPolicy(attempts=4, initial_delay=0.2, multiplier=2.0, max_delay=0.5,
                         jitter=0.5, total_timeout=30)
    result = SlackNotifier(_url(server), retry=policy, sleep=sleeps,
                           rng=random.Random(1)).send_alert(ALERT)
    assert result.ok
    assert result.attempts == 4
    assert len(server.requests) == 4
    assert len(sleeps.waits) == 3
    for wait, base in zip(sleeps.waits, (0.2, 0.4, 0.5), strict=True):
        assert base * 0.5 <= wait <= base  # exponential, capped, less up to half of jitter
    assert len(set(sleeps.waits)) == 3


def test_no_retry_storm_bounded_attempts(server: _Server) -> None:
    server.script = [(503, {}, b"busy")]
    start = time.monotonic()
    result = SlackNotifier(_url(server), retry=FAST, timeout=2).send_alert(ALERT)
    elapsed = time.monotonic() - start
    assert not result.ok
    assert result.retryable
    assert result.attempts == FAST.attempts == len(server.requests)
    assert result.status == 503
    assert "HTTP 503" in result.error
    assert elapsed < 2.0
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(server.requests)]
    assert all(g >= 0.004 for g in gaps)  # it did wait between attempts


def test_total_budget_bounds_the_time(server: _Server) -> None:
    server.script = [(500, {}, b"")]
    policy = RetryPolicy(attempts=1000, initial_delay=0.05, multiplier=1.0, jitter=0.0,
                         total_timeout=0.6)
    start = time.monotonic()
    result = WebhookNotifier(_url(server, "/hook"), retry=policy, timeout=0.2).send_alert(ALERT)
    elapsed = time.monotonic() - start
    assert not result.ok
    assert "budget" in result.error
    assert elapsed <= 0.6 + 0.3
    assert 2 <= result.attempts < 20


@pytest.mark.parametrize("status", [400, 403, 404, 410, 422])
def test_no_retry_on_other_4xx(server: _Server, status: int) -> None:
    server.script = [(status, {}, b"invalid_payload")]
    result = SlackNotifier(_url(server), retry=FAST).send_alert(ALERT)
    assert not result.ok
    assert not result.retryable
    assert result.attempts == 1
    assert len(server.requests) == 1
    assert result.status == status
    assert result.error == f"HTTP {status}: invalid_payload"


def test_429_honours_retry_after(server: _Server) -> None:
    server.script = [(429, {"Retry-After": "2"}, b"slow down"), (200, {}, b"ok")]
    sleeps = _Sleeps()
    result = SlackNotifier(_url(server), retry=FAST, sleep=sleeps).send_alert(ALERT)
    assert result.ok
    assert result.attempts == 2
    assert sleeps.waits == [2.0]


def test_429_retry_after_as_a_date(server: _Server) -> None:
    from email.utils import format_datetime

    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)
    server.script = [(429, {"Retry-After": format_datetime(when, usegmt=True)}, b""),
                     (200, {}, b"ok")]
    sleeps = _Sleeps()
    assert SlackNotifier(_url(server), retry=FAST, sleep=sleeps).send_alert(ALERT).ok
    (wait,) = sleeps.waits
    assert 3.0 <= wait <= 5.5


def test_429_asking_too_long_gives_up(server: _Server) -> None:
    server.script = [(429, {"Retry-After": "3600"}, b"")]
    sleeps = _Sleeps()
    result = SlackNotifier(_url(server), retry=FAST, sleep=sleeps).send_alert(ALERT)
    assert not result.ok
    assert result.attempts == 1
    assert sleeps.waits == []
    assert "3600" in result.error


def test_redirects_are_not_followed(server: _Server) -> None:
    server.script = [(302, {"Location": "http://127.0.0.1:1/elsewhere"}, b"")]
    result = WebhookNotifier(_url(server, "/hook"), retry=FAST).send_alert(ALERT)
    assert not result.ok
    assert result.attempts == 1
    assert "redirect" in result.error


def test_timeout_on_a_server_that_never_answers() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (backlog), never reads nor answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/services/{TOKEN}"
        policy = RetryPolicy(attempts=2, initial_delay=0.01, total_timeout=5)
        start = time.monotonic()
        result = SlackNotifier(url, timeout=0.3, retry=policy).send_alert(ALERT)
        elapsed = time.monotonic() - start
    finally:
        silent.close()
    assert not result.ok
    assert result.attempts == 2
    assert "timed out" in result.error
    assert 0.5 <= elapsed < 2.0


def test_connection_refused_is_retried_then_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}/services/{TOKEN}"
    sleeps = _Sleeps()
    result = SlackNotifier(url, retry=FAST, sleep=sleeps).send_alert(ALERT)
    assert not result.ok
    assert result.attempts == FAST.attempts
    assert len(sleeps.waits) == FAST.attempts - 1
    assert "connection failed" in result.error


# ---------------------------------------------------------------------- webhook
def test_webhook_json_and_hmac_signature(server: _Server) -> None:
    key = "hmac-key-never-logged"
    notifier = WebhookNotifier(_url(server, "/hook"), secret=key, retry=FAST,
                               headers={"Authorization": "Bearer hook-token-xyz"})
    assert notifier.send_alert(ALERT).ok
    (req,) = server.requests
    body = req["body"]
    payload = json.loads(body)
    assert payload == {"version": "1", "alert": ALERT.to_dict()}
    assert payload["alert"]["starts_at"] == "2024-05-01T10:00:00Z"
    ts = req["headers"]["X-Mestres-Timestamp"]
    sig = req["headers"]["X-Mestres-Signature"]
    expected = hmac.new(key.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert sig == f"sha256={expected}"
    assert verify_signature(key, body, ts, sig)
    assert not verify_signature(key, body + b" ", ts, sig)
    assert not verify_signature("other-key", body, ts, sig)
    assert not verify_signature(key, body, str(int(ts) - 3600), sign(key, body, int(ts) - 3600))
    assert not verify_signature(key, body, "not-a-number", sig)
    assert req["headers"]["Authorization"] == "Bearer hook-token-xyz"


def test_unsigned_webhook(server: _Server) -> None:
    assert WebhookNotifier(_url(server, "/hook"), retry=FAST).send_alert(ALERT).ok
    assert "X-Mestres-Signature" not in server.requests[0]["headers"]
    with pytest.raises(ValueError, match="secret"):
        WebhookNotifier(_url(server, "/hook"), secret="")


def test_alert_from_alertmanager_payload() -> None:
    alert = Alert.from_alertmanager({
        "labels": {"alertname": "HighErrorRate", "severity": "page", "service": "shop"},
        "annotations": {"summary": "s", "description": "d", "runbook_url": "http://r"},
        "startsAt": "2024-05-01T10:00:00.123Z", "generatorURL": "http://prom/graph"})
    assert (alert.name, alert.severity, alert.service, alert.summary) == \
        ("HighErrorRate", "page", "shop", "s")
    assert alert.links == {"runbook": "http://r", "source": "http://prom/graph"}
    assert alert.timestamp() == "2024-05-01T10:00:00Z"


# ---------------------------------------------------------------------- secrets
def test_secrets_absent_from_logs_reprs_and_results(server: _Server,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mestres_observability.notifiers")
    server.script = [(500, {}, f"echo {TOKEN}".encode()), (404, {}, b"")]
    slack = SlackNotifier(_url(server), retry=FAST)
    hook = WebhookNotifier(_url(server, f"/hook?token={TOKEN}"), secret="hmac-key-secret",
                           headers={"X-Api-Key": "api-key-secret"}, retry=FAST)
    results = [slack.send_alert(ALERT), hook.send_alert(ALERT)]
    refused = SlackNotifier(f"http://127.0.0.1:{free_port()}/services/{TOKEN}",
                            retry=FAST).send_alert(ALERT)
    email = EmailNotifier("127.0.0.1", free_port(), sender="a@b.c", recipients=["d@e.f"],
                          username="u", password="smtp-password-secret", retry=FAST,
                          starttls=False)
    results += [refused, email.send_alert(ALERT)]
    texts = [caplog.text, repr(slack), repr(hook), repr(email), str(slack), str(email),
             *(r.error for r in results), *(repr(r) for r in results)]
    assert "not delivered" in caplog.text  # failures are logged...
    for text in texts:
        for secret in (TOKEN, "SuperSecretToken42", "hmac-key-secret", "api-key-secret",
                       "smtp-password-secret"):
            assert secret not in text, (secret, text)
    assert "127.0.0.1" in repr(slack)  # ...and say where, without the credential


# ---------------------------------------------------------------------- email
def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    openssl = require_binary("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class _Mailbox:
    def __init__(self, replies: list[str] | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.replies = replies or []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append({"content": envelope.content, "from": envelope.mail_from,
                              "to": list(envelope.rcpt_tos), "tls": session.ssl is not None,
                              "authenticated": session.authenticated})
        return self.replies.pop(0) if self.replies else "250 OK"


@pytest.fixture
def smtp_tls(tmp_path: Path) -> Iterator[tuple[Any, _Mailbox, Path]]:
    controller_mod = require_module("aiosmtpd.controller")
    smtp_mod = require_module("aiosmtpd.smtp")
    cert, key = _certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> Any:
        ok = auth_data.login == b"alerts" and auth_data.password == b"s3cret-pw"
        return smtp_mod.AuthResult(success=ok, handled=False)

    box = _Mailbox()
    controller = controller_mod.Controller(
        box, hostname="127.0.0.1", port=free_port(), tls_context=context,
        require_starttls=True, authenticator=authenticator, auth_required=True,
        auth_require_tls=True)
    controller.start()
    yield controller, box, cert
    controller.stop()


def _client_context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def test_email_over_starttls_with_login(smtp_tls: tuple[Any, _Mailbox, Path]) -> None:
    controller, box, cert = smtp_tls
    notifier = EmailNotifier("127.0.0.1", controller.port, sender="alerts@shop.example",
                             recipients=["oncall@shop.example"], username="alerts",
                             password="s3cret-pw", ssl_context=_client_context(cert),
                             retry=FAST, timeout=5)
    result = notifier.send_alert(ALERT)
    assert result.ok, result.error
    (msg,) = box.messages
    assert msg["tls"]
    assert msg["authenticated"]
    assert msg["from"] == "alerts@shop.example"
    assert msg["to"] == ["oncall@shop.example"]
    text = msg["content"].decode()
    assert "Subject: [CRITICAL] HighErrorRate: 5xx ratio above 5% (mestres-cafe-api)" in text
    assert "http://grafana.local/d/mo-technical" in text
    assert "For 5 minutes on /orders." in text


def test_email_wrong_password_is_not_retried(smtp_tls: tuple[Any, _Mailbox, Path]) -> None:
    controller, box, cert = smtp_tls
    notifier = EmailNotifier("127.0.0.1", controller.port, sender="a@shop.example",
                             recipients=["b@shop.example"], username="alerts",
                             password="wrong-pw-123", ssl_context=_client_context(cert),
                             retry=FAST, timeout=5)
    result = notifier.send_alert(ALERT)
    assert not result.ok
    assert result.attempts == 1
    assert "login refused" in result.error
    assert "wrong-pw-123" not in result.error
    assert box.messages == []


def test_email_certificate_not_trusted(smtp_tls: tuple[Any, _Mailbox, Path]) -> None:
    controller, box, _ = smtp_tls
    notifier = EmailNotifier("127.0.0.1", controller.port, sender="a@shop.example",
                             recipients=["b@shop.example"], username="alerts",
                             password="s3cret-pw", retry=FAST, timeout=5)  # system CAs
    result = notifier.send_alert(ALERT)
    assert not result.ok
    assert result.attempts == 1
    assert "TLS" in result.error
    assert box.messages == []


@pytest.fixture
def smtp_plain() -> Iterator[tuple[Any, _Mailbox]]:
    controller_mod = require_module("aiosmtpd.controller")
    box = _Mailbox(replies=["451 4.3.0 try again later"])
    controller = controller_mod.Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, box
    controller.stop()


def test_email_without_starttls_offered_is_refused(smtp_plain: tuple[Any, _Mailbox]) -> None:
    controller, box = smtp_plain
    notifier = EmailNotifier("127.0.0.1", controller.port, sender="a@shop.example",
                             recipients=["b@shop.example"], retry=FAST, timeout=5)
    result = notifier.send_alert(ALERT)
    assert not result.ok
    assert result.attempts == 1
    assert "STARTTLS" in result.error
    assert box.messages == []


def test_email_4xx_is_retried(smtp_plain: tuple[Any, _Mailbox]) -> None:
    controller, box = smtp_plain
    sleeps = _Sleeps()
    notifier = EmailNotifier("127.0.0.1", controller.port, sender="a@shop.example",
                             recipients=["b@shop.example"], starttls=False, retry=FAST,
                             sleep=sleeps, timeout=5)
    result = notifier.send_alert(ALERT)
    assert result.ok, result.error
    assert result.attempts == 2
    assert len(box.messages) == 2  # the first was answered 451
    assert len(sleeps.waits) == 1


def test_email_timeout_on_a_server_that_never_answers() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        notifier = EmailNotifier("127.0.0.1", silent.getsockname()[1], sender="a@b.example",
                                 recipients=["c@d.example"], timeout=0.3,
                                 retry=RetryPolicy(attempts=2, initial_delay=0.01))
        start = time.monotonic()
        result = notifier.send_alert(ALERT)
        elapsed = time.monotonic() - start
    finally:
        silent.close()
    assert not result.ok
    assert result.attempts == 2
    assert "timed out" in result.error
    assert elapsed < 2.0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sender": "nobody", "recipients": ["a@b.c"]}, "sender"),
    ({"sender": "a@b.c", "recipients": []}, "recipients"),
    ({"sender": "a@b.c", "recipients": ["a@b.c"], "use_ssl": True}, "starttls or use_ssl"),
    ({"sender": "a@b.c", "recipients": ["a@b.c"], "password": "p"}, "username"),
    ({"sender": "a@b.c", "recipients": ["a@b.c"], "username": "u", "password": "p",
      "starttls": False}, "clear text"),
])
def test_email_misconfiguration(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EmailNotifier("smtp.example.com", 587, **kwargs)

