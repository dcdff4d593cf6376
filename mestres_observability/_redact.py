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
import urllib.parse
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

__all__ = ["REDACTED", "QueryRedactor", "Redactor", "SpanScrubber", "combine_patterns", "luhn_ok",
           "normalise_key"]

REDACTED = "[REDACTED]"
#: Keys never scanned for card numbers or tokens (correlation ids).
EXEMPT_KEYS = frozenset({"trace_id", "span_id", "request_id", "parent_span_id"})
_MAX_DEPTH = 8
_MAX_INT = 2**63  # larger ints are logged as (truncated) text
_CACHE_TEXT_LENGTH = 64
_CACHE_TEXT_ITEMS = 1024
_MAX_ITEMS = 200

_CARD_RE = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
#: for :func:`may_hold_card`: each ASCII digit as ``0`` (the separators ``_CARD_RE`` allows
#: between digits, space and hyphen, are dropped by the call)
_CARD_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_CARD_RUN = b"0" * 13  # the fewest digits a card number has
_BEARER_RE = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{6,}")
_JWT_RE = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_URL_PASS_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)[^@/?#\s]+@")
# a whole value that is an Authorization header value, however short its credential
_AUTH_VALUE_RE = re.compile(r"(?i)\s*(?:bearer|basic|digest|token)\s+\S")


_GLOBAL_FLAGS = re.compile(r"\(\?([aiLmsux]+)\)")


def combine_patterns(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """``patterns`` as one compiled alternation (each in its own non-capturing group), or
    ``None`` when there are none. Raises ``re.error`` for a bad one."""
    items = []
    for p in patterns:
        if not p:
            continue
        re.compile(p)  # name the bad one in the error, not the combination
        m = _GLOBAL_FLAGS.match(p)
        # ``(?i)abc`` applies to its own alternative only: ``(?i:abc)``
        items.append(f"(?{m.group(1)}:{p[m.end():]})" if m else f"(?:{p})")
    if not items:
        return None
    return re.compile("|".join(items))


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


def may_hold_card(text: str) -> bool:
    """False when :data:`_CARD_RE` cannot match in ``text``; True when it may.

    A match is 13 to 19 ASCII digits with at most one space or hyphen between two of them,
    so with the digits written as ``0`` and spaces and hyphens dropped it becomes a run of
    at least 13 ``0`` (no other character turns into ``0``; characters outside ASCII are
    dropped too, which can only join runs, never split one). Three C calls where the
    expression would try a match at every digit: most text (ids, paths, agents) has no
    such run and skips the expression.
    """
    return _CARD_RUN in text.encode("ascii", "ignore").translate(_CARD_DIGITS, b" -")


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
        patterns: regular expressions whose matches in strings are redacted
            (``redact_patterns``; validated by the configuration).
    """

    def __init__(self, keys: Iterable[str], *, card_numbers: bool = True,
                 max_length: int = 4096, patterns: Iterable[str] = ()) -> None:
        self.keys = frozenset(normalise_key(k) for k in keys if k)
        self.card_numbers = card_numbers
        self.max_length = max_length
        #: the user's ``redact_patterns`` as one expression (``None``: none given)
        self.patterns = combine_patterns(patterns)
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
        if self.card_numbers and len(text) >= 13 and may_hold_card(text):
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
        if self.patterns is not None:
            text = self.patterns.sub(REDACTED, text)
        return text

    def holds_secret(self, value: str) -> bool:
        """True when :meth:`scrub_text` would redact something in ``value``, or
        ``value`` as a whole is an ``Authorization`` header value (``Bearer x``)."""
        return self.scrub_text(value) != value or _AUTH_VALUE_RE.match(value) is not None

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


# ---------------------------------------------------------------------- query strings
_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_KEY_SEPARATORS = str.maketrans({"-": "_", ".": "_", " ": "_"})
_BRACKETS_RE = re.compile(r"[\[\]]+")
#: names this long or longer also match as a ``_``-suffix (``x_amz_signature``); shorter
#: ones (``key``, ``code``, ``sig``) only as a whole name, so ``country_code`` is kept
_SUFFIX_MIN = 5
#: shorter values cannot hold a card number, a credential, a JWT or a URL with a password
_VALUE_MIN = 7
_KEY_CACHE_ITEMS = 1024


def _percent_decoded(text: str) -> str:
    """``text`` percent-decoded (``+`` as a space), up to three times (double encoding)."""
    for _ in range(3):
        if "%" not in text and "+" not in text:
            break
        decoded = urllib.parse.unquote_plus(text)
        if decoded == text:
            break
        text = decoded
    return text


class QueryRedactor:
    """Redacts secrets in a URL query string, keeping its shape (``key=[REDACTED]``).

    A parameter's value is replaced when its name is sensitive: compared after
    percent-decoding (``+`` as a space), case-insensitively, ``-``, ``.`` and
    ``_`` alike (or left out: ``accesskey``), camelCase split (``accessToken`` is
    ``access_token``), and each part of ``user[password]`` or ``password[]`` on its
    own; a part equal to a listed name matches, and so does a ``_``-suffix of a
    listed name of five or more characters (``x_amz_signature`` matches ``signature``; ``country_code``
    does not match ``code``). Otherwise the value is replaced when, decoded, it
    holds a secret the ``values`` :class:`Redactor` finds: a card number, a
    ``Bearer``/``Basic`` credential, a JWT, a URL with a password or a
    ``key=value`` pair with a sensitive key. Everything else is kept exactly as
    sent (never decoded and re-encoded).

    Args:
        keys: the sensitive parameter names.
        values: the redactor whose value checks apply (None: names only).
    """

    __slots__ = ("_cache", "_clean", "_compact", "_exact", "_suffixes", "_values")

    def __init__(self, keys: Iterable[str], values: Redactor | None = None) -> None:
        names = {self._normalise(k) for k in keys if k}
        names.discard("")
        self._exact = frozenset(names)
        # without separators: ``accesskey`` and ``AccesSKey`` are ``access_key`` too
        self._compact = frozenset(n.replace("_", "") for n in names)
        self._suffixes = frozenset(n for n in names if len(n) >= _SUFFIX_MIN)
        self._values = values
        self._cache: dict[str, bool] = {}
        # short values already checked and found clean (utm tags, sort orders, search
        # terms sent again): a set lookup instead of a decode and a scan
        self._clean: set[str] = set()

    @staticmethod
    def _normalise(name: str) -> str:
        return name.strip().lower().translate(_KEY_SEPARATORS)

    def sensitive(self, name: str) -> bool:
        """True when the values of parameter ``name`` (as sent) are redacted."""
        hit = self._cache.get(name)
        if hit is None:
            hit = self._classify(name)
            if len(self._cache) < _KEY_CACHE_ITEMS:
                self._cache[name] = hit
        return hit

    def _classify(self, name: str) -> bool:
        decoded = _percent_decoded(name)
        for form in {decoded, _CAMEL_RE.sub("_", decoded)}:
            for part in _BRACKETS_RE.split(self._normalise(form)):
                part = part.strip("_ ")
                if not part:
                    continue
                if part in self._exact or part.replace("_", "") in self._compact:
                    return True
                i = part.find("_")
                while i >= 0:
                    if part[i + 1:] in self._suffixes:
                        return True
                    i = part.find("_", i + 1)
        return False

    def _secret_value(self, value: str) -> bool:
        values = self._values
        if values is None or (len(value) < _VALUE_MIN and "=" not in value):
            return False
        clean = self._clean
        if value in clean:
            return False
        if values.holds_secret(_percent_decoded(value) if ("%" in value or "+" in value)
                               else value):
            return True
        if len(value) <= _CACHE_TEXT_LENGTH:
            if len(clean) >= _CACHE_TEXT_ITEMS:
                clean.clear()
            clean.add(value)
        return False

    def __call__(self, query: str) -> str:
        """``query`` with sensitive values replaced by ``[REDACTED]``."""
        if not query:
            return query
        parts = query.split("&")
        changed = False
        for i, part in enumerate(parts):
            if ";" in part:  # some servers split on ``;`` too: judge each piece
                pieces = part.split(";")
                redacted = [self._part(piece) for piece in pieces]
                if redacted != pieces:
                    parts[i] = ";".join(redacted)
                    changed = True
                continue
            out = self._part(part)
            if out is not part:
                parts[i] = out
                changed = True
        return "&".join(parts) if changed else query

    def _part(self, part: str) -> str:
        name, sep, value = part.partition("=")
        if sep:
            if value and (self.sensitive(name) or self._secret_value(value)):
                return f"{name}={REDACTED}"
        elif self._secret_value(name):  # a bare part: ``?eyJ...``
            return REDACTED
        return part


# ---------------------------------------------------------------------- span attributes
#: attributes holding a whole URL (their query string goes through the query redaction)
_URL_ATTRIBUTES = frozenset({"url.full", "http.url", "http.target", "url.original"})
#: attributes holding a bare query string
_QUERY_ATTRIBUTES = frozenset({"url.query"})
#: attributes whose values also pass the query rules: a text found clean under those is
#: remembered apart (clean under the plain rules says nothing about the query rules, nor
#: clean as a URL without ``?`` about the same text as a bare query string)
_QUERY_RULED = _URL_ATTRIBUTES | _QUERY_ATTRIBUTES
_SPAN_CACHE_LENGTH = 512
_SPAN_CACHE_ITEMS = 4096


class SpanScrubber:
    """Redacts span attributes with the rules of the log lines (``scrub_span_attributes``).

    * a key named by ``redact_keys`` (compared on the whole key and on its last
      dotted part, ``-`` and ``_`` alike, as in logs: ``http.request.header.authorization``,
      ``app.user.password``) has its value replaced by ``[REDACTED]`` (each item of
      a list);
    * string values (and the strings of a list) pass :meth:`Redactor.scrub_text`:
      card numbers, credentials, JWTs, URL passwords, ``key=value`` pairs of
      redacted names and the user's ``redact_patterns``;
    * ``url.query`` and the query string of ``url.full`` / ``http.url`` /
      ``http.target`` pass the access log's :class:`QueryRedactor`.

    Numbers and booleans are never scanned (as in logs). Short strings found clean are
    remembered (bounded), so a span of usual values costs set lookups.

    Args:
        values: the redactor of the log lines.
        query: the access log's query-string redactor.
    """

    __slots__ = ("_clean", "_clean_queries", "_clean_urls", "_keys", "_plain", "query",
                 "values")

    def __init__(self, values: Redactor, query: QueryRedactor) -> None:
        self.values = values
        self.query = query
        self._keys: dict[str, bool] = {}
        #: keys known neither redacted whole nor under the query rules (a subset of _keys)
        self._plain: set[str] = set()
        self._clean: set[str] = set()  # clean under the plain rules
        # clean under the rules of url attributes / of url.query, and the plain ones
        self._clean_urls: set[str] = set()
        self._clean_queries: set[str] = set()

    def sensitive_key(self, key: str) -> bool:
        """True when the value of attribute ``key`` is redacted whole."""
        hit = self._keys.get(key)
        if hit is None:
            # ``.`` as a separator too: ``http.request.header.authorization``
            hit = key not in EXEMPT_KEYS and self.values.sensitive_key(key.replace(".", "_"))
            if len(self._keys) < _SPAN_CACHE_ITEMS:
                self._keys[key] = hit
                if not hit and key not in _QUERY_RULED:
                    self._plain.add(key)
        return hit

    def text(self, key: str, text: str) -> str:
        """``text``, the value of attribute ``key``, redacted (the same object when clean)."""
        clean = self._clean
        if key in _QUERY_RULED:
            clean = self._clean_queries if key in _QUERY_ATTRIBUTES else self._clean_urls
        if text in clean:
            return text
        out = text
        if key in _QUERY_ATTRIBUTES:
            out = self.query(out)
        elif key in _URL_ATTRIBUTES and "?" in out:
            base, _, rest = out.partition("?")
            query, hash_sign, fragment = rest.partition("#")
            redacted = self.query(query)
            if redacted is not query:
                out = f"{base}?{redacted}{hash_sign}{fragment}"
        out = self.values.scrub_text(out)
        if out == text:
            if len(text) <= _SPAN_CACHE_LENGTH:
                if len(clean) >= _SPAN_CACHE_ITEMS:
                    clean.clear()
                clean.add(text)
            return text
        return out

    def value(self, key: str, value: Any) -> Any:
        """``value`` of attribute ``key`` redacted (the same object when nothing changed)."""
        if self.sensitive_key(key):
            if isinstance(value, (tuple, list)):
                return tuple(REDACTED for _ in value)
            return REDACTED
        t = type(value)
        if t is str:
            return self.text(key, value)
        if t is tuple or t is list:
            items = [self.text(key, v) if type(v) is str else v for v in value]
            if any(a is not b for a, b in zip(items, value, strict=True)):
                return tuple(items)
        return value

    def attributes(self, attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """A redacted copy of ``attributes``, or ``None`` when nothing needs redacting."""
        if not attributes:
            return None
        out: dict[str, Any] | None = None
        keys = self._keys
        plain = self._plain
        clean = self._clean
        for key, value in attributes.items():
            # :meth:`value`, with the usual cases inline (a known key, a number, a string
            # found clean before): this runs for every attribute of every span
            hit: bool | None = False
            ruled = False
            if key not in plain:  # not known to be neither redacted whole nor query-ruled
                hit = keys.get(key)
                if hit is None:
                    hit = self.sensitive_key(key)
                ruled = key in _QUERY_RULED
            t = type(value)
            if hit:
                new = self.value(key, value)
            elif t is str:
                if value in clean and not ruled:
                    continue
                new = self.text(key, value)
            elif t is int or t is float or t is bool:
                continue
            else:
                new = self.value(key, value)
            if new is not value and new != value:
                if out is None:
                    out = dict(attributes)
                out[key] = new
        return out


def _type_name(value: Any) -> str:
    try:
        return type(value).__name__
    except Exception:  # pragma: no cover
        return "object"
