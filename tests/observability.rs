//! Observability, checked with the real tools operators use:
//!
//! - Debian's Prometheus scrapes a running mqtt-lb (real mosquitto brokers, real MQTT clients over TLS, a refused
//!   CONNECT and a failed TLS handshake now and then), and every PromQL expression of every panel and variable of
//!   the Grafana dashboards in `dashboards/` must parse and return data. A query naming a metric the binary does not
//!   export returns nothing and fails the test. The alert rules run in that Prometheus too, without errors.
//! - Every selector (template variable) filters every panel in its scope: each metric such a panel reads has the
//!   selector's matcher, and with two listeners carrying clients, choosing one shows that one only.
//! - `promtool check rules` and `promtool test rules` on `dashboards/alerts.yaml`.
//! - The `connection closed` log line of the binary (JSON), with and without the client id.

mod common;
mod tools;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use common::*;
use tools::{find_tool, repo};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-lb");

fn prometheus_bin() -> Option<PathBuf> {
    find_tool("prometheus", "MQTT_LB_PROMETHEUS", &["/usr/bin/prometheus"], "run scripts/install-deps.sh")
}

fn promtool_bin() -> Option<PathBuf> {
    find_tool("promtool", "MQTT_LB_PROMTOOL", &["/usr/bin/promtool"], "run scripts/install-deps.sh")
}

// ---------------------------------------------------------------------------------------------------------------
// A Prometheus server of our own.

/// A Prometheus process on 127.0.0.1 with its own storage in a temp dir, killed (by PID) on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`/metrics`) every second, with `rules` loaded; waits until it is ready.
    async fn start(bin: &Path, dir: &Path, target: SocketAddr, rules: &Path) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s }}\n\
                 rule_files: [\"{}\"]\n\
                 scrape_configs:\n  - job_name: mqtt-lb\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .expect("write prometheus.yml");
        let mut last = String::new();
        // The port is free a moment before Prometheus binds it; retry with another if someone took it.
        for attempt in 0..3 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let log = dir.join(format!("prometheus-{attempt}.log"));
            let child = Command::new(bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join(format!("data-{attempt}")).display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--storage.tsdb.retention.time=1h")
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("create the prometheus log"))
                .spawn()
                .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
            let mut p = Prometheus { child, addr, log };
            let ready = eventually(Duration::from_secs(15), || {
                let exited = matches!(p.child.try_wait(), Ok(Some(_)));
                async move {
                    if exited {
                        return Some(false);
                    }
                    let r = try_http_get(addr, "/-/ready").await.ok()?;
                    (r.0 == 200).then_some(true)
                }
            })
            .await;
            if ready == Some(true) {
                return p;
            }
            last = std::fs::read_to_string(&p.log).unwrap_or_default();
            p.kill();
        }
        panic!("prometheus did not start: {last}");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// GET on the HTTP API; the decoded JSON answer (any status).
    async fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = try_http_get(self.addr, path).await?;
        serde_json::from_str(&body).map_err(|e| format!("{path}: HTTP {status}, not JSON ({e}): {body}"))
    }

    /// An instant query: the result vector (Err with Prometheus's answer when it does not parse or run).
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let v = self.api(&format!("/api/v1/query?query={}", url_encode(expr))).await?;
        if v["status"] != "success" {
            return Err(format!("status {}: {} {}", v["status"], v["errorType"], v["error"]));
        }
        match &v["data"]["result"] {
            Value::Array(a) => Ok(a.clone()),
            // A scalar or string result (`time()`) is data too.
            other => Ok(vec![other.clone()]),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.kill();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Dashboards.

/// A PromQL expression of a dashboard and where it is.
struct DashboardQuery {
    place: String,
    expr: String,
}

/// Grafana's variables in an expression, replaced as Grafana would for "All" and a 1 m rate window.
fn substitute(expr: &str) -> String {
    let mut e = expr.to_owned();
    for (var, value) in [
        ("$__rate_interval", "1m"),
        ("${__rate_interval}", "1m"),
        ("$__interval", "15s"),
        ("$__range", "1h"),
        ("${instance}", ".*"),
        ("$instance", ".*"),
        ("${listener}", ".*"),
        ("$listener", ".*"),
        ("${backend}", ".*"),
        ("$backend", ".*"),
    ] {
        e = e.replace(var, value);
    }
    e
}

/// Every panel expression (rows' nested panels included) and every `label_values(metric, label)` variable.
fn dashboard_queries(path: &Path) -> (Vec<DashboardQuery>, Vec<(String, String, String)>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let d: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    let file = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    check_dashboard_shape(&file, &d);
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = d["panels"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    let mut i = 0;
    while let Some(p) = panels.get(i).copied() {
        i += 1;
        if let Some(nested) = p["panels"].as_array() {
            panels.extend(nested.iter());
        }
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or("?");
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(!targets.is_empty(), "{file}: panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{file}: panel {title:?}: a target has no expr"));
            queries.push(DashboardQuery {
                place: format!("{file}: panel {title:?} target {}", t["refId"]),
                expr: substitute(expr),
            });
        }
    }
    let mut variables = Vec::new();
    for v in d["templating"]["list"].as_array().map(Vec::as_slice).unwrap_or_default() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["definition"].as_str().unwrap_or_default();
        let inner = q.strip_prefix("label_values(").and_then(|s| s.strip_suffix(')'));
        let (metric, label) = inner.and_then(|s| s.split_once(',')).unwrap_or_else(|| {
            panic!("{file}: variable {}: expected label_values(metric, label), got {q:?}", v["name"])
        });
        variables.push((format!("{file}: variable {}", v["name"]), metric.trim().to_owned(), label.trim().to_owned()));
    }
    (queries, variables)
}

