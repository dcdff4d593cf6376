"""The snippet in a real browser: Debian's headless Chromium driven by Playwright.

The example shop (``examples/coffee_shop.py``) is served on a loopback port
with RUM on; Chromium loads its front page, clicks (so the visit has an INP),
triggers a JavaScript error and a business event, and navigates away. Then
``/metrics`` holds LCP, CLS, INP, FCP and TTFB histograms, the error and
business-event counters, and a RUM exemplar carrying the trace id of the
page's own response (read from its ``Server-Timing`` header). Going back
restores the page from the back/forward cache: its new reports (new ids)
are counted, none twice, and replaying every report the browser sent adds
nothing but duplicates. A second test deletes ``sendBeacon``,
``PerformanceObserver`` and ``localStorage`` before the snippet loads: it
throws nothing.

Needs ``chromium`` (Debian, installed by ``.ci/run``) and the ``playwright``
package (dev extra, pointed at that binary: no browser download).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections import Counter
from typing import Any

import pytest

from tests.rum._browser import Shop, vitals_of, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIMING = re.compile(r'traceparent;desc="00-([0-9a-f]{32})-[0-9a-f]{16}-01"')
PAGES = {"/": "/", "/shop/espresso": "/shop/<product_id>", "/shop/cappuccino": "/shop/<product_id>"}


def test_a_browser_session_reaches_the_metrics_once_per_report(browser: Any, shop: Shop) -> None:
    started = time.monotonic()
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    response = page.goto(shop.base + "/")
    assert response is not None
    assert response.ok
    match = TIMING.fullmatch(response.headers["server-timing"])
    assert match is not None, response.headers
    trace_id = match.group(1)
    page.wait_for_function("window.mestresRUM && window.mestresRUM.v === 1")
    page.click("#add-to-cart")  # a 60 ms handler: an interaction for INP, and add_to_cart
    page.click("#break")        # an uncaught error
    page.click("a[href='/shop/espresso']")
    page.wait_for_url("**/shop/espresso")
    page.wait_for_load_state("load")
    wait_for(lambda: vitals_of(shop.events(), "/") >= {"LCP", "CLS", "INP", "FCP", "TTFB"},
             "the front page's Web Vitals")

    for metric in ("LCP", "INP", "FCP", "TTFB"):
        assert shop.sample("rum_web_vitals_seconds_count", metric=metric, page="/") >= 1, metric
    assert shop.sample("rum_layout_shift_count", page="/") >= 1
    assert shop.sample("rum_js_errors_total", type="javascript", page="/") == 1
    assert shop.sample("rum_business_events_total", event="add_to_cart") == 1
    assert shop.sample("rum_navigation_seconds_count", phase="load", page="/") == 1
    assert shop.sample("rum_resources_total", initiator="script", page="/") >= 1
    inp = shop.sample("rum_web_vitals_seconds_sum", metric="INP", page="/")
    assert 0.05 <= inp < 5  # the handler takes 60 ms
    exemplar = [line for line in shop.scrape().splitlines()
                if line.startswith("rum_web_vitals_seconds_bucket") and 'page="/"' in line
                and f'trace_id="{trace_id}"' in line]
    assert exemplar, "no RUM exemplar with the page's trace id"
    assert set(errors) == {"demo: the checkout widget failed"}  # ours only, none from rum.js

    # the back/forward cache: the front page comes back without loading
    page.go_back(wait_until="commit")
    wait_for(lambda: any(e["data"].get("navigation_type") == "back-forward-cache"
                         for e in shop.events()), "reports of the restored page")
    page.click("a[href='/shop/cappuccino']")
    page.wait_for_url("**/shop/cappuccino")
    page.wait_for_load_state("load")
    page.goto("about:blank")  # hides the last page: its reports go out too
    wait_for(lambda: vitals_of(shop.events(), "/shop/cappuccino") >= {"LCP", "CLS"},
             "the last page's reports")
    page.close()

    events = shop.events()
    restored = [e for e in events if e["data"].get("navigation_type") == "back-forward-cache"]
    assert {e["data"]["metric"] for e in restored} >= {"TTFB", "FCP", "LCP"}
    keys = Counter((e["data"]["metric"], PAGES[e["data"]["url"]], e["data"]["id"])
                   for e in events if e["type"] == "web_vitals")
    repeats = sum(n - 1 for n in keys.values())
    for metric in ("LCP", "INP", "FCP", "TTFB", "CLS"):
        for pg in set(PAGES.values()):
            ids = sum(1 for (m, p, _id) in keys if m == metric and p == pg)
            family = "rum_layout_shift_count" if metric == "CLS" else "rum_web_vitals_seconds_count"
            labels = {"page": pg} if metric == "CLS" else {"metric": metric, "page": pg}
            assert shop.sample(family, **labels) == ids, (metric, pg)  # one sample per id
    assert shop.sample("rum_events_duplicate_total") == repeats
    assert shop.sample("rum_web_vitals_seconds_count", metric="TTFB", page="/") == 2  # 2 views

    # every report again, as a retry queue would: only the duplicate counter moves
    before = {line.rsplit(" ", 1)[0] for line in shop.scrape().splitlines()
              if line.startswith("rum_") and "_created" not in line and "duplicate" not in line}
    with_ids = 0
    for body in list(shop.bodies):
        with_ids += sum(1 for e in json.loads(body)["events"] if "id" in e["data"])
        req = urllib.request.Request(shop.base + "/api/v1/metrics", data=body, method="POST",
                                     headers={"Content-Type": "text/plain;charset=UTF-8"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 204
    after = {line.rsplit(" ", 1)[0] for line in shop.scrape().splitlines()
             if line.startswith("rum_") and "_created" not in line and "duplicate" not in line}
    assert before == after
    assert shop.sample("rum_events_duplicate_total") == repeats + with_ids
    print(f"\nChromium session: {time.monotonic() - started:.1f} s, {len(shop.bodies)} reports")


MISSING = {
    "sendBeacon": "delete Navigator.prototype.sendBeacon;",
    "PerformanceObserver": "delete window.PerformanceObserver;",
    "localStorage": "Object.defineProperty(window, 'localStorage', {configurable: true, "
                    "get() { throw new DOMException('blocked', 'SecurityError'); }});",
    "localStorage-undefined": "Object.defineProperty(window, 'localStorage', "
                              "{configurable: true, value: undefined});",
    "all": "delete Navigator.prototype.sendBeacon; delete window.PerformanceObserver; "
           "Object.defineProperty(window, 'localStorage', {configurable: true, value: null});",
    "sendBeacon-and-fetch": "delete Navigator.prototype.sendBeacon; delete window.fetch;",
}


@pytest.mark.parametrize("missing", list(MISSING))
def test_the_snippet_throws_nothing_without_browser_apis(browser: Any, shop: Shop,
                                                         missing: str) -> None:
    context = browser.new_context()
    context.add_init_script(MISSING[missing])
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(shop.base + "/")
    page.wait_for_function("window.mestresRUM && window.mestresRUM.v === 1")
    page.click("#add-to-cart")
    assert page.evaluate("""() => {
        mestresRUM.trackBusinessEvent('checkout_started', {total: 12.5, bad: {nested: 1}});
        mestresRUM.trackBusinessEvent(null, null);
        mestresRUM.flush();
        return typeof mestresRUM.flush;
    }""") == "function"
    page.goto("about:blank")
    can_send = missing != "sendBeacon-and-fetch"
    if can_send:
        wait_for(lambda: shop.sample("rum_business_events_total", event="checkout_started") >= 1,
                 "the business event")
        assert shop.sample("rum_business_events_total", event="add_to_cart") == 1
    else:
        time.sleep(1.0)
        assert shop.bodies == []
    context.close()
    assert errors == [], errors


def session_windows(shifts: list[list[Any]]) -> float:
    """CLS by the Web Vitals definition: the largest window of shifts without recent input,
    a window ending after a 1 s gap or 5 s."""
    best = current = first = last = 0.0
    for start, value, recent_input in shifts:
        if recent_input:
            continue
        if current and start - last < 1000 and start - first < 5000:
            current += value
        else:
            current, first = value, start
        last = start
        best = max(best, current)
    return best


def test_cls_is_the_largest_session_window(browser: Any, shop: Shop) -> None:
    page = browser.new_page()
    page.goto(shop.base + "/")
    page.wait_for_function("window.mestresRUM && window.mestresRUM.v === 1")
    page.evaluate("""() => { window.__shifts = [];
        new PerformanceObserver(list => list.getEntries().forEach(
            e => window.__shifts.push([e.startTime, e.value, e.hadRecentInput]))
        ).observe({type: "layout-shift", buffered: true}); }""")
    push = "() => { const d = document.createElement('div'); d.style.height = '90px'; " \
           "document.body.prepend(d); }"
    page.evaluate(push)
    page.wait_for_timeout(150)
    page.evaluate(push)            # same window: added up
    page.wait_for_timeout(1500)
    page.evaluate(push)            # after a 1 s gap: a new window
    page.wait_for_timeout(300)
    shifts = page.evaluate("window.__shifts")
    page.goto("about:blank")
    page.close()
    wait_for(lambda: "CLS" in vitals_of(shop.events(), "/"), "the CLS report")
    (reported,) = [e["data"]["value"] for e in shop.events()
                   if e["type"] == "web_vitals" and e["data"]["metric"] == "CLS"]
    assert len(shifts) == 3, shifts
    expected = session_windows(shifts)
    assert expected < sum(s[1] for s in shifts)  # the windows matter here
    assert reported == pytest.approx(expected, abs=1e-4)
    assert shop.sample("rum_layout_shift_sum", page="/") == pytest.approx(expected, abs=1e-4)
