"""Slack, email and webhook notifiers: one small interface, bounded retries, no leaked secrets.

Each notifier has ``send_alert(alert) -> DeliveryResult``. It never raises
once built: a failure comes back as a :class:`DeliveryResult` whose ``ok`` is
false and whose ``error`` says what happened (without the secret). Only a
misconfiguration raises, at construction (:class:`ValueError`).

Delivery is retried on what may pass by itself (a 5xx answer, 429 "too many
requests" honouring ``Retry-After``, a refused or dropped connection, a
timeout, an SMTP 4xx) with exponential backoff and jitter, within a number of
attempts and a total time budget (:class:`RetryPolicy`); it is never retried
on an answer that will not change (another 4xx, an SMTP 5xx, a refused login).

Secrets (the Slack webhook address, which is its own credential; the SMTP
password; the webhook's HMAC key) never appear in a ``repr``, a log line or an
error message. Standard library only: ``urllib.request`` and ``smtplib``.

Example::

    from mestres_observability.monitoring.notifiers import Alert, SlackNotifier

    slack = SlackNotifier.from_file("/run/secrets/slack_webhook_url")
    result = slack.send_alert(Alert(
        name="HighErrorRate", severity="critical", service="mestres-cafe-api",
        summary="5xx ratio above 5% for 5 minutes",
        links={"grafana": "https://grafana.example/d/mo-technical",
               "kibana": "https://kibana.example/app/dashboards"}))
    if not result:
        print(result.error)
"""

from __future__ import annotations

import abc
import contextlib
import datetime as _dt
import email.message
import email.utils
import hashlib
import hmac
import http.client
import json
import logging
import math
import random
import smtplib
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "SEVERITY_COLOURS",
    "Alert",
    "DeliveryResult",
    "EmailNotifier",
    "Notifier",
    "RetryPolicy",
    "SlackNotifier",
    "WebhookNotifier",
    "sign",
    "verify_signature",
]

_log = logging.getLogger("mestres_observability.notifiers")

#: Slack attachment colour by severity (the seed's four, plus Alertmanager's usual names).
SEVERITY_COLOURS: dict[str, str] = {
    "critical": "#FF0000", "page": "#FF0000",
    "high": "#FF8C00", "error": "#FF8C00",
    "medium": "#FFD700", "warning": "#FFD700", "ticket": "#FFD700",
    "low": "#00FF00", "info": "#00FF00",
}
_DEFAULT_COLOUR = "#808080"


@dataclass(frozen=True)
class Alert:
    """One alert to notify about.

    Attributes:
        name: the alert's name (``HighErrorRate``).
        severity: ``critical``, ``warning``, ``page``, ``ticket`` ... (picks the colour).
        service: the service it is about.
        summary: one line.
        description: more detail (may be several lines).
        starts_at: when it started firing (default: now, UTC).
        labels: the alert's labels.
        links: named links: ``grafana`` and ``kibana`` become Slack buttons,
            ``runbook`` a link; every link goes into emails and webhooks.
    """

    name: str
    severity: str
    service: str
    summary: str
    description: str = ""
    starts_at: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))
    labels: Mapping[str, str] = field(default_factory=dict)
    links: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_alertmanager(cls, alert: Mapping[str, Any],
                          links: Mapping[str, str] | None = None) -> Alert:
        """Build from one entry of ``alerts`` in an Alertmanager webhook payload."""
        labels = {str(k): str(v) for k, v in (alert.get("labels") or {}).items()}
        notes = {str(k): str(v) for k, v in (alert.get("annotations") or {}).items()}
        started = _parse_time(str(alert.get("startsAt", "")))
        extra = dict(links or {})
        if "runbook_url" in notes:
            extra.setdefault("runbook", notes["runbook_url"])
        if alert.get("generatorURL"):
            extra.setdefault("source", str(alert["generatorURL"]))
        return cls(
            name=labels.get("alertname", "alert"), severity=labels.get("severity", "unknown"),
            service=labels.get("service", labels.get("job", "unknown")),
            summary=notes.get("summary", labels.get("alertname", "")),
            description=notes.get("description", ""),
            starts_at=started or _dt.datetime.now(_dt.timezone.utc),
            labels=labels, links=extra)

    def timestamp(self) -> str:
        """``starts_at`` in ISO 8601 UTC (``2024-05-01T10:00:00Z``)."""
        at = self.starts_at if self.starts_at.tzinfo else self.starts_at.replace(
            tzinfo=_dt.timezone.utc)
        return at.astimezone(_dt.timezone.utc).isoformat(timespec="seconds").replace(
            "+00:00", "Z")

    def to_dict(self) -> dict[str, Any]:
        """The alert as JSON-ready data (the webhook's payload)."""
        return {"name": self.name, "severity": self.severity, "service": self.service,
                "summary": self.summary, "description": self.description,
                "starts_at": self.timestamp(), "labels": dict(self.labels),
                "links": dict(self.links)}


