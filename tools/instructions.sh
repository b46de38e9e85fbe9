#!/usr/bin/env bash
# Instructions a request costs the server in user space, counted by valgrind's callgrind: a
# count, not a time, so the same binary under the same load gives the same figure whatever else
# the machine is doing (the timed rows of bench-anchors.sh swing by 10-25 % a round on a VM).
# What the kernel does (recv, send, epoll) is not counted: it is the same for every server here.
#
#   servers   socklab files (`ping` frames) and socklab echo (raw 64 B), one `socklab serve`;
#             the floor (tools/floor-echo.c, raw 64 B); with --baseline, another socklab build's
#             files ping and echo beside them
#   method    each server under callgrind on CPU 0, `socklab bench` on CPU 1: the connections
#             opened and warmed for 1 s, the counts zeroed (callgrind_control -z), --duration of
#             load, the counts dumped; instructions / the requests the bench reported
#   report    per setting, instructions per request and the ratio to the floor's; then, for
#             each socklab server at the first setting, the functions that count most (their
#             own instructions per request)
#
# Usage: tools/instructions.sh [--settings "1000x1 50x16"] [--duration 5s] [--top N]
#                              [--baseline SOCKLAB_BINARY [--baseline-label TEXT]]
# Needs valgrind (Debian's package). Everything it starts is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

settings="1000x1 50x16" duration=5s top=12 baseline="" baseline_label=before
cmdline="tools/instructions.sh${*:+ $*}"
while [ $# -gt 0 ]; do
    case "$1" in
    --settings) settings=$2; shift ;;
    --duration) duration=$2; shift ;;
    --top) top=$2; shift ;;
    --baseline) baseline=$2; shift ;;
    --baseline-label) baseline_label=$2; shift ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "instructions: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
log() { echo "instructions: $*" >&2; }
command -v callgrind_control >/dev/null || { log "needs valgrind (apt-get install valgrind)"; exit 2; }

cargo build --release --quiet
socklab=$root/target/release/socklab
floor_echo=$root/target/release/floor-echo
cc -O2 -Wall -Wextra -o "$floor_echo" tools/floor-echo.c
if [ "$(nproc)" -ge 2 ]; then pin_server=(taskset -c 0) pin_bench=(taskset -c 1); else pin_server=() pin_bench=(); fi

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

wait_for_line() { # FILE PATTERN: up to 60 s (valgrind starts slowly)
    for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    log "no '$2' in $1"; cat "$1" >&2; exit 1
}

# A service is a NAME with both `--NAME <ADDR>` and `--no-NAME` in `socklab serve --help`:
# all but echo and files are turned off, so that only their work is counted.
start_socklab() { # BINARY TAG: sets pid, files_addr, echo_addr
    local help off=() s
    help=$("$1" serve --help)
    for s in $(grep -o -- '--no-[a-z-]*' <<<"$help" | sed 's/^--no-//' | sort -u); do
        case "$s" in echo | files) continue ;; esac
        if grep -q -- "--$s <ADDR>" <<<"$help"; then off+=("--no-$s"); fi
    done
    "${pin_server[@]}" valgrind --tool=callgrind --callgrind-out-file="$work/cg.$2" \
        "$1" serve --echo 127.0.0.1:0 --files 127.0.0.1:0 --data-dir "$work/data-$2" "${off[@]}" \
        --max-conns 5000 --max-conns-per-ip 0 -q >"$work/$2.out" 2>"$work/$2.err" &
    pid=$!; pids+=("$pid")
    wait_for_line "$work/$2.out" '^ready'
    files_addr=$(awk '$1 == "listening" && $2 == "files" && $3 == "tcp" {print $4; exit}' "$work/$2.out")
    echo_addr=$(awk '$1 == "listening" && $2 == "echo" && $3 == "tcp" {print $4; exit}' "$work/$2.out")
}

log "starting the servers under callgrind"
targets=()
start_socklab "$socklab" new
targets+=("socklab files ping|$pid|new|--addr $files_addr --mode frame --frame-cmd ping")
targets+=("socklab echo|$pid|new|--addr $echo_addr --mode raw --size 64")
if [ -n "$baseline" ]; then
    start_socklab "$baseline" base
    targets+=("socklab files ping ($baseline_label)|$pid|base|--addr $files_addr --mode frame --frame-cmd ping")
    targets+=("socklab echo ($baseline_label)|$pid|base|--addr $echo_addr --mode raw --size 64")
