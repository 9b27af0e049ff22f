// accolade.js's handling of the server's answers to an event, driven through a stand-in
// WebSocket in Node (no browser needed): acks and refusals settle an event, `rate_limited`
// resends it on the same socket after the time the server gives, `unavailable` resends it
// after a growing wait, and a reconnect resends whatever is still unanswered.
import { test } from "node:test";
import assert from "node:assert/strict";

class FakeSocket {
  static OPEN = 1;
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
    setTimeout(() => {
      this.readyState = FakeSocket.OPEN;
      this.onopen?.();
    }, 0);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close(code = 1000, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  /** The server sends `msg`. */
  deliver(msg) {
    this.onmessage({ data: JSON.stringify(msg) });
  }
  events() {
    return this.sent.filter((m) => m.type === "event").map((m) => m.event_id);
  }
}
globalThis.WebSocket = FakeSocket;
const { AccoladeClient } = await import("../../clients/js/accolade.js");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const welcome = { type: "welcome", epoch: "e1", offset: 0, recovered: false };

async function connected(options = {}) {
  FakeSocket.all = [];
  const client = new AccoladeClient({ url: "ws://test/v1/ws", token: "t", maxBackoffMs: 50, retryMs: 40, ...options });
  client.connect();
  while (!FakeSocket.all[0]?.onmessage || FakeSocket.all[0].readyState !== FakeSocket.OPEN) await sleep(1);
  const ws = FakeSocket.all[0];
  assert.equal(ws.sent[0].type, "hello");
  ws.deliver(welcome);
  return { client, ws };
}

test("an acked event is not sent again, on this socket or after a reconnect", async () => {
  const { client, ws } = await connected();
  const id = client.send("login", {});
  ws.deliver({ type: "ack", event_id: id, duplicate: false });
  assert.equal(client.unacked.size, 0);
  ws.close(1012, "restart");
  while (FakeSocket.all.length < 2 || FakeSocket.all[1].readyState !== FakeSocket.OPEN) await sleep(2);
  FakeSocket.all[1].deliver(welcome);
  assert.deepEqual(FakeSocket.all[1].events(), []);
  client.disconnect();
});

test("a rate_limited event is resent on the same socket once the advertised wait has passed", async () => {
  const { client, ws } = await connected();
  const id = client.send("login", {});
  ws.deliver({ type: "error", code: "rate_limited", event_id: id, retry_after_ms: 60 });
  await sleep(20);
  assert.deepEqual(ws.events(), [id], "not before the wait");
  await sleep(300);
  assert.deepEqual(ws.events(), [id, id], "resent after it, once");
  ws.deliver({ type: "ack", event_id: id, duplicate: false });
  assert.equal(client.unacked.size, 0);
  client.disconnect();
});

test("an unavailable event is kept and resent after a growing wait, until it is acked", async () => {
  const { client, ws } = await connected();
  const id = client.send("login", {});
  ws.deliver({ type: "error", code: "unavailable", event_id: id, message: "the server cannot store events now" });
  assert.ok(client.unacked.has(id), "not dropped");
  await sleep(300);
  assert.deepEqual(ws.events(), [id, id], "resent after the first wait (20 to 40 ms), once");
  ws.deliver({ type: "error", code: "unavailable", event_id: id, message: "still" });
  await sleep(300);
  assert.deepEqual(ws.events(), [id, id, id], "and again after a longer one (at most the cap, 50 ms)");
  ws.deliver({ type: "ack", event_id: id, duplicate: false });
  await sleep(200);
  assert.deepEqual(ws.events(), [id, id, id], "nothing after the ack");
  client.disconnect();
});

test("a refused event is dropped; an unanswered one is resent after a reconnect", async () => {
  const { client, ws } = await connected();
  const bad = client.send("no.such.event", {});
  const lost = client.send("login", {});
  ws.deliver({ type: "error", code: "invalid_event", event_id: bad, message: "unknown event type" });
  assert.deepEqual([...client.unacked.keys()], [lost]);
  ws.close(1011, "the user's node is gone; reconnect");
  while (FakeSocket.all.length < 2 || FakeSocket.all[1].readyState !== FakeSocket.OPEN) await sleep(2);
  FakeSocket.all[1].deliver(welcome);
  assert.deepEqual(FakeSocket.all[1].events(), [lost]);
  client.disconnect();
});