def _parse_time(text: str) -> _dt.datetime | None:
    if not text:
        return None
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class DeliveryResult:
    """What became of one ``send_alert`` call. True when the alert was delivered.

    Attributes:
        ok: delivered (a 2xx answer; the SMTP server accepted every recipient).
        notifier: ``slack``, ``email`` or ``webhook``.
        attempts: how many times delivery was tried.
        status: the last HTTP status or SMTP reply code, if any.
        error: why it failed (empty on success); never contains a secret.
        retryable: the last failure was of a kind that may pass (the budget ran out).
        elapsed: seconds spent, waits included.
    """

    ok: bool
    notifier: str
    attempts: int
    status: int | None = None
    error: str = ""
    retryable: bool = False
    elapsed: float = 0.0

    def __bool__(self) -> bool:
        return self.ok


class Notifier(Protocol):
    """What every notifier offers (issue 14's incident response takes any of them)."""

    def send_alert(self, alert: Alert) -> DeliveryResult:
        """Deliver ``alert``; never raises."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a notifier tries.

    Attempt ``n`` (from 1) that fails with a retryable error is followed by a
    wait of ``min(max_delay, initial_delay * multiplier ** (n - 1))``, less a
    random share of up to ``jitter`` of it (so many senders do not retry in
    step); a 429's ``Retry-After`` replaces the wait when it is longer, up to
    ``max_retry_after``. No wait starts that would end past ``total_timeout``
    seconds after the first attempt (the result then says the budget ran
    out), and each attempt's timeout is cut to what is left of the budget, so
    one ``send_alert`` lasts about ``total_timeout`` at most.

    Attributes:
        attempts: tries in all (1: no retry).
        initial_delay: first wait, seconds.
        multiplier: growth of the wait.
        max_delay: longest computed wait.
        jitter: 0..1, the share of each wait that is random.
        total_timeout: budget of one ``send_alert``, seconds.
        max_retry_after: longest ``Retry-After`` honoured; a longer one ends the delivery.
    """

    attempts: int = 4
    initial_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 8.0
    jitter: float = 0.5
    total_timeout: float = 30.0
    max_retry_after: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, not {self.attempts}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"RetryPolicy.jitter must be between 0 and 1, not {self.jitter}")
        for name in ("initial_delay", "max_delay", "total_timeout", "max_retry_after"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"RetryPolicy.{name} must be a finite number >= 0, not {value}")
        if self.multiplier < 1.0:
            raise ValueError(f"RetryPolicy.multiplier must be at least 1, not {self.multiplier}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait after failed attempt ``attempt`` (from 1), jitter applied."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        return base * (1.0 - self.jitter * rng.random())


@dataclass
class _Outcome:
    ok: bool
    retryable: bool = False
    status: int | None = None
    error: str = ""
    retry_after: float | None = None


class _Base(abc.ABC):
    """Timeout, retry loop, result and logging shared by the notifiers."""

    kind = "notifier"

    def __init__(self, *, timeout: float, retry: RetryPolicy | None,
                 sleep: Callable[[float], None] | None, rng: random.Random | None) -> None:
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.timeout = float(timeout)
        self.retry = retry or RetryPolicy()
        self._sleep = sleep or time.sleep
        self._rng = rng or random.Random()

    # subclasses
    @abc.abstractmethod
    def _attempt(self, alert: Alert, timeout: float) -> _Outcome:
        """One delivery attempt within ``timeout`` seconds."""

    def _scrub(self, text: str) -> str:
        return text

    def _target(self) -> str:
        return ""

    def send_alert(self, alert: Alert) -> DeliveryResult:
        """Deliver ``alert``, retrying as :attr:`retry` says. Never raises."""
        policy = self.retry
        start = time.monotonic()
        attempt = 0
        outcome = _Outcome(ok=False, error="not attempted")
        while True:
            attempt += 1
            remaining = policy.total_timeout - (time.monotonic() - start)
            try:
                outcome = self._attempt(alert, max(0.05, min(self.timeout, remaining)))
            except Exception as exc:  # a bug or an unforeseen error: report, never raise
                outcome = _Outcome(ok=False, error=f"unexpected {type(exc).__name__}: {exc}")
            outcome.error = self._scrub(outcome.error)
            if outcome.ok or not outcome.retryable or attempt >= policy.attempts:
                break
            wait = policy.delay(attempt, self._rng)
            if outcome.retry_after is not None:
                if outcome.retry_after > policy.max_retry_after:
                    outcome.error += (f"; the server asked to wait {outcome.retry_after:g} s, "
                                      f"more than max_retry_after ({policy.max_retry_after:g} s)")
                    break
                wait = max(wait, outcome.retry_after)
            if time.monotonic() - start + wait >= policy.total_timeout:
                outcome.error += f"; stopped: the {policy.total_timeout:g} s budget would run out"
                break
            _log.debug("%s delivery to %s failed (%s); retry %d in %.2fs", self.kind,
                       self._target(), outcome.error, attempt, wait)
            self._sleep(wait)
        result = DeliveryResult(
            ok=outcome.ok, notifier=self.kind, attempts=attempt, status=outcome.status,
            error="" if outcome.ok else outcome.error,
            retryable=outcome.retryable and not outcome.ok,
            elapsed=time.monotonic() - start)
        if result.ok:
            _log.info("%s: alert %s delivered to %s (attempt %d)", self.kind, alert.name,
                      self._target(), attempt)
        else:
            _log.warning("%s: alert %s not delivered to %s after %d attempt(s): %s", self.kind,
                         alert.name, self._target(), attempt, result.error)
        return result


# ---------------------------------------------------------------------- HTTP
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are failures: following one would send the body (and signature) elsewhere."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None


def _retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _check_url(url: str, what: str) -> urllib.parse.SplitResult:
    if not isinstance(url, str):
        raise ValueError(f"{what} must be a string")
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http(s) address with a host "
                         f"(got scheme {parts.scheme!r})")
    return parts


