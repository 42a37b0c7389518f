#!/usr/bin/env bash
# The benchmark in one command: mqtt-lb beside HAProxy and beside a direct (TLS) broker connection, on loopback;
# and its UDP section: CoAP through mqtt-lb beside CoAP straight to the server and through nginx.
#
#   bench/run.sh               full run (3 rounds, about 7 minutes plus the first build); writes bench/results.json and bench/RESULTS.md
#   bench/run.sh --quick       short run (about 1 minute); writes into bench/target/quick/
#   bench/run.sh --only udp    the UDP section alone (about 2.5 minutes); writes into bench/target/only/
#   bench/run.sh --help        every option
#
# It builds mqtt-lb (release) and the load generator, installs Debian's haproxy, mosquitto, libcoap3-bin, nginx and
# libnginx-mod-stream if they are missing (apt-get, as root or through sudo), raises the open-files limit to the
# hard limit, and runs the generator, which starts and stops its own mosquitto, haproxy, coap-server, nginx and
# mqtt-lb processes on free 127.0.0.1 ports.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null || missing+=(haproxy)
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || missing+=(mosquitto)
[ -x /usr/bin/coap-server-notls ] || missing+=(libcoap3-bin)
# nginx's UDP stream proxy, the UDP section's comparison (the benchmark starts its own nginx with its own config).
[ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "[bench] installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# Every process the benchmark starts inherits this: ~9,000 idle TLS connections cost a proxy ~18,000 descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --bin mqtt-lb >&2
cargo build --release --manifest-path bench/Cargo.toml >&2
exec bench/target/release/mqtt-lb-bench "$@"
