"""``alertmanager/alertmanager.yml``: routing by team and severity, grouping, inhibition, receivers.

* **Routing.** One route per team (the ``team`` label of the alerts:
  :attr:`RenderSettings.team` and the teams of ``alert_teams``), and under it
  one per severity: ``page`` goes to ``<team>-page`` (Slack), ``ticket`` to
  ``<team>-ticket`` (email). A page of a team without a route reaches the
  default team's pages; anything else lands on its tickets.
* **Grouping.** By ``alertname``, ``service`` and ``slo``: the instances of one
  alert arrive in one message.
* **Inhibition.** While a ``page`` about an SLO (``slo`` label) fires for a
  service, the ``ticket`` alerts of the same service and SLO stay quiet: the
  slow-burn ticket, HighLatency under a latency page. Tickets about causes
  (PostgresDown, InventoryLow) carry no ``slo`` and stay visible.
* **Incidents.** With :attr:`RenderSettings.incidents_url`, a first route
  (``continue: true``: the team routes still apply) sends every alert and its
  resolution to ``mestres-observability incidents serve`` (receiver
  ``incidents``), which opens, de-duplicates and resolves incidents from them.
* **Secrets.** The Slack webhook URL and the SMTP password are read from files
  (``api_url_file``, ``smtp_auth_password_file``): Alertmanager does not expand
  environment variables in its configuration, and the rendered file holds no
  secret. Mount them from a secret store.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from . import _yaml
from .settings import RenderSettings

__all__ = ["config", "incidents_webhook", "render", "teams"]

_COLOR = ('{{ if eq .Status "firing" }}{{ if eq .CommonLabels.severity "page" }}#FF0000'
          '{{ else }}#FF8C00{{ end }}{{ else }}#2EB886{{ end }}')
_TITLE = ('[{{ .Status | toUpper }}{{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}'
          '{{ end }}] {{ .CommonLabels.alertname }} ({{ .CommonLabels.severity }})')
_TEXT = """{{ range .Alerts -}}
*{{ .Annotations.summary }}*
{{ .Annotations.description }}
Service: {{ .Labels.service }} | Started: {{ .StartsAt.Format "2006-01-02 15:04:05 MST" }}
Runbook: {{ .Annotations.runbook_url }}
{{ end }}"""


def teams(settings: RenderSettings) -> list[str]:
    """Every team an alert may be labelled with, the default one first."""
    out = [settings.team]
    for _group, team in settings.alert_teams:
        if team not in out:
            out.append(team)
    return out


def incidents_webhook(url: str) -> str:
    """Where Alertmanager posts for ``incidents serve`` at ``url``: its ``/alertmanager``
    path, added when ``url`` has no path."""
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return urlunsplit((parts.scheme, parts.netloc, "/alertmanager", parts.query, ""))
    return url


def _slack(settings: RenderSettings) -> dict[str, Any]:
    return {
        "api_url_file": settings.slack_api_url_file,
        "channel": settings.slack_channel,
        "send_resolved": True,
        "color": _COLOR,
        "title": _TITLE,
        "title_link": settings.grafana_url,
        "text": _TEXT,
        "fields": [
            {"title": "Service", "value": "{{ .CommonLabels.service }}", "short": True},
            {"title": "Environment", "value": settings.environment, "short": True},
        ],
        "actions": [
            {"type": "button", "text": "View in Grafana", "url": settings.grafana_url},
            {"type": "button", "text": "View logs", "url": settings.kibana_url},
            {"type": "button", "text": "Runbook",
             "url": "{{ (index .Alerts 0).Annotations.runbook_url }}"},
        ],
    }


def config(settings: RenderSettings) -> dict[str, Any]:
    """The Alertmanager configuration as a mapping."""
    global_: dict[str, Any] = {
        "resolve_timeout": "5m",
        "smtp_smarthost": settings.smtp_smarthost,
        "smtp_from": settings.email_from,
        "smtp_require_tls": True,
    }
    if settings.smtp_auth_username:
        global_["smtp_auth_username"] = settings.smtp_auth_username
        global_["smtp_auth_password_file"] = settings.smtp_auth_password_file
    routes: list[dict[str, Any]] = []
    receivers: list[dict[str, Any]] = []
    for team in teams(settings):
        routes.append({
            "matchers": [f'team="{team}"'],
            "receiver": f"{team}-ticket",
            "routes": [
                {"matchers": ['severity="page"'], "receiver": f"{team}-page"},
                {"matchers": ['severity="ticket"'], "receiver": f"{team}-ticket"},
            ],
        })
        receivers.append({"name": f"{team}-page", "slack_configs": [_slack(settings)]})
        receivers.append({"name": f"{team}-ticket", "email_configs": [
            {"to": settings.email_to, "send_resolved": True}]})
    # a page labelled with a team that has no route still pages (the default team)
    routes.append({"matchers": ['severity="page"'], "receiver": f"{settings.team}-page"})
    if settings.incidents_url:
        # every alert also opens (and resolves) an incident; `continue`: the routes
        # below still pick the team's pager or mailbox
        routes.insert(0, {"receiver": "incidents", "continue": True})
        # ...and since that route matched, the root's receiver no longer catches what no
        # team route takes: a last route does
        routes.append({"receiver": f"{settings.team}-ticket"})
        receivers.append({"name": "incidents", "webhook_configs": [
            {"url": incidents_webhook(settings.incidents_url), "send_resolved": True}]})
    return {
        "global": global_,
        "route": {
            "receiver": f"{settings.team}-ticket",
            "group_by": ["alertname", "service", "slo"],
            "group_wait": settings.alert_group_wait,
            "group_interval": settings.alert_group_interval,
            "repeat_interval": settings.alert_repeat_interval,
            "routes": routes,
        },
        "inhibit_rules": [{
            "source_matchers": ['severity="page"', 'slo=~".+"'],
            "target_matchers": ['severity="ticket"'],
            "equal": ["service", "slo"],
        }],
        "receivers": receivers,
    }


def render(settings: RenderSettings) -> dict[str, str]:
    """``alertmanager/alertmanager.yml``."""
    return {"alertmanager/alertmanager.yml": _yaml.dump(config(settings))}
