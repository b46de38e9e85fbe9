#!/usr/bin/env bash
# Two socklab instances behind HAProxy in TCP mode, on loopback: load through HAProxy reaches
# both, then one instance is killed (SIGKILL) and HAProxy's health check moves every new
# connection to the other, with no failed request after the switch.
#
# Usage: tools/haproxy-demo.sh        (as root if HAProxy is not installed yet)
#
# It installs HAProxy (Debian package) if it is missing, builds socklab (release), starts two
# `socklab serve` instances (echo + files on ephemeral loopback ports, each with its own data
# directory), fills in tools/haproxy-demo.cfg.tmpl and runs HAProxy in the foreground, then:
#   1. `socklab bench` through HAProxy; `socklab stats` on each instance: both accepted
#      connections;
#   2. a second bench runs while instance a is killed with SIGKILL: the requests in flight on
#      a's connections fail (shown, not asserted), and HAProxy's stats socket is polled until
#      a is DOWN;
#   3. a third bench after the switch: no errors, and only b's counters moved;
#   4. (PROXY=1) clients from 127.0.0.2 and 127.0.0.3 through HAProxy: instance b's log names
#      them as the clients, and HAProxy (127.0.0.1) only as the balancer.
# Exit status 0 when every check held. Every process it started and every file it wrote are
# removed on exit, whatever the exit. Every wait is bounded.
#
# Settings (environment): WORKERS (1, socklab serve --workers), CONNS (20), DURATION (3s, phases 1 and 3), CROSS_DURATION (6s, the
# bench across the kill), KILL_AFTER (2, seconds into it), SIGNAL (KILL; TERM shows socklab's
# own shutdown instead of a crash), INTER (500ms), FALL (2), RISE (2),
# DOWN_WAIT (10, seconds to wait for DOWN), PROXY (1: HAProxy sends the PROXY protocol v2
# header, socklab's echo expects it and logs each client's address at debug level; 0: off), SOCKLAB_BIN (skip the build, use this binary),
# HAPROXY_TEMPLATE (another configuration template with the same @NAME@ placeholders).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
WORKERS=${WORKERS:-1}
CONNS=${CONNS:-20}
DURATION=${DURATION:-3s}
CROSS_DURATION=${CROSS_DURATION:-6s}
KILL_AFTER=${KILL_AFTER:-2}
SIGNAL=${SIGNAL:-KILL}
INTER=${INTER:-500ms}
FALL=${FALL:-2}
RISE=${RISE:-2}
DOWN_WAIT=${DOWN_WAIT:-10}
PROXY=${PROXY:-1}
if [ "$PROXY" = 1 ]; then
    proxy_flags=(--proxy-protocol echo=v2 -v)
    send_proxy=send-proxy-v2
else
    proxy_flags=(-q)
    send_proxy=
fi

# ---- narration and checks -------------------------------------------------------------------

