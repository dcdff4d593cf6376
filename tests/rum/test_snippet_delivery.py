"""How the snippet delivers its reports, in a real browser (Debian's headless Chromium).

Three behaviours of ``rum.js`` between the page and the endpoint:

* the **retry queue**: a batch that could not be sent (network error, 5xx,
  429) waits in ``localStorage`` (at most 50 events, the newest) and goes out on
  a later page load, at most three of them; a batch the endpoint refused as
  invalid (400, 413) is not kept;
* **Retry-After** on a 429 or 503: nothing is sent before it has passed, on
  this page or a later one (seconds or an HTTP date, capped at an hour, 60 s
  without the header), and page loads while waiting do not use up the retries;
* the **sample rate** (``data-sample-rate``, else the served ``rum_sample_rate``):
  one draw of ``Math.random`` per page load decides; a view not sampled sends
  nothing at all.

Playwright's request routing stands in for a failing endpoint (it sees the
``fetch`` of a visible page; a page hide's ``sendBeacon`` bypasses it and goes
to the shop, which records it), its clock (``context.clock``) moves time
forward, and an init script fixes ``Math.random`` for the sampling draw. Reports
are forced out while the page is visible with ``mestresRUM.flush()``: that is the
``fetch`` path, whose answer the snippet reads.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.rum._browser import READY, RUM_PATH, Shop, running_shop

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "mestresRUM"  # the snippet's localStorage key


class Endpoint:
    """The RUM endpoint as the page's ``fetch`` sees it: passed to the shop, or failing.

    ``answer`` is ``None`` (pass through), ``"abort"`` (a network error) or
    ``(status, headers)``; ``seen`` keeps the ``n`` of every ``checkout_started``
    event of each request that reached the route, whatever the answer.
    """

    def __init__(self, context: Any, shop: Shop) -> None:
        self.answer: Any = None
        self.seen: list[list[int]] = []
        context.route(shop.base + RUM_PATH, self._handle)

    def _handle(self, route: Any) -> None:
        request = route.request
        if request.method == "POST":
            self.seen.append(numbers(json.loads(request.post_data)["events"]))
        if self.answer is None:
            route.continue_()
        elif self.answer == "abort":
            route.abort("connectionrefused")
        else:
            status, headers = self.answer
            route.fulfill(status=status, headers=headers, content_type="application/json",
                          body='{"error": "test"}')

    def tried(self) -> list[int]:
        return [n for batch in self.seen for n in batch]


def numbers(events: list[dict[str, Any]]) -> list[int]:
    """The ``n`` of each ``checkout_started`` business event: the tests' own reports."""
    return [e["data"]["data"]["n"] for e in events
            if e["type"] == "business_events" and e["data"].get("event") == "checkout_started"]


def delivered(shop: Shop) -> list[int]:
    return numbers(shop.events())


def stored(page: Any) -> dict[str, Any] | None:
    """What the snippet keeps in ``localStorage``: ``{"u": deadline, "n": tries, "q": events}``."""
    result: dict[str, Any] | None = page.evaluate(f"JSON.parse(localStorage.getItem('{KEY}'))")
    return result


def queued(page: Any) -> list[int]:
    st = stored(page)
    return numbers(st["q"]) if st else []


def track(page: Any, *ns: int) -> None:
    """``checkout_started`` events numbered ``ns``, then ``flush()`` (``fetch``: the page is visible)."""
    page.evaluate("""ns => { ns.forEach(n => mestresRUM.trackBusinessEvent('checkout_started',
                                                                          {n: n}));
                           mestresRUM.flush(); }""", list(ns))


