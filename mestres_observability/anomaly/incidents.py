"""Incident response: incidents from anomalies and firing alerts, paged once, resolved once.

:class:`IncidentManager` turns events (an anomaly from a detector, a firing or
resolved alert from Alertmanager's webhook) into incidents:

* **grouping and de-duplication**: events with the same key (the metric for
  anomalies; alert name and service for alerts) join the open incident of that
  key instead of opening another;
* **severity**: an anomaly's from its score with the seed's thresholds
  (critical above 0.9, high above 0.7, medium above 0.5, else low), an
  alert's from its ``severity`` label; an incident has the highest of its events;
* **escalation**: each severity routes to notifiers (by default medium: the
  webhook; high: Slack and the webhook; critical: Slack, email and the
  webhook). A notifier is paged at most once per incident; when the incident's
  severity rises, the notifiers of the new level that were not paged yet are;
* **actions**: callables run once per incident from a minimum severity on (an
  auto-scale hook, say);
* **resolution**: when Alertmanager says every alert of the incident is
  resolved, or ``resolve_after`` seconds pass without an anomaly, every
  notifier that was paged gets one resolution message;
* **cool-down**: an event within ``cooldown`` seconds of its key's resolution
  re-opens that incident (no new page: it is the same flapping problem);
* **state** lives in a SQLite file, so a restart pages nothing again.

Notifiers are any object with ``send_alert(alert)`` returning something with a
boolean ``ok`` (the Slack, email and webhook notifiers of
``mestres_observability.monitoring.notifiers``); a failed delivery is retried
on the next :meth:`IncidentManager.tick`. The alert handed to them is built by
``alert_factory`` (by default :class:`~mestres_observability.monitoring.notifiers.Alert`)
from keyword arguments ``name``, ``severity``, ``service``,
``summary``, ``description``, ``starts_at``, ``labels`` and ``links``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..monitoring.notifiers import Alert
from .detector import Point, severity

__all__ = ["DEFAULT_ROUTES", "SEVERITIES", "Action", "Incident", "IncidentAlert", "IncidentManager",
           "Notifier", "alert_severity", "make_server"]

_log = logging.getLogger("mestres_observability.anomaly.incidents")

#: Severities from lowest to highest.
SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")

#: Which notifiers (by ``kind``) each severity pages.
DEFAULT_ROUTES: dict[str, tuple[str, ...]] = {
    "low": (),
    "medium": ("webhook",),
    "high": ("slack", "webhook"),
    "critical": ("slack", "email", "webhook"),
}

_ALERT_SEVERITY = {"critical": "critical", "page": "critical", "high": "high", "error": "high",
                   "warning": "medium", "ticket": "medium", "medium": "medium", "info": "low",
                   "low": "low", "none": "low"}


def alert_severity(label: str) -> str:
    """An Alertmanager ``severity`` label as one of :data:`SEVERITIES` (unknown: ``medium``)."""
    return _ALERT_SEVERITY.get(label.lower(), "medium")


def _rank(sev: str) -> int:
    return SEVERITIES.index(sev) if sev in SEVERITIES else 0


class Notifier(Protocol):
    """What the manager needs of a notifier: ``send_alert(alert)`` whose result has ``ok``."""

    def send_alert(self, alert: Any) -> Any:
        """Deliver ``alert``; the result's ``ok`` says whether it was delivered."""


#: The alert handed to notifiers by default: the monitoring package's notifiers take it.
IncidentAlert = Alert


@dataclass(frozen=True)
class Action:
    """A hook run once per incident that reaches ``min_severity`` (an auto-scaler)."""

    name: str
    run: Callable[[Incident], None]
    min_severity: str = "critical"


