#!/usr/bin/env bash
# Measures socklab against two anchors with `socklab bench`, under identical settings, on
# loopback, and prints a markdown table (machine, command, medians, ratios) for BENCHMARKS.md.
#
#   servers   socklab echo (raw 64 B and line `PING`), socklab files (`ping` frames),
#             tokio-echo (tools/tokio-echo: current-thread runtime, accept-spawn-read-write_all;
#             raw 64 B), redis-server (inline `PING` in line mode; persistence off), and
#             floor-echo (tools/floor-echo.c: the least an epoll echo can do per request, raw
#             64 B), the floor against which the others' own work shows
#   settings  1, 50 and 1,000 connections x depth 1 and 16, one load thread
#   rounds    3 rounds of 5 s after a 1 s warm-up each (--quick: 1 round of 2 s, 0.5 s warm-up);
#             within a round every server is measured in turn, the order rotated each round
#   pinning   servers on CPU 0, the load generator on CPU 1 (taskset), when there are 2+ CPUs
#   figures   per setting and server the median of the rounds: requests/s, p99 latency, the
#             server's CPU time per request (utime+stime from /proc/PID/stat over the measured
#             window, divided by the requests the bench reported: `socklab bench --server-pid`)
#             and the load generator's CPU use; then socklab/tokio and socklab/redis ratios of
#             CPU time per request.
#
# Usage: tools/bench-anchors.sh [--quick] [--rounds N] [--duration D] [--warmup W]
#                               [--settings "1x1 50x16 ..."] [--raw-json FILE] [--write FILE]
#                               [--baseline SOCKLAB_BINARY [--baseline-label TEXT]]
#                               [--only "socklab tokio redis floor"]
# --baseline runs that socklab binary (e.g. the commit before a change, built by
# `tools/build-at.sh COMMIT OUTDIR`) as more servers right beside this build's: "socklab echo
# raw (LABEL)", "socklab echo line PING (LABEL)", "socklab files ping (LABEL)" (LABEL is
# --baseline-label, default `before`), in the same rounds, rotation, pinning and settings;
# the load generator is this build's `socklab bench` for all. The report then adds "Before and
# after": both builds' median CPU/request and requests/s, and the median of the per-round
# ratios this build / baseline of CPU per request [each round]. --only keeps the listed server
# groups (socklab, which includes the baseline, tokio, redis, floor; and frames, not run unless
# named: files `echo` frames with 16 B and 1 KiB bodies, baseline included), e.g. --only socklab
# for a short before/after run, --only "socklab frames floor" for issue 20's frame rows.
# --write BENCHMARKS.md puts the report between the lines `<!-- bench-anchors: begin -->` and
# `<!-- bench-anchors: end -->` of that file (appended with them when they are not there yet).
# It installs redis-server (apt-get) when missing. Everything it starts is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

rounds=3
duration=5s
warmup=1s
settings="1x1 1x16 50x1 50x16 1000x1 1000x16"
raw_json=""
write=""
baseline=""
baseline_label=before
only="socklab tokio redis floor"
cmdline="tools/bench-anchors.sh${*:+ $*}"
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) rounds=1 duration=2s warmup=500ms ;;
    --rounds) rounds=$2; shift ;;
    --duration) duration=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --settings) settings=$2; shift ;;
    --raw-json) raw_json=$2; shift ;;
    --write) write=$2; shift ;;
    --baseline) baseline=$2; shift ;;
    --baseline-label) baseline_label=$2; shift ;;
    --only) only=$2; shift ;;
    -h | --help) sed -n '2,34p' "$0"; exit 0 ;;
    *) echo "bench-anchors: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "bench-anchors: $*" >&2; }
for g in $only; do
    case "$g" in socklab | frames | tokio | redis | floor) ;; *) echo "bench-anchors: --only: unknown group $g" >&2; exit 2 ;; esac
done
want() { [[ " $only " == *" $1 "* ]]; }
if [ -n "$baseline" ]; then
    [ -x "$baseline" ] || { echo "bench-anchors: --baseline $baseline is not an executable" >&2; exit 2; }
    baseline=$(cd "$(dirname "$baseline")" && pwd)/$(basename "$baseline")
    case "$baseline_label" in *'"'* | *\\* | *'|'* | '') echo "bench-anchors: --baseline-label: no quotes, backslashes or |" >&2; exit 2 ;; esac
fi

