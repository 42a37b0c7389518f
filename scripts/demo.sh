#!/usr/bin/env bash
# The demo: three real brokers (Debian's mosquitto), mqtt-lb in front of them with a fresh self-signed certificate,
# and real MQTT clients over TLS showing where each client id lands, that a reconnect lands on the same broker, and
# what happens when a broker goes down.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null 2>&1 || { echo "error: the demo is built with cargo: install Rust (https://rustup.rs)" >&2; exit 1; }
scripts/install-deps.sh --demo
# Debian installs mosquitto in /usr/sbin, which is not on every user's PATH.
export PATH="$PATH:/usr/sbin"
# The build is the slow part the first time (some 200 crates: a few minutes, about 4 on 2 cores); say so and show
# cargo's progress rather than sit silent. Later runs find it built and start at once.
echo "== building mqtt-lb and the demo (cargo build --example demo; the first build takes a few minutes)"
cargo build --locked --example demo
echo "== running the demo"
exec cargo run --locked --quiet --example demo