def until(page: Any, predicate: Any, what: str, timeout: float = 20.0) -> None:
    """Wait for ``predicate`` while Playwright runs (route handlers only run inside its calls)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        page.wait_for_timeout(100)


def load(page: Any, shop: Shop, path: str) -> None:
    page.goto(shop.base + path)
    page.wait_for_function(READY)


def send_queue_from(page: Any, shop: Shop, path: str, n: int, what: str) -> None:
    """Load ``path`` (the page takes the stored queue over), ``flush()``, and wait until
    report ``n`` has been delivered."""
    load(page, shop, path)
    page.evaluate("mestresRUM.flush()")
    until(page, lambda: n in delivered(shop), what)


def wait_queued(page: Any, *ns: int) -> None:
    """Until the snippet has put each of ``ns`` in ``localStorage`` (a failed answer is read
    asynchronously)."""
    page.wait_for_function(
        f"""ns => {{ const s = JSON.parse(localStorage.getItem('{KEY}') || '{{"q": []}}');
                   const have = s.q.filter(e => e.type === 'business_events')
                                   .map(e => e.data.data.n);
                   return ns.every(n => have.includes(n)); }}""", arg=list(ns))


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context()
    try:
        yield ctx
    finally:
        ctx.close()


# ---------------------------------------------------------------------- the retry queue
FAILURES = {
    "network-error": "abort",
    "500": (500, {}),
    "503-retry-after-0": (503, {"Retry-After": "0"}),
    "429-retry-after-1": (429, {"Retry-After": "1"}),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_batch_that_could_not_be_sent_goes_on_the_next_page_load(
        context: Any, shop: Shop, failure: str) -> None:
    context.clock.install()
    endpoint = Endpoint(context, shop)
    page = context.new_page()
    load(page, shop, "/")
    endpoint.answer = FAILURES[failure]
    track(page, 1)
    wait_queued(page, 1)
    assert endpoint.tried() == [1]
    st = stored(page)
    assert st is not None
    (kept,) = [e for e in st["q"] if numbers([e])]

    endpoint.answer = None
    context.clock.fast_forward("01:01")  # past any deadline a 5xx without Retry-After sets
    load(page, shop, "/shop/espresso")   # the next page load takes the queue over
    assert stored(page) is None
    context.clock.fast_forward(5_000)    # and sends it 5 s later
    until(page, lambda: 1 in delivered(shop), "the queued report")
    page.wait_for_timeout(300)
    assert delivered(shop) == [1]
    (sent,) = [e for e in shop.events() if numbers([e])]
    assert sent == kept  # as it was: the first page's url, timestamp and id
    assert sent["data"]["url"] == "/"
    assert shop.sample("rum_business_events_total", event="checkout_started") == 1
    assert queued(page) == []


@pytest.mark.parametrize("status", [400, 413])
def test_a_batch_refused_as_invalid_is_not_kept(context: Any, shop: Shop, status: int) -> None:
    endpoint = Endpoint(context, shop)
    page = context.new_page()
    load(page, shop, "/")
    endpoint.answer = (status, {})
    track(page, 1)
    until(page, lambda: endpoint.tried() == [1], "the refused request")
    page.wait_for_timeout(200)
    endpoint.answer = "abort"  # a later failure is kept, the refused batch is not among it
    track(page, 2)
    wait_queued(page, 2)
    page.wait_for_timeout(200)
    assert queued(page) == [2]
    endpoint.answer = None
    send_queue_from(page, shop, "/shop/espresso", 2, "the kept report")
    assert delivered(shop) == [2]


def test_the_queue_keeps_the_newest_50_events(context: Any, shop: Shop) -> None:
    endpoint = Endpoint(context, shop)
    page = context.new_page()
    load(page, shop, "/")
    endpoint.answer = "abort"
    track(page, *range(1, 81))  # 50 queued are sent at once, and fail; then the other 30
    wait_queued(page, 80)
    st = stored(page)
    assert st is not None
    assert len(st["q"]) == 50
    assert numbers(st["q"]) == list(range(31, 81))
    assert len(json.dumps(st)) < 20_000

    endpoint.answer = None
    send_queue_from(page, shop, "/shop/espresso", 80, "the queued reports")
    assert sorted(delivered(shop)) == list(range(31, 81))
    assert shop.sample("rum_business_events_total", event="checkout_started") == 50


def test_a_queue_is_dropped_after_three_more_page_loads_that_fail(context: Any,
                                                                  shop: Shop) -> None:
    endpoint = Endpoint(context, shop)
    endpoint.answer = "abort"  # a network error: no Retry-After deadline
    page = context.new_page()
    load(page, shop, "/")
    track(page, 1)
    wait_queued(page, 1)
    for attempt in range(3):  # three later page loads retry it, and fail again
        load(page, shop, "/shop/espresso")
        assert stored(page) is None
        page.evaluate("mestresRUM.flush()")
        until(page, lambda n=attempt: endpoint.tried().count(1) == n + 2, "a retry")
        wait_queued(page, 1)
    load(page, shop, "/shop/cappuccino")  # the fourth drops it
    page.evaluate("mestresRUM.flush()")
    page.wait_for_timeout(300)
    assert endpoint.tried() == [1, 1, 1, 1]
    assert queued(page) == []

    # what fails after the drop is kept and retried afresh, not dropped with the old queue
    track(page, 2)
    wait_queued(page, 2)
    endpoint.answer = None
    send_queue_from(page, shop, "/", 2, "the report queued after the drop")
    assert delivered(shop) == [2]


# ---------------------------------------------------------------------- Retry-After
def http_date(page: Any, seconds: float) -> str:
    """An HTTP date ``seconds`` after the page's (fake) clock."""
    now = page.evaluate("Date.now()") / 1000
    return email.utils.formatdate(now + seconds, usegmt=True)


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_nothing_is_sent_before_retry_after_has_passed(context: Any, shop: Shop, status: int,
                                                       form: str) -> None:
    context.clock.install()
    endpoint = Endpoint(context, shop)
    page = context.new_page()
    load(page, shop, "/")
    retry_after = "120" if form == "seconds" else http_date(page, 121)
    endpoint.answer = (status, {"Retry-After": retry_after})
    started = page.evaluate("Date.now()")
    track(page, 1)
    wait_queued(page, 1)
    st = stored(page)
    assert st is not None
    assert 119_000 <= st["u"] - started <= 122_000  # the deadline is kept with the queue

    endpoint.answer = None  # the endpoint would take them now: the snippet waits all the same
    track(page, 2)          # kept at once, not sent
    assert queued(page) == [1, 2]
    for path in ("/shop/espresso", "/", "/shop/cappuccino", "/shop/espresso"):
        context.clock.fast_forward(20_000)
        load(page, shop, path)  # four loads while waiting: not sent, no try used up
        track(page)
        context.clock.fast_forward(5_000)
        assert queued(page) == [1, 2], path
    page.wait_for_timeout(300)
    assert endpoint.tried() == [1]
    assert delivered(shop) == []  # not as a beacon on page hide either

    context.clock.fast_forward(25_000)  # 125 s: the deadline has passed
    track(page, 3)                      # this page sends again
    until(page, lambda: 3 in delivered(shop), "a report after the deadline")
    load(page, shop, "/")               # the next load sends the queue
    track(page)
    until(page, lambda: {1, 2} <= set(delivered(shop)), "the queued reports")
    assert sorted(delivered(shop)) == [1, 2, 3]
    assert shop.sample("rum_business_events_total", event="checkout_started") == 3