# --- build and install what is needed -------------------------------------------------------
log "building socklab and tools/tokio-echo (release)"
cargo build --release --quiet
want tokio && cargo build --release --quiet --manifest-path tools/tokio-echo/Cargo.toml
socklab=$root/target/release/socklab
tokio_echo=$root/tools/tokio-echo/target/release/tokio-echo
if ! command -v cc >/dev/null; then
    log "installing gcc"
    if ! apt-get install -y gcc >/dev/null 2>&1; then
        apt-get update >/dev/null && apt-get install -y gcc >/dev/null
    fi
fi
floor_echo=$root/target/release/floor-echo
want floor && cc -O2 -Wall -Wextra -o "$floor_echo" tools/floor-echo.c
if want redis && ! command -v redis-server >/dev/null; then
    log "installing redis-server"
    if ! apt-get install -y redis-server >/dev/null 2>&1; then
        apt-get update >/dev/null && apt-get install -y redis-server >/dev/null
    fi
fi
redis_version="(not run)"
want redis && redis_version=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')

# 1,000 connections per server: every process started here gets the hard limit.
ulimit -n "$(ulimit -Hn)"

if [ "$(nproc)" -ge 2 ]; then
    pin_server=(taskset -c 0)
    pin_bench=(taskset -c 1)
    pinning="servers on CPU 0, load generator on CPU 1 (taskset)"
else
    pin_server=()
    pin_bench=()
    pinning="not pinned (one CPU)"
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until the file $1 contains a line matching $2 (10 s at most).
wait_for_line() {
    for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    log "timed out waiting for '$2' in $1:"; cat "$1" >&2; exit 1
}

# --- servers --------------------------------------------------------------------------------
# socklab: echo and files on free ports, every other service off.
# A service is a NAME with both `--NAME <ADDR>` and `--no-NAME` in `socklab serve --help`.
# start_socklab BINARY TAG: starts it; sets started_pid, started_echo, started_files.
start_socklab() {
    local bin=$1 tag=$2 help s off=()
    help=$("$bin" serve --help)
    for s in $(grep -o -- '--no-[a-z-]*' <<<"$help" | sed 's/^--no-//' | sort -u); do
        case "$s" in echo | files) continue ;; esac
        if grep -q -- "--$s <ADDR>" <<<"$help"; then off+=("--no-$s"); fi
    done
    # Every bench connection comes from 127.0.0.1: no per-address limit (builds before it
    # have none and do not know the flag).
    if grep -q -- "--max-conns-per-ip" <<<"$help"; then off+=(--max-conns-per-ip 0); fi
    "${pin_server[@]}" "$bin" serve --echo 127.0.0.1:0 --files 127.0.0.1:0 \
        --data-dir "$work/data-$tag" "${off[@]}" --max-conns 5000 -q \
        >"$work/$tag.out" 2>"$work/$tag.err" &
    started_pid=$!
    pids+=("$started_pid")
    wait_for_line "$work/$tag.out" '^ready'
    started_echo=$(awk '$1 == "listening" && $2 == "echo" && $3 == "tcp" {print $4; exit}' "$work/$tag.out")
    started_files=$(awk '$1 == "listening" && $2 == "files" && $3 == "tcp" {print $4; exit}' "$work/$tag.out")
}

# name|pid|bench arguments
targets=()
if want socklab || want frames; then
    start_socklab "$socklab" socklab
    socklab_pid=$started_pid socklab_echo=$started_echo socklab_files=$started_files
    if [ -n "$baseline" ]; then
        start_socklab "$baseline" baseline
        base_pid=$started_pid base_echo=$started_echo base_files=$started_files
    fi
fi

if want tokio; then
    # tokio-echo: prints `listening ADDR` once bound.
    "${pin_server[@]}" "$tokio_echo" 127.0.0.1:0 >"$work/tokio.out" 2>&1 &
    tokio_pid=$!
    pids+=("$tokio_pid")
    wait_for_line "$work/tokio.out" '^listening'
    tokio_addr=$(awk '$1 == "listening" {print $2; exit}' "$work/tokio.out")
fi

if want floor; then
    # floor-echo: prints `listening ADDR` once bound.
    "${pin_server[@]}" "$floor_echo" 127.0.0.1:0 >"$work/floor.out" 2>&1 &
    floor_pid=$!
    pids+=("$floor_pid")
    wait_for_line "$work/floor.out" '^listening'
    floor_addr=$(awk '$1 == "listening" {print $2; exit}' "$work/floor.out")
fi

