"""Core unit tests on the oldest and newest interpreters present (3.10 and 3.13).

The full suite (adapters, integration servers) runs on the default interpreter
through ``make test``; here the framework-free core runs on each version.
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


@nox.session(python=["3.10", "3.13"])
def core_tests(session: nox.Session) -> None:
    """Core unit tests (no web framework, no external server)."""
    session.install("-e", ".", "pytest>=8", "hypothesis>=6.100")
    session.run("pytest", "-q", "-m", "not integration", "-p", "no:cacheprovider",
                *list(CORE_TESTS))
