#!/usr/bin/env bash
# Bounded fuzzing of authgate's parsers on stable Rust. FUZZ_SECONDS per target (default 60).
# Crashing inputs land in fuzz/regressions/<target>/ and are replayed by
# `cargo test -p authgate-fuzz` from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p authgate-fuzz
target/release/fuzz --seconds "${FUZZ_SECONDS:-60}" "$@"
