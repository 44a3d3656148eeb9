# shellcheck shell=bash
# The Windows cross-build and Wine environment, shared by build-agent.sh, test.sh and any
# test that runs the Windows agent under Wine. Source it: `. scripts/windows/env.sh`.
#
# It only exports variables that are scoped to the Windows target or to Wine, so a Linux
# `cargo` run in the same shell (or by .ci/run) is not affected: the Debian toolchain
# (`/usr/bin/cargo`, `/usr/bin/rustc`, `RUSTC_BOOTSTRAP=1`, the Windows target dir) is
# applied only inside `guruconnect_windows_cargo`.
#
# Overrides (set before sourcing):
#   GURUCONNECT_WINDOWS_TARGET_DIR  cargo target dir   (default ~/.cache/guruconnect-target-windows)
#   GURUCONNECT_WINDOWS_PROFILE     debug | release    (default debug; picks the exe path)
#   GURUCONNECT_WINEPREFIX          the Wine prefix    (default ~/.cache/guruconnect-wineprefix)
# CARGO_TARGET_DIR is deliberately not used: .ci/run exports it for the Linux build.

GURUCONNECT_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export GURUCONNECT_REPO_ROOT

export GURUCONNECT_WINDOWS_TRIPLE=x86_64-pc-windows-gnu
export GURUCONNECT_WINDOWS_TARGET_DIR="${GURUCONNECT_WINDOWS_TARGET_DIR:-$HOME/.cache/guruconnect-target-windows}"
export GURUCONNECT_WINDOWS_PROFILE="${GURUCONNECT_WINDOWS_PROFILE:-debug}"
export GURUCONNECT_WINDOWS_CARGO=/usr/bin/cargo
export GURUCONNECT_WINDOWS_RUSTC=/usr/bin/rustc
export GURUCONNECT_WINDOWS_AGENT_EXE="$GURUCONNECT_WINDOWS_TARGET_DIR/$GURUCONNECT_WINDOWS_TRIPLE/$GURUCONNECT_WINDOWS_PROFILE/guruconnect-agent.exe"
# The bcryptprimitives.dll stand-in (see bcryptprimitives.c), found by Wine through WINEPATH.
export GURUCONNECT_WINDOWS_STUB_DIR="$GURUCONNECT_WINDOWS_TARGET_DIR/wine-stub"

# Target-scoped toolchain variables (cargo and the cc crate read them for this target only).
# The linker wrapper runs from a stable path inside the target dir: cargo hashes the linker's
# path into every unit's fingerprint, so a wrapper inside the clone would rebuild std and
# every dependency in each new clone (CI clones afresh each run).
GURUCONNECT_WINDOWS_LINKER="$GURUCONNECT_WINDOWS_TARGET_DIR/bin/mingw-link.sh"
if ! cmp -s "$GURUCONNECT_REPO_ROOT/scripts/windows/mingw-link.sh" "$GURUCONNECT_WINDOWS_LINKER"; then
  mkdir -p "$GURUCONNECT_WINDOWS_TARGET_DIR/bin"
  cp "$GURUCONNECT_REPO_ROOT/scripts/windows/mingw-link.sh" "$GURUCONNECT_WINDOWS_LINKER"
  chmod +x "$GURUCONNECT_WINDOWS_LINKER"
fi
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER="$GURUCONNECT_WINDOWS_LINKER"
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$GURUCONNECT_REPO_ROOT/scripts/windows/wine-run.sh"
export CC_x86_64_pc_windows_gnu=x86_64-w64-mingw32-gcc
export CXX_x86_64_pc_windows_gnu=x86_64-w64-mingw32-g++
export AR_x86_64_pc_windows_gnu=x86_64-w64-mingw32-ar

# Wine: a private 64-bit prefix, quiet, no Mono/Gecko install prompts, no menu entries.
export WINEPREFIX="${GURUCONNECT_WINEPREFIX:-$HOME/.cache/guruconnect-wineprefix}"
export WINEARCH=win64
export WINEDEBUG="${GURUCONNECT_WINEDEBUG:--all}"
export WINEDLLOVERRIDES="mscoree,mshtml=;winemenubuilder.exe=d"
# Z: is Wine's mapping of the Unix root.
WINEPATH="Z:${GURUCONNECT_WINDOWS_STUB_DIR//\//\\}"
export WINEPATH

# Runs the Debian cargo for the Windows target: `guruconnect_windows_cargo build -p X ...`.
guruconnect_windows_cargo() {
  local sub="$1"
  shift
  PATH="/usr/bin:$PATH" \
    RUSTC="$GURUCONNECT_WINDOWS_RUSTC" \
    RUSTDOC=/usr/bin/rustdoc \
    RUSTC_BOOTSTRAP=1 \
    CARGO_TARGET_DIR="$GURUCONNECT_WINDOWS_TARGET_DIR" \
    "$GURUCONNECT_WINDOWS_CARGO" "$sub" -Zbuild-std=std,panic_abort \
    --target "$GURUCONNECT_WINDOWS_TRIPLE" "$@"
}

# Builds the bcryptprimitives.dll stand-in when it is missing or older than its source.
guruconnect_windows_stub() {
  local src="$GURUCONNECT_REPO_ROOT/scripts/windows/bcryptprimitives.c"
  local def="$GURUCONNECT_REPO_ROOT/scripts/windows/bcryptprimitives.def"
  local dll="$GURUCONNECT_WINDOWS_STUB_DIR/bcryptprimitives.dll"
  if [ ! -f "$dll" ] || [ "$src" -nt "$dll" ] || [ "$def" -nt "$dll" ]; then
    mkdir -p "$GURUCONNECT_WINDOWS_STUB_DIR"
    x86_64-w64-mingw32-gcc -O2 -shared -s -o "$dll" "$src" "$def" -ladvapi32
  fi
}

# Creates the Wine prefix once (about half a minute), on a throwaway Xvfb when there is no
# display.
guruconnect_windows_prefix() {
  if [ -f "$WINEPREFIX/system.reg" ]; then
    return 0
  fi
  mkdir -p "$WINEPREFIX"
  echo "creating the Wine prefix $WINEPREFIX" >&2
  # Report Windows 10 (Wine 8 defaults to Windows 7, which Rust's std no longer targets).
  local init='wineboot -i >/dev/null 2>&1; wine winecfg /v win10 >/dev/null 2>&1; wineserver -w'
  if [ -n "${DISPLAY:-}" ]; then
    sh -c "$init" || true
  else
    xvfb-run -a sh -c "$init" || true
  fi
  [ -f "$WINEPREFIX/system.reg" ] || {
    echo "could not create the Wine prefix $WINEPREFIX" >&2
    return 1
  }
}
