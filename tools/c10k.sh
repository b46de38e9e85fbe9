#!/usr/bin/env bash
# Starts a release socklab on a free port, holds N connections to it with tools/c10k.py, and
# prints the server's resident memory per idle connection. Usage: tools/c10k.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
cargo build --release --quiet
out=$(mktemp)
./target/release/socklab serve --echo 127.0.0.1:0 --no-upper --no-udp-echo --no-udp-upper \
    --max-conns $((n + 100)) -q >"$out" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q '^ready' "$out" && break; sleep 0.1; done
addr=$(awk '$1 == "listening" && $2 == "echo" {print $4}' "$out")
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "server: pid $pid on $addr"
python3 tools/c10k.py --addr "$addr" --pid "$pid" --conns "$n"
