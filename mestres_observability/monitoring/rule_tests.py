"""``promtool test rules`` files, generated with the rules: one per rule group.

For each alert, every :class:`~mestres_observability.monitoring.rules.Case`
becomes one test: its input series, and at its evaluation time the alert is
expected to fire (with its exact labels and expanded annotations) or to stay
silent. The paging alerts also carry a low-traffic case: high error ratios on
a handful of requests, and no page. Recording rules are checked with
``promql_expr_test`` (orders per hour is a count per hour: 60 for one order a
minute). Run them with ``promtool test rules prometheus/tests/*.yml`` (or
``mestres-observability check``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import _yaml
from .rules import Alert, Case, RuleGroup, build, expand_template
from .settings import RenderSettings

__all__ = ["group_test_file", "render"]

_INTERVAL = "1m"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _labels_text(labels: Mapping[str, str]) -> str:
    name = labels.get("__name__", "")
    inner = ",".join(f"{k}={_quote(v)}" for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{inner}}}"


def _alert_test(alert: Alert, case: Case) -> dict[str, Any]:
    expected: list[dict[str, Any]] = []
    if case.fires:
        labels = {**case.labels, **alert.labels}
        annotations = {k: expand_template(v, case.labels, case.value)
                       for k, v in alert.annotations.items()}
        expected.append({"exp_labels": labels, "exp_annotations": annotations})
    return {
        "name": f"{alert.name}: {case.name}",
        "interval": _INTERVAL,
        "input_series": [{"series": s.selector, "values": s.values} for s in case.series],
        "alert_rule_test": [{"eval_time": case.eval_time, "alertname": alert.name,
                             "exp_alerts": expected}],
    }


def group_test_file(group: RuleGroup, groups: list[RuleGroup]) -> str:
    """The promtool test file of ``group`` (``groups``: every group, for its dependencies)."""
    by_key = {g.key: g for g in groups}
    files = [f"../rules/{group.key}.yml"] + [f"../rules/{k}.yml" for k in group.needs
                                             if k in by_key]
    tests: list[dict[str, Any]] = []
    for rc in group.recording_cases:
        tests.append({
            "name": f"{group.key}: {rc.name}",
            "interval": _INTERVAL,
            "input_series": [{"series": s.selector, "values": s.values} for s in rc.series],
            "promql_expr_test": [
                {"expr": _labels_text(labels), "eval_time": rc.eval_time,
                 "exp_samples": [{"labels": _labels_text(labels), "value": value}]}
                for labels, value in rc.samples],
        })
    for alert in group.alerts:
        for case in alert.cases:
            tests.append(_alert_test(alert, case))
    doc = {"rule_files": files, "evaluation_interval": group.test_evaluation_interval,
           "tests": tests}
    return _yaml.dump(doc)


def render(settings: RenderSettings) -> dict[str, str]:
    """``prometheus/tests/<group>.yml`` for every rule group that has tests.

    Raises:
        ValueError: an alert without a firing and a silent case (every alert must have both).
    """
    groups = build(settings)
    out: dict[str, str] = {}
    for group in groups:
        for alert in group.alerts:
            outcomes = {c.fires for c in alert.cases}
            if outcomes != {True, False}:
                raise ValueError(f"alert {alert.name} needs a firing and a silent case")
        if group.alerts or group.recording_cases:
            out[f"prometheus/tests/{group.key}.yml"] = group_test_file(group, groups)
    return out
