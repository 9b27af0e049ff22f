// End-to-end tests of the operator dashboard (/dashboard) in a real headless Chromium, against
// the real server binary: it opens directly on loopback with the demo tenant, draws its charts,
// shows the figures the analytics API answers, sorts its badge table, draws a funnel, is usable
// by keyboard with readable contrast, and asks for a key where there is no demo. Screenshots go
// to target/e2e/ (docs/dashboard.png is a copy of dashboard.png).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";
import { startServer } from "./server.mjs";

const root = resolve(import.meta.dirname, "../..");
const shots = join(root, "target/e2e");
mkdirSync(shots, { recursive: true });
const KEY = "accolade-demo-api-key";

let server, base, browser;

async function call(path, init = {}) {
  const res = await fetch(base + path, { ...init, headers: { Authorization: `Bearer ${KEY}`, "content-type": "application/json", ...(init.headers || {}) } });
  assert.equal(res.status, 200, `${path}: ${res.status}`);
  return res.json();
}

const now = () => new Date().toISOString();
const video = (id, user, seconds) => ({ event_id: id, user_id: user, event_type: "video.watched", occurred_at: now(), payload: { video: id, playlist: "algebra", seconds } });

before(async () => {
  server = await startServer();
  base = server.base;
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  // A small known stream: three users watch videos (two of them long enough for two badges),
  // one sends an event twice, one sends an unknown type.
  const r = await call("/v1/events", {
    method: "POST",
    body: JSON.stringify({
      events: [
        video("v1", "ana", 1200),
        video("v2", "ben", 1200),
        video("v3", "cy", 60),
        video("v1", "ana", 1200),
        { event_id: "x1", user_id: "cy", event_type: "no.such.type", occurred_at: now() },
      ],
    }),
  });
  assert.deepEqual([r.accepted, r.duplicates, r.rejected], [3, 1, 1]);
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function open(path = "/dashboard") {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1400 } });
  await page.goto(base + path);
  await page.locator("#badges tbody tr").first().waitFor({ timeout: 10000 });
  await page.locator("#funnel li").first().waitFor({ timeout: 10000 });
  return page;
}

/** How many pixels of a chart's canvas are painted (not transparent). */
const painted = (page, sel) =>
  page.evaluate((sel) => {
    const c = document.querySelector(`${sel} canvas`);
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return n;
  }, sel);

test("the dashboard opens on loopback with the demo tenant and shows what the API answers", async () => {
  const page = await open();
  assert.equal(await page.locator("#login").getAttribute("open"), null, "no key asked for on loopback with the demo");
  // The charts are drawn: canvases with painted pixels.
  assert.ok((await painted(page, "#activity-chart")) > 500, "the activity chart is drawn");
  assert.ok((await painted(page, "#volume-chart")) > 500, "the volume chart is drawn");

  const rarity = await call("/v1/analytics/rarity");
  const activity = await call("/v1/analytics/activity");
  const health = await call("/v1/analytics/health");
  assert.equal(rarity.users, 3);
  // Today's figures in the chart's data are the API's: 3 events, 3 active users, 4 unlocks.
  const today = activity.days[activity.days.length - 1];
  assert.deepEqual([today.events, today.dau, today.unlocks], [3, 3, 4]);
  const shown = await page.evaluate(() => window.dashboard.activity[window.dashboard.activity.length - 1]);
  assert.deepEqual(shown, today);
  // The table holds every badge with the API's holders, rarest first.
  const rows = await page.locator("#badges tbody tr").evaluateAll((trs) => trs.map((tr) => [tr.dataset.badge, tr.children[2].textContent]));
  assert.deepEqual(rows.map((r) => r[0]), rarity.badges.map((b) => b.badge));
  const listener = rows.find((r) => r[0] === "nice-listener");
  assert.equal(listener[1], String(rarity.badges.find((b) => b.badge === "nice-listener").holders));
  assert.equal(listener[1], "2");
  // Health, live: the API's counts.
  await page.locator("#h-accepted", { hasText: String(health.accepted) }).waitFor();
  assert.equal(health.accepted, 3);
  assert.equal(await page.textContent("#h-dead"), "1");
  assert.equal(await page.textContent("#h-dup"), "25.0 %");
  assert.equal(await page.textContent("#h-version"), String(health.catalogue_version));

  // A funnel of two badges: both steps reached by ana and ben.
  await page.fill("#funnel-badges", "act-one-scene-one,nice-listener");
  await page.press("#funnel-badges", "Enter");
  await page.locator('#funnel li[data-badge="nice-listener"]', { hasText: "2 users" }).waitFor({ timeout: 5000 });
  const funnel = await call("/v1/analytics/funnel?badges=act-one-scene-one,nice-listener");
  assert.deepEqual(funnel.steps.map((s) => s.users), [2, 2]);
  // An unknown badge is said so, in the page.
  await page.fill("#funnel-badges", "act-one-scene-one,no-such-badge");
  await page.press("#funnel-badges", "Enter");
  await page.locator("#funnel-error", { hasText: "no-such-badge" }).waitFor({ timeout: 5000 });
  await page.fill("#funnel-badges", "act-one-scene-one,nice-listener");
  await page.press("#funnel-badges", "Enter");
  await page.locator('#funnel li[data-badge="nice-listener"]').waitFor({ timeout: 5000 });
  await page.screenshot({ path: join(shots, "dashboard.png"), fullPage: true });
  await page.close();
});

