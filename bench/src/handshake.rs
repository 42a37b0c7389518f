//! The crypto providers side by side (phase `handshake`): mqtt-lb built with rustls on ring and on aws-lc-rs (the
//! `aws-lc-rs` cargo feature), each in front of the same broker, with an ECDSA P-256 and an RSA 2048 server
//! certificate. For each: the connection cycle of load 1 with full handshakes, the same with resumed ones (tickets
//! under `tls.ticket_keys`) and the plain cycle (no TLS, the part of a connection's cost that is not the
//! handshake); measured: the proxy's CPU per connection. The difference between the providers is the crypto
//! library's; full minus plain is what a handshake costs the proxy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::load::{self, Target};
use crate::procs::{self, Broker, Probe};
use crate::tls::{Pki, ServerKey};

/// One mqtt-lb binary and the provider it was built with.
pub struct Provider {
    pub name: String,
    pub bin: PathBuf,
}

/// Parses `--providers ring=PATH,aws-lc-rs=PATH`.
pub fn parse(list: &str) -> Result<Vec<Provider>, String> {
    list.split(',')
        .map(|item| {
            let (name, path) = item.split_once('=').ok_or_else(|| format!("--providers: {item:?} is not NAME=PATH"))?;
            Ok(Provider { name: name.trim().to_owned(), bin: PathBuf::from(path.trim()) })
        })
        .collect()
}

/// The loads of one provider and certificate in one round: proxy CPU per connection (µs) and connections/s of the
/// full, resumed and plain cycles.
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    setup: &crate::Setup,
    broker: &Broker,
    provider: &Provider,
    pki: &Pki,
    key: ServerKey,
    secs: f64,
    workers: usize,
    round: usize,
) -> Result<Value, String> {
    let tag = format!("hs{}-{}-{}", round + 1, provider.name, if key == ServerKey::Rsa2048 { "rsa" } else { "ec" });
    let servers = [broker.plain];
    let backend = procs::LbBackend::one(&servers);
    let (proxy, at) = procs::start_mqtt_lb(
        &provider.bin,
        &provider.name,
        &setup.dir,
        &tag,
        pki,
        true,
        &backend,
        setup.threads,
        setup.logs,
    )
    .await?;
    let probe =
        Probe { procs: vec![("bench".to_owned(), std::process::id()), ("proxy".to_owned(), proxy.pid)], perf: None };
    let full = Arc::new(Target::new(at.tls, pki.client_config(setup.full_verify, false)?, &format!("hf{round}")));
    let resumed = Arc::new(Target::new(at.tls, pki.client_config(setup.full_verify, true)?, &format!("hr{round}")));
    let plain = Arc::new(Target::plain(at.plain, Arc::clone(&setup.client_tls), &format!("hp{round}")));
    let mut out = BTreeMap::new();
    for (name, target) in [("full", full), ("resumed", resumed), ("plain", plain)] {
        let run = probe.start();
        let c = load::conn_rate(target, workers, Duration::from_secs_f64(secs)).await;
        let cpu = run.finish();
        let cpu_secs = cpu["processes"]["proxy"]["cpu_secs"].as_f64().unwrap_or(0.0);
        let per_conn = if c.completed > 0 { cpu_secs * 1e6 / c.completed as f64 } else { 0.0 };
        out.insert(
            name,
            json!({
                "conn_per_s": c.completed as f64 / c.secs.max(1e-3),
                "proxy_cpu_us": (per_conn * 10.0).round() / 10.0,
                "resumed_pct": c.resumed as f64 * 100.0 / c.completed.max(1) as f64,
                "errors": c.errors,
                "cpu": cpu,
            }),
        );
    }
    Ok(json!({ "provider": provider.name, "key": key.name(), "round": round + 1, "loads": out }))
}

