"""Prometheus recording and alerting rules, generated from the catalogue and the settings.

:func:`build` returns the rule groups for one service: each rule knows its
expression, and each alert also carries what the rest of the output needs —
the cases that prove it (a series that fires it, one that does not, and for
the paging alerts one that shows the low-traffic guard: turned into
``promtool test rules`` files by :mod:`~mestres_observability.monitoring.rule_tests`),
the text of its runbook section (:mod:`~mestres_observability.monitoring.runbook`)
and the expression that must return data on a live service (the end-to-end
test). :func:`render` writes ``prometheus/rules/<group>.yml``.

Labels of every alert:

* ``severity``: ``page`` (a person acts now: user-visible symptoms, or an
  outage that will be one within minutes) or ``ticket`` (someone looks
  within a working day). The seed's ``critical`` is ``page``, its ``warning``
  is ``ticket``.
* ``team`` (:attr:`RenderSettings.team`, per group through ``alert_teams``)
  and ``service``: routing in Alertmanager.
* ``slo`` (``availability`` or ``latency``) on the alerts about one SLO's
  symptom: a page inhibits the tickets of the same service and SLO.

Every application series is selected with ``job="<service>"`` (the scrape job
is named after the service), every exporter series with its exporter's job,
so the rules of several services can share one Prometheus. A metric whose
feature is off under the settings (``system_metrics=False``) has no rule.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .. import catalogue
from ..config import ObservabilityConfig
from . import _yaml
from .settings import RenderSettings

__all__ = [
    "SLO_WINDOWS",
    "Alert",
    "Case",
    "Recording",
    "RecordingCase",
    "RuleGroup",
    "Series",
    "alerts",
    "build",
    "expand_template",
    "go_float",
    "latency_bound_problem",
    "render",
    "rule_file_paths",
    "rum_entries",
]

#: The windows of the SLO recording rules (multi-window, multi-burn-rate alerts).
SLO_WINDOWS: tuple[str, ...] = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")

#: Burn-rate alerts: (alert suffix, severity, for, ((factor, long window, short window), ...)).
#: Google's SRE workbook, as Sloth generates them: 2% of a 30-day budget in 1 h
#: (14.4x) or 5% in 6 h (6x) pages; 10% in 1 d (3x) or 10% in 3 d (1x) opens a ticket.
BURN_RATES: tuple[tuple[str, str, str, tuple[tuple[float, str, str], ...]], ...] = (
    ("FastBurn", "page", "2m", ((14.4, "1h", "5m"), (6.0, "6h", "30m"))),
    ("SlowBurn", "ticket", "15m", ((3.0, "1d", "2h"), (1.0, "3d", "6h"))),
)

#: Web-vitals thresholds (web-vitals ``src/on*.ts``: good <=, poor >): LCP, INP, FCP
#: and TTFB in seconds, CLS unitless.
WEB_VITALS: Mapping[str, tuple[float, float]] = {
    "lcp": (2.5, 4.0), "inp": (0.2, 0.5), "cls": (0.1, 0.25), "fcp": (1.8, 3.0),
    "ttfb": (0.8, 1.8),
}


# ---------------------------------------------------------------- model
@dataclass(frozen=True)
class Series:
    """One input series of a promtool test: a selector and promtool's value notation."""

    selector: str
    values: str


@dataclass(frozen=True)
class Case:
    """One promtool case of an alert: input series and what the alert does on them.

    Attributes:
        name: what the case shows ("5% of requests fail").
        series: the input series (1-minute interval).
        eval_time: when to look (``"20m"``), after the alert's ``for``.
        fires: whether the alert fires then.
        labels: the labels of the firing alert that come from the expression.
        value: the expression's value then (``$value`` in the annotations).
    """

    name: str
    series: tuple[Series, ...]
    eval_time: str
    fires: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    value: float = 0.0


@dataclass(frozen=True)
class RecordingCase:
    """One promtool ``promql_expr_test`` of a recording rule.

    Attributes:
        name: what it shows.
        series: the input series (1-minute interval).
        eval_time: when to evaluate.
        samples: expected (labels, value) of the recorded series.
    """

    name: str
    series: tuple[Series, ...]
    eval_time: str
    samples: tuple[tuple[Mapping[str, str], float], ...]


@dataclass(frozen=True)
class Recording:
    """A recording rule.

    Attributes:
        record: the recorded series' name (``level:metric:operations``).
        expr: its PromQL.
        labels: static labels added to the result.
        uses: catalogue base names it reads (it exists only when their features are on).
        help: one line for the docs.
    """

    record: str
    expr: str
    labels: Mapping[str, str] = field(default_factory=dict)
    uses: tuple[str, ...] = ()
    help: str = ""

    def to_rule(self) -> dict[str, object]:
        """The rule as it goes into a rule file."""
        rule: dict[str, object] = {"record": self.record, "expr": self.expr}
        if self.labels:
            rule["labels"] = dict(self.labels)
        return rule


@dataclass(frozen=True)
class Alert:
    """An alerting rule with its proof and its runbook section.

    Attributes:
        name: the alert name (``HighErrorRate``); also its runbook anchor, lower-cased.
        expr: its PromQL.
        for_: how long the expression must hold (``"5m"``).
        severity: ``page`` or ``ticket``.
        summary: one line (annotation ``summary``), may use ``$labels``.
        description: the annotation ``description``; may use ``$labels`` and
            ``$value`` through the template forms :func:`expand_template` knows.
        meaning: runbook: what the alert means for users.
        checks: runbook: first things to look at, in order.
        tuning: runbook: how to tune it (setting, threshold, window).
        cases: the promtool cases (at least one firing, one silent).
        probe: an expression that returns data on a live, healthy service (the
            quantity the alert compares); ``""`` with :attr:`probe_note` saying why not.
        probe_note: why :attr:`probe` may return nothing on a short healthy run.
        slo: ``availability`` or ``latency`` for the alerts about that SLO, else ``""``.
        uses: catalogue base names it reads.
        labels: the alert's static labels (filled by :func:`build`).
        annotations: its annotations (filled by :func:`build`).
    """

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    meaning: str
    checks: tuple[str, ...]
    tuning: str
    cases: tuple[Case, ...]
    probe: str = ""
    probe_note: str = ""
    slo: str = ""
    uses: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_rule(self) -> dict[str, object]:
        """The rule as it goes into a rule file."""
        return {"alert": self.name, "expr": self.expr, "for": self.for_,
                "labels": dict(self.labels), "annotations": dict(self.annotations)}


@dataclass(frozen=True)
class RuleGroup:
    """One rule group, written to ``prometheus/rules/<key>.yml``.

    Attributes:
        key: short name (``http``); the file name and the test file name.
        name: the group name in Prometheus (``<service>-<key>``).
        title: heading in the runbook.
        recordings: its recording rules.
        alerts: its alerts.
        needs: keys of the groups whose recorded series it reads.
        recording_cases: promtool cases of the recording rules.
        test_evaluation_interval: how often promtool evaluates the rules in the
            group's test file (coarse for the 3-day windows: promtool's cost grows
            with steps times window length).
    """

    key: str
    name: str
    title: str
    recordings: tuple[Recording, ...] = ()
    alerts: tuple[Alert, ...] = ()
    needs: tuple[str, ...] = ()
    recording_cases: tuple[RecordingCase, ...] = ()
    test_evaluation_interval: str = "1m"

    @property
    def path(self) -> str:
        """Relative output path of the rule file."""
        return f"prometheus/rules/{self.key}.yml"

    def to_yaml(self) -> str:
        """The rule file."""
        rules = [r.to_rule() for r in self.recordings] + [a.to_rule() for a in self.alerts]
        return _yaml.dump({"groups": [{"name": self.name, "rules": rules}]})


# ---------------------------------------------------------------- helpers
def go_float(value: float) -> str:
    """``value`` as prometheus_client writes a bucket bound (Go's formatting): ``le="0.25"``."""
    if value == math.inf:
        return "+Inf"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def _num(value: float) -> str:
    """A number for PromQL or a label, without float noise (``0.001``, not ``0.0010000000000000009``)."""
    return f"{value:.10g}"


