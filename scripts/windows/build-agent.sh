#!/usr/bin/env bash
# Builds the Windows agent (guruconnect-agent.exe, x86_64-pc-windows-gnu) on Debian 12 with
# Debian's Rust (rustc-web, std built from rust-web-src with -Zbuild-std) and MinGW-w64,
# plus the Wine support files (the bcryptprimitives.dll stand-in and the Wine prefix).
# Installs the Debian packages it needs when they are missing. Prints the exe's path.
#
#   scripts/windows/build-agent.sh [--release] [--no-wine]
#
# The first build takes several minutes on 2 cores (std and every dependency); later
# builds are incremental. See env.sh for the target dir and prefix locations.
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=debug
cargo_args=()
wine=1
for arg in "$@"; do
  case "$arg" in
    --release)
      profile=release
      cargo_args+=(--release)
      ;;
    --no-wine) wine=0 ;;
    -h | --help)
      sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

log() { printf '\n==> %s\n' "$*" >&2; }

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

packages=(rustc-web cargo-web rust-web-src rust-web-clippy gcc-mingw-w64-x86-64 g++-mingw-w64-x86-64 nasm)
((wine)) && packages+=(wine wine64 xvfb)
apt_install "${packages[@]}"

export GURUCONNECT_WINDOWS_PROFILE="$profile"
# shellcheck source=env.sh
. scripts/windows/env.sh

log "bcryptprimitives.dll stand-in for Wine"
guruconnect_windows_stub

log "guruconnect-agent.exe ($profile) in $GURUCONNECT_WINDOWS_TARGET_DIR"
guruconnect_windows_cargo build --locked -p guruconnect-agent --bin guruconnect-agent "${cargo_args[@]}"

if ((wine)); then
  log "Wine prefix"
  guruconnect_windows_prefix
fi

[ -f "$GURUCONNECT_WINDOWS_AGENT_EXE" ] || {
  echo "the build did not produce $GURUCONNECT_WINDOWS_AGENT_EXE" >&2
  exit 1
}
echo "$GURUCONNECT_WINDOWS_AGENT_EXE"
