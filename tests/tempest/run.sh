#!/usr/bin/env bash
# Runs OpenStack's own image API tests (tempest, with the Glance tempest
# plugin installed) against a freshly started ocellus server in API-key mode.
#
# The server runs on an ephemeral loopback port with a scratch data
# directory. Before it starts, `ocellus key create` provisions the accounts
# that tempest's pre-provisioned credentials need (use_dynamic_credentials =
# false, a test_accounts_file): projects with a member and a reader key each,
# admin projects and single-user "alt" projects. Tempest
# authenticates through ocellus's Keystone-compatible /v3 (password method:
# user name = key name, password = key secret) and finds the image API in
# the catalog ocellus returns.
#
# Selected: tests whose id matches ^tempest\.api\.image (and any future
# glance_tempest_plugin.tests.api test; in glance-tempest-plugin 0.17.0 that
# package is empty: its tests are the RBAC ones, which create users and
# projects through Keystone's admin API and need system-scoped tokens, which
# ocellus does not serve). Nothing is excluded: the metadata definition
# (metadef) tests run too.
#
# Two tempest passes run on that server (see "Run" below): the main one with
# image_format_enforcement = true, and one for ListUserImagesTest, which
# tempest only runs with enforcement off and which gets raw-only disk formats
# so that the random bytes it uploads are honestly raw. With an S3 engine
# (OCELLUS_S3_ENV), a third pass runs the multiple-stores classes after the
# server is restarted with two stores.
#
# Prints passed, skipped and failed counts, the skip reasons grouped, and for
# each failure the failing requests and the end of its traceback; the last
# line is `tempest: N passed, N failed, N skipped`; exits non-zero if any
# test failed. Left in the results directory: results.subunit (both passes),
# failures.txt (each failure's traceback and captured request log, with
# bodies), selected-tests.txt, tempest-main.txt and tempest-listing.txt
# (tempest's output), tempest.log, server.log, both tempest configs and
# accounts.yaml (passwords removed).
#
# Usage: tests/tempest/run.sh PATH_TO_OCELLUS_BINARY
#
# Needs qemu-img and curl.
#
# Environment:
#   OCELLUS_TEMPEST_VENV     venv holding the pinned tempest (default:
#                            target/tempest-venv in the repository); created
#                            and filled on first use, refilled only when
#                            requirements.txt or the interpreter change.
#   OCELLUS_TEMPEST_RESULTS  where the results are left (default:
#                            target/tempest-results; the files of the last
#                            run there are replaced).
#   OCELLUS_TEMPEST_REGEX    test selection regex (default above).
#   OCELLUS_TEMPEST_CONCURRENCY  tempest workers, 1 or 2 (default 2).
#   OCELLUS_TEMPEST_TIMEOUT  seconds the tempest run may take (default 600).
#   PYTHON                   interpreter used to create the venv (default:
#                            python3.11 if present, else python3).
#   OCELLUS_S3_ENV           an s3.env of a running S3 engine (tests/s3/): a
#                            third pass runs tempest's multiple-stores tests
#                            on the same server restarted with two stores
#                            (see "Run").
#   OCELLUS_LOG              passed on to the server; every other OCELLUS_*
#                            variable is ignored by the server.
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

