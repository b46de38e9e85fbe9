#!/usr/bin/env bash
# TLS against plaintext and against the anchors, side by side in one run (issue 26), with
# `socklab bench` as the load generator for all, and a markdown report for BENCHMARKS.md.
#
#   servers   socklab echo, plain and TLS (two listeners of one server); tokio-echo and
#             tokio-tls-echo (tools/: accept-spawn-read-write_all, tokio-rustls, the same rustls
#             0.23 and ring provider as socklab); redis-server with --tls-port (inline PING,
#             line mode), when Debian's redis-server is installed; and the floor,
#             tools/tls-floor (floor-echo's bare loop, plain and with only what TLS 1.3 must do
#             per record: ring's AES-GCM open and seal), so that what socklab's TLS adds is seen
#             beside the least any TLS server adds on this machine
#   requests  server CPU per request (utime+stime over the window: `bench --server-pid`) at
#             1x1, 50x16 and 1000x1 connections x depth, 64 B raw requests (PING for redis),
#             closed loop; at 50x16 and 1000x1 also open loop at one offered load for socklab
#             and tokio, plain and TLS (--rate: 80 % of the slower TLS server's closed-loop
#             rate in the round), so that TLS/plain is also seen at one pace
#   handshakes  --new-conn-per-request over TLS (a full handshake, no resumption, per request)
#             with an ECDSA P-256 certificate (socklab cert) and an RSA-2048 one (openssl):
#             server CPU per handshake and the connect-to-first-reply latency
#   memory    server RSS per idle connection over N connections (default 5,000), held by
#             Python's ssl module after the handshake and one echo, on servers that have
#             served nothing before
#   pinning   servers on CPU 0, the load generator on CPU 1 (taskset), when there are 2+ CPUs
#   rounds    the median of --rounds (3) windows of --duration (5s) after --warmup (1s)
#
# Usage: tools/tls-bench.sh [--quick] [--rounds N] [--duration D] [--conns-idle N]
#                           [--write FILE]
# --write puts the report between `<!-- tls-bench: begin -->` and `<!-- tls-bench: end -->`
# of FILE (appended when they are not there). Everything it starts is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

rounds=3 duration=5s warmup=1s idle=5000 write=""
cmdline="tools/tls-bench.sh${*:+ $*}"
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) rounds=1 duration=2s warmup=500ms idle=1000 ;;
    --rounds) rounds=$2; shift ;;
    --duration) duration=$2; shift ;;
    --conns-idle) idle=$2; shift ;;
    --write) write=$2; shift ;;
    -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "tls-bench: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
log() { echo "tls-bench: $*" >&2; }

log "building socklab, tools/tokio-echo, tools/tokio-tls-echo and tools/tls-floor (release)"
cargo build --release --quiet
cargo build --release --quiet --manifest-path tools/tokio-echo/Cargo.toml
cargo build --release --quiet --manifest-path tools/tokio-tls-echo/Cargo.toml
cargo build --release --quiet --manifest-path tools/tls-floor/Cargo.toml
socklab=$root/target/release/socklab
tokio_echo=$root/tools/tokio-echo/target/release/tokio-echo
tokio_tls=$root/tools/tokio-tls-echo/target/release/tokio-tls-echo
tls_floor=$root/tools/tls-floor/target/release/tls-floor
ulimit -n "$(ulimit -Hn)"
if [ "$(nproc)" -ge 2 ]; then
    pin_server=(taskset -c 0) pin_bench=(taskset -c 1) pinning="servers on CPU 0, load generator on CPU 1"
