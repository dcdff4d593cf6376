"""Incident response: de-duplication, grouping, escalation, cool-down, one resolution,
state across restarts, actions, and the Alertmanager receiver over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mestres_observability.anomaly.detector import Point
from mestres_observability.anomaly.incidents import (
    Action,
    IncidentManager,
    alert_severity,
    make_server,
)
from tests._support import free_port, wait_until
from tests.monitoring import test_notifiers as notifier_fixtures

ROOT = Path(__file__).resolve().parents[1]
smtp_tls = notifier_fixtures.smtp_tls  # a loopback SMTP server with STARTTLS and login (fixture)


class FakeNotifier:
    def __init__(self, kind: str, ok: bool = True) -> None:
        self.kind = kind
        self.ok = ok
        self.sent: list[Any] = []

    def send_alert(self, alert: Any) -> Any:
        self.sent.append(alert)
        return SimpleNamespace(ok=self.ok)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def point(score: float, metric: str = "orders", t: float = 0.0) -> Point:
    sev = "critical" if score > 0.9 else "high" if score > 0.7 else "medium" if score > 0.5 else "low"
    return Point(t, metric, 3.0, score, True, sev, "daily")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[IncidentManager, dict[str, FakeNotifier], Clock]]:
    notifiers = {k: FakeNotifier(k) for k in ("slack", "email", "webhook")}
    clock = Clock()
    with IncidentManager(tmp_path / "state.sqlite", list(notifiers.values()), service="shop",
                         clock=clock, cooldown=600, resolve_after=300) as m:
        yield m, notifiers, clock


@pytest.fixture
def manager() -> Iterator[Callable[[IncidentManager], IncidentManager]]:
    """Closes, at the end of the test, every manager passed through it."""
    opened: list[IncidentManager] = []

    def keep(m: IncidentManager) -> IncidentManager:
        opened.append(m)
        return m

    yield keep
    for m in opened:
        m.close()


def counts(notifiers: dict[str, FakeNotifier]) -> dict[str, int]:
    return {k: len(n.sent) for k, n in notifiers.items()}


def test_an_ongoing_incident_is_paged_once_and_resolved_once(setup: Any) -> None:
    m, notifiers, clock = setup
    first = m.handle_anomaly(point(0.95))
    for _ in range(5):  # the same metric keeps being anomalous: the same incident
        clock.now += 60
        assert m.handle_anomaly(point(0.97)).id == first.id
    assert counts(notifiers) == {"slack": 1, "email": 1, "webhook": 1}
    alert = notifiers["slack"].sent[0]
    assert alert.severity == "critical"
    assert alert.service == "shop"
    assert alert.labels["status"] == "firing"
    assert m.get(first.id).events == 6
    m.tick()  # not quiet long enough yet
    assert m.get(first.id).status == "open"
    clock.now += 301
    m.tick()
    m.tick()
    assert m.get(first.id).status == "resolved"
    assert counts(notifiers) == {"slack": 2, "email": 2, "webhook": 2}  # one resolution each
    assert notifiers["webhook"].sent[-1].name.startswith("RESOLVED")
    assert notifiers["webhook"].sent[-1].labels["status"] == "resolved"


def test_cooldown_reopens_the_same_incident_without_paging_then_a_new_one(setup: Any) -> None:
    m, notifiers, clock = setup
    first = m.handle_anomaly(point(0.95))
    clock.now += 400
    m.tick()
    assert m.get(first.id).status == "resolved"
    clock.now += 100  # within the 600 s cool-down: flapping, the same incident
    again = m.handle_anomaly(point(0.95))
    assert again.id == first.id
    assert again.status == "open"
    assert counts(notifiers) == {"slack": 2, "email": 2, "webhook": 2}  # no second page
    clock.now += 400
    m.tick()
    clock.now += 700
    later = m.handle_anomaly(point(0.95))
    assert later.id != first.id
    assert counts(notifiers)["slack"] == 3  # a new incident is paged


def test_escalation_pages_only_the_new_levels_and_actions_run_once(setup: Any, tmp_path: Path,
                                                                   manager: Any) -> None:
    _, notifiers, clock = setup
    scaled: list[int] = []
    m = manager(IncidentManager(tmp_path / "esc.sqlite", list(notifiers.values()), clock=clock,
                                actions=[Action("autoscale", lambda i: scaled.append(i.id))]))
    i = m.handle_anomaly(point(0.6, metric='orders{product_id="latte"}'))
    assert counts(notifiers) == {"slack": 0, "email": 0, "webhook": 1}
    clock.now += 1
    m.handle_anomaly(point(0.8, metric='orders{product_id="espresso"}'))  # grouped: same metric
    assert counts(notifiers) == {"slack": 1, "email": 0, "webhook": 1}
    assert scaled == []
    clock.now += 1
    m.handle_anomaly(point(0.99))
    m.handle_anomaly(point(0.99))
    assert counts(notifiers) == {"slack": 1, "email": 1, "webhook": 1}
    assert scaled == [i.id]
    assert m.get(i.id).severity == "critical"
    assert m.handle_anomaly(point(0.2, metric="latency")).id != i.id  # another metric
    assert m.deliveries(i.id) == [("webhook", "page", "medium"), ("slack", "page", "high"),
                                  ("email", "page", "critical")]


def test_state_survives_a_restart(setup: Any, tmp_path: Path, manager: Any) -> None:
    m, notifiers, clock = setup
    i = m.handle_anomaly(point(0.95))
    m.close()
    again = manager(IncidentManager(tmp_path / "state.sqlite", list(notifiers.values()),
                                    clock=clock, resolve_after=300))
    assert again.handle_anomaly(point(0.95)).id == i.id
    assert counts(notifiers) == {"slack": 1, "email": 1, "webhook": 1}  # not paged twice
    clock.now += 400
    again.tick()
    assert counts(notifiers) == {"slack": 2, "email": 2, "webhook": 2}


def test_a_failed_delivery_is_retried_on_the_next_tick(tmp_path: Path, manager: Any) -> None:
    flaky = FakeNotifier("webhook", ok=False)
    clock = Clock()
    m = manager(IncidentManager(tmp_path / "s.sqlite", [flaky], clock=clock))
    i = m.handle_anomaly(point(0.6))
    assert len(flaky.sent) == 1
    assert m.deliveries(i.id) == []
    flaky.ok = True
    m.tick()
    m.tick()
    assert len(flaky.sent) == 2
    assert m.deliveries(i.id) == [("webhook", "page", "medium")]


def am_payload(status: str, *alerts: tuple[str, str, str]) -> dict[str, Any]:
    return {"version": "4", "status": status, "receiver": "incidents", "alerts": [
        {"status": st, "labels": {"alertname": name, "service": "shop", "severity": "critical",
                                  "instance": inst},
         "annotations": {"summary": f"{name} on {inst}"}, "startsAt": "2026-01-01T00:00:00Z",
         "fingerprint": f"{name}-{inst}"} for name, inst, st in alerts]}


def test_alertmanager_alerts_group_and_resolve_when_all_are_resolved(setup: Any) -> None:
    m, notifiers, _ = setup
    (i,) = m.handle_alertmanager(am_payload("firing", ("HighErrorRate", "a", "firing"),
                                            ("HighErrorRate", "b", "firing")))
    assert i.alerts == {"HighErrorRate-a": "firing", "HighErrorRate-b": "firing"}
    m.handle_alertmanager(am_payload("firing", ("HighErrorRate", "a", "firing")))  # repeat
    assert counts(notifiers) == {"slack": 1, "email": 1, "webhook": 1}
    (i,) = m.handle_alertmanager(am_payload("resolved", ("HighErrorRate", "a", "resolved")))
    assert i.status == "open"
    (i,) = m.handle_alertmanager(am_payload("resolved", ("HighErrorRate", "b", "resolved")))
    assert i.status == "resolved"
    assert counts(notifiers) == {"slack": 2, "email": 2, "webhook": 2}
    assert m.handle_alertmanager(am_payload("resolved", ("HighErrorRate", "b", "resolved"))) == []
    assert alert_severity("warning") == "medium"
    assert alert_severity("page") == "critical"
    with pytest.raises(ValueError, match="no 'alerts' list"):
        m.handle_alertmanager({"status": "firing"})


# ---------------------------------------------------------------- over HTTP
class Receiver:
    """A local HTTP server that records what notifiers POST to it."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers["Content-Length"])
                outer.bodies.append(json.loads(self.rfile.read(n)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def post(url: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_receiver_takes_alertmanager_webhooks_and_anomalies(tmp_path: Path, receiver: Receiver) -> None:
    from mestres_observability.monitoring.notifiers import Alert, WebhookNotifier

    m = IncidentManager(tmp_path / "s.sqlite", [WebhookNotifier(receiver.url)],
                        alert_factory=Alert)
    server = make_server(m, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        status, body = post(base + "/alertmanager", am_payload("firing", ("Down", "x", "firing")))
        assert status == 200
        assert len(body["incidents"]) == 1
        assert receiver.bodies[0]["alert"]["name"] == "Down"
        assert receiver.bodies[0]["alert"]["severity"] == "critical"
        status, body = post(base + "/anomaly", point(0.8).as_dict())
        assert status == 200
        assert post(base + "/alertmanager", b"{not json")[0] == 400
        assert post(base + "/alertmanager", {"nope": 1})[0] == 400
        assert post(base + "/elsewhere", {})[0] == 404
        with urllib.request.urlopen(base + "/incidents?status=open", timeout=5) as r:
            listed = json.loads(r.read())
        assert {i["source"] for i in listed} == {"alertmanager", "anomaly"}
    finally:
        server.shutdown()
        server.server_close()
        m.close()


def start_incidents_serve(db: Path, webhook: str,
                          *more: str) -> tuple[subprocess.Popen[bytes], str]:
    """``mestres-observability incidents serve`` in a subprocess, once it answers."""
    code = "from mestres_observability.anomaly.cli import incidents; incidents()"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--port", str(port),
                             "--db", str(db), "--webhook", webhook, *more],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            return bool(r.status == 200)

    try:
        wait_until(up, timeout=30, message="incidents serve")
    except BaseException:
        proc.kill()
        proc.communicate(timeout=10)
        raise
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_incidents_serve_command_pages_once_across_a_restart(tmp_path: Path,
                                                             receiver: Receiver) -> None:
    db = tmp_path / "incidents.sqlite"

    def start() -> tuple[subprocess.Popen[bytes], str]:
        return start_incidents_serve(db, receiver.url)

    proc, url = start()
    assert post(url + "/alertmanager", am_payload("firing", ("Down", "x", "firing")))[0] == 200
    stop(proc)
    proc, url = start()  # the same alert still firing after a restart: not paged again
    assert post(url + "/alertmanager", am_payload("firing", ("Down", "x", "firing")))[0] == 200
    assert post(url + "/alertmanager", am_payload("resolved", ("Down", "x", "resolved")))[0] == 200
    stop(proc)
    # the monitoring package's WebhookNotifier: {"version": "1", "alert": {...}}
    assert [b["alert"]["labels"]["status"] for b in receiver.bodies] == ["firing", "resolved"]


def test_every_notifier_of_a_kind_is_paged_and_resolved(tmp_path: Path, manager: Any) -> None:
    first, second, slack = FakeNotifier("webhook"), FakeNotifier("webhook"), FakeNotifier("slack")
    clock = Clock()
    m = manager(IncidentManager(tmp_path / "s.sqlite", [first, second, slack], clock=clock,
                                resolve_after=300))
    assert sorted(m.notifiers) == ["slack", "webhook", "webhook#2"]
    m.handle_anomaly(point(0.8))  # high: slack and every webhook
    m.handle_anomaly(point(0.8))  # the same incident: nobody paged again
    assert [len(n.sent) for n in (first, second, slack)] == [1, 1, 1]
    clock.now += 600
    m.tick()
    assert [len(n.sent) for n in (first, second, slack)] == [2, 2, 2]
    assert all(n.sent[-1].name.startswith("RESOLVED") for n in (first, second, slack))
    # after a restart the same targets are known by the same names: nothing is sent again
    again = manager(IncidentManager(tmp_path / "s.sqlite", [FakeNotifier("webhook"),
                                                             FakeNotifier("webhook")], clock=clock))
    again.tick()
    assert [len(n.sent) for n in again.notifiers.values()] == [0, 0]


def test_incidents_serve_pages_by_email_and_every_webhook(tmp_path: Path, receiver: Receiver,
                                                          smtp_tls: Any) -> None:
    controller, box, cert = smtp_tls
    password = tmp_path / "smtp-password"
    password.write_text("s3cret-pw\n")
    proc, url = start_incidents_serve(
        tmp_path / "incidents.sqlite", receiver.url, "--webhook", receiver.url + "?second",
        "--email-to", "oncall@shop.example", "--email-from", "alerts@shop.example",
        "--smtp", f"127.0.0.1:{controller.port}", "--smtp-user", "alerts",
        "--smtp-password-file", str(password), "--smtp-ca-file", str(cert))
    try:
        assert post(url + "/alertmanager", am_payload("firing", ("Down", "x", "firing")))[0] == 200
        assert post(url + "/alertmanager",
                    am_payload("resolved", ("Down", "x", "resolved")))[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert [b["alert"]["labels"]["status"] for b in receiver.bodies] == [
        "firing", "firing", "resolved", "resolved"]
    assert [m["to"] for m in box.messages] == [["oncall@shop.example"]] * 2
    assert all(m["tls"] and m["authenticated"] for m in box.messages)
    assert "RESOLVED" in box.messages[1]["content"].decode()
    assert b"s3cret-pw" not in err


def test_incidents_serve_runs_an_action_once_per_incident(tmp_path: Path, receiver: Receiver,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ran = tmp_path / "actions.jsonl"
    monkeypatch.setenv("MO_TEST_ACTION_FILE", str(ran))
    proc, url = start_incidents_serve(tmp_path / "incidents.sqlite", receiver.url,
                                      "--action", "tests.incident_action:record@critical")
    try:
        for _ in range(3):  # the same alert, firing again and again: one incident, one action
            assert post(url + "/alertmanager",
                        am_payload("firing", ("Down", "x", "firing")))[0] == 200
        assert post(url + "/anomaly", point(0.6).as_dict())[0] == 200  # medium: no action
    finally:
        stop(proc)
    (line,) = ran.read_text().splitlines()
    assert json.loads(line)["severity"] == "critical"


def test_anomaly_serve_incidents_hook_opens_an_incident(tmp_path: Path, manager: Any) -> None:
    """``anomaly serve --incidents URL`` posts each anomaly as ``detect --json`` writes it."""
    from mestres_observability.anomaly.cli import _post_anomaly

    hook = FakeNotifier("webhook")
    m = manager(IncidentManager(tmp_path / "s.sqlite", [hook]))
    server = make_server(m, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        send = _post_anomaly(f"http://127.0.0.1:{server.server_address[1]}/")
        send(point(0.8, metric="requests"))
        send(point(0.8, metric="requests"))  # the same ongoing anomaly
    finally:
        server.shutdown()
        server.server_close()
    (incident,) = m.incidents("open")
    assert incident.source == "anomaly"
    assert incident.events == 2
    assert len(hook.sent) == 1


def test_incidents_serve_email_options_are_checked() -> None:
    from click.testing import CliRunner

    from mestres_observability.anomaly.cli import incidents

    for args, says in ((["--email-to", "a@b.c"], "--smtp"),
                       (["--smtp", "h:25", "--email-from", "a@b.c"], "--email-to"),
                       (["--email-to", "a@b.c", "--email-from", "x@y.z", "--smtp", "h:port"],
                        "HOST[:PORT]"),
                       (["--email-to", "nobody", "--email-from", "x@y.z", "--smtp", "h"],
                        "email address")):
        result = CliRunner().invoke(incidents, ["serve", "--port", "0", *args])
        assert result.exit_code == 2, (args, result.output)
        assert says in result.output, (args, result.output)


def test_a_real_alertmanager_rendered_with_incidents_url_opens_an_incident(
        tmp_path: Path, receiver: Receiver) -> None:
    from tests.monitoring._tools import alertmanager, http_json, render

    proc, url = start_incidents_serve(tmp_path / "incidents.sqlite", receiver.url)
    try:
        secret = tmp_path / "slack-url"
        secret.write_text("http://127.0.0.1:9/never-called\n")
        out = render(tmp_path / "out", incidents_url=url, slack_api_url_file=str(secret),
                     alert_group_wait="1s")
        with alertmanager(out / "alertmanager" / "alertmanager.yml") as base:
            http_json(f"{base}/api/v2/alerts", [{
                "labels": {"alertname": "PostgresDown", "severity": "page", "team": "backend",
                           "service": "mestres-cafe-api"},
                "annotations": {"summary": "PostgreSQL is down"}}])

            def opened() -> list[Any]:
                with urllib.request.urlopen(url + "/incidents?status=open", timeout=5) as r:
                    found: list[Any] = json.loads(r.read())
                return found

            wait_until(lambda: bool(opened()), timeout=15,
                       message="an incident opened from Alertmanager's webhook")
            (incident,) = opened()
            assert incident["source"] == "alertmanager"
            assert incident["title"] == "PostgreSQL is down"  # the alert's summary
            assert incident["severity"] == "critical"  # severity=page
            wait_until(lambda: bool(receiver.bodies), timeout=10, message="the page")
            assert receiver.bodies[0]["alert"]["name"] == "PostgresDown"
    finally:
        stop(proc)
