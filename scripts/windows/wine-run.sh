#!/usr/bin/env bash
# Cargo's runner for x86_64-pc-windows-gnu (CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER):
# runs a Windows executable under Wine with the GuruConnect prefix and the
# bcryptprimitives.dll stand-in. Needs a display for anything that opens a window or
# captures the screen (test.sh runs it under xvfb-run).
set -euo pipefail
# shellcheck source=env.sh
. "$(dirname "$0")/env.sh"
guruconnect_windows_stub
guruconnect_windows_prefix
exec wine "$@"
