// The demo page: one player per tab, actions as events, pushes as toasts and a badge shelf.
import { AccoladeClient } from "/accolade.js";

const $ = (id) => document.getElementById(id);
const state = { badges: new Map(), owned: new Map(), progress: new Map(), xp: 0, level: 1 };
let client = null;
let paused = false;

const params = new URLSearchParams(location.search);
// How long "disconnect" stays offline; ?drop=SECONDS shortens it (the end-to-end tests use 2).
const dropSeconds = Math.max(1, Number(params.get("drop")) || 10);
$("drop").textContent = `Disconnect for ${dropSeconds} seconds`;
$("player").value = params.get("player") || "player-" + Math.floor(Math.random() * 1000);

function log(text) {
  const li = document.createElement("li");
  li.textContent = new Date().toLocaleTimeString() + "  " + text;
  $("log").prepend(li);
  while ($("log").children.length > 12) $("log").lastChild.remove();
}

// Toasts are queued, as Khan Academy's were: at most three on screen, the next sliding in as
// one leaves, and a burst beyond two waiting collapsed into one "+N more" toast that opens
// the shelf, so a burst of unlocks never covers the page.
const TOASTS_ON_SCREEN = 3;
const TOASTS_WAITING = 2;
const toasts = { shown: 0, waiting: [], more: null };

function toast(spec) {
  if (toasts.waiting.length < TOASTS_WAITING) {
    toasts.waiting.push(spec);
  } else if (toasts.more) {
    toasts.more.count += 1;
  } else {
    toasts.more = { count: 1 };
    toasts.waiting.push(toasts.more);
  }
  pumpToasts();
}

function pumpToasts() {
  while (toasts.shown < TOASTS_ON_SCREEN && toasts.waiting.length) {
    const next = toasts.waiting.shift();
    if (next === toasts.more) toasts.more = null;
    toasts.shown += 1;
    showToast(next.count ? moreToast(next.count) : next);
  }
}

function moreToast(count) {
  return { title: `+${count} more`, body: "See them all on your shelf.", tier: "silver", icon: "🏅", kind: "more" };
}

function showToast({ title, body, tier, icon, kind }) {
  const el = document.createElement(kind === "more" ? "button" : "div");
  el.className = `toast tier-${tier || "bronze"} ${kind || ""}`;
  el.setAttribute("role", "status");
  if (kind === "more") {
    el.type = "button";
    el.addEventListener("click", () => {
      $("shelf").scrollIntoView({ behavior: "smooth", block: "center" });
      $("shelf-h").focus();
    });
  }
  const i = document.createElement("span");
  i.className = "icon";
  i.textContent = icon || "🏅";
  i.setAttribute("aria-hidden", "true");
  const t = document.createElement("div");
  const h = document.createElement("strong");
  h.textContent = title;
  const p = document.createElement("span");
  p.textContent = body;
  t.append(h, document.createElement("br"), p);
  el.append(i, t);
  $("toasts").append(el);
  setTimeout(() => el.classList.add("leaving"), 4500);
  setTimeout(() => {
    el.remove();
    toasts.shown -= 1;
    pumpToasts();
  }, 5000);
}

function renderXp() {
  $("xp").textContent = state.xp;
  $("level").textContent = state.level;
  // The demo curve: level L needs 100 * (L - 1)^1.5 XP.
  const need = (l) => Math.round(100 * Math.pow(l - 1, 1.5));
  const lo = need(state.level), hi = need(state.level + 1);
  const pct = Math.max(0, Math.min(100, ((state.xp - lo) / Math.max(1, hi - lo)) * 100));
  $("xpfill").style.width = pct + "%";
  $("xpbar").setAttribute("aria-valuenow", String(Math.round(pct)));
  $("xpbar").setAttribute("aria-valuemax", "100");
}

function renderShelf() {
  const ul = $("shelf");
  ul.textContent = "";
  for (const b of state.badges.values()) {
    const owned = state.owned.get(b.id);
    const li = document.createElement("li");
    li.className = `badge tier-${b.tier} ${owned ? "owned" : "locked"}`;
    li.dataset.badge = b.id;
    const shown = owned || !b.hidden ? owned || b : { name: "???", description: "???", icon: "❔" };
    const icon = document.createElement("span");
    icon.className = "icon";
    icon.setAttribute("aria-hidden", "true");
    icon.textContent = shown.icon || "🏅";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = shown.name + (owned && owned.count > 1 ? ` ×${owned.count}` : "");
    li.title = shown.description || "";
    li.append(icon, name);
    const p = state.progress.get(b.id);
    if (!owned && p) {
      const bar = document.createElement("progress");
      bar.max = p.target;
      bar.value = p.current;
      bar.setAttribute("aria-label", `${shown.name} progress`);
      li.append(bar);
    }
    ul.append(li);
  }
}

