//! The UDP path: `protocol: coap` listeners relaying CoAP (5683) and DTLS-protected CoAP (5684, passed through,
//! never decrypted) between devices and a pool of CoAP / LwM2M servers. `docs/coap.md` is the operator's view.
//!
//! ```text
//! device ──datagram──> listener socket ──check──> flow table ──connected socket──> server
//!   ^                  (size cap, sources,        (one flow per device address:     |
//!   |                   rate per flow, CoAP /      placement key -> rendezvous hash, |
//!   └──────────────── DTLS header checks)          idle expiry, LRU eviction)       |
//!          reply: sent from the listener socket <── the flow's reply task <─────────┘
//! ```
//!
//! One task per listener receives every datagram and owns the flow table (no locks on the path). A flow is one
//! device address (IP and port) with its own connected socket to its server, so the server's datagrams come back
//! on that socket and go to the device from the listener's address without a lookup; one reply task per flow
//! reads it (the tasks and sockets are bounded by `max_flows`). Server-initiated datagrams (LwM2M observe
//! notifications and server requests) take the same way while the flow lives. After the flow ends, its socket is
//! closed: what the server sends to that address is answered by ICMP port unreachable and lost, until the device
//! sends again (LwM2M servers wait for the device's next Update, or retry).
//!
//! # Placement
//!
//! A new flow is placed by the backend's rendezvous hash ([`Balancer::candidates`]) on the first key present:
//! 1. the DTLS Connection ID of the record ([`dtls`]; the listener's `dtls_cid_length` tells its length). A CID
//!    is chosen by the server during the handshake, which the front door placed by the device's address. Servers
//!    that follow Californium's multi-node convention write their node id into the CID's first byte: when that
//!    byte is the `dtls_cid_node_id` of a usable server of the pool, the record goes there, on every instance and
//!    with no state. For other CIDs the listener remembers which server each CID was seen going to
//!    (`dtls_cid_timeout`, `max_dtls_cids`) and sends a known CID there. A CID never seen by this instance (or
//!    whose node's server is not usable) goes by the hash of the CID;
//! 2. the LwM2M endpoint name (`ep=`) of a plain-CoAP Register or Bootstrap-Request ([`coap`]), hashed as is, so an
//!    endpoint name lands where an MQTT client id of the same text would, when the server names match;
//! 3. the device's address and port.
//!
//! A flow keeps its server while it lives, except when that server is down at the device's next datagram (it is
//! placed anew) and when a Register of the device belongs on another server (the flow moves, so the registration
//! is always on the endpoint's server).
//!
//! # Limits and bad input
//!
//! Every drop is counted in `mqttlb_udp_dropped_datagrams_total` by reason ([`crate::metrics::udp::drop_reason`]).
//! A Confirmable CoAP message with a readable header but a broken body is rejected with a Reset (RFC 7252 §4.2);
//! anything else malformed is dropped silently (as RFC 7252 asks for unknown versions). A flooding device meets
//! `max_datagram_rate_per_flow` (on by default) right after the read, before any parsing or send, so the task
//! drains the socket faster than it could relay; what the kernel still drops for a full receive queue is counted
//! ([`receive`]). Memory is bounded by
//! `max_flows`, `max_dtls_cids`, and one receive buffer per listener and per worker thread.
//!
//! # Reload
//!
//! A coap listener continues (same socket, same flows) when a reload keeps its name and address; it then takes the
//! new backend, limits and keys for its next datagrams. Flows whose server left the pool (or moved to another
//! address) end; the others keep their server. A new `max_flows` applies as flows are added. The socket's address is
//! not reloaded: a listener whose address changed is a new listener, and the old one's flows end with it.

pub mod coap;
pub mod dtls;
pub mod receive;
pub mod table;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::balancer::backend::{ActiveGuard, BackendServer};
use crate::balancer::Balancer;
use crate::config::{source_allowed, Cidr, CoapListenerConfig, ListenerConfig, ServerConfig};
use crate::metrics::udp::{drop_reason, eviction_reason, placement_kind, UdpListenerMetrics};
use crate::metrics::Metrics;
use crate::token_bucket::{Rate, TokenBucket};
use table::{ExpiringMap, LastSeen};

/// The key a new flow is placed by, best first (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementKey<'a> {
    DtlsCid(&'a [u8]),
    Endpoint(&'a [u8]),
    Source(SocketAddr),
}

impl PlacementKey<'_> {
    /// The bytes given to the rendezvous hash: `dtls-cid:` and the raw CID; the endpoint name as is; the device's
    /// `IP:port` as text (an IPv4-mapped IPv6 address as the IPv4 address, IPv6 in brackets).
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            PlacementKey::DtlsCid(cid) => [&b"dtls-cid:"[..], cid].concat(),
            PlacementKey::Endpoint(ep) => ep.to_vec(),
            PlacementKey::Source(addr) => {
                SocketAddr::new(addr.ip().to_canonical(), addr.port()).to_string().into_bytes()
            }
        }
    }
}

