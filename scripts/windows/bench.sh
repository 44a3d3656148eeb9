#!/usr/bin/env bash
# Capture + encode cost per 1920x1080 frame of the Windows agent under Wine (GDI capture of
# an Xvfb screen), through the agent's own platform seam: crates/agent/examples/capture_bench.rs.
# These are Wine figures, not Windows ones: Wine's GDI copies from the X server.
#
#   scripts/windows/bench.sh [--frames N]
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=env.sh
. scripts/windows/env.sh
guruconnect_windows_stub
guruconnect_windows_prefix
guruconnect_windows_cargo build --locked --release -p guruconnect-agent --example capture_bench >&2
exe="$GURUCONNECT_WINDOWS_TARGET_DIR/$GURUCONNECT_WINDOWS_TRIPLE/release/examples/capture_bench.exe"
xvfb-run -a -s "-screen 0 1920x1080x24" bash -c '
  wine "$0" "$@"
  rc=$?
  wineserver -k 2>/dev/null || true
  exit $rc
' "$exe" "$@"
