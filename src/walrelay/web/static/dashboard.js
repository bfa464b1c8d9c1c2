// walrelay dashboard: loads the server's history (/api/history: the last
// 20 minutes) so the charts are filled at once, then polls /api/status every
// second and redraws in place. No build step, no libraries: charts are
// inline SVG. Every value from the server goes through textContent (never
// innerHTML).
"use strict";

(function () {
  const POLL_MS = 1000;
  const WINDOW_S = 15 * 60; // the charts show the last 15 minutes
  const COLORS = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4b5563"];
  const SVG_NS = "http://www.w3.org/2000/svg";

  const series = { throughput: new Map(), lag: new Map(), wal: new Map() };
  let previous = null; // the last status, for rates
  const rates = new Map();

  function $(id) { return document.getElementById(id); }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "-";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let v = Number(n);
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "-";
    if (s < 1) return (s * 1000).toFixed(0) + " ms";
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function fmtNum(n) {
    if (n === null || n === undefined) return "-";
    return Number(n).toLocaleString("en-US", { maximumFractionDigits: 1 });
  }

  // A series is a list of [time (s), value], oldest first, within WINDOW_S.
  function push(map, name, t, value) {
    let arr = map.get(name);
    if (!arr) { arr = []; map.set(name, arr); }
    if (arr.length && arr[arr.length - 1][0] >= t) return;
    arr.push([t, value]);
    while (arr.length && arr[0][0] < t - WINDOW_S) arr.shift();
  }

  // The server's samples: throughput from consecutive delivered totals.
  function seed(history) {
    const pts = history.points || [];
    for (let i = 0; i < pts.length; i++) {
      const p = pts[i], before = i > 0 ? pts[i - 1] : null;
      for (const [name, d] of Object.entries(p.destinations)) {
        if (before && before.destinations[name] && p.t > before.t) {
          const rate = Math.max(0, (d.events_out - before.destinations[name].events_out) / (p.t - before.t));
          push(series.throughput, name, p.t, rate);
        }
        push(series.lag, name, p.t, d.lag);
      }
      for (const [name, retained] of Object.entries(p.slots)) push(series.wal, name, p.t, retained);
    }
  }

  function colorOf(map, name) {
    const names = Array.from(map.keys());
    return COLORS[names.indexOf(name) % COLORS.length];
  }

  function drawChart(svgId, legendId, map, fmt) {
    const svg = $(svgId);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const W = 600, H = 160, top = 8, bottom = 16;
    let max = 0, oldest = Infinity, newest = -Infinity;
    for (const arr of map.values()) {
      for (const [t, v] of arr) {
        if (v > max) max = v;
        if (t < oldest) oldest = t;
        if (t > newest) newest = t;
      }
    }
    // The time axis spans what is known, from 1 minute up to WINDOW_S.
    const span = newest > oldest ? Math.min(WINDOW_S, Math.max(60, newest - oldest)) : 60;
    const start = (newest > -Infinity ? newest : 0) - span;
    if (max <= 0) max = 1;
    for (let i = 0; i <= 2; i++) {
      const y = top + (H - top - bottom) * i / 2;
      const line = document.createElementNS(SVG_NS, "line");
      line.setAttribute("x1", "0"); line.setAttribute("x2", String(W));
      line.setAttribute("y1", String(y)); line.setAttribute("y2", String(y));
      line.setAttribute("class", "grid");
      svg.appendChild(line);
    }
    const label = document.createElementNS(SVG_NS, "text");
    label.setAttribute("x", "4"); label.setAttribute("y", String(top + 10));
    label.setAttribute("class", "axis");
    label.textContent = "max " + fmt(max);
    svg.appendChild(label);
    const spanLabel = document.createElementNS(SVG_NS, "text");
    spanLabel.setAttribute("x", "4"); spanLabel.setAttribute("y", String(H - 3));
    spanLabel.setAttribute("class", "axis");
    spanLabel.textContent = "last " + fmtSeconds(span);
    svg.appendChild(spanLabel);
    for (const [name, arr] of map) {
      if (arr.length < 2) continue;
      const pts = arr.map(([t, v]) => {
        const x = W * (t - start) / span;
        const y = top + (H - top - bottom) * (1 - v / max);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      const line = document.createElementNS(SVG_NS, "polyline");
      line.setAttribute("points", pts.join(" "));
      line.setAttribute("stroke", colorOf(map, name));
      line.setAttribute("data-series", name);
      svg.appendChild(line);
    }
    const legend = $(legendId);
    legend.replaceChildren();
    for (const [name, arr] of map) {
      const item = el("span");
      const sw = el("span", null, "swatch");
      sw.style.background = colorOf(map, name);
      item.appendChild(sw);
      item.appendChild(document.createTextNode(name + ": " + fmt(arr.length ? arr[arr.length - 1][1] : 0)));
      legend.appendChild(item);
    }
  }

  function setValue(id, text, level) {
    const e = $(id);
    e.textContent = text;
    e.classList.remove("warn", "page");
    if (level) e.classList.add(level);
  }

  function render(s) {
    // A `walrelay worker` answers with its own document: no slots, alerts or server.
    s.slots = s.slots || [];
    s.alerts = s.alerts || [];
    const state = $("state");
    state.textContent = s.state;
    state.className = "badge " + s.state;
    $("instance").textContent = s.instance || s.name || "";
    $("updated").textContent = "updated " + new Date(s.time * 1000).toLocaleTimeString();
    const paused = s.paused || {};
    const banner = $("banner");
    if (paused.parked_cap || paused.backpressure) {
      banner.textContent = paused.parked_cap
        ? "Replication paused: a destination's parked events reached their cap. The slot does not advance and retains WAL until the backlog drains."
        : "Replication paused: delivery is blocked (backpressure). walrelay released its replication connection and reconnects when there is room; the slot retains WAL meanwhile.";
      banner.className = "banner paused";
      banner.setAttribute("data-testid", "paused");
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }

    // Rates from the difference with the previous poll.
    const dt = previous ? s.time - previous.time : 0;
    let totalRate = 0, delivered = 0, parked = 0, dead = 0, maxLag = 0;
    for (const d of s.destinations) {
      let rate = 0;
      if (previous && dt > 0) {
        const before = previous.destinations.find((p) => p.name === d.name);
        if (before) rate = Math.max(0, (d.events_out - before.events_out) / dt);
      }
      rates.set(d.name, rate);
      totalRate += rate;
      delivered += d.events_out;
      parked += d.parked || 0;
      dead += d.dead || 0;
      // Lag: the age of the oldest event not delivered, parked ones included
      // (0 when nothing waits); the last batch's latency is a separate column.
      const lag = d.lag || 0;
      maxLag = Math.max(maxLag, lag);
      if (previous) push(series.throughput, d.name, s.time, rate);
      push(series.lag, d.name, s.time, lag);
    }
    for (const slot of s.slots) push(series.wal, slot.name, s.time, slot.retained_bytes || 0);
    previous = s;

    setValue("rate", fmtNum(totalRate));
    setValue("delivered", fmtNum(delivered));
    setValue("lag", fmtSeconds(maxLag), levelOf(s.alerts, "delivery_lag"));
    const own = s.slots.find((x) => x.owned);
    setValue("retained", own ? fmtBytes(own.retained_bytes) : "-", own ? levelOf(s.alerts, "slot_retained_wal", "slot " + own.name) : null);
    setValue("parked", fmtNum(parked), parked > 0 ? "warn" : null);
    setValue("dead", fmtNum(dead), dead > 0 ? "page" : null);
    const worst = s.alerts.some((a) => a.severity === "page") ? "page" : (s.alerts.length ? "warn" : null);
    setValue("alert-count", String(s.alerts.length), worst);
    setValue("confirmed", s.confirmed_lsn || "-");

    drawChart("chart-throughput", "legend-throughput", series.throughput, fmtNum);
    drawChart("chart-lag", "legend-lag", series.lag, fmtSeconds);
    drawChart("chart-wal", "legend-wal", series.wal, fmtBytes);
    renderAlerts(s.alerts, s.time);
    renderDestinations(s.destinations);
    renderSlots(s.slots);
    if (s.source === "worker") renderWorker(s); else renderServer(s);
    renderSync(s.sync);
    renderGroup(s.group, s.group_lag);
  }

  // walrelay worker: the whole consumer group's lag, partition by partition.
  function renderGroup(group, lag) {
    const section = $("group-section");
    section.hidden = !lag;
    if (!lag) return;
    $("group-title").textContent = "Consumer group " + group + ": lag " + fmtNum(lag.lag_records) + " records" +
      (lag.error ? " (last reading failed: " + lag.error + ")" : "");
    const body = $("group").tBodies[0];
    body.replaceChildren();
    for (const p of lag.partitions) {
      const tr = row([p.topic + "[" + p.partition + "]", p.owner || "another member (or none)",
        p.committed == null ? "-" : fmtNum(p.committed), fmtNum(p.end), fmtNum(p.lag_records)]);
      tr.setAttribute("data-partition", p.topic + "[" + p.partition + "]");
      body.appendChild(tr);
    }
  }

  function renderWorker(s) {
    const dl = $("server");
    dl.replaceChildren();
    const items = [
      ["worker", s.name],
      ["group / member", s.group + " / " + (s.member_id || "-")],
      ["topics", s.topics.join(", ")],
      ["partitions owned", s.partitions.map((p) => p.topic + "[" + p.partition + "]").join(", ") || "none"],
      ["rebalances", fmtNum(s.rebalances)],
      ["abandoned events", fmtNum(s.abandoned_events)],
    ];
    for (const [k, v] of items) { dl.appendChild(el("dt", k)); dl.appendChild(el("dd", v)); }
  }

  // walrelay sync: each direction's lag and conflicts by kind.
  function renderSync(sync) {
    const section = $("sync-section");
    section.hidden = !sync;
    if (!sync) return;
    const body = $("sync").tBodies[0];
    body.replaceChildren();
    for (const d of sync.directions) {
      const conflicts = Object.entries(d.conflicts).map(([k, n]) => k + " " + n).join(", ") || "none";
      const tr = row([d.direction, d.connected ? "connected" : "waiting", fmtNum(d.applied_transactions),
        fmtNum(d.applied_changes), d.lag_bytes == null ? "?" : fmtBytes(d.lag_bytes), fmtSeconds(d.lag_seconds),
        fmtNum(d.queued), conflicts]);
      tr.setAttribute("data-direction", d.direction);
      body.appendChild(tr);
    }
  }

  function levelOf(alerts, rule, object) {
    let level = null;
    for (const a of alerts) {
      if (a.rule !== rule || (object && a.object !== object)) continue;
      if (a.severity === "page") return "page";
      level = "warn";
    }
    return level;
  }

  function renderAlerts(alerts, now) {
    const ul = $("alerts");
    ul.replaceChildren();
    if (!alerts.length) { ul.appendChild(el("li", "none", "none")); return; }
    for (const a of alerts) {
      const li = el("li", null, a.severity);
      li.setAttribute("data-rule", a.rule);
      li.setAttribute("data-severity", a.severity);
      li.appendChild(el("span", a.severity.toUpperCase(), "sev " + a.severity));
      li.appendChild(el("strong", a.object + ": "));
      li.appendChild(document.createTextNode(a.message + " (for " + fmtSeconds(Math.max(0, now - a.since)) + ")"));
      if (a.fix) li.appendChild(el("div", "fix: " + a.fix, "fix"));
      ul.appendChild(li);
    }
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) {
      if (c instanceof Node) { const td = el("td"); td.appendChild(c); tr.appendChild(td); }
      else tr.appendChild(el("td", c));
    }
    return tr;
  }

  function renderDestinations(dests) {
    const body = $("destinations").tBodies[0];
    body.replaceChildren();
    for (const d of dests) {
      const tr = row([d.name, d.sink, fmtNum(d.events_in), fmtNum(d.events_out), fmtNum(rates.get(d.name) || 0),
        fmtSeconds(d.lag || 0), fmtSeconds(d.last_latency), fmtNum(d.in_flight), fmtNum(d.buffered), fmtNum(d.parked), fmtNum(d.dead), fmtNum(d.failures)]);
      tr.setAttribute("data-destination", d.name);
      const err = el("td", d.last_error || "", "err");
      if (d.last_error) err.title = d.last_error;
      tr.appendChild(err);
      body.appendChild(tr);
    }
  }

  function yesNo(v) { return el("span", v ? "yes" : "no", v ? "yes" : "no"); }

  function renderSlots(slots) {
    const body = $("slots").tBodies[0];
    body.replaceChildren();
    for (const s of slots) {
      const ws = s.walsender_state ? s.walsender_state + (s.sent_lag_bytes != null ? " (" + fmtBytes(s.sent_lag_bytes) + " behind)" : "") : "-";
      const tr = row([s.name, s.database || "-", s.owned ? "yes" : "", yesNo(s.active), s.wal_status || "-",
        fmtBytes(s.retained_bytes), fmtBytes(s.pending_bytes), fmtBytes(s.safe_wal_size),
        s.active ? "-" : fmtSeconds(s.inactive_seconds), fmtBytes(s.spill_bytes), ws]);
      tr.setAttribute("data-slot", s.name);
      body.appendChild(tr);
    }
  }

  function renderServer(s) {
    const dl = $("server");
    dl.replaceChildren();
    const sv = s.server || {};
    const tx = sv.oldest_transaction;
    const items = [
      ["slot / publication", s.slot + " / " + s.publication],
      ["current WAL LSN", sv.current_lsn || "-"],
      ["pg_wal size", fmtBytes(sv.pg_wal_bytes)],
      ["pg_wal disk used", sv.pg_wal_disk_used_percent == null ? "unknown" : sv.pg_wal_disk_used_percent.toFixed(0) + " %"],
      ["max_slot_wal_keep_size", sv.max_slot_wal_keep_size == null ? "unlimited (-1)" : fmtBytes(sv.max_slot_wal_keep_size)],
      ["oldest open transaction", tx ? fmtSeconds(tx.seconds) + " (pid " + tx.pid + ", " + (tx.state || "?") + ")" : "none"],
      ["events received / transactions", fmtNum(s.events_in) + " / " + fmtNum(s.transactions_in)],
      ["reconnects", fmtNum(s.reconnects)],
      ["heartbeat lag", fmtSeconds(s.heartbeat_lag)],
      ["monitor", s.monitor.error ? "error: " + s.monitor.error : (s.monitor.last_check ? "checked " + new Date(s.monitor.last_check * 1000).toLocaleTimeString() : "no check yet")],
    ];
    for (const n of s.monitor.notes || []) items.push(["note", n]);
    for (const [k, v] of items) { dl.appendChild(el("dt", k)); dl.appendChild(el("dd", v)); }
  }

  function showDown(text) {
    const state = $("state");
    state.textContent = "unreachable";
    state.className = "badge down";
    const b = $("banner");
    b.textContent = text;
    b.className = "banner";
    b.removeAttribute("data-testid");
    b.hidden = false;
  }

  async function poll() {
    try {
      const resp = await fetch("/api/status", { credentials: "same-origin", cache: "no-store" });
      if (resp.status === 401) { window.location.assign("/"); return; }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      render(await resp.json());
    } catch (e) {
      showDown("walrelay is not answering (" + e.message + "); retrying every second");
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  async function start() {
    try {
      const resp = await fetch("/api/history", { credentials: "same-origin", cache: "no-store" });
      if (resp.ok) seed(await resp.json());
    } catch (e) {
      // No history: the charts fill from the polls.
    }
    poll();
  }

  start();
})();
