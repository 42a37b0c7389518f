//! The reload planner: from the running configuration and the new one, which listeners keep their socket, which
//! need a new one and which stop; which servers of each pool carry over; whether the admission limits change.
//! Pure: nothing is bound, started or stopped here ([`super::apply`] executes the plan).

use crate::config::{BackendConfig, Config, ListenerConfig, ListenerProtocol, ServerConfig};

use super::ReloadError;

/// The kind of socket a listener holds: TCP and UDP ports are apart, so only listeners of one kind match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn of(l: &ListenerConfig) -> Transport {
        if l.protocol == ListenerProtocol::Coap {
            Transport::Udp
        } else {
            Transport::Tcp
        }
    }
}

/// What happens to one listener of the new configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerStep {
    /// It continues the running listener at this index of the old configuration: same socket (and, for `coap`,
    /// same flows), new settings for its next connections or datagrams.
    Keep(usize),
    /// It gets a new socket.
    Bind,
}

/// What happens to one server of a pool that continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerStep {
    /// The server at this index of the old pool, unchanged (same address, weight and caps): the same object goes on.
    Same(usize),
    /// Same name, new address, weight or caps: a successor takes over the health and administrative state of the server
    /// at this index of the old pool.
    Successor(usize),
    /// A server the old pool did not have.
    New,
}

/// What happens to one backend of the new configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolStep {
    /// The backend of the same name (at this index of the old configuration) takes the new pool, per server.
    Swap { old: usize, servers: Vec<ServerStep> },
    /// A backend the old configuration did not have.
    New,
}

/// Everything a reload changes, decided before anything is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One step per listener of the new configuration, in its order.
    pub listeners: Vec<ListenerStep>,
    /// The listeners of the old configuration (indexes) that stop accepting; their open connections go on.
    pub removed: Vec<usize>,
    /// One step per backend of the new configuration, in its order.
    pub pools: Vec<PoolStep>,
    /// Servers (backend, server) that left their pool, whose metric series are dropped.
    pub forgotten: Vec<(String, String)>,
    /// Routes (listener, route name) the new configuration no longer has, whose match counters are dropped.
    pub forgotten_routes: Vec<(String, String)>,
    /// The `limits` changed: admission is replaced.
    pub admission_changed: bool,
    /// `admin.bind` changed (not reloaded: the endpoint stays where it is).
    pub admin_bind_changed: bool,
    /// `workers` changed (not reloaded).
    pub workers_changed: bool,
}

/// Plans the reload from `old` (running) to `new` (see the module docs of [`super`] for the rules).
pub fn plan(old: &Config, new: &Config) -> Result<Plan, ReloadError> {
    let (listeners, removed) = plan_listeners(&old.listeners, &new.listeners)?;
    let (pools, forgotten) = plan_pools(&old.backends, &new.backends);
    Ok(Plan {
        listeners,
        removed,
        pools,
        forgotten,
        forgotten_routes: forgotten_routes(old, new),
        admission_changed: old.limits != new.limits,
        admin_bind_changed: old.admin.as_ref().map(|a| (a.bind, a.control_bind, a.max_connections))
            != new.admin.as_ref().map(|a| (a.bind, a.control_bind, a.max_connections)),
        workers_changed: old.workers != new.workers,
    })
}

impl Plan {
    /// The one-line outcome of a reload: `3 listeners (1 added, 0 removed), 2 backends, 5 servers`.
    pub fn summary(&self, new: &Config) -> String {
        let added = self.listeners.iter().filter(|s| **s == ListenerStep::Bind).count();
        let servers: usize = new.backends.iter().map(|b| b.servers.len()).sum();
        format!(
            "{} listeners ({} added, {} removed), {} backends, {} servers",
            new.listeners.len(),
            added,
            self.removed.len(),
            new.backends.len(),
            servers
        )
    }
}