/// What a coap listener's datagram path reads; swapped whole on reload.
pub struct UdpContext {
    pub name: String,
    pub settings: CoapListenerConfig,
    pub allowed_sources: Vec<Cidr>,
    pub balancer: Arc<Balancer>,
    pub metrics: UdpListenerMetrics,
    /// Different after each reload: the datagram task then re-checks its flows' servers.
    pub generation: u64,
    /// The servers of the backend by the node id they write into their DTLS Connection IDs (`dtls_cid_node_id`).
    pub node_servers: NodeServers,
}

/// Which server issued a DTLS Connection ID, for the servers configured with a `dtls_cid_node_id`: the first byte
/// of the CID names it (Californium's multi-node convention, see [`dtls::cid_node_id`]).
#[derive(Debug, Clone, Default)]
pub struct NodeServers {
    by_node: HashMap<u8, String>,
}

impl NodeServers {
    pub fn new(servers: &[ServerConfig]) -> NodeServers {
        let by_node = servers.iter().filter_map(|s| Some((s.dtls_cid_node_id?, s.name.clone()))).collect();
        NodeServers { by_node }
    }

    /// The name of the server whose node id `cid` carries, if one of the servers has that node id.
    pub fn server_of(&self, cid: &[u8]) -> Option<&str> {
        self.by_node.get(&dtls::cid_node_id(cid)?).map(String::as_str)
    }
}

/// The settings of a coap listener under a configuration.
pub fn context(l: &ListenerConfig, balancer: Arc<Balancer>, metrics: &Metrics, generation: u64) -> UdpContext {
    let node_servers = NodeServers::new(&balancer.pool().config.servers);
    UdpContext {
        name: l.name.clone(),
        settings: l.coap.clone().unwrap_or_default(),
        allowed_sources: l.allowed_sources.clone(),
        balancer,
        metrics: metrics.udp.listener(&l.name),
        generation,
        node_servers,
    }
}

/// Binds a coap listener's socket.
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

// ---------------------------------------------------------------------------------------------------------------
// The datagram path.

/// Milliseconds since the listener started (never 0 for a real reading).
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1)
    }

    fn instant(&self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms.saturating_sub(1))
    }
}

/// What a flow shares with its reply task.
struct FlowShared {
    last_seen: AtomicU64,
    /// The reply task ended on an error: the flow is replaced at the device's next datagram.
    broken: AtomicBool,
}

impl FlowShared {
    fn touch(&self, now: u64) {
        self.last_seen.fetch_max(now, Ordering::Relaxed);
    }
}

/// One device address and its connected socket to its server.
struct Flow {
    upstream: Arc<UdpSocket>,
    server: Arc<BackendServer>,
    _active: ActiveGuard,
    shared: Arc<FlowShared>,
    replies: tokio::task::AbortHandle,
    /// `max_datagram_rate_per_flow`.
    bucket: TokenBucket,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

impl LastSeen for Flow {
    fn last_seen(&self) -> u64 {
        self.shared.last_seen.load(Ordering::Relaxed)
    }
}

/// A CID and the server it was seen going to.
struct CidEntry {
    server: String,
    last_seen: u64,
}

impl LastSeen for CidEntry {
    fn last_seen(&self) -> u64 {
        self.last_seen
    }
}

/// The placement keys the front door read in a datagram: a DTLS Connection ID or an LwM2M endpoint name.
#[derive(Debug, Default)]
struct DatagramKeys<'a> {
    cid: Option<&'a [u8]>,
    endpoint: Option<&'a [u8]>,
}

/// Tells DTLS from CoAP and checks the header; errs with the drop reason.
fn inspect(data: &[u8], cid_length: Option<u8>) -> Result<DatagramKeys<'_>, &'static str> {
    let first = *data.first().ok_or(drop_reason::MALFORMED_COAP)?;
    if dtls::is_dtls(first) {
        let record = dtls::check_datagram(data, cid_length).map_err(|_| drop_reason::MALFORMED_DTLS)?;
        Ok(DatagramKeys { cid: record.cid, endpoint: None })
    } else {
        let message = coap::parse(data).map_err(|_| drop_reason::MALFORMED_COAP)?;
        Ok(DatagramKeys { cid: None, endpoint: message.register_endpoint() })
    }
}

