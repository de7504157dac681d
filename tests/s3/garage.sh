#!/usr/bin/env bash
# garage.sh: a real 3-node Garage cluster (S3-compatible, replication 3) on loopback, for tests.
#
# Usage:
#   tests/s3/garage.sh up DIR           install the binary if missing, start 3 nodes, connect them,
#                                       apply a layout (3 replicas), make an S3 key and bucket, prove a
#                                       PUT/GET round trip, write DIR/s3.env
#   tests/s3/garage.sh down DIR         stop every node of DIR (SIGTERM, bounded wait, then SIGKILL);
#                                       succeeds when nothing runs; keeps DIR (rm -rf it yourself)
#   tests/s3/garage.sh status DIR       per-node pid and ports, cluster health, `garage status`
#   tests/s3/garage.sh check DIR        S3 check: GET the object `up` left (bytes compared), then a
#                                       fresh PUT, GET (compared) and DELETE
#   tests/s3/garage.sh kill-node DIR N  SIGKILL node N (1-3), then wait until every running node sees
#                                       it down
#   tests/s3/garage.sh start-node DIR N start node N again, wait until every running node sees every
#                                       running node up (after `down`, start-node 1, 2, 3 restarts the
#                                       whole cluster with its data)
#   tests/s3/garage.sh stop-s3 DIR      stop node 1, the node behind S3_ENDPOINT (the engine "down"
#                                       for S3 clients); nodes 2 and 3 keep running
#   tests/s3/garage.sh start-s3 DIR     start node 1 again on the same ports, wait until S3_ENDPOINT
#                                       serves the probe object
#
# What `up` starts, as plain processes (no systemd), each `garage -c DIR/nodeN/garage.toml server`:
#   3 nodes, one zone, 1 GB capacity each, `replication_factor = 3`, `consistency_mode =
#   "consistent"`: every object is on all 3 nodes and reads and writes need 2 of them, so one node
#   may be down and S3 goes on (PUT/GET work right after the SIGKILL); with two down, every request
#   fails at once with HTTP 503 ServiceUnavailable ("Could not reach quorum of 2"), none hangs.
#   Metadata in LMDB (Garage's default engine; the crate builds it, and SQLite, from bundled
#   sources: no system library needed). Each node has its metadata (DIR/nodeN/meta), data blocks
#   (DIR/nodeN/data) and config under DIR/nodeN; logs in DIR/log, pid files in DIR/run. Every
#   node listens on 127.0.0.1 only, on free ports picked at start: RPC (rpc_bind_addr) and S3
#   (api_bind_addr); no admin, web or K2V endpoint. Every node serves S3 (ports in its
#   garage.toml); S3_ENDPOINT is node 1's. The `garage` CLI talks to a node
#   over RPC (rpc_secret from the config), so `garage -c DIR/nodeN/garage.toml status` needs node N
#   running: with node 1 down, use node 2's config. After the layout is applied each config lists
#   the other two as bootstrap_peers, so a restarted node rejoins at once; start-node also has the
#   others connect to it (Garage otherwise retries a lost peer only every 30 s, and until then they
#   count it down). Deleted objects' blocks stay on disk until Garage's block GC (about 10 min).
#
# DIR/s3.env, for the tests (shell syntax, KEY=VALUE):
#   S3_ENDPOINT=http://127.0.0.1:PORT  S3_ACCESS_KEY=GK...  S3_SECRET_KEY=...  S3_BUCKET=...
#   S3_REGION=garage  GARAGE_CONFIG=DIR/node1/garage.toml, and GARAGE_CONFIG_FILE (the same path:
#   the variable the garage CLI reads, so `garage status` just works after sourcing it).
#   Path-style addressing, plain HTTP, AWS SigV4; the region in the signature must be `garage`.
#
# Install (when `up` finds no binary): GARAGE_BIN if set; else DIR/../garage-bin/garage; else
# $HOME/.cargo/bin/garage; else `nice -n 19 cargo install garage --version $GARAGE_VERSION --locked`
# with CARGO_BUILD_JOBS=1 into DIR/../garage-bin (kept there for the next `up`; a lock file keeps two
# builds from running at once). Needs cargo (Rust 1.95 builds 2.5.0) and crates.io.
#
# Cost, measured on a 2-core Debian 12 machine (Garage 2.5.0, Rust 1.95): the build 21 min 13 s
# (once; 286 crates, nice 19, 1 job, while a Ceph cluster ran beside it; a 56 MB binary needing only
# libc); bring-up 6-12 s (nodes answer 2 s, connected 4.5 s, layout applied and healthy 6-7 s, more
# when the cores are busy); about 108 MiB RSS in all right after bring-up (node 1 ~44 MiB, the
# others ~32 MiB), 112 MiB after a few hundred requests; 5 MB of disk (3 copies of the 1 MiB probe
# plus metadata). `down` takes 2-5 s; kill-node sees every node agree in 2-15 s (Garage's ping
# failure detection); start-node has the cluster healthy again in 1-2 s; stop-s3 and start-s3 take
# 1.5-3 s each.
#
# Environment variables honoured:
#   GARAGE_BIN                path of the garage binary to use (no install)
#   GARAGE_VERSION            version that `up` builds when it must (default 2.5.0)
#   GARAGE_TIMEOUT            seconds each wait may take before failing (default 180)
#   GARAGE_INSTALL_TIMEOUT    seconds the build may take (default 5400)
#   GARAGE_S3_PORT            node 1's S3 port, i.e. S3_ENDPOINT's (default: a free one)
#   GARAGE_BUCKET             bucket name (default ocellus)
#   GARAGE_DB_ENGINE          metadata engine, lmdb or sqlite (default lmdb)
#   GARAGE_NO_INSTALL=1       never build; fail if no binary is found
#   GARAGE_KEEP_ON_FAILURE=1  when `up` fails, leave the nodes running for inspection
#                             (by default a failed `up` stops what it started; DIR stays)
#
# Every wait is bounded and prints the relevant log tail when it times out. python3 (standard
# library only) signs the S3 requests and reads the CLI's JSON.

