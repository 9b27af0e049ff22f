#!/usr/bin/env bash
# Server CPU per acked event for a member of three teams and for a community goal (issue 24),
# against the plain demo catalogue: for each configuration in turn and ROUNDS times over
# (plain, teams, community, plain, ...), a fresh standalone server and data dir, the
# generator's steady load from CONNECTIONS users, and the server's CPU time (user + system,
# every thread) over the run divided by the events it acked. Prints one row per run:
# configuration, acked events/s, ack p50 and p99 (ms), µs per acked event, and the
# `community_progress` frames each connection got per second.
#
#   bench/teams-cost.sh RATE SECONDS ROUNDS CONNECTIONS BIN   (CONFIGS="plain community" picks some)
#
# - plain: the demo catalogue.
# - teams: the demo catalogue with a [teams] section (a badge and XP per answer, a count and a
#   distinct count); 30 teams, every user a member of three (set up through the API first).
# - community: the demo catalogue with one community goal counting every answer.
# The generator is $LG (default target/release/accolade-loadgen).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=$1 SECS=$2 ROUNDS=$3 CONNS=$4 BIN=$5
LG=${LG:-${CARGO_TARGET_DIR:-$PWD/target}/release/accolade-loadgen}
OUT=${OUT:-/tmp/teams-cost}
mkdir -p "$OUT"
TICK=$(getconf CLK_TCK)
. bench/lib.sh
DEMO=catalogues/khan.toml
CAT_TEAMS=$(mktemp /tmp/teams-cost-teams.XXXXXX.toml)
CAT_COMMUNITY=$(mktemp /tmp/teams-cost-community.XXXXXX.toml)
{ cat "$DEMO"; cat <<'TOML'

[teams]
[[teams.xp]]
id = "team-answer"
event = "problem.answered"
amount = 1
[[teams.badges]]
id = "team-thousand"
name = "A thousand answers"
tier = "gold"
rule = { kind = "count", event = "problem.answered", target = 1000 }
[[teams.badges]]
id = "everyone"
name = "Fifty members answered"
tier = "silver"
rule = { kind = "count", event = "problem.answered", distinct = "member", target = 50 }
TOML
} > "$CAT_TEAMS"
ENDS=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
{ cat "$DEMO"; cat <<TOML

[[community_goals]]
id = "answers"
name = "A million answers"
event = "problem.answered"
target = 1000000
ends = "$ENDS"
TOML
} > "$CAT_COMMUNITY"
printf '%-10s %5s %9s %9s %9s %9s %14s\n' config round "events/s" "p50 ms" "p99 ms" "us/event" "community/s/conn"
for round in $(seq 1 "$ROUNDS"); do
  for config in ${CONFIGS:-plain teams community}; do
    D=$(mktemp -d /tmp/accolade-tc.XXXXXX)
    PORT=$(free_port)
    case $config in
      plain) CAT=$DEMO ;;
      teams) CAT=$CAT_TEAMS ;;
      community) CAT=$CAT_COMMUNITY ;;
    esac
    RUST_LOG=warn "$BIN" --bind "127.0.0.1:$PORT" --data-dir "$D/data" --catalogue "$CAT" --rate-per-sec 100000 --rate-burst 100000 > "$D/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/readyz" > /dev/null 2>&1 && break; sleep 0.2; done
    RUN=tc$round$config
    if [ "$config" = teams ]; then
      # Thirty teams; user i in teams i%10, 10+(i/10)%10 and 20+(i/100)%10.
      python3 - "$PORT" "$CONNS" "$RUN" <<'PY'
import http.client, json, sys
port, conns, run = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port)
h = {"authorization": "Bearer accolade-demo-api-key", "content-type": "application/json"}
def call(method, path, body):
    c.request(method, path, json.dumps(body), h)
    r = c.getresponse(); r.read()
    assert r.status == 200, (path, r.status)
for t in range(30):
    call("PUT", f"/v1/teams/t{t}", {"name": f"Team {t}"})
for i in range(conns):
    for t in (i % 10, 10 + (i // 10) % 10, 20 + (i // 100) % 10):
        call("POST", f"/v1/teams/t{t}/members", {"user_id": f"{run}-u{i}"})
PY
    fi
    J="$OUT/$config-r$RATE-c$CONNS-$round.json"
    C0=$(ticks "$PID")
    "$LG" --url "ws://127.0.0.1:$PORT/v1/ws" --scenario steady --connections "$CONNS" --rate "$RATE" --duration "$SECS" \
      --sources "${SOURCES:-4}" --run-id "$RUN" --json "$J" > "$D/lg.txt" 2>&1 || { cat "$D/lg.txt" >&2; exit 1; }
    C1=$(ticks "$PID")
    kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=
    python3 - "$J" "$C0" "$C1" "$TICK" "$config" "$round" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
acked = j["acked"]
bad = sum(j["errors"].values()) + j["missed_pushes"]
note = f"  ({bad} errors or missed pushes)" if bad else ""
per = j.get("community_pushes", 0) / max(j["connections"], 1) / max(j["seconds"], 1e-9)
print(f"{sys.argv[5]:<10} {sys.argv[6]:>5} {j['events_per_sec']:>9.0f} {j['ack']['p50']/1000:>9.2f} {j['ack']['p99']/1000:>9.2f} {cpu*1e6/max(acked,1):>9.1f} {per:>14.2f}{note}")
PY
    rm -rf "$D"; D=
  done
done
rm -f "$CAT_TEAMS" "$CAT_COMMUNITY"
