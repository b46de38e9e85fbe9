#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for SECONDS each (default 60), all of them or the ones
# named, with the committed seed corpora; installs cargo-fuzz if missing. Exits 1 on the first
# crash and prints the reproducer's path.
# Usage: tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=60
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then secs=$1; shift; fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build -O
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    echo "== $t: ${secs}s"
    if ! cargo +nightly fuzz run -O "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>"/tmp/fuzz-$t.log"; then
        tail -n 40 "/tmp/fuzz-$t.log" >&2
        found=$(ls -t "artifacts/$t"/* 2>/dev/null | head -n 1 || true)
        echo "fuzz target $t crashed; reproducer: fuzz/${found:-artifacts/$t (none written)}" >&2
        echo "replay: cd fuzz && cargo +nightly fuzz run $t ${found:-}" >&2
        exit 1
    fi
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|Done )' "/tmp/fuzz-$t.log" || tail -n 2 "/tmp/fuzz-$t.log"
done
