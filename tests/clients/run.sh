#!/usr/bin/env bash
# Client-compatibility smoke test: runs the real OpenStack python clients
# (glanceclient, openstackclient, openstacksdk) against freshly started
# ocellus servers, twice:
#   1. lab mode (no authentication, plain http): the seed flows end to end,
#      and interoperable image import with each client: glance-direct, and
#      web-download from a loopback web server (python's http.server) that
#      the server is allowed to reach with --web-download-allow
#      (seed_flows.py);
#   2. API keys over https (auth = "keys", a server certificate signed by a
#      test CA from examples/test_cert.rs): keys provisioned with `ocellus
#      key` before the server starts, the clients authenticating through its
#      Keystone-compatible endpoint, and `ocellus key` against the running
#      server (keys_flows.py);
#   3. with OCELLUS_S3_ENV set (the s3.env of tests/s3/ceph-rgw.sh or
#      garage.sh): lab mode with two stores, the data directory `fs` and a
#      bucket `ceph` on that engine: uploads to a chosen store, copy-image
#      and store deletes with each client (stores_flows.py).
# The exit status is non-zero if any run failed.
#
# Usage: tests/clients/run.sh PATH_TO_OCELLUS_BINARY
#
# Needs qemu-img, curl and cargo (which builds and runs the test_cert
# example in the repository).
#
# Environment:
#   OCELLUS_PYENV  venv holding the pinned clients (default: target/pyenv in
#                  the repository); created and filled on first use.
#   PYTHON         interpreter used to create that venv (default: python3.11
#                  if present, else python3).
#   OCELLUS_LOG    passed on to the servers, for more verbose logs.
#   OCELLUS_S3_ENV an s3.env file of a running S3 engine: adds run 3. Every
#                  other OCELLUS_* variable is ignored.
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
if ! command -v cargo >/dev/null; then
    echo "error: cargo is required to make the test certificates (examples/test_cert.rs)" >&2
    exit 2
fi

# Install the pinned clients once (tests/pinned-venv.sh).
source "$root/tests/pinned-venv.sh"
pinned_venv "$pyenv" "$requirements" clients

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ocellus-clients.XXXXXX")
# The runs are sequential, so one server runs at a time: its pid, and its
# log while its run is in progress. failed_logs collects the logs of the
# runs whose flows failed. web_pid is the loopback web server of the lab
# run, the source of its web-download imports.
server_pid=
web_pid=
current_log=
failed_logs=()

stop_server() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=
}

stop_web_server() {
    if [[ -n $web_pid ]] && kill -0 "$web_pid" 2>/dev/null; then
        kill "$web_pid" 2>/dev/null || true
        wait "$web_pid" 2>/dev/null || true
    fi
    web_pid=
}

