"""examples/webhooks/receiver.py: a webhook receiver for Accolade in Python (3.8 or later,
standard library only): it verifies each delivery's signature and timestamp, and acts once per
notification id. Run: ACCOLADE_WEBHOOK_SECRET=whsec_... PORT=8000 python3 receiver.py
(tests/webhooks.rs runs it against real deliveries; docs/webhooks.md explains each step)."""
import hashlib
import hmac
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECONDS = 300


def verify(secret: str, header: str, raw_body: bytes, now: float = None):
    """Why the request is not a genuine, fresh delivery, or None when it is. `raw_body` is the
    body exactly as received: parsing and re-serialising it would change the bytes signed."""
    parts = dict(p.split("=", 1) for p in (header or "").split(",") if "=" in p)
    t, v1 = parts.get("t", ""), parts.get("v1", "")
    if not re.fullmatch(r"\d+", t) or not re.fullmatch(r"[0-9a-f]{64}", v1):
        return "malformed signature"
    want = hmac.new(secret.encode(), t.encode() + b"." + raw_body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, v1):
        return "bad signature"
    if abs((time.time() if now is None else now) - int(t)) > TOLERANCE_SECONDS:
        return "stale timestamp"
    return None


SECRET = os.environ["ACCOLADE_WEBHOOK_SECRET"]
# The ids already acted on. In production: a unique key in your database, written in the same
# transaction as what the notification does, kept at least --webhook-give-up-after-secs.
SEEN = set()
LOCK = threading.Lock()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        why = verify(SECRET, self.headers.get("accolade-signature"), body)
        if why:
            return self.answer(400, why)
        # The body's id, which the signature covers (the accolade-id header is not signed).
        n = json.loads(body)
        with LOCK:
            if n["id"] in SEEN:
                return self.answer(200, "duplicate")
            print(f"processed {n['id']} {n['type']} {n['user_id']}", flush=True)
            SEEN.add(n["id"])
        self.answer(200, "processed")

    def answer(self, status, text):
        self.send_response(status)
        self.send_header("content-length", str(len(text)))
        self.end_headers()
        self.wfile.write(text.encode())

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))), Receiver)
print(f"listening on {server.server_address[1]}", flush=True)
server.serve_forever()
