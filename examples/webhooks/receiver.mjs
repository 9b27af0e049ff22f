// examples/webhooks/receiver.mjs: a webhook receiver for Accolade in Node (20 or later, no
// packages): it verifies each delivery's signature and timestamp, and acts once per
// notification id. Run: ACCOLADE_WEBHOOK_SECRET=whsec_... PORT=8000 node receiver.mjs
// (tests/webhooks.rs runs it against real deliveries; docs/webhooks.md explains each step).
import { createServer } from "node:http";
import { createHmac, timingSafeEqual } from "node:crypto";

const TOLERANCE_SECONDS = 300;

// Why the request is not a genuine, fresh delivery, or null when it is. `rawBody` is the body
// exactly as received (a Buffer): parsing and re-serialising it would change the bytes signed.
export function verify(secret, header, rawBody, nowSeconds = Date.now() / 1000) {
  const parts = Object.fromEntries((header ?? "").split(",").map((p) => [p.slice(0, p.indexOf("=")), p.slice(p.indexOf("=") + 1)]));
  if (!/^\d+$/.test(parts.t ?? "") || !/^[0-9a-f]{64}$/.test(parts.v1 ?? "")) return "malformed signature";
  const want = createHmac("sha256", secret).update(`${parts.t}.`).update(rawBody).digest();
  if (!timingSafeEqual(want, Buffer.from(parts.v1, "hex"))) return "bad signature";
  if (Math.abs(nowSeconds - Number(parts.t)) > TOLERANCE_SECONDS) return "stale timestamp";
  return null;
}

const secret = process.env.ACCOLADE_WEBHOOK_SECRET;
if (!secret) throw new Error("set ACCOLADE_WEBHOOK_SECRET to the endpoint's secret");
// The ids already acted on. In production: a unique key in your database, written in the same
// transaction as what the notification does, kept at least --webhook-give-up-after-secs.
const seen = new Set();

const server = createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    const why = verify(secret, req.headers["accolade-signature"], body);
    if (why) return res.writeHead(400).end(why);
    // The body's id, which the signature covers (the accolade-id header is not signed).
    const n = JSON.parse(body);
    if (seen.has(n.id)) return res.writeHead(200).end("duplicate");
    console.log(`processed ${n.id} ${n.type} ${n.user_id}`);
    seen.add(n.id);
    res.writeHead(200).end("processed");
  });
});
server.listen(Number(process.env.PORT ?? 8000), process.env.HOST ?? "127.0.0.1", () => console.log(`listening on ${server.address().port}`));
