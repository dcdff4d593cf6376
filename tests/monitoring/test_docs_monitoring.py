"""The monitoring docs: the generated runbook is current and has a section per alert, both
pages are in the navigation, and the seed corrections are listed."""

from __future__ import annotations

import re
from pathlib import Path

from mestres_observability.config import ObservabilityConfig
from mestres_observability.monitoring import rules, runbook
from mestres_observability.monitoring.settings import RenderSettings

#: the docs' runbook: default settings with every optional feature on
EVERY_FEATURE = RenderSettings(config=ObservabilityConfig(rum_enabled=True),
                               pushgateway_target="pushgateway:9091")

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "runbook.md"


def test_runbook_page_is_current() -> None:
    assert RUNBOOK.read_text(encoding="utf-8") == runbook.page(EVERY_FEATURE), \
        "run: python docs/gen_reference.py"


def test_every_runbook_url_points_at_a_section_of_the_docs_page() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    anchors = {h.lower() for h in re.findall(r"^### (\w+)$", text, re.MULTILINE)}
    default = RenderSettings()
    assert default.runbook_url.endswith("/docs/runbook.md")
    names = {a.name for _g, a in rules.alerts(EVERY_FEATURE)}
    assert {"WebVitalLCPPoor", "WebVitalCLSPoor", "JavaScriptErrors", "JobNotSucceeded",
            "JobFailing", "PushgatewayDown"} <= names
    for _group, alert in rules.alerts(EVERY_FEATURE):
        url = alert.annotations["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == default.runbook_url
        assert anchor in anchors, alert.name
        section = text.split(f"### {alert.name}\n", 1)[1].split("\n### ", 1)[0]
        for part in ("**Meaning.**", "**First checks.**", "**Tuning.**", "fires:", "silent:"):
            assert part in section, (alert.name, part)


def test_pages_are_in_the_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert "monitoring.md" in nav
    assert "runbook.md" in nav


def test_monitoring_page_lists_the_seed_corrections() -> None:
    text = (ROOT / "docs" / "monitoring.md").read_text(encoding="utf-8")
    corrections = text.split("## Seed corrections", 1)[1]
    for fact in ("increase(orders_total[1h])", "memory_usage_percent", "absolute rate",
                 "Thrift", "pg_stat_activity", "max_connections"):
        assert fact in corrections, fact


def test_monitoring_page_documents_every_cli_option() -> None:
    from mestres_observability.cli import main

    text = (ROOT / "docs" / "monitoring.md").read_text(encoding="utf-8")
    render = main.commands["render"]  # type: ignore[attr-defined]
    for param in render.params:
        for opt in param.opts:
            if opt.startswith("--"):
                assert f"`{opt}" in text, opt
