#!/usr/bin/env bash
# Client-compatibility smoke test: runs the real OpenStack python clients
# (glanceclient, openstackclient, openstacksdk) against a freshly started
# ocellus server and checks the seed flows end to end.
#
# Usage: tests/clients/run.sh PATH_TO_OCELLUS_BINARY
#
# Environment:
#   OCELLUS_PYENV  venv holding the pinned clients (default: target/pyenv in
#                  the repository); created and filled on first use.
#   PYTHON         interpreter used to create that venv (default: python3.11
#                  if present, else python3).
set -euo pipefail

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
root=$(cd "$here/../.." && pwd)
requirements=$here/requirements.txt

# A relative OCELLUS_PYENV is taken from the repository root so the script
# behaves the same from any working directory.
pyenv=${OCELLUS_PYENV:-target/pyenv}
[[ $pyenv == /* ]] || pyenv=$root/$pyenv

for tool in qemu-img curl; do
    if ! command -v "$tool" >/dev/null; then
        echo "error: $tool is required (apt-get install qemu-utils curl)" >&2
        exit 2
    fi
done

# Install the pinned clients once; the stamp holds the hash of the
# requirements and the interpreter version, so editing the pins or
# recreating the venv with another Python triggers a reinstall and an
# unchanged setup costs nothing.
if [[ -z ${PYTHON:-} ]]; then
    if command -v python3.11 >/dev/null; then PYTHON=python3.11; else PYTHON=python3; fi
fi
if [[ ! -x $pyenv/bin/python ]]; then
    echo "creating venv in $pyenv" >&2
    "$PYTHON" -m venv "$pyenv"
fi
stamp=$pyenv/.ocellus-requirements.stamp
want=$( { sha256sum <"$requirements"; "$pyenv/bin/python" -VV; } | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "installing pinned clients into $pyenv" >&2
    start=$SECONDS
    "$pyenv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "installed in $((SECONDS - start)) s" >&2
    echo "$want" >"$stamp"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ocellus-clients.XXXXXX")
server_pid=

# The server is stopped and the scratch space removed however the script
# ends; the server log is only shown when something went wrong, because
# that is when it explains the failure.
cleanup() {
    local rc=$?
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [[ $rc -ne 0 && -f $tmp/server.log ]]; then
        echo "---- server log ($tmp/server.log) ----" >&2
        cat "$tmp/server.log" >&2
        echo "---- end of server log ----" >&2
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A real qcow2 with non-zero data in it: a 64 MiB virtual disk with 4 MiB of
# random bytes at the start and 1 MiB more in the middle, so the upload is
# several MiB, not all zeros, and different on every run. qemu-io writes
# straight into the qcow2; without it (or without its -s option) the same
# layout is built as a sparse raw file and converted.
image=$tmp/cirros.img
head -c $((4 * 1024 * 1024)) /dev/urandom >"$tmp/random.bin"
if command -v qemu-io >/dev/null && qemu-io -c 'help write' 2>/dev/null | grep -q -- '-s source_file'; then
    qemu-img create -q -f qcow2 "$image" 64M
    qemu-io -f qcow2 -c "write -q -s $tmp/random.bin 0 4M" -c "write -q -s $tmp/random.bin 32M 1M" "$image" >/dev/null
else
    raw=$tmp/cirros.raw
    truncate -s 64M "$raw"
    dd if="$tmp/random.bin" of="$raw" bs=1M count=4 conv=notrunc status=none
    dd if="$tmp/random.bin" of="$raw" bs=1M count=1 seek=32 conv=notrunc status=none
    qemu-img convert -f raw -O qcow2 "$raw" "$image"
    rm -f "$raw"
fi
rm -f "$tmp/random.bin"
qemu-img check -q "$image"

# Binding port 0 lets the kernel pick a free port; it is released right
# away for the server to take, which is racy only against other processes
# grabbing ports in the same instant.
port=$("$pyenv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port

# Settings the server would take from the environment are cleared so a
# developer's shell cannot switch the test off lab mode or onto another
# config; OCELLUS_LOG is kept on purpose to allow more verbose server logs.
unset OCELLUS_CONFIG OCELLUS_AUTH OCELLUS_DEFAULT_PROJECT OCELLUS_IMAGE_SIZE_CAP OCELLUS_LISTEN OCELLUS_DATA_DIR

mkdir -p "$tmp/data"
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$tmp/data" >"$tmp/server.log" 2>&1 &
server_pid=$!

for _ in $(seq 100); do
    if curl -sf --max-time 2 -o /dev/null "$url/versions"; then
        break
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "error: server exited before answering $url/versions" >&2
        exit 1
    fi
    sleep 0.1
done
if ! curl -sf --max-time 2 -o /dev/null "$url/versions"; then
    echo "error: server did not answer $url/versions within 10 s" >&2
    exit 1
fi
echo "server up at $url (pid $server_pid)" >&2

set +e
"$pyenv/bin/python" "$here/seed_flows.py" "$url" "$image"
status=$?
set -e
exit "$status"
