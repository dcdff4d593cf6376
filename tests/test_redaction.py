"""Redaction of secrets in log fields: keys at any depth, card numbers, tokens in text."""

from __future__ import annotations

import json
from decimal import Decimal
from unittest import mock

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mestres_observability import _redact
from mestres_observability._redact import (
    _CARD_RE,
    EXEMPT_KEYS,
    REDACTED,
    Redactor,
    luhn_ok,
    may_hold_card,
)
from mestres_observability.config import DEFAULT_REDACT_KEYS

R = Redactor(DEFAULT_REDACT_KEYS)


@pytest.mark.parametrize("key", [
    "password", "PASSWORD", "Set-Cookie", "set_cookie", "api-key", "X_API_KEY", "access_token",
    "card_number", "cvv", "Authorization", "db_password", "passwd", "secret", "token", "cookie",
    "api_key", "set-cookie", "Card-Number", "CVV",
])
def test_sensitive_keys(key: str) -> None:
    assert R.clean_event({key: "s3cr3t-value"})[key] == REDACTED


@pytest.mark.parametrize("key", ["tokens_used", "passwordless", "author", "cookies_accepted_at",
                                 "event", "level"])
def test_similar_keys_survive(key: str) -> None:
    assert R.clean_event({key: "visible"})[key] == "visible"


def test_nested_and_in_lists() -> None:
    out = R.clean_event({
        "payment": {"card_number": "4111111111111111", "meta": [{"token": "t"}]},
        "headers": [("Set-Cookie", "a=b")],
        "ok": {"tokens_used": 5},
    })
    assert out["payment"]["card_number"] == REDACTED
    assert out["payment"]["meta"][0]["token"] == REDACTED
    assert out["ok"]["tokens_used"] == 5
    assert "a=b" not in json.dumps(out)


@pytest.mark.parametrize(("text", "secret"), [
    ("paid with 4111 1111 1111 1111 today", "4111 1111 1111 1111"),
    ("card=5500-0000-0000-0004", "5500-0000-0000-0004"),
    ("Authorization: Bearer abcdef123456", "abcdef123456"),
    ("connect postgres://app:hunter2@db:5432/shop", "hunter2"),
    ("GET /cb?code=1&token=s3cr3tvalue&x=1", "s3cr3tvalue"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "eyJzdWIiOiIxIn0"),
    ('{"password": "hunter2"}', "hunter2"),
])
def test_secrets_inside_text(text: str, secret: str) -> None:
    assert secret not in R.clean(text)


def test_luhn_only_for_valid_numbers_and_never_for_ids() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert R.clean("order 4111111111111112") == "order 4111111111111112"
    # numbers are never Luhn-checked (issue 3: strings only), so epoch-millisecond
    # timestamps and numeric ids that happen to pass Luhn survive, inline path included
    assert R.clean(4111111111111111) == 4111111111111111
    assert R.clean_event({"at_ms": 1764400000006, "id": 4111111111111111,
                          "nested": {"ids": [4111111111111111]}}) == {
        "at_ms": 1764400000006, "id": 4111111111111111, "nested": {"ids": [4111111111111111]}}
    assert R.clean_event({"card_number": 4111111111111111})["card_number"] == REDACTED  # by key
    ids = {"trace_id": "4111111111111111", "span_id": "4111111111111111",
           "request_id": "4111111111111111"}
    assert R.clean_event(ids) == ids
    off = Redactor(DEFAULT_REDACT_KEYS, card_numbers=False)
    assert off.clean("4111111111111111") == "4111111111111111"


def test_cleaning_makes_values_json_safe() -> None:
    class Bad:
        def __str__(self) -> str:
            raise ValueError("no")

    loop: dict[str, object] = {}
    loop["self"] = loop
    out = R.clean_event({"money": Decimal("19.99"), "nan": float("nan"), "inf": Decimal("Infinity"),
                         "bad": Bad(), "loop": loop, "bytes": b"\x00\xff", "big": 10**400})
    text = json.dumps(out, allow_nan=False)
    assert out["money"] == 19.99
    assert out["nan"] == "nan"
    assert out["bad"].startswith("<unrepresentable")
    assert "<max depth>" in text


