#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs formatting, lints, docs, the
# unit and integration tests, and the real OpenStack clients against the built binary.
# Works on a fresh Debian machine with Rust; CI runs it through .ci/run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# System packages: qemu-img makes real disk images for the tests; python3-venv and curl serve
# the client-compatibility test.
missing=()
command -v qemu-img >/dev/null || missing+=(qemu-utils)
command -v curl >/dev/null || missing+=(curl)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "== installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
if command -v rustup >/dev/null; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --quiet
echo "== cargo test"
cargo test --locked
echo "== real OpenStack clients against the built binary"
cargo build --locked --quiet
tests/clients/run.sh target/debug/ocellus
echo "== OpenStack's own image API tests (tempest) against the built binary"
tests/tempest/run.sh target/debug/ocellus
echo "== system tests: a full disk, kill -9 cycles, a crowd of slow transfers"
tests/system/run.sh target/debug/ocellus
echo "== the appliance: static binary, systemd unit, .deb install, upgrade, remove, purge"
tests/package/run.sh
