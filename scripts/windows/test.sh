#!/usr/bin/env bash
# Runs the agent's unit tests built for Windows (x86_64-pc-windows-gnu) under Wine, on a
# private Xvfb display (xvfb-run -a). Extra arguments go to the test harness, e.g.
#
#   scripts/windows/test.sh                     # every agent lib test
#   scripts/windows/test.sh platform::windows   # only the Windows platform's tests
#
# Run scripts/windows/build-agent.sh once first on a fresh machine (packages, prefix).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=env.sh
. scripts/windows/env.sh

guruconnect_windows_stub
guruconnect_windows_prefix

# Build first, outside Xvfb, so a compile error is reported plainly.
guruconnect_windows_cargo test --locked -p guruconnect-agent --lib --no-run

# One Xvfb for the whole run; the tests share one Wine desktop, so run them on one thread
# (windows, focus and the pointer are global). wineserver -k afterwards so no Wine process
# outlives the display.
xvfb-run -a -s "-screen 0 1280x800x24" bash -c '
  . scripts/windows/env.sh
  guruconnect_windows_cargo test --locked -p guruconnect-agent --lib -- --test-threads=1 "$@"
  rc=$?
  wineserver -k 2>/dev/null || true
  exit $rc
' test.sh "$@"
