#!/usr/bin/env bash
# ceph-rgw.sh: a real single-host Ceph cluster with the RADOS Gateway (S3) on loopback, for tests.
#
# Usage:
#   tests/s3/ceph-rgw.sh up DIR          install the packages if missing, start the cluster, make an S3
#                                        user and bucket, prove a PUT/GET round trip, write DIR/s3.env
#   tests/s3/ceph-rgw.sh down DIR        stop every daemon of DIR (SIGTERM, bounded wait, then SIGKILL);
#                                        succeeds when nothing runs; keeps DIR (rm -rf it yourself)
#   tests/s3/ceph-rgw.sh status DIR      print `ceph -s`
#   tests/s3/ceph-rgw.sh check DIR       S3 check: GET the object `up` left (bytes compared), then a
#                                        fresh PUT, GET (compared) and DELETE
#   tests/s3/ceph-rgw.sh kill-osd DIR N  SIGKILL osd.N, then wait until the monitor marks it down
#   tests/s3/ceph-rgw.sh start-osd DIR N start osd.N again and wait until it is up
#   tests/s3/ceph-rgw.sh wait-clean DIR  wait until every placement group is active+clean
#   tests/s3/ceph-rgw.sh stop-rgw DIR    stop the gateway alone (the engine "down" for S3 clients)
#   tests/s3/ceph-rgw.sh start-rgw DIR   start the gateway again on the same port, wait until it answers
#
# What `up` starts, as plain processes (no systemd), all from one DIR/ceph.conf, cephx on:
#   1 ceph-mon (mon.a), 1 ceph-mgr (mgr.x), 3 ceph-osd (bluestore, each on a sparse 4 GiB file
#   DIR/osd.N/block; replicas across OSDs, not hosts: `osd crush chooseleaf type = 0`, pools size 3,
#   min size 2, so one OSD may be down and reads and writes go on), and radosgw (client.rgw.ocellus,
#   beast frontend). Conf, keyrings, data, logs (DIR/log), pid files and admin sockets (DIR/run) all
#   live under DIR. The monitor and radosgw listen on free 127.0.0.1 ports picked at start; the OSDs
#   and the mgr bind 127.0.0.1 in Ceph's 6800-7300 range. DIR must not be on tmpfs (bluestore opens
#   its file with O_DIRECT); the OSD files are sparse: disk use grows with data, up to 3 x the bytes
#   stored (+ a few hundred MiB of metadata).
#
# DIR/s3.env, for the tests (shell syntax, KEY=VALUE):
#   S3_ENDPOINT=http://127.0.0.1:PORT  S3_ACCESS_KEY=...  S3_SECRET_KEY=...  S3_BUCKET=...
#   S3_REGION=...  CEPH_CONF=DIR/ceph.conf (so `ceph -s`, `radosgw-admin bucket stats` just work
#   after sourcing it). Path-style addressing, plain HTTP, AWS SigV4 with any region name.
#
# Cost, measured on a 2-core Debian 12 machine (Ceph 16.2.15): the packages about 1 minute to install
# (once); bring-up 33-38 s (mon 0.4 s, OSD mkfs 3 s, OSDs up 14 s, radosgw 24 s, PGs active+clean 6 s
# later), more when the cores are busy; about 550 MiB RSS in all right after bring-up (mgr ~300 MiB,
# each OSD ~55 MiB growing with use up to `osd memory target` 900 MiB, radosgw ~45 MiB, mon ~40 MiB);
# 875 MiB of the OSD files used. `down` takes under a second; kill-osd sees the OSD marked down in
# 1-2 s; start-osd has it up in about 4 s and PGs active+clean about 6 s later.
#
# Environment variables honoured:
#   CEPH_RGW_TIMEOUT          seconds each wait may take before failing (default 180)
#   CEPH_RGW_PORT             radosgw port (default: a free one)
#   CEPH_RGW_OSDS             number of OSDs (default 3; pools are min(3, N) replicas)
#   CEPH_RGW_OSD_SIZE         size of each OSD's file in bytes (default 4294967296)
#   CEPH_RGW_BUCKET           bucket name (default ocellus)
#   CEPH_RGW_REGION           region written to s3.env (default us-east-1; RGW accepts any in SigV4)
#   CEPH_RGW_NO_INSTALL=1     never run apt-get; fail if a command is missing
#   CEPH_RGW_KEEP_ON_FAILURE=1  when `up` fails, leave the daemons running for inspection
#                             (by default a failed `up` stops what it started; DIR stays)
#
# Every wait is bounded and prints the relevant log tail when it times out. Needs root only to
# install the packages (apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd
# ceph-mgr ceph-common); python3 (a dependency of ceph-common) signs the S3 requests.

