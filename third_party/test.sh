#!/usr/bin/env bash
# Runs the unit tests of the patched pingora crates whose dev-dependencies resolve here
# (PATCHES.md, "Running pingora's own tests"): each crate is copied to a scratch directory as
# its own workspace, with the root Cargo.lock (so it builds the versions authgate uses; cargo
# adds what only the tests need from the registry) and without its benchmark-only
# dev-dependency and bench targets. pingora-proxy and pingora-pool build on other patched
# crates, so their copies patch those in as the root workspace does.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
for crate in pingora-timeout pingora-pool pingora-http pingora-rustls pingora-proxy pingora-core; do
    cp -R "third_party/$crate" "$SCRATCH/$crate"
    cp Cargo.lock "$SCRATCH/$crate/Cargo.lock"
    python3 - "$SCRATCH/$crate/Cargo.toml" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
s = re.sub(r'\[dev-dependencies\.(bencher|criterion)\][^\[]*', '', s)
s = re.sub(r'\[\[bench\]\][^\[]*', '', s)
open(p, 'w').write(s + '\n[workspace]\n')
PY
    case $crate in
        pingora-proxy) deps="pingora-core pingora-http pingora-pool pingora-timeout pingora-rustls" ;;
        pingora-pool) deps="pingora-timeout" ;;
        pingora-core) deps="pingora-http pingora-pool pingora-timeout pingora-rustls" ;;
        *) deps="" ;;
    esac
    if [[ -n $deps ]]; then
        {
            echo '[patch.crates-io]'
            for dep in $deps; do
                echo "$dep = { path = \"$ROOT/third_party/$dep\" }"
            done
        } >>"$SCRATCH/$crate/Cargo.toml"
    fi
    # pingora-core: its HTTP tests, on mock I/O (patches 2, 9, 13 and 14 are under test there);
    # its connector and TLS tests want the Internet and key files the crate does not ship.
    features=() filter=()
    if [[ $crate == pingora-core ]]; then
        features=(--features rustls)
        filter=(-- protocols::http)
    fi
    echo "== $crate: its own unit tests"
    (cd "$SCRATCH/$crate" &&
        cargo test --lib --quiet "${features[@]}" --target-dir "$ROOT/target/third-party-tests" "${filter[@]}")
done