else
    pin_server=() pin_bench=() pinning="not pinned (one CPU)"
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
wait_for_line() {
    for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    log "timed out waiting for '$2' in $1:"; cat "$1" >&2; exit 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- certificates: ECDSA P-256 (socklab cert) and RSA-2048 (openssl) -------------------------
"$socklab" cert --out "$work/ec" >/dev/null
# webpki takes no self-signed end entity: an RSA CA signs the RSA server certificate.
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=tls-bench RSA CA" \
    -keyout "$work/rsa-ca.key" -out "$work/rsa-ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=localhost \
    -keyout "$work/rsa.key" -out "$work/rsa.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$work/rsa.ext"
openssl x509 -req -in "$work/rsa.csr" -CA "$work/rsa-ca.pem" -CAkey "$work/rsa-ca.key" \
    -CAcreateserial -days 30 -extfile "$work/rsa.ext" -out "$work/rsa.pem" 2>/dev/null

# --- servers ----------------------------------------------------------------------------------
cat >"$work/socklab.toml" <<TOML
[[listener]]
service = "echo"
addr = "127.0.0.1:0"

[[listener]]
service = "echo"
addr = "127.0.0.1:0"
[listener.tls]
cert = "$work/ec/server.pem"
key = "$work/ec/server.key"

[[listener]]
service = "upper"
addr = "127.0.0.1:0"
[listener.tls]
cert = "$work/rsa.pem"
key = "$work/rsa.key"
TOML
"${pin_server[@]}" "$socklab" serve --config "$work/socklab.toml" --max-conns 20000 \
    --max-conns-per-ip 0 -q >"$work/socklab.out" 2>"$work/socklab.err" &
socklab_pid=$!; pids+=("$socklab_pid")
wait_for_line "$work/socklab.out" '^ready'
socklab_plain=$(awk '$2 == "echo" && !/tls=on/ {print $4; exit}' "$work/socklab.out")
socklab_tls=$(awk '$2 == "echo" && /tls=on/ {print $4; exit}' "$work/socklab.out")
socklab_rsa=$(awk '$2 == "upper" && /tls=on/ {print $4; exit}' "$work/socklab.out")

"${pin_server[@]}" "$tokio_echo" 127.0.0.1:0 >"$work/tokio.out" 2>&1 &
tokio_pid=$!; pids+=("$tokio_pid")
wait_for_line "$work/tokio.out" '^listening'
tokio_plain=$(awk '{print $2; exit}' "$work/tokio.out")
"${pin_server[@]}" "$tokio_tls" 127.0.0.1:0 "$work/ec/server.pem" "$work/ec/server.key" >"$work/ttls.out" 2>&1 &
ttls_pid=$!; pids+=("$ttls_pid")
wait_for_line "$work/ttls.out" '^listening'
tokio_tls_addr=$(awk '{print $2; exit}' "$work/ttls.out")
"${pin_server[@]}" "$tokio_tls" 127.0.0.1:0 "$work/rsa.pem" "$work/rsa.key" >"$work/trsa.out" 2>&1 &
trsa_pid=$!; pids+=("$trsa_pid")
wait_for_line "$work/trsa.out" '^listening'
tokio_rsa_addr=$(awk '{print $2; exit}' "$work/trsa.out")

"${pin_server[@]}" "$tls_floor" 127.0.0.1:0 127.0.0.1:0 "$work/ec/server.pem" "$work/ec/server.key" \
    >"$work/floor.out" 2>"$work/floor.err" &
floor_pid=$!; pids+=("$floor_pid")
wait_for_line "$work/floor.out" '^listening tls'
floor_plain=$(awk '$2 == "plain" {print $3; exit}' "$work/floor.out")
floor_tls=$(awk '$2 == "tls" {print $3; exit}' "$work/floor.out")

redis_version="(not installed)"
if command -v redis-server >/dev/null; then
    redis_port=$(free_port)
    "${pin_server[@]}" redis-server --port 0 --tls-port "$redis_port" --bind 127.0.0.1 \
        --tls-cert-file "$work/ec/server.pem" --tls-key-file "$work/ec/server.key" \
        --tls-ca-cert-file "$work/ec/ca.pem" --tls-auth-clients no --save '' \
        --appendonly no --daemonize no --maxclients 20000 >"$work/redis.out" 2>&1 &
    redis_pid=$!; pids+=("$redis_pid")
    wait_for_line "$work/redis.out" 'Ready to accept connections'
    redis_addr=127.0.0.1:$redis_port
    redis_version=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
fi

# Memory per idle TLS connection: RSS before and after N connections that did a handshake and
# one echo, held open by one Python process.
idle_rss() {
    local pid=$1 addr=$2 ca=$3 line=${4:-hello}
    python3 - "$pid" "$addr" "$ca" "$idle" "$line" <<'PY'
import resource, socket, ssl, sys, time
pid, addr, ca, n, line = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
host, port = addr.rsplit(':', 1)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
def rss():
    for l in open('/proc/%d/status' % pid):
        if l.startswith('VmRSS:'):
            return int(l.split()[1]) * 1024
before = rss()
ctx = ssl.create_default_context(cafile=ca) if ca != '-' else None
held = []
for _ in range(n):
    s = socket.create_connection((host, int(port)))
    if ctx:
        s = ctx.wrap_socket(s, server_hostname='localhost')
    s.sendall(line.encode() + b'\r\n')
    s.recv(100)
    held.append(s)
time.sleep(0.5)
after = rss()
print((after - before) / n)
PY
}
# Each on a process that has served nothing yet (memory freed by earlier runs would be reused
# without growing the RSS): socklab twice more, the anchors before their runs.
fresh_socklab() {
    "${pin_server[@]}" "$socklab" serve --config "$work/socklab.toml" --max-conns 20000 \
        --max-conns-per-ip 0 -q >"$work/fresh$1.out" 2>&1 &
    fresh_pid=$!; pids+=("$fresh_pid")
    wait_for_line "$work/fresh$1.out" '^ready'
}
log "idle connections ($idle each)"
fresh_socklab 1
mem_socklab_plain=$(idle_rss "$fresh_pid" "$(awk '$2 == "echo" && !/tls=on/ {print $4; exit}' "$work/fresh1.out")" -)
kill "$fresh_pid"
fresh_socklab 2
mem_socklab_tls=$(idle_rss "$fresh_pid" "$(awk '$2 == "echo" && /tls=on/ {print $4; exit}' "$work/fresh2.out")" "$work/ec/ca.pem")
kill "$fresh_pid"
mem_tokio_tls=$(idle_rss "$ttls_pid" "$tokio_tls_addr" "$work/ec/ca.pem")
mem_redis_tls="n/a"
[ -n "${redis_pid:-}" ] && mem_redis_tls=$(idle_rss "$redis_pid" "$redis_addr" "$work/ec/ca.pem" PING)


# --- measurements ------------------------------------------------------------------------------
# measure NAME PID ARGS...: one bench run, one JSON line appended to results.
measure() {
    local name=$1 pid=$2; shift 2
    "${pin_bench[@]}" "$socklab" bench --json --warmup "$warmup" --duration "$duration" \
        --server-pid "$pid" "$@" 2>>"$work/bench.err" |
        python3 -c 'import json,sys; r=json.load(sys.stdin); r["name"]=sys.argv[1]; print(json.dumps(r))' "$name" \
        >>"$work/results.jsonl" || log "run failed: $name $*"
}
# equal_rate SETTING: 80 % of what the slower of the two TLS servers answered closed loop in
# this round, a load all four servers and the generator should keep up with (the report says
# what each answered).
equal_rate() {
    python3 - "$work/results.jsonl" "$1" <<'PY'
import json, sys
last = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    last[r["name"]] = r.get("requests_per_s") or 0
s = sys.argv[2]
print(int(0.8 * min(last.get(f"socklab tls {s}", 0), last.get(f"tokio-rustls {s}", 0))) or 1000)
PY
}
ec=(--tls --ca "$work/ec/ca.pem")
rsa=(--tls --ca "$work/rsa-ca.pem")
for round in $(seq "$rounds"); do
    for s in 1x1 50x16 1000x1; do
        c=${s%x*} d=${s#*x}
        log "round $round, $s"
        measure "socklab plain $s" "$socklab_pid" --addr "$socklab_plain" --conns "$c" --depth "$d"
        measure "socklab tls $s" "$socklab_pid" --addr "$socklab_tls" --conns "$c" --depth "$d" "${ec[@]}"
        measure "tokio plain $s" "$tokio_pid" --addr "$tokio_plain" --conns "$c" --depth "$d"
        measure "tokio-rustls $s" "$ttls_pid" --addr "$tokio_tls_addr" --conns "$c" --depth "$d" "${ec[@]}"
        measure "floor plain $s" "$floor_pid" --addr "$floor_plain" --conns "$c" --depth "$d"
        measure "floor tls $s" "$floor_pid" --addr "$floor_tls" --conns "$c" --depth "$d" "${ec[@]}"
        if [ -n "${redis_pid:-}" ]; then
            measure "redis tls $s" "$redis_pid" --addr "$redis_addr" --mode line --line PING \
                --conns "$c" --depth "$d" "${ec[@]}"
        fi
        [ "$s" = 1x1 ] && continue
        # The same four servers offered one load (open loop), so that plaintext and TLS are
        # compared at one pace, not each at the pace its own closed loop settles at: the
        # generator does TLS too, so at 1000x1 it feeds a TLS server more slowly, which then
        # sleeps in epoll_wait more often per request (not at 50x16); and the machine's pace
        # drifts (BENCHMARKS.md, TLS, eighteenth and nineteenth sessions).
        r=$(equal_rate "$s")
        log "round $round, $s at $r requests/s"
        measure "socklab plain $s equal" "$socklab_pid" --addr "$socklab_plain" --conns "$c" --depth "$d" --rate "$r"
        measure "socklab tls $s equal" "$socklab_pid" --addr "$socklab_tls" --conns "$c" --depth "$d" --rate "$r" "${ec[@]}"
        measure "tokio plain $s equal" "$tokio_pid" --addr "$tokio_plain" --conns "$c" --depth "$d" --rate "$r"
        measure "tokio-rustls $s equal" "$ttls_pid" --addr "$tokio_tls_addr" --conns "$c" --depth "$d" --rate "$r" "${ec[@]}"
    done
    log "round $round, handshakes"
    measure "socklab handshake ecdsa" "$socklab_pid" --addr "$socklab_tls" --conns 4 --new-conn-per-request "${ec[@]}"
    measure "tokio-rustls handshake ecdsa" "$ttls_pid" --addr "$tokio_tls_addr" --conns 4 --new-conn-per-request "${ec[@]}"
    measure "socklab handshake rsa" "$socklab_pid" --addr "$socklab_rsa" --conns 4 --new-conn-per-request "${rsa[@]}"
    measure "tokio-rustls handshake rsa" "$trsa_pid" --addr "$tokio_rsa_addr" --conns 4 --new-conn-per-request "${rsa[@]}"
    if [ -n "${redis_pid:-}" ]; then
        measure "redis handshake ecdsa" "$redis_pid" --addr "$redis_addr" --mode line --line PING \
            --conns 4 --new-conn-per-request "${ec[@]}"
    fi
done

# --- report ------------------------------------------------------------------------------------
# The floor closes a connection only on what it cannot serve (a short send, a record that does
# not open): its counts, printed as it stops, belong in the report.
kill "$floor_pid"; wait "$floor_pid" 2>/dev/null || true
floor_counts=$(sed -n 's/^tls-floor: //p' "$work/floor.err")
machine="$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r)"
report=$(python3 - "$work/results.jsonl" "$machine" "$cmdline" "$pinning" "$redis_version" \
    "$mem_socklab_plain" "$mem_socklab_tls" "$mem_tokio_tls" "$mem_redis_tls" "$idle" \
    "$floor_counts" <<'PY'
import json, statistics, sys
path, machine, cmd, pinning, redis_v = sys.argv[1:6]
mem = dict(zip(["socklab plain", "socklab tls", "tokio-rustls", "redis tls"], sys.argv[6:10]))
idle = sys.argv[10]
floor_counts = sys.argv[11] or "no counts printed"
runs = {}
for line in open(path):
    r = json.loads(line)
    runs.setdefault(r["name"], []).append(r)
def med(name, key):
    v = [r[key] for r in runs.get(name, []) if r.get(key) is not None]
    return statistics.median(v) if v else None
def cpu(name):
    return med(name, "server_cpu_per_request_us")
def f(x, d=3):
    return "n/a" if x is None else f"{x:.{d}f}"
def ratio(a, b):
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"
out = [f"Machine: {machine}; {pinning}; redis {redis_v}.", f"Command: `{cmd}`", ""]
out.append("Server CPU per request (µs, median of rounds; 64 B raw echo, PING for redis):")
out.append("")
out.append("| setting | socklab plain | socklab TLS | TLS/plain | tokio plain | tokio-rustls | tokio-rustls TLS/plain | socklab TLS / tokio-rustls | redis TLS | socklab TLS / redis TLS |")
out.append("|---|---|---|---|---|---|---|---|---|---|")
for s in ["1x1", "50x16", "1000x1"]:
    sp, st = cpu(f"socklab plain {s}"), cpu(f"socklab tls {s}")
    tp, tt = cpu(f"tokio plain {s}"), cpu(f"tokio-rustls {s}")
    rt = cpu(f"redis tls {s}")
    out.append(f"| {s} | {f(sp)} | {f(st)} | {ratio(st, sp)} | {f(tp)} | {f(tt)} | {ratio(tt, tp)} | {ratio(st, tt)} | {f(rt)} | {ratio(st, rt)} |")
out.append("")
out.append("What TLS adds to the server's CPU per request (µs, TLS minus plaintext, medians), split into user time (the server's own work: records, cipher) and system time (the kernel's: the same recv and send per batch, plus the wake-ups of a server its generator feeds more slowly), and TLS/plain per round (rounds alternate the servers, so each round's ratio is measured at one pace of the machine):")
out.append("")
out.append("| setting | socklab user | socklab system | tokio-rustls user | tokio-rustls system | socklab / tokio-rustls, user | socklab TLS/plain per round | tokio-rustls TLS/plain per round |")
out.append("|---|---|---|---|---|---|---|---|")
def delta(a, b, key):
    x, y = med(a, key), med(b, key)
    return None if x is None or y is None else x - y
def per_round(tls, plain):
    t = [r["server_cpu_per_request_us"] for r in runs.get(tls, [])]
    p = [r["server_cpu_per_request_us"] for r in runs.get(plain, [])]
    return ", ".join(f"{a / b:.2f}" for a, b in zip(t, p) if b) or "n/a"
for s in ["1x1", "50x16", "1000x1"]:
    su = delta(f"socklab tls {s}", f"socklab plain {s}", "server_user_cpu_per_request_us")
    ss = delta(f"socklab tls {s}", f"socklab plain {s}", "server_sys_cpu_per_request_us")
    tu = delta(f"tokio-rustls {s}", f"tokio plain {s}", "server_user_cpu_per_request_us")
    ts = delta(f"tokio-rustls {s}", f"tokio plain {s}", "server_sys_cpu_per_request_us")
    out.append(f"| {s} | {f(su)} | {f(ss)} | {f(tu)} | {f(ts)} | {ratio(su, tu)} | {per_round(f'socklab tls {s}', f'socklab plain {s}')} | {per_round(f'tokio-rustls {s}', f'tokio plain {s}')} |")
out.append("")
out.append("Against the floor (tools/tls-floor: a bare edge-triggered loop that does only what TLS 1.3 must per record, ring's AES-GCM open and seal, beside the same loop in plain text; one process, two listeners). What TLS adds (TLS minus plaintext, medians, µs) for each, and socklab's addition beyond the floor's:")
out.append("")
out.append("| setting | floor plain | floor TLS | floor TLS/plain | per round | TLS adds, total: socklab, floor | TLS adds, user: socklab, floor | socklab's user beyond the floor's | floor's addition / socklab plain |")
out.append("|---|---|---|---|---|---|---|---|---|")
for s in ["1x1", "50x16", "1000x1"]:
    fp, ft, sp = cpu(f"floor plain {s}"), cpu(f"floor tls {s}"), cpu(f"socklab plain {s}")
    st_ = delta(f"socklab tls {s}", f"socklab plain {s}", "server_cpu_per_request_us")
    ftot = delta(f"floor tls {s}", f"floor plain {s}", "server_cpu_per_request_us")
    su = delta(f"socklab tls {s}", f"socklab plain {s}", "server_user_cpu_per_request_us")
    fu = delta(f"floor tls {s}", f"floor plain {s}", "server_user_cpu_per_request_us")
    beyond = None if su is None or fu is None else su - fu
    share = "n/a" if fu is None or ftot is None or not sp else f"{fu / sp:.3f} user, {ftot / sp:.3f} total"
    out.append(f"| {s} | {f(fp)} | {f(ft)} | {ratio(ft, fp)} | {per_round(f'floor tls {s}', f'floor plain {s}')} | {f(st_)}, {f(ftot)} | {f(su)}, {f(fu)} | {f(beyond)} | {share} |")
out.append("")
out.append(f"The floor's closings: {floor_counts}.")
out.append("")
out.append("At one offered load (open loop, `--rate R`: 80 % of the slower TLS server's closed-loop rate in the same round), server CPU per request (µs, medians), and what each server answered as a share of R (medians; below 1.00 a server, or the generator, did not keep up):")
out.append("")
out.append("| setting | R (median) | socklab plain | socklab TLS | TLS/plain | per round | tokio plain | tokio-rustls | tokio-rustls TLS/plain | per round | socklab TLS / tokio-rustls | answered / R: socklab plain, TLS, tokio plain, tokio-rustls |")
out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
for s in ["50x16", "1000x1"]:
    names = [f"{n} {s} equal" for n in ["socklab plain", "socklab tls", "tokio plain", "tokio-rustls"]]
    if not all(n in runs for n in names):
        continue
    sp, st, tp, tt = (cpu(n) for n in names)
    offered = [r.get("rate") or r.get("offered_per_s") for r in runs[names[0]]]
    rs = [x for x in offered if x]
    rmed = statistics.median(rs) if rs else None
    kept = ", ".join(f(med(n, "requests_per_s") / rmed, 2) if rmed else "n/a" for n in names)
    out.append(f"| {s} | {f(rmed, 0)} | {f(sp)} | {f(st)} | {ratio(st, sp)} | {per_round(names[1], names[0])} | {f(tp)} | {f(tt)} | {ratio(tt, tp)} | {per_round(names[3], names[2])} | {ratio(st, tt)} | {kept} |")
out.append("")
out.append("Requests/s and load generator CPU (%, one thread; above ~90 % the generator, doing TLS itself, bounds the cell):")
out.append("")
out.append("| setting | socklab plain | socklab TLS | tokio plain | tokio-rustls | redis TLS |")
out.append("|---|---|---|---|---|---|")
for s in ["1x1", "50x16", "1000x1"]:
    cells = []
    for n in ["socklab plain", "socklab tls", "tokio plain", "tokio-rustls", "redis tls"]:
        rps, c = med(f"{n} {s}", "requests_per_s"), med(f"{n} {s}", "cpu_percent")
        cells.append("n/a" if rps is None else f"{rps:,.0f} ({c:.0f} %)")
    out.append(f"| {s} | " + " | ".join(cells) + " |")
out.append("")
out.append("Full handshakes (`--new-conn-per-request`, 4 connections; TLS 1.3, X25519, no resumption): server CPU per handshake+request and connect-to-first-reply latency:")
out.append("")
out.append("| server | certificate | handshakes/s | server CPU / handshake (µs) | p50 (µs) | p99 (µs) |")
out.append("|---|---|---|---|---|---|")
for n, c in [("socklab", "ecdsa"), ("tokio-rustls", "ecdsa"), ("redis", "ecdsa"), ("socklab", "rsa"), ("tokio-rustls", "rsa")]:
    name = f"{n} handshake {c}"
    if name not in runs:
        continue
    cps = med(name, "connects_per_s")
    c_us = cpu(name)
    lat = [r["latency_us"] for r in runs[name]]
    p50 = statistics.median(l["p50"] for l in lat)
    p99 = statistics.median(l["p99"] for l in lat)
    out.append(f"| {n} | {'ECDSA P-256' if c == 'ecdsa' else 'RSA-2048'} | {f(cps, 0)} | {f(c_us, 1)} | {p50:.0f} | {p99:.0f} |")
out.append("")
out.append("socklab / tokio-rustls, server CPU per handshake, per round (the two measured back to back in each round): "
           + "; ".join(f"{c.upper()} {per_round(f'socklab handshake {c}', f'tokio-rustls handshake {c}')}" for c in ["ecdsa", "rsa"]) + ".")
out.append("")
out.append(f"Resident memory per idle connection ({idle} connections after a handshake and one echo):")
out.append("")
out.append("| socklab plain | socklab TLS | tokio-rustls | redis TLS |")
out.append("|---|---|---|---|")
out.append("| " + " | ".join("n/a" if v == "n/a" else f"{float(v):,.0f} B" for v in mem.values()) + " |")
print("\n".join(out))
PY
)
echo "$report"
if [ -n "$write" ]; then
    python3 - "$write" "$report" <<'PY'
import sys
path, report = sys.argv[1], sys.argv[2]
begin, end = "<!-- tls-bench: begin -->", "<!-- tls-bench: end -->"
text = open(path).read() if __import__("os").path.exists(path) else ""
block = f"{begin}\n{report}\n{end}"
if begin in text and end in text:
    text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
open(path, "w").write(text)
PY
fi