set -Eeuo pipefail

PROG=ceph-rgw.sh
TIMEOUT=${CEPH_RGW_TIMEOUT:-180}
NOSDS=${CEPH_RGW_OSDS:-3}
OSD_SIZE=${CEPH_RGW_OSD_SIZE:-4294967296}
BUCKET=${CEPH_RGW_BUCKET:-ocellus}
REGION=${CEPH_RGW_REGION:-us-east-1}
RGW_NAME=client.rgw.ocellus
PROBE_KEY=ceph-rgw-sh/probe.bin
DAEMON_COMMS="ceph-mon ceph-mgr ceph-osd radosgw"

# shellcheck source=tests/s3/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# ---------------------------------------------------------------- paths and helpers
set_dir() {
    [ -n "${1:-}" ] || usage
    DIR=$(realpath -m -- "$1")
    CONF=$DIR/ceph.conf
    RUN=$DIR/run
    LOGD=$DIR/log
}

cephc() { timeout 60 ceph -c "$CONF" --connect-timeout 20 "$@"; }

# live_pid NAME (mon.a, osd.0, ...): print the pid of that daemon of DIR if it runs.
live_pid() {
    local pidf=$RUN/$1.pid pid
    [ -s "$pidf" ] || return 1
    pid=$(tr -dc '0-9' <"$pidf")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    # Guard against a reused pid: the process must run with this DIR's conf.
    tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | grep -qxF -- "$CONF" || return 1
    echo "$pid"
}

# All daemons (by comm) whose command line names this DIR's ceph.conf, even without a pid file.
dir_pids() {
    local p comm
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        comm=$(cat "/proc/$p/comm" 2>/dev/null) || continue
        case " $DAEMON_COMMS " in *" $comm "*) ;; *) continue ;; esac
        tr '\0' '\n' 2>/dev/null <"/proc/$p/cmdline" | grep -qxF -- "$CONF" && echo "$p"
    done
    return 0
}

# Closes every descriptor above stderr in the current (sub)shell.
close_fds() {
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
}

# Run a daemon command that forks into the background; its early output goes to LOG/NAME.out.
start_daemon() {
    local name=$1
    shift
    # The daemon must not inherit the caller's descriptors: a test harness that runs this under
    # a lock (flock) would otherwise see the lock held for as long as the daemon lives.
    if ! (close_fds; exec "$@") >"$LOGD/$name.out" 2>&1; then
        tails "$LOGD/$name.out" "$LOGD/$name.log"
        die "$name did not start: $*"
    fi
    wait_for "$name to write its pid file" "$LOGD/$name.out $LOGD/$name.log" live_pid "$name"
}

load_env() {
    [ -s "$DIR/s3.env" ] || die "$DIR/s3.env not found: no cluster was brought up in $DIR"
    set -a
    # shellcheck disable=SC1091
    . "$DIR/s3.env"
    set +a
}

# ---------------------------------------------------------------- S3 client (SigV4, standard library)
# s3 OP ARGS...: uses S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET, S3_REGION.
#   ready                       anonymous GET / answers 200
#   mkbucket                    PUT the bucket (already owned is fine)
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
if op == "ready":
    status, data = request("GET", "/")
    sys.exit(0 if status == 200 else 1)
elif op == "mkbucket":
    status, data = request("PUT", f"/{bucket}")
    if status != 200 and b"BucketAlreadyOwnedByYou" not in data:
        fail(f"PUT bucket {bucket}", status, data)
    print(f"bucket {bucket}: ready")
elif op == "put":
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