@pytest.mark.parametrize(("retry_after", "wait"), [
    (None, 60_000),        # no header: 60 s
    ("0", 0),              # now
    ("86400", 3_600_000),  # a day: capped at an hour
    ("soon", 60_000),      # not a number nor a date: 60 s
    ("date", 120_000),     # an HTTP date 120 s ahead
])
def test_the_wait_retry_after_sets(context: Any, shop: Shop, retry_after: str | None,
                                   wait: int) -> None:
    context.clock.install()
    endpoint = Endpoint(context, shop)
    page = context.new_page()
    load(page, shop, "/")
    if retry_after == "date":
        retry_after = http_date(page, 120)
    endpoint.answer = (429, {"Retry-After": retry_after} if retry_after else {})
    track(page, 1)
    wait_queued(page, 1)
    endpoint.answer = None
    if wait:
        context.clock.fast_forward(wait - 2_000)
        track(page, 2)
        assert queued(page) == [1, 2]  # still waiting
        context.clock.fast_forward(3_000)
    track(page, 3)
    until(page, lambda: 3 in delivered(shop), "the report after the wait")
    assert endpoint.tried() == [1, 3]


# ---------------------------------------------------------------------- sampling
def sampling_page(attribute: str | None) -> str:
    tag = "" if attribute is None else f' data-sample-rate="{attribute}"'
    return ('<!doctype html><html><head><meta charset="utf-8"><title>sampling</title>'
            f'<script src="/observability/rum.js"{tag} async></script></head>'
            "<body><h1>sampling</h1><p>One draw decides.</p></body></html>")


