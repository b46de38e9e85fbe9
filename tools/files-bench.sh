#!/usr/bin/env bash
# files throughput against its floors, on one machine, in one run, side by side:
#   put --no-verify of a SIZE file vs md5sum of the same cached file (the server must hash every
#   byte: one core running md5 is the bound) and vs dd conv=fsync of it into the data directory
#   (a put answers once the file is on disk: the disk is the other bound); put with the client
#   verifying too; get (to /dev/null, no verification) vs nc moving the same file over loopback;
#   and the echo latency another client of the same server sees during a put and a get.
# Each contender runs --runs times, alternating, and the best run of each is compared.
#
# With --tls, files listens with TLS (a `socklab cert` pair) and every put and get runs over it
# (no sendfile: the server reads, encrypts and writes each byte); the server's CPU time per GiB
# of get is measured (/proc/PID/stat) beside nginx serving the same cached file over HTTPS (one
# worker, the same certificate, fetched by curl), and the echo latency during a TLS get.
#
# Usage: tools/files-bench.sh [SIZE_MIB] [--runs N] [--tmpfs] [--tls] [--bin PATH]
#   SIZE_MIB  file size (default 1024)
#   --runs    rounds of md5sum / dd / put alternated (default 5)
#   --tmpfs   the data directory on a tmpfs (root only): no disk in the way, so put is bounded
#             by the CPU alone
#   --bin     the socklab binary (default: cargo build --release, ./target/release/socklab)
#   --tls     files over TLS, and nginx over HTTPS beside it (nginx is installed if missing)
# Needs nc (netcat-openbsd) and python3. Exits 1 if any put or get fails.
set -euo pipefail
cd "$(dirname "$0")/.."
mib=1024 runs=5 tmpfs=0 bin="" tls=0
while [ $# -gt 0 ]; do
    case "$1" in
    --runs) runs=$2; shift ;;
    --tmpfs) tmpfs=1 ;;
    --tls) tls=1 ;;
    --bin) bin=$2; shift ;;
    [0-9]*) mib=$1 ;;
    *) echo "files-bench: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
work=$(mktemp -d /var/tmp/socklab-bench.XXXXXX)
server=""
nginx_pid=""
cleanup() {
    [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    mountpoint -q "$work/data" 2>/dev/null && umount "$work/data"
    rm -rf "$work"
}
trap cleanup EXIT
command -v nc >/dev/null || { apt-get install -y -qq netcat-openbsd >/dev/null; }
if [ -z "$bin" ]; then
    cargo build --release --quiet
    bin=./target/release/socklab
fi
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.3f}')"; }
rate() { python3 -c "b=$1*1048576; t=$2; print(f'{b/t/1e6:.0f} MB/s ({t:.2f} s)')"; }
best() { tr ' ' '\n' | grep -v '^$' | sort -g | head -1; }
all() { tr ' ' '\n' | grep -v '^$' | xargs printf '%.2f '; }

mkdir -p "$work/data"
if [ "$tmpfs" = 1 ]; then
    mount -t tmpfs -o size=$((mib * 3))m tmpfs "$work/data"
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "file: $mib MiB of random bytes; data directory on $(df -T "$work/data" | awk 'NR==2{print $2}'); best of $runs runs each"
head -c $((mib * 1048576)) /dev/urandom >"$work/big.bin"
cat "$work/big.bin" >/dev/null # into the page cache, for every contender alike

tls_serve=() tls_client=()
if [ "$tls" = 1 ]; then
    $bin cert --out "$work/tls" >/dev/null
    tls_serve=(--tls files --tls-cert "$work/tls/server.pem" --tls-key "$work/tls/server.key")
    tls_client=(--tls --ca "$work/tls/ca.pem")
    echo "files over TLS (socklab cert: ECDSA P-256); echo stays plain"
fi
$bin serve --echo 127.0.0.1:0 --no-upper --no-udp-echo --no-udp-upper --no-time --no-chat \
    --no-udp-chat --no-discovery --no-metrics --files 127.0.0.1:0 \
    --data-dir "$work/data" -q "${tls_serve[@]}" >"$work/serve.out" &
