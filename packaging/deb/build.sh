#!/usr/bin/env bash
# Builds ocellus_<version>_amd64.deb with dpkg-deb over a tree assembled here from the files
# in this directory (see ARCHITECTURE.md for why not cargo-deb).
#
#   packaging/deb/build.sh [--binary PATH] [--version VERSION] [--out DIR]
#
# --binary   the ocellus binary to ship [default: build it with scripts/build-static.sh]
# --version  the package version [default: the newest entry of packaging/deb/changelog]
# --out      where the .deb goes [default: target/deb]
# Prints the .deb's path on the last line.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

binary= version= out="$root/target/deb"
while [[ $# -gt 0 ]]; do
    case $1 in
        --binary) binary=$2; shift 2 ;;
        --version) version=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "usage: $0 [--binary PATH] [--version VERSION] [--out DIR]" >&2; exit 2 ;;
    esac
done
if [[ -z $binary ]]; then
    binary="$root/$("$root/scripts/build-static.sh" | tail -1)"
fi
if [[ -z $version ]]; then
    version=$(sed -n '1s/^ocellus (\([^)]*\)).*/\1/p' "$here/changelog")
fi
[[ -x $binary ]] || { echo "error: $binary is not an executable" >&2; exit 2; }
[[ -n $version ]] || { echo "error: no version" >&2; exit 2; }

tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
install -d -m 0755 "$tree/DEBIAN" "$tree/usr/bin" "$tree/lib/systemd/system" \
    "$tree/etc/ocellus" "$tree/usr/share/doc/ocellus"
install -m 0755 "$binary" "$tree/usr/bin/ocellus"
install -m 0644 "$root/systemd/ocellus.service" "$tree/lib/systemd/system/ocellus.service"
install -m 0644 "$here/ocellus.toml" "$tree/etc/ocellus/ocellus.toml"
install -m 0644 "$here/mirror.toml" "$tree/etc/ocellus/mirror.toml"
install -d -m 0755 "$tree/etc/ocellus/keys"
install -m 0644 "$here/copyright" "$tree/usr/share/doc/ocellus/copyright"
install -m 0644 "$root/README.md" "$tree/usr/share/doc/ocellus/README.md"
install -d -m 0755 "$tree/usr/share/man/man1"
gzip -9n < "$here/ocellus.1" > "$tree/usr/share/man/man1/ocellus.1.gz"
chmod 0644 "$tree/usr/share/man/man1/ocellus.1.gz"
gzip -9n < "$here/changelog" > "$tree/usr/share/doc/ocellus/changelog.Debian.gz"
chmod 0644 "$tree/usr/share/doc/ocellus/changelog.Debian.gz"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$tree/DEBIAN/$script"
done
install -m 0644 "$here/conffiles" "$tree/DEBIAN/conffiles"
installed_size=$(du -sk --exclude=DEBIAN "$tree" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@INSTALLED_SIZE@/$installed_size/" \
    "$here/control.in" > "$tree/DEBIAN/control"
(cd "$tree" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' \
    | sort -z | xargs -0 md5sum) > "$tree/DEBIAN/md5sums"
chmod 0644 "$tree/DEBIAN/control" "$tree/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/ocellus_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$tree" "$deb" >&2
echo "$deb"
