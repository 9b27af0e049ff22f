// The operator dashboard: reads the tenant's /v1/analytics/... routes with its API key and
// draws them (uPlot, vendored in /dashboard/vendor/). On loopback with the demo tenant the
// server hands out the demo key (/dashboard/demo-key) and the page opens directly; otherwise
// it asks for a key and keeps it in this tab's sessionStorage only.
"use strict";

const $ = (s) => document.querySelector(s);
const KEY = "accolade-dashboard-key";
const state = { key: sessionStorage.getItem(KEY), sort: { col: "share", dir: "ascending" }, badges: [], medians: {}, charts: {}, activity: [] };
// What the page shows, for the end-to-end test to compare with the API.
window.dashboard = state;

async function api(path) {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${state.key}` } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const e = new Error(body.message || res.statusText);
    e.status = res.status;
    throw e;
  }
  return body;
}

function status(text) {
  $("#status").textContent = text;
}

/** A duration bucket {low_ms, high_ms} in words: its middle, rounded. */
function duration(q) {
  if (!q) return "–";
  if (q.high_ms <= 1000) return "under 1 s";
  const ms = Math.sqrt(q.low_ms * q.high_ms);
  const units = [["d", 86400000], ["h", 3600000], ["min", 60000], ["s", 1000]];
  for (const [u, n] of units) if (ms >= n) return `≈ ${(ms / n).toFixed(ms / n < 10 ? 1 : 0)} ${u}`;
  return "under 1 s";
}

function range() {
  const from = $("#from").value, to = $("#to").value;
  return from && to ? `from=${from}&to=${to}` : "";
}

// ---------------------------------------------------------------------------------------------
// Charts
// ---------------------------------------------------------------------------------------------

const COLORS = { dau: "#38bdf8", wau: "#a78bfa", mau: "#fbbf24", events: "#22d3ee", unlocks: "#f472b6" };

function chart(name, el, series, data, bars) {
  state.charts[name]?.destroy();
  const width = Math.max(300, el.clientWidth - 16);
  const axis = { stroke: "#cbd5e1", grid: { stroke: "#334155" }, ticks: { stroke: "#334155" } };
  const opts = {
    width,
    height: 220,
    scales: { x: { time: true } },
    axes: [axis, axis],
    series: [{}, ...series.map(([label, color]) => ({
      label,
      stroke: color,
      width: 2,
      fill: bars ? color + "99" : undefined,
      paths: bars ? uPlot.paths.bars({ size: [0.6, 40] }) : undefined,
      points: { show: !bars },
    }))],
  };
  state.charts[name] = new uPlot(opts, data, el);
}

function drawActivity(days) {
  state.activity = days;
  const x = days.map((d) => Date.parse(d.date + "T12:00:00Z") / 1000);
  const col = (k) => days.map((d) => d[k]);
  chart("activity", $("#activity-chart"), [["DAU", COLORS.dau], ["WAU", COLORS.wau], ["MAU", COLORS.mau]], [x, col("dau"), col("wau"), col("mau")], false);
  chart("volume", $("#volume-chart"), [["Events", COLORS.events], ["Unlocks", COLORS.unlocks]], [x, col("events"), col("unlocks")], true);
  const body = $("#activity-table tbody");
  body.replaceChildren(...days.map((d) => {
    const tr = document.createElement("tr");
    for (const v of [d.date, d.dau, d.wau, d.mau, d.events, d.unlocks, d.backfilled_unlocks, d.new_users]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    return tr;
  }));
}

// ---------------------------------------------------------------------------------------------
// The badge table, sortable by any column
// ---------------------------------------------------------------------------------------------

const TIERS = ["bronze", "silver", "gold", "platinum", "diamond"];

function sortValue(b, col) {
  if (col === "tier") return TIERS.indexOf(b.tier);
  if (col === "name") return b.name.toLowerCase();
  if (col === "median") return state.medians[b.badge]?.low_ms ?? Infinity;
  return b[col];
}

function drawBadges() {
  const { col, dir } = state.sort;
  const sign = dir === "ascending" ? 1 : -1;
  const rows = [...state.badges].sort((a, b) => {
    const x = sortValue(a, col), y = sortValue(b, col);
    return (x < y ? -1 : x > y ? 1 : a.badge < b.badge ? -1 : 1) * sign;
  });
  for (const th of document.querySelectorAll("#badges th")) {
    th.setAttribute("aria-sort", th.querySelector("button").dataset.sort === col ? dir : "none");
  }
  $("#badges tbody").replaceChildren(...rows.map((b) => {
    const tr = document.createElement("tr");
    tr.dataset.badge = b.badge;
    const cells = [
      b.name + (b.retired ? " (retired)" : ""),
      null,
      String(b.holders) + (b.backfilled ? ` (${b.backfilled} backfilled)` : ""),
      `${(b.share * 100).toFixed(1)} %`,
      String(b.period_holders),
      duration(state.medians[b.badge]),
    ];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      if (i === 1) {
        const span = document.createElement("span");
        span.className = `tier tier-${b.tier}`;
        span.textContent = b.tier;
        td.append(span);
      } else {
        td.textContent = text;
      }
      if (i >= 2 && i <= 4) td.className = "num";
      tr.append(td);
    });
    return tr;
  }));
}

for (const button of document.querySelectorAll("#badges th button")) {
  button.addEventListener("click", () => {
    const col = button.dataset.sort;
    const same = state.sort.col === col;
    state.sort = { col, dir: same && state.sort.dir === "ascending" ? "descending" : "ascending" };
    drawBadges();
  });
}

// ---------------------------------------------------------------------------------------------
// Funnel
// ---------------------------------------------------------------------------------------------

async function drawFunnel() {
  const ids = $("#funnel-badges").value.split(",").map((s) => s.trim()).filter(Boolean);
  $("#funnel-error").textContent = "";
  let doc;
  try {
    doc = await api(`/v1/analytics/funnel?badges=${encodeURIComponent(ids.join(","))}`);
  } catch (e) {
    $("#funnel-error").textContent = e.message;
    $("#funnel").replaceChildren();
    return;
  }
  state.funnel = doc.steps;
  const top = Math.max(1, ...doc.steps.map((s) => s.users));
  $("#funnel").replaceChildren(...doc.steps.map((s, i) => {
    const li = document.createElement("li");
    li.dataset.badge = s.badge;
    const name = document.createElement("span");
    name.textContent = `${i + 1}. ${s.name}`;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = `${(100 * s.users) / top}%`;
    fill.textContent = `${s.users} users`;
    bar.append(fill);
    li.append(name, bar);
    if (i > 0) {
      const note = document.createElement("span");
      note.className = "note";
      note.textContent = `${(s.conversion * 100).toFixed(0)} % of the step before; median ${duration(s.median_from_previous)} after it`;
      li.append(note);
    }
    return li;
  }));
}

$("#funnel-form").addEventListener("submit", (e) => {
  e.preventDefault();
  drawFunnel();
});

// ---------------------------------------------------------------------------------------------
// Health, live
// ---------------------------------------------------------------------------------------------

async function drawHealth() {
  const h = await api("/v1/analytics/health");
  state.health = h;
  const perMinute = h.events_per_minute;
  $("#h-epm").textContent = perMinute[perMinute.length - 1];
  $("#h-accepted").textContent = h.accepted;
  $("#h-dup").textContent = `${(h.duplicate_rate * 100).toFixed(1)} %`;
  const rejected = Object.values(h.rejected).reduce((a, b) => a + b, 0);
  $("#h-rejected").textContent = rejected;
  $("#h-codes").textContent = Object.entries(h.rejected).map(([c, n]) => `${c}: ${n}`).join(", ");
  $("#h-dead").textContent = h.dead_letters;
  $("#h-latency").textContent = h.unlock_latency_ms.p50 ? `${h.unlock_latency_ms.p50[0].toFixed(1)}–${h.unlock_latency_ms.p50[1].toFixed(1)} ms` : "–";
  $("#h-version").textContent = h.catalogue_version;
  const running = h.backfill_jobs.filter((j) => j.status === "running").length;
  $("#h-jobs").textContent = `${h.backfill_jobs.length}${running ? ` (${running} running)` : ""}`;
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

async function load() {
  status("loading…");
  const q = range();
  const [activity, rarity, times] = await Promise.all([
    api(`/v1/analytics/activity?${q}`),
    api(`/v1/analytics/rarity?${q}`),
    api("/v1/analytics/time-to-unlock"),
  ]);
  if (!q && activity.days.length) {
    $("#from").value = activity.days[0].date;
    $("#to").value = activity.days[activity.days.length - 1].date;
  }
  state.rarity = rarity;
  state.badges = rarity.badges;
  state.medians = Object.fromEntries(times.badges.map((t) => [t.badge, t.median]));
  $("#badges-sub").textContent = `${rarity.users} users; ${rarity.active_users} active ${rarity.from} to ${rarity.to} (${activity.timezone})`;
  drawActivity(activity.days);
  drawBadges();
  if (!$("#funnel-badges").value) {
    $("#funnel-badges").value = new URLSearchParams(location.search).get("funnel") || times.badges.slice(0, 3).map((b) => b.badge).join(",");
  }
  await Promise.all([drawFunnel(), drawHealth()]);
  status(`updated ${new Date().toLocaleTimeString()}`);
}

$("#range").addEventListener("submit", (e) => {
  e.preventDefault();
  load().catch((err) => status(`could not load: ${err.message}`));
});

function askKey(error = "") {
  $("#login-error").textContent = error;
  const dialog = $("#login");
  if (!dialog.open) dialog.showModal();
  $("#key").focus();
}

$("#login-form").addEventListener("submit", () => {
  state.key = $("#key").value.trim();
  start();
});

async function start() {
  if (!state.key) {
    // Only a server running the demo (on loopback, by default) answers this.
    try {
      const res = await fetch("/dashboard/demo-key");
      if (res.ok) state.key = (await res.json()).key;
    } catch {}
  }
  if (!state.key) return askKey();
  try {
    await api("/v1/analytics/health");
  } catch (e) {
    if (e.status === 401) {
      state.key = null;
      sessionStorage.removeItem(KEY);
      return askKey("That key is not valid for any tenant.");
    }
    status(`could not load: ${e.message}`);
    return;
  }
  sessionStorage.setItem(KEY, state.key);
  $("#main").hidden = false;
  const params = new URLSearchParams(location.search);
  if (params.get("from")) $("#from").value = params.get("from");
  if (params.get("to")) $("#to").value = params.get("to");
  await load().catch((err) => status(`could not load: ${err.message}`));
  setInterval(() => drawHealth().catch(() => status("health: not answering")), 2000);
}

start();