# ---------------------------------------------------------------- cluster state
osd_counts() { # prints "UP IN TOTAL"
    cephc osd stat -f json | python3 -c 'import json, sys; s = json.load(sys.stdin); s = s.get("osdmap", s)
print(s["num_up_osds"], s["num_in_osds"], s["num_osds"])'
}
osds_up_in() { [ "$(osd_counts)" = "$1 $1 $1" ]; }
osd_is() { # osd_is N up|down
    cephc osd dump -f json | python3 -c 'import json, sys
d = json.load(sys.stdin); n, want = int(sys.argv[1]), sys.argv[2]
o = [o for o in d["osds"] if o["osd"] == n]
sys.exit(0 if o and (o[0]["up"] == 1) == (want == "up") else 1)' "$1" "$2"
}
mgr_available() { cephc mgr stat -f json | grep -q '"available": *true'; }
pgs_clean() {
    cephc pg stat -f json | python3 -c 'import json, sys
s = json.load(sys.stdin); s = s.get("pg_summary", s)
states = {x["name"]: x["num"] for x in s["num_pg_by_state"]}
sys.exit(0 if s["num_pgs"] > 0 and states.get("active+clean", 0) == s["num_pgs"] else 1)'
}
wait_clean() {
    local t0
    t0=$(now)
    STATE_CMD="cephc -s" wait_for "all placement groups active+clean" \
        "$LOGD/mon.a.log $LOGD/mgr.x.log" pgs_clean
    say "placement groups active+clean after $(since "$t0")s: $(cephc pg stat)"
}

# ---------------------------------------------------------------- install
ensure_packages() {
    local c missing=()
    for c in ceph ceph-mon ceph-mgr ceph-osd radosgw radosgw-admin ceph-authtool monmaptool python3; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "${CEPH_RGW_NO_INSTALL:-}" != 1 ] || die "missing commands: ${missing[*]} (CEPH_RGW_NO_INSTALL=1)"
    [ "$(id -u)" -eq 0 ] || die "missing commands: ${missing[*]}; run as root to install them, or:
  apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd ceph-mgr ceph-common"
    local t0
    t0=$(now)
    say "installing Ceph packages (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -q || die "apt-get update failed"
    timeout 900 apt-get install -y -q --no-install-recommends radosgw ceph-mon ceph-osd ceph-mgr ceph-common \
        || die "apt-get install failed"
    say "packages installed in $(since "$t0")s"
}

# ---------------------------------------------------------------- up
write_conf() {
    local fsid=$1 mon_port=$2 mon_port1=$3 rgw_port=$4 size=$5 min_size=$6
    cat >"$CONF" <<EOF
# Written by tests/s3/ceph-rgw.sh: a single-host test cluster on loopback. Everything lives under $DIR.
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$mon_port,v1:127.0.0.1:$mon_port1]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = $DIR/keyring.admin
run dir = $RUN
admin socket = $RUN/\$name.asok
pid file = $RUN/\$name.pid
log file = $LOGD/\$name.log
crash dir = $DIR/crash
mon data = $DIR/mon.\$id
mgr data = $DIR/mgr.\$id
osd data = $DIR/osd.\$id
mon cluster log file = $LOGD/cluster.log
mon data avail warn = 5
# One host: replicas go to distinct OSDs, not distinct hosts.
osd crush chooseleaf type = 0
osd pool default size = $size
osd pool default min size = $min_size
mon allow pool size one = true
mon warn on pool no redundancy = false
# With every PG on every OSD, a few PGs per pool are enough and peer quickly on 2 cores.
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $OSD_SIZE
bluestore fsck on mkfs = false
osd memory target = 943718400

[client.admin]
# The CLI runs concurrently with itself: no admin socket for it.
admin socket =

[mon]
keyring = $DIR/mon.\$id/keyring

[mgr]
keyring = $DIR/mgr.\$id/keyring

[osd]
keyring = $DIR/osd.\$id/keyring

[$RGW_NAME]
keyring = $DIR/rgw/keyring
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
# Deleted objects' data goes within a minute, not after RGW's default two hours: a test run that
# uploads and deletes gigabytes must not fill the OSD files.
rgw gc obj min wait = 30
rgw gc processor period = 30
EOF
}

