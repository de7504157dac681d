#!/usr/bin/env bash
# Unpacks Debian's qemu-system-x86 (with the libraries it needs that are not installed) into
# DIR, without installing it, and writes DIR/qemu-system-x86_64, a wrapper that runs it with
# those libraries and its firmware. The boot test (boot_nbd.py) uses it: installing
# qemu-system-x86 next to a newer qemu-utils from backports would remove qemu-utils.
#
# Usage: tests/system/qemu-system.sh DIR
set -euo pipefail
if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$(mkdir -p "$1" && cd "$1" && pwd)
if [[ -x $dir/qemu-system-x86_64 ]] && "$dir/qemu-system-x86_64" --version >/dev/null 2>&1; then
    exit 0
fi
rm -rf "$dir/debs" "$dir/root"
mkdir -p "$dir/debs" "$dir/root"
packages=(qemu-system-x86)
while read -r dependency; do
    dpkg -s "$dependency" >/dev/null 2>&1 || packages+=("$dependency")
done < <(apt-cache depends --no-recommends --no-suggests qemu-system-x86 |
    awk '/Depends:/ && $2 !~ /^</ {print $2}' | sort -u)
# apt-get download works as an unprivileged user too; run it where the files belong.
if ! (cd "$dir/debs" && apt-get download -q "${packages[@]}" >/dev/null 2>&1); then
    if [[ $(id -u) -eq 0 ]]; then apt-get update -qq; else sudo apt-get update -qq; fi
    (cd "$dir/debs" && apt-get download -q "${packages[@]}" >/dev/null)
fi
for deb in "$dir"/debs/*.deb; do
    dpkg -x "$deb" "$dir/root"
done
libraries=$(find "$dir/root" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)
cat > "$dir/qemu-system-x86_64" <<WRAPPER
#!/bin/sh
LD_LIBRARY_PATH="$libraries\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$dir/root/usr/bin/qemu-system-x86_64" -L "$dir/root/usr/share/seabios" -L "$dir/root/usr/share/qemu" "\$@"
WRAPPER
chmod +x "$dir/qemu-system-x86_64"
"$dir/qemu-system-x86_64" --version | head -1