# Relative paths are taken from the repository root so the script behaves the
# same from any working directory.
venv=${OCELLUS_TEMPEST_VENV:-target/tempest-venv}
[[ $venv == /* ]] || venv=$root/$venv
results=${OCELLUS_TEMPEST_RESULTS:-target/tempest-results}
[[ $results == /* ]] || results=$root/$results
regex=${OCELLUS_TEMPEST_REGEX:-'^tempest\.api\.image|^glance_tempest_plugin\.tests\.api'}
concurrency=${OCELLUS_TEMPEST_CONCURRENCY:-2}
run_timeout=${OCELLUS_TEMPEST_TIMEOUT:-600}
if [[ $concurrency != 1 && $concurrency != 2 ]]; then
    echo "error: OCELLUS_TEMPEST_CONCURRENCY must be 1 or 2" >&2
    exit 2
fi
if [[ ! $run_timeout =~ ^[0-9]+$ ]]; then
    echo "error: OCELLUS_TEMPEST_TIMEOUT must be a number of seconds" >&2
    exit 2
fi

for tool in qemu-img curl timeout; do
    if ! command -v "$tool" >/dev/null; then
        echo "error: $tool is required (apt-get install qemu-utils curl coreutils)" >&2
        exit 2
    fi
done

# Install the pinned tempest once (tests/pinned-venv.sh).
source "$root/tests/pinned-venv.sh"
pinned_venv "$venv" "$requirements" tempest

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ocellus-tempest.XXXXXX")
server_pid=
http_pid=
tempest_pid=

stop_pid() {
    local pid=$1
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        # bounded: a server that ignores SIGTERM for 35 s gets SIGKILL
        for _ in $(seq 350); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}

# Everything started here is stopped and the scratch space removed however
# the script ends; the logs worth keeping were copied to $results first.
cleanup() {
    local rc=$?
    # tempest runs under `timeout` in its own process group (setsid below):
    # ending that group ends its stestr workers too.
    if [[ -n $tempest_pid ]] && kill -0 "$tempest_pid" 2>/dev/null; then
        kill -- "-$tempest_pid" 2>/dev/null || true
        wait "$tempest_pid" 2>/dev/null || true
    fi
    stop_pid "$server_pid"
    stop_pid "$http_pid"
    if [[ -d $results && -f $tmp/server.log ]]; then
        cp "$tmp/server.log" "$results/server.log" 2>/dev/null || true
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Only the files a run leaves are removed, whatever directory was named.
mkdir -p "$results"
(cd "$results" && rm -f accounts.yaml failures.txt listing.subunit main.subunit \
    results.subunit selected-tests.txt server.log tempest-listing.conf \
    tempest-listing.txt tempest-main.txt tempest.conf tempest.log)

# Settings the server and `ocellus key` would take from the environment are
# cleared, so a developer's shell cannot switch the run to another mode,
# config or server; OCELLUS_LOG is kept on purpose for more verbose logs.
s3_env=${OCELLUS_S3_ENV:-}
for var in $(compgen -e); do
    if [[ $var == OCELLUS_* && $var != OCELLUS_LOG ]]; then
        unset "$var"
    fi
done
# Everything talked to is on the loopback: no proxy may stand in between.
export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY

py=$venv/bin/python

# Binding port 0 lets the kernel pick a free port; it is released right away
# for the server to take, which is racy only against other processes grabbing
# ports in the same instant.
free_port() {
    "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to 10 s for the process $1 to answer URL $2 with a 2xx.
wait_for_url() {
    local pid=$1 url=$2
    for _ in $(seq 100); do
        if curl -sf --max-time 2 -o /dev/null "$url"; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "error: process $pid exited before answering $url" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "error: $url did not answer within 10 s" >&2
    return 1
}

# ---- Accounts ----
# Tempest's pre-provisioned credential provider (tempest/lib/common/
# preprov_creds.py) hands out, per test class:
#   primary         = a project member; it prefers the project with the most
#                     member/reader/manager accounts;
#   project_reader  = the reader of the primary's project;
#   admin           = any free account with the admin role (drawn from a
#                     set: in no fixed order), so admins have projects of
#                     their own, as tempest's dynamic credentials would give
#                     them, and none is in a member's project;
#   alt             = the first free account without the admin role, in file
#                     order: whatever the roles, so the alt-only accounts come
#                     first in the file and carry no roles there, or alt could
#                     be the reader of the primary's own project.
# Each account is locked by one test class at a time; with 2 workers, 3 of
# each kind leave a spare. (Tests asking for project_admin, system_* or
# domain_* credentials find none: no tempest.api.image test does.)
data=$tmp/data
mkdir -p "$tmp/keys"
accounts=$tmp/accounts.yaml
: >"$accounts"

# add_account NAME PROJECT ROLE YAML_ROLES: creates the key, appends the
# account (YAML_ROLES empty: no roles line).
add_account() {
    local name=$1 project=$2 role=$3 yaml_roles=$4 secret
    "$bin" key create --data-dir "$data" --project "$project" --role "$role" \
        --name "$name" --json >"$tmp/keys/$name.json"
    secret=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["secret"])' "$tmp/keys/$name.json")
    {
        echo "- username: '$name'"
        echo "  password: '$secret'"
        echo "  project_name: '$project'"
        echo "  user_domain_name: Default"
        echo "  project_domain_name: Default"
        if [[ -n $yaml_roles ]]; then
            echo "  roles: [$yaml_roles]"
        fi
    } >>"$accounts"
}

for i in 1 2 3; do
    add_account "tempest-alt$i" "tempest-alt$i" member ""
done
for i in 1 2 3; do
    add_account "tempest-admin$i" "tempest-admin$i" admin admin
done
for i in 1 2 3; do
    add_account "tempest-p$i-member" "tempest-p$i" member member
    add_account "tempest-p$i-reader" "tempest-p$i" reader reader
done
echo "provisioned $(grep -c '^- username' "$accounts") keys" >&2

# ---- Server ----
port=$(free_port)
url=http://127.0.0.1:$port
# web-download may reach the loopback web server below (its default rules deny loopback).
"$bin" serve --auth keys --listen "127.0.0.1:$port" --data-dir "$data" \
    --web-download-allow 127.0.0.1/32 >"$tmp/server.log" 2>&1 &
server_pid=$!
if ! wait_for_url "$server_pid" "$url/versions"; then
    cat "$tmp/server.log" >&2
    exit 1
fi
echo "ocellus up at $url (pid $server_pid)" >&2

# One token by the password method, as tempest will ask for it, so that an
# identity problem shows here with ocellus's answer, not as 200 test errors.
first_secret=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["secret"])' "$tmp/keys/tempest-p1-member.json")
token_request=$("$py" -c '
import json, sys
print(json.dumps({"auth": {
    "identity": {"methods": ["password"], "password": {"user": {
        "name": "tempest-p1-member", "password": sys.argv[1],
        "domain": {"name": "Default"}}}},
    "scope": {"project": {"name": "tempest-p1", "domain": {"name": "Default"}}}}}))
' "$first_secret")
if ! code=$(curl -s --max-time 10 -o "$tmp/token.json" -w '%{http_code}' \
    -H 'Content-Type: application/json' -d "$token_request" "$url/v3/auth/tokens") \
    || [[ $code != 201 ]]; then
    echo "error: POST $url/v3/auth/tokens (password method) answered ${code:-nothing}:" >&2
    cat "$tmp/token.json" >&2 || true
    exit 1
fi

# ---- Images for the web-download and location tests ----
# tempest would fetch them from download.cirros-cloud.net; they are served
# from the loopback instead, so nothing leaves the machine.
mkdir -p "$tmp/http"
head -c $((1024 * 1024)) /dev/urandom >"$tmp/http/random.bin"
qemu-img convert -f raw -O qcow2 "$tmp/http/random.bin" "$tmp/http/cirros.qcow2"
mv "$tmp/http/random.bin" "$tmp/http/cirros.img"
http_port=$(free_port)
(cd "$tmp/http" && exec "$py" -m http.server --bind 127.0.0.1 "$http_port") >"$tmp/http.log" 2>&1 &
http_pid=$!
wait_for_url "$http_pid" "http://127.0.0.1:$http_port/cirros.img" || exit 1

# ---- Tempest workspace ----
ws=$tmp/workspace
(cd "$tmp" && "$venv/bin/tempest" init --workspace-path "$tmp/workspaces.yaml" --name ocellus "$ws") \
    >"$tmp/tempest-init.log" 2>&1 || { cat "$tmp/tempest-init.log" >&2; exit 1; }
mv "$accounts" "$ws/etc/accounts.yaml"
accounts=$ws/etc/accounts.yaml

# What ocellus serves, said to tempest. Options that do not apply to ocellus
# keep tempest's defaults; every service but glance is absent.
# write_conf FILE FORMAT_ENFORCEMENT DISK_FORMATS
write_conf() {
    cat >"$1" <<CONF
[DEFAULT]
log_dir = $ws/logs
log_file = tempest.log
debug = true

[oslo_concurrency]
lock_path = $ws/tempest_lock

[auth]
use_dynamic_credentials = false
test_accounts_file = $accounts
default_credentials_domain_name = Default
create_isolated_networks = false

[identity]
auth_version = v3
uri_v3 = $url/v3
region = RegionOne
v3_endpoint_type = public
admin_role = admin
default_domain_id = default

[identity-feature-enabled]
api_v2 = false
api_v3 = true

[service-clients]
http_timeout = 60

[service_available]
glance = true
nova = false
neutron = false
cinder = false
swift = false
horizon = false

[validation]
run_validation = false

[enforce_scope]
# ocellus applies Glance's secure-RBAC defaults: readers read, members write
glance = true

[image]
catalog_type = image
endpoint_type = public
build_timeout = 30
build_interval = 1
container_formats = bare, ami, ari, aki, ovf, ova
disk_formats = $3
hashing_algorithm = sha512
http_image = http://127.0.0.1:$http_port/cirros.img
http_qcow2_image = http://127.0.0.1:$http_port/cirros.qcow2
image_caching_enabled = false

[image-feature-enabled]
api_v2 = true
import_image = true
os_glance_reserved = true
# ocellus inspects uploads and refuses data that is not of the claimed format
image_format_enforcement = $2
do_secure_hash = true
manage_locations = false
image_conversion = false
http_store_enabled = false
store_weight_enabled = $4
CONF
}

# ---- Run ----
# Two passes on the same server and accounts:
#   main     everything selected but ListUserImagesTest, with
#            image_format_enforcement = true, as ocellus enforces formats;
#   listing  ListUserImagesTest (17 list, filter and sort tests), which skips
#            itself when image_format_enforcement is true because it uploads
#            random bytes; it runs with enforcement false and disk_formats =
#            raw only, so that what it uploads is what it claims (raw) and
#            ocellus's inspection accepts it.
#   stores   (with OCELLUS_S3_ENV) the classes that need several stores, on
#            the server restarted with `fs` and `ceph` (a bucket on the
#            engine); ceph weighs more, so that the weight order tempest's
#            StoreWeightTest checks is also the alphabetical order its
#            waiter compares with.
listing_class=ListUserImagesTest
stores_classes="MultiStoresImportImagesTest|MultiStoresImagesTest|ImportCopyImagesTest|StoreWeightTest"
all_formats="qcow2, raw, ami, ari, aki, vhd, vmdk, vdi, iso, vhdx"
write_conf "$ws/etc/tempest.conf" true "$all_formats" false
write_conf "$ws/etc/tempest-listing.conf" false "raw" false
write_conf "$ws/etc/tempest-stores.conf" true "$all_formats" true

# selection REGEX EXCLUDE: tempest's selection arguments; an empty EXCLUDE
# excludes nothing (an empty --exclude-regex would match every test).
selection() {
    printf '%s\n' --regex "$1"
    [[ -z $2 ]] || printf '%s\n' --exclude-regex "$2"
}

# list_tests CONF REGEX EXCLUDE: the ids tempest would run.
list_tests() {
    local args
    mapfile -t args < <(selection "$2" "$3")
    (cd "$ws" && TEMPEST_CONFIG_DIR="$ws/etc" TEMPEST_CONFIG=$(basename "$1") \
        timeout 120 "$venv/bin/tempest" run --list-tests --config-file "$1" \
        "${args[@]}") 2>>"$tmp/list.err" \
        | grep -E '^[A-Za-z_][A-Za-z0-9_.]*\.[A-Za-z0-9_]+(\[.*\])?$' || true
}

# run_pass NAME CONF REGEX EXCLUDE: runs the pass under what is left of the
# time budget, leaves its subunit stream in $results/NAME.subunit and its
# output in $results/tempest-NAME.txt; sets pass_rc.
run_pass() {
    local name=$1 conf=$2 pass_regex=$3 pass_exclude=$4 left pass_start args
    mapfile -t args < <(selection "$pass_regex" "$pass_exclude")
    left=$((run_timeout - (SECONDS - run_start)))
    if ((left < 30)); then
        echo "error: no time left for the $name pass (OCELLUS_TEMPEST_TIMEOUT=$run_timeout)" >&2
        pass_rc=124
        return
    fi
    echo "tempest $name pass: ${args[*]}" \
        "--concurrency $concurrency (at most $left s; output in $results/tempest-$name.txt)" >&2
    pass_start=$SECONDS
    set +e
    # setsid: its own process group, so cleanup can end the workers with it.
    (cd "$ws" && exec setsid env \
        TEMPEST_CONFIG_DIR="$ws/etc" TEMPEST_CONFIG="$(basename "$conf")" \
        OS_TEST_TIMEOUT=120 OS_LOG_CAPTURE=1 PYTHONDONTWRITEBYTECODE=1 \
        timeout -k 15 "$left" "$venv/bin/tempest" run \
        --config-file "$conf" \
        "${args[@]}" \
        --concurrency "$concurrency") >"$results/tempest-$name.txt" 2>&1 &
    tempest_pid=$!
    wait "$tempest_pid"
    pass_rc=$?
    tempest_pid=
    set -e
    echo "tempest $name pass took $((SECONDS - pass_start)) s (exit $pass_rc)" >&2
    if [[ $pass_rc -eq 124 || $pass_rc -eq 137 ]]; then
        echo "error: the $name pass was stopped when the ${run_timeout} s budget ran out" >&2
    fi
    (cd "$ws" && "$venv/bin/stestr" last --subunit) >"$results/$name.subunit" 2>/dev/null || true
    if [[ ! -s $results/$name.subunit ]]; then
        echo "error: the $name pass produced no results; its output:" >&2
        tail -n 50 "$results/tempest-$name.txt" >&2
        pass_rc=1
    fi
}

main_exclude="$listing_class"
[[ -z $s3_env ]] || main_exclude="$listing_class|$stores_classes"
stores_regex="^(?=.*\\.(?:$stores_classes)\\.)(?:$regex)"
# tempest filters with re.search: the lookahead keeps the listing pass within
# the selection.
listing_regex="^(?=.*\\.$listing_class\\.)(?:$regex)"
list_tests "$ws/etc/tempest.conf" "$regex" "$main_exclude" >"$tmp/selected-main.txt"
list_tests "$ws/etc/tempest-listing.conf" "$listing_regex" "" >"$tmp/selected-listing.txt"
: >"$tmp/selected-stores.txt"
[[ -z $s3_env ]] || list_tests "$ws/etc/tempest-stores.conf" "$stores_regex" "" >"$tmp/selected-stores.txt"
cat "$tmp/selected-main.txt" "$tmp/selected-listing.txt" "$tmp/selected-stores.txt" \
    >"$results/selected-tests.txt"
if [[ ! -s $results/selected-tests.txt ]]; then
    echo "error: no test matches --regex '$regex':" >&2
    tail -n 30 "$tmp/list.err" >&2
    exit 1
fi
echo "$(wc -l <"$results/selected-tests.txt") tests selected" \
    "($(wc -l <"$tmp/selected-main.txt") main, $(wc -l <"$tmp/selected-listing.txt") listing," \
    "$(wc -l <"$tmp/selected-stores.txt") stores)" >&2

run_start=$SECONDS
run_rc=0
streams=()
if [[ -s $tmp/selected-main.txt ]]; then
    run_pass main "$ws/etc/tempest.conf" "$regex" "$main_exclude"
    ((pass_rc == 0)) || run_rc=$pass_rc
    [[ -s $results/main.subunit ]] && streams+=("$results/main.subunit")
fi
if [[ -s $tmp/selected-listing.txt ]]; then
    run_pass listing "$ws/etc/tempest-listing.conf" "$listing_regex" ""
    ((pass_rc == 0)) || run_rc=$pass_rc
    [[ -s $results/listing.subunit ]] && streams+=("$results/listing.subunit")
fi
if [[ -s $tmp/selected-stores.txt ]]; then
    # The same data directory and accounts, now with a bucket as a second store.
    s3_value() { sed -n "s/^$1=//p" "$s3_env" | head -n 1; }
    printf '%s\n' "$(s3_value S3_ACCESS_KEY)" >"$tmp/s3.access"
    printf '%s\n' "$(s3_value S3_SECRET_KEY)" >"$tmp/s3.secret"
    cat >"$tmp/stores.toml" <<TOML
default_store = "fs"
[stores.fs]
type = "file"
description = "the data directory"
weight = 50
[stores.ceph]
type = "s3"
description = "a bucket on the test cluster"
weight = 100
endpoint = "$(s3_value S3_ENDPOINT)"
bucket = "$(s3_value S3_BUCKET)"
region = "$(s3_value S3_REGION)"
prefix = "tempest-$$-$RANDOM/"
access_key_file = '$tmp/s3.access'
secret_key_file = '$tmp/s3.secret'
removal_grace = "30s"
TOML
    stop_pid "$server_pid"
    "$bin" serve --auth keys --listen "127.0.0.1:$port" --data-dir "$data" \
        --web-download-allow 127.0.0.1/32 --config "$tmp/stores.toml" >>"$tmp/server.log" 2>&1 &
    server_pid=$!
    if ! wait_for_url "$server_pid" "$url/versions"; then
        tail -n 30 "$tmp/server.log" >&2
        exit 1
    fi
    echo "ocellus restarted with two stores, fs and ceph ($(s3_value S3_ENDPOINT))" >&2
    run_pass stores "$ws/etc/tempest-stores.conf" "$stores_regex" ""
    ((pass_rc == 0)) || run_rc=$pass_rc
    [[ -s $results/stores.subunit ]] && streams+=("$results/stores.subunit")
fi
echo "tempest took $((SECONDS - run_start)) s in all" >&2

cp "$ws/logs/tempest.log" "$results/tempest.log" 2>/dev/null || true
sed -e 's/^\(  password: \).*/\1(removed)/' "$accounts" >"$results/accounts.yaml"
cp "$ws/etc/tempest.conf" "$ws/etc/tempest-listing.conf" "$ws/etc/tempest-stores.conf" "$results/"

if ((${#streams[@]} == 0)); then
    echo "error: tempest produced no results" >&2
    exit 1
fi
# subunit v2 streams concatenate into one
cat "${streams[@]}" >"$results/results.subunit"

status=0
"$py" "$here/summarize.py" "$results/results.subunit" "$results/failures.txt" \
    "$results/selected-tests.txt" || status=1
if [[ $run_rc -ne 0 && $status -eq 0 ]]; then
    echo "error: tempest exited $run_rc although no test failed" >&2
    status=1
fi
echo "results in $results" >&2
exit "$status"