UP_DONE=0
on_up_exit() {
    [ "$UP_DONE" = 1 ] && return 0
    if [ "${CEPH_RGW_KEEP_ON_FAILURE:-}" = 1 ]; then
        echo "$PROG: bring-up failed; daemons left running (CEPH_RGW_KEEP_ON_FAILURE=1); logs in $LOGD" >&2
    else
        echo "$PROG: bring-up failed; stopping what was started (logs stay in $LOGD)" >&2
        do_down >&2 || true
    fi
}

do_up() {
    local t_all t0 pids fsid mon_port mon_port1 rgw_port size min_size i id uuid ak sk
    t_all=$(now)
    [[ "$NOSDS" =~ ^[1-9][0-9]*$ ]] || die "CEPH_RGW_OSDS must be a positive integer"
    pids=$(dir_pids | tr '\n' ' ')
    [ -z "$pids" ] || die "a cluster is already running in $DIR (pids: $pids); run '$0 down $DIR' first"
    if [ -e "$CONF" ]; then
        die "$DIR holds a stopped cluster; remove it (rm -rf $DIR) or use another DIR"
    fi
    if [ -d "$DIR" ] && [ -n "$(ls -A "$DIR")" ]; then
        die "$DIR exists and is not empty; give an empty or new directory"
    fi
    ensure_packages
    mkdir -p "$DIR"
    [ "$(stat -f -c %T "$DIR")" != tmpfs ] || die "$DIR is on tmpfs; bluestore needs O_DIRECT: use a disk-backed DIR"
    mkdir -p "$RUN" "$LOGD" "$DIR/crash" "$DIR/rgw"
    trap on_up_exit EXIT

    t0=$(now)
    fsid=$(cat /proc/sys/kernel/random/uuid)
    # Three distinct free ports: monitor msgr2 and msgr1, then radosgw (unless given).
    read -r mon_port mon_port1 rgw_port < <(python3 -c 'import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
    rgw_port=${CEPH_RGW_PORT:-$rgw_port}
    size=$((NOSDS < 3 ? NOSDS : 3))
    min_size=$((size > 1 ? 2 : 1))
    write_conf "$fsid" "$mon_port" "$mon_port1" "$rgw_port" "$size" "$min_size"

    # Keys: mon. and client.admin by hand; the others through the monitor below.
    ceph-authtool --create-keyring "$DIR/keyring.admin" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
    ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/keyring.admin" >/dev/null
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port,v1:127.0.0.1:$mon_port1]" "$DIR/monmap" >/dev/null

    # Monitor
    ceph-mon -c "$CONF" -i a --mkfs --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring" \
        >"$LOGD/mon.a.mkfs.out" 2>&1 || { tails "$LOGD/mon.a.mkfs.out" "$LOGD/mon.a.log"; die "ceph-mon --mkfs failed"; }
    start_daemon mon.a ceph-mon -c "$CONF" -i a
    wait_for "the monitor to answer on 127.0.0.1:$mon_port" "$LOGD/mon.a.log" cephc mon stat
    say "mon.a up on 127.0.0.1:$mon_port (msgr2) and :$mon_port1 (msgr1) ($(since "$t0")s)"

    # Manager
    mkdir -p "$DIR/mgr.x"
    cephc auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' -o "$DIR/mgr.x/keyring"
    start_daemon mgr.x ceph-mgr -c "$CONF" -i x

    # OSDs: ids and keys one by one, then mkfs in parallel, then start them all.
    local -a ids=() uuids=() mkfs_pids=()
    for ((i = 0; i < NOSDS; i++)); do
        uuid=$(cat /proc/sys/kernel/random/uuid)
        id=$(cephc osd new "$uuid")
        mkdir -p "$DIR/osd.$id"
        cephc auth get-or-create "osd.$id" mon 'allow profile osd' mgr 'allow profile osd' osd 'allow *' \
            -o "$DIR/osd.$id/keyring"
        ids+=("$id")
        uuids+=("$uuid")
    done
    for i in "${!ids[@]}"; do
        timeout "$TIMEOUT" ceph-osd -c "$CONF" -i "${ids[$i]}" --mkfs --osd-uuid "${uuids[$i]}" \
            >"$LOGD/osd.${ids[$i]}.mkfs.out" 2>&1 &
        mkfs_pids+=($!)
    done
    for i in "${!ids[@]}"; do
        wait "${mkfs_pids[$i]}" || {
            tails "$LOGD/osd.${ids[$i]}.mkfs.out" "$LOGD/osd.${ids[$i]}.log"
            die "ceph-osd --mkfs of osd.${ids[$i]} failed (or took over ${TIMEOUT}s)"
        }
    done
    say "${NOSDS} OSDs made (bluestore on $((OSD_SIZE / 1048576)) MiB files) ($(since "$t0")s)"
    for id in "${ids[@]}"; do
        start_daemon "osd.$id" ceph-osd -c "$CONF" -i "$id"
    done
    STATE_CMD="cephc osd tree" wait_for "$NOSDS OSDs up and in" \
        "$LOGD/mon.a.log $(printf "$LOGD/osd.%s.log " "${ids[@]}")" osds_up_in "$NOSDS"
    say "$NOSDS OSDs up and in ($(since "$t0")s)"
    wait_for "the manager to be available" "$LOGD/mgr.x.log" mgr_available

    # RADOS Gateway (creates its pools on first start)
    cephc auth get-or-create "$RGW_NAME" mon 'allow rw' osd 'allow rwx' -o "$DIR/rgw/keyring"
    start_daemon "$RGW_NAME" radosgw -c "$CONF" -n "$RGW_NAME"
    export S3_ENDPOINT=http://127.0.0.1:$rgw_port
    wait_for "radosgw to answer on $S3_ENDPOINT" "$LOGD/$RGW_NAME.out $LOGD/$RGW_NAME.log" s3 ready
    say "radosgw up on $S3_ENDPOINT ($(since "$t0")s)"

    # S3 user, bucket, and a round trip
    ak=$(python3 -c 'import secrets, string; print("".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(20)))')
    sk=$(python3 -c 'import secrets; print(secrets.token_urlsafe(30)[:40])')
    timeout 120 radosgw-admin -c "$CONF" user create --uid=ocellus --display-name="ocellus tests" \
        --access-key="$ak" --secret-key="$sk" >"$LOGD/user-create.out" 2>&1 \
        || { tails "$LOGD/user-create.out"; die "radosgw-admin user create failed"; }
    cat >"$DIR/s3.env.tmp" <<EOF
S3_ENDPOINT=$S3_ENDPOINT
S3_ACCESS_KEY=$ak
S3_SECRET_KEY=$sk
S3_BUCKET=$BUCKET
S3_REGION=$REGION
CEPH_CONF=$CONF
EOF
    chmod 600 "$DIR/s3.env.tmp"
    mv "$DIR/s3.env.tmp" "$DIR/s3.env"
    load_env
    s3 mkbucket
    head -c 1048576 /dev/urandom >"$DIR/probe.bin"
    s3 put "$PROBE_KEY" "$DIR/probe.bin"
    s3 get "$PROBE_KEY" "$DIR/probe.bin"
    wait_clean

    UP_DONE=1
    trap - EXIT
    say "bring-up took $(since "$t_all")s; S3 on $S3_ENDPOINT, bucket $BUCKET; settings in $DIR/s3.env"
    cephc -s
}