/// The (listener, route) names of `old` that `new` does not have.
fn forgotten_routes(old: &Config, new: &Config) -> Vec<(String, String)> {
    let names = |c: &Config| -> Vec<(String, String)> {
        c.listeners.iter().flat_map(|l| l.routes.iter().map(|r| (l.name.clone(), r.name.clone()))).collect()
    };
    let kept = names(new);
    names(old).into_iter().filter(|r| !kept.contains(r)).collect()
}

/// Matches each new listener to a running one, and finds the running ones that stop.
fn plan_listeners(
    old: &[ListenerConfig],
    new: &[ListenerConfig],
) -> Result<(Vec<ListenerStep>, Vec<usize>), ReloadError> {
    let mut taken = vec![false; old.len()];
    let mut steps = Vec::with_capacity(new.len());
    for l in new {
        let found = continued(old, &taken, l);
        if let Some(t) = found.and_then(|i| taken.get_mut(i)) {
            *t = true;
        }
        steps.push(found.map_or(ListenerStep::Bind, ListenerStep::Keep));
    }
    let free = |i: usize| !taken.get(i).copied().unwrap_or(true);
    for (l, step) in new.iter().zip(&steps) {
        if *step != ListenerStep::Bind {
            continue;
        }
        if let Some((_, holder)) = old.iter().enumerate().find(|(i, o)| free(*i) && same_socket(o, l)) {
            return Err(ReloadError::Held { name: l.name.clone(), addr: l.bind, holder: holder.name.clone() });
        }
    }
    let removed = (0..old.len()).filter(|&i| free(i)).collect();
    Ok((steps, removed))
}

/// The running listener `l` continues, if any: the free one of its name when its address is the same (a
/// listener keeps its socket only then), else, when no free one has its name, a free one on the same non-zero
/// address (a renamed listener).
fn continued(old: &[ListenerConfig], taken: &[bool], l: &ListenerConfig) -> Option<usize> {
    let free = |i: usize| !taken.get(i).copied().unwrap_or(true);
    let kind = Transport::of(l);
    let by_name = old.iter().position(|o| o.name == l.name && Transport::of(o) == kind).filter(|&i| free(i));
    match by_name {
        Some(i) => old.get(i).is_some_and(|o| o.bind == l.bind).then_some(i),
        None => old.iter().enumerate().position(|(i, o)| free(i) && same_socket(o, l)),
    }
}

/// `o`'s socket is the one `l` asks for: same kind, same address, and a fixed port (port 0 asks for a new one).
fn same_socket(o: &ListenerConfig, l: &ListenerConfig) -> bool {
    Transport::of(o) == Transport::of(l) && o.bind == l.bind && l.bind.port() != 0
}

/// Whether a server of the new configuration can go on as the same object: same address, weight and caps.
fn same_server(old: &ServerConfig, new: &ServerConfig) -> bool {
    old.address == new.address
        && old.weight == new.weight
        && old.max_connections == new.max_connections
        && old.max_connection_rate == new.max_connection_rate
}

