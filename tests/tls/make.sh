#!/usr/bin/env bash
# Regenerates the TLS test fixtures: a CA, a server certificate it signs (localhost and
# 127.0.0.1, valid for 100 years) and an unrelated key. Test use only: never deploy these.
set -euo pipefail
cd "$(dirname "$0")"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500 \
  -subj "/CN=repocrypt test CA" -keyout ca.key -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=localhost" -keyout server.key -out server.csr
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 36500 \
  -out server.pem -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n')
openssl genpkey -algorithm ec -pkeyopt ec_paramgen_curve:P-256 -out other.key
rm -f server.csr ca.srl ca.key
