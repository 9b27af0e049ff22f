// usage.ts: how a TypeScript app uses @accolade/client, type-checked (never run) by
// tests/e2e/package.test.mjs in a scratch project that installed the packed package, so the
// `exports` map's `types` is what resolves the import. Each `@ts-expect-error` marks a misuse the
// declarations must refuse: were they too loose (an `any`, a missing union), tsc would report
// the directive as unused and the test would fail.
import { AccoladeClient } from "@accolade/client";
import type { ErrorCode, ServerMessage, StoredPush, UnlockMessage, WebhookNotification } from "@accolade/client";

const client = new AccoladeClient({
  url: "ws://127.0.0.1:7300/v1/ws",
  token: async () => "a token",
  storage: { get: (k) => localStorage.getItem(k), set: (k, v) => localStorage.setItem(k, v) },
  maxBackoffMs: 10_000,
  retryMs: 250,
  WebSocket, // the browser's
});
new AccoladeClient({ url: "ws://h/v1/ws", token: "a token" });
// @ts-expect-error the url is required
new AccoladeClient({ token: "t" });
// @ts-expect-error a token is a string or a function returning one
new AccoladeClient({ url: "ws://h/v1/ws", token: 42 });

// Each handler gets its message's type.
const off = client.on("unlock", (m) => {
  const tier: "bronze" | "silver" | "gold" | "platinum" | "diamond" = m.badge.tier;
  const key: string | null = m.key;
  console.log(m.badge.name, tier, key, m.count, m.xp, m.offset, m.event_id);
});
off();
client.on("welcome", (m) => console.log(m.epoch, m.offset, m.xp, m.level, m.recovered, m.badges.map((b) => b.count)));
client.on("open", (m) => console.log(m.user, m.tenant, m.catalogue_version));
client.on("close", (e) => console.log(e.code, e.reason));
client.on("ack", (m) => console.log(m.event_id, m.duplicate));
client.on("xp", (m) => console.log(m.delta, m.total, m.level));
client.on("progress", (m) => console.log(m.badge, m.current ?? 0, m.target ?? 0));
client.on("rank", (m) => console.log(m.board, m.period, m.rank, m.score, m.of, m.previous));
client.on("top", (m) => console.log(m.segment, m.entries.map((e) => [e.rank, e.user_id, e.score])));
client.on("goal_assigned", (m) => console.log(m.goal.due));
client.on("notice", (m) => console.log(m.kind, m.goal.assignee));
client.on("error", (m) => {
  if (m.code === "rate_limited") {
    const wait: number = m.retry_after_ms; // narrowed by `code`
    console.log(wait);
  } else {
    // @ts-expect-error only a rate_limited error carries retry_after_ms
    console.log(m.retry_after_ms);
  }
});
// @ts-expect-error there is no such message type
client.on("unlocked", () => {});
// @ts-expect-error an xp push has no badge
client.on("xp", (m) => m.badge);
// @ts-expect-error `duplicate` is a boolean
client.on("ack", (m) => m.duplicate.length);

client.connect();
const id: string = client.send("problem.answered", { exercise: "addition-1", correct: true, seconds: 4 });
client.send("login");
client.send("login", {}, { eventId: id, occurredAt: new Date() });
// @ts-expect-error occurredAt is a Date
client.send("login", {}, { occurredAt: "yesterday" });
client.watch("xp-weekly", { top: 10 });
client.unwatch("xp-weekly");
const where: { epoch: string; offset: number } | null = client.since;
console.log(where, client.connected);
client.disconnect();

// Error codes are a closed set.
const code: ErrorCode = "forbidden_event";
// @ts-expect-error not an error code the server sends
const wrong: ErrorCode = "forbidden";
console.log(code, wrong);

// Messages narrow on `type`; stored pushes are the ones with an offset.
function show(m: ServerMessage): string {
  switch (m.type) {
    case "unlock":
      return m.badge.name;
    case "level_up":
      return String(m.level);
    default:
      return m.type;
  }
}
const stored: StoredPush["type"][] = ["xp", "unlock", "level_up", "progress", "goal_assigned", "goal_completed", "goal_missed", "notice"];
// @ts-expect-error rank pushes are not stored (no offset)
const notStored: StoredPush["type"] = "rank";
console.log(show, stored, notStored);

// A webhook receiver narrows the body on `type`.
function onWebhook(body: WebhookNotification): string {
  if (body.type === "unlock") {
    const u: UnlockMessage = body.data;
    return `${body.user_id} earned ${u.badge.name} (notification ${body.id})`;
  }
  if (body.type === "goal_missed") return body.data.goal.title;
  return body.type;
}
// @ts-expect-error progress is not a webhook kind
const hook: WebhookNotification["type"] = "progress";
console.log(onWebhook, hook);