/// Importable anywhere: a `datasource` variable of type prometheus, and every data source reference goes through it
/// (no UID of some particular Grafana); unique panel ids.
fn check_dashboard_shape(file: &str, d: &Value) {
    assert!(d["title"].is_string() && d["uid"].is_string(), "{file}: title and uid");
    let vars = d["templating"]["list"].as_array().unwrap_or_else(|| panic!("{file}: no templating list"));
    assert!(
        vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "{file}: no `datasource` variable of type datasource/prometheus"
    );
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>, ids: &mut Vec<i64>) {
        match v {
            Value::Object(m) => {
                if let Some(ds) = m.get("datasource") {
                    out.push(ds);
                }
                if m.contains_key("gridPos") {
                    if let Some(id) = m.get("id").and_then(Value::as_i64) {
                        ids.push(id);
                    }
                }
                m.values().for_each(|x| walk(x, out, ids));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out, ids)),
            _ => {}
        }
    }
    let (mut sources, mut ids) = (Vec::new(), Vec::new());
    walk(d, &mut sources, &mut ids);
    for ds in sources {
        let uid = ds["uid"].as_str().unwrap_or_default();
        let ok = (ds["type"] == "prometheus" && (uid == "${datasource}" || uid == "$datasource"))
            || (ds["type"] == "grafana" && uid == "-- Grafana --");
        assert!(ok, "{file}: data source {ds} is not the ${{datasource}} variable");
    }
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "{file}: duplicate panel ids {ids:?}");
}