def test_truncation_marker() -> None:
    r = Redactor((), max_length=16)
    out = r.clean("a" * 100)
    assert out.startswith("a" * 16)
    assert out.endswith("[truncated 84 chars]")


secrets = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=12,
                  max_size=30)


@settings(max_examples=200, deadline=None)
@given(secret=secrets, noise=st.text(max_size=200),
       key=st.sampled_from(["password", "api_key", "Authorization", "session", "x-auth-token"]),
       depth=st.integers(0, 5))
def test_property_redacted_value_never_in_output(secret: str, noise: str, key: str,
                                                 depth: int) -> None:
    assume(secret not in key)
    value: object = {key: secret, "note": noise}
    for _ in range(depth):
        value = {"nested": [value]}
    out = json.dumps(R.clean_event({"event": noise, "data": value}), ensure_ascii=True)
    if secret not in noise and secret not in json.dumps(noise):
        assert secret not in out


_event_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(),
    st.text(max_size=90), st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from(["4111 1111 1111 1111", "Bearer abcdefghijklmnop", "token=abc123",
                     "https://u:pw@h/x", "eyJhbGciOi.eyJzdWIiOiIx.sig", "paid", "BRL",
                     "x" * 70, 4111111111111111, -(10**12), 10**12 - 1]),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(event=st.dictionaries(
    st.one_of(st.sampled_from(["event", "trace_id", "request_id", "password", "note", "card"]),
              st.text(max_size=10)),
    _event_values, max_size=8))
def test_property_clean_event_matches_clean_and_caches_only_clean_text(
    event: dict[str, object],
) -> None:
    r = Redactor(DEFAULT_REDACT_KEYS, max_length=64)
    reference = {k: REDACTED if r.sensitive_key(k) and k not in EXEMPT_KEYS else r.clean(v, k)
                 for k, v in event.items()}
    first = r.clean_event(event)
    second = r.clean_event(event)  # answered from the clean-text cache where it applies
    assert json.dumps(first, sort_keys=True) == json.dumps(reference, sort_keys=True)
    assert json.dumps(second, sort_keys=True) == json.dumps(reference, sort_keys=True)
    assert all(r.scrub_text(text) == text for text in r._clean_text)


# ---------------------------------------------------------------------- card pre-check
#: text made of what the card expression looks at (digits, its separators) and what breaks
#: a run (letters, other separators, a non-ASCII digit, U+2028), so runs of every length
#: and every way of splitting them come up
_CARDISH = st.text(alphabet=st.sampled_from("0123456789 -  --x./\u0663\u2028\t"),
                   max_size=60)


@settings(max_examples=3000, deadline=None)
@given(text=st.one_of(_CARDISH, st.text(max_size=60)))
def test_the_card_pre_check_never_misses_a_match(text: str) -> None:
    """may_hold_card() is the gate in front of the card expression in scrub_text: when it
    says no, the expression must find nothing, and the scrubbed text is the same as the
    expression's."""
    if not may_hold_card(text):
        assert _CARD_RE.search(text) is None
    red = Redactor(frozenset({"password"}))
    with mock.patch.object(_redact, "_CARD_RUN", b""):  # the gate always open
        reference = red.scrub_text(text)
    assert red.scrub_text(text) == reference


@pytest.mark.parametrize(("text", "expected"), [
    ("4111 1111 1111 1111", True),           # a card with spaces
    ("4111-1111-1111-1111", True),           # with hyphens
    ("4111111111111", True),                  # 13 digits
    ("411111111111", False),                  # 12 digits
    ("4111 1111 111x 1111", False),           # broken by a letter
    ("0f8e2c1a-4b7d-4e21-9a3c-5d6e7f809a1b", False),  # a request id
    ("12345678-1234-4123-8123-123456789012", True),    # a request id the expression reads
])
def test_the_card_pre_check_on_known_text(text: str, expected: bool) -> None:
    assert may_hold_card(text) is expected
    if not expected:
        assert _CARD_RE.search(text) is None
