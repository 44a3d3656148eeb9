#!/usr/bin/env bash
# Builds guruconnect-server_<version>_<arch>.deb and guruconnect-agent_<version>_<arch>.deb
# with dpkg-deb from already built binaries (systemd units and maintainer scripts in
# packaging/deb). Usage:
#   scripts/package-deb.sh [--bin-dir DIR] [--out DIR]
# DIR defaults to $CARGO_TARGET_DIR/release (or target/release); the version is the
# workspace version. Build first: cargo build --release -p guruconnect-server -p guruconnect-agent
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir="${CARGO_TARGET_DIR:-target}/release"
out_dir="dist"
while (($#)); do
  case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --out) out_dir="$2"; shift 2 ;;
    *) echo "package-deb: unknown argument $1" >&2; exit 2 ;;
  esac
done
for bin in guruconnect-server guruconnect-agent; do
  [ -x "$bin_dir/$bin" ] || { echo "package-deb: $bin_dir/$bin is missing; build it first" >&2; exit 1; }
done
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
[ -n "$version" ] || { echo "package-deb: no workspace version in Cargo.toml" >&2; exit 1; }
arch="$(dpkg --print-architecture)"
mkdir -p "$out_dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# $1 package, $2 description, $3 depends; the staging tree is $work/$1.
control() {
  local root="$work/$1"
  mkdir -p "$root/DEBIAN"
  cat >"$root/DEBIAN/control" <<CONTROL
Package: $1
Version: $version
Architecture: $arch
Maintainer: GuruConnect maintainers <maintainers@example.invalid>
Section: net
Priority: optional
Depends: $3
Description: $2
 GuruConnect is a self-hosted remote-support system: a relay server with a web console,
 and an agent on each supported machine.
CONTROL
  mkdir -p "$root/usr/share/doc/$1"
  cp README.md "$root/usr/share/doc/$1/README.md"
}

# The server: binary, unit, a commented configuration (a conffile) with the data directory
# under /var/lib.
s="$work/guruconnect-server"
control guruconnect-server "GuruConnect remote support server" "adduser, libc6"
install -D -m 0755 "$bin_dir/guruconnect-server" "$s/usr/bin/guruconnect-server"
install -D -m 0644 packaging/deb/guruconnect-server.service "$s/lib/systemd/system/guruconnect-server.service"
mkdir -p "$s/etc/guruconnect"
"$bin_dir/guruconnect-server" config \
  | sed 's|^data_dir = .*|data_dir = "/var/lib/guruconnect"|' >"$s/etc/guruconnect/server.toml"
grep -q '^data_dir = "/var/lib/guruconnect"' "$s/etc/guruconnect/server.toml" \
  || { echo "package-deb: could not set data_dir in the packaged configuration" >&2; exit 1; }
echo /etc/guruconnect/server.toml >"$s/DEBIAN/conffiles"
install -m 0755 packaging/deb/server.postinst "$s/DEBIAN/postinst"
install -m 0755 packaging/deb/server.prerm "$s/DEBIAN/prerm"

# The agent: binary and unit; its configuration comes from `guruconnect-agent install` or
# a site installer, so the package ships none.
a="$work/guruconnect-agent"
control guruconnect-agent "GuruConnect remote support agent (Linux X11)" "libc6"
install -D -m 0755 "$bin_dir/guruconnect-agent" "$a/usr/bin/guruconnect-agent"
install -D -m 0644 packaging/deb/guruconnect-agent.service "$a/lib/systemd/system/guruconnect-agent.service"
install -m 0755 packaging/deb/agent.postinst "$a/DEBIAN/postinst"
install -m 0755 packaging/deb/agent.prerm "$a/DEBIAN/prerm"

for pkg in guruconnect-server guruconnect-agent; do
  dpkg-deb --root-owner-group -Zxz --build "$work/$pkg" "$out_dir/${pkg}_${version}_${arch}.deb" >/dev/null
  echo "$out_dir/${pkg}_${version}_${arch}.deb"
done
