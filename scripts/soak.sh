#!/usr/bin/env bash
# Soak test: mqtt-lb (release build) in front of three mosquitto brokers and three libcoap coap-servers under mixed
# real load (steady MQTTS, WSS and CoAP clients, connect/disconnect churn, bad clients, half-open clients, connection
# and CoAP floods) for a given time; samples the proxy's RSS, open fds, threads and connections every 10 s into
# soak-results/soak-<time>.csv and writes a summary (.md) with round-trip p50/p99 and every refusal counter. Fails on
# any unexpected error, fd or connection leak, memory that keeps growing, or CoAP devices going unanswered. Not part of
# scripts/test.sh. See bench/SOAK.md.
#
#   scripts/soak.sh [minutes]        (default 30)
#
# Extra options go to the load program (examples/soak.rs): --interval 10 --steady 100 --churners 8 --out DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-30}"
shift || true
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || scripts/install-deps.sh
export PATH="$PATH:/usr/sbin"
cargo build --release --locked --bin mqtt-lb --example soak
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
exec "$target_dir/release/examples/soak" --proxy "$target_dir/release/mqtt-lb" --minutes "$minutes" \
  --out soak-results "$@"
