# Shared by the benchmark scripts that start servers of their own: a free loopback port, a
# process's CPU ticks (user + system, every thread) from /proc, and a trap that stops the
# server the script started ($PID) and removes its data dir ($D), and nothing else.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
PID= D=
cleanup() { [ -z "$PID" ] || kill -TERM "$PID" 2>/dev/null || true; [ -z "$D" ] || rm -rf "$D"; }
trap cleanup EXIT
