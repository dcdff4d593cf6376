"""The docs' Architecture page and the import-linter contract describe the same layers."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mestres_observability"


def contract_layers() -> list[set[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "layers")
    assert contract["exhaustive"] is True
    return [set(re.split(r"\s*[|:]\s*", layer.strip())) for layer in contract["layers"]]


def page_layers() -> list[set[str]]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = text.split("<!-- layers:", 1)[1].split("<!-- /layers -->", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    return [set(re.findall(r"`([^`]+)`", row.split("|")[2])) for row in rows]


def package_modules() -> set[str]:
    names = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    names |= {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    return names


def test_architecture_page_lists_the_contract_layers_in_order() -> None:
    assert page_layers() == contract_layers()


def test_every_module_of_the_package_is_placed_in_one_layer() -> None:
    placed = [m for layer in contract_layers() for m in layer]
    assert len(placed) == len(set(placed)), "a module is placed twice"
    assert set(placed) == package_modules()