class _HttpNotifier(_Base):
    """POSTs JSON to one address; the address itself may be the secret (Slack)."""

    def __init__(self, url: str, *, what: str, timeout: float, retry: RetryPolicy | None,
                 sleep: Callable[[float], None] | None, rng: random.Random | None,
                 ssl_context: ssl.SSLContext | None) -> None:
        super().__init__(timeout=timeout, retry=retry, sleep=sleep, rng=rng)
        parts = _check_url(url, what)
        self.__url = url.strip()
        self._origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        path = parts.path.strip("/")
        self._secret_parts = [p for p in (
            self.__url, parts.path, path, parts.query, parts.netloc.rpartition("@")[0],
            *(v for _, v in urllib.parse.parse_qsl(parts.query)),
            *(seg for seg in path.split("/") if len(seg) >= 8))
            if p and p not in ("/", self._origin)]
        handlers: list[Any] = [_NoRedirect()]
        if ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=ssl_context))
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url='{self._origin}/…', timeout={self.timeout:g})"

    def _target(self) -> str:
        return self._origin

    def _scrub(self, text: str) -> str:
        for part in sorted(self._secret_parts, key=len, reverse=True):
            if len(part) > 3:
                text = text.replace(part, "<redacted>")
        return text

    @abc.abstractmethod
    def _payload(self, alert: Alert) -> bytes:
        """The request body for ``alert``."""

    def _headers(self, body: bytes) -> dict[str, str]:
        return {}

    def _attempt(self, alert: Alert, timeout: float) -> _Outcome:
        body = self._payload(alert)
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "User-Agent": "mestres-observability-notifier", **self._headers(body)}
        request = urllib.request.Request(self.__url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=timeout) as response:
                response.read(65536)
                return _Outcome(ok=True, status=response.status)
        except urllib.error.HTTPError as err:
            status = err.code
            detail = ""
            with contextlib.suppress(Exception):
                detail = err.read(200).decode("utf-8", "replace").strip()
            text = f"HTTP {status}" + (f": {detail}" if detail else "")
            if status == 429:
                return _Outcome(ok=False, retryable=True, status=status, error=text,
                                retry_after=_retry_after(err.headers.get("Retry-After")))
            if status >= 500:
                return _Outcome(ok=False, retryable=True, status=status, error=text)
            if 300 <= status < 400:
                text = f"HTTP {status}: redirects are not followed"
            return _Outcome(ok=False, retryable=False, status=status, error=text)
        except (OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, ssl.SSLError):
                return _Outcome(ok=False, error=f"TLS failed: {reason}")
            kind = "timed out" if isinstance(reason, TimeoutError) or "timed out" in str(
                reason) else f"connection failed ({type(reason).__name__}: {reason})"
            return _Outcome(ok=False, retryable=True, error=kind)