def _q(value: str) -> str:
    """A PromQL double-quoted string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def latency_bound_problem(config: ObservabilityConfig, threshold: float) -> str | None:
    """Why ``threshold`` cannot be the latency SLO's threshold, or ``None`` when it can.

    The latency SLI counts requests in the bucket ``le=threshold``: exact only
    when the threshold is one of the ``http_buckets`` bounds.
    """
    bounds = sorted(config.http_buckets)
    if any(math.isclose(b, threshold, rel_tol=1e-12, abs_tol=0.0) for b in bounds):
        return None
    below = [b for b in bounds if b < threshold]
    above = [b for b in bounds if b > threshold]
    near = [go_float(x) for x in (below[-1:] + above[:1])]
    return (f"{go_float(threshold)} s is not a bound of the http_buckets histogram, so the share "
            f"of requests under it cannot be read exactly; nearest bounds: {' and '.join(near)} "
            f"(or add it to MESTRES_OBS_HTTP_BUCKETS)")


def _bound(config: ObservabilityConfig, threshold: float) -> float:
    for b in config.http_buckets:
        if math.isclose(b, threshold, rel_tol=1e-12, abs_tol=0.0):
            return b
    raise ValueError(latency_bound_problem(config, threshold))


# -- Prometheus' template functions, as far as the annotations use them (tests need the text)
def _go_g(value: float) -> str:
    return f"{value:.4g}"


def _humanize(value: float) -> str:
    if value == 0 or math.isnan(value) or math.isinf(value):
        return _go_g(value)
    if abs(value) >= 1:
        prefix = ""
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(value) < 1000:
                break
            prefix = p
            value /= 1000
        return _go_g(value) + prefix
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(value) >= 1:
            break
        prefix = p
        value *= 1000
    return _go_g(value) + prefix


def _humanize_duration(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return _go_g(value)
    if value == 0:
        return _go_g(value) + "s"
    if abs(value) >= 1:
        sign = "-" if value < 0 else ""
        value = abs(value)
        whole = int(value)
        seconds, minutes = whole % 60, (whole // 60) % 60
        hours, days = (whole // 3600) % 24, whole // 86400
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{_go_g(value)}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(value) >= 1:
            break
        prefix = p
        value *= 1000
    return f"{_go_g(value)}{prefix}s"


_FILTERS = {
    "humanize": _humanize,
    "humanizePercentage": lambda v: _go_g(v * 100) + "%",
    "humanizeDuration": _humanize_duration,
}
_TEMPLATE_RE = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def expand_template(template: str, labels: Mapping[str, str], value: float) -> str:
    """Expand an annotation the way Prometheus does, for the forms the rules use:
    ``{{ $labels.name }}``, ``{{ $value | humanize }}``, ``| humanizePercentage``,
    ``| humanizeDuration``.

    Raises:
        ValueError: any other template form (so the rules cannot drift from the tests).
    """

    def one(m: re.Match[str]) -> str:
        body = m.group(1)
        if body.startswith("$labels."):
            return labels.get(body[8:], "")
        head, _, func = (part.strip() for part in body.partition("|"))
        if head == "$value" and func in _FILTERS:
            return _FILTERS[func](value)
        raise ValueError(f"template form {m.group(0)!r} is not supported by expand_template")

    return _TEMPLATE_RE.sub(one, template)


# ---------------------------------------------------------------- the rules
@dataclass(frozen=True)
class _Names:
    """Exposed names and selectors of one rendering."""

    s: RenderSettings

    @property
    def config(self) -> ObservabilityConfig:
        return self.s.config

    def m(self, base: str) -> str:
        return self.s.metric(base)

    def fam(self, base: str) -> str:
        return catalogue.lookup(base).family_name(self.config.namespace)

    @property
    def job(self) -> str:
        return f"job={_q(self.s.service)}"

    def sel(self, base: str, *matchers: str, suffix: str = "") -> str:
        name = self.m(base) if not suffix else self.fam(base) + suffix
        return name + "{" + ",".join((self.job, *matchers)) + "}"

    def job_labels(self, **more: str) -> dict[str, str]:
        return {"job": self.s.service, **more}

    def series(self, base: str, values: str, suffix: str = "", **labels: str) -> Series:
        name = self.m(base) if not suffix else self.fam(base) + suffix
        inner = ",".join(f"{k}={_q(v)}" for k, v in {"job": self.s.service, "instance": "app:8000",
                                                      **labels}.items())
        return Series(name + "{" + inner + "}", values)

    def up(self, values: str, instance: str = "app:8000") -> Series:
        return Series(f"up{{job={_q(self.s.service)},instance={_q(instance)}}}", values)

    def histogram(self, base: str, per_minute: float, bucket: int, minutes: int,
                  **labels: str) -> tuple[Series, ...]:
        """Series of a histogram whose observations (``per_minute``) all fall in
        bucket number ``bucket`` of its bounds (``len(bounds)``: the ``+Inf`` one)."""
        entry = catalogue.lookup(base)
        bounds = [*sorted(getattr(self.config, entry.buckets or "http_buckets")), math.inf]
        out = []
        for i, b in enumerate(bounds):
            values = f"0+{_num(per_minute)}x{minutes}" if i >= bucket else f"0x{minutes}"
            out.append(self.series(base, values, "_bucket", le=go_float(b), **labels))
        out.append(self.series(base, f"0+{_num(per_minute)}x{minutes}", "_count", **labels))
        out.append(self.series(base, f"0+{_num(per_minute * 0.1)}x{minutes}", "_sum", **labels))
        return tuple(out)


def _quantile_in_bucket(q: float, lower: float, upper: float) -> float:
    """histogram_quantile's result when every observation is in (lower, upper] (count 1.0)."""
    return lower + (upper - lower) * ((q * 1.0 - 0.0) / (1.0 - 0.0))


def _bucket_above(bounds: Sequence[float], threshold: float, q: float) -> tuple[int, float]:
    """A bucket (index into ``bounds``; ``len(bounds)``: ``+Inf``) whose observations all
    make the ``q``-quantile exceed ``threshold``, and that quantile."""
    for i in range(1, len(bounds)):
        if bounds[i - 1] >= threshold:
            return i, _quantile_in_bucket(q, bounds[i - 1], bounds[i])
    if bounds[-1] > threshold:
        return len(bounds), bounds[-1]  # histogram_quantile answers the last finite bound
    raise ValueError(f"threshold {threshold} is not below the last bucket bound {bounds[-1]}: "
                     "no observation can exceed it")


def _requests(n: _Names, ok_per_min: float, err_per_min: float, minutes: int,
              endpoint: str = "/orders") -> tuple[Series, ...]:
    out = [n.series("http_requests_total", f"0+{_num(ok_per_min)}x{minutes}", method="GET",
                    endpoint=endpoint, status="200")]
    if err_per_min:
        out.append(n.series("http_requests_total", f"0+{_num(err_per_min)}x{minutes}",
                            method="GET", endpoint=endpoint, status="500"))
    return tuple(out)


def _recording_group(n: _Names) -> RuleGroup:
    req, dur, orders = n.fam("http_requests_total"), n.m("http_request_duration_seconds"), \
        n.fam("orders_total")
    all_req = n.sel("http_requests_total")
    err_req = n.sel("http_requests_total", 'status=~"5.."')
    bucket = n.sel("http_request_duration_seconds", suffix="_bucket")
    recs: list[Recording] = [
        Recording(f"job:{req}:rate5m", f"sum by (job) (rate({all_req}[5m]))",
                  uses=("http_requests_total",), help="requests per second"),
        Recording(f"job_endpoint:{req}:rate5m", f"sum by (job, endpoint) (rate({all_req}[5m]))",
                  uses=("http_requests_total",), help="requests per second, per route"),
    ]
    for level, by in (("job", "job"), ("job_endpoint", "job, endpoint")):
        recs.append(Recording(
            f"{level}:{req}_errors:ratio_rate5m",
            f"(\n  sum by ({by}) (rate({err_req}[5m]))\n  or\n"
            f"  0 * sum by ({by}) (rate({all_req}[5m]))\n)\n"
            f"/\nsum by ({by}) (rate({all_req}[5m]))",
            uses=("http_requests_total",),
            help="share of 5xx responses" + (", per route" if "endpoint" in by else "")))
    for q in ("0.5", "0.95", "0.99"):
        recs.append(Recording(
            f"job_endpoint:{dur}:histogram_quantile_rate5m",
            f"histogram_quantile({q}, sum by (job, endpoint, le) (rate({bucket}[5m])))",
            labels={"quantile": q}, uses=("http_request_duration_seconds",),
            help=f"p{q[2:].ljust(2, '0')} latency per route"))
    recs.append(Recording(
        f"job:{orders}:increase1h", f"sum by (job) (increase({n.sel('orders_total')}[1h]))",
        uses=("orders_total",), help="orders in the last hour (a count, not a per-second rate)"))

    bounds = sorted(n.config.http_buckets)
    mid = len(bounds) // 2
    lower, upper = bounds[mid - 1], bounds[mid]
    job = n.job_labels()
    cases = (
        RecordingCase(
            "45 requests a minute answered 200 and 15 answered 500 on /orders, none failed "
            "on /products: 1 request/s, 25% errors, 0% on /products",
            (*_requests(n, 45, 15, 60), *_requests(n, 60, 0, 60, endpoint="/products")),
            "30m",
            ()),
        RecordingCase(
            f"every request took between {go_float(lower)} and {go_float(upper)} s",
            n.histogram("http_request_duration_seconds", 60, mid, 60, method="GET",
                        endpoint="/orders", status="200"),
            "30m", ()),
        RecordingCase(
            "one order a minute for two hours: 60 orders per hour (the seed's rate(...[1h]) "
            "would say 0.0167)",
            (n.series("orders_total", "0+1x120", status="paid"),), "90m", ()),
    )
    # expected samples, next to the rules they test
    expected: dict[int, list[tuple[str, Mapping[str, str], float]]] = {
        0: [(f"job:{req}:rate5m", job, 2.0),
            (f"job_endpoint:{req}:rate5m", {**job, "endpoint": "/orders"}, 1.0),
            (f"job_endpoint:{req}:rate5m", {**job, "endpoint": "/products"}, 1.0),
            (f"job:{req}_errors:ratio_rate5m", job, 0.125),
            (f"job_endpoint:{req}_errors:ratio_rate5m", {**job, "endpoint": "/orders"}, 0.25),
            (f"job_endpoint:{req}_errors:ratio_rate5m", {**job, "endpoint": "/products"}, 0.0)],
        1: [(f"job_endpoint:{dur}:histogram_quantile_rate5m",
             {**job, "endpoint": "/orders", "quantile": q},
             _quantile_in_bucket(float(q), lower, upper)) for q in ("0.5", "0.95", "0.99")],
        2: [(f"job:{orders}:increase1h", job, 60.0)],
    }
    built = tuple(
        RecordingCase(c.name, c.series, c.eval_time,
                      tuple(({"__name__": rec, **labels}, value)
                            for rec, labels, value in expected[i]))
        for i, c in enumerate(cases))
    return RuleGroup("recording", f"{n.s.service}-recording", "Recording rules",
                     recordings=tuple(recs), recording_cases=built)


