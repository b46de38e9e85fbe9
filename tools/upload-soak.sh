#!/usr/bin/env bash
# Upload soak (issue 24: a fast upload was sometimes never answered after disk backpressure):
# many uploads of SIZE files to one `socklab serve` (files on TCP and on a unix socket), and for
# every one whether it was answered, whether what was stored is right, and how long it took.
# For each --workers value a fresh server on loopback, and three phases:
#   seq      COUNT fast `socklab put --no-verify` one after another over TCP (the issue's case)
#   mixed    COUNT uploads, PARALLEL at a time: fast `socklab put` alternated with slow senders
#            (tools/slow_put.py: the framing spoken by hand, the body at --slow-rate), TCP and unix
#   put+get  COUNT fast puts, PARALLEL at a time, each beside a `socklab get -o /dev/null` of the
#            same name (a stored file read while it is being replaced), TCP and unix
# Each put's answer carries the md5 the server stored; it must be the local file's. After each
# phase `socklab stat` of every stored name must give the local file's size and md5 too.
# Every wait is bounded: the clients' --timeout, a hard limit per client process, the server's
# start and stop.
#
# Usage: tools/upload-soak.sh [--size-mib N] [--count N] [--workers LIST] [--parallel N]
#                             [--slow-rate RATE] [--timeout SECS] [--bin PATH] [--server-arg ARG]...
#   --size-mib    size of each file in MiB (default 1024)
#   --count       uploads per phase (default 20)
#   --workers     the `serve --workers` values to run, one server each (default "1 2")
#   --parallel    uploads at once in the mixed and put+get phases (default 3)
#   --slow-rate   body bytes per second of a slow sender: 67108864, 64MiB, 512KiB (default 64MiB)
#   --timeout     seconds a client waits for the server to take bytes or to answer (default 60)
#   --bin         the socklab binary (default: cargo build --release, ./target/release/socklab)
#   --server-arg  one more argument for `socklab serve` (repeatable), for example
#                 --server-arg=--upload-in-flight=64KiB to make uploads pause often
# Prints the machine, a table per phase with a summary, and a last line
#   summary: uploads answered N/N in A–B s (median M s); gets answered …; stored md5 K/K; PASS
# Needs python3. Exits 1 if any upload or get was unanswered or wrong (or the server died), 2 on
# bad usage.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "upload-soak: $*" >&2; sed -n '17,27p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
mib=1024 count=20 workers_list="1 2" parallel=3 slow_rate=64MiB timeout=60 bin=""
server_args=()
while [ $# -gt 0 ]; do
    case "$1" in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;; # --opt=value is --opt value
    esac
    case "$1" in
    --size-mib | --count | --workers | --parallel | --slow-rate | --timeout | --bin | --server-arg)
        [ $# -ge 2 ] || usage "$1 needs a value" ;;
    esac
    case "$1" in
    --size-mib) mib=$2; shift ;;
    --count) count=$2; shift ;;
    --workers) workers_list=$2; shift ;;
    --parallel) parallel=$2; shift ;;
    --slow-rate) slow_rate=$2; shift ;;
    --timeout) timeout=${2%s}; shift ;;
    --bin) bin=$2; shift ;;
    --server-arg) server_args+=("$2"); shift ;;
    -h | --help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage "unknown argument $1" ;;
    esac
    shift
done
positive() { [[ $2 =~ ^[1-9][0-9]*$ ]] || usage "$1 must be a positive integer, not '$2'"; }
positive --size-mib "$mib"
positive --count "$count"
[ "$count" -le 1000 ] || usage "--count is at most 1000"
positive --parallel "$parallel"
positive --timeout "$timeout"
for w in $workers_list; do positive --workers "$w"; done
[ -n "${workers_list// /}" ] || usage "--workers needs at least one value"
# The slow rate in bytes per second, for the hard limits (slow_put.py gets the same number).
if [[ $slow_rate =~ ^([0-9]+)(|k|K|m|M|g|G|KiB|MiB|GiB)(/s)?$ ]]; then
    case "${BASH_REMATCH[2]}" in
    k | K) unit=1000 ;; m | M) unit=1000000 ;; g | G) unit=1000000000 ;;
    KiB) unit=1024 ;; MiB) unit=1048576 ;; GiB) unit=1073741824 ;; *) unit=1 ;;
    esac
    rate_bps=$((BASH_REMATCH[1] * unit))
else
    rate_bps=0
fi
[ "$rate_bps" -gt 0 ] || usage "--slow-rate must be bytes per second like 8388608 or 8MiB, not '$slow_rate'"
command -v python3 >/dev/null || { echo "upload-soak: needs python3 (the slow senders)" >&2; exit 2; }
command -v timeout >/dev/null || { echo "upload-soak: needs timeout (coreutils)" >&2; exit 2; }

