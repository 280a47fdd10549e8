#!/bin/sh
# plan-workspace.sh SRC DEST
#
# Writes to DEST a copy of the Cargo workspace at SRC that has every manifest (the workspace's
# Cargo.toml and Cargo.lock, every member's Cargo.toml) and, in place of every source file
# cargo needs to load the workspace (each target of each member: lib, bins, tests, benches,
# examples, build scripts), a stub `fn main() {}`. Building DEST compiles all dependencies and
# nothing of ours, so the Dockerfile caches that layer until a manifest changes.
#
# The member and target list comes from `cargo metadata --no-deps` (which needs no network),
# not from a hand-written list: a member added later (a bench crate, say) is stubbed too, and a
# member missing from the stubbed tree cannot break `cargo build --locked`.
# deploy/check.sh runs this script and loads the result with `cargo metadata --locked`.
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 SRC DEST" >&2
    exit 2
fi
src=$(cd "$1" && pwd -P)
mkdir -p "$2"
dest=$(cd "$2" && pwd -P)

meta=$(cd "$src" && cargo metadata --no-deps --format-version 1 --manifest-path "$src/Cargo.toml")

# Absolute paths under $src, one a line: every member manifest and every target source file.
paths() {
    printf '%s\n' "$meta" | grep -o "\"$1\":\"[^\"]*\"" | sed "s/^\"$1\":\"//; s/\"\$//"
}

rel() {
    case "$1" in
        "$src"/*) printf '%s\n' "${1#"$src"/}" ;;
        *)
            echo "plan-workspace: $1 is outside the workspace $src" >&2
            exit 1
            ;;
    esac
}

cp "$src/Cargo.toml" "$dest/Cargo.toml"
if [ -f "$src/Cargo.lock" ]; then
    cp "$src/Cargo.lock" "$dest/Cargo.lock"
fi
if [ -d "$src/.cargo" ]; then
    cp -R "$src/.cargo" "$dest/.cargo"
fi
# Patched dependencies (the root's [patch.crates-io], see PATCHES.md) are dependencies, not
# ours: copied whole, so the dependency layer compiles them for real.
if [ -d "$src/third_party" ]; then
    cp -R "$src/third_party" "$dest/third_party"
fi
for f in rust-toolchain rust-toolchain.toml; do
    if [ -f "$src/$f" ]; then cp "$src/$f" "$dest/$f"; fi
done

members=0
for manifest in $(paths manifest_path); do
    r=$(rel "$manifest")
    mkdir -p "$dest/$(dirname "$r")"
    cp "$manifest" "$dest/$r"
    members=$((members + 1))
done

targets=0
for source in $(paths src_path); do
    r=$(rel "$source")
    mkdir -p "$dest/$(dirname "$r")"
    # Valid as a lib, a bin, a test, a bench, an example and a build script alike.
    printf 'fn main() {}\n' >"$dest/$r"
    targets=$((targets + 1))
done

echo "plan-workspace: $members members, $targets stub targets in $dest" >&2