say() { printf '\n== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }
indent() { sed 's/^/     | /'; }
die() {
    printf '\nFAIL: %s\n' "$*" >&2
    exit 1
}
# expect DESCRIPTION ARITHMETIC: the arithmetic (bash `(( ))`, on variable names) must hold.
expect() {
    if (($2)); then
        printf '   ok    %s\n' "$1"
    else
        printf '   FAIL  %s  [%s]\n' "$1" "$2"
        die "$1"
    fi
}
now_ms() { date +%s%3N; }

# ---- clean-up: every process started here, then the temporary directory ----------------------

pids=()
tmp=$(mktemp -d "${TMPDIR:-/tmp}/socklab-haproxy.XXXXXX")
cleanup() {
    local rc=$? p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$tmp"
    exit "$rc"
}
# forget PID: a process already reaped is not to be signalled again.
forget() {
    local p keep=()
    for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    pids=("${keep[@]}")
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- tools: HAProxy, a way to talk to its stats socket, socklab ------------------------------

need_root() {
    [ "$(id -u)" = 0 ] || die "$1 is not installed and this is not root: apt-get install $1, then run again"
}
haproxy=$(command -v haproxy || true)
[ -z "$haproxy" ] && [ -x /usr/sbin/haproxy ] && haproxy=/usr/sbin/haproxy
if [ -z "$haproxy" ]; then
    need_root haproxy
    say "HAProxy is not installed: apt-get install haproxy"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >"$tmp/apt.log" 2>&1 ||
        { cat "$tmp/apt.log" >&2; die "apt-get install haproxy failed"; }
    haproxy=/usr/sbin/haproxy
fi
socat=$(command -v socat || true)
if [ -z "$socat" ] && ! command -v python3 >/dev/null; then
    need_root socat
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat >"$tmp/apt.log" 2>&1 ||
        { cat "$tmp/apt.log" >&2; die "apt-get install socat failed"; }
    socat=$(command -v socat)
fi
if [ -n "${SOCKLAB_BIN:-}" ]; then
    socklab=$SOCKLAB_BIN
else
    say "building socklab (cargo build --release)"
    (cd "$root" && cargo build --release)
    socklab=${CARGO_TARGET_DIR:-$root/target}/release/socklab
    case $socklab in /*) ;; *) socklab=$root/$socklab ;; esac
fi
[ -x "$socklab" ] || die "no socklab binary at $socklab"

# ---- socklab instances ------------------------------------------------------------------------

# Every service that takes an address is turned off except echo and files, so that nothing
# binds a default port (read from --help, so services added later are turned off too).
help=$("$socklab" serve --help)
off=()
while read -r flag; do
    svc=${flag#--no-}
    case $svc in echo | files) continue ;; esac
    if grep -q -- "--$svc <ADDR>" <<<"$help"; then off+=("$flag"); fi
done < <(grep -o -- '--no-[a-z-]*' <<<"$help" | sort -u)

# start_instance NAME: sets inst_pid, inst_echo, inst_files.
start_instance() {
    local name=$1 dir=$tmp/$1 pid
    mkdir -p "$dir/data"
    "$socklab" serve --workers "$WORKERS" --echo 127.0.0.1:0 --files 127.0.0.1:0 "${off[@]}" \
        --data-dir "$dir/data" "${proxy_flags[@]}" >"$dir/stdout" 2>"$dir/stderr" &
    pid=$!
    pids+=("$pid")
    for _ in $(seq 100); do
        grep -qx ready "$dir/stdout" && break
        kill -0 "$pid" 2>/dev/null || { cat "$dir/stderr" >&2; die "socklab $name exited at start-up"; }
        sleep 0.1
    done
    grep -qx ready "$dir/stdout" || die "socklab $name did not print ready within 10 s"
    inst_pid=$pid
    inst_echo=$(awk '$1 == "listening" && $2 == "echo" && $3 == "tcp" {print $4}' "$dir/stdout")
    inst_files=$(awk '$1 == "listening" && $2 == "files" && $3 == "tcp" {print $4}' "$dir/stdout")
}

# stats_json ADDR: the instance's `stats` body.
stats_json() { timeout 10 "$socklab" stats --addr "$1" --timeout 5s --json; }
# echo_counter JSON NAME: one counter of the echo service in a stats body.
echo_counter() {
    sed -n 's/.*"echo":{\([^}]*\)}.*/\1/p' <<<"$1" | tr ',' '\n' | sed -n "s/^\"$2\":\([0-9]*\)$/\1/p"
}
# num JSON KEY: a number at any depth of a flat-keyed JSON line (bench's report).
num() { sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p" <<<"$1"; }

# ---- HAProxy ------------------------------------------------------------------------------------

# A loopback port nobody listens on (checked by trying to connect).
free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 10000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    die "no free port found"
}
sock=$tmp/haproxy.sock

# hap COMMAND: one command on HAProxy's runtime API.
hap() {
    if [ -n "$socat" ]; then
        printf '%s\n' "$1" | timeout 5 "$socat" -t 2 - "UNIX-CONNECT:$sock"
    else
        timeout 5 python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
out = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    out += b
sys.stdout.write(out.decode())
' "$sock" "$1"
    fi
}
# snapshot: `show stat` of the backend, saved for field().
snapshot() { hap "show stat" >"$tmp/stat.csv"; }
# field SERVER NAME: a column of `show stat` (by its header name) for one server (without
# the "* " HAProxy puts before a check status while a check is running).
field() {
    awk -F, -v sv="$1" -v f="$2" '
        NR == 1 { sub(/^# /, ""); for (i = 1; i <= NF; i++) col[$i] = i; next }
        $1 == "socklab_echo" && $2 == sv { v = $(col[f]); sub(/^\* /, "", v); print v }' "$tmp/stat.csv"
}
# servers: HAProxy's view of both servers, one line each.
servers() {
    local s
    snapshot
    for s in a b; do
        note "$(printf 'HAProxy server %s: %-8s sessions %-4s conn errors %-3s retries %-3s redispatches %-3s check %s (%s ms), checks failed %s, times marked down %s' \
            "$s" "$(field $s status)" "$(field $s stot)" "$(field $s econ)" "$(field $s wretr)" \
            "$(field $s wredis)" "$(field $s check_status)" "$(field $s check_duration)" \
            "$(field $s chkfail)" "$(field $s chkdown)")"
    done
}

# bench_run NAME DURATION: `socklab bench --json` through HAProxy; sets NAME_json, NAME_rc.
bench_args() { echo --addr "$front" --conns "$CONNS" --mode raw --size 64 --warmup 500ms --timeout 5s --json --duration "$1"; }
report_bench() {
    local j=$1
    note "$(printf 'bench: %s requests (%.0f req/s), latency p50 %s us  p99 %s us  max %s us' \
        "$(num "$j" requests)" "$(num "$j" requests_per_s)" "$(num "$j" p50)" "$(num "$j" p99)" "$(num "$j" max)")"
    note "       errors $(num "$j" errors) ($(num "$j" connection_errors) connection errors, $(num "$j" error_replies) error replies), $(num "$j" reconnects) reconnects"
}

# ================================================================================================

say "Setting up: two socklab instances and HAProxy (mode tcp) on loopback"
note "$("$haproxy" -v 2>&1 | sed -n 1p)"
note "runtime API through: ${socat:-python3 (socat is not installed)}"
start_instance a
a_pid=$inst_pid a_echo=$inst_echo a_files=$inst_files
start_instance b
b_pid=$inst_pid b_echo=$inst_echo b_files=$inst_files
note "each instance: socklab serve --workers $WORKERS, echo and files on ephemeral loopback ports"
note "instance a: pid $a_pid, echo $a_echo, files $a_files, data $tmp/a/data"
note "instance b: pid $b_pid, echo $b_echo, files $b_files, data $tmp/b/data"

front=127.0.0.1:$(free_port)
sed -e "s|@STATS_SOCK@|$sock|" -e "s|@FRONTEND@|$front|" \
    -e "s|@A_ECHO@|$a_echo|" -e "s|@A_FILES_PORT@|${a_files##*:}|" \
    -e "s|@B_ECHO@|$b_echo|" -e "s|@B_FILES_PORT@|${b_files##*:}|" \
    -e "s|@INTER@|$INTER|" -e "s|@FALL@|$FALL|" -e "s|@RISE@|$RISE|" \
    -e "s|@SEND_PROXY@|$send_proxy|" \
    "${HAPROXY_TEMPLATE:-$root/tools/haproxy-demo.cfg.tmpl}" >"$tmp/haproxy.cfg"
"$haproxy" -c -q -f "$tmp/haproxy.cfg" || die "HAProxy refused the configuration $tmp/haproxy.cfg"
"$haproxy" -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.log" 2>&1 &
hap_pid=$!
pids+=("$hap_pid")
note "HAProxy: pid $hap_pid, frontend $front -> backend socklab_echo (roundrobin, retries 3, redispatch)"
note "health check: a files ping frame to each instance's files port, every $INTER, DOWN after $FALL failures, UP after $RISE"
note "the backend in $tmp/haproxy.cfg:"
sed -n '/^backend/,$p' "$tmp/haproxy.cfg" | grep -v '^ *#' | indent

# Both servers UP with a passed check (bounded).
t0=$(now_ms)
while :; do
    kill -0 "$hap_pid" 2>/dev/null || { cat "$tmp/haproxy.log" >&2; die "HAProxy exited"; }
    if [ -S "$sock" ] && snapshot 2>/dev/null &&
        [ "$(field a status)" = UP ] && [ "$(field b status)" = UP ] &&
        [ "$(field a check_status)" = L7OK ] && [ "$(field b check_status)" = L7OK ]; then
        break
    fi
    (($(now_ms) - t0 < 10000)) || { cat "$tmp/haproxy.log" >&2; die "both servers not UP within 10 s"; }
    sleep 0.1
done
note "both servers UP after $(($(now_ms) - t0)) ms"
servers

# ---- phase 1 ------------------------------------------------------------------------------------

say "Phase 1: socklab bench through HAProxy ($CONNS connections, $DURATION, 64-byte echo)"
rc=0
# shellcheck disable=SC2046 # bench_args is a word list on purpose
p1_json=$(timeout 60 "$socklab" bench $(bench_args "$DURATION") 2>"$tmp/bench1.err") || rc=$?
report_bench "$p1_json"
p1_errors=$(num "$p1_json" errors)
expect "bench exited 0 with no errors" "rc == 0 && ${p1_errors:-1} == 0"
note "socklab stats on each instance:"
note "instance a: socklab stats --addr $a_files"
timeout 10 "$socklab" stats --addr "$a_files" --timeout 5s | indent
note "instance b: socklab stats --addr $b_files"
timeout 10 "$socklab" stats --addr "$b_files" --timeout 5s | indent
a_json=$(stats_json "$a_files")
b_json=$(stats_json "$b_files")
a_acc1=$(echo_counter "$a_json" connections_accepted)
b_acc1=$(echo_counter "$b_json" connections_accepted)
servers
expect "instance a accepted echo connections ($a_acc1)" "a_acc1 > 0"
expect "instance b accepted echo connections ($b_acc1)" "b_acc1 > 0"
expect "together they accepted exactly the $CONNS bench connections" "a_acc1 + b_acc1 == CONNS"

# ---- phase 2 ------------------------------------------------------------------------------------

say "Phase 2: kill -$SIGNAL instance a while a bench runs through HAProxy ($CONNS connections, $CROSS_DURATION)"
snapshot
a_econ0=$(field a econ) a_wretr0=$(field a wretr) a_wredis0=$(field a wredis)
# shellcheck disable=SC2046
timeout 60 "$socklab" bench $(bench_args "$CROSS_DURATION") >"$tmp/bench2.json" 2>"$tmp/bench2.err" &
bench_pid=$!
pids+=("$bench_pid")
sleep "$KILL_AFTER"
# (Reaped with bash's "Killed" notice silenced: the narration says it. With TERM socklab
# exits by itself within its --shutdown-grace, 5 s by default.)
{
    kill -s "$SIGNAL" "$a_pid"
    t_kill=$(now_ms)
    a_rc=0
    timeout 10 tail --pid="$a_pid" -f /dev/null || true
    wait "$a_pid" || a_rc=$?
} 2>/dev/null
forget "$a_pid"
note "t=0 ms: instance a (pid $a_pid) sent SIG$SIGNAL; it exited with status $a_rc after $(($(now_ms) - t_kill)) ms"
last=UP
t_down=
while (($(now_ms) - t_kill < DOWN_WAIT * 1000)); do
    snapshot
    st=$(field a status)
    if [ "$st" != "$last" ]; then
        note "t=$(($(now_ms) - t_kill)) ms: HAProxy says server a is $st (last check: $(field a check_status))"
        last=$st
    fi
    if [ "$st" = DOWN ]; then
        t_down=$(($(now_ms) - t_kill))
        break
    fi
    sleep 0.05
done
[ -n "$t_down" ] || die "HAProxy did not mark a DOWN within $DOWN_WAIT s"
expect "HAProxy marked a DOWN ($t_down ms after the kill; checks every $INTER, fall $FALL)" "t_down < DOWN_WAIT * 1000"
# The bench ends by itself (warm-up + duration, and its --timeout bounds any stall); timeout 60
# above bounds it in every case.
rc=0
wait "$bench_pid" || rc=$?
forget "$bench_pid"
p2_json=$(cat "$tmp/bench2.json")
note "what the clients saw across the kill (bench exit status $rc; it exits 1 whenever a connection fails):"
if [ -n "$p2_json" ]; then
    report_bench "$p2_json"
else
    note "bench stopped early: $(cat "$tmp/bench2.err")"
fi
sed 's/^/       stderr: /' "$tmp/bench2.err"
snapshot
note "HAProxy, for connections it sent to a after the kill: $(($(field a econ) - a_econ0)) connection errors, $(($(field a wretr) - a_wretr0)) retries on a, $(($(field a wredis) - a_wredis0)) redispatched to b"
note "HAProxy's own log of the switch:"
grep -E 'Server socklab_echo/' "$tmp/haproxy.log" | sed 's/^\[[A-Z]*\] *([0-9]*) : //' | indent || true
note "instance a's files port now:"
timeout 10 "$socklab" stats --addr "$a_files" --timeout 5s 2>&1 | indent || true

# ---- phase 3 ------------------------------------------------------------------------------------

say "Phase 3: after the switch, a new bench through HAProxy ($CONNS connections, $DURATION)"
snapshot
a_stot0=$(field a stot) b_stot0=$(field b stot)
b_acc2=$(echo_counter "$(stats_json "$b_files")" connections_accepted)
rc=0
# shellcheck disable=SC2046
p3_json=$(timeout 60 "$socklab" bench $(bench_args "$DURATION") 2>"$tmp/bench3.err") || rc=$?
report_bench "$p3_json"
[ -s "$tmp/bench3.err" ] && sed 's/^/       stderr: /' "$tmp/bench3.err"
p3_errors=$(num "$p3_json" errors)
b_acc3=$(echo_counter "$(stats_json "$b_files")" connections_accepted)
snapshot
a_new=$(($(field a stot) - a_stot0))
b_new=$(($(field b stot) - b_stot0))
b_acc_new=$((b_acc3 - b_acc2))
note "instance b's socklab stats now:"
timeout 10 "$socklab" stats --addr "$b_files" --timeout 5s | indent
servers
expect "no failed request after the switch (bench exit $rc, errors ${p3_errors:-none})" "rc == 0 && ${p3_errors:-1} == 0"
expect "HAProxy sent no new session to a ($a_new)" "a_new == 0"
expect "instance b accepted the $CONNS new connections ($b_acc_new)" "b_acc_new == CONNS"
expect "HAProxy's count of b's new sessions matches b's own ($b_new)" "b_new == b_acc_new"

# ---- phase 4 ------------------------------------------------------------------------------------

if [ "$PROXY" = 1 ]; then
    say "Phase 4: the clients' own addresses, through HAProxy's send-proxy-v2"
    seen() { grep -c "PROXY protocol header" "$tmp/b/stderr" || true; }
    before=$(seen)
    for from in 127.0.0.2 127.0.0.3; do
        timeout 10 python3 -c '
import socket, sys
s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=5, source_address=(sys.argv[1], 0))
s.sendall(b"hello")
assert s.recv(5) == b"hello"
' "$from" "${front%:*}" "${front##*:}" || die "an echo through HAProxy from $from failed"
    done
    t0=$(now_ms)
    while (($(seen) < before + 2)) && (($(now_ms) - t0 < 5000)); do sleep 0.05; done
    note "instance b's log, the last two connections:"
    grep "PROXY protocol header" "$tmp/b/stderr" | tail -n 2 | indent
    got=$(grep "PROXY protocol header" "$tmp/b/stderr" | tail -n 2 | grep -c 'client=Some(127.0.0.[23])' || true)
    expect "socklab saw the clients 127.0.0.2 and 127.0.0.3, not HAProxy's 127.0.0.1 ($got of 2)" "got == 2"
fi

say "All checks passed."
