//! Client ids a broker assigned, placed back on that broker (`servers[].assigned_id_prefix`).
//!
//! An MQTT 5 client that connects with an empty client id gets one from its broker (the Assigned Client Identifier
//! of the CONNACK) and reconnects with it to resume its session. Hashed like any other id, that reconnect would
//! land on the broker holding the session only one time in as many servers as there are. A broker that writes a
//! prefix of its own into every id it assigns (mosquitto's `auto_id_prefix`) names itself in those ids: a client id
//! starting with a server's `assigned_id_prefix` goes to that server first, on every instance, with no shared state.
//! When that server is not usable the client is placed as any other (the session is on a broker it cannot reach).

use std::sync::Arc;

use super::backend::BackendServer;
use crate::config::ServerConfig;

/// Moves the server whose `assigned_id_prefix` starts `client_id` to the front of `candidates` (ranked already),
/// when it is one of them. Prefixes never overlap (checked with the configuration), so at most one server owns an id.
pub fn place_first(servers: &[ServerConfig], client_id: &[u8], candidates: &mut [Arc<BackendServer>]) {
    let owner =
        servers.iter().find(|s| s.assigned_id_prefix.as_ref().is_some_and(|p| client_id.starts_with(p.as_bytes())));
    let Some(owner) = owner else {
        return;
    };
    if let Some(at) = candidates.iter().position(|c| c.name == owner.name) {
        if let Some(front) = candidates.get_mut(..=at) {
            front.rotate_right(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn server(name: &str, prefix: Option<&str>) -> ServerConfig {
        ServerConfig {
            name: name.to_owned(),
            address: "127.0.0.1:1".into(),
            weight: 1,
            dtls_cid_node_id: None,
            max_connections: None,
            max_connection_rate: None,
            assigned_id_prefix: prefix.map(str::to_owned),
        }
    }

    fn names(c: &[Arc<BackendServer>]) -> Vec<&str> {
        c.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn an_id_with_a_servers_prefix_goes_to_it_first_and_the_rest_keep_their_order() {
        let m = Metrics::new();
        let configs = [server("a", Some("a-")), server("b", Some("b-")), server("c", None)];
        let ranked: Vec<_> = configs.iter().map(|c| Arc::new(BackendServer::new(c, m.server("x", &c.name)))).collect();
        let mut c = ranked.clone();
        place_first(&configs, b"b-1234", &mut c);
        assert_eq!(names(&c), ["b", "a", "c"]);
        let mut c = ranked.clone();
        place_first(&configs, b"c-1234", &mut c);
        assert_eq!(names(&c), ["a", "b", "c"], "no prefix: the ranking stands");
        let mut c = ranked.clone();
        place_first(&configs, b"xb-1", &mut c);
        assert_eq!(names(&c), ["a", "b", "c"], "a prefix, not a substring");
        // The owner is not usable (not among the candidates): the ranking stands.
        let mut c: Vec<_> = ranked.iter().filter(|s| s.name != "b").cloned().collect();
        place_first(&configs, b"b-1234", &mut c);
        assert_eq!(names(&c), ["a", "c"]);
    }
}
