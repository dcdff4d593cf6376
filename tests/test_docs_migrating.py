"""The migrating page's peer-options tables name only settings and APIs that exist, and
every option not built yet says which issue it waits on."""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

from mestres_observability import catalogue
from mestres_observability.config import ObservabilityConfig

PAGE = Path(__file__).resolve().parent.parent / "docs" / "migrating.md"
PEERS = ("prometheus_flask_exporter", "prometheus-fastapi-instrumentator", "starlette_exporter",
         "django-prometheus", "OpenTelemetry contrib instrumentations", "Logfire",
         "django-health-check", "prometheus_client's own helpers")
MODULES = ("mestres_observability", "mestres_observability.celery", "mestres_observability.db",
           "mestres_observability.outbound", "mestres_observability.health",
           "mestres_observability.testing")
#: names the tables use that are neither settings nor public names: a label, log fields, an
#: adapter argument, a view attribute
OTHER = {"endpoint", "user_id_resolver", "trace_id", "span_id",
         "mestres_observability_do_not_track"}


def _section() -> str:
    text = PAGE.read_text(encoding="utf-8")
    return text.split("## Option by option", 1)[1].split("\n## ", 1)[0]


def _rows() -> list[tuple[str, str, str]]:
    """(peer, option, here) of every table row."""
    rows = []
    peer = ""
    for line in _section().splitlines():
        if line.startswith("### "):
            peer = line[4:].strip()
        elif line.startswith("| ") and not line.startswith(("| option", "| helper", "| ---")):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            assert len(cells) == 2, line
            rows.append((peer, cells[0], cells[1]))
    return rows


def test_every_peer_has_a_table() -> None:
    peers = {peer for peer, _option, _here in _rows()}
    assert peers == set(PEERS)


def test_settings_and_names_in_the_tables_exist() -> None:
    settings = {f.name for f in dataclasses.fields(ObservabilityConfig)}
    public: set[str] = set()
    for name in MODULES:
        public |= set(getattr(importlib.import_module(name), "__all__", ()))
    metrics = {d.name for d in catalogue.CATALOGUE} | {d.family_name() for d in catalogue.CATALOGUE}
    known = settings | public | metrics | OTHER
    unknown = set()
    for _peer, _option, here in _rows():
        for token in re.findall(r"`([a-z][a-z0-9_]*)`", here):
            if "_" in token and token not in known:
                unknown.add(token)
    assert unknown == set(), sorted(unknown)


def test_not_yet_says_which_issue() -> None:
    for peer, option, here in _rows():
        if "not yet" in here:
            assert re.search(r"issue \d+", here), (peer, option)
    # issue 16 has delivered every part: no row waits on it any more
    assert "issue 16" not in _section()