fn dashboard_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("dashboards"))
        .expect("dashboards/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// Each non-row panel of a dashboard with the selectors whose scope it is in: every variable (but `datasource`)
/// covers the whole dashboard, except one that repeats rows, which covers only the panels of those rows. Rows'
/// panels come in order (a row holds the panels below it) or nested (a collapsed row).
fn panels_in_scope(file: &str, d: &Value) -> Vec<(Value, Vec<String>)> {
    let vars: Vec<String> = d["templating"]["list"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|v| v["type"] != "datasource")
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    let mut repeated = BTreeSet::new();
    let mut rows = Vec::new();
    let mut current: Vec<Value> = Vec::new();
    let mut row_var: Option<String> = None;
    for p in d["panels"].as_array().map(Vec::as_slice).unwrap_or_default() {
        if p["type"] == "row" {
            rows.push((row_var.take(), std::mem::take(&mut current)));
            row_var = p["repeat"].as_str().map(str::to_owned);
            if let Some(v) = &row_var {
                assert!(vars.contains(v), "{file}: row {} repeats an unknown variable {v}", p["title"]);
                let title = p["title"].as_str().unwrap_or_default();
                assert!(title.contains(&format!("${v}")), "{file}: row {title:?} repeats ${v} without naming it");
                repeated.insert(v.clone());
            }
            current.extend(p["panels"].as_array().cloned().unwrap_or_default());
        } else {
            current.push(p.clone());
        }
    }
    rows.push((row_var, current));
    let mut out = Vec::new();
    for (row_var, panels) in rows {
        let scope: Vec<String> =
            vars.iter().filter(|v| !repeated.contains(*v) || row_var.as_ref() == Some(*v)).cloned().collect();
        out.extend(panels.into_iter().map(|p| (p, scope.clone())));
    }
    out
}

/// The vector selectors of a PromQL expression: each `mqttlb_*` metric name with its `{...}` matchers ("" if none).
fn vector_selectors(expr: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("mqttlb_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = tail[..end].to_owned();
        let after = &tail[end..];
        let matchers = match after.strip_prefix('{').and_then(|m| m.split_once('}')) {
            Some((m, _)) => m.to_owned(),
            None => String::new(),
        };
        found.push((name, matchers));
        rest = after;
    }
    found
}

/// For every panel query in a selector's scope and every value that selector offers (the others on All): the query
/// runs, returns only series of that value where they carry the label, and returns data for some value. This is
/// what "the selector filters the panel" means to someone choosing a value.
async fn selected_values_filter(prom: &Prometheus, files: &[PathBuf]) -> Vec<String> {
    let mut failures = Vec::new();
    for path in files {
        let file = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("JSON");
        let (_, variables) = dashboard_queries(path);
        let mut values = std::collections::BTreeMap::new();
        for (place, metric, label) in variables {
            let name = place.rsplit(' ').next().unwrap_or_default().trim_matches('"').to_owned();
            let path = format!("/api/v1/label/{label}/values?match[]={}", url_encode(&metric));
            let found: Vec<String> = prom.api(&path).await.unwrap_or_default()["data"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            values.insert(name, (label, found));
        }
        for (panel, scope) in panels_in_scope(&file, &d) {
            let title = panel["title"].as_str().unwrap_or("?");
            for t in panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let expr = t["expr"].as_str().unwrap_or_default();
                for var in &scope {
                    let Some((label, choices)) = values.get(var) else {
                        failures.push(format!("{file}: ${var} is not a label_values() variable"));
                        continue;
                    };
                    let mut some_data = false;
                    for choice in choices {
                        let selected = expr.replace(&format!("${{{var}}}"), choice).replace(&format!("${var}"), choice);
                        match prom.query(&substitute(&selected)).await {
                            Ok(series) => {
                                some_data |= !series.is_empty();
                                let other = series.iter().find_map(|s| {
                                    s["metric"][label.as_str()].as_str().filter(|v| v != choice).map(str::to_owned)
                                });
                                if let Some(other) = other {
                                    failures.push(format!(
                                        "{file}: panel {title:?} with {var}={choice} shows {label}={other}"
                                    ));
                                }
                            }
                            Err(e) => failures.push(format!("{file}: panel {title:?} with {var}={choice}: {e}")),
                        }
                    }
                    if !some_data {
                        failures.push(format!("{file}: panel {title:?}: no value of ${var} ({choices:?}) shows data"));
                    }
                }
            }
        }
        if let Some((_, listeners)) = values.get("listener").filter(|_| file == "mqtt-lb-overview.json") {
            assert!(listeners.len() >= 2, "{file}: both MQTT listeners are choices of $listener: {listeners:?}");
        }
    }
    failures
}

/// `mqttlb_*` metric names in a text (alert rules).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("mqttlb_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

// ---------------------------------------------------------------------------------------------------------------
// Load.

/// A PUT or POST to the admin endpoint: (status, whole answer).
async fn http_send(method: &str, addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    bounded(STEP_TIMEOUT, "admin request", async {
        let mut s = TcpStream::connect(addr).await.expect("connect to admin");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.expect("read");
        let status = raw.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
        (status, raw)
    })
    .await
}

/// A 3.1.1 CONNECT whose protocol name is wrong (`MQTX`): refused with a reason.
fn malformed_connect() -> Vec<u8> {
    let mut p = connect_packet_v311("obs-bad");
    let at = p.windows(4).position(|w| w == b"MQTT").expect("protocol name");
    p[at + 3] = b'X';
    p
}

/// Until `stop`: every ~200 ms a client does a publish/subscribe round trip through the proxy, one sends a
/// malformed CONNECT and one fails its TLS handshake, so every counter and histogram keeps moving.
async fn load(proxy: SocketAddr, tls: Arc<rustls::ClientConfig>, stop: CancellationToken) -> usize {
    let mut rounds = 0;
    while !stop.is_cancelled() {
        let id = format!("obs-client-{}", rounds % 7);
        if let Ok(mut c) = MqttClient::connect(proxy, Some(tls.clone()), &id, Version::V4).await {
            let _ = c.round_trip(&format!("obs/{id}"), b"hello").await;
            c.disconnect().await;
        }
        let _ = tls_exchange(proxy, tls.clone(), &malformed_connect(), Duration::from_secs(2)).await;
        if let Ok(mut s) = TcpStream::connect(proxy).await {
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut sink)).await;
        }
        rounds += 1;
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    rounds
}

