"""The ``mestres-observability`` command line (also ``python -m mestres_observability``).

Commands:

* ``render --out DIR``: the monitoring stack for one service (rules and their
  tests, Prometheus and Alertmanager configurations, the runbook, and the
  parts of the stack whose renderers are installed: dashboards, log shipping,
  the collector, the compose file). Settings not given as options come from
  the same ``MESTRES_OBS_*`` variables the library reads (namespace, enabled
  features, bucket bounds), so the output matches the service.
* ``check DIR``: ``promtool`` and ``amtool`` on a rendered folder, when they are
  installed, and the static check of every PromQL expression; says what it
  could not check and why. Exit status 1 when a check fails.

More command groups (``anomaly``, ``incidents``) are added with
``main.add_command`` by the modules that provide them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ._version import __version__
from .config import ObservabilityConfig
from .errors import ConfigurationError

__all__ = ["main"]

_TARGET_RE = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$")


def _config(namespace: str | None) -> ObservabilityConfig:
    overrides: dict[str, Any] = {}
    if namespace is not None:
        overrides["namespace"] = namespace
    try:
        return ObservabilityConfig.from_env(**overrides)
    except ConfigurationError as exc:
        raise click.ClickException(f"bad library settings: {exc}") from None


def _targets(_ctx: click.Context, _param: click.Parameter,
             value: Sequence[str]) -> tuple[str, ...]:
    for target in value:
        if not _TARGET_RE.match(target) or not 0 < int(target.rsplit(":", 1)[1]) < 65536:
            raise click.BadParameter(f"{target!r} is not HOST:PORT")
    return tuple(value)


def _slo_latency(_ctx: click.Context, _param: click.Parameter,
                 value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    seconds, sep, percent = value.partition(":")
    try:
        threshold, target = float(seconds), float(percent)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not SECONDS:PERCENT (e.g. 0.25:99)") from None
    if not sep or threshold <= 0 or not 0 < target < 100:
        raise click.BadParameter(f"{value!r}: SECONDS > 0 and 0 < PERCENT < 100 (e.g. 0.25:99)")
    return threshold, target


def _job_max_ages(_ctx: click.Context, _param: click.Parameter,
                  value: Sequence[str]) -> tuple[float | None, tuple[tuple[str, float], ...]]:
    default: float | None = None
    per_job: dict[str, float] = {}
    for item in value:
        name, sep, seconds = item.rpartition("=")
        try:
            limit = float(seconds)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not [JOB=]SECONDS (e.g. 93600 or "
                                     "hourly_sync=5400)") from None
        if not limit > 0 or limit == float("inf") or (sep and not name.strip()):
            raise click.BadParameter(f"{item!r}: SECONDS > 0, and a job name before '='")
        if sep:
            per_job[name.strip()] = limit
        else:
            default = limit
    return default, tuple(per_job.items())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mestres-observability")
def main() -> None:
    """Monitoring as code for services instrumented with mestres-observability."""


@main.command()
@click.option("--out", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write into (created if missing).")
@click.option("--target", "targets", multiple=True, metavar="HOST:PORT", callback=_targets,
              help="An instance of the service to scrape; repeat for each.")
@click.option("--service", help="Service name: job name, alert label. Default: "
              "MESTRES_OBS_SERVICE_NAME / OTEL_SERVICE_NAME, else mestres-cafe-api.")
@click.option("--namespace", help="Metric name prefix. Default: MESTRES_OBS_NAMESPACE.")
@click.option("--slo-availability", type=click.FloatRange(0, 100, min_open=True, max_open=True),
              metavar="PERCENT", help="Availability objective (default 99.9).")
@click.option("--slo-latency", callback=_slo_latency, metavar="SECONDS:PERCENT",
              help="Latency objective: PERCENT of requests under SECONDS, an http_buckets "
              "bound (default 0.25:99).")
@click.option("--pushgateway", "pushgateway", metavar="HOST:PORT",
              callback=lambda ctx, param, value: _targets(ctx, param, (value,))[0]
              if value else None,
              help="The Pushgateway batch jobs push to: scraped with honor_labels, and "
              "PushgatewayDown alerts when it cannot be.")
@click.option("--job-max-age", "job_max_ages", multiple=True, metavar="[JOB=]SECONDS",
              callback=_job_max_ages,
              help="JobNotSucceeded fires when a batch job's last success is older: SECONDS "
              "for every job (default 93600, 26 h), JOB=SECONDS for one; repeat it.")
@click.option("--anomaly-rules", is_flag=True, help="Also render the anomaly-detection rules.")
@click.option("--incidents-url", metavar="URL",
              help="Address of 'mestres-observability incidents serve' "
              "(http://incidents:9095): Alertmanager also sends every alert there.")
def render(out_dir: Path, targets: tuple[str, ...], service: str | None,
           namespace: str | None, slo_availability: float | None,
           slo_latency: tuple[float, float] | None, pushgateway: str | None,
           job_max_ages: tuple[float | None, tuple[tuple[str, float], ...]],
           anomaly_rules: bool, incidents_url: str | None) -> None:
    """Render the monitoring stack into OUT."""
    from .monitoring import rules
    from .monitoring.render import render_all
    from .monitoring.settings import RenderSettings

    config = _config(namespace)
    kwargs: dict[str, Any] = {"config": config, "anomaly_rules": anomaly_rules}
    if targets:
        kwargs["targets"] = targets
    if service is None and config.service_name != "unknown_service":
        service = config.service_name
    if service is not None:
        kwargs["service"] = service
    if slo_availability is not None:
        kwargs["slo_availability"] = slo_availability
    if slo_latency is not None:
        problem = rules.latency_bound_problem(config, slo_latency[0])
        if problem is not None:
            raise click.BadParameter(problem, param_hint="'--slo-latency'")
        kwargs["slo_latency_threshold"], kwargs["slo_latency_target"] = slo_latency
    else:
        default = RenderSettings.slo_latency_threshold
        problem = rules.latency_bound_problem(config, default)
        if problem is not None:
            raise click.UsageError(f"the default latency objective's threshold: {problem}; "
                                   "choose one with --slo-latency SECONDS:PERCENT")
    if pushgateway is not None:
        kwargs["pushgateway_target"] = pushgateway
    default_age, per_job_ages = job_max_ages
    if default_age is not None:
        kwargs["job_max_age_seconds"] = default_age
    if per_job_ages:
        kwargs["job_max_ages"] = per_job_ages
    if incidents_url is not None:
        kwargs["incidents_url"] = incidents_url
    try:
        settings = RenderSettings(**kwargs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        result = render_all(settings, out_dir)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {len(result.written)} files to {out_dir} for {settings.service}"
               + (f" (namespace {config.namespace})" if config.namespace else ""))
    for path in result.written:
        click.echo(f"  {path}")
    for path in result.removed:
        click.echo(f"  removed stale {path}")
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"next: mestres-observability check {out_dir}")


class _Report:
    def __init__(self) -> None:
        self.failed = 0
        self.skipped = 0

    def ok(self, what: str, detail: str = "") -> None:
        click.echo(f"ok       {what}" + (f": {detail}" if detail else ""))

    def fail(self, what: str, detail: str) -> None:
        self.failed += 1
        click.echo(f"FAILED   {what}\n{detail.rstrip()}")

    def skip(self, what: str, why: str) -> None:
        self.skipped += 1
        click.echo(f"skipped  {what}: {why}")


_INSTALL = {
    "promtool": "Debian/Ubuntu package prometheus, or the release archive from "
                "https://prometheus.io/download/",
    "amtool": "Debian/Ubuntu package prometheus-alertmanager, or the release archive from "
              "https://prometheus.io/download/",
}


def _run_tool(report: _Report, what: str, tool: str, args: list[str], files: list[Path]) -> None:
    if not files:
        report.skip(what, "nothing of the kind was rendered")
        return
    binary = shutil.which(tool)
    if binary is None:
        report.skip(what, f"{tool} is not on PATH ({_INSTALL[tool]})")
        return
    try:
        proc = subprocess.run([binary, *args, *map(str, files)], capture_output=True, text=True,
                              timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        report.fail(what, f"could not run {tool}: {exc}")
        return
    if proc.returncode == 0:
        report.ok(what, f"{tool} {' '.join(args)} ({len(files)} file{'s' * (len(files) > 1)})")
    else:
        report.fail(what, proc.stdout + proc.stderr)


def _dashboard_expressions(folder: Path) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            title = node.get("title")
            here = f"{where} / {title}" if isinstance(title, str) else where
            expr = node.get("expr")
            if isinstance(expr, str) and expr.strip():
                out.append((here, expr))
            for value in node.values():
                walk(value, here)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    for path in sorted(folder.glob("*.json")):
        walk(json.loads(path.read_text(encoding="utf-8")), path.name)
    return out


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--namespace", help="The namespace rendered for. Default: MESTRES_OBS_NAMESPACE.")
@click.option("--strict", is_flag=True, help="Also fail when a tool is missing.")
def check(directory: Path, namespace: str | None, strict: bool) -> None:
    """Check a rendered DIRECTORY with promtool, amtool and the static PromQL check."""
    from .monitoring import promql

    report = _Report()
    prom = directory / "prometheus"
    rule_files = sorted((prom / "rules").glob("*.yml"))
    _run_tool(report, "Prometheus configuration", "promtool", ["check", "config"],
              [p for p in [prom / "prometheus.yml"] if p.exists()])
    _run_tool(report, "rule files", "promtool", ["check", "rules"], rule_files)
    _run_tool(report, "rule tests", "promtool", ["test", "rules"],
              sorted((prom / "tests").glob("*.yml")))
    _run_tool(report, "Alertmanager configuration", "amtool", ["check-config"],
              [p for p in [directory / "alertmanager" / "alertmanager.yml"] if p.exists()])
    if rule_files:
        config = _config(namespace)
        texts = {p.relative_to(directory).as_posix(): p.read_text(encoding="utf-8")
                 for p in rule_files}
        dashboards = _dashboard_expressions(directory / "grafana" / "dashboards")
        problems = promql.check_rule_files(texts, config=config, extra_expressions=dashboards)
        what = "metrics and labels of every expression"
        detail = (f"{sum(1 for _ in promql.rule_expressions(texts))} rules, {len(dashboards)} "
                  f"panel queries, namespace {config.namespace or '(none)'}")
        if problems:
            report.fail(what, "\n".join(str(p) for p in problems))
        else:
            report.ok(what, detail)
    else:
        report.skip("metrics and labels of every expression", "no rule files rendered")
    if report.failed or (strict and report.skipped):
        raise SystemExit(1)


def _add_tool_groups() -> None:
    """The anomaly-detection and incident-response groups (their numerical parts load on use)."""
    from .anomaly.cli import anomaly, incidents

    main.add_command(anomaly)
    main.add_command(incidents)


_add_tool_groups()