set -Eeuo pipefail

PROG=garage.sh
TIMEOUT=${GARAGE_TIMEOUT:-180}
INSTALL_TIMEOUT=${GARAGE_INSTALL_TIMEOUT:-5400}
VERSION=${GARAGE_VERSION:-2.5.0}
BUCKET=${GARAGE_BUCKET:-ocellus}
DB_ENGINE=${GARAGE_DB_ENGINE:-lmdb}
REGION=garage
NNODES=3
PROBE_KEY=garage-sh/probe.bin
# The garage CLI reads these; a value left in the caller's environment would redirect our commands.
unset GARAGE_CONFIG_FILE GARAGE_RPC_HOST GARAGE_RPC_SECRET GARAGE_RPC_SECRET_FILE \
    GARAGE_ADMIN_TOKEN GARAGE_ADMIN_TOKEN_FILE GARAGE_METRICS_TOKEN GARAGE_METRICS_TOKEN_FILE
export NO_COLOR=1

# shellcheck source=tests/s3/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# ---------------------------------------------------------------- paths and helpers
set_dir() {
    [ -n "${1:-}" ] || usage
    DIR=$(realpath -m -- "$1")
    RUN=$DIR/run
    LOGD=$DIR/log
    CACHE=$(dirname "$DIR")/garage-bin
}

conf_of() { echo "$DIR/node$1/garage.toml"; }
all_logs() { printf "$LOGD/node%s.log " $(seq 1 "$NNODES"); }

check_node_arg() {
    if ! [[ "$1" =~ ^[0-9]+$ ]] || (($1 < 1 || $1 > NNODES)); then die "node number must be 1..$NNODES, not '$1'"; fi
    [ -s "$(conf_of "$1")" ] || die "$DIR has no node $1 ($(conf_of "$1") missing)"
}

# garagec N ARGS...: the garage CLI against node N (over RPC), bounded.
garagec() {
    local n=$1
    shift
    timeout 60 "$GARAGE" -c "$(conf_of "$n")" "$@"
}

# live_pid N: print the pid of node N of DIR if it runs.
live_pid() {
    local pidf=$RUN/node$1.pid pid
    [ -s "$pidf" ] || return 1
    pid=$(tr -dc '0-9' <"$pidf")
    [ -n "$pid" ] && is_node_of "$pid" "$(conf_of "$1")" || return 1
    echo "$pid"
}

# is_node_of PID CONF: PID is a `garage ... -c CONF ... server` process (guards against reused pids).
is_node_of() {
    local args
    args=$(tr '\0' '\n' 2>/dev/null <"/proc/$1/cmdline") || return 1
    grep -qxF -- "$2" <<<"$args" && grep -qx -- server <<<"$args"
}

