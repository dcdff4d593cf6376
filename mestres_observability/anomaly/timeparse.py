"""Times and durations on the command line: RFC 3339, Unix seconds, relative (``-7d``, ``now``)."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

__all__ = ["parse_duration", "parse_time"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus-style duration (``90s``, ``5m``, ``1h30m``, ``7d``, ``2w``;
    a bare number is seconds).

    Raises:
        ValueError: not a positive duration.
    """
    s = text.strip()
    try:
        value = float(s)
    except ValueError:
        pos, value = 0, 0.0
        for m in _DURATION_RE.finditer(s):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(s) or not s:
            raise ValueError(f"{text!r} is not a duration (examples: 60s, 5m, 1h30m, 7d)") from None
    if value <= 0:
        raise ValueError(f"{text!r}: a duration must be positive")
    return value


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from ``now``, ``now-1h``, ``-7d`` (before now), ``+1h``, Unix seconds
    (``1767225600``) or RFC 3339 (``2026-01-01T00:00:00Z``; no offset means UTC).

    Raises:
        ValueError: none of those forms.
    """
    s = text.strip()
    current = time.time() if now is None else now
    if s == "now":
        return current
    if s.startswith("now"):
        s = s[3:]
    if s[:1] in ("-", "+") and s[1:2].isdigit() and not re.fullmatch(r"[-+]\d+(\.\d+)?", s):
        sign = -1.0 if s[0] == "-" else 1.0
        return current + sign * parse_duration(s[1:])
    try:
        return float(s)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use RFC 3339 (2026-01-01T00:00:00Z), Unix "
                         f"seconds, 'now' or a relative time (-7d, -2h30m)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()
