#!/usr/bin/env bash
# What a partition move costs: a two-node cluster (three NATS servers, R3, fsync before every
# acknowledgement) is given USERS users and about EVENTS events in all by the load generator,
# then a third node joins and takes its share of the 256 partitions, each claimed and rebuilt
# from its changelog (the newest base and the batches after it) before it is served. Prints the
# events stored, the partitions the third node took, and the time from its start until it
# served them all (its count steady for 3 s, every partition served). Repeated ROUNDS times,
# each on a fresh cluster. ACCOLADE_BIN names another binary (to compare two builds);
# ACCOLADE_CLUSTER_ARGS adds node flags (e.g. --cluster-compact-batches 20).
#
#   bench/partition-move.sh [USERS] [EVENTS] [ROUNDS]
#
# Needs the release binaries: cargo build --release --bin accolade && cargo build --release -p accolade-loadgen.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-1000}
EVENTS=${2:-50000}
ROUNDS=${3:-1}
BIN=${ACCOLADE_BIN:-$PWD/target/release/accolade}
LG=$PWD/target/release/accolade-loadgen
[ -x "$BIN" ] && [ -x "$LG" ] || { echo "bench/partition-move.sh: build first: cargo build --release --bin accolade && cargo build --release -p accolade-loadgen" >&2; exit 1; }

D=
cleanup() { [ -n "$D" ] && [ -d "$D" ] || return 0; scripts/cluster down "$D" || true; rm -rf "$D"; }
trap cleanup EXIT
served() { curl -fsS "http://127.0.0.1:$1/metrics" | awk '/^accolade_cluster_partitions_served /{print $2}'; }

printf '%-6s %8s %10s %12s %12s\n' round users "events" "partitions" "move s"
for round in $(seq 1 "$ROUNDS"); do
  D=$(mktemp -d /tmp/accolade-move.XXXXXX)
  ACCOLADE_BIN=$BIN ACCOLADE_CLUSTER_NODES=2 RUST_LOG=warn scripts/cluster up "$D" > "$D/up.txt"
  URLS=$(awk '{ printf "%sws://%s/v1/ws", (NR > 1 ? "," : ""), $3 }' "$D/up.txt")
  PORTS=$(awk '{ split($3, a, ":"); print a[2] }' "$D/up.txt")
  SECS=20
  "$LG" --url "$URLS" --scenario steady --connections "$USERS" --rate $(( EVENTS / SECS )) --duration "$SECS" --sources 4 --json "$D/load.json" > "$D/load.txt" 2>&1
  ACKED=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["acked"])' "$D/load.json")
  T0=$(date +%s.%N)
  read -r _ _ ADDR _ _ < <(RUST_LOG=warn scripts/cluster join "$D")
  PORT3=${ADDR#127.0.0.1:}
  last=0 changed=$T0
  while :; do
    now=$(date +%s.%N)
    n=$(served "$PORT3" || echo 0)
    total=$n; for p in $PORTS; do total=$(( total + $(served "$p" || echo 0) )); done
    if [ "$n" != "$last" ]; then last=$n changed=$now; fi
    if [ "$n" -gt 0 ] && [ "$total" -eq 256 ] && python3 -c "import sys; sys.exit(0 if $now - $changed >= 3 else 1)"; then break; fi
    if python3 -c "import sys; sys.exit(0 if $now - $T0 >= 300 else 1)"; then echo "gave up after 300 s: node 3 serves $n, all $total" >&2; exit 1; fi
    sleep 0.1
  done
  printf '%-6s %8s %10s %12s %12.2f\n' "$round" "$USERS" "$ACKED" "$last" "$(python3 -c "print($changed - $T0)")"
  scripts/cluster down "$D"
  rm -rf "$D"
  D=
done
