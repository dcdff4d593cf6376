"""The public surface: __all__ matches the API reference page; typing marker shipped."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import mestres_observability

ROOT = Path(__file__).resolve().parent.parent


def test_all_matches_api_reference_page() -> None:
    """The generated page (docs/gen_reference.py) has one ``### `name``` entry per name of
    ``__all__``, and one ``### `module.name``` entry per public name of each module it covers."""
    page = (ROOT / "docs" / "reference" / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^### `(\w+)`$", page, flags=re.M))
    assert documented == set(mestres_observability.__all__)
    for module_name in re.findall(r"^## `(mestres_observability\.\w+)`$", page, flags=re.M):
        module = importlib.import_module(module_name)
        names = set(re.findall(rf"^### `{re.escape(module_name)}\.(\w+)`$", page, flags=re.M))
        assert names == set(module.__all__), module_name


def test_every_public_name_has_a_docstring() -> None:
    for name in mestres_observability.__all__:
        obj = getattr(mestres_observability, name)
        if name == "__version__":
            assert re.match(r"^\d+\.\d+", obj)
            continue
        assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


def test_py_typed_shipped() -> None:
    assert (Path(mestres_observability.__file__).parent / "py.typed").exists()