// ---------------------------------------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let Some(prometheus) = prometheus_bin() else { return };
    bounded(Duration::from_secs(90), "dashboards against prometheus", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let a = Mosquitto::start(dir.path(), "obs-a").await;
        let b = Mosquitto::start(dir.path(), "obs-b").await;
        // Beside the MQTT front door, a coap listener (its backend's server is a closed port: the CoAP dashboard
        // needs series, which exist per listener from the start, and some traffic and drops).
        // And a second MQTT listener carrying clients too, so that a listener selector has two values to tell apart.
        let yaml = yaml_for(&pki, &[&a, &b]).build().replacen(
            "backends:\n",
            &format!(
                "  - {{ name: coap, bind: \"127.0.0.1:0\", protocol: coap, backend: coap_servers }}\n\
                 \x20 - {{ name: mqtts2, bind: \"127.0.0.1:0\", protocol: mqtt, backend: brokers, \
                 tls: {{ cert: \"{}\", key: \"{}\" }} }}\n\
                 backends:\n  - name: coap_servers\n    protocol: coap\n    health: {{ check: none }}\n    servers:\n\
                 \x20     - {{ name: c1, address: \"127.0.0.1:9\" }}\n",
                pki.cert.display(),
                pki.key.display()
            ),
            1,
        );
        let proxy = TestProxy::start(&yaml).await;
        let tls = pki.client_config();
        let device = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("udp socket");
        for id in 0..5u16 {
            device.send_to(&mqtt_lb::udp::coap::ping_message(id), proxy.addrs["coap"]).await.expect("send");
        }
        device.send_to(&[0x40; 4000], proxy.addrs["coap"]).await.expect("send an oversized datagram");

        // A client that stays connected, so open connections are not zero.
        let mut steady = MqttClient::connect(proxy.mqtts, Some(tls.clone()), "obs-steady", Version::V5)
            .await
            .expect("steady client");
        steady.round_trip("obs/steady", b"hi").await.expect("steady round trip");
        let stop = CancellationToken::new();
        let loader = tokio::spawn(load(proxy.mqtts, tls.clone(), stop.clone()));
        let second = tokio::spawn(load(proxy.addrs["mqtts2"], tls.clone(), stop.clone()));

        let prom =
            Prometheus::start(&prometheus, dir.path(), proxy.admin, &repo().join("dashboards/alerts.yaml")).await;
        let up = eventually(Duration::from_secs(15), || async {
            let t = prom.api("/api/v1/targets").await.ok()?;
            let targets = t["data"]["activeTargets"].as_array()?.clone();
            targets.iter().all(|t| t["health"] == "up").then_some(())?;
            (!targets.is_empty()).then_some(())
        })
        .await;
        assert!(up.is_some(), "the mqtt-lb target never became up: {:?}", prom.api("/api/v1/targets").await);

        // A drained server, so the drain state has a series at 1 (and the state panel something to show).
        let (status, answer) = http_send("PUT", proxy.admin, "/servers/brokers/obs-b/state", "drain").await;
        assert_eq!(status, 200, "{answer}");
        // A reload, so the reload counter has a series (this one fails: the test's configuration has no file).
        let (status, answer) = http_send("POST", proxy.admin, "/reload", "").await;
        assert!(status == 200 || status == 422, "POST /reload: {answer}");

        let mut queries = Vec::new();
        let mut variables = Vec::new();
        let files = dashboard_files();
        let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for want in ["mqtt-lb-overview.json", "mqtt-lb-backends.json", "mqtt-lb-coap.json"] {
            assert!(names.iter().any(|n| n == want), "dashboards/{want} is missing: {names:?}");
        }
        for f in &files {
            let (q, v) = dashboard_queries(f);
            queries.extend(q);
            variables.extend(v);
        }
        assert!(queries.len() >= 20, "only {} dashboard queries", queries.len());
        for q in &queries {
            assert!(!q.expr.contains('$'), "{}: a variable is left in {:?}", q.place, q.expr);
        }
        queries.push(DashboardQuery {
            place: "drained server".into(),
            expr: "mqttlb_server_state{server=\"obs-b\",state=\"drain\"} == 1".into(),
        });

        // Everything must parse at once; data may take a few scrapes (rates need two samples).
        let mut failures = Vec::new();
        for q in &queries {
            let got = eventually(Duration::from_secs(20), || async {
                match prom.query(&q.expr).await {
                    Ok(r) if r.is_empty() => None,
                    Ok(r) => Some(Ok(r)),
                    Err(e) if e.starts_with("status") => Some(Err(e)),
                    Err(_) => None,
                }
            })
            .await;
            match got {
                Some(Ok(_)) => {}
                Some(Err(e)) => failures.push(format!("{}: {}\n    does not run: {e}", q.place, q.expr)),
                None => failures.push(format!("{}: {}\n    returned no data", q.place, q.expr)),
            }
        }
        for (place, metric, label) in &variables {
            let path = format!("/api/v1/label/{label}/values?match[]={}", url_encode(metric));
            let v = prom.api(&path).await.unwrap_or_default();
            if v["data"].as_array().is_none_or(Vec::is_empty) {
                failures.push(format!("{place}: label_values({metric}, {label}) has no values: {v}"));
            }
        }

        // The alert rules: every metric they name is exported, and Prometheus evaluates each without error.
        let alerts = std::fs::read_to_string(repo().join("dashboards/alerts.yaml")).expect("alerts.yaml");
        for name in metric_names(&alerts) {
            let q = format!("count({{__name__=\"{name}\"}})");
            if prom.query(&q).await.map_or(true, |r| r.is_empty()) {
                failures.push(format!("alerts.yaml names {name}, which mqtt-lb does not export"));
            }
        }
        let rules = eventually(Duration::from_secs(10), || async {
            let v = prom.api("/api/v1/rules").await.ok()?;
            let rules: Vec<Value> = v["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            (!rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown")).then_some(rules)
        })
        .await
        .expect("the alert rules were never evaluated");
        assert!(rules.len() >= 5, "only {} rules loaded", rules.len());
        for r in &rules {
            if r["health"] != "ok" {
                failures.push(format!("rule {} does not evaluate: {}", r["name"], r["lastError"]));
            }
        }

        failures.extend(selected_values_filter(&prom, &files).await);

        stop.cancel();
        let rounds = loader.await.expect("load task");
        assert!(second.await.expect("load task") >= 3, "too little load on the second listener");
        steady.disconnect().await;
        assert!(rounds >= 3, "only {rounds} rounds of load");
        assert!(
            failures.is_empty(),
            "{} of {} dashboard checks failed:\n{}",
            failures.len(),
            queries.len() + variables.len(),
            failures.join("\n")
        );
        drop(prom);
        proxy.stop().await;
    })
    .await;
}

