#!/usr/bin/env bash
# Writes a self-signed certificate and its key for TESTING ONLY, so that config.yaml works on a fresh clone:
#   certs/server.crt, certs/server.key     (ECDSA P-256, 365 days, SANs localhost, 127.0.0.1, ::1)
# No client trusts it unless told to (`mosquitto_sub --cafile certs/server.crt` or `--insecure`). In production use a
# certificate from your CA or ACME, installed in /etc/mqtt-lb/tls/ (docs/deployment.md).
#
#   scripts/make-test-cert.sh [--force]     (keeps an existing pair; --force replaces it)
set -euo pipefail
cd "$(dirname "$0")/.."
crt=certs/server.crt
key=certs/server.key
if [ "${1:-}" != "--force" ]; then
  if [ -e "$crt" ] && [ -e "$key" ]; then
    echo "$crt and $key exist already: kept (--force replaces them)"
    exit 0
  elif [ -e "$crt" ] || [ -e "$key" ]; then
    echo "error: only one of $crt and $key exists; run with --force to write both" >&2
    exit 1
  fi
fi
command -v openssl >/dev/null 2>&1 || { echo "error: needs openssl (apt-get install openssl)" >&2; exit 1; }
mkdir -p certs
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj "/CN=localhost/O=mqtt-lb test certificate" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
  -keyout "$key" -out "$crt" 2>/dev/null
chmod 0644 "$crt"
echo "wrote $crt and $key: a self-signed certificate for localhost, 127.0.0.1 and ::1, for testing only"
