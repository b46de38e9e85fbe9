#!/usr/bin/env bash
# The heavy tests kept out of `cargo test` (and so out of CI's time budget): 256 MiB round
# trips and the like, marked #[ignore]. Release build, so the hashing does not dominate.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -- --ignored
