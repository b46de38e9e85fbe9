#!/usr/bin/env bash
# A change to the TLS path against the build before it: socklab's TLS echo and its plaintext
# echo (two listeners of one server), for each build in turn, round after round.
#
#   per run   `socklab bench --json` (64 B raw echo) with --server-pid: the server's CPU per
#             request over the measured window; with perf installed, the user-space part of
#             it from `perf record -F 4000` (cpu-clock) samples taken inside that window
#   report    per build the median over the rounds of plain and TLS CPU per request, their
#             user parts and TLS/plain; then this build / before, per round and median
#   pinning   the server on CPU 0, the load generator on CPU 1, when there are 2+ CPUs
#
# Usage: tools/tls-ab.sh --baseline SOCKLAB_BINARY [--rounds N] [--settings "1000x1 50x16"]
#                        [--duration D] [--warmup W]
# Build the baseline with `tools/build-at.sh COMMIT OUTDIR`. Defaults: 5 rounds, 1000x1,
# 4 s after 1 s. Everything it starts is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

baseline="" rounds=5 settings="1000x1" duration=4s warmup=1s
while [ $# -gt 0 ]; do
    case "$1" in
    --baseline) baseline=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --settings) settings=$2; shift ;;
    --duration) duration=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "tls-ab: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
log() { echo "tls-ab: $*" >&2; }
[ -x "$baseline" ] || { log "--baseline must name a socklab binary"; exit 2; }

cargo build --release --quiet
socklab=$root/target/release/socklab
ulimit -n "$(ulimit -Hn)"
if [ "$(nproc)" -ge 2 ]; then
    pin_server=(taskset -c 0) pin_bench=(taskset -c 1)
else
    pin_server=() pin_bench=()
fi
have_perf=$(command -v perf >/dev/null && echo yes || echo no)

work=$(mktemp -d)
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

"$socklab" cert --out "$work/cert" >/dev/null
cat >"$work/socklab.toml" <<TOML
[[listener]]
service = "echo"
addr = "127.0.0.1:0"

[[listener]]
service = "echo"
addr = "127.0.0.1:0"
[listener.tls]
cert = "$work/cert/server.pem"
key = "$work/cert/server.key"
TOML

# The perf window: from half a second after the warm-up would end if connecting took no time
# (1,000 TLS handshakes at the ~2,700/s tls-bench.sh measured: ~0.4 s) to a second before the
# run's end. The bench says nothing until it ends, so the window is timed from its start.
secs() { python3 -c 'import sys; s=sys.argv[1]; print(float(s[:-2])/1000 if s.endswith("ms") else float(s.rstrip("s")))' "$1"; }
record_after=$(python3 -c "print($(secs "$warmup") + 0.5)")
record_for=$(python3 -c "print(max($(secs "$duration") - 1.0, 0.5))")

# run BUILD_LABEL BINARY ROUND SETTING: one server, its plain and TLS echo measured in turn.
run() {
    local label=$1 bin=$2 round=$3 setting=$4 conns depth
    conns=${setting%x*} depth=${setting#*x}
    "${pin_server[@]}" "$bin" serve --config "$work/socklab.toml" --max-conns 20000 \
        --max-conns-per-ip 0 --no-metrics -q >"$work/server.out" 2>"$work/server.err" </dev/null &
    server_pid=$!
    for _ in $(seq 100); do grep -q '^ready' "$work/server.out" && break; sleep 0.1; done
    grep -q '^ready' "$work/server.out" || { log "$label did not start: $(cat "$work/server.err")"; exit 1; }
    local plain tls
    plain=$(awk '$2 == "echo" && !/tls=on/ {print $4; exit}' "$work/server.out")
    tls=$(awk '$2 == "echo" && /tls=on/ {print $4; exit}' "$work/server.out")
    for mode in plain tls; do
        local addr=$plain extra=()
        [ "$mode" = tls ] && addr=$tls extra=(--tls --ca "$work/cert/ca.pem")
        "${pin_bench[@]}" "$socklab" bench --json --addr "$addr" "${extra[@]}" --conns "$conns" \
            --depth "$depth" --duration "$duration" --warmup "$warmup" \
            --server-pid "$server_pid" >"$work/bench.json" 2>>"$work/bench.err" &
        local bench_pid=$! kernel=""
        if [ "$have_perf" = yes ]; then
            sleep "$record_after"
            perf record -F 4000 -p "$server_pid" -o "$work/perf.data" -- sleep "$record_for" \
                >/dev/null 2>&1 || true
            kernel=$(perf report -i "$work/perf.data" --no-children --sort dso --stdio 2>/dev/null |
                awk '/kernel.kallsyms/ {gsub("%", "", $1); print $1; exit}')
        fi
        wait "$bench_pid" || { log "bench failed: $label $mode $setting"; exit 1; }
        python3 - "$label" "$round" "$setting" "$mode" "${kernel:-}" "$work/bench.json" <<'PY' >>"$work/results.jsonl"
import json, sys
label, rnd, setting, mode, kernel, path = sys.argv[1:7]
r = json.load(open(path))
cpu = r["server_cpu_per_request_us"]
user = cpu * (100 - float(kernel)) / 100 if kernel else None
print(json.dumps({"build": label, "round": int(rnd), "setting": setting, "mode": mode,
                  "cpu": cpu, "user": user, "rps": r["requests_per_s"]}))
PY
    done
    kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

for round in $(seq "$rounds"); do
    for setting in $settings; do
        log "round $round, $setting"
        # The order of the builds alternates, so that neither always runs first.
        if [ $((round % 2)) -eq 1 ]; then
            run before "$baseline" "$round" "$setting"; run this "$socklab" "$round" "$setting"
        else
            run this "$socklab" "$round" "$setting"; run before "$baseline" "$round" "$setting"
        fi
    done
done

python3 - "$work/results.jsonl" "$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs, Linux $(uname -r)" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"Machine: {sys.argv[2]}. Server CPU per request (µs), 64 B echo; user part from perf samples.")
print()
print("| setting | build | plain CPU | plain user | TLS CPU | TLS user | TLS/plain [rounds] |")
print("|---|---|---:|---:|---:|---:|---|")
def pick(b, s, m, key):
    return {r["round"]: r[key] for r in rows if (r["build"], r["setting"], r["mode"]) == (b, s, m)}
def med(d):
    v = [x for x in d.values() if x is not None]
    return f"{statistics.median(v):.3f}" if v else "n/a"
settings = sorted({r["setting"] for r in rows})
for s in settings:
    for b in ["before", "this"]:
        p, t = pick(b, s, "plain", "cpu"), pick(b, s, "tls", "cpu")
        ratios = [t[k] / p[k] for k in sorted(t) if k in p and p[k]]
        print(f"| {s} | {b} | {med(p)} | {med(pick(b, s, 'plain', 'user'))} | {med(t)} | "
              f"{med(pick(b, s, 'tls', 'user'))} | {statistics.median(ratios):.2f}x "
              f"[{', '.join(f'{x:.2f}' for x in ratios)}] |")
print()
print("This build / before, per round [each round], median:")
print()
for s in settings:
    for m in ["plain", "tls"]:
        for key in ["cpu", "user"]:
            a, b = pick("this", s, m, key), pick("before", s, m, key)
            r = [a[k] / b[k] for k in sorted(a) if k in b and a[k] is not None and b[k]]
            if r:
                print(f"- {s} {m} {key}: {statistics.median(r):.2f} [{', '.join(f'{x:.2f}' for x in r)}]")
PY