def _slo_budget(n: _Names, slo: str) -> float:
    target = n.s.slo_availability if slo == "availability" else n.s.slo_latency_target
    return float(_num((100.0 - target) / 100.0))


def _slo_recording_group(n: _Names) -> RuleGroup:
    all_req = n.sel("http_requests_total")
    err_req = n.sel("http_requests_total", 'status=~"5.."')
    count = n.sel("http_request_duration_seconds", suffix="_count")
    bound = go_float(_bound(n.config, n.s.slo_latency_threshold))
    fast = n.sel("http_request_duration_seconds", f"le={_q(bound)}", suffix="_bucket")
    recs: list[Recording] = []
    for w in SLO_WINDOWS:
        recs += [
            Recording(f"slo:sli_error:ratio_rate{w}",
                      f"(\n  sum by (job) (rate({err_req}[{w}]))\n  or\n"
                      f"  0 * sum by (job) (rate({all_req}[{w}]))\n)\n"
                      f"/\nsum by (job) (rate({all_req}[{w}]))",
                      {"slo": "availability"}, ("http_requests_total",),
                      f"share of 5xx responses over {w}"),
            Recording(f"slo:sli_requests:rate{w}", f"sum by (job) (rate({all_req}[{w}]))",
                      {"slo": "availability"}, ("http_requests_total",),
                      f"requests per second over {w}"),
            Recording(f"slo:sli_error:ratio_rate{w}",
                      f"(\n  sum by (job) (rate({count}[{w}]))\n  -\n"
                      f"  sum by (job) (rate({fast}[{w}]))\n)\n"
                      f"/\nsum by (job) (rate({count}[{w}]))",
                      {"slo": "latency"}, ("http_request_duration_seconds",),
                      f"share of requests slower than {bound} s over {w}"),
            Recording(f"slo:sli_requests:rate{w}", f"sum by (job) (rate({count}[{w}]))",
                      {"slo": "latency"}, ("http_request_duration_seconds",),
                      f"requests per second over {w} (latency SLI)"),
        ]
    for slo, target in (("availability", n.s.slo_availability),
                        ("latency", n.s.slo_latency_target)):
        recs.append(Recording("slo:objective:ratio", f"vector({_num(target / 100.0)})",
                              {"job": n.s.service, "slo": slo}, (), f"the {slo} objective"))
    # 3 days of steady traffic, so that every window holds only real samples; read at 72 h,
    # when promtool (evaluating hourly) has just evaluated the rules
    minutes = 3 * 24 * 60 + 10
    series = (*_requests(n, 45, 15, minutes),
              n.series("http_request_duration_seconds", f"0+60x{minutes}", "_count",
                       method="GET", endpoint="/orders", status="200"),
              n.series("http_request_duration_seconds", f"0+45x{minutes}", "_bucket",
                       method="GET", endpoint="/orders", status="200", le=bound))
    job = n.job_labels()
    samples: list[tuple[Mapping[str, str], float]] = []
    for w in SLO_WINDOWS:
        for slo in ("availability", "latency"):
            samples.append(({"__name__": f"slo:sli_error:ratio_rate{w}", **job, "slo": slo}, 0.25))
            samples.append(({"__name__": f"slo:sli_requests:rate{w}", **job, "slo": slo}, 1.0))
    case = RecordingCase(
        f"a quarter of the requests fail and a quarter are slower than {bound} s, for 3 days: "
        "every window reads 25% at 1 request/s",
        series, "72h", tuple(samples))
    return RuleGroup("slo-recording", f"{n.s.service}-slo-recording", "SLO recording rules",
                     recordings=tuple(recs), recording_cases=(case,),
                     test_evaluation_interval="1h")


def _burn_alerts(n: _Names) -> list[Alert]:
    out: list[Alert] = []
    bound = go_float(_bound(n.config, n.s.slo_latency_threshold))
    guard = _num(n.s.min_page_request_rate)
    for slo in ("availability", "latency"):
        budget = _slo_budget(n, slo)
        objective = (f"{_num(n.s.slo_availability)}% of requests answered without a 5xx"
                     if slo == "availability" else
                     f"{_num(n.s.slo_latency_target)}% of requests faster than {bound} s")
        uses = ("http_requests_total",) if slo == "availability" else \
            ("http_request_duration_seconds",)
        sel = f'{{job={_q(n.s.service)},slo="{slo}"}}'
        for suffix, severity, for_, pairs in BURN_RATES:
            branches = []
            for factor, long_w, short_w in pairs:
                limit = f"({_num(factor)} * {_num(budget)})"
                lines = [f"slo:sli_error:ratio_rate{long_w}{sel} > {limit}",
                         f"and slo:sli_error:ratio_rate{short_w}{sel} > {limit}"]
                if severity == "page":
                    lines.append(f"and slo:sli_requests:rate{long_w}{sel} >= {guard}")
                branches.append("(\n" + "\n".join("  " + line for line in lines) + "\n)")
            expr = "\nor\n".join(branches)
            name = f"{slo.capitalize()}Budget{suffix}"
            rates = " or ".join(f"{_num(f)}x over {lw} and {sw}" for f, lw, sw in pairs)
            out.append(Alert(
                name=name, expr=expr, for_=for_, severity=severity, slo=slo, uses=uses,
                summary=f"{{{{ $labels.job }}}} is burning its {slo} error budget "
                        f"{'fast' if severity == 'page' else 'slowly'}",
                description=(f"{{{{ $value | humanizePercentage }}}} of requests to "
                             f"{{{{ $labels.job }}}} missed the {slo} SLO ({objective}) over "
                             f"the alert's long window: the 30-day error budget burns at "
                             f"{rates} its sustainable rate, or faster."),
                meaning=(f"The {slo} SLO ({objective}, over 30 days) is being spent "
                         + ("fast enough to exhaust the budget in about two days (14.4x "
                            "over 1 h, confirmed over 5 m) or five days (6x over 6 h, "
                            "confirmed over 30 m): users are affected now."
                            if severity == "page" else
                            "at a rate that exhausts it before the 30 days are over (3x "
                            "over 1 d and 2 h, or 1x over 3 d and 6 h): no emergency, but "
                            "the budget will not last.")),
                checks=(
                    ("Which routes fail: the Technical dashboard's error-ratio panel, or "
                     f"`job_endpoint:{n.fam('http_requests_total')}_errors:ratio_rate5m`."
                     if slo == "availability" else
                     "Which routes are slow: the Technical dashboard's p99 per route, or "
                     f"`job_endpoint:{n.m('http_request_duration_seconds')}"
                     ":histogram_quantile_rate5m`."),
                    "Whether it started with a deploy, a dependency (health checks, "
                    "database connections) or a traffic change.",
                    "The traces of failing or slow requests: exemplars on the latency "
                    "panels, or the logs' `trace_id` in Kibana.",
                ),
                tuning=(f"The objective is `--slo-{'availability' if slo == 'availability' else 'latency'}` "
                        f"({'percent' if slo == 'availability' else 'threshold:percent'}); the "
                        "burn factors and windows are the SRE workbook's and should stay. "
                        + (f"Pages need at least {guard} requests/s over the long window "
                           "(`min_page_request_rate`): below it the slow-burn ticket still "
                           "opens." if severity == "page" else
                           "Tickets have no traffic guard: over a day even a quiet service "
                           "has enough requests.")),
                cases=_burn_cases(n, slo, severity, budget, bound),
                probe=f"slo:sli_error:ratio_rate1h{sel}",
            ))
    return out


