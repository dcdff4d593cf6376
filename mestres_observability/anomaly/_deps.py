"""The optional dependencies of the anomaly extra.

Nothing in the library imports this package. Inside it, a module that needs
numpy or scikit-learn imports it at its top inside ``try``, and turns the
``ImportError`` into :func:`missing`'s error, so a missing extra reads as a
:class:`~mestres_observability.MissingExtraError` naming
``pip install 'mestres-observability[anomaly]'`` instead of a bare
``ModuleNotFoundError`` deep in a traceback. The command line imports those
modules only inside the commands that use them.
"""

from __future__ import annotations

from ..errors import MissingExtraError

__all__ = ["EXTRA", "missing"]

#: The name of the optional extra (``pip install 'mestres-observability[anomaly]'``).
EXTRA = "anomaly"


def missing(package: str, feature: str = "anomaly detection") -> MissingExtraError:
    """The error to raise when ``package`` (``"numpy"``, ``"scikit-learn"``) cannot be imported."""
    return MissingExtraError(feature, EXTRA, package)
