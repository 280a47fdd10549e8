#!/usr/bin/env bash
# A profile-guided (PGO) build of authgate, trained on the bench's own scenarios.
#
#   bench/pgo.sh            build instrumented, train, merge, build with the profile
#   bench/pgo.sh --no-gen   reuse the instrumented build and its training (merge and final build)
#
# Prints the path of the optimised binary on its last line:
#   target/pgo-use/x86_64-unknown-linux-gnu/release/authgate (under CARGO_TARGET_DIR if set).
#
# Why: a request through authgate costs more in L1 instruction misses than in instructions
# (bench/ANALYSIS.md); PGO lays hot code out together and cold code (errors, reloads) apart.
#
# How: both builds use their own target dir and an explicit --target, so RUSTFLAGS reach the
# crates of the binary and not build scripts or proc macros. Training is bench/pgo-train.sh:
# every configuration in bench/configs (public, local and shared limits, HS256 plain, with
# assertions and with ten issuers, RS256, opaque, everything on with and without the access
# log, the uncached paths and the search cache) behind upstream-mock, a few seconds each
# (PGO_SECONDS), and the rejections of bad tokens. It needs the release upstream-mock (built
# here when missing), wrk, redis-server and curl, not the benchmark's anchors; bench/run.sh
# measures the result against nginx, which training never saw. llvm-profdata comes from
# rustup's llvm-tools component, which matches the toolchain's LLVM (Debian's llvm is older:
# its llvm-profdata cannot read this rustc's profiles).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GEN=1
for arg in "$@"; do
    case "$arg" in
        --no-gen) GEN=0 ;;
        -h | --help) sed -n 2,21p "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done
log() { printf '[pgo %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TRIPLE=$(rustc -vV | awk '/^host:/ { print $2 }')
WORK=$TARGET_DIR/pgo-profile
GEN_DIR=$TARGET_DIR/pgo-gen
USE_DIR=$TARGET_DIR/pgo-use
PGO_SECONDS=${PGO_SECONDS:-3}

SYSROOT=$(rustc --print sysroot)
PROFDATA=$SYSROOT/lib/rustlib/$TRIPLE/bin/llvm-profdata
if [[ ! -x $PROFDATA ]]; then
    log "installing rustup's llvm-tools (llvm-profdata)"
    rustup component add llvm-tools >&2 || die "rustup component add llvm-tools"
fi
[[ -x $PROFDATA ]] || die "$PROFDATA is missing"

if [[ $GEN == 1 ]]; then
    log "building the instrumented authgate (target/pgo-gen)"
    rm -rf "$WORK"
    mkdir -p "$WORK/raw"
    RUSTFLAGS="-Cprofile-generate=$WORK/raw" cargo build --release --locked -p authgate \
        --target "$TRIPLE" --target-dir "$GEN_DIR" >&2
    if [[ ! -x $TARGET_DIR/release/upstream-mock ]]; then
        log "building the release upstream-mock (the trainer's upstream and IdP)"
        cargo build --release --locked -p upstream-mock >&2
    fi
    log "training, $PGO_SECONDS s per configuration"
    MOCK_BIN=$TARGET_DIR/release/upstream-mock PGO_SECONDS=$PGO_SECONDS \
        bench/pgo-train.sh "$GEN_DIR/$TRIPLE/release/authgate" "$WORK/raw" >&2 || die "training (bench/pgo-train.sh)"
fi
compgen -G "$WORK/raw/*.profraw" >/dev/null || die "no profile in $WORK/raw (did the instrumented processes exit cleanly?)"
"$PROFDATA" merge -o "$WORK/authgate.profdata" "$WORK"/raw/*.profraw >&2
log "building with the profile (target/pgo-use)"
RUSTFLAGS="-Cprofile-use=$WORK/authgate.profdata" cargo build --release --locked -p authgate \
    --target "$TRIPLE" --target-dir "$USE_DIR" >&2
echo "$USE_DIR/$TRIPLE/release/authgate"