def _burn_cases(n: _Names, slo: str, severity: str, budget: float,
                bound: str) -> tuple[Case, ...]:
    labels = n.job_labels(slo=slo)

    def traffic(per_min: float, bad_share: float, minutes: int) -> tuple[Series, ...]:
        bad = per_min * bad_share
        if slo == "availability":
            return _requests(n, per_min - bad, bad, minutes)
        common = {"method": "GET", "endpoint": "/orders", "status": "200"}
        return (n.series("http_request_duration_seconds", f"0+{_num(per_min)}x{minutes}",
                         "_count", **common),
                n.series("http_request_duration_seconds", f"0+{_num(per_min - bad)}x{minutes}",
                         "_bucket", le=bound, **common))

    what = "fail" if slo == "availability" else f"are slower than {bound} s"
    if severity == "page":
        fast = 20 * budget  # above 14.4x
        slow = 5 * budget   # between 3x and 6x: a ticket, not a page
        return (
            Case(f"{_num(fast * 100)}% of 600 requests a minute {what} for 70 minutes "
                 "(20x the budget)", traffic(600, fast, 80), "70m", True, labels, fast),
            Case(f"{_num(slow * 100)}% {what} (5x the budget): the slow-burn ticket, no page",
                 traffic(600, slow, 80), "70m", False),
            Case(f"low-traffic guard: 4 requests a minute, a quarter of them {what}: no page",
                 traffic(4, 0.25, 80), "70m", False),
        )
    slow = 5 * budget
    return (
        Case(f"{_num(slow * 100)}% of 600 requests a minute {what} for 40 minutes (5x the budget)",
             traffic(600, slow, 60), "40m", True, labels, slow),
        Case(f"low-traffic guard does not apply to tickets: 4 requests a minute, a quarter "
             f"{what}", traffic(4, 0.25, 60), "40m", True, labels, 0.25),
        Case(f"{_num(budget * 50)}% {what} (half the budget)",
             traffic(600, budget / 2, 60), "40m", False),
    )


def _slo_group(n: _Names) -> RuleGroup:
    return RuleGroup("slo", f"{n.s.service}-slo", "SLO burn-rate alerts",
                     alerts=tuple(_burn_alerts(n)), needs=("slo-recording",))


def _http_group(n: _Names) -> RuleGroup:
    all_req = n.sel("http_requests_total")
    err_req = n.sel("http_requests_total", 'status=~"5.."')
    bucket = n.sel("http_request_duration_seconds", suffix="_bucket")
    count = n.sel("http_request_duration_seconds", suffix="_count")
    guard = _num(n.s.min_page_request_rate)
    ratio = _num(n.s.error_ratio_threshold)
    p99 = n.s.latency_p99_threshold
    bounds = sorted(n.config.http_buckets)
    if not bounds[0] < p99:
        raise ValueError(f"latency_p99_threshold {p99} must be above the first http_buckets "
                         f"bound ({bounds[0]})")
    try:
        slow_bucket, slow_value = _bucket_above(bounds, p99, 0.99)
    except ValueError:
        raise ValueError(f"latency_p99_threshold {p99} must be below the last http_buckets "
                         f"bound ({bounds[-1]}): no p99 can exceed it") from None
    slow_lower = bounds[slow_bucket - 1]
    slow_upper = bounds[slow_bucket] if slow_bucket < len(bounds) else math.inf
    up = f"up{{{n.job}}}"
    hist = {"method": "GET", "endpoint": "/orders", "status": "200"}
    alerts_ = (
        Alert(
            "HighErrorRate",
            f"(\n  sum by (job) (rate({err_req}[5m]))\n  /\n  sum by (job) (rate({all_req}[5m]))\n)"
            f" > {ratio}\nand\nsum by (job) (rate({all_req}[5m])) >= {guard}",
            "5m", "page",
            "{{ $labels.job }} answers more than " + _num(n.s.error_ratio_threshold * 100)
            + "% of requests with a 5xx",
            "{{ $value | humanizePercentage }} of requests to {{ $labels.job }} failed with a "
            f"5xx over the last 5 minutes (threshold {_num(n.s.error_ratio_threshold * 100)}%).",
            "A share of requests, not a count: the seed compared an absolute rate of 5xx "
            "(0.1 per second), which pages a busy service for a normal background of errors "
            "and never a quiet one that fails every request. Users see errors now.",
            ("The Technical dashboard: which routes fail (error ratio per route), since when.",
             "The logs of the failing requests (`status_code >= 500` in Kibana): the "
             "exception and its `trace_id`.",
             "Recent deploys, and the dependencies: health checks, database connections, "
             "Redis."),
            f"`error_ratio_threshold` ({ratio}); the 5-minute window and `for: 5m` make it "
            f"react within ten minutes. Below {guard} requests/s (`min_page_request_rate`) it "
            "stays silent: a handful of requests cannot page (the availability SLO's "
            "slow-burn ticket still catches a persistent problem).",
            (Case("10% of 60 requests a minute fail", _requests(n, 54, 6, 20), "15m", True,
                  n.job_labels(), 0.1),
             Case("1 request in 60 fails (below the threshold)", _requests(n, 59, 1, 20),
                  "15m", False),
             Case("low-traffic guard: half of 4 requests a minute fail", _requests(n, 2, 2, 20),
                  "15m", False)),
            probe=f"sum by (job) (rate({all_req}[5m]))", slo="availability",
            uses=("http_requests_total",)),
        Alert(
            "HighLatency",
            f"histogram_quantile(0.99, sum by (job, endpoint, le) (rate({bucket}[5m]))) > "
            f"{_num(p99)}\nand on (job, endpoint)\n"
            f"sum by (job, endpoint) (rate({count}[5m])) >= {guard}",
            "10m", "ticket",
            "Route {{ $labels.endpoint }} of {{ $labels.job }} is slow",
            "The 99th percentile of {{ $labels.endpoint }} is {{ $value | humanizeDuration }} "
            f"over the last 5 minutes (threshold {_num(p99)} s).",
            "One route's slowest requests take longer than the threshold. The latency SLO "
            "alerts say whether the service as a whole is out of its objective; this one "
            "says which route.",
            ("The route's latency panel on the Technical dashboard; click an exemplar to "
             "open a slow trace in Jaeger.",
             "The slow trace's spans: database, external calls, lock waits.",
             "Requests in progress and CPU: is the service saturated?"),
            f"`latency_p99_threshold` ({_num(p99)} s); routes with fewer than {guard} "
            "requests/s are not judged.",
            (Case(f"every request to /orders takes between {go_float(slow_lower)} and "
                  f"{go_float(slow_upper)} s",
                  n.histogram("http_request_duration_seconds", 60, slow_bucket, 30, **hist),
                  "20m", True, n.job_labels(endpoint="/orders"), slow_value),
             Case(f"every request is faster than {go_float(bounds[0])} s",
                  n.histogram("http_request_duration_seconds", 60, 0, 30, **hist),
                  "20m", False),
             Case("low-traffic guard: 2 slow requests a minute",
                  n.histogram("http_request_duration_seconds", 2, slow_bucket, 30, **hist),
                  "20m", False)),
            probe=f"histogram_quantile(0.99, sum by (job, endpoint, le) (rate({bucket}[5m])))",
            slo="latency", uses=("http_request_duration_seconds",)),
        Alert(
            "ServiceDown", f"max by (job) ({up}) == 0", "2m", "page",
            "No instance of {{ $labels.job }} can be scraped",
            "Prometheus has reached none of the targets of {{ $labels.job }} for 2 minutes: "
            "the service is down or unreachable, and its error-ratio alerts are blind.",
            "Every target of the service fails its scrape. With no metrics the error-ratio "
            "and burn-rate alerts see nothing, so this one pages for them.",
            ("Prometheus' Targets page: the scrape error (connection refused, timeout, 401).",
             "The service's processes or pods, and its liveness probe (`/health/liveness`).",
             "Network and DNS between Prometheus and the service."),
            "`for` (2m). The targets come from `--target`; a retired instance left in the list "
            "fires TargetDown, not this.",
            (Case("the only target is down", (n.up("0x20"),), "10m", True, n.job_labels(), 0.0),
             Case("one target of two is down (TargetDown's case)",
                  (n.up("0x20"), n.up("1x20", "app:8001")), "10m", False)),
            probe=up, slo="availability"),
        Alert(
            "TargetDown", f"{up} == 0", "5m", "ticket",
            "Target {{ $labels.instance }} of {{ $labels.job }} cannot be scraped",
            "Prometheus has failed to scrape {{ $labels.instance }} for 5 minutes.",
            "One instance cannot be scraped: it is down, restarting in a loop, or its "
            "`/metrics` fails (a wrong token gives 401). The others still serve.",
            ("Prometheus' Targets page for the error.", "That instance's logs and restarts.",
             "Whether the instance was retired but is still listed in the targets."),
            "`for` (5m); remove retired instances from `--target`.",
            (Case("the target is down", (n.up("0x20"),), "10m", True,
                  n.job_labels(instance="app:8000"), 0.0),
             Case("the target is up", (n.up("1x20"),), "10m", False)),
            probe=up),
    )
    return RuleGroup("http", f"{n.s.service}-http", "HTTP alerts", alerts=alerts_)


