"""Render the whole monitoring stack into one folder: every renderer, then the files.

Each renderer is a module of this package with ``render(settings) ->
{relative path: content}``. :func:`render_all` runs them all first (so a bad
setting fails before anything is written), refuses paths that would leave the
output folder or that two renderers both claim, writes the files, and removes
rule and test files an earlier rendering left behind (only files carrying the
generated-file header; RUM switched off must not leave a RUM alert behind).

Renderers of other parts of the stack (Grafana, log shipping, the collector,
the compose file) are called when their module exists, so each part can be
added on its own; ``anomaly`` is called only with ``anomaly_rules``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .. import catalogue
from . import _yaml, alertmanager, prometheus_config, rule_tests, rules, runbook
from .settings import RenderSettings

__all__ = ["OPTIONAL_RENDERERS", "RenderResult", "render_all", "render_files"]

#: Modules of this package rendered when they exist (other parts of the stack).
OPTIONAL_RENDERERS: tuple[str, ...] = ("grafana", "logs", "collector", "compose")

_OWN: tuple[Callable[[RenderSettings], dict[str, str]], ...] = (
    rules.render, rule_tests.render, prometheus_config.render, alertmanager.render,
    runbook.render,
)
#: Folders whose generated files are removed when a rendering no longer writes them.
_MANAGED = ("prometheus/rules", "prometheus/tests")


@dataclass
class RenderResult:
    """What :func:`render_all` did.

    Attributes:
        written: relative paths written, sorted.
        removed: stale generated files removed.
        notes: what was not rendered, and why.
    """

    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _module(name: str) -> object | None:
    qualified = f"{__package__}.{name}"
    if importlib.util.find_spec(qualified) is None:
        return None
    return importlib.import_module(qualified)


def _tool_module(qualified: str) -> object | None:
    if importlib.util.find_spec(qualified.rpartition(".")[0]) is None:
        return None
    return importlib.import_module(qualified)


def render_files(settings: RenderSettings, notes: list[str] | None = None) -> dict[str, str]:
    """Every file of the stack for ``settings``: relative path -> content.

    Raises:
        ValueError: a setting no renderer can use (the message says which), or
            two renderers writing the same path.
    """
    notes = [] if notes is None else notes
    renderers: list[tuple[str, Callable[[RenderSettings], dict[str, str]]]] = [
        (f.__module__, f) for f in _OWN]
    for name in OPTIONAL_RENDERERS:
        module = _module(name)
        render = getattr(module, "render", None)
        if callable(render):
            renderers.append((name, render))
        else:
            notes.append(f"{name}: not rendered (mestres_observability.monitoring.{name} is "
                         "not part of this version)")
    if settings.anomaly_rules:
        # found by name: the anomaly tool sits above monitoring in the layers and imports it
        module = _tool_module("mestres_observability.anomaly.rules")
        render = getattr(module, "render", None)
        anomaly_metrics = [e for e in catalogue.CATALOGUE if e.name.startswith("anomaly_")]
        if callable(render):
            renderers.append(("anomaly", render))
        else:
            notes.append("anomaly rules: not rendered; the anomaly-detection metrics are not in "
                         f"the catalogue yet ({len(anomaly_metrics)} anomaly_* entries)")
    if not rules.rum_entries(settings.config):
        notes.append("RUM alerts: none rendered; RUM is off (MESTRES_OBS_RUM_ENABLED) or no "
                     "enabled rum_* web-vital histogram is in the catalogue")
    files: dict[str, str] = {}
    owner: dict[str, str] = {}
    for name, render in renderers:
        for path, content in render(settings).items():
            pure = PurePosixPath(path)
            if pure.is_absolute() or ".." in pure.parts or not pure.parts:
                raise ValueError(f"renderer {name} returned a path outside the output: {path!r}")
            if path in files:
                raise ValueError(f"{path} is written by both {owner[path]} and {name}")
            files[path] = content
            owner[path] = name
    return files


def render_all(settings: RenderSettings, out_dir: str | Path) -> RenderResult:
    """Render every part of the stack into ``out_dir`` (created if missing).

    Raises:
        ValueError: see :func:`render_files`; nothing is written then.
        OSError: the folder cannot be written.
    """
    result = RenderResult()
    files = render_files(settings, result.notes)
    root = Path(out_dir)
    for path, content in sorted(files.items()):
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        result.written.append(path)
    for folder in _MANAGED:
        for old in sorted((root / folder).glob("*.yml")):
            rel = old.relative_to(root).as_posix()
            if rel in files:
                continue
            with old.open(encoding="utf-8") as fh:
                generated = fh.readline() == _yaml.HEADER
            if generated:
                old.unlink()
                result.removed.append(rel)
    return result
