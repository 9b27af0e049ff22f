// accolade.js: the dependency-free client for Accolade's WebSocket protocol (docs/protocol.md),
// for browsers and Node. It is the package in clients/js/ (API in its README.md, types in
// accolade.d.ts) and the very file the server embeds for the demo page at /accolade.js.
//
//   const client = new AccoladeClient({ url: "ws://127.0.0.1:7300/v1/ws", token: async () => "..." });
//   client.on("unlock", (m) => showToast(m.badge));
//   client.connect();
//   client.send("problem.answered", { exercise: "addition-1", correct: true, seconds: 4 });

// WebSocket.OPEN, read as a number: a WebSocket implementation passed in (Node's `ws`, a test's
// stand-in) need not carry the constant where the code looks for it.
const OPEN = 1;

export class AccoladeClient {
  constructor({ url, token, storage = null, maxBackoffMs = 15000, retryMs = 500, WebSocket = globalThis.WebSocket }) {
    // Browsers and Node 22 have a global WebSocket; elsewhere (Node 20) pass one, e.g. `ws`.
    if (typeof WebSocket !== "function") throw new TypeError("AccoladeClient: no WebSocket here; pass one as the `WebSocket` option (in Node 20, the `ws` package)");
    this.WebSocket = WebSocket;
    this.url = url;
    this.tokenProvider = typeof token === "function" ? token : async () => token;
    this.storage = storage; // optional: { get(key), set(key, value) } to keep `since` across reloads
    this.maxBackoffMs = maxBackoffMs;
    this.handlers = new Map();
    this.unacked = new Map(); // event_id -> message, resent after a reconnect
    this.retryMs = retryMs; // first wait before an `unavailable` event is sent again
    this.resends = new Map(); // event_id -> timer of a resend on the same socket
    this.tries = new Map(); // event_id -> `unavailable` answers so far
    this.since = storage ? JSON.parse(storage.get("accolade.since") || "null") : null;
    this.ws = null;
    this.attempt = 0;
    this.wanted = false;
    this.connected = false;
    this.timer = null;
    this.watches = new Map(); // board -> watch message, sent again after every reconnect
  }

