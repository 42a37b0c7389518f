# syntax=docker/dockerfile:1
# mqtt-lb container image: built in a Rust image, run from a distroless one as a non-root user.
#
#   docker build -t mqtt-lb .
#   docker run --rm -p 8883:8883 -p 127.0.0.1:9100:9100 \
#     -v /etc/mqtt-lb/config.yaml:/etc/mqtt-lb/config.yaml:ro -v /etc/mqtt-lb/tls:/etc/mqtt-lb/tls:ro mqtt-lb
#
# Certificates go in /etc/mqtt-lb/tls/ as with systemd and the Helm chart: the config names
# tls: { cert: /etc/mqtt-lb/tls/server.crt, key: /etc/mqtt-lb/tls/server.key }.
# The admin endpoint must listen on 0.0.0.0 inside the container to be reachable (admin.bind), so publish it on a
# private address only. The image binds no port under 1024 by itself: map 443 to a listener on 8443.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cached registry and target folders make rebuilds after a source change quick (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mqtt-lb \
    && install -D -m 0755 target/release/mqtt-lb /out/mqtt-lb

# glibc and libgcc, CA certificates, a `nonroot` user (65532); no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/mqtt-lb /usr/local/bin/mqtt-lb
USER 65532:65532
EXPOSE 8883 8443 9100
ENTRYPOINT ["/usr/local/bin/mqtt-lb"]
CMD ["run", "--config", "/etc/mqtt-lb/config.yaml", "--log-format", "json"]