thread_local! {
    /// The reply tasks' receive buffer: one per worker thread, not one per flow.
    static REPLY_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; 65_536]);
}

/// The state the datagram task owns.
struct Listener {
    socket: Arc<UdpSocket>,
    clock: Clock,
    flows: ExpiringMap<SocketAddr, Flow>,
    flows_per_ip: HashMap<IpAddr, usize>,
    cids: ExpiringMap<Vec<u8>, CidEntry>,
    generation: u64,
    /// The `receive_buffer` last asked of the kernel.
    receive_buffer: Option<usize>,
    /// Where the flows' reply tasks are tracked (the listener's own tracker), so a drain waits for them.
    tasks: TaskTracker,
}

/// Receives the listener's datagrams until `stop` is cancelled (see the module docs). The flows' reply tasks are
/// spawned on `tasks`; they end with their flows, at the latest when this returns.
pub async fn serve(socket: Arc<UdpSocket>, ctx: Arc<ArcSwap<UdpContext>>, stop: CancellationToken, tasks: TaskTracker) {
    let mut l = Listener::new(Arc::clone(&socket), ctx.load().generation, tasks);
    if let Err(e) = receive::count_drops(&socket) {
        warn!(listener = %ctx.load().name, error = %e, "the kernel's receive queue drops cannot be counted");
    }
    l.size_receive_buffer(&ctx.load());
    let mut drops = receive::DropCount::default();
    let (mut buf, mut control) = (vec![0u8; 65_536], receive::control_buffer());
    let mut wake = l.next_wake(&ctx.load());
    let sleep = tokio::time::sleep_until(wake.into());
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = &mut sleep => l.expire(&ctx.load()),
            received = receive::recv(&socket, &mut buf, &mut control) => match received {
                Ok(r) => {
                    let ctx = ctx.load_full();
                    l.on_received(&ctx, &mut drops, buf.get(..r.len).unwrap_or_default(), r).await;
                    // Whatever else is queued now, up to a batch, before the loop's other branches: under a flood
                    // a datagram then costs its receive and its checks, not a turn of the loop.
                    for _ in 1..RECEIVE_BATCH {
                        let Ok(r) = receive::try_recv(&socket, &mut buf, &mut control) else { break };
                        l.on_received(&ctx, &mut drops, buf.get(..r.len).unwrap_or_default(), r).await;
                    }
                }
                Err(e) => {
                    // Nothing on an unconnected socket is worth stopping for; do not spin on a persistent error.
                    debug!(error = %e, "UDP receive error");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
        let next = l.next_wake(&ctx.load());
        if next != wake {
            wake = next;
            sleep.as_mut().reset(wake.into());
        }
    }
    let ctx = ctx.load();
    for (_, flow) in l.flows.extract_if(|_, _| false) {
        drop(flow);
        ctx.metrics.flows_active.dec();
    }
    ctx.metrics.dtls_cids.set(0);
}

/// Datagrams received in a row before the datagram task looks at its timers and its stop signal.
const RECEIVE_BATCH: usize = 64;

impl Listener {
    /// A datagram received, with the kernel's drop count it carried.
    async fn on_received(
        &mut self,
        ctx: &UdpContext,
        drops: &mut receive::DropCount,
        data: &[u8],
        r: receive::Received,
    ) {
        if let Some(n) = r.drops {
            ctx.metrics.receive_queue_drops.inc_by(drops.advance(n));
        }
        self.on_datagram(ctx, data, r.from).await;
    }

    fn new(socket: Arc<UdpSocket>, generation: u64, tasks: TaskTracker) -> Listener {
        Listener {
            socket,
            clock: Clock(Instant::now()),
            flows: ExpiringMap::default(),
            flows_per_ip: HashMap::new(),
            cids: ExpiringMap::default(),
            generation,
            receive_buffer: None,
            tasks,
        }
    }

    /// Asks the kernel for the receive buffer `receive_buffer` names, when it changed (a listener without the key
    /// keeps the system's default; removing it keeps the size set until a restart), and shows what the kernel
    /// accounts. Linux caps the size at `net.core.rmem_max` and doubles it: a reading below twice the size asked
    /// for means the cap applied, which is worth a warning (the operator's size is not in effect).
    fn size_receive_buffer(&mut self, ctx: &UdpContext) {
        let wanted = ctx.settings.receive_buffer;
        if let Some(bytes) = wanted.filter(|_| wanted != self.receive_buffer) {
            self.receive_buffer = wanted;
            match receive::set_receive_buffer(&self.socket, bytes) {
                Ok(granted) if granted < bytes.saturating_mul(2) => warn!(
                    listener = %ctx.name, asked = bytes, granted = granted / 2, rmem_max = receive::rmem_max(),
                    "receive_buffer capped by the kernel: raise net.core.rmem_max"
                ),
                Ok(granted) => info!(listener = %ctx.name, bytes = granted / 2, "receive buffer set"),
                Err(e) => warn!(listener = %ctx.name, error = %e, "cannot set the receive buffer"),
            }
        }
        if let Ok(bytes) = receive::receive_buffer(&self.socket) {
            ctx.metrics.receive_buffer.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    async fn on_datagram(&mut self, ctx: &UdpContext, data: &[u8], src: SocketAddr) {
        if ctx.generation != self.generation {
            self.on_reload(ctx);
        }
        let (m, s) = (&ctx.metrics, &ctx.settings);
        if data.len() > s.max_datagram_size {
            return m.drop(drop_reason::TOO_LARGE);
        }
        if !source_allowed(&ctx.allowed_sources, src.ip()) {
            return m.drop(drop_reason::SOURCE_NOT_ALLOWED);
        }
        let now = self.clock.now_ms();
        // A flood on a known flow costs a lookup per datagram, nothing more.
        if let Some(flow) = self.flows.get_mut(&src) {
            let rate = s.max_datagram_rate_per_flow;
            // 0: no limit.
            if rate > 0 && !flow.bucket.take(Rate::new(rate, s.datagram_rate_burst), self.clock.instant(now)) {
                return m.drop(drop_reason::RATE_LIMITED);
            }
        }
        let seen = match inspect(data, s.dtls_cid_length) {
            Ok(seen) => seen,
            Err(reason) => {
                m.drop(reason);
                if reason == drop_reason::MALFORMED_COAP {
                    if let Some(id) = coap::confirmable_message_id(data) {
                        // As the server would (RFC 7252 §4.2): 4 bytes for at least 4, no amplification.
                        let _ = self.socket.try_send_to(&coap::reset_message(id), src);
                    }
                }
                return;
            }
        };
        let stale = match self.flows.get(&src) {
            None => None,
            Some(flow) if flow.shared.broken.load(Ordering::Relaxed) || !flow.server.is_up() => {
                Some(eviction_reason::SERVER_DOWN)
            }
            Some(flow) => match seen.endpoint {
                Some(ep) => {
                    let best = ctx.balancer.candidates(Some(&PlacementKey::Endpoint(ep).bytes()));
                    best.first().is_some_and(|b| b.name != flow.server.name).then_some(eviction_reason::REPLACED)
                }
                None => None,
            },
        };
        match stale {
            Some(reason) => {
                if let Some(flow) = self.flows.remove(&src) {
                    self.forget(src, flow, reason, m);
                }
            }
            None => {
                if let Some(flow) = self.flows.get(&src) {
                    forward(flow, data, m, now).await;
                    let server = flow.server.name.clone();
                    if let Some(cid) = seen.cid {
                        self.learn(ctx, cid, &server, now);
                    }
                    return;
                }
            }
        }
        self.open(ctx, data, src, &seen, now).await;
    }

    /// A new flow for `src`, then the datagram on it.
    async fn open(&mut self, ctx: &UdpContext, data: &[u8], src: SocketAddr, seen: &DatagramKeys<'_>, now: u64) {
        let (m, s) = (&ctx.metrics, &ctx.settings);
        let ip = src.ip().to_canonical();
        if s.max_flows_per_ip > 0 && self.flows_per_ip.get(&ip).copied().unwrap_or(0) >= s.max_flows_per_ip {
            return m.drop(drop_reason::MAX_FLOWS_PER_IP);
        }
        let Some((kind, server, addr)) = self.place(ctx, seen, src, now) else {
            return m.drop(drop_reason::NO_SERVER);
        };
        while self.flows.len() >= s.max_flows.max(1) {
            match self.flows.pop_least_recent() {
                Some((addr, flow)) => self.forget(addr, flow, eviction_reason::FULL, m),
                None => break,
            }
        }
        let socket = match socket_to(addr) {
            Ok(socket) => socket,
            Err(e) => {
                warn!(listener = %ctx.name, server = %addr, error = %e, "cannot open a UDP socket to the server");
                return m.drop(drop_reason::NO_SERVER);
            }
        };
        debug!(listener = %ctx.name, device = %src, server = %server.name, key = kind, "flow opened");
        m.opened(kind);
        m.flows_active.inc();
        *self.flows_per_ip.entry(ip).or_insert(0) += 1;
        // Sent before the socket joins the runtime, whose write readiness for it is unknown until the reactor's
        // next turn.
        let sent = socket.send(data);
        let flow = match self.start_flow(ctx, src, server, socket, now) {
            Ok(flow) => flow,
            Err(e) => {
                warn!(listener = %ctx.name, server = %addr, error = %e, "cannot register a UDP socket");
                m.flows_active.dec();
                self.release_ip(ip);
                return m.drop(drop_reason::NO_SERVER);
            }
        };
        account(&flow, sent, m, now);
        let server = flow.server.name.clone();
        self.flows.insert(src, flow);
        if let Some(cid) = seen.cid {
            self.learn(ctx, cid, &server, now);
        }
    }

    /// The server of a new flow, with the placement key used and the server's socket address.
    fn place(
        &mut self,
        ctx: &UdpContext,
        seen: &DatagramKeys<'_>,
        src: SocketAddr,
        now: u64,
    ) -> Option<(&'static str, Arc<BackendServer>, SocketAddr)> {
        let (mut kind, key, node, learned) = match (seen.cid, seen.endpoint) {
            (Some(cid), _) => {
                let learned = self.cids.get_mut(cid).map(|e| {
                    e.last_seen = now;
                    e.server.clone()
                });
                (placement_kind::DTLS_CID, PlacementKey::DtlsCid(cid), ctx.node_servers.server_of(cid), learned)
            }
            (None, Some(ep)) => (placement_kind::ENDPOINT, PlacementKey::Endpoint(ep), None, None),
            (None, None) => (placement_kind::SOURCE, PlacementKey::Source(src), None, None),
        };
        let mut candidates = ctx.balancer.candidates(Some(&key.bytes()));
        // The server the CID's node id names, else the one this CID was seen going to, if usable; else the hash.
        let preferred =
            [(node, placement_kind::DTLS_CID_NODE_ID), (learned.as_deref(), placement_kind::DTLS_CID_LEARNED)];
        let found = preferred.into_iter().find_map(|(name, k)| {
            let name = name?;
            Some((candidates.iter().position(|s| s.name == name)?, k))
        });
        if let Some((pos, k)) = found {
            let server = candidates.remove(pos);
            candidates.insert(0, server);
            kind = k;
        }
        // No DNS here: a server whose host name has not resolved yet is skipped (see `balancer::address`).
        candidates.into_iter().find_map(|server| server.resolved().get().map(|addr| (kind, server, addr)))
    }

    /// The flow around its connected socket, with its reply task started.
    fn start_flow(
        &self,
        ctx: &UdpContext,
        device: SocketAddr,
        server: Arc<BackendServer>,
        socket: std::net::UdpSocket,
        now: u64,
    ) -> std::io::Result<Flow> {
        let upstream = Arc::new(UdpSocket::from_std(socket)?);
        let shared = Arc::new(FlowShared { last_seen: AtomicU64::new(now), broken: AtomicBool::new(false) });
        let replies = self
            .tasks
            .spawn(relay_replies(
                Arc::clone(&upstream),
                Arc::clone(&self.socket),
                device,
                Arc::clone(&shared),
                self.clock,
                ctx.metrics.clone(),
                server.metrics.received_bytes.clone(),
            ))
            .abort_handle();
        let settings = &ctx.settings;
        let rate = Rate::new(settings.max_datagram_rate_per_flow, settings.datagram_rate_burst);
        let bucket = TokenBucket::full(rate, self.clock.instant(now));
        Ok(Flow { upstream, _active: server.track(), server, shared, replies, bucket })
    }

    /// Remembers that `cid` goes to `server`. An entry whose server is still usable is not taken over by
    /// another server (a stray or forged record with a known CID cannot move a device's sessions). A CID carrying
    /// a configured node id is not remembered: its first byte says where it goes.
    fn learn(&mut self, ctx: &UdpContext, cid: &[u8], server: &str, now: u64) {
        if ctx.node_servers.server_of(cid).is_some() {
            return;
        }
        if let Some(entry) = self.cids.get_mut(cid) {
            if entry.server == server {
                entry.last_seen = now;
                return;
            }
            let pool = ctx.balancer.pool();
            if pool.servers.iter().any(|s| s.name == entry.server && s.usable()) {
                return;
            }
        }
        while self.cids.len() >= ctx.settings.max_dtls_cids.max(1) && self.cids.get(cid).is_none() {
            if self.cids.pop_least_recent().is_none() {
                break;
            }
        }
        self.cids.insert(cid.to_vec(), CidEntry { server: server.to_owned(), last_seen: now });
        ctx.metrics.dtls_cids.set(i64::try_from(self.cids.len()).unwrap_or(i64::MAX));
    }

    /// Accounts for a flow that was taken out of the table; dropping it closes its socket and reply task.
    fn forget(&mut self, device: SocketAddr, flow: Flow, reason: &'static str, m: &UdpListenerMetrics) {
        debug!(device = %device, server = %flow.server.name, reason, "flow ended");
        self.release_ip(device.ip().to_canonical());
        m.evict(reason);
        m.flows_active.dec();
        drop(flow);
    }

    fn release_ip(&mut self, ip: IpAddr) {
        if let Some(n) = self.flows_per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.flows_per_ip.remove(&ip);
            }
        }
    }

    /// Ends idle flows and forgets idle CIDs.
    fn expire(&mut self, ctx: &UdpContext) {
        let now = self.clock.now_ms();
        let idle = duration_ms(ctx.settings.flow_idle_timeout);
        if let Some(cutoff) = now.checked_sub(idle) {
            while let Some((device, flow)) = self.flows.pop_expired(cutoff) {
                self.forget(device, flow, eviction_reason::IDLE, &ctx.metrics);
            }
        }
        if let Some(cutoff) = now.checked_sub(duration_ms(ctx.settings.dtls_cid_timeout)) {
            while self.cids.pop_expired(cutoff).is_some() {}
            ctx.metrics.dtls_cids.set(i64::try_from(self.cids.len()).unwrap_or(i64::MAX));
        }
    }

    /// When the next flow or CID may expire (at most a minute ahead, so a reload's new timeouts apply).
    fn next_wake(&self, ctx: &UdpContext) -> Instant {
        let flows = self.flows.oldest_stamp().map(|t| t.saturating_add(duration_ms(ctx.settings.flow_idle_timeout)));
        let cids = self.cids.oldest_stamp().map(|t| t.saturating_add(duration_ms(ctx.settings.dtls_cid_timeout)));
        let limit = self.clock.now_ms().saturating_add(60_000);
        self.clock.instant(flows.into_iter().chain(cids).fold(limit, u64::min))
    }

    /// After a reload: flows whose server is still in the pool at the same address follow the new server object
    /// (its health); the others end.
    fn on_reload(&mut self, ctx: &UdpContext) {
        self.generation = ctx.generation;
        self.size_receive_buffer(ctx);
        let pool = ctx.balancer.pool();
        let gone = self.flows.extract_if(|_, flow| {
            let successor =
                pool.servers.iter().find(|s| s.name == flow.server.name && s.address == flow.server.address);
            match successor {
                Some(s) => {
                    flow.server = Arc::clone(s);
                    true
                }
                None => false,
            }
        });
        for (device, flow) in gone {
            self.forget(device, flow, eviction_reason::RELOAD, &ctx.metrics);
        }
    }
}

/// A non-blocking UDP socket connected to a server, from an ephemeral port.
fn socket_to(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = std::net::UdpSocket::bind(local)?;
    socket.connect(addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The longest the datagram task waits to send one datagram to a server.
const SEND_WAIT: Duration = Duration::from_millis(5);

/// Sends a device's datagram to its server. A socket whose write readiness the runtime has not seen yet (the
/// first moments of a flow) or whose buffer is full gets a short wait ([`SEND_WAIT`]), no more: past it the
/// datagram is dropped (counted) rather than stalling every other device.
async fn forward(flow: &Flow, data: &[u8], m: &UdpListenerMetrics, now: u64) {
    let sent = match flow.upstream.try_send(data) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            tokio::time::timeout(SEND_WAIT, flow.upstream.send(data))
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::WouldBlock.into()))
        }
        sent => sent,
    };
    account(flow, sent, m, now);
}

