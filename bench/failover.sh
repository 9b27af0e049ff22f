#!/usr/bin/env bash
# Recovery times under load: a three-node cluster (three NATS servers, R3, fsync before every
# acknowledgement) carries the generator's steady load, its connections spread over the nodes;
# a third of the way in, one process is killed with SIGKILL:
#   KILL=node   node 3: the time until nodes 1 and 2 serve all 256 partitions again (the
#               lease, then each partition claimed and rebuilt from its changelog);
#   KILL=nats   NATS server 0: the time until the acknowledgements come back.
# For both it prints, from the generator's per-second timeline, the acked rate before the kill,
# the longest run of seconds after it below half that rate, and the time until a second at 90%
# of it again (connections held by a killed node end with it: the generator does not reconnect,
# so the rate after a node kill is that of the clients left). Repeated ROUNDS times, each on a
# fresh cluster.
#
#   KILL=node|nats bench/failover.sh [RATE] [SECONDS] [ROUNDS] [CONNECTIONS]
#
# Needs the release binaries: cargo build --release --bin accolade && cargo build --release -p accolade-loadgen.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-3000}
SECS=${2:-30}
ROUNDS=${3:-1}
CONNS=${4:-300}
KILL=${KILL:-node}
BIN=$PWD/target/release/accolade
LG=$PWD/target/release/accolade-loadgen
[ -x "$BIN" ] && [ -x "$LG" ] || { echo "bench/failover.sh: build first: cargo build --release --bin accolade && cargo build --release -p accolade-loadgen" >&2; exit 1; }
case $KILL in node|nats) ;; *) echo "bench/failover.sh: KILL is node or nats, not $KILL" >&2; exit 1 ;; esac

D=
cleanup() { [ -n "$D" ] && [ -d "$D" ] || return 0; scripts/cluster down "$D" >/dev/null 2>&1 || true; rm -rf "$D"; }
trap cleanup EXIT
served() { curl -fsS --max-time 1 "http://127.0.0.1:$1/metrics" 2>/dev/null | awk '/^accolade_cluster_partitions_served /{print $2}'; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.2f}')" "$1" "$2"; }

printf '%-6s %-5s %10s %12s %14s %16s %14s\n' round kill "acked/s" "served again" "below half s" "back to 90% s" "acked in all"
for round in $(seq 1 "$ROUNDS"); do
  D=$(mktemp -d /tmp/accolade-failover.XXXXXX)
  ACCOLADE_BIN=$BIN RUST_LOG=warn scripts/cluster up "$D" > "$D/up.txt"
  URLS=$(awk '{ printf "%sws://%s/v1/ws", (NR > 1 ? "," : ""), $3 }' "$D/up.txt")
  read -r -a PORTS <<< "$(awk '{ split($3, a, ":"); printf "%s ", a[2] }' "$D/up.txt")"
  START=$(date +%s.%N)
  "$LG" --url "$URLS" --scenario steady --connections "$CONNS" --rate "$RATE" --duration "$SECS" --sources 4 --json "$D/load.json" > "$D/load.txt" 2>&1 &
  LGPID=$!
  sleep "$(( SECS / 3 ))"
  if [ "$KILL" = node ]; then
    VICTIM=$(awk '$1 == "node" && $2 == 3 { print $3 }' "$D/pids")
  else
    VICTIM=$(awk '$1 == "nats" && $2 == 0 { print $3 }' "$D/pids")
  fi
  T0=$(date +%s.%N)
  kill -KILL "$VICTIM"
  AGAIN=-
  if [ "$KILL" = node ]; then
    # Served again: nodes 1 and 2 together serve all 256 (a node lets a partition go before
    # another takes it, so the sum never counts one twice).
    while :; do
      now=$(date +%s.%N)
      total=$(( $(served "${PORTS[0]}" || echo 0) + $(served "${PORTS[1]}" || echo 0) ))
      if [ "$total" -eq 256 ]; then AGAIN=$(elapsed "$now" "$T0"); break; fi
      if python3 -c "import sys; sys.exit(0 if $now - $T0 >= 120 else 1)"; then AGAIN=">120"; break; fi
      sleep 0.1
    done
  fi
  wait "$LGPID" || true
  KILLED_AT=$(elapsed "$T0" "$START")
  read -r BEFORE BELOW BACK ACKED < <(python3 - "$D/load.json" "$KILLED_AT" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
at = float(sys.argv[2])
tl = r["timeline"]
before = [s["acked"] for s in tl if 2 <= s["t"] < int(at)]
rate = sum(before) / max(len(before), 1)
after = [s for s in tl if s["t"] >= int(at)]
run = best = 0
for s in after:
    run = run + 1 if s["acked"] < rate / 2 else 0
    best = max(best, run)
back = next((s["t"] - at for s in after if s["t"] > at + 1 and s["acked"] >= 0.9 * rate), None)
print(f"{rate:.0f}", best, "-" if back is None else f"{back:.0f}", r["acked"])
EOF
  )
  printf '%-6s %-5s %10s %12s %14s %16s %14s\n' "$round" "$KILL" "$BEFORE" "$AGAIN" "$BELOW" "$BACK" "$ACKED"
  scripts/cluster down "$D" > /dev/null
  rm -rf "$D"
  D=
done
