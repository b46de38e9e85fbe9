#!/usr/bin/env bash
# What the status page costs (issue 22's targets), side by side in one run: the server CPU per
# echo request (`socklab bench --server-pid`, raw 64 B) of
#   A  a server without the metrics listener,
#   B  the same with it on and nobody watching,
#   C  B while N viewers (default 100) follow /events (one snapshot a second each), read by
#      one Python process on the load generator's CPU.
# Rounds alternate A, B, C; the medians and the ratios B/A and C/B are printed as markdown.
#
# Usage: tools/status-bench.sh [--rounds N] [--duration D] [--viewers N] [--settings "50x16 1000x1"]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 duration=5s viewers=100 settings="50x16 1000x1"
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) rounds=$2; shift ;;
    --duration) duration=$2; shift ;;
    --viewers) viewers=$2; shift ;;
    --settings) settings=$2; shift ;;
    *) echo "status-bench: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
cargo build --release --quiet
bin=$PWD/target/release/socklab
ulimit -n "$(ulimit -Hn)"
pin_server=(taskset -c 0) pin_load=(taskset -c 1)
[ "$(nproc)" -ge 2 ] || { pin_server=(); pin_load=(); }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
off=()
for s in upper udp-echo udp-upper files chat udp-chat time discovery; do off+=("--no-$s"); done
start() { # tag, extra args
    local tag=$1; shift
    "${pin_server[@]}" "$bin" serve --echo 127.0.0.1:0 "${off[@]}" --max-conns-per-ip 0 -q "$@" >"$work/$tag.out" 2>&1 &
    pids+=("$!")
    echo "$!" >"$work/$tag.pid"
    for _ in $(seq 100); do grep -q '^ready' "$work/$tag.out" && return; sleep 0.1; done
    echo "status-bench: $tag did not start" >&2; exit 1
}
start a --no-metrics
start b --metrics 127.0.0.1:0
echo_of() { awk '$2 == "echo" {print $4; exit}' "$work/$1.out"; }
metrics_b=$(awk '$2 == "metrics" {print $4; exit}' "$work/b.out")
run() { # name pid addr conns depth
    "${pin_load[@]}" "$bin" bench --json --warmup 1s --duration "$duration" --server-pid "$2" \
        --addr "$3" --conns "$4" --depth "$5" |
        python3 -c 'import json,sys; r=json.load(sys.stdin); print(sys.argv[1], r["server_cpu_per_request_us"], r["requests_per_s"])' "$1" \
        >>"$work/results.txt"
}
viewers_on() {
    "${pin_load[@]}" python3 - "$metrics_b" "$viewers" "$work/viewers.ready" <<'PY' &
import selectors, socket, sys
host, port = sys.argv[1].rsplit(':', 1)
n, ready = int(sys.argv[2]), sys.argv[3]
sel = selectors.DefaultSelector()
for _ in range(n):
    s = socket.create_connection((host, int(port)))
    s.sendall(b'GET /events HTTP/1.1\r\nHost: t\r\n\r\n')
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
open(ready, 'w').close()
events = 0
while True:
    for key, _ in sel.select():
        data = key.fileobj.recv(65536)
        if not data:
            sys.exit(1)
        events += data.count(b'\ndata: ') + data.startswith(b'data: ')
PY
    viewers_pid=$!
    for _ in $(seq 200); do [ -e "$work/viewers.ready" ] && return; sleep 0.05; done
}
for round in $(seq "$rounds"); do
    for s in $settings; do
        c=${s%x*} d=${s#*x}
        echo "status-bench: round $round, $s" >&2
        run "A $s" "$(cat "$work/a.pid")" "$(echo_of a)" "$c" "$d"
        run "B $s" "$(cat "$work/b.pid")" "$(echo_of b)" "$c" "$d"
        rm -f "$work/viewers.ready"
        viewers_on
        run "C $s" "$(cat "$work/b.pid")" "$(echo_of b)" "$c" "$d"
        kill "$viewers_pid" 2>/dev/null || true
        wait "$viewers_pid" 2>/dev/null || true
    done
done
python3 - "$work/results.txt" "$viewers" "$settings" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
viewers, settings = sys.argv[2], sys.argv[3].split()
med = lambda name: statistics.median(float(r[2]) for r in rows if f"{r[0]} {r[1]}" == name)
rps = lambda name: statistics.median(float(r[3]) for r in rows if f"{r[0]} {r[1]}" == name)
print(f"| setting | A: no metrics listener (µs/req) | B: metrics on, nobody watching | C: B + {viewers} /events viewers | B/A | C/B |")
print("|---|---|---|---|---|---|")
for s in settings:
    a, b, c = med(f"A {s}"), med(f"B {s}"), med(f"C {s}")
    print(f"| {s} | {a:.3f} ({rps(f'A {s}'):,.0f}/s) | {b:.3f} ({rps(f'B {s}'):,.0f}/s) | {c:.3f} ({rps(f'C {s}'):,.0f}/s) | {b/a:.3f}x | {c/b:.3f}x |")
PY