server=$!
for _ in $(seq 100); do grep -q '^ready' "$work/serve.out" && break; sleep 0.1; done
grep -q '^ready' "$work/serve.out" || { echo "files-bench: the server did not start" >&2; exit 1; }
files=$(awk '$2 == "files" {print $4}' "$work/serve.out")
echo_addr=$(awk '$2 == "echo" {print $4}' "$work/serve.out")

# Before each timed contender the data directory settles: the file the last put replaced is gone
# (the server removes it after answering) and `sync` has committed the frees, so that no
# contender waits behind the last one's freed blocks (online discard on ext4 costs seconds a GiB).
settle() {
    for _ in $(seq 300); do
        compgen -G "$work/data/.socklab-old-*" >/dev/null || break
        sleep 0.1
    done
    sync
}

md5_ts="" dd_ts="" putnv_ts="" put_ts=""
for _ in $(seq "$runs"); do
    settle
    t0=$(now); md5sum "$work/big.bin" >/dev/null; t1=$(now)
    md5_ts="$md5_ts $(secs "$t0" "$t1")"
    settle
    t0=$(now); $bin put "$work/big.bin" --as big.bin --no-verify --addr "$files" "${tls_client[@]}" >/dev/null; t1=$(now)
    putnv_ts="$putnv_ts $(secs "$t0" "$t1")"
    settle
    t0=$(now); dd if="$work/big.bin" of="$work/data/dd.out" bs=1M conv=fsync status=none; t1=$(now)
    rm -f "$work/data/dd.out"
    dd_ts="$dd_ts $(secs "$t0" "$t1")"
    settle
    t0=$(now); $bin put "$work/big.bin" --as big.bin --addr "$files" "${tls_client[@]}" >/dev/null; t1=$(now)
    put_ts="$put_ts $(secs "$t0" "$t1")"
done
md5_t=$(echo "$md5_ts" | best) dd_t=$(echo "$dd_ts" | best)
putnv_t=$(echo "$putnv_ts" | best) put_t=$(echo "$put_ts" | best)
ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
echo "md5sum:                   $(rate "$mib" "$md5_t")   runs: $(echo "$md5_ts" | all)"
echo "dd conv=fsync to data:    $(rate "$mib" "$dd_t")   runs: $(echo "$dd_ts" | all)"
echo "socklab put --no-verify:  $(rate "$mib" "$putnv_t")   runs: $(echo "$putnv_ts" | all)"
echo "socklab put (verifies):   $(rate "$mib" "$put_t")   runs: $(echo "$put_ts" | all)"
echo "put --no-verify / md5sum: $(ratio "$md5_t" "$putnv_t") of md5sum's throughput (targets: >= 0.80x, issue 24; >= 0.90x, issue 20)"
echo "put --no-verify / dd:     $(ratio "$dd_t" "$putnv_t") of dd conv=fsync's throughput"
echo "put (verifies) / md5sum:  $(ratio "$md5_t" "$put_t")"

probe() { # $1: label; the rest: the command measured meanwhile
    local label=$1
    shift
    rm -f "$work/ready"
    python3 tools/echo_probe.py --addr "$echo_addr" --stop-file "$work/stop" \
        --ready-file "$work/ready" >"$work/probe.txt" &
    local p=$!
    for _ in $(seq 100); do [ -e "$work/ready" ] && break; sleep 0.05; done
    "$@" >/dev/null
    touch "$work/stop"
    wait $p || true
    rm -f "$work/stop"
    echo "  echo during $label: $(cat "$work/probe.txt")"
}
probe "a put --no-verify" $bin put "$work/big.bin" --as big.bin --no-verify --addr "$files" "${tls_client[@]}"

