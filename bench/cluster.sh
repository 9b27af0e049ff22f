#!/usr/bin/env bash
# Standalone against a one-node cluster (the node owns every partition) and a three-node
# cluster (the connections spread over the nodes in turn, so two in three sockets are attached
# to their user's actor on another node), each on three NATS servers with R3 and fsync before
# every acknowledgement; the same generator against each, rounds interleaved, on loopback.
# Prints one row per run: acked events/s, ack p50 and p99, server CPU (all nodes), NATS CPU
# (all three servers), and CPU per acked event (nodes plus NATS).
#
#   bench/cluster.sh [RATE] [SECONDS] [ROUNDS] [CONNECTIONS]
#
# MODES="standalone cluster cluster3" (the default) picks the modes; NATS_SYNC_INTERVAL passes
# to scripts/cluster.
#
# Needs the release binaries: cargo build --release --bin accolade && cargo build --release -p accolade-loadgen.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-5000}
SECS=${2:-20}
ROUNDS=${3:-2}
CONNS=${4:-1000}
BIN=$PWD/target/release/accolade
LG=$PWD/target/release/accolade-loadgen
[ -x "$BIN" ] && [ -x "$LG" ] || { echo "bench/cluster.sh: build first: cargo build --release --bin accolade && cargo build --release -p accolade-loadgen" >&2; exit 1; }
TICK=$(getconf CLK_TCK)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ticks() { local t=0 p; for p in "$@"; do t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat") )); done; echo "$t"; }

# Whatever a run started is stopped if the script ends early (an error, ^C).
D=
cleanup() {
  [ -n "$D" ] && [ -d "$D" ] || return 0
  if [ -s "$D/pids" ]; then scripts/cluster down "$D" || true; fi
  [ -z "${PID:-}" ] || kill -TERM "$PID" 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT

printf '%-10s %6s %10s %9s %9s %9s %9s %12s\n' mode round "events/s" "p50 ms" "p99 ms" "node %" "nats %" "us/event"
for round in $(seq 1 "$ROUNDS"); do
  for mode in ${MODES:-standalone cluster cluster3}; do
    D=$(mktemp -d /tmp/accolade-bench.XXXXXX)
    NATS_PIDS=()
    if [ "$mode" = standalone ]; then
      PORT=$(free_port)
      RUST_LOG=warn "$BIN" --bind "127.0.0.1:$PORT" --data-dir "$D/data" --rate-per-sec 100000 --rate-burst 100000 > "$D/node.log" 2>&1 &
      PID=$!
      for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/readyz" > /dev/null 2>&1 && break; sleep 0.2; done
      URLS="ws://127.0.0.1:$PORT/v1/ws"
      NODE_PIDS=("$PID")
    else
      NODES=1; [ "$mode" = cluster3 ] && NODES=3
      ACCOLADE_BIN=$BIN ACCOLADE_CLUSTER_NODES=$NODES RUST_LOG=warn scripts/cluster up "$D" > "$D/up.txt"
      URLS=$(awk '{ printf "%sws://%s/v1/ws", (NR > 1 ? "," : ""), $3 }' "$D/up.txt")
      mapfile -t NODE_PIDS < <(awk '{ print $5 }' "$D/up.txt")
      PID=
      mapfile -t NATS_PIDS < <(awk '$1 == "nats" { print $3 }' "$D/pids")
    fi
    N0=$(ticks "${NODE_PIDS[@]}"); S0=0; [ ${#NATS_PIDS[@]} -eq 0 ] || S0=$(ticks "${NATS_PIDS[@]}")
    T0=$(date +%s.%N)
    "$LG" --url "$URLS" --scenario steady --connections "$CONNS" --rate "$RATE" --duration "$SECS" --sources 4 --json "$D/out.json" > "$D/loadgen.txt" 2>&1
    T1=$(date +%s.%N)
    N1=$(ticks "${NODE_PIDS[@]}"); S1=0; [ ${#NATS_PIDS[@]} -eq 0 ] || S1=$(ticks "${NATS_PIDS[@]}")
    python3 - "$D/out.json" "$mode" "$round" "$N0" "$N1" "$S0" "$S1" "$T0" "$T1" "$TICK" <<'EOF'
import json, sys
out, mode, rnd = sys.argv[1], sys.argv[2], sys.argv[3]
n0, n1, s0, s1 = (int(x) for x in sys.argv[4:8])
t0, t1, tick = float(sys.argv[8]), float(sys.argv[9]), int(sys.argv[10])
d = json.load(open(out))
wall = t1 - t0
node = (n1 - n0) / tick / wall * 100
nats = (s1 - s0) / tick / wall * 100
per = ((n1 - n0) + (s1 - s0)) / tick / max(d["acked"], 1) * 1e6
errs = sum(d["errors"].values()) + d["missed_pushes"]
print(f'{mode:<10} {rnd:>6} {d["events_per_sec"]:>10.0f} {d["ack"]["p50"]/1000:>9.2f} {d["ack"]["p99"]/1000:>9.2f} {node:>9.0f} {nats:>9.0f} {per:>12.1f}' + (f'  ({errs} errors or missed pushes: {d["errors"]}, missed {d["missed_pushes"]})' if errs else ''))
EOF
    if [ "$mode" = standalone ]; then
      kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
    else
      scripts/cluster down "$D"
    fi
    PID=
    rm -rf "$D"
  done
done
