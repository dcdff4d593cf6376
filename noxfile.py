"""Test sessions on other interpreters than the default one (``make test`` uses 3.11).

* ``core_tests``: the framework-free core on the oldest and newest interpreters
  supported (3.10 and 3.13).
* ``adapter_tests``: the Flask, FastAPI/Starlette and Django adapter tests on
  each row of the framework support matrix (``docs/index.md``): Python 3.11
  with Django 5.2, and Python 3.13 with Django 6.1. FastAPI 0.16x and
  Starlette 1.x need Python 3.11 or newer, Django 6.1 needs 3.12 or newer.
* ``newest_deps``: the whole suite on Python 3.13 with the newest release of
  every library whose internals ``mestres_observability._compat`` reaches into
  (prometheus-client, the OpenTelemetry packages, structlog) and of every
  framework an adapter translates (Flask/Werkzeug, Starlette/FastAPI, Django),
  so their next release breaks here before it breaks a user.

pyenv keeps the other interpreters off ``PATH``: run them through
``make test-versions`` and ``make test-newest``, which list them in
``PYENV_VERSION``.
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
ADAPTER_TEST_DEPS = ["pytest>=8", "hypothesis>=6.100", "httpx>=0.27", "httpx2>=2.0", "fastapi>=0.110",
                     # the lean-span wire tests parent an instrumented requests call
                     "requests>=2.31", "opentelemetry-instrumentation-requests>=0.46b0"]


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


#: Upgraded to their newest release by ``newest_deps`` (``pip install --upgrade``).
NEWEST = [
    "prometheus-client",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-proto",
    "structlog",
    "orjson",
    "flask",
    "werkzeug",
    "starlette",
    "fastapi",
    "django",
    "celery",
    "requests",
    "opentelemetry-instrumentation-requests",
    "opentelemetry-instrumentation-celery",
]

#: What the whole suite imports or starts besides the package and its extras.
SUITE_TEST_DEPS = [
    *ADAPTER_TEST_DEPS,
    "mypy>=1.10",  # tests/test_typing.py type-checks the usage file
    "types-psutil",
    "opentelemetry-proto>=1.25",  # the test OTLP receiver decodes spans off the wire
    "gunicorn>=22",
    "uvicorn>=0.30",
    "psycopg2-binary>=2.9",
    "psycopg[binary,pool]>=3.1.8",  # Django's connection pool (tests/integration/test_db_*)
    "requests>=2.31",  # outbound calls and the contrib instrumentations by name
    "opentelemetry-instrumentation-requests>=0.46b0",
    "opentelemetry-instrumentation-celery>=0.46b0",
]

#: Test ids left out of ``newest_deps``, each with the reason (a test about benchmarks, or
#: one that only exercises an older release's behaviour). None today: the benchmarks live
#: in ``benchmarks/`` (``make bench``), and the tests of FastAPI's native telemetry skip
#: themselves only on a FastAPI without it.
NEWEST_DESELECT: list[str] = []


@nox.session(python="3.13")
def newest_deps(session: nox.Session) -> None:
    """The whole suite against the newest releases of the libraries in :data:`NEWEST`."""
    # the dev extra: everything the whole suite imports (one list, so a new test dependency
    # cannot be missing here); then the newest releases on top
    session.install("-e", ".[dev,flask,fastapi,django,otlp,redis,sql,celery,anomaly]",
                    *SUITE_TEST_DEPS)
    session.install("--upgrade", *NEWEST)
    session.run("python", "-c", _PRINT_VERSIONS, *NEWEST)
    session.run("pytest", "-q", "-p", "no:cacheprovider",
                *(f"--deselect={t}" for t in NEWEST_DESELECT), *session.posargs,
                env={"MESTRES_TEST_REQUIRE_INTEGRATION": "1"})


_PRINT_VERSIONS = (
    "import sys; from importlib.metadata import version; "
    "print('newest_deps on Python', sys.version.split()[0]); "
    "[print(f'  {name}=={version(name)}') for name in sys.argv[1:]]"
)