def _business_group(n: _Names) -> RuleGroup:
    orders = n.sel("orders_total")
    inv = n.sel("inventory_level")
    low = n.s.min_orders_per_hour
    stock = n.s.inventory_low_threshold
    up = f"up{{{n.job}}}"
    alerts_ = (
        Alert(
            "LowOrderVolume",
            f"(\n  sum by (job) (increase({orders}[1h]))\n  or on (job)\n"
            f"  0 * group by (job) ({up} == 1)\n) < {_num(low)}",
            "30m", "ticket",
            "Few orders at {{ $labels.job }}",
            "{{ $value | humanize }} orders in the last hour (threshold "
            f"{_num(low)} per hour).",
            "Fewer orders than expected in the last hour, counted with increase(...[1h]): "
            "the seed's rate(orders_total[1h]) < 0.1 read a per-second rate as orders per "
            "hour. A service that is up but has recorded no order at all counts as zero "
            "(the seed's rule stayed silent then).",
            ("The Business overview: orders per hour against the same hour last week.",
             "Checkout errors: HighErrorRate, `order_errors_total` by error type, "
             "payment outcomes.",
             "Whether the storefront or a payment provider is down (RUM JS errors, "
             "payments by status)."),
            f"`min_orders_per_hour` ({_num(low)}); a shop that is quiet at night needs a "
            "time-of-day threshold or a comparison with `offset 1w`.",
            (Case("no order recorded at all while the service is up", (n.up("1x120"),), "60m",
                  True, n.job_labels(), 0.0),
             Case("the order counter stands still", (n.up("1x120"),
                  n.series("orders_total", "12x120", status="paid")), "90m", True,
                  n.job_labels(), 0.0),
             Case("two orders a minute", (n.up("1x120"),
                  n.series("orders_total", "0+2x120", status="paid")), "90m", False),
             Case("the service is down: TargetDown's case, not this one", (n.up("0x120"),),
                  "90m", False)),
            probe=f"sum by (job) (increase({orders}[1h])) or on (job) "
                  f"0 * group by (job) ({up} == 1)",
            uses=("orders_total",)),
        Alert(
            "InventoryLow", f"min by (job, product_id) ({inv}) < {_num(stock)}", "5m", "ticket",
            "Low inventory for product {{ $labels.product_id }}",
            "Only {{ $value | humanize }} units of {{ $labels.product_id }} left (threshold "
            f"{_num(stock)}).",
            "A product's stock, as last set by `set_inventory_level`, is below the "
            "threshold: it will sell out.",
            ("The product's inventory movements (`inventory_movements_total`): a run on it, "
             "or a missed restock?", "Purchasing's restock schedule."),
            f"`inventory_low_threshold` ({_num(stock)} units), one value for every product.",
            (Case("3 espressos left", (n.series("inventory_level", "3x20",
                                                product_id="espresso"),), "10m", True,
                  n.job_labels(product_id="espresso"), 3.0),
             Case("50 espressos left", (n.series("inventory_level", "50x20",
                                                 product_id="espresso"),), "10m", False)),
            probe=f"min by (job, product_id) ({inv})", uses=("inventory_level",)),
    )
    return RuleGroup("business", f"{n.s.service}-business", "Business alerts", alerts=alerts_)


def _infrastructure_group(n: _Names) -> RuleGroup:
    from .exporters import by_job

    pg_job = f'job={_q(by_job("postgres-exporter").job)}'
    redis_job = f'job={_q(by_job("redis-exporter").job)}'
    mem = n.s.memory_threshold_percent
    disk = n.s.disk_threshold_percent
    conns = n.s.db_connections_threshold
    pg_labels = {"job": "postgres-exporter", "instance": "postgres-exporter:9187"}

    def pg(name: str, values: str, **labels: str) -> Series:
        inner = ",".join(f"{k}={_q(v)}" for k, v in {**pg_labels, **labels}.items())
        return Series(f"{name}{{{inner}}}", values)

    def activity(active: int, idle: int) -> tuple[Series, ...]:
        server = {"server": "db:5432", "datname": "shop"}
        return (pg("pg_stat_activity_count", f"{active}x20", state="active", **server),
                pg("pg_stat_activity_count", f"{idle}x20", state="idle", **server),
                pg("pg_settings_max_connections", "100x20", server="db:5432"))

    redis_series = {"job": "redis-exporter", "instance": "redis-exporter:9121"}
    redis_sel = "redis_up{" + ",".join(f"{k}={_q(v)}" for k, v in redis_series.items()) + "}"
    alerts_: list[Alert] = [
        Alert(
            "HighMemoryUsage", f"max by (job, instance) ({n.sel('memory_usage_percent')}) > "
            f"{_num(mem)}", "5m", "ticket",
            "High memory usage on {{ $labels.instance }}",
            "Memory in use is {{ $value | humanize }}% of the limit on {{ $labels.instance }} "
            f"(threshold {_num(mem)}%).",
            "The container's working set (or the host's used memory) is close to its limit: "
            "the kernel's OOM killer ends the service when it gets there. Read from "
            "`memory_usage_percent`, which the library exports (the seed's rule read a "
            "percentage its own code never exported).",
            ("The memory panel of the Technical dashboard: a steady climb (a leak) or a "
             "step (a deploy, a traffic change)?", "Per-worker resident memory "
             "(`process_resident_memory_bytes` by `pid`).",
             "The container's limit against the number of workers."),
            f"`memory_threshold_percent` ({_num(mem)}).",
            (Case("92% for 10 minutes", (n.series("memory_usage_percent", "92x20"),), "10m",
                  True, n.job_labels(instance="app:8000"), 92.0),
             Case("60%", (n.series("memory_usage_percent", "60x20"),), "10m", False)),
            probe=f"max by (job, instance) ({n.sel('memory_usage_percent')})",
            uses=("memory_usage_percent",)),
        Alert(
            "HighDiskUsage", f"max by (job, instance, mountpoint) ({n.sel('disk_usage_percent')})"
            f" > {_num(disk)}", "15m", "ticket",
            "Disk {{ $labels.mountpoint }} of {{ $labels.instance }} is filling up",
            "{{ $labels.mountpoint }} is {{ $value | humanize }}% full on {{ $labels.instance }}"
            f" (threshold {_num(disk)}%).",
            "A configured mount point (`system_mountpoints`) is nearly full; writes (logs, "
            "uploads, temporary files) will fail.",
            ("What grows: logs without rotation, temporary files, the multiprocess metrics "
             "directory.", "Free space, then find the cause."),
            f"`disk_threshold_percent` ({_num(disk)}); the mount points are the "
            "`system_mountpoints` setting.",
            (Case("95% full", (n.series("disk_usage_percent", "95x30", mountpoint="/"),),
                  "20m", True, n.job_labels(instance="app:8000", mountpoint="/"), 95.0),
             Case("40% full", (n.series("disk_usage_percent", "40x30", mountpoint="/"),),
                  "20m", False)),
            probe=f"max by (job, instance, mountpoint) ({n.sel('disk_usage_percent')})",
            uses=("disk_usage_percent",)),
        Alert(
            "DatabaseConnectionsHigh",
            f"sum by (job, instance) (pg_stat_activity_count{{{pg_job}}})\n/ on (job, instance)\n"
            f"max by (job, instance) (pg_settings_max_connections{{{pg_job}}})\n> {_num(conns)}",
            "2m", "page",
            "PostgreSQL {{ $labels.instance }} is running out of connections",
            "{{ $value | humanizePercentage }} of max_connections are in use on "
            f"{{{{ $labels.instance }}}} (threshold {_num(conns * 100)}%).",
            "Connections to PostgreSQL (every state, from `pg_stat_activity`) approach "
            "`max_connections`; past it new connections are refused and requests fail. "
            "The seed compared the application's own `active_connections` gauge with an "
            "absolute 80, which knows nothing of the server's limit; this reads the "
            "PostgreSQL exporter.",
            ("`pg_stat_activity_count` by `state` and `datname`: idle connections "
             "(pools too large, leaks) or active ones (slow queries)?",
             "Each service's pool size times its number of workers: gunicorn workers each "
             "open their own pool.", "Long transactions and locks in `pg_stat_activity`."),
            f"`db_connections_threshold` ({_num(conns)} of `max_connections`).",
            (Case("90 of 100 connections in use", activity(85, 5), "10m", True,
                  {"job": "postgres-exporter", "instance": "postgres-exporter:9187"}, 0.9),
             Case("10 of 100 in use", activity(4, 6), "10m", False)),
            probe=f"sum by (job, instance) (pg_stat_activity_count{{{pg_job}}})\n"
                  f"/ on (job, instance)\n"
                  f"max by (job, instance) (pg_settings_max_connections{{{pg_job}}})"),
        Alert(
            "PostgresDown", f"pg_up{{{pg_job}}} == 0", "2m", "ticket",
            "The PostgreSQL exporter cannot reach its database",
            "pg_up is 0 on {{ $labels.instance }}: the exporter has not reached PostgreSQL "
            "for 2 minutes.",
            "The PostgreSQL exporter cannot connect to the database. If the service needs "
            "it, HighErrorRate and the SLO alerts page for the users' side; this names the "
            "cause.",
            ("The database's own logs and host.", "The exporter's DATA_SOURCE_NAME and "
             "credentials."),
            "`for` (2m).",
            (Case("the exporter cannot connect", (pg("pg_up", "0x20"),), "10m", True,
                  pg_labels, 0.0),
             Case("connected", (pg("pg_up", "1x20"),), "10m", False)),
            probe=f"pg_up{{{pg_job}}}"),
        Alert(
            "RedisDown", f"redis_up{{{redis_job}}} == 0", "2m", "ticket",
            "The Redis exporter cannot reach Redis",
            "redis_up is 0 on {{ $labels.instance }}: the exporter has not reached Redis for "
            "2 minutes.",
            "The Redis exporter cannot connect to Redis. Caches and queues on it fail or "
            "fall back; the user-facing alerts say whether users notice.",
            ("Redis' logs, memory (`maxmemory`) and host.", "The exporter's address."),
            "`for` (2m).",
            (Case("the exporter cannot connect", (Series(redis_sel, "0x20"),), "10m", True,
                  redis_series, 0.0),
             Case("connected", (Series(redis_sel, "1x20"),), "10m", False)),
            probe=f"redis_up{{{redis_job}}}"),
    ]
    return RuleGroup("infrastructure", f"{n.s.service}-infrastructure", "Infrastructure alerts",
                     alerts=tuple(alerts_))