fi
"${pin_server[@]}" valgrind --tool=callgrind --callgrind-out-file="$work/cg.floor" \
    "$floor_echo" 127.0.0.1:0 >"$work/floor.out" 2>"$work/floor.err" &
pid=$!; pids+=("$pid")
wait_for_line "$work/floor.out" '^listening'
targets+=("floor|$pid|floor|--addr $(awk '{print $2; exit}' "$work/floor.out") --mode raw --size 64")

# The dumps a server has written so far (callgrind_control -d writes the next).
dumps() { find "$work" -name "cg.$1.*" | wc -l; }
n=0
for s in $settings; do
    c=${s%x*} d=${s#*x}
    for t in "${targets[@]}"; do
        IFS='|' read -r name pid tag args <<<"$t"
        n=$((n + 1))
        log "$s: $name"
        # shellcheck disable=SC2086
        "${pin_bench[@]}" "$socklab" bench $args --conns "$c" --depth "$d" --duration 1s \
            --warmup 0s --threads 1 >/dev/null 2>>"$work/bench.err"
        callgrind_control -z "$pid" >/dev/null 2>&1
        # shellcheck disable=SC2086
        "${pin_bench[@]}" "$socklab" bench $args --conns "$c" --depth "$d" --duration "$duration" \
            --warmup 0s --threads 1 --json >"$work/run$n.json" 2>>"$work/bench.err"
        before=$(dumps "$tag")
        callgrind_control -d "$pid" >/dev/null 2>&1
        for _ in $(seq 100); do
            [ "$(dumps "$tag")" -gt "$before" ] && break
            sleep 0.1
        done
        dump=$(find "$work" -name "cg.$tag.*" -printf '%T@ %p\n' | sort -rn | awk '{print $2; exit}')
        echo "$name|$s|$work/run$n.json|$dump" >>"$work/runs"
    done
done

machine="$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs, Linux $(uname -r)"
python3 - "$work/runs" "$machine" "$cmdline" "$top" "${settings%% *}" <<'PY'
import collections, json, re, sys
runs_path, machine, cmd, top, first = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]

def self_costs(path):
    """Each function's own instructions in a callgrind dump (calls' inclusive costs left out)."""
    names, cost, current, call_line = {}, collections.Counter(), None, False
    for line in open(path):
        m = re.match(r"^fn=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            current, call_line = names.get(m.group(1), m.group(1)), False
            continue
        m = re.match(r"^c(?:fn|fi|fl|ob)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            if line.startswith("cfn") and m.group(2):
                names[m.group(1)] = m.group(2)
            continue
        if line.startswith("calls="):
            call_line = True
            continue
        parts = line.split()
        if current and len(parts) >= 2 and (line[0].isdigit() or line[0] in "+-*"):
            if call_line:
                call_line = False
                continue
            try:
                cost[current] += int(parts[1])
            except ValueError:
                pass
    return cost

rows = []
for line in open(runs_path):
    name, setting, js, dump = line.rstrip("\n").split("|")
    requests = json.load(open(js))["requests"]
    cost = self_costs(dump)
    rows.append((name, setting, requests, sum(cost.values()), cost))
print(f"Machine: {machine}; servers under callgrind on CPU 0, `socklab bench` on CPU 1.")
print(f"Command: `{cmd}`")
print()
print("| setting | server | requests | instructions / request | / floor |")
print("|---|---|---:|---:|---:|")
floor = {s: ir / n for name, s, n, ir, _ in rows if name == "floor" and n}
for name, s, n, ir, _ in rows:
    per = ir / n if n else float("nan")
    print(f"| {s} | {name} | {n:,} | {per:,.0f} | {per / floor[s]:.1f}x |" if s in floor else f"| {s} | {name} | {n:,} | {per:,.0f} | n/a |")
for name, s, n, ir, cost in rows:
    if s != first or name == "floor" or not n:
        continue
    print()
    print(f"{name} at {s}, the functions that count most (own instructions per request):")
    print()
    print("| function | instructions / request |")
    print("|---|---:|")
    for fn, c in cost.most_common(top):
        print(f"| `{fn[:100]}` | {c / n:,.1f} |")
PY