class SlackNotifier(_HttpNotifier):
    """Posts the seed's Slack message to an incoming webhook.

    The message has one attachment coloured by severity
    (:data:`SEVERITY_COLOURS`), titled ``🚨 <SEVERITY> Alert: <name>``, with the
    summary and description, ``Service`` and ``Timestamp`` fields, and "View in
    Grafana" / "View Logs" buttons for the alert's ``grafana`` and ``kibana``
    links (a button whose link is missing is left out, not pointed at ``#``).

    Args:
        webhook_url: the incoming webhook's address. It is the credential:
            it never appears in a ``repr``, a log line or a result.
        timeout: seconds for each attempt (connect and each read).
        retry: the retry policy.
        sleep: waits between attempts (tests pass a fake).
        rng: jitter source (tests pass a seeded one).
        ssl_context: TLS settings for ``https`` (default: the system's, verified).

    Raises:
        ValueError: the address is not an http(s) URL, or a bad timeout.
    """

    kind = "slack"

    def __init__(self, webhook_url: str, *, timeout: float = 10.0,
                 retry: RetryPolicy | None = None, sleep: Callable[[float], None] | None = None,
                 rng: random.Random | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(webhook_url, what="webhook_url", timeout=timeout, retry=retry,
                         sleep=sleep, rng=rng, ssl_context=ssl_context)

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> SlackNotifier:
        """Read the webhook address from a file (a compose or Kubernetes secret)."""
        try:
            url = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read the Slack webhook file {path}: "
                             f"{exc.strerror or exc}") from None
        return cls(url, **kwargs)

    @staticmethod
    def message(alert: Alert) -> dict[str, Any]:
        """The Slack payload for ``alert``."""
        severity = alert.severity or "unknown"
        text = alert.summary + (f"\n{alert.description}" if alert.description else "")
        actions = [{"type": "button", "text": label, "url": alert.links[key]}
                   for key, label in (("grafana", "View in Grafana"), ("kibana", "View Logs"))
                   if alert.links.get(key)]
        attachment: dict[str, Any] = {
            "color": SEVERITY_COLOURS.get(severity.lower(), _DEFAULT_COLOUR),
            "fallback": f"{severity.upper()} {alert.name}: {alert.summary}",
            "title": f"🚨 {severity.upper()} Alert: {alert.name}",
            "text": text,
            "fields": [
                {"title": "Service", "value": alert.service or "Unknown", "short": True},
                {"title": "Timestamp", "value": alert.timestamp(), "short": True},
            ],
        }
        if alert.links.get("runbook"):
            attachment["title_link"] = alert.links["runbook"]
        if actions:
            attachment["actions"] = actions
        return {"text": attachment["fallback"], "attachments": [attachment]}

    def _payload(self, alert: Alert) -> bytes:
        return json.dumps(self.message(alert), ensure_ascii=False).encode("utf-8")