# All server processes whose command line names one of this DIR's node configs, even without a pid file.
dir_pids() {
    local p n
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        for ((n = 1; n <= NNODES; n++)); do
            if is_node_of "$p" "$(conf_of "$n")"; then
                echo "$p"
                break
            fi
        done
    done
    return 0
}

# Closes every descriptor above stderr in the current (sub)shell.
close_fds() {
    local fd
    for fd in "/proc/$BASHPID/fd/"*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
}

# start_node N: start node N in its own session, write its pid file, wait until its RPC answers.
start_node() {
    local n=$1 conf pid p
    conf=$(conf_of "$n")
    mkdir -p "$RUN" "$LOGD"
    echo "---- $(date -u +%FT%TZ) $PROG: starting node $n" >>"$LOGD/node$n.log"
    # The node must not inherit the caller's descriptors: a test harness that runs this under a
    # lock (flock) would otherwise see the lock held for as long as the node lives. setsid: a
    # signal to the caller's process group (a timeout, ^C) must not reach it.
    (
        close_fds
        cd "$DIR/node$n"
        exec setsid "$GARAGE" -c "$conf" server
    ) </dev/null >>"$LOGD/node$n.log" 2>&1 &
    pid=$!
    # setsid forks when it leads its process group; then find the server by its command line.
    if ! is_node_of "$pid" "$conf"; then
        sleep 0.2
        for p in $(dir_pids); do is_node_of "$p" "$conf" && pid=$p; done
    fi
    echo "$pid" >"$RUN/node$n.pid"
    NODE_FAILED=
    LOG_FROM=$(wc -l <"$LOGD/node$n.log")
    wait_for "node $n to answer over RPC" "$LOGD/node$n.log" node_answers "$n"
    if [ -n "$NODE_FAILED" ]; then
        tails "$LOGD/node$n.log"
        die "node $n: $NODE_FAILED"
    fi
}

# node_answers N: node N answers over RPC; or sets NODE_FAILED (and succeeds, to end the wait)
# when its log says a listener failed: Garage then logs an error and runs on without it.
node_answers() {
    NODE_FAILED=$(tail -n "+$LOG_FROM" "$LOGD/node$1.log" | grep -m 1 'server exited with error' | sed 's/.*ERROR //') || true
    [ -z "$NODE_FAILED" ] || return 0
    live_pid "$1" >/dev/null || return 1
    garagec "$1" node id -q >/dev/null 2>&1 || return 1
    garagec "$1" json-api GetClusterHealth >/dev/null 2>&1
}

# stop_node N SIGNAL: send SIGNAL to node N, wait (bounded) until it is gone, SIGKILL if need be.
stop_node() {
    local n=$1 sig=$2 p i
    p=$(live_pid "$n") || return 1
    kill "-$sig" "$p" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        [ -d "/proc/$p" ] || break
        sleep 0.1
    done
    if [ -d "/proc/$p" ]; then
        say "node $n (pid $p) still runs 15s after SIG$sig: SIGKILL" >&2
        kill -KILL "$p" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            [ -d "/proc/$p" ] || break
            sleep 0.1
        done
        [ ! -d "/proc/$p" ] || die "node $n (pid $p) survived SIGKILL"
    fi
    rm -f "$RUN/node$n.pid"
    echo "$p"
}

# health N: print node N's view of the cluster as "STATUS UP/TOTAL OK/PARTITIONS".
health() {
    garagec "$1" json-api GetClusterHealth 2>/dev/null | python3 -c 'import json, sys
h = json.load(sys.stdin)
print(h["status"], "%d/%d" % (h["storageNodesUp"], h["storageNodes"]),
      "%d/%d" % (h["partitionsAllOk"], h["partitions"]))'
}
# healthy N: node N is connected to all storage nodes and every partition has all its copies up.
healthy() {
    local h
    h=$(health "$1") || return 1
    [[ "$h" == "healthy $NNODES/$NNODES "* ]] && [ "${h##* }" = "256/256" ]
}
# first_live_node: the lowest-numbered running node (for CLI commands).
first_live_node() {
    local n
    for ((n = 1; n <= NNODES; n++)); do
        live_pid "$n" >/dev/null && { echo "$n"; return 0; }
    done
    return 1
}

load_env() {
    [ -s "$DIR/s3.env" ] || die "$DIR/s3.env not found: no cluster was brought up in $DIR"
    set -a
    # shellcheck disable=SC1091
    . "$DIR/s3.env"
    set +a
    unset GARAGE_CONFIG_FILE
}

