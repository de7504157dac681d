#!/usr/bin/env bash
# Runs the system tests against one ocellus binary and fails if any
# fails: full_disk.py (needs root and a loop device, else it prints SKIP and
# passes), crash_loop.py (default cycles, or $OCELLUS_CRASH_CYCLES), crowd.py
# (default crowd: 300 uploads, 600 downloads, 20 s), shutdown.py (systemd notify
# and SIGTERM during uploads), sparse_nbd.py (a 4 GiB image with 64 MiB of data
# copied over NBD by nbdcopy and qemu-img, sparse and fast), boot_nbd.py (QEMU
# boots a qcow2 image and its raw view straight from nbd://).
#
# Usage: tests/system/run.sh PATH_TO_OCELLUS_BINARY
set -uo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 PATH_TO_OCELLUS_BINARY" >&2
    exit 2
fi
if [[ ! -x $1 ]]; then
    echo "error: $1 is not an executable file" >&2
    exit 2
fi
bin=$(realpath "$1")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -z ${PYTHON:-} ]]; then
    if command -v python3.11 >/dev/null; then PYTHON=python3.11; else PYTHON=python3; fi
fi

failed=()
for test in full_disk crash_loop crowd shutdown sparse_nbd boot_nbd; do
    echo "== $test"
    start=$SECONDS
    # Each test bounds its own steps; the outer limit only catches a hang.
    if timeout --kill-after=30 1800 "$PYTHON" "$here/$test.py" "$bin"; then
        echo "== $test passed ($((SECONDS - start)) s)"
    else
        echo "== $test FAILED ($((SECONDS - start)) s)"
        failed+=("$test")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
echo "all system tests passed"
