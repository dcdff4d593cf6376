"""Versioned model files: one detector per metric, as JSON (never a pickle).

A model file holds, for every metric it was trained on, the detector's
parameters and learned state (:meth:`state` of the detector). The seasonal
detector's state is its windows; the IsolationForest detector's is its scaler
and training rows, and the forest is fitted again with its fixed seed on load,
so loading a file never runs code from it (unlike ``pickle`` or ``joblib``,
which the seed used). A file written by another format version is refused
with a :class:`ModelFormatError` that says what to do.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ObservabilityError
from .detector import Detector

__all__ = ["FORMAT", "FORMAT_VERSION", "Model", "ModelFormatError", "detector_from_state", "load",
           "save"]

#: The ``format`` field of every model file.
FORMAT = "mestres-observability/anomaly-model"
#: The format version this release writes and reads.
FORMAT_VERSION = 1

DETECTOR_KINDS: tuple[str, ...] = ("seasonal", "isolation-forest")


class ModelFormatError(ObservabilityError, ValueError):
    """A model file cannot be read: not a model file, another format version, or damaged."""


@dataclass
class Model:
    """Trained detectors by metric name, with where and when they were trained.

    Attributes:
        kind: the detector kind (``seasonal`` or ``isolation-forest``).
        detectors: one trained detector per metric name.
        trained_at: Unix time of training.
        info: free-form facts (the Prometheus address, the queries, the step).
    """

    kind: str
    detectors: dict[str, Detector]
    trained_at: float = field(default_factory=time.time)
    info: dict[str, Any] = field(default_factory=dict)


def detector_from_state(kind: str, state: Mapping[str, Any]) -> Detector:
    """A detector of ``kind`` from its :meth:`state` data."""
    if kind == "seasonal":
        from .seasonal import SeasonalDetector

        return SeasonalDetector.from_state(dict(state))
    if kind == "isolation-forest":
        from .forest import IsolationForestDetector

        return IsolationForestDetector.from_state(dict(state))
    raise ModelFormatError(f"unknown detector kind {kind!r}; one of {', '.join(DETECTOR_KINDS)}")


def save(model: Model, path: str | Path) -> None:
    """Write ``model`` to ``path`` atomically (a temporary file, then a rename)."""
    body = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "library_version": __version__,
        "detector": model.kind,
        "trained_at": model.trained_at,
        "info": model.info,
        "metrics": {name: d.state() for name, d in model.detectors.items()},
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(body, fh, separators=(",", ":"), allow_nan=False)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def load(path: str | Path) -> Model:
    """Read a model file written by :func:`save`.

    Raises:
        ModelFormatError: the file is not a model file, has another format
            version (the message says which, and to train again), or is damaged.
        FileNotFoundError: no such file.
    """
    source = Path(path)
    try:
        body = json.loads(source.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{source} is not a model file (not JSON: {exc})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ModelFormatError(f"{source} is not a mestres-observability anomaly model "
                               f"(format field {body.get('format') if isinstance(body, dict) else None!r})")
    version = body.get("version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(
            f"{source} is a model file of format version {version!r} (written by "
            f"mestres-observability {body.get('library_version', '?')}); this release "
            f"({__version__}) reads version {FORMAT_VERSION} only: train the model again "
            f"with `mestres-observability anomaly train`")
    kind = body.get("detector")
    try:
        detectors = {str(name): detector_from_state(str(kind), state)
                     for name, state in body["metrics"].items()}
    except ModelFormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFormatError(f"{source}: damaged model file ({type(exc).__name__}: {exc})") from None
    return Model(str(kind), detectors, float(body.get("trained_at", 0.0)), dict(body.get("info", {})))
