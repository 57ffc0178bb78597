/* exaq dashboard: renders the view the path names from /api/ JSON and keeps it current with
 * the /api/events stream (docs/http.md). No framework; every update re-renders from data. */
"use strict";
(function () {
  var token = new URLSearchParams(location.search).get("token");
  var tq = token ? "token=" + encodeURIComponent(token) : "";
  var main = document.getElementById("main");
  var crumbs = document.getElementById("crumbs");
  var conn = document.getElementById("conn");
  var sseLog = document.getElementById("sse-log");
  var live = {};          /* stage key -> running attempt (from "live" events) */
  var data = null;        /* the last document of this view */
  var sort = { col: "rank", dir: 1 };
  var logOffsets = {};    /* log view: stage name -> next offset */
  var refreshTimer = null, inflight = false, again = false;
  window.exaqLoadId = Math.random().toString(36).slice(2);
  window.exaqRenders = 0;

  function withTok(u) { return tq ? u + (u.indexOf("?") < 0 ? "?" : "&") + tq : u; }
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "cls") e.className = attrs[k];
      else if (attrs[k] !== undefined && attrs[k] !== null) e.setAttribute(k, attrs[k]);
    }
    (kids || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function link(href, text) { return el("a", { href: withTok(href), text: text }); }
  function state(s) { return el("span", { cls: "state st-" + s, "data-state": s, text: s }); }
  function fmtNum(v) {
    if (v === null || v === undefined) return "";
    if (Math.abs(v) >= 1000 || Number.isInteger(v)) return String(v);
    return Number(v).toPrecision(4);
  }
  function fmtBytes(b) {
    if (b === null || b === undefined) return "";
    var u = ["B", "kB", "MB", "GB", "TB"], i = 0;
    while (b >= 1000 && i < u.length - 1) { b /= 1000; i++; }
    return (i ? b.toFixed(1) : b) + " " + u[i];
  }
  function fmtDur(s) {
    if (s === null || s === undefined || !isFinite(s)) return "";
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  function api(path) {
    return fetch(withTok(path), { cache: "no-store" }).then(function (r) {
      if (!r.ok) return r.text().then(function (t) { throw new Error(r.status + " " + t); });
      return r.json();
    });
  }
  function route() {
    var p = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
    if (p.length === 2 && p[0] === "sweeps") return { view: "sweep", sweep: p[1] };
    if (p.length === 5 && p[0] === "sweeps" && p[2] === "lanes" && p[4] === "log")
      return { view: "log", sweep: p[1], lane: p[3] };
    return { view: "sweeps" };
  }
  var R = route();

  function setCrumbs() {
    crumbs.textContent = "";
    if (R.view === "sweeps") return;
    crumbs.appendChild(document.createTextNode("/ "));
    crumbs.appendChild(link("/sweeps/" + encodeURIComponent(R.sweep), R.sweep));
    if (R.view === "log") crumbs.appendChild(document.createTextNode(" / " + R.lane + " / log"));
  }

  /* ===== sweeps ===== */
  function renderSweeps(d) {
    var rows = d.sweeps.map(function (s) {
      var p = s.progress;
      return el("tr", { "data-sweep": s.id }, [
        el("td", null, [link("/sweeps/" + encodeURIComponent(s.id), s.id)]),
        el("td", null, [state(s.state)]),
        el("td", null, [el("progress", { max: p.stages_total || 1, value: p.stages_done }),
                        " " + p.stages_done + "/" + p.stages_total]),
        el("td", { cls: "counts", text: ["running", "queued", "done", "failed", "cancelled"]
          .filter(function (k) { return s.counts[k]; })
          .map(function (k) { return s.counts[k] + " " + k; }).join(", ") }),
        el("td", { cls: "best" }, s.best ? [s.best.lane + " (" + fmtNum(s.best.score) + ")"] : ["-"]),
        el("td", { text: new Date(s.created * 1000).toLocaleString() })
      ]);
    });
    main.textContent = "";
    main.appendChild(el("h1", { text: "Sweeps" }));
    if (!rows.length) { main.appendChild(el("p", { cls: "muted", text: "no sweeps yet" })); return; }
    main.appendChild(el("table", { id: "sweeps" }, [
      el("thead", null, [el("tr", null, ["sweep", "state", "stages", "lanes", "best lane", "submitted"]
        .map(function (h) { return el("th", { text: h }); }))]),
      el("tbody", null, rows)]));
  }

  /* ===== one sweep ===== */
  function liveCells(st) {
    var a = live[st.key];
    var prog = el("td", { cls: "progress" }), eta = el("td", { cls: "eta num" });
    var slot = el("td", { cls: "slot num" }), last = el("td", { cls: "lastline" });
    if (st.state === "running" && a) {
      if (a.total > 0) {
        prog.appendChild(el("progress", { max: a.total, value: a.done }));
        prog.appendChild(document.createTextNode(" " + Math.round(100 * a.done / a.total) + "%"));
      } else {
        prog.appendChild(el("progress", null));
      }
      if (a.what) prog.appendChild(el("span", { cls: "muted", text: " " + a.what }));
      eta.textContent = a.eta_s !== undefined ? fmtDur(a.eta_s) : "";
      slot.textContent = "slot " + a.slot;
      last.textContent = a.last_line || "";
      last.title = a.last_line || "";
    } else if (st.state === "done") {
      prog.appendChild(el("progress", { max: 1, value: 1 }));
    } else if (st.error) {
      last.appendChild(el("span", { cls: "err", text: st.error.class + ": " + (st.error.msg || "") }));
    }
    if (!slot.textContent && st.attempt && st.attempt.slot !== undefined && st.state === "running")
      slot.textContent = "slot " + st.attempt.slot;
    return [prog, eta, slot, last];
  }

  function renderLanes(d) {
    var rows = [];
    d.lanes.forEach(function (l) {
      rows.push(el("tr", { cls: "lane-row", "data-lane": l.id }, [
        el("td", null, [l.id + (l.baseline && l.id !== "baseline" ? " (baseline)" : "")]),
        el("td", { cls: "lane-state" }, [state(l.state)]),
        el("td", { colspan: 6, text: l.size_bytes !== undefined ? fmtBytes(l.size_bytes) : "" }),
        el("td", null, [link("/sweeps/" + encodeURIComponent(d.sweep.id) + "/lanes/" +
                             encodeURIComponent(l.id) + "/log", "log")])]));
      l.stages.forEach(function (st) {
        var att = st.attempt ? "#" + st.attempt.n + (st.retries ? " of " + (st.retries + 1) : "") : "";
        rows.push(el("tr", { cls: "stage-row", "data-lane": l.id, "data-stage": st.name, "data-key": st.key },
          [el("td", { text: "\u2003" + st.name }),
           el("td", { cls: "stage-state" }, [state(st.state)]),
           el("td", { text: st.kind + (st.reused ? " (reused)" : "") }),
           el("td", { cls: "attempt", text: att })].concat(liveCells(st)).concat([el("td")])));
      });
    });
    return el("table", { id: "lanes" }, [
      el("thead", null, [el("tr", null, ["lane / stage", "state", "kind / size", "attempt", "progress",
        "ETA", "slot", "last line", ""].map(function (h) { return el("th", { text: h }); }))]),
      el("tbody", null, rows)]);
  }

  function metricRows(d) {
    var rk = {};
    (d.rank.lanes || []).forEach(function (x) { rk[x.lane] = x; });
    if (d.rank.baseline) rk[d.lanes.filter(function (l) { return l.baseline; }).map(function (l) { return l.id; })[0]] = d.rank.baseline;
    var names = {};
    var rows = d.lanes.map(function (l) {
      var m = {};
      l.stages.forEach(function (st) { for (var k in st.metrics) { m[k] = st.metrics[k]; names[k] = 1; } });
      var r = rk[l.id] || {};
      return { lane: l.id, state: l.state, rank: r.rank === undefined ? null : r.rank, score: r.score,
               perf_norm: r.perf_norm, speed_norm: r.speed_norm, size_bytes: l.size_bytes,
               metrics: m, baseline: l.baseline };
    });
    return { rows: rows, names: Object.keys(names).sort() };
  }

  function renderMetrics(mr) {
    var cols = ["lane", "state", "rank", "score", "perf_norm", "speed_norm", "size_bytes"].concat(mr.names);
    function val(r, c) { return c in r ? r[c] : r.metrics[c]; }
    var rows = mr.rows.slice().sort(function (a, b) {
      var x = val(a, sort.col), y = val(b, sort.col);
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * sort.dir;
    });
    var head = el("tr", null, cols.map(function (c) {
      var th = el("th", { cls: "sortable" + (sort.col === c ? (sort.dir > 0 ? " sorted-asc" : " sorted-desc") : ""),
                          "data-col": c, text: c });
      th.addEventListener("click", function () {
        if (sort.col === c) sort.dir = -sort.dir; else { sort.col = c; sort.dir = 1; }
        render();
      });
      return th;
    }));
    return el("table", { id: "metrics" }, [el("thead", null, [head]), el("tbody", null, rows.map(function (r) {
      return el("tr", { "data-lane": r.lane }, cols.map(function (c) {
        var v = val(r, c);
        if (c === "state") return el("td", null, [state(v)]);
        if (c === "size_bytes") return el("td", { cls: "num", text: fmtBytes(v) });
        return el("td", { cls: typeof v === "number" ? "num" : "", "data-metric": c,
                          text: typeof v === "number" ? fmtNum(v) : (v === null || v === undefined ? "" : v) });
      }));
    }))]);
  }

  function renderChart(mr) {
    var W = 640, H = 380, P = 48;
    var pts = mr.rows.filter(function (r) { return typeof r.perf_norm === "number" && typeof r.speed_norm === "number"; });
    var s = svg("svg", { "class": "chart", id: "chart", width: W, height: H, viewBox: "0 0 " + W + " " + H });
    if (!pts.length) {
      var t = svg("text", { x: P, y: H / 2, fill: "#7b8794" });
      t.textContent = "no ranked lanes yet: the chart fills in as lanes finish";
      s.appendChild(t);
      return s;
    }
    var xs = pts.map(function (p) { return p.speed_norm; }), ys = pts.map(function (p) { return p.perf_norm; });
    var x0 = Math.min.apply(null, xs.concat([0])), x1 = Math.max.apply(null, xs.concat([0]));
    var y0 = Math.min.apply(null, ys.concat([1])), y1 = Math.max.apply(null, ys.concat([1]));
    var dx = (x1 - x0) || 1, dy = (y1 - y0) || 1;
    x0 -= dx * 0.1; x1 += dx * 0.1; y0 -= dy * 0.1; y1 += dy * 0.1;
    function X(v) { return P + (v - x0) / (x1 - x0) * (W - 2 * P); }
    function Y(v) { return H - P - (v - y0) / (y1 - y0) * (H - 2 * P); }
    s.appendChild(svg("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, stroke: "#9aa5b1" }));
    s.appendChild(svg("line", { x1: P, y1: P, x2: P, y2: H - P, stroke: "#9aa5b1" }));
    var lx = svg("text", { x: W / 2, y: H - 12, "text-anchor": "middle", fill: "#52606d" }); lx.textContent = "speed_norm";
    var ly = svg("text", { x: 14, y: H / 2, transform: "rotate(-90 14 " + H / 2 + ")", "text-anchor": "middle", fill: "#52606d" });
    ly.textContent = "perf_norm";
    s.appendChild(lx); s.appendChild(ly);
    var sizes = pts.map(function (p) { return p.size_bytes || 0; });
    var smax = Math.max.apply(null, sizes) || 1;
    pts.forEach(function (p) {
      var r = 4 + 10 * Math.sqrt((p.size_bytes || 0) / smax);
      var top = p.rank && p.rank <= 3;
      var c = svg("circle", { cx: X(p.speed_norm), cy: Y(p.perf_norm), r: r, "data-lane": p.lane,
                              fill: p.baseline ? "#dc2626" : top ? "#f59e0b" : "#2563eb", "fill-opacity": 0.8,
                              stroke: top ? "#92400e" : "#1e3a8a" });
      var tt = svg("title", {}); tt.textContent = p.lane + ": perf_norm " + fmtNum(p.perf_norm) +
        ", speed_norm " + fmtNum(p.speed_norm) + (p.size_bytes ? ", " + fmtBytes(p.size_bytes) : "");
      c.appendChild(tt);
      s.appendChild(c);
      if (top || p.baseline) {
        var lb = svg("text", { x: X(p.speed_norm) + r + 3, y: Y(p.perf_norm) + 4, fill: "#1f2933", "font-size": 12,
                               "class": top ? "top3" : "baseline" });
        lb.textContent = (top ? "#" + p.rank + " " : "") + p.lane;
        s.appendChild(lb);
      }
    });
    return s;
  }

  function renderSweep(d) {
    var sw = d.sweep, mr = metricRows(d);
    main.textContent = "";
    main.appendChild(el("h1", null, ["Sweep " + sw.id + " ", state(sw.state)]));
    main.appendChild(el("p", { id: "summary" }, [
      el("progress", { max: sw.progress.stages_total || 1, value: sw.progress.stages_done }),
      " " + sw.progress.stages_done + "/" + sw.progress.stages_total + " stages; best lane: ",
      el("span", { id: "best", text: sw.best ? sw.best.lane + " (score " + fmtNum(sw.best.score) + ")" : "-" }),
      "; base model " + sw.base_model]));
    var files = el("p", { cls: "files", id: "files" }, sw.files.length ? sw.files.map(function (f) {
      return link("/sweeps/" + encodeURIComponent(sw.id) + "/" + f, f);
    }) : [el("span", { cls: "muted", text: "report.html, rank.csv and the zips appear when the sweep ends" })]);
    main.appendChild(files);
    main.appendChild(el("h2", { text: "Lanes" }));
    main.appendChild(renderLanes(d));
    main.appendChild(el("h2", { text: "Metrics" }));
    if (d.rank.error) main.appendChild(el("p", { cls: "muted", text: "ranking: " + d.rank.error }));
    main.appendChild(renderMetrics(mr));
    main.appendChild(el("h2", { text: "Trade-off (perf_norm against speed_norm; size by model size; top three marked)" }));
    main.appendChild(renderChart(mr));
  }

  /* ===== logs ===== */
  function renderLog(d, append) {
    if (!append) {
      main.textContent = "";
      main.appendChild(el("h1", null, ["Logs of lane " + d.lane + " ", el("span", { id: "lane-state" }, [state(d.state)])]));
    } else {
      var ls = document.getElementById("lane-state");
      ls.textContent = ""; ls.appendChild(state(d.state));
    }
    d.stages.forEach(function (st) {
      var id = "log-" + st.name.replace(/[^A-Za-z0-9_-]/g, "_");
      var pre = document.getElementById(id);
      if (!pre) {
        main.appendChild(el("h2", null, [st.name + " ", el("span", { cls: "stage-state", "data-stage": st.name }, [state(st.state)]),
                                         st.n ? " attempt " + st.n : ""]));
        pre = el("pre", { cls: "log", id: id });
        main.appendChild(pre);
      } else {
        var sp = main.querySelector('.stage-state[data-stage="' + st.name + '"]');
        if (sp) { sp.textContent = ""; sp.appendChild(state(st.state)); }
      }
      var att = st.attempt === undefined ? "" : String(st.attempt);
      if (att !== (pre.dataset.attempt || "")) {
        if (pre.dataset.attempt) pre.textContent = ""; /* a new attempt: its own log */
        pre.dataset.attempt = att;
      }
      if (st.text) {
        var stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.appendChild(document.createTextNode(st.text));
        if (stick) pre.scrollTop = pre.scrollHeight;
      }
      if (st.next_offset !== undefined) logOffsets[st.name] = { att: st.attempt, off: st.next_offset };
    });
  }
  function fetchLog(first) {
    var base = "/api/sweeps/" + encodeURIComponent(R.sweep) + "/lanes/" + encodeURIComponent(R.lane) + "/log";
    if (first) return api(base).then(function (d) { renderLog(d, false); return d; });
    /* one request per stage with its offset; a new attempt starts from its beginning */
    return api(base).then(function (head) {
      return Promise.all(head.stages.map(function (st) {
        var o = logOffsets[st.name];
        var off = o && o.att === st.attempt ? o.off : 0;
        if (!st.attempt) return Promise.resolve(st);
        return api(base + "?stage=" + encodeURIComponent(st.name) + "&offset=" + off).then(function (x) {
          var s2 = x.stages[0] || st;
          s2.attempt = st.attempt; return s2;
        });
      })).then(function (stages) { head.stages = stages; renderLog(head, true); return head; });
    });
  }

  /* Only the progress, ETA, slot and last-line cells of the stage rows: the rest of the page
   * (scroll position, sorting) stays as it is between two database changes. */
  function updateLive() {
    if (!data || !data.lanes) return;
    var byKey = {};
    data.lanes.forEach(function (l) { l.stages.forEach(function (st) { byKey[st.key] = st; }); });
    Array.prototype.forEach.call(document.querySelectorAll("#lanes tr.stage-row"), function (tr) {
      var st = byKey[tr.dataset.key];
      if (!st) return;
      var cells = liveCells(st), old = tr.querySelector("td.progress");
      if (!old) return;
      for (var i = 0; i < 4; i++) {
        var next = old.nextSibling;
        tr.replaceChild(cells[i], old);
        old = next;
      }
    });
  }

  /* ===== refresh and the event stream ===== */
  function render() {
    if (!data) return;
    if (R.view === "sweeps") renderSweeps(data);
    else if (R.view === "sweep") renderSweep(data);
    window.exaqRenders++;
    document.body.dataset.renders = String(window.exaqRenders);
  }
  function refresh(first) {
    if (inflight) { again = true; return; }
    inflight = true;
    var p;
    if (R.view === "log") p = fetchLog(first);
    else p = api(R.view === "sweeps" ? "/api/sweeps" : "/api/sweeps/" + encodeURIComponent(R.sweep))
      .then(function (d) { data = d; render(); });
    p.catch(function (e) {
      main.textContent = "";
      main.appendChild(el("p", { cls: "err", id: "error", text: String(e.message || e) }));
    }).then(function () {
      inflight = false;
      document.body.dataset.updated = String(Date.now());
      if (again) { again = false; refresh(false); }
    });
  }
  function soon() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(function () { refreshTimer = null; refresh(false); }, 50);
  }
  function note(kind, text) {
    var li = el("li", { "data-kind": kind, "data-t": String(Date.now()), text: text });
    sseLog.appendChild(li);
    while (sseLog.children.length > 200) sseLog.removeChild(sseLog.firstChild);
  }
  function connect() {
    var es = new EventSource(withTok("/api/events"));
    es.addEventListener("hello", function () {
      conn.textContent = "live"; conn.className = "conn live";
      document.body.dataset.sse = "open";
      note("hello", "");
      soon(); /* whatever changed while disconnected */
    });
    es.addEventListener("change", function (ev) {
      var m = JSON.parse(ev.data);
      (m.events || []).forEach(function (e) { note("change", (e.sweep || "") + " " + (e.lane || "") + " " + e.what); });
      soon();
    });
    es.addEventListener("live", function (ev) {
      var m = JSON.parse(ev.data), next = {};
      (m.running || []).forEach(function (a) { next[a.key] = a; });
      live = next;
      note("live", String((m.running || []).length));
      if (R.view === "sweep") updateLive();
      else if (R.view === "log") soon();
    });
    es.onerror = function () {
      conn.textContent = "reconnecting"; conn.className = "conn down";
      document.body.dataset.sse = "down";
    };
  }
  setCrumbs();
  if (tq) document.getElementById("home").href = withTok("/");
  refresh(true);
  connect();
})();