/// Counts a send to the server.
fn account(flow: &Flow, sent: std::io::Result<usize>, m: &UdpListenerMetrics, now: u64) {
    match sent {
        Ok(n) => {
            let n = n as u64;
            m.datagrams_to_server.inc();
            m.bytes_to_server.inc_by(n);
            flow.server.metrics.sent_bytes.inc_by(n);
            flow.shared.touch(now);
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => m.drop(drop_reason::UNREACHABLE),
        Err(_) => m.drop(drop_reason::SEND_FAILED),
    }
}

/// A flow's reply task: the server's datagrams, sent to the device from the listener's socket.
async fn relay_replies(
    upstream: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    device: SocketAddr,
    shared: Arc<FlowShared>,
    clock: Clock,
    m: UdpListenerMetrics,
    server_received: Counter,
) {
    loop {
        if upstream.readable().await.is_err() {
            break;
        }
        loop {
            // Receive and send without an await in between, so the buffer can be the thread's.
            let step = REPLY_BUFFER.with(|cell| {
                let Ok(mut buf) = cell.try_borrow_mut() else {
                    return Err(std::io::Error::other("reply buffer in use"));
                };
                let n = upstream.try_recv(&mut buf)?;
                let data = buf.get(..n).unwrap_or_default();
                Ok((n, listener.try_send_to(data, device)))
            });
            match step {
                Ok((n, Ok(_))) => {
                    let n = n as u64;
                    m.datagrams_to_client.inc();
                    m.bytes_to_client.inc_by(n);
                    server_received.inc_by(n);
                    shared.touch(clock.now_ms());
                }
                Ok((_, Err(_))) => m.drop(drop_reason::SEND_FAILED),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // The ICMP answer to an earlier datagram (the server's port is closed): the health checks judge.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => {
                    debug!(device = %device, error = %e, "reply relay ended");
                    shared.broken.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
    shared.broken.store(true, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_keys() {
        let v4: SocketAddr = "192.0.2.7:5683".parse().unwrap();
        assert_eq!(PlacementKey::Source(v4).bytes(), b"192.0.2.7:5683");
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:5683".parse().unwrap();
        assert_eq!(PlacementKey::Source(mapped).bytes(), b"192.0.2.7:5683");
        let v6: SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
        assert_eq!(PlacementKey::Source(v6).bytes(), b"[2001:db8::1]:40000");
        assert_eq!(PlacementKey::Endpoint(b"urn:imei:1").bytes(), b"urn:imei:1");
        assert_eq!(PlacementKey::DtlsCid(&[0xAB, 0x00]).bytes(), b"dtls-cid:\xAB\x00");
    }

    #[test]
    fn inspect_tells_dtls_from_coap() {
        let get = [0x40, 0x01, 0x00, 0x01];
        assert!(inspect(&get, None).is_ok());
        assert_eq!(inspect(&[], None).err(), Some(drop_reason::MALFORMED_COAP));
        assert_eq!(inspect(&[0x80, 0x01, 0x00, 0x01], None).err(), Some(drop_reason::MALFORMED_COAP));
        assert_eq!(
            inspect(&[23, 0x03, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], None).err(),
            Some(drop_reason::MALFORMED_DTLS)
        );
        let mut cid_record = vec![25, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 1, 9, 9, 0, 1, 0xAA];
        assert_eq!(inspect(&cid_record, Some(2)).unwrap().cid, Some(&[9, 9][..]));
        assert_eq!(inspect(&cid_record, None).err(), Some(drop_reason::MALFORMED_DTLS), "a CID nobody issues");
        cid_record.push(0);
        assert_eq!(inspect(&cid_record, Some(2)).err(), Some(drop_reason::MALFORMED_DTLS), "a byte after the record");
        assert_eq!(inspect(&[0x30], None).err(), Some(drop_reason::MALFORMED_DTLS));
    }

    /// Three servers on IP literals (no resolving): a and b issue CIDs with node ids 1 and 2, c without.
    const NODES: &str = r#"
listeners:
  - { name: coaps, bind: "127.0.0.1:0", protocol: coap, backend: dtls, dtls_cid_length: 4 }
backends:
  - name: dtls
    protocol: coap
    health: { check: none }
    servers:
      - { name: a, address: "127.0.0.1:1", dtls_cid_node_id: 1 }
      - { name: b, address: "127.0.0.1:2", dtls_cid_node_id: 2 }
      - { name: c, address: "127.0.0.1:3" }
"#;

    /// The flows' reply tasks are tracked with the listener's task: a drain waits for them, and they end with it.
    #[tokio::test]
    async fn reply_tasks_join_the_listeners_tracker() {
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let yaml = format!(
            "listeners:\n  - {{ name: coap, bind: \"127.0.0.1:0\", protocol: coap, backend: b }}\n\
             backends:\n  - name: b\n    protocol: coap\n    health: {{ check: none }}\n\
             \x20   servers: [ {{ name: s, address: \"{}\" }} ]\n",
            server.local_addr().unwrap()
        );
        let config = crate::config::parse(&yaml, std::path::Path::new("t.yaml")).unwrap();
        let metrics = Metrics::new();
        let balancer = Arc::new(Balancer::new(crate::balancer::Pool::new(config.backends[0].clone(), &metrics)));
        let ctx = Arc::new(ArcSwap::from_pointee(context(&config.listeners[0], balancer, &metrics, 0)));
        let socket = Arc::new(bind("127.0.0.1:0".parse().unwrap()).unwrap());
        let front = socket.local_addr().unwrap();
        let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
        tracker.spawn(serve(socket, ctx, stop.clone(), tracker.clone()));
        let device = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..3u8 {
            device.send_to(&[0x40, 0x01, 0x00, i], front).await.unwrap();
            let mut buf = [0u8; 16];
            tokio::time::timeout(Duration::from_secs(3), server.recv_from(&mut buf)).await.unwrap().unwrap();
        }
        assert_eq!(tracker.len(), 2, "the listener's task and its one flow's reply task");
        stop.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(3), tracker.wait())
            .await
            .expect("the reply task ends with the listener");
    }

    #[test]
    fn node_servers_read_the_first_byte_of_the_cid() {
        let config = crate::config::parse(NODES, std::path::Path::new("t.yaml")).unwrap();
        let nodes = NodeServers::new(&config.backends[0].servers);
        assert_eq!(nodes.server_of(&[1, 0xAA, 0xBB, 0xCC]), Some("a"));
        assert_eq!(nodes.server_of(&[2, 0, 0, 0]), Some("b"));
        assert_eq!(nodes.server_of(&[3, 2, 1, 0]), None, "no server has node id 3 (c has none)");
        assert_eq!(nodes.server_of(&[0xAA, 1, 2, 0]), None, "only the first byte counts");
        assert_eq!(nodes.server_of(&[]), None);
        assert_eq!(NodeServers::default().server_of(&[1, 2, 3, 4]), None);
    }

    #[tokio::test]
    async fn a_cid_goes_to_its_node_then_to_its_learned_server_then_by_hash() {
        let config = crate::config::parse(NODES, std::path::Path::new("t.yaml")).unwrap();
        let metrics = Metrics::new();
        let pool = crate::balancer::Pool::new(config.backends[0].clone(), &metrics);
        let balancer = Arc::new(Balancer::new(pool));
        let ctx = context(&config.listeners[0], Arc::clone(&balancer), &metrics, 0);
        let mut l = Listener::new(Arc::new(bind("127.0.0.1:0".parse().unwrap()).unwrap()), 0, TaskTracker::new());
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let by_hash = |cid: &[u8]| balancer.candidates(Some(&PlacementKey::DtlsCid(cid).bytes()))[0].name.clone();
        let place = |l: &mut Listener, cid: &[u8]| {
            let seen = DatagramKeys { cid: Some(cid), endpoint: None };
            l.place(&ctx, &seen, src, 1).map(|(kind, server, _)| (kind, server.name.clone())).unwrap()
        };
        // Node id 2, with random bytes after it that hash to another server: b all the same.
        let node_b: Vec<u8> = (0u8..).map(|i| vec![2, i, 0x5A, 0xC3]).find(|c| by_hash(c) != "b").unwrap();
        assert_eq!(place(&mut l, &node_b), (placement_kind::DTLS_CID_NODE_ID, "b".to_owned()));
        // Nothing to remember for it, even a record seen going elsewhere.
        l.learn(&ctx, &node_b, "a", 1);
        assert!(l.cids.is_empty());
        assert_eq!(place(&mut l, &node_b), (placement_kind::DTLS_CID_NODE_ID, "b".to_owned()));
        // A stale entry (say from before a reload gave b its node id) does not beat the node id.
        l.cids.insert(node_b.clone(), CidEntry { server: "c".to_owned(), last_seen: 1 });
        assert_eq!(place(&mut l, &node_b).1, "b");
        l.cids.remove(&node_b[..]);

        // A first byte that is nobody's node id: the hash, then what this instance learned.
        let plain: Vec<u8> = (0u8..).map(|i| vec![0xC0, i, 7, 7]).find(|c| by_hash(c) != "c").unwrap();
        assert_eq!(place(&mut l, &plain), (placement_kind::DTLS_CID, by_hash(&plain)));
        l.learn(&ctx, &plain, "c", 1);
        assert_eq!(l.cids.len(), 1);
        assert_eq!(place(&mut l, &plain), (placement_kind::DTLS_CID_LEARNED, "c".to_owned()));

        // The node's server down: its sessions are gone with it; the CID goes by its hash over the others.
        let b = balancer.pool().servers.iter().find(|s| s.name == "b").cloned().unwrap();
        b.set_up(false);
        let (kind, server) = place(&mut l, &node_b);
        assert_eq!((kind, server.as_str()), (placement_kind::DTLS_CID, by_hash(&node_b).as_str()));
        assert_ne!(server, "b");
        b.set_up(true);
        assert_eq!(place(&mut l, &node_b).1, "b", "back with its server when it is up again");
    }
}
