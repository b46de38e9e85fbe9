#!/usr/bin/env bash
# C100K: opens N (default 100,000) concurrent TCP connections to ONE socklab echo reactor on
# this machine, keeps them all open while a small echo load runs through a sample of them, and
# reports the server's RSS per connection, the kernel's socket memory and p50/p99/max echo
# latency at that scale, then checks that all N are still open and the server alive.
#
# Usage: tools/c100k.sh [--strict] [N [tools/c100k.py options, e.g. --procs 6 --sources 4]]
#
# The server holds N sockets, so its open-file limit must exceed N. As root with
# CAP_SYS_RESOURCE the script raises fs.nr_open, the hard and soft RLIMIT_NOFILE and, if
# needed, fs.file-max and nf_conntrack_max. Where the hard limit cannot be raised it says so
# and runs at the largest N the server can hold, or with --strict exits 2. The client side is
# tools/c100k.py: several processes (each also bound by the open-file limit) and several
# 127.0.0.x source addresses (each used for about 45% of the ephemeral port range, where
# connect() still finds a port fast: 8 sources for 100,000 with ports 32768-60999).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/c10k.sh
source tools/c10k.sh

strict=0
if [ "${1:-}" = --strict ]; then strict=1; shift; fi
asked=${1:-100000}
shift || true
case $asked in
    '' | *[!0-9]*) echo "usage: tools/c100k.sh [--strict] [N [tools/c100k.py options]]" >&2; exit 2 ;;
esac
n=$asked
reserve=32  # descriptors the server needs besides connections (stdio, epoll, listener, spare)

cargo build --release --quiet
print_machine

raise_nofile $((n + reserve))
hard=$(hard_nofile)
if [ $((n + reserve)) -gt "$hard" ]; then
    most=$((hard - reserve))
    capeff=$(awk '/^CapEff/ {print $2}' /proc/self/status)
    if (( (0x$capeff >> 24) & 1 )); then why="it could not be raised"
    else why="raising it needs CAP_SYS_RESOURCE, which this process lacks"; fi
    echo "open-file hard limit $hard ($why; fs.nr_open is $(cat /proc/sys/fs/nr_open)):" \
        "the server can hold at most $most connections here"
    if [ "$strict" = 1 ]; then
        echo "--strict: not running with fewer than $asked" >&2
        exit 2
    fi
    echo "running with N=$most instead of $asked"
    n=$most
fi

# Both ends of every connection are open files machine-wide, and tracked if conntrack is on.
need_files=$((2 * n + $(cut -f1 /proc/sys/fs/file-nr) + 10000))
if [ "$(cat /proc/sys/fs/file-max)" -lt "$need_files" ]; then
    sysctl -qw fs.file-max="$need_files" || echo "warning: fs.file-max stays $(cat /proc/sys/fs/file-max)"
fi
ct=/proc/sys/net/netfilter/nf_conntrack_max
if [ -r $ct ] && [ "$(cat $ct)" -lt $((n + 10000)) ]; then
    sysctl -qw net.netfilter.nf_conntrack_max=$((n + 10000)) ||
        echo "warning: nf_conntrack_max stays $(cat $ct)"
fi
echo "limits: RLIMIT_NOFILE $(ulimit -n)/$(ulimit -Hn), fs.nr_open $(cat /proc/sys/fs/nr_open)," \
    "fs.file-max $(cat /proc/sys/fs/file-max), ip_local_port_range" \
    "$(xargs </proc/sys/net/ipv4/ip_local_port_range), somaxconn $(cat /proc/sys/net/core/somaxconn)," \
    "tcp_mem $(xargs </proc/sys/net/ipv4/tcp_mem) pages, nf_conntrack_max $(cat $ct 2>/dev/null || echo -)"

# One reactor (no --workers); idle connections must outlive the run.
start_echo_server --max-conns $((n + 100)) --max-conns-per-ip 0 --handshake-timeout 0 \
    --backlog 4096 --idle-timeout 1h
echo "server: pid $server_pid on $server_addr, one reactor, --max-conns $((n + 100))"
echo "command: python3 tools/c100k.py --addr $server_addr --pid $server_pid --conns $n $*"
python3 tools/c100k.py --addr "$server_addr" --pid "$server_pid" --conns "$n" "$@"
kill -0 "$server_pid" || { echo "FAILED: the server is gone" >&2; exit 1; }
