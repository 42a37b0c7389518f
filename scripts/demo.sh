#!/usr/bin/env bash
# The demo: three real brokers (Debian's mosquitto), mqtt-lb in front of them with a fresh self-signed certificate,
# and real MQTT clients over TLS showing where each client id lands, that a reconnect lands on the same broker, and
# what happens when a broker goes down.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --demo
export PATH="$PATH:/usr/sbin"
exec cargo run --quiet --example demo
