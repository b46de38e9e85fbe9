#!/usr/bin/env bash
# files throughput against its floors, on one machine, in one run:
#   put of a SIZE file vs md5sum of the same file (hashing is the floor),
#   get of it (to /dev/null, no verification) vs nc moving the same file over loopback,
#   and the echo latency another client sees meanwhile.
# Usage: tools/files-bench.sh [SIZE_MIB]   (default 1024). Needs nc (netcat-openbsd).
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
work=$(mktemp -d /var/tmp/socklab-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
command -v nc >/dev/null || { apt-get install -y -qq netcat-openbsd >/dev/null; }
cargo build --release --quiet
bin=./target/release/socklab
now() { date +%s.%N; }
rate() { python3 -c "import sys; b=$1*1048576; t=$2; print(f'{b/t/1e6:.0f} MB/s ({t:.2f} s)')"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r)"
echo "file: $mib MiB of random bytes in $work (filesystem: $(df -T "$work" | awk 'NR==2{print $2}'))"
head -c $((mib * 1048576)) /dev/urandom >"$work/big.bin"
cat "$work/big.bin" >/dev/null # into the page cache, for every contender alike

t0=$(now); md5sum "$work/big.bin" >/dev/null; t1=$(now)
md5_t=$(python3 -c "print($t1-$t0)")
echo "md5sum:            $(rate $mib $md5_t)"

$bin serve --echo 127.0.0.1:0 --no-upper --no-udp-echo --no-udp-upper --files 127.0.0.1:0 \
    --data-dir "$work/data" -q >"$work/serve.out" &
for _ in $(seq 100); do grep -q '^ready' "$work/serve.out" && break; sleep 0.1; done
files=$(awk '$2 == "files" {print $4}' "$work/serve.out")
echo_addr=$(awk '$2 == "echo" {print $4}' "$work/serve.out")

t0=$(now); $bin put "$work/big.bin" --as big.bin --addr "$files" >/dev/null; t1=$(now)
put_t=$(python3 -c "print($t1-$t0)")
echo "socklab put:       $(rate $mib $put_t)  = $(python3 -c "print(f'{$md5_t/$put_t*100:.0f}')")% of md5sum (client hashes too and compares; server hashes, writes, fsyncs)"
t0=$(now); $bin put "$work/big.bin" --as big.bin --no-verify --addr "$files" >/dev/null; t1=$(now)
putnv_t=$(python3 -c "print($t1-$t0)")
echo "socklab put --no-verify: $(rate $mib $putnv_t)  = $(python3 -c "print(f'{$md5_t/$putnv_t*100:.0f}')")% of md5sum (only the server hashes)"
python3 tools/echo_probe.py --addr "$echo_addr" --stop-file "$work/stop" >"$work/probe-put.txt" &
$bin put "$work/big.bin" --as big.bin --addr "$files" >/dev/null
touch "$work/stop"; wait %2 2>/dev/null || true; rm -f "$work/stop"
echo "  during a third put, $(cat "$work/probe-put.txt")"

python3 tools/echo_probe.py --addr "$echo_addr" --stop-file "$work/stop" >"$work/probe-get.txt" &
t0=$(now); $bin get big.bin -o /dev/null --no-verify --addr "$files" 2>/dev/null; t1=$(now)
touch "$work/stop"; wait %3 2>/dev/null || true; rm -f "$work/stop"
get_t=$(python3 -c "print($t1-$t0)")
echo "socklab get:       $(rate $mib $get_t)"
echo "  during get, $(cat "$work/probe-get.txt")"

port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
nc -l 127.0.0.1 "$port" >/dev/null &
ncpid=$!
sleep 0.2
t0=$(now); nc -N 127.0.0.1 "$port" <"$work/big.bin"; wait $ncpid; t1=$(now)
nc_t=$(python3 -c "print($t1-$t0)")
echo "nc over loopback:  $(rate $mib $nc_t)"
echo "get / nc:          $(python3 -c "print(f'{$nc_t/$get_t*100:.0f}')")%"
