#!/usr/bin/env bash
# Builds the shipped binary: x86_64, static-pie (glibc linked in with +crt-static; this
# toolchain has no musl target), whole-program LTO, stripped.
#   scripts/build-static.sh            -> target/x86_64-unknown-linux-gnu/dist/ocellus
# The explicit --target keeps RUSTFLAGS off build scripts and proc-macros, which must stay
# dynamic. Prints the binary's path on the last line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static ${RUSTFLAGS:-}" \
    cargo build --locked --profile dist --target "$target" >&2
binary="target/$target/dist/ocellus"
if command -v file >/dev/null; then file "$binary" >&2; fi
echo "$binary"
