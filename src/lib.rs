//! mqtt-lb: an MQTT-aware, TLS-terminating load balancer for MQTT broker clusters.
//!
//! One process terminates TLS, reads and strictly validates each client's first packet (CONNECT), picks a healthy
//! broker by client identifier with rendezvous hashing (so several instances agree with no shared state), and relays
//! bytes both ways until one side closes.
//!
//! # Layout
//!
//! A connection's path, in the order to read the code:
//!
//! 1. [`listener`]: the accept loop, one task per connection (in its own tracing span) spawned before any
//!    handshake; [`admission`] decides whether a connection may take a place (source networks matched by [`net`],
//!    connections and handshakes counted in [`slots`], per-IP counts and rates); while full the loop does not
//!    accept, and clients wait in the kernel's accept queue.
//! 2. [`transport`]: TLS termination with rustls ([`transport::tls`], its files read by
//!    [`tls_material::certificates`], the certificate chosen by SNI in [`tls_material::sni`], OCSP staples checked
//!    in [`tls_material::ocsp`], client CRLs in [`tls_material::revocation`], client certificate names in
//!    [`transport::identity`], session tickets shared by instances in [`tls_material::ticket_keys`]), the
//!    WebSocket upgrade and frame codec ([`transport::ws`]), PROXY
//!    headers from trusted balancers ([`proxy_protocol`]), the connection to a server ([`transport::upstream`]:
//!    TCP connect that sends the first bytes at once ([`transport::connect`]), PROXY header out, WebSocket client
//!    upgrade), and TCP_NODELAY and keepalive on both sockets
//!    ([`transport::socket_options`]: a client socket inherits them from its listener).
//! 3. [`mqtt`]: every MQTT byte built or recognised: reading the first packet ([`mqtt::first_packet`]), fixed
//!    header ([`mqtt::frame`]), strict CONNECT validation ([`mqtt::connect`]), protocol versions
//!    ([`mqtt::version`]), refusals ([`mqtt::connack`]), DISCONNECT ([`mqtt::disconnect`]), packet boundaries
//!    ([`mqtt::boundary`]), the health probe's packets ([`mqtt::probe`]), the broker's Server Keep Alive
//!    ([`mqtt::server_keep_alive`]) and the CONNECT re-encoded with the client certificate's name as its user name
//!    ([`mqtt::rewrite`]).
//! 4. [`balancer`]: the servers of a backend ([`balancer::backend`], their addresses resolved off the path by
//!    [`balancer::address`]) and the choice of one ([`balancer::selection`]: weighted rendezvous hashing,
//!    round-robin, least connections; broker-assigned client ids placed back on their broker by its prefix,
//!    [`balancer::assigned_id`]); administrative states kept across restarts in [`balancer::state_file`]; each
//!    server's `max_connections` / `max_connection_rate` and the bounded queue for them in [`balancer::gate`].
//! 5. [`routes`]: which backend a client goes to (a listener's routes on SNI, client id, user name and certificate
//!    identity, first match wins; [`routes::glob`] and [`routes::host`] the patterns, [`session::route_table`]
//!    the per-listener table, [`config::view`] what `/servers` shows), before [`balancer`] places it in that
//!    backend; the SNI read from the ClientHello by [`transport::client_hello`].
//! 6. [`session`]: one client from accept to close, its phases in path order; every refusal is a
//!    [`reject::Reject`] (label, side, CONNACK), every end a [`session::end::CloseReason`] with its one log line.
//! 7. [`relay`]: the byte pump with half-close, bounded buffers and live byte counters; its deadlines (idle, and
//!    the client's MQTT keep-alive: [`relay::keep_alive`]), on one timer ([`relay::deadlines`]).
//!
//! The UDP path of `coap` listeners is [`udp`]: CoAP header checks and the LwM2M endpoint name ([`udp::coap`]),
//! DTLS record headers and Connection IDs ([`udp::dtls`]), the bounded flow table ([`udp::table`]), the socket's
//! receive buffer and the kernel's drop count ([`udp::receive`]), placement by
//! the same [`balancer`], and datagrams relayed both ways through per-device connected sockets.
//!
//! Beside the path: [`health`] (probes; the HTTP readiness probe in `health/http.rs`), [`admin`] (HTTP: read-only
//! metrics and readiness, and control of server states and reload on its own socket or on loopback, with its
//! `access` rules and per-socket caps), [`config`] (the file's schema, its validation by section and the runtime
//! types it builds), [`named_file`] (every file the configuration names, read only if regular and under a size
//! cap), [`tls_material`] (certificates and ticket keys, loaded with the configuration), [`metrics`] (every metric
//! named once),
//! [`logging`] (log filter and line formats; text lines are tracing-subscriber's default format written by cheaper
//! parts: [`logging::text_line`], [`logging::text_fields`], [`logging::timestamp`]),
//! [`shutdown`] (signals, drain, and the task trackers it stops), [`signal`] (the notifier a relay waits on for
//! rare events: the drain's end, its server closed),
//! [`proxy_protocol`] (PROXY v1/v2 headers to servers), [`rate_limit`] (new connections per second per IP in a bounded
//! table, with [`token_bucket`], which also counts the datagram rate of UDP flows and spaces a server's new
//! connections),
//! [`reload`] (one planner for listeners of every protocol, pools and admission: [`reload::plan`] decides from the
//! old and new configuration, [`reload::apply`] executes on the [`reload::running`] state), and [`server`], which
//! binds, spawns, serves reload requests and awaits shutdown.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

pub mod admin;
pub mod admission;
pub mod balancer;
pub mod config;
pub mod health;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod named_file;
pub mod net;
pub mod proxy_protocol;
pub mod rate_limit;
pub mod reject;
pub mod relay;
pub mod reload;
pub mod routes;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod signal;
pub mod slots;
pub mod tls_material;
pub mod token_bucket;
pub mod transport;
pub mod udp;
