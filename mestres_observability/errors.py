"""Exceptions raised by mestres-observability.

Only set-up raises: at request time the library drops, counts and logs instead
(see :mod:`mestres_observability._fault`).
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "MetricConflictError", "MissingExtraError", "ObservabilityError"]


class ObservabilityError(Exception):
    """Base class of every exception this library raises on purpose."""


class ConfigurationError(ObservabilityError, ValueError):
    """A setting has a value the library cannot use.

    The message names the setting, the offending value and how to fix it.
    Raised by :class:`~mestres_observability.ObservabilityConfig` and therefore
    by :func:`~mestres_observability.init_observability`, never at request time.
    """

    def __init__(self, setting: str, value: object, problem: str, *, env: str | None = None) -> None:
        self.setting = setting
        self.value = value
        self.problem = problem
        self.env = env
        where = f" (from environment variable {env})" if env else ""
        super().__init__(f"invalid setting {setting}={value!r}{where}: {problem}")


class MetricConflictError(ObservabilityError, ValueError):
    """A metric was requested with a definition that conflicts with an existing one.

    Raised by ``obs.counter``/``obs.gauge``/``obs.histogram`` and by
    ``init_observability`` when the global registry already holds a family that
    the library would expose a second time.
    """


class MissingExtraError(ObservabilityError, ImportError):
    """A feature was asked for whose optional dependency is not installed.

    The message carries the ``pip install 'mestres-observability[extra]'`` line.
    """

    def __init__(self, feature: str, extra: str, module: str) -> None:
        self.feature = feature
        self.extra = extra
        super().__init__(
            f"{feature} needs the optional package {module!r}; "
            f"install it with: pip install 'mestres-observability[{extra}]'",
            name=module,
        )