probe "a get" $bin get big.bin -o /dev/null --no-verify --addr "$files" "${tls_client[@]}" 2>/dev/null
get_ts="" get_cpu=""
# CPU seconds (user + system) a process has used so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$1/stat"; }
for _ in $(seq "$runs"); do
    c0=$(cpu_of "$server")
    t0=$(now); $bin get big.bin -o /dev/null --no-verify --addr "$files" "${tls_client[@]}" 2>/dev/null; t1=$(now)
    c1=$(cpu_of "$server")
    get_ts="$get_ts $(secs "$t0" "$t1")"
    get_cpu="$get_cpu $(secs "$c0" "$c1")"
done
get_t=$(echo "$get_ts" | best)
echo "socklab get:              $(rate "$mib" "$get_t")   runs: $(echo "$get_ts" | all)"
get_cpu_best=$(echo "$get_cpu" | best)
per_gib() { python3 -c "print(f'{$1 * 1024 / $mib:.2f} s')"; }
echo "server CPU per GiB of get: $(per_gib "$get_cpu_best") (best run; runs: $(echo "$get_cpu" | all)s)"

if [ "$tls" = 1 ]; then
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt-get install -y -qq nginx-light >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
    nport=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
    mkdir -p "$work/nginx/www" "$work/nginx/tmp"
    ln -s "$work/big.bin" "$work/nginx/www/big.bin"
    cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
# The work directory is private (mktemp -d): the worker reads it as the user running this.
user $(id -un);
daemon off;
master_process on;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 64; }
http {
    access_log off;
    sendfile on;
    client_body_temp_path $work/nginx/tmp;
    proxy_temp_path $work/nginx/tmp;
    fastcgi_temp_path $work/nginx/tmp;
    uwsgi_temp_path $work/nginx/tmp;
    scgi_temp_path $work/nginx/tmp;
    server {
        listen 127.0.0.1:$nport ssl;
        ssl_certificate $work/tls/server.pem;
        ssl_certificate_key $work/tls/server.key;
        root $work/nginx/www;
    }
}
NGINX
    /usr/sbin/nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
    nginx_pid=$!
    for _ in $(seq 50); do ss -ltn "sport = :$nport" | grep -q LISTEN && break; sleep 0.1; done
    worker=$(pgrep -P "$nginx_pid" | head -1)
    ngx_ts="" ngx_cpu=""
    for _ in $(seq "$runs"); do
        c0=$(cpu_of "$worker")
        t0=$(now)
        curl -sf --cacert "$work/tls/ca.pem" "https://127.0.0.1:$nport/big.bin" -o /dev/null ||
            { echo "files-bench: nginx did not serve the file:" >&2; cat "$work/nginx/error.log" >&2; exit 1; }
        t1=$(now)
        c1=$(cpu_of "$worker")
        ngx_ts="$ngx_ts $(secs "$t0" "$t1")"
        ngx_cpu="$ngx_cpu $(secs "$c0" "$c1")"
    done
    ngx_t=$(echo "$ngx_ts" | best) ngx_cpu_best=$(echo "$ngx_cpu" | best)
    echo "nginx $(/usr/sbin/nginx -v 2>&1 | sed 's/.*nginx\///') HTTPS get: $(rate "$mib" "$ngx_t")   runs: $(echo "$ngx_ts" | all)"
    echo "nginx worker CPU per GiB: $(per_gib "$ngx_cpu_best") (best run; runs: $(echo "$ngx_cpu" | all)s)"
    echo "socklab / nginx CPU per GiB: $(ratio "$get_cpu_best" "$ngx_cpu_best") (target <= 1.00x)"
fi

port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
nc -l 127.0.0.1 "$port" >/dev/null &
ncpid=$!
for _ in $(seq 50); do ss -ltn "sport = :$port" | grep -q LISTEN && break; sleep 0.1; done
t0=$(now); nc -N 127.0.0.1 "$port" <"$work/big.bin"; wait $ncpid; t1=$(now)
nc_t=$(secs "$t0" "$t1")
echo "nc over loopback:         $(rate "$mib" "$nc_t")"
echo "get / nc:                 $(ratio "$nc_t" "$get_t")"
