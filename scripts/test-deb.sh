#!/usr/bin/env bash
# Builds the .deb packages from the debug binaries and installs them into a throwaway dpkg
# root (dpkg --root, maintainer scripts chrootless with DPKG_ROOT): the files land where the
# units expect them, the units pass systemd-analyze verify where it exists, the installed
# server starts from its packaged configuration and answers /health, and removal leaves
# the configuration (a conffile) but no binary. Usage: scripts/test-deb.sh [BIN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir="${1:-${CARGO_TARGET_DIR:-target}/debug}"
work="$(mktemp -d)"
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }

mapfile -t debs < <(bash scripts/package-deb.sh --bin-dir "$bin_dir" --out "$work/dist")
[ "${#debs[@]}" -eq 2 ] || fail "expected two packages, got: ${debs[*]}"
root="$work/root"
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
touch "$root/var/lib/dpkg/status"
dpkg_root() {
  dpkg --root="$root" --force-script-chrootless --force-not-root --force-bad-path \
    --log=/dev/null "$@"
}
# The empty root has none of the dependencies: check them against this system instead.
for deb in "${debs[@]}"; do
  for dep in $(dpkg-deb -f "$deb" Depends | tr ',' ' '); do
    dpkg -s "$dep" >/dev/null 2>&1 || fail "$(basename "$deb") depends on $dep, which is not a Debian package here"
  done
done
dpkg_root --force-depends -i "${debs[@]}" >"$work/dpkg.log" 2>&1 \
  || fail "dpkg -i refused the packages: $(cat "$work/dpkg.log")"
dpkg_root -s guruconnect-server | grep -q '^Status: install ok installed' || fail "server not installed"
dpkg_root -s guruconnect-agent | grep -q '^Status: install ok installed' || fail "agent not installed"
for f in usr/bin/guruconnect-server usr/bin/guruconnect-agent \
  lib/systemd/system/guruconnect-server.service lib/systemd/system/guruconnect-agent.service \
  etc/guruconnect/server.toml; do
  [ -e "$root/$f" ] || fail "/$f is missing"
done
[ -d "$root/var/lib/guruconnect" ] || fail "postinst did not create /var/lib/guruconnect"
"$root/usr/bin/guruconnect-agent" --version | grep -q guruconnect || fail "the agent does not run"
if command -v systemd-analyze >/dev/null; then
  # Resolve ExecStart inside the test root.
  for unit in guruconnect-server guruconnect-agent; do
    sed "s|/usr/bin/|$root/usr/bin/|" "$root/lib/systemd/system/$unit.service" >"$work/$unit.service"
    out="$(systemd-analyze verify --man=no "$work/$unit.service" 2>&1)" || true
    if printf '%s' "$out" | grep -v -e 'Failed to connect' -e 'Cannot add dependency' \
      -e 'ConditionPathExists' -e 'is not executable' -e "^$" | grep -qi 'error\|unknown'; then
      fail "$unit.service: $out"
    fi
  done
fi

# The installed server from the packaged configuration (data directory moved to the test
# root, port 0 is not possible with a fixed config: pick a free one).
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
sed -e "s|^data_dir = .*|data_dir = \"$root/var/lib/guruconnect\"|" \
  -e "s|^bind = .*|bind = \"127.0.0.1:$port\"|" "$root/etc/guruconnect/server.toml" >"$work/server.toml"
grep -q "^bind = \"127.0.0.1:$port\"" "$work/server.toml" || fail "the packaged configuration has no bind line"
GURUCONNECT_CONFIG="$work/server.toml" "$root/usr/bin/guruconnect-server" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || fail "the installed server exited: $(cat "$work/server.log")"
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/health" >/dev/null || fail "the installed server does not answer /health"
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""

dpkg_root -r guruconnect-server guruconnect-agent >/dev/null || fail "dpkg -r failed"
[ ! -e "$root/usr/bin/guruconnect-server" ] || fail "removal left the server binary"
[ -e "$root/etc/guruconnect/server.toml" ] || fail "removal (not purge) must keep the configuration"
echo "test-deb: ok (${debs[*]##*/})"