def _health_group(n: _Names) -> RuleGroup:
    status = n.sel("health_check_status")
    alert = Alert(
        "HealthCheckFailing", f"{status} == 0", "5m", "ticket",
        "Health check {{ $labels.check }} fails on {{ $labels.instance }}",
        "Health check {{ $labels.check }} has failed on {{ $labels.instance }} for 5 minutes.",
        "A registered health check (`@health_check`) fails: a dependency is down or slow. "
        "Critical checks also take the instance out of readiness.",
        ("`/health/detailed` on that instance: the check's error and duration.",
         "The dependency itself (database, Redis, payment gateway).",
         "`health_check_duration_seconds`: a check that times out reads as failing."),
        "`for` (5m); the check's own `timeout` and `critical` flag are set where it is "
        "registered.",
        (Case("inventory_db fails", (n.series("health_check_status", "0x20",
                                              check="inventory_db"),), "10m", True,
              n.job_labels(instance="app:8000", check="inventory_db"), 0.0),
         Case("inventory_db passes", (n.series("health_check_status", "1x20",
                                               check="inventory_db"),), "10m", False)),
        probe=status, probe_note="", uses=("health_check_status",))
    return RuleGroup("health", f"{n.s.service}-health", "Health-check alerts", alerts=(alert,))


def _self_group(n: _Names) -> RuleGroup:
    errors = n.sel("mestres_observability_errors_total")
    overflow = n.sel("mestres_observability_label_overflow_total")
    spans = n.sel("mestres_observability_spans_dropped_total")
    note = "the counter has a series only once something was counted"
    alerts_ = (
        Alert(
            "ObservabilityFaults",
            f"sum by (job, instance, component) (increase({errors}[15m])) > 0", "0m", "ticket",
            "mestres-observability caught faults in {{ $labels.component }}",
            "{{ $value | humanize }} faults of the instrumentation's {{ $labels.component }} "
            "component on {{ $labels.instance }} in the last 15 minutes; the service was not "
            "affected.",
            "The library caught an exception in its own code (a collector, an exporter, a "
            "decorator) and kept the service running; some telemetry is missing.",
            ("The service's log: the first fault of each kind is logged with its traceback "
             "(`mestres_observability` logger).", "The library's version and the component."),
            "No threshold: any fault is worth a ticket. Silence it for a known issue in "
            "Alertmanager.",
            (Case("a fault a minute in the tracing component",
                  (n.series("mestres_observability_errors_total", "0+1x30",
                            component="tracing"),), "20m", True,
                  n.job_labels(instance="app:8000", component="tracing"), 15.0),
             Case("no new fault", (n.series("mestres_observability_errors_total", "3x30",
                                            component="tracing"),), "20m", False)),
            probe=f"sum by (job, instance, component) (increase({errors}[15m]))",
            probe_note=note, uses=("mestres_observability_errors_total",)),
        Alert(
            "LabelOverflow",
            f"sum by (job, metric) (increase({overflow}[1h])) > 0", "0m", "ticket",
            "Metric {{ $labels.metric }} overflows its label limit",
            "{{ $value | humanize }} label sets of {{ $labels.metric }} were folded into "
            "<overflow> in the last hour.",
            "The cardinality guard folded new label values of one metric into `<overflow>`: "
            "a data-derived label (route, product id) has more values than "
            "`max_label_values`, so the metric has lost detail.",
            ("Which label grows: `count by (label) (metric)`.", "A route template missing "
             "(raw paths as labels), or ids used as labels."),
            "Raise the metric's limit with `label_limits` (`products_sold_total=5000`) when "
            "the values are legitimate.",
            (Case("label sets folded every minute",
                  (n.series("mestres_observability_label_overflow_total", "0+1x90",
                            metric="products_sold_total"),), "80m", True,
                  n.job_labels(metric="products_sold_total"), 60.0),
             Case("nothing folded", (n.series("mestres_observability_label_overflow_total",
                                             "5x90", metric="products_sold_total"),),
                  "80m", False)),
            probe=f"sum by (job, metric) (increase({overflow}[1h]))", probe_note=note,
            uses=("mestres_observability_label_overflow_total",)),
        Alert(
            "SpansDropped", f"sum by (job, instance) (increase({spans}[15m])) > 0", "0m",
            "ticket",
            "{{ $labels.instance }} drops spans",
            "{{ $value | humanize }} spans were dropped on {{ $labels.instance }} in the last "
            "15 minutes (queue full, exporter failure or shutdown).",
            "Ended spans were never exported: traces are incomplete.",
            ("Whether the collector or Jaeger is reachable (the OTLP endpoint).",
             "The span queue (`span_queue_size`) against the traffic; sampling."),
            "`span_queue_size`, `traces_sampler`; the collector's tail sampling takes "
            "volume off the service.",
            (Case("a span dropped every minute", (n.series(
                "mestres_observability_spans_dropped_total", "0+1x30"),), "20m", True,
                n.job_labels(instance="app:8000"), 15.0),
             Case("none dropped", (n.series("mestres_observability_spans_dropped_total",
                                            "0x30"),), "20m", False)),
            probe=f"sum by (job, instance) (increase({spans}[15m]))", probe_note=note,
            uses=("mestres_observability_spans_dropped_total",)),
    )
    return RuleGroup("self", f"{n.s.service}-self", "The instrumentation's own alerts",
                     alerts=alerts_)


def _batch_job_series(name: str, job: str, values: str, route: str,
                      instance: str = "cron-1") -> Series:
    """A batch-job series as Prometheus stores it, by the route it took there:
    ``pushgateway``, ``textfile`` or ``service:<scrape job>``."""
    if route == "pushgateway":  # honor_labels: the push's own job and instance
        labels = {"job": job, "instance": instance}
    elif route == "textfile":  # node-exporter's target labels win: job -> exported_job
        labels = {"job": "node-exporter", "instance": "node-exporter:9100", "exported_job": job}
    else:  # the service's own /metrics (a scheduler process): its job wins too
        labels = {"job": route.removeprefix("service:"), "instance": "app:8000",
                  "exported_job": job}
    inner = ",".join(f"{k}={_q(v)}" for k, v in labels.items())
    return Series(f"{name}{{{inner}}}", values)