if want redis; then
    # redis: a free port, persistence off, in the foreground (so that $! is its pid).
    redis_port=$(free_port)
    "${pin_server[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' \
        --appendonly no --daemonize no --maxclients 5000 >"$work/redis.out" 2>&1 &
    redis_pid=$!
    pids+=("$redis_pid")
    wait_for_line "$work/redis.out" 'Ready to accept connections'
    redis_addr=127.0.0.1:$redis_port
fi

# The order of the report's table; each baseline server right after its socklab server.
b="$baseline_label"
if want socklab; then
    targets+=("socklab echo raw|$socklab_pid|--addr $socklab_echo --mode raw --size 64")
    [ -n "$baseline" ] && targets+=("socklab echo raw ($b)|$base_pid|--addr $base_echo --mode raw --size 64")
fi
want tokio && targets+=("tokio echo raw|$tokio_pid|--addr $tokio_addr --mode raw --size 64")
if want socklab; then
    targets+=("socklab echo line PING|$socklab_pid|--addr $socklab_echo --mode line --line PING")
    [ -n "$baseline" ] && targets+=("socklab echo line PING ($b)|$base_pid|--addr $base_echo --mode line --line PING")
fi
want redis && targets+=("redis PING|$redis_pid|--addr $redis_addr --mode line --line PING")
if want socklab; then
    targets+=("socklab files ping|$socklab_pid|--addr $socklab_files --mode frame --frame-cmd ping")
    [ -n "$baseline" ] && targets+=("socklab files ping ($b)|$base_pid|--addr $base_files --mode frame --frame-cmd ping")
fi
# Frames with a body (issue 20): files echo of 16 B and 1 KiB, against the floor's raw echo.
if want frames; then
    for size in 16 1024; do
        label="$size B"
        [ "$size" = 1024 ] && label="1 KiB"
        targets+=("socklab files echo $label|$socklab_pid|--addr $socklab_files --mode frame --frame-cmd echo --size $size")
        [ -n "$baseline" ] && targets+=("socklab files echo $label ($b)|$base_pid|--addr $base_files --mode frame --frame-cmd echo --size $size")
    done
fi
want floor && targets+=("floor echo raw|$floor_pid|--addr $floor_addr --mode raw --size 64")
servers=$(for t in "${targets[@]}"; do printf '%s\n' "${t%%|*}"; done)

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
results=$work/results.jsonl
: >"$results"
total=$(($(wc -w <<<"$settings") * rounds * ${#targets[@]}))
n=0
for setting in $settings; do
    conns=${setting%x*}
    depth=${setting#*x}
    for round in $(seq "$rounds"); do
        count=${#targets[@]}
        for k in $(seq 0 $((count - 1))); do
            # Rotate the order each round, so that no server always goes first.
            t=${targets[$(((k + round - 1) % count))]}
            name=${t%%|*}
            rest=${t#*|}
            pid=${rest%%|*}
            args=${rest#*|}
            n=$((n + 1))
            log "[$n/$total] $setting round $round: $name"
            # shellcheck disable=SC2086
            if out=$("${pin_bench[@]}" "$socklab" bench $args --conns "$conns" --depth "$depth" \
                --duration "$duration" --warmup "$warmup" --threads 1 --server-pid "$pid" \
                --json 2>"$work/bench.err"); then
                printf '{"setting":"%s","round":%s,"server":"%s","result":%s}\n' \
                    "$setting" "$round" "$name" "$out" >>"$results"
            else
                err=$(tr '\n"' ' _' <"$work/bench.err")
                log "  failed: $err"
                printf '{"setting":"%s","round":%s,"server":"%s","error":"%s"}\n' \
                    "$setting" "$round" "$name" "$err" >>"$results"
            fi
        done
    done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
[ -n "$raw_json" ] && cp "$results" "$raw_json"

# --- report ---------------------------------------------------------------------------------
SERVERS=$servers BASELINE=$baseline BASELINE_LABEL=$baseline_label \
    SETTINGS="$settings" ROUNDS=$rounds DURATION=$duration WARMUP=$warmup CMDLINE=$cmdline \
    PINNING=$pinning LOAD_START=$load_start LOAD_END=$load_end REDIS_VERSION=$redis_version \
    BENCH_EXAMPLE="socklab bench --addr ADDR MODE --conns C --depth D --duration $duration --warmup $warmup --threads 1 --server-pid PID --json" \
    python3 tools/anchors_report.py "$results" >"$work/report.md"
cat "$work/report.md"
if [ -n "$write" ]; then
    python3 tools/splice_section.py "$write" "bench-anchors" "$work/report.md"
    log "report written into $write"
fi
