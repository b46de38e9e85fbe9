#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for SECONDS each (default 60), all of them or the ones
# named, starting from the committed seed corpora (fuzz/seeds/<target>/) and the local corpus
# (fuzz/corpus/<target>/, not committed). Needs the nightly toolchain; installs cargo-fuzz if
# it is missing (from crates.io). Exits 1 at the first crash, timeout (an input running longer
# than 10 s: a wedge) or out-of-memory, printing the reproducer's path and how to replay it.
# Usage: tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=60
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then
    secs=$1
    shift
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Built as cargo-fuzz builds by default: optimised, with debug assertions and overflow checks
# (an arithmetic overflow on input is a finding; -O would turn those checks off).
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

start=$SECONDS
cargo +nightly fuzz build
echo "fuzz: built in $((SECONDS - start)) s; ${#targets[@]} targets, ${secs} s each"

for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    log="$logs/$t.log"
    if ! cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        # The panic's message is above the backtrace that the tail shows.
        grep -m 1 -A 1 'panicked at' "$log" >&2 || true
        found=$(ls -t "artifacts/$t"/* 2>/dev/null | head -n 1 || true)
        echo "fuzz: target $t failed; reproducer: fuzz/${found:-artifacts/$t/ (none written)}" >&2
        echo "fuzz: replay with: cd fuzz && cargo +nightly fuzz run $t ${found:-}" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
    echo "fuzz: $t: ${runs:-?} runs, ${rate:-?}/s, ${cov:-cov: ?}"
done
echo "fuzz: every target ran ${secs} s without a finding ($((SECONDS - start)) s in all)"
