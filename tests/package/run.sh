#!/usr/bin/env bash
# The appliance as a user gets it (issue 10):
#  1. the static binary: scripts/build-static.sh; ldd must call it static; it runs; its size;
#  2. the unit: systemd-analyze verify, and security --offline exposure at most 2.0;
#  3. the .deb: packaging/deb/build.sh; lintian without errors;
#  4. its life on this machine (root only; CI runs as root, with no systemd as PID 1):
#     apt install ./ocellus_*.deb, the installed binary started as the ocellus user with the
#     installed config, an upload and a download with curl and the bootstrap key, an edited
#     conffile, a newer build installed over it (data, key and edit kept), dpkg -r (data
#     kept), dpkg -P (data gone).
# It installs what it needs (lintian, systemd for systemd-analyze) with apt-get.
#
# Usage: tests/package/run.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

fail() { echo "FAIL: $*" >&2; exit 1; }
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v lintian >/dev/null || missing+=(lintian)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v dpkg-deb >/dev/null || missing+=(dpkg)
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "== installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== static binary"
binary="$root/$(scripts/build-static.sh | tail -1)"
linkage=$(ldd "$binary" 2>&1 || true)
case $linkage in
    *"statically linked"*|*"not a dynamic executable"*) ;;
    *) fail "ldd says the binary is dynamic: $linkage" ;;
esac
"$binary" --version >/dev/null || fail "the static binary does not run"
echo "static binary: $("$binary" --version), $(stat -c %s "$binary") bytes, ldd: $(echo "$linkage" | tr -d '\t')"

echo "== systemd unit"
exposure=$(systemd-analyze security --offline=yes systemd/ocellus.service 2>&1 \
    | sed -n 's/.*Overall exposure level for ocellus.service: \([0-9.]*\).*/\1/p')
[[ -n $exposure ]] || fail "systemd-analyze security printed no exposure level"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' || fail "exposure $exposure is above 2.0"
echo "systemd-analyze security --offline=yes: exposure $exposure"

echo "== .deb"
deb=$(packaging/deb/build.sh --binary "$binary" | tail -1)
version=$(dpkg-deb -f "$deb" Version)
upgrade=$(packaging/deb/build.sh --binary "$binary" --version "$version+rebuild1" \
    --out "$root/target/deb/upgrade" | tail -1)
dpkg --compare-versions "$version+rebuild1" gt "$version" || fail "the rebuild is not newer"
lintian --fail-on error --suppress-tags initial-upload-closes-no-bugs "$deb" 2>&1 \
    | grep -v '^running with root privileges' || true
lintian --fail-on error "$deb" >/dev/null 2>&1 || fail "lintian reports errors for $deb"
echo "built $deb ($(stat -c %s "$deb") bytes); lintian: no errors"

if [[ $(id -u) -ne 0 ]]; then
    echo "SKIP: the install, upgrade, remove and purge steps need root"
    exit 0
fi

echo "== install"
data=/var/lib/ocellus
conf=/etc/ocellus/ocellus.toml
if dpkg -s ocellus >/dev/null 2>&1; then
    echo "ocellus is installed already; purging it for a clean start"
    dpkg -P ocellus >/dev/null
