#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs formatting, lints, docs, the
# unit and integration tests, and the real OpenStack clients against the built binary.
# Works on a fresh Debian machine with Rust; CI runs it through .ci/run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# System packages: qemu-img makes real disk images for the tests, and with libnbd's nbdinfo
# and nbdcopy reads the NBD export as users will; GnuPG signs the mirror tests'
# vendor fixtures with throwaway keys; python3-venv and curl serve the client-compatibility
# test. Chromium (Debian's, at /usr/bin/chromium) is the real browser the web UI tests drive
# through Playwright, whose own browser downloads are never used; npm fetches axe-core, the
# accessibility checker those tests run in each page.
missing=()
command -v qemu-img >/dev/null || missing+=(qemu-utils)
command -v nbdcopy >/dev/null || missing+=(libnbd-bin)
command -v curl >/dev/null || missing+=(curl)
command -v gpg >/dev/null || missing+=(gnupg)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v npm >/dev/null || missing+=(npm)
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "== installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
if command -v rustup >/dev/null; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

# A real S3 engine for the multiple-stores tests, started once and shared by the integration
# tests and the client run, stopped however this script ends: Ceph's RADOS Gateway (1 mon,
# 1 mgr, 3 OSDs on files; Debian packages, about 35 s to start). OCELLUS_S3_ENGINE=garage runs
# the same tests on a 3-node Garage instead (built from the Rust registry on first use, about
# 15 minutes on 2 cores); OCELLUS_S3_ENGINE=none leaves the engine and those tests out.
s3_engine=${OCELLUS_S3_ENGINE:-ceph}
s3_dir=$PWD/target/s3-engine
mkdir -p target
# Ceph's OSDs need a filesystem with O_DIRECT, which tmpfs is not.
if [[ $(stat -f -c %T target) == tmpfs ]]; then
    s3_dir=/var/tmp/ocellus-s3-engine
fi
case $s3_engine in
ceph) s3_script=tests/s3/ceph-rgw.sh ;;
garage) s3_script=tests/s3/garage.sh ;;
none) s3_script= ;;
*)
    echo "OCELLUS_S3_ENGINE must be ceph, garage or none, not $s3_engine" >&2
    exit 2
    ;;
esac
stop_engine() {
    if [[ -n $s3_script && -d $s3_dir ]]; then
        bash "$s3_script" down "$s3_dir" >/dev/null 2>&1 || true
    fi
}
trap stop_engine EXIT
if [[ -n $s3_script ]]; then
    echo "== starting the S3 engine ($s3_engine) for the multiple-stores tests"
    stop_engine
    rm -rf "$s3_dir"
    bash "$s3_script" up "$s3_dir"
    export OCELLUS_S3_ENV=$s3_dir/s3.env
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
echo "== the web UI in a real browser (Chromium, Playwright, axe-core)"
tests/ui/run.sh target/debug/ocellus
echo "== OpenStack's own image API tests (tempest) against the built binary"
tests/tempest/run.sh target/debug/ocellus
echo "== system tests: a full disk, kill -9 cycles, a crowd of slow transfers"
tests/system/run.sh target/debug/ocellus
echo "== the appliance: static binary, systemd unit, .deb install, upgrade, remove, purge"
tests/package/run.sh