def draws(first: float, then: float) -> str:
    """Init script: the page's first ``Math.random()`` returns ``first``, later ones ``then``
    (the snippet draws once for sampling before anything else; later draws make ids)."""
    return f"""(() => {{ let calls = 0;
        Math.random = () => (calls++ === 0 ? {first!r} : {then!r}); }})();"""


def serve(context: Any, shop: Shop, path: str, html: str) -> None:
    context.route(shop.base + path, lambda route: route.fulfill(
        status=200, content_type="text/html; charset=utf-8", body=html))


SAMPLING = [  # (rum_sample_rate, data-sample-rate, first draw, the view reports)
    (1.0, "0", 0.0, False),
    (1.0, "1", 0.999999, True),
    (1.0, "0.25", 0.2499, True),
    (1.0, "0.25", 0.25, False),
    (1.0, None, 0.999999, True),   # the defaults: everything
    (0.0, None, 0.0, False),       # the setting, served in the script
    (0.0, "1", 0.5, True),         # the attribute wins
    (0.5, None, 0.4999, True),
    (0.5, None, 0.5, False),
    (0.5, "1.5", 0.6, False),      # not a rate: the setting applies
    (0.5, "", 0.4999, True),
]


@pytest.mark.parametrize(("setting", "attribute", "draw", "reports"), SAMPLING)
def test_the_sample_rate_decides_once_per_page_load(browser: Any, setting: float,
                                                    attribute: str | None, draw: float,
                                                    reports: bool) -> None:
    with running_shop(rum_sample_rate=setting) as shop:
        context = browser.new_context()
        try:
            errors: list[str] = []
            context.add_init_script(draws(draw, 0.0 if not reports else 0.999999))
            serve(context, shop, "/sampling/page", sampling_page(attribute))
            serve(context, shop, "/sampling/control", sampling_page("1"))
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            load(page, shop, "/sampling/page")
            # several batches: a later draw (the opposite answer) never changes the decision
            track(page, 1)
            page.wait_for_timeout(100)
            track(page, 2)
            page.evaluate("mestresRUM.trackBusinessEvent('checkout_started', {n: 3})")
            assert page.evaluate("typeof mestresRUM.flush + typeof mestresRUM.trackBusinessEvent") \
                == "functionfunction"
            # hidden: its beacon; then a view sampled in, whose report shows the shop is reached
            load(page, shop, "/sampling/control")
            page.evaluate("mestresRUM.trackBusinessEvent('checkout_started', {n: 4})")
            page.goto("about:blank")
            until(page, lambda: 4 in delivered(shop), "the control view's report")
            until(page, lambda: not reports or len(delivered(shop)) == 4, "the sampled view's reports")
            page.wait_for_timeout(300)
            sampled = [e for e in shop.events() if e["data"].get("url") == "/sampling/page"]
            if reports:
                assert sorted(delivered(shop)) == [1, 2, 3, 4]
                assert {e["type"] for e in sampled} >= {"business_events", "web_vitals"}
            else:
                assert delivered(shop) == [4]
                assert sampled == []
            assert errors == []
        finally:
            context.close()


def test_a_view_not_sampled_keeps_an_earlier_queue_for_a_sampled_one(context: Any,
                                                                      shop: Shop) -> None:
    endpoint = Endpoint(context, shop)
    serve(context, shop, "/sampling/out", sampling_page("0"))
    page = context.new_page()
    load(page, shop, "/")
    endpoint.answer = "abort"
    track(page, 1)
    wait_queued(page, 1)
    endpoint.answer = None
    load(page, shop, "/sampling/out")  # sends nothing: not the queue either, which it leaves
    page.evaluate("mestresRUM.flush()")
    page.wait_for_timeout(300)
    assert queued(page) == [1]
    assert endpoint.tried() == [1]
    send_queue_from(page, shop, "/shop/espresso", 1, "the queued report")
    assert endpoint.tried() == [1, 1]
