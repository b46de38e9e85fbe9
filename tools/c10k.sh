#!/usr/bin/env bash
# Starts a release socklab on a free port, holds N connections to it with tools/c10k.py, and
# prints the server's resident memory per idle connection, the kernel's socket memory and the
# echo latency at that scale. Usage: tools/c10k.sh [N]   (one client process, so N is bounded
# by one process's open-file limit; tools/c100k.sh spreads 100,000 over several processes
# and source addresses). tools/c100k.sh sources this file for the functions below.
set -euo pipefail

# Starts one release socklab with only a TCP echo listener on an ephemeral port and waits for
# `ready`; extra arguments go to `socklab serve`. Sets server_pid and server_addr and stops
# the server on exit.
start_echo_server() {
    server_out=$(mktemp)
    "${CARGO_TARGET_DIR:-target}/release/socklab" serve --echo 127.0.0.1:0 --no-upper --no-udp-echo --no-udp-upper \
        --no-files --no-chat --no-udp-chat --no-time --no-discovery --no-metrics -q "$@" \
        >"$server_out" &
    server_pid=$!
    trap 'kill $server_pid 2>/dev/null; rm -f "$server_out"' EXIT
    for _ in $(seq 100); do grep -q '^ready' "$server_out" && break; sleep 0.1; done
    grep -q '^ready' "$server_out" || { echo "the server did not become ready" >&2; exit 1; }
    server_addr=$(awk '$1 == "listening" && $2 == "echo" {print $4}' "$server_out")
}

# The open-file hard limit of this shell as a number ("unlimited" counts as 2^30).
hard_nofile() {
    local h
    h=$(ulimit -Hn)
    if [ "$h" = unlimited ]; then echo $((1 << 30)); else echo "$h"; fi
}

# Raises fs.nr_open (never lowers it) and this shell's open-file limits towards need
# descriptors per process, as far as the kernel lets it: raising the hard limit needs
# CAP_SYS_RESOURCE. The soft limit ends at the hard one. Children inherit both.
raise_nofile() {
    local need=$1
    if [ "$(cat /proc/sys/fs/nr_open)" -lt "$need" ]; then
        sysctl -qw fs.nr_open="$need" 2>/dev/null || true
    fi
    if [ "$(hard_nofile)" -lt "$need" ]; then
        ulimit -Hn "$need" 2>/dev/null || true
    fi
    ulimit -n "$(ulimit -Hn)"
}

print_machine() {
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
        "kernel $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
}

c10k_main() {
    cd "$(dirname "$0")/.."
    local n=${1:-10000}
    cargo build --release --quiet
    local nofile=$((n + 1000))
    local sources=$(( n > 20000 ? 8 : 0 ))
    # Both ends need more descriptors than the default hard limit when N is large.
    raise_nofile "$nofile"
    if [ "$(hard_nofile)" -lt "$nofile" ]; then
        echo "the open-file hard limit is $(ulimit -Hn) and cannot be raised here (raising it needs" >&2
        echo "CAP_SYS_RESOURCE); $n connections need $nofile descriptors in the server alone" >&2
        echo "and in the one client process (tools/c100k.sh uses several client processes)" >&2
        exit 1
    fi
    start_echo_server --max-conns $((n + 100)) --max-conns-per-ip 0 --handshake-timeout 0
    print_machine
    echo "server: pid $server_pid on $server_addr"
    echo "open-file limit: $(ulimit -n); client sources: ${sources:-0}"
    python3 tools/c10k.py --addr "$server_addr" --pid "$server_pid" --conns "$n" \
        --sources "$sources" --rounds 5
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    c10k_main "$@"
fi