/// Matches backends by name and their servers by name; lists the servers that leave.
fn plan_pools(old: &[BackendConfig], new: &[BackendConfig]) -> (Vec<PoolStep>, Vec<(String, String)>) {
    let mut forgotten = Vec::new();
    let mut steps = Vec::with_capacity(new.len());
    for b in new {
        let Some((i, o)) = old.iter().enumerate().find(|(_, o)| o.name == b.name) else {
            steps.push(PoolStep::New);
            continue;
        };
        let servers = b
            .servers
            .iter()
            .map(|s| match o.servers.iter().position(|x| x.name == s.name) {
                Some(j) if o.servers.get(j).is_some_and(|x| same_server(x, s)) => ServerStep::Same(j),
                Some(j) => ServerStep::Successor(j),
                None => ServerStep::New,
            })
            .collect();
        let gone = o.servers.iter().filter(|x| !b.servers.iter().any(|s| s.name == x.name));
        forgotten.extend(gone.map(|x| (b.name.clone(), x.name.clone())));
        steps.push(PoolStep::Swap { old: i, servers });
    }
    for o in old.iter().filter(|o| !new.iter().any(|b| b.name == o.name)) {
        forgotten.extend(o.servers.iter().map(|x| (o.name.clone(), x.name.clone())));
    }
    (steps, forgotten)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration of `listeners` (one flow-style mapping per line) on a backend `mqtt` and a backend `coap`,
    /// each with the servers given (`name address weight`), and `extra` top-level lines.
    fn config(listeners: &[&str], mqtt: &[&str], coap: &[&str], extra: &str) -> Config {
        let servers = |list: &[&str]| -> String {
            list.iter()
                .map(|s| {
                    let f: Vec<&str> = s.split(' ').collect();
                    format!("      - {{ name: {}, address: \"{}\", weight: {} }}\n", f[0], f[1], f[2])
                })
                .collect()
        };
        let mut text = String::from("listeners:\n");
        for l in listeners {
            text.push_str(&format!("  - {l}\n"));
        }
        text.push_str("backends:\n");
        for (name, list) in [("mqtt", mqtt), ("coap", coap)] {
            if list.is_empty() {
                continue;
            }
            text.push_str(&format!("  - name: {name}\n    protocol: {name}\n    health: {{ check: none }}\n"));
            text.push_str(&format!("    servers:\n{}", servers(list)));
        }
        text.push_str(extra);
        crate::config::parse(&text, std::path::Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    const A: &str = r#"{ name: a, bind: "127.0.0.1:1883", protocol: mqtt, backend: mqtt }"#;
    const B: &str = r#"{ name: b, bind: "127.0.0.1:8883", protocol: mqtt, backend: mqtt }"#;
    const C: &str = r#"{ name: c, bind: "127.0.0.1:5683", protocol: coap, backend: coap }"#;
    const SERVERS: &[&str] = &["s1 127.0.0.1:1 1", "s2 127.0.0.1:2 1"];
    const COAP_SERVERS: &[&str] = &["d1 127.0.0.1:3 1"];

    fn two(listeners: &[&str]) -> Config {
        config(listeners, SERVERS, COAP_SERVERS, "")
    }

    #[test]
    fn the_same_configuration_keeps_everything() {
        let c = two(&[A, B, C]);
        let p = plan(&c, &c).unwrap();
        let keep = vec![ListenerStep::Keep(0), ListenerStep::Keep(1), ListenerStep::Keep(2)];
        assert_eq!(p.listeners, keep);
        assert!(p.removed.is_empty());
        let same = |n: usize| (0..n).map(ServerStep::Same).collect::<Vec<_>>();
        let pools = vec![PoolStep::Swap { old: 0, servers: same(2) }, PoolStep::Swap { old: 1, servers: same(1) }];
        assert_eq!(p.pools, pools);
        assert!(p.forgotten.is_empty());
        assert!(!p.admission_changed && !p.admin_bind_changed && !p.workers_changed);
        assert_eq!(p.summary(&c), "3 listeners (0 added, 0 removed), 2 backends, 3 servers");
    }

    #[test]
    fn listeners_match_by_name_then_by_fixed_address() {
        let old = two(&[A, B, C]);
        // Reordered, `a` renamed on its address, `c` renamed on its (UDP) address.
        let renamed = two(&[
            &B.replace("8883\", protocol: mqtt", "8883\", protocol: websocket"),
            &A.replace("a,", "x,"),
            &C.replace("c,", "y,"),
        ]);
        let p = plan(&old, &renamed).unwrap();
        assert_eq!(p.listeners, vec![ListenerStep::Keep(1), ListenerStep::Keep(0), ListenerStep::Keep(2)]);
        assert!(p.removed.is_empty());
    }

    #[test]
    fn a_new_address_is_a_new_socket_and_the_old_one_stops() {
        let old = two(&[A, C]);
        let moved = two(&[&A.replace("1883", "1884"), &C.replace("5683", "5684"), B]);
        let p = plan(&old, &moved).unwrap();
        assert_eq!(p.listeners, vec![ListenerStep::Bind; 3]);
        assert_eq!(p.removed, vec![0, 1]);
        assert_eq!(p.summary(&moved), "3 listeners (3 added, 2 removed), 2 backends, 3 servers");
    }

    #[test]
    fn port_zero_matches_only_by_name() {
        let zero = |name: &str| format!(r#"{{ name: {name}, bind: "127.0.0.1:0", protocol: mqtt, backend: mqtt }}"#);
        let old = two(&[&zero("a")]);
        assert_eq!(plan(&old, &two(&[&zero("a")])).unwrap().listeners, vec![ListenerStep::Keep(0)]);
        let p = plan(&old, &two(&[&zero("b")])).unwrap();
        assert_eq!((p.listeners, p.removed), (vec![ListenerStep::Bind], vec![0]));
    }

    #[test]
    fn tcp_and_udp_listeners_never_match_each_other() {
        // `a` becomes a coap listener on the same port number: a UDP socket, while the TCP one stops.
        let old = two(&[A]);
        let udp = two(&[r#"{ name: a, bind: "127.0.0.1:1883", protocol: coap, backend: coap }"#]);
        let p = plan(&old, &udp).unwrap();
        assert_eq!((p.listeners, p.removed), (vec![ListenerStep::Bind], vec![0]));
    }

    #[test]
    fn taking_the_address_of_a_listener_that_stops_waits_for_the_next_reload() {
        for (old, new) in [
            (two(&[A, B]), two(&[&A.replace("1883", "8883")])),
            (two(&[C, &C.replace("c,", "d,").replace("5683", "5684")]), two(&[&C.replace("5683", "5684")])),
        ] {
            let e = plan(&old, &new).unwrap_err().to_string();
            assert!(
                e.contains("is held by listener") && e.ends_with("being removed in the same reload: reload twice"),
                "{e}"
            );
        }
        let e = plan(&two(&[A, B]), &two(&[&A.replace("1883", "8883")])).unwrap_err().to_string();
        assert_eq!(
            e,
            "listener a: 127.0.0.1:8883 is held by listener b being removed in the same reload: reload twice"
        );
    }

    #[test]
    fn servers_carry_over_by_name() {
        let old = two(&[A, C]);
        // s1 unchanged, s2 reweighted, s3 new; the coap backend goes (d1 with it).
        let new = config(&[A], &["s3 127.0.0.1:4 1", "s2 127.0.0.1:2 5", "s1 127.0.0.1:1 1"], &[], "");
        let p = plan(&old, &new).unwrap();
        let servers = vec![ServerStep::New, ServerStep::Successor(1), ServerStep::Same(0)];
        assert_eq!(p.pools, vec![PoolStep::Swap { old: 0, servers }]);
        assert_eq!(p.forgotten, vec![("coap".to_owned(), "d1".to_owned())]);
        assert_eq!(p.removed, vec![1]);
        // An address change is a successor too; a removed server is forgotten; a new backend is new.
        let back = config(&[A, C], &["s1 127.0.0.1:9 1"], COAP_SERVERS, "");
        let p = plan(&new, &back).unwrap();
        assert_eq!(p.pools, vec![PoolStep::Swap { old: 0, servers: vec![ServerStep::Successor(2)] }, PoolStep::New]);
        let forgotten: Vec<(String, String)> =
            [("mqtt", "s3"), ("mqtt", "s2")].map(|(b, s)| (b.into(), s.into())).into();
        assert_eq!(p.forgotten, forgotten);
    }

    #[test]
    fn admission_admin_and_workers_changes_are_flagged() {
        let old = two(&[A]);
        let new = config(
            &[A],
            SERVERS,
            COAP_SERVERS,
            "limits: { max_connections: 10 }\nworkers: 2\nadmin: { bind: \"127.0.0.1:0\" }\n",
        );
        let p = plan(&old, &new).unwrap();
        assert!(p.admission_changed && p.workers_changed && p.admin_bind_changed);
        assert_eq!(p.listeners, vec![ListenerStep::Keep(0)]);
    }
}
