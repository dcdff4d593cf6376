"""Generated documentation pages match the code (they cannot drift)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_pages_are_current() -> None:
    gen = load_generator()
    assert gen.CONFIG_PAGE.read_text(encoding="utf-8") == gen.configuration_page(), \
        "run: python docs/gen_reference.py"
    assert gen.METRICS_PAGE.read_text(encoding="utf-8") == gen.metrics_page(), \
        "run: python docs/gen_reference.py"
    assert gen.CHANGELOG_PAGE.read_text(encoding="utf-8") == gen.changelog_page()


def test_api_reference_page_is_current() -> None:
    """docs/reference/api.md is text generated from the signatures and docstrings (readable
    on GitHub without building the site): it must match the code."""
    gen = load_generator()
    assert gen.API_PAGE.read_text(encoding="utf-8") == gen.api_page(), \
        "run: python docs/gen_reference.py"
    assert ":::" not in gen.API_PAGE.read_text(encoding="utf-8")  # no directive left


def test_changelog_has_unreleased_section() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in text
