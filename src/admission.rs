//! Admission: whether a new connection may take a place under the limits every listener shares (`limits.
//! max_connections`, `max_handshakes`, the per-IP count and rate), and the ticket that holds its place until it
//! ends. The accept loops ([`crate::listener`]) ask at accept; a session asks again for the client a trusted proxy's
//! header names.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::Limits;
use crate::rate_limit::{RateLimiter, RateTableMetrics};
use crate::reject::Reject;
use crate::slots::{Slot, Slots};

/// Admission limits shared by every listener: connections overall and per source IP.
///
/// The limits are replaced by a reload; the counts are not: a successor ([`Admission::successor`]) shares the open
/// connections, the per-IP counts and, while the rate is the same, the per-IP rate buckets, so that a reload never
/// lets an address past its limit.
///
/// A connection from a listener's `trusted_proxies` is admitted in two steps: at accept against `max_connections`
/// only ([`Admission::admit_proxy`]: the proxy carries many clients, and its header phase is bounded by that and by
/// `handshake_timeout`), then, once its PROXY header names the client, against the per-IP limits of that client
/// ([`Admission::admit_client`]).
pub struct Admission {
    max_connections: usize,
    /// Client connections open now, every listener together.
    open: Arc<Slots>,
    max_handshakes: usize,
    /// TLS handshakes and WebSocket upgrades in progress, every listener together.
    handshakes: Arc<Slots>,
    per_ip_max: usize,
    per_ip: Arc<PerIpCounts>,
    rate: Option<Arc<RateLimiter>>,
    /// (rate, burst) of `rate`, to tell whether a successor can keep its buckets.
    rate_settings: (u32, u32),
    rate_table: RateTableMetrics,
}

/// Open client connections per source address. Addresses with none are removed, so the table holds no more
/// addresses than there are connections open, and each step is one hash look-up.
type PerIpCounts = Mutex<HashMap<IpAddr, usize>>;

/// A connection's place in the limits, released on drop (into the counts its admission shares with successors).
pub struct AdmissionTicket {
    _open: Slot,
    ip: Option<(IpAddr, Arc<PerIpCounts>)>,
}

impl Drop for AdmissionTicket {
    fn drop(&mut self) {
        if let Some((ip, per_ip)) = self.ip.take() {
            let mut map = per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

impl Admission {
    /// The admission rules of `limits`: connections overall, per IP, and new connections per second per IP (its
    /// table shown in `rate_table`).
    pub fn from_limits(limits: &Limits, rate_table: RateTableMetrics) -> Arc<Admission> {
        Arc::new(Admission::with_counts(limits, Arc::default(), Arc::default(), Arc::default(), None, rate_table))
    }

    /// The admission of `limits` after a reload: the counts of this one go on (see [`Admission`]); the rate buckets
    /// too, unless the rate or the burst changed (then every address starts with a full bucket of the new size).
    pub fn successor(&self, limits: &Limits) -> Arc<Admission> {
        let same_rate = rate_settings(limits) == self.rate_settings;
        let rate = if same_rate { self.rate.clone() } else { None };
        if let Some(rate) = &rate {
            rate.resize(limits.connection_rate_table_size, std::time::Instant::now());
        }
        let (open, handshakes, per_ip) =
            (Arc::clone(&self.open), Arc::clone(&self.handshakes), Arc::clone(&self.per_ip));
        Arc::new(Admission::with_counts(limits, open, handshakes, per_ip, rate, self.rate_table.clone()))
    }

    /// Client connections open now, every listener together.
    pub fn open(&self) -> &Arc<Slots> {
        &self.open
    }

    /// `limits.max_connections` (0: unlimited).
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// TLS handshakes and WebSocket upgrades in progress, every listener together.
    pub fn handshakes(&self) -> &Arc<Slots> {
        &self.handshakes
    }

    /// `limits.max_handshakes` (0: unlimited).
    pub fn max_handshakes(&self) -> usize {
        self.max_handshakes
    }

    /// Wakes the accept loops that wait for room: the limits may have changed (call once this one is in place).
    pub fn wake_waiting_listeners(&self) {
        self.open.wake_all();
        self.handshakes.wake_all();
    }

    fn with_counts(
        limits: &Limits,
        open: Arc<Slots>,
        handshakes: Arc<Slots>,
        per_ip: Arc<PerIpCounts>,
        rate: Option<Arc<RateLimiter>>,
        rate_table: RateTableMetrics,
    ) -> Admission {
        let (per_second, burst) = rate_settings(limits);
        let size = limits.connection_rate_table_size;
        let new_table = || Arc::new(RateLimiter::new(per_second, burst, size, rate_table.clone()));
        let rate = rate.or_else(|| (per_second > 0).then(new_table));
        if rate.is_none() {
            rate_table.entries.set(0);
        }
        Admission {
            max_connections: limits.max_connections,
            open,
            max_handshakes: limits.max_handshakes,
            handshakes,
            per_ip_max: limits.max_connections_per_ip,
            per_ip,
            rate,
            rate_settings: (per_second, burst),
            rate_table,
        }
    }

    /// Admits a connection from `ip`, or says which limit refuses it.
    pub fn admit(&self, ip: IpAddr) -> Result<AdmissionTicket, Reject> {
        self.within_rate(ip)?;
        let mut ticket = self.admit_proxy()?;
        self.count_per_ip(&mut ticket, ip)?;
        Ok(ticket)
    }

    /// Admits a trusted proxy's connection before its header: `max_connections` only.
    pub fn admit_proxy(&self) -> Result<AdmissionTicket, Reject> {
        let open = self.open.try_take(self.max_connections).ok_or(Reject::MaxConnections)?;
        // From here the ticket owns the place it took in `open`.
        Ok(AdmissionTicket { _open: open, ip: None })
    }

    /// The client at `ip` that a trusted proxy's header names, on the proxy's `ticket`: the per-IP rate and count.
    pub fn admit_client(&self, ticket: &mut AdmissionTicket, ip: IpAddr) -> Result<(), Reject> {
        self.within_rate(ip)?;
        self.count_per_ip(ticket, ip)
    }

    /// Takes one of `ip`'s new-connection tokens.
    fn within_rate(&self, ip: IpAddr) -> Result<(), Reject> {
        match &self.rate {
            Some(rate) if !rate.allow(ip, std::time::Instant::now()) => Err(Reject::RateLimited),
            _ => Ok(()),
        }
    }

    /// Counts `ticket`'s connection under `ip` (released when the ticket drops).
    fn count_per_ip(&self, ticket: &mut AdmissionTicket, ip: IpAddr) -> Result<(), Reject> {
        if self.per_ip_max == 0 || ticket.ip.is_some() {
            return Ok(());
        }
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.per_ip_max {
            return Err(Reject::MaxConnectionsPerIp);
        }
        *n += 1;
        ticket.ip = Some((ip, Arc::clone(&self.per_ip)));
        Ok(())
    }
}

/// `(max_connection_rate_per_ip, connection_rate_burst)` of `limits`.
fn rate_settings(limits: &Limits) -> (u32, u32) {
    (limits.max_connection_rate_per_ip, limits.connection_rate_burst)
}
