// The @accolade/client package (clients/js/) as a developer gets it: `npm pack`ed, installed
// from the tarball into a scratch project, imported from there by its package name, and run
// against the real server binary with Node 20's WebSocket of choice, the `ws` package. Covers
// acks and pushes, a duplicate id, resuming after a dropped socket, an ack lost in a drop,
// refusals not resent, resends on a real `rate_limited`, and the TypeScript declarations: a
// usage file, and every message and webhook body the server sent during these tests,
// type-checked with tsc against the installed `accolade.d.ts`. (`unavailable` cannot be
// caused on a healthy server; its resends are tested with a stand-in socket in
// client.test.mjs.)
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import WebSocket from "ws";
import { startServer } from "./server.mjs";

const root = resolve(import.meta.dirname, "../..");
const pkgDir = join(root, "clients/js");
const tsc = join(import.meta.dirname, "node_modules/.bin/tsc");
const API = { authorization: "Bearer accolade-demo-api-key", "content-type": "application/json" };

let scratch, project, tarball, AccoladeClient, server, hooks;
/** Every server message any client of these tests received, and every webhook body: the
 *  last test type-checks them all against the declarations. */
const captured = [];
const webhookBodies = [];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `pred` until it returns something truthy (and returns that), or fails after `ms`. */
async function waitFor(what, pred, ms = 10000) {
  const end = Date.now() + ms;
  for (;;) {
    const got = pred();
    if (got) return got;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

before(async () => {
  scratch = mkdtempSync(join(tmpdir(), "accolade-package-"));
  // What `npm pack` would publish, then an app that installs it. A local tarball without
  // dependencies installs offline.
  const [packed] = JSON.parse(run("npm", ["pack", "--json", "--pack-destination", scratch], pkgDir));
  tarball = packed;
  project = join(scratch, "app");
  mkdirSync(project);
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "scratch-app", private: true, type: "module" }));
  run("npm", ["install", "--offline", "--no-audit", "--no-fund", "--loglevel=error", join(scratch, packed.filename)], project);
  // Imported by its package name from inside the app, so the `exports` map is what resolves it.
  writeFileSync(join(project, "client.mjs"), 'export { AccoladeClient } from "@accolade/client";\n');
  ({ AccoladeClient } = await import(pathToFileURL(join(project, "client.mjs"))));

  server = await startServer();
  // A webhook endpoint of the demo tenant, to collect real notification bodies.
  hooks = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      webhookBodies.push(JSON.parse(body));
      res.end("ok");
    });
  });
  await new Promise((r) => hooks.listen(0, "127.0.0.1", r));
  const made = await fetch(server.base + "/v1/webhooks", { method: "POST", headers: API, body: JSON.stringify({ url: `http://127.0.0.1:${hooks.address().port}/accolade` }) });
  assert.equal(made.status, 201, await made.text());
});