size=$((mib * 1048576))
nsrc=$((parallel > 2 ? parallel : 2)) # distinct files (and stored names f0, f1, ...)
# A client process that outlives this is killed: its own --timeout should have ended it long
# before (the slowest upload at the slow rate, every upload of a phase hashed on one core at
# 20 MiB/s, and the timeout twice over).
op_limit=$((2 * timeout + 3 * size / rate_bps + 2 * parallel * mib / 20 + 60))

work=$(mktemp -d /var/tmp/socklab-soak.XXXXXX)
server="" running=()
stop_ops() { # the clients still running: their `timeout` first (it passes the signal on)
    local f p
    for f in "$work"/ops/*.pid; do
        [ -e "$f" ] || continue
        p=$(cat "$f" 2>/dev/null) || continue
        [ -n "$p" ] && kill "$p" 2>/dev/null
    done
    for p in "${running[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${running[@]}"; do wait "$p" 2>/dev/null; done
    running=()
}
stop_server() { # SIGTERM, then SIGKILL after 15 s; sets server_rc
    server_rc=""
    [ -n "$server" ] || return 0
    kill -TERM "$server" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$server" 2>/dev/null; then
        echo "  the server did not stop within 15 s of SIGTERM: SIGKILL" >&2
        kill -KILL "$server" 2>/dev/null || true
    fi
    server_rc=0
    wait "$server" 2>/dev/null || server_rc=$?
    server=""
}
cleanup() {
    set +e
    trap - EXIT INT TERM
    stop_ops
    stop_server
    rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "upload-soak: interrupted (SIGINT); cleaning up" >&2; exit 130' INT
trap 'echo "upload-soak: stopped (SIGTERM); cleaning up" >&2; exit 143' TERM

if [ -z "$bin" ]; then
    cargo build --release --quiet
    bin=./target/release/socklab
fi
[ -x "$bin" ] || { echo "upload-soak: $bin is not an executable" >&2; exit 2; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "soak: $nsrc files of $mib MiB (random), $count uploads per phase, $parallel at a time, slow senders at $slow_rate/s, client timeout ${timeout}s, hard limit ${op_limit}s per client; workers: $workers_list; server args: ${server_args[*]:-(none)}; data directory on $(df -T "$work" | awk 'NR==2{print $2}')"

mkdir -p "$work/ops"
md5s=()
for k in $(seq 0 $((nsrc - 1))); do
    head -c "$size" /dev/urandom >"$work/src$k.bin"
    md5s[k]=$(md5sum "$work/src$k.bin" | cut -d' ' -f1)
done

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# run_op RESULT KIND VIA NAME K: one client (KIND put, slow or get; VIA tcp or unix) on file K
# under NAME, timed; writes one line to RESULT: KIND VIA NAME START SECS STATUS DETAIL, tabs
# between, STATUS ok, wrong (answered, but an error or a wrong md5) or unanswered.
run_op() {
    local res=$1 kind=$2 via=$3 name=$4 k=$5
    local addr=$tcp_addr src=$work/src$k.bin want=${md5s[$5]} rc=0 p
    [ "$via" = unix ] && addr=$unix_addr
    local t0=$EPOCHREALTIME
    case $kind in
    put)
        timeout --foreground -k 5 "$op_limit" "$bin" put "$src" --as "$name" --no-verify \
            --addr "$addr" --timeout "${timeout}s" >"$res.out" 2>"$res.err" &
        ;;
    slow)
        timeout --foreground -k 5 "$op_limit" python3 tools/slow_put.py "$src" --as "$name" \
            --addr "$addr" --rate "$rate_bps" --timeout "$timeout" >"$res.out" 2>"$res.err" &
        ;;
    get)
        timeout --foreground -k 5 "$op_limit" "$bin" get "$name" -o /dev/null \
            --addr "$addr" --timeout "${timeout}s" >"$res.out" 2>"$res.err" &
        ;;
    esac
    p=$!
    echo "$p" >"$res.pid"
    wait "$p" || rc=$?
    rm -f "$res.pid"
    local t1=$EPOCHREALTIME
    local got detail status
    got=$(cat "$res.out" "$res.err" | grep -oE 'md5 [0-9a-f]{32}' | head -1 | cut -c5-) || true
    detail=$(grep -v '^[[:space:]]*$' "$res.err" | tail -1 | tr '\t' ' ' | cut -c1-200) || true
    if [ "$rc" = 0 ] && [ "$got" = "$want" ]; then
        status=ok detail="md5 $got"
    elif [ "$rc" = 0 ]; then
        status=wrong detail="md5 ${got:-missing}, the file's is $want"
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        status=unanswered detail="killed at the hard limit of ${op_limit}s"
    elif [ "$kind" = slow ]; then
        if [ "$rc" = 1 ]; then status=wrong; else status=unanswered; fi
    elif grep -qE 'server error|md5 mismatch|stored md5' "$res.err"; then
        status=wrong
    else
        status=unanswered
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$via" "$name" "$(secs "$phase_t0" "$t0")" \
        "$(secs "$t0" "$t1")" "$status" "${detail:-exit status $rc}" >"$res"
}

# run_phase PHASE WIDTH OP...: runs the ops (each "KIND VIA NAME K"), WIDTH at a time, and
# prints the phase's table.
run_phase() {
    local phase=$1 width=$2 i=0 spec done_pid
    shift 2
    phase_t0=$EPOCHREALTIME
    running=()
    for spec in "$@"; do
        i=$((i + 1))
        while [ ${#running[@]} -ge "$width" ]; do
            done_pid=""
            wait -n -p done_pid "${running[@]}" || true
            [ -n "$done_pid" ] || continue
            local keep=() p
            for p in "${running[@]}"; do [ "$p" = "$done_pid" ] || keep+=("$p"); done
            running=("${keep[@]}")
        done
        # shellcheck disable=SC2086 # spec is four words
        run_op "$work/ops/$phase.$(printf %04d $i)" $spec &
        running+=($!)
    done
    for p in "${running[@]}"; do wait "$p" || true; done
    running=()
    echo "  $(printf '%4s  %-4s  %-4s  %-4s  %7s  %6s  %s' '#' op via name start secs result)"
    for f in "$work/ops/$phase".[0-9][0-9][0-9][0-9]; do
        i=${f##*.}
        if [ -s "$f" ]; then
            awk -F'\t' -v i=$((10#$i)) '{ r = ($6 == "ok") ? "ok, " $7 : toupper($6) ": " $7
                printf "  %4d  %-4s  %-4s  %-4s  %7s  %6s  %s\n", i, $1, $2, $3, $4, $5, r }' "$f"
            sed "s/^/$phase\t/" "$f" >>"$work/all.tsv"
        else
            echo "  $((10#$i))  (no result: the client's shell ended early)"
            printf '%s\t?\t?\t?\t0\t0\tunanswered\tno result\n' "$phase" >>"$work/all.tsv"
        fi
    done
}

# tally FILE KINDS: "answered A/N in MIN–MAX s (median M s)" over the rows of those kinds
tally() {
    awk -F'\t' -v kinds="$2" '
        BEGIN { split(kinds, k, " "); for (j in k) want[k[j]] = 1 }
        want[$2] { n++
            if ($7 == "unanswered") { un++; gave = gave (gave == "" ? "" : ", ") $6; next }
            a++; t[a] = $6 + 0; if ($7 == "wrong") w++ }
        END {
            if (n == 0) { print "none"; exit }
            printf "answered %d/%d", a, n
            if (a > 0) {
                for (x = 2; x <= a; x++) { v = t[x]; for (y = x - 1; y >= 1 && t[y] > v; y--) t[y + 1] = t[y]; t[y + 1] = v }
                m = (a % 2) ? t[(a + 1) / 2] : (t[a / 2] + t[a / 2 + 1]) / 2
                printf " in %.1f–%.1f s (median %.1f s)", t[1], t[a], m
            }
            if (w > 0) printf ", %d of them WRONG", w
            if (un > 0) printf "; %d UNANSWERED (gave up after %s s)", un, gave
            print ""
        }' "$1"
}

# check_stored PHASE N: `socklab stat` of f0..f(N-1) against the local files
check_stored() {
    local phase=$1 n=$2 k line out=() got got_size
    for k in $(seq 0 $((n - 1))); do
        line=$(timeout --foreground -k 5 $((timeout + 10)) "$bin" stat "f$k" --addr "$tcp_addr" \
            --timeout "${timeout}s" 2>&1) || true
        got=$(echo "$line" | grep -oE 'md5 [0-9a-f]{32}' | head -1 | cut -c5-) || true
        got_size=$(echo "$line" | grep -oE '[0-9]+ bytes' | head -1 | cut -d' ' -f1) || true
        if [ "$got" = "${md5s[k]}" ] && [ "$got_size" = "$size" ]; then
            out+=("f$k ok")
            printf '%s\tok\n' "$phase" >>"$work/stored.tsv"
        else
            out+=("f$k WRONG ($(echo "$line" | tail -1 | cut -c1-160); want $size bytes, md5 ${md5s[k]})")
            printf '%s\twrong\n' "$phase" >>"$work/stored.tsv"
        fi
    done
    echo "  stored (stat): $(printf '%s, ' "${out[@]}" | sed 's/, $//')"
}

: >"$work/all.tsv"
: >"$work/stored.tsv"
server_trouble=0
for w in $workers_list; do
    data=$work/data-$w
    mkdir -p "$data"
    "$bin" serve --echo 127.0.0.1:0 --no-upper --no-udp-echo --no-udp-upper --no-time --no-chat \
        --no-udp-chat --no-discovery --no-metrics --files 127.0.0.1:0 --files "unix:$work/files-$w.sock" \
        --data-dir "$data" --workers "$w" -q "${server_args[@]}" >"$work/serve-$w.out" 2>"$work/serve-$w.err" &
    server=$!
    for _ in $(seq 200); do
        grep -q '^ready' "$work/serve-$w.out" && break
        kill -0 "$server" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q '^ready' "$work/serve-$w.out"; then
        echo "upload-soak: the server (--workers $w) did not start within 20 s:" >&2
        cat "$work/serve-$w.out" "$work/serve-$w.err" >&2
        exit 1
    fi
    tcp_addr=$(awk '$2 == "files" && $3 == "tcp" { print $4; exit }' "$work/serve-$w.out")
    unix_addr=$(awk '$2 == "files" && $3 == "unix" { print $4; exit }' "$work/serve-$w.out")
    echo
    echo "== workers $w: files on $tcp_addr and $unix_addr (server pid $server)"

    stored=0 # names f0.. written so far on this server
    phases_done=1
    for phase in seq mixed put+get; do
        ops=()
        case $phase in
        seq)
            echo "-- seq (workers $w): $count fast puts one after another, TCP"
            for i in $(seq 0 $((count - 1))); do ops+=("put tcp f$((i % nsrc)) $((i % nsrc))"); done
            width=1
            ;;
        mixed)
            echo "-- mixed (workers $w): $count uploads, $parallel at a time, fast puts and slow senders ($slow_rate/s) alternated, TCP and unix"
            for i in $(seq 0 $((count - 1))); do
                kind=put via=tcp
                [ $((i % 2)) = 1 ] && kind=slow
                [ $((i / 2 % 2)) = 1 ] && via=unix
                ops+=("$kind $via f$((i % nsrc)) $((i % nsrc))")
            done
            width=$parallel
            ;;
        put+get)
            echo "-- put+get (workers $w): $count fast puts, $parallel at a time, each beside a get of the same name over the other transport"
            for i in $(seq 0 $((count - 1))); do
                k=$((i % stored))
                if [ $((i % 2)) = 0 ]; then
                    ops+=("put tcp f$k $k" "get unix f$k $k")
                else
                    ops+=("put unix f$k $k" "get tcp f$k $k")
                fi
            done
            width=$((2 * parallel))
            ;;
        esac
        run_phase "$phase-w$w" "$width" "${ops[@]}"
        echo "  uploads: $(tally <(grep "^$phase-w$w	" "$work/all.tsv") 'put slow')"
        [ "$phase" = put+get ] && echo "  gets:    $(tally <(grep "^$phase-w$w	" "$work/all.tsv") get)"
        stored=$((stored + count > nsrc ? nsrc : stored + count))
        if ! kill -0 "$server" 2>/dev/null; then
            echo "  THE SERVER DIED during $phase:"
            tail -20 "$work/serve-$w.err" | sed 's/^/    /'
            server_trouble=1 phases_done=0
            break
        fi
        check_stored "$phase-w$w" "$stored"
    done
    stop_server
    echo "  server: exit status ${server_rc:-?} after SIGTERM"
    if [ "$phases_done" = 1 ] && [ "${server_rc:-1}" != 0 ]; then server_trouble=1; fi
    grep -iE 'panic|error' "$work/serve-$w.err" | head -5 | sed 's/^/  server log: /' || true
    rm -rf "$data"
done

echo
ups=$(tally "$work/all.tsv" 'put slow')
gets=$(tally "$work/all.tsv" get)
st_ok=$(grep -c '	ok$' "$work/stored.tsv") || true
st_all=$(wc -l <"$work/stored.tsv")
bad=$(awk -F'\t' '$7 != "ok"' "$work/all.tsv" | wc -l)
verdict=PASS
if [ "$bad" -gt 0 ] || [ "$st_ok" != "$st_all" ] || [ "$server_trouble" = 1 ]; then verdict=FAIL; fi
extra=""
[ "$server_trouble" = 1 ] && extra="; a server died or did not exit 0 on SIGTERM"
echo "summary: uploads $ups; gets $gets; stored md5 $st_ok/$st_all$extra; $verdict"
[ "$verdict" = PASS ]
