#!/usr/bin/env bash
# Authenticode-signs Windows artifacts (.exe, .msi) in place with osslsigncode.
#
#   scripts/windows/sign.sh FILE...
#
#   GURUCONNECT_SIGN_PKCS12     the code-signing certificate and key (PKCS#12 file)
#   GURUCONNECT_SIGN_PASSWORD   its password (environment only; never on a command line)
#   GURUCONNECT_REQUIRE_SIGNING 1: fail when no certificate is configured (release builds)
#
# Without a certificate the files are left unsigned, with a notice. No timestamp server is
# used (none is reachable from the build machines): signatures are valid while the
# certificate is.
set -euo pipefail

if [ -z "${GURUCONNECT_SIGN_PKCS12:-}" ]; then
  if [ "${GURUCONNECT_REQUIRE_SIGNING:-0}" = 1 ]; then
    echo "sign.sh: signing is required (GURUCONNECT_REQUIRE_SIGNING=1) but GURUCONNECT_SIGN_PKCS12 is not set; refusing to produce unsigned $*" >&2
    exit 1
  fi
  echo "sign.sh: no certificate configured (GURUCONNECT_SIGN_PKCS12); $* left unsigned" >&2
  exit 0
fi
[ -r "$GURUCONNECT_SIGN_PKCS12" ] || {
  echo "sign.sh: cannot read the certificate $GURUCONNECT_SIGN_PKCS12" >&2
  exit 1
}
command -v osslsigncode >/dev/null || {
  echo "sign.sh: osslsigncode is not installed (apt-get install osslsigncode)" >&2
  exit 1
}

pass_file="$(mktemp)"
trap 'rm -f "$pass_file"' EXIT
chmod 600 "$pass_file"
printf '%s' "${GURUCONNECT_SIGN_PASSWORD:-}" >"$pass_file"

for file in "$@"; do
  osslsigncode sign -pkcs12 "$GURUCONNECT_SIGN_PKCS12" -readpass "$pass_file" \
    -h sha256 -n "GuruConnect Agent" -in "$file" -out "$file.signed" >/dev/null
  mv "$file.signed" "$file"
  echo "sign.sh: signed $file" >&2
done
