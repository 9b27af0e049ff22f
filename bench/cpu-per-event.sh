#!/usr/bin/env bash
# Server CPU per acked event (issue 22): for each binary named, in turn and ROUNDS times over
# (A B A B ...), a fresh standalone server and data dir, the generator's steady load, and the
# server's CPU time from /proc/PID/stat (user + system, every thread) taken from just before
# the generator starts to just after it ends, divided by the events it acked. Prints one row
# per run: binary, acked events/s, ack p50 and p99 (ms), server CPU seconds, µs per acked
# event, the server's context switches per acked event (`perf stat`, every thread), and any
# errors or missed pushes.
#
#   bench/cpu-per-event.sh RATE SECONDS ROUNDS CONNECTIONS BIN [BIN...]
#
# The generator is $CARGO_TARGET_DIR (or target)/release/accolade-loadgen, LG overrides it;
# the JSON of each run is kept in $OUT (default /tmp/cpu-per-event); SOURCES (default 4) is the
# generator's number of source addresses (a server takes at most 2,000 connections from one). Context switches need
# `perf`; without it the column reads 0.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=$1 SECS=$2 ROUNDS=$3 CONNS=$4
shift 4
LG=${LG:-${CARGO_TARGET_DIR:-$PWD/target}/release/accolade-loadgen}
OUT=${OUT:-/tmp/cpu-per-event}
mkdir -p "$OUT"
TICK=$(getconf CLK_TCK)
. bench/lib.sh
printf '%-28s %5s %9s %9s %9s %8s %9s %8s\n' binary round "events/s" "p50 ms" "p99 ms" "cpu s" "us/event" "cs/event"
for round in $(seq 1 "$ROUNDS"); do
  for bin in "$@"; do
    D=$(mktemp -d /tmp/accolade-cpe.XXXXXX)
    PORT=$(free_port)
    RUST_LOG=warn "$bin" --bind "127.0.0.1:$PORT" --data-dir "$D/data" --rate-per-sec 100000 --rate-burst 100000 > "$D/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/readyz" > /dev/null 2>&1 && break; sleep 0.2; done
    J="$OUT/$(basename "$bin")-r$RATE-c$CONNS-$round.json"
    C0=$(ticks "$PID")
    perf stat -e context-switches -x, -o "$D/ctx" -p "$PID" > /dev/null 2>&1 &
    PERF=$!
    "$LG" --url "ws://127.0.0.1:$PORT/v1/ws" --scenario steady --connections "$CONNS" --rate "$RATE" --duration "$SECS" \
      --sources "${SOURCES:-4}" --json "$J" > "$D/lg.txt" 2>&1 || { cat "$D/lg.txt" >&2; exit 1; }
    C1=$(ticks "$PID")
    kill -INT "$PERF" 2>/dev/null || true; wait "$PERF" 2>/dev/null || true
    CTX=$(awk -F, '/context-switches/ { print $1 }' "$D/ctx" 2>/dev/null || true)
    kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=
    python3 - "$J" "$C0" "$C1" "$TICK" "$bin" "$round" "${CTX:-0}" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
c0, c1, tick = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cpu = (c1 - c0) / tick
acked = j["acked"]
p50, p99 = j["ack"]["p50"] / 1000, j["ack"]["p99"] / 1000
bad = sum(j["errors"].values()) + j["missed_pushes"]
note = f"  ({bad} errors or missed pushes)" if bad else ""
ctx = int(sys.argv[7] or 0) / max(acked, 1)
print(f"{sys.argv[5][-28:]:<28} {sys.argv[6]:>5} {j['events_per_sec']:>9.0f} {p50:>9.2f} {p99:>9.2f} {cpu:>8.2f} {cpu * 1e6 / max(acked, 1):>9.1f} {ctx:>8.2f}{note}")
EOF
    rm -rf "$D"; D=
  done
done