/// A selector filters every panel it appears to: each metric every panel in a variable's scope reads carries the
/// matcher `var=~"$var"`. A metric without that label (the per-server traffic under the overview's `listener`
/// selector) has to sit outside the selector's scope: in a row that the selector does not repeat, on another
/// dashboard. `every_dashboard_query_returns_data_from_a_real_prometheus` then runs each such query with each value
/// of the selector and checks that it shows that value only.
#[test]
fn every_panel_in_a_selectors_scope_filters_by_it() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in dashboard_files() {
        let file = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        for (panel, scope) in panels_in_scope(&file, &d) {
            let title = panel["title"].as_str().unwrap_or("?");
            for t in panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let mut expr = t["expr"].as_str().unwrap_or_default().to_owned();
                for var in &scope {
                    expr = expr.replace(&format!("${{{var}}}"), &format!("${var}"));
                }
                for (metric, matchers) in vector_selectors(&expr) {
                    for var in &scope {
                        checked += 1;
                        let wanted = format!("{var}=~\"${var}\"");
                        if !matchers.contains(&wanted) {
                            failures.push(format!("{file}: panel {title:?}: {metric} is not filtered by ${var}"));
                        }
                    }
                }
            }
        }
    }
    assert!(checked >= 100, "only {checked} selector uses checked");
    assert!(failures.is_empty(), "{} unfiltered:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let Some(promtool) = promtool_bin() else { return };
    let dashboards = repo().join("dashboards");
    for args in [["check", "rules", "alerts.yaml"], ["test", "rules", "alerts_test.yaml"]] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dashboards)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", promtool.display()));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool {}: {text}", args.join(" "));
        assert!(text.contains("SUCCESS"), "promtool {}: {text}", args.join(" "));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Logs.

/// The `mqtt-lb` binary with JSON logs on stderr (to a file), killed on drop.
struct Binary {
    child: Child,
    log: PathBuf,
}

impl Binary {
    fn start(dir: &Path, name: &str, yaml: &str, rust_log: &str) -> Binary {
        Binary::start_with(dir, name, yaml, "json", Some(rust_log))
    }

    /// `format`: `--log-format`; `rust_log`: None runs at the default level (no `RUST_LOG`).
    fn start_with(dir: &Path, name: &str, yaml: &str, format: &str, rust_log: Option<&str>) -> Binary {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml).expect("write config");
        let log = dir.join(format!("{name}.log"));
        let mut command = Command::new(BIN);
        command.args(["--log-format", format, "--config"]).arg(&config);
        match rust_log {
            Some(level) => command.env("RUST_LOG", level),
            None => command.env_remove("RUST_LOG"),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("run mqtt-lb");
        Binary { child, log }
    }

    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
            .collect()
    }

    /// The `connection closed` lines so far.
    fn ends(&self) -> Vec<Value> {
        self.lines().into_iter().filter(|l| l["fields"]["message"] == "connection closed").collect()
    }

    /// Waits for the `listening` line of the listener and returns its address.
    async fn listener_addr(&self) -> SocketAddr {
        eventually(Duration::from_secs(10), || async {
            self.lines().iter().find_map(|l| {
                let f = &l["fields"];
                if f["message"] != "listening" {
                    return None;
                }
                f["addr"].as_str()?.parse().ok()
            })
        })
        .await
        .unwrap_or_else(|| panic!("no `listening` line: {:?}", std::fs::read_to_string(&self.log)))
    }
}