@dataclass
class Incident:
    """One incident, as stored."""

    id: int
    key: str
    source: str
    title: str
    severity: str
    status: str
    opened_at: float
    updated_at: float
    resolved_at: float | None
    events: int
    labels: dict[str, str]
    alerts: dict[str, str]  # alert fingerprint -> firing|resolved (Alertmanager incidents)

    def as_dict(self) -> dict[str, Any]:
        """JSON-compatible fields."""
        return dict(vars(self))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, source TEXT NOT NULL,
    title TEXT NOT NULL, severity TEXT NOT NULL, status TEXT NOT NULL,
    opened_at REAL NOT NULL, updated_at REAL NOT NULL, resolved_at REAL,
    events INTEGER NOT NULL, labels TEXT NOT NULL, alerts TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS incidents_key ON incidents (key, status);
CREATE TABLE IF NOT EXISTS deliveries (
    incident INTEGER NOT NULL, notifier TEXT NOT NULL, what TEXT NOT NULL,
    severity TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (incident, notifier, what));
CREATE TABLE IF NOT EXISTS actions (
    incident INTEGER NOT NULL, action TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (incident, action));
"""


class IncidentManager:
    """Incidents from anomalies and alerts, with their pages and resolutions in SQLite.

    Args:
        path: the SQLite file (created if missing).
        notifiers: the notifiers; each is known by its ``kind`` attribute
            (``slack``, ``email``, ``webhook``), else its class name. Several of one
            kind are all paged (their deliveries are recorded as ``kind``,
            ``kind#2``, ``kind#3``... in the order given).
        service: the ``service`` of anomaly alerts.
        routes: severity -> notifier kinds (default :data:`DEFAULT_ROUTES`).
        actions: hooks run once per incident.
        cooldown: seconds after a resolution during which the same key re-opens it.
        resolve_after: seconds without an anomaly after which an anomaly incident resolves.
        alert_factory: builds what is sent to notifiers (keyword arguments above).
        links: links added to every alert (``grafana``, ``runbook``...).
        clock: the time source (tests).
    """

    def __init__(self, path: str | Path, notifiers: Sequence[Notifier] = (), *,
                 service: str = "service", routes: Mapping[str, Sequence[str]] | None = None,
                 actions: Sequence[Action] = (), cooldown: float = 1800.0,
                 resolve_after: float = 1800.0, alert_factory: Callable[..., Any] = IncidentAlert,
                 links: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        #: delivery target name (``kind``, then ``kind#2``...) -> notifier
        self.notifiers: dict[str, Notifier] = {}
        self._targets: dict[str, list[str]] = {}  # kind -> its target names, in order
        for n in notifiers:
            kind = self._kind(n)
            names = self._targets.setdefault(kind, [])
            name = kind if not names else f"{kind}#{len(names) + 1}"
            names.append(name)
            self.notifiers[name] = n
        self.service = service
        self.routes = {k: tuple(v) for k, v in (routes or DEFAULT_ROUTES).items()}
        self.actions = list(actions)
        self.cooldown = cooldown
        self.resolve_after = resolve_after
        self.alert_factory = alert_factory
        self.links = dict(links or {})
        self.clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()  # a file that is not a database: no connection left behind
            raise

    @staticmethod
    def _kind(n: Any) -> str:
        return str(getattr(n, "kind", type(n).__name__.lower()))

    def close(self) -> None:
        """Close the database (again: nothing happens)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> IncidentManager:
        """The manager itself; leaving the ``with`` block closes its database."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the database."""
        self.close()

    # ------------------------------------------------------------ storage
    def _row(self, r: Sequence[Any]) -> Incident:
        return Incident(int(r[0]), r[1], r[2], r[3], r[4], r[5], float(r[6]), float(r[7]),
                        None if r[8] is None else float(r[8]), int(r[9]), json.loads(r[10]),
                        json.loads(r[11]))

    _COLUMNS = ("id, key, source, title, severity, status, opened_at, updated_at, resolved_at, "
                "events, labels, alerts")

    def incidents(self, status: str | None = None) -> list[Incident]:
        """Stored incidents, newest first (``status``: ``open`` or ``resolved``)."""
        with self._lock:
            q = f"SELECT {self._COLUMNS} FROM incidents"
            rows = (self._db.execute(q + " WHERE status = ? ORDER BY id DESC", (status,))
                    if status else self._db.execute(q + " ORDER BY id DESC"))
            return [self._row(r) for r in rows.fetchall()]

    def get(self, incident_id: int) -> Incident:
        """The incident with ``incident_id``."""
        with self._lock:
            r = self._db.execute(f"SELECT {self._COLUMNS} FROM incidents WHERE id = ?",
                                 (incident_id,)).fetchone()
        if r is None:
            raise KeyError(incident_id)
        return self._row(r)

    def deliveries(self, incident_id: int) -> list[tuple[str, str, str]]:
        """(notifier, ``page``/``resolve``, severity) delivered for an incident."""
        with self._lock:
            rows = self._db.execute("SELECT notifier, what, severity FROM deliveries WHERE "
                                    "incident = ? ORDER BY at, notifier", (incident_id,)).fetchall()
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def _save(self, i: Incident) -> None:
        self._db.execute(
            "UPDATE incidents SET title=?, severity=?, status=?, updated_at=?, resolved_at=?, "
            "events=?, labels=?, alerts=? WHERE id=?",
            (i.title, i.severity, i.status, i.updated_at, i.resolved_at, i.events,
             json.dumps(i.labels, sort_keys=True), json.dumps(i.alerts, sort_keys=True), i.id))

    def _current(self, key: str, now: float) -> Incident | None:
        """The open incident of ``key``, or one resolved less than ``cooldown`` ago."""
        r = self._db.execute(f"SELECT {self._COLUMNS} FROM incidents WHERE key = ? "
                             "ORDER BY id DESC LIMIT 1", (key,)).fetchone()
        if r is None:
            return None
        i = self._row(r)
        if i.status == "open" or (i.resolved_at is not None and now - i.resolved_at < self.cooldown):
            return i
        return None

    # ------------------------------------------------------------ events
    def _event(self, key: str, source: str, title: str, sev: str, labels: Mapping[str, str],
               now: float, alert: tuple[str, str] | None = None) -> Incident:
        i = self._current(key, now)
        if i is None:
            cur = self._db.execute(
                "INSERT INTO incidents (key, source, title, severity, status, opened_at, "
                "updated_at, resolved_at, events, labels, alerts) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (key, source, title, sev, "open", now, now, None, 0, json.dumps(dict(labels)), "{}"))
            i = self.get(int(cur.lastrowid or 0))
        if i.status == "resolved":
            i.status, i.resolved_at = "open", None  # re-opened within the cool-down
        i.events += 1
        i.updated_at = now
        if _rank(sev) > _rank(i.severity):
            i.severity = sev
            i.title = title
        if alert is not None:
            i.alerts[alert[0]] = alert[1]
        self._save(i)
        return i

    def handle_anomaly(self, point: Point) -> Incident:
        """Open or update the incident of an anomaly's metric, page and act as due."""
        sev = point.severity or severity(point.score)
        base = point.metric.split("{", 1)[0]
        with self._lock:
            now = self.clock()
            title = (f"{point.metric}: anomalous value {point.value:g} "
                     f"({point.kind or 'anomaly'}, score {point.score:.2f})")
            i = self._event(f"anomaly:{base}", "anomaly", title, sev,
                            {"metric": point.metric, "kind": point.kind}, now)
            self._escalate(i)
            return i

    def handle_alertmanager(self, payload: Mapping[str, Any]) -> list[Incident]:
        """Handle one Alertmanager webhook payload (version 4): firing alerts open or
        update incidents; when all of an incident's alerts are resolved, it resolves.

        Raises:
            ValueError: the payload has no ``alerts`` list.
        """
        alerts = payload.get("alerts")
        if not isinstance(alerts, list):
            raise ValueError("not an Alertmanager webhook payload: no 'alerts' list")
        touched: dict[int, Incident] = {}
        with self._lock:
            now = self.clock()
            for a in alerts:
                if not isinstance(a, Mapping):
                    continue
                labels = {str(k): str(v) for k, v in (a.get("labels") or {}).items()}
                notes = {str(k): str(v) for k, v in (a.get("annotations") or {}).items()}
                name = labels.get("alertname", "alert")
                svc = labels.get("service", labels.get("job", self.service))
                key = f"alert:{name}:{svc}"
                fingerprint = str(a.get("fingerprint") or json.dumps(labels, sort_keys=True))
                status = "resolved" if a.get("status") == "resolved" else "firing"
                if status == "resolved":
                    current = self._current(key, now)
                    if current is None or current.status != "open":
                        continue
                    current.alerts[fingerprint] = "resolved"
                    current.updated_at = now
                    self._save(current)
                    touched[current.id] = current
                    continue
                title = notes.get("summary", name)
                i = self._event(key, "alertmanager", title, alert_severity(labels.get("severity", "")),
                                labels, now, (fingerprint, "firing"))
                touched[i.id] = i
            out = []
            for i in touched.values():
                if i.status == "open" and i.alerts and all(v == "resolved" for v in i.alerts.values()):
                    self._resolve(i, now)
                else:
                    self._escalate(i)
                out.append(self.get(i.id))
            return out

    def tick(self) -> None:
        """Resolve anomaly incidents quiet for ``resolve_after``; retry failed pages."""
        with self._lock:
            now = self.clock()
            for i in self.incidents("open"):
                if i.source == "anomaly" and now - i.updated_at >= self.resolve_after:
                    self._resolve(i, now)
                else:
                    self._escalate(i)
            for i in self.incidents("resolved"):  # resolutions whose delivery failed
                if i.resolved_at is not None and now - i.resolved_at < 86400:
                    self._resolve_messages(i)

    # ------------------------------------------------------------ paging
    def _delivered(self, incident: int, what: str) -> set[str]:
        rows = self._db.execute("SELECT notifier FROM deliveries WHERE incident = ? AND what = ?",
                                (incident, what)).fetchall()
        return {str(r[0]) for r in rows}

    def _alert(self, i: Incident, resolved: bool) -> Any:
        labels = {k: v for k, v in i.labels.items() if isinstance(v, str)}
        labels.update({"incident": str(i.id), "status": "resolved" if resolved else "firing"})
        name = labels.get("alertname") or f"Anomaly {labels.get('metric', i.key)}"
        return self.alert_factory(
            name=("RESOLVED: " if resolved else "") + name,
            severity=i.severity, service=labels.get("service", self.service),
            summary=("resolved: " if resolved else "") + i.title,
            description=(f"incident {i.id} ({i.source}), {i.events} event(s) since "
                         f"{_dt.datetime.fromtimestamp(i.opened_at, _dt.timezone.utc).isoformat()}"),
            starts_at=_dt.datetime.fromtimestamp(i.opened_at, _dt.timezone.utc),
            labels=labels, links=dict(self.links))

    def _send(self, i: Incident, kind: str, what: str) -> None:
        """Send ``what`` (``page`` or ``resolve``) to the target named ``kind``."""
        notifier = self.notifiers.get(kind)
        if notifier is None:
            return
        try:
            result = notifier.send_alert(self._alert(i, what == "resolve"))
            ok = bool(getattr(result, "ok", False))
        except Exception:  # a notifier that raises is a failed delivery, retried later
            _log.exception("incident %s: notifier %s raised", i.id, kind)
            ok = False
        if ok:
            self._db.execute("INSERT OR IGNORE INTO deliveries VALUES (?,?,?,?,?)",
                             (i.id, kind, what, i.severity, self.clock()))
        else:
            _log.warning("incident %s: %s delivery to %s failed; retried on the next tick",
                         i.id, what, kind)

    def _escalate(self, i: Incident) -> None:
        paged = self._delivered(i.id, "page")
        due: list[str] = []
        for sev in SEVERITIES[:_rank(i.severity) + 1]:
            due += [k for k in self.routes.get(sev, ()) if k not in due]
        for kind in due:
            for target in self._targets.get(kind, ()):
                if target not in paged:
                    self._send(i, target, "page")
        done = {str(r[0]) for r in self._db.execute(
            "SELECT action FROM actions WHERE incident = ?", (i.id,)).fetchall()}
        for action in self.actions:
            if action.name in done or _rank(i.severity) < _rank(action.min_severity):
                continue
            try:
                action.run(i)
            except Exception:
                _log.exception("incident %s: action %s failed", i.id, action.name)
                continue
            self._db.execute("INSERT OR IGNORE INTO actions VALUES (?,?,?)",
                             (i.id, action.name, self.clock()))

    def _resolve(self, i: Incident, now: float) -> None:
        i.status, i.resolved_at, i.updated_at = "resolved", now, now
        self._save(i)
        self._resolve_messages(i)

    def _resolve_messages(self, i: Incident) -> None:
        resolved = self._delivered(i.id, "resolve")
        for kind in sorted(self._delivered(i.id, "page") - resolved):
            self._send(i, kind, "resolve")


# ---------------------------------------------------------------- the webhook receiver
_MAX_BODY = 1 << 20


def make_server(manager: IncidentManager, host: str = "127.0.0.1", port: int = 9095) -> Any:
    """An HTTP server (not started: call ``serve_forever``) for ``incidents serve``.

    * ``POST /alertmanager``: an Alertmanager webhook payload (point a receiver's
      ``webhook_configs`` url here);
    * ``POST /anomaly``: one anomaly as ``anomaly detect --json`` writes it;
    * ``GET /incidents`` (``?status=open``): the incidents, as JSON;
    * ``GET /healthz``: ``ok``.
    """
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    class Handler(BaseHTTPRequestHandler):
        server_version = "mestres-observability-incidents"

        def log_message(self, format: str, *args: Any) -> None:
            _log.debug("incidents serve: " + format, *args)

        def _reply(self, status: int, body: Any) -> None:
            data = (json.dumps(body) if not isinstance(body, str) else body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if not isinstance(body, str)
                             else "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/healthz":
                self._reply(200, "ok\n")
            elif url.path == "/incidents":
                status = parse_qs(url.query).get("status", [None])[0]
                self._reply(200, [i.as_dict() for i in manager.incidents(status)])
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if not 0 <= length <= _MAX_BODY:
                self._reply(413 if length > _MAX_BODY else 400, {"error": "bad Content-Length"})
                return
            try:
                payload = json.loads(self.rfile.read(length) or b"null")
            except (UnicodeDecodeError, json.JSONDecodeError):
                self._reply(400, {"error": "the body is not JSON"})
                return
            try:
                if path == "/alertmanager" and isinstance(payload, dict):
                    done = manager.handle_alertmanager(payload)
                    self._reply(200, {"incidents": [i.id for i in done]})
                elif path == "/anomaly" and isinstance(payload, dict):
                    p = Point(float(payload["timestamp"]), str(payload["metric"]),
                              float(payload.get("value") or 0.0), float(payload["score"]), True,
                              str(payload.get("severity") or ""), str(payload.get("kind") or ""))
                    self._reply(200, {"incident": manager.handle_anomaly(p).id})
                else:
                    self._reply(404 if path not in ("/alertmanager", "/anomaly") else 400,
                                {"error": "POST an Alertmanager payload to /alertmanager or an "
                                          "anomaly to /anomaly"})
            except (KeyError, TypeError, ValueError) as exc:
                self._reply(400, {"error": f"bad payload: {exc}"})

    return ThreadingHTTPServer((host, port), Handler)