test("the badge table sorts by any column, by keyboard too", async () => {
  const page = await open();
  const holders = () => page.locator("#badges tbody tr").evaluateAll((trs) => trs.map((tr) => parseInt(tr.children[2].textContent, 10)));
  await page.focus('th button[data-sort="holders"]');
  await page.keyboard.press("Enter");
  assert.equal(await page.getAttribute('th:has(button[data-sort="holders"])', "aria-sort"), "ascending");
  const up = await holders();
  assert.deepEqual(up, [...up].sort((a, b) => a - b));
  await page.keyboard.press("Enter");
  assert.equal(await page.getAttribute('th:has(button[data-sort="holders"])', "aria-sort"), "descending");
  const down = await holders();
  assert.deepEqual(down, [...down].sort((a, b) => b - a));
  assert.equal(down[0], 2);
  // Every control is reachable with Tab.
  const seen = new Set();
  for (let i = 0; i < 20; i++) {
    await page.keyboard.press("Tab");
    seen.add(await page.evaluate(() => document.activeElement?.id || document.activeElement?.dataset?.sort));
  }
  for (const id of ["from", "to", "funnel-badges", "name", "share", "median"]) assert.ok(seen.has(id), `${id} is not reachable with Tab: ${[...seen]}`);
  await page.close();
});

test("text contrast meets WCAG AA", async () => {
  const page = await open();
  const failures = await page.evaluate(() => {
    const rgb = (s) => (s.match(/[\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => {
      const f = (c) => ((c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4);
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const background = (el) => {
      for (let e = el; e; e = e.parentElement) {
        const c = rgb(getComputedStyle(e).backgroundColor);
        if (c.length === 3 || (c.length === 4 && c[3] === 1)) return c.slice(0, 3);
      }
      return [255, 255, 255];
    };
    const bad = [];
    for (const el of document.querySelectorAll("body *")) {
      const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
      if (!own || !el.getClientRects().length) continue;
      const style = getComputedStyle(el);
      const [a, b] = [lum(rgb(style.color)), lum(background(el))];
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      const large = parseFloat(style.fontSize) >= 24 || (parseFloat(style.fontSize) >= 18.66 && Number(style.fontWeight) >= 700);
      if (ratio < (large ? 3 : 4.5)) bad.push(`${el.tagName}#${el.id}.${el.className} "${el.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
    }
    return bad;
  });
  assert.deepEqual(failures, []);
  await page.close();
});

test("without the demo the dashboard asks for the tenant's key and refuses a wrong one", async () => {
  const other = await startServer(["--demo", "off", "--tenant", "acme:acme-token-secret-0123456789", "--api-key", "acme:acme-api-key-0123456789"]);
  try {
    const page = await browser.newPage();
    await page.goto(other.base + "/dashboard");
    await page.locator("#login[open]").waitFor({ timeout: 5000 });
    await page.fill("#key", "not-the-key-of-anyone");
    await page.press("#key", "Enter");
    await page.locator("#login-error", { hasText: "not valid" }).waitFor({ timeout: 5000 });
    await page.fill("#key", "acme-api-key-0123456789");
    await page.press("#key", "Enter");
    await page.locator("#badges tbody tr").first().waitFor({ timeout: 10000 });
    // The health figures follow the tables: acme has accepted nothing.
    await page.locator("#h-accepted", { hasText: /^0$/ }).waitFor({ timeout: 5000 });
    await page.close();
  } finally {
    await other.stop();
  }
});

test("the vendored chart library is the pinned npm package's, with its licence", () => {
  const pkg = join(root, "tests/e2e/node_modules/uplot");
  for (const [mine, theirs] of [["uPlot.iife.min.js", "dist/uPlot.iife.min.js"], ["uPlot.min.css", "dist/uPlot.min.css"], ["uPlot.LICENSE", "LICENSE"]]) {
    assert.ok(readFileSync(join(root, "web-dashboard/vendor", mine)).equals(readFileSync(join(pkg, theirs))), `${mine} differs: run scripts/vendor-charts`);
  }
  const pinned = JSON.parse(readFileSync(join(root, "tests/e2e/package.json"))).dependencies.uplot;
  assert.equal(JSON.parse(readFileSync(join(pkg, "package.json"))).version, pinned);
});