impl Binary {
    /// The whole log so far.
    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_yaml(pki: &TestPki, broker: &Mosquitto, listener_bind: &str, extra: &str) -> String {
    format!(
        "listeners:\n  - {{ name: mqtts, bind: \"{listener_bind}\", protocol: mqtt, backend: brokers,\n      \
         tls: {{ cert: \"{}\", key: \"{}\" }} }}\n\
         backends:\n  - name: brokers\n    health: {{ check: mqtt, interval: 200ms, timeout: 500ms }}\n    \
         servers:\n      - {{ name: {}, address: \"{}\" }}\n{extra}",
        pki.cert.display(),
        pki.key.display(),
        broker.name,
        broker.addr()
    )
}

/// The lines of one connection are written in its span (listener, peer, then the client id once the CONNECT is
/// valid) instead of repeating those fields; the `connection closed` line keeps its own fields (self-contained).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_lines_are_written_in_its_span() {
    bounded(Duration::from_secs(30), "connection span", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "span-a").await;
        let tls = pki.client_config();
        let yaml = log_yaml(&pki, &broker, "127.0.0.1:0", "");
        let bin = Binary::start(dir.path(), "span", &yaml, "info,mqtt_lb=debug");
        let addr = bin.listener_addr().await;
        assert!(wait_accepting(addr, Duration::from_secs(5)).await);

        let c = MqttClient::connect(addr, Some(tls.clone()), "span-client", Version::V4).await.expect("connect");
        c.disconnect().await;
        let ends = wait_ends(&bin, 1).await;
        assert_eq!(ends[0]["fields"]["listener"], "mqtts", "{}", ends[0]);
        let lines = bin.lines();
        let relaying = lines.iter().find(|l| l["fields"]["message"] == "relaying").expect("a `relaying` line");
        let span = &relaying["span"];
        assert_eq!(span["name"], "connection", "{relaying}");
        assert_eq!(span["listener"], "mqtts", "{relaying}");
        assert_eq!(span["client_id"], "span-client", "{relaying}");
        assert!(span["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{relaying}");
        assert!(relaying["fields"].get("listener").is_none(), "{relaying}");

        // A refused client: its one line names the reason and the side, in the span, without a client id.
        let _ = tls_exchange(addr, tls.clone(), &malformed_connect(), Duration::from_secs(2)).await;
        let refused = eventually(Duration::from_secs(5), || async {
            bin.lines()
                .into_iter()
                .find(|l| l["fields"]["message"] == "client refused" && l["fields"]["reason"] == "bad_protocol_name")
        })
        .await
        .expect("a `client refused` line");
        assert_eq!(refused["fields"]["side"], "client", "{refused}");
        assert_eq!(refused["span"]["listener"], "mqtts", "{refused}");
        assert!(refused["span"].get("client_id").is_none(), "{refused}");
    })
    .await;
}

