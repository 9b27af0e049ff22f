#!/usr/bin/env python3
# Latency of the leaderboard routes on one node, as a client sees them: 200 requests each of the
# top 10, a rank with two neighbours each side, and a 50-user friends list, over one kept-alive
# connection, on the demo board xp-all-time (which must have 100 users at least).
#
#   python3 bench/standings-latency.py PORT API_KEY
import http.client, json, sys, time, statistics
port, key = int(sys.argv[1]), sys.argv[2]
c = http.client.HTTPConnection("127.0.0.1", port)
h = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
def get(path, body=None):
    c.request("POST" if body else "GET", path, body=body, headers=h)
    r = c.getresponse(); d = r.read(); assert r.status == 200, (r.status, d[:200]); return json.loads(d)
top = get("/v1/leaderboards/xp-all-time?limit=100")["entries"]
users = [e["user_id"] for e in top]
friends = json.dumps({"users": users[:50]})
for name, f in [("top 10", lambda i: get("/v1/leaderboards/xp-all-time?limit=10")),
                ("rank+around 2", lambda i: get(f"/v1/leaderboards/xp-all-time/users/{users[i % 100]}?around=2")),
                ("50 friends", lambda i: get("/v1/leaderboards/xp-all-time/standings", friends))]:
    ts = []
    for i in range(200):
        t = time.perf_counter(); f(i); ts.append((time.perf_counter() - t) * 1000)
    ts.sort()
    print(f"{name:14} p50 {ts[100]:.2f} ms  p99 {ts[197]:.2f} ms")