/// The section of RESULTS.md: per certificate and provider, median [min – max] over rounds of the proxy's CPU per
/// connection (full, resumed, plain) and what a handshake costs (full - plain, resumed - plain).
pub fn markdown(rows: &[Value], providers: &[Provider], secs: f64, workers: usize) -> String {
    use std::fmt::Write;
    let rounds = rows.iter().filter_map(|r| r["round"].as_u64()).max().unwrap_or(0);
    let mut md = format!(
        "\n## TLS handshakes: ring beside aws-lc-rs (phase `handshake`)\n\nmqtt-lb built twice, rustls with ring (the \
         default) and with aws-lc-rs (`--features aws-lc-rs`), each in front of the same mosquitto, one worker thread; \
         the connection cycle of load 1 ({workers} workers, {secs} s per load): full handshakes, resumed handshakes \
         (TLS 1.3 tickets under `tls.ticket_keys`), and the plain cycle (no TLS: accept, CONNECT, broker connection, \
         log line). Proxy CPU per connection from /proc, µs; \"per handshake\" is full (or resumed) minus plain. \
         Providers interleaved (order rotated), fresh proxy per load set; median [min – max] of {rounds} rounds. \
         TLS 1.3, X25519, AES-256-GCM in every case.\n\n"
    );
    let stat = |provider: &str, key: &str, f: &dyn Fn(&Value) -> Option<f64>| -> Option<Value> {
        let v: Vec<f64> = rows.iter().filter(|r| r["provider"] == provider && r["key"] == key).filter_map(f).collect();
        crate::stats::summarize(&v)
    };
    let fmt = |s: Option<Value>| match s {
        Some(s) => format!(
            "{:.0} [{:.0} – {:.0}]",
            s["median"].as_f64().unwrap_or(0.0),
            s["min"].as_f64().unwrap_or(0.0),
            s["max"].as_f64().unwrap_or(0.0)
        ),
        None => "-".into(),
    };
    let names: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
    let ratio_head = match names.as_slice() {
        [a, b] => format!(" {b} / {a} |"),
        _ => String::new(),
    };
    let _ = writeln!(md, "| certificate | metric | {} |{ratio_head}", names.join(" | "));
    let _ = writeln!(md, "|---|---|{}{}", "---|".repeat(names.len()), if ratio_head.is_empty() { "" } else { "---|" });
    type Pick = Box<dyn Fn(&Value) -> Option<f64>>;
    let us = |load: &'static str| -> Pick { Box::new(move |r: &Value| r["loads"][load]["proxy_cpu_us"].as_f64()) };
    let minus_plain = |load: &'static str| -> Pick {
        Box::new(move |r: &Value| {
            Some(r["loads"][load]["proxy_cpu_us"].as_f64()? - r["loads"]["plain"]["proxy_cpu_us"].as_f64()?)
        })
    };
    let rate = |load: &'static str| -> Pick { Box::new(move |r: &Value| r["loads"][load]["conn_per_s"].as_f64()) };
    for key in [ServerKey::EcdsaP256, ServerKey::Rsa2048] {
        let metrics: [(&str, Pick); 7] = [
            ("proxy CPU per connection, full handshake (µs)", us("full")),
            ("proxy CPU per connection, resumed (µs)", us("resumed")),
            ("proxy CPU per connection, plain (µs)", us("plain")),
            ("proxy CPU per full handshake: full - plain (µs)", minus_plain("full")),
            ("proxy CPU per resumed handshake: resumed - plain (µs)", minus_plain("resumed")),
            ("connections/s, full handshakes", rate("full")),
            ("connections/s, resumed", rate("resumed")),
        ];
        for (label, f) in metrics {
            let cells: Vec<Option<Value>> = names.iter().map(|p| stat(p, key.name(), &*f)).collect();
            let med = |c: &Option<Value>| c.as_ref().and_then(|s| s["median"].as_f64());
            let ratio = match cells.as_slice() {
                [a, b] => match (med(a), med(b)) {
                    (Some(a), Some(b)) if a > 0.0 => format!(" {:.2}x |", b / a),
                    _ => " - |".into(),
                },
                _ => String::new(),
            };
            let text: Vec<String> = cells.into_iter().map(fmt).collect();
            let _ = writeln!(md, "| {} | {label} | {} |{ratio}", key.name(), text.join(" | "));
        }
    }
    let errors: u64 = rows
        .iter()
        .flat_map(|r| ["full", "resumed", "plain"].map(|l| r["loads"][l]["errors"].clone()))
        .filter_map(|e| e.as_object().map(|m| m.values().filter_map(Value::as_u64).sum::<u64>()))
        .sum();
    let _ = writeln!(md, "\nErrors (all loads and rounds): {errors}.");
    md
}