fi
rm -rf "$data" /etc/ocellus
work=$(mktemp -d)
pid=
cleanup() {
    if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb" >"$work/install.log" 2>&1 \
    || { cat "$work/install.log"; fail "apt-get install $deb failed"; }
grep -q "bootstrap admin key is in $data/bootstrap-admin.key" "$work/install.log" \
    || { cat "$work/install.log"; fail "the install did not print the key's path"; }
[[ -x /usr/bin/ocellus && -f /lib/systemd/system/ocellus.service && -f $conf ]] \
    || fail "installed files are missing"
getent passwd ocellus >/dev/null || fail "no ocellus user"
[[ $(stat -c '%U:%G %a' "$data") == "ocellus:ocellus 750" ]] || fail "$data is $(stat -c '%U:%G %a' "$data")"
[[ $(stat -c '%U %a' "$data/bootstrap-admin.key") == "ocellus 600" ]] \
    || fail "the key file is $(stat -c '%U %a' "$data/bootstrap-admin.key")"
systemd-analyze verify /lib/systemd/system/ocellus.service || fail "systemd-analyze verify"
echo "installed; unit verified; key $(stat -c '%U %a' "$data/bootstrap-admin.key")"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
key=$(cat "$data/bootstrap-admin.key")
start_server() {
    # As systemd would run it: the service user, the installed config (listen moved to
    # loopback for the test). setpriv execs the server itself, so the signals reach it.
    (cd / && exec setpriv --reuid ocellus --regid ocellus --init-groups -- \
        /usr/bin/ocellus serve --config "$conf" --listen "127.0.0.1:$port") \
        >>"$work/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        if curl -sf "$base/healthcheck" >/dev/null; then return 0; fi
        sleep 0.1
    done
    cat "$work/server.log"
    fail "the installed server did not come up"
}
stop_server() {
    kill -TERM "$pid"
    wait "$pid" || fail "the server exited with $? on SIGTERM"
    pid=
}

start_server
head -c $((3 * 1024 * 1024 + 17)) /dev/urandom > "$work/image"
[[ $(curl -s -o /dev/null -w '%{http_code}' "$base/v2/images") == 401 ]] || fail "no key, no 401"
id=$(curl -sf -H "X-Auth-Token: $key" -H 'Content-Type: application/json' \
    -d '{"name": "packaged", "disk_format": "raw", "container_format": "bare"}' "$base/v2/images" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
curl -sf -X PUT -H "X-Auth-Token: $key" -H 'Content-Type: application/octet-stream' \
    --data-binary @"$work/image" "$base/v2/images/$id/file" || fail "upload"
curl -sf -H "X-Auth-Token: $key" -o "$work/back" "$base/v2/images/$id/file" || fail "download"
cmp "$work/image" "$work/back" || fail "the download differs from the upload"
# The shipped mirror catalog checks as installed, and the running server answers for it.
[[ -d /etc/ocellus/keys ]] || fail "no /etc/ocellus/keys"
/usr/bin/ocellus mirror check --catalog /etc/ocellus/mirror.toml >/dev/null \
    || fail "the shipped mirror catalog does not check"
curl -sf -H "X-Auth-Token: $key" "$base/ocellus/v1/mirror" | grep -q '"sources":\[\]' \
    || fail "the installed server does not answer for its mirror"
stop_server
echo "served as ocellus: image $id uploaded and downloaded with the bootstrap key"

# The operator edits the conffile; the upgrade must keep the edit.
sed -i 's/^# max_uploads = 64$/max_uploads = 16/' "$conf"
grep -q '^max_uploads = 16$' "$conf" || fail "could not edit the conffile"

echo "== upgrade"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$upgrade" >"$work/upgrade.log" 2>&1 \
    || { cat "$work/upgrade.log"; fail "installing $upgrade over $version failed"; }
[[ $(dpkg-query -W -f '${Version}' ocellus) == "$version+rebuild1" ]] || fail "not upgraded"
grep -q '^max_uploads = 16$' "$conf" || fail "the upgrade lost the conffile edit"
[[ $(cat "$data/bootstrap-admin.key") == "$key" ]] || fail "the upgrade changed the key"
start_server
curl -sf -H "X-Auth-Token: $key" -o "$work/back" "$base/v2/images/$id/file" || fail "download after upgrade"
cmp "$work/image" "$work/back" || fail "the image changed in the upgrade"
stop_server
echo "upgraded to $version+rebuild1: image, key and conffile edit kept"

echo "== remove and purge"
dpkg -r ocellus >/dev/null
[[ ! -e /usr/bin/ocellus ]] || fail "dpkg -r left the binary"
[[ -f $data/ocellus.redb && -f $data/bootstrap-admin.key && -n $(find "$data/blobs" -type f) ]] \
    || fail "dpkg -r removed data or keys"
dpkg -P ocellus >/dev/null
[[ ! -e $data ]] || fail "dpkg -P left $data"
[[ ! -e $conf ]] || fail "dpkg -P left $conf"
echo "removed (data kept), purged (data gone)"
echo "PASS: static binary, unit, .deb, install, serve, upgrade, remove, purge"