async function loadCatalogue() {
  const r = await fetch("/demo/catalogue");
  const cat = await r.json();
  for (const b of cat.badges) state.badges.set(b.id, b);
  renderShelf();
}

function connect(player) {
  if (client) client.disconnect();
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/ws";
  const token = async () => {
    const r = await fetch("/demo/token?user=" + encodeURIComponent(player));
    if (!r.ok) throw new Error((await r.json()).message);
    return (await r.json()).token;
  };
  client = new AccoladeClient({ url, token });
  window.accolade = client;
  client.on("welcome", (m) => {
    state.xp = m.xp;
    state.level = m.level;
    state.owned = new Map(m.badges.map((b) => [b.id, b]));
    $("status").textContent = `online as ${m.user}`;
    $("status").className = "status online";
    log(`welcome ${m.user}: ${m.xp} XP, ${m.badges.length} badges${m.recovered ? ", recovered" : ""}`);
    renderXp();
    renderShelf();
  });
  client.on("close", (e) => {
    // A deliberate disconnect waits for its timer instead of reconnecting.
    $("status").textContent = paused ? `disconnected (${dropSeconds} s)` : "offline, reconnecting…";
    $("status").className = "status offline";
    log(`connection closed (${e.code})`);
  });
  client.on("xp", (m) => {
    state.xp = m.total;
    state.level = m.level;
    renderXp();
    log(`+${m.delta} XP`);
  });
  client.on("level_up", (m) => {
    toast({ title: `Level ${m.level}!`, body: "You levelled up.", tier: "gold", icon: "🎉", kind: "level" });
    log(`level ${m.level}`);
  });
  client.on("unlock", (m) => {
    state.owned.set(m.badge.id, { ...m.badge, count: m.count });
    state.progress.delete(m.badge.id);
    toast({ title: m.badge.name, body: `${m.badge.description}${m.xp ? ` +${m.xp} XP` : ""}`, tier: m.badge.tier, icon: m.badge.icon });
    log(`unlocked ${m.badge.name}`);
    renderShelf();
  });
  client.on("revoked", (m) => {
    // Taken away (by the backend, expired, or its event retracted): off the shelf, XP as told.
    state.owned.delete(m.badge.id);
    state.xp = m.total;
    state.level = m.level;
    renderXp();
    renderShelf();
    log(`${m.badge.name} taken away (${m.cause}: ${m.reason})`);
  });
  client.on("progress", (m) => {
    state.progress.set(m.badge, m);
    renderShelf();
  });
  client.on("rank", (m) => {
    $("rank").textContent = `#${m.rank} of ${m.of} (${m.score} XP)`;
  });
  client.on("top", (m) => {
    const ol = $("top");
    ol.textContent = "";
    for (const e of m.entries) {
      const li = document.createElement("li");
      li.textContent = `${e.user_id}: ${e.score} XP`;
      ol.append(li);
    }
  });
  client.on("error", (m) => log(`error ${m.code}: ${m.message}`));
  client.watch("xp-weekly", { top: 5 });
  client.connect();
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  connect($("player").value.trim());
});

const send = (type, payload) => client && client.send(type, payload);
$("right").onclick = () => send("problem.answered", { exercise: $("exercise").value, correct: true, seconds: 3 });
$("wrong").onclick = () => send("problem.answered", { exercise: $("exercise").value, correct: false, seconds: 9 });
$("right10").onclick = () => {
  for (let i = 0; i < 10; i++) send("problem.answered", { exercise: $("exercise").value, correct: true, seconds: 2 });
};
$("watch").onclick = () => {
  const minutes = Math.max(1, Math.min(600, Number($("minutes").value) || 1));
  send("video.watched", { video: "v-" + Math.floor(Math.random() * 20), playlist: $("playlist").value, seconds: minutes * 60 });
};
$("read").onclick = () => send("article.read", { article: "article-" + Math.floor(Math.random() * 30) });
$("login-today").onclick = () => send("login", {});
$("drop").onclick = () => {
  if (!client || paused) return;
  paused = true;
  client.disconnect();
  log(`disconnected for ${dropSeconds} seconds`);
  setTimeout(() => {
    paused = false;
    client.connect();
  }, dropSeconds * 1000);
};

loadCatalogue().then(() => connect($("player").value.trim()));