def _jobs_group(n: _Names) -> RuleGroup:
    """Batch jobs: a job that has not succeeded in time, a job whose last run failed.

    The ``job`` label of the ``job_*`` series is the *batch job's* name, not the
    service's scrape job: pushed to the Pushgateway (scraped with
    ``honor_labels: true``) it stays ``job``; written for node-exporter's
    textfile collector, or exposed by a long-running process on the service's
    ``/metrics``, Prometheus renames it ``exported_job`` because the target's
    ``job`` wins. The recording rules put the name back into ``job`` for both
    routes (``label_replace`` from ``exported_job`` when there is one) and keep
    the newest timestamp per job, whichever instance or route reported it; the
    alerts read those. These series are therefore not selected with the
    service's ``job=`` matcher: every batch job whose series reach this
    Prometheus is covered (load one rendering's jobs rules per Prometheus).
    """
    s = n.s
    ok, bad = n.m("job_last_success_timestamp_seconds"), n.m("job_last_failure_timestamp_seconds")
    rec_ok, rec_bad = f"job:{ok}:max", f"job:{bad}:max"

    def normalised(metric: str) -> str:
        return f'max by (job) (label_replace({metric}, "job", "$1", "exported_job", "(.+)"))'

    recs = (
        Recording(rec_ok, normalised(ok), uses=("job_last_success_timestamp_seconds",),
                  help="when each batch job last succeeded (Unix time), by the job's name, "
                  "from the Pushgateway, node-exporter's textfile collector or the service"),
        Recording(rec_bad, normalised(bad), uses=("job_last_failure_timestamp_seconds",),
                  help="when each batch job last failed (Unix time), by the job's name"),
    )
    series = (_batch_job_series(ok, "inventory_sync", "100x10", "pushgateway"),
              _batch_job_series(ok, "inventory_sync", "150x10", "pushgateway", "cron-2"),
              _batch_job_series(ok, "nightly_report", "200x10", "textfile"),
              _batch_job_series(ok, "stock_refresh", "300x10", f"service:{s.service}"))
    rec_case = RecordingCase(
        "inventory_sync pushed from two hosts, nightly_report through node-exporter's textfile "
        "collector, stock_refresh on the service's /metrics: one series per job name, the "
        "newest success",
        series, "5m",
        tuple(({"__name__": rec_ok, "job": job}, value)
              for job, value in (("inventory_sync", 150.0), ("nightly_report", 200.0),
                                 ("stock_refresh", 300.0))))

    default = s.job_max_age_seconds
    overrides = dict(s.job_max_ages)
    age = f"time() - {rec_ok}"
    if overrides:
        branches = [f"({age}{{job={_q(job)}}}) > {_num(limit)}"
                    for job, limit in overrides.items()]
        named = " or ".join(f"{rec_ok}{{job={_q(job)}}}" for job in overrides)
        branches.append(f"(({age}) > {_num(default)} unless on (job) ({named}))")
        not_succeeded = "\nor\n".join(branches)
    else:
        not_succeeded = f"{age} > {_num(default)}"
    limit_text = _humanize_duration(default)

    def free(name: str) -> str:  # an example job name no override applies to
        return name if name not in overrides else free(name + "_2")

    inventory, report = free("inventory_sync"), free("nightly_report")
    # promtool's clock starts at 0: a success "at 0" is, an hour past the limit, limit + 1 h old
    eval_minutes = int(default // 60) + 60
    eval_at = f"{eval_minutes}m"
    points = eval_minutes + 20
    age_at_eval = eval_minutes * 60.0

    def success(job: str, route: str, values: str, instance: str = "cron-1") -> Series:
        return _batch_job_series(ok, job, values, route, instance)

    every_minute = f"0+60x{points}"  # a run that succeeds every minute: its age stays 0
    cases: list[Case] = [
        Case(f"{inventory} pushed its last success {_humanize_duration(age_at_eval)} ago "
             "(the Pushgateway)", (success(inventory, "pushgateway", f"0x{points}"),),
             eval_at, True, {"job": inventory}, age_at_eval),
        Case(f"{report}'s last success is {_humanize_duration(age_at_eval)} old "
             "(node-exporter's textfile collector: exported_job)",
             (success(report, "textfile", f"0x{points}"),), eval_at, True, {"job": report},
             age_at_eval),
        Case(f"{inventory} succeeds every minute",
             (success(inventory, "pushgateway", every_minute),), eval_at, False),
        Case("an old success on a retired host, recent ones on the current host",
             (success(inventory, "pushgateway", f"0x{points}", "cron-old"),
              success(inventory, "pushgateway", every_minute)), eval_at, False),
    ]
    for job, limit in overrides.items():
        at_minutes = int(limit // 60) + 60
        cases.append(Case(
            f"{job}'s own limit ({_humanize_duration(limit)}) is passed",
            (success(job, "pushgateway", f"0x{at_minutes + 20}"),), f"{at_minutes}m", True,
            {"job": job}, at_minutes * 60.0))
        if limit > age_at_eval:
            cases.append(Case(
                f"{job} is {_humanize_duration(age_at_eval)} old: past the default limit, "
                "within its own", (success(job, "pushgateway", f"0x{points}"),), eval_at,
                False))
    failure_values = "_x20 1200x20"
    alerts_: list[Alert] = [
        Alert(
            "JobNotSucceeded", not_succeeded, "5m", "ticket",
            "Batch job {{ $labels.job }} has not succeeded in time",
            "The last success of batch job {{ $labels.job }} was {{ $value | humanizeDuration }} "
            f"ago, longer than its limit (default {limit_text}).",
            "A batch job (`with job(...)`, `@job(...)`) has not succeeded within its limit: it "
            "failed, hangs, or no longer runs at all (a removed cron entry, a host that is "
            "gone). Whatever it maintains (inventory, reports, exports) is getting stale.",
            (f"`{rec_ok}` and `{rec_bad}`: did the job fail since (JobFailing), or not run?",
             "The job's own log lines: every line of a run carries `job`, and each run ends "
             "with a `job_finished` line.",
             "The scheduler (cron, a Kubernetes CronJob): is the job still scheduled, did it "
             "start, was it killed?",
             "Where the numbers come from: the Pushgateway's page (`push_time_seconds` of the "
             "job's group) or the node exporter's textfile directory."),
            f"`--job-max-age SECONDS` (`job_max_age_seconds`, {limit_text}) for every job, "
            "`--job-max-age JOB=SECONDS` (`job_max_ages`) for one job: its period plus a "
            "margin. A job that moved to another host leaves its old "
            "Pushgateway group behind; it does not keep this alert firing (the newest success "
            "of any host counts), but delete it from the Pushgateway. A job that never "
            "succeeded has no success series: JobFailing catches it once it has failed.",
            tuple(cases),
            probe=age, probe_note="a batch job has a series only once it has run",
            uses=("job_last_success_timestamp_seconds",)),
        Alert(
            "JobFailing",
            f"time() - (\n  {rec_bad} > on (job) {rec_ok}\n  or\n"
            f"  {rec_bad} unless on (job) {rec_ok}\n)", "5m", "ticket",
            "The last run of batch job {{ $labels.job }} failed",
            "Batch job {{ $labels.job }} failed {{ $value | humanizeDuration }} ago and has "
            "not succeeded since.",
            "The newest run of a batch job raised (its failure is newer than its last "
            "success, or it never succeeded). The next scheduled run may recover; until then "
            "what it maintains is stale.",
            ("The failed run's log: its `job_finished` line (`status=failure`) and the "
             "exception before it, with the run's `trace_id`.",
             "The run's trace (the span named after the job, status ERROR).",
             "What it depends on: the database, an external API, disk space."),
            "`for` (5m): a retry that succeeds within five minutes stays quiet. No threshold; "
            "silence it in Alertmanager while a known failure is being fixed.",
            (Case("inventory_sync succeeded, then its next run failed (the Pushgateway keeps "
                  "both times)",
                  (success("inventory_sync", "pushgateway", "600x40"),
                   _batch_job_series(bad, "inventory_sync", failure_values, "pushgateway")),
                  "30m", True, {"job": "inventory_sync"}, 600.0),
             Case("nightly_report failed and never succeeded (node-exporter's textfile)",
                  (_batch_job_series(bad, "nightly_report", failure_values, "textfile"),),
                  "30m", True, {"job": "nightly_report"}, 600.0),
             Case("inventory_sync failed, then succeeded",
                  (_batch_job_series(bad, "inventory_sync", "600x40", "pushgateway"),
                   success("inventory_sync", "pushgateway", failure_values)), "30m", False)),
            probe=f"{rec_bad} > on (job) {rec_ok}",
            probe_note="a failure series exists only once a job has failed",
            uses=("job_last_success_timestamp_seconds", "job_last_failure_timestamp_seconds")),
    ]
    if s.pushgateway_target:
        from .exporters import PUSHGATEWAY_JOB

        up = f"up{{job={_q(PUSHGATEWAY_JOB)}}}"
        labels = {"job": PUSHGATEWAY_JOB, "instance": s.pushgateway_target}
        up_series = "up{" + ",".join(f"{k}={_q(v)}" for k, v in labels.items()) + "}"
        alerts_.append(Alert(
            "PushgatewayDown", f"{up} == 0", "5m", "ticket",
            "The Pushgateway cannot be scraped",
            "Prometheus has failed to scrape the Pushgateway {{ $labels.instance }} for 5 "
            "minutes: the batch jobs' series are gone meanwhile, and JobNotSucceeded and "
            "JobFailing cannot fire.",
            "Prometheus cannot scrape the Pushgateway. Batch jobs' pushes fail too (each is "
            "counted in `mestres_observability_errors_total{component=\"jobs\"}` of the job, "
            "never raised), and the batch-job alerts are blind until it is back.",
            ("Prometheus' Targets page: the scrape error.",
             "The Pushgateway's process and its persistence file (`--persistence.file`): "
             "without one, a restart forgets every job's last success."),
            "`for` (5m).",
            (Case("the Pushgateway is down", (Series(up_series, "0x20"),), "10m", True,
                  labels, 0.0),
             Case("the Pushgateway is up", (Series(up_series, "1x20"),), "10m", False)),
            probe=up))
    return RuleGroup("jobs", f"{s.service}-jobs", "Batch-job alerts", recordings=recs,
                     alerts=tuple(alerts_), recording_cases=(rec_case,),
                     test_evaluation_interval="5m")


#: label of a RUM histogram that carries several web vitals, and its values per vital
_VITAL_LABEL = "metric"
#: web vitals named by words of a histogram's name (``rum_layout_shift`` is CLS)
_VITAL_WORDS = {"layout": "cls", "shift": "cls"}


def rum_entries(config: ObservabilityConfig,
                entries: Sequence[catalogue.MetricDef] | None = None,
                ) -> list[tuple[catalogue.MetricDef, str, dict[str, str]]]:
    """Web-vital histograms among the enabled ``rum_*`` entries of the catalogue.

    Each item is ``(entry, vital, fixed labels)``: a histogram with a ``metric``
    label (``rum_web_vitals_seconds``) gives one item per vital it carries
    (``{"metric": "LCP"}``, ...); one named after a vital (``rum_layout_shift``,
    ``rum_lcp_seconds``) gives one item with no fixed label. ``entries``
    (default: the catalogue) is where they are looked for; an entry is taken
    when :func:`~mestres_observability.catalogue.is_enabled` says so.
    """
    out: list[tuple[catalogue.MetricDef, str, dict[str, str]]] = []
    for entry in catalogue.CATALOGUE if entries is None else entries:
        if not entry.name.startswith("rum_") or entry.kind != "histogram":
            continue
        if not catalogue.is_enabled(entry, config):
            continue
        words = set(entry.name.split("_"))
        vital = next((v for v in WEB_VITALS if v in words), None)
        if vital is None:
            vital = next((_VITAL_WORDS[w] for w in entry.name.split("_") if w in _VITAL_WORDS),
                         None)
        if vital is not None:
            out.append((entry, vital, {}))
        elif _VITAL_LABEL in entry.labels and entry.unit == "seconds":
            out.extend((entry, v, {_VITAL_LABEL: v.upper()}) for v in WEB_VITALS if v != "cls")
    return out


def _rum_group(n: _Names) -> RuleGroup | None:
    """Web-vitals alerts, one per ``rum_*`` web-vital histogram of the catalogue.

    Each fires when the 75th percentile of a page group is "poor" (above the
    web-vitals poor threshold), read exactly from the share of samples in the
    bucket at that threshold when it is a bound of the histogram, else with
    ``histogram_quantile``.
    """
    found = rum_entries(n.config)
    if not found:
        return None
    guard = _num(n.s.min_page_request_rate)
    alerts_: list[Alert] = []
    for entry, vital, fixed in found:
        good, poor = WEB_VITALS[vital]
        group = [lab for lab in entry.labels
                 if lab not in ("rating", "navigation_type") and lab not in fixed]
        by = ", ".join(["job", *fixed, *group])
        pinned = tuple(f"{k}={_q(v)}" for k, v in fixed.items())
        bucket = n.sel(entry.name, *pinned, suffix="_bucket")
        count = n.sel(entry.name, *pinned, suffix="_count")
        bounds = sorted(getattr(n.config, entry.buckets or "")) if entry.buckets and hasattr(
            n.config, entry.buckets) else []
        exact = next((b for b in bounds if math.isclose(b, poor)), None)
        unit = "s" if entry.unit == "seconds" else ""
        if exact is not None:
            poor_le = n.sel(entry.name, *pinned, f"le={_q(go_float(exact))}", suffix="_bucket")
            value = (f"1 - (\n  sum by ({by}) (rate({poor_le}[30m]))\n  /\n"
                     f"  sum by ({by}) (rate({count}[30m]))\n)")
            expr = f"{value} > 0.25"
            desc = (f"{{{{ $value | humanizePercentage }}}} of {vital.upper()} samples "
                    f"are above {_num(poor)}{unit} (poor): the 75th percentile is poor.")
        else:
            value = f"histogram_quantile(0.75, sum by ({by}, le) (rate({bucket}[30m])))"
            expr = f"{value} > {_num(poor)}"
            desc = (f"The 75th percentile of {vital.upper()} is {{{{ $value | humanize }}}}"
                    f"{unit} (poor above {_num(poor)}{unit}).")
        expr += f"\nand on ({by})\nsum by ({by}) (rate({count}[30m])) >= {guard}"
        labels = {**fixed, **dict.fromkeys(group, "/checkout")}
        cases: tuple[Case, ...] = ()
        if bounds:
            if exact is not None:
                i_poor = bounds.index(exact) + 1
                value_fire = 1.0  # every sample above the poor threshold
            else:
                i_poor, value_fire = _bucket_above(bounds, poor, 0.75)
            cases = (Case(f"every {vital.upper()} sample is poor",
                          n.histogram(entry.name, 60, i_poor, 60, **labels), "45m", True,
                          n.job_labels(**labels), value_fire),
                     Case(f"every {vital.upper()} sample is at most {go_float(bounds[0])}",
                          n.histogram(entry.name, 60, 0, 60, **labels), "45m", False))
        name = f"WebVital{vital.upper()}Poor"
        page_group = " of {{ $labels." + group[0] + " }}" if group else ""
        alerts_.append(Alert(
            name, expr, "15m", "ticket",
            f"{vital.upper()} is poor{page_group}",
            desc,
            f"Real users' {vital.upper()} (web-vitals: good up to {_num(good)}{unit}, poor "
            f"above {_num(poor)}{unit}) is poor for at least a quarter of page views"
            f"{' of a page group' if group else ''} over 30 minutes.",
            ("The RUM dashboard: which page group, since when, which navigation type.",
             "Recent front-end deploys, third-party scripts, image sizes (LCP), long tasks "
             "(INP), layout shifts (CLS).", "Server time (TTFB) on the Technical dashboard."),
            "The web-vitals thresholds are fixed; the window (30m) and `for` (15m) are in "
            "the rule; pages with fewer than "
            f"{guard} samples/s are not judged.",
            cases, probe=value, probe_note="needs page views from browsers",
            uses=(entry.name,)))
    errors = [e for e in catalogue.CATALOGUE if e.name.startswith("rum_") and e.kind ==
              "counter" and "error" in e.name and catalogue.is_enabled(e, n.config)]
    for entry in errors[:1]:
        sel = n.sel(entry.name)
        alerts_.append(Alert(
            "JavaScriptErrors",
            f"sum by (job) (increase({sel}[15m])) > 10", "15m", "ticket",
            "Browsers report JavaScript errors",
            "{{ $value | humanize }} JavaScript errors reported in the last 15 minutes.",
            "Real users' browsers report uncaught JavaScript errors: a page may be broken "
            "for some of them.",
            ("The RUM dashboard's JS errors by page group.", "The front end's last deploy."),
            "The threshold (10 in 15 minutes) is in the rule.",
            (Case("a JS error a minute", (n.series(entry.name, "0+1x50"),), "40m", True,
                  n.job_labels(), 15.0),
             Case("no new error", (n.series(entry.name, "4x50"),), "40m", False)),
            probe=f"sum by (job) (increase({sel}[15m]))",
            probe_note="needs page views from browsers", uses=(entry.name,)))
    if not alerts_:
        return None
    return RuleGroup("rum", f"{n.s.service}-rum", "Web-vitals (RUM) alerts",
                     alerts=tuple(alerts_))


def _enabled(config: ObservabilityConfig, uses: Iterable[str]) -> bool:
    return all(catalogue.is_enabled(catalogue.lookup(u), config) for u in uses)


def _team(settings: RenderSettings, key: str) -> str:
    return dict(settings.alert_teams).get(key, settings.team)


def _finish(settings: RenderSettings, group: RuleGroup) -> RuleGroup | None:
    recs = tuple(r for r in group.recordings if _enabled(settings.config, r.uses))
    kept: list[Alert] = []
    for a in group.alerts:
        if not _enabled(settings.config, a.uses):
            continue
        labels = {"severity": a.severity, "team": _team(settings, group.key),
                  "service": settings.service}
        if a.slo:
            labels["slo"] = a.slo
        annotations = {"summary": a.summary, "description": a.description,
                       "runbook_url": f"{settings.runbook_url}#{a.name.lower()}"}
        for_ = settings.alert_for_override if settings.alert_for_override is not None \
            else a.for_
        kept.append(dataclasses.replace(a, labels=labels, annotations=annotations, for_=for_))
    if not recs and not kept:
        return None
    cases = group.recording_cases if len(recs) == len(group.recordings) else ()
    return dataclasses.replace(group, recordings=recs, alerts=tuple(kept), recording_cases=cases)


def build(settings: RenderSettings) -> list[RuleGroup]:
    """Every rule group for ``settings``, in file order; groups left empty by disabled
    features are left out.

    Raises:
        ValueError: a latency threshold that is not an ``http_buckets`` bound, or a
            p99 threshold outside the buckets.
    """
    n = _Names(settings)
    groups: list[RuleGroup | None] = [
        _recording_group(n), _slo_recording_group(n), _slo_group(n), _http_group(n),
        _business_group(n), _infrastructure_group(n), _health_group(n), _self_group(n),
        _jobs_group(n), _rum_group(n),
    ]
    out = [g for g in (_finish(settings, g) for g in groups if g is not None) if g is not None]
    keys = {g.key for g in out}
    return [g for g in out if set(g.needs) <= keys]


def alerts(settings: RenderSettings) -> list[tuple[RuleGroup, Alert]]:
    """Every alert of :func:`build`, with its group."""
    return [(g, a) for g in build(settings) for a in g.alerts]


def render(settings: RenderSettings) -> dict[str, str]:
    """``prometheus/rules/<group>.yml`` for every group of :func:`build`."""
    return {g.path: g.to_yaml() for g in build(settings)}


def rule_file_paths(groups: Sequence[RuleGroup]) -> list[str]:
    """The rule files' paths relative to ``prometheus/`` (what prometheus.yml lists)."""
    return [g.path.removeprefix("prometheus/") for g in groups]
