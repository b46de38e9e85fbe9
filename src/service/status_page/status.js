// socklab's status page: follows /events (server-sent events, one snapshot a second; polls
// /stats.json every two seconds where EventSource fails), updates the tables and draws the
// last five minutes of rates, starting from the server's own samples of the minutes before
// the page opened (the "history" element). No library, no network beyond this server.
(function () {
  "use strict";
  var history = [];      // {t, req, conns, bin, bout}: totals at each snapshot
  var KEEP = 300;        // five minutes of one-second snapshots
  var updates = 0;
  var COLUMNS = {
    "open": ["connections_open"], "accepted": ["connections_accepted"],
    "requests": ["requests"], "errors": ["request_errors"],
    "rejected": ["rejected_max_conns", "rejected_fd_limit", "rejected_auth", "rejected_per_ip",
                 "rejected_proxy", "rejected_tls"],
    "bytes in": ["bytes_received"], "bytes out": ["bytes_sent"],
    "datagrams in": ["datagrams_received"], "datagrams out": ["datagrams_sent"],
    "dropped": ["datagrams_dropped", "datagrams_kernel_dropped"]
  };
  function sum(obj, keys) {
    var n = 0;
    keys.forEach(function (k) { n += (obj && obj[k]) || 0; });
    return n;
  }
  function human(n) {
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return i === 0 ? n + " B" : n.toFixed(1) + " " + u[i];
  }
  function totals(s) {
    var t = { req: 0, conns: 0, bin: 0, bout: 0 };
    (s.frames || []).forEach(function (f) { t.req += f.count || 0; });
    Object.keys(s.services || {}).forEach(function (name) {
      var c = s.services[name];
      t.conns += c.connections_accepted || 0;
      t.bin += c.bytes_received || 0;
      t.bout += c.bytes_sent || 0;
      t.req += c.datagrams_received || 0;
    });
    return t;
  }
  function rate(v, bytes) {
    return bytes ? human(Math.round(v)) + "/s" : Math.round(v) + "/s";
  }
  function draw(id, series, colours, labels, bytes) {
    var svg = document.getElementById(id);
    if (!svg) { return; }
    var max = 1;
    series.forEach(function (s) { s.forEach(function (v) { if (v > max) { max = v; } }); });
    var w = 600, h = 160, top = 10, bottom = 20;
    var out = "";
    series.forEach(function (s, k) {
      var pts = s.map(function (v, i) {
        var x = (w * (KEEP - s.length + i)) / (KEEP - 1);
        var y = top + (h - top - bottom) * (1 - v / max);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      // The second series dashed: equal rates (an echo's in and out) stay both visible.
      out += '<polyline fill="none" stroke-width="' + (k ? 2.5 : 1.5) + '" stroke="' + colours[k] +
        '"' + (k ? ' stroke-dasharray="5 4"' : "") + ' points="' + pts.join(" ") + '"/>';
      out += '<text x="' + (8 + 200 * k) + '" y="' + (h - 5) + '" fill="' + colours[k] + '">' +
        labels[k] + " " + rate(s.length ? s[s.length - 1] : 0, bytes) + "</text>";
    });
    out += '<text x="' + (w - 4) + '" y="12" text-anchor="end">max ' + rate(max, bytes) + "</text>";
    svg.innerHTML = out;
  }
  function rates(key) {
    var r = [];
    for (var i = 1; i < history.length; i++) {
      var dt = (history[i].t - history[i - 1].t) / 1000;
      r.push(dt > 0 ? Math.max(0, history[i][key] - history[i - 1][key]) / dt : 0);
    }
    return r;
  }
  // The server's samples of the minutes before the page opened (history.rs), oldest first.
  function seed() {
    var el = document.getElementById("history");
    var rows = [];
    try { rows = JSON.parse((el && el.textContent) || "[]"); } catch (e) { rows = []; }
    rows.forEach(function (r) {
      history.push({ t: r[0], req: r[1], conns: r[2], bin: r[3], bout: r[4] });
    });
    while (history.length > KEEP + 1) { history.shift(); }
  }
  var lastBusy = null;
  function apply(s) {
    updates++;
    document.getElementById("updates").textContent = updates;
    document.getElementById("live").textContent = "(live, " + new Date().toLocaleTimeString() + ")";
    document.getElementById("workers").textContent = s.workers;
    if (s.process) {
      document.getElementById("rss").textContent = human(s.process.rss_bytes);
      document.getElementById("fds").textContent = s.process.open_fds;
    }
    var now = Date.now();
    if (lastBusy && now > lastBusy.t) {
      var share = (s.loop_busy_seconds - lastBusy.busy) / ((now - lastBusy.t) / 1000) / (s.workers || 1);
      document.getElementById("busy").textContent = Math.round(100 * Math.max(0, share)) + " %";
    }
    lastBusy = { t: now, busy: s.loop_busy_seconds || 0 };
    Object.keys(s.services || {}).forEach(function (name) {
      var row = document.querySelector('tr[data-service="' + name + '"]');
      if (!row) { return; }
      Object.keys(COLUMNS).forEach(function (col) {
        var cell = row.querySelector('td[data-col="' + col + '"]');
        if (cell) { cell.textContent = sum(s.services[name], COLUMNS[col]); }
      });
    });
    var t = totals(s);
    // The server's clock, as the seeded samples: a browser's clock may be off.
    t.t = s.unix_ms || now;
    if (!history.length || t.t > history[history.length - 1].t) {
      history.push(t);
      if (history.length > KEEP + 1) { history.shift(); }
    }
    redraw();
    perWorker(s.per_worker || []);
  }
  function redraw() {
    draw("chart-req", [rates("req"), rates("conns")], ["#1f77b4", "#d62728"], ["requests", "connections"], false);
    draw("chart-bytes", [rates("bin"), rates("bout")], ["#2ca02c", "#ff7f0e"], ["bytes in", "bytes out"], true);
    document.body.setAttribute("data-chart-points", String(Math.max(0, history.length - 1)));
  }
  function perWorker(workers) {
    var table = document.getElementById("workers-table");
    if (!table) { return; }
    var rows = '<tr><th>worker</th><th>open</th><th>accepted</th><th>bytes in</th><th>bytes out</th></tr>';
    workers.forEach(function (w) {
      var t = { open: 0, acc: 0, bin: 0, bout: 0 };
      Object.keys(w.services || {}).forEach(function (name) {
        var c = w.services[name];
        t.open += c.connections_open || 0;
        t.acc += c.connections_accepted || 0;
        t.bin += c.bytes_received || 0;
        t.bout += c.bytes_sent || 0;
      });
      rows += "<tr><td>" + w.worker + "</td><td>" + t.open + "</td><td>" + t.acc + "</td><td>" +
        t.bin + "</td><td>" + t.bout + "</td></tr>";
    });
    table.innerHTML = rows;
  }
  function poll() {
    fetch("/stats.json").then(function (r) { return r.json(); }).then(apply)
      .catch(function () {}).then(function () { setTimeout(poll, 2000); });
  }
  seed();
  redraw();
  if (window.EventSource) {
    var es = new EventSource("/events");
    var opened = false;
    es.onopen = function () { opened = true; };
    es.onmessage = function (e) { try { apply(JSON.parse(e.data)); } catch (err) { } };
    es.onerror = function () { if (!opened) { es.close(); poll(); } };
  } else {
    poll();
  }
})();
