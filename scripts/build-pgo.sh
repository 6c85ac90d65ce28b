#!/usr/bin/env bash
# scripts/build-pgo.sh — build the production credgate binary with profile-guided optimisation.
#
# 1. builds credgate instrumented to record a profile (target/pgo-generate),
# 2. runs it under examples/pgo_train.rs, which drives every request path production traffic takes (static, OAuth2
#    and login credentials; caller JWTs; plain HTTP, TLS with HTTP/1.1 and HTTP/2; bodies; an HTTPS upstream),
# 3. merges the profile and builds credgate again with it (target/pgo/release/credgate).
#
# The profile comes from this checkout's own code every time, so it never goes stale. The optimised binary behaves
# exactly like `cargo build --release`'s; it lays out and inlines the hot path by measured frequency, which keeps
# the per-request code small enough for the instruction cache (BENCHMARKS.md; benches/history.md, sitting 11).
# Needs rustup's llvm-tools component (installed here when missing) and about twice a release build's time.
# Knob: PGO_SECONDS (seconds per training phase, default 2).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
profiles=$target/pgo-profiles
merged=$target/pgo-merged.profdata

sysroot=$(rustc --print sysroot)
host=$(rustc -vV | awk '/^host:/ {print $2}')
profdata=$sysroot/lib/rustlib/$host/bin/llvm-profdata
if [ ! -x "$profdata" ]; then
  rustup component add llvm-tools
fi

echo "== 1/3 instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$profiles" cargo build --release --quiet --bin credgate \
  --target-dir "$target/pgo-generate"

echo "== 2/3 training run" >&2
# Build scripts compiled with the same flags leave profiles too; only the gateway's count.
rm -rf "$profiles"
cargo build --release --quiet --example pgo_train
"$target/release/examples/pgo_train" "$target/pgo-generate/release/credgate" "${PGO_SECONDS:-2}"
"$profdata" merge -o "$merged" "$profiles"

echo "== 3/3 optimised build" >&2
# Named by content: cargo does not track the profile's content, only the flags, so a new profile gets a new name and
# every crate (hyper's and tokio's code is most of the hot path) is rebuilt with it.
used=$target/pgo-$(sha256sum "$merged" | cut -c1-16).profdata
rm -f "$target"/pgo-????????????????.profdata
mv "$merged" "$used"
RUSTFLAGS="-Cprofile-use=$used" cargo build --release --quiet --bin credgate --target-dir "$target/pgo"
echo "$target/pgo/release/credgate"
