#!/usr/bin/env bash
# Starts a release socklab on a free port, holds N connections to it with tools/c10k.py, and
# prints the server's resident memory per idle connection, the kernel's socket memory and the
# echo latency at that scale. Usage: tools/c10k.sh [N]   (tools/c10k.sh 100000 for C100K: run
# as root, which may raise the descriptor limits; the client spreads over 127.0.0.2-9)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
cargo build --release --quiet
out=$(mktemp)
nofile=$((n + 1000))
sources=$(( n > 20000 ? 8 : 0 ))
# Both ends need more descriptors than the default hard limit when N is large.
sysctl -qw fs.nr_open=$((nofile * 2)) 2>/dev/null || true
ulimit -Hn "$nofile" 2>/dev/null || true
ulimit -n "$nofile" 2>/dev/null || true
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$nofile" ]; then
    echo "the open-file hard limit is $(ulimit -Hn) and cannot be raised here (raising it needs" >&2
    echo "CAP_SYS_RESOURCE); $n connections need $nofile descriptors in the server alone" >&2
    exit 1
fi
./target/release/socklab serve --echo 127.0.0.1:0 --no-upper --no-udp-echo --no-udp-upper \
    --no-files --no-chat --no-udp-chat --no-time --no-discovery --no-metrics \
    --max-conns $((n + 100)) -q >"$out" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q '^ready' "$out" && break; sleep 0.1; done
addr=$(awk '$1 == "listening" && $2 == "echo" {print $4}' "$out")
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "server: pid $pid on $addr"
echo "open-file limit: $(ulimit -n); client sources: ${sources:-0}"
python3 tools/c10k.py --addr "$addr" --pid "$pid" --conns "$n" --sources "$sources" --rounds 5