rss_summary() { # "node1 12 MiB, ..., total N MiB"
    local n p kb total=0 out=""
    for ((n = 1; n <= NNODES; n++)); do
        p=$(live_pid "$n") || continue
        kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
        total=$((total + kb))
        out+="node$n $((kb / 1024)) MiB, "
    done
    echo "${out}total $((total / 1024)) MiB"
}

# ---------------------------------------------------------------- S3 client (SigV4, standard library)
# s3 OP ARGS...: uses S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET, S3_REGION.
#   ready                       the endpoint answers HTTP at all (anonymous GET /; Garage says 403)
#   put KEY FILE | get KEY FILE (compares the bytes with FILE) | delete KEY
s3() {
    python3 - "$@" <<'PY'
import datetime, hashlib, hmac, http.client, os, sys, time, urllib.parse

op, args = sys.argv[1], sys.argv[2:]
url = urllib.parse.urlsplit(os.environ["S3_ENDPOINT"])
host, port = url.hostname, url.port or 80


def request(method, path, body=b""):
    payload_hash = hashlib.sha256(body).hexdigest()
    t = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = t.strftime("%Y%m%dT%H%M%SZ"), t.strftime("%Y%m%d")
    headers = {"host": url.netloc, "x-amz-date": amz_date, "x-amz-content-sha256": payload_hash}
    uri = urllib.parse.quote(path, safe="/-_.~")
    if op != "ready":
        region, ak, sk = os.environ["S3_REGION"], os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"]
        names = sorted(headers)
        canonical = "\n".join([method, uri, "", "".join(f"{k}:{headers[k]}\n" for k in names),
                               ";".join(names), payload_hash])
        scope = f"{day}/{region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + sk).encode()
        for part in (day, region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={ak}/{scope}, "
                                    f"SignedHeaders={';'.join(names)}, Signature={sig}")
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request(method, uri, body=body if method == "PUT" else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def fail(what, status, data):
    sys.exit(f"S3 {what}: HTTP {status}: {data[:300].decode(errors='replace')}")


bucket = os.environ.get("S3_BUCKET", "")
t0 = time.monotonic()
try:
    if op == "ready":
        status, data = request("GET", "/")
        sys.exit(0 if 200 <= status < 500 else 1)
except OSError:
    sys.exit(1)
_request = request


def request(*a):
    try:
        return _request(*a)
    except OSError as e:
        sys.exit(f"S3 {op} {' '.join(args[:1])}: {os.environ['S3_ENDPOINT']}: {e}")


if op == "put":
    body = open(args[1], "rb").read()
    status, data = request("PUT", f"/{bucket}/{args[0]}", body)
    if status != 200:
        fail(f"PUT {args[0]}", status, data)
    print(f"PUT {args[0]}: {len(body)} bytes, HTTP {status}, {time.monotonic() - t0:.2f}s")
elif op == "get":
    want = open(args[1], "rb").read()
    status, data = request("GET", f"/{bucket}/{args[0]}")
    if status != 200:
        fail(f"GET {args[0]}", status, data)
    if data != want:
        sys.exit(f"S3 GET {args[0]}: {len(data)} bytes differ from the {len(want)} bytes PUT")
    print(f"GET {args[0]}: {len(data)} bytes, identical, {time.monotonic() - t0:.2f}s")
elif op == "delete":
    status, data = request("DELETE", f"/{bucket}/{args[0]}")
    if status not in (200, 204):
        fail(f"DELETE {args[0]}", status, data)
    print(f"DELETE {args[0]}: HTTP {status}")
else:
    sys.exit(f"unknown s3 op {op}")
PY
}

# ---------------------------------------------------------------- install
# Sets GARAGE to a runnable garage binary, building it into $CACHE when none is found.
find_garage() {
    local c
    if [ -n "${GARAGE_BIN:-}" ]; then
        [ -x "$GARAGE_BIN" ] || die "GARAGE_BIN=$GARAGE_BIN is not an executable file"
        GARAGE=$GARAGE_BIN
        return 0
    fi
    for c in "$CACHE/garage" "${HOME:-/nonexistent}/.cargo/bin/garage"; do
        if [ -x "$c" ]; then
            GARAGE=$c
            return 0
        fi
    done
    return 1
}

ensure_garage() {
    find_garage && return 0
    [ "${GARAGE_NO_INSTALL:-}" != 1 ] || die "no garage binary (GARAGE_BIN, $CACHE/garage, ~/.cargo/bin/garage) and GARAGE_NO_INSTALL=1"
    command -v cargo >/dev/null 2>&1 || die "no garage binary and no cargo to build one; set GARAGE_BIN"
    mkdir -p "$CACHE"
    local t0 log=$CACHE/install.log pid rc last i=0
    # One build at a time per cache; a second `up` waits for the first one's binary.
    exec 9>"$CACHE/.lock"
    if ! flock -n 9; then
        say "waiting for $CACHE/.lock: another up is building garage"
        flock -w "$INSTALL_TIMEOUT" 9 || die "could not take $CACHE/.lock in ${INSTALL_TIMEOUT}s"
    fi
    if [ -x "$CACHE/garage" ]; then
        exec 9>&-
        GARAGE=$CACHE/garage
        return 0
    fi
    t0=$(now)
    say "building garage $VERSION from crates.io into $CACHE (nice 19, 1 job; about 15-20 min on 2 idle cores); log: $log"
    (
        close_fds
        exec nice -n 19 env CARGO_BUILD_JOBS=1 CARGO_TARGET_DIR="$CACHE/target" \
            timeout "$INSTALL_TIMEOUT" cargo install garage --version "$VERSION" --locked --root "$CACHE/root"
    ) </dev/null >"$log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        sleep 2
        ((++i % 30 == 0)) || continue
        last=$(grep -a 'Compiling' "$log" | tail -n 1 | sed 's/^ *//') || true
        say "still building ($(since "$t0")s, $(grep -ac 'Compiling' "$log" || true) of about 290 crates; ${last:-starting})"
    done
    rc=0
    wait "$pid" || rc=$?
    if [ "$rc" != 0 ] || [ ! -x "$CACHE/root/bin/garage" ]; then
        tails "$log"
        exec 9>&-
        die "cargo install garage $VERSION failed (status $rc)"
    fi
    install -m 755 "$CACHE/root/bin/garage" "$CACHE/garage.tmp"
    mv "$CACHE/garage.tmp" "$CACHE/garage"
    rm -rf "$CACHE/target" "$CACHE/root"
    exec 9>&-
    GARAGE=$CACHE/garage
    say "garage $VERSION built in $(since "$t0")s: $GARAGE"
}

need_garage() { find_garage || die "no garage binary found (GARAGE_BIN, $CACHE/garage, ~/.cargo/bin/garage)"; }

# ---------------------------------------------------------------- up
write_conf() { # write_conf N RPC_PORT S3_PORT SECRET [BOOTSTRAP_PEERS]
    local n=$1 rpc=$2 s3port=$3 secret=$4 peers=${5:-} d=$DIR/node$1
    mkdir -p "$d/meta" "$d/data"
    cat >"$d/garage.toml" <<EOF
# Written by tests/s3/garage.sh: node $n of a 3-node test cluster on loopback. Everything lives under $DIR.
metadata_dir = "$d/meta"
data_dir = "$d/data"
db_engine = "$DB_ENGINE"

replication_factor = 3
consistency_mode = "consistent"

rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"
bootstrap_peers = [$peers]

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$s3port"
EOF
    chmod 600 "$d/garage.toml"
}

UP_DONE=0
on_up_exit() {
    [ "$UP_DONE" = 1 ] && return 0
    if [ "${GARAGE_KEEP_ON_FAILURE:-}" = 1 ]; then
        echo "$PROG: bring-up failed; nodes left running (GARAGE_KEEP_ON_FAILURE=1); logs in $LOGD" >&2
    else
        echo "$PROG: bring-up failed; stopping what was started (logs stay in $LOGD)" >&2
        do_down >&2 || true
    fi
}

do_up() {
    local t_all t0 pids secret n id ak sk json
    local -a ports ids=()
    t_all=$(now)
    [[ "$DB_ENGINE" =~ ^(lmdb|sqlite)$ ]] || die "GARAGE_DB_ENGINE must be lmdb or sqlite"
    pids=$(dir_pids | tr '\n' ' ')
    [ -z "$pids" ] || die "a cluster is already running in $DIR (pids: $pids); run '$0 down $DIR' first"
    if [ -e "$DIR/node1/garage.toml" ]; then
        die "$DIR holds a stopped cluster; remove it (rm -rf $DIR) or use another DIR"
    fi
    if [ -d "$DIR" ] && [ -n "$(ls -A "$DIR")" ]; then
        die "$DIR exists and is not empty; give an empty or new directory"
    fi
    command -v python3 >/dev/null 2>&1 || die "python3 is needed (S3 signing, JSON)"
    ensure_garage
    say "using $GARAGE ($("$GARAGE" --version 2>/dev/null | head -n 1 || echo 'version unknown'))"
    mkdir -p "$DIR" "$RUN" "$LOGD"
    trap on_up_exit EXIT

    t0=$(now)
    secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
    # 2 x NNODES distinct free ports: RPC then S3 for each node.
    read -r -a ports < <(python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))' $((2 * NNODES)))
    [ -z "${GARAGE_S3_PORT:-}" ] || ports[1]=$GARAGE_S3_PORT
    for ((n = 1; n <= NNODES; n++)); do
        write_conf "$n" "${ports[$((2 * n - 2))]}" "${ports[$((2 * n - 1))]}" "$secret"
    done
    for ((n = 1; n <= NNODES; n++)); do
        start_node "$n"
    done
    say "$NNODES nodes answer over RPC ($(since "$t0")s)"

    # Connect node 1 to the others (they learn of each other through it), assign the layout.
    for ((n = 1; n <= NNODES; n++)); do
        ids+=("$(garagec "$n" node id -q)")
    done
    for ((n = 2; n <= NNODES; n++)); do
        garagec 1 node connect "${ids[$((n - 1))]}" >"$LOGD/connect.out" 2>&1 \
            || { tails "$LOGD/connect.out"; die "node 1 could not connect to node $n"; }
    done
    STATE_CMD="garagec 1 status" wait_for "every node to see all $NNODES nodes" "$(all_logs)" \
        all_nodes_connected
    # The nodes read their config at start only: from now on a node that starts again finds the
    # others through bootstrap_peers at once. (Its saved peer_list is written once a minute, and
    # the others retry a lost peer every 30 s, so without this a restart takes up to 30 s to rejoin.)
    local peers m
    for ((n = 1; n <= NNODES; n++)); do
        peers=""
        for ((m = 1; m <= NNODES; m++)); do
            ((m == n)) || peers+="${peers:+, }\"${ids[$((m - 1))]}\""
        done
        write_conf "$n" "${ports[$((2 * n - 2))]}" "${ports[$((2 * n - 1))]}" "$secret" "$peers"
    done
    say "nodes connected ($(since "$t0")s)"
    for id in "${ids[@]}"; do
        garagec 1 layout assign -z loopback -c 1G "${id%%@*}" >>"$LOGD/layout.out" 2>&1 \
            || { tails "$LOGD/layout.out"; die "garage layout assign failed"; }
    done
    garagec 1 layout apply --version 1 >>"$LOGD/layout.out" 2>&1 \
        || { tails "$LOGD/layout.out"; die "garage layout apply failed"; }
    STATE_CMD="garagec 1 status" wait_for "every node to report the cluster healthy" "$(all_logs)" \
        all_healthy
    say "layout v1 applied (3 replicas, consistent), cluster healthy ($(since "$t0")s)"

    # S3 key and bucket, then a round trip
    json=$(garagec 1 json-api CreateKey '{"name": "ocellus-tests"}' 2>"$LOGD/key.err") \
        || { tails "$LOGD/key.err"; die "CreateKey failed"; }
    read -r ak sk < <(python3 -c 'import json, sys; k = json.loads(sys.argv[1]); print(k["accessKeyId"], k["secretAccessKey"])' "$json")
    garagec 1 bucket create "$BUCKET" >"$LOGD/bucket.out" 2>&1 \
        || { tails "$LOGD/bucket.out"; die "garage bucket create $BUCKET failed"; }
    garagec 1 bucket allow --read --write --owner "$BUCKET" --key "$ak" >>"$LOGD/bucket.out" 2>&1 \
        || { tails "$LOGD/bucket.out"; die "garage bucket allow failed"; }
    cat >"$DIR/s3.env.tmp" <<EOF
S3_ENDPOINT=http://127.0.0.1:${ports[1]}
S3_ACCESS_KEY=$ak
S3_SECRET_KEY=$sk
S3_BUCKET=$BUCKET
S3_REGION=$REGION
GARAGE_CONFIG=$(conf_of 1)
GARAGE_CONFIG_FILE=$(conf_of 1)
EOF
    chmod 600 "$DIR/s3.env.tmp"
    mv "$DIR/s3.env.tmp" "$DIR/s3.env"
    load_env
    wait_for "S3 to answer on $S3_ENDPOINT" "$LOGD/node1.log" s3 ready
    head -c 1048576 /dev/urandom >"$DIR/probe.bin"
    s3 put "$PROBE_KEY" "$DIR/probe.bin"
    s3 get "$PROBE_KEY" "$DIR/probe.bin"

    UP_DONE=1
    trap - EXIT
    say "bring-up took $(since "$t_all")s; S3 on $S3_ENDPOINT, bucket $BUCKET; settings in $DIR/s3.env"
    say "RSS: $(rss_summary)"
}

