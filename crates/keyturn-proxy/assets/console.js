// keyturn console: polls the admin API and renders it. Everything that came from outside
// (labels, projects, models, messages) is inserted as text (textContent), never as HTML.
(function () {
  "use strict";

  const POLL_MS = 2000;
  const HISTORY_MS = 30000;
  const pacific = new Intl.DateTimeFormat("en-US", {
    timeZone: "America/Los_Angeles", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false, timeZoneName: "short",
  });
  const local = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
    timeZoneName: "short",
  });

  let lastEvent = 0;
  let history = [];
  let charts = {};

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function when(ms) {
    if (ms === null || ms === undefined) return "";
    const d = new Date(ms);
    return pacific.format(d) + " · " + local.format(d) + " (your time)";
  }

  function whenCell(ms) {
    if (ms === null || ms === undefined) return el("td", {}, "—");
    const d = new Date(ms);
    return el("td", { class: "when" },
      el("span", { class: "pt" }, pacific.format(d)),
      el("span", { class: "lt" }, local.format(d) + " (your time)"));
  }

  function fmt(n) {
    return n === null || n === undefined ? "∞" : Number(n).toLocaleString();
  }

  function toast(text, bad) {
    const t = document.getElementById("toast");
    t.textContent = text;
    t.className = "toast show" + (bad ? " bad" : "");
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.className = "toast"; }, 5000);
  }

  async function api(path, opts) {
    const r = await fetch(path, Object.assign({ credentials: "same-origin", cache: "no-store" }, opts || {}));
    if (r.status === 401) { location.reload(); throw new Error("signed out"); }
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error((body.error && body.error.message) || ("HTTP " + r.status));
    return body;
  }

  function confirmAction(text) {
    const dlg = document.getElementById("confirm");
    document.getElementById("confirm-text").textContent = text;
    return new Promise((resolve) => {
      dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
      dlg.showModal();
    });
  }

  async function act(question, path, body, done) {
    if (!(await confirmAction(question))) return;
    try {
      const r = await api(path, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: body ? JSON.stringify(body) : "{}",
      });
      toast(done(r));
    } catch (e) {
      toast("failed: " + e.message, true);
    }
    refresh();
  }

  function button(text, title, onclick) {
    const b = el("button", { type: "button", title: title }, text);
    b.addEventListener("click", onclick);
    return b;
  }

  function renderKeys(keys) {
    const tbody = document.querySelector("#keys tbody");
    const rows = keys.map((k) => {
      const tr = el("tr", { "data-key": k.label, "data-state": k.state },
        el("td", { class: "label" }, k.label),
        el("td", {}, el("code", {}, k.fingerprint)),
        el("td", {}, k.project),
        el("td", {}, el("span", { class: "badge " + k.state }, k.by_admin ? "disabled (by admin)" : k.state)),
        el("td", {}, k.reason || (k.failures ? k.failures + " failure(s)" : "")),
        whenCell(k.since_ms),
        whenCell(k.until_ms),
        el("td", { class: "actions" },
          button("Reset", "clear disabled and breaker", () =>
            act("Reset key " + k.label + " (" + k.fingerprint + ")? A disabled key is enabled again and its breaker closed.",
              "/admin/keys/" + encodeURIComponent(k.fingerprint) + "/reset", null,
              () => "key " + k.label + " reset")),
          k.by_admin
            ? button("Enable", "put the key back in rotation", () =>
              act("Enable key " + k.label + " (" + k.fingerprint + ")? It takes requests again.",
                "/admin/keys/" + encodeURIComponent(k.fingerprint) + "/enable", null,
                () => "key " + k.label + " enabled"))
            : button("Disable", "take the key out of rotation until enabled", () =>
              act("Disable key " + k.label + " (" + k.fingerprint + ")? It takes no request until you enable it, across restarts.",
                "/admin/keys/" + encodeURIComponent(k.fingerprint) + "/disable", null,
                () => "key " + k.label + " disabled")),
          button("Re-check", "ask Gemini now (costs no quota)", () =>
            act("Re-check key " + k.label + " with Gemini now? (costs no quota)",
              "/admin/keys/" + encodeURIComponent(k.fingerprint) + "/recheck", null,
              (r) => "key " + k.label + ": " + r.detail))));
      return tr;
    });
    tbody.replaceChildren(...rows);
  }

  function origin(o) { return o && o !== "unknown" ? o : ""; }

  function usage(used, limit, from) {
    const pct = limit ? Math.min(100, Math.round((100 * used) / limit)) : 0;
    const bar = el("span", { class: "bar" }, el("span", { class: "fill" }));
    bar.firstChild.style.width = pct + "%";
    if (pct >= 90) bar.classList.add("hot");
    return el("td", { class: "use" },
      el("span", {}, fmt(used) + " / " + fmt(limit)), bar,
      from ? el("small", {}, from) : null);
  }

  function renderScopes(scopes) {
    const tbody = document.querySelector("#scopes tbody");
    const rows = scopes.map((s) => {
      const day = el("td", { class: "use" });
      const u = usage(s.rpd_used, s.limits.rpd, origin(s.origin.rpd));
      day.replaceChildren(...u.childNodes);
      day.append(el("small", {}, s.rpd_served + " served, " + s.rpd_refused + " refused"));
      if (s.runs_out_today_ms) day.append(el("small", { class: "eta" }, "at today's pace, out " + when(s.runs_out_today_ms)));
      const stateCell = el("td", {}, el("span", { class: "badge " + s.state }, s.state));
      if (s.why_off) stateCell.append(el("small", { class: "why" }, s.why_off));
      let source = s.source + (s.tier ? " (" + s.tier + " tier)" : "");
      if (s.table_date) source += ", table of " + s.table_date;
      return el("tr", { "data-scope": s.project + "|" + s.model, "data-state": s.state },
        el("td", {}, s.project),
        el("td", {}, s.model),
        stateCell,
        usage(s.rpm_used, s.limits.rpm, origin(s.origin.rpm)),
        usage(s.tpm_used, s.limits.tpm, origin(s.origin.tpm)),
        day,
        el("td", {}, source),
        whenCell(s.returns_at_ms),
        el("td", { class: "actions" },
          button("Reset", "clear counters, cooldown, exhaustion, learned limits", () =>
            act("Reset " + s.model + " in project " + s.project + "? Its counters, cooldown, exhaustion and learned limits are cleared.",
              "/admin/scopes/reset", { project: s.project, model: s.model },
              () => s.model + " in " + s.project + " reset"))));
    });
    tbody.replaceChildren(...rows);
  }

  function renderSummary(st) {
    const counts = {};
    for (const k of st.keys) counts[k.state] = (counts[k.state] || 0) + 1;
    const parts = Object.entries(counts).map(([s, n]) => el("span", { class: "badge " + s }, n + " " + s));
    const req = st.requests;
    if (req) {
      parts.push(el("span", { class: "chip" }, req.in_flight + "/" + req.max_in_flight + " in flight"));
      if (req.waiting_for_slot) parts.push(el("span", { class: "chip" }, req.waiting_for_slot + " waiting"));
      if (req.waiting_for_quota) parts.push(el("span", { class: "chip" }, req.waiting_for_quota + " waiting for quota"));
    }
    // keyturn console: where its view comes from, and how old it is.
    const v = st.view;
    if (v) {
      let what = v.source;
      if (v.age_ms !== null && v.age_ms !== undefined) what += " · read " + Math.round(v.age_ms / 1000) + " s ago";
      if (v.error) what += " · " + v.error;
      parts.push(el("span", { class: "chip view" + (v.error ? " refused" : ""), id: "view", title: "where this console reads the state" }, what));
    }
    if (st.actions === false) {
      parts.push(el("span", { class: "chip", id: "read-only", title: "actions are off" }, "read-only (start keyturn console with --allow-actions to act)"));
    }
    document.body.classList.toggle("read-only", st.actions === false);
    const r = st.reload;
    if (r) {
      const what = r.ok
        ? "reloaded " + when(r.at_ms) + ": " + r.keys + " keys" +
          (r.added.length ? ", +" + r.added.join(", +") : "") +
          (r.removed.length ? ", −" + r.removed.join(", −") : "") +
          (r.changed.length ? ", changed " + r.changed.join(", ") : "")
        : "reload refused " + when(r.at_ms) + ": " + r.error + " (the previous configuration stays)";
      parts.push(el("span", { class: "chip reload " + (r.ok ? "ok" : "refused"), id: "last-reload", title: "last reload (" + r.trigger + ")" }, what));
    }
    document.getElementById("summary").replaceChildren(...parts);
    document.getElementById("clock").textContent =
      "Pacific day resets " + when(st.next_pacific_midnight_ms);
  }

  // keyturn console only: the seed runs in progress on this state folder, with their ETA.
  function renderRuns(runs) {
    const section = document.getElementById("runs-section");
    if (!section) return;
    section.hidden = !runs || runs.length === 0;
    if (section.hidden) return;
    const rows = runs.map((r) => el("li", { "data-pid": String(r.pid) },
      el("span", { class: "label" }, "pid " + r.pid + " → " + r.out),
      el("span", {}, " · episodes " + r.episodes_done + "/" + r.episodes_total + " · " + r.eta)));
    document.getElementById("runs").replaceChildren(...rows);
  }

  function renderEvents(evs) {
    const list = document.getElementById("events");
    for (const e of evs) {
      lastEvent = Math.max(lastEvent, e.seq);
      const li = el("li", { class: e.severity, "data-kind": e.kind },
        el("time", {}, local.format(new Date(e.at_ms))),
        el("span", { class: "kind" }, e.kind.replace(/_/g, " ")),
        el("span", { class: "msg" }, e.message));
      list.prepend(li);
    }
    while (list.children.length > 200) list.lastChild.remove();
  }

  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563", "#65a30d", "#ea580c"];

  function series(by, metric) {
    // Every one of the last 30 Pacific days, today last, whether used or not.
    const today = new Intl.DateTimeFormat("en-CA", { timeZone: "America/Los_Angeles" }).format(new Date());
    const end = Date.parse(today + "T00:00:00Z");
    const dates = [];
    for (let i = 29; i >= 0; i--) dates.push(new Date(end - i * 86400000).toISOString().slice(0, 10));
    const names = Array.from(new Set(history.map((d) => d[by]))).sort();
    const idx = new Map(dates.map((d, i) => [d, i]));
    const data = [dates.map((d) => Date.parse(d + "T00:00:00Z") / 1000)];
    for (const n of names) {
      const col = new Array(dates.length).fill(0);
      for (const d of history) if (d[by] === n && idx.has(d.date)) col[idx.get(d.date)] += d[metric];
      data.push(col);
    }
    return { names, data };
  }

  function drawChart(id, by) {
    const metric = document.getElementById("metric").value;
    const host = document.getElementById(id);
    const { names, data } = series(by, metric);
    if (charts[id]) { charts[id].destroy(); delete charts[id]; }
    host.replaceChildren();
    if (names.length === 0) { host.append(el("p", { class: "empty" }, "No use recorded yet.")); return; }
    const width = Math.max(260, host.clientWidth);
    const opts = {
      width, height: 220,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      scales: { x: { time: true } },
      axes: [{}, { size: 60 }],
      series: [{ label: "Pacific day", value: (u, v) => v === null ? "" : new Date(v * 1000).toISOString().slice(0, 10) }]
        .concat(names.map((n, i) => ({
          label: n, stroke: PALETTE[i % PALETTE.length], width: 2,
          fill: PALETTE[i % PALETTE.length] + "22", points: { show: true },
        }))),
    };
    charts[id] = new uPlot(opts, data, host);
  }

  function drawCharts() {
    drawChart("chart-keys", "key");
    drawChart("chart-models", "model");
  }

  async function refresh() {
    try {
      const [st, ev] = await Promise.all([api("/admin/status"), api("/admin/events?after=" + lastEvent)]);
      renderSummary(st);
      renderKeys(st.keys);
      renderScopes(st.scopes);
      renderRuns(st.runs);
      renderEvents(ev.events);
      const live = document.getElementById("live");
      live.textContent = "live · " + new Date().toLocaleTimeString();
      live.className = "live ok";
    } catch (e) {
      const live = document.getElementById("live");
      live.textContent = "not updating: " + e.message;
      live.className = "live bad";
    }
  }

  async function refreshHistory() {
    try {
      history = (await api("/admin/history")).days;
      drawCharts();
    } catch (e) {
      toast("history: " + e.message, true);
    }
  }

  document.getElementById("metric").addEventListener("change", drawCharts);
  let resizeTimer;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(drawCharts, 200); });
  refresh();
  refreshHistory();
  setInterval(refresh, POLL_MS);
  setInterval(refreshHistory, HISTORY_MS);
})();
