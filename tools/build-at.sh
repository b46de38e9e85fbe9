#!/usr/bin/env bash
# Builds socklab as it was at COMMIT, without touching the work tree: a detached
# `git worktree add` in a temporary directory, `cargo build --release` there with its own
# target directory, the binary copied to OUTDIR/socklab-COMMIT (COMMIT as its short hash), the
# worktree removed. Prints the binary's path; for `tools/bench-anchors.sh --baseline PATH`.
#
# Usage: tools/build-at.sh [--dry-run] COMMIT OUTDIR
# --dry-run adds and removes the worktree but prints the cargo command instead of running it.
# A fresh release build takes minutes of CPU (no target directory is shared).
set -euo pipefail
dry=""
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
[ $# -eq 2 ] || { sed -n '2,10p' "$0" >&2; exit 2; }
cd "$(dirname "$0")/.."
commit=$(git rev-parse --verify --short "$1^{commit}")
mkdir -p "$2"
outdir=$(cd "$2" && pwd)
tmp=$(mktemp -d)
tree=$tmp/socklab-$commit
cleanup() {
    git worktree remove --force "$tree" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
git worktree add --quiet --detach "$tree" "$commit" >&2
build=(cargo build --release --quiet --manifest-path "$tree/Cargo.toml" --target-dir "$tmp/target")
if [ -n "$dry" ]; then
    echo "build-at: would run: ${build[*]}" >&2
    echo "build-at: would copy $tmp/target/release/socklab to $outdir/socklab-$commit" >&2
    exit 0
fi
echo "build-at: building $commit in $tree" >&2
"${build[@]}"
cp "$tmp/target/release/socklab" "$outdir/socklab-$commit"
echo "$outdir/socklab-$commit"