all_nodes_connected() {
    local n
    for ((n = 1; n <= NNODES; n++)); do
        garagec "$n" json-api GetClusterStatus 2>/dev/null | python3 -c 'import json, sys
s = json.load(sys.stdin); sys.exit(0 if sum(1 for x in s["nodes"] if x["isUp"]) >= int(sys.argv[1]) else 1)' "$NNODES" \
            || return 1
    done
}
all_healthy() {
    local n
    for ((n = 1; n <= NNODES; n++)); do healthy "$n" || return 1; done
}

# ---------------------------------------------------------------- down
do_down() {
    local t0 pids p n left i
    t0=$(now)
    if [ ! -d "$DIR" ]; then
        say "$DIR does not exist: nothing to stop"
        return 0
    fi
    for ((n = 1; n <= NNODES; n++)); do
        p=$(live_pid "$n") || continue
        kill -TERM "$p" 2>/dev/null || true
    done
    # Anything of this DIR without a (valid) pid file gets the same treatment.
    pids=$(dir_pids | tr '\n' ' ')
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
    left=$pids
    for ((i = 0; i < 60; i++)); do
        left=$(dir_pids | tr '\n' ' ')
        [ -z "$left" ] && break
        sleep 0.5
    done
    if [ -n "$left" ]; then
        say "still running after 30s, sending SIGKILL: $left"
        for p in $left; do kill -KILL "$p" 2>/dev/null || true; done
        for ((i = 0; i < 10; i++)); do
            left=$(dir_pids | tr '\n' ' ')
            [ -z "$left" ] && break
            sleep 1
        done
        [ -z "$left" ] || die "processes of $DIR survived SIGKILL: $left"
    fi
    rm -f "$RUN"/node*.pid 2>/dev/null || true
    say "stopped: no node of $DIR is running ($(since "$t0")s)"
}