after(async () => {
  await server?.stop();
  hooks?.close();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

/**
 * `ws`'s WebSocket, wrapped so that a test can cut the connection as a lost network does (no
 * close handshake: the client sees 1006) and, through `intercept`, lose a message in that cut.
 * `sockets` collects the instances, newest last.
 */
function cuttable(sockets, intercept = () => false) {
  return class CuttableSocket {
    constructor(url) {
      this.cut = false;
      const ws = (this.ws = new WebSocket(url));
      ws.onopen = (e) => this.onopen?.(e);
      ws.onerror = (e) => this.onerror?.(e);
      ws.onclose = (e) => this.onclose?.({ code: e.code, reason: e.reason });
      ws.onmessage = (e) => {
        if (this.cut) return; // a cut connection delivers nothing more
        if (intercept(JSON.parse(e.data), this)) return;
        this.onmessage?.(e);
      };
      sockets.push(this);
    }
    get readyState() {
      return this.ws.readyState;
    }
    send(text) {
      this.ws.send(text);
    }
    close(code, reason) {
      this.ws.close(code, reason);
    }
    drop() {
      this.cut = true;
      this.ws.terminate();
    }
  };
}

const TYPES = ["welcome", "ack", "xp", "unlock", "revoked", "level_up", "progress", "goal_assigned", "goal_completed", "goal_missed", "notice", "rank", "top", "error"];

/**
 * A client of the installed package for `user` of the demo tenant, connected and welcomed.
 * `log` holds what its handlers got, in order; `of(type, pred)` filters it. `gate`, when
 * given, is awaited by the token provider on every (re)connect, so a test can hold a
 * reconnect back.
 */
async function online(user, { base = server.base, WebSocket: Socket = WebSocket, gate = () => null } = {}) {
  const log = [];
  const client = new AccoladeClient({
    url: base.replace("http", "ws") + "/v1/ws",
    token: async () => {
      await gate();
      return (await (await fetch(`${base}/demo/token?user=${user}`)).json()).token;
    },
    maxBackoffMs: 200,
    retryMs: 50,
    WebSocket: Socket,
  });
  for (const type of TYPES) {
    client.on(type, (m) => {
      log.push(m);
      captured.push(m);
    });
  }
  client.on("close", (e) => log.push({ type: "close", ...e }));
  const of = (type, pred = () => true) => log.filter((m) => m.type === type && pred(m));
  client.connect();
  const welcome = await waitFor(`${user}'s welcome`, () => of("welcome")[0]);
  return { client, log, of, welcome };
}

/** The stored pushes (xp, unlock, level_up, progress) a client got, by offset. */
const storedPushes = (of) => ["xp", "unlock", "level_up", "progress"].flatMap((t) => of(t)).sort((a, b) => a.offset - b.offset);

const userState = async (user) => (await fetch(`${server.base}/v1/users/${user}`, { headers: API })).json();

test("the tarball holds the module, its declarations, README and changelog", () => {
  const files = tarball.files.map((f) => f.path).sort();
  assert.deepEqual(files, ["CHANGELOG.md", "README.md", "accolade.d.ts", "accolade.js", "package.json"]);
  const manifest = JSON.parse(readFileSync(join(project, "node_modules/@accolade/client/package.json"), "utf8"));
  assert.equal(manifest.exports["."].types, "./accolade.d.ts");
  assert.equal(manifest.exports["."].default, "./accolade.js");
  assert.equal(manifest.dependencies, undefined, "the client has no dependencies");
  assert.equal(typeof AccoladeClient, "function");
});

test("an event is acknowledged and its pushes follow, in offset order; a watched board pushes rank and top", async () => {
  const { client, of, welcome } = await online("pkg-ana");
  assert.deepEqual([welcome.user, welcome.xp, welcome.level, welcome.recovered], ["pkg-ana", 0, 1, false]);
  const id = client.send("video.watched", { video: "v-1", playlist: "geometry", seconds: 1200 });
  const ack = await waitFor("the ack", () => of("ack", (m) => m.event_id === id)[0]);
  assert.equal(ack.duplicate, false);
  const progress = await waitFor("the progress towards great-listener", () => of("progress", (m) => m.badge === "great-listener")[0]);
  assert.deepEqual([progress.current, progress.target], [1200, 1800]);
  const [xp] = of("xp", (m) => m.event_id === id);
  assert.deepEqual([xp.delta, xp.total, xp.level], [160, 160, 2]);
  assert.deepEqual(of("unlock", (m) => m.event_id === id).map((m) => m.badge.id), ["act-one-scene-one", "nice-listener"]);
  assert.equal(of("level_up", (m) => m.event_id === id)[0]?.level, 2);
  // Stored pushes are numbered one by one from the welcome's offset.
  const offsets = storedPushes(of).map((m) => m.offset);
  assert.deepEqual(offsets, offsets.map((_, i) => welcome.offset + 1 + i));
  assert.deepEqual(client.since, { epoch: welcome.epoch, offset: offsets.at(-1) });

  client.watch("xp-weekly", { top: 3 });
  const rank = await waitFor("a rank push", () => of("rank")[0]);
  assert.deepEqual([rank.board, rank.score], ["xp-weekly", 160]);
  const top = await waitFor("a top push", () => of("top")[0]);
  assert.ok(top.entries.some((e) => e.user_id === "pkg-ana" && e.score === 160), JSON.stringify(top));
  client.disconnect();
});

test("the same event id sent again is acknowledged as a duplicate and counts nothing", async () => {
  const { client, of } = await online("pkg-bo");
  client.send("article.read", { article: "a-1" }, { eventId: "pkg-bo-read-1" });
  await waitFor("the first ack", () => of("ack", (m) => m.event_id === "pkg-bo-read-1")[0]);
  const xpAfterFirst = (await userState("pkg-bo")).xp;
  assert.ok(xpAfterFirst > 0);
  client.send("article.read", { article: "a-1" }, { eventId: "pkg-bo-read-1" });
  const acks = await waitFor("the second ack", () => of("ack", (m) => m.event_id === "pkg-bo-read-1")[1] && of("ack", (m) => m.event_id === "pkg-bo-read-1"));
  assert.deepEqual(acks.map((a) => a.duplicate), [false, true]);
  assert.equal((await userState("pkg-bo")).xp, xpAfterFirst);
  assert.equal(of("xp", (m) => m.event_id === "pkg-bo-read-1").length, 1);
  client.disconnect();
});

test("after a dropped socket the client reconnects with `since`: what it missed arrives, and what it sent offline is acknowledged", async () => {
  let held = null;
  const sockets = [];
  const { client, of, welcome } = await online("pkg-cy", { WebSocket: cuttable(sockets), gate: () => held });
  client.send("video.watched", { video: "v-2", playlist: "algebra", seconds: 1200 });
  await waitFor("the first event's progress", () => of("progress").length >= 3);
  const before = client.since;

  // The network goes; the reconnect waits (its token is held back) while the user's other
  // device, through the backend, earns something, and this page sends an answer.
  let release;
  held = new Promise((r) => (release = r));
  sockets.at(-1).drop();
  await waitFor("the close", () => of("close")[0]);
  assert.equal(of("close")[0].code, 1006);
  const ingest = await fetch(`${server.base}/v1/events`, {
    method: "POST",
    headers: API,
    body: JSON.stringify({ events: [{ event_id: "pkg-cy-missed", event_type: "login", user_id: "pkg-cy", occurred_at: new Date().toISOString(), payload: {} }] }),
  });
  assert.equal((await ingest.json()).accepted, 1);
  const offline = client.send("problem.answered", { exercise: "addition-1", correct: true, seconds: 3 });
  await sleep(100);
  assert.equal(of("welcome").length, 1, "still offline");

  held = null;
  release();
  const again = await waitFor("the second welcome", () => of("welcome")[1]);
  assert.equal(again.recovered, true);
  assert.equal(again.epoch, welcome.epoch);
  const missed = await waitFor("the missed unlock", () => of("unlock", (m) => m.event_id === "pkg-cy-missed")[0]);
  assert.equal(missed.badge.id, "founding-year");
  const ack = await waitFor("the offline answer's ack", () => of("ack", (m) => m.event_id === offline)[0]);
  assert.equal(ack.duplicate, false);
  await waitFor("the offline answer's xp", () => of("xp", (m) => m.event_id === offline)[0]);
  // Nothing lost, nothing twice: the offsets after the drop continue the ones before it.
  const after = storedPushes(of).filter((m) => m.offset > before.offset).map((m) => m.offset);
  assert.deepEqual(after, after.map((_, i) => before.offset + 1 + i));
  client.disconnect();
});

test("an event whose ack was lost in a drop is resent, acknowledged as a duplicate, and counted once", async () => {
  const sockets = [];
  // The first socket is cut the moment the ack arrives: the ack is lost with it, and so are
  // the pushes behind it. The event was durable all the same.
  const intercept = (msg, socket) => {
    if (msg.type === "ack" && msg.event_id === "pkg-dee-1" && sockets.indexOf(socket) === 0) {
      socket.drop();
      return true;
    }
    return false;
  };
  const { client, of } = await online("pkg-dee", { WebSocket: cuttable(sockets, intercept) });
  client.send("video.watched", { video: "v-3", playlist: "geometry", seconds: 1200 }, { eventId: "pkg-dee-1" });
  const ack = await waitFor("the ack after the reconnect", () => of("ack", (m) => m.event_id === "pkg-dee-1")[0]);
  assert.equal(ack.duplicate, true, "the resent event was already counted");
  assert.equal(of("welcome")[1]?.recovered, true);
  // One round trip more, so that anything the resend might have caused has arrived.
  const probe = client.send("login", {});
  await waitFor("the probe's ack", () => of("ack", (m) => m.event_id === probe)[0]);
  const xp = of("xp", (m) => m.event_id === "pkg-dee-1");
  assert.equal(xp.length, 1, "its xp push arrives once, replayed after the reconnect");
  assert.deepEqual(of("unlock", (m) => m.event_id === "pkg-dee-1").map((m) => m.badge.id), ["act-one-scene-one", "nice-listener"]);
  assert.equal(xp[0].total, 160);
  client.disconnect();
});

test("events refused for what they are are dropped: not resent after a reconnect", async () => {
  const sockets = [];
  const { client, of } = await online("pkg-eve", { WebSocket: cuttable(sockets) });
  const forbidden = client.send("exercise.proficient", { exercise: "addition-1" });
  const unknown = client.send("no.such.event", {});
  const errors = await waitFor("both refusals", () => of("error").length >= 2 && of("error"));
  assert.deepEqual(errors.map((e) => [e.event_id, e.code]).sort(), [[forbidden, "forbidden_event"], [unknown, "invalid_event"]].sort());

  sockets.at(-1).drop();
  await waitFor("the second welcome", () => of("welcome")[1]);
  // Whatever the client resends goes out right after the welcome, ahead of this probe, and
  // the server answers each in turn: by the probe's ack any resend would have been refused.
  const probe = client.send("login", {});
  await waitFor("the probe's ack", () => of("ack", (m) => m.event_id === probe)[0]);
  assert.equal(of("error").length, 2, JSON.stringify(of("error")));
  client.disconnect();
});

test("events refused with rate_limited by a real server are resent until each is acknowledged once", async () => {
  const limited = await startServer(["--rate-per-sec", "5", "--rate-burst", "2"]);
  try {
    const { client, of } = await online("pkg-fay", { base: limited.base });
    const ids = [];
    for (let i = 0; i < 6; i++) ids.push(client.send("problem.answered", { exercise: "addition-1", correct: true, seconds: 2 }));
    await waitFor("six acks", () => of("ack").length >= 6, 20000);
    const refused = of("error");
    assert.ok(refused.length > 0, "the burst of 2 was exceeded");
    for (const e of refused) {
      assert.equal(e.code, "rate_limited");
      assert.ok(ids.includes(e.event_id) && e.retry_after_ms > 0, JSON.stringify(e));
    }
    const acks = of("ack");
    assert.deepEqual(acks.map((a) => a.event_id).sort(), [...ids].sort(), "each event acknowledged once");
    assert.ok(acks.every((a) => !a.duplicate), "none was resent after being counted");
    const st = await (await fetch(`${limited.base}/v1/users/pkg-fay`, { headers: API })).json();
    assert.equal(st.events, 6);
    client.disconnect();
  } finally {
    await limited.stop();
  }
});

test("goal pushes reach the assignee and notices the assigner; webhook bodies carry the pushes as sent", async () => {
  const stu = await online("pkg-stu");
  const tea = await online("pkg-tea");
  const goal = (body) => fetch(`${server.base}/v1/goals`, { method: "POST", headers: API, body: JSON.stringify({ assignee: "pkg-stu", assigner: "pkg-tea", ...body }) });
  assert.equal((await goal({ id: "pkg-read-one", title: "Read one", criterion: { kind: "count", event: "article.read", target: 1 } })).status, 201);
  const due = new Date(Date.now() + 1500).toISOString();
  assert.equal((await goal({ id: "pkg-never", title: "Log in 99 times", criterion: { kind: "count", event: "login", target: 99 }, due_at: due })).status, 201);
  await waitFor("two goal_assigned", () => stu.of("goal_assigned").length === 2);
  assert.deepEqual(stu.of("goal_assigned").map((m) => m.goal.due), [null, due]);
  stu.client.send("article.read", { article: "a-9" });
  const done = await waitFor("goal_completed", () => stu.of("goal_completed")[0]);
  assert.equal(done.goal.id, "pkg-read-one");
  const missed = await waitFor("goal_missed", () => stu.of("goal_missed")[0], 10000);
  assert.equal(missed.goal.id, "pkg-never");
  await waitFor("both notices", () => tea.of("notice").length === 2);
  assert.deepEqual(tea.of("notice").map((n) => [n.kind, n.goal.assignee]).sort(), [["goal_completed", "pkg-stu"], ["goal_missed", "pkg-stu"]]);

  await waitFor("webhook bodies of all four kinds", () => new Set(webhookBodies.map((b) => b.type)).size === 4);
  const hookOf = (user, type) => webhookBodies.find((b) => b.user_id === user && b.type === type);
  assert.deepEqual(hookOf("pkg-stu", "goal_completed").data, done);
  assert.deepEqual(hookOf("pkg-stu", "goal_missed").data, missed);
  stu.client.disconnect();
  tea.client.disconnect();
});

/** Runs tsc on `source` in the scratch app (where the package is installed); returns its result. */
function typeCheck(name, source) {
  writeFileSync(join(project, name), source);
  const r = spawnSync(tsc, ["--noEmit", "--strict", "--target", "es2022", "--module", "nodenext", "--moduleResolution", "nodenext", "--lib", "es2022,dom", name], { cwd: project, encoding: "utf8" });
  return { ok: r.status === 0, out: r.stdout + r.stderr };
}

test("a badge the backend revokes reaches the client as `revoked`, and the webhooks with the same body", async () => {
  const { client, of } = await online("pkg-rev");
  const id = client.send("video.watched", { video: "v-1", playlist: "geometry", seconds: 1200 });
  await waitFor("the unlocks", () => of("unlock", (m) => m.event_id === id).length === 2);
  const res = await fetch(`${server.base}/v1/users/pkg-rev/badges/nice-listener/revoke`, { method: "POST", headers: API, body: JSON.stringify({ reason: "shared account", xp: "claw_back" }) });
  assert.equal(res.status, 200, await res.clone().text());
  const done = await res.json();
  const m = await waitFor("the revoked push", () => of("revoked")[0]);
  assert.deepEqual([m.badge.id, m.cause, m.reason, m.xp, m.total, m.event_id], ["nice-listener", "api", "shared account", 50, done.xp, done.revocation.event_id]);
  const hook = await waitFor("its webhook body", () => webhookBodies.find((b) => b.user_id === "pkg-rev" && b.type === "revoked"));
  assert.deepEqual(hook.data, m);
  client.disconnect();
});

test("the declarations type a real app's use of the client and refuse its misuse", () => {
  copyFileSync(join(import.meta.dirname, "package/usage.ts"), join(project, "usage.ts"));
  const { ok, out } = typeCheck("usage.ts", readFileSync(join(project, "usage.ts"), "utf8"));
  assert.ok(ok, out);
});

test("every message and webhook body the server sent in these tests has its declared type, exactly", () => {
  // Each kind must have been seen, or this check proves nothing about it.
  assert.deepEqual([...new Set(captured.map((m) => m.type))].sort(), [...TYPES].sort());
  assert.deepEqual([...new Set(captured.filter((m) => m.type === "error").map((m) => m.code))].sort(), ["forbidden_event", "invalid_event", "rate_limited"]);
  assert.deepEqual([...new Set(webhookBodies.map((b) => b.type))].sort(), ["goal_completed", "goal_missed", "level_up", "revoked", "unlock"]);
  // Object literals are checked for excess properties too, so a field the server sends and
  // the declarations lack fails as surely as one they declare and the server leaves out.
  const source = (messages, bodies) =>
    `import type { ServerMessage, WebhookNotification } from "@accolade/client";\n` +
    `export const messages: ServerMessage[] = ${JSON.stringify(messages, null, 1)};\n` +
    `export const bodies: WebhookNotification[] = ${JSON.stringify(bodies, null, 1)};\n`;
  const real = typeCheck("captured.ts", source(captured, webhookBodies));
  assert.ok(real.ok, real.out);
  // The same check notices a message that differs from its declaration.
  const welcome = captured.find((m) => m.type === "welcome");
  const { recovered, ...withoutRecovered } = welcome;
  assert.ok(recovered !== undefined);
  for (const wrong of [{ ...welcome, surprise: 1 }, withoutRecovered, { ...welcome, level: "2" }]) {
    const r = typeCheck("captured-wrong.ts", source([wrong], []));
    assert.ok(!r.ok, `tsc accepted ${JSON.stringify(wrong)}`);
  }
});

test("the server's /accolade.js, which the demo page imports, is the package's file", async () => {
  const served = await (await fetch(server.base + "/accolade.js")).text();
  assert.equal(served, readFileSync(join(pkgDir, "accolade.js"), "utf8"));
});
