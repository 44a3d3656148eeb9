#!/usr/bin/env bash
# Makes a throwaway code-signing CA and a signing certificate for tests:
#
#   scripts/windows/test-cert.sh DIR     -> DIR/ca.pem, DIR/signer.p12 (password in DIR/password)
#
# Never use these for real releases: the CA's key is thrown away with DIR.
set -euo pipefail
dir="${1:?usage: test-cert.sh DIR}"
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
  -subj "/CN=GuruConnect Test CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout signer.key -out signer.csr \
  -subj "/CN=GuruConnect Test Signer" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n' >signer.ext
openssl x509 -req -in signer.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
  -extfile signer.ext -out signer.pem 2>/dev/null
openssl rand -hex 12 >password
openssl pkcs12 -export -inkey signer.key -in signer.pem -certfile ca.pem \
  -passout file:password -out signer.p12
rm -f ca.key signer.key signer.csr ca.srl