# ---------------------------------------------------------------- status
do_status() {
    local n p rpc s3port live
    need_garage
    for ((n = 1; n <= NNODES; n++)); do
        [ -s "$(conf_of "$n")" ] || continue
        rpc=$(sed -n 's/^rpc_bind_addr = "\(.*\)"$/\1/p' "$(conf_of "$n")")
        s3port=$(sed -n 's/^api_bind_addr = "\(.*\)"$/\1/p' "$(conf_of "$n")")
        if p=$(live_pid "$n"); then
            say "node $n: pid $p, rpc $rpc, s3 http://$s3port, health $(health "$n" 2>/dev/null || echo '(no answer)')"
        else
            say "node $n: not running (rpc $rpc, s3 http://$s3port)"
        fi
    done
    live=$(first_live_node) || die "no node of $DIR is running"
    garagec "$live" status
}

# ---------------------------------------------------------------- node faults
do_kill_node() {
    local n=$1 p t0
    check_node_arg "$n"
    need_garage
    live_pid "$n" >/dev/null || die "node $n of $DIR is not running"
    t0=$(now)
    p=$(stop_node "$n" KILL)
    say "node $n (pid $p) killed with SIGKILL"
    first_live_node >/dev/null || { say "no node left running"; return 0; }
    STATE_CMD=status_lines wait_for "every running node to see node $n down" "$(all_logs)" views_agree
    say "every running node sees node $n down after $(since "$t0")s"
    status_lines
}

