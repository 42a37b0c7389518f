//! The routes as `GET /servers` shows them: per TCP listener, its default backend and its routes in order.

use super::{Config, ListenerProtocol};

/// `[{ "name", "backend", "routes": [{ "name", "backend", "sni", "client_id", "username", "identity" }] }]`, with
/// `null` for a missing default backend or condition.
pub fn listeners_json(config: &Config) -> serde_json::Value {
    let backend = |i: usize| config.backends.get(i).map(|b| b.name.clone());
    let listeners: Vec<serde_json::Value> = config
        .listeners
        .iter()
        .filter(|l| l.protocol != ListenerProtocol::Coap)
        .map(|l| {
            let routes: Vec<serde_json::Value> = l
                .routes
                .iter()
                .map(|r| {
                    let c = &r.conditions;
                    serde_json::json!({
                        "name": r.name,
                        "backend": backend(r.backend),
                        "sni": c.sni.as_ref().map(|p| p.as_str()),
                        "client_id": c.client_id.as_ref().map(|g| g.as_str()),
                        "username": c.username.as_ref().map(|g| g.as_str()),
                        "identity": c.identity.as_ref().map(|g| g.as_str()),
                    })
                })
                .collect();
            serde_json::json!({ "name": l.name, "backend": l.backend.and_then(backend), "routes": routes })
        })
        .collect();
    serde_json::Value::Array(listeners)
}