  /** Subscribes to a server message type ("welcome", "ack", "xp", "level_up", "unlock",
   *  "revoked", "progress", "goal_assigned", "goal_completed", "goal_missed", "notice", "team_unlock",
   *  "team_revoked", "team_progress", "community_progress", "community_outcome", "rank", "top", "error") or to the client's own "open" (with the welcome) and "close" ({ code, reason }).
   *  Returns an unsubscribe function. */
  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(fn);
    return () => this.handlers.get(type).delete(fn);
  }

  emit(type, msg) {
    for (const fn of this.handlers.get(type) || []) {
      try { fn(msg); } catch (e) { console.error("accolade handler failed", e); }
    }
  }

  connect() {
    this.wanted = true;
    clearTimeout(this.timer);
    this.open();
  }

  /** Closes the connection and stops reconnecting until connect() is called again. */
  disconnect() {
    this.wanted = false;
    clearTimeout(this.timer);
    for (const t of this.resends.values()) clearTimeout(t);
    this.resends.clear();
    if (this.ws) this.ws.close(1000, "client disconnect");
  }

  async open() {
    let token;
    try {
      token = await this.tokenProvider();
    } catch (e) {
      this.emit("close", { code: 0, reason: "no token: " + e });
      return this.retry();
    }
    if (!this.wanted) return;
    const ws = new this.WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      const hello = { type: "hello", token };
      if (this.since) hello.since = this.since;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (e) => this.receive(JSON.parse(e.data));
    // A failed connection is followed by a close, which retries. The handler must exist all the
    // same: Node's `ws` throws an "error" event that nobody listens to.
    ws.onerror = () => {};
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.connected = false;
      this.ws = null;
      this.emit("close", { code: e.code, reason: e.reason });
      // 4001: the token was refused; 4004: the user has too many sockets open. Retrying at
      // once will not help, so back off to the maximum (the token provider is asked again on
      // the next attempt).
      if (e.code === 4001 || e.code === 4004) this.attempt = 10;
      this.retry();
    };
  }

  retry() {
    if (!this.wanted) return;
    // Exponential backoff with full jitter, so a restarted server is not hit by everyone at once.
    const cap = Math.min(this.maxBackoffMs, 250 * 2 ** Math.min(this.attempt, 10));
    this.attempt += 1;
    this.timer = setTimeout(() => this.open(), Math.random() * cap);
  }

  receive(msg) {
    if (typeof msg.offset === "number" && msg.type !== "welcome") {
      if (this.since && msg.offset <= this.since.offset) return; // already seen (replayed twice)
      if (this.since) this.remember({ epoch: this.since.epoch, offset: msg.offset });
    }
    if (msg.type === "welcome") {
      this.connected = true;
      this.attempt = 0;
      // When recovered, the missed pushes follow the welcome and advance the offset one by
      // one; otherwise the welcome's state is the truth and the stream starts at its offset.
      if (!msg.recovered || !this.since || this.since.epoch !== msg.epoch) this.remember({ epoch: msg.epoch, offset: msg.offset });
      this.emit("welcome", msg);
      this.emit("open", msg);
      // Events the server never acknowledged are sent again; their ids make this safe.
      for (const t of this.resends.values()) clearTimeout(t);
      this.resends.clear();
      for (const m of this.unacked.values()) this.ws.send(JSON.stringify(m));
      // Watches end with a connection; the server pushes the current rank again at once.
      for (const m of this.watches.values()) this.ws.send(JSON.stringify(m));
      return;
    }
    if (msg.type === "ack") this.settle(msg.event_id);
    if (msg.type === "error" && msg.event_id && this.unacked.has(msg.event_id)) {
      const id = msg.event_id;
      if (msg.code === "rate_limited") {
        // Not processed: sent again once the server's bucket has a token for it.
        this.resendLater(id, msg.retry_after_ms ?? 1000);
      } else if (msg.code === "unavailable") {
        // Not counted: sent again after a growing wait, on this socket (and after any
        // reconnect before that).
        const n = (this.tries.get(id) || 0) + 1;
        this.tries.set(id, n);
        this.resendLater(id, Math.min(this.maxBackoffMs, this.retryMs * 2 ** (n - 1)) * (0.5 + Math.random() / 2));
      } else {
        // Refused for what it is: sending it again unchanged would be refused again.
        this.settle(id);
      }
    }
    this.emit(msg.type, msg);
  }

  /** The event is answered for good: forget it. */
  settle(id) {
    this.unacked.delete(id);
    clearTimeout(this.resends.get(id));
    this.resends.delete(id);
    this.tries.delete(id);
  }

  resendLater(id, ms) {
    clearTimeout(this.resends.get(id));
    this.resends.set(id, setTimeout(() => {
      this.resends.delete(id);
      const m = this.unacked.get(id);
      if (m && this.connected && this.ws && this.ws.readyState === OPEN) this.ws.send(JSON.stringify(m));
    }, ms));
  }

  remember(since) {
    this.since = since;
    if (this.storage) this.storage.set("accolade.since", JSON.stringify(since));
  }

  /** Asks for "rank" pushes on a leaderboard (and "top" pushes of its top N when `top` is
   *  given), on this connection and every later one. */
  watch(board, { top } = {}) {
    const msg = { type: "watch", board };
    if (top) msg.top = top;
    this.watches.set(board, msg);
    if (this.connected && this.ws && this.ws.readyState === OPEN) this.ws.send(JSON.stringify(msg));
  }

  unwatch(board) {
    this.watches.delete(board);
    if (this.connected && this.ws && this.ws.readyState === OPEN) this.ws.send(JSON.stringify({ type: "unwatch", board }));
  }

  /** Sends an event now (or after reconnecting). Returns its event_id. */
  send(eventType, payload = {}, { eventId, occurredAt } = {}) {
    const msg = {
      type: "event",
      event_id: eventId || (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random()),
      event_type: eventType,
      occurred_at: (occurredAt || new Date()).toISOString(),
      payload,
    };
    this.unacked.set(msg.event_id, msg);
    if (this.connected && this.ws && this.ws.readyState === OPEN) this.ws.send(JSON.stringify(msg));
    return msg.event_id;
  }
}
