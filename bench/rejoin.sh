#!/usr/bin/env bash
# What a node's return costs (a rolling restart): a two-node cluster (three NATS servers, R3,
# fsync before every acknowledgement) is given USERS users and about EVENTS events by the load
# generator. Then, twice on the same cluster, node 2 stops (SIGTERM: node 1 takes its
# partitions at once), node 1 takes AWAY seconds of events meanwhile, and node 2 starts again:
# once on its own data dir (`checkpoint`: each partition it held is rebuilt from its checkpoint,
# reading only the changelog stored since) and once on an empty one (`empty`: every partition
# from the start, its newest base and the batches after it). The order alternates by round.
# Prints, for each start, the time until node 2 serves its share again (its count steady for
# 3 s, every partition served) and the changelog batches and base pieces it read.
#
#   bench/rejoin.sh [USERS] [EVENTS] [ROUNDS] [AWAY]
#
# Needs the release binaries: cargo build --release --bin accolade && cargo build --release -p accolade-loadgen.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-1000}
EVENTS=${2:-50000}
ROUNDS=${3:-1}
AWAY=${4:-5}
BIN=${ACCOLADE_BIN:-$PWD/target/release/accolade}
LG=$PWD/target/release/accolade-loadgen
[ -x "$BIN" ] && [ -x "$LG" ] || { echo "bench/rejoin.sh: build first: cargo build --release --bin accolade && cargo build --release -p accolade-loadgen" >&2; exit 1; }

D=
cleanup() { [ -n "$D" ] && [ -d "$D" ] || return 0; scripts/cluster down "$D" || true; rm -rf "$D"; }
trap cleanup EXIT
metric() { curl -fsS "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'; }
served() { metric "$1" accolade_cluster_partitions_served; }
node_pid() { awk -v n="$1" '$1 == "node" && $2 == n { p = $3 } END { print p }' "$D/pids"; }
node_port() { awk -v n="$1" '$1 == "node" && $2 == n { p = $4 } END { print p }' "$D/pids"; }

# Stops node 2 (it leaves: its partitions go to node 1 at once) and waits until it has exited.
stop_node2() {
  local pid; pid=$(node_pid 2)
  kill -TERM "$pid"
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  echo "bench/rejoin.sh: node 2 did not stop in 30 s" >&2; exit 1
}

# Starts node 2 again on its data dir, as `scripts/cluster` started it; prints its port.
start_node2() {
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # shellcheck disable=SC2086
  RUST_LOG=warn "$BIN" --bind "127.0.0.1:$port" --data-dir "$D/node-2" --cluster "$(cat "$D/urls")" --node-id node-2 \
    --rate-per-sec 100000 --rate-burst 100000 ${ACCOLADE_CLUSTER_ARGS:-} >> "$D/node-2.log" 2>&1 &
  echo "node 2 $! $port" >> "$D/pids"
  echo "$port"
}

# One return of node 2: `checkpoint` keeps its data dir, `empty` removes it first.
rejoin() {
  local how=$1 port1 port2 t0 now n last changed total
  port1=$(node_port 1)
  stop_node2
  [ "$how" = empty ] && rm -rf "$D/node-2"
  # Events while node 2 is away, all served by node 1 now.
  "$LG" --url "ws://127.0.0.1:$port1/v1/ws" --scenario steady --connections "$USERS" --rate $(( EVENTS / 20 )) --duration "$AWAY" --sources 4 > "$D/away.txt" 2>&1
  t0=$(date +%s.%N)
  port2=$(start_node2)
  last=0 changed=$t0
  while :; do
    now=$(date +%s.%N)
    n=$(served "$port2" 2>/dev/null || echo 0)
    total=$(( n + $(served "$port1" || echo 0) ))
    if [ "$n" != "$last" ]; then last=$n changed=$now; fi
    if [ "$n" -gt 0 ] && [ "$total" -eq 256 ] && python3 -c "import sys; sys.exit(0 if $now - $changed >= 3 else 1)"; then break; fi
    if python3 -c "import sys; sys.exit(0 if $now - $t0 >= 300 else 1)"; then echo "gave up after 300 s: node 2 serves $n, all $total" >&2; exit 1; fi
    sleep 0.1
  done
  printf '%-6s %-11s %10s %12s %9s %9s %12.2f\n' "$round" "$how" "$ACKED" "$last" "$(metric "$port2" accolade_cluster_rebuilds_from_checkpoint_total)" \
    "$(metric "$port2" accolade_cluster_rebuild_batches_total)" "$(python3 -c "print($changed - $t0)")"
}

printf '%-6s %-11s %10s %12s %9s %9s %12s\n' round start "events" "partitions" "from ckpt" "read" "rejoin s"
for round in $(seq 1 "$ROUNDS"); do
  D=$(mktemp -d /tmp/accolade-rejoin.XXXXXX)
  ACCOLADE_BIN=$BIN ACCOLADE_CLUSTER_NODES=2 RUST_LOG=warn scripts/cluster up "$D" > "$D/up.txt"
  URLS=$(awk '{ printf "%sws://%s/v1/ws", (NR > 1 ? "," : ""), $3 }' "$D/up.txt")
  "$LG" --url "$URLS" --scenario steady --connections "$USERS" --rate $(( EVENTS / 20 )) --duration 20 --sources 4 --json "$D/load.json" > "$D/load.txt" 2>&1
  ACKED=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["acked"])' "$D/load.json")
  if (( round % 2 )); then order="checkpoint empty"; else order="empty checkpoint"; fi
  for how in $order; do rejoin "$how"; done
  scripts/cluster down "$D"
  rm -rf "$D"
  D=
done
