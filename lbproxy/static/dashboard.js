// lbproxy dashboard: draws the snapshots and pool events of dashboard/stream (SSE).
// No dependencies, nothing fetched but the stream; every value goes in with textContent.
(function () {
  "use strict";

  var STREAM_URL = "dashboard/stream"; // relative: works behind any path prefix
  var MAX_EVENTS = 30;
  var HISTORY_SECONDS = 60;
  var SVG_NS = "http://www.w3.org/2000/svg";
  // Distinct on a dark background; replica colours are picked by ring id so they stay put.
  var PALETTE = [
    "#4e9af1", "#f5a623", "#b57edc", "#2ec4b6", "#ff7eb6", "#c9d94a",
    "#ff8f5a", "#7f8cff", "#5ad17a", "#e8c547", "#4fd6ff", "#e05f9a"
  ];
  var KIND_CLASS = {
    up: "good", added: "good", adopted: "good", first_response: "good",
    launched: "work", replacing: "work",
    died: "bad", heartbeat_down: "bad", replace_failed: "bad",
    removed_from_ring: "warn", removed: "quiet", stopped: "quiet"
  };
  var KIND_LABEL = {
    first_response: "first response", heartbeat_down: "heartbeat down",
    removed_from_ring: "off the ring", replace_failed: "replace failed"
  };

  var last = null;        // previous snapshot
  var rates = {};         // name -> requests/s
  var events = [];        // newest first
  var seen = {};          // seq -> true, for dedupe across reconnects
  var history = [];       // [{t, rps}]
  var colours = {};       // name -> colour, from ring id

  function $(id) { return document.getElementById(id); }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = String(text); }
    return node;
  }

  function colourOf(ringId) {
    var i = Math.max(0, (ringId | 0) - 1);
    if (i < PALETTE.length) { return PALETTE[i]; }
    return "hsl(" + ((i * 137.508) % 360).toFixed(0) + ", 65%, 62%)";
  }

  function fmtRate(x) {
    if (x === undefined || x === null || isNaN(x)) { return "\u2013"; }
    if (x >= 100) { return x.toFixed(0); }
    if (x >= 10) { return x.toFixed(1); }
    return x.toFixed(2);
  }

  function fmtCount(n) { return Number(n).toLocaleString("en-US"); }

  function fmtAge(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    if (s < 60) { return s + "s"; }
    if (s < 3600) { return Math.floor(s / 60) + "m " + (s % 60) + "s"; }
    return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  }

  function fmtTime(t) {
    var d = new Date(t * 1000);
    function p(n, w) { return String(n).padStart(w || 2, "0"); }
    return p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds()) +
      "." + p(d.getMilliseconds(), 3);
  }

  function swatch(colour) {
    var s = el("span", "swatch");
    s.style.background = colour;
    return s;
  }

  // ---- connection status -------------------------------------------------------------

  function setConn(kind, text) {
    $("conn").className = "conn " + kind;
    $("conn-text").textContent = text;
  }

  // ---- the ring ----------------------------------------------------------------------

  // A donut segment from fraction a to b of the circle (0 = 12 o'clock, clockwise).
  function segment(cx, cy, r0, r1, a, b) {
    if (b - a >= 0.9999) { // a full ring: two halves, an arc cannot start where it ends
      return segment(cx, cy, r0, r1, 0, 0.5) + " " + segment(cx, cy, r0, r1, 0.5, 1);
    }
    function pt(r, f) {
      var t = f * 2 * Math.PI - Math.PI / 2;
      return (cx + r * Math.cos(t)).toFixed(2) + " " + (cy + r * Math.sin(t)).toFixed(2);
    }
    var large = b - a > 0.5 ? 1 : 0;
    return "M " + pt(r1, a) + " A " + r1 + " " + r1 + " 0 " + large + " 1 " + pt(r1, b) +
      " L " + pt(r0, b) + " A " + r0 + " " + r0 + " 0 " + large + " 0 " + pt(r0, a) + " Z";
  }

  function drawRing(snap) {
    var ring = $("ring");
    while (ring.firstChild) { ring.removeChild(ring.firstChild); }
    var cx = 220, cy = 200, r1 = 130, r0 = 88;
    ring.appendChild(svg("path", { d: segment(cx, cy, r0, r1, 0, 1), "class": "track" }));
    var up = snap.replicas.filter(function (x) { return (x.share || 0) > 0; });
    up.sort(function (a, b) { return a.ring_id - b.ring_id; });
    var start = 0;
    var gap = up.length > 1 ? 0.002 : 0;
    var labels = [];
    up.forEach(function (rep) {
      var end = start + rep.share;
      var arc = svg("path", {
        d: segment(cx, cy, r0, r1, start + gap, Math.max(start + gap, end - gap)),
        fill: colours[rep.name], "class": "arc"
      });
      arc.appendChild(svg("title", {}, rep.name + ": " + (rep.share * 100).toFixed(2) +
        "% of the key space"));
      ring.appendChild(arc);
      var mid = (start + end) / 2 * 2 * Math.PI - Math.PI / 2;
      labels.push({ rep: rep, mid: mid, right: Math.cos(mid) >= 0, y: cy + (r1 + 16) * Math.sin(mid) });
      start = end;
    });
    // Callout labels in two columns, pushed apart so that small neighbours stay legible;
    // past 16 replicas only the largest shares are labelled (the table has every one).
    labels.sort(function (a, b) { return b.rep.share - a.rep.share; });
    labels = labels.slice(0, 16);
    [true, false].forEach(function (right) {
      var side = labels.filter(function (l) { return l.right === right; });
      side.sort(function (a, b) { return a.y - b.y; });
      var step = 30, top = 18, bottom = 380;
      for (var i = 0; i < side.length; i++) {
        side[i].y = Math.max(side[i].y, i ? side[i - 1].y + step : top);
      }
      for (var j = side.length - 1; j >= 0; j--) {
        side[j].y = Math.min(side[j].y, j < side.length - 1 ? side[j + 1].y - step : bottom);
      }
      side.forEach(function (l) {
        // hug the ring: the label sits just outside the circle at its (de-overlapped) height
        var R = r1 + 14, dy = l.y - cy;
        var lx = cx + (right ? 1 : -1) * (Math.sqrt(Math.max(0, R * R - dy * dy)) + 8);
        var ax = cx + (r1 + 2) * Math.cos(l.mid), ay = cy + (r1 + 2) * Math.sin(l.mid);
        ring.appendChild(svg("line", {
          x1: ax.toFixed(1), y1: ay.toFixed(1),
          x2: (lx + (right ? -3 : 3)).toFixed(1), y2: (l.y - 4).toFixed(1),
          "class": "leader", stroke: colours[l.rep.name]
        }));
        var anchor = right ? "start" : "end";
        ring.appendChild(svg("text", { x: lx, y: l.y, "text-anchor": anchor, "class": "label" },
          l.rep.name));
        ring.appendChild(svg("text", { x: lx, y: l.y + 14, "text-anchor": anchor, "class": "pct" },
          (l.rep.share * 100).toFixed(1) + "%"));
      });
    });
    ring.appendChild(svg("text", { x: cx, y: cy - 8, "text-anchor": "middle", "class": "center-big" },
      up.length ? snap.up + " up" : "no replica up"));
    ring.appendChild(svg("text", { x: cx, y: cy + 14, "text-anchor": "middle", "class": "center-small" },
      snap.family + " ring"));
    ring.appendChild(svg("text", { x: cx, y: cy + 31, "text-anchor": "middle", "class": "center-small" },
      snap.n + " in the pool"));
  }

  // ---- replicas table ----------------------------------------------------------------

  function drawTable(snap) {
    var body = $("replicas").tBodies[0];
    while (body.firstChild) { body.removeChild(body.firstChild); }
    var maxRate = 0;
    snap.replicas.forEach(function (r) { maxRate = Math.max(maxRate, rates[r.name] || 0); });
    snap.replicas.forEach(function (r) {
      var tr = el("tr");
      tr.dataset.replica = r.name;
      function cell(col, cls, text) {
        var td = el("td", cls, text);
        td.dataset.col = col;
        tr.appendChild(td);
        return td;
      }
      var name = cell("name", "name");
      name.appendChild(swatch(colours[r.name]));
      name.appendChild(document.createTextNode(r.name));
      cell("ring_id", "num", r.ring_id);
      cell("state").appendChild(el("span", "pill state-" + r.state, r.state));
      cell("share", "num", r.share > 0 ? (r.share * 100).toFixed(1) + "%" : "\u2013");
      cell("in_flight", "num", r.in_flight);
      var rate = rates[r.name];
      var rps = cell("rps", "rps");
      rps.appendChild(el("span", "rps-num", fmtRate(rate)));
      var bar = el("span", "bar");
      bar.style.width = (maxRate > 0 && rate ? Math.max(2, 60 * rate / maxRate) : 0) + "px";
      bar.style.background = colours[r.name];
      rps.appendChild(bar);
      cell("served", "num", fmtCount(r.served));
      cell("errors", "num" + (r.errors ? " warn" : ""), fmtCount(r.errors || 0));
      cell("ejections", "num" + (r.ejections ? " warn" : ""), r.ejections || 0);
      cell("incarnations", "num", r.incarnations);
      cell("age", "num", fmtAge(snap.time - r.since));
      body.appendChild(tr);
    });
    $("no-replicas").hidden = snap.replicas.length > 0;
    var counts = {};
    snap.replicas.forEach(function (r) { counts[r.state] = (counts[r.state] || 0) + 1; });
    $("replica-hint").textContent = Object.keys(counts).sort().map(function (k) {
      return counts[k] + " " + k;
    }).join(", ");
  }

  // ---- throughput sparkline ------------------------------------------------------------

  function drawSpark(now) {
    var spark = $("spark");
    while (spark.firstChild) { spark.removeChild(spark.firstChild); }
    var W = 400, H = 150, top = 8;
    var max = 1;
    history.forEach(function (h) { max = Math.max(max, h.rps); });
    max = niceCeil(max * 1.1);
    [0.25, 0.5, 0.75].forEach(function (f) {
      var y = top + (H - top) * f;
      spark.appendChild(svg("line", { x1: 0, x2: W, y1: y, y2: y, "class": "grid" }));
    });
    function X(t) { return W - (now - t) / HISTORY_SECONDS * W; }
    function Y(v) { return H - (H - top) * v / max; }
    events.forEach(function (e) {
      if (KIND_CLASS[e.kind] === "bad" && now - e.time <= HISTORY_SECONDS) {
        var x = X(e.time);
        var mark = svg("line", { x1: x, x2: x, y1: 0, y2: H, "class": "mark" });
        mark.appendChild(svg("title", {}, e.kind + " " + e.replica + " at " + fmtTime(e.time)));
        spark.appendChild(mark);
      }
    });
    if (history.length > 1) {
      var pts = history.map(function (h) { return X(h.t).toFixed(1) + "," + Y(h.rps).toFixed(1); });
      spark.appendChild(svg("polygon", {
        points: X(history[0].t).toFixed(1) + "," + H + " " + pts.join(" ") + " " +
          X(history[history.length - 1].t).toFixed(1) + "," + H,
        "class": "area"
      }));
      spark.appendChild(svg("polyline", { points: pts.join(" "), "class": "line" }));
    }
    $("spark-max").textContent = "scale " + fmtCount(max) + " req/s; red dashes: a replica failed";
    var cur = history.length ? history[history.length - 1].rps : 0;
    $("spark-now").textContent = "now " + fmtRate(cur) + " req/s";
  }

  function niceCeil(x) {
    var p = Math.pow(10, Math.floor(Math.log10(x)));
    var steps = [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10];
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * p >= x) { return steps[i] * p; }
    }
    return 10 * p;
  }

  // ---- events ----------------------------------------------------------------------------

  function drawEvents(freshSeq) {
    var body = $("events").tBodies[0];
    while (body.firstChild) { body.removeChild(body.firstChild); }
    events.forEach(function (e) {
      var tr = el("tr");
      tr.dataset.kind = e.kind;
      if (freshSeq && e.seq === freshSeq) { tr.className = "fresh"; }
      tr.appendChild(el("td", "time", fmtTime(e.time)));
      tr.appendChild(el("td", null)).appendChild(
        el("span", "kind kind-" + (KIND_CLASS[e.kind] || "quiet"), KIND_LABEL[e.kind] || e.kind));
      var who = el("td", "replica");
      if (colours[e.replica]) { who.appendChild(swatch(colours[e.replica])); }
      who.appendChild(document.createTextNode(e.replica));
      tr.appendChild(who);
      tr.appendChild(el("td", "detail", e.detail));
      body.appendChild(tr);
    });
    $("no-events").hidden = events.length > 0;
  }

  function setEvents(list) {
    events = [];
    seen = {};
    list.forEach(addEvent);
  }

  function addEvent(e) {
    if (seen[e.seq]) { return false; }
    seen[e.seq] = true;
    events.unshift(e);
    events.sort(function (a, b) { return b.seq - a.seq; });
    while (events.length > MAX_EVENTS) { delete seen[events.pop().seq]; }
    return true;
  }

  // ---- snapshots -------------------------------------------------------------------------

  function onSnapshot(snap) {
    snap.replicas.forEach(function (r) { colours[r.name] = colourOf(r.ring_id); });
    var total = 0, inflight = 0;
    if (last && snap.time > last.time) {
      var dt = snap.time - last.time;
      var before = {};
      last.replicas.forEach(function (r) { before[r.name] = r.served; });
      var next = {};
      snap.replicas.forEach(function (r) {
        if (before[r.name] !== undefined) {
          next[r.name] = Math.max(0, r.served - before[r.name]) / dt;
          total += next[r.name];
        }
      });
      rates = next;
      history.push({ t: snap.time, rps: total });
      while (history.length && snap.time - history[0].t > HISTORY_SECONDS) { history.shift(); }
    }
    snap.replicas.forEach(function (r) { inflight += r.in_flight; });
    last = snap;
    if (snap.events) { setEvents(snap.events); drawEvents(0); }
    $("family").textContent = snap.family;
    $("upcount").textContent = snap.up + " / " + snap.n;
    $("total-rps").textContent = history.length ? fmtRate(total) : "\u2013";
    $("total-inflight").textContent = inflight;
    $("replacements").textContent = snap.replacements;
    $("builds").textContent = snap.ring_builds;
    drawRing(snap);
    drawTable(snap);
    drawSpark(snap.time);
    document.body.dataset.snapshots = String((Number(document.body.dataset.snapshots) || 0) + 1);
  }

  function parse(msg) {
    try { return JSON.parse(msg.data); } catch (err) { return null; }
  }

  function connect() {
    var source = new EventSource(STREAM_URL);
    source.onopen = function () { setConn("live", "live"); };
    source.onerror = function () {
      setConn("lost", source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting\u2026");
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(connect, 5000); // a 503 (too many dashboards) closes it for good
      }
    };
    source.addEventListener("snapshot", function (msg) {
      var snap = parse(msg);
      if (snap) { setConn("live", "live \u00b7 " + fmtTime(snap.time).slice(0, 8)); onSnapshot(snap); }
    });
    source.addEventListener("pool", function (msg) {
      var e = parse(msg);
      if (e && addEvent(e)) { drawEvents(e.seq); }
    });
    source.addEventListener("events", function (msg) {
      var list = parse(msg);
      if (list) { setEvents(list); drawEvents(0); }
    });
  }

  connect();
})();