def sign(secret: bytes | str, body: bytes, timestamp: int) -> str:
    """The webhook signature: ``sha256=`` and the hex HMAC-SHA256 of ``b"<timestamp>." + body``."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    digest = hmac.new(key, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify_signature(secret: bytes | str, body: bytes, timestamp: str, signature: str, *,
                     tolerance: float = 300.0, now: float | None = None) -> bool:
    """Check a :class:`WebhookNotifier` request on the receiving side (constant time).

    Args:
        secret: the shared HMAC key.
        body: the raw request body.
        timestamp: the ``X-Mestres-Timestamp`` header.
        signature: the ``X-Mestres-Signature`` header.
        tolerance: reject requests signed longer ago (or ahead) than this, seconds
            (a replayed request carries an old timestamp).
        now: the current Unix time (default: the clock).
    """
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, ts), signature)


class WebhookNotifier(_HttpNotifier):
    """POSTs the alert as JSON (:meth:`Alert.to_dict`) to any HTTP endpoint.

    With ``secret``, each request carries ``X-Mestres-Timestamp`` (Unix
    seconds) and ``X-Mestres-Signature: sha256=<hex>``, the HMAC-SHA256 of
    ``"<timestamp>." + body`` under the secret (:func:`sign`); receivers check
    it with :func:`verify_signature`, which also rejects stale timestamps.

    Args:
        url: where to POST.
        secret: the HMAC key (never logged nor in a ``repr``); ``None``: unsigned.
        headers: extra headers (their values are kept out of ``repr`` and logs).
        timeout, retry, sleep, rng, ssl_context: as for :class:`SlackNotifier`.

    Raises:
        ValueError: not an http(s) URL, an empty secret, or a bad timeout.
    """

    kind = "webhook"
    SIGNATURE_HEADER = "X-Mestres-Signature"
    TIMESTAMP_HEADER = "X-Mestres-Timestamp"

    def __init__(self, url: str, *, secret: bytes | str | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float = 10.0,
                 retry: RetryPolicy | None = None, sleep: Callable[[float], None] | None = None,
                 rng: random.Random | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(url, what="url", timeout=timeout, retry=retry, sleep=sleep, rng=rng,
                         ssl_context=ssl_context)
        if secret is not None and not secret:
            raise ValueError("secret must not be empty (pass None for unsigned requests)")
        self.__secret = secret.encode("utf-8") if isinstance(secret, str) else secret
        self.__headers = dict(headers or {})
        self._secret_parts += [v for v in self.__headers.values() if v]
        self._clock = clock

    def __repr__(self) -> str:
        signed = "signed" if self.__secret else "unsigned"
        return f"WebhookNotifier(url='{self._origin}/…', {signed}, timeout={self.timeout:g})"

    def _payload(self, alert: Alert) -> bytes:
        return json.dumps({"version": "1", "alert": alert.to_dict()},
                          ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def _headers(self, body: bytes) -> dict[str, str]:
        out = dict(self.__headers)
        if self.__secret:
            ts = int(self._clock())
            out[self.TIMESTAMP_HEADER] = str(ts)
            out[self.SIGNATURE_HEADER] = sign(self.__secret, body, ts)
        return out


# ---------------------------------------------------------------------- email
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


class EmailNotifier(_Base):
    """Sends the alert by SMTP, upgrading the connection with STARTTLS by default.

    Args:
        host: the SMTP server.
        port: 587 (submission with STARTTLS) by default; 465 with ``use_ssl``.
        sender: the From address.
        recipients: the To addresses (at least one).
        username: log in as this user (after STARTTLS).
        password: the password (never logged nor in a ``repr``).
        starttls: upgrade with STARTTLS before anything else (default). A
            server that does not offer it is a failure: no fallback to plain text.
        use_ssl: connect over TLS from the start (port 465) instead.
        ssl_context: TLS settings (default: the system's, certificates verified).
        allow_insecure_auth: log in without TLS. Refused by default, except to
            a loopback server.
        timeout, retry, sleep, rng: as for :class:`SlackNotifier`.

    Raises:
        ValueError: no sender or recipient, both TLS modes, a password without
            a user, or a login in clear text to a remote server.
    """

    kind = "email"

    def __init__(self, host: str, port: int = 587, *, sender: str,
                 recipients: Sequence[str], username: str | None = None,
                 password: str | None = None, starttls: bool = True, use_ssl: bool = False,
                 ssl_context: ssl.SSLContext | None = None, allow_insecure_auth: bool = False,
                 timeout: float = 10.0, retry: RetryPolicy | None = None,
                 sleep: Callable[[float], None] | None = None,
                 rng: random.Random | None = None) -> None:
        super().__init__(timeout=timeout, retry=retry, sleep=sleep, rng=rng)
        if not host:
            raise ValueError("host is required")
        if not sender or "@" not in sender:
            raise ValueError("sender must be an email address")
        if isinstance(recipients, str):
            recipients = [recipients]
        if not recipients or any("@" not in r for r in recipients):
            raise ValueError("recipients must be one or more email addresses")
        if starttls and use_ssl:
            raise ValueError("choose starttls or use_ssl, not both")
        if password is not None and not username:
            raise ValueError("a password needs a username")
        if username and not (starttls or use_ssl) and not allow_insecure_auth \
                and host not in _LOOPBACK:
            raise ValueError("logging in without TLS would send the password in clear text; "
                             "keep starttls=True, or pass allow_insecure_auth=True")
        self.host = host
        self.port = int(port)
        self.sender = sender
        self.recipients = list(recipients)
        self.username = username
        self.__password = password
        self.starttls = starttls
        self.use_ssl = use_ssl
        self._context = ssl_context

    def __repr__(self) -> str:
        mode = "ssl" if self.use_ssl else "starttls" if self.starttls else "plain"
        return (f"EmailNotifier(host={self.host!r}, port={self.port}, {mode}, "
                f"sender={self.sender!r}, recipients={self.recipients!r}, "
                f"username={self.username!r}, password={'<set>' if self.__password else None})")

    def _target(self) -> str:
        return f"{self.host}:{self.port}"

    def _scrub(self, text: str) -> str:
        if self.__password and len(self.__password) > 3:
            text = text.replace(self.__password, "<redacted>")
        return text

    def message(self, alert: Alert) -> email.message.EmailMessage:
        """The email for ``alert`` (plain text)."""
        msg = email.message.EmailMessage()
        msg["Subject"] = f"[{alert.severity.upper()}] {alert.name}: {alert.summary} " \
                         f"({alert.service})"
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Date"] = email.utils.format_datetime(_dt.datetime.now(_dt.timezone.utc))
        msg["Message-ID"] = email.utils.make_msgid(domain=self.sender.rpartition("@")[2])
        lines = [f"{alert.severity.upper()} alert {alert.name} for {alert.service}",
                 f"Since: {alert.timestamp()}", "", alert.summary]
        if alert.description:
            lines += ["", alert.description]
        if alert.links:
            lines += ["", "Links:"] + [f"  {k}: {v}" for k, v in alert.links.items()]
        if alert.labels:
            lines += ["", "Labels:"] + [f"  {k}={v}" for k, v in sorted(alert.labels.items())]
        msg.set_content("\n".join(lines) + "\n")
        return msg

    def _attempt(self, alert: Alert, timeout: float) -> _Outcome:
        msg = self.message(alert)
        context = self._context or ssl.create_default_context()
        smtp: smtplib.SMTP | None = None
        try:
            if self.use_ssl:
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=timeout, context=context)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=timeout)
            smtp.ehlo()
            if self.starttls:
                if not smtp.has_extn("starttls"):
                    return _Outcome(ok=False, error="the server does not offer STARTTLS")
                smtp.starttls(context=context)
                smtp.ehlo()
            if self.username:
                smtp.login(self.username, self.__password or "")
            refused = smtp.send_message(msg)
            if refused:
                return _Outcome(ok=False, error=f"recipients refused: {sorted(refused)}")
            return _Outcome(ok=True, status=250)
        except smtplib.SMTPAuthenticationError as err:
            return _Outcome(ok=False, status=err.smtp_code, error=f"login refused ({err.smtp_code})")
        except smtplib.SMTPRecipientsRefused as err:
            codes = [c for c, _ in err.recipients.values()]
            return _Outcome(ok=False, retryable=all(400 <= c < 500 for c in codes),
                            status=codes[0] if codes else None,
                            error=f"recipients refused: {sorted(err.recipients)}")
        except smtplib.SMTPResponseException as err:
            text = err.smtp_error.decode("utf-8", "replace") if isinstance(
                err.smtp_error, bytes) else str(err.smtp_error)
            return _Outcome(ok=False, retryable=400 <= err.smtp_code < 500,
                            status=err.smtp_code, error=f"SMTP {err.smtp_code}: {text[:200]}")
        except smtplib.SMTPNotSupportedError as err:
            return _Outcome(ok=False, error=f"not supported by the server: {err}")
        except ssl.SSLError as err:
            return _Outcome(ok=False, error=f"TLS failed: {err.reason or err}")
        except (OSError, smtplib.SMTPException) as err:
            kind = "timed out" if isinstance(err, TimeoutError) else \
                f"connection failed ({type(err).__name__}: {err})"
            return _Outcome(ok=False, retryable=True, error=kind)
        finally:
            if smtp is not None:
                with contextlib.suppress(Exception):
                    smtp.quit()
                with contextlib.suppress(Exception):
                    smtp.close()
