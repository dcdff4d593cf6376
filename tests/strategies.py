"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import strategies as st

#: Any label text: quotes, backslashes, newlines, NUL, emoji, lone surrogates, empty, very long.
label_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from(['"', "\\", "\n", "\r", "\x00", "\u2028", "☕", "é", "{", "}",
                                      "=", ","]), max_size=20),
    st.text(min_size=129, max_size=400),
    st.just(""),
    st.just("\ud800"),
    st.builds(lambda s: s + "\udfff", st.text(max_size=5)),
)

money = st.one_of(
    st.decimals(min_value=Decimal("0"), max_value=Decimal("100000"), places=2,
                allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=10**6),
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
)

statuses = st.sampled_from(["paid", "pending", "cancelled", "shipped", "refunded"])

items = st.lists(
    st.fixed_dictionaries({
        "product_id": st.sampled_from(["espresso", "latte", "beans-1kg", "mug", "filter"]),
        "quantity": st.integers(min_value=0, max_value=20),
    }),
    max_size=5,
)

orders = st.fixed_dictionaries({"status": statuses, "total_amount": money, "items": items})