# The servers are stopped and the scratch space removed however the script
# ends; server logs are only shown when something went wrong, because that
# is when they explain the failure: the logs of the runs whose flows failed,
# and that of the run in progress if the script stopped in its middle.
cleanup() {
    local rc=$? log
    stop_server
    stop_web_server
    if [[ $rc -ne 0 ]]; then
        for log in "${failed_logs[@]}" ${current_log:+"$current_log"}; do
            [[ -f $log ]] || continue
            echo "---- server log ($log) ----" >&2
            cat "$log" >&2
            echo "---- end of server log ----" >&2
        done
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
free_port() {
    "$pyenv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to 10 s for the web server just started ($web_pid) to serve URL.
wait_for_web_server() {
    local url=$1
    for _ in $(seq 100); do
        if curl -sf --max-time 2 -o /dev/null "$url"; then
            echo "web server up at $url (pid $web_pid)" >&2
            return 0
        fi
        if ! kill -0 "$web_pid" 2>/dev/null; then
            echo "error: web server exited before serving $url" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "error: web server did not serve $url within 10 s" >&2
    return 1
}

# Waits up to 10 s for the server just started ($server_pid) to answer
# URL/versions, which needs no credential in any mode; further arguments go
# to curl (--cacert for https).
wait_for_server() {
    local url=$1
    shift
    for _ in $(seq 100); do
        if curl -sf --max-time 2 -o /dev/null "$@" "$url/versions"; then
            echo "server up at $url (pid $server_pid)" >&2
            return 0
        fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "error: server exited before answering $url/versions" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "error: server did not answer $url/versions within 10 s" >&2
    return 1
}

# Settings the server and `ocellus key` would take from the environment are
# cleared, so a developer's shell cannot switch a run to another mode,
# config, server or admin key; OCELLUS_LOG is kept on purpose to allow more
# verbose server logs.
s3_env=${OCELLUS_S3_ENV:-}
for var in $(compgen -e); do
    if [[ $var == OCELLUS_* && $var != OCELLUS_LOG ]]; then
        unset "$var"
    fi
done

status=0

# ---- Run 1: lab mode, plain http ----

echo "== lab mode (auth = none, http): seed_flows.py"

# The source of the web-download imports: the test image on a loopback web
# server, alone in a directory so that nothing else in $tmp is served. Its
# log (one line per request) goes with the server's if the flows fail.
web_port=$(free_port)
web_url=http://127.0.0.1:$web_port/image.qcow2
web_log=$tmp/web-server.log
mkdir -p "$tmp/web"
cp "$image" "$tmp/web/image.qcow2"
"$pyenv/bin/python" -m http.server --bind 127.0.0.1 --directory "$tmp/web" "$web_port" >"$web_log" 2>&1 &
web_pid=$!
wait_for_web_server "$web_url" || exit 1

port=$(free_port)
url=http://127.0.0.1:$port
mkdir -p "$tmp/data"
current_log=$tmp/server.log
# web-download refuses loopback addresses unless allowed, as a deployment
# must not let users make it fetch from its own host; here that host is
# where the image is served.
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$tmp/data" \
    --web-download-allow 127.0.0.1/32 >"$current_log" 2>&1 &
server_pid=$!
wait_for_server "$url" || exit 1

if ! "$pyenv/bin/python" "$here/seed_flows.py" "$url" "$image" --web-url "$web_url"; then
    status=1
    failed_logs+=("$current_log" "$web_log")
fi
stop_server
stop_web_server
current_log=

# ---- Run 2: API keys, https ----

echo "== API keys (auth = keys, https): keys_flows.py"

# A CA, and a server certificate for localhost and 127.0.0.1 signed by it:
# the clients are given the CA, as they would a real deployment's.
tls=$tmp/tls
(cd "$root" && cargo run --quiet --locked --example test_cert -- "$tls")

# The settings go in a file because `ocellus key` has no TLS flags: it reads
# listen, data_dir and tls_cert from the server's file to find the running
# server's admin endpoint and to know that it speaks https. The paths are
# TOML literal strings, which need no escaping but cannot hold a quote.
if [[ $tmp == *"'"* ]]; then
    echo "error: the scratch directory $tmp has a single quote in its path" >&2
    exit 2
fi
keys_port=$(free_port)
keys_url=https://127.0.0.1:$keys_port
config=$tmp/keys.toml
cat >"$config" <<TOML
# ocellus settings for the API-key run of tests/clients/run.sh
listen = "127.0.0.1:$keys_port"
data_dir = '$tmp/keys-data'
auth = "keys"
tls_cert = '$tls/server.pem'
tls_key = '$tls/server.key'
TOML

# Keys are provisioned before the first start, by the CLI opening the data
# directory itself (the stopped-server path): an admin key (only admins may
# publish images or manage keys) and a member key of another project. As
# keys exist, the server writes no bootstrap admin key, so keys_flows.py
# gives `ocellus key` the admin key explicitly. The JSON files hold the
# secrets; $tmp is readable by its owner only.
mkdir -p "$tmp/keys"
"$bin" key create --config "$config" --project admin --role admin --name ci-admin --json >"$tmp/keys/admin.json"
"$bin" key create --config "$config" --project alpha --role member --name ci-member --json >"$tmp/keys/member.json"

current_log=$tmp/keys-server.log
"$bin" serve --config "$config" >"$current_log" 2>&1 &
server_pid=$!
wait_for_server "$keys_url" --cacert "$tls/ca.pem" || exit 1

if ! "$pyenv/bin/python" "$here/keys_flows.py" "$keys_url" "$image" \
    --cacert "$tls/ca.pem" \
    --config "$config" \
    --ocellus "$bin" \
    --admin-key "$tmp/keys/admin.json" \
    --member-key "$tmp/keys/member.json"; then
    status=1
    failed_logs+=("$current_log")
fi
stop_server
current_log=

# ---- Run 3: two stores, one of them a bucket on a real S3 engine ----

if [[ -n $s3_env ]]; then
    echo "== multiple stores (fs + an S3 bucket, lab mode): stores_flows.py"
    s3_value() { sed -n "s/^$1=//p" "$s3_env" | head -n 1; }
    printf '%s\n' "$(s3_value S3_ACCESS_KEY)" >"$tmp/s3.access"
    printf '%s\n' "$(s3_value S3_SECRET_KEY)" >"$tmp/s3.secret"
    stores_port=$(free_port)
    stores_url=http://127.0.0.1:$stores_port
    stores_config=$tmp/stores.toml
    cat >"$stores_config" <<TOML
# ocellus settings for the multiple-stores run of tests/clients/run.sh
listen = "127.0.0.1:$stores_port"
data_dir = '$tmp/stores-data'
default_store = "fs"

[stores.fs]
type = "file"
description = "the data directory"

[stores.ceph]
type = "s3"
description = "a bucket on the test cluster"
endpoint = "$(s3_value S3_ENDPOINT)"
bucket = "$(s3_value S3_BUCKET)"
region = "$(s3_value S3_REGION)"
prefix = "clients-$$-$RANDOM/"
access_key_file = '$tmp/s3.access'
secret_key_file = '$tmp/s3.secret'
removal_grace = "5s"
TOML
    current_log=$tmp/stores-server.log
    "$bin" serve --config "$stores_config" >"$current_log" 2>&1 &
    server_pid=$!
    wait_for_server "$stores_url" || exit 1
    if ! "$pyenv/bin/python" "$here/stores_flows.py" "$stores_url" "$image"; then
        status=1
        failed_logs+=("$current_log")
    fi
    stop_server
    current_log=
else
    echo "== multiple stores: skipped (OCELLUS_S3_ENV is not set; see tests/s3/README.md)"
fi

exit "$status"
