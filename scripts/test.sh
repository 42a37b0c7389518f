#!/usr/bin/env bash
# The test command: installs what the tests need, checks formatting and lints, licences and sources, runs every
# test, and ends with one line `tests: N passed, M failed`. Works from a fresh clone with an empty cargo home: every
# tool it fetches lands under target/tools and is found there again, nothing outside the repository is assumed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Debian installs mosquitto, haproxy and keepalived in /usr/sbin, which is not on every user's PATH.
export PATH="$PATH:/usr/sbin"
# The operations tests (Prometheus, promtool, helm, systemd-analyze, keepalived) fail here instead of skipping.
MQTT_LB_HELM="$(scripts/get-helm.sh)"
export MQTT_LB_HELM
export MQTT_LB_REQUIRE_TOOLS=1
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# Licences, banned crates and sources of the dependency graph (deny.toml). Advisories are not checked: the RustSec
# database is a GitHub repository, unreachable from CI (see deny.toml).
deny_dir="$(scripts/get-cargo-deny.sh)"
# cargo deny reads the graph of every platform (deny.toml), so it needs crates a Linux build never downloads
# (windows-sys...): fetch them all first, then check offline.
cargo fetch --locked
PATH="$deny_dir:$PATH" cargo deny --offline --locked check licenses bans sources
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --all-targets --locked 2>&1 | tee "$log"
# One closing line over every test binary (cargo prints one `test result` line per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