# node_id N: node N's full id (read from its metadata dir: works with the node down).
node_id() { garagec "$1" node id -q 2>/dev/null; }

# views_agree: every running node sees exactly the running nodes as up.
views_agree() {
    local n m live=() want=()
    for ((n = 1; n <= NNODES; n++)); do
        if live_pid "$n" >/dev/null; then live+=("$n"); want+=("$(node_id "$n" | cut -d@ -f1)"); fi
    done
    for m in "${live[@]}"; do
        garagec "$m" json-api GetClusterStatus 2>/dev/null | python3 -c 'import json, sys
s = json.load(sys.stdin); want = set(sys.argv[1:])
up = {x["id"] for x in s["nodes"] if x["isUp"]}
sys.exit(0 if up == want else 1)' "${want[@]}" || return 1
    done
}

# rejoin N: make every other running node connect to node N now. A node that was down is seen
# up again by a peer only once that peer's own connection attempt succeeds, and Garage retries a
# lost peer every 30 s (then once a minute after 10 failures): without this, the restarted node
# sees everyone at once while the others keep treating it as down for up to a minute.
rejoin() {
    local n=$1 m id
    id=$(node_id "$n") || die "cannot read node $n's id"
    for ((m = 1; m <= NNODES; m++)); do
        if ((m == n)) || ! live_pid "$m" >/dev/null; then continue; fi
        garagec "$m" node connect "$id" >/dev/null 2>&1 || say "node $m could not connect to node $n yet (will retry)"
    done
}

