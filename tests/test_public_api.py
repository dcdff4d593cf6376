"""The public surface: __all__ matches the API reference page; typing marker shipped."""

from __future__ import annotations

import ast
import importlib.util
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
    modules = re.findall(r"^## `(mestres_observability\.\w+)`$", page, flags=re.M)
    assert {"mestres_observability.testing", "mestres_observability.flask"} <= set(modules)
    for module_name in modules:
        names = set(re.findall(rf"^### `{re.escape(module_name)}\.(\w+)`$", page, flags=re.M))
        assert names == _module_all(module_name), module_name


def _module_all(name: str) -> set[str]:
    """A module's ``__all__``, read from its source: importing the adapters needs their
    framework, and importing ``mestres_observability.gunicorn`` switches this process to
    multiprocess mode."""
    spec = importlib.util.find_spec(name)
    assert spec is not None
    assert spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"{name} has no __all__")


def test_every_public_name_has_a_docstring() -> None:
    for name in mestres_observability.__all__:
        obj = getattr(mestres_observability, name)
        if name == "__version__":
            assert re.match(r"^\d+\.\d+", obj)
            continue
        assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


def test_py_typed_shipped() -> None:
    assert (Path(mestres_observability.__file__).parent / "py.typed").exists()
