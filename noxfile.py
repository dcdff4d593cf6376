"""Test sessions on other interpreters than the default one (``make test`` uses 3.11).

* ``core_tests``: the framework-free core on the oldest and newest interpreters
  supported (3.10 and 3.13).
* ``adapter_tests``: the Flask, FastAPI/Starlette and Django adapter tests on
  each row of the framework support matrix (``docs/index.md``): Python 3.11
  with Django 5.2, and Python 3.13 with Django 6.1. FastAPI 0.16x and
  Starlette 1.x need Python 3.11 or newer, Django 6.1 needs 3.12 or newer.

pyenv keeps the other interpreters off ``PATH``: run them through
``make test-versions``, which lists them in ``PYENV_VERSION``.
"""

from __future__ import annotations

import nox

nox.options.error_on_missing_interpreters = True
nox.options.reuse_existing_virtualenvs = True

CORE_TESTS = [
    "tests/test_config.py",
    "tests/test_cardinality.py",
    "tests/test_business.py",
    "tests/test_instrument.py",
    "tests/test_observability.py",
    "tests/test_exposition.py",
    "tests/test_properties.py",
    "tests/test_public_api.py",
    "tests/test_system.py",
]

#: (Python, Django series) rows of the adapter support matrix.
ADAPTER_MATRIX = [("3.11", "5.2"), ("3.13", "6.1")]

#: What tests/adapters imports besides the package and its extras.
ADAPTER_TEST_DEPS = ["pytest>=8", "hypothesis>=6.100", "httpx>=0.27", "httpx2>=2.0", "fastapi>=0.110"]


@nox.session(python=["3.10", "3.13"])
def core_tests(session: nox.Session) -> None:
    """Core unit tests (no web framework, no external server)."""
    session.install("-e", ".", "pytest>=8", "hypothesis>=6.100")
    session.run("pytest", "-q", "-m", "not integration", "-p", "no:cacheprovider",
                *list(CORE_TESTS))


@nox.session
@nox.parametrize(("python", "django"), ADAPTER_MATRIX, ids=[f"py{p}-django{d}"
                                                          for p, d in ADAPTER_MATRIX])
def adapter_tests(session: nox.Session, django: str) -> None:
    """Adapter tests against one Python and Django series (missing frameworks fail, never skip)."""
    major, minor = django.split(".")
    session.install("-e", ".[flask,fastapi,django,otlp]", *ADAPTER_TEST_DEPS,
                    f"django>={django},<{major}.{int(minor) + 1}")
    session.run("python", "-c", "import django, sys; print('Django', django.get_version(), "
                "'on Python', sys.version.split()[0])")
    session.run("pytest", "-q", "-p", "no:cacheprovider", "tests/adapters",
                env={"MESTRES_TEST_REQUIRE_INTEGRATION": "1"})