# ---------------------------------------------------------------- down
do_down() {
    local t0 pids p name left
    t0=$(now)
    if [ ! -d "$DIR" ]; then
        say "$DIR does not exist: nothing to stop"
        return 0
    fi
    # Gateway and manager first, then the OSDs, then the monitor.
    local -a names=("$RGW_NAME" mgr.x)
    for p in "$RUN"/osd.*.pid; do
        [ -e "$p" ] && names+=("$(basename "$p" .pid)")
    done
    names+=(mon.a)
    for name in "${names[@]}"; do
        p=$(live_pid "$name") || continue
        kill -TERM "$p" 2>/dev/null || true
    done
    # Anything of this DIR without a (valid) pid file gets the same treatment.
    pids=$(dir_pids | tr '\n' ' ')
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
    for ((i = 0; i < 30; i++)); do
        left=$(dir_pids | tr '\n' ' ')
        [ -z "$left" ] && break
        sleep 1
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
    rm -f "$RUN"/*.pid "$RUN"/*.asok 2>/dev/null || true
    say "stopped: no daemon of $DIR is running ($(since "$t0")s)"
}

# ---------------------------------------------------------------- OSD faults
do_kill_osd() {
    local n=$1 p t0
    [[ "$n" =~ ^[0-9]+$ ]] || usage
    p=$(live_pid "osd.$n") || die "osd.$n of $DIR is not running"
    t0=$(now)
    kill -KILL "$p"
    for ((i = 0; i < 100; i++)); do
        [ -d "/proc/$p" ] || break
        sleep 0.1
    done
    [ ! -d "/proc/$p" ] || die "osd.$n (pid $p) still exists 10s after SIGKILL"
    rm -f "$RUN/osd.$n.pid" "$RUN/osd.$n.asok"
    say "osd.$n (pid $p) killed with SIGKILL"
    wait_for "the monitor to mark osd.$n down" "$LOGD/mon.a.log" osd_is "$n" down
    say "osd.$n marked down after $(since "$t0")s; $(cephc osd stat)"
}

do_start_osd() {
    local n=$1 p t0
    [[ "$n" =~ ^[0-9]+$ ]] || usage
    [ -d "$DIR/osd.$n" ] || die "$DIR has no osd.$n"
    if p=$(live_pid "osd.$n"); then die "osd.$n of $DIR is already running (pid $p)"; fi
    live_pid mon.a >/dev/null || die "the monitor of $DIR is not running"
    t0=$(now)
    start_daemon "osd.$n" ceph-osd -c "$CONF" -i "$n"
    wait_for "osd.$n to be marked up" "$LOGD/osd.$n.log $LOGD/mon.a.log" osd_is "$n" up
    say "osd.$n up after $(since "$t0")s; $(cephc osd stat)"
}

# ---------------------------------------------------------------- gateway faults
do_stop_rgw() {
    local p
    p=$(live_pid "$RGW_NAME") || die "$RGW_NAME of $DIR is not running"
    kill -TERM "$p"
    for ((i = 0; i < 100; i++)); do
        [ -d "/proc/$p" ] || break
        sleep 0.1
    done
    [ ! -d "/proc/$p" ] || kill -KILL "$p"
    rm -f "$RUN/$RGW_NAME.pid" "$RUN/$RGW_NAME.asok"
    say "$RGW_NAME (pid $p) stopped"
}

do_start_rgw() {
    local p t0
    if p=$(live_pid "$RGW_NAME"); then die "$RGW_NAME of $DIR is already running (pid $p)"; fi
    load_env
    t0=$(now)
    start_daemon "$RGW_NAME" radosgw -c "$CONF" -n "$RGW_NAME"
    wait_for "radosgw to answer on $S3_ENDPOINT" "$LOGD/$RGW_NAME.out $LOGD/$RGW_NAME.log" s3 ready
    say "$RGW_NAME answers again after $(since "$t0")s"
}

do_check() {
    load_env
    [ -s "$DIR/probe.bin" ] || die "$DIR/probe.bin missing"
    s3 get "$PROBE_KEY" "$DIR/probe.bin"
    local tmp key
    tmp=$(mktemp)
    key=ceph-rgw-sh/check-$$.bin
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
status)
    [ $# -eq 2 ] || usage
    live_pid mon.a >/dev/null || die "no monitor running in $DIR"
    cephc -s
    ;;
check) [ $# -eq 2 ] || usage; do_check ;;
wait-clean)
    [ $# -eq 2 ] || usage
    live_pid mon.a >/dev/null || die "no monitor running in $DIR"
    wait_clean
    ;;
kill-osd) [ $# -eq 3 ] || usage; do_kill_osd "$3" ;;
stop-rgw) [ $# -eq 2 ] || usage; do_stop_rgw ;;
start-rgw) [ $# -eq 2 ] || usage; do_start_rgw ;;
start-osd) [ $# -eq 3 ] || usage; do_start_osd "$3" ;;
*) usage ;;
esac
