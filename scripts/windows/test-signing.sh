#!/usr/bin/env bash
# Signing test: with a throwaway CA made here, sign.sh signs copies of the agent's exe and
# MSI; `osslsigncode verify` accepts them with that CA, rejects them after one byte of
# signed content is changed, and GURUCONNECT_REQUIRE_SIGNING=1 without a certificate fails
# the build step instead of producing an unsigned file.
#
#   scripts/windows/test-signing.sh EXE MSI
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exe="${1:?usage: test-signing.sh EXE MSI}"
msi="${2:?usage: test-signing.sh EXE MSI}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failures=0
check() { # check DESCRIPTION EXPECTED(pass|fail) COMMAND...
  local what="$1" want="$2"
  shift 2
  if "$@" >"$work/out" 2>&1; then got=pass; else got=fail; fi
  if [ "$got" = "$want" ]; then
    echo "ok: $what"
  else
    echo "FAILED: $what (expected $want, got $got)"
    sed 's/^/    /' "$work/out"
    failures=$((failures + 1))
  fi
}
# Flips one byte inside the signed content: for the MSI, a byte of a string every package
# has in its string pool; for the exe, a byte in the middle of its sections.
tamper() {
  python3 - "$1" <<'PY'
import sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
at = data.find(b"GuruConnect remote support agent") if path.endswith(".msi") else len(data) // 2
assert at > 0, "nothing to tamper with"
data[at] ^= 0x01
open(path, "wb").write(data)
PY
}

bash "$here/test-cert.sh" "$work/ca" >/dev/null
export GURUCONNECT_SIGN_PKCS12="$work/ca/signer.p12"
GURUCONNECT_SIGN_PASSWORD="$(cat "$work/ca/password")"
export GURUCONNECT_SIGN_PASSWORD

for src in "$exe" "$msi"; do
  name="$(basename "$src")"
  # Start from an unsigned copy (build-msi.sh may have signed the MSI already).
  osslsigncode remove-signature -in "$src" -out "$work/$name" >/dev/null 2>&1 || cp "$src" "$work/$name"
  check "$name: unsigned copy is rejected" fail osslsigncode verify -CAfile "$work/ca/ca.pem" -in "$work/$name"
  check "$name: sign.sh signs it" pass bash "$here/sign.sh" "$work/$name"
  check "$name: verify accepts it with the test CA" pass osslsigncode verify -CAfile "$work/ca/ca.pem" -in "$work/$name"
  tamper "$work/$name"
  check "$name: verify rejects it after one byte changed" fail osslsigncode verify -CAfile "$work/ca/ca.pem" -in "$work/$name"
done
cp "$exe" "$work/unsigned.exe"
check "require signing without a certificate fails" fail \
  env -u GURUCONNECT_SIGN_PKCS12 GURUCONNECT_REQUIRE_SIGNING=1 bash "$here/sign.sh" "$work/unsigned.exe"
check "a wrong password fails" fail env GURUCONNECT_SIGN_PASSWORD=wrong bash "$here/sign.sh" "$work/unsigned.exe"

if ((failures)); then
  echo "test-signing: $failures check(s) failed"
  exit 1
fi
echo "test-signing: all checks passed"