async fn wait_ends(bin: &Binary, n: usize) -> Vec<Value> {
    eventually(Duration::from_secs(5), || async {
        let e = bin.ends();
        (e.len() >= n).then_some(e)
    })
    .await
    .unwrap_or_else(|| panic!("fewer than {n} `connection closed` lines: {:?}", bin.ends()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_end_is_logged_once_with_its_fields() {
    bounded(Duration::from_secs(40), "connection end logs", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "log-a").await;
        let tls = pki.client_config();

        let bin = Binary::start(dir.path(), "with-ids", &log_yaml(&pki, &broker, "127.0.0.1:0", ""), "info");
        let addr = bin.listener_addr().await;
        assert!(wait_accepting(addr, Duration::from_secs(5)).await);

        // A client that publishes, receives and sends DISCONNECT.
        let mut c = MqttClient::connect(addr, Some(tls.clone()), "log-client-1", Version::V4).await.expect("connect");
        c.round_trip("log/test", b"twelve bytes").await.expect("round trip");
        c.disconnect().await;
        let ends = wait_ends(&bin, 1).await;
        let f = &ends[0]["fields"];
        assert_eq!(ends[0]["level"], "INFO", "{}", ends[0]);
        assert_eq!(f["listener"], "mqtts", "{f}");
        assert_eq!(f["client_id"], "log-client-1", "{f}");
        assert_eq!(f["server"], "log-a", "{f}");
        assert_eq!(f["reason"], "client_disconnect", "{f}");
        assert!(f["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{f}");
        // CONNECT + SUBSCRIBE + PUBLISH (with 12 bytes of payload) + PUBACK + DISCONNECT, and back.
        assert!(f["bytes_to_server"].as_u64().is_some_and(|n| n > 40), "{f}");
        assert!(f["bytes_to_client"].as_u64().is_some_and(|n| n > 20), "{f}");
        assert!(f["duration_seconds"].as_f64().is_some_and(|d| d > 0.0 && d < 10.0), "{f}");
        assert!(f.get("error").is_none(), "{f}");

        // The same client id again takes the session over: the broker closes the first connection (the relay ends
        // once the first client, told, closes its side too).
        let mut first = MqttClient::connect(addr, Some(tls.clone()), "log-dup", Version::V4).await.expect("first");
        let second = MqttClient::connect(addr, Some(tls.clone()), "log-dup", Version::V4).await.expect("second");
        first.wait_closed(Duration::from_secs(5)).await.expect("the first connection is closed by the broker");
        drop(first);
        let ends = wait_ends(&bin, 2).await;
        assert_eq!(ends[1]["fields"]["client_id"], "log-dup", "{}", ends[1]);
        assert_eq!(ends[1]["fields"]["reason"], "server_closed", "{}", ends[1]);
        second.disconnect().await;
        let ends = wait_ends(&bin, 3).await;
        assert_eq!(ends[2]["fields"]["reason"], "client_disconnect", "{}", ends[2]);
        // A client that goes away without DISCONNECT.
        let gone = MqttClient::connect(addr, Some(tls.clone()), "log-gone", Version::V5).await.expect("connect");
        drop(gone);
        let ends = wait_ends(&bin, 4).await;
        assert_eq!(ends[3]["fields"]["client_id"], "log-gone", "{}", ends[3]);
        assert_eq!(ends[3]["fields"]["reason"], "client_closed", "{}", ends[3]);
        assert_eq!(ends.len(), 4, "one line per connection: {ends:?}");
        // A refused client is counted in the metrics, not logged at info.
        let _ = tls_exchange(addr, tls.clone(), &malformed_connect(), Duration::from_secs(2)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(bin.ends().len(), 4);
        drop(bin);

        // `log: { client_id: false }`: the line has no client id, the rest stays.
        let bin = Binary::start(
            dir.path(),
            "without-ids",
            &log_yaml(
                &pki,
                &broker,
                "127.0.0.1:0",
                "log: { client_id: false }\nshutdown: { grace: 0s, drain_timeout: 300ms }\n",
            ),
            "info",
        );
        let addr = bin.listener_addr().await;
        assert!(wait_accepting(addr, Duration::from_secs(5)).await);
        let c = MqttClient::connect(addr, Some(tls.clone()), "private-id", Version::V5).await.expect("connect");
        c.disconnect().await;
        let ends = wait_ends(&bin, 1).await;
        let f = &ends[0]["fields"];
        assert!(f.get("client_id").is_none(), "{f}");
        assert_eq!(f["server"], "log-a", "{f}");
        assert_eq!(f["reason"], "client_disconnect", "{f}");
        // Relays ended by SIGTERM are logged too: an MQTT 5 client told DISCONNECT 0x8B at once, a 3.1.1 client
        // still open at the drain deadline.
        let mut open = MqttClient::connect(addr, Some(tls.clone()), "private-2", Version::V4).await.expect("connect");
        open.round_trip("log/open", b"x").await.expect("round trip");
        let mut open5 = MqttClient::connect(addr, Some(tls.clone()), "private-3", Version::V5).await.expect("connect");
        open5.round_trip("log/open5", b"x").await.expect("round trip");
        let mut bin = bin;
        let term = Command::new("kill").args(["-TERM", &bin.child.id().to_string()]).status().expect("kill -TERM");
        assert!(term.success());
        // The MQTT 5 client reads its DISCONNECT and closes, before the drain deadline.
        let why = open5.wait_closed(Duration::from_secs(2)).await.expect("DISCONNECT at SIGTERM");
        assert!(why.contains("ServerShuttingDown"), "{why}");
        drop(open5);
        let exited = eventually(Duration::from_secs(5), || {
            let done = matches!(bin.child.try_wait(), Ok(Some(_)));
            async move { done.then_some(()) }
        })
        .await;
        assert!(exited.is_some(), "mqtt-lb did not exit after SIGTERM");
        let ends = bin.ends();
        assert_eq!(ends.len(), 3, "{ends:?}");
        for end in &ends[1..] {
            assert_eq!(end["fields"]["reason"], "shutdown", "{end}");
            assert!(end["fields"]["bytes_to_client"].as_u64().is_some_and(|n| n > 0), "{end}");
        }
        let all = std::fs::read_to_string(&bin.log).unwrap_or_default();
        assert!(["private-id", "private-2", "private-3"].iter().all(|id| !all.contains(id)), "{all}");
        drop(open);
        drop(bin);

        // RUST_LOG=warn: no info lines at all.
        let port = free_port();
        let bin =
            Binary::start(dir.path(), "quiet", &log_yaml(&pki, &broker, &format!("127.0.0.1:{port}"), ""), "warn");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(wait_accepting(addr, Duration::from_secs(5)).await);
        let c = MqttClient::connect(addr, Some(tls.clone()), "quiet-1", Version::V4).await.expect("connect");
        c.disconnect().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let lines = bin.lines();
        assert!(lines.iter().all(|l| l["level"] != "INFO"), "{lines:?}");
    })
    .await;
}

/// mosquitto_pub over TLS to `127.0.0.1:port`: OpenSSL sends the IP address as SNI, which rustls warns about.
async fn publish_by_ip(mosquitto_pub: &Path, pki: &TestPki, port: u16, client_id: &str) {
    let out = tokio::process::Command::new(mosquitto_pub)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--cafile"])
        .arg(&pki.ca)
        .args(["-V", "mqttv311", "-i", client_id, "-t", "log/by-ip", "-m", "x"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run mosquitto_pub");
    assert!(out.status.success(), "mosquitto_pub: {}", String::from_utf8_lossy(&out.stderr));
}

/// Waits for the `n`th `connection closed` line of a log in either format.
async fn wait_closed_lines(bin: &Binary, n: usize) {
    let seen = eventually(Duration::from_secs(5), || async {
        (bin.text().matches("connection closed").count() >= n).then_some(())
    })
    .await;
    assert!(seen.is_some(), "fewer than {n} `connection closed` lines: {}", bin.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_level_logs_carry_no_library_warnings_source_paths_or_debug_values() {
    let Some(mosquitto_pub) = tools::mosquitto_pub() else { return };
    bounded(Duration::from_secs(40), "default-level logs", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "log-ip").await;
        for format in ["json", "text"] {
            let port = free_port();
            let yaml = log_yaml(&pki, &broker, &format!("127.0.0.1:{port}"), "");
            let bin = Binary::start_with(dir.path(), &format!("default-{format}"), &yaml, format, None);
            assert!(wait_accepting(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(5)).await);
            publish_by_ip(&mosquitto_pub, &pki, port, "by-ip").await;
            wait_closed_lines(&bin, 1).await;
            let all = bin.text();
            assert!(!all.contains("rustls::") && !all.contains("Illegal SNI"), "{format}: {all}");
            assert!(!all.contains("Some("), "{format}: values as an operator reads them: {all}");
            assert!(all.lines().filter(|l| l.contains("WARN")).all(|l| l.contains("mqtt_lb")), "{format}: {all}");
            if format == "json" {
                let listening = bin.lines().into_iter().find(|l| l["fields"]["message"] == "listening");
                let listening = listening.unwrap_or_else(|| panic!("no listening line: {all}"));
                assert_eq!(listening["fields"]["addr"], format!("127.0.0.1:{port}"), "{listening}");
            } else {
                assert!(all.contains(&format!("addr=127.0.0.1:{port}")), "{all}");
            }
        }

        // Named in RUST_LOG, the library's warning comes back: the client above did trigger it. In JSON, it names
        // the library's module, not the build machine's source file.
        let port = free_port();
        let yaml = log_yaml(&pki, &broker, &format!("127.0.0.1:{port}"), "");
        let bin = Binary::start_with(dir.path(), "rustls-warn", &yaml, "json", Some("info,rustls=warn"));
        assert!(wait_accepting(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(5)).await);
        publish_by_ip(&mosquitto_pub, &pki, port, "by-ip-2").await;
        wait_closed_lines(&bin, 1).await;
        let lines = bin.lines();
        let sni = lines.iter().find(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains("Illegal SNI")));
        let sni = sni.unwrap_or_else(|| panic!("no rustls SNI warning with RUST_LOG=rustls=warn: {lines:?}"));
        assert_eq!(sni["level"], "WARN", "{sni}");
        assert!(sni["target"].as_str().is_some_and(|t| t.starts_with("rustls::")), "{sni}");
        let text = bin.text();
        assert!(!text.contains(".rs\"") && !text.contains("log.file") && !text.contains("/src/"), "{text}");
    })
    .await;
}
