/*! mestres-observability RUM snippet, MIT licence. <script src="/observability/rum.js"
 data-endpoint="/api/v1/metrics" async></script>; optional data-sample-rate="0.5".
 API: mestresRUM.trackBusinessEvent(event, data), mestresRUM.flush(). Never throws. */
(function (w, d, cfg) {
  "use strict";
  var noop = function () {};
  if (w.mestresRUM && w.mestresRUM.v) return;
  var api = w.mestresRUM = { v: 1, trackBusinessEvent: noop, flush: noop };
  function safe(f) {
    return function () { try { return f.apply(this, arguments); } catch (e) {} };
  }
  function on(t, f, o) { w.addEventListener(t, safe(f), o === undefined || o); }
  function cut(s, n) { s = String(s == null ? "" : s); return s.length > n ? s.slice(0, n) : s; }
  function ms(v) { return Math.round(v * 10) / 10; }
  try {
    var s = d.currentScript, P = w.performance, N = w.navigator, L = w.location;
    var attr = function (n) { return s && s.getAttribute("data-" + n); };
    var url = attr("endpoint") || cfg.endpoint || "/api/v1/metrics";
    var rate = parseFloat(attr("sample-rate"));
    if (!(rate >= 0 && rate <= 1)) rate = cfg.sample >= 0 ? cfg.sample : 1;
    if (Math.random() >= rate) return; /* sampled out: the API stays a no-op */

    /* ------------------------------------------------ queue, storage, delivery */
    var KEY = "mestresRUM", queue = [], timer = 0, until = 0, tries = 0, seq = 0;
    var hidden = d.visibilityState == "hidden";
    var a = d.createElement("a"); a.href = url; var full = a.href;
    function store(batch) {
      try {
        var ls = w.localStorage, old = JSON.parse(ls.getItem(KEY) || "{}");
        var q = (old.q || []).concat(batch || []).slice(-50);
        ls.setItem(KEY, JSON.stringify({ u: until, n: tries, q: q }));
      } catch (e) {}
    }
    function send(batch) {
      var body = JSON.stringify({ events: batch });
      if (hidden && N.sendBeacon) {
        try { if (N.sendBeacon(url, body)) return; } catch (e) {}
      }
      if (!w.fetch) return store(batch);
      w.fetch(url, {
        method: "POST", body: body, keepalive: true, credentials: "same-origin",
        headers: { "Content-Type": "text/plain;charset=UTF-8" }
      }).then(function (r) {
        if (r.status == 429 || r.status > 499) {
          var h = r.headers.get("Retry-After"), ra = /^\d+$/.test(h) ? h * 1e3 : Date.parse(h) - Date.now();
          until = Date.now() + (ra >= 0 ? Math.min(ra, 36e5) : 6e4); /* seconds or a date; else 60 s */
          store(batch);
        }
      }, function () { store(batch); })["catch"](noop);
    }
    var flush = api.flush = safe(function () {
      clearTimeout(timer); timer = 0;
      var batch = [], size = 0;
      while (queue.length) {
        var ev = queue.shift(), n = JSON.stringify(ev).length;
        if (batch.length && (batch.length >= 50 || size + n > 2e4)) { go(batch); batch = []; size = 0; }
        batch.push(ev); size += n;
      }
      if (batch.length) go(batch);
    });
    function go(batch) { if (Date.now() < until) store(batch); else send(batch); }
    var tid = "";
    function push(type, data) {
      data.url = cut(L.pathname, 2048);
      data.timestamp = Date.now();
      if (tid) data.trace_id = tid;
      queue.push({ type: type, data: data });
      if (queue.length >= 50) flush(); else if (!timer) timer = setTimeout(flush, 5e3);
    }
    try { /* earlier page loads' undelivered events, and a Retry-After still running */
      var st = JSON.parse(w.localStorage.getItem(KEY) || "0");
      if (st) {
        w.localStorage.removeItem(KEY);
        until = +st.u || 0; tries = (+st.n || 0) + (Date.now() < until ? 0 : 1); /* a wait is no try */
        if (tries > 3) tries = 0; /* dropped after 3 loads; what fails next starts afresh */
        else if (st.q && st.q.length) { queue = st.q.slice(-50); timer = setTimeout(flush, 5e3); }
      }
    } catch (e) {}

    /* ------------------------------------------------ page view state */
    var nav0 = P && P.getEntriesByType && P.getEntriesByType("navigation")[0];
    var act = nav0 && nav0.activationStart || 0, pv, navType, sent, hiddenAt;
    try {
      var timing = nav0 && nav0.serverTiming || [];
      for (var i = 0; i < timing.length; i++) {
        var m = /^00-([0-9a-f]{32})-[0-9a-f]{16}-0[0-9a-f]$/.exec(timing[i].name == "traceparent" && timing[i].description);
        if (m) tid = m[1];
      }
    } catch (e) {}
    function view(type) {
      pv = "v1-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10);
      navType = type; sent = {}; hiddenAt = hidden ? 0 : Infinity;
    }
    var t0 = nav0 ? nav0.type : "navigate";
    view(d.wasDiscarded ? "restore" : act > 0 ? "prerender" : t0 == "back_forward" ? "back-forward" : t0 || "navigate");
    function report(metric, value) {
      if (!(value >= 0) || sent[metric] === value) return; /* once per view, again on change */
      sent[metric] = value;
      push("web_vitals", { metric: metric, value: metric == "CLS" ? Math.round(value * 1e4) / 1e4 : ms(value),
                           id: pv + "-" + metric, navigation_type: navType });
    }
    function observe(type, cb, opts) {
      try {
        var PO = w.PerformanceObserver;
        if (PO.supportedEntryTypes.indexOf(type) < 0) return;
        var o = new PO(safe(function (list) { cb(list.getEntries()); }));
        o.observe({ type: type, buffered: true, durationThreshold: opts });
        o.cb = cb;
        return o;
      } catch (e) {}
    }

    /* ------------------------------------------------ Web Vitals */
    if (nav0 && nav0.responseStart > 0) report("TTFB", Math.max(nav0.responseStart - act, 0));
    observe("paint", function (list) {
      list.forEach(function (e) {
        if (e.name == "first-contentful-paint" && e.startTime < hiddenAt) report("FCP", Math.max(e.startTime - act, 0));
      });
    });
    var lcp = -1, lcpObs = observe("largest-contentful-paint", function (list) {
      var e = list[list.length - 1];
      if (e && e.startTime < hiddenAt) lcp = Math.max(e.startTime - act, 0);
    });
    function stopLCP() { /* LCP is final at the first input or when the page is hidden */
      if (!lcpObs) return;
      lcpObs.cb(lcpObs.takeRecords()); lcpObs.disconnect(); lcpObs = 0;
      report("LCP", lcp);
    }
    ["keydown", "click"].forEach(function (t) {
      on(t, function () { setTimeout(safe(stopLCP), 0); }, { once: true, capture: true });
    });
    var cls = 0, sv = 0, sf = 0, sl = 0, clsObs = observe("layout-shift", function (list) {
      list.forEach(function (e) { /* session windows: 1 s gaps, 5 s at most */
        if (e.hadRecentInput) return;
        if (sv && e.startTime - sl < 1e3 && e.startTime - sf < 5e3) sv += e.value;
        else { sv = e.value; sf = e.startTime; }
        sl = e.startTime;
        if (sv > cls) cls = sv;
      });
    });
    var longest = [], byId = {}, count = 0;
    function interaction(list) {
      list.forEach(function (e) {
        var id = e.interactionId;
        if (!id) return;
        var x = byId[id];
        if (!x) { count++; x = byId[id] = { i: id, d: 0 }; longest.push(x); }
        if (e.duration > x.d) x.d = e.duration;
        longest.sort(function (p, q) { return q.d - p.d; });
        longest.splice(10).forEach(function (y) { delete byId[y.i]; });
      });
    }
    observe("event", interaction, 40);
    observe("first-input", interaction);
    function inp() {
      if (!longest.length) return; /* no interaction: no INP */
      var n = P && P.interactionCount || count;
      report("INP", longest[Math.min(longest.length - 1, Math.floor(n / 50))].d);
    }

    /* ------------------------------------------------ navigation and resources */
    var navSent = 0;
    function navigation() {
      var e = P.getEntriesByType("navigation")[0];
      if (navSent || !e || navType == "back-forward-cache") return;
      navSent = 1;
      var ph = { dns: e.domainLookupEnd - e.domainLookupStart, connect: e.connectEnd - e.connectStart,
                 request: e.responseStart - e.requestStart, response: e.responseEnd - e.responseStart,
                 dom: e.domContentLoadedEventEnd - e.responseEnd, load: e.loadEventEnd - e.startTime };
      if (e.redirectEnd > 0) ph.redirect = e.redirectEnd - e.redirectStart;
      if (e.secureConnectionStart > 0) ph.tls = e.connectEnd - e.secureConnectionStart;
      for (var k in ph) if (ph[k] >= 0) ph[k] = ms(ph[k]); else delete ph[k];
      push("navigation", { phases: ph, id: pv + "-nav", navigation_type: navType });
    }
    if (d.readyState == "complete") setTimeout(safe(navigation), 0);
    else on("load", function () { setTimeout(safe(navigation), 0); });
    var KINDS = " script link css img image fetch xmlhttprequest beacon iframe frame navigation audio video track font icon input embed object use early-hints other ";
    var res = {}, resN = 0;
    observe("resource", function (list) {
      list.forEach(function (e) {
        if (e.name == full) return; /* our own reports */
        var t = KINDS.indexOf(" " + e.initiatorType + " ") < 0 ? "other" : e.initiatorType;
        var r = res[t] || (res[t] = { count: 0, duration: 0 });
        r.count++; r.duration += e.duration; resN++;
      });
    });
    function resources() {
      if (!resN) return;
      for (var k in res) res[k].duration = ms(res[k].duration);
      push("resource", { initiators: res, id: pv + "-r" + ++seq });
      res = {}; resN = 0;
    }

    /* ------------------------------------------------ errors and business events */
    var errs = 0;
    function error(type, msg, file, line, col, stack) {
      if (++errs > 10) return; /* at most 10 per page view */
      push("errors", {
        type: type, message: cut(msg, 256), filename: cut(String(file || "").split(/[?#]/)[0], 256),
        lineno: line > 0 ? Math.min(line, 1e7) : 0, colno: col > 0 ? Math.min(col, 1e7) : 0,
        stack: cut(String(stack || "").replace(/[?#][^\s:)]*/g, ""), 4096), id: pv + "-e" + ++seq
      });
    }
    on("error", function (e) {
      if (e.error || e.message) error("javascript", e.message, e.filename, e.lineno, e.colno, e.error && e.error.stack);
    }, false);
    on("unhandledrejection", function (e) {
      var r = e.reason;
      error("promise_rejection", r && r.message || (typeof r == "string" ? r : "Unhandled Promise Rejection"), "", 0, 0, r && r.stack);
    }, false);
    api.trackBusinessEvent = safe(function (event, data) {
      var o = {}, n = 0;
      if (data && typeof data == "object") for (var k in data) {
        var v = data[k], t = typeof v;
        if (n < 16 && Object.prototype.hasOwnProperty.call(data, k) &&
            (v === null || t == "boolean" || t == "string" || (t == "number" && isFinite(v)))) {
          o[cut(k, 64)] = t == "string" ? cut(v, 256) : v; n++;
        }
      }
      push("business_events", { event: cut(event, 64), data: o, id: pv + "-b" + ++seq });
    });

    /* ------------------------------------------------ page hide, back/forward cache */
    function shifts() { if (clsObs) { clsObs.cb(clsObs.takeRecords()); report("CLS", cls); } }
    function hide() { /* each step on its own: one failing never keeps the others from going */
      hidden = 1;
      if (hiddenAt == Infinity) hiddenAt = P ? P.now() : 0;
      [stopLCP, shifts, inp, resources, navigation].forEach(function (f) { safe(f)(); });
      flush();
    }
    on("visibilitychange", function () { if (d.visibilityState == "hidden") hide(); else hidden = 0; });
    on("pagehide", hide);
    on("pageshow", function (e) {
      if (!e.persisted) return;
      hidden = 0; view("back-forward-cache");
      cls = sv = 0; longest = []; byId = {}; count = 0; errs = 0;
      report("TTFB", 0);
      var t = e.timeStamp;
      requestAnimationFrame(function () {
        requestAnimationFrame(safe(function () { var v = P.now() - t; report("FCP", v); report("LCP", v); }));
      });
    });
  } catch (e) {}
})(window, document, {}/*cfg*/);
