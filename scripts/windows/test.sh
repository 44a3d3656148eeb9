#!/usr/bin/env bash
# Runs the agent's unit tests built for Windows (x86_64-pc-windows-gnu) under Wine, on a
# private Xvfb display (xvfb-run -a). Extra arguments go to the test harness, e.g.
#
#   scripts/windows/test.sh                     # every agent lib test
#   scripts/windows/test.sh platform::windows   # only the Windows platform's tests
#   scripts/windows/test.sh --service           # the service smoke test (below) instead
#
# --service builds guruconnect-agent.exe and, in the Wine prefix, installs the
# GuruConnectAgent service against a stub server that refuses every enrollment, checks that
# `sc query` shows it running, that the configuration and the DPAPI-protected enrollment key
# were written without the key in plain text, that agent.log says the enrollment was refused
# and when it retries, then uninstalls it (--purge) and checks `configure`'s exit codes.
#
# Run scripts/windows/build-agent.sh once first on a fresh machine (packages, prefix).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=env.sh
. scripts/windows/env.sh

guruconnect_windows_stub
guruconnect_windows_prefix

if [ "${1:-}" = "--service" ]; then
  guruconnect_windows_cargo build --locked -p guruconnect-agent --bin guruconnect-agent
  # Processes that services.exe starts get the system environment, without WINEPATH: the
  # bcryptprimitives.dll stand-in must be in system32 for the service to load.
  cp "$GURUCONNECT_WINDOWS_STUB_DIR/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/"
  exec xvfb-run -a -s "-screen 0 1024x768x24" bash -c '
    set -euo pipefail
    . scripts/windows/env.sh
    exe="$GURUCONNECT_WINDOWS_AGENT_EXE"
    data="$WINEPREFIX/drive_c/ProgramData/GuruConnect"
    secret="gce_smoke_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d " \n")"
    work="$(mktemp -d)"
    cleanup() {
      wine "$exe" uninstall --purge >/dev/null 2>&1 || true
      [ -n "${stub:-}" ] && kill "$stub" 2>/dev/null || true
      wineserver -k 2>/dev/null || true
      rm -rf "$work"
    }
    trap cleanup EXIT
    fail() { echo "FAIL: $*" >&2; [ -f "$data/agent.log" ] && tail -20 "$data/agent.log" >&2; exit 1; }
    # A server that refuses every enrollment with the error envelope.
    cat >"$work/stub.py" <<EOF
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.dumps({"detail": "invalid site code or enrollment key", "error_code": "enroll_refused", "status_code": 401, "correlation_id": "smoke"}).encode()
        self.send_response(401); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
EOF
    python3 "$work/stub.py" >"$work/port" &
    stub=$!
    for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
    port="$(cat "$work/port")"
    wine "$exe" uninstall --purge >/dev/null 2>&1 || true

    echo "== configure: bad input exits 1 and writes nothing"
    set +e
    wine "$exe" configure --server ftp://x --site-code HQ --enrollment-key "$secret" >/dev/null 2>&1
    rc=$?
    set -e
    [ "$rc" = 1 ] || fail "configure with a bad URL exited $rc"
    [ ! -e "$data/agent.toml" ] || fail "configure wrote agent.toml on bad input"

    echo "== install against the stub server on port $port"
    wine "$exe" install --server "http://127.0.0.1:$port" --site-code HQ \
      --enrollment-key "$secret" --company Acme --tags "a,b" || fail "install failed"
    wine sc query GuruConnectAgent | tee "$work/query"
    grep -q RUNNING "$work/query" || fail "the service is not running"
    head -c 8 "$data/enroll.key" | grep -q GCDPAPI1 || fail "enroll.key is not protected"
    ! grep -qa "$secret" "$data/enroll.key" || fail "enroll.key holds the key in plain text"
    ! grep -q gce_ "$data/agent.toml" || fail "agent.toml holds the enrollment key"
    grep -q "site_code = \"HQ\"" "$data/agent.toml" || fail "agent.toml lacks the site code"

    echo "== agent.log says why the enrollment failed and when it retries"
    for _ in $(seq 60); do
      grep -q "refused the enrollment" "$data/agent.log" 2>/dev/null \
        && grep -q "reconnecting in" "$data/agent.log" && break
      sleep 0.5
    done
    grep -q "refused the enrollment" "$data/agent.log" || fail "no refused enrollment in agent.log"
    grep -q "reconnecting in" "$data/agent.log" || fail "no retry delay in agent.log"
    grep -q "started the agent" "$data/agent.log" || fail "the supervisor did not log the worker"
    ! grep -q "$secret" "$data/agent.log" || fail "agent.log holds the enrollment key"
    grep -E "service|agent|enrollment|reconnecting" "$data/agent.log" | head -8

    echo "== installing again updates the service"
    wine "$exe" install || fail "reinstall failed"

    echo "== uninstall stops the agent over its pipe"
    wine "$exe" uninstall || fail "uninstall failed"
    grep -q "the agent stopped" "$data/agent.log" || fail "the agent was not stopped over its pipe"
    if wine sc query GuruConnectAgent >/dev/null 2>&1; then fail "the service is still there"; fi
    echo "== a worker that exits is restarted with backoff"
    # Wine ends its session (services too) once no ordinary process is left: keep one.
    wine notepad >/dev/null 2>&1 &
    wine "$exe" install --server "http://127.0.0.1:$port" --site-code HQ \
      --enrollment-key "$secret" >/dev/null 2>&1 || fail "install failed"
    for _ in $(seq 40); do grep -q "started the agent" "$data/agent.log" && break; sleep 0.5; done
    echo "server = \"nonsense\"" >"$data/agent.toml"
    wpid="$(grep -o "started the agent pid=[0-9]*" "$data/agent.log" | tail -1 | grep -o "[0-9]*$")"
    wine taskkill /f /pid "$wpid" >/dev/null 2>&1 || true
    for _ in $(seq 40); do
      [ "$(grep -c "exited with code 1; restarting it in" "$data/agent.log")" -ge 2 ] && break
      sleep 0.5
    done
    [ "$(grep -c "exited with code 1; restarting it in" "$data/agent.log")" -ge 2 ] \
      || fail "the worker was not restarted"
    grep -q "invalid configuration" "$data/agent.log" || fail "the worker'"'"'s error is not in agent.log"
    wine "$exe" uninstall >/dev/null || fail "uninstall failed"

    wine "$exe" uninstall --purge | tee "$work/second"
    grep -q "not installed" "$work/second" || fail "a second uninstall did not say so"
    [ ! -e "$data" ] || fail "--purge left $data"
    echo "service smoke test: ok"
  '
fi

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
