"""The ``anomaly`` and ``incidents`` command groups of ``mestres-observability``.

* ``anomaly train``: read history from Prometheus, fit one detector per series,
  write a model file;
* ``anomaly detect``: score a time range (with a model, or fitting on the
  history before ``--start``); a table of the anomalies, or ``--json``;
* ``anomaly forecast``: forecast each series a few hours ahead with intervals;
* ``anomaly serve``: keep watching and export scores and forecasts as metrics;
* ``incidents serve``: the incident manager behind an HTTP receiver for
  Alertmanager's webhook (and for ``anomaly serve --incidents``).

Times are RFC 3339 (``2026-01-01T00:00:00Z``), Unix seconds or relative to now
(``-7d``, ``-2h30m``, ``now``); durations are Prometheus-style (``60s``, ``5m``).
The groups are attached to the main command line with ``main.add_command``.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import signal
import threading
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from ..errors import MissingExtraError, ObservabilityError
from .timeparse import parse_duration, parse_time

__all__ = ["anomaly", "incidents"]


# ---------------------------------------------------------------- option parsing
class _Time(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2 only
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Duration(click.ParamType):  # type: ignore[type-arg]
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_NAME_RE = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:.-]*$")
TIME = _Time()
DURATION = _Duration()


def _queries(_ctx: click.Context, _param: click.Parameter,
             value: Sequence[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for item in value:
        name, sep, query = item.partition("=")
        # NAME=PROMQL when what comes before the first '=' is a plain name (PromQL has '='
        # in matchers and '==' as an operator)
        if sep and _NAME_RE.match(name) and not query.startswith("="):
            out.append((name, query.strip()))
        else:
            out.append(("", item.strip()))
        if not out[-1][1]:
            raise click.BadParameter(f"{item!r}: an empty query")
    return out


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--prometheus", required=True, metavar="URL",
                     help="Prometheus' address (http://prometheus:9090)."),
        click.option("--query", "queries", multiple=True, required=True, callback=_queries,
                     metavar="[NAME=]PROMQL", help="A query to watch; repeat for more. NAME "
                     "names its series (default: the metric name)."),
        click.option("--step", type=DURATION, default="60s", show_default=True,
                     help="Seconds between points."),
        click.option("--timeout", type=DURATION, default="30s", show_default=True,
                     help="Timeout of each request to Prometheus."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _params(_ctx: click.Context, _param: click.Parameter, value: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in value:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _detector_option(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--param", "params", multiple=True, callback=_params, metavar="KEY=VALUE",
                     help="A detector parameter (SeasonalParams / ForestParams field), e.g. "
                     "alpha=1e-5; repeat for more.")(f)
    return click.option("--detector", type=click.Choice(["seasonal", "isolation-forest"]),
                        default=None,
                        help="Which detector (default: seasonal; with --model, the model's).")(f)


def _detector_kind(detector: str | None, model: Any, model_path: Path | None) -> str:
    """The detector to use: the model's when there is one (a different --detector is a
    usage error, never silently ignored), else --detector, else ``seasonal``."""
    if model is None:
        return detector or "seasonal"
    if detector is not None and detector != model.kind:
        raise click.UsageError(f"--detector {detector}: the model {model_path} holds {model.kind} "
                               "detectors (leave --detector out to use them, or train another)")
    return str(model.kind)


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fetch(prometheus: str, queries: list[tuple[str, str]], start: float, end: float,
           step: float, timeout: float) -> list[tuple[str, Any]]:
    """(name, series) for every series of every query."""
    from .source import PrometheusSource

    try:
        source = PrometheusSource(prometheus, timeout=timeout)
        out = []
        for name, query in queries:
            for s in source.query_range(query, start, end, step):
                out.append((s.name(name), s))
        return out
    except (ObservabilityError, ValueError) as exc:
        raise _fail(exc) from None


def _make_detector(kind: str, params: dict[str, Any] | None = None) -> Any:
    try:
        if kind == "seasonal":
            from .seasonal import SeasonalDetector, SeasonalParams

            values = dict(params or {})
            if "components" in values:
                values["components"] = tuple(values["components"])
            return SeasonalDetector(SeasonalParams(**values))
        from .forest import ForestParams, IsolationForestDetector

        return IsolationForestDetector(ForestParams(**(params or {})))
    except MissingExtraError as exc:
        raise _fail(exc) from None
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(f"detector parameters {params}: {exc}",
                                 param_hint="'--param'") from None


def _clean(s: Any, until: float | None = None) -> tuple[list[float], list[float]]:
    pairs = [(t, v) for t, v in zip(s.timestamps, s.values, strict=True)
             if not math.isnan(v) and (until is None or t < until)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _fmt(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.4g}"


# ---------------------------------------------------------------- anomaly
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def anomaly() -> None:
    """Anomaly detection and forecasts over Prometheus data (the [anomaly] extra)."""


@anomaly.command()
@_common
@_detector_option
@click.option("--start", type=TIME, default="-7d", show_default=True, help="Start of the history.")
@click.option("--end", type=TIME, default="now", show_default=True, help="End of the history.")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path),
              default="anomaly-model.json", show_default=True, help="Model file to write.")
def train(prometheus: str, queries: list[tuple[str, str]], step: float, timeout: float,
          as_json: bool, detector: str | None, params: dict[str, Any], start: float, end: float,
          model_path: Path) -> None:
    """Fit one detector per series on history and write a model file."""
    from . import model as model_file

    detector = _detector_kind(detector, None, None)

    detectors: dict[str, Any] = {}
    rows = []
    for name, s in _fetch(prometheus, queries, start, end, step, timeout):
        t, v = _clean(s)
        d = _make_detector(detector, params)
        try:
            d.fit(t, v)
        except ValueError as exc:
            raise _fail(ValueError(f"{name}: {exc}")) from None
        detectors[name] = d
        rows.append({"metric": name, "points": len(t), "missing": s.missing,
                     "start": s.timestamps[0], "end": s.timestamps[-1]})
    info = {"prometheus": prometheus, "queries": [f"{n}={q}" if n else q for n, q in queries],
            "step": step, "start": start, "end": end}
    model_file.save(model_file.Model(detector, detectors, info=info), model_path)
    if as_json:
        click.echo(json.dumps({"model": str(model_path), "detector": detector, "series": rows}))
        return
    _table(["metric", "points", "missing", "from", "to"],
           [[r["metric"], r["points"], r["missing"], _iso(r["start"]), _iso(r["end"])] for r in rows])
    click.echo(f"wrote {model_path} ({detector}, {len(rows)} series)")


@anomaly.command()
@_common
@_detector_option
@click.option("--start", type=TIME, default="-1h", show_default=True, help="Start of the scored range.")
@click.option("--end", type=TIME, default="now", show_default=True, help="End of the scored range.")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A model file from `anomaly train` (else: fit on --history before --start).")
@click.option("--history", type=DURATION, default="7d", show_default=True,
              help="Without --model: history read before --start to fit on.")
@click.option("--all", "show_all", is_flag=True, help="The table shows every point, not only anomalies.")
def detect(prometheus: str, queries: list[tuple[str, str]], step: float, timeout: float,
           as_json: bool, detector: str | None, params: dict[str, Any], start: float, end: float,
           model_path: Path | None, history: float, show_all: bool) -> None:
    """Score every point from --start to --end; list the anomalies."""
    from . import model as model_file
    from .detector import run

    model = None
    if model_path is not None:
        try:
            model = model_file.load(model_path)
        except (ObservabilityError, ValueError, OSError) as exc:
            raise _fail(exc) from None
    kind = _detector_kind(detector, model, model_path)
    fetch_from = start if model is not None else start - history
    points = []
    for name, s in _fetch(prometheus, queries, fetch_from, end, step, timeout):
        d = model.detectors.get(name) if model is not None else None
        if d is None:
            d = _make_detector(kind, params)
            t, v = _clean(s, until=start)
            if len(t) == 0:
                raise _fail(ValueError(f"{name}: no history before --start to fit on; "
                                       f"train a model or use a longer --history"))
            try:
                d.fit(t, v)
            except ValueError as exc:
                raise _fail(ValueError(f"{name}: {exc}")) from None
        idx = [i for i, t in enumerate(s.timestamps) if t >= start]
        points += run(d, name, [s.timestamps[i] for i in idx], [s.values[i] for i in idx])
    if as_json:
        click.echo(json.dumps([p.as_dict() for p in points]))
        return
    shown = points if show_all else [p for p in points if p.is_anomaly]
    _table(["timestamp", "metric", "value", "score", "anomaly", "severity", "kind"],
           [[_iso(p.timestamp), p.metric, _fmt(p.value), _fmt(p.score), "yes" if p.is_anomaly else "",
             p.severity, p.kind] for p in shown])
    click.echo(f"{len(points)} points, {sum(p.is_anomaly for p in points)} anomalies")


@anomaly.command()
@_common
@click.option("--start", type=TIME, default="-14d", show_default=True, help="Start of the history.")
@click.option("--end", type=TIME, default="now", show_default=True, help="End of the history.")
@click.option("--horizon", type=DURATION, default="4h", show_default=True, help="How far ahead.")
def forecast(prometheus: str, queries: list[tuple[str, str]], step: float, timeout: float,
             as_json: bool, start: float, end: float, horizon: float) -> None:
    """Forecast each series --horizon ahead, with 80% prediction intervals."""
    try:
        from .forecast import SeasonalForecaster
    except MissingExtraError as exc:
        raise _fail(exc) from None
    steps = max(1, round(horizon / step))
    rows: list[dict[str, Any]] = []
    for name, s in _fetch(prometheus, queries, start, end, step, timeout):
        try:
            f = SeasonalForecaster(step=step, max_horizon=steps).fit(s.timestamps, s.values)
        except ValueError as exc:
            raise _fail(ValueError(f"{name}: {exc}")) from None
        p = f.predict(steps)
        rows += [{"timestamp": t, "metric": name, "forecast": m, "lower": lo, "upper": hi}
                 for t, m, lo, hi in zip(p.timestamps, p.mean, p.lower, p.upper, strict=True)]
    if as_json:
        click.echo(json.dumps(rows))
        return
    _table(["timestamp", "metric", "forecast", "lower", "upper"],
           [[_iso(r["timestamp"]), r["metric"], _fmt(r["forecast"]), _fmt(r["lower"]),
             _fmt(r["upper"])] for r in rows])


def _post_anomaly(url: str) -> Callable[[Any], None]:
    def post(point: Any) -> None:
        body = json.dumps(point.as_dict()).encode()
        request = urllib.request.Request(url.rstrip("/") + "/anomaly", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10):
            pass

    return post


def _until_signalled() -> threading.Event:
    stop = threading.Event()

    def handler(_sig: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


@anomaly.command()
@click.option("--prometheus", required=True, metavar="URL", help="Prometheus' address.")
@click.option("--query", "queries", multiple=True, required=True, callback=_queries,
              metavar="NAME=PROMQL", help="A query to watch; repeat for more.")
@click.option("--port", type=click.IntRange(0, 65535), default=9464, show_default=True,
              help="Port of this process' /metrics.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--interval", type=DURATION, default="60s", show_default=True,
              help="Time between rounds.")
@click.option("--step", type=DURATION, default="60s", show_default=True, help="Seconds between points.")
@click.option("--history", type=DURATION, default="14d", show_default=True,
              help="History read at start (and kept for forecasts).")
@click.option("--horizon", "horizons", type=DURATION, multiple=True, default=("1h", "4h"),
              show_default=True, help="Forecast horizon; repeat for more.")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Detectors from `anomaly train` (series it lacks are fitted at start).")
@_detector_option
@click.option("--incidents", "incidents_url", metavar="URL",
              help="Send every anomaly to `incidents serve` at this address.")
@click.option("--timeout", type=DURATION, default="30s", show_default=True)
def serve(prometheus: str, queries: list[tuple[str, str]], port: int, host: str, interval: float,
          step: float, history: float, horizons: tuple[float, ...], model_path: Path | None,
          detector: str | None, params: dict[str, Any], incidents_url: str | None,
          timeout: float) -> None:
    """Watch the queries; export anomaly_score, anomalies_total and forecasts on --port."""
    from prometheus_client import start_http_server

    from . import model as model_file
    from .serve import AnomalyService, Watch
    from .source import PrometheusSource

    try:
        model = model_file.load(model_path) if model_path is not None else None
        source = PrometheusSource(prometheus, timeout=timeout)
    except (ObservabilityError, ValueError, OSError) as exc:
        raise _fail(exc) from None
    kind = _detector_kind(detector, model, model_path)  # series the model lacks: the same kind
    _make_detector(kind, params)  # a missing extra or a bad parameter fails now
    watches = [Watch(name or query, query) for name, query in queries]
    hooks = [_post_anomaly(incidents_url)] if incidents_url else []
    service = AnomalyService(source, watches, step=step, history=history, horizons=horizons,
                             make_detector=lambda: _make_detector(kind, params), model=model,
                             on_anomaly=hooks)
    server, _thread = start_http_server(port, addr=host, registry=service.registry)
    click.echo(f"anomaly serve: {len(watches)} queries every {interval:g}s; metrics on "
               f"http://{host}:{server.server_port}/metrics", err=True)
    stop = _until_signalled()
    try:
        service.run(interval, stop)
    finally:
        server.shutdown()


# ---------------------------------------------------------------- incidents
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def incidents() -> None:
    """Incident response: de-duplicated, escalated, resolved once."""


def _load_action(spec: str) -> Any:
    from .incidents import Action

    target, _, severity = spec.partition("@")
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise click.BadParameter(f"{spec!r} is not MODULE:FUNCTION[@SEVERITY]")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"{spec!r}: {exc}") from None
    return Action(target, fn, severity or "critical")


def _notifiers(webhooks: Sequence[str], slack: Sequence[str], email_to: Sequence[str] = (),
               email_from: str | None = None, smtp: str | None = None,
               smtp_user: str | None = None, smtp_password_file: Path | None = None,
               smtp_ssl: bool = False, smtp_ca_file: Path | None = None) -> list[Any]:
    """The monitoring package's webhook, Slack and email notifiers (timeouts, retries, no
    secrets logged); bad email settings are a usage error naming the option."""
    from ..monitoring.notifiers import EmailNotifier, SlackNotifier, WebhookNotifier

    found: list[Any] = [*(WebhookNotifier(url) for url in webhooks),
                        *(SlackNotifier(url) for url in slack)]
    if not email_to:
        if smtp or email_from:
            raise click.BadParameter("--smtp and --email-from need --email-to",
                                     param_hint="'--email-to'")
        return found
    if not smtp or not email_from:
        raise click.BadParameter("--email-to needs --smtp HOST[:PORT] and --email-from",
                                 param_hint="'--smtp' / '--email-from'")
    host, _, port_text = smtp.rpartition(":") if ":" in smtp else (smtp, "", "")
    try:
        port = int(port_text) if port_text else (465 if smtp_ssl else 587)
    except ValueError:
        raise click.BadParameter(f"{smtp!r} is not HOST[:PORT]", param_hint="'--smtp'") from None
    password = None
    if smtp_password_file is not None:
        password = smtp_password_file.read_text(encoding="utf-8").strip()
    context = None
    if smtp_ca_file is not None:
        import ssl

        try:
            context = ssl.create_default_context(cafile=str(smtp_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise click.BadParameter(f"{smtp_ca_file}: {exc}",
                                     param_hint="'--smtp-ca-file'") from None
    try:
        found.append(EmailNotifier(host, port, sender=email_from, recipients=list(email_to),
                                   username=smtp_user, password=password,
                                   starttls=not smtp_ssl, use_ssl=smtp_ssl,
                                   ssl_context=context))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--smtp' / '--email-*'") from None
    return found


@incidents.command(name="serve")
@click.option("--port", type=click.IntRange(0, 65535), default=9095, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path),
              default="incidents.sqlite", show_default=True, help="State file (SQLite).")
@click.option("--service", default="service", show_default=True, help="Service of anomaly alerts.")
@click.option("--webhook", multiple=True, metavar="URL", help="Webhook notifier; repeat for more.")
@click.option("--slack-webhook", multiple=True, metavar="URL",
              help="Slack incoming webhook; repeat for more.")
@click.option("--email-to", multiple=True, metavar="ADDRESS",
              help="Email pages to this address (repeat for more); needs --smtp and --email-from.")
@click.option("--email-from", metavar="ADDRESS", help="The From address of email pages.")
@click.option("--smtp", metavar="HOST[:PORT]",
              help="SMTP server (STARTTLS on 587 by default; implicit TLS on 465 with --smtp-ssl).")
@click.option("--smtp-user", metavar="USER", help="Log in to the SMTP server as USER.")
@click.option("--smtp-password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File holding the SMTP password (never given on the command line).")
@click.option("--smtp-ssl", is_flag=True, help="Connect with TLS from the start (port 465).")
@click.option("--smtp-ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CA certificates (PEM) that sign the SMTP server's certificate, when it is "
                   "not signed by one the system trusts.")
@click.option("--cooldown", type=DURATION, default="30m", show_default=True,
              help="After a resolution, the same problem re-opens its incident for this long.")
@click.option("--resolve-after", type=DURATION, default="30m", show_default=True,
              help="An anomaly incident resolves after this long without an anomaly.")
@click.option("--action", "actions", multiple=True, metavar="MODULE:FUNCTION[@SEVERITY]",
              help="A hook called with each incident reaching SEVERITY (default critical), once.")
@click.option("--tick", type=DURATION, default="30s", show_default=True,
              help="How often resolutions and failed deliveries are checked.")
def incidents_serve(port: int, host: str, db_path: Path, service: str, webhook: tuple[str, ...],
                    slack_webhook: tuple[str, ...], email_to: tuple[str, ...],
                    email_from: str | None, smtp: str | None, smtp_user: str | None,
                    smtp_password_file: Path | None, smtp_ssl: bool,
                    smtp_ca_file: Path | None, cooldown: float,
                    resolve_after: float, actions: tuple[str, ...], tick: float) -> None:
    """Receive Alertmanager webhooks (POST /alertmanager) and anomalies (POST /anomaly)."""
    from ..monitoring.notifiers import Alert
    from .incidents import IncidentManager, make_server

    notifiers = _notifiers(webhook, slack_webhook, email_to, email_from, smtp, smtp_user,
                           smtp_password_file, smtp_ssl, smtp_ca_file)
    loaded = [_load_action(a) for a in actions]
    with IncidentManager(db_path, notifiers, service=service, actions=loaded, cooldown=cooldown,
                         resolve_after=resolve_after, alert_factory=Alert) as manager:
        _serve_incidents(manager, make_server(manager, host, port), host, db_path, tick)


def _serve_incidents(manager: Any, server: Any, host: str, db_path: Path, tick: float) -> None:
    stop = _until_signalled()

    def ticker() -> None:
        while not stop.wait(tick):
            try:
                manager.tick()
            except Exception as exc:  # keep receiving
                click.echo(f"incidents serve: tick failed: {exc}", err=True)

    threading.Thread(target=ticker, name="incidents-tick", daemon=True).start()
    threading.Thread(target=server.serve_forever, name="incidents-http", daemon=True).start()
    click.echo(f"incidents serve: http://{host}:{server.server_address[1]}/alertmanager "
               f"(state in {db_path})", err=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
