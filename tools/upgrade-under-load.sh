#!/usr/bin/env bash
# Restart under full load, shown (issue 18, deliverable 5): one `socklab serve` (echo, files on
# loopback without auth, chat, a control socket in a temporary directory) upgraded N times in a
# row with `socklab reload` while tools/upgrade_load.py drives load through it:
#   - new connections at a steady rate (connect, one echo line, its reply, close);
#   - kept connections pipelining echo lines, and kept connections pipelining `files` `ping` and
#     `stat` frames (each with its id; every response checked);
#   - uploads of 10 MiB with their md5 (framing spoken by the script), back to back;
#   - a chat conversation: members sending numbered lines, each followed by `/who`.
# Each reload waits for `reloaded: pid=NEW`; after the last one the load stops, every uploaded
# name is `stat`ed, and the last server gets SIGTERM. Prints the machine and a table of refused
# connections, resets, requests without a reply, wrong replies, failed or corrupted uploads,
# lost chat lines and server processes that did not exit 0 (the exact definitions, and why the
# old and the new process do not share a chat room, are in tools/upgrade_load.py's docstring).
# Every wait is bounded (--timeout); every server process is killed by PID on exit.
#
# Usage: tools/upgrade-under-load.sh [--upgrades N] [--interval S] [--rate R] [--kept K]
#            [--window W] [--uploads U] [--upload-mib M] [--members C] [--chat-rate R]
#            [--timeout S] [--server-arg ARG]...
#   --upgrades    reloads in a row (default 10), --interval seconds apart (default 2)
#   --rate        new connections per second (default 50)
#   --kept        kept echo connections, and as many kept files connections (default 4)
#   --window      requests in flight per kept connection (default 50)
#   --uploads     parallel uploaders (default 2), --upload-mib MiB each (default 10)
#   --members     chat members (default 4), each sending --chat-rate lines per second (20)
#   --timeout     seconds any one wait may take (default 20)
#   --server-arg  one more argument for `socklab serve` (repeatable)
# The binary: $SOCKLAB_BIN, else `cargo build --release` and ./target/release/socklab.
# Needs python3 (standard library only). Exit 0 only when every failure count is 0.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h | --help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
if [ -z "${SOCKLAB_BIN:-}" ]; then
    nice -n 19 cargo build --release --quiet --bin socklab
    SOCKLAB_BIN=./target/release/socklab
fi
echo "machine: $(uname -srm), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "binary: $SOCKLAB_BIN ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "command: $0 $*"
exec python3 tools/upgrade_load.py --bin "$SOCKLAB_BIN" "$@"
