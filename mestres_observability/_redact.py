"""Redaction and JSON-safe cleaning of log fields (private).

One pass over an event dict does three things, at any nesting depth:

* **redaction by key**: a key matching one of the configured names
  (case-insensitive, ``-`` and ``_`` alike, the whole key or a ``_``-suffix,
  so ``access_token`` matches ``token`` but ``tokens_used`` does not) has its
  value replaced by ``[REDACTED]``;
* **redaction by value** in strings (never in numbers): payment card numbers
  (13-19 digits, optionally grouped by spaces or dashes, passing the Luhn check),
  ``Bearer``/``Basic`` credentials, JSON Web Tokens, the password of a
  ``scheme://user:password@host`` URL, and ``key=value`` pairs whose key is a
  redacted name (``?token=...``). ``trace_id``, ``span_id`` and
  ``request_id`` are never scanned;
* **cleaning**: every value becomes JSON-safe (``Decimal`` and finite floats
  as numbers, ``nan``/``inf`` as strings, unknown objects through ``str``),
  long strings are truncated with a marker, and a value whose ``str`` raises
  becomes a marker instead of an exception.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

__all__ = ["REDACTED", "Redactor", "luhn_ok", "normalise_key"]

REDACTED = "[REDACTED]"
#: Keys never scanned for card numbers or tokens (correlation ids).
EXEMPT_KEYS = frozenset({"trace_id", "span_id", "request_id", "parent_span_id"})
_MAX_DEPTH = 8
_MAX_INT = 2**63  # larger ints are logged as (truncated) text
_CACHE_TEXT_LENGTH = 64
_CACHE_TEXT_ITEMS = 1024
_MAX_ITEMS = 200

_CARD_RE = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
_BEARER_RE = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{6,}")
_JWT_RE = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_URL_PASS_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)[^@/?#\s]+@")


def normalise_key(key: str) -> str:
    """Lower-case ``key`` and treat ``-`` as ``_``."""
    return key.lower().replace("-", "_")


def luhn_ok(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_sub(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = text.replace(" ", "").replace("-", "")
    if 13 <= len(digits) <= 19 and luhn_ok(digits):
        return REDACTED
    return text


class Redactor:
    """Redacts, cleans and truncates log fields (see the module docstring).

    Args:
        keys: names whose values are redacted.
        card_numbers: also redact Luhn-valid 13-19 digit numbers in strings.
        max_length: strings longer than this are truncated with a marker.
    """

    def __init__(self, keys: Iterable[str], *, card_numbers: bool = True,
                 max_length: int = 4096) -> None:
        self.keys = frozenset(normalise_key(k) for k in keys if k)
        self.card_numbers = card_numbers
        self.max_length = max_length
        self._key_cache: dict[str, bool] = {}
        # short strings already scanned and found free of secrets (event and logger
        # names, statuses ...): a set lookup instead of a scan; never holds a redacted one
        self._clean_text: set[str] = set()
        alternatives = "|".join(sorted((re.escape(k) for k in self.keys), key=len, reverse=True))
        self._pair_re: re.Pattern[str] | None = None
        self._header_re: re.Pattern[str] | None = None
        if alternatives:
            sep = r"[-_]"
            name = rf"(?:[A-Za-z0-9]+{sep})*(?:{alternatives.replace('_', sep)})"
            self._pair_re = re.compile(
                rf"(?i)(?<![A-Za-z0-9])({name})([\"']?\s*=\s*)(\"[^\"]*\"|'[^']*'|[^\s&;,\"']+)"
            )
            self._header_re = re.compile(
                rf"(?i)(?<![A-Za-z0-9])({name})([\"']?\s*:\s*)([^\r\n\u2028\u2029]+)"
            )

    # ------------------------------------------------------------------ keys
    def sensitive_key(self, key: str) -> bool:
        """True when values under ``key`` must be redacted."""
        cached = self._key_cache.get(key)
        if cached is not None:
            return cached
        norm = normalise_key(key)
        hit = norm in self.keys or any(norm.endswith("_" + k) for k in self.keys)
        if len(self._key_cache) < 4096:
            self._key_cache[key] = hit
        return hit

    # ------------------------------------------------------------------ values
    def scrub_text(self, text: str) -> str:
        """Redact secrets found inside a free-text string (not truncated)."""
        if self.card_numbers and len(text) >= 13:
            text = _CARD_RE.sub(_card_sub, text)
        if "eyJ" in text:
            text = _JWT_RE.sub(REDACTED, text)
        if " " in text or "\t" in text:
            text = _BEARER_RE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
        if "@" in text and "://" in text:
            text = _URL_PASS_RE.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
        if self._pair_re is not None and "=" in text:
            text = self._pair_re.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        if self._header_re is not None and ":" in text:
            text = self._header_re.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        return text

    def truncate(self, text: str) -> str:
        """Cut ``text`` to ``max_length`` characters plus a marker."""
        if len(text) <= self.max_length:
            return text
        return f"{text[: self.max_length]}...[truncated {len(text) - self.max_length} chars]"

    def clean(self, value: Any, key: str | None = None, depth: int = 0) -> Any:
        """Return a JSON-safe, redacted, bounded copy of ``value``. Never raises."""
        try:
            return self._clean(value, key, depth)
        except Exception as exc:  # a hostile __str__, __iter__, __eq__ ...
            return f"<unrepresentable {_type_name(value)}: {type(exc).__name__}>"

    def _clean(self, value: Any, key: str | None, depth: int) -> Any:
        if value is None or value is True or value is False:
            return value
        t = type(value)
        if t is str:
            if key is not None and key in EXEMPT_KEYS:
                return self.truncate(value)
            return self.truncate(self.scrub_text(value))
        if t is int:
            # never Luhn-checked: only strings are (epoch-millisecond timestamps and
            # numeric ids of 13-19 digits would otherwise lose one value in ten)
            if abs(value) > _MAX_INT:
                return self.truncate(str(value))
            return value
        if t is float:
            return value if math.isfinite(value) else str(value)
        if isinstance(value, Decimal):
            f = float(value)
            return f if math.isfinite(f) else str(value)
        if isinstance(value, Mapping):
            if depth >= _MAX_DEPTH:
                return "<max depth>"
            out: dict[str, Any] = {}
            for i, (k, v) in enumerate(value.items()):
                if i >= _MAX_ITEMS:
                    out["..."] = f"[{len(value) - _MAX_ITEMS} more keys]"
                    break
                ks = k if type(k) is str else self.clean(k, None, depth + 1)
                ks = ks if isinstance(ks, str) else str(ks)
                ks = self.truncate(ks)
                out[ks] = REDACTED if self.sensitive_key(ks) else self.clean(v, ks, depth + 1)
            return out
        if isinstance(value, (list, tuple, set, frozenset)):
            if depth >= _MAX_DEPTH:
                return "<max depth>"
            items = list(value)
            if len(items) == 2 and isinstance(items[0], str) and self.sensitive_key(items[0]):
                return [self.truncate(items[0]), REDACTED]  # a (header, value) pair
            cleaned = [self.clean(v, key, depth + 1) for v in items[:_MAX_ITEMS]]
            if len(items) > _MAX_ITEMS:
                cleaned.append(f"[{len(items) - _MAX_ITEMS} more items]")
            return cleaned
        if isinstance(value, int):  # bool handled above; IntEnum and friends
            return self._clean(int(value), key, depth)
        if isinstance(value, float):
            return self._clean(float(value), key, depth)
        if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
            return value.isoformat()
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self.truncate(self.scrub_text(repr(bytes(value))))
        if isinstance(value, BaseException):
            return self.truncate(self.scrub_text(f"{type(value).__name__}: {value}"))
        return self.truncate(self.scrub_text(str(value)))

    def clean_event(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Clean a whole event dict (top-level keys redacted like nested ones).

        Same result as :meth:`clean` on each value; the common scalar types are
        handled inline (this runs once per log line).
        """
        out: dict[str, Any] = {}
        cache = self._key_cache
        known_clean = self._clean_text
        max_length = self.max_length
        for k, v in event.items():
            ks = k if type(k) is str else str(k)
            hit = cache.get(ks)
            if hit is None:
                hit = self.sensitive_key(ks)
            if hit and ks not in EXEMPT_KEYS:
                out[ks] = REDACTED
                continue
            t = type(v)
            if t is str:
                if v in known_clean or ks in EXEMPT_KEYS:
                    pass
                elif len(v) <= _CACHE_TEXT_LENGTH:
                    scrubbed = self.scrub_text(v)
                    if scrubbed == v:
                        if len(known_clean) >= _CACHE_TEXT_ITEMS:
                            known_clean.clear()
                        known_clean.add(v)
                    v = scrubbed
                else:
                    v = self.scrub_text(v)
                out[ks] = v if len(v) <= max_length else self.truncate(v)
            elif (v is None or t is bool or (t is int and -_MAX_INT <= v <= _MAX_INT)
                  or (t is float and v - v == 0.0)):  # finite float
                out[ks] = v
            else:
                out[ks] = self.clean(v, ks, 0)
        return out


def _type_name(value: Any) -> str:
    try:
        return type(value).__name__
    except Exception:  # pragma: no cover
        return "object"
