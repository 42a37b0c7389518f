//! How a backend orders its servers for a new client.
//!
//! # Rendezvous hashing (`balance: client-id`)
//!
//! For a key `k` (the MQTT client id) and a server named `s`, the hash is
//! `h = XXH64(seed = 0x6d71_7474_6c62_0001, bytes = s ++ [0xFF] ++ k)` (xxHash64, the byte 0xFF never occurs in
//! UTF-8, so the concatenation is unambiguous). Servers are ranked by score, highest first:
//! - when every server has the same weight, the score is `h` itself (integer comparison, exact everywhere);
//! - otherwise `score = weight / -ln(u)` with `u = ((h >> 11) + 0.5) / 2^53`, which gives each server a share of
//!   keys proportional to its weight (the "logarithmic method" of weighted rendezvous hashing).
//!
//! Ties (equal scores) are broken by server name. The algorithm and seed are part of the product's interface:
//! every instance with the same server names computes the same placement, so they must never change.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::hash::Hasher;
use twox_hash::XxHash64;

use super::backend::BackendServer;

/// The fixed seed of the placement hash. Never change it: instances of different versions must agree.
pub const SEED: u64 = 0x6d71_7474_6c62_0001;

/// The placement hash of `key` on the server named `server`.
pub fn placement_hash(server: &str, key: &[u8]) -> u64 {
    let mut h = XxHash64::with_seed(SEED);
    h.write(server.as_bytes());
    h.write(&[0xFF]);
    h.write(key);
    h.finish()
}

/// Weighted score of a hash: larger is better.
fn weighted_score(hash: u64, weight: u32) -> f64 {
    let u = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}

/// A way to order the candidate servers for one new client, best first.
pub trait Selection: Send + Sync {
    /// Orders `servers` (already filtered to the usable ones) for a client with `key` (None: no client id).
    fn order(&self, key: Option<&[u8]>, servers: &mut [Arc<BackendServer>]);
}

/// Weighted rendezvous hash on the key; clients without a key go to the least-loaded server.
#[derive(Debug, Default)]
pub struct Rendezvous {
    fallback: LeastConn,
}

impl Selection for Rendezvous {
    fn order(&self, key: Option<&[u8]>, servers: &mut [Arc<BackendServer>]) {
        let Some(key) = key else {
            return self.fallback.order(None, servers);
        };
        let equal_weights = servers.windows(2).all(|w| matches!(w, [a, b] if a.weight == b.weight));
        if equal_weights {
            servers.sort_by_cached_key(|s| (std::cmp::Reverse(placement_hash(&s.name, key)), s.name.clone()));
        } else {
            let mut scored: Vec<(f64, Arc<BackendServer>)> = servers
                .iter()
                .map(|s| (weighted_score(placement_hash(&s.name, key), s.weight), Arc::clone(s)))
                .collect();
            scored.sort_by(|(sa, a), (sb, b)| sb.total_cmp(sa).then_with(|| a.name.cmp(&b.name)));
            for (slot, (_, s)) in servers.iter_mut().zip(scored) {
                *slot = s;
            }
        }
    }
}

/// Each new client starts at the next server in turn.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Selection for RoundRobin {
    fn order(&self, _key: Option<&[u8]>, servers: &mut [Arc<BackendServer>]) {
        if servers.is_empty() {
            return;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % servers.len();
        servers.rotate_left(start);
    }
}

/// Fewest open relays relative to weight first; ties rotate so equal servers share new clients.
#[derive(Debug, Default)]
pub struct LeastConn {
    ties: RoundRobin,
}

impl Selection for LeastConn {
    fn order(&self, _key: Option<&[u8]>, servers: &mut [Arc<BackendServer>]) {
        self.ties.order(None, servers);
        // Stable sort keeps the rotation among equals. Compare active/weight without division.
        servers.sort_by(|a, b| {
            let la = a.active() as u128 * u128::from(b.weight);
            let lb = b.active() as u128 * u128::from(a.weight);
            la.cmp(&lb)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use crate::metrics::Metrics;

    fn servers(weights: &[u32]) -> Vec<Arc<BackendServer>> {
        let m = Metrics::new();
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let c = ServerConfig {
                    name: format!("s{i}"),
                    address: "127.0.0.1:1".into(),
                    weight: *w,
                    dtls_cid_node_id: None,
                    max_connections: None,
                    max_connection_rate: None,
                    assigned_id_prefix: None,
                };
                Arc::new(BackendServer::new(&c, m.server("b", &c.name)))
            })
            .collect()
    }

    fn first(sel: &dyn Selection, key: &str, pool: &[Arc<BackendServer>]) -> String {
        let mut v = pool.to_vec();
        sel.order(Some(key.as_bytes()), &mut v);
        v[0].name.clone()
    }

    // Computed with the reference xxHash implementation (python-xxhash: xxh64(b"wbroker01\xffclient-1", seed)).
    const PINNED_1: u64 = 9_389_813_879_399_547_800;
    const PINNED_2: u64 = 693_337_133_047_957_124;

    #[test]
    fn hash_is_fixed() {
        // These values are part of the interface: instances of every version and platform must agree.
        assert_eq!(placement_hash("wbroker01", b"client-1"), PINNED_1);
        assert_eq!(placement_hash("wbroker02", b""), PINNED_2);
    }

    #[test]
    fn equal_weights_spread_evenly_and_only_failed_servers_keys_move() {
        let pool = servers(&[1, 1, 1]);
        let sel = Rendezvous::default();
        let mut counts = [0usize; 3];
        let mut placed = Vec::new();
        for i in 0..3000 {
            let name = first(&sel, &format!("client-{i}"), &pool);
            let idx: usize = name[1..].parse().unwrap();
            counts[idx] += 1;
            placed.push(name);
        }
        for c in counts {
            assert!((900..=1100).contains(&c), "{counts:?}");
        }
        // Remove s1: only its keys move.
        let without: Vec<_> = pool.iter().filter(|s| s.name != "s1").cloned().collect();
        for (i, before) in placed.iter().enumerate() {
            let after = first(&sel, &format!("client-{i}"), &without);
            if before != "s1" {
                assert_eq!(&after, before);
            }
        }
    }

    #[test]
    fn weights_shift_the_spread() {
        let pool = servers(&[1, 2, 1]);
        let sel = Rendezvous::default();
        let mut counts = [0usize; 3];
        for i in 0..4000 {
            let name = first(&sel, &format!("id{i}"), &pool);
            counts[name[1..].parse::<usize>().unwrap()] += 1;
        }
        // Expected 1000 / 2000 / 1000.
        assert!((1800..=2200).contains(&counts[1]), "{counts:?}");
        assert!((850..=1150).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn round_robin_rotates() {
        let pool = servers(&[1, 1, 1]);
        let sel = RoundRobin::default();
        let picks: Vec<String> = (0..3).map(|_| first(&sel, "x", &pool)).collect();
        assert_eq!(picks, ["s0", "s1", "s2"]);
    }

    #[test]
    fn least_conn_prefers_idle() {
        let pool = servers(&[1, 1]);
        let _g = pool[0].track();
        let sel = LeastConn::default();
        assert_eq!(first(&sel, "x", &pool), "s1");
        assert_eq!(first(&sel, "y", &pool), "s1");
    }
}