status_lines() {
    local n p
    for ((n = 1; n <= NNODES; n++)); do
        if p=$(live_pid "$n"); then
            say "node $n: pid $p, health $(health "$n" 2>/dev/null || echo '(no answer)')"
        else
            say "node $n: not running"
        fi
    done
}

do_start_node() {
    local n=$1 p t0
    check_node_arg "$n"
    need_garage
    if p=$(live_pid "$n"); then die "node $n of $DIR is already running (pid $p)"; fi
    t0=$(now)
    start_node "$n"
    rejoin "$n"
    STATE_CMD=status_lines wait_for "every running node to see every running node up" "$(all_logs)" \
        rejoined "$n"
    say "node $n back after $(since "$t0")s"
    status_lines
}

# rejoined N: views agree; connect again to node N while they do not (its listener may have been late).
rejoined() { views_agree || { rejoin "$1" >/dev/null; return 1; }; }

# ---------------------------------------------------------------- S3 endpoint faults
do_stop_s3() {
    local p
    need_garage
    live_pid 1 >/dev/null || die "node 1 of $DIR (S3_ENDPOINT) is not running"
    p=$(stop_node 1 TERM)
    say "node 1 (pid $p, S3_ENDPOINT) stopped; nodes 2 and 3 keep running and hold the quorum"
}

do_start_s3() {
    local p t0
    need_garage
    if p=$(live_pid 1); then die "node 1 of $DIR is already running (pid $p)"; fi
    load_env
    t0=$(now)
    start_node 1
    rejoin 1
    STATE_CMD=status_lines wait_for "every running node to see every running node up" "$(all_logs)" \
        rejoined 1
    wait_for "S3 to answer on $S3_ENDPOINT" "$LOGD/node1.log" s3 ready
    wait_for "S3 GET of the probe object on $S3_ENDPOINT" "$LOGD/node1.log" s3 get "$PROBE_KEY" "$DIR/probe.bin"
    say "S3_ENDPOINT answers again after $(since "$t0")s"
    status_lines
}

do_check() {
    load_env
    [ -s "$DIR/probe.bin" ] || die "$DIR/probe.bin missing"
    s3 get "$PROBE_KEY" "$DIR/probe.bin" || die "S3 check failed against $S3_ENDPOINT"
    local tmp key
    tmp=$(mktemp)
    key=garage-sh/check-$$.bin
    head -c 262144 /dev/urandom >"$tmp"
    if s3 put "$key" "$tmp" && s3 get "$key" "$tmp" && s3 delete "$key"; then
        rm -f "$tmp"
    else
        rm -f "$tmp"
        die "S3 check failed against $S3_ENDPOINT"
    fi
}

# ---------------------------------------------------------------- main
[ $# -ge 2 ] || usage
cmd=$1
set_dir "$2"
case "$cmd" in
up) [ $# -eq 2 ] || usage; do_up ;;
down) [ $# -eq 2 ] || usage; do_down ;;
status) [ $# -eq 2 ] || usage; do_status ;;
check) [ $# -eq 2 ] || usage; do_check ;;
kill-node) [ $# -eq 3 ] || usage; do_kill_node "$3" ;;
start-node) [ $# -eq 3 ] || usage; do_start_node "$3" ;;
stop-s3) [ $# -eq 2 ] || usage; do_stop_s3 ;;
start-s3) [ $# -eq 2 ] || usage; do_start_s3 ;;
*) usage ;;
esac
